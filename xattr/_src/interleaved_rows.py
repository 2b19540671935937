"""DeepLift's paired rows interleaved with another dim (NOTE: [Rows merged with another dim] in
merged_rows.py).

NOTE: [Interleaved rows]
A tensor of ``k * R`` rows made as k blocks of the R paired rows one after another (position-
major): a sequence-first ``(L, R, D).reshape(-1, D)``, ``torch.cat([h1, h2])`` of two batches (a
siamese network, RAFT's two frames through one encoder), ``h.repeat(k, 1)``. No half of its rows
holds the inputs, but its view ``(k, R, ...)`` holds them in dim 1, as a sequence-first tensor
does, and the rules pair dim 1 already (NOTE: [Rows in dim 0 or dim 1] in row_layout.py). So an
op of a kind that computes the same values on that view (`VIEWED`: elementwise functions of one or
two tensors, products and quotients, matrix products, softmax and logsumexp along other dims)
runs its rule on the views of its tensors that hold the k * R rows, and its result is flattened
back (a logsumexp over the k * R rows themselves keeps its ordinary gradient); a shared
reference row needs no second call here (each block is inputs then their reference rows). Other
kinds (pools, order statistics, einsum, cumprod) keep their ordinary gradient there, as before.
At k == R a view of rank 2 or 4 and more would read batch-first: the call runs again with more
rows instead (`row_layout.Ambiguous`).
"""

from __future__ import annotations

import functools

import torch

from . import pairwise, pointwise
from .ops import ELEMENTWISE, Op
from .row_layout import _ROWS, _ambiguous

VIEWED = ELEMENTWISE | pointwise.KINDS | pairwise.PAIRS | {"product", "quotient", "matmul", "softmax", "log_softmax", "logsumexp"}


def viewed(op: Op, n: int, rows: int) -> Op | None:
    """``op`` on the ``(k, R, ...)`` views of its tensors of n = k * R rows (those of its highest
    rank with n rows in dim 0; the others broadcast as before), or None where its kind is not
    computed alike on them."""
    if op.kind not in VIEWED:
        return None
    if op.kind == "logsumexp":  # over dims that hold no rows only: then dims + 1 on the view
        ndim = op.tensors[0].ndim
        dims = tuple(d % ndim for d in op.options["dim"]) if ndim else (0,)
        if 0 in dims:  # a logsumexp over the k * R rows: not computed alike on the view
            return None
    k = n // rows
    top = max(t.ndim for t in op.tensors if isinstance(t, torch.Tensor))
    tensors = tuple(t.unflatten(0, (k, rows)) if isinstance(t, torch.Tensor) and t.ndim == top and t.shape[0] == n else t
                    for t in op.tensors)
    if k == rows and top != 2:  # (R, R, ...) of rank 2 or >= 4 reads batch-first: more rows instead
        _ambiguous((k, rows), rows, _ROWS.get()[3])
    if op.kind == "matmul":
        return op._replace(fn=torch.matmul, tensors=tensors)
    if op.kind in ("softmax", "log_softmax") and op.options["dim"] >= 0:
        dim = op.options["dim"] + 1
        fn = functools.partial(op.fn.func, dim=dim, dtype=op.options["dtype"])
        return op._replace(fn=fn, tensors=tensors, options={**op.options, "dim": dim})
    if op.kind == "logsumexp":
        dims = tuple(d + 1 for d in dims)
        fn = functools.partial(torch.logsumexp, dim=dims, keepdim=op.options["keepdim"])
        return op._replace(fn=fn, tensors=tensors, options={**op.options, "dim": dims})
    return op._replace(tensors=tensors)
