"""The explorer's dataset view: each class's mean attribution and mean |attribution|, per method.

NOTE: [Class means on the explorer page]
The page already holds every method's attribution of every example, so the dataset view costs
no second model pass: `statistics` groups those attributions with
`AttributionStatistics.from_attributions` (float64, exact two-pass moments) four ways:

- ``"label"``: by true label, every example;
- ``"prediction"``: by predicted class, every example;
- ``"label_wrong"``, ``"prediction_wrong"``: the same over the misclassified examples only.

Without labels only ``"prediction"`` exists. A group is a class with at least one example in
the view (a class nobody predicted has no "prediction" group). The attributions are the page's
own, so they explain the page's ``target`` class of each example: grouped by true label with
``target="predicted"``, a misclassified example adds its map for the class it was taken for.

What the page stores per view is compact: the group keys and counts; for images the mean
input of each group as a grey or RGB PNG, and per method and group the signed mean and the
mean |a| drawn over it as PNG heatmaps (`_png.heatmap_png`: channels summed, each map scaled
on its own), plus their totals (``s`` = the mean map's sum, which is the group's mean of the
examples' stored sums; ``as`` = the sum of mean |a|), so that groups can be compared in size;
for tabular rows, the two mean vectors themselves (6 significant digits). Text gets no
per-position means: token positions hold different words in different examples, so such a
mean is not a property of any word; its view is per token instead (`_tokens`, NOTE: [Token
statistics on the explorer page]).

A method whose attributions hold NaN or infinite values gets no dataset view (a warning says
which); its examples are shown as before.
"""

from __future__ import annotations

from typing import Mapping

import torch

from .._src.dataset_stats import AttributionStatistics
from .._src.warn import warn
from . import _png
from ._payload import num

VIEWS = ("label", "prediction", "label_wrong", "prediction_wrong")


def view_masks(labels: torch.Tensor | None, pred: torch.Tensor) -> dict:
    """view name -> (group keys (N,), examples in the view (N,) bool) for the views that exist."""
    every = torch.ones(len(pred), dtype=torch.bool)
    if labels is None:
        return {"prediction": (pred, every)}
    wrong = pred != labels
    return {"label": (labels, every), "prediction": (pred, every), "label_wrong": (labels, wrong), "prediction_wrong": (pred, wrong)}


def finite_methods(attrs: Mapping[str, torch.Tensor]) -> tuple[list, dict]:
    """(names of methods with finite attributions, {name: why it has no dataset view})."""
    ok, skipped = [], {}
    for name, a in attrs.items():
        if bool(torch.isfinite(a).all()):
            ok.append(name)
        else:
            skipped[name] = "no class means: its attributions hold NaN or infinite values"
            warn(f"explore: method {name!r} has non-finite attributions; the dataset view leaves it out")
    return ok, skipped


def statistics(attrs: Mapping[str, torch.Tensor], labels: torch.Tensor | None, pred: torch.Tensor) -> dict:
    """view -> method -> `AttributionStatistics` of that view's examples (None when the view has
    none), for the methods with finite attributions (NOTE: [Class means on the explorer page])."""
    names, _ = finite_methods(attrs)
    out = {}
    for view, (keys, mask) in view_masks(labels, pred).items():
        by = "label" if view.startswith("label") else "prediction"
        out[view] = {
            name: AttributionStatistics.from_attributions(attrs[name][mask], keys[mask], top_k=1, by=by) if mask.any() else None
            for name in names
        }
    return out


def _group_inputs(inputs: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, groups: tuple) -> list:
    """The mean input of each group's examples in the view (float64), in the order of ``groups``."""
    x = inputs.detach().cpu().double()
    return [x[mask & (keys == g)].mean(0) for g in groups]


def payload(kind: str, inputs: torch.Tensor, attrs: Mapping[str, torch.Tensor], labels: torch.Tensor | None,
            pred: torch.Tensor) -> dict | None:  # fmt: skip
    """The page's ``dataset`` entry (module docstring), or None for text (whose view is `_tokens`')."""
    if kind == "text":
        return None
    names, skipped = finite_methods(attrs)
    stats = statistics({n: attrs[n] for n in names}, labels, pred)
    views = {}
    for view, (keys, mask) in view_masks(labels, pred).items():
        groups = tuple(int(g) for g in torch.unique(keys[mask]))  # sorted, as AttributionStatistics' groups
        entry = {"groups": list(groups), "n": [int((keys[mask] == g).sum()) for g in groups], "methods": {}}
        means_x = _group_inputs(inputs, keys, mask, groups) if kind == "image" else [None] * len(groups)
        if kind == "image":
            entry["x"] = [_png.input_png(mx) for mx in means_x]
        for name in attrs:
            s = stats[view].get(name)
            if name in skipped:
                entry["methods"][name] = None
            elif s is None:  # no example in this view
                entry["methods"][name] = []
            else:
                assert s.groups == groups and s.count.tolist() == entry["n"]
                entry["methods"][name] = [_group(kind, s, g, means_x[g]) for g in range(len(groups))]
        views[view] = entry
    return {"views": views, "skipped": skipped}


def _group(kind: str, s: AttributionStatistics, g: int, mean_x) -> dict:
    mean, mean_abs = s.mean[g], s.mean_abs[g]
    out = {"s": num(mean.sum()), "as": num(mean_abs.sum())}
    if kind == "image":
        out["m"], out["a"] = _png.heatmap_png(mean, mean_x), _png.heatmap_png(mean_abs, mean_x)
    else:
        out["m"], out["a"] = [num(v) for v in mean.tolist()], [num(v) for v in mean_abs.tolist()]
    return out
