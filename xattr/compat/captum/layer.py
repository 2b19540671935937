"""Captum's layer attribution classes as thin adapters over xattr's layer methods.

Every class takes Captum 0.9's ``(forward_func, layer, device_ids=None, ...)`` (``device_ids``
is accepted and ignored: xattr runs where the tensors are) and its ``attribute`` keeps Captum's
positional order, keywords and defaults. The model is split with
``xattr.at_layer(xattr.target(forward_func, target), layer, inputs=attribute_to_layer_input)``
and one functional method does the work. Return conventions are Captum's: attributions have
the layer's structure (a tensor, or a tuple for a layer with several outputs), a list of them
for a list of layers (where Captum accepts one), then the convergence delta if asked for.
``grad_kwargs`` is not supported (xattr differentiates with torch.func/autograd itself).
"""

from __future__ import annotations

from typing import Callable

import torch

import xattr
from xattr._src.checks import baselines_like

from ._convert import Attribution, Call
from .bases import GradientAttribution
from xattr._src.paths import straight_line_unit


class LayerAttribution(Attribution):
    """Base of the layer adapters: holds the layer; ``interpolate`` is ``xattr.upsample``.

    ``call_index`` (keyword-only, xattr only) picks the call of a module that the forward pass
    calls more than once (``xattr.at_layer``'s option). Without it such a module raises; Captum
    silently uses the last call, which ``call_index=<number of calls - 1>`` reproduces.
    """

    def __init__(self, forward_func: Callable, layer, device_ids=None, *, call_index=None) -> None:
        super().__init__(forward_func)
        self.layer = layer
        self.device_ids = device_ids  # ignored
        self.call_index = call_index

    @staticmethod
    def interpolate(layer_attribution: torch.Tensor, interpolate_dims, interpolate_mode: str = "nearest"):
        """Captum's ``LayerAttribution.interpolate``: ``xattr.upsample(attr, dims, mode)``."""
        return xattr.upsample(layer_attribution, interpolate_dims, mode=interpolate_mode)

    def _split(self, call: Call, attribute_to_layer_input: bool) -> xattr.Split:
        return xattr.at_layer(call.model, self.layer, inputs=attribute_to_layer_input, call_index=self.call_index)

    def _run(self, inputs, target, additional_forward_args, grad_kwargs=None, **keywords):
        if grad_kwargs:
            raise ValueError("grad_kwargs is not supported by xattr.compat.captum (gradients are taken by xattr)")
        return super()._run(inputs, target, additional_forward_args, **keywords)

    def _output(self, call: Call, attributions, delta, with_delta: bool):
        """The layer's structure (a tensor, or a tuple for a layer with several outputs), a list
        of them for a list of layers (at_layer gives a tuple over layers), whatever the inputs'."""
        if isinstance(self.layer, (list, tuple)):
            attributions = list(attributions)
        return (attributions, delta) if with_delta else attributions


def _no_delta(fn):
    return lambda *args: (fn(*args), None)


class LayerActivation(LayerAttribution):
    """``LayerActivation(forward_func, layer)``: the layer's value. xattr: ``xattr.layer_activation``."""

    def attribute(self, inputs, additional_forward_args=None, attribute_to_layer_input: bool = False):
        return self._run(inputs, None, additional_forward_args, attribute_to_layer_input=attribute_to_layer_input)

    def _functional(self, call: Call, *, attribute_to_layer_input=False):
        return _no_delta(xattr.layer_activation(self._split(call, attribute_to_layer_input))), ()

    @property
    def multiplies_by_inputs(self) -> bool:
        return True


class LayerGradientXActivation(LayerAttribution, GradientAttribution):
    """``LayerGradientXActivation(forward_func, layer, multiply_by_inputs=True)``.

    xattr: ``xattr.gradient_x_activation(split, multiply=multiply_by_inputs)``.
    ``memory_efficient`` is accepted and ignored.
    """

    def __init__(self, forward_func, layer, device_ids=None, multiply_by_inputs: bool = True,
                 memory_efficient: bool = False, *, call_index=None) -> None:  # fmt: skip
        super().__init__(forward_func, layer, device_ids, call_index=call_index)
        self._multiply_by_inputs = multiply_by_inputs

    def attribute(self, inputs, target=None, additional_forward_args=None, attribute_to_layer_input: bool = False,
                  grad_kwargs=None):  # fmt: skip
        return self._run(inputs, target, additional_forward_args, grad_kwargs,
                         attribute_to_layer_input=attribute_to_layer_input)  # fmt: skip

    def _functional(self, call: Call, *, attribute_to_layer_input=False):
        # a list of layers: one split of them all, each layer's gradient its total derivative in the
        # unmodified model, as Captum's (NOTE: [Layer gradients are total derivatives]): one pass
        split = self._split(call, attribute_to_layer_input)
        return _no_delta(xattr.gradient_x_activation(split, multiply=self._multiply_by_inputs)), ()

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs


class _InputPath(LayerAttribution, GradientAttribution):
    """Shared ``attribute`` for the classes with baselines, n_steps, method and internal_batch_size."""

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, n_steps: int = 50,
                  method: str = "gausslegendre", internal_batch_size: int | None = None,
                  return_convergence_delta: bool = False, attribute_to_layer_input: bool = False,
                  grad_kwargs=None):  # fmt: skip
        return self._run(
            inputs, target, additional_forward_args, grad_kwargs, baselines=baselines, n_steps=n_steps, method=method,
            internal_batch_size=internal_batch_size, return_convergence_delta=return_convergence_delta,
            attribute_to_layer_input=attribute_to_layer_input,
        )  # fmt: skip

    def _functional(self, call: Call, *, baselines=None, n_steps=50, method="gausslegendre", internal_batch_size=None,
                    return_convergence_delta=False, attribute_to_layer_input=False):  # fmt: skip
        bases = call.baselines(baselines)
        split = self._split(call, attribute_to_layer_input)
        attr_fn = self._method(split, call.argnums, n_steps, method, internal_batch_size)
        k = len(bases)

        def fn(*args):  # (*inputs, *additional_forward_args, *baselines)
            args, b = args[:-k], args[-k:]
            attr = attr_fn(*args, baselines=b)
            if not return_convergence_delta:
                return attr, None
            return attr, xattr.completeness_gap(call.model, args, call.argnums, attr, b)

        return fn, bases

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return True


class LayerIntegratedGradients(_InputPath):
    """``LayerIntegratedGradients(forward_func, layer, multiply_by_inputs=True)``; ``layer`` may be a list.

    xattr: ``xattr.layer_integrated_gradients(split, baselines=..., n_steps=..., method=...,
    chunk_size=internal_batch_size)``; without ``multiply_by_inputs`` the path integral of the
    head's layer gradients from ``act(baselines)`` to ``act(inputs)``. ``riemann_trapezoid``
    uses exact weights: Captum's result times ``n_steps / (n_steps - 1)``.
    """

    def __init__(self, forward_func, layer, device_ids=None, multiply_by_inputs: bool = True, *,
                 call_index=None) -> None:  # fmt: skip
        super().__init__(forward_func, layer, device_ids, call_index=call_index)
        self._multiply_by_inputs = multiply_by_inputs

    def _method(self, split, argnums, n_steps, method, chunk_size):
        if self._multiply_by_inputs:
            return xattr.layer_integrated_gradients(
                split, argnums=argnums, n_steps=n_steps, method=method, chunk_size=chunk_size
            )
        integral = xattr.path_integral(
            split.head, n_steps=n_steps, method=method, path=straight_line_unit, chunk_size=chunk_size
        )
        act = xattr.layer_activation(split)

        def local(*args, baselines):
            base = baselines_like(tuple(args[i] for i in argnums), baselines)
            base_args = base + tuple(args[len(argnums) :])
            return integral(act(*args), *args, baselines=act(*base_args))

        return local

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs


class LayerConductance(_InputPath):
    """``LayerConductance(forward_func, layer)``: xattr: ``xattr.conductance(split, ...)``, Captum's numbers."""

    def _method(self, split, argnums, n_steps, method, chunk_size):
        return xattr.conductance(split, argnums=argnums, n_steps=n_steps, method=method, chunk_size=chunk_size)


class InternalInfluence(_InputPath):
    """``InternalInfluence(forward_func, layer)``: xattr: ``xattr.internal_influence(split, ...)``.

    ``riemann_trapezoid`` uses exact weights: Captum's result times ``n_steps / (n_steps - 1)``.
    """

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, n_steps: int = 50,
                  method: str = "gausslegendre", internal_batch_size: int | None = None,
                  attribute_to_layer_input: bool = False, grad_kwargs=None):  # fmt: skip
        return super().attribute(
            inputs, baselines, target, additional_forward_args, n_steps, method, internal_batch_size,
            attribute_to_layer_input=attribute_to_layer_input, grad_kwargs=grad_kwargs,
        )  # fmt: skip

    def _method(self, split, argnums, n_steps, method, chunk_size):
        return xattr.internal_influence(split, argnums=argnums, n_steps=n_steps, method=method, chunk_size=chunk_size)

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False


class LayerGradCam(LayerAttribution, GradientAttribution):
    """``LayerGradCam(forward_func, layer)``: xattr: ``xattr.grad_cam(split, relu=relu_attributions,
    sum_channels=attr_dim_summation)`` (Captum's default ``relu_attributions=False``)."""

    def attribute(self, inputs, target=None, additional_forward_args=None, attribute_to_layer_input: bool = False,
                  relu_attributions: bool = False, attr_dim_summation: bool = True, grad_kwargs=None):  # fmt: skip
        return self._run(
            inputs, target, additional_forward_args, grad_kwargs, attribute_to_layer_input=attribute_to_layer_input,
            relu_attributions=relu_attributions, attr_dim_summation=attr_dim_summation,
        )  # fmt: skip

    def _functional(self, call: Call, *, attribute_to_layer_input=False, relu_attributions=False,
                    attr_dim_summation=True):  # fmt: skip
        split = self._split(call, attribute_to_layer_input)
        return _no_delta(xattr.grad_cam(split, relu=relu_attributions, sum_channels=attr_dim_summation)), ()


class LayerGradientShap(LayerAttribution, GradientAttribution):
    """``LayerGradientShap(forward_func, layer, multiply_by_inputs=True)``.

    xattr: ``xattr.layer_gradient_shap(split, baselines=..., n_samples=..., stdevs=...,
    generator=..., multiply_by_inputs=..., return_delta=return_convergence_delta)``. Random draws
    come from xattr's streams (``generator=`` on ``attribute``, xattr only), so results agree
    with Captum's in distribution; deltas are one per (example, sample), example-major.
    """

    stochastic = True

    def __init__(self, forward_func, layer, device_ids=None, multiply_by_inputs: bool = True, *,
                 call_index=None) -> None:  # fmt: skip
        super().__init__(forward_func, layer, device_ids, call_index=call_index)
        self._multiply_by_inputs = multiply_by_inputs

    def attribute(self, inputs, baselines, n_samples: int = 5, stdevs=0.0, target=None, additional_forward_args=None,
                  return_convergence_delta: bool = False, attribute_to_layer_input: bool = False, *,
                  generator=None):  # fmt: skip
        return self._run(
            inputs, target, additional_forward_args, baselines=baselines, n_samples=n_samples, stdevs=stdevs,
            return_convergence_delta=return_convergence_delta, attribute_to_layer_input=attribute_to_layer_input,
            generator=generator,
        )  # fmt: skip

    def _functional(self, call: Call, *, baselines, n_samples=5, stdevs=0.0, return_convergence_delta=False,
                    attribute_to_layer_input=False, generator=None):  # fmt: skip
        fn = xattr.layer_gradient_shap(
            self._split(call, attribute_to_layer_input), argnums=call.argnums, baselines=call.distribution(baselines),
            n_samples=n_samples, stdevs=stdevs, generator=generator, multiply_by_inputs=self._multiply_by_inputs,
            return_delta=return_convergence_delta,
        )  # fmt: skip
        return (fn if return_convergence_delta else _no_delta(fn)), ()

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs
