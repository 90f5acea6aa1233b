"""The convolutions' radial weights as tables of the pair distance, interpolated.

A convolution's radial weights are a function of the pair distance ``r`` alone (Bessel basis
and cutoff, then the radial MLP and its output matrix: ``8 → 64 → 64 → W`` for SevenNet-0,
``W`` up to 960). Forming them takes a ``(P, 64) @ (64, W)`` product per call and its gradient
another; on the CPU these were ~30 % of a call. A :class:`RadialTable` holds the function and
its derivative at the nodes of a uniform grid, evaluated once in float64, and interpolates
between them by cubic Hermite splines (``radial_table.c``): four rows per pair instead of
the products, a C1 function whose derivative is exactly that of the interpolated values.

The spacing (:data:`SPACING`) puts the interpolation error below float32 rounding: every
point where the function is not smooth (the cutoff's knots, e.g. the XPLOR switch's ``r_on``,
where its second derivative jumps) and the cutoff itself are nodes (with ``r_on`` between nodes,
SevenNet-0's derivatives were off by 1e-5 of their largest value; on a node, by 4e-8). Two
float32 roundings are kept out: the slope between nodes comes from increments formed in
float64 (float32 values would carry their rounding times ``1/h``), and the interval of a
distance is found in double (``r / h`` runs to a few thousand). SevenNet-0's float32 forces
are then as close to float64 as with the MLP in float32 (``tests/test_radial_table.py``).
Tables are used for float32 calls on the CPU only (float64 keeps the network's own arithmetic,
of which the interpolation error would be the largest part), with frozen weights, where the
compiled library builds, and for distances on the grid (the potential decides, per call).
"""
import ctypes
import functools
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import torch

from .. import compiled
from .products import STREAM_BYTES

SOURCE = Path(__file__).with_name("radial_table.c")

#: the largest spacing of the grid's nodes, in Å
SPACING = 0.0025
#: distances per thread worth starting it for (the interpolation of one pair of 960 weights
#: reads 15 KB from the tables)
PAIRS_PER_THREAD = 64


class _Library:
    """The library built from ``radial_table.c``."""

    def __init__(self, path: Path):
        self.path = path
        library = ctypes.CDLL(str(path))
        self.values, self.distance_gradient = library.radial_values, library.radial_distance_gradient
        for function in (self.values, self.distance_gradient):
            function.restype = None
        self.values.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_double, ctypes.c_int64] \
            + [ctypes.c_void_p] * 4 + [ctypes.c_int] * 2
        self.distance_gradient.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_double,
                                           ctypes.c_int64] + [ctypes.c_void_p] * 4 + [ctypes.c_int]


@functools.lru_cache(maxsize=None)
def _library() -> Optional[_Library]:
    """The compiled interpolation, built on first use; ``None`` if disabled
    (``ASE_EQUIVARIANT_NATIVE=0``) or if it cannot be built here (a warning says why, once)."""
    return compiled.load(SOURCE, _Library, "radial MLP")


def available() -> bool:
    """Whether tables can be interpolated here (the compiled library builds and is switched on)."""
    return _library() is not None


class RadialTable:
    """Functions ``f: r → (W,)`` of the distance at the nodes ``r_j = (j + 1) * spacing``, ``j =
    0 .. n-1``, from their ``values`` and ``derivatives`` ``(n, W)`` (float64 best): kept in
    float32 as the values, their increments from node to node (formed before the rounding) and
    the derivatives (see ``radial_table.c``)."""

    def __init__(self, spacing: float, values: torch.Tensor, derivatives: torch.Tensor):
        if values.shape != derivatives.shape or values.dim() != 2 or values.shape[0] < 2:
            raise ValueError(f"a table needs values and derivatives of one shape (n >= 2, W), got "
                             f"{tuple(values.shape)} and {tuple(derivatives.shape)}")
        self.spacing = float(spacing)
        self.values = values.to(torch.float32).contiguous()
        increments = torch.zeros_like(values)
        increments[:-1] = values[1:] - values[:-1]
        self.increments = increments.to(torch.float32).contiguous()
        self.derivatives = derivatives.to(torch.float32).contiguous()

    @property
    def shortest(self) -> float:
        """The shortest distance on the grid, in Å (its first node)."""
        return self.spacing

    @property
    def width(self) -> int:
        return self.values.shape[1]

    def _threads(self, pairs: int) -> int:
        return max(1, min(torch.get_num_threads(), pairs // PAIRS_PER_THREAD))

    def interpolate(self, r: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` ``(P, W)`` ← the functions at the ``(P,)`` float32 CPU distances ``r``, which must
        lie on the grid (``shortest <= r <= n * spacing``); returns ``out``. An ``out`` of at least
        :data:`~.products.STREAM_BYTES` is stored around the caches (it does not fit in them)."""
        r = _distances(r)
        if out.shape != (r.shape[0], self.width) or not out.is_contiguous() or out.dtype != torch.float32:
            raise ValueError(f"the output of {r.shape[0]} interpolations must be a contiguous float32 "
                             f"({r.shape[0]}, {self.width}) array, got {tuple(out.shape)} {out.dtype}")
        stream = out.numel() * out.element_size() >= STREAM_BYTES
        _library().values(r.shape[0], self.width, r.data_ptr(), self.spacing, self.values.shape[0],
                          self.values.data_ptr(), self.increments.data_ptr(), self.derivatives.data_ptr(),
                          out.data_ptr(), self._threads(r.shape[0]), int(stream))
        return out

    def distance_gradient(self, r: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The gradient ``(P,)`` with respect to the distances ``r`` of a function of the
        interpolated values, given its gradient ``grad`` ``(P, W)`` with respect to them."""
        r, grad = _distances(r), grad.contiguous()
        if grad.shape != (r.shape[0], self.width) or grad.dtype != torch.float32:
            raise ValueError(f"the gradient of {r.shape[0]} interpolations must be float32 ({r.shape[0]}, "
                             f"{self.width}), got {tuple(grad.shape)} {grad.dtype}")
        out = r.new_empty(r.shape[0])
        _library().distance_gradient(r.shape[0], self.width, r.data_ptr(), self.spacing, self.values.shape[0],
                                     self.increments.data_ptr(), self.derivatives.data_ptr(), grad.data_ptr(),
                                     out.data_ptr(), self._threads(r.shape[0]))
        return out


def _distances(r: torch.Tensor) -> torch.Tensor:
    """``r`` as the compiled interpolation reads it: contiguous float32 on the CPU (else an error,
    not numbers read as the wrong type)."""
    if r.dtype != torch.float32 or r.device.type != "cpu" or r.dim() != 1:
        raise ValueError(f"distances must be a 1-D float32 CPU tensor, got {tuple(r.shape)} {r.dtype} on {r.device}")
    return r.detach().contiguous()


def grid_spacing(cutoff: float, knots: Sequence[float], largest: float = SPACING) -> Optional[float]:
    """The largest spacing up to ``largest`` that makes the ``cutoff`` and every knot in
    ``(0, cutoff)`` nodes of the grid (multiples of it), or ``None`` if there is none close
    enough (a knot not commensurate with the cutoff)."""
    first = max(2, int(-(-cutoff // largest)))
    for n in range(first, 4 * first):
        spacing = cutoff / n
        if all(abs(k / spacing - round(k / spacing)) < 1e-6 for k in knots if 0 < k < cutoff):
            return spacing
    return None


def tabulate(function: Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]], cutoff: float,
             knots: Sequence[float] = ()) -> Optional[RadialTable]:
    """The table on ``(0, cutoff]`` of ``function``, which maps float64 distances ``(P,)`` to the
    values ``(P, W)`` of the functions and their derivatives with respect to the distance ``(P,
    W)``, with the knots on nodes (see :func:`grid_spacing`); ``None`` where no grid puts them
    there."""
    spacing = grid_spacing(cutoff, knots)
    if spacing is None:
        return None
    n = round(cutoff / spacing)
    with torch.no_grad():
        values, derivatives = function(spacing * torch.arange(1, n + 1, dtype=torch.float64))
    return RadialTable(spacing, values, derivatives)


def with_derivative(function: Callable[[torch.Tensor], torch.Tensor]) \
        -> Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """``function`` (distances ``(P,)`` → ``(P, B)``, each row a function of its own distance, B
    small) with its derivative: ``r → (f(r), df/dr)``, by one backward pass per column."""
    def both(r: torch.Tensor):
        with torch.enable_grad():
            r = r.detach().requires_grad_(True)
            values = function(r)
            derivatives = [torch.autograd.grad(values[:, b].sum(), r, retain_graph=True)[0]
                           for b in range(values.shape[1])]
        return values.detach(), torch.stack(derivatives, dim=1)
    return both
