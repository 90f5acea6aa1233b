"""Channel-wise ('uvu') tensor-product convolution over the edges of an atomic graph."""
from typing import List

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..o3 import Irreps, wigner_3j
from .activations import ScaledActivation
from .mlp import RadialMLP


#: default number of edges processed at once (about 2 GB of float32 intermediates for SevenNet-0)
DEFAULT_EDGE_CHUNK = 2**15


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

    Computation: the paths leaving one input block are done together. Per edge, the harmonics
    contract with the couplings of all those paths into one ``(2l1+1, Σ(2l3+1))`` matrix
    ``M_ij = Σ_m2 Y_ij,m2 B[:, m2, :]``; one batched product ``x_j @ M_ij`` gives every path's
    output for all channels. Messages are summed on the atoms in that grouped layout and put in the
    path order of :attr:`irreps_out` afterwards, on ``N`` rows rather than ``E``.

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
        #: edges processed at once; larger graphs are chunked (see :meth:`forward`)
        self.edge_chunk = DEFAULT_EDGE_CHUNK

        sh_offsets = [sl.start for sl in self.irreps_sh.slices()]
        weight_offsets = [sum(muls[:k]) for k in range(len(muls))]
        self._groups = []  # (input block, mul, 2l1+1, number of output columns per channel)
        weight_columns, out_columns = [], [None] * len(self.paths)
        grouped_offset = 0
        for i_in, (mul, ir_in) in enumerate(self.irreps_in):
            ks = [k for k, path in enumerate(self.paths) if path[0] == i_in]
            if not ks or mul == 0:
                continue
            dims = [2 * self.paths[k][2][0] + 1 for k in ks]
            width = sum(dims)
            coupling = torch.zeros(self.irreps_sh.dim, ir_in.dim, width, dtype=torch.float64)
            expand = torch.zeros(len(ks), width, dtype=torch.float64)
            col = 0
            for p, (k, d3) in enumerate(zip(ks, dims)):
                _, i_sh, (l3, _) = self.paths[k]
                l2 = self.irreps_sh[i_sh].ir.l
                coupling[sh_offsets[i_sh]:sh_offsets[i_sh] + 2 * l2 + 1, :, col:col + d3] = (
                    wigner_3j(ir_in.l, l2, l3, dtype=torch.float64).transpose(0, 1) * d3**0.5
                )
                # where this path's (channel u, component m3) lands in the grouped message layout
                out_columns[k] = [grouped_offset + u * width + col + m for u in range(mul) for m in range(d3)]
                expand[p, col:col + d3] = 1.0
                col += d3
            g = len(self._groups)
            self.register_buffer(f"_coupling_{g}", coupling.reshape(self.irreps_sh.dim, -1), persistent=False)
            self.register_buffer(f"_expand_{g}", expand, persistent=False)  # path weight -> its columns
            weight_columns += [weight_offsets[k] + u for u in range(mul) for k in ks]
            self._groups.append((i_in, mul, ir_in.dim, len(ks), width))
            grouped_offset += mul * width
        # radial-MLP columns in grouped order: group by group, (channel, path) row-major
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
        embedding ``(E, radial_sizes[0])`` and ``edge_index`` ``(2, E)`` (row 0 receives, row 1 sends)
        → aggregated messages ``(N, irreps_out.dim)``.

        With more than :attr:`edge_chunk` edges, the edges must be sorted by receiver: they are
        then processed in chunks of whole receivers, and under autograd each chunk's edge-level
        intermediates are recomputed in the backward pass instead of being kept (memory linear
        in the number of atoms with a small constant, at the cost of a second forward pass).
        """
        n, e = x.shape[0], sh.shape[0]
        if e <= self.edge_chunk:
            return self._aggregate(x, sh, radial_embedding, edge_index[1], edge_index[0], n)
        receivers = edge_index[0]
        rows = sorted(set([0, n] + receivers[self.edge_chunk::self.edge_chunk].tolist()))
        bounds = torch.searchsorted(receivers, torch.tensor(rows, device=receivers.device)).tolist()
        parts = []
        for r0, r1, b0, b1 in zip(rows[:-1], rows[1:], bounds[:-1], bounds[1:]):
            args = (x, sh[b0:b1], radial_embedding[b0:b1], edge_index[1, b0:b1], receivers[b0:b1] - r0, r1 - r0)
            if torch.is_grad_enabled():
                parts.append(checkpoint(self._aggregate, *args, use_reentrant=False))
            else:
                parts.append(self._aggregate(*args))
        return torch.cat(parts)

    def _aggregate(self, x, sh, radial_embedding, senders, receivers, n: int) -> torch.Tensor:
        """Messages of the edges ``senders → receivers`` summed on ``n`` receiving atoms (indices
        ``0..n-1``) → ``(n, irreps_out.dim)``."""
        e = sh.shape[0]
        weights = self.radial(radial_embedding, self._weight_columns)
        weights = weights.split([mul * npath for _, mul, _, npath, _ in self._groups], dim=1)
        # split once rather than slicing per block: a slice's backward allocates a full-size zero tensor
        x_src = x[senders].split(self._in_dims, dim=1)
        out = []
        for g, (i_in, mul, d1, npath, width) in enumerate(self._groups):
            edge_map = (sh @ getattr(self, f"_coupling_{g}")).reshape(e, d1, width)  # (E, d1, width)
            m = torch.bmm(x_src[i_in].reshape(e, mul, d1), edge_map)  # (E, mul, width)
            w = weights[g].reshape(e * mul, npath) @ getattr(self, f"_expand_{g}")  # (E·mul, width)
            message = (m.reshape(e * mul, width) * w).reshape(e, mul * width)
            out.append(torch.zeros(n, mul * width, dtype=x.dtype, device=x.device).index_add_(0, receivers, message))
        out = torch.cat(out, dim=1) if len(out) > 1 else out[0]
        return out.index_select(1, self._out_columns) / self.denominator

    def extra_repr(self) -> str:
        return f"{self.irreps_in} x {self.irreps_sh} -> {self.irreps_out}"
