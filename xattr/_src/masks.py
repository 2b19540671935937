"""Feature masks: which feature each input element belongs to, and the conversions between
per-feature values and per-element tensors that the perturbation engine (perturb.py, NOTE:
[Features and coalitions]) and the methods built on it use: `features` (validated masks and
the feature count), `keep_masks` (coalitions over features -> keep masks over elements),
`scatter_features` (per-feature values -> attributions shaped like the inputs), and `constant`,
the cache of small constant tensors (default masks, number baselines, feature ablation's
coalitions).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import optree
import torch

from . import tree as T

SMALL = 2**16  # elements of the largest constant worth caching (a default mask: 512 KiB)
_CONSTANTS: dict = {}  # (what, ..., dtype, device) -> a small constant tensor the engine never modifies


def constant(key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A cached small constant (a number baseline, feature ablation's coalitions): made once per
    key instead of on every call, where on a GPU each is a kernel or a host-to-device copy.
    Not cached under inference mode (an inference tensor cannot serve outside it), nor above
    `SMALL` elements: the cache outlives the call, and a large constant costs its making far
    less than the memory it would pin (feature ablation's coalitions of a 40x40 RGB image: 22 MiB)."""
    if torch.is_inference_mode_enabled():
        return make()
    t = _CONSTANTS.get(key)
    if t is None:
        t = make()
        if t.numel() > SMALL:
            return t
        if len(_CONSTANTS) >= 64:
            _CONSTANTS.clear()
        _CONSTANTS[key] = t
    return t


def default_mask(selected) -> tuple[Any, int]:
    """Every element of every input its own feature: ids run on across the tensors.

    Each mask remembers its first id (`first_id`): its features are a contiguous range, so
    copies and attributions are slices of the coalitions and values, not gathers. Masks of up
    to `SMALL` ids are cached (`constant` caches no larger ones).
    """
    masks, start = [], 0
    for leaf in T.leaves(selected):
        n, shape = math.prod(leaf.shape[1:]), tuple(leaf.shape[1:])
        make = lambda: _id_range(start, shape, leaf.device)  # noqa: E731
        masks.append(constant(("default mask", start, shape, leaf.device), make))
        start += n
    it = iter(masks)
    return T.tree_map(lambda _: next(it), selected), start


def _id_range(start: int, shape: tuple, device) -> torch.Tensor:
    m = torch.arange(start, start + math.prod(shape), device=device).reshape((1,) + shape)
    m._xattr_first_id = start
    return m


def features(selected, feature_mask) -> tuple[Any, int]:
    """(mask tree like ``selected`` of long tensors broadcastable to each input, F).

    ``feature_mask`` None gives `default_mask`; one tensor is used for a single input; a tree
    must match the inputs (for one attributed argument, a tree like that argument). Ids must be non-negative integers; F is the largest id plus one.
    """
    if feature_mask is None:
        masks, n = default_mask(selected)
        _check_some(n, "the attributed inputs have no elements per example: there is no feature to perturb")
        return masks, n
    if isinstance(feature_mask, torch.Tensor) and len(T.leaves(selected)) == 1:
        feature_mask = T.tree_map(lambda _: feature_mask, selected)
    elif len(selected) == 1 and _structure(feature_mask) != _structure(selected):
        feature_mask = (feature_mask,)  # a tree like the one attributed argument (an int argnums)
    try:
        masks = T.tree_map(_check_mask, selected, feature_mask)
    except (ValueError, TypeError) as err:
        if "feature_mask" in str(err):
            raise
        raise ValueError(f"feature_mask must have the structure of the attributed inputs: {err}") from None
    n = max((int(m.max()) + 1 for m in T.leaves(masks) if m.numel()), default=0)
    _check_some(n, "feature_mask selects no features: the attributed inputs have no elements")
    return masks, n


def _check_some(n: int, why: str) -> None:
    """Refuses inputs without a feature to perturb (each method would fail inside torch): a
    (B, 0) input with the default mask, or a mask of no elements."""
    if n == 0:
        raise ValueError(why)


def first_id(m: torch.Tensor) -> int | None:
    """The first id of a `default_mask` leaf (ids first_id, first_id + 1, ... in row-major
    order); None for any other mask."""
    return getattr(m, "_xattr_first_id", None)


def _structure(tree):
    return optree.tree_structure(tree, namespace="xattr")


def _check_mask(x: torch.Tensor, m) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"perturbation methods attribute tensors, got an input leaf of type {type(x).__name__}")
    m = torch.as_tensor(m, device=x.device)
    given = tuple(m.shape)
    if m.is_floating_point() or m.is_complex() or m.dtype == torch.bool:
        raise TypeError(
            f"feature_mask must hold integer feature ids (0, 1, ..., F-1), got dtype {m.dtype}; "
            "a boolean mask is ambiguous: use mask.long() for two features"
        )
    if m.ndim > x.ndim:
        raise ValueError(f"feature_mask of shape {given} has more dims than the input {tuple(x.shape)}")
    if m.ndim < x.ndim:  # a mask for one example: add the batch axis
        m = m.reshape((1,) * (x.ndim - m.ndim) + tuple(m.shape))
    if m.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"feature_mask has {m.shape[0]} rows for a batch of {x.shape[0]}: use 1 (shared) or B")
    try:
        fits = torch.broadcast_shapes(m.shape, x.shape) == x.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"feature_mask of shape {given} does not broadcast to the input {tuple(x.shape)}: give one "
            f"example's ids {tuple(x.shape[1:])} (or (1, ...)), or one mask per example {tuple(x.shape)}"
        )
    if m.numel() and int(m.min()) < 0:
        raise ValueError(f"feature_mask ids must be >= 0, got {int(m.min())}")
    return m.long()


def scatter_features(values: torch.Tensor, masks, selected):
    """Per-feature values (R, [K,] F) spread onto the inputs' elements: a tree like ``selected``.

    The result has the inputs' shapes with R rows (the batch, or one row for a model that
    returns one number per batch), and the K axis after the rows when values has one.
    """
    rows, lead = values.shape[0], values.shape[:-1]

    def spread(x, m):
        if m.shape[0] not in (1, rows):  # attributions of one row (aggregate mode)
            raise ValueError(
                "the model returns one number per batch, so attributions have one row: the feature_mask must be "
                f"shared by all examples (dim 0 of size 1), got {m.shape[0]} rows"
            )
        start = first_id(m)
        if start is not None:  # a range of ids: a slice
            n = math.prod(x.shape[1:])
            picked = values[..., start : start + n] if start or n != values.shape[-1] else values
            shape = lead + x.shape[1:]
            picked = picked if picked.shape == shape else picked.reshape(shape)
            return picked.to(_float(x, values))
        full = torch.broadcast_to(m, (rows,) + x.shape[1:]).reshape(rows, -1)
        if values.ndim == 2:
            return torch.gather(values, 1, full).reshape((rows,) + x.shape[1:]).to(_float(x, values))
        k = values.shape[1]
        idx = full[:, None, :].expand(-1, k, -1)
        return torch.gather(values, 2, idx).reshape((rows, k) + x.shape[1:]).to(_float(x, values))

    return T.tree_map(spread, selected, masks)


def scatterer(masks, selected) -> Callable[[torch.Tensor], Any]:
    """``values -> scatter_features(values, masks, selected)``, holding the inputs' shapes and
    dtypes only (meta tensors), for a prepared call (NOTE: [Prepared calls]). One input of
    shape (B, F) with every feature its own needs no work at all: the values are its
    attributions, when they have the input's float dtype (a bool or integer input's are floats:
    they go through `scatter_features`)."""
    like = T.tree_map(lambda x: torch.empty(x.shape, dtype=x.dtype, device="meta"), selected)
    if type(selected) is tuple and len(selected) == 1 and isinstance(selected[0], torch.Tensor) and selected[0].ndim == 2:
        (x,), (m,) = selected, T.leaves(masks)
        if first_id(m) == 0 and x.is_floating_point():  # the default mask of the sole input: ids 0..F-1, its elements in order
            dtype = x.dtype
            return lambda v: (v,) if v.dtype == dtype else scatter_features(v, masks, like)
    return lambda v: scatter_features(v, masks, like)


def _float(x: torch.Tensor, values: torch.Tensor) -> torch.dtype:
    """The attributions' dtype: the input's float dtype (the default one for bool and integer
    inputs), widened to the model outputs' where those are wider (float16 inputs to a model that
    answers in float32 must not round its differences to float16, nor overflow them to inf)."""
    own = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    return torch.promote_types(own, values.dtype) if values.is_floating_point() else own


def keep_masks(coalitions: torch.Tensor, masks, selected, batch: int):
    """Coalitions (B or 1, c, F) -> per input a keep tensor (c, B, ...) broadcastable to the copies."""

    def one(x, m):
        start = first_id(m)
        if start is not None:  # a range of ids: a slice of the coalitions
            z = coalitions[:, :, start : start + math.prod(x.shape[1:])]
            return z.transpose(0, 1).reshape((z.shape[1], z.shape[0]) + tuple(x.shape[1:]))
        rows = m.shape[0]
        flat = torch.broadcast_to(m, (rows,) + tuple(x.shape[1:])).reshape(rows, -1)
        z = coalitions
        if z.shape[0] != flat.shape[0]:
            shared = max(z.shape[0], flat.shape[0])
            z, flat = z.expand(shared, -1, -1), flat.expand(shared, -1)
        keep = torch.gather(z, 2, flat[:, None, :].expand(-1, z.shape[1], -1))  # (rows, c, P)
        return keep.transpose(0, 1).reshape((z.shape[1], z.shape[0]) + tuple(x.shape[1:]))

    return T.tree_map(one, selected, masks)
