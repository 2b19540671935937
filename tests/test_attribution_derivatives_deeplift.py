"""Derivatives of DeepLift attributions: torch.func.grad of a scalar of the attribution with
respect to the input and to the weights (functional_call), against float64 central differences,
at every DeepLift rule (NOTE: [Derivatives of rule-based attributions] in xattr/_src/rule_limits.py;
the other rule-based methods: tests/test_attribution_derivatives.py, whose helpers this file uses).

The DeepLift methods refused every differentiating transform before (NotImplementedError). Each
point is checked to be away from the rules' switches and the ops' kinks: the attributions with
``eps=MARGIN`` equal those with the default eps (no difference ``x - x_ref`` the rules divide by,
nor a max-pool's gap or a log-sum-exp's, is below MARGIN), and every input of a piecewise op
is at least MARGIN from its kinks, at the input and at the reference.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, hessian, jacfwd, jacrev, vmap
from torch.overrides import TorchFunctionMode

import xattr
from test_attribution_derivatives import DT, MARGIN, _assert_close, _central, _squared, check_grads
from xattr.rule import ExactSoftmax

B, D = 2, 4
X = torch.randn(B, D, dtype=DT, generator=torch.Generator().manual_seed(11))
REF = torch.randn(B, D, dtype=DT, generator=torch.Generator().manual_seed(12))  # one reference per example: 2B rows
DIST = torch.randn(3, D, dtype=DT, generator=torch.Generator().manual_seed(13))  # DeepLift SHAP's baselines

# the kinks of the piecewise ops (their inputs stay MARGIN away from these, at x and at the reference)
KINKS = {F.relu: (0.0,), F.elu: (0.0,), F.leaky_relu: (0.0,), F.hardswish: (-3.0, 3.0), F.hardsigmoid: (-3.0, 3.0),
         F.relu6: (0.0, 6.0), F.hardtanh: (-1.0, 1.0), F.selu: (0.0,), F.celu: (0.0,), F.threshold: (0.1,),
         torch.clamp: (-0.5, 0.5), torch.abs: (0.0,), torch.copysign: (0.0,)}


class Net(nn.Module):
    """Linear, ``body`` (the op under test), Linear; ``width``: the body's output width."""

    def __init__(self, body, width: int = 6, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b, self.body = nn.Linear(D, 6), nn.Linear(width, 3), body
        self.to(DT).eval()

    def forward(self, x):
        return self.b(self.body(self.a(x)))


def _half(h):
    return h[:, :3], h[:, 3:]


BODIES = {  # name: (body, width)
    **{f.__name__: (f, 6) for f in (F.relu, F.elu, F.leaky_relu, torch.sigmoid, torch.tanh, F.softplus, F.gelu, F.silu,
                                    F.hardswish, F.relu6, F.mish, F.selu, F.celu, F.softsign, F.logsigmoid)},
    "hardsigmoid": (lambda h: F.hardsigmoid(3 * h), 6),  # its slope region (-3, 3) reached
    "hardtanh": (F.hardtanh, 6),
    "threshold": (lambda h: F.threshold(h, 0.1, -1.0), 6),
    "clamp": (lambda h: torch.clamp(h, -0.5, 0.5), 6),
    "max_pool": (lambda h: F.max_pool1d(torch.tanh(h).unsqueeze(1), 2).flatten(1), 3),
    "softmax": (lambda h: F.softmax(h, -1), 6),
    "log_softmax": (lambda h: F.log_softmax(h, -1), 6),
    "exp": (torch.exp, 6), "log": (lambda h: torch.log(h * h + 0.3), 6), "sqrt": (lambda h: torch.sqrt(h * h + 0.3), 6),
    "abs": (torch.abs, 6), "pow": (lambda h: h**3, 6), "rdiv": (lambda h: 2.0 / (h * h + 0.5), 6),
    "rpow": (lambda h: 2.0**h, 6), "sin": (torch.sin, 6), "erf": (torch.erf, 6),
    "product": (lambda h: h[:, :3] * torch.tanh(h[:, 3:]), 3),
    "matmul": (lambda h: (h.view(-1, 2, 3) @ h.view(-1, 3, 2)).flatten(1), 4),
    "einsum2": (lambda h: torch.einsum("bi,bj->bij", *_half(h)).flatten(1), 9),
    "einsum3": (lambda h: torch.einsum("bi,bi,bi->bi", h[:, :2], h[:, 2:4], h[:, 4:]), 2),
    "quotient": (lambda h: h[:, :3] / (F.softplus(h[:, 3:]) + 0.5), 3),
    "cumprod": (lambda h: torch.cumprod(h, 1), 6),
    "atan2": (lambda h: torch.atan2(*_half(h)), 3),
    "logaddexp": (lambda h: torch.logaddexp(*_half(h)), 3),
    "xlogy": (lambda h: torch.xlogy(h[:, :3], h[:, 3:] ** 2 + 0.5), 3),
    "tensor_pow": (lambda h: (h[:, :3] ** 2 + 0.5) ** h[:, 3:], 3),
    "copysign": (lambda h: torch.copysign(*_half(h)), 3),
}
MAPPINGS = {"exact_softmax": ("softmax", lambda eps: {F.softmax: ExactSoftmax(eps)})}


class _Inputs(TorchFunctionMode):
    """Records the tensors each piecewise op of `KINKS` receives, and the max-pools' windows."""

    def __init__(self):
        super().__init__()
        self.seen, self.windows = [], []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in KINKS:
            self.seen += [(func, a) for a in args if isinstance(a, torch.Tensor)]
        if func is F.max_pool1d:  # kernel 2 (`BODIES`)
            self.windows.append(args[0].unfold(-1, 2, 2))
        return func(*args, **(kwargs or {}))


def _away_from_kinks(model, x, *points) -> None:
    """At x and at the references: piecewise ops' inputs away from their kinks; max-pool windows
    without a near tie, and each pooled value of x apart from every reference's."""
    with _Inputs() as rec, torch.no_grad():
        for p in (x, *points):
            model(p)
    for func, t in rec.seen:
        for k in KINKS[func]:
            assert (t - k).abs().min() > MARGIN, f"{func.__name__} input within {MARGIN} of its kink {k}"
    for w in rec.windows:
        assert (w[..., 0] - w[..., 1]).abs().min() > MARGIN
    pooled = [w.amax(-1) for w in rec.windows]
    for r in pooled[1:]:
        assert (pooled[0][:, None] - r[None]).abs().min() > MARGIN


def _away_from_ties(make, x) -> None:
    """``make(eps)`` an attribution function: equal at eps = MARGIN and at the default, so no
    difference a rule divides by is in between."""
    torch.testing.assert_close(make(MARGIN)(x), make(1e-10)(x), rtol=0, atol=1e-13)


def _check(make, model, x=X, params=("a.weight", "b.weight"), *points) -> None:
    """`check_grads` at a point away from kinks and ties (module docstring); ``make(eps,
    forward)``: the attribution function of ``forward``; ``points``: the references."""
    _away_from_kinks(model, x, *points)
    _away_from_ties(lambda eps: make(eps, model), x)
    check_grads(lambda forward: make(1e-10, forward), model, x, params)


def _deep_lift(baselines, mapping=None):
    return lambda eps, m: xattr.deep_lift(xattr.target(m, 1), baselines=baselines, eps=eps,
                                          mapping=None if mapping is None else mapping(eps))


@pytest.mark.parametrize("name", list(BODIES) + list(MAPPINGS))
def test_deep_lift_gradient_at_every_rule(name):
    """Paired rows (a reference per example): 2B rows."""
    body, mapping = (BODIES[name], None) if name in BODIES else (BODIES[MAPPINGS[name][0]], MAPPINGS[name][1])
    model = Net(body[0], body[1])
    _check(_deep_lift(REF, mapping), model, X, ("a.weight", "b.weight"), REF)


@pytest.mark.parametrize("name", ["tanh", "max_pool", "softmax", "exact_softmax", "log_softmax", "einsum3", "atan2", "log"])
def test_deep_lift_gradient_with_a_shared_reference(name):
    """One reference row for the batch (NOTE: [Shared reference]): B + 1 rows."""
    body, mapping = (BODIES[name], None) if name in BODIES else (BODIES[MAPPINGS[name][0]], MAPPINGS[name][1])
    model = Net(body[0], body[1])
    _check(_deep_lift(0.3, mapping), model, X, ("a.weight", "a.bias"), torch.full_like(X, 0.3))


@pytest.mark.parametrize("spelling", ["cpu", "where"])
@pytest.mark.parametrize("name", ["tanh", "exp", "atan2"])
def test_deep_lift_gradient_at_exact_ties_is_finite(name, spelling, monkeypatch):
    """Units 0 and 1 read only features where the reference equals the input: their ``x - x_ref``
    is exactly 0. The multipliers there took ``0 * d(dy / dx)``, nan, into the outer gradient
    (Rescale's torch.where spelling, used on GPUs, and the pointwise and two-input secants)."""
    from xattr._src import deeplift_rules

    if spelling == "where":
        original = deeplift_rules._rescaled
        monkeypatch.setattr(deeplift_rules, "_rescaled", lambda *a, **k: original(*a, **{**k, "where": True}))
    model = Net(*BODIES[name])
    with torch.no_grad():
        model.a.weight[:2, :2] = 0.0
    ref = torch.cat([REF[:, :2], X[:, 2:]], 1)
    s = _squared(_deep_lift(ref)(1e-10, model))
    got = grad(s)(X).reshape(-1)
    assert torch.isfinite(got).all()
    _assert_close(got, _central(s, X, range(X.numel())))


def test_deep_lift_gradient_through_the_retry_of_a_sequence_first_model():
    """(L, R, 6) with L equal to the 2B = 4 rows may hold them in dim 0 or dim 1: the call is run
    again with the copies repeated (NOTE: [Rows in dim 0 or dim 1])."""
    calls = []

    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(3)
            self.a, self.b = nn.Linear(D, 6), nn.Linear(6, 3)
            self.to(DT).eval()

        def forward(self, x):  # (B, L, D)
            calls.append(x.shape[0])
            h = torch.tanh(self.a(x.transpose(0, 1)))  # (L, B, 6)
            return self.b(F.softmax(h, 0).mul(h).sum(0))  # softmax over the sequence: a product

    x = torch.randn(B, 4, D, dtype=DT, generator=torch.Generator().manual_seed(14))
    ref = torch.randn(B, 4, D, dtype=DT, generator=torch.Generator().manual_seed(15))
    model = SeqFirst()
    _deep_lift(ref)(1e-10, model)(x)
    assert calls == [4, 8]  # retried with twice the rows
    _check(_deep_lift(ref), model, x, ("a.weight", "a.bias"))


@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize("name", ["tanh", "max_pool", "softmax"])
def test_deep_lift_shap_gradient(name, chunk_size):
    """Three baselines, each shared by the batch (B + 1 rows a copy), in one call or one a call."""
    make = lambda eps, m: xattr.deep_lift_shap(xattr.target(m, 1), baselines=DIST, eps=eps, chunk_size=chunk_size)  # noqa: E731
    _check(make, Net(*BODIES[name]), X, ("a.weight", "b.weight"), DIST)


def _deep(seed: int = 4) -> Net:
    return Net(nn.Sequential(nn.Tanh(), nn.Linear(6, 6), nn.Softplus(), nn.Linear(6, 6), nn.ELU()), seed=seed)


@pytest.mark.parametrize("method", ["layer_deep_lift", "layer_deep_lift_shap", "neuron_deep_lift", "neuron_deep_lift_shap"])
def test_layer_and_neuron_deep_lift_gradient(method):
    model = _deep()

    def make(eps, m):
        split = xattr.at_layer(xattr.target(m, 1), model.body[2])  # the softplus's output
        if method == "layer_deep_lift":
            return xattr.layer_deep_lift(split, baselines=REF, eps=eps)
        if method == "layer_deep_lift_shap":
            return xattr.layer_deep_lift_shap(split, baselines=DIST, eps=eps)
        f = xattr.neuron(split, 3)  # attributions to the input of one neuron of the layer
        return (xattr.deep_lift(f, baselines=REF, eps=eps) if method == "neuron_deep_lift"
                else xattr.deep_lift_shap(f, baselines=DIST, eps=eps))

    params = ("a.weight", "body.1.weight") + (("body.3.bias",) if method.startswith("layer") else ())
    _check(make, model, X, params, REF, DIST)


def test_deep_lift_gradient_through_an_lstm():
    """nn.LSTM written out step by step (NOTE: [Recurrent layers written out]): Rescale at its
    gates, Product at their products."""

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(5)
            self.lstm, self.out = nn.LSTM(D, 5, batch_first=True), nn.Linear(5, 3)
            self.to(DT).eval()

        def forward(self, x):
            return self.out(self.lstm(x)[0][:, -1])

    x = torch.randn(B, 3, D, dtype=DT, generator=torch.Generator().manual_seed(16))
    _check(_deep_lift(0.2), Recurrent(), x, ("lstm.weight_hh_l0", "lstm.bias_ih_l0"))


@pytest.mark.parametrize("name", ["tanh", "max_pool", "exact_softmax"])
def test_deep_lift_jacobians_forward_and_reverse_and_hessian(name):
    body, mapping = (BODIES[name], None) if name in BODIES else (BODIES[MAPPINGS[name][0]], MAPPINGS[name][1])
    attr = _deep_lift(REF, mapping)(1e-10, Net(*body))
    rev = jacrev(attr)(X)
    torch.testing.assert_close(jacfwd(attr)(X), rev, rtol=1e-9, atol=1e-12)
    n = X.numel()
    fd = torch.stack([(attr(X + 1e-6 * e.view_as(X)) - attr(X - 1e-6 * e.view_as(X))) / 2e-6 for e in torch.eye(n, dtype=DT)], -1)
    _assert_close(rev.reshape(n, n), fd.reshape(n, n))
    s = _squared(attr)
    g = grad(s)
    fd2 = torch.stack([(g(X + 1e-6 * e.view_as(X)) - g(X - 1e-6 * e.view_as(X))) / 2e-6 for e in torch.eye(n, dtype=DT)], -1)
    _assert_close(hessian(s)(X).reshape(n, n), fd2.reshape(n, n))
    per_example = vmap(grad(lambda v, r: (attr(v[None], baselines=r[None]) ** 2).sum()))(X, REF)
    torch.testing.assert_close(per_example, grad(lambda v: (attr(v) ** 2).sum())(X))


@pytest.mark.parametrize("method", ["deep_lift", "deep_lift_shap"])
def test_a_backward_run_outside_the_forwards_context_recomputes_the_rule_in_it(method, monkeypatch):
    """On a GPU autograd runs backward passes on threads of its own, where every context variable
    reads its default: simulated here by running each ruled op's backward in an empty context.
    The rules recomputed there must still see the call's paired rows, or DeepLift's attributions
    inside the transform are the plain gradient's."""
    import contextvars

    from xattr._src import rule_apply

    original = rule_apply._Apply.backward
    monkeypatch.setattr(rule_apply._Apply, "backward", staticmethod(lambda *a: contextvars.Context().run(original, *a)))
    f = xattr.target(_deep(), 1)
    attr = xattr.deep_lift(f, baselines=REF) if method == "deep_lift" else xattr.deep_lift_shap(f, baselines=DIST)

    def loss(v):
        a = attr(v)
        return (a**2).sum(), a

    torch.testing.assert_close(grad(loss, has_aux=True)(X)[1], attr(X))
