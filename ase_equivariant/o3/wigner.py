"""Wigner 3j symbols, Wigner D matrices and random rotations in e3nn's real basis.

Conventions (identical to e3nn 0.5/0.6, which trained the weights we load):

* Real basis of degree ``l``: components indexed ``0 .. 2l`` (``m = -l .. l``), with the ``y``
  axis as the polar axis. For ``l = 1`` the basis is ``(x, y, z)`` and ``wigner_D(1, R) == R``.
* ``wigner_3j(l1, l2, l3)`` is the complex SU(2) Clebsch-Gordan tensor (Condon-Shortley phases)
  moved to the real basis by e3nn's real-to-complex change of basis (which carries an extra
  ``(-i)**l`` so that the result is real), then scaled to unit Frobenius norm. Sign included,
  it equals ``e3nn.o3.wigner_3j``.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from math import factorial, sqrt

import numpy as np
import torch


def _cg_coefficient(j1: int, m1: int, j2: int, m2: int, j3: int, m3: int) -> float:
    """Complex Clebsch-Gordan coefficient <j1 m1; j2 m2 | j3 m3> (Racah's formula, integer j)."""
    if m1 + m2 != m3:
        return 0.0
    prefactor_sq = Fraction(
        (2 * j3 + 1)
        * factorial(j3 + j1 - j2)
        * factorial(j3 - j1 + j2)
        * factorial(j1 + j2 - j3)
        * factorial(j3 + m3)
        * factorial(j3 - m3)
        * factorial(j1 - m1)
        * factorial(j1 + m1)
        * factorial(j2 - m2)
        * factorial(j2 + m2),
        factorial(j1 + j2 + j3 + 1),
    )
    total = Fraction(0)
    k_min = max(0, j2 - j3 - m1, j1 - j3 + m2)
    k_max = min(j1 + j2 - j3, j1 - m1, j2 + m2)
    for k in range(k_min, k_max + 1):
        denominator = (
            factorial(k)
            * factorial(j1 + j2 - j3 - k)
            * factorial(j1 - m1 - k)
            * factorial(j2 + m2 - k)
            * factorial(j3 - j2 + m1 + k)
            * factorial(j3 - j1 - m2 + k)
        )
        total += Fraction((-1) ** k, denominator)
    magnitude = sqrt(prefactor_sq * total * total)  # exact rational, rounded once before the sqrt
    return magnitude if total > 0 else -magnitude


def _complex_from_real(l: int) -> np.ndarray:
    """e3nn's change of basis ``Q`` of shape ``(2l+1, 2l+1)``: ``Q[l+m, l+mu]``, complex ``m``, real ``mu``.

    Real component ``mu`` of a degree-``l`` object relates to complex components ``m = +-|mu|``
    with Wikipedia's real-form phases; the global factor ``(-i)**l`` makes the 3j symbols real.
    """
    Q = np.zeros((2 * l + 1, 2 * l + 1), dtype=np.complex128)
    r = 1 / sqrt(2)
    Q[l, l] = 1.0
    for m in range(1, l + 1):
        Q[l - m, l + m] = r
        Q[l - m, l - m] = -1j * r
        Q[l + m, l + m] = (-1) ** m * r
        Q[l + m, l - m] = 1j * (-1) ** m * r
    return (-1j) ** l * Q


@functools.lru_cache(maxsize=None)
def _wigner_3j_float64(l1: int, l2: int, l3: int) -> torch.Tensor:
    cg = np.zeros((2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1))
    for m1 in range(-l1, l1 + 1):
        for m2 in range(max(-l2, -l3 - m1), min(l2, l3 - m1) + 1):
            cg[l1 + m1, l2 + m2, l3 + m1 + m2] = _cg_coefficient(l1, m1, l2, m2, l3, m1 + m2)
    Q1, Q2, Q3 = _complex_from_real(l1), _complex_from_real(l2), _complex_from_real(l3)
    C = np.einsum("ia,kb,nc,ikn->abc", Q1, Q2, Q3.conj(), cg, optimize=True)
    if np.abs(C.imag).max() > 1e-10:
        raise RuntimeError("real-basis Clebsch-Gordan tensor is not real; change of basis is wrong")
    C = C.real
    return torch.from_numpy(C / np.linalg.norm(C))


def wigner_3j(l1: int, l2: int, l3: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Wigner 3j symbol in e3nn's real basis, equal to ``e3nn.o3.wigner_3j(l1, l2, l3)``.

    Returns a new tensor ``C`` of shape ``(2l1+1, 2l2+1, 2l3+1)`` with
    ``sum(C**2) == 1`` and ``C_abc = C_ijk D1_ia D2_jb D3_kc`` for every rotation (``D = wigner_D``).
    Requires ``|l1 - l2| <= l3 <= l1 + l2``. Values are computed once per ``(l1, l2, l3)``.
    """
    for l in (l1, l2, l3):
        if isinstance(l, bool) or not isinstance(l, int) or l < 0:
            raise ValueError(f"l must be a non-negative integer, got {l!r}")
    if not abs(l1 - l2) <= l3 <= l1 + l2:
        raise ValueError(f"({l1}, {l2}, {l3}) violates the triangle rule")
    return _wigner_3j_float64(l1, l2, l3).to(dtype=dtype, device=device, copy=True)


@functools.lru_cache(maxsize=None)
def _coupling_isometry(l: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``sqrt(2l+3) * C(l+1, 1, l)`` as a ``(2l+3, 3*(2l+1))`` matrix ``P`` with ``P @ P.T = 1``."""
    C = sqrt(2 * l + 3) * _wigner_3j_float64(l + 1, 1, l)
    return C.reshape(2 * l + 3, 3 * (2 * l + 1)).to(dtype=dtype, device=device)


def wigner_D(l: int, R: torch.Tensor) -> torch.Tensor:
    """Wigner D matrix of degree ``l`` in e3nn's real basis, for rotation matrices ``R``.

    ``R``: ``(..., 3, 3)``; returns ``(..., 2l+1, 2l+1)`` with
    ``spherical_harmonics_l(R @ x) == wigner_D(l, R) @ spherical_harmonics_l(x)``,
    ``wigner_D(1, R) == R`` and ``wigner_D(l, R1 @ R2) == wigner_D(l, R1) @ wigner_D(l, R2)``.
    For proper ``R`` this equals e3nn's ``Irrep(l, p).D_from_matrix(R)``. For an improper ``R``
    the result is ``(-1)**l * wigner_D(l, -R)``, the matrix that still transforms the spherical
    harmonics; use ``Irrep(l, p).D_from_matrix`` for another parity.

    Built from ``D^1 = R`` by ``D^{l+1} = P (R kron D^l) P^T`` with ``P`` the normalised
    ``wigner_3j(l+1, 1, l)``: exact to rounding, differentiable, batched.
    """
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"R must have shape (..., 3, 3), got {tuple(R.shape)}")
    batch = R.shape[:-2]
    if l == 0:
        return R.new_ones(batch + (1, 1))
    det = torch.linalg.det(R).sign()[..., None, None]
    R = R * det
    D = R
    for k in range(1, l):
        P = _coupling_isometry(k, R.dtype, R.device)
        n = 3 * (2 * k + 1)
        kron = (R[..., :, None, :, None] * D[..., None, :, None, :]).reshape(batch + (n, n))
        D = P @ kron @ P.T
    return D * det**l


def random_rotation(generator: torch.Generator | None = None, dtype=torch.float64, device=None, shape=()) -> torch.Tensor:
    """Haar-random proper rotation matrices, shape ``(*shape, 3, 3)`` (``(3, 3)`` by default).

    Drawn from a normalised 4-d Gaussian quaternion (uniform on SU(2), hence Haar on SO(3)),
    using ``generator`` (a CPU ``torch.Generator``) for reproducibility.
    """
    q = torch.randn(tuple(shape) + (4,), generator=generator, dtype=torch.float64)
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    R = torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )
    return R.to(dtype=dtype, device=device)
