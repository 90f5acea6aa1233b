"""The equivariant linear layer against its definition."""
import pytest
import torch

from ase_equivariant.nn import linear, products
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


# widths that the compiled block products take (multiples of 16): 1o has two sources, 0o none,
# 2e's output has no channels (so 2e's gradient sums over nothing: zero)
WIDE_IN, WIDE_OUT = "32x0e+16x1o+16x2e+32x1o", "16x1o+32x0e+16x0o+0x2e"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("atoms, frozen", [(67, True), (1, True), (67, False)])
def test_linear_in_compiled_block_products(monkeypatch, dtype, atoms, frozen):
    """Where the compiled products are used, the layer makes one call per pass and gives the
    definition's output and input gradient (frozen, with the packed weights kept; or not)."""
    calls = []
    original = products.block_products

    def spy(*args):
        calls.append(original(*args))
        return calls[-1]
    monkeypatch.setattr(linear, "block_products", spy)
    torch.manual_seed(2)
    layer = EquivariantLinear(WIDE_IN, WIDE_OUT).to(dtype).requires_grad_(not frozen)
    x = torch.randn(atoms * Irreps(WIDE_IN).dim, dtype=dtype, requires_grad=True)
    layer(x)
    y = layer(x)
    g = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, g)
    x64 = x.detach().double().requires_grad_(True)
    reference = by_definition(layer.double(), x64, atoms)
    (grad_reference,) = torch.autograd.grad(reference, x64, g.double())
    tolerance = dict(rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)
    torch.testing.assert_close(y.double(), reference, **tolerance)
    torch.testing.assert_close(grad.double(), grad_reference, **tolerance)
    assert calls == [products._library() is not None] * 3
