"""LRP through ``nn.MultiheadAttention``: `Unfused` runs ``F.multi_head_attention_forward`` as the
ops it is made of (NOTE: [Fused attention written out]), so the projections take `Epsilon` and
the attention `FixedAttention`. LRP raised "cannot see inside nn.MultiheadAttention" on every
model holding one (torch's transformer layers, torchvision's ViT).

Over the options ``nn.MultiheadAttention`` passes (packed or separate projections, biases,
``add_bias_kv``, ``add_zero_attn``, bool and float key-padding and attention masks of 2 and 3
dims, ``is_causal``, ``need_weights``, ``average_attn_weights``, batch-first or not, unbatched):
the written-out forward equals torch's (bit for bit without weights), LRP equals LRP of a twin
written with ``F.linear`` and ``F.scaled_dot_product_attention``, each example alone gives its
row, and the model is left as it was. Bias-free encoder layers and a small ViT conserve relevance.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr._src.unfused import Unfused
from xattr.rule import lrp_rules
from xattr.testing.vision import models

from registry import changed_state, state_snapshot

pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched", "ignore:enable_nested_tensor",
                                        "ignore:There is a performance drop",
                                        "ignore:.*train mode", "ignore:.*model.eval")
D, L, S = 8, 5, 4

OPTIONS = st.fixed_dictionaries({
    "heads": st.sampled_from([1, 2, 4]),
    "inputs": st.sampled_from(["self", "shared_kv", "distinct", "kdim"]),
    "bias": st.booleans(),
    "bias_kv": st.booleans(),
    "zero_attn": st.booleans(),
    "padding": st.sampled_from([None, "bool", "float"]),
    "mask": st.sampled_from([None, "bool2", "float2", "bool3", "float3", "causal"]),
    "need_weights": st.booleans(),
    "average": st.booleans(),
    "batch_first": st.booleans(),
})
# torch reads is_causal as SDPA's own causal mask only without key padding and weights (over the
# bias key and zero key too); otherwise the mask given holds it
CAUSAL_HINT = dict(heads=2, inputs="self", bias=True, bias_kv=True, zero_attn=True, padding=None, mask="causal",
                   need_weights=False, average=True, batch_first=False)
EVERYTHING = dict(heads=4, inputs="kdim", bias=True, bias_kv=True, zero_attn=True, padding="float", mask="bool3",
                  need_weights=True, average=False, batch_first=True)


def _randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().double().eval()


def _masks(o: dict, batch: int, tgt: int, src: int, seed: int):
    """(key_padding_mask, attn_mask, is_causal) for batch-first examples; key 0 always attended."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.rand(batch, src, generator=g) < 0.4
    hidden[:, 0] = False
    padding = {"bool": hidden, "float": hidden.double() * -1e4 + 0.1 * _randn(batch, src, seed=seed)}.get(o["padding"])
    shape = (tgt, src) if o["mask"] in ("bool2", "float2") else (batch * o["heads"], tgt, src)
    blocked = torch.rand(*shape, generator=g) < 0.4
    blocked[..., 0] = False
    mask = {"bool2": blocked, "bool3": blocked, "float2": _randn(*shape, seed=seed + 1), "float3": _randn(*shape, seed=seed + 1),
            "causal": nn.Transformer.generate_square_subsequent_mask(tgt, dtype=torch.float64)}.get(o["mask"])
    return padding, mask, o["mask"] == "causal"


def _attention(o: dict) -> nn.MultiheadAttention:
    kdim, vdim = (6, 4) if o["inputs"] == "kdim" else (None, None)
    return nn.MultiheadAttention(D, o["heads"], bias=o["bias"], add_bias_kv=o["bias_kv"], add_zero_attn=o["zero_attn"],
                                 kdim=kdim, vdim=vdim, batch_first=o["batch_first"])


# ----------------------------------------------------------------------------- the forward


@settings(max_examples=4 * settings.default.max_examples)  # ten options: more draws, each one cheap
@given(OPTIONS, st.booleans())
@example(CAUSAL_HINT, False)
@example(dict(CAUSAL_HINT, need_weights=True, padding="bool"), True)
@example(EVERYTHING, True)
@example(EVERYTHING, False)
def test_written_out_forward_equals_torch(o, unbatched):
    """Output and weights as F.multi_head_attention_forward returns them: bit for bit without
    weights (torch calls SDPA itself), to 1e-12 with them (torch forms the weights explicitly)."""
    att = _seeded(1, lambda: _attention(o))
    tgt, src = (L, L) if o["mask"] == "causal" or o["inputs"] == "self" else (L, S)
    batch = 1 if unbatched else 3

    def laid_out(t):
        return t[0] if unbatched else t if o["batch_first"] else t.transpose(0, 1)

    query = laid_out(_randn(batch, tgt, D, seed=2))
    key = query if o["inputs"] == "self" else laid_out(_randn(batch, src, 6 if o["inputs"] == "kdim" else D, seed=3))
    value = laid_out(_randn(batch, src, 4 if o["inputs"] == "kdim" else D, seed=4))
    value = key if o["inputs"] in ("self", "shared_kv") else value
    padding, mask, causal = _masks(o, batch, tgt, src, seed=5)
    padding = padding[0] if unbatched and padding is not None else padding

    def call(q, k, v):
        return att(q, k, v, key_padding_mask=padding, attn_mask=mask, is_causal=causal, need_weights=o["need_weights"],
                   average_attn_weights=o["average"])

    want = call(query, key, value)
    got = xattr.rules(call, {F.multi_head_attention_forward: Unfused()})(query, key, value)
    if o["need_weights"]:
        torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-14)
        assert torch.equal(got[1], want[1])
    else:
        assert torch.equal(got[0], want[0]) and got[1] is None and want[1] is None


def test_unsupported_calls_raise_clearly():
    """Dropout in training mode is random: refused, as the fused call was. A rule other than
    Unfused or Refuse at the fused call still says what applies there."""
    att = _seeded(2, lambda: nn.MultiheadAttention(D, 2, dropout=0.1, batch_first=True)).train()
    x = _randn(2, L, D, seed=3)
    f = lambda t: att(t, t, t)[0].sum((1, 2))  # noqa: E731
    with pytest.raises(NotImplementedError, match="dropout 0.1 in training mode"):
        xattr.lrp(f)(x)
    with pytest.raises(NotImplementedError, match="one fused call whose tensors no rule sees"):
        xattr.grad(xattr.rules(f, {F.multi_head_attention_forward: xattr.rule.Block()}))(x)


# ----------------------------------------------------------------------------- LRP against a hand-written twin


class Attend(nn.Module):
    """x (B, L, D) -> query, key, value as ``o["inputs"]`` says -> attention -> a linear head.
    ``twin=True`` computes the same attention with F.linear and F.scaled_dot_product_attention."""

    def __init__(self, o: dict):
        super().__init__()
        self.o, self.twin = o, False
        self.att = _attention(o)
        self.k, self.v = nn.Linear(D, 6 if o["inputs"] == "kdim" else D), nn.Linear(D, 4 if o["inputs"] == "kdim" else D)
        self.head = nn.Linear(D, 3)
        mask2 = torch.rand(L, L, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
        self.register_buffer("mask2", mask2.index_fill(1, torch.tensor([0]), 0.0))  # one for every example

    def forward(self, x, hidden, mask3):
        o = self.o
        q = x
        k = x if o["inputs"] == "self" else torch.tanh(self.k(x))
        v = k if o["inputs"] in ("self", "shared_kv") else F.relu(self.v(x))
        padding = {"bool": hidden, "float": hidden.double() * -1e4}.get(o["padding"])
        mask3 = mask3.flatten(0, 1)
        mask = {"bool2": self.mask2 > 0.5, "float2": self.mask2, "bool3": mask3 > 0.5, "float3": mask3,
                "causal": nn.Transformer.generate_square_subsequent_mask(L, dtype=x.dtype)}.get(o["mask"])
        if self.twin:
            out = self.written(q, k, v, padding, mask)
        else:
            if not o["batch_first"]:
                q, k, v = (t.transpose(0, 1) for t in (q, k, v))
            out = self.att(q, k, v, key_padding_mask=padding, attn_mask=mask, is_causal=o["mask"] == "causal",
                           need_weights=o["need_weights"], average_attn_weights=o["average"])[0]
            out = out if o["batch_first"] else out.transpose(0, 1)
        return self.head(F.relu(out).mean(1))

    def written(self, q, k, v, padding, mask):
        """The attention with the module's weights, batch first, in (B, H, L, d)."""
        a, o, h = self.att, self.o, self.o["heads"]
        b = [None] * 3 if a.in_proj_bias is None else a.in_proj_bias.chunk(3)
        w = a.in_proj_weight.chunk(3) if a.in_proj_weight is not None else (a.q_proj_weight, a.k_proj_weight, a.v_proj_weight)
        q, k, v = (F.linear(t, wi, bi) for t, wi, bi in zip((q, k, v), w, b))
        n = q.shape[0]
        if a.bias_k is not None:
            k = torch.cat([k, a.bias_k.transpose(0, 1).expand(n, 1, D)], 1)
            v = torch.cat([v, a.bias_v.transpose(0, 1).expand(n, 1, D)], 1)
        if a.add_zero_attn:
            k, v = torch.cat([k, k.new_zeros(n, 1, D)], 1), torch.cat([v, v.new_zeros(n, 1, D)], 1)
        extra = k.shape[1] - L
        q, k, v = (t.unflatten(-1, (h, D // h)).transpose(1, 2) for t in (q, k, v))
        if o["mask"] == "causal" and padding is None and not o["need_weights"]:
            heads = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # torch's own reading of the hint
        else:
            add = torch.zeros(n, h, L, L + extra, dtype=q.dtype)
            if mask is not None:
                mask = _additive(mask)
                add = add + F.pad(mask.reshape(-1, h, L, L) if mask.ndim == 3 else mask, (0, extra))
            if padding is not None:
                add = add + F.pad(_additive(padding), (0, extra))[:, None, None, :]
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=add)
        return F.linear(heads.transpose(1, 2).flatten(2), a.out_proj.weight, a.out_proj.bias)


def _additive(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask (True: not attended) as an additive float one."""
    return torch.zeros_like(mask, dtype=torch.float64).masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else mask


def _attend_inputs(o: dict, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.rand(batch, L, generator=g) < 0.4
    hidden[:, 0] = False
    mask3 = torch.rand(batch, o["heads"], L, L, generator=g, dtype=torch.float64)
    mask3[..., 0] = 0.0  # key 0 never blocked by a bool mask (> 0.5)
    return _randn(batch, L, D, seed=seed), hidden, mask3


@settings(max_examples=3 * settings.default.max_examples)
@given(OPTIONS)
@example(CAUSAL_HINT)
@example(dict(CAUSAL_HINT, need_weights=True))
@example(EVERYTHING)
def test_lrp_equals_the_twin_and_each_example_alone(o):
    model = _seeded(7, lambda: Attend(o))
    x, hidden, mask3 = _attend_inputs(o, 3, seed=8)
    f = xattr.target(model, 1)
    before = state_snapshot(model, x)
    got = xattr.lrp(f, composite=lrp_rules(1e-12))(x, hidden, mask3)
    assert changed_state(before, state_snapshot(model, x)) == []
    attr = xattr.lrp(f, composite=lrp_rules(1e-12))
    alone = torch.cat([attr(x[j : j + 1], hidden[j : j + 1], mask3[j : j + 1]) for j in range(3)])
    torch.testing.assert_close(alone, got, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        out = model(x, hidden, mask3)
        model.twin = True
        torch.testing.assert_close(model(x, hidden, mask3), out, rtol=1e-12, atol=1e-13)  # the twin is the same function
    want = xattr.lrp(f, composite=lrp_rules(1e-12))(x, hidden, mask3)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(got).all() and got.abs().sum() > 0


def test_lrp_under_vmap_equals_the_batch():
    o = dict(heads=2, inputs="shared_kv", bias=True, bias_kv=True, zero_attn=True, padding="bool", mask="float3",
             need_weights=True, average=False, batch_first=False)
    model = _seeded(9, lambda: Attend(o))
    x, hidden, mask3 = _attend_inputs(o, 3, seed=10)
    attr = xattr.lrp(xattr.target(model, 2), composite=lrp_rules(1e-12))
    mapped = torch.func.vmap(lambda r, h, m: attr(r[None], h[None], m[None])[0])(x, hidden, mask3)
    torch.testing.assert_close(mapped, attr(x, hidden, mask3), rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- conservation


class Encoder(nn.Module):
    """A bias-free nn.TransformerEncoderLayer (or DecoderLayer on a projection of its input) and a
    linear head on the mean over positions; batch-first inputs."""

    def __init__(self, norm_first: bool, batch_first: bool, decoder: bool = False, activation="relu"):
        super().__init__()
        layer = nn.TransformerDecoderLayer if decoder else nn.TransformerEncoderLayer
        self.layer = layer(D, 2, 16, dropout=0.1, activation=activation, batch_first=batch_first, norm_first=norm_first,
                           bias=False)
        self.memory, self.head = nn.Linear(D, D, bias=False), nn.Linear(D, 3, bias=False)
        self.batch_first, self.decoder = batch_first, decoder
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.uniform_(m.weight, 0.5, 1.5)

    def forward(self, x, hidden):
        h = x if self.batch_first else x.transpose(0, 1)
        if self.decoder:
            h = self.layer(h, self.memory(h), memory_key_padding_mask=hidden)
        else:
            h = self.layer(h, src_key_padding_mask=hidden)
        h = h if self.batch_first else h.transpose(0, 1)
        return self.head(h.mean(1))


def _hidden(batch: int) -> torch.Tensor:
    hidden = torch.zeros(batch, L, dtype=torch.bool)
    hidden[1 % batch, 3:] = True
    return hidden


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("decoder", [False, True])
def test_bias_free_transformer_layers_conserve(norm_first, batch_first, decoder):
    model = _seeded(11, lambda: Encoder(norm_first, batch_first, decoder, activation="gelu" if decoder else "relu"))
    x, hidden = _randn(3, L, D, seed=12), _hidden(3)
    f = xattr.target(model, 2)
    before = state_snapshot(model, x)
    R, delta = xattr.lrp(f, composite=lrp_rules(1e-12), return_delta=True)(x, hidden)
    assert changed_state(before, state_snapshot(model, x)) == []
    with torch.no_grad():
        out = model(x, hidden)[:, 2]
    torch.testing.assert_close(R.flatten(1).sum(1), out, rtol=1e-9, atol=1e-10)
    assert delta.abs().max() < 1e-9
    alone = torch.cat([xattr.lrp(f, composite=lrp_rules(1e-12))(x[j : j + 1], hidden[j : j + 1]) for j in range(3)])
    torch.testing.assert_close(alone, R, rtol=1e-9, atol=1e-12)


def test_bias_free_vision_transformer_conserves_with_its_token_and_positions():
    """torchvision's ViT: the class token and positional embedding are parameters, so they are
    attributed as inputs here (torch.func.functional_call): the image's relevance plus theirs is
    f(x), each example alone gives its row, and the model is left as it was."""
    tv = models()
    if tv is None:
        pytest.skip("torchvision is not installed")
    model = _seeded(13, lambda: tv.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                                   mlp_dim=32, num_classes=5))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "ln" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(14))
        model.heads.head.weight.normal_(generator=torch.Generator().manual_seed(16))  # torchvision starts it at zero
    token, positions = model.class_token.detach().clone(), model.encoder.pos_embedding.detach().clone()

    def f(image, cls, pos):
        return torch.func.functional_call(model, {"class_token": cls, "encoder.pos_embedding": pos}, (image,))[:, 3]

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    cls, pos = token.expand(2, -1, -1), positions.expand(2, -1, -1)
    before = state_snapshot(model, x)
    rx, rc, rp = xattr.lrp(f, composite=lrp_rules(1e-12), argnums=(0, 1, 2))(x, cls, pos)
    assert changed_state(before, state_snapshot(model, x)) == []
    with torch.no_grad():
        out = model(x)[:, 3]
    total = rx.flatten(1).sum(1) + rc.flatten(1).sum(1) + rp.flatten(1).sum(1)
    torch.testing.assert_close(total, out, rtol=1e-9, atol=1e-10)
    assert rx.abs().sum() > rc.abs().sum()
    alone = xattr.lrp(f, composite=lrp_rules(1e-12), argnums=(0, 1, 2))(x[1:], cls[1:], pos[1:])
    for a, b in zip(alone, (rx, rc, rp)):
        torch.testing.assert_close(a, b[1:], rtol=1e-9, atol=1e-12)
