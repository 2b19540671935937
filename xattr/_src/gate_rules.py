"""The LRP rule for products of two activations (NOTE: [Products of two activations] in ops.py).

In gradient form (NOTE: [LRP in gradient form] in lrp_rules.py) the ordinary backward of
``z = a * b`` gives ``R_a = a * (g b) = R_z`` and ``R_b = R_z`` (summed over what b broadcasts
over): both factors receive the product's whole relevance, so it is counted twice, and whatever
the gate's branch does to it (a sigmoid passing ``R`` on as ``g * s / u``, large where its input
u is near 0) adds to the input's relevance. On MobileNetV3-small and EfficientNet-B0 without
biases, where LRP-0 should conserve exactly, ``sum(R) - f(x)`` was 1e3 to 1e15 times ``f(x)``.
"""

# NOTE: [A divisor held constant]
# ``z = a / b`` with both computed from the input is, to LRP, a normaliser: ``F.normalize`` (the
# unit-length sentence embedding of sentence-transformers), a layer or RMS norm written by hand
# (the centred input over its standard deviation). Its ordinary gradient makes a function of
# degree 0 in its input (``x / ||x||``) pass on no relevance at all: by Euler's theorem
# ``sum_i x_i d(x / ||x||)/dx_i = 0``, so on a bias-free all-MiniLM-L6-v2 explained at a component
# of its normalised mean-pooled embedding, ``sum(R)`` was 1e-14 where ``f(x)`` was 0.01-0.07.
# Held constant as the norms' scales are (`FixedStd`, the LN-rule of Ali et al. 2022), the
# divisor takes no relevance and the numerator all of it: ``g_a = g / b``, ``R_a = a g / b = R_z``.

from __future__ import annotations

import torch

from .rule_base import Rule, Saved, pullback

# NOTE: [Matrix products share relevance]
# ``z = a @ b`` (or an einsum) of activations is linear in each factor, so its ordinary gradient
# hands each factor the whole relevance: ``sum(a * (g @ b.T)) = sum(b * (a.T @ g)) = sum(g * z)``,
# counted twice (k times for k factors computed from the input; parameters among an einsum's
# operands are no players). Scaled by 1/k the factors share it evenly and the sum conserves: the
# uniform rule of AttnLRP (Achtibat et al. 2024), as `FixedGate` splits an elementwise product of
# equal shapes. Mamba's selective scan (Hugging Face's slow path: ``ssm_state @ C`` per step)
# misses conservation by 7.2e-3 of f(x) while its products keep their gradient (bias-free, float64
# throughout), and conserves with ``{torch.matmul: FixedGate()}`` added to `lrp_rules`
# (tests/test_lrp_matmul.py, tests/test_lrp_hf_zoo_more.py). Not the default: attention written
# by hand, ``softmax(q @ k.T) @ v`` with softmax mapped to `Block` (the weights held, signal-take-
# all), conserves only where ``@ v`` hands v the whole relevance, as its gradient does; shared,
# the weights' half would stop at the softmax (2e-2 of f(x) lost on XLNet, 25 of 39 of the zoo's
# bias-free checks).


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
    factor, and held constant whatever the shapes: the LSTM rule of Arras et al. 2017; so is the
    gate of an activation written out as its input times a gate computed from it alone (``0.5 * x
    * (1 + tanh(...))``, Hugging Face's GELUs: NOTE: [Activations written out] in
    written_activations.py), which passes the activation's relevance on whole, as `Pass`. A quotient
    ``z = a / b`` of two activations (kind ``"quotient"``: ``F.normalize``, a norm written by hand)
    is ``a`` times the gate ``1 / b``: the divisor is held constant, ``R_a = R_z`` (NOTE: [A
    divisor held constant]). All conserve relevance. `lrp_rules` maps ``torch.mul`` and
    ``torch.div`` to it. Keyed to ``torch.matmul`` or ``torch.einsum`` (not by default), matrix
    products and einsum of activations (a selective scan's ``state @ C``, a bilinear layer written
    by hand) share their relevance evenly among their k factors computed from the input (NOTE:
    [Matrix products share relevance]).

    ``gate=0`` or ``gate=1`` names the factor of a two-factor product that is held whatever the
    shapes (the other takes all the relevance): keyed by a gated MLP's class, ``{LlamaMLP:
    FixedGate(gate=0)}`` holds SwiGLU's ``act(gate_proj(x))`` and hands ``up_proj(x)`` the
    relevance, as LXT's CP-LRP does (its quotients and matrix products are unchanged).

    Example:
      >>> composite = {**xattr.rule.lrp_rules(), torch.mul: xattr.rule.FixedGate()}
      >>> relevance = xattr.lrp(xattr.target(model, 1), composite=composite)(x)      # like x
    """

    kinds = frozenset({"product", "quotient", "matmul", "einsum"})
    keep_inputs = True

    def __init__(self, gate: int | None = None):
        if gate is not None and (type(gate) is not int or gate not in (0, 1)):
            raise ValueError(f"gate must be None (by shapes), 0 (the first factor held) or 1 (the second), got {gate!r}")
        self.gate = gate

    def __repr__(self) -> str:
        return "FixedGate()" if self.gate is None else f"FixedGate(gate={self.gate})"

    def backward(self, op, saved: Saved, grad):
        if op.kind in ("matmul", "einsum"):  # NOTE: [Matrix products share relevance]
            players = op.options.get("players", range(len(saved.inputs)))
            share = grad * (1.0 / len(players))
            if op.kind == "matmul" and min(t.ndim for t in saved.inputs) >= 2 and torch._C._functorch.maybe_current_level() is None:
                return _matmul_vjp(*saved.inputs, share)
            grads = pullback(op.fn, *saved.inputs)[1](share)
            return tuple(g if i in players else None for i, g in enumerate(grads))
        a, b = saved.inputs
        if op.kind == "quotient":  # NOTE: [A divisor held constant]
            return ((grad / b).sum_to_size(a.shape), None)
        gate = op.options.get("gate") if self.gate is None else self.gate
        if gate == 0:  # a recurrent layer's gate (ops._gated), or x's in gate(x) * x
            return (None, (grad * a).sum_to_size(b.shape))
        if gate == 1:  # x * gate(x): NOTE: [Activations written out] in written_activations.py
            return ((grad * b).sum_to_size(a.shape), None)
        a_gate, b_gate = a.shape != grad.shape, b.shape != grad.shape
        if a_gate and not b_gate:
            return (None, grad * a)
        if b_gate and not a_gate:
            return (grad * b, None)
        half = grad * 0.5
        return ((half * b).sum_to_size(a.shape), (half * a).sum_to_size(b.shape))


def _matmul_vjp(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> tuple:
    """The VJP of ``a @ b`` (or ``torch.bmm``) for factors of 2 or more dims, batch dims
    broadcast: ``g @ b^T`` and ``a^T @ g``, each summed to its factor's shape. Two products, where
    `pullback` would clone both factors and run the product again first (the AttnLRP benchmark on
    a 4-layer Llama: ~12% of the call)."""
    return torch.matmul(g, b.transpose(-1, -2)).sum_to_size(a.shape), torch.matmul(a.transpose(-1, -2), g).sum_to_size(b.shape)
