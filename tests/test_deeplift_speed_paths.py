"""DeepLift's fast paths (NOTE: [Reference rows take no gradient], [Written-out steps fused],
[Written-out attention fused]) against the paths they replace (switched off by monkeypatching:
the old code), and against slow references: the fused layer norm's multipliers as an explicit
matrix built by loops, summation-to-delta of the fused ops alone, GELU's derivative against jvp."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
import xattr._src.rules as rules_module
from xattr._src import deeplift_dead_rows, deeplift_fused, ops
from xattr._src.deeplift_rules import derivative
from xattr._src.row_layout import paired_rows
from xattr._src.rule_base import Saved

D = torch.float64
EXACT = xattr.rule.exact_deep_lift_rules()


@pytest.fixture
def old_paths(monkeypatch):
    """A function running its argument with the fast paths off (the code before them)."""

    def run(fn):
        with monkeypatch.context() as m:
            m.setattr(rules_module, "fused", lambda *a: None)
            m.setattr(rules_module, "linear_rows", lambda *a: None)
            return fn()

    return run


class Block(nn.Module):
    """A batch-first transformer block (nn.MultiheadAttention inside: F.linear projections, SDPA,
    layer norms, GELU), a final layer norm and a linear read-out."""

    def __init__(self, seed: int, d: int = 8, heads: int = 2):
        super().__init__()
        torch.manual_seed(seed)
        self.layer = nn.TransformerEncoderLayer(d, heads, 16, dropout=0.0, activation="gelu", batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 1)

    def forward(self, x, mask=None):
        return self.head(self.norm(self.layer(x, src_key_padding_mask=mask)).mean(1)).squeeze(-1)


def block(seed: int) -> nn.Module:
    return Block(seed).to(D).eval()


def data(seed: int, shape=(3, 5, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=D), 0.3 * torch.randn(shape, generator=g, dtype=D)


def close(new, old):
    """Equal to float64 rounding as secants amplify it: the fused attention's softmax is ``exp(z -
    logsumexp(z))``, and `ExactSoftmax`'s secants divide by differences of log-probabilities (NOTE:
    [Softmax as exp(z - logsumexp)]): measured 2e-11 of the largest attribution on the block
    (the fused layer norm alone: 1e-16)."""
    torch.testing.assert_close(new, old, rtol=0, atol=1e-9 * float(old.abs().max()))


def counting(monkeypatch):
    """Counts the fused rules' and the row-skipping linear's runs."""
    seen = {"fused": 0, "skipped": 0, "whole": 0}
    fused = rules_module.fused

    def counted(*args):
        out = fused(*args)
        seen["fused"] += out is not None
        return out

    backward = deeplift_dead_rows._InputRows.backward

    def spy(ctx, grad):
        if grad is not None:
            seen["whole" if bool(grad[ctx.n :].any()) else "skipped"] += 1
        return backward(ctx, grad)

    monkeypatch.setattr(rules_module, "fused", counted)
    monkeypatch.setattr(deeplift_dead_rows._InputRows, "backward", staticmethod(spy))
    return seen


@pytest.mark.parametrize("shared", [False, True])
def test_deep_lift_on_a_transformer_block_equals_the_written_out_steps(shared, old_paths, monkeypatch):
    model = block(0)
    x, b = data(1)
    base = b[:1] if shared else b  # one row: the shared reference (B + 1 rows)
    dl = xattr.deep_lift(model, baselines=base, mapping=EXACT, return_delta=True)
    attr_old, delta_old = old_paths(lambda: dl(x))
    seen = counting(monkeypatch)
    attr, delta = dl(x)
    assert seen["fused"] == 4  # the attention inside nn.MultiheadAttention, two layer norms, the final one
    assert seen["skipped"] > 0
    close(attr, attr_old)
    assert delta.abs().max() < 1e-12 and delta_old.abs().max() < 1e-12


def test_layer_deep_lift_with_sdpa_equals_the_written_out_steps(old_paths, monkeypatch):
    """A hand-written block calling F.scaled_dot_product_attention with a float mask, a bool mask
    that leaves a query without keys (the dead rows of written_out.attention_probs), and one
    causal bool mask for every example with such a query."""

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(3)
            self.embed, self.qkv, self.out = nn.Linear(4, 8), nn.Linear(8, 24), nn.Linear(8, 1)
            self.norm = nn.LayerNorm(8)

        def forward(self, x, mask):
            h = self.embed(x)
            q, k, v = self.qkv(h).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2)
            return self.out(self.norm(a + h)).sum((1, 2))

    model = Attn().to(D).eval()
    x, b = data(4, (3, 5, 4))
    bool_mask = torch.ones(3, 1, 5, 5, dtype=torch.bool)
    bool_mask[1, :, 2, :] = False  # a query that attends nothing
    shared_mask = torch.ones(5, 5, dtype=torch.bool).tril()
    shared_mask[4] = False  # one (L, S) mask for every example: its dead query is no row
    float_mask = torch.zeros(3, 1, 5, 5, dtype=D).masked_fill(torch.rand(3, 1, 5, 5, generator=torch.Generator().manual_seed(0)) < 0.3, -1e4)
    for mask in (float_mask, bool_mask, shared_mask):
        split = xattr.at_layer(model, model.embed)
        dl = xattr.layer_deep_lift(split, baselines=b, mapping=EXACT, return_delta=True)
        attr_old, delta_old = old_paths(lambda: dl(x, mask))
        seen = counting(monkeypatch)
        attr, delta = dl(x, mask)
        assert seen["fused"] == 2 and seen["skipped"] > 0  # the attention and the layer norm
        close(attr, attr_old)
        assert delta.abs().max() < 1e-12 and delta_old.abs().max() < 1e-12
        monkeypatch.undo()


def test_rows_mixed_by_the_model_take_the_whole_product(old_paths, monkeypatch):
    """A model that centres its hidden rows over the batch gives the reference rows gradient:
    the row-skipping linear must see it and multiply every row."""
    torch.manual_seed(5)
    lin1, lin2 = nn.Linear(4, 6).to(D), nn.Linear(6, 1).to(D)

    def f(x):
        h = torch.tanh(lin1(x))
        return lin2(h - h.mean(0, keepdim=True)).squeeze(-1)

    x, b = data(6, (4, 4))
    dl = xattr.deep_lift(f, baselines=b)
    expected = old_paths(lambda: dl(x))
    seen = counting(monkeypatch)
    got = dl(x)
    assert seen == {"fused": 0, "skipped": 1, "whole": 1}  # lin2 skips; lin1's reference rows got gradient from the mean
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_fast_paths_stay_off_where_they_do_not_apply(monkeypatch):
    """Under vmap, outside paired rows, with other rules at the steps, and in half precision the
    fused path declines (the steps run written out, as before)."""
    torch.manual_seed(0)
    ln = nn.LayerNorm(6).to(D)
    x = torch.randn(4, 3, 6, dtype=D, requires_grad=True)
    op = ops.parse(F.layer_norm, (x, (6,), ln.weight, ln.bias, 1e-5), {})
    table = rules_module.Table({**xattr.rule.deep_lift_rules(), **EXACT}, None)
    unfused = EXACT[F.layer_norm]
    with paired_rows(4, reference_grads=False):
        assert deeplift_fused.fused(unfused, op, table, []) is not None
        other = rules_module.Table({**xattr.rule.deep_lift_rules(), **EXACT, torch.mul: xattr.rule.Block()}, None)
        assert deeplift_fused.fused(unfused, op, other, []) is None
        half = ops.parse(F.layer_norm, (x.detach().to(torch.bfloat16).requires_grad_(), (6,)), {})
        assert deeplift_fused.fused(unfused, half, table, []) is None
        assert deeplift_fused.fused(xattr.rule.Rescale(), op, table, []) is None
    with paired_rows(3, reference_grads=False):  # dim 0 is not the rows (no pairs): written out
        assert deeplift_fused.fused(unfused, op, table, []) is None
    assert deeplift_dead_rows.linear_rows(ops.parse(F.linear, (x, torch.ones(2, 6, dtype=D)), {}), 3, 2) is None


def _layer_norm_matrix(x, r, w, eps, rescale_eps=1e-10):
    """DeepLift's multiplier matrix M (D x D) of one row of the written-out layer norm, by loops:
    out_j - out_ref_j = sum_k M_jk (x_k - r_k), with Product's averages and Rescale's secant."""
    n = len(x)
    c = x - x.mean()
    cr = r - r.mean()
    v, vr = (c * c).mean() + eps, (cr * cr).mean() + eps
    s, sr = 1 / math.sqrt(v), 1 / math.sqrt(vr)
    m_s = (s - sr) / (v - vr) if abs(v - vr) >= rescale_eps else -0.5 * s ** 3
    avg_c, avg_s = (c + cr) / 2, (s + sr) / 2
    m = np.zeros((n, n))
    for j in range(n):
        for k in range(n):
            dc_jk = (j == k) - 1 / n  # d c_j / d x_k (the centring is linear)
            dv_k = sum(2 * avg_c[i] * ((i == k) - 1 / n) for i in range(n)) / n  # Product at c * c, then the mean
            m[j, k] = w[j] * (avg_s * dc_jk + avg_c[j] * m_s * dv_k)  # Product at c * s, Rescale at rsqrt
    return m


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 7), scale=st.floats(0.1, 5.0))
def test_fused_layer_norm_backward_is_the_multiplier_matrix(seed, n, scale):
    g = torch.Generator().manual_seed(seed)
    x, r = scale * torch.randn(2, n, generator=g, dtype=D), torch.randn(2, n, generator=g, dtype=D)
    w, bias, grad = torch.randn(n, generator=g, dtype=D), torch.randn(n, generator=g, dtype=D), torch.randn(2, n, generator=g, dtype=D)
    op = ops.Op("layer_norm", None, (), {"normalized_shape": (n,), "eps": 1e-5}, F.layer_norm, False)
    rule = deeplift_fused._layer_norm(1e-10)
    with paired_rows(4, reference_grads=False):
        out, extras = rule.forward(op, torch.cat([x, r]), w, bias)
    gx = rule.backward(op, Saved((None, w, bias), extras), torch.cat([grad, torch.zeros_like(grad)]))[0]
    torch.testing.assert_close(out, F.layer_norm(torch.cat([x, r]), (n,), w, bias, 1e-5), rtol=1e-12, atol=1e-12)
    assert torch.equal(gx[2:], torch.zeros_like(grad))  # unseeded reference rows: zeros
    for i in range(2):
        m = _layer_norm_matrix(x[i].numpy(), r[i].numpy(), w.numpy(), 1e-5)
        np.testing.assert_allclose(gx[i].numpy(), m.T @ grad[i].numpy(), rtol=1e-9, atol=1e-11)
        delta = (out[i] - out[2 + i]).numpy()  # summation-to-delta of the op alone
        np.testing.assert_allclose(m @ (x[i] - r[i]).numpy(), delta, rtol=1e-9, atol=1e-11)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), heads=st.integers(1, 3), length=st.integers(1, 5))
def test_fused_attention_sums_to_delta(seed, heads, length):
    """deep_lift of a sum of SDPA outputs (q, k, v linear in the input) conserves exactly."""
    g = torch.Generator().manual_seed(seed)
    wq, wk, wv = (torch.randn(3, 4, generator=g, dtype=D) for _ in range(3))

    def f(x):  # x: (B, heads, length, 3)
        return F.scaled_dot_product_attention(x @ wq, x @ wk, x @ wv).sum((1, 2, 3))

    x, b = 2 * torch.randn(2, heads, length, 3, generator=g, dtype=D), torch.randn(2, heads, length, 3, generator=g, dtype=D)
    attr, delta = xattr.deep_lift(f, baselines=b, mapping=EXACT, return_delta=True)(x)
    assert delta.abs().max() < 1e-10 * max(1.0, float((f(x) - f(b)).abs().max()))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gelu_derivative_is_jvps_bit_for_bit(approximate, dtype):
    x = 3 * torch.randn(500, generator=torch.Generator().manual_seed(0), dtype=dtype)
    op = ops.parse(F.gelu, (x,), {"approximate": approximate})
    expected = torch.func.jvp(op.fn, (x,), (torch.ones_like(x),))[1]
    assert torch.equal(derivative(op, x, op.fn(x)), expected)


def test_rsqrt_secant_equals_rescale_with_and_without_ties():
    g = torch.Generator().manual_seed(0)
    v = torch.rand(8, 3, 1, generator=g, dtype=D) + 0.1
    tied = v.clone()
    tied[5, 1] = tied[1, 1]  # a tie: Rescale takes the derivative there
    for t in (v, tied):
        with paired_rows(8, reference_grads=False):
            got = deeplift_fused._secant(t, t.rsqrt(), 1e-10)
            expected = deeplift_fused._rescaled(deeplift_fused._RSQRT, t, t.rsqrt(), 1e-10)
        assert torch.equal(got, expected)


def test_both_halves_seeded_under_paired_rows_equal_the_written_out_steps(old_paths, monkeypatch):
    """`paired_rows` with its default ``reference_grads=True`` seeds both halves: the fused ops give
    the reference rows their pairs' multipliers (as the steps do) and no linear skips a row."""
    model = block(2)
    x, b = data(3)
    ruled = xattr.rules(model, {**xattr.rule.deep_lift_rules(), **EXACT})

    def grads():
        both = torch.cat([x, b]).requires_grad_()
        with paired_rows(6):
            return torch.autograd.grad(ruled(both).sum(), both)[0]

    expected = old_paths(grads)
    seen = counting(monkeypatch)
    got = grads()
    assert seen == {"fused": 4, "skipped": 0, "whole": 0}  # the linears stay plain: both halves seeded
    close(got, expected)
