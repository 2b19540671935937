"""Neuron attribution: what each input feature contributes to one neuron of a layer, or K at once.

Three of Captum's neuron methods are plain compositions with `xattr.neuron` (no code here):

    split = xattr.at_layer(model, model.layer3)
    xattr.saliency(xattr.neuron(split, idx), abs=False)                  # NeuronGradient
    xattr.integrated_gradients(xattr.neuron(split, idx))                 # NeuronIntegratedGradients
    xattr.gradient_shap(xattr.neuron(split, idx), baselines=dist)        # NeuronGradientShap

``idx`` is an int or tuple index into one example's activation (slices are summed), a callable
``act -> (R,)``, or ``xattr.outputs([idx_1, ..., idx_K])`` for K neurons in one call (a K axis
after the batch axis). Conductance also needs the model's output, hence the one function here.

NOTE: [Neuron conductance as a path integral]
The conductance of input feature i through neuron y_n (Dhamdhere et al. 2018) is

    (x_i - x'_i) * int_0^1 dF/dy_n(g(a)) * dy_n/dx_i(g(a)) da,      g(a) = x' + a (x - x'),

and the integrand is the input gradient of ``c(x) = y_n(x) * sg(dF/dy_n(x))`` (sg: stop
gradient). So neuron conductance is ``path_integral`` of c: quadrature, baselines, chunking,
pass-through arguments and the K axis come from there. At top level c costs one forward pass:
the capture hook keeps the layer's value (still connected to x) and substitutes a detached copy
that requires grad; one backward pass from F gives dF/dh, and path_integral's backward from c
gives the input gradient (Captum's cost: one forward, two backwards). Inside torch.func
transforms c is ``act`` plus a VJP of ``head``. The neuron is selected from the activation and
from dF/dh the same way, so for a region (slices) or a callable, dF/dy_n is the selection of
dF/dh: the summed gradient over the region, Captum's convention (so a callable should select
or sum neurons, as Captum warns). The stop gradient is local to path_integral's own VJP level,
so torch.func.grad over a conductance keeps dF/dy_n's dependence on x. Summed over input features,
a neuron's conductance is the layer conductance of that neuron; summed over every neuron of a
layer that all paths cross, it is F(x) - F(x') (completeness; tested).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from . import tree as T
from .checks import check_finite, check_float_inputs
from .gradients import _rows, _zero_if_none, vjp_rows
from .layers import Split, _clone
from .neuron_parts import PartOf, as_path, checked_part, part_split
from .paths import path_integral, straight_line_unit
from .rule_limits import taken_as_constant
from .targets import Outputs, Targeted


def _identity(h):
    return h


def _is_float(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _stop_gradient(t: torch.Tensor) -> torch.Tensor:
    """Stops gradients at the innermost torch.func level only.

    ``Tensor.detach`` stops them at every level, which would silently drop dF/dy_n's own
    dependence on x from ``torch.func.grad``/``jacrev`` taken over the attribution.
    """
    level = torch._C._functorch.maybe_current_level()
    return t if level is None else torch._C._functorch._unwrap_for_grad(t, level)


def _value_and_layer_grad(split: Split, args: tuple):
    """(the layer's value, differentiable w.r.t. args; dF/dh, constant at this level) at ``args``."""
    if torch._C._functorch.maybe_current_level() is not None or torch.compiler.is_compiling():
        h = split.act(*args)
        with taken_as_constant():  # stopped below: a ruled model's rules are not differentiated twice
            _, (g,) = vjp_rows(split.head, (h,) + tuple(args), (0,), method="neuron_conductance")
        return h, T.tree_map(_stop_gradient, g)
    values: list[list] = [[] for _ in split.modules]
    fresh: list[list] = [[] for _ in split.modules]

    def substitute(i, k, value):  # keep the value (connected to args); the forward goes on from a leaf copy
        values[i].append(value)
        fresh[i].append(T.tree_map(lambda t: t.detach().requires_grad_() if _is_float(t) else t, value))
        return _clone(fresh[i][-1])

    with torch.enable_grad():
        out = _rows(split._run(args, substitute, stop_when_done=False), False)
    check_finite(out)
    hf = split._pack(fresh)
    wrt = [t for t in T.leaves(hf) if _is_float(t)]
    grads = iter(torch.autograd.grad(out, wrt, torch.ones_like(out), allow_unused=True))
    dfdh = T.tree_map(lambda t: _zero_if_none(next(grads), t) if _is_float(t) else t, hf)
    return split._pack(values), dfdh


class _Conductance:
    """``c(*args) = y_n * sg(dF/dy_n)``: its input gradient is the conductance integrand."""

    def __init__(self, split: Split, index, part=None):
        self.split, self.path = split, as_path(part)  # NOTE: [Neurons in one part of a layer's value]
        self.pick = Targeted(_identity if self.path is None else PartOf(_identity, self.path), index)
        self.checked = part_split(split, self.path)
        self.indexed = isinstance(index, Outputs) or not callable(index)
        self.multi_output = isinstance(index, Outputs)
        self.model = split.model  # lets the train-mode warning find the modules

    def __call__(self, *args) -> torch.Tensor:
        h, dfdh = _value_and_layer_grad(self.split, args)
        # NOTE: [Batch-first layers], on the part the index reads
        checked_part(self.split, self.checked, h, self.path, self.indexed, args, "neuron_conductance")
        return self.pick(h) * self.pick(dfdh)


def neuron_conductance(
    split: Split,
    index,
    *,
    argnums: int | Sequence[int] = 0,
    baselines: Any = 0.0,
    n_steps: int = 50,
    method: str = "riemann_trapezoid",
    chunk_size: int | None = None,
    multiply_by_inputs: bool = True,
    part=None,
) -> Callable:
    """Neuron conductance: each input feature's share of the output's flow through one neuron.

    ``(x - x') * sum_k w_k dF/dy_n(g(a_k)) dy_n/dx(g(a_k))`` along ``g(a) = x' + a (x - x')``,
    with F the split's model function (choose its output with ``xattr.target``) and y_n the
    neuron. Dhamdhere, Yan & Sundararajan 2018, "How Important Is a Neuron?". See NOTE: [Neuron
    conductance as a path integral]. Summed over features: the neuron's layer conductance;
    summed over all neurons of a layer every path crosses: F(x) - F(x') (completeness).

    Args:
      split: ``xattr.at_layer(f, layer)`` (``inputs=True`` for the layer's input), f returning
        one number per example.
      index: the neuron, as in ``xattr.neuron``: an int or tuple index into one example's
        activation (slices: a summed region), a callable ``act -> (R,)``, or
        ``xattr.outputs([idx_1, ..., idx_K])`` for K neurons in one call.
      argnums: attributed positional argument(s) of the model; others pass through.
      baselines: x', as for ``integrated_gradients``; also a call keyword.
      n_steps, method: quadrature, default Captum's riemann_trapezoid with exact weights (NOTE:
        [Quadrature rules]): Captum's numbers are these times ``(n_steps - 1) / n_steps``.
      chunk_size: most model rows (examples x steps) per forward/backward call.
      multiply_by_inputs: False drops the ``(x - x')`` factor (Captum's ``multiply_by_inputs``).
      part: for a layer that returns several tensors, the one the index applies to, as in
        ``xattr.neuron`` (an int position, a dict key, or a tuple path: ``part=(1, 0)``).

    Returns:
      ``fn(*args, baselines=None)``: a tree like ``args[argnums]``, with a K axis after the batch
      for ``xattr.outputs`` neurons.

    Example:
      >>> split = xattr.at_layer(xattr.target(model, 3), model.fc1)
      >>> cond = xattr.neuron_conductance(split, 7, n_steps=32)(x)               # like x
      >>> many = xattr.neuron_conductance(split, xattr.outputs([0, 7]))(x)       # (B, 2, *x.shape[1:])
    """
    if not isinstance(split, Split):
        raise TypeError(f"neuron_conductance needs a Split from xattr.at_layer(f, layer), got {type(split).__name__}")
    if split.multi_output:
        raise ValueError(
            "neuron_conductance explains one model output per example; pick it with xattr.target(model, t) "
            "(K neurons at once: index=xattr.outputs([...]))"
        )
    path = None if multiply_by_inputs else straight_line_unit
    integral = path_integral(
        _Conductance(split, index, part), argnums=argnums, baselines=baselines, n_steps=n_steps, method=method,
        path=path, chunk_size=chunk_size,
    )  # fmt: skip
    nums = T.normalize_argnums(argnums)[0]

    def fn(*args, baselines=baselines):
        check_float_inputs(T.split_args(args, nums)[0], "neuron_conductance")  # named, not path_integral
        return integral(*args, baselines=baselines)

    return fn
