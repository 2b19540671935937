"""The perturbation engine: a model evaluated at many perturbed copies of its inputs at once.

NOTE: [Features and coalitions]
A *feature mask* gives every element of every attributed input tensor a feature id in
``0..F-1`` (an int tensor broadcastable to the input: ``(1, ...)`` shared by all examples or
``(B, ...)`` per example; the same id in two tensors is one feature). A *coalition* is a 0/1
vector over the F features: 1 keeps the input's elements of that feature, 0 replaces them by
the baseline's. Every perturbation method is a set of coalitions plus a way to combine the
outputs: feature ablation (all ones but one), Shapley sampling (growing prefixes of random
permutations), exact Shapley values (all 2^F), LIME and KernelSHAP (random coalitions and a
weighted regression). Occlusion's overlapping windows are coalitions over windows
(`window_masks`), and feature permutation's baseline is a shuffled batch, one per copy.

NOTE: [Perturbed copies in one call]
K coalitions for B examples make K*B model rows, folded copy-major into the batch (NOTE:
[Folding copies into the batch axis]) and evaluated under ``torch.no_grad`` in as few calls as
the memory budget allows: ``chunk_size`` (model rows per call, the library-wide knob) when
given, else as many copies as fit ``memory_budget`` bytes of perturbed inputs (default
``MEMORY_BUDGET``; the model's activations for those rows come on top). A perturbed element is
``b + keep * (x - b)`` for float inputs (exact for keep in {0, 1}) and ``where(keep, x, b)`` for
bool and integer inputs. Models that return one number for the whole batch (Captum's
"aggregate mode") cannot take folded copies: each copy is then one call on the whole batch,
and coalitions must be shared by all examples.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from . import tree as T
from .checks import baselines_like, check_finite

MEMORY_BUDGET = 64 * 2**20  # bytes of perturbed inputs per model call


def default_mask(selected) -> tuple[Any, int]:
    """Every element of every input its own feature: ids run on across the tensors."""
    masks, start = [], 0
    for leaf in T.leaves(selected):
        n = math.prod(leaf.shape[1:])
        masks.append(torch.arange(start, start + n, device=leaf.device).reshape((1,) + tuple(leaf.shape[1:])))
        start += n
    it = iter(masks)
    return T.tree_map(lambda _: next(it), selected), start


def features(selected, feature_mask) -> tuple[Any, int]:
    """(mask tree like ``selected`` of long tensors broadcastable to each input, F).

    ``feature_mask`` None gives `default_mask`; one tensor is used for a single input; a tree
    must match the inputs. Ids must be non-negative integers; F is the largest id plus one.
    """
    if feature_mask is None:
        return default_mask(selected)
    if isinstance(feature_mask, torch.Tensor) and len(T.leaves(selected)) == 1:
        feature_mask = T.tree_map(lambda _: feature_mask, selected)
    try:
        masks = T.tree_map(_check_mask, selected, feature_mask)
    except (ValueError, TypeError) as err:
        if "feature_mask" in str(err):
            raise
        raise ValueError(f"feature_mask must have the structure of the attributed inputs: {err}") from None
    n = max(int(m.max()) + 1 for m in T.leaves(masks))
    return masks, n


def _check_mask(x: torch.Tensor, m) -> torch.Tensor:
    m = torch.as_tensor(m, device=x.device)
    if m.is_floating_point() or m.dtype == torch.bool:
        raise TypeError(f"feature_mask must hold integer feature ids, got dtype {m.dtype}")
    if m.ndim < x.ndim:  # a mask for one example: add the batch axis
        m = m.reshape((1,) * (x.ndim - m.ndim) + tuple(m.shape))
    try:
        torch.broadcast_shapes(m.shape, x.shape)
    except RuntimeError:
        raise ValueError(f"feature_mask of shape {tuple(m.shape)} does not broadcast to the input {tuple(x.shape)}") from None
    if m.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"feature_mask has {m.shape[0]} rows for a batch of {x.shape[0]}: use 1 (shared) or B")
    if int(m.min()) < 0:
        raise ValueError("feature_mask ids must be >= 0")
    return m.long()


def scatter_features(values: torch.Tensor, masks, selected):
    """Per-feature values (B, [K,] F) spread onto the inputs' elements: a tree like ``selected``.

    The result has the inputs' shapes (with the K axis after the batch when values has one).
    """

    def spread(x, m):
        full = torch.broadcast_to(m, x.shape).reshape(x.shape[0], -1)
        if values.ndim == 2:
            return torch.gather(values, 1, full).reshape(x.shape).to(_float(x))
        k = values.shape[1]
        idx = full[:, None, :].expand(-1, k, -1)
        return torch.gather(values, 2, idx).reshape((x.shape[0], k) + tuple(x.shape[1:])).to(_float(x))

    return T.tree_map(spread, selected, masks)


def _float(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def keep_masks(coalitions: torch.Tensor, masks, selected, batch: int):
    """Coalitions (B or 1, c, F) -> per input a keep tensor (c, B, ...) broadcastable to the copies."""

    def one(x, m):
        rows = m.shape[0]
        flat = torch.broadcast_to(m, (rows,) + tuple(x.shape[1:])).reshape(rows, -1)
        z = coalitions
        if z.shape[0] != flat.shape[0]:
            shared = max(z.shape[0], flat.shape[0])
            z, flat = z.expand(shared, -1, -1), flat.expand(shared, -1)
        keep = torch.gather(z, 2, flat[:, None, :].expand(-1, z.shape[1], -1))  # (rows, c, P)
        return keep.transpose(0, 1).reshape((z.shape[1], z.shape[0]) + tuple(x.shape[1:]))

    return T.tree_map(one, selected, masks)


def perturb(x: torch.Tensor, b: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Copies (c, B, ...): x where keep is 1, b where it is 0 (NOTE: [Perturbed copies in one call])."""
    if x.is_floating_point():
        return b + keep.to(x.dtype) * (x - b)
    return torch.where(keep.bool(), x, b)


def copies_per_call(selected, batch: int, chunk_size: int | None, memory_budget: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
        return max(1, chunk_size // batch)
    per_copy = sum(t.numel() * t.element_size() for t in T.leaves(selected))
    return max(1, (MEMORY_BUDGET if memory_budget is None else memory_budget) // max(1, per_copy))


def evaluate(
    f: Callable,
    args: tuple,
    nums: tuple,
    *,
    masks,
    baselines,
    coalitions: torch.Tensor,
    copy_baselines: bool = False,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool = False,
    aggregate: bool = False,
) -> torch.Tensor:
    """f at K perturbed copies of the inputs: (B, K) outputs, (B, K, O) for many outputs.

    Args:
      coalitions: (K, F) shared or (B, K, F) per example, 0/1 (NOTE: [Features and coalitions]).
      baselines: tree like the selected inputs, each broadcastable to its input; with
        ``copy_baselines`` each leaf is (K, B, ...), one baseline per copy (feature permutation).
      aggregate: f returns one number per call (then B is reported as 1 and each copy is a call).
    """
    selected, rebuild = T.split_args(args, nums)
    batch = T.batch_size(selected)
    z = coalitions if coalitions.ndim == 3 else coalitions.unsqueeze(0)
    if aggregate and z.shape[0] != 1:
        raise ValueError("a model returning one number per batch needs coalitions shared by all examples")
    k = z.shape[1]
    per = 1 if aggregate else copies_per_call(selected, batch, chunk_size, memory_budget)
    outs = []
    with torch.no_grad(), T.batch_scope(batch):
        for s in _progress(range(0, k, per), show_progress, total=math.ceil(k / per)):
            e = min(s + per, k)
            keep = keep_masks(z[:, s:e].to(torch.get_default_dtype()), masks, selected, batch)
            base = T.tree_map(lambda b: b[s:e], baselines) if copy_baselines else T.tree_map(lambda b: b.unsqueeze(0), baselines)
            rows = T.tree_map(lambda x, b, kp: perturb(x.unsqueeze(0), b, kp).reshape((-1,) + tuple(x.shape[1:])), selected, base, keep)
            call = tuple(a if i in nums else T.fold(a, e - s, batch) for i, a in enumerate(args))
            out = f(*T.split_args(call, nums)[1](rows))
            check_finite(out)
            outs.append(out.reshape((1,) if aggregate else (e - s, batch) + tuple(out.shape[1:])))
    if aggregate:
        return torch.cat(outs).reshape(1, k)
    out = torch.cat(outs)  # (K, B, ...)
    if out.ndim == 3 and out.shape[2] == 1 and not getattr(f, "multi_output", False):
        out = out[..., 0]
    return out.transpose(0, 1)


def outputs_at(f: Callable, args: tuple) -> tuple[torch.Tensor, bool]:
    """f at the unperturbed inputs: (B,) or (B, O), and whether f returns one number per batch."""
    with torch.no_grad():
        out = f(*args)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model function must return a tensor, got {type(out).__name__}")
    check_finite(out)
    if out.ndim == 0:
        return out.reshape(1), True
    if out.ndim == 2 and out.shape[1] == 1 and not getattr(f, "multi_output", False):
        out = out[:, 0]
    if out.ndim > 2 or (out.ndim == 2 and not getattr(f, "multi_output", False)):
        raise ValueError(
            f"the model returns {tuple(out.shape)} outputs per batch but a perturbation method explains one "
            "number per example: choose it with xattr.target(model, t), or xattr.outputs([...]) for several"
        )
    return out, False


def baseline_tree(selected: tuple, baselines, as_tuple: bool) -> tuple:
    """Baselines as a tuple of trees like ``selected`` (for an int argnums, ``baselines`` is a tree
    like that one argument), each leaf a tensor of its input's dtype broadcastable to it."""
    base = baselines_like(selected if as_tuple else selected[0], baselines)
    base = base if as_tuple else (base,)
    return T.tree_map(lambda x, b: torch.as_tensor(b, device=x.device).to(x.dtype), selected, base)


def _progress(it, show: bool, total: int):
    if not show:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional (the demo extra): no bar, but say so once
        import warnings

        warnings.warn("show_progress needs tqdm (pip install tqdm); running without a progress bar", stacklevel=3)
        return it
    return tqdm(it, total=total, desc="perturbed copies", unit="call")
