"""Microcanonical (NVE) dynamics of fcc copper: how well is the total energy conserved?

Forces are exact derivatives of the energy (autograd), so velocity Verlet conserves the total
energy up to the integrator's O(dt²) error and the float32 round-off.

    python examples/nve.py                                   # 200 steps of 2 fs, about 20 s on 2 cores
    ASE_EQUIVARIANT_EXAMPLE_STEPS=20 python examples/nve.py  # a short run
"""
import os

import numpy as np
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

from ase_equivariant import EquivariantCalculator

steps = int(os.environ.get("ASE_EQUIVARIANT_EXAMPLE_STEPS", 200))
timestep = 2.0  # fs

atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)  # 32 atoms
atoms.calc = EquivariantCalculator()  # try dtype="float64" to compare
# Start at 600 K on the perfect lattice: equipartition brings the system to about 300 K.
thermalize_momenta(atoms, temperature_K=600, rng=np.random.default_rng(0))
Stationary(atoms)

dyn = VelocityVerlet(atoms, timestep=timestep * units.fs)
times, energies = [], []


def record():
    times.append(dyn.get_time() / (1000 * units.fs))  # ps
    energies.append(atoms.get_total_energy() / len(atoms))  # eV/atom
    if len(times) % 10 == 1:
        print(f"t = {times[-1]:6.3f} ps   T = {atoms.get_temperature():6.1f} K   "
              f"Etot = {energies[-1]:.6f} eV/atom", flush=True)


dyn.attach(record, interval=2)
dyn.run(steps)

times, energies = np.array(times), 1000 * np.array(energies)  # ps, meV/atom
slope = np.polyfit(times, energies, 1)[0] if len(times) > 1 else float("nan")
print(f"{steps} steps of {timestep:g} fs ({times[-1]:.3f} ps), final T {atoms.get_temperature():.1f} K")
print(f"total-energy fluctuation (std): {energies.std():.4f} meV/atom")
print(f"total-energy drift: {slope:+.4f} meV/atom/ps (first to last: {energies[-1] - energies[0]:+.4f} meV/atom)")
