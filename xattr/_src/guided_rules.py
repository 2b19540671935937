"""Backward rules for guided backprop and deconvolution at ReLUs, and at the clamps and thresholds
that are ReLUs, as `Rule`s."""

from __future__ import annotations

import torch

from .graph_hooks import accepts_relus
from .rule_base import Rule, Saved

# NOTE: [Clamps that are ReLUs]
# ``x.clamp(min=0)``, ``torch.clamp(x, 0)``, ``x.clamp_min(0)``, their in-place forms and
# ``torch.maximum(x, zeros)`` compute ReLU's values; ops.py parses them as kind "clamp" (NOTE: [Clamp
# as an activation]). `Guided` and `Deconv` take them as ReLUs (`graph_hooks.accepts_relus`), with
# ReLU's backward: ``[x > 0]`` even where torch's own gradient differs at the tie ``x == 0`` (clamp
# passes the whole gradient there, ``maximum`` half), so every spelling gives the relu spelling's
# numbers. A clamp with an upper bound (``clamp(0, 6)``) or a nonzero number as lower bound is not a
# ReLU: the rules do not claim it, and it keeps its ordinary gradient. A tensor lower bound
# (``torch.maximum(x, t)``, ``x.clamp(min=t)``, no upper bound) is decided per element without
# reading it (no host sync; vmap): the elements where it is 0 are ReLUs, the others keep the clamp's
# gradient ``g * [x >= t]`` (at an exact tie ``x == t != 0`` torch's ``maximum`` passes ``g / 2``).
# Outside transforms guided backprop's graph walk hooks the nodes of number-bound ReLU clamps
# (``ClampBackward1``, ``ClampMinBackward0``: bounds read from the node) with ReLU's mask taken from
# the node's saved input; a node of a tensor-bound clamp (``ClampBackward0``, ``ClampMinBackward1``,
# ``MaximumBackward0``) sends the call back under the mode (NOTE: [Rules as graph hooks]). Under the
# mode a clamp always runs through the rule's Function, not a hook on its node (`rule_apply._as_hook`):
# ``torch.maximum(zeros, x)``'s node takes x second and halves the gradient at ties, a tensor
# bound's node gives the bound a gradient too, and neither node holds ReLU's mask.


def _relu_clamp_bound(op, saved: Saved):
    """The tensor lower bound of a clamp that is a ReLU where that bound is 0 (NOTE: [Clamps that
    are ReLUs]); None at a ReLU and at a clamp whose lower bound is the number 0."""
    if op.kind != "clamp":
        return None
    if op.options["bounds"]:  # under torch.func transforms: the bound is the op's second tensor
        return saved.inputs[1]
    lo = op.options["min"]
    return lo if isinstance(lo, torch.Tensor) else None


def _keeps_relu_clamp_input(op) -> bool:
    """Whether the backward at this op reads its inputs: a clamp against a tensor bound, whose
    elements that are not ReLUs keep the clamp's gradient ``g * [x >= bound]``."""
    return op.kind == "clamp" and (bool(op.options["bounds"]) or isinstance(op.options.get("min"), torch.Tensor))


def _where_relu(ruled: torch.Tensor, grad: torch.Tensor, op, saved: Saved) -> tuple:
    """The rule's gradient ``ruled`` at the elements that are ReLUs, the clamp's own elsewhere; one
    gradient per tensor of the op (a tensor bound gets none)."""
    bound = _relu_clamp_bound(op, saved)
    if bound is None:
        return (ruled,)
    x = saved.inputs[0]
    return (torch.where(bound == 0, ruled, grad * (x >= bound).to(grad.dtype)),) + (None,) * (len(saved.inputs) - 1)


class Guided(Rule):
    """Guided backpropagation at ReLU: only positive gradients pass, through active units.

    ``dx = max(g, 0) * [x > 0]`` (Springenberg et al. 2015). Also at a clamp that is a ReLU
    (``x.clamp(min=0)``, ``torch.maximum(x, zeros)``: NOTE: [Clamps that are ReLUs]), with ReLU's
    mask; a clamp with an upper bound or a nonzero lower bound keeps its ordinary gradient. And at
    ``F.threshold(x, 0, 0)`` (``nn.Threshold(0, 0)``), also a ReLU; other thresholds keep theirs.

    Example:
      >>> g = xattr.grad(xattr.target(xattr.rules(model, {F.relu: xattr.rule.Guided()}), 3))(x)  # = guided_backprop
    """

    kinds = frozenset({"relu", "clamp", "threshold"})
    accepts = accepts_relus
    keep_output = True
    shares_reference = True  # pairs no rows

    def keeps(self, op):
        return _keeps_relu_clamp_input(op)

    def backward(self, op, saved: Saved, grad):
        return _where_relu(torch.ops.aten.threshold_backward(grad, saved.output, 0).clamp_min_(0), grad, op, saved)

    def input_grad(self, op, grad):  # grad: the ReLU's own threshold_backward, as in `backward`
        return grad.clamp_min_(0)


class Deconv(Rule):
    """Deconvolution at ReLU: the ReLU is applied to the gradient instead, ``dx = max(g, 0)``.

    Zeiler & Fergus 2014. Also at a clamp or a threshold that is a ReLU, like `Guided`.

    Example:
      >>> g = xattr.grad(xattr.target(xattr.rules(model, {F.relu: xattr.rule.Deconv()}), 3))(x)  # = deconvolution
    """

    kinds = frozenset({"relu", "clamp", "threshold"})
    accepts = accepts_relus
    shares_reference = True  # pairs no rows

    def keeps(self, op):
        return _keeps_relu_clamp_input(op)

    def backward(self, op, saved: Saved, grad):
        return _where_relu(grad.clamp(min=0), grad, op, saved)
