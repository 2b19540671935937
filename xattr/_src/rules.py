"""`rules`: a model function whose backward pass follows chosen rules instead of the chain rule.

NOTE: [Intercepting operations]
Captum swaps backward passes with module hooks keyed on module types, so ``F.relu`` is missed,
a module called twice breaks, and nothing fires under ``vmap`` (module backward hooks are not
functorch-aware). ``rules(f, mapping)`` instead runs f under a ``TorchFunctionMode`` that sees
every torch function call. Calls of a known kind (ops.py: every spelling of ReLU, pooling,
softmax, linear, conv, norms, attention) are parsed into an `Op`; if a rule applies, the call is
replaced by ``_Apply``, a ``torch.autograd.Function`` (with ``setup_context`` and
``generate_vmap_rule=True``) whose forward is the op itself and whose backward is the rule's
(a rule with ``input_grad`` runs as called, with a hook on its node: NOTE: [Rules as backward
hooks]; one that only rescales its output's gradient, with a hook on its output: NOTE: [Rules
as output hooks]). Forward values never change: only gradients do. Everything else runs untouched, and so does
every op no rule claims, so the cost is one dictionary lookup per torch call.

Because the op is intercepted, not the module, the same rule applies to ``nn.ReLU``, ``F.relu``,
``x.relu_()`` and a ReLU module reused five times, and works in plain functions that are not
modules at all. In-place calls write into their input: inside the rule's Function
(`_ApplyEagerInPlace`) where the rule keeps no input, else recomputed out of place and copied back.

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
that accepts the op's kind (``rule.kinds``) wins; none leaves the ordinary gradient (a kind key
whose rule does not accept that kind is refused when the mapping is built). Module keys
track the running modules with global forward hooks that exist only during the call.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Mapping, NamedTuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from . import nesting, ops
from .graph_hooks import hook_graph, input_grad_hook, node_number
from .checks import _modules
from .input_copies import INPUT_COPIES, MOVES, moved
from .rule_limits import (
    calls_compiled, eager_compiled, first_order_only, refuse_checkpoint, refuse_jit, refuse_second_backward,
)
from .rule_table import Table

_HOOK_KINDS = ops.ELEMENTWISE - {"clamp"}  # NOTE: [Rules as backward hooks]: clamp runs through the Function


class Saved(NamedTuple):
    """What a rule's backward receives: the op's input tensors (when the rule keeps them), the
    extra tensors its forward computed, and its output (when the rule keeps it)."""

    inputs: tuple
    extras: tuple
    output: torch.Tensor | None = None


class Rule:
    """A modified backward pass for some kinds of operation (subclass it; see docs/rules.md).

    Override ``backward(op, saved, grad)`` to return one gradient per tensor of ``op.tensors``
    (None where there is none), and optionally ``forward(op, *tensors) -> (output, extras)`` to
    compute tensors the backward needs. Set ``kinds`` to the op kinds the rule accepts and
    ``keep_inputs = True`` to receive the op's inputs in ``saved.inputs`` (``keep_output = True``:
    its output in ``saved.output``).

    A rule in a DeepLift mapping that never reads an example's row beside its reference's (it
    pairs no rows) may set ``shares_reference = True``: DeepLift may then run one reference row
    for the batch (NOTE: [Shared reference]); without it, the 2B paired rows. (The built-in
    `Rescale` pairs rows through helpers that know both layouts.)

    A rule for an elementwise kind whose gradient is a function of the op's ordinary one
    (guided backprop: ``max(dx, 0)`` of the ReLU's own ``dx``) may also override
    ``input_grad(op, grad)``: outside torch.func transforms the op then runs untouched and
    ``input_grad`` is a hook on its autograd node (NOTE: [Rules as backward hooks]); ``backward``
    must give the same values (transforms use it).
    """

    kinds: frozenset = frozenset()
    keep_inputs: bool = False
    keep_output: bool = False
    shares_reference: bool = False  # see above and NOTE: [Shared reference]

    def accepts(self, op: ops.Op) -> bool:
        return op.kind in self.kinds

    def keeps(self, op: ops.Op) -> bool:
        """Whether the backward needs the op's input tensors (``saved.inputs``)."""
        return self.keep_inputs

    def forward(self, op: ops.Op, *tensors):
        return op.fn(*tensors), ()

    def backward(self, op: ops.Op, saved: Saved, grad: torch.Tensor) -> tuple:
        raise NotImplementedError

    def input_grad(self, op: ops.Op, grad: torch.Tensor) -> torch.Tensor:
        """The rule's gradient from the op's ordinary input gradient ``grad`` (optional; elementwise
        kinds). ``grad`` is the op's own backward result, used nowhere else: change it in place."""
        raise NotImplementedError

    def _reroute(self, op: ops.Op) -> ops.Op:
        """The op to run instead, called with the op's own tensors before it runs (optional): the
        same op with some tensors swapped for others of equal value, whose gradient the caller
        reads apart (LRP's input-layer rules: NOTE: [Input-layer relevance] in lrp_methods.py). A
        rule that reroutes always runs through its Function, never as a hook."""
        raise NotImplementedError

    def scales_output(self, op: ops.Op) -> bool:
        """Whether, for this op, the rule's gradient is the op's ordinary VJP of the incoming
        gradient times `output_scale` (NOTE: [Rules as output hooks]); decided before the op runs."""
        return False

    def output_scale(self, op: ops.Op, out: torch.Tensor) -> torch.Tensor:
        """The factor of the incoming gradient, from the op's output (called without grad, where
        `scales_output` said yes); ``backward`` must give the same gradients (transforms use it)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class _Apply(torch.autograd.Function):
    """The op's forward with the rule's backward. Non-tensor inputs: the rule and the op."""

    generate_vmap_rule = True

    @staticmethod
    def forward(rule, op, *tensors):
        out, extras = rule.forward(op, *tensors)
        if extras and any(e is out for e in extras):
            raise RuntimeError(f"{rule!r}.forward returned its output among its extras: return a copy (out.clone())")
        return (out, *extras)

    @staticmethod
    def setup_context(ctx, inputs, output):
        rule, op, *tensors = inputs
        _save(ctx, rule, op, tensors, output[0], output[1:])

    @staticmethod
    def backward(ctx, grad, *_):
        if grad is None:  # the op's output did not reach what is differentiated
            return (None,) * (2 + ctx.n_inputs)
        saved = ctx.saved_tensors
        out = saved[-1] if ctx.keep_output else None
        saved = saved[:-1] if ctx.keep_output else saved
        grads = ctx.rule.backward(ctx.op, Saved(saved[: ctx.n_kept], saved[ctx.n_kept :], out), grad)
        if len(grads) != ctx.n_inputs:
            raise RuntimeError(f"{ctx.rule!r}.backward returned {len(grads)} gradients for {ctx.n_inputs} tensors")
        return (None, None, *grads)


def _save(ctx, rule: Rule, op: ops.Op, tensors, out: torch.Tensor, extras: tuple, *, returned: bool = True) -> None:
    """What every `_Apply*` keeps for the rule's backward (``returned``: the extras are outputs
    of the Function too, as `_Apply` needs for its vmap rule)."""
    if extras and returned:
        ctx.mark_non_differentiable(*extras)
    ctx.set_materialize_grads(False)  # the extras never get gradients: no zero tensors for them
    ctx.rule, ctx.op, ctx.n_inputs, ctx.keep_output = rule, op, len(tensors), rule.keep_output
    kept = tuple(tensors) if rule.keeps(op) else ()
    ctx.n_kept = len(kept)
    ctx.save_for_backward(*kept, *extras, *((out,) if rule.keep_output else ()))


class _ApplyEager(torch.autograd.Function):
    """`_Apply` for plain autograd (no torch.func transform active).

    NOTE: [Two Function classes]
    ``Function.apply`` of a class with ``setup_context`` binds its arguments through
    ``inspect.signature`` on every call (torch 2.13: ~20-40 us), once per ruled op. Outside
    transforms nothing needs ``setup_context`` or the vmap rule, so this legacy-style class with
    the same forward and backward runs instead. It returns the op's output alone: the rule's
    extras go to ``save_for_backward`` only (each further output of a Function costs autograd
    a wrapper, ~5-10 us apiece; DeepLift's max-pool has four).
    """

    @staticmethod
    def forward(ctx, rule, op, *tensors):
        out, *extras = _Apply.forward(rule, op, *tensors)
        if out._is_view():  # F.linear of a 3-d input: a view returned by a Function may not be modified in place
            out = out.clone()
        _save(ctx, rule, op, tensors, out, tuple(extras), returned=False)
        return out

    @staticmethod
    def backward(ctx, grad):
        refuse_second_backward()  # NOTE: [Rule-based attributions are first-order]
        return _Apply.backward(ctx, grad)


class _ApplyEagerInPlace(torch.autograd.Function):
    """`_ApplyEager` for an in-place call (``nn.ReLU(inplace=True)``, ``x.relu_()``) whose rule keeps
    no input: the result is written into the input inside the Function (``mark_dirty``), as the
    call would without the rule. With the default forward the op itself runs in place; a rule's
    own forward (DeepLift's multipliers read the input) runs out of place, then its output is
    copied in. A copy back outside the Function instead costs an autograd node whose backward
    makes and adds a zero gradient for the overwritten input (a ResNet-50 has 49 such ReLUs)."""

    @staticmethod
    def forward(ctx, rule, op, x):
        if type(rule).forward is Rule.forward:
            out, extras = ops.IN_PLACE[op.kind](x, **op.options), ()
        else:
            y, *extras = _Apply.forward(rule, op, x)  # reads x before it is overwritten
            out, extras = x.copy_(y), tuple(extras)
        ctx.mark_dirty(x)
        _save(ctx, rule, op, (x,), out, extras, returned=False)
        return out

    backward = _ApplyEager.backward


def _runs_in_place(rule: Rule, op: ops.Op) -> bool:
    return (op.inplace and (op.kind in ops.IN_PLACE or type(rule).forward is not Rule.forward) and not rule.keeps(op)
            and torch._C._functorch.maybe_current_level() is None)


def _as_hook(rule: Rule, op: ops.Op) -> bool:
    """NOTE: [Rules as backward hooks]
    An `autograd.Function` costs tens of microseconds of Python per call (apply, context,
    backward; measured on CPU with tiny tensors, a ReLU under `rules` costs 115 us more than a
    plain one through the Function, 45 us through the hook), and its backward allocates the
    rule's gradient beside the chain rule's. A rule that is a function of the op's ordinary input
    gradient needs neither: the op runs as called, with its own autograd node, and
    ``input_grad`` is a hook on that node that rewrites the node's fresh result in place
    (`_hooked`; guided backprop: one ``clamp_min_`` after the ReLU's own backward, bit for bit
    what `Guided.backward` computes; about 2% faster on the CPU CNN, where ten same-process
    comparisons ranged from -2% to +5%).

    Only where the op surely makes its own node with a freshly computed gradient: an elementwise
    kind but clamp (NOTE: [Clamps that are ReLUs]), out of place or in place on a non-view (in place
    on a view the node is a view node), and outside transforms (there `_Apply` runs ``backward``)."""
    return (type(rule).input_grad is not Rule.input_grad and op.kind in _HOOK_KINDS
            and not (op.inplace and op.tensors[0]._base is not None) and torch._C._functorch.maybe_current_level() is None)


def _as_output_hook(rule: Rule, op: ops.Op) -> bool:
    """NOTE: [Rules as output hooks]
    Some rules keep the op's own backward and only rescale the gradient that reaches its output:
    LRP-epsilon at a linear, conv or pooling layer passes ``g_x = op^T(g_z * z / stab(z))``, and
    ``op^T`` is the op's ordinary VJP with respect to its input. Outside torch.func transforms
    such an op runs as called, with its own autograd node, and a hook on its output tensor
    multiplies the incoming gradient by ``output_scale`` (computed in the forward): no
    `autograd.Function`, whose Python costs tens of microseconds per call in the forward and the
    backward (NOTE: [Rules as backward hooks]), and the native backward kernel instead of the
    rule's spelling of it. A hook registered on a tensor that is later modified in place (a conv
    followed by ``ReLU(inplace=True)``) still receives the gradient with respect to the value the
    op returned (torch's documented behaviour, tested here); on an output that is a view
    (``F.linear`` of a 3-d input, a 1-d pool of a transposed input) the hook would be lost, so it
    goes on the view's base instead (`_hook_holder`). Not for in-place calls or ops that
    return indices. One difference outside the attributions: with ``loss.backward()`` the op's
    parameters receive gradients (of the rescaled signal), where the Function gives them none.
    """
    return (rule.scales_output(op) and not op.inplace and not op.options.get("return_indices")
            and torch._C._functorch.maybe_current_level() is None)


def _scaled(rule: Rule, op: ops.Op, out):
    """``out`` with a hook multiplying its incoming gradient by ``rule.output_scale(op, out)``."""
    if not (isinstance(out, torch.Tensor) and out.requires_grad):
        return out
    with torch.no_grad(), torch._C.DisableTorchFunction():
        scale = rule.output_scale(op, out.detach())
    out, held = _hook_holder(op, out)
    scale = scale.reshape(held.shape)
    held.register_hook(lambda g: None if g is None else _rescaled(g, scale))  # None: no gradient reached it
    return out


def _rescaled(grad: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    refuse_second_backward()  # NOTE: [Rule-based attributions are first-order]
    return grad * scale


def _hook_holder(op: ops.Op, out: torch.Tensor) -> tuple:
    """(the output to return, the tensor whose gradient hook stands for the output's).

    An output that is a view (``F.linear`` of a 3-d input with a bias returns ``addmm(...).view(...)``)
    loses a hook of its own when it is modified in place (``ReLU(inplace=True)`` next: the view's
    history is rebuilt on its base), so the hook goes on a base the op made and the view covers
    element for element; any other view is replaced by a copy."""
    base = out._base
    if base is None:
        return out, out
    if (base.requires_grad and base.numel() == out.numel() and base.is_contiguous() and out.is_contiguous()
            and all(base is not t for t in op.tensors)):
        return out, base
    with torch._C.DisableTorchFunction():
        out = out.clone()
    return out, out


def _without_tensors(op: ops.Op) -> ops.Op:
    """``op`` without its tensors, for what outlives the call (a Function's context, a hook); built
    directly: ``NamedTuple._replace`` costs twice as much per call."""
    return ops.Op(op.kind, op.fn, (), op.options, op.func, op.inplace)


def _hooked(rule: Rule, op: ops.Op, out):
    """``out`` with ``rule.input_grad`` on its autograd node (NOTE: [Rules as backward hooks])."""
    node = out.grad_fn if isinstance(out, torch.Tensor) else None
    if node is not None:
        node.register_hook(input_grad_hook(rule, _without_tensors(op)))  # the hook must not hold the inputs
    return out


def pullback(fn: Callable, *primals: torch.Tensor):
    """``torch.func.vjp(fn, *primals)`` for use inside a rule's backward.

    NOTE: [vjp inside a rule]
    Under ``vmap`` a rule's backward runs on saved tensors that belong to the vmapped forward;
    handing such a tensor straight to ``torch.func.vjp`` trips an internal functorch assertion
    (torch 2.13: "batched == nullptr"). A fresh copy made inside the backward is an ordinary
    tensor of the current level, so the primals are cloned first (cheap next to the VJP).
    """
    return torch.func.vjp(fn, *(p.clone() for p in primals))


def apply_rule(rule: Rule, op: ops.Op):
    """Runs ``op`` with ``rule``'s backward; handles in-place calls and returned pooling indices."""
    refuse_checkpoint(rule, op)  # NOTE: [Rules and activation checkpointing]
    tensors = op.tensors
    if _runs_in_place(rule, op):
        with torch._C.DisableTorchFunction():
            return _ApplyEagerInPlace.apply(rule, _without_tensors(op), tensors[0])
    if op.inplace and rule.keeps(op):
        tensors = (tensors[0].clone(),) + tensors[1:]
    light = _without_tensors(op)  # the context must not hold the op's tensors
    with torch._C.DisableTorchFunction():  # the rule's own ops are not intercepted again
        eager = torch._C._functorch.maybe_current_level() is None
        out = _ApplyEager.apply(rule, light, *tensors) if eager else _Apply.apply(rule, light, *tensors)[0]
        if not eager and not op.inplace:
            # under vmap the outputs of a Function with several outputs are views that may not be
            # modified in place, and models do (a conv or batch-norm followed by ReLU(inplace=True))
            out = out.clone()
        if op.inplace:
            out = op.tensors[0].copy_(out)
        if op.options.get("return_indices"):
            with torch.no_grad():
                indices = ops.pool_with_indices(op, op.tensors[0])[1]
            return out, indices
    return out


class _RulesMode(TorchFunctionMode):
    nested_calls_skip = True  # an attribution inside the model runs without it (nesting.py)

    def __init__(self, table: Table):
        super().__init__()
        self.table, self.parsers = table, table.parsers
        self.stack: list = []
        self.copies = INPUT_COPIES.get()  # None outside lrp's input-layer runs: no tracking then

    def __torch_function__(self, func, types, args=(), kwargs=None):
        parser = self.parsers.get(func)
        if parser is None:  # every call of the model passes here: keep it short
            if self.copies is not None and func in MOVES:
                return moved(self.copies, func, args, kwargs or {})
            return func(*args, **kwargs) if kwargs else func(*args)
        kwargs = kwargs or {}
        op = parser(func, *args, **kwargs)
        rule = None if op is None else self.table.resolve(op, self.stack)
        if rule is None:
            return func(*args, **kwargs)
        if torch._C._functorch.maybe_current_level() is not None:  # the transforms around this op, not
            # only those around the call (``rules(attribution_fn)`` takes its own gradient inside it)
            first_order_only("a gradient through xattr.rules", allowed=1)  # NOTE: [Rule-based attributions are first-order]
        if type(rule)._reroute is not Rule._reroute:
            return apply_rule(rule, rule._reroute(op))
        if _as_hook(rule, op):
            return _hooked(rule, op, func(*args, **kwargs))
        if _as_output_hook(rule, op):
            return _scaled(rule, op, func(*args, **kwargs))
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

    def __call__(self, *args, **kwargs):
        if torch._C._functorch.maybe_current_level() is not None:
            first_order_only("a gradient through xattr.rules", allowed=1)  # NOTE: [Rule-based attributions are first-order]
        if self.compiled:
            with eager_compiled():
                return self._call(args, kwargs)
        return self._call(args, kwargs)

    def _call(self, args, kwargs):
        if self.composes:  # NOTE: [Attributions inside a model's forward]
            inside = nesting.inside_model()
            return nesting.as_new_call(self._ruled, (args, kwargs, False), {}) if inside else self._ruled(args, kwargs, False)
        if self.graph_hooks and torch.is_grad_enabled() and torch._C._functorch.maybe_current_level() is None:
            first = node_number()
            with nesting.running_model():
                out = self.model(*args, **kwargs)
            if hook_graph(out, self.table.by_node, first):  # NOTE: [Rules as graph hooks]
                return out
        return self._ruled(args, kwargs, True)

    def _ruled(self, args, kwargs, model: bool):
        mode = _RulesMode(self.table)
        marked = nesting.running_model() if model else contextlib.nullcontext()
        with eager_compiled(), mode, mode.tracking(), marked:  # compiled code reached through a closure, too
            return self.model(*args, **kwargs)

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
