"""A matrix product that torch's default CPU path (MKL) runs well below this machine's rate."""
import torch

#: oneDNN's fully connected layer (an operation of torch's CPU build, used by its compiler):
#: where torch has it, float32 products with few output columns run on it
ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
#: below this many rows MKL is as fast or faster (36 rows: oneDNN takes 1.6x its time)
ONEDNN_MIN_ROWS = 512


def product_transposed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.t()`` as a new ``(M, N)`` tensor, for ``a`` ``(M, K)`` and ``b`` ``(N, K)`` of one
    dtype and device. No autograd (for use inside backward passes).

    On the CPU in float32 with :data:`ONEDNN`, from :data:`ONEDNN_MIN_ROWS` rows, oneDNN
    computes it: for the radial weights' gradients through the MLP's output matrix
    (``(P, 960) @ (960, 64)``, P pairs) it runs at 1.2–1.7× MKL's rate (the larger P, the more;
    ``benchmarks/README.md``). Elsewhere ``torch.mm``.
    """
    if ONEDNN and a.device.type == "cpu" and a.dtype == torch.float32 and b.dtype == torch.float32 \
            and a.shape[0] >= ONEDNN_MIN_ROWS:
        return torch.ops.mkldnn._linear_pointwise(a.contiguous(), b.contiguous(), None, "none", [], "")
    return torch.mm(a, b.t())
