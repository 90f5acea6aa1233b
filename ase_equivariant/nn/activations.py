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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x) * self.scale if self.scale != 1.0 else self.f(x)

    def extra_repr(self) -> str:
        return f"{self.name}, scale={self.scale:.6f}"
