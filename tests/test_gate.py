"""The gate nonlinearity against its definition, on layouts where each part of its input is a
range of columns (taken as views) and where it is not (gathered)."""
import pytest
import torch

from ase_equivariant.nn.activations import ScaledActivation
from ase_equivariant.nn.gate import Gate
from ase_equivariant.o3 import Irreps

SILU, TANH = ScaledActivation("silu", 1.7), ScaledActivation("tanh", 1.0)


@pytest.mark.parametrize("irreps_out, views", [("3x0e+2x1o+1x2e", True), ("3x0e+2x0o+2x1o+1x1e", False)])
def test_gate_matches_its_definition(irreps_out, views):
    gate = Gate(irreps_out, {"e": SILU, "o": TANH}, {"e": SILU, "o": TANH})
    assert all(isinstance(c, slice) for c in gate._parts.values()) == views
    torch.manual_seed(0)
    x = torch.randn(4, gate.irreps_in.dim, dtype=torch.float64)
    # the input, block by block of the unsorted layout: scalars, gates, gated (channel-last)
    blocks, start = {}, 0
    for mul, ir in gate.irreps_in:
        blocks.setdefault((ir.l, ir.p), []).append(x[:, start:start + mul * ir.dim].view(4, ir.dim, mul))
        start += mul * ir.dim
    out = Irreps(irreps_out)
    scalars = [(mul, ir) for mul, ir in out if ir.l == 0]
    gated = [(mul, ir) for mul, ir in out if ir.l > 0]
    gate_parity = 1 if any(ir.p == 1 for _, ir in scalars) else -1
    # the sorted input merges blocks of one irrep: scalars of a parity, then that parity's gates
    pools = {key: torch.cat(parts, dim=2) for key, parts in blocks.items()}
    taken = {key: 0 for key in pools}

    def take(l, p, mul):
        start = taken[(l, p)]
        taken[(l, p)] += mul
        return pools[(l, p)][:, :, start:start + mul]

    expected = [({1: SILU, -1: TANH}[ir.p])(take(0, ir.p, mul)).reshape(4, -1) for mul, ir in scalars]
    gates = [({1: SILU, -1: TANH}[gate_parity])(take(0, gate_parity, mul)) for mul, _ in gated]
    expected += [(take(ir.l, ir.p, mul) * g).reshape(4, -1) for (mul, ir), g in zip(gated, gates)]
    torch.testing.assert_close(gate(x), torch.cat(expected, dim=1), rtol=0, atol=1e-15)
