"""xattr.compat.captum.insights: Captum Insights' API writing xattr's explorer page.

Every stored number is checked against a slow reference written out here: each example
transformed by hand, one xattr call per example, model and method, on the transformed input and
its baseline, with the class predicted from ``score_func``'s scores.
"""

import json
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

import xattr
from test_insights import DOM_SHIM, decode_png, parse
from xattr._src import demo_model
from xattr.compat.captum import AttributionVisualizer as ExportedVisualizer
from xattr.compat.captum.insights import AttributionVisualizer, Batch
from xattr.compat.captum.insights.attr_vis import AttributionVisualizer as AttrVisVisualizer
from xattr.compat.captum.insights.attr_vis.features import BaseFeature, GeneralFeature, ImageFeature, TextFeature
from xattr.insights import _features, _png

DIGITS = [f"digit {i}" for i in range(10)]


def normalize(x):  # one example, no batch dim, as Insights' input_transforms get it
    return (x - 0.5) / 0.5


def baseline(t):  # on the transformed example
    return torch.full_like(t, -1.0)


def batches(x, y, size):
    for s in range(0, len(x), size):
        yield Batch(inputs=x[s : s + size], labels=y[s : s + size])


@pytest.fixture(scope="module")
def digits():
    data = demo_model.load_digits()
    return demo_model.train(data, epochs=1), data.x_test[:40], data.y_test[:40]


def reference(model, name, x, base, target, kw=None):
    """One example's attribution by the direct xattr call (x, base: (1, ...); target: int or None)."""
    f = xattr.target(model, target) if target is not None else (lambda v: model(v).reshape(len(v)))
    kw = kw or {}
    make = {
        "Integrated Gradients": lambda: xattr.integrated_gradients(f, baselines=base, n_steps=kw.get("n_steps", 25), method="gausslegendre"),
        "Deconvolution": lambda: xattr.deconvolution(f),
        "Deep Lift": lambda: xattr.deep_lift(f, baselines=base),
        "Guided Backprop": lambda: xattr.guided_backprop(f),
        "Input X Gradient": lambda: xattr.input_x_gradient(f),
        "Saliency": lambda: xattr.saliency(f),
        "Feature Ablation": lambda: xattr.feature_ablation(f, baselines=base),
        "Occlusion": lambda: xattr.occlusion(f, baselines=base, sliding_window_shapes=kw.get("sliding_window_shapes"), strides=kw.get("strides", 1)),
    }[name]
    return make()(x)[0]


def test_image_page_matches_direct_calls(digits, tmp_path):
    model, x, y = digits
    x, y = x[:12], y[:12]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x_before = x.clone()
    vis = AttributionVisualizer(
        models=[model], score_func=lambda o: F.softmax(o, 1), classes=DIGITS,
        features=[ImageFeature("Digit", baseline_transforms=[baseline], input_transforms=[normalize])],
        dataset=batches(x, y, 5),
    )  # fmt: skip
    path = vis.export(tmp_path / "sub" / "p.html", max_examples=12)
    _, _, data = parse(path)
    assert data["kind"] == "features" and data["n"] == data["n_examples"] == 12 and data["scores"] == "prob"
    assert data["methods"] == ["Integrated Gradients", "Deconvolution", "Deep Lift", "Guided Backprop", "Input X Gradient", "Saliency", "Feature Ablation"]
    assert data["parts"] == [{"name": "Digit", "type": "image", "categories": None}] and data["models"] == ["model"]
    for e in data["examples"]:
        i = e["i"]
        t = normalize(x[i])[None]
        b = baseline(normalize(x[i]))[None]
        with torch.no_grad():
            probs = F.softmax(model(t), 1)[0].double()
        pred = int(probs.argmax())
        assert (e["p"], e["t"], e["y"], e["wrong"]) == (pred, pred, int(y[i]), pred != int(y[i]))
        assert e["conf"] == pytest.approx(float(probs[pred]), rel=1e-5)
        top_p, top_c = probs.topk(4)
        assert [c for c, _ in e["top"]] == top_c.tolist()
        np.testing.assert_allclose([p for _, p in e["top"]], top_p.numpy(), rtol=1e-5)
        assert decode_png(e["x"][0])[:2] == (8, 8) and e["x"][0] == _png.input_png(x[i])  # the original image is shown
        for name in data["methods"]:
            want = reference(model, name, t, b, pred)
            a = e["a"][name]
            assert a["sum"] == pytest.approx(float(want.sum()), rel=1e-4, abs=1e-5), (name, i)
            assert a["f"][0]["png"] == _png.heatmap_png(want, x[i]), (name, i)
            assert a["contrib"] == [float(want.sum().sign())]  # one feature: all of it
    assert data["misclassified"] == sum(e["wrong"] for e in data["examples"])
    # the generator is spent; the kept batches serve another call, with Occlusion's arguments
    occ = {"sliding_window_shapes": "1 3 3", "strides": (1, 2, 2)}
    _, _, data = parse(vis.export(tmp_path / "o.html", methods={"Occlusion": occ, "IntegratedGradients": {"n_steps": 8}}, max_examples=7))
    assert data["methods"] == ["Occlusion", "Integrated Gradients"] and data["n"] == 7
    for e in data["examples"]:
        t, b = normalize(x[e["i"]])[None], baseline(normalize(x[e["i"]]))[None]
        want = reference(model, "Occlusion", t, b, e["p"], {"sliding_window_shapes": (1, 3, 3), "strides": (1, 2, 2)})
        assert e["a"]["Occlusion"]["sum"] == pytest.approx(float(want.sum()), rel=1e-4, abs=1e-5)
        want = reference(model, "Integrated Gradients", t, b, e["p"], {"n_steps": 8})
        assert e["a"]["Integrated Gradients"]["sum"] == pytest.approx(float(want.sum()), rel=1e-4, abs=1e-5)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()) and not model.training
    assert torch.equal(x, x_before)


class Multi(nn.Module):
    """An image (1, 8, 8), a general row (4,) and token embeddings (T, 5), plus a scale argument."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.img, self.row, self.txt = nn.Linear(64, 3), nn.Linear(4, 3), nn.Linear(5, 3)

    def forward(self, image, row, emb, scale):
        h = self.img(image.flatten(1)) + self.row(row) + self.txt(torch.relu(emb).mean(1))
        return h * scale[:, None]


VOCAB = ["<pad>", "good", "bad", "film", "plot", "very", "dull", "fun"]


@pytest.fixture(scope="module")
def multi():
    torch.manual_seed(3)
    emb = nn.Embedding(len(VOCAB), 5)
    n = 6
    image, row = torch.rand(n, 1, 8, 8), torch.randn(n, 4)
    ids = torch.tensor([[1, 3, 0, 0], [2, 4, 6, 0], [5, 7, 3, 0], [1, 1, 4, 3], [6, 3, 0, 0], [7, 4, 2, 5]])
    scale = torch.linspace(0.5, 2.0, n)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    return [Multi(0).eval(), Multi(1).eval()], emb, (image, row, ids), scale, labels


def multi_visualizer(multi, **kw):
    models, emb, (image, row, ids), scale, labels = multi

    def itos(t):  # ids (1, T) -> words, padding left out
        return [VOCAB[i] for i in t.squeeze(0).tolist() if i != 0]

    features = [
        ImageFeature("Picture", baseline_transforms=[], input_transforms=[]),
        GeneralFeature("Stats", categories=["a", "b", "c", "d"]),
        TextFeature("Review", baseline_transforms=[lambda e: emb(torch.zeros(len(e), dtype=torch.long))],
                    input_transforms=[lambda t: emb(t)], visualization_transform=itos),
    ]  # fmt: skip

    def data():
        for s in (0, 4):
            yield Batch((image[s : s + 4], row[s : s + 4], ids[s : s + 4]), labels[s : s + 4], additional_args=scale[s : s + 4])

    return AttributionVisualizer(models=models, classes=["neg", "mixed", "pos"], features=features, dataset=data(), **kw)


def test_multiple_models_and_features(multi, tmp_path):
    models, emb, (image, row, ids), scale, labels = multi
    path = multi_visualizer(multi).export(tmp_path / "m.html", methods=["Integrated Gradients", "Saliency", "Feature Ablation"])
    _, _, data = parse(path)
    assert data["n_examples"] == 6 and data["n"] == 12 and data["models"] == ["model 0", "model 1"] and data["scores"] == "raw"
    assert [(e["i"], e["m"]) for e in data["examples"]] == [(i, m) for i in range(6) for m in range(2)]
    assert [p["type"] for p in data["parts"]] == ["image", "general", "text"] and data["parts"][1]["categories"] == ["a", "b", "c", "d"]
    for e in data["examples"]:
        i, model = e["i"], models[e["m"]]
        with torch.no_grad():
            xs = (image[i : i + 1], row[i : i + 1], emb(ids[i : i + 1]))
            bs = (torch.zeros_like(xs[0]), torch.zeros_like(xs[1]), emb(torch.zeros(1, 4, dtype=torch.long)))
            logits = model(*xs, scale[i : i + 1])[0]
        pred = int(logits.argmax())
        assert e["p"] == pred and e["y"] == int(labels[i]) and e["conf"] == pytest.approx(float(logits[pred]), rel=1e-5)
        assert e["x"][1] == pytest.approx(row[i].tolist(), rel=1e-5) and e["x"][2] == [VOCAB[j] for j in ids[i].tolist() if j != 0]
        for name in data["methods"]:
            f = xattr.target(model, pred)
            fn = {"Integrated Gradients": lambda: xattr.integrated_gradients(f, argnums=(0, 1, 2), baselines=bs, n_steps=25),
                  "Saliency": lambda: xattr.saliency(f, argnums=(0, 1, 2)),
                  "Feature Ablation": lambda: xattr.feature_ablation(f, argnums=(0, 1, 2), baselines=bs)}[name]()  # fmt: skip
            want = fn(*xs, scale[i : i + 1])
            a = e["a"][name]
            sums = [float(w.sum()) for w in want]
            assert a["sum"] == pytest.approx(sum(sums), rel=1e-4, abs=1e-6)
            np.testing.assert_allclose(a["contrib"], np.array(sums) / np.abs(sums).sum(), rtol=1e-4, atol=1e-6)
            assert a["f"][0]["png"] == _png.heatmap_png(want[0][0], image[i])
            np.testing.assert_allclose(a["f"][1]["v"], want[1][0].numpy(), rtol=1e-4, atol=1e-6)
            per_token = [float(want[2][0, k].sum()) for k in range(4)]  # explicit sum over the embedding
            np.testing.assert_allclose(a["f"][2]["v"], per_token, rtol=1e-4, atol=1e-6)
    assert "2 models" in open(path).read()


def test_score_func_picks_the_class_but_the_model_is_attributed(digits, tmp_path):
    model, x, y = digits
    vis = AttributionVisualizer(model, DIGITS, ImageFeature("Digit", None, None), batches(x[:6], y[:6], 6), score_func=lambda o: -o)
    _, _, data = parse(vis.export(tmp_path / "s.html", methods=["Saliency", "Deep Lift"]))
    with torch.no_grad():
        logits = model(x[:6])
    for e in data["examples"]:
        least = int(logits[e["i"]].argmin())  # the arg-max of -logits
        assert e["p"] == e["t"] == least and e["conf"] == pytest.approx(-float(logits[e["i"], least]), rel=1e-5)
        for name in ("Saliency", "Deep Lift"):
            want = reference(model, name, x[e["i"] : e["i"] + 1], torch.zeros(1, 1, 8, 8), least)
            assert e["a"][name]["sum"] == pytest.approx(float(want.sum()), rel=1e-4, abs=1e-6)
    _, _, data = parse(vis.export(tmp_path / "t.html", methods=["Saliency"], target="true"))
    assert [e["t"] for e in data["examples"]] == y[:6].tolist() and data["target"] == "true class"


def test_use_label_for_attr_false_explains_the_single_output(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).eval()
    rows = torch.randn(9, 4)
    vis = AttributionVisualizer([model], ["neg", "pos"], [GeneralFeature("x", ["a", "b", "c", "d"])],
                                [Batch(rows, None)], score_func=torch.sigmoid, use_label_for_attr=False)  # fmt: skip
    _, _, data = parse(vis.export(tmp_path / "b.html", methods=["Integrated Gradients", "Feature Ablation"]))
    assert data["labels"] is False and data["target"] == "model's output"
    for e in data["examples"]:
        r = rows[e["i"] : e["i"] + 1]
        p = float(torch.sigmoid(model(r))[0, 0].detach())
        assert e["p"] == int(round(p)) and e["top"] == [[int(round(p)), pytest.approx(p, rel=1e-5)]]
        for name in data["methods"]:
            want = reference(model, name, r, torch.zeros(1, 4), None)
            np.testing.assert_allclose(e["a"][name]["f"][0]["v"], want.numpy(), rtol=1e-4, atol=1e-6)
    # the sums are complete here: integrated gradients add up to f(x) - f(0)
    with torch.no_grad():
        gaps = [e["a"]["Integrated Gradients"]["sum"] - float(model(rows[e["i"]][None]) - model(torch.zeros(1, 4))) for e in data["examples"]]
    assert max(map(abs, gaps)) < 1e-4
    vis = AttributionVisualizer([nn.Linear(4, 2)], ["a", "b"], [GeneralFeature("x", list("abcd"))], [Batch(rows, None)], use_label_for_attr=False)
    with pytest.raises(ValueError, match="use_label_for_attr=False"):
        vis.export(tmp_path / "c.html")


def test_render_serve_and_notebook(digits, tmp_path, capsys, monkeypatch):
    model, x, y = digits
    invert = lambda t: 1 - t  # noqa: E731  (on the original example, (1, C, H, W))
    vis = AttributionVisualizer([model], DIGITS, [ImageFeature("Digit", [], [], visualization_transform=invert)], batches(x[:4], y[:4], 4))
    out = vis.serve(debug=True, port=6080, path=tmp_path / "served.html", methods=["Saliency"], show_progress=True)
    captured = capsys.readouterr()
    assert out == str(tmp_path / "served.html") and str(tmp_path / "served.html") in captured.out and "xattr insights" in captured.err
    _, _, data = parse(out)
    for e in data["examples"]:
        i = e["i"]
        assert e["x"][0] == _png.input_png(1 - x[i]) != _png.input_png(x[i])  # what is shown: the transformed original
        want = xattr.saliency(xattr.target(model, e["p"]))(x[i : i + 1])[0]  # what is attributed: the model's input
        assert e["a"]["Saliency"]["f"][0]["png"] == _png.heatmap_png(want, 1 - x[i])
    monkeypatch.setitem(sys.modules, "IPython", None)  # no IPython: the path comes back, nothing is shown
    assert vis.render(path=tmp_path / "r.html", methods=["Saliency"]) == str(tmp_path / "r.html")
    shown = []
    display = types.ModuleType("IPython.display")
    display.HTML, display.display = (lambda s: ("HTML", s)), shown.append
    ipython = types.ModuleType("IPython")
    ipython.get_ipython, ipython.display = (lambda: types.SimpleNamespace(kernel=object())), display
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    path = vis.render(path=tmp_path / "n.html", methods=["Saliency"], height=500)
    page = open(path, encoding="utf-8").read()
    assert len(shown) == 1 and shown[0][0] == "HTML" and "height:500px" in shown[0][1]
    import html as _html

    srcdoc = shown[0][1].split('srcdoc="', 1)[1].split('" style=', 1)[0]
    assert '"' not in srcdoc and _html.unescape(srcdoc) == page


def test_one_pass_generators_and_max_examples(digits, tmp_path):
    model, x, y = digits

    def ends_badly():  # Insights' example: next() on a spent loader inside a generator (PEP 479)
        it = iter([(x[:3], y[:3]), (x[3:5], y[3:5])])
        while True:
            xb, yb = next(it)
            yield Batch(inputs=xb, labels=yb)

    vis = AttributionVisualizer([model], DIGITS, [ImageFeature("Digit", [], [])], ends_badly())
    _, _, data = parse(vis.export(tmp_path / "a.html", methods=["Saliency"], max_examples=50))
    assert data["n"] == 5 and [e["i"] for e in data["examples"]] == list(range(5))


@settings(max_examples=8, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4), limit=st.integers(1, 12))
def test_max_examples_reads_the_first_examples_in_order(sizes, limit, tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Linear(3, 2).eval()
    rows = torch.randn(sum(sizes), 3)
    starts = np.cumsum([0] + sizes)
    scale = torch.arange(1.0, len(rows) + 1)
    data = [Batch(rows[s:e], None, additional_args=(scale[s:e], "unused")) for s, e in zip(starts[:-1], starts[1:])]
    vis = AttributionVisualizer(lambda r, k, _: model(r) * k[:, None], ["a", "b"], GeneralFeature("r", list("xyz")), iter(data))
    path = vis.export(tmp_path_factory.mktemp("h") / "p.html", methods=["Saliency"], max_examples=limit)
    _, _, page = parse(path)
    n = min(limit, len(rows))
    assert [e["i"] for e in page["examples"]] == list(range(n))
    for e in page["examples"]:
        i = e["i"]
        want = xattr.saliency(xattr.target(lambda r: model(r) * scale[i], e["p"]))(rows[i : i + 1])[0]
        np.testing.assert_allclose(e["a"]["Saliency"]["f"][0]["v"], want.numpy(), rtol=1e-5, atol=1e-7)
        assert e["x"][0] == pytest.approx(rows[i].tolist(), rel=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=5), st.floats(0.01, 100))
def test_contributions_are_shares_of_the_l1_norm(sums, scale):
    c = _features.contributions(sums)
    total = sum(abs(s) for s in sums)
    if total == 0:
        assert c == [0.0] * len(sums)
        return
    assert sum(abs(v) for v in c) == pytest.approx(1.0, rel=1e-5)
    assert all(np.sign(v) == np.sign(s) or abs(s) / total < 1e-6 for v, s in zip(c, sums))
    assert _features.contributions([s * scale for s in sums]) == pytest.approx(c, rel=1e-4, abs=1e-6)  # scale-free


def test_integer_inputs_keep_the_perturbation_methods(tmp_path):
    torch.manual_seed(0)
    emb, lin = nn.Embedding(8, 4), nn.Linear(4, 2)
    model = lambda ids: lin(emb(ids).mean(1))  # noqa: E731
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    feature = TextFeature("Words", [lambda t: torch.zeros_like(t)], [], lambda t: [VOCAB[i] for i in t[0].tolist()])
    vis = AttributionVisualizer(model, ["a", "b"], feature, [Batch(ids, torch.tensor([0, 1]))])
    with pytest.warns(UserWarning, match="gradient methods"):
        _, _, data = parse(vis.export(tmp_path / "w.html"))
    assert data["methods"] == ["Feature Ablation"]
    for e in data["examples"]:
        want = xattr.feature_ablation(xattr.target(model, e["p"]), baselines=0)(ids[e["i"] : e["i"] + 1])[0]
        np.testing.assert_allclose(e["a"]["Feature Ablation"]["f"][0]["v"], want.numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(TypeError, match="Saliency needs floating-point"):
        vis.export(tmp_path / "w2.html", methods=["Saliency"])


def test_errors(digits, tmp_path):
    model, x, y = digits
    img = ImageFeature("Digit", [], [])

    def vis(**kw):
        args = dict(models=[model], classes=DIGITS, features=[img], dataset=[Batch(x[:3], y[:3])])
        return AttributionVisualizer(**{**args, **kw})

    cases = [  # (constructor keywords, export keywords, error, message)
        (dict(features=[img, img]), {}, ValueError, "one input tensor per feature \\(2\\)"),
        (dict(classes=["a", "b"]), {}, ValueError, "labels must be class indices in \\[0, 2\\)"),
        (dict(classes=["a", "b"], dataset=[Batch(x[:3], None)]), {}, ValueError, "scores must be \\(N, C\\) = \\(3, 2\\)"),
        ({}, dict(methods=["Grad-CAM"]), ValueError, "unknown method 'Grad-CAM'"),
        ({}, dict(methods=["Occlusion"]), ValueError, "Occlusion needs sliding_window_shapes="),
        ({}, dict(methods={"Saliency": {"abs": False}}), ValueError, "Saliency takes no arguments"),
        ({}, dict(methods="Saliency"), TypeError, "methods must be a non-empty list"),
        ({}, dict(target="best"), ValueError, "target must be 'predicted' or 'true'"),
        ({}, dict(max_examples=0), ValueError, "max_examples must be a positive int"),
        (dict(dataset=[Batch(x[:3], None)]), dict(target="true"), ValueError, "every Batch needs labels"),
        (dict(dataset=[]), {}, ValueError, "the dataset gave no examples"),
        (dict(dataset=[(x[:3], y[:3])]), {}, TypeError, "must yield Batch"),
        (dict(dataset=[Batch(x[:3], y[:2])]), {}, ValueError, "labels must be 3 integer class indices"),
        (dict(features=[GeneralFeature("g", ["a"])], dataset=[Batch(torch.rand(2, 3), None)]), {}, ValueError, "1 categories for inputs of 3"),
        (dict(features=[TextFeature("t", [], [], lambda t: ["w"] * 9)], dataset=[Batch(torch.rand(2, 3), None)], models=[nn.Linear(3, 10)]),
         dict(methods=["Saliency"]), ValueError, "9 words for 3 tokens"),
        (dict(features=[ImageFeature("Digit", [], [lambda t: t[..., : 4 + int(t.sum()) % 2]])]), {}, ValueError, "different shapes"),
    ]  # fmt: skip
    for init, kw, error, message in cases:
        with pytest.raises(error, match=message):
            vis(**init).export(tmp_path / "x.html", **kw)
    assert not (tmp_path / "x.html").exists()
    constructor_cases = [
        (dict(features=[BaseFeature("b", None, None, None)]), TypeError, "has no drawing"),
        (dict(features=["Digit"]), TypeError, "features must be ImageFeature"),
        (dict(models=[]), TypeError, "models must be a model"),
        (dict(classes="0123"), TypeError, "classes must be a non-empty list"),
        (dict(dataset=3), TypeError, "dataset must be an iterable of Batch"),
        (dict(score_func="softmax"), TypeError, "score_func must be a callable"),
        (dict(use_label_for_attr=1), TypeError, "use_label_for_attr must be a bool"),
    ]
    for init, error, message in constructor_cases:
        with pytest.raises(error, match=message):
            vis(**init)
    with pytest.raises(TypeError, match="input_transforms must be a callable"):
        ImageFeature("x", [], ["normalize"])
    with pytest.raises(TypeError, match="categories must be a list"):
        GeneralFeature("x", "abc")


def test_exports_and_import_paths():
    import xattr.compat.captum as cc

    assert ExportedVisualizer is AttributionVisualizer is AttrVisVisualizer
    for name in ("AttributionVisualizer", "Batch", "ImageFeature", "TextFeature", "GeneralFeature", "BaseFeature"):
        assert name in cc.__all__ and getattr(cc, name) is getattr(sys.modules["xattr.compat.captum.insights"], name)


FEATURES_SHIM = DOM_SHIM.replace(
    "console.log(JSON.stringify(out));",
    """ids["f-pred"].value = ""; ids["f-pred"].fire("change");
ids["f-model"].value = "1"; ids["f-model"].fire("change"); out.model1 = ids.grid.children.map(c => c.textContent);
out.modelShown = !ids["l-model"].hidden;
ids.grid.children[0].fire("click"); out.detail = ids["detail-body"].textContent;
console.log(JSON.stringify(out));""",
)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_page_script_shows_models_and_parts(multi, tmp_path):
    path = multi_visualizer(multi).export(tmp_path / "m.html", methods=["Saliency", "Feature Ablation"])
    _, _, data = parse(path)
    res = subprocess.run(["node", "-e", FEATURES_SHIM, str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["all"] == [e["i"] for e in data["examples"]] and out["modelShown"]
    assert out["pred1"] == [e["i"] for e in data["examples"] if e["p"] == 1]
    assert len(out["model1"]) == 6 and all("model 1" in t for t in out["model1"])
    assert out["open"] and out["closed"] and len(out["sections"]) == 2
    assert all(s.count("contribution") == 3 for s in out["sections"])  # one line per part
    for word in ("Picture", "Stats", "Review", "good", "film", "model 1"):
        assert word in out["detail"]
