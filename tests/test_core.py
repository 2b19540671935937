"""The primitives: target forms, K outputs in one pass, path_integral, smooth, expectation."""

import numpy as np
import pytest
import torch
from torch import nn

import xattr
from xattr._src import tree as T


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 6)).double().eval()


X = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def _loop_grad(model, x, pick):
    """Reference: autograd on one example at a time."""
    rows = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(pick(model(xi), i), xi)
        rows.append(g)
    return torch.cat(rows)


@pytest.mark.parametrize(
    "t, pick",
    [
        (2, lambda out, i: out[0, 2]),
        (-1, lambda out, i: out[0, -1]),
        ((4,), lambda out, i: out[0, 4]),
        (torch.tensor([0, 1, 2, 3, 4]), lambda out, i: out[0, i]),
        (torch.tensor([0, -1, 2, -3, 4]), lambda out, i: out[0, [0, -1, 2, -3, 4][i]]),  # negative: from the end, like an int
        (torch.tensor(5), lambda out, i: out[0, 5]),
        (lambda out: out[:, 1] * out[:, 2], lambda out, i: out[0, 1] * out[0, 2]),
    ],
)
def test_target_forms_match_per_example_autograd(t, pick):
    model = _model()
    got = xattr.grad(xattr.target(model, t))(X)
    torch.testing.assert_close(got, _loop_grad(model, X, pick))


def test_tuple_target_on_multi_dim_output():
    torch.manual_seed(0)
    lin = nn.Linear(4, 6).double()
    f = lambda x: lin(x).reshape(-1, 2, 3)  # noqa: E731
    got = xattr.grad(xattr.target(f, (1, 2)))(X)
    torch.testing.assert_close(got, lin.weight[5].expand(5, 4))


@pytest.mark.parametrize("idx", [None, [0, 3, 5], range(6), torch.tensor([5, 0])])
def test_outputs_adds_k_axis_and_matches_single_targets(idx):
    model = _model()
    got = xattr.grad(xattr.target(model, xattr.outputs(idx)))(X)
    ks = list(range(6)) if idx is None else [int(k) for k in idx]
    assert got.shape == (5, len(ks), 4)
    for j, k in enumerate(ks):
        torch.testing.assert_close(got[:, j], _loop_grad(model, X, lambda out, i: out[0, k]))


def test_outputs_per_example_matrix():
    model = _model()
    idx = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]])
    got = xattr.grad(xattr.target(model, xattr.outputs(idx)))(X)
    for j in range(2):
        torch.testing.assert_close(got[:, j], _loop_grad(model, X, lambda out, i: out[0, idx[i, j]]))


def test_outputs_vmapped_in_chunks_equals_unchunked():
    f = xattr.target(_model(), xattr.outputs(None))
    torch.testing.assert_close(xattr.grad(f, chunk_size=10)(X), xattr.grad(f)(X))


def test_value_and_grad_returns_selected_outputs():
    model = _model()
    out, g = xattr.value_and_grad(xattr.target(model, 3))(X)
    torch.testing.assert_close(out, model(X)[:, 3])
    assert g.shape == X.shape


def test_aggregate_scalar_output():
    w = torch.arange(4.0, dtype=torch.float64)
    g = xattr.grad(lambda x: (x * w).sum())(X)
    torch.testing.assert_close(g, w.expand(5, 4))


@pytest.mark.parametrize("method", ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"])
def test_quadrature_integrates_polynomials(method):
    a, w = xattr.quadrature(method, 20)
    assert len(a) == len(w) == 20
    assert np.isclose(w.sum(), 1.0)  # every rule integrates constants exactly (trapezoid included)
    exact_deg = 39 if method == "gausslegendre" else 1
    for deg in range(0, min(exact_deg, 6) + 1):
        if method in ("riemann_left", "riemann_right") and deg >= 1:
            assert abs((w * a**deg).sum() - 1 / (deg + 1)) < 0.06
        else:
            assert abs((w * a**deg).sum() - 1 / (deg + 1)) < (1e-12 if exact_deg >= deg else 1e-2)


def test_path_integral_profile_matches_loop():
    model = _model()
    f = xattr.target(model, 2)
    b = torch.full_like(X, 0.5)
    integral, prof = xattr.path_integral(f, baselines=b, n_steps=7, method="riemann_middle", return_profile=True)(X)
    alphas, weights = xattr.quadrature("riemann_middle", 7)
    torch.testing.assert_close(prof.alphas, torch.as_tensor(alphas))
    torch.testing.assert_close(prof.weights, torch.as_tensor(weights))
    for s, a in enumerate(alphas):
        p = b + a * (X - b)
        torch.testing.assert_close(prof.outputs[s], model(p)[:, 2].detach())
        torch.testing.assert_close(prof.grads[s], _loop_grad(model, p, lambda out, i: out[0, 2]))
    expect = sum(w * g for w, g in zip(weights, prof.grads)) * (X - b)
    torch.testing.assert_close(integral, expect)
    torch.testing.assert_close(xattr.integrated_gradients(f, baselines=b, n_steps=7, method="riemann_middle")(X), expect)


def test_custom_path_line_integral():
    """A curved path, feature j moving as a^(p_j), keeps the endpoints, so completeness holds."""
    model = _model()
    f = xattr.target(model, 0)
    p = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)

    def curved(x, b, alphas):
        a = alphas.reshape(-1, *([1] * x.ndim))
        return b + a**p * (x - b), p * a ** (p - 1) * (x - b)

    attr = xattr.path_integral(f, path=curved, n_steps=200)(X)
    gap = attr.sum(1) - (model(X)[:, 0] - model(torch.zeros_like(X))[:, 0]).detach()
    assert gap.abs().max() < 1e-8
    straight = xattr.integrated_gradients(f, n_steps=40)(X)
    assert (attr - straight).abs().max() > 1e-4  # a different path gives different per-feature credit


def test_ig_call_time_baselines_and_delta():
    model = _model()
    f = xattr.target(model, 1)
    ig = xattr.integrated_gradients(f, return_delta=True)
    b = torch.randn(1, 4, dtype=torch.float64)
    attr, delta = ig(X, baselines=b)
    ref = xattr.integrated_gradients(f, baselines=b.expand(5, 4))(X)
    torch.testing.assert_close(attr, ref)
    assert delta.shape == (5,) and delta.abs().max() < 1e-10


def test_ig_many_outputs_delta_has_k_axis():
    f = xattr.target(_model(), xattr.outputs([0, 2, 4]))
    attr, delta = xattr.integrated_gradients(f, return_delta=True)(X)
    assert attr.shape == (5, 3, 4) and delta.shape == (5, 3)
    assert delta.abs().max() < 1e-10


def test_passthrough_argument_is_tiled_with_the_folded_rows():
    torch.manual_seed(0)
    lin = nn.Linear(4, 1).double()
    f = lambda x, scale, bias: (lin(x)[:, 0] * scale + bias)  # noqa: E731
    scale = torch.arange(1.0, 6.0, dtype=torch.float64)
    attr = xattr.integrated_gradients(f, n_steps=5)(X, scale, 3.0)
    torch.testing.assert_close(attr, lin.weight[0] * X * scale[:, None])


def test_smooth_reductions_against_explicit_formula():
    """With stdevs=0 every copy is the input: mean = a, sq_mean = a^2, var = 0."""
    f = xattr.target(_model(), 3)
    base = xattr.saliency(f, abs=False)(X)
    torch.testing.assert_close(xattr.smoothgrad(xattr.saliency(f, abs=False), stdevs=0.0, n_samples=3)(X), base)
    torch.testing.assert_close(xattr.smoothgrad_sq(xattr.saliency(f, abs=False), stdevs=0.0, n_samples=3)(X), base**2)
    torch.testing.assert_close(xattr.vargrad(xattr.saliency(f, abs=False), stdevs=0.0, n_samples=3)(X), torch.zeros_like(X))


def test_smooth_same_seed_any_batch_and_chunk():
    sg = lambda **kw: xattr.smoothgrad(xattr.integrated_gradients(xattr.target(_model(), 3), n_steps=4), stdevs=0.3, n_samples=7, generator=11, **kw)  # noqa: E731
    full = sg()(X)
    torch.testing.assert_close(sg()(X[:2]), full[:2])
    torch.testing.assert_close(sg(chunk_size=10)(X), full)
    g = torch.Generator().manual_seed(5)
    assert not torch.allclose(xattr.smooth(xattr.saliency(xattr.target(_model(), 3)), generator=g)(X), full)


FOLDS = [(outer, inner) for outer in ("smooth", "nested smooth", "expectation")
         for inner in ("gradient_shap", "shapley_value_sampling", "kernel_shap", "lime")
         if (outer, inner) != ("expectation", "gradient_shap")]  # it takes a distribution, not baselines per row


@pytest.mark.parametrize(("outer", "inner"), FOLDS)
def test_folding_transforms_around_seeded_stochastic_methods_are_batch_and_chunk_invariant(inner, outer):
    """NOTE: [Seeds of folded copies]: the inner method's draws follow (example, copy), not the
    row's place in its call; they still differ between copies and between examples."""
    f = xattr.target(_model(), 3)
    make = {
        "gradient_shap": lambda: xattr.gradient_shap(f, baselines=torch.zeros(3, 4, dtype=torch.float64), n_samples=3, generator=2),
        "shapley_value_sampling": lambda: xattr.shapley_value_sampling(f, n_samples=2, generator=2),
        "kernel_shap": lambda: xattr.kernel_shap(f, n_samples=12, generator=2),
        "lime": lambda: xattr.lime(f, n_samples=12, generator=2),
    }[inner]

    def transform(chunk_size=None):
        if outer == "smooth":
            return xattr.smooth(make(), stdevs=0.2, n_samples=3, generator=1, chunk_size=chunk_size)
        if outer == "nested smooth":
            return xattr.smooth(xattr.smooth(make(), stdevs=0.2, n_samples=2, generator=4, chunk_size=chunk_size),
                                stdevs=0.2, n_samples=2, generator=1, chunk_size=chunk_size)
        dist = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        return xattr.expectation(_with_baselines(inner, f), baselines=dist, n_samples=3, generator=1, chunk_size=chunk_size)

    full = transform()(X)
    for chunk_size in (X.shape[0], 2 * X.shape[0]):
        torch.testing.assert_close(transform(chunk_size)(X), full)
    torch.testing.assert_close(transform()(X[:2]), full[:2])
    # a fold of identical copies: different copies still get different draws (the average
    # of 3 equal-seeded copies would equal one call)
    if outer == "smooth":
        same = xattr.smooth(make(), stdevs=0.0, n_samples=3, generator=1)(X)
        assert not torch.allclose(same, make()(X))


def _with_baselines(inner, f):
    """The stochastic method with a baselines= keyword (for expectation)."""
    def fn(x, baselines):
        method = {
            "shapley_value_sampling": lambda: xattr.shapley_value_sampling(f, baselines=baselines, n_samples=2, generator=2),
            "kernel_shap": lambda: xattr.kernel_shap(f, baselines=baselines, n_samples=12, generator=2),
            "lime": lambda: xattr.lime(f, baselines=baselines, n_samples=12, generator=2),
        }[inner]
        return method()(x)

    return fn


def test_expectation_equals_average_over_drawn_baselines():
    f = xattr.target(_model(), 0)
    dist = torch.randn(3, 4, dtype=torch.float64)
    eg = xattr.expectation(xattr.integrated_gradients(f, n_steps=8), baselines=dist, n_samples=400, generator=0)(X)
    exact = sum(xattr.integrated_gradients(f, n_steps=8, baselines=dist[j : j + 1])(X) for j in range(3)) / 3
    assert (eg - exact).abs().max() < 0.1 * exact.abs().max()
    single = xattr.expectation(xattr.integrated_gradients(f, n_steps=8), baselines=dist[:1], n_samples=2)(X)
    torch.testing.assert_close(single, xattr.integrated_gradients(f, n_steps=8, baselines=dist[:1])(X))


def test_argnums_tuple_and_dict_inputs():
    torch.manual_seed(0)
    la, lb = nn.Linear(2, 1).double(), nn.Linear(3, 1).double()
    f = lambda a, d: (la(a) + lb(d["u"]) * d["v"].sum(1, keepdim=True))[:, 0]  # noqa: E731
    a = torch.randn(4, 2, dtype=torch.float64)
    d = {"u": torch.randn(4, 3, dtype=torch.float64), "v": torch.randn(4, 2, dtype=torch.float64)}
    ga, gd = xattr.grad(f, argnums=(0, 1))(a, d)
    assert ga.shape == a.shape and set(gd) == {"u", "v"}
    attr = xattr.integrated_gradients(f, argnums=1, n_steps=30)(a, d)
    gap = sum(v.sum(1) for v in attr.values()) - (f(a, d) - f(a, {k: torch.zeros_like(v) for k, v in d.items()})).detach()
    assert gap.abs().max() < 1e-10


def test_results_are_detached_but_differentiable_under_torch_func():
    model = _model()
    f = xattr.target(model, 0)
    assert not xattr.saliency(f)(X).requires_grad
    # Integrated Hessians-style: jacobian of the gradient w.r.t. the input = the Hessian.
    h = torch.func.jacrev(lambda x: xattr.grad(f)(x).sum(0))(X)
    ref = torch.stack([torch.func.hessian(lambda z: model(z[None])[0, 0])(X[i]) for i in range(5)])
    torch.testing.assert_close(h.permute(1, 0, 2), ref)


def test_results_detached_even_when_inputs_require_grad():
    f = lambda x: (x**3).sum(1)  # noqa: E731
    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    for method in (xattr.input_x_gradient(f), xattr.integrated_gradients(f), xattr.gradient_shap(f, baselines=torch.zeros(1, 2), generator=0)):
        assert not method(x).requires_grad  # no partial graph that would give wrong .backward() results


def test_smooth_tiles_per_example_keyword_arguments():
    model = _model()
    f = xattr.target(model, 0)
    b = torch.randn(5, 4, dtype=torch.float64)
    got = xattr.smooth(xattr.integrated_gradients(f, n_steps=6), stdevs=0.0, n_samples=3)(X, baselines=b)
    torch.testing.assert_close(got, xattr.integrated_gradients(f, n_steps=6, baselines=b)(X))


def test_aggregate_output_integrated_gradients_equals_per_example():
    model = _model()
    agg = lambda x: model(x)[:, 0].sum()  # noqa: E731
    for method in ("riemann_left", "gausslegendre"):
        got = xattr.integrated_gradients(agg, n_steps=16, method=method)(X)
        torch.testing.assert_close(got, xattr.integrated_gradients(xattr.target(model, 0), n_steps=16, method=method)(X))


def test_noise_tunnel_over_ig_with_per_example_baselines_fixed_at_build_time():
    model = _model()
    f = xattr.target(model, 0)
    b = torch.randn(5, 4, dtype=torch.float64)
    got = xattr.smoothgrad(xattr.integrated_gradients(f, n_steps=6, baselines=b), stdevs=0.0, n_samples=3)(X)
    torch.testing.assert_close(got, xattr.integrated_gradients(f, n_steps=6, baselines=b)(X))
    # with noise, the built-in baselines follow their examples exactly as per-call ones do
    built = xattr.smoothgrad(xattr.integrated_gradients(f, n_steps=6, baselines=b), stdevs=0.1, n_samples=3, generator=1)
    per_call = xattr.smoothgrad(xattr.integrated_gradients(f, n_steps=6), stdevs=0.1, n_samples=3, generator=1)
    torch.testing.assert_close(built(X), per_call(X, baselines=b))
    torch.testing.assert_close(
        xattr.smoothgrad(xattr.integrated_gradients(f, n_steps=6, baselines=b), stdevs=0.1, n_samples=3, generator=1, chunk_size=4)(X),
        built(X),
    )


def test_aggregate_output_completeness_gap_is_one_number():
    model = _model()
    agg = lambda x: model(x)[:, 0].sum()  # noqa: E731
    attr, delta = xattr.integrated_gradients(agg, return_delta=True)(X)
    per_example = xattr.integrated_gradients(xattr.target(model, 0), return_delta=True)(X)[1]
    assert delta.ndim == 0
    torch.testing.assert_close(delta, per_example.sum())


def test_both_differentiation_backends_agree_for_k_outputs():
    """NOTE: [Two differentiation backends]: top level uses autograd.grad, transforms use vjp+vmap."""
    model = _model()
    ig = xattr.integrated_gradients(xattr.target(model, xattr.outputs([0, 3, 5])), n_steps=6)
    eager = ig(X)
    under_vmap = torch.func.vmap(ig)(X.unsqueeze(0).expand(2, 5, 4))
    torch.testing.assert_close(under_vmap[1], eager)
    chunked = torch.func.vmap(xattr.integrated_gradients(xattr.target(model, xattr.outputs([0, 3, 5])), n_steps=6, chunk_size=5))
    torch.testing.assert_close(chunked(X.unsqueeze(0))[0], eager)


def test_output_independent_of_an_input_gives_zero_gradient():
    f = lambda a, b: a.sum(1) * 2.0  # noqa: E731
    ga, gb = xattr.grad(f, argnums=(0, 1))(X, X.clone())
    torch.testing.assert_close(ga, torch.full_like(X, 2.0))
    torch.testing.assert_close(gb, torch.zeros_like(X))
    with pytest.warns(xattr.NoGradientPathWarning, match="no gradient reaches the attributed inputs"):
        torch.testing.assert_close(xattr.grad(lambda a: torch.zeros(a.shape[0], dtype=a.dtype))(X), torch.zeros_like(X))


@pytest.mark.parametrize("t", [torch.tensor([0, 1, 2, 3, 4]), torch.tensor([-1, 0, -6, 5, 3])])
def test_a_per_example_target_picks_the_same_outputs_with_and_without_autograd(t):
    """Without autograd or a transform a (R, C) output is read with one flat `take`, otherwise
    with a gather: the same rows' outputs, for folded copies of the batch too."""
    out = torch.randn(3 * 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    wide = out.T.contiguous().T  # column-major, the same values: `take` reads it in logical order
    want = torch.stack([out[r, int(t[r % 5])] for r in range(15)])  # the explicit loop
    f = xattr.target(lambda x: x, t)
    with T.batch_scope(5):
        for rows in (out, wide):
            with torch.no_grad():
                flat = f(rows)
            gathered = f(rows.clone().requires_grad_(True))
            assert torch.equal(flat, want) and torch.equal(gathered.detach(), want)


def test_a_target_changed_behind_its_version_counter_is_read_again():
    """A numpy array sharing the target's memory, or a ``.data`` write, leaves the version counter
    as it was: the memoised gather index and range check still see the new labels (CPU)."""
    buffer = np.array([0, 1, 2, 3, 4])
    labels = torch.from_numpy(buffer)
    out = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    f = xattr.target(lambda x: x, labels)
    for values in ([0, 1, 2, 3, 4], [5, 5, 0, 0, -1], [2, 2, 2, 2, 2]):
        buffer[:] = values
        for grad in (False, True):  # the flat `take` and the gather keep separate indices
            with torch.set_grad_enabled(grad):
                got = f(out.clone().requires_grad_(grad))
            assert torch.equal(got.detach(), out[torch.arange(5), torch.tensor(values) % 6])
    labels.data[:] = torch.tensor([0, 0, 0, 0, 6])
    with pytest.raises(IndexError, match="must lie in"):
        f(out)
