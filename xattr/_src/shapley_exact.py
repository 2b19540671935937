"""Exact Shapley values over all 2^F coalitions (`shapley_values`), and the coalition codes and
feature-count check that exact Shapley interactions share. The game and the shared arguments are
those of shapley.py; permutation sampling is there too.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from . import tree as T
from .gradients import attribution_fn
from .masks import FeatureSet, feature_sets, features, place, widen
from .perturb import Coalitions, as_floating, evaluate
from .shapley import _prepare, _spread

MAX_FEATURES = 20  # exact Shapley values: 2^20 coalitions, about a million model rows per example


def _power_of_two(n: int) -> str:
    """2^n for a message: 1.05e+06, or "2^n" from n = 1024, past a float's range (a feature id of
    a million is a valid mask)."""
    return f"{2.0**n:.3g}" if n < 1024 else f"2^{n}"


def _bits(codes: torch.Tensor, n: int) -> torch.Tensor:
    """(len(codes), n) bool: the coalition coded c holds feature i when bit i of c is set."""
    return ((codes[:, None] >> torch.arange(n, device=codes.device)) & 1).bool()


def _weights(n: int) -> torch.Tensor:
    """w[k] = k! (n - k - 1)! / n!: the Shapley weight of a coalition of k of the other features."""
    return torch.tensor([1.0 / (n * math.comb(n - 1, k)) for k in range(n)], dtype=torch.float64)


def shapley_values(
    f: Callable,
    *,
    baselines: Any = 0.0,
    feature_mask: Any = None,
    argnums: int | Sequence[int] = 0,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool | None = None,
    max_features: int = MAX_FEATURES,
) -> Callable:
    """Exact Shapley values over all 2^F coalitions of the F features (Shapley 1953).

    ``phi_i = sum_{S not containing i} |S|! (F - |S| - 1)! / F! * [v(S + i) - v(S)]``, with v
    the model at the input whose features outside the coalition take their baseline. Every
    coalition but the full one (which is f(x)) is evaluated once, in few batched calls:
    ``B * (2^F - 1)`` perturbed rows, F the features an example's mask holds (each example
    enumerates its own, NOTE: [Each example's own features]: ids with gaps cost nothing).
    Efficient (the values sum to ``f(x) - f(baseline)``), symmetric, dummy and linear, exactly
    (tested). Group inputs into at most ``max_features`` features with ``feature_mask``.

    Args (beyond the perturbation methods' shared ones, see ablation.py):
      show_progress: None (default): a progress bar over the model calls appears once they have
        run for 10 s (2^F rows can take minutes on an image model), nothing on shorter runs;
        True: a bar from the start; False: never.
      max_features: refuse an example holding more features than this (the cost doubles with
        each one).

    Returns:
      ``fn(*args, baselines=..., feature_mask=...)`` like ``args[argnums]`` (a K axis after the
      batch for ``xattr.outputs``).

    Example:
      >>> attr = xattr.shapley_values(xattr.target(model, 1), feature_mask=groups)(x)
    """
    nums, as_tuple = T.normalize_argnums(argnums)

    def fn(*args, baselines=baselines, feature_mask=feature_mask):
        selected = T.split_args(args, nums)[0]
        masks, n = features(selected, feature_mask)
        _check_count(max(s.n for s in feature_sets(masks, n, T.batch_size(selected))), max_features)
        selected, masks, n, base, out, aggregate = _prepare(f, args, nums, as_tuple, baselines, feature_mask)
        rows, device = out.shape[0], out.device
        sets = feature_sets(masks, n, rows)  # NOTE: [Each example's own features]: 2^(its own F) coalitions
        widest = max(s.n for s in sets)
        every = Coalitions(2**widest - 1, lambda s, e: _every(sets, n, rows, s, e, device), shared=len(sets) == 1)  # not the full one
        vals = as_floating(evaluate(f, args, nums, masks=masks, baselines=base, coalitions=every, aggregate=aggregate,
                                    chunk_size=chunk_size, memory_budget=memory_budget, show_progress=show_progress))  # fmt: skip
        phi = place([_exact(s.pick(vals), s.pick(out), s.n) for s in sets], sets, n, dim=1)  # (rows, F[, O])
        return _spread(phi, masks, selected, as_tuple)

    return attribution_fn(fn, f)


def _check_count(n: int, max_features: int, method: str = "shapley_values",
                 estimate: str = "the values with xattr.shapley_value_sampling (n_samples * F rows) or xattr.kernel_shap") -> None:  # fmt: skip
    """Refuses more than ``max_features`` features held by one example (2^F model rows each)."""
    if n > max_features:
        raise ValueError(
            f"{method} evaluates the model at all 2^F coalitions of the F features: F={n} would take "
            f"{_power_of_two(n)} model rows per example (max_features={max_features}). Group the inputs into fewer "
            f"features with feature_mask, raise max_features if you can afford 2^F rows, or estimate {estimate}."
        )


def _every(sets: list[FeatureSet], n: int, rows: int, start: int, stop: int, device) -> torch.Tensor:
    """Coalitions start..stop-1 of every feature set's 2^n_s - 1 (all but the full one), coded by
    their bits over the set's own features and laid over all n ids (`widen`); a set with fewer
    has empty coalitions past its last (evaluated, never read)."""
    if len(sets) == 1 and sets[0].ids is None:
        return _bits(torch.arange(start, stop, device=device), n)
    parts = [_bits(torch.arange(start, max(start, min(stop, 2**s.n - 1)), device=device), s.n)[None] for s in sets]
    return widen(parts, sets, n, rows, copies=stop - start)


def _exact(vals: torch.Tensor, out: torch.Tensor, n: int) -> torch.Tensor:
    """Exact Shapley values (rows, n[, O]) of n features from the model at their 2^n - 1 coalitions
    but the full one, vals (rows, >= 2^n - 1[, O]) in the order of their codes, and f(x), out."""
    rows, tail = vals.shape[0], tuple(vals.shape[2:])
    v = torch.cat([vals[:, : 2**n - 1], out[:, None].to(vals.dtype)], 1).to(torch.float64)  # (rows, 2^n[, O]), v[:, c]
    codes = torch.arange(2**n, device=vals.device)
    size = sum((codes >> i) & 1 for i in range(n)).clamp(max=n - 1)  # (the full coalition never lacks one)
    w = _weights(n).to(vals.device)[size]  # the weight of coalition c, by its size
    phi = []
    for i in range(n):  # c = high * 2^(i+1) + bit_i * 2^i + low: split bit i out as an axis of 2
        split = (2 ** (n - 1 - i), 2, 2**i)
        vi = v.reshape((rows,) + split + tail)
        gain = (vi[:, :, 1] - vi[:, :, 0]).reshape((rows, -1) + tail)  # v(S + i) - v(S), S without i
        wi = w.reshape(split)[:, 0].reshape((-1,) + (1,) * len(tail))
        phi.append((gain * wi).sum(1))
    return torch.stack(phi, 1).to(vals.dtype)
