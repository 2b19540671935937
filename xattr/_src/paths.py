"""Quadrature along a path from a baseline to the input: the integral behind IG and its relatives.

NOTE: [Quadrature rules]
Alphas and weights on [0, 1] for n steps, matching Captum's except where Captum is wrong:
  riemann_left     alpha_i = i/n,          w_i = 1/n
  riemann_right    alpha_i = (i+1)/n,      w_i = 1/n
  riemann_middle   alpha_i = (i+1/2)/n,    w_i = 1/n
  riemann_trapezoid alpha_i = i/(n-1),     w_i = 1/(n-1), halved at both ends (sums to 1).
                   Captum uses w_i = 1/n halved at the ends, which sums to 1 - 1/n and so
                   under-integrates every path by a factor (n-1)/n; xattr uses the exact rule.
  gausslegendre    Gauss-Legendre nodes/weights mapped from [-1, 1] to [0, 1] (the default).

NOTE: [Each leaf's path in its own dtype]
The rules are float64 arrays. Each attributed tensor walks its path with the nodes in its own
dtype, so a float32 tensor beside a float64 one reaches the model as float32 and the float64
one's nodes keep float64 precision, whichever comes first in leaf order. The weights ride in
the backward's cotangent in the widest dtype of the inputs (at least float32; the cotangent
then takes the output's dtype); when the inputs' dtypes differ they are applied instead to each
gradient after the backward pass, in the gradient's dtype. Every attributed tensor must be
floating point (checked on the inputs, before any path is built): an integer leaf (a mask,
token ids) would otherwise be interpolated as floats.

NOTE: [Sums over chunks]
A chunked method adds each chunk's part (summed over the chunk's own rows, which torch does with
a float32 accumulator for float16/bfloat16) to a running total. Kept in float16 (11 significant
bits) or bfloat16 (8), a total stops growing once it is about 2^11 or 2^8 times a part, so
small chunks of a long path or of many samples rounded away (bfloat16 IG over 1000 steps in
chunks of 2 halved to quartered every feature). `ChunkSum` keeps a half-precision total in
float32 and rounds it once, to the parts' dtype, at the end; float32 and float64 totals stay in
their own dtype (no cast, no copy). The noise tunnel's sums over S samples also compute each
part in float32 for half-precision attributions (`noise_tunnel.monte_carlo`): a float16 sum of
S copies of 1000 overflows where their mean does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import tree as T
from .checks import baselines_tuple, check_float_inputs, warn_if_training
from .gradients import attribution_fn, vjp_rows

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


# the dtype a running sum of half-precision parts is kept in (NOTE: [Sums over chunks])
WIDE = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.complex32: torch.complex64}


class ChunkSum:
    """The sum of per-chunk parts, trees of tensors alike (NOTE: [Sums over chunks])."""

    __slots__ = ("total", "dtypes", "widened")

    def __init__(self):
        self.total = self.dtypes = None
        self.widened = False

    def add(self, part, like=None) -> None:
        """Adds ``part``; ``like``: a tree whose dtypes the result takes, when the part was
        computed wider than them (default: the first part's)."""
        if self.total is None:
            like = part if like is None else like
            self.total, self.dtypes = part, T.tree_map(lambda p: p.dtype, like)
            self.widened = any(p.dtype in WIDE for p in T.leaves(like))
        else:
            self.total = T.tree_map(_wide_add, self.total, part)

    def value(self, divide_by: int | None = None):
        """The total (divided by ``divide_by`` before rounding), in the parts' dtype."""
        if divide_by is not None:
            total = T.tree_map(lambda t: t / divide_by, self.total)
        elif not self.widened:
            return self.total
        else:
            total = self.total
        return T.tree_map(lambda t, d: t.to(d), total, self.dtypes) if self.widened else total


def _wide_add(total: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    wide = WIDE.get(total.dtype)
    return torch.add(total if wide is None else total.to(wide), part)


def quadrature(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (alphas, weights), float64 arrays of length n_steps. See NOTE: [Quadrature rules].

    Example:
      >>> alphas, weights = xattr.quadrature("gausslegendre", 8)   # (8,) each; weights sum to 1
    """
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    n = n_steps
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1.0), 0.5 * w
    if method == "riemann_trapezoid":
        if n < 2:
            raise ValueError("riemann_trapezoid needs n_steps >= 2")
        w = np.full(n, 1.0 / (n - 1))
        w[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, n), w
    offsets = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}
    if method not in offsets:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    return (np.arange(n) + offsets[method]) / n, np.full(n, 1.0 / n)


def straight_line(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor):
    """The IG path gamma(a) = b + a (x - b); returns (points (n, B, ...), velocity (B, ...))."""
    a = alphas.reshape((-1,) + (1,) * x.ndim)
    d = x - baseline
    return torch.mul(a, d).add_(baseline), d  # b + a d bit for bit, one path-sized tensor made, not two


def straight_line_unit(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor):
    """The IG path with velocity one: the path integral of the bare gradients, without the
    ``(x - b)`` factor (Captum's ``multiply_by_inputs=False``)."""
    a = alphas.reshape((-1,) + (1,) * x.ndim)
    return torch.mul(a, x - baseline).add_(baseline), torch.ones_like(x)


@dataclass
class Profile:
    """The integrand sampled along the path: what Split IG and saturation plots need.

    alphas (n,), weights (n,), outputs (n, B) or (n, B, K), grads shaped (n, B, [K], ...) like
    the attributed inputs (raw gradients at the path points, before weighting).

    Example:
      >>> ig, prof = xattr.path_integral(xattr.target(model, 3), return_profile=True)(x)
      >>> prof.outputs                        # (n_steps, B): f along the path
    """

    alphas: torch.Tensor
    weights: torch.Tensor
    outputs: torch.Tensor
    grads: Any


def path_integral(
    f: Callable,
    *,
    argnums: int | Sequence[int] = 0,
    baselines: Any = 0.0,
    n_steps: int = 50,
    method: str = "gausslegendre",
    path: Callable | None = None,
    chunk_size: int | None = None,
    return_profile: bool = False,
) -> Callable:
    """Line integral of f's gradient along a path from the baselines to the inputs, per feature.

    Computes ``sum_i w_i * grad f(gamma(alpha_i)) * gamma'(alpha_i)`` for each input feature,
    with (alpha_i, w_i) from the quadrature ``method``. For the default straight line this is
    integrated gradients.

    Args:
      f: model function with one output per example (see ``xattr.target``).
      argnums: attributed positional argument(s); others pass through.
      baselines: path start: a number, a tensor broadcastable to the input, or a tree like it.
        Can be overridden per call with ``fn(*args, baselines=...)``.
      n_steps, method: quadrature (see NOTE: [Quadrature rules]).
      path: custom path ``path(x, baseline, alphas) -> (points (n, B, ...), velocities)``, with
        velocities (n, B, ...) or (B, ...) for a constant one; applied to each input tensor. A
        path whose point and velocity at each alpha depend on that alpha alone can say so with
        ``path.pointwise = True``: it is then walked chunk by chunk (NOTE: [Path points per chunk]).
      chunk_size: most model rows (examples x steps) per forward/backward call.
      return_profile: also return a `Profile` of the integrand along the path.

    Returns:
      ``fn(*args, baselines=None)`` giving a tree like ``args[argnums]`` (K axis after the batch
      for many-outputs targets), or ``(integral, Profile)``.

    Example:
      >>> ig = xattr.path_integral(xattr.target(model, 3), n_steps=32, method="riemann_trapezoid")(x)  # like x
    """
    nums, as_tuple = T.normalize_argnums(argnums)
    alphas_np, weights_np = quadrature(method, n_steps)
    walk = path or straight_line

    def fn(*args, baselines=baselines):
        warn_if_training(f)
        with T.batch_scope(T.batch_size(T.split_args(args, nums)[0])):
            return integrate(args, baselines)

    def integrate(args, baselines):
        selected, rebuild = T.split_args(args, nums)
        check_float_inputs(selected, "path_integral")  # NOTE: [Each leaf's path in its own dtype]
        base = baselines_tuple(selected, baselines, as_tuple)
        batch = T.batch_size(selected)
        xs = T.leaves(selected)
        mixed = len({x.dtype for x in xs}) > 1
        weights = torch.as_tensor(weights_np, dtype=real_dtype(xs, torch.float32), device=xs[0].device)
        spans = list(T.chunks(n_steps, batch, chunk_size))
        upfront = len(spans) == 1 or not (walk in POINTWISE or getattr(walk, "pointwise", False) is True)  # NOTE: [Path points per chunk]
        if upfront:
            points, velocity = _walk(walk, selected, base, alphas_np)
        total, profile_out, profile_grads = ChunkSum(), [], []
        for start, stop in spans:
            c = stop - start
            if upfront:
                here, at = points, start
            else:  # only this chunk's points: chunk_size bounds the memory of the path too
                (here, velocity), at = _walk(walk, selected, base, alphas_np[start:stop]), 0
            rows = T.fold_rows(T.tree_map(lambda p: p[at : at + c], here))
            call_args = _rows_args(args, nums, rows, c, batch)
            w = None if return_profile or mixed else weights[start:stop].repeat_interleave(batch)
            out, grads = vjp_rows(f, call_args, nums, weights=w, chunk_size=chunk_size, method="path_integral")
            grads = T.unfold(grads, c)
            if return_profile:
                profile_out.append(out.reshape((c, batch) + tuple(out.shape[1:])))
                profile_grads.append(grads)
            if w is None:  # weights applied to each gradient in its own dtype
                grads = T.tree_map(lambda g: g * weights[start:stop].to(g.dtype).reshape((-1,) + (1,) * (g.ndim - 1)), grads)
            total.add(T.tree_map(lambda g, x, v: _contract(g, x, v, at, at + c), grads, selected, velocity))
        total = total.value()  # NOTE: [Sums over chunks]
        result = total if as_tuple else total[0]
        if not return_profile:
            return result
        grads_all = T.tree_map(lambda *gs: torch.cat(gs), *profile_grads)
        like = real_dtype(xs)  # the inputs' dtype (the widest of them when they differ)
        profile = Profile(
            torch.as_tensor(alphas_np, dtype=like, device=xs[0].device), weights.to(like),
            torch.cat(profile_out), grads_all if as_tuple else grads_all[0],
        )  # fmt: skip
        return result, profile

    return attribution_fn(fn, f)


# NOTE: [Path points per chunk]
# With more than one chunk, the straight line's points are made chunk by chunk: each point
# depends on its own alpha alone, so chunk_size bounds the path's memory as well as the model's
# rows (all n_steps x B copies at once had cost 2x their size whatever chunk_size was: +770 MiB
# for B=8 3x64x64 inputs at n_steps=1024). A custom ``path`` is walked whole, once, as before:
# it may compute its velocities from neighbouring alphas; one marked ``pointwise = True`` (Blur
# IG's) is walked chunk by chunk like the straight line.
POINTWISE = (straight_line, straight_line_unit)


def _walk(walk, selected, base, alphas: np.ndarray):
    """Each leaf's path with the nodes in its own dtype (NOTE: [Each leaf's path in its own dtype])."""
    leaves = zip(T.leaves(selected), T.leaves(base))
    pairs = [walk(x, b, torch.as_tensor(alphas, dtype=x.dtype, device=x.device)) for x, b in leaves]
    treedef = T.optree.tree_structure(selected, namespace="xattr")
    points = T.optree.tree_unflatten(treedef, [p for p, _ in pairs])
    velocity = T.optree.tree_unflatten(treedef, [v for _, v in pairs])
    return points, velocity


def real_dtype(xs: list, floor: torch.dtype | None = None) -> torch.dtype:
    """The widest real dtype of the tensors xs (complex ones count as their real part), at least
    ``floor``: the dtype for quadrature weights shared by all of them."""
    out = floor
    for x in xs:
        d = x.dtype.to_real() if x.dtype.is_complex else x.dtype
        out = d if out is None else torch.promote_types(out, d)
    return out


def _rows_args(args, nums, rows, c, batch):
    folded = tuple(a if i in nums else T.fold(a, c, batch) for i, a in enumerate(args))
    return T.split_args(folded, nums)[1](rows)


def _contract(g: torch.Tensor, x: torch.Tensor, v: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Sums (already weighted) gradients g (c, B, [K], ...) times the path velocity over steps."""
    multi = g.ndim == x.ndim + 2
    if v.ndim == x.ndim:  # constant velocity (B, ...): sum first, multiply once
        return g.sum(0) * (v.unsqueeze(1) if multi else v)
    vs = v[start:stop]
    return (g * (vs.unsqueeze(2) if multi else vs)).sum(0)
