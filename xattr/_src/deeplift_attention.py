"""``F.scaled_dot_product_attention`` written out under DeepLift's exact rules, as one op
(`fused_attention`; deeplift_fused.py asks it for an `Unfused` attention call).

NOTE: [Written-out attention fused]
Under `exact_deep_lift_rules` SDPA runs written out (NOTE: [Attention and norms written out] in
written_out.py): ``s = (q @ k^T) * scale`` (`Product`), the mask, ``a = softmax(s + mask)``
(`ExactSoftmax`), ``a @ v`` (`Product`): three Functions and their Python, each with multipliers
padded to every row, so each backward matrix product also runs on the reference rows' zeros. Where
the mapping gives those steps exactly these rules (found as the mode finds them), the call is one
`_Attention` op (NOTE: [Written-out steps fused] in deeplift_fused.py): the same forward (but for
the softmax's spelling, below), the same multipliers (the averages of q, k, a and v over each pair
of rows, and `ExactSoftmax`'s m and w with its eps), and their chain rule as one backward on the
input rows:

    g_a = g @ avg(v)^T,  g_v = avg(a)^T @ g,  u = g_a m (0 where a query has no key),
    g_s = (u - w sum(u)) scale,  g_q = g_s @ avg(k),  g_k = g_s^T @ avg(q)

The attributions equal the steps' to rounding (tests/test_deeplift_speed_paths.py; every mask
shape, dead rows, causal, key padding, a mask as long as the rows, shared references and DeepLift
SHAP's copies: tests/test_deeplift_attention_masks.py). Written out as before: other rules at the
steps, q, k or v not computed from the input, a mask that requires grad or has more dims than q
(torch's SDPA refuses it; the steps broadcast it), grouped keys and values, dropout, inputs other
than float32/float64 of rank 4 with the rows in dim 0 (and not in dim 1: heads as many as the
rows run written out), and whatever deeplift_fused.py leaves written out.

The mask's dead rows (queries with no key: weights and g_a zeroed, as the steps' ``masked_fill``)
keep the mask's shape, so the backward takes the input rows' share only of a mask with a row per
call row (4-d, dim 0 the rows); an (L, S) or (H, L, S) mask whose L or H happens to equal the
rows is per query or per head, and broadcasts whole.

NOTE: [Softmax as exp(z - logsumexp)]
On CPU ``torch.softmax`` over a short last dim is slow: 185 us for scores (8, 12, 13, 13) on one
thread, against 39 us for ``logsumexp`` and 10 us for ``exp`` (interleaved medians). The fused op
needs the logsumexp anyway (`ExactSoftmax`'s terms, `deeplift_softmax._terms`, take it instead of
one per half), so the weights are ``exp(z - logsumexp(z))``: equal to softmax to rounding (a
masked score of -inf gives 0, as there), once divided by their sum (NOTE: [Rows masked by a
finite number]). `ExactSoftmax`'s secants divide by differences of log-probabilities, which
amplifies that rounding: on a float64 transformer block (tests/test_deeplift_speed_paths.py) the
attributions moved by up to 2e-11 of the largest from the steps' (the fused layer norm alone:
1e-16), summation-to-delta 1e-16 either way; on MiniLM in float32 the attributions are 4.5e-7
off the float64 ones, the steps' 9.0e-7 (largest 0.02; before the division by the sum).
Measured with the fused attention on and off in the whole call: NOTE: [Fast paths on MiniLM] in
deeplift_fused.py.

NOTE: [Rows masked by a finite number]
``exp(z - logsumexp(z))`` is softmax up to the rounding of the logsumexp, which is relative to
its size: where a finite mask hides every key of a query (transformers' ``finfo.min`` padding,
the older -1e4; left padding with a causal mask gives such queries), z is the mask plus scores
it absorbs, and the weights were off: at ``finfo.min`` the logsumexp rounds to the scores' value
and every weight came out 1 instead of 1/S (the ruled forward of a tiny float64 model with a
padded-out example was 2.1 off, relative to its largest output: S times the values); at -1e4 in
float32 the weights were 5e-4 off, relative (softmax: 3e-7), the tiny model's output 4.9e-5
(now 6.6e-8). The weights are divided by their sum: the rounding scales a row's weights alike, so
that undoes it (at finfo.min 1/S exactly, at -1e4 in float32 2.6e-7; 10 us more on (8, 12, 13,
13) on one thread, 55 -> 65 us, softmax 192 us). The terms keep that logsumexp, which is the
one `ExactSoftmax` takes of the same scores. On tests/test_deeplift_bert.py's padded pair in
float32 (SDPA, the cosine at the word embeddings) the attributions moved from 3.0e-6 off the
float64 ones to 2.2e-6 (the steps': 8.7e-7; largest 0.028). At a query whose scores a finite
mask absorbed, neither the fused op nor the steps conserve (the forward sees equal z at the input
and the reference; the backward passes the scores' differences on: delta 0.17 on the tiny
model's padded-out example, the same in both).
"""

from __future__ import annotations

import math

import torch

from . import ops
from .deeplift_products import Product
from .deeplift_rules import _flat, _halves, _padded, floored
from .deeplift_softmax import ExactSoftmax, _terms
from .dependence import differentiated
from .row_layout import _ROWS, rows_in_dim_0
from .rule_base import Rule, Saved
from .written_out import _bias

_FLOATS = (torch.float32, torch.float64)


def fused_attention(op: ops.Op, table, stack: list) -> Rule | None:
    """The rule that runs the SDPA call ``op`` as one op, or None (NOTE: [Written-out attention fused])."""
    q, k, v = op.tensors[:3]
    o = op.options
    mask = o["attn_mask"]
    if (len(op.tensors) != 3 or q.ndim != 4 or k.ndim != 4 or v.ndim != 4 or not q.dtype == k.dtype == v.dtype
            or q.dtype not in _FLOATS or k.shape[1] != q.shape[1] or v.shape[1] != q.shape[1]
            or (isinstance(mask, torch.Tensor) and (mask.requires_grad or mask.ndim > 4))):
        return None
    if not (differentiated(q) and differentiated(k) and differentiated(v)):
        return None
    product = table.resolve(ops.Op("matmul", torch.matmul, (q, k), {}, torch.matmul, False), stack)
    softmax = table.resolve(ops.Op("softmax", torch.softmax, (q,), {"dim": -1, "dtype": None}, torch.softmax, False), stack)
    if type(product) is not Product or type(softmax) is not ExactSoftmax:
        return None
    if not all(rows_in_dim_0(shape) for shape in (q.shape, k.shape, v.shape, q.shape[:-1] + k.shape[-2:-1])):  # and the scores
        return None
    found = _RULES.get(softmax.eps)
    if found is None:
        found = _RULES[softmax.eps] = _Attention(softmax.eps)
    return found


_RULES: dict = {}


def _averaged(t: torch.Tensor) -> torch.Tensor:
    """t averaged over each pair of rows, for the input rows (`deeplift_products._averaged`'s values)."""
    a, b = _halves(t)
    return _flat((a + b).mul_(0.5), t)


class _Attention(Rule):
    """SDPA's written-out steps under `Product` and `ExactSoftmax(eps)`, as one op (NOTE:
    [Written-out attention fused])."""

    kinds = frozenset({"attention"})
    shares_reference = True

    def __init__(self, eps: float):
        self.eps = eps

    def forward(self, op, q, k, v):
        o = op.options
        scale = 1.0 / math.sqrt(q.shape[-1]) if o["scale"] is None else o["scale"]
        scores = (q @ k.transpose(-2, -1)) * scale  # written_out.attention_probs, in its order
        bias = _bias(o["attn_mask"], o["is_causal"], scores)
        if bias is None:
            z, dead = scores, None
        else:
            dead = torch.isneginf(bias).all(dim=-1, keepdim=True)
            z = scores + bias.masked_fill(dead, 0.0)
        # NOTE: [Softmax as exp(z - logsumexp)]
        lse = z.logsumexp(-1, keepdim=True)
        weights = (z - lse).exp_()
        weights = weights.div_(weights.sum(-1, keepdim=True))  # NOTE: [Rows masked by a finite number]
        m, w = _terms(z, weights, (z.ndim - 1,), floored(self.eps, z.dtype), lse=lse)  # ExactSoftmax's, at softmax(z)
        if dead is not None:
            weights = weights.masked_fill(dead, 0.0)
        out = weights @ v
        terms = (_averaged(q), _averaged(k), _averaged(weights), _averaged(v), m, w)
        rows, reference_grads = _ROWS.get()[:2]
        if reference_grads and terms[0].shape[0] != rows:  # both halves seeded: each pair's terms on both
            terms = tuple(torch.cat([t, t]) for t in terms)
        return out, terms + (() if dead is None else (dead,))

    def backward(self, op, saved: Saved, grad):
        avg_q, avg_k, avg_a, avg_v, m, w, *dead = saved.extras
        n, rows = avg_q.shape[0], grad.shape[0]
        g = grad if n == rows else grad[:n]
        g_a = g @ avg_v.mT
        g_v = avg_a.mT @ g
        if dead:  # the mask's rows where it has them (a 2-d or broadcast mask has none)
            d = dead[0]
            g_a.masked_fill_(d[:n] if d.ndim == g_a.ndim and d.shape[0] == rows else d, 0.0)
        u = g_a.mul_(m)
        scale = 1.0 / math.sqrt(avg_q.shape[-1]) if op.options["scale"] is None else op.options["scale"]
        g_s = u.sub_(w * u.sum(-1, keepdim=True)).mul_(scale)
        g_q, g_k = g_s @ avg_k, g_s.mT @ avg_q
        if n == rows:
            return g_q, g_k, g_v
        return _padded(g_q, rows), _padded(g_k, rows), _padded(g_v, rows)
