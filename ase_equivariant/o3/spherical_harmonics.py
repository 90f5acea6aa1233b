"""Real spherical harmonics of any degree, in e3nn's basis and "component" normalisation.

``Y^0 = 1`` and ``Y^1(x) = sqrt(3) (x, y, z)``; higher degrees follow e3nn's own definition,

    Y^{l+1}_i(x) = c_l * sum_{k, j} C^{(l+1, 1, l)}_{i k j} x_k Y^l_j(x),

with ``C = wigner_3j`` and ``c_l > 0`` chosen so that ``|Y^{l+1}(x)|^2 = 2l+3`` on the unit sphere.
Each ``Y^l`` is therefore a homogeneous harmonic polynomial of degree ``l`` and
``Y^l(R x) = wigner_D(l, R) Y^l(x)``.
"""

from __future__ import annotations

import functools
from math import sqrt

import torch

from .wigner import _wigner_3j_float64


@functools.lru_cache(maxsize=None)
def _raising_matrix_float64(l: int) -> torch.Tensor:
    """``A_l`` of shape ``(3*(2l+1), 2l+3)`` with ``Y^{l+1}(x) = (x kron Y^l(x)) @ A_l``, ``l >= 1``."""
    C = _wigner_3j_float64(l + 1, 1, l)  # (2l+3, 3, 2l+1)
    A = C.permute(1, 2, 0).reshape(3 * (2 * l + 1), 2 * l + 3)
    # Fix c_l on the unit vector e_y, where Y^l is known from the lower matrices.
    e_y = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    Y = sqrt(3) * e_y
    for k in range(1, l):
        Y = torch.kron(e_y, Y) @ _raising_matrix_float64(k)
    norm = (torch.kron(e_y, Y) @ A).norm()
    return A * (sqrt(2 * l + 3) / norm)


@functools.lru_cache(maxsize=None)
def _raising_terms(l: int) -> tuple[tuple[tuple[int, int, float], ...], ...]:
    """Sparse form of ``A_l``: for each component ``i`` of ``Y^{l+1}``, the terms ``(k, j, coef)``
    of ``Y^{l+1}_i = sum coef * x_k * Y^l_j`` (``10l + 1`` terms in all)."""
    A = _raising_matrix_float64(l).reshape(3, 2 * l + 1, 2 * l + 3)
    return tuple(
        tuple((k, j, A[k, j, i].item()) for k in range(3) for j in range(2 * l + 1) if abs(A[k, j, i]) > 1e-14)
        for i in range(2 * l + 3)
    )


def spherical_harmonics(lmax: int, vectors: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Real spherical harmonics ``Y^0 .. Y^lmax`` of ``vectors``, concatenated.

    ``vectors``: ``(..., 3)``; returns ``(..., (lmax+1)**2)``, the block of degree ``l`` at
    ``[l**2 : (l+1)**2]``. Equal to
    ``e3nn.o3.spherical_harmonics(list(range(lmax+1)), vectors, normalize, normalization="component")``:
    ``|Y^l|^2 = 2l+1`` on the unit sphere, ``Y^1 = sqrt(3) (x, y, z)``.

    With ``normalize=True`` the vectors are first scaled to unit length
    (``torch.nn.functional.normalize``: a zero vector stays zero, so ``Y^l(0) = 0`` for ``l > 0``,
    with finite gradients); otherwise ``Y^l`` is the homogeneous polynomial of degree ``l``.
    Differentiable; works for any dtype and device.
    """
    if vectors.shape[-1] != 3:
        raise ValueError(f"vectors must have shape (..., 3), got {tuple(vectors.shape)}")
    if lmax < 0:
        raise ValueError(f"lmax must be >= 0, got {lmax}")
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    # Work on contiguous 1-d columns: cheap elementwise kernels forwards and backwards.
    xyz = vectors.movedim(-1, 0).contiguous().unbind(0)
    columns = [torch.ones_like(xyz[0])]
    if lmax >= 1:
        Y = [sqrt(3) * c for c in xyz]
        columns += Y
        for l in range(1, lmax):
            new = []
            for (k, j, coef), *rest in _raising_terms(l):
                acc = (xyz[k] * Y[j]) * coef
                for k, j, coef in rest:
                    acc = torch.addcmul(acc, xyz[k], Y[j], value=coef)
                new.append(acc)
            Y = new
            columns += Y
    return torch.stack(columns, dim=-1)
