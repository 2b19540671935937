"""Layer methods along the *input* path: conductance and internal influence.

Shared arguments (both methods; see also xattr/_src/layer_methods.py):
  split: a `Split` from ``xattr.at_layer(f, layer, ...)``; ``f`` chooses the output
     (``xattr.target``; ``xattr.outputs`` adds a K axis after the batch axis).
  argnums: the positional argument(s) of f walked from ``baselines`` to the input; the others
     pass through (tiled with the rows when their dim 0 is the batch size).
  baselines: the path's start in *input* space (number, tensor broadcastable to the input, or
     a tree like ``args[argnums]``); also a call keyword ``fn(*args, baselines=...)``.
  n_steps, method: the quadrature (NOTE: [Quadrature rules] in paths.py).
  chunk_size: most model rows (examples x path points) per forward/backward pass.
Attributions have the structure and shapes of the layer's activation h = ``split.act(*args)``.

NOTE: [Layer gradients along the input path]
Both methods need, at points ``x_i = b + alpha_i (x - b)`` of the straight *input* path, the
layer's value ``h(x_i)`` and the layer gradient ``dF/dh`` there. `layer_path` folds the points
into the batch axis (NOTE: [Folding copies into the batch axis]) and runs `layer_vjp_rows` on
each chunk: one forward and one backward pass per chunk, as in Captum. Quadrature weights ride
in the backward's cotangent. Conductance pairs each point with the next, so the last point of a
chunk is carried into the next one instead of being evaluated twice (Captum's chunks overlap by
one point); the sum is the same, so results do not depend on ``chunk_size``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from . import tree as T
from .checks import baselines_like, check_float_inputs, warn_if_training
from .gradients import attribution_fn
from .layer_layout import check_rows
from .layer_grads import layer_vjp_rows
from .layers import Split
from .methods import completeness_gap
from .paths import ChunkSum, _rows_args, _walk, quadrature, real_dtype, straight_line


def layer_path(
    split: Split, args: tuple, nums: tuple, as_tuple: bool, baselines, alphas: np.ndarray, weights: np.ndarray | None,
    chunk_size: int | None, method: str,
) -> Iterator[tuple[Any, Any]]:
    """Yields ``(h, dF/dh)`` per chunk of input-path points, leaves (c, B, [K], ...), in path order.

    ``weights`` (n,) scale each point's gradient. See NOTE: [Layer gradients along the input path].
    """
    selected, _ = T.split_args(args, nums)
    check_float_inputs(selected, method)
    base = baselines_like(selected if as_tuple else selected[0], baselines)
    batch, xs = T.batch_size(selected), T.leaves(selected)
    # each leaf's path in its own dtype (NOTE: [Each leaf's path in its own dtype] in paths.py); the
    # weights scale dF/dh, whose dtype is the layer's: the cotangent takes the output's dtype
    wdtype = real_dtype(xs, torch.float32)
    weight = None if weights is None else torch.as_tensor(weights, dtype=wdtype, device=xs[0].device)
    spans, trees = list(T.chunks(len(alphas), batch, chunk_size)), base if as_tuple else (base,)
    points = _walk(straight_line, selected, trees, alphas)[0] if len(spans) == 1 else None
    for start, stop in spans:
        c = stop - start
        here = points if points is not None else _walk(straight_line, selected, trees, alphas[start:stop])[0]
        at = start if points is not None else 0  # NOTE: [Path points per chunk] in paths.py
        rows = T.fold_rows(T.tree_map(lambda p: p[at : at + c], here))
        w = None if weight is None else weight[start:stop].repeat_interleave(batch)
        call = _rows_args(args, nums, rows, c, batch)
        h, _, g = layer_vjp_rows(split, call, weights=w, chunk_size=chunk_size)
        check_rows(split, h, call, c * batch, method)  # NOTE: [Batch-first layers]
        yield T.unfold(h, c), T.unfold(g, c)


def _with_k(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Inserts the K axis into v (c, B, ...) when g (c, B, K, ...) carries one."""
    return v.unsqueeze(2) if g.ndim == v.ndim + 1 else v


def _public(fn: Callable, split: Split, nums: tuple) -> Callable:
    """Warns on train mode, records the caller's batch (per-example targets), detaches."""

    def outer(*args, **kwargs):
        warn_if_training(split)
        with T.batch_scope(T.batch_size(T.split_args(args, nums)[0])):
            return fn(*args, **kwargs)

    return attribution_fn(outer, split)


def conductance(
    split: Split,
    *,
    argnums: int | Sequence[int] = 0,
    baselines: Any = 0.0,
    n_steps: int = 50,
    method: str = "gausslegendre",
    chunk_size: int | None = None,
    return_delta: bool = False,
) -> Callable:
    """Layer conductance: the flow of ``F(x) - F(b)`` through each unit of a layer.

    Dhamdhere, Sundararajan & Yan 2018, "How Important Is a Neuron?". The conductance of unit j
    is the path integral, along the straight *input* path ``x(a) = b + a (x - b)``, of
    ``dF/dh_j (x(a)) * d h_j(x(a)) / da``. Computed with Captum's discretisation (its numbers
    exactly): the ``n_steps + 1`` quadrature nodes ``a_0 < ... < a_n`` of ``method`` and

        cond_j = sum_{i<n} dF/dh_j(x(a_i)) * (h_j(x(a_{i+1})) - h_j(x(a_i))),

    a left Riemann-Stieltjes sum in the layer's own coordinates. The quadrature weights are not
    used, only the nodes; with ``riemann_trapezoid`` they run from 0 to 1 and the sum converges
    to the integral, with the other rules it covers ``[a_0, a_n]``.

    Axioms: completeness over the layer, ``sum_j cond_j = F(x) - F(b)`` in the limit of many
    steps (exact for ``riemann_trapezoid`` when F is affine in h, since then dF/dh is constant);
    a unit that F does not depend on gets zero.

    Args: the shared ones (module docstring), and
      return_delta: also return ``sum(cond) - (F(x) - F(b))`` per example, (B,) or (B, K).

    Returns:
      ``fn(*args, baselines=...)`` giving a tree like ``split.act(*args)`` (a K axis after the
      batch for ``xattr.outputs``), or ``(attributions, delta)``.

    Example:
      >>> split = xattr.at_layer(xattr.target(model, 3), model.conv2)
      >>> cond, delta = xattr.conductance(split, n_steps=50, return_delta=True)(x)   # like h
    """
    nums, as_tuple = T.normalize_argnums(argnums)
    alphas, _ = quadrature(method, n_steps + 1)

    def fn(*args, baselines=baselines):
        total, last = ChunkSum(), None  # NOTE: [Sums over chunks] in paths.py
        path = layer_path(split, args, nums, as_tuple, baselines, alphas, None, chunk_size, "conductance")
        for h, g in path:
            if last is not None:  # NOTE: [Layer gradients along the input path]: carry the last point
                h, g = (T.tree_map(lambda p, t: torch.cat([p, t]), prev, now) for prev, now in zip(last, (h, g)))
            total.add(T.tree_map(lambda gi, hi: (gi[:-1] * _with_k(hi[1:] - hi[:-1], gi)).sum(0), g, h))
            last = T.tree_map(lambda t: t[-1:], h), T.tree_map(lambda t: t[-1:], g)
        total = total.value()
        if not return_delta:
            return total
        return total, completeness_gap(split.model, args, argnums, total, baselines)

    return _public(fn, split, nums)


def internal_influence(
    split: Split,
    *,
    argnums: int | Sequence[int] = 0,
    baselines: Any = 0.0,
    n_steps: int = 50,
    method: str = "gausslegendre",
    chunk_size: int | None = None,
) -> Callable:
    """Internal influence: the layer gradient integrated along the straight input path.

    Leino et al. 2018, "Influence-Directed Explanations for Deep Convolutional Networks":

        II_j = int_0^1 dF/dh_j (b + a (x - b)) da  ~=  sum_i w_i dF/dh_j(x(a_i)),

    with (a_i, w_i) the quadrature of ``method`` (Captum's InternalInfluence; no multiplication
    by activations, so it is not complete). Axioms: linearity in F; zero for units F ignores.
    With ``riemann_trapezoid`` xattr's weights are exact: Captum's result times n/(n-1).

    Args: the shared ones (module docstring).

    Returns:
      ``fn(*args, baselines=...)`` giving a tree like ``split.act(*args)`` (K axis for
      ``xattr.outputs``).

    Example:
      >>> split = xattr.at_layer(xattr.target(model, 3), model.conv2)
      >>> ii = xattr.internal_influence(split, n_steps=32)(x)                 # like h
    """
    nums, as_tuple = T.normalize_argnums(argnums)
    alphas, weights = quadrature(method, n_steps)

    def fn(*args, baselines=baselines):
        total = ChunkSum()  # NOTE: [Sums over chunks] in paths.py
        path = layer_path(split, args, nums, as_tuple, baselines, alphas, weights, chunk_size, "internal_influence")
        for _, g in path:
            total.add(T.tree_map(lambda t: t.sum(0), g))
        return total.value()

    return _public(fn, split, nums)
