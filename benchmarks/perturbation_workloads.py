"""Perturbation workloads: occlusion, feature ablation, Shapley sampling, KernelSHAP, LIME (see workloads.py).

Same conventions as `workloads.build`: contenders are zero-argument callables, everything that is
not the attribution call (transforms, Captum objects, the floors' perturbed rows) is built before
timing, and agreement is judged before a time counts. Floors (see /work/shared/benchmarks.md) are
one plain no-grad forward over all perturbed copies at once, inputs prebuilt, counting the
unperturbed batch too where the method needs f(x) (occlusion, ablation, Shapley sampling: the
drops are taken from it; KernelSHAP: it is the full coalition). The same rows in calls of at most
`SPLIT_ROWS` rows (128 for the image models, 4096 for the tabular MLP) are a second plain-torch
candidate, and the faster counts: on CPU one large call is slower (its activations are faulted in
afresh on every call, see README.md), so the floor is what plain torch can do at best.

CPU suite:
- Occlusion on the suite's CNN (batch 16, 3x32x32): window 3x8x8, strides 3x4x4 (49 windows), with
  Captum's default ``perturbations_per_eval=1`` and with 64. xattr has no such knob: it batches
  copies up to its memory budget.
- Tabular workloads on `TabularMLP` (20-64-64-2, 32 rows, every feature its own): FeatureAblation
  (20 features), ShapleyValueSampling n_samples=25, KernelShap and Lime n_samples=200, each with
  Captum's defaults otherwise (zero baselines, ``perturbations_per_eval=1``; Lime: Lasso(0.01) and
  the exponential cosine kernel, which are also xattr's defaults).

GPU suite: occlusion on ResNet-50 (batch 8, 3x224x224: window 3x32x32, strides 3x16x16, 169
windows) and the same tabular workloads on the GPU.

Agreement: occlusion and feature ablation are deterministic (max abs difference). Shapley value
sampling is compared with a z-RMS (`workloads.z_rms`): the per-element spread of one estimate is
measured from many independent xattr estimates (other seeds), and (xattr - Captum) / (sqrt(2) sd)
must have an RMS over the elements in [0.8, 1.25] (E[z^2] = 1 when both libraries draw from the
same distribution; a different estimator, a biased one or a wrong kernel gives far more).
KernelSHAP and LIME: the L2 distance between the two libraries' estimates must lie within the
central 98% of the distances between pairs of xattr estimates with fresh seeds (two draws of one
estimator are that far apart). A z-RMS fails there: LIME's lasso leaves few elements varying, some
rarely, and their tiny sd made the statistic heavy-tailed (0.6 to 7 between two xattr estimates).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
from torch import nn

import xattr

from .workloads import N_CLASSES, SEED, Workload, _seeded, _z_text, exact, make_model, z_rms

TABULAR = (20, 64, 64, 2)  # widths of the tabular MLP
TABULAR_ROWS = 32
# A second floor candidate: the same rows in calls of at most this many. On CPU one call over all
# copies faults its activations in afresh every time (glibc returns blocks above its mmap threshold,
# at most 32 MiB, to the OS on free; ~0.7 ms per MiB here), so smaller calls are faster: 128 rows
# keep the CNN's largest activation at 8 MiB; 4096 tabular rows are xattr's own MAX_ROWS.
SPLIT_ROWS = {"cnn": 128, "resnet50": 128, "tabular": 4096}
OCCLUSION = {"cnn": ((3, 8, 8), (3, 4, 4)), "resnet50": ((3, 32, 32), (3, 16, 16))}  # (window, strides)
FRESH_DRAWS = "xattr, fresh draws every call (a torch.Generator)"
CAPTUM_ROUNDS_SLOW = 3  # timed rounds of Captum where one call takes seconds (KernelShap, Lime)


class TabularMLP(nn.Module):
    """The tabular workload of benchmarks.md: 20 features, two hidden layers of 64, 2 classes."""

    def __init__(self, widths=TABULAR):
        super().__init__()
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_tabular(device: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(model in eval mode, x (32, 20) standard normal, y (32,) targets in {0, 1}), seeded."""
    model = _seeded(TabularMLP).to(device).eval()
    gen = torch.Generator().manual_seed(SEED + 2)
    x = torch.randn(TABULAR_ROWS, TABULAR[0], generator=gen).to(device)
    y = torch.randint(0, TABULAR[-1], (TABULAR_ROWS,), generator=gen).to(device)
    return model, x, y


def few_rounds(fn: Callable[[], object], rounds: int) -> Callable[[], object]:
    """Marks a contender that takes seconds per call: run.py times it in ``rounds`` rounds of its
    own (after the agreement call, which warms it up) instead of in every interleaved round."""
    fn.rounds = rounds
    return fn


def forward_floors(model: nn.Module, rows: torch.Tensor, split: int) -> dict[str, Callable[[], object]]:
    """One no-grad forward of prebuilt rows, and (for more than ``split`` rows) the same rows in calls
    of ``split`` rows: two plain-torch spellings of the same work, the faster is the floor."""

    def one():
        with torch.no_grad():
            return model(rows)

    floors = {f"one forward of {rows.shape[0]} rows": one}
    if rows.shape[0] > split:
        parts = rows.split(split)

        def chunked():
            with torch.no_grad():
                return [model(p) for p in parts]

        floors[f"{len(parts)} forwards of <= {split} rows"] = chunked
    return floors


def _copies(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Perturbed copies with a zero baseline, folded into one batch: keep (K, [B,] ...) 0/1."""
    keep = keep.to(x.dtype)
    if keep.ndim == x.ndim:  # one mask per copy, shared by the batch
        keep = keep.unsqueeze(1)
    return (x.unsqueeze(0) * keep).reshape((-1,) + tuple(x.shape[1:]))


def _random_rows(x: torch.Tensor, n_copies: int) -> torch.Tensor:
    """n_copies random Bernoulli(1/2) coalitions of the batch's features with a zero baseline, plus
    the batch itself: (n_copies + 1) * B rows (the floors' inputs; values do not change the work)."""
    g = torch.Generator().manual_seed(SEED + 3)
    keep = torch.rand((n_copies,) + tuple(x.shape), generator=g) < 0.5
    return torch.cat([x, _copies(x, keep.to(x.device))])


# ---------------------------------------------------------------- occlusion ---------------------


def _occlusion(model: nn.Module, model_name: str, x: torch.Tensor, y: torch.Tensor, window, strides, ppe: int) -> Workload:
    from captum.attr import Occlusion  # noqa: PLC0415

    occ_x = xattr.occlusion(xattr.target(model, y), sliding_window_shapes=window, strides=strides)
    occ_c = Occlusion(model)

    def captum():
        return occ_c.attribute(x, sliding_window_shapes=window, strides=strides, target=y, perturbations_per_eval=ppe)

    masks = xattr.window_masks(x.shape[1:], window, strides).to(x.device)  # (W, ...)
    rows = torch.cat([x, _copies(x, ~masks)])  # f(x) and every occluded copy: (W + 1) * B rows
    split = SPLIT_ROWS[model_name]
    occ_split = xattr.occlusion(xattr.target(model, y), sliding_window_shapes=window, strides=strides, chunk_size=split)
    label = "Captum's default perturbations_per_eval=1" if ppe == 1 else f"perturbations_per_eval={ppe}"
    family = "occlusion-defaults" if ppe == 1 else "occlusion"
    return Workload(
        f"Occlusion window {'x'.join(map(str, window))} strides {'x'.join(map(str, strides))} "
        f"({masks.shape[0]} windows), {label}", family,
        lambda: occ_x(x), captum, forward_floors(model, rows, split),
        lambda: exact(occ_x(x), captum()), "exact, tol 1e-5",
        info={f"xattr with chunk_size={split}": lambda: occ_split(x)} if ppe == 1 else {},
        notes=[f"Occlusion ({label}): xattr: occlusion(target(model, y), sliding_window_shapes={window}, "
               f"strides={strides}) (no perturbations_per_eval: copies are batched up to its memory budget, "
               f"here {masks.shape[0] * x.shape[0]} rows in "
               f"{math.ceil(masks.shape[0] / _copies_per_call(x))} call(s)); Captum: Occlusion(model).attribute(x, "
               f"sliding_window_shapes={window}, strides={strides}, target=y, perturbations_per_eval={ppe}); floor: one "
               f"no-grad forward of the {rows.shape[0]} prebuilt rows (the batch and its {masks.shape[0]} occluded copies), "
               f"or the same rows in calls of {split}, the faster."]
        + ([f"Occlusion: 'xattr with chunk_size={split}' (for reference) is xattr in calls of the floor's size: on CPU "
            "the default's one large call faults its activations in afresh every time."] if ppe == 1 else []),
    )


def _copies_per_call(x: torch.Tensor) -> int:
    from xattr._src.budget import copies_per_call  # noqa: PLC0415 (for the notes only)

    return copies_per_call((x,), x.shape[0], None, None)


# ---------------------------------------------------------------- tabular -----------------------


def plain_feature_ablation(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The whole method in plain torch, written for this one case (one (B, F) input, every feature
    its own, zero baseline, one target per row): x and its F ablated copies in one no-grad forward,
    the targets gathered, f(x) minus each copy's output. What a hand-written script costs."""
    b, n = x.shape

    def run():
        with torch.no_grad():
            keep = torch.ones(n + 1, n, dtype=x.dtype, device=x.device)
            keep[1:].fill_diagonal_(0)  # row 0 keeps every feature (f(x)), row i + 1 drops feature i
            out = model((x * keep[:, None, :]).reshape(-1, n)).reshape(n + 1, b, -1)
            picked = out.gather(2, y.reshape(1, b, 1).expand(n + 1, b, 1))[..., 0]
            return (picked[0] - picked[1:]).T

    return run


def _feature_ablation(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Workload:
    from captum.attr import FeatureAblation  # noqa: PLC0415

    fa_x = xattr.feature_ablation(xattr.target(model, y))
    fa_c = FeatureAblation(model)
    n = x.shape[1]
    eye = torch.eye(n, device=x.device)
    return Workload(
        f"FeatureAblation, tabular MLP, {n} features, {x.shape[0]} rows", "ablation-tabular",
        lambda: fa_x(x), lambda: fa_c.attribute(x, target=y),
        forward_floors(model, torch.cat([x, _copies(x, 1 - eye)]), SPLIT_ROWS["tabular"]),
        lambda: exact(fa_x(x), fa_c.attribute(x, target=y)), "exact, tol 1e-5",
        info={"plain-torch FeatureAblation": plain_feature_ablation(model, x, y),
              "xattr, a new function per call": lambda: xattr.feature_ablation(xattr.target(model, y))(x)},
        notes=[f"FeatureAblation: xattr: feature_ablation(target(mlp, y)) (every feature its own, zero baseline), "
               "called again and again with one signature, so after the first call a prepared call serves it "
               "(NOTE: [Prepared calls]); 'xattr, a new function per call' (for reference) takes the general path every time; "
               f"Captum: FeatureAblation(mlp).attribute(x, target=y) (defaults: perturbations_per_eval=1, so {n} "
               f"forward calls of {x.shape[0]} rows); floor: one no-grad forward of the {(n + 1) * x.shape[0]} "
               "prebuilt rows (x and its ablated copies)."],
    )


def _shapley_sampling(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_samples: int = 25) -> Workload:
    from captum.attr import ShapleyValueSampling  # noqa: PLC0415

    f = xattr.target(model, y)
    sv_x = xattr.shapley_value_sampling(f, n_samples=n_samples, generator=SEED)
    fresh = xattr.shapley_value_sampling(f, n_samples=n_samples, generator=torch.Generator().manual_seed(SEED))
    sv_c = ShapleyValueSampling(model)
    n, b = x.shape[1], x.shape[0]

    def captum():
        return sv_c.attribute(x, target=y, n_samples=n_samples)

    def agree():
        reps = 200  # single-permutation estimates per element, for its standard deviation
        one = xattr.shapley_value_sampling(xattr.target(model, y.repeat(reps)), n_samples=1, generator=SEED + 1)
        per = one(x.repeat(reps, 1)).reshape(reps, b, n)
        torch.manual_seed(SEED)
        z = z_rms(sv_x(x), captum(), per, n_samples)
        text, ok = _z_text(z)
        return f"{text} (sd from {reps} single-permutation xattr estimates)", ok

    copies = 1 + n_samples * (n - 1)  # the empty coalition and the inner steps of every chain (+ f(x))
    return Workload(
        f"ShapleyValueSampling n_samples={n_samples}, tabular MLP, {n} features, {b} rows", "ablation-tabular",
        lambda: sv_x(x), captum, forward_floors(model, _random_rows(x, copies), SPLIT_ROWS["tabular"]),
        agree, "z-RMS in [0.8, 1.25] (sd of one estimate from xattr's single-permutation estimates, "
        f"scaled by sqrt(2/{n_samples}))",
        info={FRESH_DRAWS: lambda: fresh(x)},
        notes=[f"ShapleyValueSampling: xattr: shapley_value_sampling(target(mlp, y), n_samples={n_samples}, "
               f"generator=0): {b} x (1 + {n_samples} x {n - 1}) perturbed rows in one batched evaluation, the "
               "permutations drawn on the first call and reused by the later ones, which draw the same (an int seed: "
               f"NOTE: [Remembered permutations]); '{FRESH_DRAWS}' (for reference) draws them on every call; Captum: "
               f"ShapleyValueSampling(mlp).attribute(x, target=y, n_samples={n_samples}) (perturbations_per_eval=1: "
               f"one forward of {b} rows per step of each permutation); floor: one no-grad forward of the "
               f"{(copies + 1) * b} rows the estimator needs at least (every chain's inner coalitions, the empty one "
               "once, and f(x)), prebuilt."],
    )


NULL_PAIRS = 200  # pairs of xattr estimates for the null distribution of the surrogates' z-RMS


def _surrogate(kind: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_samples: int = 200, seeds: int = 40) -> Workload:
    from captum.attr import KernelShap, Lime  # noqa: PLC0415

    method = xattr.kernel_shap if kind == "KernelShap" else xattr.lime
    f = xattr.target(model, y)
    s_x = method(f, n_samples=n_samples, generator=SEED)
    s_c = (KernelShap if kind == "KernelShap" else Lime)(model)
    n, b = x.shape[1], x.shape[0]

    def captum():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's convergence chatter
            return s_c.attribute(x, target=y, n_samples=n_samples)

    def agree():
        per = torch.stack([method(f, n_samples=n_samples, generator=SEED + 1 + i)(x) for i in range(seeds)])
        torch.manual_seed(SEED)
        a, c = s_x(x), captum()
        # The distance between Captum's estimate and xattr's, against its null distribution: the distance
        # between two xattr estimates with fresh seeds. (A z-RMS, as for Shapley sampling, is no test here:
        # LIME's lasso leaves few elements varying, some only rarely, and dividing by their tiny sd made the
        # statistic heavy-tailed: between two xattr estimates it ranged 0.6-7 over 200 pairs.)
        dist = float((a - c).norm())
        null = sorted(float((method(f, n_samples=n_samples, generator=10_000 + 2 * i)(x)
                             - method(f, n_samples=n_samples, generator=10_001 + 2 * i)(x)).norm()) for i in range(NULL_PAIRS))
        lo, hi = null[int(0.01 * NULL_PAIRS)], null[int(0.99 * NULL_PAIRS) - 1]
        ok = lo <= dist <= hi
        text = f"L2 distance to Captum {dist:.3f} (xattr to xattr: {lo:.3f}..{hi:.3f} in 98% of {NULL_PAIRS} pairs)"
        # elements whose estimates never vary (LIME's lasso zeroes most coefficients): there Captum must
        # give the same value
        fixed = per.std(0) <= 1e-12 * float(per.std(0).max())
        same = bool(((c - per[0]).abs()[fixed] <= 1e-6 * float(per.abs().max())).all())
        if fixed.any():
            text += f"; {int(fixed.sum())} elements constant over xattr's estimates, Captum's {'equal' if same else 'differ'} there"
        return text, ok and same

    default = ("KernelSHAP's exact efficiency constraint (Captum: end coalitions weighted 1e6)" if kind == "KernelShap"
               else "Lasso(alpha=0.01), exponential cosine kernel of width 1, Bernoulli(1/2) coalitions")
    return Workload(
        f"{kind} n_samples={n_samples}, tabular MLP, {n} features, {b} rows", "surrogate",
        lambda: s_x(x), few_rounds(captum, CAPTUM_ROUNDS_SLOW), forward_floors(model, _random_rows(x, n_samples - 1), SPLIT_ROWS["tabular"]),
        agree, f"the L2 distance between the two libraries' estimates within the central 98% of the distances between "
        f"{NULL_PAIRS} pairs of xattr estimates with fresh seeds (same estimator: same distribution); where {seeds} xattr "
        "estimates never vary, Captum's must equal them",
        notes=[f"{kind}: xattr: {method.__name__}(target(mlp, y), n_samples={n_samples}, generator=0) ({default}); "
               f"Captum: {kind}(mlp).attribute(x, target=y, n_samples={n_samples}) (defaults otherwise: one forward "
               f"of 1 row per sample, one scikit-learn fit per example); floor: one no-grad forward of "
               f"{n_samples * b} prebuilt rows. Captum takes seconds per call, so it is timed in "
               f"{CAPTUM_ROUNDS_SLOW} rounds of its own after the agreement call."],
    )


# ---------------------------------------------------------------- the suite ---------------------


def build(model_name: str, device: str) -> list[Workload]:
    """Occlusion on the suite's model ("cnn" or "resnet50") and the tabular workloads on ``device``."""
    model, shape, batch = make_model(model_name, device)
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn((batch,) + shape, generator=gen).to(device)  # the same x, y as workloads.build
    y = torch.randint(0, N_CLASSES, (batch,), generator=gen).to(device)
    window, strides = OCCLUSION[model_name]
    mlp, xt, yt = make_tabular(device)
    return [
        _occlusion(model, model_name, x, y, window, strides, 1),
        _occlusion(model, model_name, x, y, window, strides, 64),
        _feature_ablation(mlp, xt, yt),
        _shapley_sampling(mlp, xt, yt),
        _surrogate("KernelShap", mlp, xt, yt),
        _surrogate("Lime", mlp, xt, yt),
    ]
