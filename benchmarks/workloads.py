"""Benchmark workloads: models, inputs, the three contenders (xattr, Captum, floor) and agreement.

A `Workload` holds zero-argument callables, so the timing loop measures the attribution call
only: transforms, Captum objects, expanded floor inputs and one-hot cotangents are built once,
before timing. Floors (see /work/shared/benchmarks.md) time one plain torch forward+backward of
the already expanded batch; where several plain-torch spellings exist, each is a candidate and
the fastest is the floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.func import vjp, vmap

import xattr

SEED = 0
N_CLASSES = 10


@dataclass
class Workload:
    name: str
    family: str  # "gradient" (<= 1.05x floor, never slower than Captum) or "many" (K outputs)
    xattr: Callable[[], object]
    captum: Callable[[], object] | None  # None: Captum cannot run this workload (agreement says why)
    floors: dict[str, Callable[[], object]]  # candidate plain-torch floors; the fastest counts
    agreement: Callable[[], tuple[str, bool]]  # (text for the table, passed)
    how: str  # how agreement was judged
    notes: list[str] = field(default_factory=list)
    info: dict[str, Callable[[], object]] = field(default_factory=dict)  # timed for the notes only
    skip: str | None = None  # why the workload cannot run here (e.g. torchvision missing)


class SmallCNN(nn.Module):
    """The CPU workload: three 3x3 convs (16, 32, 64 channels) with ReLU and pooling, 10 classes."""

    def __init__(self, n_classes: int = N_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.fc = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.conv1(x)))
        x = self.pool(self.relu2(self.conv2(x)))
        x = self.relu3(self.conv3(x)).mean((2, 3))
        return self.fc(x)


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build()


def make_model(name: str, device: str) -> tuple[nn.Module, tuple[int, ...], int]:
    """Returns (model in eval mode on device, example shape, batch size)."""
    if name == "cnn":
        return _seeded(SmallCNN).to(device).eval(), (3, 32, 32), 16
    if name == "resnet50":
        from xattr.testing.vision import models  # noqa: PLC0415 (only the GPU suite needs torchvision)

        model = _seeded(lambda: models().resnet50(weights=None))
        return model.to(device).eval(), (3, 224, 224), 8
    raise ValueError(f"unknown model {name!r}")


# ---------------------------------------------------------------- floors (plain torch) ----------


def _one_hot(y: torch.Tensor, n: int, n_out: int = N_CLASSES) -> torch.Tensor:
    """Cotangent selecting each example's target, tiled over n folded copies: (n * B, n_out)."""
    return torch.nn.functional.one_hot(y, n_out).to(torch.float32).repeat(n, 1)


def fwd_bwd(model: nn.Module, xe: torch.Tensor, cot: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One forward + one backward (torch.autograd.grad) of an already expanded batch."""

    def run():
        xr = xe.detach().requires_grad_()
        return torch.autograd.grad(model(xr), xr, cot)[0]

    return run


def many_floors(model: nn.Module, xe: torch.Tensor, cots: torch.Tensor) -> dict[str, Callable[[], object]]:
    """One forward + K backward passes of an expanded batch: three plain-torch spellings."""

    def vmapped_vjp():
        _, pullback = vjp(model, xe)
        return vmap(pullback)(cots)[0]

    def batched_grad():
        xr = xe.detach().requires_grad_()
        return torch.autograd.grad(model(xr), xr, cots, is_grads_batched=True)[0]

    def looped_grad():
        xr = xe.detach().requires_grad_()
        out = model(xr)
        k = cots.shape[0]
        return [torch.autograd.grad(out, xr, cots[i], retain_graph=i < k - 1)[0] for i in range(k)]

    return {"vmap(vjp)": vmapped_vjp, "autograd.grad is_grads_batched": batched_grad, "autograd.grad loop": looped_grad}


def plain_smoothgrad(model, x, y, n: int, stdev: float, n_out: int) -> Callable[[], torch.Tensor]:
    """The whole method in plain torch: noise draw, one fwd+bwd, |grad|, mean over samples."""
    cot = _one_hot(y, n, n_out).to(x.device)

    def run():
        xr = (x.unsqueeze(0) + stdev * torch.randn((n,) + x.shape, device=x.device)).flatten(0, 1).requires_grad_()
        return torch.autograd.grad(model(xr), xr, cot)[0].abs().unflatten(0, (n, -1)).mean(0)

    return run


def plain_gradient_shap(model, x, y, dist, n: int, n_out: int) -> Callable[[], torch.Tensor]:
    """The whole method in plain torch: baseline and alpha draws, path points, fwd+bwd, (x - b) * grad, mean."""
    cot = _one_hot(y, n, n_out).to(x.device)
    ones = (1,) * (x.ndim - 1)

    def run():
        d = x - dist[torch.randint(0, dist.shape[0], (n, x.shape[0]), device=x.device)]
        a = torch.rand((n, x.shape[0]) + ones, device=x.device)
        xr = (x - (1 - a) * d).flatten(0, 1).requires_grad_()
        return (torch.autograd.grad(model(xr), xr, cot)[0].unflatten(0, (n, -1)) * d).mean(0)

    return run


# ---------------------------------------------------------------- agreement ---------------------


def device_tol(device: str) -> float:
    """Relative tolerance of an "exact" agreement (and of summation-to-delta): 1e-5 in float32 on
    CPU; 1e-4 on CUDA, where the runner checks agreement in float32 proper (`timing.full_fp32`)
    but cuDNN picks other convolution algorithms for other batch sizes."""
    return 1e-4 if device.startswith("cuda") else 1e-5


def agreement_tol(t: torch.Tensor) -> float:
    return device_tol(t.device.type)


def exact(a: torch.Tensor, b: torch.Tensor, tol: float | None = None) -> tuple[str, bool]:
    tol = agreement_tol(b) if tol is None else tol
    diff = float((a - b).abs().max())
    scale = float(b.abs().max())
    return f"max abs diff {diff:.1e} (max abs attr {scale:.1e})", diff <= tol * max(1.0, scale)


def z_rms(a: torch.Tensor, b: torch.Tensor, per_sample: torch.Tensor, n: int) -> float:
    """RMS over elements of (a - b) / sd(a - b) for two independent n-sample Monte Carlo means.

    ``per_sample`` (S, ...) are independent draws of the averaged quantity, used only to estimate
    its per-element standard deviation; sd(a - b) = sd * sqrt(2 / n). E[z^2] = 1 whatever the
    distribution of the draws, so the RMS is close to 1 when both estimate the same expectation.
    """
    sd = per_sample.std(0) * math.sqrt(2.0 / n)
    keep = sd > 1e-12 * float(sd.max())
    return float((((a - b)[keep] / sd[keep]) ** 2).mean().sqrt())


def _z_text(z: float) -> tuple[str, bool]:
    return f"z-RMS {z:.2f}", 0.8 <= z <= 1.25


# ---------------------------------------------------------------- the suite ---------------------


def build(model_name: str, device: str, *, n_steps: int = 50, n_samples: int = 25, stdev: float = 0.1, k_steps: int = 20) -> list[Workload]:
    """The five workloads of the benchmark issue on one model."""
    from captum.attr import GradientShap, IntegratedGradients, NoiseTunnel, Saliency  # noqa: PLC0415

    model, shape, batch = make_model(model_name, device)
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn((batch,) + shape, generator=gen).to(device)
    y = torch.randint(0, N_CLASSES, (batch,), generator=gen).to(device)
    dist = (0.5 * torch.randn((20,) + shape, generator=gen)).to(device)  # GradientShap baselines
    with torch.no_grad():
        n_out = model(x[:1]).shape[1]  # 10 for the CNN, 1000 for ResNet-50 (classes 0..9 are explained)

    def hot(n):
        return _one_hot(y, n, n_out).to(device)

    f = xattr.target(model, y)
    work = []

    def captum_seeded(fn):
        def run():
            torch.manual_seed(SEED)
            import numpy as np  # noqa: PLC0415

            np.random.seed(SEED)
            return fn()

        return run

    # Integrated gradients, n_steps, Gauss-Legendre (both libraries' default), zero baseline.
    ig_x = xattr.integrated_gradients(f, n_steps=n_steps)
    ig_c = IntegratedGradients(model)
    alphas, _ = xattr.quadrature("gausslegendre", n_steps)
    a = torch.as_tensor(alphas, dtype=x.dtype, device=device).reshape(-1, 1, 1, 1, 1)
    x_ig = (a * x).reshape((-1,) + shape)
    work.append(Workload(
        f"IntegratedGradients n_steps={n_steps}", "gradient",
        lambda: ig_x(x), lambda: ig_c.attribute(x, target=y, n_steps=n_steps),
        {"fwd+bwd": fwd_bwd(model, x_ig, hot(n_steps))},
        lambda: exact(ig_x(x), ig_c.attribute(x, target=y, n_steps=n_steps)), "exact, tol 1e-5",
    ))

    # Saliency (|gradient|).
    sal_x = xattr.saliency(f)
    sal_c = Saliency(model)
    work.append(Workload(
        "Saliency", "gradient", lambda: sal_x(x), lambda: sal_c.attribute(x, target=y),
        {"fwd+bwd": fwd_bwd(model, x, hot(1))},
        lambda: exact(sal_x(x), sal_c.attribute(x, target=y)), "exact, tol 1e-5",
    ))

    # SmoothGrad: noise tunnel over saliency.
    x_rep = x.repeat(n_samples, 1, 1, 1)
    sg_x = xattr.smooth(sal_x, stdevs=stdev, n_samples=n_samples, generator=SEED)
    sg0_x = xattr.smooth(sal_x, stdevs=0.0, n_samples=n_samples, generator=SEED)
    sg_c = NoiseTunnel(Saliency(model))

    def sg_captum(sd=stdev):
        return sg_c.attribute(x, nt_type="smoothgrad", nt_samples=n_samples, stdevs=sd, target=y)

    def sg_agree():
        det, ok0 = exact(sg0_x(x), sg_captum(0.0))
        noise = stdev * torch.randn((2 * n_samples,) + x.shape, generator=torch.Generator().manual_seed(1)).to(device)
        per = fwd_bwd(model, (x + noise).reshape((-1,) + shape), hot(2 * n_samples))()
        z = z_rms(sg_x(x), captum_seeded(sg_captum)(), per.abs().reshape(noise.shape), n_samples)
        zt, ok1 = _z_text(z)
        return f"stdevs=0: {det}; stdevs={stdev}: {zt}", ok0 and ok1

    work.append(Workload(
        f"NoiseTunnel(Saliency) smoothgrad, {n_samples} samples, stdevs={stdev}", "gradient",
        lambda: sg_x(x), sg_captum,
        {"fwd+bwd": fwd_bwd(model, x_rep + stdev * torch.randn_like(x_rep), hot(n_samples))},
        sg_agree, "exact at stdevs=0; z-RMS in [0.8, 1.25] at the timed stdevs",
        info={"noise draw alone": lambda: torch.randn_like(x_rep),
              "plain-torch SmoothGrad": plain_smoothgrad(model, x, y, n_samples, stdev, n_out)},
    ))

    # GradientShap: baselines drawn from a distribution of 20, uniform alphas, no extra noise.
    gs_x = xattr.gradient_shap(f, baselines=dist, n_samples=n_samples, generator=SEED)
    gs_c = GradientShap(model)

    def gs_captum():
        return gs_c.attribute(x, baselines=dist, n_samples=n_samples, target=y)

    def gs_agree():
        g = torch.Generator().manual_seed(1)
        m = 2 * n_samples
        b = dist[torch.randint(0, dist.shape[0], (m, batch), generator=g).to(device)]
        al = torch.rand((m, batch) + (1,) * len(shape), generator=g).to(device)
        grads = fwd_bwd(model, (b + al * (x - b)).reshape((-1,) + shape), hot(m))()
        per = grads.reshape(b.shape) * (x - b)
        zt, ok = _z_text(z_rms(gs_x(x), captum_seeded(gs_captum)(), per, n_samples))
        return zt, ok

    gs_pts = dist[torch.randint(0, dist.shape[0], (n_samples * batch,), generator=gen).to(device)]
    work.append(Workload(
        f"GradientShap n_samples={n_samples}", "gradient", lambda: gs_x(x), gs_captum,
        {"fwd+bwd": fwd_bwd(model, 0.5 * (gs_pts + x_rep), hot(n_samples))},
        gs_agree, "z-RMS in [0.8, 1.25] (no deterministic setting: alphas are random)",
        info={"plain-torch GradientShap": plain_gradient_shap(model, x, y, dist, n_samples, n_out)},
    ))

    # IG for all 10 classes: one xattr call vs Captum's loop over targets.
    all_x = xattr.integrated_gradients(xattr.target(model, xattr.outputs(range(N_CLASSES))), n_steps=k_steps)
    all_c = IntegratedGradients(model)

    def all_captum():
        return torch.stack([all_c.attribute(x, target=k, n_steps=k_steps) for k in range(N_CLASSES)], 1)

    alphas, _ = xattr.quadrature("gausslegendre", k_steps)
    a = torch.as_tensor(alphas, dtype=x.dtype, device=device).reshape(-1, 1, 1, 1, 1)
    x_all = (a * x).reshape((-1,) + shape)
    cots = torch.zeros(N_CLASSES, x_all.shape[0], n_out, device=device)  # K one-hot cotangents
    cots[torch.arange(N_CLASSES), :, torch.arange(N_CLASSES)] = 1.0
    work.append(Workload(
        f"IG for all {N_CLASSES} classes, n_steps={k_steps}", "many", lambda: all_x(x), all_captum,
        many_floors(model, x_all, cots), lambda: exact(all_x(x), all_captum()), "exact, tol 1e-5",
    ))
    return work
