"""Neighbour search: a linear-scaling cell list, a Verlet list with a skin, and an
ASE-compatible :func:`neighbor_list`.

The cell list has two implementations of one contract: a compiled C search (``cell_list.c``,
built on first use by :mod:`ase_equivariant.compiled`) that CPU tensors take, and a pure-torch
search that runs on any device (GPUs, and CPUs where no C compiler works or with
``ASE_EQUIVARIANT_NATIVE=0``). Both return the same edges; the order within an atom's edges
may differ between them.

Conventions (shared by everything in this module):

* ``positions`` is an ``(N, 3)`` float tensor in Å, ``cell`` a ``(3, 3)`` tensor whose *rows* are
  the lattice vectors (Å), ``pbc`` three booleans.  A cell row along a non-periodic axis is never
  used and may be zero (a molecule needs no cell at all).
* An edge is a triple ``(i, j, S)``: ``edge_index[0] = i``, ``edge_index[1] = j`` and ``S`` the
  integer cell shift, with displacement ``D = positions[j] - positions[i] + S @ cell`` (exactly
  :func:`edge_vectors`).  ``S`` is zero along non-periodic axes.
* The list is *full* (both ``i -> j`` and ``j -> i``), keeps every periodic image within the
  cutoff as its own edge (self-images of an atom included, so cutoffs larger than the cell are
  fine), uses the strict test ``|D| < cutoff`` and is sorted by ``i``.
"""
import ctypes
import functools
import math
import numbers
from pathlib import Path

import numpy as np
import torch

from . import compiled
from .scratch import huge_page_empty, scratch

__all__ = ["cell_list", "edge_vectors", "NeighborList", "neighbor_list"]

# Bins are about cutoff / _BINS_PER_CUTOFF wide: finer bins test fewer far-away candidates.
_BINS_PER_CUTOFF = 2
# Along the strip axis, where finer bins add no ranges to search, about cutoff / this wide.
_STRIP_BINS_PER_CUTOFF = 8
# The same for the compiled search, whose cost is more per row of bins than per candidate.
_COMPILED_BINS_PER_CUTOFF = 1
_COMPILED_STRIP_BINS_PER_CUTOFF = 16
# Candidate pairs tested per vectorised step (~20 bytes of scratch space each).
_CANDIDATES_PER_CHUNK = 1 << 19
# Row widths _candidates tries, and the cost of a row in candidate slots (its per-row work).
_ROW_WIDTHS = 32
_ROW_COST = 4
# Edges measured per step by the exact cutoff test (~80 bytes of scratch space each).
_EDGES_PER_CHUNK = 1 << 16
# Periodic images the cell list may consider (~100 bytes of memory each while the grid is built).
_MAX_IMAGES = 1 << 25
# The compiled CPU search (see _CompiledCellList); the torch one runs where it cannot be built.
_SOURCE = Path(__file__).with_name("cell_list.c")
# Lower bound of |det| of the unit periodic cell vectors (the sine of the angle for two vectors).
_MIN_NORMALISED_VOLUME = 1e-8

def _fresh_int64(*shape, device):
    """A new, uninitialised int64 tensor for the edge arrays, which are fresh memory each call:
    on huge pages where it is large enough (see :func:`~.scratch.huge_page_empty`)."""
    return huge_page_empty(math.prod(shape), torch.int64, device).view(shape)


def _check_cutoff(cutoff, name="cutoff"):
    """Return ``cutoff`` as a float, or raise ValueError unless it is a finite positive number."""
    if isinstance(cutoff, torch.Tensor) and cutoff.numel() == 1:
        cutoff = cutoff.item()
    if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real):
        raise ValueError(f"{name} must be a finite positive number, got {cutoff!r}")
    cutoff = float(cutoff)
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"{name} must be a finite positive number, got {cutoff!r}")
    return cutoff


def _check_system(positions, cell, pbc):
    """Validate one structure before any work.

    Returns ``(positions, cell, pbc, basis)``: positions ``(N, 3)`` float32/float64 tensor, cell
    ``(3, 3)`` of the same dtype and device, pbc a tuple of three bools, and basis the ``(3, 3)``
    float64 CPU matrix of :func:`_effective_basis`.  The 3 x 3 arithmetic is plain Python: a
    call on a few thousand atoms would otherwise spend much of its time on small tensor calls.
    """
    positions = torch.as_tensor(positions)
    if positions.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"positions must be float32 or float64, got {positions.dtype}")
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {tuple(positions.shape)}")
    cell = torch.as_tensor(cell, dtype=positions.dtype, device=positions.device)
    if cell.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3), got {tuple(cell.shape)}")
    flags = pbc.tolist() if isinstance(pbc, (torch.Tensor, np.ndarray)) else pbc
    if isinstance(flags, (bool, int, np.bool_)):
        flags = [flags] * 3
    if not isinstance(flags, (list, tuple)) or len(flags) != 3:
        raise ValueError(f"pbc must be one bool or three bools, got shape {np.shape(pbc)}")
    pbc = tuple(bool(p) for p in flags)
    rows = cell.detach().to("cpu", torch.float64).tolist()
    if not all(math.isfinite(x) for row in rows for x in row):
        raise ValueError("cell contains NaN or inf")
    if not bool(torch.isfinite(positions).all()):
        raise ValueError("positions contain NaN or inf")
    return positions.detach(), cell.detach(), pbc, _effective_basis(rows, pbc)


def _dot(u, v):
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]


def _cross(u, v):
    return [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]]


def _effective_basis(cell, pbc):
    """Cell rows along periodic axes, an orthonormal completion along the others.

    cell: ``(3, 3)`` floats (nested lists or an array).  Returns a non-singular ``(3, 3)`` float64
    CPU tensor whose periodic rows are those of ``cell`` and whose other rows are unit vectors
    orthogonal to the periodic rows and to each other (the identity for a molecule), so
    fractional coordinates along non-periodic axes are plain lengths in Å.  Raises ValueError
    when the periodic rows are zero or linearly dependent.
    """
    periodic = [k for k in range(3) if pbc[k]]
    rows = [[float(x) for x in cell[k]] for k in periodic]
    unit = []
    for k, row in zip(periodic, rows):
        norm = math.sqrt(_dot(row, row))
        if not norm > 0:
            raise ValueError(f"singular cell: cell vector {k} is zero but pbc[{k}] is True")
        unit.append([x / norm for x in row])
    if len(periodic) >= 2:  # the sine of the angle between two, the volume of three
        normal = _cross(unit[0], unit[1])
        volume = (math.sqrt(_dot(normal, normal)) if len(periodic) == 2
                  else abs(_dot(normal, unit[2])))
        if not volume > _MIN_NORMALISED_VOLUME:
            raise ValueError(
                "singular cell: the periodic cell vectors "
                f"{periodic} are (nearly) linearly dependent (normalised volume {volume:.3g})"
            )
    if len(periodic) == 0:
        completion = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    elif len(periodic) == 1:
        a = unit[0]
        e = [0.0, 0.0, 0.0]
        e[min(range(3), key=lambda k: abs(a[k]))] = 1.0
        u = [e[k] - _dot(e, a) * a[k] for k in range(3)]
        norm = math.sqrt(_dot(u, u))
        u = [x / norm for x in u]
        completion = [u, _cross(a, u)]
    elif len(periodic) == 2:
        normal = _cross(unit[0], unit[1])
        norm = math.sqrt(_dot(normal, normal))
        completion = [[x / norm for x in normal]]
    else:
        completion = []
    basis = [None] * 3
    for k, row in zip(periodic, rows):
        basis[k] = row
    for k, row in zip([k for k in range(3) if not pbc[k]], completion):
        basis[k] = row
    return torch.tensor(basis, dtype=torch.float64)


def _inverse(basis):
    """``(inverse, heights)``: the inverse ``(3, 3)`` float64 tensor of a basis from
    :func:`_effective_basis` (by cofactors) and the perpendicular heights of its rows (Å)."""
    b = basis.tolist()
    columns = [_cross(b[1], b[2]), _cross(b[2], b[0]), _cross(b[0], b[1])]  # cofactor columns
    det = _dot(b[0], columns[0])
    inverse = [[columns[j][i] / det for j in range(3)] for i in range(3)]
    heights = [abs(det) / math.sqrt(_dot(c, c)) for c in columns]
    return torch.tensor(inverse, dtype=torch.float64), heights


def _rounding_margin(dtype, positions, cell, cutoff):
    """A length (Å) well above the rounding error of any displacement ``D`` computed in
    ``dtype`` from these positions ``(N, 3)``, cell ``(3, 3)`` and a cutoff (Å)."""
    scale = cutoff + cell.abs().sum().item()
    if positions.shape[0]:
        scale += positions.abs().max().item()
    return 64 * torch.finfo(dtype).eps * scale


def edge_vectors(positions, cell, edge_index, shifts):
    """Displacements ``D = positions[j] - positions[i] + shifts @ cell`` of every edge.

    positions ``(N, 3)``, cell ``(3, 3)``, edge_index ``(2, E)`` int64, shifts ``(E, 3)`` int64.
    Returns ``(E, 3)`` in the dtype of ``positions`` (Å).  This is the exact formula the cutoff
    test of this module uses, so ``edge_vectors(...).norm`` of returned edges is below the cutoff.
    """
    return (positions.index_select(0, edge_index[1]) - positions.index_select(0, edge_index[0])
            + shifts.to(positions.dtype) @ cell)


def _within(positions, cell, edge_index, shifts, cutoff):
    """Boolean ``(E,)`` mask of ``|D| < cutoff`` for edges ``edge_index`` ``(2, E)``, ``shifts``.

    The same arithmetic as :func:`edge_vectors`, chunk by chunk in reused scratch space (large
    fresh intermediates are slow to touch)."""
    device, dtype = positions.device, positions.dtype
    inside = torch.empty(shifts.shape[0], dtype=torch.bool, device=device)
    for e0 in range(0, shifts.shape[0], _EDGES_PER_CHUNK):
        e1 = min(e0 + _EDGES_PER_CHUNK, shifts.shape[0])
        d = scratch("within_d", 3 * (e1 - e0), dtype, device).view(-1, 3)
        other = scratch("within_other", 3 * (e1 - e0), dtype, device).view(-1, 3)
        torch.index_select(positions, 0, edge_index[1, e0:e1], out=d)
        d.sub_(torch.index_select(positions, 0, edge_index[0, e0:e1], out=other))
        other.copy_(shifts[e0:e1])
        d.add_(torch.mm(other, cell, out=scratch("within_shift", 3 * (e1 - e0), dtype,
                                                   device).view(-1, 3)))
        length = torch.mul(d[:, 0], d[:, 0], out=scratch("within_length", e1 - e0, dtype, device))
        length.addcmul_(d[:, 1], d[:, 1]).addcmul_(d[:, 2], d[:, 2])
        torch.lt(_square_root_(length), cutoff, out=inside[e0:e1])
    return inside


def _square_root_(x):
    """``x.sqrt_()``, correctly rounded on the CPU too: torch's vectorised float64 square root
    is not on every build (torch 2.11 on an AVX-512 machine: sqrt(8) one unit in the last place
    low, which moved a shell at a cutoff of ``2 * np.sqrt(2)`` inside it), NumPy's is the
    processor's square-root instruction. In place; returns ``x``."""
    if x.device.type == "cpu":
        array = x.numpy()
        np.sqrt(array, out=array)
        return x
    return x.sqrt_()


def _bins(frac, pbc, heights, bin_cutoff, max_bins):
    """Sort atoms into a grid of bins, finer along one axis (the "strip" axis).

    frac ``(N, 3)`` float64: fractional coordinates along periodic axes, Å along the others.
    heights ``(3,)``: perpendicular heights of the cell (Å) along periodic axes.  Returns
    ``(bins, wraps, n, m, strip, window)``: bins ``(N, 3)`` int64 bin coordinates in
    ``[0, n)``; wraps ``(N, 3)`` int64 lattice translations that bring each atom into the cell
    (zero along non-periodic axes); ``n`` the bins per axis and ``m`` how many neighbouring bins
    each side can hold an atom within ``bin_cutoff`` (``m`` may exceed ``n`` when the cutoff is
    larger than the cell); ``strip`` the axis of most neighbouring bins, where bins are
    ``_STRIP_BINS_PER_CUTOFF`` per cutoff; window ``(N, 2)`` int64, the first and one past the
    last bin along ``strip`` that can hold an atom within ``bin_cutoff`` of each atom (within
    ``[-m, n + m)``).  Along non-periodic axes the grid spans the atoms' bounding box.
    """
    n_atoms = frac.shape[0]
    wraps = torch.zeros(n_atoms, 3, dtype=torch.int64, device=frac.device)
    scaled = torch.empty_like(frac)  # coordinate in units of the grid extent, in [0, 1]
    extent = []
    for k in range(3):
        if pbc[k]:
            floor = torch.floor(frac[:, k])
            wraps[:, k] = floor.to(torch.int64)
            scaled[:, k] = frac[:, k] - floor
            extent.append(heights[k])
        else:
            lo, hi = frac[:, k].aminmax()
            length = (hi - lo).item()
            scaled[:, k] = (frac[:, k] - lo) / length if length > 0 else 0.0
            extent.append(length)

    def reach(k, nk):  # bin_cutoff in bins of axis k
        return bin_cutoff * nk / extent[k] if extent[k] > 0 else math.inf

    def neighbours(k, nk):
        if pbc[k]:
            return math.ceil(reach(k, nk))
        return min(math.ceil(reach(k, nk)), nk - 1) if nk > 1 else 0

    def count(k, per_cutoff):
        return max(1, int(per_cutoff * extent[k] / bin_cutoff))

    n = [count(k, _BINS_PER_CUTOFF) for k in range(3)]
    m = [neighbours(k, n[k]) for k in range(3)]
    strip = max(range(3), key=lambda k: m[k])
    n[strip] = max(n[strip], count(strip, _STRIP_BINS_PER_CUTOFF))
    m[strip] = neighbours(strip, n[strip])
    while math.prod(nk + 2 * mk for nk, mk in zip(n, m)) > max_bins and max(n) > 1:
        k = max(range(3), key=lambda k: n[k])
        n[k] = max(1, n[k] // 2)
        m[k] = neighbours(k, n[k])
    n_t = torch.tensor(n, dtype=torch.float64, device=frac.device)
    bins = torch.minimum(torch.floor(scaled * n_t), n_t - 1).to(torch.int64)
    along = scaled[:, strip, None] * n[strip] + torch.tensor(
        [-reach(strip, n[strip]), reach(strip, n[strip])], dtype=torch.float64, device=frac.device)
    window = torch.floor(along).clamp_(-m[strip], n[strip] + m[strip] - 1).to(torch.int64)
    window[:, 1] += 1
    return bins, wraps, n, m, strip, window


def _image_reach(pbc, n, m):
    """How many cells each side the images of an atom can lie (``m`` bins of ``n`` per cell)."""
    return [math.ceil(mk / nk) if periodic else 0 for periodic, nk, mk in zip(pbc, n, m)]


def _image_shifts(bins, pbc, n, m):
    """The lattice shifts along each axis that bring an atom's image into the grid padded by ``m``
    bins: per axis ``k``, ``shifts`` ``(2 r_k + 1,)`` (``r_k`` from :func:`_image_reach`) and
    ``valid`` ``(N, 2 r_k + 1)`` bool, and the images' unpadded bin coordinates
    ``(N, 2 r_k + 1)``; the three as lists over the axes."""
    reach = _image_reach(pbc, n, m)
    shifts, valid, coords = [], [], []
    for k in range(3):
        shift = torch.arange(-reach[k], reach[k] + 1, device=bins.device)
        coord = bins[:, k, None] + shift * n[k]  # (N, 2 reach + 1)
        shifts.append(shift)
        valid.append((coord >= -m[k]) & (coord < n[k] + m[k]))
        coords.append(coord)
    return shifts, valid, coords


def _image_count(image_shifts) -> int:
    """How many periodic images :func:`_images` forms from ``image_shifts`` (see
    :func:`_image_shifts`), without forming them."""
    _, valid, _ = image_shifts
    return int((valid[0].sum(1) * valid[1].sum(1) * valid[2].sum(1)).sum())


def _refuse_too_many_images(images: int, cutoff: float, heights):
    """Raise ValueError, before the search, when it would consider more than
    :data:`_MAX_IMAGES` periodic images."""
    if images > _MAX_IMAGES:
        raise ValueError(f"cutoff {cutoff} Å spans too many periodic images ({images}, more than "
                         f"{_MAX_IMAGES}) of a cell this thin: heights {heights} Å")


def _images(image_shifts, m, stride):
    """All periodic images whose bin lies in the grid padded by ``m`` bins on each side.

    image_shifts: of the atoms (see :func:`_image_shifts`); stride: of the linearised padded grid.
    Returns ``(atom, key, shift, own)``, each ``(M,)`` or ``(M, 3)``: atom index, padded-grid
    bin index, lattice shift of each image, and whether it is the atom itself (zero shift).
    Padding along a non-periodic axis stays empty.
    """
    shifts, valid, coords = image_shifts
    reach = [len(shift) // 2 for shift in shifts]
    keys = [((coords[k] + m[k]) * stride[k]).view(-1) for k in range(3)]
    inside = valid[0][:, :, None, None] & valid[1][:, None, :, None] & valid[2][:, None, None, :]
    atom, *which = torch.nonzero(inside, as_tuple=True)
    key = sum(keys[k].index_select(0, atom * len(shifts[k]) + which[k]) for k in range(3))
    shift = torch.stack([shifts[k].index_select(0, which[k]) for k in range(3)], dim=1)
    own = (which[0] == reach[0]) & (which[1] == reach[1]) & (which[2] == reach[2])
    return atom, key, shift, own


class _Grid:
    """The periodic images of all atoms, sorted into a grid of bins padded by ``m`` bins.

    The padded grid is linearised with the strip axis (see :func:`_bins`) running fastest, so
    a run of consecutive bins along it is one contiguous range of sorted images.  An atom's
    candidates lie in ``R`` such runs ("strips"), one for each of the ``(2 m + 1) ** 2`` bins
    around it across the strip axis, each over the atom's window along it.  Attributes
    (``M`` images, ``N`` atoms):

    * ``image_atom`` ``(M,)``, ``image_shift`` ``(M, 3)``: atom and lattice shift of each image;
    * ``bin_start`` ``(n_bins + 1,)``: images of bin ``b`` are ``bin_start[b]:bin_start[b + 1]``;
    * ``own_image`` ``(N,)``: where each atom's unshifted image landed;
    * ``atom_first`` ``(N,)``: padded-grid index of the first bin of each atom's first strip;
    * ``atom_length`` ``(N,)``: bins per strip of each atom;
    * ``strip_offsets`` ``(R,)``: bin offsets of the strips around an atom (``R // 2`` is the
      atom's own strip).
    """

    def __init__(self, bins, window, image_shifts, n, m, strip):
        device = bins.device
        a, b = [k for k in range(3) if k != strip]
        size = [nk + 2 * mk for nk, mk in zip(n, m)]
        stride = [0, 0, 0]
        stride[strip], stride[a], stride[b] = 1, size[strip], size[strip] * size[a]
        atom, key, shift, own = _images(image_shifts, m, stride)
        order = torch.argsort(key, stable=True)
        n_bins = math.prod(size)
        self.bin_start = torch.zeros(n_bins + 1, dtype=torch.int64, device=device)
        self.bin_start[1:] = torch.cumsum(torch.bincount(key, minlength=n_bins), dim=0)
        self.image_atom = atom.index_select(0, order)
        self.image_shift = shift.index_select(0, order)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=device)
        own = torch.nonzero(own).squeeze(1)
        self.own_image = torch.empty(bins.shape[0], dtype=torch.int64, device=device)
        self.own_image[atom[own]] = rank[own]
        self.atom_first = bins[:, a] * stride[a] + bins[:, b] * stride[b] + window[:, 0] + m[strip]
        self.atom_length = window[:, 1] - window[:, 0]
        offsets_a = torch.arange(2 * m[a] + 1, device=device) * stride[a]
        offsets_b = torch.arange(2 * m[b] + 1, device=device) * stride[b]
        self.strip_offsets = (offsets_a[:, None] + offsets_b[None, :]).reshape(-1)
        self._shape = (size[b], size[a], size[strip])
        self._windows = (2 * m[b] + 1, 2 * m[a] + 1)
        # atom_first in the (n[b], n[a], size[strip] + 1) layout of candidates_per_atom's sums
        self._atom_box = ((bins[:, b] * n[a] + bins[:, a]) * (size[strip] + 1)
                          + window[:, 0] + m[strip])

    def candidates_per_atom(self, self_interaction):
        """``(N,)`` number of images in the ranges of each atom (see ``ranges``)."""
        # Images before each bin, with one more column along the strip axis (the start of the
        # next row), summed over the strips of an atom with running sums along the two other
        # axes; an atom's count is that sum at the end of its strips less that at their start.
        size_b, size_a, size_s = self._shape
        boxes = self.bin_start.as_strided((size_b, size_a, size_s + 1),
                                          (size_a * size_s, size_s, 1))
        for dim, window in enumerate(self._windows):
            running = torch.cumsum(boxes, dim=dim)
            boxes = running.narrow(dim, window - 1, running.shape[dim] - window + 1).clone()
            boxes.narrow(dim, 1, boxes.shape[dim] - 1).sub_(
                running.narrow(dim, 0, running.shape[dim] - window))
        boxes = boxes.reshape(-1)
        return (boxes.index_select(0, self._atom_box + self.atom_length)
                - boxes.index_select(0, self._atom_box) - (0 if self_interaction else 1))

    def ranges(self, a0, a1, self_interaction):
        """Image ranges to search for atoms ``a0:a1``: ``(start, count)``, each ``(A, R')``.

        Without self-interaction the atom's own strip is split in two ranges around its own
        image (``R' = R + 1``), so an atom never meets itself unshifted.
        """
        first = self.atom_first[a0:a1, None] + self.strip_offsets
        start = self.bin_start.index_select(0, first.view(-1)).view(a1 - a0, -1)
        end = self.bin_start.index_select(0, (first + self.atom_length[a0:a1, None]).view(-1))
        end = end.view(a1 - a0, -1)
        if not self_interaction:
            middle = self.strip_offsets.numel() // 2
            own = self.own_image[a0:a1, None]
            start = torch.cat([start, own + 1], dim=1)
            end = torch.cat([end, end[:, middle, None]], dim=1)
            end[:, middle, None] = own
        return start, end - start


def _chunks(totals, limit):
    """Split atoms into runs ``(a0, a1)`` of about ``limit`` candidates (``totals`` ``(N,)``)."""
    ends = torch.cumsum(totals, dim=0)
    marks = torch.arange(1, int(ends[-1]) // limit + 1, device=totals.device) * limit
    cuts = torch.searchsorted(ends, marks, right=True).tolist()
    bounds = sorted(set([0, totals.numel()] + [c for c in cuts if 0 < c < totals.numel()]))
    return list(zip(bounds[:-1], bounds[1:]))


class _Edges:
    """The edges found so far, stored so that the final arrays need no further copy.

    Second atoms and shifts are appended chunk by chunk; the first atoms (sorted) are filled
    in at the end from the counts per atom.  ``j`` lives at ``[capacity, capacity + E)`` of one
    flat buffer and ``i`` goes to ``[capacity - E, capacity)``, so ``edge_index`` is a contiguous
    view.  The capacity is estimated from the fraction of candidates kept so far, grown when
    short and trimmed (copied) at the end when far too large.
    """

    def __init__(self, n_atoms, n_candidates, device):
        self.n_candidates, self.device = n_candidates, device
        self.capacity = self.size = self.tested = 0
        self.ij = self.shifts = None
        self.per_atom = torch.zeros(n_atoms, dtype=torch.int64, device=device)

    def reserve(self, n_new, n_tested):
        """Make room for ``n_new`` more edges found among ``n_tested`` more candidates."""
        self.tested += n_tested
        needed = self.size + n_new
        if needed <= self.capacity and self.ij is not None:
            return
        expected = (needed * self.n_candidates) // max(1, self.tested)
        capacity = min(self.n_candidates, max(needed, expected + expected // 5 + 1024,
                                              2 * self.capacity))
        ij = _fresh_int64(2 * capacity, device=self.device)
        shifts = _fresh_int64(capacity, 3, device=self.device)
        if self.size:
            ij[capacity:capacity + self.size] = self.j()
            shifts[:self.size] = self.shifts[:self.size]
        self.ij, self.shifts, self.capacity = ij, shifts, capacity

    def j(self, start=0, stop=None):
        return self.ij[self.capacity + start:self.capacity + (self.size if stop is None else stop)]

    def result(self):
        """``edge_index`` ``(2, E)`` and ``shifts`` ``(E, 3)`` of all edges, sorted by ``i``."""
        n = self.size
        if n == 0:
            return (torch.empty(2, 0, dtype=torch.int64, device=self.device),
                    torch.empty(0, 3, dtype=torch.int64, device=self.device))
        i = self.ij[self.capacity - n:self.capacity]
        # A running count of the atoms whose edges have started.
        first_edge = torch.cumsum(self.per_atom, dim=0) - self.per_atom
        first_edge = first_edge[first_edge < n]
        i.zero_().index_add_(0, first_edge, torch.ones_like(first_edge))
        i.cumsum_(dim=0).sub_(1)
        edge_index = self.ij[self.capacity - n:self.capacity + n].view(2, n)
        shifts = self.shifts[:n]
        if self.capacity > n + n // 4 + 4096:  # do not pin much unused memory
            return edge_index.clone(), shifts.clone()
        return edge_index, shifts


class _CompiledCellList:
    """The library built from ``cell_list.c``: the cell list of :func:`_cell_list` on CPU."""

    def __init__(self, path):
        self.path = path
        library = ctypes.CDLL(str(path))
        self._search, self._fill, self._free, self._remove = (
            library.cell_list_search, library.cell_list_fill, library.cell_list_free,
            library.cell_list_remove)
        self._search.restype = ctypes.c_void_p
        self._search.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 4 + [ctypes.c_double] * 5 + [
            ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        self._fill.restype = self._free.restype = self._remove.restype = None
        self._remove.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_int64]
        self._fill.argtypes = [ctypes.c_void_p, ctypes.c_int] + [ctypes.c_void_p] * 3
        self._free.argtypes = [ctypes.c_void_p]

    def search(self, positions, cell, pbc, inverse, cutoff, self_interaction, max_bins):
        """``edge_index`` ``(2, E)`` and ``shifts`` ``(E, 3)`` as :func:`cell_list` returns them,
        for CPU tensors ``positions`` ``(N, 3)`` (N > 0) and ``cell`` ``(3, 3)``; ``inverse``
        ``(3, 3)`` float64: of the effective basis (:func:`_effective_basis`)."""
        # The library measures in float64 from wrapped positions: below cutoff - band a pair is
        # in, at cutoff + band or above it is out, and the few in between (returned as border
        # edges) are decided with edge_vectors' exact formula.
        band = _rounding_margin(positions.dtype, positions, cell, cutoff) * (
            1 + torch.finfo(torch.float64).eps / torch.finfo(positions.dtype).eps)
        arrays = [positions.to(torch.float64).contiguous(), cell.to(torch.float64).contiguous(),
                  inverse.contiguous()]
        totals = (ctypes.c_int64 * 2)()
        threads = torch.get_num_threads()
        search = self._search(
            positions.shape[0], *[a.data_ptr() for a in arrays], (ctypes.c_int32 * 3)(*pbc),
            cutoff + band, cutoff - band, (cutoff + band) * 1.001, _COMPILED_BINS_PER_CUTOFF,
            _COMPILED_STRIP_BINS_PER_CUTOFF, max_bins, int(self_interaction), threads, totals)
        if not search:
            raise MemoryError(f"no memory for the cell list of {positions.shape[0]} atoms")
        n_edges, n_border = totals
        try:
            edge_index = _fresh_int64(2, n_edges, device="cpu")
            shifts = _fresh_int64(n_edges, 3, device="cpu")
            border = torch.empty(n_border, dtype=torch.int64)
        except BaseException:
            self._free(search)
            raise
        self._fill(search, threads, edge_index.data_ptr(), shifts.data_ptr(), border.data_ptr())
        if n_border:
            out = border[~_within(positions, cell, edge_index[:, border], shifts[border], cutoff)]
            if out.numel():  # removed in place (float32 positions: most calls have a few)
                self._remove(n_edges, edge_index.data_ptr(), shifts.data_ptr(), out.data_ptr(),
                             out.numel())
                kept = n_edges - out.numel()
                return edge_index.view(-1)[:2 * kept].view(2, kept), shifts[:kept]
        return edge_index, shifts


@functools.lru_cache(maxsize=None)
def _compiled_search():
    """The compiled cell list, built on first use; ``None`` if disabled
    (``ASE_EQUIVARIANT_NATIVE=0``) or if it cannot be built here (a warning says why, once)."""
    return compiled.load(_SOURCE, _CompiledCellList, "pure-torch cell list")


def _cell_list(positions, cell, pbc, basis, cutoff, self_interaction, max_bins):
    """Core of :func:`cell_list` on validated inputs (see there): the compiled search on CPU
    where it can be built, else the pure-torch one."""
    device = positions.device
    n_atoms = positions.shape[0]
    if n_atoms == 0:
        return (torch.empty(2, 0, dtype=torch.int64, device=device),
                torch.empty(0, 3, dtype=torch.int64, device=device))
    if max_bins is None:
        max_bins = 8 * n_atoms + 4096
    inverse, heights = _inverse(basis)
    library = _compiled_search() if device.type == "cpu" else None
    if library is not None:
        # the periodic images within the cutoff of the cell, about: what its loops visit
        _refuse_too_many_images(round(n_atoms * math.prod(1 + 2 * cutoff / h if periodic else 1
                                                          for h, periodic in zip(heights, pbc))),
                                cutoff, heights)
        return library.search(positions, cell, pbc, inverse, cutoff, self_interaction, max_bins)
    return _torch_cell_list(positions, cell, pbc, inverse, heights, cutoff, self_interaction,
                            max_bins)


def _torch_cell_list(positions, cell, pbc, inverse, heights, cutoff, self_interaction, max_bins):
    """The cell list in torch operations, on any device (see :func:`_cell_list`; ``inverse``
    ``(3, 3)``: of the effective basis, ``heights``: the cell's perpendicular heights, Å)."""
    device, dtype = positions.device, positions.dtype
    n_atoms = positions.shape[0]
    # Candidate pairs are measured from wrapped positions, in float32 unless the coordinates are
    # too far-flung for it; that differs from the exact formula of edge_vectors by rounding
    # only: below cutoff - band a pair is in, at cutoff + band or above it is out, and the few
    # in between are decided exactly.
    margin = _rounding_margin(dtype, positions, cell, cutoff)
    frac = positions.to(torch.float64) @ inverse.to(device)
    bins, wraps, n, m, strip, window = _bins(frac, pbc, heights, (cutoff + margin) * 1.001,
                                             max_bins)
    image_shifts = _image_shifts(bins, pbc, n, m)
    _refuse_too_many_images(_image_count(image_shifts), cutoff, heights)  # the memory it needs
    grid = _Grid(bins, window, image_shifts, n, m, strip)
    wrapped = positions - wraps.to(dtype) @ cell
    origin = wrapped.min(dim=0).values  # keeps the coordinates small
    image_pos = (wrapped.index_select(0, grid.image_atom) + grid.image_shift.to(dtype) @ cell
                 - origin)
    search_dtype = torch.float32
    band = margin + _rounding_margin(search_dtype, image_pos, cell, cutoff)
    if dtype == torch.float64 and band > 2e-3 * cutoff:
        search_dtype, band = dtype, 2 * margin
    image_pos = image_pos.T.to(search_dtype)
    n_images = image_pos.shape[1]
    wrapped_any = bool(wraps.any())
    wrapped = (wrapped - origin).T.to(search_dtype).contiguous()

    def pairs(i, image, j=None, shifts=None):
        """Second atom ``(P,)`` and cell shift ``(P, 3)`` of pairs (atom ``i``, sorted image),
        each ``(P,)``; written into ``j`` and ``shifts`` when given.  ``i`` is read only when
        some atom was wrapped (it may be None otherwise)."""
        j = torch.index_select(grid.image_atom, 0, image, out=j)
        shifts = torch.index_select(grid.image_shift, 0, image, out=shifts)
        if wrapped_any:
            shifts += wraps.index_select(0, i) - wraps.index_select(0, j)
        return j, shifts

    # Candidates per atom decide the chunks.
    totals = grid.candidates_per_atom(self_interaction)
    # Points at infinity after the images pad _candidates' rows.
    image_pos = torch.cat([image_pos, torch.full((3, int(totals.max()) + 1), math.inf,
                                                 dtype=search_dtype, device=device)], dim=1)
    edges = _Edges(n_atoms, int(totals.sum()), device)
    for a0, a1 in _chunks(totals, _CANDIDATES_PER_CHUNK):
        start, count = grid.ranges(a0, a1, self_interaction)
        image, d2, found = _candidates(start, count, wrapped[:, a0:a1], image_pos, n_images,
                                       cutoff + band)
        border = torch.nonzero(d2 >= (cutoff - band) ** 2).squeeze(1)
        if border.numel():
            i = torch.searchsorted(torch.cumsum(found, dim=0), border, right=True) + a0
            j, shifts = pairs(i, image[border])
            out = ~_within(positions, cell, torch.stack([i, j]), shifts, cutoff)
            keep = torch.ones_like(image, dtype=torch.bool)
            keep[border[out]] = False
            image = image[keep]
            found -= torch.bincount(i[out] - a0, minlength=a1 - a0)
        edges.reserve(image.numel(), int(totals[a0:a1].sum()))
        size = edges.size + image.numel()
        i = torch.repeat_interleave(found, output_size=image.numel()) + a0 if wrapped_any else None
        pairs(i, image, edges.j(edges.size, size), edges.shifts[edges.size:size])
        edges.per_atom[a0:a1] = found
        edges.size = size
    return edges.result()


def _candidates(start, count, wrapped, image_pos, n_images, cutoff):
    """Measure the candidate pairs of some consecutive atoms; keep those within the cutoff.

    start, count ``(A, R)``: for each of the ``A`` atoms, ``R`` contiguous ranges of sorted
    images.  wrapped ``(3, A)``: the atoms' coordinates.  image_pos ``(3, M + pad)``:
    coordinates of the ``M = n_images`` sorted images, then points at infinity (``pad`` above
    any atom's number of candidates).  Returns ``(image, d2, found)``: sorted image index and
    squared distance (``< cutoff ** 2``), each ``(P,)``, of the pairs found, ordered by atom;
    and ``found`` ``(A,)`` int64, how many pairs each atom has.  ``image`` and ``d2`` live in
    scratch space, valid until the next call.

    Each atom's candidates are laid out in consecutive rows of a ``(rows, width)`` matrix (one
    row for most atoms, several for the few with many candidates), padded up to the end of the
    atom's last row with points at infinity; ``width`` is chosen to waste little padding.
    """
    device, dtype = start.device, image_pos.dtype
    n_atoms = count.shape[0]
    total = count.sum(dim=1)
    width = _row_width(total)
    rows = torch.div(total + width - 1, width, rounding_mode="floor").clamp_(min=1)
    row_end = torch.cumsum(rows, dim=0)
    n_rows = int(row_end[-1])
    atom_start = (row_end - rows) * width  # first slot of each atom
    # The image index of the slots is a running sum of steps of 1 that jump, at the start of
    # each range, from where the previous range ended (previous slot's value + 1); after an
    # atom's last range they jump to the points at infinity.  Jumps meeting at one slot add up,
    # so empty ranges cancel out.
    end = start + count
    slot = torch.cat([atom_start[:, None] + torch.cumsum(count, dim=1) - count,
                      (atom_start + total)[:, None]], dim=1)
    previous = torch.cat([end.new_ones(n_atoms, 1), end], dim=1)
    previous[1:, 0] = n_images + (rows * width - total)[:-1]
    target = torch.cat([start, start.new_full((n_atoms, 1), n_images)], dim=1)
    size = n_rows * width
    step = scratch("step", size + 1, torch.int32, device).fill_(1)
    step.index_add_(0, slot.view(-1), (target - previous).view(-1).to(torch.int32))
    image = torch.cumsum(step[:-1], dim=0, dtype=torch.int32,
                         out=scratch("image", size, torch.int32, device))
    row_atom = torch.repeat_interleave(rows, output_size=n_rows)
    d2 = scratch("d2", size, dtype, device)
    d = scratch("d", size, dtype, device)
    for c in range(3):
        out = d2 if c == 0 else d
        torch.index_select(image_pos[c], 0, image, out=out)
        out.view(n_rows, width).sub_(wrapped[c].index_select(0, row_atom)[:, None])
        if c == 0:
            d2.mul_(d2)
        else:
            d2.addcmul_(d, d)
    inside = torch.lt(d2, cutoff * cutoff, out=scratch("inside", size, torch.bool, device))
    keep = torch.nonzero(inside, out=scratch("keep", 0, torch.int64, device)).view(-1)
    found_image = torch.index_select(image, 0, keep, out=scratch("found", 0, torch.int32, device))
    found_d2 = torch.index_select(d2, 0, keep, out=scratch("found_d2", 0, dtype, device))
    found_end = torch.searchsorted(keep, row_end * width)  # pairs of this atom and earlier ones
    return found_image, found_d2, torch.diff(found_end, prepend=found_end.new_zeros(1))


def _row_width(total):
    """Row width for candidate counts ``total`` ``(A,)``: of ``_ROW_WIDTHS`` widths from an
    eighth of the largest count to the largest, the one with the fewest slots (padding
    included) plus ``_ROW_COST`` slots per row."""
    histogram = torch.bincount(total)
    values = torch.nonzero(histogram).squeeze(1)  # the distinct counts
    atoms = histogram.index_select(0, values)
    largest = max(1, int(values[-1]))
    widths = torch.linspace(max(1, largest / 8), largest, _ROW_WIDTHS, dtype=torch.float64,
                            device=total.device).ceil_().to(torch.int64)
    rows = torch.div(values[:, None] + widths - 1, widths, rounding_mode="floor").clamp_(min=1)
    cost = (rows * atoms[:, None]).sum(dim=0) * (widths + _ROW_COST)
    return int(widths[int(torch.argmin(cost))])


def cell_list(positions, cell, pbc, cutoff, self_interaction=False, max_bins=None):
    """Full neighbour list of one structure with a linear-scaling cell list.

    Runs on the device of ``positions``: on CPU the compiled search of ``cell_list.c``, elsewhere
    (or without a C compiler) torch operations without Python loops over atoms.

    Parameters
    ----------
    positions : ``(N, 3)`` float32/float64 tensor (Å); may lie outside the cell (unwrapped).
    cell : ``(3, 3)`` tensor, rows are lattice vectors (Å); rows along non-periodic axes are
        ignored (all zero for a molecule).
    pbc : three bools (or one), periodicity per cell vector.
    cutoff : float, Å.  Pairs with ``|D| < cutoff`` (strict) are returned.
    self_interaction : bool, also return ``(i, i, 0)`` for every atom.
    max_bins : int, optional cap on the number of bins (memory); default ``8 N + 4096``.

    Returns
    -------
    edge_index : ``(2, E)`` int64, ``edge_index[0] = i``, ``edge_index[1] = j``; sorted by
        ``i``, in an order within each ``i`` that depends only on the input.
    shifts : ``(E, 3)`` int64 cell shifts ``S``, with ``D = positions[j] - positions[i] +
        S @ cell`` (see :func:`edge_vectors`) for the positions as given.

    Every periodic image within the cutoff is its own edge, self-images included.  The test
    ``|D| < cutoff`` is made with :func:`edge_vectors` in the dtype of ``positions``.  Raises
    ValueError, before any work, for wrong shapes or dtypes, NaN/inf, a cutoff that is not a
    finite positive number or a singular cell along a periodic axis; and when the cell is so
    thin for the cutoff that more than ~3 x 10^7 periodic images would be needed.
    """
    positions, cell, pbc, basis = _check_system(positions, cell, pbc)
    cutoff = _check_cutoff(cutoff)
    with torch.no_grad():
        return _cell_list(positions, cell, pbc, basis, cutoff, bool(self_interaction), max_bins)


class NeighborList:
    """Verlet neighbour list: a cell list built at ``cutoff + skin``, reused while it can be.

    ``update(positions, cell, pbc)`` returns exactly what ``cell_list(positions, cell, pbc,
    cutoff, self_interaction)`` would (the same set of edges, sorted by ``i``), but rebuilds the
    list only when needed.  The stored list holds every edge shorter than ``cutoff + skin`` at
    the last build; it still holds every edge shorter than ``cutoff`` as long as

        2 * max_i |u_i| + (cutoff + skin) * ||A - 1||_2 <= skin

    where ``A = B0^-1 B`` maps the cell at the last build (``B0``) to the current one (``B``) and
    ``u_i = r_i - r0_i A`` is each atom's displacement apart from the affine deformation of the
    cell (for a fixed cell: how far it moved since the last build).  So a rigid cell allows
    moves of up to ``skin / 2``, and a cell that deforms (NPT) uses up part of the skin the way
    LAMMPS accounts for box changes.  A change of ``pbc``, of the number of atoms, of dtype or
    device, and ``skin=0`` always rebuild.  Positions wrapped back into the cell count as large
    moves (they rebuild).

    Parameters
    ----------
    cutoff : float, Å.
    skin : float, Å (``>= 0``).
    self_interaction : bool, also return ``(i, i, 0)`` for every atom.

    Attributes
    ----------
    n_builds : int, how many times the list has been built.
    """

    def __init__(self, cutoff, skin=1.0, self_interaction=False):
        self.cutoff = _check_cutoff(cutoff)
        if isinstance(skin, bool) or not isinstance(skin, numbers.Real) or not (
                math.isfinite(skin) and skin >= 0):
            raise ValueError(f"skin must be a finite number >= 0, got {skin!r}")
        self.skin = float(skin)
        self.self_interaction = bool(self_interaction)
        self.n_builds = 0
        self._built = None  # (positions, basis, pbc, edge_index, shifts) of the last build

    def update(self, positions, cell, pbc):
        """Edges of the current structure.

        positions ``(N, 3)`` float tensor (Å), cell ``(3, 3)`` (rows are lattice vectors), pbc
        three bools.  Returns ``edge_index`` ``(2, E)`` int64 and ``shifts`` ``(E, 3)`` int64 with
        ``|positions[j] - positions[i] + shifts @ cell| < cutoff``, on the device of
        ``positions``, sorted by ``i`` (see :func:`cell_list`).
        """
        positions, cell, pbc, basis = _check_system(positions, cell, pbc)
        with torch.no_grad():
            if self._needs_build(positions, basis, pbc):
                edge_index, shifts = _cell_list(positions, cell, pbc, basis,
                                                self.cutoff + self.skin, self.self_interaction,
                                                None)
                self._built = (positions.clone(), basis, pbc, edge_index, shifts)
                self.n_builds += 1
            _, _, _, edge_index, shifts = self._built
            if self.skin == 0:
                return edge_index, shifts
            keep = torch.nonzero(_within(positions, cell, edge_index, shifts, self.cutoff))
            keep = keep.view(-1)
            kept_index = _fresh_int64(2, keep.numel(), device=keep.device)
            kept_shifts = _fresh_int64(keep.numel(), 3, device=keep.device)
            torch.index_select(edge_index, 1, keep, out=kept_index)
            return kept_index, torch.index_select(shifts, 0, keep, out=kept_shifts)

    def _needs_build(self, positions, basis, pbc):
        if self._built is None or self.skin == 0:
            return True
        positions0, basis0, pbc0, _, _ = self._built
        if (pbc != pbc0 or positions.shape != positions0.shape
                or positions.dtype != positions0.dtype or positions.device != positions0.device):
            return True
        if torch.equal(basis, basis0):
            moved = positions - positions0
            deformation = 0.0
        else:
            affine = torch.linalg.solve(basis0, basis)  # B0^-1 B
            moved = positions - positions0 @ affine.to(positions)
            deformation = torch.linalg.matrix_norm(affine - torch.eye(3, dtype=affine.dtype),
                                                   ord=2).item()
        largest = torch.linalg.vector_norm(moved, dim=1).max().item() if len(moved) else 0.0
        tolerance = 2 * _rounding_margin(positions.dtype, positions, basis,
                                         self.cutoff + self.skin)
        return 2 * largest + (self.cutoff + self.skin) * deformation + tolerance > self.skin


def _pair_cutoff(cutoff, species):
    """Interpret an ASE-style cutoff for atoms with atomic numbers ``species`` ``(N,)``.

    Returns ``(largest, pair)``: the largest pair cutoff (Å) and a function of ``(i, j)``
    (int64 tensors ``(E,)``) giving the cutoff of each pair, a float or an ``(E,)`` tensor.
    """
    if isinstance(cutoff, dict):
        from ase.data import atomic_numbers
        if not cutoff:
            raise ValueError("cutoff dict is empty: give {(Z1, Z2): r, ...}")
        table = torch.zeros(119, 119, dtype=torch.float64)
        for key, value in cutoff.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ValueError(f"cutoff dict keys must be pairs of elements, got {key!r}")
            z = []
            for element in key:
                if isinstance(element, str) and element in atomic_numbers:
                    element = atomic_numbers[element]
                if isinstance(element, bool) or not isinstance(element, numbers.Integral) or not (
                        0 <= element < 119):
                    raise ValueError(f"unknown element {element!r} in cutoff dict key {key!r}")
                z.append(int(element))
            value = _check_radius(value, f"cutoff[{key!r}]")
            table[z[0], z[1]] = table[z[1], z[0]] = value
        species = torch.as_tensor(np.asarray(species, dtype=np.int64))
        return float(table.max()), lambda i, j: table[species[i], species[j]]
    if isinstance(cutoff, numbers.Real) or np.ndim(cutoff) == 0:
        cutoff = _check_cutoff(cutoff)
        return cutoff, lambda i, j: cutoff
    radii = np.asarray(cutoff)
    if radii.shape != (len(species),) or not np.issubdtype(radii.dtype, np.number):
        raise ValueError(f"per-atom cutoff radii must be {len(species)} numbers (one per atom), "
                         f"got an array of shape {radii.shape} and dtype {radii.dtype}")
    radii = torch.as_tensor(radii, dtype=torch.float64)
    if not bool(torch.isfinite(radii).all()) or bool((radii < 0).any()):
        raise ValueError("per-atom cutoff radii must be finite and >= 0")
    largest = 2 * float(radii.max()) if len(radii) else 0.0
    return largest, lambda i, j: radii[i] + radii[j]


def _check_radius(value, name):
    """``value`` as a float, or ValueError unless it is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _import(module, package):
    """Import an optional backend, or raise ImportError saying how to install it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"this backend needs the {package!r} package: "
                          f"pip install {package}") from error


def _search_torch(positions, cell, pbc, basis, cutoff, max_bins):
    return _cell_list(positions, cell, pbc, basis, cutoff, False, max_bins)


def _search_vesin(positions, cell, pbc, basis, cutoff, max_bins):
    vesin = _import("vesin", "vesin")
    i, j, shifts = vesin.NeighborList(cutoff=cutoff, full_list=True).compute(
        points=positions.numpy(), box=cell.numpy(), periodic=list(pbc), quantities="ijS")
    return (torch.as_tensor(np.stack([i, j]).astype(np.int64)),
            torch.as_tensor(shifts.astype(np.int64)))


def _search_matscipy(positions, cell, pbc, basis, cutoff, max_bins):
    neighbours = _import("matscipy.neighbours", "matscipy")
    # matscipy needs a non-singular cell; rows along non-periodic axes do not enter D.
    i, j, shifts = neighbours.neighbour_list("ijS", positions=positions.numpy(),
                                             cell=basis.numpy(), pbc=np.array(pbc),
                                             cutoff=cutoff)
    return (torch.as_tensor(np.stack([i, j]).astype(np.int64)),
            torch.as_tensor(shifts.astype(np.int64)))


def _search_torch_cluster(positions, cell, pbc, basis, cutoff, max_bins):
    torch_cluster = _import("torch_cluster", "torch-cluster")
    # Wrap atoms into the cell and replicate them over every image that can reach it.
    inv = torch.linalg.inv(basis)
    heights = 1.0 / inv.norm(dim=0)
    frac = positions @ inv
    wraps = torch.where(torch.tensor(pbc), torch.floor(frac), 0.0).to(torch.int64)
    wrapped = positions - wraps.to(positions.dtype) @ cell
    reach = [math.ceil(cutoff / float(heights[k])) if pbc[k] else 0 for k in range(3)]
    image_shifts = torch.cartesian_prod(*[torch.arange(-r, r + 1) for r in reach]).view(-1, 3)
    images = (wrapped[None] + (image_shifts.to(positions.dtype) @ cell)[:, None]).reshape(-1, 3)
    n_atoms = positions.shape[0]
    limit = 64
    while True:  # radius() returns at most max_num_neighbors per atom: retry until none is cut
        i, image = torch_cluster.radius(images, wrapped, cutoff, max_num_neighbors=limit)
        if i.numel() == 0 or int(torch.bincount(i).max()) < limit:
            break
        limit *= 2
    j = image % n_atoms
    shifts = image_shifts[image // n_atoms] + wraps[i] - wraps[j]
    return torch.stack([i, j]), shifts


_BACKENDS = {"torch": _search_torch, "vesin": _search_vesin, "matscipy": _search_matscipy,
             "torch-cluster": _search_torch_cluster}


def neighbor_list(quantities, atoms, cutoff, self_interaction=False, max_nbins=None, *,
                  backend="torch"):
    """Neighbour list of an :class:`ase.Atoms`, a drop-in for ``ase.neighborlist.neighbor_list``.

    Parameters
    ----------
    quantities : str, any of ``"i"`` (first atom), ``"j"`` (second atom), ``"d"`` (distance, Å),
        ``"D"`` (distance vector ``positions[j] - positions[i] + S @ cell``, Å) and ``"S"``
        (integer cell shift), returned in that order.
    atoms : ase.Atoms.
    cutoff : a float (Å); or one radius per atom (a pair is within ``r_i + r_j``); or a dict
        ``{(Z1, Z2): r}`` of pair cutoffs (atomic numbers or symbols, symmetric; pairs not in
        it have no neighbours).
    self_interaction : bool, also return every atom as its own neighbour (``d = 0``).
    max_nbins : int, optional limit on the number of bins (memory) of the torch cell list.
    backend : ``"torch"`` (default, :func:`cell_list`), or ``"vesin"``, ``"matscipy"`` or
        ``"torch-cluster"`` when that package is installed.  All backends return the same list.

    Returns
    -------
    One numpy array per letter, as a tuple (a single array for one letter): ``i``, ``j``
    ``(E,)`` int64, ``d`` ``(E,)`` float64, ``D`` ``(E, 3)`` float64, ``S`` ``(E, 3)`` int64.
    The list is full (both ``(i, j)`` and ``(j, i)``), keeps every periodic image within the
    cutoff, tests ``d < cutoff`` strictly and is sorted by ``i``.
    """
    if not isinstance(quantities, str) or set(quantities) - set("ijdDS"):
        raise ValueError(f"quantities must be a string of the letters i, j, d, D, S; "
                         f"got {quantities!r}")
    if backend not in _BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(_BACKENDS)}")
    positions, cell, pbc, basis = _check_system(
        torch.as_tensor(np.asarray(atoms.positions, dtype=np.float64)),
        torch.as_tensor(np.asarray(atoms.cell.array, dtype=np.float64)), atoms.pbc)
    largest, pair_cutoff = _pair_cutoff(cutoff, atoms.numbers)
    if positions.shape[0] and largest > 0:
        # Ask the backend for a little more, and decide with edge_vectors' exact formula.
        search = largest + _rounding_margin(positions.dtype, positions, cell, largest)
        with torch.no_grad():
            edge_index, shifts = _BACKENDS[backend](positions, cell, pbc, basis, search,
                                                    max_nbins)
        not_self = (edge_index[0] != edge_index[1]) | (shifts != 0).any(dim=1)
        edge_index, shifts = edge_index[:, not_self], shifts[not_self]
    else:
        edge_index = torch.empty(2, 0, dtype=torch.int64)
        shifts = torch.empty(0, 3, dtype=torch.int64)
    if self_interaction:
        atom = torch.arange(positions.shape[0])
        edge_index = torch.cat([edge_index, torch.stack([atom, atom])], dim=1)
        shifts = torch.cat([shifts, torch.zeros(len(atom), 3, dtype=torch.int64)])
    vectors = edge_vectors(positions, cell, edge_index, shifts)
    distances = _square_root_((vectors * vectors).sum(dim=1))
    keep = distances < pair_cutoff(edge_index[0], edge_index[1])
    order = np.argsort(edge_index[0][keep].numpy(), kind="stable")
    columns = {"i": edge_index[0][keep], "j": edge_index[1][keep], "d": distances[keep],
               "D": vectors[keep], "S": shifts[keep]}
    results = tuple(columns[q].numpy()[order] for q in quantities)
    return results[0] if len(results) == 1 else results
