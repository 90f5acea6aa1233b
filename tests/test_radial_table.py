"""nn/radial_table.py: the convolutions' radial weights interpolated from tables of the distance."""
import math

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from ase_equivariant import EquivariantCalculator
from ase_equivariant.models import random_model
from ase_equivariant.nn import radial_table
from ase_equivariant.nn.radial_table import RadialTable, grid_spacing, tabulate, with_derivative

from conftest import model_inputs

compiled = pytest.mark.skipif(not radial_table.available(), reason="no compiled interpolation here")


def test_grid_spacing_puts_the_cutoff_and_the_knots_on_nodes():
    assert grid_spacing(5.0, [4.5]) == pytest.approx(0.0025)
    assert grid_spacing(5.0, []) == pytest.approx(0.0025)
    spacing = grid_spacing(4.0, [3.3])
    assert spacing <= radial_table.SPACING
    for length in (4.0, 3.3):
        assert length / spacing == pytest.approx(round(length / spacing), abs=1e-6)
    assert grid_spacing(5.0, [5.0 / math.sqrt(2)], largest=0.5) is None  # no fraction of the cutoff is it


def _functions(r):
    """Smooth test functions of the distance with a second derivative that jumps at 3.5 (as the
    XPLOR switch's), their values and derivatives: ``(P,)`` → ``(P, 40)`` twice (40 columns: two
    whole vectors and a remainder)."""
    k = torch.arange(1, 41, dtype=r.dtype)
    r = r[:, None]
    kink = torch.clamp(r - 3.5, min=0)
    values = torch.sin(k * r / 3) * torch.exp(-r / k) + kink ** 2 * k
    derivatives = (k / 3) * torch.cos(k * r / 3) * torch.exp(-r / k) - torch.sin(k * r / 3) * torch.exp(-r / k) / k \
        + 2 * kink * k
    return values, derivatives


@compiled
def test_interpolated_values_and_distance_gradients_are_the_functions_to_float32_rounding():
    table = tabulate(_functions, 4.0, [3.5])
    r = (torch.rand(5000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3.9 + 0.05).float()
    r[:3] = torch.tensor([table.shortest, 4.0, 3.5])  # the first and last nodes, the knot
    values, derivatives = _functions(r.double())
    out = torch.full((len(r), 40), float("nan"))
    assert table.interpolate(r, out) is out
    np.testing.assert_allclose(out.numpy(), values.numpy(), rtol=0, atol=3e-7 * values.abs().max().item())
    grad = torch.randn(len(r), 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = (grad * derivatives).sum(1)
    got = table.distance_gradient(r, grad.float()).double()
    scale = (grad.abs() * derivatives.abs()).sum(1)
    assert ((got - expected).abs() / scale).max() < 1e-5


@compiled
def test_outputs_larger_than_the_caches_are_stored_around_them_with_the_same_values():
    table = tabulate(_functions, 4.0, [3.5])
    pairs = radial_table.STREAM_BYTES // (4 * table.width) + 3  # stored around the caches
    r = (torch.rand(pairs, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3.9 + 0.05).float()
    big = table.interpolate(r, torch.full((pairs, table.width), float("nan")))
    for part in (slice(0, 1000), slice(pairs - 1000, pairs)):  # cached stores
        assert torch.equal(table.interpolate(r[part], torch.empty(1000, table.width)), big[part])


def test_with_derivative_differentiates_each_column():
    both = with_derivative(lambda r: torch.stack([r ** 2, torch.sin(r)], dim=1))
    r = torch.linspace(0.5, 2.0, 7, dtype=torch.float64)
    values, derivatives = both(r)
    torch.testing.assert_close(values, torch.stack([r ** 2, torch.sin(r)], dim=1))
    torch.testing.assert_close(derivatives, torch.stack([2 * r, torch.cos(r)], dim=1))


def test_a_table_refuses_outputs_of_the_wrong_shape():
    table = RadialTable(0.5, torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="contiguous float32"):
        table.interpolate(torch.ones(5), torch.empty(5, 4))
    with pytest.raises(ValueError, match="1-D float32 CPU"):
        table.interpolate(torch.ones(5, dtype=torch.float64), torch.empty(5, 3))
    with pytest.raises(ValueError, match="of one shape"):
        RadialTable(0.5, torch.zeros(4, 3), torch.zeros(3, 3))


def _results(calc, atoms):
    props = ["energy", "forces"] + (["stress"] if atoms.pbc.all() else [])
    calc.calculate(atoms.copy(), props)
    return {k: np.asarray(calc.results[k]) for k in props}


@compiled
@pytest.mark.parametrize("name", ["Cu108", "Si64", "ethanol"])
def test_sevennet0_float32_with_tables_is_as_close_to_float64_as_without(monkeypatch, name):
    """SevenNet-0 in float32 with its radial weights interpolated: energy, forces and stress
    within float32's own distance from float64 (measured: forces 1.0-2.9e-6 eV/Å with tables,
    1.3-2.5e-6 without; stress 4.6-6.7e-9 eV/Å³ against 9.7e-9). Interpolating in float32 from
    r / h, or from values without their float64 increments, put the forces at ~1e-5 and the
    stress at 5-8e-8."""
    atoms = {"Cu108": bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3),
             "Si64": bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2),
             "ethanol": molecule("CH3CH2OH")}[name]
    atoms.rattle(0.05, seed=1)
    tables = EquivariantCalculator(device="cpu")  # the tables are the CPU kernels'
    ours = _results(tables, atoms)
    assert tables.model.__dict__["_derived"]["radial_tables"][1]  # the tables were used
    reference = _results(EquivariantCalculator(device="cpu", dtype="float64"), atoms)
    monkeypatch.setattr(radial_table, "available", lambda: False)
    plain = _results(EquivariantCalculator(device="cpu"), atoms)
    tolerance = {"energy": 3e-5, "forces": 6e-6, "stress": 3e-8}
    for key, atol in tolerance.items():
        if key in ours:
            np.testing.assert_allclose(ours[key], reference[key], rtol=0, atol=atol, err_msg=key)
            np.testing.assert_allclose(plain[key], reference[key], rtol=0, atol=atol, err_msg=key)


@compiled
def test_tables_follow_weight_changes_and_step_aside_for_close_pairs_and_gradients():
    """A small float32 model: the tables are made again after its weights change; distances off
    the grid (closer than its first node, beyond the cutoff), or weights that require gradients,
    use the MLP."""
    torch.manual_seed(3)
    model = random_model(species=(8, 29), channels=16, dtype="float32").requires_grad_(False)
    atoms = bulk("Cu", "fcc", a=3.61) * (2, 2, 2)
    atoms[0].symbol = "O"
    atoms.rattle(0.05, seed=2)
    inputs = model_inputs(model, atoms)

    def energies(tables: bool):
        if tables:
            return model(*inputs)
        original = radial_table.available
        radial_table.available = lambda: False
        try:
            return model(*inputs)
        finally:
            radial_table.available = original

    torch.testing.assert_close(energies(True), energies(False), rtol=0, atol=2e-5)
    first = model.__dict__["_derived"]["radial_tables"][1]
    assert first and model._radial_tables(torch.tensor([1.0, 2.0])) is first
    with torch.no_grad():
        model.blocks[0].conv.radial.weights[-1].mul_(1.5)
    torch.testing.assert_close(energies(True), energies(False), rtol=0, atol=2e-5)
    assert model.__dict__["_derived"]["radial_tables"][1] is not first
    assert model._radial_tables(torch.tensor([first[0].shortest / 2, 2.0])) is None
    assert model._radial_tables(torch.tensor([1.0, model.cutoff * 1.01])) is None
    model.blocks[0].conv.radial.weights[0].requires_grad_(True)
    assert model._radial_tables(torch.tensor([1.0, 2.0])) is None


@compiled
def test_a_retained_graph_gives_the_same_forces_twice():
    """The backward pass of interpolated weights keeps nothing for a second one: it interpolates again."""
    torch.manual_seed(4)
    model = random_model(species=(29,), channels=16, dtype="float32").requires_grad_(False)
    atoms = bulk("Cu", "fcc", a=3.61) * (2, 2, 2)
    atoms.rattle(0.05, seed=3)
    positions, *rest = model_inputs(model, atoms)
    positions.requires_grad_(True)
    energy = model(positions, *rest).sum()
    assert model.__dict__["_derived"]["radial_tables"][1]
    (first,) = torch.autograd.grad(energy, positions, retain_graph=True)
    (second,) = torch.autograd.grad(energy, positions)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


@compiled
def test_block_by_block_interpolation_above_the_kept_size(monkeypatch):
    """Above KEPT_WEIGHTS_BYTES the weights are interpolated per block of receivers, one row per
    slot, in both passes (several small blocks here): the results of the kept weights."""
    from ase_equivariant.nn import convolution
    torch.manual_seed(5)
    model = random_model(species=(8, 29), channels=16, dtype="float32").requires_grad_(False)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms[3].symbol = "O"
    atoms.rattle(0.05, seed=6)
    positions, *rest = model_inputs(model, atoms)

    def energies_and_forces():
        p = positions.clone().requires_grad_(True)
        energies = model(p, *rest)
        (grad,) = torch.autograd.grad(energies.sum(), p)
        return energies.detach(), -grad

    kept = energies_and_forces()
    assert model.__dict__["_derived"]["radial_tables"][1]
    monkeypatch.setattr(convolution, "KEPT_WEIGHTS_BYTES", 0)
    monkeypatch.setattr(model, "edge_block", 40)
    blockwise = energies_and_forces()
    for a, b in zip(kept, blockwise):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6)


@compiled
@pytest.mark.parametrize("drop", [0, 7])
def test_pairs_with_one_edge_get_their_distance_gradient(drop):
    """An edge list where some pairs have one edge only (as a caller may pass to the model; a
    pair's row of dE/dR is then its one slot's): forces as with the MLP."""
    torch.manual_seed(7)
    model = random_model(species=(8, 29), channels=16, dtype="float32").requires_grad_(False)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms[5].symbol = "O"
    atoms.rattle(0.05, seed=8)
    positions, numbers, edge_index, shifts, cell = model_inputs(model, atoms)
    keep = torch.ones(edge_index.shape[1], dtype=torch.bool)
    keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(9))[:drop]] = False
    edge_index, shifts = edge_index[:, keep], shifts[keep]

    def forces(tables: bool):
        original = radial_table.available
        if not tables:
            radial_table.available = lambda: False
        try:
            p = positions.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(model(p, numbers, edge_index, shifts, cell).sum(), p)
        finally:
            radial_table.available = original
        return -grad

    torch.testing.assert_close(forces(True), forces(False), rtol=0, atol=2e-5)
