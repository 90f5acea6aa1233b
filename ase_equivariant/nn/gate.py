"""Gate nonlinearity: scalars through an activation, higher-l irreps scaled by activated gate scalars."""
from typing import Dict

import torch
from torch import nn

from ..o3 import Irreps
from . import layout
from .activations import ScaledActivation


class Gate(nn.Module):
    r"""Equivariant gate (Weiler et al. 2018) producing ``irreps_out``.

    For ``irreps_out`` made of scalar blocks ``S`` and non-scalar blocks ``V``, the input holds
    ``S``, one gate scalar per channel of ``V``, and ``V``, concatenated and then ordered by irrep
    (a stable sort by ``(l, p)``, as e3nn's ``Gate`` lays out its input; :attr:`irreps_in`).
    Output: :math:`\phi_p(s) \oplus \phi_g(g)\, v` in the order of ``irreps_out`` (scalars first).

    Args:
        irreps_out: the features after the gate; scalar blocks must come before the others.
        act_scalars: activation of the scalars, by their parity ``{"e": act, "o": act}``.
        act_gates: activation of the gates, by parity; gates are even if ``irreps_out`` has an
            even scalar, otherwise odd.
    """

    def __init__(
        self,
        irreps_out,
        act_scalars: Dict[str, ScaledActivation],
        act_gates: Dict[str, ScaledActivation],
    ):
        super().__init__()
        irreps_out = Irreps(irreps_out)
        scalars = [(mul, ir) for mul, ir in irreps_out if ir.l == 0]
        gated = [(mul, ir) for mul, ir in irreps_out if ir.l > 0]
        if list(irreps_out) != scalars + gated:
            raise ValueError(f"gate output {irreps_out} must list its scalars first")
        gate_parity = 1 if any(ir.p == 1 for _, ir in scalars) else -1
        gates = [(mul, (0, gate_parity)) for mul, _ in gated]
        blocks = Irreps(scalars + gates + gated)
        sorted_blocks, _, inverse = blocks.sort()
        self.irreps_in = sorted_blocks.simplify()
        self.irreps_out = irreps_out

        # where each unsorted block lands in the input: a channel range of a block of irreps_in
        # (simplify() merges neighbouring blocks of one irrep, as this walk does)
        place, k, channel, previous = [None] * len(blocks), -1, 0, None
        for position, (mul, ir) in enumerate(sorted_blocks):
            if ir != previous and mul > 0:
                k, channel, previous = k + 1, 0, ir
            place[inverse[position]] = (k, channel, mul)
            channel += mul
        n_scalar, n_gated = len(scalars), len(gated)
        self._scalar_places = place[:n_scalar]
        self._gated_places = place[n_scalar + n_gated:]
        # the gates, of one irrep and consecutive before the (stable) sort, lie side by side in
        # one block: one activation for all of them
        gate_places = place[n_scalar:n_scalar + n_gated]
        self._gate_muls = [mul for mul, _ in gates]
        if gate_places:
            k, channel, _ = gate_places[0]
            assert all(p[:2] == (k, channel + sum(self._gate_muls[:j])) for j, p in enumerate(gate_places))
            self._gates = (k, channel, sum(self._gate_muls))
        parity_name = {1: "e", -1: "o"}
        self._scalar_acts = [act_scalars[parity_name[ir.p]] for _, ir in scalars]
        self._gate_act = act_gates[parity_name[gate_parity]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N * irreps_in.dim,)`` → ``(N * irreps_out.dim,)``, block after block (:mod:`.layout`)."""
        return _Gating.apply(self, x)

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out}"


class _Gating(torch.autograd.Function):
    """The map of :class:`Gate` and its first derivative, written block by block into one output
    (as plain autograd, the same numbers, without its dozen operations and graph nodes per gate:
    on a small molecule they cost more than the arithmetic).

    Inputs: the gate and ``x`` ``(N * irreps_in.dim,)``. Saves ``x`` and the activated gates."""

    @staticmethod
    def forward(ctx, gate: Gate, x):
        x = x.contiguous()
        n = layout.num_atoms(x, gate.irreps_in)
        parts = layout.blocks(x, gate.irreps_in, n)
        out = x.new_empty(n * gate.irreps_out.dim)
        outs = layout.blocks(out, gate.irreps_out, n)
        for act, where, o in zip(gate._scalar_acts, gate._scalar_places, outs):
            if where[2]:
                act.scaled_into(_part(parts, where), o)
        gates = None
        if gate._gated_places:
            gates = gate._gate_act.scaled_into(_part(parts, gate._gates), x.new_empty(n, 1, gate._gates[2]))
            for where, o, g in zip(gate._gated_places, outs[len(gate._scalar_places):],
                                   gates.split(gate._gate_muls, dim=2)):
                if where[2]:
                    torch.mul(_part(parts, where), g, out=o)
        ctx.gate = gate
        ctx.save_for_backward(x, gates)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, gates = ctx.saved_tensors
        with torch.no_grad():
            grad_x = _gate_backward(ctx.gate, x, gates, grad_out)
        if torch.is_grad_enabled():  # create_graph=True: differentiating grad_x again must fail
            grad_x = _FirstOrderOnly.apply(grad_x, x)
        return None, grad_x


class _FirstOrderOnly(torch.autograd.Function):
    """``t`` itself, tied to ``x`` (which requires a gradient), with a backward pass that raises:
    marks a hand-written first derivative that a second differentiation would get wrong
    (``once_differentiable`` marks only results whose incoming gradients require one)."""

    @staticmethod
    def forward(ctx, t, x):
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("the gate's backward pass is first-order only: cannot differentiate twice (forces "
                           "and stress are first derivatives; Hessians and training on forces are not supported)")


def _gate_backward(gate: Gate, x, gates, grad_out):
    """The gradient with respect to ``x`` of :class:`_Gating`, given that of its output."""
    n = layout.num_atoms(x, gate.irreps_in)
    parts = layout.blocks(x, gate.irreps_in, n)
    grad_x = x.new_empty(x.numel())  # every channel of the input is a scalar, a gate or gated
    grad_parts = layout.blocks(grad_x, gate.irreps_in, n)
    grads = layout.blocks(grad_out.contiguous(), gate.irreps_out, n)
    for act, where, g in zip(gate._scalar_acts, gate._scalar_places, grads):
        if where[2]:
            act.scaled_derivative_into(g, _part(parts, where), _part(grad_parts, where))
    if gate._gated_places:
        grad_gates = torch.empty_like(gates)
        for where, g, activated, grad_gate in zip(gate._gated_places, grads[len(gate._scalar_places):],
                                                  gates.split(gate._gate_muls, dim=2),
                                                  grad_gates.split(gate._gate_muls, dim=2)):
            if where[2]:
                torch.sum(g * _part(parts, where), dim=1, keepdim=True, out=grad_gate)
                torch.mul(g, activated, out=_part(grad_parts, where))
        gate._gate_act.scaled_derivative_into(grad_gates, _part(parts, gate._gates), _part(grad_parts, gate._gates))
    return grad_x


def _part(parts, where) -> torch.Tensor:
    """The ``(N, 2l+1, mul)`` view of ``where`` (a block, its first channel, its channels)."""
    k, channel, mul = where
    return parts[k][:, :, channel:channel + mul]

