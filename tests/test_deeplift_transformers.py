"""DeepLift through transformer blocks, exactly (opt-in): `Unfused` at attention and the norms.

With ``EXACT`` (below) every op of a transformer block is one DeepLift conserves through: the
fused ``nn.MultiheadAttention`` call and SDPA written out (NOTE: [Fused attention written out],
NOTE: [Attention and norms written out]), `Product` at ``q @ k^T`` and ``a @ v``, `ExactSoftmax`,
layer and RMS norm as means of products and ``rsqrt`` (`Rescale`), GELU and ReLU (`Rescale`).
Checked in float64: summation-to-delta to 1e-10 relative on ``nn.TransformerEncoderLayer`` (pre-
and post-norm, batch- and sequence-first, GELU and ReLU, with a causal mask), a hand-written SDPA
block (causal, bool mask, GQA, RMS norm) and torchvision's ViT, where DeepLift's defaults leave
a delta of the order of the output's change; an example alone equals its row (a reference per
example and a shared one); the model is left unchanged.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
from registry import changed_state, state_snapshot
from xattr.rule import ExactSoftmax, Unfused
from xattr.testing.vision import models as vision_models

EXACT = {F.multi_head_attention_forward: Unfused(), F.scaled_dot_product_attention: Unfused(), F.layer_norm: Unfused(),
         F.rms_norm: Unfused(), F.softmax: ExactSoftmax()}
D, L = 16, 5


def _relative_delta(f, x, baselines, mapping):
    _, delta = xattr.deep_lift(f, baselines=baselines, mapping=mapping, return_delta=True)(x)
    b = torch.zeros_like(x) if isinstance(baselines, float) else baselines
    change = f(x) - f(b.expand_as(x))
    return (delta.abs() / change.abs()).max().item()


class Encoder(nn.Module):
    """``nn.TransformerEncoderLayer`` on (B, L, D), pooled to 3 logits; float64, eval mode."""

    def __init__(self, norm_first=False, batch_first=True, activation="gelu", causal=False):
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.TransformerEncoderLayer(D, 2, 32, dropout=0.0, activation=activation, batch_first=batch_first,
                                                norm_first=norm_first)
        self.head = nn.Linear(D, 3)
        self.batch_first, self.causal = batch_first, causal
        self.double().eval()

    def forward(self, x):
        h = x if self.batch_first else x.transpose(0, 1)
        if self.causal:
            mask = nn.Transformer.generate_square_subsequent_mask(L, dtype=x.dtype)
            h = self.layer(h, src_mask=mask, is_causal=True)
        else:
            h = self.layer(h)
        h = h if self.batch_first else h.transpose(0, 1)
        return self.head(h.mean(1))


class Block(nn.Module):
    """A pre-norm block written by hand: RMS norm, q k v, ``F.scaled_dot_product_attention`` (causal,
    a bool mask, or GQA: 4 query heads on 2 key-value heads), an output map, a GELU MLP after a
    layer norm, residuals, 3 logits from the last token; float64."""

    def __init__(self, attention="causal"):
        super().__init__()
        torch.manual_seed(1)
        self.attention, self.kv_heads = attention, 2 if attention == "gqa" else 4
        self.norm1, self.norm2 = nn.RMSNorm(D), nn.LayerNorm(D)
        self.q, self.kv = nn.Linear(D, D), nn.Linear(D, 2 * D // 4 * self.kv_heads)
        self.out, self.mlp = nn.Linear(D, D), nn.Sequential(nn.Linear(D, 32), nn.GELU(), nn.Linear(32, D))
        self.head = nn.Linear(D, 3)
        self.double().eval()

    def forward(self, x):
        b, n = x.shape[:2]
        h = self.norm1(x)
        q = self.q(h).view(b, n, 4, D // 4).transpose(1, 2)
        k, v = self.kv(h).view(b, n, 2, self.kv_heads, D // 4).permute(2, 0, 3, 1, 4)
        if self.attention == "mask":
            mask = torch.ones(n, n, dtype=torch.bool).tril().index_fill(1, torch.tensor([2]), False)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.attention == "gqa")
        x = x + self.out(a.transpose(1, 2).reshape(b, n, D))
        x = x + self.mlp(self.norm2(x))
        return self.head(x[:, -1])


ENCODERS = [dict(norm_first=nf, batch_first=bf, activation=act) for nf in (False, True) for bf in (True, False)
            for act in ("gelu", "relu")] + [dict(causal=True), dict(norm_first=True, batch_first=False, causal=True)]


def _inputs(seed=0, batch=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, L, D, generator=g, dtype=torch.float64), torch.randn(batch, L, D, generator=g, dtype=torch.float64) * 0.3


@pytest.mark.parametrize("options", ENCODERS, ids=str)
def test_encoder_layer_sums_to_delta(options):
    model = Encoder(**options)
    x, b = _inputs()
    f = xattr.target(model, 1)
    assert _relative_delta(f, x, b, EXACT) < 1e-10
    assert _relative_delta(f, x, 0.0, EXACT) < 1e-10
    assert _relative_delta(f, x, b, None) > 1e-3  # the defaults: attention and layer norm keep their gradient


@pytest.mark.parametrize("attention", ["causal", "mask", "gqa"])
def test_hand_written_attention_block_sums_to_delta(attention):
    model = Block(attention)
    x, b = _inputs(1)
    f = xattr.target(model, 0)
    assert _relative_delta(f, x, b, EXACT) < 1e-10
    assert _relative_delta(f, x, b, None) > 1e-3


def test_vision_transformer_sums_to_delta():
    tv = vision_models()
    if tv is None:
        pytest.skip("torchvision is not installed")
    torch.manual_seed(2)
    vit = tv.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                               num_classes=5).double().eval()
    with torch.no_grad():
        vit.heads.head.weight.normal_(0, 0.3)  # torchvision starts the head at zero
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
    f = xattr.target(vit, 1)
    assert _relative_delta(f, x, 0.0, EXACT) < 1e-10
    assert _relative_delta(f, x, 0.0, None) > 1e-3


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_example"])
@pytest.mark.parametrize("model", [Encoder(norm_first=True, batch_first=False), Block("causal")], ids=["encoder", "block"])
def test_an_example_alone_equals_its_row(model, shared):
    x, b = _inputs(3)
    base = b[:1] if shared else b
    f = xattr.target(model, 2)
    batch = xattr.deep_lift(f, baselines=base, mapping=EXACT)(x)
    for i in range(len(x)):
        alone = xattr.deep_lift(f, baselines=base[:1] if shared else base[i : i + 1], mapping=EXACT)(x[i : i + 1])
        torch.testing.assert_close(alone, batch[i : i + 1], atol=1e-12, rtol=1e-10)


def test_model_is_left_unchanged():
    model = Encoder(norm_first=True)
    x, b = _inputs(4)
    before = state_snapshot(model, x)
    xattr.deep_lift(xattr.target(model, 0), baselines=b, mapping=EXACT)(x)
    assert changed_state(before, state_snapshot(model, x)) == []
