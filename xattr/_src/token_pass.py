"""`token_statistics`: one streaming pass over a text dataset, explaining each batch and merging
its per-token moments into `TokenStatistics` (NOTE: [Per-token attribution moments] in
token_stats.py)."""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

from .dataset_pass import attribute_batch
from .dataset_stats import _BY
from .progress import progress
from .token_stats import REDUCE, TokenStatistics, _size, _vocab


def token_statistics(
    method: Callable,
    model: Callable,
    data,
    *,
    by: str | None = "label",
    target: str | None = None,
    labels=None,
    mask=None,
    pad_id=None,
    vocab=None,
    vocab_size: int | None = None,
    reduce: str = "sum",
    batch_size: int | None = None,
    show_progress: bool = False,
) -> TokenStatistics:
    """Per-class attribution statistics of every vocabulary token over a text dataset, in one
    streaming pass (NOTE: [Per-token attribution moments]).

    For each batch of token ids the explained output of every example is chosen (its label, or
    the model's prediction), ``method(xattr.target(model, t))(ids)`` gives the attributions,
    one per token ``(B, T)`` or at an embedding ``(B, T, D)``, and their moments are merged
    into running ones per (group, token id). Only the statistics stay in memory.

    Args:
      method: a transform ``f -> attr_fn`` with ``attr_fn(ids)`` of shape ``(B, T)`` or
        ``(B, T, D)``: a perturbation method over ids (``functools.partial(
        xattr.feature_ablation, baselines=pad)``), or a gradient method at the embedding,
        ``lambda f: xattr.layer_integrated_gradients(xattr.at_layer(f, model.embedding),
        baselines=pad)``.
      model: the classifier, ``model(ids) -> (B, n_classes)``; called with the ids only.
      data: token ids ``(N, T)`` (with ``labels=`` and ``mask=``, split by ``batch_size=``),
        or an iterable of batches such as a ``DataLoader``: each an ids tensor, a tuple
        ``(ids, y)`` or ``(ids, y, mask)``, or a dict with ``"input_ids"`` and optionally
        ``"labels"``/``"label"`` and ``"attention_mask"``.
      by, target: grouping and explained output, as `xattr.attribution_statistics`.
      labels: integer labels ``(N,)`` when ``data`` is a tensor.
      mask: ``(N, T)`` when ``data`` is a tensor: nonzero where a position counts.
      pad_id: an id, or a list of ids, never counted (padding; special tokens too if wanted).
      vocab: token strings for naming: a list (index = id), a dict token -> id, or a
        tokenizer.
      vocab_size: the least number of ids covered (default: the vocabulary's size, or the
        largest id seen + 1, whichever is larger).
      reduce: "sum" over an embedding's dims (signed; `xattr.token_scores`) or "norm".
      batch_size: examples per attribution call when ``data`` is a tensor (default: all).
      show_progress: a progress bar over batches (needs tqdm).

    Returns:
      a `TokenStatistics`; ``.top(c, k, min_count=...)`` ranks class c's tokens and ``.merge``
      combines shards.

    Example:
      >>> stats = xattr.token_statistics(method, model, loader, pad_id=0, vocab=words)
      >>> stats.top(1, 5, min_count=10)      # class 1's five tokens of largest mean attribution
    """
    if by not in _BY:
        raise ValueError(f"by must be 'label', 'prediction' or None, got {by!r}")
    if target not in ("label", "prediction", None):
        raise ValueError(f"target must be 'label', 'prediction' or None (follow by=), got {target!r}")
    if reduce not in REDUCE:
        raise ValueError(f"reduce must be 'sum' (over the embedding dims) or 'norm' (their L2 norm), got {reduce!r}")
    if not callable(method) or not callable(model):
        raise TypeError("method must be a transform f -> attr_fn (e.g. a partial of xattr.feature_ablation) and model a callable")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    _size(vocab_size)
    names = _vocab(vocab)  # once, not per batch
    total = None
    if isinstance(data, torch.Tensor) and data.ndim >= 1 and data.shape[0]:
        total = math.ceil(data.shape[0] / (batch_size or data.shape[0]))
    elif hasattr(data, "__len__"):
        total = len(data)
    stats = None
    batches = _text_batches(data, labels, mask, batch_size)
    for i, (ids, y, m) in enumerate(progress(show_progress, batches, total=total, desc="token statistics", unit="batch")):
        if ids.ndim != 2:
            raise ValueError(f"batch {i}: token ids must have shape (B, T), got {tuple(ids.shape)}")
        done = attribute_batch(method, model, ids, y, i, by=by, target=target, inputs="examples", shape="one tensor (B, T) or (B, T, D)")
        if done is None:
            continue
        attr, groups = done
        part = TokenStatistics.from_attributions(ids, attr, groups, mask=m, pad_id=pad_id, vocab=names, vocab_size=vocab_size,
                                                 by=by, reduce=reduce)  # fmt: skip
        stats = part if stats is None else stats.merge(part)
    if stats is None:
        raise ValueError("data holds no examples: give at least one batch with examples")
    return stats


def _text_batches(data, labels, mask, batch_size):
    """(ids, y or None, mask or None) batches from an ids tensor or an iterable of batches."""
    if isinstance(data, torch.Tensor):
        if data.ndim != 2 or data.shape[0] == 0:
            raise ValueError(f"data must be token ids (N, T) with at least one example, got shape {tuple(data.shape)}")
        if data.dtype.is_floating_point or data.dtype.is_complex or data.dtype == torch.bool:
            raise TypeError(f"data must hold integer token ids, got {data.dtype}: pass ids.long()")
        n = data.shape[0]
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.ndim != 1 or labels.shape[0] != n:
                raise ValueError(f"labels has shape {tuple(labels.shape)} but data has {n} examples: give one label per example")
        if mask is not None:
            mask = torch.as_tensor(mask)
            if tuple(mask.shape) != tuple(data.shape):
                raise ValueError(f"mask has shape {tuple(mask.shape)} but data {tuple(data.shape)}: give one flag per position")
        step = batch_size or n
        for s in range(0, n, step):
            yield data[s : s + step], None if labels is None else labels[s : s + step], None if mask is None else mask[s : s + step]
        return
    if labels is not None or mask is not None:
        raise TypeError("labels= and mask= go with a tensor of ids; an iterable of batches carries them as (ids, y, mask)")
    if batch_size is not None:
        raise TypeError("batch_size= splits a tensor of ids; an iterable (a DataLoader) is already batched")
    try:
        it = iter(data)
    except TypeError:
        raise TypeError(f"data must be a tensor of token ids or an iterable of batches (a DataLoader), got {type(data).__name__}") from None
    for batch in it:
        if isinstance(batch, torch.Tensor):
            yield batch, None, None
        elif isinstance(batch, Mapping) and "input_ids" in batch:
            y = batch.get("labels", batch.get("label"))
            yield batch["input_ids"], y, batch.get("attention_mask")
        elif isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], torch.Tensor):
            yield batch[0], batch[1], batch[2] if len(batch) >= 3 else None
        else:
            raise TypeError(f"each batch must be token ids, an (ids, y[, mask]) tuple or a dict with 'input_ids', got {type(batch).__name__}")


__all__ = ["token_statistics"]
