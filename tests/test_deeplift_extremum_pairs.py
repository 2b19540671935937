"""DeepLift at the maximum or minimum of two activations and at hypot (kinds "maximum" and "hypot":
NOTE: [Maximum of two activations] in xattr/_src/pairwise.py, [DeepLift at two inputs] in
xattr/_src/deeplift_pairs.py).

``torch.maximum(a, b)``, ``torch.minimum``, the two-tensor ``torch.max``/``min``, ``torch.fmax``/``fmin``,
``torch.clamp(a, min=b)`` (one bound computed from the input) and ``torch.hypot(a, b)`` split their
change by the two inputs' Shapley values. Before, they kept their gradient, exact only where the
reference is 0: |delta| 5.1 (maximum, where the change was 3.8) and 3.1 (hypot, 2.8) on a small
float64 MLP into the op. Tested: summation-to-delta (hypothesis over spellings, broadcasting and
references), a slow reference by hand, multipliers in [0, 1], the maximum of an activation and a
fixed tensor still kind "clamp", a batch of one and vmap against the batch, derivatives of the
attributions, and LRP and guided backprop unchanged.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from test_attribution_derivatives import check_grads
from xattr._src import ops
from xattr.testing import check_batch_invariance

D = torch.float64
SPELLINGS = {  # (op(a, b), the same function without a rule: torch's values)
    "torch.maximum": (torch.maximum, torch.maximum),
    "Tensor.minimum": (lambda a, b: a.minimum(b), torch.minimum),
    "torch.max(a, b)": (lambda a, b: torch.max(a, b), torch.maximum),
    "Tensor.min(other=b)": (lambda a, b: a.min(other=b), torch.minimum),
    "torch.fmax": (torch.fmax, torch.maximum),
    "Tensor.fmin": (lambda a, b: a.fmin(b), torch.minimum),
    "torch.clamp(a, min=b)": (lambda a, b: torch.clamp(a, min=b), torch.maximum),
    "Tensor.clamp_max(b)": (lambda a, b: a.clamp_max(b), torch.minimum),
    "Tensor.clamp_(min=b)": (lambda a, b: a.clone().clamp_(min=b), torch.maximum),
    "torch.hypot": (torch.hypot, torch.hypot),
    "Tensor.hypot_": (lambda a, b: a.clone().hypot_(b), torch.hypot),
}


def _weights(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def _net(spelling, broadcast, seed):
    """x (B, 5) -> a = tanh(x W1) (B, 2, 3), b = tanh(x W2) (B, 2, 3) or (B, 1, 3) -> op -> a weighted sum."""
    op = SPELLINGS[spelling][0]
    w1, w2, w3 = _weights((5, 6), seed), _weights((5, 3 if broadcast else 6), seed + 1), _weights((2, 3), seed + 2)

    def f(x):
        a, b = torch.tanh(x @ w1).view(-1, 2, 3), torch.tanh(x @ w2).view(x.shape[0], -1, 3)
        return (op(a, b) * w3).sum((1, 2))

    return f


@settings(max_examples=30, deadline=None)
@given(spelling=st.sampled_from(sorted(SPELLINGS)), broadcast=st.booleans(),
       reference=st.sampled_from(["paired", "shared", "zero"]), seed=st.integers(0, 2**16))
def test_summation_to_delta(spelling, broadcast, reference, seed):
    if broadcast and "_(" in spelling:  # in place: b may not broadcast a
        broadcast = False
    f = _net(spelling, broadcast, seed)
    x = _weights((3, 5), seed + 3)
    b = {"paired": _weights((3, 5), seed + 4), "shared": _weights((1, 5), seed + 4), "zero": torch.zeros(1, 5, dtype=D)}[reference]
    attr = xattr.deep_lift(f, baselines=b)(x)
    change = f(x) - f(b)
    assert (attr.sum(1) - change).abs().max() < 1e-13 * max(1.0, change.abs().max().item())
    shap = xattr.deep_lift_shap(f, baselines=_weights((2, 5), seed + 5))(x)
    assert (shap.sum(1) - (f(x) - f(_weights((2, 5), seed + 5)).mean())).abs().max() < 1e-13 * max(1.0, change.abs().max().item())


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_against_a_slow_reference(spelling):
    """The op's inputs are the input's halves: each element's attribution is its Shapley share of
    its output's change, times the weight, written out per element."""
    op, g = SPELLINGS[spelling]
    w = _weights((3,), 0)
    f = lambda x: (op(x[:, :3], x[:, 3:]) * w).sum(1)  # noqa: E731
    x, b = _weights((2, 6), 1), _weights((2, 6), 2)
    attr = xattr.deep_lift(f, baselines=b)(x)
    slow = torch.zeros_like(x)
    for i in range(2):
        for j in range(3):
            a1, a0, b1, b0 = x[i, j], b[i, j], x[i, 3 + j], b[i, 3 + j]
            slow[i, j] = w[j] * ((g(a1, b0) - g(a0, b0)) + (g(a1, b1) - g(a0, b1))) / 2
            slow[i, 3 + j] = w[j] * ((g(a0, b1) - g(a0, b0)) + (g(a1, b1) - g(a1, b0))) / 2
    torch.testing.assert_close(attr, slow, rtol=1e-13, atol=1e-15)


def test_multipliers_of_a_maximum_lie_in_zero_one():
    f = lambda x: torch.maximum(x[:, :4], x[:, 4:]).sum(1)  # noqa: E731
    x, b = _weights((5, 8), 3), _weights((5, 8), 4)
    m = xattr.deep_lift(f, baselines=b)(x) / (x - b)
    assert m.min() >= 0 and m.max() <= 1 + 1e-12 and m.max() > 0.5


def test_what_parses_into_which_kind():
    """Two activations: "maximum"; an activation and a fixed tensor: "clamp", as before; fmax with
    a fixed tensor: not parsed, as before; a reduction: "max"."""
    x = torch.randn(2, 3, requires_grad=True)
    h1, h2, zero = x * 2, x.exp(), torch.zeros(3)
    kinds = {name: getattr(ops.parse(func, args, kwargs), "kind", None) for name, func, args, kwargs in [
        ("maximum(h1, h2)", torch.maximum, (h1, h2), {}), ("max(h1, h2)", torch.max, (h1, h2), {}),
        ("Tensor.min(h1, other=h2)", torch.Tensor.min, (h1,), {"other": h2}), ("fmin(h1, h2)", torch.fmin, (h1, h2), {}),
        ("clamp(h1, min=h2)", torch.clamp, (h1,), {"min": h2}), ("clamp_max(h1, h2)", torch.clamp_max, (h1, h2), {}),
        ("hypot(h1, h2)", torch.hypot, (h1, h2), {}), ("hypot(h1, zero)", torch.hypot, (h1, zero), {}),
        ("maximum(h1, zero)", torch.maximum, (h1, zero), {}), ("max(zero, h1)", torch.max, (zero, h1), {}),
        ("clamp(h1, zero, h2)", torch.clamp, (h1, zero, h2), {}), ("fmax(h1, zero)", torch.fmax, (h1, zero), {}),
        ("max(h1, 1)", torch.max, (h1, 1), {}), ("maximum(zero, zero)", torch.maximum, (zero, zero), {})]}
    assert kinds == {"maximum(h1, h2)": "maximum", "max(h1, h2)": "maximum", "Tensor.min(h1, other=h2)": "maximum",
                     "fmin(h1, h2)": "maximum", "clamp(h1, min=h2)": "maximum", "clamp_max(h1, h2)": "maximum",
                     "hypot(h1, h2)": "hypot", "hypot(h1, zero)": "hypot", "maximum(h1, zero)": "clamp",
                     "max(zero, h1)": "clamp", "clamp(h1, zero, h2)": None, "fmax(h1, zero)": None, "max(h1, 1)": "max",
                     "maximum(zero, zero)": "clamp"}


def test_one_example_alone_equals_its_row_in_the_batch_and_under_vmap():
    f = _net("torch.maximum", True, 3)
    x, b = _weights((4, 5), 4), _weights((1, 5), 5)
    method = xattr.deep_lift(f, baselines=b)
    check_batch_invariance(method, x, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(torch.func.vmap(lambda r: method(r[None])[0])(x), method(x), rtol=1e-13, atol=1e-15)


class _Net(nn.Module):
    def __init__(self, body):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.body = nn.Linear(4, 6), nn.Linear(3, 3), body
        self.to(D).eval()

    def forward(self, x):
        h = self.a(x)
        return self.b(self.body(h[:, :3], h[:, 3:]))


@pytest.mark.parametrize("body", ["maximum", "hypot"])
@pytest.mark.parametrize("reference", ["paired", "shared"])
def test_derivatives_of_the_attributions(body, reference):
    """torch.func.grad of the squared attributions, wrt the input and the weights, against central
    differences (no tie of a and b, no a or b equal to its reference, here)."""
    x = _weights((2, 4), 11)
    b = _weights((2, 4), 12) if reference == "paired" else torch.full((1, 4), 0.3, dtype=D)
    model = _Net(getattr(torch, body))
    check_grads(lambda m: xattr.deep_lift(xattr.target(m, 1), baselines=b), model, x, ("a.weight", "b.weight"))


@pytest.mark.parametrize("method", ["lrp", "guided_backprop", "deconvolution"])
def test_lrp_and_guided_keep_the_gradient(method):
    """Their mappings do not claim the kinds: the numbers are those of the same calls made through
    ``torch.ops.aten``, which no rule intercepts (ties included: h - 0.1 at dead ReLUs)."""
    w1, w2 = _weights((5, 12), 0), _weights((6,), 1)

    def model(ruled):
        def f(x):
            h = torch.relu(x @ w1) - 0.1
            a, b = h[:, :6], h[:, 6:]
            if ruled:
                y = torch.maximum(a, b) + torch.clamp(a, max=b) + torch.hypot(a, b)
            else:
                aten = torch.ops.aten  # no `rules` parser reads these
                y = aten.maximum(a, b) + aten.clamp.Tensor(a, None, b) + aten.hypot(a, b)
            return (y @ w2)[:, None] * torch.ones(2, dtype=D)

        return f

    x = _weights((3, 5), 2)
    run = getattr(xattr, method)
    torch.testing.assert_close(run(xattr.target(model(True), 1))(x), run(xattr.target(model(False), 1))(x),
                               rtol=0, atol=0)
