"""LIME and KernelSHAP (xattr/_src/surrogate.py) and their batched solvers (xattr/_src/solvers.py).

Solvers: equal scikit-learn's fits of the same objective on the same samples and weights.
KernelSHAP: converges to brute-force Shapley values (subset enumeration written here), is
exact when every coalition is enumerated, satisfies efficiency for every draw, and equals
Captum's estimator (end coalitions weighted 1e6) on the same draws. LIME: recovers a linear
model's per-feature effects, the scikit-learn path equals the torch path, the closed-form
similarity equals the copies-based one. Both: seeded batch-prefix and chunk invariance, feature
masks, pytrees with pass-through arguments, bool/int inputs, many outputs, aggregate mode.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso, LinearRegression, Ridge
from torch import nn

import xattr
from xattr._src.sampling import streams
from xattr._src.solvers import constrained_lstsq
from xattr._src.surrogate import _shapley_draws
from xattr.testing import assert_trees_close, check_batch_invariance, check_chunk_invariance, check_dtype_device
from xattr.testing.strategies import random_tensor

D = torch.float64


def mlp(n_in: int, n_out: int = 2, seed: int = 0, width: int = 8) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, n_out))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model.double().eval()


def exact_shapley(v, m: int) -> torch.Tensor:
    """Shapley values by subset enumeration: v(S) for every subset S (a callable on a (2^m, m)
    0/1 matrix returning (B, 2^m)); phi_i = sum_{S not i} |S|!(m-|S|-1)!/m! (v(S+i) - v(S))."""
    ids = torch.arange(2**m)
    subsets = ((ids[:, None] >> torch.arange(m)) & 1).to(D)
    values = v(subsets)
    size = subsets.sum(1).long()
    phi = torch.zeros(values.shape[0], m, dtype=D)
    for i in range(m):
        out = ids[subsets[:, i] == 0]
        k = size[out]
        weight = torch.tensor([math.factorial(a) * math.factorial(m - a - 1) / math.factorial(m) for a in k.tolist()], dtype=D)
        phi[:, i] = ((values[:, out | (1 << i)] - values[:, out]) * weight).sum(1)
    return phi


def model_values(model, x, base, target):
    def v(subsets):
        rows = base[:, None] + subsets[None] * (x - base)[:, None]  # (B, 2^m, m)
        with torch.no_grad():
            return model(rows.reshape(-1, x.shape[1]))[:, target].reshape(x.shape[0], -1)

    return v


# ----------------------------------------------------------------------------- solvers vs scikit-learn


def problem(seed, B=3, N=40, F=6, K=2, binary=True):
    g = torch.Generator().manual_seed(seed)
    X = (torch.rand(B, N, F, generator=g, dtype=D) < 0.5).to(D) if binary else torch.randn(B, N, F, generator=g, dtype=D)
    y = X @ torch.randn(B, F, K, generator=g, dtype=D) + 0.3 * torch.randn(B, N, K, generator=g, dtype=D)
    w = 0.1 + torch.rand(B, N, generator=g, dtype=D)
    return X, y, w


def sk_fit(estimator, X, y, w):
    coefs, intercepts = [], []
    for b in range(X.shape[0]):
        estimator.fit(X[b].numpy(), y[b].numpy(), sample_weight=w[b].numpy())
        coefs.append(np.atleast_2d(estimator.coef_))
        intercepts.append(np.broadcast_to(estimator.intercept_, (y.shape[2],)))
    return torch.tensor(np.stack(coefs)), torch.tensor(np.stack(intercepts))


SOLVERS = {
    "lasso": lambda a, fi: (xattr.lasso(a, fit_intercept=fi), Lasso(alpha=a, fit_intercept=fi, tol=1e-14, max_iter=200_000)),
    "ridge": lambda a, fi: (xattr.ridge(a * 10, fit_intercept=fi), Ridge(alpha=a * 10, fit_intercept=fi)),
    "linear_regression": lambda a, fi: (xattr.linear_regression(fit_intercept=fi), LinearRegression(fit_intercept=fi)),
}


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_solver_equals_sklearn(name, seed, fit_intercept):
    X, y, w = problem(seed, binary=seed % 2 == 0)
    ours, theirs = SOLVERS[name]([0.003, 0.03, 0.1, 0.4][seed], fit_intercept)
    coef, intercept = ours(X, y, w)
    want_coef, want_intercept = sk_fit(theirs, X, y, w)
    assert coef.shape == (3, 2, 6) and intercept.shape == (3, 2)
    torch.testing.assert_close(coef, want_coef, atol=1e-9, rtol=1e-8)
    torch.testing.assert_close(intercept, want_intercept, atol=1e-9, rtol=1e-8)


def test_lasso_sparse_and_all_zero_solutions_are_exact():
    X, y, w = problem(7, B=4, N=60, F=10, K=1)
    for alpha in (0.2, 100.0):  # some coefficients exactly zero; all of them zero
        coef, _ = xattr.lasso(alpha)(X, y, w)
        want, _ = sk_fit(Lasso(alpha=alpha, tol=1e-14, max_iter=200_000), X, y, w)
        torch.testing.assert_close(coef, want, atol=1e-10, rtol=1e-9)
        assert torch.equal(coef == 0, want == 0)
    assert (xattr.lasso(100.0)(X, y, w)[0] == 0).all()


def test_least_squares_rank_deficient_is_minimum_norm():
    X, y, w = problem(3, N=5, F=8, K=1)  # fewer samples than features
    coef, intercept = xattr.linear_regression()(X, y, w)
    want_coef, want_intercept = sk_fit(LinearRegression(), X, y, w)
    torch.testing.assert_close(coef, want_coef, atol=1e-8, rtol=1e-7)
    torch.testing.assert_close(intercept, want_intercept, atol=1e-8, rtol=1e-7)


def test_solvers_keep_float32():
    X, y, w = (t.float() for t in problem(1))
    for solver in (xattr.lasso(0.01), xattr.ridge(1.0), xattr.linear_regression()):
        coef, intercept = solver(X, y, w)
        assert coef.dtype == intercept.dtype == torch.float32


# ----------------------------------------------------------------------------- kernel SHAP

M = 9  # 512 coalitions: enumeration is cheap, sampling with n < 512 is a real estimate


@pytest.fixture(scope="module")
def shap_case():
    model, x = mlp(M, seed=4), random_tensor((3, M), seed=5)
    base = 0.3 * random_tensor((1, M), seed=6)
    exact = exact_shapley(model_values(model, x, base.expand_as(x), 1), M)
    return model, x, base, exact


def test_kernel_shap_enumerates_every_coalition_when_n_samples_allows(shap_case):
    model, x, base, exact = shap_case
    phi = xattr.kernel_shap(xattr.target(model, 1), n_samples=2**M, baselines=base, return_input_shape=False)(x)
    torch.testing.assert_close(phi, exact, atol=1e-12, rtol=1e-10)


def test_kernel_shap_converges_to_shapley_values(shap_case):
    """RMS error over 8 seeds at n samples stays under 4 / sqrt(n) (the Monte Carlo rate;
    measured 2.0-2.8 / sqrt(n) for this model, whose largest |phi| is 2.1) and falls by > 2.5x
    from n=24 to n=384 (4x expected)."""
    model, x, base, exact = shap_case
    f = xattr.target(model, 1)
    rms = {}
    for n in (24, 96, 384):
        method = lambda s: xattr.kernel_shap(f, n_samples=n, baselines=base, generator=s, return_input_shape=False)  # noqa: E731
        errs = [method(s)(x) - exact for s in range(8)]
        rms[n] = torch.stack(errs).pow(2).mean().sqrt().item()
        assert rms[n] < 4 / math.sqrt(n), (n, rms[n])
    assert rms[384] < rms[24] / 2.5, rms


def test_kernel_shap_efficiency_holds_for_every_draw(shap_case):
    model, x, base, _ = shap_case
    f = xattr.target(model, 1)
    with torch.no_grad():
        gap = f(x) - f(base.expand_as(x))
    for n in (2, 3, 10, 50):  # n=2: the end coalitions only (phi = gap / M)
        phi = xattr.kernel_shap(f, n_samples=n, baselines=base, generator=n, return_input_shape=False)(x)
        torch.testing.assert_close(phi.sum(1), gap, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(xattr.kernel_shap(f, n_samples=2, baselines=base)(x), (gap / M)[:, None].expand(-1, M))


def test_kernel_shap_is_exact_on_additive_models():
    """y = sum_i g_i(x_i): every coalition's value is additive, so any full-rank draw gives phi exactly."""
    g = lambda x: torch.sin(3 * x).sum(1) + (x[:, :3] ** 2).sum(1)  # noqa: E731
    x, base = random_tensor((4, 12), seed=1), random_tensor((4, 12), seed=2)
    phi = xattr.kernel_shap(g, n_samples=100, baselines=base, generator=0, return_input_shape=False)(x)
    want = torch.sin(3 * x) - torch.sin(3 * base)
    want[:, :3] += x[:, :3] ** 2 - base[:, :3] ** 2
    torch.testing.assert_close(phi, want, atol=1e-10, rtol=1e-9)


def test_kernel_shap_equals_captums_estimator_on_the_same_draws(shap_case):
    """Captum fits LinearRegression with intercept to [full, empty, draws...] weighted [1e6, 1e6, 1...]:
    our constrained fit up to the finite weight (1e-5 here), and exactly in the limit of a large one."""
    model, x, base, _ = shap_case
    n = 60
    phi = xattr.kernel_shap(xattr.target(model, 1), n_samples=n, baselines=base, generator=3, return_input_shape=False)(x)
    (stream,) = streams(3, 1)
    z = _shapley_draws(x.shape[0], n - 2, M, stream, x.device).to(D)
    for b in range(x.shape[0]):
        design = torch.cat([torch.ones(1, M, dtype=D), torch.zeros(1, M, dtype=D), z[b]])
        with torch.no_grad():
            y = model(base + design * (x[b] - base))[:, 1]
        for heavy, atol in ((1e6, 1e-4), (1e10, 1e-8)):  # Captum's weight; its limit is the constraint
            weights = np.r_[heavy, heavy, np.ones(n - 2)]
            captum = LinearRegression().fit(design.numpy(), y.numpy(), sample_weight=weights).coef_
            np.testing.assert_allclose(phi[b].numpy(), captum, atol=atol)


def test_kernel_shap_draws_sizes_by_the_shapley_kernel():
    m, n = 6, 20000
    (stream,) = streams(0, 1)
    z = _shapley_draws(1, n, m, stream, torch.device("cpu"))[0]
    sizes = z.sum(1).long()
    assert sizes.min() >= 1 and sizes.max() <= m - 1
    k = torch.arange(1, m, dtype=D)
    p = (m - 1) / (k * (m - k))
    p = p / p.sum()
    freq = torch.bincount(sizes, minlength=m)[1:].to(D) / n
    assert (freq - p).abs().max() < 4 * math.sqrt(0.25 / n)
    per_feature = z[sizes == 2].to(D).mean(0)  # uniform subsets: each feature in 2/m of the size-2 ones
    assert (per_feature - 2 / m).abs().max() < 0.03


def test_constrained_lstsq_matches_lagrange_solution():
    X, y, w = problem(2, N=30, F=5, K=2)
    total = torch.randn(3, 2, dtype=D)
    phi = constrained_lstsq(X, y, w, total)
    for b in range(3):  # KKT system [2 X'WX, 1; 1', 0] [phi; lam] = [2 X'Wy; total]
        A = X[b].T @ (w[b, :, None] * X[b])
        kkt = torch.zeros(6, 6, dtype=D)
        kkt[:5, :5], kkt[:5, 5], kkt[5, :5] = 2 * A, 1, 1
        rhs = torch.cat([2 * X[b].T @ (w[b, :, None] * y[b]), total[b][None]])
        torch.testing.assert_close(phi[b], torch.linalg.solve(kkt, rhs)[:5].T)


# ----------------------------------------------------------------------------- LIME


def all_coalitions(n, F, generator):
    ids = torch.arange(2**F)
    return ((ids[:, None] >> torch.arange(F)) & 1).float()


def uniform(original, perturbed, coalitions):
    return torch.ones(coalitions.shape[:2], dtype=torch.float64)


def test_lime_recovers_a_linear_models_effects():
    """f = W x + c; coalition z gives f(b + z (x - b)) = f(b) + sum_f z_f e_f with e_f = W_f (x_f - b_f):
    least squares recovers e exactly; with uniform weights over all coalitions the design is
    orthogonal and the lasso soft-thresholds: beta_f = sign(e_f) max(|e_f| - 4 alpha, 0)."""
    F = 5
    lin = nn.Linear(F, 1).double()
    x, base = random_tensor((3, F), seed=1), random_tensor((3, F), seed=2)
    effects = lin.weight.detach()[0] * (x - base)
    f = lambda x: lin(x)[:, 0]  # noqa: E731
    common = dict(n_samples=2**F, baselines=base, perturb_func=all_coalitions, return_input_shape=False)
    ls = xattr.lime(f, interpretable_model=xattr.linear_regression(), **common)(x)
    torch.testing.assert_close(ls, effects, atol=1e-10, rtol=1e-9)
    alpha = 0.05
    la = xattr.lime(f, interpretable_model=xattr.lasso(alpha), similarity_func=uniform, **common)(x)
    torch.testing.assert_close(la, effects.sign() * (effects.abs() - 4 * alpha).clamp_min(0), atol=1e-10, rtol=1e-9)
    default = xattr.lime(f, n_samples=400, baselines=base, generator=0, interpretable_model=xattr.linear_regression())(x)
    torch.testing.assert_close(default, effects, atol=1e-10, rtol=1e-9)  # random draws, exact fit


@pytest.mark.parametrize(
    "estimator, solver",
    [
        (Lasso(alpha=0.01, tol=1e-14, max_iter=100_000), xattr.lasso(0.01)),
        (Ridge(alpha=0.5), xattr.ridge(0.5)),
        (LinearRegression(), xattr.linear_regression()),
    ],
    ids=["lasso", "ridge", "linear_regression"],
)
def test_lime_sklearn_estimator_equals_torch_solver(estimator, solver):
    model, x = mlp(6, n_out=3, seed=1), random_tensor((3, 6), seed=2)
    f = xattr.target(model, xattr.outputs([0, 2]))
    got = xattr.lime(f, n_samples=40, generator=1, interpretable_model=estimator)(x)
    want = xattr.lime(f, n_samples=40, generator=1, interpretable_model=solver)(x)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_closed_form_similarity_equals_the_copies(distance):
    """lime computes the exp kernel from per-feature sums; the same kernel on built copies agrees."""
    model, x = mlp(6, seed=3), random_tensor((4, 6), seed=4)
    base = 0.5 * random_tensor((4, 6), seed=5)
    mask = torch.tensor([[0, 0, 1, 2, 2, 3]])
    kernel = xattr.exp_kernel_similarity(distance, kernel_width=0.7)
    plain = lambda o, p, z: kernel(o, p, z)  # noqa: E731  (not recognised: builds the copies)
    f = xattr.target(model, 0)
    common = dict(n_samples=30, baselines=base, feature_mask=mask, generator=2, interpretable_model=xattr.linear_regression())
    fast = xattr.lime(f, similarity_func=kernel, **common)(x)
    slow = xattr.lime(f, similarity_func=plain, chunk_size=8, **common)(x)
    torch.testing.assert_close(fast, slow, atol=1e-10, rtol=1e-9)


def test_default_similarity_is_captums():
    """exp(-(1 - cos(x, x'))^2 / 2) for an example and its copy, computed here by hand."""
    x, base = random_tensor((1, 4), seed=1), torch.zeros(1, 4, dtype=D)
    z = torch.tensor([[[1.0, 0, 1, 1], [0, 0, 0, 0]]], dtype=D)
    copies = base[:, None] + z * (x - base)[:, None]
    w = xattr.exp_kernel_similarity()(x, copies, z)
    cos = (x[0] * copies[0, 0]).sum() / (x.norm() * copies[0, 0].norm())
    torch.testing.assert_close(w[0], torch.stack([torch.exp(-((1 - cos) ** 2) / 2), torch.exp(torch.tensor(-0.5, dtype=D))]))


# ----------------------------------------------------------------------------- both methods: plumbing

METHODS = {
    "lime": lambda f, **kw: xattr.lime(f, n_samples=24, **kw),
    "kernel_shap": lambda f, **kw: xattr.kernel_shap(f, n_samples=24, **kw),
}
both = pytest.mark.parametrize("name", sorted(METHODS))


@both
def test_seeded_batch_prefix_and_chunk_invariance(name):
    model, x = mlp(7, seed=2), random_tensor((4, 7), seed=3)
    f = xattr.target(model, 1)
    check_batch_invariance(METHODS[name](f, generator=0), x, by="prefix")
    check_chunk_invariance(lambda cs: METHODS[name](f, generator=0, chunk_size=cs), x, chunk_sizes=(1, 5, 13))
    check_chunk_invariance(lambda cs: METHODS[name](f, generator=0, memory_budget=cs), x, chunk_sizes=(1, 500))


@both
def test_seeds_and_generators(name):
    model, x = mlp(7, seed=2), random_tensor((3, 7), seed=3)
    f = xattr.target(model, 1)
    state = torch.get_rng_state()
    a = METHODS[name](f, generator=5)(x)
    assert torch.equal(torch.get_rng_state(), state), "an int seed must not touch torch's global generator"
    assert torch.equal(a, METHODS[name](f, generator=5)(x))
    assert not torch.equal(a, METHODS[name](f, generator=6)(x))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(METHODS[name](f, generator=g1)(x), METHODS[name](f, generator=g2)(x))
    torch.manual_seed(3)
    first = METHODS[name](f)(x)
    torch.manual_seed(3)
    assert torch.equal(first, METHODS[name](f)(x))


@both
def test_many_outputs_match_single_targets(name):
    model, x = mlp(6, n_out=3, seed=1), random_tensor((3, 6), seed=2)
    many = METHODS[name](xattr.target(model, xattr.outputs([2, 0])), generator=0)(x)
    check_dtype_device(lambda x: many, x, n_outputs=2)
    for j, k in enumerate([2, 0]):
        assert_trees_close(many[:, j], METHODS[name](xattr.target(model, k), generator=0)(x))
    coef = METHODS[name](xattr.target(model, xattr.outputs([2, 0])), generator=0, return_input_shape=False)(x)
    assert coef.shape == (3, 2, 6)


@both
def test_feature_masks_spread_coefficients(name):
    model = nn.Sequential(nn.Flatten(), mlp(12, seed=3))
    x = random_tensor((2, 3, 4), seed=1)
    mask = torch.arange(3)[:, None].expand(3, 4)  # one feature per row
    f = xattr.target(model, 0)
    attr = METHODS[name](f, feature_mask=mask, generator=0)(x)
    coef = METHODS[name](f, feature_mask=mask, generator=0, return_input_shape=False)(x)
    assert coef.shape == (2, 3)
    torch.testing.assert_close(attr, coef[:, :, None].expand(2, 3, 4))
    per_example = torch.stack([mask, mask.flip(0)])  # example 1's rows numbered backwards
    attr2 = METHODS[name](f, feature_mask=per_example, generator=0)(x)
    torch.testing.assert_close(attr2[0], attr[0])
    assert (attr2[1] == attr2[1][:, :1]).all()  # still constant along each row


@both
def test_pytree_inputs_with_pass_through_argument(name):
    lin_a, lin_b = nn.Linear(3, 4).double(), nn.Linear(2, 4).double()
    head = nn.Linear(4, 1).double()
    f = lambda d, s: head(torch.tanh(lin_a(d["a"]) + lin_b(d["b"])) * s)[:, 0]  # noqa: E731
    a, b, s = random_tensor((3, 3), 1), random_tensor((3, 2), 2), 1 + random_tensor((3, 4), 3).abs()
    fn = METHODS[name](f, generator=0)
    attr = fn({"a": a, "b": b}, s)
    check_dtype_device(fn, {"a": a, "b": b}, s)
    check_batch_invariance(fn, {"a": a, "b": b}, s, by="prefix")
    flat = lambda z, s: f({"a": z[:, :3], "b": z[:, 3:]}, s)  # noqa: E731  (same features, same draws)
    want = METHODS[name](flat, generator=0)(torch.cat([a, b], 1), s)
    assert_trees_close(attr, {"a": want[:, :3], "b": want[:, 3:]})
    tup = METHODS[name](lambda a, b, s: f({"a": a, "b": b}, s), generator=0, argnums=(0, 1))(a, b, s)
    assert_trees_close(tup, (want[:, :3], want[:, 3:]))


@both
def test_bool_and_integer_inputs(name):
    emb = nn.Embedding(10, 3).double()
    tokens = torch.tensor([[1, 4, 7, 2], [3, 3, 9, 0]])
    keep = torch.tensor([[True, False, True, True], [True, True, False, True]])
    f = lambda t, k: (emb(t).sum(-1) * k).sum(1)  # noqa: E731
    fn = METHODS[name](f, argnums=(0, 1), baselines=(0, False), generator=0)
    attr_t, attr_k = fn(tokens, keep)
    # the default float dtype, widened to the float64 model's (a float32 result would round its answers)
    assert attr_t.dtype == attr_k.dtype == torch.float64 and attr_t.shape == tokens.shape
    if name == "kernel_shap":  # 8 features, all 256 coalitions: the Shapley values of the pair games
        attr_t, attr_k = xattr.kernel_shap(f, n_samples=256, argnums=(0, 1), baselines=(0, False))(tokens, keep)
        with torch.no_grad():
            e, e0 = emb(tokens).sum(-1), emb(torch.zeros_like(tokens)).sum(-1)
        # v = sum_i t_i m_i, t_i in {e0_i, e_i} (token kept or not), m_i in {0, k_i}: per pair,
        # phi_token = (e - e0) k / 2 and phi_bit = (e + e0) k / 2
        torch.testing.assert_close(attr_t.double(), (e - e0) * keep / 2, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(attr_k.double(), (e + e0) * keep / 2, atol=1e-6, rtol=1e-5)


@both
def test_aggregate_model_gives_one_row(name):
    model, x = mlp(5, seed=1), random_tensor((3, 5), seed=2)
    total = lambda x: model(x)[:, 0].sum()  # noqa: E731
    attr = METHODS[name](total, generator=0)(x)
    assert attr.shape == (1, 5)
    if name == "kernel_shap":
        with torch.no_grad():
            gap = total(x) - total(torch.zeros_like(x))
        torch.testing.assert_close(attr.sum(), gap)


def test_errors():
    f = xattr.target(mlp(4), 0)
    x = random_tensor((2, 4), 1)
    with pytest.raises(ValueError, match="n_samples"):
        xattr.kernel_shap(f, n_samples=1)
    with pytest.raises(ValueError, match="n_samples"):
        xattr.lime(f, n_samples=0)
    with pytest.raises(TypeError, match="interpretable_model"):
        xattr.lime(f, interpretable_model=3)
    with pytest.raises(ValueError, match="perturb_func must return"):
        xattr.lime(f, perturb_func=lambda n, F, g: torch.ones(n, F + 1))(x)
    with pytest.raises(ValueError, match="0/1"):
        xattr.lime(f, perturb_func=lambda n, F, g: torch.full((n, F), 0.5))(x)
    with pytest.raises(ValueError, match="similarity_func must return"):
        xattr.lime(f, similarity_func=lambda o, p, z: torch.ones(3))(x)
    with pytest.raises(ValueError, match="distance"):
        xattr.exp_kernel_similarity("manhattan")


def test_float32_and_show_progress():
    model = mlp(5, seed=1).float()
    x = random_tensor((2, 5), 2, dtype=torch.float32)
    for method in (xattr.lime, xattr.kernel_shap):
        out = method(xattr.target(model, 0), n_samples=30, generator=0, show_progress=True)(x)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_enumeration_matches_brute_force_through_feature_mask():
    """Grouped features: Shapley values of the groups (2^3 coalitions) by enumeration."""
    model, x = mlp(6, seed=9), random_tensor((2, 6), seed=8)
    groups = torch.tensor([0, 0, 1, 2, 2, 2])
    onehot = nn.functional.one_hot(groups).to(D).T  # (3, 6)

    def v(subsets):  # subsets (8, 3) over groups -> element masks (8, 6)
        with torch.no_grad():
            return model((x[:, None] * (subsets @ onehot)[None]).reshape(-1, 6))[:, 0].reshape(2, -1)

    phi = xattr.kernel_shap(xattr.target(model, 0), n_samples=8, feature_mask=groups, return_input_shape=False)(x)
    torch.testing.assert_close(phi, exact_shapley(v, 3), atol=1e-12, rtol=1e-10)


def test_subset_enumeration_reference_is_right():
    """The brute-force reference itself: efficiency, and the closed form for v(S) = prod_{i in S} a_i."""
    a = torch.tensor([[2.0, 3.0, 5.0]], dtype=D)
    phi = exact_shapley(lambda s: torch.prod(torch.where(s.bool(), a, 1.0), 1)[None] - 1, 3)
    assert torch.allclose(phi.sum(), torch.tensor(29.0, dtype=D))
    # phi_1 = 1/3 (2-1) + 1/6 (6-3) + 1/6 (10-5) + 1/3 (30-15) = 1/3 + 1/2 + 5/6 + 5
    assert torch.allclose(phi[0, 0], torch.tensor(1 / 3 + 0.5 + 5 / 6 + 5, dtype=D))


def test_many_features_warn(monkeypatch):
    from xattr._src import surrogate

    monkeypatch.setattr(surrogate, "_MANY_FEATURES", 3)
    f, x = xattr.target(mlp(4), 0), random_tensor((2, 4), 1)
    for method in (xattr.lime, xattr.kernel_shap):
        with pytest.warns(UserWarning, match="feature_mask"):
            method(f, n_samples=4, generator=0)(x)


def test_degenerate_samples_give_zero_or_equal_shares():
    """One LIME sample has no variation: the lasso's answer is 0. KernelSHAP with only the end
    coalitions splits f(x) - f(b) equally."""
    f, x = xattr.target(mlp(4), 0), random_tensor((2, 4), 1)
    assert (xattr.lime(f, n_samples=1, generator=0)(x) == 0).all()
    with torch.no_grad():
        gap = f(x) - f(torch.zeros_like(x))
    torch.testing.assert_close(xattr.kernel_shap(f, n_samples=2, generator=0)(x), (gap / 4)[:, None].expand(-1, 4))
