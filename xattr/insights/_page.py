"""The explorer page: one HTML file with inline CSS, vanilla JavaScript and the JSON payload.

Only the title and the summary line are written into the markup by Python (``html.escape``d);
every other string (class, method, feature names, tokens) travels in the JSON payload, whose
``<``, ``>`` and ``&`` are written as ``\\u003c``, ``\\u003e``, ``\\u0026`` so no ``</script>``
or comment can close its script element, and the page's script puts them into the document
with ``textContent`` and ``setAttribute`` only, never as markup.

Pages of several inputs and models (payload kind "features", `_features`) add their drawing
functions from `_page_parts` to the same script, and a "Model" list to the controls. The
dataset view (payload entry ``dataset``, `_dataset`) draws with `_page_dataset`'s functions,
and a text page's (`_tokens`) with `_page_tokens`'. The evaluation view (payload entry
``evaluation``, `_evaluation_view`) adds `_page_eval`'s style, controls and script, and only to
pages that have one: without it the page is what it was before that view existed.
"""

from __future__ import annotations

import html
import json

from . import _page_dataset, _page_eval, _page_parts, _page_tokens, _png

PAYLOAD_ID = "xattr-data"

CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;background:#fafafa}
header{padding:12px 20px;background:#fff;border-bottom:1px solid #ddd}
h1{font-size:20px;margin:0 0 4px}
.summary{margin:0 0 8px;color:#555}
.legend{display:flex;gap:24px;flex-wrap:wrap;font-size:12px;color:#555}
.legend .bar{display:inline-block;width:140px;height:10px;border:1px solid #ccc;vertical-align:middle;margin:0 6px}
#controls{display:flex;flex-wrap:wrap;gap:14px;align-items:center;padding:10px 20px;background:#f0f0f0;border-bottom:1px solid #ddd;position:sticky;top:0;z-index:1}
#controls label{display:flex;gap:6px;align-items:center}
#count{color:#555;margin-left:auto}
main{padding:14px 20px}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.card{font:inherit;text-align:left;background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;cursor:pointer;display:flex;flex-direction:column;gap:6px}
.card:hover,.card:focus{border-color:#4393c3;outline:none;box-shadow:0 0 0 2px #d1e5f0}
.card.wrong{border-left:4px solid #b2182b}
.thumbs{display:flex;gap:6px;min-height:20px}
img.px{image-rendering:pixelated;width:72px;height:72px;border:1px solid #ddd;background:#fff}
.meta{font-size:12px;color:#444}.idx{font-weight:600;color:#222}
.tokens{line-height:1.9;font-size:12px}
.tok{padding:1px 3px;margin:0 1px;border-radius:3px;white-space:pre}
#more{margin:14px auto;display:block}#more[hidden]{display:none}
#detail{position:fixed;top:0;right:0;bottom:0;width:min(600px,96vw);background:#fff;border-left:1px solid #ccc;box-shadow:-4px 0 16px rgba(0,0,0,.12);overflow:auto;padding:16px 20px;z-index:2}
#detail[hidden]{display:none}
#close{float:right;font-size:18px}
#detail h2{margin:0 0 4px;font-size:18px}#detail h3{margin:14px 0 6px;font-size:15px}
.facts.wrong{color:#b2182b}
.big img.px{width:192px;height:192px}
.method{border-top:1px solid #eee;padding-top:6px}.method.selected h3{color:#2166ac}
.sum{font-weight:400;color:#555;font-size:13px}
.prob{display:flex;gap:8px;align-items:center;font-size:13px}
.prob .name{width:120px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.track{flex:1;height:12px;background:#eee;border-radius:3px;max-width:300px}.fill{height:12px;background:#4393c3;border-radius:3px}
table.values{border-collapse:collapse;font-size:12px}table.values td{padding:1px 8px;border-bottom:1px solid #f0f0f0}
svg text{font-size:11px;fill:#333}
"""

JS = r"""
(function () {
"use strict";
var D = JSON.parse(document.getElementById("xattr-data").textContent);
var PAGE = 120, shown = PAGE, openEx = null;
var state = {pred: "", truth: "", wrong: false, index: "", method: D.methods[0], model: "", view: "examples", by: "label"};
function $(id) { return document.getElementById(id); }
function el(tag, cls, text) {
  var e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}
var SVG = "http://www.w3.org/2000/svg";
function sv(tag, attrs, text) {
  var e = document.createElementNS(SVG, tag);
  for (var k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function fmt(v) {
  if (v === null) return "n/a";
  var a = Math.abs(v);
  return (a !== 0 && (a < 1e-3 || a >= 1e4)) ? v.toExponential(2) : v.toFixed(3);
}
function pct(p) { return p === null ? "n/a" : (100 * p).toFixed(1) + "%"; }
function cls(c) { return c === null ? "?" : D.classes[c]; }
function hex(h) { return [1, 3, 5].map(function (i) { return parseInt(h.substr(i, 2), 16); }); }
function cmap(name, t) {
  var a = D.cmap[name], pos = Math.min(Math.max(t, 0), 1) * (a.length - 1);
  var lo = Math.min(Math.floor(pos), a.length - 2), w = pos - lo, c0 = hex(a[lo]), c1 = hex(a[lo + 1]);
  return "rgb(" + [0, 1, 2].map(function (i) { return Math.round(c0[i] * (1 - w) + c1[i] * w); }).join(",") + ")";
}
function maxAbs(vs) {
  var m = 0;
  vs.forEach(function (v) { if (v !== null) m = Math.max(m, Math.abs(v)); });
  return m || 1;
}
function signed(v, scale) { return v === null ? "#999" : cmap("signed", 0.5 + 0.5 * v / scale); }

function parseIndex(q) {  // "3", "3, 7", "10-20"; null when empty
  var parts = q.split(/[\s,]+/).filter(Boolean), ranges = [];
  parts.forEach(function (p) {
    var m = /^(\d+)(?:-(\d+))?$/.exec(p);
    if (m) ranges.push([+m[1], m[2] === undefined ? +m[1] : +m[2]]);
  });
  return parts.length ? ranges : null;
}
function matches(ex, ranges) {
  if (state.pred !== "" && ex.p !== +state.pred) return false;
  if (state.truth !== "" && ex.y !== +state.truth) return false;
  if (state.wrong && !ex.wrong) return false;
  if (state.model !== "" && ex.m !== +state.model) return false;
  if (ranges && !ranges.some(function (r) { return ex.i >= r[0] && ex.i <= r[1]; })) return false;
  return true;
}

function img(src, alt) {
  var e = el("img", "px");
  e.setAttribute("src", src);
  e.setAttribute("alt", alt);
  e.setAttribute("title", alt);
  return e;
}
function tokens(toks, scores, limit) {
  var box = el("div", "tokens"), m = maxAbs(scores);
  toks.slice(0, limit || toks.length).forEach(function (t, i) {
    var s = el("span", "tok", t);
    s.style.background = signed(scores[i], m);
    s.setAttribute("title", fmt(scores[i]));
    box.appendChild(s);
  });
  if (limit && toks.length > limit) box.appendChild(el("span", null, " ..."));
  return box;
}
function short(s, n) { n = Math.max(3, Math.floor(n)); return s.length > n ? s.slice(0, n - 1) + "\u2026" : s; }
function barChart(names, vals, k, width) {
  var idx = vals.map(function (_, i) { return i; }).filter(function (i) { return vals[i] !== null; });
  idx.sort(function (a, b) { return Math.abs(vals[b]) - Math.abs(vals[a]) || a - b; });
  idx = idx.slice(0, k);
  var rowH = 18, labelW = Math.round(width * 0.36), valW = 62, plot = width - labelW - valW;
  var h = rowH * idx.length + 4, mid = labelW + plot / 2, m = maxAbs(idx.map(function (i) { return vals[i]; }));
  var svg = sv("svg", {width: width, height: h, viewBox: "0 0 " + width + " " + h, role: "img"});
  svg.appendChild(sv("line", {x1: mid, x2: mid, y1: 0, y2: h, stroke: "#bbb"}));
  idx.forEach(function (i, r) {
    var v = vals[i], w = Math.abs(v) / m * (plot / 2 - 2), y = 2 + r * rowH;
    var label = sv("text", {x: labelW - 4, y: y + 13, "text-anchor": "end"}, short(names[i], labelW / 6.5));
    label.appendChild(sv("title", {}, names[i]));
    svg.appendChild(label);
    svg.appendChild(sv("rect", {x: v >= 0 ? mid : mid - w, y: y + 3, width: Math.max(w, 0.5), height: rowH - 6,
                                fill: cmap("signed", v >= 0 ? 0.85 : 0.15)}));
    svg.appendChild(sv("text", {x: width - 2, y: y + 13, "text-anchor": "end"}, fmt(v)));
  });
  return svg;
}

function preview(ex) {
  var box = el("div", "thumbs"), a = ex.a[state.method];
  if (D.kind === "features") return partsPreview(ex, a);
  if (D.kind === "image") {
    box.appendChild(img(ex.x, "input #" + ex.i));
    box.appendChild(img(a.png, state.method));
  } else if (D.kind === "tabular") {
    box.appendChild(barChart(D.feature_names, a.v, 3, 150));
  } else {
    box.appendChild(tokens(ex.x, a.v, 14));
  }
  return box;
}
function card(ex) {
  var c = el("button", "card" + (ex.wrong ? " wrong" : ""));
  c.type = "button";
  c.setAttribute("data-index", ex.i);
  c.appendChild(preview(ex));
  var meta = el("div", "meta");
  meta.appendChild(el("div", "idx", "#" + ex.i + (ex.wrong ? "  misclassified" : "")));
  if (D.kind === "features" && modelName(ex)) meta.appendChild(el("div", null, modelName(ex)));
  meta.appendChild(el("div", null, "pred " + cls(ex.p) + " (" + score(ex.conf) + ")"));
  if (D.labels) meta.appendChild(el("div", null, "true " + cls(ex.y)));
  c.appendChild(meta);
  c.addEventListener("click", function () { openDetail(ex); });
  return c;
}
function render() {
  var ds = state.view === "dataset";
  $("grid").hidden = ds;
  $("dataset").hidden = !ds;
  if (ds) { $("more").hidden = true; if (D.kind === "text") renderTokens(); else renderDataset(); return; }
  var ranges = parseIndex(state.index), hits = D.examples.filter(function (ex) { return matches(ex, ranges); });
  var grid = $("grid");
  grid.textContent = "";
  hits.slice(0, shown).forEach(function (ex) { grid.appendChild(card(ex)); });
  $("count").textContent = hits.length + " of " + D.n + " examples" + (hits.length > shown ? ", first " + shown + " shown" : "");
  $("more").hidden = hits.length <= shown;
}

function probs(ex) {
  var box = el("div");
  ex.top.forEach(function (cp) {
    var row = el("div", "prob"), track = el("div", "track"), fill = el("div", "fill");
    fill.style.width = scoreWidth(ex, cp[1]).toFixed(1) + "%";
    track.appendChild(fill);
    row.appendChild(el("span", "name", cls(cp[0])));
    row.appendChild(track);
    row.appendChild(el("span", null, score(cp[1])));
    box.appendChild(row);
  });
  return box;
}
function inputView(ex) {
  if (D.kind === "features") return partsInput(ex);
  if (D.kind === "image") { var b = el("div", "big"); b.appendChild(img(ex.x, "input #" + ex.i)); return b; }
  if (D.kind === "text") return el("div", "tokens", ex.x.join(" "));
  var t = el("table", "values");
  ex.x.forEach(function (v, i) {
    var tr = el("tr");
    tr.appendChild(el("td", null, D.feature_names[i]));
    tr.appendChild(el("td", null, fmt(v)));
    t.appendChild(tr);
  });
  return t;
}
function methodView(ex, name) {
  var a = ex.a[name], sec = el("section", "method" + (name === state.method ? " selected" : ""));
  var h = el("h3", null, name + " ");
  h.appendChild(el("span", "sum", "sum " + fmt(a.sum)));
  sec.appendChild(h);
  if (D.kind === "features") partsMethod(ex, a, sec);
  else if (D.kind === "image") { var b = el("div", "big"); b.appendChild(img(a.png, name + ", #" + ex.i)); sec.appendChild(b); }
  else if (D.kind === "tabular") sec.appendChild(barChart(D.feature_names, a.v, 12, 520));
  else sec.appendChild(tokens(ex.x, a.v));
  return sec;
}
function openDetail(ex) {
  openEx = ex;
  var body = $("detail-body");
  body.textContent = "";
  body.appendChild(el("h2", null, "Example #" + ex.i + (D.kind === "features" && modelName(ex) ? ", " + modelName(ex) : "")));
  body.appendChild(el("p", "facts" + (ex.wrong ? " wrong" : ""), "predicted " + cls(ex.p) + " (" + score(ex.conf) + ")" +
    (D.labels ? ", true " + cls(ex.y) : "") + (ex.wrong ? ", misclassified" : "") + "; attributions explain class " + cls(ex.t)));
  body.appendChild(el("h3", null, "Input"));
  body.appendChild(inputView(ex));
  body.appendChild(el("h3", null, D.scores === "raw" ? "Top scores" : "Top probabilities"));
  body.appendChild(probs(ex));
  var order = [state.method].concat(D.methods.filter(function (m) { return m !== state.method; }));
  order.forEach(function (m) { body.appendChild(methodView(ex, m)); });
  $("detail").hidden = false;
  $("close").focus();
}
function closeDetail() { $("detail").hidden = true; openEx = null; }

function options(select, labels, counts) {
  labels.forEach(function (name, i) {
    var o = el("option", null, name + (counts ? " (" + counts[i] + ")" : ""));
    o.value = String(i);
    select.appendChild(o);
  });
}
function countsOf(key) {
  var c = D.classes.map(function () { return 0; });
  D.examples.forEach(function (ex) { if (ex[key] !== null) c[ex[key]] += 1; });
  return c;
}
options($("f-pred"), D.classes, countsOf("p"));
options($("f-true"), D.classes, D.labels ? countsOf("y") : null);
D.methods.forEach(function (m) { var o = el("option", null, m); o.value = m; $("f-method").appendChild(o); });
$("f-true").disabled = !D.labels;
$("f-wrong").disabled = !D.labels;
function on(id, ev, fn) { $(id).addEventListener(ev, function (e) { fn(e.target); shown = PAGE; render(); }); }
on("f-pred", "change", function (t) { state.pred = t.value; });
on("f-true", "change", function (t) { state.truth = t.value; });
on("f-wrong", "change", function (t) { state.wrong = t.checked; });
on("f-index", "input", function (t) { state.index = t.value; });
on("f-method", "change", function (t) { state.method = t.value; if (openEx) openDetail(openEx); });
on("f-model", "change", function (t) { state.model = t.value; });
$("more").addEventListener("click", function () { shown += PAGE; render(); });
$("close").addEventListener("click", closeDetail);
document.addEventListener("keydown", function (e) { if (e.key === "Escape") closeDetail(); });
"""

JS_END = """
render();
})();
"""


def script_json(data) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` element (no ``<``, ``>`` or ``&``)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _gradient(anchors) -> str:
    return "linear-gradient(to right," + ",".join(anchors) + ")"


def _summary(data: dict) -> str:
    n, parts = data["n"], []
    if data["kind"] == "features":  # one card per example and model (_features)
        m, names = data["n_examples"], ", ".join(p["name"] for p in data["parts"])
        parts.append(f"{m} example{'s' * (m != 1)} ({names})")
        parts.append(f"{len(data['models'])} model{'s' * (len(data['models']) != 1)}")
    else:
        parts.append(f"{n} example{'s' * (n != 1)} ({data['kind']})")
    parts.append(f"{len(data['classes'])} classes")
    parts.append(f"{len(data['methods'])} method{'s' * (len(data['methods']) != 1)}")
    parts.append(f"attributions explain the {data['target']}")
    if data["labels"] and data.get("misclassified_by_model"):
        m = data["n_examples"]
        parts.append("accuracy " + ", ".join(f"{name} {100 * (m - w) / m:.1f}%" for name, w in zip(data["models"], data["misclassified_by_model"])))
    elif data["labels"]:
        wrong = data["misclassified"]
        parts.append(f"accuracy {100 * (n - wrong) / n:.1f}% ({wrong} misclassified)")
    if data.get("evaluation") is not None:
        k = len(data["evaluation"]["metrics"])
        parts.append(f"evaluated under {k} metric{'s' * (k != 1)}")
    return " \u00b7 ".join(parts)


def render(data: dict) -> str:
    """The whole page for a payload from `_payload.payload`."""
    title = html.escape(data["title"], quote=True)
    ev_css, ev_controls, ev_main, ev_js = _page_eval.parts(data)  # all "" without an evaluation
    legend = (
        f'<span>signed attribution: against<span class="bar" style="background:{_gradient(_png.SIGNED_ANCHORS)}"></span>for</span>'
        f'<span>magnitude (all values &ge; 0): 0<span class="bar" style="background:{_gradient(_png.ABS_ANCHORS)}"></span>large</span>'
        "<span>each map is scaled on its own (per example, or per class mean, and method); a red left edge marks a misclassified example</span>"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="xattr.insights">
<title>{title}</title>
<style>{CSS}{_page_parts.CSS}{_page_dataset.CSS}{_page_tokens.CSS}{ev_css}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p class="summary">{html.escape(_summary(data), quote=True)}</p>
<div class="legend">{legend}</div>
</header>
<section id="controls">
<label id="l-view" hidden>View <select id="f-view"><option value="examples">examples</option><option id="o-view-dataset" value="dataset">class means</option></select></label>
<label id="l-pred">Predicted <select id="f-pred"><option value="">any</option></select></label>
<label id="l-true">True <select id="f-true"><option value="">any</option></select></label>
<label><input type="checkbox" id="f-wrong"> only misclassified</label>
<label id="l-index">Index <input type="search" id="f-index" placeholder="e.g. 3, 10-20" size="12"></label>
<label>Method <select id="f-method"></select></label>
<label id="l-by" hidden>Group by <select id="f-by"><option id="o-by-label" value="label">true label</option><option value="prediction">prediction</option></select></label>
<label id="l-model" hidden>Model <select id="f-model"><option value="">any</option></select></label>
{ev_controls}<span id="count"></span>
</section>
<main>
<noscript><p>This page needs JavaScript (it runs offline, in the page).</p></noscript>
<div id="grid"></div>
<div id="dataset" hidden></div>
{ev_main}<button id="more" type="button" hidden>show more</button>
</main>
<aside id="detail" hidden>
<button id="close" type="button" aria-label="close">&times;</button>
<div id="detail-body"></div>
</aside>
<script type="application/json" id="{PAYLOAD_ID}">{script_json(data)}</script>
<script>{JS}{_page_parts.JS}{_page_dataset.JS}{_page_tokens.JS}{ev_js}{JS_END}</script>
</body>
</html>
"""
