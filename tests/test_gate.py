"""The gate nonlinearity against its definition, in the network's block-after-block layout."""
import pytest
import torch

from ase_equivariant.nn.activations import ScaledActivation
from ase_equivariant.nn.gate import Gate
from ase_equivariant.nn.layout import blocks
from ase_equivariant.o3 import Irreps

SILU, TANH = ScaledActivation("silu", 1.7), ScaledActivation("tanh", 1.0)


# scalars of one parity; scalars of both (the odd ones sorted before the even ones and the gates)
@pytest.mark.parametrize("irreps_out", ["3x0e+2x1o+1x2e", "3x0e+2x0o+2x1o+1x1e"])
@pytest.mark.parametrize("atoms", [4, 1, 0])
def test_gate_and_its_gradient_match_the_definition(irreps_out, atoms):
    gate = Gate(irreps_out, {"e": SILU, "o": TANH}, {"e": SILU, "o": TANH})
    torch.manual_seed(0)
    x = torch.randn(atoms * gate.irreps_in.dim, dtype=torch.float64, requires_grad=True)
    # the input's blocks, (atoms, 2l+1, mul) each, pooled by irrep: the sorted input merges the
    # blocks of one irrep (scalars of a parity, then that parity's gates)
    pools = {}
    for (mul, ir), block in zip(gate.irreps_in, blocks(x, gate.irreps_in, atoms)):
        pools.setdefault((ir.l, ir.p), []).append(block)
    pools = {key: torch.cat(parts, dim=2) for key, parts in pools.items()}
    taken = {key: 0 for key in pools}

    def take(l, p, mul):
        start = taken[(l, p)]
        taken[(l, p)] += mul
        return pools[(l, p)][:, :, start:start + mul]

    out = Irreps(irreps_out)
    scalars = [(mul, ir) for mul, ir in out if ir.l == 0]
    gated = [(mul, ir) for mul, ir in out if ir.l > 0]
    gate_parity = 1 if any(ir.p == 1 for _, ir in scalars) else -1
    expected = [({1: SILU, -1: TANH}[ir.p])(take(0, ir.p, mul)) for mul, ir in scalars]
    gates = [({1: SILU, -1: TANH}[gate_parity])(take(0, gate_parity, mul)) for mul, _ in gated]
    expected += [take(ir.l, ir.p, mul) * g for (mul, ir), g in zip(gated, gates)]
    got = gate(x)
    assert got.shape == (atoms * out.dim,)
    expected = torch.cat([e.reshape(-1) for e in expected])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)
    # the hand-written backward pass against autograd through the definition
    direction = torch.randn(got.shape, dtype=torch.float64)
    (grad,) = torch.autograd.grad(got, x, direction)
    (want,) = torch.autograd.grad(expected, x, direction)
    torch.testing.assert_close(grad, want, rtol=0, atol=1e-14)


def test_gate_refuses_features_of_the_wrong_size():
    gate = Gate("3x0e+2x1o", {"e": SILU, "o": TANH}, {"e": SILU, "o": TANH})
    with pytest.raises(ValueError, match=f"N \\* {gate.irreps_in.dim} numbers"):
        gate(torch.randn(2 * gate.irreps_in.dim + 1))
    with pytest.raises(ValueError, match="1-D"):
        gate(torch.randn(2, gate.irreps_in.dim))


def test_second_derivatives_through_the_gate_are_refused():
    """The hand-written first derivative is marked so that differentiating it again raises,
    even when the incoming gradient does not require one (where once_differentiable would let
    a wrong second derivative through)."""
    gate = Gate("2x0e+1x1o", {"e": SILU, "o": TANH}, {"e": SILU, "o": TANH})
    x = torch.randn(3 * gate.irreps_in.dim, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(gate(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()
