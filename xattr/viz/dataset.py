"""Plots of dataset-level attribution statistics and of attribution clusters (SpRAy).

Each function returns a matplotlib ``Figure`` built on the Agg canvas (no pyplot, no window,
no global backend change) and, given ``path``, also writes it there (parent folders created).
Image maps are drawn with `xattr.viz.draw` and its colour maps; a map of shape (C, H, W) or
(H, W) counts as an image, a 1-D one as tabular features, drawn as bars.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .heatmap import _legend, _numpy, _percentile_scale, draw, normalize, to_map

_STATS = ("mean", "mean_abs", "std", "top_k_frequency")


def _figure(width: float, height: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _done(fig, path, dpi: int):
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=dpi, facecolor="white")
    return fig


def _is_image(shape) -> bool:
    return len(shape) in (2, 3)


def _names(n: int, shape, feature_names) -> list[str]:
    if feature_names is not None:
        if len(feature_names) != n:
            raise ValueError(f"{len(feature_names)} feature_names for {n} features")
        return [str(s) for s in feature_names]
    return [str(j) if len(shape) == 1 else str(tuple(int(i) for i in np.unravel_index(j, shape))) for j in range(n)]


_STATS_OBJ = "the AttributionStatistics that xattr.attribution_statistics returns"
_CLUSTERS_OBJ = "the Clusters that xattr.cluster_attributions returns"


def _expect(obj, attrs: tuple, what: str, fn: str) -> None:
    if not all(hasattr(obj, a) for a in attrs):
        raise TypeError(f"{fn} needs {what}, got {type(obj).__name__}")


def _check_sign(sign) -> None:
    if sign not in ("auto", "signed", "abs"):
        raise ValueError(f"sign must be 'auto', 'signed' or 'abs', got {sign!r}")


def _bars(ax, values, names, *, err=None, signed=True) -> None:
    """Horizontal bars, the first value on top; red for positive, blue for negative."""
    y = np.arange(len(values))[::-1]
    colors = np.where(values >= 0, "#b2182b", "#2166ac") if signed else "#b2182b"
    ax.barh(y, values, xerr=err, color=colors, ecolor="0.25", capsize=2)
    ax.set_yticks(y, names, fontsize=7)
    ax.axvline(0, color="0.5", linewidth=0.6)
    ax.tick_params(axis="x", labelsize=7)


def plot_class_means(
    stats,
    *,
    stat: str = "mean",
    groups: Sequence | None = None,
    sign: str = "auto",
    shared_scale: bool = True,
    feature_names: Sequence[str] | None = None,
    columns: int = 5,
    title: str | None = None,
    path=None,
    cell: float = 1.4,
    dpi: int = 120,
):
    """One panel per group of an `AttributionStatistics`: its mean (or ``stat``) map.

    Args:
      stats: an `xattr.AttributionStatistics`.
      stat: "mean" (signed), "mean_abs", "std" or "top_k_frequency".
      groups: the group keys to show, in order (default: every group).
      sign: the colour map of image panels ("auto", "signed", "abs"), as `xattr.viz.draw`.
      shared_scale: one colour scale (the 99.5th percentile of every panel's |values|) for
        all image panels, so groups compare; False scales each panel by itself.
      feature_names: names of tabular features (bar labels).
      columns: panels per row.
      path: also write the figure there (PNG, or any format matplotlib knows).

    Returns:
      the Figure: one axis per group, plus one colour bar axis for image maps.

    Example:
      >>> stats = xattr.attribution_statistics(xattr.saliency, model, loader, by="label")
      >>> fig = xattr.viz.plot_class_means(stats, path="class_means.png")   # one panel per class
    """
    _expect(stats, ("groups", "importance"), _STATS_OBJ, "plot_class_means")
    _check_sign(sign)
    if stat not in _STATS:
        raise ValueError(f"stat must be one of {_STATS}, got {stat!r}")
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be a positive int, got {columns!r}")
    keys = list(stats.groups) if groups is None else list(groups)
    if not keys:
        raise ValueError("groups is empty: name at least one group")
    values = getattr(stats, stat)
    maps = [_numpy(values[stats.index(k)]) for k in keys]
    shape = stats.feature_shape
    n_rows = -(-len(keys) // columns)
    n_cols = min(columns, len(keys))
    label = {"mean": "mean attribution", "mean_abs": "mean |attribution|", "std": "std of attribution",
             "top_k_frequency": f"top-{stats.top_k} frequency"}[stat]  # fmt: skip
    if _is_image(shape):
        maps = [to_map(m) for m in maps]
        scale = _percentile_scale(np.abs(np.concatenate([m.ravel() for m in maps])), 99.5) if shared_scale else None
        head, foot = 0.6, 0.6
        fig = _figure(cell * n_cols + 0.2, head + foot + cell * n_rows, dpi)
        w, h = fig.get_size_inches()
        fig.subplots_adjust(left=0.1 / w, right=1 - 0.1 / w, top=1 - head / h, bottom=foot / h, wspace=0.08, hspace=0.3)
        used = set()
        for i, (key, m) in enumerate(zip(keys, maps)):
            ax = fig.add_subplot(n_rows, n_cols, i + 1)
            used.add(draw(ax, m, sign=sign, scale=scale))
            ax.set_title(f"{key} (n={int(stats.count[stats.index(key)])})", fontsize=8)
        _legend(fig, used, foot / h, w)
        fig.suptitle(title or f"{label} by {stats.by or 'dataset'}", fontsize=10, y=1 - 0.08 / h, va="top")
    else:
        names = _names(int(np.prod(shape)), shape, feature_names)
        fig = _figure(2.6 * n_cols, 0.5 + (0.6 + 0.16 * len(names)) * n_rows, dpi)
        fig.suptitle(title or f"{label} by {stats.by or 'dataset'}", fontsize=10)
        for i, (key, m) in enumerate(zip(keys, maps)):
            ax = fig.add_subplot(n_rows, n_cols, i + 1)
            _bars(ax, m.ravel(), names if i % n_cols == 0 else [""] * len(names))
            ax.set_title(f"{key} (n={int(stats.count[stats.index(key)])})", fontsize=8)
        fig.tight_layout()
    return _done(fig, path, dpi)


def plot_importance(
    stats,
    *,
    top: int = 20,
    level: float = 0.95,
    feature_names: Sequence[str] | None = None,
    title: str | None = None,
    path=None,
    dpi: int = 120,
):
    """Global mean |attribution| of the ``top`` most important features, with intervals.

    Bars are `AttributionStatistics.importance`, sorted, with error bars of its ``level``
    normal interval (`importance_interval`). Returns the Figure (one axis).

    Example:
      >>> stats = xattr.attribution_statistics(xattr.saliency, model, loader)
      >>> fig = xattr.viz.plot_importance(stats, top=10, feature_names=names)
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive int, got {top!r}")
    _expect(stats, ("importance", "importance_interval"), _STATS_OBJ, "plot_importance")
    imp = _numpy(stats.importance).ravel()
    lo, hi = (_numpy(t).ravel() for t in stats.importance_interval(level))
    names = _names(imp.size, stats.feature_shape, feature_names)
    order = np.argsort(-imp, kind="stable")[:top]
    err = np.nan_to_num(np.stack([imp[order] - lo[order], hi[order] - imp[order]]))
    fig = _figure(5.0, 1.0 + 0.22 * len(order), dpi)
    ax = fig.add_subplot(1, 1, 1)
    _bars(ax, imp[order], [names[j] for j in order], err=err, signed=False)
    ax.set_xlabel(f"mean |attribution| over {stats.n} examples, {level:.0%} interval", fontsize=8)
    ax.set_title(title or "global feature importance", fontsize=10)
    fig.tight_layout()
    return _done(fig, path, dpi)


def plot_spectrum(clusters, *, title: str | None = None, path=None, dpi: int = 120):
    """The smallest eigenvalues of the normalised Laplacian, the eigengap of the chosen k marked.

    Returns the Figure (one axis).

    Example:
      >>> fig = xattr.viz.plot_spectrum(xattr.cluster_attributions(maps))   # the eigengap that chose k
    """
    _expect(clusters, ("eigenvalues", "n_clusters"), _CLUSTERS_OBJ, "plot_spectrum")
    vals = _numpy(clusters.eigenvalues)
    k = clusters.n_clusters
    fig = _figure(4.5, 3.0, dpi)
    ax = fig.add_subplot(1, 1, 1)
    idx = np.arange(1, vals.size + 1)
    ax.plot(idx, vals, "o-", color="0.3", markersize=4)
    if k < vals.size:
        ax.annotate("", xy=(k + 0.5, vals[k]), xytext=(k + 0.5, vals[k - 1]),
                    arrowprops=dict(arrowstyle="<->", color="#b2182b"))  # fmt: skip
        ax.text(k + 0.6, (vals[k] + vals[k - 1]) / 2, f"eigengap, k={k}", color="#b2182b", fontsize=8, va="center")
    ax.set_xlabel("index", fontsize=8)
    ax.set_ylabel("eigenvalue of the normalised Laplacian", fontsize=8)
    ax.set_xticks(idx)
    ax.tick_params(labelsize=7)
    ax.set_title(title or "spectrum of the attribution graph", fontsize=10)
    fig.tight_layout()
    return _done(fig, path, dpi)


def plot_clusters(
    clusters,
    *,
    sign: str = "auto",
    feature_names: Sequence[str] | None = None,
    title: str | None = None,
    path=None,
    dpi: int = 120,
):
    """The 2-D embedding coloured by cluster, beside each cluster's mean map as a thumbnail.

    Returns the Figure: the scatter axis, then one thumbnail axis per cluster.

    Example:
      >>> clusters = xattr.cluster_attributions(maps)
      >>> fig = xattr.viz.plot_clusters(clusters, path="clusters.png")
    """
    from matplotlib import colormaps

    _expect(clusters, ("embedding", "labels", "means"), _CLUSTERS_OBJ, "plot_clusters")
    _check_sign(sign)
    emb = _numpy(clusters.embedding)
    labels = _numpy(clusters.labels).astype(int)
    k = clusters.n_clusters
    colors = colormaps["tab10"](np.arange(k) % 10)
    n_rows, n_cols = -(-k // 4), min(k, 4)
    fig = _figure(4.2 + 1.6 * n_cols, max(4.0, 1.8 * n_rows), dpi)
    grid = fig.add_gridspec(n_rows, 1 + n_cols, width_ratios=[4.2] + [1.6] * n_cols, wspace=0.35, hspace=0.4)
    ax = fig.add_subplot(grid[:, 0])
    for c in range(k):
        sel = labels == c
        ax.scatter(emb[sel, 0], emb[sel, 1], s=12, color=colors[c], label=f"cluster {c} (n={int(sel.sum())})")
    ax.legend(fontsize=7, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    coords = "spectral coordinate" if clusters.embedding_kind == "spectral" else "t-SNE"
    ax.set_xlabel(f"{coords} 1", fontsize=8)
    ax.set_ylabel(f"{coords} 2", fontsize=8)
    ax.set_title(title or f"attribution clusters (k={k})", fontsize=10)
    means = _numpy(clusters.means)
    shape = means.shape[1:]
    for c in range(k):
        row, col = divmod(c, 4)
        th = fig.add_subplot(grid[row, 1 + col])
        if _is_image(shape):
            draw(th, means[c], sign=sign)
        else:
            vals, _, _ = normalize(means[c].ravel(), "signed")
            _bars(th, vals, _names(vals.size, shape, feature_names))
        for spine in th.spines.values():
            spine.set_color(colors[c])
            spine.set_linewidth(2.0)
        th.set_title(f"cluster {c}", fontsize=8, color=colors[c])
    return _done(fig, path, dpi)


__all__ = ["plot_class_means", "plot_clusters", "plot_importance", "plot_spectrum"]
