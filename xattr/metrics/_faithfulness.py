"""Faithfulness correlation (Bhatt et al. 2020) and monotonicity (Nguyen & Martinez 2020; Arya et al. 2019).

NOTE: [Features of the faithfulness metrics]
Features are the elements of the attributed inputs, or the groups of a ``feature_mask`` (int ids
per element, shared or one mask per example, as for `deletion`). A feature's attribution is the
sum of its elements' attributions. As in NOTE: [Each example's own features], an example only
has the features whose ids occur in its own mask: subsets are drawn among those, correlations
run over those, and the others are never looked at (a per-example mask may skip ids).

NOTE: [Random subsets per example]
`faithfulness_correlation` draws each subset as the ``subset_size`` features with the smallest
of one uniform key per feature (a uniformly random subset of that size). The keys of example i
come from its own generator (`per_example`, NOTE: [Explicit randomness]), so with an int seed an
example gets the same subsets whatever batch it is in, and all are drawn before the copies are
chunked.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .._src import tree as T
from .._src.budget import copies_per_call
from .._src.checks import baselines_like, check_finite, check_model_fn, warn_if_training
from .._src.copies import perturb
from .._src.gradients import model_calls
from .._src.masks import features
from .._src.nesting import new_call_inside_model
from .._src.perturb import baseline_tree
from .._src.sampling import per_example, streams
from ._common import attributed, draw_copies, model_rows, passthrough
from ._curves import insertion
from ._infidelity import _perturbation
from ._similarity import _pearson, _ranks


def faithfulness_correlation(
    f: Callable,
    attr_fn_or_attributions: Any,
    *,
    subset_size: int,
    n_samples: int = 20,
    baselines: Any = 0.0,
    feature_mask: Any = None,
    argnums: int | Sequence[int] = 0,
    generator=None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
) -> Callable:
    """Faithfulness correlation: Pearson's r, over random feature subsets S, of the attributions'
    sum over S and the output's drop when S is set to the baseline; one number per example.

    ``corr_S( sum_{i in S} phi_i ,  f(x) - f(x with x_S = baseline_S) )`` over ``n_samples``
    subsets of ``subset_size`` features each, drawn uniformly per example (Bhatt, Weller, Moura,
    IJCAI 2020). Higher is better; 1 for the exact global attributions of a linear model.

    Args:
      f: model function with one output per example (``xattr.target`` chooses it).
      attr_fn_or_attributions: an attribution function (called once at the inputs) or
        precomputed attributions shaped like ``args[argnums]``.
      subset_size: |S|, at least 1 and less than every example's number of features.
      n_samples: subsets per example, at least 2.
      baselines: what a removed feature becomes (number, tensor broadcastable to the input, or a
        tree like ``args[argnums]``).
      feature_mask: int feature ids per element, shared or one mask per example (NOTE:
        [Features of the faithfulness metrics]); None: every element is a feature.
      argnums: the attributed argument(s); the others pass through, tiled with the copies.
      generator: int seed or torch.Generator (NOTE: [Random subsets per example]).
      chunk_size, memory_budget: model rows, or bytes of perturbed inputs, per model call.

    Returns:
      ``fn(*args) -> (B,)`` correlations in float64 (nan where the attribution sums or the drops
      are the same for every subset: an all-zero attribution, a model blind to the features).

    Example:
      >>> f = xattr.target(model, 3)
      >>> r = xattr.metrics.faithfulness_correlation(f, xattr.saliency(f), subset_size=16, generator=0)(x)  # (B,)
    """
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 1:
        raise ValueError(f"subset_size must be a positive int, got {subset_size!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2 (a correlation needs two subsets at least), got {n_samples!r}")
    check_model_fn(f, "faithfulness_correlation", ", one output per example")
    nums, as_tuple = T.normalize_argnums(argnums)
    n = n_samples

    @new_call_inside_model  # NOTE: [Attributions inside a model's forward] in nesting.py
    def fn(*args):
        warn_if_training(f)
        idx, selected, _, batch, x, phi = attributed(args, nums, as_tuple, attr_fn_or_attributions)
        ids, score, present = feature_scores(selected, phi if as_tuple else (phi,), feature_mask)
        n_own = present.sum(1)
        if int(n_own.min()) <= subset_size:
            raise ValueError(
                f"subset_size={subset_size} must be less than the number of features of every example "
                f"(the fewest here: {int(n_own.min())}); pass a smaller subset_size or a finer feature_mask"
            )
        (stream,) = streams(generator, 1)
        keys = torch.empty(batch, n, score.shape[1], dtype=torch.float64, device=score.device)
        keys = per_example(stream, keys, lambda v, g: v.uniform_(0.0, 1.0, generator=g))
        keys = keys.masked_fill(~present[:, None, :], 2.0)  # NOTE: [Random subsets per example]
        picked = keys.topk(subset_size, dim=-1, largest=False).indices
        chosen = torch.zeros_like(keys, dtype=torch.bool).scatter_(-1, picked, True)  # (B, n, F)
        sums = (chosen * score[:, None, :]).sum(-1)  # (B, n)
        base = baseline_tree(selected, baselines, as_tuple)

        def rows(s: int, e: int) -> list:
            out = []
            for xi, bi, ii in zip(T.leaves(selected), T.leaves(base), ids):
                gone = chosen[:, s:e].gather(-1, ii[:, None, :].expand(-1, e - s, -1))  # (B, e - s, P)
                keep = ~gone.transpose(0, 1).reshape((e - s,) + tuple(xi.shape))
                out.append(perturb(xi.unsqueeze(0), bi.unsqueeze(0), keep).reshape((-1,) + tuple(xi.shape[1:])))
            return out

        fx = outputs_at(f, args)
        drops = fx[:, None] - folded_outputs(f, args, idx, selected, n, rows, chunk_size, memory_budget)
        return _pearson(sums.to(torch.float64), drops.to(torch.float64))

    return fn


def monotonicity_correlation(
    f: Callable,
    attr_fn_or_attributions: Any,
    *,
    n_samples: int = 1,
    perturb_func: Callable | None = None,
    baselines: Any = None,
    feature_mask: Any = None,
    argnums: int | Sequence[int] = 0,
    generator=None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
) -> Callable:
    """Monotonicity of Nguyen & Martinez (2020): Spearman's rank correlation of each feature's
    ``|attribution|`` with the expected ``|f(x) - f(x with that feature alone perturbed)|``.

    ``e_i = (1/n) sum_s |f(x) - f(x with feature i taken from draw s)|`` and the metric is
    ``spearman(|phi|, e)`` over an example's features (ties share their mean rank). Higher is
    better: the features the explanation calls important change the output most.

    Args:
      f, attr_fn_or_attributions, feature_mask, argnums, chunk_size, memory_budget: as for
        `faithfulness_correlation`.
      n_samples: draws per feature. Each draw is one perturbed copy of the whole input, and
        feature i of copy s is moved to its value in draw s, the other features kept.
      perturb_func: ``perturb_func(x[, baselines][, generator=g]) -> perturbed x`` (or
        ``(I, perturbed)``), as for `infidelity`, e.g. `uniform_noise`; None: one draw, the
        baseline (``baselines``, default 0), so ``n_samples`` must be 1.
      baselines: with perturb_func None the value a feature is set to; else passed to perturb_func.
      generator: int seed or torch.Generator for perturb_func's draws (it must then take a
        ``generator`` keyword).

    Returns:
      ``fn(*args) -> (B,)`` in float64, nan where |phi| or e is the same for every feature.
      Costs ``F * n_samples`` model rows per example.

    Example:
      >>> f = xattr.target(model, 3)
      >>> rho = xattr.metrics.monotonicity_correlation(f, xattr.saliency(f), feature_mask=patches)(x)  # (B,)
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if perturb_func is not None and not callable(perturb_func):
        raise TypeError(f"perturb_func must be callable or None, got {type(perturb_func).__name__}")
    if perturb_func is None and n_samples != 1:
        raise ValueError(
            f"n_samples={n_samples} without a perturb_func: the baseline is one draw, so pass n_samples=1, or a "
            "perturb_func (e.g. xattr.metrics.uniform_noise) to average over random draws"
        )
    if perturb_func is None and generator is not None:
        raise ValueError("generator is given but there is nothing random to draw: pass a perturb_func too")
    check_model_fn(f, "monotonicity_correlation", ", one output per example")
    nums, as_tuple = T.normalize_argnums(argnums)
    n = n_samples

    @new_call_inside_model  # NOTE: [Attributions inside a model's forward] in nesting.py
    def fn(*args):
        warn_if_training(f)
        idx, selected, _, batch, x, phi = attributed(args, nums, as_tuple, attr_fn_or_attributions)
        ids, score, present = feature_scores(selected, phi if as_tuple else (phi,), feature_mask)
        n_feat = score.shape[1]
        if int(present.sum(1).min()) < 2:
            raise ValueError("monotonicity_correlation needs at least 2 features per example (a rank correlation)")
        if perturb_func is None:
            base = baseline_tree(selected, 0.0 if baselines is None else baselines, as_tuple)
            draws = [torch.broadcast_to(b, xi.shape).unsqueeze(1) for b, xi in zip(T.leaves(base), T.leaves(selected))]
        else:
            batched = () if baselines is None else (baselines_like(x, baselines),)
            drawn = draw_copies(perturb_func, x, n, batched=batched, generator=generator, what="perturb_func")
            draws = T.leaves(_perturbation(drawn, x)[0])

        def rows(s: int, e: int) -> list:
            c = torch.arange(s, e, device=score.device)
            feat, draw = c // n, c % n  # copy c moves feature c // n to draw c % n
            out = []
            for xi, di, ii in zip(T.leaves(selected), draws, ids):
                moved = (ii.unsqueeze(0) == feat[:, None, None]).reshape((e - s,) + tuple(xi.shape))
                value = di.expand((batch, n) + tuple(xi.shape[1:]))[:, draw].transpose(0, 1)
                out.append(torch.where(moved, value, xi.unsqueeze(0)).reshape((-1,) + tuple(xi.shape[1:])))
            return out

        fx = outputs_at(f, args)
        outs = folded_outputs(f, args, idx, selected, n_feat * n, rows, chunk_size, memory_budget)
        change = (fx[:, None] - outs).abs().to(torch.float64).reshape(batch, n_feat, n).mean(-1)  # (B, F)
        size = score.abs().to(torch.float64)
        rho = [_pearson(_ranks(size[i, p][None]), _ranks(change[i, p][None]))[0] for i, p in enumerate(present)]
        return torch.stack(rho)

    return fn


def monotonicity(
    f: Callable,
    attr_fn_or_attributions: Any,
    *,
    baselines: Any = 0.0,
    feature_mask: Any = None,
    argnums: int | Sequence[int] = 0,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
) -> Callable:
    """Monotonicity of Arya et al. (2019, AIX360): start from the baseline, add the features back
    in increasing order of attribution, and count the steps where the output does not fall.

    With ``p_k`` the output once the k least-attributed features are restored (ties: lower id
    first), the metric is the fraction of ``p_{k+1} >= p_k`` for k = 1..F-1 (AIX360 returns
    whether all of them hold: that is a value of 1 here). Higher is better.

    Args: as for `insertion` (the curve is `insertion` of ``-phi`` with one step per feature).

    Returns:
      ``fn(*args) -> (B,)``: the fraction of monotone steps, in the model output's dtype widened
      to at least float32.

    Example:
      >>> f = xattr.target(model, 3)
      >>> frac = xattr.metrics.monotonicity(f, xattr.integrated_gradients(f))(x)   # (B,), in [0, 1]
    """

    check_model_fn(f, "monotonicity", ", one output per example")
    nums, as_tuple = T.normalize_argnums(argnums)

    @new_call_inside_model  # NOTE: [Attributions inside a model's forward] in nesting.py
    def fn(*args):
        phi = attributed(args, nums, as_tuple, attr_fn_or_attributions)[-1]
        finite_attributions(phi)
        least_first = T.tree_map(torch.neg, phi)
        curve = insertion(f, least_first, n_steps=None, baselines=baselines, feature_mask=feature_mask,
                          argnums=argnums, chunk_size=chunk_size, memory_budget=memory_budget)(*args)  # fmt: skip
        frac = curve.fractions.expand_as(curve.scores)
        steps = frac[:, 2:] > frac[:, 1:-1]  # an example with fewer features repeats its last point
        if not bool(steps.any(1).all()):
            raise ValueError("monotonicity needs at least 2 features per example (steps between them)")
        up = (curve.scores[:, 2:] >= curve.scores[:, 1:-1]) & steps
        return up.sum(1).to(curve.scores.dtype) / steps.sum(1).to(curve.scores.dtype)

    return fn


def finite_attributions(phi) -> None:
    """Refuse NaN or infinite attributions: the metrics would rank or correlate garbage."""
    if not all(bool(torch.isfinite(a).all()) for a in T.leaves(phi)):
        raise ValueError("the attributions hold NaN or infinite values: the metric would rank or correlate garbage; "
                         "check the attribution method (or the precomputed attributions) for NaN")


def feature_scores(selected, phi: tuple, feature_mask) -> tuple[list, torch.Tensor, torch.Tensor]:
    """(each input's element ids (B, P), each feature's summed attribution (B, F), which ids each
    example uses (B, F) bool): NOTE: [Features of the faithfulness metrics]."""
    finite_attributions(phi)
    masks, n_feat = features(selected, feature_mask)
    leaves_x = T.leaves(selected)
    batch, device = leaves_x[0].shape[0], leaves_x[0].device
    ids = [torch.broadcast_to(m, x.shape).reshape(batch, -1) for m, x in zip(T.leaves(masks), leaves_x)]
    dtype = torch.promote_types(T.leaves(phi)[0].dtype, torch.float32)
    score = torch.zeros(batch, n_feat, dtype=dtype, device=device)
    present = torch.zeros(batch, n_feat, dtype=torch.bool, device=device)
    for i, a in zip(ids, T.leaves(phi)):
        score.scatter_add_(1, i, a.reshape(batch, -1).to(dtype))
        present.scatter_(1, i, True)
    return ids, score, present


def outputs_at(f: Callable, args: tuple) -> torch.Tensor:
    """f at the inputs, one number per example (a model writing into its input leaves it as it was)."""
    with model_calls():
        fx = model_rows(f(*T.cloned(args)))
    check_finite(fx)
    return fx


def folded_outputs(f, args, idx, selected, k: int, rows, chunk_size, memory_budget) -> torch.Tensor:
    """f at k perturbed copies of the batch, (B, k): ``rows(s, e)`` gives copies s..e-1 of each
    attributed input folded copy-major ((e - s) * B rows), as many per call as `copies_per_call` allows."""
    batch = T.batch_size(selected)
    per = copies_per_call(selected, batch, chunk_size, memory_budget, k)
    structure = T.optree.tree_structure(selected, namespace="xattr")
    outs = []
    with model_calls(), T.batch_scope(batch):
        for s in range(0, k, per):
            e = min(s + per, k)
            call = passthrough(args, idx, e - s, batch)
            tree = T.optree.tree_unflatten(structure, rows(s, e))
            out = model_rows(f(*T.split_args(call, idx)[1](tree)))
            check_finite(out)
            outs.append(out.reshape(e - s, batch))
    return torch.cat(outs).T
