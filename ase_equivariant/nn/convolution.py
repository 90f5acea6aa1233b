"""Channel-wise ('uvu') tensor-product convolution over the edges of an atomic graph."""
from typing import List

import torch
from torch import nn

from ..o3 import Irreps, wigner_3j
from .activations import ScaledActivation
from .mlp import RadialMLP


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
        self.radial = RadialMLP(list(radial_sizes) + [sum(self.irreps_in[p[0]].mul for p in self.paths)], act_radial)
        self.register_buffer("denominator", torch.tensor(float(denominator), dtype=torch.float64), persistent=False)
        self._in_dims = [mul * ir.dim for mul, ir in self.irreps_in]
        self._sh_dims = [ir.dim for _, ir in self.irreps_sh]
        self._path_muls = [self.irreps_in[i_in].mul for i_in, _, _ in self.paths]
        for k, (i_in, i_sh, (l3, _)) in enumerate(self.paths):
            l1, l2 = self.irreps_in[i_in].ir.l, self.irreps_sh[i_sh].ir.l
            coupling = wigner_3j(l1, l2, l3, dtype=torch.float64) * (2 * l3 + 1) ** 0.5
            self.register_buffer(f"_coupling_{k}", coupling, persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        sh: torch.Tensor,
        radial_embedding: torch.Tensor,
        edge_index: torch.Tensor,
    ) -> torch.Tensor:
        """Node features ``(N, irreps_in.dim)``, edge spherical harmonics ``(E, irreps_sh.dim)``, radial
        embedding ``(E, radial_sizes[0])`` and ``edge_index`` ``(2, E)`` (row 0 receives, row 1 sends)
        → aggregated messages ``(N, irreps_out.dim)``."""
        n, e = x.shape[0], sh.shape[0]
        weights = self.radial(radial_embedding).split(self._path_muls, dim=1)  # per path (E, mul)
        # split once rather than slicing per path: a slice's backward allocates a full-size zero tensor
        x_src = x[edge_index[1]].split(self._in_dims, dim=1)
        sh = sh.split(self._sh_dims, dim=1)
        messages = []
        for k, (i_in, i_sh, _) in enumerate(self.paths):
            mul, ir_in = self.irreps_in[i_in]
            coupling = getattr(self, f"_coupling_{k}")  # (2l1+1, 2l2+1, 2l3+1)
            edge_map = torch.einsum("ijk,ej->eik", coupling, sh[i_sh])  # (E, 2l1+1, 2l3+1)
            m = torch.bmm(x_src[i_in].reshape(e, mul, ir_in.dim), edge_map) * weights[k].unsqueeze(-1)
            messages.append(m.reshape(e, -1))
        messages = torch.cat(messages, dim=1)
        out = torch.zeros(n, messages.shape[1], dtype=messages.dtype, device=messages.device)
        out.index_add_(0, edge_index[0], messages)
        return out / self.denominator

    def extra_repr(self) -> str:
        return f"{self.irreps_in} x {self.irreps_sh} -> {self.irreps_out}"
