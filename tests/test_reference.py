"""Slow, obviously-correct references that the fast, vectorized paths must match.

Gradients by central finite differences; integrated gradients by a Python loop over steps and
examples with torch.autograd.grad; quadrature convergence; the noise tunnel's reduce math by a
loop over the very inputs it evaluated; gradient SHAP by its definition and statistically;
path_integral's Profile by a loop; many outputs at once against a loop over targets.
Everything runs in float64 on smooth models unless the test says otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xattr
from xattr.testing import assert_trees_close, check_completeness, check_grads_match_finite_differences
from xattr.testing.strategies import ModelSpec, random_tensor

QUADRATURES = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
SPECS = {
    "mlp": ModelSpec("mlp", seed=3, in_shape=(5,), n_out=4, activation="softplus", hidden=(7, 5), softmax=True),
    "cnn": ModelSpec("cnn", seed=4, in_shape=(2, 4, 4), n_out=4, activation="tanh", hidden=(3,)),
}
B = 3


def setup(kind: str, n_out: int | None = None):
    spec = SPECS[kind] if n_out is None else ModelSpec(**{**SPECS[kind].__dict__, "n_out": n_out})
    return spec.build(), random_tensor((B,) + spec.in_shape, seed=5)


def reference_rule(method: str, n: int) -> tuple[list[float], list[float]]:
    """Quadrature nodes and weights written out from their textbook definitions."""
    if method == "riemann_left":
        return [i / n for i in range(n)], [1 / n] * n
    if method == "riemann_right":
        return [(i + 1) / n for i in range(n)], [1 / n] * n
    if method == "riemann_middle":
        return [(i + 0.5) / n for i in range(n)], [1 / n] * n
    if method == "riemann_trapezoid":
        return [i / (n - 1) for i in range(n)], [(0.5 if i in (0, n - 1) else 1.0) / (n - 1) for i in range(n)]
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return [(t + 1) / 2 for t in nodes], [w / 2 for w in weights]


def grad_one(model, k: int, point: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Output k of the model at one example, and its gradient, by plain autograd."""
    p = point.detach().clone().requires_grad_(True)
    y = model(p.unsqueeze(0))[0, k]
    (g,) = torch.autograd.grad(y, p)
    return y.item(), g


def ig_loop(model, k, x, base, method, n):
    alphas, weights = reference_rule(method, n)
    rows = []
    for i in range(x.shape[0]):
        total = torch.zeros_like(x[i])
        for a, w in zip(alphas, weights):
            total += w * grad_one(model, k, base[i] + a * (x[i] - base[i]))[1]
        rows.append(total * (x[i] - base[i]))
    return torch.stack(rows)


def finite_differences(model, k, x, eps=1e-6):
    flat = x.reshape(x.shape[0], -1)
    cols = []
    for d in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[:, d] = eps
        with torch.no_grad():
            cols.append((model((flat + e).reshape(x.shape))[:, k] - model((flat - e).reshape(x.shape))[:, k]) / (2 * eps))
    return torch.stack(cols, 1).reshape(x.shape)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_gradient_methods_match_finite_differences(kind):
    model, x = setup(kind)
    fd = finite_differences(model, 2, x)
    f = xattr.target(model, 2)
    assert_trees_close(xattr.saliency(f, abs=False)(x), fd, atol=1e-8, rtol=1e-6, what="saliency vs finite differences")
    assert_trees_close(xattr.saliency(f)(x), fd.abs(), atol=1e-8, rtol=1e-6, what="|saliency| vs finite differences")
    assert_trees_close(xattr.input_x_gradient(f)(x), x * fd, atol=1e-8, rtol=1e-6, what="input x gradient")
    check_grads_match_finite_differences(xattr.target(model, xattr.outputs([0, 3])), x)


@pytest.mark.parametrize("method", QUADRATURES)
def test_quadrature_rules_match_their_definitions(method):
    for n in (2, 3, 8):
        alphas, weights = xattr.quadrature(method, n)
        ref_a, ref_w = reference_rule(method, n)
        np.testing.assert_allclose(alphas, ref_a, atol=1e-15)
        np.testing.assert_allclose(weights, ref_w, atol=1e-15)
        assert abs(weights.sum() - 1.0) < 1e-14, "every rule integrates a constant exactly"


@pytest.mark.parametrize("method", QUADRATURES)
@pytest.mark.parametrize("kind", sorted(SPECS))
def test_ig_matches_explicit_loop(method, kind):
    model, x = setup(kind)
    base = 0.3 * random_tensor(x.shape, seed=6)
    expected = ig_loop(model, 1, x, base, method, 6)
    f = xattr.target(model, 1)
    for chunk_size in (None, 2 * B):
        got = xattr.integrated_gradients(f, baselines=base, n_steps=6, method=method, chunk_size=chunk_size)(x)
        assert_trees_close(got, expected, atol=1e-12, rtol=1e-9, what=f"IG {method} chunk_size={chunk_size} vs loop")


def test_riemann_rules_converge_to_gausslegendre():
    model, x = setup("mlp")
    f = xattr.target(model, 0)
    truth = xattr.integrated_gradients(f, n_steps=64, method="gausslegendre")(x)
    assert_trees_close(xattr.integrated_gradients(f, n_steps=32)(x), truth, atol=1e-12, rtol=1e-10, what="GL 32 vs GL 64")
    order = {"riemann_left": 1, "riemann_right": 1, "riemann_middle": 2, "riemann_trapezoid": 2}
    for method, p in order.items():
        err = {n: (xattr.integrated_gradients(f, n_steps=n, method=method)(x) - truth).abs().max().item() for n in (64, 256)}
        # error ~ C / n^p: quadrupling n divides it by about 4^p; the rule is also accurate in absolute terms
        assert err[64] / err[256] > 0.75 * 4**p, (method, err)
        assert err[256] < (5e-3 if p == 1 else 5e-5) * truth.abs().max().item(), (method, err)


def _spy(attr_fn, seen: list):
    def spied(x, **kwargs):
        seen.append(x.detach().clone())
        return attr_fn(x, **kwargs)

    return spied


@pytest.mark.parametrize("chunk_size", [None, 2 * B])
def test_smooth_reduce_matches_a_loop_over_the_noisy_inputs(chunk_size):
    model, x = setup("mlp")
    sal = xattr.saliency(xattr.target(model, 0), abs=False)
    results = {}
    for reduce in ("mean", "sq_mean", "var"):
        seen = []
        results[reduce] = xattr.smooth(_spy(sal, seen), stdevs=0.3, n_samples=5, reduce=reduce, generator=0, chunk_size=chunk_size)(x)
        rows = torch.cat(seen)  # copy-major: row r is a noisy copy of example r % B
        assert rows.shape == (5 * B,) + x.shape[1:]
        per_copy = [[grad_one(model, 0, rows[s * B + i])[1] for i in range(B)] for s in range(5)]
        mean = torch.stack([sum(per_copy[s][i] for s in range(5)) / 5 for i in range(B)])
        sq = torch.stack([sum(per_copy[s][i] ** 2 for s in range(5)) / 5 for i in range(B)])
        expected = {"mean": mean, "sq_mean": sq, "var": sq - mean**2}[reduce]
        assert_trees_close(results[reduce], expected, atol=1e-12, rtol=1e-9, what=f"smooth reduce={reduce} vs loop")
    assert (results["var"] >= -1e-12).all()


def test_smooth_with_zero_noise_reduces_to_its_argument():
    model, x = setup("cnn")
    ig = xattr.integrated_gradients(xattr.target(model, 3), n_steps=8)
    a = ig(x)
    assert_trees_close(xattr.smoothgrad(ig, stdevs=0.0, n_samples=3, generator=1)(x), a, what="mean")
    assert_trees_close(xattr.smoothgrad_sq(ig, stdevs=0.0, n_samples=3, generator=1)(x), a * a, what="sq_mean")
    assert_trees_close(xattr.vargrad(ig, stdevs=0.0, n_samples=3, generator=1)(x), torch.zeros_like(a), atol=1e-15, what="var")


def test_smooth_noise_statistics_and_example_major_draws():
    model, x = setup("mlp")
    sal = xattr.saliency(xattr.target(model, 0))
    seen_full, seen_part = [], []
    xattr.smoothgrad(_spy(sal, seen_full), stdevs=0.5, n_samples=400, generator=3)(x)
    xattr.smoothgrad(_spy(sal, seen_part), stdevs=0.5, n_samples=400, generator=3)(x[:2])
    noise = torch.cat(seen_full).reshape((400, B) + x.shape[1:]) - x
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 0.5) < 0.03  # 6000 draws: ~4 sigma
    part = torch.cat(seen_part).reshape((400, 2) + x.shape[1:]) - x[:2]
    assert torch.equal(part, noise[:, :2]), "example i must get the same noise in a batch of any size"


class PointSpy(torch.nn.Module):
    """Records the (folded) rows it is called on, as plain lists (the calls happen inside vjp)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, []

    def forward(self, x):
        self.rows.append(x.tolist())
        return self.model(x)


def test_gradient_shap_matches_its_definition():
    model, x = setup("mlp")
    base = 0.2 * random_tensor((1,) + x.shape[1:], seed=8)
    spy = PointSpy(model)
    got = xattr.gradient_shap(xattr.target(spy, 1), baselines=base, n_samples=6, stdevs=0.0, generator=4, chunk_size=2 * B)(x)
    points = torch.tensor([r for call in spy.rows for r in call], dtype=x.dtype).reshape((6, B) + x.shape[1:])
    alphas = (points - base) / (x - base)  # each point is b + alpha (x - b) with one alpha per row
    assert torch.allclose(alphas, alphas[..., :1].expand_as(alphas), atol=1e-9)
    assert ((alphas >= 0) & (alphas < 1)).all()
    expected = torch.stack(
        [sum(grad_one(model, 1, points[s, i])[1] for s in range(6)) / 6 * (x[i] - base[0]) for i in range(B)]
    )
    assert_trees_close(got, expected, atol=1e-12, rtol=1e-9, what="gradient_shap vs its definition")


def test_gradient_shap_is_integrated_gradients_in_expectation():
    """With one baseline and no noise, E_alpha~U(0,1)[(x-b) grad f(b + alpha (x-b))] is IG.

    Tolerance: 5 Monte Carlo standard errors per feature, the standard deviation of the
    integrand over alpha computed by quadrature (fixed seed, so the test is deterministic).
    """
    model, x = setup("mlp")
    f = xattr.target(model, 0)
    n = 4000
    got = xattr.gradient_shap(f, baselines=torch.zeros((1,) + x.shape[1:], dtype=x.dtype), n_samples=n, generator=0)(x)
    mean = xattr.integrated_gradients(f, n_steps=512, method="riemann_middle")(x)
    _, prof = xattr.path_integral(f, n_steps=512, method="riemann_middle", return_profile=True)(x)
    h = prof.grads * x  # the integrand (n_steps, B, D)
    sd = ((prof.weights[:, None, None] * h**2).sum(0) - mean**2).clamp_min(0).sqrt()
    assert ((got - mean).abs() <= 5 * sd / n**0.5 + 1e-12).all(), ((got - mean).abs() / (sd / n**0.5)).max()


@pytest.mark.parametrize("chunk_size", [None, B])
@pytest.mark.parametrize("targets", [1, xattr.outputs([0, 2])], ids=["one", "many"])
def test_path_integral_profile_matches_a_loop(targets, chunk_size):
    model, x = setup("cnn")
    base = 0.1 * random_tensor(x.shape, seed=2)
    ks = [1] if isinstance(targets, int) else [0, 2]
    fn = xattr.path_integral(
        xattr.target(model, targets), baselines=base, n_steps=5, method="riemann_trapezoid", chunk_size=chunk_size, return_profile=True
    )
    result, prof = fn(x)
    alphas, weights = reference_rule("riemann_trapezoid", 5)
    np.testing.assert_allclose(prof.alphas.numpy(), alphas, atol=1e-15)
    np.testing.assert_allclose(prof.weights.numpy(), weights, atol=1e-15)
    outs = torch.empty(5, B, len(ks), dtype=x.dtype)
    grads = torch.empty((5, B, len(ks)) + x.shape[1:], dtype=x.dtype)
    for s, a in enumerate(alphas):
        for i in range(B):
            for j, k in enumerate(ks):
                outs[s, i, j], grads[s, i, j] = grad_one(model, k, base[i] + a * (x[i] - base[i]))
    if isinstance(targets, int):
        outs, grads = outs[..., 0], grads[:, :, 0]
    assert_trees_close(prof.outputs, outs, atol=1e-12, rtol=1e-10, what="profile outputs")
    assert_trees_close(prof.grads, grads, atol=1e-12, rtol=1e-10, what="profile grads")
    v = (x - base) if isinstance(targets, int) else (x - base).unsqueeze(1)
    expected = (torch.as_tensor(weights, dtype=x.dtype).reshape(-1, *[1] * (grads.ndim - 1)) * grads).sum(0) * v
    assert_trees_close(result, expected, atol=1e-12, rtol=1e-10, what="integral vs weighted sum of the profile")


def test_custom_path_matches_a_loop_and_is_complete():
    """A curved path gamma(a) = b + a^2 (x - b) with velocity 2 a (x - b): completeness holds on any path."""
    model, x = setup("mlp")
    f = xattr.target(model, 3)

    def curved(x, b, alphas):
        a = alphas.reshape((-1,) + (1,) * x.ndim)
        return b + a**2 * (x - b), 2 * a * (x - b)

    got = xattr.path_integral(f, path=curved, n_steps=32)(x)
    alphas, weights = reference_rule("gausslegendre", 32)
    expected = torch.stack(
        [sum(w * grad_one(model, 3, a**2 * x[i])[1] * 2 * a * x[i] for a, w in zip(alphas, weights)) for i in range(B)]
    )
    assert_trees_close(got, expected, atol=1e-12, rtol=1e-9, what="curved path vs loop")
    check_completeness(f, xattr.path_integral(f, path=curved, n_steps=32), x, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_all_ten_classes_at_once_match_a_loop_over_targets(kind):
    model, x = setup(kind, n_out=10)
    with torch.no_grad():
        logits = model(x)
    loop_grads = torch.stack([torch.stack([grad_one(model, k, x[i])[1] for k in range(10)]) for i in range(B)])
    for spelling in (xattr.outputs(range(10)), xattr.outputs(None), xattr.outputs(torch.arange(10))):
        f = xattr.target(model, spelling)
        out, g = xattr.value_and_grad(f)(x)
        assert_trees_close(out, logits, atol=1e-14, what=f"outputs {spelling}")
        assert_trees_close(g, loop_grads, atol=1e-12, rtol=1e-10, what=f"gradients {spelling}")
        ig = xattr.integrated_gradients(f, n_steps=6, chunk_size=4)(x)
        ig_loop_all = torch.stack([xattr.integrated_gradients(xattr.target(model, k), n_steps=6)(x) for k in range(10)], 1)
        assert_trees_close(ig, ig_loop_all, atol=1e-12, rtol=1e-10, what=f"IG {spelling}")
    per_example = torch.tensor([[9, 0], [3, 3], [1, 7]])  # (B, K): different outputs per example
    g = xattr.grad(xattr.target(model, xattr.outputs(per_example)))(x)
    assert_trees_close(g, loop_grads[torch.arange(B)[:, None], per_example], atol=1e-12, rtol=1e-10, what="(B, K) outputs")
