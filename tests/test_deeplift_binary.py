"""DeepLift at elementwise functions of two activations (``a ** b``, atan2, logaddexp, logaddexp2,
xlogy, copysign: NOTE: [DeepLift at two inputs] in xattr/_src/deeplift_pairs.py), at ``t / x``
with a fixed tensor t (NOTE: [Quotients of two activations] in two_inputs.py), and at multilinear
ops (einsum of three operands or more, cumprod: NOTE: [DeepLift at a multilinear op] in
multilinear.py). At HEAD every one kept its gradient (|delta| 2.2 to 211 on small MLPs).

Checked: summation-to-delta as a property through every spelling (float64, broadcast and fixed
operands, a reference per example (2B rows), one shared row and a number (B + 1 rows), a batch
of one); each rule's multipliers against the Shapley split written out per element (plain loops,
no xattr); DeepLift SHAP chunk by chunk; ties and the domain's edges (atan2 at (0, 0), xlogy at 0,
a negative base) give finite attributions that still sum to the change; sequence-first rows and
vmap; which calls parse into which kind, and that a rule for functions of one input keyed by
``torch.pow`` never sees two tensors; Captum keeps the gradient at these ops (compat differs).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import xattr
from xattr._src import ops
from xattr.testing.strategies import seeds

F64 = torch.float64


def _randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


FIXED = _randn(6, seed=1).abs() + 0.5  # a tensor not computed from the input
WHOLE = torch.tensor([2.0, 3.0, 1.0, 0.0, 2.0, 3.0], dtype=F64)  # whole exponents: any base is in the domain
MATRIX = _randn(6, 6, seed=2)


def _ipow(a, b, c):
    t = torch.sigmoid(a) + 0
    t **= torch.tanh(b)
    return t


# name: an op on the hidden tensors a, b, c (B, 6) of any sign, (B, 6) out, finite
OPS = {
    "pow": lambda a, b, c: torch.sigmoid(a) ** torch.tanh(b),
    "pow_fn_broadcast": lambda a, b, c: torch.pow(torch.sigmoid(a), torch.tanh(b[:, :1])),
    "pow_method": lambda a, b, c: torch.sigmoid(a).pow(torch.tanh(b) * 2),
    "pow_inplace": _ipow,
    "pow_negative_base": lambda a, b, c: a**WHOLE,
    "pow_fixed_base": lambda a, b, c: FIXED ** torch.tanh(a),
    "atan2": lambda a, b, c: torch.atan2(a, b),
    "arctan2_method": lambda a, b, c: a.arctan2(b[:, :1]),
    "atan2_inplace": lambda a, b, c: (a + 0).atan2_(b),
    "atan2_fixed": lambda a, b, c: torch.atan2(FIXED, a),
    "logaddexp": lambda a, b, c: torch.logaddexp(a, b),
    "logaddexp_broadcast": lambda a, b, c: torch.logaddexp(a[:, :1], b),
    "logaddexp2": lambda a, b, c: torch.logaddexp2(a, b),
    "xlogy": lambda a, b, c: torch.xlogy(torch.sigmoid(a), F.softplus(b)),
    "xlogy_special": lambda a, b, c: torch.special.xlogy(a, torch.exp(b)),
    "xlogy_number": lambda a, b, c: torch.xlogy(1.5, F.softplus(b)) + torch.xlogy(a, 2.0),
    "copysign": lambda a, b, c: torch.copysign(a, b),
    "tdivx": lambda a, b, c: FIXED / (a.exp() + 1),
    "tdivx_fn": lambda a, b, c: torch.div(FIXED, F.softplus(a) + 0.1),
    "tdivx_method": lambda a, b, c: FIXED.true_divide(a * a + 1),
    "einsum3": lambda a, b, c: torch.einsum("bi,bi,bi->bi", a, b, c),
    "einsum3_contracted": lambda a, b, c: torch.einsum("bi,bj,bj->bj", a, torch.tanh(b), c),
    "einsum4_list": lambda a, b, c: torch.einsum("...i,...i,...i,...i->...i", [a, b, c, torch.tanh(a)]),
    "einsum_fixed": lambda a, b, c: torch.einsum("bi,ij,bj->bj", a, MATRIX, c),
    "cumprod": lambda a, b, c: a.cumprod(-1),
    "cumprod_fn": lambda a, b, c: torch.cumprod(torch.tanh(b) + 0.5, 1),
    "cumprod_inplace": lambda a, b, c: (torch.tanh(a) + 0).cumprod_(1),
}


class Net(torch.nn.Module):
    """x (B, 5) -> a, b, c = three affine maps (B, 6) -> op -> linear head (B, 2)."""

    def __init__(self, name: str, seed: int):
        super().__init__()
        self.op = OPS[name]
        self.w = torch.nn.Parameter(_randn(3, 5, 6, seed=seed) * 0.6)
        self.head = torch.nn.Parameter(_randn(6, 2, seed=seed + 1))

    def forward(self, x):
        h = torch.einsum("bk,nkd->nbd", x, self.w)  # one operand: linear, not ruled
        return self.op(h[0], h[1], h[2]) @ self.head


def check_sums_to_delta(f, x, base, **kw):
    """The attributions of output 1 are finite and sum to f(x) - f(b)."""
    attr, delta = xattr.deep_lift(xattr.target(f, 1), baselines=base, return_delta=True, **kw)(x)
    with torch.no_grad():
        gap = f(x)[:, 1] - f(torch.as_tensor(base, dtype=F64).expand_as(x))[:, 1]
    assert torch.isfinite(attr).all()
    torch.testing.assert_close(attr.sum(1), gap, rtol=1e-9, atol=1e-10)
    assert delta.abs().max() <= 1e-10 + 1e-9 * gap.abs().max()
    return attr


@pytest.mark.parametrize("name", sorted(OPS))
@given(batch=st.integers(1, 3), seed=seeds, reference=st.sampled_from(["each", "row", "zero"]))
def test_summation_to_delta(name, batch, seed, reference):
    """sum(attributions) = f(x) - f(b) through every spelling (HEAD: the gradient, off by up to 211)."""
    model = Net(name, seed)
    x = _randn(batch, 5, seed=seed + 2)
    base = {"each": _randn(batch, 5, seed=seed + 3), "row": _randn(1, 5, seed=seed + 4), "zero": 0.0}[reference]
    check_sums_to_delta(model, x, base)


# --------------------------------------------------------------------- against the Shapley split
PAIRS = {
    "pow": (torch.pow, lambda t: t.abs() + 0.2),  # (g, the domain of its inputs)
    "atan2": (torch.atan2, lambda t: t),
    "logaddexp": (torch.logaddexp, lambda t: t),
    "logaddexp2": (torch.logaddexp2, lambda t: t),
    "xlogy": (torch.xlogy, lambda t: t.abs() + 0.1),
    "copysign": (torch.copysign, lambda t: t),
}


def _multipliers(f, x, base):
    return xattr.deep_lift(f, baselines=base, multiply_by_inputs=False)(x)


def _shapley_pair(g, a, a0, b, b0) -> tuple:
    """Each player's Shapley share of g(a, b) - g(a0, b0), over its difference: one element."""
    s_a = ((g(a, b0) - g(a0, b0)) + (g(a, b) - g(a0, b))) / 2
    s_b = ((g(a0, b) - g(a0, b0)) + (g(a, b) - g(a, b0))) / 2
    return s_a / (a - a0), s_b / (b - b0)


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("wide", [False, True])
def test_pair_multipliers_are_the_shapley_split(name, wide):
    """The multipliers of a and b (the model's input itself; b one column broadcast over a's six
    when ``wide``) against the Shapley split written out element by element."""
    g, domain = PAIRS[name]
    v = _randn(6, seed=10)
    cols = 1 if wide else 6

    def f(x):
        return (g(x[:, :6], x[:, 6:]) * v).sum(1)

    x, base = domain(_randn(3, 6 + cols, seed=11)), domain(_randn(3, 6 + cols, seed=12))
    want = torch.zeros_like(x)
    for i, j in itertools.product(range(3), range(6)):
        k = 6 + (0 if wide else j)
        m_a, m_b = _shapley_pair(g, x[i, j], base[i, j], x[i, k], base[i, k])
        want[i, j] += v[j] * m_a
        want[i, k] += v[j] * m_b
    torch.testing.assert_close(_multipliers(f, x, base), want, rtol=1e-10, atol=1e-12)
    shared = base[:1].expand_as(x)  # one row: B + 1 rows
    torch.testing.assert_close(_multipliers(f, x, base[:1]), _multipliers(f, x, shared), rtol=1e-10, atol=1e-12)


def test_fixed_numerator_is_the_secant():
    """``t / x`` with t a fixed tensor: Rescale's secant ``-t / (x x_ref)``."""
    x, b = _randn(3, 6, seed=13).abs() + 0.2, _randn(3, 6, seed=14).abs() + 0.2
    for base in (b, b[:1]):
        for op in (lambda t: FIXED / t, lambda t: torch.div(FIXED, t), lambda t: FIXED.div(t)):
            got = _multipliers(lambda t: op(t).sum(1), x, base)
            torch.testing.assert_close(got, -FIXED / (x * base), rtol=1e-10, atol=1e-12)


def _shapley_multilinear(h, players, ex, ref) -> list:
    """Each player's multiplier, the weighted sum over subsets S of the others of h's gradient in
    it with S at ``ex`` and the rest at ``ref`` (the explicit Shapley sum, plain autograd)."""
    n = len(players)
    out = []
    for i in range(n):
        m = torch.zeros_like(ex[i])
        others = [j for j in range(n) if j != i]
        for size in range(n):
            w = math.factorial(size) * math.factorial(n - 1 - size) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                at = [(ex[j] if j in subset else ref[j]).clone().requires_grad_(j == i) for j in range(n)]
                m += w * torch.autograd.grad(h(*at), at[i])[0]
        out.append(m)
    return out


@pytest.mark.parametrize("equation", ["bi,bi,bi->bi", "bi,bj,bj->bj", "bi,bi,bi,bi->bi"])
def test_einsum_multipliers_are_the_shapley_split(equation):
    """einsum of three or four activations (the model's inputs): the Gauss-Legendre rule against
    the explicit sum over subsets (2^(k-1) gradients per player)."""
    k = equation.count(",") + 1
    v = _randn(6, seed=20)
    x, base = _randn(2, k, 6, seed=21), _randn(2, k, 6, seed=22)

    def f(t):
        return (torch.einsum(equation, *t.unbind(1)) * v).sum(-1)

    got = _multipliers(f, x, base)
    for i in range(2):
        h = lambda *ops_: (torch.einsum(equation, *(o[None] for o in ops_)) * v).sum()  # noqa: E731
        want = _shapley_multilinear(h, range(k), list(x[i]), list(base[i]))
        torch.testing.assert_close(got[i], torch.stack(want), rtol=1e-10, atol=1e-12)


def test_cumprod_multipliers_are_the_shapley_split():
    """cumprod: each element a player (each output the product of those before it)."""
    v = _randn(5, seed=23)
    x, base = _randn(2, 5, seed=24), _randn(2, 5, seed=25)
    got = _multipliers(lambda t: (t.cumprod(1) * v).sum(1), x, base)
    for i in range(2):
        h = lambda *e: (torch.stack(e).cumprod(0) * v).sum()  # noqa: E731
        want = torch.stack(_shapley_multilinear(h, range(5), list(x[i]), list(base[i])))
        torch.testing.assert_close(got[i], want, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------- layouts, chunks, edges
@pytest.mark.parametrize("name", ["pow_fn_broadcast", "atan2", "xlogy", "tdivx", "einsum3_contracted", "cumprod"])
def test_deep_lift_shap_chunks(name):
    """DeepLift SHAP over 4 baselines, whole or chunk by chunk: equal, and summing to f(x) - mean f(D)."""
    model = Net(name, 30)
    x, dist = _randn(3, 5, seed=31), _randn(4, 5, seed=32)
    f = xattr.target(model, 0)
    whole, delta = xattr.deep_lift_shap(f, baselines=dist, return_delta=True)(x)
    for chunk in (1, 3):
        torch.testing.assert_close(xattr.deep_lift_shap(f, baselines=dist, chunk_size=chunk)(x), whole, rtol=1e-10, atol=1e-12)
    assert delta.abs().max() < 1e-9 * (1 + model(x)[:, 0].abs().max())


@pytest.mark.parametrize("name", ["pow", "atan2", "logaddexp", "tdivx", "einsum3", "cumprod"])
def test_sequence_first_and_vmap(name):
    """Rows in dim 1 (sequence-first hidden tensors (3, B, 6)) conserve too, and an example alone
    under vmap gives its row of the batch."""
    model = Net(name, 40)
    op = (lambda a, b, c: torch.einsum("lbi,lbi,lbi->lbi", a, b, c)) if name == "einsum3" else model.op
    scale = torch.tensor([1.0, 0.5, -0.7], dtype=F64)[:, None, None]

    def seq(x):  # the op on (L, B, 6)
        h = torch.einsum("bk,nkd->nbd", x, model.w)[:, None] * scale
        return (op(h[0], h[1], h[2]) @ model.head).sum(0)

    x, b = _randn(4, 5, seed=41), _randn(4, 5, seed=42)
    check_sums_to_delta(seq, x, b)
    f = xattr.target(model, 1)
    attr = xattr.deep_lift(f)
    mapped = torch.func.vmap(lambda r, s: attr(r[None], baselines=s[None])[0])(x, b)
    torch.testing.assert_close(mapped, xattr.deep_lift(f, baselines=b)(x), rtol=1e-10, atol=1e-12)


def test_ties_and_domain_edges_are_finite():
    """An example equal to its reference, atan2 at (0, 0), xlogy at 0 (with ``log 0`` on one
    order's path), a negative base with a fixed exponent: finite attributions that sum to the change."""
    x = torch.cat([torch.zeros(1, 5, dtype=F64), _randn(3, 5, seed=50)])
    edges = {
        "atan2": lambda a, b, c: torch.atan2(a, b),
        "xlogy": lambda a, b, c: torch.xlogy(F.relu(a), F.relu(a) * torch.sigmoid(b)),
        "pow": lambda a, b, c: a**WHOLE + torch.sigmoid(b) ** F.relu(c),
        "einsum3": lambda a, b, c: torch.einsum("bi,bi,bi->bi", F.relu(a), b, c),
    }
    for name, op in edges.items():
        OPS["_edge"] = op
        try:
            model = Net("_edge", 51)
            for base in (0.0, x[:1].expand_as(x).clone()):
                attr = check_sums_to_delta(model, x, base)
                assert attr[0].abs().max() == 0, name  # the example at its reference
        finally:
            del OPS["_edge"]


# --------------------------------------------------------------------- parsing and keys
def test_kinds_and_keys():
    """Which calls parse into which kind; ``torch.pow`` stands for "tensor_pow" where its rule
    accepts it, and a rule for functions of one input keyed by it never sees two tensors."""
    x, y = _randn(2, 3, seed=60).requires_grad_(), _randn(2, 3, seed=61).requires_grad_()
    fixed = _randn(2, 3, seed=62)
    parsed = [(torch.pow, (x, y), "tensor_pow"), (torch.Tensor.__pow__, (fixed, x), "tensor_pow"),
              (torch.atan2, (x, fixed), "atan2"), (torch.Tensor.arctan2_, (x, y), "atan2"),
              (torch.logaddexp, (x, y), "logaddexp"), (torch.logaddexp2, (x, y), "logaddexp2"),
              (torch.special.xlogy, (2.0, x), "xlogy"),
              (torch.copysign, (x, y), "copysign"), (torch.div, (fixed, x), "rdiv"), (torch.cumprod, (x, 1), "cumprod"),
              (torch.einsum, ("bi,bi,bi->b", x, y, x), "einsum"), (torch.einsum, ("bi,bi,bi->b", x, fixed, y), "einsum")]
    for func, args, kind in parsed:
        assert ops.parse(func, args, {}).kind == kind, (func, args)
    untouched = [(torch.atan2, (fixed, fixed)), (torch.div, (fixed, x.detach())),
                 (torch.einsum, ("bi,bi,bi->b", x, fixed, fixed)), (torch.cumprod, (x, 1), {"dtype": F64}),
                 (torch.cumprod, (_randn(2, 80, seed=63).requires_grad_(), 1))]
    for func, args, *kwargs in untouched:
        assert ops.parse(func, args, *(kwargs or [{}])) is None, (func, args)
    rules = xattr.rule.deep_lift_rules()
    for f in (torch.atan2, torch.logaddexp, torch.logaddexp2, torch.xlogy, torch.copysign, torch.pow):
        assert isinstance(rules[f], xattr.rule.Rescale) and ops.KIND_OF[f] in rules[f].kinds
    assert isinstance(rules[torch.cumprod], xattr.rule.Product) and "tensor_pow" in xattr.rule.Rescale.kinds
    assert {"tensor_pow", "atan2", "cumprod"} <= xattr.rule.KINDS and "tensor_pow" not in xattr.rule.ELEMENTWISE

    class Doubled(xattr.rule.Rule):  # a rule for pow of one input: twice the gradient
        kinds = frozenset({"pow"})

        def backward(self, op, saved, grad):
            return (2 * torch.func.vjp(op.fn, saved.inputs[0])[1](grad)[0],)

        keep_inputs = True

    z = _randn(2, 3, seed=64).abs() + 0.5
    f = lambda t: (t**2 + t ** torch.tanh(t)).sum()  # noqa: E731
    got = xattr.grad(xattr.rules(f, {torch.pow: Doubled()}))(z)
    torch.testing.assert_close(got, xattr.grad(f)(z) + 2 * z)  # x ** 2 doubled, a ** b its gradient
    rescaled = xattr.rules(f, {torch.pow: xattr.rule.Rescale()})
    torch.testing.assert_close(xattr.grad(rescaled)(z), xattr.grad(f)(z))  # outside paired rows: the gradient
    assert ops.parse(torch.pow, (z.requires_grad_(), torch.tanh(z)), {}).kind == "tensor_pow"


@pytest.mark.filterwarnings("ignore::UserWarning:captum")
def test_compat_conserves_where_captum_keeps_the_gradient():
    """xattr.compat.captum.DeepLift rules these ops (docs/migration_rules.md); Captum keeps their
    gradient, so its delta is not 0, and its attributions are the plain gradient's there."""
    from xattr.compat import captum as X

    captum = pytest.importorskip("captum.attr")
    x, b = _randn(3, 5, seed=70), _randn(3, 5, seed=71)
    for name in ("atan2", "logaddexp", "einsum3", "tdivx"):
        model = Net(name, 72)
        attr, delta = X.DeepLift(model).attribute(x, baselines=b, target=1, return_convergence_delta=True)
        assert delta.abs().max() < 1e-10
        theirs, their_delta = captum.DeepLift(model).attribute(x, baselines=b, target=1, return_convergence_delta=True)
        assert their_delta.abs().max() > 1e-3, name
        grad = torch.func.vmap(torch.func.grad(lambda t: model(t[None])[0, 1]))(x)
        torch.testing.assert_close(theirs, grad * (x - b), rtol=1e-8, atol=1e-10)
