"""Feature masks: which feature each input element belongs to, and the conversions between
per-feature values and per-element tensors that the perturbation engine (perturb.py, NOTE:
[Features and coalitions]) and the methods built on it use: `features` (validated masks and
the feature count), `keep_masks` (coalitions over features -> keep masks over elements),
`scatter_features` (per-feature values -> attributions shaped like the inputs), `feature_sets`
(which features each example holds, NOTE: [Each example's own features]), and `constant`, the
cache of small constant tensors (default masks, number baselines, feature ablation's
coalitions).

NOTE: [Each example's own features]
F is the largest id plus one, but an example need not hold every id below it: a per-example
mask may split one image into 3 regions and the next into 10, and any mask may skip ids
([5, 5, 7, 7, 9, 9] holds 3 features). Feature ablation and permutation need not care beyond
making copies of the ids some example holds only (`held_ids`; a feature an example lacks
changes nothing, and gets exactly 0). Exact Shapley values must: enumerating 2^F coalitions
over ids an example lacks doubles the cost with each one ([0, 0, 30, 30] would take 2^31 rows,
not 3) and makes its sums, so its last bits, depend on the ids its batch-mates hold. Nor may
the estimators that draw coalitions or orders (LIME, KernelSHAP, Shapley sampling): drawing
over an id the example lacks spends samples on a feature that changes nothing, gives it a
coefficient, keeps KernelSHAP sampling where it could enumerate all 2^F_e coalitions of the
example's F_e features, and makes the example's draws depend on the ids the *other* examples
hold, that is on its batch. So `feature_sets` groups the examples by the ids they hold (a
shared mask is one group; a default mask holds every id and costs nothing), each group draws
and fits (or enumerates) over its own features numbered 0..F_e-1 in the order of their ids,
with its examples' own seeds (their positions in the whole batch: NOTE: [Explicit
randomness]), `widen` lays its coalitions over all F ids for the one evaluation of the whole
batch (one call, so a model that picks a target per row still sees the batch it was given),
and `place` puts its
values back at its examples' rows and its ids, exactly 0 at the ids an example lacks. A model
that returns one number per batch explains the batch as one example: it holds every id of the
batch.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import optree
import torch

from . import tree as T

SMALL = 2**16  # elements of the largest constant worth caching (a default mask: 512 KiB)
_CONSTANTS: dict = {}  # (what, ..., dtype, device) -> a small constant tensor the engine never modifies


def constant(key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A cached small constant (a number baseline, feature ablation's coalitions): made once per
    key instead of on every call, where on a GPU each is a kernel or a host-to-device copy.
    Not cached under inference mode (an inference tensor cannot serve outside it), nor when made
    as a torch.func transform's wrapped tensor (served after the transform, one such constant made
    inside ``grad`` turned a later Shapley sampling call's model output from 3 rows into 6), nor above
    `SMALL` elements: the cache outlives the call, and a large constant costs its making far
    less than the memory it would pin (feature ablation's coalitions of a 40x40 RGB image: 22 MiB)."""
    if torch.is_inference_mode_enabled():
        return make()
    t = _CONSTANTS.get(key)
    if t is None:
        t = make()
        if t.numel() > SMALL or torch._C._functorch.is_functorch_wrapped_tensor(t):
            return t  # a wrapped tensor belongs to its transform's level, dead after it
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


class FeatureSet(NamedTuple):
    """Examples that hold the same features, and those features (NOTE: [Each example's own features])."""

    rows: torch.Tensor | None  # the examples' positions in the batch, ascending; None: every example
    ids: torch.Tensor | None  # the features' ids, ascending; None: every id 0..F-1
    n: int  # how many features the examples hold

    def pick(self, values):
        """This set's rows of ``values`` (a tensor or a list with one entry per example; None stays None)."""
        if self.rows is None or values is None:
            return values
        if isinstance(values, torch.Tensor):
            return values[self.rows]
        return [values[i] for i in self.rows.tolist()]

    def count(self, batch: int) -> int:
        """How many examples hold these features, of a batch of ``batch``."""
        return batch if self.rows is None else len(self.rows)


def feature_sets(masks, n: int, batch: int) -> list[FeatureSet]:
    """The examples grouped by the ids their masks hold, in the order of their first example.

    ``batch`` is the rows explained (1 for a model returning one number per batch, whose one
    example holds every id of the batch). One set when all examples hold the same ids, with
    ``ids`` None when those are all of 0..n-1 (a default mask, at no cost)."""
    leaves = T.leaves(masks)
    if all(first_id(m) is not None for m in leaves):  # default masks: a range of ids each, together 0..n-1
        return [FeatureSet(None, None, n)]
    own = [m for m in leaves if m.shape[0] > 1 and batch > 1]  # one mask per example
    shared = [m.flatten() for m in leaves if not (m.shape[0] > 1 and batch > 1)]  # ids every example holds
    if not own:
        ids = torch.unique(shared[0] if len(shared) == 1 else torch.cat(shared))  # ascending
        return [FeatureSet(None, None if len(ids) == n else ids, len(ids))]
    table = torch.zeros(batch, n, dtype=torch.bool, device=leaves[0].device)  # table[i, j]: example i holds id j
    for m in shared:
        table[:, m] = True
    for m in own:
        table.scatter_(1, m.reshape(batch, -1), True)
    kinds, which = torch.unique(table, dim=0, return_inverse=True)
    if kinds.shape[0] == 1:
        return [_held_set(None, kinds[0])]
    sets = [_held_set((which == k).nonzero()[:, 0], kinds[k]) for k in range(kinds.shape[0])]
    return sorted(sets, key=lambda s: int(s.rows[0]))


def held_ids(masks, n: int) -> torch.Tensor | None:
    """The ids some example holds, ascending, or None when every id 0..n-1 is held (a default
    mask at no cost): feature ablation makes copies of the held ids only, so ids with gaps
    ([0, 0, 50000, 50000], token ids as features) cost one copy per feature, not per id."""
    leaves = T.leaves(masks)
    if all(first_id(m) is not None for m in leaves):
        return None
    table = torch.zeros(n, dtype=torch.bool, device=leaves[0].device)
    for m in leaves:
        table.index_fill_(0, m.flatten(), True)
    return None if bool(table.all()) else table.nonzero()[:, 0]


def _held_set(rows: torch.Tensor | None, held: torch.Tensor) -> FeatureSet:
    ids = held.nonzero()[:, 0]
    return FeatureSet(rows, None if len(ids) == len(held) else ids, len(ids))


def widen(parts: Sequence[torch.Tensor], sets: Sequence[FeatureSet], n: int, batch: int, copies: int | None = None):
    """Each set's coalitions over its own features, (its examples or 1, N_s, n_s), laid over all n
    ids: (batch, copies, n), or (1, N, n) for one set shared by the whole batch. An id a set's
    examples lack stays 0 (it has no elements there), and copies past a set's N_s are empty
    coalitions (evaluated with the rest, never read). ``copies`` defaults to the largest N_s."""
    if len(sets) == 1 and sets[0].ids is None and (copies is None or copies == parts[0].shape[1]):
        return parts[0]
    copies = max(z.shape[1] for z in parts) if copies is None else copies
    rows = parts[0].shape[0] if len(sets) == 1 else batch
    out = parts[0].new_zeros((rows, copies, n))
    for s, z in zip(sets, parts):
        at = torch.arange(rows, device=z.device) if s.rows is None or len(sets) == 1 else s.rows
        ids = torch.arange(n, device=z.device) if s.ids is None else s.ids
        out[at[:, None, None], torch.arange(z.shape[1], device=z.device)[:, None], ids] = z
    return out


def place(parts: Sequence[torch.Tensor], sets: Sequence[FeatureSet], n: int, dim: int = -1) -> torch.Tensor:
    """Each set's per-feature values, (its examples, ..., n_s, ...) with the features along
    ``dim``, put at its examples' rows and its ids: (batch, ..., n, ...), 0 at the ids an example
    lacks. Out of place, so an attribution stays differentiable through it."""
    if len(sets) == 1 and sets[0].ids is None:
        return parts[0]
    spread = []
    for s, v in zip(sets, parts):
        d = dim % v.ndim
        if s.ids is not None:
            v = v.new_zeros(v.shape[:d] + (n,) + v.shape[d + 1 :]).index_copy(d, s.ids, v)
        spread.append(v)
    if len(sets) == 1:
        return spread[0]
    order = torch.argsort(torch.cat([s.rows for s in sets]))  # the batch's rows, from the sets' order
    return torch.cat(spread)[order]


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
    if 1 < m.shape[0] != x.shape[0] and m.shape[0] == T.true_batch() and x.shape[0] % m.shape[0] == 0:
        m = T.tile_rows(m, x.shape[0])  # per-example masks inside a fold (smooth, expectation, ...)
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
