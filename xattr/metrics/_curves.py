"""Deletion and insertion curves (Petsiuk et al. 2018): the output as features leave or enter in attribution order.

NOTE: [Deletion and insertion in one batched sweep]
Features (elements, or the groups of a feature mask) are ranked per example by their summed
attribution, highest first (ties keep the lower feature id first). Step k of S removes (deletion)
or restores (insertion) the ``floor(k F / S)`` top-ranked features, for k = 0..S, so the curve
has S + 1 points at the fractions ``floor(k F / S) / F``. A copy's keep mask is one comparison of
each element's rank with the step's count, so no (S, F) coalition matrix is ever built; the
S + 1 copies of the batch are folded into few no-grad model calls (NOTE: [Perturbed copies in
one call]). The area under the curve is the trapezoid rule over those fractions.

NOTE: [Each example's own features]
F is counted per example: the ids that occur in that example's mask (a per-example mask, e.g.
superpixels, may have any number of segments, and ids need not be consecutive: labels 1..k are
k features). An example's curve is the one it gets alone: its own F_i, ``S_i = min(n_steps,
F_i)`` steps (F_i for None) and counts ``floor(k F_i / S_i)``; only the ranking among its own
ids matters, so skipped ids never become phantom steps. The batch is swept with
``S = max_i S_i`` steps; an example with fewer has its last point (all features removed or
restored) repeated, which adds nothing to its area. Fractions are then per example: a mask with
one row per example (B > 1) gives ``fractions`` of shape (B, S + 1); a shared mask (None, or one
row) gives every example the same F, and ``fractions`` stays (S + 1,).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import torch

from .._src import tree as T
from .._src.checks import at_least_float32, check_finite, warn_if_training
from .._src.masks import features
from .._src.budget import copies_per_call
from .._src.copies import perturb
from .._src.gradients import model_calls
from .._src.nesting import new_call_inside_model
from .._src.perturb import baseline_tree
from ._common import attributed, model_rows, passthrough
from ._similarity import result_dtype


class Curve(NamedTuple):
    """A deletion or insertion curve: ``fractions`` (S+1,), ``scores`` (B, S+1), ``auc`` (B,).

    ``fractions`` is (B, S+1) for a feature mask with one row per example (NOTE: [Each
    example's own features]); ``fractions.expand_as(scores)`` reads both forms alike. All three
    are in the model output's dtype widened to at least float32 (float32 for a float16 or
    bfloat16 model, NOTE: [Metrics of half-precision maps]).

    Example:
      >>> curve = xattr.metrics.deletion(f, xattr.saliency(f))(x)
      >>> curve.fractions, curve.scores, curve.auc                 # (S+1,), (B, S+1), (B,)
    """

    fractions: torch.Tensor
    scores: torch.Tensor
    auc: torch.Tensor


def deletion(f: Callable, attr_fn_or_attributions: Any, **options) -> Callable:
    """Deletion curve: the output as the most-attributed features are set to their baseline.

    A faithful attribution makes the output fall fast: lower area under the curve is better.
    Options as `insertion`'s. Returns ``fn(*args) -> Curve``.

    Example:
      >>> f = xattr.target(model, 3)
      >>> curve = xattr.metrics.deletion(f, xattr.saliency(f))(x)    # Curve: curve.auc (B,), lower is better
    """
    return _curve(f, attr_fn_or_attributions, insert=False, **options)


def insertion(f: Callable, attr_fn_or_attributions: Any, **options) -> Callable:
    """Insertion curve: the output as the most-attributed features are restored, starting from the baseline.

    A faithful attribution makes the output rise fast: higher area under the curve is better.

    Args:
      f: model function with one output per example (``xattr.target``); a probability (e.g. a
        softmax target) keeps curves comparable across examples.
      attr_fn_or_attributions: an attribution function (called once) or attributions like ``args[argnums]``.
      n_steps: S, the number of steps (at most F, the number of features, counted per example:
        the ids its mask uses); None: one per feature.
      baselines: what a removed feature becomes (number, tensor broadcastable to the input, or a
        tree like ``args[argnums]``): zeros, a blurred copy, the data mean.
      feature_mask: int feature ids per element (NOTE: [Features and coalitions]), shared or
        one mask per example (each example's curve then depends only on its own ids, NOTE: [Each
        example's own features]); `patch_mask` builds square patches. None: every element is a feature.
      argnums, chunk_size, memory_budget: as for the perturbation methods.

    Returns:
      ``fn(*args) -> Curve(fractions, scores, auc)``.

    Example:
      >>> f = xattr.target(model, 3)
      >>> curve = xattr.metrics.insertion(f, xattr.integrated_gradients(f))(x)   # curve.auc (B,): higher is better
    """
    return _curve(f, attr_fn_or_attributions, insert=True, **options)


def _curve(
    f: Callable,
    attributions: Any,
    *,
    insert: bool,
    n_steps: int | None = None,
    baselines: Any = 0.0,
    feature_mask: Any = None,
    argnums: int | Sequence[int] = 0,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
) -> Callable:
    if n_steps is not None and (not isinstance(n_steps, int) or n_steps < 1):
        raise ValueError(f"n_steps must be a positive int or None, got {n_steps!r}")
    nums, as_tuple = T.normalize_argnums(argnums)

    @new_call_inside_model  # NOTE: [Attributions inside a model's forward] in nesting.py
    def fn(*args):
        warn_if_training(f)
        idx, selected, _, batch, x, phi = attributed(args, nums, as_tuple, attributions)
        masks, n_feat = features(selected, feature_mask)
        base = baseline_tree(selected, baselines, as_tuple)
        ranks, n_own = _element_ranks(phi if as_tuple else (phi,), masks, selected, n_feat)
        counts, steps = _step_counts(n_own, n_steps)  # (B, S+1)
        per = copies_per_call(selected, batch, chunk_size, memory_budget, steps + 1)
        outs = []
        with model_calls(), T.batch_scope(batch):  # differentiable inside grad transforms (NOTE: [Detached results])
            for s in range(0, steps + 1, per):
                e = min(s + per, steps + 1)
                c = counts[:, s:e].T  # (e - s, B)
                rows = []
                for xi, bi, ri in zip(T.leaves(selected), T.leaves(base), ranks):
                    cnt = c.reshape(tuple(c.shape) + (1,) * (xi.ndim - 1))
                    keep = ri.unsqueeze(0) < cnt if insert else ri.unsqueeze(0) >= cnt
                    rows.append(perturb(xi.unsqueeze(0), bi.unsqueeze(0), keep).reshape((-1,) + tuple(xi.shape[1:])))
                tree = T.optree.tree_unflatten(T.optree.tree_structure(selected, namespace="xattr"), rows)
                call = passthrough(args, idx, e - s, batch)
                out = model_rows(f(*T.split_args(call, idx)[1](tree)))
                check_finite(out)
                outs.append(out.reshape(e - s, batch))
        # NOTE: [Metrics of half-precision maps]: counts past 65504 are inf in float16
        scores = torch.cat(outs).T  # (B, S+1)
        dtype = result_dtype(scores.dtype)
        scores = scores.to(dtype)
        fractions = counts.to(dtype) / n_own.to(dtype)[:, None]
        auc = torch.trapezoid(scores, fractions, dim=1)
        return Curve(fractions if _per_example(masks, batch) else fractions[0], scores, auc)

    return fn


def _element_ranks(phi: tuple, masks, selected, n_feat: int) -> tuple[list, torch.Tensor]:
    """Each element's feature rank per example (0 = highest summed attribution), one tensor per
    input, and each example's number of features F_i, (B,): the ids its mask uses, ranked among
    themselves (NOTE: [Each example's own features])."""
    leaves_x, leaves_m, leaves_a = T.leaves(selected), T.leaves(masks), T.leaves(phi)
    batch = leaves_x[0].shape[0]
    device = leaves_x[0].device
    ids = [torch.broadcast_to(m, x.shape).reshape(batch, -1) for m, x in zip(leaves_m, leaves_x)]
    dtype = at_least_float32(leaves_a[0].dtype)
    score = torch.zeros(batch, n_feat, dtype=dtype, device=device)
    present = torch.zeros(batch, n_feat, dtype=torch.long, device=device)
    for i, a in zip(ids, leaves_a):
        score.scatter_add_(1, i, a.reshape(batch, -1).to(dtype))
        present.scatter_(1, i, 1)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    # an id's rank counts only the used ids before it (an unused id's rank is never looked up)
    in_order = present.gather(1, order).cumsum(1) - 1
    rank = torch.empty_like(order).scatter_(1, order, in_order)
    return [torch.gather(rank, 1, i).reshape(x.shape) for i, x in zip(ids, leaves_x)], present.sum(1)


def _step_counts(n_own: torch.Tensor, n_steps: int | None) -> tuple[torch.Tensor, int]:
    """The features removed (restored) at each step, (B, S+1), and S: example i's
    ``floor(k F_i / S_i)`` for k <= S_i, then F_i (NOTE: [Each example's own features])."""
    own_steps = n_own if n_steps is None else n_own.clamp(max=n_steps)
    steps = int(own_steps.max())
    k = torch.arange(steps + 1, device=n_own.device)
    counts = k * n_own[:, None] // own_steps[:, None]
    return torch.where(k <= own_steps[:, None], counts, n_own[:, None]), steps


def _per_example(masks, batch: int) -> bool:
    """Whether a feature mask has one row per example (B > 1): then each example has its own fractions."""
    return batch > 1 and any(m.shape[0] == batch for m in T.leaves(masks))


def patch_mask(shape: Sequence[int], patch: Sequence[int]) -> torch.Tensor:
    """Feature ids (1, *shape) grouping one example's elements into patches (blocks) of size ``patch``.

    ``patch`` has one entry per dim of ``shape`` (e.g. ``(3, 4, 4)`` for a 3x32x32 image: all
    channels of a 4x4 window are one feature); edge blocks may be smaller. Ids run row-major over
    the block grid.

    Example:
      >>> patches = xattr.metrics.patch_mask((1, 8, 8), (1, 2, 2))           # (1, 1, 8, 8): 16 patch ids
      >>> curve = xattr.metrics.deletion(f, attributions, feature_mask=patches)(x)
    """
    shape, patch = tuple(shape), tuple(patch)
    if len(shape) != len(patch) or any(p < 1 for p in patch):
        raise ValueError(f"patch {patch} must give a positive size for each dim of {shape}")
    grid = [math.ceil(s / p) for s, p in zip(shape, patch)]
    ids = torch.zeros(shape, dtype=torch.long)
    for d, (s, p, g) in enumerate(zip(shape, patch, grid)):
        block = torch.arange(s) // p
        stride = math.prod(grid[d + 1 :])
        ids += (block * stride).reshape((-1,) + (1,) * (len(shape) - d - 1))
    return ids.unsqueeze(0)
