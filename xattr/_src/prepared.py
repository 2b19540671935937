"""Prepared calls: what a perturbation method would redo identically on every call with inputs
of one signature, done once (used by feature ablation and occlusion).

NOTE: [Prepared calls]
A method called again and again on inputs of one shape (an explanation loop over a dataset, a
benchmark) repeats the same preparation each time: validate the feature mask, build baselines
and coalitions, choose the copies per call, turn coalitions into keep masks, walk the input
trees. On a small model that Python costs as much as the model itself (feature ablation of a
20-64-64-2 MLP on 32 rows on CPU: ~0.25 ms of ~0.5 ms). So when all copies fit in one model
call, the method keeps what its second call with one *signature* found (a one-off call does
not pay for preparing) and serves the third and later calls from it. A signature is the
inputs' shapes, dtypes and devices, and the feature mask and baselines (numbers by value,
tensors by identity and version counter; the prepared call holds them, so an identity cannot
be reused by a new tensor; on the CPU it also compares their bits with a copy before serving,
since a write through ``.data`` or a numpy array sharing the memory keeps the version (bits, not
values: 0.0 -> -0.0 is a change, and NaN no change); a
lazily negated tensor, ``z.conj().imag``, is never served, as it has no bit-level view). A served call makes the copies with a `copies.copier` chosen when
prepared (perturb's kernel and copies, its mask work done once), calls the model once, takes
the drops f(x) - f(copy) (for one number per row, one subtraction of two strided views of the
output rows), and hands them to the method's ``finish``, kept from its setup: feature
ablation's spreads them over the features (no work at all for one float (B, F) input with
every feature its own), occlusion's averages the windows. It switches grad mode itself, so the
method skips `detached` (one no_grad, not two). The per-call checks still run: the train-mode
warning, finite outputs, one output row per input row. Everything else takes the general path:
pytrees and pass-through arguments, calls nested in another method's batch, torch.func
transforms, torch.compile, inference mode, progress bars, a model whose output no longer has
the rows it had, a call that runs out of memory (the general path retries it smaller), and
copies whose masks would hold more than `MAX_KEEP_BYTES` (there the model's work dwarfs the
preparation). Each step of the served path was cut because it showed in the tabular benchmark:
on a 0.2 ms model every tensor op after the model call costs 5-8 us (caches cold), and the
served call is now a handful of them. Since 2026-11-25 the target's memo (targets.py) and the
held feature masks compare a small integer tensor with its snapshot as a Python list
(`tree.cpu_snapshot`), not with ``torch.equal``: one op fewer per model call (FeatureAblation,
tabular: ~1% of the served call, at the edge of what interleaved medians resolve; Shapley
sampling makes four model calls).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from . import tree as T
from .checks import check_finite
from .masks import keep_masks
from .nesting import running_model
from .budget import copies_per_call
from .copies import copier
from .perturb import Coalitions, _check_per_example, as_floating, inputs_and_copies, output_float_dtype

MAX_PREPARED = 4  # signatures kept per method function (the oldest goes first)
# A prepared call keeps its copies' masks (bools, at full size when small; float 0/1 masks for
# large CPU copies, see `copies.copier`); above this many bytes it is not prepared: the model's
# work on such copies dwarfs the Python that preparing saves, and a GPU should not hold large
# masks between calls.
MAX_KEEP_BYTES = 2**24


def signature(args: tuple, nums: tuple, *objs) -> tuple | None:
    """The key of a call that a prepared call may serve, or None when it must take the general
    path (NOTE: [Prepared calls]): every argument a plain tensor, all of them attributed in
    order, no enclosing method, torch.func transform or torch.compile, ``objs`` (baselines,
    feature mask) None, numbers or plain tensors."""
    if (
        nums != tuple(range(len(args)))
        or T.true_batch() is not None
        or torch.is_inference_mode_enabled()
        or torch._C._functorch.maybe_current_level() is not None
        or torch.compiler.is_compiling()
    ):
        return None
    key = []
    for a in args:
        if type(a) is not torch.Tensor or a.is_neg() or a.is_conj():  # lazy negation: no bit-level view of it
            return None
        key.append((a.shape, a.dtype, a.device))
    for o in objs:
        if o is None or type(o) in (int, float):
            key.append((type(o), repr(o)))  # repr: -0.0 is not 0.0 here (a signed zero is copied as such)
        elif type(o) is torch.Tensor and not (o.is_inference() or o.is_neg() or o.is_conj()):
            key.append((id(o), o._version))
        else:
            return None
    return tuple(key)


class Prepared:
    """A method's prepared calls by signature, at most `MAX_PREPARED` (the oldest goes first),
    made on a signature's second call and serving it from the third.

    Signatures whose copies do not fit one call are refused, and so is a prepared call that
    could not serve its call (`OneCall.run` gave None: out of memory, or a model whose output
    changed): it is dropped and not prepared again, which would cost a wasted model call every
    time."""

    def __init__(self):
        self.calls: dict = {}
        self.refused: set = set()
        self.seen: set = set()  # signatures met once: prepared when met again

    def get(self, key: tuple | None) -> "OneCall | None":
        return None if key is None else self.calls.get(key)

    def add(self, key: tuple | None, make: Callable[[], "OneCall | None"]) -> None:
        """Prepares ``make()`` for ``key`` the second time the key comes (a one-off call does not
        pay for preparing: ~15% of feature ablation's general path on the tabular MLP), unless
        the key is refused."""
        if key is None or key in self.refused:
            return
        if key not in self.seen:
            if len(self.seen) >= 64:
                self.seen.clear()
            self.seen.add(key)
            return
        call = make()
        if call is None:  # does not fit one call: no need to find that out again
            self.refuse(key)
            return
        if len(self.calls) >= MAX_PREPARED:  # the oldest goes (pop: another thread may evict it first)
            self.calls.pop(next(iter(self.calls), None), None)
        self.calls[key] = call

    def refuse(self, key: tuple) -> None:
        self.calls.pop(key, None)
        if len(self.refused) >= 64:
            self.refused.clear()
        self.refused.add(key)

    def key(self, args: tuple, nums: tuple, show_progress: bool, *objs) -> tuple | None:
        """The call's `signature` (None with a progress bar: a served call draws none)."""
        return None if show_progress else signature(args, nums, *objs)

    def serve(self, key: tuple | None, args: tuple) -> tuple | None:
        """The attributions (a tuple, one per attributed input) from the call prepared for
        ``key``: ``finish(drops)`` with the method's ``finish`` kept from its setup (drops:
        ``f(x) - f(copy k)``, (B, [O,] K)). None when there is none, or it could not serve (it
        is then refused). Runs under no_grad itself: the general path's `detached` is not
        needed here, no torch.func transform is active (see `signature`)."""
        call = self.get(key)
        if call is None:
            return None
        found = call.run(args)
        if found is None:
            self.refuse(key)
        return found

    def attributions(self, key: tuple | None, f, args: tuple, nums: tuple, setup: Callable[[tuple], tuple], *, held: tuple, chunk_size,
                     memory_budget, show_progress):  # fmt: skip
        """The general path of a method built on drops: ``setup(selected)`` gives its (masks,
        baselines, coalitions, finish), `perturb.inputs_and_copies` evaluates the copies, and
        ``finish(drops)`` the attributions (drops (B, [O,] K), one row in aggregate mode). A
        signature met twice is prepared here for the next calls (NOTE: [Prepared calls]);
        ``held``: the signature's baselines and feature mask (kept alive with it)."""
        selected = T.split_args(args, nums)[0]
        masks, base, coalitions, finish = setup(selected)
        out, aggregate, outs = inputs_and_copies(f, args, nums, T.batch_size(selected), masks=masks, baselines=base, coalitions=coalitions,
                                                 chunk_size=chunk_size, memory_budget=memory_budget, show_progress=show_progress)  # fmt: skip
        if key is not None and not aggregate:
            self.add(key, lambda: OneCall.make(f, selected, masks, base, coalitions, chunk_size=chunk_size, memory_budget=memory_budget,
                                               held=held, finish=finish))  # fmt: skip
        return finish(drops_of(out, outs.movedim(1, 0)))


def drops_of(out: torch.Tensor, outs: torch.Tensor) -> torch.Tensor:
    """f(x) (B, [O]) and the K copies' outputs copy-major (K, B, [O]) -> drops (B, [O,] K), floats
    for bool and integer outputs too (`perturb.as_floating`)."""
    return (as_floating(out) - as_floating(outs)).movedim(0, -1)


class OneCall:
    """The inputs and K coalitions' copies of them in one model call (copy 0: the inputs).

    ``run(args)`` gives the outputs of the inputs and their copies, copy-major, or None when
    this call must take the general path. The copies are `perturb`'s, bit for bit.
    """

    def __init__(self, f: Callable, selected: tuple, keep: tuple, base: tuple, batch: int, n_copies: int, held: tuple, finish: Callable):
        self.f, self.batch, self.n_copies, self.finish = f, batch, n_copies, finish
        self.rows, self.copies_by_batch = n_copies * batch, (n_copies, batch)
        self.float_dtype = output_float_dtype(selected)  # integer outputs' (NOTE: [Integer outputs])
        made = [copier(x, b.unsqueeze(0), kp) for x, b, kp in zip(selected, base, keep)]
        self.copies, self.nbytes = tuple(c for c, _ in made), sum(n for _, n in made)
        self.shapes = tuple((self.rows,) + tuple(x.shape[1:]) for x in selected)
        self.multi = bool(getattr(f, "multi_output", False))
        self.held = held  # the signature's tensors, kept alive so that their ids stay theirs
        # and their values as prepared: a write that bypasses the version counter (through
        # ``.data``, or a numpy array sharing a CPU tensor's memory) must not be served stale
        self.snapshots = tuple((t, T.cpu_snapshot(t)) for t in held if isinstance(t, torch.Tensor) and t.device.type == "cpu")

    @classmethod
    def make(cls, f, selected: tuple, masks, base: tuple, coalitions, *, chunk_size, memory_budget, held=(), finish=None):
        """For (K, F) shared coalitions, or a shared `Coalitions`, and inputs that are plain tensors
        (a call with a `signature`): None unless the inputs and the K copies fit one call and their
        keep masks `MAX_KEEP_BYTES`. ``finish``: the method's drops -> attributions (it must
        hold no input: the signature fixes their shapes and dtypes, not their values)."""
        lazy = isinstance(coalitions, Coalitions)
        if lazy and not coalitions.shared:
            return None
        batch, k = T.batch_size(selected), (coalitions.n_copies if lazy else coalitions.shape[0]) + 1
        if copies_per_call(selected, batch, chunk_size, memory_budget, k) < k:
            return None
        z = coalitions.rows(0, k - 1)[0] if lazy else coalitions
        z = torch.cat([z.new_ones((1, z.shape[1])), z]).unsqueeze(0)
        keep = keep_masks(z if z.dtype == torch.bool else z != 0, masks, selected, batch)
        if sum(kp.numel() * kp.element_size() for kp in T.leaves(keep)) > MAX_KEEP_BYTES:
            return None
        call = cls(f, selected, keep, base, batch, k, held, finish)
        return call if call.nbytes <= MAX_KEEP_BYTES else None

    def run(self, args: tuple) -> tuple | None:
        """``finish(drops)`` (the method's attributions) from one model call on the inputs and
        their copies, or None when this call must take the general path."""
        for t, as_prepared in self.snapshots:
            if not T.matches_snapshot(t, as_prepared):
                return None  # changed behind the version counter: the general path, from now on
        grad = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)  # torch.no_grad without its Python layers
        try:
            with T.batch_scope(self.batch):
                rows = [copy(x).reshape(shape) for x, copy, shape in zip(args, self.copies, self.shapes)]
                try:
                    with running_model():  # NOTE: [Attributions inside a model's forward] in nesting.py
                        out = self.f(*rows)
                except torch.cuda.OutOfMemoryError:  # the general path retries with fewer copies
                    return None
            return self._finish(out)
        finally:
            torch._C._set_grad_enabled(grad)

    def _finish(self, out) -> tuple | None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model function must return a tensor, got {type(out).__name__}")
        if not out.is_floating_point() or not math.isfinite(out.sum().item()):
            check_finite(out)  # `check_finite`'s own test: one sum (no torch.func or compile here: see `signature`)
            out = as_floating(out, self.float_dtype)  # as `perturb.evaluate` takes them
        if out.ndim == 0 or out.shape[0] != self.rows:
            return None  # not one output row per input row any more: the general path says why
        _check_per_example(out, self.multi)
        if (out.ndim == 1 or not self.multi) and out.is_contiguous():  # (R,) or (R, 1): one number per row
            # f(x) broadcast along the copies and the copies batch-major, as two strided views of
            # the rows (copy-major): the drops in one subtraction, laid out (B, K)
            b, at = self.batch, out.storage_offset()
            fx, copies = out.as_strided((b, 1), (1, 0), at), out.as_strided((b, self.n_copies - 1), (1, b), at + b)
            return self.finish(fx - copies)
        out = out.reshape(self.copies_by_batch + (out.shape[1:] if self.multi else ()))  # (R, 1): its axis dropped
        return self.finish(drops_of(out[0], out[1:]))
