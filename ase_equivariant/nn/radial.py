"""Radial basis and smooth cutoff functions of the interatomic distance.

All functions take distances ``r`` in Å of any shape ``(...)``; the basis returns ``(..., num_basis)``
and the cutoffs return ``(...)`` with values in [0, 1], equal to 1 at short range and going smoothly
to 0 at the cutoff radius.
"""
import math

import torch
from torch import nn


class BesselBasis(nn.Module):
    r"""Radial Bessel functions :math:`b_n(r) = \frac{2}{r_c} \frac{\sin(k_n r)}{r}`.

    The wave numbers start at :math:`k_n = n\pi / r_c` (n = 1..num_basis) and are part of the
    weights (a trained model ships its own).

    Args:
        cutoff: cutoff radius :math:`r_c` in Å.
        num_basis: number of functions.
    """

    def __init__(self, cutoff: float, num_basis: int = 8):
        super().__init__()
        self.prefactor = 2.0 / cutoff
        self.register_buffer(
            "wave_numbers", torch.arange(1, num_basis + 1, dtype=torch.float64) * math.pi / cutoff
        )

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """``(...)`` distances in Å → ``(..., num_basis)``."""
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.wave_numbers * r) / r


class XPLORCutoff(nn.Module):
    r"""XPLOR switching function: 1 below ``r_on``, then
    :math:`\frac{(r_c^2 - r^2)^2 (r_c^2 + 2r^2 - 3r_{on}^2)}{(r_c^2 - r_{on}^2)^3}` up to ``r_c``.
    """

    def __init__(self, cutoff: float, r_on: float):
        super().__init__()
        if not 0 <= r_on < cutoff:
            raise ValueError(f"XPLOR cutoff needs 0 <= r_on < cutoff, got r_on={r_on}, cutoff={cutoff}")
        self.cutoff = cutoff
        self.r_on = r_on

    @property
    def knots(self):
        """Where the function is not smooth (its second derivative jumps at ``r_on``)."""
        return (self.r_on,) if self.r_on > 0 else ()

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        rc2, ron2, r2 = self.cutoff**2, self.r_on**2, r * r
        switch = (rc2 - r2) ** 2 * (rc2 + 2 * r2 - 3 * ron2) / (rc2 - ron2) ** 3
        return torch.where(r < self.r_on, torch.ones_like(r), switch)


class PolynomialCutoff(nn.Module):
    r"""The polynomial envelope of DimeNet (Klicpera et al. 2020), of order ``p``:
    :math:`1 - \frac{(p+1)(p+2)}{2} x^p + p(p+2) x^{p+1} - \frac{p(p+1)}{2} x^{p+2}`, :math:`x = r/r_c`.
    """

    def __init__(self, cutoff: float, p: int = 6):
        super().__init__()
        self.cutoff = cutoff
        self.p = float(p)

    #: where the function is not smooth below the cutoff: nowhere
    knots = ()

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p, x = self.p, r / self.cutoff
        return (
            1.0
            - 0.5 * (p + 1.0) * (p + 2.0) * torch.pow(x, p)
            + p * (p + 2.0) * torch.pow(x, p + 1.0)
            - 0.5 * p * (p + 1.0) * torch.pow(x, p + 2.0)
        )


def build_cutoff(spec: dict, cutoff: float) -> nn.Module:
    """A cutoff module from its config entry: ``{"name": "xplor", "r_on": 4.5}`` or
    ``{"name": "polynomial", "p": 6}``."""
    name = spec["name"]
    if name == "xplor":
        return XPLORCutoff(cutoff, spec["r_on"])
    if name == "polynomial":
        return PolynomialCutoff(cutoff, spec.get("p", 6))
    raise ValueError(f"unknown cutoff function {name!r}; known: 'xplor', 'polynomial'")
