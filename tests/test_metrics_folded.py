"""Metrics that call an attribution function on perturbed copies folded into the batch
(`sensitivity_max`), with methods whose result depends on a generator or on the whole batch.

The reference is the metric written as a Python loop of ``attr_fn`` calls, one per perturbed
copy of the batch: a seeded method is one function, so each copy gets the draws it gets alone,
phi(x)'s (NOTE: [Seeds of folded copies]). `infidelity` calls its attribution function once, on
the unfolded batch. The Captum adapter is compared with live Captum for deterministic methods.
"""

import pytest
import torch
from torch import nn

import xattr
from xattr import metrics as M

D = torch.float64
B, P, N = 4, 6, 3  # examples, features, perturbed copies
MASK = torch.tensor([0, 0, 1, 1, 2, 2])
pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(P, 8), nn.ReLU(), nn.Linear(8, 3)).to(D).eval()


MODEL = _model()
X = torch.rand(B, P, generator=torch.Generator().manual_seed(1), dtype=D)
T_ALL = torch.tensor([0, 2, 2, 1])
DIST = torch.rand(5, P, generator=torch.Generator().manual_seed(2), dtype=D)

METHODS = {  # name -> (f -> attr_fn, deterministic)
    "saliency": (lambda f: xattr.saliency(f), True),
    "integrated_gradients": (lambda f: xattr.integrated_gradients(f, n_steps=8), True),
    "feature_ablation": (lambda f: xattr.feature_ablation(f), True),
    "deep_lift_shap": (lambda f: xattr.deep_lift_shap(f, baselines=DIST), True),
    "kernel_shap_all_coalitions": (lambda f: xattr.kernel_shap(f, n_samples=20, feature_mask=MASK, generator=0), True),
    "feature_permutation": (lambda f: xattr.feature_permutation(f, generator=0), False),
    "shapley_value_sampling": (lambda f: xattr.shapley_value_sampling(f, n_samples=3, generator=0), False),
    "lime": (lambda f: xattr.lime(f, n_samples=20, feature_mask=MASK, generator=0), False),
    "kernel_shap": (lambda f: xattr.kernel_shap(f, n_samples=12, generator=0), False),
    "smoothgrad": (lambda f: xattr.smoothgrad(xattr.saliency(f), stdevs=0.1, n_samples=3, generator=1), False),
    "gradient_shap": (lambda f: xattr.gradient_shap(f, baselines=DIST, n_samples=3, generator=0), False),
    "expected_gradients": (
        lambda f: xattr.expectation(xattr.integrated_gradients(f, n_steps=4), baselines=DIST, n_samples=3, generator=0),
        False,
    ),
    "smoothgrad_of_permutation": (
        lambda f: xattr.smoothgrad(xattr.feature_permutation(f, generator=0), stdevs=0.1, n_samples=2, generator=1),
        False,
    ),
}
BATCH_WIDE = {"feature_permutation", "smoothgrad_of_permutation"}  # the batch's draws, not an example's


def _attr(name, target=T_ALL):
    return METHODS[name][0](xattr.target(MODEL, target))


def _sens(attr_fn, x, **kw):
    kw = {"perturb_radius": 0.05, "n_perturb_samples": N, "generator": 0, **kw}
    return M.sensitivity_max(attr_fn, x, **kw)


def _recorded():
    calls = []

    def perturb(x, radius, *, generator=None):
        out = M.uniform_noise(x, radius, generator=generator)
        calls.append(out)
        return out

    return perturb, calls


def _loop(attr_fn, copies, x):
    """max_s ||attr_fn(copy s of the batch) - attr_fn(x)|| / ||attr_fn(x)||, one call per copy."""
    ref = attr_fn(x).flatten(1)
    dist = torch.stack([(attr_fn(copies[:, s]).flatten(1) - ref).norm(dim=1) for s in range(copies.shape[1])])
    return dist.amax(0) / ref.norm(dim=1)


@pytest.mark.parametrize("name", METHODS)
def test_sensitivity_equals_a_loop_of_calls_over_the_copies(name):
    """Seeded methods drew other noise, coalitions, baselines or permutations for the folded
    copies than for the same copy alone: off by 0.1 (SmoothGrad) to 1.5 (LIME, gradient SHAP,
    feature permutation)."""
    attr_fn = _attr(name)
    perturb, calls = _recorded()
    got = _sens(attr_fn, X, perturb_func=perturb)
    copies = torch.stack(calls)  # (B, N, P): one call per example, its own generator
    torch.testing.assert_close(got, _loop(attr_fn, copies, X), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", METHODS)
def test_sensitivity_at_radius_zero_is_zero(name):
    """The sup over a ball of radius 0; was 0.1 (SmoothGrad) to 1.8 (feature permutation):
    the method's Monte Carlo noise."""
    got = _sens(_attr(name), X, perturb_radius=0.0)
    assert got.abs().max() < 1e-12, got


@pytest.mark.parametrize("name", METHODS)
def test_sensitivity_is_chunk_invariant_and_repeatable(name):
    attr_fn = _attr(name)
    full = _sens(attr_fn, X)
    for chunk_size in (1, B, 2 * B, 5):
        torch.testing.assert_close(_sens(attr_fn, X, chunk_size=chunk_size), full, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(_sens(attr_fn, X), full, rtol=0, atol=0)
    assert full.shape == (B,) and full.isfinite().all()


@pytest.mark.parametrize("name", [n for n in METHODS if n not in BATCH_WIDE])
def test_sensitivity_of_a_batch_prefix_is_its_prefix(name):
    """NOTE: [Explicit randomness]: example i's perturbations and method draws follow (seed, i)."""
    full = _sens(_attr(name), X)
    torch.testing.assert_close(_sens(_attr(name, T_ALL[:2]), X[:2]), full[:2], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", [n for n, (_, det) in METHODS.items() if det])
def test_deterministic_methods_give_each_example_its_own_number(name):
    """With perturbations that depend on the example alone (no generator: one call on the
    example-major copies, row i * N + s is copy s), each example alone scores what it scores in
    the batch."""

    def perturb(x, radius):
        s = torch.arange(x.shape[0], dtype=x.dtype)[:, None] % N
        return x + radius * torch.sin(1.7 * s + 13 * x)

    kw = {"perturb_func": perturb, "generator": None}
    full = _sens(_attr(name), X, **kw)
    alone = torch.cat([_sens(_attr(name, T_ALL[i : i + 1]), X[i : i + 1], **kw) for i in range(B)])
    torch.testing.assert_close(alone, full, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [None, B, 2 * B])
def test_feature_permutation_under_sensitivity_shuffles_within_each_copy(chunk_size):
    """In every call on folded copies, feature j of copy s is copy s's own column j permuted
    (never values of another copy: a7971b6), with the permutation phi(x) used."""
    calls = []  # per attr_fn call: (its input rows, the rows the model saw)

    def f(x):
        calls[-1][1].append(x.detach().clone())
        return MODEL(x)[:, 0]

    perm = xattr.feature_permutation(f, generator=3)

    def attr_fn(x):
        calls.append((x.detach().clone(), []))
        return perm(x)

    _sens(attr_fn, X, chunk_size=chunk_size)
    assert len(calls) == {None: 1, B: N + 1, 2 * B: -(-(N + 1) // 2)}[chunk_size]  # x is copy 0 of the first call
    assert torch.equal(calls[0][0][:B], X)
    shuffles = []
    for given, seen in calls:
        copies = given.reshape(-1, B, P)  # (c, B, P)
        c = copies.shape[0]
        shuffled = torch.cat(seen)[-P * c * B :].reshape(P, c, B, P)  # after f(x): copy j drops feature j
        for s in range(c):
            for j in range(P):
                col = shuffled[j, s, :, j]
                src = (col[:, None] == copies[s, None, :, j]).to(torch.long).argmax(1)
                assert torch.equal(copies[s, src, j], col), "a value from another copy"
                assert torch.equal(shuffled[j, s, :, torch.arange(P) != j], copies[s][:, torch.arange(P) != j])
                shuffles.append(src)
    shuffles = torch.stack(shuffles).reshape(N + 1, P, B)  # phi(x)'s, then each copy's
    assert torch.equal(shuffles, shuffles[:1].expand(N + 1, P, B)), "a copy shuffled otherwise than phi(x)"


@pytest.mark.parametrize("name", ["smoothgrad", "lime", "feature_permutation", "gradient_shap"])
def test_infidelity_calls_a_seeded_method_once_on_the_batch(name):
    """No folded copies reach the attribution function: the metric equals the one of its
    precomputed attributions, whatever the chunking."""
    f = xattr.target(MODEL, T_ALL)
    noise = M.gaussian_noise(0.05)
    want = M.infidelity(f, _attr(name)(X), noise, n_perturb_samples=N, generator=0)(X)
    for chunk_size in (None, B):
        got = M.infidelity(f, _attr(name), noise, n_perturb_samples=N, generator=0, chunk_size=chunk_size)(X)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# ---------------------------------------------------------------- the Captum adapter, live


def _captum_cases():
    base = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=D)
    target = torch.tensor([0, 2, 1])
    mask = torch.arange(16).view(1, 1, 4, 4) // 4
    return {
        "IntegratedGradients": dict(target=target, baselines=base, n_steps=8),
        "IntegratedGradients internal batches": dict(target=1, n_steps=8, internal_batch_size=16),
        "FeatureAblation": dict(target=target, feature_mask=mask, baselines=0.3),
        "Occlusion": dict(target=target, sliding_window_shapes=(1, 2, 2), strides=(1, 2, 2)),
        "InputXGradient": dict(target=target),
    }


@pytest.mark.parametrize("max_examples_per_batch", [None, 4, 7])
@pytest.mark.parametrize("case", list(_captum_cases()))
def test_compat_sensitivity_max_matches_captum_for_deterministic_methods(case, max_examples_per_batch):
    cm = pytest.importorskip("captum.metrics")
    ca = pytest.importorskip("captum.attr")
    from xattr.compat import captum as XC

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)).to(D).eval()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=D)
    kw = _captum_cases()[case]
    cls = case.split()[0]

    def perturb(inp, radius):  # the same copies for both, however either chunks them
        return inp + radius * torch.sin(7 * inp + 1.3)

    common = dict(perturb_func=perturb, perturb_radius=0.2, n_perturb_samples=4,
                  max_examples_per_batch=max_examples_per_batch, **kw)  # fmt: skip
    theirs = cm.sensitivity_max(getattr(ca, cls)(model).attribute, x, **common)
    ours = XC.sensitivity_max(getattr(XC, cls)(model).attribute, x, **common)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-6, atol=1e-7)
    assert (ours > 0).all()
