"""Each example's own features (NOTE: [Each example's own features] in xattr/_src/masks.py).

LIME, KernelSHAP and Shapley sampling draw every example's coalitions or orders over the ids
its own mask holds: with a per-example mask whose examples hold different sets of ids, or a
mask that skips ids, an example's numbers are those it gets alone (the same draws: its seeds
are its position's), an id it lacks gets exactly 0, its values add up to f(x) - f(baseline)
over its own features, and KernelSHAP enumerates its 2^F_e coalitions as soon as n_samples
allows (then it equals `shapley_values`). Relabelling the ids (a gap, [5, 7, 9] for [0, 1, 2])
changes nothing.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr.testing import check_chunk_invariance
from xattr.testing.strategies import random_tensor

D = 10
CLOSE = dict(atol=1e-10, rtol=1e-10)  # float64: the same draws, the model in other batch compositions

# example 0 holds 3 features, example 1 ten, example 2 two (ids 4 and 7: gaps)
MASK = torch.stack([
    torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2]),
    torch.arange(D),
    torch.tensor([4, 4, 4, 4, 4, 7, 7, 7, 7, 7]),
])  # fmt: skip
HELD = [[0, 1, 2], list(range(D)), [4, 7]]


def mlp(n_in: int = D, n_out: int = 1, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(n_in, 8), nn.Tanh(), nn.Linear(8, n_out))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model.double().eval()


MODEL = mlp()
F = xattr.target(MODEL, 0)
X = random_tensor((3, D), seed=1)

METHODS = {
    "lime": lambda f, **kw: xattr.lime(f, n_samples=16, generator=0, **kw),
    "kernel_shap": lambda f, **kw: xattr.kernel_shap(f, n_samples=16, generator=0, **kw),
    "shapley_value_sampling": lambda f, **kw: xattr.shapley_value_sampling(f, n_samples=4, generator=0, **kw),
}
every = pytest.mark.parametrize("name", sorted(METHODS))
surrogates = pytest.mark.parametrize("name", ["kernel_shap", "lime"])


def gap(x: torch.Tensor) -> torch.Tensor:
    """f(x) - f(0) per example."""
    with torch.no_grad():
        return F(x) - F(torch.zeros_like(x))


def per_feature(attr: torch.Tensor, mask: torch.Tensor, ids) -> torch.Tensor:
    """An example's value of each of its features, read off its input-shaped attributions."""
    return torch.stack([attr[mask == i][0] for i in ids])


@every
def test_an_example_gets_what_it_gets_alone(name):
    attr = METHODS[name](F, feature_mask=MASK)(X)
    alone = METHODS[name](F, feature_mask=MASK[:1])(X[:1])
    torch.testing.assert_close(attr[:1], alone, **CLOSE)


@every
def test_an_example_does_not_depend_on_the_others_masks(name):
    attr = METHODS[name](F, feature_mask=MASK)(X)
    others = torch.stack([torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 12]), MASK[1], MASK[2]])  # the largest id is 12 now
    changed = METHODS[name](F, feature_mask=others)(X)
    torch.testing.assert_close(changed[1:], attr[1:], **CLOSE)
    same = METHODS[name](F, feature_mask=MASK[[1, 1, 2]])(X)  # example 0 holds what example 1 holds
    torch.testing.assert_close(same[1:], attr[1:], **CLOSE)


@surrogates
def test_ids_an_example_lacks_get_exactly_zero(name):
    coef = METHODS[name](F, feature_mask=MASK, return_input_shape=False)(X)
    assert coef.shape == (3, D)  # F = the largest id + 1 columns
    for i, held in enumerate(HELD):
        lacked = [j for j in range(D) if j not in held]
        assert (coef[i, lacked] == 0).all()
        assert name == "lime" or (coef[i, held] != 0).all()  # (the lasso may zero a feature it holds)


def test_kernel_shap_is_efficient_over_each_examples_own_features():
    coef = METHODS["kernel_shap"](F, feature_mask=MASK, return_input_shape=False)(X)
    torch.testing.assert_close(coef.sum(1), gap(X), **CLOSE)
    torch.testing.assert_close(coef[0, :3].sum(), gap(X)[0], **CLOSE)


def test_shapley_sampling_is_efficient_over_each_examples_own_features():
    attr = METHODS["shapley_value_sampling"](F, feature_mask=MASK)(X)
    sums = torch.stack([per_feature(attr[i], MASK[i], held).sum() for i, held in enumerate(HELD)])
    torch.testing.assert_close(sums, gap(X), **CLOSE)


def test_kernel_shap_enumerates_each_examples_own_coalitions():
    exact = xattr.shapley_values(F, feature_mask=MASK)(X)
    for n_samples in (8, 9, 100):  # 2^3 and 2^2 coalitions: examples 0 and 2 are exact, example 1 sampled
        attr = xattr.kernel_shap(F, feature_mask=MASK, n_samples=n_samples, generator=0)(X)
        torch.testing.assert_close(attr[[0, 2]], exact[[0, 2]], **CLOSE)
    four = xattr.kernel_shap(F, feature_mask=MASK, n_samples=4, generator=0)(X)  # example 2 only
    torch.testing.assert_close(four[2], exact[2], **CLOSE)


def test_gapped_shared_ids_are_three_features():
    f = xattr.target(mlp(6, seed=2), 0)
    x = random_tensor((2, 6), seed=3)
    gapped, dense = torch.tensor([[5, 5, 7, 7, 9, 9]]), torch.tensor([[0, 0, 1, 1, 2, 2]])
    exact = xattr.shapley_values(f, feature_mask=dense)(x)
    rows = []
    counting = lambda z: (rows.append(z.shape[0]), f(z))[1]  # noqa: E731
    attr = xattr.kernel_shap(counting, feature_mask=gapped, n_samples=8, generator=0)(x)
    torch.testing.assert_close(attr, exact, **CLOSE)
    assert sum(rows) == 2 * (1 + 1 + 6)  # f(x), the empty coalition and the 6 others: no sampling
    coef = xattr.kernel_shap(f, feature_mask=gapped, n_samples=8, return_input_shape=False)(x)
    assert coef.shape == (2, 10) and (coef[:, [0, 1, 2, 3, 4, 6, 8]] == 0).all()
    for name, method in METHODS.items():  # relabelled ids: the same draws, the same numbers
        torch.testing.assert_close(method(f, feature_mask=gapped)(x), method(f, feature_mask=dense)(x), **CLOSE, msg=name)


@every
def test_per_example_masks_keep_chunk_invariance(name):
    check_chunk_invariance(lambda cs: METHODS[name](F, feature_mask=MASK, chunk_size=cs), X, chunk_sizes=(1, 5, 13))


@every
def test_many_outputs_with_per_example_masks(name):
    model = mlp(n_out=3, seed=4)
    many = METHODS[name](xattr.target(model, xattr.outputs([2, 0])), feature_mask=MASK)(X)
    for j, k in enumerate([2, 0]):
        torch.testing.assert_close(many[:, j], METHODS[name](xattr.target(model, k), feature_mask=MASK)(X), **CLOSE)


@every
def test_pytree_inputs_share_ids_across_tensors(name):
    lin_a, lin_b = nn.Linear(3, 4).double(), nn.Linear(2, 4).double()
    f = lambda d: torch.tanh(lin_a(d["a"]) + lin_b(d["b"])).sum(1)  # noqa: E731
    a, b = random_tensor((2, 3), 1), random_tensor((2, 2), 2)
    mask = {"a": torch.tensor([[0, 1, 1], [0, 1, 2]]), "b": torch.tensor([[6, 6]])}  # {0, 1, 6} and {0, 1, 2, 6}
    attr = METHODS[name](f, feature_mask=mask)({"a": a, "b": b})
    alone = METHODS[name](f, feature_mask={"a": mask["a"][:1], "b": mask["b"]})({"a": a[:1], "b": b[:1]})
    torch.testing.assert_close(attr["a"][:1], alone["a"], **CLOSE)
    torch.testing.assert_close(attr["b"][:1], alone["b"], **CLOSE)
    dense = {"a": torch.tensor([[0, 1, 1]]), "b": torch.tensor([[2, 2]])}  # example 0's features, numbered 0..2
    torch.testing.assert_close(attr["a"][:1], METHODS[name](f, feature_mask=dense)({"a": a[:1], "b": b[:1]})["a"], **CLOSE)


@every
def test_smoothed_examples_do_not_depend_on_their_batch(name):
    smoothed = xattr.smooth(METHODS[name](F), stdevs=0.1, n_samples=3, generator=1)
    attr = smoothed(X, feature_mask=MASK)
    alone = smoothed(X[:1], feature_mask=MASK[:1])
    torch.testing.assert_close(attr[:1], alone, **CLOSE)


def test_lime_perturb_func_draws_over_each_examples_own_features():
    asked = []

    def half(n, n_features, generator):
        asked.append(n_features)
        return (torch.rand(n, n_features, generator=generator) < 0.5).double()

    coef = xattr.lime(F, feature_mask=MASK, n_samples=16, perturb_func=half, generator=0, return_input_shape=False)(X)
    assert asked == [3, 10, 2]  # once per example, in the batch's order
    assert (coef[0, 3:] == 0).all()
    wide = lambda n, n_features, g: half(n, D, g)  # noqa: E731  (over all F ids, as Captum's num_interp_features)
    assert xattr.lime(F, feature_mask=MASK, n_samples=16, perturb_func=wide, generator=0)(X).shape == X.shape


def test_aggregate_models_hold_every_id_of_the_batch():
    total = lambda x: MODEL(x)[:, 0].sum()  # noqa: E731
    coef = xattr.kernel_shap(total, feature_mask=torch.tensor([[5, 5, 5, 7, 7, 7, 9, 9, 9, 9]]), n_samples=8,
                             return_input_shape=False)(X)  # fmt: skip
    assert coef.shape == (1, 10) and (coef[0, [5, 7, 9]] != 0).all() and (coef[0, [0, 1, 2, 3, 4, 6, 8]] == 0).all()
    torch.testing.assert_close(coef.sum(), gap(X).sum(), **CLOSE)
    union = xattr.kernel_shap(total, feature_mask=MASK[[0, 2, 2]], n_samples=32, return_input_shape=False)(X)
    assert union.shape == (1, 8) and (union[0, [3, 5, 6]] == 0).all()  # ids no example holds; 0, 1, 2, 4, 7: 2^5 coalitions
    torch.testing.assert_close(union.sum(), gap(X).sum(), **CLOSE)


@given(st.lists(st.lists(st.integers(0, 7), min_size=6, max_size=6), min_size=2, max_size=3), st.sampled_from(sorted(METHODS)))
def test_random_per_example_masks(ids, name):
    mask = torch.tensor(ids)
    f = xattr.target(mlp(6, seed=5), 0)
    x = random_tensor((len(ids), 6), seed=6)
    attr = METHODS[name](f, feature_mask=mask)(x)
    torch.testing.assert_close(attr[:1], METHODS[name](f, feature_mask=mask[:1])(x[:1]), **CLOSE)
    if name == "shapley_value_sampling":
        return
    coef = METHODS[name](f, feature_mask=mask, return_input_shape=False)(x)
    for i, row in enumerate(ids):
        assert (coef[i, [j for j in range(coef.shape[1]) if j not in row]] == 0).all()
    if name == "kernel_shap":
        with torch.no_grad():
            torch.testing.assert_close(coef.sum(1), f(x) - f(torch.zeros_like(x)), **CLOSE)


@pytest.mark.parametrize("method", ["feature_ablation", "kernel_shap", "shapley_values"])
def test_per_example_masks_inside_a_fold(method):
    """smooth folds copies of the batch into its rows: a per-example mask follows its examples'
    copies (it was refused: 'feature_mask has 4 rows for a batch of 12'). With no noise and
    deterministic estimators (KernelSHAP enumerating), the smoothed result is the plain one."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()
    f = lambda x: net(x)[:, 0]  # noqa: E731
    x = torch.randn(4, 6, dtype=torch.float64)
    mask = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 1, 1], [5, 5, 3, 3, 1, 1]])
    extra = {"n_samples": 64, "generator": 0} if method == "kernel_shap" else {}
    plain = getattr(xattr, method)(f, feature_mask=mask, **extra)
    smoothed = xattr.smooth(plain, stdevs=0.0, n_samples=3, generator=1)
    torch.testing.assert_close(smoothed(x), plain(x), rtol=0, atol=1e-12)
