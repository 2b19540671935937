"""`xattr.rule.exact_deep_lift_rules()`: DeepLift's opt-in overrides for transformers give the
numbers of the same mapping written out, and summation-to-delta on a transformer block where the
defaults are far off (docs/rules.md, DeepLift through transformers, exactly)."""

import torch
import torch.nn.functional as F
from torch import nn

import xattr

D = torch.float64


def _block():
    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True).to(D).eval()
    head = nn.Linear(8, 1).to(D)
    return lambda x: head(block(x)).sum((1, 2))


def test_exact_deep_lift_rules_sum_to_delta_on_a_transformer_block():
    f = _block()
    x, b = torch.randn(3, 4, 8, dtype=D), torch.randn(1, 4, 8, dtype=D)
    gap = (f(x) - f(b)).abs().max()
    attr, delta = xattr.deep_lift(f, baselines=b, mapping=xattr.rule.exact_deep_lift_rules(), return_delta=True)(x)
    assert delta.abs().max() < 1e-10 * gap
    _, plain = xattr.deep_lift(f, baselines=b, return_delta=True)(x)
    assert plain.abs().max() > 1e-3 * gap  # the defaults keep the gradient in attention and norms
    spelled = {F.multi_head_attention_forward: xattr.rule.Unfused(), F.scaled_dot_product_attention: xattr.rule.Unfused(),
               F.layer_norm: xattr.rule.Unfused(), F.rms_norm: xattr.rule.Unfused(), F.softmax: xattr.rule.ExactSoftmax()}
    torch.testing.assert_close(attr, xattr.deep_lift(f, baselines=b, mapping=spelled)(x), rtol=0, atol=0)


def test_exact_deep_lift_rules_pass_eps_to_the_softmax_rule():
    rules = xattr.rule.exact_deep_lift_rules(eps=1e-6)
    assert rules[F.softmax].eps == 1e-6
    assert isinstance(rules[F.layer_norm], xattr.rule.Unfused)
