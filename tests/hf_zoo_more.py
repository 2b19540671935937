"""27 more Hugging Face architectures for attribution tests, beside tests/hf_zoo.py's 24.

The same interface and conventions as hf_zoo (its `Case`, `in_float64`, seeds and sizes; read its
docstring): seed 0, float64, eval mode, tiny random configurations (2 layers, hidden 32, 4 heads
where the architecture has them), vocabulary 100. ``ZOO`` maps ``"<architecture>:<attention>"``
to a builder of a fresh `Case`; ``SKIP`` names what the installed transformers lacks. Beside
hf_zoo's text and image cases there is ``case.kind == "audio"``: Whisper's encoder, ``case.f(x)``
on log-mel features ``(2, 8, 16)``, ``case.inputs()`` returning ``(x, ref)`` as an image case does.
Text models read through an encoder (BART, mBART) are called through it; XLNet's f embeds the ids
itself and passes ``inputs_embeds`` (see `_TEXT`). An image case's ``embedding`` is its first
convolution (the patch embedding); CLIP's vision tower, which has no classifier, gives its pooled
state projected on a fixed vector.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from hf_zoo import BERT, LLAMA, PAD, VIT, B, Case, H, V, _build, _path, id_inputs, text_inputs, transformers

GPT = dict(n_embd=H, n_layer=2, n_head=4, n_positions=32, pad_token_id=PAD)
SEQ2SEQ = dict(d_model=H, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
               encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32, pad_token_id=PAD)

# name: (model class, config class, config kwargs, attention implementations, called through)
# "called through": the attribute of the model whose forward f calls (None: the model itself); "embeds":
# f embeds the ids itself and passes ``inputs_embeds`` (XLNet embeds ids sequence-first, ``(L, B, D)``,
# where a layer method cannot attribute; its ``inputs_embeds`` are batch-first, the same function)
_TEXT = {
    "xlnet": ("XLNetModel", "XLNetConfig", dict(d_model=H, n_layer=2, n_head=4, d_inner=64, pad_token_id=PAD),
              ("eager",), "embeds"),
    "longformer": ("LongformerModel", "LongformerConfig", dict(BERT, attention_window=4, pad_token_id=1), ("eager",), None),
    "funnel": ("FunnelModel", "FunnelConfig", dict(block_sizes=[1, 1], num_decoder_layers=1, d_model=H, n_head=4, d_head=8,
                                                   d_inner=64, pad_token_id=PAD), ("eager",), None),
    "mpnet": ("MPNetModel", "MPNetConfig", dict(BERT, pad_token_id=1), ("eager",), None),
    "deberta": ("DebertaModel", "DebertaConfig", dict(BERT, relative_attention=True, pos_att_type=["c2p", "p2c"],
                                                      max_relative_positions=16), ("eager",), None),
    "deberta_v2": ("DebertaV2Model", "DebertaV2Config",
                   dict(BERT, relative_attention=True, pos_att_type=["c2p", "p2c"], position_buckets=8,
                        norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False), ("eager",), None),
    "convbert": ("ConvBertModel", "ConvBertConfig", dict(BERT, embedding_size=H, head_ratio=2, conv_kernel_size=3),
                 ("eager",), None),
    "big_bird": ("BigBirdModel", "BigBirdConfig", dict(BERT, attention_type="original_full"), ("eager",), None),
    "codegen": ("CodeGenModel", "CodeGenConfig", dict(GPT, rotary_dim=4, n_inner=64), ("eager",), None),
    "gpt_bigcode": ("GPTBigCodeModel", "GPTBigCodeConfig", dict(GPT, multi_query=True), ("eager", "sdpa"), None),
    "bart": ("BartModel", "BartConfig", SEQ2SEQ, ("eager", "sdpa"), "encoder"),
    "mbart": ("MBartModel", "MBartConfig", SEQ2SEQ, ("eager",), "encoder"),
    "clip_text": ("CLIPTextModel", "CLIPTextConfig",
                  dict(hidden_size=H, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=32, pad_token_id=PAD, bos_token_id=1, eos_token_id=2), ("eager", "sdpa"), None),
    "gemma2": ("Gemma2Model", "Gemma2Config", dict(LLAMA, head_dim=8, sliding_window=4, attn_logit_softcapping=5.0),
               ("eager",), None),
    "stablelm": ("StableLmModel", "StableLmConfig", dict(LLAMA, partial_rotary_factor=0.5, use_qkv_bias=True),
                 ("eager", "sdpa"), None),
    "persimmon": ("PersimmonModel", "PersimmonConfig", dict(LLAMA, num_key_value_heads=4, partial_rotary_factor=0.5,
                                                            qk_layernorm=True), ("eager",), None),
    "starcoder2": ("Starcoder2Model", "Starcoder2Config", dict(LLAMA, sliding_window=4, use_bias=True), ("eager",), None),
    "olmo": ("OlmoModel", "OlmoConfig", dict(LLAMA, clip_qkv=0.2), ("eager",), None),
    "qwen3": ("Qwen3Model", "Qwen3Config", dict(LLAMA, head_dim=8), ("eager", "sdpa"), None),
    "cohere": ("CohereModel", "CohereConfig", dict(LLAMA, logit_scale=0.5), ("eager",), None),
    "mamba": ("MambaModel", "MambaConfig", dict(hidden_size=H, state_size=4, num_hidden_layers=2, expand=2, conv_kernel=3,
                                                pad_token_id=PAD, use_mambapy=False), ("eager",), None),
}

_IMAGE = {  # name: (model class, config class, config kwargs, attention implementations, image size)
    "beit": ("BeitForImageClassification", "BeitConfig", dict(VIT, use_relative_position_bias=True, use_mean_pooling=True,
                                                              layer_scale_init_value=0.5), ("eager",), 16),
    "dinov2": ("Dinov2ForImageClassification", "Dinov2Config", dict(VIT, layerscale_value=0.5), ("eager", "sdpa"), 16),
    "clip_vision": ("CLIPVisionModel", "CLIPVisionConfig", dict((k, v) for k, v in VIT.items() if k != "num_labels"),
                    ("eager", "sdpa"), 16),
    "convnext": ("ConvNextForImageClassification", "ConvNextConfig",
                 dict(num_channels=3, patch_size=2, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], layer_scale_init_value=0.5,
                      num_labels=3), ("eager",), 16),
    "segformer": ("SegformerForImageClassification", "SegformerConfig",
                  dict(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                       patch_sizes=[3, 3], strides=[2, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                       decoder_hidden_size=16, num_labels=3), ("eager",), 16),
}

_AUDIO = {
    "whisper": ("WhisperModel", "WhisperConfig", dict(SEQ2SEQ, num_mel_bins=8, max_source_positions=8,
                                                      max_target_positions=8), ("eager", "sdpa"), 16),
}

SKIP: dict[str, str] = {}


def _w(generator_seed=2, n=H):
    return torch.randn(n, generator=torch.Generator().manual_seed(generator_seed), dtype=torch.float64)


def _text_case(name, attn) -> Case:
    model_name, config_name, kwargs, _, through = _TEXT[name]
    model = _build(model_name, config_name, dict(kwargs, vocab_size=V), attn)
    body = getattr(model, through) if through not in (None, "embeds") else model
    word = getattr(body, "embed_tokens", None) or model.get_input_embeddings()
    takes = inspect.signature(body.forward).parameters
    embeddings = [m for m in body.modules() if isinstance(m, nn.Embedding)]
    embeddings = [word] + [m for m in embeddings if m is not word and not _relative(_path(body, m))]
    token_types = "token_type_ids" in takes and any("token_type" in n for n, m in body.named_modules())
    positions = "position_ids" in takes
    w = _w()

    def f(ids, mask):
        given = dict(inputs_embeds=word(ids)) if through == "embeds" else dict(input_ids=ids)
        out = body(attention_mask=mask, **given, **id_inputs(ids, positions, token_types))
        last = mask.sum(1) - 1
        return out.last_hidden_state[torch.arange(ids.shape[0]), last] @ w

    return Case(name, attn, model, "text", word, embeddings, f, text_inputs(model), False)


def _relative(path: str) -> bool:
    """An embedding read inside the attention (relative positions), not added to the tokens."""
    return "relative" in path or "rel_embeddings" in path


def _image_case(name, attn) -> Case:
    model_name, config_name, kwargs, _, size = _IMAGE[name]
    model = _build(model_name, config_name, kwargs, attn)
    patches = next(m for m in model.modules() if isinstance(m, nn.Conv2d))  # the first: the patch embedding
    head = hasattr(model, "classifier")
    w = None if head else _w(n=model.config.hidden_size)

    def f(x):
        out = model(pixel_values=x)
        return out.logits[:, 0] if head else out.pooler_output @ w

    def inputs():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(B, 3, size, size, generator=g, dtype=torch.float64)
        ref = F.avg_pool2d(x[:1], 5, stride=1, padding=2, count_include_pad=False)
        return x, ref

    return Case(name, attn, model, "image", patches, [patches], f, inputs, head)


def _audio_case(name, attn) -> Case:
    model_name, config_name, kwargs, _, frames = _AUDIO[name]
    model = _build(model_name, config_name, kwargs, attn)
    encoder = model.encoder
    w = _w()

    def f(x):
        return encoder(input_features=x).last_hidden_state.mean(1) @ w

    def inputs():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(B, model.config.num_mel_bins, frames, generator=g, dtype=torch.float64)
        ref = F.avg_pool1d(x[:1], 5, stride=1, padding=2, count_include_pad=False)
        return x, ref

    return Case(name, attn, model, "audio", encoder.conv1, [encoder.conv1], f, inputs, False)


def _entries() -> dict:
    zoo = {}
    if transformers is None:
        return zoo
    for table, build in ((_TEXT, _text_case), (_IMAGE, _image_case), (_AUDIO, _audio_case)):
        for name, (model_name, config_name, _, attns, _) in table.items():
            try:
                getattr(transformers, model_name), getattr(transformers, config_name)
            except (AttributeError, ImportError, RuntimeError) as e:  # pragma: no cover
                SKIP[name] = f"transformers {transformers.__version__}: {type(e).__name__} for {model_name}"
                continue
            for attn in attns:
                zoo[f"{name}:{attn}"] = (lambda n=name, a=attn, b=build: b(n, a))
    return zoo


ZOO = _entries()
