"""Convert a SevenNet checkpoint (``checkpoint_*.pth`` of the ``sevenn`` package) to our weight file.

Usage::

    python -m ase_equivariant.convert.sevennet CHECKPOINT OUTPUT.pt [--source-note TEXT]

The checkpoint is a pickle written by ``torch.save``; it is read with ``weights_only=False``
because its config holds numpy arrays, so convert only checkpoints you trust (those inside the
``sevenn`` wheel). Nothing of ``sevenn`` or ``e3nn`` is imported: the layouts below are those of
e3nn's ``Linear`` (one ``(mul_in, mul_out)`` matrix per pair of input and output blocks of the same
irrep, input-block-major, flattened and concatenated) and ``FullyConnectedNet``.
"""
import argparse
import hashlib
from typing import Dict, List

import torch

from ..models import save_model
from ..nn import EquivariantPotential, PotentialConfig
from ..nn.activations import second_moment_scale
from ..nn.convolution import TensorProductConv
from ..nn.linear import EquivariantLinear
from ..o3 import Irreps, wigner_3j


def sha256(path: str) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _require(config: dict, key: str, expected):
    value = config.get(key, expected)
    if value != expected:
        raise ValueError(f"SevenNet checkpoint has {key}={value!r}; only {expected!r} is supported")


def sevennet_config(config: dict, state: Dict[str, torch.Tensor]) -> PotentialConfig:
    """Our architecture config from a SevenNet training config (and its state dict)."""
    _require(config, "interaction_type", "nequip")
    _require(config, "self_connection_type", "linear")
    _require(config, "use_bias_in_linear", False)
    _require(config, "readout_as_fcn", False)
    _require(config, "use_modality", False)
    _require(config, "_normalize_sph", True)
    if config.get("irreps_manual") in (None, False):
        raise ValueError("SevenNet checkpoint without 'irreps_manual' is not supported")
    if config["radial_basis"]["radial_basis_name"] != "bessel":
        raise ValueError(f"unsupported radial basis {config['radial_basis']}")
    cutoff_spec = config["cutoff_function"]
    if cutoff_spec["cutoff_function_name"] == "XPLOR":
        cutoff_function = {"name": "xplor", "r_on": float(cutoff_spec["cutoff_on"])}
    elif cutoff_spec["cutoff_function_name"] == "poly_cut":
        cutoff_function = {"name": "polynomial", "p": int(cutoff_spec["poly_cut_p_value"])}
    else:
        raise ValueError(f"unsupported cutoff function {cutoff_spec}")
    type_map = config["_type_map"]  # atomic number -> species index
    species = sorted(type_map, key=type_map.get)
    node_irreps = [str(Irreps(s)) for s in config["irreps_manual"]]
    num_blocks = config["num_convolution_layer"]
    acts = {config["act_radial"], *config["act_scalar"].values(), *config["act_gate"].values()}
    lmax_sh = config["lmax_edge"] if config.get("lmax_edge", -1) > 0 else config["lmax"]
    return PotentialConfig(
        species=[int(z) for z in species],
        cutoff=float(config["cutoff"]),
        cutoff_function=cutoff_function,
        num_radial_basis=int(config["radial_basis"]["bessel_basis_num"]),
        lmax_sh=int(lmax_sh),
        parity=bool(config["is_parity"]),
        node_irreps=node_irreps,
        radial_hidden=[int(h) for h in config["weight_nn_hidden_neurons"]],
        act_radial=config["act_radial"],
        act_scalars=dict(config["act_scalar"]),
        act_gates=dict(config["act_gate"]),
        act_scales={name: second_moment_scale(name) for name in sorted(acts)},
        avg_num_neighbors=[float(state[f"{t}_convolution.denominator"].item()) for t in range(num_blocks)],
        readout_hidden=Irreps(node_irreps[-1]).dim // 2,
    )


def e3nn_linear_weights(flat: torch.Tensor, linear: EquivariantLinear) -> List[torch.Tensor]:
    """Split e3nn ``Linear`` weights ``(weight_numel,)`` into our per-output-block matrices."""
    irreps_in, irreps_out = linear.irreps_in, linear.irreps_out
    blocks = [torch.empty_like(w) for w in linear.weights]
    filled = [0] * len(irreps_out)
    offset = 0
    for mul_in, ir_in in irreps_in:
        for k, (mul_out, ir_out) in enumerate(irreps_out):
            if ir_in != ir_out:
                continue
            size = mul_in * mul_out
            blocks[k][filled[k]:filled[k] + mul_in] = flat[offset:offset + size].view(mul_in, mul_out)
            filled[k] += mul_in
            offset += size
    if offset != flat.numel() or filled != [w.shape[0] for w in blocks]:
        raise ValueError(f"weights of {irreps_in} -> {irreps_out} do not match: {flat.numel()} values")
    return blocks


def sort_path_weights(weight: torch.Tensor, conv: TensorProductConv, state: Dict[str, torch.Tensor], prefix: str):
    """Radial-MLP output columns of a SevenNet checkpoint older than 0.11 → our path order and signs.

    Those checkpoints list the paths in the order they are generated (input block, then harmonic,
    then l3) rather than sorted by output irrep, and some of the Wigner 3j symbols they were trained
    with (stored beside the weights as ``_w3j_{l1}_{l2}_{l3}``) have the opposite sign to today's:
    the columns of such a path are negated so that the product is unchanged.

    Args:
        weight: ``(hidden, num_weights)`` last-layer matrix in the checkpoint's column order.
    Returns:
        The same matrix with columns in ``conv.paths`` order.
    """
    muls = {path: conv.irreps_in[path[0]].mul for path in conv.paths}
    generated = sorted(conv.paths, key=lambda path: (path[0], path[1], path[2][0]))
    columns, offset = {}, 0
    for path in generated:
        i_in, i_sh, (l3, _) = path
        block = weight[:, offset:offset + muls[path]]
        offset += muls[path]
        l1, l2 = conv.irreps_in[i_in].ir.l, conv.irreps_sh[i_sh].ir.l
        stored = state.get(f"{prefix}.convolution._compiled_main_left_right._w3j_{l1}_{l2}_{l3}")
        if stored is not None:
            now = wigner_3j(l1, l2, l3, dtype=stored.dtype)
            if torch.allclose(stored, -now, atol=1e-6):
                block = -block
            elif not torch.allclose(stored, now, atol=1e-6):
                raise ValueError(f"{prefix}: stored Wigner 3j ({l1},{l2},{l3}) matches ours up to neither sign")
        columns[path] = block
    return torch.cat([columns[path] for path in conv.paths], dim=1)


def convert_state(state: Dict[str, torch.Tensor], net: EquivariantPotential,
                  unsorted_paths: bool) -> Dict[str, torch.Tensor]:
    """Our state dict from a SevenNet one, for the network ``net`` built from its config.
    ``unsorted_paths``: the checkpoint predates SevenNet 0.11 (see :func:`sort_path_weights`)."""
    out = {
        "species_embedding": state["onehot_to_feature_x.linear.weight"].view(net.species_embedding.shape),
        "radial_basis.wave_numbers": state["edge_embedding.basis_function.coeffs"],
        "energy_shift": state["rescale_atomic_energy.shift"],
        "energy_scale": state["rescale_atomic_energy.scale"],
    }

    def linear(ours: str, module: EquivariantLinear, theirs: str):
        for k, w in enumerate(e3nn_linear_weights(state[f"{theirs}.linear.weight"], module)):
            out[f"{ours}.weights.{k}"] = w

    for t, block in enumerate(net.blocks):
        linear(f"blocks.{t}.self_connection", block.self_connection, f"{t}_self_connection_intro")
        linear(f"blocks.{t}.linear_1", block.linear_1, f"{t}_self_interaction_1")
        linear(f"blocks.{t}.linear_2", block.linear_2, f"{t}_self_interaction_2")
        for k in range(len(block.conv.radial.weights)):
            out[f"blocks.{t}.conv.radial.weights.{k}"] = state[f"{t}_convolution.weight_nn.layer{k}.weight"]
        if unsorted_paths:
            last = f"blocks.{t}.conv.radial.weights.{len(block.conv.radial.weights) - 1}"
            out[last] = sort_path_weights(out[last], block.conv, state, f"{t}_convolution")
    linear("readout_hidden", net.readout_hidden, "reduce_input_to_hidden")
    linear("readout_energy", net.readout_energy, "reduce_hidden_to_energy")
    return out


def convert(checkpoint: str, output: str, source_note: str = "") -> EquivariantPotential:
    """Convert ``checkpoint`` to our format at ``output``; returns the network."""
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = payload["model_state_dict"]
    net = EquivariantPotential(sevennet_config(payload["config"], state))
    version = tuple(int(v) for v in str(payload["config"]["version"]).split(".")[:3])
    net.load_state_dict(convert_state(state, net, unsorted_paths=version < (0, 11, 0)))
    provenance = {
        "source": source_note or checkpoint,
        "source_sha256": sha256(checkpoint),
        "sevenn_config_version": str(payload["config"].get("version", "")),
        "licence": "MIT License, Copyright (c) 2024 Yutack Park (SevenNet)",
    }
    save_model(net, output, provenance)
    return net


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("output")
    parser.add_argument("--source-note", default="", help="text recorded as the source in the provenance")
    args = parser.parse_args(argv)
    convert(args.checkpoint, args.output, args.source_note)
    print(f"wrote {args.output} (sha256 {sha256(args.output)})")


if __name__ == "__main__":
    main()
