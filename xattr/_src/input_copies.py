"""The copies that LRP's input-layer rules read in place of the attributed inputs, followed
through data movement while the model runs (NOTE: [Input-layer relevance] in lrp_methods.py).

NOTE: [Weak input copies]
The table holds only what can still be read: an entry refers to its tensor weakly, and an entry
made for moved data (`moved`) leaves the table when its tensor dies (the reference's callback),
taking what was read in its place with it. A model that flips its input 2000 times kept every
flip and its copy until the forward ended (1.8 GB peak for a (8, 3, 64, 64) float32 input,
against 0.28 GB without tracking); now only the live ones. The key is ``id(tensor)``, which a new
tensor may get once the old one is gone: the callback drops the entry when the old tensor dies,
before its id can be reused, and `read_in_place_of` serves an entry only to the very tensor it
was made for (an entry made without a table, for the call's own arguments, stays until the
table goes, and a tensor with a dead one's id finds nothing). An argument standing for itself
is recorded with no copy (None), not with a strong reference to itself. The callback refers to
the table, a cycle that ends when the last moved tensor recorded in it dies."""

from __future__ import annotations

import contextvars
import weakref

import torch

from .rule_limits import held

# set by lrp while the model runs: {id(tensor): `entry`} for the arguments of the call and the
# data moved from them (NOTE: [Input-layer relevance] in lrp_methods.py; read by
# lrp_rules._InputLayer._reroute)
INPUT_COPIES: contextvars.ContextVar = contextvars.ContextVar("xattr_lrp_input_copies", default=None)


def _moving_functions() -> frozenset:
    """Torch functions and Tensor methods that only move data (pick, reorder, join or repeat
    elements, or change dtype): what they give from an input, they give alike from its copy."""
    names = (
        "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "ravel", "permute", "transpose",
        "swapaxes", "swapdims", "movedim", "moveaxis", "t", "contiguous", "clone", "detach", "squeeze", "unsqueeze",
        "expand", "expand_as", "broadcast_to", "narrow", "select", "index_select", "gather", "take_along_dim",
        "masked_select", "__getitem__", "unfold", "as_strided", "flip", "fliplr", "flipud", "roll", "rot90",
        "repeat", "tile", "repeat_interleave", "cat", "concat", "concatenate", "stack", "hstack", "vstack",
        "dstack", "split", "chunk", "unbind", "tensor_split", "to", "type_as", "float", "double", "half",
        "bfloat16", "atleast_1d", "atleast_2d", "atleast_3d",
    )  # fmt: skip
    found = (getattr(owner, name, None) for owner in (torch, torch.Tensor) for name in names)
    return frozenset(f for f in found if callable(f))


MOVES = _moving_functions()


def _substituted(copies: dict, value, found: list):
    """value with each tensor the table knows replaced by the one read in its place (listed in
    found), and every other tensor detached: nothing but the copies may take the rules' relevance."""
    if isinstance(value, torch.Tensor):
        read = read_in_place_of(copies, value)
        if read is not None:
            found.append(read is value)
            return read
        return held(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_substituted(copies, v, found) for v in value)
    return value


def moved(copies: dict, func, args: tuple, kwargs: dict):
    """func(*args, **kwargs), a data movement: where it takes an argument of the call or data
    moved from one, the same call on what is read in their place is recorded beside its result,
    so that an input-layer op reading the result can find its copy (`lrp_rules._copy_of`)."""
    out = func(*args, **kwargs)
    found: list = []
    swapped = _substituted(copies, args, found), {k: _substituted(copies, v, found) for k, v in kwargs.items()}
    if not found:
        return out
    # only arguments that stand for themselves (not attributed): the result stands for itself too
    read = out if all(found) else func(*swapped[0], **swapped[1])
    if isinstance(out, torch.Tensor):
        copies[id(out)] = entry(out, read, copies)
    elif isinstance(out, (list, tuple)):
        for o, r in zip(out, read):
            if isinstance(o, torch.Tensor):
                copies[id(o)] = entry(o, r, copies)
    return out


class _Ref(weakref.ref):
    """A weak reference to a recorded tensor that knows its table and key (NOTE: [Weak input copies])."""

    __slots__ = ("table", "key")

    def __new__(cls, t: torch.Tensor, table: dict | None):
        return super().__new__(cls, t, None if table is None else _drop)

    def __init__(self, t: torch.Tensor, table: dict | None):
        super().__init__(t, None if table is None else _drop)
        self.table, self.key = table, id(t)


def _drop(ref: _Ref) -> None:
    """The callback of a recorded tensor that died: its entry leaves the table, unless the key
    already holds another tensor's."""
    hit = ref.table.get(ref.key)
    if hit is not None and hit[0] is ref:
        ref.table.pop(ref.key, None)


def entry(t: torch.Tensor, read: torch.Tensor, table: dict | None = None) -> tuple:
    """A table entry: a weak reference to t, what is read in its place (None: t itself), and t's
    version when recorded (a write into t afterwards, ``t.mul_(2)``, is not replayed on the copy:
    t no longer stands for it). With ``table``, the entry leaves it when t dies (NOTE: [Weak
    input copies])."""
    return _Ref(t, table), None if read is t else read, t._version


def read_in_place_of(copies: dict, t: torch.Tensor):
    """What the table says is read in place of t, or None: t unknown (an entry made for another
    tensor, now dead, that had t's id serves nothing), or written in place since it was recorded
    (then its copy is stale, and an input-layer op reading it must be refused rather than read
    the copy; an argument standing for itself needs no copy and stays)."""
    hit = copies.get(id(t))
    if hit is None or hit[0]() is not t:
        return None
    if hit[1] is None:
        return t
    return None if t._version != hit[2] else hit[1]
