"""DeepLift at order statistics along a dim (kind "sort": NOTE: [Order statistics along a dim] in
xattr/_src/order_stats.py, [DeepLift at order statistics] in xattr/_src/deeplift_sort.py).

``torch.sort``, ``topk``, ``kthvalue``, ``median(x, dim)``, ``msort`` and their Tensor methods take
the op's permutation averaged along the straight path from the reference. Before, they kept their
ordinary gradient and the sum missed (|delta| 6.2 at a sort where the change was 4.1, 2.7 at a
topk (2.4), 1.4 at a median (1.7), on a small float64 MLP into the op). Tested: summation-to-delta
(hypothesis over spellings, shapes, dims, paired and shared references, DeepLift SHAP), a slow
reference written with loops, the median example the max-pool rule cannot split, torch's own
values and indices, a sort across the rows keeping its gradient, rows in dim 1, a batch of one
against the batch and vmap, derivatives of the attributions, and LRP and guided backprop unchanged.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from test_attribution_derivatives import check_grads
from xattr.rule import deep_lift_rules
from xattr.testing import check_batch_invariance

D = torch.float64
SPELLINGS = {  # reduce(h, dim) along one dim
    "x.sort(dim).values": lambda h, d: h.sort(d).values,
    "torch.sort(descending, stable)[0]": lambda h, d: torch.sort(h, dim=d, descending=True, stable=True)[0],
    "x.topk(2, dim).values": lambda h, d: h.topk(2, d).values,
    "torch.topk(smallest)": lambda h, d: torch.topk(h, 1, dim=d, largest=False).values,
    "x.kthvalue(2, dim)[0]": lambda h, d: h.kthvalue(2, d)[0],
    "torch.kthvalue(keepdim)": lambda h, d: torch.kthvalue(h, 2, d, keepdim=True).values,
    "torch.median(x, dim)": lambda h, d: torch.median(h, d).values,
    "x.median(dim, keepdim)": lambda h, d: h.median(d, keepdim=True)[0],
    "torch.msort(x.movedim(dim, 0))": lambda h, d: torch.msort(h.movedim(d, 0)).movedim(0, d),  # rows in dim 1
}


def _weights(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def _net(spelling, shape, dim, seed):
    """x (B, 5) -> tanh(x W) viewed (B, *shape) -> the order statistic -> a weighted sum."""
    reduce = SPELLINGS[spelling]
    w1 = _weights((5, int(torch.tensor(shape).prod())), seed)
    with torch.no_grad():
        out_shape = reduce(torch.zeros((3,) + shape, dtype=D), dim).shape[1:]
    w2 = _weights(out_shape, seed + 1)

    def f(x):
        h = torch.tanh(x @ w1).view((-1,) + shape)
        return (reduce(h, dim) * w2).reshape(h.shape[0], -1).sum(1)

    return f


@settings(max_examples=30, deadline=None)
@given(spelling=st.sampled_from(sorted(SPELLINGS)), shape=st.sampled_from([(3, 4), (5,), (2, 3, 2)]),
       dim=st.integers(1, 3), reference=st.sampled_from(["paired", "shared", "zero"]), seed=st.integers(0, 2**16))
def test_summation_to_delta(spelling, shape, dim, reference, seed):
    dim = dim if dim <= len(shape) else -1
    f = _net(spelling, shape, dim, seed)
    x = _weights((3, 5), seed + 2)
    b = {"paired": _weights((3, 5), seed + 3), "shared": _weights((1, 5), seed + 3), "zero": torch.zeros(1, 5, dtype=D)}[reference]
    attr = xattr.deep_lift(f, baselines=b)(x)
    change = f(x) - f(b)
    assert (attr.sum(1) - change).abs().max() < 1e-13 * max(1.0, change.abs().max().item())


def test_deep_lift_shap_and_layer_deep_lift():
    f = _net("x.topk(2, dim).values", (3, 4), 2, 0)
    x, d = _weights((4, 5), 2), _weights((3, 5), 3)
    attr = xattr.deep_lift_shap(f, baselines=d)(x)
    assert (attr.sum(1) - (f(x) - f(d).mean())).abs().max() < 1e-14

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 12).double()
            self.w = _weights((3, 2), 4)

        def forward(self, x):
            return (torch.tanh(self.lin(x)).view(-1, 3, 4).topk(2, -1).values * self.w).sum((1, 2))

    model = Model()
    b = _weights((4, 5), 5)
    attr = xattr.layer_deep_lift(xattr.at_layer(model, model.lin), baselines=b)(x)
    with torch.no_grad():
        change = model(x) - model(b)
    assert (attr.sum(1) - change).abs().max() < 1e-14


def _path_average(x, r, rank):
    """By loops: the fraction of the path r -> x on which each position holds ``rank``."""
    n = x.shape[0]
    times = {0.0, 1.0}
    for p in range(n):
        for q in range(n):
            a, c = float(r[q] - r[p]), float(x[q] - x[p])
            if a * c < 0:
                times.add(a / (a - c))
    times = sorted(times)
    m = torch.zeros(n, dtype=D)
    for t0, t1 in zip(times, times[1:]):
        middle = r + (t0 + t1) / 2 * (x - r)
        m[torch.sort(middle).indices[rank]] += t1 - t0
    return m


@pytest.mark.parametrize("spelling", ["sort", "topk", "kthvalue", "median"])
@pytest.mark.parametrize("shared", [False, True])
def test_against_a_slow_reference(spelling, shared):
    n = 6
    ranks = {"sort": list(range(n)), "topk": [5, 4, 3], "kthvalue": [1], "median": [(n - 1) // 2]}[spelling]
    op = {"sort": lambda x: x.sort(-1).values, "topk": lambda x: x.topk(3).values,
          "kthvalue": lambda x: x.kthvalue(2).values[..., None], "median": lambda x: x.median(-1).values[..., None]}[spelling]
    w = _weights((4, len(ranks)), 0)
    f = lambda x: (op(x) * w).sum((1, 2))  # noqa: E731
    x = _weights((3, 4, n), 1)
    b = _weights((1 if shared else 3, 4, n), 2)
    attr = xattr.deep_lift(f, baselines=b)(x)
    slow = torch.zeros_like(x)
    for i in range(3):
        r = b[0] if shared else b[i]
        for j in range(4):
            for s, rank in enumerate(ranks):
                slow[i, j] += w[j, s] * _path_average(x[i, j], r[j], rank) * (x[i, j] - r[j])
    torch.testing.assert_close(attr, slow, rtol=1e-12, atol=1e-14)


def test_the_median_neither_argmax_position_moved():
    """The median of (1, 2, 9) against (1, 2, 0) moves from 1 to 2 while neither the example's median
    position (1) nor the reference's (0) changed: the max-pool rule's two positions cannot carry
    it. Along the path, position 2 is the median for t in (1/9, 2/9): 1/9 of its change of 9."""
    x, b = torch.tensor([[1.0, 2.0, 9.0]], dtype=D), torch.tensor([[1.0, 2.0, 0.0]], dtype=D)
    attr = xattr.deep_lift(lambda t: t.median(-1).values, baselines=b)(x)
    torch.testing.assert_close(attr, torch.tensor([[0.0, 0.0, 1.0]], dtype=D), rtol=0, atol=1e-15)


def test_values_and_indices_are_torchs():
    seen = []

    def f(x):
        h = torch.tanh(x).view(-1, 3, 4)
        calls = (torch.sort(h, 2, descending=True), h.topk(2, 1), torch.kthvalue(h, 3, 2), h.median(1, keepdim=True),
                 torch.msort(h.transpose(0, 1)))
        seen.append((h.detach().clone(), calls))
        return sum(c.flatten(1).sum(1) if isinstance(c, torch.Tensor) else c.values.flatten(1).sum(1) for c in calls[:4])

    xattr.deep_lift(f, baselines=_weights((2, 12), 1))(_weights((2, 12), 0))
    h, calls = seen[-1]
    expected = (torch.sort(h, 2, descending=True), h.topk(2, 1), torch.kthvalue(h, 3, 2), h.median(1, keepdim=True))
    for got, want in zip(calls, expected):
        assert type(got) is type(want)
        assert torch.equal(got.values, want.values) and torch.equal(got.indices, want.indices)
    assert torch.equal(calls[4], torch.msort(h.transpose(0, 1)))


@pytest.mark.parametrize("across", ["x.sort(0)", "torch.msort(x)", "x.topk(2, 0)"])
def test_a_sort_across_the_rows_keeps_its_gradient(across):
    """Sorting the paired rows compares examples, not each with its reference: not ruled (the same
    numbers as with kind "sort" left out of the mapping)."""
    reduce = {"x.sort(0)": lambda h: h.sort(0).values, "torch.msort(x)": torch.msort,
              "x.topk(2, 0)": lambda h: h.topk(2, 0).values.sum(0)}[across]
    w = _weights((5, 6), 0)

    def f(x):
        h = torch.tanh(x @ w)
        return (h * reduce(h)).sum(1)

    without = {k: v for k, v in deep_lift_rules().items() if k is not torch.sort}
    x, b = _weights((3, 5), 1), _weights((3, 5), 2)
    torch.testing.assert_close(xattr.deep_lift(f, baselines=b)(x), xattr.deep_lift(f, baselines=b, mapping=without)(x),
                               rtol=0, atol=0)


def test_sequence_first_topk_over_time():
    """(L, B, D) outputs of a sequence-first layer, top-2 over dim 0 (time): the rows sit in dim 1."""
    w1, w2 = _weights((5, 7 * 3), 0), _weights((3,), 1)

    def f(x):
        h = torch.tanh(x @ w1).view(-1, 7, 3).transpose(0, 1)  # (7, R, 3)
        return (h.topk(2, 0).values.sum(0) * w2).sum(1) + (h.sort(2).values[0] * w2).sum(1)

    x, b = _weights((4, 5), 2), _weights((4, 5), 3)
    attr = xattr.deep_lift(f, baselines=b)(x)
    assert (attr.sum(1) - (f(x) - f(b))).abs().max() < 1e-14


def test_one_example_alone_equals_its_row_in_the_batch_and_under_vmap():
    f = _net("x.sort(dim).values", (3, 4), 2, 3)
    x, b = _weights((4, 5), 4), _weights((1, 5), 5)
    method = xattr.deep_lift(f, baselines=b)
    check_batch_invariance(method, x, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(torch.func.vmap(lambda r: method(r[None])[0])(x), method(x), rtol=1e-13, atol=1e-15)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.to(D).eval()

    def forward(self, x):
        h = self.a(x).view(-1, 2, 3)
        return self.b(torch.cat([h.sort(-1).values.flatten(1), h.median(-1).values, h.topk(1, 1).values.flatten(1)], 1)[:, :6])


@pytest.mark.parametrize("reference", ["paired", "shared"])
def test_derivatives_of_the_attributions(reference):
    """torch.func.grad of the squared attributions, wrt the input and the weights, against central
    differences: the path multipliers are smooth away from ties (none here)."""
    x = _weights((2, 4), 11)
    b = _weights((2, 4), 12) if reference == "paired" else torch.full((1, 4), 0.3, dtype=D)
    check_grads(lambda m: xattr.deep_lift(xattr.target(m, 1), baselines=b), _Net(), x, ("a.weight", "b.weight"))


def _gathered(h, call):
    """The same values by a gather no rule intercepts: torch's ordinary gradient of the call."""
    with torch.no_grad():
        out = call(h)
    return h.gather(-1, out.indices if out.values.ndim == h.ndim else out.indices[..., None])


@pytest.mark.parametrize("method", ["lrp", "guided_backprop", "deconvolution"])
def test_lrp_and_guided_keep_the_gradient(method):
    w1, w2 = _weights((5, 12), 0), _weights((13,), 1)
    calls = (lambda h: torch.sort(h, -1, descending=True), lambda h: h.topk(2), lambda h: h.median(-1))

    def model(ruled):
        def f(x):
            h = torch.relu(x @ w1).view(-1, 3, 4) - 0.1
            parts = [(c(h).values if ruled else _gathered(h, c)).flatten(1) for c in calls]
            return (torch.cat(parts, 1)[:, :13] @ w2)[:, None] * torch.ones(2, dtype=D)

        return f

    x = _weights((3, 5), 2)
    run = getattr(xattr, method)
    torch.testing.assert_close(run(xattr.target(model(True), 1))(x), run(xattr.target(model(False), 1))(x), rtol=0, atol=0)
