"""The page's script and style for pages of several inputs and models (payload kind "features").

The functions here are function declarations inside the page's one script (`_page.JS` puts
them in its closure), so they use its helpers (``el``, ``img``, ``tokens``, ``barChart``,
``fmt``). Each part of an example is drawn by its type: an image and its heatmap, tokens
coloured by their scores, or a bar chart of a general part's named values.
"""

CSS = """
.thumbs.parts{flex-wrap:wrap}
.part{margin:6px 0}.pname{font-size:12px;color:#555;margin-bottom:2px}
#controls label[hidden]{display:none}
"""

JS = r"""
function contribText(a, k) {
  var c = a.contrib[k];
  return "contribution " + (c === null ? "n/a" : (100 * c).toFixed(1) + "%") + ", sum " + fmt(a.f[k].sum);
}
function partsPreview(ex, a) {
  var box = el("div", "thumbs parts");
  D.parts.forEach(function (p, k) {
    if (p.type === "image") {
      box.appendChild(img(ex.x[k], p.name + " #" + ex.i));
      box.appendChild(img(a.f[k].png, p.name + ", " + state.method));
    } else if (p.type === "text") {
      box.appendChild(tokens(ex.x[k], a.f[k].v, 10));
    } else {
      box.appendChild(barChart(p.categories, a.f[k].v, 3, 150));
    }
  });
  return box;
}
function partsInput(ex) {
  var box = el("div");
  D.parts.forEach(function (p, k) {
    var part = el("div", "part");
    part.appendChild(el("div", "pname", p.name));
    if (p.type === "image") { var b = el("div", "big"); b.appendChild(img(ex.x[k], p.name + " #" + ex.i)); part.appendChild(b); }
    else if (p.type === "text") part.appendChild(el("div", "tokens", ex.x[k].join(" ")));
    else {
      var t = el("table", "values");
      ex.x[k].forEach(function (v, i) {
        var tr = el("tr");
        tr.appendChild(el("td", null, p.categories[i]));
        tr.appendChild(el("td", null, fmt(v)));
        t.appendChild(tr);
      });
      part.appendChild(t);
    }
    box.appendChild(part);
  });
  return box;
}
function partsMethod(ex, a, sec) {
  D.parts.forEach(function (p, k) {
    var part = el("div", "part");
    part.appendChild(el("div", "pname", p.name + ": " + contribText(a, k)));
    if (p.type === "image") { var b = el("div", "big"); b.appendChild(img(a.f[k].png, p.name + ", #" + ex.i)); part.appendChild(b); }
    else if (p.type === "text") part.appendChild(tokens(ex.x[k], a.f[k].v));
    else part.appendChild(barChart(p.categories, a.f[k].v, 12, 520));
    sec.appendChild(part);
  });
}
function modelName(ex) { return D.models && D.models.length > 1 ? D.models[ex.m] : null; }
function score(v) { return D.scores === "raw" ? fmt(v) : pct(v); }
function scoreWidth(ex, v) {
  if (D.scores !== "raw") return 100 * (v || 0);
  var m = 0;
  ex.top.forEach(function (cp) { if (cp[1] !== null) m = Math.max(m, cp[1]); });
  return m > 0 && v > 0 ? 100 * v / m : 0;
}
if (D.models && D.models.length > 1) {
  D.models.forEach(function (m, i) { var o = el("option", null, m); o.value = String(i); $("f-model").appendChild(o); });
  $("l-model").hidden = false;
}
"""
