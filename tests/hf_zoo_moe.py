"""More Hugging Face mixture-of-experts families, tiny random configurations, for DeepLift's tests.

The same conventions as tests/hf_zoo.py (seed 0, float64, eval mode, 2 layers, hidden 32, vocabulary
100, a padded batch of 2 with its mask, a reference of token 1, `hf_zoo.Case`), with 4 to 8 experts,
top 2 (group-limited routers: 8 experts in 2 or 4 groups), both layers sparse, score-correction
biases random (0.2 N(0, 1), as after training; Hugging Face initialises them to 0), and
``experts_implementation="eager"`` (grouped_mm has no float64 kernel). ``FAMILIES`` maps a name to
its builder; a family whose classes the installed transformers lacks is in ``SKIP``.

`float64_throughout` extends hf_zoo's mode with ``Tensor.type(torch.float32)`` (DeepSeek-V3's and
GLM4-MoE's routers cast their input that way).
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

import hf_zoo
from hf_zoo import LLAMA, MOE, V, transformers

H = hf_zoo.H
_SMALL = dict(LLAMA, intermediate_size=32, moe_intermediate_size=16)
_SIGMOID = dict(_SMALL, n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1, n_shared_experts=1,
                first_k_dense_replace=0, norm_topk_prob=True, routed_scaling_factor=2.5)
_MLA = dict(num_key_value_heads=4, kv_lora_rank=8, q_lora_rank=None, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, head_dim=4)

# name: (model class, config class, config kwargs)
_FAMILIES = {
    "qwen3_moe": ("Qwen3MoeModel", "Qwen3MoeConfig", dict(_SMALL, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True)),
    "qwen3_moe_unnormalised": ("Qwen3MoeModel", "Qwen3MoeConfig",
                               dict(_SMALL, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False)),
    "olmoe": ("OlmoeModel", "OlmoeConfig", dict(_SMALL, num_experts=4, num_experts_per_tok=2)),
    "flex_olmo": ("FlexOlmoModel", "FlexOlmoConfig", dict(_SMALL, num_experts=4, num_experts_per_tok=2)),
    "phimoe": ("PhimoeModel", "PhimoeConfig", dict(_SMALL, num_local_experts=4, num_experts_per_tok=2)),
    "minimax": ("MiniMaxModel", "MiniMaxConfig",
                dict(_SMALL, num_local_experts=4, num_experts_per_tok=2, layer_types=["full_attention"] * 2, head_dim=8)),
    "deepseek_v3": ("DeepseekV3Model", "DeepseekV3Config", dict(_SIGMOID, **_MLA)),
    "glm4_moe": ("Glm4MoeModel", "Glm4MoeConfig", dict(_SIGMOID, head_dim=8)),
    "deepseek_v2": ("DeepseekV2Model", "DeepseekV2Config",
                    dict(_SMALL, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=0,
                         topk_method="greedy", routed_scaling_factor=2.0, **_MLA)),
    "deepseek_v2_groups": ("DeepseekV2Model", "DeepseekV2Config",
                           dict(_SMALL, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=0,
                                topk_method="group_limited_greedy", n_group=4, topk_group=2, routed_scaling_factor=2.0,
                                **_MLA)),
    "dots1": ("Dots1Model", "Dots1Config", dict(_SIGMOID, head_dim=8)),
    "ernie4_5_moe": ("Ernie4_5_MoeModel", "Ernie4_5_MoeConfig",
                     dict(_SMALL, moe_num_experts=4, moe_k=2, moe_layer_start_index=0, moe_num_shared_experts=0)),
    "hunyuan_v1_moe": ("HunYuanMoEV1Model", "HunYuanMoEV1Config", dict(_SMALL, num_experts=4, moe_topk=2, head_dim=8)),
    "gpt_oss": ("GptOssModel", "GptOssConfig",
                dict(_SMALL, num_local_experts=4, num_experts_per_tok=2, head_dim=8, layer_types=["full_attention"] * 2)),
    "granitemoe": ("GraniteMoeModel", "GraniteMoeConfig", dict(_SMALL, num_local_experts=4, num_experts_per_tok=2)),
    "jetmoe": ("JetMoeModel", "JetMoeConfig",
               dict(hidden_size=H, num_hidden_layers=2, num_key_value_heads=2, kv_channels=8, intermediate_size=32,
                    num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=32, pad_token_id=hf_zoo.PAD)),
    "qwen3_next": ("Qwen3NextModel", "Qwen3NextConfig",
                   dict(_SMALL, num_experts=4, num_experts_per_tok=2, shared_expert_intermediate_size=16, head_dim=8,
                        layer_types=["full_attention"] * 2)),
    "dbrx": ("DbrxModel", "DbrxConfig",
             dict(d_model=H, n_heads=4, n_layers=2, max_seq_len=32, pad_token_id=hf_zoo.PAD,
                  attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0), ffn_config=dict(ffn_hidden_size=16, moe_num_experts=4, moe_top_k=2))),
    "llama4": ("Llama4TextModel", "Llama4TextConfig",
               dict(_SMALL, intermediate_size_mlp=32, num_local_experts=4, num_experts_per_tok=2, head_dim=8)),
    "lfm2_moe": ("Lfm2MoeModel", "Lfm2MoeConfig",
                 dict(_SMALL, num_experts=4, num_experts_per_tok=2, num_dense_layers=0, layer_types=["full_attention"] * 2)),
    "exaone_moe": ("ExaoneMoeModel", "ExaoneMoeConfig", dict(_SIGMOID, num_experts=8, first_k_dense_replace=0, head_dim=8)),
}

SKIP: dict[str, str] = {}


class float64_throughout(hf_zoo.float64_throughout):
    """hf_zoo's mode, and ``Tensor.type(torch.float32)`` kept float64 too."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.type and args and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.float64:
            to = args[1] if len(args) > 1 else (kwargs or {}).get("dtype")
            if to is torch.float32 or to == "torch.FloatTensor":
                return args[0]
        return super().__torch_function__(func, types, args, kwargs)


def in_float64(f: Callable) -> Callable:
    """f run inside this module's `float64_throughout`."""

    def run(*args):
        with float64_throughout():
            return f(*args)

    return run


def build(name: str) -> hf_zoo.Case:
    """The family's tiny model as an `hf_zoo.Case` (text: layer DeepLift at the word embeddings)."""
    model_name, config_name, kwargs = _FAMILIES[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(attn_implementation="eager", vocab_size=V, **dict(MOE, **kwargs))
    model = getattr(transformers, model_name)(config).eval().double()
    g = torch.Generator().manual_seed(3)
    for m in model.modules():  # score-correction biases as after training (initialised to 0): they move the choice
        for bias in (getattr(m, "e_score_correction_bias", None), getattr(m, "expert_bias", None)):
            if isinstance(bias, torch.Tensor):
                with torch.no_grad():
                    bias.copy_(0.2 * torch.randn(bias.shape, generator=g, dtype=bias.dtype))
    word = model.get_input_embeddings()
    positions = "position_ids" in inspect.signature(model.forward).parameters
    w = torch.randn(H, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def f(ids, mask):
        out = model(input_ids=ids, attention_mask=mask, **hf_zoo.id_inputs(ids, positions, False))
        return out.last_hidden_state[torch.arange(ids.shape[0]), mask.sum(1) - 1] @ w

    return hf_zoo.Case(name, "eager", model, "text", word, [word], f, hf_zoo.text_inputs(model))


def _entries() -> dict:
    found = {}
    if transformers is None:
        return found
    for name, (model_name, config_name, _) in _FAMILIES.items():
        if hasattr(transformers, model_name) and hasattr(transformers, config_name):
            found[name] = (lambda n=name: build(n))
        else:
            SKIP[name] = f"transformers {transformers.__version__} has no {model_name}"
    return found


FAMILIES: dict[str, Callable[[], hf_zoo.Case]] = _entries()


def blocks(model: nn.Module) -> list:
    """The modules of model that hold an ``experts`` child (its mixture-of-experts blocks)."""
    return [m for m in model.modules() if isinstance(getattr(m, "experts", None), nn.Module)]
