"""Captum's perturbation classes as thin adapters over xattr's perturbation methods.

FeatureAblation, Occlusion, FeaturePermutation, ShapleyValueSampling, ShapleyValues,
LayerFeatureAblation, LayerFeaturePermutation and NeuronFeatureAblation keep Captum 0.9's
constructors, ``attribute`` keywords, defaults and return conventions (tensor in -> tensor out,
tuple in -> tuple out; one row of attributions for a model returning one number per batch).
The surrogate classes (Lime, LimeBase, KernelShap) are in surrogate.py.

Feature masks are Captum's: one int tensor per input, broadcastable to it, where the same id
in two tensors is one feature (Captum 0.9's cross-tensor masks, xattr's meaning too). Ids need
not be contiguous: they are renumbered 0..F-1 in increasing order before xattr sees them, so
unused ids cost nothing. ``perturbations_per_eval`` is honoured as Captum's cap on the model
rows per call (``chunk_size = perturbations_per_eval * batch``) when above 1; at Captum's
default of 1, xattr batches the copies by its memory budget (NOTE: [Perturbed copies in one
call] in xattr/_src/perturb.py). The random classes take xattr's ``generator=`` keyword.
"""

from __future__ import annotations

from typing import Callable

import torch

import xattr
from xattr._src import tree as T
from xattr._src.checks import warn_if_training
from xattr._src.masks import features, scatter_features
from xattr._src.perturb import Coalitions, evaluate, outputs_at

from ._convert import Call
from ._futures import FutureAttribution
from .bases import PerturbationAttribution
from .layer import LayerAttribution
from .neuron import _NeuronAttribution


def chunk_rows(perturbations_per_eval, batch: int) -> int | None:
    """Captum's perturbations_per_eval as xattr's chunk_size (None: xattr's memory budget)."""
    if isinstance(perturbations_per_eval, bool) or not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
        raise ValueError(f"perturbations_per_eval must be an int >= 1, got {perturbations_per_eval!r}")
    return None if perturbations_per_eval == 1 else perturbations_per_eval * batch


def _is_int(m) -> bool:
    return isinstance(m, torch.Tensor) and not (m.is_floating_point() or m.is_complex() or m.dtype == torch.bool)


def compact_mask(feature_mask):
    """Captum's feature_mask (None, a tensor, or a tuple of them) with its ids renumbered 0..F-1.

    The relative order of the ids is kept and the structure too; a mask that is not integer is
    returned unchanged, for xattr to reject with its message.
    """
    if feature_mask is None:
        return None
    masks = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
    if not all(_is_int(m) for m in masks) or not any(m.numel() for m in masks):
        return feature_mask
    ids = torch.unique(torch.cat([m.reshape(-1).long().cpu() for m in masks]))
    out = tuple(torch.searchsorted(ids.to(m.device), m.long().contiguous()) for m in masks)
    return out if isinstance(feature_mask, tuple) else out[0]


def _unwrap(value):
    """A one-element tuple (Captum's form for a one-tensor layer) -> its element."""
    return value[0] if isinstance(value, tuple) and len(value) == 1 else value


def _no_delta(fn):
    return lambda *args: (fn(*args), None)


class _Perturbation(PerturbationAttribution):
    """Captum's PerturbationAttribution: no convergence delta, multiplies_by_inputs True."""

    def attribute_future(self, *args, **kwargs):
        raise NotImplementedError(
            f"{type(self).__name__}.attribute_future is not provided (nor by Captum); use attribute "
            "(FeatureAblation, FeaturePermutation and the Shapley classes take a model returning futures)"
        )


class FeatureAblation(FutureAttribution, _Perturbation):
    """``FeatureAblation(forward_func)``: the output's drop when a feature takes its baseline.

    xattr: ``xattr.feature_ablation(xattr.target(f, t), baselines=b, feature_mask=m,
    argnums=(0, .., n-1), chunk_size=perturbations_per_eval * B)``. Exactly Captum's numbers;
    ``**kwargs`` are accepted and ignored, as Captum does.
    """

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, feature_mask=None,
                  perturbations_per_eval: int = 1, show_progress: bool = False, **kwargs):  # fmt: skip
        return self._run(inputs, target, additional_forward_args, baselines=baselines, feature_mask=feature_mask,
                         perturbations_per_eval=perturbations_per_eval, show_progress=show_progress)  # fmt: skip

    def _functional(self, call: Call, *, baselines=None, feature_mask=None, perturbations_per_eval=1, show_progress=False):
        fn = xattr.feature_ablation(
            call.model, baselines=call.baselines(baselines), feature_mask=compact_mask(feature_mask),
            argnums=call.argnums, chunk_size=chunk_rows(perturbations_per_eval, call.batch), show_progress=show_progress,
        )  # fmt: skip
        return _no_delta(fn), ()


def _window(shape) -> tuple:
    if not (isinstance(shape, (tuple, list, torch.Size)) and all(isinstance(i, int) and not isinstance(i, bool) for i in shape)):
        raise TypeError(f"a sliding window shape must be a tuple of ints (one per input dim after the batch), got {shape!r}")
    return tuple(shape)


class Occlusion(_Perturbation):
    """``Occlusion(forward_func)``: a sliding window set to the baseline, drops averaged per element.

    xattr: ``xattr.occlusion(xattr.target(f, t), sliding_window_shapes=w, strides=s,
    baselines=b, argnums=(0, .., n-1), chunk_size=perturbations_per_eval * B)``; Captum's window
    positions, its numbers. Captum divides in float32; xattr keeps the inputs' dtype.
    """

    def attribute(self, inputs, sliding_window_shapes, strides=None, baselines=None, target=None,
                  additional_forward_args=None, perturbations_per_eval: int = 1, show_progress: bool = False):  # fmt: skip
        return self._run(
            inputs, target, additional_forward_args, sliding_window_shapes=sliding_window_shapes, strides=strides,
            baselines=baselines, perturbations_per_eval=perturbations_per_eval, show_progress=show_progress,
        )  # fmt: skip

    def _functional(self, call: Call, *, sliding_window_shapes, strides=None, baselines=None, perturbations_per_eval=1,
                    show_progress=False):  # fmt: skip
        n = len(call.inputs)
        shapes = sliding_window_shapes
        if isinstance(shapes, (tuple, list)) and shapes and isinstance(shapes[0], int):
            shapes = (shapes,)  # one input's window
        if not isinstance(shapes, (tuple, list)) or len(shapes) != n:
            raise ValueError(f"sliding_window_shapes must give one window per input tensor ({n}), got {sliding_window_shapes!r}")
        shapes = [_window(w) for w in shapes]
        steps = [1] * n if strides is None else strides
        if n == 1 and not (isinstance(steps, (tuple, list)) and len(steps) == 1):
            steps = [steps]
        if not isinstance(steps, (tuple, list)) or len(steps) != n:
            raise ValueError(f"strides must give one entry per input tensor ({n}) for several inputs, got {strides!r}")
        # a window spanning a whole dim has one position there: any stride is fine (Captum's rule)
        steps = [_fit_stride(st, w, x.shape[1:]) for st, w, x in zip(steps, shapes, call.inputs)]
        fn = xattr.occlusion(
            call.model, sliding_window_shapes=shapes[0] if n == 1 else tuple(shapes),
            strides=steps[0] if n == 1 else tuple(steps), baselines=call.baselines(baselines), argnums=call.argnums,
            chunk_size=chunk_rows(perturbations_per_eval, call.batch), show_progress=show_progress,
        )  # fmt: skip
        return _no_delta(fn), ()


def _fit_stride(stride, window: tuple, shape) -> tuple:
    per_dim = (stride,) * len(window) if isinstance(stride, int) and not isinstance(stride, bool) else stride
    if not isinstance(per_dim, (tuple, list)) or len(per_dim) != len(window):
        raise ValueError(f"stride {stride!r} must be an int or a tuple with one entry per input dim {tuple(shape)}")
    return tuple(min(st, w) if w == s else st for st, w, s in zip(per_dim, window, shape))


def _permute_feature(x: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
    """Captum's default ``perm_func``: the masked elements from a random reordering of the batch.

    The reordering is uniformly random among the non-identity ones (torch's global generator).
    As the default of ``FeaturePermutation`` it stands for xattr's own draws (``generator=``).
    """
    n = x.shape[0]
    if n < 2:
        raise ValueError("cannot permute a feature across a batch of one example")
    ident = torch.arange(n, device=x.device)
    perm = ident
    while bool((perm == ident).all()):
        perm = torch.randperm(n, device=x.device)
    return torch.where(feature_mask.bool(), x[perm], x)


def _default_perm(perm_func) -> bool:
    """Ours, or Captum's own default (same name, same meaning): xattr's draws."""
    return perm_func is _permute_feature or (
        getattr(perm_func, "__name__", None) == "_permute_feature"
        and getattr(perm_func, "__module__", "").startswith("captum.")
    )


class FeaturePermutation(FutureAttribution, _Perturbation):
    """``FeaturePermutation(forward_func, perm_func=_permute_feature)``: permutation importance.

    With the default ``perm_func``: ``xattr.feature_permutation(xattr.target(f, t),
    feature_mask=m, argnums=..., generator=generator)``; the permutations are xattr's draws (one
    per feature, never the identity, the same one for every tensor a feature spans). With your
    own ``perm_func(x, mask) -> x'`` the copy for feature j is ``perm_func(x_i, mask_i == j)``
    for each input i holding feature j (the other inputs unchanged), as in Captum, so the same
    ``perm_func`` gives Captum's numbers exactly. A batch of one raises (Captum logs a warning and
    returns zeros).
    """

    stochastic = True

    def __init__(self, forward_func: Callable, perm_func: Callable = _permute_feature) -> None:
        super().__init__(forward_func)
        self.perm_func = perm_func

    def attribute(self, inputs, target=None, additional_forward_args=None, feature_mask=None,
                  perturbations_per_eval: int = 1, show_progress: bool = False, *, generator=None, **kwargs):  # fmt: skip
        return self._run(inputs, target, additional_forward_args, feature_mask=feature_mask, generator=generator,
                         perturbations_per_eval=perturbations_per_eval, show_progress=show_progress)  # fmt: skip

    def _functional(self, call: Call, *, feature_mask=None, perturbations_per_eval=1, show_progress=False, generator=None):
        chunk, mask = chunk_rows(perturbations_per_eval, call.batch), compact_mask(feature_mask)
        if _default_perm(self.perm_func):
            fn = xattr.feature_permutation(call.model, feature_mask=mask, argnums=call.argnums, generator=generator,
                                           chunk_size=chunk, show_progress=show_progress)  # fmt: skip
        else:
            fn = _custom_permutation(call.model, self.perm_func, mask, call.argnums, chunk, show_progress)
        return _no_delta(fn), ()


class _PermutedCopies:
    """Copy j of one input: ``perm_func(x, mask == j)`` where the input holds feature j, else x;
    made chunk by chunk (``self[s:e]`` is (e - s, B, ...)), as the engine's per-copy baselines."""

    def __init__(self, x, mask, present, perm_func):
        self.x, self.mask, self.present, self.perm_func = x, mask, present, perm_func

    def __getitem__(self, sl: slice) -> torch.Tensor:
        rows = []
        for j in range(sl.start, sl.stop):
            y = self.perm_func(self.x, self.mask == j) if self.present[j] else self.x
            if not isinstance(y, torch.Tensor) or y.shape != self.x.shape:
                raise ValueError(f"perm_func must return a tensor shaped like its input {tuple(self.x.shape)}")
            rows.append(y.to(self.x.dtype))
        return torch.stack(rows)


def _custom_permutation(model, perm_func, feature_mask, argnums, chunk_size, show_progress):
    """Feature permutation with Captum's ``perm_func``: every copy takes the function's output."""
    k = len(argnums)

    def fn(*args):
        warn_if_training(model)
        selected = args[:k]
        batch = T.batch_size(selected)
        if batch < 2:
            raise ValueError(f"FeaturePermutation shuffles features across the batch: it needs at least 2 examples, got {batch}")
        masks, n = features(selected, feature_mask)
        out, aggregate = outputs_at(model, args, batch)
        base = tuple(
            _PermutedCopies(x, m, torch.zeros(n, dtype=torch.bool).index_fill_(0, m.unique().cpu(), True).tolist(), perm_func)
            for x, m in zip(selected, masks)
        )  # fmt: skip
        device = masks[0].device
        replace_all = Coalitions(n, lambda s, e: torch.zeros((1, e - s, n), dtype=torch.bool, device=device))
        with torch.no_grad():
            outs = evaluate(model, args, tuple(range(k)), masks=masks, baselines=base, coalitions=replace_all,
                            copy_baselines=True, aggregate=aggregate, chunk_size=chunk_size,
                            show_progress=show_progress)  # fmt: skip
        diff = out[:, None] - outs
        diff = diff.movedim(2, 1) if diff.ndim == 3 else diff
        return scatter_features(diff, masks, selected)

    return fn


class ShapleyValueSampling(FutureAttribution, _Perturbation):
    """``ShapleyValueSampling(forward_func)``: Shapley values from random feature orders.

    xattr: ``xattr.shapley_value_sampling(xattr.target(f, t), n_samples=n, baselines=b,
    feature_mask=m, argnums=..., generator=generator)``. Unbiased like Captum's; the orders
    are xattr's draws (per example; Captum shares one order across the batch), so results
    agree in distribution.
    """

    stochastic = True

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, feature_mask=None,
                  n_samples: int = 25, perturbations_per_eval: int = 1, show_progress: bool = False, *,
                  generator=None):  # fmt: skip
        return self._run(
            inputs, target, additional_forward_args, baselines=baselines, feature_mask=feature_mask, n_samples=n_samples,
            perturbations_per_eval=perturbations_per_eval, show_progress=show_progress, generator=generator,
        )  # fmt: skip

    def _functional(self, call: Call, *, baselines=None, feature_mask=None, n_samples=25, perturbations_per_eval=1,
                    show_progress=False, generator=None):  # fmt: skip
        fn = xattr.shapley_value_sampling(
            call.model, n_samples=n_samples, baselines=call.baselines(baselines), feature_mask=compact_mask(feature_mask),
            argnums=call.argnums, generator=generator, chunk_size=chunk_rows(perturbations_per_eval, call.batch),
            show_progress=show_progress,
        )  # fmt: skip
        return _no_delta(fn), ()


class ShapleyValues(FutureAttribution, _Perturbation):
    """``ShapleyValues(forward_func)``: exact Shapley values over every coalition.

    xattr: ``xattr.shapley_values(xattr.target(f, t), baselines=b, feature_mask=m, argnums=...)``:
    2^F - 1 perturbed copies where Captum runs all F! orders (F * F! copies); the same numbers.
    More than 20 features raise (group them with ``feature_mask``).
    """

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, feature_mask=None,
                  perturbations_per_eval: int = 1, show_progress: bool = False):  # fmt: skip
        return self._run(inputs, target, additional_forward_args, baselines=baselines, feature_mask=feature_mask,
                         perturbations_per_eval=perturbations_per_eval, show_progress=show_progress)  # fmt: skip

    def _functional(self, call: Call, *, baselines=None, feature_mask=None, perturbations_per_eval=1, show_progress=False):
        fn = xattr.shapley_values(
            call.model, baselines=call.baselines(baselines), feature_mask=compact_mask(feature_mask),
            argnums=call.argnums, chunk_size=chunk_rows(perturbations_per_eval, call.batch), show_progress=show_progress,
        )  # fmt: skip
        return _no_delta(fn), ()


class _LayerPerturbation(LayerAttribution, PerturbationAttribution):
    pass


class LayerFeatureAblation(_LayerPerturbation):
    """``LayerFeatureAblation(forward_func, layer, device_ids=None)``: ablate units of a layer.

    xattr: ``xattr.layer_feature_ablation(xattr.at_layer(xattr.target(f, t), layer,
    inputs=attribute_to_layer_input), layer_baselines=b, layer_mask=m)``; Captum's numbers, a
    tuple for a layer with several tensors. ``device_ids`` is accepted and ignored.
    """

    def attribute(self, inputs, layer_baselines=None, target=None, additional_forward_args=None, layer_mask=None,
                  attribute_to_layer_input: bool = False, perturbations_per_eval: int = 1):  # fmt: skip
        return self._run(
            inputs, target, additional_forward_args, None, layer_baselines=layer_baselines, layer_mask=layer_mask,
            attribute_to_layer_input=attribute_to_layer_input, perturbations_per_eval=perturbations_per_eval,
        )  # fmt: skip

    def _functional(self, call: Call, *, layer_baselines=None, layer_mask=None, attribute_to_layer_input=False,
                    perturbations_per_eval=1):  # fmt: skip
        split = self._split(call, attribute_to_layer_input)
        base = 0.0 if layer_baselines is None else _unwrap(layer_baselines)
        fn = xattr.layer_feature_ablation(split, layer_baselines=base, layer_mask=_unwrap(compact_mask(layer_mask)),
                                          chunk_size=chunk_rows(perturbations_per_eval, call.batch))  # fmt: skip
        return _no_delta(fn), ()


class LayerFeaturePermutation(_LayerPerturbation):
    """``LayerFeaturePermutation(forward_func, layer, device_ids=None)``: shuffle units of a layer.

    xattr: ``xattr.layer_feature_permutation(xattr.at_layer(xattr.target(f, t), layer),
    layer_mask=m, generator=generator)``; the permutations are xattr's draws (never the
    identity, so a batch of two always swaps: Captum's numbers exactly).
    """

    stochastic = True

    def attribute(self, inputs, target=None, additional_forward_args=None, layer_mask=None,
                  perturbations_per_eval: int = 1, *, generator=None):  # fmt: skip
        return self._run(inputs, target, additional_forward_args, None, layer_mask=layer_mask, generator=generator,
                         perturbations_per_eval=perturbations_per_eval)  # fmt: skip

    def _functional(self, call: Call, *, layer_mask=None, perturbations_per_eval=1, generator=None):
        fn = xattr.layer_feature_permutation(
            self._split(call, False), layer_mask=_unwrap(compact_mask(layer_mask)), generator=generator,
            chunk_size=chunk_rows(perturbations_per_eval, call.batch),
        )  # fmt: skip
        return _no_delta(fn), ()


class NeuronFeatureAblation(_NeuronAttribution, PerturbationAttribution):
    """``NeuronFeatureAblation(forward_func, layer, device_ids=None)``: ablate inputs, watch one neuron.

    xattr: ``xattr.feature_ablation(xattr.neuron(xattr.at_layer(f, layer,
    inputs=attribute_to_neuron_input), neuron_selector), baselines=b, feature_mask=m)``; the
    model stops at the layer. Captum's numbers.
    """

    def __init__(self, forward_func: Callable, layer, device_ids=None) -> None:
        super().__init__(forward_func, layer, device_ids)

    def attribute(self, inputs, neuron_selector, baselines=None, additional_forward_args=None, feature_mask=None,
                  attribute_to_neuron_input: bool = False, perturbations_per_eval: int = 1):  # fmt: skip
        return self._run(
            inputs, None, additional_forward_args, neuron_selector=neuron_selector, baselines=baselines,
            feature_mask=feature_mask, attribute_to_neuron_input=attribute_to_neuron_input,
            perturbations_per_eval=perturbations_per_eval,
        )  # fmt: skip

    def _functional(self, call: Call, *, neuron_selector, attribute_to_neuron_input=False, **keywords):
        call = self._neuron_call(call, neuron_selector, attribute_to_neuron_input)
        return FeatureAblation(call.model)._functional(call, **keywords)

    def attribute_future(self, *args, **kwargs):
        raise NotImplementedError("NeuronFeatureAblation.attribute_future: xattr calls the model synchronously")
