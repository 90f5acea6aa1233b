"""Scalar activation functions, rescaled to unit second moment as the trained models expect.

A network trained with e3nn scales every activation ``f`` by ``c = <f(z)^2>^{-1/2}`` with ``z`` a
standard normal variable, the moment being estimated on 10^6 samples drawn from a generator seeded
with 0 (skipped when ``|c - 1| < 1e-4``). The constant is part of the trained function, so weight
files record it (see :func:`second_moment_scale`) and :class:`ScaledActivation` applies it.
"""
import torch
from torch import nn

ACTIVATIONS = {
    "silu": torch.nn.functional.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "abs": torch.abs,
}


def _tanh_derivative(grad, x, out):
    return torch.ops.aten.tanh_backward.grad_input(grad, torch.tanh(x), grad_input=out)


def _sigmoid_derivative(grad, x, out):
    return torch.ops.aten.sigmoid_backward.grad_input(grad, torch.sigmoid(x), grad_input=out)


#: per activation, ``(grad, x, out) → grad * f'(x)`` written into ``out``
DERIVATIVES = {
    "silu": lambda grad, x, out: torch.ops.aten.silu_backward.grad_input(grad, x, grad_input=out),
    "tanh": _tanh_derivative,
    "sigmoid": _sigmoid_derivative,
    "abs": lambda grad, x, out: torch.mul(grad, torch.sign(x), out=out),
}


def activation(name: str):
    """The function called ``name`` (one of :data:`ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


def second_moment_scale(name: str) -> float:
    """The factor ``<f(z)^2>^{-1/2}`` that e3nn applies to activation ``name`` (1.0 when within 1e-4)."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(1_000_000, generator=generator, dtype=torch.float64)
    scale = activation(name)(z).pow(2).mean().pow(-0.5).item()
    return 1.0 if abs(scale - 1.0) < 1e-4 else scale


class ScaledActivation(nn.Module):
    """``scale * f(x)`` elementwise, for an activation named in :data:`ACTIVATIONS`."""

    def __init__(self, name: str, scale: float):
        super().__init__()
        self.name = name
        self.f = activation(name)
        self.scale = scale

    def f_into(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``f(x)`` (without the scale) written into ``out``, of ``x``'s shape."""
        return getattr(torch.ops.aten, self.name).out(x, out=out)

    def derivative_into(self, grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``grad * f'(x)`` (``f`` without the scale) written into ``out``, of ``x``'s shape."""
        return DERIVATIVES[self.name](grad, x, out)

    def scaled_into(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``scale * f(x)`` written into ``out``, of ``x``'s shape (the numbers of :meth:`forward`)."""
        self.f_into(x, out)
        return out.mul_(self.scale) if self.scale != 1.0 else out

    def scaled_derivative_into(self, grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``grad * scale * f'(x)`` written into ``out``: the scale applied to ``grad`` first, as
        autograd through :meth:`forward` does (``out`` may be ``grad``)."""
        if self.scale != 1.0:
            grad = torch.mul(grad, self.scale, out=out)
        return self.derivative_into(grad, x, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x) * self.scale if self.scale != 1.0 else self.f(x)

    def extra_repr(self) -> str:
        return f"{self.name}, scale={self.scale:.6f}"
