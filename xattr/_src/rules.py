"""`rules`: a model function whose backward pass follows chosen rules instead of the chain rule.

NOTE: [Intercepting operations]
Captum swaps backward passes with module hooks keyed on module types, so ``F.relu`` is missed,
a module called twice breaks, and nothing fires under ``vmap`` (module backward hooks are not
functorch-aware). ``rules(f, mapping)`` instead runs f under a ``TorchFunctionMode`` that sees
every torch function call. Calls of a known kind (ops.py: every spelling of ReLU, pooling,
softmax, linear, conv, norms, attention) are parsed into an `Op`; if a rule applies, the call is
replaced by ``_Apply`` (rule_apply.py), a ``torch.autograd.Function`` (with ``setup_context`` and
``generate_vmap_rule=True``) whose forward is the op itself and whose backward is the rule's
(a rule with ``input_grad`` runs as called, with a hook on its node: NOTE: [Rules as backward
hooks]; one that only rescales its output's gradient, with a hook on its output: NOTE: [Rules
as output hooks]; a call whose rule writes it out runs as the ops it is made of: NOTE: [Ops
written out]). Forward values never change (but for rounding where `Unfused` spells a call
another way): only gradients do. Everything else runs untouched, and so does every op no rule
claims, so the cost is one dictionary lookup per torch call; but in DeepLift's paired rows,
where only the input rows are seeded, linear ops are parsed too and skip the reference rows in
their backward (NOTE: [Reference rows take no gradient] in deeplift_dead_rows.py).

Because the op is intercepted, not the module, the same rule applies to ``nn.ReLU``, ``F.relu``,
``x.relu_()`` and a ReLU module reused five times, and works in plain functions that are not
modules at all. In-place calls write into their input: inside the rule's Function
(`_ApplyEagerInPlace`) where the rule keeps no input, else recomputed out of place and copied back.

NOTE: [Ops written out]
A rule whose ``written_out(op)`` returns a function has the call answered by that function, with
the call's own arguments and the mode on again (it is off while it handles a call), so the ops
the function is made of are intercepted and ruled by the same mapping, module keys included.
`Unfused` does this for the fused ``F.multi_head_attention_forward``, whose inside the mode never
sees (NOTE: [Fused attention written out] in unfused.py), and for SDPA, layer and RMS norm, whose
single backward would otherwise replace the steps' rules (NOTE: [Attention and norms written out]
in written_out.py). A written-out function must not call its own op again under the same rule.
In paired rows, a layer norm or SDPA whose steps would take exactly DeepLift's rules runs as one
op with those steps' multipliers instead (NOTE: [Written-out steps fused] in deeplift_fused.py).

NOTE: [Choosing a rule]
A mapping key is one of
  - a torch function, standing for its kind: ``F.relu`` covers every ReLU spelling, ``F.linear``
    every linear layer, ``torch.conv2d`` every convolution (1-d, 2-d and 3-d), ``F.max_pool2d``
    every max-pool (two keys of one kind with different rules are an error);
  - an ``nn.Module`` subclass (``nn.Conv2d``): ops run inside such a module (subclasses too);
  - an ``nn.Module`` instance: ops run inside that module (it must be a module of ``root``
    where one is known: an equal copy is another instance, and would never run);
  - a module name (``"features.0"``), resolved against ``root`` (found behind f when omitted).
For each intercepted op, modules are searched from the innermost running module outwards; at
each module its name, then the instance, then its type; then the op's kind. The first rule
that accepts the op (``rule.accepts(op)``, by default ``op.kind in rule.kinds``) wins; none
leaves the ordinary gradient (a kind key whose rule does not accept that kind is refused when the
mapping is built, and so are ``kinds`` that are no set of known kinds). Module keys
track the running modules with global forward hooks that exist only during the call.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from . import nesting, pools
from .checks import _modules
from .deeplift_dead_rows import linear_rows, parsers_with_linear
from .deeplift_fused import fused
from .dependence import remembering
from .graph_hooks import hook_graph, node_number
from .input_copies import INPUT_COPIES, MOVES, moved
from .interleaved_rows import viewed
from .merged_rows import POSITION, WATCHED, Unshared, merged_rows, watched
from .rule_apply import _as_hook, _as_output_hook, _hooked, _scaled, apply_rule
from .rule_base import Rule
from .rule_limits import (
    calls_compiled,
    eager_compiled,
    enclosing_function,
    first_order_only,
    own_function,
    refuse_jit,
    warn_bypassed,
)
from .row_layout import _ROWS
from .rule_table import FUNCTION_CALL, Table
from .targets import Targeted


class _RulesMode(TorchFunctionMode):
    nested_calls_skip = True  # an attribution inside the model runs without it (nesting.py)

    def __init__(self, table: Table):
        super().__init__()
        self.table, self.parsers = table, table.parsers
        self.stack: list = []
        self.copies = INPUT_COPIES.get()  # None outside lrp's input-layer runs: no tracking then
        paired = _ROWS.get()  # inside deep_lift's call: its rows, and what the call noted of merges
        self.rows, self.merged = (paired[0], paired[4].merged) if paired[0] is not None else (None, None)
        # the input rows where only they are seeded (NOTE: [Reference rows take no gradient])
        self.input_rows = None if paired[0] is None or paired[1] else paired[0] - (paired[2] or paired[0] // 2)
        if self.input_rows is not None:
            self.parsers = parsers_with_linear(table)
        self.recording = torch.is_grad_enabled()  # NOTE: [Ops inside a custom autograd.Function]
        self.bypassed: set = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        parser = self.parsers.get(func)
        if parser is None:  # every call of the model passes here: keep it short
            if self.copies is not None and func in MOVES:
                return moved(self.copies, func, args, kwargs or {})
            if self.merged is not None and func in WATCHED:  # NOTE: [Rows merged with another dim]
                return watched(self.merged, self.rows, func, args, kwargs or {})
            return func(*args, **kwargs) if kwargs else func(*args)
        kwargs = kwargs or {}
        if func is FUNCTION_CALL:  # a model's own autograd.Function under torch.func transforms
            self._function_call(args[0], args[1:], kwargs)
            return func(*args, **kwargs)
        op = parser(func, *args, **kwargs)
        rule = None if op is None else self.table.resolve(op, self.stack)
        if rule is None:
            if self.input_rows is not None and op is not None and op.kind == "linear":
                out = linear_rows(op, self.rows, self.input_rows)  # NOTE: [Reference rows take no gradient]
                if out is not None:
                    return out
            return func(*args, **kwargs)
        if self.recording and not torch.is_grad_enabled():  # NOTE: [Ops inside a custom autograd.Function]
            self._bypassed(op)
        if torch._C._functorch.maybe_current_level() is not None:  # the transforms around this op, not
            # only those around the call (``rules(attribution_fn)`` takes its own gradient inside it)
            first_order_only("a gradient through xattr.rules", allowed=1)  # NOTE: [Rule-based attributions are first-order]
        if self.merged:  # NOTE: [Rows merged with another dim]
            found = merged_rows(self.merged, self.rows, op.tensors)
            if found is not None:
                return self._at_merged(*found, rule, op, func, args, kwargs)
        return self._dispatch(rule, op, func, args, kwargs)

    def _bypassed(self, op):
        """Warns, once per call and Function class, where ``op`` runs inside a model's own
        autograd.Function (NOTE: [Ops inside a custom autograd.Function])."""
        found = enclosing_function(3)
        if found is not None and found[0] not in self.bypassed:
            self.bypassed.add(found[0])
            warn_bypassed(found[0], op.kind, found[1])

    def _function_call(self, cls, args, kwargs):
        """Under torch.func transforms the mode sees a Function's call (``custom_function_call``),
        not the ops inside it: whether a rule would claim one is found by running its forward once
        per mapping and class, under `_Probe` (NOTE: [Ops inside a custom autograd.Function])."""
        if not self.recording or own_function(cls) or cls in self.bypassed:
            return
        found = self.table.inside_functions
        if cls not in found:
            probe = _Probe(self.table, list(self.stack))
            with torch.no_grad(), probe:
                cls.forward(*args, **kwargs)
            found[cls] = probe.kind
        if found[cls] is not None:
            self.bypassed.add(cls)
            where = enclosing_function(3)
            warn_bypassed(cls, found[cls], None if where is None else where[1])

    def _at_merged(self, layout: str, n: int, rule, op, func, args, kwargs):
        """`_dispatch` where the op's tensors hold the paired rows merged with another dim: n rows
        batch-major, taken as the call's rows; or k blocks of R, ruled on their ``(k, R, ...)``
        views (NOTE: [Interleaved rows] in interleaved_rows.py)."""
        if layout == POSITION:
            return self._dispatch(rule, op, func, args, kwargs, blocks=n)
        rows, reference_grads, shared, notes, seen = _ROWS.get()
        if shared:
            raise Unshared
        token = _ROWS.set((n, reference_grads, 0, notes, seen))
        try:
            return self._dispatch(rule, op, func, args, kwargs)
        finally:
            _ROWS.reset(token)

    def _dispatch(self, rule, op, func, args, kwargs, blocks: int | None = None):
        """Runs ``op`` under ``rule``; ``blocks``: its tensors hold that many rows as blocks of the
        paired rows, applied on their views where its kind allows (NOTE: [Interleaved rows])."""
        if type(rule).written_out is not Rule.written_out:  # NOTE: [Ops written out]
            if self.rows is not None and blocks is None and self.copies is None and _ROWS.get()[0] == self.rows:
                one = fused(rule, op, self.table, self.stack)  # NOTE: [Written-out steps fused]
                if one is not None:
                    return apply_rule(one, op)
            written = rule.written_out(op)
            if written is not None:
                with self:  # the mode is off while it handles a call: on again for the ops written out
                    return written(*args, **kwargs)
        if type(rule)._reroute is not Rule._reroute:
            return apply_rule(rule, rule._reroute(op))
        if _as_hook(rule, op):
            return _hooked(rule, op, pools.called(op, func, args, kwargs))
        if _as_output_hook(rule, op):
            return _scaled(rule, op, pools.called(op, func, args, kwargs))
        on = None if blocks is None else viewed(op, blocks, self.rows)
        if on is not None:
            out = apply_rule(rule, on)
            return args[0] if op.inplace else out.flatten(0, 1)
        return apply_rule(rule, op)

    @contextlib.contextmanager
    def tracking(self):
        """Keeps ``self.stack`` = the modules running now, with global hooks that die with the call.
        Every thread runs global hooks: only this thread's modules are kept (another thread's
        plain forward, inside module "0" meanwhile, gave later ops module "0"'s rule)."""
        if not self.table.tracks_modules:
            yield
            return
        stack, owner = self.stack, threading.get_ident()

        def enter(module, args):
            if threading.get_ident() == owner:
                stack.append(module)

        def leave(module, args, out):
            if stack and stack[-1] is module and threading.get_ident() == owner:
                stack.pop()

        pre = nn.modules.module.register_module_forward_pre_hook(enter)
        post = nn.modules.module.register_module_forward_hook(leave, always_call=True)
        try:
            yield
        finally:
            pre.remove()
            post.remove()
            stack.clear()


class _Probe(TorchFunctionMode):
    """Runs ops as they are, noting the kind of the first that the table's rules would claim
    (NOTE: [Ops inside a custom autograd.Function])."""

    def __init__(self, table: Table, stack: list):
        super().__init__()
        self.table, self.stack, self.kind = table, stack, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        parser = self.table.parsers.get(func)
        if parser is not None and self.kind is None and func is not FUNCTION_CALL:
            op = parser(func, *args, **kwargs)
            if op is not None and self.table.resolve(op, self.stack) is not None:
                self.kind = op.kind
        return func(*args, **kwargs)


class Ruled:
    """``f`` with modified backward rules (the result of `rules`)."""

    def __init__(self, f: Callable, table: Table, mapping: Mapping):
        self.model = f
        self.__wrapped__ = f
        self.table = table
        self.mapping = dict(mapping)
        self.multi_output = bool(getattr(f, "multi_output", False))
        # the graph holds ReLU nodes the mode cannot see inside these (NOTE: [Rules as graph hooks])
        self.graph_hooks = bool(table.by_node) and not any(map(_fused_relus, _modules(f)))
        self.compiled = calls_compiled(f)  # NOTE: [Rules on compiled models]
        # around an attribution function: composition (NOTE: [Attributions inside a model's forward])
        self.composes = bool(getattr(f, "attribution_function", False))
        self.merges_rows = False  # DeepLift runs it unshared (NOTE: [Rows merged with another dim] in merged_rows.py)

    def __call__(self, *args, **kwargs):
        return self.run(self.model, args, kwargs)

    def one_hot_target(self):
        """The `Targeted` that f is, whose model `run` may call ruled so that a gradient method
        picks the target's rows itself (NOTE: [Targets differentiated by a one-hot cotangent] in
        gradients.py); None where f is anything else or composes."""
        return self.model if type(self.model) is Targeted and not self.composes else None

    def run(self, fn: Callable, args: tuple, kwargs: dict):
        """``fn(*args, **kwargs)`` with the rules: fn is f, or the model of the `Targeted` f is."""
        if torch._C._functorch.maybe_current_level() is not None:
            first_order_only("a gradient through xattr.rules", allowed=1)  # NOTE: [Rule-based attributions are first-order]
        if self.compiled:
            with eager_compiled():
                return self._call(fn, args, kwargs)
        return self._call(fn, args, kwargs)

    def _call(self, fn, args, kwargs):
        if self.composes:  # NOTE: [Attributions inside a model's forward]
            inside = nesting.inside_model()
            return nesting.as_new_call(self._ruled, (fn, args, kwargs, False), {}) if inside else self._ruled(fn, args, kwargs, False)
        if self.graph_hooks and torch.is_grad_enabled() and torch._C._functorch.maybe_current_level() is None:
            first = node_number()
            with nesting.running_model():
                out = fn(*args, **kwargs)
            if hook_graph(out, self.table.by_node, first):  # NOTE: [Rules as graph hooks]
                return out
            self.graph_hooks = False  # this f's graph hides ops: its later calls go to the mode at once
        return self._ruled(fn, args, kwargs, True)

    def _ruled(self, fn, args, kwargs, model: bool):
        mode = _RulesMode(self.table)
        marked = nesting.running_model() if model else contextlib.nullcontext()
        # remembering: NOTE: [Remembered graph walks] in dependence.py
        with eager_compiled(), mode, mode.tracking(), marked, remembering():  # compiled code reached through a closure, too
            return fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"rules({self.model!r}, {self.mapping!r})"


def _fused_relus(model: nn.Module) -> bool:
    """Whether the model holds an ``nn.RNN(nonlinearity="relu")``: one torch call, whose ReLUs a
    torch function mode never sees, but which on CPU leaves ReLU nodes in the autograd graph."""
    todo = [model]  # a plain walk: model.modules() costs 3x as much (checks._training_stochastic)
    while todo:
        m = todo.pop()
        if isinstance(m, nn.RNNBase) and m.mode == "RNN_RELU":
            return True
        todo.extend(c for c in m._modules.values() if c is not None)
    return False


def rules(f: Callable, mapping: Mapping, *, root: nn.Module | None = None) -> Ruled:
    """Returns f with the backward pass of chosen operations replaced by rules.

    The forward pass is unchanged; gradients of the result (through ``xattr.grad``, any xattr
    method, ``torch.autograd`` or ``torch.func``) follow the rules. See NOTE: [Intercepting
    operations] for how, and NOTE: [Choosing a rule] for the keys. Such gradients are
    first-order only: a second gradient transform around them is refused (NOTE: [Rule-based
    attributions are first-order]).

    Args:
      f: model function (an ``nn.Module``, an ``xattr.target``, any callable).
      mapping: ``{key: rule}`` with keys torch functions (``F.relu`` stands for every ReLU
        spelling), module types, module instances or module names; values `xattr.rule.Rule`s.
      root: the module that names refer to, and that module-instance keys must belong to;
        found behind f when omitted.

    Returns:
      ``g(*args)`` computing f(*args), whose gradients follow the rules.

    Example:
      >>> guided = xattr.rules(model, {F.relu: xattr.rule.Guided()})
      >>> g = xattr.grad(xattr.target(guided, 3))(x)                  # guided backprop
    """
    refuse_jit(f)  # NOTE: [Rules on TorchScript models]
    if root is None and any(isinstance(k, (str, nn.Module)) for k in mapping):  # names resolve, instances are checked
        found = _modules(f)
        root = found[0] if len(found) == 1 else None
    return Ruled(f, Table(mapping, root), mapping)
