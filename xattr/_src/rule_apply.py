"""How one intercepted op runs under its rule: through an `autograd.Function` (`apply_rule`), or
as called with a hook on its node (`_hooked`) or on its output (`_scaled`). rules.py decides
which, per op (NOTE: [Intercepting operations])."""

from __future__ import annotations

import contextvars

import torch

from . import extrema, ops, order_stats
from .graph_hooks import eager, input_grad_hook
from .rule_base import NOT_KEPT, OUTPUT_NOT_KEPT, Rule, Saved, pullback
from .rule_limits import RULED_VJP, refuse_checkpoint, refuse_second_backward

# NOTE: [Rules as backward hooks]: clamp runs through the Function, and so does softsign, which torch
# writes in Python as x / (1 + |x|): its last node is a division whose first input gradient is only the
# numerator's share (a hook there left the rest unruled: off by 0.027 where the largest entry of the
# gradient was 0.076, on a small MLP); so does ``c / x`` (kind "rdiv"), which torch writes as
# ``x.reciprocal() * c``: its last node is the product
_HOOK_KINDS = ops.ELEMENTWISE - {"clamp", "softsign", "rdiv"}


class _Apply(torch.autograd.Function):
    """The op's forward with the rule's backward. Non-tensor inputs: the rule and the op."""

    generate_vmap_rule = True

    @staticmethod
    def forward(rule, op, *tensors):
        result = rule.forward(op, *tensors)
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.Tensor)):
            raise TypeError(f"{rule!r}.forward must return (output, extras), extras a tuple of tensors (() for none); "
                            f"it returned {_described(result)}")
        out, extras = result
        if extras:
            _check_extras(rule, out, tuple(extras), tensors)
        return (out, *extras)

    @staticmethod
    def setup_context(ctx, inputs, output):
        rule, op, *tensors = inputs
        _save(ctx, rule, op, tensors, output[0], output[1:])

    @staticmethod
    def jvp(ctx, *tangents):
        return _jvp(ctx, *tangents)

    @staticmethod
    @eager  # NOTE: [Rule callbacks run eagerly] in graph_hooks.py
    def backward(ctx, grad, *_):
        if grad is None:  # the op's output did not reach what is differentiated
            return (None,) * (2 + ctx.n_inputs)
        if ctx.ruled_vjp is not None:  # NOTE: [Derivatives of rule-based attributions] in rule_limits.py
            return (None, None, *_differentiable_backward(ctx, grad))
        saved = ctx.saved_tensors
        out = saved[-1] if ctx.keep_output else OUTPUT_NOT_KEPT
        saved = saved[:-1] if ctx.keep_output else saved
        inputs = saved[: ctx.n_kept] if ctx.n_kept else NOT_KEPT
        return (None, None, *_checked(ctx, ctx.rule.backward(ctx.op, Saved(inputs, saved[ctx.n_kept :], out), grad)))


def _jvp(ctx, *tangents) -> tuple:
    """The op's true JVP, for a forward-mode transform around a method's own VJP (NOTE:
    [Derivatives of rule-based attributions] in rule_limits.py): tangents follow the forward
    pass, where no rule applies; the extras carry none (the backward recomputes them)."""
    if ctx.ruled_vjp is None:
        raise NotImplementedError(
            f"xattr.rules: {ctx.rule!r} at a {ctx.op.kind!r} op under jvp or jacfwd: rules replace backward passes, "
            "so a forward-mode derivative of a ruled function is not defined. Take the ruled gradient with grad or vjp "
            "(the rule-based methods themselves may sit inside jvp, jacfwd and hessian)")
    inputs = ctx.saved_tensors
    tangents = tuple(torch.zeros_like(x) if t is None else t for x, t in zip(inputs, tangents[2:]))
    out_t = torch.func.jvp(ctx.op.fn, tuple(x.clone() for x in inputs), tangents)[1]  # NOTE: [vjp inside a rule]
    return (out_t, *(None for _ in range(ctx.n_extras)))


def _differentiable_backward(ctx, grad: torch.Tensor) -> tuple:
    """The backward of an op made inside a method's own VJP under an outer reverse-mode transform
    (NOTE: [Derivatives of rule-based attributions] in rule_limits.py): the rule's, from its
    forward recomputed on the saved inputs while the method takes its VJP; the op's true VJP
    once the method has returned (the outer transform going back through the forward pass)."""
    inputs = ctx.saved_tensors
    if not ctx.ruled_vjp.armed:
        return tuple(pullback(ctx.op.fn, *inputs)[1](grad))
    # in the forward's context: the rule reads the call's (DeepLift's paired rows, LRP's input
    # copies), and on a GPU autograd runs backward passes on threads of its own, where a context
    # variable reads its default (DeepLift's multipliers were then the plain derivatives; NOTE:
    # [Backward callbacks read no context] in rule_base.py)
    out, extras = ctx.context.run(ctx.rule.forward, ctx.op, *inputs)
    saved = Saved(inputs if ctx.rule_keeps else NOT_KEPT, tuple(extras), out if ctx.keep_output else OUTPUT_NOT_KEPT)
    return _checked(ctx, ctx.rule.backward(ctx.op, saved, grad))


def _checked(ctx, grads) -> tuple:
    """A rule's backward result, refused unless it has one gradient per tensor of the op."""
    if not isinstance(grads, (tuple, list)) or len(grads) != ctx.n_inputs:
        got = f"{len(grads)} gradients" if isinstance(grads, (tuple, list)) else _described(grads)
        raise RuntimeError(f"{ctx.rule!r}.backward returned {got} for {ctx.n_inputs} tensors: return a tuple with "
                           f"one gradient (or None) per tensor of the {ctx.op.kind!r} op")
    return tuple(grads)


def _described(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}" if not isinstance(value, tuple) else f"a tuple of {len(value)}"


def _check_extras(rule: Rule, out: torch.Tensor, extras: tuple, tensors: tuple) -> None:
    """Refuses extras a Function cannot save beside its outputs: the output itself, an input, a non-tensor."""
    for e in extras:
        if not isinstance(e, torch.Tensor):
            raise TypeError(f"{rule!r}.forward returned a {type(e).__name__} among its extras: extras are tensors "
                            "(keep numbers on the rule or in op.options)")
        if e is out:
            raise RuntimeError(f"{rule!r}.forward returned its output among its extras: return a copy (out.clone()), "
                               "or set keep_output = True")
        if any(e is t for t in tensors):
            raise RuntimeError(f"{rule!r}.forward returned one of its inputs among its extras: set keep_inputs = True "
                               "to receive the inputs in saved.inputs, or return a copy")


def _save(ctx, rule: Rule, op: ops.Op, tensors, out: torch.Tensor, extras: tuple, *, returned: bool = True) -> None:
    """What every `_Apply*` keeps for the rule's backward (``returned``: the extras are outputs
    of the Function too, as `_Apply` needs for its vmap rule).

    NOTE: [A kept output is a copy]
    Outside transforms the Function's output is what the model goes on with, and models write into
    such outputs: ``ReLU(inplace=True)`` after a linear or conv, ResNet's ``out += identity`` after
    a batch norm. Where the op's own backward does not save its output (linear, conv, batch norm)
    plain autograd allows that, but a saved output would be at a later version and the backward
    would fail. So the output a rule keeps (``keep_output``) is saved as a copy: one allocation per
    op of such a rule. Under transforms `apply_rule` already hands the model a copy."""
    if extras and returned:
        ctx.mark_non_differentiable(*extras)
    ctx.set_materialize_grads(False)  # the extras never get gradients: no zero tensors for them
    ctx.rule, ctx.op, ctx.n_inputs, ctx.keep_output = rule, op, len(tensors), rule.keep_output
    ctx.ruled_vjp = RULED_VJP.get() if returned else None  # NOTE: [Derivatives of rule-based attributions]
    if ctx.ruled_vjp is not None:  # the inputs alone: the rest is recomputed from them
        ctx.rule_keeps, ctx.n_extras, ctx.context = rule.keeps(op), len(extras), contextvars.copy_context()
        ctx.save_for_backward(*tensors)
        ctx.save_for_forward(*tensors)
        return
    kept = tuple(tensors) if rule.keeps(op) else ()
    ctx.n_kept = len(kept)
    if rule.keep_output and not returned:
        out = out.detach().clone()  # NOTE: [A kept output is a copy]
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
    @eager  # NOTE: [Rule callbacks run eagerly] in graph_hooks.py
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
    # one tensor: ``a.mul_(b)`` (kind "product") computes out of place and is copied back
    return (op.inplace and len(op.tensors) == 1 and (op.kind in ops.IN_PLACE or type(rule).forward is not Rule.forward)
            and not rule.keeps(op) and torch._C._functorch.maybe_current_level() is None)


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
        if isinstance(scale, torch.Tensor) and scale.shape != out.shape:  # a factor that broadcasts over the output
            scale = _broadcast(rule, scale, out.shape)
    out, held = _hook_holder(op, out)
    if isinstance(scale, torch.Tensor):
        scale = scale.reshape(held.shape)
    held.register_hook(lambda g: None if g is None else _rescaled(g, scale))  # None: no gradient reached it
    return out


def _broadcast(rule: Rule, scale: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    try:
        return scale.expand(shape)
    except RuntimeError:
        raise RuntimeError(f"{rule!r}.output_scale returned shape {tuple(scale.shape)}, which does not broadcast to the "
                           f"output's {tuple(shape)}") from None


@eager  # NOTE: [Rule callbacks run eagerly] in graph_hooks.py
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


def apply_rule(rule: Rule, op: ops.Op):
    """Runs ``op`` with ``rule``'s backward; handles in-place calls and returned pooling indices."""
    refuse_checkpoint(rule, op)  # NOTE: [Rules and activation checkpointing]
    if op.fn is None and type(rule).forward is Rule.forward:
        raise NotImplementedError(
            f"{rule!r} cannot apply to a {op.kind!r} op (nn.MultiheadAttention, nn.LSTM, nn.GRU, nn.RNN): it is one fused "
            "call whose tensors no rule sees, so a rule there can only refuse it (xattr.rule.Refuse) or, at "
            "nn.MultiheadAttention, run it written out (xattr.rule.Unfused(), LRP's default). Remove that key "
            "from the mapping to give the op its ordinary gradient"
        )
    tensors = op.tensors
    if _runs_in_place(rule, op):
        with torch._C.DisableTorchFunction():
            return _ApplyEagerInPlace.apply(rule, _without_tensors(op), tensors[0])
    if op.inplace and (rule.keeps(op) or RULED_VJP.get() is not None):  # the input is saved: not the one written
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
                if op.kind == "max":  # torch.max(x, dim): its named tuple (NOTE: [Max along a dim] in extrema.py)
                    return extrema.with_indices(op, out, op.tensors[0])
                if op.kind == "sort":  # torch.sort, topk...: theirs (NOTE: [Order statistics along a dim])
                    return order_stats.returned(op, out, op.tensors[0])
                indices = ops.pool_with_indices(op, op.tensors[0])[1]
            return out, indices
    return out
