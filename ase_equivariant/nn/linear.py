"""Equivariant linear map between direct sums of irreps."""
from typing import List, NamedTuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..o3 import Irreps
from .derived import derived, parameter_list
from .layout import num_atoms
from .products import BlockTable, block_products, product


class _Product(NamedTuple):
    """One product of the layer, for output block ``block`` and one of its sources: for ``N``
    atoms, the ``(N * dim, mul_out)`` block at ``N * out_start`` of the output (+)= the
    ``(N * dim, mul)`` block at ``N * in_start`` of the input ``@ W[row : row + mul]`` (``W`` the
    output block's scaled weights). The output block's ``first`` product overwrites it, the
    others add to it; in the backward pass, the source's ``first_read`` product overwrites its
    gradient."""

    block: int
    out_start: int
    in_start: int
    dim: int
    mul: int
    mul_out: int
    row: int
    first: bool
    first_read: bool
    offset: int  # of its weights in the packed matrices (:meth:`EquivariantLinear._packed_weights`)

    def rows_in(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The source block of the features ``x`` of ``n`` atoms as an ``(n * dim, mul)`` matrix."""
        return x[n * self.in_start:n * self.in_start + n * self.dim * self.mul].view(n * self.dim, self.mul)

    def rows_out(self, y: torch.Tensor, n: int) -> torch.Tensor:
        """The output block of ``y`` as an ``(n * dim, mul_out)`` matrix."""
        return y[n * self.out_start:n * self.out_start + n * self.dim * self.mul_out].view(n * self.dim, self.mul_out)


class _BlockProducts(torch.autograd.Function):
    """The map of :class:`EquivariantLinear`: one matrix product per pair of an output block and
    a source block (:attr:`EquivariantLinear._products`), between blocks of the input and of the
    output (views, written in place); the gradients the same products transposed.

    Inputs: the layer, ``x (N * irreps_in.dim,)``, then the scaled weights of every output block
    (:meth:`EquivariantLinear._scaled_weights`). First derivatives only.
    """

    @staticmethod
    def forward(ctx, layer: "EquivariantLinear", x, *weights):
        x = x.contiguous()
        n = num_atoms(x, layer.irreps_in)
        out = x.new_empty(n * layer.irreps_out.dim)
        packed = layer._packed_weights(weights, transposed=False)
        if not block_products(layer._forward_table, n, x, packed, out):
            for p in layer._products:
                _product_into(p.rows_out(out, n), p.rows_in(x, n), layer._matrix(packed, p, False), p.first)
        _zero_blocks(out, layer._sourceless, n)
        ctx.layer, ctx.n = layer, n
        ctx.save_for_backward(x if any(ctx.needs_input_grad[2:]) else None, *weights)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        layer, n = ctx.layer, ctx.n
        x, *weights = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_x = None
        if ctx.needs_input_grad[1]:
            grad_x = grad_out.new_empty(n * layer.irreps_in.dim)
            packed = layer._packed_weights(weights, transposed=True)
            if not block_products(layer._backward_table, n, grad_out, packed, grad_x):
                for p in layer._products:
                    _product_into(p.rows_in(grad_x, n), p.rows_out(grad_out, n), layer._matrix(packed, p, True),
                                  p.first_read)
            _zero_blocks(grad_x, layer._unread, n)
        grad_weights = [torch.zeros_like(w) if need else None for w, need in zip(weights, ctx.needs_input_grad[2:])]
        for p in layer._products:
            if grad_weights[p.block] is not None:
                grad_weights[p.block][p.row:p.row + p.mul].addmm_(p.rows_in(x, n).t(), p.rows_out(grad_out, n))
        return None, grad_x, *grad_weights


def _product_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, overwrite: bool):
    """``out = a @ b`` if ``overwrite``, else ``out += a @ b``."""
    if overwrite:
        product(a, b, out=out)
    else:
        out.addmm_(a, b)


def _zero_blocks(features: torch.Tensor, blocks: List[slice], n: int):
    """Zero the ``blocks`` (slices of an atom's irreps) of the features of ``n`` atoms."""
    for s in blocks:
        features[n * s.start:n * s.stop] = 0


class EquivariantLinear(nn.Module):
    r"""Mixes channels of equal irrep type: output block ``k`` of type ``ir`` is
    :math:`y_{w m} = \frac{1}{\sqrt{n}} \sum_u W^{(k)}_{u w} x_{u m}`, the sum running over the
    channels ``u`` of every input block of the same type (``n`` of them, in input order). No bias.

    Features are in the network's block-after-block layout (:mod:`.layout`): a block of ``N``
    atoms is an ``(N * (2l+1), mul)`` matrix, multiplied by the ``(mul, mul_out)`` weights
    into the matching block of the output (:class:`_BlockProducts`), one matrix product per
    pair of an output block and a source; the map's block-diagonal structure is never written
    out as a dense matrix (on a molecule its dense products took as long or longer, reading
    mostly zeros).

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
        self._sourceless: List[slice] = []  # the output blocks without sources: zero
        read, weights, offset = set(), [], 0
        for k, (mul_out, ir_out) in enumerate(self.irreps_out):
            row = 0
            for b, (mul, ir) in enumerate(self.irreps_in):
                if ir == ir_out and mul > 0:
                    self._products.append(_Product(k, out_slices[k].start, in_slices[b].start, ir.dim, mul,
                                                   mul_out, row, first=row == 0, first_read=b not in read,
                                                   offset=offset))
                    read.add(b)
                    row += mul
                    offset += mul * mul_out
            if row == 0:
                self._sourceless.append(out_slices[k])
            weights.append(nn.Parameter(torch.randn(row, mul_out)))
        self.weights = nn.ParameterList(weights)
        # the input blocks that no output reads: their gradient is zero
        self._unread = [s for b, s in enumerate(in_slices) if b not in read]
        # the products for the compiled path: forward, output block by output block; backward,
        # (x's gradient) input block by input block (a stable sort keeps first_read first)
        self._forward_table = BlockTable([(p.in_start, p.out_start, p.dim, p.mul, p.mul_out, p.offset, not p.first)
                                          for p in self._products])
        self._backward_table = BlockTable([
            (p.out_start, p.in_start, p.dim, p.mul_out, p.mul, p.offset, not p.first_read)
            for p in sorted(self._products, key=lambda p: p.in_start)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N * irreps_in.dim,)`` → ``(N * irreps_out.dim,)``, both block after block (:mod:`.layout`)."""
        return _BlockProducts.apply(self, x, *self._scaled_weights())

    def _scaled_weights(self) -> List[torch.Tensor]:
        """The weights of every output block with their normalisation ``1/sqrt(n)`` (kept while
        frozen, see :func:`~.derived.derived`); blocks without sources as they are, empty."""
        weights = parameter_list(self.weights)
        return derived(self, "scaled", weights, lambda: [w * w.shape[0] ** -0.5 if len(w) else w for w in weights])

    def _packed_weights(self, weights: List[torch.Tensor], transposed: bool) -> torch.Tensor:
        """One flat tensor of every product's rows of the scaled ``weights``
        (:meth:`_scaled_weights`), product after product at :attr:`_Product.offset`, each a
        contiguous ``(mul, mul_out)`` matrix, or ``(mul_out, mul)`` if ``transposed`` (the
        backward pass's); kept while the layer's parameters are frozen (see
        :func:`~.derived.derived`: the compiled products take one flat array, and copying the
        transposes every call cost ~2 ms of a 108-atom call)."""
        def pack():
            matrices = [weights[p.block][p.row:p.row + p.mul] for p in self._products]
            if not matrices:
                return weights[0].new_empty(0) if weights else torch.empty(0)
            return torch.cat([(m.t() if transposed else m).reshape(-1) for m in matrices])
        return derived(self, "transposed" if transposed else "packed", parameter_list(self.weights), pack)

    @staticmethod
    def _matrix(packed: torch.Tensor, p: _Product, transposed: bool) -> torch.Tensor:
        """Product ``p``'s matrix in ``packed`` (:meth:`_packed_weights`)."""
        shape = (p.mul_out, p.mul) if transposed else (p.mul, p.mul_out)
        return packed[p.offset:p.offset + p.mul * p.mul_out].view(shape)

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out}"
