"""Model registry and our weight-file format.

A weight file is a ``torch.save`` of a plain dict that loads with ``torch.load(weights_only=True)``
(no code runs on load)::

    {"format": "ase-equivariant-potential", "format_version": 1,
     "config": PotentialConfig.to_dict(), "state_dict": {name: tensor}, "provenance": {...}}
"""
import os
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from .nn import EquivariantPotential, PotentialConfig
from .nn.activations import second_moment_scale

FORMAT = "ase-equivariant-potential"
FORMAT_VERSION = 1

#: registry name -> file name in the package's data folder
MODELS = {
    "sevennet-0": "sevennet-0.pt",
}


def data_path(filename: str) -> Path:
    """Path of a file shipped in ``data/``: from an installed package (``ase_equivariant/data``) or
    from a source checkout (``<repo>/data``)."""
    try:
        installed = resources.files("ase_equivariant.data") / filename
        if installed.is_file():
            return Path(str(installed))
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "data" / filename


def resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """``"float32"``/``"float64"`` (or the torch dtype) → the torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.float64):
            return dtype
    elif dtype in ("float32", "float64"):
        return getattr(torch, dtype)
    raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")


def save_model(model: EquivariantPotential, path: Union[str, os.PathLike], provenance: Optional[dict] = None):
    """Write ``model`` in our weight format (weights stored as float32, as trained)."""
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_dict(),
                "state_dict": state, "provenance": dict(provenance or {})}, str(path))


def load_model(
    model: Union[str, os.PathLike] = "sevennet-0",
    dtype: Union[str, torch.dtype] = "float32",
    device: Union[str, torch.device, None] = "cpu",
) -> EquivariantPotential:
    """Load a registered model (see :data:`MODELS`) or a weight file, in eval mode.

    Args:
        model: a registry name such as ``"sevennet-0"`` or the path of a weight file.
        dtype: ``"float32"`` or ``"float64"``.
        device: where the weights live.
    """
    dtype = resolve_dtype(dtype)
    if isinstance(model, str) and model in MODELS:
        path = data_path(MODELS[model])
    elif os.path.exists(model):
        path = Path(model)
    else:
        raise ValueError(f"unknown model {str(model)!r}: neither a registered name ({', '.join(MODELS)}) "
                         "nor an existing file")
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not an ase-equivariant weight file ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an ase-equivariant weight file (format tag missing)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has weight-format version {payload.get('format_version')}; "
                         f"this ase-equivariant reads version {FORMAT_VERSION}")
    net = EquivariantPotential(PotentialConfig.from_dict(payload["config"]))
    net.load_state_dict(payload["state_dict"])
    net.provenance = payload["provenance"]
    return net.to(device=device, dtype=dtype).eval()


def random_model(
    species: Sequence[int] = (1, 6, 8, 13, 14, 29),
    channels: int = 8,
    lmax: int = 2,
    num_blocks: int = 2,
    parity: bool = False,
    cutoff: float = 4.0,
    seed: int = 0,
    dtype: Union[str, torch.dtype] = "float64",
) -> EquivariantPotential:
    """A small randomly initialised potential of the SevenNet-0 architecture, for tests.

    Features are ``channels x 0e + channels/2 x 1 + channels/4 x 2 + ...`` up to ``lmax`` (with odd
    and even copies of every l when ``parity``); scale and shift get random per-species values so
    that per-species terms are exercised.
    """
    generator = torch.Generator().manual_seed(seed)
    parities = ("e", "o") if parity else ("e",)
    hidden = "+".join(f"{max(channels >> l, 1)}x{l}{p}" for l in range(lmax + 1) for p in parities
                      if not (l == 0 and p == "o"))
    config = PotentialConfig(
        species=sorted(species), cutoff=cutoff, cutoff_function={"name": "xplor", "r_on": cutoff - 0.5},
        num_radial_basis=6, lmax_sh=lmax, parity=parity,
        node_irreps=[f"{channels}x0e"] + [hidden] * (num_blocks - 1) + [f"{channels}x0e"],
        radial_hidden=[16], act_radial="silu", act_scalars={"e": "silu", "o": "tanh"},
        act_gates={"e": "silu", "o": "tanh"},
        act_scales={name: second_moment_scale(name) for name in ("silu", "tanh")},
        avg_num_neighbors=[10.0] * num_blocks, readout_hidden=max(channels // 2, 1),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = EquivariantPotential(config)
    net.energy_scale.uniform_(0.5, 1.5, generator=generator)
    net.energy_shift.uniform_(-3.0, -1.0, generator=generator)
    return net.to(resolve_dtype(dtype)).eval()
