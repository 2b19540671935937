"""LRP rules that change weights act on a batch norm's affine map ``z = a x + c`` (a = w / s,
c = b - mean a), as on a linear layer's weight and bias: the relevance equals that of the same
network with the norm written as a diagonal linear layer (the reference). Captum's rules act on
the norm's own weight and bias; the compat classes keep that (docs/migration_rules.md)."""

import pytest
import torch
from torch import nn

import xattr
from xattr.rule import Epsilon, Gamma, PositiveWeights, lrp_rules

D = torch.float64


def _nets(seed=0):
    g = torch.Generator().manual_seed(seed)
    first, last = nn.Linear(5, 4, bias=False), nn.Linear(4, 3, bias=False)
    norm = nn.BatchNorm1d(4)
    with torch.no_grad():
        for p in (first.weight, last.weight):
            p.copy_(torch.randn(p.shape, generator=g))
        norm.weight.copy_(torch.randn(4, generator=g))
        norm.bias.copy_(torch.randn(4, generator=g))
        norm.running_mean.copy_(torch.randn(4, generator=g))
        norm.running_var.copy_(torch.rand(4, generator=g) + 0.5)
    with_norm = nn.Sequential(first, norm, nn.ReLU(), last).to(D).eval()
    s = torch.sqrt(norm.running_var + norm.eps).to(D)
    a = norm.weight.to(D) / s
    diagonal = nn.Linear(4, 4).to(D)
    with torch.no_grad():
        diagonal.weight.copy_(torch.diag(a))
        diagonal.bias.copy_(norm.bias.to(D) - norm.running_mean.to(D) * a)
    as_linear = nn.Sequential(first, diagonal, nn.ReLU(), last).to(D).eval()
    x = torch.randn(6, 5, generator=g, dtype=D)
    return with_norm, as_linear, x


RULES = {
    "epsilon": lambda: Epsilon(0.1),
    "gamma": lambda: Gamma(0.25),
    "gamma_zero_bias": lambda: Gamma(0.25, zero_bias=True),
    "gamma_keep_bias": lambda: Gamma(0.5, modify_bias=False),
    "positive": lambda: PositiveWeights(),
    "positive_zero_bias": lambda: PositiveWeights(zero_bias=True),
}


@pytest.mark.parametrize("name", RULES)
def test_a_rule_on_a_batch_norm_equals_it_on_the_norm_as_a_diagonal_linear(name):
    with_norm, as_linear, x = _nets()
    torch.testing.assert_close(with_norm(x), as_linear(x))
    got = xattr.lrp(xattr.target(with_norm, 1), composite={**lrp_rules(1e-12), with_norm[1]: RULES[name]()})(x)
    want = xattr.lrp(xattr.target(as_linear, 1), composite={**lrp_rules(1e-12), as_linear[1]: RULES[name]()})(x)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)


def test_zero_bias_on_a_batch_norm_conserves_relevance_through_it():
    # with a > 0 the norm's z' = a x has no bias term: the relevance entering the norm is the
    # relevance leaving it (on the norm's own weight and bias a -mean w / s term stayed: 88% off)
    with_norm, _, x = _nets(3)
    with torch.no_grad():
        with_norm[1].weight.abs_()
    rule = PositiveWeights(eps=1e-12, zero_bias=True)
    composite = {**lrp_rules(1e-12), with_norm[1]: rule}
    below = xattr.layer_lrp(xattr.at_layer(xattr.target(with_norm, 0), with_norm[0]), composite=composite)(x)
    above = xattr.layer_lrp(xattr.at_layer(xattr.target(with_norm, 0), with_norm[1]), composite=composite)(x)
    torch.testing.assert_close(below.sum(1), above.sum(1), atol=1e-9, rtol=1e-7)


def test_captums_rules_through_compat_still_act_on_the_norms_parameters():
    from xattr.compat.captum import LRP
    from xattr.compat.captum.lrp import GammaRule

    with_norm, _, x = _nets(1)
    with_norm[1].rule = GammaRule(0.25)
    compat = LRP(with_norm).attribute(x, target=1)
    by_parameters = Gamma(0.25, 1e-9, modify_bias=False)
    by_parameters.norm_parameters = True
    composite = {**lrp_rules(), with_norm[1]: by_parameters}
    torch.testing.assert_close(compat, xattr.lrp(xattr.target(with_norm, 1), composite=composite)(x))
    del with_norm[1].rule
