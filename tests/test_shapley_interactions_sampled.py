"""Sampled Shapley interaction indices, ``estimator="stratified"``: the stratified estimator against a slow reference built
from brute-force weights, exactness at a full budget, unbiasedness and convergence, the plan of
strata and the draws, and determinism."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_shapley_interactions import INDICES, as_dict, close, inputs, mlp, reference, subsets

import xattr
from xattr._src.masks import FeatureSet
from xattr._src.sampling import row_seeds, streams
from xattr._src.shapley_interactions_sampled import _coalitions, plan


def stratified(f, **kw):
    return xattr.shapley_interaction_sampling(f, estimator="stratified", **kw)


def unit_weights(index, n, order):
    """weight[L][T]: the weight of v(L) in I(T), the brute-force index of the game that is 1 at L
    and 0 at every other coalition."""
    return {L: reference(index, {S: float(S == L) for S in subsets(range(n))}, n, order) for L in subsets(range(n))}


def reference_estimate(index, order, f1, x, b, budget, seed, row, rows):
    """The estimator of one example written out: the model called per coalition, the enumerated
    strata summed whole, each sampled stratum as its exact total times the control variate plus
    C(n, s) / M_s times its draws' weighted deviations from it."""
    n = x.shape[0]
    enumerated, counts = plan(n, budget)
    seeds = row_seeds(streams(seed, 1)[0], rows)
    z, _ = _coalitions(FeatureSet(None, None, n), (enumerated, counts), rows, True, seeds, torch.device("cpu"))
    weight = unit_weights(index, n, order)

    def v(S):
        keep = torch.tensor([i in S for i in range(n)])
        with torch.no_grad():
            return float(f1(torch.where(keep, x, b)[None]))

    fixed = [S for S in subsets(range(n)) if len(S) in (0, n) or len(S) in enumerated]
    c = (v(frozenset()) + v(frozenset(range(n)))) / 2
    est = {T: sum(weight[L][T] * v(L) for L in fixed) for T in weight[frozenset()]}
    drawn = [frozenset(torch.nonzero(zm)[:, 0].tolist()) for zm in z[row if z.shape[0] > 1 else 0, len(fixed) - 1 :]]
    for T in est:
        for s, m in counts.items():
            est[T] += c * sum(weight[L][T] for L in subsets(range(n)) if len(L) == s)
            est[T] += math.comb(n, s) / m * sum(weight[L][T] * (v(L) - c) for L in drawn if len(L) == s)
    assert sorted(len(L) for L in drawn) == sorted(s for s, m in counts.items() for _ in range(m))
    return est


@pytest.mark.parametrize("index", INDICES)
def test_matches_the_reference_estimator(index):
    model = mlp(30)
    x, b = inputs(30, (2, 5)), inputs(31, (2, 5))
    for budget in (9, 20):
        inter = stratified(xattr.target(model, 0), index=index, order=2, n_samples=budget, baselines=b, generator=5)(x)
        for e in range(2):
            want = reference_estimate(index, 2, lambda t: model(t)[0, 0], x[e], b[e], budget, 5, e, 2)
            close(as_dict(inter, e), want, tol=1e-10)


@pytest.mark.parametrize("index", INDICES)
def test_exact_when_the_budget_covers_every_coalition(index):
    f = xattr.target(mlp(32), 0)
    x = inputs(32, (2, 5))
    for order in (1, 2, 3):
        exact = xattr.shapley_interactions(f, index=index, order=order)(x)
        for budget in (32, 40):
            est = stratified(f, index=index, order=order, n_samples=budget, generator=0)(x)
            for j in range(1, order + 1):
                torch.testing.assert_close(est.values(j), exact.values(j), atol=1e-12, rtol=0)


@pytest.mark.parametrize("index", ["SII", "FSII"])
def test_unbiased_and_converging(index):
    # R copies of one example in one batch draw R independent estimates (each row its own seed)
    model = mlp(33, d_in=6)
    f = xattr.target(model, 0)
    x = inputs(33, (1, 6))
    exact = xattr.shapley_interactions(f, index=index)(x)
    want = torch.cat([exact.main_effects[0], exact.pairs[0].flatten()])
    rmse = []
    for budget in (16, 40):
        est = stratified(f, index=index, n_samples=budget, generator=1)(x.expand(400, -1))
        got = torch.cat([est.main_effects, est.pairs.flatten(1)], 1)  # (R, entries)
        se = got.std(0) / math.sqrt(got.shape[0])
        assert ((got.mean(0) - want).abs() <= 4.5 * se + 1e-12).all()  # unbiased: every entry within 4.5 standard errors
        rmse.append(float((got - want).pow(2).mean().sqrt()))
    assert rmse[1] < 0.75 * rmse[0]  # more samples, smaller error (measured: see the docs)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(n=st.integers(1, 12), budget=st.integers(2, 5000))
def test_the_plan_spends_the_budget(n, budget):
    if budget < min(n + 1, 2**n):
        with pytest.raises(ValueError, match="n_samples"):
            plan(n, budget)
        return
    enumerated, counts = plan(n, budget)
    assert set(enumerated).isdisjoint(counts) and set(enumerated) | set(counts) == set(range(1, n))
    assert all(m >= 1 for m in counts.values())
    if budget >= 2**n:
        assert not counts
    else:
        assert 2 + sum(math.comb(n, s) for s in enumerated) + sum(counts.values()) == budget
        # enumerated strata come from the outside in: none is larger than a sampled one
        assert max((math.comb(n, s) for s in enumerated), default=0) <= min(math.comb(n, s) for s in counts)


def test_draws_have_their_stratum_size_and_are_uniform():
    n, s = 6, 2
    sizes = {s: 3000}
    z, got = _coalitions(FeatureSet(None, None, n), ([], sizes), 2, True, [11, 12], torch.device("cpu"))
    drawn = z[:, 1:]
    assert (drawn.sum(-1) == s).all() and (got[1:] == s).all() and not z[:, 0].any()
    freq = drawn.double().mean(1)  # each feature in with probability s / n
    p = s / n
    assert ((freq - p).abs() <= 5 * math.sqrt(p * (1 - p) / 3000)).all()
    pair = (drawn[..., 0] & drawn[..., 1]).double().mean(1)  # each pair with probability 1 / C(n, 2)
    q = 1 / math.comb(n, 2)
    assert ((pair - q).abs() <= 5 * math.sqrt(q * (1 - q) / 3000)).all()
    assert not torch.equal(z[0], z[1])  # each example its own draws


def test_seeds_batches_chunks_and_outputs():
    model = mlp(34, out=2)
    f = xattr.target(model, 1)
    x = inputs(34, (3, 5))
    method = stratified(f, index="k-SII", n_samples=14, generator=7)
    a, again = method(x), method(x)
    torch.testing.assert_close(a.pairs, again.pairs, atol=0, rtol=0)
    prefix = method(x[:2])
    torch.testing.assert_close(prefix.pairs, a.pairs[:2], atol=1e-12, rtol=0)
    chunked = stratified(f, index="k-SII", n_samples=14, generator=7, chunk_size=5)(x)
    torch.testing.assert_close(chunked.pairs, a.pairs, atol=1e-12, rtol=0)
    other = stratified(f, index="k-SII", n_samples=14, generator=8)(x)
    assert not torch.allclose(other.pairs, a.pairs)
    both = stratified(xattr.target(model, xattr.outputs()), index="k-SII", n_samples=14, generator=7)(x)
    assert both.pairs.shape == (3, 2, 5, 5)
    torch.testing.assert_close(both.pairs[:, 1], a.pairs, atol=1e-12, rtol=0)  # the same draws for every output
    g = stratified(f, n_samples=14, generator=torch.Generator().manual_seed(3))(x)
    assert g.pairs.shape == (3, 5, 5)


def test_per_example_masks_at_a_full_budget_are_exact():
    f = xattr.target(mlp(35, d_in=6), 0)
    x = inputs(35, (2, 6))
    masks = torch.tensor([[0, 0, 1, 1, 2, 2], [5, 5, 5, 1, 1, 3]])
    est = stratified(f, index="STII", n_samples=8, feature_mask=masks, generator=0)(x)
    exact = xattr.shapley_interactions(f, index="STII", feature_mask=masks)(x)
    torch.testing.assert_close(est.pairs, exact.pairs, atol=1e-12, rtol=0)
    torch.testing.assert_close(est.main_effects, exact.main_effects, atol=1e-12, rtol=0)


def test_bad_arguments_are_refused():
    f = xattr.target(mlp(36), 0)
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="n_samples must be an int"):
            xattr.shapley_interaction_sampling(f, n_samples=bad)
    with pytest.raises(ValueError, match="n_samples >= 6"):
        stratified(f, n_samples=5, generator=0)(inputs(36, (1, 5)))
    with pytest.raises(ValueError, match="index must be one of"):
        xattr.shapley_interaction_sampling(f, index="Banzhaf")
    with pytest.raises(TypeError, match="generator"):
        xattr.shapley_interaction_sampling(f, generator="0")(inputs(36, (1, 5)))
