"""The radial multilayer perceptron that turns an edge's radial embedding into tensor-product weights."""
from typing import List

import torch
from torch import nn

from .activations import ScaledActivation
from .derived import derived, parameter_list
from .products import product


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
        #: each layer's factor: its normalisation ``1/sqrt(n_in)`` times the scale of the
        #: activation before it (none before the first layer)
        self.factors = [(act.scale if k else 1.0) * n_in ** -0.5 for k, n_in in enumerate(sizes[:-1])]

    def hidden_weights(self) -> List[torch.Tensor]:
        """The hidden layers' matrices times their factors (kept while frozen, see
        :func:`~.derived.derived`)."""
        weights = parameter_list(self.weights)[:-1]
        return derived(self, "hidden", weights, lambda: [w * c for w, c in zip(weights, self.factors)])

    def hidden(self, x: torch.Tensor, pre: List[torch.Tensor], work) -> torch.Tensor:
        """``(E, sizes[0])`` → the activations of the last hidden layer ``(E, sizes[-2])``, without
        the activation's scale (it is folded into the next layer's weights: one pass less over
        the activations, forward and backward). No memory is allocated: each layer's
        pre-activations are written into ``pre`` (one ``(E, sizes[k + 1])`` array per hidden
        layer, for :meth:`hidden_backward`) and its activations into ``work``'s scratch space
        (``work(name, *shape)``; valid until the next request of ``"radial.*"``). Differentiated
        by :meth:`hidden_backward`, not by autograd."""
        for k, w in enumerate(self.hidden_weights()):
            a = product(x, w, out=pre[k])
            x = self.act.f_into(a, work(f"radial.{k % 2}", *a.shape))
        return x

    def hidden_backward(self, grad: torch.Tensor, x: torch.Tensor, pre: List[torch.Tensor], need_weights: List[bool],
                        work):
        """The gradients through :meth:`hidden`, given ``grad`` ``(E, sizes[-2])`` with respect to its
        output, its input ``x`` and the pre-activations ``pre`` that it wrote: with respect to
        ``x`` (a new ``(E, sizes[0])`` tensor), and to each hidden layer's weight parameter where
        ``need_weights[k]`` (else ``None``). Intermediates live in ``work``'s scratch space."""
        weights, factors = self.hidden_weights(), self.factors
        grad_weights = [None] * len(weights)
        if not weights:
            return grad.clone(), grad_weights
        transposed = derived(self, "hidden_transposed", weights, lambda: [w.t().contiguous() for w in weights])
        for k in reversed(range(len(weights))):
            grad_pre = self.act.derivative_into(grad, pre[k], work("radial.grad_pre", *pre[k].shape))
            if need_weights[k]:
                inputs = x if k == 0 else self.act.f(pre[k - 1])
                grad_weights[k] = (inputs.t() @ grad_pre) * factors[k]
            out = None if k == 0 else work("radial.grad", grad_pre.shape[0], weights[k].shape[0])
            grad = product(grad_pre, transposed[k], out=out)
        return grad, grad_weights

    def function(self, columns: torch.Tensor, factor: float = 1.0):
        """The MLP with the output :meth:`output_matrix` ``(columns, factor)`` in float64, carrying
        a derivative along (forward mode): ``(x, dx)`` ``(P, sizes[0])`` each → ``(y, dy)`` ``(P,
        len(columns))``, ``dy`` the derivative of ``y`` along ``dx`` (for tables of the MLP as a
        function of the distance, :mod:`.radial_table`)."""
        weights = [w.detach().double() for w in parameter_list(self.weights)]
        hidden = [w * c for w, c in zip(weights[:-1], self.factors)]
        matrix = weights[-1].index_select(1, columns) * (factor * self.factors[-1])

        def mlp(x: torch.Tensor, dx: torch.Tensor):
            for w in hidden:
                a = x @ w
                x, dx = self.act.f(a), self.act.derivative_into(dx @ w, a, torch.empty_like(a))
            return x @ matrix, dx @ matrix
        return mlp

    def output_matrix(self, columns: torch.Tensor, factor: float = 1.0, transposed: bool = False) -> torch.Tensor:
        """The last layer's output ``columns`` (int64 indices, in that order) as a
        ``(sizes[-2], len(columns))`` matrix to apply to :meth:`hidden`'s activations, normalisation
        and activation scale included, times ``factor``; with ``transposed``, its transpose as a
        contiguous ``(len(columns), sizes[-2])`` matrix (for the backward pass)."""
        last = parameter_list(self.weights)[-1]

        def compute():
            matrix = last.index_select(1, columns) * (factor * self.factors[-1])
            return matrix.t().contiguous() if transposed else matrix
        return derived(self, ("output", factor, transposed), [last, columns], compute)
