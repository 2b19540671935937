"""The page's script and style for a text page's dataset view ("token statistics", `_tokens`).

Like `_page_dataset`, these are function declarations inside the page's one script, using its
helpers (``el``, ``barChart``, ``fmt``, ``figure``, ``groupName``, ``showClass``, ``state``).
For the chosen method, one card per class: its example and token counts and two bar charts,
the tokens of largest positive mean attribution ("for" the explained class) and those of most
negative mean ("against"), each labelled with its count. "Group by" and "only misclassified"
pick the view as for images; a click on a card lists that class's examples. The page's
`render` calls `renderTokens` instead of `renderDataset` when the payload's kind is "text".
"""

CSS = """
.tcard .maps figure{flex:1 1 100%}
.tcard .none{font-size:12px;color:#777;margin:2px 0 6px}
"""

JS = r"""
function tokenBars(rows, caption) {
  if (!rows.length) return el("p", "none", caption + ": no token seen " + D.dataset.min_count + "+ times");
  var names = rows.map(function (r) { return r[0] + " \u00d7" + r[2]; });
  return figure(barChart(names, rows.map(function (r) { return r[1]; }), rows.length, 240), caption);
}
function tokenCard(v, g, s) {
  var c = el("button", "card gcard tcard"), maps = el("div", "maps"), key = v.groups[g];
  c.type = "button";
  c.setAttribute("data-group", key);
  c.appendChild(el("div", "head", groupName(key) + ": n = " + v.n[g] + (state.wrong ? " misclassified" : "") + ", " + s.t + " tokens"));
  maps.appendChild(tokenBars(s.pos, "largest mean (for)"));
  maps.appendChild(tokenBars(s.neg, "most negative mean (against)"));
  c.appendChild(maps);
  c.addEventListener("click", function () { showClass(key); });
  return c;
}
function renderTokens() {
  var view = D.dataset.views[state.by + (state.wrong ? "_wrong" : "")], box = $("dataset");
  var per = view.methods[state.method], total = view.n.reduce(function (a, b) { return a + b; }, 0);
  box.textContent = "";
  $("count").textContent = "token statistics of " + total + (state.wrong ? " misclassified" : "") + " examples in " +
    view.groups.length + " classes, " + state.method + "; tokens seen " + D.dataset.min_count + "+ times, " + D.dataset.k + " per list";
  if (!per) { box.appendChild(el("p", "note", D.dataset.skipped[state.method])); return; }
  if (!view.groups.length) { box.appendChild(el("p", "note", "no misclassified examples")); return; }
  view.groups.forEach(function (_, g) { box.appendChild(tokenCard(view, g, per[g])); });
}
if (D.dataset && D.kind === "text") $("o-view-dataset").textContent = "token statistics";
"""
