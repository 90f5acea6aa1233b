"""Equivariant linear map between direct sums of irreps."""
import torch
from torch import nn

from ..o3 import Irreps
from .derived import derived


#: up to this many multiply-adds of a dense product (atoms x input width x output width), a call
#: multiplies by the layer's dense matrix (:meth:`EquivariantLinear.dense_matrix`; for SevenNet-0's
#: 480-wide features, up to 36 atoms): one operation forward and one backward, where the block
#: products cost ~0.5 ms per layer in small operations (on 9 atoms 25x the dense product)
DENSE_MULTIPLY_ADDS = 2**23


class EquivariantLinear(nn.Module):
    r"""Mixes channels of equal irrep type: output block ``k`` of type ``ir`` is
    :math:`y_{w m} = \frac{1}{\sqrt{n}} \sum_u W^{(k)}_{u w} x_{u m}`, the sum running over the
    channels ``u`` of every input block of the same type (``n`` of them, in input order). No bias.

    Features use the flat channel-last layout ``(N, irreps.dim)``, each block stored
    ``[2l+1, mul]`` (as everywhere inside the network; see :mod:`.potential`). A source block is a
    strided ``(N, mul)`` matrix per component ``m``; its product with the ``(mul, mul_out)``
    weights runs as one batched product over the ``2l+1`` components (``N``-row matrices; batching
    over atoms instead would make ``N`` products of one to seven rows each), for scalars one
    plain product. Few atoms (see :data:`DENSE_MULTIPLY_ADDS`) are multiplied by the dense
    matrix of the map instead: more arithmetic, far fewer operations.

    Args:
        irreps_in, irreps_out: the input and output irreps.

    Weights: ``weights[k]`` of shape ``(n_k, mul_out_k)`` for output block ``k`` (``(0, mul)`` when no
    input block has its type; that block is then zero).
    """

    def __init__(self, irreps_in, irreps_out):
        super().__init__()
        self.irreps_in = Irreps(irreps_in)
        self.irreps_out = Irreps(irreps_out)
        self._in_dims = [mul * ir.dim for mul, ir in self.irreps_in]
        self._sources = []  # per output block: [(input block index, mul, 2l+1), ...]
        weights = []
        for mul_out, ir_out in self.irreps_out:
            sources = [
                (b, mul, ir.dim)
                for b, (mul, ir) in enumerate(self.irreps_in)
                if ir == ir_out and mul > 0
            ]
            self._sources.append(sources)
            weights.append(nn.Parameter(torch.randn(sum(s[1] for s in sources), mul_out)))
        self.weights = nn.ParameterList(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, irreps_in.dim)`` → ``(N, irreps_out.dim)``, channel-last."""
        n = x.shape[0]
        if n * self.irreps_in.dim * self.irreps_out.dim <= DENSE_MULTIPLY_ADDS:
            return x @ derived(self, "dense", list(self.weights), self.dense_matrix)
        x_blocks = x.split(self._in_dims, dim=1)  # one split, not many slices: cheaper backward
        out = []
        for k, ((mul_out, ir_out), sources) in enumerate(zip(self.irreps_out, self._sources)):
            if not sources:
                out.append(x.new_zeros(n, mul_out * ir_out.dim))
                continue
            w = derived(self, k, [self.weights[k]], lambda k=k: self._scaled(k))
            y, row = None, 0
            for b, mul, dim in sources:  # ([2l+1], N, mul) @ (mul, mul_out) -> ([2l+1], N, mul_out)
                source = x_blocks[b] if dim == 1 else x_blocks[b].view(n, dim, mul).transpose(0, 1)
                part = torch.matmul(source, w[row:row + mul])
                y = part if y is None else y + part
                row += mul
            out.append(y if ir_out.dim == 1 else y.transpose(0, 1).reshape(n, -1))
        return torch.cat(out, dim=1) if len(out) > 1 else out[0]

    def _scaled(self, k: int) -> torch.Tensor:
        """The weights of output block ``k`` with their normalisation ``1/sqrt(n)``."""
        w = self.weights[k]
        return w * w.shape[0] ** -0.5

    def dense_matrix(self) -> torch.Tensor:
        """The map as one ``(irreps_in.dim, irreps_out.dim)`` matrix (``y = x @ matrix``): for each
        output block and each of its sources, ``kron(I_{2l+1}, W)`` (channel-last layouts), zero
        elsewhere."""
        w0 = self.weights[0] if len(self.weights) else torch.zeros(0)
        matrix = w0.new_zeros(self.irreps_in.dim, self.irreps_out.dim)
        in_slices, out_slices = self.irreps_in.slices(), self.irreps_out.slices()
        for k, sources in enumerate(self._sources):
            if not sources:
                continue
            w, row = self._scaled(k), 0
            for b, mul, dim in sources:
                eye = torch.eye(dim, dtype=w.dtype, device=w.device)
                matrix[in_slices[b], out_slices[k]] = torch.kron(eye, w[row:row + mul])
                row += mul
        return matrix

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out}"
