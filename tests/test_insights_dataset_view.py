"""The explorer's dataset view: class-mean attributions per method (xattr/insights/_dataset.py).

Every stored class mean is checked against a slow reference written out here: explicit Python
loops over the examples of each class, in float64, on the page's own per-example attributions
(for tabular rows the very values the page stores), by true label and by prediction, over every
example and over the misclassified ones. Pictures are decoded and compared with the heatmap of
the reference mean; the page's script runs under node where it is installed.
"""

import json
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import xattr
from test_insights import DOM_SHIM, EmbedModel, decode_png, parse
from xattr._src import demo_model
from xattr.insights import _dataset, _png

METHODS = {"saliency": lambda f: xattr.saliency(f), "integrated gradients": lambda f: xattr.integrated_gradients(f, n_steps=16)}


@pytest.fixture(scope="module")
def digits():
    data = demo_model.load_digits()
    return demo_model.train(data, epochs=1), data.x_test[:40], data.y_test[:40]


@pytest.fixture(scope="module")
def digits_page(digits, tmp_path_factory):
    model, x, y = digits
    path = tmp_path_factory.mktemp("dv") / "digits.html"
    return parse(xattr.insights.explore(model, x, labels=y, methods=METHODS, path=path, show_progress=False))


@pytest.fixture(scope="module")
def iris_page(tmp_path_factory):
    from sklearn.datasets import load_iris

    data = load_iris()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(data.target)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(15):  # under-trained on purpose: some examples are misclassified
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    path = tmp_path_factory.mktemp("dv") / "iris.html"
    methods = {"saliency": lambda f: xattr.saliency(f), "ablation": lambda f: xattr.feature_ablation(f)}
    out = xattr.insights.explore(model.eval(), x[::3], labels=y[::3], methods=methods, feature_names=data.feature_names,
                                 path=path, show_progress=False)  # fmt: skip
    return parse(out)


def loop_means(maps, keys, chosen):
    """Reference: {class: (count, mean, mean |a|)} by explicit loops in float64."""
    out = {}
    for c in sorted({int(keys[i]) for i in range(len(maps)) if chosen[i]}):
        members = [i for i in range(len(maps)) if chosen[i] and int(keys[i]) == c]
        total = np.zeros(maps[0].shape)
        total_abs = np.zeros(maps[0].shape)
        for i in members:
            total += np.asarray(maps[i], dtype=np.float64)
            total_abs += np.abs(np.asarray(maps[i], dtype=np.float64))
        out[c] = (len(members), total / len(members), total_abs / len(members))
    return out


def reference_views(maps, labels, pred):
    wrong = [int(p) != int(t) for p, t in zip(pred, labels)]
    every = [True] * len(maps)
    return {"label": loop_means(maps, labels, every), "prediction": loop_means(maps, pred, every),
            "label_wrong": loop_means(maps, labels, wrong), "prediction_wrong": loop_means(maps, pred, wrong)}  # fmt: skip


def test_image_class_means_match_loops(digits, digits_page):
    model, x, y = digits
    _, _, data = digits_page
    pred = [e["p"] for e in data["examples"]]
    views = data["dataset"]["views"]
    assert set(views) == {"label", "prediction", "label_wrong", "prediction_wrong"} and data["dataset"]["skipped"] == {}
    assert data["misclassified"] > 0
    for name, make in METHODS.items():
        attr = make(xattr.target(model, torch.tensor(pred)))(x)  # the page's own batched call
        want = reference_views([attr[i].double().numpy() for i in range(len(x))], y.tolist(), pred)
        xs = [x[i].double().numpy() for i in range(len(x))]
        want_x = reference_views(xs, y.tolist(), pred)
        for view, ref in want.items():
            v = views[view]
            assert v["groups"] == list(ref) and v["n"] == [ref[c][0] for c in ref]
            for g, c in enumerate(v["groups"]):
                n, mean, mean_abs = ref[c]
                s = v["methods"][name][g]
                assert s["s"] == pytest.approx(mean.sum(), rel=1e-5, abs=1e-9)
                assert s["as"] == pytest.approx(mean_abs.sum(), rel=1e-5)
                # the mean map's total is the class's mean of the per-example sums the page shows
                members = [e["a"][name]["sum"] for e in data["examples"] if (e["y"] if view.startswith("label") else e["p"]) == c
                           and (e["wrong"] or not view.endswith("wrong"))]  # fmt: skip
                assert len(members) == n and s["s"] == pytest.approx(np.mean(members), rel=1e-4, abs=1e-6)
                mean_x = torch.tensor(want_x[view][c][1])
                for key, values in (("m", mean), ("a", mean_abs)):
                    w, h, px = decode_png(s[key])
                    _, _, ref_px = decode_png(_png.heatmap_png(torch.tensor(values), mean_x))
                    assert (w, h) == (8, 8) and np.abs(px.astype(int) - ref_px.astype(int)).max() <= 1, (view, c, key)
                assert decode_png(v["x"][g])[2][..., 0].tolist() == decode_png(_png.input_png(mean_x))[2][..., 0].tolist()


def test_tabular_class_means_are_means_of_the_stored_rows(iris_page):
    _, _, data = iris_page
    ex = data["examples"]
    labels, pred = [e["y"] for e in ex], [e["p"] for e in ex]
    assert data["misclassified"] > 0
    for name in data["methods"]:
        stored = [np.array(e["a"][name]["v"], dtype=np.float64) for e in ex]
        for view, ref in reference_views(stored, labels, pred).items():
            v = data["dataset"]["views"][view]
            assert v["groups"] == list(ref) and v["n"] == [ref[c][0] for c in ref] and "x" not in v
            for g, c in enumerate(v["groups"]):
                _, mean, mean_abs = ref[c]
                s = v["methods"][name][g]
                np.testing.assert_allclose(s["m"], mean, rtol=2e-5, atol=1e-8)
                np.testing.assert_allclose(s["a"], mean_abs, rtol=2e-5, atol=1e-8)
                assert s["s"] == pytest.approx(mean.sum(), rel=1e-4, abs=1e-7)


def test_statistics_are_float64_and_exact(digits):
    model, x, y = digits
    pred = model(x).argmax(1)
    attr = xattr.saliency(xattr.target(model, pred))(x)
    assert attr.dtype == torch.float32
    stats = _dataset.statistics({"s": attr}, y, pred)
    ref = reference_views([attr[i].double().numpy() for i in range(len(x))], y.tolist(), pred.tolist())
    for view, per in stats.items():
        st_ = per["s"]
        assert st_.mean.dtype == torch.float64 and list(st_.groups) == list(ref[view])
        for g, c in enumerate(st_.groups):
            np.testing.assert_allclose(st_.mean[g].numpy(), ref[view][c][1], rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(st_.mean_abs[g].numpy(), ref[view][c][2], rtol=1e-12, atol=1e-15)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 30), st.integers(1, 4), st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_class_mean_properties(n, f, k, seed):
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** int(torch.randint(-3, 4, (), generator=g))  # attributions of any size
    attrs = {"a": torch.randn(n, f, generator=g, dtype=torch.float64) * scale}
    labels, pred = torch.randint(0, k, (n,), generator=g), torch.randint(0, k, (n,), generator=g)
    stats = _dataset.statistics(attrs, labels, pred)
    wrong = int((labels != pred).sum())
    overall = attrs["a"].mean(0)
    for view in ("label", "prediction"):
        s = stats[view]["a"]
        assert int(s.count.sum()) == n
        # law of total expectation: the count-weighted class means give the overall mean
        np.testing.assert_allclose((s.count[:, None] * s.mean).sum(0).numpy() / n, overall.numpy(), rtol=1e-9, atol=1e-12)
        assert (s.mean_abs >= s.mean.abs() - 1e-12 * s.mean_abs).all()  # |mean| <= mean |a|
    for view in ("label_wrong", "prediction_wrong"):
        s = stats[view]["a"]
        assert (s is None) == (wrong == 0) and (s is None or int(s.count.sum()) == wrong)
    perm = torch.randperm(n, generator=g)  # the order of the examples does not matter
    shuffled = _dataset.statistics({"a": attrs["a"][perm]}, labels[perm], pred[perm])
    for view, per in stats.items():
        if per["a"] is not None:
            assert per["a"].groups == shuffled[view]["a"].groups
            np.testing.assert_allclose(per["a"].mean.numpy(), shuffled[view]["a"].mean.numpy(), rtol=1e-9, atol=1e-12)


def test_no_second_model_pass_and_options(digits, tmp_path):
    model, x, y = digits
    calls = []

    def counted(v):
        calls.append(len(v))
        return model(v)

    per_run = []
    for dv in (False, True):
        calls.clear()
        _, _, data = parse(xattr.insights.explore(counted, x, labels=y, methods=METHODS, path=tmp_path / f"{dv}.html",
                                                  show_progress=False, dataset_view=dv))  # fmt: skip
        per_run.append(list(calls))
        assert (data["dataset"] is None) == (not dv)
    assert per_run[0] == per_run[1] and per_run[0]
    _, _, data = parse(xattr.insights.explore(model, x, methods=METHODS, path=tmp_path / "n.html", show_progress=False))
    assert list(data["dataset"]["views"]) == ["prediction"]  # no labels: by prediction only
    ids = torch.tensor([[3, 4, 5, 0], [7, 1, 2, 9]])
    _, _, data = parse(xattr.insights.explore(EmbedModel().eval(), ids, tokens=[["a"] * 4] * 2, methods={"fa": xattr.feature_ablation},
                                              path=tmp_path / "t.html", show_progress=False))  # fmt: skip
    views = data["dataset"]["views"]  # text: the token view (xattr/insights/_tokens.py), not class means
    assert list(views) == ["prediction"] and set(views["prediction"]["methods"]["fa"][0]) == {"t", "pos", "neg"}
    with pytest.raises(TypeError, match="dataset_view must be True or False"):
        xattr.insights.explore(model, x, path=tmp_path / "e.html", show_progress=False, dataset_view="yes")


def test_non_finite_method_is_left_out_with_a_warning(digits, tmp_path):
    model, x, y = digits
    methods = {"saliency": METHODS["saliency"], "broken": lambda f: lambda v: xattr.saliency(f)(v) / 0.0}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, data = parse(xattr.insights.explore(model, x, labels=y, methods=methods, path=tmp_path / "b.html", show_progress=False))
    assert any("'broken' has non-finite attributions" in str(w.message) for w in caught)
    assert caught[0].filename == __file__  # shown at the user's line
    for v in data["dataset"]["views"].values():
        assert v["methods"]["broken"] is None and len(v["methods"]["saliency"]) == len(v["groups"])
    assert "NaN" in data["dataset"]["skipped"]["broken"]


# the shim of test_insights, with the markup's `hidden` attributes read into the elements
BASE = DOM_SHIM.split("eval(code);")[0] + r"""
for (const m of page.matchAll(/<\w+([^>]*)>/g)) {
  const id = /\sid="([^"]+)"/.exec(m[1]);
  if (id && /\shidden\b/.test(m[1])) ids[id[1]].hidden = true;
}
eval(code);
"""
SHIM = BASE + r"""
const kids = () => ids.dataset.children, out = {};
const set = (id, v) => { if (ids[id].tagName === "input") ids[id].checked = v; else ids[id].value = v; ids[id].fire("change"); };
out.viewShown = !ids["l-view"].hidden; out.byShown0 = !ids["l-by"].hidden;
set("f-view", "dataset");
out.gridHidden = ids.grid.hidden; out.byShown = !ids["l-by"].hidden; out.predHidden = ids["l-pred"].hidden;
out.label = kids().map(c => [+c.attrs["data-group"], c.textContent, c.all("img").map(i => i.attrs.src)]);
set("f-by", "prediction"); out.prediction = kids().map(c => [+c.attrs["data-group"], c.textContent]);
set("f-wrong", true); out.wrongPred = kids().map(c => [+c.attrs["data-group"], c.textContent]);
set("f-method", METHOD); out.method = kids().map(c => c.all("img").map(i => i.attrs.src));
out.count = ids.count.textContent;
kids()[0].fire("click");
out.after = { view: ids["f-view"].value, datasetHidden: ids.dataset.hidden, pred: ids["f-pred"].value,
  cards: ids.grid.children.map(c => +c.attrs["data-index"]) };
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_page_script_shows_class_means(digits_page, tmp_path):
    text, _, data = digits_page
    (tmp_path / "p.html").write_text(text, encoding="utf-8")
    script = SHIM.replace("METHOD", json.dumps("integrated gradients"))
    res = subprocess.run(["node", "-e", script, str(tmp_path / "p.html")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out, views = json.loads(res.stdout), data["dataset"]["views"]
    assert out["viewShown"] and not out["byShown0"] and out["gridHidden"] and out["byShown"] and out["predHidden"]
    lab = views["label"]
    assert [c for c, _, _ in out["label"]] == lab["groups"]
    for (c, txt, srcs), n, x, s in zip(out["label"], lab["n"], lab["x"], lab["methods"]["saliency"]):
        assert f"true {c}: n = {n}" in txt and srcs == [x, s["m"], s["a"]]
    pv = views["prediction"]
    assert [c for c, _ in out["prediction"]] == pv["groups"]
    assert all(f"predicted {c}: n = {n}" in t for (c, t), n in zip(out["prediction"], pv["n"]))
    wp = views["prediction_wrong"]
    assert [c for c, _ in out["wrongPred"]] == wp["groups"] and all("misclassified" in t for _, t in out["wrongPred"])
    assert out["method"] == [[x, s["m"], s["a"]] for x, s in zip(wp["x"], wp["methods"]["integrated gradients"])]
    assert out["count"].startswith(f"class means of {sum(wp['n'])} misclassified examples in {len(wp['groups'])} classes")
    first = wp["groups"][0]  # a click opens the examples view, filtered to that predicted class, misclassified
    assert out["after"]["view"] == "examples" and out["after"]["datasetHidden"] and out["after"]["pred"] == str(first)
    assert out["after"]["cards"] == [e["i"] for e in data["examples"] if e["p"] == first and e["wrong"]]


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_page_script_without_dataset_view(digits, tmp_path):
    model, x, y = digits
    path = xattr.insights.explore(model, x, labels=y, methods=METHODS, path=tmp_path / "o.html", show_progress=False, dataset_view=False)
    probe = BASE + 'console.log(JSON.stringify({view: !ids["l-view"].hidden, n: ids.grid.children.length}));'
    res = subprocess.run(["node", "-e", probe, str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"view": False, "n": len(x)}


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_page_script_draws_tabular_class_means(iris_page, tmp_path):
    text, _, data = iris_page
    (tmp_path / "i.html").write_text(text, encoding="utf-8")
    probe = BASE + r"""
ids["f-view"].value = "dataset"; ids["f-view"].fire("change");
console.log(JSON.stringify(ids.dataset.children.map(c => [+c.attrs["data-group"], c.all("svg").length, c.all("rect").length,
  c.all("text").map(t => t.textContent)])));
"""
    res = subprocess.run(["node", "-e", probe, str(tmp_path / "i.html")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    cards, view = json.loads(res.stdout), data["dataset"]["views"]["label"]
    assert [c for c, *_ in cards] == view["groups"]
    for (_, n_svg, n_rect, texts), card in zip(cards, view["methods"][data["methods"][0]]):
        assert n_svg == 2 and n_rect == 2 * len(data["feature_names"])  # 4 features: all of them, twice
        biggest = max(range(4), key=lambda j: abs(card["m"][j]))
        assert texts[0].endswith(data["feature_names"][biggest])  # the first bar: the largest |mean| (its title)


def test_images_with_channels_and_without(tmp_path):
    torch.manual_seed(0)
    rgb = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 4)).eval()
    x = torch.rand(9, 3, 6, 6)
    methods = {"summed": lambda f: lambda v: xattr.saliency(f)(v).sum(1, keepdim=True), "full": lambda f: xattr.saliency(f)}
    _, _, data = parse(xattr.insights.explore(rgb, x, labels=torch.arange(9) % 4, methods=methods, path=tmp_path / "rgb.html", show_progress=False))
    v = data["dataset"]["views"]["label"]
    assert v["n"] == [3, 2, 2, 2]
    for g in range(4):
        assert decode_png(v["x"][g])[2].shape == (6, 6, 3)
        for name in methods:
            assert decode_png(v["methods"][name][g]["a"])[2].shape == (6, 6, 3)
        # a channel-summed map has the same class-mean sum as the full one
        assert v["methods"]["summed"][g]["s"] == pytest.approx(v["methods"]["full"][g]["s"], rel=1e-5)
    grey = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3)).eval()
    _, _, data = parse(xattr.insights.explore(grey, torch.rand(5, 6, 6), methods={"s": xattr.saliency}, path=tmp_path / "g.html", show_progress=False))
    v = data["dataset"]["views"]["prediction"]
    assert sum(v["n"]) == 5 and all(decode_png(p)[:2] == (6, 6) for p in v["x"])
