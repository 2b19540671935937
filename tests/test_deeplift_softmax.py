"""DeepLift through softmax with `xattr.rule.ExactSoftmax` (NOTE: [DeepLift through softmax, exactly]).

With it (and `Product` at ``@``, the default) summation-to-delta holds through attention written
by hand, where the default rule (`Rescale`'s normalised ratios) leaves a clear delta. Checked: the
property on small attention blocks (batch-first, sequence-first with the softmax over dim -1 or
dim 0, a reference per example, shared, or 0); a per-example loop through a written-out Function;
the softmax spelled ``exp(x - log(sum(exp(x))))`` under the default rules; an example alone equals
its row; vmap; DeepLift SHAP; ties (the reference equal to the input, masked scores, a shift);
large scores in float32; the ordinary gradient outside paired rows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import xattr
from rule_fuzz_nets import PairedMatmul
from xattr.testing import assert_trees_close, check_batch_invariance
from xattr.testing.strategies import random_tensor, seeds

TOL = dict(atol=1e-10, rtol=1e-9)
EXACT = {F.softmax: xattr.rule.ExactSoftmax()}
LAYOUTS = ("batch_first", "seq_first", "keys_first")


class Attention(nn.Module):
    """One head of attention on (B, L, 5): q, k, v linear maps, scores by ``@``, softmax, ``@ v``,
    an output map to 3 logits; float64, eval mode. ``layout``: scores (B, L, L) softmaxed over -1;
    "seq_first": (L, B, L) over -1 (the rows in dim 1); "keys_first": (L_k, B, L_q) over dim 0."""

    def __init__(self, layout: str, tokens: int = 4, seed: int = 0, spelled: bool = False):
        super().__init__()
        self.layout, self.spelled = layout, spelled
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.q, self.k, self.v = nn.Linear(5, 6), nn.Linear(5, 6), nn.Linear(5, 6)
            self.out = nn.Linear(6 * tokens, 3)
        self.double().eval()

    def softmax(self, s, dim):
        if self.spelled:  # DeepLift's rules on exp and log (Rescale) give ExactSoftmax's multipliers
            return torch.exp(s - torch.log(torch.exp(s).sum(dim, keepdim=True)))
        return F.softmax(s, dim)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        scores = q @ k.mT / 6**0.5  # (B, L_q, L_k)
        if self.layout == "seq_first":
            a = self.softmax(scores.transpose(0, 1), -1).transpose(0, 1)
        elif self.layout == "keys_first":
            a = self.softmax(scores.permute(2, 0, 1), 0).permute(1, 2, 0)
        else:
            a = self.softmax(scores, -1)
        return self.out((a @ v).flatten(1))


def _batch(batch, tokens, seed):
    return random_tensor((batch, tokens, 5), seed), 0.5 * random_tensor((batch, tokens, 5), seed + 1)


def _base(b, reference):
    return {"each": b, "row": b[:1], "zero": 0.0}[reference]


def _gap(model, x, base, t):
    with torch.no_grad():
        ref = torch.zeros_like(x) if isinstance(base, float) else base.expand_as(x)
        return model(x)[:, t] - model(ref)[:, t]


@given(st.sampled_from(LAYOUTS), st.integers(1, 3), st.integers(2, 5), seeds, st.sampled_from(["each", "row", "zero"]))
def test_summation_to_delta(layout, batch, tokens, seed, reference):
    """Tokens as many as the rows (2B, B + 1) too: the calls that DeepLift runs again with more rows."""
    model = Attention(layout, tokens, seed % 1000)
    x, b = _batch(batch, tokens, seed)
    base = _base(b, reference)
    attr, delta = xattr.deep_lift(xattr.target(model, 1), baselines=base, mapping=EXACT, return_delta=True)(x)
    gap = _gap(model, x, base, 1)
    assert_trees_close(attr.flatten(1).sum(1), gap, **TOL)
    assert delta.abs().max() < 1e-12 * (1 + gap.abs().max())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_default_rule_leaves_a_delta_the_exact_one_does_not(layout):
    model = Attention(layout, 4, 1)
    x, b = _batch(3, 4, 2)
    f = xattr.target(model, 0)
    _, default = xattr.deep_lift(f, baselines=b, return_delta=True)(x)
    _, exact = xattr.deep_lift(f, baselines=b, mapping=EXACT, return_delta=True)(x)
    gap = _gap(model, x, b, 0).abs().max()
    assert default.abs().max() > 1e-2 * gap  # measured: 0.107 on a gap of 0.41 (exact: 6e-17)
    assert exact.abs().max() < 1e-14


class _PairedSoftmax(torch.autograd.Function):
    """softmax over the last dim of rows [x; b]; the input half's backward ``sum_j g_j M_jk`` with
    ``M_jk = m_j (delta_jk - w_k)`` built from its definition (c = 0, S subtracted, no ties)."""

    @staticmethod
    def forward(ctx, s):
        y = s.softmax(-1)
        (x, x0), (y1, y0) = s.chunk(2), y.chunk(2)
        lse, lse0 = x.logsumexp(-1, keepdim=True), x0.logsumexp(-1, keepdim=True)
        m = (y1 - y0) / ((x - lse) - (x0 - lse0))
        S, S0 = x.exp().sum(-1, keepdim=True), x0.exp().sum(-1, keepdim=True)
        w = (lse - lse0) / (S - S0) * (x.exp() - x0.exp()) / (x - x0)
        ctx.save_for_backward(m.unsqueeze(-1) * (torch.eye(s.shape[-1], dtype=s.dtype) - w.unsqueeze(-2)))
        return y

    @staticmethod
    def backward(ctx, g):
        (M,) = ctx.saved_tensors
        first = (g.chunk(2)[0].unsqueeze(-1) * M).sum(-2)
        return torch.cat([first, torch.zeros_like(first)])


def _reference(model, x, b, t):
    """DeepLift of the batch-first block, one example at a time through written-out Functions."""
    out = []
    for i in range(len(x)):
        both = torch.cat([x[i : i + 1], b[i : i + 1]]).requires_grad_()
        q, k, v = model.q(both), model.k(both), model.v(both)
        a = _PairedSoftmax.apply(PairedMatmul.apply(q, k.mT) / 6**0.5)
        y = model.out(PairedMatmul.apply(a, v).flatten(1))[0, t]
        out.append((x[i : i + 1] - b[i : i + 1]) * torch.autograd.grad(y, both)[0][:1])
    return torch.cat(out)


def test_equals_a_per_example_loop_through_written_out_functions():
    model = Attention("batch_first", 4, 3)
    x, b = _batch(3, 4, 4)
    f = xattr.target(model, 2)
    assert_trees_close(xattr.deep_lift(f, baselines=b, mapping=EXACT)(x), _reference(model, x, b, 2), **TOL)
    shared = xattr.deep_lift(f, baselines=b[:1], mapping=EXACT)(x)  # B + 1 rows
    assert_trees_close(shared, _reference(model, x, b[:1].expand_as(x), 2), **TOL)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_equals_the_default_rules_on_the_spelled_out_softmax(layout):
    """``exp(x - log(sum(exp(x))))`` under DeepLift's defaults (Rescale at exp and log): the
    decomposition that ExactSoftmax computes in one step."""
    model, spelled = Attention(layout, 3, 5), Attention(layout, 3, 5, spelled=True)
    x, b = _batch(2, 3, 6)
    for base in (b, b[:1], 0.0):
        ours = xattr.deep_lift(xattr.target(model, 1), baselines=base, mapping=EXACT)(x)
        assert_trees_close(ours, xattr.deep_lift(xattr.target(spelled, 1), baselines=base)(x), **TOL)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_an_example_alone_equals_its_row(layout):
    model = Attention(layout, 4, 7)
    x, b = _batch(3, 4, 8)
    f = xattr.target(model, 1)
    check_batch_invariance(lambda x, b: xattr.deep_lift(f, baselines=b, mapping=EXACT)(x), x, b, argnums=(0, 1), **TOL)
    check_batch_invariance(xattr.deep_lift(f, baselines=b[:1], mapping=EXACT), x, **TOL)  # a shared reference row


def test_vmap_over_examples_and_deep_lift_shap():
    model = Attention("seq_first", 4, 9)
    x, b = _batch(2, 4, 10)
    f = xattr.target(model, 0)
    dl = xattr.deep_lift(f, baselines=0.0, mapping=EXACT)
    assert_trees_close(torch.func.vmap(lambda row: dl(row[None])[0])(x), dl(x), **TOL)
    shap, delta = xattr.deep_lift_shap(f, baselines=b, mapping=EXACT, return_delta=True)(x)  # c copies, shared rows
    assert delta.abs().max() < 1e-12
    mean = torch.stack([xattr.deep_lift(f, baselines=b[k : k + 1], mapping=EXACT)(x) for k in range(2)]).mean(0)
    assert_trees_close(shap, mean, **TOL)


def _weighted_softmax(x):
    return (F.softmax(x, -1) * torch.linspace(-1, 1, x.shape[-1], dtype=x.dtype)).sum(-1)


def test_ties_take_the_derivative():
    """The reference equal to the input: the gradient (softmax's Jacobian); a score masked (-inf)
    in both rows, a tie at one score, a shifted row (equal softmax): finite, and exact."""
    x = random_tensor((3, 5), 11)
    rules = xattr.rule.ExactSoftmax()
    m = xattr.deep_lift(_weighted_softmax, baselines=x.clone(), mapping={F.softmax: rules}, multiply_by_inputs=False)(x)
    assert_trees_close(m, xattr.grad(_weighted_softmax)(x), **TOL)
    masked = x.clone()
    masked[:, 1] = float("-inf")
    b = random_tensor((3, 5), 12)
    b[:, 1] = float("-inf")
    b[:, 3] = masked[:, 3]  # one score ties
    b[2] = masked[2] + 3.0  # the same softmax: f(x) - f(b) = 0
    m, delta = xattr.deep_lift(_weighted_softmax, baselines=b, mapping=EXACT, multiply_by_inputs=False, return_delta=True)(masked)
    assert torch.isfinite(m).all() and (m[:, 1] == 0).all()
    attr = torch.where(torch.isinf(masked), 0.0, m * (masked - b))
    gap = _weighted_softmax(masked) - _weighted_softmax(b)
    assert_trees_close(attr.sum(1), gap, **TOL)
    assert gap[2].abs() < 1e-15 and attr[2].abs().max() > 1e-2  # a shift: the Jacobian's attributions, summing to 0


def test_large_scores_in_float32():
    """Scores of scale 20 (normalisers far apart): the multipliers stay of the softmax's size, and
    the delta at the rounding of such scores in float32 (ulp(40) = 4e-6; the product rule on ``e
    * (1 / S)`` was off by 1e22 there, the default rule here by 37 on changes below 1.03)."""
    x, b = random_tensor((64, 8), 13, torch.float32, 20.0), random_tensor((64, 8), 14, torch.float32, 0.1)
    attr, delta = xattr.deep_lift(_weighted_softmax, baselines=b, mapping=EXACT, return_delta=True)(x)
    assert attr.abs().max() < 10 and delta.abs().max() < 1e-4  # measured 5.0 and 2.5e-5 (float64: 5e-14)
    _, default = xattr.deep_lift(_weighted_softmax, baselines=b, return_delta=True)(x)
    assert default.abs().max() > 1


def test_the_ordinary_gradient_outside_paired_rows():
    model = Attention("seq_first", 4, 15)
    f = xattr.target(model, 1)
    x = _batch(3, 4, 16)[0]
    assert_trees_close(xattr.grad(xattr.rules(f, EXACT))(x), xattr.grad(f)(x), **TOL)


@pytest.mark.parametrize("key", [torch.softmax, nn.Softmax])
def test_any_softmax_key_replaces_the_default(key):
    """``{torch.softmax: rule}`` replaces the softmax kind's default; a module class keys nn.Softmax."""
    model = nn.Sequential(nn.Linear(5, 4), nn.Softmax(-1), nn.Linear(4, 2)).double().eval()
    x, b = random_tensor((3, 5), 17), random_tensor((3, 5), 18)
    _, delta = xattr.deep_lift(xattr.target(model, 0), baselines=b, mapping={key: xattr.rule.ExactSoftmax()}, return_delta=True)(x)
    assert delta.abs().max() < 1e-14


def test_eps_is_checked():
    with pytest.raises(ValueError, match="eps"):
        xattr.rule.ExactSoftmax(eps=-1.0)


def test_softmax_in_another_dtype():
    """``F.softmax(x, -1, dtype=torch.float64)`` of float32 scores: the terms in the softmax's dtype."""
    w = random_tensor((6, 5), 19, torch.float32)

    def f(x):
        return (F.softmax(x @ w.T, -1, dtype=torch.float64) * torch.arange(6.0, dtype=torch.float64)).sum(-1)

    x, b = random_tensor((3, 5), 20, torch.float32), random_tensor((3, 5), 21, torch.float32)
    attr, delta = xattr.deep_lift(f, baselines=b, mapping=EXACT, return_delta=True)(x)
    assert attr.dtype == torch.float32 and delta.abs().max() < 1e-5
