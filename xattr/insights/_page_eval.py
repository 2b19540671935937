"""The page's script, style and markup for the evaluation view (payload entry ``evaluation``,
`_evaluation_view`).

Written into the page only when the payload has an ``evaluation`` entry: a page without one is
byte for byte the page it was before this view existed. Like `_page_dataset`, the script is
function declarations and set-up code inside the page's one script; it wraps four of the
page's functions (``render``, ``setView``, ``card``, ``methodView``) by assigning to their
names, so their callers reach the wrapped ones. It adds:

- an "evaluation" entry to the View list: the method x metric table, each cell the mean over
  the examples and its interval, the metric's better direction as an arrow in its heading, the
  best method of each metric (rank 1, ties share it) marked, and one button per metric listing
  the examples where the methods disagree most on it;
- an "Order" list for the examples: by index, or by the methods' disagreement under one metric
  (the spread of NOTE: [Evaluation on the explorer page] in `_evaluation_view`, largest first,
  then by index; examples without a spread last), each card then showing its spread;
- in the detail panel, under each method's map, its value under every metric on this example
  and its place among the methods there;
- one colour per method (matplotlib's tab10, as `Evaluation.plot_curves` draws them), shown as a
  swatch before its name in the table and used by the curves (`_page_curves`, written after
  this script when the evaluation has a curve metric).
"""

from __future__ import annotations

from . import _page_curves

CSS = """
#evaluation[hidden]{display:none}
table.evaltable{border-collapse:collapse;background:#fff;font-size:13px;margin-bottom:10px}
table.evaltable th,table.evaltable td{padding:4px 10px;border:1px solid #ddd;text-align:left}
table.evaltable td.best{font-weight:700;background:#e7f3e7}
#evaluation .note{color:#555;max-width:900px}
#evaluation button{margin:0 8px 8px 0}
table.evals{margin-top:4px}table.evals tr.best td{font-weight:700}
.spread{color:#8a5a00}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:baseline}
"""

CONTROLS = (
    '<label id="l-order">Order <select id="f-order"><option value="">by index</option></select></label>\n'
)

MAIN = '<div id="evaluation" hidden></div>\n'

JS = r"""
var ARROW = {higher: "\u2191", lower: "\u2193"};
var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
function mcolor(m) { return PALETTE[m % PALETTE.length]; }
function swatch(m) { var s = el("span", "swatch"); s.style.background = mcolor(m); return s; }
state.order = "";
function evfmt(v) {
  if (v === null) return "n/a";
  var a = Math.abs(v);
  return (a !== 0 && (a < 1e-3 || a >= 1e4)) ? v.toExponential(2) : String(+v.toPrecision(3));
}
function rankText(r) { return r === null ? "n/a" : String(r); }
function metricHead(k) { return k.name + " " + ARROW[k.direction]; }
function renderEvaluation() {
  var E = D.evaluation, box = $("evaluation"), t = el("table", "evaltable"), head = el("tr");
  box.textContent = "";
  head.appendChild(el("th", null, "method"));
  E.metrics.forEach(function (k) { head.appendChild(el("th", null, metricHead(k))); });
  t.appendChild(head);
  D.methods.forEach(function (name, i) {
    var tr = el("tr"), th = el("th");
    th.appendChild(swatch(i));
    th.appendChild(el("span", null, name));
    tr.appendChild(th);
    E.metrics.forEach(function (k) {
      var c = k.cells[i], best = k.best.indexOf(i) >= 0;
      var td = el("td", best ? "best" : null, evfmt(c[0]) + (c[0] === null ? "" : " [" + evfmt(c[1]) + ", " + evfmt(c[2]) + "]"));
      td.setAttribute("title", "rank " + rankText(k.rank[i]) + " of " + D.methods.length + ", n = " + c[3]);
      tr.appendChild(td);
    });
    t.appendChild(tr);
  });
  box.appendChild(t);
  box.appendChild(el("p", "note", "Each cell: the mean over the examples and its " + E.interval + ". " +
    "\u2191: higher is better, \u2193: lower is better; the best mean of each metric is in bold. " +
    "Open an example to see each method's scores on it."));
  E.metrics.forEach(function (k, j) {
    var b = el("button", null, "examples where the methods disagree most on " + k.name);
    b.type = "button";
    b.setAttribute("data-metric", String(j));
    b.addEventListener("click", function () { showDisagreement(j); });
    box.appendChild(b);
  });
  var k = E.metrics.length;
  $("count").textContent = D.methods.length + " methods under " + k + (k === 1 ? " metric" : " metrics") + " on " + E.n + " examples";
}
function showDisagreement(j) {
  state.order = String(j);
  $("f-order").value = state.order;
  setView("examples");
  shown = PAGE;
  render();
}
function byDisagreement(list) {
  var s = D.evaluation.metrics[+state.order].spread;
  return list.slice().sort(function (a, b) {
    var x = s[a.i], y = s[b.i];
    if (x === null || y === null) return (x === null) - (y === null) || a.i - b.i;
    return y - x || a.i - b.i;
  });
}
var baseRender = render, baseSetView = setView, baseCard = card, baseMethodView = methodView;
render = function () {
  var ev = state.view === "evaluation";
  $("evaluation").hidden = !ev;
  if (ev) {
    $("grid").hidden = true; $("dataset").hidden = true; $("more").hidden = true;
    renderEvaluation();
    return;
  }
  if (state.view !== "examples" || state.order === "") { baseRender(); return; }
  var all = D.examples;  // the examples view lists D.examples in order: hand it the sorted ones
  D.examples = byDisagreement(all);
  try { baseRender(); } finally { D.examples = all; }
};
setView = function (v) {
  baseSetView(v);
  ["l-pred", "l-true", "l-index"].forEach(function (id) { $(id).hidden = v !== "examples"; });
  $("l-order").hidden = v !== "examples";
};
card = function (ex) {
  var c = baseCard(ex);
  if (state.order !== "") {
    var k = D.evaluation.metrics[+state.order], s = k.spread[ex.i];
    c.appendChild(el("div", "meta spread", "disagreement on " + k.name + ": " + (s === null ? "n/a" : s.toFixed(2))));
  }
  return c;
};
methodView = function (ex, name) {
  var sec = baseMethodView(ex, name), m = D.methods.indexOf(name), t = el("table", "values evals");
  D.evaluation.metrics.forEach(function (k) {
    var p = k.place[m][ex.i], tr = el("tr", p === 1 ? "best" : null);
    tr.appendChild(el("td", null, metricHead(k)));
    tr.appendChild(el("td", null, evfmt(k.values[m][ex.i])));
    tr.appendChild(el("td", null, p === null ? "no value" : "rank " + rankText(p) + " of " + D.methods.length + " here"));
    t.appendChild(tr);
  });
  sec.appendChild(t);
  return sec;
};
(function () {
  var o = el("option", null, "evaluation");
  o.value = "evaluation";
  $("f-view").appendChild(o);
  $("l-view").hidden = false;
  if (!D.dataset) {
    $("o-view-dataset").disabled = true;
    $("o-view-dataset").hidden = true;
    on("f-view", "change", function (t) { setView(t.value); });
  }
  D.evaluation.metrics.forEach(function (k, j) {
    var op = el("option", null, "methods disagree most: " + k.name);
    op.value = String(j);
    $("f-order").appendChild(op);
  });
  on("f-order", "change", function (t) { state.order = t.value; });
})();
"""


def parts(data: dict) -> tuple[str, str, str, str]:
    """(CSS, controls markup, main markup, script) for the page: all empty without an evaluation."""
    if data.get("evaluation") is None:
        return "", "", "", ""
    if data["evaluation"].get("curves") is None:  # no curve metric: no curves
        return CSS, CONTROLS, MAIN, JS
    return CSS + _page_curves.CSS, CONTROLS, MAIN, JS + _page_curves.JS
