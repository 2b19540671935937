"""xattr.insights.explore(..., evaluation=...): the page's evaluation view.

The page's table, ranks and per-example scores are checked against `xattr.metrics.evaluate`
called directly with the same arguments (methods given as ``make`` functions, so evaluate
recomputes every attribution the page shared), the per-example places and the disagreement
spreads against slow loop references, and the page's script (under node, with the DOM stand-in
of test_insights) for the table it draws, the scores it shows and the order it lists.
"""

import json
import math
import shutil
import subprocess

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import xattr
from xattr._src import demo_model
from xattr.insights import _evaluation_view, _page, _page_eval
from xattr.metrics import entries

from test_insights import parse
from test_insights_dataset_view import BASE

METHODS = {
    "saliency": xattr.saliency,
    "integrated gradients": lambda f: xattr.integrated_gradients(f, n_steps=16),
    "occlusion": lambda f: xattr.occlusion(f, sliding_window_shapes=(1, 2, 2), strides=(1, 2, 2)),
}
# two metrics that read the page's attributions and, between them, one that reruns the method
# (sensitivity): the page joins evaluate's two runs back in this order
METRICS = {"deletion": entries.deletion(), "sensitivity": entries.sensitivity_max(n_samples=3),
           "sparseness": entries.sparseness()}  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    data = demo_model.load_digits()
    model = demo_model.train(data, epochs=1)
    return model, data.x_test[:24], data.y_test[:24]


@pytest.fixture(scope="module")
def page(digits, tmp_path_factory):
    model, x, y = digits
    path = tmp_path_factory.mktemp("ev") / "ev.html"
    xattr.insights.explore(model, x, labels=y, methods=METHODS, path=path, show_progress=False, chunk_size=16,
                           evaluation=METRICS, generator=5)  # fmt: skip
    return parse(path)


def slow_place(vals, j, direction):
    """Rank of value j among vals (1 the best, ties share), by counting; None for nan."""
    if math.isnan(vals[j]):
        return None
    better = lambda a, b: a > b if direction == "higher" else a < b  # noqa: E731
    others = [v for i, v in enumerate(vals) if i != j and not math.isnan(v)]
    return 1 + sum(better(v, vals[j]) for v in others) + 0.5 * sum(v == vals[j] for v in others)


def slow_spread(values, direction):
    """values[m][j]: per example, max - min over methods of the example's position in [0, 1]
    among that method's finite values."""
    pos = []
    for row in values:
        n = sum(not math.isnan(v) for v in row)
        q = []
        for j in range(len(row)):
            r = slow_place(row, j, direction)
            q.append(None if r is None else ((r - 1) / (n - 1) if n > 1 else 0.5))
        pos.append(q)
    out = []
    for j in range(len(values[0])):
        qs = [p[j] for p in pos if p[j] is not None]
        out.append(max(qs) - min(qs) if len(qs) >= 2 else None)
    return out


def close(a, b):
    """A stored number (6 significant digits: relative error <= 5e-6; None for nan) against b."""
    if a is None:
        return b is None or math.isnan(b)
    return a == pytest.approx(b, rel=6e-6, abs=1e-9)


def test_page_numbers_are_evaluates(digits, page):
    model, x, y = digits
    _, _, data = page
    pred = torch.tensor([e["p"] for e in data["examples"]])
    ev = xattr.metrics.evaluate(model, METHODS, x, metrics=METRICS, target=pred, batch_size=16, generator=5,
                                show_progress=False)  # fmt: skip
    E = data["evaluation"]
    assert E["n"] == 24 and E["level"] == 0.95 and "seed 5" in E["interval"]
    assert [k["name"] for k in E["metrics"]] == list(METRICS) and data["methods"] == list(METHODS)
    table, ranks = ev.table(), ev.ranks()
    for k, metric in zip(E["metrics"], ev.metrics):
        assert k["direction"] == ev.directions[metric]
        for i, m in enumerate(ev.methods):
            cell = table[metric][m]
            assert all(close(a, b) for a, b in zip(k["cells"][i][:3], cell[:3])) and k["cells"][i][3] == cell.n
            assert close(k["rank"][i], ranks[metric][m])
            want = ev.per_example(m, metric).tolist()
            assert all(close(a, b) for a, b in zip(k["values"][i], want))
        top = min(ranks[metric].values())
        assert k["best"] == [i for i, m in enumerate(ev.methods) if ranks[metric][m] == top]
    assert np.isfinite(ev.values.numpy()).all()  # every cell counted: a check of these numbers, not of nans


def test_places_and_spreads_match_slow_references(page):
    _, _, data = page
    for k in data["evaluation"]["metrics"]:
        vals = [[math.nan if v is None else v for v in row] for row in k["values"]]
        for i in range(len(vals)):
            for j in range(len(vals[0])):
                assert k["place"][i][j] == slow_place([row[j] for row in vals], i, k["direction"])
        want = slow_spread(vals, k["direction"])
        assert all(close(a, b) for a, b in zip(k["spread"], want))
        assert 0 < max(want) <= 1 and len(set(want)) > 3  # the methods disagree, more on some examples


def test_evaluation_off_leaves_the_page_unchanged(digits, page, tmp_path):
    model, x, y = digits
    kw = dict(labels=y, methods=METHODS, show_progress=False, chunk_size=16)
    plain = open(xattr.insights.explore(model, x, path=tmp_path / "a.html", **kw), encoding="utf-8").read()
    off = open(xattr.insights.explore(model, x, path=tmp_path / "b.html", evaluation=False, **kw), encoding="utf-8").read()
    assert plain == off
    for trace in (_page_eval.JS, _page_eval.CSS, 'id="f-order"', 'id="evaluation"', '"evaluation"', "evaluated under"):
        assert trace not in plain
    text, _, data = page  # the evaluation adds its payload entry and view, and changes nothing else
    assert "evaluated under 3 metrics" in text and _page_eval.JS in text
    data = dict(data)
    del data["evaluation"]
    assert _page.render(data) == plain


def test_seeds_and_generators(digits, tmp_path):
    model, x, y = digits
    methods = {"saliency": xattr.saliency, "occlusion": METHODS["occlusion"]}
    metrics = ["infidelity", entries.sensitivity_max(n_samples=2)]

    def values(gen, name):
        _, _, data = parse(xattr.insights.explore(model, x[:8], methods=methods, evaluation=metrics, generator=gen,
                                                  path=tmp_path / name, show_progress=False))  # fmt: skip
        return [k["values"] for k in data["evaluation"]["metrics"]]

    a, b = values(3, "a.html"), values(3, "b.html")
    assert a == b and values(4, "c.html") != a
    g = values(torch.Generator().manual_seed(1), "g.html")  # one seed drawn, shared by both halves
    ev = xattr.metrics.evaluate(model, methods, x[:8], metrics=metrics, generator=torch.Generator().manual_seed(1),
                                show_progress=False)  # fmt: skip
    for k, page_vals in enumerate(g):
        assert all(close(p, w) for row, wr in zip(page_vals, ev.values[:, k].tolist()) for p, w in zip(row, wr))


def test_default_metrics_and_nothing_mutated(digits, tmp_path, capsys):
    model, x, y = digits
    before = [p.detach().clone() for p in model.parameters()]
    x0 = x.clone()
    _, _, data = parse(xattr.insights.explore(model, x[:6], methods={"saliency": xattr.saliency}, evaluation=True,
                                              path=tmp_path / "d.html", show_progress=False))  # fmt: skip
    assert [k["name"] for k in data["evaluation"]["metrics"]] == list(entries.defaults())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())) and not model.training
    assert torch.equal(x, x0)
    # one method: no spread to take anywhere
    assert all(s is None for k in data["evaluation"]["metrics"] for s in k["spread"])
    assert "xattr evaluate" not in capsys.readouterr().err
    xattr.insights.explore(model, x[:3], methods={"saliency": xattr.saliency}, evaluation=["sparseness"],
                           path=tmp_path / "p.html")  # show_progress=True: evaluate's bar too
    assert "xattr evaluate" in capsys.readouterr().err


def test_localization_entries_take_masks(digits, tmp_path):
    model, x, y = digits
    masks = torch.zeros_like(x[:6], dtype=torch.bool)
    masks[..., 2:6, 2:6] = True
    _, _, data = parse(xattr.insights.explore(model, x[:6], methods={"saliency": xattr.saliency}, masks=masks,
                                              evaluation=["relevance_mass"], path=tmp_path / "m.html",
                                              show_progress=False))  # fmt: skip
    f = xattr.target(model, torch.tensor([e["p"] for e in data["examples"]]))
    want = xattr.metrics.relevance_mass_accuracy(xattr.saliency(f)(x[:6]), masks, x[:6])
    np.testing.assert_allclose(data["evaluation"]["metrics"][0]["values"][0], want.numpy(), rtol=1e-5)


def test_errors(digits, tmp_path):
    model, x, y = digits
    masks = torch.ones_like(x, dtype=torch.bool)
    summed = {"summed": lambda f: lambda v: xattr.saliency(f)(v).sum(1, keepdim=True)}
    cases = [  # (keywords, error, message)
        (dict(evaluation=["pointing_game"]), ValueError, "evaluation: .*pointing_game.*pass masks="),
        (dict(evaluation=[entries.relevance_mass_accuracy()]), ValueError, "masks="),
        (dict(masks=masks), ValueError, "masks= are for the evaluation"),
        (dict(evaluation="deletion"), TypeError, "evaluation must be True"),
        (dict(evaluation=["no_such_metric"]), ValueError, "unknown metric 'no_such_metric'"),
        (dict(evaluation=True, generator=1.5), TypeError, "generator must be an int seed"),
    ]
    for kw, error, message in cases:
        kw.setdefault("methods", {"saliency": xattr.saliency})
        with pytest.raises(error, match=message):
            xattr.insights.explore(model, x, path=tmp_path / "x.html", show_progress=False, **kw)
    rgb = x.expand(-1, 3, -1, -1)  # a map summed over channels (B, 1, H, W) is no input-shaped attribution
    with pytest.raises(ValueError, match="method 'summed' gives \\(24, 1, 8, 8\\)"):
        xattr.insights.explore(lambda v: model(v.mean(1, keepdim=True)), rgb, methods=summed, evaluation=True,
                               path=tmp_path / "x.html", show_progress=False)  # fmt: skip
    assert not (tmp_path / "x.html").exists()


def test_text_pages(tmp_path):
    from test_insights import EmbedModel, Tokenizer

    model = EmbedModel().eval()
    ids = torch.tensor([[3, 4, 5, 0], [7, 1, 2, 9], [11, 10, 0, 0], [2, 2, 8, 6]])
    methods = {"feature ablation": xattr.feature_ablation,
               "shapley": lambda f: xattr.shapley_value_sampling(f, n_samples=10, generator=0)}  # fmt: skip
    metrics = [entries.deletion(baselines=0), "sparseness"]  # id 0 is the tokenizer's padding
    _, _, data = parse(xattr.insights.explore(model, ids, tokens=Tokenizer(), methods=methods, evaluation=metrics,
                                              path=tmp_path / "t.html", show_progress=False))  # fmt: skip
    pred = torch.tensor([e["p"] for e in data["examples"]])
    ev = xattr.metrics.evaluate(model, methods, ids, metrics=metrics, target=pred, show_progress=False)
    for k, metric in zip(data["evaluation"]["metrics"], ev.metrics):
        for i, row in enumerate(k["values"]):
            assert all(close(a, b) for a, b in zip(row, ev.values[i, ev.metrics.index(metric)].tolist()))


rows = st.integers(2, 9).flatmap(
    lambda n: st.lists(st.lists(st.integers(-3, 3).map(float) | st.just(math.nan), min_size=n, max_size=n), min_size=1, max_size=4)
)


@settings(max_examples=40, deadline=None)
@given(rows, st.sampled_from(["higher", "lower"]))
def test_spread_properties(values, direction):
    t = torch.tensor(values, dtype=torch.float64)
    got = _evaluation_view.disagreement(t, direction)
    want = slow_spread(values, direction)
    assert all((a is None and b is None) or a == pytest.approx(b) for a, b in zip(got, want))
    other = "lower" if direction == "higher" else "higher"
    assert got == pytest.approx(_evaluation_view.disagreement(t, other))  # either direction: the same spread
    # rank-based: an increasing transform of one method's values changes nothing
    moved = t.clone()
    moved[0] = torch.exp(moved[0]) * 3 - 7
    assert got == pytest.approx(_evaluation_view.disagreement(moved, direction))
    assert all(s is None or 0 <= s <= 1 for s in got)
    same = t[:1].expand(3, -1)  # methods in full agreement
    assert all(s is None or s == 0 for s in _evaluation_view.disagreement(same, direction))


PROBE = BASE + r"""
const out = {};
out.viewShown = !ids["l-view"].hidden; out.orderOpts = ids["f-order"].children.map(o => [o.value, o.textContent]);
out.datasetOpt = !!ids["o-view-dataset"].hidden;
ids["f-view"].value = "evaluation"; ids["f-view"].fire("change");
out.hidden = [ids.evaluation.hidden, ids.grid.hidden, ids.dataset.hidden, ids["l-order"].hidden, ids["l-pred"].hidden];
out.table = ids.evaluation.all("tr").map(r => r.children.map(c => [c.textContent, c.className]));
ids.evaluation.all("button")[METRIC].fire("click");
out.view = [ids["f-view"].value, ids["f-order"].value, ids.evaluation.hidden, ids.grid.hidden];
out.order = ids.grid.children.map(c => +c.attrs["data-index"]);
out.badge = ids.grid.children[0].textContent;
ids["f-wrong"].checked = true; ids["f-wrong"].fire("change");
out.wrong = ids.grid.children.map(c => +c.attrs["data-index"]);
ids["f-wrong"].checked = false; ids["f-wrong"].fire("change");
ids.grid.children[0].fire("click");
const rowText = r => r.children.map(c => c.textContent).join(";");
out.scores = ids["detail-body"].all("section").map(s => s.all("h3")[0].textContent + "|" + s.all("tr").map(rowText).join("/"));
ids["f-order"].value = ""; ids["f-order"].fire("change");
out.byIndex = ids.grid.children.map(c => +c.attrs["data-index"]);
console.log(JSON.stringify(out));
"""


def expected_order(spread, keep):
    return sorted(keep, key=lambda i: (spread[i] is None, -(spread[i] or 0), i))


def evfmt(v):
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e4):
        return f"{v:.2e}".replace("e-0", "e-").replace("e+0", "e+")
    return repr(float(f"{v:.3g}")).removesuffix(".0")


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_page_script_draws_the_table_scores_and_order(page, tmp_path):
    text, _, data = page
    (tmp_path / "p.html").write_text(text, encoding="utf-8")
    E, metric = data["evaluation"], 2
    res = subprocess.run(["node", "-e", PROBE.replace("METRIC", str(metric)), str(tmp_path / "p.html")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["viewShown"] and not out["datasetOpt"] and [v for v, _ in out["orderOpts"]] == ["0", "1", "2"]  # after the markup's "by index"
    assert out["hidden"] == [False, True, True, True, True]
    head, *body = out["table"]
    assert [t for t, _ in head] == ["method", "deletion \u2193", "sensitivity \u2193", "sparseness \u2191"]
    for i, row in enumerate(body):
        assert row[0][0] == data["methods"][i]
        for k, (txt, cls) in zip(E["metrics"], row[1:]):
            mean, low, high, _ = k["cells"][i]
            assert txt == f"{evfmt(mean)} [{evfmt(low)}, {evfmt(high)}]"
            assert (cls == "best") == (i in k["best"])
    assert sum(cls == "best" for row in body for _, cls in row[1:]) >= len(E["metrics"])
    k = E["metrics"][metric]
    assert out["view"] == ["examples", str(metric), True, False]
    assert out["order"] == expected_order(k["spread"], range(E["n"]))
    assert out["order"] != sorted(out["order"]) and out["byIndex"] == list(range(E["n"]))
    assert out["badge"].endswith(f"disagreement on sparseness: {k['spread'][out['order'][0]]:.2f}")
    wrong = [e["i"] for e in data["examples"] if e["wrong"]]
    assert wrong and out["wrong"] == expected_order(k["spread"], wrong)
    first = out["order"][0]
    assert len(out["scores"]) == len(data["methods"])
    for sec in out["scores"]:
        name, rows_ = sec.split("|")
        m = data["methods"].index(name.rsplit(" sum ", 1)[0].strip())
        for row, km in zip(rows_.split("/"), E["metrics"]):
            place = km["place"][m][first]
            want = f"{km['name']} {'↑' if km['direction'] == 'higher' else '↓'};{evfmt(km['values'][m][first])};"
            assert row == want + f"rank {place:g} of 3 here"


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_page_script_without_dataset_view(digits, tmp_path):
    model, x, y = digits
    path = xattr.insights.explore(model, x[:6], methods={"saliency": xattr.saliency, "occlusion": METHODS["occlusion"]},
                                  evaluation=["sparseness"], dataset_view=False, path=tmp_path / "n.html",
                                  show_progress=False)  # fmt: skip
    probe = BASE + r"""
const out = {shown: !ids["l-view"].hidden, ds: !!ids["o-view-dataset"].hidden};
ids["f-view"].value = "evaluation"; ids["f-view"].fire("change");
out.rows = ids.evaluation.all("tr").length; out.count = ids.count.textContent;
console.log(JSON.stringify(out));
"""
    res = subprocess.run(["node", "-e", probe, str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"shown": True, "ds": True, "rows": 3, "count": "2 methods under 1 metric on 6 examples"}
