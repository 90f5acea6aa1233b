"""Channel-wise ('uvu') tensor-product convolution over the edges of an atomic graph."""
from typing import List

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..o3 import Irreps, wigner_3j
from .activations import ScaledActivation
from .mlp import RadialMLP


#: default number of edges in a checkpointed segment (about 4.5 GB of float32 intermediates for SevenNet-0)
DEFAULT_EDGE_CHUNK = 2**16
#: default number of edges in a block of work (tens of MB of intermediates, reused by the allocator)
DEFAULT_EDGE_BLOCK = 2048


def receiver_blocks(receivers: torch.Tensor, n: int, size: int):
    """Split edges sorted by receiver into blocks of about ``size`` edges holding whole receivers.

    Args:
        receivers: ``(E,)`` receiver indices in ``0 .. n-1``, sorted.
        n: the number of receiving atoms.
        size: the target number of edges per block.

    Returns:
        a list of ``(r0, r1, b0, b1)``: block edges ``b0:b1`` are exactly those received by atoms
        ``r0 .. r1-1``. Blocks cover ``0 .. n`` (a block may have no edges).
    """
    e = receivers.shape[0]
    if e <= size:
        return [(0, n, 0, e)]
    rows = sorted(set([0, n] + receivers[size::size].tolist()))
    bounds = torch.searchsorted(receivers, torch.tensor(rows, device=receivers.device)).tolist()
    return list(zip(rows[:-1], rows[1:], bounds[:-1], bounds[1:]))


def _gather_padded(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``values[table]`` with index ``len(values)`` meaning a row of zeros (an empty slot)."""
    return torch.cat([values, values.new_zeros(1, *values.shape[1:])]).index_select(0, table)


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


class TensorProductConv(nn.Module):
    r"""Message passing with channel-wise tensor products and radial weights.

    For an edge ``i ← j`` with displacement :math:`\mathbf{D}_{ij} = \mathbf{r}_j - \mathbf{r}_i`
    (+ cell shift), each path ``(l1, l2 → l3)`` sends to atom ``i``

    .. math:: m^{(l_3)}_{ij,u} = \sqrt{2l_3+1}\; R_{ij,u} \sum_{m_1 m_2} C^{l_1 l_2 l_3}_{m_1 m_2 m_3}
              x^{(l_1)}_{j,u m_1}\, Y^{(l_2)}_{m_2}(\hat{\mathbf{D}}_{ij})

    with :math:`C` the Wigner 3j symbols and :math:`R_{ij,u}` from :class:`RadialMLP` applied to the
    edge's radial embedding. Messages are summed on ``i`` and divided by ``denominator`` (the
    average number of neighbours used in training).

    Computation, per block of receivers with their edges in a dense ``(receiver, slot)`` table:
    for one input block and one ``l3``, the per-edge couplings ``M_ij = Σ_m2 Y_ij,m2 B[m2]`` (one
    ``(2l3+1, 2l1+1)`` matrix per path) and the weighted inputs ``z_ij,u = R_ij,u x_j,u`` give the
    sum over a receiver's edges as one matrix product over ``(slot, m1)``, batched over receivers
    and paths. Features are channel-last inside (``[2l+1, mul]`` blocks), so the elementwise work
    runs over contiguous channels; the result is put in the path order of :attr:`irreps_out` on
    ``N`` rows at the end.

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
        #: edges per checkpointed segment under autograd (see :meth:`forward`)
        self.edge_chunk = DEFAULT_EDGE_CHUNK
        #: edges per block of work (see :meth:`forward`)
        self.edge_block = DEFAULT_EDGE_BLOCK

        sh_offsets = [sl.start for sl in self.irreps_sh.slices()]
        weight_offsets = [sum(muls[:k]) for k in range(len(muls))]
        # Work is channel-last (the channel index u innermost, so elementwise work vectorises) and
        # grouped by input block; within a block, paths are grouped by l3 so that their radial
        # weights broadcast over the 2l3+1 components.
        self._inputs = []  # per input block: (block index, mul, 2l1+1, [(number of paths, 2l3+1) per l3])
        weight_columns, out_columns = [], [None] * len(self.paths)
        grouped_offset = 0
        for i_in, (mul, ir_in) in enumerate(self.irreps_in):
            ks_by_l3 = [
                [k for k, path in enumerate(self.paths) if path[0] == i_in and path[2][0] == l3]
                for l3 in sorted({path[2][0] for path in self.paths if path[0] == i_in})
            ]
            if not ks_by_l3 or mul == 0:
                continue
            rows = []  # coupling rows: (sh component, path, m3) blocks, l3 by l3
            for ks in ks_by_l3:
                l3 = self.paths[ks[0]][2][0]
                d3 = 2 * l3 + 1
                coupling = torch.zeros(self.irreps_sh.dim, len(ks), d3, ir_in.dim, dtype=torch.float64)
                for p, k in enumerate(ks):
                    i_sh = self.paths[k][1]
                    l2 = self.irreps_sh[i_sh].ir.l
                    # (2l2+1, 2l3+1, 2l1+1): m = sqrt(2l3+1) Σ C[m1, m2, m3] x[m1] Y[m2]
                    coupling[sh_offsets[i_sh]:sh_offsets[i_sh] + 2 * l2 + 1, p] = (
                        wigner_3j(ir_in.l, l2, l3, dtype=torch.float64).permute(1, 2, 0) * d3**0.5
                    )
                    # where this path's (channel u, component m) lands in the grouped message layout
                    out_columns[k] = [grouped_offset + (p * d3 + m) * mul + u for u in range(mul) for m in range(d3)]
                rows.append(coupling.reshape(self.irreps_sh.dim, len(ks) * d3 * ir_in.dim))
                weight_columns += [weight_offsets[k] + u for k in ks for u in range(mul)]
                grouped_offset += len(ks) * d3 * mul
            self.register_buffer(f"_coupling_{len(self._inputs)}", torch.cat(rows, dim=1), persistent=False)
            self._inputs.append((i_in, mul, ir_in.dim, [(len(ks), 2 * self.paths[ks[0]][2][0] + 1) for ks in ks_by_l3]))
        # radial-MLP columns in grouped order: (path, channel) row-major within each l3 group
        self.register_buffer("_weight_columns", torch.tensor(weight_columns, dtype=torch.long), persistent=False)
        # grouped message layout -> irreps_out layout
        self.register_buffer(
            "_out_columns", torch.tensor([c for cols in out_columns for c in cols], dtype=torch.long),
            persistent=False,
        )

    def forward(
        self,
        x: torch.Tensor,
        sh: torch.Tensor,
        radial_embedding: torch.Tensor,
        edge_index: torch.Tensor,
    ) -> torch.Tensor:
        """Node features ``(N, irreps_in.dim)``, edge spherical harmonics ``(E, irreps_sh.dim)``, radial
        embedding ``(E, radial_sizes[0])`` and ``edge_index`` ``(2, E)`` (row 0 receives, row 1 sends,
        sorted by receiver) → aggregated messages ``(N, irreps_out.dim)``.

        Edges are processed in blocks of about :attr:`edge_block` edges, each holding whole receivers:
        a block's intermediates are served by the allocator without the page faults of fresh
        E-sized buffers, which cost more than the arithmetic. With more than
        :attr:`edge_chunk` edges under autograd, segments of that many edges are checkpointed: their
        edge-level intermediates are recomputed in the backward pass instead of being kept (memory
        linear in the number of atoms with a small constant, at the cost of a second forward pass).
        """
        n, e = x.shape[0], sh.shape[0]
        x = self._channel_last(x)
        if e <= self.edge_chunk or not torch.is_grad_enabled():
            return self._aggregate(x, sh, radial_embedding, edge_index, 0, n)
        parts = []
        for r0, r1, b0, b1 in receiver_blocks(edge_index[0], n, self.edge_chunk):
            args = (x, sh[b0:b1], radial_embedding[b0:b1], edge_index[:, b0:b1], r0, r1)
            parts.append(checkpoint(self._aggregate, *args, use_reentrant=False))
        return torch.cat(parts)

    def _channel_last(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, irreps_in.dim)`` with blocks ``[mul, 2l+1]`` → the same with blocks ``[2l+1, mul]``."""
        n = x.shape[0]
        blocks = [
            block.reshape(n, mul, ir.dim).transpose(1, 2).reshape(n, -1) if ir.dim > 1 else block
            for block, (mul, ir) in zip(x.split(self._in_dims, dim=1), self.irreps_in)
        ]
        return torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]

    def _aggregate(self, x, sh, radial_embedding, edge_index, r0: int, r1: int) -> torch.Tensor:
        """Messages of the edges ``edge_index[1] → edge_index[0]`` (receivers sorted, within
        ``r0 .. r1-1``) summed on those receivers → ``(r1 - r0, irreps_out.dim)``."""
        parts = []
        for s0, s1, b0, b1 in receiver_blocks(edge_index[0] - r0, r1 - r0, self.edge_block):
            parts.append(self._messages(
                x, sh[b0:b1], radial_embedding[b0:b1], edge_index[1, b0:b1], edge_index[0, b0:b1] - (r0 + s0), s1 - s0,
            ))
        out = torch.cat(parts) if len(parts) > 1 else parts[0]
        return out.index_select(1, self._out_columns) / self.denominator

    def _messages(self, x, sh, radial_embedding, senders, receivers, n: int) -> torch.Tensor:
        """Messages of the edges ``senders → receivers`` summed on ``n`` receiving atoms (indices
        ``0..n-1``, sorted) → ``(n, irreps_out.dim)`` in the grouped layout (unnormalised).

        The edges are laid out as a dense ``(n, K)`` table, ``K`` the most edges of one receiver;
        empty slots get zero spherical harmonics, hence zero couplings, and contribute nothing
        whatever their weights. The sum over a receiver's edges is then a batched matrix product
        over ``K · (2l1+1)``, and no per-edge message is ever formed.
        """
        e = sh.shape[0]
        if e == 0:
            return x.new_zeros(n, self._out_columns.numel())
        counts = torch.bincount(receivers, minlength=n)
        k = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        slot = receivers * k + torch.arange(e, device=sh.device) - starts[receivers]
        table = torch.full((n * k,), e, dtype=torch.long, device=sh.device)
        table[slot] = torch.arange(e, device=sh.device)
        sh = _gather_padded(sh, table)
        weights = self.radial(_gather_padded(radial_embedding, table), self._weight_columns)
        weights = weights.split([mul * npath for _, mul, _, groups in self._inputs for npath, _ in groups], dim=1)
        senders = _gather_padded(senders, table)
        # split once rather than slicing per block: a slice's backward allocates a full-size zero tensor
        x_src = x.index_select(0, senders).split(self._in_dims, dim=1)
        out, g = [], 0
        for b, (i_in, mul, d1, groups) in enumerate(self._inputs):
            edge_maps = (sh @ getattr(self, f"_coupling_{b}")).split([npath * d3 * d1 for npath, d3 in groups], dim=1)
            x_j = x_src[i_in].reshape(n, 1, k, d1, mul)
            for edge_map, (npath, d3) in zip(edge_maps, groups):
                # paths first, as z is laid out (a product takes the memory layout of its inputs)
                w = weights[g].reshape(n, k, npath, 1, mul).transpose(1, 2)
                w = w.contiguous() if npath > 1 else w.reshape(n, 1, k, 1, mul)
                z = (x_j * w).reshape(n * npath, k * d1, mul)
                m = edge_map.reshape(n, k, npath, d3, d1).permute(0, 2, 3, 1, 4).reshape(n * npath, d3, k * d1)
                out.append(torch.bmm(m, z).reshape(n, npath * d3 * mul))
                g += 1
        return torch.cat(out, dim=1) if len(out) > 1 else out[0]

    def extra_repr(self) -> str:
        return f"{self.irreps_in} x {self.irreps_sh} -> {self.irreps_out}"
