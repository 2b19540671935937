"""Where DeepLift's paired rows sit in a tensor (NOTE: [Paired rows] in deeplift_rules.py).

NOTE: [Rows in dim 0 or dim 1]
DeepLift runs every example with its reference in one call of R rows (2B paired, or B + 1 with a
shared reference row), and each rule finds those rows in a tensor by its size alone: in dim 0
(batch-first layouts), or, in a 3-d tensor whose dim 0 is not R, in dim 1: the sequence-first
``(L, R, D)`` layout of ``nn.TransformerEncoderLayer``, ``nn.TransformerDecoderLayer``,
``nn.MultiheadAttention`` or ``nn.LSTM`` with ``batch_first=False``, or of a ``transpose(0, 1)`` in
the model. A 3-d tensor whose dim 1 is R and whose dim 0 is R too, or a multiple of R, is
ambiguous: ``(L, R, D)`` with L == R or L == 2R looks like a batch-first ``(R, L, D)`` or
``(2R, L, D)``, and attention weights with the heads merged into the rows, ``(R * H, L, L)`` with
L == R, look sequence-first. Pairing the wrong dim pairs positions as if they were examples:
wrong numbers and no error (an example alone was 1e-2 to 7e-2 off its row in the batch). So no
rule guesses: `rows_dim` aborts the call (`Ambiguous`, a `BaseException` like ``layers._Stop``, so
that a model's ``try/except Exception`` cannot swallow it), and `unambiguous` runs it again with
its copies of the batch repeated k times, k * R rows, k the least factor for which no shape seen
ambiguous would be ambiguous again (if another one is, it is noted and the call retried, at most
four tries, then a ValueError): ``(L, kR, D)`` holds the rows in dim 1, ``(kR, L, D)`` in dim 0, and
``(R * H * k, L, L)`` nowhere, as without the coincidence. The first copies' results are kept.

Costs: a batch-first model keeps its one call and a few integer comparisons per ruled op; only
3-d tensors are read in dim 1 (an MLP as wide as R, or a CNN with R channels, never retries),
and a coincidence costs the aborted part of a call and one call of k times the rows (a chunk of
DeepLift SHAP then exceeds its ``chunk_size`` k times). What stays unseen: a sequence-first
tensor of another rank (``(L, R)``, ``(L, R, H, D)``) keeps its ordinary gradient, as does a 3-d
tensor whose rows sit in dim 2 or later; a tensor with R in dim 0 or dim 1 by chance alone (a
parameter of R rows) is paired as if it held them. Layer DeepLift reads its activations' rows in
dim 0 and checks them with `rows_dim` too: an ambiguous one retries, one with the rows elsewhere
(a sequence-first layer's output) is a ValueError. Under a user's own `paired_rows` an ambiguous
tensor is a ValueError.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable

from . import tree as T

# (rows, reference_grads, shared copies, notes: the ambiguous shapes of a retrying call, or None)
_ROWS: contextvars.ContextVar = contextvars.ContextVar("xattr_paired_rows", default=(None, True, 0, None))

_MAX_TRIES = 4


class Ambiguous(BaseException):
    """A tensor whose rows could sit in dim 0 or dim 1 (NOTE: [Rows in dim 0 or dim 1])."""


@contextlib.contextmanager
def paired_rows(rows: int, *, reference_grads: bool = True, shared: int = 0):
    """Declares that ops of this many rows hold inputs then references (NOTE: [Paired rows]).

    The rows sit in dim 0 of a tensor, or in dim 1 of a 3-d one whose dim 0 is not ``rows``
    (NOTE: [Rows in dim 0 or dim 1]); a 3-d tensor that could hold them in both is refused. ``reference_grads=False``
    promises that only the input half is seeded (deep_lift's case): rules may then skip the
    reference half's multipliers and give it zero gradients. ``shared=c`` (``True`` is 1): the
    rows are ``rows - c`` inputs, c copies of a batch one after the other, then c reference
    rows, one shared by each copy (NOTE: [Shared reference]); it needs
    ``reference_grads=False``, and it also declares the layout to per-example output selections
    (`tree.shared_reference`).
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
    token = _ROWS.set((rows, reference_grads, shared, notes))
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
    rows = _ROWS.get()[0]
    if rows is None or x.ndim == 0:
        return None
    shape = x.shape
    if shape[0] == rows:
        if x.ndim != 3 or shape[1] != rows:
            return 0
    elif x.ndim != 3 or shape[1] != rows:
        return None
    elif shape[0] % rows:
        return 1
    elif not shape[0]:  # (0, R, ...): nothing to pair
        return None
    notes = _ROWS.get()[3]
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
