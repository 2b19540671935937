"""The regression estimator of Shapley interactions (NOTE: [Interaction regression]): exact at a
full budget, the Faith-SHAP fit against numpy's weighted least squares on the same coalitions,
the surrogate-plus-correction against brute force, efficiency, convergence, determinism."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_shapley_interactions import INDICES, as_dict, close, inputs, mlp, reference, subsets, table_game, table_model
from test_shapley_interactions_sampled import unit_weights

import xattr
from xattr._src.kernel_sampling import paired_coalitions
from xattr._src.masks import FeatureSet
from xattr._src.sampling import row_seeds, streams
from xattr._src.surrogate_fits import fit_budget

D = torch.float64


def sample(f, **kw):
    return xattr.shapley_interaction_sampling(f, estimator="regression", **kw)


def drawn(n, budget, seed, rows):
    """Each example's coalitions (as frozensets) and weights, as the estimator draws them."""
    stream = streams(seed, 1)[0]
    z, w = paired_coalitions(FeatureSet(None, None, n), rows, budget, stream, row_seeds(stream, rows), torch.device("cpu"),
                             D, fit_budget(None, torch.device("cpu")))  # fmt: skip
    out = []
    for e in range(rows):
        ze = z[e if z.shape[0] > 1 else 0, 1:]
        out.append([(frozenset(torch.nonzero(zm)[:, 0].tolist()), float(wm)) for zm, wm in zip(ze, w[e])])
    return out


def faith_fit(v, n, order, coalitions):
    """The constrained weighted least squares written out with numpy: the design [T subset of L]
    over the sets of 1..order features, the KKT system of min sum w (v(L) - v({}) - x_L.E)^2
    subject to sum E = v(all) - v({}); where fewer distinct coalitions than unknowns leave it
    singular, the constraint is eliminated (E = t/p + P u, P the projection off the ones) and
    numpy's minimum-norm least squares gives u. Returns {T: E(T)}."""
    terms = [frozenset(c) for r in range(1, order + 1) for c in itertools.combinations(range(n), r)]
    empty, full = v[frozenset()], v[frozenset(range(n))]
    X = np.array([[float(T <= L) for T in terms] for L, _ in coalitions])
    y = np.array([v[L] - empty for L, _ in coalitions])
    W = np.diag([w for _, w in coalitions])
    ones = np.ones((1, len(terms)))
    kkt = np.block([[X.T @ W @ X, ones.T], [ones, np.zeros((1, 1))]])
    if np.linalg.matrix_rank(kkt) == len(kkt):
        sol = np.linalg.solve(kkt, np.concatenate([X.T @ W @ y, [full - empty]]))
        return dict(zip(terms, sol[: len(terms)]))
    p, t = len(terms), full - empty
    P = np.eye(p) - np.ones((p, p)) / p
    root = np.sqrt(np.diag(W))[:, None]
    u = np.linalg.lstsq(root * (X @ P), root[:, 0] * (y - t / p * X.sum(1)), rcond=1e-10)[0]
    return dict(zip(terms, t / p + P @ u))


def shapley_kernel(n, s):
    return (n - 1) / (math.comb(n, s) * s * (n - s))


def reference_regression(index, order, v, n, coalitions):
    """The estimate written out: FSII the fit itself; the others the brute-force index of the
    polynomial game g(L) = v({}) + sum_{T subset of L} E(T) over all 2^n coalitions, plus the
    residual v - g summed over the drawn coalitions with brute-force weights and w_L / mu(|L|)."""
    E = faith_fit(v, n, order, coalitions)
    if index == "FSII":
        return E
    g = {S: v[frozenset()] + sum(e for T, e in E.items() if T <= S) for S in subsets(range(n))}
    est = reference(index, g, n, order)
    weight = unit_weights(index, n, order)
    for L, w in coalitions:
        if w and 0 < len(L) < n:
            for T in est:
                est[T] += w / shapley_kernel(n, len(L)) * weight[L][T] * (v[L] - g[L])
    return est


def game_of(model, x, b):
    n = x.shape[0]
    with torch.no_grad():
        keep = {S: torch.tensor([i in S for i in range(n)]) for S in subsets(range(n))}
        return {S: float(model(torch.where(z, x, b)[None])[0, 0]) for S, z in keep.items()}


@pytest.mark.parametrize("index", INDICES)
def test_matches_the_estimate_written_out(index):
    model = mlp(40)
    x, b = inputs(40, (2, 5)), inputs(41, (2, 5))
    for budget in (22, 28):  # 20 coalitions of rank 14 (singular), or 26 of full rank, for 15 unknowns
        inter = sample(xattr.target(model, 0), index=index, order=2, n_samples=budget, baselines=b, generator=3)(x)
        for e, coalitions in enumerate(drawn(5, budget, 3, 2)):
            want = reference_regression(index, 2, game_of(model, x[e], b[e]), 5, coalitions)
            close(as_dict(inter, e), want, tol=1e-9)


@pytest.mark.parametrize("index", INDICES)
def test_exact_when_the_budget_covers_every_coalition(index):
    f = xattr.target(mlp(42), 0)
    x = inputs(42, (2, 5))
    for order in (1, 2, 3):
        exact = xattr.shapley_interactions(f, index=index, order=order)(x)
        for budget in (32, 50):
            est = sample(f, index=index, order=order, n_samples=budget, generator=0)(x)
            for j in range(1, order + 1):
                torch.testing.assert_close(est.values(j), exact.values(j), atol=1e-12, rtol=0)
    masks = torch.tensor([[0, 0, 1, 1, 2], [4, 4, 4, 1, 1]])  # per-example feature sets: 3 and 2 features
    exact = xattr.shapley_interactions(f, index=index, feature_mask=masks)(x)
    est = sample(f, index=index, n_samples=8, feature_mask=masks, generator=0)(x)
    for j in (1, 2):
        torch.testing.assert_close(est.values(j), exact.values(j), atol=1e-12, rtol=0)


table_games = st.lists(st.floats(-3, 3, allow_nan=False), min_size=32, max_size=32)


@pytest.mark.filterwarnings("ignore:n_samples=.*minimum-norm:UserWarning")  # budgets below the unknowns on purpose
@settings(max_examples=10, deadline=None, derandomize=True)
@given(table=table_games, index=st.sampled_from(["k-SII", "STII", "FSII"]), order=st.integers(1, 3),
       budget=st.integers(2, 40), seed=st.integers(0, 2**31))  # fmt: skip
def test_efficient_at_every_budget(table, index, order, budget, seed):
    inter = sample(table_model(table), index=index, order=order, n_samples=budget, generator=seed)(torch.ones(1, 5, dtype=D))
    torch.testing.assert_close(inter.total(), torch.tensor([table[-1] - table[0]], dtype=D), atol=1e-9, rtol=0)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(t1=table_games, t2=table_games, a=st.floats(-2, 2), c=st.floats(-2, 2), index=st.sampled_from(INDICES))
def test_linear_in_the_game_for_fixed_draws(t1, t2, a, c, index):
    x = torch.ones(1, 5, dtype=D)
    run = lambda t: sample(table_model(t), index=index, n_samples=20, generator=9)(x)  # noqa: E731
    mixed = [a * p + c * q for p, q in zip(t1, t2)]
    for j in (1, 2):
        torch.testing.assert_close(run(mixed).values(j), a * run(t1).values(j) + c * run(t2).values(j), atol=1e-9, rtol=0)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(dividends=st.lists(st.floats(-2, 2, allow_nan=False), min_size=15, max_size=15), index=st.sampled_from(INDICES),
       seed=st.integers(0, 2**31))  # fmt: skip
def test_a_game_of_degree_order_is_recovered_from_few_coalitions(dividends, index, seed):
    # v(S) = sum of the dividends of the sets of 1..2 features in S: the surrogate fits it exactly
    # from 24 of the 32 coalitions (15 unknowns), and the residual is 0, for every index
    terms = [frozenset(c) for r in (1, 2) for c in itertools.combinations(range(5), r)]
    table = [sum(d for T, d in zip(terms, dividends) if all(c >> i & 1 for i in T)) for c in range(32)]
    x = torch.ones(1, 5, dtype=D)
    est = sample(table_model(table), index=index, n_samples=26, generator=seed)(x)
    exact = xattr.shapley_interactions(table_model(table), index=index)(x)
    for j in (1, 2):
        torch.testing.assert_close(est.values(j), exact.values(j), atol=1e-9, rtol=0)
    close(as_dict(exact), reference(index, table_game(table), 5, 2), tol=1e-9)


@pytest.mark.parametrize("index", ["k-SII", "FSII"])
def test_converges_with_the_budget_and_beats_the_stratified_estimator(index):
    # R copies of one example draw R independent estimates; a 6-feature MLP, 64 coalitions in all
    f = xattr.target(mlp(43, d_in=6), 0)
    x = inputs(43, (1, 6))
    exact = xattr.shapley_interactions(f, index=index)(x)
    want = torch.cat([exact.main_effects[0], exact.pairs[0].flatten()])

    def rmse(budget, estimator):
        method = xattr.shapley_interaction_sampling(f, index=index, n_samples=budget, estimator=estimator, generator=1)
        est = method(x.expand(200, -1))
        got = torch.cat([est.main_effects, est.pairs.flatten(1)], 1)
        return float((got - want).pow(2).mean().sqrt())

    errors = [rmse(b, "regression") for b in (24, 40, 56)]
    assert errors[0] > errors[1] > errors[2]  # measured (k-SII): 0.0083, 0.00055, 0.00023; stratified 0.063, 0.038, 0.030
    assert all(rmse(b, "regression") < 0.5 * rmse(b, "stratified") for b in (24, 40))


def test_beats_the_stratified_estimator_on_a_game_of_higher_order():
    # only interactions of orders 3 and 4: the degree-2 fit has nothing to carry, the residual is the game
    def f(x):
        return x[:, 0] * x[:, 1] * x[:, 2] * x[:, 3] + x[:, 4] * x[:, 5] * x[:, 0]

    x = torch.randn(1, 6, dtype=D, generator=torch.Generator().manual_seed(0)) + 1
    exact = xattr.shapley_interactions(f)(x)
    want = torch.cat([exact.main_effects[0], exact.pairs[0].flatten()])
    for budget in (24, 40, 56):
        errors = {}
        for estimator in ("regression", "stratified"):
            est = xattr.shapley_interaction_sampling(f, n_samples=budget, estimator=estimator, generator=1)(x.expand(200, -1))
            got = torch.cat([est.main_effects, est.pairs.flatten(1)], 1)
            errors[estimator] = float((got - want).pow(2).mean().sqrt())
        assert errors["regression"] < errors["stratified"] / 2  # measured: 0.39 / 1.40, 0.30 / 0.78, 0.12 / 0.59


@pytest.mark.filterwarnings("ignore:n_samples=.*minimum-norm:UserWarning")  # budgets below the unknowns on purpose
def test_seeds_batches_chunks_and_outputs():
    model = mlp(44, out=2)
    f = xattr.target(model, 1)
    x = inputs(44, (3, 5))
    method = sample(f, index="k-SII", n_samples=14, generator=7)
    a = method(x)
    torch.testing.assert_close(method(x).pairs, a.pairs, atol=0, rtol=0)
    torch.testing.assert_close(method(x[:2]).pairs, a.pairs[:2], atol=1e-12, rtol=0)  # seeds go by position
    chunked = sample(f, index="k-SII", n_samples=14, generator=7, chunk_size=5)(x)
    torch.testing.assert_close(chunked.pairs, a.pairs, atol=1e-12, rtol=0)
    other = sample(f, index="k-SII", n_samples=14, generator=8)(x)
    assert not torch.allclose(other.pairs, a.pairs)
    both = sample(xattr.target(model, xattr.outputs()), index="k-SII", n_samples=14, generator=7)(x)
    assert both.pairs.shape == (3, 2, 5, 5)
    torch.testing.assert_close(both.pairs[:, 1], a.pairs, atol=1e-12, rtol=0)  # the same draws for every output
    g = sample(f, n_samples=14, generator=torch.Generator().manual_seed(3))(x)
    assert g.pairs.shape == (3, 5, 5)


def test_the_default_estimator_is_the_regression():
    f = xattr.target(mlp(45), 0)
    x = inputs(45, (2, 5))
    default = xattr.shapley_interaction_sampling(f, n_samples=20, generator=2)(x)
    torch.testing.assert_close(default.pairs, sample(f, n_samples=20, generator=2)(x).pairs, atol=0, rtol=0)


def test_too_few_coalitions_for_the_unknowns_warn():
    f = xattr.target(mlp(47), 0)
    x = inputs(47, (1, 5))
    with pytest.warns(UserWarning, match="n_samples >= 17"):  # 15 unknowns, 2 more for the empty and full coalitions
        sample(f, n_samples=16, generator=0)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample(f, n_samples=17, generator=0)(x)
        sample(f, n_samples=32, generator=0)(x)  # every coalition
        sample(lambda t: t.sum(-1), n_samples=4, generator=0)(torch.ones(1, 2))  # 2^2 coalitions: exact


def test_bad_arguments_are_refused():
    f = xattr.target(mlp(46), 0)
    with pytest.raises(ValueError, match="estimator must be one of"):
        xattr.shapley_interaction_sampling(f, estimator="kernel")
    with pytest.raises(ValueError, match="p=4525 unknowns"):  # 30 + 435 + 4060 sets of 1..3 of 30 features
        sample(lambda x: x.sum(-1), order=3, n_samples=100, generator=0)(torch.ones(1, 30))
