"""Langevin (NVT) molecular dynamics of an fcc copper supercell at 300 K with the default model.

    python examples/langevin.py                                   # 200 steps of 2 fs, about 20 s on 2 cores
    ASE_EQUIVARIANT_EXAMPLE_STEPS=20 python examples/langevin.py  # a short run

Writes cu_langevin.traj in the current folder (look at it with ``ase gui cu_langevin.traj``).
"""
import os

import numpy as np
from ase import units
from ase.build import bulk
from ase.constraints import FixCom
from ase.io.trajectory import Trajectory
from ase.md.langevin import Langevin

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

from ase_equivariant import EquivariantCalculator

steps = int(os.environ.get("ASE_EQUIVARIANT_EXAMPLE_STEPS", 200))
temperature = 300.0  # K
rng = np.random.default_rng(42)  # the same seed gives the same run

atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)  # 32 atoms
atoms.calc = EquivariantCalculator()  # SevenNet-0, float32, on a GPU if there is one
atoms.set_constraint(FixCom())  # keep the centre of mass in place
thermalize_momenta(atoms, temperature_K=temperature, rng=rng)

dyn = Langevin(atoms, timestep=2 * units.fs, temperature_K=temperature, friction=0.01 / units.fs,
               fixcm=False, rng=rng)
traj = Trajectory("cu_langevin.traj", "w", atoms)
dyn.attach(traj.write, interval=10)
temperatures = []


def report():
    temperatures.append(atoms.get_temperature())
    print(f"t = {dyn.get_time() / (1000 * units.fs):6.3f} ps   T = {temperatures[-1]:6.1f} K   "
          f"Epot = {atoms.get_potential_energy() / len(atoms):.4f} eV/atom", flush=True)


dyn.attach(report, interval=20)
dyn.run(steps)
traj.close()
print(f"mean T over the run: {np.mean(temperatures):.1f} K (target {temperature:g} K); "
      f"{steps} steps written to cu_langevin.traj every 10 steps")
