"""Token inputs: reference (baseline) token ids, and per-token scores from embedding attributions.

Token ids are integers, so gradient methods attribute the embedding's output instead:

    split = xattr.at_layer(xattr.target(model, y), model.embedding)
    ref = xattr.reference_tokens(ids, pad_id, keep=(cls_id, sep_id))
    attr = xattr.integrated_gradients(split.head, baselines=split.act(ref))(split.act(ids), ids)
    scores = xattr.token_scores(attr)                                        # (B, T)

``split.head(h, ids)`` runs the model with the embedding's output replaced by h, the ids passed
through (Captum's LayerIntegratedGradients on the embedding gives the same numbers), and
completeness reads ``attr.sum((1, 2)) == f(ids) - f(ref)``.
"""

from __future__ import annotations

from typing import Sequence

import torch


def reference_tokens(ids: torch.Tensor, reference_id: int, *, keep: Sequence[int] | torch.Tensor = ()) -> torch.Tensor:
    """Baseline token ids: every token replaced by ``reference_id`` except those in ``keep``.

    Args:
      ids: LongTensor of token ids, (B, T) (any shape works).
      reference_id: the neutral token, usually the padding id (or a [MASK]/[UNK] id).
      keep: token ids left in place, typically the special tokens that frame every sequence
        ([CLS], [SEP], [BOS], [EOS], and padding if the reference differs from it).

    Returns:
      A LongTensor like ``ids``; embed it with ``split.act(ref)`` to get the layer-space baseline.

    Example:
      >>> xattr.reference_tokens(torch.tensor([[101, 7592, 2088, 102, 0]]), 0, keep=(101, 102))
      tensor([[101,   0,   0, 102,   0]])
    """
    if ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"reference_tokens needs integer token ids, got a {ids.dtype} tensor")
    keep = torch.as_tensor(keep, dtype=ids.dtype, device=ids.device).reshape(-1)
    kept = torch.isin(ids, keep) if keep.numel() else torch.zeros_like(ids, dtype=torch.bool)
    return torch.where(kept, ids, torch.full_like(ids, reference_id))


def token_scores(attributions: torch.Tensor, *, normalize: bool = False) -> torch.Tensor:
    """One score per token: embedding attributions summed over the embedding dimension (last axis).

    Args:
      attributions: (B, [K,] T, D) attributions of the embedding's output.
      normalize: divide each example's (and output's) scores by their L2 norm over tokens, the
        scaling Captum's text tutorials use for display.

    Returns:
      (B, [K,] T). Without normalization the scores of an IG attribution sum to f(x) - f(x').

    Example:
      >>> split = xattr.at_layer(xattr.target(model, 1), model.embedding)
      >>> scores = xattr.token_scores(xattr.layer_integrated_gradients(split, baselines=pad_ids)(ids))  # (B, T)
    """
    scores = attributions.sum(-1)
    if normalize:  # in float32 at least: half-precision squares of small scores underflow
        wide = scores.to(torch.promote_types(scores.dtype, torch.float32))
        scores = (wide / wide.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(wide.dtype).tiny)).to(scores.dtype)
    return scores
