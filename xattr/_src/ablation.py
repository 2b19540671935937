"""Feature ablation and occlusion: the output's drop when a feature (or window) takes its baseline.

Shared arguments of the perturbation methods:
  f: model function with one output per example (``xattr.target``), ``xattr.outputs([...])`` for
     K outputs (a K axis after the batch), or one number per batch (Captum's aggregate mode:
     attributions then have one row).
  baselines: what a removed feature becomes: a number, a tensor broadcastable to the input
     (shared or per example), or a tree like ``args[argnums]``; also a call keyword.
  feature_mask: int feature ids per element (NOTE: [Features and coalitions] in perturb.py),
     broadcastable to the input; None makes every element its own feature; also a call keyword.
  argnums: the attributed argument(s); the others pass through (tiled with the copies).
  chunk_size: model rows per call; memory_budget: bytes of perturbed inputs per call when
     chunk_size is None (NOTE: [Perturbed copies in one call]).
  show_progress: a tqdm bar over the model calls.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Sequence

import torch

from . import tree as T
from .checks import warn_if_training
from .gradients import attribution_fn
from .perturb import baseline_tree, evaluate, features, outputs_at, scatter_features


def _per_feature(diff: torch.Tensor) -> torch.Tensor:
    """(B, F[, O]) -> (B, [O,] F): the K axis of many outputs goes after the batch."""
    return diff.movedim(2, 1) if diff.ndim == 3 else diff


def feature_ablation(
    f: Callable,
    *,
    baselines: Any = 0.0,
    feature_mask: Any = None,
    argnums: int | Sequence[int] = 0,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool = False,
) -> Callable:
    """Feature ablation: ``a_i = f(x) - f(x with feature(i) set to its baseline)``.

    Every element of a feature gets the feature's drop. F features cost F perturbed copies,
    evaluated in as few model calls as the memory budget allows (Captum: one per copy by
    default). Exact: equals the explicit loop over features (tested).

    Returns:
      ``fn(*args, baselines=..., feature_mask=...)`` like ``args[argnums]`` (a K axis after
      the batch for ``xattr.outputs``).

    Example:
      >>> attr = xattr.feature_ablation(xattr.target(model, 3), feature_mask=segments)(x)
    """
    nums, as_tuple = T.normalize_argnums(argnums)

    def fn(*args, baselines=baselines, feature_mask=feature_mask):
        warn_if_training(f)
        selected = T.split_args(args, nums)[0]
        masks, n = features(selected, feature_mask)
        base = baseline_tree(selected, baselines, as_tuple)
        out, aggregate = outputs_at(f, args)
        ablate_one = 1 - torch.eye(n, device=out.device)
        outs = evaluate(f, args, nums, masks=masks, baselines=base, coalitions=ablate_one, aggregate=aggregate,
                        chunk_size=chunk_size, memory_budget=memory_budget, show_progress=show_progress)  # fmt: skip
        diff = _per_feature(out[:, None] - outs)
        attr = scatter_features(diff, masks, T.tree_map(lambda x: x[: diff.shape[0]], selected))
        return attr if as_tuple else attr[0]

    return attribution_fn(fn, f)


def window_masks(shape: Sequence[int], window: Sequence[int], strides: Sequence[int] | int) -> torch.Tensor:
    """Boolean masks (W, *shape) of every window position of a sliding window over one example.

    ``window`` and ``strides`` cover the trailing dims of ``shape`` (one entry per dim, or an
    int stride for all); windows start at 0 and step by the stride until one reaches the end
    of the dim, which may be cut short by the input's edge (Captum's placement:
    ``ceil((size - window) / stride) + 1`` positions per dim).
    """
    shape, window = tuple(shape), tuple(window)
    if len(window) != len(shape):
        raise ValueError(f"sliding window {window} must have one entry per input dim {shape} (without the batch)")
    strides = (strides,) * len(shape) if isinstance(strides, int) else tuple(strides)
    if len(strides) != len(shape):
        raise ValueError(f"strides {strides} must have one entry per input dim {shape}")
    if any(w > s or w < 1 for w, s in zip(window, shape)):
        raise ValueError(f"sliding window {window} does not fit the input {shape}")
    starts = [range(0, st * math.ceil((s - w) / st) + 1, st) for s, w, st in zip(shape, window, strides)]
    masks = torch.zeros((math.prod(len(r) for r in starts),) + shape, dtype=torch.bool)
    for i, corner in enumerate(itertools.product(*starts)):
        masks[(i,) + tuple(slice(c, c + w) for c, w in zip(corner, window))] = True
    return masks


def occlusion(
    f: Callable,
    *,
    sliding_window_shapes,
    strides=1,
    baselines: Any = 0.0,
    argnums: int | Sequence[int] = 0,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool = False,
) -> Callable:
    """Occlusion: a sliding window set to the baseline; each element averages the drops of its windows.

    ``a_i = mean over windows w containing i of (f(x) - f(x with w occluded))`` (Zeiler &
    Fergus 2014). W window positions cost W perturbed copies, batched into few calls.

    Args (beyond the shared ones):
      sliding_window_shapes: the window per input (without the batch dim); a tuple of them for
        several inputs (each copy occludes one window of one input, as in Captum).
      strides: an int or a tuple per dim (per input for several inputs).

    Example:
      >>> attr = xattr.occlusion(xattr.target(model, 3), sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4))(x)
    """
    nums, as_tuple = T.normalize_argnums(argnums)

    def fn(*args, baselines=baselines):
        warn_if_training(f)
        selected = T.split_args(args, nums)[0]
        leaves = T.leaves(selected)
        shapes = sliding_window_shapes if len(leaves) > 1 else (sliding_window_shapes,)
        several = len(leaves) > 1 and isinstance(strides, (tuple, list)) and len(strides) == len(leaves)
        steps = tuple(strides) if several else (strides,) * len(leaves)  # per input for several inputs
        windows = [window_masks(x.shape[1:], w, st).to(x.device) for x, w, st in zip(leaves, shapes, steps)]
        counts = [w.shape[0] for w in windows]
        base = baseline_tree(selected, baselines, as_tuple)
        out, aggregate = outputs_at(f, args)
        outs = _occluded(f, args, nums, windows, base, aggregate, chunk_size, memory_budget, show_progress)
        diff = _per_feature(out[:, None] - outs)  # (B, [O,] W_total): window j of input i is one copy
        pieces = iter(torch.split(diff, counts, dim=-1))

        def spread(x, w):
            w = w.reshape(w.shape[0], -1).to(diff.dtype)  # (W_i, P)
            total = next(pieces) @ w  # (B, [O,] P)
            return (total / w.sum(0).clamp(min=1)).reshape(diff.shape[:-1] + tuple(x.shape[1:]))

        it = iter(windows)
        attr = T.tree_map(lambda x: spread(x, next(it)), T.tree_map(lambda x: x[: diff.shape[0]], selected))
        return attr if as_tuple else attr[0]

    return attribution_fn(fn, f)


def _occluded(f, args, nums, windows, base, aggregate, chunk_size, memory_budget, show_progress):
    """f with one window occluded per copy, over the windows of every input in turn: (B, W[, O]).

    Windows overlap, so they are not a partition into features: every element is its own
    feature, and copy j keeps every element outside window j (of its input)."""
    selected = T.split_args(args, nums)[0]
    sizes = [w[0].numel() for w in windows]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    it = iter(offsets)
    ids = T.tree_map(lambda x: next(it) + torch.arange(x[0].numel(), device=x.device).reshape((1,) + tuple(x.shape[1:])), selected)
    blocks = []
    for i, w in enumerate(windows):
        keep = torch.ones(w.shape[0], sum(sizes), dtype=torch.bool, device=w.device)
        keep[:, offsets[i] : offsets[i] + sizes[i]] = ~w.reshape(w.shape[0], -1)
        blocks.append(keep)
    return evaluate(f, args, nums, masks=ids, baselines=base, coalitions=torch.cat(blocks), aggregate=aggregate,
                    chunk_size=chunk_size, memory_budget=memory_budget, show_progress=show_progress)  # fmt: skip
