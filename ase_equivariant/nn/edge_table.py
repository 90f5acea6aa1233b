"""The edges of one model call laid out for the convolutions, built once and shared by every layer.

Edges (sorted by receiver) are cut into *blocks* of whole receivers and about a cache's worth of
edges, each a dense ``(receiver, slot)`` table.
"""
from typing import List, NamedTuple

import torch


def receiver_blocks(receivers: torch.Tensor, n: int, size: int):
    """Split edges sorted by receiver into blocks of about ``size`` edges holding whole receivers.

    Args:
        receivers: ``(E,)`` receiver indices in ``0 .. n-1``, sorted.
        n: the number of receiving atoms.
        size: the target number of edges per block.

    Returns:
        a list of ``(r0, r1, b0, b1)``: block edges ``b0:b1`` are exactly those received by atoms
        ``r0 .. r1-1``. Blocks cover ``0 .. n`` (a block may have no edges).
    """
    e = receivers.shape[0]
    if e <= size:
        return [(0, n, 0, e)]
    rows = sorted(set([0, n] + receivers[size::size].tolist()))
    bounds = torch.searchsorted(receivers, torch.tensor(rows, device=receivers.device)).tolist()
    return list(zip(rows[:-1], rows[1:], bounds[:-1], bounds[1:]))


class EdgeBlock(NamedTuple):
    """Receivers ``r0 .. r0+n-1`` with all their edges, as an ``(n, slots)`` table (row-major).

    ``edges`` and ``senders`` are ``(n * slots,)`` int64: the edge in each slot (``E``, the number
    of edges, for an empty slot) and its sending atom (0 when empty). ``counts`` ``(n,)`` int64:
    the edges of each receiver, which fill its first slots. ``pairs`` ``(n * slots,)`` int64: the
    pair (see :func:`edge_pairs`) of the edge in each slot (0 when empty). ``phases``
    ``(n * slots,)`` int8: 1 for the edge of its pair that :func:`edge_pairs` names (``first``), 2
    for the other, 0 for an empty slot; over all blocks, each pair has one slot of phase 1 and at
    most one of phase 2. ``slots`` is the most edges of one receiver (0: no edges).
    """

    r0: int
    n: int
    slots: int
    edges: torch.Tensor
    senders: torch.Tensor
    counts: torch.Tensor
    pairs: torch.Tensor
    phases: torch.Tensor


def edge_pairs(edge_index: torch.Tensor, shifts: torch.Tensor):
    """Group the edges into pairs of reverse edges: ``i → j`` with shift ``S`` and ``j → i`` with
    ``-S`` (equal lengths). An edge whose reverse is not in the list is a pair of its own.

    Args:
        edge_index: ``(2, E)`` int64.
        shifts: ``(E, 3)`` integer cell shifts (any dtype holding integers).

    Returns:
        pair: ``(E,)`` int64, the pair of each edge, in ``0 .. P-1``, numbered in the order of the
            pairs' lower atom index.
        first: ``(P,)`` int64, an edge of each pair: the one received by its lower atom index
            where there is one, so that the ``first`` edges of pairs ``0, 1, ...`` come in the
            order of their receivers.
    """
    e = edge_index.shape[1]
    device = edge_index.device
    if e == 0:
        return torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, dtype=torch.long, device=device)
    i, j = edge_index
    s = shifts.round().long() if shifts.is_floating_point() else shifts.long()
    # orient every edge the same way as its reverse: from the lower index, or for a self-image
    # (i == j) with the first non-zero shift component positive
    first_nonzero = s.gather(1, (s != 0).long().argmax(dim=1, keepdim=True)).squeeze(1)
    flip = (i > j) | ((i == j) & (first_nonzero < 0))
    a, b = torch.where(flip, j, i), torch.where(flip, i, j)
    s = torch.where(flip.unsqueeze(1), -s, s)
    reach = int(s.abs().max())
    span, n = 2 * reach + 1, int(edge_index.max()) + 1
    if n * n * span**3 < 2**62:  # one int64 key per orientation-free edge
        key = ((a * n + b) * span + s[:, 0] + reach) * span**2 + (s[:, 1] + reach) * span + s[:, 2] + reach
        _, pair = torch.unique(key, return_inverse=True)
    else:
        _, pair = torch.unique(torch.stack([a, b, s[:, 0], s[:, 1], s[:, 2]], dim=1), dim=0, return_inverse=True)
    first = torch.empty(int(pair.max()) + 1, dtype=torch.long, device=device)
    edges = torch.arange(e, device=device)
    first[pair] = edges
    first[pair[~flip]] = edges[~flip]  # the edge received by a, where the pair has one
    return pair, first


def edge_blocks(edge_index, n_atoms: int, block_size: int, pair: torch.Tensor, first: torch.Tensor) -> List[EdgeBlock]:
    """Lay out the edges ``edge_index`` ``(2, E)`` (receivers in row 0, sorted) as blocks of about
    ``block_size`` edges; the blocks cover all ``n_atoms`` receivers in order. ``pair`` ``(E,)``
    and ``first`` ``(P,)``: the pair of each edge and an edge of each pair (:func:`edge_pairs`)."""
    e = edge_index.shape[1]
    device = edge_index.device
    receivers, senders = edge_index[0], edge_index[1]
    phase = torch.where(first.index_select(0, pair) == torch.arange(e, device=device), 1, 2).to(torch.int8)
    blocks = []
    for r0, r1, b0, b1 in receiver_blocks(receivers, n_atoms, block_size):
        n, count = r1 - r0, b1 - b0
        if count == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            blocks.append(EdgeBlock(r0, n, 0, empty, empty, torch.zeros(n, dtype=torch.long, device=device), empty,
                                    empty.to(torch.int8)))
            continue
        rows = receivers[b0:b1] - r0
        counts = torch.bincount(rows, minlength=n)
        slots = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        local = torch.arange(count, device=device)
        table = torch.full((n * slots,), -1, dtype=torch.long, device=device)
        table[rows * slots + local - starts[rows]] = local
        filled = table >= 0
        table.clamp_(min=0)
        edges = torch.where(filled, table + b0, e)
        blocks.append(EdgeBlock(r0, n, slots, edges, torch.where(filled, senders[b0:b1][table], 0), counts,
                                torch.where(filled, pair[b0:b1][table], 0),
                                torch.where(filled, phase[b0:b1][table], 0).to(torch.int8)))
    return blocks
