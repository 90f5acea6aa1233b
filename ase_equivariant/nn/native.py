"""The compiled CPU kernels of ``message_sums.c``: built on first use, loaded with ctypes.

The convolution's message sums are many small products over each edge's features; in torch they
are a dozen passes over per-edge arrays, in C one pass with everything in cache. The library is
built and cached by :mod:`ase_equivariant.compiled`. Where no compiler works, or with
``ASE_EQUIVARIANT_NATIVE=0``, :func:`kernels` returns ``None`` and the convolution uses its
pure-torch path, which computes the same numbers.
"""
import ctypes
import functools
from pathlib import Path
from typing import Optional

import torch

from .. import compiled
from ..scratch import scratch

SOURCE = Path(__file__).with_name("message_sums.c")


class Kernels:
    """The loaded library: :meth:`forward` and :meth:`backward` for float32 and float64 arrays,
    on up to torch's number of threads (OpenMP; ctypes releases the GIL during each call)."""

    def __init__(self, path: Path):
        self.path = path
        library = ctypes.CDLL(str(path))
        self.max_dim = library.max_dim()
        self._functions = {
            torch.float32: (library.message_sums_f32, library.message_sums_backward_f32),
            torch.float64: (library.message_sums_f64, library.message_sums_backward_f64),
        }
        for pair in self._functions.values():
            for function in pair:
                function.restype = None

    def _threads(self, n: int, work: int) -> int:
        """Threads for ``n`` receivers and ``work`` multiply-adds: up to torch's number of
        threads, and no more than there is work to share."""
        return max(1, min(self.threads(), n, work // 200_000))

    def forward(self, counts, senders, sh, weights, rows, x, atoms: int, groups, paths, coefficients, out, r0: int,
                scratch, work: int):
        """The output of atoms ``r0 .. r0+n-1`` in ``out`` ← the coupled message sums of a block of
        receivers (see ``message_sums.c``); ``sh (n, K, S)``, ``weights (·, W)`` with ``rows (n*K,)``
        the row of each slot (``None``: ``weights`` has ``n*K`` rows), ``x`` and ``out`` the input
        and output features of all ``atoms``, block after block (:mod:`.layout`), ``counts (n,)``
        and ``senders (n*K,)`` int64, ``groups (G, 8)`` and ``paths (P, 7)`` int32, the paths'
        ``coefficients``, ``scratch (threads(), QD)`` (``QD`` the width of a receiver's message
        sums); all contiguous CPU tensors, the float ones of one dtype.
        ``work``: the multiply-adds of the call, which set how many threads are worth starting."""
        n, k, s = sh.shape
        assert scratch.shape[0] == self.threads()
        self._functions[x.dtype][0](
            _i64(n), ctypes.c_int(self._threads(n, work)), _i64(k), _ptr(counts), _ptr(senders), _ptr(sh), _i64(s),
            _ptr(weights), _ptr(rows), _i64(weights.shape[1]), _ptr(x), _i64(atoms), _ptr(groups),
            _i64(groups.shape[0]), _i64(scratch.shape[1]), _ptr(paths), _i64(paths.shape[0]), _ptr(coefficients),
            _ptr(out), _i64(r0), _ptr(scratch), _ptr(_shares(n)))

    def backward(self, counts, senders, sh, weights, rows, x, atoms: int, groups, paths, coefficients, grad_out,
                 r0: int, scratch, grad_sh, grad_weights, grad_x, work: int, grad_rows=None, phases=None,
                 phase: int = 0):
        """The gradients of a block's coupled message sums, given the gradient ``grad_out`` of the
        output (laid out as ``out``): with respect to ``sh``, written into ``grad_sh (n, K, S)``; to
        the radial weights, written into ``grad_weights``; and to ``x``, added into ``grad_x``
        ``(T, atoms * D)``, one array laid out as ``x`` for each thread that may run (``T`` =
        :meth:`threads`), to be summed by the caller. ``scratch``: as for :meth:`forward`.

        Without ``phases``, ``grad_weights`` ``(n*K, W)`` gets one row per slot. With ``phases``
        ``(n*K,)`` int8 (1 or 2 for the two slots of a pair of reverse edges, 0 for an empty slot)
        and ``grad_rows`` ``(n*K,)`` int64 (each slot's pair), only the slots of ``phase`` are
        visited and their gradients go to row ``grad_rows[e]`` of ``grad_weights`` ``(P, W)``:
        phase 1 (which also writes ``grad_sh``) overwrites the rows, phase 2 adds to them, so a
        pair's row is its two slots' sum once every block has run both phases in that order."""
        n, k, s = sh.shape
        threads = self._threads(n, work)
        assert threads <= grad_x.shape[0] and scratch.shape[0] == self.threads()
        assert (phases is None) == (grad_rows is None) and (phases is None or phase in (1, 2))
        self._functions[x.dtype][1](
            _i64(n), ctypes.c_int(threads), _i64(k), _ptr(counts), _ptr(senders), _ptr(sh), _i64(s), _ptr(weights),
            _ptr(rows), _i64(weights.shape[1]), _ptr(x), _i64(atoms), _i64(grad_x.shape[1] // max(atoms, 1)),
            _ptr(groups), _i64(groups.shape[0]), _i64(scratch.shape[1]), _ptr(paths), _i64(paths.shape[0]),
            _ptr(coefficients), _ptr(grad_out), _i64(r0), _ptr(scratch), _ptr(grad_sh),
            _ptr(grad_weights), _ptr(grad_rows), _ptr(phases), ctypes.c_int(phase), _ptr(grad_x), _ptr(_shares(n)))

    @staticmethod
    def threads() -> int:
        """The most threads a call may use: torch's number of threads."""
        return torch.get_num_threads()


def _shares(n: int) -> torch.Tensor:
    """Scratch for the kernels' sharing of ``n`` receivers among threads: ``n + 1`` int64."""
    return scratch("native.shares", n + 1, torch.int64, torch.device("cpu"))


def _ptr(t: Optional[torch.Tensor]):
    return ctypes.c_void_p(None if t is None else t.data_ptr())


def _i64(v: int):
    return ctypes.c_int64(v)


@functools.lru_cache(maxsize=None)
def kernels() -> Optional[Kernels]:
    """The compiled kernels, built on first use; ``None`` if disabled (``ASE_EQUIVARIANT_NATIVE=0``)
    or if they cannot be built here (a warning says why, once)."""
    return compiled.load(SOURCE, Kernels, "pure-torch convolution")
