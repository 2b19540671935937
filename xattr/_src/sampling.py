"""Monte Carlo transforms over attribution functions: the noise tunnel and baseline expectations.

NOTE: [Explicit randomness]
Every stochastic transform takes ``generator``: an int seed, a ``torch.Generator``, or None for
torch's global generator. From it xattr derives one independent stream per random quantity (each
input tensor's noise, baseline indices, path alphas) and, within a stream, one generator per
example (seeded by the stream and the example's index). So with the same seed an example gets
the same draws whatever the batch size it is in, and all draws are made before chunking, so
the chunk size never changes them either. With generator=None draws come from the global
generator in one call and batch-size invariance is not promised.

NOTE: [Seeds of folded copies]
A transform that folds S copies of the batch into one call of an inner attribution function
(the noise tunnel, expectation, sensitivity) hands it rows that are copies, not examples. A
seeded stochastic inner method (gradient SHAP, Shapley sampling, LIME, KernelSHAP) would seed
by its row index, so which draws a copy got depended on how the copies were chunked, and on the
batch size. `copy_blocks` therefore declares, for the inner call, that its rows are blocks of
the true batch B, each block with an id that names the copy (and, nested, the copy of a copy);
`row_seeds` seeds row i from (stream, example i mod B, its block's id). Outside any fold the
id is 0 and the seeds are the plain per-example ones: a method's numbers do not change. Feature
permutation, whose draws belong to the batch and not to an example, shuffles each block within
itself with the block's own seed (`folded_blocks`, `block_seed`).

The noise tunnel and expectation average over copies, so each copy has its own id. Sensitivity
compares ``phi(x_s)`` with ``phi(x)`` for one seeded function ``phi``: its copies keep the
caller's ids (``same_draws``) and draw what ``phi(x_s)`` alone draws, phi(x)'s (own draws
scored the method's noise: 0.1 to 1.8 at a perturbation radius of 0).

NOTE: [Per-input numbers]
``stdevs`` (one noise level per attributed tensor) is one number for all; a list or tuple of
numbers, one per tensor in the inputs' *leaf order* (optree's: a dict's keys sorted, so for
``{"z": ..., "a": ...}`` the first number is "a"'s); or a tree like the attributed inputs
(a dict keyed like the input), where a number may also stand for a whole subtree.

NOTE: [Baseline distributions]
A distribution of baselines (gradient SHAP, DeepLift SHAP, `expectation`) is a tree like the
attributed inputs of tensors (N, ...) whose row k is one baseline for every tensor together.
A number is a one-row distribution of that value, whole or at one leaf; a leaf with one row
(a number, or a tensor (1, ...)) is shared by every row of the others.

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

import contextvars
import numbers
from typing import Any, Callable, Sequence

import torch

from . import tree as T
from .checks import check_float_inputs, check_noisy_inputs, warn_if_training
from .gradients import attribution_fn
from .layers import Split
from .paths import WIDE, ChunkSum
from .std_error import check_std_error, real_dtype


def streams(generator, n: int) -> list:
    """n independent stream seeds derived from `generator` (None: torch's global generator)."""
    if generator is None:
        return [None] * n
    if isinstance(generator, bool) or not isinstance(generator, (int, torch.Generator)):
        raise TypeError(f"generator must be an int seed, a torch.Generator or None, got {type(generator).__name__}")
    if isinstance(generator, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    else:
        seed = generator
    return [(seed * 1_000_003 + 0x9E3779B1 * (i + 1)) % 2**62 for i in range(n)]


_COPIES: contextvars.ContextVar = contextvars.ContextVar("xattr_copy_blocks", default=None)  # (B, block ids)


def _mix(parent: int, copy: int) -> int:
    return (parent * 0x100000001B3 + (copy + 1) * 0xC2B2AE3D27D4EB4F) % 2**61


class copy_blocks:
    """Declares that the inner call's rows are copies ``start..stop`` (copy-major, as `T.fold`
    lays them out) of the caller's ``rows`` rows (NOTE: [Seeds of folded copies]); with
    ``same_draws`` every copy keeps the caller's ids, so draws, as if it were called alone."""

    __slots__ = ("ids", "token")

    def __init__(self, start: int, stop: int, rows: int, *, same_draws: bool = False):
        outer = _COPIES.get()
        if outer is None or rows != outer[0] * len(outer[1]):
            outer = (rows, (0,))  # the caller's rows are a batch of examples
        self.ids = (outer[0], tuple(q if same_draws else _mix(q, p) for p in range(start, stop) for q in outer[1]))
        self.token = None

    def __enter__(self):
        self.token = _COPIES.set(self.ids)

    def __exit__(self, *exc) -> None:
        _COPIES.reset(self.token)


def folded_blocks(rows: int) -> tuple[int, tuple[int, ...]] | None:
    """(B, the blocks' ids) when ``rows`` are folded copies of a batch of B, copy-major, each
    block a copy with its own id (NOTE: [Seeds of folded copies]); None for a batch of examples."""
    blocks = _COPIES.get()
    return blocks if blocks is not None and rows == blocks[0] * len(blocks[1]) else None


def block_seed(stream: int, block: int) -> int:
    """The seed of one folded copy's draws that are shared by its rows (a permutation of its batch)."""
    return (stream + 0x9E3779B97F4A7C15 * block) % 2**63


def row_seeds(stream: int, rows: int) -> list[int]:
    """One generator seed per row of a draw for ``rows`` rows: the example's seed in its stream,
    moved by the row's copy id when the rows are folded copies (NOTE: [Seeds of folded copies])."""
    blocks = _COPIES.get()
    if blocks is None or rows != blocks[0] * len(blocks[1]):
        return [(stream + 0x51ED27 * (i + 1)) % 2**63 for i in range(rows)]
    b, ids = blocks
    return [(stream + 0x51ED27 * (i % b + 1) + 0x9E3779B97F4A7C15 * ids[i // b]) % 2**63 for i in range(rows)]


def per_example(stream, out: torch.Tensor, fill, seeds: list[int] | None = None) -> torch.Tensor:
    """Fills ``out`` (B, ...) in place, example i from its own generator seeded by (stream, i).

    torch's bulk samplers do not have the prefix property (the values drawn for the first
    elements depend on the total size drawn), so batch-size invariance needs one generator per
    example. ``fill(view, generator)`` samples into a view in place; with no stream the whole
    buffer is filled from the global generator in one call. When ``out`` holds some of the
    batch's examples only (a group of them: NOTE: [Each example's own features]), ``seeds`` are
    theirs: the batch's `row_seeds` at their positions, so each draws what it would beside the
    others.
    """
    if stream is None:
        fill(out, None)
        return out
    for i, seed in enumerate(row_seeds(stream, out.shape[0]) if seeds is None else seeds):
        fill(out[i], torch.Generator(device=out.device).manual_seed(seed))
    return out


def normal_like(x: torch.Tensor, n: int, stdev: float, stream) -> torch.Tensor | None:
    """(n, B, ...) Gaussian noise of std `stdev` for x (B, ...); None when stdev is 0."""
    if stdev == 0:
        return None
    z = torch.empty((x.shape[0], n) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    return per_example(stream, z, lambda v, g: v.normal_(0.0, stdev, generator=g)).transpose(0, 1)


def noisy_rows(x: torch.Tensor, noise: torch.Tensor | None, start: int, stop: int) -> torch.Tensor:
    """Copies start..stop of x (B, ...) plus their noise, folded to ((stop - start) * B, ...)."""
    if noise is None:
        return T.fold(x, stop - start)
    return T.fold_rows(x.unsqueeze(0) + noise[start:stop])


def uniform_rows(batch: int, n: int, stream, like: torch.Tensor) -> torch.Tensor:
    """(n, B) uniform draws on [0, 1)."""
    u = torch.empty((batch, n), dtype=like.dtype, device=like.device)
    return per_example(stream, u, lambda v, g: v.uniform_(0.0, 1.0, generator=g)).T


def index_rows(batch: int, n: int, high: int, stream, device) -> torch.Tensor:
    """(n, B) integer draws in [0, high)."""
    idx = torch.empty((batch, n), dtype=torch.long, device=device)
    return per_example(stream, idx, lambda v, g: v.random_(0, high, generator=g)).T


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
    if not isinstance(n_samples, int) or n_samples < 1:
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


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) or (isinstance(v, torch.Tensor) and v.ndim == 0 and not v.is_complex())


def _per_leaf(value, selected: tuple, as_tuple: bool, name: str = "stdevs") -> list[float]:
    """One number per attributed tensor, in leaf order (NOTE: [Per-input numbers])."""
    n = len(T.leaves(selected))
    if _is_number(value):
        return [float(value)] * n
    flat = isinstance(value, (list, tuple)) and all(_is_number(v) for v in value)
    if flat and len(value) == n:
        return [float(v) for v in value]
    tree = value if as_tuple else (value,)
    try:  # a tree like the attributed inputs, or a prefix of it (one number for a whole argument)
        given = T.optree.tree_leaves(tree, namespace="xattr")
        subtrees = T.optree.tree_structure(tree, namespace="xattr").flatten_up_to(selected)
    except (ValueError, TypeError):
        given = None
    if given is None or not all(_is_number(v) for v in given):
        if flat:
            raise ValueError(
                f"{name} has {len(value)} entries but there are {n} attributed input tensors (a sequence gives one "
                "number per tensor in the inputs' leaf order: a dict's sorted keys)"
            )
        raise ValueError(
            f"{name} must be one number, a sequence of {n} number(s) (one per attributed input tensor, in leaf order: "
            f"a dict's sorted keys), or a tree like the attributed inputs with a number for each tensor; got {value!r}"
        )
    return [float(v) for v, sub in zip(given, subtrees) for _ in T.leaves(sub)]


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
      argnums: which arguments receive noise; must be the ones attr_fn attributes.
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


def _narrowest(xs: list, method: str) -> torch.Tensor:
    """The input whose dtype every other input's promotes from (float16 < float32 < float64)."""
    for x in xs:
        if all(torch.promote_types(x.dtype, y.dtype) == y.dtype for y in xs):
            return x
    raise TypeError(
        f"{method} interpolates every attributed tensor with one path position per sample, but their dtypes "
        f"{sorted({str(y.dtype) for y in xs})} have no narrowest one (float16 beside bfloat16); give them one dtype"
    )


def distribution(selected: tuple, baselines, as_tuple: bool, *, method: str, like_inputs: bool = True):
    """A baseline distribution as a tuple of trees like ``selected``, leaves (N, ...), and N.

    NOTE: [Baseline distributions]. ``baselines`` is a number, a tensor (one attributed tensor),
    or a tree like ``args[argnums]`` (a tuple of them for tuple argnums) of tensors and numbers.
    With ``like_inputs`` each row must have its input's per-example shape and the tensors take
    its dtype and device; without, rows are left as given (the inner method checks them) and
    only numbers are made, in the input's dtype.
    """
    xs = T.leaves(selected)
    treedef = T.optree.tree_structure(selected, namespace="xattr")
    if _is_number(baselines) or (isinstance(baselines, torch.Tensor) and len(xs) == 1):
        given = [baselines] * len(xs)
    else:
        try:
            given = treedef.flatten_up_to(baselines if as_tuple else (baselines,))
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{method}: baselines must be a number, or tensors (N, ...) (or numbers) in a tree like the attributed "
                f"inputs, which have {len(xs)} tensor(s): {err}"
            ) from None
    for x, d in zip(xs, given):
        if _is_number(d):
            continue
        if not isinstance(d, torch.Tensor) or d.ndim == 0:
            raise TypeError(f"{method}: a baseline distribution's leaves are tensors (N, ...) or numbers, got {d!r}")
        if like_inputs and tuple(d.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(
                f"{method}: baselines are a distribution of shape (N, {', '.join(map(str, x.shape[1:]))}) "
                f"matching one input example; got {tuple(d.shape)}"
            )
    sizes = sorted({d.shape[0] for d in given if not _is_number(d)} - {1})
    if len(sizes) > 1:
        raise ValueError(f"{method}: every baseline tensor needs the same number of rows N (or one row); got {sizes}")
    if any(not _is_number(d) and d.shape[0] == 0 for d in given):
        raise ValueError(f"{method} averages over the baseline distribution's rows, and it has none (N = 0): pass at least one row")
    n = sizes[0] if sizes else 1
    rows = []
    for x, d in zip(xs, given):
        if _is_number(d):
            d = torch.full((1,) + tuple(x.shape[1:]), float(d), dtype=x.dtype, device=x.device)
        elif like_inputs:
            d = d.to(dtype=x.dtype, device=x.device)
        rows.append(d.expand((n,) + tuple(d.shape[1:])) if d.shape[0] != n else d)
    return T.optree.tree_unflatten(treedef, rows), n
