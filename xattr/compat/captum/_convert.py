"""Argument conversion shared by every Captum adapter, written once.

NOTE: [How an adapter runs a Captum call]
``Call.build`` turns Captum's ``inputs``/``target``/``additional_forward_args`` into xattr terms:
the model is ``xattr.target(forward_func, t)`` (or ``forward_func`` itself for ``target=None``),
the positional arguments are ``(*inputs, *additional_forward_args)`` and ``argnums`` picks the
inputs, so xattr attributes only them and folds the rest into the batch with the inputs. An
adapter's ``_functional(call, **captum_keywords)`` returns ``(fn, aux)``: ``fn(*call.args, *aux)``
gives ``(attributions as a tuple, delta or None)``. ``aux`` holds per-call positional extras the
attribution depends on (integrated gradients' baselines), so that a noise tunnel around the
adapter folds per-example baselines with the inputs like any other pass-through argument.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

import xattr
from xattr._src import tree as T


def captum_target(target, batch: int):
    """Converts a Captum target to one `xattr.target` understands (None means no selection).

    Captum's forms: an int; a tuple index into a multi-dimensional output; a tensor holding one
    index (applied to every example) or one per example; a Python list with one int or one tuple
    *per example*. Per-example forms must work on R = n * B folded rows, where row r belongs to
    example r % B (NOTE: [Folding copies into the batch axis] in xattr/_src/tree.py).
    """
    if target is None or isinstance(target, (int, tuple, xattr.Outputs)):  # xattr.outputs(...): K outputs in one pass
        return target
    if isinstance(target, torch.Tensor):
        if target.numel() == 1:
            return int(target.reshape(()).item())
        if target.ndim != 1 or target.numel() != batch:
            raise ValueError(
                f"a tensor target must hold one index, or one per example ({batch}); got shape {tuple(target.shape)}"
            )
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"a target tensor must hold integer indices, got {target.dtype} (Captum's gather refuses it too)")
        return target.long()
    if isinstance(target, list):
        if len(target) != batch:
            raise ValueError(
                f"a list target gives one target per example (Captum's meaning): expected {batch} entries, "
                f"got {len(target)}. For several outputs of every example use xattr.outputs([...])."
            )
        if all(isinstance(t, int) and not isinstance(t, bool) for t in target):
            return torch.tensor(target, dtype=torch.long)
        if all(isinstance(t, tuple) for t in target):
            return _PerExampleIndex(target)
        raise TypeError(f"a list target must hold ints or tuples (one per example), got {target!r}")
    raise TypeError(f"unsupported target {target!r}: use None, an int, a tuple, a tensor or a per-example list")


class _PerExampleIndex:
    """Callable target: picks ``out[r, *index[r % B]]`` for each of R folded rows."""

    def __init__(self, indices: list[tuple]):
        lengths = {len(t) for t in indices}
        if len(lengths) != 1:
            raise ValueError(f"every tuple in a per-example list target must have the same length, got {indices!r}")
        self.indices = indices
        self.columns = [torch.tensor(col, dtype=torch.long) for col in zip(*indices)]

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        out = T.expand_shared(out)  # a reference row shared by the batch: one per example (deep_lift)
        rows = torch.arange(out.shape[0], device=out.device)
        example = rows % len(self.indices)
        return out[(rows,) + tuple(c.to(out.device)[example] for c in self.columns)]

    def __repr__(self) -> str:
        return f"per_example({self.indices!r})"


def extra_args(additional_forward_args) -> tuple:
    """Captum's additional_forward_args as a tuple of extra positional arguments."""
    if additional_forward_args is None:
        return ()
    return additional_forward_args if isinstance(additional_forward_args, tuple) else (additional_forward_args,)


@dataclass
class Call:
    """One Captum ``attribute`` call in xattr terms. See NOTE: [How an adapter runs a Captum call]."""

    model: Callable
    inputs: tuple
    is_tuple: bool
    extra: tuple

    @staticmethod
    def build(forward_func: Callable, inputs, target, additional_forward_args) -> "Call":
        is_tuple = isinstance(inputs, tuple)
        inputs = inputs if is_tuple else (inputs,)
        if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
            raise TypeError("inputs must be a tensor or a non-empty tuple of tensors (Captum's convention)")
        t = captum_target(target, inputs[0].shape[0])
        model = forward_func if t is None else xattr.target(forward_func, t)
        return Call(model, inputs, is_tuple, extra_args(additional_forward_args))

    @property
    def argnums(self) -> tuple[int, ...]:
        return tuple(range(len(self.inputs)))

    @property
    def args(self) -> tuple:
        return self.inputs + self.extra

    @property
    def batch(self) -> int:
        return self.inputs[0].shape[0]

    def baselines(self, baselines) -> tuple:
        """Captum's path baselines (None, number, tensor, or a tuple of those), one per input."""
        if baselines is None:
            return (0.0,) * len(self.inputs)
        if not isinstance(baselines, tuple):
            if isinstance(baselines, torch.Tensor) and len(self.inputs) > 1:
                raise ValueError(f"inputs are a tuple of {len(self.inputs)} tensors: give baselines as a tuple like them")
            baselines = (baselines,) * len(self.inputs)
        if len(baselines) != len(self.inputs):
            raise ValueError(f"baselines has {len(baselines)} entries but inputs has {len(self.inputs)} tensors")
        for b in baselines:
            if not isinstance(b, (int, float, torch.Tensor)):  # a bool is a number here, as in Captum (True: 1)
                raise TypeError(f"each baseline must be a number or a tensor, got {type(b).__name__}")
        return tuple(float(b) if isinstance(b, int) else b for b in baselines)

    def distribution(self, baselines) -> tuple:
        """Captum's baseline distribution (tensor, tuple, or a callable returning one) as tensors (N, ...)."""
        if callable(baselines):
            baselines = baselines() if not inspect.signature(baselines).parameters else baselines(self.captum_inputs)
        return tuple(
            b if isinstance(b, torch.Tensor) else torch.full((1,) + tuple(x.shape[1:]), float(b), dtype=x.dtype, device=x.device)
            for x, b in zip(self.inputs, self.baselines(baselines))
        )

    @property
    def captum_inputs(self):
        return self.inputs if self.is_tuple else self.inputs[0]

    def output(self, attributions: tuple, delta: torch.Tensor | None, with_delta: bool):
        """Captum's return convention: tensor in -> tensor out, tuple in -> tuple out; then the delta."""
        attr = tuple(attributions) if self.is_tuple else attributions[0]
        return (attr, delta) if with_delta else attr


def subseed(generator: Any, k: int):
    """An independent generator for nested random draws (noise tunnel -> inner method)."""
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        return generator  # stateful: every use advances it
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be an int seed, a torch.Generator or None, got {type(generator).__name__}")
    return torch.Generator().manual_seed((generator * 1_000_003 + 7919 * k) % 2**63)


class Attribution:
    """Base of the adapters: holds ``forward_func`` and runs one Captum call through ``_functional``.

    Subclasses implement ``_functional(call, **keywords) -> (fn, aux)`` (NOTE: [How an adapter
    runs a Captum call]); ``attribute`` is then one line each.
    """

    stochastic = False  # whether _functional takes a ``generator`` keyword

    def __init__(self, forward_func: Callable) -> None:
        self.forward_func = forward_func

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def _functional(self, call: Call, **keywords):
        raise NotImplementedError

    def _run(self, inputs, target, additional_forward_args, **keywords):
        call = Call.build(self.forward_func, inputs, target, additional_forward_args)
        fn, aux = self._functional(call, **keywords)
        attributions, delta = fn(*call.args, *aux)
        return self._output(call, attributions, delta, bool(keywords.get("return_convergence_delta", False)))

    def _output(self, call: Call, attributions, delta, with_delta: bool):
        """Captum's return value from ``fn``'s result: one attribution per input (``call.output``);
        the layer adapters return the layer's structure instead (and a noise tunnel its method's)."""
        return call.output(attributions, delta, with_delta)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.forward_func!r})"


def _captum(obj, *names: str) -> bool:
    """Whether obj is Captum's function, or an instance of Captum's class, of one of these names
    (without importing captum)."""
    kind = obj if inspect.isfunction(obj) else type(obj)
    return (getattr(kind, "__module__", None) or "").startswith("captum.") and kind.__qualname__ in names
