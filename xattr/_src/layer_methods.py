"""Layer attribution methods: what each unit of a layer contributes, as compositions over `at_layer`.

Every method takes a `Split` (``split = xattr.at_layer(f, layer, inputs=..., call_index=...)``,
NOTE: [Splitting a model at a layer]) and returns ``attr_fn(*args)`` giving attributions with
the structure and shapes of the layer's activation ``h = split.act(*args)``: a tensor, the
module's tuple, a tuple over layers for a list of layers, a tuple over calls for
``call_index="all"``. ``f`` chooses the output (``xattr.target``); with ``xattr.outputs`` the
attributions gain a K axis after the batch axis. Every argument of ``attr_fn`` reaches the model
(token ids and masks pass through). Results are detached. Input-path methods (conductance,
internal influence) live in layer_paths.py.

For a split at several layers (or ``call_index="all"``), ``dF/dh`` is each layer's own total
derivative in the unmodified model (NOTE: [Layer gradients are total derivatives]), as Captum
computes per layer; layer IG instead moves every layer of the split along its path at once.

Shared arguments:
  argnums: for methods with a baseline, the argument(s) of f that the input-space ``baselines``
     replace; the others are the same at the input and at the baseline.
  chunk_size: most model rows (examples x copies) per forward/backward pass.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from . import tree as T
from .checks import baselines_like, warn_if_training
from .gradients import attribution_fn
from .layer_layout import check_merged, check_rows
from .layer_grads import layer_vjp_rows
from .layers import Split, unread_dropped
from .methods import _gap, _outputs, completeness_gap, integrated_gradients
from .noise_tunnel import shap_samples


def _at_both(fn: Callable, args: tuple, nums: tuple, base: tuple, *, layer_of: tuple | None = None):
    """(fn at args, fn at args with args[nums] replaced by base): one call on 2B rows, split.

    ``layer_of=(split, method)``: fn is ``split.act``, whose rows are checked (NOTE: [Batch-first layers])."""
    selected, rebuild = T.split_args(args, nums)
    batch = T.batch_size(selected)
    both = T.tree_map(lambda x, b: torch.cat([x, b]), selected, base)
    call = T.split_args(tuple(a if i in nums else T.fold(a, 2, batch) for i, a in enumerate(args)), nums)[1](both)
    out = fn(*call)
    if layer_of is not None:
        check_rows(layer_of[0], out, call, 2 * batch, layer_of[1])
    return T.tree_map(lambda t: t[:batch], out), T.tree_map(lambda t: t[batch:], out)


def _times(g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return g * T.expand_like(h, g)


def layer_activation(split: Split) -> Callable:
    """The layer's activation itself, ``h = split.act(*args)`` (Captum's LayerActivation).

    Returns:
      ``fn(*args)`` giving h, detached: a tensor (B, ...) or the layer's tuple structure.

    Example:
      >>> h = xattr.layer_activation(xattr.at_layer(model, model.conv2))(x)
    """
    def fn(*args):
        warn_if_training(split)
        check_merged(split, args, "layer_activation")
        return split.act(*args)

    return attribution_fn(fn, split)


def gradient_x_activation(split: Split, *, multiply: bool = True) -> Callable:
    """Layer gradient times activation, ``dF/dh * h``; the layer analogue of input x gradient.

    Shrikumar et al. 2016 (at a layer: Captum's LayerGradientXActivation). One forward and one
    backward pass (K backward passes for ``xattr.outputs``). Complete, ``sum = F(x) - F(h=0)``,
    when F is linear in h.

    Args:
      multiply: False returns the layer gradient ``dF/dh`` alone.

    Returns:
      ``fn(*args)`` giving a tree like h, with a K axis after the batch for ``xattr.outputs``.

    Example:
      >>> split = xattr.at_layer(xattr.target(model, 3), model.conv2)
      >>> gxa = xattr.gradient_x_activation(split)(x)                        # like h
    """

    def fn(*args):
        warn_if_training(split)
        check_merged(split, args, "gradient_x_activation")
        h, _, g = layer_vjp_rows(split, args)
        if not multiply:
            return g
        return _times(g, h) if isinstance(h, torch.Tensor) else T.tree_map(_times, g, h)

    return attribution_fn(fn, split)


def grad_cam(split: Split, *, relu: bool = True, sum_channels: bool = True) -> Callable:
    """Grad-CAM: activations weighted by their spatially averaged gradients, summed over channels.

    Selvaraju et al. 2017, "Grad-CAM". For h (B, C, *spatial):
    ``cam = relu(sum_c mean_spatial(dF/dh_c) * h_c)`` of shape (B, 1, *spatial), which is
    Captum's LayerGradCam (``relu_attributions``, ``attr_dim_summation``). For h (B, C) the
    gradient is used as is. One forward and one backward pass.

    Args:
      relu: keep only positive evidence (the paper's ReLU; Captum's default is False).
      sum_channels: sum over channels keeping the axis; False keeps one map per channel.

    Returns:
      ``fn(*args)`` giving (B, 1, *spatial) per layer tensor ((B, C, *spatial) without
      summation), with a K axis after the batch for ``xattr.outputs``. See `upsample`.

    Example:
      >>> cam = xattr.grad_cam(xattr.at_layer(xattr.target(model, 3), model.conv2))(x)
      >>> heat = xattr.upsample(cam, x.shape[2:], mode="bilinear")           # (B, 1, H, W)
    """

    def cam(g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        ch = 1 + g.ndim - h.ndim  # the channel axis: 2 with a K axis
        w = g.mean(tuple(range(ch + 1, g.ndim)), keepdim=True) if g.ndim > ch + 1 else g
        out = _times(w, h)
        out = out.sum(ch, keepdim=True) if sum_channels else out
        return torch.relu(out) if relu else out

    def fn(*args):
        warn_if_training(split)
        h, out, g = layer_vjp_rows(split, args)
        check_rows(split, h, args, out.shape[0] if out.ndim else None, "grad_cam")  # NOTE: [Batch-first layers]
        return cam(g, h) if isinstance(h, torch.Tensor) else T.tree_map(cam, g, h)

    return attribution_fn(fn, split)


def upsample(attributions: torch.Tensor, size, mode: str = "nearest") -> torch.Tensor:
    """Resizes layer attributions (B, [K,] C, *spatial) to ``size`` (Captum's LayerAttribution.interpolate).

    ``torch.nn.functional.interpolate(attributions, size, mode=mode)``; a K axis (which needs
    ``size`` as a tuple, one entry per spatial dim) is folded into the batch and restored.

    Example:
      >>> cam = xattr.grad_cam(xattr.at_layer(xattr.target(model, 3), model.conv2))(x)
      >>> heat = xattr.upsample(cam, x.shape[2:], mode="bilinear")           # (B, 1, H, W)
    """
    if isinstance(size, int) or attributions.ndim == len(size) + 2:
        return F.interpolate(attributions, size, mode=mode)
    lead = attributions.shape[: attributions.ndim - len(size) - 1]
    flat = attributions.reshape((-1,) + tuple(attributions.shape[len(lead) :]))
    out = F.interpolate(flat, tuple(size), mode=mode)
    return out.reshape(tuple(lead) + tuple(out.shape[1:]))


def layer_integrated_gradients(
    split: Split,
    *,
    argnums: int | Sequence[int] = 0,
    baselines: Any = 0.0,
    n_steps: int = 50,
    method: str = "gausslegendre",
    chunk_size: int | None = None,
    return_delta: bool = False,
) -> Callable:
    """Integrated gradients of a layer: IG of ``split.head`` from ``act(baseline)`` to ``act(x)``.

    Sundararajan et al. 2017 at a layer (Captum's LayerIntegratedGradients):

        LIG_j = (h_j - h'_j) * int_0^1 dF/dh_j (h' + a (h - h')) da,   h = act(x), h' = act(b),

    with ``b`` the *input-space* baseline for ``args[argnums]`` (token ids of a padding token
    work too: only the layer's values are interpolated). This is exactly
    ``integrated_gradients(split.head, baselines=act(b))(act(x), *args)``. Axioms: completeness
    ``sum_j LIG_j = F(x) - F(b)`` (up to quadrature error) when every path from the inputs to
    the output crosses the layer(s); IG's linearity, symmetry and dummy axioms in h.

    Args: as ``xattr.integrated_gradients`` (``baselines`` is a number, a tensor broadcastable
      to the input, or a tree like ``args[argnums]``; also a call keyword), and
      return_delta: also return ``sum(LIG) - (F(x) - F(b))`` per example, (B,) or (B, K).

    Returns:
      ``fn(*args, baselines=...)`` giving a tree like h (K axis for ``xattr.outputs``), or
      ``(attributions, delta)``.

    Example:
      >>> split = xattr.at_layer(xattr.target(model, 1), model.embedding)
      >>> attr, delta = xattr.layer_integrated_gradients(split, baselines=pad_ids, return_delta=True)(ids)
    """
    nums, as_tuple = T.normalize_argnums(argnums)
    ig = integrated_gradients(split.head, n_steps=n_steps, method=method, chunk_size=chunk_size)

    def fn(*args, baselines=baselines):
        warn_if_training(split)
        selected, _ = T.split_args(args, nums)
        with T.batch_scope(T.batch_size(selected)):
            base = baselines_like(selected if as_tuple else selected[0], baselines)
            layer_of = (split, "layer_integrated_gradients")  # NOTE: [Batch-first layers]
            h, h0 = _at_both(split.act, args, nums, base if as_tuple else (base,), layer_of=layer_of)
            attr = ig(h, *unread_dropped(split, h, args), baselines=h0)
            return (attr, completeness_gap(split.model, args, argnums, attr, baselines)) if return_delta else attr

    return attribution_fn(fn, split)


def layer_gradient_shap(
    split: Split,
    *,
    argnums: int | Sequence[int] = 0,
    baselines: Any,
    n_samples: int = 5,
    stdevs: float | Sequence[float] = 0.0,
    generator=None,
    chunk_size: int | None = None,
    multiply_by_inputs: bool = True,
    return_delta: bool = False,
    return_std_error: bool = False,
) -> Callable:
    """Gradient SHAP at a layer: ``E[(h(x + e) - h(b)) * dF/dh(b + a (x + e - b))]``.

    Lundberg & Lee 2017 at a layer (Captum's LayerGradientShap). The expectation is over input
    noise e ~ N(0, stdevs^2), baselines b drawn from the rows of the input-space distribution
    ``baselines`` and path positions a ~ U(0, 1), ``n_samples`` draws per example, exactly
    ``xattr.gradient_shap``'s draws (the same seed gives the same e, b and a). Completeness
    ``sum_j = F(x) - F(b)`` holds in expectation when F is affine in h along the path.

    Args: as ``xattr.gradient_shap``: baselines (N, ...) or a tree of them; n_samples; stdevs;
      generator (int seed or torch.Generator); chunk_size; and
      multiply_by_inputs: False drops the ``(h(x + e) - h(b))`` factor (the expected layer gradient).
      return_delta: also return each sample's ``sum(a_s) - (F(x + e_s) - F(b_s))``, shape
        (B * n_samples,) or (B * n_samples, K), example-major (Captum's layout).
      return_std_error: also return each element's Monte Carlo standard error, last, as
        ``xattr.gradient_shap`` does.

    Returns:
      ``fn(*args)`` giving a tree like h (K axis for ``xattr.outputs``), or ``(attributions, delta)``,
      with the standard errors appended when ``return_std_error``.

    Example:
      >>> split = xattr.at_layer(xattr.target(model, 3), model.conv2)
      >>> a = xattr.layer_gradient_shap(split, baselines=x_train[:50], n_samples=25, generator=0)(x)
    """
    nums, _ = T.normalize_argnums(argnums)

    def at_alpha(*args, baselines, alphas):  # one sample per row
        selected, rebuild = T.split_args(args, nums)
        points = T.tree_map(lambda x, b: b + alphas.reshape((-1,) + (1,) * (x.ndim - 1)) * (x - b), selected, baselines)
        h, _, attr = layer_vjp_rows(split, rebuild(points))
        check_rows(split, h, rebuild(points), T.batch_size(points), "layer_gradient_shap")  # NOTE: [Batch-first layers]
        if multiply_by_inputs:
            attr = T.tree_map(lambda g, hx, hb: _times(g, hx - hb), attr, *_at_both(split.act, args, nums, baselines))
        if not return_delta:
            return attr
        end, start = _at_both(lambda *a: _outputs(split.model, a), args, nums, baselines)
        return attr, _gap((attr,), end, start)

    at_alpha.__wrapped__ = split  # lets monte_carlo find the model for its train-mode warning
    sample = shap_samples(
        at_alpha, argnums=argnums, baselines=baselines, n_samples=n_samples, stdevs=stdevs, generator=generator,
        chunk_size=chunk_size, return_delta=return_delta, return_std_error=return_std_error,
    )  # fmt: skip
    return attribution_fn(sample, split)
