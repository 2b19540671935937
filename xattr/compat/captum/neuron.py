"""Captum's neuron attribution classes over ``xattr.neuron`` and ``xattr.neuron_conductance``.

Each keeps Captum 0.9's constructor (``forward_func, layer, device_ids=None`` and, where Captum
has it, ``multiply_by_inputs=True``; ``device_ids`` is accepted and ignored), ``attribute``
keywords, defaults and return conventions. NeuronGradient, NeuronIntegratedGradients and
NeuronGradientShap are the input adapters (``Saliency``, ``IntegratedGradients``,
``GradientShap``) run on the neuron's function ``xattr.neuron(xattr.at_layer(f, layer), selector)``
in place of the model: the same composition as the functional API.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

import xattr

from ._convert import Call
from .bases import GradientAttribution, NeuronAttribution
from .gradient import GradientShap, IntegratedGradients, Saliency


def _selector(neuron_selector):
    """Captum's neuron_selector (int, tuple of ints/slices, callable) as an ``xattr.neuron`` index.

    A list indexes as the tuple of its items, as it does in Captum (``[1, 2]`` is the one neuron
    ``(1, 2)``, not two neurons)."""
    if isinstance(neuron_selector, list) and all(isinstance(i, (int, slice)) and not isinstance(i, bool) for i in neuron_selector):
        neuron_selector = tuple(neuron_selector)
    if isinstance(neuron_selector, bool) or not (
        isinstance(neuron_selector, (int, tuple)) or callable(neuron_selector)
    ):
        raise TypeError(
            "neuron_selector must be an int, a tuple of ints/slices (slices are summed) or a callable "
            f"layer_output -> (B,), got {neuron_selector!r}; for several neurons at once use "
            "xattr.neuron(split, xattr.outputs([...]))"
        )
    return neuron_selector


class _NeuronAttribution(NeuronAttribution):
    """Holds ``layer``; ``_split``/``_neuron_call`` put the neuron in place of the model."""

    def __init__(
        self, forward_func: Callable, layer: nn.Module, device_ids=None, multiply_by_inputs: bool = True
    ) -> None:
        super().__init__(forward_func, layer, device_ids)
        self._multiply_by_inputs = multiply_by_inputs

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs

    def _split(self, call: Call, attribute_to_neuron_input: bool):
        return xattr.at_layer(call.model, self.layer, inputs=attribute_to_neuron_input)

    def _neuron_call(self, call: Call, neuron_selector, attribute_to_neuron_input: bool) -> Call:
        neuron = xattr.neuron(self._split(call, attribute_to_neuron_input), _selector(neuron_selector))
        return dataclasses.replace(call, model=neuron)


class NeuronGradient(_NeuronAttribution, GradientAttribution):
    """``NeuronGradient(forward_func, layer, device_ids=None)``: gradients of one neuron.

    xattr: ``xattr.saliency(xattr.neuron(xattr.at_layer(f, layer), selector), abs=False)``.
    """

    def __init__(self, forward_func: Callable, layer: nn.Module, device_ids=None) -> None:
        super().__init__(forward_func, layer, device_ids, multiply_by_inputs=False)

    def attribute(self, inputs, neuron_selector, additional_forward_args=None, attribute_to_neuron_input: bool = False):
        return self._run(
            inputs, None, additional_forward_args, neuron_selector=neuron_selector,
            attribute_to_neuron_input=attribute_to_neuron_input,
        )  # fmt: skip

    def _functional(self, call: Call, *, neuron_selector, attribute_to_neuron_input=False):
        call = self._neuron_call(call, neuron_selector, attribute_to_neuron_input)
        return Saliency(call.model)._functional(call, abs=False)


class NeuronIntegratedGradients(_NeuronAttribution, GradientAttribution):
    """``NeuronIntegratedGradients(forward_func, layer, device_ids=None, multiply_by_inputs=True)``.

    xattr: ``xattr.integrated_gradients(xattr.neuron(xattr.at_layer(f, layer), selector),
    baselines=..., n_steps=..., method=..., chunk_size=internal_batch_size)``.
    ``method="riemann_trapezoid"`` uses exact weights (Captum's times ``n_steps / (n_steps - 1)``).
    """

    def attribute(
        self,
        inputs,
        neuron_selector,
        baselines=None,
        additional_forward_args=None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        attribute_to_neuron_input: bool = False,
    ):
        return self._run(
            inputs, None, additional_forward_args, neuron_selector=neuron_selector, baselines=baselines,
            n_steps=n_steps, method=method, internal_batch_size=internal_batch_size,
            attribute_to_neuron_input=attribute_to_neuron_input,
        )  # fmt: skip

    def _functional(self, call: Call, *, neuron_selector, attribute_to_neuron_input=False, **keywords):
        call = self._neuron_call(call, neuron_selector, attribute_to_neuron_input)
        return IntegratedGradients(call.model, self._multiply_by_inputs)._functional(call, **keywords)


class NeuronGradientShap(_NeuronAttribution, GradientAttribution):
    """``NeuronGradientShap(forward_func, layer, device_ids=None, multiply_by_inputs=True)``.

    xattr: ``xattr.gradient_shap(xattr.neuron(xattr.at_layer(f, layer), selector),
    baselines=dist, n_samples=..., stdevs=..., generator=...)``. Random draws follow
    ``GradientShap``'s (xattr's streams; ``generator=`` is xattr's addition).
    """

    stochastic = True

    def attribute(
        self,
        inputs,
        neuron_selector,
        baselines,
        n_samples: int = 5,
        stdevs=0.0,
        additional_forward_args=None,
        attribute_to_neuron_input: bool = False,
        *,
        generator=None,
    ):
        return self._run(
            inputs, None, additional_forward_args, neuron_selector=neuron_selector, baselines=baselines,
            n_samples=n_samples, stdevs=stdevs, attribute_to_neuron_input=attribute_to_neuron_input,
            generator=generator,
        )  # fmt: skip

    def _functional(self, call: Call, *, neuron_selector, attribute_to_neuron_input=False, **keywords):
        call = self._neuron_call(call, neuron_selector, attribute_to_neuron_input)
        return GradientShap(call.model, self._multiply_by_inputs)._functional(call, **keywords)


class NeuronConductance(_NeuronAttribution, GradientAttribution):
    """``NeuronConductance(forward_func, layer, device_ids=None, multiply_by_inputs=True)``.

    xattr: ``xattr.neuron_conductance(xattr.at_layer(xattr.target(f, target), layer), selector,
    baselines=..., n_steps=..., method=..., chunk_size=internal_batch_size)``. The default
    ``method="riemann_trapezoid"`` uses exact weights: Captum's result is this one times
    ``(n_steps - 1) / n_steps`` (docs/migration.md); the other rules give Captum's numbers.
    """

    def attribute(
        self,
        inputs,
        neuron_selector,
        baselines=None,
        target=None,
        additional_forward_args=None,
        n_steps: int = 50,
        method: str = "riemann_trapezoid",
        internal_batch_size: int | None = None,
        attribute_to_neuron_input: bool = False,
        grad_kwargs=None,
    ):
        if grad_kwargs:
            raise NotImplementedError("grad_kwargs is not supported: xattr takes gradients through torch.func")
        return self._run(
            inputs, target, additional_forward_args, neuron_selector=neuron_selector, baselines=baselines,
            n_steps=n_steps, method=method, internal_batch_size=internal_batch_size,
            attribute_to_neuron_input=attribute_to_neuron_input,
        )  # fmt: skip

    def _functional(self, call: Call, *, neuron_selector, baselines=None, n_steps=50, method="riemann_trapezoid",
                    internal_batch_size=None, attribute_to_neuron_input=False):  # fmt: skip
        bases = call.baselines(baselines)
        cond = xattr.neuron_conductance(
            self._split(call, attribute_to_neuron_input), _selector(neuron_selector), argnums=call.argnums,
            n_steps=n_steps, method=method, chunk_size=internal_batch_size, multiply_by_inputs=self._multiply_by_inputs,
        )  # fmt: skip
        k = len(bases)

        def fn(*args):  # (*inputs, *additional_forward_args, *baselines)
            return cond(*args[:-k], baselines=args[-k:]), None

        return fn, bases
