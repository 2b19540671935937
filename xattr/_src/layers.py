"""Splitting a model at a module: `at_layer` gives the activation and the rest of the model.

NOTE: [Splitting a model at a layer]
``split = at_layer(f, module)`` gives two functions of the model's own arguments:
  split.act(*args)     -> h, the module's output (or input, with inputs=True)
  split.head(h, *args) -> f(*args) with the module's output replaced by h
The head is the whole forward pass with h substituted, so skip connections that bypass the
module keep working and the original arguments (token ids, masks) pass through. Gradients of
the head with respect to h are layer gradients, so every input method becomes a layer method
by applying it to ``split.head`` with ``argnums=0``. Hooks are registered inside each call and
removed in a ``finally``: nothing stays on the model. The substituted h is cloned on entry, so
in-place ops after the module (``ReLU(inplace=True)``) never write into the caller's tensor.
Where the model can be traced with torch.fx and nothing could differ, the head instead runs a
pruned graph that skips the work h makes irrelevant (NOTE: [Traced heads] in fx_head.py).

A module called more than once per forward (torchvision ResNet's shared ``relu``) needs
``call_index``: an int picks that call (0-based), ``"all"`` takes every call (act returns a
tuple over calls and head substitutes each). The default, None, requires exactly one call and
says so otherwise. ``act`` stops the forward pass at the layer once it knows that is safe: at
once for an int call_index, and after the split's first complete forward pass (which checks the
single call) for None.

NOTE: [Layer inputs given by keyword]
A module's forward pre-hook sees its positional arguments only, so with ``inputs=True`` a layer
called by keyword alone (``self.block(x=h, scale=2.0)``, ``layer(hidden_states=h, ...)``) showed
an empty input, ``()``, and every method failed on it (Captum's ``attribute_to_layer_input``
likewise: IndexError). The layer's input is its positional arguments, as before; a call with
none gives, by keyword, the argument of the forward's first parameter, the one a positional
call would give first, and the head substitutes it there. Other keyword arguments (masks,
position ids, flags) are never part of the input, whichever way the layer is called.

NOTE: [Layers inside torch.no_grad]
A model may run the layer inside a ``torch.no_grad()`` block of its own: a frozen backbone,
``with torch.no_grad(): features = backbone(x)``, before a head. The output still depends on the
layer's value through the ops after the block, and that dependence is what the layer methods
measure (Captum's layer IG sees it too). The hooks run inside the block, so the head's
substitute (a copy of h) and the layer gradients' added zero were made untracked, and every
layer method returned zeros. So the hooks make them with grad recording on where the split's
caller had it on; under the caller's own ``torch.no_grad`` (the perturbation methods) they
stay untracked. Ops after the layer but still inside the block are not recorded either way.

NOTE: [Layers of compiled models]
Dynamo does not guard on module hooks: a model compiled by ``torch.compile`` and called once
without them (an evaluation under ``torch.no_grad``) reuses that graph when the split's hooks
are on, so they never fire ("never called"), and with ``fullgraph=True`` a hook that makes a
tensor requiring grad cannot be traced at all. So the split runs the model's compiled code as
its Python source (`rule_limits.eager_compiled`, as the rules do: NOTE: [Rules on compiled
models]), wherever it is reached from: the eager model's numbers, without the compiled speed.
A model from ``torch.jit`` runs its layers without hooks: they are refused (NOTE: [Rules on
TorchScript models] in rule_limits.py).

NOTE: [Layers of shared models in threads]
A module's hooks are seen by every thread that runs it, while the split's hooks belong to one
call. Another thread's forward of the same model during that call (a plain prediction, or its
own attribution) would otherwise run them: its activations would be counted and captured as the
call's ("the layer is called 5 times"), the head's h substituted into its forward, and the early
stop of ``act`` raised in it. So a hook acts only in the thread that registered it and is a
no-op elsewhere; each thread then gets the numbers it gets alone. A model that runs the layer
in threads of its own (``nn.DataParallel`` on several GPUs) cannot be split: "never called".
"""

from __future__ import annotations

import inspect
import threading
from typing import Callable, Sequence

import torch
from torch import nn

from . import nesting
from . import tree as T
from .batch_dims import check_batch_dim, is_batch_first, to_front, to_layout
from .fx_head import traced_head
from .gradients import is_multi_output
from .layer_layout import first_rows
from .layer_values import is_plain, restored, shown
from .rule_limits import calls_jit, eager_compiled, in_checkpoint, jit_error


class _Stop(BaseException):
    """Raised by a capture hook once every requested activation is in hand. A `BaseException`,
    as ``KeyboardInterrupt`` is: a forward that wraps its layers in ``try/except Exception`` must
    not catch it and run on to the end."""


class Split:
    """A model function split at one or more modules (see NOTE: [Splitting a model at a layer]).

    Example:
      >>> split = xattr.at_layer(xattr.target(model, 3), model.conv2)
      >>> h = split.act(x)                    # the layer's output; split.head(h, x) is f from there
    """

    reaches_model_only = True  # `checks._modules`: only its .model leads to the model (no __wrapped__, __self__)

    def __init__(self, f: Callable, modules, inputs: bool, call_index, batch_dim=0):
        self.model = f
        self.many = isinstance(modules, (list, tuple))
        self.modules = list(modules) if self.many else [modules]
        for m in self.modules:
            if not isinstance(m, nn.Module):
                raise TypeError(f"at_layer needs nn.Module layers, got {type(m).__name__}")
            if isinstance(m, torch.jit.ScriptModule):  # its forward hooks never run
                raise jit_error(type(m).__name__, "at_layer")  # NOTE: [Rules on TorchScript models]
        if not (call_index is None or call_index == "all" or (isinstance(call_index, int) and call_index >= 0)):
            raise ValueError(f"call_index must be None, a non-negative int or 'all', got {call_index!r}")
        self.inputs = inputs
        self.call_index = call_index
        self.batch_dim = check_batch_dim(batch_dim)  # NOTE: [Layers with the batch in another dim]
        self.where = "input" if inputs else "output"
        self.checked_single_calls: set = set()  # signatures (`tree.signature`) of args checked with a whole forward
        self.copied_values = False  # the layer gradients add zeros: the model writes in place after the layer
        self.act = _Act(self)
        self.head = _Head(self)

    @property
    def multi_output(self) -> bool:
        return is_multi_output(self.model)

    # -- hooks -------------------------------------------------------------------------------
    def _wanted(self, k: int) -> bool:
        return self.call_index in (None, "all") or k == self.call_index

    def _run(self, args, on_value: Callable, stop_when_done: bool, substitutes: bool = False, model: Callable | None = None):
        """Runs f(*args) with hooks calling ``on_value(layer_i, call_k, value) -> replacement|None``;
        ``substitutes``: the replacements may differ from the values (NOTE: [Layers under
        activation checkpointing]); ``model``: run instead of f (its target's model)."""
        counts = [0] * len(self.modules)
        handles = []
        owner = threading.get_ident()  # NOTE: [Layers of shared models in threads]
        level = nesting.depth()  # an attribution inside the forward runs the layer deeper: not this run's
        rows = None if is_batch_first(self.batch_dim) else first_rows(args)  # NOTE: [Layers with the batch in another dim]
        recording = torch.is_grad_enabled()  # NOTE: [Layers inside torch.no_grad]

        def make(i):
            def replaced(module, value):
                if threading.get_ident() != owner or nesting.depth() != level:
                    return None
                k = counts[i]
                counts[i] += 1
                if not self._wanted(k):
                    return None
                grad = torch.is_grad_enabled()
                torch._C._set_grad_enabled(recording or grad)  # NOTE: [Layers inside torch.no_grad]; no context object
                try:
                    new = on_value(i, k, to_front(shown(value), self.batch_dim, self.where, rows))
                    if new is None:
                        return None
                    new = restored(to_layout(new, self.batch_dim, self.where, rows), value)  # NOTE: [Layer values with more than tensors]
                finally:
                    torch._C._set_grad_enabled(grad)
                if substitutes and torch.is_grad_enabled() and in_checkpoint():
                    raise _checkpointed(module, self.where)
                return new

            def pre_hook(module, inp, kwargs):  # NOTE: [Layer inputs given by keyword]
                key = None if inp else _first_parameter(module)
                if key is None or key not in kwargs:
                    new = replaced(module, _unpack_inputs(inp))
                    return None if new is None else (_pack_inputs(new), kwargs)
                new = replaced(module, kwargs[key])
                return None if new is None else (inp, {**kwargs, key: new})

            return pre_hook if self.inputs else (lambda module, inp, out: replaced(module, out))

        try:
            for i, m in enumerate(self.modules):
                if self.inputs:
                    h = m.register_forward_pre_hook(make(i), with_kwargs=True)
                else:
                    h = m.register_forward_hook(make(i))
                handles.append(h)
            try:
                with eager_compiled(), nesting.running_model():  # NOTE: [Layers of compiled models]
                    out = (self.model if model is None else model)(*args)
            except _Stop:
                out = None
        finally:
            for h in handles:
                h.remove()
        if not stop_when_done or out is not None:
            self._check_counts(counts)
            if self.call_index is None:
                if len(self.checked_single_calls) >= 1024:  # variable-length inputs: one per length; forget, recheck
                    self.checked_single_calls.clear()
                self.checked_single_calls.add(T.signature(args))
        return out

    def _check_counts(self, counts):
        for m, c in zip(self.modules, counts):
            name = type(m).__name__
            if c == 0:
                jit = calls_jit(self.model)
                if jit is not None:  # it runs the layer's own copy, or the layer without hooks
                    raise jit_error(type(jit).__name__, "at_layer")
                raise RuntimeError(f"the layer {name} was never called by the model's forward for these inputs")
            if self.call_index is None and c > 1:
                raise RuntimeError(
                    f"the layer {name} is called {c} times per forward pass (a reused module); choose "
                    "the call with at_layer(..., call_index=k) (0-based) or call_index='all'"
                )
            if isinstance(self.call_index, int) and self.call_index >= c:
                raise RuntimeError(f"call_index={self.call_index} but the layer {name} is called only {c} time(s)")

    def _pack(self, per_layer: list):
        vals = [tuple(v) if self.call_index == "all" else v[0] for v in per_layer]
        return tuple(vals) if self.many else vals[0]

    def _unpack(self, h) -> list:
        vals = list(h) if self.many else [h]
        if len(vals) != len(self.modules):
            raise ValueError(f"head expects {len(self.modules)} activations, got {len(vals)}")
        return [list(v) if self.call_index == "all" else [v] for v in vals]


def _unpack_inputs(inp: tuple):
    return inp[0] if len(inp) == 1 else inp


def _first_parameter(module: nn.Module) -> str | None:
    """The name of the first parameter of ``module.forward`` that can be given by keyword."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    first = next(iter(params), None)
    return first.name if first is not None and first.kind in (first.POSITIONAL_OR_KEYWORD, first.KEYWORD_ONLY) else None


def _pack_inputs(value):
    return value if isinstance(value, tuple) else (value,)


def _clone(tree):
    return T.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, tree)


class _Act:
    """split.act(*args): the layer's activation(s), computed as far as the layer and no further."""

    def __init__(self, split: Split):
        self.split = split
        self.model = split.model

    def __call__(self, *args):
        s = self.split
        got: list[list] = [[] for _ in s.modules]
        # With call_index=None the first call for each signature of the arguments (their shapes,
        # dtypes and devices) runs the whole forward to check each layer is called exactly once;
        # later calls with it stop at the layer (NOTE: [Splitting a model at a layer]). Another
        # shape may call the layer another number of times (a layer run per chunk of tokens).
        once = isinstance(s.call_index, int) or (s.call_index is None and T.signature(args) in s.checked_single_calls)
        need = len(s.modules) if once else None

        def on_value(i, k, value):
            if need is not None and sum(len(g) for g in got) + 1 == need:
                # The forward stops here, so no later op can write into an output (an input
                # may be the caller's own tensor: still copied).
                got[i].append(_clone(value) if s.inputs else value)
                raise _Stop
            got[i].append(_clone(value))
            return None

        s._run(args, on_value, stop_when_done=need is not None)
        return s._pack(got)


def unread_dropped(split: Split, h, args: tuple) -> tuple:
    """``args`` with each tensor the traced head never reads (NOTE: [Traced heads]) replaced by an
    empty stand-in, for a method that tiles its pass-through arguments with the copies of h
    (layer IG: the model's input, tiled n_steps times for a head that starts at a middle layer
    and never reads it: 9.8 MB per call at the CPU benchmark's conv2). Only at top level and
    where the head is traced now; a head call that takes the hook head after all (tracing in
    another thread) puts back what the stand-ins stand for, tiled as the method would have
    (`_restored`)."""
    if torch._C._functorch.maybe_current_level() is not None or not isinstance(h, torch.Tensor):
        return args
    traced = traced_head(split, h, args)
    if traced is None or not traced.unread:
        return args
    batch = h.shape[0]
    return tuple(_stand_in(a, batch) if i in traced.unread else a for i, a in enumerate(args))


def _stand_in(a: torch.Tensor, batch: int) -> torch.Tensor:
    """An empty tensor (never tiled: its dim 0 is no batch) that remembers ``a`` and the batch."""
    out = a.new_empty((0,))
    out._xattr_stands_for = (a, batch)
    return out


def _restored(args: tuple, h) -> tuple:
    """Stand-ins (`unread_dropped`) back to their tensors, tiled to h's rows as `tree.fold` tiles."""
    if not any(hasattr(a, "_xattr_stands_for") for a in args):
        return args
    rows = (h if isinstance(h, torch.Tensor) else T.leaves(h)[0]).shape[0]
    out = []
    for a in args:
        if hasattr(a, "_xattr_stands_for"):
            a, batch = a._xattr_stands_for
            a = T.fold(a, rows // batch, batch)
        out.append(a)
    return tuple(out)


class _Head:
    """split.head(h, *args): the model's output with the layer's activation(s) replaced by h.

    Runs the fx-traced, pruned head where it is exact (NOTE: [Traced heads] in fx_head.py),
    else the whole forward with a hook substituting h.
    """

    def __init__(self, split: Split):
        self.split = split
        self.model = split.model

    @property
    def multi_output(self) -> bool:
        return self.split.multi_output

    def __call__(self, h, *args):
        s = self.split
        traced = traced_head(s, h, args) if is_plain(h) else None  # NOTE: [Traced heads]: the same numbers, less work
        if traced is not None:
            return traced(to_layout(h, s.batch_dim, s.where, None), *args)
        args = _restored(args, h)
        given = s._unpack(h)

        def on_value(i, k, value):
            pos = k if s.call_index == "all" else 0
            return _clone(given[i][pos])

        return s._run(args, on_value, stop_when_done=False, substitutes=True)


def _checkpointed(module: nn.Module, where: str) -> RuntimeError:
    """NOTE: [Layers under activation checkpointing]
    ``torch.utils.checkpoint(fn, use_reentrant=False)`` keeps none of fn's saved tensors and
    recomputes them in the backward pass by running fn again, after `Split._run` has removed its
    hooks. Where the hook replaced the layer's value by an equal one (the zero added by the layer
    gradients, neuron conductance's leaf copy) the recomputation gives the same tensors, and those
    methods stay right (tested). The head substitutes another h (layer integrated gradients, any
    method applied to ``split.head``): the recomputed tensors after the layer would be those of
    the model's own activation, and the gradients silently wrong (measured 0.14 of 0.22). Keeping
    the hook for the recomputation would leave it on the model past the call, so the head refuses
    a layer inside a checkpoint while gradients are recorded; under ``torch.no_grad`` nothing is
    recomputed, and the perturbation methods run there. The traced head (NOTE: [Traced heads]),
    where it runs, is right: fx traces through the checkpoint, whose function it inlines."""
    return RuntimeError(
        f"xattr.at_layer: split.head substitutes the {where} of {type(module).__name__}, which runs inside "
        "torch.utils.checkpoint: its backward pass recomputes the checkpointed forward without the substitution, "
        "so gradients of the head (layer integrated gradients, methods applied to split.head) would be wrong. "
        "Run the model without activation checkpointing (e.g. checkpoint only in training mode); gradient x "
        "activation, Grad-CAM, conductance, internal influence and layer gradient SHAP work as they are"
    )


def at_layer(
    f: Callable, layer: nn.Module | Sequence[nn.Module], *, inputs: bool = False, call_index=None, batch_dim=0
) -> Split:
    """Splits a model function at a module (or several) into activation and head.

    Args:
      f: model function (may be ``xattr.target(model, t)``: the head then returns the target).
      layer: the module, or a list of modules (activations become a tuple, one per module).
      inputs: split at the module's input instead of its output (Captum's
        ``attribute_to_layer_input``): its positional inputs (a tuple where there are several),
        or for a call by keyword alone, ``block(x=h, mask=m)``, its forward's first parameter.
      call_index: for modules called more than once per forward: an int (0-based) or "all".
      batch_dim: the dim of the layer's value that holds the examples, moved to dim 0 for the
        methods (1 for a sequence-first ``(L, B, D)`` layer); an int, or a tuple shaped like the
        value, e.g. ``(0, 1)`` for a batch-first LSTM's ``(output, (h_n, c_n))``; or
        ``"merged"`` for a value whose dim 0 holds each example's rows together, ``(B * k,
        ...)`` (OPT's MLP on ``hidden.reshape(-1, D)``), seen as ``(B, k, ...)``. The
        activation and attributions are then batch-first (NOTE: [Layers with the batch in
        another dim]).

    Returns:
      A `Split` with ``act(*args) -> h`` and ``head(h, *args) -> f(*args) with h substituted``.

    Example:
      >>> split = xattr.at_layer(xattr.target(model, 3), model.conv2)
      >>> h = split.act(x)
      >>> layer_ig = xattr.integrated_gradients(split.head)(h, x)   # attributions shaped like h
    """
    return Split(f, layer, inputs, call_index, batch_dim)
