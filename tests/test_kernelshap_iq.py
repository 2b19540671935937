"""``shapley_interaction_sampling(estimator="kernelshap_iq")``: KernelSHAP-IQ against the paper's
algorithm written out with numpy loops on the same coalitions, exactness at a full budget,
order 1 as KernelSHAP, the border-first plan, shapiq's KernelSHAPIQ (same coalitions, and
convergence), efficiency, symmetry and dummy on random games, and determinism."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_shapley_interactions import BERNOULLI, D, as_dict, close, inputs, mlp, subsets, table_model

import xattr
from xattr._src import kernel_sampling
from xattr._src.interaction_indices import combinations
from xattr._src.kernelshap_iq import border_count, border_plan, draw
from xattr._src.masks import FeatureSet
from xattr._src.sampling import row_seeds, streams


def kiq(f, **kw):
    return xattr.shapley_interaction_sampling(f, estimator="kernelshap_iq", **kw)


def drawn(n, budget, order, seed, rows):
    """Each example's coalitions (the empty one first) and their weights, as the estimator draws them."""
    stream = streams(seed, 1)[0]
    z, w = draw(FeatureSet(None, None, n), rows, budget, order, stream, row_seeds(stream, rows), torch.device("cpu"), 2**30)
    return [(z[e if z.shape[0] > 1 else 0], w[e]) for e in range(rows)]


# ---- the paper's algorithm written out ---------------------------------------------------------


def lam(k, t):
    """lambda_k(t) = sum_{r=1..t} C(t, r) B_{k-r}."""
    return sum(math.comb(t, r) * BERNOULLI[k - r] for r in range(1, t + 1))


def sii_weight(n, k, s, t):
    """The weight of v(L), |L| = s, |L & S| = t, in SII(S), |S| = k, read off the definition
    SII(S) = sum_{T outside S} |T|! (n - |T| - k)! / (n - k + 1)! sum_{A subset of S} (-1)^(k - |A|) v(T + A)."""
    return (-1) ** (k - t) * math.factorial(s - t) * math.factorial(n - s - k + t) / math.factorial(n - k + 1)


def kkt(a, c, rhs_a, rhs_c):
    """argmin of the quadratic with normal matrix a subject to c phi = rhs_c, from the KKT
    system by numpy's least squares (redundant constraints are consistent: any solution)."""
    p, q = a.shape[0], c.shape[0]
    m = np.block([[a, c.T], [c, np.zeros((q, q))]])
    return np.linalg.lstsq(m, np.concatenate([rhs_a, rhs_c]), rcond=None)[0][:p]


def reference_estimate(index, order, f1, x, b, z, w):
    """One example's KernelSHAP-IQ from its coalitions z (the empty one first) and weights w:
    the model called per coalition; per order k the Bernoulli design, the border (sizes < k or
    > n - k, the full coalition included) fitted first (k <= 2: its least-squares solutions;
    k >= 3: summed with SII's weights and held at 0), the interior by weighted least squares
    with mu_k, the residual carried to the next order; k-SII folded with the Bernoulli numbers."""
    n = x.shape[0]

    def v(L):
        keep = torch.tensor([i in L for i in range(n)])
        with torch.no_grad():
            return float(f1(torch.where(keep, x, b)[None]))

    coalitions = [frozenset(torch.nonzero(row)[:, 0].tolist()) for row in z[1:]] + [frozenset(range(n))]
    weights = [float(q) for q in w] + [0.0]
    v0 = v(frozenset())
    r = np.array([v(L) - v0 for L in coalitions])
    shapley_kernel = lambda s: (n - 1) / (math.comb(n, s) * s * (n - s))  # noqa: E731
    sii = {}
    for k in range(1, order + 1):
        sets = [frozenset(c) for c in itertools.combinations(range(n), k)]
        X = np.array([[lam(k, len(L & S)) for S in sets] for L in coalitions])
        border = np.array([len(L) < k or len(L) > n - k for L in coalitions])
        omega = np.array([wq * (1 / ((n - 2 * k + 1) * math.comb(n - 2 * k, len(L) - k))) / shapley_kernel(len(L))
                          if not edge else 0.0 for L, wq, edge in zip(coalitions, weights, border)])  # fmt: skip
        xi, xb = X[~border], X[border]
        a = xi.T @ (omega[~border, None] * xi)
        if k <= 2:
            phi = kkt(a, xb.T @ xb, xi.T @ (omega[~border] * r[~border]), xb.T @ r[border])
        else:
            phi0 = np.array([sum(sii_weight(n, k, len(L), len(L & S)) * r[i] for i, L in enumerate(coalitions) if border[i])
                             for S in sets])  # fmt: skip
            phi = phi0 + kkt(a, xb, xi.T @ (omega[~border] * r[~border]), np.zeros(len(xb)))
        sii.update(zip(sets, phi))
        r = r - X @ phi
    if index == "SII":
        return sii
    return {T: sum(BERNOULLI[len(S) - len(T)] * val for S, val in sii.items() if T <= S) for T in sii}


@pytest.mark.parametrize("index", ["SII", "k-SII"])
@pytest.mark.parametrize("order,budgets", [(1, (12, 30)), (2, (30, 60)), (3, (60, 100))])
def test_matches_the_papers_algorithm_written_out(index, order, budgets):
    model = mlp(40, d_in=7)
    x, b = inputs(40, (2, 7)), inputs(41, (2, 7))
    for budget in budgets:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the smaller budgets leave some fits singular (tested below)
            inter = kiq(xattr.target(model, 0), index=index, order=order, n_samples=budget, baselines=b, generator=3)(x)
        for e, (z, w) in enumerate(drawn(7, budget, order, 3, 2)):
            want = reference_estimate(index, order, lambda t: model(t)[0, 0], x[e], b[e], z, w)
            close(as_dict(inter, e), want, tol=1e-10)


@pytest.mark.parametrize("index", ["SII", "k-SII"])
def test_exact_when_the_budget_covers_every_coalition(index):
    f = xattr.target(mlp(42, d_in=6), 0)
    x = inputs(42, (2, 6))
    for order in (1, 2, 3):
        exact = xattr.shapley_interactions(f, index=index, order=order)(x)
        for budget in (64, 80):
            est = kiq(f, index=index, order=order, n_samples=budget, generator=0)(x)
            for j in range(1, order + 1):
                torch.testing.assert_close(est.values(j), exact.values(j), atol=1e-12, rtol=0)


def test_per_example_masks_at_a_full_budget_are_exact():
    f = xattr.target(mlp(43, d_in=6), 0)
    x = inputs(43, (2, 6))
    masks = torch.tensor([[0, 0, 1, 1, 2, 3], [5, 5, 5, 1, 1, 3]])
    est = kiq(f, index="k-SII", order=3, n_samples=16, feature_mask=masks, generator=0)(x)
    exact = xattr.shapley_interactions(f, index="k-SII", order=3, feature_mask=masks)(x)
    for j in (1, 2, 3):
        torch.testing.assert_close(est.values(j), exact.values(j), atol=1e-12, rtol=0)


@pytest.mark.parametrize("budget", [12, 20, 40, 90])
def test_order_one_is_kernel_shap(budget):
    # the paper's first order is KernelSHAP: with nothing forced the coalitions are kernel_shap(sampling="paired")'s
    f = xattr.target(mlp(44, d_in=7), 0)
    x, b = inputs(44, (3, 7)), inputs(45, (3, 7))
    est = kiq(f, index="SII", order=1, n_samples=budget, baselines=b, generator=9)(x)
    shap = xattr.kernel_shap(f, n_samples=budget, sampling="paired", baselines=b, generator=9, return_input_shape=False)(x)
    torch.testing.assert_close(est.main_effects, shap, atol=1e-12, rtol=0)
    # at order 2 the first order is KernelSHAP too, once the budget enumerates sizes 1 and F-1 anyway
    if kernel_sampling.size_plan(7, budget - 2).enumerated >= 1:
        assert border_plan(7, budget - 2, 2) == kernel_sampling.size_plan(7, budget - 2)
        two = kiq(f, index="SII", order=2, n_samples=budget, baselines=b, generator=9)(x)
        torch.testing.assert_close(two.main_effects, shap, atol=1e-12, rtol=0)


# ---- the coalitions ------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, derandomize=True)
@given(m=st.integers(2, 14), n_coalitions=st.integers(0, 5000), order=st.integers(1, 4))
def test_the_plan_enumerates_the_border_first(m, n_coalitions, order):
    need = border_count(m, order)
    if n_coalitions < need and n_coalitions < 2**m - 2:
        with pytest.raises(ValueError, match=f"n_samples >= {need + 2}"):
            border_plan(m, n_coalitions, order)
        return
    plan = border_plan(m, n_coalitions, order)
    assert plan.enumerated >= min(order - 1, m // 2)
    enumerated = sum(math.comb(m, s) for s in range(1, m) if min(s, m - s) <= plan.enumerated)
    assert enumerated + plan.left == n_coalitions  # the budget is spent
    assert border_count(m, order) == sum(math.comb(m, s) for s in range(1, m) if s < order or s > m - order)
    assert plan.pairs == (plan.left // 2 if plan.lo <= plan.hi else 0)
    if order == 1 or kernel_sampling.size_plan(m, n_coalitions).enumerated >= order - 1:
        assert plan == kernel_sampling.size_plan(m, n_coalitions)  # the paired sampler's own plan


def test_draws_keep_the_border_whole_and_sample_inside_it():
    n, order = 8, 3
    assert border_plan(n, 148, order).enumerated == order - 1  # the border enumerated, nothing more
    for z, w in drawn(n, 150, order, 5, 3):
        nb = border_count(n, order)
        border = {frozenset(torch.nonzero(r)[:, 0].tolist()) for r in z[1 : 1 + nb]}
        assert len(border) == nb and border == {L for L in subsets(range(n)) if 0 < len(L) < order or n - order < len(L) < n}
        sizes = z[1 + nb :].sum(-1)
        valid = w[nb:] > 0
        assert ((sizes[valid] >= order) & (sizes[valid] <= n - order)).all()
        assert not z[0].any() and valid.sum() >= 2
        pairs = z[1 + nb :: 2][: valid.sum() // 2], z[2 + nb :: 2][: valid.sum() // 2]
        assert torch.equal(pairs[0], ~pairs[1])  # drawn with their complements


# ---- shapiq's KernelSHAPIQ -----------------------------------------------------------------------


def shapiq_game(model, x):
    def game(coalitions):
        keep = torch.as_tensor(np.asarray(coalitions), dtype=torch.bool)
        with torch.no_grad():
            return model(torch.where(keep, x, torch.zeros_like(x)))[:, 0].double().numpy()

    return game


def test_shapiq_on_the_same_coalitions_gives_the_same_values():
    # shapiq's KernelSHAP-IQ routine on our coalitions and sampling weights: it stands in a weight of 1e8 for the
    # infinite one, solved here exactly, so the two agree to that weight's effect (measured 1e-8..2e-7)
    shapiq = pytest.importorskip("shapiq")
    from shapiq.approximator.regression.kernelshapiq import KernelSHAPIQ

    n = 9
    model = mlp(46, d_in=n)
    x = inputs(46, (1, n))
    game = shapiq_game(model, x)
    for order, budget in ((2, 100), (3, 200), (3, 300)):
        ((z, w),) = drawn(n, budget, order, 0, 1)
        coalitions = torch.cat([z, torch.ones(1, n, dtype=torch.bool)]).numpy()
        shapley_kernel = torch.tensor([1.0] + [(n - 1) / (math.comb(n, s) * s * (n - s)) for s in range(1, n)], dtype=D)
        adjust = np.concatenate([[1.0], (w / shapley_kernel[z[1:].sum(-1)]).numpy(), [1.0]])  # 1 on the enumerated
        approx = KernelSHAPIQ(n, max_order=order, index="SII", random_state=0)
        if not all(hasattr(approx, a) for a in ("kernel_shap_iq_routine", "_init_kernel_weights", "interaction_lookup")):
            pytest.skip(f"shapiq {getattr(shapiq, '__version__', '?')} has another internal layout")

        class Sampled:  # what the routine reads of shapiq's sampler
            coalitions_matrix = coalitions
            sampling_adjustment_weights = adjust

        approx._sampler = Sampled()
        kernels = {k: approx._init_kernel_weights(k) for k in range(1, order + 1)}
        theirs = approx.kernel_shap_iq_routine(kernel_weights_dict=kernels, game_values=game(coalitions))
        ours = kiq(xattr.target(model, 0), index="SII", order=order, n_samples=budget, generator=0)(x)
        for j in range(1, order + 1):
            want = [theirs[approx.interaction_lookup[tuple(c)]] for c in combinations(n, j).tolist()]
            torch.testing.assert_close(ours.compressed(j)[0], torch.tensor(want, dtype=D), atol=1e-6, rtol=0)


def test_both_converge_to_the_exact_values_as_the_budget_grows():
    pytest.importorskip("shapiq")
    from shapiq.approximator.regression.kernelshapiq import KernelSHAPIQ

    n, order, reps = 10, 2, 8
    model = mlp(5, d_in=n)
    x = inputs(6, (1, n))
    exact = xattr.shapley_interactions(xattr.target(model, 0), index="SII", order=order)(x)
    want = torch.cat([exact.compressed(j)[0] for j in (1, 2)])
    rms = float(want.pow(2).mean().sqrt())
    errors = {}
    for budget in (100, 300, 700):
        theirs = []
        for seed in range(reps):  # shapiq's draws, one seed each
            approx = KernelSHAPIQ(n, max_order=order, index="SII", random_state=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values = approx.approximate(budget, shapiq_game(model, x))
            got = torch.tensor([values[tuple(c)] for j in (1, 2) for c in combinations(n, j).tolist()], dtype=D)
            theirs.append(float((got - want).pow(2).mean().sqrt()))
        # ours: reps copies of the example in one batch, each row its own draws
        est = kiq(xattr.target(model, 0), index="SII", order=order, n_samples=budget, generator=0)(x.expand(reps, -1))
        got = torch.cat([est.compressed(1), est.compressed(2)], 1)
        errors[budget] = (float(np.mean(theirs)), float((got - want).pow(2).mean(1).sqrt().mean()))
    # measured, mean RMS error over 8 seeds (RMS value 0.065): shapiq 0.0086 / 0.0023 / 0.00092, ours 0.0059 / 0.00094 / 0.00038
    for est in (0, 1):
        assert errors[300][est] < errors[100][est] / 1.5 and errors[700][est] < errors[300][est] / 1.5
        assert errors[700][est] < 0.03 * rms
    for budget, (a, b) in errors.items():
        assert a / 4 < b < 4 * a  # the same estimator with other draws: errors of one size


# ---- properties ----------------------------------------------------------------------------------

tables6 = st.lists(st.floats(-3, 3, allow_nan=False), min_size=64, max_size=64)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(table=tables6, order=st.integers(1, 3), extra=st.integers(0, 40), seed=st.integers(0, 2**31))
def test_k_sii_is_efficient_at_every_budget(table, order, extra, seed):
    budget = min(2 + border_count(6, order) + extra, 63)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inter = kiq(table_model(table), index="k-SII", order=order, n_samples=budget, generator=seed)(torch.ones(1, 6, dtype=D))
    torch.testing.assert_close(inter.total(), torch.tensor([table[-1] - table[0]], dtype=D), atol=1e-9, rtol=0)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(table=st.lists(st.floats(-3, 3, allow_nan=False), min_size=24, max_size=24), index=st.sampled_from(["SII", "k-SII"]))
def test_symmetric_players_get_equal_indices(table, index):
    # 5 players; v depends on players 0 and 1 only through how many of them are in
    full = [table[((c & 1) + (c >> 1 & 1)) * 8 + (c >> 2)] for c in range(32)]
    inter = kiq(table_model(full), index=index, order=3, n_samples=32, generator=0)(torch.ones(1, 5, dtype=D))
    got = as_dict(inter)
    swap = lambda T: frozenset({0: 1, 1: 0}.get(i, i) for i in T)  # noqa: E731
    for T, val in got.items():
        assert abs(val - got[swap(T)]) <= 1e-10


@settings(max_examples=8, deadline=None, derandomize=True)
@given(table=st.lists(st.floats(-3, 3, allow_nan=False), min_size=16, max_size=16), index=st.sampled_from(["SII", "k-SII"]),
       dummy=st.integers(0, 4))  # fmt: skip
def test_a_dummy_feature_has_no_interactions(table, index, dummy):
    def drop(c):  # the code without the dummy's bit, as a 4-bit code
        return (c & ((1 << dummy) - 1)) | ((c >> (dummy + 1)) << dummy)

    full = [table[drop(c)] for c in range(32)]
    inter = kiq(table_model(full), index=index, order=3, n_samples=32, generator=0)(torch.ones(1, 5, dtype=D))
    got = as_dict(inter)
    assert all(abs(val) <= 1e-10 for T, val in got.items() if dummy in T)
    assert max(map(abs, got.values())) > 0 or max(map(abs, table)) == 0


# ---- determinism and arguments -------------------------------------------------------------------


def test_seeds_batches_chunks_and_outputs():
    model = mlp(47, d_in=7, out=2)
    f = xattr.target(model, 1)
    x = inputs(47, (3, 7))
    method = kiq(f, index="k-SII", order=2, n_samples=60, generator=7)
    a = method(x)
    torch.testing.assert_close(method(x).pairs, a.pairs, atol=0, rtol=0)
    for e in range(3):  # an example's estimate does not depend on its batch
        alone = kiq(f, index="k-SII", order=2, n_samples=60, generator=7)(x[: e + 1])
        torch.testing.assert_close(alone.pairs[e], a.pairs[e], atol=1e-12, rtol=0)
    chunked = kiq(f, index="k-SII", order=2, n_samples=60, generator=7, chunk_size=5)(x)
    torch.testing.assert_close(chunked.pairs, a.pairs, atol=1e-12, rtol=0)
    assert not torch.allclose(kiq(f, index="k-SII", order=2, n_samples=60, generator=8)(x).pairs, a.pairs)
    both = kiq(xattr.target(model, xattr.outputs()), index="k-SII", order=2, n_samples=60, generator=7)(x)
    assert both.pairs.shape == (3, 2, 7, 7)
    torch.testing.assert_close(both.pairs[:, 1], a.pairs, atol=1e-12, rtol=0)  # the same draws for every output
    g = kiq(f, order=2, n_samples=60, generator=torch.Generator().manual_seed(3))(x)
    assert g.pairs.shape == (3, 7, 7)


def test_bad_arguments_are_refused():
    f = xattr.target(mlp(48, d_in=6), 0)
    x = inputs(48, (1, 6))
    for index in ("STII", "FSII", "Faith-SHAP"):
        with pytest.raises(ValueError, match="SII and k-SII only"):
            kiq(f, index=index)
    with pytest.raises(ValueError, match="n_samples >= 44"):  # order 3 needs sizes 1, 2, 4, 5 whole: 2 + 12 + 30
        kiq(f, index="SII", order=3, n_samples=30, generator=0)(x)
    with pytest.raises(ValueError, match="estimator must be one of"):
        xattr.shapley_interaction_sampling(f, estimator="kernelshapiq")
    with pytest.warns(UserWarning, match="minimum-norm"):  # 12 border + 4 drawn coalitions for 9 free pair unknowns
        kiq(f, index="SII", order=2, n_samples=18, generator=0)(x)


def test_orders_past_f_one_number_per_batch_and_float32():
    model = mlp(49, d_in=3)
    x, b = inputs(49, (2, 3)), inputs(50, (2, 3))
    for order in (3, 5):  # sets of more than F = 3 features are 0; at 8 >= 2^3 coalitions the values are exact
        exact = xattr.shapley_interactions(xattr.target(model, 0), index="k-SII", order=order, baselines=b)(x)
        est = kiq(xattr.target(model, 0), index="k-SII", order=order, n_samples=8, baselines=b, generator=1)(x)
        for j in range(1, order + 1):
            torch.testing.assert_close(est.values(j), exact.values(j), atol=1e-12, rtol=0)
    wide = mlp(51, d_in=6)
    total = lambda t: wide(t).sum()  # noqa: E731  one number for the whole batch
    xs = inputs(51, (3, 6))
    exact = xattr.shapley_interactions(total, index="SII", order=2)(xs)
    est = kiq(total, index="SII", order=2, n_samples=64, generator=0)(xs)
    assert est.pairs.shape == (1, 6, 6)
    torch.testing.assert_close(est.pairs, exact.pairs, atol=1e-12, rtol=0)
    part = kiq(total, index="k-SII", order=2, n_samples=30, generator=0)(xs)
    torch.testing.assert_close(part.total(), exact.output - exact.baseline_output, atol=1e-12, rtol=0)
    single = kiq(xattr.target(mlp(51, d_in=6).float(), 0), index="k-SII", n_samples=40, generator=0)(xs.float())
    double = kiq(xattr.target(wide, 0), index="k-SII", n_samples=40, generator=0)(xs)
    assert single.pairs.dtype == single.output.dtype == torch.float32
    torch.testing.assert_close(single.pairs.double(), double.pairs, atol=1e-5, rtol=0)
