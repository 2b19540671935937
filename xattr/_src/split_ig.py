"""Split integrated gradients: IG over the unsaturated and the saturated part of the path.

NOTE: [Split point of Split IG]
Along the straight line gamma(a) = b + a (x - b) the output's progress is
  p(a) = (f(gamma(a)) - f(b)) / (f(x) - f(b)),   p(0) = 0, p(1) = 1.
It is sampled on the evenly spaced search grid a_k = k / (n_search - 1), k = 0..n_search-1
(the ``riemann_trapezoid`` nodes, which include both ends: one `path_integral` pass with its
`Profile` gives every f(gamma(a_k)), f(b) and f(x) in the same call). k* is the first k with
p(a_k) >= fraction; since p(a_0) = 0 < fraction <= 1 = p(a_last) it exists and k* >= 1, and
  alpha* = a_{k*-1} + (fraction - p_{k*-1}) / (p_{k*} - p_{k*-1}) * (a_{k*} - a_{k*-1}),
the point where the straight line between the two bracketing samples reaches the fraction
(alpha* lies in (a_{k*-1}, a_{k*}]). When the output barely changes,
|f(x) - f(b)| <= 64 eps (1 + |f(x)| + |f(b)|) with eps the output dtype's machine epsilon, the
progress is rounding noise: alpha* = 1 (the whole path is the left part; the right part is 0).
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Sequence

import torch

from . import tree as T
from .checks import check_float_inputs
from .gradients import attribution_fn, is_multi_output
from .output_copies import each_output
from .paths import path_integral, quadrature


def split_integrated_gradients(
    f: Callable,
    *,
    baselines: Any = 0.0,
    fraction: float = 0.9,
    n_steps: int = 50,
    method: str = "gausslegendre",
    n_search: int | None = None,
    argnums: int | Sequence[int] = 0,
    chunk_size: int | None = None,
    return_split: bool = False,
) -> Callable:
    """Split IG: integrated gradients over ``[0, alpha*]`` and over ``[alpha*, 1]`` separately.

    Miglani, Kokhlikyan, Alsallakh, Martin, Reblitz-Richardson 2020, "Investigating Saturation
    Effects in Integrated Gradients". With the straight path gamma(a) = b + a (x - b):

      left_j  = (x_j - b_j) * integral_0^alpha*  df(gamma(a))/dx_j da
      right_j = (x_j - b_j) * integral_alpha*^1  df(gamma(a))/dx_j da

    each computed by `path_integral` with the path ``gamma(lo + t (hi - lo))``, t in [0, 1],
    velocity ``(hi - lo)(x - b)``, and the quadrature rule ``method`` with ``n_steps`` nodes
    (so the two parts cost 2 n_steps gradient rows per example). alpha* is per example: the first
    point of the path where the output has covered ``fraction`` of its change,
    ``f(gamma(alpha*)) - f(b) = fraction * (f(x) - f(b))``, found on an evenly spaced grid of
    ``n_search`` points (both ends included; default ``n_steps + 1``) and refined by linear
    interpolation between the two grid points around the first crossing (NOTE: [Split point of
    Split IG] in ``xattr/_src/split_ig.py``; one more pass of n_search rows). If
    ``f(x) ~= f(b)`` (within 64 machine epsilons of the output dtype, relative), alpha* = 1:
    ``left`` is the whole IG and ``right`` is zero.

    Completeness per part (up to quadrature error): ``sum(left) = f(gamma(alpha*)) - f(b)``,
    ``sum(right) = f(x) - f(gamma(alpha*))``, so ``left + right`` is IG over the whole path.

    Args (beyond the shared ones):
      baselines: number, tensor broadcastable to the input, or tree like it; also a call keyword.
      fraction: the share of the output's change that marks the split, 0 < fraction < 1.
      n_steps, method: quadrature of each part (riemann_left/right/middle/trapezoid, gausslegendre).
      n_search: points of the search grid for alpha*, at least 2 (default n_steps + 1).
      return_split: also return alpha*, one per example (B,), or (B, K) for K outputs.

    A many-outputs target (``xattr.outputs``) gets one split per example and output: the parts
    gain a K axis after the batch, ``(B, K, *x.shape[1:])``, and alpha* is (B, K); the numbers
    are those of K single-output runs (NOTE: [K outputs as K copies of the batch]).

    Returns:
      ``fn(*args, baselines=...)`` giving ``(left, right)``, trees like ``args[argnums]``, or
      ``(left, right, alpha_star)``.

    Example:
      >>> left, right, alpha = xattr.split_integrated_gradients(xattr.target(model, 3), return_split=True)(x)
    """
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"fraction must be a number strictly between 0 and 1, got {fraction!r}")
    quadrature(method, n_steps)  # checks method and n_steps now, not at the first call
    n_search = n_steps + 1 if n_search is None else n_search
    if isinstance(n_search, bool) or not isinstance(n_search, int) or n_search < 2:
        raise ValueError(f"n_search must be an int >= 2, got {n_search!r}")
    q = float(fraction)
    nums = T.normalize_argnums(argnums)[0]
    search = path_integral(
        f, argnums=argnums, n_steps=n_search, method="riemann_trapezoid", chunk_size=chunk_size, return_profile=True
    )

    def part(lo: torch.Tensor, hi: torch.Tensor) -> Callable:
        def walk(x, b, alphas):  # gamma(lo + t (hi - lo)) for t = alphas, per example
            shape = (-1,) + (1,) * (x.ndim - 1)
            lo_, span = lo.to(x.dtype).reshape(shape), (hi - lo).to(x.dtype).reshape(shape)
            a = alphas.reshape((-1,) + (1,) * x.ndim)
            return b + (lo_ + a * span) * (x - b), span * (x - b)

        return path_integral(f, argnums=argnums, n_steps=n_steps, method=method, path=walk, chunk_size=chunk_size)

    def fn(*args, baselines=baselines):
        check_float_inputs(T.split_args(args, nums)[0], "split_integrated_gradients")
        if is_multi_output(f):  # NOTE: [K outputs as K copies of the batch]
            one = lambda g: split_integrated_gradients(  # noqa: E731
                g, fraction=fraction, n_steps=n_steps, method=method, n_search=n_search, argnums=argnums,
                chunk_size=chunk_size, return_split=return_split,
            )  # fmt: skip
            return each_output(f, one, args, argnums, baselines)
        _, profile = search(*args, baselines=baselines)
        alpha = split_point(profile.alphas, profile.outputs, q)
        left = part(torch.zeros_like(alpha), alpha)(*args, baselines=baselines)
        right = part(alpha, torch.ones_like(alpha))(*args, baselines=baselines)
        return (left, right, alpha) if return_split else (left, right)

    return attribution_fn(fn, f)


def split_point(alphas: torch.Tensor, outputs: torch.Tensor, fraction: float) -> torch.Tensor:
    """alpha* per example from the outputs (n, B) on the grid alphas (n,), 0 and 1 included
    (NOTE: [Split point of Split IG])."""
    if outputs.ndim != 2:
        raise ValueError(
            "split_integrated_gradients needs one output per example (a many-outputs target would need "
            f"one split per output); the model function gave outputs of shape {tuple(outputs.shape[1:])} per step"
        )
    out = outputs.to(torch.promote_types(outputs.dtype, torch.float32))
    start, end = out[0], out[-1]
    change = end - start
    eps = torch.finfo(out.dtype).eps
    flat = change.abs() <= 64 * eps * (1 + start.abs() + end.abs())
    progress = (out - start) / torch.where(flat, torch.ones_like(change), change)  # (n, B)
    reached = progress >= fraction
    reached[-1] = True  # p(1) = 1 >= fraction; rounding cannot move the crossing past the end
    k = torch.where(flat, torch.full_like(change, len(alphas) - 1, dtype=torch.long), reached.long().argmax(0).clamp(min=1))
    a = alphas.to(out.dtype)
    p_lo, p_hi = progress.gather(0, (k - 1)[None])[0], progress.gather(0, k[None])[0]
    a_lo, a_hi = a[k - 1], a[k]
    step = (p_hi - p_lo).clamp(min=torch.finfo(out.dtype).tiny)
    alpha = a_lo + ((fraction - p_lo) / step).clamp(0, 1) * (a_hi - a_lo)
    return torch.where(flat, torch.ones_like(alpha), alpha).to(alphas.dtype)
