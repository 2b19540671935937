"""Captum's DataLoaderAttribution: feature ablation of one metric computed over a whole dataloader.

``DataLoaderAttribution(FeatureAblation(model)).attribute(dataloader, ...)`` keeps Captum 0.9's
constructor, keywords, defaults and return conventions, and gives its numbers.

NOTE: [Ablating a feature across a dataloader]
A feature is a group of elements of one example (``feature_mask``, shared by every batch, so the
same feature is set to its baseline in every example of every batch). The quantity explained is
one tensor, the *metric*: the model runs on each batch, ``reduce(accum, output, batch)`` folds
the outputs of the batches together (default: concatenated along dim 0) and ``to_metric(accum)``
(default: the identity) turns the result into the metric. Feature j's attribution is

    metric(original data) - metric(data with feature j at its baseline in every batch)

flattened: ``(metric.numel(), F)`` with ``return_input_shape=False``, otherwise every element of
an attributed input takes its feature's column, ``(metric.numel(), *example_shape)`` per input.

Each traversal of the dataloader evaluates up to ``perturbations_per_pass`` ablations (plus, in
the first one, the unablated data), each with its own ``reduce`` state, so the data is read
``ceil(F / perturbations_per_pass)`` times; ids no mask holds are not evaluated (their column is
0). Within a batch, the k copies of that pass (one per ablated feature) go to the model in one
call of k * B rows when every element passed to the model is a tensor of B rows, and the output
is split back into k outputs of B rows. A model whose output does not have k * B rows (a loss
over the batch) is detected and then called once per copy, as is every model with
``batch_copies=False`` (Captum's calls: the model sees each batch alone, for models whose rows
depend on one another).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from xattr._src.checks import warn_if_training
from xattr._src.progress import progress

from ._convert import Attribution, _captum
from .perturbation import FeatureAblation


class InputRole:
    """What each element of a batch is for (``input_roles``); the values are Captum's."""

    need_attr = 0  # passed to the model and attributed
    need_forward = 1  # passed to the model, not attributed (a pass-through argument)
    no_forward = 2  # not passed to the model (a label); ``reduce`` still receives it


_ROLES = (InputRole.need_attr, InputRole.need_forward, InputRole.no_forward)
_UNABLATED = -1  # the feature id of the original data: no mask element holds it


def _concat(accum, output, inputs):
    """The default ``reduce``: the outputs of every batch, concatenated along dim 0."""
    if accum is None:
        return output
    for value in (accum, output):
        if not isinstance(value, torch.Tensor) or value.ndim == 0:
            raise ValueError(
                "the default reduce concatenates the model's outputs along dim 0, but the model returned "
                f"{_describe(value)}: pass reduce=(accum, output, inputs) -> accum to combine the batches"
            )
    return torch.cat([accum, output])


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _example_shape(x: torch.Tensor) -> tuple:
    return (1, *x.shape[1:])


def _fits(shape, x: torch.Tensor) -> bool:
    """Whether a tensor of this shape broadcasts to one example of x, ``(1, *x.shape[1:])``."""
    one = _example_shape(x)
    try:
        return tuple(torch.broadcast_shapes(tuple(shape), one)) == one
    except RuntimeError:
        return False


class _Layout:
    """The structure of the first batch, which every batch must repeat."""

    def __init__(self, batch):
        self.lone = isinstance(batch, torch.Tensor)
        self.size = len(self.elements(batch, 0))

    def elements(self, batch, index: int) -> tuple:
        """One batch as a tuple of its elements (a lone tensor is a one-element batch)."""
        if isinstance(batch, torch.Tensor):
            elements = (batch,)
        elif isinstance(batch, (tuple, list)):
            elements = tuple(batch)
        else:
            raise TypeError(
                f"batch {index} of the dataloader is a {type(batch).__name__}: DataLoaderAttribution needs "
                "batches that are tensors or tuples/lists of elements (the default collate_fn gives lists)"
            )
        if index and (isinstance(batch, torch.Tensor) != self.lone or len(elements) != self.size):
            first = "a lone tensor" if self.lone else f"{self.size} elements"
            now = "a lone tensor" if isinstance(batch, torch.Tensor) else f"{len(elements)} elements"
            raise ValueError(
                f"batch {index} of the dataloader has {now} but the first batch had {first}: every batch "
                "must have the same elements, in the same order"
            )
        return elements


def _roles(input_roles, size: int) -> tuple:
    if input_roles is None or (isinstance(input_roles, (tuple, list)) and not input_roles):
        return (InputRole.need_attr,) * size  # Captum: no roles means every element is attributed
    if not isinstance(input_roles, (tuple, list)):
        raise TypeError(f"input_roles must be a tuple of ints (one per batch element), got {input_roles!r}")
    roles = tuple(input_roles)
    if len(roles) != size:
        raise ValueError(
            f"input_roles has {len(roles)} entries but each batch of the dataloader has {size} elements: give "
            "one role per element (0: attribute and pass to the model, 1: pass to the model only, "
            "2: leave out of the model call)"
        )
    if not all(isinstance(r, int) and not isinstance(r, bool) and r in _ROLES for r in roles):
        raise ValueError(f"each input role must be 0 (attribute), 1 (pass to the model only) or 2 (leave out), got {roles!r}")
    if InputRole.need_attr not in roles:
        raise ValueError(f"input_roles {roles!r} marks no element for attribution: mark at least one tensor with role 0")
    return roles


def _attributed(elements: tuple, roles: tuple, index: int) -> tuple:
    out = tuple(x for x, r in zip(elements, roles) if r == InputRole.need_attr)
    for x, position in zip(out, [p for p, r in enumerate(roles) if r == InputRole.need_attr]):
        if not isinstance(x, torch.Tensor) or x.ndim == 0:
            raise TypeError(
                f"element {position} of batch {index} has role 0 (attributed) but is {_describe(x)}: attributed "
                "elements must be tensors with a batch dim; give other elements role 1 or 2"
            )
    return out


def _baselines(baselines, inputs: tuple) -> tuple:
    """One baseline per attributed input: a number, or a tensor broadcasting to one example."""
    n = len(inputs)
    if baselines is None:
        return tuple(False if x.dtype == torch.bool else 0 for x in inputs)
    if not isinstance(baselines, tuple):
        if isinstance(baselines, torch.Tensor) and n > 1:
            raise ValueError(f"{n} elements are attributed: give baselines as a tuple with one entry per element")
        baselines = (baselines,) * n
    if len(baselines) != n:
        raise ValueError(f"baselines has {len(baselines)} entries but {n} batch elements are attributed (role 0): give one each")
    out = []
    for i, (b, x) in enumerate(zip(baselines, inputs)):
        if isinstance(b, torch.Tensor):
            if not _fits(b.shape, x):
                raise ValueError(
                    f"baselines[{i}] has shape {tuple(b.shape)}: the same baseline is used for every batch, so it "
                    f"must broadcast to one example, {_example_shape(x)} (a number or a tensor with batch dim 1)"
                )
            b = b.to(x.device)
        elif not isinstance(b, (int, float)):
            raise TypeError(f"baselines[{i}] must be a number or a tensor, got {type(b).__name__}")
        out.append(b)
    return tuple(out)


def _masks(feature_mask, inputs: tuple) -> tuple:
    """One int mask per attributed input, expanded to ``(1, *example_shape)``; ids are non-negative (an id no mask holds gets a zero column)."""
    if feature_mask is None:  # every element its own feature, ids running on across the inputs
        masks, start = [], 0
        for x in inputs:
            k = math.prod(x.shape[1:])
            masks.append(torch.arange(start, start + k, device=x.device).reshape(_example_shape(x)))
            start += k
        return tuple(masks)
    given = tuple(feature_mask) if isinstance(feature_mask, (tuple, list)) else (feature_mask,)
    if len(given) != len(inputs):
        raise ValueError(f"feature_mask has {len(given)} tensors but {len(inputs)} batch elements are attributed (role 0): give one each")
    masks = []
    for i, (m, x) in enumerate(zip(given, inputs)):
        if not isinstance(m, torch.Tensor) or m.is_floating_point() or m.is_complex() or m.dtype == torch.bool:
            raise TypeError(f"feature_mask[{i}] must be an integer tensor of feature ids, got {_describe(m)}"
                            + ("" if not isinstance(m, torch.Tensor) else f" of dtype {m.dtype}"))  # fmt: skip
        if not _fits(m.shape, x):
            raise ValueError(
                f"feature_mask[{i}] has shape {tuple(m.shape)}: the same mask is used for every batch, so it must "
                f"broadcast to one example, {_example_shape(x)} (batch dim 1)"
            )
        masks.append(m.to(x.device).long().expand(_example_shape(x)))
    held = [m for m in masks if m.numel()]
    lowest = min(int(m.min()) for m in held) if held else 0
    if lowest < 0:
        raise ValueError(
            f"feature_mask holds the negative feature id {lowest}: number the features 0..F-1; the attributions "
            "have one column per id from 0 to the largest (ids no mask holds get a zero column, as in Captum)"
        )
    return tuple(masks)


def _holders(masks: tuple) -> dict:
    """Feature id -> the indices of the attributed inputs holding it, in increasing id order."""
    holders: dict[int, list[int]] = {}
    for i, m in enumerate(masks):
        for j in torch.unique(m).tolist():
            holders.setdefault(j, []).append(i)
    if not holders:
        raise ValueError("the attributed elements have no features (no elements per example): nothing to ablate")
    return dict(sorted(holders.items()))


def _per_pass(perturbations_per_pass) -> int:
    p = perturbations_per_pass
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise ValueError(f"perturbations_per_pass must be an int >= 1 (ablations evaluated per traversal of the data), got {p!r}")
    return p


def _metric(state, to_metric, like: torch.Tensor | None) -> torch.Tensor:
    metric = state if to_metric is None else to_metric(state)
    source = "reduce (to_metric is None)" if to_metric is None else "to_metric"
    if not isinstance(metric, torch.Tensor):
        raise TypeError(f"the metric to attribute must be a tensor, but {source} returned {_describe(metric)}: return a tensor")
    if metric.dtype == torch.bool:
        raise TypeError(f"{source} returned a bool tensor: differences of bools are undefined, return .long() or .float()")
    if like is not None and metric.shape != like.shape:
        raise ValueError(
            f"{source} returned a metric of shape {tuple(metric.shape)} for ablated data but "
            f"{tuple(like.shape)} for the original data: the metric must have one shape"
        )
    return metric


class _Run:
    """One ``attribute`` call: the data, roles, baselines and masks, and how the model is called."""

    def __init__(self, model, dataloader, layout, roles, baselines, masks, holders, reduce, batch_copies, bar):
        self.model, self.dataloader, self.layout, self.roles = model, dataloader, layout, roles
        self.baselines, self.masks, self.holders, self.reduce = baselines, masks, holders, reduce
        self.batched, self.bar = batch_copies, bar
        self.example_shapes = None

    def traverse(self, features: list, to_metric) -> list:
        """One pass over the data: the reduced state of each copy (one per feature), as metrics."""
        states, index = [None] * len(features), -1
        for index, batch in enumerate(self.dataloader):
            elements = self._checked(batch, index)
            for c, (output, inputs) in enumerate(self._outputs(elements, features)):
                states[c] = self.reduce(states[c], output, inputs)
            if self.bar is not None:
                self.bar.update()
        if index < 0:
            raise ValueError("the dataloader yielded no batches on a later traversal: it must be re-iterable")
        first = _metric(states[0], to_metric, None)
        return [first] + [_metric(s, to_metric, first) for s in states[1:]]

    def _checked(self, batch, index: int) -> tuple:
        elements = self.layout.elements(batch, index)
        shapes = tuple(tuple(x.shape[1:]) for x in _attributed(elements, self.roles, index))
        if self.example_shapes is None:
            self.example_shapes = shapes
        elif shapes != self.example_shapes:
            raise ValueError(
                f"batch {index} has attributed examples of shapes {shapes}, the first batch {self.example_shapes}: "
                "the feature mask and baselines are shared by all batches, so every batch must have the same "
                "per-example shapes (pad variable-length data)"
            )
        return elements

    def _ablated(self, elements: tuple, feature: int) -> tuple:
        """The batch with one feature at its baseline (inputs not holding it are passed as they are)."""
        out, a = [], 0
        for x, role in zip(elements, self.roles):
            if role == InputRole.need_attr:
                if a in self.holders.get(feature, ()):
                    x = torch.where(self.masks[a] == feature, self.baselines[a], x)
                a += 1
            out.append(x)
        return tuple(out)

    def _forward(self, elements: tuple):
        return self.model(*(x for x, role in zip(elements, self.roles) if role != InputRole.no_forward))

    def _outputs(self, elements: tuple, features: list) -> list:
        """(output, inputs) for each copy of the batch: one model call for all of them, or one each."""
        if self.batched and len(features) > 1 and self._stackable(elements):
            result = self._stacked_outputs(elements, features)
            if result is not None:
                return result
            self.batched = False  # the output does not have one row per input row: one call per copy
        copies = [self._ablated(elements, j) for j in features]
        return [(self._forward(inputs), inputs) for inputs in copies]

    def _stackable(self, elements: tuple) -> bool:
        rows = {x.shape[0] if isinstance(x, torch.Tensor) and x.ndim else None
                for x, role in zip(elements, self.roles) if role != InputRole.no_forward}  # fmt: skip
        return len(rows) == 1 and None not in rows

    def _stacked_outputs(self, elements: tuple, features: list):
        k = len(features)
        ids = torch.tensor(features)
        copies, call, a = [], [], 0  # copies[e]: element e of every copy, (k, B, ...) or the element itself
        for x, role in zip(elements, self.roles):
            if role == InputRole.need_attr:
                m = self.masks[a]
                hit = m[None] == ids.to(m.device).reshape((k,) + (1,) * m.ndim)
                x = torch.where(hit, self.baselines[a], x[None])
                a += 1
                call.append(x.reshape(-1, *x.shape[2:]))
            elif role == InputRole.need_forward:
                call.append(torch.cat([x] * k))
            copies.append(x if role == InputRole.need_attr else None)
        batch = elements[self.roles.index(InputRole.need_attr)].shape[0]
        output = self.model(*call)
        if not isinstance(output, torch.Tensor) or output.ndim == 0 or output.shape[0] != k * batch:
            return None
        outputs = output.reshape(k, batch, *output.shape[1:])
        return [
            (outputs[c], tuple(x if s is None else s[c] for x, s in zip(elements, copies)))
            for c in range(k)
        ]


def _input_shaped(unique: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attributions of one input: every element takes its feature's column, (outputs, *example)."""
    return unique[:, mask[0].to(unique.device)]


class DataLoaderAttribution(Attribution):
    """``DataLoaderAttribution(FeatureAblation(model))``: feature ablation of a dataset-level metric.

    ``attribute(dataloader, input_roles=None, baselines=None, feature_mask=None, reduce=None,
    to_metric=None, perturbations_per_pass=1, show_progress=False, return_input_shape=True)``
    ablates each feature in every batch and attributes the change of the metric computed over
    the whole dataloader (NOTE: [Ablating a feature across a dataloader]). Roles: 0 attributed and
    passed to the model, 1 passed to the model only, 2 left out of the call (Captum 0.9's code;
    its docstring swaps 1 and 2). ``batch_copies=False`` (xattr's keyword) calls the model once
    per ablated copy of a batch, as Captum does. Captum's numbers.
    """

    def __init__(self, attr_method) -> None:
        if not (type(attr_method) is FeatureAblation or _captum(attr_method, "FeatureAblation")):
            raise TypeError(
                "DataLoaderAttribution works with a FeatureAblation instance (xattr.compat.captum's or "
                f"Captum's), got {type(attr_method).__name__}: use DataLoaderAttribution(FeatureAblation(model))"
            )
        super().__init__(attr_method.forward_func)
        self.attr_method = attr_method

    def attribute(self, dataloader, input_roles=None, baselines=None, feature_mask=None, reduce: Callable | None = None,
                  to_metric: Callable | None = None, perturbations_per_pass: int = 1, show_progress: bool = False,
                  return_input_shape: bool = True, *, batch_copies: bool = True):  # fmt: skip
        per_pass = _per_pass(perturbations_per_pass)
        first = _first_batch(dataloader)
        layout = _Layout(first)
        roles = _roles(input_roles, layout.size)
        inputs = _attributed(layout.elements(first, 0), roles, 0)
        base, masks = _baselines(baselines, inputs), _masks(feature_mask, inputs)
        holders = _holders(masks)
        features = list(holders)
        passes = [features[i : i + per_pass] for i in range(0, len(features), per_pass)]
        passes[0] = [_UNABLATED] + passes[0]
        warn_if_training(self.forward_func)
        bar = progress(show_progress, total=_total(dataloader, len(passes)), desc="dataloader batches", unit="batch")
        run = _Run(self.forward_func, dataloader, layout, roles, base, masks, holders, reduce or _concat, batch_copies, bar)
        metrics = {}
        try:
            with torch.no_grad():
                for group in passes:
                    metrics.update(zip(group, run.traverse(group, to_metric)))
        finally:
            if bar is not None:
                bar.close()
        unique = _differences(metrics, features[-1] + 1, inputs[0].device)
        if not return_input_shape:
            return unique
        attributions = tuple(_input_shaped(unique, m) for m in masks)
        return attributions if not layout.lone else attributions[0]

    def attribute_future(self, *args, **kwargs):
        raise NotImplementedError("DataLoaderAttribution.attribute_future: xattr calls the model synchronously; use attribute")


def _first_batch(dataloader):
    try:
        iterator = iter(dataloader)
    except TypeError:
        raise TypeError(f"dataloader must be an iterable of batches (a DataLoader, a list), got {type(dataloader).__name__}") from None
    if iterator is dataloader:
        raise TypeError(
            "dataloader is an iterator, which can be traversed only once; DataLoaderAttribution reads the data "
            "once per perturbations_per_pass ablations: pass a DataLoader or a list of batches"
        )
    first = next(iterator, None)
    if first is None:
        raise ValueError("the dataloader yields no batches")
    return first


def _total(dataloader, passes: int):
    try:
        return passes * len(dataloader)
    except TypeError:
        return None


def _differences(metrics: dict, n_features: int, device) -> torch.Tensor:
    """``(metric.numel(), F)``: column j is the unablated metric minus the one with feature j ablated."""
    reference = metrics.pop(_UNABLATED).reshape(-1)
    unique = torch.zeros((reference.numel(), n_features), dtype=reference.dtype, device=device)
    for j, metric in metrics.items():
        unique[:, j] = (reference - metric.reshape(-1).to(reference.device)).to(device)
    return unique
