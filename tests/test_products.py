"""nn/products.py: the oneDNN product against torch.mm."""
import pytest
import torch

from ase_equivariant.nn import products


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [0, 1, 37, 2500])
def test_product_transposed_is_a_times_b_transposed(monkeypatch, onednn, dtype, m):
    if not onednn:
        monkeypatch.setattr(products, "onednn", lambda: False)
    generator = torch.Generator().manual_seed(m)
    a = torch.randn(m, 960, dtype=dtype, generator=generator)
    b = torch.randn(64, 960, dtype=dtype, generator=generator)
    expected = (a.double() @ b.double().t()).to(dtype)
    for a_in in (a, a.t().contiguous().t()):  # contiguous, and a transposed view
        got = products.product_transposed(a_in, b)
        assert got.shape == (m, 64) and got.dtype == dtype
        # float32: sums of 960 terms of size ~1, rounded in another order than float64's
        tolerance = 2e-4 if dtype == torch.float32 else 1e-11
        torch.testing.assert_close(got, expected, rtol=0, atol=tolerance)
