"""Captum's summarizers (``Summarizer``, ``ClassSummarizer`` and the stats): Captum's summaries,
a one-shot torch reference on the concatenated stream, numerical stability, clear errors."""

import pytest
import torch

import xattr.compat.captum as xc
from xattr.compat.captum import (
    MSE,
    ClassSummarizer,
    CommonStats,
    Count,
    Max,
    Mean,
    Min,
    StdDev,
    Sum,
    Summarizer,
    SummarizerSingleTensor,
    Var,
)
from xattr.compat.captum.summarizer import Stat

NAMES = ["Mean", "Var", "StdDev", "Min", "Max", "Sum", "MSE", "Count"]


def make_stats(mod, names=None):
    """Every stat (both variance orders), built from module ``mod`` (xattr's or Captum's)."""
    stats = [
        mod.Mean(), mod.Var(), mod.Var(order=1), mod.StdDev(), mod.StdDev(order=1),
        mod.Min(), mod.Max(), mod.Sum(), mod.MSE(), mod.Count(),
    ]
    return stats if names is None else [s for s in stats if type(s).__name__ in names]


def assert_same(ours, theirs, rtol=None, atol=None, check_dtype=True):
    """Summaries equal: the same structure and keys, values equal (ints exactly, tensors closely)."""
    if isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert_same(a, b, rtol, atol, check_dtype)
        return
    if theirs is None:
        assert ours is None
        return
    assert isinstance(ours, dict) and set(ours) == set(theirs), (sorted(ours), sorted(theirs))
    for key, value in theirs.items():
        if isinstance(value, torch.Tensor):
            # Captum's variances are float64 but for Var(order=k) over k or fewer observations (zeros
            # in the input's dtype); xattr's are float64 throughout.
            spread = "variance" in key or "std_dev" in key
            assert not spread or ours[key].dtype == torch.float64, key
            torch.testing.assert_close(ours[key], value, rtol=rtol, atol=atol, check_dtype=check_dtype and not spread, msg=key)
        else:
            assert ours[key] == value, key


@pytest.fixture
def captum_attr():
    pytest.importorskip("captum")
    import captum.attr

    return captum.attr


def stream(n, shape, dtype=torch.float32, seed=0, loc=0.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g, dtype=torch.float64) * 2 + loc).to(dtype) for _ in range(n)]


# --- Captum's summaries ---------------------------------------------------------------------------


def test_exports_match_captum(captum_attr):
    for name in NAMES + ["Summarizer", "SummarizerSingleTensor", "ClassSummarizer", "CommonStats", "StatValue"]:
        assert hasattr(captum_attr, name) and hasattr(xc, name), name
        assert name in xc.__all__, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 37])
def test_single_tensor_stream_equals_captum(captum_attr, dtype, n):
    ours, theirs = Summarizer(make_stats(xc)), captum_attr.Summarizer(make_stats(captum_attr))
    assert ours.summary is None and theirs.summary is None
    for x in stream(n, (3, 4), dtype):
        ours.update(x)
        theirs.update(x)
    # Same recurrence, same order of operations: equal to rounding.
    assert_same(ours.summary, theirs.summary, rtol=1e-12, atol=1e-12)
    assert ours.summary["mean"].dtype == dtype and ours.summary["count"] == n


def test_integer_stream_equals_captum(captum_attr):
    g = torch.Generator().manual_seed(1)
    xs = [torch.randint(-50, 50, (5,), generator=g) for _ in range(20)]
    ours, theirs = Summarizer(make_stats(xc)), captum_attr.Summarizer(make_stats(captum_attr))
    for x in xs:
        ours.update(x)
        theirs.update(x)
    assert_same(ours.summary, theirs.summary, rtol=1e-12, atol=1e-12)
    assert ours.summary["sum"].dtype == torch.int64 and ours.summary["mean"].dtype == torch.float64


def test_float_updates_equal_captum(captum_attr):
    ours, theirs = Summarizer(CommonStats()), captum_attr.Summarizer(captum_attr.CommonStats())
    for v in [1.0, 4.5, -2.0, 3.25]:
        ours.update(v)
        theirs.update(v)
    assert_same(ours.summary, theirs.summary, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tuple_stream_equals_captum(captum_attr, dtype):
    ours, theirs = Summarizer(make_stats(xc)), captum_attr.Summarizer(make_stats(captum_attr))
    a, b = stream(25, (2, 3), dtype, seed=1), stream(25, (4,), dtype, seed=2)
    for x, y in zip(a, b):
        ours.update((x, y))
        theirs.update((x, y))
    summary = ours.summary
    assert isinstance(summary, list) and len(summary) == 2 and summary[1]["mean"].shape == (4,)
    assert_same(summary, theirs.summary, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("names", [["StdDev"], ["Var"], ["MSE"], ["Mean", "Min"], ["Count", "Sum", "Max"]])
def test_only_requested_stats_shown(captum_attr, names):
    ours = Summarizer(make_stats(xc, names))
    theirs = captum_attr.Summarizer(make_stats(captum_attr, names))
    for x in stream(6, (3,)):
        ours.update(x)
        theirs.update(x)
    assert_same(ours.summary, theirs.summary, rtol=1e-12, atol=1e-12)


def test_common_stats_and_custom_names(captum_attr):
    assert [s.name for s in CommonStats()] == [s.name for s in captum_attr.CommonStats()]
    ours = Summarizer([Mean(name="avg"), StdDev(name="spread", order=1), Var(order=3), Min(name="lo")])
    theirs = captum_attr.Summarizer(
        [captum_attr.Mean(name="avg"), captum_attr.StdDev(name="spread", order=1), captum_attr.Var(order=3),
         captum_attr.Min(name="lo")]
    )
    for x in stream(9, (2,)):
        ours.update(x)
        theirs.update(x)
    assert set(ours.summary) == {"avg", "spread", "variance(3)", "lo"}
    assert_same(ours.summary, theirs.summary, rtol=1e-12, atol=1e-12)


def test_single_tensor_summarizer_equals_captum(captum_attr):
    from captum.attr._utils.summarizer import _reorder_stats

    stats, shown = _reorder_stats([captum_attr.StdDev(), captum_attr.Min()])
    theirs = captum_attr.SummarizerSingleTensor(stats, shown)
    ours = SummarizerSingleTensor([StdDev(), Min()])  # the stats they require are added
    for x in stream(7, (3,)):
        ours.update(x)
        theirs.update(x)
    assert_same(ours.summary, theirs.summary, rtol=1e-12, atol=1e-12)
    assert isinstance(ours.get(Var()), Var) and ours.get(Var(order=5)) is None


def labelled_batches(dtype, labels_per_batch, seed=0, shape=(3,)):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(len(labels), *shape, generator=g, dtype=torch.float64).to(dtype), labels)
            for labels in labels_per_batch]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "labels_per_batch",
    [
        [[0, 1, 0, 2], [2, 2, 1], [1], [0, 0, 0, 0, 1]],
        [["cat", "dog", "cat"], ["dog", "bird"], ["cat"]],
    ],
    ids=["int", "str"],
)
def test_class_summarizer_equals_captum(captum_attr, dtype, labels_per_batch):
    ours, theirs = ClassSummarizer(make_stats(xc)), captum_attr.ClassSummarizer(make_stats(captum_attr))
    for x, labels in labelled_batches(dtype, labels_per_batch):
        ours.update(x, labels)
        theirs.update(x, labels)
    # xattr merges each class's examples at once (Chan's formula), Captum adds them one by one.
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    assert_same(ours.summary, theirs.summary, **tol)
    assert set(ours.class_summaries) == set(theirs.class_summaries)
    for key, summary in theirs.class_summaries.items():
        assert_same(ours.class_summaries[key], summary, **tol)
    assert isinstance(ours.summaries[labels_per_batch[0][0]], Summarizer)


def test_class_summarizer_tuples_single_label_and_tensor_labels(captum_attr):
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(4, 2, 3, generator=g), torch.randn(4, 5, generator=g)) for _ in range(3)]
    labels = [torch.tensor([1, 0, 1, 1]), 7, [0]]
    ours, theirs = ClassSummarizer(CommonStats()), captum_attr.ClassSummarizer(captum_attr.CommonStats())
    for x, lab in zip(batches, labels):
        ours.update(x, lab)
        # Captum keys tensor labels by object identity (one class per example): give it a list.
        theirs.update(x, lab.tolist() if isinstance(lab, torch.Tensor) else lab)
    assert set(ours.class_summaries) == {0, 1, 7}
    assert_same(ours.summary, theirs.summary, rtol=1e-5, atol=1e-6)
    for key, summary in theirs.class_summaries.items():
        assert len(summary) == 2
        assert_same(ours.class_summaries[key], summary, rtol=1e-5, atol=1e-6)


def test_class_summarizer_loop_paths_equal_captum(captum_attr):
    """Integer inputs and a custom fold function go one example at a time, as in Captum."""
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 9, (6, 3), generator=g)
    y = torch.randn(6, 3, generator=g)
    labels = [1, 0, 1, 1, 0, 2]
    fold = lambda a, b: torch.minimum(a, b) - 1  # noqa: E731 (order matters: not a batch reduction)
    for data, ours, theirs in [
        (x, ClassSummarizer(make_stats(xc)), captum_attr.ClassSummarizer(make_stats(captum_attr))),
        (y, ClassSummarizer([Min(min_fn=fold), Mean()]),
         captum_attr.ClassSummarizer([captum_attr.Min(min_fn=fold), captum_attr.Mean()])),
    ]:
        ours.update(data, labels)
        theirs.update(data, labels)
        assert_same(ours.summary, theirs.summary, rtol=1e-12, atol=1e-12)
        for key, summary in theirs.class_summaries.items():
            assert_same(ours.class_summaries[key], summary, rtol=1e-12, atol=1e-12)


def test_class_summarizer_without_labels_equals_captum(captum_attr):
    ours, theirs = ClassSummarizer([Mean(), Count()]), captum_attr.ClassSummarizer([captum_attr.Mean(), captum_attr.Count()])
    for x in stream(3, (4, 2)):
        ours.update(x)  # the whole batch is one observation
        theirs.update(x)
    assert_same(ours.summary, theirs.summary, rtol=1e-12, atol=1e-12)
    assert ours.class_summaries == {} and ours.summary["count"] == 3


# --- a one-shot reference on the concatenated stream ----------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_summary_equals_one_shot_reference(dtype):
    xs = stream(50, (2, 3), dtype, seed=5, loc=3.0)
    summ = Summarizer(make_stats(xc))
    for x in xs:
        summ.update(x)
    s, all_ = summ.summary, torch.stack(xs).double()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    close = lambda a, b: torch.testing.assert_close(a.double(), b, **tol)  # noqa: E731
    close(s["mean"], all_.mean(0))
    close(s["variance"], all_.var(0, unbiased=False))
    close(s["sample_variance"], all_.var(0, unbiased=True))
    close(s["std_dev"], all_.std(0, unbiased=False))
    close(s["sample_std_dev"], all_.std(0, unbiased=True))
    close(s["mse"], ((all_ - all_.mean(0)) ** 2).sum(0))
    close(s["sum"], all_.sum(0))
    assert torch.equal(s["min"], torch.stack(xs).amin(0)) and torch.equal(s["max"], torch.stack(xs).amax(0))
    assert s["count"] == 50


def test_class_summaries_equal_one_shot_reference():
    g = torch.Generator().manual_seed(6)
    batches = [torch.randn(8, 5, generator=g, dtype=torch.float64) for _ in range(4)]
    labels = [torch.randint(0, 3, (8,), generator=g) for _ in range(4)]
    cs = ClassSummarizer(CommonStats() + [Count(), Sum()])
    for x, lab in zip(batches, labels):
        cs.update(x, lab)
    x, lab = torch.cat(batches), torch.cat(labels)
    for key, (summary,) in cs.class_summaries.items():
        rows = x[lab == key]
        assert summary["count"] == len(rows)
        torch.testing.assert_close(summary["mean"], rows.mean(0))
        torch.testing.assert_close(summary["sample_variance"], rows.var(0))
        torch.testing.assert_close(summary["sample_std_dev"], rows.std(0))
        torch.testing.assert_close(summary["sum"], rows.sum(0))
        assert torch.equal(summary["min"], rows.amin(0)) and torch.equal(summary["max"], rows.amax(0))
    torch.testing.assert_close(cs.summary[0]["sample_variance"], x.var(0))


# --- numerical stability ----------------------------------------------------------------------------


def test_large_mean_keeps_its_variance():
    """float32 observations around 1e4 with spread 1: Welford keeps the variance, the naive
    E[x^2] - E[x]^2 in the same dtype loses it to cancellation."""
    xs = stream(2000, (16,), torch.float32, seed=7, loc=1e4)
    all_ = torch.stack(xs)
    exact = all_.double().var(0, unbiased=True)
    summ, cs = Summarizer([Var(order=1)]), ClassSummarizer([Var(order=1)])
    sq, tot = torch.zeros(16), torch.zeros(16)
    for x in xs:
        summ.update(x)
        sq, tot = sq + x * x, tot + x
    for chunk in all_.split(100):
        cs.update(chunk, 0)
    naive = (sq / 2000 - (tot / 2000) ** 2) * 2000 / 1999
    rel = lambda v: ((v.double() - exact).abs() / exact).max().item()  # noqa: E731
    assert rel(summ.summary["sample_variance"]) < 1e-3
    assert rel(cs.class_summaries[0][0]["sample_variance"]) < 1e-3
    assert rel(naive) > 0.5


# --- behaviour and errors ---------------------------------------------------------------------------


def test_summaries_are_snapshots_and_inputs_are_not_aliased():
    summ = Summarizer([Mean(), MSE(), Min(), Sum()])
    x = torch.tensor([1.0, 2.0])
    summ.update(x)
    summ.update(torch.tensor([3.0, 0.0]))
    first = {k: v.clone() for k, v in summ.summary.items()}
    held = summ.summary
    x.fill_(-100.0)  # the caller reuses its buffer
    summ.update(torch.tensor([5.0, 5.0]))
    assert all(torch.equal(held[k], first[k]) for k in first)
    assert torch.equal(summ.summary["min"], torch.tensor([1.0, 0.0]))


def test_custom_stat_and_duplicates():
    class Range(Stat):
        def _requires(self):
            return [Min(), Max()]

        def init(self):
            self.lo, self.hi = self._get_stat(Min()), self._get_stat(Max())

        def update(self, x):
            pass

        def get(self):
            return None if self.lo.get() is None else self.hi.get() - self.lo.get()

    summ = Summarizer([Range(), Mean(), Mean(name="again")])
    for x in [torch.tensor([1.0, 5.0]), torch.tensor([4.0, -1.0])]:
        summ.update(x)
    assert set(summ.summary) == {"range", "mean"}  # equal stats are one stat, the first name kept
    assert torch.equal(summ.summary["range"], torch.tensor([3.0, 6.0]))
    assert Var(order=1) == Var(name="x", order=1) != Var() and hash(Mean()) == hash(Mean(name="m"))


def test_errors_are_clear_and_leave_the_summary_unchanged():
    summ = Summarizer([Mean(), Count()])
    summ.update(torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(4,\).*earlier updates had shape \(3,\)"):
        summ.update(torch.zeros(4))
    with pytest.raises(ValueError, match="got a tuple, but the first update was a single value"):
        summ.update((torch.zeros(3),))
    with pytest.raises(TypeError, match="tensor, a float or a tuple"):
        summ.update("1")
    assert summ.summary["count"] == 1

    pair = Summarizer([Mean()])
    pair.update((torch.zeros(2), torch.zeros(1)))
    with pytest.raises(ValueError, match="tuple of 3 elements, but the first update had 2"):
        pair.update((torch.zeros(2), torch.zeros(1), torch.zeros(1)))
    with pytest.raises(ValueError, match="got a single value, but the first update was a tuple"):
        pair.update(torch.zeros(2))
    with pytest.raises(ValueError, match=r"shape \(2,\).*shape \(1,\)"):
        pair.update((torch.zeros(2), torch.zeros(2)))

    with pytest.raises(TypeError, match="list of Stat objects"):
        Summarizer(Mean())
    with pytest.raises(TypeError, match="must be a Stat object"):
        Summarizer([Mean, Count()])


def test_class_summarizer_errors():
    cs = ClassSummarizer([Mean()])
    with pytest.raises(ValueError, match="3 labels for a batch of 4 examples"):
        cs.update(torch.zeros(4, 2), [0, 1, 0])
    with pytest.raises(ValueError, match="labels is empty"):
        cs.update(torch.zeros(4, 2), [])
    with pytest.raises(ValueError, match="batch sizes differ"):
        cs.update((torch.zeros(4, 2), torch.zeros(3, 2)), 0)
    with pytest.raises(ValueError, match="needs a batch dimension"):
        cs.update(torch.tensor(1.0), 0)
    with pytest.raises(ValueError, match="1-d"):
        cs.update(torch.zeros(4, 2), torch.zeros(2, 2, dtype=torch.long))
    cs.update(torch.zeros(4, 2), [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"shape \(3,\).*shape \(2,\)"):
        cs.update(torch.zeros(2, 3), [0, 1])
    assert set(cs.class_summaries) == {0, 1}
    assert cs.class_summaries[0][0]["mean"].shape == (2,)

    whole = ClassSummarizer([Mean()])
    whole.update(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="first update was a single value"):
        whole.update(torch.zeros(4, 2), [0, 1, 0, 1])
    assert whole.class_summaries == {}


def test_stat_outside_a_summarizer():
    with pytest.raises(RuntimeError, match="not part of a summarizer"):
        Mean()._get_stat(Count())
    assert Max().get() is None and Count().get() is None
