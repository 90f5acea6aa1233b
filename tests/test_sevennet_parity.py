"""Parity of our SevenNet-0 with the reference ``sevenn`` implementation, and reproducibility of the
shipped weight file.

Graphs are built with ``ase.neighborlist.neighbor_list`` (a reference we did not write), and our
forces and stress come from one autograd call through the strain trick, independently of the
calculator. Run with ``-s`` to see the worst deviations.
"""
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list

from ase_equivariant.convert.sevennet import convert, sha256
from ase_equivariant.models import data_path, load_model

sevenn = pytest.importorskip("sevenn")
from sevenn.calculator import SevenNetCalculator  # noqa: E402

pytestmark = [pytest.mark.sevenn, pytest.mark.filterwarnings("ignore:No tensor product accelerator")]

ENERGY_TOL = 1e-5  # eV/atom
FORCE_TOL = 2e-4  # eV/Å
STRESS_TOL = 2e-5  # eV/Å³
VOIGT = ([0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1])  # xx yy zz yz xz xy


# ---------------------------------------------------------------------------------------------
# structures (all rattled or distorted with fixed seeds)


def _rattled(atoms, stdev=0.05, seed=0):
    atoms.rattle(stdev, seed=seed)
    return atoms


def skewed_triclinic():
    """8 atoms of 8 elements in a strongly sheared (volume-preserving) rock-salt cell."""
    atoms = bulk("NaCl", "rocksalt", a=4.7, cubic=True)
    atoms.numbers = [3, 8, 22, 9, 14, 7, 13, 16]  # Li O Ti F Si N Al S
    shear = np.array([[1.0, 0.0, 0.0], [0.6, 1.0, 0.0], [-0.45, 0.4, 1.0]])
    rng = np.random.default_rng(7)
    atoms.set_cell(atoms.cell.array @ shear @ (np.eye(3) + 0.03 * rng.normal(size=(3, 3))), scale_atoms=True)
    return _rattled(atoms, 0.08, seed=7)


def one_atom_cell():
    """Primitive fcc Cu (1 atom, cell smaller than the cutoff: many self-images), distorted."""
    atoms = bulk("Cu", "fcc", a=3.63)
    rng = np.random.default_rng(3)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.04 * rng.normal(size=(3, 3))), scale_atoms=True)
    return atoms


def slab():
    """Al(111) slab with two Cu atoms, periodic in x and y only."""
    atoms = fcc111("Al", size=(2, 2, 3), vacuum=6.0)
    atoms.numbers[[1, 6]] = 29
    assert list(atoms.pbc) == [True, True, False]
    return _rattled(atoms, 0.05, seed=5)


def ethanol():
    """A molecule without a cell."""
    atoms = molecule("CH3CH2OH")
    assert not atoms.pbc.any() and atoms.cell.rank == 0
    return _rattled(atoms, 0.05, seed=9)


STRUCTURES = {
    "Cu-fcc": lambda: _rattled(bulk("Cu", "fcc", a=3.61, cubic=True), seed=1),
    "Fe-bcc": lambda: _rattled(bulk("Fe", "bcc", a=2.87, cubic=True), seed=2),
    "Mg-hcp": lambda: _rattled(bulk("Mg", "hcp", a=3.21, c=5.21), seed=3),
    "NaCl-rocksalt": lambda: _rattled(bulk("NaCl", "rocksalt", a=5.64, cubic=True), seed=4),
    "MgO-rocksalt": lambda: _rattled(bulk("MgO", "rocksalt", a=4.21), seed=5),
    "triclinic-8-elements": skewed_triclinic,
    "Cu-1-atom": one_atom_cell,
    "Al-Cu-slab": slab,
    "ethanol": ethanol,
}


# ---------------------------------------------------------------------------------------------
# evaluation


def evaluate(net, atoms):
    """Our per-atom energies (N,), forces (N, 3) and ASE-convention Voigt stress (6,) or None
    (non-3D-periodic), as float64 numpy, from one autograd call with the strain trick."""
    dtype = next(net.parameters()).dtype
    i, j, S = neighbor_list("ijS", atoms, net.cutoff)
    positions = torch.tensor(atoms.positions, dtype=dtype, requires_grad=True)
    cell = torch.tensor(atoms.cell.array, dtype=dtype)
    strain = torch.zeros(3, 3, dtype=dtype, requires_grad=True)
    eps = 0.5 * (strain + strain.T)
    energies = net(positions + positions @ eps, torch.tensor(atoms.numbers),
                   torch.tensor(np.stack([i, j]), dtype=torch.int64), torch.tensor(S), cell + cell @ eps)
    d_pos, d_strain = torch.autograd.grad(energies.sum(), [positions, strain])
    stress = None
    if atoms.pbc.all():
        stress = (d_strain.double().numpy() / atoms.get_volume())[VOIGT]
    return energies.detach().double().numpy(), -d_pos.double().numpy(), stress


@pytest.fixture(scope="module")
def worst():
    """Worst deviations seen in this module, printed at teardown (``pytest -s``)."""
    table = {}
    yield table
    if table:
        print("\nworst deviations from sevenn (SevenNet-0 reference calculator, float32):")
        for key in sorted(table):
            value, where = table[key]
            print(f"  {key:32s} {value:.3e}  ({where})")


def _record(worst, key, value, where):
    if value > worst.get(key, (-1.0, ""))[0]:
        worst[key] = (float(value), where)


@pytest.fixture(scope="module", autouse=True)
def no_jit_reoptimisation():
    """sevenn runs e3nn's TorchScript code, which the profiling executor re-specialises for every new
    graph size (seconds per structure on CPU); plain execution is ~100x faster here. Ours uses no JIT."""
    with torch.jit.optimized_execution(False):
        yield


@pytest.fixture(scope="module")
def reference_calc():
    return SevenNetCalculator("7net-0", device="cpu")


@pytest.fixture(scope="module")
def reference(reference_calc):
    """name -> (atoms, energies, forces, stress or None) from sevenn, computed once per structure."""
    cache = {}

    def get(name):
        if name not in cache:
            atoms = STRUCTURES[name]()
            atoms.calc = reference_calc
            energies = atoms.get_potential_energies().copy()
            forces = atoms.get_forces().copy()
            stress = atoms.get_stress().copy() if atoms.pbc.all() else None
            atoms.calc = None
            cache[name] = (atoms, energies, forces, stress)
        return cache[name]

    return get


@pytest.fixture(scope="module", params=["float32", "float64"])
def ours(request):
    return load_model("sevennet-0", dtype=request.param)


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_parity_with_sevenn(ours, reference, worst, name):
    atoms, ref_energies, ref_forces, ref_stress = reference(name)
    energies, forces, stress = evaluate(ours, atoms)
    tag = str(next(ours.parameters()).dtype).replace("torch.", "")

    per_atom = np.abs(energies - ref_energies).max()
    total = abs(energies.sum() - ref_energies.sum()) / len(atoms)
    force = np.abs(forces - ref_forces).max()
    _record(worst, f"{tag} energy per atom [eV/atom]", max(per_atom, total), name)
    _record(worst, f"{tag} force [eV/A]", force, name)
    if len(atoms) > 1:  # rattled: the comparison is not trivially 0 == 0
        assert np.abs(ref_forces).max() > 1e-2
    assert per_atom < ENERGY_TOL and total < ENERGY_TOL, (per_atom, total)
    assert force < FORCE_TOL, force
    if atoms.pbc.all():
        dev = np.abs(stress - ref_stress).max()
        _record(worst, f"{tag} stress [eV/A^3]", dev, name)
        assert np.abs(ref_stress).max() > 1e-3
        assert dev < STRESS_TOL, (stress, ref_stress)
    else:
        assert stress is None


def test_stress_sign_follows_ase(reference_calc):
    """Compressed Cu pushes outwards: negative stress in ASE's convention (as EMT reports it);
    stretched Cu: positive. Ours (+(1/V) dE/dstrain), sevenn's and EMT's all agree on the sign."""
    net = load_model("sevennet-0", dtype="float32")
    for a, sign in ((3.3, -1.0), (4.0, 1.0)):
        atoms = bulk("Cu", "fcc", a=a)
        atoms.calc = EMT()
        emt = atoms.get_stress()
        atoms.calc = reference_calc
        theirs = atoms.get_stress()
        _, _, mine = evaluate(net, atoms)
        for stress in (emt, theirs, mine):
            assert np.all(np.sign(stress[:3]) == sign), (a, emt, theirs, mine)
        np.testing.assert_allclose(mine, theirs, atol=STRESS_TOL, rtol=0)


def test_mirror_energy_difference_is_sevenn_s(reference_calc):
    """SevenNet-0 has no parity, so a chiral molecule and its mirror image differ in energy; the
    difference is the reference's too (tests/test_model_symmetry.py reports the figure)."""
    net = load_model("sevennet-0", dtype="float64")
    directions = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
    atoms = Atoms("CHFClBr", positions=np.vstack([[0.0, 0.0, 0.0], directions * [[1.09], [1.35], [1.77], [1.94]]]))
    atoms.rattle(0.05, seed=11)
    mirror = atoms.copy()
    mirror.positions[:, 0] *= -1
    ours = [evaluate(net, a)[0].sum() for a in (atoms, mirror)]
    theirs = []
    for a in (atoms, mirror):
        a.calc = reference_calc
        theirs.append(a.get_potential_energy())
    assert abs(ours[1] - ours[0]) > 1e-3  # about 2e-3 eV
    assert abs((ours[1] - ours[0]) - (theirs[1] - theirs[0])) < 2 * ENERGY_TOL * len(atoms)


# ---------------------------------------------------------------------------------------------
# provenance and reproducibility of data/sevennet-0.pt


def _provenance():
    text = data_path("PROVENANCE").read_text()
    note = re.search(r'--source-note "([^"]+)"', text).group(1)
    wheel_path = re.search(r"file inside the wheel:\s*(\S+)", text).group(1)
    version = re.search(r"PyPI package sevenn (\S+),", text).group(1)
    source_sha = re.search(r"sha256 of the source checkpoint:\s*([0-9a-f]{64})", text).group(1)
    ours_sha = re.search(r"sha256 of our file \(data/sevennet-0.pt\):\s*([0-9a-f]{64})", text).group(1)
    return note, wheel_path, version, source_sha, ours_sha


def _source_checkpoint(wheel_path):
    path = Path(sevenn.__file__).resolve().parent.parent / wheel_path
    if not path.is_file():
        pytest.skip(f"{wheel_path} not in the installed sevenn {sevenn.__version__}")
    return path


def test_provenance_sha256_matches_files():
    note, wheel_path, version, source_sha, ours_sha = _provenance()
    assert sha256(str(data_path("sevennet-0.pt"))) == ours_sha
    assert load_model("sevennet-0").provenance["source_sha256"] == source_sha
    assert load_model("sevennet-0").provenance["source"] == note
    if sevenn.__version__ != version:
        pytest.skip(f"PROVENANCE records sevenn {version}, installed is {sevenn.__version__}")
    assert sha256(str(_source_checkpoint(wheel_path))) == source_sha


def test_converter_reproduces_shipped_file(tmp_path):
    note, wheel_path, version, source_sha, ours_sha = _provenance()
    checkpoint = _source_checkpoint(wheel_path)
    if sha256(str(checkpoint)) != source_sha:
        pytest.skip(f"installed sevenn {sevenn.__version__} ships a different checkpoint than PROVENANCE records")
    out = tmp_path / "sevennet-0.pt"  # torch.save embeds the file name: keep it
    convert(str(checkpoint), str(out), source_note=note)
    assert out.read_bytes() == data_path("sevennet-0.pt").read_bytes()


# ---------------------------------------------------------------------------------------------
# SevenNet-l3i5 (lmax 3, polynomial cutoff) through the same converter and network


def test_l3i5_converts_and_matches_sevenn(tmp_path):
    import sevenn._const

    checkpoint = sevenn._const.SEVENNET_l3i5
    if not os.path.isfile(checkpoint):
        pytest.skip("SevenNet-l3i5 checkpoint not in this sevenn")
    convert(checkpoint, str(tmp_path / "l3i5.pt"))
    net = load_model(tmp_path / "l3i5.pt", dtype="float32")
    assert net.config.lmax_sh == 3 and net.config.cutoff_function["name"] == "polynomial"
    calc = SevenNetCalculator("7net-l3i5", device="cpu")
    for name in ("triclinic-8-elements", "Al-Cu-slab"):
        atoms = STRUCTURES[name]()
        energies, forces, stress = evaluate(net, atoms)
        atoms.calc = calc
        np.testing.assert_allclose(energies, atoms.get_potential_energies(), atol=ENERGY_TOL, rtol=0)
        np.testing.assert_allclose(forces, atoms.get_forces(), atol=FORCE_TOL, rtol=0)
        if stress is not None:
            np.testing.assert_allclose(stress, atoms.get_stress(), atol=STRESS_TOL, rtol=0)
