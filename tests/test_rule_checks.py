"""`xattr.testing.check_rule_paths`: it passes for rules whose hook paths and backward agree (the
shipped ones, and written ones), and fails, naming the example, for one that does not."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr.rule import Epsilon, Guided, Rule
from xattr.testing import check_rule_paths


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def _x() -> torch.Tensor:
    return torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


class HalfTanh(Rule):
    """Half of tanh's gradient: ``input_grad`` halves the op's own, ``backward`` computes it again."""

    kinds = frozenset({"tanh"})
    keep_output = True

    def __init__(self, factor_in_backward: float = 0.5):
        self.factor = factor_in_backward

    def backward(self, op, saved, grad):
        return (grad * (1 - saved.output**2) * self.factor,)

    def input_grad(self, op, grad):
        return grad.mul_(0.5)


class ScaledLinear(Rule):
    """The linear layer's gradient scaled by its output's sign: ``output_scale`` and ``backward``."""

    kinds = frozenset({"linear"})
    keep_output = True

    def __init__(self, sign_in_backward: float = 1.0):
        self.sign = sign_in_backward

    def scales_output(self, op):
        return True

    def output_scale(self, op, out):
        return torch.where(out > 0, 1.0, 0.5).to(out.dtype)

    def backward(self, op, saved, grad):
        x, w, b = saved.inputs
        g = grad * torch.where(saved.output > 0, 1.0, 0.5 * self.sign).to(grad.dtype)
        return (g @ w, None, None)

    keep_inputs = True


def test_shipped_rules_agree_on_both_paths():
    f = xattr.target(_model(), 1)
    check_rule_paths(f, {F.relu: Guided()}, _x())
    check_rule_paths(f, {F.linear: Epsilon(0.1)}, _x())


def test_written_rules_that_agree_pass():
    f = xattr.target(_model(), 2)
    check_rule_paths(f, {torch.tanh: HalfTanh()}, _x())
    check_rule_paths(f, {F.linear: ScaledLinear()}, _x())


def test_an_input_grad_that_disagrees_with_backward_fails():
    f = xattr.target(_model(), 0)
    with pytest.raises(AssertionError, match="example 0"):
        check_rule_paths(f, {torch.tanh: HalfTanh(factor_in_backward=1.0)}, _x())


def test_an_output_scale_that_disagrees_with_backward_fails():
    f = xattr.target(_model(), 0)
    with pytest.raises(AssertionError, match="eager .* vs vmap"):
        check_rule_paths(f, {F.linear: ScaledLinear(sign_in_backward=-1.0)}, _x())


def test_pytree_arguments_and_non_tensor_extras():
    torch.manual_seed(2)
    a, b = nn.Linear(3, 4).double(), nn.Linear(2, 4).double()

    def model(inputs, scale):
        return torch.tanh(a(inputs["p"]) + b(inputs["q"])).sum(-1) * scale

    gen = torch.Generator().manual_seed(3)
    inputs = {"p": torch.randn(3, 3, dtype=torch.float64, generator=gen), "q": torch.randn(3, 2, dtype=torch.float64, generator=gen)}
    check_rule_paths(model, {torch.tanh: HalfTanh()}, inputs, 2.0)
    with pytest.raises(AssertionError):
        check_rule_paths(model, {torch.tanh: HalfTanh(factor_in_backward=1.0)}, inputs, 2.0)
