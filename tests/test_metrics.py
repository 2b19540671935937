"""xattr.metrics: closed forms, explicit-loop definitions, invariances, Captum, known effects."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import xattr
from xattr import metrics as M

D = torch.float64


def mlp(seed: int = 0, d: int = 6, n_out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, n_out)).to(D).eval()


def recording(perturb):
    """A perturbation function that keeps what it returned, one entry per call."""
    calls = []

    def fn(x, *rest, generator=None):
        out = perturb(x, *rest, generator=generator)
        calls.append(out)
        return out

    fn.calls = calls
    return fn


# ---------------------------------------------------------------- infidelity


def test_infidelity_closed_form_on_a_quadratic_model():
    """f(x) = x'Ax/2, phi = Ax, I ~ N(0, s^2): f(x) - f(x - I) - I.phi = -I'AI/2, so infidelity is
    E[(I'AI)^2]/4 = s^4/4 (tr(A)^2 + 2 tr(A^2)) whatever x. Tolerance: 4 standard errors of the
    Monte Carlo mean over B * n samples, from the exact variance (cumulants of the quadratic form)."""
    torch.manual_seed(1)
    d, s, b, n = 5, 0.3, 8, 4000
    r = torch.randn(d, d, dtype=D)
    a = (r + r.T) / 2 + torch.eye(d, dtype=D)
    f = lambda x: 0.5 * torch.einsum("bi,ij,bj->b", x, a, x)  # noqa: E731
    x = torch.randn(b, d, dtype=D)
    got = M.infidelity(f, xattr.saliency(f, abs=False), M.gaussian_noise(s), n_perturb_samples=n, generator=0)(x)
    tr = [torch.trace(torch.linalg.matrix_power(a, k)).item() for k in range(1, 5)]
    k1, k2, k3, k4 = tr[0], 2 * tr[1], 8 * tr[2], 48 * tr[3]  # cumulants of Q = z'Az, z ~ N(0, I)
    m2 = k2 + k1**2
    m4 = k4 + 4 * k3 * k1 + 3 * k2**2 + 6 * k2 * k1**2 + k1**4
    exact = s**4 / 4 * (tr[0] ** 2 + 2 * tr[1])
    assert exact == pytest.approx(s**4 / 4 * m2)
    se = s**4 / 4 * math.sqrt((m4 - m2**2) / (b * n))
    assert abs(got.mean().item() - exact) < 4 * se, (got.mean().item(), exact, se)


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_equals_its_definition_as_a_loop(normalize):
    model = mlp()
    f = xattr.target(model, 1)
    x = torch.randn(3, 6, dtype=D)
    rec = recording(M.gaussian_noise(0.2))
    attr = xattr.integrated_gradients(f, n_steps=8)(x)
    got = M.infidelity(f, attr, rec, n_perturb_samples=5, normalize=normalize, generator=3)(x)
    assert len(rec.calls) == 3  # one call per example with its own generator
    want = []
    for i, (size, pert) in enumerate(rec.calls):
        iphi = torch.stack([(size[j] * attr[i]).sum() for j in range(5)])
        df = torch.stack([f(x[i : i + 1])[0] - f(pert[j : j + 1])[0] for j in range(5)])
        beta = (iphi * df).sum() / (iphi * iphi).sum() if normalize else 1.0
        want.append(((beta * iphi - df) ** 2).mean())
    torch.testing.assert_close(got, torch.stack(want).detach())


def test_infidelity_two_inputs_baselines_and_a_pass_through_argument():
    torch.manual_seed(0)
    w1, w2 = torch.randn(4, dtype=D), torch.randn(3, dtype=D)
    f = lambda x1, x2, scale: torch.tanh(x1 @ w1) * scale + (x2 @ w2) ** 2  # noqa: E731
    x1, x2, scale = torch.randn(2, 4, dtype=D), torch.randn(2, 3, dtype=D), torch.tensor([1.0, 2.0], dtype=D)
    base = (torch.zeros(2, 4, dtype=D), torch.ones(1, 3, dtype=D))
    subset = M.subset_to_baseline(0.5)
    rec = recording(lambda x, b, generator=None: subset(x, b, generator=generator)[1])  # the perturbed input only
    attr_fn = xattr.input_x_gradient(f, argnums=(0, 1))
    got = M.infidelity(f, attr_fn, rec, n_perturb_samples=4, baselines=base, argnums=(0, 1), generator=1)(x1, x2, scale)
    attr = attr_fn(x1, x2, scale)
    want = []
    for i, (p1, p2) in enumerate(rec.calls):  # perturbed only: I = x - perturbed
        vals = []
        for j in range(4):
            iphi = ((x1[i] - p1[j]) * attr[0][i]).sum() + ((x2[i] - p2[j]) * attr[1][i]).sum()
            df = f(x1[i : i + 1], x2[i : i + 1], scale[i : i + 1]) - f(p1[j : j + 1], p2[j : j + 1], scale[i : i + 1])
            vals.append((iphi - df[0]) ** 2)
        want.append(torch.stack(vals).mean())
    torch.testing.assert_close(got, torch.stack(want))
    assert ((rec.calls[0][1] == 1) | (rec.calls[0][1] == x2[0])).all()  # baselines reached perturb_func


def test_subset_to_baseline_gives_exact_global_attributions_zero_infidelity():
    """f = w.x + c: replacing a subset S of elements by the baseline b changes f by exactly
    sum_S w_j (x_j - b_j), so the global attributions w * (x - b) (= IG = input x gradient = SHAP
    here) predict every change when I is the 0/1 mask of S, and the gradient w does not (NOTE:
    [Removal masks for global attributions]). Also where an element equals its baseline."""
    torch.manual_seed(0)
    w, x = torch.randn(8, dtype=D), torch.randn(4, 8, dtype=D)
    f = lambda x: x @ w + 0.5  # noqa: E731
    subset = M.subset_to_baseline(0.5)
    metric = lambda attr, base: M.infidelity(f, attr, subset, baselines=base, n_perturb_samples=16, generator=0)(x)  # noqa: E731
    assert metric(x * w, 0.0).max() < 1e-10
    assert metric(xattr.integrated_gradients(f), 0.0).max() < 1e-10
    assert (metric(w.expand_as(x), 0.0) > 1e-3).all()
    base = torch.randn(1, 8, dtype=D)
    x[:, 0] = base[0, 0]  # x == baseline: I is still the indicator, phi is 0 there
    assert metric((x - base) * w, base).max() < 1e-10
    assert (metric(w.expand_as(x), base) > 1e-3).all()
    rec = recording(subset)
    M.infidelity(f, x * w, rec, baselines=base, n_perturb_samples=16, generator=0)(x)
    size, pert = rec.calls[0]  # example 0's 16 copies
    assert set(size.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(pert, torch.where(size == 1, base, x[:1]))


def test_infidelity_batch_and_chunk_invariance():
    model = mlp(2)
    f = xattr.target(model, 0)
    x = torch.randn(5, 6, dtype=D)
    metric = lambda **kw: M.infidelity(f, xattr.saliency(f), M.gaussian_noise(0.1), n_perturb_samples=7, generator=4, **kw)  # noqa: E731
    full = metric()(x)
    torch.testing.assert_close(metric()(x[:2]), full[:2])  # seeds go by position in the batch: prefixes agree
    torch.testing.assert_close(metric(chunk_size=10)(x), full)
    torch.testing.assert_close(metric(memory_budget=1)(x), full)


def test_infidelity_evaluates_x_and_all_copies_in_one_no_grad_call():
    # NOTE: [x as copy 0] in _common.py: x is the first block of the one call
    model = mlp(3)
    rows = []

    def f(x):
        rows.append((x.clone(), torch.is_grad_enabled()))
        return model(x)[:, 0]

    x = torch.randn(4, 6, dtype=D)
    got = M.infidelity(f, torch.ones_like(x), M.gaussian_noise(0.1), n_perturb_samples=50, generator=0)(x)
    assert [(r.shape[0], grad) for r, grad in rows] == [(204, False)] and torch.equal(rows[0][0][:4], x)
    rows.clear()
    chunked = M.infidelity(f, torch.ones_like(x), M.gaussian_noise(0.1), n_perturb_samples=50, generator=0,
                           chunk_size=40)(x)
    assert [r.shape[0] for r, _ in rows] == [40] * 5 + [4] and torch.equal(rows[0][0][:4], x)
    torch.testing.assert_close(chunked, got)


def test_infidelity_errors():
    f = xattr.target(mlp(), 0)
    x = torch.randn(2, 6, dtype=D)
    with pytest.raises(ValueError, match="generator"):
        M.infidelity(f, torch.ones_like(x), lambda x: x + 1, generator=0)(x)
    with pytest.raises(ValueError, match="shape"):
        M.infidelity(f, torch.ones(2, 5, dtype=D), M.gaussian_noise(0.1))(x)
    with pytest.raises(ValueError, match="one number per"):
        M.infidelity(mlp(), torch.ones_like(x), M.gaussian_noise(0.1))(x)
    with pytest.raises(ValueError, match="rows"):
        M.infidelity(f, torch.ones_like(x), lambda x: x[:1])(x)


# ---------------------------------------------------------------- sensitivity_max


def test_sensitivity_max_equals_its_definition_as_a_loop():
    f = xattr.target(mlp(4), 2)
    x = torch.randn(3, 6, dtype=D)
    sal = xattr.saliency(f)
    rec = recording(M.uniform_noise)
    got = M.sensitivity_max(sal, x, perturb_func=rec, perturb_radius=0.3, n_perturb_samples=6, generator=0)
    want = []
    for i, pert in enumerate(rec.calls):
        assert (pert - x[i]).abs().max() <= 0.3
        ref = sal(x[i : i + 1])
        want.append(max((sal(pert[j : j + 1]) - ref).norm() for j in range(6)) / ref.norm())
    torch.testing.assert_close(got, torch.stack(want))


def test_sensitivity_max_calls_the_attribution_once_on_x_and_all_copies():
    # NOTE: [x as copy 0] in _worst_case.py: x is the first block of the copies' call
    f = xattr.target(mlp(5), 0)
    seen = []
    occ = xattr.feature_ablation(f)

    def attr_fn(x):
        seen.append(x.clone())
        return occ(x)

    x = torch.randn(4, 6, dtype=D)
    out = M.sensitivity_max(attr_fn, x, n_perturb_samples=10, generator=0)
    assert [r.shape[0] for r in seen] == [44] and out.shape == (4,) and (out > 0).all()
    assert torch.equal(seen[0][:4], x) and not torch.equal(seen[0][4:8], x)
    seen.clear()
    chunked = M.sensitivity_max(attr_fn, x, n_perturb_samples=10, generator=0, chunk_size=12)
    assert [r.shape[0] for r in seen] == [12] * 3 + [8]
    assert torch.equal(seen[0][:4], x)
    torch.testing.assert_close(chunked, out)
    torch.testing.assert_close(M.sensitivity_max(attr_fn, x[:2], n_perturb_samples=10, generator=0), out[:2])


def test_sensitivity_max_with_a_per_example_target_and_zero_attributions():
    model = mlp(6)
    x = torch.randn(4, 6, dtype=D)
    t = torch.tensor([0, 2, 1, 0])
    got = M.sensitivity_max(xattr.saliency(xattr.target(model, t)), x, n_perturb_samples=3, generator=0)
    for i in range(4):
        one = M.sensitivity_max(xattr.saliency(xattr.target(model, int(t[i]))), x, n_perturb_samples=3, generator=0)
        torch.testing.assert_close(got[i], one[i])
    zero = M.sensitivity_max(lambda x: x * 0, x, n_perturb_samples=3)
    assert (zero == 0).all()  # ||phi(x)|| = 0 counts as 1
    inf = M.sensitivity_max(xattr.saliency(xattr.target(model, 0)), x, norm_ord=float("inf"), generator=0)
    assert inf.shape == (4,)


# ---------------------------------------------------------------- Captum


def _captum():
    return pytest.importorskip("captum.metrics")


def _fixed_noise(x, scale=0.1, seed=123):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(x.shape, generator=g, dtype=x.dtype) * scale


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_same_numbers_as_captum(normalize):
    cm = _captum()
    from captum.attr import IntegratedGradients

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)).to(D).eval()
    x = torch.rand(3, 1, 4, 4, dtype=D)
    attr = IntegratedGradients(model).attribute(x, target=2, n_steps=10)

    def pair(x):  # deterministic given the example-major copies both libraries pass
        noise = _fixed_noise(x)
        return noise, x - noise

    theirs = cm.infidelity(model, pair, x, attr, target=2, n_perturb_samples=6, normalize=normalize)
    ours = M.infidelity(xattr.target(model, 2), attr, pair, n_perturb_samples=6, normalize=normalize)(x)
    torch.testing.assert_close(ours, theirs)
    as_captum = M.infidelity(xattr.target(model, 2), (attr,), pair, n_perturb_samples=6, normalize=normalize)(x)
    torch.testing.assert_close(as_captum, theirs)  # Captum's 1-tuple of attributions is accepted

    def to_base(x, baselines):  # perturbed only; Captum derives I = x - perturbed with its decorator
        return x + (baselines - x) * (_fixed_noise(x, seed=7) > 0)

    base = torch.full_like(x, 0.5)
    captum_fn = cm.infidelity_perturb_func_decorator(multiply_by_inputs=False)(to_base)
    theirs = cm.infidelity(model, captum_fn, x, attr, baselines=base, target=2, n_perturb_samples=4, normalize=normalize)
    ours = M.infidelity(xattr.target(model, 2), attr, to_base, baselines=base, n_perturb_samples=4, normalize=normalize)(x)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_sensitivity_max_same_numbers_as_captum():
    cm = _captum()
    from captum.attr import Saliency

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)).to(D).eval()
    x = torch.rand(3, 1, 4, 4, dtype=D)

    def perturb(x, radius):
        return x + radius * (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype) - 1)

    theirs = cm.sensitivity_max(Saliency(model).attribute, x, perturb_func=perturb, perturb_radius=0.05,
                                n_perturb_samples=7, target=1)  # fmt: skip
    ours = M.sensitivity_max(xattr.saliency(xattr.target(model, 1)), x, perturb_func=perturb, perturb_radius=0.05,
                             n_perturb_samples=7)  # fmt: skip
    torch.testing.assert_close(ours, theirs)


# ---------------------------------------------------------------- deletion / insertion


def test_deletion_and_insertion_on_a_linear_model_with_exact_attributions():
    torch.manual_seed(0)
    w = torch.rand(8, dtype=D) + 0.1
    f = lambda x: x @ w  # noqa: E731
    x = torch.rand(2, 8, dtype=D) + 0.1
    attr = xattr.input_x_gradient(f)(x)  # w * x: exact contributions with a zero baseline
    dele = M.deletion(f, attr)(x)
    ins = M.insertion(f, xattr.input_x_gradient(f))(x)
    top = torch.sort(attr, dim=1, descending=True).values
    removed = torch.cat([torch.zeros(2, 1, dtype=D), top.cumsum(1)], dim=1)
    torch.testing.assert_close(dele.fractions, torch.arange(9, dtype=D) / 8)
    torch.testing.assert_close(dele.scores, f(x)[:, None] - removed)
    torch.testing.assert_close(ins.scores, removed)
    assert (dele.scores.diff(dim=1) < 0).all() and (ins.scores.diff(dim=1) > 0).all()
    trap = lambda s: ((s[:, 1:] + s[:, :-1]) / 2).sum(1) / 8  # noqa: E731
    torch.testing.assert_close(dele.auc, trap(dele.scores))
    torch.testing.assert_close(ins.auc, trap(ins.scores))
    worse = M.deletion(f, -attr)(x)  # the reverse order deletes least first: a larger area
    assert (worse.auc > dele.auc).all() and (M.insertion(f, -attr)(x).auc < ins.auc).all()


def test_curves_with_a_feature_mask_steps_baselines_and_chunks():
    torch.manual_seed(0)
    w = torch.rand(1, 4, 4, dtype=D)
    f = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731
    x = torch.rand(3, 1, 4, 4, dtype=D)
    mask = M.patch_mask((1, 4, 4), (1, 2, 2))
    assert mask.shape == (1, 1, 4, 4) and mask.unique().tolist() == [0, 1, 2, 3]
    assert mask[0, 0, 0].tolist() == [0, 0, 1, 1] and mask[0, 0, 3].tolist() == [2, 2, 3, 3]
    base = torch.full_like(x, 0.25)
    attr = (x - base) * w
    c = M.deletion(f, attr, feature_mask=mask, baselines=base, n_steps=2)(x)
    torch.testing.assert_close(c.fractions, torch.tensor([0.0, 0.5, 1.0], dtype=D))
    patch = torch.stack([attr[:, 0, :2, :2], attr[:, 0, :2, 2:], attr[:, 0, 2:, :2], attr[:, 0, 2:, 2:]], 1).flatten(2).sum(2)
    top = torch.sort(patch, dim=1, descending=True).values
    torch.testing.assert_close(c.scores[:, 1], f(x) - top[:, :2].sum(1))
    torch.testing.assert_close(c.scores[:, 2], f(base))
    torch.testing.assert_close(M.deletion(f, attr, feature_mask=mask, baselines=base, n_steps=2, chunk_size=3)(x).scores, c.scores)
    torch.testing.assert_close(M.deletion(f, attr[1:], feature_mask=mask, baselines=base[1:], n_steps=2)(x[1:]).auc, c.auc[1:])


def _curve_by_definition(f, x, attr, mask, n_steps, insert):
    """One example's curve as a loop: its own ids (as they occur), ranked by summed attribution
    (ties: lower id first), the top floor(k F / S) of them removed (restored) at step k."""
    ids = mask.unique()  # sorted
    order = ids[torch.sort(torch.stack([attr[mask == j].sum() for j in ids]), descending=True, stable=True).indices]
    n = len(ids)
    steps = n if n_steps is None else min(n_steps, n)
    counts = [k * n // steps for k in range(steps + 1)]
    zero = torch.zeros_like(x)
    rows = [torch.where(torch.isin(mask, order[:c]), x, zero) if insert else torch.where(torch.isin(mask, order[:c]), zero, x)
            for c in counts]  # fmt: skip
    scores = torch.stack([f(r[None])[0] for r in rows])
    fractions = torch.tensor(counts, dtype=D) / n
    return fractions, scores, ((scores[1:] + scores[:-1]) / 2 * fractions.diff()).sum()


@pytest.mark.parametrize("insert", [False, True])
@pytest.mark.parametrize("n_steps", [None, 2, 6])
def test_curves_with_per_example_masks_are_each_examples_own(insert, n_steps):
    """Per-example masks with 4, 8 and 3 features (numbered from 1, and with gaps): each example's
    curve is its definition with its own features, and what it gets alone; the batch sweeps the
    most steps and repeats a shorter curve's last point (NOTE: [Each example's own features])."""
    torch.manual_seed(0)
    w = torch.randn(8, dtype=D)
    f = lambda x: torch.tanh(x @ w)  # noqa: E731
    x, attr = torch.rand(3, 8, dtype=D), torch.randn(3, 8, dtype=D)
    mask = torch.tensor([[1, 1, 2, 2, 3, 3, 4, 4], [0, 1, 2, 3, 4, 5, 6, 7], [5, 5, 5, 0, 0, 9, 9, 9]])
    curve = M.insertion if insert else M.deletion
    batched = curve(f, attr, feature_mask=mask, n_steps=n_steps)(x)
    assert batched.fractions.shape == batched.scores.shape == (3, (8 if n_steps is None else n_steps) + 1)
    for i in range(3):
        fractions, scores, auc = _curve_by_definition(f, x[i], attr[i], mask[i], n_steps, insert)
        k = len(scores)
        torch.testing.assert_close(batched.fractions[i, :k], fractions)
        torch.testing.assert_close(batched.scores[i, :k], scores)
        torch.testing.assert_close(batched.fractions[i, k:], torch.ones(batched.scores.shape[1] - k, dtype=D))
        torch.testing.assert_close(batched.scores[i, k:], scores[-1].expand(batched.scores.shape[1] - k))
        torch.testing.assert_close(batched.auc[i], auc)
        alone = curve(f, attr[i : i + 1], feature_mask=mask[i : i + 1], n_steps=n_steps)(x[i : i + 1])
        torch.testing.assert_close(alone.fractions, fractions)
        torch.testing.assert_close(alone.scores[0], scores)
        torch.testing.assert_close(alone.auc[0], auc)


def test_curves_ids_from_one_equal_ids_from_zero():
    """A mask with ids 1..k is the same k features as ids 0..k-1 (id 0 unused is no phantom step),
    shared or per example."""
    torch.manual_seed(1)
    w = torch.randn(8, dtype=D)
    f = lambda x: torch.tanh(x @ w)  # noqa: E731
    x, attr = torch.rand(2, 8, dtype=D), torch.randn(2, 8, dtype=D)
    shared = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    per_example = torch.stack([shared, torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])])
    for mask in (shared, per_example):
        for curve in (M.deletion, M.insertion):
            for n_steps in (None, 3):
                zero = curve(f, attr, feature_mask=mask, n_steps=n_steps)(x)
                one = curve(f, attr, feature_mask=mask + 1, n_steps=n_steps)(x)
                for a, b in zip(one, zero):
                    torch.testing.assert_close(a, b)
    c = M.deletion(f, attr, feature_mask=shared + 1)(x)
    torch.testing.assert_close(c.fractions, torch.arange(5, dtype=D) / 4)


# ---------------------------------------------------------------- sparseness / complexity


def test_sparseness_and_complexity_known_values():
    p = 10
    one_hot = torch.zeros(2, p, dtype=D)
    one_hot[:, 3] = -2.0
    uniform = torch.full((2, p), 0.7, dtype=D)
    torch.testing.assert_close(M.sparseness(one_hot), torch.full((2,), 1 - 1 / p, dtype=D))
    torch.testing.assert_close(M.sparseness(uniform), torch.zeros(2, dtype=D))
    torch.testing.assert_close(M.complexity(one_hot), torch.zeros(2, dtype=D))
    torch.testing.assert_close(M.complexity(uniform), torch.full((2,), math.log(p), dtype=D))
    assert M.sparseness(torch.zeros(1, p)).isnan().all() and M.complexity(torch.zeros(1, p)).isnan().all()
    a = torch.randn(3, 2, 5, dtype=D)  # Gini from the mean absolute difference; tuples are concatenated
    m = torch.cat([a.flatten(1), a[:, 0]], 1).abs()
    gini = (m[:, :, None] - m[:, None, :]).abs().sum((1, 2)) / (2 * m.shape[1] * m.sum(1))
    torch.testing.assert_close(M.sparseness((a, a[:, 0])), gini)
    q = m / m.sum(1, keepdim=True)
    torch.testing.assert_close(M.complexity((a, a[:, 0])), -(q * q.log()).sum(1))
    f = xattr.target(mlp(), 0)
    x = torch.randn(2, 6, dtype=D)
    torch.testing.assert_close(M.sparseness(xattr.saliency(f), x), M.sparseness(xattr.saliency(f)(x)))


# ---------------------------------------------------------------- similarity and randomization


def test_similarity_measures():
    scipy_stats = pytest.importorskip("scipy.stats")
    a = torch.tensor([[0.0, 0.0, 1.0, 3.0, 2.0, -1.0], [1.0, 2.0, 2.0, 0.0, 5.0, 4.0]], dtype=D)
    b = torch.tensor([[0.0, 1.0, 1.0, 2.0, 5.0, 3.0], [4.0, 4.0, 1.0, 0.0, 0.0, 9.0]], dtype=D)
    want = [scipy_stats.spearmanr(a[i], b[i]).statistic for i in range(2)]
    torch.testing.assert_close(M.spearman(a, b), torch.tensor(want, dtype=D))
    want_abs = [scipy_stats.spearmanr(a[i].abs(), b[i].abs()).statistic for i in range(2)]
    torch.testing.assert_close(M.spearman(a, b, abs=True), torch.tensor(want_abs, dtype=D))
    torch.testing.assert_close(M.top_k_intersection(a, b, k=2), torch.tensor([0.5, 0.5], dtype=D))
    img = torch.rand(3, 2, 12, 12, dtype=D)
    torch.testing.assert_close(M.ssim(img, img), torch.ones(3, dtype=D))
    torch.testing.assert_close(M.ssim(img, 3 * img + 1), torch.ones(3, dtype=D))  # min-max scaled
    assert (M.ssim(img, torch.rand(3, 2, 12, 12, dtype=D)) < 0.5).all()


def _structured_images(b: int = 6) -> torch.Tensor:
    """Dark images with one bright square each: most pixels are exactly zero."""
    x = torch.zeros(b, 1, 8, 8, dtype=D)
    for i in range(b):
        r, c = (i * 3) % 5, (i * 2) % 5
        x[i, 0, r : r + 3, c : c + 3] = 1.0 + 0.1 * i
    return x


def test_randomization_gradient_x_input_stays_similar_saliency_does_not():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    model = model.to(D).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _structured_images()
    rng = torch.random.get_rng_state()
    def ssim_abs(a, b):
        return M.ssim(a.abs(), b.abs())

    sims = ("spearman", "spearman_abs", "ssim", "topk", ssim_abs)
    sal = M.randomization_check(model, lambda m: xattr.saliency(xattr.target(m, 1)), x, similarity=sims, generator=0)
    ixg = M.randomization_check(model, lambda m: xattr.input_x_gradient(xattr.target(m, 1)), x, similarity=sims, generator=0)
    assert torch.equal(torch.random.get_rng_state(), rng)  # seeded re-initialisation leaves the global RNG alone
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's model is unchanged
    assert sal.layers == ["5", "3", "1"] and sal.scores["spearman_abs"].shape == (3, 6)
    full_sal, full_ixg = sal.scores["spearman_abs"][-1], ixg.scores["spearman_abs"][-1]  # every layer randomized
    assert full_ixg.mean() > 0.75 and full_sal.mean().abs() < 0.3, (full_ixg, full_sal)
    assert ixg.scores["ssim_abs"][-1].mean() > 0.4 and sal.scores["ssim_abs"][-1].mean() < 0.3
    assert ixg.scores["topk"][-1].mean() > 0.6 and sal.scores["topk"][-1].mean() < 0.3
    again = M.randomization_check(model, lambda m: xattr.saliency(xattr.target(m, 1)), x, similarity=sims, generator=0)
    assert all(torch.equal(again.scores[k], sal.scores[k]) for k in sal.scores)


def test_randomization_independent_mode_builder_and_layers():
    torch.manual_seed(0)
    state = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(D).state_dict()

    def build():
        m = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(D).eval()
        m.load_state_dict(state)
        return m

    x = torch.randn(4, 6, dtype=D)
    method = lambda m: xattr.saliency(xattr.target(m, 0), abs=False)  # noqa: E731
    out = M.randomization_check(build, method, x, mode="independent", layers=["0", "2"], similarity=("spearman", "topk"),
                                top_k=3, generator=1, keep=True)  # fmt: skip
    assert out.layers == ["2", "0"] and set(out.scores) == {"spearman", "topk"} and len(out.attributions) == 2
    casc = M.randomization_check(build(), method, x, layers=["0", "2"], similarity=("spearman",), generator=1, keep=True)
    torch.testing.assert_close(casc.attributions[0], out.attributions[0])  # same seed per layer: step 1 agrees
    with pytest.raises(ValueError, match="ssim"):
        M.randomization_check(build, method, x, similarity=("ssim",), generator=0)
    with pytest.raises(ValueError, match="mode"):
        M.randomization_check(build, method, x, mode="bottom-up")


def test_sensitivity_of_a_seeded_stochastic_attribution_is_chunk_and_batch_invariant():
    """NOTE: [Seeds of folded copies]: every perturbed copy draws SmoothGrad's noise of phi(x)
    (the example's own seeds), not by the row's place in a chunk (chunk_size=B and the default
    chunking once gave different noise; tests/test_metrics_folded.py has the loop reference)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    x = torch.rand(4, 6, dtype=torch.float64)
    f = xattr.target(model, torch.tensor([0, 2, 2, 1]))
    sg = xattr.smoothgrad(xattr.saliency(f), stdevs=0.1, n_samples=4, generator=1)
    full = M.sensitivity_max(sg, x, perturb_radius=0.05, n_perturb_samples=5, generator=0)
    for chunk_size in (4, 8, 12):
        torch.testing.assert_close(M.sensitivity_max(sg, x, perturb_radius=0.05, n_perturb_samples=5, generator=0,
                                                     chunk_size=chunk_size), full)
    f2 = xattr.target(model, torch.tensor([0, 2]))
    sg2 = xattr.smoothgrad(xattr.saliency(f2), stdevs=0.1, n_samples=4, generator=1)
    torch.testing.assert_close(M.sensitivity_max(sg2, x[:2], perturb_radius=0.05, n_perturb_samples=5, generator=0), full[:2])


def test_the_perturbation_functions_take_an_int_seed_as_every_stochastic_function_does():
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    seeded = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    assert torch.equal(xattr.metrics.uniform_noise(x, 0.1, generator=7), xattr.metrics.uniform_noise(x, 0.1, generator=seeded(7)))
    noise = xattr.metrics.gaussian_noise(0.1)
    assert torch.equal(noise(x, generator=7)[0], noise(x, generator=seeded(7))[0])
    subset = xattr.metrics.subset_to_baseline(0.5)
    assert torch.equal(subset(x, torch.zeros_like(x), generator=7)[0], subset(x, torch.zeros_like(x), generator=seeded(7))[0])
    assert not torch.equal(noise(x, generator=7)[0], noise(x, generator=8)[0])
    with pytest.raises(TypeError, match="generator must be an int seed"):
        xattr.metrics.uniform_noise(x, generator=1.5)


@pytest.mark.parametrize("metric", ["spearman", "top_k_intersection"])
def test_similarities_refuse_maps_of_other_examples_or_sizes(metric):
    """A batch of one against five broadcast silently (every row scored against example 0)."""
    a = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    fn = getattr(M, metric)
    for other in (a[:1], a[:2], a[:, :, :4]):
        with pytest.raises(ValueError, match="same examples and the same number of values"):
            fn(a, other)
    assert fn(a, a).shape == (5,)
