"""AttnLRP (Achtibat et al. 2024) as a mapping of xattr's rules.

NOTE: [AttnLRP in gradient form]
Achtibat, Hatefi, Dreyer, Jain, Wiegand, Lapuschkin and Samek, "AttnLRP: Attention-Aware
Layer-Wise Relevance Propagation for Transformers", ICML 2024. Read in xattr's gradient form
(relevance at a tensor t is ``R_t = t * g_t``, NOTE: [LRP in gradient form] in lrp_rules.py),
each of its rules is a modified gradient that an existing rule (or none) gives:

- linear layers, ``z = W x + b``: the epsilon rule (`Epsilon`; eps = 0 is the ordinary gradient,
  LRP-0, which is what the authors' library LXT computes in its efficient mode);
- elementwise activations ``y = phi(x)`` (GELU, SiLU, tanh...): the identity rule ``R_x = R_y``,
  `Pass` (``g_x = g_y * y / x``);
- softmax ``s = softmax(x)``: the paper linearises it at x and lets the bias absorb the rest,
  ``R_x_i = x_i (R_s_i - s_i sum_j R_s_j)``. With ``R_s = s * g_s`` that is
  ``x_i * s_i (g_s_i - sum_j s_j g_s_j) = x_i * (J^T g_s)_i``: the softmax's ordinary gradient
  times its input. So the softmax takes no rule at all (`lrp_rules` refuses it; here its key is
  dropped). A mask added to the scores is a summand: its share is ``mask * g``, and g is 0 where
  the weight is 0, so a masked key takes none;
- a product of N activations (``a * b``, ``q @ k^T``, ``weights @ v``, an einsum): the uniform
  rule, each factor ``1 / N`` of the product's relevance. In gradient form that is each factor's
  ordinary gradient times ``1 / N`` (`FixedGate` at ``torch.matmul`` and ``torch.einsum``, NOTE:
  [Matrix products share relevance] in gate_rules.py; at ``torch.mul`` of equal shapes, half each).
  A factor that broadcasts over the other (the ``rsqrt(mean(x^2))`` of an RMS norm written by
  hand, a squeeze-and-excitation gate) is held constant instead, as the paper does for norms;
- layer norm and RMS norm: the identity rule through the division by the standard deviation or
  root mean square (held constant: `FixedStd`); the centring ``x - mean(x)`` is linear and keeps
  its gradient (LRP-0), as in LXT, whose layer norm detaches only the standard deviation;
- ``F.scaled_dot_product_attention`` (Hugging Face's SDPA attention, and ``nn.MultiheadAttention``
  through `Unfused`): run written out (`Unfused`: ``q @ k^T * scale + mask``, ``torch.softmax``,
  ``@ v``: NOTE: [Attention and norms written out] in written_out.py), so that its two matrix
  products share relevance and its softmax passes it on.

Not conserved, even without biases: the softmax rule hands ``x_i (R_s_i - s_i sum_j R_s_j)`` to
its inputs, which sums to ``sum_i x_i R_s_i - (sum_i s_i x_i) sum_j R_s_j``, not ``sum_j R_s_j``:
the linearisation's bias (its value at 0) takes the rest. ``tests/test_attn_lrp.py`` measures
which parts of a bias-free block conserve.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention_rules import FixedAttention
from .deeplift_rules import checked_eps
from .gate_rules import FixedGate
from .lrp_generalized_gamma import GeneralizedGamma
from .lrp_rules import Block, Epsilon, lrp_rules
from .rule_base import Rule
from .unfused import Unfused


def _rule(value, name: str):
    if value is not None and not isinstance(value, Rule):
        raise TypeError(f"attn_lrp_rules: {name} must be an xattr.rule.Rule (e.g. xattr.rule.Gamma(0.25)) or None, "
                        f"got {type(value).__name__}")
    return value


def attn_lrp_rules(
    eps: float = 1e-9,
    *,
    gamma: float | None = None,
    linear: Rule | None = None,
    conv: Rule | None = None,
    hold_attention: bool = False,
) -> dict:
    """The AttnLRP composite (Achtibat et al. 2024): relevance through the softmax, products shared.

    NOTE: [AttnLRP in gradient form]. Starts from `lrp_rules` (epsilon at every layer, `Pass`
    at activations and elementwise functions, `FixedStd` at layer and RMS norms, `FixedGate` at
    products of two activations, the recurrent layers and ``nn.MultiheadAttention`` written out)
    and changes attention:

    - ``F.softmax`` (every spelling): its ordinary gradient, which in gradient form is the paper's
      softmax rule ``R_x_i = x_i (R_s_i - s_i sum_j R_s_j)`` (`lrp_rules` refuses it); a softmax
      at the output of the model function takes it too;
    - ``torch.matmul`` (``@``, ``bmm``) and ``torch.einsum`` of activations: `FixedGate`, the
      uniform rule, each of the N factors ``1 / N`` of the relevance;
    - ``F.scaled_dot_product_attention``: `Unfused`, so its products and softmax take the above.

    Args:
      eps: the epsilon of `Epsilon` at linear, conv, batch-norm and pooling layers (0: the
        ordinary gradient, LRP-0, as the authors' library LXT in its efficient mode).
      gamma: a number: `GeneralizedGamma(gamma, eps)` at linear and conv layers instead, the
        gamma rule for signed inputs (the authors' library uses it, through zennit, for vision
        transformers; `Gamma`, made for inputs >= 0, can divide by a near-zero or sign-flipped sum
        on the signed outputs of layer norms: NOTE: [Gamma for signed inputs]).
      linear: any rule for linear layers (``F.linear``, and GPT-2's ``Conv1D`` through
        ``torch.addmm``), instead of epsilon or gamma.
      conv: a rule for convolutions (a ViT's patch embedding); default: the linear layers' rule.
      hold_attention: True: attention weights held constant inside attention (CP-LRP, Ali et al.
        2022: ``F.softmax`` `Block`, SDPA `FixedAttention`, matrix products their gradient), the
        rest as above. The authors' library uses this inside a ViT's attention, with gamma on the
        linear layers ("easier to tune for gamma").

    Returns:
      A new ``{key: rule}`` dict for ``xattr.lrp(f, composite=...)``, ``xattr.layer_lrp``,
      ``xattr.rules``; change entries as in any composite.

    Example:
      >>> relevance = xattr.layer_lrp(xattr.at_layer(f, model.embed_tokens), composite=xattr.rule.attn_lrp_rules())(ids)
    """
    eps = checked_eps(eps, "attn_lrp_rules")
    if gamma is not None:
        if linear is not None:
            raise ValueError("attn_lrp_rules: give gamma or linear, not both (gamma=g is linear=xattr.rule.GeneralizedGamma(g, eps))")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0:
            raise ValueError(f"attn_lrp_rules: gamma must be a number >= 0, got {gamma!r}")
        linear = GeneralizedGamma(float(gamma), eps)  # NOTE: [Gamma for signed inputs]
    if not isinstance(hold_attention, bool):
        raise TypeError(f"attn_lrp_rules: hold_attention must be True or False, got {hold_attention!r}")
    linear = _rule(linear, "linear") or Epsilon(eps)
    conv = _rule(conv, "conv") or linear
    mapping = lrp_rules(eps)
    mapping.update({F.linear: linear, torch.conv2d: conv})
    if hold_attention:  # CP-LRP inside attention (as lrp_rules with the softmax blocked)
        mapping.update({F.softmax: Block(), F.scaled_dot_product_attention: FixedAttention()})
        return mapping
    del mapping[F.softmax]  # its gradient is AttnLRP's softmax rule (NOTE: [AttnLRP in gradient form])
    uniform = FixedGate()
    mapping.update({torch.matmul: uniform, torch.einsum: uniform, F.scaled_dot_product_attention: Unfused()})
    return mapping
