"""Captum's metric functions over ``xattr.metrics``: ``infidelity``, ``infidelity_perturb_func_decorator``,
``sensitivity_max`` with Captum 0.9's signatures and return conventions.

Both libraries hand ``perturb_func`` the same example-major copies, so a deterministic
perturbation gives Captum's numbers (tests/test_compat_metrics.py). ``max_examples_per_batch``
becomes xattr's ``chunk_size`` (model rows per call).
"""

from __future__ import annotations

from typing import Callable

import torch

import xattr.metrics as M
from xattr._src import tree as T

from ._convert import Call


def _safe_div(num: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    return num / torch.where(denom == 0, torch.ones_like(denom), denom)


def infidelity_perturb_func_decorator(multiply_by_inputs: bool = True) -> Callable:
    """Turns ``perturb_func(inputs[, baselines]) -> perturbed`` into one returning
    ``(perturbations, perturbed)``, as Captum's decorator: ``I = x - perturbed``, divided by
    ``x - baseline`` (or by x without baselines; 0 denominators count as 1) when
    ``multiply_by_inputs`` (the attributions then already carry the input factor)."""

    def decorate(perturb_func: Callable) -> Callable:
        def pairs(inputs, baselines=None):
            perturbed = perturb_func(inputs) if baselines is None else perturb_func(inputs, baselines)
            xs = inputs if isinstance(inputs, tuple) else (inputs,)
            ps = perturbed if isinstance(perturbed, tuple) else (perturbed,)
            if baselines is None:
                bs = (None,) * len(xs)
            else:
                bs = baselines if isinstance(baselines, tuple) else (baselines,) * len(xs)
            sizes = []
            for x, p, b in zip(xs, ps, bs):
                diff = x - p
                if multiply_by_inputs:
                    diff = _safe_div(diff, x if b is None else x - torch.as_tensor(b, dtype=x.dtype, device=x.device))
                sizes.append(diff)
            if isinstance(inputs, tuple):
                return tuple(sizes), tuple(ps)
            return sizes[0], ps[0]

        return pairs

    return decorate


def infidelity(
    forward_func: Callable,
    perturb_func: Callable,
    inputs,
    attributions,
    baselines=None,
    additional_forward_args=None,
    target=None,
    n_perturb_samples: int = 10,
    max_examples_per_batch: int | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """Captum's ``infidelity``: one number per example, via ``xattr.metrics.infidelity``."""
    call = Call.build(forward_func, inputs, target, additional_forward_args)
    argnums = call.argnums if call.is_tuple else 0
    if isinstance(attributions, tuple) and not call.is_tuple and len(attributions) == 1:
        attributions = attributions[0]
    fn = M.infidelity(
        call.model, attributions, perturb_func, n_perturb_samples=n_perturb_samples, normalize=normalize,
        baselines=baselines, argnums=argnums, chunk_size=max_examples_per_batch,
    )  # fmt: skip
    return fn(*call.args)


def _tile(value, batch: int, copies: int):
    """A per-example keyword (tensor or list with B rows) tiled for copy-major copies."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return value.repeat((copies,) + (1,) * (value.ndim - 1))
    if isinstance(value, list) and len(value) == batch:
        return value * copies
    if isinstance(value, tuple):
        return tuple(_tile(v, batch, copies) for v in value)
    return value


def sensitivity_max(
    explanation_func: Callable,
    inputs,
    perturb_func: Callable = M.uniform_noise,
    perturb_radius: float = 0.02,
    n_perturb_samples: int = 10,
    norm_ord: str = "fro",
    max_examples_per_batch: int | None = None,
    **kwargs,
) -> torch.Tensor:
    """Captum's ``sensitivity_max``: ``explanation_func(inputs, **kwargs)`` is any Captum-style
    ``attribute``; per-example keywords (``target``, ``baselines``, ``additional_forward_args``)
    are tiled with the perturbed copies."""
    is_tuple = isinstance(inputs, tuple)
    xs = inputs if is_tuple else (inputs,)
    batch = xs[0].shape[0]

    def attr_fn(*rows):
        copies = rows[0].shape[0] // batch
        kw = {k: _tile(v, batch, copies) for k, v in kwargs.items()} if copies > 1 else kwargs
        with T.outside_batch_scope():  # the copies are a batch of their own, keywords tiled to match
            out = explanation_func(rows if is_tuple else rows[0], **kw)
        return out if is_tuple else (out[0] if isinstance(out, tuple) and len(out) == 1 else out)

    return M.sensitivity_max(
        attr_fn, *xs, perturb_func=perturb_func, perturb_radius=perturb_radius, n_perturb_samples=n_perturb_samples,
        norm_ord=norm_ord, argnums=tuple(range(len(xs))) if is_tuple else 0, chunk_size=max_examples_per_batch,
    )  # fmt: skip
