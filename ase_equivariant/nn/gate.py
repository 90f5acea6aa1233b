"""Gate nonlinearity: scalars through an activation, higher-l irreps scaled by activated gate scalars."""
from typing import Dict

import torch
from torch import nn

from ..o3 import Irreps
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
        sorted_blocks, perm, _ = blocks.sort()
        self.irreps_in = sorted_blocks.simplify()
        self.irreps_out = irreps_out

        # where each unsorted block lands in the sorted (input) layout
        starts = [sl.start for sl in sorted_blocks.slices()]
        index = torch.cat(
            [torch.arange(starts[perm[b]], starts[perm[b]] + mul * ir.dim) for b, (mul, ir) in enumerate(blocks)]
        ) if len(blocks) else torch.zeros(0, dtype=torch.long)
        n_scalar = sum(mul for mul, _ in scalars)
        n_gate = sum(mul for mul, _ in gates)
        # each part's columns: a slice where they are a range (as when the gates come right after
        # the scalars), taken as a view, else the name of a buffer of their indices
        self._parts = {}
        for part, columns in (("scalars", index[:n_scalar]), ("gates", index[n_scalar:n_scalar + n_gate]),
                              ("gated", index[n_scalar + n_gate:])):
            first = int(columns[0]) if len(columns) else 0
            if torch.equal(columns, torch.arange(first, first + len(columns))):
                self._parts[part] = slice(first, first + len(columns))
            else:
                self._parts[part] = f"_{part}_columns"
                self.register_buffer(self._parts[part], columns, persistent=False)
        parity_name = {1: "e", -1: "o"}
        self._scalar_acts = [(mul, act_scalars[parity_name[ir.p]]) for mul, ir in scalars]
        self._gate_act = act_gates[parity_name[gate_parity]]
        # features are channel-last ([2l+1, mul] per block): a block's gates multiply each of
        # its 2l+1 rows
        self._gated_shapes = [(mul, ir.dim) for mul, ir in gated]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, irreps_in.dim)`` → ``(N, irreps_out.dim)``, channel-last (blocks ``[2l+1, mul]``)."""
        s = self._columns(x, "scalars")
        if len(self._scalar_acts) == 1:
            s = self._scalar_acts[0][1](s)
        else:
            s = torch.cat([act(part) for (_, act), part in
                           zip(self._scalar_acts, s.split([m for m, _ in self._scalar_acts], dim=1))], dim=1)
        if not self._gated_shapes:
            return s
        gates = self._gate_act(self._columns(x, "gates")).split([mul for mul, _ in self._gated_shapes], dim=1)
        gated = self._columns(x, "gated").split([mul * dim for mul, dim in self._gated_shapes], dim=1)
        n = x.shape[0]
        return torch.cat([s] + [(v.view(n, dim, mul) * g.unsqueeze(1)).view(n, -1)
                                for v, g, (mul, dim) in zip(gated, gates, self._gated_shapes)], dim=1)

    def _columns(self, x: torch.Tensor, part: str) -> torch.Tensor:
        """The columns of ``x`` that hold ``part`` (``"scalars"``, ``"gates"`` or ``"gated"``)."""
        columns = self._parts[part]
        return x[:, columns] if isinstance(columns, slice) else x.index_select(1, getattr(self, columns))

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out}"
