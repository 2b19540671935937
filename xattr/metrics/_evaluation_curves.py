"""The curves behind an `Evaluation`'s curve metrics: kept per example, averaged with bootstrap
bands, plotted.

NOTE: [Curves of an evaluation]
Some metrics summarise a curve: deletion, insertion and ROAD give the model's output at
increasing fractions of removed (or inserted, or imputed) features, and their value is the
curve's area by the trapezoid rule over those fractions (``Curve.auc``); the randomization
check gives the similarity after each randomized layer, and its value is the last point (all
layers randomized). A custom entry returning a `Curve` counts as an area. For such a metric
`evaluate` keeps, beside the values, every example's curve for every method: ``x`` and ``y``,
float64 (M, N, S) for M methods, N examples and S points, 2 M N S 8 bytes (6 methods x 100
examples x 17 points: 160 kB). Nothing else is kept (no perturbed inputs, no attributions).
``x`` is per example because a feature mask with one row per example gives every example its
own fractions (NOTE: [Each example's own features] in _curves.py); `Evaluation.curves` returns
it as (S,) when every example shares it. Batches with fewer points than the longest are padded
by repeating their last point, which adds nothing to an area and keeps the last point; a method
whose metric gave no curve (a custom entry that returns a tensor for some calls) has nan rows.

The values are the metric's own: its area computed in the model output's dtype. The curves are
float64 copies, so the trapezoid rule over them gives the value back up to that dtype's
rounding (about 1e-7 relative for a float32 model, exact to float64 rounding for a float64 one).

The mean curve of a method (`Evaluation.mean_curves`) is over the examples whose curve is
finite. With a shared x it is the mean of y at each point; with x per example, every curve is
first interpolated linearly onto the union of all examples' x (their curves span the same
range, 0 to 1 for deletion and insertion), which keeps every curve's area. The mean is linear,
so the area of the mean curve is the mean of the areas, and the last point of the mean curve
the mean of the last points: the mean curve sums up to the table's mean. The band at each
point is the percentile bootstrap of that point's mean with the evaluation's seed (NOTE:
[Intervals of an evaluation] in _evaluation.py): every point is resampled on the same draws of
examples, as every cell of the table is.
"""

from __future__ import annotations

import base64
import io
import math
from typing import NamedTuple

import numpy as np
import torch

RULES = {"trapezoid": "the area under the curve", "last": "the last point"}


class CurveSet(NamedTuple):
    """All methods' curves under one metric: ``x``, ``y`` (M, N, S) float64, the ``rule`` from a
    curve to its value, what x counts, the names of the points (or None) and what y is."""

    x: torch.Tensor
    y: torch.Tensor
    rule: str
    x_label: str
    ticks: tuple | None = None
    y_label: str = "y"


class Curves(NamedTuple):
    """`Evaluation.curves`: one method's curves under one metric. ``x`` (S,) shared by every
    example or (N, S) per example (``x.expand_as(y)`` reads both), ``y`` (N, S), ``values`` (N,)
    the metric's values (its ``rule`` of each curve: "trapezoid" or "last"), what x counts
    (``x_label``) and the names of the points (``ticks``, the randomized layers, or None)."""

    x: torch.Tensor
    y: torch.Tensor
    values: torch.Tensor
    rule: str
    x_label: str
    ticks: tuple | None


class Band(NamedTuple):
    """`Evaluation.mean_curves`: a method's mean curve ``mean`` over ``x`` (S,), with the
    bootstrap interval ``low``..``high`` at each point, over ``n`` examples."""

    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int


class Collector:
    """The curves of `evaluate`'s calls, gathered per metric and assembled into `CurveSet`s."""

    def __init__(self, n_methods: int, n: int):
        self.m, self.n = n_methods, n
        self.parts: dict = {}
        self.meta: dict = {}

    def add(self, metric: str, method: int, s: int, e: int, traced) -> None:
        if traced.y is None:
            return
        y, x = traced.y, traced.x
        if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[0] != e - s or y.shape[1] < 1:
            raise ValueError(f"metric {metric!r} returned a curve y of shape {_shape(y)}; it must be (B, S) = "
                             f"({e - s}, S): one curve per example")  # fmt: skip
        if not isinstance(x, torch.Tensor) or tuple(x.shape) not in ((y.shape[1],), tuple(y.shape)):
            raise ValueError(f"metric {metric!r} returned curve points x of shape {_shape(x)} for y of shape "
                             f"{tuple(y.shape)}: x must be (S,) or (B, S)")  # fmt: skip
        x = x.detach().to(device="cpu", dtype=torch.float64).expand(y.shape)
        y = y.detach().to(device="cpu", dtype=torch.float64)
        self.parts.setdefault(metric, []).append((method, s, e, x, y))
        ticks = None if traced.ticks is None else tuple(traced.ticks)
        old = self.meta.get(metric)
        if old is not None and old[2] != ticks:
            ticks = None  # the points are named differently by different calls: no names
        first = (traced.rule, traced.x_label or "x", ticks, traced.y_label or "y") if old is None else old
        self.meta[metric] = first[:2] + (ticks,) + first[3:]

    def build(self) -> dict:
        out = {}
        for metric, parts in self.parts.items():
            s_max = max(x.shape[1] for *_, x, _ in parts)
            xs = torch.full((self.m, self.n, s_max), math.nan, dtype=torch.float64)
            ys = xs.clone()
            for i, s, e, x, y in parts:
                xs[i, s:e], ys[i, s:e] = _pad(x, s_max), _pad(y, s_max)
            rule, label, ticks, y_label = self.meta[metric]
            ticks = ticks if ticks is None or len(ticks) == s_max else None
            out[metric] = CurveSet(xs, ys, rule, label, ticks, y_label)
        return out


def _pad(t: torch.Tensor, s: int) -> torch.Tensor:
    """The rows of t with the last column repeated up to s columns (NOTE: [Curves of an evaluation])."""
    return torch.cat([t, t[:, -1:].expand(-1, s - t.shape[1])], 1)


def _shape(t):
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def check(curves, methods: list, metrics: list, n: int) -> dict:
    """``curves`` (metric -> `CurveSet`) checked against the evaluation's shape."""
    out = {}
    for metric, c in dict(curves or {}).items():
        if metric not in metrics:
            raise ValueError(f"curves of unknown metric {metric!r}; the metrics are {metrics}")
        if not isinstance(c, CurveSet):
            raise TypeError(f"curves[{metric!r}] must be a CurveSet, got {type(c).__name__}")
        if c.x.ndim != 3 or c.x.shape[:2] != (len(methods), n) or c.x.shape != c.y.shape or c.rule not in RULES:
            raise ValueError(f"curves[{metric!r}] must hold x and y ({len(methods)}, {n}, S) and a rule in "
                             f"{tuple(RULES)}, got {tuple(c.x.shape)}, {tuple(c.y.shape)}, {c.rule!r}")  # fmt: skip
        out[metric] = c._replace(x=c.x.to(torch.float64), y=c.y.to(torch.float64))
    return out


def shared_x(x: torch.Tensor) -> torch.Tensor:
    """x (N, S) as (S,) when every row is the same (nan rows, of missing curves, left out)."""
    rows = x[~torch.isnan(x).any(1)]
    if len(rows) and bool((rows == rows[0]).all()):
        return rows[0].clone()
    return x.clone()


def band(x: np.ndarray, y: np.ndarray, level: float, n_boot: int, seed: int) -> Band:
    """The mean curve of the finite rows of (x, y) (N, S) with per-point bootstrap intervals."""
    from ._evaluation import bootstrap

    keep = np.isfinite(x).all(1) & np.isfinite(y).all(1)
    x, y = x[keep], y[keep]
    if len(y) == 0:
        nan = np.full(x.shape[1], math.nan)
        return Band(nan, nan, nan.copy(), nan.copy(), 0)
    if (x == x[0]).all():
        grid, ys = x[0].copy(), y
    else:
        grid = np.unique(x)
        ys = np.stack([np.interp(grid, xi, yi) for xi, yi in zip(x, y)])
    bounds = np.array([bootstrap(ys[:, j], level, n_boot, seed) for j in range(ys.shape[1])])
    return Band(grid, ys.mean(0), bounds[:, 0], bounds[:, 1], len(ys))


def plot(ev, metric: str, ax, level: float, n_boot: int):
    """Draws every method's mean curve of ``metric`` with its band into ``ax``."""
    c = ev._curve_set(metric)
    bands = ev.mean_curves(metric, level, n_boot)
    table = ev.table(level, n_boot)[metric]
    word = "area" if c.rule == "trapezoid" else "last point"
    for j, (name, b) in enumerate(bands.items()):
        color = f"C{j % 10}"
        ax.plot(b.x, b.mean, color=color, lw=1.5, label=f"{name} ({word} {table[name].mean:.3g})")
        ax.fill_between(b.x, b.low, b.high, color=color, alpha=0.2, lw=0)
    if c.ticks is not None:
        ax.set_xticks(range(1, len(c.ticks) + 1))
        ax.set_xticklabels(c.ticks, rotation=45, ha="right", fontsize=7)
    better = "higher" if ev.directions[metric] == "higher" else "lower"
    ax.set_title(f"{metric}: {RULES[c.rule]}, {better} is better\nmean over examples, {level:.0%} bootstrap band",
                 fontsize=9)  # fmt: skip
    ax.set_xlabel(c.x_label, fontsize=8)
    ax.set_ylabel(c.y_label, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return ax


def figure_html(fig, alt: str) -> str:
    """A figure as an inline PNG ``<img>`` (base64), for `Evaluation.to_html`."""
    import html

    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<figure class="xattr-curves"><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"/></figure>'
