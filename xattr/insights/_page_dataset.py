"""The page's script and style for the dataset view ("class means", payload entry ``dataset``).

Like `_page_parts`, these are function declarations and set-up code inside the page's one
script, using its helpers (``el``, ``img``, ``barChart``, ``fmt``, ``on``, ``state``). The view
shows one card per class for the chosen method: the class's count, for images its mean input
and the signed mean and mean |a| heatmaps over it, for tabular rows two bar charts of the
largest mean and mean |a| features, and both totals. "Group by" picks true label or
prediction, the "only misclassified" box picks the misclassified examples' means, and a click
on a card opens the examples view filtered to that class. Pages without a ``dataset`` entry
(text, ``dataset_view=False``, Captum Insights pages) never show the view's controls.
"""

CSS = """
#grid[hidden],#dataset[hidden]{display:none}
#dataset{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:10px}
#dataset .note{grid-column:1/-1;color:#555}
.gcard .maps{display:flex;gap:6px;flex-wrap:wrap}
.gcard figure{margin:0;font-size:11px;color:#555;text-align:center}
.gcard .head{font-weight:600;color:#222}
"""

JS = r"""
function groupName(c) { return (state.by === "label" ? "true " : "predicted ") + cls(c); }
function figure(child, caption) {
  var f = el("figure");
  f.appendChild(child);
  f.appendChild(el("figcaption", null, caption));
  return f;
}
function groupCard(v, g, s) {
  var c = el("button", "card gcard"), maps = el("div", "maps"), key = v.groups[g];
  c.type = "button";
  c.setAttribute("data-group", key);
  c.appendChild(el("div", "head", groupName(key) + ": n = " + v.n[g] + (state.wrong ? " misclassified" : "")));
  if (D.kind === "image") {
    maps.appendChild(figure(img(v.x[g], "mean input, " + groupName(key)), "mean input"));
    maps.appendChild(figure(img(s.m, "mean, " + groupName(key)), "mean"));
    maps.appendChild(figure(img(s.a, "mean |a|, " + groupName(key)), "mean |a|"));
  } else {
    maps.appendChild(figure(barChart(D.feature_names, s.m, 5, 230), "mean"));
    maps.appendChild(figure(barChart(D.feature_names, s.a, 5, 230), "mean |a|"));
  }
  c.appendChild(maps);
  c.appendChild(el("div", "meta", "sum of mean " + fmt(s.s) + ", of mean |a| " + fmt(s.as)));
  c.addEventListener("click", function () { showClass(key); });
  return c;
}
function renderDataset() {
  var view = D.dataset.views[state.by + (state.wrong ? "_wrong" : "")], box = $("dataset");
  var per = view.methods[state.method], total = view.n.reduce(function (a, b) { return a + b; }, 0);
  box.textContent = "";
  $("count").textContent = "class means of " + total + (state.wrong ? " misclassified" : "") + " examples in " +
    view.groups.length + " classes, " + state.method;
  if (!per) { box.appendChild(el("p", "note", D.dataset.skipped[state.method])); return; }
  if (!view.groups.length) { box.appendChild(el("p", "note", "no misclassified examples")); return; }
  view.groups.forEach(function (_, g) { box.appendChild(groupCard(view, g, per[g])); });
}
function setView(v) {
  state.view = v;
  $("f-view").value = v;
  ["l-pred", "l-true", "l-index"].forEach(function (id) { $(id).hidden = v === "dataset"; });
  $("l-by").hidden = v !== "dataset";
}
function showClass(c) {
  state.pred = state.by === "prediction" ? String(c) : "";
  state.truth = state.by === "label" ? String(c) : "";
  state.index = "";
  $("f-pred").value = state.pred;
  $("f-true").value = state.truth;
  $("f-index").value = "";
  setView("examples");
  shown = PAGE;
  render();
}
if (D.dataset) {
  $("l-view").hidden = false;
  if (!D.labels) { state.by = "prediction"; $("f-by").value = "prediction"; $("o-by-label").disabled = true; }
  on("f-view", "change", function (t) { setView(t.value); });
  on("f-by", "change", function (t) { state.by = t.value; });
}
"""
