"""An order of the atoms in which neighbours in space are near each other in memory.

The convolutions read each edge's sender features and radial weights and add to its sender's
gradients: rows of arrays far larger than the caches once a system has thousands of atoms. In
an order that follows space (a Z-order curve: the bits of the three binned coordinates
interleaved), the atoms a receiver reads were mostly read by the receivers just before it. The
structures users bring are not always in such an order (a POSCAR sorted by element, atoms
shuffled by a workflow): in random order SevenNet-0 took 14 % longer per call at 4000 atoms of
Cu and 16 % at 10,976, and even crystals built cell by cell with ``ase.build`` gained a little
in Z order (benchmarks/README.md).
"""
import torch

#: systems from this many atoms are computed in :func:`locality_order` (at 864 atoms of Cu,
#: random order took as long as the ordered crystal within this VM's noise)
LOCALITY_ORDER_ATOMS = 2000


def locality_order(positions: torch.Tensor, bits: int = 10) -> torch.Tensor:
    """The atoms in Z order: ``(N,)`` int64, the original index of each atom in the new order.

    The bounding box of ``positions`` ``(N, 3)`` (Å; wrapped or not) is cut into ``2**bits``
    bins per axis; atoms are sorted, stably, by the bits of their three bin indices interleaved.
    """
    low = positions.amin(dim=0)
    extent = (positions.amax(dim=0) - low).clamp_min(1e-12)
    bins = ((positions - low) / extent * (2**bits - 1)).round().to(torch.int64)
    code = torch.zeros(positions.shape[0], dtype=torch.int64, device=positions.device)
    for bit in range(bits):
        for axis in range(3):
            code |= ((bins[:, axis] >> bit) & 1) << (3 * bit + axis)
    return torch.argsort(code, stable=True)
