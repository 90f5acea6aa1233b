"""EquivariantCalculator: derivatives, caching, dynamics, relaxation, bad input, plugin registration."""
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.filters import FrechetCellFilter
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary
try:  # ASE >= 3.29; the older name is deprecated there
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

from ase_equivariant import EquivariantCalculator
from ase_equivariant.models import random_model
from conftest import model_inputs


@pytest.fixture(scope="module")
def tiny():
    """A small random float64 potential for Al, Cu, O, H, C (fast; not physical)."""
    return random_model(species=(1, 6, 8, 13, 29), channels=8, lmax=2, num_blocks=2, cutoff=4.0, seed=3)


def triclinic_alloy(seed=0):
    """A rattled, sheared 2-element fcc cell with a cell smaller than twice the cutoff."""
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True) * (2, 1, 1)
    atoms.numbers[[0, 3, 6]] = 13
    rng = np.random.default_rng(seed)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.08 * rng.normal(size=(3, 3))), scale_atoms=True)
    atoms.rattle(0.1, seed=seed)
    return atoms


@pytest.mark.parametrize("seed", [0, 1])
def test_forces_and_stress_match_finite_differences(tiny, seed):
    atoms = triclinic_alloy(seed)
    atoms.calc = EquivariantCalculator(tiny, skin=0.0)
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert np.abs(forces).max() > 1e-2 and np.abs(stress).max() > 1e-4  # not trivially zero
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=1e-4), atol=1e-5, rtol=0)
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-5), atol=1e-6, rtol=0)


def test_forces_of_molecule_and_slab_match_finite_differences(tiny):
    mol = molecule("CH3CH2OH")
    mol.rattle(0.05, seed=1)
    slab = triclinic_alloy(2)
    slab.pbc = [True, True, False]
    for atoms in (mol, slab):
        atoms.calc = EquivariantCalculator(tiny, skin=0.0)
        np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-4), atol=1e-5, rtol=0)
        with pytest.raises(PropertyNotImplementedError, match="periodic in all three directions"):
            atoms.get_stress()


def test_per_atom_energies_sum_to_energy(tiny):
    atoms = triclinic_alloy()
    atoms.calc = EquivariantCalculator(tiny)
    energies = atoms.get_potential_energies()
    assert energies.shape == (len(atoms),)
    assert atoms.get_potential_energy() == pytest.approx(energies.sum(), rel=1e-12)
    assert atoms.calc.results["free_energy"] == atoms.calc.results["energy"]


def test_per_atom_stresses_sum_to_stress_and_follow_the_crystal_symmetry(tiny):
    atoms = triclinic_alloy()
    atoms.calc = EquivariantCalculator(tiny, skin=0.0)
    stresses = atoms.get_stresses()
    assert stresses.shape == (len(atoms), 6)
    assert np.abs(stresses - stresses.mean(axis=0)).max() > 1e-4  # atoms differ in a rattled cell
    np.testing.assert_allclose(stresses.sum(axis=0), atoms.get_stress(), atol=1e-14, rtol=0)
    # in a perfect crystal with one site type every atom carries the same share
    perfect = bulk("Cu", "fcc", a=3.7) * (2, 2, 1)
    perfect.calc = EquivariantCalculator(tiny, skin=0.0)
    stresses = perfect.get_stresses()
    np.testing.assert_allclose(stresses, np.tile(perfect.get_stress() / len(perfect), (len(perfect), 1)),
                               atol=1e-12, rtol=0)
    mol = molecule("CH3CH2OH")
    mol.calc = EquivariantCalculator(tiny)
    with pytest.raises(PropertyNotImplementedError, match="stresses needs a system periodic"):
        mol.get_stresses()


@pytest.mark.parametrize("atoms", [
    Atoms("Cu", cell=[20, 20, 20], pbc=True),
    Atoms("Cu2", positions=[[0, 0, 0], [10, 0, 0]], cell=[20, 20, 20], pbc=True),
    Atoms("Cu", positions=[[0, 0, 0]]),
    Atoms("CuO", positions=[[0, 0, 0], [0, 0, 9]], cell=[20, 20, 0], pbc=[True, True, False]),
], ids=["1-atom cell", "2 isolated atoms in a cell", "lone atom", "slab of isolated atoms"])
def test_atoms_without_neighbours_have_zero_forces_and_stress(tiny, atoms):
    atoms.calc = EquivariantCalculator(tiny)
    energies = atoms.get_potential_energies()
    assert np.isfinite(energies).all() and atoms.get_potential_energy() == pytest.approx(energies.sum())
    assert not atoms.get_forces().any()
    if atoms.pbc.all():
        assert not atoms.get_stress().any() and not atoms.get_stresses().any()


def test_stress_served_from_the_forces_call(tiny, monkeypatch):
    """NPT and cell filters ask for forces and stress separately: one evaluation serves both."""
    atoms = triclinic_alloy()
    calc = EquivariantCalculator(tiny)
    atoms.calc = calc
    calls = []
    original = calc.model.forward
    monkeypatch.setattr(calc.model, "forward", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    atoms.get_forces()
    atoms.get_stress()
    atoms.get_stresses()
    atoms.get_potential_energy()
    assert len(calls) == 1


def test_energy_only_call_builds_no_graph(tiny, monkeypatch):
    atoms = triclinic_alloy()
    calc = EquivariantCalculator(tiny)
    seen = []
    original = calc.model.forward

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out.requires_grad)
        return out

    monkeypatch.setattr(calc.model, "forward", spy)
    atoms.calc = calc
    atoms.get_potential_energy()
    assert seen == [False]
    assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled()


def test_calls_under_inference_mode_then_outside_it():
    """Forces under a caller's ``torch.inference_mode()`` are the forces (not zeros), and what
    such a call leaves behind (scratch space, tensors kept from the frozen weights) serves later
    calls outside it."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=4)
    calc = EquivariantCalculator()  # with a skin: neighbour lists kept between calls
    atoms.calc = calc
    fresh = atoms.copy()
    fresh.calc = EquivariantCalculator(skin=0.0)
    with torch.inference_mode():
        calc.model(*model_inputs(calc.model, atoms))  # the model itself, as a user may call it
        atoms.get_potential_energy()
        forces = atoms.get_forces()  # autograd, although the caller switched it off
    np.testing.assert_allclose(forces, fresh.get_forces(), rtol=0, atol=1e-5)
    atoms.rattle(0.01, seed=5)
    fresh.positions = atoms.positions
    forces, stress = atoms.get_forces(), atoms.get_stress()
    np.testing.assert_allclose(forces, fresh.get_forces(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(stress, fresh.get_stress(), rtol=0, atol=1e-6)


def test_scratch_made_under_inference_mode_is_writable_outside_it():
    from ase_equivariant.scratch import scratch
    with torch.inference_mode():
        scratch("test.inference", 10, torch.float64, "cpu").fill_(1.0)
    scratch("test.inference", 10, torch.float64, "cpu").fill_(2.0)  # no RuntimeError
    assert not scratch("test.inference", 10, torch.float64, "cpu").is_inference()


def test_skin_reuse_equals_fresh_list_along_md(tiny):
    atoms = triclinic_alloy()
    atoms.calc = EquivariantCalculator(tiny, skin=1.0)
    fresh = EquivariantCalculator(tiny, skin=0.0)
    thermalize_momenta(atoms, temperature_K=600, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=2 * units.fs)
    for _ in range(15):
        dyn.run(1)
        reference = atoms.copy()
        reference.calc = fresh
        np.testing.assert_allclose(atoms.get_forces(), reference.get_forces(), atol=1e-10, rtol=0)
        np.testing.assert_allclose(atoms.get_stress(), reference.get_stress(), atol=1e-12, rtol=0)
        assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-10)
    assert atoms.calc.neighbors.n_builds < 15


def sevennet_nve_drift(timestep_fs, steps):
    """Max |E_total - E_total(0)| in eV/atom along a VelocityVerlet run of SevenNet-0 (float64) on Cu."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=0)
    atoms.calc = EquivariantCalculator(dtype="float64")
    thermalize_momenta(atoms, temperature_K=600, rng=np.random.default_rng(1))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    e0 = atoms.get_total_energy()
    worst = 0.0
    for _ in range(steps):
        dyn.run(1)
        worst = max(worst, abs(atoms.get_total_energy() - e0))
    return worst / len(atoms)


@pytest.mark.slow
def test_nve_conserves_energy_with_second_order_error():
    """Velocity Verlet conserves a shadow Hamiltonian: with exact (conservative) forces the total
    energy fluctuates by O(dt^2) and does not drift. Halving dt must cut the worst deviation ~4x;
    non-conservative forces would leave a dt-independent drift."""
    coarse = sevennet_nve_drift(2.0, 100)
    fine = sevennet_nve_drift(1.0, 200)
    assert coarse < 2e-3  # eV/atom over 200 fs at 600 K, Cu, dt = 2 fs
    assert 2.5 < coarse / fine < 6.0, (coarse, fine)


@pytest.mark.slow
def test_langevin_holds_temperature():
    atoms = bulk("Cu", "fcc", a=3.61) * (2, 2, 2)
    atoms.calc = EquivariantCalculator()
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(2))
    # fixcm=False: all 3N degrees of freedom thermalised, as get_temperature counts them
    dyn = Langevin(atoms, timestep=5 * units.fs, temperature_K=300, friction=0.05 / units.fs, fixcm=False,
                   rng=np.random.default_rng(3))
    temperatures = []
    dyn.attach(lambda: temperatures.append(atoms.get_temperature()), interval=1)
    dyn.run(400)
    mean = np.mean(temperatures[100:])
    # 8 atoms: instantaneous T fluctuates by ~T*sqrt(2/(3N)) ~ 35%; 300 correlated samples average it down
    assert 240 < mean < 360, mean


def relaxed_lattice_constant(atoms, calc):
    """Relax cell and positions with FrechetCellFilter; return the cubic lattice constant (Å) of
    the primitive fcc-type cell."""
    atoms = atoms.copy()
    atoms.calc = calc
    opt = BFGS(FrechetCellFilter(atoms), logfile=None)
    assert opt.run(fmax=1e-4, steps=300)
    return (4 * atoms.get_volume()) ** (1 / 3)


@pytest.mark.sevenn
@pytest.mark.slow
@pytest.mark.parametrize("name,kind,a,strain", [
    ("Cu", "fcc", 3.61, 0.03), ("Si", "diamond", 5.43, -0.02), ("NaCl", "rocksalt", 5.64, 0.02),
])
def test_relaxed_lattice_constants_match_sevenn(name, kind, a, strain):
    sevenn_calculator = pytest.importorskip("sevenn.calculator")
    atoms = bulk(name, kind, a=a * (1 + strain))
    atoms.rattle(0.02, seed=4)
    ours = relaxed_lattice_constant(atoms, EquivariantCalculator(dtype="float64"))
    theirs = relaxed_lattice_constant(atoms, sevenn_calculator.SevenNetCalculator("7net-0", device="cpu"))
    assert abs(ours - theirs) < 1e-3, (ours, theirs)
    assert abs(ours - a) < 0.1 * a  # and physically sensible


@pytest.mark.parametrize("make,message", [
    (lambda: Atoms(), "empty"),
    (lambda: Atoms("Cu2Po", positions=[[0, 0, 0], [2, 0, 0], [0, 2, 0]]), "Po"),
    (lambda: Atoms("Cu2", positions=[[0, 0, 0], [np.nan, 0, 0]]), "(?i)nan|finite"),
    (lambda: Atoms("Cu2", positions=[[0, 0, 0], [2, 0, 0]], cell=[[3, 0, 0], [6, 0, 0], [0, 0, 3]], pbc=True),
     "(?i)singular|degenerate"),
    (lambda: Atoms("Cu2", positions=[[0, 0, 0], [1e-3, 0, 0]]), "overlap"),
])
def test_bad_input_raises_and_calculator_stays_usable(make, message):
    calc = EquivariantCalculator()
    atoms = make()
    atoms.calc = calc
    with pytest.raises(ValueError, match=message):
        atoms.get_forces()
    good = bulk("Cu", "fcc", a=3.61)
    good.calc = calc
    assert np.isfinite(good.get_potential_energy())


def test_unknown_element_message_lists_known_ones():
    atoms = Atoms("Cu2Po", positions=[[0, 0, 0], [2, 0, 0], [0, 2, 0]])
    atoms.calc = EquivariantCalculator()
    with pytest.raises(ValueError, match="it knows: .*Cu.*Zr"):
        atoms.get_potential_energy()


def test_a_model_instance_runs_on_its_own_device_and_another_one_is_an_error(tiny):
    assert EquivariantCalculator(tiny).device == torch.device("cpu")
    assert EquivariantCalculator(tiny, device="cpu").device == torch.device("cpu")
    with pytest.raises(ValueError, match="device 'meta': the model given is on cpu"):
        EquivariantCalculator(tiny, device="meta")


def test_float32_and_float64_agree():
    atoms = triclinic_alloy()
    atoms.numbers[:] = 29
    results = {}
    for dtype in ("float32", "float64"):
        atoms.calc = EquivariantCalculator(dtype=dtype)
        results[dtype] = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    assert results["float32"][0] == pytest.approx(results["float64"][0], abs=1e-4 * len(atoms))
    np.testing.assert_allclose(results["float32"][1], results["float64"][1], atol=1e-4)
    np.testing.assert_allclose(results["float32"][2], results["float64"][2], atol=1e-5)


def test_float32_results_do_not_depend_on_where_the_structure_sits():
    """ASE's dynamics do not wrap positions: after a long run, or for a structure placed far from
    the origin, coordinates can be large. Edge vectors are formed in float64 before the float32
    model sees them, so a translation by 1e4 Å (float32 spacing ~1e-3 Å there) changes nothing
    beyond float32 round-off (2e-7 eV, 2e-8 eV/Å, 1e-10 eV/Å³; formed in float32: 4e-5 eV,
    3e-4 eV/Å, 1e-6 eV/Å³)."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=1)
    far = atoms.copy()
    far.positions += [1e4, -2e4, 3e4]
    results = []
    for structure in (atoms, far):
        structure.calc = EquivariantCalculator(tiny_float32(), skin=0.0)
        results.append((structure.get_potential_energy(), structure.get_forces(), structure.get_stress()))
    assert results[1][0] == pytest.approx(results[0][0], abs=1e-5)
    np.testing.assert_allclose(results[1][1], results[0][1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(results[1][2], results[0][2], atol=1e-7, rtol=0)


def tiny_float32():
    return random_model(species=(29,), channels=8, lmax=2, num_blocks=2, cutoff=4.0, seed=3, dtype="float32")


def test_ase_plugin_finds_calculator():
    plugins = pytest.importorskip("ase._4.plugins")
    names = {plugin.name for plugin in plugins.plugins.calculators}
    assert "ase_equivariant" in names
    plugin = next(p for p in plugins.plugins.calculators if p.name == "ase_equivariant")
    assert plugin.implementation is EquivariantCalculator


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("edge_block", [None, 64])  # the device's default: one block; 64: several
def test_cuda_matches_cpu(edge_block):
    atoms = triclinic_alloy()
    atoms.numbers[:] = 29
    atoms.calc = EquivariantCalculator(device="cpu", dtype="float64")
    cpu = atoms.get_forces(), atoms.get_stress()
    atoms.calc = EquivariantCalculator(device="cuda", dtype="float64")
    atoms.calc.model.edge_block = edge_block
    np.testing.assert_allclose(atoms.get_forces(), cpu[0], atol=1e-8)
    np.testing.assert_allclose(atoms.get_stress(), cpu[1], atol=1e-9)
