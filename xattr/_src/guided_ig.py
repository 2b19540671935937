"""Guided integrated gradients: an adaptive path that moves the least important features first.

NOTE: [The Guided IG path]
Kapishnikov et al. 2021, Algorithm 1, as the authors' reference code runs it; per example, with
x the input, b the baseline, d = sum_j |x_j - b_j| and n steps. The point p starts at b. Step
t = 1..n computes the gradient g = grad f(p) once, sets alpha = t / n and
  [alpha_min, alpha_max] = [max(alpha - max_dist, 0), min(alpha + max_dist, 1)],
  x_min = b + alpha_min (x - b),   x_max = b + alpha_max (x - b),   L = d (1 - t / n),
then repeats, until the step ends:
  1. anchoring: every feature whose progress (p_j - b_j) / (x_j - b_j) is below alpha_min is
     set to x_min_j (features with x_j = b_j count as progress alpha_max: they never move);
  2. if |p - x|_1 is L (within 1e-9, relative or absolute), the step ends;
  3. features already at x_max are out for the rest of the step; of the others, S = those whose
     |g_j| is at most the quantile ``fraction`` ("lower": the floor((N - 1) fraction)-th
     smallest of the N values) of |g| over all N features, the ones out counting as +inf;
  4. gamma = (|p - x|_1 - L) / sum_{j in S} |p_j - x_max_j|: if gamma > 1 the features in S
     go to x_max and the loop goes on; else they go the share gamma of their way to x_max
     (p_S += gamma (x_max_S - p_S)), which brings the distance to L, and the step ends.
Every change of p adds g * (change) to the attributions, with g from the step's start: a left
Riemann sum of the line integral along the path actually taken, so sum(attr) = f(x) - f(b)
up to that sum's error (the path ends at x: the last step's L is 0). An input equal to its
baseline gets zero attributions.

Straight-line limits (tests/test_guided_ig.py): with ``max_dist = 0`` the anchoring alone moves
every feature to b + (t / n)(x - b) at step t; with ``fraction = 1`` every feature is selected
and all move by the same share of their remaining way. Either way p is the straight line and
the result is integrated gradients with ``method="riemann_left"`` and n steps.

Vectorised over the batch: steps 1-4 run on every example whose step has not ended, masked,
until none is left; the quantile is a kthvalue per row. The path is kept in float64 (as the
authors' code does: the exact test p_j == x_max_j and the 1e-9 closeness test need it) and
cast to each input's dtype for the model. A step with no feature left to select (all at
x_max, which rounding alone can cause) ends there instead of looping.

NOTE: [Guided IG is not a path_integral]
`path_integral` takes a path fixed before any gradient is known, its points all computed at
once and its gradients taken in chunks of steps. Guided IG's next point depends on the gradient
at the current one, so its n gradient passes of B rows run one after another, through
`vjp_rows` (the primitive under ``xattr.grad``). Each pass is one copy of the batch, and as
everywhere in xattr a chunk holds at least one whole copy (per-example targets and pass-through
tensors follow the batch's rows), so ``chunk_size`` cannot split it: it is accepted, checked
and handed to `vjp_rows`, where it bounds only a many-outputs backward (never one here: K
outputs are K copies of the batch, each with one output).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence

import torch

from . import tree as T
from .checks import baselines_tuple, check_float_inputs, check_model_fn, is_traced, warn_if_training
from .gradients import attribution_fn, is_multi_output, vjp_rows
from .progress import progress
from .output_copies import each_output

CLOSE = 1e-9  # the authors' tolerance for "the step's L1 target is reached"


def guided_integrated_gradients(
    f: Callable,
    *,
    baselines: Any = 0.0,
    n_steps: int = 200,
    fraction: float = 0.25,
    max_dist: float = 0.02,
    argnums: int | Sequence[int] = 0,
    chunk_size: int | None = None,
    show_progress: bool = False,
) -> Callable:
    """Guided IG: attributions along an adaptive path that moves low-gradient features first.

    Kapishnikov, Venugopalan, Avci, Wedin, Terry, Bolukbasi 2021, "Guided Integrated Gradients: An
    Adaptive Path Method for Removing Noise". From the baseline, each of ``n_steps`` steps
    brings the L1 distance to the input down by ``1 / n_steps`` of the total, moving first the
    features with the smallest |gradient| (about ``fraction`` of all features at a time), with
    every feature kept within ``max_dist`` of the straight line's progress ``t / n_steps``
    (NOTE: [The Guided IG path] in ``xattr/_src/guided_ig.py``). Attributions add up gradient
    times change along the path taken, so ``sum(attr) = f(x) - f(b)`` up to the error of a
    left Riemann sum. With ``max_dist=0`` or ``fraction=1`` the path is the straight line and
    the result is IG with ``method="riemann_left"``.

    All attributed tensors of an example form one feature vector (one L1 distance, one
    quantile). The path depends on the gradients along it, so it is not a `path_integral`
    (NOTE: [Guided IG is not a path_integral]): ``n_steps`` gradient passes run one after
    another, and the selection is not differentiable (no use inside torch.func transforms).

    Args (beyond the shared ones):
      baselines: number, tensor broadcastable to the input, or tree like it; also a call keyword.
      n_steps: steps of the path (gradient passes), >= 1 (the authors' default 200).
      fraction: share of the features selected per move, 0 < fraction <= 1 (default 0.25).
      max_dist: how far a feature's progress may lag behind or run ahead of ``t / n_steps``,
        0 <= max_dist <= 1 (default 0.02, the anchored variant; 1 leaves the path free).
      show_progress: a progress bar over the steps (needs tqdm).
      chunk_size: accepted and checked; each step is one pass of the B rows, which xattr never
        splits (NOTE: [Guided IG is not a path_integral]).

    A many-outputs target (``xattr.outputs``) gets one path per example and output, all walked
    together as K copies of the batch (NOTE: [K outputs as K copies of the batch] in
    ``xattr/_src/output_copies.py``): attributions ``(B, K, *x.shape[1:])``, the numbers of K
    single-output runs.

    Returns:
      ``fn(*args, baselines=...)`` giving a tree like ``args[argnums]``.

    Example:
      >>> attr = xattr.guided_integrated_gradients(xattr.target(model, 3), n_steps=64)(x)
    """
    check_model_fn(f, "guided_integrated_gradients")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    q = _checked_share(fraction, "fraction", 0.0, lower_open=True)
    dist = _checked_share(max_dist, "max_dist", 0.0, lower_open=False)
    T.checked_chunk_size(chunk_size)
    nums, as_tuple = T.normalize_argnums(argnums)

    def fn(*args, baselines=baselines):
        selected = T.split_args(args, nums)[0]
        check_float_inputs(selected, "guided_integrated_gradients")
        for leaf in T.leaves(selected):  # else the path silently walks through NaN
            if isinstance(leaf, torch.Tensor) and not is_traced(leaf) and not bool(torch.isfinite(leaf).all()):
                raise ValueError("guided_integrated_gradients: the inputs hold NaN or infinite values; pass finite inputs")
        if is_multi_output(f):  # one path per example and output: NOTE: [K outputs as K copies of the batch]
            one = lambda g: guided_integrated_gradients(  # noqa: E731
                g, n_steps=n_steps, fraction=fraction, max_dist=max_dist, argnums=argnums, chunk_size=chunk_size,
                show_progress=show_progress,
            )  # fmt: skip
            return each_output(f, one, args, argnums, baselines)
        warn_if_training(f)
        base = baselines_tuple(selected, baselines, as_tuple)
        batch = T.batch_size(selected)
        with T.batch_scope(batch):
            flat = _walk(args, selected, base, batch)
        xs = T.leaves(selected)
        parts, at = [], 0
        for x in xs:
            size = math.prod(x.shape[1:])
            parts.append(flat[:, at : at + size].reshape(x.shape).to(x.dtype))
            at += size
        treedef = T.optree.tree_structure(selected, namespace="xattr")
        result = T.optree.tree_unflatten(treedef, parts)
        return result if as_tuple else result[0]

    def _walk(args, selected, base, batch):
        xs, bs = T.leaves(selected), T.leaves(base)
        x_in = torch.cat([x.reshape(batch, math.prod(x.shape[1:])).to(torch.float64) for x in xs], 1)
        x_b = torch.cat([b.reshape(batch, math.prod(x.shape[1:])).to(torch.float64) for x, b in zip(xs, bs)], 1)
        diff = x_in - x_b
        moving = diff != 0
        l1_total = diff.abs().sum(1)
        n_feat = x_in.shape[1]
        kth = math.floor((n_feat - 1) * q) + 1  # numpy's "lower" quantile, as a kthvalue
        p = x_b.clone()
        attr = torch.zeros_like(x_in)
        for t in progress(show_progress, range(1, n_steps + 1), total=n_steps, desc="guided IG", unit="step"):
            g = _gradient(args, selected, p, batch)
            alpha = t / n_steps
            a_min, a_max = max(alpha - dist, 0.0), min(alpha + dist, 1.0)
            x_min, x_max = x_b + diff * a_min, x_b + diff * a_max
            l1_target = l1_total * (1 - t / n_steps)
            out = torch.zeros_like(moving)  # features at x_max: out of this step's selections
            running = l1_total > 0
            while bool(running.any()):  # NOTE: [The Guided IG path]
                old = p
                progress_ = torch.where(moving, (p - x_b) / torch.where(moving, diff, 1.0), a_max)
                p = torch.where((progress_ < a_min) & running[:, None], x_min, p)
                current = (p - x_in).abs().sum(1)
                close = (current - l1_target).abs() <= torch.clamp(CLOSE * torch.maximum(current, l1_target), min=CLOSE)
                act = running & ~close
                out |= p == x_max
                mag = torch.where(out, math.inf, g.abs())
                threshold = mag.kthvalue(kth, 1).values
                chosen = (mag <= threshold[:, None]) & ~out & act[:, None]
                room = ((p - x_max).abs() * chosen).sum(1)
                gamma = torch.where(room > 0, (current - l1_target) / torch.where(room > 0, room, 1.0), math.inf)
                full = (gamma > 1)[:, None]
                share = gamma.clamp(0.0, 1.0)[:, None]
                p = torch.where(chosen, torch.where(full, x_max, p + (x_max - p) * share), p)
                attr += (p - old) * g
                running = act & (gamma > 1) & chosen.any(1)
        return attr

    def _gradient(args, selected, p, batch):
        """grad f at the path points p (B, N) float64, as (B, N) float64: one pass of B rows."""
        treedef = T.optree.tree_structure(selected, namespace="xattr")
        leaves, at = [], 0
        for x in T.leaves(selected):
            size = math.prod(x.shape[1:])
            leaves.append(p[:, at : at + size].reshape(x.shape).to(x.dtype))
            at += size
        call = T.split_args(args, nums)[1](T.optree.tree_unflatten(treedef, leaves))
        grads = vjp_rows(f, call, nums, chunk_size=chunk_size, method="guided_integrated_gradients")[1]
        g = torch.cat([leaf.reshape(batch, math.prod(leaf.shape[1:])).to(torch.float64) for leaf in T.leaves(grads)], 1)
        if not bool(torch.isfinite(g).all()):
            raise FloatingPointError(
                "guided_integrated_gradients: the model's gradient is not finite (nan/inf) at a point of the "
                "path; the path chooses features by |gradient| and cannot continue. Check the model's "
                "numerics (log_softmax instead of log(softmax)) and the inputs' range."
            )
        return g

    return attribution_fn(fn, f)


def _checked_share(value, name: str, low: float, *, lower_open: bool) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    v = float(value) if ok else math.nan
    if not ok or v > 1.0 or v < low or (lower_open and v == low):
        bounds = "0 < {} <= 1" if lower_open else "0 <= {} <= 1"
        raise ValueError(f"{name} must be a number with {bounds.format(name)}, got {value!r}")
    return v
