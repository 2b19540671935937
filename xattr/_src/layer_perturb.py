"""Perturbation methods at a layer: ablate or shuffle the units of a layer's activation.

NOTE: [Perturbing a layer]
With ``split = at_layer(f, layer)``, ``split.head(h, *args)`` is the model with the layer's
activation replaced by h and the model's own arguments passed through (NOTE: [Splitting a
model at a layer]). A layer perturbation method is the input method applied to the head at
``h = split.act(*args)``, with ``argnums=0``: the units of h are the features, and the model's
arguments travel with the copies as pass-through arguments (tiled, so row r of a call is
still example r % B). That is Captum's LayerFeatureAblation: the layer's output replaced by
the ablated one, the rest of the forward pass (skip connections included) on the original
inputs. ``at_layer(f, layer, inputs=True)`` perturbs the layer's input (Captum's
``attribute_to_layer_input``); a list of layers, a module with several inputs or
``call_index="all"`` give a tuple of activations, attributed as a tree (a mask may share ids
across its tensors). Every copy runs the model's whole forward pass, as Captum's does, unless
the head can be traced and pruned (NOTE: [Traced heads]).

Neuron variants need no function of their own: the input method on ``xattr.neuron(split, idx)``
explains one unit of the layer by perturbing the inputs (Captum's NeuronFeatureAblation is
``xattr.feature_ablation(xattr.neuron(split, idx))``; K neurons at once with
``xattr.outputs``); the model stops at the layer in every call.
"""

from __future__ import annotations

from typing import Any, Callable

from .ablation import feature_ablation, feature_permutation
from .gradients import attribution_fn, model_calls
from .layer_layout import check_rows, first_rows
from .layers import Split, unread_dropped


def _check_split(split, name: str) -> Split:
    if not isinstance(split, Split):
        raise TypeError(f"{name} needs a split model from xattr.at_layer(f, layer), got {type(split).__name__}")
    return split


def _activation(split: Split, args: tuple, method: str):
    with model_calls():
        h = split.act(*args)
        check_rows(split, h, args, first_rows(args), method)  # NOTE: [Batch-first layers]
    return h


def layer_feature_ablation(
    split: Split,
    *,
    layer_baselines: Any = 0.0,
    layer_mask: Any = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool = False,
) -> Callable:
    """Layer feature ablation: ``a_u = f(x) - f(x with unit(s) u of the layer set to the baseline)``.

    Feature ablation of ``split.head`` at the layer's activation ``h = split.act(*args)``
    (NOTE: [Perturbing a layer]); Captum's LayerFeatureAblation. G groups of units cost G
    perturbed copies (``G * B`` rows of the model after the layer, or of the whole model when
    the head cannot be pruned).

    Args:
      split: ``xattr.at_layer(f, layer)`` (``inputs=True`` for the layer's input).
      layer_baselines: what an ablated unit becomes: a number, a tensor broadcastable to h
        (one per example or shared), or a tree like h; also a call keyword.
      layer_mask: int group ids per unit, broadcastable to h (``(1, ...)`` shared or ``(B, ...)``
        per example; a tree like h), units with one id ablated together; None: every unit
        alone. Also a call keyword.
      chunk_size, memory_budget, show_progress: as for `feature_ablation`.

    Returns:
      ``fn(*args, layer_baselines=..., layer_mask=...)`` shaped like h (a K axis after the
      batch for ``xattr.outputs``; one row for a model returning one number per batch).

    Example:
      >>> split = xattr.at_layer(xattr.target(model, 3), model.conv2)
      >>> attr = xattr.layer_feature_ablation(split)(x)  # like split.act(x)
    """
    split = _check_split(split, "layer_feature_ablation")
    ablate = feature_ablation(split.head, argnums=0, chunk_size=chunk_size, memory_budget=memory_budget,
                              show_progress=show_progress)  # fmt: skip

    def fn(*args, layer_baselines=layer_baselines, layer_mask=layer_mask):
        h = _activation(split, args, "layer_feature_ablation")
        return ablate(h, *unread_dropped(split, h, args), baselines=layer_baselines, feature_mask=layer_mask)

    return attribution_fn(fn, split.model)


def layer_feature_permutation(
    split: Split,
    *,
    layer_mask: Any = None,
    generator=None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool = False,
) -> Callable:
    """Layer feature permutation: each unit (group) of the layer shuffled across the batch.

    ``a_u = f(x) - f(x with unit(s) u of the layer taken from other examples)``: feature
    permutation of ``split.head`` at ``h = split.act(*args)`` (NOTE: [Perturbing a layer]);
    Captum's LayerFeaturePermutation. Needs a batch of at least 2.

    Args:
      split: ``xattr.at_layer(f, layer)``.
      layer_mask: group ids per unit as for `layer_feature_ablation`; also a call keyword.
      generator: int seed, ``torch.Generator`` or None: one permutation of the batch per group.
      chunk_size, memory_budget, show_progress: as for `feature_permutation`.

    Returns:
      ``fn(*args, layer_mask=...)`` shaped like h.

    Example:
      >>> split = xattr.at_layer(xattr.target(model, 3), model.conv2)
      >>> attr = xattr.layer_feature_permutation(split, generator=0)(x)     # like split.act(x)
    """
    split = _check_split(split, "layer_feature_permutation")
    permute = feature_permutation(split.head, argnums=0, generator=generator, chunk_size=chunk_size,
                                  memory_budget=memory_budget, show_progress=show_progress)  # fmt: skip

    def fn(*args, layer_mask=layer_mask):
        h = _activation(split, args, "layer_feature_permutation")
        return permute(h, *unread_dropped(split, h, args), feature_mask=layer_mask)

    return attribution_fn(fn, split.model)
