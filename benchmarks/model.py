"""SevenNet-0: our implementation against the reference ``sevenn`` calculator, side by side.

Same weights, same structures, same process; the two calculators are called alternately after a
warm-up, each call an energy + forces + stress evaluation of a fresh geometry (the neighbour list
is rebuilt every call: ``skin=0``). Reports ms per call (minimum and median), ms per atom, the
speed-up, the FLOPs of one of our calls (the matrix products by torch's FLOP formulas, plus on
the CPU the multiply-adds of the compiled message-sum kernels, counted by formula) and the
GFLOP/s they run at, beside the sgemm/dgemm rate of this machine measured between the calls of
the same structure (one 2048 x 2048 product before each round; the best of them: a shared VM's
speed moves by tens of percent within minutes, so one measurement at the start of a run does not
describe its last structures), and memory:
the process's resident high-water mark after the structure (CPU; it includes the reference
calculator's peaks) or the peak CUDA memory of our call (GPU). The reference always runs in
float32 (``--dtype float64`` sets our precision only).

With the reference, also the issue's compute-bound limit: "ref GFLOP" counts the matrix
products of one reference call with the same counter (torch's FLOP formulas; its elementwise
work is not counted, so this undercounts the model's arithmetic as the reference does it),
"limit ms" is that count at the gemm rate of the row (our dtype's), and "/limit" our minimum
over it. Our own call does fewer FLOPs than the reference's (radial MLP once per pair, message
sums before the coupling); "%gemm" is the stricter measure of how well our code uses the machine.

    python benchmarks/model.py                      # float32, CPU, default structures
    python benchmarks/model.py --dtype float64
    python benchmarks/model.py --sizes 1000 10000 --no-reference   # per-atom scaling, ours only
    python benchmarks/model.py --device cuda        # on a GPU machine
"""
import argparse
import gc
import platform
import statistics
import time

import numpy as np
import torch
from ase.build import bulk, molecule
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from ase_equivariant import EquivariantCalculator
from ase_equivariant.neighbors import cell_list
from ase_equivariant.nn import products
from ase_equivariant.nn.convolution import TensorProductConv


def structures(sizes=None):
    """name -> Atoms. Default: Cu 32/108/256/864, Si 64/512, an ethanol molecule."""
    out = {}
    if sizes:
        for n in sizes:
            k = max(1, round((n / 4) ** (1 / 3)))
            out[f"Cu{4 * k**3}"] = bulk("Cu", "fcc", a=3.61, cubic=True) * (k, k, k)
    else:
        for k in (2, 3, 4, 6):
            out[f"Cu{4 * k**3}"] = bulk("Cu", "fcc", a=3.61, cubic=True) * (k, k, k)
        for k in (2, 4):
            out[f"Si{8 * k**3}"] = bulk("Si", "diamond", a=5.43, cubic=True) * (k, k, k)
        out["C2H6O"] = molecule("CH3CH2OH")
    for atoms in out.values():
        atoms.rattle(0.02, seed=1)
    return out


def gemm_gflops(dtype, device, n=2048, repeats=5):
    """Measured matrix-multiply rate of this machine (GFLOP/s) for square n x n matrices."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


class MatmulFlops(TorchDispatchMode):
    """Counts the FLOPs of the matrix products run inside it (torch's FLOP formulas for mm, bmm,
    addmm, ...; ``2 M K N`` for the compiled products of ``nn/products.py`` and twice the
    multiply-adds of its block products, which torch does not see; elementwise work is not
    counted). Unlike ``FlopCounterMode`` it hooks no modules,
    so it works under ``torch.autograd.grad`` with leaf inputs."""

    def __init__(self):
        super().__init__()
        self.total = 0
        self._compiled = products._Library.product, products._Library.block_products

    def __enter__(self):
        product, block_products = self._compiled

        def counted(library, a, b, out):
            self.total += 2 * a.shape[0] * a.shape[1] * b.shape[1]
            return product(library, a, b, out)

        def counted_blocks(library, table, n, a, b, out):
            self.total += 2 * n * table.work_per_atom
            return block_products(library, table, n, a, b, out)
        products._Library.product, products._Library.block_products = counted, counted_blocks
        return super().__enter__()

    def __exit__(self, *exc):
        products._Library.product, products._Library.block_products = self._compiled
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def kernel_flops(model, atoms):
    """FLOPs of the compiled message-sum kernels (``nn/message_sums.c``) in one energy + forces
    call: per edge and group of paths, ``paths * d1 * mul`` products ``z = R x``, then ``d2``
    multiply-adds per product forward, and ``2 d2 + 2`` backward (dz, grad_Y, grad_R, grad_x)."""
    edge_index, _ = cell_list(torch.tensor(atoms.positions), torch.tensor(atoms.cell.array),
                              torch.tensor(atoms.pbc), model.cutoff)
    per_edge = 0
    for conv in model.modules():
        if isinstance(conv, TensorProductConv) and conv._compiled_kernels(torch.zeros(0)) is not None:
            for _, d2, g in conv._groups():
                products = g.paths * g.d1 * g.mul
                per_edge += products * (1 + 2 * d2) + products * (1 + 2 * (2 * d2 + 2))
    return per_edge * edge_index.shape[1]


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


_jitter = np.random.default_rng(0)


def evaluate(calc, atoms, device):
    """One energy + forces + stress call on a fresh geometry (a copy moved by ~1e-3 Å, so that
    no calculator can answer from its cache); returns seconds."""
    atoms = atoms.copy()
    atoms.positions += _jitter.normal(scale=1e-3, size=atoms.positions.shape)
    atoms.calc = calc
    sync(device)
    t = time.perf_counter()
    atoms.get_forces()
    if atoms.pbc.all():
        atoms.get_stress()
    sync(device)
    return time.perf_counter() - t


def rss_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="*", help="Cu fcc cells of about these many atoms")
    parser.add_argument("--no-reference", action="store_true", help="skip the sevenn calculator")
    parser.add_argument("--edge-block", type=int, default=None,
                        help="edges per block of work of ours (default: the model's choice for the device)")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    reference = None
    if not args.no_reference:
        try:
            from sevenn.calculator import SevenNetCalculator
            # sevenn runs in float32 only (its compiled e3nn modules keep float32 constants)
            reference = SevenNetCalculator("7net-0", device=args.device)
        except ImportError:
            print("sevenn is not installed: reporting ours only")
    ours = EquivariantCalculator(device=args.device, dtype=args.dtype, skin=0.0)
    ours.model.edge_block = args.edge_block

    gemm_name = f"{'s' if dtype == torch.float32 else 'd'}gemm"
    print(f"# machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}, {args.dtype}, edges per block "
          f"{ours.model.edge_block_size(torch.empty(0, dtype=dtype, device=args.device))}")
    print(f"# {gemm_name}: GFLOP/s of 2048 x 2048 products measured between the calls of each structure")
    header = (f"{'system':>8} {'atoms':>6} {'ours ms min':>11} {'median':>8} {'ms/atom':>8} {'GFLOP':>7} "
              f"{'GFLOP/s':>8} {gemm_name:>6} {'%gemm':>6} {'mem MiB':>9}")
    if reference is not None:
        header += f" {'sevenn32 ms min':>15} {'median':>8} {'speed-up':>8} {'ref GFLOP':>9} {'limit ms':>8} {'/limit':>6}"
    print(header)
    for name, atoms in structures(args.sizes).items():
        calcs = [("ours", ours)] + ([("ref", reference)] if reference is not None else [])
        for _, calc in calcs:  # warm-up
            evaluate(calc, atoms, args.device)
        times = {key: [] for key, _ in calcs}
        gemm = 0.0
        for _ in range(args.repeats):
            gemm = max(gemm, gemm_gflops(dtype, args.device, repeats=1))
            for key, calc in calcs:
                times[key].append(evaluate(calc, atoms, args.device))
        if torch.device(args.device).type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            evaluate(ours, atoms, args.device)
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = rss_mib()
        with MatmulFlops() as counter:
            evaluate(ours, atoms, args.device)
        flops = counter.total + (kernel_flops(ours.model, atoms) if torch.device(args.device).type == "cpu" else 0)
        best = min(times["ours"])
        line = (f"{name:>8} {len(atoms):>6} {1e3 * best:>11.1f} {1e3 * statistics.median(times['ours']):>8.1f} "
                f"{1e3 * best / len(atoms):>8.3f} {flops / 1e9:>7.2f} {flops / best / 1e9:>8.1f} "
                f"{gemm:>6.0f} {100 * flops / best / 1e9 / gemm:>5.0f}% {peak:>9.0f}")
        if reference is not None:
            ref_best = min(times["ref"])
            with MatmulFlops() as ref_counter:
                evaluate(reference, atoms, args.device)
            limit = ref_counter.total / (gemm * 1e9)  # the model's products at the sgemm rate
            line += (f" {1e3 * ref_best:>15.1f} {1e3 * statistics.median(times['ref']):>8.1f} "
                     f"{ref_best / best:>7.1f}x {ref_counter.total / 1e9:>9.2f} {1e3 * limit:>8.1f} "
                     f"{best / limit:>5.2f}x")
        print(line, flush=True)
        gc.collect()


if __name__ == "__main__":
    main()
