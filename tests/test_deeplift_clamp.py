"""DeepLift and LRP at clamp (NOTE: [Clamp as an activation] in xattr/_src/ops.py).

``torch.clamp``, ``torch.clip``, ``clamp_min``, ``clamp_max`` (function, Tensor method, in place;
numbers or tensors that are not differentiated as bounds) and ``torch.maximum``/``minimum``/``max``/
``min`` of an activation and a fixed tensor are one elementwise kind, ``"clamp"``: DeepLift's
Rescale rule and LRP's `Pass` apply there as at ReLU and hardtanh. Tested: summation-to-delta for
every spelling (hypothesis), a layer-by-layer reference of the Rescale rule, equality with the
same models written with ReLU / hardtanh (DeepLift, DeepLift SHAP, layer, neuron and Captum-style
DeepLift; LRP), relevance conserved by LRP, and a bound that depends on the input, which makes
clamp a function of two inputs: kind "maximum" (tests/test_deeplift_extremum_pairs.py).
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
from xattr.testing import assert_trees_close
from xattr.testing.strategies import random_tensor, seeds

# every spelling, as f(module, h); bounds are chosen so that random activations (scale ~1) are clamped
SPELLINGS = {
    "torch.clamp(min=0)": lambda m, h: torch.clamp(h, min=0.0),
    "torch.clamp(lo, hi)": lambda m, h: torch.clamp(h, -0.5, 0.5),
    "x.clamp(max=)": lambda m, h: h.clamp(max=0.2),
    "torch.clip": lambda m, h: torch.clip(h, -0.3, 0.4),
    "x.clip(min=)": lambda m, h: h.clip(min=-0.1),
    "torch.clamp_min": lambda m, h: torch.clamp_min(h, 0.1),
    "x.clamp_min": lambda m, h: h.clamp_min(-0.2),
    "torch.clamp_max": lambda m, h: torch.clamp_max(h, 0.3),
    "x.clamp_max": lambda m, h: h.clamp_max(-0.1),
    "x.clamp_(min=0)": lambda m, h: h.clamp_(min=0.0),
    "torch.clamp_": lambda m, h: torch.clamp_(h, -0.4, 0.3),
    "x.clip_": lambda m, h: h.clip_(-0.2, 0.5),
    "torch.clip_": lambda m, h: torch.clip_(h, min=0.0),
    "torch.clamp_min_": lambda m, h: torch.clamp_min_(h, 0.0),
    "x.clamp_min_": lambda m, h: h.clamp_min_(0.05),
    "torch.clamp_max_": lambda m, h: torch.clamp_max_(h, 0.2),
    "x.clamp_max_": lambda m, h: h.clamp_max_(0.1),
    "tensor bounds": lambda m, h: torch.clamp(h, m.lo, m.hi),
    "x.clamp(min=tensor)": lambda m, h: h.clamp(min=m.lo),
    "x.clamp_(max=tensor)": lambda m, h: h.clamp_(max=m.hi),
    "parameter bound": lambda m, h: h.clamp_min(m.raw.exp() - 1),  # differentiated, but from parameters alone
    "zeros_like bound": lambda m, h: h.clamp(min=torch.zeros_like(h)),
    "torch.maximum(x, 0)": lambda m, h: torch.maximum(h, torch.zeros((), dtype=h.dtype)),
    "torch.max(zeros, x)": lambda m, h: torch.max(torch.zeros_like(h), h),
    "x.minimum(tensor)": lambda m, h: h.minimum(m.hi),
    "torch.min(x, tensor)": lambda m, h: torch.min(h, m.hi),
}


class Clamp(nn.Module):
    """One spelling of clamp, with tensor bounds shaped for (B, width) or (B, width, H, W)."""

    def __init__(self, spelling: str, width: int, spatial: bool):
        super().__init__()
        shape = (width, 1, 1) if spatial else (width,)
        self.spelling = spelling
        self.register_buffer("lo", torch.linspace(-0.4, 0.1, width).reshape(shape))
        self.register_buffer("hi", torch.linspace(0.15, 0.6, width).reshape(shape))
        self.raw = nn.Parameter(torch.linspace(0.5, 1.5, width).log().reshape(shape))

    def forward(self, h):
        return SPELLINGS[self.spelling](self, h)


def build(kind: str, seed: int, in_shape: tuple, acts: tuple, n_out: int, bias: bool = True) -> nn.Sequential:
    """An MLP or CNN (float64, eval) with one clamp spelling after each hidden layer."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        if kind == "mlp":
            width = in_shape[0]
            for i, act in enumerate(acts):
                layers += [nn.Linear(width, 4 + i, bias=bias), Clamp(act, 4 + i, False)]
                width = 4 + i
            layers.append(nn.Linear(width, n_out, bias=bias))
        else:
            c, h, w = in_shape
            for i, act in enumerate(acts):
                layers += [nn.Conv2d(c, 2 + i, 3, padding=1, bias=bias), Clamp(act, 2 + i, True)]
                c = 2 + i
            layers += [nn.Flatten(), nn.Linear(c * h * w, n_out, bias=bias)]
        return nn.Sequential(*layers).double().eval()


@st.composite
def cases(draw, spellings=tuple(sorted(SPELLINGS))):
    kind = draw(st.sampled_from(["mlp", "cnn"]))
    in_shape = (draw(st.integers(2, 5)),) if kind == "mlp" else (draw(st.integers(1, 2)), 4, draw(st.integers(4, 5)))
    acts = tuple(draw(st.lists(st.sampled_from(spellings), min_size=1, max_size=3)))
    n_out = draw(st.integers(1, 3))
    model = build(kind, draw(seeds), in_shape, acts, n_out)
    batch = draw(st.integers(1, 3))
    x = random_tensor((batch,) + in_shape, seed=draw(seeds))
    # scale 0: a zero reference, shared by the batch (one reference row); otherwise one per example
    base = random_tensor((batch,) + in_shape, seed=draw(seeds), scale=draw(st.sampled_from([0.0, 0.5, 1.0])))
    return model, x, base, draw(st.integers(0, n_out - 1))


def _gap(model, x, base, t):
    with torch.no_grad():
        return model(x)[:, t] - model(base)[:, t]


# --------------------------------------------------------------------------- summation-to-delta


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_every_spelling_sums_to_delta(spelling):
    """A fixed MLP per spelling: the old code kept the plain gradient at clamp, off by 1e-2..1e-1."""
    model = build("mlp", 5, (5,), (spelling, spelling), 2)
    x, base = random_tensor((4, 5), seed=1), random_tensor((4, 5), seed=2, scale=0.5)
    for b in (base, 0.0):  # paired rows, and one shared reference row
        attr, delta = xattr.deep_lift(xattr.target(model, 1), baselines=b, return_delta=True)(x)
        gap = _gap(model, x, torch.zeros_like(x) + b, 1)
        assert delta.abs().max() < 1e-12, (spelling, delta)
        assert_trees_close(attr.sum(1), gap, atol=1e-12, what=spelling)


@given(cases())
def test_summation_to_delta(case):
    model, x, base, t = case
    attr, delta = xattr.deep_lift(xattr.target(model, t), baselines=base, return_delta=True)(x)
    assert delta.abs().max() <= 1e-10 + 1e-8 * attr.abs().sum()
    assert_trees_close(attr.flatten(1).sum(1), _gap(model, x, base, t), atol=1e-10, rtol=1e-8, what="sum vs f(x) - f(b)")


# --------------------------------------------------------------------------- the Rescale rule layer by layer


def reference(model: nn.Sequential, x, r, t: int, eps: float):
    """DeepLift's attributions by the paper's Rescale rule, one layer at a time: at each clamp
    ``(y - y') / (x - x')``, or its ordinary derivative where ``|x - x'| < eps``."""
    xs, rs = [x], [r]
    with torch.no_grad():
        for module in model:
            xs.append(module(xs[-1].clone()))  # clones: in-place spellings overwrite their input
            rs.append(module(rs[-1].clone()))
    m = torch.zeros_like(xs[-1])
    m[:, t] = 1
    for i in reversed(range(len(model))):
        module, xi, ri, yi, ryi = model[i], xs[i], rs[i], xs[i + 1], rs[i + 1]
        if isinstance(module, nn.Linear):
            m = m @ module.weight
        elif isinstance(module, nn.Conv2d):
            m = F.conv_transpose2d(m, module.weight, padding=module.padding)
        elif isinstance(module, nn.Flatten):
            m = m.reshape(xi.shape)
        else:  # clamp: elementwise, so its ordinary derivative is the gradient of its sum
            z = xi.clone().requires_grad_()
            (slope,) = torch.autograd.grad(module(z.clone()).sum(), z)
            dx = xi - ri
            near = dx.abs() < eps
            m = m * torch.where(near, slope, (yi - ryi) / torch.where(near, torch.ones_like(dx), dx))
    return (x - r) * m


@given(cases(), st.sampled_from([1e-10, 0.3]))
def test_matches_the_rescale_rule_layer_by_layer(case, eps):
    model, x, base, t = case
    got = xattr.deep_lift(xattr.target(model, t), baselines=base, eps=eps)(x)
    assert_trees_close(got, reference(model, x, base, t, eps), atol=1e-10, rtol=1e-8, what="deep_lift vs reference")


def test_the_reference_is_not_the_gradient():
    model = build("mlp", 5, (5,), ("torch.clamp(lo, hi)", "x.clamp_min"), 2)
    x, base = random_tensor((3, 5), seed=1), random_tensor((3, 5), seed=2, scale=0.5)
    ixg = xattr.grad(xattr.target(model, 0))(x) * (x - base)
    assert (reference(model, x, base, 0, 1e-10) - ixg).abs().max() > 1e-3
    assert_trees_close(xattr.deep_lift(xattr.target(model, 0), baselines=base)(x), reference(model, x, base, 0, 1e-10))


# --------------------------------------------------------------------------- the same model with ReLU / hardtanh

TWINS = [  # (clamp spelling, the activation it equals)
    (lambda h: torch.clamp(h, min=0), F.relu),
    (lambda h: h.clamp_(min=0), F.relu),
    (lambda h: torch.maximum(h, torch.zeros_like(h)), F.relu),
    (lambda h: torch.clamp(h, -1, 1), F.hardtanh),
    (lambda h: h.clip(-0.5, 0.8), lambda h: F.hardtanh(h, -0.5, 0.8)),
    (lambda h: torch.clamp_max_(torch.clamp_min(h, 0), 0.5), lambda h: F.hardtanh(h, 0.0, 0.5)),
]


class Net(nn.Module):
    """conv -> act -> max-pool -> linear -> act -> linear, with an activation given as a function."""

    def __init__(self, act, bias: bool = True):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=bias)
            self.fc1 = nn.Linear(3 * 4 * 4, 6, bias=bias)
            self.fc2 = nn.Linear(6, 3, bias=bias)
        self.act = act

    def forward(self, x):
        h = F.max_pool2d(self.act(3 * self.conv(x)), 2)
        return self.fc2(self.act(2 * self.fc1(h.flatten(1))))


def _pair(i: int, bias: bool = True):
    clamp, act = TWINS[i]
    return Net(clamp, bias).double().eval(), Net(act, bias).double().eval()


X, BASE = random_tensor((3, 2, 8, 8), seed=11), random_tensor((3, 2, 8, 8), seed=12, scale=0.5)


@pytest.mark.parametrize("i", range(len(TWINS)))
def test_deep_lift_at_clamp_equals_relu_and_hardtanh(i):
    clamped, twin = _pair(i)
    assert torch.equal(clamped(X.clone()), twin(X))
    for base in (BASE, 0.0):
        a = xattr.deep_lift(xattr.target(clamped, 2), baselines=base)(X)
        assert_trees_close(a, xattr.deep_lift(xattr.target(twin, 2), baselines=base)(X), what="deep_lift")
    dist = random_tensor((4, 2, 8, 8), seed=13)
    a = xattr.deep_lift_shap(xattr.target(clamped, 1), baselines=dist)(X)
    assert_trees_close(a, xattr.deep_lift_shap(xattr.target(twin, 1), baselines=dist)(X), what="deep_lift_shap")
    layer = xattr.layer_deep_lift(xattr.at_layer(xattr.target(clamped, 0), clamped.fc1), baselines=BASE)(X)
    want = xattr.layer_deep_lift(xattr.at_layer(xattr.target(twin, 0), twin.fc1), baselines=BASE)(X)
    assert_trees_close(layer, want, what="layer_deep_lift")
    neuron = xattr.deep_lift(xattr.neuron(xattr.at_layer(clamped, clamped.fc1), 4), baselines=BASE)(X)
    want = xattr.deep_lift(xattr.neuron(xattr.at_layer(twin, twin.fc1), 4), baselines=BASE)(X)
    assert_trees_close(neuron, want, what="neuron deep_lift")


@pytest.mark.parametrize("i", [0, 3])
def test_compat_deep_lift_at_clamp_equals_relu_and_hardtanh(i):
    from xattr.compat.captum import DeepLift, DeepLiftShap

    clamped, twin = _pair(i)
    a, d = DeepLift(clamped).attribute(X, baselines=BASE, target=1, return_convergence_delta=True)
    b, _ = DeepLift(twin).attribute(X, baselines=BASE, target=1, return_convergence_delta=True)
    assert_trees_close(a, b, what="compat DeepLift")
    assert d.abs().max() < 1e-12
    dist = random_tensor((4, 2, 8, 8), seed=13)
    assert_trees_close(DeepLiftShap(clamped).attribute(X, baselines=dist, target=0),
                       DeepLiftShap(twin).attribute(X, baselines=dist, target=0), what="compat DeepLiftShap")  # fmt: skip


# --------------------------------------------------------------------------- LRP


def test_lrp_at_clamp_equals_relu_and_hardtanh():
    """LRP passes relevance through clamp unchanged (`Pass`), as through hardtanh and ReLU6. At
    clamp(min=0) that is ReLU's own derivative, which LRP keeps (so the ReLU twins agreed before
    clamp was a kind; the hardtanh twins did not: the plain gradient drops saturated units)."""
    from xattr.compat.captum import LRP

    for i in range(len(TWINS)):
        clamped, twin = _pair(i)
        r, delta = xattr.lrp(xattr.target(clamped, 2), return_delta=True)(X)
        want, want_delta = xattr.lrp(xattr.target(twin, 2), return_delta=True)(X)
        assert_trees_close(r, want, what=f"lrp, twin {i}")
        assert_trees_close(delta, want_delta, what=f"lrp delta, twin {i}")
        assert_trees_close(LRP(clamped).attribute(X, target=2), LRP(twin).attribute(X, target=2), what=f"compat LRP, twin {i}")


def test_lrp_conserves_relevance_through_clamp():
    """Without biases, LRP-epsilon (eps -> 0) conserves relevance layer by layer: sum(R) = f(x),
    also where clamp saturates (the plain gradient there dropped the clamped units' relevance)."""
    clamped, _ = _pair(3, bias=False)
    r, delta = xattr.lrp(xattr.target(clamped, 0), composite=xattr.rule.lrp_rules(1e-14), return_delta=True)(X)
    with torch.no_grad():
        out = clamped(X)[:, 0]
    assert out.abs().min() > 1e-3
    assert delta.abs().max() < 1e-10, delta


# --------------------------------------------------------------------------- what is (not) the clamp kind


def test_every_spelling_parses_as_the_clamp_kind():
    h, zero = torch.randn(2, 3), torch.zeros(3)
    for name, spell in SPELLINGS.items():
        module = Clamp(name, 3, False)
        seen = []

        class Spy(torch.overrides.TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                op = ops.parse(func, args, kwargs or {})
                if op is not None and op.kind == "clamp":
                    seen.append(op)
                return func(*args, **(kwargs or {}))

        with Spy():
            spell(module, h.clone())
        assert [op.kind for op in seen] == ["clamp"], name
        assert seen[0].inplace == name.rstrip(")").split("(")[0].endswith("_"), name
    # reductions, out=, integers and bounds that broadcast the output are not clamp
    for func, args, kwargs in [(torch.max, (h, 1), {}), (torch.max, (h,), {"dim": 0}), (torch.min, (h,), {}),
                               (torch.clamp, (h,), {"min": 0, "out": torch.empty(2, 3)}),
                               (torch.clamp, (torch.arange(3),), {"max": 1}),
                               (torch.clamp, (zero,), {"min": h}), (torch.maximum, (zero, h), {})]:  # fmt: skip
        op = ops.parse(func, args, kwargs)
        assert op is None or op.kind != "clamp", (func, args, kwargs)
    # reductions are kind "max" (NOTE: [Max along a dim] in xattr/_src/extrema.py)
    assert [ops.parse(torch.max, a, k).kind for a, k in [((h, 1), {}), ((h,), {"dim": 0}), ((h,), {})]] == ["max"] * 3


class Gated(nn.Module):
    """clamp with a bound computed from the input (``torch.maximum`` of two activations), then a
    clamp with a fixed bound; ``twin`` writes the same function with maximum and ReLU."""

    def __init__(self, twin: bool):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            self.a, self.b, self.out = nn.Linear(5, 6), nn.Linear(5, 6), nn.Linear(6, 2)
        self.twin = twin

    def forward(self, x):
        h1, h2 = self.a(x), self.b(x)
        if self.twin:
            return self.out(0.5 - F.relu(0.5 - torch.maximum(h1, h2)))
        return self.out(torch.clamp(h1, min=h2).clamp(max=0.5))


def test_a_bound_that_depends_on_the_input_is_the_maximum_of_two_activations():
    """clamp(h1, min=h2) with h2 computed from the input is max(h1, h2), a function of two
    inputs: kind "maximum", split by the two inputs' Shapley values as torch.maximum of two
    activations is (NOTE: [Maximum of two activations] in xattr/_src/pairwise.py), so the delta
    is rounding (it kept its gradient before, and the delta showed the gap: above 1e-3). The
    fixed clamp after it is still rescaled (the same numbers as the ReLU written in its place)."""
    gated, twin = Gated(False).double().eval(), Gated(True).double().eval()
    x, base = random_tensor((4, 5), seed=5), random_tensor((4, 5), seed=6, scale=0.5)
    for b in (base, 0.0):
        attr, delta = xattr.deep_lift(xattr.target(gated, 1), baselines=b, return_delta=True)(x)
        want, want_delta = xattr.deep_lift(xattr.target(twin, 1), baselines=b, return_delta=True)(x)
        assert_trees_close(attr, want, what="clamp(min=activation) vs maximum")
        assert_trees_close(delta, want_delta, what="delta")
        assert delta.abs().max() < 1e-13
    # the same under vmap (bounds are told apart under torch.func transforms too)
    f = xattr.deep_lift(xattr.target(gated, 1), baselines=base[:1])
    looped = torch.func.vmap(lambda r: f(r[None])[0])(x)
    assert_trees_close(looped, f(x), what="vmap")
    assert_trees_close(looped, xattr.deep_lift(xattr.target(twin, 1), baselines=base[:1])(x), what="vmap vs twin")


@pytest.mark.parametrize("spelling", ["tensor bounds", "parameter bound", "x.clamp_(max=tensor)", "torch.maximum(x, 0)"])
def test_vmap_over_examples_equals_the_batch(spelling):
    model = build("cnn", 2, (2, 4, 4), (spelling, "torch.clamp(lo, hi)"), 2)
    x, base = random_tensor((3, 2, 4, 4), seed=7), random_tensor((1, 2, 4, 4), seed=8)
    f = xattr.deep_lift(xattr.target(model, 0), baselines=base)
    looped = torch.func.vmap(lambda r: f(r[None])[0])(x)
    assert_trees_close(looped, f(x), what="vmap vs batch")
    assert_trees_close(f(x), reference(model, x, base.expand_as(x), 0, 1e-10), what="vs reference")
