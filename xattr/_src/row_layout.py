"""Where DeepLift's paired rows sit in a tensor (NOTE: [Paired rows] in deeplift_rules.py).

NOTE: [Rows in dim 0 or dim 1]
DeepLift runs every example with its reference in one call of R rows (2B paired, or B + 1 with a
shared reference row), and each rule finds those rows in a tensor by its size alone: in dim 0
(batch-first layouts), or, where dim 0 is not R, in dim 1: the sequence-first ``(L, R, D)`` layout
of ``nn.TransformerEncoderLayer``, ``nn.TransformerDecoderLayer``, ``nn.MultiheadAttention`` or
``nn.LSTM`` with ``batch_first=False``, or of a ``transpose(0, 1)`` in the model; the ``(out, R)``
of ``W @ x.T``; the ``(L, R, H, d)`` heads of attention written by hand on a sequence-first
tensor. Where dim 0 is R too or a multiple of R (or, at rank 4 and more, a later dim is R), size
cannot tell: ``(L, R, D)`` with L == R or L == 2R looks like a batch-first ``(R, L, D)`` or
``(2R, L, D)``; attention weights with the heads merged into the rows, ``(R * H, L, L)`` with
L == R, look sequence-first, and so do tokens merged into the rows, ``(R * L, D)`` with D == R,
and scores ``(L, M, R, H)`` with M == R, whose rows sit in dim 2. Pairing the wrong dim pairs
positions as if they were examples: wrong numbers and no error (an example alone was 1e-2 to
7e-2 off its row in the batch). So no rule guesses: `rows_dim` aborts the call (`Ambiguous`, a
`BaseException` like ``layers._Stop``, so that a model's ``try/except Exception`` cannot swallow
it), and `unambiguous` runs it again with its copies of the batch repeated k times, k * R rows, k
the least factor for which no shape seen ambiguous would be ambiguous again (if another one is,
it is noted and the call retried, at most four tries, then a ValueError): ``(L, kR, D)`` holds
the rows in dim 1, ``(kR, L, D)`` in dim 0, and ``(R * H * k, L, L)`` nowhere, as without the
coincidence. The first copies' results are kept.

One coincidence is read without a retry: ``(R, R, ...)`` of rank 2 or of rank 4 and more, in a
call none of whose tensors held the rows in dim 1. Batch-first models meet it wherever a layer is
R wide (an MLP, a CNN with R channels, the two logits of one example at R = 2), and a retry would
cost them calls: ResNet-50 at R = 64 (32 examples, a baseline each) would run 64 rows (aborted at
the stem), 128 (aborted at layer2's 128 channels), then 192: 3.3 times the time (measured). A
sequence-first tensor of those ranks is rarer, and a model with another ruled op on a
sequence-first tensor (a 3-d activation, torch's layers, a layer of another width) shows its rows
in dim 1 there. So ``(R, R, ...)`` reads dim 0 and is remembered (`_Seen`, one per call): once the
call finds rows in dim 1, before or after, it is ambiguous. 3-d tensors, where sequence-first
layouts are common, are ambiguous at every coincidence.

Costs: a batch-first model keeps its one call and a few integer comparisons per ruled op (a CNN
with R channels and an MLP as wide as R never retry); a coincidence costs the aborted part of a
call and one call of k times the rows (a chunk of DeepLift SHAP then exceeds its ``chunk_size`` k
times); in a batch-first model that is a 3-d one as above, or rows merged into dim 0 next to a
dim of R (``(R * L, R)``). What stays unseen: a model whose only sequence-first tensors of rank 2
or >= 4 are ``(R, R, ...)`` (an ``(L, R, H, d)`` at L == R and no other ruled sequence-first op)
has them paired by position (measured: 3.5e-2 off the batch-first twin, whose attributions were
below 0.1; the delta shows it, 8e-2 instead of 1e-16); a tensor whose rows sit in dim 2 or later
keeps its ordinary gradient (a 3-d ``(L, R, R)`` reads dim 1), and so do rows merged with another
dim unless a watched op made them (NOTE: [Rows merged with another dim] in merged_rows.py, which
also reads ``(R * L, R)`` so made without a retry); a tensor of parameters alone with R
in dim 0 or dim 1 is paired as if it held the rows (no input's gradient passes through it).
Layer DeepLift reads its activations' rows in dim 0 and checks them with `rows_dim` too: an
ambiguous one retries, one with the rows elsewhere (a sequence-first layer's output) is a
ValueError. Under a user's own `paired_rows` an ambiguous tensor is a ValueError.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable

from . import tree as T

# (rows, reference_grads, shared copies, notes: the ambiguous shapes of a retrying call, or None,
#  what the call's tensors showed so far: a `_Seen`, or None)
_ROWS: contextvars.ContextVar = contextvars.ContextVar("xattr_paired_rows", default=(None, True, 0, None, None))

_MAX_TRIES = 4


class Ambiguous(BaseException):
    """A tensor whose rows could sit in dim 0 or dim 1 (NOTE: [Rows in dim 0 or dim 1])."""


@contextlib.contextmanager
def paired_rows(rows: int, *, reference_grads: bool = True, shared: int = 0):
    """Declares that ops of this many rows hold inputs then references (NOTE: [Paired rows]).

    The rows sit in dim 0 of a tensor, or in dim 1 of one whose dim 0 is not ``rows`` (NOTE:
    [Rows in dim 0 or dim 1]); a tensor that could hold them in both is refused. ``reference_grads=False``
    promises that only the input half is seeded (deep_lift's case): rules may then skip the
    reference half's multipliers and give it zero gradients. ``shared=c`` (``True`` is 1): the
    rows are ``rows - c`` inputs, c copies of a batch one after the other, then c reference
    rows, one shared by each copy (NOTE: [Shared reference]); it needs
    ``reference_grads=False``, and it also declares the layout to per-example output selections
    (`tree.shared_reference`).

    Example:
      >>> ruled = xattr.rules(model, xattr.rule.deep_lift_rules())
      >>> with xattr.rule.paired_rows(2 * len(x)):          # rows: x, then its references
      ...     m = xattr.grad(lambda z: ruled(z)[:, 3].sum())(torch.cat([x, x_ref]))[:len(x)]
      >>> attr = m * (x - x_ref)                           # DeepLift's attribution
    """
    with rows_scope(rows, reference_grads=reference_grads, shared=shared):
        yield


@contextlib.contextmanager
def rows_scope(rows: int, *, reference_grads: bool = True, shared: int = 0, notes: list | None = None):
    """`paired_rows`, with ``notes``: where an ambiguous tensor's shape goes before `Ambiguous`
    is raised for `unambiguous` to retry (None: a ValueError instead)."""
    shared = int(shared)
    if shared and reference_grads:
        raise ValueError("paired_rows(shared=...) gives the shared reference rows no gradient: pass reference_grads=False")
    if shared and (rows - shared) % shared:
        raise ValueError(f"paired_rows: {rows - shared} input rows do not split into {shared} copies of a batch")
    token = _ROWS.set((rows, reference_grads, shared, notes, _Seen()))
    try:
        if shared:
            with T.shared_reference(rows - shared, shared):
                yield
        else:
            yield
    finally:
        _ROWS.reset(token)


def rows_dim(x) -> int | None:
    """The dim of ``x`` that holds the paired rows: 0, 1, or None (not paired: outside
    `paired_rows`, or no dim of the rows' size where they may sit); raises where it is
    ambiguous (NOTE: [Rows in dim 0 or dim 1])."""
    rows, _, _, notes, seen = _ROWS.get()
    if rows is None or x.ndim == 0:
        return None
    shape = x.shape
    if x.ndim == 1 or shape[1] != rows:
        return 0 if shape[0] == rows else None
    if not shape[0]:  # (0, R, ...): nothing to pair
        return None
    if x.ndim == 3:  # every coincidence is ambiguous
        if shape[0] % rows:
            return _found_in_second(shape, notes, seen)
        return _ambiguous(shape, rows, notes)
    # rank 2 or >= 4: (R, R, ...) reads as a batch-first model's until the call holds rows in dim 1
    if shape[0] == rows and not seen.second:
        seen.batch_first.append(shape)
        return 0
    if not shape[0] % rows or rows in shape[2:]:  # rows merged into dim 0, or in a later dim
        return _ambiguous(shape, rows, notes)
    return _found_in_second(shape, notes, seen)


def rows_in_dim_0(shape) -> bool:
    """Whether `rows_dim` reads the call's rows in dim 0 of a tensor of this shape plainly (dim 0
    holds them, dim 1 cannot), without raising or noting anything. DeepLift's fused ops
    (deeplift_fused.py) run only there; anything else (rows in dim 1, merged with another dim, a
    shape `rows_dim` would retry or remember) runs written out, where the steps' own rules decide
    as before: a fused op must not raise where the steps would not (NOTE: [Rows in dim 0 or dim 1])."""
    rows = _ROWS.get()[0]
    return len(shape) > 0 and shape[0] == rows and (len(shape) == 1 or shape[1] != rows)


class _Seen:
    """What one call's tensors showed so far: whether one held the rows in dim 1, and the shapes
    (R, R, ...) of rank 2 or >= 4 read in dim 0 although dim 1 could hold the rows too."""

    __slots__ = ("second", "batch_first", "merged")

    def __init__(self):
        self.second, self.batch_first = False, []
        self.merged: dict = {}  # {size: how the rows sit in a dim of it} (NOTE: [Rows merged with another dim] in merged_rows.py)


def _found_in_second(shape, notes: list | None, seen: _Seen) -> int:
    """1, noting that the call holds rows in dim 1; where a tensor earlier in it was read
    batch-first by its size alone, that reading may be wrong: the call is ambiguous."""
    seen.second = True
    if seen.batch_first:
        if notes is not None:
            notes.extend((s[0], s[1]) for s in seen.batch_first[1:])
        return _ambiguous(seen.batch_first[0], shape[1], notes)
    return 1


def _ambiguous(shape, rows: int, notes: list | None):
    """Raises `Ambiguous` for `unambiguous` to retry, noting the shape, or, outside it, a
    ValueError."""
    if notes is None:
        raise ValueError(
            f"paired_rows({rows}): a tensor of shape {tuple(shape)} may hold the {rows} rows in dim 0 or in dim 1 (a "
            "sequence-first layout whose length equals the rows, or a multiple of them); DeepLift retries such a call "
            "with more rows by itself, a direct use of paired_rows cannot"
        )
    notes.append((shape[0], shape[1]))
    raise Ambiguous


def unambiguous(call: Callable[[int, list], object], rows: int):
    """``call(k, notes)``: one call whose copies of the batch are repeated k times (k * rows rows),
    run in `rows_scope(..., notes=notes)`; retried with a larger k while a tensor in it is
    ambiguous (NOTE: [Rows in dim 0 or dim 1]). Returns its result."""
    notes: list = []
    k = 1
    for _ in range(_MAX_TRIES):
        try:
            return call(k, notes)
        except Ambiguous:
            k = _next_factor(notes, rows, k)
    shapes = ", ".join(f"({a}, {b}, ...)" for a, b in sorted(set(notes)))
    raise ValueError(
        f"DeepLift: tensors of shapes {shapes} stayed ambiguous at every row count tried (multiples of {rows}): "
        "their dim 0 or dim 1 may hold the paired rows (docs/rules.md, DeepLift); use batch-first layouts"
    )


def _next_factor(notes: list, rows: int, k: int) -> int:
    """The least factor above k for which no noted shape, taken as fixed, is ambiguous (nor
    pairs a dim of its own size)."""
    j = k + 1
    while True:
        r = j * rows
        if all(r != a and r != b and a % r for a, b in notes):
            return j
        j += 1
