"""LRP's default mapping passes relevance through elementwise functions of one input (NOTE:
[Elementwise functions pass relevance] in xattr/_src/pointwise.py).

A bias-free float64 MLP ``l2(phi(l1(x)))`` conserves, ``sum(R) = f(x)``, for phi exp, sqrt, cos,
``x ** 3``, ``1 / x``, ``2 ** x``, a squared ReLU, a softmax and a softplus written by hand, in
function, method, operator and in-place spellings (HEAD, where they kept their gradient: off by
0.5 - 6.8 of f(x)); the relevance is the input times the gradient of the net with ``phi(u) / u``
held, an independent reference; powers whose degrees multiply to 1 and hand-written norms give
what they gave; a zero or tiny input stays finite; functions of two inputs of degree 1 conserve
with their gradient.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr

F64 = torch.float64


def _layers(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(6, 8, bias=False).double(), nn.Linear(8, 3, bias=False).double()


def _x(seed=1):
    return torch.randn(4, 6, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _ipow(h):
    t = h + 0
    t **= 3
    return t


def _softmax(h):
    e = torch.exp(h)
    return e / e.sum(-1, keepdim=True)


# name: phi, of a hidden tensor of any sign
PHIS = {
    "square_relu": lambda h: torch.square(torch.relu(h)),
    "cube": lambda h: h**3,
    "cube_inplace": _ipow,
    "exp": torch.exp,
    "exp_method_inplace": lambda h: (h + 0).exp_(),
    "sqrt_relu": lambda h: torch.relu(h).sqrt(),
    "cos": torch.cos,
    "reciprocal_number": lambda h: 1.0 / h,
    "number_base": lambda h: 2.0**h,
    "softmax_by_hand": _softmax,
    "softplus_log1p": lambda h: torch.log1p(torch.exp(h)),
    "abs": torch.abs,
}


def _gap(f, x, composite=None):
    _, delta = xattr.lrp(xattr.target(f, 0), composite=composite or xattr.rule.lrp_rules(1e-13), return_delta=True)(x)
    with torch.no_grad():
        out = f(x)[:, 0]
    return (delta / out).abs().max().item()


@pytest.mark.parametrize("name", sorted(PHIS))
def test_default_mapping_conserves(name):
    l1, l2 = _layers()
    assert _gap(lambda t: l2(PHIS[name](l1(t))), _x()) < 1e-9


@pytest.mark.parametrize("name", ["square_relu", "exp", "cos", "number_base"])
def test_relevance_is_input_times_gradient_with_the_ratio_held(name):
    """``phi(u)`` as ``u * (phi(u) / u).detach()``: relevance passes phi unchanged."""
    l1, l2 = _layers()
    x, phi = _x(), PHIS[name]

    def held(t):
        u = l1(t)
        return l2(u * (phi(u) / u).detach())

    reference = x * torch.func.vmap(torch.func.grad(lambda t: held(t[None])[0, 0]))(x)
    relevance = xattr.lrp(xattr.target(lambda t: l2(phi(l1(t))), 0), composite=xattr.rule.lrp_rules(1e-13))(x)
    torch.testing.assert_close(relevance, reference, rtol=1e-9, atol=1e-12)


def test_powers_of_degree_one_give_what_their_gradients_gave():
    """``sqrt(mean(h ** 2))``: pow doubles and sqrt halves with their gradients; passing at both
    splits relevance through the mean in proportion to ``h_i ** 2`` alike."""
    l1, _ = _layers()
    x = _x()

    def f(t):
        return torch.sqrt(l1(t).pow(2).mean(-1, keepdim=True))

    default = xattr.rule.lrp_rules(1e-13)
    gradients = {k: v for k, v in default.items() if k not in (torch.pow, torch.sqrt)}
    relevance = xattr.lrp(xattr.target(f, 0), composite=default)(x)
    torch.testing.assert_close(relevance, xattr.lrp(xattr.target(f, 0), composite=gradients)(x), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(relevance.sum(1), f(x)[:, 0], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(
    "norm",
    [
        lambda h: h / h.pow(2).sum(-1, keepdim=True).sqrt(),
        lambda h: h / h.norm(dim=-1, keepdim=True),
        lambda h: h * torch.rsqrt(h.square().mean(-1, keepdim=True) + 1e-6),
    ],
)
def test_hand_written_norms_conserve(norm):
    """Their divisors are held (FixedGate), so their pow, sqrt and rsqrt see no signal."""
    l1, l2 = _layers()
    assert _gap(lambda t: l2(norm(l1(t))), _x()) < 1e-9


def test_a_constant_added_inside_takes_a_share():
    """``log(1 + exp(h))``: the 1 is a bias of the sum it joins (relevance ``R_u / u`` of
    ``u = 1 + exp(h)``); ``log1p(exp(h))`` and ``F.softplus`` conserve and agree."""
    l1, l2 = _layers()
    x = _x()
    assert _gap(lambda t: l2(torch.log(1 + torch.exp(l1(t)))), x) > 0.1
    log1p = xattr.lrp(xattr.target(lambda t: l2(torch.log1p(torch.exp(l1(t)))), 0))(x)
    softplus = xattr.lrp(xattr.target(lambda t: l2(F.softplus(l1(t))), 0))(x)
    torch.testing.assert_close(log1p, softplus, rtol=1e-9, atol=1e-12)


def test_zero_and_tiny_inputs_stay_finite():
    """``g_x = g_y * y / x``: 0 where x is exactly 0 (exp(0)'s relevance is lost there, as at
    sigmoid), exact relevance ``exp(x) g`` where x is tiny."""
    lin = nn.Linear(6, 3, bias=False).double()
    x = _x()
    x[:, 0], x[:, 1] = 0.0, 1e-300
    relevance = xattr.lrp(xattr.target(lambda t: lin(torch.exp(t)), 0), composite=xattr.rule.lrp_rules(1e-15))(x)
    assert torch.isfinite(relevance).all()
    assert (relevance[:, 0] == 0).all()
    torch.testing.assert_close(relevance[:, 1:], torch.exp(x[:, 1:]) * lin.weight[0, 1:], rtol=1e-10, atol=0)


@pytest.mark.parametrize("pair", [torch.maximum, torch.hypot, torch.copysign])
def test_functions_of_two_inputs_of_degree_one_conserve(pair):
    """They keep their gradient, which conserves for a function homogeneous of degree 1."""
    l1, l2 = _layers()
    la, _ = _layers(seed=2)
    assert _gap(lambda t: l2(pair(l1(t), la(t))), _x()) < 1e-9
