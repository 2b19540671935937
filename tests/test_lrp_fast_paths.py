"""The fast paths of the LRP rules (NOTE: [Alpha-beta convolutions per layer] in lrp_math.py):
alpha-beta and z+ skipping the terms of a non-negative input's negative part, several transposes
in one call (`transposes`), and z^B's bounds convolved on one row. Each against the general path
on inputs that do and do not meet its condition, and alpha-beta against explicit loops."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr._src import lrp_rules as module
from xattr._src.lrp_math import _from_relu, non_negative, transpose, transposes
from xattr._src.ops import parse
from xattr.rule import AlphaBeta, Epsilon, ZBox, ZPlus, lrp_rules

D = torch.float64


def randn(seed: int, *shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


@pytest.fixture
def general(monkeypatch):
    """Makes every AlphaBeta layer take the general path (as if no input were known >= 0)."""

    def use():
        monkeypatch.setattr(module, "non_negative", lambda x: False)

    return use


def stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps if z >= 0 else z - eps


def loop_alpha_beta(x, w, b, r_out, alpha, beta, eps, bias, padding):
    """One conv layer (stride 1) in relevance form, by explicit loops over examples, output
    channels, positions and each output's contributions ``x_i w_ij``."""
    n, c_in, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    xp = F.pad(x, (padding,) * 4)
    r_in = torch.zeros_like(xp)
    for e in range(n):
        for o in range(c_out):
            for i in range(r_out.shape[2]):
                for j in range(r_out.shape[3]):
                    parts = [(c, i + a, j + d, float(xp[e, c, i + a, j + d] * w[o, c, a, d]))
                             for c in range(c_in) for a in range(kh) for d in range(kw)]
                    bp, bn = (max(float(b[o]), 0.0), min(float(b[o]), 0.0)) if bias else (0.0, 0.0)
                    z_pos = stab(sum(max(v, 0.0) for *_, v in parts) + bp, eps)
                    z_neg = stab(sum(min(v, 0.0) for *_, v in parts) + bn, eps)
                    for c, p, q, v in parts:
                        share = alpha * max(v, 0.0) / z_pos - beta * min(v, 0.0) / z_neg
                        r_in[e, c, p, q] += share * r_out[e, o, i, j]
    return r_in[:, :, padding:padding + h, padding:padding + wd]


def ruled_relevance(rule, x, w, b, g, padding, *, relu=False):
    """(input relevance, output relevance) of one conv under ``rule`` with output gradient g;
    ``relu``: the conv reads relu(x) (a structural fact), and relevance is read at relu(x)."""
    def f(t):
        return F.conv2d(F.relu(t) if relu else t, w, b, padding=padding)

    t = x.clone().requires_grad_()
    z = xattr.rules(f, {torch.conv2d: rule})(t)
    (gx,) = torch.autograd.grad(z, t, g)
    h = F.relu(x) if relu else x
    return h * gx, z.detach() * g


@pytest.mark.parametrize("alpha, beta, bias", [(1.0, 0.0, True), (1.0, 0.0, False), (2.0, 1.0, True), (1.5, 0.5, False)])
@pytest.mark.parametrize("inputs", ["signed", "non-negative", "relu"])
def test_alpha_beta_at_a_conv_equals_explicit_loops(alpha, beta, bias, inputs, general):
    x = randn(1, 2, 2, 5, 5)
    x = x.abs() if inputs == "non-negative" else x
    w, b, g = randn(2, 3, 2, 3, 3), randn(3, 3), randn(4, 2, 3, 5, 5)
    rule = AlphaBeta(alpha, beta, eps=1e-6, bias=bias)
    got, r_out = ruled_relevance(rule, x, w, b, g, 1, relu=inputs == "relu")
    h = F.relu(x) if inputs == "relu" else x
    want = loop_alpha_beta(h, w, b, r_out, alpha, beta, 1e-6, bias, 1)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    general()
    slow, _ = ruled_relevance(rule, x, w, b, g, 1, relu=inputs == "relu")
    torch.testing.assert_close(got, slow, rtol=1e-12, atol=1e-15)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), c_in=st.integers(1, 4), stride=st.integers(1, 2))
def test_z_plus_on_relu_inputs_conserves_relevance(seed, c_in, stride):
    """z+ after a ReLU (the skip): ``sum_i R_i = sum_j R_j z+_j / (z+_j + eps)``, z+ = conv(x, W+),
    since each output's positive contributions sum to z+_j and x- = 0 contributes nothing."""
    x, w, b, eps = randn(seed, 2, c_in, 6, 6), randn(seed + 1, 3, c_in, 3, 3), randn(seed + 2, 3), 1e-6
    t = x.clone().requires_grad_()
    z = xattr.rules(lambda v: F.conv2d(F.relu(v), w, b, stride=stride), {torch.conv2d: ZPlus(eps)})(t)
    g = randn(seed + 3, *z.shape)
    (gx,) = torch.autograd.grad(z, t, g)
    z_pos = F.conv2d(F.relu(x), w.clamp(min=0), stride=stride)
    r_out = z.detach() * g
    want = (r_out * z_pos / (z_pos + eps)).sum((1, 2, 3))
    torch.testing.assert_close((F.relu(x) * gx).sum((1, 2, 3)), want, rtol=1e-10, atol=1e-12)


def _vgg(seed: int, act=nn.ReLU) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), act(), nn.Conv2d(4, 6, 3, padding=1), act(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 5, 3), act(), nn.Flatten(), nn.Linear(5, 3)).to(D).eval()


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), ab=st.sampled_from([(1.0, 0.0), (2.0, 1.0)]), bias=st.booleans(),
       act=st.sampled_from([nn.ReLU, nn.Tanh]), shift=st.sampled_from([0.0, 3.0]))
def test_lrp_with_the_skip_equals_the_general_path(seed, ab, bias, act, shift):
    """ReLU nets (the skip at every layer after the first; the first too for inputs shifted >= 0)
    and tanh nets (never: signed inputs everywhere): the same relevance either way."""
    model, x = _vgg(seed, act), randn(seed, 2, 3, 6, 6) + shift
    x = x.clamp(min=0) if shift else x
    composite = {**lrp_rules(1e-6), torch.conv2d: AlphaBeta(*ab, eps=1e-6, bias=bias), F.linear: ZPlus(1e-6)}
    fn = xattr.lrp(xattr.target(model, 1), composite=composite)
    skipped = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "non_negative", lambda t: skipped.append(non_negative(t)) or skipped[-1])
        fast = fn(x)
        mp.setattr(module, "non_negative", lambda t: False)
        slow = fn(x)
    # 4 ruled layers; first: x, after it: activations (the Linear reads a flattened view: by value)
    assert skipped == [bool(shift)] + [act is nn.ReLU] * 3
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-15)


def test_the_skip_runs_fewer_convolutions():
    """z+ on a ReLU CNN: 3 forward convs at the first layer (signed pixels), 2 at each layer after
    a ReLU or a max-pool of one; one transpose per layer (the first's two weights in one call)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = {"convolution": 0, "convolution_backward": 0}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in self.n:
                self.n[name] += 1
            return func(*args, **(kwargs or {}))

    model, x = _vgg(0), randn(0, 2, 3, 6, 6)
    fn = xattr.lrp(xattr.target(model, 1), composite={**lrp_rules(1e-6), torch.conv2d: ZPlus(1e-6)})
    for inputs, first in ((x, 3), (x.abs(), 2)):
        with Count() as count:
            fn(inputs)
        assert count.n == {"convolution": first + 2 + 2, "convolution_backward": 3}, (inputs.min(), count.n)


def test_non_negative_by_structure():
    a = randn(0, 2, 3, 4, 4).requires_grad_()
    r = F.relu(a * 1)
    assert _from_relu(r) and _from_relu(F.max_pool2d(r, 2)) and _from_relu(F.relu(a * 1, inplace=True))
    assert not _from_relu(torch.tanh(a)) and not _from_relu(a) and not _from_relu(r.flatten(1))
    pooled = F.max_pool2d(r, 2)
    with torch.no_grad():
        pooled.sub_(5.0)  # written after pooling: the pool's output is at version 1
    assert not _from_relu(pooled)
    r2 = F.relu(a * 1)
    p2 = F.max_pool2d(r2, 2)
    with torch.no_grad():
        r2.sub_(5.0)  # the ReLU's output written after: both nodes' saved tensors refuse to unpack
    assert not _from_relu(r2) and not _from_relu(p2)


def test_non_negative_by_value_is_exact():
    assert non_negative(torch.tensor([0.0, -0.0, 2.0], dtype=D))
    assert not non_negative(torch.tensor([0.0, -1e-300, 2.0], dtype=D))
    assert not non_negative(torch.tensor([1.0, float("nan")], dtype=D))
    assert not non_negative(torch.zeros(0, dtype=D))
    seen = []
    torch.func.vmap(lambda t: seen.append(non_negative(t)) or t)(torch.ones(3, 2, dtype=D))
    assert seen == [False]  # under transforms: the general path


def test_under_vmap_the_general_path_gives_the_eager_numbers():
    model, x = _vgg(3), randn(3, 4, 3, 6, 6)
    composite = {**lrp_rules(1e-6), torch.conv2d: AlphaBeta(2.0, 1.0, eps=1e-6), F.linear: ZPlus(1e-6)}
    fn = xattr.lrp(xattr.target(model, 2), composite=composite)
    batched = torch.func.vmap(lambda xi: fn(xi[None])[0])(x)
    torch.testing.assert_close(batched, fn(x), rtol=1e-12, atol=1e-15)


def _op(kind, *tensors, **options):
    return parse({"linear": F.linear, "conv": F.conv2d}[kind], tensors, options)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), c_in=st.integers(1, 9), k=st.integers(2, 3), stride=st.integers(1, 2),
       padding=st.integers(0, 1), kind=st.sampled_from(["conv", "linear"]))
def test_transposes_in_one_call_equal_one_at_a_time(seed, c_in, k, stride, padding, kind):
    if kind == "conv":
        x, w = randn(seed, 2, c_in, 6, 5), randn(seed + 1, 3, c_in, 3, 2)
        op = _op("conv", x, w, None, stride=stride, padding=padding)
    else:
        x, w = randn(seed, 2, 4, c_in), randn(seed + 1, 3, c_in)
        op = _op("linear", x, w)
    s = randn(seed + 2, *op.fn(*op.tensors).shape)
    weights = tuple(w * randn(seed + 3 + i, *w.shape).sign() for i in range(k))
    got = transposes(op, x, weights, s)
    assert len(got) == k
    for t, wi in zip(got, weights):
        torch.testing.assert_close(t, transpose(op, x, wi, None, s), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bounds", ["numbers", "per channel"])
def test_z_box_bounds_on_one_row_equal_bounds_on_every_row(bounds):
    """Bounds the same for every row are convolved on one row; a bound with a row per example
    (the same values) takes the full convolution: equal relevance."""
    model, x = _vgg(5), randn(5, 3, 3, 6, 6).clamp(-2.0, 2.0)
    if bounds == "numbers":
        low, high = -2.0, 2.0
    else:
        low, high = torch.tensor([-2.0, -2.5, -3.0], dtype=D).view(3, 1, 1), torch.tensor([2.0, 2.5, 3.0], dtype=D).view(3, 1, 1)
    rows = [torch.as_tensor(v, dtype=D).expand(x.shape).clone() for v in (low, high)]

    def relevance(lo, hi):
        composite = {**lrp_rules(1e-6), "0": ZBox(lo, hi, eps=1e-6), F.linear: Epsilon(1e-6)}
        return xattr.lrp(xattr.target(model, 0), composite=composite)(x)

    torch.testing.assert_close(relevance(low, high), relevance(*rows), rtol=1e-12, atol=1e-15)
