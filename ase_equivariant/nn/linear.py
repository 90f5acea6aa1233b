"""Equivariant linear map between direct sums of irreps."""
from typing import List, NamedTuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..o3 import Irreps
from .derived import derived


class _Product(NamedTuple):
    """One product of the layer, for output block ``block`` and one of its sources: per
    component ``m < dim``, ``y[:, out_start + m*mul_out : ...] (+)= x[:, in_start + m*mul : ...]
    @ W[row : row + mul]`` (``mul`` input and ``mul_out`` output channels, ``W`` the block's scaled
    weights); the block's ``first`` product overwrites it, the others add to it."""

    block: int
    out_start: int
    in_start: int
    dim: int
    mul: int
    mul_out: int
    row: int
    first: bool


def _components(t: torch.Tensor, start: int, dim: int, width: int) -> torch.Tensor:
    """Columns ``start .. start + dim*width - 1`` of the rows of ``t`` ``(N, C)`` as the
    ``(dim, N, width)`` batch of their components: strided matrices, no copy."""
    rows, columns = t.stride()
    return t.as_strided((dim, t.shape[0], width), (width * columns, rows, columns),
                        t.storage_offset() + start * columns)


def _rows(w: torch.Tensor, p: _Product) -> torch.Tensor:
    """Rows ``p.row .. p.row + p.mul - 1`` of the weights ``w``, repeated ``p.dim`` times (stride 0)
    as a ``(dim, mul, mul_out)`` batch."""
    rows, columns = w.stride()
    return w.as_strided((p.dim, p.mul, p.mul_out), (0, rows, columns), w.storage_offset() + p.row * rows)


class _BlockProducts(torch.autograd.Function):
    """The map of :class:`EquivariantLinear`: one batched matrix product over the components
    ``m`` of each pair of an output block and a source block (:attr:`EquivariantLinear._products`),
    between column ranges of ``x`` and of the output viewed as strided batches (no copies of
    transposed blocks, no concatenation, the output written in place); the gradients the same
    products transposed.

    Inputs: the layer, ``x (N, irreps_in.dim)``, then the scaled weights of every output block
    (:meth:`EquivariantLinear._scaled_weights`). First derivatives only.
    """

    @staticmethod
    def forward(ctx, layer: "EquivariantLinear", x, *weights):
        out = x.new_empty(x.shape[0], layer.irreps_out.dim)
        for p in layer._products:
            _components(out, p.out_start, p.dim, p.mul_out).baddbmm_(
                _components(x, p.in_start, p.dim, p.mul), _rows(weights[p.block], p), beta=0 if p.first else 1)
        for columns in layer._sourceless:
            out[:, columns] = 0
        ctx.layer = layer
        ctx.save_for_backward(x if any(ctx.needs_input_grad[2:]) else None, *weights)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, *weights = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[1]:
            grad_x = grad_out.new_zeros(grad_out.shape[0], ctx.layer.irreps_in.dim)
            for p in ctx.layer._products:
                _components(grad_x, p.in_start, p.dim, p.mul).baddbmm_(
                    _components(grad_out, p.out_start, p.dim, p.mul_out), _rows(weights[p.block], p).transpose(1, 2))
        grad_weights = [torch.zeros_like(w) if need else None for w, need in zip(weights, ctx.needs_input_grad[2:])]
        for p in ctx.layer._products:
            if grad_weights[p.block] is not None:
                grad_weights[p.block][p.row:p.row + p.mul] += torch.bmm(
                    _components(x, p.in_start, p.dim, p.mul).transpose(1, 2),
                    _components(grad_out, p.out_start, p.dim, p.mul_out)).sum(0)
        return None, grad_x, *grad_weights


class EquivariantLinear(nn.Module):
    r"""Mixes channels of equal irrep type: output block ``k`` of type ``ir`` is
    :math:`y_{w m} = \frac{1}{\sqrt{n}} \sum_u W^{(k)}_{u w} x_{u m}`, the sum running over the
    channels ``u`` of every input block of the same type (``n`` of them, in input order). No bias.

    Features use the flat channel-last layout ``(N, irreps.dim)``, each block stored
    ``[2l+1, mul]`` (as everywhere inside the network; see :mod:`.potential`). A source block is a
    strided ``(N, mul)`` matrix per component ``m``, multiplied by the ``(mul, mul_out)`` weights
    into the matching columns of the output (:class:`_BlockProducts`): the map's block-diagonal
    structure is never written out as a dense matrix (on a molecule its dense products took as
    long or longer, reading mostly zeros).

    Args:
        irreps_in, irreps_out: the input and output irreps.

    Weights: ``weights[k]`` of shape ``(n_k, mul_out_k)`` for output block ``k`` (``(0, mul)`` when no
    input block has its type; that block is then zero).
    """

    def __init__(self, irreps_in, irreps_out):
        super().__init__()
        self.irreps_in = Irreps(irreps_in)
        self.irreps_out = Irreps(irreps_out)
        in_slices, out_slices = self.irreps_in.slices(), self.irreps_out.slices()
        self._products: List[_Product] = []
        self._sourceless: List[slice] = []  # the columns of output blocks without sources: zero
        weights = []
        for k, (mul_out, ir_out) in enumerate(self.irreps_out):
            row = 0
            for b, (mul, ir) in enumerate(self.irreps_in):
                if ir == ir_out and mul > 0:
                    self._products.append(_Product(k, out_slices[k].start, in_slices[b].start, ir.dim, mul,
                                                   mul_out, row, first=row == 0))
                    row += mul
            if row == 0:
                self._sourceless.append(out_slices[k])
            weights.append(nn.Parameter(torch.randn(row, mul_out)))
        self.weights = nn.ParameterList(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, irreps_in.dim)`` → ``(N, irreps_out.dim)``, channel-last."""
        return _BlockProducts.apply(self, x, *self._scaled_weights())

    def _scaled_weights(self) -> List[torch.Tensor]:
        """The weights of every output block with their normalisation ``1/sqrt(n)`` (kept while
        frozen, see :func:`~.derived.derived`); blocks without sources as they are, empty."""
        return [derived(self, k, [w], lambda w=w: w * w.shape[0] ** -0.5) if len(w) else w
                for k, w in enumerate(self.weights)]

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out}"
