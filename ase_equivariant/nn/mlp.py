"""The radial multilayer perceptron that turns an edge's radial embedding into tensor-product weights."""
from typing import List

import torch
from torch import nn

from .activations import ScaledActivation
from .derived import derived


class RadialMLP(nn.Module):
    r"""Bias-free MLP ``sizes[0] → ... → sizes[-1]``, activation on every hidden layer.

    Each layer computes :math:`x W / \sqrt{n_{in}}` (weights of unit variance, as e3nn's
    ``FullyConnectedNet``); the last layer has no activation. The network comes in its two
    parts, the output being ``hidden(x) @ output_matrix(columns)``: the convolution applies
    them block by block of edges (see ``convolution._MessageSums``). The activations' scale
    (:class:`ScaledActivation`) is applied to the weights that follow them.

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

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """``(E, sizes[0])`` → the activations of the last hidden layer ``(E, sizes[-2])``, without
        the activation's scale (it is folded into the next layer's weights: one pass less over
        the activations, forward and backward)."""
        scale = 1.0
        for k, w in enumerate(list(self.weights)[:-1]):  # a slice of a ParameterList would build a new one
            w = derived(self, k, [w], lambda w=w, scale=scale: w * (scale * w.shape[0] ** -0.5))
            x = self.act.f(x @ w)
            scale = self.act.scale
        return x

    def output_matrix(self, columns: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
        """The last layer's output ``columns`` (int64 indices, in that order) as a
        ``(sizes[-2], len(columns))`` matrix to apply to :meth:`hidden`'s activations, normalisation
        and activation scale included, times ``factor``."""
        def compute():
            w = self.weights[-1].index_select(1, columns)
            scale = self.act.scale if len(self.weights) > 1 else 1.0
            return w * (factor * scale * w.shape[0] ** -0.5)
        return derived(self, ("output", factor), [self.weights[-1], columns], compute)
