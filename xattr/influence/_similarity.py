"""Similarity influence: training examples ranked by how alike their layer activations are.

NOTE: [Similarity influence]
For each named layer, every example's activation is flattened to a vector, and each test vector
is compared with every training vector: cosine similarity a.b / (|a| |b|), euclidean distance
|a - b|, or a metric of the user's. ``direction="max"`` ranks the largest scores first (the most
similar under cosine), ``"min"`` the smallest (the nearest under euclidean distance: the
direction follows the score, not the word "similar", as in Captum). The activations of all
layers come from one forward pass per batch through ``at_layer`` (hooks made and removed inside
each call) under ``torch.no_grad``; nothing is written to disk. A zero activation has no
direction: its cosine with anything is set to 0 and a warning names the layer.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from .._src.layers import at_layer
from .._src.progress import progress
from .._src.warn import warn
from ._layers import TRAIN_MODE_LAYERS, module_paths, resolve_layer
from ._per_example import positive_int

__all__ = ["similarity_influence"]


def cosine(test: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """(n_test, n_train) cosine similarities of flattened rows; 0 where a row is all zeros."""
    a, b = test.reshape(test.shape[0], -1), train.reshape(train.shape[0], -1)
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    a = torch.where(na > 0, a / torch.where(na > 0, na, 1), 0)
    b = torch.where(nb > 0, b / torch.where(nb > 0, nb, 1), 0)
    return a @ b.T


def euclidean(test: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """(n_test, n_train) euclidean distances of flattened rows."""
    return torch.cdist(test.reshape(test.shape[0], -1)[None], train.reshape(train.shape[0], -1)[None])[0]


METRICS = {"cosine": cosine, "euclidean": euclidean}


def named_layers(model: nn.Module, layers) -> dict[str, nn.Module]:
    """``{name: module}`` from a module, a name, a list of them, or a dict name -> module."""
    paths = module_paths(model)
    if isinstance(layers, Mapping):
        named = dict(layers)
    else:
        items = [layers] if isinstance(layers, (str, nn.Module)) else layers
        if not isinstance(items, (list, tuple)):
            raise TypeError(f"layers must be a module, a name, a list of them or a dict, got {type(layers).__name__}")
        named = {}
        for item in items:
            name, module = resolve_layer(model, item, paths)
            if name in named:
                raise ValueError(f"layer {name!r} is given twice")
            named[name] = module
    if not named:
        raise ValueError("layers is empty: name at least one module")
    for name, m in named.items():
        if not isinstance(m, nn.Module) or id(m) not in paths:
            raise ValueError(f"layer {name!r} is not a module of the model")
    return named


def _inputs(data, what: str) -> tuple[torch.Tensor, ...]:
    data = (data,) if isinstance(data, torch.Tensor) else data
    if not isinstance(data, (tuple, list)) or not data or not all(isinstance(t, torch.Tensor) for t in data):
        raise TypeError(f"{what} must be a tensor or a tuple of tensors (the model's inputs, no labels)")
    n = data[0].shape[0] if data[0].ndim else 0
    if n == 0 or any(t.ndim == 0 or t.shape[0] != n for t in data):
        raise ValueError(f"every tensor of {what} needs the same non-zero number of rows (dim 0)")
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in data):
        raise ValueError(f"{what} holds NaN or infinite values: their activations, and so the similarities, would be NaN")
    return tuple(data)


def layer_activations(model, modules: list[nn.Module], data: tuple, batch_size: int | None, show: bool, desc: str):
    """One (n, D) tensor of flattened activations per module, one forward pass per batch."""
    split = at_layer(model, list(modules))
    n = data[0].shape[0]
    step = batch_size or n
    parts: list[list[torch.Tensor]] = [[] for _ in modules]
    with torch.no_grad():
        for lo in progress(show, range(0, n, step), total=-(-n // step), desc=desc, unit="batch"):
            acts = split.act(*(t[lo : lo + step] for t in data))
            for i, a in enumerate(acts):
                if not isinstance(a, torch.Tensor):
                    raise TypeError(f"layer {i} outputs {type(a).__name__}, not a tensor: choose a layer with a tensor output")
                parts[i].append(a.detach().reshape(a.shape[0], -1))
    return [torch.cat(p) for p in parts]


def similarity_influence(
    model: nn.Module,
    layers,
    train,
    test,
    *,
    metric: str | Callable = "cosine",
    direction: str = "max",
    top_k: int | None = 1,
    batch_size: int | None = None,
    show_progress: bool = False,
) -> dict:
    """For each layer, the training examples whose activations score highest (or lowest)
    against each test example's (NOTE: [Similarity influence] in ``xattr/influence/_similarity.py``).

    Args:
      model: an ``nn.Module``; run as it is (no hook stays, nothing changed).
      layers: a module, a module name, a list of them, or a dict name -> module.
      train, test: a tensor or a tuple of tensors, the model's inputs (no labels), one row per
        example.
      metric: ``"cosine"``, ``"euclidean"``, or ``metric(test_acts, train_acts)`` taking
        flattened ``(n_test, D)`` and ``(m, D)`` activations and returning ``(n_test, m)``.
      direction: ``"max"`` ranks the largest scores first, ``"min"`` the smallest (use
        ``"min"`` with ``"euclidean"`` for the nearest examples).
      top_k: how many training examples per test example; None gives every score unranked.
      batch_size: training examples per forward pass (default: all at once).
      show_progress: a progress bar over the training batches.

    Returns:
      ``{layer_name: (indices, scores)}``, both ``(n_test, top_k)``, scores sorted by
      ``direction``; with ``top_k=None``, ``{layer_name: scores}`` of shape ``(n_test, n_train)``.

    Example:
      >>> found = similarity_influence(model, [model[1]], x_train, x_test, top_k=3)
      >>> idx, cos = found["1"]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if direction not in ("max", "min"):
        raise ValueError(f"direction must be 'max' or 'min', got {direction!r}")
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"metric must be 'cosine', 'euclidean' or a callable, got {metric!r}")
        fn = METRICS[metric]
    elif callable(metric):
        fn = metric
    else:
        raise TypeError(f"metric must be 'cosine', 'euclidean' or a callable, got {type(metric).__name__}")
    positive_int(top_k, "top_k")
    positive_int(batch_size, "batch_size")
    named = named_layers(model, layers)
    train, test = _inputs(train, "train"), _inputs(test, "test")
    moving = sorted({type(m).__name__ for m in model.modules() if m.training and isinstance(m, TRAIN_MODE_LAYERS)})
    if moving:
        warn(f"{type(model).__name__} is in train mode and contains {moving}: dropout makes the activations random "
             "and batch-norm makes each one depend on the rest of the batch. Call model.eval() first "
             "(xattr never changes the mode for you).")  # fmt: skip
    n_train = train[0].shape[0]
    if top_k is not None and top_k > n_train:
        raise ValueError(f"top_k={top_k} is more than the {n_train} training examples")
    modules = list(named.values())
    train_acts = layer_activations(model, modules, train, batch_size, show_progress, "train activations")
    test_acts = layer_activations(model, modules, test, None, False, "test activations")
    result = {}
    for name, a_test, a_train in zip(named, test_acts, train_acts):
        if fn is cosine and (bool((a_test.norm(dim=1) == 0).any()) or bool((a_train.norm(dim=1) == 0).any())):
            warn(f"layer {name!r} has all-zero activations for some examples: their cosine similarity is set to 0")
        scores = fn(a_test, a_train)
        if not isinstance(scores, torch.Tensor) or scores.shape != (a_test.shape[0], n_train):
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"metric must return shape (n_test, n_train) = {(a_test.shape[0], n_train)}, got {got}")
        if top_k is None:
            result[name] = scores
        else:
            values, idx = scores.topk(top_k, dim=1, largest=direction == "max")
            result[name] = (idx, values)
    return result
