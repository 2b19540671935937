"""`xattr.metrics.evaluate` against each metric called by hand in an explicit loop; the
bootstrap intervals and paired comparisons against slow resampling loops; ranks against a
brute-force count; seeds, batch sizes, precomputed attributions, errors, the text/HTML/dict
forms and the plot."""

import html.parser
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr import metrics as M
from xattr.metrics import Evaluation, entries
from xattr.metrics._evaluate import _registry, derive

SEED = 7


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 8), nn.ReLU(), nn.Linear(8, 3)
    ).double().eval()


def images(n: int = 5) -> torch.Tensor:
    return torch.rand((n, 1, 6, 6), generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def squares(n: int = 5) -> torch.Tensor:
    m = torch.zeros(n, 6, 6, dtype=torch.bool)
    for i in range(n):
        m[i, i % 3 : i % 3 + 3, 1:4] = True
    return m


METHODS = {
    "saliency": lambda f: xattr.saliency(f),
    "ig": lambda f: xattr.integrated_gradients(f, n_steps=8),
    "smoothgrad": lambda f: xattr.smoothgrad(xattr.saliency(f), stdevs=0.1, n_samples=3, generator=0),
    "random": lambda f: lambda x: torch.randn_like(x),  # torch's global generator: evaluate seeds it
}


def by_hand(name, f, attr, x, model, mask, make, f_of, seed, run_seed):
    """Each registered metric called directly with the entry's default options."""
    subset = max(1, round(0.25 * x[0].numel()))
    calls = {
        "deletion": lambda: M.deletion(f, attr, n_steps=16)(x).auc,
        "insertion": lambda: M.insertion(f, attr, n_steps=16)(x).auc,
        "infidelity": lambda: M.infidelity(f, attr, M.subset_to_baseline(0.5), n_perturb_samples=10, normalize=True,
                                           baselines=0.0, generator=seed)(x),  # fmt: skip
        "faithfulness_correlation": lambda: M.faithfulness_correlation(f, attr, subset_size=subset, n_samples=20,
                                                                       generator=seed)(x),  # fmt: skip
        "sparseness": lambda: M.sparseness(attr, x),
        "complexity": lambda: M.complexity(attr, x),
        "sensitivity_max": lambda: M.sensitivity_max(attr, x, perturb_radius=0.02, n_perturb_samples=10,
                                                     generator=seed),  # fmt: skip
        "monotonicity": lambda: M.monotonicity(f, attr)(x),
        "monotonicity_correlation": lambda: M.monotonicity_correlation(f, attr)(x),
        "road_morf": lambda: M.road(f, attr, order="morf", generator=seed)(x).auc,
        "road_lerf": lambda: M.road(f, attr, order="lerf", generator=seed)(x).auc,
        "local_lipschitz": lambda: M.local_lipschitz_estimate(attr, x, radius=0.05, n_samples=10, generator=seed),
        "relative_input_stability": lambda: M.relative_input_stability(model, attr, x, radius=0.05, n_samples=10,
                                                                        generator=seed),  # fmt: skip
        "relative_output_stability": lambda: M.relative_output_stability(model, attr, x, radius=0.05, n_samples=10,
                                                                          generator=seed),  # fmt: skip
        "randomization": lambda: M.randomization_check(model, lambda m: make(f_of(m)), x, similarity=("spearman_abs",),
                                                       generator=run_seed).scores["spearman_abs"][-1],  # fmt: skip
        "pointing_game": lambda: M.pointing_game(attr, mask, x),
        "relevance_mass": lambda: M.relevance_mass_accuracy(attr, mask, x),
        "relevance_rank": lambda: M.relevance_rank_accuracy(attr, mask, x),
        "attribution_localization": lambda: M.attribution_localization(attr, mask, x),
    }
    return calls[name]()


def reference(model, methods, x, names, mask=None, batch_size=None, base=SEED):
    """The harness written as a slow explicit loop over methods, batches and metrics."""
    with torch.no_grad():
        targets = model(x).argmax(1)
    n = len(x)
    bs = batch_size or n
    out = torch.full((len(methods), len(names), n), math.nan, dtype=torch.float64)
    for i, (mname, make) in enumerate(methods.items()):
        for b, s in enumerate(range(0, n, bs)):
            e = min(s + bs, n)
            xb, tb = x[s:e], targets[s:e]
            f_of = lambda m, tb=tb: xattr.target(m, tb)  # noqa: E731
            f = f_of(model)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive(base, "global", "method", mname, b))
                phi = make(f)(xb).detach()
            fn = make(f)
            attr = lambda v, phi=phi, xb=xb, fn=fn: phi if v is xb else fn(v)  # noqa: E731
            for k, name in enumerate(names):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(derive(base, "global", "metric", name, b))
                    v = by_hand(name, f, attr, xb, model, None if mask is None else mask[s:e], make, f_of,
                                derive(base, "metric", name, b), derive(base, "metric", name))  # fmt: skip
                out[i, k, s:e] = v.double()
    return out


def test_every_registered_metric_equals_its_call_by_hand():
    model, x, mask = cnn(), images(4), squares(4)
    names = sorted(_registry())
    methods = {k: METHODS[k] for k in ("saliency", "smoothgrad", "random")}
    got = M.evaluate(model, methods, x, metrics=names, masks=mask, generator=SEED, show_progress=False)
    ref = reference(model, methods, x, names, mask)
    assert got.metrics == names and got.methods == list(methods)
    torch.testing.assert_close(got.values, ref, atol=1e-10, rtol=1e-9, equal_nan=True)
    assert torch.isfinite(got.values).float().mean() > 0.9


def test_batches_match_the_loop_and_deterministic_metrics_ignore_the_batch_size():
    model, x = cnn(), images(7)
    names = ["deletion", "sparseness", "infidelity"]
    methods = {k: METHODS[k] for k in ("saliency", "ig", "random")}
    whole = M.evaluate(model, methods, x, metrics=names, generator=SEED, show_progress=False)
    parts = M.evaluate(model, methods, x, metrics=names, batch_size=3, generator=SEED, show_progress=False)
    torch.testing.assert_close(parts.values, reference(model, methods, x, names, batch_size=3), atol=1e-10, rtol=1e-9)
    # deletion and sparseness of deterministic methods: the same for every batch size
    torch.testing.assert_close(parts.values[:2, :2], whole.values[:2, :2], atol=1e-12, rtol=1e-10)
    # infidelity draws per example position in its call, with one seed per batch (NOTE: [Seeds of an
    # evaluation]): the first batch has the positions and seed of the whole run, the others draw anew
    torch.testing.assert_close(parts.values[:2, 2, :3], whole.values[:2, 2, :3], atol=1e-12, rtol=1e-10)
    assert (parts.values[:2, 2, 3:] - whole.values[:2, 2, 3:]).abs().max() > 1e-6
    # so does a method drawing from the global generator: each batch its own seed, no repeats
    noise = parts.values[2, 1]
    assert len(set(noise.tolist())) == len(noise)


def test_same_seed_same_table_other_seed_other_draws_and_global_state_untouched():
    model, x = cnn(), images(5)
    methods = {k: METHODS[k] for k in ("smoothgrad", "random")}
    names = ["infidelity", "faithfulness_correlation"]
    before = torch.get_rng_state()
    params = [p.clone() for p in model.parameters()]
    a = M.evaluate(model, methods, x, metrics=names, generator=3, show_progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    b = M.evaluate(model, methods, x, metrics=names, generator=3, show_progress=False)
    c = M.evaluate(model, methods, x, metrics=names, generator=4, show_progress=False)
    assert torch.equal(a.values, b.values) and a.table() == b.table()
    assert not torch.equal(a.values, c.values)
    assert all(torch.equal(p, q) for p, q in zip(params, model.parameters())) and not model.training
    # every method is scored on the same draws: a method's numbers do not depend on the others
    alone = M.evaluate(model, {"random": METHODS["random"]}, x, metrics=names, generator=3, show_progress=False)
    torch.testing.assert_close(alone.values[0], a.values[1], atol=0, rtol=0)
    gen = M.evaluate(model, methods, x, metrics=names, generator=torch.Generator().manual_seed(0), show_progress=False)
    again = M.evaluate(model, methods, x, metrics=names, generator=torch.Generator().manual_seed(0), show_progress=False)
    assert torch.equal(gen.values, again.values)
    # generator=None: torch's global generator, unseeded (the random map draws from it)
    unseeded = M.evaluate(model, methods, x, metrics=names, generator=None, show_progress=False)
    assert not torch.equal(torch.get_rng_state(), before) and torch.isfinite(unseeded.values[:, 0]).all()


def test_precomputed_attributions_equal_the_method():
    model, x = cnn(), images(5)
    with torch.no_grad():
        t = model(x).argmax(1)
    ig = xattr.integrated_gradients(xattr.target(model, t), n_steps=8)(x).detach()
    names = ["deletion", "insertion", "faithfulness_correlation", "complexity"]
    a = M.evaluate(model, {"ig": ig}, x, metrics=names, generator=SEED, show_progress=False)
    b = M.evaluate(model, {"ig": METHODS["ig"]}, x, metrics=names, generator=SEED, show_progress=False)
    torch.testing.assert_close(a.values, b.values, atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match="recompute attributions"):
        M.evaluate(model, {"ig": ig}, x, metrics=["sensitivity_max"], show_progress=False)


def test_targets_labels_ints_and_probabilities():
    model, x = cnn(), images(5)
    labels = torch.tensor([2, 0, 1, 1, 0])
    names = ["deletion"]
    by_labels = M.evaluate(model, {"s": METHODS["saliency"]}, x, metrics=names, target="labels", labels=labels,
                           show_progress=False)  # fmt: skip
    assert torch.equal(by_labels.targets, labels)
    by_tensor = M.evaluate(model, {"s": METHODS["saliency"]}, x, metrics=names, target=labels, show_progress=False)
    torch.testing.assert_close(by_labels.values, by_tensor.values, atol=0, rtol=0)
    # attribution_statistics' words for the same choices
    by_label = M.evaluate(model, {"s": METHODS["saliency"]}, x, metrics=names, target="label", labels=labels,
                          show_progress=False)  # fmt: skip
    torch.testing.assert_close(by_label.values, by_labels.values, atol=0, rtol=0)
    predicted = M.evaluate(model, {"s": METHODS["saliency"]}, x, metrics=names, show_progress=False)
    by_prediction = M.evaluate(model, {"s": METHODS["saliency"]}, x, metrics=names, target="prediction", show_progress=False)
    assert torch.equal(by_prediction.targets, predicted.targets)
    one = M.evaluate(model, {"s": METHODS["saliency"]}, x, metrics=names, target=1, show_progress=False)
    assert torch.equal(one.targets, torch.ones(5, dtype=torch.long))
    prob = M.evaluate(model, {"s": METHODS["saliency"]}, x, metrics=names, output="probability", show_progress=False)
    f = xattr.target(lambda v: model(v).softmax(-1), prob.targets)
    torch.testing.assert_close(prob.values[0, 0], M.deletion(f, xattr.saliency(f), n_steps=16)(x).auc)
    with pytest.warns(UserWarning, match="not used"):
        M.evaluate(model, {"s": METHODS["saliency"]}, x, metrics=names, labels=labels, show_progress=False)


def test_errors_say_what_to_do():
    model, x = cnn(), images(4)
    s = {"s": METHODS["saliency"]}
    with pytest.raises(ValueError, match="unknown metric 'delete'"):
        M.evaluate(model, s, x, metrics=["delete"], show_progress=False)
    with pytest.raises(ValueError, match="needs a layer"):
        M.evaluate(model, s, x, metrics=["relative_representation_stability"], show_progress=False)
    with pytest.raises(ValueError, match="pass masks="):
        M.evaluate(model, s, x, metrics=["pointing_game"], show_progress=False)
    with pytest.raises(ValueError, match="one mask per example"):
        M.evaluate(model, s, x, metrics=["pointing_game"], masks=squares(3), show_progress=False)
    with pytest.raises(ValueError, match="shape"):
        M.evaluate(model, {"p": torch.zeros(4, 1, 5, 5)}, x, metrics=["deletion"], show_progress=False)
    with pytest.raises(ValueError, match="gave attributions of shape"):
        M.evaluate(model, {"bad": lambda f: lambda v: v[:, 0]}, x, metrics=["deletion"], show_progress=False)
    with pytest.raises(TypeError, match="entries.custom"):
        M.evaluate(model, s, x, metrics={"mine": lambda f, a, v: a(v).sum((1, 2, 3))}, show_progress=False)
    with pytest.raises(ValueError, match="one number per example"):
        bad = entries.custom(lambda f, a, v: a(v).sum(), "higher")
        M.evaluate(model, s, x, metrics={"sum": bad}, show_progress=False)
    with pytest.raises(ValueError, match="given twice"):
        M.evaluate(model, s, x, metrics=[entries.deletion(), entries.deletion()], show_progress=False)
    with pytest.raises(ValueError, match="needs labels"):
        M.evaluate(model, s, x, target="labels", show_progress=False)
    with pytest.raises(ValueError, match="labels must be"):
        M.evaluate(model, s, x, target="labels", labels=torch.zeros(3, dtype=torch.long), show_progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        M.evaluate(model, s, x, batch_size=0, show_progress=False)
    with pytest.raises(ValueError, match="direction"):
        entries.custom(lambda f, a, v: v, "up")
    with pytest.raises(ValueError, match="needs ground-truth masks"):
        entries.pointing_game()(None, torch.ones(4, 1, 6, 6), x)
    with pytest.raises(ValueError, match="order"):
        entries.road(order="up")


def test_custom_entries_are_seeded_and_the_progress_bar_counts():
    model, x = cnn(), images(4)
    noisy = entries.custom(lambda f, a, v: torch.rand(len(v), dtype=torch.float64), "higher", name="noisy")
    kw = dict(metrics=[noisy, "sparseness"], batch_size=2, generator=SEED)
    a = M.evaluate(model, {"s": METHODS["saliency"], "ig": METHODS["ig"]}, x, show_progress=False, **kw)
    b = M.evaluate(model, {"s": METHODS["saliency"], "ig": METHODS["ig"]}, x, show_progress=True, **kw)
    assert torch.equal(a.values, b.values)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive(SEED, "global", "metric", "noisy", 1))
        torch.testing.assert_close(a.values[0, 0, 2:], torch.rand(2, dtype=torch.float64))


def slow_interval(v, level, n_boot, seed):
    """One resample at a time, then the quantiles by sorting and linear interpolation."""
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(v), size=len(v))
        means.append(sum(v[j] for j in idx) / len(v))
    means.sort()

    def quantile(q):
        pos = q * (n_boot - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n_boot - 1)
        return means[lo] + (pos - lo) * (means[hi] - means[lo])

    return quantile((1 - level) / 2), quantile((1 + level) / 2)


def evaluation(values, directions=None, seed=0):
    m, k, _ = values.shape
    metrics = [f"m{j}" for j in range(k)]
    directions = directions or {name: "higher" for name in metrics}
    return Evaluation([f"a{i}" for i in range(m)], metrics, directions, values, torch.zeros(values.shape[2]), seed=seed)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(data=st.lists(st.one_of(st.floats(-5, 5), st.just(math.nan)), min_size=1, max_size=9),
       level=st.sampled_from([0.5, 0.9, 0.95]), seed=st.integers(0, 99))  # fmt: skip
def test_table_intervals_equal_a_slow_bootstrap_loop(data, level, seed):
    values = torch.tensor([[data], [[v * 2 for v in data]]], dtype=torch.float64)
    table = evaluation(values, seed=seed).table(level=level, n_boot=200)
    for name, scale in (("a0", 1), ("a1", 2)):
        finite = [scale * v for v in data if not math.isnan(v)]
        cell = table["m0"][name]
        assert cell.n == len(finite)
        if not finite:
            assert math.isnan(cell.mean) and math.isnan(cell.low)
            continue
        lo, hi = slow_interval(finite, level, 200, seed)
        assert cell.mean == pytest.approx(sum(finite) / len(finite), abs=1e-12)
        assert cell.low == pytest.approx(lo, abs=1e-12) and cell.high == pytest.approx(hi, abs=1e-12)
        assert min(finite) - 1e-12 <= cell.low <= cell.high <= max(finite) + 1e-12


@settings(max_examples=10, deadline=None, derandomize=True)
@given(a=st.lists(st.integers(-3, 3), min_size=2, max_size=8), shift=st.integers(-2, 2),
       direction=st.sampled_from(["higher", "lower"]))  # fmt: skip
def test_compare_equals_a_paired_loop(a, shift, direction):
    b = [v + shift * (j % 2) for j, v in enumerate(a)]
    values = torch.tensor([[a], [b]], dtype=torch.float64)
    ev = evaluation(values, {"m0": direction}, seed=5)
    c = ev.compare("a0", "a1", "m0", n_boot=100)
    d = [x - y for x, y in zip(a, b)]
    wins = sum((x > y) if direction == "higher" else (x < y) for x, y in zip(a, b)) / len(a)
    assert c.difference == pytest.approx(sum(d) / len(d)) and c.wins == pytest.approx(wins)
    assert c.ties == pytest.approx(sum(x == y for x, y in zip(a, b)) / len(a)) and c.n == len(a)
    assert (c.low, c.high) == pytest.approx(slow_interval(d, 0.95, 100, 5))
    back = ev.compare("a1", "a0", "m0", n_boot=100)
    assert back.difference == pytest.approx(-c.difference) and back.ties == c.ties
    assert back.wins == pytest.approx(1 - c.wins - c.ties)


def brute_ranks(means, direction):
    sign = 1 if direction == "higher" else -1
    out = []
    for m in means:
        if math.isnan(m):
            out.append(math.nan)
            continue
        others = [o for o in means if not math.isnan(o)]
        better = sum(sign * o > sign * m for o in others)
        tied = sum(o == m for o in others)  # itself included
        out.append(better + (tied + 1) / 2)
    return out


@settings(max_examples=15, deadline=None, derandomize=True)
@given(means=st.lists(st.one_of(st.integers(0, 3).map(float), st.just(math.nan)), min_size=1, max_size=7),
       direction=st.sampled_from(["higher", "lower"]))  # fmt: skip
def test_ranks_with_ties_and_directions(means, direction):
    values = torch.tensor([[[m, m]] for m in means], dtype=torch.float64)
    ev = evaluation(values, {"m0": direction})
    ranks = list(ev.ranks()["m0"].values())
    expected = brute_ranks(means, direction)
    assert all((math.isnan(r) and math.isnan(e)) or r == e for r, e in zip(ranks, expected))
    finite = [r for r in ranks if not math.isnan(r)]
    assert sum(finite) == pytest.approx(len(finite) * (len(finite) + 1) / 2)  # ties share, nothing is lost
    flipped = evaluation(values, {"m0": "lower" if direction == "higher" else "higher"}).ranks()["m0"]
    for r, q in zip(ranks, flipped.values()):
        assert (math.isnan(r) and math.isnan(q)) or r + q == len(finite) + 1


class Cells(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.inside = [], False

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        self.inside = tag in ("td", "th")

    def handle_endtag(self, tag):
        self.inside = False

    def handle_data(self, data):
        if self.inside:
            self.rows[-1].append(data)


def parse_cell(text):
    mean, lo, hi = re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", text).groups()
    return float(mean), float(lo), float(hi)


def test_markdown_html_dict_and_repr_give_back_the_table():
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(3, 2, 20, generator=gen, dtype=torch.float64)
    values[1, 0, :4] = math.nan
    ev = evaluation(values, {"m0": "higher", "m1": "lower"}, seed=11)
    table, ranks = ev.table(), ev.ranks()

    def check(rows):
        assert rows[0] == ["method", "m0 ↑", "m1 ↓"]
        for r in rows[1:]:
            for metric, text in zip(ev.metrics, r[1:]):
                c = table[metric][r[0]]
                got = parse_cell(text)
                assert got == tuple(float(f"{v:.4g}") for v in (c.mean, c.low, c.high))
                assert got == pytest.approx((c.mean, c.low, c.high), rel=1e-3)

    md = [[c.strip() for c in line.strip("|").split("|")] for line in ev.to_markdown().splitlines()]
    assert md[1] == ["---"] * 3
    check([md[0]] + md[2:])
    parser = Cells()
    parser.feed(ev.to_html())
    check(parser.rows)
    d = ev.to_dict()
    for metric in ev.metrics:
        assert d["metrics"][metric]["direction"] == ev.directions[metric]
        for i, name in enumerate(ev.methods):
            cell = d["metrics"][metric]["methods"][name]
            assert (cell["mean"], cell["low"], cell["high"], cell["n"]) == tuple(table[metric][name])
            assert cell["rank"] == ranks[metric][name]
            np.testing.assert_array_equal(cell["values"], values[i, ev.metrics.index(metric)].numpy())
    assert table["m0"]["a1"].n == 16
    text = repr(ev)
    assert "3 methods x 2 metrics on 20 examples" in text and f"{table['m1']['a2'].mean:.3g}" in text


def test_plot_has_one_panel_per_metric(tmp_path):
    from matplotlib.figure import Figure

    values = torch.randn(3, 5, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ev = evaluation(values, {f"m{j}": "higher" if j % 2 else "lower" for j in range(5)})
    path = tmp_path / "sub" / "eval.png"
    fig = ev.plot(path=path, ncols=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 5 and path.exists()
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == ev.metrics
    assert "lower is better" in fig.axes[0].get_title() and "higher is better" in fig.axes[1].get_title()
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ev.methods


def test_defaults_are_the_documented_five_and_directions_are_right():
    assert list(entries.defaults()) == ["deletion", "insertion", "faithfulness_correlation", "infidelity", "sparseness"]
    lower = {"deletion", "infidelity", "complexity", "sensitivity_max", "road_morf", "local_lipschitz",
             "relative_input_stability", "relative_output_stability", "randomization"}  # fmt: skip
    for name, make in _registry().items():
        assert make().direction == ("lower" if name in lower else "higher"), name
    model, x = cnn(), images(3)
    ev = M.evaluate(model, {"s": METHODS["saliency"]}, x, show_progress=False)
    assert ev.metrics == list(entries.defaults()) and torch.isfinite(ev.values).all()
