"""Attention and normalisation written as the calls they are made of (`Unfused` runs them).

NOTE: [Attention and norms written out]
``F.scaled_dot_product_attention``, ``F.layer_norm`` and ``F.rms_norm`` are single calls: a rule
there replaces the whole call's backward (LRP: `FixedAttention`, `FixedStd`), and with no rule
the call keeps its gradient, which under DeepLift breaks summation-to-delta. Under `Unfused` the
mode answers such a call with the function below, run with the mode on again, so each step is an
op of its own kind that the mapping rules:

    attention:  s = (q @ k^T) * scale (+ mask),  a = softmax(s, -1),  out = a @ v
    layer norm: c = x - mean(x),  var = mean(c * c),  out = c * rsqrt(var + eps) * w + b
    RMS norm:   out = x * rsqrt(mean(x * x) + eps) * w
    group norm: layer norm's steps over each group of channels (and the dims after them), then
                the per-channel w and b; an instance norm is a group norm of one channel each

(means over the normalised dims, the variance biased, as torch's). Under DeepLift the products
of two activations take `Product`, the softmax `ExactSoftmax` and rsqrt `Rescale`, each exact,
and everything else is affine, so the call conserves. The forward equals torch's up to rounding
(1e-15 relative in float64; tested over masks, causal, scale, GQA, shapes, weights and eps), with
torch's conventions: a bool mask is True where a key is attended, a float mask is added, the
causal mask is ``tril`` of the (L, S) scores (aligned at the top left), and a query whose keys
are all masked gets zeros (its scores are read as zeros, so the softmax stays finite, and its
weights are zeroed: no gradient reaches them). ``enable_gqa`` repeats each key and value head
for its group of query heads. Half and bfloat16 inputs are normalised in float32, as torch does.
What torch's call does but has no rule-visible spelling raises: dropout (random, in training).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_HALF = (torch.float16, torch.bfloat16)


def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``F.scaled_dot_product_attention`` written out (NOTE: [Attention and norms written out])."""
    if dropout_p:
        raise NotImplementedError(f"xattr.rule.Unfused cannot write out attention with dropout_p={dropout_p} (random): "
                                  "call model.eval(), or pass dropout_p=0.0")
    weights, value = attention_probs(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    return weights @ value


def attention_probs(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False, dtype=None):
    """``(softmax(q k^T scale + mask), value)`` of a ``scaled_dot_product_attention`` call (grouped
    keys and values repeated to the query heads); a query with no key to attend gets zeros. The
    softmax runs in ``dtype`` when given and is cast back to the scores'."""
    if is_causal and attn_mask is not None:
        raise RuntimeError("scaled_dot_product_attention: attn_mask and is_causal cannot both be set")
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        group = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(group, dim=-3), value.repeat_interleave(group, dim=-3)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = (query @ key.transpose(-2, -1)) * scale
    bias = _bias(attn_mask, is_causal, scores)
    if bias is None:
        return torch.softmax(scores, dim=-1, dtype=dtype).to(scores.dtype), value
    if bias.shape != scores.shape and not _broadcasts(bias.shape, scores.shape):
        raise RuntimeError(f"scaled_dot_product_attention: attn_mask of shape {tuple(bias.shape)} does not broadcast "
                           f"to the scores' shape {tuple(scores.shape)} (torch's own call refuses it too)")
    dead = torch.isneginf(bias).all(dim=-1, keepdim=True)  # a query with no key to attend
    weights = torch.softmax(scores + bias.masked_fill(dead, 0.0), dim=-1, dtype=dtype).to(scores.dtype)
    return weights.masked_fill(dead, 0.0), value


def _broadcasts(shape, to) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``to`` without widening it."""
    return len(shape) <= len(to) and all(a in (1, b) for a, b in zip(reversed(shape), reversed(to)))


def _bias(attn_mask, is_causal: bool, scores: torch.Tensor):
    """The additive mask of the (..., L, S) scores: 0 where attended, -inf where not; None if none."""
    if is_causal:
        n, s = scores.shape[-2:]
        attn_mask = torch.ones(n, s, dtype=torch.bool, device=scores.device).tril()
    if attn_mask is None or attn_mask.dtype != torch.bool:
        return attn_mask
    return torch.zeros(attn_mask.shape, dtype=scores.dtype, device=scores.device).masked_fill(~attn_mask, float("-inf"))


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``F.layer_norm`` written out (NOTE: [Attention and norms written out])."""
    x, dims = _upcast(input), _dims(normalized_shape)
    centred = x - x.mean(dims, keepdim=True)
    out = centred * torch.rsqrt((centred * centred).mean(dims, keepdim=True) + eps)
    out = out if weight is None else out * weight
    out = out if bias is None else out + bias
    return out.to(input.dtype)


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """``F.rms_norm`` written out (NOTE: [Attention and norms written out])."""
    x, dims = _upcast(input), _dims(normalized_shape)
    eps = torch.finfo(input.dtype).eps if eps is None else eps
    out = x * torch.rsqrt((x * x).mean(dims, keepdim=True) + eps)
    out = out if weight is None else out * weight
    return out.to(input.dtype)


def group_norm(input, weight, bias, *, groups: int, eps: float):
    """``F.group_norm`` (and ``F.instance_norm`` with the instance's statistics: ``groups`` the
    channels) written out from the parsed call (NOTE: [Attention and norms written out])."""
    x = _upcast(input)
    grouped = x.reshape(x.shape[0], groups, -1)
    centred = grouped - grouped.mean(-1, keepdim=True)
    out = (centred * torch.rsqrt((centred * centred).mean(-1, keepdim=True) + eps)).reshape(x.shape)
    per_channel = (-1,) + (1,) * (x.ndim - 2)
    return (out * weight.reshape(per_channel) + bias.reshape(per_channel)).to(input.dtype)


def norm_spellings(Op) -> list:
    """(torch function, kind, parser) of the group and instance norms: kind ``group_norm``,
    tensors (input, weight, bias: ones and zeros where missing), options ``groups`` and ``eps``.
    An instance norm that keeps running statistics is not parsed: with them it is affine, and
    while it updates them (training) the written-out call would not."""

    def parsed(func, call, input, groups, weight, bias, eps):
        c = input.shape[1]
        w = torch.ones(c, dtype=input.dtype, device=input.device) if weight is None else weight
        b = torch.zeros(c, dtype=input.dtype, device=input.device) if bias is None else bias
        given = lambda t, original: None if original is None else t  # noqa: E731 (torch's own kernel: the same rounding)
        fn = lambda x, w, b: call(x, given(w, weight), given(b, bias))  # noqa: E731
        return Op("group_norm", fn, (input, w, b), {"groups": groups, "eps": eps}, func, False)

    def group(func, input, num_groups, weight=None, bias=None, eps=1e-5):
        return parsed(func, lambda x, w, b: F.group_norm(x, num_groups, w, b, eps), input, num_groups, weight, bias, eps)

    def instance(func, input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True, momentum=0.1,
                 eps=1e-5):
        if not use_input_stats or running_mean is not None or running_var is not None or input.ndim < 3:
            return None
        call = lambda x, w, b: F.instance_norm(x, None, None, w, b, True, momentum, eps)  # noqa: E731
        return parsed(func, call, input, input.shape[1], weight, bias, eps)

    return [(F.group_norm, "group_norm", group), (F.instance_norm, "group_norm", instance)]


def _dims(normalized_shape) -> tuple:
    n = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    return tuple(range(-n, 0))


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in _HALF else x


def glu(input, dim=-1):
    """``F.glu`` written out: the first half times the sigmoid of the second (a product of two
    activations, then ruled as one: NOTE: [Products of two activations] in ops.py)."""
    a, b = input.chunk(2, dim)
    return a * torch.sigmoid(b)


def baddbmm(input, batch1, batch2, *, beta=1, alpha=1, out=None):
    """``torch.baddbmm`` written out: ``alpha * (batch1 @ batch2)``, a product of two activations
    (NOTE: [Products of two activations] in ops.py), plus ``beta * input``; ``beta=0`` ignores
    input, as torch does (a nan there does not propagate)."""
    product = torch.bmm(batch1, batch2)
    if alpha != 1:
        product = product * alpha
    return product if beta == 0 else product + (input if beta == 1 else input * beta)
