"""KernelSHAP, DeepLIFT SHAP and expected gradients against shap 0.51 (see workloads.py, README.md).

The Captum column of run.py's table holds shap here. Models: `WineMLP` (13-32-32-3, trained for
200 Adam steps on scikit-learn's standardised wine data, seeded) and `DigitsCNN` (conv 8 - max-pool
- conv 16 - linear 10 on the 8x8 digits scaled to [0, 1], seeded random weights).

- KernelSHAP: xattr ``kernel_shap`` and shap ``KernelExplainer`` at the same ``nsamples``, class 0,
  8 rows. shap's value function is the model averaged over the rows of its background set; with
  a single background row it is xattr's single baseline (here the data mean), and both estimate
  the Shapley values `xattr.shapley_values` computes exactly (13 features: 8191 coalitions).
  shap 0.47+ selects 10 features by default (``l1_reg="num_features(10)"``), leaving the other
  3 of 13 at exactly 0 even when every coalition is enumerated; ``l1_reg=False`` is passed.
  Agreement: both libraries exact at full enumeration (shap: ``nsamples >= 2^13 - 2``, xattr
  ``n_samples >= 2^13``), and at the timed nsamples each one's RMS error against the exact values
  is reported (median over seeds): they sample coalitions differently (shap enumerates whole
  coalition sizes first and pairs each draw with its complement, xattr draws as Captum does).
  xattr's ``sampling="paired"`` is shap's scheme (docs/methods/kernel_shap.md); its error is
  reported next to the default's (not timed: the timed call is the default).
- DeepLIFT SHAP: xattr ``deep_lift_shap`` and shap ``DeepExplainer`` (16 background rows) on both
  models, each example's top class (shap's ``ranked_outputs=1``), exact agreement (float32, as timed).
- Expected gradients: xattr ``gradient_shap`` and shap ``GradientExplainer`` (float32 only: it
  builds float32 tensors, and a float64 model fails in its first linear layer), the top class,
  ``nsamples`` draws: the same estimator, so the L2 distance between the two estimates must lie in
  the central 98% of the distances between pairs of xattr estimates with fresh seeds.
"""

from __future__ import annotations

import statistics
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn

import xattr

from .perturbation_workloads import few_rounds, forward_floors
from .workloads import SEED, Workload, _one_hot, exact, fwd_bwd

KERNEL_SAMPLES, KERNEL_ROWS = 200, 8
BACKGROUND = 16  # background rows of DeepExplainer / GradientExplainer
GRADIENT_SAMPLES = 50
SEEDS = 10  # seeds per library for the KernelSHAP error medians
NULL_PAIRS = 100  # pairs of xattr expected-gradients estimates for the distance null
SHAP_ROUNDS = 3  # shap's KernelExplainer and GradientExplainer take a second or more per call


def import_shap():
    """shap, or None when it is not installed."""
    try:
        import shap  # noqa: PLC0415
    except ImportError:
        return None
    return shap


def wine(dtype=torch.float64) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(WineMLP trained on standardised wine, all 178 rows standardised, labels)."""
    from sklearn.datasets import load_wine  # noqa: PLC0415

    data, labels = load_wine(return_X_y=True)
    x = torch.tensor((data - data.mean(0)) / data.std(0), dtype=dtype)
    y = torch.tensor(labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)).to(dtype)
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(200):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval(), x, y


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.relu1, self.pool = nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2 = nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        self.flatten, self.fc = nn.Flatten(), nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.flatten(self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))))


def digits(dtype=torch.float64) -> tuple[nn.Module, torch.Tensor]:
    """(DigitsCNN with seeded random weights, the 1797 digits as (N, 1, 8, 8) in [0, 1])."""
    from sklearn.datasets import load_digits  # noqa: PLC0415

    x = torch.tensor(load_digits().data / 16.0, dtype=dtype).reshape(-1, 1, 8, 8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return DigitsCNN().to(dtype).eval(), x


def shap_kernel(shap, model: nn.Module, background: torch.Tensor, cls: int) -> Callable:
    """shap's KernelExplainer of output ``cls``: ``run(x, nsamples, seed) -> (B, M) tensor``."""

    def f(a):
        with torch.no_grad():
            return model(torch.as_tensor(a, dtype=background.dtype)).numpy()[:, cls]

    explainer = shap.KernelExplainer(f, background.numpy())

    def run(x: torch.Tensor, nsamples: int, seed: int = SEED) -> torch.Tensor:
        np.random.seed(seed)  # KernelExplainer draws from numpy's global generator
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.as_tensor(explainer.shap_values(x.numpy(), nsamples=nsamples, l1_reg=False, silent=True))

    return run


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def _kernel(shap) -> Workload:
    model, data, _ = wine()
    x, base = data[:KERNEL_ROWS * 20:20], data.mean(0, keepdim=True)  # rows of all three classes
    f = xattr.target(model, 0)
    ks = xattr.kernel_shap(f, n_samples=KERNEL_SAMPLES, baselines=base, generator=SEED)
    sk = shap_kernel(shap, model, base, 0)
    m = x.shape[1]

    def agree():
        exact_phi = xattr.shapley_values(f, baselines=base)(x)
        full_x = xattr.kernel_shap(f, n_samples=2**m, baselines=base, generator=SEED)(x)
        full_s = sk(x, 2**m)
        tx, ok_x = exact(full_x, exact_phi, 1e-9)
        ts, ok_s = exact(full_s, exact_phi, 1e-9)
        err_x = statistics.median(rms(xattr.kernel_shap(f, n_samples=KERNEL_SAMPLES, baselines=base, generator=s)(x), exact_phi)
                                  for s in range(SEEDS))
        err_s = statistics.median(rms(sk(x, KERNEL_SAMPLES, s), exact_phi) for s in range(SEEDS))
        err_p = statistics.median(rms(xattr.kernel_shap(f, n_samples=KERNEL_SAMPLES, sampling="paired", baselines=base,
                                                        generator=s)(x), exact_phi) for s in range(SEEDS))
        scale = rms(exact_phi, torch.zeros_like(exact_phi))
        text = (f"every coalition: xattr {tx}, shap {ts} against exact Shapley values; at nsamples={KERNEL_SAMPLES} "
                f"RMS error against them (median of {SEEDS} seeds): xattr {err_x:.3f} (sampling=\"paired\": "
                f"{err_p:.3f}), shap {err_s:.3f} "
                f"(RMS of the values {scale:.3f})")
        return text, ok_x and ok_s

    rows = (x.unsqueeze(0) * (torch.rand(KERNEL_SAMPLES - 1, *x.shape, generator=torch.Generator().manual_seed(SEED)) < 0.5)).reshape(-1, m)
    return Workload(
        f"KernelSHAP nsamples={KERNEL_SAMPLES} vs shap KernelExplainer (wine MLP, {m} features, {KERNEL_ROWS} rows)",
        "other-library", lambda: ks(x), few_rounds(lambda: sk(x, KERNEL_SAMPLES), SHAP_ROUNDS),
        forward_floors(model, rows, 4096), agree,
        "both exact (tol 1e-9) with every coalition; at the timed nsamples each one's error against the exact "
        "Shapley values is reported, not judged (different coalition sampling)",
        notes=["KernelSHAP vs shap: xattr kernel_shap(target(mlp, 0), n_samples=200, baselines=mean row, generator=0); "
               "shap KernelExplainer(f_class0, mean row).shap_values(x, nsamples=200, l1_reg=False): one background "
               "row, so shap's value function (the model averaged over background rows) is xattr's single baseline. "
               f"shap is timed in {SHAP_ROUNDS} rounds of its own; floor: one no-grad forward of the "
               f"{(KERNEL_SAMPLES - 1) * KERNEL_ROWS} coalition rows, prebuilt."],
    )


def _top(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def shap_deep(shap, model: nn.Module, background: torch.Tensor) -> Callable:
    """shap's DeepExplainer of each example's top class: ``run(x) -> tensor like x``."""
    explainer = shap.DeepExplainer(model, background)

    def run(x):
        values, _ = explainer.shap_values(x, ranked_outputs=1, check_additivity=False)
        return torch.as_tensor(np.asarray(values)[..., 0])

    return run


def _deep(shap, label: str, model: nn.Module, x: torch.Tensor, background: torch.Tensor) -> Workload:
    y = _top(model, x)
    dls = xattr.deep_lift_shap(xattr.target(model, y), baselines=background)
    sd = shap_deep(shap, model, background)
    b, n, n_out = x.shape[0], background.shape[0], model(x[:1]).shape[1]
    pairs = torch.cat([x.repeat_interleave(n, 0), background.repeat(b, *([1] * (x.ndim - 1)))])
    return Workload(
        f"DeepLIFT SHAP vs shap DeepExplainer ({label}, {b} rows, {n} background rows)", "other-library",
        lambda: dls(x), lambda: sd(x),
        {"fwd+bwd of 2BN rows": fwd_bwd(model, pairs, _one_hot(y.repeat_interleave(n), 2, n_out).to(x.dtype))},
        lambda: exact(dls(x), sd(x)), "exact, tol 1e-5 x max(1, max abs attr)",
        notes=[f"DeepLIFT SHAP vs shap ({label}): xattr deep_lift_shap(target(model, top class), baselines=background); "
               "shap DeepExplainer(model, background).shap_values(x, ranked_outputs=1, check_additivity=False); floor: "
               "one plain fwd+bwd of the B x N example rows and B x N reference rows."],
    )


def shap_gradient(shap, model: nn.Module, background: torch.Tensor) -> Callable:
    """shap's GradientExplainer of each example's top class: ``run(x, nsamples, seed)``."""
    explainer = shap.GradientExplainer(model, background)

    def run(x, nsamples: int = GRADIENT_SAMPLES, seed: int = SEED):
        values, _ = explainer.shap_values(x, nsamples=nsamples, ranked_outputs=1, rseed=seed)
        return torch.as_tensor(np.asarray(values)[..., 0])

    return run


def _gradient(shap, model: nn.Module, x: torch.Tensor, background: torch.Tensor) -> Workload:
    y = _top(model, x)
    f = xattr.target(model, y)
    gs = xattr.gradient_shap(f, baselines=background, n_samples=GRADIENT_SAMPLES, generator=SEED)
    sg = shap_gradient(shap, model, background)
    b, n_out = x.shape[0], model(x[:1]).shape[1]

    def agree():
        a, s = gs(x), sg(x)
        dist = float((a - s).norm())
        null = sorted(float((xattr.gradient_shap(f, baselines=background, n_samples=GRADIENT_SAMPLES, generator=1000 + 2 * i)(x)
                             - xattr.gradient_shap(f, baselines=background, n_samples=GRADIENT_SAMPLES, generator=1001 + 2 * i)(x)).norm())
                      for i in range(NULL_PAIRS))
        lo, hi = null[int(0.01 * NULL_PAIRS)], null[int(0.99 * NULL_PAIRS) - 1]
        return f"L2 distance to shap {dist:.4f} (xattr to xattr: {lo:.4f}..{hi:.4f} in 98% of {NULL_PAIRS} pairs)", lo <= dist <= hi

    xe = x.repeat(GRADIENT_SAMPLES, *([1] * (x.ndim - 1)))
    return Workload(
        f"expected gradients nsamples={GRADIENT_SAMPLES} vs shap GradientExplainer (digits CNN, float32, {b} rows)",
        "other-library", lambda: gs(x), few_rounds(lambda: sg(x), SHAP_ROUNDS),
        {"fwd+bwd": fwd_bwd(model, xe, _one_hot(y, GRADIENT_SAMPLES, n_out))}, agree,
        f"the L2 distance between the two estimates within the central 98% of the distances between {NULL_PAIRS} "
        "pairs of xattr estimates with fresh seeds (the same estimator)",
        notes=[f"expected gradients vs shap: xattr gradient_shap(target(model, top class), baselines=background, "
               f"n_samples={GRADIENT_SAMPLES}, generator=0); shap GradientExplainer(model, background).shap_values(x, "
               f"nsamples={GRADIENT_SAMPLES}, ranked_outputs=1, rseed=0) (float32: shap builds float32 tensors); "
               f"floor: one plain fwd+bwd of the {GRADIENT_SAMPLES * b} path points. shap is timed in "
               f"{SHAP_ROUNDS} rounds of its own."],
    )


def build(device: str = "cpu") -> list[Workload]:
    """The shap workloads (CPU only: shap's explainers take numpy or CPU tensors here)."""
    shap = import_shap()
    if shap is None:
        return [Workload("vs shap", "other-library", None, None, {}, None, "", skip="shap is not installed")]
    mlp, data, _ = wine(torch.float32)
    cnn, images = digits(torch.float32)
    return [
        _kernel(shap),
        _deep(shap, "wine MLP", mlp, data[:KERNEL_ROWS * 20:20], data[1::11][:BACKGROUND]),
        _deep(shap, "digits CNN", cnn, images[100:116], images[:BACKGROUND]),
        _gradient(shap, cnn, images[100:116], images[:BACKGROUND]),
    ]
