"""A matrix product that torch's default CPU path (MKL) runs well below this machine's rate."""
import functools
import platform

import torch

#: below this many rows MKL is as fast or faster (36 rows: oneDNN takes 1.6x its time)
ONEDNN_MIN_ROWS = 512


@functools.lru_cache(maxsize=None)
def onednn() -> bool:
    """Whether to use oneDNN's fully connected layer (``torch.ops.mkldnn._linear_pointwise``, an
    operation of torch's CPU build that its compiler uses): on x86-64 processors (where it was
    measured), if this torch has it with the signature used here (checked once, on a small
    product)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        a, b = torch.ones(2, 3), torch.ones(4, 3)
        return bool(torch.backends.mkldnn.is_available() and torch.equal(_onednn_product(a, b), a @ b.t()))
    except (AttributeError, RuntimeError, TypeError):
        return False


def _onednn_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.t()`` by oneDNN's fully connected layer (no bias, no activation)."""
    return torch.ops.mkldnn._linear_pointwise(a.contiguous(), b.contiguous(), None, "none", [], "")


def product_transposed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.t()`` as a new ``(M, N)`` tensor, for ``a`` ``(M, K)`` and ``b`` ``(N, K)`` of one
    dtype and device. No autograd (for use inside backward passes).

    On the CPU in float32, from :data:`ONEDNN_MIN_ROWS` rows, oneDNN computes it where torch has
    it (:func:`onednn`): for the radial weights' gradients through the MLP's output matrix
    (``(P, 960) @ (960, 64)``, P pairs) it runs at 1.2–1.7× MKL's rate (the larger P, the more;
    ``benchmarks/README.md``). Elsewhere ``torch.mm``.
    """
    if a.device.type == "cpu" and a.dtype == torch.float32 and b.dtype == torch.float32 \
            and a.shape[0] >= ONEDNN_MIN_ROWS and onednn():
        return _onednn_product(a, b)
    return torch.mm(a, b.t())
