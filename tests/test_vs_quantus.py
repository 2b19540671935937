"""Conformance with Quantus 0.6.0 (evaluation metrics), run live, black-box; every test skips where
quantus is not installed (CI). zennit: test_vs_zennit.py, shap: test_vs_shap.py.

Quantus is LGPL: it is only run here, never read. Every difference below was found by experiment
and is pinned by a slow reference written out by hand that reproduces Quantus' number from ours
plus the stated change (docs/other_libraries.md, "Quantus").

Quantus draws its randomness from numpy's global generator and perturbs inside its own loops, so
where a metric is random the test records what Quantus fed the model (a recording module) or the
attribution function (a recording ``explain_func``), and either replays those inputs to xattr
through ``perturb_func`` (the worst-case metrics: the same copies, the same numbers) or checks
both libraries against the formula evaluated on the subsets each one drew (faithfulness
correlation, whose subsets xattr draws itself).
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import xattr
from xattr import metrics as M
from xattr.testing.vision import models
from quantus_common import Recorder, close, digits_mlp, ixg, predicted, run

models()  # torchvision's CPU wheels need this repair before quantus imports zennit, which imports torchvision
quantus = pytest.importorskip("quantus")

B, SIDE = 4, 8


@pytest.fixture(scope="module")
def digits():
    """The digits MLP (quantus_common.digits_mlp), 4 held-out digits (1, 8, 8) in [0, 1] and the
    same shifted by 0.25 (no pixel at 0)."""
    model, images, _ = digits_mlp()
    x = images[1500:1500 + B].clone()
    return model, x, x + 0.25


def masks(b=B):
    """Per-example boxes of different sizes (15, 15, 4, 12, ... pixels) over the 8x8 map."""
    s = torch.zeros(b, 1, SIDE, SIDE)
    for i in range(b):
        r, c = i % 3, (2 * i) % 4
        s[i, :, r:r + 3 + i % 2, c:c + 5 - 2 * (i % 3 == 2)] = 1
    return s


def signed(b=B, seed=0):
    return torch.randn(b, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ localization ------------


@pytest.mark.parametrize("normalise", [True, False])
def test_pointing_game_and_rank_accuracy_agree(digits, normalise):
    model, x, _ = digits
    a, s, y = signed(), masks(), predicted(model, x)
    for metric, ours in [(quantus.PointingGame, M.pointing_game(a, s)), (quantus.RelevanceRankAccuracy, M.relevance_rank_accuracy(a, s))]:
        theirs = run(metric(normalise=normalise, disable_warnings=True), model, x, y, a, s)
        close(ours, theirs, 1e-6)
    assert M.relevance_rank_accuracy(a, s).std() > 0  # not a constant that would agree by luck


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), nonneg=st.booleans())
def test_localization_and_concentration_agree_on_random_maps(digits, seed, nonneg):
    model, x, _ = digits
    a = signed(seed=seed)
    a = a.abs() if nonneg else a
    s, y = masks(), predicted(model, x)
    close(M.pointing_game(a, s), run(quantus.PointingGame(disable_warnings=True), model, x, y, a, s), 1e-6)
    close(M.relevance_rank_accuracy(a, s), run(quantus.RelevanceRankAccuracy(disable_warnings=True), model, x, y, a, s), 1e-6)
    close(M.sparseness(a), run(quantus.Sparseness(disable_warnings=True), model, x, y, a), 1e-5)
    close(M.complexity(a), run(quantus.Complexity(disable_warnings=True), model, x, y, a), 1e-5)
    if nonneg:  # where no attribution is negative the mass accuracies agree too
        close(M.relevance_mass_accuracy(a, s), run(quantus.RelevanceMassAccuracy(disable_warnings=True), model, x, y, a, s), 1e-5)


def test_relevance_mass_accuracy_numerator_keeps_negative_relevance(digits):
    """Arras et al. 2022 count only positive relevance, inside the mask and in total, as xattr does;
    Quantus divides the signed sum inside the mask by the signed total (any real number: a total
    near 0 makes it large)."""
    model, x, _ = digits
    a, s, y = signed(), masks(), predicted(model, x)
    theirs = run(quantus.RelevanceMassAccuracy(normalise=False, disable_warnings=True), model, x, y, a, s)
    paper, quantus_ref = [], []
    for i in range(B):
        vals, inside = a[i].flatten().tolist(), s[i].flatten().tolist()
        pos_total = sum(v for v in vals if v > 0)
        paper.append(sum(v for v, k in zip(vals, inside) if k and v > 0) / pos_total)
        quantus_ref.append(sum(v for v, k in zip(vals, inside) if k) / sum(vals))
    close(M.relevance_mass_accuracy(a, s), paper)
    close(theirs, quantus_ref)
    assert float((theirs - torch.tensor(paper)).abs().max()) > 0.05
    # with abs=True Quantus measures |a|: xattr's number on |a|
    close(M.relevance_mass_accuracy(a.abs(), s),
          run(quantus.RelevanceMassAccuracy(abs=True, disable_warnings=True), model, x, y, a, s))


def test_attribution_localization_mu(digits):
    """mu = R_in / R_tot of the positive relevance: Quantus' with positive_attributions=True, abs=False;
    its default (abs=True) is mu of |a|."""
    model, x, _ = digits
    a, s, y = signed(), masks(), predicted(model, x)
    pos = run(quantus.AttributionLocalisation(abs=False, positive_attributions=True, disable_warnings=True), model, x, y, a, s)
    close(M.attribution_localization(a, s), pos)
    close(M.attribution_localization(a.abs(), s), run(quantus.AttributionLocalisation(disable_warnings=True), model, x, y, a, s))
    # abs=False without the clipping: Quantus' signed ratio, as for its relevance mass accuracy
    close(run(quantus.AttributionLocalisation(abs=False, disable_warnings=True), model, x, y, a, s),
          [float(a[i][s[i] > 0].sum() / a[i].sum()) for i in range(B)])


@pytest.mark.parametrize("b", [1, 2, 3, 4, 6])
def test_attribution_localization_weighted(digits, b):
    """Kohlbrenner et al. 2020: mu_w = mu * S_tot / S_in (xattr). Quantus 0.6.0 multiplies mu by
    S_in / ((b - 2) * S_tot) instead, b the batch size: the object's share rather than its inverse,
    divided by the number of pixels of all but the first two images of the batch (so inf for
    batches of 1 or 2, and a value that shrinks as the batch grows)."""
    model, _, _ = digits
    g = torch.Generator().manual_seed(b)
    x, a, s = torch.rand(b, 1, SIDE, SIDE, generator=g), signed(b, seed=b), masks(b)
    y = predicted(model, x)
    mu = M.attribution_localization(a, s)
    n, size = SIDE * SIDE, s.flatten(1).sum(1)
    paper = torch.tensor([float(a[i].clamp(min=0)[s[i] > 0].sum() / a[i].clamp(min=0).sum()) * n / float(size[i])
                          for i in range(b)])  # fmt: skip
    close(M.attribution_localization(a, s, weighted=True), paper)
    if b <= 2:
        with np.errstate(divide="ignore"):
            theirs = run(quantus.AttributionLocalisation(weighted=True, abs=False, positive_attributions=True,
                                                         disable_warnings=True), model, x, y, a, s)  # fmt: skip
        assert torch.isinf(theirs).all()
    else:
        theirs = run(quantus.AttributionLocalisation(weighted=True, abs=False, positive_attributions=True, disable_warnings=True),
                     model, x, y, a, s)  # fmt: skip
        close(mu * size / ((b - 2) * n), theirs)


# ------------------------------------------------------------------ faithfulness ------------


def faithfulness_reference(fx, outs, xs, x, a):
    """Pearson's r over subsets of (sum of a over the subset, f(x) - f(x_S)), the subsets read off
    the perturbed inputs xs (k, ...) as the elements that differ from x; plain Python sums."""
    sums = [float(a[(xi != x)].sum()) for xi in xs]
    drops = [float(fx - o) for o in outs]
    ms, md = sum(sums) / len(sums), sum(drops) / len(drops)
    cov = sum((u - ms) * (v - md) for u, v in zip(sums, drops))
    return cov / math.sqrt(sum((u - ms) ** 2 for u in sums) * sum((v - md) ** 2 for v in drops))


@pytest.mark.parametrize("baseline", ["mean", "black"])
def test_faithfulness_correlation_is_the_same_formula(digits, baseline):
    """Both are Pearson's r of the subset's attribution sum with the output's drop. Quantus draws
    its subsets from numpy and xattr from its generator, so each is checked against the formula on
    the subsets it drew (read off the inputs its model saw). Quantus' "mean" baseline is each
    image's mean pixel, "black" each image's smallest pixel."""
    model, _, x = digits
    x = x + 0.01 * torch.rand(x.shape, generator=torch.Generator().manual_seed(1))  # one smallest pixel per image
    x[1] *= 1.5  # images with different smallest pixels
    y = predicted(model, x)
    a = signed()
    # "black" sets a subset's smallest pixel to itself: read off the inputs, that pixel would be
    # missing from the subset, so its attribution is set to 0 (then in or out, the sum is the same)
    a.flatten(1).scatter_(1, x.flatten(1).argmin(1, keepdim=True), 0.0)
    base = x.mean((1, 2, 3), keepdim=True) if baseline == "mean" else x.amin((1, 2, 3), keepdim=True)
    k, size = 12, 5
    rec = Recorder(model).eval()
    np.random.seed(0)
    theirs = run(quantus.FaithfulnessCorrelation(nr_runs=k, subset_size=size, perturb_baseline=baseline, normalise=False,
                                                 return_aggregate=False, disable_warnings=True), rec, x, y, a)  # fmt: skip
    with torch.no_grad():
        fx = model(x)[torch.arange(B), y]
        runs = rec.seen[1:]
        assert len(runs) == k and all(int((r[i] != x[i]).sum()) in (size - (baseline == "black"), size) for r in runs for i in range(B))
        assert all(torch.allclose(r[i][r[i] != x[i]], base[i].expand_as(x[i])[r[i] != x[i]]) for r in runs for i in range(B))
        ref = [faithfulness_reference(fx[i], [model(r[i:i + 1])[0, y[i]] for r in runs], [r[i] for r in runs], x[i], a[i])
               for i in range(B)]  # fmt: skip
    close(theirs, ref, 1e-4)
    # xattr on its own subsets: the same formula
    seen = []

    def f(v):
        seen.append(v.detach().clone())
        return model(v)[torch.arange(v.shape[0]), y.repeat(v.shape[0] // B)]

    ours = M.faithfulness_correlation(f, a, subset_size=size, n_samples=k, baselines=base, generator=0)(x)
    with torch.no_grad():
        rows = torch.cat(seen[1:]).reshape(k, B, 1, SIDE, SIDE)
        ref_x = [faithfulness_reference(fx[i], [model(r[i:i + 1])[0, y[i]] for r in rows], list(rows[:, i]), x[i], a[i])
                 for i in range(B)]  # fmt: skip
    close(ours, ref_x, 1e-4)
    # Quantus' default normalise=True divides the attributions by their largest magnitude: r is unchanged
    np.random.seed(0)
    close(run(quantus.FaithfulnessCorrelation(nr_runs=k, subset_size=size, perturb_baseline=baseline,
                                              return_aggregate=False, disable_warnings=True), model, x, y, a), theirs, 1e-5)  # fmt: skip


def test_monotonicity_quantus_never_restores_features(digits):
    """Quantus 0.6.0's Monotonicity (Arya et al.) with its default perturbation calls the model on
    the all-baseline image at every step, so its outputs never change and every example scores True
    whatever the attributions; xattr restores the features in increasing order of attribution."""
    model, _, x = digits
    y = predicted(model, x)
    for a in [ixg(model, x, y), -ixg(model, x, y), signed()]:
        rec = Recorder(model).eval()
        theirs = run(quantus.Monotonicity(normalise=False, abs=False, disable_warnings=True), rec, x, y, a, softmax=False)
        black = x.amin((1, 2, 3), keepdim=True).expand_as(x)
        assert len(rec.seen) == SIDE * SIDE and all(torch.equal(v, black) for v in rec.seen)
        assert bool((theirs == 1).all())
    # xattr's fraction of non-decreasing steps, by an explicit loop, on the attributions that go against the model
    a = -ixg(model, x, y)
    ours = M.monotonicity(xattr.target(model, y), a, baselines=black)(x)
    with torch.no_grad():
        for i in range(B):
            order = sorted(range(64), key=lambda j: (float(a[i].flatten()[j]), j))
            cur, scores = black[i].clone().flatten(), []
            for j in order:
                cur[j] = x[i].flatten()[j]
                scores.append(float(model(cur.reshape(1, 1, SIDE, SIDE))[0, y[i]]))
            frac = sum(q >= p for p, q in zip(scores[:-1], scores[1:])) / 63
            assert abs(float(ours[i]) - frac) < 1e-6
    assert float(ours.max()) < 0.9


@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("raw", [False, True])
def test_monotonicity_correlation_agrees_with_a_fixed_baseline(digits, softmax, raw):
    """Spearman of |a| with the output change of each feature alone set to the baseline: equal with
    Quantus' deterministic "mean" baseline (its default "uniform" draws a random one); its softmax
    is xattr's target on the probabilities. On the raw digits about half of input x gradient is
    exactly 0: ties rank the same in both (mean ranks)."""
    model, raw_x, shifted = digits
    x = raw_x if raw else shifted
    y = predicted(model, x)
    a = ixg(model, x, y)
    if raw:
        assert float((a == 0).double().mean()) > 0.4  # the case is one of many ties
    theirs = run(quantus.MonotonicityCorrelation(nr_samples=1, perturb_baseline="mean", disable_warnings=True), model, x, y, a,
                 softmax=softmax)  # fmt: skip
    g = (lambda v: model(v).softmax(-1)) if softmax else model
    ours = M.monotonicity_correlation(xattr.target(g, y), a, baselines=x.mean((1, 2, 3), keepdim=True))(x)
    close(ours, theirs, 1e-5)


# ------------------------------------------------------------------ stability ----------------


class Explainer:
    """input x gradient as a Quantus ``explain_func``, recording every input it is called on."""

    def __init__(self):
        self.seen = []

    def __call__(self, model, inputs, targets, **kw):
        t = torch.as_tensor(inputs, dtype=torch.float32)
        self.seen.append(t.clone())
        return ixg(model, t, torch.as_tensor(targets)).detach().numpy()

    def replay(self, n):
        """The copies Quantus drew, as an xattr perturb_func (example-major copies)."""
        copies = torch.stack(self.seen[-n:], 1)
        return lambda v, radius=None: copies.reshape((-1,) + tuple(copies.shape[2:]))


N = 6


def quantus_then_xattr(metric, model, x, y, ours):
    ex = Explainer()
    np.random.seed(0)
    theirs = run(metric, model, x, y, ixg(model, x, y), explain=ex)
    assert len(ex.seen) == N
    return theirs, ours(ex.replay(N)), ex


def test_local_lipschitz_and_max_sensitivity_agree_on_the_same_copies(digits):
    model, x, _ = digits
    y = predicted(model, x)
    attr = xattr.input_x_gradient(xattr.target(model, y))
    theirs, ours, _ = quantus_then_xattr(quantus.LocalLipschitzEstimate(nr_samples=N, normalise=False, disable_warnings=True),
                                         model, x, y, lambda pf: M.local_lipschitz_estimate(attr, x, radius=1.0, n_samples=N,
                                                                                          perturb_func=pf))  # fmt: skip
    close(ours, theirs)
    assert float(ours.min()) > 0
    # Quantus' default normalise=True divides the maps of a batch (at x, and of every batch of copies)
    # by their largest magnitude over the whole batch: xattr's attr_fn does the same per call (one
    # call per chunk of copies, so chunk_size must keep a chunk to one copy of the batch: B rows)
    theirs_n, ours_n, ex = quantus_then_xattr(
        quantus.LocalLipschitzEstimate(nr_samples=N, disable_warnings=True), model, x, y,
        lambda pf: M.local_lipschitz_estimate(lambda v: (lambda e: e / e.abs().max())(attr(v)),
                                              x, radius=1.0, n_samples=N, perturb_func=pf, chunk_size=B))  # fmt: skip
    close(ours_n, theirs_n)
    theirs, ours, _ = quantus_then_xattr(quantus.MaxSensitivity(nr_samples=N, disable_warnings=True), model, x, y,
                                         lambda pf: M.sensitivity_max(attr, x, n_perturb_samples=N, perturb_func=pf))
    close(ours, theirs)


def relative_reference(e0, es, v0, vs, floor):
    """max over copies of ||(e0 - e) / e0|| / max(||(v0 - v) / v0||, 1e-6), zeros of e0, v0 set to ``floor``."""
    out = []
    for i in range(e0.shape[0]):
        best = -math.inf
        for c in range(es.shape[0]):
            num = sum(((p - q) / (p if p != 0 else floor)) ** 2 for p, q in zip(e0[i].tolist(), es[c, i].tolist())) ** 0.5
            den = sum(((p - q) / (p if p != 0 else floor)) ** 2 for p, q in zip(v0[i].tolist(), vs[c, i].tolist())) ** 0.5
            best = max(best, num / max(den, 1e-6))
        out.append(best)
    return torch.tensor(out)


def test_relative_stability_agrees_without_zeros(digits):
    """RIS, ROS and RRS equal Quantus' on the same copies where no input, attribution or
    representation element is 0 and no copy changes the class."""
    model, _, x = digits
    y = predicted(model, x)
    attr = xattr.input_x_gradient(xattr.target(model, y))
    kw = dict(nr_samples=N, return_nan_when_prediction_changes=False, disable_warnings=True)
    for metric, ours in [
        (quantus.RelativeInputStability(**kw), lambda pf: M.relative_input_stability(model, attr, x, radius=1.0, n_samples=N, perturb_func=pf)),
        (quantus.RelativeOutputStability(**kw), lambda pf: M.relative_output_stability(model, attr, x, radius=1.0, n_samples=N, perturb_func=pf)),
        (quantus.RelativeRepresentationStability(layer_names=["1"], **kw),
         lambda pf: M.relative_representation_stability(model, attr, x, layer=model[1], radius=1.0, n_samples=N, perturb_func=pf)),
    ]:  # fmt: skip
        theirs, ours_v, _ = quantus_then_xattr(metric, model, x, y, ours)
        close(ours_v, theirs, 1e-4)


def test_relative_input_stability_at_zeros(digits):
    """Where x or phi(x) has zeros (digits' black background) Quantus divides by 1e-6 in their
    place, xattr by eps_div times the largest magnitude (NOTE: [Percent changes of the relative
    stability metrics]); each equals the reference with its own floor."""
    model, x, _ = digits
    y = predicted(model, x)
    attr = xattr.input_x_gradient(xattr.target(model, y))
    theirs, ours, ex = quantus_then_xattr(
        quantus.RelativeInputStability(nr_samples=N, return_nan_when_prediction_changes=False, disable_warnings=True),
        model, x, y, lambda pf: M.relative_input_stability(None, attr, x, radius=1.0, n_samples=N, perturb_func=pf))
    xs = torch.stack(ex.seen[-N:]).double()
    e0 = attr(x).flatten(1).double()
    es = torch.stack([attr(v.float()) for v in xs]).flatten(2).double()
    assert (x == 0).any() and (e0 == 0).any()
    close(theirs, relative_reference(e0, es, x.flatten(1).double(), xs.flatten(2), 1e-6), 1e-4)
    assert float((ours - theirs).abs().max()) > 0.1 * float(theirs.abs().max())


def test_relative_stability_class_rule(digits):
    """Agarwal et al. take the max over the copies that keep the predicted class (xattr); Quantus'
    return_nan_when_prediction_changes=True (its default) gives nan to an example as soon as one
    copy changes it, and False keeps every copy."""
    model, _, x = digits
    y = predicted(model, x)
    attr = xattr.input_x_gradient(xattr.target(model, y))
    ex = Explainer()
    np.random.seed(0)
    metric = quantus.RelativeOutputStability(nr_samples=N, perturb_func_kwargs={"perturb_std": 0.6}, disable_warnings=True)
    theirs = run(metric, model, x, y, ixg(model, x, y), explain=ex)
    xs = torch.stack(ex.seen[-N:])
    with torch.no_grad():
        kept = torch.stack([model(v).argmax(1) == y for v in xs])  # (N, B)
    assert (~kept).any(0).any() and kept.any(0).all(), kept  # some examples lose a copy, none loses all
    assert torch.equal(theirs.isnan(), (~kept).any(0))
    ours = M.relative_output_stability(model, attr, x, radius=1.0, n_samples=N, perturb_func=ex.replay(N))
    h0, e0 = model(x).detach().double(), attr(x).flatten(1).double()
    ref = []
    for i in range(B):
        best = -math.inf
        for c in range(N):
            if kept[c, i]:
                e = attr(xs[c]).flatten(1).double()[i]
                num = float(((e0[i] - e) / e0[i]).norm())  # no zero in e0: shifted digits
                best = max(best, num / max(float((h0[i] - model(xs[c]).detach().double()[i]).norm()), 1e-6))
        ref.append(best)
    ok = torch.isfinite(torch.tensor(ref))
    close(ours[ok], torch.tensor(ref)[ok], 1e-4)
