"""Checks that a layer's activation holds the batch in dim 0, where a layer method relies on it.

NOTE: [Batch-first layers]
Most layer and neuron methods read the rows of a layer's activation in dim 0: layer IG and
layer gradient SHAP split an input-and-baseline call in two there, conductance and internal
influence unfold their path points from it, Grad-CAM takes dim 1 as the channels, the
perturbation methods tile their copies along it and the neuron index skips it. A sequence-first
layer (``(L, B, D)``: ``nn.TransformerEncoderLayer``, ``nn.MultiheadAttention`` or ``nn.LSTM``
with ``batch_first=False``, a ``transpose(0, 1)`` in the model; an LSTM's ``(layers, B, H)``
hidden state) holds them in dim 1. Read in dim 0, its positions are taken for examples: an
error far from the cause, or, where the shapes happen to fit (L == B, or L equal to the rows
of a chunk of path points), wrong numbers without one (measured: a neuron's gradient taken at
position 1 of every example instead of example 1; Grad-CAM maps mixing examples). So those
methods call `check_rows`: every tensor of the activation must have the call's R rows in dim 0,
else a ValueError names the layout. A 3-d ``(R, R, D)`` tensor fits both readings, so the layer
is then run once more, up to the layer only, on the call's rows repeated twice: a batch-first
layer gives ``(2R, R, D)``, a sequence-first one ``(R, 2R, D)`` (refused). That costs a partial
forward only in the coincidence, never for a layer whose dim 1 differs from R. Unseen: a
sequence-first tensor of another rank whose dim 0 equals R (``(L, B)`` with L == B).
``at_layer(..., batch_dim=1)`` moves such a layer's batch to dim 0 for every method (NOTE:
[Layers with the batch in another dim] in batch_dims.py), and the error says so.
``layer_activation``, ``gradient_x_activation`` and ``layer_lrp`` treat every unit alike
whatever its axis, so they accept any layout (their K axis, with ``xattr.outputs``, comes after
dim 0).
"""

from __future__ import annotations

import torch

from . import tree as T
from .batch_dims import MERGED


def first_rows(args) -> int | None:
    """Dim 0 of the first tensor argument with one (the rows of a call), or None."""
    for leaf in T.leaves(args):
        if isinstance(leaf, torch.Tensor) and leaf.ndim > 0:
            return leaf.shape[0]
    return None


def check_rows(split, h, args: tuple, rows: int | None, method: str) -> None:
    """Raises a ValueError unless every tensor of the activation ``h = split.act(*args)`` holds
    the call's ``rows`` in dim 0 (NOTE: [Batch-first layers])."""
    check_merged(split, args, method)
    if rows is None:
        return
    if isinstance(h, torch.Tensor):  # the common case, without a tree walk (~3 us)
        leaves = [h] if h.ndim > 0 else []
    else:
        leaves = [t for t in T.leaves(h) if isinstance(t, torch.Tensor) and t.ndim > 0]  # a 0-d one has no units per row
    for leaf in leaves:
        if leaf.shape[0] != rows:
            raise _error(split, method, leaf.shape, rows)
    if rows > 1 and any(t.ndim == 3 and t.shape[1] == rows for t in leaves):
        doubled = T.tree_map(
            lambda a: a.repeat((2,) + (1,) * (a.ndim - 1))
            if isinstance(a, torch.Tensor) and a.ndim > 0 and a.shape[0] == rows else a,
            args,
        )
        with T.batch_scope(rows), torch.no_grad():
            probe = split.act(*doubled)
        for leaf, again in zip(leaves, [t for t in T.leaves(probe) if isinstance(t, torch.Tensor) and t.ndim > 0]):
            if again.shape[0] != 2 * rows:
                raise _error(split, method, leaf.shape, rows, again.shape)


def check_merged(split, args: tuple, method: str) -> None:
    """With ``batch_dim="merged"``, once per signature of ``args``: runs the layer on the rows
    repeated twice, ``[x; x]``, and refuses a value whose two halves differ. Each example's rows
    together (batch-major, ``(B * k, ...)``) repeat as whole blocks; a sequence-first merge,
    ``(L, B, D).reshape(-1, D)``, interleaves them, and read as batch-major it would give each
    example another's positions (NOTE: [Layers with the batch in another dim])."""
    if MERGED not in T.leaves(split.batch_dim):
        return
    rows = first_rows(args)
    checked = split.__dict__.setdefault("_merged_checked", set())
    key = T.signature(args)
    if rows is None or key in checked:
        return
    doubled = T.tree_map(
        lambda a: torch.cat([a, a]) if isinstance(a, torch.Tensor) and a.ndim > 0 and a.shape[0] == rows else a, args
    )
    with T.batch_scope(rows), torch.no_grad():
        probe = split.act(*doubled)
    for t in T.leaves(probe):
        if isinstance(t, torch.Tensor) and t.ndim > 0 and not torch.allclose(t[:rows], t[rows:], rtol=1e-4, atol=1e-6):
            raise ValueError(
                f"{method}: at_layer(..., batch_dim='merged') needs each example's rows together in dim 0 of the "
                f"layer's value ((B * k, ...), batch-major), but with the examples repeated twice its halves differ: "
                "the rows are interleaved (a sequence-first merge, (L, B, D).reshape(-1, D)). Split the layer before "
                "the merge, or where the model is batch-first"
            )
    checked.add(key)


def _error(split, method: str, shape, rows: int, doubled=None) -> ValueError:
    where = "input" if split.inputs else "output"
    names = ", ".join(type(m).__name__ for m in split.modules)
    seen = f"of shape {tuple(shape)} for {rows} rows"
    if doubled is not None:
        seen += f" (and {tuple(doubled)} for {2 * rows} rows: the shape only looked batch-first)"
    return ValueError(
        f"{method} needs the batch in dim 0 of the layer's {where}, but {names} gives a tensor {seen}: its dim 0 "
        "is not the batch. A "
        "sequence-first layout (L, B, D) (nn.TransformerEncoderLayer, nn.MultiheadAttention or nn.LSTM with "
        "batch_first=False, a transpose(0, 1) in the model) or an LSTM's (layers, B, H) hidden state holds the "
        "batch in dim 1, and reading it in dim 0 would take positions for examples. Say where the batch is with "
        "xattr.at_layer(..., batch_dim=1) (a tuple such as (0, 1) for a batch-first LSTM's (output, (h_n, c_n))): "
        "the methods then see the layer batch-first; or build the layer with batch_first=True (docs/layers.md, "
        "NOTE: [Batch-first layers])"
    )
