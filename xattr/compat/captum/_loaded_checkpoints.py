"""The checkpoints of Captum's TracIn classes, loaded once and kept while they cannot have changed.

NOTE: [Loaded checkpoints are kept]
Loading the checkpoints (``torch.load``, a copy of the model, ``checkpoints_load_func``) costs,
on a small model, about as much as the fast TracIn itself (1.2 ms of 5 ms per call on the
benchmark's digits MLP), so a TracIn object keeps the states and learning rates it loaded and
reuses them while nothing they came from has changed:

- every checkpoint is a path to a file whose bytes are the same: a BLAKE2 digest of each file
  is taken on every call, before any reuse, so a file rewritten in place is loaded again
  whatever its size and timestamps say;
- ``checkpoints_load_func`` and the model are the same objects, and the model has the same
  modules (names and types) and the same names, shapes, dtypes and devices of parameters and
  buffers (a loaded state takes these from the copy it was loaded into);
- the loader wrote every entry of the copy's state dict (an in-place copy, as
  ``load_state_dict`` does, or a new tensor): one that leaves entries at the model's current
  values, which may change, gets every checkpoint loaded again on every call, in order, as
  Captum does (an entry it skips keeps the previous checkpoint's value).

Checkpoints that are not paths to files (state dicts handed to a custom loader, say) are loaded
on every call, and so are checkpoints whose states take more than ``KEEP_BYTES`` (256 MiB) in
all: kept states stay in memory between calls, and on a model that large loading is a small
part of a call (once a load could not be kept, the same loader and model skip the digests).
Setting ``checkpoints`` drops what was kept. Left to the user: a loader whose result depends on
more than the file, such as a learning rate looked up in a dict that is changed later, needs
``checkpoints`` set again (or a new object) after that change.
"""

from __future__ import annotations

import copy
import hashlib
import os
from typing import Callable

from torch import nn

KEEP_BYTES = 256 * 2**20  # the most bytes of loaded states kept between calls


def file_digests(checkpoints: list) -> tuple | None:
    """``((path, digest of its bytes), ...)``, or None when one is not a path to a file."""
    out = []
    for ckpt in checkpoints:
        if not isinstance(ckpt, (str, os.PathLike)) or not os.path.isfile(ckpt):
            return None
        with open(ckpt, "rb") as f:
            out.append((os.fspath(ckpt), hashlib.file_digest(f, "blake2b").digest()))
    return tuple(out)


def structure(model: nn.Module) -> tuple:
    """What a loaded copy of ``model`` takes from it besides its values: its modules' names and
    types, and the names, shapes, dtypes and devices of its parameters and buffers."""
    modules = tuple((name, type(m)) for name, m in model.named_modules())
    entries = tuple((k, tuple(v.shape), v.dtype, v.device) for k, v in model.state_dict(keep_vars=True).items())
    return modules, entries


def load_all(model: nn.Module, checkpoints: list, load: Callable) -> tuple[list, list, bool]:
    """``(states, learning rates, complete)``: each checkpoint loaded by ``load(copy, checkpoint)``
    into one copy of ``model``, in order; ``complete``: the loader wrote every entry each time."""
    work = copy.deepcopy(model)
    states, lrs, complete = [], [], True
    for ckpt in checkpoints:
        before = {k: (v, v._version) for k, v in work.state_dict(keep_vars=True).items()}
        lr = load(work, ckpt)
        after = work.state_dict(keep_vars=True)
        complete = complete and after.keys() == before.keys() and all(
            v is not before[k][0] or v._version != before[k][1] for k, v in after.items())  # fmt: skip
        states.append({k: v.detach().clone() for k, v in after.items()})
        lrs.append(1.0 if lr is None else float(lr))
    return states, lrs, complete


class LoadedCheckpoints:
    """What `load_all` gave, with what it came from. See NOTE: [Loaded checkpoints are kept]."""

    def __init__(self) -> None:
        self._kept = None
        self._not_kept = None  # (loader, model) whose last load could not be kept: no digests for them

    def get(self, model: nn.Module, checkpoints: list, load: Callable) -> tuple[list, list]:
        """``(states, learning rates)`` of ``checkpoints``, kept ones when still valid."""
        skip = self._not_kept is not None and self._not_kept[0] is load and self._not_kept[1] is model
        digests = None if skip else file_digests(checkpoints)
        key = (structure(model), digests)
        kept = self._kept
        if digests is not None and kept is not None and kept[0] is load and kept[1] is model and kept[2] == key:
            return kept[3], kept[4]
        states, lrs, complete = load_all(model, checkpoints, load)
        size = sum(v.numel() * v.element_size() for state in states for v in state.values())
        keep = digests is not None and complete and size <= KEEP_BYTES
        self._kept = (load, model, key, states, lrs) if keep else None
        if not skip:
            self._not_kept = None if keep or digests is None else (load, model)  # a partial loader, or too large
        return states, lrs
