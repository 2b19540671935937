"""Monte Carlo transforms over attribution functions: the noise tunnel (`smooth`), baseline
expectations (`expectation`) and gradient SHAP's samples (`shap_samples`), all through
`monte_carlo`, which folds the copies into the batch and reduces over them. Their draws follow
NOTE: [Explicit randomness] and [Seeds of folded copies] in sampling.py.

NOTE: [Variance over chunks]
VarGrad's population variance is not computed as E[a^2] - E[a]^2 (Captum's formula): when the
mean dominates the spread that difference cancels catastrophically and gives negative
"variances" (float32 attributions near 1000 with a spread of 1e-2). The samples are shifted
by each example's first one (so the means below are of the spread's size, not the mean's, and
keep its precision); each chunk's mean and sum of squared deviations come from two passes over
the chunk and are merged into the running ones with Chan, Golub & LeVeque's pairwise update
    n = n_a + n_b,  d = mean_b - mean_a,  mean = mean_a + d n_b / n,
    M2 = M2_a + M2_b + d^2 n_a n_b / n,
so the result is M2 / S >= 0. Memory: three running tensors like the result (the shift, the
mean, M2) and one temporary like a chunk's attributions, as E[a^2] had. Half
precision attributions are merged in float32 (NOTE: [Sums over chunks] in paths.py). Complex
attributions keep the formula's meaning, E[(a - E a)^2] without conjugation.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from . import tree as T
from .checks import check_float_inputs, check_noisy_inputs, warn_if_training
from .gradients import attribution_fn
from .layers import Split
from .paths import WIDE, ChunkSum
from .sampling import (copy_blocks, distribution, index_rows, noisy_rows, normal_like, streams,
                       uniform_rows, _narrowest, _per_leaf)  # fmt: skip
from .std_error import check_std_error, real_dtype


def monte_carlo(
    attr_fn: Callable, args: tuple, kwargs: dict, nums: tuple, n_samples: int, draw: Callable, chunk_size, reduce: str,
    collect: bool = False, std_error: bool = False,
):
    """Evaluates attr_fn on n_samples folded copies and reduces over them.

    ``draw(start, stop)`` returns (attributed rows as a tuple of trees (c*B, ...), extra kwargs
    already of c*B rows). The caller's ``args`` and ``kwargs`` with a batch axis are tiled.
    ``reduce``: "mean", "sq_mean" (mean of squares) or "var" (the population variance, E[(a - E a)^2],
    NOTE: [Variance over chunks]).

    ``collect``: attr_fn returns ``(attributions, aux)``, aux a tree of per-row values (c*B, ...)
    that are kept, not reduced (a per-sample diagnostic such as a convergence delta). The result
    is then ``(reduced, aux)`` with aux's leaves (n_samples, B, ...): copy s of example i at [s, i].

    ``std_error`` ("mean" and "sq_mean"): also the standard error of the reduced value, a tree
    like it, from the same samples (NOTE: [Standard errors of Monte Carlo attributions] in
    std_error.py), last in the result: ``(reduced, se)`` or ``(reduced, aux, se)``.
    """
    if reduce not in ("mean", "sq_mean", "var"):
        raise ValueError(f"reduce must be 'mean', 'sq_mean' or 'var', got {reduce!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    warn_if_training(attr_fn)
    selected, rebuild = T.split_args(args, nums)
    batch = T.batch_size(selected)
    total, moments, kept = ChunkSum(), _Moments(), []
    spread = _Moments(modulus=True) if std_error else None
    for start, stop in T.chunks(n_samples, batch, chunk_size):
        c = stop - start
        with T.batch_scope(batch), copy_blocks(start, stop, batch):  # NOTE: [Seeds of folded copies]
            # folded inside the scope, which records the shared tensors it leaves alone (NOTE:
            # [Shared pass-through tensors under nesting])
            passthrough = tuple(a if i in nums else T.fold(a, c, batch) for i, a in enumerate(args))
            rows, extra = draw(start, stop)
            out = attr_fn(*T.split_args(passthrough, nums)[1](rows), **T.fold(kwargs, c, batch), **extra)
        if collect:
            out, aux = out
            kept.append(T.unfold(aux, c))
        out = T.unfold(out, c)
        if spread is not None:  # the samples' own spread: of a_s, or of a_s^2 for "sq_mean"
            spread.add(out if reduce == "mean" else T.tree_map(lambda a: _widened(a) ** 2, out), c, like=out)
        if reduce == "var":  # NOTE: [Variance over chunks]
            moments.add(out, c)
        elif reduce == "mean":
            total.add(T.tree_map(_sum0, out), like=out)  # NOTE: [Sums over chunks] in paths.py
        else:
            total.add(T.tree_map(lambda a: _squares(_widened(a)), out), like=out)
    result = moments.value() if reduce == "var" else total.value(divide_by=n_samples)
    out = (result, T.tree_map(lambda *parts: torch.cat(parts), *kept)) if collect else (result,)
    out += (spread.std_error(),) if std_error else ()
    return out if len(out) > 1 else result


def _widened(a: torch.Tensor) -> torch.Tensor:
    wide = WIDE.get(a.dtype)
    return a if wide is None else a.to(wide)


def _squares(a: torch.Tensor) -> torch.Tensor:
    return (a * a).sum(0)


def _sum0(a: torch.Tensor) -> torch.Tensor:
    """The sum over the samples of a chunk, in float32 for half-precision attributions."""
    wide = WIDE.get(a.dtype)
    return a.sum(0) if wide is None else a.sum(0, dtype=wide)


class _Moments:
    """The running count, mean and sum of squared deviations of the samples, leaf by leaf, about
    each example's first sample (NOTE: [Variance over chunks]). ``modulus``: complex deviations
    count as |d|^2 (a real M2, for a standard error), not d^2 as VarGrad's formula has it."""

    __slots__ = ("n", "shift", "mean", "m2", "dtypes", "treedef", "modulus")

    def __init__(self, modulus: bool = False):
        self.n, self.shift, self.mean, self.m2, self.modulus = 0, [], [], [], modulus

    def add(self, out, c: int, like=None) -> None:
        """Merges a chunk's c samples, leaves (c, ...); ``like``: a tree whose dtypes the results
        take, when the samples were computed wider than them (default: the samples')."""
        leaves, treedef = T.optree.tree_flatten(out, namespace="xattr")
        if not self.n:
            self.dtypes, self.treedef = [a.dtype for a in T.leaves(out if like is None else like)], treedef
            self.shift = [a[0].to(WIDE.get(a.dtype, a.dtype), copy=True) for a in leaves]
        n = self.n + c
        for i, a in enumerate(leaves):
            d = a - self.shift[i]  # the one temporary (half precision: in float32)
            mean = d.sum(0) / c
            # a second pass in place (torch.var_mean over dim 0 is ~100x slower on CPU); complex:
            # without conjugation, as E[a^2] - E[a]^2 had (|d|^2 with modulus). pow_, not mul_(d):
            # autograd and vmap
            d = d.sub_(mean)
            m2 = (d.abs().pow_(2) if self.modulus and d.is_complex() else d.pow_(2)).sum(0)
            if not self.n:
                self.mean.append(mean)
                self.m2.append(m2)
                continue
            d = mean - self.mean[i]
            self.mean[i] = torch.add(self.mean[i], d, alpha=c / n)
            d = d.abs() if self.modulus and d.is_complex() else d
            self.m2[i] = torch.addcmul(self.m2[i] + m2, d, d, value=self.n * c / n)
        self.n = n

    def value(self):
        var = [(m2 / self.n).to(dtype) for m2, dtype in zip(self.m2, self.dtypes)]
        return T.optree.tree_unflatten(self.treedef, var)

    def std_error(self):
        """sqrt(s^2 / n), s^2 = M2 / (n - 1) the unbiased variance of the samples; real, in the
        samples' (real) dtype (NOTE: [Standard errors of Monte Carlo attributions] in std_error.py)."""
        n = self.n
        se = [(m2 / (n * (n - 1))).sqrt().to(real_dtype(dtype)) for m2, dtype in zip(self.m2, self.dtypes)]
        return T.optree.tree_unflatten(self.treedef, se)


def smooth(
    attr_fn: Callable,
    *,
    stdevs: Any = 1.0,
    n_samples: int = 5,
    reduce: str = "mean",
    argnums: int | Sequence[int] = 0,
    generator=None,
    chunk_size: int | None = None,
    return_std_error: bool = False,
) -> Callable:
    """The noise tunnel: averages any attribution function over Gaussian-perturbed inputs.

    ``smooth(a)(x) = reduce_{s=1..S} a(x + eps_s)`` with ``eps_s ~ N(0, stdevs^2 I)``.

    Args:
      attr_fn: any attribution function ``attr_fn(*args, **kw)`` (gradient, layer, perturbation).
      stdevs: noise standard deviation: one number, or one per attributed input tensor as a
        list/tuple in leaf order or a tree like the inputs (NOTE: [Per-input numbers]).
      n_samples: S, the number of noisy copies.
      reduce: "mean" (SmoothGrad), "sq_mean" (SmoothGrad-squared) or "var" (VarGrad).
      argnums: which arguments receive noise: those attr_fn attributes, or fewer of them (noise on
        the image, not on a mask beside it); its attributions come back for all it attributes.
      generator: int seed or torch.Generator (NOTE: [Explicit randomness]).
      chunk_size: most model rows (examples x copies) per call of attr_fn.
      return_std_error: also return each element's Monte Carlo standard error, ``sqrt(s^2 / S)``
        with s^2 the unbiased variance of the S per-copy values (of ``a``, or ``a^2`` for
        "sq_mean"), from the same samples (NOTE: [Standard errors of Monte Carlo
        attributions] in std_error.py). Needs n_samples >= 2; refused for "var".

    Returns:
      ``fn(*args, **kw)`` with the structure and shapes of attr_fn's result, or
      ``(attributions, std_error)``, the second alike.

    Example:
      >>> sg = xattr.smooth(xattr.saliency(xattr.target(model, 3)), stdevs=0.1, n_samples=25, generator=0)
    """
    nums, as_tuple = T.normalize_argnums(argnums)
    check_std_error(return_std_error, n_samples, "smooth", reduce=reduce)

    def fn(*args, **kwargs):
        selected, _ = T.split_args(args, nums)
        xs = T.leaves(selected)
        sds = _per_leaf(stdevs, selected, as_tuple)
        check_noisy_inputs(xs, sds)
        gens = streams(generator, len(xs))
        noise = [normal_like(x, n_samples, sd, g) for x, sd, g in zip(xs, sds, gens)]
        treedef = T.optree.tree_structure(selected, namespace="xattr")

        def draw(start, stop):
            noisy = [noisy_rows(x, z, start, stop) for x, z in zip(xs, noise)]
            return T.optree.tree_unflatten(treedef, noisy), {}

        return monte_carlo(attr_fn, args, kwargs, nums, n_samples, draw, chunk_size, reduce, std_error=return_std_error)

    return attribution_fn(fn, attr_fn)


def expectation(
    attr_fn: Callable,
    *,
    baselines: Any,
    n_samples: int = 5,
    argnums: int | Sequence[int] = 0,
    generator=None,
    chunk_size: int | None = None,
    return_std_error: bool = False,
) -> Callable:
    """Averages a baseline method over baselines drawn from a distribution.

    ``expectation(a)(x) = mean_{s=1..S} a(x, baselines=b_s)``, ``b_s`` drawn uniformly from the
    rows of ``baselines``: a tensor (N, ...) or a tree of tensors sharing N; a number is a
    one-row distribution, whole or at a leaf (NOTE: [Baseline distributions]).
    ``attr_fn`` must accept a ``baselines=`` keyword (every xattr baseline method does).
    ``return_std_error``: also return the standard error of each element, as `smooth`'s:
    ``(attributions, std_error)`` (n_samples >= 2).

    Example:
      >>> eg = xattr.expectation(xattr.integrated_gradients(f), baselines=x_train[:100], n_samples=10)
    """
    nums, as_tuple = T.normalize_argnums(argnums)
    check_std_error(return_std_error, n_samples, "expectation")

    def fn(*args, **kwargs):
        selected, _ = T.split_args(args, nums)
        batch = T.batch_size(selected)
        dist, n_dist = distribution(selected, baselines, as_tuple, method="expectation", like_inputs=False)
        ref = T.leaves(selected)[0]
        (gen,) = streams(generator, 1)
        idx = index_rows(batch, n_samples, n_dist, gen, ref.device)

        def draw(start, stop):
            c = stop - start
            rows = T.fold(selected, c, batch)
            picked = T.tree_map(lambda d: d.to(ref.device)[idx[start:stop].reshape(-1)], dist)
            return rows, {"baselines": picked if as_tuple else picked[0]}

        return monte_carlo(attr_fn, args, kwargs, nums, n_samples, draw, chunk_size, "mean", std_error=return_std_error)

    return attribution_fn(fn, attr_fn)


def shap_samples(
    at_alpha: Callable, *, argnums, baselines, n_samples: int, stdevs, generator, chunk_size, return_delta: bool,
    method: str | None = None, return_std_error: bool = False,
) -> Callable:
    """GradientShap's draws around any per-row attribution ``at_alpha(*rows, baselines, alphas)``.

    The same draws as ``xattr.gradient_shap`` (same streams in the same order, NOTE: [Explicit
    randomness]): noise for each input, one baseline row and one alpha ~ U(0, 1) per sample and
    example, all made before chunking; ``monte_carlo`` averages over the ``n_samples`` copies.
    With ``return_delta`` at_alpha returns ``(attr, delta)`` and the deltas come back
    example-major, (B * n_samples, [K]), Captum's layout. With ``return_std_error`` the standard
    error of the attributions comes last: ``(attr, se)`` or ``(attr, delta, se)``.

    The attributed tensors are interpolated, so they must be floating point (checked up front).
    The alphas are drawn in the narrowest of their dtypes, which every other one holds exactly:
    ``b + a (x - b)`` then stays in each tensor's own dtype.
    """
    nums, as_tuple = T.normalize_argnums(argnums)
    if method is None:
        method = "layer_gradient_shap" if isinstance(getattr(at_alpha, "__wrapped__", None), Split) else "gradient_shap"
    check_std_error(return_std_error, n_samples, method)

    def fn(*args):
        selected, _ = T.split_args(args, nums)
        check_float_inputs(selected, method)
        xs, batch = T.leaves(selected), T.batch_size(selected)
        dist, n_dist = distribution(selected, baselines, as_tuple, method=method)
        gens = streams(generator, len(xs) + 2)
        sds = _per_leaf(stdevs, selected, as_tuple)
        noise = [normal_like(x, n_samples, sd, g) for x, sd, g in zip(xs, sds, gens)]
        idx = index_rows(batch, n_samples, n_dist, gens[-2], xs[0].device)
        alphas = uniform_rows(batch, n_samples, gens[-1], _narrowest(xs, method))
        treedef = T.optree.tree_structure(selected, namespace="xattr")

        def draw(start, stop):
            noisy = [noisy_rows(x, z, start, stop) for x, z in zip(xs, noise)]
            picked = T.tree_map(lambda d: d[idx[start:stop].reshape(-1)], dist)
            extra = {"baselines": picked, "alphas": alphas[start:stop].reshape(-1)}
            return T.optree.tree_unflatten(treedef, noisy), extra

        out = monte_carlo(
            at_alpha, args, {}, nums, n_samples, draw, chunk_size, "mean", collect=return_delta, std_error=return_std_error
        )
        if not return_delta:
            return out
        return (out[0], out[1].transpose(0, 1).flatten(0, 1)) + out[2:]  # the std error, if any, last

    return fn
