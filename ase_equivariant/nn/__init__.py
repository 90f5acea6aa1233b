"""Neural-network building blocks and the full equivariant potential."""
from .potential import EquivariantPotential, PotentialConfig

__all__ = ["EquivariantPotential", "PotentialConfig"]
