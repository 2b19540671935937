"""Guided backpropagation, deconvolution and guided Grad-CAM: gradients of the model under
`rules` with a ReLU rule (NOTE: [Intercepting operations]), so they work with ``F.relu``,
in-place and reused ReLUs and the clamp and threshold spellings of ReLU, and compose with
``at_layer`` and ``neuron``:

    xattr.guided_backprop(xattr.neuron(split, idx))            # Captum's NeuronGuidedBackprop

Shared arguments: ``f``, ``argnums`` and ``chunk_size`` as in methods.py.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from . import tree as T
from .checks import warn_if_training
from .guided_rules import Deconv, Guided
from .gradients import attribution_fn, vjp_rows
from .layer_methods import grad_cam, upsample
from .layers import Split
from .rule_limits import differentiable_rules
from .rules import rules


def _ruled_grad(f: Callable, mapping: Mapping, argnums, chunk_size, method: str) -> Callable:
    ruled = rules(f, mapping)
    nums, as_tuple = T.normalize_argnums(argnums)

    def fn(*args):
        warn_if_training(f)
        # NOTE: [Derivatives of rule-based attributions]
        with differentiable_rules(method), T.batch_scope(T.batch_size(T.split_args(args, nums)[0])):
            grads = vjp_rows(ruled, args, nums, chunk_size=chunk_size, method="a rule-based method")[1]
        return grads if as_tuple else grads[0]

    return fn


_RELU_KEYS = (F.relu, torch.clamp, F.threshold)  # the kinds with ReLU spellings (NOTE: [Clamps that are ReLUs])


def guided_backprop(f: Callable, *, argnums: int | Sequence[int] = 0, chunk_size: int | None = None) -> Callable:
    """Guided backpropagation: the gradient with ReLUs passing only positive gradients of active units.

    Springenberg et al. 2015, "Striving for Simplicity". Every ReLU spelling is covered (``nn.ReLU``,
    ``F.relu``, in place, reused, ``x.clamp(min=0)``, ``torch.maximum(x, zeros)``, ``F.threshold(x, 0,
    0)``), unlike Captum's, which skips all but ``nn.ReLU`` modules. A clamp with an upper bound or a
    nonzero lower bound is no ReLU and keeps its gradient (NOTE: [Clamps that are ReLUs]), as does a
    threshold other than (0, 0).

    Example:
      >>> gb = xattr.guided_backprop(xattr.target(model, 3))(x)          # like x
    """
    rule = Guided()
    return attribution_fn(_ruled_grad(f, dict.fromkeys(_RELU_KEYS, rule), argnums, chunk_size, "guided_backprop"), f)


def deconvolution(f: Callable, *, argnums: int | Sequence[int] = 0, chunk_size: int | None = None) -> Callable:
    """Deconvolution: the gradient with each ReLU's backward replaced by a ReLU of the gradient.

    Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks". The same ReLU
    spellings as `guided_backprop` (clamps and thresholds that are ReLUs included).

    Example:
      >>> dc = xattr.deconvolution(xattr.target(model, 3))(x)            # like x
    """
    rule = Deconv()
    return attribution_fn(_ruled_grad(f, dict.fromkeys(_RELU_KEYS, rule), argnums, chunk_size, "deconvolution"), f)


def guided_grad_cam(split: Split, *, argnums: int | Sequence[int] = 0, mode: str = "nearest") -> Callable:
    """Guided Grad-CAM: guided backprop times the layer's Grad-CAM upsampled to the input's size.

    Selvaraju et al. 2017. ``split`` is ``xattr.at_layer(f, conv_layer)``; Grad-CAM's map (ReLU of
    the channel-weighted sum) is resized with ``mode`` over the input's trailing dims.

    Returns:
      ``fn(*args)`` like ``args[argnums]`` (K axis after the batch for ``xattr.outputs``).

    Example:
      >>> ggc = xattr.guided_grad_cam(xattr.at_layer(xattr.target(model, 3), model.conv2))(x)
    """
    cam = grad_cam(split)
    guided = guided_backprop(split.model, argnums=argnums)

    def scale(g, heat):
        if heat.ndim < 3 + int(split.multi_output):
            raise ValueError(f"guided_grad_cam needs a layer with spatial dims (B, C, H, ...); its Grad-CAM map is {tuple(heat.shape)}")
        if g.ndim != heat.ndim:
            raise ValueError(
                f"guided_grad_cam: an input of shape {tuple(g.shape)} has not the layout of the Grad-CAM map "
                f"{tuple(heat.shape)} (batch, [K,] channels, then the same number of spatial dims); "
                "attribute only image-like inputs with argnums"
            )
        return g * upsample(heat, tuple(g.shape[g.ndim - heat.ndim + 2 :]), mode)

    def fn(*args):
        heat = cam(*args)
        return T.tree_map(lambda g: scale(g, heat), guided(*args))

    return attribution_fn(fn, split)
