"""Layer-wise relevance propagation rules as `Rule`s, in gradient form.

NOTE: [LRP in gradient form]
xattr propagates a gradient-like signal g and reads relevance as ``R_t = t * g_t`` at any tensor
t (Montavon et al. 2019 show the LRP rules are such modified gradients). A layer z = op(x; W, b)
receives R_z = z * g_z and passes back

    g_x = rho-op^T ( R_z / stab(z') ),   z' = op(x; rho(W), rho(b)),   stab(z') = z' + eps sign(z'),

which is exactly R_x = x * g_x for the epsilon (rho = id), gamma (rho(w) = w + gamma w+) and
alpha-beta rules. What needs no rule comes out right by itself: flatten and reshape carry R
unchanged; sums (residual adds, average pooling) split R in proportion to their terms (LRP-0);
a ReLU's ordinary derivative passes R_y to its input unchanged. Other elementwise functions of
one input take `Pass` (relevance unchanged, g_x = g_y * y / x: NOTE: [Elementwise functions pass
relevance] in pointwise.py). Attributions are ``x * g_x``, except along
an input-layer rule (`ZBox`, `WSquare`, `Flat`), which hands back the input's relevance itself
(NOTE: [Input-layer relevance] in lrp_methods.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import ops, pairwise, pointwise
from .deeplift_rules import checked_eps, pool_with_indices, unpool
from .attention_rules import FixedAttention, FixedStd
from .gate_rules import FixedGate
from .lrp_input_rules import ZBox
from .lrp_math import _added, _eager, _masked, _times, non_negative, stabilize, stabilized_ratio, transpose, transposes
from .rule_base import Rule, Saved
from .unfused import Unfused

WEIGHTED = frozenset({"linear", "conv", "batch_norm"})
LAYERS = WEIGHTED | {"avg_pool", "max_pool"}


def _safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b, with 0 where b == 0 (float ops only, NOTE: [Float masks])."""
    return torch.nan_to_num(a / b, nan=0.0, posinf=0.0, neginf=0.0)


def _ratio(z: torch.Tensor, z_mod: torch.Tensor, eps: float) -> torch.Tensor:
    """``z / stabilize(z_mod, eps)``, into the stabilizer's fresh tensor outside transforms."""
    s = stabilize(z_mod, eps)
    return torch.div(z, s, out=s) if _eager() else z / s


class _Layer(Rule):
    """Base of the rules for layers: linear, conv, batch-norm (weighted) and pooling."""

    kinds = LAYERS
    keep_inputs = True
    norm_parameters = False  # True: rho on a batch norm's own weight and bias (Captum's rules do this)

    def __init__(self, eps: float = 1e-9, zero_bias: bool = False):
        self.eps = checked_eps(eps, type(self).__name__)
        self.zero_bias = zero_bias

    def rho(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def rho_bias(self, b: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(b) if self.zero_bias else self.rho(b)

    def _modified(self, op, tensors):
        if op.kind not in WEIGHTED:
            return None, None
        changes = type(self).rho is not _Layer.rho or type(self).rho_bias is not _Layer.rho_bias or self.zero_bias
        if op.kind == "batch_norm" and changes and not self.norm_parameters:
            return self._modified_norm(op, tensors[1], tensors[2])
        return self.rho(tensors[1]), self.rho_bias(tensors[2])

    def _modified_norm(self, op, w, b):
        """A batch norm is the affine map ``z = a x + c`` (``a = w / s``, ``c = b - mean a``, ``s =
        sqrt(var + eps)``): rho acts on a and c, as on a linear layer's weight and bias, by the
        parameters ``w' = rho(a) s``, ``b' = rho_bias(c) + mean rho(a)`` that give ``rho(a) x +
        rho_bias(c)``. On the norm's own w and b, Gamma and PositiveWeights keep a ``-mean
        rho(w) / s`` term even with zero_bias (relevance off by 88% for one BatchNorm1d)."""
        mean, var = op.options["running_mean"].to(w.dtype), op.options["running_var"].to(w.dtype)
        s = torch.sqrt(var + op.options["eps"])
        a = w / s
        ra = self.rho(a)
        return ra * s, self.rho_bias(b - mean * a) + mean * ra

    def keeps(self, op):
        return op.kind != "max_pool"  # a max-pool keeps its argmax indices instead

    def scales_output(self, op):
        """With unmodified weights (epsilon) the backward is the op's own VJP of ``grad * z / stab(z)``
        (NOTE: [Rules as output hooks]); a max-pool's is too (its VJP routes to the argmax)."""
        if type(self).forward is not _Layer.forward or type(self).backward is not _Layer.backward:
            return False
        return op.kind not in WEIGHTED or (type(self).rho is _Layer.rho and type(self).rho_bias is _Layer.rho_bias and not self.zero_bias)

    def output_scale(self, op, out):
        return stabilized_ratio(out, self.eps)

    def forward(self, op, *tensors):
        if op.kind == "max_pool":
            x = tensors[0]
            z, indices = pool_with_indices(op, x)
            return z, (stabilized_ratio(z, self.eps), indices, x.new_zeros(()).expand(x.shape))
        z = op.fn(*tensors)
        w, b = self._modified(op, tensors)
        if w is None or (w is tensors[1] and b is tensors[2]):
            return z, (stabilized_ratio(z, self.eps),)
        return z, (_ratio(z, op.fn(tensors[0], w, b), self.eps),)

    def backward(self, op, saved: Saved, grad):
        if op.kind == "max_pool":
            ratio, indices, like = saved.extras
            return (unpool(grad * ratio, indices, like.shape, op.options["nd"]),)
        x, *params = saved.inputs
        w, b = self._modified(op, (x, *params))
        (ratio,) = saved.extras
        g = transpose(op, x, w, b, grad * ratio)
        return (g,) + (None,) * len(params)


class Epsilon(_Layer):
    """LRP-epsilon: ``R_i = sum_j x_i w_ij / (z_j + eps sign(z_j)) R_j``; eps -> 0 is LRP-0.

    Bach et al. 2015. Applies to linear, conv, batch-norm and pooling layers.

    Example:
      >>> composite = {**xattr.rule.lrp_rules(), nn.Linear: xattr.rule.Epsilon(1e-6)}
      >>> relevance = xattr.lrp(xattr.target(model, 3), composite=composite)(x)      # like x
    """


class Gamma(_Layer):
    """LRP-gamma: weights (and biases) ``w + gamma * max(w, 0)``, favouring positive contributions.

    Montavon et al. 2019. ``modify_bias=False`` keeps the bias as it is (Captum's GammaRule).

    Example:
      >>> composite = {**xattr.rule.lrp_rules(), nn.Conv2d: xattr.rule.Gamma(0.25)}
      >>> relevance = xattr.lrp(xattr.target(model, 3), composite=composite)(x)      # like x
    """

    def __init__(self, gamma: float = 0.25, eps: float = 1e-9, zero_bias: bool = False, modify_bias: bool = True):
        super().__init__(eps, zero_bias)
        self.gamma = gamma
        self.modify_bias = modify_bias

    def rho(self, w):
        return w + self.gamma * w.clamp(min=0)

    def rho_bias(self, b):
        if self.zero_bias:
            return torch.zeros_like(b)
        return self.rho(b) if self.modify_bias else b


class PositiveWeights(_Layer):
    """Weights clamped at zero, bias kept: ``z' = W+ x + b`` (Captum's Alpha1_Beta0_Rule).

    Equal to alpha=1, beta=0 when inputs and biases are non-negative; `AlphaBeta` is the rule
    for any sign.

    Example:
      >>> composite = {**xattr.rule.lrp_rules(), nn.Conv2d: xattr.rule.PositiveWeights()}
      >>> relevance = xattr.lrp(xattr.target(model, 3), composite=composite)(x)      # like x
    """

    def rho(self, w):
        return w.clamp(min=0)

    def rho_bias(self, b):
        return torch.zeros_like(b) if self.zero_bias else b


class AlphaBeta(Rule):
    """LRP-alpha-beta: positive and negative contributions ``(x_i w_ij)+-`` propagated apart.

    ``R_i = sum_j (alpha z+_ij / z+_j - beta z-_ij / z-_j) R_j`` with ``alpha - beta = 1``; the
    bias joins the part of its sign (``bias=False`` drops it). Bach et al. 2015. Linear and conv.
    On an input known to have no negative entry (after a ReLU) the terms of its negative part are
    skipped, and with beta = 0 the negative contributions are never built (NOTE: [Alpha-beta
    convolutions per layer] in lrp_math.py).

    Example:
      >>> composite = {**xattr.rule.lrp_rules(), nn.Conv2d: xattr.rule.AlphaBeta(alpha=2.0, beta=1.0)}
      >>> relevance = xattr.lrp(xattr.target(model, 3), composite=composite)(x)      # like x
    """

    kinds = frozenset({"linear", "conv"})
    keep_inputs = True

    def __init__(self, alpha: float = 1.0, beta: float = 0.0, eps: float = 1e-9, bias: bool = True):
        if abs(alpha - beta - 1) > 1e-6:
            raise ValueError(f"alpha - beta must be 1 to conserve relevance; got alpha={alpha}, beta={beta}")
        self.alpha, self.beta, self.eps, self.bias = alpha, beta, checked_eps(eps, type(self).__name__), bias

    def forward(self, op, x, w, b):
        z = op.fn(x, w, b)
        signed = not non_negative(x)  # NOTE: [Alpha-beta convolutions per layer] in lrp_math.py
        wp = w.clamp(min=0)
        wn = w.clamp(max=0) if signed or self.beta else None
        zero = torch.zeros_like(b)
        bp, bn = (b.clamp(min=0), b.clamp(max=0)) if self.bias else (zero, zero)
        if signed:
            xp, xn = x.clamp(min=0), x.clamp(max=0)
            z_pos = _added(op.fn(xp, wp, bp), op.fn(xn, wn, zero))
            z_neg = _added(op.fn(xp, wn, bn), op.fn(xn, wp, zero)) if self.beta else None
        else:  # x+ = x and x- = 0: the terms of x- are 0
            z_pos = op.fn(x, wp, bp)
            z_neg = op.fn(x, wn, bn) if self.beta else None
        ratios = (_ratio(z, z_pos, self.eps),) + ((_ratio(z, z_neg, self.eps),) if self.beta else ())
        # the backward reads no context (NOTE: [Backward callbacks read no context] in rule_base.py):
        # an empty tensor after the ratios says the input has negative entries
        return z, ratios + ((x.new_empty(0),) if signed else ())

    def backward(self, op, saved: Saved, grad):
        x, w, b = saved.inputs
        n = 2 if self.beta else 1
        ratios, signed = saved.extras[:n], len(saved.extras) > n
        wp = w.clamp(min=0)
        wn = w.clamp(max=0) if signed or self.beta else None

        def back(weight, s):
            return transpose(op, x, weight, None, s)

        sp = grad * ratios[0]
        if not signed:  # [x < 0] is 0: its terms are skipped
            on = x > 0
            g = _times(self.alpha, _masked(back(wp, sp), on))
            if self.beta:
                g = g - self.beta * _masked(back(wn, grad * ratios[1]), on)
            return (g, None, None)
        on, off = (x > 0).to(grad.dtype), (x < 0).to(grad.dtype)
        tp, tn = transposes(op, x, (wp, wn), sp)
        g = _times(self.alpha, on * tp + off * tn)
        if self.beta:
            tn, tp = transposes(op, x, (wn, wp), grad * ratios[1])
            g = g - self.beta * (on * tn + off * tp)
        return (g, None, None)


class ZPlus(AlphaBeta):
    """LRP-z+: alpha=1, beta=0 without the bias (Montavon et al. 2017, deep Taylor decomposition).

    Example:
      >>> composite = {**xattr.rule.lrp_rules(), nn.Conv2d: xattr.rule.ZPlus()}
      >>> relevance = xattr.lrp(xattr.target(model, 3), composite=composite)(x)      # like x
    """

    def __init__(self, eps: float = 1e-9):
        super().__init__(1.0, 0.0, eps, bias=False)


class Pass(Rule):
    """Relevance passes an elementwise op unchanged (``R_x = R_y``; g_x = g_y * y / x).

    For ReLU this is its ordinary derivative; for tanh, sigmoid, GELU... it is the usual LRP
    treatment of activations (Captum's handling of nn.Tanh). Kinds: every elementwise kind of one
    input (activations, clamp, exp, log, ``x ** p``, ``c / x``...: `ops.ELEMENTWISE`; a clamp's
    tensor bounds and the fixed t of ``t / x`` get no gradient) and batch norm (Captum's
    IdentityRule there); not the functions of two inputs (``a ** b``, atan2...).

    Example:
      >>> composite = {**xattr.rule.lrp_rules(), torch.tanh: xattr.rule.Pass()}
      >>> relevance = xattr.lrp(xattr.target(model, 3), composite=composite)(x)      # like x
    """

    kinds = ops.ELEMENTWISE | {"batch_norm"}

    def forward(self, op, *tensors):
        y = op.fn(*tensors)
        return y, (_safe_divide(y, tensors[0]),)

    def backward(self, op, saved: Saved, grad):
        return (grad * saved.extras[0],) + (None,) * (_n_tensors(op) - 1)


class Block(Rule):
    """No gradient through the op: its output is treated as a constant (e.g. explicit attention weights).

    Every kind: none of the op's tensors (inputs, weights, each operand of a product, quotient,
    einsum or function of two inputs) receives a gradient. At a fused op (``nn.MultiheadAttention``,
    the recurrent layers) it raises when the op runs, as every rule but `Refuse` and `Unfused` does.

    NOTE: [Blocking an in-place call on a view]
    ``torch.relu_(t[:, 1:])`` under a rule that keeps no input runs inside the rule's Function
    (`rule_apply._ApplyEagerInPlace`), and torch records the write into t's view as a
    ``CopySlices`` node, which hands t's other elements their gradient only when the Function
    returns one for the view: for a None it returns none for the whole of t. So at an in-place
    call Block returns zeros: before, the gradient of every element of t outside the view was
    lost too (x's whole gradient None where ``t = lin(x)``, where it is up to 0.37 per input on a
    small float64 net), which the out-of-place call ``cat([t[:, :1], torch.relu(t[:, 1:])])`` keeps.

    Example:
      >>> composite = {**xattr.rule.lrp_rules(), F.softmax: xattr.rule.Block()}     # attention weights held
      >>> relevance = xattr.lrp(xattr.target(model, 3), composite=composite)(x)      # like x
    """

    kinds = frozenset(ops.KINDS)

    def backward(self, op, saved: Saved, grad):
        if op.inplace:  # a zero gradient, not None: see the NOTE
            return (torch.zeros_like(grad),) + (None,) * (_n_tensors(op) - 1)
        return (None,) * _n_tensors(op)


def _n_tensors(op) -> int:
    """How many tensors an op has, from its kind and options (a rule's forward and backward see
    the op without them). Every kind is counted (tests/test_rule_kind_matrix.py keys `Block` to
    each): before, a quotient, an einsum and the elementwise functions of two inputs counted one,
    and `Block` there failed ("returned 1 gradients for 2 tensors")."""
    if op.kind == "attention":
        return 3 + int(op.options.get("mask_tensor", False))  # NOTE: [Attention masks under transforms] in ops.py
    if op.kind == "einsum":  # its operands, two or more (NOTE: [Einsum of two activations] in two_inputs.py)
        return op.options["equation"].partition("->")[0].count(",") + 1
    if op.kind in _TWO_TENSORS:  # a * b, a @ b, a / b (NOTE: [Products of two activations]), g(a, b) (pairwise.py)
        return 2
    return 3 if op.kind in WEIGHTED | {"layer_norm", "group_norm", "baddbmm"} else 1 + len(op.options.get("bounds", ()))


_TWO_TENSORS = frozenset({"rms_norm", "product", "matmul", "quotient", "cosine_similarity"}) | pairwise.PAIRS


class Refuse(Rule):
    """Raises a clear error when an op it claims runs (for ops a method has no sound rule for).

    Example:
      >>> composite = {**xattr.rule.lrp_rules(), torch.tanh: xattr.rule.Refuse("no LRP rule for tanh here")}
      >>> xattr.lrp(xattr.target(model, 3), composite=composite)(x)   # NotImplementedError if a tanh runs
    """

    kinds = frozenset(ops.KINDS)

    def __init__(self, message: str):
        self.message = message

    def forward(self, op, *tensors):
        raise NotImplementedError(self.message)


_SOFTMAX = (
    "LRP has no relevance rule for softmax. Attribute the logits (leave the softmax out of the "
    "model function), or, for attention written with an explicit softmax, map F.softmax to "
    "xattr.rule.Block() (attention weights held constant, Ali et al. 2022)."
)

def lrp_rules(eps: float = 1e-9) -> dict:
    """The default LRP mapping (Captum's defaults): epsilon for every layer, activations pass.

    Keys stand for kinds: ``torch.conv2d`` for every convolution, ``F.max_pool2d`` for every
    max-pool, ``F.avg_pool2d`` for average and adaptive average pools. Linear, conv, batch-norm,
    average and max pooling: `Epsilon`; tanh, sigmoid, ELU, GELU, clamp, the other elementwise
    activations and every elementwise function of one input (exp, log, sqrt, abs, ``x ** p``,
    ``c / x``, ``c ** x``, sin...: ``torch.exp``, ``torch.pow``... each key stands for its kind):
    `Pass` (ReLU keeps its derivative, which is the same; NOTE: [Elementwise functions pass
    relevance] in pointwise.py);
    layer norm and RMS norm: `FixedStd`; scaled-dot-product attention: `FixedAttention`;
    nn.MultiheadAttention: `Unfused` (its projections and attention then take those rules);
    products of two activations (squeeze-and-excitation gates, GLU): `FixedGate`, which holds the
    divisor of a quotient of two activations too (a norm written by hand; ``F.normalize`` and
    ``F.cosine_similarity`` run written out by `Unfused`, so their norms are held); the recurrent
    layers (``torch.lstm`` stands for ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and their cells):
    `Unfused`, which runs them step by step, so their projections take `Epsilon`, their sigmoid
    and tanh `Pass` and their gate products `FixedGate`, which holds each gate constant (Arras et
    al. 2017: NOTE: [Recurrent layers written out] in written_recurrent.py); softmax: a clear error.

    Example:
      >>> composite = {**xattr.rule.lrp_rules(), nn.Conv2d: xattr.rule.Gamma(0.25)}   # defaults, then overrides
      >>> relevance = xattr.lrp(xattr.target(model, 3), composite=composite)(x)      # like x
    """
    layer, passing = Epsilon(eps), Pass()
    mapping = {F.linear: layer, torch.conv2d: layer, F.batch_norm: layer, F.avg_pool2d: layer, F.max_pool2d: layer}
    mapping.update({fn: passing for fn in (F.elu, F.leaky_relu, torch.sigmoid, torch.tanh, F.softplus, F.gelu, F.silu,
                                                    F.hardswish, F.hardsigmoid, F.relu6, F.hardtanh, F.mish, F.selu,
                                                    F.celu, F.softsign, F.logsigmoid, F.threshold, torch.clamp)})
    mapping.update(dict.fromkeys(pointwise.KEYS, passing))  # exp, log, x ** p...: NOTE: [Elementwise functions pass relevance]
    norm = FixedStd()
    mapping.update({F.layer_norm: norm, F.rms_norm: norm, F.scaled_dot_product_attention: FixedAttention()})
    gate = FixedGate()  # products of two activations (NOTE: [Products of two activations] in ops.py)
    mapping.update({torch.mul: gate, torch.div: gate})  # a / b: the divisor held (NOTE: [A divisor held constant])
    unfused = Unfused()  # nn.MultiheadAttention; nn.GLU as a * sigmoid(b), whose product then takes FixedGate; LSTMs
    mapping.update({F.softmax: Refuse(_SOFTMAX), F.multi_head_attention_forward: unfused, F.glu: unfused, torch.lstm: unfused})
    mapping.update({F.normalize: unfused, F.cosine_similarity: unfused})  # their divisions then hold the norms (gate)
    return mapping


def epsilon_gamma_box(first, low, high, *, gamma: float = 0.25, eps: float = 0.25) -> dict:
    """A common composite (Montavon et al. 2019): z^B at ``first``, gamma for conv, epsilon for dense.

    Args:
      first: the module (or module name) reading the input.
      low, high: the input's bounds for `ZBox`.
      gamma, eps: the gamma and epsilon of the conv and dense layers.

    Example:
      >>> composite = xattr.rule.epsilon_gamma_box(model.conv1, 0.0, 1.0)    # pixels in [0, 1]
      >>> relevance = xattr.lrp(xattr.target(model, 3), composite=composite)(x)      # like x
    """
    mapping = lrp_rules()
    mapping.update({torch.conv2d: Gamma(gamma), F.linear: Epsilon(eps)})
    mapping[first] = ZBox(low, high)
    return mapping


def epsilon_plus(*, eps: float = 1e-6) -> dict:
    """z+ for conv layers and epsilon for dense layers (a composite for ReLU CNNs).

    Example:
      >>> relevance = xattr.lrp(xattr.target(model, 3), composite=xattr.rule.epsilon_plus())(x)   # like x
    """
    mapping = lrp_rules()
    mapping.update({torch.conv2d: ZPlus(), F.linear: Epsilon(eps)})
    return mapping
