"""Choosing which model output to explain: `target(f, t)` and the many-outputs form `outputs(...)`.

NOTE: [One output per example vs K outputs per example]
Captum reads a Python list target as one target *per example*. A list is therefore ambiguous
and xattr refuses it. One target per example is a LongTensor of shape (B,); K outputs for every
example are `xattr.outputs([...])`, and attributions then gain a K axis right after the batch
axis. The K outputs are differentiated in one pass by vmapping the VJP over K cotangents (see
gradients.py), never by a Python loop over targets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch.utils.weak import WeakIdKeyDictionary

from . import tree as T
from .checks import is_traced


@dataclass(frozen=True)
class Outputs:
    """K outputs of every example; build it with `xattr.outputs`.

    Example:
      >>> attr = xattr.saliency(xattr.target(model, xattr.outputs([0, 3])))(x)   # (B, 2, *x.shape[1:])
    """

    indices: Any  # None (every output), a list of ints/tuples, or an integer tensor (K,) / (B, K)


def outputs(indices: Sequence | torch.Tensor | range | None = None) -> Outputs:
    """Marks K outputs to be attributed at once, for every example.

    Args:
      indices: output indices ``[k_1, ..., k_K]`` (ints, or tuples for multi-dim outputs), an
        integer tensor (any integer dtype; bool is refused) of shape (K,), one of shape (B, K)
        for K different outputs per example, or None for every output of the model. A negative
        index counts from the last output, as for an int.

    Example:
      >>> attr = xattr.saliency(xattr.target(model, xattr.outputs(range(10))))(x)  # (B, 10, *x.shape[1:])
    """
    if isinstance(indices, range):
        indices = list(indices)
    if isinstance(indices, (list, tuple)) and not indices:
        raise ValueError("outputs([]) selects nothing; give at least one index, or None for all")
    if isinstance(indices, torch.Tensor):
        _check_index_dtype(indices, "an xattr.outputs tensor")
    return Outputs(indices)


_INDEX_DTYPES = frozenset(
    {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32, torch.uint64}
)
_REDUCIBLE = frozenset({torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64})  # aminmax/remainder work


def _check_index_dtype(t: torch.Tensor, what: str) -> None:
    """Every integer dtype indexes (as int64: a uint8 tensor is never a mask); a bool tensor is
    refused, since a mask and the indices 0/1 are equally plausible readings of it."""
    if t.dtype in _INDEX_DTYPES:
        return
    if t.dtype == torch.bool:
        raise TypeError(
            f"{what} holds bool values: as a mask or as the indices 0/1 it would select different outputs; "
            "give integer indices, e.g. mask.nonzero().flatten() for the outputs a mask marks"
        )
    raise TypeError(f"{what} must hold integer class indices (a LongTensor), got dtype {t.dtype}")


def _as_index(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """An integer tensor as int64 on ``device`` (a LongTensor already there: itself, at the cost of
    a plain ``.to(device)``, which a dtype argument would slow by half)."""
    return t.to(device) if t.dtype == torch.long else t.to(device, torch.long)


def _flat_outputs(out: torch.Tensor) -> torch.Tensor:
    # not reshape(B, -1), which cannot infer the -1 from an empty batch's 0 elements
    return out.flatten(1) if out.ndim > 1 else out.unsqueeze(1)


# target tensor -> (its version, output count, its values, whether any is negative) last found in range
_IN_RANGE = WeakIdKeyDictionary()


def unchanged(t: torch.Tensor, version: int, values: torch.Tensor | None) -> bool:
    """Whether a target tensor still holds what a memo saw: its version counter, and its values
    as `T.cpu_snapshot` kept them."""
    return t._version == version and (values is None or T.matches_snapshot(t, values))


def _memo_allowed(t: torch.Tensor) -> bool:
    """Whether a memo may keep tensors made from ``t``: not for an inference tensor (no version
    counter), nor inside a torch.func transform, where even a copy of a plain tensor comes out
    wrapped at the transform's level and would outlive it (the next call failed with an internal
    assert in functorch)."""
    return not t.is_inference() and torch._C._functorch.maybe_current_level() is None


def _check_range(out: torch.Tensor, t, n_out: int) -> bool:
    """Raises an IndexError for an index outside [-n_out, n_out); for a tensor, returns whether it
    may hold negative indices (True where unknown: traced values), which need wrapping for a gather."""
    if isinstance(t, torch.Tensor):
        version = t._version if _memo_allowed(t) else None
        seen = _IN_RANGE.get(t) if version is not None else None
        if seen is not None and seen[1] == n_out and unchanged(t, seen[0], seen[2]):
            return seen[3]  # checked once per tensor (until it is modified): a target is reused by every call
        if not t.numel() or is_traced(t):
            return True
        # one reduction (a new target per batch pays this check every call)
        lo, hi = torch.aminmax(t if t.dtype in _REDUCIBLE else t.long())
        lo, hi = lo.item(), hi.item()
        if lo < -n_out or hi >= n_out:
            raise IndexError(f"target values must lie in [0, {n_out}) for a model with {n_out} outputs; got {t.tolist()}")
        if version is not None:
            _IN_RANGE[t] = (version, n_out, T.cpu_snapshot(t), lo < 0)
        return lo < 0
    if isinstance(t, int) and not -n_out <= t < n_out:
        raise IndexError(f"target {t} is out of range for a model with {n_out} outputs (shape {tuple(out.shape)})")
    return False


def _select_one(out: torch.Tensor, t, memo: dict | None = None) -> torch.Tensor:
    """Picks one output per row: (R, ...) -> (R,).

    ``memo`` (a `Targeted`'s own dict) keeps the gather index of a per-example target tensor for
    each row layout, keyed with the tensor's version: a method calls its model many times with
    one target, and building the index (range check included) cost as much as the gather."""
    if out.ndim < 2:
        raise ValueError(f"target given but the model returns shape {tuple(out.shape)}, one value per example")
    if isinstance(t, bool) or t is None:
        raise TypeError(f"unsupported target {t!r}")
    if isinstance(t, int):
        _check_range(out, t, out.shape[1])
        return out[:, t]
    if isinstance(t, tuple):
        for i, (ti, n) in enumerate(zip(t, out.shape[1:])):
            if isinstance(ti, int) and not -n <= ti < n:
                raise IndexError(f"target index {t} is out of range in output dim {i + 1} of size {n}")
        picked = out[(slice(None),) + t]
        if any(isinstance(ti, slice) for ti in t) and picked.ndim > 1:  # a region: summed (Captum's neurons)
            picked = picked.reshape(picked.shape[0], -1).sum(1)
        elif picked.ndim > 1 and math.prod(picked.shape[1:]) != 1:
            raise ValueError(
                f"index {t} picks {tuple(picked.shape[1:])} values per example from outputs of shape "
                f"{tuple(out.shape[1:])}: give one index per dim ({out.ndim - 1} of them), slices for a region "
                "to sum, or a callable"
            )
        return picked
    if isinstance(t, torch.Tensor):
        if t.dtype != torch.long:
            _check_index_dtype(t, "a target tensor")
        if t.ndim == 0:
            return _select_one(out, int(t)) if not is_traced(t) else _select_traced(out, t)
        if t.ndim != 1:
            raise ValueError(f"a per-example target must have shape (B,), got {tuple(t.shape)}")
        out = T.expand_shared(out)  # a reference row shared by the batch: one per example (deep_lift)
        # without autograd or a transform (a perturbation method's calls), a (R, C) output takes
        # one flat `take` instead of a gather and a squeeze: one kernel call fewer per model call
        flat = out.ndim == 2 and not torch.is_grad_enabled() and torch._C._functorch.maybe_current_level() is None
        index = _target_index(out, t, memo, flat)
        if flat:
            return out.take(index)
        return out.gather(1, index).squeeze(1)  # (R, 1, ...) -> (R, ...): a view
    if isinstance(t, list):
        raise TypeError(
            "a list target is ambiguous (one target per example, or K targets for every example?). "
            "Use torch.tensor([...]) of shape (B,) for one per example, or xattr.outputs([...]) for K "
            "outputs of every example. xattr.compat.captum keeps Captum's per-example meaning."
        )
    if callable(t):
        return t(out)
    raise TypeError(f"unsupported target {t!r}: use an int, a tuple index, a LongTensor (B,), a callable or xattr.outputs")


def _target_index(out: torch.Tensor, t: torch.Tensor, memo: dict | None, flat: bool) -> torch.Tensor:
    """The index of a per-example target tensor (B,) into the output rows (R, C, ...): flat
    positions (R,) for `take` when ``flat``, else a (R, 1, ...) gather index; kept in ``memo``."""
    n, b = T.copies_of(t, out.shape[0]), t.shape[0]  # rows fold n copies of the batch (copy-major)
    key = index = None
    if memo is not None and _memo_allowed(t) and not is_traced(t):
        key = (t._version, n, out.shape[1], tuple(out.shape[2:]), out.device, flat)
        index, values = memo.get(key, (None, None))
        if index is not None and not unchanged(t, key[0], values):
            index = None
    if index is None:
        _check_range(out, t, out.shape[1])
        given = t
        if t.is_inference():  # made under torch.inference_mode: autograd cannot save it as the index
            t = t.clone()
        c = out.shape[1]
        # int64 (gather's index dtype; a no-op for a LongTensor), in range (checked): -1 is the
        # last output, as for an int target
        t = _as_index(t, out.device).remainder(c)
        if flat:  # row r's target at r * C + t[r % B] in row-major order (`take` reads any layout so)
            index = torch.arange(0, n * b * c, c, device=out.device)
            index.view(n, b).add_(t)
        else:  # (R, 1, ...), tiled copy-major: contiguous along the rows, since a gather with a
            # (R, 1) index is 2x as fast as one with the batch's index expanded
            index = t.repeat(n).reshape((n * b, 1) + (1,) * (out.ndim - 2)).expand((n * b, 1) + tuple(out.shape[2:]))
        if key is not None:
            if len(memo) > 16:  # a handful of layouts per target in practice; never grow without bound
                memo.clear()
            memo[key] = (index, T.cpu_snapshot(given))
    return index


def _select_traced(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``out[:, t]`` for a 0-d target whose value a transform hides (one example's target under
    vmap): a gather, which vmap batches under `grad` too (indexing with a batched tensor calls
    .item()), reading any integer dtype as an index (indexing reads uint8 as a mask). The range
    cannot be checked here: a negative index is wrapped, one past the end fails in the gather."""
    t = t.to(dtype=torch.long)
    t = torch.where(t < 0, t + out.shape[1], t)
    index = t.reshape((1, 1) + (1,) * (out.ndim - 2)).expand((out.shape[0], 1) + tuple(out.shape[2:]))
    return out.gather(1, index).squeeze(1)


def _select_many(out: torch.Tensor, idx) -> torch.Tensor:
    """Picks K outputs per row: (R, ...) -> (R, K)."""
    if idx is None:
        return _flat_outputs(out)
    if isinstance(idx, torch.Tensor):
        if idx.dtype != torch.long:
            _check_index_dtype(idx, "an xattr.outputs tensor")
        flat = _flat_outputs(out)
        negative = _check_range(out, idx, flat.shape[1])
        index = _as_index(idx, out.device)  # a uint8 tensor indexes too, never as a mask
        if idx.ndim == 1:
            return flat[:, index]
        if idx.ndim == 2:
            flat = T.expand_shared(flat)  # a reference row shared by the batch: one per example (deep_lift)
            if negative:  # in range (checked): -1 is the last output, as in (K,); a gather wants it wrapped
                index = index.remainder(flat.shape[1])
            return torch.gather(flat, 1, T.tile_rows(index, flat.shape[0]))
        raise ValueError(f"outputs(tensor) needs shape (K,) or (B, K), got {tuple(idx.shape)}")
    flat_idx = _flat_indices(out, idx)
    if flat_idx is not None:  # one gather: K chained selects would each scatter a full-size zero
        return _flat_outputs(out)[:, torch.tensor(flat_idx, device=out.device)]
    return torch.stack([_select_one(out, i) for i in idx], dim=1)


def _flat_indices(out: torch.Tensor, idx) -> list[int] | None:
    """Integer (or all-int tuple) indices as positions in the flattened per-example output.

    None when an index is not a plain position (slices, callables), or a tuple does not address
    one element; ranges are checked here with the same messages as single targets.
    """
    shape = tuple(out.shape[1:])
    flat = []
    for i in idx:
        i = (i,) if isinstance(i, int) and not isinstance(i, bool) else i
        if not (isinstance(i, tuple) and len(i) == len(shape) and all(isinstance(v, int) and not isinstance(v, bool) for v in i)):
            return None
        pos = 0
        for d, (v, n) in enumerate(zip(i, shape)):
            if not -n <= v < n:
                raise IndexError(f"target index {i} is out of range in output dim {d + 1} of size {n}")
            pos = pos * n + (v % n)
        flat.append(pos)
    return flat


class Targeted:
    """A model function restricted to chosen outputs. `multi_output` tells methods to add a K axis."""

    reaches_model_only = True  # `checks._modules`: its __wrapped__ is its .model, it has no __self__

    def __init__(self, model: Callable, t):
        self.model = model
        self.t = t
        self.multi_output = isinstance(t, Outputs)
        self._index_memo: dict = {}  # see _select_one

    @property
    def __wrapped__(self) -> Callable:
        """The model (for ``inspect.signature`` and the wrapper chain): a property, not a second
        attribute holding it, since torch.compile refuses a module reachable by two attributes
        of one object when the module is itself compiled."""
        return self.model

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.select(self.model(*args, **kwargs))

    def one_hot_rows(self, out) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For a gradient taken at top level (NOTE: [Targets differentiated by a one-hot
        cotangent]): (the picked rows (R,), detached, and their flat positions in ``out`` (R,)),
        where a per-example target tensor picks one number per row of a (R, C) float output; else
        None (`select` then picks them as usual)."""
        t = self.t
        if (self.multi_output or not isinstance(t, torch.Tensor) or t.ndim != 1 or not isinstance(out, torch.Tensor)
                or out.ndim != 2 or not out.is_floating_point() or T.expand_shared(out) is not out):  # fmt: skip
            return None
        if t.dtype != torch.long:
            _check_index_dtype(t, "a target tensor")
        index = _target_index(out, t, self._index_memo, True)
        grad = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)  # the rows without autograd (one op: no detach)
        try:
            return out.take(index), index
        finally:
            torch._C._set_grad_enabled(grad)

    def select(self, out) -> torch.Tensor:
        """The chosen outputs of the model's output ``out``."""
        if not isinstance(out, torch.Tensor):
            if callable(self.t) and not self.multi_output:  # a selector may read a tuple of outputs
                return self.t(out)
            if isinstance(out, (tuple, list)) and any(isinstance(o, torch.Tensor) for o in out):
                raise TypeError(
                    f"the model (or layer) returns a {type(out).__name__} of {len(out)} part{'s' * (len(out) != 1)}, so an "
                    "index cannot pick one output of it; give a callable that takes them all and returns one value per row, e.g. "
                    "lambda outs: outs[0][:, 3]"
                )
            if isinstance(out, Mapping):  # a dict, a Hugging Face ModelOutput
                keys = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
                raise TypeError(
                    f"the model must return a tensor, got a {type(out).__name__} with the tensors {keys}: pick one "
                    f"before the target, e.g. xattr.target(lambda *args: model(*args)[{keys[0] if keys else 'logits'!r}], t), "
                    "or give t as a callable that takes it and returns one value per row"
                )
            raise TypeError(f"the model must return a tensor, got {type(out).__name__}")
        if self.multi_output:
            return _select_many(out, self.t.indices)
        return _select_one(out, self.t, self._index_memo)

    def __repr__(self) -> str:
        return f"target({self.model!r}, {self.t!r})"


def target(f: Callable, t) -> Targeted:
    """Restricts a model function to the outputs to explain.

    Args:
      f: model function, ``f(*args) -> Tensor`` with the batch in dim 0 (an ``nn.Module`` is one).
      t: which output: an int class index; a tuple index into a multi-dimensional output (with
        slices, the region is summed); an integer tensor (B,) (any integer dtype; bool is
        refused) with one index per example; a callable ``out -> (R,)``; or
        ``xattr.outputs([...])`` for K outputs of every example at once. NumPy integers
        (``y[i]``, ``np.argmax(...)``) count as ints, NumPy integer arrays as tensors.

    Returns:
      ``g(*args) -> (R,)``, or ``(R, K)`` for ``outputs``; every xattr method accepts it.

    Example:
      >>> ig = xattr.integrated_gradients(xattr.target(model, 3))
      >>> ig(x).shape == x.shape
    """
    return Targeted(f, _from_numpy(t))


def _from_numpy(t):
    """A NumPy integer as an int (also inside a tuple index), a NumPy integer array as a tensor;
    anything else as it is (refused later where it is no target)."""
    if type(t).__module__ != "numpy":
        return tuple(_from_numpy(i) for i in t) if type(t) is tuple else t
    kind = getattr(getattr(t, "dtype", None), "kind", None)
    if kind not in ("i", "u"):
        return t
    return torch.as_tensor(t) if getattr(t, "ndim", 0) else int(t)


def neuron(f: Callable, index, *, part=None) -> Targeted:
    """Restricts a layer's activation to one neuron, a summed region, or K neurons at once.

    Args:
      f: a `Split` from ``xattr.at_layer`` (its ``act`` is used) or any function returning
        activations with the batch in dim 0.
      index: an int or tuple index into one example's activation (slices are summed, as in
        Captum's neuron methods); a callable ``act -> (R,)``; or ``xattr.outputs([idx_1, ...])``
        for K neurons in one call (attributions gain a K axis after the batch axis).
      part: for a layer that returns several tensors, the one the index applies to: an int
        position in a tuple, a dict key, or a tuple path into a nested value (``part=(1, 0)``:
        ``h_n`` of an LSTM's ``(output, (h_n, c_n))``). Only that tensor needs the batch in dim
        0 (NOTE: [Neurons in one part of a layer's value] in neuron_parts.py). Without it, an
        index into such a layer is refused; a callable then receives the whole value.

    Example:
      >>> split = xattr.at_layer(model, model.conv2)
      >>> nig = xattr.integrated_gradients(xattr.neuron(split, (4, 2, 2)))(x)      # like x
      >>> many = xattr.saliency(xattr.neuron(split, xattr.outputs([(0, 1, 1), (3, 2, 2)])))(x)
      >>> out_unit = xattr.saliency(xattr.neuron(xattr.at_layer(rnn, rnn.lstm), (4, 2), part=0))(x)
    """
    from .neuron_parts import PartOf, as_path

    path, index = as_path(part), _from_numpy(index)
    if hasattr(f, "act"):
        return Targeted(_CheckedAct(f, path, isinstance(index, Outputs) or not callable(index)), index)
    return Targeted(f if path is None else PartOf(f, path), index)


class _CheckedAct:
    """``split.act`` (its tensor at ``path``, where given) that refuses an activation without the
    batch in dim 0: the index skips dim 0 (NOTE: [Batch-first layers] in layer_layout.py).
    ``indexed``: the index is no callable, so it needs one tensor of the value."""

    def __init__(self, split, path: tuple | None = None, indexed: bool = False):
        from .neuron_parts import checked_act, part_split  # imported on use, as the layer checks always were

        self.split, self.model = split, split.model
        self.path, self.indexed, self.checked = path, indexed, part_split(split, path)
        self._checked_act = checked_act

    def __call__(self, *args):
        return self._checked_act(self.split, self.checked, self.path, self.indexed, args)
