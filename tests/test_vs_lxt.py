"""Conformance with LXT 2.1 (the AttnLRP authors' library, efficient mode), run live; every test
skips where lxt is not installed (CI).

Tiny random-weight Hugging Face models built from configs, float64: xattr's relevance at the input
embeddings under ``xattr.rule.attn_lrp_rules`` against LXT's ``inputs_embeds * inputs_embeds.grad``
after ``monkey_patch`` (benchmarks/lxt_workloads.py has the settings and why each is needed). LXT
patches classes for the whole process; `lxt_patched` restores them, which is checked here too.
LXT's BERT patch (a copy of transformers 4's modeling_bert) does not import under transformers 5
and is not compared.
"""

import pytest
import torch
import torch.nn.functional as F

import xattr
from xattr import rule as xr

pytest.importorskip("lxt")
from benchmarks.lxt_workloads import (  # noqa: E402
    LxtPass,
    gpt2_patches,
    last_logit,
    llama_patches,
    lxt_patched,
    lxt_relevance,
    lxt_rules,
    tiny_llama,
)

D = torch.float64
TOKEN = 3


def _ids(batch=2, length=7, vocab=50):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


def _gap(ours, theirs) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def _last(out):
    return out.logits[:, -1, TOKEN]


def _gpt2(transformers, activation, attn):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                                     eos_token_id=0, activation_function=activation, attn_implementation=attn)  # fmt: skip
    return transformers.GPT2LMHeadModel(config).to(D).eval()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_llama_equals_lxt_bit_for_bit_with_its_settings(lxt_transformers, attn):
    """eps = 0 (LXT's linear layers keep their gradient) and LXT's ``x + 1e-10`` at SiLU: the same
    numbers to the last bit; with xattr's `Pass` they differ by LXT's stabiliser alone (about 1e-8
    of the largest relevance here), with the default eps 1e-9 by about 1e-6."""
    model = tiny_llama(attn=attn)
    e = model.model.embed_tokens(_ids()).detach()
    theirs = lxt_relevance(model, llama_patches(), e, _last)
    f = last_logit(model, TOKEN)
    assert torch.equal(xattr.lrp(f, composite=lxt_rules())(e), theirs)
    with_pass = _gap(xattr.lrp(f, composite=xr.attn_lrp_rules(0.0))(e), theirs)
    with_eps = _gap(xattr.lrp(f, composite=xr.attn_lrp_rules())(e), theirs)
    assert 1e-12 < with_pass < 1e-7
    assert 1e-8 < with_eps < 1e-5
    # the relevance is not the plain input times gradient: the rules change it
    grad_x_input = xattr.input_x_gradient(f)(e)
    assert _gap(grad_x_input, theirs) > 1e-2


def test_llama_padded_batch_and_layer_lrp(lxt_transformers):
    """Relevance taken at the embedding layer (`layer_lrp`), a right-padded batch with its mask,
    each example's last real token explained: LXT's numbers; the padding takes none in both.
    (Left padding gives nan logits in float64 in transformers itself: a fully masked query row
    of finfo.min plus its scores overflows to -inf.)"""
    model = tiny_llama()
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    last = mask.sum(1) - 1
    rows = torch.arange(len(ids))
    e = model.model.embed_tokens(ids).detach()
    theirs = lxt_relevance(model, llama_patches(), e, lambda out: out.logits[rows, last, TOKEN], attention_mask=mask)

    def f(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits[rows, last, TOKEN]

    ours = xattr.layer_lrp(xattr.at_layer(f, model.model.embed_tokens), composite=lxt_rules())(ids, mask)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-13 * float(theirs.abs().max()))
    assert not theirs[1, 5:].any() and theirs[1, :5].abs().sum(-1).min() > 0


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_gpt2_equals_lxt(lxt_transformers, attn):
    """GPT-2 (``Conv1D`` linears, layer norms): with erf GELU and LXT's stabiliser equal to
    rounding (LXT writes the layer norm out, ``(x - mean) / std`` with std detached: the centring
    keeps its gradient, as `FixedStd`'s does); with ``gelu_new`` (written out, its gate held by
    xattr, divided by ``x + 1e-10`` in LXT) they differ by the stabiliser only."""
    model = _gpt2(lxt_transformers, "gelu", attn)
    e = model.transformer.wte(_ids()).detach()
    theirs = lxt_relevance(model, gpt2_patches(), e, _last)
    assert _gap(xattr.lrp(last_logit(model, TOKEN), composite=lxt_rules())(e), theirs) < 1e-13
    model = _gpt2(lxt_transformers, "gelu_new", attn)
    theirs = lxt_relevance(model, gpt2_patches(), e, _last)
    assert 1e-12 < _gap(xattr.lrp(last_logit(model, TOKEN), composite=lxt_rules())(e), theirs) < 1e-7


def test_lxt_patches_are_undone(lxt_transformers):
    """LXT's monkey_patch changes torch.nn.Dropout, torch.nn.LayerNorm and the model classes for
    the whole process; `lxt_patched` puts every attribute back, so no other test sees it."""
    modeling, patch_map = gpt2_patches()
    llama, llama_map = llama_patches()
    watched = [torch.nn.Dropout, torch.nn.LayerNorm, modeling, llama, llama.LlamaMLP, llama.LlamaRMSNorm]
    before = [dict(vars(t)) for t in watched]
    for patches in ((modeling, patch_map), (llama, llama_map)):
        with lxt_patched(*patches):
            changed = [t for t, b in zip(watched, before) if dict(vars(t)) != b]
            assert torch.nn.Dropout in changed  # the patch did act
    after = [dict(vars(t)) for t in watched]
    for t, b, a in zip(watched, before, after):
        assert a.keys() == b.keys() and all(a[k] is b[k] for k in b), t


def test_lxt_pass_is_pass_but_for_the_stabiliser():
    """`LxtPass` hands back ``g * phi(x) / (x + 1e-10)``: by hand on SiLU."""
    x = torch.tensor([[-2.0, -1e-3, 0.5, 3.0]], dtype=D)
    w = torch.tensor([0.3, -1.0, 2.0, 0.7], dtype=D)

    def f(x):
        return (F.silu(x) * w).sum(-1)

    r = xattr.lrp(f, composite={F.silu: LxtPass()})(x)
    torch.testing.assert_close(r, x * w * F.silu(x) / (x + 1e-10), rtol=1e-15, atol=0)
    r_pass = xattr.lrp(f, composite={F.silu: xr.Pass()})(x)
    torch.testing.assert_close(r_pass, w * F.silu(x), rtol=1e-15, atol=0)
