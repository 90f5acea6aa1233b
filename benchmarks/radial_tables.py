"""SevenNet-0's radial weights from tables (``nn/radial_table.py``) against its radial MLP, float32, CPU.

Three measurements, each printing both sides of the comparison from the same run:

* accuracy: energy, forces and stress of rattled Cu108, Si64 and ethanol in float32 with tables
  and with the MLP, as max |difference| from float64 (which uses the MLP);
* the tables' size and the time to make them; speed alone: the interpolation and its distance
  gradient for the pairs of an 864-atom fcc Cu cell against the two matrix products they
  replace, per 960-wide layer;
* with ``--nve``: velocity Verlet of Cu108 from 1200 K (``--steps`` of 2 fs) with tables and with
  the MLP: spread, drift and largest excursion of the total energy.

    python benchmarks/radial_tables.py
    python benchmarks/radial_tables.py --nve --steps 500
"""
import argparse
import contextlib
import time

import numpy as np
import torch
from ase import units
from ase.build import bulk, molecule
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from ase_equivariant import EquivariantCalculator
from ase_equivariant.nn import products, radial_table


class _MLP:
    """Within it, no tables: calls made inside use the radial MLP."""

    def __enter__(self):
        self._available = radial_table.available
        radial_table.available = lambda: False

    def __exit__(self, *exc):
        radial_table.available = self._available


def _results(atoms, dtype):
    props = ["energy", "forces"] + (["stress"] if atoms.pbc.all() else [])
    calc = EquivariantCalculator(dtype=dtype)
    calc.calculate(atoms.copy(), props)
    return {k: np.asarray(calc.results[k]) for k in props}


def accuracy():
    print("max |float32 - float64|: with tables | with the MLP   (energy eV, forces eV/Å, stress eV/Å³)")
    systems = {"Cu108": bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3),
               "Si64": bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2),
               "ethanol": molecule("CH3CH2OH")}
    for name, atoms in systems.items():
        atoms.rattle(0.05, seed=1)
        reference = _results(atoms, "float64")
        tables = _results(atoms, "float32")
        with _MLP():
            mlp = _results(atoms, "float32")
        row = "  ".join(f"{k} {abs(tables[k] - reference[k]).max():.2e} | {abs(mlp[k] - reference[k]).max():.2e}"
                        for k in reference)
        print(f"  {name:8s} {row}")


def _best_ms(f, repeats=10):
    f()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def speed():
    calc = EquivariantCalculator()
    model = calc.model
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (6, 6, 6)
    pairs = 864 * 42 // 2
    r = torch.as_tensor(np.random.default_rng(0).uniform(2.2, model.cutoff, pairs), dtype=torch.float32)
    t = time.perf_counter()
    tables = model._radial_tables(r)
    built = time.perf_counter() - t
    size = sum(3 * t.values.numel() * t.values.element_size() for t in tables) / 2**20
    print(f"tables: {len(tables)} layers, {tables[0].values.shape[0]} nodes, {size:.1f} MiB, made in {built:.2f} s")
    conv, table = next((b.conv, t) for b, t in zip(model.blocks, tables) if t.width == 960)
    hidden = torch.randn(pairs, conv.radial.sizes[-2])
    matrix = conv.radial.output_matrix(conv._weight_columns, 1 / conv.denominator)
    matrix_t = conv.radial.output_matrix(conv._weight_columns, 1 / conv.denominator, transposed=True)
    weights, grad = torch.empty(pairs, 960), torch.randn(pairs, 960)
    grad_hidden = torch.empty(pairs, hidden.shape[1])
    print(f"one 960-wide layer, {pairs} pairs ({len(atoms)} Cu atoms), {torch.get_num_threads()} threads, ms:")
    print(f"  weights:  interpolation {_best_ms(lambda: table.interpolate(r, weights)):.2f} | "
          f"(P, 64) @ (64, 960) {_best_ms(lambda: products.product(hidden, matrix, out=weights)):.2f}")
    print(f"  gradient: distance gradient {_best_ms(lambda: table.distance_gradient(r, grad)):.2f} | "
          f"(P, 960) @ (960, 64) {_best_ms(lambda: products.product(grad, matrix_t, out=grad_hidden)):.2f}")


def nve(steps):
    print(f"NVE, Cu108 from 1200 K, {steps} steps of 2 fs: total energy spread, drift, largest |E - E0| (eV)")
    for label in ("tables", "MLP"):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
        MaxwellBoltzmannDistribution(atoms, temperature_K=1200, rng=np.random.default_rng(0))
        atoms.calc = EquivariantCalculator()
        energies = []
        dynamics = VelocityVerlet(atoms, 2 * units.fs)
        dynamics.attach(lambda: energies.append(atoms.get_total_energy()), interval=1)
        t = time.perf_counter()
        with _MLP() if label == "MLP" else contextlib.nullcontext():
            dynamics.run(steps)
        seconds = time.perf_counter() - t
        e = np.array(energies)
        drift = np.polyfit(np.arange(len(e)) * 2e-3, e, 1)[0]  # eV per ps
        print(f"  {label:6s} {e.std():.2e} spread, {drift:.2e} eV/ps drift, {abs(e - e[0]).max():.2e} largest; "
              f"{seconds:.1f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nve", action="store_true", help="also the NVE comparison")
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    accuracy()
    speed()
    if args.nve:
        nve(args.steps)


if __name__ == "__main__":
    main()
