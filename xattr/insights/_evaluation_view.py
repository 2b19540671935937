"""The explorer's evaluation view: `xattr.metrics.evaluate` run on the page's methods, as payload.

NOTE: [Evaluation on the explorer page]
``explore(..., evaluation=True)`` scores every method of the page with `xattr.metrics.evaluate`
on the page's inputs and explained classes (``target=`` the page's targets, ``batch_size=`` its
``chunk_size``, the same seed), so the page's table is `Evaluation.table` (mean and percentile
bootstrap interval) and its ranks `Evaluation.ranks`; nothing here recomputes a metric or an
interval. The attributions the page already holds serve every metric that only reads them
(deletion, insertion, faithfulness correlation, infidelity, sparseness, the localization
metrics, ...): they go to `evaluate` as precomputed tensors. The metrics whose entry ``needs``
"method" (sensitivity, the stability metrics, randomization) call the method again at other
inputs, so they get the method's ``make`` and `evaluate` runs it anew. The two halves run with
one base seed, and since `evaluate` derives each metric's seed from its name and batch (NOTE:
[Seeds of an evaluation] in `xattr/metrics/_evaluate.py`), splitting the metrics changes no
number; the halves are joined into one `Evaluation` in the order the metrics were given.

Per example the page shows each method's value under each metric and its place among the
methods on that example (`average_ranks`: 1 the best by the metric's direction, ties share).
"Where the methods disagree" orders the examples by a rank spread that does not depend on
the methods' scales: under the chosen metric, each method ranks the examples by its own
values (`average_ranks` over the examples with a finite value; rank 1 the best), the rank
``r`` is made a position ``q = (r - 1) / (n - 1)`` in [0, 1] among that method's ``n`` finite
values (0.5 when n is 1), and the example's spread is ``max q - min q`` over the methods with
a finite value there (none when fewer than two have one). A spread near 1 means one method
finds the example among its best and another among its worst. The spread is the same for
either direction, and for any increasing transform of one method's values.

NOTE: [Curves on the explorer page]
For every curve metric of the evaluation (deletion, insertion, ROAD, randomization: NOTE:
[Curves of an evaluation] in `xattr/metrics/_evaluation_curves.py`) the page holds what
`Evaluation.mean_curves` gives, each method's mean curve with its 95% bootstrap band per point
(over all the examples, with the table's seed and resamples), and what `Evaluation.curves`
gives, each example's curve per method, so the page can overlay an example's curves on the
means. When the rerun half of the metrics (randomization) and the shared half both have
curves, the joined `Evaluation` keeps both halves' curves. Curve numbers are stored as the
page's other numbers (6 significant digits, None for nan); the points x once per metric when
every example shares them (the usual case), else per method and example too. The per-example
curves are the page's bulk: M methods x N examples x S points per metric (x2 with per-example
x). Past ``MAX_CURVE_VALUES`` of them over all curve metrics, the page keeps the curves of
every k-th example only (#0, #k, #2k, ...; k the smallest stride that fits) and says so; the
means and bands stay over every example.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from ..metrics import evaluate as _evaluate
from ..metrics import entries as _entries
from ..metrics._evaluate import base_seed
from ..metrics._evaluation import N_BOOT, Evaluation, average_ranks
from ._payload import num

LEVEL = 0.95
MAX_CURVE_VALUES = 50_000  # per-example curve numbers on one page (NOTE: [Curves on the explorer page])


def entries(evaluation, masks, n: int) -> dict | None:
    """The metric entries ``evaluation=`` asks for, name -> Entry (None when it is False),
    checked before anything is computed: unknown names, and entries needing masks without them."""
    if evaluation is False or evaluation is None:
        if masks is not None:
            raise ValueError("explore: masks= are for the evaluation's localization metrics: pass evaluation= too")
        return None
    if evaluation is True:
        chosen = _entries.resolve(None)
    elif isinstance(evaluation, (Mapping, list, tuple)):
        if not evaluation:
            raise ValueError("explore: evaluation is empty: give at least one entry (or its name), True for "
                             "evaluate's default metrics, or False for no evaluation")  # fmt: skip
        try:
            chosen = _entries.resolve(evaluation)
        except (ValueError, TypeError) as e:
            raise type(e)(f"explore: evaluation: {e}") from None
    else:
        raise TypeError(
            "explore: evaluation must be True (evaluate's default metrics), False, or a list or dict of "
            f"xattr.metrics.entries entries (or their names), got {type(evaluation).__name__}"
        )
    try:
        _entries.check_masks(masks, n, chosen)
    except ValueError as e:
        raise ValueError(f"explore: evaluation: {e}") from None
    return chosen


def run(chosen: dict, model, methods: Mapping, inputs: torch.Tensor, targets: torch.Tensor, attrs: Mapping, *,
        masks, chunk_size, generator, show_progress: bool) -> Evaluation:  # fmt: skip
    """`evaluate` of every method under ``chosen``, the page's attributions shared where they
    can be (NOTE: [Evaluation on the explorer page])."""
    for name, a in attrs.items():
        if tuple(a.shape) != tuple(inputs.shape):
            raise ValueError(
                f"explore: evaluation scores attributions shaped like the inputs {tuple(inputs.shape)}, but method "
                f"{name!r} gives {tuple(a.shape)} (a map summed over channels): leave it out of methods, or "
                "pass evaluation=False"
            )
    base = base_seed(generator)  # one seed for both halves, even from a torch.Generator
    shared = {k: e for k, e in chosen.items() if "method" not in e.needs}
    rerun = {k: e for k, e in chosen.items() if "method" in e.needs}
    kw = dict(target=targets.to(inputs.device), masks=masks, batch_size=chunk_size, generator=base,
              show_progress=show_progress)  # fmt: skip
    parts = []
    if shared:
        fixed = {name: a.to(inputs.device) for name, a in attrs.items()}
        parts.append(_evaluate(model, fixed, inputs, metrics=shared, **kw))
    if rerun:
        parts.append(_evaluate(model, dict(methods), inputs, metrics=rerun, **kw))
    if len(parts) == 1:
        return parts[0]
    names = list(chosen)
    values = torch.full((len(attrs), len(names), len(inputs)), math.nan, dtype=torch.float64)
    for ev in parts:
        for k, metric in enumerate(ev.metrics):
            values[:, names.index(metric)] = ev.values[:, k]
    directions = {k: e.direction for k, e in chosen.items()}
    curves = {m: ev._curve_set(m) for ev in parts for m in ev.curve_metrics}  # both halves' curves
    return Evaluation(list(attrs), names, directions, values, parts[0].targets, seed=parts[0].seed, curves=curves)


def positions(values, direction: str) -> list:
    """One method's values over the examples as positions in [0, 1] (0 the best; None for nan)."""
    ranks = average_ranks([float(v) for v in values], direction)
    n = sum(not math.isnan(r) for r in ranks)
    return [None if math.isnan(r) else ((r - 1) / (n - 1) if n > 1 else 0.5) for r in ranks]


def disagreement(values: torch.Tensor, direction: str) -> list:
    """Per example, the spread of the methods' positions (``values`` (M, N); NOTE: [Evaluation
    on the explorer page]); None where fewer than two methods have a finite value."""
    pos = [positions(row.tolist(), direction) for row in values]
    out = []
    for j in range(values.shape[1]):
        qs = [p[j] for p in pos if p[j] is not None]
        out.append(max(qs) - min(qs) if len(qs) > 1 else None)
    return out


def shared_x(x: torch.Tensor):
    """The points of every finite curve of ``x`` (M, N, S) when they are all the same, else None."""
    rows = x.reshape(-1, x.shape[-1])
    rows = rows[~torch.isnan(rows).any(1)]
    if len(rows) and bool((rows == rows[0]).all()):
        return rows[0]
    return None


def curve_examples(n: int, per_example: int, limit: int) -> list:
    """The examples whose curves the page embeds: all of them when ``n * per_example`` numbers
    fit in ``limit``, else every k-th from #0 with the smallest stride k that fits (at least #0)."""
    if n * per_example <= limit:
        return list(range(n))
    keep = max(1, limit // per_example)
    return list(range(0, n, math.ceil(n / keep)))


def _rows(t: torch.Tensor) -> list:
    return [[num(v) for v in row] for row in t.tolist()]


def curves_payload(ev: Evaluation, limit: int | None = None) -> tuple[dict, dict | None]:
    """(metric -> its ``curve`` entry, the page's ``curves`` entry or None): the mean curves
    with their bands and the embedded examples' curves (NOTE: [Curves on the explorer page])."""
    limit = MAX_CURVE_VALUES if limit is None else limit
    sets = {m: ev._curve_set(m) for m in ev.curve_metrics}
    if not sets:
        return {}, None
    n = int(ev.values.shape[2])
    shared = {m: shared_x(c.x) for m, c in sets.items()}
    per_example = sum(c.y.shape[0] * c.y.shape[2] * (1 if shared[m] is not None else 2) for m, c in sets.items())
    keep = curve_examples(n, per_example, limit)
    out = {}
    for m, c in sets.items():
        bands = ev.mean_curves(m, LEVEL, N_BOOT)
        out[m] = {
            "rule": c.rule,
            "x_label": c.x_label,
            "y_label": c.y_label,
            "ticks": None if c.ticks is None else list(c.ticks),
            "x": None if shared[m] is None else [num(v) for v in shared[m].tolist()],
            "mean": [{"x": [num(v) for v in b.x.tolist()], "mean": [num(v) for v in b.mean.tolist()],
                      "low": [num(v) for v in b.low.tolist()], "high": [num(v) for v in b.high.tolist()], "n": b.n}
                     for b in bands.values()],  # fmt: skip
            "y": [_rows(c.y[i, keep]) for i in range(len(ev.methods))],
            "ex_x": None if shared[m] is not None else [_rows(c.x[i, keep]) for i in range(len(ev.methods))],
        }  # fmt: skip
    stride = keep[1] - keep[0] if len(keep) > 1 else (1 if n == 1 else n)
    return out, {"examples": keep, "of": n, "stride": stride, "values": len(keep) * per_example, "limit": limit}


def payload(ev: Evaluation, max_curve_values: int | None = None) -> dict:
    """The page's ``evaluation`` entry: per metric (in order) its direction, each method's cell
    [mean, low, high, n] and rank, the best methods, per method and example the value, its
    place among the methods there, the examples' disagreement spreads, and for a curve metric
    its ``curve`` (None for the others); ``curves`` says which examples' curves are embedded
    (None without curve metrics; NOTE: [Curves on the explorer page])."""
    table, ranks = ev.table(LEVEL, N_BOOT), ev.ranks()
    curves, embedded = curves_payload(ev, max_curve_values)
    metrics = []
    for k, metric in enumerate(ev.metrics):
        d = ev.directions[metric]
        vals = ev.values[:, k]
        cells = [table[metric][m] for m in ev.methods]
        rank = [ranks[metric][m] for m in ev.methods]
        top = min((r for r in rank if not math.isnan(r)), default=math.nan)
        places = [average_ranks(vals[:, j].tolist(), d) for j in range(vals.shape[1])]
        metrics.append({
            "name": metric,
            "direction": d,
            "cells": [[num(c.mean), num(c.low), num(c.high), c.n] for c in cells],
            "rank": [num(r) for r in rank],
            "best": [i for i, r in enumerate(rank) if r == top],
            "values": [[num(v) for v in row.tolist()] for row in vals],
            "place": [[num(p[i]) for p in places] for i in range(len(ev.methods))],
            "spread": [None if s is None else num(s) for s in disagreement(vals, d)],
            "curve": curves.get(metric),
        })  # fmt: skip
    return {
        "n": int(ev.values.shape[2]),
        "level": LEVEL,
        "interval": f"{round(100 * LEVEL)}% percentile bootstrap of the mean over examples, {N_BOOT} resamples, seed {ev.seed}",
        "metrics": metrics,
        "curves": embedded,
    }
