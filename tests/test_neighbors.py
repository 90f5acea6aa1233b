"""Neighbour search: cell_list, the Verlet NeighborList and the ASE-compatible neighbor_list,
checked against ASE, matscipy and vesin (references we did not write)."""
import shutil
import sys
import types

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.geometry import complete_cell
from ase.neighborlist import neighbor_list as ase_neighbor_list

from ase_equivariant import compiled, neighbors
from ase_equivariant.neighbors import NeighborList, cell_list, edge_vectors, neighbor_list

matscipy_neighbours = pytest.importorskip("matscipy.neighbours")
vesin = pytest.importorskip("vesin")


@pytest.fixture(autouse=True, params=["compiled", "torch"])
def search(request, monkeypatch):
    """Every test runs twice on CPU: with the compiled search (cell_list.c) and the torch one."""
    if request.param == "compiled":
        if neighbors._compiled_search() is None:
            pytest.skip("the compiled cell list cannot be built here")
    else:
        monkeypatch.setattr(neighbors, "_compiled_search", lambda: None)
    return request.param


# ----------------------------------------------------------------------------- helpers

def canonical(i, j, S, D=None):
    """Edges sorted by (i, j, S): comparable arrays whatever order a code returns them in."""
    i, j, S = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64), np.asarray(S)
    S = S.astype(np.int64).reshape(-1, 3)
    order = np.lexsort((S[:, 2], S[:, 1], S[:, 0], j, i))
    out = (i[order], j[order], S[order])
    return out if D is None else out + (np.asarray(D).reshape(-1, 3)[order],)


def assert_same_edges(ours, reference, what):
    i, j, S, D = canonical(*ours)
    ri, rj, rS, rD = canonical(*reference)
    assert len(i) == len(ri), f"{what}: {len(i)} edges, reference has {len(ri)}"
    np.testing.assert_array_equal(i, ri, err_msg=what)
    np.testing.assert_array_equal(j, rj, err_msg=what)
    np.testing.assert_array_equal(S, rS, err_msg=what)
    np.testing.assert_allclose(D, rD, rtol=0, atol=1e-9, err_msg=what)


def torch_edges(atoms, cutoff, self_interaction=False, dtype=torch.float64):
    """(i, j, S, D) numpy arrays from cell_list on the atoms' positions, cell and pbc."""
    positions = torch.tensor(atoms.positions, dtype=dtype)
    cell = torch.tensor(atoms.cell.array, dtype=dtype)
    edge_index, shifts = cell_list(positions, cell, torch.tensor(atoms.pbc), cutoff,
                                   self_interaction=self_interaction)
    assert edge_index.dtype == shifts.dtype == torch.int64
    assert edge_index.shape == (2, shifts.shape[0]) and shifts.shape[1] == 3
    i = edge_index[0].numpy()
    assert np.all(np.diff(i) >= 0), "not sorted by i"
    D = edge_vectors(positions, cell, edge_index, shifts)
    return i, edge_index[1].numpy(), shifts.numpy(), D.numpy()


def ase_edges(atoms, cutoff, self_interaction=False):
    i, j, S, D = ase_neighbor_list("ijSD", atoms, cutoff, self_interaction=self_interaction)
    return i, j, S, D


def matscipy_edges(atoms, cutoff):
    # matscipy needs a non-singular cell; rows along non-periodic axes do not enter D.
    i, j, S, D = matscipy_neighbours.neighbour_list(
        "ijSD", positions=atoms.positions, cell=complete_cell(atoms.cell.array),
        pbc=atoms.pbc, cutoff=cutoff)
    return i, j, S, D


def vesin_edges(atoms, cutoff):
    i, j, S, D = vesin.NeighborList(cutoff=cutoff, full_list=True).compute(
        points=atoms.positions, box=atoms.cell.array, periodic=list(atoms.pbc),
        quantities="ijSD")
    return i, j, S, D


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def random_system(rng):
    """A random structure that stresses the neighbour search, and a cutoff for it.

    Cells: cubic, triclinic, strongly skewed, or smaller than the cutoff; pbc: any of the 8
    combinations (slabs, wires, molecules, whose cell rows along non-periodic axes may be zero);
    positions partly outside the cell and unwrapped by several lattice vectors.
    """
    kind = rng.choice(["cubic", "triclinic", "skewed", "small", "molecule"])
    n = int(rng.integers(1, 16))
    lengths = rng.uniform(1.0, 2.0, 3) if kind == "small" else rng.uniform(2.5, 7.0, 3)
    if kind == "cubic":
        cell = np.diag(lengths)
    elif kind == "skewed":  # tilt factors far beyond what a reduced cell would have
        cell = np.diag(lengths) + np.tril(rng.uniform(-3.0, 3.0, (3, 3)), -1) * lengths[:, None]
        cell = cell @ random_rotation(rng)
    else:
        cell = (np.diag(lengths) + rng.normal(scale=0.6, size=(3, 3))) @ random_rotation(rng)
    heights = 1 / np.linalg.norm(np.linalg.inv(cell), axis=0)
    if heights.min() < 0.3 * lengths.min():  # nearly singular: the references crawl, redraw
        return random_system(rng)
    pbc = rng.random(3) < 0.5 if kind != "molecule" else np.zeros(3, bool)
    frac = rng.uniform(-0.2, 1.2, (n, 3))
    frac += np.where(pbc, rng.integers(-3, 4, (n, 3)), 0)  # unwrapped along periodic axes
    positions = frac @ cell
    for k in np.flatnonzero(~pbc):
        if rng.random() < 0.5:
            cell[k] = 0.0  # no cell at all along this axis
    if kind == "small":
        cutoff = rng.uniform(1.5, 4.5)
    else:
        cutoff = rng.uniform(0.8, 1.2) * float(np.cbrt(abs(np.linalg.det(complete_cell(cell)))))
    return Atoms(f"Cu{n}", positions=positions, cell=cell, pbc=pbc), float(cutoff)


# ----------------------------------------------------------------------------- references

@pytest.mark.parametrize("seed", range(4))
def test_random_systems_match_ase_matscipy_vesin(seed):
    rng = np.random.default_rng(seed)
    for case in range(75):
        atoms, cutoff = random_system(rng)
        what = (f"seed {seed} case {case}: pbc={atoms.pbc.tolist()} cutoff={cutoff:.3f} "
                f"n={len(atoms)}")
        ours = torch_edges(atoms, cutoff)
        assert_same_edges(ours, ase_edges(atoms, cutoff), what + " vs ASE")
        assert_same_edges(ours, matscipy_edges(atoms, cutoff), what + " vs matscipy")
        assert_same_edges(ours, vesin_edges(atoms, cutoff), what + " vs vesin")
        assert np.all(np.linalg.norm(ours[3], axis=1) < cutoff)


@pytest.mark.parametrize("backend", ["torch", "vesin", "matscipy"])
def test_neighbor_list_matches_ase(backend):
    rng = np.random.default_rng(10)
    for case in range(60):
        atoms, cutoff = random_system(rng)
        self_interaction = bool(rng.random() < 0.3)
        ours = neighbor_list("ijdDS", atoms, cutoff, self_interaction, backend=backend)
        ref = ase_neighbor_list("ijdDS", atoms, cutoff, self_interaction=self_interaction)
        assert [x.dtype for x in ours] == [x.dtype for x in ref]
        assert [x.shape for x in ours] == [x.shape for x in ref]
        assert np.all(np.diff(ours[0]) >= 0), "not sorted by i"
        np.testing.assert_allclose(ours[2], np.linalg.norm(ours[3], axis=1), atol=1e-12)
        what = f"case {case} ({backend}, self_interaction={self_interaction})"
        assert_same_edges((ours[0], ours[1], ours[4], ours[3]),
                          (ref[0], ref[1], ref[4], ref[3]), what)


def test_neighbor_list_per_atom_radii_and_pair_dict():
    rng = np.random.default_rng(11)
    for case in range(40):
        atoms, cutoff = random_system(rng)
        atoms.numbers = rng.choice([1, 6, 8], len(atoms))
        radii = rng.uniform(0.0, cutoff / 2, len(atoms))
        pairs = {(1, 1): 0.6 * cutoff, ("C", "H"): 0.9 * cutoff, (8, 6): cutoff,
                 ("O", "O"): 1.1 * cutoff}
        for cut in (radii, list(radii), pairs):
            for self_interaction in (False, True):
                ours = neighbor_list("ijDS", atoms, cut, self_interaction)
                ref = ase_neighbor_list("ijDS", atoms, cut, self_interaction=self_interaction)
                assert np.all(np.diff(ours[0]) >= 0)
                assert_same_edges((ours[0], ours[1], ours[3], ours[2]),
                                  (ref[0], ref[1], ref[3], ref[2]), f"case {case} {type(cut)}")


def test_neighbor_list_single_quantity_and_order_of_letters():
    atoms = bulk("Cu", "fcc", a=3.61) * (2, 2, 2)
    i = neighbor_list("i", atoms, 3.0)
    assert isinstance(i, np.ndarray) and i.dtype == np.int64 and len(i) == 12 * len(atoms)
    S, j, d = neighbor_list("Sjd", atoms, 3.0)
    assert S.shape == (len(i), 3) and j.shape == d.shape == i.shape
    assert neighbor_list("", atoms, 3.0) == ()


@pytest.mark.parametrize("self_interaction", [False, True])
def test_self_interaction_matches_ase(self_interaction):
    for atoms in (bulk("Cu", "fcc", a=3.61), molecule("H2O"), bulk("Si") * (2, 1, 1)):
        assert_same_edges(torch_edges(atoms, 4.0, self_interaction),
                          ase_edges(atoms, 4.0, self_interaction), str(atoms))


# ----------------------------------------------------------------------------- special cases

def test_fcc_copper_one_atom_cell_has_42_neighbours():
    atoms = bulk("Cu", "fcc", a=3.61)
    i, j, S, D = torch_edges(atoms, 5.0)
    assert len(i) == 42 and np.all(j == 0)  # every neighbour is an image of the one atom
    assert len({tuple(s) for s in S}) == 42
    np.testing.assert_allclose(np.sort(np.linalg.norm(D, axis=1))[[0, 11, 12, 17, 18, 41]],
                               3.61 * np.sqrt([0.5, 0.5, 1, 1, 1.5, 1.5]), atol=1e-12)


def test_cutoff_many_times_the_cell():
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.3, 0.2, 0.1]], cell=np.diag([1.0, 1.2, 0.9]),
                  pbc=True)
    assert_same_edges(torch_edges(atoms, 6.0), ase_edges(atoms, 6.0), "cutoff 6 in a 1 Å cell")


def test_exact_cutoff_distance_is_excluded():
    cubic = Atoms("Po", cell=np.eye(3) * 2.0, pbc=True)
    assert len(torch_edges(cubic, 2.0)[0]) == 0
    assert len(torch_edges(cubic, np.nextafter(2.0, 3.0))[0]) == 6
    dimer = Atoms("H2", positions=[[0, 0, 0], [1.5, 0, 0]])
    assert len(torch_edges(dimer, 1.5)[0]) == 0
    assert len(torch_edges(dimer, np.nextafter(1.5, 2.0))[0]) == 2
    assert len(neighbor_list("i", dimer, 1.5)) == len(ase_neighbor_list("i", dimer, 1.5)) == 0
    assert len(neighbor_list("i", dimer, [0.75, 0.75])) == 0


def test_cutoff_below_the_rounding_of_the_coordinates():
    # Every candidate is within rounding of such a cutoff: all are decided by the exact formula.
    atoms = Atoms("H3", positions=[[0, 0, 0], [1e-16, 0, 0], [1.0, 2.0, 0.5]],
                  cell=np.eye(3) * 3.0, pbc=True)
    i, j, S, D = torch_edges(atoms, 1e-15)
    assert canonical(i, j, S)[0].tolist() == [0, 1]  # the pair 1e-16 Å apart
    i, j, S, D = torch_edges(atoms, 1e-15, self_interaction=True)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2)]
    assert not S.any()


def test_empty_and_single_atom():
    for pbc in (False, True):
        empty = Atoms(cell=np.eye(3) * 3.0, pbc=pbc)
        i, j, S, D = torch_edges(empty, 2.0)
        assert i.shape == j.shape == (0,) and S.shape == D.shape == (0, 3)
        ours = neighbor_list("ijdDS", empty, 2.0)
        ref = ase_neighbor_list("ijdDS", empty, 2.0)
        assert [(x.dtype, x.shape) for x in ours] == [(x.dtype, x.shape) for x in ref]
    assert len(torch_edges(Atoms("H"), 5.0)[0]) == 0
    assert len(torch_edges(Atoms("H"), 5.0, self_interaction=True)[0]) == 1
    wire = Atoms("H", cell=[2.0, 0, 0], pbc=[True, False, False])
    i, j, S, D = torch_edges(wire, 5.0)
    assert sorted(S[:, 0].tolist()) == [-2, -1, 1, 2] and np.all(S[:, 1:] == 0)


def test_molecule_result_does_not_depend_on_where_it_sits():
    atoms = molecule("C6H6")
    reference = canonical(*torch_edges(atoms, 3.0))
    for offset in ([1e4, -3e3, 7.5], [-123.4, 0.0, 1e-3]):
        moved = atoms.copy()
        moved.positions += offset
        moved_edges = canonical(*torch_edges(moved, 3.0))
        for a, b in zip(reference[:3], moved_edges[:3]):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(reference[3], moved_edges[3], atol=1e-9)


def test_float32_agrees_with_float64_away_from_the_cutoff():
    rng = np.random.default_rng(3)
    for _ in range(40):
        atoms, cutoff = random_system(rng)
        single = canonical(*torch_edges(atoms, cutoff, dtype=torch.float32))
        double = canonical(*torch_edges(atoms, cutoff))
        keys32 = {(a, b, *s) for a, b, s in zip(*[x.tolist() for x in single[:3]])}
        keys64 = {(a, b, *s) for a, b, s in zip(*[x.tolist() for x in double[:3]])}
        for a, b, *s in keys32 ^ keys64:  # only pairs within rounding of the cutoff may differ
            d = atoms.positions[b] - atoms.positions[a] + np.array(s) @ atoms.cell.array
            assert abs(np.linalg.norm(d) - cutoff) < 1e-4


def test_shells_exactly_at_the_cutoff():
    cubic = Atoms("Po", cell=np.eye(3) * 2.0, pbc=True) * (3, 4, 5)  # exact coordinates
    assert len(torch_edges(cubic, 2.0)[0]) == 0
    assert len(torch_edges(cubic, np.nextafter(2.0, 3.0))[0]) == 6 * len(cubic)
    assert len(torch_edges(cubic, 2 * np.sqrt(2))[0]) == 6 * len(cubic)
    fcc = bulk("Cu", "fcc", a=3.61, cubic=True) * 2  # second shell at a = 3.61 Å, up to rounding
    for cutoff in (3.61, np.nextafter(3.61, 4.0), np.nextafter(3.61, 3.0)):
        assert_same_edges(torch_edges(fcc, cutoff), ase_edges(fcc, cutoff), f"cutoff {cutoff!r}")


def test_many_small_chunks(monkeypatch):
    # Chunks of a few candidates: many chunks, edge arrays grown several times.
    monkeypatch.setattr(neighbors, "_CANDIDATES_PER_CHUNK", 300)
    rng = np.random.default_rng(14)
    for case in range(40):
        atoms, cutoff = random_system(rng)
        assert_same_edges(torch_edges(atoms, cutoff), ase_edges(atoms, cutoff), f"case {case}")
    atoms = bulk("Cu", "fcc", a=3.61) * (4, 4, 4)
    assert_same_edges(torch_edges(atoms, 5.0), vesin_edges(atoms, 5.0), "fcc, small chunks")


def test_dense_cluster_in_dilute_gas():
    # Atoms with very different numbers of candidates (rows of several widths).
    rng = np.random.default_rng(15)
    cluster = rng.normal(scale=1.5, size=(300, 3)) + 20.0
    gas = rng.uniform(0.0, 40.0, size=(200, 3))
    atoms = Atoms("Ar500", positions=np.vstack([gas[:100], cluster, gas[100:]]),
                  cell=np.eye(3) * 40.0, pbc=True)
    assert_same_edges(torch_edges(atoms, 3.0), vesin_edges(atoms, 3.0), "cluster in gas")
    atoms.pbc = False  # ASE takes seconds here
    assert_same_edges(torch_edges(atoms, 3.0), vesin_edges(atoms, 3.0), "cluster in vacuum")


def test_far_apart_fragments():
    # Coordinates spanning 1e5 Å: too coarse for float32 candidates.
    water = molecule("H2O")
    far = water.copy()
    far.positions += [1e5, -3e4, 2.0]
    atoms = water + far + molecule("CH4")
    assert_same_edges(torch_edges(atoms, 2.0), ase_edges(atoms, 2.0), "fragments 1e5 Å apart")


@pytest.mark.parametrize("pbc", [True, (True, False, True)])
def test_thousands_of_atoms_match_vesin(pbc):
    atoms = bulk("Cu", "fcc", a=3.61) * (12, 12, 12)
    atoms.rattle(0.3, seed=2)
    atoms.pbc = pbc
    assert_same_edges(torch_edges(atoms, 5.0), vesin_edges(atoms, 5.0), f"1728 Cu pbc={pbc}")


# ----------------------------------------------------------------------------- invariances

def test_integer_lattice_shifts_of_atoms_do_not_change_i_j_D():
    rng = np.random.default_rng(5)
    for case in range(60):
        atoms, cutoff = random_system(rng)
        before = canonical(*torch_edges(atoms, cutoff))
        moved = atoms.copy()
        jumps = np.where(atoms.pbc, rng.integers(-4, 5, (len(atoms), 3)), 0)
        moved.positions += jumps @ atoms.cell.array
        after = canonical(*torch_edges(moved, cutoff))
        # (i, j, D) as a set: sort both by (i, j, rounded D) and compare.
        def key(edges):
            i, j, _, D = edges
            order = np.lexsort((*np.round(D, 6).T[::-1], j, i))
            return i[order], j[order], D[order]
        for a, b in zip(key(before), key(after)):
            np.testing.assert_allclose(a, b, atol=1e-8, err_msg=f"case {case}")


def test_rotation_and_translation_keep_distances():
    rng = np.random.default_rng(6)
    for case in range(30):
        atoms, cutoff = random_system(rng)
        rotation = random_rotation(rng)
        moved = atoms.copy()
        moved.positions = atoms.positions @ rotation.T + rng.normal(scale=5.0, size=3)
        moved.cell = atoms.cell.array @ rotation.T
        d0 = np.sort(np.linalg.norm(torch_edges(atoms, cutoff)[3], axis=1))
        d1 = np.sort(np.linalg.norm(torch_edges(moved, cutoff)[3], axis=1))
        # A pair within rounding of the cutoff could flip; random cutoffs never sit there.
        np.testing.assert_allclose(d0, d1, atol=1e-9, err_msg=f"case {case}")


def test_supercell_keeps_per_atom_neighbour_counts():
    for atoms, cutoff in ((bulk("Cu", "fcc", a=3.61), 5.0), (bulk("NaCl", "rocksalt", a=5.64), 6.0),
                          (bulk("Si", "diamond", a=5.43) * (1, 1, 2), 4.0)):
        atoms = atoms.copy()
        atoms.rattle(0.05, seed=1)
        counts = np.bincount(torch_edges(atoms, cutoff)[0], minlength=len(atoms))
        supercell = atoms.repeat((2, 3, 1))
        super_counts = np.bincount(torch_edges(supercell, cutoff)[0], minlength=len(supercell))
        np.testing.assert_array_equal(super_counts, np.tile(counts, 6))


# ----------------------------------------------------------------------------- Verlet list

def assert_equal_to_fresh(nl, positions, cell, pbc, step):
    edge_index, shifts = nl.update(positions, cell, pbc)
    fresh_index, fresh_shifts = cell_list(positions, cell, pbc, nl.cutoff,
                                          self_interaction=nl.self_interaction)
    assert torch.equal(edge_index[0], fresh_index[0]), f"step {step}: i differs"
    ours = canonical(edge_index[0].numpy(), edge_index[1].numpy(), shifts.numpy())
    fresh = canonical(fresh_index[0].numpy(), fresh_index[1].numpy(), fresh_shifts.numpy())
    for a, b in zip(ours, fresh):
        np.testing.assert_array_equal(a, b, err_msg=f"step {step}")


@pytest.mark.parametrize("pbc", [(True, True, True), (True, True, False), (False,) * 3])
def test_skin_list_equals_fresh_list_along_random_walk(pbc):
    rng = np.random.default_rng(7)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 3)
    atoms.pbc = pbc
    cell = torch.tensor(atoms.cell.array)
    positions = torch.tensor(atoms.positions)
    nl = NeighborList(cutoff=4.0, skin=0.8)
    steps = 100
    for step in range(steps):
        positions = positions + torch.tensor(rng.normal(scale=0.03, size=positions.shape))
        if step % 25 == 10:  # a few atoms jump far
            far = rng.choice(len(atoms), 3, replace=False)
            positions[far] += torch.tensor(rng.normal(scale=2.0, size=(3, 3)))
        if step % 40 == 39 and all(pbc):  # wrap everything back into the cell
            frac = positions @ torch.linalg.inv(cell)
            positions = (frac - torch.floor(frac)) @ cell
        assert_equal_to_fresh(nl, positions, cell, pbc, step)
    assert 1 < nl.n_builds < steps / 3


def test_skin_list_equals_fresh_list_with_deforming_cell():
    rng = np.random.default_rng(8)
    atoms = bulk("Cu", "fcc", a=3.61) * (3, 3, 3)  # triclinic primitive cell
    cell = torch.tensor(atoms.cell.array)
    frac = torch.tensor(atoms.get_scaled_positions())
    nl = NeighborList(cutoff=4.5, skin=1.0)
    steps = 100
    for step in range(steps):
        # NPT-like: the cell breathes and shears, atoms follow it affinely and diffuse a little.
        strain = torch.tensor(rng.normal(scale=0.002, size=(3, 3)))
        cell = cell @ (torch.eye(3, dtype=torch.float64) + strain)
        frac = frac + torch.tensor(rng.normal(scale=0.002, size=frac.shape))
        assert_equal_to_fresh(nl, frac @ cell, cell, True, step)
    assert 1 < nl.n_builds < steps / 3


def test_skin_list_rebuilds_on_changes_and_with_zero_skin():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * 2
    positions, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    nl = NeighborList(cutoff=3.0, skin=0.5)
    nl.update(positions, cell, True)
    nl.update(positions, cell, True)
    assert nl.n_builds == 1
    assert_equal_to_fresh(nl, positions, cell, (True, True, False), "pbc changed")
    assert nl.n_builds == 2
    assert_equal_to_fresh(nl, positions[:-1], cell, (True, True, False), "atom removed")
    assert nl.n_builds == 3
    assert_equal_to_fresh(nl, positions[:-1].float(), cell.float(), (True, True, False), "dtype")
    assert nl.n_builds == 4
    zero = NeighborList(cutoff=3.0, skin=0.0, self_interaction=True)
    for step in range(3):
        assert_equal_to_fresh(zero, positions, cell, True, step)
    assert zero.n_builds == 3


# ----------------------------------------------------------------------------- errors

GOOD = dict(positions=torch.zeros(2, 3, dtype=torch.float64), cell=torch.eye(3) * 3.0,
            pbc=(True, True, True), cutoff=2.0)


@pytest.mark.parametrize("change, message", [
    (dict(cell=torch.zeros(3, 3)), "singular cell: cell vector 0 is zero"),
    (dict(cell=torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, 0]])), "singular cell"),
    (dict(cell=torch.tensor([[1.0, 0, 0], [2, 0, 0], [0, 0, 0]]), pbc=(True, True, False)),
     "singular cell"),
    (dict(cell=torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, float("nan")]])), "cell contains NaN"),
    (dict(positions=torch.tensor([[0.0, float("nan"), 0]])), "positions contain NaN or inf"),
    (dict(positions=torch.tensor([[0.0, float("inf"), 0]])), "positions contain NaN or inf"),
    (dict(positions=torch.zeros(4, 2)), r"positions must have shape \(N, 3\)"),
    (dict(positions=torch.zeros(4, 3, dtype=torch.int64)), "positions must be float32 or float64"),
    (dict(cell=torch.eye(2)), r"cell must have shape \(3, 3\)"),
    (dict(pbc=(True, False)), "pbc must be one bool or three bools"),
    (dict(cutoff=0.0), "cutoff must be a finite positive number"),
    (dict(cutoff=-1.0), "cutoff must be a finite positive number"),
    (dict(cutoff=float("nan")), "cutoff must be a finite positive number"),
    (dict(cutoff=float("inf")), "cutoff must be a finite positive number"),
    (dict(cutoff="5"), "cutoff must be a finite positive number"),
    (dict(cell=torch.eye(3) * 0.01, cutoff=10.0), "spans too many periodic images"),
    # ~39 million images: refused before any is formed (it used to try, with ~4 GB)
    (dict(cell=torch.eye(3) * 0.015), "spans too many periodic images"),
])
def test_bad_input_raises_naming_the_problem(change, message):
    args = {**GOOD, **change}
    with pytest.raises(ValueError, match=message):
        cell_list(args["positions"], args["cell"], args["pbc"], args["cutoff"])
    if "cutoff" not in change:
        with pytest.raises(ValueError, match=message):
            NeighborList(2.0).update(args["positions"], args["cell"], args["pbc"])


def test_zero_cell_is_fine_along_non_periodic_axes():
    wire = Atoms("H2", positions=[[0, 0, 0], [0, 0, 1.0]], cell=[[2.0, 0, 0], [0, 0, 0], [0, 0, 0]],
                 pbc=[True, False, False])
    assert_same_edges(torch_edges(wire, 2.5), ase_edges(wire, 2.5), "wire with a zero cell")
    assert len(torch_edges(wire, 2.5)[0]) == 2 + 4 + 4  # the other atom, images of both


@pytest.mark.parametrize("call, message", [
    (lambda a: neighbor_list("ijx", a, 2.0), "quantities must be a string of the letters"),
    (lambda a: neighbor_list("ij", a, 2.0, backend="scipy"), "unknown backend"),
    (lambda a: neighbor_list("ij", a, [1.0, 1.0]), "per-atom cutoff radii must be 3 numbers"),
    (lambda a: neighbor_list("ij", a, [1.0, float("nan"), 1.0]), "finite and >= 0"),
    (lambda a: neighbor_list("ij", a, {("H", "Xx"): 1.0}), "unknown element 'Xx'"),
    (lambda a: neighbor_list("ij", a, {("H", "H"): -1.0}), "must be a finite number >= 0"),
    (lambda a: neighbor_list("ij", a, {}), "cutoff dict is empty"),
    (lambda a: neighbor_list("ij", a, 0.0), "cutoff must be a finite positive number"),
    (lambda a: NeighborList(2.0, skin=-0.1), "skin must be a finite number >= 0"),
    (lambda a: NeighborList(float("nan")), "cutoff must be a finite positive number"),
])
def test_bad_neighbor_list_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(molecule("H2O"))


def test_missing_backend_raises_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_cluster", None)
    with pytest.raises(ImportError, match="pip install torch-cluster"):
        neighbor_list("ij", molecule("H2O"), 2.0, backend="torch-cluster")


# ----------------------------------------------------------------------------- other backends

def brute_force_radius(x, y, r, max_num_neighbors=32):
    """torch_cluster.radius as documented: for each point of y, up to max_num_neighbors points
    of x within r, as a (2, P) tensor of (index in y, index in x)."""
    close = torch.cdist(y, x) <= r
    rank = torch.cumsum(close.to(torch.int64), dim=1)
    return torch.nonzero(close & (rank <= max_num_neighbors)).T


def test_compiled_search_builds_where_a_compiler_is_found(search):
    if search == "torch" or not compiled.enabled() or shutil.which(compiled._compiler()[0]) is None:
        pytest.skip("the pure-torch search is expected here")
    assert isinstance(neighbors._compiled_search(), neighbors._CompiledCellList)


def test_without_a_compiler_the_torch_search_is_used(search, no_compiler):
    if search == "torch":
        pytest.skip("nothing to build")
    with pytest.warns(RuntimeWarning, match="pure-torch cell list.*could not compile"):
        assert neighbors._compiled_search() is None
    atoms = bulk("Cu", "fcc", a=3.61) * 3
    assert_same_edges(torch_edges(atoms, 5.0), ase_edges(atoms, 5.0), "without a compiler")


@pytest.mark.parametrize("max_bins", [1, 7, 100])
def test_few_bins_give_the_same_edges(max_bins):
    rng = np.random.default_rng(16)
    for case in range(20):
        atoms, cutoff = random_system(rng)
        i, j, S = neighbor_list("ijS", atoms, cutoff, max_nbins=max_bins)
        ri, rj, rS, rD = ase_edges(atoms, cutoff)
        D = atoms.positions[j] - atoms.positions[i] + S @ atoms.cell.array
        assert_same_edges((i, j, S, D), (ri, rj, rS, rD), f"max_bins {max_bins}, case {case}")


@pytest.mark.parametrize("real", [False, True])
def test_torch_cluster_backend(real, monkeypatch):
    if real:
        pytest.importorskip("torch_cluster")
    else:  # exercise our glue code against the documented semantics of torch_cluster.radius
        monkeypatch.setitem(sys.modules, "torch_cluster",
                            types.SimpleNamespace(radius=brute_force_radius))
    rng = np.random.default_rng(12)
    for case in range(25):
        atoms, cutoff = random_system(rng)
        ours = neighbor_list("ijDS", atoms, cutoff, backend="torch-cluster")
        ref = ase_neighbor_list("ijDS", atoms, cutoff)
        assert_same_edges((ours[0], ours[1], ours[3], ours[2]), (ref[0], ref[1], ref[3], ref[2]),
                          f"case {case}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(13)
    for case in range(30):
        atoms, cutoff = random_system(rng)
        for dtype in (torch.float32, torch.float64):
            args = [torch.tensor(atoms.positions, dtype=dtype),
                    torch.tensor(atoms.cell.array, dtype=dtype), torch.tensor(atoms.pbc)]
            cpu = cell_list(*args, cutoff)
            gpu = cell_list(*[x.cuda() for x in args], cutoff)
            assert gpu[0].device.type == gpu[1].device.type == "cuda"
            for a, b in zip(canonical(cpu[0][0], cpu[0][1], cpu[1]),
                            canonical(gpu[0][0].cpu(), gpu[0][1].cpu(), gpu[1].cpu())):
                np.testing.assert_array_equal(a, b, err_msg=f"case {case} {dtype}")
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * 3
    nl = NeighborList(4.0, skin=0.5)
    positions = torch.tensor(atoms.positions, device="cuda")
    cell = torch.tensor(atoms.cell.array, device="cuda")
    for step in range(20):
        positions = positions + 0.02 * torch.randn_like(positions)
        edge_index, shifts = nl.update(positions, cell, True)
        fresh_index, fresh_shifts = cell_list(positions, cell, True, 4.0)
        assert edge_index.device.type == "cuda"
        for a, b in zip(canonical(edge_index[0].cpu(), edge_index[1].cpu(), shifts.cpu()),
                        canonical(fresh_index[0].cpu(), fresh_index[1].cpu(),
                                  fresh_shifts.cpu())):
            np.testing.assert_array_equal(a, b, err_msg=f"step {step}")
    assert nl.n_builds < 20
