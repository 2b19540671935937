"""`exact_deep_lift_rules`: the opt-in overrides under which DeepLift conserves through transformers
(docs/rules.md, DeepLift through transformers, exactly)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .deeplift_softmax import ExactSoftmax
from .unfused import Unfused


def exact_deep_lift_rules(eps: float = 1e-10) -> dict:
    """Rules to add to DeepLift's for summation-to-delta through attention and norms.

    ``nn.MultiheadAttention``, ``F.scaled_dot_product_attention``, layer, RMS, group and
    instance norm (``F.group_norm`` stands for both), vector
    norms (``torch.linalg.vector_norm``, ``torch.norm``, ``x.norm()``...), ``F.normalize`` and
    ``F.cosine_similarity`` run written out (`Unfused`: matmuls, softmax, means and sums of
    products, ``rsqrt``, ``sqrt``, quotients; NOTE: [Vector norms written out]), and softmax takes
    `ExactSoftmax` (``eps``: its tie threshold) instead of the paper's normalisation, which
    Captum shares. Every op of a transformer block is then one DeepLift conserves through; the
    forward equals the fused calls' up to rounding.

    Example:
      >>> attr = xattr.deep_lift(f, baselines=0.0, mapping=xattr.rule.exact_deep_lift_rules())(x)
    """
    written = Unfused()
    return {F.multi_head_attention_forward: written, F.scaled_dot_product_attention: written,
            F.layer_norm: written, F.rms_norm: written, F.softmax: ExactSoftmax(eps),
            torch.linalg.vector_norm: written, F.normalize: written, F.cosine_similarity: written,
            F.group_norm: written}  # fmt: skip
