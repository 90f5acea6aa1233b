"""The equivariant linear layer against its definition."""
import pytest
import torch

from ase_equivariant.nn.layout import blocks
from ase_equivariant.nn.linear import EquivariantLinear
from ase_equivariant.o3 import Irreps

# two input blocks of 1o feed one output block; 0o has no source (zero output); 2e is dropped
IRREPS_IN, IRREPS_OUT = "3x0e+2x1o+2x2e+1x1o", "2x1o+4x0e+1x0o"


def by_definition(layer: EquivariantLinear, x: torch.Tensor, n: int) -> torch.Tensor:
    """y[w, m] = sum over the input blocks of the output's irrep, in order, of W[u, w] x[u, m] / sqrt(n);
    features of ``n`` atoms block after block, each block (n, 2l+1, mul)."""
    inputs = [(ir, b) for (_, ir), b in zip(layer.irreps_in, blocks(x, layer.irreps_in, n))]
    out = []
    for (mul_out, ir_out), w in zip(layer.irreps_out, layer.weights):
        sources = torch.cat([b for ir, b in inputs if ir == ir_out], dim=2) if w.shape[0] else None
        y = torch.zeros(n, ir_out.dim, mul_out, dtype=x.dtype) if sources is None else \
            torch.einsum("nmu,uw->nmw", sources, w) / w.shape[0] ** 0.5
        out.append(y.reshape(-1))
    return torch.cat(out)


@pytest.mark.parametrize("atoms", [5, 1, 0])
@pytest.mark.parametrize("frozen", [True, False])
def test_linear_matches_its_definition(frozen, atoms):
    torch.manual_seed(0)
    layer = EquivariantLinear(IRREPS_IN, IRREPS_OUT).double().requires_grad_(not frozen)
    x = torch.randn(atoms * Irreps(IRREPS_IN).dim, dtype=torch.float64, requires_grad=True)
    for _ in range(2):  # the second call reuses what frozen weights let it keep
        y = layer(x)
        torch.testing.assert_close(y, by_definition(layer, x, atoms), rtol=1e-12, atol=1e-12)
    # gradients of the input, and of the weights where they require them, as by the definition
    g = torch.randn_like(y)
    wanted = [x] + ([] if frozen else [w for w in layer.weights if w.numel()])
    ours = torch.autograd.grad(y, wanted, g)
    expected = torch.autograd.grad(by_definition(layer, x, atoms), wanted, g)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_linear_reads_its_sources_only_and_takes_strided_input():
    """A non-contiguous input (every other number of a wider array) with NaN in the block that no
    output uses (2e) and between its numbers: the output is the definition's, finite, and the
    gradient of the unused block is zero."""
    torch.manual_seed(1)
    layer = EquivariantLinear(IRREPS_IN, IRREPS_OUT).double().requires_grad_(False)
    atoms, dim = 4, Irreps(IRREPS_IN).dim
    wide = torch.full((2 * atoms * dim,), float("nan"), dtype=torch.float64)
    x = wide[::2]
    x.copy_(torch.randn(atoms * dim, dtype=torch.float64))
    dropped = Irreps(IRREPS_IN).slices()[2]  # 2x2e
    x[atoms * dropped.start:atoms * dropped.stop] = float("nan")
    x.requires_grad_(True)
    y = layer(x)
    assert torch.isfinite(y).all()
    clean = torch.nan_to_num(x.detach())
    torch.testing.assert_close(y, by_definition(layer, clean, atoms), rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.isfinite(grad).all() and not grad[atoms * dropped.start:atoms * dropped.stop].any()


def test_linear_refuses_features_of_the_wrong_shape():
    layer = EquivariantLinear(IRREPS_IN, IRREPS_OUT)
    with pytest.raises(ValueError, match="1-D tensor of N"):
        layer(torch.randn(3, Irreps(IRREPS_IN).dim))
