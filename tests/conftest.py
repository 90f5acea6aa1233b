"""Fixtures shared by several test files."""
import pytest

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
    the cache folder."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("ASE_EQUIVARIANT_CACHE", str(tmp_path / "cache"))
    _forget_libraries()
    yield tmp_path / "cache"
    monkeypatch.undo()
    _forget_libraries()
