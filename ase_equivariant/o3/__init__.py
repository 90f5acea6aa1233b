"""O(3) toolkit in e3nn's conventions: irreps bookkeeping, spherical harmonics, Wigner 3j and D.

Everything here reproduces e3nn 0.5/0.6 numerically (component order, signs, normalisation),
because the pretrained weights we load were trained with e3nn; e3nn itself is not imported.
"""

from .irreps import Irrep, Irreps, MulIr
from .spherical_harmonics import spherical_harmonics
from .wigner import random_rotation, wigner_3j, wigner_D

__all__ = ["Irrep", "Irreps", "MulIr", "spherical_harmonics", "wigner_3j", "wigner_D", "random_rotation"]
