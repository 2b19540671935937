"""``xattr.neuron(split, index, part=...)``: a neuron in one tensor of a layer that returns several.

NOTE: [Neurons in one part of a layer's value]
A layer may return more than one tensor: ``nn.LSTM`` returns ``(output, (h_n, c_n))``, Hugging
Face blocks return tuples, some modules a dict (the split shows a ``ModelOutput`` as a dict:
NOTE: [Layer values with more than tensors] in layer_values.py). An int or tuple index into
"one example's activation" cannot say which tensor it means, so it was refused and only a
callable, which receives the whole value, could pick a neuron (Captum refuses an index there
too and asks for a callable). ``part`` names the tensor the index applies to, as a path into
the value: an int position in a tuple or list, a key of a dict (or a field name of a named
tuple), or a tuple of those for nested values: ``part=(1, 0)`` is ``h_n`` of an LSTM's
``(output, (h_n, c_n))``. A tuple is always a path; a dict key that is itself a tuple is
``part=(key,)``. The index (an int, a tuple, a callable, or ``xattr.outputs([...])`` for K
neurons) then applies to that tensor exactly as to a layer of one tensor, and the methods see
the neuron's function ``x -> index(value[part])``: its gradient flows through the chosen tensor
alone, so every method that takes a model function takes it (the gradient methods, the rules,
the perturbation methods).

Batch-first: the neuron index skips dim 0, so the chosen tensor must hold the batch there,
and only it is checked (NOTE: [Batch-first layers] in layer_layout.py). The other parts are
never read, so a batch-first LSTM's states, ``(layers, B, H)`` whatever ``batch_first``, do not
stand in the way of a neuron in its output: ``part=0`` works without ``batch_dim``. A neuron in
a state, ``part=(1, 0)``, is refused there with the usual error naming ``batch_dim``;
``at_layer(..., batch_dim=(0, 1))`` shows the states as ``(B, layers, H)``, and the index is
then ``(layer, unit)``. With a callable and no part, the callable sees the whole value and every
tensor of it is checked, as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch

from .layer_layout import check_rows, first_rows

_LISTED = 12  # parts named in an error, at most


def as_path(part: Any) -> tuple | None:
    """``part`` as a path tuple (None stays None); a TypeError or ValueError for what is none."""
    if part is None:
        return None
    path = part if isinstance(part, tuple) else (part,)
    if not path:
        raise ValueError("part=() names the whole value; leave part out for a layer that returns one tensor")
    for step in path:
        if isinstance(step, bool) or isinstance(step, (torch.Tensor, list, dict, set, slice)):
            raise TypeError(
                f"part must be an int position, a dict key, or a tuple of them for a nested value (part=(1, 0): "
                f"h_n of an LSTM's (output, (h_n, c_n))), got {part!r}"
            )
    return path


def _spelled(path: tuple) -> str:
    return repr(path[0]) if len(path) == 1 else repr(path)


def _parts(value: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """Every (path, leaf) of a value, tensors and the non-tensor leaves (None) alike, in order."""
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _parts(v, path + (k,))]
    if isinstance(value, (tuple, list)):
        return [p for i, v in enumerate(value) for p in _parts(v, path + (i,))]
    return [(path, value)]


def listed(value: Any) -> str:
    """The parts of a layer's value, ``0: (4, 5, 8), (1, 0): (2, 4, 8), ...``, for an error."""
    parts = [(p, v) for p, v in _parts(value) if p]
    shown = [f"{_spelled(p)}: {tuple(v.shape)}" if isinstance(v, torch.Tensor) else f"{_spelled(p)}: not a tensor"
             for p, v in parts[:_LISTED]]  # fmt: skip
    more = f", and {len(parts) - _LISTED} more" if len(parts) > _LISTED else ""
    return ", ".join(shown) + more


def _first_tensor(value: Any) -> str:
    for p, v in _parts(value):
        if p and isinstance(v, torch.Tensor):
            return _spelled(p)
    return "0"


def _step(value: Any, step, path: tuple, done: tuple, whole: Any, what: str):
    """``value[step]``, or a ValueError naming the parts that exist."""
    if isinstance(value, Mapping):
        if step in value:
            return value[step]
    elif isinstance(value, (tuple, list)):
        if isinstance(step, int) and -len(value) <= step < len(value):
            return value[step]
        fields = getattr(type(value), "_fields", ())
        if isinstance(step, str) and step in fields:  # a named tuple's field
            return value[fields.index(step)]
    at = f" at {_spelled(done)}" if done else ""
    if isinstance(value, torch.Tensor):
        raise ValueError(
            f"part={_spelled(path)} goes past a tensor: {what}'s value{at} is a tensor of shape {tuple(value.shape)}"
            + (f"; its parts: {listed(whole)}" if done else "; it has no parts: leave part out")
        )
    raise ValueError(f"part={_spelled(path)}: {what}'s value has no part {step!r}{at}; its parts: {listed(whole)}")


def pick_part(value: Any, path: tuple, what: str = "the layer") -> torch.Tensor:
    """The tensor at ``path`` in ``value`` (see NOTE: [Neurons in one part of a layer's value])."""
    leaf = value
    for i, step in enumerate(path):
        leaf = _step(leaf, step, path, path[:i], value, what)
    if not isinstance(leaf, torch.Tensor):
        inner = [p for p, v in _parts(leaf) if p and isinstance(v, torch.Tensor)]
        kind = f"a {type(leaf).__name__}" if isinstance(leaf, (tuple, list, Mapping)) else "not a tensor"
        deeper = f"; name one tensor in it, e.g. part={_spelled(path + inner[0])}" if inner else ""
        raise ValueError(f"part={_spelled(path)} of {what}'s value is {kind}, not a tensor{deeper}; its parts: {listed(value)}")
    return leaf


def needs_part(value: Any, what: str = "the layer") -> TypeError:
    """The error for an index (not a callable) into a value of several tensors, given no part."""
    kind = type(value).__name__
    n = len(value)
    return TypeError(
        f"{what} returns a {kind} of {n} part{'s' * (n != 1)} ({listed(value)}), so an index cannot pick one output "
        f"of it: name the tensor it applies to with part=, e.g. xattr.neuron(split, index, part={_first_tensor(value)}) "
        "(a tuple for a nested part: part=(1, 0)), or give a callable that takes them all and returns one value per "
        "row, e.g. lambda outs: outs[0][:, 3]"
    )


class _PartSplit:
    """The split as `check_rows` reads it, with ``act`` giving the chosen part alone: the
    batch-first check (and its probe for an (R, R, D) tensor) looks at that tensor only."""

    def __init__(self, split, path: tuple):
        self.split, self.path = split, path
        self.batch_dim, self.inputs, self.modules = split.batch_dim, split.inputs, split.modules

    def act(self, *args):
        return pick_part(self.split.act(*args), self.path)


class PartOf:
    """``f(*args)[part]`` for a model function ``f`` that is no split (``neuron(f, index, part=...)``)."""

    def __init__(self, f: Callable, path: tuple):
        self.model, self.path = f, path

    def __call__(self, *args, **kwargs):
        return pick_part(self.model(*args, **kwargs), self.path, "the function")


def part_split(split, path: tuple | None):
    """What `checked_act` checks: the split, or for a part a view of it with that part alone
    (kept by the caller: `check_merged` remembers on it the input signatures it has probed)."""
    return split if path is None else _PartSplit(split, path)


def checked_act(split, checked, path: tuple | None, indexed: bool, args: tuple):
    """``split.act(*args)``, or its part at ``path``, after the batch-first check of what the
    index reads (`checked_part`)."""
    return checked_part(split, checked, split.act(*args), path, indexed, args, "xattr.neuron")


def checked_part(split, checked, h, path: tuple | None, indexed: bool, args: tuple, method: str):
    """The layer's value ``h`` at ``args``, or its part at ``path``, after the batch-first check of
    what the index reads (``indexed``: an index, not a callable, which needs one tensor;
    ``checked``: `part_split`'s)."""
    if path is not None:
        if isinstance(h, torch.Tensor):
            raise ValueError(
                f"part={_spelled(path)} given, but the layer's {getattr(split, 'where', 'output')} is one tensor of shape "
                f"{tuple(h.shape)}: leave part out"
            )
        h = pick_part(h, path)
    elif indexed and isinstance(h, (tuple, list, Mapping)):
        raise needs_part(h, "the layer" if method == "xattr.neuron" else f"{method}'s layer")
    check_rows(checked, h, args, first_rows(args), method)
    return h
