"""Tensors derived from frozen parameters, computed once instead of at every call."""
from typing import Callable, Sequence

import torch


def derived(owner: object, name: str, parameters: Sequence[torch.Tensor], compute: Callable[[], torch.Tensor]):
    """``compute()``, a tensor that depends on ``parameters`` only (e.g. weights times their
    normalisation), kept on ``owner`` under ``name`` while none of ``parameters`` requires a
    gradient (inference: the calculator freezes its model) and until one of them changes (in
    place, which bumps its version, or moved to another device or dtype). When a parameter
    requires a gradient, ``compute()`` runs every call, so that autograd sees it.

    Each such tensor would otherwise cost a few small operations per layer and call, in both
    passes: on a small molecule these were a fifth of a call (``benchmarks/ab.py``, ethanol). The
    result must not be modified in place.
    """
    if any(p.requires_grad for p in parameters):
        return compute()
    cache = owner.__dict__.setdefault("_derived", {})
    hit = cache.get(name)
    # the entry holds the parameters' storage: no other tensor can take its address meanwhile
    if hit is None or any(kept.data_ptr() != p.data_ptr() or (kept.dtype, kept.device) != (p.dtype, p.device)
                          or version != p._version for (kept, version), p in zip(hit[0], parameters)):
        hit = cache[name] = ([(p.detach(), p._version) for p in parameters], compute())
    return hit[1]
