"""Neighbour-list benchmark: our cell list against vesin, matscipy and ASE.

fcc Cu (a = 3.61 Å), cutoff 5 Å, full list with shifts, from 256 atoms up.  Every code runs in
the same process on the same structures, interleaved; each time is the minimum over a few
repeats after a warm-up call.  Ours runs twice: as ``cell_list`` runs on CPU (the compiled
search of ``cell_list.c``) and on its pure-torch path (what GPUs run, and CPUs without a C
compiler).  Prints a markdown table (wall time, ns per pair, ratio to vesin), then how far each
code's ns/pair strays from its mean over 2k atoms and up.

    python benchmarks/neighbors.py [--max-atoms 131072] [--repeats 5] [--threads N]
"""
import argparse
import platform
import time

import numpy as np
import torch
from ase.build import bulk
from ase.neighborlist import neighbor_list as ase_neighbor_list

from ase_equivariant import neighbors
from ase_equivariant.neighbors import cell_list

CUTOFF = 5.0
ASE_LIMIT_S = 30.0  # ASE runs only where its previous time predicts less than this


def cpu_name():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo
                     if line.startswith("model name")]
        return f"{names[0]} ({len(names)} logical CPUs)"
    except (OSError, IndexError):
        return platform.processor() or platform.machine()


def structure(n_cells):
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n_cells)


def on_torch_path(function):
    """``function`` run with the compiled search hidden, so that cell_list takes its torch path."""
    def run():
        compiled = neighbors._compiled_search
        neighbors._compiled_search = lambda: None
        try:
            return function()
        finally:
            neighbors._compiled_search = compiled
    return run


def codes(atoms):
    """name -> function computing the full list (i, j, S) of ``atoms``."""
    import vesin
    from matscipy.neighbours import neighbour_list as matscipy_neighbour_list

    positions = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell.array)
    nl = vesin.NeighborList(cutoff=CUTOFF, full_list=True)
    return {
        "ours": lambda: cell_list(positions, cell, atoms.pbc, CUTOFF),
        "ours (torch path)": on_torch_path(lambda: cell_list(positions, cell, atoms.pbc, CUTOFF)),
        "vesin": lambda: nl.compute(atoms.positions, atoms.cell.array, True, "ijS"),
        "matscipy": lambda: matscipy_neighbour_list("ijS", atoms, CUTOFF),
        "ASE": lambda: ase_neighbor_list("ijS", atoms, CUTOFF),
    }


def n_pairs(result):
    return int(result[0].shape[-1]) if isinstance(result[0], torch.Tensor) else len(result[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-atoms", type=int, default=131072)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"# {cpu_name()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads, cutoff {CUTOFF} Å, fcc Cu a=3.61 Å")
    if neighbors._compiled_search() is None:
        print("# no compiled search here: 'ours' is the torch path too")
    print("| atoms | pairs | code | time (ms) | ns/pair | / vesin |")
    print("|------:|------:|------|----------:|--------:|--------:|")
    ase_time = 0.0
    ns_per_pair = {}
    for n_cells in (4, 8, 16, 32, 64):
        atoms = structure(n_cells)
        if len(atoms) > args.max_atoms:
            break
        run = codes(atoms)
        if 9 * ase_time > ASE_LIMIT_S:  # 8 times the atoms, a little more than 8 times the time
            del run["ASE"]
        pairs = {name: n_pairs(f()) for name, f in run.items()}  # warm-up and check
        assert len(set(pairs.values())) == 1, pairs
        best = {name: np.inf for name in run}
        for _ in range(args.repeats):  # interleaved, so a busy machine slows all codes alike
            for name, f in run.items():
                if name == "ASE" and best[name] < np.inf:
                    continue  # one timed run of ASE is enough
                start = time.perf_counter()
                f()
                best[name] = min(best[name], time.perf_counter() - start)
        ase_time = best.get("ASE", np.inf)
        n = pairs["vesin"]
        for name, seconds in best.items():
            print(f"| {len(atoms)} | {n} | {name} | {1e3 * seconds:.1f} | "
                  f"{1e9 * seconds / n:.0f} | {seconds / best['vesin']:.2f} |", flush=True)
            if len(atoms) >= 2048:
                ns_per_pair.setdefault(name, []).append(1e9 * seconds / n)
    print("\nns/pair from 2k atoms up, against its mean (linear scaling: flat):")
    for name, values in ns_per_pair.items():
        mean = np.mean(values)
        spread = ", ".join(f"{100 * (v / mean - 1):+.0f} %" for v in values)
        print(f"  {name}: {spread} of {mean:.0f} ns/pair")


if __name__ == "__main__":
    main()
