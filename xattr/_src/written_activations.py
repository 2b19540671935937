"""Activations written out as a product of their input and a gate computed from it: `self_gated`,
which the parser of products (ops.py) asks of the two factors.

NOTE: [Activations written out]
Hugging Face writes the tanh-approximate GELU in Python (``NewGELUActivation``, ``gelu_new``, the
default of GPT-2, Phi and ALBERT; ``FastGELUActivation``; the erf GELU of ``gelu_python``):
``0.5 * x * (1 + tanh(c * (x + 0.044715 * x ** 3)))``, and QuickGELU as ``x * sigmoid(1.702 x)``.
Each is an elementwise activation of x, which LRP passes relevance through (`Pass`: ``R_x =
R_y``), but to the mode it is a product of two activations, whose factors of equal shape get half
the relevance each (`FixedGate`). The half sent into the gate ``1 + tanh(u)`` is split between the
constant 1 and ``tanh(u)`` as a sum splits it, so the constant takes its share as a bias would:
on bias-free GPT-2, Phi and ALBERT (tiny random configurations, float64, LRP-0) ``sum(R)`` missed
``f(x)`` by 0.02 (ALBERT) to 1.3 (GPT-2) times it, where the rest conserves to 1e-10
(tests/test_lrp_hf_zoo.py).

So a product is *self-gated* where one factor is a tensor x, or x times constants (the signal),
and the other is computed from x by elementwise operations alone (the gate): its autograd graph,
walked down from the gate, reaches nothing but x's node, parameters and constants through nodes
of elementwise ops (torch's own, and the ruled ops of elementwise kinds). The parser then names
the gate (``options["gate"]``), and `FixedGate` holds it constant, as it holds a recurrent layer's
gates: ``R_x = R_z``, the activation's relevance passed on whole, as `Pass` does. A product whose
factors come from x through a linear layer each (SwiGLU's ``silu(W_g x) * (W_u x)``), through a
split (GLU's halves) or a pooling (a squeeze-and-excitation gate) is no such product, and keeps
the rule it had. ``x * torch.sigmoid(x)``, whose halves both conserved, gets the same relevance
as before. The walk looks at a few dozen nodes at most; under torch.func transforms (no autograd
graph at the transform's level) it finds nothing and the factors get half each, as before.
"""

from __future__ import annotations

import torch

from . import ops  # ops imports this module: read at call time

# the autograd nodes of elementwise ops (each output element a function of the same element of
# each input); a ruled op leaves the rule's own node, which names its op (`_elementwise`)
_ELEMENTWISE = frozenset(
    f"{name}Backward{k}"
    for name in ("Add", "Sub", "Rsub", "Mul", "Div", "Pow", "Tanh", "Sigmoid", "Erf", "Erfc", "Exp", "Expm1", "Log", "Log1p",
                 "Neg", "Sqrt", "Rsqrt", "Reciprocal", "Abs", "Sin", "Cos", "Atan", "Silu", "Gelu", "Relu", "Softplus", "Elu",
                 "LeakyRelu", "Hardtanh", "Hardswish", "Hardsigmoid", "Mish", "Clamp", "ClampMin", "ClampMax", "ToCopy",
                 "Threshold", "Sign", "Square")
    for k in range(3)
)
_SCALING = frozenset(f"{name}Backward{k}" for name in ("Mul", "Div", "Neg", "ToCopy") for k in range(2))
_MOST = 64  # nodes walked from one factor at most


def self_gated(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """The index of the gate of ``a * b`` (NOTE: [Activations written out]): 1 where b is computed
    from a's source by elementwise ops alone and a is that source times constants, 0 the other
    way round, None for any other product."""
    for signal, gate, index in ((a, b, 1), (b, a, 0)):
        source = _scaled_from(signal)
        if source is not None and _only_from(gate, source):
            return index
    return None


def _scaled_from(t: torch.Tensor):
    """What t is, times constants: an output of a node, ``(node, index)`` (a node may have several:
    the halves of a chunk are two outputs of one node, and no function of each other), or a leaf
    t itself."""
    node, index = t.grad_fn, t.output_nr
    if node is None:
        return t  # a leaf: its consumers' graphs reach it through its AccumulateGrad node
    while type(node).__name__ in _SCALING:
        below = [(n, i) for n, i in node.next_functions if n is not None]
        if len(below) != 1:
            break
        node, index = below[0]
    return node, index


def _is(edge, source) -> bool:
    if isinstance(source, torch.Tensor):
        return getattr(edge[0], "variable", None) is source
    return edge[0] is source[0] and edge[1] == source[1]


def _only_from(t: torch.Tensor, source) -> bool:
    """Whether t's graph reaches `source` and otherwise only parameters, through elementwise nodes."""
    todo, seen, reached = [(t.grad_fn, t.output_nr)], set(), False
    while todo:
        edge = todo.pop()
        node = edge[0]
        if node is None:
            continue
        if _is(edge, source):
            reached = True
            continue
        if node in seen:
            continue
        seen.add(node)
        if len(seen) > _MOST:
            return False
        leaf = getattr(node, "variable", None)
        if leaf is not None:
            if not isinstance(leaf, torch.nn.Parameter):
                return False  # another input
            continue
        if not _elementwise(node):
            return False
        todo.extend(node.next_functions)
    return reached


def _elementwise(node) -> bool:
    if type(node).__name__ in _ELEMENTWISE:
        return True
    op = getattr(node, "op", None)  # a ruled op's node (rule_apply._save keeps its op)
    kind = getattr(op, "kind", None)
    return op is not None and (kind in ops.ELEMENTWISE or kind in ("product", "quotient"))
