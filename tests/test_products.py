"""nn/products.py: the compiled products of the radial MLPs against float64 references."""
import pytest
import torch

from ase_equivariant.nn import products

compiled = pytest.mark.skipif(products._library() is None,
                              reason="compiled products not used here (no AVX-512, no compiler, or switched off)")


def _reference(a, b):
    return (a.double() @ b.double()).to(a.dtype)


def _tolerance(dtype, k):
    """Sums of k products of numbers ~1, rounded in another order than float64's (a wrong
    product is off by ~1)."""
    return 4 * k * torch.finfo(dtype).eps


class _Spy:
    """Counts the calls into the compiled library."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = products._Library.product

        def product(library, a, b, out):
            self.calls += 1
            return original(library, a, b, out)
        monkeypatch.setattr(products._Library, "product", product)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m, k, n", [
    (0, 64, 960), (37, 64, 64), (64, 8, 64), (67, 1, 16), (2500, 64, 960), (1000, 960, 64), (203, 64, 48),
    (130, 64, 224), (100, 64, 8), (100, 20, 20),
])
def test_product_is_a_times_b(monkeypatch, dtype, m, k, n):
    """Every path (compiled where the shape allows: whole and partial tiles of rows, tiles of
    two vectors of columns and of one; torch.mm for few rows or columns no multiple of the
    vectors' length), with and without ``out``."""
    spy = _Spy(monkeypatch)
    generator = torch.Generator().manual_seed(m + k + n)
    a = torch.randn(m, k, dtype=dtype, generator=generator)
    b = torch.randn(k, n, dtype=dtype, generator=generator)
    expected = _reference(a, b)
    out = torch.full((m, n), float("nan"), dtype=dtype)
    assert products.product(a, b, out=out) is out
    got = products.product(a, b)
    for result in (out, got):
        assert result.shape == (m, n) and result.dtype == dtype
        torch.testing.assert_close(result, expected, rtol=0, atol=_tolerance(dtype, k))
    lanes = products.VECTOR_BYTES // a.element_size()
    expect_compiled = products._library() is not None and m >= products.MIN_ROWS and n % lanes == 0
    assert spy.calls == (2 if expect_compiled else 0)


@compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_products_stored_around_the_caches(monkeypatch, dtype):
    """Large outputs are stored around the caches: the same numbers, also into an output that
    is not aligned to the vectors (stored normally)."""
    monkeypatch.setattr(products, "STREAM_BYTES", 1)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(333, 64, dtype=dtype, generator=generator)
    b = torch.randn(64, 96, dtype=dtype, generator=generator)
    expected = _reference(a, b)
    aligned = products.product(a, b)
    buffer = torch.empty(333 * 96 + 1, dtype=dtype)
    unaligned = products.product(a, b, out=buffer[1:].view(333, 96))
    for result in (aligned, unaligned):
        torch.testing.assert_close(result, expected, rtol=0, atol=_tolerance(dtype, 64))


@compiled
def test_results_do_not_depend_on_the_number_of_threads():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(4000, 64, generator=generator)
    b = torch.randn(64, 960, generator=generator)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = products.product(a, b)
        torch.set_num_threads(max(2, threads))
        many = products.product(a, b)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_inputs_the_compiled_product_does_not_take_go_to_torch(monkeypatch):
    """A transposed view, another dtype, an output of another shape or layout: torch.mm computes
    them (and raises torch's errors)."""
    spy = _Spy(monkeypatch)
    generator = torch.Generator().manual_seed(2)
    a = torch.randn(64, 200, generator=generator)
    b = torch.randn(64, 32, generator=generator)
    transposed = a.t()  # (200, 64), not contiguous
    torch.testing.assert_close(products.product(transposed, b), _reference(transposed, b), rtol=0, atol=1e-5)
    out = torch.empty(32, 200).t()
    products.product(transposed, b.t().contiguous().t(), out=out)
    assert spy.calls == 0
    with pytest.raises(RuntimeError):
        products.product(transposed, b.double())
    with pytest.raises(RuntimeError):  # shapes that do not chain: torch's error, no read past b
        products.product(torch.randn(100, 64), torch.randn(63, 32))
    assert spy.calls == 0


@pytest.mark.parametrize("available", [True, False])
def test_a_transposed_right_hand_matrix(monkeypatch, available):
    """``b`` a transposed view (as ``w.t()`` of a weight matrix): copied for the compiled
    product, or given to torch.mm as it is."""
    if not available:
        monkeypatch.setattr(products, "_library", lambda: None)
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(2500, 960, generator=generator)
    b = torch.randn(64, 960, generator=generator).t()
    expected = _reference(a, b)
    out = torch.empty(2500, 64)
    for got in (products.product(a, b), products.product(a, b, out=out)):
        torch.testing.assert_close(got, expected, rtol=0, atol=_tolerance(torch.float32, 960))


def _block_reference(table, n, a, b):
    """The products of ``table`` one by one in float64 (blocks no entry writes stay NaN)."""
    out = torch.full((n * table.c_columns,), float("nan"), dtype=torch.float64)
    for a_start, c_start, dim, k, w, offset, add in table.entries:
        rows = a.double()[n * a_start:n * (a_start + dim * k)].view(n * dim, k)
        y = rows @ b.double()[offset:offset + k * w].view(k, w)
        block = out[n * c_start:n * (c_start + dim * w)].view(n * dim, w)
        block.copy_(block + y if add else y)
    return out


#: a layer's products: three output blocks, the second with two sources (the second adds), the
#: third summing over nothing (K = 0: zero); then one without columns (W = 0)
TABLE = [(0, 0, 1, 24, 32, 0, False),
         (24, 32, 3, 16, 16, 768, False), (72, 32, 3, 8, 16, 1024, True),
         (96, 80, 5, 0, 16, 1152, False),
         (96, 160, 5, 16, 0, 1152, False)]


@compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [0, 1, 5, 67])
def test_block_products_are_their_products(monkeypatch, dtype, n):
    """Every entry of a table, overwriting and adding, whole and partial tiles of rows, in one
    compiled call (on two threads however small: each tile's products are one thread's)."""
    monkeypatch.setattr(products, "WORK_PER_THREAD", 1)
    table = products.BlockTable(TABLE)
    generator = torch.Generator().manual_seed(n)
    a = torch.randn(n * table.a_columns, dtype=dtype, generator=generator)
    b = torch.randn(table.b_numel, dtype=dtype, generator=generator)
    out = torch.full((n * table.c_columns,), float("nan"), dtype=dtype)
    assert products.block_products(table, n, a, b, out)
    expected = _block_reference(table, n, a, b)
    torch.testing.assert_close(out, expected.to(dtype), rtol=0, atol=_tolerance(dtype, 24), equal_nan=True)
    assert not out[n * 80:n * 160].any()  # the block of K = 0


@compiled
def test_block_products_do_not_depend_on_the_number_of_threads(monkeypatch):
    monkeypatch.setattr(products, "WORK_PER_THREAD", 1)
    table = products.BlockTable(TABLE)
    generator = torch.Generator().manual_seed(4)
    n = 301
    a = torch.randn(n * table.a_columns, generator=generator)
    b = torch.randn(table.b_numel, generator=generator)
    results, threads = [], torch.get_num_threads()
    try:
        for count in (1, max(2, threads), 3):
            torch.set_num_threads(count)
            out = torch.empty(n * table.c_columns)
            products.block_products(table, n, a, b, out)
            results.append(out)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0][:n * 160], r[:n * 160]) for r in results[1:])


def test_block_products_the_compiled_product_does_not_take(monkeypatch):
    """Columns no multiple of the vectors' length, another device or dtype, a strided array, or no
    compiled library: nothing done, ``False`` (the caller forms the products itself)."""
    table = products.BlockTable(TABLE)
    n = 3
    a, b, out = torch.randn(n * table.a_columns), torch.randn(table.b_numel), torch.zeros(n * table.c_columns)
    odd = products.BlockTable([(0, 0, 1, 24, 7, 0, False)])
    assert not products.block_products(odd, n, a, b, out)
    assert not products.block_products(table, n, a.double(), b, out)
    assert not products.block_products(table, n, a, torch.randn(2 * table.b_numel)[::2], out)
    if products._library() is not None:
        assert products.block_products(table, n, a, b, out)
    monkeypatch.setattr(products, "_library", lambda: None)
    out.zero_()
    assert not products.block_products(table, n, a, b, out) and not out.any()


def test_block_products_refuse_arrays_too_small_and_tables_out_of_order():
    table = products.BlockTable(TABLE)
    n = 3
    a, b = torch.randn(n * table.a_columns), torch.randn(table.b_numel)
    with pytest.raises(ValueError, match="need at least"):
        products.block_products(table, n, a, b, torch.empty(n * table.c_columns - 1))
    with pytest.raises(ValueError, match="need at least"):
        products.block_products(table, n + 1, a, b, torch.empty((n + 1) * table.c_columns))
    with pytest.raises(ValueError, match="adds to a block"):
        products.BlockTable([(0, 0, 1, 24, 32, 0, False), (0, 32, 1, 24, 32, 0, True)])
