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
[Folding copies into the batch axis]) and evaluated under ``torch.no_grad``
(`gradients.model_calls`) in as few calls as the memory budget allows (`budget.copies_per_call`): ``chunk_size`` (model
rows per call, the library-wide knob) when given, else as many copies as fit ``memory_budget``
bytes of perturbed inputs (default ``MEMORY_BUDGET`` on an accelerator, ``CPU_MEMORY_BUDGET`` on CPU; the model's activations for
those rows come on top), and at most ``MAX_ROWS`` rows. A call always holds at least one whole
copy of the batch. A perturbed element is exactly the input's or the baseline's value, for every
dtype (`copies.perturb`: ``where(keep, x, b)``; for large float copies on CPU ``x * k + b * (1 - k)`` with k in
{0, 1}, which is faster there and equal up to the sign of a zero: a kept -0.0 comes out +0.0
beside a baseline >= 0, a removed one beside x >= 0 where the baseline is -0.0; an input or
baseline holding a NaN or an infinity, where ``inf * 0`` would be NaN, takes ``where``), never
``b + keep * (x - b)``, which rounds. Pass-through arguments with the batch in dim 0 are
tiled with the copies. Coalitions and per-copy baselines can be made chunk by chunk
(`Coalitions`, and any ``leaf[s:e]``-sliceable baseline), so K copies never have to exist at
once: occlusion with stride 1 and feature permutation of every pixel stay within the budget.
Models that return one number for the whole batch (Captum's "aggregate mode") cannot take
folded copies: each copy is then one call on the whole batch, and coalitions and feature masks
must be shared by all examples.
"""

from __future__ import annotations

import math
import weakref
from typing import Callable

import torch
from torch.utils.weak import WeakIdKeyDictionary

from . import tree as T
from .budget import Spans, copies_per_call
from .checks import baselines_tuple, check_finite
from .copies import perturb
from .exact_baselines import as_floating, check_exact, output_float_dtype  # the methods import as_floating from here
from .gradients import model_calls
from .masks import SMALL, constant, keep_masks
from .progress import progress


class Coalitions:
    """K coalitions made chunk by chunk: ``rows(start, stop)`` gives copies start..stop-1 as a
    (1 or B, stop - start, F) 0/1 tensor (1: shared by all examples). For coalition sets too
    large to hold at once (occlusion's windows over every pixel). ``copies(start, stop)``, when
    given, makes those copies of the inputs itself: a tree like the attributed inputs, each leaf
    ((stop - start) * B, ...) copy-major, exactly the copies `perturb` makes from ``rows`` (up to
    the sign of a zero where `perturb` allows it), or None to leave them to ``rows``; start may
    be -1, for `evaluate`'s ``with_inputs``: copy -1 keeps every feature."""

    def __init__(self, n_copies: int, rows: Callable[[int, int], torch.Tensor], shared: bool = True,
                 copies: Callable[[int, int], object] | None = None):  # fmt: skip
        self.n_copies, self.rows, self.shared, self.copies = n_copies, rows, shared, copies


def evaluate(f: Callable, args: tuple, nums: tuple, *, aggregate: bool = False, **kwargs) -> torch.Tensor:
    """f at K perturbed copies of the inputs: (B, K) outputs, (B, K, O) for many outputs (`_evaluate`).

    A batch of one is one example and one batch at once: a model may answer it with one number
    that is the batch's (a loss shaped (1,), or (1, 1)), which `outputs_at` cannot tell from the
    example's. Its first call of several copies then returns one number for them all, and the
    copies go one per call as in aggregate mode: for one example the same numbers, those that
    ``chunk_size=1`` gives."""
    try:
        return _evaluate(f, args, nums, aggregate=aggregate, **kwargs)
    except _OneNumber:
        if aggregate or kwargs.get("with_inputs"):
            raise
        return _evaluate(f, args, nums, aggregate=True, **kwargs)


def _evaluate(
    f: Callable,
    args: tuple,
    nums: tuple,
    *,
    masks,
    baselines,
    coalitions,
    copy_baselines: bool = False,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool = False,
    aggregate: bool = False,
    with_inputs: bool = False,
) -> torch.Tensor:
    """f at K perturbed copies of the inputs: (B, K) outputs, (B, K, O) for many outputs.

    Args:
      coalitions: (K, F) shared or (B, K, F) per example, 0/1 or bool (NOTE: [Features and
        coalitions]); or a `Coalitions` that makes them chunk by chunk.
      baselines: tree like the selected inputs, each broadcastable to its input; with
        ``copy_baselines`` each leaf holds one baseline per copy: a (K, B, ...) tensor, or any
        object whose ``leaf[s:e]`` is the (e - s, B, ...) tensor of copies s..e-1 (feature
        permutation's shuffled batches, made chunk by chunk).
      aggregate: f returns one number per call (then B is reported as 1 and each copy is a call).
      with_inputs: the unperturbed inputs go first, as copy 0 of K + 1 (`inputs_and_copies`);
        the first call's output is checked like `outputs_at`'s, and a model that returns one
        number for it raises `_OneNumber` (aggregate mode cannot fold copies into one call).

    Model calls: ``ceil(K / c)`` with c copies per call (`copies_per_call`); one per copy in
    aggregate mode. Without ``chunk_size``, a call that runs out of memory is retried with half
    its copies, and the rest go at that size. Each call has ``c * B`` rows (fewer in the last).
    """
    selected = T.split_args(args, nums)[0]
    batch = T.batch_size(selected)
    made = None  # a maker of the copies themselves (`Coalitions.copies`)
    if isinstance(coalitions, Coalitions):
        k, shared, rows_of, made = coalitions.n_copies, coalitions.shared, coalitions.rows, coalitions.copies
    else:
        z = coalitions if coalitions.ndim == 3 else coalitions.unsqueeze(0)
        if z.shape[0] not in (1, batch):
            raise ValueError(f"coalitions for {z.shape[0]} examples but the batch has {batch}")
        k, shared, rows_of = z.shape[1], z.shape[0] == 1, lambda s, e: z[:, s:e]
    if with_inputs:
        if copy_baselines or aggregate:
            raise ValueError("with_inputs needs shared baselines and a model with one output row per input row")
        if isinstance(coalitions, Coalitions):
            made = None if made is None else (lambda s, e, copies=made: copies(s - 1, e - 1))  # copy -1: the inputs
            rows_of = _after_ones(rows_of)
        else:
            z = _with_ones(coalitions, z)
            rows_of = lambda s, e: z[:, s:e]  # noqa: E731
        k += 1
    if aggregate and not shared:
        raise ValueError("a model returning one number per batch needs coalitions shared by all examples")
    per = 1 if aggregate else copies_per_call(selected, batch, chunk_size, memory_budget, k)
    spans = Spans(k, per, adaptive=chunk_size is None and not aggregate)
    outs, dtype = [], output_float_dtype(args)
    with model_calls(), T.batch_scope(batch):
        for s, e in progress(show_progress, spans, total=math.ceil(k / per), desc="perturbed copies", unit="call"):
            rows = None if made is None or copy_baselines else made(s, e)
            if rows is None:
                zs = rows_of(s, e)
                zs = zs if zs.ndim == 3 else zs.unsqueeze(0)
                keep = keep_masks(zs if zs.dtype == torch.bool else zs != 0, masks, selected, batch)
                base = T.tree_map(lambda b: b[s:e], baselines) if copy_baselines else T.tree_map(lambda b: b.unsqueeze(0), baselines)
                rows = T.tree_map(lambda x, b, kp: perturb(x.unsqueeze(0), b, kp).reshape((-1,) + tuple(x.shape[1:])), selected, base, keep)
                del zs, keep, base
            call = tuple(a if i in nums else T.fold(a, e - s, batch) for i, a in enumerate(args))
            try:
                out = f(*T.split_args(call, nums)[1](rows))
            except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError on torch >= 2.5, any device
                del rows, call
                if not spans.shrink(s, e):  # a fixed chunk_size, or one copy per call already
                    raise
                continue
            except Exception as err:
                if with_inputs and s == 0 and e > 1:  # perhaps a model of one number per batch (a loss)
                    raise _OneNumber(err) from err
                raise
            out = as_floating(_as_output(out, dtype, args), dtype)  # an integer output: NOTE: [Integer outputs]
            check_finite(out)
            if aggregate:
                if out.numel() != 1:
                    raise ValueError(f"the model returned one number for the unperturbed batch but shape {tuple(out.shape)} for a perturbed one")
                outs.append(out.reshape(1))
                continue
            if with_inputs and s == 0:
                _check_rows(out, (e - s) * batch, getattr(f, "multi_output", False))
            elif batch == 1 and e - s > 1 and out.numel() == 1:
                raise _OneNumber  # one number for several copies of a batch of one: see `evaluate`
            if out.ndim == 0 or out.shape[0] != (e - s) * batch:
                raise ValueError(
                    f"the model returned {tuple(out.shape)} for {(e - s) * batch} input rows ({e - s} copies of a "
                    f"batch of {batch}, folded into dim 0): a perturbation method needs one output row per input row"
                )
            outs.append(out.reshape((e - s, batch) + tuple(out.shape[1:])))
    if aggregate:
        return torch.cat(outs).reshape(1, k)
    return batch_first(outs[0] if len(outs) == 1 else torch.cat(outs), getattr(f, "multi_output", False))


def batch_first(out: torch.Tensor, multi: bool) -> torch.Tensor:
    """The outputs of K copies, (K, B[, 1 or O]) -> (B, K[, O]): a single output's axis dropped."""
    if out.ndim == 3 and out.shape[2] == 1 and not multi:
        out = out[..., 0]
    return out.transpose(0, 1)


class _OneNumber(Exception):
    """The model returned one number for a first call of several copies, or raised ``error`` on
    it (`evaluate` ``with_inputs``): perhaps it returns one number per batch."""

    def __init__(self, error: Exception | None = None):
        super().__init__()
        self.error = error


def _after_ones(rows_of: Callable[[int, int], torch.Tensor]) -> Callable[[int, int], torch.Tensor]:
    """Coalitions with an all-keep copy 0 in front: copies s..e-1 of the K + 1."""

    def rows(s: int, e: int) -> torch.Tensor:
        z = rows_of(max(s, 1) - 1, e - 1)
        z = z if z.ndim == 3 else z.unsqueeze(0)
        return _ones_first(z) if s == 0 else z

    return rows


def _ones_first(z: torch.Tensor) -> torch.Tensor:
    """(R, K, F) coalitions -> (R, K + 1, F) with an all-keep copy 0."""
    return torch.cat([z.new_ones((z.shape[0], 1, z.shape[2])), z], 1)


_WITH_ONES = WeakIdKeyDictionary()  # small coalitions tensor -> (its version, the same with an all-keep copy 0)


def _with_ones(coalitions: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``z`` (coalitions as (1 or B, K, F)) with an all-keep copy in front; made once per coalitions
    tensor (feature ablation's small ones are a cached constant) and version when it has at most
    `SMALL` elements: a larger one costs its making far less than the memory it would pin for as
    long as the coalitions live."""
    version = None if coalitions.is_inference() or z.numel() > SMALL else coalitions._version
    hit = _WITH_ONES.get(coalitions) if version is not None else None
    if hit is not None and hit[0] == version:
        return hit[1]
    z = _ones_first(z)
    if version is not None:
        _WITH_ONES[coalitions] = (version, z)
    return z


def _check_rows(out: torch.Tensor, rows: int, multi: bool) -> None:
    """A first call's output, checked as `outputs_at` checks f(x)'s (raises `_OneNumber` for one
    number where a batch of rows went in)."""
    if out.ndim == 0 or (rows > 1 and out.numel() == 1):
        raise _OneNumber
    if out.shape[0] == rows:
        _check_per_example(out, multi)


def _check_per_example(out: torch.Tensor, multi: bool) -> None:
    if out.ndim > 2 or (out.ndim == 2 and not multi and out.shape[1] != 1):
        raise ValueError(
            f"the model returns outputs of shape {tuple(out.shape[1:])} per example but a perturbation method explains "
            "one number per example: choose it with xattr.target(model, t), or xattr.outputs([...]) for several"
        )


def inputs_and_copies(f: Callable, args: tuple, nums: tuple, batch: int, *, coalitions, **kwargs) -> tuple[torch.Tensor, bool, torch.Tensor]:
    """(f(x), aggregate, f at the K copies): `outputs_at` and `evaluate` in one, f(x) folded into
    the first model call as one more copy (a call fewer: on a small model each call's fixed cost
    is a large part of the total). ``coalitions`` as `evaluate` takes them, or a function of
    ``aggregate`` that gives them (Shapley sampling's permutations are shared in aggregate mode):
    called with False first, and with the mode found if the folded call fails.

    A model that returns one number per batch cannot take folded copies: its first call returns
    one number, or fails (a loss closed over B labels); that call is thrown away, `outputs_at`
    finds the aggregate mode, and each copy gets its own call. Such a function is remembered
    (weakly), so later calls go that way at once. A per-example model that fails on the folded
    call gets its own error. f(x)'s rows run in a bigger batch than f(x) alone, so a matrix kernel
    may round them differently in the last bit (the brute-force tests compare to 1e-12 in float64).
    """
    check_not_empty(batch)
    make = coalitions if callable(coalitions) and not isinstance(coalitions, (torch.Tensor, Coalitions)) else lambda aggregate: coalitions
    error, one_number = None, False
    if not _known_one_number(f):
        try:
            outs = evaluate(f, args, nums, with_inputs=True, coalitions=make(False), **kwargs)
            return outs[:, 0], False, outs[:, 1:]
        except _OneNumber as refused:
            error, one_number = refused.error, refused.error is None
    out, aggregate = outputs_at(f, args, batch)
    aggregate = aggregate or (one_number and batch == 1 and out.numel() == 1)  # a batch of one's number (see `evaluate`)
    if aggregate:
        _remember_one_number(f)
    elif error is not None:
        raise error  # the model fails on folded copies: its own error
    return out, aggregate, evaluate(f, args, nums, aggregate=aggregate, coalitions=make(aggregate), **kwargs)


_ONE_NUMBER = weakref.WeakSet()  # model functions seen returning one number per batch


def _known_one_number(f: Callable) -> bool:
    try:
        return f in _ONE_NUMBER
    except TypeError:  # not weakly referable (and so never remembered)
        return False


def _remember_one_number(f: Callable) -> None:
    try:
        _ONE_NUMBER.add(f)
    except TypeError:
        pass


def _as_output(out, dtype: torch.dtype, args) -> torch.Tensor:
    """A model function's output as a tensor: a Python number is one number for the whole batch
    (Captum's forward functions may return one, e.g. a loss's ``.item()``), put on the device of
    the model's tensor arguments, the first one off the CPU if any (made on the CPU, it met CUDA
    feature masks in `scatter_features`)."""
    if isinstance(out, torch.Tensor):
        return out
    devices = [t.device for t in T.leaves(args) if isinstance(t, torch.Tensor)]
    device = next((d for d in devices if d.type != "cpu"), None)
    if isinstance(out, int) and not isinstance(out, bool) and -(2**63) <= out < 2**63:
        return torch.tensor(out, device=device)  # a count: exact, then taken as `as_floating` takes integer outputs
    if isinstance(out, float):  # a double, kept so: in float32 the drop 1000.0002 - 1000.0 came out 0.000183
        return torch.tensor(out, dtype=torch.float64, device=device)
    if isinstance(out, int) and not isinstance(out, bool):
        return torch.tensor(float(out), dtype=dtype, device=device)  # as an integer output is taken: float64 inputs keep it exact
    raise TypeError(f"the model function must return a tensor, got {type(out).__name__}")


def check_not_empty(batch: int | None, why: str = "a perturbation method has nothing to perturb or attribute") -> None:
    if batch == 0:
        raise ValueError(f"the batch is empty (0 examples): {why}")


def outputs_at(f: Callable, args: tuple, batch: int | None = None) -> tuple[torch.Tensor, bool]:
    """f at the unperturbed inputs: (B,) or (B, O), and whether f returns one number per batch.

    One number per batch is a 0-d output, or, when the batch size B > 1 is given, a 1-element
    one; with ``batch`` given, any other output must have B rows.
    """
    check_not_empty(batch)
    # the model gets copies: one writing into its input in place (x.clamp_()) must leave the user's
    # tensors, and the perturbed copies made from them afterwards, as they were
    private = T.cloned(args)
    with model_calls():
        dtype = output_float_dtype(args)
        out = as_floating(_as_output(f(*private), dtype, args), dtype)  # NOTE: [Integer outputs]
    check_finite(out)
    if out.ndim == 0 or (batch is not None and batch > 1 and out.numel() == 1):
        return out.reshape(1), True
    if batch is not None and out.shape[0] != batch:
        raise ValueError(
            f"the model returned {tuple(out.shape)} for a batch of {batch}: a perturbation method needs one output "
            "row per example, or one number for the whole batch"
        )
    if out.ndim == 2 and out.shape[1] == 1 and not getattr(f, "multi_output", False):
        out = out[:, 0]
    _check_per_example(out, getattr(f, "multi_output", False))
    return out, False


def baseline_tree(selected: tuple, baselines, as_tuple: bool) -> tuple:
    """Baselines as a tuple of trees like ``selected`` (for an int argnums, ``baselines`` is a tree
    like that one argument), each leaf a tensor of its input's dtype broadcastable to it.

    Bool and integer inputs need baselines their dtype holds exactly (a clear error, not a
    silent truncation of 0.5 to 0, nor a wrap of 300 to 44 in uint8). A number stays one number
    (a 0-d tensor per input, made from the number itself: an int64 id past 2^53 is not rounded
    through a float), so copies are built from coalition-sized terms, not a full-size baseline."""
    leaves = T.leaves(selected)
    number = isinstance(baselines, (bool, int, float)) and all(isinstance(x, torch.Tensor) for x in leaves)
    if number and not isinstance(baselines, bool) and all(x.is_floating_point() for x in leaves):
        return T.tree_map(lambda x: constant(("baseline", repr(baselines), x.dtype, x.device),
                                             lambda: torch.tensor(baselines, dtype=x.dtype, device=x.device)), selected)
    check_exact(selected if as_tuple else selected[0], baselines)
    if number:
        return T.tree_map(lambda x: torch.tensor(baselines, dtype=x.dtype, device=x.device), selected)
    base = baselines_tuple(selected, baselines, as_tuple)
    return T.tree_map(lambda x, b: torch.as_tensor(b, device=x.device).to(x.dtype), selected, base)
