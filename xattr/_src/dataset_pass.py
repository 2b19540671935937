"""`attribution_statistics`: one streaming pass over a dataset, explaining each batch and
merging its moments into `AttributionStatistics` (NOTE: [Streaming attribution moments] in
dataset_stats.py)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .dataset_stats import _BY, AttributionStatistics, _as_labels, _check_top_k

_SPELLINGS = {"labels": "label", "predicted": "prediction"}  # metrics.evaluate's words for them
from .progress import progress
from .targets import target as _target


def _batches(data, labels, batch_size):
    """(x, y or None) batches from a tensor (with ``labels``) or an iterable of batches."""
    if isinstance(data, torch.Tensor):
        if data.ndim < 1 or data.shape[0] == 0:
            raise ValueError("data holds no examples: give at least one")
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
                raise ValueError(f"labels has shape {tuple(labels.shape)} but data has {data.shape[0]} examples: give one label per example")
        step = data.shape[0] if batch_size is None else batch_size
        for s in range(0, data.shape[0], step):
            yield data[s : s + step], None if labels is None else labels[s : s + step]
        return
    if labels is not None:
        raise TypeError("labels= goes with a tensor of inputs; an iterable of batches carries its labels as (x, y) pairs")
    if batch_size is not None:
        raise TypeError("batch_size= splits a tensor of inputs; an iterable (a DataLoader) is already batched")
    try:
        it = iter(data)
    except TypeError:
        raise TypeError(f"data must be an input tensor or an iterable of batches (a DataLoader), got {type(data).__name__}") from None
    for batch in it:
        if isinstance(batch, torch.Tensor):
            yield batch, None
        elif isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], torch.Tensor):
            yield batch[0], batch[1]
        else:
            raise TypeError(f"each batch must be an input tensor or an (x, y, ...) tuple, got {type(batch).__name__}")


def attribution_statistics(
    method: Callable,
    model: Callable,
    data,
    *,
    by: str | None = "label",
    target: str | None = None,
    labels=None,
    top_k: int = 10,
    batch_size: int | None = None,
    show_progress: bool = False,
) -> AttributionStatistics:
    """Per-class and global attribution statistics over a dataset, in one streaming pass.

    For each batch ``x`` the explained output of every example is chosen (its label, or the
    model's prediction ``model(x).argmax(1)``), ``method(xattr.target(model, t))(x)`` gives
    the attributions, and their float64 moments are merged into running per-group ones (NOTE:
    [Streaming attribution moments] in ``xattr/_src/dataset_stats.py``). Only the statistics
    stay in memory, never the attributions.

    Args:
      method: a transform ``f -> attr_fn`` whose ``attr_fn(x)`` returns one tensor shaped like
        ``x`` (or any ``(B, ...)`` map), e.g. ``xattr.saliency`` or
        ``functools.partial(xattr.integrated_gradients, n_steps=16)``.
      model: the classifier, ``model(x) -> (B, n_classes)`` logits; called as it is (no mode
        change, no hook).
      data: an input tensor ``(N, ...)`` (with ``labels=``, split by ``batch_size=``), or an
        iterable of batches such as a ``DataLoader``: each batch an input tensor, or a tuple
        ``(x, y, ...)`` whose ``y`` is the labels.
      by: group the examples by their "label", by the model's "prediction", or None for one
        group ``"all"``.
      target: which output to explain for each example: "label" or "prediction" ("labels" and
        "predicted", `xattr.metrics.evaluate`'s words, mean the same, here and for ``by``). Default:
        the same as ``by``; with ``by=None``, the label where labels are given, else the
        prediction.
      labels: integer labels ``(N,)`` when ``data`` is a tensor.
      top_k: features per example counted in ``top_k_count`` (clamped to the feature count).
      batch_size: examples per attribution call when ``data`` is a tensor (default: all).
      show_progress: a progress bar over batches (needs tqdm).

    Returns:
      an `AttributionStatistics` of plain CPU tensors; ``.merge`` combines shards.

    Example:
      >>> stats = xattr.attribution_statistics(xattr.saliency, model, loader, by="label")
      >>> stats.mean[stats.index(3)]          # class 3's mean map
      >>> lo, hi = stats.importance_interval()  # 95% interval of the global mean |a|
    """
    by, target = (_SPELLINGS.get(v, v) if isinstance(v, str) else v for v in (by, target))
    if by not in _BY:
        raise ValueError(f"by must be 'label', 'prediction' or None, got {by!r}")
    if target not in ("label", "prediction", None):
        raise ValueError(f"target must be 'label', 'prediction' or None (follow by=), got {target!r}")
    if not callable(method) or not callable(model):
        raise TypeError("method must be a transform f -> attr_fn (e.g. xattr.saliency) and model a callable")
    top_k = _check_top_k(top_k)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    total = None
    if isinstance(data, torch.Tensor) and data.ndim >= 1:
        total = math.ceil(data.shape[0] / (batch_size or max(1, data.shape[0])))
    elif hasattr(data, "__len__"):
        total = len(data)
    stats = None
    for i, (x, y) in enumerate(progress(show_progress, _batches(data, labels, batch_size), total=total, desc="attribution statistics", unit="batch")):
        done = attribute_batch(method, model, x, y, i, by=by, target=target, inputs="inputs", shape="one tensor")
        if done is None:
            continue
        attr, groups = done
        n_ex = x.shape[0]
        if attr.ndim < 1 or attr.shape[0] != n_ex:
            raise ValueError(f"method's attributions have shape {tuple(attr.shape)}, not one row per example of the batch of {n_ex}")
        part = AttributionStatistics.from_attributions(attr.reshape(n_ex, -1) if attr.ndim == 1 else attr, groups, top_k=top_k, by=by)
        stats = part if stats is None else stats.merge(part)
    if stats is None:
        raise ValueError("data holds no examples: give at least one batch with examples")
    return stats


def attribute_batch(method: Callable, model: Callable, x: torch.Tensor, y, i: int, *, by, target, inputs: str, shape: str):
    """One batch of a dataset pass (attribution_statistics, token_statistics): its labels checked,
    the target chosen (``target``, else ``by``, else the labels where given, else the prediction),
    the attributions and each example's group; None for an empty batch."""
    n_ex = x.shape[0] if x.ndim else 0
    if y is not None:
        y = _as_labels(y, f"the labels of batch {i}")
        if y.shape[0] != n_ex:
            raise ValueError(f"batch {i} has {n_ex} {inputs} but {y.shape[0]} labels: give one label per example")
    if n_ex == 0:
        return None
    tgt = target or (by if by is not None else ("label" if y is not None else "prediction"))
    if y is None and "label" in (by, tgt):
        first = "x" if inputs == "inputs" else "ids"
        raise ValueError(f"{'by' if by == 'label' else 'target'}='label' needs labels: pass labels= with a tensor, or ({first}, y) batches")
    pred = _predict(model, x) if "prediction" in (by, tgt) else None
    attr = method(_target(model, (y if tgt == "label" else pred).to(x.device)))(x)
    if not isinstance(attr, torch.Tensor):
        raise TypeError(f"method's attr_fn must return {shape}, got {type(attr).__name__}")
    return attr, None if by is None else (y if by == "label" else pred)


def _predict(model: Callable, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"by/target='prediction' needs a model returning (B, n_classes) scores, got {got}")
    return out.argmax(1).cpu()


__all__ = ["attribution_statistics"]
