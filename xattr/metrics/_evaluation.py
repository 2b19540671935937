"""`Evaluation`: the per-example values of `evaluate` and their tables, ranks, comparisons and
plot, and the curves behind its curve metrics (NOTE: [Curves of an evaluation] in
_evaluation_curves.py).

NOTE: [Intervals of an evaluation]
A cell's interval is the percentile bootstrap of its mean over examples: with the cell's n
finite values v (nan values, e.g. a correlation of an all-zero map, are left out of the mean
and of the interval, and ``n`` says how many counted), ``n_boot`` resamples of n indices are
drawn with replacement by ``numpy.random.default_rng(seed).integers(0, n, size=(n_boot, n))``,
each resample's mean is taken, and the interval runs from the ``(1 - level) / 2`` to the
``(1 + level) / 2`` quantile of those means (numpy's default linear interpolation). ``seed`` is
the evaluation's (its ``generator``), so every cell of the same n draws the same resamples: the
intervals repeat on a rerun, and methods are resampled on the same examples. `compare` uses the
same scheme on the paired differences ``a_j - b_j`` over the examples where both are finite.
"""

from __future__ import annotations

import html
import math
from typing import NamedTuple

import numpy as np
import torch

from . import _evaluation_curves as C
from ._evaluation_curves import Curves

N_BOOT = 1000
ARROWS = {"higher": "↑", "lower": "↓"}


class Cell(NamedTuple):
    """One method under one metric: the mean over examples, its interval, and how many counted.

    Example:
      >>> cell = ev.table()["deletion"]["ig"]
      >>> cell.mean, cell.low, cell.high      # the mean over examples and its 95% interval
    """

    mean: float
    low: float
    high: float
    n: int


class Comparison(NamedTuple):
    """`Evaluation.compare`: the mean of ``a - b`` with its paired interval, the fraction of
    examples where a is better (by the metric's direction), where they tie, and how many counted.

    Example:
      >>> cmp = ev.compare("saliency", "ig", "deletion")
      >>> cmp.difference, cmp.low, cmp.high, cmp.wins
    """

    difference: float
    low: float
    high: float
    wins: float
    ties: float
    n: int


def bootstrap(v: np.ndarray, level: float, n_boot: int, seed: int) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of v (NOTE: [Intervals of an evaluation])."""
    n = len(v)
    if n == 0:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    means = v[idx].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def average_ranks(means: list[float], direction: str) -> list[float]:
    """Rank 1 for the best mean; equal means share the mean of their ranks; nan last, as nan."""
    finite = [(m if direction == "lower" else -m, i) for i, m in enumerate(means) if not math.isnan(m)]
    finite.sort()
    ranks = [math.nan] * len(means)
    j = 0
    while j < len(finite):
        k = j
        while k + 1 < len(finite) and finite[k + 1][0] == finite[j][0]:
            k += 1
        for _, i in finite[j : k + 1]:
            ranks[i] = (j + k) / 2 + 1
        j = k + 1
    return ranks


class Evaluation:
    """Per-example metric values of several attribution methods: ``values`` (M, K, N) float64.

    ``methods`` (M names), ``metrics`` (K names), ``directions`` (metric -> "higher" or
    "lower", the better), ``targets`` (N,) the explained classes, ``seed`` the bootstrap seed.
    `table` gives means with percentile-bootstrap intervals (NOTE: [Intervals of an
    evaluation]), `ranks` the methods' order per metric, `compare` a paired comparison, and
    `to_markdown`, `to_html`, `to_dict`, `plot` the same table in other forms. For the curve
    metrics (``curve_metrics``: deletion, insertion, ROAD, randomization) it also keeps every
    example's curve (``curves``: metric -> `CurveSet`, float64 (M, N, S) x and y; NOTE: [Curves
    of an evaluation]): `curves`, `mean_curves` and `plot_curves` read them.

    Example:
      >>> ev = xattr.metrics.evaluate(model, {"saliency": xattr.saliency, "ig": xattr.integrated_gradients}, x)
      >>> ev.table()["deletion"]["ig"]        # Cell(mean, low, high, n)
      >>> ev.per_example("ig", "deletion")    # (N,)
    """

    def __init__(self, methods, metrics, directions, values, targets, *, seed: int = 0, curves=None):
        self.methods, self.metrics = list(methods), list(metrics)
        self.directions = dict(directions)
        self.values = torch.as_tensor(values, dtype=torch.float64)
        if self.values.shape[:2] != (len(self.methods), len(self.metrics)):
            raise ValueError(f"values of shape {tuple(self.values.shape)} do not match {len(self.methods)} methods "
                             f"x {len(self.metrics)} metrics")  # fmt: skip
        self.targets, self.seed = targets, seed
        self._curves = C.check(curves, self.methods, self.metrics, self.values.shape[2])

    @property
    def curve_metrics(self) -> list:
        """The metrics whose curves are kept, in the order of ``metrics``."""
        return [m for m in self.metrics if m in self._curves]

    def _curve_set(self, metric: str):
        if not isinstance(metric, str):
            raise TypeError(f"metric must be the name of one curve metric (a str), one of {self.curve_metrics}, "
                            f"got {type(metric).__name__}")  # fmt: skip
        if metric not in self._curves:
            if metric not in self.metrics:
                raise KeyError(f"unknown metric {metric!r}; the metrics are {self.metrics}")
            raise ValueError(f"metric {metric!r} gives one number per example, not a curve; the metrics with "
                             f"curves are {self.curve_metrics}")  # fmt: skip
        return self._curves[metric]

    def curves(self, metric: str) -> dict:
        """method -> `Curves` (x, y, values, rule, x_label, ticks): every example's curve under a
        curve metric, copies (NOTE: [Curves of an evaluation]). ``x`` is (S,) when every example
        shares it, else (N, S); ``values`` is `per_example`, the ``rule`` ("trapezoid": area over
        x; "last": last point) of each curve."""
        c = self._curve_set(metric)
        k = self.metrics.index(metric)
        return {name: Curves(C.shared_x(c.x[i]), c.y[i].clone(), self.values[i, k].clone(), c.rule, c.x_label,
                             c.ticks) for i, name in enumerate(self.methods)}  # fmt: skip

    def mean_curves(self, metric: str, level: float = 0.95, n_boot: int = N_BOOT) -> dict:
        """method -> `Band` (x, mean, low, high, n): the mean curve over the examples with a
        bootstrap interval at each point (NOTE: [Curves of an evaluation]); its area (or last
        point) is the table's mean."""
        _check_level(level, n_boot)
        c = self._curve_set(metric)
        return {name: C.band(c.x[i].numpy(), c.y[i].numpy(), level, n_boot, self.seed)
                for i, name in enumerate(self.methods)}  # fmt: skip

    def plot_curves(self, metric: str, ax=None, *, level: float = 0.95, n_boot: int = N_BOOT, path=None,
                    dpi: int = 100):  # fmt: skip
        """The mean curve of every method under a curve metric with its bootstrap band, into
        ``ax`` (a matplotlib Axes) or a new Figure (no pyplot); returns the Figure (saved to
        ``path`` when given)."""
        from ..viz.dataset import _done, _figure

        self._curve_set(metric)
        if ax is None:
            fig = _figure(6.0, 4.0, dpi)
            ax = fig.add_subplot(1, 1, 1)
        elif not hasattr(ax, "fill_between") or ax.figure is None:
            raise TypeError(f"ax must be a matplotlib Axes (or None for a new figure), got {type(ax).__name__}")
        C.plot(self, metric, ax, level, n_boot)
        if ax.figure.get_layout_engine() is None:
            ax.figure.tight_layout()
        return _done(ax.figure, path, dpi)

    def _index(self, method: str, metric: str) -> tuple[int, int]:
        if method not in self.methods:
            raise KeyError(f"unknown method {method!r}; the methods are {self.methods}")
        if metric not in self.metrics:
            raise KeyError(f"unknown metric {metric!r}; the metrics are {self.metrics}")
        return self.methods.index(method), self.metrics.index(metric)

    def per_example(self, method: str, metric: str) -> torch.Tensor:
        """The (N,) values of one method under one metric (nan where the metric has none)."""
        i, k = self._index(method, metric)
        return self.values[i, k].clone()

    def table(self, level: float = 0.95, n_boot: int = N_BOOT) -> dict:
        """metric -> method -> `Cell` (mean, low, high, n)."""
        _check_level(level, n_boot)
        out = {}
        for k, metric in enumerate(self.metrics):
            out[metric] = {}
            for i, method in enumerate(self.methods):
                v = self.values[i, k].numpy()
                v = v[np.isfinite(v)]
                lo, hi = bootstrap(v, level, n_boot, self.seed)
                out[metric][method] = Cell(float(v.mean()) if len(v) else math.nan, lo, hi, len(v))
        return out

    def ranks(self) -> dict:
        """metric -> method -> rank of its mean (1 the best by the metric's direction; tied means
        share the mean of their ranks; a nan mean has a nan rank)."""
        out = {}
        for k, metric in enumerate(self.metrics):
            means = [_nanmean(self.values[i, k].numpy()) for i in range(len(self.methods))]
            out[metric] = dict(zip(self.methods, average_ranks(means, self.directions[metric])))
        return out

    def compare(self, a: str, b: str, metric: str, level: float = 0.95, n_boot: int = N_BOOT) -> Comparison:
        """Method a against b under one metric, paired by example (NOTE: [Intervals of an evaluation])."""
        _check_level(level, n_boot)
        i, k = self._index(a, metric)
        j, _ = self._index(b, metric)
        va, vb = self.values[i, k].numpy(), self.values[j, k].numpy()
        both = np.isfinite(va) & np.isfinite(vb)
        d = va[both] - vb[both]
        if len(d) == 0:
            return Comparison(math.nan, math.nan, math.nan, math.nan, math.nan, 0)
        lo, hi = bootstrap(d, level, n_boot, self.seed)
        better = d > 0 if self.directions[metric] == "higher" else d < 0
        return Comparison(float(d.mean()), lo, hi, float(better.mean()), float((d == 0).mean()), len(d))

    def to_dict(self, level: float = 0.95, n_boot: int = N_BOOT) -> dict:
        """Plain Python: the table, the ranks and the per-example values; for a curve metric also
        ``"curve"`` (its rule, x label and point names) and per method ``"x"`` ((S,) or (N, S))
        and ``"curves"`` ((N, S)) as lists (NOTE: [Curves of an evaluation])."""
        table, ranks = self.table(level, n_boot), self.ranks()
        out = {
            "methods": list(self.methods),
            "level": level,
            "interval": f"percentile bootstrap of the mean over examples, {n_boot} resamples, seed {self.seed}",
            "metrics": {
                m: {
                    "direction": self.directions[m],
                    "methods": {
                        name: {**table[m][name]._asdict(), "rank": ranks[m][name],
                               "values": self.values[i, k].tolist()}  # fmt: skip
                        for i, name in enumerate(self.methods)
                    },
                }
                for k, m in enumerate(self.metrics)
            },
        }
        for m in self.curve_metrics:
            c = self._curves[m]
            entry = out["metrics"][m]
            entry["curve"] = {"rule": c.rule, "x_label": c.x_label, "y_label": c.y_label,
                              "ticks": None if c.ticks is None else list(c.ticks)}  # fmt: skip
            for name, cv in self.curves(m).items():
                entry["methods"][name].update(x=cv.x.tolist(), curves=cv.y.tolist())
        return out

    def _rows(self, digits: int, level: float, n_boot: int) -> tuple[list, list]:
        table = self.table(level, n_boot)
        head = ["method"] + [f"{m} {ARROWS[self.directions[m]]}" for m in self.metrics]
        rows = [[name] + [_cell(table[m][name], digits) for m in self.metrics] for name in self.methods]
        return head, rows

    def to_markdown(self, digits: int = 4, level: float = 0.95, n_boot: int = N_BOOT) -> str:
        """A markdown table: one row per method, cells ``mean [low, high]`` (↑: higher is better)."""
        head, rows = self._rows(digits, level, n_boot)
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)

    def to_html(self, digits: int = 4, level: float = 0.95, n_boot: int = N_BOOT, *, curves: bool = False) -> str:
        """An HTML ``<table>`` of the same cells as `to_markdown`; ``curves=True`` adds after it
        the `plot_curves` figure of every curve metric, as an inline PNG."""
        if not isinstance(curves, bool):
            raise TypeError(f"curves must be True or False, got {curves!r}")
        head, rows = self._rows(digits, level, n_boot)
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        out = f'<table class="xattr-evaluation"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'
        if curves:
            figs = [C.figure_html(self.plot_curves(m, level=level, n_boot=n_boot), f"{m} curves")
                    for m in self.curve_metrics]  # fmt: skip
            out += "".join(figs)
        return out

    def __repr__(self) -> str:
        head, rows = self._rows(3, 0.95, N_BOOT)
        widths = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]
        fmt = lambda r: "  ".join(s.ljust(w) for s, w in zip(r, widths)).rstrip()  # noqa: E731
        n = self.values.shape[2]
        lines = [f"Evaluation of {len(self.methods)} methods x {len(self.metrics)} metrics on {n} examples "
                 "(mean [95% bootstrap interval]; ↑ higher / ↓ lower is better)", fmt(head)]  # fmt: skip
        return "\n".join(lines + [fmt(r) for r in rows])

    def plot(self, *, level: float = 0.95, n_boot: int = N_BOOT, path=None, ncols: int = 4, dpi: int = 100):
        """A matplotlib Figure (no pyplot): one panel per metric, each method a point with its
        interval bar, the best method filled, the better direction in the panel's title."""
        from ..viz.dataset import _done, _figure

        if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
            raise ValueError(f"ncols must be a positive int (panels per row), got {ncols!r}")
        table = self.table(level, n_boot)
        k = len(self.metrics)
        cols = min(k, ncols)
        rows = math.ceil(k / cols)
        fig = _figure(3.0 * cols + 1.2, 0.35 * len(self.methods) * rows + 1.2 * rows, dpi)
        ranks = self.ranks()
        for p, metric in enumerate(self.metrics):
            ax = fig.add_subplot(rows, cols, p + 1)
            top = min((r for r in ranks[metric].values() if not math.isnan(r)), default=math.nan)
            for y, name in enumerate(self.methods):
                c = table[metric][name]
                err = None if math.isnan(c.mean) else [[c.mean - c.low], [c.high - c.mean]]
                best = ranks[metric][name] == top
                ax.errorbar([c.mean], [y], xerr=err, fmt="o", color="C0", mfc="C0" if best else "white", capsize=3)
            ax.set_yticks(range(len(self.methods)))
            ax.set_yticklabels(self.methods if p % cols == 0 else [""] * len(self.methods), fontsize=8)
            ax.invert_yaxis()
            better = "higher is better →" if self.directions[metric] == "higher" else "← lower is better"
            ax.set_title(f"{metric}\n{better}", fontsize=9)
            ax.tick_params(axis="x", labelsize=7)
            ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        return _done(fig, path, dpi)


def _nanmean(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else math.nan


def _cell(c: Cell, digits: int) -> str:
    if math.isnan(c.mean):
        return "nan"
    return f"{c.mean:.{digits}g} [{c.low:.{digits}g}, {c.high:.{digits}g}]"


def _check_level(level, n_boot) -> None:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), e.g. 0.95, got {level!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
