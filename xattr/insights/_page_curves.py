"""The page's script and style for the curves of the evaluation view (each metric's ``curve``
entry and the evaluation's ``curves`` entry of `_evaluation_view`).

Written into the page only when the evaluation has a curve metric (deletion, insertion, ROAD,
randomization), after `_page_eval`'s script, whose helpers it uses (``evfmt``, ``metricHead``,
``mcolor``, the swatches) besides the page's (``el``, ``sv``, ``short``). Like `_page_eval`, it
wraps page functions by assigning to their names: ``renderEvaluation`` (the evaluation view
gets a "Curves" section after its table) and ``openDetail`` (the detail panel gets the opened
example's curves, and that example becomes the one the evaluation view overlays). It draws, per
curve metric, one inline SVG chart: each method's mean curve (in the method's colour, as in the
table's swatches) with its bootstrap band shaded, and, for a chosen example, that example's
curve per method in bold with its points marked, the means then dashed. The x axis is what x
counts (a fraction, or the randomized layers by name as tick labels), the y axis the metric's
quantity; the legend gives each method's value (the table's mean, and the example's). Each
chart holds its scale as ``data-x0``, ``data-x1``, ``data-y0``, ``data-y1`` and ``data-box``
(left, top, width and height of the plot, in pixels), so a drawn point can be read back.
"""

CSS = """
#evaluation .curves{max-width:1200px}
.charts{display:flex;flex-wrap:wrap;gap:14px}
figure.curve{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px 8px}
figure.curve figcaption{font-size:13px;font-weight:600}
.clegend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;color:#333;max-width:560px}
.clegend .none{color:#777}
"""

JS = r"""
var CPOS = {};
D.evaluation.curves.examples.forEach(function (i, p) { CPOS[i] = p; });
state.curveEx = null;
function curveMetrics() { return D.evaluation.metrics.filter(function (k) { return k.curve; }); }
function niceTicks(lo, hi, n) {
  var raw = (hi - lo) / n, step = Math.pow(10, Math.floor(Math.log(raw) / Math.LN10)), e = raw / step, out = [];
  step *= e >= 7.5 ? 10 : e >= 3.5 ? 5 : e >= 1.5 ? 2 : 1;
  for (var t = Math.ceil(lo / step - 1e-9); t * step <= hi + step * 1e-9; t++) out.push(+(t * step).toPrecision(12));
  return out;
}
function span(vals) {
  var lo = Infinity, hi = -Infinity;
  vals.forEach(function (v) { if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); } });
  if (lo === Infinity) return [0, 1];
  if (lo === hi) { var d = Math.abs(lo) * 0.1 || 0.5; return [lo - d, hi + d]; }
  return [lo, hi];
}
function pathD(xs, ys, sx, sy) {  // a line through the points, broken where a value is missing
  var d = "", up = true;
  xs.forEach(function (x, s) {
    if (x === null || ys[s] === null) { up = true; return; }
    d += (up ? "M" : "L") + sx(x).toFixed(1) + " " + sy(ys[s]).toFixed(1) + " ";
    up = false;
  });
  return d.trim();
}
function exampleCurve(c, m, p) { return {x: c.x || c.ex_x[m][p], y: c.y[m][p]}; }
function curveChart(k, exI, width) {
  var c = k.curve, p = exI === null ? undefined : CPOS[exI], over = p !== undefined, xs = [], ys = [];
  c.mean.forEach(function (b, m) {
    if (!b.n) return;
    xs = xs.concat(b.x); ys = ys.concat(b.mean, b.low, b.high);
    if (over) { var e = exampleCurve(c, m, p); xs = xs.concat(e.x); ys = ys.concat(e.y); }
  });
  var tx = c.ticks ? c.ticks.map(function (_, s) { return c.x ? c.x[s] : s + 1; }) : [];  // named points
  var X = span(xs.concat(tx)), Y = span(ys), pad = 0.04 * (Y[1] - Y[0]);
  Y = [Y[0] - pad, Y[1] + pad];
  if (c.ticks) { pad = 0.5 * (X[1] - X[0]) / Math.max(c.ticks.length - 1, 1); X = [X[0] - pad, X[1] + pad]; }
  var L = 56, R = 14, T = 24, PH = 190, B = c.ticks ? 78 : 40, PW = width - L - R, H = T + PH + B;
  var sx = function (v) { return L + (v - X[0]) / (X[1] - X[0]) * PW; };
  var sy = function (v) { return T + (1 - (v - Y[0]) / (Y[1] - Y[0])) * PH; };
  var svg = sv("svg", {width: width, height: H, viewBox: "0 0 " + width + " " + H, role: "img", "class": "curvechart",
    "data-metric": k.name, "data-x0": X[0], "data-x1": X[1], "data-y0": Y[0], "data-y1": Y[1], "data-box": [L, T, PW, PH].join(" ")});
  svg.appendChild(sv("rect", {x: L, y: T, width: PW, height: PH, fill: "#fff", stroke: "#ccc"}));
  niceTicks(Y[0], Y[1], 5).forEach(function (v) {
    svg.appendChild(sv("line", {x1: L, x2: L + PW, y1: sy(v), y2: sy(v), stroke: "#eee"}));
    svg.appendChild(sv("text", {x: L - 4, y: sy(v) + 4, "text-anchor": "end"}, evfmt(v)));
  });
  var bottom = T + PH;
  if (c.ticks) {
    c.ticks.forEach(function (name, s) {
      var x = sx(tx[s]), t = sv("text", {x: x, y: bottom + 12, "text-anchor": "end", transform: "rotate(-40 " + x + " " + (bottom + 12) + ")"}, short(name, 14));
      t.appendChild(sv("title", {}, name));
      svg.appendChild(sv("line", {x1: x, x2: x, y1: bottom, y2: bottom + 4, stroke: "#999"}));
      svg.appendChild(t);
    });
  } else {
    niceTicks(X[0], X[1], 5).forEach(function (v) {
      svg.appendChild(sv("line", {x1: sx(v), x2: sx(v), y1: bottom, y2: bottom + 4, stroke: "#999"}));
      svg.appendChild(sv("text", {x: sx(v), y: bottom + 15, "text-anchor": "middle"}, evfmt(v)));
    });
  }
  svg.appendChild(sv("text", {x: L + PW / 2, y: H - 6, "text-anchor": "middle", "class": "xlabel"}, c.x_label));
  svg.appendChild(sv("text", {x: 4, y: 14, "class": "ylabel"}, c.y_label));
  c.mean.forEach(function (b, m) {
    if (!b.n) return;
    var top = [], low = [];
    b.x.forEach(function (x, s) {
      if (x === null || b.low[s] === null || b.high[s] === null) return;
      top.push(sx(x).toFixed(1) + "," + sy(b.high[s]).toFixed(1));
      low.unshift(sx(x).toFixed(1) + "," + sy(b.low[s]).toFixed(1));
    });
    svg.appendChild(sv("polygon", {points: top.concat(low).join(" "), fill: mcolor(m), "fill-opacity": 0.16, stroke: "none",
                                   "class": "band", "data-method": m}));
  });
  c.mean.forEach(function (b, m) {
    if (!b.n) return;
    var a = {d: pathD(b.x, b.mean, sx, sy), fill: "none", stroke: mcolor(m), "stroke-width": 1.5, "class": "mean", "data-method": m};
    if (over) { a["stroke-dasharray"] = "5 3"; a["stroke-opacity"] = 0.7; }
    svg.appendChild(sv("path", a));
  });
  if (over) c.y.forEach(function (_, m) {
    var e = exampleCurve(c, m, p);
    svg.appendChild(sv("path", {d: pathD(e.x, e.y, sx, sy), fill: "none", stroke: mcolor(m), "stroke-width": 2.5,
                                "class": "example", "data-method": m, "data-example": exI}));
    e.x.forEach(function (x, s) {
      if (x !== null && e.y[s] !== null) svg.appendChild(sv("circle", {cx: sx(x).toFixed(1), cy: sy(e.y[s]).toFixed(1), r: 2.5, fill: mcolor(m)}));
    });
  });
  return svg;
}
function curveFigure(k, exI, width) {
  var f = el("figure", "curve"), c = k.curve, over = exI !== null && CPOS[exI] !== undefined, lg = el("div", "clegend");
  var word = c.rule === "trapezoid" ? "area" : "last point";
  f.appendChild(el("figcaption", null, metricHead(k) + ": " + (c.rule === "trapezoid" ? "the area under the curve" : "the last point") +
    " is the value; mean over the examples with its " + Math.round(100 * D.evaluation.level) + "% band" +
    (over ? ", example #" + exI + " in bold" : "")));
  f.appendChild(curveChart(k, over ? exI : null, width));
  D.methods.forEach(function (name, m) {
    var item = el("span", c.mean[m].n ? null : "none");
    item.appendChild(swatch(m));
    item.appendChild(el("span", null, name + ": mean " + word + " " + evfmt(k.cells[m][0]) +
      (over ? ", this example " + evfmt(k.values[m][exI]) : "") + (c.mean[m].n ? "" : " (no curve)")));
    lg.appendChild(item);
  });
  f.appendChild(lg);
  return f;
}
function curveNote() {
  var C = D.evaluation.curves, n = curveMetrics().length;
  var s = "Each chart is one curve metric: per method, the mean curve over the " + C.of + " examples (a line) and, shaded, " +
    "the interval of that mean at each point (" + D.evaluation.interval + "). Open an example, or give its index here, to " +
    "draw its curves over them. " +
    "The page embeds " + C.values + " numbers of per-example curves (examples \u00d7 points \u00d7 methods, over " + n +
    (n === 1 ? " metric)." : " metrics).");
  if (C.examples.length === 1 && C.of > 1) s += " To keep the page small it holds the curves of example #0 only; the means and bands are over every example.";
  else if (C.examples.length < C.of) s += " To keep the page small it holds the curves of one example in " + C.stride + " only (#0, #" +
    C.stride + ", #" + 2 * C.stride + ", ...: " + C.examples.length + " of " + C.of + "); the means and bands are over every example.";
  return s;
}
function drawCharts(box, exI, width) {
  box.textContent = "";
  if (exI !== null && CPOS[exI] === undefined)
    box.appendChild(el("p", "note", "Example #" + exI + ": its curves are not on the page; the means alone are drawn."));
  curveMetrics().forEach(function (k) { box.appendChild(curveFigure(k, exI, width)); });
}
var baseRenderEvaluation = renderEvaluation, baseOpenDetail = openDetail;
renderEvaluation = function () {
  baseRenderEvaluation();
  var sec = el("div", "curves"), label = el("label", null, "example # "), input = el("input", "curve-ex"), charts = el("div", "charts");
  sec.appendChild(el("h3", null, "The curves behind the values"));
  sec.appendChild(el("p", "note", curveNote()));
  input.type = "number";
  input.min = "0";
  input.max = String(D.evaluation.n - 1);
  input.value = state.curveEx === null ? "" : String(state.curveEx);
  input.addEventListener("input", function (e) {
    var v = String(e.target.value).trim();
    state.curveEx = /^\d+$/.test(v) ? +v : null;
    drawCharts(charts, state.curveEx, 560);
  });
  label.appendChild(input);
  sec.appendChild(label);
  sec.appendChild(charts);
  drawCharts(charts, state.curveEx, 560);
  $("evaluation").appendChild(sec);
};
openDetail = function (ex) {
  baseOpenDetail(ex);
  state.curveEx = ex.i;
  var body = $("detail-body"), box = el("div", "charts");
  body.appendChild(el("h3", null, "Curves of example #" + ex.i));
  drawCharts(box, ex.i, 520);
  body.appendChild(box);
};
"""
