"""The layout of node features inside the network: one flat array, block after block.

Features of ``N`` atoms with irreps ``irreps`` are a 1-D tensor of ``N * irreps.dim`` numbers:
block ``k`` ``(mul, l)`` of every atom, then block ``k + 1``, each block a contiguous
``(N, 2l+1, mul)`` array (channel-last within an atom). Every product of a linear layer is
then one matrix product of ``(N * (2l+1), mul)`` rows (no strided batches), the gate scales
whole blocks, and the convolution kernels read a sender's block as one row. Scalars (``l = 0``)
are ``(N, mul)`` arrays, so scalar-only features (the first and the last of the network) are
the usual ``(N, dim)`` matrix, flattened.

The per-atom rows (``(N, irreps.dim)``, each atom's blocks ``[2l+1, mul]`` one after another)
are what the pure-torch convolution works on; :func:`atom_rows` and :func:`from_atom_rows`
convert.
"""
from typing import List

import torch

from ..o3 import Irreps


def num_atoms(x: torch.Tensor, irreps: Irreps) -> int:
    """The number of atoms of the features ``x`` ``(N * irreps.dim,)``."""
    if x.dim() != 1 or (irreps.dim == 0 and x.numel()) or (irreps.dim and x.numel() % irreps.dim):
        raise ValueError(f"features of {irreps} must be a 1-D tensor of N * {irreps.dim} numbers, "
                         f"got shape {tuple(x.shape)}")
    return x.numel() // irreps.dim if irreps.dim else 0


def blocks(x: torch.Tensor, irreps: Irreps, n: int) -> List[torch.Tensor]:
    """The ``(n, 2l+1, mul)`` views of every block of ``x`` (features of ``n`` atoms)."""
    return [x[n * s.start:n * s.stop].view(n, ir.dim, mul) for (mul, ir), s in zip(irreps, irreps.slices())]


def atom_rows(x: torch.Tensor, irreps: Irreps, n: int) -> torch.Tensor:
    """The features ``x`` of ``n`` atoms as per-atom rows ``(n, irreps.dim)`` (a copy unless
    there is one block)."""
    parts = [b.reshape(n, -1) for b in blocks(x, irreps, n)]
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts, dim=1) if parts else x.new_zeros(n, 0)


def from_atom_rows(rows: torch.Tensor, irreps: Irreps) -> torch.Tensor:
    """The inverse of :func:`atom_rows`: per-atom rows ``(N, irreps.dim)`` → ``(N * irreps.dim,)``."""
    parts = [rows[:, s].reshape(-1) for s in irreps.slices()]
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts) if parts else rows.new_zeros(0)
