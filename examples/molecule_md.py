"""Langevin dynamics of an ethanol molecule in vacuum: no cell, no periodic boundaries.

    python examples/molecule_md.py                                   # 1000 steps of 0.5 fs, about 30 s on 2 cores
    ASE_EQUIVARIANT_EXAMPLE_STEPS=50 python examples/molecule_md.py  # a short run

Reads data/structures/ethanol.xyz; writes ethanol_md.traj in the current folder.
"""
import os

import numpy as np
from ase import units
from ase.constraints import FixCom
from ase.io import read
from ase.io.trajectory import Trajectory
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import ZeroRotation

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

from ase_equivariant import EquivariantCalculator
from ase_equivariant.models import data_path

steps = int(os.environ.get("ASE_EQUIVARIANT_EXAMPLE_STEPS", 1000))
temperature = 300.0  # K
rng = np.random.default_rng(7)

atoms = read(data_path("structures/ethanol.xyz"))  # pbc False, no cell: nothing else to set
atoms.calc = EquivariantCalculator()
atoms.set_constraint(FixCom())
thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
ZeroRotation(atoms)

# 0.5 fs resolves the O-H and C-H stretches
dyn = Langevin(atoms, timestep=0.5 * units.fs, temperature_K=temperature, friction=0.01 / units.fs,
               fixcm=False, rng=rng)
traj = Trajectory("ethanol_md.traj", "w", atoms)
dyn.attach(traj.write, interval=20)
co, temperatures = [], []


def report():
    co.append(atoms.get_distance(1, 2))  # the C-O bond (atoms 1 and 2 in this file)
    temperatures.append(atoms.get_temperature())
    if len(co) % 10 == 1:
        print(f"t = {dyn.get_time() / (1000 * units.fs):6.3f} ps   T = {temperatures[-1]:6.1f} K   "
              f"Epot = {atoms.get_potential_energy():.4f} eV   C-O = {co[-1]:.3f} Å", flush=True)


dyn.attach(report, interval=10)
dyn.run(steps)
traj.close()
print(f"{steps} steps: mean T {np.mean(temperatures):.1f} K (target {temperature:g} K), "
      f"mean C-O bond {np.mean(co):.3f} ± {np.std(co):.3f} Å; trajectory in ethanol_md.traj")
