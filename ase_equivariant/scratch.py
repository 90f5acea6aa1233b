"""Scratch buffers reused from call to call, for the large intermediates of the neighbour search
and of the convolutions."""
import threading

import torch

_buffers = threading.local()


def scratch(name: str, numel: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A 1-D tensor of ``numel`` elements with undefined contents, reused from call to call.

    Touching freshly allocated memory is slow on CPU (page faults, on a VM more costly than the
    arithmetic on it), so CPU scratch space is kept per thread, one buffer per ``name`` and
    dtype, sized for the largest request so far; asking for ``name`` again overwrites what the
    previous request returned. Other devices allocate normally (their caching allocators reuse
    memory already).
    """
    if torch.device(device).type != "cpu":
        return torch.empty(numel, dtype=dtype, device=device)
    buffers = _buffers.__dict__.setdefault("buffers", {})
    buffer = buffers.get((name, dtype))
    # a buffer made under torch.inference_mode() cannot be written outside it
    stale = buffer is not None and buffer.is_inference() and not torch.is_inference_mode_enabled()
    if buffer is None or buffer.numel() < numel or stale:
        buffer = buffers[(name, dtype)] = torch.empty(numel, dtype=dtype)
    return buffer[:numel]
