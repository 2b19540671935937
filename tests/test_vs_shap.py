"""Conformance with shap 0.51 (KernelExplainer, DeepExplainer, GradientExplainer), run live;
every test skips where shap is not installed (CI). zennit: test_vs_zennit.py.

Each rule pair that agrees is checked in float64 to rounding; each documented difference
(docs/other_libraries.md, benchmarks/README.md) is checked to exist, and where the other library
computes something else, that something is pinned down by a slow reference written out by hand.
"""

import contextlib
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import xattr
from benchmarks.shap_workloads import digits, shap_deep, shap_gradient, shap_kernel, wine

D = torch.float64


def need_shap():
    return pytest.importorskip("shap")


def mlp(seed: int, widths=(6, 7, 5, 3)) -> nn.Module:
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).to(D).eval()


def data(seed: int, shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def lrp(model, rules, x, y):
    return xattr.lrp(xattr.target(model, y), composite=rules)(x)


def close(a, b, tol=1e-10):
    a, b = torch.as_tensor(a).detach(), torch.as_tensor(b).detach()
    scale = max(1.0, float(b.abs().max()))
    assert float((a - b).abs().max()) <= tol * scale, float((a - b).abs().max())


# ---------------------------------------------------------------- shap ----------------------------------


def brute_shapley(f, x, background):
    """Interventional Shapley values, explicit loops: v(S) = mean over background rows b of
    f(x on S, b elsewhere); phi_i = sum over S not holding i of |S|! (M-|S|-1)! / M! (v(S+i) - v(S))."""
    m = x.shape[0]

    def v(s):
        rows = background.clone()
        rows[:, list(s)] = x[list(s)]
        with torch.no_grad():
            return float(f(rows).mean())

    phi = torch.zeros(m, dtype=x.dtype)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        for k in range(m):
            for s in itertools.combinations(others, k):
                weight = math.factorial(k) * math.factorial(m - k - 1) / math.factorial(m)
                phi[i] += weight * (v(s + (i,)) - v(s))
    return phi


def small_wine():
    """The wine MLP restricted to 6 features (the others at the data mean), for brute force."""
    model, data, _ = wine()
    mean = data.mean(0)
    keep = [0, 1, 6, 9, 10, 12]

    def f(rows):
        full = mean.expand(rows.shape[0], -1).clone()
        full[:, keep] = rows
        return model(full)[:, 0]

    return f, data[:, keep]


def test_kernel_explainer_background_mean_is_the_mean_of_single_baselines():
    """shap's KernelExplainer with N background rows (every coalition, no l1) = the brute-force
    interventional Shapley values = the mean over rows of xattr.shapley_values with that row."""
    shap = need_shap()
    f, data = small_wine()
    x, bg = data[::40][:3], data[1::30][:4]
    model = lambda rows: f(rows)[:, None]  # noqa: E731
    phi_shap = shap_kernel(shap, model, bg, 0)(x, 2**6)
    phi_x = torch.stack([xattr.shapley_values(f, baselines=b[None])(x) for b in bg]).mean(0)
    close(phi_x, torch.stack([brute_shapley(f, xi, bg) for xi in x]), 1e-9)
    close(phi_shap, phi_x, 1e-9)


def test_kernel_shap_and_kernel_explainer_reach_the_exact_values():
    """13 wine features, a single baseline row: with every coalition both give the exact values;
    at 2000 samples both are near them."""
    shap = need_shap()
    model, data, _ = wine()
    x, base = data[::60], data.mean(0, keepdim=True)
    f = xattr.target(model, 0)
    exact = xattr.shapley_values(f, baselines=base)(x)
    run = shap_kernel(shap, model, base, 0)
    close(run(x, 2**13), exact, 1e-9)
    close(xattr.kernel_shap(f, n_samples=2**13, baselines=base, generator=0)(x), exact, 1e-9)
    scale = float(exact.abs().max())
    assert float((run(x, 2000) - exact).abs().max()) < 0.05 * scale
    assert float((xattr.kernel_shap(f, n_samples=2000, baselines=base, generator=0)(x) - exact).abs().max()) < 0.1 * scale


def test_kernel_explainer_default_keeps_ten_features():
    """shap >= 0.47 defaults to l1_reg='num_features(10)': of 13 features, 3 get exactly 0 even
    with every coalition enumerated; the exact values have none."""
    shap = need_shap()
    model, data, _ = wine()
    x, base = data[::60], data.mean(0, keepdim=True)
    explainer = shap.KernelExplainer(lambda a: model(torch.as_tensor(a)).detach().numpy()[:, 0], base.numpy())
    np.random.seed(0)
    default = explainer.shap_values(x.numpy(), nsamples=2**13, silent=True)
    assert ((default == 0).sum(1) == 3).all()
    assert (xattr.shapley_values(xattr.target(model, 0), baselines=base)(x) != 0).all()


@contextlib.contextmanager
def nondeterministic():
    """shap's DeepExplainer spreads a max-pool's multipliers with max_unpool2d, which torch has no
    deterministic kernel for (tests/conftest.py turns deterministic algorithms on)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def n_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
               for m in model.modules())


def test_deep_explainer_max_pool_needs_nondeterministic_torch():
    """Under torch.use_deterministic_algorithms(True) shap's DeepExplainer fails at a max-pool
    (max_unpool2d) and leaves its hooks on the model; xattr's deep_lift_shap runs (a fresh model:
    shap's leftover hooks would fire in any later backward pass of the hooked one)."""
    shap = need_shap()
    model, images = digits()
    x, bg = images[100:102], images[:4]
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        explain = shap_deep(shap, model, bg)
        assert n_hooks(model) == 0
        with pytest.raises(RuntimeError, match="deterministic"):
            explain(x)
        assert n_hooks(model) > 0
        fresh = digits()[0]
        y = fresh(x).argmax(1)
        assert xattr.deep_lift_shap(xattr.target(fresh, y), baselines=bg)(x).abs().max() > 0
        assert n_hooks(fresh) == 0
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_deep_lift_shap_equals_deep_explainer(which):
    shap = need_shap()
    if which == "mlp":
        model, data, _ = wine()
        x, bg = data[::30], data[1::11][:8]
    else:
        model, images = digits()
        x, bg = images[100:104], images[:8]
    y = model(x).argmax(1)
    ours = xattr.deep_lift_shap(xattr.target(model, y), baselines=bg)(x)
    with nondeterministic():
        theirs = shap_deep(shap, model, bg)(x)
    close(ours, theirs, 1e-9)
    # and both are complete: the sum is f(x) minus the background's mean output
    with torch.no_grad():
        gap = model(x).gather(1, y[:, None])[:, 0] - model(bg)[:, y].mean(0)
    close(ours.flatten(1).sum(1), gap, 1e-9)


def test_gradient_explainer_needs_float32():
    """shap's GradientExplainer builds float32 tensors: a float64 model fails."""
    shap = need_shap()
    model, images = digits()
    with pytest.raises(RuntimeError, match="type"):
        shap.GradientExplainer(model, images[:4]).shap_values(images[10:12], nsamples=4)


def test_gradient_shap_and_gradient_explainer_estimate_the_same_expectation():
    """Expected gradients: both estimates (200 draws) are near the expectation, computed as the
    mean over background rows of a 256-point midpoint integral of the gradient along each path."""
    shap = need_shap()
    model, images = digits(torch.float32)
    x, bg = images[100:102], images[:4]
    y = model(x).argmax(1)
    ref = torch.zeros_like(x)
    for b in bg:
        for k in range(256):
            pt = (b + (k + 0.5) / 256 * (x - b)).requires_grad_()
            (g,) = torch.autograd.grad(model(pt).gather(1, y[:, None]).sum(), pt)
            ref += g * (x - b) / (256 * len(bg))
    ours = xattr.gradient_shap(xattr.target(model, y), baselines=bg, n_samples=200, generator=0)(x)
    theirs = shap_gradient(shap, model, bg)(x, 200)
    scale = float(ref.norm())
    assert float((ours - ref).norm()) < 0.25 * scale
    assert float((theirs - ref).norm()) < 0.25 * scale
