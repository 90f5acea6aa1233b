"""ase-equivariant: pretrained E(3)-equivariant interatomic potentials as ASE calculators."""
from ._version import __version__
from .calculator import EquivariantCalculator
from .models import load_model
from .neighbors import neighbor_list

__all__ = ["EquivariantCalculator", "load_model", "neighbor_list", "__version__"]
