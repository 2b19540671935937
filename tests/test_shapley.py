"""Shapley values: exact (all 2^F coalitions) and sampled (random permutations).

The exact values are checked against a brute-force reference written independently of the
library: itertools over the subsets of the other features, the model called once per subset on
an input built by hand, and the factorial weights of the definition. Hypothesis checks the
Shapley axioms on random models; the sampling estimator is checked to converge to the exact
values within a tolerance derived from its own spread, and for its invariances (seeds, batch
prefixes, chunks, masks, pytrees, dtypes, aggregate models, many outputs).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr.testing import (
    assert_trees_close,
    check_batch_invariance,
    check_chunk_invariance,
    check_completeness,
    check_dtype_device,
    check_dummy,
    check_linearity,
    check_symmetry,
)
from xattr.testing import strategies as xst

from registry import TwoInputs
from xattr.testing.strategies import ModelSpec, random_tensor

from registry import shapley_groups

TIGHT = dict(atol=1e-12, rtol=1e-10)  # float64: the two computations differ only in summation order


def brute_force(f, x, *, baseline=0.0, mask=None, extra=()):
    """Shapley values by the definition, one example and one subset at a time.

    ``x`` (B, ...); ``mask`` (1 or B, ...) feature ids (None: one feature per element);
    ``baseline`` a number or a tensor broadcastable to x; ``extra`` pass-through arguments with
    a batch axis. ``f`` returns (R,) or (R, K). Returns like x, with a K axis for (R, K).
    """
    base = torch.broadcast_to(torch.as_tensor(baseline, dtype=x.dtype), x.shape)
    if mask is None:
        mask = torch.arange(x[0].numel()).reshape((1,) + tuple(x.shape[1:]))
    mask = torch.broadcast_to(mask, x.shape)
    n = int(mask.max()) + 1
    rows = []
    for b in range(x.shape[0]):
        xb, bb, mb = x[b], base[b], mask[b]
        value = {}
        for k in range(n + 1):
            for subset in itertools.combinations(range(n), k):
                keep = torch.zeros_like(mb, dtype=torch.bool)
                for i in subset:
                    keep |= mb == i
                z = torch.where(keep, xb, bb)
                with torch.no_grad():
                    value[subset] = f(z[None], *(e[b : b + 1] for e in extra))[0].double()
        phi = []
        for i in range(n):
            total = 0.0
            others = [j for j in range(n) if j != i]
            for k in range(n):
                w = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
                for subset in itertools.combinations(others, k):
                    total = total + w * (value[tuple(sorted(subset + (i,)))] - value[subset])
            phi.append(total)
        phi = torch.stack([torch.as_tensor(p, dtype=torch.float64) for p in phi], -1)  # ([K,] F)
        rows.append(phi[..., mb.reshape(-1)].reshape(phi.shape[:-1] + tuple(xb.shape)))
    return torch.stack(rows)


def _mlp(seed=0, d=5, n_out=3, activation="tanh", hidden=(6,)):
    return ModelSpec("mlp", seed=seed, in_shape=(d,), n_out=n_out, activation=activation, hidden=hidden).build()


MLP = _mlp()
X = random_tensor((3, 5), seed=1)
F = xattr.target(MLP, 1)


def _f(x):
    with torch.no_grad():
        return F(x)


# --- exact values: the definition ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", ["elements", "groups", "per_example_mask", "baseline", "cnn", "many_outputs"]
)
def test_exact_equals_brute_force_reference(case):
    f, x, kw, ref_kw = F, X, {}, {}
    if case == "groups":
        kw = ref_kw = {"mask": torch.tensor([[0, 2, 0, 1, 2]])}
    if case == "per_example_mask":
        kw = ref_kw = {"mask": torch.tensor([[0, 1, 1, 2, 3], [3, 3, 2, 1, 0], [0, 0, 0, 1, 1]])}
    if case == "baseline":
        kw = ref_kw = {"baseline": random_tensor((3, 5), seed=4)}
    if case == "cnn":
        model = ModelSpec("cnn", seed=2, in_shape=(2, 3, 3), n_out=2, activation="relu", hidden=(2,), pool=True).build()
        f, x = xattr.target(model, 0), random_tensor((2, 2, 3, 3), seed=3)
        kw = ref_kw = {"mask": shapley_groups((x,))[0], "baseline": 0.5}
    if case == "many_outputs":
        f = xattr.target(MLP, xattr.outputs([2, 0]))
    got = xattr.shapley_values(f, feature_mask=kw.get("mask"), baselines=kw.get("baseline", 0.0))(x)
    assert_trees_close(got, brute_force(f, x, **ref_kw), **TIGHT, what=f"shapley_values vs brute force ({case})")


@given(xst.models_and_inputs(kinds=("mlp",), batch_sizes=st.just(2)), st.data())
def test_exact_equals_brute_force_on_random_models(model_x, data):
    model, x = model_x
    with torch.no_grad():
        n_out = model(x).shape[1]
    f = xattr.target(model, data.draw(st.integers(0, n_out - 1), label="target"))
    base = data.draw(xst.inputs(x.shape[1:], batch_sizes=st.just(2)), label="baselines")
    got = xattr.shapley_values(f, baselines=base)(x)
    assert_trees_close(got, brute_force(f, x, baseline=base), **TIGHT, what="shapley_values vs brute force")


# --- the Shapley axioms on the exact values -------------------------------------------------------------


@given(xst.models_and_inputs(), st.data())
def test_efficiency(model_x, data):
    model, x = model_x
    with torch.no_grad():
        n_out = model(x).shape[1]
    f = xattr.target(model, data.draw(st.integers(0, n_out - 1), label="target"))
    base = data.draw(xst.inputs(x.shape[1:], batch_sizes=st.just(x.shape[0])), label="baselines")
    mask = shapley_groups((x,))[0]
    attr = xattr.shapley_values(f, baselines=base, feature_mask=mask)(x)
    # each feature's value sits on every element of the feature: sum over features, not elements
    per_feature = torch.zeros(x.shape[0], int(mask.max()) + 1, dtype=attr.dtype)
    per_feature.scatter_(1, torch.broadcast_to(mask, x.shape).reshape(x.shape[0], -1), attr.reshape(x.shape[0], -1))
    with torch.no_grad():
        gain = f(x) - f(base)
    torch.testing.assert_close(per_feature.sum(1), gain, atol=1e-12, rtol=1e-10)


@given(xst.models_and_inputs(kinds=("mlp",)))
def test_efficiency_per_element_and_for_every_output(model_x):
    model, x = model_x
    f = xattr.target(model, xattr.outputs(None))
    check_completeness(f, xattr.shapley_values(f), x, atol=1e-12, rtol=1e-10)


@given(xst.symmetric_models_and_inputs())
def test_symmetry(case):
    model, x, i, j = case
    check_symmetry(xattr.shapley_values(xattr.target(model, 0)), x, i, j)


@given(xst.dummy_models_and_inputs())
def test_dummy(case):
    model, x, dead = case
    attr_fn = xattr.shapley_values(xattr.target(model, 0), feature_mask=shapley_groups((x,))[0])
    check_dummy(attr_fn, x, dead, atol=1e-12)


@given(xst.model_specs(kinds=("mlp",)), xst.seeds, st.floats(-2, 2), st.floats(-2, 2))
def test_linearity(spec, seed, a, b):
    other = ModelSpec(**{**spec.__dict__, "seed": seed})
    x = random_tensor((2,) + spec.in_shape, seed=seed)
    f1, f2 = xattr.target(spec.build(), 0), xattr.target(other.build(), 0)
    check_linearity(xattr.shapley_values, f1, f2, a, b, x)


# --- sampling: convergence and variance --------------------------------------------------------------------


def _runs(f, x, n_runs, **kw):
    return torch.stack([xattr.shapley_value_sampling(f, generator=r, **kw)(x) for r in range(n_runs)])


@pytest.mark.parametrize("antithetic", [False, True], ids=["plain", "antithetic"])
def test_sampling_converges_to_the_exact_values(antithetic):
    f = xattr.target(_mlp(seed=3, d=6, activation="gelu"), 0)
    x = random_tensor((2, 6), seed=5)
    exact = xattr.shapley_values(f)(x)
    runs = _runs(f, x, 16, n_samples=64, antithetic=antithetic)  # 16 independent estimates
    mean, stderr = runs.mean(0), runs.std(0) / math.sqrt(runs.shape[0])
    assert (stderr > 0).all()
    # the estimator is unbiased: its mean lies within 4 standard errors of the exact values
    z = (mean - exact).abs() / stderr
    assert z.max() < 4, f"sampling mean is {z.max():.2f} standard errors from the exact values"
    # and a single estimate's error shrinks like 1 / sqrt(n_samples)
    one = xattr.shapley_value_sampling(f, n_samples=4096, generator=99, antithetic=antithetic)(x)
    assert ((one - exact).abs() < 4 * runs.std(0) / math.sqrt(4096 / 64) + 1e-12).all()


def test_antithetic_pairs_reduce_the_variance():
    f = xattr.target(_mlp(seed=0, d=6, n_out=2, hidden=(8,)), 0)
    x = random_tensor((3, 6), seed=10)
    exact = xattr.shapley_values(f)(x)
    plain = ((_runs(f, x, 20, n_samples=16) - exact) ** 2).mean()
    paired = ((_runs(f, x, 20, n_samples=16, antithetic=True) - exact) ** 2).mean()
    assert paired < 0.5 * plain, (paired, plain)


def test_antithetic_pairs_are_exact_for_pairwise_interactions():
    # v(S) = (sum_S x)^2 + sum_S c x: a contribution is linear in the sum before the feature, and a
    # permutation and its reverse see complementary sums, so each pair averages to the exact value.
    c = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.5], dtype=torch.float64)
    f = lambda x: x.sum(1) ** 2 + x @ c  # noqa: E731
    exact = X * X.sum(1, keepdim=True) + X * c
    assert_trees_close(xattr.shapley_values(f)(X), exact, **TIGHT, what="exact")
    paired = xattr.shapley_value_sampling(f, n_samples=2, generator=0, antithetic=True)(X)
    assert_trees_close(paired, exact, **TIGHT, what="one antithetic pair")
    plain = xattr.shapley_value_sampling(f, n_samples=2, generator=0)(X)
    assert (plain - exact).abs().max() > 1e-3


def test_every_sample_is_complete():
    f = xattr.target(_mlp(seed=4, d=7, activation="relu"), 2)
    x, base = random_tensor((4, 7), seed=2), random_tensor((1, 7), seed=3)
    for antithetic in (False, True):
        attr_fn = xattr.shapley_value_sampling(f, n_samples=3, generator=1, antithetic=antithetic, baselines=base)
        check_completeness(f, attr_fn, x, baselines=base, atol=1e-12, rtol=1e-10)


def test_one_feature_is_the_whole_gain():
    attr = xattr.shapley_value_sampling(F, n_samples=3, generator=0, feature_mask=torch.zeros(1, 5, dtype=torch.long))(X)
    gain = _f(X) - _f(torch.zeros_like(X))
    assert_trees_close(attr, gain[:, None].expand_as(X), **TIGHT)
    assert_trees_close(xattr.shapley_values(F, feature_mask=torch.zeros(5, dtype=torch.long))(X), attr, **TIGHT)


# --- sampling: randomness, batches, chunks ---------------------------------------------------------------


def test_seeds_batch_prefixes_and_chunks():
    fn = xattr.shapley_value_sampling(F, n_samples=5, generator=7)
    rng = torch.get_rng_state()
    first = fn(X)
    assert torch.equal(torch.get_rng_state(), rng), "an int seed must not touch torch's global generator"
    assert torch.equal(first, fn(X))
    assert not torch.equal(first, xattr.shapley_value_sampling(F, n_samples=5, generator=8)(X))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(xattr.shapley_value_sampling(F, generator=g1)(X), xattr.shapley_value_sampling(F, generator=g2)(X))
    check_batch_invariance(fn, X, by="prefix")
    for anti in (False, True):
        check_chunk_invariance(
            lambda cs: xattr.shapley_value_sampling(F, n_samples=5, generator=7, antithetic=anti, chunk_size=cs),
            X, chunk_sizes=(1, 3, 7, 64),
        )  # fmt: skip
    check_chunk_invariance(lambda cs: xattr.shapley_values(F, chunk_size=cs), X, chunk_sizes=(1, 4, 50))
    budget = xattr.shapley_value_sampling(F, n_samples=5, generator=7, memory_budget=200)(X)
    assert_trees_close(budget, first, what="memory_budget=200 vs default")


def test_antithetic_uses_each_permutation_and_its_reverse():
    # with 3 features and a seed, the antithetic draws are the plain draws of half as many samples
    # paired with their reverses: an odd n_samples drops the last reverse
    from xattr._src.shapley import _ranks

    plain = _ranks(2, 2, 4, 123, False, "cpu")
    paired = _ranks(2, 3, 4, 123, True, "cpu")
    assert torch.equal(paired[:, 0], plain[:, 0]) and torch.equal(paired[:, 2], plain[:, 1])
    assert torch.equal(paired[:, 1], 3 - plain[:, 0])
    assert torch.equal(paired.sort(-1).values, torch.arange(4).expand(2, 3, 4))


# --- inputs: masks, pytrees, pass-through arguments, dtypes, aggregate models, many outputs ------------------


def test_grouped_features_share_their_value():
    mask = torch.tensor([0, 1, 0, 1, 2])
    for method in (xattr.shapley_values(F, feature_mask=mask), xattr.shapley_value_sampling(F, feature_mask=mask, generator=0)):
        attr = method(X)
        assert torch.equal(attr[:, 0], attr[:, 2]) and torch.equal(attr[:, 1], attr[:, 3])
        assert_trees_close(attr[:, [0, 1, 4]].sum(1), _f(X) - _f(torch.zeros_like(X)), **TIGHT)


def test_per_example_masks():
    mask = torch.tensor([[0, 1, 1, 2, 2], [2, 2, 1, 1, 0], [1, 0, 2, 0, 1]])
    exact = xattr.shapley_values(F, feature_mask=mask)(X)
    for b in range(3):  # each example with its own mask, alone
        assert_trees_close(exact[b : b + 1], xattr.shapley_values(F, feature_mask=mask[b : b + 1])(X[b : b + 1]), **TIGHT)
    sampled = xattr.shapley_value_sampling(F, feature_mask=mask, n_samples=4, generator=2)
    check_batch_invariance(lambda x, m: sampled(x, feature_mask=m), X, mask, by="prefix")
    first = [mask[b].tolist().index(i) for b in range(3) for i in range(3)]
    per_feature = sampled(X).reshape(-1)[torch.tensor(first) + 5 * torch.arange(3).repeat_interleave(3)].reshape(3, 3)
    assert_trees_close(per_feature.sum(1), _f(X) - _f(torch.zeros_like(X)), **TIGHT)


def test_pytree_inputs_with_a_shared_mask_and_a_pass_through_argument():
    model = TwoInputs()
    a, b, scale = random_tensor((3, 3), 1), random_tensor((3, 2), 2), 1 + random_tensor((3, 4), 3).abs()
    mask = {"a": torch.tensor([0, 1, 2]), "b": torch.tensor([2, 0])}  # features 0 and 2 span both tensors
    flat_mask = torch.tensor([0, 1, 2, 2, 0])
    f = xattr.target(lambda d, s: model(d["a"], d["b"], s), 1)
    flat = xattr.target(lambda z, s: model(z[:, :3], z[:, 3:], s), 1)
    z = torch.cat([a, b], 1)
    want = brute_force(flat, z, mask=flat_mask[None], extra=(scale,))
    got = xattr.shapley_values(f, feature_mask=mask)({"a": a, "b": b}, scale)
    assert_trees_close(got, {"a": want[:, :3], "b": want[:, 3:]}, **TIGHT, what="dict input vs brute force")
    # sampling: the same permutations as the concatenated input (same seed, same features)
    sampled = xattr.shapley_value_sampling(f, feature_mask=mask, n_samples=6, generator=4)({"a": a, "b": b}, scale)
    concat = xattr.shapley_value_sampling(flat, feature_mask=flat_mask, n_samples=6, generator=4)(z, scale)
    assert_trees_close(sampled, {"a": concat[:, :3], "b": concat[:, 3:]}, **TIGHT, what="dict vs concatenated")
    # a tuple of arguments, argnums=(0, 1)
    g = xattr.target(lambda a, b, s: model(a, b, s), 1)
    pair = xattr.shapley_values(g, argnums=(0, 1), feature_mask=(mask["a"], mask["b"]))(a, b, scale)
    assert_trees_close(pair, (want[:, :3], want[:, 3:]), **TIGHT, what="argnums=(0, 1) vs brute force")
    check_dtype_device(xattr.shapley_value_sampling(g, argnums=(0, 1), generator=0), a, b, scale, argnums=(0, 1))


def test_bool_and_int_inputs():
    w = random_tensor((6,), seed=8)
    bits = torch.tensor([[1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 1]], dtype=torch.bool)
    f = lambda x: torch.tanh(x.double() @ w) * (1 + x[:, 0].double())  # noqa: E731
    got = xattr.shapley_values(f, baselines=False)(bits)
    assert got.dtype == torch.float64  # the default float dtype, widened to the float64 model's
    got32 = xattr.shapley_values(lambda x: f(x).float(), baselines=False)(bits)
    assert got32.dtype == torch.get_default_dtype()
    assert_trees_close(got.double(), brute_force(f, bits, baseline=False), atol=1e-6, rtol=1e-5)
    emb = nn.Embedding(10, 3).double()
    tokens = torch.tensor([[3, 1, 4, 1], [5, 9, 2, 6]])
    g = lambda t: torch.sin(emb(t).sum((1, 2)))  # noqa: E731
    got = xattr.shapley_values(g, baselines=0)(tokens)
    assert_trees_close(got.double(), brute_force(g, tokens, baseline=0), atol=1e-6, rtol=1e-5)
    sampled = xattr.shapley_value_sampling(g, baselines=0, generator=0)(tokens)
    with torch.no_grad():
        gain = g(tokens) - g(torch.zeros_like(tokens))
    assert_trees_close(sampled.sum(1).double(), gain, atol=1e-5, rtol=1e-5)


def test_aggregate_model():
    total = lambda x: F(x).sum()  # noqa: E731  one number for the whole batch
    per_example = xattr.shapley_values(F)(X)
    exact = xattr.shapley_values(total)(X)
    assert exact.shape == (1, 5)  # coalitions are shared, so the game is the sum of the examples' games
    assert_trees_close(exact[0], per_example.sum(0), **TIGHT)
    sampled = xattr.shapley_value_sampling(total, n_samples=4, generator=0)(X)
    assert sampled.shape == (1, 5)
    assert_trees_close(sampled.sum(), F(X).sum() - F(torch.zeros_like(X)).sum(), **TIGHT)
    with pytest.raises(ValueError, match="shared"):
        xattr.shapley_value_sampling(total, feature_mask=torch.arange(15).reshape(3, 5) % 4)(X)


@pytest.mark.parametrize("method", ["exact", "sampling"])
def test_many_outputs_add_a_k_axis(method):
    make = {
        "exact": lambda f: xattr.shapley_values(f),
        "sampling": lambda f: xattr.shapley_value_sampling(f, n_samples=3, generator=1),
    }[method]
    ks = [2, 0]
    many = make(xattr.target(MLP, xattr.outputs(ks)))(X)
    assert many.shape == (3, 2, 5)
    for j, k in enumerate(ks):
        assert_trees_close(many[:, j], make(xattr.target(MLP, k))(X), **TIGHT)


def test_float32_inputs_keep_their_dtype():
    model = ModelSpec("mlp", seed=0, in_shape=(4,), n_out=2, dtype=torch.float32).build()
    x = random_tensor((2, 4), seed=0, dtype=torch.float32)
    for attr_fn in (xattr.shapley_values(xattr.target(model, 0)), xattr.shapley_value_sampling(xattr.target(model, 0))):
        check_dtype_device(attr_fn, x)
        check_completeness(xattr.target(model, 0), attr_fn, x)


# --- errors ------------------------------------------------------------------------------------------


def test_too_many_features_is_a_clear_error():
    x = random_tensor((1, 21), seed=0)
    f = lambda x: x.sum(1)  # noqa: E731
    with pytest.raises(ValueError, match=r"2\^F.*F=21.*feature_mask.*shapley_value_sampling.*kernel_shap"):
        xattr.shapley_values(f)(x)
    with pytest.raises(ValueError, match="max_features=4"):
        xattr.shapley_values(f, max_features=4)(x[:, :5])
    grouped = xattr.shapley_values(f, feature_mask=torch.arange(21) // 3)(x)  # 7 groups are fine
    assert_trees_close(grouped, x.reshape(1, 7, 3).sum(2).repeat_interleave(3, 1), **TIGHT)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_bad_n_samples(n):
    with pytest.raises(ValueError, match="n_samples"):
        xattr.shapley_value_sampling(F, n_samples=n)


def test_bad_generator():
    with pytest.raises(TypeError, match="generator"):
        xattr.shapley_value_sampling(F, generator="seed")(X)
