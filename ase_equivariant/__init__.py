"""ase-equivariant: pretrained E(3)-equivariant interatomic potentials as ASE calculators."""
from ._version import __version__
from .models import load_model

__all__ = ["load_model", "__version__"]
