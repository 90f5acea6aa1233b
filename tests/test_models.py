"""Model registry and weight format: load/save, errors, dtypes, species, no foreign imports."""
import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk

import ase_equivariant
from ase_equivariant.models import FORMAT, FORMAT_VERSION, MODELS, data_path, load_model, random_model, save_model
from conftest import model_inputs

PACKAGE = Path(ase_equivariant.__file__).resolve().parent


def energies_of(net, atoms):
    """Per-atom energies (N,) as a float64 numpy array."""
    with torch.no_grad():
        e = net(*model_inputs(net, atoms))
    return e.double().numpy()


def forces_of(net, atoms):
    """-dE/dr (N, 3) as a float64 numpy array (the backward passes, and what they keep)."""
    positions, *rest = model_inputs(net, atoms)
    positions.requires_grad_(True)
    energy = net(positions, *rest).sum()
    return -torch.autograd.grad(energy, positions)[0].double().numpy()


def small_cell():
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.numbers[[1, 2]] = [13, 8]
    atoms.rattle(0.05, seed=0)
    return atoms


@pytest.fixture(scope="module")
def tiny():
    return random_model(species=(1, 8, 13, 29), channels=8, num_blocks=2, seed=5, dtype="float64")


# ---------------------------------------------------------------------------------------------
# errors


def test_unknown_name():
    with pytest.raises(ValueError, match=r"unknown model 'sevennet-9'.*sevennet-0"):
        load_model("sevennet-9")


def test_missing_path(tmp_path):
    path = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_model(path)


def test_plain_tensor_file(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match="not an ase-equivariant weight file"):
        load_model(path)


def test_dict_without_format_tag(tmp_path):
    path = tmp_path / "dict.pt"
    torch.save({"state_dict": {"a": torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match="not an ase-equivariant weight file"):
        load_model(path)


def test_text_file(tmp_path):
    path = tmp_path / "model.txt"
    path.write_text("this is not a model\n")
    with pytest.raises(ValueError, match="not an ase-equivariant weight file"):
        load_model(path)


def test_pickle_with_code_is_refused(tmp_path):
    """A pickle that would run code on load is rejected (weights_only), not executed."""
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": Path("x")}, path)  # arbitrary class: not weights-only
    with pytest.raises(ValueError, match="not an ase-equivariant weight file"):
        load_model(path)


def test_wrong_format_version(tmp_path, tiny):
    path = tmp_path / "model.pt"
    save_model(tiny, path)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, path)
    with pytest.raises(ValueError, match=rf"version {FORMAT_VERSION + 1}.*reads version {FORMAT_VERSION}"):
        load_model(path)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", torch.float16, "double"])
def test_unsupported_dtype(dtype):
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        load_model("sevennet-0", dtype=dtype)


def test_unknown_element_lists_known_ones(tiny):
    with pytest.raises(ValueError, match=r"\[26\].*\[1, 8, 13, 29\]"):
        tiny.species_index(torch.tensor([1, 26, 8]))
    with pytest.raises(ValueError, match=r"\[0, 200\]"):
        tiny.species_index(torch.tensor([0, 200]))
    atoms = small_cell()
    atoms.numbers[0] = 79  # Au: not in the model
    with pytest.raises(ValueError, match=r"\[79\]"):
        energies_of(tiny, atoms)
    assert tiny.species_index(torch.tensor([29, 1, 13])).tolist() == [3, 0, 2]


# ---------------------------------------------------------------------------------------------
# round trip and format


def test_save_load_round_trip(tmp_path):
    """Weights are stored as float32: a float32 model round-trips exactly (bit for bit)."""
    model = random_model(species=(1, 8, 13, 29), channels=8, num_blocks=2, seed=5, dtype="float32")
    path = tmp_path / "model.pt"
    save_model(model, path, provenance={"source": "test"})
    loaded = load_model(path, dtype="float32")
    atoms = small_cell()
    assert np.array_equal(energies_of(loaded, atoms), energies_of(model, atoms))
    assert loaded.config == model.config
    assert loaded.provenance == {"source": "test"}
    for (name, a), (name_b, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == name_b and torch.equal(a, b), name
    # in float64: the float32-rounded weights, with constants (Clebsch-Gordan) in full precision
    rounded = random_model(species=(1, 8, 13, 29), channels=8, num_blocks=2, seed=5, dtype="float64")
    rounded.load_state_dict({k: v.float().double() if v.is_floating_point() else v
                             for k, v in rounded.state_dict().items()})
    assert np.array_equal(energies_of(load_model(path, dtype="float64"), atoms), energies_of(rounded, atoms))


def test_frozen_weights_changed_after_a_call_are_used():
    """Tensors derived from frozen weights (scaled matrices and, for the backward passes, their
    transposes, kept between calls: nn/derived.py) follow the weights: changed in place, loaded
    from a state dict, or moved to another dtype."""
    atoms = small_cell()
    model = random_model(species=(1, 8, 13, 29), channels=8, num_blocks=2, seed=5, dtype="float64")
    other = random_model(species=(1, 8, 13, 29), channels=8, num_blocks=2, seed=6, dtype="float64")
    for net in (model, other):
        net.requires_grad_(False)
    expected, expected_forces = energies_of(other, atoms), forces_of(other, atoms)
    energies_of(model, atoms), forces_of(model, atoms)  # fill the caches
    model.load_state_dict(other.state_dict())  # copies in place
    np.testing.assert_array_equal(energies_of(model, atoms), expected)
    np.testing.assert_array_equal(forces_of(model, atoms), expected_forces)
    with torch.no_grad():
        for w in model.parameters():
            w.mul_(1.1)
    assert not np.allclose(energies_of(model, atoms), expected)
    assert not np.allclose(forces_of(model, atoms), expected_forces)
    model.load_state_dict(other.state_dict())
    np.testing.assert_array_equal(energies_of(model, atoms), expected)
    np.testing.assert_array_equal(forces_of(model, atoms), expected_forces)
    np.testing.assert_allclose(energies_of(model.float(), atoms), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(forces_of(model, atoms), expected_forces, rtol=1e-4, atol=1e-4)
    model.double().load_state_dict(other.state_dict())
    # weights that require gradients are differentiated through, as in a model never frozen
    model.requires_grad_(True)
    fresh = random_model(species=(1, 8, 13, 29), channels=8, num_blocks=2, seed=6, dtype="float64")
    for a, b in zip(weight_gradients(model, atoms), weight_gradients(fresh, atoms)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def weight_gradients(net, atoms):
    """dE/dw for every parameter of ``net`` (None where the energy does not depend on it)."""
    energy = net(*model_inputs(net, atoms)).sum()
    return torch.autograd.grad(energy, list(net.parameters()), allow_unused=True)


def test_weight_file_is_weights_only(tmp_path, tiny):
    for path in (data_path("sevennet-0.pt"), tmp_path / "tiny.pt"):
        if path.name == "tiny.pt":
            save_model(tiny, path)
        payload = torch.load(path, map_location="cpu", weights_only=True)
        assert payload["format"] == FORMAT and payload["format_version"] == FORMAT_VERSION
        assert set(payload) >= {"config", "state_dict", "provenance"}
        assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())
        assert all(v.dtype != torch.float64 for v in payload["state_dict"].values())


@pytest.mark.parametrize("dtype", ["float32", "float64", torch.float64])
def test_load_dtypes(dtype):
    net = load_model("sevennet-0", dtype=dtype)
    expected = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)
    assert all(p.dtype == expected for p in net.parameters())
    assert all(b.dtype == expected for b in net.buffers() if b.is_floating_point())
    assert not net.training
    e = energies_of(net, small_cell())
    assert e.shape == (4,) and np.isfinite(e).all()


def test_sevennet0_registry_and_data_file():
    assert MODELS["sevennet-0"] == "sevennet-0.pt"
    path = data_path("sevennet-0.pt")
    assert path.is_file() and path.stat().st_size > 1_000_000
    assert data_path("PROVENANCE").is_file()
    net = load_model("sevennet-0")
    assert len(net.species) == 89 and net.cutoff == 5.0
    assert net.config.lmax_sh == 2 and not net.config.parity and len(net.config.node_irreps) == 6
    assert "Yutack Park" in net.provenance["licence"]
    assert load_model(path).config == net.config  # the same file by path


def test_load_model_is_exported():
    assert ase_equivariant.load_model is load_model


# ---------------------------------------------------------------------------------------------
# no foreign implementation inside the package


FORBIDDEN = {"e3nn", "sevenn", "torch_geometric"}


def _imported_roots(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            yield str(node.args[0].value).split(".")[0]


def test_no_foreign_imports():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    offenders = []
    for path in files:
        roots = set(_imported_roots(ast.parse(path.read_text(), filename=str(path))))
        offenders += [f"{path.relative_to(PACKAGE.parent)}: {name}" for name in sorted(roots & FORBIDDEN)]
    assert not offenders, offenders


def test_import_check_catches_a_forbidden_import():
    tree = ast.parse("import os\nfrom e3nn.o3 import Irreps\nimport importlib\nimportlib.import_module('sevenn')\n")
    assert set(_imported_roots(tree)) & FORBIDDEN == {"e3nn", "sevenn"}
