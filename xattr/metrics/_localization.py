"""Localization of attributions against a ground-truth mask: pointing game, relevance mass and
rank accuracy, attribution localization.

NOTE: [Maps and masks of the localization metrics]
The metrics compare one map per example with a ground-truth region (an object's bounding box
or segmentation, a planted patch). The map is the attribution with its channels summed, as
everywhere in xattr (`xattr.viz` draws the same map): attributions ``(B, C, *spatial)`` give
``(B, *spatial)`` with ``channel_dim=1`` (the default); ``channel_dim=None`` takes the
attributions as the map itself (tabular data, a map already reduced). Summing keeps the sign,
so a pixel whose channels cancel counts as unimportant.

The mask is 0/1 (or bool) over the map's elements: ``(B, *spatial)`` one per example,
``(*spatial)`` shared by every example, or with a size-1 channel axis, ``(B, 1, *spatial)``.
An example whose mask is empty has nothing to localize: a ValueError, not a silent number.
Non-finite attributions are refused too (NaN has no rank).

NOTE: [Ties in the localization metrics]
A map can have several maximal pixels (a saturated or a constant map), and several pixels can
share the value at the top-K boundary. Breaking such ties by position would reward maps for
where their pixels happen to be stored, so ties count as a uniformly random choice among the
tied pixels, in expectation: the pointing game scores the fraction of the maximal pixels that
hit, and the rank accuracy counts the tied pixels at the boundary in proportion to how many of
them lie in the mask. A constant map therefore scores ``|mask| / N`` on both, what a random
guess scores, and the numbers do not change when the pixels are permuted.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F

from .._src.nesting import new_call_inside_model
from ._common import batch_of, resolve
from ._similarity import result_dtype


@new_call_inside_model  # an attribution function's call (NOTE: [Attributions inside a model's forward])
def pointing_game(attributions: Any, mask, *args, tolerance: float = 0, channel_dim: int | None = 1) -> torch.Tensor:
    """Whether the map's maximum falls in the mask (Zhang et al. 2018), one number per example.

    1.0 when the maximal pixel lies in the mask or within Euclidean distance ``tolerance`` of
    it, measured in pixels over the spatial dims (the paper uses 15 pixels on its images),
    else 0.0; with several maximal pixels, the fraction of them that hit (NOTE: [Ties in the
    localization metrics]).

    Args:
      attributions: a tensor ``(B, C, *spatial)`` (``(B, *spatial)`` with ``channel_dim=None``),
        or an attribution function, then called as ``attributions(*args)``.
      mask: the ground truth, 0/1 or bool (NOTE: [Maps and masks of the localization metrics]).
      tolerance: a radius in pixels, >= 0.
      channel_dim: the channel axis that is summed, or None for none.

    Returns:
      (B,) tensor in [0, 1], in the attributions' dtype widened to at least float32.

    Example:
      >>> hit = xattr.metrics.pointing_game(xattr.saliency(xattr.target(model, 3))(x), masks)   # (B,); masks (B, H, W)
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
        raise ValueError(f"tolerance must be a finite number of pixels >= 0, got {tolerance!r}")
    m, k, spatial = _map_and_mask(attributions, mask, args, channel_dim)
    if tolerance > 0:
        k = _dilated(k, spatial, float(tolerance))
    top = m == m.amax(1, keepdim=True)
    return (top & k).sum(1).to(m.dtype) / top.sum(1).to(m.dtype)


@new_call_inside_model
def relevance_mass_accuracy(attributions: Any, mask, *args, channel_dim: int | None = 1) -> torch.Tensor:
    """The share of the positive relevance that lies in the mask (Arras, Osman, Samek 2022).

    ``sum_{j in mask} max(m_j, 0) / sum_j max(m_j, 0)`` for the map ``m``: (B,), in [0, 1];
    1 when all positive relevance is inside, ``|mask| / N`` for a constant positive map; nan
    for a map with no positive element. Arguments as `pointing_game`'s.

    Example:
      >>> acc = xattr.metrics.relevance_mass_accuracy(xattr.saliency(xattr.target(model, 3))(x), masks)   # (B,)
    """
    m, k, _ = _map_and_mask(attributions, mask, args, channel_dim)
    return _mass(m, k)


@new_call_inside_model
def relevance_rank_accuracy(attributions: Any, mask, *args, channel_dim: int | None = 1) -> torch.Tensor:
    """The share of the ``K = |mask|`` highest-ranked pixels that lie in the mask (Arras, Osman,
    Samek 2022), one number per example with its own K.

    Ranked by the signed map (channels summed); ties at the K-th value count in expectation
    (NOTE: [Ties in the localization metrics]). (B,), in [0, 1]; 1 when the mask's pixels
    are the top K, ``|mask| / N`` for a constant map. Arguments as `pointing_game`'s.

    Example:
      >>> acc = xattr.metrics.relevance_rank_accuracy(xattr.saliency(xattr.target(model, 3))(x), masks)   # (B,)
    """
    m, k, _ = _map_and_mask(attributions, mask, args, channel_dim)
    size = k.sum(1)  # K per example, >= 1
    kth = torch.sort(m, dim=1, descending=True).values.gather(1, (size - 1)[:, None])  # the K-th largest
    above, tied = m > kth, m == kth
    rest = (size - above.sum(1)).to(m.dtype)  # how many of the tied pixels the top K takes
    inside = (above & k).sum(1).to(m.dtype) + rest * (tied & k).sum(1).to(m.dtype) / tied.sum(1).to(m.dtype)
    return inside / size.to(m.dtype)


@new_call_inside_model
def attribution_localization(
    attributions: Any, mask, *args, weighted: bool = False, channel_dim: int | None = 1
) -> torch.Tensor:
    """Attribution localization (Kohlbrenner et al. 2020): ``mu = R_in / R_tot`` of the positive
    relevance, and with ``weighted=True`` ``mu_w = mu * N / |mask|``.

    ``mu`` is `relevance_mass_accuracy`. The weighting divides by the share of the image the
    mask covers, so that a constant positive map scores 1 whatever the mask's size and a map
    more concentrated on the object than chance scores above 1 (at most ``N / |mask|``):
    large objects no longer score high for free. Kohlbrenner et al. also leave out images
    whose object covers much of the image; select those examples yourself. Arguments as
    `pointing_game`'s; nan for a map with no positive element.

    Example:
      >>> mu = xattr.metrics.attribution_localization(xattr.saliency(xattr.target(model, 3))(x), masks)   # (B,)
    """
    if not isinstance(weighted, bool):
        raise TypeError(f"weighted must be True or False, got {weighted!r}")
    m, k, _ = _map_and_mask(attributions, mask, args, channel_dim)
    mu = _mass(m, k)
    if not weighted:
        return mu
    return mu * m.shape[1] / k.sum(1).to(mu.dtype)


def _mass(m: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    pos = m.clamp(min=0)
    total = pos.sum(1)
    inside = (pos * k).sum(1)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, inside / safe, torch.full_like(total, float("nan")))


def _map_and_mask(attributions, mask, args, channel_dim):
    """(map (B, N) widened to >= float32, mask (B, N) bool, the spatial shape) after the checks
    of NOTE: [Maps and masks of the localization metrics]."""
    a = resolve(attributions, args)
    if isinstance(a, (tuple, list)) and len(a) == 1:
        a = a[0]
    if not isinstance(a, torch.Tensor):
        raise TypeError(
            "localization metrics need one attribution tensor (B, C, *spatial), got "
            f"{type(a).__name__}; pass each input's attributions separately"
        )
    batch_of(a)  # NOTE: [Empty batches]
    if channel_dim is not None:
        if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
            raise TypeError(f"channel_dim must be an int or None, got {channel_dim!r}")
        cd = channel_dim + a.ndim if channel_dim < 0 else channel_dim
        if not 1 <= cd < a.ndim or a.ndim < 3:
            raise ValueError(
                f"channel_dim={channel_dim} does not name a channel axis of attributions of shape "
                f"{tuple(a.shape)} (it must be a dim after the batch, with a spatial dim left); pass "
                "channel_dim=None for attributions without channels"
            )
        m = a.sum(cd)
    else:
        if a.ndim < 2:
            raise ValueError(f"attributions of shape {tuple(a.shape)} have no element axis after the batch")
        m = a
    m = m.to(result_dtype(m.dtype))
    if not torch.isfinite(m).all():
        raise ValueError("attributions contain nan or inf; localization metrics need finite maps")
    spatial = tuple(m.shape[1:])
    k = _mask(mask, m.shape, a.ndim if channel_dim is not None else None)
    empty = (k.sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"the mask of example(s) {empty} is empty: there is no region to localize")
    return m.reshape(m.shape[0], -1), k, spatial


def _mask(mask, map_shape: tuple, attr_ndim: int | None) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a tensor (bool or 0/1), got {type(mask).__name__}")
    shape = tuple(mask.shape)
    if attr_ndim is not None and mask.ndim == attr_ndim and shape[1:2] == (1,) and len(map_shape) == attr_ndim - 1:
        mask = mask.squeeze(1)  # a (B, 1, *spatial) mask over channel-summed maps
    if tuple(mask.shape) == tuple(map_shape[1:]):
        mask = mask.expand(map_shape)  # one mask shared by every example
    if tuple(mask.shape) != tuple(map_shape):
        raise ValueError(
            f"mask of shape {shape} does not match the map of shape {tuple(map_shape)} (the attributions "
            f"with their channels summed): give it (B, *spatial), (*spatial) or (B, 1, *spatial)"
        )
    if mask.dtype != torch.bool:
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must be bool or hold only 0 and 1")
        mask = mask != 0
    return mask.reshape(map_shape[0], -1)


def _dilated(k: torch.Tensor, spatial: tuple, radius: float) -> torch.Tensor:
    """The mask grown by every pixel within Euclidean distance ``radius`` (in pixels) of it."""
    r = int(math.floor(radius))
    grid = k.reshape((k.shape[0],) + spatial)
    padded = F.pad(grid.to(torch.uint8), [r, r] * len(spatial))  # pad takes the last dim first
    out = torch.zeros_like(grid)
    for offset in itertools.product(range(-r, r + 1), repeat=len(spatial)):
        if sum(o * o for o in offset) > radius * radius:
            continue
        window = (slice(None),) + tuple(slice(r + o, r + o + n) for o, n in zip(offset, spatial))
        out |= padded[window] != 0
    return out.reshape(k.shape)
