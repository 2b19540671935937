"""Conformance with shapiq 1.4.1 (Fumagalli, Muschalik et al.: the authors' package of SII, STII,
FSII and k-SII), run live; every test skips where shapiq is not installed (CI). SAGE against
sage-importance: test_vs_sage_importance.py.

The game is xattr's: v(S) = the model with the features outside S at the baseline. shapiq takes
it as a function of a boolean coalition matrix (`shapiq_game`), or builds it itself with its
`BaselineImputer`. shapiq's `InteractionValues` holds every set of 0..order players, the empty
set included, keyed by sorted tuples; xattr's `Interactions` holds the sets of 1..order and
v({}) apart (`baseline_output`). `from_shapiq` reads shapiq's values at xattr's keys.

Agreements, to float64 rounding: SII, STII and k-SII at orders 1..4; the efficient indices at
order F are the Moebius transform; the sampled estimators of both are exact at the full budget.
Differences, each pinned by a test (docs/other_libraries.md, "shapiq and sage-importance"):
  * FSII: shapiq solves the Faith-SHAP least squares with a weight of 1e8 ("big M") on the empty
    and the full coalition where the definition (Tsai et al. 2023) puts infinity, i.e. an exact
    constraint; so its FSII misses efficiency by c / M. xattr solves the constrained problem
    exactly (a hand-written KKT solve agrees with it to rounding).
  * The empty set: shapiq stores v({}) there for k-SII, STII and FSII, but for SII at order >= 2
    the SII of the empty set (the average of v over a size-uniform coalition), and at order 1 it
    renames SII and k-SII to "SV" and stores v({}).
  * shapiq's `BaselineImputer` normalises the game (v(S) - v({}), baseline_value 0) when given
    background rows, not when given one baseline row.
  * SHAPIQ(index="FSII") estimates the top order only (orders below are left out).
"""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr

shapiq = pytest.importorskip("shapiq")

D = torch.float64
INDICES = ("SII", "STII", "FSII", "k-SII")
BIG_M_TOL = 1e-6  # FSII: shapiq's big-M penalty (test_fsii_big_m_misses_efficiency_by_one_over_m)


def table_model(seed: int, n: int):
    """A random set function as a model over {0, 1}^n inputs: with x = ones and the baseline 0,
    xattr's game is v(S) = table[sum of 2^i over i in S]. Returns (model, x, table)."""
    table = torch.randn(2**n, generator=torch.Generator().manual_seed(seed), dtype=D)
    weights = 2 ** torch.arange(n)

    def model(a):
        return table[(a.round().long() * weights).sum(-1)]

    return model, torch.ones(1, n, dtype=D), table


def mlp_model(seed: int, n: int):
    """A tiny tanh MLP of n features, one output; x and baseline drawn from the seed."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(n, 12), nn.Tanh(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 1)).to(D).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x, base = torch.randn(1, n, generator=g, dtype=D), torch.randn(1, n, generator=g, dtype=D)

    def model(a):
        return net(a)[:, 0]

    return model, x, base


def shapiq_game(f, x: torch.Tensor, base: torch.Tensor):
    """xattr's game for shapiq: a boolean coalition matrix (C, n) -> v (C,), row by row."""

    def game(coalitions):
        z = torch.as_tensor(np.atleast_2d(np.asarray(coalitions, dtype=bool)))  # some approximators pass one (F,)
        with torch.no_grad():
            return f(torch.where(z, x[0], base[0])).detach().numpy()

    return game


def from_shapiq(iv, keys) -> torch.Tensor:
    """shapiq's values at xattr's keys (sets of 1..order players, sorted tuples). A set missing
    from shapiq's lookup is 0 (its aggregation drops exact zeros)."""
    return torch.tensor([iv[k] for k in keys], dtype=D)


def xattr_values(inter) -> tuple[list, torch.Tensor]:
    d = inter.to_dict()
    return list(d), torch.stack([v[0] for v in d.values()])


def brute_v(f, x, base, s) -> float:
    """v(S), one model call."""
    z = torch.zeros(x.shape[1], dtype=torch.bool)
    z[list(s)] = True
    with torch.no_grad():
        return float(f(torch.where(z, x[0], base[0])[None])[0])


def close(a, b, tol):
    scale = max(1.0, float(b.abs().max()))
    diff = float((a - b).abs().max())
    assert diff <= tol * scale, (diff, scale)


GAMES = {
    "table": lambda: table_model(3, 6)[:2] + (torch.zeros(1, 6, dtype=D),),
    "mlp": lambda: mlp_model(0, 7),
}


# ------------------------------------------------------------------ exact indices ---------------------------


@pytest.mark.parametrize("game", list(GAMES))
@pytest.mark.parametrize("index", INDICES)
def test_exact_indices_equal_shapiq(game, index):
    f, x, base = GAMES[game]()
    n = x.shape[1]
    computer = shapiq.ExactComputer(shapiq_game(f, x, base), n_players=n)
    for order in (1, 2, 3, 4):
        inter = xattr.shapley_interactions(f, index=index, order=order, baselines=base)(x)
        keys, ours = xattr_values(inter)
        iv = computer(index, order)
        # shapiq holds the same sets, and the empty one
        assert set(iv.interaction_lookup) <= set(keys) | {()}
        assert len(keys) == sum(math.comb(n, j) for j in range(1, order + 1))
        close(ours, from_shapiq(iv, keys), BIG_M_TOL if index == "FSII" else 1e-12)


@pytest.mark.parametrize("index", ("k-SII", "STII", "FSII"))
def test_efficient_indices_store_the_baseline_at_the_empty_set(index):
    f, x, base = mlp_model(1, 6)
    v_empty, v_full = brute_v(f, x, base, ()), brute_v(f, x, base, range(6))
    computer = shapiq.ExactComputer(shapiq_game(f, x, base), n_players=6)
    for order in (2, 3):
        iv = computer(index, order)
        inter = xattr.shapley_interactions(f, index=index, order=order, baselines=base)(x)
        assert abs(iv[()] - v_empty) < 1e-12 and abs(iv.baseline_value - v_empty) < 1e-12
        assert abs(float(inter.baseline_output[0]) - v_empty) < 1e-12
        # shapiq: every value, the empty set's included, sums to v(N); xattr: the sets of 1..k to v(N) - v({})
        assert abs(float(np.sum(iv.values)) - v_full) < (BIG_M_TOL if index == "FSII" else 1e-12)
        assert abs(float(inter.total()[0]) - (v_full - v_empty)) < 1e-12


def test_sii_empty_set_is_the_sii_of_the_empty_set():
    """shapiq's SII at order >= 2 stores, at (), the SII of the empty set: sum over S of
    |S|! (n - |S|)! / (n + 1)! v(S) (Grabisch & Roubens with T = {}); at order 1 it renames the
    index "SV" (k-SII too) and stores v({})."""
    f, x, base = mlp_model(2, 5)
    n = 5
    brute = sum(math.factorial(k) * math.factorial(n - k) / math.factorial(n + 1) * brute_v(f, x, base, s)
                for k in range(n + 1) for s in itertools.combinations(range(n), k))  # fmt: skip
    v_empty = brute_v(f, x, base, ())
    computer = shapiq.ExactComputer(shapiq_game(f, x, base), n_players=n)
    for order in (2, 3):
        iv = computer("SII", order)
        assert iv.index == "SII" and abs(iv[()] - brute) < 1e-12 and abs(iv.baseline_value - v_empty) < 1e-12
    assert abs(brute - v_empty) > 1e-3  # the two conventions differ on this game
    for index in ("SII", "k-SII"):
        iv = computer(index, 1)
        assert iv.index == "SV" and abs(iv[()] - v_empty) < 1e-12


def test_order_n_is_the_moebius_transform():
    f, x, base = table_model(5, 5)[:2] + (torch.zeros(1, 5, dtype=D),)
    computer = shapiq.ExactComputer(shapiq_game(f, x, base), n_players=5)
    moebius = computer("Moebius", 5)
    # brute force: m(S) = sum over L subset of S of (-1)^(|S| - |L|) v(L)
    for s in [(0,), (1, 3), (0, 2, 4), (0, 1, 2, 3, 4)]:
        m = sum((-1) ** (len(s) - k) * brute_v(f, x, base, sub) for k in range(len(s) + 1)
                for sub in itertools.combinations(s, k))  # fmt: skip
        assert abs(moebius[s] - m) < 1e-12
    assert abs(moebius[()] - brute_v(f, x, base, ())) < 1e-12
    for index in ("k-SII", "STII", "FSII"):
        keys, ours = xattr_values(xattr.shapley_interactions(f, index=index, order=5, baselines=base)(x))
        close(ours, from_shapiq(moebius, keys), 1e-12)


def test_grouped_features_per_example_equal_shapiq_on_the_grouped_game():
    """feature_mask groups inputs into players, per example: example 1 lacks id 3, whose sets get
    0; every other set is shapiq's index of that example's game of its own players."""
    f, x1, base1 = mlp_model(9, 6)
    x, base = torch.cat([x1, x1.flip(1)]), base1.expand(2, -1)
    mask = torch.tensor([[0, 0, 1, 2, 3, 4], [0, 1, 1, 2, 4, 4]])
    for index in ("k-SII", "FSII"):
        inter = xattr.shapley_interactions(f, index=index, order=2, baselines=base, feature_mask=mask)(x)
        for r in range(2):
            ids = sorted(set(mask[r].tolist()))

            def game(coalitions, r=r, ids=ids):
                z = torch.zeros(len(coalitions), 6, dtype=torch.bool)
                for p, i in enumerate(ids):
                    z[:, mask[r] == i] = torch.as_tensor(np.asarray(coalitions, dtype=bool)[:, [p]])
                with torch.no_grad():
                    return f(torch.where(z, x[r], base[r])).numpy()

            iv = shapiq.ExactComputer(game, n_players=len(ids))(index, 2)
            for key, value in inter.to_dict().items():
                want = iv[tuple(ids.index(i) for i in key)] if set(key) <= set(ids) else 0.0
                assert abs(float(value[r]) - want) < (BIG_M_TOL if index == "FSII" else 1e-12)
            assert (3 in ids) == (r == 0)


# ------------------------------------------------------------------ FSII: big M -----------------------------


def brute_fsii(f, x, base, n: int, order: int) -> dict:
    """Faith-SHAP by its definition, slowly: minimise sum over proper coalitions L of mu(|L|)
    (v(L) - v({}) - sum_{T subset of L} E(T))^2, mu(s) = (n - 1) / (C(n, s) s (n - s)), subject to
    sum_T E(T) = v(N) - v({}) (the infinite weights on {} and N), by the KKT system, built by loops."""
    sets = [t for j in range(1, order + 1) for t in itertools.combinations(range(n), j)]
    p = len(sets)
    v0, vn = brute_v(f, x, base, ()), brute_v(f, x, base, range(n))
    a, b = np.zeros((p, p)), np.zeros(p)
    for k in range(1, n):
        mu = (n - 1) / (math.comb(n, k) * k * (n - k))
        for coalition in itertools.combinations(range(n), k):
            row = np.array([float(set(t) <= set(coalition)) for t in sets])
            a += mu * np.outer(row, row)
            b += mu * row * (brute_v(f, x, base, coalition) - v0)
    kkt = np.block([[2 * a, np.ones((p, 1))], [np.ones((1, p)), np.zeros((1, 1))]])
    sol = np.linalg.solve(kkt, np.concatenate([2 * b, [vn - v0]]))
    return dict(zip(sets, sol[:p]))


def test_fsii_big_m_misses_efficiency_by_one_over_m():
    f, x, base = mlp_model(4, 6)
    v_empty, v_full = brute_v(f, x, base, ()), brute_v(f, x, base, range(6))
    inter = xattr.shapley_interactions(f, index="FSII", order=2, baselines=base)(x)
    keys, ours = xattr_values(inter)
    brute = brute_fsii(f, x, base, 6, 2)
    close(ours, torch.tensor([brute[k] for k in keys], dtype=D), 1e-12)  # the definition, exactly
    assert abs(float(inter.total()[0]) - (v_full - v_empty)) < 1e-13
    gaps = {}
    for big_m in (1e6, 1e8):
        computer = shapiq.ExactComputer(shapiq_game(f, x, base), n_players=6)
        computer._big_M = big_m  # shapiq's default is 1e8 (10e7)
        iv = computer("FSII", 2)
        gaps[big_m] = float(np.sum(from_shapiq(iv, keys).numpy())) - (v_full - v_empty)
        close(ours, from_shapiq(iv, keys), 1e3 / big_m)
    assert shapiq.ExactComputer(shapiq_game(f, x, base), n_players=6)._big_M == 1e8
    assert abs(gaps[1e6]) > 1e-12  # not efficient at a finite M ...
    assert abs(gaps[1e6] / gaps[1e8] - 100) < 1.0  # ... by c / M


# ------------------------------------------------------------------ shapiq's own game -----------------------


def test_baseline_imputer_game():
    """shapiq's `BaselineImputer` (its tabular game) given background rows takes their mean as the
    baseline and normalises the game (v(S) - v({}), baseline value 0, normalize=True by default);
    given one baseline row it does not normalise, and its `empty_prediction` reads 0.0, not
    f(baseline) (the game's v({}) is still f(baseline)). The indices of orders >= 1 are xattr's
    either way."""
    f, x, base = mlp_model(6, 6)

    def numpy_model(a):
        with torch.no_grad():
            return f(torch.as_tensor(np.asarray(a, dtype=np.float64))).numpy()  # the mean baseline is an object array

    v_empty = brute_v(f, x, base, ())
    z = np.zeros((2, 6), dtype=bool)
    z[1, [1, 4]] = True
    rows = torch.cat([base - 1.0, base + 1.0]).numpy()  # mean: the baseline
    normalised = shapiq.BaselineImputer(numpy_model, rows, x.numpy())
    plain = shapiq.BaselineImputer(numpy_model, base[0].numpy(), x.numpy())
    assert abs(normalised.empty_prediction - v_empty) < 1e-12 and abs(normalised.normalization_value - v_empty) < 1e-12
    assert plain.empty_prediction == 0.0 and plain.normalization_value == 0.0
    truth = np.array([v_empty, brute_v(f, x, base, (1, 4))])
    assert np.abs(normalised(z) - (truth - v_empty)).max() < 1e-12
    assert np.abs(plain(z) - truth).max() < 1e-12
    inter = xattr.shapley_interactions(f, index="k-SII", order=2, baselines=base)(x)
    keys, ours = xattr_values(inter)
    for imputer, baseline_value in ((normalised, 0.0), (plain, v_empty)):
        iv = shapiq.ExactComputer(imputer, n_players=6)("k-SII", 2)
        close(ours, from_shapiq(iv, keys), 1e-12)
        assert abs(iv.baseline_value - baseline_value) < 1e-12
    assert abs(float(inter.baseline_output[0]) - v_empty) < 1e-12


# ------------------------------------------------------------------ sampled estimators ----------------------


def test_budget_is_model_rows_in_both():
    """xattr's n_samples and shapiq's budget both count game evaluations, the empty and the full
    coalition included: equal budgets are equal model rows (shapiq's may use fewer)."""
    f, x, base = mlp_model(7, 6)
    rows = [0]

    def counted(a):
        rows[0] += a.shape[0]
        return f(a)

    for estimator in ("regression", "stratified"):
        rows[0] = 0
        xattr.shapley_interaction_sampling(counted, n_samples=40, estimator=estimator, baselines=base, generator=0)(x)
        assert rows[0] == 40
    for approximator in (shapiq.KernelSHAPIQ(6, 2, "k-SII", random_state=0), shapiq.SHAPIQ(6, 2, "k-SII", random_state=0)):
        rows[0] = 0
        approximator.approximate(40, shapiq_game(counted, x, base))
        assert rows[0] == 40


@pytest.mark.parametrize("index", INDICES)
def test_sampled_estimators_exact_at_full_budget(index):
    f, x, base = mlp_model(8, 6)
    n, game = 6, shapiq_game(f, x, base)
    keys, exact = xattr_values(xattr.shapley_interactions(f, index=index, order=2, baselines=base)(x))
    for estimator in ("regression", "stratified"):
        est = xattr.shapley_interaction_sampling(f, index=index, order=2, n_samples=2**n, estimator=estimator,
                                                 baselines=base, generator=0)(x)  # fmt: skip
        close(xattr_values(est)[1], exact, 1e-12)
    theirs = from_shapiq(shapiq.SHAPIQ(n, 2, index, random_state=0).approximate(2**n, game), keys)
    if index == "FSII":  # SHAPIQ estimates FSII's top order only: the main effects are left out (0)
        top = torch.tensor([len(k) == 2 for k in keys])
        close(theirs[top], exact[top], 1e-12)
        assert float(theirs[~top].abs().max()) == 0.0 and float(exact[~top].abs().max()) > 1e-3
        close(from_shapiq(shapiq.RegressionFSII(n, 2, random_state=0).approximate(2**n, game), keys), exact, BIG_M_TOL)
    else:
        close(theirs, exact, 1e-12)
    if index in ("SII", "k-SII"):  # KernelSHAP-IQ: a big-M regression too
        kernel = shapiq.KernelSHAPIQ(n, 2, index, random_state=0).approximate(2**n, game)
        close(from_shapiq(kernel, keys), exact, BIG_M_TOL)


# ------------------------------------------------------------------ properties ------------------------------


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(2, 5), index=st.sampled_from(INDICES), data=st.data())
def test_random_games_agree_with_shapiq(seed, n, index, data):
    """Any set function (a random table), any order up to n: xattr's exact index is shapiq's, and
    the efficient ones sum to v(N) - v({}) in xattr and (with the empty set's v({})) to v(N) in shapiq."""
    order = data.draw(st.integers(1, n))
    f, x, table = table_model(seed, n)
    base = torch.zeros(1, n, dtype=D)
    inter = xattr.shapley_interactions(f, index=index, order=order, baselines=base)(x)
    keys, ours = xattr_values(inter)
    iv = shapiq.ExactComputer(shapiq_game(f, x, base), n_players=n)(index, order)
    close(ours, from_shapiq(iv, keys), BIG_M_TOL if index == "FSII" else 1e-12)
    scale = max(1.0, float(table.abs().max()))
    if index != "SII":
        assert abs(float(inter.total()[0]) - float(table[-1] - table[0])) < 1e-12 * scale
        assert abs(float(np.sum(iv.values)) - float(table[-1])) < (BIG_M_TOL if index == "FSII" else 1e-12) * scale
