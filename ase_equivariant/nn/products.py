"""The network's matrix products: tall and thin, which torch's CPU BLAS runs well below this
machine's rate.

The products of the radial MLPs have one row per pair of atoms (tens of thousands) and at most
~1000 columns, those of the linear layers one row per atom and component; SevenNet-0's largest,
``(P, 64) @ (64, 960)``, runs in MKL at about half of its square sgemm rate on an AVX-512
processor, and in a compiled product (``products.c``, built on first use by
:mod:`ase_equivariant.compiled`) at about the square rate. :func:`product` uses the
compiled one on CPUs with AVX-512 (where it was measured: ``benchmarks/README.md``) for shapes
it is written for, and ``torch.mm`` everywhere else (other devices and processors, small
products, or ``ASE_EQUIVARIANT_NATIVE=0``). :func:`block_products` runs all the products of a
linear layer (one per irrep) in one compiled call, where the compiled product is used.
"""
import ctypes
import functools
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

from .. import compiled

SOURCE = Path(__file__).with_name("products.c")

#: the compiled product's vectors, in bytes, on the processors where it is used
VECTOR_BYTES = 64
#: products with fewer rows go to ``torch.mm`` (a molecule's few pairs: the call costs more)
MIN_ROWS = 64
#: the compiled product reads ``b`` from the second-level cache: larger ones go to ``torch.mm``
MAX_B_BYTES = 1 << 19
#: outputs of at least this size are stored around the caches (they do not fit in them: a
#: cached store would first read each line from memory)
STREAM_BYTES = 1 << 25
#: multiply-adds per thread worth starting it for (alone, with two threads: 64 x 8 x 64 took 3.1
#: against 2.6 µs on one, 64 x 64 x 64 4.5 against 6.4)
WORK_PER_THREAD = 1 << 16


class _Library:
    """The library built from ``products.c``."""

    def __init__(self, path: Path):
        self.path = path
        library = ctypes.CDLL(str(path))
        self.vector_bytes = library.vector_bytes()
        self._functions = {torch.float32: library.product_f32, torch.float64: library.product_f64}
        self._block_functions = {torch.float32: library.block_products_f32,
                                 torch.float64: library.block_products_f64}
        for function in self._functions.values():
            function.restype = None
            function.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 3 + [ctypes.c_int] * 2
        for function in self._block_functions.values():
            function.restype = None
            function.argtypes = [ctypes.c_int64] * 2 + [ctypes.c_void_p] * 4 + [ctypes.c_int] * 2

    def product(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor):
        """``out ← a @ b`` for contiguous CPU tensors of one dtype (see ``products.c``)."""
        (m, k), n = a.shape, b.shape[1]
        threads = max(1, min(torch.get_num_threads(), m * k * n // WORK_PER_THREAD))
        self._functions[a.dtype](m, k, n, a.data_ptr(), b.data_ptr(), out.data_ptr(), threads,
                                 int(out.numel() * out.element_size() >= STREAM_BYTES))

    def block_products(self, table: "BlockTable", n: int, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor):
        """The products of ``table`` for ``n`` atoms (see :func:`block_products`)."""
        threads = max(1, min(torch.get_num_threads(), n * table.work_per_atom // WORK_PER_THREAD))
        self._block_functions[a.dtype](n, len(table.entries), table.tensor.data_ptr(), a.data_ptr(), b.data_ptr(),
                                       out.data_ptr(), threads, int(out.numel() * out.element_size() >= STREAM_BYTES))


@functools.lru_cache(maxsize=None)
def _library() -> Optional[_Library]:
    """The compiled product, built on first use, if it is used on this processor; ``None`` if not,
    if disabled (``ASE_EQUIVARIANT_NATIVE=0``), or if it cannot be built here (a warning says why,
    once)."""
    library = compiled.load(SOURCE, _Library, "torch.mm")
    return library if library is not None and library.vector_bytes == VECTOR_BYTES else None


def _fits(element_size: int, columns, b_numel: int) -> bool:
    """Whether products with these ``columns`` (each a multiple of the vectors' length) and a
    right-hand matrix of ``b_numel`` numbers (at most :data:`MAX_B_BYTES`) are the compiled
    product's."""
    lanes = VECTOR_BYTES // element_size
    return not any(w % lanes for w in columns) and b_numel * element_size <= MAX_B_BYTES


def _compiled(a: torch.Tensor, b: torch.Tensor, out: Optional[torch.Tensor]) -> Optional[_Library]:
    """The compiled product if it computes ``a @ b`` (into ``out``) here, else ``None``."""
    if a.device.type != "cpu" or a.dtype not in (torch.float32, torch.float64) or b.dtype != a.dtype \
            or b.device != a.device or a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0] \
            or a.shape[0] < MIN_ROWS or not a.is_contiguous():
        return None
    if not _fits(a.element_size(), [b.shape[1]], b.shape[0] * b.shape[1]):
        return None
    if out is not None and (not out.is_contiguous() or out.dtype != a.dtype or out.device != a.device
                            or out.shape != (a.shape[0], b.shape[1])):
        return None
    return _library()


def product(a: torch.Tensor, b: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``a @ b`` for ``a`` ``(M, K)`` and ``b`` ``(K, N)`` of one dtype and device, written into
    ``out`` ``(M, N)`` if given (as ``torch.mm(a, b, out=out)``) and returned. No autograd (for
    the hand-written passes of the radial MLPs and linear layers).

    On AVX-512 CPUs in float32 and float64, from :data:`MIN_ROWS` rows, with ``N`` a multiple of
    the vectors' length and ``b`` of at most :data:`MAX_B_BYTES`, the compiled product computes
    it (each element a sum over ``k`` in order, whatever the number of threads); elsewhere
    ``torch.mm``. The compiled product reads ``b`` contiguous: a transposed or sliced ``b`` is
    copied at every call (the backward passes keep transposed copies of frozen weights).
    """
    library = _compiled(a, b, out)
    if library is None:
        return torch.mm(a, b) if out is None else torch.mm(a, b, out=out)
    if out is None:
        out = a.new_empty(a.shape[0], b.shape[1])
    library.product(a, b.contiguous(), out)
    return out


class BlockTable:
    """The products of a block-diagonal map on features block after block (:mod:`.layout`), for
    :func:`block_products`. Each entry ``(a_start, c_start, dim, K, W, b_offset, add)`` is, for
    ``N`` atoms, the product ``c[N*c_start ..] (N*dim, W) ← a[N*a_start ..] (N*dim, K) @
    b[b_offset ..] (K, W)`` (the blocks of the output and input features at columns
    ``c_start`` and ``a_start`` of an atom's irreps, a ``(K, W)`` matrix of the flat ``b``); an
    entry with ``add`` true adds to the block of the entry before it instead (entries that add
    to a block follow the one that overwrites it)."""

    def __init__(self, entries: Sequence[Tuple[int, int, int, int, int, int, bool]]):
        self.entries = [tuple(int(v) for v in e) for e in entries]
        for i, (*_, add) in enumerate(self.entries):
            if add and (i == 0 or self.entries[i - 1][1] != self.entries[i][1]):
                raise ValueError(f"entry {i} adds to a block that the entry before it does not write")
        self.tensor = torch.tensor(self.entries, dtype=torch.int64).reshape(-1, 7)
        self.columns = {e[4] for e in self.entries}
        self.work_per_atom = sum(dim * k * w for _, _, dim, k, w, _, _ in self.entries)
        self.largest_b = max((k * w for _, _, _, k, w, _, _ in self.entries), default=0)
        # the sizes the arrays must have: columns of an atom's input and output irreps, numbers of b
        self.a_columns = max((a + dim * k for a, _, dim, k, _, _, _ in self.entries), default=0)
        self.c_columns = max((c + dim * w for _, c, dim, _, w, _, _ in self.entries), default=0)
        self.b_numel = max((o + k * w for _, _, _, k, w, o, _ in self.entries), default=0)


def block_products(table: BlockTable, n: int, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> bool:
    """The products of ``table`` for the features ``a`` ``(n * ·,)`` of ``n`` atoms and the
    matrices in ``b`` (flat), into ``out`` ``(n * ·,)``, in one compiled call (one parallel
    region for every product of a linear layer: on a molecule the layer's Python and the
    threads' start-up cost more than its arithmetic). Returns ``False``, having done nothing,
    where the compiled product is not used (the conditions of :func:`product`, bar the number
    of rows); the caller then forms them one by one with :func:`product`."""
    if a.device.type != "cpu" or a.dtype not in (torch.float32, torch.float64) or b.dtype != a.dtype \
            or out.dtype != a.dtype or b.device != a.device or out.device != a.device \
            or not (a.is_contiguous() and b.is_contiguous() and out.is_contiguous()):
        return False
    if a.numel() < n * table.a_columns or out.numel() < n * table.c_columns or b.numel() < table.b_numel:
        raise ValueError(f"block products of {n} atoms need at least {n * table.a_columns} input, "
                         f"{n * table.c_columns} output and {table.b_numel} matrix numbers, got "
                         f"{a.numel()}, {out.numel()} and {b.numel()}")
    if not _fits(a.element_size(), table.columns, table.largest_b):
        return False
    library = _library()
    if library is None:
        return False
    library.block_products(table, n, a, b, out)
    return True
