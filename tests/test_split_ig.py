"""Split integrated gradients against a slow loop reference, completeness of each part,
saturation, the flat case and argument errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr._src.split_ig import split_point

D = torch.float64


def mlp(seed: int, d_in: int = 5, hidden: int = 7, act=nn.Tanh) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), act(), nn.Linear(hidden, 1)).to(D).eval()


def inputs(seed: int, shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def reference(f1, x, b, fraction, n_steps, n_search):
    """One example at a time: alpha* by a brute-force scan of the grid k/(n_search-1), then
    riemann_middle sums of torch.autograd.grad over [0, alpha*] and [alpha*, 1]."""
    lefts, rights, alphas = [], [], []
    for xi, bi in zip(x, b):
        with torch.no_grad():
            fb, fx = f1(bi).item(), f1(xi).item()
            grid = [k / (n_search - 1) for k in range(n_search)]
            prog = [(f1(bi + a * (xi - bi)).item() - fb) / (fx - fb) for a in grid]
        for k in range(1, n_search):
            if prog[k] >= fraction:
                break
        alpha = grid[k - 1] + (fraction - prog[k - 1]) / (prog[k] - prog[k - 1]) * (grid[k] - grid[k - 1])
        parts = []
        for lo, hi in ((0.0, alpha), (alpha, 1.0)):
            total = torch.zeros_like(xi)
            for i in range(n_steps):
                a = lo + (i + 0.5) / n_steps * (hi - lo)
                point = (bi + a * (xi - bi)).requires_grad_(True)
                (g,) = torch.autograd.grad(f1(point), point)
                total += g / n_steps
            parts.append(total * (hi - lo) * (xi - bi))
        lefts.append(parts[0])
        rights.append(parts[1])
        alphas.append(alpha)
    return torch.stack(lefts), torch.stack(rights), torch.tensor(alphas, dtype=D)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_slow_loop_reference(seed):
    model = mlp(seed)
    f = xattr.target(model, 0)
    x, b = inputs(seed, (3, 5)), inputs(seed + 10, (3, 5))
    split = xattr.split_integrated_gradients(
        f, baselines=b, fraction=0.7, n_steps=12, method="riemann_middle", n_search=9, return_split=True
    )
    left, right, alpha = split(x)
    ref_left, ref_right, ref_alpha = reference(lambda v: model(v[None])[0, 0], x, b, 0.7, 12, 9)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-12, rtol=0)
    torch.testing.assert_close(left, ref_left, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(right, ref_right, atol=1e-10, rtol=1e-9)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 3),
    fraction=st.floats(0.05, 0.95),
    act=st.sampled_from([nn.Tanh, nn.Softplus, nn.GELU]),
)
def test_each_part_is_complete_on_random_mlps(seed, batch, fraction, act):
    model = mlp(seed, act=act)
    f = xattr.target(model, 0)
    x, b = inputs(seed, (batch, 5)), inputs(seed + 1, (batch, 5))
    left, right, alpha = xattr.split_integrated_gradients(
        f, baselines=b, fraction=fraction, n_steps=40, return_split=True
    )(x)
    assert alpha.shape == (batch,) and ((alpha > 0) & (alpha <= 1)).all()
    with torch.no_grad():
        fb, fx, fa = f(b), f(x), f(b + alpha[:, None] * (x - b))
    torch.testing.assert_close(left.sum(1), fa - fb, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(right.sum(1), fx - fa, atol=1e-7, rtol=1e-6)


def test_split_point_reaches_the_fraction_on_the_search_grid():
    # outputs along the grid 0, .25, .5, .75, 1 for two examples: one rising, one falling
    alphas = torch.linspace(0, 1, 5, dtype=D)
    outputs = torch.tensor([[0.0, 4.0], [0.2, 3.0], [0.9, 2.9], [0.95, 0.5], [1.0, 0.0]], dtype=D)
    alpha = split_point(alphas, outputs, 0.5)
    # rising: progress 0.2 at .25, 0.9 at .5 -> 0.25 + (0.3 / 0.7) * 0.25
    # falling: progress 0.25 at .25, 0.275 at .5, 0.875 at .75 -> 0.5 + (0.225 / 0.6) * 0.25
    torch.testing.assert_close(alpha, torch.tensor([0.25 + 0.3 / 0.7 * 0.25, 0.5 + 0.225 / 0.6 * 0.25], dtype=D))
    # a non-monotone path: the first crossing counts, not a later one
    bumpy = torch.tensor([[0.0], [0.8], [0.1], [0.2], [1.0]], dtype=D)
    torch.testing.assert_close(split_point(alphas, bumpy, 0.5), torch.tensor([0.25 * 0.5 / 0.8], dtype=D))


def test_left_plus_right_is_integrated_gradients():
    model = mlp(3, act=nn.Softplus)
    f = xattr.target(model, 0)
    x = inputs(3, (4, 5))
    left, right = xattr.split_integrated_gradients(f, n_steps=48)(x)
    ig = xattr.integrated_gradients(f, n_steps=48)(x)
    torch.testing.assert_close(left + right, ig, atol=1e-8, rtol=1e-7)
    assert (left - ig).abs().max() > 1e-3  # the split is not trivial: right carries something


def test_batch_equals_per_example_loop_with_per_example_baselines():
    model = mlp(4)
    f = xattr.target(model, 0)
    x, b = inputs(4, (4, 5)), inputs(5, (4, 5))
    split = xattr.split_integrated_gradients(f, n_steps=16, fraction=0.6, return_split=True)
    left, right, alpha = split(x, baselines=b)
    for i in range(4):
        li, ri, ai = split(x[i : i + 1], baselines=b[i : i + 1])
        torch.testing.assert_close(li[0], left[i], atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(ri[0], right[i], atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(ai[0], alpha[i], atol=1e-14, rtol=0)
    assert len(set(alpha.tolist())) == 4  # one split per example, not one for the batch


def test_chunk_size_does_not_change_the_numbers():
    f = xattr.target(mlp(6), 0)
    x = inputs(6, (3, 5))
    whole = xattr.split_integrated_gradients(f, n_steps=10, return_split=True)(x)
    chunked = xattr.split_integrated_gradients(f, n_steps=10, chunk_size=7, return_split=True)(x)
    for a, c in zip(whole, chunked):
        torch.testing.assert_close(c, a, atol=1e-12, rtol=1e-10)


def test_saturating_model_puts_little_attribution_after_the_split():
    gain = 20.0
    w = torch.tensor([1.0, 0.5, -0.25, 2.0], dtype=D)

    def f(x):
        return torch.sigmoid(gain * (x @ w))

    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.5, 2.0, 0.0, 0.3]], dtype=D)
    q = 0.9
    left, right, alpha = xattr.split_integrated_gradients(
        f, fraction=q, n_steps=64, n_search=401, return_split=True
    )(x)
    # closed form: sigmoid(gain a s) - 1/2 = q (sigmoid(gain s) - 1/2), s = w.x
    s = x @ w
    target = 0.5 + q * (torch.sigmoid(gain * s) - 0.5)
    exact = torch.log(target / (1 - target)) / (gain * s)
    torch.testing.assert_close(alpha, exact, atol=2e-3, rtol=0)
    assert (alpha < 0.1).all()  # the output saturates early on the path
    # most of the path is saturated, yet it carries only a small share of the attribution
    assert (right.abs().sum(1) < 0.15 * left.abs().sum(1)).all()
    # each part complete; the left one holds about the fraction q of the change
    torch.testing.assert_close(left.sum(1), f(alpha[:, None] * x) - 0.5, atol=1e-7, rtol=0)
    torch.testing.assert_close(right.sum(1), f(x) - f(alpha[:, None] * x), atol=1e-7, rtol=0)
    torch.testing.assert_close(left.sum(1), q * (f(x) - 0.5), atol=2e-4, rtol=0)


def test_flat_output_gives_alpha_one_and_zero_right_part():
    def f(x):  # f(0) = 0 = f(x) for these x, but the features move the output in between
        return x[:, 0] ** 2 - x[:, 1] ** 2 + x[:, 2]

    x = torch.tensor([[1.0, 1.0, 0.0], [2.0, 1.0, -3.0]], dtype=D)
    assert torch.allclose(f(x), f(torch.zeros_like(x)))
    left, right, alpha = xattr.split_integrated_gradients(f, n_steps=32, return_split=True)(x)
    assert alpha.tolist() == [1.0, 1.0]
    assert (right == 0).all()
    torch.testing.assert_close(left, xattr.integrated_gradients(f, n_steps=32)(x), atol=1e-12, rtol=1e-10)
    assert left.abs().max() > 0.1  # the features still got attribution, only their sum is 0

    # the input equal to its baseline: nothing changes at all
    same = xattr.split_integrated_gradients(f, baselines=x, return_split=True)(x)
    assert same[2].tolist() == [1.0, 1.0] and (same[0] == 0).all() and (same[1] == 0).all()


def test_two_attributed_arguments_and_a_pass_through():
    torch.manual_seed(7)
    lin = nn.Linear(6, 1).to(D)

    def f(a, b, scale):
        return torch.tanh(lin(torch.cat([a, b], 1)))[:, 0] * scale

    a, b, scale = inputs(7, (2, 3)), inputs(8, (2, 3)), torch.tensor([1.0, 3.0], dtype=D)
    (la, lb), (ra, rb), alpha = xattr.split_integrated_gradients(
        f, argnums=(0, 1), n_steps=40, return_split=True
    )(a, b, scale)
    assert la.shape == a.shape and rb.shape == b.shape
    with torch.no_grad():
        f0 = f(torch.zeros_like(a), torch.zeros_like(b), scale)
        fa = f(alpha[:, None] * a, alpha[:, None] * b, scale)
        fx = f(a, b, scale)
    torch.testing.assert_close(la.sum(1) + lb.sum(1), fa - f0, atol=1e-8, rtol=1e-7)
    torch.testing.assert_close(ra.sum(1) + rb.sum(1), fx - fa, atol=1e-8, rtol=1e-7)


def test_float32_inputs_give_float32_results():
    model = mlp(9).float()
    x = inputs(9, (2, 5)).float()
    left, right, alpha = xattr.split_integrated_gradients(xattr.target(model, 0), return_split=True)(x)
    assert left.dtype == right.dtype == alpha.dtype == torch.float32
    assert torch.isfinite(left).all() and torch.isfinite(right).all()


@pytest.mark.parametrize("fraction", [0, 0.0, 1, 1.0, -0.5, 1.5, math.nan, True, "0.5", None])
def test_fraction_outside_the_open_unit_interval_is_refused(fraction):
    with pytest.raises(ValueError, match="fraction"):
        xattr.split_integrated_gradients(lambda x: x.sum(1), fraction=fraction)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_search=1), "n_search"),
        (dict(n_search=2.5), "n_search"),
        (dict(n_steps=0), "n_steps"),
        (dict(method="simpson"), "unknown method"),
    ],
)
def test_bad_arguments_are_refused_when_the_method_is_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        xattr.split_integrated_gradients(lambda x: x.sum(1), **kwargs)


def classes(seed: int, d_in: int = 5, n_out: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 7), nn.Tanh(), nn.Linear(7, n_out)).to(D).eval()


@pytest.mark.parametrize("form", ["list", "per_example"])
def test_many_outputs_match_the_slow_loop_for_each_example_and_output(form):
    # one alpha* per example and output: every (b, k) against the loop reference of that output
    model = classes(3)
    x, b = inputs(3, (3, 5)), inputs(13, (3, 5))
    idx = torch.tensor([[2, 0, 3], [1, 1, 0], [3, 2, 2]]) if form == "per_example" else torch.tensor([[2, 0, 3]] * 3)
    many = xattr.outputs(idx if form == "per_example" else [2, 0, 3])
    split = xattr.split_integrated_gradients(
        xattr.target(model, many), baselines=b, fraction=0.6, n_steps=10, method="riemann_middle", n_search=7,
        return_split=True,
    )  # fmt: skip
    left, right, alpha = split(x)
    assert left.shape == right.shape == (3, 3, 5) and alpha.shape == (3, 3)
    for i in range(3):
        for j in range(3):
            f1 = lambda v, k=int(idx[i, j]): model(v[None])[0, k]  # noqa: E731
            ref_left, ref_right, ref_alpha = reference(f1, x[i : i + 1], b[i : i + 1], 0.6, 10, 7)
            torch.testing.assert_close(alpha[i, j], ref_alpha[0], atol=1e-12, rtol=0)
            torch.testing.assert_close(left[i, j], ref_left[0], atol=1e-10, rtol=1e-9)
            torch.testing.assert_close(right[i, j], ref_right[0], atol=1e-10, rtol=1e-9)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), batch=st.integers(0, 3), ks=st.lists(st.integers(-4, 3), min_size=1, max_size=3))
def test_many_outputs_equal_single_output_runs(seed, batch, ks):
    # the K axis is a loop over single targets; every output's parts add up to its own change
    model = classes(seed)
    x = inputs(seed, (batch, 5))
    split = lambda t: xattr.split_integrated_gradients(xattr.target(model, t), n_steps=6, return_split=True)  # noqa: E731
    left, right, alpha = split(xattr.outputs(ks))(x)
    assert left.shape == (batch, len(ks), 5) and alpha.shape == (batch, len(ks))
    for j, k in enumerate(ks):
        one = split(k)(x)
        for got, want in zip((left[:, j], right[:, j], alpha[:, j]), one):
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    with torch.no_grad():
        change = model(x)[:, ks] - model(torch.zeros_like(x))[:, ks]
    torch.testing.assert_close((left + right).sum(-1), change, atol=1e-3, rtol=1e-3)


def test_many_outputs_and_pass_through_arguments_keep_their_rows():
    # a pass-through tensor with the batch's rows follows each copy of the batch
    model = classes(4)
    x, scale = inputs(4, (3, 5)), 1.0 + inputs(5, (3, 1)).abs()
    split = lambda t: xattr.split_integrated_gradients(  # noqa: E731
        xattr.target(lambda v, s: model(v * s), t), n_steps=6, return_split=True
    )
    left, right, alpha = split(xattr.outputs([1, 3]))(x, scale)
    for j, k in enumerate([1, 3]):
        one_left, one_right, one_alpha = split(k)(x, scale)
        torch.testing.assert_close(left[:, j], one_left, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(right[:, j], one_right, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(alpha[:, j], one_alpha, atol=1e-12, rtol=1e-10)


def test_integer_inputs_are_refused():
    with pytest.raises(TypeError, match="split_integrated_gradients"):
        xattr.split_integrated_gradients(lambda x: x.sum(1).double())(torch.ones(2, 4, dtype=torch.long))


def test_without_return_split_two_results():
    out = xattr.split_integrated_gradients(lambda x: torch.tanh(x).sum(1), n_steps=8)(inputs(1, (2, 3)))
    assert isinstance(out, tuple) and len(out) == 2 and out[0].shape == (2, 3)
