"""Symmetries of the potential: invariance of the energy (and permutation of the per-atom energies)
and equivariance of the forces under rotations, translations, permutations, lattice-vector shifts
of single atoms, change of cell basis and supercells; what a mirror does.

Graphs are rebuilt for every transformed structure with ``ase.neighborlist.neighbor_list``. Forces
come from autograd. Tolerances are relative: 1e-10 in float64, 1e-5 in float32.
"""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list

from ase_equivariant.models import load_model, random_model
from ase_equivariant.o3 import random_rotation

RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
MIRROR = np.diag([-1.0, 1.0, 1.0])


def evaluate(net, atoms):
    """Per-atom energies (N,) and forces (N, 3) as float64 numpy arrays."""
    dtype = next(net.parameters()).dtype
    i, j, S = neighbor_list("ijS", atoms, net.cutoff)
    positions = torch.tensor(atoms.positions, dtype=dtype, requires_grad=True)
    energies = net(positions, torch.tensor(atoms.numbers), torch.tensor(np.stack([i, j]), dtype=torch.int64),
                   torch.tensor(S), torch.tensor(atoms.cell.array, dtype=dtype))
    (grad,) = torch.autograd.grad(energies.sum(), positions)
    return energies.detach().double().numpy(), -grad.double().numpy()


def assert_same(net, reference, transformed, perm=None, rotation=None):
    """``transformed`` has the energy of ``reference``, per-atom energies ``e[perm]`` and forces
    ``F[perm] @ rotation.T``, to the relative tolerance of the model's dtype."""
    rtol = RTOL[next(net.parameters()).dtype]
    e0, f0 = evaluate(net, reference)
    e1, f1 = evaluate(net, transformed)
    perm = np.arange(len(reference)) if perm is None else perm
    rotation = np.eye(3) if rotation is None else rotation
    assert np.abs(f0).max() > 1e-3  # forces are not trivially zero
    assert abs(e1.sum() - e0.sum()) <= rtol * abs(e0.sum()), (e1.sum(), e0.sum())
    np.testing.assert_allclose(e1, e0[perm], rtol=0, atol=rtol * np.abs(e0).max())
    np.testing.assert_allclose(f1, f0[perm] @ rotation.T, rtol=0, atol=rtol * np.abs(f0).max())


def transformed(atoms, positions=None, cell=None, perm=None):
    out = atoms.copy()
    if cell is not None:
        out.set_cell(cell, scale_atoms=False)
    if positions is not None:
        out.positions = positions
    if perm is not None:
        out = out[perm]
    return out


# ---------------------------------------------------------------------------------------------
# structures


def periodic_alloy(seed=0):
    """7 atoms of Al, Cu, Si, O in a sheared triclinic cell smaller than twice the cutoff."""
    atoms = bulk("Al", "fcc", a=4.05, cubic=True) * (2, 1, 1)
    del atoms[5]
    atoms.numbers[[1, 4]] = 29
    atoms.numbers[2] = 14
    atoms.numbers[6] = 8
    rng = np.random.default_rng(seed)
    shear = np.array([[1.0, 0.0, 0.0], [0.4, 1.0, 0.0], [-0.3, 0.25, 1.0]]) + 0.05 * rng.normal(size=(3, 3))
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    atoms.rattle(0.1, seed=seed)
    return atoms


def chiral_molecule():
    """Bromochlorofluoromethane CHFClBr, rattled: chiral, no mirror symmetry."""
    directions = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
    bonds = np.array([1.09, 1.35, 1.77, 1.94])  # C-H, C-F, C-Cl, C-Br
    atoms = Atoms("CHFClBr", positions=np.vstack([[0.0, 0.0, 0.0], directions * bonds[:, None]]))
    atoms.rattle(0.05, seed=11)
    return atoms


def rattled_ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=2)
    return atoms


STRUCTURES = {"periodic": periodic_alloy, "molecule": rattled_ethanol}


@pytest.fixture(scope="module", params=["float64", "float32"])
def tiny(request):
    return random_model(species=(1, 6, 8, 13, 14, 29), channels=8, lmax=2, num_blocks=2, seed=1,
                        dtype=request.param)


@pytest.fixture(scope="module")
def sevennet0():
    return load_model("sevennet-0", dtype="float32")


# ---------------------------------------------------------------------------------------------
# proper symmetries: random model (float64 and float32)


@pytest.mark.parametrize("kind", list(STRUCTURES))
@pytest.mark.parametrize("seed", [0, 1])
def test_rotation(tiny, kind, seed):
    atoms = STRUCTURES[kind]()
    R = random_rotation(torch.Generator().manual_seed(seed)).numpy()
    cell = atoms.cell.array @ R.T if atoms.pbc.any() else None
    assert_same(tiny, atoms, transformed(atoms, positions=atoms.positions @ R.T, cell=cell), rotation=R)


@pytest.mark.parametrize("kind", list(STRUCTURES))
def test_translation(tiny, kind):
    atoms = STRUCTURES[kind]()
    shift = np.array([3.7, -12.2, 0.45])
    assert_same(tiny, atoms, transformed(atoms, positions=atoms.positions + shift))


@pytest.mark.parametrize("kind", list(STRUCTURES))
def test_permutation(tiny, kind):
    atoms = STRUCTURES[kind]()
    perm = np.random.default_rng(4).permutation(len(atoms))
    assert not np.array_equal(perm, np.arange(len(atoms)))
    assert_same(tiny, atoms, transformed(atoms, perm=perm), perm=perm)


def test_lattice_vector_shift_of_single_atoms(tiny):
    atoms = periodic_alloy()
    positions = atoms.positions.copy()
    positions[0] += np.array([1, 0, 0]) @ atoms.cell.array
    positions[3] += np.array([-2, 1, 3]) @ atoms.cell.array
    positions[6] += np.array([0, -1, 1]) @ atoms.cell.array
    assert_same(tiny, atoms, transformed(atoms, positions=positions))


def test_change_of_cell_basis(tiny):
    """The same lattice written with a more skewed basis (unimodular integer matrix)."""
    atoms = periodic_alloy()
    M = np.array([[1, 1, 0], [0, 1, 0], [1, -1, 1]])
    assert round(abs(np.linalg.det(M))) == 1
    assert_same(tiny, atoms, transformed(atoms, cell=M @ atoms.cell.array))


def test_all_at_once(tiny):
    atoms = periodic_alloy(seed=5)
    R = random_rotation(torch.Generator().manual_seed(7)).numpy()
    perm = np.random.default_rng(7).permutation(len(atoms))
    positions = atoms.positions + np.array([1, -1, 2]) @ atoms.cell.array + [0.3, -5.0, 2.0]
    moved = transformed(atoms, positions=positions @ R.T, cell=atoms.cell.array @ R.T, perm=perm)
    assert_same(tiny, atoms, moved, perm=perm, rotation=R)


def test_supercell(tiny):
    """A 2x2x2 supercell has 8x the energy and the same per-atom energies and forces."""
    rtol = RTOL[next(tiny.parameters()).dtype]
    atoms = periodic_alloy()
    e, f = evaluate(tiny, atoms)
    e8, f8 = evaluate(tiny, atoms * (2, 2, 2))
    assert abs(e8.sum() - 8 * e.sum()) <= rtol * abs(8 * e.sum())
    np.testing.assert_allclose(e8, np.tile(e, 8), rtol=0, atol=rtol * np.abs(e).max())
    np.testing.assert_allclose(f8, np.tile(f, (8, 1)), rtol=0, atol=rtol * np.abs(f).max())


# ---------------------------------------------------------------------------------------------
# proper symmetries: the full SevenNet-0 in float32


def test_sevennet0_invariances(sevennet0):
    atoms = periodic_alloy(seed=3)
    R = random_rotation(torch.Generator().manual_seed(3)).numpy()
    perm = np.random.default_rng(3).permutation(len(atoms))
    cell = atoms.cell.array
    shifted = atoms.positions.copy()
    shifted[[1, 5]] += np.array([[1, -1, 0], [0, 2, -1]]) @ cell
    assert_same(sevennet0, atoms, transformed(atoms, positions=atoms.positions @ R.T, cell=cell @ R.T), rotation=R)
    assert_same(sevennet0, atoms, transformed(atoms, positions=atoms.positions + [4.2, -1.3, 7.9]))
    assert_same(sevennet0, atoms, transformed(atoms, perm=perm), perm=perm)
    assert_same(sevennet0, atoms, transformed(atoms, positions=shifted))
    mol = chiral_molecule()
    assert_same(sevennet0, mol, transformed(mol, positions=mol.positions @ R.T), rotation=R)


# ---------------------------------------------------------------------------------------------
# reflections: report for SevenNet-0 (no parity), prove the check works on random models


def mirror_change(net, atoms):
    """|E(mirror image) - E| in eV, and the largest force deviation from the mirrored forces."""
    mirrored = transformed(atoms, positions=atoms.positions @ MIRROR,
                           cell=atoms.cell.array @ MIRROR if atoms.pbc.any() else None)
    e0, f0 = evaluate(net, atoms)
    e1, f1 = evaluate(net, mirrored)
    return abs(e1.sum() - e0.sum()), np.abs(f1 - f0 @ MIRROR).max(), abs(e0.sum())


def _chiral_structures():
    molecule = chiral_molecule()
    molecule.numbers = [6, 1, 8, 29, 14]  # elements the random model knows
    return molecule, periodic_alloy()


def test_mirror_invariance_with_parity():
    # three blocks, as below: with two, even an SO(3)-only model cannot tell a mirror image apart
    net = random_model(parity=True, num_blocks=3, seed=1, dtype="float64")
    for atoms in _chiral_structures():
        de, df, e = mirror_change(net, atoms)
        assert de <= 1e-10 * e and df <= 1e-10, (de, df)


def test_mirror_changes_energy_without_parity():
    """An SO(3)-only model tells a chiral structure from its mirror image: the check can fail.
    (It takes three blocks: a pseudoscalar needs a cross product (1x1->1) before the final dot.)"""
    net = random_model(parity=False, num_blocks=3, seed=1, dtype="float64")
    for atoms in _chiral_structures():
        de, df, _ = mirror_change(net, atoms)
        assert de > 1e-8 and df > 1e-8, (de, df)


def test_sevennet0_mirror_report():
    """SevenNet-0 has no parity: record how much a mirror changes the energy (not a bug).
    Seen: CHFClBr 2.0e-3 eV, the 7-atom triclinic cell 6.5e-5 eV (float32 and float64 agree)."""
    lines = []
    for dtype in ("float32", "float64"):
        net = load_model("sevennet-0", dtype=dtype)
        for name, atoms in (("CHFClBr (rattled)", chiral_molecule()), ("Al-Cu-Si-O triclinic", periodic_alloy(seed=3))):
            de, df, e = mirror_change(net, atoms)
            assert np.isfinite(de) and np.isfinite(df)
            assert de < 1e-2 * len(atoms)  # a mirror is a small perturbation, not a breakdown
            lines.append(f"  {dtype} {name:22s} |dE| = {de:.3e} eV ({de / len(atoms):.3e} eV/atom, "
                         f"rel {de / e:.1e}), max |dF| = {df:.3e} eV/A")
    print("\nSevenNet-0 energy change under a mirror x -> -x:\n" + "\n".join(lines))
