"""Captum's metric functions over ``xattr.metrics``: ``infidelity``, ``infidelity_perturb_func_decorator``,
``sensitivity_max`` with Captum 0.9's signatures and return conventions.

Both libraries hand ``perturb_func`` the same example-major copies, so a deterministic
perturbation gives Captum's numbers (tests/test_compat_metrics.py). ``max_examples_per_batch``
becomes xattr's ``chunk_size`` (model rows per call).

NOTE: [Captum's perturbation functions]
A Captum ``perturb_func`` is called as Captum calls it, whatever ``xattr.metrics`` would do:
- with one input tensor, also one given as a 1-tuple ``(x,)``, it gets the bare tensor (and
  attributions may be the tensor or a 1-tuple);
- what it returns for one input may hold 1-tuples (``(x',)``, ``((I,), (x',))``: Captum's own
  decorator and default sensitivity perturbation return those); they are unwrapped;
- infidelity's ``baselines`` reach it as given, one per input (the bare value for one input):
  a number stays a number, and only a tensor with one row per example (B > 1) is repeated for
  the copies; a (1, ...) tensor stays (1, ...). ``xattr.metrics.infidelity`` instead passes
  full tensors shaped like the copies, so the compat layer does not hand it the baselines but
  closes over them.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

import xattr.metrics as M
from xattr._src import tree as T

from ._convert import Call


def _untuple(value):
    """A 1-tuple's element; anything else unchanged (NOTE: [Captum's perturbation functions])."""
    return value[0] if isinstance(value, tuple) and len(value) == 1 else value


def _one_result(out):
    """A perturbation function's result for one input tensor: the perturbed input, or an
    ``(I, perturbed)`` pair, with Captum's 1-tuples unwrapped."""
    if isinstance(out, tuple) and len(out) == 2:
        return tuple(_untuple(o) for o in out)
    return _untuple(out)


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
    """Captum's ``infidelity``: one number per example, via ``xattr.metrics.infidelity``;
    ``perturb_func`` is called as in Captum (NOTE: [Captum's perturbation functions])."""
    call = Call.build(forward_func, inputs, target, additional_forward_args)
    one = len(call.inputs) == 1
    perturb = _infidelity_perturb(perturb_func, call, None if baselines is None else _baselines(call, baselines))
    fn = M.infidelity(
        call.model, attributions, perturb, n_perturb_samples=n_perturb_samples, normalize=normalize,
        argnums=0 if one else call.argnums, chunk_size=max_examples_per_batch,
    )  # fmt: skip
    return fn(*call.args)


def _baselines(call: Call, baselines) -> tuple:
    """Captum's infidelity baselines, one per input, as given (numbers stay numbers)."""
    call.baselines(baselines)  # their count and types
    return baselines if isinstance(baselines, tuple) else (baselines,) * len(call.inputs)


def _infidelity_perturb(perturb_func: Callable, call: Call, baselines: tuple | None) -> Callable:
    """``perturb(copies)`` for ``xattr.metrics.infidelity``, calling ``perturb_func`` with the
    copies and the baselines as Captum does (NOTE: [Captum's perturbation functions])."""
    one = len(call.inputs) == 1

    def perturb(x):
        if baselines is None:
            out = perturb_func(x)
        else:
            copies = T.leaves(x)[0].shape[0] // call.batch
            b = tuple(_repeat_rows(v, call.batch, copies) for v in baselines)
            out = perturb_func(x, b[0] if one else b)
        return _one_result(out) if one else out

    return perturb


def _repeat_rows(value, batch: int, copies: int):
    """A per-example baseline (B > 1 rows) repeated for example-major copies; others as given."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch > 1:
        return value.repeat_interleave(copies, 0)
    return value


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
    are tiled with the perturbed copies. ``perturb_func`` is called as in Captum (NOTE:
    [Captum's perturbation functions])."""
    is_tuple = isinstance(inputs, tuple)
    xs = inputs if is_tuple else (inputs,)
    one = len(xs) == 1
    batch = xs[0].shape[0]

    def attr_fn(*rows):
        copies = rows[0].shape[0] // batch
        kw = {k: _tile(v, batch, copies) for k, v in kwargs.items()} if copies > 1 else kwargs
        with T.outside_batch_scope():  # the copies are a batch of their own, keywords tiled to match
            out = explanation_func(rows if is_tuple else rows[0], **kw)
        return _untuple(out) if one else out

    return M.sensitivity_max(
        attr_fn, *xs, perturb_func=_one_input(perturb_func) if one else perturb_func, perturb_radius=perturb_radius,
        n_perturb_samples=n_perturb_samples, norm_ord=norm_ord, argnums=0 if one else tuple(range(len(xs))),
        chunk_size=max_examples_per_batch,
    )  # fmt: skip


def _one_input(perturb_func: Callable) -> Callable:
    """perturb_func for one input tensor with Captum's 1-tuple results unwrapped; it keeps the
    signature (``functools.wraps``), which decides whether the radius is passed."""

    @functools.wraps(perturb_func)
    def perturb(x, *rest, **kw):
        return _untuple(perturb_func(x, *rest, **kw))

    return perturb
