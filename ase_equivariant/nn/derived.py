"""Tensors derived from frozen parameters, computed once instead of at every call."""
from typing import Callable, List, Sequence

import torch
from torch import nn

from ..scratch import inference_only


def derived(owner: object, name: str, parameters: Sequence[torch.Tensor], compute: Callable[[], torch.Tensor]):
    """``compute()``, a tensor (or a list of tensors) that depends on ``parameters`` only (e.g.
    weights times their normalisation), kept on ``owner`` under ``name`` while none of
    ``parameters`` requires a gradient (inference: the calculator freezes its model) and until
    one of them changes (in place, which bumps its version, or moved to another device or
    dtype). When a parameter requires a gradient, ``compute()`` runs every call, so that
    autograd sees it.

    Each such tensor would otherwise cost a few small operations per layer and call, in both
    passes: on a small molecule these were a fifth of a call (``benchmarks/ab.py``, ethanol). The
    result must not be modified in place.
    """
    if any(p.requires_grad for p in parameters):
        return compute()
    cache = owner.__dict__.setdefault("_derived", {})
    hit = cache.get(name)
    if hit is None or _stale(hit, parameters):
        hit = cache[name] = ([(p.detach(), p._version) for p in parameters], compute())
    return hit[1]


def _stale(hit, parameters) -> bool:
    """Whether the kept entry ``hit`` no longer describes ``parameters``. The entry holds the
    parameters' storage, so no other tensor can take its address meanwhile. A tensor made under
    ``torch.inference_mode()`` cannot be saved for a backward pass outside it: formed again
    (other values, e.g. objects that only compiled code reads, are kept)."""
    kept, value = hit
    values = value if isinstance(value, list) else [value]
    if any(isinstance(v, torch.Tensor) and inference_only(v) for v in values):
        return True
    return any(old.data_ptr() != p.data_ptr() or (old.dtype, old.device) != (p.dtype, p.device)
               or version != p._version for (old, version), p in zip(kept, parameters))


def parameter_list(parameters: nn.ParameterList) -> List[nn.Parameter]:
    """The parameters of ``parameters``, in order: iterating a ``ParameterList`` looks each one up
    by name (~2 µs a parameter, a few hundred µs per call over the network's layers)."""
    return list(parameters._parameters.values())
