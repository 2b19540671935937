"""LIME's and KernelSHAP's fits within the memory budget: examples in groups, samples in steps.

NOTE: [Surrogate fits within the memory budget]
A built-in fit (`lasso`, `ridge`, `linear_regression`, KernelSHAP's `constrained_lstsq`) holds
float64 F x F systems per example (and per output for the lasso's KKT solves): ``fit_bytes(F,
K)`` bytes, 8 F (6 F + 3 K) for the closed forms, 8 F (F (1 + 3 K) + 8 K) for the lasso. The
examples are fitted in groups of as many as fit ``memory_budget`` bytes (the engine's default,
`budget.default_budget`, when it is None: 2 MiB on CPU), at least one; a group's normal
equations are accumulated over steps of samples whose float64 temporaries, 16 bytes per
example, sample and feature (24 for KernelSHAP), fit the same budget (`solvers.sample_rows`).
So the fits need about ``2 * memory_budget`` bytes, or one example's systems plus a budget's
worth of sample steps when a single example's systems exceed it: an explicit ``memory_budget``
then gets a warning naming the size (no built-in fit works without the F x F system; fewer
features, by a coarser ``feature_mask``, is the remedy). The coalitions, (B, N, F) bool
(NOTE: [Coalitions held as bool] in surrogate.py), are held for the whole call on top. Every
example's fit is its own, so the grouping changes no result; stepping over samples sums the
normal equations in another order (float64 rounding, ~1e-16 relative). A custom solver gets
every example and sample at once, as documented; a scikit-learn estimator is fitted per example
anyway.
"""

from __future__ import annotations

from typing import Callable

import torch

from .budget import default_budget
from .solvers import BUILT_IN, constrained_lstsq, constrained_lstsq_bytes, sklearn_fit
from .warn import warn


def lime_fit(model, memory_budget: int | None) -> Callable:
    """``(X (B, N, F), y (B, N, K), w (B, N)) -> coef (B, K, F)`` for a LIME interpretable model."""
    if hasattr(model, "fit"):
        return lambda X, y, w: sklearn_fit(model, X.to(y.dtype), y, w)
    if not isinstance(model, BUILT_IN):
        return lambda X, y, w: model(X.to(y.dtype), y, w)[0]

    def fit(X, y, w):
        budget = fit_budget(memory_budget, y.device)
        per = examples_per_fit(model.fit_bytes(X.shape[2], y.shape[2]), X.shape[0], memory_budget, budget, "lime")
        return in_groups(lambda *a: model(*a, memory_budget=budget)[0], per, X, y, w)

    return fit


def shap_fit(z, y, w, total, memory_budget: int | None) -> torch.Tensor:
    """`constrained_lstsq` of z (B or 1, N, M), t = y - f(empty) (B, N, K), w (B, N), total (B,
    K) in groups of examples: phi (B, K, M)."""
    budget = fit_budget(memory_budget, y.device)
    per = examples_per_fit(constrained_lstsq_bytes(z.shape[2], y.shape[2]), y.shape[0], memory_budget, budget, "kernel_shap")
    solve = lambda *a: constrained_lstsq(*a, memory_budget=budget)  # noqa: E731
    return in_groups(solve, per, z.expand(y.shape[0], -1, -1), y, w, total)


def fit_budget(memory_budget: int | None, device: torch.device) -> int:
    """The budget of the fits' (and the similarity weights') steps: the engine's default when None."""
    return default_budget(device) if memory_budget is None else memory_budget


def examples_per_fit(need: int, count: int, memory_budget: int | None, budget: int, method: str) -> int:
    """Examples per group: as many as ``budget`` bytes hold at ``need`` each, at least one
    (warned when an explicit ``memory_budget`` cannot hold one)."""
    if memory_budget is not None and need > memory_budget:
        warn(
            f"{method}'s fit needs {need} bytes (float64 F x F systems) per example, more than memory_budget="
            f"{memory_budget}: fitting one example at a time over that budget; fewer features (a coarser "
            "feature_mask) need less",
            UserWarning,
        )
    return max(1, min(count, budget // max(1, need)))


def in_groups(fit: Callable, per: int, *tensors: torch.Tensor) -> torch.Tensor:
    """``fit`` of the tensors' first ``per`` examples, then the next ``per``, ...: concatenated."""
    count = tensors[0].shape[0]
    if per >= count:
        return fit(*tensors)
    return torch.cat([fit(*(t[a : a + per] for t in tensors)) for a in range(0, count, per)])
