"""The generalized gamma rule: LRP-gamma for inputs and outputs of either sign.

NOTE: [Gamma for signed inputs]
LRP-gamma (Montavon et al. 2019, `Gamma`) shares an output's relevance in proportion to
``x_i (w_ij + gamma w_ij+)``: it favours positive contributions, which is the aim where inputs
are ReLU outputs (x >= 0) and the output is positive. Where inputs are signed (the layer-norm
outputs every linear layer of a transformer reads, normalised pixels) a term ``x_i gamma w_ij+``
with x_i < 0 *weakens* the output, and the modified sum ``z'_j`` can shrink towards 0 or change
sign while ``z_j`` does not: the ratio ``z_j / z'_j`` is then unbounded. One bias-free
``nn.Linear(16, 1)`` on 1000 standard normal rows: 32 of the 1000 denominators had the opposite
sign to the output, and the largest input relevance reached 154 times ``|f(x)|``; on a vision
transformer, ``Gamma`` at every linear layer ranked pixels close to random (deletion area 0.334,
random 0.371; docs/lrp.md, "Vision transformers").

The generalized rule (Andeol et al. 2021; zennit's and so LXT's gamma) amplifies the
contributions that share the output's sign, whatever the input's sign:

    z'_j = sum_i x_i (w_ij + gamma w_ij+) [x_i z_j >= 0] + x_i (w_ij + gamma w_ij-) [x_i z_j < 0]
           + b_j + gamma b_j+   (z_j >= 0; with z_j < 0: gamma b_j-)

and ``R_i = sum_j x_i w'_ij / z'_j R_j``. Every term of ``z'_j - z_j`` has ``z_j``'s sign, so
``z'_j`` has it too and ``|z'_j| >= |z_j|``: the ratio lies in [0, 1] (the same linear model as
above: at most 3.2 times ``|f(x)|``). On inputs and outputs >= 0 it is `Gamma`. In gradient
form, with ``s = g z / stab(z')`` split by the output's sign into ``s+`` and ``s-``, ``up = w +
gamma w+`` and ``down = w + gamma w-``:

    g_x = [x >= 0] (up^T s+ + down^T s-) + [x < 0] (down^T s+ + up^T s-)

four transposed products (two calls of `lrp_math.transposes`), two for an input known to be
non-negative.
"""

from __future__ import annotations

import torch

from .deeplift_rules import checked_eps
from .lrp_math import _added, _eager, non_negative, stabilize, transposes
from .rule_base import Rule, Saved


class GeneralizedGamma(Rule):
    """LRP-gamma for signed inputs (Andeol et al. 2021): contributions of the output's sign
    amplified by ``1 + gamma``, at linear and conv layers (NOTE: [Gamma for signed inputs]).

    Equal to `Gamma` where inputs and outputs are non-negative; where they are not, `Gamma`'s
    ``w + gamma w+`` can cancel the output it divides by. ``eps`` stabilises ``z'`` as in
    `Epsilon`. Biases: ``b + gamma b+`` for outputs >= 0, ``b + gamma b-`` below.

    Example:
      >>> composite = {**xattr.rule.lrp_rules(), nn.Linear: xattr.rule.GeneralizedGamma(0.25)}
      >>> relevance = xattr.lrp(xattr.target(model, 3), composite=composite)(x)      # like x
    """

    kinds = frozenset({"linear", "conv"})
    keep_inputs = True

    def __init__(self, gamma: float = 0.25, eps: float = 1e-9):
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0:
            raise ValueError(f"GeneralizedGamma: gamma must be a number >= 0, got {gamma!r}")
        self.gamma, self.eps = float(gamma), checked_eps(eps, "GeneralizedGamma")

    def __repr__(self) -> str:
        return f"GeneralizedGamma({self.gamma}, eps={self.eps})"

    def _weights(self, w: torch.Tensor) -> tuple:
        """(up, down): the weights of contributions that share the output's sign, and of those that do not."""
        return w + self.gamma * w.clamp(min=0), w + self.gamma * w.clamp(max=0)

    def forward(self, op, x, w, b=None):
        z = op.fn(x, w, b)
        up, down = self._weights(w)
        b_up, b_down = (None, None) if b is None else (b + self.gamma * b.clamp(min=0), b + self.gamma * b.clamp(max=0))
        signed = not non_negative(x)
        if signed:
            xp, xn = x.clamp(min=0), x.clamp(max=0)
            z_pos = _added(op.fn(xp, up, b_up), op.fn(xn, down, None))  # z' where z >= 0
            z_neg = _added(op.fn(xp, down, b_down), op.fn(xn, up, None))  # z' where z < 0
        else:  # x- = 0: its terms vanish
            z_pos, z_neg = op.fn(x, up, b_up), op.fn(x, down, b_down)
        pos = (z >= 0).to(z.dtype)
        ratio = z / stabilize(torch.lerp(z_neg, z_pos, pos), self.eps)
        # the backward reads no context (NOTE: [Backward callbacks read no context] in rule_base.py):
        # an empty tensor after the ratio and the sign says the input has negative entries
        return z, (ratio, pos) + ((x.new_empty(0),) if signed else ())

    def backward(self, op, saved: Saved, grad):
        x, w = saved.inputs[:2]
        ratio, pos, *signed = saved.extras
        up, down = self._weights(w)
        s = grad * ratio
        sp = s * pos
        sn = s - sp
        up_p, down_p = transposes(op, x, (up, down), sp)
        up_n, down_n = transposes(op, x, (up, down), sn)
        same, different = up_p + down_n, down_p + up_n  # for x >= 0 and for x < 0
        if not signed:  # x >= 0 throughout
            g = same
        elif _eager():
            g = torch.lerp(different, same, (x >= 0).to(same.dtype))  # lerp picks exactly at weights 0 and 1
        else:
            on = (x >= 0).to(same.dtype)
            g = on * same + (1 - on) * different
        return (g,) + (None,) * (len(saved.inputs) - 1)
