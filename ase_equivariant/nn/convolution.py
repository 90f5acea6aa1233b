"""Channel-wise ('uvu') tensor-product convolution over the edges of an atomic graph."""
import functools
import math
import weakref
from typing import Dict, List, NamedTuple, Optional

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..o3 import Irreps, wigner_3j
from ..scratch import huge_page_empty, inference_only, scratch
from .activations import ScaledActivation
from .derived import parameter_list
from .edge_table import EdgeBlock
from . import layout, native
from .mlp import RadialMLP
from .products import product
from .radial_table import RadialTable


#: radial weights of one convolution call up to this size (one row per pair of reverse edges)
#: are formed once and kept for the backward pass (SevenNet-0, float32: up to ~12,000 atoms of
#: fcc Cu, ~0.4 MB per atom over its five layers), with the radial MLP's pre-activations (~15 %
#: more: the MLP is not formed again in the backward pass); larger ones are formed per block of
#: edges, one row per edge, in both passes (1.2x slower at 864 atoms), so that memory does not
#: grow with the number of edges times the layers. On the CPU, kept arrays stay with their
#: convolution after the backward pass for the next call to write into (:func:`_spare`):
#: touching fresh memory costs page faults (the matrix product into new memory took twice as
#: long at 864 atoms). A call with no backward pass to follow (energy only, no graph) gives them
#: back at the end of its forward pass, and one whose graph is dropped unused when it goes.
KEPT_WEIGHTS_BYTES = 2**30
#: a new spare array has room for 1/SPARE_HEADROOM more rows than the call that makes it: the
#: number of pairs within the cutoff moves from step to step of a simulation, and a call with
#: more pairs than its spare holds maps fresh memory (Cu108, Langevin at 600 K: 465 new arrays
#: in 60 steps while spares shrank to the last call's size, none since)
SPARE_HEADROOM = 16


class EdgeInputs(NamedTuple):
    """The per-call edge data shared by every convolution: the :class:`~.edge_table.EdgeBlock` s,
    per block the ``(n, slots, irreps_sh.dim)`` spherical harmonics of the edge in each slot
    (zero rows for empty slots), the ``(P, num_basis)`` radial embedding of every pair of
    reverse edges (the two edges of a pair have the same length) and the ``(P,)`` distances
    it is a function of; with ``table``, the convolution's radial weights as a function of
    the distance (:mod:`.radial_table`; the potential gives each convolution its own), used in
    place of its radial MLP."""

    blocks: List[EdgeBlock]
    sh: List[torch.Tensor]
    embedding: torch.Tensor
    distances: torch.Tensor
    table: Optional[RadialTable] = None


def convolution_paths(irreps_in: Irreps, irreps_sh: Irreps, lmax_out: int, even_only: bool):
    """The coupling paths of the convolution, in the order of their output blocks.

    Every input block ``(mul, l1 p1)`` couples with every spherical-harmonic block ``l2 p2`` to each
    ``l3`` in ``|l1 - l2| .. l1 + l2`` with ``l3 <= lmax_out`` (and even parity if ``even_only``).
    Each path gives its own output block of ``mul`` channels; blocks are ordered by irrep with a
    stable sort, as in the reference implementation.

    Returns:
        paths: list of ``(i_in, i_sh, (l3, p3))``.
        irreps_mid: the output irreps, one block per path.
    """
    paths = []
    for i_in, (mul, ir_in) in enumerate(irreps_in):
        for i_sh, (_, ir_sh) in enumerate(irreps_sh):
            p3 = ir_in.p * ir_sh.p
            for l3 in range(abs(ir_in.l - ir_sh.l), ir_in.l + ir_sh.l + 1):
                if l3 <= lmax_out and not (even_only and p3 == -1):
                    paths.append((i_in, i_sh, (l3, p3)))
    unsorted = Irreps([(irreps_in[i_in].mul, ir) for i_in, _, ir in paths])
    irreps_mid, perm, _ = unsorted.sort()
    order = sorted(range(len(paths)), key=lambda k: perm[k])
    return [paths[k] for k in order], irreps_mid


class _Group(NamedTuple):
    """The paths of one input block with one spherical-harmonic block, in the edge layouts: its
    ``[d1, mul]`` input block at column ``x_offset`` of an atom's irreps and its ``paths x mul``
    radial weights at ``w_offset``."""

    x_offset: int
    d1: int
    mul: int
    paths: int
    w_offset: int


class _ShBlock(NamedTuple):
    """A spherical-harmonic block (components ``offset .. offset+d2-1``) and its groups."""

    offset: int
    d2: int
    groups: List[_Group]


def _work(like: torch.Tensor, name: str, *shape: int) -> torch.Tensor:
    """Uninitialised ``shape`` scratch space of ``like``'s dtype and device, reused by every block
    of every convolution call (see :func:`~ase_equivariant.scratch.scratch`); asking for ``name``
    again overwrites what the previous request returned."""
    return scratch(f"convolution.{name}", math.prod(shape), like.dtype, like.device).view(shape)


class _MessageSums(torch.autograd.Function):
    r"""The messages received by every atom, summed over its edges (the normalisation included,
    in the radial weights).

    For every group ``g`` (an input block with a spherical-harmonic block) and path ``p`` of it,
    the sums over each receiver's edges

    .. math:: Q^{(g)}_{i, m_2, (p, m_1, u)} = \sum_{k} Y_{ik, m_2}\, R_{ik, p u}\, x_{ik, m_1 u}

    (``Y`` the spherical harmonics, ``x`` the sender features of the edge in slot ``k`` of
    receiver ``i``, ``R`` its radial weights: the radial MLP of its length, formed once per pair
    of reverse edges), then coupled to each path's ``l3``, per atom
    (:meth:`TensorProductConv._couple`). On the CPU the sums, their coupling and the gradients
    of both are compiled kernels (:mod:`.native`; the sums of one receiver at a time, in a
    buffer of the thread), elsewhere torch operations on the weighted inputs ``z = R x``, block
    by block of receivers. The backward pass (first derivatives only) differentiates the
    radial MLP itself (:meth:`.RadialMLP.hidden_backward`); the radial weights and the MLP's
    pre-activations are kept from the forward pass up to :data:`KEPT_WEIGHTS_BYTES`, and formed
    again (the weights block by block) above it. With kept weights
    the compiled kernels add the gradients of a pair's two edges into one row, so the product back
    through the MLP's output matrix runs once per pair, as the forward one does.

    With a :class:`~.radial_table.RadialTable` (float32, compiled kernels, frozen weights), the
    radial weights are interpolated from it at the pairs' distances instead (kept per pair, or
    block by block per slot above the kept size; no MLP in either pass), and the backward pass
    gives the gradient with respect to the distances instead of the embedding.

    Inputs: the convolution, its ``blocks``, its table or ``None``, node features ``x`` ``(N *
    irreps_in.dim,)`` (block after block, :mod:`.layout`), the pairs' radial embedding ``(P,
    B)`` and distances ``(P,)``, the blocks' spherical harmonics (see :class:`EdgeInputs`), then
    the radial MLP's weight matrices (inputs so that their gradients are returned when they
    require them).
    Output: ``(N * irreps_out.dim,)``, block after block. The compiled kernels read and write
    this layout; the torch path works on per-atom rows (:func:`.layout.atom_rows`).
    """

    @staticmethod
    def forward(ctx, conv: "TensorProductConv", blocks: List[EdgeBlock], table: Optional[RadialTable], x, embedding,
                distances, *tensors):
        sh_tables = tensors[:len(blocks)]
        x = x.contiguous()
        atoms = layout.num_atoms(x, conv.irreps_in)
        output_matrix = conv.radial.output_matrix(conv._weight_columns, 1 / conv.denominator)
        # up to this size, the radial weights are formed once per pair and, with the MLP's
        # pre-activations, kept for the backward pass, in the convolution's spare arrays
        keep = embedding.shape[0] * output_matrix.shape[1] * x.element_size() <= KEPT_WEIGHTS_BYTES
        work = functools.partial(_work, x)
        compiled = conv._compiled_kernels(x)
        if table is not None and not (compiled is not None and x.dtype == torch.float32):
            table = None
        if table is not None:  # kept: interpolated once per pair; else block by block, one row per slot
            shape = (distances.shape[0], output_matrix.shape[1])
            pair_weights = table.interpolate(distances, _spare(conv, "pair_weights", shape, x)) if keep else None
            pre, hidden = [], None
        else:
            pre = _pre_activations(conv, embedding, work, spare=keep)
            hidden = conv.radial.hidden(embedding, pre, work)
            pair_weights = _pair_weights(conv, hidden, output_matrix) if keep else None
        if compiled is not None:
            out = x.new_empty(atoms * conv.irreps_out.dim)  # every block overwrites its rows
            out_blocks = layout.blocks(out, conv.irreps_out, atoms)
        else:
            x_rows, out_rows = layout.atom_rows(x, conv.irreps_in, atoms), x.new_empty(atoms, conv.irreps_out.dim)
        for block, sh_block in zip(blocks, sh_tables):
            if block.slots == 0:
                for rows in (out_blocks if compiled is not None else [out_rows]):
                    rows[block.r0:block.r0 + block.n] = 0
                continue
            if compiled is not None:
                weights, rows = _slot_weights(block, hidden, output_matrix, pair_weights, work, gather=False,
                                              table=table, distances=distances)
                compiled.forward(block.counts, block.senders, sh_block, weights, rows, x, atoms, conv._group_table,
                                 conv._path_table, conv._path_coefficients, out, block.r0,
                                 work("sums", compiled.threads(), conv._sums_width),
                                 work=block.n * block.slots * conv._sums_width)
                continue
            sums = work("sums", block.n, conv._sums_width)
            weights, _ = _slot_weights(block, hidden, output_matrix, pair_weights, work, gather=True)
            x_block = _gather(block, x_rows, work)
            weights = weights.view(block.n, block.slots, -1)
            for (y_offset, d2, g), q in zip(conv._groups(), conv._split_sums(sums)):
                y = sh_block[:, :, y_offset:y_offset + d2].transpose(1, 2)
                q.copy_(torch.bmm(y, _weighted_inputs(g, weights, x_block, work)))
            out_rows[block.r0:block.r0 + block.n] = conv._couple(sums)
        if compiled is None:
            out = layout.from_atom_rows(out_rows, conv.irreps_out)
        ctx.conv, ctx.blocks, ctx.table = conv, blocks, table
        ctx.pair_weights, ctx.pre = (pair_weights, pre) if keep else (None, None)
        # back to the spares after the backward pass, or when the context goes without one: at
        # once where no graph is recorded (energy only, torch.no_grad), else with the graph
        if keep:
            ctx.give_back = weakref.finalize(ctx, _give_back_kept, conv, pair_weights, pre)
            ctx.give_back.atexit = False
        ctx.save_for_backward(x, embedding, distances, *sh_tables)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        conv, blocks, pair_weights, table = ctx.conv, ctx.blocks, ctx.pair_weights, ctx.table
        grad_out = grad_out.contiguous()
        x, embedding, distances, *sh_tables = ctx.saved_tensors
        atoms = layout.num_atoms(x, conv.irreps_in)
        need_embedding, need_distances = ctx.needs_input_grad[4:6]
        need_weights = ctx.needs_input_grad[6 + len(blocks):]
        work = functools.partial(_work, x)
        if table is not None:
            return _MessageSums._backward_from_table(ctx, grad_out, x, atoms, distances, sh_tables, need_distances,
                                                     need_weights, work)
        with torch.set_grad_enabled(need_weights[-1]):
            output_matrix = conv.radial.output_matrix(conv._weight_columns, 1 / conv.denominator)
        hidden_shape = (embedding.shape[0], conv.radial.sizes[-2])
        # kept by the forward pass, used once (a second backward pass, retain_graph, forms them again)
        pre, kept = ctx.pre, ctx.pre is not None
        ctx.pair_weights = ctx.pre = None
        if not kept:
            pre = _pre_activations(conv, embedding, work, spare=False)
            hidden = conv.radial.hidden(embedding, pre, work)
        else:  # the activations: only for the output matrix's gradient (training)
            hidden = (conv.radial.act.f(pre[-1]) if pre else embedding) if need_weights[-1] else None
        output_matrix_d = output_matrix.detach()
        # the products back through it take its transpose (kept while frozen)
        output_matrix_t = conv.radial.output_matrix(conv._weight_columns, 1 / conv.denominator,
                                                    transposed=True).detach()
        grad_output_matrix = torch.zeros_like(output_matrix) if need_weights[-1] else None
        compiled = conv._compiled_kernels(x)
        if compiled is not None:  # the compiled kernels add the gradient of x into an array per thread
            grad_x = work("grad_x_threads", compiled.threads(), x.numel()).zero_()
        else:  # the torch path works on per-atom rows
            x_rows, grad_x = layout.atom_rows(x, conv.irreps_in, atoms), x.new_zeros(atoms, conv.irreps_in.dim)
            grad_out_rows = layout.atom_rows(grad_out, conv.irreps_out, atoms)
        grad_sh = [torch.empty_like(t) for t in sh_tables]
        if compiled is not None and pair_weights is not None:
            # the kernels sum the two slots of each pair into the pair's row: one product per pair
            grad_pairs = _pair_weight_gradients(conv, compiled, blocks, sh_tables, x, atoms, grad_out, pair_weights,
                                                grad_sh, grad_x, work)
            grad_hidden = product(grad_pairs, output_matrix_t, out=work("grad_hidden", *hidden_shape))
            if grad_output_matrix is not None:
                grad_output_matrix.addmm_(hidden.t(), grad_pairs)
        else:
            grad_hidden = work("grad_hidden", *hidden_shape).zero_()  # blocks add their slots' pairs to it
            for block, sh_block, grad_sh_block in zip(blocks, sh_tables, grad_sh):
                if block.slots == 0:
                    grad_sh_block.zero_()
                    continue
                n, k = block.n, block.slots
                grad_weights = work("grad_weights", n * k, output_matrix.shape[1])  # every column is written
                if compiled is not None:
                    weights, rows = _slot_weights(block, hidden, output_matrix_d, None, work, gather=False)
                    _slot_gradients(conv, compiled, block, sh_block, weights, rows, x, atoms, grad_out, grad_sh_block,
                                    grad_weights, grad_x, work)
                else:
                    weights, _ = _slot_weights(block, hidden, output_matrix_d, pair_weights, work, gather=True)
                    gx_block = work("grad_x", n, k, conv.irreps_in.dim)
                    grad_sums = conv._couple_transposed(grad_out_rows[block.r0:block.r0 + n])
                    _message_sums_backward(conv, block, sh_block, weights.view(n, k, -1), x_rows, grad_sums,
                                           grad_sh_block, grad_weights.view(n, k, -1), gx_block, work)
                    grad_x.index_add_(0, block.senders, gx_block.view(n * k, -1))
                # through R = hidden @ output_matrix, to the pairs (empty slots add zero to pair 0)
                grad_hidden.index_add_(0, block.pairs, product(
                    grad_weights, output_matrix_t, out=work("grad_slot_hidden", n * k, hidden_shape[1])))
                if grad_output_matrix is not None:
                    grad_output_matrix.addmm_(hidden.index_select(0, block.pairs).t(), grad_weights)
        grad_x = grad_x.sum(0) if compiled is not None else layout.from_atom_rows(grad_x, conv.irreps_in)
        grad_embedding, grad_mlp = None, [None] * (len(need_weights) - 1)
        if need_embedding or any(need_weights[:-1]):
            grad_embedding, grad_mlp = conv.radial.hidden_backward(grad_hidden, embedding, pre, need_weights[:-1], work)
        if kept:  # the next call writes into them
            ctx.give_back()
        grad_mlp.append(None if grad_output_matrix is None else
                        torch.autograd.grad(output_matrix, conv.radial.weights[-1], grad_output_matrix)[0])
        return None, None, None, grad_x, grad_embedding if need_embedding else None, None, *grad_sh, *grad_mlp

    @staticmethod
    def _backward_from_table(ctx, grad_out, x, atoms: int, distances, sh_tables, need_distances: bool,
                             need_weights, work):
        """The backward pass of a forward pass that interpolated its radial weights from a table:
        the gradients of ``x``, the spherical harmonics and the distances (the weights are frozen
        where tables are used). Kept weights (one row per pair) are used once: a second backward
        pass (retain_graph) interpolates again; without them, block by block, one row per slot."""
        conv, blocks, table, pair_weights = ctx.conv, ctx.blocks, ctx.table, ctx.pair_weights
        kept = pair_weights is not None
        ctx.pair_weights = ctx.pre = None
        if any(need_weights):
            raise RuntimeError("radial weights from a table have no gradient with respect to the MLP's weights")
        if not kept and distances.shape[0] * table.width * x.element_size() <= KEPT_WEIGHTS_BYTES:
            pair_weights = table.interpolate(distances, x.new_empty(distances.shape[0], table.width))
        compiled = conv._compiled_kernels(x)
        grad_x = work("grad_x_threads", compiled.threads(), x.numel()).zero_()
        grad_sh = [torch.empty_like(t) for t in sh_tables]
        if pair_weights is not None:
            grad_pairs = _pair_weight_gradients(conv, compiled, blocks, sh_tables, x, atoms, grad_out, pair_weights,
                                                grad_sh, grad_x, work)
            grad_distances = table.distance_gradient(distances, grad_pairs) if need_distances else None
        else:
            grad_distances = torch.zeros_like(distances) if need_distances else None
            for block, sh_block, grad_sh_block in zip(blocks, sh_tables, grad_sh):
                if block.slots == 0:
                    grad_sh_block.zero_()
                    continue
                weights, rows = _slot_weights(block, None, None, None, work, gather=False, table=table,
                                              distances=distances)
                grad_weights = work("grad_weights", block.n * block.slots, table.width)  # every column is written
                _slot_gradients(conv, compiled, block, sh_block, weights, rows, x, atoms, grad_out, grad_sh_block,
                                grad_weights, grad_x, work)
                if grad_distances is not None:  # (empty slots: zero gradients, added to pair 0)
                    grad_distances.index_add_(0, block.pairs, table.distance_gradient(
                        distances.index_select(0, block.pairs), grad_weights))
        if kept:  # the next call writes into them
            ctx.give_back()
        return (None, None, None, grad_x.sum(0), None, grad_distances, *grad_sh, *[None] * len(need_weights))


def _slot_gradients(conv: "TensorProductConv", compiled, block: EdgeBlock, sh_block, weights, rows, x, atoms: int,
                    grad_out, grad_sh_block, grad_weights, grad_x, work):
    """The compiled backward pass of one block with the radial weights of its slots (see
    :func:`_slot_weights`): the gradients with respect to them, one row per slot, into
    ``grad_weights`` ``(n * K, W)``, to the spherical harmonics into ``grad_sh_block``, and to
    ``x`` added into ``grad_x`` (see :meth:`.native.Kernels.backward`)."""
    compiled.backward(block.counts, block.senders, sh_block, weights, rows, x, atoms, conv._group_table,
                      conv._path_table, conv._path_coefficients, grad_out, block.r0,
                      work("grad_sums", compiled.threads(), conv._sums_width), grad_sh_block, grad_weights, grad_x,
                      work=3 * block.n * block.slots * conv._sums_width)


def _pair_weight_gradients(conv: "TensorProductConv", compiled, blocks: List[EdgeBlock], sh_tables, x, atoms: int,
                           grad_out, pair_weights, grad_sh, grad_x, work):
    """The compiled backward pass with the radial weights kept per pair: the gradient with respect
    to ``pair_weights`` ``(P, W)``, each pair's row the sum over its two slots (in scratch space),
    while the gradients of the spherical harmonics and of ``x`` go to ``grad_sh`` and ``grad_x``
    (see :meth:`.native.Kernels.backward`). Every block runs phase 1 (one slot of each pair, which
    overwrites the pair's row), then every block phase 2 (the other slot, added to it)."""
    grad_pairs = work("grad_pairs", *pair_weights.shape)
    scratch = work("grad_sums", compiled.threads(), conv._sums_width)
    for block, grad_sh_block in zip(blocks, grad_sh):
        if block.slots == 0:
            grad_sh_block.zero_()
    for phase in (1, 2):
        for block, sh_block, grad_sh_block in zip(blocks, sh_tables, grad_sh):
            if block.slots == 0:
                continue
            compiled.backward(block.counts, block.senders, sh_block, pair_weights, block.pairs, x, atoms,
                              conv._group_table, conv._path_table, conv._path_coefficients, grad_out, block.r0,
                              scratch, grad_sh_block, grad_pairs, grad_x,
                              work=3 * block.n * block.slots * conv._sums_width // 2,
                              grad_rows=block.pairs, phases=block.phases, phase=phase)
    return grad_pairs


def _pair_weights(conv: "TensorProductConv", hidden, output_matrix):
    """``hidden @ output_matrix``, the ``(P, W)`` radial weights of the pairs, written into the
    spare array that the previous call of ``conv`` gave back (see :func:`_spare`)."""
    shape = (hidden.shape[0], output_matrix.shape[1])
    return product(hidden, output_matrix, out=_spare(conv, "pair_weights", shape, hidden))


def _pre_activations(conv: "TensorProductConv", embedding, work, spare: bool) -> List[torch.Tensor]:
    """Arrays for the pre-activations of the radial MLP's hidden layers on the ``(P, B)`` pairs'
    ``embedding``, ``(P, width)`` each: ``conv``'s spare arrays (:func:`_spare`) if ``spare``
    (kept for the backward pass), else scratch space."""
    shapes = [(embedding.shape[0], width) for width in conv.radial.sizes[1:-1]]
    if spare:
        return [_spare(conv, f"pre{k}", shape, embedding) for k, shape in enumerate(shapes)]
    return [work(f"radial.pre{k}", *shape) for k, shape in enumerate(shapes)]


def _spare(conv: "TensorProductConv", name: str, shape, like) -> torch.Tensor:
    """An uninitialised ``shape`` array of ``like``'s dtype and device, for an array that a call
    keeps from its forward to its backward pass (see :data:`KEPT_WEIGHTS_BYTES`): the spare
    ``name`` that the previous call of ``conv`` gave back (:func:`_give_back_kept`) if it has one
    large enough, else a new one with room to spare (:data:`SPARE_HEADROOM`) on huge pages
    (:func:`~ase_equivariant.scratch.huge_page_empty`: the kernels read the radial weights' rows
    in random order, and at 10,976 atoms of Cu, ~0.9 GB per layer, a call took 15-20 % longer on
    4 KiB pages)."""
    spares = conv._spares.setdefault(name, [])
    try:
        spare = spares.pop()  # atomic: a spare goes to one call only
    except IndexError:
        spare = None
    numel = math.prod(shape)
    if spare is None or spare.numel() < numel or (spare.dtype, spare.device) != (like.dtype, like.device) \
            or inference_only(spare):
        spare = huge_page_empty(numel + numel // SPARE_HEADROOM, like.dtype, like.device)
    return spare[:numel].view(shape)


def _give_back_kept(conv: "TensorProductConv", pair_weights, pre: List[torch.Tensor]):
    """Keep the arrays that a call kept for its backward pass (from :func:`_pair_weights` and
    :func:`_pre_activations`), which nothing uses any more, as ``conv``'s spares, each whole: the
    memory from its first element to the end of the spare it was cut from (a call with fewer
    pairs does not shrink the spare for the calls after it)."""
    for name, array in [("pair_weights", pair_weights)] + [(f"pre{k}", p) for k, p in enumerate(pre)]:
        spares = conv._spares.setdefault(name, [])
        if array.device.type == "cpu" and not spares:
            whole = array.untyped_storage().nbytes() // array.element_size() - array.storage_offset()
            spares.append(array.as_strided((whole,), (1,)))


def _slot_weights(block: EdgeBlock, hidden, output_matrix, pair_weights, work, gather: bool,
                  table: Optional[RadialTable] = None, distances=None):
    """The radial weights of ``block``'s slots, as ``(weights, rows)``: slot ``e`` has row
    ``rows[e]`` of ``weights`` (``rows`` ``None``: row ``e``).

    With ``pair_weights`` ``(P, W)`` (kept from the forward pass) these are its rows of the slots'
    pairs, gathered into an ``(n * K, W)`` array if ``gather``, else indexed through
    ``block.pairs``; without, they are interpolated from ``table`` at the ``(P,)`` pairs'
    ``distances``, or formed from the pairs' last hidden activations ``hidden`` ``(P, H)`` and
    the MLP's ``(H, W)`` output matrix, one row per slot."""
    if pair_weights is not None and not gather:
        return pair_weights, block.pairs
    if table is not None and pair_weights is None:
        out = work("weights", block.n * block.slots, table.width)
        return table.interpolate(distances.index_select(0, block.pairs), out), None
    out = work("weights", block.n * block.slots, output_matrix.shape[1])
    if pair_weights is not None:
        return torch.index_select(pair_weights, 0, block.pairs, out=out), None
    return product(hidden.index_select(0, block.pairs), output_matrix, out=out), None


def _message_sums_backward(conv: "TensorProductConv", block: EdgeBlock, sh_block, weights, x, grad_sums,
                           grad_sh, grad_weights, grad_x, work):
    """The pure-torch gradients of a block's message sums (the compiled kernels' fallback), with
    ``x`` the features as per-atom rows ``(N, D)``: given ``grad_sums (n, conv._sums_width)``,
    writes ``grad_sh (n, K, S)``, ``grad_weights (n, K, W)`` and the gradients ``grad_x (n, K, D)``
    of each slot's sender features."""
    n, k = block.n, block.slots
    x_block = _gather(block, x, work)
    grad_sh.zero_()
    grad_x.zero_()
    for (y_offset, d2, g), grad in zip(conv._groups(), conv._split_sums(grad_sums)):
        y = sh_block[:, :, y_offset:y_offset + d2]
        w_columns = slice(g.w_offset, g.w_offset + g.paths * g.mul)
        grad_sh[:, :, y_offset:y_offset + d2] += torch.bmm(_weighted_inputs(g, weights, x_block, work),
                                                           grad.transpose(1, 2))
        gz = torch.bmm(y, grad, out=work("grad_z", n, k, grad.shape[2]))
        gz = gz.view(n, k, g.paths, g.d1, g.mul)
        xg = x_block[:, :, g.x_offset:g.x_offset + g.d1 * g.mul].view(n, k, g.d1, g.mul)
        wg = weights[:, :, w_columns].view(n, k, g.paths, g.mul)
        gw = grad_weights[:, :, w_columns].view(n, k, g.paths, g.mul)
        torch.mul(gz[:, :, :, 0], xg[:, :, None, 0], out=gw)
        for m1 in range(1, g.d1):
            gw.addcmul_(gz[:, :, :, m1], xg[:, :, None, m1])
        gx = grad_x[:, :, g.x_offset:g.x_offset + g.d1 * g.mul].view(n, k, g.d1, g.mul)
        for p in range(g.paths):
            gx.addcmul_(gz[:, :, p], wg[:, :, p, None])


def _gather(block: EdgeBlock, x, work):
    """The sender features ``(n, K, D)`` of ``block``'s slots, from per-atom rows ``x`` ``(N, D)``."""
    out = work("x", block.n * block.slots, x.shape[1])
    return torch.index_select(x, 0, block.senders, out=out).view(block.n, block.slots, -1)


def _weighted_inputs(g: _Group, weights, x, work):
    """``z[i, k, (p, m1, u)] = R[i, k, p, u] x[i, k, m1, u]`` of group ``g`` → ``(n, K, paths * d1 * mul)``."""
    n, k = x.shape[:2]
    z = work("z", n, k, g.paths, g.d1, g.mul)
    torch.mul(
        x[:, :, g.x_offset:g.x_offset + g.d1 * g.mul].view(n, k, 1, g.d1, g.mul),
        weights[:, :, g.w_offset:g.w_offset + g.paths * g.mul].view(n, k, g.paths, 1, g.mul),
        out=z,
    )
    return z.view(n, k, -1)


class TensorProductConv(nn.Module):
    r"""Message passing with channel-wise tensor products and radial weights.

    For an edge ``i ← j`` with displacement :math:`\mathbf{D}_{ij} = \mathbf{r}_j - \mathbf{r}_i`
    (+ cell shift), each path ``(l1, l2 → l3)`` sends to atom ``i``

    .. math:: m^{(l_3)}_{ij,u} = \sqrt{2l_3+1}\; R_{ij,u} \sum_{m_1 m_2} C^{l_1 l_2 l_3}_{m_1 m_2 m_3}
              x^{(l_1)}_{j,u m_1}\, Y^{(l_2)}_{m_2}(\hat{\mathbf{D}}_{ij})

    with :math:`C` the Wigner 3j symbols and :math:`R_{ij,u}` from :class:`RadialMLP` applied to the
    edge's radial embedding. Messages are summed on ``i`` and divided by ``denominator`` (the
    average number of neighbours used in training).

    Computation: the coupling is linear in ``Y``, so the sum over a receiver's edges is taken
    first, of ``Y_m2 · R x_m1`` (see :class:`_MessageSums`), and the Clebsch-Gordan coupling is
    applied to the sums, per atom: no per-edge message is ever formed. The radial weights depend
    on the edge length only, so they are formed once per pair of reverse edges (in float32 on the
    CPU, interpolated from a table of the distance that the potential makes once,
    :mod:`.radial_table`, instead of running the MLP). On the CPU the
    sums and their gradients run in compiled kernels (:mod:`.native`); features are laid out
    block after block, each block ``(N, 2l+1, mul)`` (:mod:`.layout`, as everywhere inside the
    network), so a sender's block is one row and the work runs over contiguous channels, and
    the output merges the paths of one irrep into one block (``irreps_out`` is simplified), so
    the next linear layer is one matrix product per irrep. The message sums
    have a hand-written backward pass: first derivatives (forces, stress) only; differentiating
    twice (Hessians, training on forces) raises an error.

    Args:
        irreps_in: node features.
        irreps_sh: spherical harmonics of the edge direction (``1x0e+1x1o+...`` or all even).
        lmax_out, even_only: which output irreps to form (see :func:`convolution_paths`).
        radial_sizes: widths of the radial MLP without its output, e.g. ``[8, 64, 64]``.
        act_radial: the MLP's activation.
        denominator: the normalisation of the neighbour sum.
    """

    def __init__(
        self,
        irreps_in,
        irreps_sh,
        lmax_out: int,
        even_only: bool,
        radial_sizes: List[int],
        act_radial: ScaledActivation,
        denominator: float,
    ):
        super().__init__()
        self.irreps_in = Irreps(irreps_in)
        self.irreps_sh = Irreps(irreps_sh)
        self.paths, path_irreps = convolution_paths(self.irreps_in, self.irreps_sh, lmax_out, even_only)
        # the output: the paths' channels, those of one irrep merged into one block
        self.irreps_out = path_irreps.simplify()
        muls = [self.irreps_in[i_in].mul for i_in, _, _ in self.paths]
        self.radial = RadialMLP(list(radial_sizes) + [sum(muls)], act_radial)
        self.denominator = float(denominator)
        self._in_dims = [mul * ir.dim for mul, ir in self.irreps_in]

        weight_offsets = [sum(muls[:k]) for k in range(len(muls))]
        x_offsets = [sum(self._in_dims[:b]) for b in range(len(self._in_dims))]
        # Edge layouts, grouped by sh block, then input block, then path: radial weights
        # [path, u], weighted inputs [path, m1, u]. Per atom, the coupled sums of a group are
        # [path, m3, u]; in the output ([m3, channel] per atom and block of irreps_out) a path's
        # channels follow those of the paths before it with the same irrep: element (m3, u) of
        # path k at column out_start[k] + m3 * out_stride[k] + u of an atom's row (the
        # channel out_channel[k] + u of the block at out_block[k]).
        out_block, out_channel, out_stride, block, previous = [], [], [], -1, None
        for mul, ir in path_irreps:
            if mul > 0 and ir != previous:  # the next block of irreps_out (as simplify() merges)
                block, previous, channel = block + 1, ir, 0
            out_block.append(self.irreps_out.slices()[block].start if mul > 0 else 0)
            out_channel.append(channel if mul > 0 else 0)
            out_stride.append(self.irreps_out[block].mul if mul > 0 else 0)
            channel += mul
        out_start = [b + c for b, c in zip(out_block, out_channel)]
        self._plan, couplings, weight_columns = [], [], []
        out_columns = [None] * self.irreps_out.dim
        # per path, for message_sums.c: its group, its index in the group, d3, its output block and
        # channels, and its coefficients (d3, d2, d1), in the order of the groups
        path_rows, coefficients = [None] * len(self.paths), []
        w_offset = sum_offset = 0
        for i_sh, (_, ir_sh) in enumerate(self.irreps_sh):
            groups = []
            for i_in, (mul, ir_in) in enumerate(self.irreps_in):
                ks = [k for k, path in enumerate(self.paths) if path[:2] == (i_in, i_sh)]
                if not ks or mul == 0:
                    continue
                d1, d2 = ir_in.dim, ir_sh.dim
                d3s = [2 * self.paths[k][2][0] + 1 for k in ks]
                # (sum of d3, paths * d2 * d1), block-diagonal: row (p, m3), column (p, m2, m1)
                coupling = torch.zeros(sum(d3s), len(ks) * d2 * d1, dtype=torch.float64)
                row = 0
                for p, (k, d3) in enumerate(zip(ks, d3s)):
                    l3 = self.paths[k][2][0]
                    cg = wigner_3j(ir_in.l, ir_sh.l, l3, dtype=torch.float64).permute(2, 1, 0) * d3**0.5
                    coupling[row:row + d3, p * d2 * d1:(p + 1) * d2 * d1] = cg.reshape(d3, d2 * d1)
                    for m in range(d3):
                        for u in range(mul):
                            out_columns[out_start[k] + m * out_stride[k] + u] = sum_offset + (row + m) * mul + u
                    path_rows[k] = [len(couplings), p, d3, out_block[k], sum(c.numel() for c in coefficients),
                                    out_stride[k], out_channel[k]]
                    coefficients.append(cg.reshape(-1))
                    row += d3
                couplings.append(coupling)
                weight_columns += [weight_offsets[k] + u for k in ks for u in range(mul)]
                groups.append(_Group(x_offsets[i_in], d1, mul, len(ks), w_offset))
                w_offset += len(ks) * mul
                sum_offset += row * mul
            if groups:
                self._plan.append(_ShBlock(self.irreps_sh.slices()[i_sh].start, ir_sh.dim, groups))
        for g, coupling in enumerate(couplings):
            self.register_buffer(f"_coupling_{g}", coupling, persistent=False)
        # radial-MLP columns in grouped order
        self.register_buffer("_weight_columns", torch.tensor(weight_columns, dtype=torch.long), persistent=False)
        # per group: the 8 numbers of message_sums.c, and the width of its message sums per atom
        self._sum_widths = [d2 * g.paths * g.d1 * g.mul for _, d2, g in self._groups()]
        self._sums_width = sum(self._sum_widths)
        # the largest 2l+1 of an input block and of the spherical harmonics
        self._max_dim = max((max(d2, g.d1) for _, d2, g in self._groups()), default=0)
        table = [[y_offset, d2, g.x_offset, g.d1, g.mul, g.paths, g.w_offset, sum(self._sum_widths[:k])]
                 for k, (y_offset, d2, g) in enumerate(self._groups())]
        self.register_buffer("_group_table", torch.tensor(table, dtype=torch.int32).view(-1, 8), persistent=False)
        # per path with channels: group, p, d3, the start of its output block, the offset of its
        # coefficients, the output block's channels, the path's first channel in it
        path_table = [row for row in path_rows if row is not None]
        self.register_buffer("_path_table", torch.tensor(path_table, dtype=torch.int32).view(-1, 7), persistent=False)
        self.register_buffer("_path_coefficients", torch.cat(coefficients) if coefficients else torch.zeros(0,
                             dtype=torch.float64), persistent=False)
        #: whether CPU calls use the compiled kernels (:mod:`.native`) when they can be built
        self.use_compiled = True
        #: the arrays kept by the last call from its forward to its backward pass (CPU: the radial
        #: weights and the MLP's pre-activations), by name, for the next call to write into (see
        #: :func:`_spare`); lists so that taking one is an atomic ``pop``
        self._spares: Dict[str, List[torch.Tensor]] = {}
        out_columns = torch.tensor(out_columns, dtype=torch.long)
        self.register_buffer("_out_columns", out_columns, persistent=False)
        # the inverse permutation: the coupled layout's columns in irreps_out order
        self.register_buffer("_out_rows", torch.argsort(out_columns), persistent=False)

    def forward(self, x: torch.Tensor, edges: EdgeInputs) -> torch.Tensor:
        """Node features ``(N * irreps_in.dim,)`` and the edges of the call (blocks covering
        receivers ``0 .. N-1`` in order) → aggregated messages ``(N * irreps_out.dim,)``; both
        block after block (:mod:`.layout`)."""
        return _MessageSums.apply(self, edges.blocks, edges.table, x, edges.embedding, edges.distances, *edges.sh,
                                  *parameter_list(self.radial.weights))

    def radial_function(self, embedding):
        """The radial weights as a function of the pair distance, in float64, with their
        derivative: ``(P,)`` → ``(P, W)`` twice (in the order the kernels read them, normalisation
        included), given the radial ``embedding`` (``(P,)`` → its ``(P, B)`` values and
        derivatives): for :func:`.radial_table.tabulate`."""
        mlp = self.radial.function(self._weight_columns, 1 / self.denominator)
        return lambda r: mlp(*embedding(r))

    def _groups(self):
        """``(y_offset, d2, group)`` for every group of the plan, in order: the group's
        spherical-harmonic components are ``y_offset .. y_offset+d2-1``."""
        return [(block.offset, block.d2, group) for block in self._plan for group in block.groups]

    def _split_sums(self, sums: torch.Tensor) -> List[torch.Tensor]:
        """The message sums ``(n, _sums_width)`` as one ``(n, d2, paths * d1 * mul)`` view per group."""
        n = sums.shape[0]
        return [q.view(n, d2, -1) for (_, d2, _), q in zip(self._groups(), sums.split(self._sum_widths, dim=1))]

    def _compiled_kernels(self, x: torch.Tensor):
        """The compiled kernels (:mod:`.native`) if they can compute this convolution on ``x``'s
        device and dtype, else ``None`` (the pure-torch path is used)."""
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or not self.use_compiled:
            return None
        compiled = native.kernels()
        if compiled is None or self._max_dim > compiled.max_dim:
            return None
        return compiled

    def _couple(self, sums: torch.Tensor) -> torch.Tensor:
        """Per atom, the Clebsch-Gordan coupling of the message sums ``(n, _sums_width)`` (see
        :meth:`_split_sums`) to every path's ``l3`` → ``(n, irreps_out.dim)``."""
        n = sums.shape[0]
        out = []
        for g, ((_, d2, group), q) in enumerate(zip(self._groups(), self._split_sums(sums))):
            q = q.view(n, d2, group.paths, group.d1, group.mul).transpose(1, 2)
            q = q.reshape(n, -1, group.mul)  # (n, [path, m2, m1], u)
            out.append((getattr(self, f"_coupling_{g}") @ q).reshape(n, -1))
        out = torch.cat(out, dim=1) if len(out) > 1 else out[0]
        return out.index_select(1, self._out_columns)

    def _couple_transposed(self, grad_out: torch.Tensor) -> torch.Tensor:
        """The adjoint of :meth:`_couple`: ``(n, irreps_out.dim)`` → ``(n, _sums_width)``, contiguous."""
        n = grad_out.shape[0]
        grad = grad_out.index_select(1, self._out_rows)
        out, start = [], 0
        for g, (_, d2, group) in enumerate(self._groups()):
            coupling = getattr(self, f"_coupling_{g}")
            width = coupling.shape[0] * group.mul
            q = coupling.t() @ grad[:, start:start + width].view(n, -1, group.mul)
            q = q.view(n, group.paths, d2, group.d1 * group.mul).transpose(1, 2)
            out.append(q.reshape(n, -1))
            start += width
        return torch.cat(out, dim=1) if len(out) > 1 else out[0].contiguous()

    def extra_repr(self) -> str:
        return f"{self.irreps_in} x {self.irreps_sh} -> {self.irreps_out}"
