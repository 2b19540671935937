"""attribution_statistics: streaming moments against one-shot torch and numpy loops, any batch
split, merge algebra, intervals, top-k counts with ties, grouping and targets, errors."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr import AttributionStatistics

D = torch.float64


def mlp(seed=0, d_in=6, n_out=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 8), nn.Tanh(), nn.Linear(8, n_out)).to(D).eval()


def inputs(seed, n, d_in=6):
    return torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed), dtype=D)


def one_shot(attr, groups):
    """The reference: per group, torch's mean/var over the concatenated attributions."""
    out = {}
    for g in sorted(set(groups.tolist())):
        a = attr[groups == g].double()
        out[g] = dict(n=len(a), mean=a.mean(0), var=a.var(0) if len(a) > 1 else torch.full_like(a[0], torch.nan),
                      mean_abs=a.abs().mean(0), var_abs=a.abs().var(0) if len(a) > 1 else torch.full_like(a[0], torch.nan))  # fmt: skip
    return out


def top_k_loop(attr, groups, k):
    """How often each feature is among an example's k largest |a| (ties: the lower index), by loop."""
    flat = attr.reshape(len(attr), -1).tolist()
    counts = {}
    for row, g in zip(flat, groups.tolist()):
        best = sorted(range(len(row)), key=lambda j: (-abs(row[j]), j))[:k]
        c = counts.setdefault(g, [0] * len(row))
        for j in best:
            c[j] += 1
    return {g: torch.tensor(c).reshape(attr.shape[1:]) for g, c in counts.items()}


def assert_matches(stats, attr, groups, k):
    ref, top = one_shot(attr, groups), top_k_loop(attr, groups, k)
    assert stats.groups == tuple(ref)
    for g, r in ref.items():
        i = stats.index(g)
        assert int(stats.count[i]) == r["n"]
        torch.testing.assert_close(stats.mean[i], r["mean"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(stats.mean_abs[i], r["mean_abs"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(stats.variance[i], r["var"], rtol=1e-10, atol=1e-12, equal_nan=True)
        torch.testing.assert_close(stats.variance_abs[i], r["var_abs"], rtol=1e-10, atol=1e-12, equal_nan=True)
        assert torch.equal(stats.top_k_count[i], top[g])


def split(n, cuts):
    points = sorted({c % (n + 1) for c in cuts} | {0, n})
    return list(zip(points[:-1], points[1:]))


@settings(max_examples=10, deadline=None)
@given(
    labels=st.lists(st.integers(0, 2), min_size=1, max_size=24),
    cuts=st.lists(st.integers(0, 30), max_size=5),
    k=st.integers(1, 7),
)
def test_streaming_equals_one_shot_for_any_split(labels, cuts, k):
    model = mlp(1)
    y = torch.tensor(labels)
    x = inputs(2, len(y))
    batches = [(x[a:b], y[a:b]) for a, b in split(len(y), cuts)]  # empty batches are skipped
    stats = xattr.attribution_statistics(xattr.input_x_gradient, model, batches, top_k=k)
    attr = xattr.input_x_gradient(xattr.target(model, y))(x)
    assert_matches(stats, attr, y, min(k, 6))
    assert stats.top_k == min(k, 6) and stats.n == len(y)


def test_tensor_batches_equal_dataloader():
    model = mlp(3)
    x, y = inputs(4, 37), torch.arange(37) % 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    a = xattr.attribution_statistics(xattr.saliency, model, x, labels=y, batch_size=5, top_k=2)
    b = xattr.attribution_statistics(xattr.saliency, model, loader, top_k=2)
    for f in ("count", "mean", "m2", "mean_abs", "m2_abs", "top_k_count"):
        torch.testing.assert_close(getattr(a, f), getattr(b, f), rtol=1e-12, atol=1e-12)


def test_large_offset_does_not_cancel():
    """Mean 1e8, spread ~1: the textbook E[a^2] - E[a]^2 loses every digit; Chan's update does not."""
    rng = np.random.default_rng(0)
    a = 1e8 + rng.standard_normal((200, 3))
    stats = None
    for s in range(0, 200, 7):
        part = AttributionStatistics.from_attributions(torch.from_numpy(a[s : s + 7]))
        stats = part if stats is None else stats.merge(part)
    np.testing.assert_allclose(stats.variance[0].numpy(), a.var(0, ddof=1), rtol=1e-6)
    np.testing.assert_allclose(stats.mean[0].numpy(), a.mean(0), rtol=1e-15)


@settings(max_examples=10, deadline=None)
@given(
    groups=st.lists(st.integers(0, 3), min_size=3, max_size=30),
    cuts=st.lists(st.integers(1, 29), min_size=2, max_size=2),
    seed=st.integers(0, 10),
)
def test_merge_is_one_pass_over_the_union(groups, cuts, seed):
    g = torch.tensor(groups)
    a = torch.randn(len(g), 2, 3, generator=torch.Generator().manual_seed(seed), dtype=D) * 3 + 1
    i, j = sorted(c % len(g) for c in cuts)
    parts = [AttributionStatistics.from_attributions(a[s:e], g[s:e], top_k=4) for s, e in [(0, i), (i, j), (j, len(g))] if e > s]
    whole = AttributionStatistics.from_attributions(a, g, top_k=4)
    assert_matches(whole, a, g, 4)
    orders = [parts, parts[::-1], parts[1:] + parts[:1]]
    for order in orders:
        left = order[0]
        for p in order[1:]:
            left = left.merge(p)
        right = order[-1]
        for p in reversed(order[:-1]):
            right = p.merge(right)
        for merged in (left, right):
            assert merged.groups == whole.groups
            for f in ("count", "top_k_count"):
                assert torch.equal(getattr(merged, f), getattr(whole, f))
            for f in ("mean", "m2", "mean_abs", "m2_abs"):
                torch.testing.assert_close(getattr(merged, f), getattr(whole, f), rtol=1e-12, atol=1e-12)


def test_intervals_against_numpy_loop():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((50, 4)) * np.array([0.1, 1.0, 2.0, 5.0])
    groups = torch.from_numpy(rng.integers(0, 3, 50))
    stats = AttributionStatistics.from_attributions(torch.from_numpy(a[:20]), groups[:20]).merge(
        AttributionStatistics.from_attributions(torch.from_numpy(a[20:]), groups[20:])
    )
    lo, hi = stats.importance_interval(0.95)
    lo90, hi90 = stats.importance_interval(0.9)
    for j in range(4):
        mags = [abs(a[i, j]) for i in range(50)]
        mean = sum(mags) / 50
        sd = (sum((m - mean) ** 2 for m in mags) / 49) ** 0.5
        se = sd / 50**0.5
        assert stats.importance[j] == pytest.approx(mean, rel=1e-12)
        assert stats.importance_se[j] == pytest.approx(se, rel=1e-10)
        assert lo[j] == pytest.approx(mean - 1.959963984540054 * se, rel=1e-10)
        assert hi[j] == pytest.approx(mean + 1.959963984540054 * se, rel=1e-10)
        assert hi90[j] - lo90[j] == pytest.approx(2 * 1.6448536269514722 * se, rel=1e-10)


def test_top_k_ties_break_by_index():
    a = torch.tensor([[1.0, -1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, 3.0, -3.0, 3.0]])
    stats = AttributionStatistics.from_attributions(a, top_k=2)
    assert stats.top_k_count[0].tolist() == [2, 3, 1, 0]  # rows pick (0, 1), (0, 1), (1, 2)
    torch.testing.assert_close(stats.top_k_frequency[0], torch.tensor([2, 3, 1, 0], dtype=D) / 3)
    ints = torch.randint(-2, 3, (40, 3, 2), generator=torch.Generator().manual_seed(0)).double()
    g = torch.arange(40) % 2
    assert_matches(AttributionStatistics.from_attributions(ints, g, top_k=3), ints, g, 3)


def test_grouping_and_targets():
    model = mlp(7)
    x, y = inputs(8, 30), torch.arange(30) % 3
    pred = model(x).argmax(1)
    ig = lambda f: xattr.integrated_gradients(f, n_steps=8)  # noqa: E731
    cases = [("label", None, y, y), ("prediction", None, pred, pred), ("prediction", "label", pred, y),
             ("label", "prediction", y, pred), (None, None, torch.zeros(30, dtype=torch.long), y)]  # fmt: skip
    for by, target, groups, explained in cases:
        stats = xattr.attribution_statistics(ig, model, x, labels=y, by=by, target=target, batch_size=7, top_k=3)
        attr = ig(xattr.target(model, explained))(x)
        assert_matches(stats if by is not None else _keyed(stats), attr, groups, 3)
    # metrics.evaluate's words for the same choices
    words = xattr.attribution_statistics(ig, model, x, labels=y, by="labels", target="predicted", batch_size=7, top_k=3)
    same = xattr.attribution_statistics(ig, model, x, labels=y, by="label", target="prediction", batch_size=7, top_k=3)
    assert words.groups == same.groups
    torch.testing.assert_close(words.mean, same.mean, atol=0, rtol=0)
    # by=None without labels explains the prediction
    stats = xattr.attribution_statistics(ig, model, x, by=None)
    assert stats.groups == ("all",)
    torch.testing.assert_close(stats.mean[0], ig(xattr.target(model, pred))(x).mean(0))


def _keyed(stats):
    """by=None's group "all" renamed 0, for the reference keyed by integers."""
    return AttributionStatistics((0,), *(getattr(stats, f) for f in ("count", "mean", "m2", "mean_abs", "m2_abs", "top_k_count")),
                                 stats.top_k, stats.by)  # fmt: skip


def test_images_variance_of_one_and_summary():
    a = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    stats = AttributionStatistics.from_attributions(a, torch.tensor([0, 0, 1, 1, 2]), top_k=3)
    assert stats.mean.shape == (3, 1, 4, 4) and stats.feature_shape == (1, 4, 4)
    assert torch.isnan(stats.variance[2]).all() and torch.isfinite(stats.variance[:2]).all()
    text = stats.summary(n_features=2)
    assert "5 examples" in text and "group 2: n=1" in text and len(text.splitlines()) == 2 + 2 + 3
    assert stats.mean.device.type == "cpu" and stats.mean.dtype == D


@pytest.mark.parametrize("training", [False, True])
def test_model_and_inputs_unchanged(training):
    model = mlp(2).train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = inputs(3, 9), torch.arange(9) % 3
    x0, y0 = x.clone(), y.clone()
    xattr.attribution_statistics(xattr.saliency, model, x, labels=y, by="prediction", batch_size=4, show_progress=True)
    assert torch.equal(x, x0) and torch.equal(y, y0) and x.grad is None and not x.requires_grad
    assert all(m.training == training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_errors():
    model, x, y = mlp(), inputs(0, 6), torch.arange(6) % 3
    run = xattr.attribution_statistics
    with pytest.raises(ValueError, match="by must be"):
        run(xattr.saliency, model, x, labels=y, by="class")
    with pytest.raises(ValueError, match="target must be"):
        run(xattr.saliency, model, x, labels=y, target="both")
    with pytest.raises(ValueError, match="one label per example"):
        run(xattr.saliency, model, x, labels=y[:5])
    with pytest.raises(ValueError, match="one label per example"):
        run(xattr.saliency, model, [(x, y[:4])])
    with pytest.raises(ValueError, match="no examples"):
        run(xattr.saliency, model, x[:0], labels=y[:0])
    with pytest.raises(ValueError, match="no examples"):
        run(xattr.saliency, model, [])
    with pytest.raises(ValueError, match="needs labels"):
        run(xattr.saliency, model, x)
    with pytest.raises(TypeError, match="labels= goes with a tensor"):
        run(xattr.saliency, model, [(x, y)], labels=y)
    with pytest.raises(TypeError, match="integer class indices"):
        run(xattr.saliency, model, x, labels=y.double())
    with pytest.raises(ValueError, match="top_k"):
        run(xattr.saliency, model, x, labels=y, top_k=0)
    with pytest.raises(ValueError, match="batch_size"):
        run(xattr.saliency, model, x, labels=y, batch_size=0)
    with pytest.raises(TypeError, match="each batch"):
        run(xattr.saliency, model, [{"x": x}])
    with pytest.raises(ValueError, match="n_classes"):
        run(xattr.saliency, lambda t: t.sum(1), x, by="prediction")
    with pytest.raises(ValueError, match="finite"):
        AttributionStatistics.from_attributions(torch.tensor([[1.0, float("nan")]]))
    s1 = AttributionStatistics.from_attributions(torch.ones(2, 3), top_k=1)
    with pytest.raises(ValueError, match="feature shapes"):
        s1.merge(AttributionStatistics.from_attributions(torch.ones(2, 4), top_k=1))
    with pytest.raises(ValueError, match="top_k"):
        s1.merge(AttributionStatistics.from_attributions(torch.ones(2, 3), top_k=2))
    with pytest.raises(ValueError, match="grouped by"):
        s1.merge(AttributionStatistics.from_attributions(torch.ones(2, 3), top_k=1, by=None))
    with pytest.raises(ValueError, match="level"):
        s1.importance_interval(1.5)
    with pytest.raises(KeyError):
        s1.index(3)
