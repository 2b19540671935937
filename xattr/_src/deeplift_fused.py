"""Layer norm written out under DeepLift's exact rules, as one op (`fused`; rules.py asks it before
running an `Unfused` call written out; attention: deeplift_attention.py).

NOTE: [Written-out steps fused]
Under `exact_deep_lift_rules` a layer norm runs written out (NOTE: [Attention and norms written
out] in written_out.py): ``c = x - mean(x)``, ``p = c * c`` (`Product`), ``var = mean(p)``, ``s =
rsqrt(var + eps)`` (`Rescale`), ``o = c * s`` (`Product`), ``o * w + b``. Each ruled step is an
`autograd.Function` of its own with its Python (tens of microseconds in the forward and the
backward), and its multipliers are padded to every row, so the backward multiplies zeros for the
reference rows. Where the mapping gives those steps exactly DeepLift's own rules (`Product` at the
products and `Rescale` at rsqrt, found as the mode would find them, module keys included), the call
is one `_LayerNorm` op instead, with the same multipliers (the averages of c and s over each pair
of rows, Rescale's secant of rsqrt with that `Rescale`'s eps, its derivative at ties) and their
chain rule written as one backward:

    g_o = g w,  g_s = sum(g_o avg(c)),  g_p = g_s m_s / N,  g_c = g_o avg(s) + 2 g_p avg(c),
    g_x = g_c - mean(g_c)

(N the number of normalised elements), on the input rows alone where only they are seeded (the
reference rows get zeros, which is what the steps gave them). Anything else runs written out as
before: other rules at the steps, a weight or bias computed from the input, half precision
(normalised in float32), rows not in dim 0, interleaved rows, LRP's input copies, torch.func
transforms and derivatives of the attributions. The weight and bias get no gradient from the
fused op (parameters: the attributions never read theirs), as from the other rules' Functions.

NOTE: [One layer norm kernel]
The fused op's forward runs the steps' own ops in their order (c, var + eps and s are the steps'
values, bit for bit; the output is ``addcmul(b, c * s, w)``, one op fewer than ``c * s * w + b``,
0.87x its time on one thread: in float32 one rounding fewer, so up to a unit in the last place
apart; in float64 equal here), not torch's ``native_layer_norm`` with ``var + eps`` taken as
``s ** -2``, which was faster (the forward alone 0.78x on one thread, 0.63x on two, interleaved
medians on (8, 13, 384)) but not exact: summation-to-delta needs ``v = mean(c * c) + eps`` and
``s = rsqrt(v)`` of the very c that the output is made of, and Rescale's secant divides by a
difference of two variances, which amplified the mismatch: the relative delta on Whisper in
float64 rose from below 1e-12 to 1.8e-12 (tests/test_deeplift_hf_zoo_more.py).

NOTE: [Fast paths on MiniLM]
Layer DeepLift with `exact_deep_lift_rules` on all-MiniLM-L6-v2 (the benchmark row: 4 sentences
of 13 tokens, 8 paired rows), interleaved medians of whole calls in one process, each path
switched off by itself (1 and 2 torch threads on the shared 2-core machine, other jobs running;
40 rounds; time / floor, the floor one plain forward+backward of the 8 rows):

    threads  all on  no row skip  no fused ops  no fused attention  none (before)  Captum
    1        0.98    1.15         1.16          1.02                1.36           1.03
    2        1.09    1.19         1.32          1.17                1.45           1.03

All on against before: 0.72x the time on one thread, 0.75x on two; each path's share (all on
against that path off): the row skip 0.85x / 0.92x, the fused layer norm and attention together
0.84x / 0.82x, the fused attention alone 0.96x / 0.93x. On one thread xattr is now below the floor
(it skips half of the backward's matrix products, which the floor and Captum run) and faster than
Captum; on two threads it is 1.06-1.09x the floor in runs beside other jobs (Captum 1.03x): what is
left is the many small ops of the exact rules (the rows' multipliers at GELU, the layer norms'
steps, softmax's terms), about 2,400 aten calls against the floor's 600, which two threads make no
faster and a busy second core slows down (a ruled GELU costs 2.2x a plain one on two busy threads,
1.5x on one).
"""

from __future__ import annotations

import math

import torch

from . import ops
from .deeplift_attention import fused_attention
from .deeplift_products import Product
from .deeplift_rules import Rescale, _flat, _halves, _rescaled, floored
from .dependence import differentiated
from .row_layout import _ROWS, rows_in_dim_0
from .rule_base import Rule, Saved
from .rule_limits import RULED_VJP
from .unfused import Unfused

_RSQRT = ops.Op("rsqrt", torch.rsqrt, (), {}, torch.rsqrt, False)
_FLOATS = (torch.float32, torch.float64)


def fused(rule: Rule, op: ops.Op, table, stack: list) -> Rule | None:
    """The rule that runs ``op`` (an `Unfused` call) as one op, or None: written out as before
    (NOTE: [Written-out steps fused])."""
    if type(rule) is not Unfused or op.kind not in ("layer_norm", "attention"):
        return None
    if torch._C._functorch.maybe_current_level() is not None or RULED_VJP.get() is not None:
        return None
    if op.kind == "attention":
        return fused_attention(op, table, stack)  # NOTE: [Written-out attention fused]
    x, weight, bias = op.tensors
    k = len(op.options["normalized_shape"])
    if (x.dtype not in _FLOATS or x.ndim <= k or not differentiated(x) or differentiated(weight) or differentiated(bias)):
        return None
    product = table.resolve(ops.Op("product", torch.mul, (x, x), {}, torch.mul, False), stack)
    rsqrt = table.resolve(ops.Op("rsqrt", torch.rsqrt, (x,), {}, torch.rsqrt, False), stack)
    if type(product) is not Product or type(rsqrt) is not Rescale:
        return None
    if not (rows_in_dim_0(x.shape) and rows_in_dim_0(x.shape[:-k] + (1,) * k)):  # x, and var and s
        return None
    return _layer_norm(rsqrt.eps)


_RULES: dict = {}


def _layer_norm(eps: float) -> "_LayerNorm":
    found = _RULES.get(eps)
    if found is None:
        found = _RULES[eps] = _LayerNorm(eps)
    return found


class _LayerNorm(Rule):
    """A layer norm's written-out steps under `Product` and `Rescale(eps)`, as one op (NOTE:
    [Written-out steps fused])."""

    kinds = frozenset({"layer_norm"})
    shares_reference = True
    keep_inputs = True  # the weight, for the backward

    def __init__(self, eps: float):
        self.eps = eps

    def forward(self, op, x, weight, bias):
        # the steps of written_out.layer_norm in its order, not torch's kernel (NOTE: [One layer norm kernel])
        dims = tuple(range(-len(op.options["normalized_shape"]), 0))
        centred = x - x.mean(dims, keepdim=True)
        v = (centred * centred).mean(dims, keepdim=True) + op.options["eps"]
        s = torch.rsqrt(v)
        out = torch.addcmul(bias, centred * s, weight)  # weight ones and bias zeros where the call had none
        c1, c2 = _halves(centred)
        s1, s2 = _halves(s)
        terms = (_flat((c1 + c2).mul_(0.5), centred), _flat((s1 + s2).mul_(0.5), s), _secant(v, s, floored(self.eps, v.dtype)))
        rows, reference_grads = _ROWS.get()[:2]
        if reference_grads and terms[0].shape[0] != rows:  # both halves seeded: each pair's terms on both
            terms = tuple(torch.cat([t, t]) for t in terms)
        return out, terms

    def backward(self, op, saved: Saved, grad):
        avg_c, avg_s, m_s = saved.extras
        weight = saved.inputs[1]
        shape = op.options["normalized_shape"]
        dims = tuple(range(-len(shape), 0))
        n = avg_c.shape[0]  # the rows with multipliers; the others (unseeded references) get zeros
        rows = grad.shape[0]
        g = grad if n == rows else grad[:n]
        g_o = g * weight
        g_p = (g_o * avg_c).sum(dims, keepdim=True).mul_(m_s).div_(math.prod(shape))
        g_c = torch.addcmul(g_o.mul_(avg_s), g_p, avg_c, value=2)
        if n == rows:
            return g_c.sub_(g_c.mean(dims, keepdim=True)), None, None
        out = grad.new_empty((rows,) + tuple(g_c.shape[1:]))  # the zero rows appended in one buffer
        head, tail = out.split_with_sizes([n, rows - n])
        torch.sub(g_c, g_c.mean(dims, keepdim=True), out=head)
        tail.zero_()
        return out, None, None


def _secant(v: torch.Tensor, s: torch.Tensor, eps: float) -> torch.Tensor:
    """Rescale's multipliers at ``s = rsqrt(v)`` for the input rows: `_rescaled`'s values, by
    ``(s - s_ref) / (v - v_ref)`` alone where no ``|v - v_ref|`` is below eps and every ratio is
    finite (one reduction each; the common case), else by `_rescaled` itself; on a GPU always by
    `_rescaled` (its ``torch.where`` spelling), since reading a reduction would synchronise."""
    v1, v2 = _halves(v)
    s1, s2 = _halves(s)
    dv = v1 - v2
    if dv.numel() and v.device.type == "cpu" and dv.abs().min().item() >= eps:  # elsewhere no sync: `_rescaled`'s where
        m = (s1 - s2).div_(dv)
        if torch.isfinite(m).all().item():
            return _flat(m, v)
    return _rescaled(_RSQRT, v, s, eps)
