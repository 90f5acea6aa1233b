"""The compiled message-sum kernels (nn/native.py, nn/message_sums.c) against the pure-torch path."""
import warnings

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from ase_equivariant import EquivariantCalculator
from ase_equivariant.models import random_model
from ase_equivariant.nn import native
from ase_equivariant.nn.convolution import TensorProductConv

requires_kernels = pytest.mark.skipif(native.kernels() is None, reason="the kernels cannot be built here")


def use_compiled(model, flag):
    for module in model.modules():
        if isinstance(module, TensorProductConv):
            module.use_compiled = flag


def structure():
    """A rattled, sheared three-element crystal with a lone atom far away (no edges) in a big cell."""
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True) * (2, 2, 1)
    atoms.numbers[[1, 6]] = [13, 8]
    atoms.rattle(0.1, seed=7)
    atoms.set_cell(atoms.cell.array + [[0, 0.3, 0.1], [0.2, 0, 0], [0, 0.4, 0]], scale_atoms=True)
    atoms.set_cell(atoms.cell.array + np.diag([0, 0, 12.0]))  # vacuum above: a slab in a box
    return atoms + Atoms("O", positions=[[1.0, 1.0, 9.0]])  # >= 6.8 Å from the slab and its image


@pytest.fixture
def two_threads():
    """Blocks split between two threads (the kernels' parallel path), whatever the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def results(model, atoms):
    atoms.calc = EquivariantCalculator(model, skin=0.0)
    return atoms.get_potential_energies(), atoms.get_forces(), atoms.get_stress(), atoms.get_stresses()


@requires_kernels
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("channels, lmax, parity, block", [
    (8, 2, False, 2048),   # float32: every channel in the remainder loop (fewer than a vector)
    (20, 3, True, 2048),   # whole vectors and a remainder; d2 = 7 (l = 3); odd and even irreps
    (32, 1, False, 40),    # several blocks per convolution
    (12, 4, True, 2048),   # l = 4: d1 = d2 = 9, the kernels' branch without compile-time sizes
])
def test_compiled_kernels_equal_the_torch_path(dtype, channels, lmax, parity, block, two_threads):
    model = random_model(species=(8, 13, 29), channels=channels, lmax=lmax, num_blocks=3, parity=parity,
                         seed=11, dtype=dtype)
    model.edge_block = block
    atoms = structure()
    use_compiled(model, False)
    reference = results(model, atoms)
    use_compiled(model, True)
    got = results(model, atoms)
    tolerance = 1e-12 if dtype == "float64" else 2e-5
    scale = [max(1.0, float(np.abs(r).max())) for r in reference]
    for name, a, b, s in zip(["energies", "forces", "stress", "stresses"], got, reference, scale):
        np.testing.assert_allclose(a, b, rtol=0, atol=tolerance * s, err_msg=name)


@requires_kernels
def test_blocks_without_edges_on_both_paths(two_threads):
    """A lone atom first and blocks of fewer edges than one atom has: the first block of every
    convolution holds the lone atom and no edge; both paths give it zero messages and agree."""
    model = random_model(species=(8, 13, 29), channels=12, num_blocks=2, seed=3, dtype="float64")
    model.edge_block = 5
    crystal = structure()
    atoms = crystal[-1:] + crystal[:-1]  # its lone atom first
    use_compiled(model, False)
    reference = results(model, atoms)
    use_compiled(model, True)
    got = results(model, atoms)
    for name, a, b in zip(["energies", "forces", "stress", "stresses"], got, reference):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * max(1.0, float(np.abs(b).max())), err_msg=name)
    np.testing.assert_allclose(got[1][0], 0, atol=1e-14)  # the lone atom feels nothing


@requires_kernels
def test_compiled_kernels_give_weight_gradients():
    """Training on energies works on the compiled path too: its radial-MLP gradients equal the
    torch path's."""
    model = random_model(species=(8, 13, 29), channels=16, num_blocks=2, seed=5)
    atoms = structure()
    positions = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell.array)
    from ase_equivariant.neighbors import cell_list
    edge_index, shifts = cell_list(positions, cell, torch.tensor(atoms.pbc), model.cutoff)

    def gradients(flag):
        use_compiled(model, flag)
        energy = model(positions, torch.tensor(atoms.numbers), edge_index, shifts, cell).sum()
        return torch.autograd.grad(energy, list(model.parameters()), allow_unused=True)

    for a, b in zip(gradients(True), gradients(False)):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_without_a_compiler_the_torch_path_is_used(no_compiler):
    with pytest.warns(RuntimeWarning, match="pure-torch convolution.*could not compile"):
        assert native.kernels() is None
    model = random_model(species=(8, 13, 29), channels=8, seed=1)
    atoms = structure()
    with pytest.warns(RuntimeWarning, match="pure-torch cell list"):
        energies = results(model, atoms)[0]  # runs, on the torch paths
    assert np.isfinite(energies).all()
    assert not list(no_compiler.glob("*.so"))


def test_kernels_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("ASE_EQUIVARIANT_NATIVE", "0")
    native.kernels.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert native.kernels() is None
    finally:
        native.kernels.cache_clear()


@pytest.mark.parametrize("compiled", [True, False])
def test_radial_weights_formed_again_in_the_backward_pass_give_the_same_results(compiled, monkeypatch):
    """Above KEPT_WEIGHTS_BYTES the radial weights are not kept but formed again: same numbers."""
    from ase_equivariant.nn import convolution
    model = random_model(species=(8, 13, 29), channels=16, num_blocks=3, seed=2)
    model.edge_block = 64
    use_compiled(model, compiled)
    atoms = structure()
    reference = results(model, atoms)
    monkeypatch.setattr(convolution, "KEPT_WEIGHTS_BYTES", 0)
    for got, want in zip(results(model, atoms), reference):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)
