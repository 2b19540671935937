"""How concentrated an attribution is: sparseness (Gini index) and complexity (entropy)."""

from __future__ import annotations

from typing import Any

import torch

from .._src.nesting import new_call_inside_model
from ._common import batch_of, flat, resolve
from ._similarity import result_dtype


def _magnitudes(attributions: Any, args: tuple) -> torch.Tensor:
    """``|phi|`` as (B, P) rows, widened to at least float32 (NOTE: [Metrics of half-precision
    maps]): in float16 the positions 1..P, ``P * sum`` and the sum of an image's magnitudes
    overflow (to inf, and the index comes out NaN or 0)."""
    phi = resolve(attributions, args)
    batch_of(phi)  # NOTE: [Empty batches]
    a = flat(phi).abs()
    return a.to(result_dtype(a.dtype))


@new_call_inside_model  # an attribution function's call (NOTE: [Attributions inside a model's forward])
def sparseness(attributions: Any, *args) -> torch.Tensor:
    """The Gini index of ``|phi|`` per example (Chalasani et al. 2020): (B,), in [0, 1 - 1/P].

    ``G = sum_k (2k - P - 1) a_(k) / (P sum_k a_(k))`` with ``a_(1) <= ... <= a_(P)`` the sorted
    magnitudes of all P attributed elements of an example (all input tensors together). 0 for a
    uniform map, ``1 - 1/P`` (the maximum) for a map with one non-zero element; nan for an
    all-zero map, which has no distribution to measure.

    ``attributions``: a tensor (B, ...), a tuple of them, or an attribution function, then
    called as ``attributions(*args)``. Computed and returned in their dtype widened to at
    least float32: float32 for float16 and bfloat16 maps (NOTE: [Metrics of half-precision maps]).

    Example:
      >>> gini = xattr.metrics.sparseness(xattr.saliency(xattr.target(model, 3))(x))   # (B,), higher: sparser
    """
    a = torch.sort(_magnitudes(attributions, args), dim=1).values
    p = a.shape[1]
    k = torch.arange(1, p + 1, dtype=a.dtype, device=a.device)
    total = a.sum(1)
    gini = ((2 * k - p - 1) * a).sum(1) / (p * total)
    return torch.where(total > 0, gini, torch.full_like(gini, float("nan")))


@new_call_inside_model
def complexity(attributions: Any, *args) -> torch.Tensor:
    """The entropy of the normalised magnitudes ``p = |phi| / sum |phi|`` per example (Bhatt et al. 2020).

    ``H = -sum_j p_j log p_j`` (natural log, ``0 log 0 = 0``): (B,), in [0, log P]. 0 for a map
    with one non-zero element, ``log P`` (the maximum) for a uniform map; nan for an all-zero map.
    Lower is simpler. Arguments as `sparseness`'s.

    Example:
      >>> h = xattr.metrics.complexity(xattr.saliency(xattr.target(model, 3))(x))      # (B,), lower: simpler
    """
    a = _magnitudes(attributions, args)
    total = a.sum(1, keepdim=True)
    p = a / torch.where(total > 0, total, torch.ones_like(total))
    h = -torch.special.xlogy(p, p).sum(1)
    return torch.where(total[:, 0] > 0, h, torch.full_like(h, float("nan")))
