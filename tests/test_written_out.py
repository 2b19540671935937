"""`xattr.rule.Unfused` at SDPA, layer norm and RMS norm (NOTE: [Attention and norms written out]).

Checked: under ``{kind: Unfused()}`` each call runs as the ops it is made of (its autograd node is
no longer the fused one) and its forward equals torch's to 1e-12 in float64 over masks (bool,
float, broadcast, a query with every key masked), causal, scale, GQA, L != S, normalised shapes,
missing weights and eps; half precision to its rounding; a module key (``nn.LayerNorm: Unfused()``)
writes out only that module's calls; LRP's defaults at SDPA and layer norm are unchanged.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr.rule import FixedAttention, FixedStd, Unfused

TOL = dict(atol=1e-12, rtol=1e-12)


def _ruled(fn, key):
    return xattr.rules(fn, {key: Unfused()})


def _rand(g, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=g, dtype=dtype)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), mask=st.sampled_from(["none", "bool", "float", "bool_row", "causal", "dead"]),
       gqa=st.booleans(), scale=st.sampled_from([None, 0.3]), src=st.integers(1, 5), lead=st.sampled_from([(), (2,), (2, 3)]))
def test_attention_forward_equals_torch(seed, mask, gqa, scale, src, lead):
    g = torch.Generator().manual_seed(seed)
    heads, kv_heads, tgt, d = 4, (2 if gqa else 4), 3, 5
    q = _rand(g, *lead, heads, tgt, d)
    k, v = _rand(g, *lead, kv_heads, src, d), _rand(g, *lead, kv_heads, src, d + 1)
    kwargs = dict(scale=scale, enable_gqa=gqa)
    if mask == "bool":
        kwargs["attn_mask"] = torch.rand(tgt, src, generator=g) > 0.3
    elif mask == "float":
        kwargs["attn_mask"] = _rand(g, heads, tgt, src).masked_fill(torch.rand(tgt, src, generator=g) > 0.7, float("-inf"))
    elif mask == "bool_row":  # broadcast over queries
        kwargs["attn_mask"] = torch.rand(1, src, generator=g) > 0.5
    elif mask == "dead":  # the first query attends no key
        kwargs["attn_mask"] = torch.ones(tgt, src, dtype=torch.bool).index_fill(0, torch.tensor([0]), False)
    elif mask == "causal":
        kwargs["is_causal"] = True
    want = F.scaled_dot_product_attention(q, k, v, **kwargs)
    got = _ruled(lambda *t: F.scaled_dot_product_attention(*t, **kwargs), F.scaled_dot_product_attention)(q, k, v)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("shape", [(1, 2, 3, 4, 4), (3, 2, 3, 4, 4), (2, 5, 4)])
def test_a_mask_that_does_not_broadcast_to_the_scores_is_refused_as_by_torch(shape):
    """A mask with more dims than the scores, or one that would widen them, makes torch's SDPA raise;
    written out it would broadcast and return another shape: refused the same way."""
    g = torch.Generator().manual_seed(1)
    q = _rand(g, 2, 3, 4, 5)
    mask = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    with pytest.raises(RuntimeError, match="does not broadcast"):
        _ruled(lambda t: F.scaled_dot_product_attention(t, t, t, attn_mask=mask), F.scaled_dot_product_attention)(q)


def test_attention_runs_written_out():
    g = torch.Generator().manual_seed(0)
    q, k, v = (_rand(g, 2, 2, 3, 4).requires_grad_() for _ in range(3))
    fused = F.scaled_dot_product_attention(q, k, v).grad_fn.name()
    got = _ruled(F.scaled_dot_product_attention, F.scaled_dot_product_attention)(q, k, v).grad_fn.name()
    assert "Attention" in fused and "Attention" not in got


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), shape=st.sampled_from([(6,), (3, 6), (2, 3, 6)]), ndims=st.integers(1, 2),
       weight=st.booleans(), bias=st.booleans(), eps=st.sampled_from([1e-5, 1e-2]))
def test_layer_norm_forward_equals_torch(seed, shape, ndims, weight, bias, eps):
    g = torch.Generator().manual_seed(seed)
    ndims = min(ndims, len(shape))
    norm = shape[-ndims:]
    x = _rand(g, *shape) * 3 + 1
    w = _rand(g, *norm) if weight else None
    b = _rand(g, *norm) if bias else None
    want = F.layer_norm(x, norm, w, b, eps)
    got = _ruled(lambda t: F.layer_norm(t, norm, w, b, eps), F.layer_norm)(x)
    torch.testing.assert_close(got, want, **TOL)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), shape=st.sampled_from([(6,), (3, 6), (2, 3, 6)]), ndims=st.integers(1, 2),
       weight=st.booleans(), eps=st.sampled_from([None, 1e-6]))
def test_rms_norm_forward_equals_torch(seed, shape, ndims, weight, eps):
    g = torch.Generator().manual_seed(seed)
    ndims = min(ndims, len(shape))
    norm = shape[-ndims:]
    x = _rand(g, *shape) * 3 + 1
    w = _rand(g, *norm) if weight else None
    want = F.rms_norm(x, norm, w, eps)
    got = _ruled(lambda t: F.rms_norm(t, norm, w, eps), F.rms_norm)(x)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_norms_in_half_precision_are_normalised_in_float32(dtype):
    g = torch.Generator().manual_seed(1)
    x, w, b = _rand(g, 4, 16, dtype=dtype) * 4 + 2, _rand(g, 16, dtype=dtype), _rand(g, 16, dtype=dtype)
    layer = _ruled(lambda t: F.layer_norm(t, (16,), w, b), F.layer_norm)(x)
    rms = _ruled(lambda t: F.rms_norm(t, (16,), w), F.rms_norm)(x)
    assert layer.dtype == rms.dtype == dtype
    torch.testing.assert_close(layer, F.layer_norm(x, (16,), w, b))
    torch.testing.assert_close(rms, F.rms_norm(x, (16,), w))


def test_module_key_writes_out_that_module_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 6), nn.LayerNorm(6)).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    out = xattr.rules(model, {model[0]: Unfused()})(x)
    torch.testing.assert_close(out, model(x), **TOL)
    assert out.grad_fn.name() == "NativeLayerNormBackward0"  # the last norm: not written out
    inner = xattr.rules(model[0], {model[0]: Unfused()})(x)
    assert inner.grad_fn.name() != "NativeLayerNormBackward0"


def test_lrp_defaults_keep_their_rules_at_attention_and_norms():
    defaults = xattr.rule.lrp_rules()
    assert isinstance(defaults[F.scaled_dot_product_attention], FixedAttention)
    assert isinstance(defaults[F.layer_norm], FixedStd)
    assert isinstance(defaults[F.multi_head_attention_forward], Unfused)
