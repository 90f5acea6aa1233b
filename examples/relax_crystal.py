"""Relax a strained, rattled silicon crystal (positions and cell) and compare the lattice constant
with experiment.

    python examples/relax_crystal.py                                   # about 25 s on 2 cores
    ASE_EQUIVARIANT_EXAMPLE_STEPS=5 python examples/relax_crystal.py   # at most 5 optimizer steps

The input, data/structures/si_strained.extxyz, is a 64-atom diamond cell strained by a few per cent
(including shear) and rattled by 0.05 Å. Writes si_relaxed.extxyz in the current folder.
"""
import os
import warnings

import numpy as np
from ase.filters import FrechetCellFilter
from ase.io import read, write
from ase.optimize import BFGS

from ase_equivariant import EquivariantCalculator
from ase_equivariant.models import data_path

max_steps = int(os.environ.get("ASE_EQUIVARIANT_EXAMPLE_STEPS", 300))
experiment = 5.431  # Å, silicon at room temperature
conventional_cells = 8  # the file holds 2×2×2 conventional cubic cells of 8 atoms

atoms = read(data_path("structures/si_strained.extxyz"))
atoms.calc = EquivariantCalculator()


def lattice_constant(atoms):
    return (atoms.get_volume() / conventional_cells) ** (1 / 3)


print(f"start: {len(atoms)} atoms, a = {lattice_constant(atoms):.4f} Å, "
      f"cell lengths {np.round(atoms.cell.lengths(), 3)} Å, angles {np.round(atoms.cell.angles(), 2)}°")
opt = BFGS(FrechetCellFilter(atoms), logfile="-")  # positions and cell together
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="logm result may be inaccurate")  # harmless scipy noise
    converged = opt.run(fmax=0.01, steps=max_steps)
write("si_relaxed.extxyz", atoms)

forces = np.linalg.norm(atoms.get_forces(), axis=1).max()
print(f"{'converged' if converged else 'NOT converged'} after {opt.nsteps} steps: "
      f"max force {forces:.4f} eV/Å, max stress {np.abs(atoms.get_stress()).max() * 160.2177:.4f} GPa")
print(f"cell lengths {np.round(atoms.cell.lengths(), 4)} Å, angles {np.round(atoms.cell.angles(), 2)}°")
print(f"lattice constant: {lattice_constant(atoms):.4f} Å (SevenNet-0) vs {experiment:.4f} Å (experiment), "
      f"{100 * (lattice_constant(atoms) / experiment - 1):+.2f}%")
