"""Large CPU arrays on huge pages: the sizes and dtypes asked for, on 2 MiB boundaries."""
import sys

import pytest
import torch

from ase_equivariant.scratch import HUGE_PAGE, huge_page_empty, scratch


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
@pytest.mark.parametrize("numel", [0, 1000, HUGE_PAGE // 4 + 3, 3 * HUGE_PAGE // 8])
def test_huge_page_empty_has_the_size_and_dtype_asked_for(numel, dtype):
    t = huge_page_empty(numel, dtype, "cpu")
    assert t.shape == (numel,) and t.dtype == dtype and t.is_contiguous()
    t.fill_(7)  # every element writable, nothing shared with another tensor
    assert int((t == 7).sum()) == numel
    large = numel * t.element_size() >= HUGE_PAGE
    if large and sys.platform.startswith("linux"):
        assert t.data_ptr() % HUGE_PAGE == 0


def test_scratch_buffers_grow_to_the_largest_request_and_are_reused():
    small = scratch("test.huge", 10, torch.float32, "cpu")
    big = scratch("test.huge", HUGE_PAGE, torch.float32, "cpu")  # grows: a new buffer
    assert big.numel() == HUGE_PAGE and big.data_ptr() != small.data_ptr()
    big.fill_(1.0)
    again = scratch("test.huge", 100, torch.float32, "cpu")  # the same buffer, its first elements
    assert again.data_ptr() == big.data_ptr() and bool((again == 1.0).all())
