"""`xattr.metrics.evaluate` with several attributed inputs (image + tabular) and pass-through
arguments (a feature mask): every number equals calling the metric by hand, batch by batch,
with the same seeds, arguments and argnums."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr import metrics as M
from xattr.metrics import entries
from xattr.metrics._evaluate import derive

N = 6


class TwoInput(nn.Module):
    """An image (N, 1, 4, 4) and a row of 3 features -> 3 logits."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.tab = nn.Linear(3, 4)
        self.head = nn.Linear(2 * 16 + 4, 3)

    def forward(self, img, tab):
        h = torch.cat([torch.tanh(self.conv(img)).flatten(1), torch.tanh(self.tab(tab))], 1)
        return self.head(h)


class Masked(nn.Module):
    """Features (N, 6) with a pass-through 0/1 mask (N, 6): the masked features are not read."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x, keep):
        return self.body(x * keep)


def two_input():
    torch.manual_seed(0)
    model = TwoInput().eval()
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(N, 1, 4, 4, generator=g), torch.randn(N, 3, generator=g)


def masked():
    torch.manual_seed(0)
    model = Masked().eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N, 6, generator=g)
    keep = (torch.rand(N, 6, generator=g) > 0.3).float()
    return model, x, keep


BOTH = (0, 1)
METHODS2 = {
    "ig": lambda f: xattr.integrated_gradients(f, n_steps=8, argnums=BOTH),
    "ixg": lambda f: xattr.input_x_gradient(f, argnums=BOTH),
}


def by_hand(name, f, attr_fn, model, args, argnums, seed, mask=None):
    """One metric called directly, with the options of its default entry."""
    kw = dict(argnums=argnums)
    if name == "deletion":
        return M.deletion(f, attr_fn, n_steps=16, baselines=0.0, **kw)(*args).auc
    if name == "insertion":
        return M.insertion(f, attr_fn, n_steps=16, baselines=0.0, **kw)(*args).auc
    if name == "infidelity":
        return M.infidelity(f, attr_fn, M.subset_to_baseline(0.5), n_perturb_samples=10, normalize=True,
                            baselines=0.0, generator=seed, **kw)(*args)  # fmt: skip
    if name == "faithfulness_correlation":
        nums = argnums if isinstance(argnums, tuple) else (argnums,)
        per_example = sum(args[j][0].numel() for j in nums)
        size = max(1, int(round(0.25 * per_example)))
        return M.faithfulness_correlation(f, attr_fn, subset_size=size, n_samples=20, baselines=0.0,
                                          generator=seed, **kw)(*args)  # fmt: skip
    if name == "sparseness":
        return M.sparseness(attr_fn, *args)
    if name == "complexity":
        return M.complexity(attr_fn, *args)
    if name == "monotonicity":
        return M.monotonicity(f, attr_fn, baselines=0.0, **kw)(*args)
    if name == "sensitivity_max":
        return M.sensitivity_max(attr_fn, *args, perturb_radius=0.02, n_perturb_samples=10, generator=seed, **kw)
    if name == "local_lipschitz":
        return M.local_lipschitz_estimate(attr_fn, *args, radius=0.05, n_samples=10, generator=seed, **kw)
    if name == "relative_input_stability":
        return M.relative_input_stability(model, attr_fn, *args, radius=0.05, n_samples=10, generator=seed, **kw)
    if name == "relative_output_stability":
        return M.relative_output_stability(model, attr_fn, *args, radius=0.05, n_samples=10, generator=seed, **kw)
    if name == "relevance_mass":
        phi = attr_fn(*args)
        return M.relevance_mass_accuracy(phi[0] if isinstance(argnums, tuple) else phi, mask)
    raise KeyError(name)


def reference(model, methods, args, argnums, names, *, batch_size=None, masks=None, base=0):
    """The slow loop: per method, per batch, per metric, the metric called by hand (M, K, N)."""
    n = len(args[argnums if isinstance(argnums, int) else argnums[0]])
    with torch.no_grad():
        targets = model(*args).argmax(1)
    bs = n if batch_size is None else batch_size
    out = torch.full((len(methods), len(names), n), float("nan"), dtype=torch.float64)
    for i, make in enumerate(methods.values()):
        for b, s in enumerate(range(0, n, bs)):
            e = min(s + bs, n)
            rows = tuple(a[s:e] for a in args)
            f = xattr.target(model, targets[s:e])
            for k, name in enumerate(names):
                seed = derive(base, "metric", name, b)
                mask = None if masks is None else masks[s:e]
                value = by_hand(name, f, make(f), model, rows, argnums, seed, mask)
                out[i, k, s:e] = value.detach().double()
    return out


CHEAP = ["deletion", "insertion", "infidelity", "faithfulness_correlation", "sparseness", "complexity", "monotonicity"]
RECOMPUTING = ["sensitivity_max", "local_lipschitz", "relative_input_stability", "relative_output_stability"]


@pytest.mark.parametrize("batch_size", [None, 4])
def test_two_inputs_equal_each_metric_by_hand(batch_size):
    model, img, tab = two_input()
    names = CHEAP + RECOMPUTING
    ev = M.evaluate(model, METHODS2, img, tab, argnums=BOTH, metrics=names, batch_size=batch_size,
                    show_progress=False)  # fmt: skip
    ref = reference(model, METHODS2, (img, tab), BOTH, names, batch_size=batch_size)
    assert ev.metrics == names and ev.methods == list(METHODS2)
    assert torch.isfinite(ev.values[:, names.index("deletion")]).all()
    torch.testing.assert_close(ev.values, ref, equal_nan=True, rtol=1e-6, atol=1e-9)


def test_pass_through_mask_equals_each_metric_by_hand_and_is_used():
    model, x, keep = masked()
    methods = {"ig": lambda f: xattr.integrated_gradients(f, n_steps=8), "saliency": lambda f: xattr.saliency(f)}
    names = CHEAP + ["sensitivity_max", "relative_output_stability"]
    ev = M.evaluate(model, methods, x, keep, metrics=names, batch_size=4, show_progress=False)
    ref = reference(model, methods, (x, keep), 0, names, batch_size=4)
    torch.testing.assert_close(ev.values, ref, equal_nan=True, rtol=1e-6, atol=1e-9)
    # the mask reaches the model and the methods: without it (all ones) the numbers differ
    ones = reference(model, methods, (x, torch.ones_like(keep)), 0, names, batch_size=4)
    assert not torch.allclose(ev.values, ones, equal_nan=True)
    # the masked features get no attribution: IG's sparseness counts them as zeros
    phi = xattr.integrated_gradients(xattr.target(model, ev.targets), n_steps=8)(x, keep)
    assert (phi[keep == 0] == 0).all()


def test_localization_over_one_of_two_inputs_with_argnum():
    model, img, tab = two_input()
    masks = torch.zeros(N, 4, 4)
    masks[:, :2, :2] = 1
    metric = entries.relevance_mass_accuracy(argnum=0)
    ev = M.evaluate(model, METHODS2, img, tab, argnums=BOTH, metrics=[metric], masks=masks, show_progress=False)
    ref = reference(model, METHODS2, (img, tab), BOTH, ["relevance_mass"], masks=masks)
    torch.testing.assert_close(ev.values, ref)


def test_precomputed_tuple_attributions_equal_the_method():
    model, img, tab = two_input()
    with torch.no_grad():
        t = model(img, tab).argmax(1)
    phi = xattr.integrated_gradients(xattr.target(model, t), n_steps=8, argnums=BOTH)(img, tab)
    fixed = {"ig": tuple(p.detach() for p in phi)}
    ev = M.evaluate(model, fixed, img, tab, argnums=BOTH, metrics=CHEAP, batch_size=4, show_progress=False)
    made = M.evaluate(model, {"ig": METHODS2["ig"]}, img, tab, argnums=BOTH, metrics=CHEAP, batch_size=4,
                      show_progress=False)  # fmt: skip
    torch.testing.assert_close(ev.values, made.values, equal_nan=True)


def test_randomization_with_two_inputs_equals_the_check_by_hand():
    model, img, tab = two_input()
    ev = M.evaluate(model, {"ig": METHODS2["ig"]}, img, tab, argnums=BOTH, metrics=["randomization"],
                    show_progress=False)  # fmt: skip
    t = ev.targets
    out = M.randomization_check(model, lambda m: METHODS2["ig"](xattr.target(m, t)), (img, tab),
                                similarity=("spearman_abs",), generator=derive(0, "metric", "randomization"))
    torch.testing.assert_close(ev.values[0, 0], out.scores["spearman_abs"][-1].double())


def test_custom_entry_gets_all_arguments():
    model, x, keep = masked()
    seen = []

    def fn(f, attr_fn, xb, kb):
        seen.append((len(xb), len(kb)))
        return (attr_fn(xb, kb) * (1 - kb)).abs().sum(1)  # attributions where the mask hides features

    ev = M.evaluate(model, {"ig": lambda f: xattr.integrated_gradients(f, n_steps=4)}, x, keep,
                    metrics=[entries.custom(fn, "lower", name="hidden")], batch_size=4, show_progress=False)  # fmt: skip
    assert seen == [(4, 4), (2, 2)]
    assert (ev.values == 0).all()


@settings(max_examples=6, deadline=None)
@given(st.integers(1, N), st.permutations(range(N)))
def test_deterministic_metrics_ignore_batch_size_and_order(batch_size, perm):
    model, x, keep = masked()
    methods = {"ixg": lambda f: xattr.input_x_gradient(f)}
    names = ["deletion", "sparseness", "monotonicity"]
    whole = M.evaluate(model, methods, x, keep, metrics=names, show_progress=False)
    p = torch.tensor(perm)
    sliced = M.evaluate(model, methods, x[p], keep[p], metrics=names, batch_size=batch_size, show_progress=False)
    torch.testing.assert_close(sliced.values, whole.values[:, :, p], equal_nan=True, rtol=1e-6, atol=1e-9)


def test_errors():
    model, img, tab = two_input()
    kw = dict(show_progress=False)
    with pytest.raises(ValueError, match="argument 1 has 5 rows"):
        M.evaluate(model, METHODS2, img, tab[:5], argnums=BOTH, **kw)
    mm, x, keep = masked()
    with pytest.raises(ValueError, match="argument 1 has 4 rows"):
        M.evaluate(mm, {"s": lambda f: xattr.saliency(f)}, x, keep[:4], **kw)
    for metric, needle in [("road_morf", "road_morf"), (entries.pointing_game(), "argnum="),
                           (entries.randomization(similarity="ssim"), "randomization_ssim"),
                           (entries.relevance_rank_accuracy(argnum=2), "not among")]:  # fmt: skip
        with pytest.raises(ValueError, match=needle):
            M.evaluate(model, METHODS2, img, tab, argnums=BOTH, metrics=[metric], masks=torch.ones(N, 4, 4), **kw)
    with pytest.raises(ValueError, match="build it with evaluate's argnums"):
        M.evaluate(model, {"one": lambda f: xattr.saliency(f)}, img, tab, argnums=BOTH, **kw)
    with pytest.raises(ValueError, match="precomputed attributions of method 'p'"):
        M.evaluate(model, {"p": (torch.zeros_like(img), torch.zeros(N, 4))}, img, tab, argnums=BOTH, **kw)
    with pytest.raises(ValueError, match="argnums=2 must name"):
        M.evaluate(model, METHODS2, img, tab, argnums=2, **kw)
    with pytest.raises(ValueError, match="attributed argument 1 must be a non-empty tensor"):
        M.evaluate(mm, {"s": lambda f: xattr.saliency(f)}, x, "not a tensor", argnums=(0, 1), **kw)
    with pytest.raises(TypeError, match="needs the model's inputs"):
        M.evaluate(model, METHODS2, **kw)
