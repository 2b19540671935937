"""DeepLift through products of two activations (NOTE: [DeepLift at a product]).

``z = a * b`` with both factors computed from the input passes ``(b + b_ref) / 2`` to a and
``(a + a_ref) / 2`` to b, so summation-to-delta holds through squeeze-and-excitation gates, GLU,
SwiGLU, ``x * sigmoid(x)`` written out, ``h * h`` and in-place ``mul_``. Checked: summation-to-delta
as a property on small random gated nets; a GLU MLP against its multipliers written by hand; an SE
net against a per-example loop through written-out Functions; an example alone equals its row of a
batch (a reference per example, a shared one); rows in dim 1; DeepLift SHAP's chunks; the layer,
neuron and compat variants; the ordinary gradient outside DeepLift's paired rows; the model left
unchanged.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import xattr
from registry import changed_state, state_snapshot
from rule_fuzz_nets import PairedMatmul, PairedProduct, _Rescale
from xattr.testing import assert_trees_close, check_batch_invariance, check_chunk_invariance
from xattr.testing.strategies import random_tensor, seeds

TOL = dict(atol=1e-10, rtol=1e-9)
MATMULS = ("attention", "bmm", "heads")
KINDS = ("se", "glu", "swiglu", "silu_written", "inplace", "square", "seq_first", *MATMULS)


class Gated(nn.Module):
    """A small net with one product of two activations, of the given kind; float64, eval mode."""

    def __init__(self, kind: str, seed: int = 0):
        super().__init__()
        self.kind = kind
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if kind == "se":  # (B, 2, 4, 4): conv, ReLU, a squeeze-and-excitation gate (B, 4, 1, 1)
                self.conv = nn.Conv2d(2, 4, 3, padding=1)
                self.squeeze, self.excite = nn.Conv2d(4, 2, 1), nn.Conv2d(2, 4, 1)
                self.relu, self.relu2, self.sigmoid = nn.ReLU(), nn.ReLU(), nn.Sigmoid()  # one each (Captum)
                self.head = nn.Linear(64, 3)
                with torch.no_grad():  # a live gate: at torch's initial weights this ReLU is often 0 everywhere
                    self.squeeze.bias.fill_(0.5)
                    self.excite.weight.mul_(4)
            elif kind in MATMULS:  # (B, 4, 5): q, k, v of 4 tokens, 2 heads of 3 features
                self.qkv, self.head = nn.Linear(5, 18), nn.Linear(16 if kind == "heads" else 24, 3)
            else:  # (B, 5) or, sequence-first inside, (B, 5, 5)
                self.l1, self.l2, self.head = nn.Linear(5, 8), nn.Linear(5, 8), nn.Linear(8, 3)
        self.double().eval()

    def in_shape(self) -> tuple:
        return {"se": (2, 4, 4), "seq_first": (5, 5)}.get(self.kind, (4, 5) if self.kind in MATMULS else (5,))

    def forward(self, x):
        k = self.kind
        if k in MATMULS:
            return self.head(self.attend(*self.qkv(x).chunk(3, -1)).flatten(1))
        if k == "se":
            h = self.relu(self.conv(x))
            gate = self.sigmoid(self.excite(self.relu2(self.squeeze(F.adaptive_avg_pool2d(h, 1)))))
            return self.head((gate * h).flatten(1))
        if k == "seq_first":  # (L, B, 8) factors: the rows in dim 1
            a, g = self.l1(x).transpose(0, 1), self.l2(x).transpose(0, 1)
            return self.head((a * torch.sigmoid(g)).transpose(0, 1).mean(1))
        h = self.l1(x)
        if k == "glu":
            a, g = torch.cat([h, self.l2(x)], -1).chunk(2, -1)
            z = a * torch.sigmoid(g)
        elif k == "swiglu":
            z = F.silu(h) * self.l2(x)
        elif k == "silu_written":
            z = h * torch.sigmoid(h)
        elif k == "inplace":
            z = h.mul_(torch.tanh(self.l2(x)))
        else:  # "square": one tensor as both factors
            z = torch.tanh(h * h)
        return self.head(z)


    def attend(self, q, k, v):
        """Attention without a softmax (tanh of the scores), so that summation-to-delta holds:
        (B, 4, 6) each; 2 heads of (B, 2, 4, 3), or sequence-first (4, B, 2, 3), for "heads"."""
        if self.kind == "attention":
            return torch.tanh(q @ k.transpose(1, 2)) @ v
        if self.kind == "bmm":
            return torch.bmm(torch.tanh(torch.bmm(q, k.mT)), v)
        q, k, v = (t.unflatten(-1, (2, 3)).transpose(1, 2) for t in (q, k, v))  # (B, 2, 4, 3)
        if self.seq_first:  # (4, B, 2, 3) @ (4, B, 3, 2): each token's heads against each other
            q, k = q.permute(2, 0, 1, 3), k.permute(2, 0, 3, 1)
            return torch.tanh(q @ k).transpose(0, 1)  # (B, 4, 2, 2)
        return torch.tanh(q.transpose(1, 2) @ k.permute(0, 2, 3, 1))

    seq_first = False


def _batch(model, batch, seed):
    shape = (batch,) + model.in_shape()
    return random_tensor(shape, seed), 0.5 * random_tensor(shape, seed + 1)


def _gap(model, x, b, t):
    with torch.no_grad():
        return model(x)[:, t] - model(b.expand_as(x) if b.ndim else torch.zeros_like(x))[:, t]


@given(st.sampled_from(KINDS), st.integers(1, 3), seeds, st.sampled_from(["each", "row", "zero"]))
def test_summation_to_delta(kind, batch, seed, reference):
    model = Gated(kind, seed % 1000)
    x, b = _batch(model, batch, seed)
    b = {"each": b, "row": b[:1], "zero": torch.zeros(())}[reference]
    attr, delta = xattr.deep_lift(xattr.target(model, 1), baselines=b if b.ndim else 0.0, return_delta=True)(x)
    gap = _gap(model, x, b, 1)
    assert gap.abs().min() > 1e-6
    assert_trees_close(attr.flatten(1).sum(1), gap, **TOL, what=f"{kind} summation-to-delta")
    assert delta.abs().max() < 1e-10 * (1 + gap.abs().max())


def test_glu_equals_its_multipliers_by_hand():
    """f = w . (a * sigmoid(g)), a = A x + c, g = G x + d: DeepLift's multipliers written out."""
    model = Gated("glu", 3)
    x, b = _batch(model, 3, 4)
    A, c, G, d = model.l1.weight, model.l1.bias, model.l2.weight, model.l2.bias
    w = model.head.weight[2]
    with torch.no_grad():
        a, a0, g, g0 = x @ A.T + c, b @ A.T + c, x @ G.T + d, b @ G.T + d
        s, s0 = torch.sigmoid(g), torch.sigmoid(g0)
        m_a, m_s = (s + s0) / 2, (a + a0) / 2  # the product's multipliers
        m_g = m_s * (s - s0) / (g - g0)  # then sigmoid's Rescale
        expected = (x - b) * ((w * m_a) @ A + (w * m_g) @ G)
    attr = xattr.deep_lift(xattr.target(model, 2), baselines=b)(x)
    assert_trees_close(attr, expected, **TOL)
    gradient = xattr.grad(xattr.target(model, 2))(x) * (x - b)
    assert (attr - gradient).abs().max() > 1e-3 * attr.abs().max()  # the rule changes the result


def _se_reference(model, x, b, t):
    """DeepLift of the SE net, one example at a time: rows [x_i; b_i] through written-out Functions."""
    out = []
    for i in range(len(x)):
        both = torch.cat([x[i : i + 1], b[i : i + 1]]).requires_grad_()
        h = _Rescale.apply(model.conv(both), torch.relu, 1e-10)
        s = _Rescale.apply(model.squeeze(F.adaptive_avg_pool2d(h, 1)), torch.relu, 1e-10)
        gate = _Rescale.apply(model.excite(s), torch.sigmoid, 1e-10)
        y = model.head(PairedProduct.apply(gate, h).flatten(1))[:, t]
        m = torch.autograd.grad(y[0], both)[0][:1]
        out.append((x[i : i + 1] - b[i : i + 1]) * m)
    return torch.cat(out)


def test_squeeze_and_excitation_equals_a_per_example_loop():
    model = Gated("se", 5)
    x, b = _batch(model, 3, 6)
    before = state_snapshot(model, x)
    f = xattr.target(model, 0)
    attr = xattr.deep_lift(f, baselines=b)(x)
    assert_trees_close(attr, _se_reference(model, x, b, 0), **TOL)
    shared = xattr.deep_lift(f, baselines=b[:1])(x)  # B + 1 rows
    assert_trees_close(shared, _se_reference(model, x, b[:1].expand_as(x), 0), **TOL)
    assert not changed_state(before, state_snapshot(model, x))


@pytest.mark.parametrize("kind", KINDS)
def test_an_example_alone_equals_its_row(kind):
    model = Gated(kind, 7)
    x, b = _batch(model, 3, 8)
    before = state_snapshot(model, x)
    f = xattr.target(model, 1)
    check_batch_invariance(lambda x, b: xattr.deep_lift(f, baselines=b)(x), x, b, argnums=(0, 1), **TOL)
    check_batch_invariance(xattr.deep_lift(f, baselines=b[:1]), x, **TOL)  # a shared reference row
    check_batch_invariance(xattr.deep_lift(f), x, **TOL)  # the number 0
    assert not changed_state(before, state_snapshot(model, x))


def _imul(h, g):
    h *= g
    return h


def _mul_into_view(h, g):  # in place on a view: half the features gated
    h[:, :4].mul_(g[:, :4])
    return h


@pytest.mark.parametrize("spelling", [torch.Tensor.mul_, _imul, _mul_into_view])
def test_in_place_product_equals_out_of_place(spelling):
    model, twin = Gated("inplace", 9), Gated("inplace", 9)
    model.forward = lambda x: model.head(spelling(model.l1(x), torch.tanh(model.l2(x))))
    if spelling is _mul_into_view:
        gate = lambda x: torch.cat([torch.tanh(twin.l2(x))[:, :4], torch.ones_like(x[:, :1]).expand(-1, 4)], 1)  # noqa: E731
    else:
        gate = lambda x: torch.tanh(twin.l2(x))  # noqa: E731
    twin.forward = lambda x: twin.head(twin.l1(x) * gate(x))
    x, b = _batch(model, 2, 10)
    f, g = xattr.target(model, 0), xattr.target(twin, 0)
    for base in (b, 0.0):
        attr, delta = xattr.deep_lift(f, baselines=base, return_delta=True)(x)
        assert_trees_close(attr, xattr.deep_lift(g, baselines=base)(x), **TOL)
        assert delta.abs().max() < 1e-10


def test_rows_in_dim_one_equal_the_batch_first_twin():
    model = Gated("seq_first", 11)
    twin = Gated("seq_first", 11)
    twin.forward = lambda x: twin.head((twin.l1(x) * torch.sigmoid(twin.l2(x))).mean(1))
    x, b = _batch(model, 2, 12)
    for base in (b, b[:1], 0.0):
        ours = xattr.deep_lift(xattr.target(model, 2), baselines=base)(x)
        assert_trees_close(ours, xattr.deep_lift(xattr.target(twin, 2), baselines=base)(x), **TOL)


def test_attention_equals_a_per_example_loop():
    """Scores ``q @ k^T`` and ``tanh(scores) @ v``: matmul's gradient at the averaged factors."""
    model = Gated("attention", 24)
    x, b = _batch(model, 3, 25)
    out = []
    for i in range(len(x)):
        both = torch.cat([x[i : i + 1], b[i : i + 1]]).requires_grad_()
        q, k, v = model.qkv(both).chunk(3, -1)
        scores = _Rescale.apply(PairedMatmul.apply(q, k.transpose(1, 2)), torch.tanh, 1e-10)
        y = model.head(PairedMatmul.apply(scores, v).flatten(1))[0, 1]
        out.append((x[i : i + 1] - b[i : i + 1]) * torch.autograd.grad(y, both)[0][:1])
    attr = xattr.deep_lift(xattr.target(model, 1), baselines=b)(x)
    assert_trees_close(attr, torch.cat(out), **TOL)
    gradient = xattr.grad(xattr.target(model, 1))(x) * (x - b)
    assert (attr - gradient).abs().max() > 1e-3 * attr.abs().max()


def test_matmul_rows_in_dim_one_equal_the_batch_first_twin():
    """(4, R, 2, 3) @ (4, R, 3, 2): the rows in a batch dim that is not the first; 4 examples, so
    that neither 2B = 8 nor B + 1 = 5 rows equal the 4 tokens (NOTE: [Rows in dim 0 or dim 1])."""
    model, twin = Gated("heads", 26), Gated("heads", 26)
    model.seq_first = True
    x, b = _batch(model, 4, 27)
    for base in (b, b[:1]):
        ours, delta = xattr.deep_lift(xattr.target(model, 0), baselines=base, return_delta=True)(x)
        assert_trees_close(ours, xattr.deep_lift(xattr.target(twin, 0), baselines=base)(x), **TOL)
        assert delta.abs().max() < 1e-10


@pytest.mark.parametrize("kind", ["se", "swiglu"])
def test_deep_lift_shap_chunks_and_mean(kind):
    model = Gated(kind, 13)
    x, _ = _batch(model, 2, 14)
    dist = random_tensor((3,) + model.in_shape(), 15, scale=0.5)
    f = xattr.target(model, 1)
    check_chunk_invariance(lambda c: xattr.deep_lift_shap(f, baselines=dist, chunk_size=c), x, chunk_sizes=(2, 3, 5), **TOL)
    mean = torch.stack([xattr.deep_lift(f, baselines=dist[k : k + 1])(x) for k in range(3)]).mean(0)
    shap, delta = xattr.deep_lift_shap(f, baselines=dist, return_delta=True)(x)
    assert_trees_close(shap, mean, **TOL)
    assert delta.abs().max() < 1e-10


@pytest.mark.parametrize("kind", ["se", "attention"])
def test_vmap_over_examples(kind):
    model = Gated(kind, 16)
    x, b = _batch(model, 2, 17)
    dl = xattr.deep_lift(xattr.target(model, 1), baselines=0.0)
    assert_trees_close(torch.func.vmap(lambda row: dl(row[None])[0])(x), dl(x), **TOL)


def test_layer_and_neuron_deep_lift_sum_to_delta():
    model = Gated("se", 18)
    x, b = _batch(model, 2, 19)
    split = xattr.at_layer(xattr.target(model, 2), model.conv)
    attr, delta = xattr.layer_deep_lift(split, baselines=b, return_delta=True)(x)
    assert delta.abs().max() < 1e-10
    neuron = xattr.neuron(xattr.at_layer(model, model.head), 1)
    _, delta = xattr.deep_lift(neuron, baselines=b, return_delta=True)(x)
    assert delta.abs().max() < 1e-10


def _vector_products(x):
    """Matrix products with a 1-d operand: (5,) @ (5, B) and (B, 5) @ (5,)."""
    h = torch.tanh(x)
    return (h.sum(0) @ x.T) * (x @ h.mean(0))


@pytest.mark.parametrize("kind", ["swiglu", "attention", "heads", _vector_products])
def test_the_ordinary_gradient_outside_paired_rows(kind):
    """``rules(model, deep_lift_rules())`` alone pairs no rows: every rule gives the derivative."""
    model = kind if callable(kind) else Gated(kind, 20)
    x = random_tensor((3, 5), 21) if callable(kind) else _batch(model, 3, 21)[0]
    f = model if callable(kind) else xattr.target(model, 0)
    ruled = xattr.rules(f, xattr.rule.deep_lift_rules())
    assert_trees_close(xattr.grad(ruled)(x), xattr.grad(f)(x), **TOL)


def _captum_se_model():
    return Gated("se", 22)


@pytest.mark.filterwarnings("ignore::UserWarning:captum")
def test_compat_deep_lift_conserves_where_captum_does_not():
    """xattr.compat.captum.DeepLift uses the product rule (docs/migration_rules.md): its delta is 0 and it
    equals the per-example reference; Captum keeps the gate's gradient, and its delta is not 0."""
    from xattr.compat import captum as X

    model = _captum_se_model()
    x, b = _batch(model, 2, 23)
    attr, delta = X.DeepLift(model).attribute(x, baselines=b, target=1, return_convergence_delta=True)
    assert_trees_close(attr, _se_reference(model, x, b, 1), **TOL)
    assert delta.abs().max() < 1e-10
    captum = pytest.importorskip("captum.attr")
    theirs, their_delta = captum.DeepLift(_captum_se_model()).attribute(x, baselines=b, target=1, return_convergence_delta=True)
    assert their_delta.abs().max() > 1e-3 * _gap(model, x, b, 1).abs().max()
    assert (theirs - attr).abs().max() > 1e-4 * attr.abs().max()


def test_graph_walks_stay_short_in_deep_gated_nets(monkeypatch):
    """Whether a factor depends on the input is a walk down the autograd graph; within a ruled
    call a walk stops where an earlier one went (NOTE: [Remembered graph walks]), so a net with a
    gate in each of its blocks visits a few nodes per block, not the whole net each time."""
    from xattr._src import dependence

    blocks = [nn.Linear(4, 8) for _ in range(30)]

    def deep(x):
        for layer in blocks:
            a, g = layer(x).chunk(2, -1)
            x = a * torch.sigmoid(g)
        return x.sum(-1)

    visits = []
    monkeypatch.setattr(dependence, "getattr", lambda *a: visits.append(1) or getattr(*a), raising=False)
    x = random_tensor((2, 4), 28).float()
    attr, delta = xattr.deep_lift(deep, return_delta=True)(x)
    assert delta.abs().max() < 1e-5
    assert 0 < len(visits) < 12 * len(blocks)  # 180; without remembering 5,550, growing with the square of the depth
