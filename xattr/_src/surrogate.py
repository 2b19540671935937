"""LIME and KernelSHAP: a weighted linear surrogate over random coalitions, fitted per example.

NOTE: [Surrogate methods in one evaluation]
Both methods draw, for every example, N coalitions z in {0, 1}^F over its F features (NOTE:
[Features and coalitions]); the model is evaluated at all B*N perturbed copies through one
`evaluate` call (chunked only by the memory budget), and a linear model ``y ~ c + z.beta`` is
fitted to every example's N outputs, weighted by a similarity kernel, by one batched solver
(NOTE: [Batched surrogate fits] in solvers.py). The attributions are the coefficients beta.
Draws come from one generator per example (NOTE: [Explicit randomness]), all made before any
model call, so an example's attributions depend neither on the batch it is in nor on the chunk
size. Models returning one number per batch (aggregate mode) are explained as one example: one
set of coalitions for the whole batch, and one row of attributions. An example's coalitions
are over the features its mask holds (NOTE: [Each example's own features] in masks.py): drawn
and fitted per group of examples holding the same ids, evaluated together.

NOTE: [Coalitions held as bool]
The (B, N, F) coalitions are the one tensor of a surrogate call that grows with B * N * F and
lives for the whole call, so they are held as bool: a quarter of float32's bytes (they were in
the default dtype, and LIME made a second such copy for its weights). They are made 0/1 floats
only in the steps that read them: the model's copies (as masks), the exp kernel's dot products
and the fits' normal equations (float64, a memory budget of samples at a time); a custom
``similarity_func`` gets each chunk as 0/1 in the output's dtype, a custom solver or
scikit-learn estimator the whole X so (as documented for them). They are drawn a memory budget
at a time (NOTE: [Coalition draws within the memory budget] in coalitions.py).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from . import tree as T
from .checks import at_least_float32, transforms_around, warn_if_training  # weights' dtype: NOTE: [Similarity weights' precision] in similarity_kernels.py
from .coalitions import bernoulli_draws, kernel_draws
from .coalitions import shapley_draws as _shapley_draws  # noqa: F401  (tests draw with it)
from .gradients import attribution_fn
from .kernel_sampling import SAMPLINGS
from .kernel_shap_error import check_n_samples as check_kernel_shap_error
from .kernel_shap_error import sampled_units, shap_std_error
from .similarity_kernels import EXP_KERNEL, exp_kernel_similarity  # noqa: F401  (exported from here too)
from .similarity_kernels import exp_kernel_weights as _exp_kernel_weights
from .masks import FeatureSet, feature_sets, features, keep_masks, place, scatter_features, widen
from .perturb import as_floating, baseline_tree, copies_per_call, evaluate, outputs_at, perturb
from .sampling import row_seeds, streams
from .solvers import constrained_lstsq, lasso, linear_regression, ridge, sklearn_fit  # noqa: F401  (re-exported)
from .surrogate_fits import fit_budget, lime_fit, shap_fit
from .warn import warn

_MANY_FEATURES = 10_000  # Captum warns above this too


def _dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def _prepare(f, args, nums, as_tuple, feature_mask, baselines, method: str):
    """What both surrogate methods start from: (inputs, masks, F, baselines, f(x), aggregate, rows)."""
    warn_if_training(f)
    selected = T.split_args(args, nums)[0]
    masks, n = features(selected, feature_mask)
    _warn_if_many(n, method)
    base = baseline_tree(selected, baselines, as_tuple)
    out, aggregate = outputs_at(f, args, T.batch_size(selected))
    return selected, masks, n, base, out, aggregate, 1 if aggregate else T.batch_size(selected)


def lime(
    f: Callable,
    *,
    n_samples: int = 50,
    baselines: Any = 0.0,
    feature_mask: Any = None,
    argnums: int | Sequence[int] = 0,
    interpretable_model: Any = None,
    similarity_func: Callable | None = None,
    perturb_func: Callable | None = None,
    generator=None,
    return_input_shape: bool = True,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool = False,
) -> Callable:
    """LIME (Ribeiro et al. 2016): coefficients of a weighted linear surrogate over random coalitions.

    For each example draw N = ``n_samples`` coalitions ``z_n ~ Bernoulli(1/2)^F`` (feature f
    kept where z = 1, set to its baseline where 0), evaluate ``y_n = f(x(z_n))``, weight each by
    ``pi_n = similarity_func(x, x(z_n), z_n)`` and fit ``y ~ c + z.beta``; beta are the
    attributions. Defaults are Captum's ``Lime``: ``interpretable_model = xattr.lasso(0.01)``
    (``sklearn.linear_model.Lasso(alpha=0.01)`` with ``sample_weight``: minimises
    ``1/(2 sum pi) sum pi_n (y_n - c - z_n.beta)^2 + 0.01 ||beta||_1``) and
    ``similarity_func = exp_kernel_similarity("cosine", 1.0)``. All B*N copies go through one
    batched evaluation and all B fits through one batched solver (NOTE: [Surrogate methods in
    one evaluation]).

    Args (the perturbation ones as in `feature_ablation`: baselines, feature_mask, argnums,
    chunk_size, memory_budget, show_progress), and:
      n_samples: coalitions per example (Captum's ``Lime.attribute`` defaults to 25).
      interpretable_model: a solver ``(X (B, N, F), y (B, N, K), sample_weight (B, N)) ->
        (coef (B, K, F), intercept (B, K))`` (`xattr.lasso`, `xattr.ridge`,
        `xattr.linear_regression` or your own), or a scikit-learn style estimator with
        ``fit(X, y, sample_weight=...)`` and ``coef_``, then cloned and fitted per example on
        the CPU (slow; for checking). ``sample_weight`` is in at least float32 (NOTE:
        [Similarity weights' precision] in similarity_kernels.py); the coefficients are cast to the output's dtype.
      similarity_func: ``(original, perturbed, coalitions) -> (B, N)`` weights: ``original`` is
        the attributed argument(s) (leaves (B, ...)), ``perturbed`` the same tree with leaves
        (B, N, ...) (the copies, built in memory-budget chunks along N), ``coalitions`` (B, N, F).
        In aggregate mode B is 1 and each leaf keeps the whole batch after it.
      perturb_func: ``(n_samples, n_features, generator) -> (n_samples, n_features)`` 0/1
        coalitions, called once per example, in the batch's order, with the number of features
        that example's mask holds and its ``torch.Generator`` (on the inputs' device; None for
        ``generator=None``): draw from it for reproducible results.
      generator: int seed, torch.Generator or None (NOTE: [Explicit randomness]).
      return_input_shape: True spreads each feature's coefficient over its elements (shaped
        like ``args[argnums]``); False returns the coefficients, (B, F) (or (B, K, F)), F the
        largest id + 1: an example's coalitions and fit are over the ids its own mask holds, and
        the ids it lacks get exactly 0 (NOTE: [Each example's own features] in masks.py).

    Returns:
      ``fn(*args, baselines=..., feature_mask=...)``; a K axis after the batch for
      ``xattr.outputs``.

    Example:
      >>> attr = xattr.lime(xattr.target(model, 1), n_samples=200, generator=0)(x)
    """
    nums, as_tuple = T.normalize_argnums(argnums)
    _check_n_samples(n_samples, 1)
    model = lasso(alpha=0.01) if interpretable_model is None else interpretable_model
    if not (hasattr(model, "fit") or callable(model)):
        raise TypeError(
            "interpretable_model must be a solver (X, y, sample_weight) -> (coef, intercept) such as "
            f"xattr.lasso(0.01), or an estimator with fit(X, y, sample_weight) and coef_; got {type(model).__name__}"
        )
    similarity = exp_kernel_similarity() if similarity_func is None else similarity_func

    def fn(*args, baselines=baselines, feature_mask=feature_mask):
        _refuse_vmap("lime")
        selected, masks, n, base, out, aggregate, rows = _prepare(f, args, nums, as_tuple, feature_mask, baselines, "lime")
        sets = feature_sets(masks, n, rows)
        (stream,) = streams(generator, 1)
        seeds = None if stream is None else row_seeds(stream, rows)
        device = out.device
        if perturb_func is None:
            budget = fit_budget(memory_budget, device)
            parts = [bernoulli_draws(s.count(rows), n_samples, s.n, stream, s.pick(seeds), device, budget) for s in sets]
        else:
            parts = _custom_draws(perturb_func, sets, rows, n_samples, n, seeds, device)
        z = widen(parts, sets, n, rows)
        y = _evaluate(f, args, nums, masks, base, z, aggregate, chunk_size, memory_budget, show_progress)
        w = _weights(similarity, selected, base, masks, z, y.dtype, n, aggregate, as_tuple, chunk_size, memory_budget)
        fit = lime_fit(model, memory_budget)  # NOTE: [Surrogate fits within the memory budget]
        coef = place([fit(zs, s.pick(y), s.pick(w)).to(y.dtype) for s, zs in zip(sets, parts)], sets, n)
        return _result(coef, out, masks, selected, as_tuple, return_input_shape)

    return attribution_fn(fn, f)


def kernel_shap(
    f: Callable,
    *,
    n_samples: int = 50,
    sampling: str = "captum",
    baselines: Any = 0.0,
    feature_mask: Any = None,
    argnums: int | Sequence[int] = 0,
    generator=None,
    return_input_shape: bool = True,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool = False,
    return_std_error: bool = False,
) -> Callable:
    """KernelSHAP (Lundberg & Lee 2017): Shapley values as a weighted regression over coalitions.

    With M features, every example gets the empty coalition and N - 2 random ones (N =
    ``n_samples``; the full coalition is the input itself), drawn as Captum's ``KernelShap``
    draws them: a size k in 1..M-1 with probability proportional to ``(M - 1) / (k (M - k))``,
    then k features uniformly. Sampling by the Shapley kernel makes every sample's weight 1;
    ``phi`` minimises ``sum_n (f(x(z_n)) - f(b) - z_n.phi)^2`` subject to the efficiency
    constraint ``sum(phi) = f(x) - f(b)``, imposed exactly (Captum approximates it by weighting
    the two end coalitions 1e6 in an unconstrained fit). As N grows phi converges to the
    Shapley values. When ``n_samples >= 2^M`` every coalition is used once with its Shapley
    kernel weight ``(M - 1) / (C(M, k) k (M - k))`` and the result *is* the Shapley values.
    M is the number of features the example's mask holds (NOTE: [Each example's own features]
    in masks.py): ids it lacks, or a mask skips, are not drawn, and get exactly 0.

    ``sampling="paired"`` spends the same budget as shap's ``KernelExplainer`` does: whole
    coalition sizes enumerated from the extremes inward while the budget covers them (exact
    kernel weights), the rest drawn with their complements, repeats merged into one coalition
    with their weights added, the same exact efficiency constraint; exact once ``n_samples >=
    2^M`` (NOTE: [Paired KernelSHAP sampling] in kernel_sampling.py). Usually far more accurate
    at the same budget (docs/methods/kernel_shap.md measures it).

    Args: as `lime` (no surrogate options: the estimator is fixed); ``n_samples`` counts the two
    end coalitions, as Captum's does (Captum defaults to 25); ``sampling``: ``"captum"`` (the
    default, Captum's sampler) or ``"paired"``; ``return_std_error``: also return each Shapley
    value's standard error, estimated from the same coalitions by the delta method (Covert & Lee
    2021) with each draw's residual leverage-corrected (HC2: calibrated from about 60 samples
    on; drawn pairs are the paired sampler's independent units, enumerated sizes add no
    variance; 0 where every coalition is enumerated; refused where undefined, e.g. ``n_samples
    < 4``: NOTE: [Standard errors of KernelSHAP] in kernel_shap_error.py).

    Returns:
      ``fn(*args, baselines=..., feature_mask=...)``: attributions shaped like ``args[argnums]``
      (each feature's value on each of its elements), or (B, [K,] M) with
      ``return_input_shape=False``; a K axis after the batch for ``xattr.outputs``. With
      ``return_std_error``: ``(attributions, std_error)``, the second alike.

    Example:
      >>> phi = xattr.kernel_shap(xattr.target(model, 1), n_samples=200, generator=0)(x)
    """
    nums, as_tuple = T.normalize_argnums(argnums)
    _check_n_samples(n_samples, 2)
    check_kernel_shap_error(return_std_error, n_samples)
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS} (Captum's sampler, or shap's enumerated and paired one), got {sampling!r}")

    def fn(*args, baselines=baselines, feature_mask=feature_mask):
        _refuse_vmap("kernel_shap")
        selected, masks, m, base, out, aggregate, rows = _prepare(f, args, nums, as_tuple, feature_mask, baselines, "kernel_shap")
        sets = feature_sets(masks, m, rows)
        units = [sampled_units(s.n, n_samples, sampling) for s in sets] if return_std_error else None  # refusals first
        (stream,) = streams(generator, 1)
        seeds = None if stream is None else row_seeds(stream, rows)
        dtype = as_floating(out).dtype  # the weights' (integer weights of an integer model would be 0)
        budget = fit_budget(memory_budget, out.device)
        coalitions, drawn = kernel_draws(sets, m, rows, n_samples, stream, seeds, out.device, dtype, budget, sampling)
        y = _evaluate(f, args, nums, masks, base, coalitions, aggregate, chunk_size, memory_budget, show_progress)
        full = out.reshape(rows, -1).to(y.dtype)  # f(x): (rows, K)
        fits = [_shap_fit(s, zs, ws, y, full, memory_budget) for s, (zs, ws) in zip(sets, drawn)]
        phi = _result(place(fits, sets, m), out, masks, selected, as_tuple, return_input_shape)
        if not return_std_error:
            return phi
        se = [_shap_error(s, zs, ws, y, fit, u, memory_budget) for s, (zs, ws), fit, u in zip(sets, drawn, fits, units)]
        return phi, _result(place(se, sets, m), out, masks, selected, as_tuple, return_input_shape)

    return attribution_fn(fn, f)


def _warn_if_many(n_features: int, method: str) -> None:
    if n_features > _MANY_FEATURES:
        warn(
            f"{method} fits a linear model over {n_features} features (an F x F system per example): group the "
            "input's elements into fewer features with feature_mask (superpixels, patches, tokens)",
            UserWarning,
        )


def _check_n_samples(n_samples, least: int) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < least:
        raise ValueError(f"n_samples must be an int >= {least}, got {n_samples!r}")


def _evaluate(f, args, nums, masks, base, z, aggregate, chunk_size, memory_budget, show_progress) -> torch.Tensor:
    """The model at every coalition: (rows, N, K), K = 1 for one output per example."""
    y = evaluate(f, args, nums, masks=masks, baselines=base, coalitions=z, aggregate=aggregate,
                 chunk_size=chunk_size, memory_budget=memory_budget, show_progress=show_progress)  # fmt: skip
    y = as_floating(y)
    return y if y.ndim == 3 else y[..., None]


def _result(coef, out, masks, selected, as_tuple, return_input_shape):
    """coef (rows, K, F) -> attributions: (rows, F) or (rows, K, F), or spread onto the inputs."""
    if out.ndim < 2:  # one output per example: no K axis
        coef = coef[:, 0]
    if not return_input_shape:
        return coef
    attr = scatter_features(coef, masks, selected)
    return attr if as_tuple else attr[0]


def _custom_draws(perturb_func, sets: list[FeatureSet], rows: int, n: int, F: int, seeds, device) -> list[torch.Tensor]:
    """perturb_func's coalitions, one call per example in the batch's order (a function may count
    its calls), each over the example's own features; grouped as ``sets``. A function that
    answers over all F ids (written for the mask's largest id + 1, as Captum's
    num_interp_features) has its columns of the example's own ids taken."""
    own = {i: s for s in sets for i in (range(rows) if s.rows is None else s.rows.tolist())}
    drawn = []
    for i in range(rows):
        s, seed = own[i], None if seeds is None else seeds[i]
        g = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        z = torch.as_tensor(perturb_func(n, s.n, g), device=device)
        if s.ids is not None and tuple(z.shape) == (n, F):
            z = z[:, s.ids]
        if tuple(z.shape) != (n, s.n):
            raise ValueError(f"perturb_func must return ({n}, {s.n}) coalitions (n_samples, n_features), got {tuple(z.shape)}")
        if not bool(((z == 0) | (z == 1)).all()):
            raise ValueError("perturb_func must return 0/1 coalitions (1 keeps a feature, 0 sets it to its baseline)")
        drawn.append(z != 0)
    return [torch.stack(s.pick(drawn)) for s in sets]


def _shap_fit(s: FeatureSet, z: torch.Tensor, w: torch.Tensor, y: torch.Tensor, full: torch.Tensor, memory_budget) -> torch.Tensor:
    """One feature set's Shapley values (its examples, K, n_s) from the model at its coalitions:
    y (batch, 1 + N, K) holds f at the empty coalition, then at the set's N (and copies padding
    other sets' longer lists, not read); full (batch, K) is f(x)."""
    y, full = s.pick(y)[:, : 1 + z.shape[1]], s.pick(full)
    return shap_fit(z, y[:, 1:] - y[:, :1], w.to(y.dtype), full - y[:, 0], memory_budget)


def _shap_error(s: FeatureSet, z, w, y, phi, units, memory_budget) -> torch.Tensor:
    """The standard errors of `_shap_fit`'s phi (its examples, K, n_s), in phi's dtype (NOTE:
    [Standard errors of KernelSHAP] in kernel_shap_error.py); ``units``: `sampled_units`."""
    y = s.pick(y)[:, : 1 + z.shape[1]]
    se = shap_std_error(z, w, y[:, 1:] - y[:, :1], phi, units, fit_budget(memory_budget, y.device))
    return se.to(phi.dtype)


def _weights(similarity, selected, base, masks, z, dtype, n_features, aggregate, as_tuple, chunk_size, memory_budget) -> torch.Tensor:
    """Similarity weights (rows, N) of every coalition (z bool), in ``dtype`` promoted to at least
    float32; a custom similarity_func gets the coalitions as 0/1 in ``dtype``."""
    kind = getattr(similarity, EXP_KERNEL, None)
    dt = at_least_float32(dtype)
    if kind is not None:
        return _exp_kernel_weights(kind, selected, base, masks, z, dt, n_features, aggregate, fit_budget(memory_budget, z.device))
    batch = T.batch_size(selected)
    per = copies_per_call(selected, batch, chunk_size, memory_budget, z.shape[1])
    user = lambda tree: tree if as_tuple else tree[0]  # noqa: E731
    original = T.tree_map(lambda x: x[None] if aggregate else x, selected)
    parts = []
    for s in range(0, z.shape[1], per):
        e = min(s + per, z.shape[1])
        keep = keep_masks(z[:, s:e], masks, selected, batch)
        copies = T.tree_map(lambda x, b, kp: perturb(x.unsqueeze(0), b.unsqueeze(0), kp), selected, base, keep)  # (c, B, ...)
        copies = T.tree_map(lambda c: c[None] if aggregate else c.transpose(0, 1), copies)
        w = torch.as_tensor(similarity(user(original), user(copies), z[:, s:e].to(dtype)))
        if tuple(w.shape) != (z.shape[0], e - s):
            want = (z.shape[0], e - s)
            raise ValueError(f"similarity_func must return {want} weights (examples, samples), got {tuple(w.shape)}")
        parts.append(w.to(device=z.device, dtype=dt))
    return torch.cat(parts, 1)


def _refuse_vmap(method: str) -> None:
    """A clear error under ``torch.func.vmap`` (which otherwise fails deep inside with torch's
    randomness or data-dependent control-flow errors): the draws, the solvers' checks and the
    budget's grouping read values. Both methods already batch over the examples of one call,
    and they run under ``grad`` and ``jacrev``."""
    if transforms_around(torch._C._functorch.TransformType.Vmap):
        raise NotImplementedError(
            f"{method} cannot run under torch.func.vmap: it draws samples and solves its surrogate with steps that "
            "read values. It batches over the examples already: call it on the whole batch (rows of x), or loop"
        )
