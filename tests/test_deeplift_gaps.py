"""DeepLift through ``c / x``, ``c ** x``, ``a / b``, ``torch.einsum`` of two activations and
log_softmax (NOTE: [Elementwise functions of one input] in xattr/_src/pointwise.py, [Quotients of
two activations] and [Einsum of two activations] in two_inputs.py, [DeepLift through
log_softmax] in deeplift_softmax.py). At HEAD all of them kept their gradient.

Checked: summation-to-delta as a property on small MLPs and CNNs through every spelling (per
example, one shared row and a number as reference); the multipliers against secants written by
hand and, at einsum, against the same model spelled with ``@``; log_softmax against DeepLift on
its written-out spelling, and sequence-first against batch-first; an example alone equals its row
(per-example and shared reference, and under vmap); the closed-form derivatives against torch's
gradient; what is not parsed (a number or parameter divisor, einsum of one operand or of one
activation and a parameter) keeps the plain gradient (a fixed numerator tensor, tensors on both
sides of pow and einsum of three operands: test_deeplift_binary.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr._src import ops
from xattr.testing.strategies import seeds

from test_deeplift_elementwise import Net as _ElementwiseNet, _randn, check_sums_to_delta

F64 = torch.float64


def _idiv(h):
    t = torch.tanh(h)
    t /= h * h + 1
    return t


# name: a function of a hidden tensor h (B, C) or (B, C, H, W) of any sign, same shape, finite
SPELLINGS = {
    "rdiv": lambda h: 2.0 / (h * h + 0.5),
    "rdiv_int": lambda h: 3 / (h.abs() + 1),
    "div_number": lambda h: torch.div(1.5, h * h + 1),
    "true_divide_number": lambda h: torch.true_divide(-2.0, h.abs() + 0.5),
    "rpow": lambda h: 1.5**h,
    "rpow_fn": lambda h: torch.pow(0.5, h),
    "quotient": lambda h: h / (h * h + 1),
    "quotient_fn": lambda h: torch.div(torch.tanh(h), F.softplus(h) + 0.1),
    "quotient_method": lambda h: torch.sigmoid(h).true_divide(h.abs() + 0.5),
    "quotient_broadcast": lambda h: h / (h.pow(2).sum(1, keepdim=True) + 1).sqrt(),
    "quotient_inplace": _idiv,
    "einsum": lambda h: torch.einsum("b...,b...->b...", h, torch.tanh(h)),
    "einsum_list": lambda h: torch.einsum("...,...->...", [torch.sigmoid(h), h]),
    "log_softmax": lambda h: F.log_softmax(h, dim=1),
    "log_softmax_method": lambda h: h.log_softmax(1),
    "log_softmax_torch": lambda h: torch.log_softmax(h, 1),
    "log_softmax_special": lambda h: torch.special.log_softmax(h, 1),
    "log_softmax_module": nn.LogSoftmax(1),
}


def Net(a: str, b: str, cnn: bool, seed: int) -> nn.Module:
    """test_deeplift_elementwise's net (affine, phi_a, affine, phi_b, linear head) with this file's spellings."""
    return _ElementwiseNet(a, b, cnn, seed, spellings=SPELLINGS)


def _bases(shape, batch: int, seed: int) -> dict:
    return {"each": _randn(batch, *shape, seed=seed), "row": _randn(1, *shape, seed=seed + 1), "zero": 0.0}


@given(st.sampled_from(sorted(SPELLINGS)), st.sampled_from(sorted(SPELLINGS)), st.booleans(), st.integers(1, 3), seeds,
       st.sampled_from(["each", "row", "zero"]))
def test_summation_to_delta(a, b, cnn, batch, seed, reference):
    """sum(attributions) = f(x) - f(b) through every spelling (HEAD: these kept their gradient)."""
    model = Net(a, b, cnn, seed)
    x = _randn(batch, *model.in_shape(), seed=seed + 1)
    base = _bases(model.in_shape(), batch, seed + 2)[reference]
    check_sums_to_delta(model, x, base)


@pytest.mark.parametrize("name", sorted(SPELLINGS))
def test_example_alone_is_its_row(name):
    """Each example alone gives its row of the batch, with a reference per example and a shared one."""
    model = Net(name, "quotient", cnn=True, seed=3)
    x, b = _randn(4, 2, 5, 5, seed=4), _randn(4, 2, 5, 5, seed=5)
    f = xattr.target(model, 2)
    for base, alone in ((b, lambda j: b[j : j + 1]), (b[:1], lambda j: b[:1])):
        attr, delta = xattr.deep_lift(f, baselines=base, return_delta=True)(x)
        rows = torch.cat([xattr.deep_lift(f, baselines=alone(j))(x[j : j + 1]) for j in range(4)])
        torch.testing.assert_close(rows, attr, rtol=1e-10, atol=1e-12)
        assert delta.abs().max() < 1e-10
    attr = xattr.deep_lift(f)
    mapped = torch.func.vmap(lambda r, s: attr(r[None], baselines=s[None])[0])(x, b)  # under vmap too
    torch.testing.assert_close(mapped, xattr.deep_lift(f, baselines=b)(x), rtol=1e-10, atol=1e-12)


def _multipliers(fn, x, b):
    return xattr.deep_lift(lambda t: fn(t).sum(1), baselines=b, multiply_by_inputs=False)(x)


@pytest.mark.parametrize("c", [2.0, -3, 0.5])
def test_number_side_multipliers_are_the_secants(c):
    """``c / x`` and ``c ** x``: (phi(x) - phi(b)) / (x - b), written by hand; one shared row too."""
    x, b = _randn(3, 6, seed=10).abs() + 0.2, _randn(3, 6, seed=11).abs() + 0.2
    for base in (b, b[:1]):
        for op in (lambda t: c / t, lambda t: torch.div(c, t), lambda t: torch.divide(c, t)):
            torch.testing.assert_close(_multipliers(op, x, base), -c / (x * base), rtol=1e-10, atol=1e-12)
        if c > 0:
            want = (c**x - c**base) / (x - base)
            for op in (lambda t: c**t, lambda t: torch.pow(c, t)):
                torch.testing.assert_close(_multipliers(op, x, base), want, rtol=1e-10, atol=1e-12)


def test_number_side_derivatives_are_torchs():
    """Where the reference is the input, the multiplier is torch's own gradient (0 ** x included)."""
    x = _randn(3, 6, seed=12).abs() + 0.1
    for op in (lambda t: 2.5 / t, lambda t: 0.0 / t, lambda t: 1.7**t, lambda t: torch.pow(0.3, t), lambda t: 0.0**t):
        grad = torch.func.grad(lambda t: op(t).sum())(x)
        torch.testing.assert_close(_multipliers(op, x, x), grad, rtol=1e-12, atol=1e-14)


def test_quotient_multipliers_are_written_by_hand():
    """``a / b`` of two halves of the input: a's multiplier is avg(1 / b), b's avg(a) * -1 / (b b_ref)."""
    x, b = _randn(3, 8, seed=14).abs() + 0.5, _randn(3, 8, seed=15).abs() + 0.5
    for base in (b, b[:1].expand_as(b)):
        m = _multipliers(lambda t: t[:, :4] / t[:, 4:], x, base)
        xa, xb, ba, bb = x[:, :4], x[:, 4:], base[:, :4], base[:, 4:]
        want = torch.cat([(1 / xb + 1 / bb) / 2, (xa + ba) / 2 * (-1 / (xb * bb))], 1)
        torch.testing.assert_close(m, want, rtol=1e-10, atol=1e-12)


def _log_softmax_multipliers(x, b, j):
    """d/dx of log_softmax(x)_j by DeepLift's secants, written by hand: e_j - w."""
    lx, lb = x.logsumexp(1, keepdim=True), b.logsumexp(1, keepdim=True)
    q = (x.exp() - b.exp()) / (x - b)
    r = (lx - lb) / (x.exp().sum(1, keepdim=True) - b.exp().sum(1, keepdim=True))
    return F.one_hot(torch.tensor(j), x.shape[1]).to(F64) - r * q


def test_log_softmax_multipliers_and_spellings():
    """log_softmax's multipliers are the secants of ``x - logsumexp(x)``; the default rule equals
    `ExactSoftmax` keyed by any spelling and DeepLift on the written-out spelling; its delta is 0."""
    x, b = _randn(3, 5, seed=16), _randn(3, 5, seed=17) * 0.5
    for j in (0, 3):
        m = _multipliers(lambda t: F.log_softmax(t, 1)[:, j : j + 1], x, b)
        torch.testing.assert_close(m, _log_softmax_multipliers(x, b, j), rtol=1e-10, atol=1e-12)
    lin = nn.Linear(5, 6).double()
    model = lambda t: F.log_softmax(lin(t), 1)  # noqa: E731
    written = lambda t: lin(t) - lin(t).exp().sum(1, keepdim=True).log()  # noqa: E731
    f = xattr.target(model, 2)
    want, delta = xattr.deep_lift(f, baselines=b, return_delta=True)(x)
    assert delta.abs().max() < 1e-12
    torch.testing.assert_close(xattr.deep_lift(xattr.target(written, 2), baselines=b)(x), want, rtol=1e-10, atol=1e-12)
    for key in (F.log_softmax, torch.Tensor.log_softmax, torch.special.log_softmax):
        got = xattr.deep_lift(f, baselines=b, mapping={key: xattr.rule.ExactSoftmax()})(x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_log_softmax_sequence_first():
    """log_softmax over dim 0 of a (features, rows) tensor: the rows in dim 1, the batch-first numbers."""
    lin, head = nn.Linear(4, 5).double(), nn.Linear(5, 2).double()
    first = lambda t: head(F.log_softmax(torch.tanh(lin(t)), 1))  # noqa: E731
    second = lambda t: head(F.log_softmax(torch.tanh(lin(t)).T, 0).T)  # noqa: E731
    x, b = _randn(3, 4, seed=18), _randn(3, 4, seed=19)
    for base in (b, 0.0):
        want, d1 = xattr.deep_lift(xattr.target(first, 1), baselines=base, return_delta=True)(x)
        got, d2 = xattr.deep_lift(xattr.target(second, 1), baselines=base, return_delta=True)(x)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        assert max(d1.abs().max(), d2.abs().max()) < 1e-12


class Attention(nn.Module):
    """Attention written by hand on (B, L, D), with einsum or with ``@``; batch-first or sequence-first."""

    def __init__(self, spelling: str, batch_first: bool):
        super().__init__()
        self.spelling, self.batch_first = spelling, batch_first
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            self.q, self.k, self.v, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.double().eval()

    def forward(self, x):
        h = torch.tanh(x if self.batch_first else x.transpose(0, 1))
        q, k, v = self.q(h), self.k(h), self.v(h)
        if self.spelling == "matmul":
            if not self.batch_first:
                q, k, v = (t.transpose(0, 1) for t in (q, k, v))
            o = torch.softmax(q @ k.transpose(-2, -1), -1) @ v
        elif self.batch_first:
            o = torch.einsum("blm,bmd->bld", torch.softmax(torch.einsum("bld,bmd->blm", q, k), -1), v)
        else:
            o = torch.einsum("lbm,mbd->bld", torch.softmax(torch.einsum("lbd,mbd->lbm", q, k), -1), v)
        return self.head(F.relu(o).mean(1))


def test_einsum_is_the_matmul_spelling():
    """Attention through einsum (batch-first and sequence-first, rows in dim 1) gives the numbers
    of the ``@`` spelling; with `ExactSoftmax` it sums to delta; an example alone is its row."""
    x, b = _randn(3, 5, 4, seed=20), _randn(3, 5, 4, seed=21) * 0.3
    mapping = {F.softmax: xattr.rule.ExactSoftmax()}
    for base in (b, 0.0):
        want = xattr.deep_lift(xattr.target(Attention("matmul", True), 1), baselines=base, mapping=mapping)(x)
        for batch_first in (True, False):
            f = xattr.target(Attention("einsum", batch_first), 1)
            got, delta = xattr.deep_lift(f, baselines=base, mapping=mapping, return_delta=True)(x)
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
            assert delta.abs().max() < 1e-10
    f = xattr.target(Attention("einsum", False), 1)
    rows = torch.cat([xattr.deep_lift(f, baselines=b[j : j + 1], mapping=mapping)(x[j : j + 1]) for j in range(3)])
    torch.testing.assert_close(rows, xattr.deep_lift(f, baselines=b, mapping=mapping)(x), rtol=1e-9, atol=1e-11)


def test_einsum_subscripts():
    """Ellipses expand from the right; an implicit output is the once-seen letters, sorted."""
    from xattr._src import two_inputs  # noqa: PLC0415 (new at this change: the other tests run at HEAD too)

    assert two_inputs._letters("ij,jk", (2, 2)) == (["ij", "jk"], "ik")
    ins, out = two_inputs._letters("...ij,...jk->...ik", (4, 2))
    assert [len(t) for t in ins] == [4, 2] and len(out) == 4 and ins[0][-2:] == "ij" and out[-2:] == "ik"
    a, b = torch.zeros(3, 7, 2), torch.zeros(7, 2)
    assert two_inputs.einsum_dims("b...,...->b...", a, b, 0, 3) == (0, None)
    assert two_inputs.einsum_dims("lbd,bd->lb", a.transpose(0, 1), b, 1, 3) == (1, None)
    assert two_inputs.einsum_dims("bb,b->b", torch.zeros(3, 3), torch.zeros(3), 0, 3) == (None, 0)


def test_untouched_spellings_are_not_parsed():
    """A number, parameter or fixed-tensor divisor, ``rounding_mode``, einsum of one operand or
    of one activation and a parameter: no op (a fixed numerator, tensors on both sides of pow and
    einsum of three operands are ops: test_deeplift_binary.py)."""
    x, y = _randn(2, 3, seed=22).requires_grad_(), _randn(2, 3, seed=23).requires_grad_()
    w, fixed = nn.Parameter(_randn(3, 3, seed=24)), _randn(2, 3, seed=25)
    untouched = [(torch.div, (x, 2.0), {}), (torch.Tensor.div, (x, w[0]), {}), (torch.div, (x, fixed), {}),
                 (torch.div, (x, y), {"rounding_mode": "floor"}), (torch.Tensor.__rdiv__, (x, fixed), {}),
                 (torch.einsum, ("bi->b", x), {}), (torch.einsum, ("bi,ij->bj", x, w), {}),
                 (torch.einsum, ("bi,bi->b", [x, fixed]), {})]
    for func, args, kwargs in untouched:
        assert ops.parse(func, args, kwargs) is None, (func, args)
    parsed = [(torch.div, (x, y), {}, "quotient"), (torch.Tensor.__rdiv__, (x, 2.0), {}, "rdiv"),
              (torch.div, (2, x), {}, "rdiv"), (torch.pow, (2.0, x), {}, "rpow"), (torch.Tensor.__rpow__, (x, 3), {}, "rpow"),
              (torch.einsum, ("bi,bi->b", [x, y]), {}, "einsum"), (torch.log_softmax, (x, 1), {}, "log_softmax")]
    for func, args, kwargs, kind in parsed:
        assert ops.parse(func, args, kwargs).kind == kind
    assert {"rdiv", "rpow"} <= xattr.rule.ELEMENTWISE and {"quotient", "einsum", "log_softmax"} <= xattr.rule.KINDS
    assert {"quotient", "einsum"} <= xattr.rule.Product.kinds and "log_softmax" in xattr.rule.ExactSoftmax.kinds


def test_untouched_spellings_keep_the_plain_gradient():
    """Such calls in a model: DeepLift's multipliers are the plain gradient there (a parameter
    divisor, an einsum with a parameter or of one operand: Rescale at the tanh inside)."""
    fixed, w = _randn(3, seed=26).abs() + 1, nn.Parameter(_randn(3, 3, seed=27))
    x, b = _randn(2, 3, seed=28).abs() + 0.5, _randn(2, 3, seed=29).abs() + 0.5
    for fn in (lambda t: t / fixed, lambda t: torch.einsum("bi,ij->bj", t, w) / w[0]):
        grad = torch.func.grad(lambda t: fn(t).sum())(x)
        torch.testing.assert_close(_multipliers(fn, x, b), grad, rtol=1e-12, atol=1e-14)
    one = _multipliers(lambda t: torch.einsum("bi->bi", torch.tanh(t)) / 2.0, x, b)
    torch.testing.assert_close(one, (torch.tanh(x) - torch.tanh(b)) / (x - b) / 2, rtol=1e-12, atol=1e-14)
