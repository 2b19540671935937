"""A zoo of Hugging Face transformer architectures, tiny random configurations, for attribution tests.

Each entry builds its model from a config alone (nothing is downloaded): seed 0, float64, eval
mode, 2 layers, hidden 32, 4 heads (grouped or multi-query key/values where the architecture has
them), vocabulary 100. Import this module after ``xattr.testing.vision.models()`` has run once
(see xattr/testing/text.py); it does so itself, and `transformers` is None when it is missing.

Interface (kept stable; tests/test_deeplift_hf_zoo.py and tests/test_lrp_hf_zoo.py use it):

``ZOO: dict[str, Callable[[], Case]]``, keyed ``"<architecture>:<attention>"`` with attention
``"eager"`` or ``"sdpa"`` (for example ``"llama:sdpa"``). Calling an entry builds a fresh `Case`:

- ``case.model``: the ``nn.Module`` (float64, eval);
- ``case.kind``: ``"text"`` or ``"image"``;
- ``case.embedding``: the module to attribute at: the input (word) embedding of a text model, the
  patch embedding of an image model; ``case.embeddings`` lists every embedding a text model adds
  into its first layer (word, position, token type), for methods that take relevance at all of them;
- text: ``case.f(ids, mask)``, one number per example: the last hidden state at the example's last
  unmasked token projected onto a fixed random vector (a classification head's logit where
  ``case.head`` is set); position ids (and token-type ids) are given per example where the model
  takes them. ``case.inputs()`` returns ``(ids, mask, ref_ids)``: a batch of 2 of length 8, the
  second padded on the right after 5 tokens, and the reference with every unmasked token
  replaced by token 1 (padding kept);
- image: ``case.f(x)``, one logit per example, and ``case.inputs()`` returns ``(x, ref)``: 2 images
  3x16x16 (Swin: 3x32x32) and a reference of one smoothed image.

``SKIP`` maps an architecture whose class the installed transformers lacks to the reason.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import torch
from torch import nn

import xattr
from xattr.testing.text import transformers_module

transformers = transformers_module()  # offline, torchvision's import first; None when missing

H, V, L, B = 32, 100, 8, 2
PAD, REF_TOKEN = 0, 1
LLAMA = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
             max_position_embeddings=32, pad_token_id=PAD)
BERT = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=40,
            pad_token_id=PAD)
MOE = dict(experts_implementation="eager")  # grouped_mm has no float64 kernel
VIT = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=64, num_labels=3)


@dataclasses.dataclass
class Case:
    """One built model of the zoo (see the module docstring)."""

    name: str
    attn: str
    model: nn.Module
    kind: str
    embedding: nn.Module
    embeddings: list
    f: Callable
    inputs: Callable
    head: bool = False


# name: (model class, config class, config kwargs, attention implementations, head?)
_TEXT = {
    "bert": ("BertForSequenceClassification", "BertConfig", dict(BERT, num_labels=2), ("eager", "sdpa"), True),
    "roberta": ("RobertaModel", "RobertaConfig", dict(BERT, pad_token_id=1), ("eager", "sdpa"), False),
    "distilbert": ("DistilBertModel", "DistilBertConfig",
                   dict(dim=H, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=32, pad_token_id=PAD),
                   ("eager", "sdpa"), False),
    "albert": ("AlbertModel", "AlbertConfig", dict(BERT, embedding_size=16), ("eager", "sdpa"), False),
    "electra": ("ElectraForSequenceClassification", "ElectraConfig", dict(BERT, embedding_size=16, num_labels=2),
                ("eager", "sdpa"), True),
    "gpt2": ("GPT2Model", "GPT2Config", dict(n_embd=H, n_layer=2, n_head=4, n_positions=32, pad_token_id=PAD),
             ("eager", "sdpa"), False),
    "gpt_neo": ("GPTNeoModel", "GPTNeoConfig",
                dict(hidden_size=H, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]], window_size=4,
                     max_position_embeddings=32, intermediate_size=64, pad_token_id=PAD), ("eager",), False),
    "gptj": ("GPTJModel", "GPTJConfig", dict(n_embd=H, n_layer=2, n_head=4, rotary_dim=4, n_positions=32, n_inner=64,
                                             pad_token_id=PAD), ("eager",), False),
    "gpt_neox": ("GPTNeoXModel", "GPTNeoXConfig", dict(BERT, max_position_embeddings=32), ("eager", "sdpa"), False),
    "opt": ("OPTModel", "OPTConfig", dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                                          word_embed_proj_dim=H, max_position_embeddings=32, pad_token_id=PAD),
            ("eager", "sdpa"), False),
    "bloom": ("BloomModel", "BloomConfig", dict(hidden_size=H, n_layer=2, n_head=4, pad_token_id=PAD), ("eager",), False),
    "falcon": ("FalconModel", "FalconConfig", dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                                                   pad_token_id=PAD), ("eager", "sdpa"), False),
    "phi": ("PhiModel", "PhiConfig", dict(BERT, max_position_embeddings=32), ("eager", "sdpa"), False),
    "t5_encoder": ("T5EncoderModel", "T5Config", dict(d_model=H, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                                      pad_token_id=PAD), ("eager", "sdpa"), False),
    "llama": ("LlamaModel", "LlamaConfig", LLAMA, ("eager", "sdpa"), False),
    "mistral": ("MistralModel", "MistralConfig", dict(LLAMA, sliding_window=4), ("eager", "sdpa"), False),
    "qwen2": ("Qwen2Model", "Qwen2Config", dict(LLAMA, use_sliding_window=True, sliding_window=4, max_window_layers=1),
              ("eager", "sdpa"), False),
    "gemma": ("GemmaModel", "GemmaConfig", dict(LLAMA, head_dim=8), ("eager", "sdpa"), False),
    "phi3": ("Phi3Model", "Phi3Config", LLAMA, ("eager", "sdpa"), False),
    "mixtral": ("MixtralModel", "MixtralConfig", dict(LLAMA, num_local_experts=4, num_experts_per_tok=2, **MOE),
                ("eager", "sdpa"), False),
    "qwen2_moe": ("Qwen2MoeModel", "Qwen2MoeConfig",
                  dict(LLAMA, moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4,
                       num_experts_per_tok=2, **MOE), ("eager", "sdpa"), False),
}

_IMAGE = {
    "vit": ("ViTForImageClassification", "ViTConfig", VIT, ("eager", "sdpa"), 16),
    "deit": ("DeiTForImageClassification", "DeiTConfig", VIT, ("eager", "sdpa"), 16),
    "swin": ("SwinForImageClassification", "SwinConfig",
             dict(image_size=32, patch_size=2, num_channels=3, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                  window_size=4, num_labels=3), ("eager",), 32),
}

SKIP: dict[str, str] = {}


def _build(model_name, config_name, kwargs, attn):
    """The model of that config, seed 0, eval mode, float64."""
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(attn_implementation=attn, **kwargs)
    return getattr(transformers, model_name)(config).eval().double()


def text_inputs(model):
    """The inputs of a text case: ids of a padded batch (the second example padded after 5
    tokens), its mask, and the reference: the reference token at every unpadded position."""

    def inputs():
        ids = torch.randint(3, V, (B, L), generator=torch.Generator().manual_seed(1))
        mask = torch.ones(B, L, dtype=torch.long)
        mask[1, 5:] = 0
        pad = model.config.pad_token_id if model.config.pad_token_id is not None else PAD
        ids = ids.masked_fill(mask == 0, pad)
        ref = ids.masked_fill(mask == 1, REF_TOKEN)
        return ids, mask, ref

    return inputs


def deep_lift_gap(case, mapping, f, min_change: float) -> tuple:
    """|delta| / |f(x) - f(b)| of DeepLift (layer DeepLift at the word embeddings for text, with
    the mask f's second argument), the largest over the examples, and the attributions; every
    example's change must exceed ``min_change``."""
    kw = {} if mapping is None else {"mapping": mapping}
    if case.kind == "text":
        ids, mask, ref = case.inputs()
        attr, delta = xattr.layer_deep_lift(xattr.at_layer(f, case.embedding), baselines=ref, return_delta=True, **kw)(ids, mask)
        with torch.no_grad():
            gap = f(ids, mask) - f(ref, mask)
    else:
        x, ref = case.inputs()
        attr, delta = xattr.deep_lift(f, baselines=ref, return_delta=True, **kw)(x)
        with torch.no_grad():
            gap = f(x) - f(ref)
    assert gap.abs().min() > min_change
    return (delta.abs() / gap.abs()).max().item(), attr


def _text_case(name, attn) -> Case:
    model_name, config_name, kwargs, _, head = _TEXT[name]
    model = _build(model_name, config_name, dict(kwargs, vocab_size=V), attn)
    encoder = getattr(model, "encoder", None)
    word = getattr(encoder, "embed_tokens", None) or model.get_input_embeddings()  # T5's encoder: its own copy
    base = getattr(model, model.base_model_prefix, model)
    takes = inspect.signature(base.forward).parameters
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    embeddings = [word] + [m for m in embeddings if m is not word and "relative" not in _path(model, m)]
    token_types = "token_type_ids" in takes and any("token_type" in n for n, m in model.named_modules())
    positions = "position_ids" in takes and name != "opt"  # OPT counts positions from the mask
    w = torch.randn(H, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def f(ids, mask):
        out = model(input_ids=ids, attention_mask=mask, **id_inputs(ids, positions, token_types))
        if head:
            return out.logits[:, 1]
        last = mask.sum(1) - 1
        return out.last_hidden_state[torch.arange(ids.shape[0]), last] @ w

    return Case(name, attn, model, "text", word, embeddings, f, text_inputs(model), head)


def id_inputs(ids, positions: bool, token_types: bool) -> dict:
    """The position ids (0, 1, ... per row) and zero token-type ids a text model takes, as asked."""
    extra = {}
    if positions:
        extra["position_ids"] = torch.arange(ids.shape[1]).expand_as(ids)
    if token_types:
        extra["token_type_ids"] = torch.zeros_like(ids)
    return extra


def _path(model, module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def _image_case(name, attn) -> Case:
    model_name, config_name, kwargs, _, size = _IMAGE[name]
    model = _build(model_name, config_name, kwargs, attn)
    patches = model.get_input_embeddings()

    def f(x):
        return model(pixel_values=x).logits[:, 0]

    def inputs():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(B, 3, size, size, generator=g, dtype=torch.float64)
        ref = torch.nn.functional.avg_pool2d(x[:1], 5, stride=1, padding=2, count_include_pad=False)
        return x, ref

    return Case(name, attn, model, "image", patches, [patches], f, inputs, True)


def _entries() -> dict:
    zoo = {}
    if transformers is None:
        return zoo
    for table, build in ((_TEXT, _text_case), (_IMAGE, _image_case)):
        for name, (model_name, config_name, _, attns, _) in table.items():
            if not (hasattr(transformers, model_name) and hasattr(transformers, config_name)):
                SKIP[name] = f"transformers {transformers.__version__} has no {model_name}"
                continue
            for attn in attns:
                zoo[f"{name}:{attn}"] = (lambda n=name, a=attn, b=build: b(n, a))
    return zoo


ZOO: dict[str, Callable[[], Case]] = _entries()


class float64_throughout(torch.overrides.TorchFunctionMode):
    """Within it a float64 tensor is never cast down to float32: ``x.to(torch.float32)``,
    ``x.float()`` and ``softmax(..., dtype=torch.float32)`` keep float64. Hugging Face's RMS norms,
    eager softmax and some attention scores compute in float32 whatever the model's dtype, which
    rounds a float64 model's output to about 1e-7; inside this mode the model is the same
    function in float64 throughout. Enter it inside the attributed function (`in_float64`), so
    that it sees each call before xattr's rules do."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if args and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.float64:
            if func is torch.Tensor.float:
                return args[0]
            if kwargs.get("dtype") == torch.float32:
                kwargs["dtype"] = torch.float64
            if func is torch.Tensor.to:
                args = tuple(torch.float64 if a is torch.float32 else a for a in args)
        return func(*args, **kwargs)


def in_float64(f: Callable) -> Callable:
    """f run inside `float64_throughout`."""

    def run(*args):
        with float64_throughout():
            return f(*args)

    return run
