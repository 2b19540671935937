"""xattr.insights.explore(..., evaluation=...): the curves behind the evaluation view's areas.

The curves embedded in the page are checked against `Evaluation.curves` and
`Evaluation.mean_curves` of `xattr.metrics.evaluate` called directly (one call, all metrics: the
page joins two), the mean curves and bands against loop references, the choice of embedded
examples against a brute-force search, and the page's script (under node, with the DOM stand-in
of test_insights) for the charts it draws: every drawn point is read back through the chart's
scale and compared with the payload.
"""

import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import xattr
from xattr._src import demo_model
from xattr.insights import _evaluation_view, _page_curves
from xattr.metrics import entries
from xattr.metrics._evaluation import Evaluation
from xattr.metrics._evaluation_curves import CurveSet

from test_insights import parse
from test_insights_dataset_view import BASE

METHODS = {
    "saliency": xattr.saliency,
    "integrated gradients": lambda f: xattr.integrated_gradients(f, n_steps=8),
    "occlusion": lambda f: xattr.occlusion(f, sliding_window_shapes=(1, 2, 2), strides=(1, 2, 2)),
}
# deletion reads the page's attributions; sensitivity and randomization rerun the methods: the
# page joins evaluate's two runs, and both halves have a curve metric
METRICS = {"deletion": entries.deletion(), "sensitivity": entries.sensitivity_max(n_samples=2),
           "randomization": entries.randomization(), "sparseness": entries.sparseness()}  # fmt: skip
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


@pytest.fixture(scope="module")
def digits():
    data = demo_model.load_digits()
    return demo_model.train(data, epochs=1), data.x_test[:24], data.y_test[:24]


@pytest.fixture(scope="module")
def page(digits, tmp_path_factory):
    model, x, y = digits
    path = tmp_path_factory.mktemp("cv") / "cv.html"
    xattr.insights.explore(model, x, labels=y, methods=METHODS, path=path, show_progress=False, chunk_size=16,
                           evaluation=METRICS, generator=3)  # fmt: skip
    return parse(path)


@pytest.fixture(scope="module")
def direct(digits, page):
    model, x, _ = digits
    pred = torch.tensor([e["p"] for e in page[2]["examples"]])
    return xattr.metrics.evaluate(model, METHODS, x, metrics=METRICS, target=pred, batch_size=16, generator=3,
                                  show_progress=False)  # fmt: skip


def close(stored, want, rel=6e-6):
    """Stored numbers (6 significant digits, None for nan) against float64 ones, elementwise."""
    want = np.asarray(want, dtype=np.float64)
    got = np.array([math.nan if v is None else v for v in np.ravel(np.array(stored, dtype=object))], dtype=np.float64)
    return got.shape == want.ravel().shape and bool(np.allclose(got, want.ravel(), rtol=rel, atol=1e-9, equal_nan=True))


def loop_band(x, y, level, n_boot, seed):
    """The mean curve and per-point percentile bootstrap of (x, y) (N, S) by loops: finite rows
    only, x shared (checked); resamples as NOTE: [Intervals of an evaluation] states them."""
    rows = [j for j in range(len(y)) if all(math.isfinite(v) for v in list(x[j]) + list(y[j]))]
    assert all(list(x[j]) == list(x[rows[0]]) for j in rows)
    n, s_len = len(rows), len(y[0])
    mean = [sum(y[j][s] for j in rows) / n for s in range(s_len)]
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    low, high = [], []
    for s in range(s_len):
        means = sorted(sum(y[rows[i]][s] for i in draw) / n for draw in draws.tolist())
        qs = []
        for q in ((1 - level) / 2, (1 + level) / 2):  # numpy's default: linear between order statistics
            pos = q * (n_boot - 1)
            lo = int(math.floor(pos))
            qs.append(means[lo] + (pos - lo) * (means[min(lo + 1, n_boot - 1)] - means[lo]))
        low.append(qs[0])
        high.append(qs[1])
    return list(x[rows[0]]), mean, low, high, n


def test_curves_in_the_page_are_evaluates(page, direct):
    _, _, data = page
    E, ev = data["evaluation"], direct
    assert [k["name"] for k in E["metrics"]] == ev.metrics == list(METRICS)
    with_curve = [k["name"] for k in E["metrics"] if k["curve"] is not None]
    assert with_curve == ev.curve_metrics == ["deletion", "randomization"]  # both halves' curves joined
    assert E["curves"] == {"examples": list(range(24)), "of": 24, "stride": 1, "values": 3 * 24 * (17 + 4), "limit": 50_000}
    for k in E["metrics"]:
        if k["curve"] is None:
            continue
        c, curves, bands = k["curve"], ev.curves(k["name"]), ev.mean_curves(k["name"])
        assert len(c["y"]) == len(c["mean"]) == len(ev.methods) and c["ex_x"] is None
        for i, name in enumerate(ev.methods):
            cv, b = curves[name], bands[name]
            assert c["rule"] == cv.rule and c["x_label"] == cv.x_label and c["ticks"] == (None if cv.ticks is None else list(cv.ticks))
            assert cv.x.dim() == 1 and close(c["x"], cv.x) and close(c["y"][i], cv.y)
            assert close(c["mean"][i]["x"], b.x) and close(c["mean"][i]["mean"], b.mean) and c["mean"][i]["n"] == b.n == 24
            assert close(c["mean"][i]["low"], b.low) and close(c["mean"][i]["high"], b.high)
            # each embedded curve gives the example's value back by the metric's rule
            y = np.array(c["y"][i], dtype=np.float64)
            value = np.trapezoid(y, np.array(c["x"]), axis=1) if c["rule"] == "trapezoid" else y[:, -1]
            assert close(k["values"][i], value, rel=1e-4)
    rnd = E["metrics"][2]["curve"]
    assert rnd["rule"] == "last" and rnd["ticks"] == ["8", "6", "2", "0"] and rnd["x"] == [1, 2, 3, 4]  # layers, output first
    assert rnd["y_label"].startswith("similarity") and E["metrics"][0]["curve"]["x_label"] == "fraction of features removed"


def test_mean_curves_match_loops_and_sum_up_to_the_table(page, direct):
    _, _, data = page
    E = data["evaluation"]
    for k in E["metrics"]:
        if k["curve"] is None:
            continue
        c = k["curve"]
        for i, name in enumerate(data["methods"]):
            cv = direct.curves(k["name"])[name]
            b = c["mean"][i]
            if i == 0:  # the loop bootstrap is slow: one method per metric
                x, mean, low, high, n = loop_band(cv.x.expand_as(cv.y).tolist(), cv.y.tolist(), 0.95, 1000, direct.seed)
                assert close(b["x"], x) and close(b["mean"], mean) and close(b["low"], low) and close(b["high"], high)
                assert b["n"] == n == 24
            # the area (or last point) of the mean curve is the table's mean
            summed = np.trapezoid(b["mean"], b["x"]) if c["rule"] == "trapezoid" else b["mean"][-1]
            assert summed == pytest.approx(k["cells"][i][0], rel=1e-5, abs=1e-6)
            assert all(lo <= m + 1e-9 <= hi + 2e-9 for lo, m, hi in zip(b["low"], b["mean"], b["high"]))
            assert max(h - lo for lo, h in zip(b["low"], b["high"])) > 0  # a band, not a line


def brute_examples(n, per_example, limit):
    """The smallest stride k whose examples 0, k, 2k, ... fit in limit (k = n: #0 alone)."""
    for k in range(1, n + 1):
        kept = list(range(0, n, k))
        if len(kept) * per_example <= limit:
            return kept
    return [0]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.integers(1, 50), st.integers(1, 3000))
def test_embedded_examples_fit_the_limit(n, per_example, limit):
    kept = _evaluation_view.curve_examples(n, per_example, limit)
    assert kept == brute_examples(n, per_example, limit)
    assert kept[0] == 0 and (len(kept) * per_example <= limit or kept == [0])
    if n * per_example <= limit:
        assert kept == list(range(n))
    if len(kept) > 1:  # evenly strided
        assert len({b - a for a, b in zip(kept, kept[1:])}) == 1


@st.composite
def evaluations(draw):
    """A synthetic Evaluation with one or two curve metrics: shared or per-example x, nan rows."""
    m, n, s = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(2, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    curves, values, metrics = {}, [], []
    for k, shared in enumerate(draw(st.lists(st.booleans(), min_size=1, max_size=2))):
        if shared:
            x = np.broadcast_to(np.linspace(0, 1, s), (m, n, s)).copy()
        else:  # each example its own fractions, from 0 to 1
            x = np.sort(np.concatenate([np.zeros((m, n, 1)), rng.uniform(0, 1, (m, n, s - 2)), np.ones((m, n, 1))], 2), 2)
            x[:] = x[:1]  # per example, the same for every method (as a feature mask gives them)
        y = rng.normal(size=(m, n, s)).round(3)
        if draw(st.booleans()) and n > 1:
            y[0, rng.integers(n)] = np.nan  # a method without a curve on one example
        name = f"curve{k}"
        metrics.append(name)
        curves[name] = CurveSet(torch.tensor(x), torch.tensor(y), "trapezoid", "fraction", None, "f")
        values.append(np.trapezoid(y, x, axis=2))
    vals = torch.tensor(np.stack(values, 1))
    ev = Evaluation([f"m{i}" for i in range(m)], metrics, {k: "higher" for k in metrics}, vals,
                    torch.zeros(n, dtype=torch.long), seed=7, curves=curves)  # fmt: skip
    return ev, draw(st.integers(1, 200))


@settings(max_examples=25, deadline=None)
@given(evaluations())
def test_curves_payload_properties(case):
    ev, limit = case
    out, emb = _evaluation_view.curves_payload(ev, limit)
    n, m = ev.values.shape[2], len(ev.methods)
    per = 0
    for metric in ev.metrics:
        cs = ev.curves(metric)
        xs = torch.stack([cv.x.expand_as(cv.y) for cv in cs.values()])
        finite = xs.reshape(-1, xs.shape[-1])[~torch.isnan(xs.reshape(-1, xs.shape[-1])).any(1)]
        is_shared = all(torch.equal(r, finite[0]) for r in finite)
        assert (out[metric]["x"] is not None) == is_shared and (out[metric]["ex_x"] is None) == is_shared
        per += m * xs.shape[2] * (1 if is_shared else 2)
    assert emb["examples"] == brute_examples(n, per, limit) and emb["values"] == len(emb["examples"]) * per
    assert emb["of"] == n and emb["limit"] == limit
    table = ev.table()
    for metric in ev.metrics:
        c, cs = out[metric], ev.curves(metric)
        for i, (name, cv) in enumerate(cs.items()):
            assert close(c["y"][i], cv.y[emb["examples"]])
            if c["ex_x"] is not None:
                assert close(c["ex_x"][i], cv.x.expand_as(cv.y)[emb["examples"]])
            b = c["mean"][i]
            assert b["n"] == int(torch.isfinite(cv.y).all(1).sum())
            if b["n"]:  # the mean curve sums up to the table's mean, per-example x or not
                assert np.trapezoid(b["mean"], b["x"]) == pytest.approx(table[metric][name].mean, rel=1e-4, abs=1e-4)


def test_no_curve_metric_and_no_evaluation(digits, tmp_path):
    model, x, y = digits
    kw = dict(labels=y[:8], methods={"saliency": xattr.saliency}, show_progress=False)
    text, _, data = parse(xattr.insights.explore(model, x[:8], evaluation=["sparseness"], path=tmp_path / "s.html", **kw))
    assert data["evaluation"]["curves"] is None and data["evaluation"]["metrics"][0]["curve"] is None
    assert _page_curves.JS not in text and _page_curves.CSS not in text and "curvechart" not in text
    text, _, data = parse(xattr.insights.explore(model, x[:8], path=tmp_path / "o.html", **kw))
    assert "evaluation" not in data and "curvechart" not in text and "swatch" not in text
    if shutil.which("node"):  # the page without curves still runs: no chart, no curve section
        res = subprocess.run(["node", "-e", PROBE.replace("EXAMPLE", "2"), str(tmp_path / "s.html")],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["charts"] == [] and out["detail"] == [] and out["heads"][-1].startswith("saliency")


PROBE = BASE + r"""
const out = {}, svgs = box => box.all("svg").filter(s => s.attrs.class === "curvechart");
const chart = s => ({attrs: s.attrs, texts: s.all("text").map(t => t._t),
  paths: s.all("path").map(p => [p.attrs.class, +p.attrs["data-method"], p.attrs.stroke, p.attrs.d, p.attrs["stroke-dasharray"] || null]),
  bands: s.all("polygon").map(p => [+p.attrs["data-method"], p.attrs.fill, p.attrs.points])});
ids["f-view"].value = "evaluation"; ids["f-view"].fire("change");
out.charts = svgs(ids.evaluation).map(chart);
out.swatches = ids.evaluation.all("span").filter(s => s.className === "swatch").map(s => s.style.background);
out.notes = ids.evaluation.all("p").map(p => p.textContent);
out.legend = ids.evaluation.all("div").filter(d => d.className === "clegend").map(d => d.textContent);
const input = ids.evaluation.all("input").filter(i => i.className === "curve-ex");
if (input.length) { input[0].value = "EXAMPLE"; input[0].fire("input"); }
out.typed = svgs(ids.evaluation).map(chart);
ids["f-view"].value = "examples"; ids["f-view"].fire("change");
ids.grid.children.filter(c => c.attrs["data-index"] === "OPEN")[0]?.fire("click");
out.heads = ids["detail-body"].all("h3").map(h => h.textContent);
out.detail = svgs(ids["detail-body"]).map(chart);
out.detailNotes = ids["detail-body"].all("p").map(p => p.textContent);
ids["f-view"].value = "evaluation"; ids["f-view"].fire("change");
out.reopened = input.length ? [ids.evaluation.all("input").filter(i => i.className === "curve-ex")[0].value, svgs(ids.evaluation).map(chart)] : null;
console.log(JSON.stringify(out));
""".replace("OPEN", "EXAMPLE")


def run_probe(text, tmp_path, example):
    (tmp_path / "p.html").write_text(text, encoding="utf-8")
    res = subprocess.run(["node", "-e", PROBE.replace("EXAMPLE", str(example)), str(tmp_path / "p.html")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def read_back(ch, d):
    """The data points of an SVG path "M x y L x y ..." through the chart's scale."""
    a = ch["attrs"]
    x0, x1, y0, y1 = (float(a[k]) for k in ("data-x0", "data-x1", "data-y0", "data-y1"))
    left, top, w, h = (float(v) for v in a["data-box"].split())
    pts = [(float(px), float(py)) for px, py in re.findall(r"[ML]([\d.\-]+) ([\d.\-]+)", d)]
    return [(x0 + (px - left) / w * (x1 - x0), y0 + (1 - (py - top) / h) * (y1 - y0)) for px, py in pts], (x1 - x0) / w, (y1 - y0) / h


def assert_drawn(ch, xs, ys, what):
    pts, dx, dy = read_back(ch, what)
    assert len(pts) == len(xs) == len(ys)
    for (px, py), x, y in zip(pts, xs, ys):  # coordinates are written to 0.1 pixel
        assert abs(px - x) <= 0.06 * dx and abs(py - y) <= 0.06 * dy


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_page_script_draws_means_bands_and_the_chosen_example(page, tmp_path):
    text, _, data = page
    E, ex = data["evaluation"], 5
    out = run_probe(text, tmp_path, ex)
    curve_ks = [k for k in E["metrics"] if k["curve"]]
    assert [c["attrs"]["data-metric"] for c in out["charts"]] == [k["name"] for k in curve_ks]
    assert out["swatches"][:3] == PALETTE[:3]  # the table's swatches: one colour per method
    assert "embeds 1512 numbers of per-example curves" in out["notes"][1] and "one example in" not in out["notes"][1]
    assert out["legend"][0].startswith("saliency: mean area ") and "mean last point" in out["legend"][1]
    for k, ch, typed, det, again in zip(curve_ks, out["charts"], out["typed"], out["detail"], out["reopened"][1]):
        c = k["curve"]
        assert c["x_label"] in ch["texts"] and c["y_label"] in ch["texts"]
        if c["ticks"]:
            assert [t for t in ch["texts"] if t in c["ticks"]] == c["ticks"]  # the layers name the x ticks
        means = [p for p in ch["paths"] if p[0] == "mean"]
        assert [(m, s, dash) for _, m, s, _, dash in means] == [(i, PALETTE[i], None) for i in range(3)]
        assert not [p for p in ch["paths"] if p[0] == "example"]
        for (_, m, _, d, _), b in zip(means, c["mean"]):
            assert_drawn(ch, b["x"], b["mean"], d)
        for (m, fill, points), b in zip(ch["bands"], c["mean"]):  # the band: high forwards, then low backwards
            assert fill == PALETTE[m]
            d = "M" + " L".join(p.replace(",", " ") for p in points.split())
            assert_drawn(ch, b["x"] + b["x"][::-1], b["high"] + b["low"][::-1], d)
        for chosen in (typed, det, again):  # typed into the view; the detail panel; the view after opening it
            shown = [p for p in chosen["paths"] if p[0] == "example"]
            assert [m for _, m, *_ in shown] == [0, 1, 2]
            assert all(p[4] == "5 3" for p in chosen["paths"] if p[0] == "mean")  # the means dashed under it
            for (_, m, stroke, d, _) in shown:
                assert stroke == PALETTE[m]
                assert_drawn(chosen, c["x"], c["y"][m][ex], d)
    assert out["heads"][-1] == f"Curves of example #{ex}" and out["reopened"][0] == str(ex)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_capped_page_embeds_every_kth_example(digits, tmp_path, monkeypatch):
    model, x, y = digits
    methods = {"saliency": xattr.saliency, "occlusion": METHODS["occlusion"]}
    text, _, data = parse(xattr.insights.explore(model, x, methods=methods, evaluation=["deletion"], generator=1,
                                                 path=tmp_path / "c.html", show_progress=False,
                                                 max_curve_values=2 * 17 * 5))  # room for 5 examples of 2 methods
    E = data["evaluation"]
    assert E["curves"] == {"examples": [0, 5, 10, 15, 20], "of": 24, "stride": 5, "values": 170, "limit": 170}
    c = E["metrics"][0]["curve"]
    assert [len(rows) for rows in c["y"]] == [5, 5] and all(b["n"] == 24 for b in c["mean"])  # means over all
    ev = xattr.metrics.evaluate(model, methods, x, metrics=["deletion"], target=torch.tensor([e["p"] for e in data["examples"]]),
                                generator=1, show_progress=False)  # fmt: skip
    for i, name in enumerate(methods):
        assert close(c["y"][i], ev.curves("deletion")[name].y[[0, 5, 10, 15, 20]])
    out = run_probe(text, tmp_path, 3)  # #3 is not embedded: a note, the means alone
    assert "one example in 5 only (#0, #5, #10, ...: 5 of 24)" in out["notes"][1]
    assert out["detailNotes"][-1] == "Example #3: its curves are not on the page; the means alone are drawn."
    assert not [p for ch in out["detail"] + out["typed"] for p in ch["paths"] if p[0] == "example"]
    out = run_probe(text, tmp_path, 10)
    assert len([p for p in out["detail"][0]["paths"] if p[0] == "example"]) == 2
    monkeypatch.setattr(_evaluation_view, "MAX_CURVE_VALUES", 2 * 17)  # the default: room for one example, #0
    text, _, data = parse(xattr.insights.explore(model, x[:6], methods=methods, evaluation=["deletion"], generator=1,
                                                 path=tmp_path / "one.html", show_progress=False))  # fmt: skip
    assert data["evaluation"]["curves"]["examples"] == [0]
    out = run_probe(text, tmp_path, 0)
    assert "holds the curves of example #0 only" in out["notes"][1]
    assert len([p for p in out["detail"][0]["paths"] if p[0] == "example"]) == 2


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "many"])
def test_max_curve_values_must_be_a_positive_int(digits, tmp_path, bad):
    model, x, _ = digits
    with pytest.raises(ValueError, match="max_curve_values must be a positive int or None"):
        xattr.insights.explore(model, x[:2], methods={"saliency": xattr.saliency}, evaluation=["deletion"],
                               path=tmp_path / "bad.html", show_progress=False, max_curve_values=bad)
