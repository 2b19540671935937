"""Captum's rule-based backpropagation classes as thin adapters over xattr's rule methods.

GuidedBackprop, Deconvolution, GuidedGradCam, DeepLift, DeepLiftShap, their layer variants
(LayerDeepLift, LayerDeepLiftShap) and neuron variants (NeuronDeepLift, NeuronDeepLiftShap,
NeuronGuidedBackprop, NeuronDeconvolution). Constructors, ``attribute`` keywords, defaults and
return conventions are Captum 0.9's; the work is one xattr transform each:

    DeepLift(f).attribute(x, b, target=t)          -> xattr.deep_lift(xattr.target(f, t), baselines=b)(x)
    NeuronDeepLift(f, layer).attribute(x, sel, b)  -> xattr.deep_lift(xattr.neuron(xattr.at_layer(f, layer), sel), baselines=b)(x)

xattr applies the rules to operations, not to module types, so ``F.relu``, reused modules and
modules called back to back get the rule too (Captum's hooks miss or mis-chain those; see the
"Rule-based backpropagation" section of docs/migration_rules.md for every deliberate difference).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Callable

import torch
from torch import nn

import xattr

from ._convert import Call
from .bases import GradientAttribution
from .layer import LayerAttribution, _no_delta
from .neuron import _NeuronAttribution


def _attribution_func(custom: Callable | None):
    """Captum's ``custom_attribution_func`` (1 to 3 parameters, tuples in, tuple out) as xattr's
    ``attribution_func(multipliers, inputs, baselines)``, whose trees may be a single tensor (a
    layer with one output): Captum always passes tuples, so single tensors are wrapped and the
    result unwrapped again."""
    if custom is None:
        return None
    n = len(inspect.signature(custom).parameters)
    if not 1 <= n <= 3:
        raise ValueError(f"custom_attribution_func takes 1 to 3 parameters (multipliers, inputs, baselines), got {n}")

    def fn(multipliers, inputs, baselines):
        single = not isinstance(multipliers, tuple)
        as_tuple = (lambda t: (t,)) if single else tuple
        out = custom(*(as_tuple(multipliers), as_tuple(inputs), as_tuple(baselines))[:n])
        out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        want = len(as_tuple(multipliers))
        if len(out) != want:
            raise ValueError(
                f"custom_attribution_func returned {len(out)} tensors for {want} attributed input(s); "
                "it must return one attribution tensor per input"
            )
        return out[0] if single else out

    return fn


def _with_shap_delta(method: Callable, return_delta: bool) -> Callable:
    """``fn(*args) -> (attributions, delta or None)`` for a DeepLiftShap method: xattr's (B, N)
    deltas of a baseline distribution as Captum's (B * N,), example-major; a list of them for a
    list of layers (xattr's tuple), as LayerDeepLift's."""

    def fn(*args):
        if not return_delta:
            return method(*args), None
        attr, delta = method(*args)
        return attr, ([d.reshape(-1) for d in delta] if isinstance(delta, tuple) else delta.reshape(-1))

    return fn


# ----------------------------------------------------------------------------- guided backprop, deconvolution


class GuidedBackprop(GradientAttribution):
    """``GuidedBackprop(model)``: the gradient with ReLUs passing positive gradients of active units.

    xattr: ``xattr.guided_backprop(xattr.target(model, target), argnums=...)``; every ReLU spelling
    gets the rule (Captum's only ``nn.ReLU`` modules).
    """

    def __init__(self, model: Callable) -> None:
        super().__init__(model)
        self.model = model

    def attribute(self, inputs, target=None, additional_forward_args=None):
        return self._run(inputs, target, additional_forward_args)

    def _functional(self, call: Call):
        return _no_delta(self._method(call.model, argnums=call.argnums)), ()

    _method = staticmethod(xattr.guided_backprop)


class Deconvolution(GuidedBackprop):
    """``Deconvolution(model)``: the gradient with each ReLU's backward replaced by a ReLU of the gradient.

    xattr: ``xattr.deconvolution(xattr.target(model, target), argnums=...)``.
    """

    _method = staticmethod(xattr.deconvolution)


class GuidedGradCam(GradientAttribution):
    """``GuidedGradCam(model, layer, device_ids=None)``: guided backprop times the upsampled Grad-CAM.

    xattr: ``xattr.guided_grad_cam(xattr.at_layer(xattr.target(model, target), layer,
    inputs=attribute_to_layer_input), mode=interpolate_mode)``, written out here (``grad_cam``
    times ``guided_backprop``, resized with ``upsample``) to check each input: as in Captum, an
    input the map cannot be resized to (not ``(B, C, *spatial)`` with the layer's number of
    spatial dims) gets an empty tensor and a warning. ``device_ids`` is accepted and ignored.
    """

    def __init__(self, model: Callable, layer: nn.Module, device_ids=None) -> None:
        super().__init__(model)
        self.layer = layer
        self.device_ids = device_ids  # ignored

    def attribute(self, inputs, target=None, additional_forward_args=None, interpolate_mode: str = "nearest",
                  attribute_to_layer_input: bool = False):  # fmt: skip
        return self._run(
            inputs, target, additional_forward_args, interpolate_mode=interpolate_mode,
            attribute_to_layer_input=attribute_to_layer_input,
        )  # fmt: skip

    def _functional(self, call: Call, *, interpolate_mode="nearest", attribute_to_layer_input=False):
        split = xattr.at_layer(call.model, self.layer, inputs=attribute_to_layer_input)
        cam = xattr.grad_cam(split)  # relu=True, summed over channels, as Captum's GuidedGradCam
        guided = xattr.guided_backprop(call.model, argnums=call.argnums)

        def fn(*args):
            heat = cam(*args)
            if isinstance(heat, tuple):
                if len(heat) != 1:
                    raise ValueError("GuidedGradCam needs a layer with one output (or one input), as in Captum")
                heat = heat[0]
            out = []
            for g in guided(*args):
                if g.ndim == heat.ndim and g.ndim > 2:
                    out.append(g * xattr.upsample(heat, tuple(g.shape[2:]), mode=interpolate_mode))
                else:
                    warnings.warn(
                        f"GuidedGradCam: the layer's map {tuple(heat.shape)} cannot be resized to an input of shape "
                        f"{tuple(g.shape)}; returning an empty tensor for it (Captum's behaviour)",
                        stacklevel=4,
                    )
                    out.append(torch.empty(0, dtype=g.dtype, device=g.device))
            return tuple(out), None

        return fn, ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.forward_func!r}, {self.layer!r})"


# ----------------------------------------------------------------------------- DeepLift, DeepLift SHAP


class DeepLift(GradientAttribution):
    """``DeepLift(model, multiply_by_inputs=True, eps=1e-10)``: the Rescale rule.

    xattr: ``xattr.deep_lift(xattr.target(model, target), baselines=..., argnums=...,
    multiply_by_inputs=..., attribution_func=custom_attribution_func, eps=...,
    return_delta=return_convergence_delta)``; the delta is ``sum(attributions) - (f(x) - f(b))``,
    one per example.
    """

    def __init__(self, model: Callable, multiply_by_inputs: bool = True, eps: float = 1e-10) -> None:
        super().__init__(model)
        self.model = model
        self.eps = eps
        self._multiply_by_inputs = multiply_by_inputs

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None,
                  return_convergence_delta: bool = False, custom_attribution_func=None):  # fmt: skip
        return self._run(
            inputs, target, additional_forward_args, baselines=baselines,
            return_convergence_delta=return_convergence_delta, custom_attribution_func=custom_attribution_func,
        )  # fmt: skip

    def _functional(self, call: Call, *, baselines=None, return_convergence_delta=False, custom_attribution_func=None):
        bases = call.baselines(baselines)
        dl = xattr.deep_lift(
            call.model, argnums=call.argnums, multiply_by_inputs=self._multiply_by_inputs,
            attribution_func=_attribution_func(custom_attribution_func), eps=self.eps,
            return_delta=return_convergence_delta,
        )  # fmt: skip
        if getattr(self, "_sum_checked", False):  # NOTE: [Summation-to-delta checked once]: per DeepLift object
            dl.sum_unchecked.clear()
        self._sum_checked = True
        k = len(bases)

        def fn(*args):  # (*inputs, *additional_forward_args, *baselines): a noise tunnel folds per-example baselines
            out = dl(*args[:-k], baselines=args[-k:])
            return out if return_convergence_delta else (out, None)

        return fn, bases

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs


class DeepLiftShap(DeepLift):
    """``DeepLiftShap(model, multiply_by_inputs=True)``: DeepLift averaged over a baseline distribution.

    xattr: ``xattr.deep_lift_shap(xattr.target(model, target), baselines=dist, argnums=...,
    multiply_by_inputs=..., attribution_func=custom_attribution_func, return_delta=...)``.
    ``baselines`` is a tensor (N, ...), a tuple of them, or a callable returning one (Captum's
    forms); the delta is one per (example, baseline) pair, example-major (B * N,) as in Captum.
    """

    def __init__(self, model: Callable, multiply_by_inputs: bool = True) -> None:
        super().__init__(model, multiply_by_inputs)

    def attribute(self, inputs, baselines, target=None, additional_forward_args=None,
                  return_convergence_delta: bool = False, custom_attribution_func=None):  # fmt: skip
        return self._run(
            inputs, target, additional_forward_args, baselines=baselines,
            return_convergence_delta=return_convergence_delta, custom_attribution_func=custom_attribution_func,
        )  # fmt: skip

    def _functional(self, call: Call, *, baselines, return_convergence_delta=False, custom_attribution_func=None):
        dls = xattr.deep_lift_shap(
            call.model, baselines=call.distribution(baselines), argnums=call.argnums,
            multiply_by_inputs=self._multiply_by_inputs, attribution_func=_attribution_func(custom_attribution_func),
            eps=self.eps, return_delta=return_convergence_delta,
        )  # fmt: skip

        return _with_shap_delta(dls, return_convergence_delta), ()


# ----------------------------------------------------------------------------- layer DeepLift


class LayerDeepLift(LayerAttribution, GradientAttribution):
    """``LayerDeepLift(model, layer, multiply_by_inputs=True)``: DeepLift at a layer.

    xattr: ``xattr.layer_deep_lift(xattr.at_layer(xattr.target(model, target), layer,
    inputs=attribute_to_layer_input), baselines=..., argnums=..., multiply_by_inputs=...,
    attribution_func=custom_attribution_func, return_delta=...)``: ``(h - h_ref) * m_h``. The
    result has the layer's structure. Captum's constructor has no ``device_ids`` here;
    ``call_index`` (keyword, xattr only) picks the call of a module used more than once.
    """

    def __init__(self, model: Callable, layer, multiply_by_inputs: bool = True, *, call_index=None) -> None:
        super().__init__(model, layer, None, call_index=call_index)
        self.model = model
        self.eps = 1e-10  # Captum's default; its layer classes take no eps
        self._multiply_by_inputs = multiply_by_inputs

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None,
                  return_convergence_delta: bool = False, attribute_to_layer_input: bool = False,
                  custom_attribution_func=None, grad_kwargs=None):  # fmt: skip
        return self._run(
            inputs, target, additional_forward_args, grad_kwargs, baselines=baselines,
            return_convergence_delta=return_convergence_delta, attribute_to_layer_input=attribute_to_layer_input,
            custom_attribution_func=custom_attribution_func,
        )  # fmt: skip

    def _functional(self, call: Call, *, baselines=None, return_convergence_delta=False, attribute_to_layer_input=False,
                    custom_attribution_func=None):  # fmt: skip
        bases = call.baselines(baselines)
        ldl = xattr.layer_deep_lift(
            self._split(call, attribute_to_layer_input), argnums=call.argnums,
            multiply_by_inputs=self._multiply_by_inputs, attribution_func=_attribution_func(custom_attribution_func),
            eps=self.eps, return_delta=return_convergence_delta,
        )  # fmt: skip
        k = len(bases)

        several = isinstance(self.layer, (list, tuple))

        def fn(*args):  # (*inputs, *additional_forward_args, *baselines)
            out = ldl(*args[:-k], baselines=args[-k:])
            if not return_convergence_delta:
                return out, None
            attrs, delta = out
            return attrs, (list(delta) if several else delta)  # a list of deltas for a list of layers, as LayerLRP's

        return fn, bases

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs


class LayerDeepLiftShap(LayerDeepLift):
    """``LayerDeepLiftShap(model, layer, multiply_by_inputs=True)``: layer DeepLift over a baseline distribution.

    xattr: ``xattr.layer_deep_lift_shap(split, baselines=dist, ...)``; deltas (B * N,),
    example-major, as Captum's. ``grad_kwargs`` is not a keyword here (nor in Captum).
    """

    def attribute(self, inputs, baselines, target=None, additional_forward_args=None,
                  return_convergence_delta: bool = False, attribute_to_layer_input: bool = False,
                  custom_attribution_func=None):  # fmt: skip
        return self._run(
            inputs, target, additional_forward_args, baselines=baselines,
            return_convergence_delta=return_convergence_delta, attribute_to_layer_input=attribute_to_layer_input,
            custom_attribution_func=custom_attribution_func,
        )  # fmt: skip

    def _functional(self, call: Call, *, baselines, return_convergence_delta=False, attribute_to_layer_input=False,
                    custom_attribution_func=None):  # fmt: skip
        ldls = xattr.layer_deep_lift_shap(
            self._split(call, attribute_to_layer_input), baselines=call.distribution(baselines), argnums=call.argnums,
            multiply_by_inputs=self._multiply_by_inputs, attribution_func=_attribution_func(custom_attribution_func),
            eps=self.eps, return_delta=return_convergence_delta,
        )  # fmt: skip

        return _with_shap_delta(ldls, return_convergence_delta), ()


# ----------------------------------------------------------------------------- neuron variants


class NeuronDeepLift(_NeuronAttribution, GradientAttribution):
    """``NeuronDeepLift(model, layer, multiply_by_inputs=True)``: DeepLift of one neuron.

    xattr: ``xattr.deep_lift(xattr.neuron(xattr.at_layer(model, layer,
    inputs=attribute_to_neuron_input), neuron_selector), baselines=...)``: the `DeepLift` adapter
    run on the neuron in place of the model. No convergence delta (as in Captum).
    """

    def __init__(self, model: Callable, layer: nn.Module, multiply_by_inputs: bool = True) -> None:
        super().__init__(model, layer, None, multiply_by_inputs)

    def attribute(self, inputs, neuron_selector, baselines=None, additional_forward_args=None,
                  attribute_to_neuron_input: bool = False, custom_attribution_func=None):  # fmt: skip
        return self._run(
            inputs, None, additional_forward_args, neuron_selector=neuron_selector, baselines=baselines,
            attribute_to_neuron_input=attribute_to_neuron_input, custom_attribution_func=custom_attribution_func,
        )  # fmt: skip

    _inner = DeepLift

    def _functional(self, call: Call, *, neuron_selector, attribute_to_neuron_input=False, **keywords):
        call = self._neuron_call(call, neuron_selector, attribute_to_neuron_input)
        return self._inner(call.model, self._multiply_by_inputs)._functional(call, **keywords)


class NeuronDeepLiftShap(NeuronDeepLift):
    """``NeuronDeepLiftShap(model, layer, multiply_by_inputs=True)``: DeepLift SHAP of one neuron.

    xattr: ``xattr.deep_lift_shap(xattr.neuron(xattr.at_layer(model, layer), neuron_selector),
    baselines=dist)``. No convergence delta (as in Captum).
    """

    def attribute(self, inputs, neuron_selector, baselines, additional_forward_args=None,
                  attribute_to_neuron_input: bool = False, custom_attribution_func=None):  # fmt: skip
        return super().attribute(
            inputs, neuron_selector, baselines, additional_forward_args, attribute_to_neuron_input,
            custom_attribution_func,
        )  # fmt: skip

    _inner = DeepLiftShap


class NeuronGuidedBackprop(_NeuronAttribution, GradientAttribution):
    """``NeuronGuidedBackprop(model, layer, device_ids=None)``: guided backprop of one neuron.

    xattr: ``xattr.guided_backprop(xattr.neuron(xattr.at_layer(model, layer,
    inputs=attribute_to_neuron_input), neuron_selector))``. ``device_ids`` is ignored.
    """

    _inner = GuidedBackprop

    def __init__(self, model: Callable, layer: nn.Module, device_ids=None) -> None:
        super().__init__(model, layer, device_ids, multiply_by_inputs=False)

    def attribute(self, inputs, neuron_selector, additional_forward_args=None, attribute_to_neuron_input: bool = False):
        return self._run(
            inputs, None, additional_forward_args, neuron_selector=neuron_selector,
            attribute_to_neuron_input=attribute_to_neuron_input,
        )  # fmt: skip

    def _functional(self, call: Call, *, neuron_selector, attribute_to_neuron_input=False):
        call = self._neuron_call(call, neuron_selector, attribute_to_neuron_input)
        return self._inner(call.model)._functional(call)


class NeuronDeconvolution(NeuronGuidedBackprop):
    """``NeuronDeconvolution(model, layer, device_ids=None)``: deconvolution of one neuron.

    xattr: ``xattr.deconvolution(xattr.neuron(xattr.at_layer(model, layer), neuron_selector))``.
    """

    _inner = Deconvolution


__all__ = [
    "DeepLift",
    "DeepLiftShap",
    "Deconvolution",
    "GuidedBackprop",
    "GuidedGradCam",
    "LayerDeepLift",
    "LayerDeepLiftShap",
    "NeuronDeconvolution",
    "NeuronDeepLift",
    "NeuronDeepLiftShap",
    "NeuronGuidedBackprop",
]
