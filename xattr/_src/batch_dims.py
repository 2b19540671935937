"""``at_layer(..., batch_dim=d)``: a layer that holds the batch outside dim 0, seen batch-first.

NOTE: [Layers with the batch in another dim]
The layer and neuron methods read a layer's examples in dim 0 (NOTE: [Batch-first layers] in
layer_layout.py). A sequence-first layer (``nn.TransformerEncoderLayer``, ``nn.MultiheadAttention``
or ``nn.LSTM`` with ``batch_first=False``: ``(L, B, D)``) holds them in dim 1, and so does an
LSTM's ``(layers, B, H)`` state whatever its ``batch_first``. With ``batch_dim`` the split moves
that dim to the front wherever it meets the activation, and back wherever it hands one to the
model: ``act`` returns ``(B, L, D)``, ``head`` and the layer gradients take it, and every method
built on them works unchanged, its attributions batch-first (``attr.movedim(0, d)`` gives the
layer's own layout). The moves are views (``movedim``), so the numbers are those of a
batch-first twin of the layer, bit for bit.

``batch_dim`` is an int for every tensor of the activation, or a tree of ints that is a prefix
of the activation's structure as the methods see it (NOTE: [Layer values with more than
tensors]: a ``ModelOutput`` as a dict): ``(0, 1)`` for a ``batch_first=True`` LSTM's
``(output, (h_n, c_n))``, whose output is batch-first and its states are not.

``"merged"`` is a layer whose dim 0 holds each example's rows together, ``(B * k, ...)``: OPT's
MLP runs on ``hidden.reshape(-1, D)``, some attentions fold heads into the batch as
``(B * H, L, d)``. The split views it as ``(B, k, ...)`` (``unflatten``, B the call's rows,
dim 0 of its first tensor argument) and flattens it back for the model. A sequence-first merge,
``(L * B, D)`` from an ``(L, B, D)`` tensor, has the same shape but interleaves the examples; the
layer methods run the layer once per input shape on the rows repeated twice and refuse it
(`layer_layout.check_merged`): split before the merge instead.
"""

from __future__ import annotations

from typing import Any

import optree
import torch

from . import tree as T

MERGED = "merged"


def check_batch_dim(spec: Any) -> Any:
    """``spec`` if it is an int or a tuple/list tree of ints, else a TypeError."""
    for d in optree.tree_leaves(spec, namespace="xattr"):
        if d != MERGED and (isinstance(d, bool) or not isinstance(d, int)):
            raise TypeError(
                f"batch_dim must be an int, 'merged' or a tuple of them (one per part of the layer's value), got {spec!r}"
            )
    return spec


def is_batch_first(spec: Any) -> bool:
    return isinstance(spec, int) and spec == 0


def to_front(value: Any, spec: Any, where: str, rows: int | None) -> Any:
    """``value`` with each tensor's batch dim ``spec`` moved to dim 0 (``rows``: the call's)."""
    return _moved(value, spec, where, rows, front=True)


def to_layout(value: Any, spec: Any, where: str, rows: int | None) -> Any:
    """The inverse of `to_front`: batch-first tensors back in the layer's own layout."""
    return _moved(value, spec, where, rows, front=False)


def _moved(value: Any, spec: Any, where: str, rows: int | None, front: bool) -> Any:
    if is_batch_first(spec):
        return value

    def move(d, part):
        def one(t):
            if not isinstance(t, torch.Tensor) or t.ndim == 0:
                return t
            if d == MERGED:
                return _unmerged(t, rows, spec, where) if front else t.flatten(0, 1)
            if not -t.ndim <= d < t.ndim:
                raise ValueError(
                    f"at_layer(..., batch_dim={spec!r}): the layer's {where} holds a tensor of shape "
                    f"{tuple(t.shape)}, which has no dim {d}"
                )
            return t.movedim(d, 0) if front else t.movedim(0, d)

        return T.tree_map(one, part)

    try:
        return optree.tree_map(move, spec, value, namespace="xattr")
    except ValueError as e:
        if "batch_dim=" in str(e):
            raise
        raise ValueError(
            f"at_layer(..., batch_dim={spec!r}): batch_dim must be an int or a tuple shaped like the layer's "
            f"{where} (a prefix of its structure), which is {_structure(value)}"
        ) from e


def _unmerged(t: torch.Tensor, rows: int | None, spec: Any, where: str) -> torch.Tensor:
    """``(rows * k, ...)`` viewed as ``(rows, k, ...)``."""
    if rows is None or rows == 0 or t.shape[0] % rows:
        raise ValueError(
            f"at_layer(..., batch_dim={spec!r}): the layer's {where} holds a tensor of shape {tuple(t.shape)}, "
            f"whose dim 0 is not a multiple of the call's {rows} rows: it does not merge the batch with another dim"
        )
    return t.unflatten(0, (rows, -1))


def _structure(value: Any) -> str:
    return str(optree.tree_map(lambda t: f"Tensor{tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__,
                               value, namespace="xattr")).replace("'", "")
