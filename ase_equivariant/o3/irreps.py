"""Bookkeeping of direct sums of irreducible representations of O(3).

The spelling and semantics follow e3nn (``e3nn.o3.Irreps``) so that configurations written
for e3nn-based models read the same here:

* ``Irrep(l, p)``: degree ``l >= 0`` and parity ``p = +1`` (written ``"le"``, even) or ``-1``
  (``"lo"``, odd); ``"ly"`` means the parity of the spherical harmonics, ``(-1)**l``.
* ``Irreps("128x0e+64x1e+32x2e")``: a tuple of ``MulIr(mul, ir)`` blocks.

Feature layout (as e3nn): a feature vector of ``irreps.dim`` components is the concatenation of
the blocks in order; block ``(mul, ir)`` occupies ``irreps.slices()[k]`` and is laid out
multiplicity-major, i.e. it reshapes to ``[..., mul, 2l+1]``. Within an irrep the ``2l+1``
components are in e3nn's real basis (for ``l = 1``: ``x, y, z``).
"""

from __future__ import annotations

import collections
import functools
from typing import Iterator

import torch

from .wigner import wigner_D

_PARITY_LETTER = {1: "e", -1: "o"}


class Irrep(collections.namedtuple("Irrep", ["l", "p"])):
    """An irreducible representation of O(3): degree ``l`` and parity ``p`` (+1 or -1).

    Accepts ``Irrep(1, -1)``, ``Irrep("1o")``, ``Irrep((1, -1))`` or an ``Irrep``.
    ``str(Irrep(1, -1)) == "1o"``.
    """

    __slots__ = ()

    def __new__(cls, l, p=None):
        if p is None:
            if isinstance(l, Irrep):
                return l
            if isinstance(l, str):
                name = l.strip()
                try:
                    l = int(name[:-1])
                    p = {"e": 1, "o": -1, "y": (-1) ** l}[name[-1]]
                except (ValueError, KeyError, IndexError):
                    raise ValueError(f"cannot read {name!r} as an irrep (expected e.g. '1o', '2e')") from None
            else:
                try:
                    l, p = l
                except (TypeError, ValueError):
                    raise ValueError(f"cannot read {l!r} as an irrep; give (l, p) or a string like '1o'") from None
        if isinstance(l, bool) or not isinstance(l, int) or l < 0:
            raise ValueError(f"l must be a non-negative integer, got {l!r}")
        if p not in (1, -1):
            raise ValueError(f"parity must be +1 or -1, got {p!r}")
        return super().__new__(cls, l, p)

    @property
    def dim(self) -> int:
        """Dimension ``2l+1``."""
        return 2 * self.l + 1

    def is_scalar(self) -> bool:
        """True for ``0e``."""
        return self.l == 0 and self.p == 1

    def __mul__(self, other) -> Iterator[Irrep]:
        """Irreps in the tensor product, in e3nn's order: ``l = |l1-l2| .. l1+l2``, parity ``p1*p2``."""
        other = Irrep(other)
        p = self.p * other.p
        for l in range(abs(self.l - other.l), self.l + other.l + 1):
            yield Irrep(l, p)

    def D_from_matrix(self, R: torch.Tensor) -> torch.Tensor:
        """Representation matrix of an orthogonal matrix, as e3nn's ``Irrep.D_from_matrix``.

        ``R``: ``(..., 3, 3)``; returns ``(..., 2l+1, 2l+1)``: ``D^l(det(R) R) * p**k`` with ``k = 1``
        for improper ``R`` (``det R < 0``) and ``k = 0`` otherwise.
        """
        det = torch.linalg.det(R).sign()
        D = wigner_D(self.l, R * det[..., None, None])
        if self.p == -1:
            D = D * det[..., None, None]
        return D

    def __repr__(self) -> str:
        return f"{self.l}{_PARITY_LETTER[self.p]}"

    __str__ = __repr__


class MulIr(collections.namedtuple("MulIr", ["mul", "ir"])):
    """``mul`` copies of the irrep ``ir``; ``str(MulIr(4, Irrep(1, -1))) == "4x1o"``."""

    __slots__ = ()

    def __new__(cls, mul, ir=None):
        if ir is None:
            mul, ir = mul
        if isinstance(mul, bool) or not isinstance(mul, int) or mul < 0:
            raise ValueError(f"multiplicity must be a non-negative integer, got {mul!r}")
        return super().__new__(cls, mul, Irrep(ir))

    @property
    def dim(self) -> int:
        """``mul * (2l+1)``."""
        return self.mul * self.ir.dim

    def __repr__(self) -> str:
        return f"{self.mul}x{self.ir}"

    __str__ = __repr__


def _read_block(item) -> MulIr:
    if isinstance(item, str):
        text = item.strip()
        if "x" in text:
            mul, ir = text.split("x", 1)
            try:
                mul = int(mul)
            except ValueError:
                raise ValueError(f"cannot read {item!r} as a multiplicity and an irrep") from None
            return MulIr(mul, Irrep(ir))
        return MulIr(1, Irrep(text))
    if isinstance(item, Irrep):
        return MulIr(1, item)
    try:
        mul, ir = item
    except (TypeError, ValueError):
        raise ValueError(f"cannot read {item!r} as (mul, irrep)") from None
    return MulIr(mul, ir)


class Irreps(tuple):
    """Direct sum of irreps: an immutable, hashable tuple of ``MulIr(mul, ir)`` blocks.

    Accepts a string ``"128x0e+64x1e+32x2e"`` (a block without ``x`` has multiplicity 1), a
    sequence of ``(mul, (l, p))`` / ``(mul, "1o")`` / ``Irrep`` / ``"1o"`` items, a single ``Irrep``,
    another ``Irreps``, or nothing (empty). Order and repeated blocks are kept as given.
    """

    def __new__(cls, irreps=None):
        if isinstance(irreps, Irreps):
            return super().__new__(cls, irreps)
        if irreps is None:
            blocks = []
        elif isinstance(irreps, Irrep):
            blocks = [MulIr(1, irreps)]
        elif isinstance(irreps, str):
            blocks = [_read_block(part) for part in irreps.split("+")] if irreps.strip() else []
        else:
            blocks = [_read_block(item) for item in irreps]
        return super().__new__(cls, blocks)

    @staticmethod
    def spherical_harmonics(lmax: int, p: int = -1) -> Irreps:
        """Irreps of the spherical harmonics ``0..lmax``: ``1x0e+1x1o+1x2e+...`` (``p**l`` parity)."""
        return Irreps([(1, (l, p**l)) for l in range(lmax + 1)])

    @functools.cached_property
    def dim(self) -> int:
        """Total dimension ``sum(mul * (2l+1))`` (computed once: the network asks for it in every
        layer of every call)."""
        return sum(block.dim for block in self)

    @property
    def num_irreps(self) -> int:
        """Sum of the multiplicities."""
        return sum(block.mul for block in self)

    @property
    def ls(self) -> list[int]:
        """``l`` of every irrep copy, repeated ``mul`` times, in order."""
        return [ir.l for mul, ir in self for _ in range(mul)]

    @property
    def lmax(self) -> int:
        """Largest ``l`` among blocks with non-zero multiplicity."""
        ls = self.ls
        if not ls:
            raise ValueError("lmax of an empty Irreps is undefined")
        return max(ls)

    def slices(self) -> list[slice]:
        """One ``slice`` per block into the flat feature dimension (blocks are contiguous, in order)."""
        return list(self._slices)

    @functools.cached_property
    def _slices(self) -> tuple:
        out, start = [], 0
        for block in self:
            out.append(slice(start, start + block.dim))
            start += block.dim
        return tuple(out)

    def count(self, ir) -> int:
        """Total multiplicity of the irrep ``ir`` (an ``Irrep``, ``"1o"`` or ``(l, p)``)."""
        ir = Irrep(ir)
        return sum(mul for mul, other in self if other == ir)

    def __contains__(self, ir) -> bool:
        """Whether the irrep ``ir`` appears in a block (with any multiplicity, as e3nn)."""
        ir = Irrep(ir)
        return any(other == ir for _, other in self)

    def __getitem__(self, k):
        item = super().__getitem__(k)
        return Irreps(item) if isinstance(k, slice) else item

    def __add__(self, other) -> Irreps:
        """Concatenation of the blocks (no merging)."""
        return Irreps(tuple(self) + tuple(Irreps(other)))

    def __radd__(self, other) -> Irreps:
        return Irreps(other) + self

    def __mul__(self, n: int) -> Irreps:
        """The blocks repeated ``n`` times."""
        if not isinstance(n, int):
            raise TypeError("Irreps can only be multiplied by an int")
        return Irreps(tuple(self) * n)

    __rmul__ = __mul__

    def simplify(self) -> Irreps:
        """Merge consecutive blocks of the same irrep and drop zero multiplicities (no sorting).

        ``Irreps("1e+1e+0e+1e").simplify() == Irreps("2x1e+1x0e+1x1e")``.
        """
        out: list[list] = []
        for mul, ir in self:
            if out and out[-1][1] == ir:
                out[-1][0] += mul
            elif mul > 0:
                out.append([mul, ir])
        return Irreps(out)

    def remove_zero_multiplicities(self) -> Irreps:
        """The blocks with ``mul > 0``, in order."""
        return Irreps([block for block in self if block.mul > 0])

    def sort(self):
        """Stable sort of the blocks by ``(l, p)`` (so ``0o`` before ``0e``), as e3nn.

        Returns a namedtuple ``(irreps, p, inv)``: ``irreps`` sorted; ``p[i]`` the new position of
        old block ``i``; ``inv[j]`` the old position of new block ``j``.
        """
        order = sorted(range(len(self)), key=lambda i: (self[i].ir, i))
        inv = tuple(order)
        p = [0] * len(inv)
        for new, old in enumerate(inv):
            p[old] = new
        return _Sorted(Irreps([self[i] for i in inv]), tuple(p), inv)

    def regroup(self) -> Irreps:
        """``sort()`` then ``simplify()``: one block per distinct irrep, ordered by ``(l, p)``."""
        return self.sort().irreps.simplify()

    def D_from_matrix(self, R: torch.Tensor) -> torch.Tensor:
        """Block-diagonal representation matrix of orthogonal ``R`` (``(..., 3, 3)``).

        Returns ``(..., dim, dim)``: for each block, ``mul`` copies of ``ir.D_from_matrix(R)``
        (multiplicity-major layout), as e3nn's ``Irreps.D_from_matrix``.
        """
        out = R.new_zeros(R.shape[:-2] + (self.dim, self.dim))
        cache: dict[Irrep, torch.Tensor] = {}
        for (mul, ir), s in zip(self, self.slices()):
            if ir not in cache:
                cache[ir] = ir.D_from_matrix(R)
            D = cache[ir]
            eye = torch.eye(mul, dtype=R.dtype, device=R.device)
            block = eye[:, None, :, None] * D[..., None, :, None, :]
            out[..., s, s] = block.reshape(R.shape[:-2] + (mul * ir.dim, mul * ir.dim))
        return out

    def __repr__(self) -> str:
        return "+".join(str(block) for block in self)

    __str__ = __repr__


_Sorted = collections.namedtuple("sort", ["irreps", "p", "inv"])
