"""`Unfused`: a fused call run as the ops it is made of, so that the rules see inside it.

NOTE: [Fused attention written out]
``nn.MultiheadAttention`` (and so ``nn.TransformerEncoderLayer``, ``DecoderLayer``,
``nn.Transformer``, torchvision's ViT) calls ``F.multi_head_attention_forward``, a Python function
that the torch function mode sees as one call: while the mode handles a call it is off, so the
projections and the attention inside it ran unseen and no LRP rule could apply. Under `Unfused`
the mode answers that call with `multi_head_attention` below, run with the mode on again: the
same computation spelled with calls the mode intercepts, ``F.linear`` for the in- and
out-projections and ``F.scaled_dot_product_attention`` for the attention, so the mapping's rules
for those kinds apply (LRP: `Epsilon` and `FixedAttention`, the AH rule). It follows torch's
order of operations (one packed projection for self-attention, a key-value one where key is
value, a ``(B, H, L, d)`` SDPA call with the merged float mask), so with ``need_weights=False``
(every torch transformer layer) the forward is torch's bit for bit. With ``need_weights=True``
torch forms the weights explicitly; here the output still goes through SDPA (equal to
rounding: 1e-16 relative in float64) and the returned weights are computed beside it, as torch
computes them, but held constant (detached): no rule sees them, and under the AH rule attention
weights carry no relevance anyway. What has no rule-visible spelling raises, as the fused call
did: dropout in training mode (random), ``static_k``/``static_v`` and nested tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .rule_base import Rule
from .rule_limits import held
from . import written_norms
from .written_out import attention, baddbmm, glu, group_norm, layer_norm, rms_norm
from .written_recurrent import WRITTEN as _RECURRENT

_UNSUPPORTED = (
    "xattr.rule.Unfused cannot write this nn.MultiheadAttention call out: {}. Call model.eval() for dropout, or "
    "leave F.multi_head_attention_forward out of the mapping to give the call its ordinary gradient (under LRP "
    "relevance is then not conserved through it)."
)

_FROM_OP = {**written_norms.WRITTEN, "group_norm": group_norm}  # written out from the parsed call's tensors and options


class Unfused(Rule):
    """Runs a call as the ops it is made of, under the same rules (NOTE: [Fused attention written
    out], NOTE: [Attention and norms written out] in written_out.py).

    ``F.multi_head_attention_forward`` (``nn.MultiheadAttention`` and torch's transformer layers):
    input projections ``F.linear``, attention ``F.scaled_dot_product_attention``, output
    projection ``F.linear``; returned attention weights (``need_weights=True``) are held constant.
    In `lrp_rules` at that key only. ``F.scaled_dot_product_attention``: ``q @ k^T`` times the
    scale, the mask, softmax over the keys, ``@ v``. ``F.layer_norm`` and ``F.rms_norm``: the
    statistics as means of products, ``rsqrt``, the affine weights; ``F.group_norm`` and
    ``F.instance_norm`` (``nn.GroupNorm``, ``nn.InstanceNorm*`` with the instance's statistics)
    the same over each group of channels (`exact_deep_lift_rules` maps them here). ``F.glu``
    (``nn.GLU``): ``a * torch.sigmoid(b)`` of its halves (`lrp_rules` and `deep_lift_rules` map it here). ``torch.baddbmm``
    of two activations: ``alpha * torch.bmm(a, b) + beta * input`` (`deep_lift_rules`). The
    recurrent layers, ``torch.lstm`` and every op it stands for (``nn.LSTM``, ``nn.GRU``,
    ``nn.RNN`` and their cells): a loop over the time steps of ``F.linear``, sigmoid, tanh (or
    ReLU) and gate products (NOTE: [Recurrent layers written out] in written_recurrent.py;
    `lrp_rules` and `deep_lift_rules` map them here). Vector norms (``torch.linalg.vector_norm``
    and every spelling of it), ``F.normalize`` and ``F.cosine_similarity``: sums of products or of
    ``abs``, sqrt, clamped quotients (NOTE: [Vector norms written out] in written_norms.py;
    `exact_deep_lift_rules` maps them here). Each step then takes the
    mapping's rule for its kind: under DeepLift with ``{F.scaled_dot_product_attention:
    Unfused(), F.layer_norm: Unfused(), F.softmax: ExactSoftmax()}`` a transformer conserves.

    Example:
      >>> composite = {**xattr.rule.lrp_rules(), F.multi_head_attention_forward: xattr.rule.Unfused()}
      >>> relevance = xattr.lrp(f, composite=composite)(embeddings)                 # like embeddings
    """

    kinds = frozenset({"fused_attention", "attention", "layer_norm", "rms_norm", "glu", "baddbmm", "fused_recurrent"}) | frozenset(_FROM_OP)
    shares_reference = True  # pairs no rows: the ops written out have rules of their own

    def written_out(self, op):
        """The function computing ``op``'s call with ops the rules see (same arguments)."""
        if op.kind in _FROM_OP:  # from the parsed call: its spellings' signatures differ
            return lambda *args, **kwargs: _FROM_OP[op.kind](*op.tensors, **op.options)
        return _RECURRENT[op.func] if op.kind == "fused_recurrent" else _WRITTEN_OUT[op.kind]

    def backward(self, op, saved, grad):  # never reached: the written-out ops carry the rules
        raise NotImplementedError("Unfused runs the ops a call is made of; it has no backward of its own")


def multi_head_attention(query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias, bias_k, bias_v,
                         add_zero_attn, dropout_p, out_proj_weight, out_proj_bias, training=True, key_padding_mask=None,
                         need_weights=True, attn_mask=None, use_separate_proj_weight=False, q_proj_weight=None,
                         k_proj_weight=None, v_proj_weight=None, static_k=None, static_v=None, average_attn_weights=True,
                         is_causal=False):
    """``F.multi_head_attention_forward``, written with calls the rules see; same arguments and results."""
    _refuse_unsupported(query, key, value, training, dropout_p, static_k, static_v)
    batched = query.dim() == 3
    if not batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    tgt_len, bsz, embed_dim = query.shape
    if embed_dim != embed_dim_to_check or embed_dim % num_heads:
        raise ValueError(f"nn.MultiheadAttention: embedding dim {embed_dim} (expected {embed_dim_to_check}) must be "
                         f"divisible by num_heads {num_heads}")
    head_dim = embed_dim // num_heads
    key_padding_mask = _float_mask(key_padding_mask, query.dtype, "key_padding_mask")
    if is_causal and attn_mask is None:
        raise RuntimeError("nn.MultiheadAttention: is_causal is a hint that needs attn_mask (e.g. "
                           "nn.Transformer.generate_square_subsequent_mask)")
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None  # SDPA's own causal mask, as torch does
    else:
        attn_mask = _float_mask(attn_mask, query.dtype, "attn_mask")
        is_causal = False  # the mask holds it (torch's explicit path, or merged with key padding)
    if use_separate_proj_weight:
        q, k, v = _projected(query, key, value, (q_proj_weight, k_proj_weight, v_proj_weight), in_proj_bias)
    else:
        q, k, v = _projected_packed(query, key, value, in_proj_weight, in_proj_bias)
    src_len = key.shape[0]
    attn_mask = _as_3d(attn_mask, tgt_len, src_len, bsz * num_heads)
    if bias_k is not None or bias_v is not None:
        if bias_k is None or bias_v is None:
            raise ValueError("nn.MultiheadAttention: bias_k and bias_v are given together")
        k, v = torch.cat([k, bias_k.repeat(1, bsz, 1)]), torch.cat([v, bias_v.repeat(1, bsz, 1)])
        attn_mask, key_padding_mask = _pad_key(attn_mask), _pad_key(key_padding_mask)
    q = q.view(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)  # (B * H, L, d)
    k = k.view(k.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    v = v.view(v.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    if add_zero_attn:
        k = torch.cat([k, k.new_zeros(bsz * num_heads, 1, head_dim)], dim=1)
        v = torch.cat([v, v.new_zeros(bsz * num_heads, 1, head_dim)], dim=1)
        attn_mask, key_padding_mask = _pad_key(attn_mask), _pad_key(key_padding_mask)
    src_len = k.shape[1]
    if key_padding_mask is not None:
        if key_padding_mask.shape != (bsz, src_len):
            raise ValueError(f"nn.MultiheadAttention: key_padding_mask of shape {tuple(key_padding_mask.shape)}, "
                             f"expected {(bsz, src_len)}")
        per_head = key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, num_heads, -1, -1).reshape(bsz * num_heads, 1, src_len)
        attn_mask = per_head if attn_mask is None else attn_mask + per_head
    weights = _weights(q, k, attn_mask, bsz, num_heads, average_attn_weights) if need_weights else None
    if attn_mask is not None:
        attn_mask = attn_mask.unsqueeze(0) if attn_mask.shape[0] == 1 else attn_mask.view(bsz, num_heads, -1, src_len)
    heads = F.scaled_dot_product_attention(q.view(bsz, num_heads, tgt_len, head_dim), k.view(bsz, num_heads, src_len, head_dim),
                                           v.view(bsz, num_heads, src_len, head_dim), attn_mask, 0.0, is_causal)
    out = F.linear(heads.permute(2, 0, 1, 3).reshape(bsz * tgt_len, embed_dim), out_proj_weight, out_proj_bias)
    out = out.view(tgt_len, bsz, out.shape[1])
    if not batched:
        out = out.squeeze(1)
        weights = None if weights is None else weights.squeeze(0)
    return out, weights


def _refuse_unsupported(query, key, value, training, dropout_p, static_k, static_v) -> None:
    if training and dropout_p > 0:
        raise NotImplementedError(_UNSUPPORTED.format(f"dropout {dropout_p} in training mode is random"))
    if static_k is not None or static_v is not None:
        raise NotImplementedError(_UNSUPPORTED.format("static_k and static_v are not supported"))
    if any(t.is_nested for t in (query, key, value)):
        raise NotImplementedError(_UNSUPPORTED.format("nested tensors are not supported"))
    if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
        raise ValueError(f"nn.MultiheadAttention: query, key and value must all be 2-d (unbatched) or 3-d, got "
                         f"{query.dim()}-d, {key.dim()}-d and {value.dim()}-d")


def _float_mask(mask, dtype: torch.dtype, name: str):
    """An additive float mask: a bool mask's True entries (not attended) become -inf."""
    if mask is None or mask.is_floating_point():
        return mask
    if mask.dtype != torch.bool:
        raise TypeError(f"nn.MultiheadAttention: {name} must be bool or floating point, not {mask.dtype}")
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))


def _as_3d(mask, tgt_len: int, src_len: int, rows: int):
    """attn_mask as (1, L, S) or (B * H, L, S), checked."""
    if mask is None:
        return None
    want = {2: (tgt_len, src_len), 3: (rows, tgt_len, src_len)}.get(mask.dim())
    if want is None or tuple(mask.shape) != want:
        raise ValueError(f"nn.MultiheadAttention: attn_mask of shape {tuple(mask.shape)}, expected {(tgt_len, src_len)} "
                         f"or {(rows, tgt_len, src_len)}")
    return mask.unsqueeze(0) if mask.dim() == 2 else mask


def _pad_key(mask):
    """One more key position (a bias key or a zero key), attended: a zero column."""
    return None if mask is None else F.pad(mask, (0, 1))


def _projected_packed(query, key, value, weight, bias):
    """q, k, v from the packed in-projection, as torch forms them: one ``F.linear`` where query,
    key and value are one tensor (self-attention), one for the query and one for key and value
    where those two are one tensor, else three."""
    e = query.shape[-1]
    if key is value:
        if query is key:
            return _split(F.linear(query, weight, bias), 3, e)
        w_q, w_kv = weight.split([e, 2 * e])
        b_q, b_kv = (None, None) if bias is None else bias.split([e, 2 * e])
        return (F.linear(query, w_q, b_q), *_split(F.linear(key, w_kv, b_kv), 2, e))
    return _projected(query, key, value, weight.chunk(3), bias)


def _split(packed: torch.Tensor, n: int, e: int) -> tuple:
    """(..., n * e) into n contiguous tensors of (..., e), laid out as torch lays them out."""
    parts = packed.view(*packed.shape[:-1], n, e).movedim(-2, 0).contiguous()
    return tuple(parts[i] for i in range(n))


def _projected(query, key, value, weights, bias) -> tuple:
    biases = (None, None, None) if bias is None else bias.chunk(3)
    return tuple(F.linear(t, w, b) for t, w, b in zip((query, key, value), weights, biases))


def _weights(q, k, mask, bsz: int, num_heads: int, average: bool) -> torch.Tensor:
    """The attention weights torch returns, computed as torch computes them, held constant: out of
    the rules' sight (they would refuse the softmax) and outside the method's own VJP (`held`: a
    derivative of the attributions still sees them depend on q and k, NOTE: [Derivatives of
    rule-based attributions] in rule_limits.py; detached, a model using them was 3% off)."""
    with torch._C.DisableTorchFunction():
        q, k = held(q), held(k)
        scaled = q * math.sqrt(1.0 / float(q.shape[-1]))
        keys = k.transpose(-2, -1)
        scores = torch.bmm(scaled, keys) if mask is None else torch.baddbmm(held(mask), scaled, keys)
        weights = torch.softmax(scores, dim=-1).view(bsz, num_heads, q.shape[1], k.shape[1])
        return weights.mean(dim=1) if average else weights


_WRITTEN_OUT = {"fused_attention": multi_head_attention, "attention": attention, "layer_norm": layer_norm, "rms_norm": rms_norm,
                "glu": glu, "baddbmm": baddbmm}
