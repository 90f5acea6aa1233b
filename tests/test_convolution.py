"""Edge blocking in the convolution changes nothing but speed and memory."""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from ase_equivariant import EquivariantCalculator
from ase_equivariant.models import random_model
from ase_equivariant.neighbors import cell_list
from ase_equivariant.nn.edge_table import edge_blocks, edge_pairs, receiver_blocks


def test_receiver_blocks_cover_every_edge_once_with_whole_receivers():
    receivers = torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 3, 3, 5])
    blocks = receiver_blocks(receivers, 7, 3)
    assert blocks[0][0] == 0 and blocks[-1][1] == 7
    assert [b[2] for b in blocks[1:]] == [b[3] for b in blocks[:-1]]  # contiguous edge ranges
    assert blocks[0][2] == 0 and blocks[-1][3] == len(receivers)
    for r0, r1, b0, b1 in blocks:
        assert bool(((receivers[b0:b1] >= r0) & (receivers[b0:b1] < r1)).all())
        assert int(((receivers >= r0) & (receivers < r1)).sum()) == b1 - b0
    assert receiver_blocks(receivers, 7, 100) == [(0, 7, 0, len(receivers))]


def test_edge_blocks_put_every_edge_in_one_slot_of_its_receiver():
    receivers = torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 3, 3, 5])
    senders = torch.tensor([1, 2, 3, 0, 4, 1, 1, 2, 5, 6, 0])
    edge_index = torch.stack([receivers, senders])
    e = len(receivers)
    for block_size in [100, 3, 2, 1]:
        blocks = edge_blocks(edge_index, 7, block_size, torch.arange(e), torch.arange(e))
        assert [block.r0 for block in blocks] == [0] + [b.r0 + b.n for b in blocks[:-1]]
        assert blocks[-1].r0 + blocks[-1].n == 7
        seen = []
        for block in blocks:
            table = block.edges.view(block.n, block.slots)
            for row in range(block.n):
                edges = [int(x) for x in table[row] if x < e]
                assert all(int(receivers[x]) == block.r0 + row for x in edges)
                seen += edges
            filled = block.edges < e
            assert bool((block.senders[filled] == senders[block.edges[filled]]).all())
            assert bool((block.senders[~filled] == 0).all())
            assert bool((block.pairs[filled] == block.edges[filled]).all())
            assert bool((block.phases[filled] == 1).all()) and bool((block.phases[~filled] == 0).all())
        assert sorted(seen) == list(range(e))


@pytest.mark.parametrize("pbc", [True, False])
def test_edge_pairs_join_each_edge_with_its_reverse(pbc):
    """Pairs are exactly {i -> j with shift S, j -> i with -S}, self-images of a small cell included."""
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)  # 2 atoms, cutoff above the cell size
    atoms.rattle(0.1, seed=1)
    atoms.pbc = pbc
    edge_index, shifts = cell_list(torch.tensor(atoms.positions), torch.tensor(atoms.cell.array),
                                   torch.tensor(atoms.pbc), 5.0)
    pair, first = edge_pairs(edge_index, shifts)
    edges = [(int(i), int(j), tuple(s.tolist())) for (i, j), s in zip(edge_index.t(), shifts)]
    index = {edge: e for e, edge in enumerate(edges)}
    assert len(first) == len(edges) // 2 and sorted(pair.tolist()) == sorted(list(range(len(first))) * 2)
    for e, (i, j, s) in enumerate(edges):
        reverse = index[(j, i, tuple(-c for c in s))]
        assert reverse != e and pair[reverse] == pair[e]
    assert bool((pair[first] == torch.arange(len(first))).all())
    lone = edge_pairs(edge_index[:, :1], shifts[:1])  # an edge without its reverse: a pair of its own
    assert lone[0].tolist() == [0] and lone[1].tolist() == [0]
    # atom indices too large for one int64 key per edge: pairs found by rows instead, the same
    far_pair, far_first = edge_pairs(edge_index + 2**40, shifts)
    assert far_pair.tolist() == pair.tolist() and far_first.tolist() == first.tolist()
    # the backward phases: each pair has one slot in phase 1 and its other slot in phase 2
    for block_size in (1000, 7):
        blocks = edge_blocks(edge_index, len(atoms), block_size, pair, first)
        phases = torch.cat([b.phases[b.edges < len(edges)] for b in blocks])
        slot_pairs = torch.cat([b.pairs[b.edges < len(edges)] for b in blocks])
        for phase in (1, 2):
            assert sorted(slot_pairs[phases == phase].tolist()) == list(range(len(first)))


def crystal():
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True) * (2, 2, 1)
    atoms.numbers[[1, 6]] = [13, 8]
    atoms.rattle(0.05, seed=4)
    return atoms


def cluster_and_lone_atoms():
    """Receivers with very different edge counts, and atoms with none (first and last)."""
    atoms = crystal()
    atoms.pbc = False
    atoms.center(vacuum=3.0)
    atoms += Atoms("OCu", positions=[[-20.0, 0, 0], [40.0, 0, 0]])
    atoms.positions[[0, -1]] = atoms.positions[[-1, 0]]
    return atoms


@pytest.mark.parametrize("structure", [crystal, cluster_and_lone_atoms])
@pytest.mark.parametrize("block", [1, 7, 50])
def test_edge_blocks_give_the_same_results(structure, block):
    model = random_model(species=(8, 13, 29), channels=8, num_blocks=3, parity=True, seed=3)
    atoms = structure()

    def results():
        atoms.calc = EquivariantCalculator(model, skin=0.0)
        stress = atoms.get_stress() if atoms.pbc.all() else np.zeros(6)
        return atoms.get_potential_energies(), atoms.get_forces(), stress

    reference = results()
    model.edge_block = block
    for got, want in zip(results(), reference):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_edge_blocks_are_sized_by_the_device_unless_set():
    """Cache-sized blocks on the CPU; on other devices (a GPU: each block costs the host thousands
    of operations) blocks of DEVICE_EDGE_BLOCK 4-byte floats' worth of edges; a set size wins."""
    from ase_equivariant.nn.potential import DEFAULT_EDGE_BLOCK, DEVICE_EDGE_BLOCK
    model = random_model(species=(29,), channels=8, num_blocks=1, seed=3)
    assert model.edge_block_size(torch.empty(0)) == DEFAULT_EDGE_BLOCK
    assert model.edge_block_size(torch.empty(0, device="meta")) == DEVICE_EDGE_BLOCK
    assert model.edge_block_size(torch.empty(0, dtype=torch.float64, device="meta")) == DEVICE_EDGE_BLOCK // 2
    model.edge_block = 7
    assert model.edge_block_size(torch.empty(0, device="meta")) == 7


def test_second_derivatives_are_refused_with_a_clear_error():
    model = random_model(species=(8, 13, 29), channels=8, num_blocks=2, seed=3)
    atoms = crystal()
    positions = torch.tensor(atoms.positions, requires_grad=True)
    cell = torch.tensor(atoms.cell.array)
    edge_index, shifts = cell_list(positions.detach(), cell, torch.tensor(atoms.pbc), model.cutoff)
    energy = model(positions, torch.tensor(atoms.numbers), edge_index, shifts, cell).sum()
    (forces,) = torch.autograd.grad(energy, positions, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        forces.sum().backward()


@pytest.mark.parametrize("kept", [True, False])
def test_weight_gradients_match_finite_differences(kept, monkeypatch):
    """The hand-written backward pass returns the gradients of the radial MLP's (and every other)
    weight, for training on energies, with the radial weights kept from the forward pass and
    formed again: checked along a random direction, in float64."""
    from ase_equivariant.nn import convolution
    if not kept:
        monkeypatch.setattr(convolution, "KEPT_WEIGHTS_BYTES", 0)
    model = random_model(species=(8, 13, 29), channels=8, num_blocks=2, parity=True, seed=5)
    model.edge_block = 7  # several blocks per convolution
    atoms = crystal()
    positions = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell.array)
    edge_index, shifts = cell_list(positions, cell, torch.tensor(atoms.pbc), model.cutoff)

    def energy():
        return model(positions, torch.tensor(atoms.numbers), edge_index, shifts, cell).sum()

    params = dict(model.named_parameters())
    grads = torch.autograd.grad(energy(), list(params.values()), allow_unused=True)
    grads = {name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(params.items(), grads)}
    assert sum(".radial." in name for name in params) == 2 * 2  # both layers of both radial MLPs
    generator = torch.Generator().manual_seed(0)
    for name, p in params.items():
        direction = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        h = 1e-5
        with torch.no_grad():
            p += h * direction
            up = energy()
            p -= 2 * h * direction
            down = energy()
            p += h * direction
        numeric = (up - down) / (2 * h)
        analytic = (grads[name] * direction).sum()
        assert float(abs(numeric - analytic)) <= 1e-6 * max(1.0, float(abs(analytic))), name


def test_graphs_alive_at_once_and_retained_graphs_give_the_same_forces():
    """The radial weights that a call keeps for its backward pass are handed to the next call
    only after that backward pass: two graphs alive at once, a graph differentiated twice
    (retain_graph) and a graph dropped without a backward pass all give the forces of a fresh call."""
    model = random_model(species=(8, 13, 29), channels=8, num_blocks=3, parity=True, seed=3)
    model.edge_block = 7
    numbers = torch.tensor(crystal().numbers)

    def graph(seed):
        atoms = crystal()
        atoms.rattle(0.05, seed=seed)
        positions = torch.tensor(atoms.positions, requires_grad=True)
        cell = torch.tensor(atoms.cell.array)
        edge_index, shifts = cell_list(positions.detach(), cell, torch.tensor(atoms.pbc), model.cutoff)
        return model(positions, numbers, edge_index, shifts, cell).sum(), positions

    def forces(seed):
        energy, positions = graph(seed)
        return torch.autograd.grad(energy, positions)[0]

    want = [forces(seed) for seed in (1, 2)]
    first, second = graph(1), graph(2)  # both alive: the second may not share the first's weights
    graph(3)  # dropped without a backward pass
    got_second = torch.autograd.grad(second[0], second[1], retain_graph=True)[0]
    got_first = torch.autograd.grad(first[0], first[1])[0]
    again = torch.autograd.grad(second[0], second[1])[0]  # weights formed again, block by block
    for got, reference in ((got_first, want[0]), (got_second, want[1]), (again, want[1]), (forces(2), want[1])):
        torch.testing.assert_close(got, reference, rtol=0, atol=1e-12)


def test_calls_with_no_backward_pass_give_their_arrays_back_and_the_same_energies():
    """Energy-only calls (no graph) and ``torch.no_grad`` give the arrays that a call keeps for
    its backward pass (radial weights, pre-activations) back at the end of the forward pass:
    every later call, with or without forces, writes into the same memory; the energies are
    those of a call with forces."""
    from ase_equivariant.nn.convolution import TensorProductConv
    model = random_model(species=(8, 13, 29), channels=8, num_blocks=2, seed=3)
    atoms = crystal()
    atoms.calc = EquivariantCalculator(model, skin=0.0)
    convolutions = [m for m in model.modules() if isinstance(m, TensorProductConv)]

    def spares():
        return [{name: [a.data_ptr() for a in arrays] for name, arrays in conv._spares.items()}
                for conv in convolutions]

    atoms.get_potential_energies()  # energy only
    first = spares()
    assert all(kept["pair_weights"] and kept["pre0"] for kept in first)
    atoms.rattle(0.01, seed=1)
    atoms.get_forces()
    assert spares() == first
    want = atoms.get_potential_energies()
    positions = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell.array)
    edge_index, shifts = cell_list(positions, cell, torch.tensor(atoms.pbc), model.cutoff)
    with torch.no_grad():
        no_grad = model(positions, torch.tensor(atoms.numbers), edge_index, shifts, cell)
    atoms.calc.results.clear()
    energy_only = atoms.get_potential_energies()
    assert spares() == first
    np.testing.assert_allclose(energy_only, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(no_grad.numpy(), want, rtol=0, atol=1e-12)


def test_a_call_with_a_few_more_pairs_than_the_last_writes_into_the_same_arrays():
    """The number of pairs within the cutoff moves from step to step of a simulation: calls
    with fewer pairs, then with a few more than the first, all reuse the arrays of the first
    call (a spare keeps its whole size and has room for a few more pairs), and give the forces
    of a model that kept none."""
    from ase_equivariant.nn.convolution import TensorProductConv

    def model():
        return random_model(species=(8, 13, 29), channels=8, num_blocks=2, seed=3)

    calculator = EquivariantCalculator(model(), skin=0.0)

    def strained(strain):
        atoms = crystal()
        atoms.set_cell(atoms.cell * strain, scale_atoms=True)
        edge_index, shifts = cell_list(torch.tensor(atoms.positions), torch.tensor(atoms.cell.array),
                                       torch.tensor(atoms.pbc), calculator.model.cutoff)
        return atoms, edge_pairs(edge_index, shifts)[1].numel()

    convolutions = [m for m in calculator.model.modules() if isinstance(m, TensorProductConv)]

    def spares():
        return [{name: [a.data_ptr() for a in arrays] for name, arrays in conv._spares.items()}
                for conv in convolutions]

    counts, first = [], None
    for strain in (1.07, 1.08, 1.07, 1.06):
        atoms, pairs = strained(strain)
        counts.append(pairs)
        atoms.calc = calculator
        forces = atoms.get_forces()
        first = first or spares()
        assert spares() == first
        atoms.calc = EquivariantCalculator(model(), skin=0.0)  # a fresh model: no spares
        np.testing.assert_allclose(forces, atoms.get_forces(), rtol=0, atol=1e-12)
    assert counts[1] < counts[0] < counts[3], counts  # fewer pairs, then more than the first


def test_a_graph_dropped_without_a_backward_pass_gives_its_arrays_back():
    """A call whose graph is dropped unused (its energy was all that was needed) gives the arrays
    it kept for its backward pass back when the graph goes: the next call writes into them."""
    from ase_equivariant.nn.convolution import TensorProductConv
    model = random_model(species=(8, 13, 29), channels=8, num_blocks=2, seed=3)
    convolutions = [m for m in model.modules() if isinstance(m, TensorProductConv)]
    atoms = crystal()
    positions = torch.tensor(atoms.positions, requires_grad=True)
    cell = torch.tensor(atoms.cell.array)
    edge_index, shifts = cell_list(positions.detach(), cell, torch.tensor(atoms.pbc), model.cutoff)

    def energy():
        return model(positions, torch.tensor(atoms.numbers), edge_index, shifts, cell).sum()

    torch.autograd.grad(energy(), positions)  # the spares exist
    spares = [{name: arrays[0].data_ptr() for name, arrays in conv._spares.items()} for conv in convolutions]
    kept = energy()  # holds them
    assert all(not arrays for conv in convolutions for arrays in conv._spares.values())
    del kept
    assert [{name: arrays[0].data_ptr() for name, arrays in conv._spares.items()} for conv in convolutions] == spares
