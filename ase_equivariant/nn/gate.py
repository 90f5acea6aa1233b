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
        n = layout.num_atoms(x, self.irreps_in)
        parts = layout.blocks(x, self.irreps_in, n)

        def part(where):
            k, channel, mul = where
            return parts[k][:, :, channel:channel + mul] if mul else x.new_zeros(n, 1, 0)

        out = [act(part(where)) for act, where in zip(self._scalar_acts, self._scalar_places)]
        if self._gated_places:
            gates = self._gate_act(part(self._gates)).split(self._gate_muls, dim=2)
            out += [part(where) * g for where, g in zip(self._gated_places, gates)]
        if not out:
            return x.new_zeros(0)
        return torch.cat([t.reshape(-1) for t in out]) if len(out) > 1 else out[0].reshape(-1)

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out}"
