"""One NequIP interaction block: linear self-connection, convolution, linear mixing, gate."""
import torch
from torch import nn

from .convolution import TensorProductConv
from .gate import Gate
from .linear import EquivariantLinear


class InteractionBlock(nn.Module):
    r"""``x ← gate( linear_2(conv(linear_1(x))) + self_connection(x) )``.

    Args:
        conv: the convolution; its input irreps are the block's input irreps.
        gate: the gate; its output irreps are the block's output irreps.
    """

    def __init__(self, conv: TensorProductConv, gate: Gate):
        super().__init__()
        self.irreps_in = conv.irreps_in
        self.irreps_out = gate.irreps_out
        self.self_connection = EquivariantLinear(conv.irreps_in, gate.irreps_in)
        self.linear_1 = EquivariantLinear(conv.irreps_in, conv.irreps_in)
        self.conv = conv
        self.linear_2 = EquivariantLinear(conv.irreps_out, gate.irreps_in)
        self.gate = gate

    def forward(self, x, edges) -> torch.Tensor:
        """Node features ``(N * irreps_in.dim,)`` → ``(N * irreps_out.dim,)`` (block after block,
        :mod:`.layout`); ``edges`` as in :meth:`TensorProductConv.forward`."""
        skip = self.self_connection(x)
        x = self.conv(self.linear_1(x), edges)
        return self.gate(self.linear_2(x) + skip)
