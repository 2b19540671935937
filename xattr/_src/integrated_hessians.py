"""Integrated Hessians: pairwise feature interactions as integrated gradients of integrated gradients.

NOTE: [Integrated Hessians on a product grid]
Janizek, Sturmfels and Lee (JMLR 2021) define the interaction of features i and j as IG_i of the
function z -> IG_j(z), both with the baseline x' and the straight path. With d = x - x' and
p(s) = x' + s d, differentiating IG_j(z) = (z_j - x'_j) int_0^1 df/dx_j(x' + b (z - x')) db in
z_i at z = p(a) gives
  Gamma_ij = d_i d_j int int a b d2f/dx_i dx_j(p(a b)) da db  +  [i = j] d_i int int df/dx_i(p(a b)) da db.
Every double integral takes the integrand at the product s = a b only. xattr applies the rule
``method`` with n = ``n_steps`` nodes a_k, weights w_k to both integrals (the product grid),
which is what IG of IG computes with that rule, so the composition
``vmap(jacrev(per-example IG))`` at the outer nodes gives the same numbers (the tests check it).
The grid is symmetric, a_k a_l = a_l a_k, so its n^2 nodes are n (n + 1) / 2 distinct points
s = a_k a_l (k <= l) with weights c = w_k w_l, doubled for k < l: the same sum at half the cost.

At each point the Hessian enters only as d_j times a column, H(p(s)) (d * m) for a direction m
(one unit vector per feature, or one 0/1 mask per group of features). With the per-row
gradient weighted by c in the VJP's cotangent, one forward-mode derivative of that gradient
with the tangent s (d * m) gives c s H (d * m) for every row at once (forward-over-reverse: one
Hessian-vector product costs about one extra forward and backward pass), vmapped over the
directions; its primal is c times the gradient, which gives the diagonal's first-order term.
Summed over the points:
  Gamma[i, g] = d_i sum_s c s (H(p(s)) (d * m_g))_i  +  [diagonal] d_i sum_s c df/dx_i(p(s)),
and for groups the rows are summed over each group too. Cost: n (n + 1) / 2 points times one
Hessian-vector product per direction (D, or the number of groups G) per example.

Properties (exact integrals): sum_j Gamma_ij = IG_i(x), since sum_j IG_j(z) = f(z) - f(x');
so sum_ij Gamma_ij = f(x) - f(x'); Gamma is symmetric; Gamma_ij = 0 (i != j) for a model
additive in x_i and x_j. With the quadrature these hold up to its error (symmetry up to
rounding: H_ij and H_ji come from different passes and are not averaged).

NOTE: [Piecewise-linear models have no interactions]
A ReLU network is piecewise linear: its second derivatives are zero almost everywhere, so every
quadrature node sees H = 0, the off-diagonal Gamma_ij are 0 and the diagonal is
d_i int_0^1 df/dx_i(p(s)) (-ln s) ds, which is not IG_i (row sums fail). The interactions live
in the kinks, which no quadrature samples. The paper replaces ReLU by Softplus for this reason;
``xattr.softened(model)`` does so without changing the model (and max-pools to LogSumExp
pools). `integrated_hessians` warns when it finds ReLU-like modules or max-pools in the model
(functional ``F.relu`` calls cannot be seen from the outside: then nothing warns).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.func import jvp, vmap

from . import tree as T
from .checks import _modules, baselines_tuple, check_finite, check_float_inputs, check_model_fn, warn_if_training
from .gradients import NO_PATH, NoGradientPathWarning, _rows, attribution_fn, is_multi_output, vjp_rows
from .nesting import running_model
from .paths import quadrature
from .progress import progress
from .rule_limits import eager_compiled
from .softened import Softened
from .output_copies import each_output
from .warn import warn

# module types whose second derivative is zero almost everywhere
_KINKED = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Hardtanh, nn.Threshold,
           nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
           nn.AdaptiveMaxPool3d)  # fmt: skip
_SOFTENED = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
             nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)  # fmt: skip  # what xattr.softened smooths


def integrated_hessians(
    f: Callable,
    *,
    baselines: Any = 0.0,
    n_steps: int = 16,
    method: str = "gausslegendre",
    argnums: int = 0,
    features: torch.Tensor | None = None,
    chunk_size: int | None = None,
    show_progress: bool = False,
) -> Callable:
    """Integrated Hessians: the interaction Gamma_ij of every pair of input features.

    Janizek, Sturmfels and Lee 2021, "Explaining Explanations: Axiomatic Feature Interactions
    for Deep Networks": Gamma_ij is integrated gradients (feature i) of the integrated gradients
    of feature j, with the same baseline. With d = x - b and p(s) = b + s d,

      Gamma_ij = d_i d_j int_0^1 int_0^1 a c d2f/dx_i dx_j(p(a c)) da dc
                 + [i = j] d_i int_0^1 int_0^1 df/dx_i(p(a c)) da dc,

    both integrals by the rule ``method`` with ``n_steps`` nodes on each axis (the product
    grid, n (n + 1) / 2 distinct points; NOTE: [Integrated Hessians on a product grid] in
    ``xattr/_src/integrated_hessians.py``). Row sums are integrated gradients,
    ``Gamma.sum(-1) = IG`` and so ``Gamma.sum((-2, -1)) = f(x) - f(b)``, up to quadrature error;
    Gamma is symmetric; a model additive in x_i and x_j has Gamma_ij = 0.

    Needs a model with non-zero second derivatives: for ReLU networks and max-pools it warns
    (NOTE: [Piecewise-linear models have no interactions]); attribute ``xattr.softened(model)``.

    Args:
      f: model function with one output per example (``xattr.target``), or K outputs of every
        example (``xattr.outputs``): each output gets its own interactions, computed in one call
        on K copies of the batch (K times the work of one output).
      baselines: number, tensor broadcastable to the input; also a call keyword.
      n_steps, method: the quadrature on each axis (riemann_left/right/middle/trapezoid,
        gausslegendre). Cost: n_steps (n_steps + 1) / 2 points per example.
      argnums: the attributed positional argument (one tensor); others pass through.
      features: None for every pair of features, or an integer tensor of the input's per-example
        shape (or broadcastable to it) giving each feature a group id 0..G-1, or a negative id
        to leave it out: then Gamma[b, g, h] is the sum of Gamma_ij over i in group g and j in
        group h (G Hessian-vector products per point instead of D). A subset of features: its
        own id for each chosen feature, -1 elsewhere.
      chunk_size: most model rows times directions evaluated at once (a Hessian-vector product
        of R rows counts R): bounds the memory of the points x directions expansion.
      show_progress: a progress bar over the chunks (needs tqdm).

    Returns:
      ``fn(*args, baselines=...)`` giving Gamma of shape ``(B, *x.shape[1:], *x.shape[1:])``
      (``Gamma[b, i, j]`` for feature multi-indices i and j, e.g. ``Gamma[b, c, h, w, c2, h2,
      w2]`` for images; ``.reshape(B, D, D)`` flattens it), or ``(B, G, G)`` with ``features``;
      a many-outputs target adds a K axis after the batch: ``(B, K, *x.shape[1:], *x.shape[1:])``
      or ``(B, K, G, G)``.

    Example:
      >>> gamma = xattr.integrated_hessians(xattr.target(xattr.softened(model), 0))(x)  # (B, D, D)
    """
    check_model_fn(f, "integrated_hessians")
    quadrature(method, n_steps)  # checks method and n_steps now
    T.checked_chunk_size(chunk_size)
    if isinstance(argnums, bool) or not isinstance(argnums, int):
        raise TypeError(
            f"integrated_hessians attributes one tensor argument: argnums must be an int, got {argnums!r} "
            "(for interactions across several inputs, concatenate them into one tensor inside the model function)"
        )
    if features is not None:
        if not isinstance(features, torch.Tensor) or features.is_floating_point() or features.is_complex() \
                or features.dtype == torch.bool:  # fmt: skip
            raise TypeError(
                "features must be an integer tensor of group ids (one per feature, negative: left out), got "
                f"{type(features).__name__ if not isinstance(features, torch.Tensor) else features.dtype}"
            )
        if features.numel() == 0 or int(features.max()) < 0:
            raise ValueError("features puts no feature in any group: give ids 0..G-1 to the features to keep")
    s_np, c_np = points(method, n_steps)

    def fn(*args, baselines=baselines):
        if not 0 <= argnums < len(args) and not -len(args) <= argnums < 0:
            raise ValueError(f"argnums={argnums} but the model function got {len(args)} positional argument(s)")
        x = args[argnums]
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"integrated_hessians attributes one tensor, got {type(x).__name__}: concatenate a tree of "
                "inputs into one tensor inside the model function"
            )
        check_float_inputs((x,), "integrated_hessians")
        if is_multi_output(f):  # NOTE: [K outputs as K copies of the batch] in output_copies.py
            one = lambda g: integrated_hessians(  # noqa: E731
                g, n_steps=n_steps, method=method, argnums=argnums, features=features, chunk_size=chunk_size,
                show_progress=show_progress,
            )  # fmt: skip
            return each_output(f, one, args, argnums, baselines)
        warn_if_training(f)
        _warn_if_kinked(f)
        with T.batch_scope(x.shape[0]):
            return _interactions(f, args, argnums % len(args), x, baselines, s_np, c_np, features, chunk_size, show_progress)

    return attribution_fn(fn, f)


def points(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct points s = a_k a_l (k <= l) of the product grid and their weights w_k w_l,
    doubled for k < l (NOTE: [Integrated Hessians on a product grid])."""
    a, w = quadrature(method, n_steps)
    k, l = np.triu_indices(n_steps)
    return a[k] * a[l], w[k] * w[l] * np.where(k < l, 2.0, 1.0)


def _directions(features: torch.Tensor | None, shape: tuple, x: torch.Tensor) -> torch.Tensor:
    """(G, *shape) 0/1 masks: one unit vector per feature, or one mask per group."""
    if features is None:
        n = int(np.prod(shape))
        return torch.eye(n, dtype=x.dtype, device=x.device).reshape((n,) + shape)
    ids = features.to(x.device)
    if ids.ndim == len(shape) + 1 and ids.shape[0] == 1:
        ids = ids[0]
    try:
        ids = ids.expand(shape)
    except RuntimeError:
        raise ValueError(
            f"features of shape {tuple(features.shape)} does not broadcast to one example's shape {shape}: give one "
            "group id per feature (the same for every example)"
        ) from None
    groups = torch.arange(int(ids.max()) + 1, device=x.device).reshape((-1,) + (1,) * len(shape))
    masks = (ids[None] == groups).to(x.dtype)
    empty = (masks.reshape(masks.shape[0], -1).sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"features leaves group(s) {empty} empty: number the groups 0..G-1 without gaps")
    return masks


def _interactions(f, args, num, x, baselines, s_np, c_np, features, chunk_size, show_progress):
    batch, shape = x.shape[0], tuple(x.shape[1:])
    base = baselines_tuple((x,), baselines, False)[0]
    d = x - base
    masks = _directions(features, shape, x)  # (G, *shape)
    n_dir = masks.shape[0]
    s_all = torch.as_tensor(s_np, dtype=x.dtype, device=x.device)
    c_all = torch.as_tensor(c_np, dtype=x.dtype, device=x.device)
    eager = torch._C._functorch.maybe_current_level() is None and not torch.compiler.is_compiling()
    hvps = _eager_hvps if eager else _func_hvps  # NOTE: [Two Hessian-vector product backends]
    spans = T.chunks(len(s_np), batch, chunk_size)
    work = [(a, b, lo) for a, b in spans for lo in range(0, n_dir, _per(chunk_size, (b - a) * batch, n_dir))]
    bar = progress(show_progress, total=len(work), desc="integrated_hessians", unit="chunk")
    hess = []  # per span: (B, G, *shape), sum_s c s H (d * m_g)
    first = torch.zeros_like(x)  # sum_s c grad f
    for start, stop in spans:
        m, lo_all = stop - start, [lo for a, _, lo in work if a == start]
        s, c = s_all[start:stop], c_all[start:stop]
        scaled = s.reshape((-1,) + (1,) * x.ndim) * d  # (m, B, *shape): the points' offsets from the baseline
        rows = (base + scaled).reshape((m * batch,) + shape)
        rest = tuple(a if i == num else T.fold(a, m, batch) for i, a in enumerate(args))
        per = _per(chunk_size, m * batch, n_dir)

        def tangents(lo, scaled=scaled, m=m, per=per):  # s (d * m_g) at each row, directions lo..lo+per
            t = scaled[None] * masks[lo : lo + per, None, None]
            return t.reshape((t.shape[0], m * batch) + shape)

        grads, parts = hvps(f, rest, num, rows, c.repeat_interleave(batch), tangents, lo_all, bar)
        first += grads.reshape((m, batch) + shape).sum(0)
        hess.append(parts.reshape((n_dir, m, batch) + shape).sum(1).movedim(0, 1))
    if bar is not None:
        bar.close()
    n_feat = int(np.prod(shape))  # not -1: a reshape cannot infer it from an empty batch
    flat_d = d.reshape(batch, n_feat)
    hess = sum(hess[1:], hess[0]).reshape(batch, n_dir, n_feat) * flat_d[:, None, :]  # (B, G, D): d_i (H (d * m_g))_i
    diag = first.reshape(batch, n_feat) * flat_d  # d_i sum_s c df/dx_i
    if features is None:  # Gamma[b, i, j] = hess[b, j, i] + [i = j] diag[b, i]
        gamma = hess.transpose(1, 2) + torch.diag_embed(diag)
        return gamma.reshape((batch,) + shape + shape)
    flat_m = masks.reshape(n_dir, -1)
    gamma = torch.einsum("bgi,hi->bhg", hess, flat_m)  # rows summed over each group
    return gamma + torch.diag_embed(diag @ flat_m.T)


# NOTE: [Two Hessian-vector product backends]
# Inside a torch.func transform (or torch.compile) the Hessian-vector products are forward-over-
# reverse, torch.func.jvp of the per-row gradient, vmapped over the directions in groups bounded
# by chunk_size: the interactions are then differentiable and vmappable like any attribution.
# At top level they are reverse-over-reverse with torch.autograd on a detached copy of the rows:
# one forward and one backward with create_graph, then one backward per direction through that
# graph, one after another (H is symmetric, so the VJP of the gradient is the HVP). Measured on
# CPU (one thread, a 2-hidden-layer Softplus MLP, B = 8, float32): 44 ms against 74 ms (vmapped
# jvp) at D = 64, n_steps = 16, and 195 ms against 818 ms at n_steps = 32; the vmapped backward
# of all directions at once is memory-bound, as for the K outputs (NOTE: [K backward passes]).
# Autograd cannot differentiate a torch.compile'd graph twice ("aot_autograd does not currently
# support double backward"), so the top-level path runs compiled code as its Python source: the
# model's forward under `eager_compiled` (a compiled model), and the whole path outside dynamo
# (`torch.compiler.disable`: a compiled attribution function runs it eagerly past a graph break,
# where dynamo would otherwise compile the model's forward on its own). Same numbers, eager speed.


def _func_hvps(f, rest, num, rows, weights, tangents, starts, bar):
    def gradient(r):
        call = rest[:num] + (r,) + rest[num + 1 :]
        return vjp_rows(f, call, (num,), weights=weights, method="integrated_hessians")[1][0]

    grads, parts = None, []
    for lo in starts:
        primal, out = vmap(lambda t: jvp(gradient, (rows,), (t,)))(tangents(lo))
        grads = primal[0] if grads is None else grads
        parts.append(out)
        if bar is not None:
            bar.update(1)
    return grads, torch.cat(parts)


@torch.compiler.disable  # NOTE: [Two Hessian-vector product backends]
def _eager_hvps(f, rest, num, rows, weights, tangents, starts, bar):
    r = rows.detach().requires_grad_()
    with torch.enable_grad(), running_model(), eager_compiled():  # NOTE: [Attributions inside a model's forward]
        out = _rows(f(*(rest[:num] + (r,) + rest[num + 1 :])), False)
        if out.ndim != 1:
            raise ValueError(
                "integrated_hessians needs one output per example, but the model function returned one number for "
                "the whole batch: return the per-example values (B,) instead of their sum"
            )
        check_finite(out)
        if not out.requires_grad:
            warn(NO_PATH, NoGradientPathWarning)
            grads = torch.zeros_like(r)
        else:
            (grads,) = torch.autograd.grad(out, r, weights.to(out.dtype), create_graph=True)
    parts = []
    for lo in starts:
        t = tangents(lo)
        if not grads.requires_grad:  # the gradient does not depend on the input: H = 0
            parts.append(torch.zeros_like(t))
        else:
            parts.append(torch.stack([_hvp(grads, r, v) for v in t]))
        if bar is not None:
            bar.update(1)
    return grads.detach(), torch.cat(parts)


def _hvp(grads: torch.Tensor, r: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    (h,) = torch.autograd.grad(grads, r, v, retain_graph=True, allow_unused=True)
    return torch.zeros_like(r) if h is None else h


def _per(chunk_size: int | None, rows: int, n_dir: int) -> int:
    """Directions per vectorised call: chunk_size counts rows x directions."""
    return n_dir if chunk_size is None else max(1, chunk_size // max(1, rows))


def _warn_if_kinked(f: Callable) -> None:
    found = set()
    for model in _modules(f):
        soft = [m for m in model.modules() if isinstance(m, Softened)]
        inside = {id(sub) for s in soft for sub in s.modules()}
        for sub in model.modules():
            if isinstance(sub, _KINKED) and not (id(sub) in inside and isinstance(sub, _SOFTENED)):
                found.add(type(sub).__name__)
    if found:
        warn(
            f"integrated_hessians: the model contains {sorted(found)}, whose second derivatives are zero almost "
            "everywhere: the interactions between features come out as zero and the row sums miss integrated "
            "gradients (NOTE: [Piecewise-linear models have no interactions]). Attribute a smooth version instead: "
            "xattr.softened(model) runs it with Softplus for ReLU and LogSumExp pools for max-pools",
            UserWarning,
        )
