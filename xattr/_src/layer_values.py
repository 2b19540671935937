"""What the layer methods see of a layer's value: its tensors, in its structure.

NOTE: [Layer values with more than tensors]
A layer's output (or input) may hold more than tensors: a dict with a count or a flag in it, a
Hugging Face ``ModelOutput`` (an ``OrderedDict`` subclass, one leaf to optree), a tuple with a
cache object (older ``transformers`` decoder layers return ``(hidden, attn, past_key_value)``).
Every method maps over the value's leaves as tensors, and failed on the others ("'int' object
has no attribute 'ndim'"). So the split shows the methods `shown(value)`: mappings as plain
dicts (a ``ModelOutput`` too), tuples, lists and named tuples as they are, tensors as they are,
and every other leaf as None, which the methods pass over; the attributions have that
structure. Where the split hands a value back to the model (`split.head`, the layer gradients'
zero), `restored` rebuilds the model's own value around the new tensors: its own types, and its
own non-tensor leaves in place, so the model reads its count, flag or cache as before.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch


def is_plain(value: Any) -> bool:
    """A tensor, or a tuple of tensors: shown as it is (the common case, without a walk)."""
    return isinstance(value, torch.Tensor) or (type(value) is tuple and all(isinstance(v, torch.Tensor) for v in value))


def shown(value: Any) -> Any:
    """``value`` with mappings as dicts and every leaf that is not a tensor as None."""
    if is_plain(value):
        return value
    return _shown(value)


def _shown(value: Any) -> Any:
    if isinstance(value, torch.Tensor) or value is None:
        return value
    if isinstance(value, Mapping):
        return {k: _shown(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_make"):  # a named tuple
        return type(value)._make(_shown(v) for v in value)
    if type(value) in (tuple, list):
        return type(value)(_shown(v) for v in value)
    return None


def restored(new: Any, value: Any) -> Any:
    """The model's own ``value`` rebuilt around the tensors of ``new`` (shaped like
    ``shown(value)``): its types, and its leaves that are not tensors, kept."""
    if is_plain(value):
        return new
    return _restored(new, value)


def _restored(new: Any, value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return new
    if isinstance(value, Mapping):
        out = copy.copy(value)  # a ModelOutput stays one; its fields set through __setitem__
        for k, v in value.items():
            out[k] = _restored(new[k], v)
        return out
    if isinstance(value, tuple) and hasattr(value, "_make"):
        return type(value)._make(_restored(n, v) for n, v in zip(new, value))
    if type(value) in (tuple, list):
        return type(value)(_restored(n, v) for n, v in zip(new, value))
    return value
