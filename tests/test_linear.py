"""The equivariant linear layer against its definition."""
import pytest
import torch

from ase_equivariant.nn.linear import EquivariantLinear
from ase_equivariant.o3 import Irreps

# two input blocks of 1o feed one output block; 0o has no source (zero output); 2e is dropped
IRREPS_IN, IRREPS_OUT = "3x0e+2x1o+2x2e+1x1o", "2x1o+4x0e+1x0o"


def by_definition(layer: EquivariantLinear, x: torch.Tensor) -> torch.Tensor:
    """y[w, m] = sum over the input blocks of the output's irrep, in order, of W[u, w] x[u, m] / sqrt(n)."""
    n = x.shape[0]
    blocks, start = [], 0
    for mul, ir in layer.irreps_in:  # channel-last: [2l+1, mul] per block
        blocks.append((ir, x[:, start:start + mul * ir.dim].view(n, ir.dim, mul)))
        start += mul * ir.dim
    out = []
    for (mul_out, ir_out), w in zip(layer.irreps_out, layer.weights):
        sources = torch.cat([b for ir, b in blocks if ir == ir_out], dim=2) if w.shape[0] else None
        y = torch.zeros(n, ir_out.dim, mul_out, dtype=x.dtype) if sources is None else \
            torch.einsum("nmu,uw->nmw", sources, w) / w.shape[0] ** 0.5
        out.append(y.reshape(n, ir_out.dim * mul_out))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("atoms", [5, 1, 0])
@pytest.mark.parametrize("frozen", [True, False])
def test_linear_matches_its_definition(frozen, atoms):
    torch.manual_seed(0)
    layer = EquivariantLinear(IRREPS_IN, IRREPS_OUT).double().requires_grad_(not frozen)
    x = torch.randn(atoms, Irreps(IRREPS_IN).dim, dtype=torch.float64, requires_grad=True)
    for _ in range(2):  # the second call reuses what frozen weights let it keep
        y = layer(x)
        torch.testing.assert_close(y, by_definition(layer, x), rtol=1e-12, atol=1e-12)
    # gradients of the input, and of the weights where they require them, as by the definition
    g = torch.randn_like(y)
    wanted = [x] + ([] if frozen else [w for w in layer.weights if w.numel()])
    ours = torch.autograd.grad(y, wanted, g)
    expected = torch.autograd.grad(by_definition(layer, x), wanted, g)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_linear_reads_its_sources_only_and_takes_strided_input():
    """A non-contiguous input (columns of a wider array) with NaN in the block that no output
    uses (2e) and in the columns around it: the output is the definition's, finite; the same
    input stored column-major gives the same output."""
    torch.manual_seed(1)
    layer = EquivariantLinear(IRREPS_IN, IRREPS_OUT).double().requires_grad_(False)
    dim = Irreps(IRREPS_IN).dim
    wide = torch.full((4, dim + 3), float("nan"), dtype=torch.float64)
    x = wide[:, 1:1 + dim]
    x.copy_(torch.randn(4, dim, dtype=torch.float64))
    dropped = Irreps(IRREPS_IN).slices()[2]  # 2x2e
    x[:, dropped] = float("nan")
    y = layer(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, by_definition(layer, x), rtol=1e-12, atol=1e-12)
    column_major = x.t().contiguous().t()  # unit stride between rows, not columns
    torch.testing.assert_close(layer(column_major), y, rtol=1e-12, atol=1e-12)
