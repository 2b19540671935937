"""Review cases of the Shapley interaction methods: index spellings, pytree inputs, orders at and
above the feature count, per-example feature sets at partial budgets, float32 and aggregate
models, many outputs, and the `Interactions` views (`top`, `to_dict`, `values`), each against
brute force or an independent recomputation."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_shapley_interactions import INDICES, as_dict, close, game, inputs, mlp, reference, subsets, table_model, total_game

import xattr

D = torch.float64
ESTIMATORS = ["regression", "stratified"]


def sampled(f, estimator, **kw):
    return xattr.shapley_interaction_sampling(f, estimator=estimator, **kw)


@pytest.mark.parametrize("spelling, name", [("ksii", "k-SII"), ("K_SII", "k-SII"), ("k sii", "k-SII"), ("sii", "SII"),
                                            ("Faith-SHAP", "FSII"), ("faithshap", "FSII"), ("FSI", "FSII"),
                                            ("Shapley-Taylor", "STII"), ("sti", "STII"), ("s-t-i-i", "STII")])  # fmt: skip
def test_other_spellings_name_the_same_index(spelling, name):
    f = xattr.target(mlp(50, d_in=4), 0)
    x = inputs(50, (1, 4))
    got = xattr.shapley_interactions(f, index=spelling)(x)
    want = xattr.shapley_interactions(f, index=name)(x)
    assert got.index == name
    torch.testing.assert_close(got.pairs, want.pairs, atol=0, rtol=0)


@pytest.mark.parametrize("bad", ["Banzhaf", "k-SIII", "", 3, None])
def test_unknown_indices_are_refused(bad):
    with pytest.raises(ValueError, match="index must be one of"):
        xattr.shapley_interactions(lambda x: x.sum(-1), index=bad)


def test_a_dict_input_numbers_its_leaves_in_turn():
    def f(d):
        return d["a"][:, 0] * d["b"][:, 1] + d["a"][:, 1] ** 2 * d["b"][:, 0] + torch.sin(d["b"][:, 0] * d["a"][:, 0])

    a, b = inputs(51, (2, 2)), inputs(52, (2, 2))
    exact = xattr.shapley_interactions(f, index="k-SII", order=3)({"a": a, "b": b})
    assert exact.n_features == 4
    for e in range(2):  # ids: a's elements 0, 1, then b's 2, 3
        v = game(lambda t: f({"a": t[:, :2], "b": t[:, 2:]})[0], torch.cat([a[e], b[e]]), torch.zeros(4, dtype=D))
        close(as_dict(exact, e), reference("k-SII", v, 4, 3))
    for estimator in ESTIMATORS:  # every coalition: exact
        est = sampled(f, estimator, index="k-SII", order=3, n_samples=16, generator=0)({"a": a, "b": b})
        for j in (1, 2, 3):
            torch.testing.assert_close(est.values(j), exact.values(j), atol=1e-12, rtol=0)


@pytest.mark.parametrize("index", INDICES)
@pytest.mark.parametrize("order", [3, 5])
def test_orders_at_and_above_the_feature_count(index, order):
    model = mlp(53, d_in=3)
    f = xattr.target(model, 0)
    x, b = inputs(53, (2, 3)), inputs(54, (2, 3))
    exact = xattr.shapley_interactions(f, index=index, order=order, baselines=b)(x)
    for e in range(2):
        v = game(lambda t: model(t)[0, 0], x[e], b[e])
        want = reference(index, v, 3, 3)  # no set of more than 3 of 3 features
        if index == "SII":  # SII does not depend on the order
            close(as_dict(exact, e), want)
        else:  # STII, FSII, k-SII at order >= F: the Moebius dividends
            dividends = {T: sum((-1) ** (len(T) - len(L)) * v[L] for L in subsets(T)) for T in want}
            close(as_dict(exact, e), dividends)
    for j in range(4, order + 1):
        assert exact.values(j).shape == (2,) + (3,) * j and exact.values(j).abs().max() == 0
    for estimator in ESTIMATORS + ["kernelshap_iq"] * (index in ("SII", "k-SII")):  # KSIQ estimates those two only
        est = sampled(f, estimator, index=index, order=order, n_samples=8, baselines=b, generator=1)(x)
        for j in range(1, order + 1):
            torch.testing.assert_close(est.values(j), exact.values(j), atol=1e-12, rtol=0)


@pytest.mark.filterwarnings("ignore:n_samples=.*minimum-norm:UserWarning")  # budgets below the unknowns on purpose
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_per_example_feature_sets_at_a_partial_budget(estimator):
    f = xattr.target(mlp(55, d_in=6), 0)
    x = inputs(55, (3, 6))
    masks = torch.tensor([[0, 1, 2, 3, 4, 5], [7, 7, 1, 1, 2, 3], [0, 1, 2, 3, 4, 5]])  # 6, 4 and 6 features
    method = sampled(f, estimator, index="k-SII", n_samples=20, generator=4)
    both = method(x, feature_mask=masks)
    assert both.pairs.shape == (3, 8, 8)
    alone = method(x[:1], feature_mask=masks[:1])  # the first example alone draws what it draws in the batch
    torch.testing.assert_close(both.pairs[:1, :6, :6], alone.pairs, atol=1e-12, rtol=0)
    assert both.pairs[0, 6:].abs().max() == 0 and both.pairs[1, 0].abs().max() == 0 and both.pairs[1, 4:7].abs().max() == 0
    assert both.pairs[1, 1, 7] != 0
    torch.testing.assert_close(both.total(), both.output - both.baseline_output, atol=1e-12, rtol=0)  # efficient
    # the second example's 4 features: 16 coalitions <= 20, so its values are exact
    exact = xattr.shapley_interactions(f, index="k-SII", feature_mask=masks)(x)
    torch.testing.assert_close(both.pairs[1], exact.pairs[1], atol=1e-12, rtol=0)


def test_a_float32_model_gives_float32_values_close_to_float64():
    model = mlp(56)
    x = inputs(56, (2, 5))
    m32 = mlp(56).float()
    for run in (lambda g: xattr.shapley_interactions(g, index="FSII"),
                lambda g: sampled(g, "regression", index="FSII", n_samples=20, generator=0),
                lambda g: sampled(g, "stratified", index="FSII", n_samples=20, generator=0)):  # fmt: skip
        single, double = run(xattr.target(m32, 0))(x.float()), run(xattr.target(model, 0))(x)
        assert single.pairs.dtype == single.output.dtype == single.baseline_output.dtype == torch.float32
        torch.testing.assert_close(single.pairs.double(), double.pairs, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:n_samples=.*minimum-norm:UserWarning")  # budgets below the unknowns on purpose
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_model_of_one_number_per_batch_when_sampled(estimator):
    total, x, v = total_game()
    full = sampled(total, estimator, index="STII", n_samples=16, generator=0)(x)
    assert full.pairs.shape == (1, 4, 4)
    close(as_dict(full), reference("STII", v, 4, 2))
    part = sampled(total, estimator, index="STII", n_samples=9, generator=0)(x)
    assert abs(float(part.total()[0]) - (v[frozenset(range(4))] - v[frozenset()])) <= 1e-10


@pytest.mark.filterwarnings("ignore:n_samples=.*minimum-norm:UserWarning")  # budgets below the unknowns on purpose
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_many_outputs_are_single_target_runs_on_the_same_draws(estimator):
    model = mlp(58, out=3)
    x = inputs(58, (2, 5))
    every = sampled(xattr.target(model, xattr.outputs()), estimator, index="SII", order=3, n_samples=24, generator=2)(x)
    assert every.values(3).shape == (2, 3, 5, 5, 5)
    for k in range(3):
        one = sampled(xattr.target(model, k), estimator, index="SII", order=3, n_samples=24, generator=2)(x)
        for j in (1, 2, 3):
            torch.testing.assert_close(every.values(j)[:, k], one.values(j), atol=1e-12, rtol=0)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(table=st.lists(st.floats(-3, 3, allow_nan=False), min_size=32, max_size=32),
       index=st.sampled_from(["k-SII", "STII", "FSII"]), order=st.integers(1, 3), budget=st.integers(6, 31),
       seed=st.integers(0, 2**31))  # fmt: skip
def test_the_stratified_estimator_is_exactly_efficient(table, index, order, budget, seed):
    method = sampled(table_model(table), "stratified", index=index, order=order, n_samples=budget, generator=seed)
    inter = method(torch.ones(1, 5, dtype=D))
    assert abs(float(inter.total()[0]) - (table[-1] - table[0])) <= 1e-9


def test_top_sorts_by_magnitude_keeps_ties_in_dict_order_and_checks_its_arguments():
    # v(S) = |S|^2: every main effect equal, every pair equal, by symmetry
    table = [float(bin(c).count("1") ** 2) for c in range(16)]
    inter = xattr.shapley_interactions(table_model(table), index="SII")(torch.ones(1, 4, dtype=D))
    d = inter.to_dict()
    want = sorted(((T, float(v[0])) for T, v in d.items()), key=lambda kv: -abs(kv[1]))  # stable: dict order on ties
    assert inter.top(100) == want and len(want) == 10
    assert inter.top(0) == [] and inter.top(3) == want[:3]
    assert len({round(v, 9) for _, v in want}) == 2  # the ties are real: two distinct magnitudes
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="n must be an int"):
            inter.top(bad)
    with pytest.raises(ValueError, match="example must be an int in 0..0"):
        inter.top(2, example=1)
    with pytest.raises(ValueError, match="leave output=None"):
        inter.top(2, output=0)
    many = xattr.shapley_interactions(xattr.target(mlp(59, d_in=4, out=3), xattr.outputs()))(inputs(59, (2, 4)))
    with pytest.raises(ValueError, match="output must be an int in 0..2"):
        many.top(2, output=3)
    got = many.top(4, example=1, output=2, order=2)
    pairs = {T: float(v[1, 2]) for T, v in many.to_dict().items() if len(T) == 2}
    assert got == sorted(pairs.items(), key=lambda kv: -abs(kv[1]))[:4]
    assert many.top(2, example=-1, output=-1) == many.top(2, example=1, output=2)


def test_to_dict_keys_and_the_symmetric_dense_values():
    model = mlp(60, d_in=5, out=2)
    inter = xattr.shapley_interactions(xattr.target(model, xattr.outputs()), index="k-SII", order=3)(inputs(60, (2, 5)))
    d = inter.to_dict()
    want_keys = [T for j in (1, 2, 3) for T in itertools.combinations(range(5), j)]
    assert sorted(d) == sorted(want_keys) and len(d) == 5 + 10 + 10
    assert all(list(T) == sorted(T) for T in d)
    for j in (1, 2, 3):
        dense = inter.values(j)
        assert dense.shape == (2, 2) + (5,) * j
        for idx in itertools.product(range(5), repeat=j):
            key = tuple(sorted(idx))
            want = d[key] if len(set(idx)) == j else torch.zeros(2, 2, dtype=D)
            torch.testing.assert_close(dense[(slice(None), slice(None)) + idx], want, atol=0, rtol=0)
    assert math.isclose(float(inter.total()[0, 0]), float(sum(v[0, 0] for v in d.values())), abs_tol=1e-12)
