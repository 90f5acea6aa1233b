"""Memory and time of one SevenNet-0 energy + forces + stress call on large fcc Cu cells (ours only).

Each size runs in a fresh process, so that the resident high-water mark (``VmHWM``) belongs to
that size alone; the mark before the call (model loaded, structure built) is subtracted to give
the memory of the call per atom. The first call of a process includes one-off costs, so the time
here is an upper bound; ``benchmarks/model.py`` gives steady-state times.

    python benchmarks/memory.py                        # 1k, 10k and 100k atoms
    python benchmarks/memory.py --sizes 2000 20000 --dtype float64
"""
import argparse
import subprocess
import sys
import time


def one(atoms_wanted: int, dtype: str):
    """Runs in the child process: prints one table row."""
    import numpy as np
    import torch
    from model import rss_mib, structures  # benchmarks/model.py: the same Cu cells, the same VmHWM

    from ase_equivariant import EquivariantCalculator

    (atoms,) = structures([atoms_wanted]).values()
    atoms.calc = EquivariantCalculator(device="cpu", dtype=dtype, skin=0.0)
    before = rss_mib()
    t = time.perf_counter()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    seconds = time.perf_counter() - t
    peak = rss_mib()
    assert np.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(stress).all()
    n = len(atoms)
    print(f"{n:>8} {seconds:>8.1f} {1e3 * seconds / n:>8.2f} {before:>10.0f} {peak:>10.0f} "
          f"{(peak - before) * 1024 / n:>9.0f}   {torch.get_num_threads()} threads, {dtype}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000, 100000])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        one(args.child, args.dtype)
        return
    print(f"{'atoms':>8} {'s/call':>8} {'ms/atom':>8} {'MiB before':>10} {'MiB peak':>10} {'KiB/atom':>9}")
    for size in args.sizes:
        subprocess.run([sys.executable, __file__, "--child", str(size), "--dtype", args.dtype], check=True)


if __name__ == "__main__":
    main()
