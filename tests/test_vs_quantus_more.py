"""Conformance with Quantus 0.6.0, round 2: the metrics test_vs_quantus.py does not compare.

Infidelity, pixel flipping, region perturbation, selectivity and ROAD (IROF, Sensitivity-N, the
model-parameter randomisation test, completeness, non-sensitivity and the concentration metrics'
edge cases are in test_vs_quantus_axioms.py). Skipped where quantus is not installed; Quantus is only run, never read.
Every difference was found by experiment and is pinned by a slow reference, written out by hand,
that reproduces Quantus' number from ours plus the stated change (docs/other_libraries.md,
"Quantus"). Where Quantus perturbs at random, the inputs its model saw are recorded and replayed.

Not compared (no xattr counterpart): RandomLogit, EffectiveComplexity, InputInvariance,
Continuity, Consistency, FaithfulnessEstimate, Sufficiency, Focus, EfficientMPRT, SmoothMPRT,
AvgSensitivity.
"""


import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import xattr
from xattr import metrics as M
from xattr.testing.vision import models
from quantus_common import Recorder, close, digits, ixg, out_of, predicted, run, trapz

models()  # torchvision's CPU wheels need this repair before quantus imports zennit, which imports torchvision
quantus = pytest.importorskip("quantus")

B, SIDE, P = 4, 8, 64


FIXTURES = (digits, trapz)  # quantus_common's, used by name below


def numpy_ranks(a):
    """Attributions that put xattr's features in numpy's ``argsort(-a)`` order (its quicksort: ties
    in no fixed order), the order Quantus removes pixels in: the k-th of that order gets -k."""
    order = np.argsort(-a.flatten(1).numpy(), axis=1)
    r = torch.empty(a.shape[0], a[0].numel())
    for i in range(a.shape[0]):
        r[i, torch.as_tensor(order[i])] = -torch.arange(float(a[i].numel()))
    return r.reshape(a.shape)


def removal_reference(model, x, y, a, base, groups):
    """Outputs (B, S) after removing 1..S groups (lists of flat pixel ids) to ``base``, the groups
    ranked by summed attribution, highest first (ties: lower id), one pixel at a time in a loop."""
    rows = []
    for i in range(x.shape[0]):
        flat_a = a[i].flatten().tolist()
        ranked = sorted(range(len(groups)), key=lambda g: (-sum(flat_a[j] for j in groups[g]), g))
        cur, outs = x[i].clone().flatten(), []
        for g in ranked:
            for j in groups[g]:
                cur[j] = float(base[i])
            outs.append(float(out_of(model, cur.reshape(1, 1, SIDE, SIDE), y[i:i + 1])[0]))
        rows.append(outs)
    return torch.tensor(rows, dtype=torch.float64)


def grid(p):
    """Flat pixel ids of the p x p patches of an 8x8 image, row-major (edge patches smaller)."""
    starts = range(0, SIDE, p)
    return [[r * SIDE + c for r in range(r0, min(r0 + p, SIDE)) for c in range(c0, min(c0 + p, SIDE))]
            for r0 in starts for c0 in starts]  # fmt: skip


# ------------------------------------------------------------------ infidelity ----------------


@pytest.mark.parametrize("patch,baseline,n", [(4, "black", 1), (2, "black", 2), (4, "uniform", 2), (8, "mean", 1)])
def test_infidelity_is_xattrs_on_quantus_copies(digits, patch, baseline, n):
    """Quantus' Infidelity perturbs square patches cumulatively: copy k of a sample has the first k
    patches of the row-major grid set to the baseline, for every sample (a deterministic baseline
    gives n identical samples). Its number is Yeh et al.'s mean of (I . phi - (f(x) - f(x - I)))^2
    over all those copies, I = x - copy: xattr's `infidelity` replaying them through perturb_func."""
    model, _, x = digits
    y = predicted(model, x)
    a = ixg(model, x, y)
    rec = Recorder(model).eval()
    np.random.seed(0)
    theirs = run(quantus.Infidelity(perturb_patch_sizes=[patch], perturb_baseline=baseline, n_perturb_samples=n,
                                    disable_warnings=True), rec, x, y, a)  # fmt: skip
    copies = torch.stack(rec.seen[1:], 1)  # (B, K, 1, 8, 8)
    k = copies.shape[1]
    assert k == n * (SIDE // patch) ** 2
    if baseline == "black":  # deterministic: cumulative patches, every sample the same
        base = x.amin((1, 2, 3))
        for i in range(B):
            for c in range(k):
                step = c % (SIDE // patch) ** 2
                done = [j for g in grid(patch)[:step + 1] for j in g]
                flat = copies[i, c].flatten()
                assert all(float(flat[j]) == float(base[i]) for j in done)
                assert torch.equal(flat[[j for j in range(P) if j not in done]], x[i].flatten()[[j for j in range(P) if j not in done]])
    ours = M.infidelity(xattr.target(model, y), a, lambda v: copies.reshape(-1, 1, SIDE, SIDE), n_perturb_samples=k)(x)
    close(ours, theirs, 1e-5)
    # the formula by hand, on the same copies
    fx = out_of(model, x, y)
    ref = []
    for i in range(B):
        errs = []
        for c in range(k):
            dot = sum(float(p) * float(q) for p, q in zip((x[i] - copies[i, c]).flatten(), a[i].flatten()))
            errs.append((dot - float(fx[i] - out_of(model, copies[i, c][None], y[i:i + 1])[0])) ** 2)
        ref.append(sum(errs) / k)
    close(theirs, ref, 1e-5)


def test_infidelity_several_patch_sizes_average_per_size(digits):
    """With several patch sizes Quantus averages each size's mean: not the mean over all copies."""
    model, _, x = digits
    y = predicted(model, x)
    a = ixg(model, x, y)
    f = xattr.target(model, y)
    per_size, copies = [], []
    for p in (4, 2):
        rec = Recorder(model).eval()
        run(quantus.Infidelity(perturb_patch_sizes=[p], disable_warnings=True), rec, x, y, a)
        c = torch.stack(rec.seen[1:], 1)
        copies.append(c)
        per_size.append(M.infidelity(f, a, lambda v, c=c: c.reshape(-1, 1, SIDE, SIDE), n_perturb_samples=c.shape[1])(x))
    theirs = run(quantus.Infidelity(perturb_patch_sizes=[4, 2], disable_warnings=True), model, x, y, a)
    close((per_size[0] + per_size[1]) / 2, theirs, 1e-5)
    both = torch.cat(copies, 1)
    pooled = M.infidelity(f, a, lambda v: both.reshape(-1, 1, SIDE, SIDE), n_perturb_samples=both.shape[1])(x)
    assert float((pooled - theirs).abs().max()) > 1e-3


def test_infidelity_patch_size_not_dividing_the_image_fails_in_quantus(digits):
    model, _, x = digits
    y = predicted(model, x)
    with pytest.raises(ValueError, match="reshape"):
        run(quantus.Infidelity(perturb_patch_sizes=[3], disable_warnings=True), model, x, y, ixg(model, x, y))


# ------------------------------------------------------------------ pixel flipping and co ------


@pytest.mark.parametrize("step", [1, 4, 16])
@pytest.mark.parametrize("softmax", [False, True])
def test_pixel_flipping_is_deletion_without_its_first_point(digits, trapz, step, softmax):
    """PixelFlipping(features_in_step=s) is xattr's deletion curve with n_steps = 64 / s and each
    image's smallest pixel as the baseline ("black"), minus the unperturbed first point; its AUC
    is the trapezoid rule with dx = 1 over those S points (xattr's: over the fractions 0..1,
    start included). Its default softmax=True is the target on the probabilities."""
    model, _, x = digits
    y = predicted(model, x)
    a = ixg(model, x, y)
    base = x.amin((1, 2, 3))
    g = (lambda v: model(v).softmax(-1)) if softmax else model
    theirs = run(quantus.PixelFlipping(features_in_step=step, disable_warnings=True), model, x, y, a, softmax=softmax)
    auc = run(quantus.PixelFlipping(features_in_step=step, return_auc_per_sample=True, disable_warnings=True),
              model, x, y, a, softmax=softmax)  # fmt: skip
    curve = M.deletion(xattr.target(g, y), a, n_steps=P // step, baselines=base[:, None, None, None])(x)
    close(curve.scores[:, 1:], theirs, 1e-5)
    close([sum((p + q) / 2 for p, q in zip(r[1:].tolist(), r[2:].tolist())) for r in curve.scores], auc, 1e-5)
    if not softmax:
        groups = [list(range(j, j + step)) for j in range(0, P, step)]
        # features_in_step groups consecutive pixels of the *sorted* order, not fixed groups: the
        # reference removes single pixels, read every step-th output
        ref = removal_reference(model, x, y, a, base, [[j] for j in range(P)])
        close(ref[:, step - 1::step], theirs, 1e-5)
        assert len(groups) == theirs.shape[1]


def test_pixel_flipping_orders_ties_as_numpy_quicksort(digits):
    """On the raw digits half of input x gradient is exactly 0. Quantus removes pixels in
    ``np.argsort(-a)`` order (quicksort: ties in no fixed order), xattr ties by lower index; given
    that order as its attributions, xattr's deletion gives Quantus' curve."""
    model, raw, x = digits
    y = predicted(model, x)
    a = ixg(model, raw, y)
    assert float((a == 0).double().mean()) > 0.4
    base = x.amin((1, 2, 3), keepdim=True)
    f = xattr.target(model, y)
    theirs = run(quantus.PixelFlipping(disable_warnings=True), model, x, y, a, softmax=False)
    close(M.deletion(f, numpy_ranks(a), baselines=base)(x).scores[:, 1:], theirs, 1e-5)
    assert float((M.deletion(f, a, baselines=base)(x).scores[:, 1:] - theirs).abs().max()) > 0.01


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000), step=st.sampled_from([2, 8]))
def test_pixel_flipping_agrees_on_random_maps(digits, seed, step):
    model, _, x = digits
    y = predicted(model, x)
    a = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))  # no ties
    theirs = run(quantus.PixelFlipping(features_in_step=step, disable_warnings=True), model, x, y, a, softmax=False)
    ours = M.deletion(xattr.target(model, y), a, n_steps=P // step, baselines=x.amin((1, 2, 3), keepdim=True))(x)
    close(ours.scores[:, 1:], theirs, 1e-5)


@pytest.mark.parametrize("patch", [2, 3, 4])
def test_region_perturbation_and_selectivity_are_deletion_over_patches(digits, patch):
    """Both remove the p x p patches of the grid (edge patches smaller) in order of summed
    attribution: Selectivity returns f after each removal, RegionPerturbation f(x) minus it (its
    "lerf" is the order of -a): xattr's deletion with `patch_mask`, without its first point."""
    model, _, x = digits
    y = predicted(model, x)
    a = ixg(model, x, y)
    base = x.amin((1, 2, 3))
    f = xattr.target(model, y)
    mask = M.patch_mask((1, SIDE, SIDE), (1, patch, patch))
    n = len(grid(patch))
    kw = dict(feature_mask=mask, baselines=base[:, None, None, None])
    morf, lerf = M.deletion(f, a, **kw)(x).scores[:, 1:], M.deletion(f, -a, **kw)(x).scores[:, 1:]
    fx = out_of(model, x, y)[:, None]
    close(fx - morf, run(quantus.RegionPerturbation(patch_size=patch, regions_evaluation=n, disable_warnings=True), model, x, y, a, softmax=False))
    close(fx - lerf, run(quantus.RegionPerturbation(patch_size=patch, regions_evaluation=n, order="lerf", disable_warnings=True),
                         model, x, y, a, softmax=False))  # fmt: skip
    sel = run(quantus.Selectivity(patch_size=patch, disable_warnings=True), model, x, y, a, softmax=False)
    close(morf, sel)
    close(removal_reference(model, x, y, a, base, grid(patch)), sel)


def test_patches_are_ranked_by_their_sum(digits):
    """A 2x2 corner patch of 1s against 3x3 patches of 0.6: by mean the corner goes first, by sum
    (Quantus, xattr) a full 3x3 patch does (ties: the first)."""
    model, _, x = digits
    y = predicted(model, x)
    a = torch.full(x.shape, 0.6)
    a[:, :, 6:, 6:] = 1.0
    rec = Recorder(model).eval()
    run(quantus.Selectivity(patch_size=3, disable_warnings=True), rec, x, y, a, softmax=False)
    first = (rec.seen[0] != x)[:, 0]
    assert bool(first[:, :3, :3].all()) and int(first.sum()) == 9 * B
    mask = M.patch_mask((1, SIDE, SIDE), (1, 3, 3))
    curve = M.deletion(xattr.target(model, y), a, feature_mask=mask, baselines=x.amin((1, 2, 3), keepdim=True))(x)
    close(curve.scores[:, 1], out_of(model, rec.seen[0], y))  # xattr's first removal: the same patch


# ------------------------------------------------------------------ ROAD --------------------


PERCENT = [10, 20, 30, 40, 45, 50, 60, 70]


def correct(model):
    return lambda v, t: (model(v).argmax(1) == t).double()


def test_road_removes_floor_counts_in_numpy_order(digits):
    """Quantus' ROAD removes int(p H W / 100) pixels (rounded down; xattr rounds to nearest) in
    ``np.argsort(-a)`` order, imputes them as xattr does (to float32 rounding) and returns the
    accuracy per percentage. Without ties, xattr's curve of the 0/1 correctness at the floored
    fractions has Quantus' accuracies as its means; the imputed images agree."""
    model, _, x = digits
    y = predicted(model, x)
    a = ixg(model, x, y)
    rec = Recorder(model).eval()
    np.random.seed(0)
    theirs = run(quantus.ROAD(percentages=PERCENT, noise=0.0, disable_warnings=True), rec, x, y, a)
    order = np.argsort(-a.flatten(1).numpy(), axis=1)
    for p, seen in zip(PERCENT, rec.seen):
        removed = seen != x
        k = int(p * P / 100)
        assert all(sorted(torch.nonzero(removed[i].flatten()).flatten().tolist()) == sorted(order[i, :k].tolist()) for i in range(B))
        close(M.noisy_linear_imputation(x, removed[:, 0], noise=0.0), seen, 1e-6)
    floored = [int(p * P / 100) / P for p in PERCENT]
    close(M.road(correct(model), a, percentages=floored, noise=0.0, generator=0)(x, y).scores.mean(0), theirs)
    assert [round(p * P / 100) for p in PERCENT] != [int(p * P / 100) for p in PERCENT]  # 45%: 29 pixels, Quantus 28


def test_road_with_ties_the_earlier_gap(digits):
    """The gap noted in round 1 (raw digits, 52% of input x gradient exactly 0, means differing at
    45% and 50%): the rounding of the count, and the order of the tied pixels. With the floored
    fractions and numpy's order as the attributions, xattr gives Quantus' accuracies."""
    model, raw, _ = digits
    y = predicted(model, raw)
    a = ixg(model, raw, y)
    np.random.seed(0)
    theirs = run(quantus.ROAD(percentages=PERCENT, noise=1e-9, disable_warnings=True), model, raw, y, a)
    floored = [int(p * P / 100) / P for p in PERCENT]
    ours = M.road(correct(model), numpy_ranks(a), percentages=floored, noise=1e-9, generator=0)(raw, y).scores.mean(0)
    close(ours, theirs)
    own = M.road(correct(model), a, percentages=[p / 100 for p in PERCENT], noise=1e-9, generator=0)(raw, y).scores.mean(0)
    assert float((own - theirs).abs().max()) >= 0.25  # a whole example of the 4


def test_road_noise_is_absolute_and_added_after_the_solve(digits):
    """Quantus adds N(0, noise^2) to the removed pixels after imputing, nothing elsewhere: xattr's
    convention (the authors')."""
    model, _, x = digits
    y = predicted(model, x)
    a = ixg(model, x, y)
    rec = Recorder(model).eval()
    np.random.seed(0)
    run(quantus.ROAD(percentages=[50], noise=0.1, disable_warnings=True), rec, x, y, a)
    removed = torch.zeros(B, P, dtype=torch.bool)
    order = np.argsort(-a.flatten(1).numpy(), axis=1)
    for i in range(B):
        removed[i, torch.as_tensor(order[i, :32])] = True
    removed = removed.reshape(B, SIDE, SIDE)
    z = (rec.seen[0] - M.noisy_linear_imputation(x, removed, noise=0.0))[:, 0]
    assert float(z[~removed].abs().max()) == 0.0
    assert 0.08 < float(z[removed].std()) < 0.12 and abs(float(z[removed].mean())) < 0.03
    ours = M.noisy_linear_imputation(x, removed, noise=0.1, generator=0) - M.noisy_linear_imputation(x, removed, noise=0.0)
    assert float(ours[:, 0][~removed].abs().max()) == 0.0 and 0.08 < float(ours[:, 0][removed].std()) < 0.12
