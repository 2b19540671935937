"""Standard errors of the Monte Carlo attributions (``return_std_error=True``): against slow
references recomputed sample by sample from the draws each method made (numpy's ddof=1 standard
deviation over sqrt(S)), chunk invariance, calibration over many independent estimates, pytrees,
many outputs, complex and half-precision samples, gradients through the SE, and the refusals.

The calibration tests use the batch as the repetition axis: each example draws from its own
generator (NOTE: [Explicit randomness]), so R copies of one input in a batch are R independent
runs of the estimator, in one call.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.stats
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr._src.sampling import row_seeds, streams
from xattr._src.shapley import _ranks

D = torch.float64
B = 3


def mlp(seed: int = 0, d_in: int = 4, n_out: int = 3, act=nn.Tanh) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 8), act(), nn.Linear(8, n_out)).to(D).eval()


def inputs(seed: int, shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def grad_row(model, k: int, point: torch.Tensor) -> torch.Tensor:
    """d model(point)[k] / d point for one example, by plain autograd."""
    p = point.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(p[None])[0, k], p)
    return g


def np_se(samples: np.ndarray, axis: int = 0) -> np.ndarray:
    """The obvious standard error: numpy's unbiased standard deviation over sqrt(S)."""
    return samples.std(axis=axis, ddof=1) / math.sqrt(samples.shape[axis])


class Recorder:
    """An attribution function that records the rows it is called with (copy-major folds)."""

    def __init__(self, inner):
        self.inner, self.rows, self.kw = inner, [], []

    def __call__(self, v, **kw):
        self.rows.append(torch.utils._pytree.tree_map(lambda t: t.detach().clone(), v))
        self.kw.append({k: t.detach().clone() for k, t in kw.items()})
        return self.inner(v, **kw)


# -- slow references -------------------------------------------------------------------------


@pytest.mark.parametrize("reduce", ["mean", "sq_mean"])
@pytest.mark.parametrize("chunk_size", [None, 2 * B + 1])
def test_smooth_matches_a_loop_over_the_noisy_inputs_it_drew(reduce, chunk_size):
    model, x, S = mlp(1), inputs(1, (B, 4)), 7
    rec = Recorder(xattr.saliency(xattr.target(model, 2), abs=False))
    attr, se = xattr.smooth(rec, stdevs=0.4, n_samples=S, reduce=reduce, generator=3, chunk_size=chunk_size,
                            return_std_error=True)(x)  # fmt: skip
    noisy = torch.cat(rec.rows).reshape(S, B, 4)  # copy-major: row s * B + i
    samples = np.array([[grad_row(model, 2, noisy[s, i]).numpy() for i in range(B)] for s in range(S)])
    samples = samples**2 if reduce == "sq_mean" else samples
    np.testing.assert_allclose(attr.numpy(), samples.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(se.numpy(), np_se(samples), rtol=1e-10, atol=1e-15)


def test_expectation_matches_a_loop_over_the_baselines_it_drew():
    model, x, S = mlp(2), inputs(2, (B, 4)), 6
    dist = inputs(3, (10, 4))
    rec = Recorder(xattr.integrated_gradients(xattr.target(model, 0), n_steps=4, method="riemann_middle"))
    attr, se = xattr.expectation(rec, baselines=dist, n_samples=S, generator=5, chunk_size=B, return_std_error=True)(x)
    bases = torch.cat([kw["baselines"] for kw in rec.kw]).reshape(S, B, 4)
    assert all(any(torch.equal(b, row) for row in dist) for b in bases.reshape(-1, 4))  # drawn from the rows

    def ig(xi, bi):  # riemann_middle by hand
        return sum(grad_row(model, 0, bi + (j + 0.5) / 4 * (xi - bi)) for j in range(4)) / 4 * (xi - bi)

    samples = np.array([[ig(x[i], bases[s, i]).numpy() for i in range(B)] for s in range(S)])
    np.testing.assert_allclose(attr.numpy(), samples.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(se.numpy(), np_se(samples), rtol=1e-10, atol=1e-15)


class PointSpy(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, []

    def forward(self, v):
        self.rows.append(v.tolist())  # (inside torch.func transforms: plain numbers)
        return self.model(v)


@pytest.mark.parametrize("multiply_by_inputs", [True, False])
def test_gradient_shap_matches_its_definition_sample_by_sample(multiply_by_inputs):
    """With return_delta the model sees, per chunk, the path points, the noisy inputs and the
    drawn baselines: every draw is recovered, and each sample's attribution recomputed."""
    model, x, S = mlp(3), inputs(4, (B, 4)), 5
    spy = PointSpy(model)
    gs = xattr.gradient_shap(xattr.target(spy, 1), baselines=inputs(5, (8, 4)), n_samples=S, stdevs=0.3, generator=7,
                             chunk_size=S * B, multiply_by_inputs=multiply_by_inputs, return_delta=True,
                             return_std_error=True)  # fmt: skip
    attr, delta, se = gs(x)
    points, noisy, bases = (torch.tensor(r, dtype=D).reshape(S, B, 4) for r in spy.rows)
    samples = np.array([[(grad_row(model, 1, points[s, i]) * ((noisy[s, i] - bases[s, i]) if multiply_by_inputs else 1)).numpy()
                         for i in range(B)] for s in range(S)])  # fmt: skip
    np.testing.assert_allclose(attr.numpy(), samples.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(se.numpy(), np_se(samples), rtol=1e-10, atol=1e-15)
    assert delta.shape == (B * S,)  # the order: (attributions, delta, std_error)


@pytest.mark.parametrize("antithetic", [False, True])
def test_shapley_sampling_matches_a_loop_over_its_permutations(antithetic):
    """The permutations are the ones the method draws (its `_ranks` from the same seeds); the model
    is called on one coalition at a time."""
    model, x, S, F = mlp(4, d_in=5), inputs(6, (B, 5)), 6, 5
    base = inputs(7, (1, 5))
    attr, se = xattr.shapley_value_sampling(xattr.target(model, 0), n_samples=S, baselines=base, generator=11,
                                            antithetic=antithetic, return_std_error=True)(x)  # fmt: skip
    (stream,) = streams(11, 1)
    rank = _ranks(B, S, F, stream, antithetic, "cpu", row_seeds(stream, B))
    contrib = np.zeros((S, B, F))
    with torch.no_grad():
        for i in range(B):
            for s in range(S):
                order = rank[i, s].argsort().tolist()  # the features by position
                current = base[0].clone()
                before = model(current[None])[0, 0].item()
                for feature in order:
                    current[feature] = x[i, feature]
                    after = model(current[None])[0, 0].item()
                    contrib[s, i, feature] = after - before
                    before = after
    units = contrib.reshape(S // 2, 2, B, F).mean(1) if antithetic else contrib
    np.testing.assert_allclose(attr.numpy(), contrib.mean(0), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(se.numpy(), np_se(units), rtol=1e-9, atol=1e-13)
    if antithetic:  # the pairs' SE, not the naive one over S dependent samples
        assert not np.allclose(se.numpy(), np_se(contrib), rtol=1e-3)


# -- the numbers of the attributions, and chunks ----------------------------------------------


def _methods(model, dist):
    f = xattr.target(model, 1)
    sal = xattr.saliency(f, abs=False)
    return {
        "smoothgrad": lambda **kw: xattr.smoothgrad(sal, stdevs=0.3, n_samples=9, generator=1, **kw),
        "smoothgrad_sq": lambda **kw: xattr.smoothgrad_sq(sal, stdevs=0.3, n_samples=9, generator=1, **kw),
        "expectation": lambda **kw: xattr.expectation(xattr.integrated_gradients(f, n_steps=4), baselines=dist,
                                                      n_samples=9, generator=1, **kw),
        "gradient_shap": lambda **kw: xattr.gradient_shap(f, baselines=dist, n_samples=9, stdevs=0.1, generator=1, **kw),
        "shapley_value_sampling": lambda **kw: xattr.shapley_value_sampling(f, n_samples=8, generator=1, **kw),
    }  # fmt: skip


@pytest.mark.parametrize("name", ["smoothgrad", "smoothgrad_sq", "expectation", "gradient_shap", "shapley_value_sampling"])
def test_the_flag_leaves_the_attributions_alone_and_chunks_do_not_matter(name):
    model, x = mlp(5), inputs(8, (B, 4))
    make = _methods(model, inputs(9, (12, 4)))[name]
    plain = make()(x)
    attr, se = make(return_std_error=True)(x)
    assert torch.equal(attr, plain), "return_std_error must not change the attributions"
    assert se.shape == attr.shape and se.dtype == attr.dtype and (se > 0).all()
    for chunk_size in (1, B, 4 * B + 1):
        other_attr, other_se = make(return_std_error=True, chunk_size=chunk_size)(x)
        torch.testing.assert_close(other_attr, attr, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(other_se, se, rtol=1e-10, atol=1e-14)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), n_samples=st.integers(2, 9), chunk_size=st.integers(1, 20),
       scale=st.floats(-3.0, 3.0), shift=st.floats(-100.0, 100.0))  # fmt: skip
def test_se_is_chunk_invariant_scales_with_the_samples_and_ignores_shifts(seed, n_samples, chunk_size, scale, shift):
    """SE(c A + d) = |c| SE(A) (the samples are c a_s + d) whatever the chunks; a large shift d must
    not cost precision (the merge is about each example's first sample)."""
    model, x = mlp(seed % 7), inputs(seed, (2, 4))
    sal = xattr.saliency(xattr.target(model, 0), abs=False)

    def run(fn, cs):
        return xattr.smoothgrad(fn, stdevs=0.5, n_samples=n_samples, generator=seed, chunk_size=cs, return_std_error=True)(x)

    _, se = run(sal, None)
    _, se_chunked = run(sal, chunk_size)
    torch.testing.assert_close(se_chunked, se, rtol=1e-9, atol=1e-14)
    _, se_moved = run(lambda v: scale * sal(v) + shift, chunk_size)
    torch.testing.assert_close(se_moved, abs(scale) * se, rtol=1e-7, atol=1e-12)
    assert (se >= 0).all() and torch.isfinite(se).all()


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), n_samples=st.sampled_from([4, 6, 10]))
def test_shapley_se_vanishes_where_every_order_agrees(seed, n_samples):
    """An additive model gives every permutation the same contributions: SE 0. A model with only
    pairwise interactions gives every antithetic pair the exact values: SE 0 with pairs, not without."""
    x = inputs(seed, (2, 5))
    w = inputs(seed + 1, (5,))
    q = inputs(seed + 2, (5, 5))
    additive = xattr.shapley_value_sampling(lambda v: v @ w, n_samples=n_samples, generator=seed, return_std_error=True)
    assert additive(x)[1].abs().max() < 1e-12

    def quadratic(v):
        return v @ w + ((v @ q) * v).sum(1)

    paired = xattr.shapley_value_sampling(quadratic, n_samples=n_samples, generator=seed, antithetic=True, return_std_error=True)
    single = xattr.shapley_value_sampling(quadratic, n_samples=n_samples, generator=seed, return_std_error=True)
    assert paired(x)[1].abs().max() < 1e-10
    assert single(x)[1].max() > 1e-3


def test_zero_noise_gives_zero_standard_error():
    model, x = mlp(6), inputs(10, (B, 4))
    _, se = xattr.smoothgrad(xattr.saliency(xattr.target(model, 0)), stdevs=0.0, n_samples=4, generator=0,
                             chunk_size=B, return_std_error=True)(x)  # fmt: skip
    assert torch.equal(se, torch.zeros_like(se))


# -- calibration -----------------------------------------------------------------------------


def _calibration(estimates: torch.Tensor, ses: torch.Tensor, truth: torch.Tensor, units: int):
    """(ratio, coverage, expected): the spread of R independent estimates over the root mean square
    of their reported SEs (1 when calibrated: E[SE^2] = sigma^2 / S), the share of |estimate -
    truth| < 1.96 SE, and the share expected for normal samples: Student's t with units - 1 degrees
    of freedom (an SE from 20 samples is itself noisy, so 1.96 SE covers ~93.5%, not 95%)."""
    ratio = estimates.std(0, correction=1) / ses.pow(2).mean(0).sqrt()
    coverage = ((estimates - truth).abs() < 1.96 * ses).to(D).mean()
    return ratio, coverage.item(), 1 - 2 * scipy.stats.t.sf(1.96, units - 1)


R = 600  # independent estimates (rows of one batch)


def test_calibration_of_smoothgrad():
    """The long-run mean E_e[grad f(x + e)] is taken from 600 x 4000 draws."""
    model, x0 = mlp(7), inputs(11, (1, 4))
    sal = xattr.saliency(xattr.target(model, 1), abs=False)
    est, se = xattr.smoothgrad(sal, stdevs=0.5, n_samples=20, generator=0, return_std_error=True)(x0.expand(R, 4))
    truth = xattr.smoothgrad(sal, stdevs=0.5, n_samples=4000, generator=1)(x0.expand(R, 4)).mean(0)
    ratio, coverage, expected = _calibration(est, se, truth, 20)
    assert ((ratio > 0.88) & (ratio < 1.12)).all(), ratio  # R = 600: the ratio's own noise is ~3%
    assert expected - 0.035 < coverage < 0.975, (coverage, expected)


def test_calibration_of_gradient_shap_against_integrated_gradients():
    """One baseline and no noise: the long-run mean is integrated gradients (fine quadrature)."""
    model, x0 = mlp(8), inputs(12, (1, 4))
    f = xattr.target(model, 0)
    est, se = xattr.gradient_shap(f, baselines=torch.zeros(1, 4, dtype=D), n_samples=30, generator=0,
                                  return_std_error=True)(x0.expand(R, 4))  # fmt: skip
    truth = xattr.integrated_gradients(f, n_steps=256)(x0)[0]
    ratio, coverage, expected = _calibration(est, se, truth, 30)
    assert ((ratio > 0.88) & (ratio < 1.12)).all(), ratio
    assert expected - 0.035 < coverage < 0.975, (coverage, expected)


@pytest.mark.parametrize("antithetic", [False, True])
def test_calibration_of_shapley_sampling_against_the_exact_values(antithetic):
    model, x0 = mlp(9, d_in=6), inputs(13, (1, 6))
    f = xattr.target(model, 2)
    est, se = xattr.shapley_value_sampling(f, n_samples=24, generator=0, antithetic=antithetic,
                                           return_std_error=True)(x0.expand(R, 6))  # fmt: skip
    truth = xattr.shapley_values(f)(x0)[0]
    ratio, coverage, expected = _calibration(est, se, truth, 12 if antithetic else 24)
    assert ((ratio > 0.88) & (ratio < 1.12)).all(), ratio
    assert expected - 0.035 < coverage < 0.975, (coverage, expected)


def test_independent_seeds_agree_with_the_batch_as_repetitions():
    """The same calibration over 40 separately seeded calls of a 3-example batch."""
    model, x = mlp(10), inputs(14, (B, 4))
    sal = xattr.saliency(xattr.target(model, 0), abs=False)
    runs = [xattr.smoothgrad(sal, stdevs=0.5, n_samples=16, generator=g, return_std_error=True)(x) for g in range(40)]
    est, se = torch.stack([a for a, _ in runs]), torch.stack([s for _, s in runs])
    truth = xattr.smoothgrad(sal, stdevs=0.5, n_samples=20000, generator=99)(x)
    ratio, coverage, expected = _calibration(est, se, truth, 16)
    assert ((ratio > 0.7) & (ratio < 1.3)).all(), ratio  # 40 repetitions: the ratio's own noise is ~11%
    assert expected - 0.05 < coverage < 0.99, (coverage, expected)  # 480 intervals


# -- structure -------------------------------------------------------------------------------


def test_pytrees_and_many_outputs():
    model = mlp(11, d_in=6)

    def f2(d):
        return model(torch.cat([d["a"], d["b"].flatten(1)], 1))

    x = {"a": inputs(15, (B, 2)), "b": inputs(16, (B, 2, 2))}
    many = xattr.target(f2, xattr.outputs([0, 2]))
    sal = xattr.saliency(many, abs=False)
    rec = Recorder(sal)
    attr, se = xattr.smoothgrad(rec, stdevs={"a": 0.2, "b": 0.5}, n_samples=5, generator=2, return_std_error=True)(x)
    assert set(se) == {"a", "b"} and se["a"].shape == (B, 2, 2) and se["b"].shape == (B, 2, 2, 2)
    assert torch.equal(attr["a"], xattr.smoothgrad(sal, stdevs={"a": 0.2, "b": 0.5}, n_samples=5, generator=2)(x)["a"])
    noisy = {n: torch.cat([r[n] for r in rec.rows]).reshape((5, B) + x[n].shape[1:]) for n in ("a", "b")}
    for j, k in enumerate((0, 2)):  # against the recorded noisy rows, output by output
        samples = {"a": [], "b": []}
        for s in range(5):
            p = {n: noisy[n][s].clone().requires_grad_(True) for n in ("a", "b")}
            ga, gb = torch.autograd.grad(f2(p)[:, k].sum(), (p["a"], p["b"]))
            samples["a"].append(ga.numpy())
            samples["b"].append(gb.numpy())
        for key in ("a", "b"):
            np.testing.assert_allclose(se[key][:, j].numpy(), np_se(np.array(samples[key])), rtol=1e-10, atol=1e-15)

    # tuple argnums and K outputs for gradient SHAP and Shapley sampling
    g2 = xattr.target(lambda a, b: model(torch.cat([a, b], 1)), xattr.outputs([1, 2]))
    a, b = inputs(17, (B, 2)), inputs(18, (B, 4))
    attr, delta, se = xattr.gradient_shap(g2, baselines=(torch.zeros(3, 2, dtype=D), torch.zeros(3, 4, dtype=D)),
                                          argnums=(0, 1), n_samples=4, generator=0, return_delta=True,
                                          return_std_error=True)(a, b)  # fmt: skip
    assert isinstance(se, tuple) and [s.shape for s in se] == [(B, 2, 2), (B, 2, 4)] and delta.shape == (B * 4, 2)
    attr, se = xattr.shapley_value_sampling(g2, argnums=(0, 1), n_samples=4, generator=0, return_std_error=True)(a, b)
    assert [s.shape for s in se] == [(B, 2, 2), (B, 2, 4)] and all((s > 0).all() for s in se)


def test_grouped_features_share_their_standard_error():
    model, x = mlp(12, d_in=6), inputs(19, (B, 6))
    mask = torch.tensor([[0, 0, 1, 1, 2, 2]])
    attr, se = xattr.shapley_value_sampling(xattr.target(model, 0), n_samples=6, feature_mask=mask, generator=0,
                                            return_std_error=True)(x)  # fmt: skip
    assert torch.equal(se[:, 0], se[:, 1]) and torch.equal(se[:, 2], se[:, 3]) and (se > 0).all()

    # per-example masks holding other ids (one with gaps): a batch prefix alone gets the same SEs
    masks = torch.tensor([[0, 0, 1, 1, 2, 2], [5, 5, 5, 9, 9, 9], [0, 1, 2, 3, 4, 5]])
    sv = xattr.shapley_value_sampling(xattr.target(model, 0), n_samples=6, generator=0, return_std_error=True)
    _, se = sv(x, feature_mask=masks)
    for k in (1, 2):
        torch.testing.assert_close(sv(x[:k], feature_mask=masks[:k])[1], se[:k], rtol=1e-12, atol=0)
    assert torch.equal(se[1, :3], se[1, :1].expand(3)) and (se > 0).all()


def test_complex_and_half_precision_samples():
    x = inputs(20, (B, 4))
    rec = Recorder(lambda v: torch.complex(v, v**2))
    attr, se = xattr.smoothgrad(rec, stdevs=0.3, n_samples=6, generator=0, chunk_size=B, return_std_error=True)(x)
    samples = torch.stack([torch.complex(r, r**2) for r in torch.cat(rec.rows).reshape(6, B, 4)]).numpy()
    assert se.dtype == D
    np.testing.assert_allclose(se.numpy(), np.sqrt((np.abs(samples - samples.mean(0)) ** 2).sum(0) / 5 / 6), rtol=1e-12)

    half = (1000.0 + inputs(21, (B, 4))).half()  # the mean dominates the spread
    _, se16 = xattr.smoothgrad(lambda v: v, stdevs=0.05, n_samples=8, generator=0, chunk_size=B, return_std_error=True)(half)
    _, se64 = xattr.smoothgrad(lambda v: v.double(), stdevs=0.05, n_samples=8, generator=0, chunk_size=B,
                               return_std_error=True)(half)  # fmt: skip
    assert se16.dtype == torch.float16
    torch.testing.assert_close(se16.double(), se64, rtol=2e-3, atol=0)  # float32 sums, one rounding


def test_gradient_through_the_standard_error():
    model, x = mlp(13), inputs(22, (2, 4))
    sg = xattr.smoothgrad(xattr.saliency(xattr.target(model, 0), abs=False), stdevs=0.3, n_samples=6, generator=0,
                          return_std_error=True)  # fmt: skip
    got = torch.func.grad(lambda v: sg(v)[1].sum())(x)
    eps = 1e-6
    for i, j in [(0, 0), (1, 3)]:
        up, down = x.clone(), x.clone()
        up[i, j] += eps
        down[i, j] -= eps
        fd = (sg(up)[1].sum() - sg(down)[1].sum()) / (2 * eps)
        torch.testing.assert_close(got[i, j], fd, rtol=1e-5, atol=1e-8)


# -- refusals --------------------------------------------------------------------------------


def test_refusals():
    sal = xattr.saliency(xattr.target(mlp(0), 0))
    with pytest.raises(ValueError, match="reduce='var'"):
        xattr.vargrad(sal, n_samples=4, return_std_error=True)
    with pytest.raises(ValueError, match="at least two"):
        xattr.smoothgrad(sal, n_samples=1, return_std_error=True)
    with pytest.raises(ValueError, match="at least two"):
        xattr.expectation(sal, baselines=torch.zeros(2, 4), n_samples=1, return_std_error=True)
    with pytest.raises(ValueError, match="at least two"):
        xattr.gradient_shap(xattr.target(mlp(0), 0), baselines=torch.zeros(2, 4), n_samples=1, return_std_error=True)
    f = xattr.target(mlp(0), 0)
    with pytest.raises(ValueError, match="leaves one unpaired"):
        xattr.shapley_value_sampling(f, n_samples=5, antithetic=True, return_std_error=True)
    with pytest.raises(ValueError, match="antithetic pairs"):
        xattr.shapley_value_sampling(f, n_samples=2, antithetic=True, return_std_error=True)
    with pytest.raises(TypeError, match="True or False"):
        xattr.smoothgrad(sal, return_std_error="yes")
    xattr.shapley_value_sampling(f, n_samples=5, antithetic=True)  # fine without the flag
    xattr.smoothgrad(sal, n_samples=1)


def test_layer_gradient_shap_at_an_identity_layer_has_gradient_shaps_standard_error():
    """At an identity layer reading the input, layer gradient SHAP is gradient SHAP with the same
    draws (the same seed): its standard error must be the one checked sample by sample above."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Identity(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(D).eval()
    x, dist = inputs(4, (B, 4)), inputs(5, (8, 4))
    f = xattr.target(model, 1)
    kw = dict(baselines=dist, n_samples=6, stdevs=0.2, generator=3, return_std_error=True)
    attr, se = xattr.gradient_shap(f, **kw)(x)
    l_attr, l_se = xattr.layer_gradient_shap(xattr.at_layer(f, model[0]), **kw)(x)
    torch.testing.assert_close(l_attr, attr, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(l_se, se, rtol=1e-10, atol=1e-14)
    assert bool((se > 0).all())
    _, delta, se_d = xattr.layer_gradient_shap(xattr.at_layer(f, model[0]), return_delta=True, **kw)(x)
    torch.testing.assert_close(se_d, se, rtol=1e-10, atol=1e-14)
    assert delta.shape == (B * 6,)
