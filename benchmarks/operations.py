"""The torch operations of one SevenNet-0 call (energy + forces + stress), counted by kind and by
the function of ours that issued them.

On a GPU every operation is a kernel launch or a view, each costing the host microseconds
whatever the size of the system, so their number sets the floor of a small system's call there
(H200 machine, 2026-12-04: ~4,300 operations, 45-55 ms per call). Counted on the CPU with
``ASE_EQUIVARIANT_NATIVE=0``, the path a GPU runs (no compiled kernels, tables or products);
``--compiled`` counts the CPU's own path instead. Operations are counted where torch's
dispatcher runs them (backward ones too); views (reshapes, slices, transposes) are counted apart
from the rest, which launch kernels on a GPU. Operations that autograd's engine runs for torch's
own functions are attributed to the caller of ``torch.autograd.grad``.

    ASE_EQUIVARIANT_NATIVE=0 python benchmarks/operations.py             # Cu108, a GPU's path
    ASE_EQUIVARIANT_NATIVE=0 python benchmarks/operations.py --atoms 864 --edge-block 8192
    python benchmarks/operations.py --compiled
"""
import argparse
import collections
import os
import traceback

from ase.build import bulk
from torch.utils._python_dispatch import TorchDispatchMode

from ase_equivariant import EquivariantCalculator
from ase_equivariant.nn.potential import DEVICE_EDGE_BLOCK

#: operations that only make a new view of their input's memory: no kernel on a GPU
VIEWS = frozenset({"view", "_unsafe_view", "transpose", "t", "slice", "select", "unsqueeze", "squeeze", "expand",
                   "as_strided", "detach", "alias", "reshape", "permute", "split", "split_with_sizes", "unbind",
                   "narrow"})


class OperationCount(TorchDispatchMode):
    """Counts the operations run inside it: by name, and (views apart) by the innermost function
    of this package on the stack."""

    def __init__(self):
        super().__init__()
        self.by_name = collections.Counter()
        self.by_function = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.by_name[name] += 1
        if name not in VIEWS:
            ours = [f for f in traceback.extract_stack() if f"{os.sep}ase_equivariant{os.sep}" in f.filename]
            self.by_function[f"{os.path.basename(ours[-1].filename)}:{ours[-1].name}" if ours else "(other)"] += 1
        return func(*args, **(kwargs or {}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atoms", type=int, default=108, help="a cubic fcc Cu cell of about this many atoms")
    parser.add_argument("--edge-block", type=int, default=None,
                        help="edges per block of work (default: the model's choice for a GPU, or with "
                             "--compiled for the CPU)")
    parser.add_argument("--compiled", action="store_true", help="count the CPU's compiled path")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if not args.compiled and os.environ.get("ASE_EQUIVARIANT_NATIVE") != "0":
        parser.error("set ASE_EQUIVARIANT_NATIVE=0 to count a GPU's path (or pass --compiled)")
    k = max(1, round((args.atoms / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (k, k, k)
    atoms.rattle(0.02, seed=1)
    atoms.calc = EquivariantCalculator(device="cpu", skin=0.0)
    atoms.calc.model.edge_block = args.edge_block or (None if args.compiled else DEVICE_EDGE_BLOCK)
    atoms.get_stress()  # warm-up: builds what the calls keep
    atoms.rattle(0.01, seed=2)
    count = OperationCount()
    with count:
        atoms.get_stress()
    total = sum(count.by_name.values())
    views = sum(n for name, n in count.by_name.items() if name in VIEWS)
    print(f"Cu{len(atoms)}, {'compiled' if args.compiled else 'pure-torch'} path, edges per block "
          f"{atoms.calc.model.edge_block or 'the CPU default'}: {total} operations per call, "
          f"{total - views} of them not views")
    print("by kind:", ", ".join(f"{name} {n}" for name, n in count.by_name.most_common(args.top)))
    print("by function (views apart):")
    for where, n in count.by_function.most_common(args.top):
        print(f"  {n:6d}  {where}")


if __name__ == "__main__":
    main()
