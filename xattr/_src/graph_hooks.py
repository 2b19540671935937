"""Rules put on the autograd graph after a plain call, without the torch function mode.

NOTE: [Rules as graph hooks]
A mapping whose every rule is a hook rule (NOTE: [Rules as backward hooks] in rule_apply.py) for op
kinds that leave one recognisable node in the autograd graph (ReLU: ``ReluBackward0``, whichever
spelling called it), keyed by kind alone, needs nothing from the forward. Outside torch.func
transforms `rules.Ruled` then calls f as it is, with no torch function mode, and walks the graph
of its outputs afterwards, putting ``input_grad`` on every such node, as the mode would have
during the call (guided backprop: a plain forward, then about 25 Python steps on the CPU
benchmark's CNN; 3-5% faster than the mode, which dispatches every torch call of the model in
Python). ``input_grad`` then receives the kind's plain call (``torch.relu``, no options): the
graph does not say how the op was spelled, nor whether it ran in place. The walk descends only
into nodes made during the call (autograd numbers nodes in the order they are made, per thread),
so a tensor that arrives with a history keeps its own gradients, as under the mode. An in-place
op on a view hides its node inside a ``CopySlices`` node, and a model compiled by
``torch.compile`` leaves one ``CompiledFunctionBackward`` node for a whole compiled region; when
the walk meets either it cannot tell what is inside, so the call is run again under the mode
(its first graph is dropped), which dynamo traces into the compiled graph. That `rules(f, ...)`
then sends its later calls to the mode at once: f's graph hid ops once, and the mode is right
for any graph, so a model holding a custom Function or an in-place op on a view pays the second
forward on its first call only (a new `rules`, or a new attribution function, walks again). A ReLU
inside one fused torch call (``nn.RNN(nonlinearity="relu")``: ``torch.rnn_relu``) is not seen by
the mode, and on a GPU (cuDNN) leaves no ReLU node either, but on CPU it leaves ReLU nodes in
the graph: models holding one take the mode, so the fused ReLUs keep their gradient everywhere.
TorchScript's ``DifferentiableGraphBackward`` node hides ops the mode cannot see either: it is
refused (NOTE: [Rules on TorchScript models] in rule_limits.py). Clamps that are ReLUs (NOTE:
[Clamps that are ReLUs] in guided_rules.py) are hooked where the node's saved bounds say so,
or send the call back under the mode where a bound is a tensor.
"""

from __future__ import annotations

import functools

import torch

from . import ops
from . import tree as T
from .rule_limits import jit_error, own_function, refuse_second_backward

CUSTOM_NODE = torch.autograd.function.BackwardCFunction  # the node of a torch.autograd.Function's call
OPAQUE_NODES = frozenset({"CopySlices", "CompiledFunctionBackward"})  # may hide a ruled op
# kind: (plain call, node names). Clamp: only the nodes of a number-bound clamp, a ReLU where the
# node's bounds are min=0 and no max (`_relu_clamp_node`); for rules that accept only such clamps
GRAPH_NODES = {"relu": (torch.relu, frozenset({"ReluBackward0", "ReluBackward1"})),
               "clamp": (torch.clamp_min, frozenset({"ClampBackward1", "ClampMinBackward0"}))}
TENSOR_CLAMP_NODES = frozenset({"ClampBackward0", "ClampMinBackward1", "MaximumBackward0"})  # may hide a ReLU clamp
# F.threshold's nodes: a ReLU where threshold and value are 0, but the node does not save value
THRESHOLD_NODES = frozenset({"ThresholdBackward0", "ThresholdBackward1"})
UNDER_MODE = ("run the call again under the mode",)  # `by_node`'s entry for such nodes
def eager(fn):
    """``fn`` run without torch.compile (NOTE: [Rule callbacks run eagerly]).

    NOTE: [Rule callbacks run eagerly]
    The rules' backward callbacks (the Functions' ``backward`` in rule_apply.py, the hooks on
    nodes and outputs) run inside autograd's backward pass, which the methods start with
    ``torch.func.vjp``, so they receive torch.func's wrapped tensors. Under
    ``torch.compile(xattr.guided_backprop(f))`` dynamo breaks the graph around the rules and
    compiles every Python frame called past a break, these callbacks included, and inductor's
    compiled code reads the storage a wrapped tensor does not have: every rule-based method raised
    "Cannot access data pointer of Tensor that doesn't have storage" with the default backend
    (``aot_eager`` ran). So the callbacks are ``torch.compiler.disable``d: compiled attribution
    functions give the eager numbers (tests/test_compiled_inductor.py), at about 1.5 us per
    callback when nothing is compiled. The wrappers are made once, at import: the node hooks are
    ``functools.partial``s of them, since wrapping a closure per ruled call cost guided backprop
    2-3% on the benchmark CNN. On a GPU they run on autograd's device threads, where they must
    read no context variable (NOTE: [Backward callbacks read no context] in rule_base.py); a new
    node hook must be added to tests/device_threads.py, which runs them in an empty context.
    """
    return torch.compiler.disable(fn)


_PROBE = torch.zeros((), requires_grad=True)


def node_number() -> int:
    """The number autograd gives the next node made in this thread (a probe node's, plus one)."""
    return _PROBE.view(()).grad_fn._sequence_nr() + 1


def input_grad_hook(rule, light):
    """A hook for an op's autograd node that rewrites its input gradient with ``rule.input_grad``
    (``light``: the op without its tensors, which the hook must not hold)."""
    return functools.partial(_input_grad, rule, light)  # no closure made and wrapped per call


@eager  # NOTE: [Rule callbacks run eagerly]
def _input_grad(rule, light, grad_inputs, grad_outputs):
    refuse_second_backward()  # NOTE: [Rule-based attributions are first-order]
    return (_rewritten(rule, light, grad_inputs[0]),) + grad_inputs[1:]


def _rewritten(rule, light, grad: torch.Tensor) -> torch.Tensor:
    """``rule.input_grad(light, grad)``, refused unless it is a gradient of grad's shape: a hook that
    returns None leaves torch's node no gradient at all (an ``input_grad`` that only changed grad in
    place and forgot to return it gave zeros)."""
    if grad is None:  # no gradient flows into the op's input
        return grad
    got = rule.input_grad(light, grad)
    if not isinstance(got, torch.Tensor) or got.shape != grad.shape:
        what = f"shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else type(got).__name__
        raise TypeError(f"{rule!r}.input_grad must return the op's input gradient, a tensor of shape "
                        f"{tuple(grad.shape)} (grad itself after changing it in place); it returned {what}")
    return got


def accepts_relus(rule, op: ops.Op) -> bool:
    """`Rule.accepts` for rules of ReLUs (`Guided`, `Deconv`): ReLU ops, clamp ops that are ReLUs
    (`ops.relu_clamp`; NOTE: [Clamps that are ReLUs] in guided_rules.py) and thresholds that are
    (`ops.relu_threshold`: ``F.threshold(x, 0, 0)``), where the rule's kinds include "clamp" and
    "threshold". The graph walk knows the clamp test (`_relu_clamp_node`); a threshold's node
    sends the call back under the mode."""
    kind = op.kind
    return kind in rule.kinds and (kind == "relu" or ops.relu_clamp(op) or ops.relu_threshold(op))


def _relu_clamp_node(node) -> bool:
    """Whether a ``ClampBackward1``/``ClampMinBackward0`` node is a ReLU's: min 0 and no max."""
    lo = node._saved_min
    return isinstance(lo, (int, float)) and lo == 0 and getattr(node, "_saved_max", None) is None


def relu_clamp_hook(rule, light, x: torch.Tensor):
    """`input_grad_hook` for the node of a clamp that is a ReLU: the rule receives ReLU's gradient
    ``g * [x > 0]`` (x: the clamp's input, which the node saves), not the clamp's ``g * [x >= 0]``."""
    return functools.partial(_relu_clamp, rule, light, x)


@eager  # NOTE: [Rule callbacks run eagerly]
def _relu_clamp(rule, light, x, grad_inputs, grad_outputs):
    refuse_second_backward()  # NOTE: [Rule-based attributions are first-order]
    relu_grad = torch.ops.aten.threshold_backward(grad_inputs[0], x, 0)
    return (_rewritten(rule, light, relu_grad),) + grad_inputs[1:]


def hook_graph(out, by_node: dict, first: int) -> bool:
    """Puts each rule's ``input_grad`` on the nodes of its kind in the graph of ``out`` made since
    node number ``first`` (NOTE: [Rules as graph hooks]); False where an opaque node (CopySlices,
    a compiled region, a clamp against a tensor bound: ``by_node[name] is UNDER_MODE``)
    may hide one."""
    leaves = (out,) if isinstance(out, torch.Tensor) else T.leaves(out)
    todo = [t.grad_fn for t in leaves if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    todo = [node for node in todo if node._sequence_nr() >= first]
    seen = set()
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        if name in OPAQUE_NODES:
            return False
        if isinstance(node, CUSTOM_NODE) and not own_function(type(node)._forward_cls):
            return False  # ops inside a model's own Function: the mode finds them (NOTE: [Ops inside a custom autograd.Function])
        if name == "CppFunction" and "DifferentiableGraphBackward" in node.name():  # TorchScript's
            raise jit_error("a DifferentiableGraphBackward node in the autograd graph", "xattr.rules")  # NOTE: [Rules on TorchScript models]
        ruled = by_node.get(name)
        if ruled is not None:
            if ruled is UNDER_MODE:  # a tensor-bound clamp: a ReLU at some elements, maybe
                return False
            if ruled[1].kind == "relu":
                node.register_hook(input_grad_hook(*ruled))
            elif _relu_clamp_node(node):
                node.register_hook(relu_clamp_hook(*ruled, node._saved_self))
        todo.extend(n for n, _ in node.next_functions if n is not None and n._sequence_nr() >= first)
    return True
