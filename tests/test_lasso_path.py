"""The lasso with fewer samples than features (NOTE: [Lasso by homotopy when samples are few]) and
LIME's and KernelSHAP's coalitions held as bool (NOTE: [Coalitions held as bool]).

With N <= F / 2 the solver follows the solution path instead of proximal gradient, which needed
thousands of steps there (3 s for one LIME call of 4 examples over 256 features, 50 samples).
It must still give scikit-learn's minimiser: the same objective value always, the same
coefficients where the solution is unique (its equicorrelation set's columns independent).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso
from test_surrogate_memory import LiveBytes

import xattr

D = torch.float64


def lime_like(seed, B, N, F, K=1, duplicate=False):
    """Bernoulli(1/2) coalitions, a nonlinear model's outputs, cosine-kernel-like weights."""
    g = torch.Generator().manual_seed(seed)
    X = (torch.rand(B, N, F, generator=g, dtype=D) < 0.5).to(D)
    if duplicate:  # equal (and complementary) columns: the solution is not unique
        X[:, :, 1] = X[:, :, 0]
        X[:, :, 3] = 1 - X[:, :, 2]
    x = torch.randn(B, 1, F, generator=g, dtype=D)
    y = torch.tanh(X * x) @ torch.randn(B, F, K, generator=g, dtype=D) + 0.1 * torch.randn(B, N, K, generator=g, dtype=D)
    w = torch.exp(-torch.rand(B, N, generator=g, dtype=D))
    return X, y, w


def objective(X, y, w, coef, intercept, alpha):
    """scikit-learn's weighted lasso objective, float64 numpy."""
    resid = y - intercept - X @ coef
    return (w * resid**2).sum() / (2 * w.sum()) + alpha * np.abs(coef).sum()


def unique(X, y, w, coef, intercept, alpha, fit_intercept):
    """Sufficient for a unique solution: the weighted (centred) columns where |gradient| = alpha
    are linearly independent (Tibshirani 2013)."""
    sw = w / w.sum()
    Xc = X - (sw @ X if fit_intercept else 0)
    grad = Xc.T @ (sw * (y - intercept - X @ coef))
    at = np.abs(grad) >= alpha * (1 - 1e-6)
    cols = np.sqrt(sw)[:, None] * Xc[:, at]
    return np.linalg.matrix_rank(cols, tol=1e-8) == at.sum()


CASES = [(0, 4, 12, 40), (1, 3, 20, 64), (2, 2, 6, 30), (3, 3, 25, 50), (4, 2, 40, 256)]


@pytest.mark.parametrize("seed, B, N, F", CASES)
@pytest.mark.parametrize("alpha", [0.003, 0.03])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("duplicate", [False, True])
def test_few_samples_give_sklearns_minimiser(seed, B, N, F, alpha, fit_intercept, duplicate):
    X, y, w = lime_like(seed, B, N, F, K=2, duplicate=duplicate)
    unique_seen = _fits_like_sklearn(X, y, w, alpha, fit_intercept)
    if not duplicate and N >= 20:  # fewer binary samples repeat columns by chance: not unique
        assert unique_seen == 2 * B


def _fits_like_sklearn(X, y, w, alpha, fit_intercept) -> int:
    """Fits all examples' two outputs at once, warning-free; each objective is no worse than
    scikit-learn's, and where the minimiser is unique the coefficients are its. Returns how many
    problems were unique."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "did not converge"
        coef, intercept = xattr.lasso(alpha, fit_intercept=fit_intercept)(X, y, w)
    unique_seen = 0
    for b in range(X.shape[0]):
        Xb, wb = X[b].numpy(), w[b].numpy()
        for k in range(2):
            yb = y[b, :, k].numpy()
            ref = Lasso(alpha=alpha, fit_intercept=fit_intercept, tol=1e-14, max_iter=1_000_000).fit(Xb, yb, sample_weight=wb)
            ours = objective(Xb, yb, wb, coef[b, k].numpy(), intercept[b, k].item(), alpha)
            theirs = objective(Xb, yb, wb, ref.coef_, ref.intercept_, alpha)
            assert ours <= theirs * (1 + 1e-10) + 1e-14  # scikit-learn's is to its tolerance: ours no worse
            if unique(Xb, yb, wb, coef[b, k].numpy(), intercept[b, k].item(), alpha, fit_intercept):
                unique_seen += 1
                np.testing.assert_allclose(coef[b, k].numpy(), ref.coef_, atol=1e-7, rtol=1e-6)
                np.testing.assert_allclose(intercept[b, k].item(), ref.intercept_, atol=1e-7, rtol=1e-6)
    return unique_seen


def test_few_samples_take_no_proximal_gradient_steps():
    """The path finds the exact minimiser by itself: with max_iter=1 (one proximal-gradient step
    allowed) there is nothing to warn about. Before, 50 samples over 256 features needed ~2000
    steps: one step gave 'did not converge' and a far-off answer."""
    X, y, w = lime_like(5, 2, 50, 256)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        coef, _ = xattr.lasso(0.01, max_iter=1)(X, y, w)
    for b in range(2):
        ref = Lasso(alpha=0.01, tol=1e-14, max_iter=1_000_000).fit(X[b].numpy(), y[b, :, 0].numpy(), sample_weight=w[b].numpy())
        np.testing.assert_allclose(coef[b, 0].numpy(), ref.coef_, atol=1e-7)
    assert 0 < int((coef != 0).sum(-1).max()) < 50  # a sparse solution: at most N - 1 features


def test_lime_with_few_samples_equals_the_sklearn_estimator():
    """The whole method, 40 samples over 128 features, fitted per example under the default
    memory budget: the same coefficients as Captum's way (scikit-learn's Lasso per example)."""
    g = torch.Generator().manual_seed(6)
    W, x = torch.randn(128, 3, generator=g, dtype=D), torch.randn(3, 128, generator=g, dtype=D)
    f = xattr.target(lambda v: torch.tanh(v) @ W, 1)
    ours = xattr.lime(f, n_samples=40, generator=1)(x)
    ref = xattr.lime(f, n_samples=40, generator=1, interpretable_model=Lasso(alpha=0.01, tol=1e-14, max_iter=1_000_000))(x)
    torch.testing.assert_close(ours, ref, atol=1e-7, rtol=1e-6)


def test_no_samples_or_no_variation_give_zero():
    X, y, w = lime_like(7, 2, 3, 16)
    X[0] = 1.0  # every sample the same coalition: no variation, beta = 0
    coef, intercept = xattr.lasso(0.01)(X, y, w)
    assert (coef[0] == 0).all()
    torch.testing.assert_close(intercept[0], (w[0] @ y[0]) / w[0].sum())
    big, _ = xattr.lasso(1e3)(X, y, w)
    assert (big == 0).all()


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
def test_coalitions_are_held_as_bool(method):
    """Peak live tensor bytes during a call: the (B, N, F) coalitions as bool (1 byte each) plus a
    few budgets; before, they were held in the default dtype (4 bytes each, and LIME made a
    second such copy for its similarity weights), which alone exceeds the bound."""
    B, N, F, budget = 16, 1000, 32, 100_000
    g = torch.Generator().manual_seed(0)
    W, x = torch.randn(F, generator=g), torch.randn(B, F, generator=g)
    fn = getattr(xattr, method)(lambda v: torch.tanh(v) @ W, n_samples=N, generator=0, memory_budget=budget)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kernel_shap's one-example systems exceed the budget: warned
        with LiveBytes() as seen:
            fn(x)
    assert seen.peak < 4 * B * N * F


def test_path_fits_within_the_lasso_fit_budget():
    """LIME with the path (16 samples, 64 features): the call's live tensors stay within one
    example's documented lasso systems (`fit_bytes`) plus one budget."""
    B, N, F, budget = 8, 16, 64, 100_000
    g = torch.Generator().manual_seed(0)
    W, x = torch.randn(F, generator=g), torch.randn(B, F, generator=g)
    fn = xattr.lime(lambda v: torch.tanh(v) @ W, n_samples=N, generator=0, memory_budget=budget)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one example's systems exceed the budget: warned
        with LiveBytes() as seen:
            fn(x)
    assert seen.peak <= xattr.lasso().fit_bytes(F, 1) + budget


# Between F / 2 and F samples: proximal gradient with steps from a tighter eigenvalue bound, and
# active-set corrections that go on while they lower the KKT violations (NOTE: [Batched surrogate
# fits]). The same minimiser as scikit-learn's, in fewer steps than before.

MID_CASES = [(0, 2, 48, 64), (1, 2, 96, 128), (2, 1, 160, 256)]


@pytest.mark.parametrize("seed, B, N, F", MID_CASES)
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("duplicate", [False, True])
def test_between_half_and_all_features_give_sklearns_minimiser(seed, B, N, F, fit_intercept, duplicate):
    X, y, w = lime_like(seed, B, N, F, K=2, duplicate=duplicate)
    unique_seen = _fits_like_sklearn(X, y, w, 0.01, fit_intercept)
    if not duplicate:
        assert unique_seen == 2 * B


def sklearn_coef(X, y, w, alpha=0.01):
    """scikit-learn's coefficients for output 0 of every example, (B, F)."""
    out = []
    for b in range(X.shape[0]):
        ref = Lasso(alpha=alpha, tol=1e-14, max_iter=1_000_000)
        out.append(ref.fit(X[b].numpy(), y[b, :, 0].numpy(), sample_weight=w[b].numpy()).coef_)
    return np.stack(out)


def test_first_support_corrected_past_three_times():
    """300 samples over 256 features: the first step's support is several active-set corrections
    from the answer. The corrections go on while they lower the count of KKT violations (here 4
    to 6 of them), so one proximal-gradient step suffices; with at most three, as before, this
    took ~40 more steps (max_iter=1: 'did not converge')."""
    X, y, w = lime_like(0, 4, 300, 256)
    X, y, w = X[[0, 1, 3]], y[[0, 1, 3]], w[[0, 1, 3]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        coef, _ = xattr.lasso(0.01, max_iter=1)(X, y, w)
    np.testing.assert_allclose(coef[:, 0].numpy(), sklearn_coef(X, y, w), atol=1e-7)


def test_between_half_and_all_features_take_fewer_steps():
    """96 samples over 128 features: the exact minimiser within 60 steps (here 40; before: 100,
    the step set by Gershgorin's bound on G's largest eigenvalue, 3-4x it for LIME's problems)."""
    X, y, w = lime_like(0, 2, 96, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        coef, _ = xattr.lasso(0.01, max_iter=60)(X, y, w)
    np.testing.assert_allclose(coef[:, 0].numpy(), sklearn_coef(X, y, w), atol=1e-7)


@pytest.mark.parametrize("scale", [1e-200, 1.0, 1e200])
def test_eigenvalue_bound(scale):
    """The step's bound is an upper bound on the largest eigenvalue (no overflow at any scale),
    and within 10% of it on a LIME-like Gram matrix."""
    from xattr._src.solvers import _tighter

    X, _, w = lime_like(8, 3, 200, 256)
    Xc = X - (w[..., None] * X).sum(1, keepdim=True) / w.sum(1)[:, None, None]
    gram = Xc.transpose(1, 2) @ (w[..., None] * Xc) / w.sum(1)[:, None, None] * scale
    gram = torch.cat([gram, torch.zeros(1, 256, 256, dtype=D)])
    gershgorin = gram.abs().sum(-1).amax(-1)
    bound = _tighter(gram, gershgorin)
    top = torch.linalg.eigvalsh(gram)[:, -1]
    assert torch.isfinite(bound).all() and (bound <= gershgorin).all() and bound[-1] == 0
    assert (bound[:-1] >= top[:-1] * (1 - 1e-12)).all() and (bound[:-1] <= 1.1 * top[:-1]).all()
