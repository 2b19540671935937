"""LRP rules for transformer blocks (Ali et al. 2022, "XAI for Transformers: Better Explanations
through Conservative Propagation"): layer norm with its scale held (`FixedStd`, the LN rule) and
attention with its weights held (`FixedAttention`, the AH rule). Both conserve relevance; docs/lrp.md
has the math."""

from __future__ import annotations

import torch

from .rule_base import Rule, Saved


class FixedStd(Rule):
    """Layer norm with its standard deviation held constant (Ali et al. 2022, the LN rule).

    The centring ``x - mean(x)`` is linear and keeps its derivative; the division by the
    standard deviation is treated as a constant scale, so relevance is conserved up to the bias.
    RMS norm (``nn.RMSNorm``, ``F.rms_norm``: no centring) likewise, with its root mean square
    held: ``g_x = g * w / rms(x)``, conserved exactly (it has no bias).

    NOTE: [The layer norm's own statistics]
    The held scale of a layer norm is the ``rstd = 1 / sqrt(var + eps)`` that torch's layer norm
    kernel computes anyway: ``torch.native_layer_norm`` returns it with the output, where a separate
    ``x.var(...)`` cost ~100 us per call on CPU for a (4, 13, 384) input (its reduction is not
    vectorised over a short last dim; the kernel takes 8 us), 13 of them per all-MiniLM-L6-v2
    call. The output is the layer norm's own bit for bit; rstd differs from ``1 / sqrt(x.var() +
    eps)`` by rounding only. Under torch.func transforms the rule keeps ``x.var``: the kernel's
    rstd has no derivative in autograd, and a transform differentiating the attributions
    differentiates the held scale too (NOTE: [Derivatives of rule-based attributions]).

    Example:
      >>> composite = {**xattr.rule.lrp_rules(), F.layer_norm: xattr.rule.FixedStd()}
      >>> relevance = xattr.lrp(f, composite=composite)(embeddings)                 # like embeddings
    """

    kinds = frozenset({"layer_norm", "rms_norm"})
    keep_inputs = True

    def forward(self, op, x, w, *b):
        if op.kind == "rms_norm":
            dims = tuple(range(x.ndim - len(op.options["normalized_shape"]), x.ndim))
            return op.fn(x, w), (torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + op.options["eps"]),)
        shape, eps = op.options["normalized_shape"], op.options["eps"]
        if torch._C._functorch.maybe_current_level() is None:  # NOTE: [The layer norm's own statistics]
            y, _, rstd = torch.native_layer_norm(x, shape, w, b[0], eps)
            return y, (rstd.to(x.dtype),)
        dims = tuple(range(x.ndim - len(shape), x.ndim))  # rstd with its derivative
        return op.fn(x, w, *b), (torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + eps),)

    def backward(self, op, saved: Saved, grad):
        x, w, *b = saved.inputs
        (rstd,) = saved.extras
        v = grad * w * rstd
        if op.kind == "rms_norm":
            return (v, None)
        dims = tuple(range(x.ndim - len(op.options["normalized_shape"]), x.ndim))
        return (v - v.mean(dims, keepdim=True), None, None)


class FixedAttention(Rule):
    """Attention with the attention weights held constant (Ali et al. 2022, the AH rule).

    For ``F.scaled_dot_product_attention``: relevance flows to the values through the weights
    A (``g_v = A^T g``), none to queries and keys; conserved. With ``enable_gqa=True`` and fewer
    key/value heads than query heads, each key/value head serves a group of query heads (as SDPA
    repeats them), and its values' gradient is the sum over its group. A mask that is the op's
    fourth tensor (one wrapped by a torch.func transform, NOTE: [Attention masks under transforms] in
    ops.py) gets no gradient.

    Example:
      >>> composite = {**xattr.rule.lrp_rules(), F.scaled_dot_product_attention: xattr.rule.FixedAttention()}
      >>> relevance = xattr.lrp(f, composite=composite)(embeddings)                 # like embeddings
    """

    kinds = frozenset({"attention"})

    def forward(self, op, q, k, v, *mask):
        y = op.fn(q, k, v, *mask)
        options = dict(op.options, attn_mask=mask[0]) if mask else op.options
        return y, (_attention_weights(q, k, options), v.new_zeros(()).expand(v.shape))

    def backward(self, op, saved: Saved, grad):
        a, v = saved.extras  # v: the values' shape, no storage
        g = a.transpose(-2, -1) @ grad  # per query head
        if v.ndim >= 3 and g.shape[-3] != v.shape[-3]:  # grouped-query attention: back to each key/value head
            g = g.unflatten(-3, (v.shape[-3], g.shape[-3] // v.shape[-3])).sum(-3)
        return (None, None, g) + (None,) * int(op.options.get("mask_tensor", False))


def _attention_weights(q, k, options) -> torch.Tensor:
    if options.get("enable_gqa") and k.ndim >= 3 and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)  # as SDPA does for grouped-query attention
    scale = options["scale"] if options["scale"] is not None else q.shape[-1] ** -0.5
    scores = (q @ k.transpose(-2, -1)) * scale
    mask = options["attn_mask"]
    if options["is_causal"]:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.softmax(scores, -1)
