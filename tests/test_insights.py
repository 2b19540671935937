"""xattr.insights.explore: the static explorer page and the numbers in its payload.

The payload's numbers are checked against the slow reference (each method called on one example
at a time, written out here), the page's markup with a strict tag-balance parser, every picture
by decoding its PNG, and (where node is installed) the page's script with a tiny DOM stand-in.
"""

import base64
import json
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from torch import nn

import xattr
from xattr._src import demo_model
from xattr.insights import _png

VOID = {"meta", "input", "img", "br", "hr", "link"}


class StrictPage(HTMLParser):
    """Records tag-balance errors and the text of each script element (by id)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.scripts, self.tags = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.scripts += [[dict(attrs).get("id"), ""]] if tag == "script" else []
        self.stack += [] if tag in VOID else [tag]

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "script":
            self.scripts[-1][1] += data


def parse(path):
    text, p = open(path, encoding="utf-8").read(), StrictPage()
    p.feed(text)
    assert p.errors == [] and p.stack == [], (p.errors, p.stack)
    payloads = [body for sid, body in p.scripts if sid == "xattr-data"]
    assert len(payloads) == 1 and len(p.scripts) == 2
    return text, p, json.loads(payloads[0])


def decode_png(uri):
    """A data URI -> (width, height, pixels (h, w, channels) uint8), checking signature and CRCs."""
    head = "data:image/png;base64,"
    assert uri.startswith(head)
    raw = base64.b64decode(uri[len(head):], validate=True)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(raw):
        (n,) = struct.unpack(">I", raw[pos : pos + 4])
        tag, data = raw[pos + 4 : pos + 8], raw[pos + 8 : pos + 8 + n]
        assert struct.unpack(">I", raw[pos + 8 + n : pos + 12 + n])[0] == zlib.crc32(tag + data) & 0xFFFFFFFF
        chunks[tag] = chunks.get(tag, b"") + data
        pos += 12 + n
    w, h, depth, ctype = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8 and ctype in (0, 2) and b"IEND" in chunks
    ch = 1 if ctype == 0 else 3
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + w * ch)
    assert (rows[:, 0] == 0).all()
    return w, h, rows[:, 1:].reshape(h, w, ch)


@pytest.fixture(scope="module")
def digits():
    data = demo_model.load_digits()
    model = demo_model.train(data, epochs=1)
    return model, data.x_test[:24], data.y_test[:24]


@pytest.fixture(scope="module")
def digits_page(digits, tmp_path_factory):
    model, x, y = digits
    path = tmp_path_factory.mktemp("insights") / "sub" / "digits.html"
    out = xattr.insights.explore(model, x, labels=y, path=path, show_progress=False)
    assert out == str(path)
    return parse(path)


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris

    data = load_iris()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(data.target)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x[::5], y[::5], list(data.feature_names), list(data.target_names)


def test_page_is_well_formed_and_offline(digits_page):
    text, page, data = digits_page
    assert text.startswith("<!DOCTYPE html>") and "xattr explorer" in text
    assert not [t for t, a in page.tags if t in ("link", "iframe") or (t == "script" and "src" in a)]
    assert "https://" not in text and 'src="http' not in text  # nothing loaded from the network
    ids = {a.get("id") for _, a in page.tags}
    assert {"f-pred", "f-true", "f-wrong", "f-index", "f-method", "grid", "detail"} <= ids


def test_payload_predictions_match_the_model(digits, digits_page):
    model, x, y = digits
    _, _, data = digits_page
    with torch.no_grad():
        probs = torch.softmax(model(x).double(), 1)
    pred = probs.argmax(1)
    assert data["n"] == len(x) == len(data["examples"]) and data["kind"] == "image"
    assert [e["i"] for e in data["examples"]] == list(range(len(x)))
    assert [e["p"] for e in data["examples"]] == pred.tolist()
    assert [e["y"] for e in data["examples"]] == y.tolist()
    assert [e["t"] for e in data["examples"]] == pred.tolist()  # target="predicted"
    assert [e["wrong"] for e in data["examples"]] == (pred != y).tolist()
    assert data["misclassified"] == int((pred != y).sum()) > 0
    for e, p in zip(data["examples"], probs):
        top_p, top_c = p.topk(3)
        assert [c for c, _ in e["top"]] == top_c.tolist()
        np.testing.assert_allclose([q for _, q in e["top"]], top_p.numpy(), rtol=1e-5)
        assert e["conf"] == pytest.approx(float(p.max()), rel=1e-5)


def test_image_sums_match_per_example_calls(digits, digits_page):
    model, x, _ = digits
    _, _, data = digits_page
    reference = {
        "saliency": lambda f: xattr.saliency(f),
        "integrated gradients": lambda f: xattr.integrated_gradients(f, n_steps=32),
        "occlusion 2x2": lambda f: xattr.occlusion(f, sliding_window_shapes=(1, 2, 2), strides=(1, 1, 1)),
        "guided backprop": lambda f: xattr.guided_backprop(f),
    }
    assert data["methods"] == list(reference)
    for name, make in reference.items():
        for e in data["examples"]:
            attr = make(xattr.target(model, e["p"]))(x[e["i"] : e["i"] + 1])
            assert e["a"][name]["sum"] == pytest.approx(float(attr.sum()), rel=1e-4, abs=1e-5), (name, e["i"])
    e = data["examples"][5]
    attr = xattr.saliency(xattr.target(model, e["p"]))(x[5:6])[0]
    assert e["a"]["saliency"]["png"] == _png.heatmap_png(attr, x[5])  # the picture is of this map


def test_every_picture_is_a_png_of_the_input_size(digits, digits_page):
    model, x, _ = digits
    _, _, data = digits_page
    for e in data["examples"]:
        w, h, px = decode_png(e["x"])
        assert (w, h, px.shape[-1]) == (8, 8, 1)
        shown = 255 - np.round(xattr.viz.to_image(x[e["i"]]) * 255)  # dark ink on white
        assert np.abs(px[..., 0].astype(int) - shown).max() <= 1
        for name, a in e["a"].items():
            assert decode_png(a["png"])[:2] == (8, 8) and decode_png(a["png"])[2].shape[-1] == 3


def test_channel_less_images_and_no_relu(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 5)).eval()
    x = torch.rand(7, 6, 6)
    path = xattr.insights.explore(model, x, path=tmp_path / "p.html", show_progress=False)
    _, _, data = parse(path)
    assert data["methods"] == ["saliency", "integrated gradients", "occlusion 2x2"]  # no ReLU: no guided backprop
    assert data["labels"] is False and all(e["y"] is None and e["wrong"] is None for e in data["examples"])
    assert all(decode_png(e["a"]["occlusion 2x2"]["png"])[:2] == (6, 6) for e in data["examples"])


def test_deterministic_and_chunk_invariant(digits, tmp_path):
    model, x, y = digits
    methods = {"saliency": xattr.saliency, "ablation": lambda f: xattr.feature_ablation(f)}
    pages = [
        open(xattr.insights.explore(model, x, labels=y, methods=methods, path=tmp_path / f"{i}.html",
                                    chunk_size=c, show_progress=False)).read()  # fmt: skip
        for i, c in enumerate((None, None, 5))
    ]
    assert pages[0] == pages[1] == pages[2]


def test_targets_true_and_fixed_class_and_progress(digits, tmp_path, capsys):
    model, x, y = digits
    methods = {"saliency": xattr.saliency}
    _, _, data = parse(xattr.insights.explore(model, x, labels=y, target="true", methods=methods, path=tmp_path / "t.html", show_progress=False))
    assert [e["t"] for e in data["examples"]] == y.tolist() and data["target"] == "true class"
    _, _, data = parse(xattr.insights.explore(model, x, target=2, methods=methods, path=tmp_path / "c.html", show_progress=False))
    assert {e["t"] for e in data["examples"]} == {2}
    want = xattr.saliency(xattr.target(model, 2))(x).sum((1, 2, 3))
    np.testing.assert_allclose([e["a"]["saliency"]["sum"] for e in data["examples"]], want.numpy(), rtol=1e-5)
    assert "xattr explore" not in capsys.readouterr().err
    xattr.insights.explore(model, x[:3], methods=methods, path=tmp_path / "p.html")  # show_progress=True
    assert "xattr explore" in capsys.readouterr().err


def test_tabular_values_match_per_example_calls(iris, tmp_path):
    model, x, y, names, classes = iris
    path = xattr.insights.explore(model, x, labels=y, classes=classes, feature_names=names, path=tmp_path / "iris.html", show_progress=False)
    _, _, data = parse(path)
    assert data["kind"] == "tabular" and data["feature_names"] == names and data["classes"] == classes
    assert data["methods"] == ["saliency", "integrated gradients", "feature ablation", "shapley value sampling"]
    reference = {
        "saliency": lambda f: xattr.saliency(f),
        "integrated gradients": lambda f: xattr.integrated_gradients(f, n_steps=32),
        "feature ablation": lambda f: xattr.feature_ablation(f),
    }
    for e in data["examples"]:
        np.testing.assert_allclose(e["x"], x[e["i"]].numpy(), rtol=1e-5)
        for name, make in reference.items():
            want = make(xattr.target(model, e["p"]))(x[e["i"] : e["i"] + 1])[0]
            np.testing.assert_allclose(e["a"][name]["v"], want.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)
            assert e["a"][name]["sum"] == pytest.approx(float(want.sum()), rel=1e-4, abs=1e-6)
    # seeded Shapley sampling: one batched call draws per example position; each row is efficient
    pred = torch.tensor([e["p"] for e in data["examples"]])
    f = xattr.target(model, pred)
    phi = xattr.shapley_value_sampling(f, n_samples=25, generator=0)(x)
    stored = torch.tensor([e["a"]["shapley value sampling"]["v"] for e in data["examples"]], dtype=torch.float64)
    np.testing.assert_allclose(stored.numpy(), phi.numpy(), rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(stored.sum(1).numpy(), (f(x) - f(torch.zeros_like(x))).numpy(), atol=1e-4)


class EmbedModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.out = nn.Embedding(12, 6), nn.Linear(6, 3)

    def forward(self, ids):
        return self.out(torch.tanh(self.emb(ids)).mean(1))


class Tokenizer:
    pad_token_id = 0

    def convert_ids_to_tokens(self, ids):
        return ["<pad>" if i == 0 else f"w{i}" for i in ids]


def test_text_tokens_and_scores(tmp_path):
    model = EmbedModel().eval()
    ids = torch.tensor([[3, 4, 5, 0], [7, 1, 2, 9], [11, 10, 0, 0]])
    tokens = [["the", "<b>cat</b>", "sat", "<pad>"], ["a", "b", "c", "d"], ["x", "y"]]
    methods = {"feature ablation": xattr.feature_ablation, "layer IG": lambda f: xattr.layer_integrated_gradients(xattr.at_layer(f, model.emb))}
    text, _, data = parse(xattr.insights.explore(model, ids, tokens=tokens, methods=methods, path=tmp_path / "t.html", show_progress=False))
    assert data["kind"] == "text" and [e["x"] for e in data["examples"]] == tokens
    assert "<b>cat" not in text and "\\u003cb\\u003ecat" in text
    for e in data["examples"]:
        i, n = e["i"], len(tokens[e["i"]])
        f = xattr.target(model, e["p"])
        want = xattr.feature_ablation(f)(ids[i : i + 1])[0, :n]
        np.testing.assert_allclose(e["a"]["feature ablation"]["v"], want.numpy(), rtol=1e-4, atol=1e-6)
        assert e["a"]["feature ablation"]["sum"] == pytest.approx(float(xattr.feature_ablation(f)(ids[i : i + 1]).sum()), rel=1e-4, abs=1e-6)
        lig_want = xattr.layer_integrated_gradients(xattr.at_layer(f, model.emb))(ids[i : i + 1])[0].sum(-1)[:n]
        np.testing.assert_allclose(e["a"]["layer IG"]["v"], lig_want.numpy(), rtol=1e-4, atol=1e-6)
    _, _, data = parse(xattr.insights.explore(model, ids, tokens=Tokenizer(), path=tmp_path / "d.html", show_progress=False))
    assert data["methods"] == ["feature ablation", "shapley value sampling"]
    assert data["examples"][2]["x"] == ["w11", "w10", "<pad>", "<pad>"] and len(data["examples"][2]["a"]["feature ablation"]["v"]) == 4


def test_strings_are_escaped(iris, tmp_path):
    model, x, y, _, _ = iris
    evil = ["<script>alert(1)</script>", "a&b", "</script><!--"]
    names = ["<img src=x onerror=alert(2)>", "f1", "f2", "f3"]
    path = xattr.insights.explore(model, x, labels=y, classes=evil, feature_names=names, title="<script>t</script>",
                                  methods={"</script><b>m": xattr.saliency}, path=tmp_path / "e.html", show_progress=False)  # fmt: skip
    text, page, data = parse(path)
    for raw in ("<script>alert", "</script><b>", "</script><!--", "<img src=x", "<script>t"):
        assert raw not in text
    assert text.count("<script") == 2 and "&lt;script&gt;t&lt;/script&gt;" in text
    assert data["classes"] == evil and data["feature_names"] == names and data["methods"] == ["</script><b>m"]
    assert data["title"] == "<script>t</script>"


def test_errors(digits, iris, tmp_path):
    model, x, y = digits
    flat = {"ok": xattr.saliency, "flat": lambda f: lambda v: xattr.saliency(f)(v).flatten(1)}
    cases = [  # (model, inputs, keywords, error, message)
        (model, x, dict(labels=y[:5]), ValueError, "labels must have one class per example, 24"),
        (model, x, dict(target="true"), ValueError, "target='true'.*labels="),
        (model, x, dict(kind="video"), ValueError, "kind must be one of"),
        (model, torch.rand(2, 1, 1, 8, 8), {}, ValueError, "cannot tell what kind"),
        (model, x, dict(methods=flat), ValueError, "method 'flat'.*shape \\(24, 64\\)"),
        (model, x, dict(methods={"pair": lambda f: xattr.integrated_gradients(f, return_delta=True)}), TypeError, "method 'pair' must return one tensor"),
        (lambda v: model(v)[..., None], x, {}, ValueError, "logits of shape \\(B, C\\).*\\(24, 10, 1\\)"),
        (model, x, dict(classes=["a", "b", "c"]), ValueError, "got 3 class names"),
        (model, x, dict(labels=torch.full((24,), 10)), ValueError, "labels must be class indices in \\[0, 10\\)"),
        (model, x, dict(target=11), ValueError, "target class 11"),
        (model, x, dict(target="best"), ValueError, "target must be 'predicted', 'true'"),
        (model, x, dict(methods={}), TypeError, "methods must be a non-empty dict"),
        (EmbedModel(), torch.zeros(2, 3, dtype=torch.long), {}, ValueError, "tokens="),
        (iris[0], iris[1], dict(feature_names=["a", "b"]), ValueError, "got 2 feature_names"),
    ]
    for fn, inputs, kw, error, message in cases:
        with pytest.raises(error, match=message):
            xattr.insights.explore(fn, inputs, path=tmp_path / "x.html", show_progress=False, **kw)
    assert not (tmp_path / "x.html").exists()


DOM_SHIM = r"""
const fs = require("fs"), page = fs.readFileSync(process.argv[1], "utf8");
const payload = /<script type="application\/json" id="xattr-data">([\s\S]*?)<\/script>/.exec(page)[1];
const code = /<script>([\s\S]*?)<\/script>/.exec(page)[1];
class El {
  constructor(tag) { Object.assign(this, { tagName: tag, children: [], attrs: {}, style: {}, on: {}, _t: "", className: "" });
    const self = this; this.classList = { add(c) { self.className += " " + c; } }; }
  set textContent(t) { this._t = String(t); this.children = []; }
  get textContent() { return this._t + this.children.map(c => c.textContent).join(""); }
  appendChild(c) { this.children.push(c); return c; }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  addEventListener(ev, fn) { (this.on[ev] = this.on[ev] || []).push(fn); }
  fire(ev) { (this.on[ev] || []).forEach(fn => fn({ target: this })); }
  focus() {}
  all(tag, out = []) { if (this.tagName === tag) out.push(this); this.children.forEach(c => c.all(tag, out)); return out; }
}
const ids = {}, doc = {};
for (const m of page.matchAll(/<(\w+)[^>]*\sid="([^"]+)"/g)) ids[m[2]] = new El(m[1]);
ids["xattr-data"]._t = payload;
global.document = { getElementById: id => ids[id], createElement: t => new El(t), createElementNS: (n, t) => new El(t),
  addEventListener: (ev, fn) => { doc[ev] = fn; } };
eval(code);
const cards = () => ids.grid.children.map(c => +c.attrs["data-index"]), out = { all: cards() };
ids["f-wrong"].checked = true; ids["f-wrong"].fire("change"); out.wrong = cards();
ids["f-wrong"].checked = false; ids["f-wrong"].fire("change");
ids["f-index"].value = "3, 10-12"; ids["f-index"].fire("input"); out.index = cards();
ids["f-index"].value = ""; ids["f-index"].fire("input"); ids["f-pred"].value = "1"; ids["f-pred"].fire("change"); out.pred1 = cards();
ids.grid.children[0].fire("click"); out.open = !ids.detail.hidden;
out.sections = ids["detail-body"].all("section").map(s => s.textContent);
doc.keydown({ key: "Escape" }); out.closed = ids.detail.hidden;
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_page_script_filters_and_opens_examples(digits_page, tmp_path):
    text, _, data = digits_page
    (tmp_path / "p.html").write_text(text, encoding="utf-8")
    res = subprocess.run(["node", "-e", DOM_SHIM, str(tmp_path / "p.html")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    ex = data["examples"]
    assert out["all"] == list(range(len(ex)))
    assert out["wrong"] == [e["i"] for e in ex if e["wrong"]] and out["wrong"]
    assert out["index"] == [3, 10, 11, 12]
    assert out["pred1"] == [e["i"] for e in ex if e["p"] == 1]
    assert out["open"] and out["closed"] and len(out["sections"]) == len(data["methods"])
