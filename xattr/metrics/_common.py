"""Shared plumbing of the metrics: calling perturbation functions, matching attributions to inputs.

NOTE: [Perturbed copies of each example]
A metric draws n perturbed copies of every example. The copies are *example-major* when they are
handed to a perturbation function (rows ``i * n ... (i + 1) * n - 1`` are example i's, Captum's
``repeat_interleave`` layout, so a Captum perturbation function sees what Captum would give it)
and are kept as ``(B, n, ...)`` tensors. Before a model or attribution call they are folded
copy-major into the batch (NOTE: [Folding copies into the batch axis]), chunk by chunk.

A perturbation function that takes a ``generator`` keyword is called once per example with that
example's n copies and its own ``torch.Generator`` (NOTE: [Explicit randomness]): with an int
seed an example gets the same perturbations whatever batch it is in. Without a generator it is
called once on all n * B copies. All perturbations are drawn before the copies are chunked, so
``chunk_size`` never changes them.

NOTE: [x as copy 0]
A metric that needs its function at x and at the copies (sensitivity's phi(x), infidelity's
f(x)) calls it once on blocks 0..n, block 0 being x itself and block k copy k - 1: the first
chunk's call holds x, so there is no call of B rows of its own (with B n rows after it, the
floor's one call of B (n + 1) rows was 1.17-1.20x for sensitivity of saliency, 1.13-1.15x
folded). A seeded attribution function draws at x what it draws at every copy (``same_draws``).
Where a perturbed leaf differs from its input in shape per example, dtype or device, x keeps a
call of its own (`x_foldable`).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from .._src import tree as T
from .._src.perturb import check_not_empty
from .._src.sampling import row_seeds, streams


def batch_of(tree) -> int:
    """The batch size (dim 0) of a tree of tensors; a ValueError for an empty batch.

    NOTE: [Empty batches]
    Every metric calls this first, on its inputs (or, for the metrics of attributions alone, on
    the attributions): with 0 examples there is nothing to evaluate, and the reshapes to (B, -1)
    further on would fail with an unhelpful message. The perturbation methods' check, reworded.
    """
    batch = T.batch_size(tree)
    check_not_empty(batch, "a metric has nothing to evaluate")
    return batch


def accepts_generator(fn: Callable) -> bool:
    try:
        return "generator" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def n_positional(fn: Callable) -> int:
    """How many positional arguments fn takes (``generator`` excluded); a large number for *args."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params):
        return 1 << 20
    return sum(1 for p in params if p.kind in kinds and p.name != "generator")


def draw_copies(perturb_func: Callable, x, n: int, *, batched=(), extra=(), generator=None, what: str):
    """Calls ``perturb_func(copies, *batched_copies, *extra[, generator=g])``; leaves come back (B, n, ...).

    ``x`` is the tree the function receives (a tensor, or a tuple for several inputs); each of
    ``batched`` is a tree of (B, ...) tensors expanded alongside (baselines); ``extra`` values
    are passed as they are. See NOTE: [Perturbed copies of each example].
    """
    batch = T.batch_size(x)
    with_gen = accepts_generator(perturb_func)
    if generator is not None and not with_gen:
        raise ValueError(
            f"generator={generator!r} was given but the perturbation function {_name(perturb_func)} takes no "
            "`generator` keyword, so xattr cannot seed it: add a `generator=None` keyword and draw with "
            "it (torch.rand(..., generator=generator)), or pass generator=None to use torch's global generator"
        )

    def call(rows, others, gen):
        kw = {"generator": gen} if with_gen else {}
        return perturb_func(rows, *others, *extra, **kw)

    def copies(tree, sl):
        return T.tree_map(lambda t: t[sl].repeat_interleave(n, 0), tree)

    if generator is None:
        out = call(copies(x, slice(None)), [copies(b, slice(None)) for b in batched], None)
        return _split_rows(out, batch, n, what)
    (stream,) = streams(generator, 1)
    device = T.leaves(x)[0].device
    outs = []
    for i, seed in enumerate(row_seeds(stream, batch)):  # the seeds of `sampling.per_example`
        g = torch.Generator(device=device).manual_seed(seed)
        sl = slice(i, i + 1)
        outs.append(_split_rows(call(copies(x, sl), [copies(b, sl) for b in batched], g), 1, n, what))
    return T.tree_map(lambda *parts: torch.cat(parts), *outs)


def _split_rows(out, batch: int, n: int, what: str):
    def split(t):
        if not isinstance(t, torch.Tensor) or t.ndim == 0 or t.shape[0] != batch * n:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"{what} must return tensors with one row per perturbed copy ({batch * n} rows: "
                f"{n} copies of each of {batch} example(s)), got {shape}"
            )
        return t.reshape((batch, n) + tuple(t.shape[1:]))

    return T.tree_map(split, out)


def _name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def same_structure(a, b) -> bool:
    sa = T.optree.tree_structure(a, namespace="xattr")
    sb = T.optree.tree_structure(b, namespace="xattr")
    return sa == sb


def match_attributions(attributions, x, what: str = "attributions"):
    """Checks that attributions have the tree structure and shapes of the attributed inputs x.

    Captum's forms are accepted too: a list for a tuple, a 1-tuple for a single tensor.
    """
    if isinstance(attributions, list):
        attributions = tuple(attributions)
    if isinstance(x, torch.Tensor) and isinstance(attributions, tuple) and len(attributions) == 1:
        attributions = attributions[0]
    if not same_structure(attributions, x):
        raise ValueError(
            f"{what} must have the structure of the attributed input(s) (one tensor per input tensor); got "
            f"{T.optree.tree_structure(attributions, namespace='xattr')} for inputs "
            f"{T.optree.tree_structure(x, namespace='xattr')}"
        )

    def check(a, xi):
        if not isinstance(a, torch.Tensor) or tuple(a.shape) != tuple(xi.shape):
            shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(
                f"{what} of shape {shape} do not match their input's shape {tuple(xi.shape)} (a many-outputs "
                "target adds a K axis: explain one output per example, with xattr.target(model, t))"
            )
        return stopped(a)

    return T.tree_map(check, attributions, x)


def resolve(attributions, args: tuple):
    """Precomputed attributions as given, or an attribution function's result at args (`stopped`)."""
    if callable(attributions):
        return stopped(attributions(*args))
    return attributions


def stopped(tree):
    """Attributions detached at top level (the metrics return plain numbers, as Captum's do), and
    kept as they are inside a torch.func transform: there ``detach`` would cut them off from the
    transform's level too, and ``torch.func.grad`` of a metric (attribution robustness training)
    came back silently zero (NOTE: [Detached results] in gradients.py)."""
    if torch._C._functorch.maybe_current_level() is not None:
        return tree
    return T.tree_map(lambda a: a.detach() if isinstance(a, torch.Tensor) else a, tree)


def flat(tree, lead: int = 1) -> torch.Tensor:
    """Every leaf flattened after its first ``lead`` dims and concatenated: (..., P)."""
    return torch.cat([t.reshape(tuple(t.shape[:lead]) + (-1,)) for t in T.leaves(tree)], dim=-1)


def passthrough(args: tuple, nums: tuple, copies: int, batch: int) -> tuple:
    """The non-attributed arguments tiled for ``copies`` folded copies of the batch."""
    return tuple(a if i in nums else T.fold(a, copies, batch) for i, a in enumerate(args))


def x_foldable(x, pert) -> bool:
    """Every perturbed leaf (B, n, ...) matches its input leaf in shape, dtype and device, so x
    can be block 0 of the copies' calls (NOTE: [x as copy 0])."""
    return all(p.shape[:1] + p.shape[2:] == t.shape and p.dtype == t.dtype and p.device == t.device
               for t, p in zip(T.leaves(x), T.leaves(pert)))


def block_rows(x, pert, s: int, e: int, lead: int):
    """Model rows of blocks s..e, copy-major, from (B, n, ...) copies; with ``lead`` 1 block 0 is
    x itself and block k copy k - 1 (NOTE: [x as copy 0]), with ``lead`` 0 block k is copy k."""

    def one(t, p):
        part = p[:, max(s - lead, 0) : e - lead].transpose(0, 1)
        if lead and s == 0:
            part = torch.cat([t.unsqueeze(0), part])
        return part.reshape((-1,) + tuple(p.shape[2:]))

    return T.tree_map(one, x, pert)


def positive_nums(nums: tuple, n_args: int) -> tuple:
    return tuple(a + n_args if a < 0 else a for a in nums)


def model_rows(out: Any, what: str = "the model function") -> torch.Tensor:
    """A model's outputs as (R,): one number per row, else an error saying how to choose one."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{what} must return a tensor, got {type(out).__name__}")
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.ndim != 1:
        raise ValueError(
            f"{what} returns {tuple(out.shape)} outputs per batch but this metric needs one number per "
            "example: choose it with xattr.target(model, t)"
        )
    return out


def attributed(args: tuple, nums: tuple, as_tuple: bool, attributions):
    """A metric's call: ``(idx, selected, rebuild, batch, x, phi)``: the attributed argument
    positions, those arguments and how to put them back, the batch size, the input as the user
    gave it (a tensor or a tuple) and the attributions matched to it (computed first where
    ``attributions`` is an attribution function)."""
    idx = positive_nums(nums, len(args))
    selected, rebuild = T.split_args(args, idx)
    batch = batch_of(selected)
    x = selected if as_tuple else selected[0]
    return idx, selected, rebuild, batch, x, match_attributions(resolve(attributions, args), x)
