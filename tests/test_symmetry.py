"""Symmetry diagnostics and symmetrised calculators (ase_equivariant.symmetry)."""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.neighborlist import neighbor_list
from ase.stress import full_3x3_to_voigt_6_stress

import ase_equivariant
from ase_equivariant.models import random_model
from ase_equivariant.o3 import spherical_harmonics, wigner_D
from ase_equivariant.symmetry import (
    SYMMETRIES,
    SymmetrizedCalculator,
    calculator_by_name,
    check_report,
    equivariance_error,
    rotation_quadrature,
)

ROUND_OFF = 1e-10


def alloy(seed=0):
    """A rattled, sheared 4-atom Cu2Al2 fcc cell."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.numbers[[0, 2]] = 13
    rng = np.random.default_rng(seed)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.05 * rng.normal(size=(3, 3))), scale_atoms=True)
    atoms.rattle(0.1, seed=seed + 1)
    return atoms


def chiral_molecule():
    """CHFClBr, a chiral molecule (slightly distorted tetrahedral carbon)."""
    directions = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
    bonds = np.array([1.09, 1.35, 1.77, 1.94])
    atoms = Atoms("CHFClBr", positions=np.vstack([np.zeros(3), directions * bonds[:, None]]))
    atoms.rattle(0.05, seed=2)
    return atoms


#: reflection through a plane of generic orientation (not a symmetry of any grid used here)
NORMAL = np.array([0.3, -0.5, 0.81]) / np.linalg.norm([0.3, -0.5, 0.81])
MIRROR = np.eye(3) - 2 * np.outer(NORMAL, NORMAL)


def mirror_image(atoms):
    image = atoms.copy()
    image.positions = atoms.positions @ MIRROR
    return image


def worst(errors):
    return max(max(row.values()) for row in errors.values())


#: harmonic homogeneous polynomials u (N, 3) -> (values (N,), gradients (N, 3)), by degree l:
#: a function of the orientation with angular content of degree exactly l
HARMONICS = {
    2: lambda u: (u[:, 0] ** 2 - u[:, 1] ** 2, 2 * u * np.array([1.0, -1.0, 0.0])),
    4: lambda u: ((u**4).sum(1) - 0.6 * (u * u).sum(1) ** 2, 4 * u**3 - 2.4 * (u * u).sum(1, keepdims=True) * u),
}
#: a fixed generic orientation, so the term is not aligned with the quadrature grid
TILT = np.linalg.qr(np.random.default_rng(7).normal(size=(3, 3)))[0]


class OrientedEMT(EMT):
    """A deliberately broken calculator: EMT plus ``c Σ_i h(T (r_i - r̄))``, ``h`` a harmonic
    polynomial of degree ``degree`` and ``r̄`` the mean position, with exact forces and stress.

    As a function of a rotation ``R`` of the structure the extra energy contains only Wigner-D
    components of degree ``degree``; it is invariant under translations and permutations.
    """

    def __init__(self, degree, strength=2e-3):
        super().__init__()
        self.degree, self.strength = degree, strength

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        v = self.atoms.positions - self.atoms.positions.mean(0)
        value, grad = HARMONICS[self.degree](v @ TILT.T)
        dv = self.strength * grad @ TILT  # (N, 3): d(extra energy)/d v_i
        extra = self.strength * value.sum()
        self.results["energy"] = self.results["free_energy"] = self.results["energy"] + extra
        self.results.pop("energies")
        self.results["forces"] = self.results["forces"] - (dv - dv.mean(0))
        if "stress" in self.results:
            virial = v.T @ dv  # dE/d(strain) for positions -> positions (1 + strain)
            symmetric = 0.5 * (virial + virial.T)
            self.results["stress"] = self.results["stress"] + full_3x3_to_voigt_6_stress(symmetric) / self.atoms.get_volume()


class TorchModelCalculator(Calculator):
    """A minimal ASE calculator around an ``EquivariantPotential`` (molecules only): energy from
    ``net(positions, numbers, edge_index, shifts, cell)``, forces by autograd."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, net):
        super().__init__()
        self.net = net

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        i, j, S = neighbor_list("ijS", self.atoms, self.net.cutoff)
        positions = torch.tensor(self.atoms.positions, requires_grad=True)
        energy = self.net(positions, torch.tensor(self.atoms.numbers), torch.tensor(np.stack([i, j])),
                          torch.tensor(S), torch.tensor(self.atoms.cell.array)).sum()
        (grad,) = torch.autograd.grad(energy, positions)
        self.results.update(energy=energy.item(), free_energy=energy.item(), forces=-grad.numpy())


@pytest.fixture(scope="module")
def chiral_model():
    """A float64 SO(3)- but not O(3)-equivariant random potential (parity=False), as a calculator.
    Three blocks: the first chirality-sensitive scalar, a triple product, needs a vector made by a
    cross product in one block and contracted with an edge direction in the next."""
    return TorchModelCalculator(random_model(species=(1, 6, 9, 17, 35), parity=False, num_blocks=3, seed=0))


@pytest.mark.parametrize("l_max", range(6))
def test_quadrature_is_exact_up_to_l_max_and_not_beyond(l_max):
    rotations, weights = rotation_quadrature(l_max)
    assert len(weights) == (l_max + 1) ** 2 * ((l_max + 2) // 2)
    np.testing.assert_allclose(np.einsum("kab,kcb->kac", rotations, rotations), np.tile(np.eye(3), (len(weights), 1, 1)),
                               atol=1e-14)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0)
    assert (weights > 0).all() and abs(weights.sum() - 1) < 1e-14
    for l in range(1, l_max + 2):  # Haar average of D^l is 0 for l >= 1
        average = np.tensordot(weights, wigner_D(l, torch.from_numpy(rotations)).numpy(), axes=1)
        if l <= l_max:
            assert np.abs(average).max() < 1e-14
        else:
            assert np.abs(average).max() > 0.1


@pytest.mark.parametrize("pbc", [True, (True, True, False)])
def test_emt_is_symmetric_to_round_off(pbc):
    atoms = alloy()
    atoms.pbc = pbc
    errors = equivariance_error(EMT(), atoms, n_rotations=8, n_samples=4)
    assert list(errors) == list(SYMMETRIES)
    assert all(("stress" in row) == (pbc is True) for row in errors.values())
    assert worst(errors) < ROUND_OFF


def test_molecule_without_identical_atoms_has_no_permutation_or_cell_figures():
    cluster = Atoms("CuAgAu", positions=[[0, 0, 0], [2.6, 0.1, 0], [0.3, 2.7, 0.4]])
    errors = equivariance_error(EMT(), cluster, n_rotations=4, n_samples=2)
    assert list(errors) == ["rotation", "inversion", "translation"]
    assert all(list(row) == ["energy", "forces"] for row in errors.values())
    assert worst(errors) < ROUND_OFF


def test_broken_calculator_is_detected_per_symmetry():
    atoms = alloy()
    errors = equivariance_error(OrientedEMT(4), atoms, n_rotations=8, n_samples=4)
    assert min(errors["rotation"].values()) > 1e-4 and min(errors["inversion"].values()) > 1e-4
    assert max(errors["translation"].values()) < ROUND_OFF and max(errors["permutation"].values()) < ROUND_OFF
    assert min(errors["cell"].values()) > 1e-4  # the mean position moves with lattice shifts


def test_broken_calculator_forces_and_stress_are_its_derivatives():
    atoms = alloy()
    atoms.calc = OrientedEMT(4)
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-4), atol=1e-7)
    np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-5), atol=1e-7)


@pytest.mark.parametrize("degree, l_max", [(2, 2), (4, 2), (4, 3), (4, 4)])
def test_symmetrization_removes_orientation_terms_up_to_its_degree(degree, l_max):
    atoms = alloy()
    options = dict(n_rotations=4, symmetries=("rotation",))
    raw = equivariance_error(OrientedEMT(degree), atoms, **options)["rotation"]
    averaged = equivariance_error(SymmetrizedCalculator(OrientedEMT(degree), l_max=l_max, inversion=False),
                                  atoms, **options)["rotation"]
    assert list(raw) == ["energy", "forces", "stress"] and min(raw.values()) > 1e-4
    for p in raw:
        if degree <= l_max:  # the grid integrates D^degree exactly: nothing left
            assert averaged[p] < ROUND_OFF
        else:  # aliased: reduced at best, far from removed
            assert averaged[p] > 0.05 * raw[p]


@pytest.mark.parametrize("degree, l_max", [(2, 0), (2, 1), pytest.param(4, 2, marks=pytest.mark.slow),
                                           pytest.param(4, 3, marks=pytest.mark.slow)])
def test_residual_of_a_too_coarse_grid_is_as_the_quadrature_predicts(degree, l_max):
    """Averaging ``f(R) = a·D^l(R) b`` over the grid leaves ``a·M D^l(Q) b`` with
    ``M = Σ_k w_k D^l(R_k)``, whose RMS over rotations ``Q`` is ``|Mᵀa| / |a|`` times that of ``f``,
    for every property. Measured exactly with an evaluation grid of degree ``2 l``."""
    u = np.random.default_rng(0).normal(size=(50, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    Y = spherical_harmonics(degree, torch.from_numpy(u)).numpy()[:, degree**2:]  # h(T u) = a·Y^l(u), |u| = 1
    a = np.linalg.lstsq(Y, HARMONICS[degree](u @ TILT.T)[0], rcond=None)[0]
    rotations, weights = rotation_quadrature(l_max)
    M = np.tensordot(weights, wigner_D(degree, torch.from_numpy(rotations)).numpy(), axes=1)
    predicted = np.linalg.norm(M.T @ a) / np.linalg.norm(a)

    cluster = Atoms("Cu3", positions=[[0, 0, 0], [2.5, 0.1, 0], [0.3, 2.4, 0.2]])
    options = dict(l_max=2 * degree, symmetries=("rotation",))
    raw = equivariance_error(OrientedEMT(degree), cluster, **options)["rotation"]
    averaged = equivariance_error(SymmetrizedCalculator(OrientedEMT(degree), l_max=l_max, inversion=False),
                                  cluster, **options)["rotation"]
    assert 0.1 < predicted < 1 + 1e-12  # l_max = 0: one rotation, M unitary, nothing removed
    for p in raw:
        assert averaged[p] / raw[p] == pytest.approx(predicted, rel=1e-8)


def test_symmetrized_forces_and_stress_are_derivatives_of_the_averaged_energy():
    atoms = alloy()
    atoms.calc = SymmetrizedCalculator(OrientedEMT(4), l_max=1)
    forces, stress = atoms.get_forces(), atoms.get_stress()
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=1e-4), atol=1e-7)
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-5), atol=1e-7)


def test_spread_is_the_equivariance_error_over_the_same_group():
    atoms = alloy()
    calc = SymmetrizedCalculator(OrientedEMT(4), l_max=2, return_spread=True)
    atoms.calc = calc
    atoms.get_forces()
    assert np.shape(calc.results["forces_spread"]) == (len(atoms), 3)
    assert np.shape(calc.results["stress_spread"]) == (6,)
    expected = equivariance_error(OrientedEMT(4), atoms, l_max=2, symmetries=("inversion",))["inversion"]
    assert calc.get_property("energy_spread", atoms) / len(atoms) == pytest.approx(expected["energy"], rel=1e-12)
    assert np.sqrt(np.mean(calc.results["forces_spread"] ** 2)) == pytest.approx(expected["forces"], rel=1e-12)


def test_inversion_average_makes_an_so3_model_o3_invariant(chiral_model):
    molecule = chiral_molecule()
    mirror = mirror_image(molecule)

    errors = equivariance_error(chiral_model, molecule, n_rotations=4, symmetries=("rotation", "inversion"))
    assert max(errors["rotation"].values()) < 1e-14  # SO(3)-equivariant to round-off ...
    assert min(errors["inversion"].values()) > 1e-9  # ... but it tells a molecule from its mirror image
    raw = [chiral_model.get_potential_energy(m) for m in (molecule, mirror)]
    assert abs(raw[0] - raw[1]) > 1e-8  # (weak in a random model: ~1e-8 of the energy, still 1e6 x round-off)

    calc = SymmetrizedCalculator(chiral_model)  # l_max=None, inversion=True: two evaluations
    assert len(calc.weights) == 2
    energies, forces = [], []
    for m in (molecule, mirror):
        m.calc = calc
        energies.append(m.get_potential_energy())
        forces.append(m.get_forces())
    assert abs(energies[0] - energies[1]) < 1e-12
    np.testing.assert_allclose(forces[1], forces[0] @ MIRROR, atol=1e-12)
    np.testing.assert_allclose(forces[0], calculate_numerical_forces(molecule, eps=1e-4), atol=1e-7)
    assert worst(equivariance_error(calc, molecule, n_rotations=2, symmetries=("rotation", "inversion"))) < 1e-14


def test_deterministic_given_a_seed():
    atoms = alloy()
    calc = OrientedEMT(4)
    first = equivariance_error(calc, atoms, n_rotations=4, n_samples=2, seed=5)
    assert equivariance_error(calc, atoms, n_rotations=4, n_samples=2, seed=5) == first
    assert equivariance_error(calc, atoms, n_rotations=4, n_samples=2, seed=6) != first
    # a class's samples do not depend on which other classes are measured
    assert equivariance_error(calc, atoms, n_samples=2, seed=5, symmetries=("cell",))["cell"] == first["cell"]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown"):
        equivariance_error(EMT(), alloy(), properties=("dipole",))
    with pytest.raises(ValueError, match="unknown"):
        equivariance_error(EMT(), alloy(), symmetries=("reflection",))
    with pytest.raises(ValueError, match="l_max"):
        rotation_quadrature(-1)


def test_check_report_is_a_table():
    text = check_report(EMT(), alloy(), n_rotations=2, n_samples=2)
    lines = text.splitlines()
    assert "EMT" in lines[0] and "Al2Cu2" in lines[0] and "n_rotations=2" in lines[0]
    assert "forces [eV/Å]" in lines[2] and "stress [eV/Å³]" in lines[2]
    assert [line.split()[0] for line in lines[3:]] == list(SYMMETRIES)
    assert all(float(value) < ROUND_OFF for line in lines[3:] for value in line.split()[1:])


def test_calculator_by_name():
    assert isinstance(calculator_by_name("EMT"), EMT)
    with pytest.raises(ValueError, match="unknown calculator 'nonsense'"):
        calculator_by_name("nonsense")


@pytest.mark.skipif(not hasattr(ase_equivariant, "EquivariantCalculator"), reason="EquivariantCalculator not available")
def test_calculator_by_name_gives_ours():
    for name in ("sevennet-0", "ours"):
        assert isinstance(calculator_by_name(name, device="cpu"), ase_equivariant.EquivariantCalculator)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(ase_equivariant, "EquivariantCalculator"), reason="EquivariantCalculator not available")
def test_default_model_rotation_noise_and_inversion():
    """SevenNet-0: rotations exact up to float32 noise; no parity, so a chiral molecule and its
    mirror image differ until the inversion average."""
    molecule = chiral_molecule()
    errors = equivariance_error(ase_equivariant.EquivariantCalculator(device="cpu"), molecule, n_rotations=8,
                                symmetries=("rotation", "inversion"))
    assert errors["rotation"]["energy"] < 1e-6 and errors["rotation"]["forces"] < 1e-5  # float32 noise
    assert errors["inversion"]["energy"] > 1e-5 and errors["inversion"]["forces"] > 1e-4
    calc = SymmetrizedCalculator(ase_equivariant.EquivariantCalculator(device="cpu", dtype="float64"))
    energies = [calc.get_potential_energy(m) for m in (molecule, mirror_image(molecule))]
    assert abs(energies[0] - energies[1]) < 1e-12
