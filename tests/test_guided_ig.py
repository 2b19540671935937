"""Guided integrated gradients against a per-example loop that follows the authors' algorithm
step by step, completeness, the straight-line limits, batch and chunk invariance, errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr

D = torch.float64


def mlp(seed: int, d_in: int = 6, hidden: int = 8, act=nn.Tanh) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), act(), nn.Linear(hidden, 1)).to(D).eval()


def inputs(seed: int, shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def reference(f1, x, b, n_steps, fraction, max_dist):
    """One example at a time, in numpy, as Algorithm 1 of Kapishnikov et al. 2021 runs in the
    authors' code: explicit loop over steps, inner loop until the step's L1 target is met."""
    out = []
    for xi, bi in zip(x, b):
        x_in, x_b = xi.numpy().ravel(), bi.numpy().ravel()

        def grad_at(point):
            p = torch.tensor(point.reshape(xi.shape), dtype=D, requires_grad=True)
            return torch.autograd.grad(f1(p), p)[0].numpy().ravel()

        attr = np.zeros_like(x_in)
        l1_total = np.abs(x_in - x_b).sum()
        if l1_total == 0:
            out.append(torch.tensor(attr.reshape(xi.shape)))
            continue
        p = x_b.copy()
        for step in range(n_steps):
            g_actual = grad_at(p)
            g = g_actual.copy()
            alpha = (step + 1) / n_steps
            a_min, a_max = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
            x_min, x_max = x_b + (x_in - x_b) * a_min, x_b + (x_in - x_b) * a_max
            l1_target = l1_total * (1 - (step + 1) / n_steps)
            gamma = math.inf
            while gamma > 1.0:
                p_old = p.copy()
                with np.errstate(divide="ignore", invalid="ignore"):
                    p_alpha = np.where(x_in != x_b, (p - x_b) / (x_in - x_b), np.nan)
                p_alpha[np.isnan(p_alpha)] = a_max
                for j in range(len(p)):
                    if p_alpha[j] < a_min:
                        p[j] = x_min[j]
                l1_current = np.abs(p - x_in).sum()
                if math.isclose(l1_target, l1_current, rel_tol=1e-9, abs_tol=1e-9):
                    attr += (p - p_old) * g_actual
                    break
                g[p == x_max] = np.inf
                threshold = np.quantile(np.abs(g), fraction, method="lower")
                s = (np.abs(g) <= threshold) & (g != np.inf)
                l1_s = (np.abs(p - x_max) * s).sum()
                gamma = (l1_current - l1_target) / l1_s if l1_s > 0 else math.inf
                if gamma > 1.0:
                    p[s] = x_max[s]
                else:
                    assert gamma > 0
                    p[s] = (p + (x_max - p) * gamma)[s]
                attr += (p - p_old) * g_actual
        np.testing.assert_allclose(p, x_in, atol=1e-12)  # the path ends at the input
        out.append(torch.tensor(attr.reshape(xi.shape)))
    return torch.stack(out)


@pytest.mark.parametrize(
    "seed, fraction, max_dist, n_steps",
    [(0, 0.25, 0.02, 20), (1, 0.1, 0.1, 15), (2, 0.5, 1.0, 12), (3, 0.25, 0.0, 10)],
)
def test_matches_the_per_example_loop_of_the_algorithm(seed, fraction, max_dist, n_steps):
    model = mlp(seed, d_in=10)
    x, b = inputs(seed, (3, 10)), inputs(seed + 20, (3, 10))
    x[1, 4] = b[1, 4]  # a feature with nothing to move
    attr = xattr.guided_integrated_gradients(
        xattr.target(model, 0), baselines=b, n_steps=n_steps, fraction=fraction, max_dist=max_dist
    )(x)
    ref = reference(lambda v: model(v[None])[0, 0], x, b, n_steps, fraction, max_dist)
    torch.testing.assert_close(attr, ref, atol=1e-11, rtol=1e-9)
    assert attr[1, 4] == 0


def test_image_shaped_inputs_match_the_loop():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Softplus(), nn.Flatten(), nn.Linear(12, 1)).to(D).eval()
    x = inputs(5, (2, 2, 4, 4))
    attr = xattr.guided_integrated_gradients(xattr.target(model, 0), n_steps=10, fraction=0.3)(x)
    ref = reference(lambda v: model(v[None])[0, 0], x, torch.zeros_like(x), 10, 0.3, 0.02)
    assert attr.shape == x.shape
    torch.testing.assert_close(attr, ref, atol=1e-11, rtol=1e-9)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 3),
    fraction=st.floats(0.05, 1.0),
    max_dist=st.floats(0.0, 1.0),
    act=st.sampled_from([nn.Tanh, nn.Softplus, nn.GELU]),
)
def test_completeness_on_random_smooth_mlps(seed, batch, fraction, max_dist, act):
    model = mlp(seed, act=act)
    f = xattr.target(model, 0)
    x, b = inputs(seed, (batch, 6)), inputs(seed + 1, (batch, 6))
    n = 400
    attr = xattr.guided_integrated_gradients(f, baselines=b, n_steps=n, fraction=fraction, max_dist=max_dist)(x)
    with torch.no_grad():
        change = f(x) - f(b)
    # a left Riemann sum along a path of length |x - b|_1: error O(1/n) times the gradient's size
    scale = (x - b).abs().sum(1) * model[0].weight.abs().sum(0).max() * model[2].weight.abs().max()
    assert ((attr.sum(1) - change).abs() <= 2 * scale / n).all()
    # and the error shrinks like 1/n: four times the steps, about a quarter of the gap
    coarse = xattr.guided_integrated_gradients(f, baselines=b, n_steps=n // 4, fraction=fraction, max_dist=max_dist)(x)
    gap, coarse_gap = (attr.sum(1) - change).abs(), (coarse.sum(1) - change).abs()
    assert (gap <= 0.5 * coarse_gap + 1e-9).all()


@pytest.mark.parametrize("fraction, max_dist", [(0.25, 0.0), (1.0, 0.02), (1.0, 1.0), (0.01, 0.0)])
def test_straight_line_limits_give_left_riemann_integrated_gradients(fraction, max_dist):
    model = mlp(7, act=nn.Softplus)
    f = xattr.target(model, 0)
    x, b = inputs(7, (3, 6)), inputs(8, (3, 6))
    attr = xattr.guided_integrated_gradients(f, baselines=b, n_steps=16, fraction=fraction, max_dist=max_dist)(x)
    ig = xattr.integrated_gradients(f, baselines=b, n_steps=16, method="riemann_left")(x)
    torch.testing.assert_close(attr, ig, atol=1e-12, rtol=1e-10)


def test_free_path_moves_the_flat_feature_first():
    # f = x0^2 x1 from 0 to (x0, x1): at the start df/dx1 = x0^2 is the smaller gradient, so the
    # free path (max_dist = 1) takes x1 to its target first, while f stays 0; x0 then carries all
    # of f(x). The straight line shares it 2/3 : 1/3 (IG of x0^2 x1).
    def f(x):
        return x[:, 0] ** 2 * x[:, 1]

    x = torch.tensor([[1.0, 2.0], [-1.0, 3.0]], dtype=D)
    guided = xattr.guided_integrated_gradients(f, n_steps=200, fraction=0.25, max_dist=1.0)(x)
    torch.testing.assert_close(guided, torch.stack([f(x), torch.zeros(2, dtype=D)], 1), atol=0.07, rtol=0)
    assert (guided[:, 1].abs() < 1e-3).all()
    ig = xattr.integrated_gradients(f, n_steps=16)(x)
    torch.testing.assert_close(ig, torch.stack([2 * f(x) / 3, f(x) / 3], 1), atol=1e-10, rtol=0)
    # anchored to the straight line (max_dist = 0.02) it stays close to IG instead
    anchored = xattr.guided_integrated_gradients(f, n_steps=200, fraction=0.25, max_dist=0.02)(x)
    assert ((anchored - ig).abs() < 0.1).all()


def test_linear_model_is_exact_on_any_path():
    w = inputs(10, (6,))

    def f(x):
        return x @ w

    x, b = inputs(11, (3, 6)), inputs(12, (3, 6))
    attr = xattr.guided_integrated_gradients(f, baselines=b, n_steps=7, fraction=0.2, max_dist=0.3)(x)
    torch.testing.assert_close(attr, w * (x - b), atol=1e-12, rtol=1e-12)


def test_batch_equals_per_example_loop():
    model = mlp(13)
    f = xattr.target(model, 0)
    x, b = inputs(13, (4, 6)), inputs(14, (4, 6))
    x[2] = b[2]  # an input equal to its baseline: zero attributions, the rest unaffected
    gig = xattr.guided_integrated_gradients(f, n_steps=24, fraction=0.3, max_dist=0.1)
    whole = gig(x, baselines=b)
    assert (whole[2] == 0).all()
    for i in range(4):
        torch.testing.assert_close(gig(x[i : i + 1], baselines=b[i : i + 1])[0], whole[i], atol=1e-13, rtol=1e-11)


def test_per_example_targets_follow_the_batch_with_any_chunk_size():
    # one class per example (a LongTensor target): each step is one pass of the whole batch,
    # which chunk_size never splits, so the targets stay aligned with their rows
    torch.manual_seed(18)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(D).eval()
    x, y = inputs(18, (4, 5)), torch.tensor([0, 2, 1, 0])
    whole = xattr.guided_integrated_gradients(xattr.target(model, y), n_steps=12)(x)
    chunked = xattr.guided_integrated_gradients(xattr.target(model, y), n_steps=12, chunk_size=3)(x)
    torch.testing.assert_close(chunked, whole, atol=1e-13, rtol=1e-11)
    for i in range(4):
        ref = reference(lambda v, t=int(y[i]): model(v[None])[0, t], x[i : i + 1], torch.zeros_like(x[i : i + 1]), 12, 0.25, 0.02)
        torch.testing.assert_close(whole[i], ref[0], atol=1e-11, rtol=1e-9)


def test_two_attributed_arguments_form_one_feature_vector_with_a_pass_through():
    torch.manual_seed(15)
    lin = nn.Linear(7, 1).to(D)

    def f(a, c, scale):
        return torch.tanh(lin(torch.cat([a, c.flatten(1)], 1)))[:, 0] * scale

    a, c, scale = inputs(15, (3, 3)), inputs(16, (3, 2, 2)), torch.tensor([1.0, 2.0, -1.0], dtype=D)
    gig = xattr.guided_integrated_gradients(f, argnums=(0, 1), n_steps=12, fraction=0.3)
    ga, gc = gig(a, c, scale)
    assert ga.shape == a.shape and gc.shape == c.shape

    def joint(v):  # the same model on the concatenated features of one example
        i = joint.row
        return torch.tanh(lin(v[None]))[0, 0] * scale[i]

    refs = []
    for i in range(3):
        joint.row = i
        v = torch.cat([a[i], c[i].flatten()])[None]
        refs.append(reference(joint, v, torch.zeros_like(v), 12, 0.3, 0.02)[0])
    ref = torch.stack(refs)
    torch.testing.assert_close(torch.cat([ga, gc.flatten(1)], 1), ref, atol=1e-11, rtol=1e-9)


def test_float32_inputs_give_float32_results_and_inputs_are_untouched():
    model = mlp(17).float()
    x = inputs(17, (2, 6)).float()
    before = x.clone()
    attr = xattr.guided_integrated_gradients(xattr.target(model, 0), n_steps=20)(x)
    assert attr.dtype == torch.float32 and torch.isfinite(attr).all()
    assert torch.equal(x, before)
    with torch.no_grad():
        change = model(x)[:, 0] - model(torch.zeros_like(x))[:, 0]
    torch.testing.assert_close(attr.sum(1), change, atol=0.05, rtol=0.05)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fraction=0), "fraction"),
        (dict(fraction=1.5), "fraction"),
        (dict(fraction=math.nan), "fraction"),
        (dict(fraction=True), "fraction"),
        (dict(max_dist=-0.1), "max_dist"),
        (dict(max_dist=1.01), "max_dist"),
        (dict(max_dist="0.1"), "max_dist"),
        (dict(n_steps=0), "n_steps"),
        (dict(n_steps=2.0), "n_steps"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_bad_arguments_are_refused_when_the_method_is_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        xattr.guided_integrated_gradients(lambda x: x.sum(1), **kwargs)


def classes(seed: int, d_in: int = 6, n_out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 8), nn.Tanh(), nn.Linear(8, n_out)).to(D).eval()


@pytest.mark.parametrize("form", ["list", "per_example"])
def test_many_outputs_match_the_loop_for_each_example_and_output(form):
    # one path per example and output: every (b, k) against the algorithm's loop for that output
    model = classes(11)
    x, b = inputs(11, (3, 6)), inputs(12, (3, 6))
    idx = torch.tensor([[2, 0], [1, 1], [0, 2]]) if form == "per_example" else torch.tensor([[2, 0]] * 3)
    many = xattr.outputs(idx if form == "per_example" else [2, 0])
    attr = xattr.guided_integrated_gradients(
        xattr.target(model, many), baselines=b, n_steps=12, fraction=0.3, max_dist=0.1
    )(x)
    assert attr.shape == (3, 2, 6)
    for i in range(3):
        for j in range(2):
            f1 = lambda v, k=int(idx[i, j]): model(v[None])[0, k]  # noqa: E731
            ref = reference(f1, x[i : i + 1], b[i : i + 1], 12, 0.3, 0.1)
            torch.testing.assert_close(attr[i, j], ref[0], atol=1e-11, rtol=1e-9)


@settings(max_examples=5, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), batch=st.integers(0, 3), ks=st.lists(st.integers(-3, 2), min_size=1, max_size=3))
def test_many_outputs_equal_single_output_runs(seed, batch, ks):
    # the K axis is a loop over single targets, and each output's attributions add up to its change
    model = classes(seed)
    x = inputs(seed, (batch, 6))
    gig = lambda t: xattr.guided_integrated_gradients(xattr.target(model, t), n_steps=30)  # noqa: E731
    attr = gig(xattr.outputs(ks))(x)
    assert attr.shape == (batch, len(ks), 6)
    for j, k in enumerate(ks):
        torch.testing.assert_close(attr[:, j], gig(k)(x), atol=1e-12, rtol=1e-10)
    with torch.no_grad():
        change = model(x)[:, ks] - model(torch.zeros_like(x))[:, ks]
    torch.testing.assert_close(attr.sum(-1), change, atol=0.05, rtol=0.05)


def test_integer_inputs_and_nonfinite_gradients_are_refused():
    with pytest.raises(TypeError, match="guided_integrated_gradients"):
        xattr.guided_integrated_gradients(lambda x: x.sum(1).double())(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(FloatingPointError, match="not finite"):
        xattr.guided_integrated_gradients(lambda x: x.abs().sqrt().sum(1), n_steps=4)(torch.ones(2, 4, dtype=D))
