"""The review cases of tests/test_shapley_interactions_review.py for ``estimator="kernelshap_iq"``
(SII and k-SII only; orders at and above the feature count run in that file's estimator loop):
pytree inputs, per-example feature sets at a partial budget, one number per batch, many outputs and float32, each against brute
force or the same call with another target; STII and FSII refused with a message naming the
estimators that take them."""

import pytest
import torch
from test_shapley_interactions import as_dict, close, game, inputs, mlp, reference, total_game

import xattr

D = torch.float64
KSIQ = "kernelshap_iq"


def ksiq(f, **kw):
    return xattr.shapley_interaction_sampling(f, estimator=KSIQ, **kw)


def test_a_dict_input_at_every_coalition_is_exact():
    def f(d):
        return d["a"][:, 0] * d["b"][:, 1] + d["a"][:, 1] ** 2 * d["b"][:, 0] + torch.sin(d["b"][:, 0] * d["a"][:, 0])

    a, b = inputs(51, (2, 2)), inputs(52, (2, 2))
    est = ksiq(f, index="k-SII", order=3, n_samples=16, generator=0)({"a": a, "b": b})
    assert est.n_features == 4
    for e in range(2):  # ids: a's elements 0, 1, then b's 2, 3
        v = game(lambda t: f({"a": t[:, :2], "b": t[:, 2:]})[0], torch.cat([a[e], b[e]]), torch.zeros(4, dtype=D))
        close(as_dict(est, e), reference("k-SII", v, 4, 3))


@pytest.mark.parametrize("index", ["STII", "FSII"])
def test_the_indices_it_does_not_estimate_are_refused(index):
    f = xattr.target(mlp(53, d_in=3), 0)
    with pytest.raises(ValueError, match="estimates SII and k-SII only.*'regression' or 'stratified'"):
        ksiq(f, index=index, n_samples=8, generator=0)(inputs(53, (1, 3)))


@pytest.mark.filterwarnings("ignore::UserWarning")  # budgets below the unknowns on purpose
def test_per_example_feature_sets_at_a_partial_budget():
    f = xattr.target(mlp(55, d_in=6), 0)
    x = inputs(55, (3, 6))
    masks = torch.tensor([[0, 1, 2, 3, 4, 5], [7, 7, 1, 1, 2, 3], [0, 1, 2, 3, 4, 5]])  # 6, 4 and 6 features
    method = ksiq(f, index="k-SII", n_samples=20, generator=4)
    both = method(x, feature_mask=masks)
    assert both.pairs.shape == (3, 8, 8)
    alone = method(x[:1], feature_mask=masks[:1])  # the first example alone draws what it draws in the batch
    torch.testing.assert_close(both.pairs[:1, :6, :6], alone.pairs, atol=1e-12, rtol=0)
    assert both.pairs[0, 6:].abs().max() == 0 and both.pairs[1, 0].abs().max() == 0 and both.pairs[1, 4:7].abs().max() == 0
    torch.testing.assert_close(both.total(), both.output - both.baseline_output, atol=1e-12, rtol=0)  # k-SII: efficient
    exact = xattr.shapley_interactions(f, index="k-SII", feature_mask=masks)(x)  # 4 features: 16 coalitions <= 20
    torch.testing.assert_close(both.pairs[1], exact.pairs[1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("index", ["SII", "k-SII"])
def test_a_model_of_one_number_per_batch(index):
    total, x, v = total_game()
    full = ksiq(total, index=index, n_samples=16, generator=0)(x)
    assert full.pairs.shape == (1, 4, 4)
    close(as_dict(full), reference(index, v, 4, 2))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_many_outputs_are_single_target_runs_on_the_same_draws():
    model = mlp(58, out=3)
    x = inputs(58, (2, 5))
    every = ksiq(xattr.target(model, xattr.outputs()), index="SII", order=2, n_samples=24, generator=2)(x)
    assert every.values(2).shape == (2, 3, 5, 5)
    for k in range(3):
        one = ksiq(xattr.target(model, k), index="SII", order=2, n_samples=24, generator=2)(x)
        for j in (1, 2):
            torch.testing.assert_close(every.values(j)[:, k], one.values(j), atol=1e-12, rtol=0)


def test_order_three_below_every_coalition_is_refused():
    f = xattr.target(mlp(58), 0)
    with pytest.raises(ValueError, match="n_samples >= 32"):
        ksiq(f, index="SII", order=3, n_samples=24, generator=2)(inputs(58, (1, 5)))


def test_a_float32_model_gives_float32_values_close_to_float64():
    x = inputs(56, (2, 5))
    single = ksiq(xattr.target(mlp(56).float(), 0), index="SII", n_samples=20, generator=0)(x.float())
    double = ksiq(xattr.target(mlp(56), 0), index="SII", n_samples=20, generator=0)(x)
    assert single.pairs.dtype == single.output.dtype == single.baseline_output.dtype == torch.float32
    torch.testing.assert_close(single.pairs.double(), double.pairs, atol=1e-5, rtol=0)
