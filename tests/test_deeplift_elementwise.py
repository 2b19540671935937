"""DeepLift's Rescale rule at elementwise functions of one input (NOTE: [Elementwise functions of
one input] and [Rescale off the domain] in xattr/_src/pointwise.py).

exp, exp2, expm1, log, log2, log10, log1p, sqrt, rsqrt, reciprocal, abs, sin, cos, erf, erfc,
atan, sinh, cosh, asinh and ``x ** p`` (p a number; ``torch.square``) pass ``(phi(x) - phi(x_ref))
/ (x - x_ref)``, so summation-to-delta holds through them. Checked: summation-to-delta as a
property on small random MLPs and CNNs (function, Tensor-method, in-place, operator and
``torch.special`` spellings); every function's multiplier against its secant written by hand; an
example alone equals its row of a batch (per-example and shared references, under vmap too); the
derivative where ``|x - x_ref| < eps`` and where the secant is not finite (a reference off the
domain); the closed-form derivatives against torch's gradient; DeepLift SHAP; what is not parsed
keeps its gradient (a tensor exponent is parsed: test_deeplift_binary.py); LRP's default mapping
passes relevance through them (`Pass`; conservation: test_lrp_pointwise.py). ``c / x`` and
``c ** x``: test_deeplift_gaps.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr.testing import check_rule_paths
from xattr.testing.strategies import seeds

F64 = torch.float64


def _ipow(h):
    t = h + 0
    t **= 2
    return t


# name: (function of a hidden tensor h of any sign, whose result stays finite)
SPELLINGS = {
    "exp": lambda h: torch.exp(0.5 * h),
    "exp_": lambda h: (0.5 * h).exp_(),
    "exp2": lambda h: torch.special.exp2(0.5 * h),
    "expm1": lambda h: h.expm1(),
    "log": lambda h: torch.log(h * h + 0.5),
    "log2": lambda h: (h.abs() + 0.5).log2(),
    "log10": lambda h: torch.log10(h.square() + 0.1),
    "log1p": lambda h: torch.special.log1p(h.abs()),
    "log1p_": lambda h: h.abs().log1p_(),
    "sqrt": lambda h: torch.sqrt(h.abs()),
    "sqrt_": lambda h: torch.sqrt_(h * h + 0.1),
    "rsqrt": lambda h: torch.rsqrt(h * h + 0.5),
    "reciprocal": lambda h: (h.abs() + 1).reciprocal(),
    "reciprocal_": lambda h: torch.reciprocal_(h.abs() + 1),
    "abs": abs,
    "absolute": torch.absolute,
    "abs_": lambda h: (h + 0).abs_(),
    "square": torch.square,
    "square_": lambda h: (h + 0).square_(),
    "pow2": lambda h: h**2,
    "pow3": lambda h: torch.pow(h, 3),
    "pow_frac": lambda h: (h.abs() + 0.1) ** 1.5,
    "pow_neg": lambda h: (h * h + 1).pow(-0.5),
    "pow_": lambda h: (h.abs() + 0.2).pow_(2.5),
    "ipow": _ipow,
    "sin": torch.sin,
    "cos": lambda h: h.cos(),
    "sin_": lambda h: (h + 0).sin_(),
    "erf": torch.special.erf,
    "erfc": torch.erfc,
    "atan": torch.atan,
    "sinh": lambda h: h.sinh(),
    "cosh": lambda h: torch.cosh(0.5 * h),
    "asinh": torch.asinh,
}


class Net(nn.Module):
    """Affine, phi_a, affine, phi_b, linear head (3 outputs); an MLP on (B, 4) or a CNN on (B, 2, 5, 5)."""

    def __init__(self, a: str, b: str, cnn: bool, seed: int, spellings: dict | None = None):
        super().__init__()
        spellings = SPELLINGS if spellings is None else spellings  # test_deeplift_gaps passes its own
        self.a, self.b, self.cnn = spellings[a], spellings[b], cnn
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if cnn:
                self.l1, self.l2, self.head = nn.Conv2d(2, 3, 3), nn.Conv2d(3, 3, 1), nn.Linear(27, 3)
            else:
                self.l1, self.l2, self.head = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 3)
        self.double().eval()

    def in_shape(self) -> tuple:
        return (2, 5, 5) if self.cnn else (4,)

    def forward(self, x):
        h = self.b(self.l2(self.a(self.l1(x))))
        return self.head(h.flatten(1))


def check_sums_to_delta(model: nn.Module, x: torch.Tensor, base) -> None:
    """DeepLift's attributions of output 1 are finite and sum to f(x) - f(b); its delta says so."""
    attr, delta = xattr.deep_lift(xattr.target(model, 1), baselines=base, return_delta=True)(x)
    with torch.no_grad():
        gap = model(x)[:, 1] - model(torch.as_tensor(base, dtype=F64).expand_as(x))[:, 1]
    assert torch.isfinite(attr).all()
    torch.testing.assert_close(attr.flatten(1).sum(1), gap, rtol=1e-9, atol=1e-10)
    assert delta.abs().max() <= 1e-10 + 1e-9 * gap.abs().max()


def _randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@given(st.sampled_from(sorted(SPELLINGS)), st.sampled_from(sorted(SPELLINGS)), st.booleans(), st.integers(1, 3), seeds,
       st.sampled_from(["each", "row", "zero"]))
def test_summation_to_delta(a, b, cnn, batch, seed, reference):
    """sum(attributions) = f(x) - f(b) through every spelling (HEAD: these kept their gradient)."""
    model = Net(a, b, cnn, seed)
    x = _randn(batch, *model.in_shape(), seed=seed + 1)
    base = {"each": _randn(batch, *model.in_shape(), seed=seed + 2), "row": _randn(1, *model.in_shape(), seed=seed + 3),
            "zero": 0.0}[reference]
    check_sums_to_delta(model, x, base)


# kind: (phi written with torch.func-free math, spellings of one op on x, domain of x and x_ref)
PHI = {
    "exp": (torch.exp, [torch.exp, torch.Tensor.exp, lambda t: (t + 0).exp_(), lambda t: torch.exp_(t + 0)], "any"),
    "exp2": (lambda t: 2.0**t, [torch.exp2, torch.special.exp2, lambda t: (t + 0).exp2_()], "any"),
    "expm1": (lambda t: torch.exp(t) - 1, [torch.expm1, torch.special.expm1, lambda t: (t + 0).expm1_()], "any"),
    "log": (torch.log, [torch.log, torch.Tensor.log, lambda t: (t + 0).log_()], "pos"),
    "log2": (lambda t: torch.log(t) / math.log(2), [torch.log2, lambda t: t.log2()], "pos"),
    "log10": (lambda t: torch.log(t) / math.log(10), [torch.log10, lambda t: (t + 0).log10_()], "pos"),
    "log1p": (lambda t: torch.log(1 + t), [torch.log1p, torch.special.log1p, lambda t: (t + 0).log1p_()], "pos"),
    "sqrt": (lambda t: t**0.5, [torch.sqrt, lambda t: t.sqrt(), lambda t: (t + 0).sqrt_()], "pos"),
    "rsqrt": (lambda t: 1 / t**0.5, [torch.rsqrt, lambda t: (t + 0).rsqrt_()], "pos"),
    "reciprocal": (lambda t: 1 / t, [torch.reciprocal, lambda t: (t + 0).reciprocal_()], "pos"),
    "abs": (lambda t: torch.where(t < 0, -t, t), [torch.abs, abs, torch.absolute, lambda t: (t + 0).abs_(),
                                                  lambda t: (t + 0).absolute_()], "any"),
    "square": (lambda t: t * t, [torch.square, lambda t: t.square(), lambda t: (t + 0).square_(), lambda t: t**2,
                                 lambda t: torch.pow(t, 2), lambda t: t.pow(2.0), _ipow], "any"),
    "cube": (lambda t: t * t * t, [lambda t: t**3, lambda t: (t + 0).pow_(3)], "any"),
    "pow_frac": (lambda t: torch.exp(1.5 * torch.log(t)), [lambda t: t**1.5, lambda t: torch.pow(t, 1.5)], "pos"),
    "pow_neg": (lambda t: torch.exp(-0.5 * torch.log(t)), [lambda t: t**-0.5, lambda t: (t + 0).pow_(-0.5)], "pos"),
    "sin": (torch.sin, [torch.sin, lambda t: (t + 0).sin_()], "any"),
    "cos": (torch.cos, [torch.cos, lambda t: t.cos()], "any"),
    "erf": (torch.erf, [torch.erf, torch.special.erf, lambda t: (t + 0).erf_()], "any"),
    "erfc": (lambda t: 1 - torch.erf(t), [torch.erfc, torch.special.erfc], "any"),
    "atan": (torch.atan, [torch.atan, lambda t: t.atan()], "any"),
    "sinh": (lambda t: (torch.exp(t) - torch.exp(-t)) / 2, [torch.sinh, lambda t: (t + 0).sinh_()], "any"),
    "cosh": (lambda t: (torch.exp(t) + torch.exp(-t)) / 2, [torch.cosh], "any"),
    "asinh": (lambda t: torch.log(t + torch.sqrt(t * t + 1)), [torch.asinh, lambda t: t.asinh()], "any"),
}
CASES = [(kind, i) for kind, (_, spellings, _) in PHI.items() for i in range(len(spellings))]


def _pair(domain: str, seed: int):
    x, b = _randn(3, 6, seed=seed), _randn(3, 6, seed=seed + 1)
    if domain == "pos":
        x, b = x.abs() + 0.2, b.abs() + 0.2
    return x, b


@pytest.mark.parametrize("kind, i", CASES)
def test_multiplier_is_the_secant(kind, i):
    """DeepLift's multipliers through one op: (phi(x) - phi(b)) / (x - b), written by hand."""
    phi, spellings, domain = PHI[kind]
    op = spellings[i]
    x, b = _pair(domain, seed=10 + i)
    if kind == "abs":
        b = -x * 0.5  # every element changes sign: the secant is exact across it
    m = xattr.deep_lift(lambda t: op(t).sum(1), baselines=b, multiply_by_inputs=False)(x)
    torch.testing.assert_close(m, (phi(x) - phi(b)) / (x - b), rtol=1e-10, atol=1e-12)
    shared = xattr.deep_lift(lambda t: op(t).sum(1), baselines=b[:1], multiply_by_inputs=False)(x)
    torch.testing.assert_close(shared, (phi(x) - phi(b[:1])) / (x - b[:1]), rtol=1e-10, atol=1e-12)


def test_example_alone_is_its_row():
    """Each example alone (a loop, and under vmap) gives its row of the batch, with a reference
    per example and with a shared one (B + 1 rows)."""
    model = Net("log", "pow_frac", cnn=True, seed=3)
    x, b = _randn(4, 2, 5, 5, seed=4), _randn(4, 2, 5, 5, seed=5)
    for base in (b, b[:1].expand_as(x)):
        attr = xattr.deep_lift(xattr.target(model, 2), baselines=base)
        batch = attr(x)
        loop = torch.cat([attr(x[j : j + 1], baselines=base[j : j + 1]) for j in range(4)])
        mapped = torch.func.vmap(lambda r, s: attr(r[None], baselines=s[None])[0])(x, base)
        torch.testing.assert_close(loop, batch, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(mapped, batch, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(batch, xattr.grad(xattr.target(model, 2))(x) * (x - base))


def test_deep_lift_shap_conserves():
    """DeepLift SHAP (c copies against c shared rows): sum = f(x) - mean f(distribution)."""
    model = Net("sqrt_", "exp", cnn=False, seed=7)
    x, dist = _randn(3, 4, seed=8), _randn(5, 4, seed=9)
    attr, delta = xattr.deep_lift_shap(xattr.target(model, 0), baselines=dist, return_delta=True)(x)
    assert delta.abs().max() < 1e-10
    assert torch.isfinite(attr).all()


def _grad(op, x):
    return torch.func.vmap(torch.func.grad(lambda t: op(t).sum()))(x)


@pytest.mark.parametrize("kind", sorted(PHI))
def test_tie_takes_the_derivative(kind):
    """Where x == x_ref, or |x - x_ref| < eps, the multiplier is phi'(x) (torch's gradient)."""
    _, spellings, domain = PHI[kind]
    op = spellings[0]
    x, _ = _pair(domain, seed=20)
    near = x + torch.where(torch.arange(6) % 2 == 0, 0.0, 1e-7).to(F64)  # ties and near-ties
    m = xattr.deep_lift(lambda t: op(t).sum(1), baselines=near, eps=1e-6, multiply_by_inputs=False)(x)
    torch.testing.assert_close(m, _grad(op, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", sorted(PHI))
def test_closed_form_derivative_is_torch_gradient(kind):
    """Outside DeepLift's paired rows the rule gives the derivative: the closed forms equal torch's."""
    _, spellings, domain = PHI[kind]
    op = spellings[0]
    x, _ = _pair(domain, seed=30)
    got = xattr.grad(xattr.rules(lambda t: op(t).sum(), xattr.rule.deep_lift_rules()))(x)
    torch.testing.assert_close(got, _grad(op, x), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("op, base", [
    (torch.log, 0.0), (torch.log, -1.0), (torch.log2, 0.0), (torch.log10, -2.0), (torch.log1p, -1.0),
    (torch.log1p, -3.0), (torch.sqrt, -1.0), (torch.rsqrt, 0.0), (torch.rsqrt, -1.0), (torch.reciprocal, 0.0),
    (lambda t: t**0.5, -1.0), (lambda t: t**-1.5, 0.0), (lambda t: torch.pow(t, -1), 0.0), (torch.exp, 1000.0),
    (torch.cosh, -1000.0), (torch.sinh, 1000.0),
])  # fmt: skip
def test_reference_off_the_domain_takes_the_derivative(op, base):
    """A reference where phi is inf or nan (log of 0, sqrt of -1, exp overflowing): phi'(x), finite.
    (An output that is not finite at the reference is refused: ``nan_to_num`` makes it finite, with
    gradient 1 at x, as ``exp(log(t))``, a mask or ``1 / inf`` would.)"""
    x = _randn(3, 6, seed=40).abs() + 0.2
    m = xattr.deep_lift(lambda t: torch.nan_to_num(op(t), 0.0, 0.0, 0.0).sum(1), baselines=base,
                        multiply_by_inputs=False)(x)
    assert torch.isfinite(m).all()
    torch.testing.assert_close(m, _grad(op, x), rtol=1e-10, atol=1e-12)


def test_secant_from_the_edge_of_the_domain_is_exact():
    """sqrt, x ** 1.5 and abs with x_ref = 0 (where sqrt's derivative is infinite): the secant."""
    x = _randn(3, 6, seed=41).abs() + 0.2
    for op, phi in ((torch.sqrt, torch.sqrt), (lambda t: t**1.5, lambda t: t * torch.sqrt(t)), (torch.abs, torch.abs)):
        m = xattr.deep_lift(lambda t: op(t).sum(1), baselines=0.0, multiply_by_inputs=False)(x)
        torch.testing.assert_close(m, phi(x) / x, rtol=1e-10, atol=1e-12)


def test_not_parsed_keeps_the_gradient():
    """Non-float tensors: no parse, and no error. A fixed tensor exponent is kind "tensor_pow"
    (test_deeplift_binary.py), whose rule with a fixed exponent is this secant (a number base is
    kind "rpow": test_deeplift_gaps.py)."""
    x, b = _randn(2, 5, seed=50), _randn(2, 5, seed=51)
    p = torch.full((5,), 2.0, dtype=F64)
    for fn in (lambda t: t**p, lambda t: torch.pow(t, p)):
        m = xattr.deep_lift(lambda t: fn(t).sum(1), baselines=b, multiply_by_inputs=False)(x)
        torch.testing.assert_close(m, x + b, rtol=1e-12, atol=1e-14)
    ints = torch.arange(6).reshape(2, 3)
    assert torch.equal(xattr.rules(lambda t: t.abs() ** 2, xattr.rule.deep_lift_rules())(ints), ints**2)


def test_kind_keys_and_lrp():
    """Each function stands for its kind in a mapping (``torch.square`` and ``x ** p`` are kind
    "pow"); LRP's default mapping gives each kind `Pass` (``torch.exp`` as ``e ** h``, a number
    base, kind "rpow"; HEAD left them their gradient)."""
    assert {torch.square, torch.Tensor.pow_, torch.Tensor.__ipow__, torch.Tensor.__abs__} <= set(xattr._src.ops.KIND_OF)
    assert {"exp", "log", "pow", "abs", "sqrt"} <= xattr.rule.KINDS and "pow" in xattr.rule.ELEMENTWISE
    x = _randn(3, 4, seed=60)
    passed = xattr.grad(xattr.rules(lambda t: torch.exp(t).sum(), {torch.exp: xattr.rule.Pass()}))(x)
    torch.testing.assert_close(passed, torch.exp(x) / x)  # relevance unchanged: R_x = x * g_x = exp(x)
    squared = xattr.grad(xattr.rules(lambda t: (t**2).sum(), {torch.square: xattr.rule.Pass()}))(x)
    torch.testing.assert_close(squared, x)
    lin1, lin2 = nn.Linear(4, 5).double(), nn.Linear(5, 2).double()
    lrp_exp = xattr.lrp(xattr.target(lambda t: lin2(torch.exp(lin1(t))), 1))(x)
    lrp_pow = xattr.lrp(xattr.target(lambda t: lin2(math.e ** lin1(t)), 1))(x)  # a number base: kind "rpow"
    torch.testing.assert_close(lrp_exp, lrp_pow, rtol=1e-10, atol=1e-12)
    passing = {**xattr.rule.lrp_rules(), torch.exp: xattr.rule.Pass()}
    torch.testing.assert_close(lrp_exp, xattr.lrp(xattr.target(lambda t: lin2(torch.exp(lin1(t))), 1), composite=passing)(x))
    kinds = {xattr._src.ops.KIND_OF[k] for k, rule in xattr.rule.lrp_rules().items() if isinstance(rule, xattr.rule.Pass)}
    assert xattr._src.pointwise.KINDS <= kinds


def test_rule_paths_agree():
    """Eager and vmap give the same gradients under DeepLift's mapping (xattr.testing)."""
    model = Net("abs_", "rsqrt", cnn=False, seed=70)
    check_rule_paths(xattr.target(model, 0), xattr.rule.deep_lift_rules(), _randn(3, 4, seed=71))


def test_hand_written_norms_conserve():
    """Layer and RMS norm written out (pow, rsqrt, a product with the centred input) conserve
    (HEAD: |delta| 0.78 and 0.73 here)."""

    def layer_norm(h):
        c = h - h.mean(-1, keepdim=True)
        return c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + 1e-5)

    def rms_norm(h):
        return h * (h.square().mean(-1, keepdim=True) + 1e-6).rsqrt()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(80)
        l1, l2 = nn.Linear(6, 8).double(), nn.Linear(8, 3).double()
    x, b = _randn(4, 6, seed=81), _randn(4, 6, seed=82)
    for norm in (layer_norm, rms_norm):
        _, delta = xattr.deep_lift(xattr.target(lambda t: l2(torch.tanh(norm(l1(t)))), 0), baselines=b,
                                   return_delta=True)(x)
        assert delta.abs().max() < 1e-12
