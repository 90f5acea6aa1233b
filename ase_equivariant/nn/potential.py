"""The full NequIP-style potential: species embedding, interaction blocks, per-atom energy readout."""
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from ..neighbors import edge_vectors
from ..o3 import Irreps, spherical_harmonics
from . import radial_table
from .activations import ScaledActivation
from .convolution import EdgeInputs, TensorProductConv
from .derived import derived, parameter_list
from .edge_table import edge_blocks, edge_pairs
from .gate import Gate
from .interaction import InteractionBlock
from .linear import EquivariantLinear
from .locality import LOCALITY_ORDER_ATOMS, locality_order
from .radial import BesselBasis, build_cutoff

MAX_ATOMIC_NUMBER = 118
#: default number of edges in a block of work on the CPU (SevenNet-0, float32: scratch buffers
#: of up to ~32 MB each, about the caches' size); larger blocks mean fewer, larger operations
DEFAULT_EDGE_BLOCK = 8192
#: the same on other devices (GPUs), for 4-byte floats (half as many for 8-byte ones): there the
#: convolutions are torch operations, ~3,000 more per block of a SevenNet-0 call, each a kernel
#: launch or a view costing the host ~5 us (H200: 15 ms per block of 8192 edges, the GPU idle),
#: while a block's scratch space is ~18 KB per edge (float32). H200, 48,668 Cu atoms: 741 /
#: 669 / 631 ms per call and 4.9 / 8.0 / 20.2 GB peak with blocks of 2^16 / 2^18 / 2^20 edges
DEVICE_EDGE_BLOCK = 2**18


@dataclass
class PotentialConfig:
    """Architecture hyperparameters; a weight file stores this as a plain dict (:meth:`to_dict`).

    Attributes:
        species: atomic numbers the model knows, in the order of its species index.
        cutoff: radial cutoff in Å.
        cutoff_function: ``{"name": "xplor", "r_on": 4.5}`` or ``{"name": "polynomial", "p": 6}``.
        num_radial_basis: number of Bessel functions.
        lmax_sh: highest degree of the edge spherical harmonics.
        parity: if False every irrep is even (SO(3) model; spherical harmonics ``l e``).
        node_irreps: the node features before the first block and after each block; the first is
            scalar only.
        radial_hidden: hidden widths of the radial MLPs.
        act_radial: activation of the radial MLPs.
        act_scalars, act_gates: gate activations by parity, ``{"e": "silu", "o": "tanh"}``.
        act_scales: the unit-second-moment factor of each activation used (see ``activations``).
        avg_num_neighbors: the convolution denominators, one per block.
        readout_hidden: width of the scalar hidden layer of the readout.
    """

    species: List[int]
    cutoff: float
    cutoff_function: Dict
    num_radial_basis: int
    lmax_sh: int
    parity: bool
    node_irreps: List[str]
    radial_hidden: List[int]
    act_radial: str
    act_scalars: Dict[str, str]
    act_gates: Dict[str, str]
    act_scales: Dict[str, float]
    avg_num_neighbors: List[float]
    readout_hidden: int
    extra: Dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PotentialConfig":
        return cls(**d)


class EquivariantPotential(nn.Module):
    r"""Per-atom energies of an E(3)-equivariant message-passing network (NequIP architecture, as
    trained in SevenNet).

    ``E_i = scale_{Z_i} · readout(h_i) + shift_{Z_i}``, where ``h_i`` are the scalar features after
    the last interaction block. The energy is a function of the edge vectors only, so it is
    invariant under rotations, translations and permutations; forces and stresses follow by
    differentiation (done by the calculator).

    Node features are one flat array, block after block, each block ``(mul, l)`` an
    ``(N, 2l+1, mul)`` array (:mod:`.layout`; e3nn and :mod:`ase_equivariant.o3` store an atom's
    block as ``[mul, 2l+1]``): channels are contiguous for the matrix products of the linear
    layers and for the compiled convolution kernels. The first features and the readout are
    scalars, where the layouts agree, so the layout never shows outside.
    """

    def __init__(self, config: PotentialConfig):
        super().__init__()
        self.config = config
        c = config
        acts = {name: ScaledActivation(name, c.act_scales[name])
                for name in {c.act_radial, *c.act_scalars.values(), *c.act_gates.values()}}
        sh_parity = -1 if c.parity else 1
        self.irreps_sh = Irreps([(1, (l, sh_parity**l)) for l in range(c.lmax_sh + 1)])
        node_irreps = [Irreps(s) for s in c.node_irreps]
        if node_irreps[0].lmax != 0:
            raise ValueError(f"the first node irreps must be scalars, got {node_irreps[0]}")

        type_of_z = torch.full((MAX_ATOMIC_NUMBER + 1,), -1, dtype=torch.long)
        type_of_z[torch.tensor(c.species, dtype=torch.long)] = torch.arange(len(c.species))
        self.register_buffer("type_of_z", type_of_z, persistent=False)
        self.species_embedding = nn.Parameter(torch.randn(len(c.species), node_irreps[0].dim))

        self.radial_basis = BesselBasis(c.cutoff, c.num_radial_basis)
        self.cutoff_function = build_cutoff(c.cutoff_function, c.cutoff)
        num_blocks = len(node_irreps) - 1
        blocks = []
        irreps_x = node_irreps[0]
        for t in range(num_blocks):
            gate = Gate(node_irreps[t + 1], {p: acts[a] for p, a in c.act_scalars.items()},
                        {p: acts[a] for p, a in c.act_gates.items()})
            conv = TensorProductConv(
                irreps_x, self.irreps_sh, lmax_out=node_irreps[t + 1].lmax, even_only=(t == num_blocks - 1),
                radial_sizes=[c.num_radial_basis] + list(c.radial_hidden), act_radial=acts[c.act_radial],
                denominator=c.avg_num_neighbors[t],
            )
            blocks.append(InteractionBlock(conv, gate))
            irreps_x = gate.irreps_out
        self.blocks = nn.ModuleList(blocks)
        self.readout_hidden = EquivariantLinear(irreps_x, Irreps([(c.readout_hidden, (0, 1))]))
        self.readout_energy = EquivariantLinear(self.readout_hidden.irreps_out, "1x0e")
        self.register_buffer("energy_scale", torch.ones(len(c.species), dtype=torch.float64))
        self.register_buffer("energy_shift", torch.zeros(len(c.species), dtype=torch.float64))
        #: edges per block of work: the convolutions' per-edge intermediates (radial weights when
        #: they are not kept, their gradients) live in scratch buffers reused from block to block
        #: (see ``ase_equivariant.scratch``); ``None``: by the device (:meth:`edge_block_size`)
        self.edge_block: Optional[int] = None

    def edge_block_size(self, like: torch.Tensor) -> int:
        """Edges per block of work for a call on ``like``'s device and dtype: :attr:`edge_block`
        if set, else :data:`DEFAULT_EDGE_BLOCK` on the CPU and :data:`DEVICE_EDGE_BLOCK` (for
        4-byte floats) elsewhere."""
        if self.edge_block is not None:
            return self.edge_block
        if like.device.type == "cpu":
            return DEFAULT_EDGE_BLOCK
        return max(1, DEVICE_EDGE_BLOCK * 4 // like.element_size())

    def radial_embedding(self, r: torch.Tensor) -> torch.Tensor:
        """The ``(P, num_radial_basis)`` radial embedding of the ``(P,)`` distances ``r`` (Å): the
        Bessel basis times the cutoff function."""
        return self.radial_basis(r) * self.cutoff_function(r).unsqueeze(-1)

    def _radial_tables(self, r: torch.Tensor):
        """Per interaction block, its convolution's radial weights tabulated as a function of the
        distance (:mod:`.radial_table`), made once while the weights are frozen; ``None`` where
        tables are not used: other devices or dtypes than float32 on the CPU, weights that
        require gradients, no compiled interpolation, no grid with the cutoff's knots on nodes,
        or distances ``r`` off the grid (closer than its first node, or beyond the cutoff)."""
        if r.device.type != "cpu" or r.dtype != torch.float32 or not radial_table.available():
            return None
        parameters = [self.radial_basis.wave_numbers] + [
            w for block in self.blocks for w in parameter_list(block.conv.radial.weights)]
        if any(p.requires_grad for p in parameters):
            return None
        tables = derived(self, "radial_tables", parameters, self._tabulate)
        if not tables:
            return None
        if r.numel():
            shortest, longest = (float(v) for v in torch.aminmax(r.detach()))
            if shortest < tables[0].shortest or longest > self.cutoff * (1 + 1e-6):
                return None
        return tables

    def _tabulate(self) -> list:
        """The tables of :meth:`_radial_tables`, or ``[]`` if there is no grid for them (made with
        autograd, also where the caller switched it off)."""
        embedding = radial_table.with_derivative(self.radial_embedding)
        with torch.inference_mode(False):
            tables = [radial_table.tabulate(block.conv.radial_function(embedding), self.cutoff,
                                            self.cutoff_function.knots) for block in self.blocks]
        return [] if any(t is None for t in tables) else tables

    @property
    def cutoff(self) -> float:
        """The radial cutoff in Å."""
        return self.config.cutoff

    @property
    def species(self) -> List[int]:
        """The atomic numbers the model knows."""
        return list(self.config.species)

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """``(N,)`` atomic numbers → ``(N,)`` species indices; raises ``ValueError`` for unknown elements."""
        numbers = numbers.to(self.type_of_z.device)
        bad = (numbers < 0) | (numbers > MAX_ATOMIC_NUMBER)
        types = self.type_of_z[numbers.clamp(0, MAX_ATOMIC_NUMBER)]
        unknown = bad | (types < 0)
        if bool(unknown.any()):
            missing = sorted(set(numbers[unknown].tolist()))
            raise ValueError(f"the model does not know atomic number(s) {missing}; it knows {sorted(self.species)}")
        return types

    def forward(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor,
        edge_index: torch.Tensor,
        shifts: torch.Tensor,
        cell: torch.Tensor,
        vectors: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Per-atom energies in eV.

        Args:
            positions: ``(N, 3)`` Cartesian positions in Å.
            numbers: ``(N,)`` atomic numbers.
            edge_index: ``(2, E)`` int64 pairs ``(i, j)`` with ``|D_ij| < cutoff``, both directions
                (best sorted by ``i``, as our neighbour list returns them; others are sorted here).
            shifts: ``(E, 3)`` integer cell shifts ``S`` with ``D_ij = r_j - r_i + S @ cell``.
            cell: ``(3, 3)`` lattice vectors as rows, in Å (any value when ``shifts`` is all zero).
            vectors: optionally the ``(E, 3)`` edge vectors ``D_ij`` already formed from the above,
                e.g. to differentiate the energy with respect to them; the energy depends on
                positions and cell only through them.

        Returns:
            ``(N,)`` energies, of the dtype of the weights.
        """
        types = self.species_index(numbers)
        if vectors is None:
            vectors = edge_vectors(positions, cell, edge_index, shifts)
        # large systems are computed with their atoms in an order that follows space (position k
        # of the network holds atom atom_order[k]; atom i is at position rank[i])
        rank = None
        if len(types) >= LOCALITY_ORDER_ATOMS:
            atom_order = locality_order(positions.detach())
            rank = torch.empty_like(atom_order)
            rank[atom_order] = torch.arange(len(atom_order), device=atom_order.device)
            types, edge_index = types[atom_order], rank[edge_index]
        if edge_index.shape[1] > 1 and bool((edge_index[0, 1:] < edge_index[0, :-1]).any()):
            order = torch.argsort(edge_index[0], stable=True)  # receivers in order, for edge chunking
            edge_index, shifts, vectors = edge_index[:, order], shifts[order], vectors[order]
        # one radial embedding per pair of reverse edges (their lengths are equal)
        pair, first = edge_pairs(edge_index, shifts)
        r = torch.linalg.vector_norm(vectors.index_select(0, first), dim=1)
        radial_embedding = self.radial_embedding(r)
        sh = spherical_harmonics(self.config.lmax_sh, vectors, normalize=True)
        sh = torch.cat([sh, sh.new_zeros(1, sh.shape[1])])  # row E: the empty slot
        blocks = edge_blocks(edge_index, len(types), self.edge_block_size(r), pair, first)
        edges = EdgeInputs(blocks, [sh.index_select(0, block.edges).view(block.n, block.slots, sh.shape[1])
                                    for block in blocks], radial_embedding, r)
        tables = self._radial_tables(r)
        # scalars: the (N, dim) matrix is already the network's layout, flattened
        x = (self.species_embedding[types] * len(self.config.species) ** -0.5).reshape(-1)
        for k, block in enumerate(self.blocks):
            x = block(x, edges if tables is None else edges._replace(table=tables[k]))
        energy = self.readout_energy(self.readout_hidden(x))  # (N * 1,)
        energy = energy * self.energy_scale[types] + self.energy_shift[types]
        return energy if rank is None else energy[rank]
