"""The curves `xattr.metrics.evaluate` keeps for its curve metrics (NOTE: [Curves of an
evaluation]): against the metrics' own curves called by hand in a loop over batches; the values
against the trapezoid rule (or the last point) of the stored curves; per-example fractions and
padded batches; the mean curves and bands against slow loops (hypothesis); the dict, HTML and
plot forms."""

import base64
import json
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
from xattr.metrics._evaluate import derive
from xattr.metrics._evaluation_curves import CurveSet

SEED = 3


def cnn(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 8), nn.ReLU(), nn.Linear(8, 3)
    ).to(dtype).eval()


def images(n: int = 5, dtype=torch.float64) -> torch.Tensor:
    return torch.rand((n, 1, 6, 6), generator=torch.Generator().manual_seed(1), dtype=dtype)


METHODS = {"saliency": lambda f: xattr.saliency(f), "ig": lambda f: xattr.integrated_gradients(f, n_steps=8)}
CURVED = ["deletion", "insertion", "road_morf", "randomization"]


def by_hand(model, x, batch_size):
    """Each curve metric called by hand on each batch, with evaluate's seeds: name -> method ->
    list of (x (S,) or (B, S), y (B, S), value (B,)) per batch."""
    with torch.no_grad():
        targets = model(x).argmax(1)
    out = {name: {m: [] for m in METHODS} for name in CURVED}
    for mname, make in METHODS.items():
        for b, s in enumerate(range(0, len(x), batch_size)):
            xb, tb = x[s : s + batch_size], targets[s : s + batch_size]
            f_of = lambda m, tb=tb: xattr.target(m, tb)  # noqa: E731
            f = f_of(model)
            for name in CURVED:
                if name == "randomization":
                    r = M.randomization_check(model, lambda m: make(f_of(m)), xb, similarity=("spearman_abs",),
                                              generator=derive(SEED, "metric", name))  # fmt: skip
                    steps = r.scores["spearman_abs"]
                    out[name][mname].append((torch.arange(1.0, len(steps) + 1), steps.T, steps[-1]))
                    continue
                if name == "road_morf":
                    c = M.road(f, make(f), order="morf", generator=derive(SEED, "metric", name, b))(xb)
                else:
                    c = getattr(M, name)(f, make(f), n_steps=16)(xb)
                out[name][mname].append((c.fractions, c.scores, c.auc))
    return out


@pytest.fixture(scope="module")
def run():
    model, x = cnn(), images(5)
    ev = M.evaluate(model, METHODS, x, metrics=CURVED + ["sparseness"], batch_size=2, generator=SEED,
                    show_progress=False)  # fmt: skip
    return ev, by_hand(model, x, 2)


def test_curves_are_each_metrics_curves_by_hand_and_values_their_rule(run):
    ev, ref = run
    assert ev.curve_metrics == CURVED
    for name in CURVED:
        curves = ev.curves(name)
        assert list(curves) == list(METHODS)
        for mname, c in curves.items():
            parts = ref[name][mname]
            want_y = torch.cat([y for _, y, _ in parts]).double()
            torch.testing.assert_close(c.y, want_y, rtol=0, atol=0)
            assert c.x.shape == (want_y.shape[1],)  # shared by every example: returned once
            for xs, _, _ in parts:
                torch.testing.assert_close(c.x, xs.double(), rtol=0, atol=0)
            torch.testing.assert_close(c.values, torch.cat([v for *_, v in parts]).double(), rtol=0, atol=0)
            torch.testing.assert_close(c.values, ev.per_example(mname, name), rtol=0, atol=0)
            if name == "randomization":
                assert c.rule == "last" and c.ticks == ("5", "3", "0")  # the layers, from the output
                assert torch.equal(c.values, c.y[:, -1])
            else:
                assert c.rule == "trapezoid" and c.ticks is None
                torch.testing.assert_close(torch.trapezoid(c.y, c.x, dim=1), c.values, rtol=1e-12, atol=1e-14)
    assert ev.curves("deletion")["ig"].x_label == "fraction of features removed"
    with pytest.raises(ValueError, match="not a curve; the metrics with curves are"):
        ev.curves("sparseness")
    with pytest.raises(KeyError, match="unknown metric"):
        ev.curves("nope")


def test_curves_are_copies(run):
    ev, _ = run
    c = ev.curves("deletion")["saliency"]
    c.y.zero_(), c.x.zero_()
    assert ev.curves("deletion")["saliency"].y.abs().sum() > 0 and ev.curves("deletion")["saliency"].x[-1] == 1


def test_float32_values_unchanged_and_the_trapezoid_within_rounding():
    model, x = cnn(torch.float32), images(4, torch.float32)
    ev = M.evaluate(model, {"saliency": METHODS["saliency"]}, x, metrics=["deletion", "insertion"],
                    show_progress=False)  # fmt: skip
    f = xattr.target(model, model(x).argmax(1))
    for name in ("deletion", "insertion"):
        auc = getattr(M, name)(f, xattr.saliency(f), n_steps=16)(x).auc
        assert torch.equal(ev.values[0, ev.metrics.index(name)], auc.double())  # the metric's own value
        c = ev.curves(name)["saliency"]
        assert c.y.dtype == torch.float64
        torch.testing.assert_close(torch.trapezoid(c.y, c.x, dim=1), c.values, rtol=1e-6, atol=1e-7)


def segments(n: int) -> torch.Tensor:
    """One feature mask per example with 2 + i features: fractions differ per example."""
    m = torch.zeros(n, 1, 6, 6, dtype=torch.long)
    for i in range(n):
        m[i, 0] = torch.arange(36).reshape(6, 6) % (2 + i)
    return m


def test_per_example_fractions_and_the_mean_curve_keeps_the_area():
    model, x = cnn(), images(4)
    mask = segments(4)
    ev = M.evaluate(model, METHODS, x, metrics={"del": entries.deletion(n_steps=4, feature_mask=mask)},
                    show_progress=False)  # fmt: skip
    f = xattr.target(model, model(x).argmax(1))
    for mname, c in ev.curves("del").items():
        ref = M.deletion(f, METHODS[mname](f), n_steps=4, feature_mask=mask)(x)
        assert c.x.shape == c.y.shape == (4, 5)  # x per example
        torch.testing.assert_close(c.x, ref.fractions.double(), rtol=0, atol=0)
        torch.testing.assert_close(torch.trapezoid(c.y, c.x, dim=1), c.values, rtol=1e-12, atol=1e-14)
        band = ev.mean_curves("del")[mname]
        # the union grid of all examples' fractions, every curve interpolated on it
        assert np.array_equal(band.x, np.unique(c.x.numpy()))
        slow = [np.mean([np.interp(g, c.x[i].numpy(), c.y[i].numpy()) for i in range(4)]) for g in band.x]
        np.testing.assert_allclose(band.mean, slow, rtol=1e-12)
        assert np.trapezoid(band.mean, band.x) == pytest.approx(c.values.mean().item(), rel=1e-10)


def ragged(f, a, x):
    """A custom curve metric whose number of points depends on the batch size."""
    s = len(x) + 1
    fr = torch.linspace(0, 1, s, dtype=torch.float64)
    y = torch.stack([fr**2 * (i + 1) for i in range(len(x))])
    return M.Curve(fr, y, torch.trapezoid(y, fr, dim=1))


def test_shorter_batches_are_padded_with_their_last_point():
    model, x = cnn(), images(5)
    ev = M.evaluate(model, {"s": METHODS["saliency"]}, x, metrics=[entries.custom(ragged, "higher")], batch_size=3,
                    show_progress=False)  # fmt: skip
    c = ev.curves("ragged")["s"]
    assert c.y.shape == (5, 4) and c.x.shape == (5, 4)  # batches of 3 (4 points) and 2 (3 points)
    for rows, s in ((range(0, 3), 4), (range(3, 5), 3)):
        fr = torch.linspace(0, 1, s, dtype=torch.float64)
        for j, i in enumerate(rows):
            want = torch.cat([fr**2 * (j + 1), (fr[-1:] ** 2) * (j + 1)])[:4]
            assert torch.equal(c.y[i], want) and torch.equal(c.x[i], torch.cat([fr, fr[-1:]])[:4])
    torch.testing.assert_close(torch.trapezoid(c.y, c.x, dim=1), c.values, rtol=1e-14, atol=0)


def slow_interval(v, level, n_boot, seed):
    rng = np.random.default_rng(seed)
    means = sorted(sum(v[j] for j in rng.integers(0, len(v), size=len(v))) / len(v) for _ in range(n_boot))
    pos = lambda q: q * (n_boot - 1)  # noqa: E731
    out = []
    for q in ((1 - level) / 2, (1 + level) / 2):
        lo = math.floor(pos(q))
        hi = min(lo + 1, n_boot - 1)
        out.append(means[lo] + (pos(q) - lo) * (means[hi] - means[lo]))
    return out


def built(y: np.ndarray, rule: str, seed: int = 0, nan_rows=()) -> Evaluation:
    """An Evaluation of one method, one metric, built from curves y (N, S) over 0..1."""
    n, s = y.shape
    x = np.tile(np.linspace(0, 1, s), (n, 1))
    y = y.copy()
    y[list(nan_rows)] = np.nan
    values = np.trapezoid(y, x, axis=1) if rule == "trapezoid" else y[:, -1]
    t = lambda a: torch.tensor(a, dtype=torch.float64)[None]  # noqa: E731
    curves = {"m": CurveSet(t(x), t(y), rule, "x")}
    return Evaluation(["a"], ["m"], {"m": "higher"}, t(values)[:, None], torch.zeros(n), seed=seed, curves=curves)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    y=st.integers(2, 7).flatmap(lambda n: st.lists(st.lists(st.floats(-3, 3), min_size=3, max_size=3),
                                                    min_size=n, max_size=n)),  # fmt: skip
    rule=st.sampled_from(["trapezoid", "last"]),
    seed=st.integers(0, 50),
    nan_first=st.booleans(),
)
def test_mean_curve_and_band_equal_slow_loops_and_sum_up_to_the_table(y, rule, seed, nan_first):
    y = np.array(y)
    ev = built(y, rule, seed, nan_rows=(0,) if nan_first else ())
    band = ev.mean_curves("m", level=0.9, n_boot=50)["a"]
    rows = [r for i, r in enumerate(y) if not (nan_first and i == 0)]
    assert band.n == len(rows)
    for j in range(3):
        col = [r[j] for r in rows]
        assert band.mean[j] == pytest.approx(sum(col) / len(col), abs=1e-12)
        assert np.allclose([band.low[j], band.high[j]], slow_interval(col, 0.9, 50, seed), atol=1e-12)
        assert band.low[j] <= band.mean[j] + 1e-12 and band.mean[j] <= band.high[j] + 1e-12
    table = ev.table()["m"]["a"]
    summed = np.trapezoid(band.mean, band.x) if rule == "trapezoid" else band.mean[-1]
    assert summed == pytest.approx(table.mean, abs=1e-12)  # the mean curve sums up to the table's mean


def test_dict_lists_and_html_figures(run):
    ev, _ = run
    d = ev.to_dict()
    json.dumps(d)
    for name in ev.metrics:
        entry = d["metrics"][name]
        if name not in ev.curve_metrics:
            assert "curve" not in entry and "curves" not in entry["methods"]["ig"]
            continue
        assert entry["curve"]["rule"] == ("last" if name == "randomization" else "trapezoid")
        for mname, c in ev.curves(name).items():
            assert entry["methods"][mname]["x"] == c.x.tolist() and entry["methods"][mname]["curves"] == c.y.tolist()
    assert d["metrics"]["randomization"]["curve"]["ticks"] == ["5", "3", "0"]
    assert "<img" not in ev.to_html()
    page = ev.to_html(curves=True)
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pngs) == len(ev.curve_metrics)
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert page.startswith(ev.to_html())
    with pytest.raises(TypeError, match="curves must be True or False"):
        ev.to_html(curves="yes")


def test_plot_curves_new_figure_given_axes_and_no_pyplot_state(run, tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    ev, _ = run
    before = plt.get_fignums()
    path = tmp_path / "sub" / "deletion.png"
    fig = ev.plot_curves("deletion", path=path)
    assert isinstance(fig, Figure) and path.exists() and plt.get_fignums() == before
    (ax,) = fig.axes
    bands = ev.mean_curves("deletion")
    assert [line.get_label().split(" (")[0] for line in ax.get_lines()] == list(METHODS)
    for line, b in zip(ax.get_lines(), bands.values()):
        np.testing.assert_array_equal(line.get_ydata(), b.mean)
    assert "lower is better" in ax.get_title() and ax.get_xlabel() == "fraction of features removed"
    own = Figure()
    axes = own.subplots(1, 2)
    assert ev.plot_curves("randomization", ax=axes[1]) is own
    assert [t.get_text() for t in axes[1].get_xticklabels()] == ["5", "3", "0"] and not axes[0].get_lines()
    with pytest.raises(TypeError, match="matplotlib Axes"):
        ev.plot_curves("deletion", ax="left")
    with pytest.raises(ValueError, match="not a curve"):
        ev.plot_curves("sparseness")


def test_constructor_checks_the_curves():
    t = torch.zeros(1, 3, 4, dtype=torch.float64)
    ok = CurveSet(t, t, "trapezoid", "x")
    Evaluation(["a"], ["m"], {"m": "lower"}, torch.zeros(1, 1, 3), torch.zeros(3), curves={"m": ok})
    with pytest.raises(ValueError, match="unknown metric"):
        Evaluation(["a"], ["m"], {"m": "lower"}, torch.zeros(1, 1, 3), torch.zeros(3), curves={"z": ok})
    with pytest.raises(ValueError, match=r"must hold x and y \(1, 2, S\)"):
        Evaluation(["a"], ["m"], {"m": "lower"}, torch.zeros(1, 1, 2), torch.zeros(2), curves={"m": ok})
    with pytest.raises(ValueError, match="rule"):
        Evaluation(["a"], ["m"], {"m": "lower"}, torch.zeros(1, 1, 3), torch.zeros(3),
                   curves={"m": ok._replace(rule="simpson")})  # fmt: skip
    with pytest.raises(TypeError, match="CurveSet"):
        Evaluation(["a"], ["m"], {"m": "lower"}, torch.zeros(1, 1, 3), torch.zeros(3), curves={"m": (t, t)})
