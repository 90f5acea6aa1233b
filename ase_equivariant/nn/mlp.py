"""The radial multilayer perceptron that turns an edge's radial embedding into tensor-product weights."""
from typing import List, Optional

import torch
from torch import nn

from .activations import ScaledActivation


class RadialMLP(nn.Module):
    r"""Bias-free MLP ``sizes[0] → ... → sizes[-1]``, activation on every hidden layer.

    Each layer computes :math:`x W / \sqrt{n_{in}}` (weights of unit variance, as e3nn's
    ``FullyConnectedNet``); the last layer has no activation.

    Args:
        sizes: layer widths, e.g. ``[8, 64, 64, 384]``.
        act: the (already rescaled) activation of the hidden layers.
    """

    def __init__(self, sizes: List[int], act: ScaledActivation):
        super().__init__()
        self.sizes = list(sizes)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(n_in, n_out)) for n_in, n_out in zip(sizes[:-1], sizes[1:])
        )
        self.act = act

    def forward(self, x: torch.Tensor, columns: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(E, sizes[0])`` → ``(E, sizes[-1])``, or ``(E, len(columns))`` with only those output
        columns, in that order."""
        return self.hidden(x) @ self.output_matrix(columns)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """``(E, sizes[0])`` → the activations of the last hidden layer ``(E, sizes[-2])``."""
        for w in self.weights[:-1]:
            x = self.act(x @ (w * w.shape[0] ** -0.5))
        return x

    def output_matrix(self, columns: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The last layer as a ``(sizes[-2], sizes[-1])`` matrix (normalisation included), or only
        the output ``columns``: ``forward(x) = hidden(x) @ output_matrix()``."""
        w = self.weights[-1]
        if columns is not None:
            w = w.index_select(1, columns)
        return w * w.shape[0] ** -0.5
