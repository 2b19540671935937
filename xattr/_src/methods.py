"""Gradient attribution methods, each a short composition of the primitives.

Shared arguments (every method here):
  f: model function with one output per example (``xattr.target`` chooses it), or a
     many-outputs target (``xattr.outputs``), which adds a K axis after the batch axis.
  argnums: attributed positional argument(s) of f; the others pass through untouched (those
     with the batch size in dim 0 are tiled with the inputs, NOTE: [Folding copies into the
     batch axis]).
  chunk_size: most model rows per forward/backward call (the one memory knob).
Attributions have the structure and shapes of ``args[argnums]``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import torch

from . import tree as T
from .checks import baselines_tuple, check_float_inputs
from .gradients import attribution_fn, model_calls, unwrapped_grad, vjp_rows
from .paths import path_integral
from .noise_tunnel import shap_samples, smooth


def saliency(f: Callable, *, argnums: int | Sequence[int] = 0, abs: bool = True, chunk_size: int | None = None) -> Callable:
    """Saliency: the gradient of the output with respect to the input, ``|df/dx|`` by default.

    Simonyan et al. 2013, "Deep Inside Convolutional Networks".

    Example:
      >>> xattr.saliency(xattr.target(model, 3))(x).shape == x.shape
    """
    g = unwrapped_grad(f, argnums=argnums, chunk_size=chunk_size)  # one wrapper: NOTE: [Gradient call overhead]
    return _wrap(lambda *args: T.tree_map(torch.abs, g(*args)) if abs else g(*args), f)


def input_x_gradient(f: Callable, *, argnums: int | Sequence[int] = 0, chunk_size: int | None = None) -> Callable:
    """Input x gradient: ``x * df/dx``. Shrikumar et al. 2016; exact (complete) for linear f with zero baseline.

    Example:
      >>> ixg = xattr.input_x_gradient(xattr.target(model, 3))(x)   # like x
    """
    g = unwrapped_grad(f, argnums=argnums, chunk_size=chunk_size)
    nums, as_tuple = T.normalize_argnums(argnums)

    def fn(*args):
        selected = T.split_args(args, nums)[0]
        grads = g(*args)
        return T.tree_map(lambda gr, x: gr * T.expand_like(x, gr), grads, selected if as_tuple else selected[0])

    return _wrap(fn, f)


def completeness_gap(f: Callable, args: tuple, argnums: int | Sequence[int], attributions, baselines) -> torch.Tensor:
    """``sum(attributions) - (f(x) - f(baseline))`` per example: (B,), or (B, K) for K outputs.

    For a model function returning one number for the whole batch, one number (0-d).

    The convergence delta of integrated gradients (and of any method satisfying completeness).

    Example:
      >>> f = xattr.target(model, 3)
      >>> attr = xattr.integrated_gradients(f)(x)
      >>> xattr.completeness_gap(f, (x,), 0, attr, 0.0)        # (B,): near 0 when complete
    """
    nums, as_tuple = T.normalize_argnums(argnums)
    selected, rebuild = T.split_args(args, nums)
    base = baselines_tuple(selected, baselines, as_tuple)
    batch = T.batch_size(selected)
    both = T.tree_map(lambda x, b: torch.cat([x, b]), selected, base)
    call = tuple(a if i in nums else T.fold(a, 2, batch) for i, a in enumerate(args))
    with model_calls(), T.batch_scope(batch):  # differentiable inside grad transforms (NOTE: [Detached results])
        out = _outputs(f, T.split_args(call, nums)[1](both))
        if out.ndim == 0:  # one number per call ("aggregate" output): evaluate x and b apart
            total = sum(a.sum() for a in T.leaves(attributions))
            return total - (_outputs(f, args) - _outputs(f, rebuild(base)))
    return _gap(attributions if as_tuple else (attributions,), out[:batch], out[batch:])


def _outputs(f: Callable, args: tuple) -> torch.Tensor:
    """f's rows (R,), or (R, K) for many outputs (a trailing axis of one is dropped)."""
    out = f(*args)
    if out.ndim == 2 and out.shape[1] == 1 and not getattr(f, "multi_output", False):
        out = out[:, 0]
    return out


def _gap(attributions: tuple, end: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Each row's attributions summed over features, minus (end - start): (R,) or (R, K)."""
    k_axis = end.ndim - 1  # 1 for many outputs
    # the feature count spelled out: reshape cannot infer a -1 from an empty batch's 0 elements
    lead = 1 + k_axis
    total = sum(a.reshape(a.shape[:lead] + (math.prod(a.shape[lead:]),)).sum(-1) for a in T.leaves(attributions))
    return total - (end - start)


def integrated_gradients(
    f: Callable,
    *,
    argnums: int | Sequence[int] = 0,
    baselines: Any = 0.0,
    n_steps: int = 50,
    method: str = "gausslegendre",
    chunk_size: int | None = None,
    return_delta: bool = False,
) -> Callable:
    """Integrated gradients: ``(x - b) * integral_0^1 df(b + a (x - b))/dx da``.

    Sundararajan et al. 2017, "Axiomatic Attribution for Deep Networks". Satisfies completeness
    (``sum = f(x) - f(b)`` up to quadrature error), linearity, symmetry preservation, dummy and
    implementation invariance.

    Args (beyond the shared ones):
      baselines: number, tensor broadcastable to the input, or tree like it; also a call keyword.
      n_steps, method: quadrature (riemann_left/right/middle/trapezoid, gausslegendre).
      return_delta: also return the completeness gap (B,) (``xattr.completeness_gap``).

    Example:
      >>> attr, delta = xattr.integrated_gradients(xattr.target(model, 3), return_delta=True)(x)
    """
    integral = path_integral(
        f, argnums=argnums, baselines=baselines, n_steps=n_steps, method=method, chunk_size=chunk_size
    )

    nums = T.normalize_argnums(argnums)[0]

    def fn(*args, baselines=baselines):
        check_float_inputs(T.split_args(args, nums)[0], "integrated_gradients")  # named, not path_integral
        attr = integral(*args, baselines=baselines)
        return (attr, completeness_gap(f, args, argnums, attr, baselines)) if return_delta else attr

    return _wrap(fn, f)


def gradient_shap(
    f: Callable,
    *,
    baselines: Any,
    n_samples: int = 5,
    stdevs: float | Sequence[float] = 0.0,
    argnums: int | Sequence[int] = 0,
    generator=None,
    chunk_size: int | None = None,
    multiply_by_inputs: bool = True,
    return_delta: bool = False,
    return_std_error: bool = False,
) -> Callable:
    """Gradient SHAP (expected gradients): ``E[(x + e - b) * df(b + a (x + e - b))/dx]``.

    The expectation is over baselines b drawn from the rows of ``baselines`` (N, ...), path
    positions a ~ U(0, 1) and noise e ~ N(0, stdevs^2), with ``n_samples`` draws per example
    (Lundberg & Lee 2017; Erion et al. 2021). Completeness holds in expectation.

    Args (beyond the shared ones):
      baselines: the baseline distribution, a tensor (N, ...) or a tree of them sharing N (a
        number is a one-row distribution); xattr draws whole rows, one per sample.
      n_samples: draws per example. stdevs: input noise, one number or one per input tensor.
      generator: int seed or torch.Generator (NOTE: [Explicit randomness]).
      multiply_by_inputs: False drops the ``(x + e - b)`` factor: the expected gradient at the
        sampled points, ``E[df(b + a (x + e - b))/dx]`` ("local" attribution; Captum's
        ``multiply_by_inputs=False``).
      return_delta: also return each sample's convergence delta, ``sum(a_s) - (f(x + e_s) -
        f(b_s))`` for the sample's attribution a_s (with or without the factor, as chosen): shape
        (B * n_samples,), or (B * n_samples, K), example-major (example i's samples at rows
        i * n_samples ... (i + 1) * n_samples - 1), which is Captum's layout. Costs one extra
        forward pass at the noisy inputs and one at the baselines per sample.
      return_std_error: also return each element's Monte Carlo standard error, ``sqrt(s^2 / S)``
        with s^2 the unbiased variance of the S per-sample attributions, from the same draws
        (NOTE: [Standard errors of Monte Carlo attributions] in std_error.py); n_samples >= 2.

    Returns:
      ``fn(*args)`` giving a tree like ``args[argnums]``, or ``(attributions, delta)``,
      ``(attributions, std_error)`` or ``(attributions, delta, std_error)``: the standard error,
      a tree like the attributions, always last.

    Example:
      >>> gs = xattr.gradient_shap(xattr.target(model, 3), baselines=x_train[:50], n_samples=25, generator=0)
    """
    nums, as_tuple = T.normalize_argnums(argnums)

    def at_alpha(*args, baselines, alphas):  # one sample per row: its attribution (and delta)
        selected, rebuild = T.split_args(args, nums)
        deltas = T.tree_map(lambda x, b: x - b, selected, baselines)
        points = T.tree_map(lambda d, b: torch.mul(alphas.reshape((-1,) + (1,) * (d.ndim - 1)), d).add_(b), deltas, baselines)
        _, grads = vjp_rows(f, rebuild(points), nums, method="gradient_shap")  # b + a (x - b), as before, bit for bit
        attr = grads
        if multiply_by_inputs:
            attr = T.tree_map(lambda g, d: g * T.expand_like(d, g), grads, deltas)
        if not return_delta:
            return attr
        return attr, _gap(attr, _outputs(f, rebuild(selected)), _outputs(f, rebuild(baselines)))

    at_alpha.__wrapped__ = f  # lets monte_carlo find the model for its train-mode warning

    sample = shap_samples(
        at_alpha, argnums=argnums, baselines=baselines, n_samples=n_samples, stdevs=stdevs,
        generator=generator, chunk_size=chunk_size, return_delta=return_delta,
        return_std_error=return_std_error,
    )  # fmt: skip

    def fn(*args):
        out = sample(*args)
        parts = out if return_delta or return_std_error else (out,)  # attr[, delta][, std error]
        parts = tuple(p if as_tuple or (return_delta and i == 1) else p[0] for i, p in enumerate(parts))
        return parts if len(parts) > 1 else parts[0]

    return _wrap(fn, f)


_wrap = attribution_fn


smoothgrad = functools.partial(smooth, reduce="mean")
smoothgrad.__doc__ = """SmoothGrad (Smilkov et al. 2017): `smooth` with reduce='mean'.

    Example:
      >>> sg = xattr.smoothgrad(xattr.saliency(xattr.target(model, 3)), stdevs=0.1, n_samples=25, generator=0)(x)
"""
smoothgrad_sq = functools.partial(smooth, reduce="sq_mean")
smoothgrad_sq.__doc__ = """SmoothGrad-squared (Hooker et al. 2019): `smooth` with reduce='sq_mean'.

    Example:
      >>> sg2 = xattr.smoothgrad_sq(xattr.integrated_gradients(xattr.target(model, 3)), stdevs=0.1, generator=0)(x)
"""
vargrad = functools.partial(smooth, reduce="var")
vargrad.__doc__ = """VarGrad (Adebayo et al. 2018): `smooth` with reduce='var'.

    Example:
      >>> vg = xattr.vargrad(xattr.saliency(xattr.target(model, 3)), stdevs=0.1, n_samples=25, generator=0)(x)
"""
