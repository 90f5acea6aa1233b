"""Channel-wise ('uvu') tensor-product convolution over the edges of an atomic graph."""
import functools
from typing import List, NamedTuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from ..o3 import Irreps, wigner_3j
from .activations import ScaledActivation
from .edge_table import EdgeBlock, EdgeSegment
from .mlp import RadialMLP


class EdgeInputs(NamedTuple):
    """The per-call edge data of one :class:`~.edge_table.EdgeSegment`, shared by every convolution.

    ``tables``: per block of the segment, the ``(n, slots, irreps_sh.dim)`` spherical harmonics
    and the ``(n, slots, num_basis)`` radial embedding of the edge in each slot, alternating
    (zero rows for empty slots).
    """

    segment: EdgeSegment
    tables: List[torch.Tensor]


def convolution_paths(irreps_in: Irreps, irreps_sh: Irreps, lmax_out: int, even_only: bool):
    """The coupling paths of the convolution, in the order of their output blocks.

    Every input block ``(mul, l1 p1)`` couples with every spherical-harmonic block ``l2 p2`` to each
    ``l3`` in ``|l1 - l2| .. l1 + l2`` with ``l3 <= lmax_out`` (and even parity if ``even_only``).
    Each path gives its own output block of ``mul`` channels; blocks are ordered by irrep with a
    stable sort, as in the reference implementation.

    Returns:
        paths: list of ``(i_in, i_sh, (l3, p3))``.
        irreps_mid: the output irreps, one block per path.
    """
    paths = []
    for i_in, (mul, ir_in) in enumerate(irreps_in):
        for i_sh, (_, ir_sh) in enumerate(irreps_sh):
            p3 = ir_in.p * ir_sh.p
            for l3 in range(abs(ir_in.l - ir_sh.l), ir_in.l + ir_sh.l + 1):
                if l3 <= lmax_out and not (even_only and p3 == -1):
                    paths.append((i_in, i_sh, (l3, p3)))
    unsorted = Irreps([(irreps_in[i_in].mul, ir) for i_in, _, ir in paths])
    irreps_mid, perm, _ = unsorted.sort()
    order = sorted(range(len(paths)), key=lambda k: perm[k])
    return [paths[k] for k in order], irreps_mid


class _Group(NamedTuple):
    """The paths of one input block with one spherical-harmonic block, in the edge layouts: its
    ``d1 x mul`` input features at column ``x_offset`` (channel-last) and its ``paths x mul``
    radial weights at ``w_offset``."""

    x_offset: int
    d1: int
    mul: int
    paths: int
    w_offset: int


class _ShBlock(NamedTuple):
    """A spherical-harmonic block (components ``offset .. offset+d2-1``) and its groups."""

    offset: int
    d2: int
    groups: List[_Group]


class _EdgeSums(torch.autograd.Function):
    r"""For the receivers of one segment, the sums over each receiver's edges

    .. math:: Q^{(g)}_{i, m_2, (p, m_1, u)} = \sum_{k} Y_{ik, m_2}\, R_{ik, p u}\, x_{ik, m_1 u}

    for every group ``g`` (an input block with a spherical-harmonic block) and path ``p`` of it,
    with ``Y`` the spherical harmonics, ``R`` the radial weights and ``x`` the sender features of
    the edge in slot ``k`` of receiver ``i``. The Clebsch-Gordan coupling to ``l3`` is applied
    afterwards, per atom.

    Inputs: the ``plan``, the segment's ``blocks``, node features ``x`` ``(N, D)`` (channel-last),
    then per block its ``(n, K, irreps_sh.dim)`` spherical harmonics and its ``(n, K, W)`` radial
    weights.
    Outputs: one ``(r1 - r0, d2, paths * d1 * mul)`` tensor per group, in plan order.

    Block by block and group by group, the weighted inputs ``z = R x`` are formed and summed over
    the edges with one batched matrix product while they are in cache. The backward pass is
    written out (first derivatives only): it gathers and forms ``z`` again rather than keeping
    it (cheaper than reading it back from memory) and accumulates the gradient of ``x`` in place.
    """

    @staticmethod
    def forward(ctx, plan: List[_ShBlock], blocks: List[EdgeBlock], x, *tables):
        r0, n = blocks[0].r0, sum(block.n for block in blocks)
        sums = [x.new_zeros(n, b.d2, g.paths * g.d1 * g.mul) for b in plan for g in b.groups]
        for block, sh_block, w_block in zip(blocks, tables[0::2], tables[1::2]):
            if block.slots == 0:
                continue
            rows = slice(block.r0 - r0, block.r0 - r0 + block.n)
            x_block = _gather(block, x)
            out = iter(sums)
            for b in plan:
                y = sh_block[:, :, b.offset:b.offset + b.d2].transpose(1, 2)
                for g in b.groups:
                    torch.bmm(y, _weighted_inputs(g, w_block, x_block), out=next(out)[rows])
        ctx.plan, ctx.blocks = plan, blocks
        ctx.save_for_backward(x, *tables)
        return tuple(sums)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        x, *tables = ctx.saved_tensors
        r0 = ctx.blocks[0].r0
        grad_x = torch.zeros_like(x)
        # sh gradients are accumulated over groups; every weight column is written by its group
        grad_tables = [torch.zeros_like(t) if i % 2 == 0 else torch.empty_like(t) for i, t in enumerate(tables)]
        for block, sh_block, w_block, grad_sh_block, gw_block in zip(
                ctx.blocks, tables[0::2], tables[1::2], grad_tables[0::2], grad_tables[1::2]):
            if block.slots == 0:
                continue
            n, k = block.n, block.slots
            rows = slice(block.r0 - r0, block.r0 - r0 + n)
            x_block = _gather(block, x)
            gx_block = torch.zeros_like(x_block)
            grads_block = iter(grads)
            for b in ctx.plan:
                y = sh_block[:, :, b.offset:b.offset + b.d2]
                grad_y = grad_sh_block[:, :, b.offset:b.offset + b.d2]
                for g in b.groups:
                    # never None: autograd hands unused outputs zero gradients (materialize_grads)
                    grad = next(grads_block)[rows]
                    w_columns = slice(g.w_offset, g.w_offset + g.paths * g.mul)
                    grad_y += torch.bmm(_weighted_inputs(g, w_block, x_block), grad.transpose(1, 2))
                    gz = torch.bmm(y, grad).view(n, k, g.paths, g.d1, g.mul)
                    xg = x_block[:, :, g.x_offset:g.x_offset + g.d1 * g.mul].view(n, k, g.d1, g.mul)
                    wg = w_block[:, :, w_columns].view(n, k, g.paths, g.mul)
                    gw = gw_block[:, :, w_columns].view(n, k, g.paths, g.mul)
                    torch.mul(gz[:, :, :, 0], xg[:, :, None, 0], out=gw)
                    for m1 in range(1, g.d1):
                        gw.addcmul_(gz[:, :, :, m1], xg[:, :, None, m1])
                    gx = gx_block[:, :, g.x_offset:g.x_offset + g.d1 * g.mul].view(n, k, g.d1, g.mul)
                    for p in range(g.paths):
                        gx.addcmul_(gz[:, :, p], wg[:, :, p, None])
            grad_x.index_add_(0, block.senders, gx_block.view(n * k, -1))
        return None, None, grad_x, *grad_tables


def _gather(block: EdgeBlock, x):
    """The sender features ``(n, K, D)`` of ``block``'s slots."""
    return x.index_select(0, block.senders).view(block.n, block.slots, -1)


def _weighted_inputs(g: _Group, weights, x):
    """``z[i, k, (p, m1, u)] = R[i, k, p, u] x[i, k, m1, u]`` of group ``g`` → ``(n, K, paths * d1 * mul)``."""
    n, k = x.shape[:2]
    z = torch.mul(
        x[:, :, g.x_offset:g.x_offset + g.d1 * g.mul].view(n, k, 1, g.d1, g.mul),
        weights[:, :, g.w_offset:g.w_offset + g.paths * g.mul].view(n, k, g.paths, 1, g.mul),
    )
    return z.view(n, k, -1)


class TensorProductConv(nn.Module):
    r"""Message passing with channel-wise tensor products and radial weights.

    For an edge ``i ← j`` with displacement :math:`\mathbf{D}_{ij} = \mathbf{r}_j - \mathbf{r}_i`
    (+ cell shift), each path ``(l1, l2 → l3)`` sends to atom ``i``

    .. math:: m^{(l_3)}_{ij,u} = \sqrt{2l_3+1}\; R_{ij,u} \sum_{m_1 m_2} C^{l_1 l_2 l_3}_{m_1 m_2 m_3}
              x^{(l_1)}_{j,u m_1}\, Y^{(l_2)}_{m_2}(\hat{\mathbf{D}}_{ij})

    with :math:`C` the Wigner 3j symbols and :math:`R_{ij,u}` from :class:`RadialMLP` applied to the
    edge's radial embedding. Messages are summed on ``i`` and divided by ``denominator`` (the
    average number of neighbours used in training).

    Computation: the coupling is linear in ``Y``, so the sum over a receiver's edges is taken
    first, of ``Y_m2 · R x_m1`` (see :class:`_EdgeSums`), and the Clebsch-Gordan coupling is
    applied to the sums, per atom: no per-edge message is ever formed. Features are channel-last
    inside (``[2l+1, mul]`` blocks), so the elementwise work runs over contiguous channels. The
    edge sums have a hand-written backward pass: first derivatives (forces, stress) only;
    differentiating twice (Hessians, training on forces) raises an error.

    Args:
        irreps_in: node features.
        irreps_sh: spherical harmonics of the edge direction (``1x0e+1x1o+...`` or all even).
        lmax_out, even_only: which output irreps to form (see :func:`convolution_paths`).
        radial_sizes: widths of the radial MLP without its output, e.g. ``[8, 64, 64]``.
        act_radial: the MLP's activation.
        denominator: the normalisation of the neighbour sum.
    """

    def __init__(
        self,
        irreps_in,
        irreps_sh,
        lmax_out: int,
        even_only: bool,
        radial_sizes: List[int],
        act_radial: ScaledActivation,
        denominator: float,
    ):
        super().__init__()
        self.irreps_in = Irreps(irreps_in)
        self.irreps_sh = Irreps(irreps_sh)
        self.paths, self.irreps_out = convolution_paths(self.irreps_in, self.irreps_sh, lmax_out, even_only)
        muls = [self.irreps_in[i_in].mul for i_in, _, _ in self.paths]
        self.radial = RadialMLP(list(radial_sizes) + [sum(muls)], act_radial)
        self.register_buffer("denominator", torch.tensor(float(denominator), dtype=torch.float64), persistent=False)
        self._in_dims = [mul * ir.dim for mul, ir in self.irreps_in]

        weight_offsets = [sum(muls[:k]) for k in range(len(muls))]
        x_offsets = [sum(self._in_dims[:b]) for b in range(len(self._in_dims))]
        # Edge layouts, grouped by sh block, then input block, then path: radial weights
        # [path, u], weighted inputs [path, m1, u]. Per atom, the coupled sums of a group are
        # [path, m3, u]; `_out_columns` puts them in irreps_out order ([u, m3] blocks).
        self._plan, couplings, weight_columns = [], [], []
        out_columns = [None] * len(self.paths)
        w_offset = sum_offset = 0
        for i_sh, (_, ir_sh) in enumerate(self.irreps_sh):
            groups = []
            for i_in, (mul, ir_in) in enumerate(self.irreps_in):
                ks = [k for k, path in enumerate(self.paths) if path[:2] == (i_in, i_sh)]
                if not ks or mul == 0:
                    continue
                d1, d2 = ir_in.dim, ir_sh.dim
                d3s = [2 * self.paths[k][2][0] + 1 for k in ks]
                # (sum of d3, paths * d2 * d1), block-diagonal: row (p, m3), column (p, m2, m1)
                coupling = torch.zeros(sum(d3s), len(ks) * d2 * d1, dtype=torch.float64)
                row = 0
                for p, (k, d3) in enumerate(zip(ks, d3s)):
                    l3 = self.paths[k][2][0]
                    cg = wigner_3j(ir_in.l, ir_sh.l, l3, dtype=torch.float64).permute(2, 1, 0) * d3**0.5
                    coupling[row:row + d3, p * d2 * d1:(p + 1) * d2 * d1] = cg.reshape(d3, d2 * d1)
                    out_columns[k] = [sum_offset + (row + m) * mul + u for u in range(mul) for m in range(d3)]
                    row += d3
                couplings.append(coupling)
                weight_columns += [weight_offsets[k] + u for k in ks for u in range(mul)]
                groups.append(_Group(x_offsets[i_in], d1, mul, len(ks), w_offset))
                w_offset += len(ks) * mul
                sum_offset += row * mul
            if groups:
                self._plan.append(_ShBlock(self.irreps_sh.slices()[i_sh].start, ir_sh.dim, groups))
        for g, coupling in enumerate(couplings):
            self.register_buffer(f"_coupling_{g}", coupling, persistent=False)
        # radial-MLP columns in grouped order
        self.register_buffer("_weight_columns", torch.tensor(weight_columns, dtype=torch.long), persistent=False)
        self.register_buffer(
            "_out_columns", torch.tensor([c for cols in out_columns for c in cols], dtype=torch.long),
            persistent=False,
        )

    def forward(self, x: torch.Tensor, edges: List[EdgeInputs]) -> torch.Tensor:
        """Node features ``(N, irreps_in.dim)`` and the edges of the call (one :class:`EdgeInputs`
        per segment, covering receivers ``0 .. N-1`` in order) → aggregated messages
        ``(N, irreps_out.dim)``.

        With more than one segment under autograd, each segment is checkpointed: its edge-level
        intermediates are recomputed in the backward pass instead of being kept (memory linear in
        the number of atoms with a small constant, at the cost of a second forward pass).
        """
        x = self._channel_last(x)
        recompute = len(edges) > 1 and torch.is_grad_enabled()
        parts = []
        for segment in edges:
            run = functools.partial(self._segment_messages, segment.segment)
            args = (x, *segment.tables)
            parts.append(checkpoint(run, *args, use_reentrant=False) if recompute else run(*args))
        return (torch.cat(parts) if len(parts) > 1 else parts[0]) / self.denominator

    def _channel_last(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, irreps_in.dim)`` with blocks ``[mul, 2l+1]`` → the same with blocks ``[2l+1, mul]``."""
        n = x.shape[0]
        blocks = [
            block.reshape(n, mul, ir.dim).transpose(1, 2).reshape(n, -1) if ir.dim > 1 else block
            for block, (mul, ir) in zip(x.split(self._in_dims, dim=1), self.irreps_in)
        ]
        return torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]

    def _segment_messages(self, segment: EdgeSegment, x, *tables):
        """The summed messages ``(r1 - r0, irreps_out.dim)`` (unnormalised) received by the atoms
        of ``segment``; ``tables`` are the spherical harmonics and radial embeddings of its
        blocks, alternating. The edge sums are large (~8.5k numbers per atom for SevenNet-0), so
        they are coupled here, inside a checkpointed segment, and not kept."""
        weights = [self.radial(embedding, self._weight_columns) for embedding in tables[1::2]]
        sums = _EdgeSums.apply(self._plan, segment.blocks, x, *(t for pair in zip(tables[0::2], weights) for t in pair))
        return self._couple(sums)

    def _couple(self, sums: List[torch.Tensor]) -> torch.Tensor:
        """Per atom, the Clebsch-Gordan coupling of the edge sums ``(N, d2, paths * d1 * mul)`` (one
        per group of the plan) to every path's ``l3`` → ``(N, irreps_out.dim)``."""
        n = sums[0].shape[0]
        groups = [(block.d2, group) for block in self._plan for group in block.groups]
        out = []
        for g, ((d2, group), q) in enumerate(zip(groups, sums)):
            q = q.view(n, d2, group.paths, group.d1, group.mul).transpose(1, 2)
            q = q.reshape(n, -1, group.mul)  # (N, [path, m2, m1], u)
            out.append((getattr(self, f"_coupling_{g}") @ q).reshape(n, -1))
        out = torch.cat(out, dim=1) if len(out) > 1 else out[0]
        return out.index_select(1, self._out_columns)

    def extra_repr(self) -> str:
        return f"{self.irreps_in} x {self.irreps_sh} -> {self.irreps_out}"
