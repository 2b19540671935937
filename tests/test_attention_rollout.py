"""Attention rollout, attention flow and gradient-weighted rollout against slow loop references,
finite differences, properties and errors (capture: test_attention_capture.py)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr

D = torch.float64


class Attention(nn.Module):
    """Hand-written multi-head self-attention: the probabilities from F.softmax (B, H, T, T).
    ``delta`` (a test's own knob, None by default) is added to the probabilities."""

    def __init__(self, dim: int, heads: int, sdpa: bool = False):
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.delta = None

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.sdpa:
            heads = F.scaled_dot_product_attention(q, k, v)
        else:
            probs = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
            if self.delta is not None:
                probs = probs + self.delta
            heads = probs @ v
        return self.proj(heads.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim, heads, sdpa=False):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, sdpa)
        self.norm2, self.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Tiny(nn.Module):
    """Tokens (B, T-1, d_in) -> [CLS] + projected tokens -> blocks -> logits of the [CLS] state."""

    def __init__(self, d_in=3, dim=8, heads=2, depth=2, classes=3, sdpa=False):
        super().__init__()
        self.embed, self.cls = nn.Linear(d_in, dim), nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, sdpa) for _ in range(depth))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = torch.cat([self.cls.expand(len(x), -1, -1), self.embed(x)], 1)
        for blk in self.blocks:
            h = blk(h)
        return self.head(h[:, 0])


def tiny(seed, **kw):
    torch.manual_seed(seed)
    return Tiny(**kw).to(D).eval()


def inputs(seed, b=3, t=4, d_in=3):
    return torch.randn(b, t, d_in, generator=torch.Generator().manual_seed(seed), dtype=D)


# -- slow references ---------------------------------------------------------------------------
def rollout_reference(maps, head_fusion="mean", residual=0.5, discard_ratio=0.0):
    """Explicit loops over examples, layers, heads, rows and columns (numpy)."""
    maps = [a.numpy() for a in maps]
    b_n, _, t, _ = maps[0].shape
    out = np.zeros((b_n, t, t))
    for b in range(b_n):
        r = np.eye(t)
        for a in maps:
            fused = np.zeros((t, t))
            for i in range(t):
                for j in range(t):
                    vals = [a[b, h, i, j] for h in range(a.shape[1])]
                    fused[i, j] = {"mean": np.mean, "max": np.max, "min": np.min}[head_fusion](vals)
            k = int(discard_ratio * t * t)
            order = sorted(range(t * t), key=lambda n: (fused.flat[n], n))  # ties in index order
            for n in order[:k]:
                fused[n // t, n % t] = 0.0
            step = np.zeros((t, t))
            for i in range(t):
                for j in range(t):
                    step[i, j] = (1 - residual) * fused[i, j] + residual * (i == j)
                s = sum(step[i])
                if s != 0:
                    step[i] /= s
            new = np.zeros((t, t))
            for i in range(t):
                for j in range(t):
                    new[i, j] = sum(step[i, m] * r[m, j] for m in range(t))
            r = new
        out[b] = r
    return torch.from_numpy(out)


def gradient_rollout_reference(maps, grads):
    """Chefer et al.: Abar = mean_h (grad * A)^+, R = I, R <- R + Abar R; explicit loops."""
    maps, grads = [a.numpy() for a in maps], [g.numpy() for g in grads]
    b_n, h_n, t, _ = maps[0].shape
    out = np.zeros((b_n, t, t))
    for b in range(b_n):
        r = np.eye(t)
        for a, g in zip(maps, grads):
            cam = np.zeros((t, t))
            for i in range(t):
                for j in range(t):
                    cam[i, j] = sum(max(g[b, h, i, j] * a[b, h, i, j], 0.0) for h in range(h_n)) / h_n
            r = r + np.array([[sum(cam[i, m] * r[m, j] for m in range(t)) for j in range(t)] for i in range(t)])
        out[b] = r
    return torch.from_numpy(out)


# -- rollout -----------------------------------------------------------------------------------
@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("residual, discard_ratio", [(0.5, 0.0), (0.3, 0.4), (0.0, 0.0), (1.0, 0.2)])
def test_rollout_matches_the_loop_reference(head_fusion, residual, discard_ratio):
    model = tiny(4, heads=4, depth=3)
    x = inputs(4, 2, 4)
    maps = xattr.attention_weights(model)(x)
    got = xattr.attention_rollout(model, head_fusion=head_fusion, residual=residual, discard_ratio=discard_ratio)(x)
    want = rollout_reference(maps, head_fusion, residual, discard_ratio)
    torch.testing.assert_close(got, want, atol=1e-13, rtol=0)


def test_discard_ties_and_an_emptied_row_with_no_residual():
    # identical entries everywhere: ties go in index order; with residual 0 the first rows empty
    def f(x):
        return F.softmax(torch.zeros(len(x), 1, 3, 3, dtype=D) + 0 * x.sum(), dim=-1)

    x = torch.zeros(1, 1, dtype=D)
    got = xattr.attention_rollout(f, residual=0.0, discard_ratio=0.5)(x)  # 4 of 9 entries dropped
    want = rollout_reference(xattr.attention_weights(f)(x), "mean", 0.0, 0.5)
    torch.testing.assert_close(got, want, atol=1e-15, rtol=0)
    assert (got[0, 0] == 0).all() and got[0, 2].sum() == 1.0


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 10_000),
    fusion=st.sampled_from(["mean", "max", "min"]),
    residual=st.floats(0.01, 1.0),
    discard=st.floats(0.0, 0.9),
    depth=st.integers(1, 3),
)
def test_rollout_rows_are_distributions(seed, fusion, residual, discard, depth):
    model = tiny(seed, depth=depth)
    r = xattr.attention_rollout(model, head_fusion=fusion, residual=residual, discard_ratio=discard)(inputs(seed, 2, 3))
    assert r.shape == (2, 4, 4) and (r >= 0).all()
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 4, dtype=D), atol=1e-12, rtol=0)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(fusion=st.sampled_from(["mean", "max", "min"]), residual=st.floats(0.0, 1.0), heads=st.integers(1, 3),
       t=st.integers(1, 6))
def test_identity_attention_rolls_out_to_the_identity(fusion, residual, heads, t):
    def one_layer(x):  # every token attends to itself alone
        scores = torch.full((len(x), heads, t, t), -math.inf, dtype=D).diagonal_scatter(
            torch.zeros(len(x), heads, t, dtype=D), dim1=-2, dim2=-1)
        return F.softmax(scores + x.sum(), dim=-1) @ torch.ones(t, 1, dtype=D)

    r = xattr.attention_rollout(one_layer, head_fusion=fusion, residual=residual)(torch.zeros(2, 1, dtype=D))
    assert torch.equal(r, torch.eye(t, dtype=D).expand(2, t, t))


def flow_reference(maps, head_fusion="mean", residual=0.5):
    """Abnar & Zuidema's attention flow with networkx: a directed graph from each layer's tokens down to
    the previous layer's, built edge by edge, one maximum flow per output and input token, rows normalised."""
    import networkx as nx

    steps = [rollout_reference([a], head_fusion, residual) for a in maps]  # one layer each: its A'_l
    b_n, t = steps[0].shape[:2]
    out = np.zeros((b_n, t, t))
    for b in range(b_n):
        g = nx.DiGraph()
        for layer, step in enumerate(steps, start=1):
            for k in range(t):
                for j in range(t):
                    g.add_edge((layer, k), (layer - 1, j), capacity=float(step[b, k, j]))
        for i in range(t):
            for j in range(t):
                out[b, i, j] = nx.maximum_flow_value(g, (len(steps), i), (0, j))
            out[b, i] /= out[b, i].sum()
    return torch.from_numpy(out)


@pytest.mark.parametrize("head_fusion, residual", [("mean", 0.5), ("max", 0.2), ("min", 0.8)])
def test_attention_flow_matches_networkx(head_fusion, residual):
    model = tiny(13, depth=3)
    x = inputs(13, 2, 4)
    maps = xattr.attention_weights(model)(x)
    got = xattr.attention_flow(model, head_fusion=head_fusion, residual=residual)(x)
    torch.testing.assert_close(got, flow_reference(maps, head_fusion, residual), atol=1e-10, rtol=0)
    row = xattr.attention_flow(model, head_fusion=head_fusion, residual=residual, query=-1)(x)
    torch.testing.assert_close(row, got[:, -1], atol=0, rtol=0)
    if head_fusion == "mean":  # with a progress bar (or, without tqdm, a warning): the same numbers
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shown = xattr.attention_flow(model, query=0, show_progress=True)(x)
        torch.testing.assert_close(shown, got[:, 0], atol=0, rtol=0)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), residual=st.floats(0.05, 1.0), fusion=st.sampled_from(["mean", "max", "min"]))
def test_attention_flow_rows_are_distributions_and_one_layer_is_rollout(seed, residual, fusion):
    x = inputs(seed, 2, 3)
    deep = tiny(seed, depth=2)
    f = xattr.attention_flow(deep, head_fusion=fusion, residual=residual)(x)
    assert (f >= 0).all()
    torch.testing.assert_close(f.sum(-1), torch.ones(2, 4, dtype=D), atol=1e-12, rtol=0)
    # one layer: a single edge joins output i and input j, so the flow is A'_1 itself, the rollout
    shallow = tiny(seed, depth=1)
    torch.testing.assert_close(xattr.attention_flow(shallow, head_fusion=fusion, residual=residual)(x),
                               xattr.attention_rollout(shallow, head_fusion=fusion, residual=residual)(x),
                               atol=1e-12, rtol=0)  # fmt: skip


def test_max_flow_on_a_textbook_graph():
    from xattr._src.max_flow import max_flow

    # s=0, t=5: the classic CLRS network, maximum flow 23
    cap = np.zeros((6, 6))
    for u, v, c in [(0, 1, 16), (0, 2, 13), (1, 3, 12), (2, 1, 4), (2, 4, 14), (3, 2, 9), (3, 5, 20), (4, 3, 7),
                    (4, 5, 4)]:  # fmt: skip
        cap[u, v] = c
    assert max_flow(cap, 0, 5) == 23.0
    assert max_flow(cap, 5, 0) == 0.0


# -- gradient-weighted rollout -----------------------------------------------------------------
def test_attention_gradient_equals_finite_differences_of_the_target():
    model = tiny(5)
    x = inputs(5, 2)
    f = xattr.target(model, 1)
    maps, grads = xattr.attention_gradients(f)(x)
    assert len(grads) == 2 and grads[1].shape == maps[1].shape == (2, 2, 5, 5)
    eps = 1e-6
    for layer, (b, h, i, j) in [(0, (0, 1, 0, 3)), (1, (1, 0, 0, 0)), (1, (0, 1, 2, 4)), (0, (1, 0, 4, 1))]:
        att = model.blocks[layer].attn
        changed = []
        for sign in (1, -1):
            att.delta = torch.zeros(2, 2, 5, 5, dtype=D)
            att.delta[b, h, i, j] = sign * eps
            with torch.no_grad():
                changed.append(f(x))
        att.delta = None
        fd = (changed[0] - changed[1]) / (2 * eps)
        assert fd[1 - b].abs() < 1e-12  # the other example does not see the change
        torch.testing.assert_close(grads[layer][b, h, i, j], fd[b], atol=1e-8, rtol=1e-6)
    assert all(g.abs().max() > 1e-3 for g in grads)


def test_gradient_rollout_matches_the_loop_reference_and_batch_loop():
    model = tiny(6, heads=4, depth=3)
    x = inputs(6, 3)
    f = xattr.target(model, torch.tensor([0, 2, 1]))
    maps, grads = xattr.attention_gradients(f)(x)
    got = xattr.attention_gradient_rollout(f)(x)
    torch.testing.assert_close(got, gradient_rollout_reference(maps, grads), atol=1e-13, rtol=0)
    assert (got >= 0).all() and (torch.diagonal(got, dim1=-2, dim2=-1) >= 1).all()
    assert (got - torch.eye(5, dtype=D)).abs().max() > 1e-3  # not the identity: the gradients carry something
    for i, t in enumerate([0, 2, 1]):
        one = xattr.attention_gradient_rollout(xattr.target(model, t))(x[i : i + 1])
        torch.testing.assert_close(one[0], got[i], atol=1e-13, rtol=0)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), depth=st.integers(1, 3), heads=st.sampled_from([1, 2, 4]), t=st.integers(1, 4))
def test_gradient_rollout_is_at_least_the_identity_and_matches_the_reference(seed, depth, heads, t):
    # R = (I + Abar_L) ... (I + Abar_1) with every Abar_l >= 0, so R >= I entry by entry
    model = tiny(seed, depth=depth, heads=heads)
    x = inputs(seed, 2, t)
    f = xattr.target(model, seed % 3)
    maps, grads = xattr.attention_gradients(f)(x)
    r = xattr.attention_gradient_rollout(f)(x)
    assert r.shape == (2, t + 1, t + 1)
    assert (r - torch.eye(t + 1, dtype=D) >= 0).all()
    torch.testing.assert_close(r, gradient_rollout_reference(maps, grads), atol=1e-13, rtol=0)


def test_a_target_that_ignores_attention_gives_the_identity():
    model = tiny(11)
    f = lambda x: model.head.bias[0] + 0 * model(x)[:, 0]  # noqa: E731  (depends on nothing)
    r = xattr.attention_gradient_rollout(f)(inputs(11, 2))
    assert torch.equal(r, torch.eye(5, dtype=D).expand(2, 5, 5))


def test_many_outputs_equal_single_target_runs():
    model = tiny(7)
    x = inputs(7, 2)
    many = xattr.attention_gradient_rollout(xattr.target(model, xattr.outputs([2, 0])))(x)
    assert many.shape == (2, 2, 5, 5)
    _, grads = xattr.attention_gradients(xattr.target(model, xattr.outputs([2, 0])))(x)
    assert grads[0].shape == (2, 2, 2, 5, 5)
    for j, k in enumerate([2, 0]):
        torch.testing.assert_close(many[:, j], xattr.attention_gradient_rollout(xattr.target(model, k))(x),
                                   atol=1e-13, rtol=0)  # fmt: skip


def test_rollout_batch_invariance_and_the_model_left_as_it_was():
    model = tiny(8)
    model.blocks[0].train()  # a mode to keep (no dropout in it: no warning)
    x = inputs(8, 3)
    x_before = x.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    whole = xattr.attention_rollout(model, discard_ratio=0.3)(x)
    grad_whole = xattr.attention_gradient_rollout(xattr.target(model, 0))(x)
    for i in range(3):
        torch.testing.assert_close(xattr.attention_rollout(model, discard_ratio=0.3)(x[i : i + 1])[0], whole[i],
                                   atol=1e-14, rtol=0)  # fmt: skip
        torch.testing.assert_close(xattr.attention_gradient_rollout(xattr.target(model, 0))(x[i : i + 1])[0],
                                   grad_whole[i], atol=1e-13, rtol=0)  # fmt: skip
    xattr.attention_weights(model, layers=[model.blocks[1].attn])(x)
    assert torch.equal(x, x_before) and not x.requires_grad
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert model.blocks[0].training and not model.blocks[1].training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# -- helpers -----------------------------------------------------------------------------------
def test_query_row_and_tokens_to_image_against_loops():
    maps = torch.arange(2 * 5 * 5, dtype=D).reshape(2, 5, 5)
    assert torch.equal(xattr.query_row(maps), maps[:, 0])
    assert torch.equal(xattr.query_row(maps, -1), maps[:, 4])
    per = xattr.query_row(maps, torch.tensor([3, -2]))
    assert torch.equal(per, torch.stack([maps[0, 3], maps[1, 3]]))
    many = torch.arange(2 * 3 * 5 * 5, dtype=D).reshape(2, 3, 5, 5)
    assert torch.equal(xattr.query_row(many, torch.tensor([1, 4])), torch.stack([many[0, :, 1], many[1, :, 4]]))
    rel = torch.arange(2 * 7, dtype=D).reshape(2, 7)  # 1 [CLS] + a 2x3 grid
    grid = xattr.tokens_to_image(rel, (2, 3))
    for b in range(2):
        for r in range(2):
            for c in range(3):
                assert grid[b, r, c] == rel[b, 1 + r * 3 + c]
    up = xattr.tokens_to_image(rel, (2, 3), size=(4, 6), mode="nearest")
    assert up.shape == (2, 4, 6) and torch.equal(up[:, ::2, ::2], grid)
    assert xattr.tokens_to_image(rel[:, 1:], (3, 2), prefix=0).shape == (2, 3, 2)


# -- errors ------------------------------------------------------------------------------------
def test_errors_are_clear():
    model = tiny(9)
    x = inputs(9, 1)
    mlp = nn.Sequential(nn.Linear(3, 2)).to(D)
    with pytest.raises(ValueError, match="no attention probabilities were seen.*attn_implementation"):
        xattr.attention_rollout(mlp)(x)
    with pytest.raises(ValueError, match="no module named 'blocks.7'"):
        xattr.attention_weights(model, layers=["blocks.7"])  # when built
    with pytest.raises(ValueError, match=r"\['head'\] made no attention call"):
        xattr.attention_weights(model, layers=["blocks.0", "head"])(x)
    with pytest.raises(ValueError, match="no module of class"):
        xattr.attention_rollout(model, layers=nn.MultiheadAttention)
    with pytest.raises(ValueError, match="not a module of the model"):
        xattr.attention_gradient_rollout(xattr.target(model, 0), layers=[nn.Linear(2, 2)])
    with pytest.raises(TypeError, match="nn.Module objects or names"):
        xattr.attention_weights(model, layers=[3])
    for kw, match in [(dict(head_fusion="sum"), "head_fusion"), (dict(residual=1.5), "residual"),
                      (dict(residual=True), "residual"), (dict(discard_ratio=1.0), "discard_ratio")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            xattr.attention_rollout(model, **kw)
    with pytest.raises(ValueError, match="head_fusion"):
        xattr.attention_flow(model, head_fusion="sum")
    with pytest.raises(ValueError, match="query must be None or an int"):
        xattr.attention_flow(model, query=[0])
    with pytest.raises(ValueError, match="query must lie"):
        xattr.attention_flow(model, query=5)(x)
    # cross-attention is not square: rollout refuses, the weights are read
    q, kv = inputs(1, 1, 2, 4), inputs(2, 1, 3, 4)

    def cross(q, kv):
        return F.softmax(q[:, None] @ kv[:, None].transpose(-2, -1), dim=-1) @ kv[:, None]

    assert xattr.attention_weights(cross)(q, kv)[0].shape == (1, 1, 2, 3)
    with pytest.raises(ValueError, match="self-attention"):
        xattr.attention_rollout(cross)(q, kv)
    # attention dropout in train mode: refused with the fix
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(4, 2, dropout=0.5, batch_first=True).to(D)
    with pytest.raises(NotImplementedError, match="eval"):
        xattr.attention_weights(lambda x: mha(x, x, x, need_weights=False)[0])(kv)
    with pytest.raises(ValueError, match="model.eval"):
        xattr.attention_weights(lambda x: F.scaled_dot_product_attention(x[:, None], x[:, None], x[:, None],
                                                                          dropout_p=0.1))(kv)  # fmt: skip
    with pytest.raises(ValueError, match="query"):
        xattr.query_row(torch.zeros(2, 3, 3), 3)
    with pytest.raises(ValueError, match="one integer index per example"):
        xattr.query_row(torch.zeros(2, 3, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="2x2 grid is 5 tokens"):
        xattr.tokens_to_image(torch.zeros(1, 6), (2, 2))


def test_layers_keep_a_spatial_softmax_out():
    # a 4-D softmax that is no attention: seen without layers, left out with them
    class WithSpatial(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = tiny(10)

        def forward(self, x):
            gate = F.softmax(x[:, None, :, :, None].expand(-1, 1, -1, -1, 2).sum(-1), dim=-1)  # (B, 1, T, d_in)
            return self.body(x * gate[:, 0])

    model = WithSpatial().eval()
    x = inputs(10, 2)
    assert len(xattr.attention_weights(model)(x)) == 3
    chosen = xattr.attention_weights(model, layers=Attention)(x)
    assert len(chosen) == 2 and all(a.shape == (2, 2, 5, 5) for a in chosen)
    r = xattr.attention_rollout(model, layers=Attention)(x)
    torch.testing.assert_close(r, rollout_reference(chosen), atol=1e-13, rtol=0)
    # names are resolved through xattr.target; the gradient method takes the same layers
    f = xattr.target(model, 2)
    named = xattr.attention_gradient_rollout(f, layers=["body.blocks.0.attn", "body.blocks.1.attn"])(x)
    torch.testing.assert_close(named, xattr.attention_gradient_rollout(f, layers=Attention)(x), atol=0, rtol=0)


def test_inference_mode_inputs_give_the_same_maps():
    model = tiny(12)
    x = inputs(12, 2)
    want = (xattr.attention_rollout(model)(x), xattr.attention_gradient_rollout(xattr.target(model, 1))(x))
    with torch.inference_mode():
        x_inf = x.clone()
        got = (xattr.attention_rollout(model)(x_inf), xattr.attention_gradient_rollout(xattr.target(model, 1))(x_inf))
    for g, w in zip(got, want):
        assert not g.is_inference()
        torch.testing.assert_close(g, w, atol=1e-14, rtol=0)
