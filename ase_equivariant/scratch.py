"""Scratch buffers reused from call to call, for the large intermediates of the neighbour search
and of the convolutions, and large CPU arrays on transparent huge pages."""
import ctypes
import sys
import threading

import torch

_buffers = threading.local()

HUGE_PAGE = 1 << 21
_MADV_HUGEPAGE = 14
try:
    _madvise = ctypes.CDLL(None).madvise if sys.platform.startswith("linux") else None
except (OSError, AttributeError):  # pragma: no cover - libc without madvise
    _madvise = None


def huge_page_empty(numel: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A new, uninitialised 1-D tensor of ``numel`` elements; on Linux CPU, one of at least one
    2 MiB page is placed on a 2 MiB boundary, in whole 2 MiB pages (up to 4 MiB more than asked
    for) that are advised onto transparent huge pages. Where THP is off or the call fails
    nothing changes.

    Two costs of 4 KiB pages that a VM makes worse: touching fresh memory (a page fault per 4 KiB
    costs more than filling the page several times over) and, for arrays of hundreds of MB read
    row by row in random order (the radial weights of ~10,000 atoms), a page-table walk for
    nearly every row.
    """
    size = torch.empty(0, dtype=dtype).element_size()
    if _madvise is None or torch.device(device).type != "cpu" or size * numel < HUGE_PAGE:
        return torch.empty(numel, dtype=dtype, device=device)
    page = HUGE_PAGE // size
    padded = -(-numel // page) * page
    raw = torch.empty(padded + page, dtype=dtype)
    offset = (-raw.data_ptr() % HUGE_PAGE) // size
    aligned = raw[offset:offset + padded]
    _madvise(ctypes.c_void_p(aligned.data_ptr()), ctypes.c_size_t(aligned.nbytes), ctypes.c_int(_MADV_HUGEPAGE))
    return aligned[:numel]


def inference_only(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` was made under ``torch.inference_mode()`` and this code runs outside it,
    where such a tensor can be neither written nor saved for a backward pass: kept arrays made
    by a call under it are replaced, not used, by the calls after it."""
    return tensor.is_inference() and not torch.is_inference_mode_enabled()


def scratch(name: str, numel: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A 1-D tensor of ``numel`` elements with undefined contents, reused from call to call.

    Touching freshly allocated memory is slow on CPU (page faults, on a VM more costly than the
    arithmetic on it), so CPU scratch space is kept per thread, one buffer per ``name`` and
    dtype, sized for the largest request so far (on huge pages from 2 MiB, see
    :func:`huge_page_empty`); asking for ``name`` again overwrites what the previous request
    returned. Other devices allocate normally (their caching allocators reuse memory already).
    """
    if torch.device(device).type != "cpu":
        return torch.empty(numel, dtype=dtype, device=device)
    buffers = _buffers.__dict__.setdefault("buffers", {})
    buffer = buffers.get((name, dtype))
    if buffer is None or buffer.numel() < numel or inference_only(buffer):
        buffer = buffers[(name, dtype)] = huge_page_empty(numel, dtype, "cpu")
    return buffer[:numel]
