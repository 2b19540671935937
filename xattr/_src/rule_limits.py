"""Where rule-based gradients cannot be trusted, refused: a second differentiation of the rules
(NOTE: [Rule-based attributions are first-order]) and activation checkpointing (NOTE: [Rules and
activation checkpointing]); compiled models, which rules see only as their Python source
(NOTE: [Rules on compiled models]); and TorchScript, which they cannot see at all (NOTE: [Rules
on TorchScript models]). A model's own ``torch.autograd.Function`` hides its ops' gradients from the
rules: warned about (NOTE: [Ops inside a custom autograd.Function])."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys
import types
from typing import Callable

import torch
from torch import nn

from . import ops
from .checks import transforms_around
from .warn import warn


def differentiating_levels() -> int:
    """How many torch.func transforms that differentiate are active around this call: ``grad``,
    ``vjp`` and ``jacrev`` (reverse mode), ``jvp`` and ``jacfwd`` (forward mode); ``vmap`` and
    ``functionalize`` do not count."""
    return transforms_around(torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp)


_CONSTANT_LEVELS: contextvars.ContextVar = contextvars.ContextVar("xattr_constant_levels", default=0)


@contextlib.contextmanager
def taken_as_constant():
    """Marks a gradient taken inside another transform whose result the caller stops (holds
    constant) before anything differentiates it: its level does not count as differentiating
    the rules (`first_order_only`; neuron conductance's dF/dh inside vmap)."""
    token = _CONSTANT_LEVELS.set(_CONSTANT_LEVELS.get() + 1)
    try:
        yield
    finally:
        _CONSTANT_LEVELS.reset(token)


class RuledVjp:
    """One rule-based attribution's own VJP, taken inside a reverse-mode transform that
    differentiates it (NOTE: [Derivatives of rule-based attributions]). ``armed`` while the
    method takes its ruled gradient; afterwards the ruled ops it made differentiate as the ops."""

    __slots__ = ("armed", "levels")

    def __init__(self, levels: int):
        self.armed, self.levels = True, levels


RULED_VJP: contextvars.ContextVar = contextvars.ContextVar("xattr_ruled_vjp", default=None)


@contextlib.contextmanager
def differentiable_rules(method: str):
    """Runs a rule-based method's body so that a transform differentiating it (``grad``, ``vjp``,
    ``jacrev``, ``jvp``, ``jacfwd``, ``hessian``) gets the true derivative of its attributions.

    NOTE: [Derivatives of rule-based attributions]
    A rule replaces an op's derivative in the method's own VJP, but a derivative *of* the
    attribution needs the op's true derivative wherever the outer transform goes back through
    the forward pass (guided backprop through a tanh after a ReLU: the tanh's derivative depends
    on the ReLU's output), and the derivative of the rule's backward itself where it goes back
    through that backward. Both are the same ruled op's autograd node, told apart by time: every
    ruled op made during the method's call holds this call's `RuledVjp`, armed while the method
    takes its own VJP and disarmed when the call ends, before any outer reverse-mode transform
    differentiates the result. An armed op runs its rule's backward on the inputs it saved,
    recomputing the rule's forward extras from them (the extras the forward returned are cut
    from the graph), so the rule's backward is differentiated as written; a disarmed one returns
    the op's true VJP, and forward mode always takes the op's true JVP (rule_apply.py). Without
    the disarming, guided backprop's gradient with respect to the input was off by 136% on an
    MLP with a tanh after its ReLU. Checked against central differences of the attribution, with
    respect to inputs and parameters, and jacfwd against jacrev
    (tests/test_attribution_derivatives.py, and every DeepLift rule in
    tests/test_attribution_derivatives_deeplift.py). The methods that enter this context get it:
    guided backprop, deconvolution, guided Grad-CAM, LRP, layer LRP, and the DeepLift methods
    (deep_lift, deep_lift_shap, their layer and neuron forms). What that asks of a rule's
    forward: no in-place write into a tensor autograd saved for the recomputation (DeepLift's
    Rescale and max-pool divide out of place under transforms, in place only eagerly), no 0 / 0
    even where a `torch.where` drops it (its zero cotangent times nan is nan: the secants divide
    by 1 at ties), no reading of context variables but through the forward's context (the
    recomputation runs in it: on a GPU autograd runs backward passes on threads of its own), and
    nothing detached in the forward that the model's output depends on (`held` instead: cut from
    the method's own VJP only). Plain autograd never differentiates
    a method's attributions, which come back detached (NOTE: [Detached results]);
    ``torch.autograd.grad(..., create_graph=True)`` through `rules` itself stays refused
    (`refuse_second_backward`), and so do nested transforms around `rules` itself: nothing marks
    where their first-order pass ends."""
    levels = differentiating_levels() - _CONSTANT_LEVELS.get()
    if levels <= 0:
        yield
        return
    state = RuledVjp(levels)
    token = RULED_VJP.set(state)
    try:
        yield
    finally:
        state.armed = False
        RULED_VJP.reset(token)


def held(t: torch.Tensor) -> torch.Tensor:
    """t, through which the rules' relevance goes nowhere: detached, or, inside a method that a
    torch.func transform differentiates, cut from the method's own VJP only, so that the outer
    derivative still reaches what t is computed from (NOTE: [Derivatives of rule-based
    attributions]). Detached there, a parameter concatenated beside the input of a z-box layer
    lost its whole derivative (1.0e-3 off where it was 1.0e-3), and a model using the attention
    weights of an ``nn.MultiheadAttention`` under LRP 3% of it."""
    state = RULED_VJP.get()
    if state is None:
        return t.detach()
    with torch._C.DisableTorchFunction():  # the clone inside is no data movement to replay
        return _Held.apply(t, state)


class _Held(torch.autograd.Function):
    """The identity, with no gradient while ``state`` is armed (`held`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(t, state):
        return t.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.state = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return (None if ctx.state.armed else grad), None

    @staticmethod
    def jvp(ctx, tangent, _):
        return tangent


def first_order_only(method: str, *, allowed: int = 0) -> None:
    """Refuses a rule-based computation that an outer transform would differentiate.

    NOTE: [Rule-based attributions are first-order]
    A rule replaces an op's derivative: autograd and torch.func know a ruled op only through the
    rule's backward. An attribution computed through rules is right, but differentiating it again
    (``grad``, ``vjp``, ``jacrev``, ``jvp`` or ``jacfwd`` around it) sends the outer derivative
    through every ruled op by its rule too, not by the op's true derivative, which is wrong as soon
    as a ruled op's output feeds a later nonlinearity (guided backprop through a tanh measured
    -19.1 where finite differences give -8.94; DeepLift and LRP are off likewise, and so are
    parameter gradients). The rule-based methods (guided backprop, deconvolution, guided
    Grad-CAM, LRP, layer LRP, DeepLift and DeepLift SHAP with their layer and neuron forms) tell
    the two apart by time and are differentiable (NOTE: [Derivatives of rule-based
    attributions]). What stays refused is a gradient through ``rules(f)`` itself under more
    transforms than it takes: it allows one level (the gradient that follows the rules) and
    refuses a second, except inside a method's own VJP; it looks at entry, before its VJP (itself a
    ``vjp`` transform inside another transform, NOTE: [Two differentiation backends]); ``vmap``
    alone leaves first-order results right, and is allowed.
    Plain autograd is refused alike where a rule's eager backward sees ``create_graph=True``
    (`refuse_second_backward`). The gradient and perturbation methods stay differentiable (NOTE:
    [Detached results])."""
    state = RULED_VJP.get()
    if state is not None and state.armed:  # inside a method's own VJP (NOTE: [Derivatives of rule-based attributions])
        allowed += state.levels
    if differentiating_levels() - _CONSTANT_LEVELS.get() > allowed:
        raise NotImplementedError(
            f"{method} cannot run inside a torch.func transform that differentiates it (grad, vjp, jacrev, jvp, "
            "jacfwd): its rules replace the derivatives of ops, so derivatives of its attributions would follow "
            "the rules too and be wrong. Its attributions are first-order only (vmap is fine). Differentiable: "
            "guided_backprop, deconvolution, guided_grad_cam, lrp, layer_lrp, deep_lift, deep_lift_shap (and their layer "
            "and neuron forms), the gradient methods (xattr.grad, integrated_gradients, ...) and the perturbation methods"
        )


def refuse_second_backward() -> None:
    """Refuses a rule's eager backward run with ``create_graph=True``: plain autograd taking a
    derivative of a gradient through `rules` (``torch.autograd.grad(..., create_graph=True)``, then
    a second backward), which would differentiate the ruled ops by their rules again (NOTE:
    [Rule-based attributions are first-order]; guided backprop through a tanh measured 56% off
    finite differences). For the backward pieces used outside torch.func transforms only (the
    node hooks of `graph_hooks`): there autograd runs a backward with grad mode on exactly when
    it records a graph of it."""
    if torch.is_grad_enabled():
        raise NotImplementedError(
            "a backward pass through xattr.rules with create_graph=True: the rules replace the derivatives of ops, so "
            "a derivative of these gradients would follow the rules too and be wrong. Rule-based gradients are "
            "first-order only under plain autograd; differentiate the gradient methods (xattr.grad, integrated_gradients, ...) "
            "instead, or guided_backprop, deconvolution, guided_grad_cam, lrp, layer_lrp, deep_lift or deep_lift_shap "
            "inside torch.func.grad, vjp, jacrev or jacfwd (docs/rules.md, Derivatives of attributions)"
        )


def refuse_checkpoint(rule, op: ops.Op) -> None:
    """NOTE: [Rules and activation checkpointing]
    ``torch.utils.checkpoint(fn, use_reentrant=False)`` keeps none of fn's saved tensors: a
    saved-tensor hook drops them in the forward, and the backward recomputes them by running fn
    again, outside the rules' mode. An op run through a rule's `_Apply*` Function saves what the
    rule's forward computed (DeepLift's multipliers, LRP's ratios), which the plain recomputation
    does not produce: its backward would read the plain ops' tensors in their place (DeepLift
    measured off by 6e-2 with no error) or the checkpoint's own check fails. So such an op under
    a checkpoint is refused. Rules put on the graph instead (NOTE: [Rules as backward hooks],
    [Rules as output hooks], [Rules as graph hooks]) keep the plain op's node and saved tensors,
    which the recomputation reproduces: guided backprop and LRP-epsilon at layers stay right
    (tested). With ``use_reentrant=True`` torch itself refuses ``torch.autograd.grad`` and
    torch.func transforms, for every method."""
    if in_checkpoint():
        raise RuntimeError(
            f"xattr.rules: {type(rule).__name__} at a {op.kind!r} op inside torch.utils.checkpoint: the checkpoint "
            "recomputes the forward in the backward pass, outside the rules, so the rule's saved values would be "
            "replaced by the plain op's and the attribution would be wrong. Run the model without activation "
            "checkpointing for rule-based attributions (e.g. checkpoint only in training mode)"
        )


def in_checkpoint() -> bool:
    """Whether this forward runs inside ``torch.utils.checkpoint(..., use_reentrant=False)``,
    whose backward recomputes it (NOTE: [Rules and activation checkpointing])."""
    hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    return hooks is not None and getattr(hooks[0], "__module__", None) == "torch.utils.checkpoint"


def eager_compiled():
    """A context in which torch.compile'd code runs as its Python source (NOTE: [Rules on
    compiled models]). Nothing where nothing can have been compiled (dynamo never imported), inside
    a compiled region, or on a torch without ``torch.compiler.set_stance`` (before 2.6)."""
    if "torch._dynamo" not in sys.modules or torch.compiler.is_compiling() or not hasattr(torch.compiler, "set_stance"):
        return contextlib.nullcontext()
    try:
        return torch.compiler.set_stance("force_eager")  # ~25 us
    except RuntimeError:  # run by a compiled function, past a graph break: dynamo's own stance holds
        return contextlib.nullcontext()


def calls_compiled(f: Callable) -> bool:
    """Whether ``f`` is, wraps or holds a torch.compile'd function or module.

    NOTE: [Rules on compiled models]
    A model compiled by ``torch.compile`` runs as one graph that dynamo traced before any rule
    was asked for: the graph walk (NOTE: [Rules as graph hooks]) meets one opaque
    ``CompiledFunctionBackward`` node instead of ReLU nodes, and the torch function mode reaches
    the ops only where dynamo retraces with it, which breaks on in-place ReLUs (wrong guided
    backprop) and on the deconvolution rule (dynamo refuses its Function). So a ruled call runs
    compiled code as its Python source (``torch.compiler.set_stance("force_eager")``, ~25 us a
    call): the numbers of the eager model, without the compiled speed. Found here are compiled
    modules anywhere in the model's module tree, and compiled functions and modules along the
    wrapper chain and in the closures and globals of the user's functions (`_reachable`). One
    hidden elsewhere (in a container) is found by the graph walk when it meets the opaque node,
    and the call is run again under the mode, which runs compiled code eagerly whenever dynamo
    has been imported (it cannot see a compiled region coming). Rules inside a compiled attribution
    function (``torch.compile(xattr.deep_lift(f))``) are traced by dynamo as they are."""
    return any(hasattr(obj, "_torchdynamo_orig_callable")  # a compiled function
               or (type(obj).__name__ == "OptimizedModule" and hasattr(obj, "_orig_mod")) for obj in _reachable(f))


def _reachable(f: Callable):
    """``f`` and what it is seen to call: the modules of module trees, and along wrapper chains
    (``.model``, ``__wrapped__``, bound methods, partials) the values a Python function closes
    over and the module-level names it reads, for functions that are not torch's or xattr's."""
    todo, seen = [f], set()
    while todo:
        obj = todo.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, nn.Module):
            if not isinstance(obj, torch.jit.ScriptModule):
                todo.extend(c for c in obj._modules.values() if c is not None)
            continue
        if isinstance(obj, functools.partial):
            todo.append(obj.func)
        if isinstance(obj, types.FunctionType) and (obj.__module__ or "").split(".")[0] not in ("torch", "xattr"):
            todo.extend(c.cell_contents for c in obj.__closure__ or () if _callable_cell(c))
            held = map(obj.__globals__.get, obj.__code__.co_names)
            todo.extend(v for v in held if isinstance(v, (nn.Module, types.FunctionType, torch.jit.ScriptFunction)))
        todo.extend(getattr(obj, attr, None) for attr in ("model", "__wrapped__", "__self__"))


def _callable_cell(cell) -> bool:
    try:
        return callable(cell.cell_contents) and not isinstance(cell.cell_contents, type)
    except ValueError:  # an empty cell
        return False


def calls_jit(f: Callable):
    """The TorchScript module or function that ``f`` is, wraps or holds (`_reachable`), or None.

    NOTE: [Rules on TorchScript models]
    A model from ``torch.jit.script`` or ``torch.jit.trace`` runs its ops in the TorchScript
    interpreter: the torch function mode never sees them (NOTE: [Intercepting operations]), and
    once the executor has optimised the graph, autograd holds one opaque
    ``DifferentiableGraphBackward`` node for it where the graph walk (NOTE: [Rules as graph
    hooks]) would look for ReLU nodes. Rules could only be skipped there, and the attribution
    would silently be the plain gradient (deconvolution, DeepLift, LRP measured exactly
    ``x * grad``). So a ruled function refuses a TorchScript module anywhere in its module tree
    or along its wrapper chain and closures; one the static search misses (held in a container)
    is refused by the graph walk when it meets the optimised node, but not under the torch
    function mode, which walks no graph (DeepLift, LRP: a walk per call to look would cost every
    model, for a model hidden on purpose). Forward hooks do not run inside TorchScript either, so ``at_layer``
    refuses its layers (layers.py). The eager module the jit model was made from works."""
    for obj in _reachable(f):
        if isinstance(obj, (torch.jit.ScriptModule, torch.jit.ScriptFunction, torch._C.ScriptMethod)):
            return obj
    return None


def jit_error(found: str, what: str) -> TypeError:
    """The error for TorchScript (``found``: what, in words) met by ``what`` (NOTE: [Rules on
    TorchScript models])."""
    return TypeError(
        f"{what} cannot see inside TorchScript ({found}, from torch.jit.script or torch.jit.trace): "
        "it runs its ops and submodules in the TorchScript interpreter, out of reach of xattr's rules and forward "
        "hooks, so the attribution would silently be wrong. Pass the eager nn.Module the jit model was made from "
        "(and its layers): gradient and perturbation methods also work on the jit model itself"
    )


def refuse_jit(f: Callable) -> None:
    """Refuses rules on a function that holds TorchScript (NOTE: [Rules on TorchScript models])."""
    found = calls_jit(f)
    if found is not None:
        raise jit_error(type(found).__name__, "xattr.rules (guided backprop, deconvolution, DeepLift, LRP and every rule-based method)")


# NOTE: [Ops inside a custom autograd.Function]
# A model may compute part of its forward in a ``torch.autograd.Function`` of its own (BLOOM's
# GELU, straight-through estimators, fused kernels written in Python). The mode sees the ops of
# the Function's forward, but they run with gradients off, and the gradient there comes from the
# Function's own backward: no rule can act on them. Until now such ops were ruled silently to no
# effect, and DeepLift's sum missed (BLOOM 3.4e-3 of the change; a GELU Function in a two-layer
# MLP 0.13 where f(x) - f(0) was 0.17) and guided backprop left the ReLUs inside unguided. So where an op a rule
# claims runs with gradients off inside a call that records them, the Python frames above it are
# searched for ``Function.apply`` (frames only: no torch state says "inside a Function's
# forward"), and a Function that is not xattr's own gets a RuleBypassedWarning, once per call
# and Function class. A ``torch.no_grad()`` block in the model is no Function and is not warned
# about: no gradient passes there at all (NOTE: [No gradient path]). The graph-hook path
# (NOTE: [Rules as graph hooks]) never sees those ops: a custom Function's node in the graph
# sends the call to the mode instead (graph_hooks.py), which then finds them; a model holding
# one so pays a second forward under guided backprop and LRP-epsilon, whatever is inside it, on
# the first call of an attribution function (its later calls go to the mode at once).
class RuleBypassedWarning(UserWarning):
    """An op that a rule claims runs inside a model's own ``torch.autograd.Function``, whose
    backward, not the rule, gives the gradient there.

    Example:
      >>> warnings.simplefilter("error", xattr.RuleBypassedWarning)     # refuse a partly ruled gradient
      >>> relevance = xattr.lrp(xattr.target(model, 3))(x)
    """


_APPLY_CODE = torch.autograd.Function.apply.__func__.__code__
_FRAMES = 64  # how far up to look for Function.apply


def enclosing_function(skip: int = 2) -> tuple | None:
    """``(cls, frame)``: the ``torch.autograd.Function`` subclass whose ``apply`` the caller's
    caller runs inside, and the frame that called ``apply`` (the model's line), if one that is
    not xattr's own is found in the nearest ``_FRAMES`` Python frames (NOTE: [Ops inside a
    custom autograd.Function])."""
    frame = sys._getframe(skip)
    for _ in range(_FRAMES):
        if frame is None:
            return None
        if frame.f_code is _APPLY_CODE:
            cls = frame.f_locals.get("cls")
            if isinstance(cls, type) and not own_function(cls):
                return cls, frame.f_back
        frame = frame.f_back
    return None


def warn_bypassed(cls: type, kind: str, frame) -> None:
    """The RuleBypassedWarning, shown at the model's line that calls the Function (``frame``; where
    it is unknown, at the user's line)."""
    warn(bypassed_warning(cls, kind), RuleBypassedWarning, at=frame)


def own_function(cls: type) -> bool:
    """Whether an autograd.Function class is xattr's (its rules' Functions run ops with grad off
    by design) or torch's reentrant checkpoint (which torch refuses under every xattr method)."""
    return (getattr(cls, "__module__", "") or "").startswith(("xattr.", "torch.utils.checkpoint"))


def bypassed_warning(cls: type, kind: str) -> str:
    return (
        f"xattr.rules: a {kind!r} op that a rule claims runs inside the forward of {cls.__module__}.{cls.__qualname__}, "
        "a torch.autograd.Function of the model's, where gradients are off and the Function's own backward gives the "
        "gradient: the rule cannot act there, so the attributions do not follow it at that op (DeepLift's "
        "summation-to-delta and LRP's conservation need not hold). To have it ruled, write that computation with plain "
        "torch ops in the model (Hugging Face BLOOM: set each block's mlp.gelu_impl = nn.GELU(approximate='tanh'), the "
        "same function)"
    )
