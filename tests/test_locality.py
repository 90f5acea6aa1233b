"""Large systems are computed in an order of the atoms that follows space (nn/locality.py)."""
import numpy as np
import torch
from ase.build import bulk

from ase_equivariant import EquivariantCalculator
from ase_equivariant.models import random_model
from ase_equivariant.neighbors import cell_list
from ase_equivariant.nn import potential
from ase_equivariant.nn.locality import locality_order


def shuffled_crystal():
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True) * (4, 4, 4)
    atoms.numbers[::5] = 13
    atoms.rattle(0.05, seed=2)
    return atoms[np.random.default_rng(0).permutation(len(atoms))]


def test_locality_order_is_a_permutation_that_brings_neighbours_together():
    atoms = shuffled_crystal()
    positions = torch.tensor(atoms.positions)
    order = locality_order(positions)
    assert sorted(order.tolist()) == list(range(len(atoms)))
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    edge_index, _ = cell_list(positions, torch.tensor(atoms.cell.array), torch.tensor(atoms.pbc), 3.0)
    before = (edge_index[0] - edge_index[1]).abs().double().mean()
    after = (rank[edge_index[0]] - rank[edge_index[1]]).abs().double().mean()
    assert after < 0.5 * before
    # ties (atoms in one bin) keep their order; one atom; a flat (2-D) system
    assert locality_order(torch.zeros(3, 3)).tolist() == [0, 1, 2]
    assert locality_order(torch.zeros(1, 3)).tolist() == [0]
    flat = positions.clone()
    flat[:, 2] = 0
    assert sorted(locality_order(flat).tolist()) == list(range(len(atoms)))


def test_results_in_the_locality_order_are_those_of_the_given_order(monkeypatch):
    """Per-atom energies, forces, stress and per-atom stresses come back in the caller's order."""
    model = random_model(species=(13, 29), channels=8, num_blocks=2, parity=True, seed=4)
    atoms = shuffled_crystal()

    def results():
        atoms.calc = EquivariantCalculator(model, skin=0.0)
        return atoms.get_potential_energies(), atoms.get_forces(), atoms.get_stress(), atoms.get_stresses()

    monkeypatch.setattr(potential, "LOCALITY_ORDER_ATOMS", 10**9)
    want = results()
    monkeypatch.setattr(potential, "LOCALITY_ORDER_ATOMS", 1)
    got = results()
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-11)
