"""LRP conserves relevance across Hugging Face transformer architectures (tiny random
configurations built here, two layers, float64, a padded batch of 2 with its attention mask).

The recipe is docs/lrp.md's ("Hugging Face architectures"): `lrp_rules()` with ``F.softmax:
Block()`` (eager attention, and a mixture of experts' router: the routing weights held), relevance
taken at every embedding the model adds up (word, position, token type; position ids given per
example). On a bias-free copy (every linear, ``Conv1D`` and norm bias 0) ``sum(R) = f(x)``:

- to 1e-9 where the model computes in the model's dtype (BERT, RoBERTa, DistilBERT, ALBERT,
  ELECTRA, GPT-2, OPT, Phi, GPT-NeoX, Falcon, T5's encoder). Before, GPT-2, Phi and ALBERT missed
  by 0.02 (ALBERT) to 1.3 (GPT-2) times f(x): their GELU is written out in Python, ``0.5 * x * (1 + tanh(...))``, and the
  constant 1 of the gate took relevance as a bias (NOTE: [Activations written out]);
- to float32 rounding (1e-6) where the RMS norm casts to float32 whatever the model's dtype
  (Llama, Mistral, Qwen2, Gemma, Gemma 2, Phi-3, Mixtral, Qwen2-MoE), and to 1e-9 with those norms
  written as ``nn.RMSNorm`` in float64 (the same function);
- not at all for BLOOM as it is: its GELU is a ``torch.autograd.Function`` the rules cannot see
  into, whose backward is GELU's derivative (``x * gelu'(x)`` is not ``gelu(x)``); with that module
  swapped for ``nn.GELU(approximate="tanh")`` it conserves to 1e-9.

Each example's relevance is its own (the batch of one gives its row) and the model is left as it was.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr.testing.vision import models as vision_models

from registry import changed_state, state_snapshot

vision_models()  # before transformers: see xattr/testing/text.py
T = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore")

H, V, L = 32, 50, 8
EPS = 1e-13
D = torch.float64
LLAMA = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
             max_position_embeddings=32)
BERT = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=32)
MOE = dict(experts_implementation="eager")  # grouped_mm has no float64 kernel


def _config(name):
    """(model class, config kwargs) of each architecture."""
    return {
        "bert": (T.BertModel, T.BertConfig, BERT),
        "roberta": (T.RobertaModel, T.RobertaConfig, dict(BERT, max_position_embeddings=40)),
        "distilbert": (T.DistilBertModel, T.DistilBertConfig, dict(dim=H, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=32)),
        "albert": (T.AlbertModel, T.AlbertConfig, dict(BERT, embedding_size=16)),
        "electra": (T.ElectraModel, T.ElectraConfig, dict(BERT, embedding_size=16)),
        "gpt2": (T.GPT2Model, T.GPT2Config, dict(n_embd=H, n_layer=2, n_head=4, n_positions=32)),
        "opt": (T.OPTModel, T.OPTConfig, dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                                              word_embed_proj_dim=H, max_position_embeddings=32)),
        "phi": (T.PhiModel, T.PhiConfig, BERT),
        "gpt_neox": (T.GPTNeoXModel, T.GPTNeoXConfig, BERT),
        "falcon": (T.FalconModel, T.FalconConfig, dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4)),
        "t5_encoder": (T.T5EncoderModel, T.T5Config, dict(d_model=H, d_kv=8, d_ff=64, num_layers=2, num_heads=4)),
        "llama": (T.LlamaModel, T.LlamaConfig, LLAMA),
        "mistral": (T.MistralModel, T.MistralConfig, LLAMA),
        "qwen2": (T.Qwen2Model, T.Qwen2Config, LLAMA),
        "gemma": (T.GemmaModel, T.GemmaConfig, dict(LLAMA, head_dim=8)),
        "gemma2": (T.Gemma2Model, T.Gemma2Config, dict(LLAMA, head_dim=8)),
        "phi3": (T.Phi3Model, T.Phi3Config, dict(LLAMA, pad_token_id=0)),
        "mixtral": (T.MixtralModel, T.MixtralConfig, dict(LLAMA, num_local_experts=4, num_experts_per_tok=2, **MOE)),
        "qwen2_moe": (T.Qwen2MoeModel, T.Qwen2MoeConfig, dict(LLAMA, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                                                               num_experts=4, num_experts_per_tok=2, **MOE)),
        "bloom": (T.BloomModel, T.BloomConfig, dict(hidden_size=H, n_layer=2, n_head=4)),
    }[name]


EXACT = ["bert", "roberta", "distilbert", "albert", "electra", "gpt2", "opt", "phi", "gpt_neox", "falcon", "t5_encoder"]
FLOAT32_NORMS = ["llama", "mistral", "qwen2", "gemma", "gemma2", "phi3", "mixtral", "qwen2_moe"]
SDPA = ["bert", "gpt2", "llama", "mixtral"]  # the attention through SDPA too (FixedAttention)


def _model(name: str, impl: str = "eager") -> nn.Module:
    """The architecture, random weights (seed 0), every linear, Conv1D and norm bias zeroed, float64."""
    model_cls, config_cls, kwargs = _config(name)
    torch.manual_seed(0)
    model = model_cls(config_cls(vocab_size=V, attn_implementation=impl, **kwargs)).eval()
    with torch.no_grad():
        for m in model.modules():
            b = getattr(m, "bias", None)
            if isinstance(b, nn.Parameter):
                b.zero_()
    return model.double()


def _embeddings(model) -> list:
    """The embeddings whose sum enters the first layer (T5's encoder reads its own embed_tokens)."""
    encoder = getattr(model, "encoder", None)
    if isinstance(getattr(encoder, "embed_tokens", None), nn.Embedding):
        return [encoder.embed_tokens]
    return [m for m in model.modules() if isinstance(m, nn.Embedding)]


def _f(model):
    """f(ids, mask): component 0 of the mean of the unmasked tokens' last hidden states, position
    and token-type ids given per example where the model takes them."""
    takes = inspect.signature(model.forward).parameters
    token_types = any(isinstance(m, nn.Embedding) and "token_type" in n for n, m in model.named_modules())

    def f(ids, mask):
        extra = {}
        if "position_ids" in takes and not isinstance(model, T.OPTModel):  # OPT counts positions from the mask
            extra["position_ids"] = torch.arange(ids.shape[1]).expand_as(ids)
        if token_types:
            extra["token_type_ids"] = torch.zeros_like(ids)
        h = model(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
        w = mask[..., None].to(h.dtype)
        return ((h * w).sum(1) / w.sum(1))[:, 0]

    return f


def _inputs():
    ids = torch.randint(3, V, (2, L), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, L, dtype=torch.long)
    mask[1, 5:] = 0
    return ids, mask


def _composite() -> dict:
    composite = xattr.rule.lrp_rules(EPS)
    composite[F.softmax] = xattr.rule.Block()  # the attention weights (and a router's weights) held
    return composite


def _relevance(model, ids, mask):
    split = xattr.at_layer(_f(model), _embeddings(model))
    relevance = xattr.layer_lrp(split, composite=_composite())(ids, mask)
    relevance = relevance if isinstance(relevance, (list, tuple)) else [relevance]
    return sum(r.flatten(1).sum(1) for r in relevance)


def _gap(model) -> torch.Tensor:
    """|sum(R) - f(x)| / |f(x)| per example; checks the batch of one and the model's state too."""
    ids, mask = _inputs()
    before = state_snapshot(model, ids)
    total = _relevance(model, ids, mask)
    assert changed_state(before, state_snapshot(model, ids)) == []
    alone = _relevance(model, ids[1:], mask[1:])
    torch.testing.assert_close(alone, total[1:], rtol=1e-9, atol=1e-14)  # its batch-mate changes nothing
    with torch.no_grad():
        out = _f(model)(ids, mask)
    return ((total - out) / out).abs()


@pytest.mark.parametrize("name", EXACT)
def test_bias_free_models_conserve(name):
    assert _gap(_model(name)).max() < 1e-9


@pytest.mark.parametrize("name", SDPA)
def test_sdpa_attention_conserves_as_eager(name):
    gap = _gap(_model(name, "sdpa"))
    assert gap.max() < (1e-9 if name in EXACT else 1e-6)


def _float64_norms(model) -> nn.Module:
    """The model with each RMS norm (which casts to float32) as ``nn.RMSNorm`` in float64: the
    same function but for rounding (Gemma's scale is ``1 + weight``)."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child).__name__.endswith("RMSNorm"):
                eps = getattr(child, "variance_epsilon", getattr(child, "eps", None))
                scale = child.weight + 1 if type(child).__name__.startswith("Gemma") else child.weight
                norm = nn.RMSNorm(scale.shape[0], eps=eps).double()
                with torch.no_grad():
                    norm.weight.copy_(scale)
                setattr(parent, child_name, norm)
    return model


@pytest.mark.parametrize("name", FLOAT32_NORMS)
def test_rms_norms_in_float32_conserve_to_its_rounding(name):
    """The model's RMS norm computes in float32 (its input is cast): conserved to float32's
    rounding; with the norms in float64, to 1e-9."""
    model = _model(name)
    gap = _gap(model)
    assert 1e-12 < gap.max() < 1e-6
    assert _gap(_float64_norms(model)).max() < 1e-9


def test_bloom_gelu_is_a_function_the_rules_do_not_see():
    """BLOOM's GELU is a ``torch.autograd.Function`` (its backward is GELU's derivative, which
    the rules cannot replace): relevance is lost there. Swapped for ``nn.GELU(approximate="tanh")``
    (the same function to rounding), the model conserves."""
    model = _model("bloom")
    assert _gap(model).max() > 1e-4
    for block in model.h:
        block.mlp.gelu_impl = nn.GELU(approximate="tanh")
    assert _gap(model).max() < 1e-9


def test_gpt2_conv1d_takes_the_linear_rule():
    """GPT-2's ``Conv1D`` (``torch.addmm``) is a linear layer to the rules: LRP-epsilon at eps 0.1
    equals the model with each ``Conv1D`` an ``nn.Linear`` (before, addmm kept its gradient)."""
    model, linear = _model("gpt2"), _model("gpt2")
    for parent in list(linear.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, T.pytorch_utils.Conv1D):
                lin = nn.Linear(*child.weight.shape, dtype=D)
                with torch.no_grad():
                    lin.weight.copy_(child.weight.T)
                    lin.bias.copy_(child.bias)
                setattr(parent, child_name, lin)
    ids, mask = _inputs()
    composite = _composite()
    composite[F.linear] = xattr.rule.Epsilon(0.1)
    got = [xattr.layer_lrp(xattr.at_layer(_f(m), m.wte), composite=composite)(ids, mask) for m in (model, linear)]
    torch.testing.assert_close(got[0], got[1], rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- the shared zoo (tests/hf_zoo.py)

try:
    import hf_zoo
except ImportError:  # pragma: no cover
    hf_zoo = None
ZOO = {} if hf_zoo is None else {k: v for k, v in hf_zoo.ZOO.items() if not k.startswith(("vit:", "deit:", "swin:"))}
# hf_zoo's f gives these token-type ids, which they embed with the word embedding (called twice),
# and T5's listed embedding is `shared`, which its encoder does not call: left to the cases above
_NOT_HERE = ("gpt2:", "gpt_neo:", "gptj:", "t5_encoder:", "bloom:")


@pytest.mark.parametrize("key", sorted(ZOO))
def test_the_shared_zoo_conserves(key):
    """hf_zoo's text cases (f: the last unmasked token's state projected on a vector), bias-free:
    conserved to 1e-9, or to float32's rounding (1e-5 of f(x), which is small at some examples)
    where the RMS norm computes in float32."""
    if key.startswith(_NOT_HERE):
        pytest.skip("covered by the tests above")
    case = ZOO[key]()
    with torch.no_grad():
        for m in case.model.modules():
            if isinstance(getattr(m, "bias", None), nn.Parameter):
                m.bias.zero_()
    ids, mask, _ = case.inputs()
    relevance = xattr.layer_lrp(xattr.at_layer(case.f, case.embeddings), composite=_composite())(ids, mask)
    total = sum(r.flatten(1).sum(1) for r in relevance)
    with torch.no_grad():
        out = case.f(ids, mask)
    float32 = key.split(":")[0] in FLOAT32_NORMS
    assert ((total - out) / out).abs().max() < (1e-5 if float32 else 1e-9)


IMAGES = {} if hf_zoo is None else {k: v for k, v in hf_zoo.ZOO.items() if k.startswith(("vit:", "deit:", "swin:"))}


@pytest.mark.parametrize("key", sorted(IMAGES))
def test_the_image_models_conserve_once_their_learned_tokens_are_zero(key):
    """ViT, DeiT and Swin on pixels, bias-free: relevance at the pixels is f(x) to 1e-9 once the
    learned tokens added to the patches (CLS, distillation, position embeddings) are 0 too. Kept,
    they take relevance as biases do: on hf_zoo's random ViT (CLS norm 0.11, position embeddings
    0.46) the pixels get about 11% of f(x) (docs/lrp.md, Hugging Face architectures)."""
    case = IMAGES[key]()
    with torch.no_grad():
        for m in case.model.modules():
            if isinstance(getattr(m, "bias", None), nn.Parameter):
                m.bias.zero_()
    x, _ = case.inputs()

    def gap():
        relevance = xattr.lrp(case.f, composite=_composite())(x)
        with torch.no_grad():
            out = case.f(x)
        return ((relevance.flatten(1).sum(1) - out) / out).abs().max()

    learned = [p for n, p in case.model.named_parameters() if n.endswith(("cls_token", "distillation_token", "position_embeddings"))]
    if key.startswith("vit:"):
        assert gap() > 0.5  # the learned tokens' share
    with torch.no_grad():
        for p in learned:
            p.zero_()
    assert gap() < 1e-9
