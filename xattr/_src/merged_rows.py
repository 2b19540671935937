"""DeepLift's paired rows merged with another dim (NOTE: [Paired rows] in deeplift_rules.py).

NOTE: [Rows merged with another dim]
Models often fold the examples into the rows of a bigger dim: OPT runs its MLP on
``hidden.reshape(-1, D)``, ``(B * L, D)``; attention runs its heads as ``(B * H, L, d)`` for
``torch.bmm`` (``nn.MultiheadAttention``'s own code, BLOOM); Swin runs windows as
``(B * windows, 16, C)``. Found by size alone (NOTE: [Rows in dim 0 or dim 1] in row_layout.py),
no dim of such a tensor holds the R paired rows, and its ruled ops kept their ordinary gradient:
OPT's delta was 3.1 times the change of its output. Size cannot tell the layouts apart either:
``(R, L, D).reshape(-1, D)`` puts each example's L rows together (batch-major: row ``i`` is
example ``i // L``), ``(L, R, D).reshape(-1, D)`` or ``torch.cat([h, h2])`` interleave them
(position-major: row ``i`` is example ``i % R``), both ``(R * L, D)``.

So while DeepLift's call runs, the mode watches the ops that make such tensors (`WATCHED`: the
reshapes, concatenations and repeats) of tensors computed from the attributed input (a table of
parameters or constants has no rows, whatever its size: DeBERTa-v2 repeats its relative position
keys, ``(H, 2k, d)``, to ``(R * H, 2k, d)``, and at H == R that repeat, read by size, noted the
heads' merged size position-major and left its attention's products their ordinary gradient,
2.4e-4 of the change; a per-example argument beside the input, an attention mask, is merged
as the activations it masks are, and goes unwatched), and notes, per size, how the rows sit in
it (`note`): a reshape whose output dim starts where the input's rows start and is a multiple of
R holds each example's rows together (for a C-order reshape the block of one example is then a
whole number of that dim's rows), a repeat-interleave by one count too (BATCH); a concatenation of
batches or a repeat along the rows, or a reshape of the rows into an outer dim that ends where
the rows end (a sequence-first merge), holds k whole blocks of the R rows (POSITION: paired on
views, NOTE: [Interleaved rows] in interleaved_rows.py); any other interleaving (blocks merged
again with the tokens, per-row repeat counts) holds neither (BOTH). A ruled op whose tensor has,
in dim 0 (or dim 1, past a dim 0 that is neither), a size noted batch-major and never otherwise, runs with
that size as its paired rows (`merged_rows`): the first half of its N rows are the inputs'
(examples 1..B, each's rows together) and the second half the references', row ``j`` pairing
with ``j + N / 2`` exactly as example ``b`` with ``b + B``, so every rule works unchanged. A size
noted two ways is read as neither (its ops keep their ordinary gradient, as before).

With a shared reference row (NOTE: [Shared reference]) a merged tensor is ``B * m`` input rows
then ``m`` reference rows, which the rules' broadcasting does not pair: the call stops
(`Unshared`, a ``BaseException`` like ``row_layout.Ambiguous``) and DeepLift runs it again with
2B rows; the ruled model remembers it (`unshared_if_merged`), so its later calls run 2B rows at
once.

What stays unseen: tensors of a noted size that were not made from the rows by a watched op
(indexing, ``index_add_``: a mixture of experts' dispatch, whose experts see different tokens for
an example and its reference) are read by their size, as parameters with R rows are;
interleavings other than whole blocks keep their ordinary gradient (the delta shows it).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .dependence import differentiated
from .row_layout import _ROWS, rows_dim

BATCH, POSITION, BOTH = "batch", "position", "both"

_RESHAPES = frozenset(
    f for f in (torch.reshape, torch.Tensor.reshape, torch.Tensor.view, torch.Tensor.view_as, torch.Tensor.reshape_as,
                torch.flatten, torch.Tensor.flatten, torch.ravel, torch.Tensor.ravel, torch.unflatten, torch.Tensor.unflatten)
)  # fmt: skip
_JOINS = frozenset({torch.cat, torch.concat, torch.concatenate})
_REPEATS = frozenset({torch.Tensor.repeat, torch.tile, torch.Tensor.tile})
_INTERLEAVES = frozenset({torch.repeat_interleave, torch.Tensor.repeat_interleave})
WATCHED = _RESHAPES | _JOINS | _REPEATS | _INTERLEAVES


class Unshared(BaseException):
    """A merged tensor in a call with shared reference rows (NOTE: [Rows merged with another dim])."""


def unshared_if_merged(run: Callable[[bool], object], ruled, shared: bool):
    """``run(shared)``; ``run(False)`` where a merged tensor stopped the shared call, and from then
    on for this ruled model (``ruled.merges_rows``: its later calls skip the aborted one)."""
    if shared and not ruled.merges_rows:
        try:
            return run(True)
        except Unshared:
            ruled.merges_rows = True
    return run(False)


def watched(merged: dict, rows: int, func, args: tuple, kwargs: dict):
    """func(*args, **kwargs), noting in ``merged`` how the paired rows sit in its result."""
    out = func(*args, **kwargs)
    if isinstance(out, torch.Tensor) and out.ndim and args:
        if func in _JOINS:
            dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
            _joined(merged, rows, args[0], dim, out)
        elif isinstance(args[0], torch.Tensor) and args[0].ndim and args[0].dtype == out.dtype:
            x = args[0]
            if func in _RESHAPES:
                _reshaped(merged, rows, x, out)
            elif func in _REPEATS:
                _repeated(merged, rows, x, out)
            else:
                _interleaved(merged, rows, x, out, args[2] if len(args) > 2 else kwargs.get("dim"), args[1] if len(args) > 1 else kwargs.get("repeats"))
    return out


def note(merged: dict, size: int, layout: str) -> None:
    """Notes that tensors of ``size`` in a dim hold the rows so (BATCH or POSITION)."""
    before = merged.get(size)
    merged[size] = layout if before is None or before == layout else BOTH


def _row_dims(merged: dict, rows: int, x: torch.Tensor) -> list:
    """x's dims (0 or 1) whose outermost factor is the paired rows: R of them, or a size noted
    batch-major; dim 1 only where dim 0 is neither; none where x is not computed from the input.
    ``(R, R, ...)`` is read as `rows_dim` reads it: a 3-d one stops the call to run it with more
    rows, as a ruled op on it would (its permuted twin, sequence-first ``(L, R, D)`` at L == R,
    would otherwise be noted batch-major)."""
    held = [d for d in range(min(x.ndim, 2)) if x.shape[d] == rows or merged.get(x.shape[d]) == BATCH]
    if not held or not differentiated(x):  # not computed from the input: no rows, whatever its size
        return []
    if len(held) == 2 and x.shape[0] == x.shape[1] == rows and _ROWS.get()[0] == rows:
        d = rows_dim(x)  # (R, R, ...): read as the ruled ops read it (NOTE: [Rows in dim 0 or dim 1]; 3-d retries)
        return [] if d is None else [d]
    return held[:1]


def _merged(n: int, rows: int) -> bool:
    return n > rows and n % rows == 0


def _reshaped(merged: dict, rows: int, x: torch.Tensor, out: torch.Tensor) -> None:
    for d in _row_dims(merged, rows, x):
        start = math.prod(x.shape[:d])  # elements before the rows' dim, per index of the dims after
        outer = 1
        for n in out.shape:
            if outer == start and _merged(n, rows):  # begins where the rows begin: each example's rows together
                note(merged, n, BATCH)
                return
            if outer < start < outer * n and _merged(n, rows):  # the rows inside an outer dim: interleaved,
                # as k blocks of R rows where the dim ends where the rows end (a sequence-first merge)
                blocks = x.shape[d] == rows and outer * n == start * rows
                note(merged, n, POSITION if blocks else BOTH)
                return
            outer *= n


def _joined(merged: dict, rows: int, tensors, dim, out: torch.Tensor) -> None:
    if not isinstance(dim, int) or not isinstance(tensors, (list, tuple)):
        return
    d = dim % out.ndim
    parts = [t for t in tensors if isinstance(t, torch.Tensor) and t.ndim == out.ndim]
    if d > 1 or not _merged(out.shape[d], rows) or not any(d in _row_dims(merged, rows, t) for t in parts):
        return
    # blocks of R rows one after another where every part is such blocks (batches joined), else neither
    blocks = all(differentiated(t) and (t.shape[d] == rows or merged.get(t.shape[d]) == POSITION) for t in parts)
    note(merged, out.shape[d], POSITION if blocks else BOTH)


def _repeated(merged: dict, rows: int, x: torch.Tensor, out: torch.Tensor) -> None:
    for d in _row_dims(merged, rows, x):
        j = d + out.ndim - x.ndim  # a repeat may add leading dims
        if out.shape[j] != x.shape[d] and _merged(out.shape[j], rows):  # blocks of R rows, or of merged ones
            note(merged, out.shape[j], POSITION if x.shape[d] == rows else BOTH)


def _interleaved(merged: dict, rows: int, x: torch.Tensor, out: torch.Tensor, dim, repeats) -> None:
    if dim is None:  # flattened first: each example's elements together, each repeated in place
        held = _row_dims(merged, rows, x) == [0]
        d = 0
    else:
        d = dim % x.ndim
        held = d in _row_dims(merged, rows, x)
    if held and _merged(out.shape[d], rows):
        note(merged, out.shape[d], BATCH if isinstance(repeats, int) else BOTH)  # per-row counts: no layout


def merged_rows(merged: dict, rows: int, tensors: tuple) -> tuple | None:
    """How an op's tensors hold the paired rows merged with another dim: ``(BATCH, n)``, n the
    size noted batch-major (dim 0, or dim 1 past a dim 0 that holds no rows), the op's rows;
    ``(POSITION, n)``, n = k * R rows in dim 0 as k blocks of R (NOTE: [Interleaved rows] in
    interleaved_rows.py); or None (a tensor holds R rows in dim 0, or in dim 1 past a dim 0 not
    noted, as the op's input with its parameters does, or none holds a size noted one way)."""
    found = None
    for t in tensors:
        if not isinstance(t, torch.Tensor) or not t.ndim:
            continue
        if t.shape[0] == rows:
            return None
        layout = merged.get(t.shape[0])
        if layout in (BATCH, POSITION):  # (R * L, R) too: made from the rows, not sequence-first
            found = found or (layout, t.shape[0])
        elif t.ndim > 1 and t.shape[1] == rows:
            return None
        elif t.ndim > 1 and layout is None and merged.get(t.shape[1]) == BATCH:
            found = found or (BATCH, t.shape[1])
    return found
