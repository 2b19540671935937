"""Faithfulness correlation, monotonicity correlation and AIX360 monotonicity: explicit-loop
references (the subsets read back from the rows the model saw), known answers on linear models,
invariances, batch and chunk invariance, determinism and argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn

import xattr
from xattr import metrics as M

D = torch.float64


def mlp(seed: int, d: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, 1)).to(D).eval()


def data(seed: int, shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


class Recorder:
    """A model function that keeps every batch it was called with."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x):
        self.calls.append(x.detach().clone())
        return self.model(x)[:, 0]


def one(model, v: np.ndarray) -> float:
    with torch.no_grad():
        return model(torch.as_tensor(v, dtype=D)[None])[0, 0].item()


# ---------------------------------------------------------------- faithfulness correlation


def faithfulness_reference(model, x, b, attr, rows, n):
    """Per example and subset: the subset read back from the model's rows (the features equal to
    the baseline), its attribution sum and output drop by explicit loops, then scipy's Pearson r."""
    batch, d = x.shape
    out = []
    for i in range(batch):
        sums, drops, sizes = [], [], set()
        for s in range(n):
            row = rows[s * batch + i].numpy()  # copies are folded copy-major
            subset = [j for j in range(d) if row[j] == b[i, j].item()]
            sizes.add(len(subset))
            pert = x[i].numpy().copy()
            for j in subset:
                pert[j] = b[i, j].item()
            assert np.array_equal(pert, row)
            sums.append(sum(attr[i, j].item() for j in subset))
            drops.append(one(model, x[i].numpy()) - one(model, pert))
        out.append((stats.pearsonr(sums, drops)[0], sizes))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_faithfulness_correlation_equals_the_loop_reference(seed):
    model = mlp(seed)
    x, b = data(seed, (3, 6)), data(seed + 5, (3, 6))
    rec = Recorder(model)
    attr = data(seed + 9, (3, 6))
    got = M.faithfulness_correlation(rec, attr, subset_size=2, n_samples=7, baselines=b, generator=seed)(x)
    rows = torch.cat(rec.calls[1:])  # the first call is f(x)
    assert rows.shape == (7 * 3, 6)
    want = faithfulness_reference(model, x, b, attr, rows, 7)
    for i, (r, sizes) in enumerate(want):
        assert sizes == {2}
        assert got[i].item() == pytest.approx(r, abs=1e-12)
    assert got.dtype == D and got.shape == (3,)


def test_exact_global_attributions_of_a_linear_model_correlate_perfectly_and_shuffled_ones_do_not():
    w = data(0, (12,))
    f = lambda x: x @ w  # noqa: E731
    x, b = data(1, (16, 12)), data(2, (16, 12))
    exact = w * (x - b)  # integrated gradients of a linear model: every drop equals its subset's sum
    ig = xattr.integrated_gradients(f, n_steps=4)(x, baselines=b)
    torch.testing.assert_close(ig, exact)
    metric = lambda a: M.faithfulness_correlation(f, a, subset_size=4, n_samples=20, baselines=b, generator=0)(x)  # noqa: E731
    torch.testing.assert_close(metric(exact), torch.ones(16, dtype=D), atol=1e-12, rtol=0)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    shuffled = metric(exact[:, perm])
    assert shuffled.mean() < 0.5 and (shuffled < 1 - 1e-6).all(), shuffled
    assert metric(-exact).max() < -1 + 1e-12  # the opposite ranking is perfectly anti-correlated


def test_subsets_are_uniform_over_the_features():
    """Every feature is in a subset with probability k / F: 2000 subsets, a binomial tolerance."""
    d, k, n = 8, 3, 2000
    rec = Recorder(mlp(0, d))
    x = torch.ones(1, d, dtype=D)
    M.faithfulness_correlation(rec, x, subset_size=k, n_samples=n, baselines=0.0, generator=4)(x)
    rows = torch.cat(rec.calls[1:])
    removed = rows == 0
    assert (removed.sum(1) == k).all()
    freq = removed.double().mean(0)
    sd = (k / d * (1 - k / d) / n) ** 0.5
    assert ((freq - k / d).abs() < 4 * sd).all(), freq


def test_feature_groups_and_per_example_masks():
    """Groups move together; each example draws among its own ids (one example skips ids)."""
    model = mlp(3, 6)
    rec = Recorder(model)
    x, attr = data(3, (2, 6)), data(4, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 2, 2], [1, 1, 1, 5, 5, 7]])
    got = M.faithfulness_correlation(rec, attr, subset_size=1, n_samples=9, feature_mask=mask, generator=1)(x)
    rows = torch.cat(rec.calls[1:]).reshape(9, 2, 6)
    for i in range(2):
        ids = mask[i].tolist()
        sums, drops = [], []
        for s in range(9):
            gone = [j for j in range(6) if rows[s, i, j] == 0]
            groups = {ids[j] for j in gone}
            assert len(groups) == 1 and gone == [j for j in range(6) if ids[j] in groups]
            sums.append(sum(attr[i, j].item() for j in gone))
            drops.append(one(model, x[i].numpy()) - one(model, rows[s, i].numpy()))
        assert got[i].item() == pytest.approx(stats.pearsonr(sums, drops)[0], abs=1e-12)


def test_faithfulness_batch_chunk_invariance_and_determinism():
    model = mlp(5)
    f = xattr.target(model, 0)
    x = data(5, (4, 6))
    ig = xattr.integrated_gradients(f, n_steps=8)
    m = lambda **kw: M.faithfulness_correlation(f, ig, subset_size=3, n_samples=6, **kw)  # noqa: E731
    before = x.clone()
    whole = m(generator=7)(x)
    assert torch.equal(x, before) and not model.training  # the user's tensors and mode are left as they were
    torch.testing.assert_close(whole, m(generator=7)(x))
    torch.testing.assert_close(whole, m(generator=7, chunk_size=4)(x))
    # example i draws from the seed of (generator, i) (NOTE: [Explicit randomness]), whatever batch follows it
    loop = torch.cat([m(generator=7)(x[: i + 1])[i:] for i in range(4)])
    torch.testing.assert_close(whole, loop)
    torch.testing.assert_close(m(generator=7)(torch.cat([x, data(6, (3, 6))]))[:4], whole)
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    torch.testing.assert_close(m(generator=g1)(x), m(generator=g2)(x))
    assert not torch.equal(whole, m(generator=8)(x))


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), scale=st.floats(0.01, 100.0), shift=st.floats(-5.0, 5.0), k=st.integers(1, 4))
def test_faithfulness_ignores_positive_affine_maps_of_the_attributions(seed, scale, shift, k):
    """|S| is fixed, so sum_S (a phi + c) = a sum_S phi + k c: Pearson's r does not change (a > 0)
    and flips sign for a < 0; it always lies in [-1, 1]."""
    model = mlp(seed)
    f = xattr.target(model, 0)
    x, attr = data(seed, (2, 6)), data(seed + 1, (2, 6))
    m = lambda a: M.faithfulness_correlation(f, a, subset_size=k, n_samples=8, generator=seed)(x)  # noqa: E731
    base = m(attr)
    assert ((base >= -1 - 1e-12) & (base <= 1 + 1e-12)).all()
    torch.testing.assert_close(m(scale * attr + shift), base, atol=1e-9, rtol=0)
    torch.testing.assert_close(m(-scale * attr), -base, atol=1e-9, rtol=0)


def test_faithfulness_errors():
    f = xattr.target(mlp(0), 0)
    x = data(0, (2, 6))
    with pytest.raises(ValueError, match="less than the number of features"):
        M.faithfulness_correlation(f, x, subset_size=6, n_samples=4)(x)
    with pytest.raises(ValueError, match="less than the number of features"):
        M.faithfulness_correlation(f, x, subset_size=2, n_samples=4, feature_mask=torch.tensor([[0, 0, 0, 1, 1, 1]]))(x)
    g = lambda v: v[:, 0]  # noqa: E731
    with pytest.raises(ValueError, match="less than the number of features"):
        M.faithfulness_correlation(g, x[:, :1], subset_size=1, n_samples=4)(x[:, :1])
    with pytest.raises(ValueError, match="n_samples"):
        M.faithfulness_correlation(f, x, subset_size=2, n_samples=1)
    with pytest.raises(ValueError, match="subset_size"):
        M.faithfulness_correlation(f, x, subset_size=0, n_samples=4)
    with pytest.raises(ValueError, match="do not match"):
        M.faithfulness_correlation(f, x[:, :3], subset_size=2, n_samples=4)(x)


# ---------------------------------------------------------------- monotonicity correlation


def monotonicity_reference(model, x, attr, draws, mask=None):
    """e_i = mean_s |f(x) - f(x with feature i from draw s)| by loops, then scipy's Spearman rho."""
    batch, d = x.shape
    out = []
    for i in range(batch):
        ids = list(range(d)) if mask is None else mask[i].tolist()
        feats = sorted(set(ids))
        size, change = [], []
        for feat in feats:
            cols = [j for j in range(d) if ids[j] == feat]
            size.append(abs(sum(attr[i, j].item() for j in cols)))
            total = 0.0
            for s in range(draws.shape[1]):
                pert = x[i].numpy().copy()
                for j in cols:
                    pert[j] = draws[i, s, j].item()
                total += abs(one(model, x[i].numpy()) - one(model, pert))
            change.append(total / draws.shape[1])
        out.append(stats.spearmanr(size, change)[0])
    return torch.tensor(out, dtype=D)


def test_monotonicity_correlation_with_a_baseline_equals_the_loop_reference():
    model = mlp(2)
    x, b, attr = data(2, (3, 6)), data(3, (3, 6)), data(4, (3, 6))
    f = xattr.target(model, 0)
    got = M.monotonicity_correlation(f, attr, baselines=b)(x)
    torch.testing.assert_close(got, monotonicity_reference(model, x, attr, b[:, None]), atol=1e-12, rtol=0)
    mask = torch.tensor([[0, 0, 1, 2, 2, 3], [4, 4, 4, 1, 1, 0], [0, 1, 2, 3, 4, 5]])
    got = M.monotonicity_correlation(f, attr, baselines=0.0, feature_mask=mask, chunk_size=5)(x)
    want = monotonicity_reference(model, x, attr, torch.zeros(3, 1, 6, dtype=D), mask)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    loop = [M.monotonicity_correlation(f, attr[i : i + 1], feature_mask=mask[i : i + 1])(x[i : i + 1]) for i in range(3)]
    torch.testing.assert_close(got, torch.cat(loop))  # nothing random: a batch is the loop over its examples


def test_monotonicity_correlation_with_random_draws_equals_the_loop_reference():
    model = mlp(6)
    x, attr = data(6, (2, 6)), data(7, (2, 6))
    calls = []

    def perturb(v, *, generator=None):
        out = M.uniform_noise(v, 0.5, generator=generator)
        calls.append(out)
        return out

    got = M.monotonicity_correlation(xattr.target(model, 0), attr, n_samples=5, perturb_func=perturb, generator=1)(x)
    draws = torch.stack(calls)  # one call per example with its generator: (B, n, d)
    assert draws.shape == (2, 5, 6)
    torch.testing.assert_close(got, monotonicity_reference(model, x, attr, draws), atol=1e-12, rtol=0)
    again = lambda a: M.monotonicity_correlation(  # noqa: E731
        xattr.target(model, 0), a, n_samples=5, perturb_func=M.uniform_noise, generator=1
    )
    loop = torch.cat([again(attr[: i + 1])(x[: i + 1])[i:] for i in range(2)])  # example i's draws: seed (1, i)
    torch.testing.assert_close(again(attr)(x), loop)


def test_monotonicity_correlation_is_one_for_a_linear_model():
    """f = w.x with the zero baseline: the change of feature j alone is |w_j x_j| = |attribution|."""
    w = data(0, (10,))
    f = lambda x: x @ w  # noqa: E731
    x = data(1, (5, 10))
    torch.testing.assert_close(M.monotonicity_correlation(f, w * x)(x), torch.ones(5, dtype=D))
    # with noise draws the expected change of feature j is |w_j| E|u_j|: ordered like |w_j|
    u = M.monotonicity_correlation(f, w.expand_as(x), n_samples=400, perturb_func=M.uniform_noise, generator=0)(x)
    assert (u > 0.9).all(), u
    assert (M.monotonicity_correlation(f, 1 / (w * x))(x) < -0.99).all()  # the reversed order


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), power=st.sampled_from([0.5, 1.0, 3.0]), flip=st.booleans())
def test_monotonicity_correlation_sees_only_the_order_of_the_magnitudes(seed, power, flip):
    model = mlp(seed)
    f = xattr.target(model, 0)
    x, attr = data(seed, (2, 6)), data(seed + 1, (2, 6))
    base = M.monotonicity_correlation(f, attr)(x)
    sign = torch.where(torch.rand(2, 6, generator=torch.Generator().manual_seed(seed)) < 0.5, -1.0, 1.0) if flip else 1
    torch.testing.assert_close(M.monotonicity_correlation(f, sign * attr.abs() ** power)(x), base)
    assert ((base >= -1 - 1e-12) & (base <= 1 + 1e-12)).all()


def test_monotonicity_correlation_errors():
    f = xattr.target(mlp(0), 0)
    x = data(0, (2, 6))
    with pytest.raises(ValueError, match="n_samples=3 without a perturb_func"):
        M.monotonicity_correlation(f, x, n_samples=3)
    with pytest.raises(ValueError, match="nothing random"):
        M.monotonicity_correlation(f, x, generator=0)
    with pytest.raises(ValueError, match="at least 2 features"):
        M.monotonicity_correlation(lambda v: v[:, 0], x[:, :1])(x[:, :1])
    with pytest.raises(ValueError, match="generator"):
        M.monotonicity_correlation(f, x, n_samples=2, perturb_func=lambda v: v + 1, generator=0)(x)


# ---------------------------------------------------------------- monotonicity (Arya et al.)


def arya_reference(model, x, b, attr):
    """AIX360's loop: from the baseline add features in increasing attribution order; the share of
    the F - 1 steps after the first where the output does not fall."""
    out = []
    for i in range(x.shape[0]):
        order = np.argsort(attr[i].numpy(), kind="stable")
        cur = b[i].numpy().copy()
        probs = []
        for j in order:
            cur[j] = x[i, j].item()
            probs.append(one(model, cur))
        out.append(np.mean(np.diff(probs) >= 0))
    return torch.tensor(out, dtype=D)


def test_monotonicity_equals_the_aix360_loop():
    model = mlp(8)
    x, b, attr = data(8, (4, 6)), data(9, (4, 6)), data(10, (4, 6))
    got = M.monotonicity(xattr.target(model, 0), attr, baselines=b)(x)
    torch.testing.assert_close(got, arya_reference(model, x, b, attr))
    loop = [M.monotonicity(xattr.target(model, 0), attr[i : i + 1], baselines=b[i : i + 1])(x[i : i + 1]) for i in range(4)]
    torch.testing.assert_close(got, torch.cat(loop))
    mask = torch.tensor([[0, 0, 1, 1, 2, 2]])
    grouped = M.monotonicity(xattr.target(model, 0), attr, baselines=b, feature_mask=mask, chunk_size=3)(x)
    want = []  # the grouped reference written out: two elements move together
    for i in range(4):
        order = np.argsort((attr[i, [0, 2, 4]] + attr[i, [1, 3, 5]]).numpy(), kind="stable")
        cur, probs = b[i].numpy().copy(), []
        for g in order:
            cur[2 * g : 2 * g + 2] = x[i, 2 * g : 2 * g + 2].numpy()
            probs.append(one(model, cur))
        want.append(np.mean(np.diff(probs) >= 0))
    torch.testing.assert_close(grouped, torch.tensor(want, dtype=D))


def test_monotonicity_on_a_linear_model_counts_the_non_negative_attributions():
    """Adding feature j raises w.x by w_j (x_j - b_j), its exact attribution: in increasing order,
    step k >= 2 is monotone iff the k-th smallest attribution is >= 0."""
    w = data(0, (9,))
    f = lambda x: x @ w  # noqa: E731
    x, b = data(1, (6, 9)), data(2, (6, 9))
    exact = w * (x - b)
    want = (exact.sort(1).values[:, 1:] >= 0).double().mean(1)
    torch.testing.assert_close(M.monotonicity(f, exact, baselines=b)(x), want)
    positive = M.monotonicity(f, torch.ones_like(x), baselines=torch.where(w > 0, x - 1, x + 1))(x)
    assert (positive == 1).all()


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), scale=st.floats(0.01, 100.0))
def test_monotonicity_sees_only_the_order_and_lies_in_0_1(seed, scale):
    model = mlp(seed)
    f = xattr.target(model, 0)
    x, attr = data(seed, (3, 6)), data(seed + 1, (3, 6))
    base = M.monotonicity(f, attr)(x)
    assert ((base >= 0) & (base <= 1)).all()
    torch.testing.assert_close(M.monotonicity(f, scale * attr**3 + 1)(x), base)


def test_monotonicity_errors():
    with pytest.raises(ValueError, match="at least 2 features"):
        M.monotonicity(lambda v: v[:, 0], torch.ones(2, 1))(torch.ones(2, 1))
