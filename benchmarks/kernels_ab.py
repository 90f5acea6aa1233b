"""A/B timing of two versions of the compiled message-sum kernels (``nn/message_sums.c``) in one
process.

``ab.py`` compares whole checkouts in alternating processes; a change to the C file alone is
judged more finely here: both sources are compiled (the flags of ``compiled.py``), loaded side by
side, and SevenNet-0's energy + forces call on fcc Cu alternates between them (order swapped
every round), so both see the same machine state. The kernels must keep the C interface of the
installed package. Prints, per version, the minimum and median call time and the time spent
inside each kernel, and the largest difference between the two versions' forces.

    python benchmarks/kernels_ab.py OLD.c NEW.c --cells 3 --rounds 10   # Cu108
    git show HEAD:ase_equivariant/nn/message_sums.c > /tmp/old.c
    python benchmarks/kernels_ab.py /tmp/old.c ase_equivariant/nn/message_sums.c --cells 6 --rounds 4
"""
import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path

import torch
from ase.build import bulk

from ase_equivariant import load_model
from ase_equivariant.neighbors import cell_list
from ase_equivariant import compiled
from ase_equivariant.nn import native


def build(source: Path, folder: Path, tag: str) -> native.Kernels:
    """Compile ``source`` (a copy of ``message_sums.c``, which includes itself) and load it."""
    copy = folder / f"message_sums_{tag}.c"
    copy.write_text(source.read_text())
    target = folder / f"message_sums_{tag}.so"
    compiled.build(target, copy)
    return native.Kernels(target)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--cells", type=int, default=3, help="Cu fcc cubic cells per axis (3: 108 atoms)")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp())
    versions = {"old": build(args.old, folder, "old"), "new": build(args.new, folder, "new")}
    spent = collections.defaultdict(float)
    for name, kernels in versions.items():  # time the calls into each library
        for method in ("forward", "backward"):
            function = getattr(kernels, method)

            def timed(*a, _function=function, _key=(name, method), **kw):
                start = time.perf_counter()
                result = _function(*a, **kw)
                spent[_key] += time.perf_counter() - start
                return result

            setattr(kernels, method, timed)
    current = [None]
    native.kernels = lambda: current[0]  # what the convolutions call

    model = load_model("sevennet-0")
    for parameter in model.parameters():  # frozen, as the calculator has them (radial tables)
        parameter.requires_grad_(False)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * ((args.cells,) * 3)
    atoms.rattle(0.02, seed=1)
    positions = torch.tensor(atoms.positions, dtype=torch.float32)
    cell = torch.tensor(atoms.cell.array, dtype=torch.float32)
    numbers = torch.tensor(atoms.numbers)
    edge_index, shifts = cell_list(positions, cell, torch.tensor(atoms.pbc), model.cutoff)

    def forces():
        p = positions.clone().requires_grad_(True)
        energy = model(p, numbers, edge_index, shifts, cell).sum()
        return -torch.autograd.grad(energy, p)[0]

    results = {}
    for name, kernels in versions.items():  # warm-up, and the forces to compare
        current[0] = kernels
        results[name] = forces()
    print(f"Cu{len(atoms)}, {torch.get_num_threads()} threads; max |F_new - F_old| = "
          f"{float((results['new'] - results['old']).abs().max()):.3g} eV/Å")
    spent.clear()
    times = {name: [] for name in versions}
    for r in range(args.rounds):
        for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
            current[0] = versions[name]
            start = time.perf_counter()
            forces()
            times[name].append(time.perf_counter() - start)
    for name in versions:
        print(f"{name}: call min {1e3 * min(times[name]):.1f} ms, median {1e3 * statistics.median(times[name]):.1f}"
              f" | in the kernels per call: forward {1e3 * spent[(name, 'forward')] / args.rounds:.2f} ms, "
              f"backward {1e3 * spent[(name, 'backward')] / args.rounds:.2f} ms")


if __name__ == "__main__":
    main()
