"""Fixtures and helpers shared by several test files."""
import numpy as np
import pytest
import torch
from ase.neighborlist import neighbor_list

from ase_equivariant import neighbors
from ase_equivariant.nn import native


# the loaders themselves, whatever a test later puts in their place
_LOADERS = (native.kernels, neighbors._compiled_search)


def _forget_libraries():
    for loader in _LOADERS:
        loader.cache_clear()


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """A C compiler that does not exist ($CC) and an empty build cache, with the compiled
    libraries forgotten before and after the test (their loaders cache what they found); yields
    the cache folder. The compiled paths are switched on for it, whatever the environment says."""
    monkeypatch.setenv("ASE_EQUIVARIANT_NATIVE", "1")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("ASE_EQUIVARIANT_CACHE", str(tmp_path / "cache"))
    _forget_libraries()
    yield tmp_path / "cache"
    monkeypatch.undo()
    _forget_libraries()


def model_inputs(net, atoms):
    """``net``'s inputs for ``atoms`` (neighbour list by ASE), in the dtype and on the device of
    its weights."""
    weight = next(net.parameters())
    dtype, device = weight.dtype, weight.device
    i, j, S = neighbor_list("ijS", atoms, net.cutoff)
    return (torch.tensor(atoms.positions, dtype=dtype, device=device), torch.tensor(atoms.numbers, device=device),
            torch.tensor(np.stack([i, j]), dtype=torch.int64, device=device), torch.tensor(S, device=device),
            torch.tensor(atoms.cell.array, dtype=dtype, device=device))
