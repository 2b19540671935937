"""Ruled layers whose output is a view, modified in place next (found by tests/test_rules_fuzz.py).

``F.linear`` of a 3-d input with a bias returns ``addmm(...).view(...)``, and a 1-d pool of a
transposed input returns a view too. An ``nn.ReLU(inplace=True)`` after such a layer rebuilds the
view's history on its base: LRP-epsilon's gradient hook on the layer's output (NOTE: [Rules as
output hooks]) was lost there, so that layer silently ran as LRP-0 (with ``Epsilon(0.5)``: off by
180% of the largest relevance), and the rules that run as their own ``autograd.Function``
(gamma, z+, alpha-beta, positive weights) raised, since a view a Function returns may not be
modified in place. The reference is LRP-epsilon written out layer by layer.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr.testing import assert_trees_close
from xattr.testing.strategies import random_tensor

EPS = 0.5


class Transpose(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


def _net(pool: nn.Module | None, inplace: bool) -> nn.Sequential:
    """Linear over (B, 3, 4), then (with ``pool``) transpose and a pool that keeps the size, ReLU, a linear head."""
    torch.manual_seed(1)
    front = [nn.Linear(4, 3)] if pool is None else [nn.Linear(4, 3, bias=False), Transpose(), pool]
    return nn.Sequential(*front, nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(9, 2)).double().eval()


def _stab(z):
    return z + EPS * torch.where(z >= 0, 1.0, -1.0)


def _epsilon_by_hand(model: nn.Sequential, x: torch.Tensor, target: int) -> torch.Tensor:
    """LRP-epsilon in gradient form, layer by layer: g_in = layer^T(g_out * z / stab(z))."""
    first, head = model[0], model[-1]
    z1 = first(x)
    t = z1 if len(model) == 4 else z1.transpose(1, 2)  # the pools keep their input's values
    z2 = head(t.relu().flatten(1))
    g = torch.zeros_like(z2)
    g[:, target] = (z2 / _stab(z2))[:, target]
    g = (g @ head.weight).view_as(t) * (t > 0)
    if len(model) > 4:
        g = (g * t / _stab(t)).transpose(1, 2)  # the pool's own epsilon
    return x * ((g * z1 / _stab(z1)) @ first.weight)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("pool", [None, nn.MaxPool1d(1), nn.AvgPool1d(1), nn.AdaptiveMaxPool1d(3), nn.AdaptiveAvgPool1d(3)],
                         ids=["linear", "max_pool", "avg_pool", "adaptive_max", "adaptive_avg"])
def test_lrp_epsilon_keeps_its_stabilizer_at_a_view_output_modified_in_place(pool, inplace):
    model = _net(pool, inplace)
    x = random_tensor((2, 3, 4), 0)
    eps = xattr.rule.Epsilon(EPS)
    composite = {**xattr.rule.lrp_rules(), F.linear: eps, F.max_pool2d: eps, F.avg_pool2d: eps}
    got = xattr.lrp(xattr.target(model, 0), composite=composite)(x)
    assert_trees_close(got, _epsilon_by_hand(model, x, 0), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("rule", [xattr.rule.Gamma(0.25), xattr.rule.ZPlus(), xattr.rule.AlphaBeta(2.0, 1.0),
                                  xattr.rule.PositiveWeights()], ids=repr)
def test_rules_with_their_own_function_allow_an_in_place_relu_after_a_3d_linear(rule):
    x = random_tensor((2, 3, 4), 1)
    composite = {**xattr.rule.lrp_rules(), F.linear: rule}
    got = xattr.lrp(xattr.target(_net(None, True), 1), composite=composite)(x)
    assert_trees_close(got, xattr.lrp(xattr.target(_net(None, False), 1), composite=composite)(x), atol=1e-14, rtol=1e-12)
