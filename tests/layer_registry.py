"""LAYER_METHODS_UNDER_TEST: every layer and neuron method, crossed with every invariant in
test_layer_invariants.py (the layer counterpart of registry.py).

A new layer or neuron method enters here once and inherits every invariant test. Each entry's
``make(split, *, chunk_size=None, generator=None, index=None) -> attr_fn`` builds the method
on ``split = xattr.at_layer(xattr.target(model, t), layer)`` with small settings (few steps and
samples: the invariants are exact, so accuracy does not matter here); ``attr_fn(x)`` attributes
the model's first argument. Neuron entries also take ``index``, the neuron (an int or tuple
index into one example's activation, or ``xattr.outputs([...])`` for K neurons at once). Flags
say which invariants apply:

  deterministic  the same inputs always give the same result (no generator involved)
  stochastic     draws random numbers from ``generator`` (an int seed or torch.Generator)
  chunked        the method takes ``chunk_size`` (results must not depend on it)
  complete       sum of attributions == f(x) - f(0) exactly on affine models (zero input
                 baseline); f is the split's model function, or the neuron for neuron entries
  space          "layer": attributions shaped like the activation ``split.act(x)``;
                 "input": shaped like the input x
  neuron         explains a neuron of the layer chosen by ``index`` (K neurons via outputs)
  targets        the result depends on the target, with a K axis for ``xattr.outputs``
  sums_channels  reduces the channel axis (dim 1) of the layer to size 1 (Grad-CAM)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import xattr

from registry import N_SAMPLES, N_STEPS, STDEV, baseline_distribution


@dataclasses.dataclass(frozen=True)
class LayerMethod:
    name: str
    make: Callable[..., Callable]
    deterministic: bool = True
    stochastic: bool = False
    chunked: bool = True
    complete: bool = False
    space: str = "layer"
    neuron: bool = False
    targets: bool = True
    sums_channels: bool = False

    def __repr__(self) -> str:
        return self.name


def _with_distribution(build: Callable[[object], Callable]) -> Callable:
    """attr_fn whose input-space baseline distribution is built from x's shape at call time."""

    def attr_fn(x, *args, **kwargs):
        return build(baseline_distribution(x))(x, *args, **kwargs)

    return attr_fn


# ----------------------------------------------------------------------------- layer methods


def _layer_activation(split, *, chunk_size=None, generator=None, index=None):
    return xattr.layer_activation(split)


def _gxa(split, *, chunk_size=None, generator=None, index=None):
    return xattr.gradient_x_activation(split)


def _grad_cam(split, *, chunk_size=None, generator=None, index=None):
    return xattr.grad_cam(split)


def _lig(split, *, chunk_size=None, generator=None, index=None):
    return xattr.layer_integrated_gradients(split, n_steps=N_STEPS, chunk_size=chunk_size)


def _conductance(split, *, chunk_size=None, generator=None, index=None):
    # riemann_trapezoid: its nodes run from 0 to 1, so conductance is exact on affine models
    return xattr.conductance(split, n_steps=N_STEPS, method="riemann_trapezoid", chunk_size=chunk_size)


def _internal_influence(split, *, chunk_size=None, generator=None, index=None):
    return xattr.internal_influence(split, n_steps=N_STEPS, chunk_size=chunk_size)


def _layer_gradient_shap(split, *, chunk_size=None, generator=None, index=None):
    def build(dist):
        return xattr.layer_gradient_shap(
            split, baselines=dist, n_samples=N_SAMPLES, stdevs=STDEV, generator=generator, chunk_size=chunk_size
        )

    return _with_distribution(build)


def _smoothgrad_lig(split, *, chunk_size=None, generator=None, index=None):
    lig = _lig(split, chunk_size=chunk_size)
    return xattr.smoothgrad(lig, stdevs=STDEV, n_samples=N_SAMPLES, generator=generator, chunk_size=chunk_size)


# ----------------------------------------------------------------------------- neuron methods (compositions)


def _neuron_gradient(split, *, chunk_size=None, generator=None, index=None):
    return xattr.saliency(xattr.neuron(split, index), abs=False, chunk_size=chunk_size)


def _neuron_ig(split, *, chunk_size=None, generator=None, index=None):
    return xattr.integrated_gradients(xattr.neuron(split, index), n_steps=N_STEPS, chunk_size=chunk_size)


def _neuron_gradient_shap(split, *, chunk_size=None, generator=None, index=None):
    def build(dist):
        return xattr.gradient_shap(
            xattr.neuron(split, index), baselines=dist, n_samples=N_SAMPLES, stdevs=STDEV, generator=generator,
            chunk_size=chunk_size,
        )  # fmt: skip

    return _with_distribution(build)


def _neuron_conductance(split, *, chunk_size=None, generator=None, index=None):
    return xattr.neuron_conductance(split, index, n_steps=N_STEPS, chunk_size=chunk_size)


_random = dict(deterministic=False, stochastic=True)
_neuron = dict(neuron=True, space="input")

LAYER_METHODS_UNDER_TEST: list[LayerMethod] = [
    LayerMethod("layer_activation", _layer_activation, chunked=False, targets=False),
    LayerMethod("gradient_x_activation", _gxa, chunked=False),
    LayerMethod("layer_integrated_gradients", _lig, complete=True),
    LayerMethod("conductance", _conductance, complete=True),
    LayerMethod("internal_influence", _internal_influence),
    LayerMethod("grad_cam", _grad_cam, chunked=False, sums_channels=True),
    LayerMethod("layer_gradient_shap", _layer_gradient_shap, **_random),
    LayerMethod("smoothgrad_layer_ig", _smoothgrad_lig, **_random),
    LayerMethod("neuron_gradient", _neuron_gradient, **_neuron),
    LayerMethod("neuron_integrated_gradients", _neuron_ig, complete=True, **_neuron),
    LayerMethod("neuron_gradient_shap", _neuron_gradient_shap, **_random, **_neuron),
    LayerMethod("neuron_conductance", _neuron_conductance, **_neuron),
]

BY_NAME = {m.name: m for m in LAYER_METHODS_UNDER_TEST}


def entries(**flags) -> list[LayerMethod]:
    """Registry entries whose flags have the given values, e.g. ``entries(complete=True)``."""
    return [m for m in LAYER_METHODS_UNDER_TEST if all(getattr(m, k) == v for k, v in flags.items())]


# ----------------------------------------------------------------------------- rule-based methods (rules.py)


def _layer_deep_lift(split, *, chunk_size=None, generator=None, index=None):
    return xattr.layer_deep_lift(split)


def _layer_deep_lift_shap(split, *, chunk_size=None, generator=None, index=None):
    return _with_distribution(lambda dist: xattr.layer_deep_lift_shap(split, baselines=dist))


def _neuron_deep_lift(split, *, chunk_size=None, generator=None, index=None):
    return xattr.deep_lift(xattr.neuron(split, index), chunk_size=chunk_size)


def _neuron_guided_backprop(split, *, chunk_size=None, generator=None, index=None):
    return xattr.guided_backprop(xattr.neuron(split, index), chunk_size=chunk_size)


def _neuron_deconvolution(split, *, chunk_size=None, generator=None, index=None):
    return xattr.deconvolution(xattr.neuron(split, index), chunk_size=chunk_size)


# Layer DeepLift is exact from the zero input baseline at a layer every path crosses (both test
# models' layers are), so complete=True; its SHAP variant averages over a baseline distribution
# (sum = f(x) - mean f(b_k)), so it is not. Neither takes chunk_size (one call of 2B or 2NB rows).
# Guided Grad-CAM is not here: it needs a layer with spatial dims to upsample (the MLP's has none);
# tests/test_deep_lift.py checks its invariants on the CNN.
LAYER_METHODS_UNDER_TEST += [
    LayerMethod("layer_deep_lift", _layer_deep_lift, chunked=False, complete=True),
    LayerMethod("layer_deep_lift_shap", _layer_deep_lift_shap, chunked=False),
    LayerMethod("neuron_deep_lift", _neuron_deep_lift, complete=True, **_neuron),
    LayerMethod("neuron_guided_backprop", _neuron_guided_backprop, **_neuron),
    LayerMethod("neuron_deconvolution", _neuron_deconvolution, **_neuron),
]
BY_NAME = {m.name: m for m in LAYER_METHODS_UNDER_TEST}


# ----------------------------------------------------------------------------- perturbation (layer_perturb.py)


def _layer_feature_ablation(split, *, chunk_size=None, generator=None, index=None):
    return xattr.layer_feature_ablation(split, chunk_size=chunk_size)


def _neuron_feature_ablation(split, *, chunk_size=None, generator=None, index=None):
    return xattr.feature_ablation(xattr.neuron(split, index), chunk_size=chunk_size)


# Layer feature ablation ablates units to a zero *layer* baseline, which is not the layer's value
# at a zero input, so it is not complete in the registry's sense; neuron feature ablation ablates
# input elements to zero, so on affine models the drops sum to n(x) - n(0) (complete). Layer
# feature permutation depends on the rest of the batch (tests/test_ablation.py).
LAYER_METHODS_UNDER_TEST += [
    LayerMethod("layer_feature_ablation", _layer_feature_ablation),
    LayerMethod("neuron_feature_ablation", _neuron_feature_ablation, complete=True, **_neuron),
]
BY_NAME = {m.name: m for m in LAYER_METHODS_UNDER_TEST}
