"""The attribution methods Captum Insights offered, by its names, as xattr transforms.

Insights' method list (its ``config.py``): Deconvolution, Deep Lift, Guided Backprop, Input X
Gradient, Integrated Gradients (25 steps, Gauss-Legendre, editable), Saliency, Feature Ablation
and Occlusion (window and strides typed in, no default). The baseline each feature's
``baseline_transforms`` make is passed to the methods that take one (integrated gradients,
DeepLift, feature ablation, occlusion), as Insights did.

xattr has every one of them. Names match with or without spaces and in any case ("Integrated
Gradients", "IntegratedGradients", "integrated gradients"); the page shows Insights' spelling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import xattr


def _ints(v):
    """Insights' text boxes for shapes and strides took "1 3 3"; tuples and ints pass through."""
    return tuple(int(i) for i in v.split()) if isinstance(v, str) else v


@dataclass(frozen=True)
class Method:
    build: Callable  # (f, argnums, baselines, kwargs) -> attr_fn
    defaults: dict = field(default_factory=dict)
    gradient: bool = True  # needs floating-point inputs
    required: tuple = ()


def _no_extra(kw):
    """The keywords without Insights' batching knob: xattr batches the copies by its memory budget."""
    return {k: v for k, v in kw.items() if k != "perturbations_per_eval"}


METHODS = {
    "Integrated Gradients": Method(
        lambda f, a, b, kw: xattr.integrated_gradients(f, argnums=a, baselines=b, n_steps=int(kw["n_steps"]), method=kw["method"]),
        {"n_steps": 25, "method": "gausslegendre"},
    ),
    "Deconvolution": Method(lambda f, a, b, kw: xattr.deconvolution(f, argnums=a)),
    "Deep Lift": Method(lambda f, a, b, kw: xattr.deep_lift(f, argnums=a, baselines=b)),
    "Guided Backprop": Method(lambda f, a, b, kw: xattr.guided_backprop(f, argnums=a)),
    "Input X Gradient": Method(lambda f, a, b, kw: xattr.input_x_gradient(f, argnums=a)),
    "Saliency": Method(lambda f, a, b, kw: xattr.saliency(f, argnums=a)),
    "Feature Ablation": Method(
        lambda f, a, b, kw: xattr.feature_ablation(f, argnums=a, baselines=b, **_no_extra(kw)),
        {"perturbations_per_eval": 1, "feature_mask": None}, gradient=False,
    ),
    "Occlusion": Method(
        lambda f, a, b, kw: xattr.occlusion(f, argnums=a, baselines=b, sliding_window_shapes=_ints(kw["sliding_window_shapes"]),
                                            strides=_ints(kw["strides"])),
        {"sliding_window_shapes": None, "strides": 1, "perturbations_per_eval": 1}, gradient=False, required=("sliding_window_shapes",),
    ),
}  # fmt: skip

# Insights' default method (Integrated Gradients) first, then its list's order; Occlusion needs a window
DEFAULT = ("Integrated Gradients", "Deconvolution", "Deep Lift", "Guided Backprop", "Input X Gradient", "Saliency", "Feature Ablation")

_KEYS = {name.replace(" ", "").lower(): name for name in METHODS}


def canonical(name) -> str:
    """Insights' spelling of a method name; ValueError for a method Insights did not offer."""
    key = name.replace(" ", "").replace("_", "").lower() if isinstance(name, str) else None
    if key not in _KEYS:
        raise ValueError(f"AttributionVisualizer: unknown method {name!r}; Insights' methods are {list(METHODS)}")
    return _KEYS[key]


def resolve(methods) -> dict:
    """``methods`` (None, a list of names, or a dict name -> keyword dict) -> name -> full keywords."""
    if methods is None:
        methods = DEFAULT
    if isinstance(methods, str) or not isinstance(methods, (list, tuple, Mapping)) or not methods:
        raise TypeError("AttributionVisualizer: methods must be a non-empty list of Insights' method names, "
                        f"or a dict name -> keyword dict (e.g. {{'Integrated Gradients': {{'n_steps': 50}}}}); got {methods!r}")  # fmt: skip
    items = methods.items() if isinstance(methods, Mapping) else ((m, None) for m in methods)
    out = {}
    for name, kw in items:
        name = canonical(name)
        spec = METHODS[name]
        kw = dict(kw or {})
        unknown = set(kw) - set(spec.defaults)
        if unknown:
            raise ValueError(f"AttributionVisualizer: {name} takes {sorted(spec.defaults) or 'no arguments'}; got {sorted(unknown)}")
        missing = [k for k in spec.required if kw.get(k) is None]
        if missing:
            raise ValueError(f"AttributionVisualizer: {name} needs {missing[0]}= (Insights had no default), e.g. "
                             f"{{'{name}': {{'sliding_window_shapes': (1, 3, 3)}}}}")  # fmt: skip
        out[name] = {**spec.defaults, **kw}
    return out
