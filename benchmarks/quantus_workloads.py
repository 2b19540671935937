"""Evaluation metrics against Quantus 0.6.0 (see workloads.py, README.md; docs/other_libraries.md).

The Captum column of run.py's table holds Quantus here. Model: shap_workloads' `DigitsCNN`
(conv 8 - max-pool - conv 16 - linear 10, seeded random weights) on 32 of the 8x8 digits in
[0, 1], float32, each example's top class; attributions input x gradient. Every pair is run with
the settings under which the two libraries compute the same number (tests/test_vs_quantus.py):
Quantus' ``normalise=False`` (it changes none of these numbers but the Lipschitz estimate's),
``softmax=False``, deterministic baselines, and, for the worst-case metrics, xattr replaying the
copies Quantus drew (the timed xattr call draws its own: the same work).

- localization and concentration: pointing game, relevance rank accuracy, sparseness and
  complexity of random maps with per-example boxes (Quantus loops over examples in numpy).
- faithfulness correlation: 20 subsets of 8 pixels, the per-image mean as the baseline.
- monotonicity correlation: every pixel alone set to the image mean (64 model rows per example).
- local Lipschitz estimate and max-sensitivity: 10 gaussian (Quantus) copies; agreement on
  Quantus' own copies replayed through ``perturb_func``.
- removal curves (tests/test_vs_quantus_more.py): pixel flipping (64 single-pixel steps),
  region perturbation and selectivity (16 patches of 2x2) as xattr's deletion curve, ROAD at 8
  percentages (Quantus' rounded-down counts passed as xattr's fractions, no noise), of random
  maps (no ties; Quantus orders ties as numpy's quicksort does).
- infidelity: Quantus' cumulative 2x2 patches to the black baseline (16 copies), built in torch
  as xattr's ``perturb_func``.
- model-parameter randomisation: cascading over the 3 layers, Spearman of |a|; agreement on the
  randomized models Quantus explains (it draws other weights).

    python -m benchmarks.quantus_workloads                    # time them all, print a table
    python -m benchmarks.quantus_workloads --only Lipschitz   # those whose name contains it
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

import xattr
from xattr import metrics as M

from .perturbation_workloads import few_rounds, forward_floors
from .shap_workloads import digits
from .workloads import SEED, Workload, _one_hot, exact, fwd_bwd

ROWS = 32
SUBSETS, SUBSET_SIZE = 20, 8
COPIES = 10
QUANTUS_ROUNDS = 3


def import_quantus():
    """quantus, or None when it is not installed (it imports zennit, hence torchvision, first
    repaired by `vision.models`)."""
    from xattr.testing.vision import models  # noqa: PLC0415

    models()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import quantus  # noqa: PLC0415
    except ImportError:
        return None
    return quantus


def _call(metric, model, x, y, a, s=None, explain=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), channel_first=True,
                     s_batch=None if s is None else s.numpy().copy(), explain_func=explain, **kw)  # fmt: skip
    return torch.as_tensor(np.asarray(out, dtype=np.float64))


def _setup():
    model, images = digits(torch.float32)
    x = images[100:100 + ROWS]
    with torch.no_grad():
        y = model(x).argmax(1)
    attr = xattr.input_x_gradient(xattr.target(model, y))
    return model, x, y, attr


def _maps(quantus, model, x, y) -> list[Workload]:
    g = torch.Generator().manual_seed(SEED)
    a = torch.randn(x.shape, generator=g)
    s = torch.zeros(x.shape)
    for i in range(x.shape[0]):
        s[i, :, i % 4:i % 4 + 3, (i // 4) % 4:(i // 4) % 4 + 4] = 1
    pairs = [
        ("pointing game", lambda: M.pointing_game(a, s), quantus.PointingGame(normalise=False, disable_warnings=True), True),
        ("relevance rank accuracy", lambda: M.relevance_rank_accuracy(a, s),
         quantus.RelevanceRankAccuracy(normalise=False, disable_warnings=True), True),
        ("sparseness (Gini)", lambda: M.sparseness(a), quantus.Sparseness(normalise=False, disable_warnings=True), False),
        ("complexity (entropy)", lambda: M.complexity(a), quantus.Complexity(normalise=False, disable_warnings=True), False),
    ]  # fmt: skip
    out = []
    for label, ours, metric, masked in pairs:
        theirs = (lambda metric=metric, masked=masked: _call(metric, model, x, y, a, s if masked else None))
        out.append(Workload(
            f"{label} vs Quantus ({ROWS} random 8x8 maps)", "other-library", ours, theirs, {"sum of the maps": lambda: a.sum()},
            lambda ours=ours, theirs=theirs: exact(ours().double(), theirs(), 1e-5), "exact, tol 1e-5",
            notes=[f"{label} vs Quantus: the same maps and masks; floor: summing the maps (these metrics cost almost nothing)."],
        ))  # fmt: skip
    return out


def _faithfulness(quantus, model, x, y, attr) -> list[Workload]:
    a = attr(x)
    base = x.mean((1, 2, 3), keepdim=True)
    f = xattr.target(model, y)
    fc = M.faithfulness_correlation(f, a, subset_size=SUBSET_SIZE, n_samples=SUBSETS, baselines=base, generator=SEED)
    q_fc = quantus.FaithfulnessCorrelation(nr_runs=SUBSETS, subset_size=SUBSET_SIZE, perturb_baseline="mean", normalise=False,
                                           return_aggregate=False, disable_warnings=True)  # fmt: skip
    mc = M.monotonicity_correlation(f, a, baselines=base)
    q_mc = quantus.MonotonicityCorrelation(nr_samples=1, perturb_baseline="mean", normalise=False, disable_warnings=True)
    n_feat = x[0].numel()
    rows_fc = x.repeat(SUBSETS, 1, 1, 1)
    rows_mc = x.repeat(n_feat, 1, 1, 1)

    def agree_fc():
        ours = fc(x)
        np.random.seed(SEED)
        theirs = _call(q_fc, model, x, y, a)
        gap = float((ours - theirs).abs().median())
        return (f"same formula (tested on each library's own subsets); different random subsets: median |difference| "
                f"{gap:.3f}, mean r xattr {float(ours.mean()):.3f}, Quantus {float(theirs.mean()):.3f}"), True

    return [
        Workload(f"faithfulness correlation {SUBSETS}x{SUBSET_SIZE} vs Quantus (digits CNN, {ROWS} rows)", "other-library",
                 lambda: fc(x), lambda: (np.random.seed(SEED), _call(q_fc, model, x, y, a)), forward_floors(model, rows_fc, 4096),
                 agree_fc, "not compared number by number (random subsets; tests/test_vs_quantus.py checks both against "
                 "the formula on the subsets each drew)",
                 notes=[f"faithfulness correlation vs Quantus: {SUBSETS} subsets of {SUBSET_SIZE} pixels to the image mean; "
                        f"floor: one no-grad forward of the {SUBSETS * ROWS} perturbed rows, prebuilt."]),
        Workload(f"monotonicity correlation vs Quantus (digits CNN, {ROWS} rows, {n_feat} features)", "other-library",
                 lambda: mc(x), few_rounds(lambda: _call(q_mc, model, x, y, a, softmax=False), QUANTUS_ROUNDS), forward_floors(model, rows_mc, 4096),
                 lambda: exact(mc(x), _call(q_mc, model, x, y, a, softmax=False), 1e-5), "exact, tol 1e-5",
                 notes=[f"monotonicity correlation vs Quantus: each pixel alone to the image mean, nr_samples=1; floor: one "
                        f"no-grad forward of the {n_feat * ROWS} rows, prebuilt. Quantus timed in {QUANTUS_ROUNDS} rounds."]),
    ]  # fmt: skip


class _Explainer:
    def __init__(self, attr_of):
        self.attr_of, self.seen = attr_of, []

    def __call__(self, model, inputs, targets, **kw):
        t = torch.as_tensor(inputs, dtype=torch.float32)
        self.seen.append(t)
        return self.attr_of(model, t, torch.as_tensor(targets)).detach().numpy()


def _worst(quantus, model, x, y, attr) -> list[Workload]:
    a = attr(x)

    def attr_of(m, t, tg):
        return xattr.input_x_gradient(xattr.target(m, tg))(t)

    out = []
    for label, metric, ours in [
        ("local Lipschitz estimate", quantus.LocalLipschitzEstimate(nr_samples=COPIES, normalise=False, disable_warnings=True),
         lambda pf=M.uniform_noise: M.local_lipschitz_estimate(attr, x, radius=0.1, n_samples=COPIES, perturb_func=pf, generator=SEED if pf is M.uniform_noise else None)),
        ("max-sensitivity", quantus.MaxSensitivity(nr_samples=COPIES, disable_warnings=True),
         lambda pf=M.uniform_noise: M.sensitivity_max(attr, x, n_perturb_samples=COPIES, perturb_func=pf, generator=SEED if pf is M.uniform_noise else None)),
    ]:  # fmt: skip
        def theirs(metric=metric):
            np.random.seed(SEED)
            return _call(metric, model, x, y, a, explain=_Explainer(attr_of))

        def agree(metric=metric, ours=ours):
            ex = _Explainer(attr_of)
            np.random.seed(SEED)
            q = _call(metric, model, x, y, a, explain=ex)
            copies = torch.stack(ex.seen[-COPIES:], 1)
            return exact(ours(lambda v, radius=None: copies.reshape((-1,) + tuple(x.shape[1:]))).double(), q, 1e-4)

        xe = x.repeat(COPIES, 1, 1, 1)
        out.append(Workload(
            f"{label} {COPIES} copies vs Quantus (digits CNN, input x gradient, {ROWS} rows)", "other-library",
            ours, theirs, {"fwd+bwd": fwd_bwd(model, xe, _one_hot(y, COPIES, 10))}, agree,
            "exact (tol 1e-4) on Quantus' copies replayed to xattr",
            notes=[f"{label} vs Quantus: xattr draws its own uniform copies (timed), Quantus its gaussian ones; agreement "
                   f"on Quantus' copies replayed through perturb_func; floor: one fwd+bwd of the {COPIES * ROWS} copies."],
        ))  # fmt: skip
    return out


ROAD_PERCENT = (10, 20, 30, 40, 45, 50, 60, 70)
PATCH = 2


def _removal(quantus, model, x, y) -> list[Workload]:
    a = torch.randn(x.shape, generator=torch.Generator().manual_seed(SEED + 1))  # no ties
    f = xattr.target(model, y)
    base = x.amin((1, 2, 3), keepdim=True)
    n_pix = x[0].numel()
    mask = M.patch_mask(tuple(x.shape[1:]), (1, PATCH, PATCH))
    n_patch = int(mask.max()) + 1
    with torch.no_grad():
        fx = model(x)[torch.arange(x.shape[0]), y][:, None]
    flip = lambda: M.deletion(f, a, baselines=base)(x)  # noqa: E731
    patches = lambda: M.deletion(f, a, feature_mask=mask, baselines=base)(x)  # noqa: E731
    floored = [int(p * n_pix / 100) / n_pix for p in ROAD_PERCENT]
    road = M.road(lambda v, t: (model(v).argmax(1) == t).double(), a, percentages=floored, noise=0.0)
    q_flip = quantus.PixelFlipping(normalise=False, disable_warnings=True)
    q_region = quantus.RegionPerturbation(patch_size=PATCH, regions_evaluation=n_patch, normalise=False, disable_warnings=True)
    q_sel = quantus.Selectivity(patch_size=PATCH, normalise=False, disable_warnings=True)
    q_road = quantus.ROAD(percentages=list(ROAD_PERCENT), noise=0.0, normalise=False, disable_warnings=True)

    def road_theirs():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = q_road(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), channel_first=True)
        return torch.tensor(list(out.values()), dtype=torch.float64)

    rows = lambda k: x.repeat(k, 1, 1, 1)  # noqa: E731
    note = "xattr's deletion curve without its first (unperturbed) point; each image's smallest pixel as the baseline"
    return [
        Workload(f"pixel flipping {n_pix} steps vs Quantus (digits CNN, {ROWS} rows)", "other-library", flip,
                 lambda: _call(q_flip, model, x, y, a, softmax=False), forward_floors(model, rows(n_pix + 1), 4096),
                 lambda: exact(flip().scores[:, 1:].double(), _call(q_flip, model, x, y, a, softmax=False), 1e-5), "exact, tol 1e-5",
                 notes=[f"pixel flipping vs Quantus: {note}; floor: one no-grad forward of the {(n_pix + 1) * ROWS} rows, prebuilt."]),
        Workload(f"region perturbation {n_patch} patches {PATCH}x{PATCH} vs Quantus (digits CNN, {ROWS} rows)", "other-library",
                 lambda: fx - patches().scores[:, 1:], lambda: _call(q_region, model, x, y, a, softmax=False),
                 forward_floors(model, rows(n_patch + 1), 4096),
                 lambda: exact((fx - patches().scores[:, 1:]).double(), _call(q_region, model, x, y, a, softmax=False), 1e-5),
                 "exact, tol 1e-5", notes=[f"region perturbation vs Quantus: f(x) minus {note}, patch_mask features."]),
        Workload(f"selectivity {n_patch} patches {PATCH}x{PATCH} vs Quantus (digits CNN, {ROWS} rows)", "other-library", patches,
                 lambda: _call(q_sel, model, x, y, a, softmax=False), forward_floors(model, rows(n_patch + 1), 4096),
                 lambda: exact(patches().scores[:, 1:].double(), _call(q_sel, model, x, y, a, softmax=False), 1e-5),
                 "exact, tol 1e-5", notes=[f"selectivity vs Quantus: {note}, patch_mask features."]),
        Workload(f"ROAD {len(ROAD_PERCENT)} percentages vs Quantus (digits CNN, {ROWS} rows)", "other-library",
                 lambda: road(x, y), road_theirs, forward_floors(model, rows(len(ROAD_PERCENT)), 4096),
                 lambda: exact(road(x, y).scores.mean(0), road_theirs(), 1e-12), "exact accuracy per percentage",
                 notes=["ROAD vs Quantus: noise 0, Quantus' rounded-down pixel counts passed to xattr as fractions; Quantus "
                        "returns the accuracy per percentage, xattr each example's 0/1 correctness (their mean); floor: one "
                        "no-grad forward of the imputed rows, without the imputation."]),
    ]  # fmt: skip


def _patch_copies(x: torch.Tensor, base: torch.Tensor, p: int) -> torch.Tensor:
    """Example-major copies (B K, ...): copy k has the first k + 1 p x p patches of the row-major
    grid set to ``base`` (B, 1, 1, 1), as Quantus' Infidelity perturbs."""
    keep = M.patch_mask(tuple(x.shape[1:]), (1, p, p))[0]
    k = int(keep.max()) + 1
    gone = keep[None] <= torch.arange(k).reshape(k, 1, 1, 1)  # (K, C, H, W)
    return torch.where(gone[None], base.unsqueeze(1), x.unsqueeze(1)).reshape((-1,) + tuple(x.shape[1:]))


def _infidelity(quantus, model, x, y, attr) -> list[Workload]:
    a = attr(x).detach()
    base = x.amin((1, 2, 3), keepdim=True)
    copies = _patch_copies(x, base, PATCH)
    k = copies.shape[0] // x.shape[0]
    inf = M.infidelity(xattr.target(model, y), a, lambda v: _patch_copies(v[::k], base, PATCH), n_perturb_samples=k)
    q_inf = quantus.Infidelity(perturb_patch_sizes=[PATCH], n_perturb_samples=1, disable_warnings=True)
    return [Workload(
        f"infidelity {k} cumulative {PATCH}x{PATCH} patches vs Quantus (digits CNN, input x gradient, {ROWS} rows)", "other-library",
        lambda: inf(x), lambda: _call(q_inf, model, x, y, a), forward_floors(model, copies, 4096),
        lambda: exact(inf(x).double(), _call(q_inf, model, x, y, a), 1e-5), "exact, tol 1e-5",
        notes=[f"infidelity vs Quantus: Quantus' copies (the first 1..{k} patches to the black baseline) built in torch as "
               f"xattr's perturb_func; floor: one no-grad forward of the {k * ROWS} copies."],
    )]  # fmt: skip


class _Models:
    """input x gradient as a Quantus explain_func, keeping every model it explains."""

    def __init__(self):
        self.models = []

    def __call__(self, model, inputs, targets, **kw):
        import copy  # noqa: PLC0415

        self.models.append(copy.deepcopy(model))
        t = torch.as_tensor(inputs, dtype=torch.float32)
        return xattr.input_x_gradient(xattr.target(model, torch.as_tensor(targets)))(t).detach().numpy()


def _mprt(quantus, model, x, y) -> list[Workload]:
    a = xattr.input_x_gradient(xattr.target(model, y))(x).detach()
    check = lambda: M.randomization_check(model, lambda m: xattr.input_x_gradient(xattr.target(m, y)), x,  # noqa: E731
                                          similarity=("spearman_abs",), generator=SEED)  # fmt: skip
    q_mprt = quantus.MPRT(disable_warnings=True)

    def theirs(ex=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return q_mprt(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), channel_first=True,
                          explain_func=ex or _Models())  # fmt: skip

    def agree():
        ex = _Models()
        out = theirs(ex)
        layers = check().layers
        if list(out) != ["original"] + layers:
            return f"layers differ: {list(out)} vs {layers}", False
        orig = xattr.input_x_gradient(xattr.target(ex.models[0], y))(x)
        ours = torch.stack([M.spearman(orig, xattr.input_x_gradient(xattr.target(m, y))(x), abs=True)
                            for m in ex.models[1:]]).double()  # fmt: skip
        text, ok = exact(ours, torch.tensor(np.stack([out[n] for n in layers]), dtype=torch.float64), 1e-6)
        return f"same layers ({', '.join(layers)}); Spearman of |a| on Quantus' randomized models: {text}", ok

    fwd = fwd_bwd(model, x, _one_hot(y, 1, 10))
    n_maps = 1 + len(check().layers)
    return [Workload(
        f"model-parameter randomisation, cascading, {n_maps - 1} layers vs Quantus (digits CNN, input x gradient, {ROWS} rows)",
        "other-library", check, theirs, {f"{n_maps} fwd+bwd": lambda: [fwd() for _ in range(n_maps)]}, agree,
        "same layer order; Quantus' scores equal xattr's spearman_abs on the models Quantus randomized (different weights)",
        notes=["MPRT vs Quantus: both re-initialise with PyTorch's default initialisers from their own generators; "
               f"floor: {n_maps} fwd+bwd of the {ROWS} rows (the attributions of the trained and each randomized model)."],
    )]  # fmt: skip


def build(device: str = "cpu") -> list[Workload]:
    """The Quantus workloads (CPU only: Quantus takes numpy arrays)."""
    quantus = import_quantus()
    if quantus is None:
        return [Workload("vs Quantus", "other-library", None, None, {}, None, "", skip="quantus is not installed")]
    model, x, y, attr = _setup()
    return (_maps(quantus, model, x, y) + _faithfulness(quantus, model, x, y, attr) + _worst(quantus, model, x, y, attr)
            + _removal(quantus, model, x, y) + _infidelity(quantus, model, x, y, attr) + _mprt(quantus, model, x, y))


def main(argv=None) -> int:
    from .other_libraries import parser, print_table  # noqa: PLC0415

    return print_table(build, parser("quantus_workloads", __doc__, repeats=5, budget=2.0).parse_args(argv))

if __name__ == "__main__":
    torch.manual_seed(0)
    raise SystemExit(main())
