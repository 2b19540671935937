"""The LRP rule for products of two activations (NOTE: [Products of two activations] in ops.py).

In gradient form (NOTE: [LRP in gradient form] in lrp_rules.py) the ordinary backward of
``z = a * b`` gives ``R_a = a * (g b) = R_z`` and ``R_b = R_z`` (summed over what b broadcasts
over): both factors receive the product's whole relevance, so it is counted twice, and whatever
the gate's branch does to it (a sigmoid passing ``R`` on as ``g * s / u``, large where its input
u is near 0) adds to the input's relevance. On MobileNetV3-small and EfficientNet-B0 without
biases, where LRP-0 should conserve exactly, ``sum(R) - f(x)`` was 1e3 to 1e15 times ``f(x)``.
"""

from __future__ import annotations

from .rule_base import Rule, Saved


class FixedGate(Rule):
    """A product of two activations: the gate held constant, or the relevance split in half.

    For ``z = a * b`` where one factor broadcasts over the other (its shape differs from the
    output's, the other's does not: a squeeze-and-excitation gate (B, C, 1, 1) times its feature
    map (B, C, H, W)), the broadcast factor is a gate, held constant: it receives no relevance and
    the other factor all of it, ``R_b = R_z`` (signal-take-all, Arras et al. 2017, as the attention
    weights of `FixedAttention` are held). Otherwise (equal shapes: GLU, SwiGLU, ``x *
    torch.sigmoid(x)``) each factor gets half, ``R_a = R_b = R_z / 2`` (the uniform rule of
    Achtibat et al. 2024, "AttnLRP"). The gates of a recurrent layer written out (`Unfused`:
    NOTE: [Recurrent layers written out] in written_recurrent.py) are named as such, the first
    factor, and held constant whatever the shapes: the LSTM rule of Arras et al. 2017. All three
    conserve relevance. `lrp_rules` maps ``torch.mul`` to it.
    """

    kinds = frozenset({"product"})
    keep_inputs = True

    def backward(self, op, saved: Saved, grad):
        a, b = saved.inputs
        if op.options.get("gate") == 0:  # a recurrent layer's gate (ops._gated)
            return (None, (grad * a).sum_to_size(b.shape))
        a_gate, b_gate = a.shape != grad.shape, b.shape != grad.shape
        if a_gate and not b_gate:
            return (None, grad * a)
        if b_gate and not a_gate:
            return (grad * b, None)
        half = grad * 0.5
        return ((half * b).sum_to_size(a.shape), (half * a).sum_to_size(b.shape))
