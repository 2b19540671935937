"""Captum's time-series plot: ``visualize_timeseries_attr``.

    from xattr.viz import visualize_timeseries_attr
    fig, axes = visualize_timeseries_attr(attr, data, method="overlay_individual", sign="all",
                                          channel_labels=["x", "y"], use_pyplot=False)

The arguments, defaults and pictures are Captum 0.9's, so ``from xattr.compat.captum import
visualization as viz`` is a drop-in for ``from captum.attr import visualization as viz``:

* ``attr`` and ``data`` are one example's attribution and series, (N, C): N time steps of C
  channels (``channels_last=False``: (C, N)). Torch tensors and a batch of one are taken too.
* The attributions are scaled as the image plots scale theirs (NOTE: [Scale of a time-series
  plot]); ``sign`` and the default colour maps are those of ``visualize_image_attr``.
* ``method``:
    "overlay_individual"  one panel per channel: the channel's line, and behind it one shaded
                          span per time step coloured by that step's attribution;
    "overlay_combined"    one panel: every channel's line (Dark2 colours, labelled by
                          ``channel_labels``), behind them one span per time step coloured by
                          the attribution summed over channels;
    "colored_graph"       one panel per channel: the channel's line drawn as segments, the one
                          from step t to t+1 coloured by step t's attribution (a matplotlib
                          ``LineCollection``; choose a colour map without white, as Captum says).
* A span is centred on its time step and reaches half way to each neighbour (``x_values``, by
  default 0..N-1), so the spans tile the x-axis; the axes share x and end at the first and last
  step. Extra keywords (``linewidth=2``) go to ``Axes.plot`` or to the ``LineCollection``.

NOTE: [Scale of a time-series plot]
One scale serves the whole plot: the (C, N) attribution, or for "overlay_combined" its (N,)
sum over channels, goes through ``xattr.viz.image``'s normalisation as one array (Captum's
outlier percentile: the ``outlier_perc`` percent of the total |attribution| carried by the
largest entries saturates, the rest is divided by the smallest of those), so colours compare
across channels. A step's colour is ``cmap(Normalize(vmin, vmax)(value))`` with vmin, vmax
= -1, 1 for sign "all" and 0, 1 otherwise.

Where this differs from Captum 0.9:

* Captum 0.9 calls ``matplotlib.cm.get_cmap``, which matplotlib 3.9 removed: there its function
  raises AttributeError before drawing. This one uses ``matplotlib.colormaps``.
* Captum sets the x-range and the panel spacing through pyplot's current figure (``plt.xlim``,
  ``plt.subplots_adjust``) even with ``use_pyplot=False``, which opens a stray pyplot figure and
  leaves the returned one unadjusted. Here both go to the returned figure, and pyplot is
  imported only with ``use_pyplot=True``.
* Spans reach half way to each neighbour; Captum gives every span the width of the first step,
  which misplaces them when ``x_values`` are not evenly spaced (equal pictures when they are).
  A single time step gets a span of width 1 (Captum fails on it).
* "colored_graph" pads its y-range by 10% of the data's range on each side; Captum's
  ``1.2 * min, 1.2 * max`` cuts the line off when the data do not straddle zero (equal when
  min = -max).
* "overlay_combined" draws its legend only with ``channel_labels`` (Captum's warns "No artists
  with labels found" without them).
* Unknown methods or signs, 1-d or mismatched arrays, ``x_values`` of the wrong length or not
  monotonic, ``channel_labels`` of the wrong length, too few axes in ``plt_fig_axis`` and
  ``outlier_perc`` or ``alpha_overlay`` out of range raise ValueError before a figure is made
  (Captum: AssertionError, KeyError or IndexError, some after making it). Enum members
  (``TimeseriesVisualizationMethod.colored_graph``, ``VisualizeSign.all``) are taken too.
* A series with nothing of ``sign`` draws as zeros, and NaN attributions take no part in the
  scale and are drawn in grey (Captum fails on both).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Sequence

import numpy as np

from .._src.warn import warn
from .image import (
    _SIGN_CMAPS,
    VisualizeSign,
    _check_outlier_perc,
    _check_sign,
    _colormap,
    _new_figure,
    _normalize_map,
    _show,
)

__all__ = ["TimeseriesVisualizationMethod", "visualize_timeseries_attr"]


class TimeseriesVisualizationMethod(Enum):
    """Captum's names (and numbers) of the ``method`` values of `visualize_timeseries_attr`."""

    overlay_individual = 1
    overlay_combined = 2
    colored_graph = 3


TIMESERIES_METHODS = tuple(m.name for m in TimeseriesVisualizationMethod)


def _series(a, name: str, channels_last: bool) -> np.ndarray:
    """One example's series, (N, C) (or (C, N)), as a (C, N) numpy array."""
    if hasattr(a, "detach"):
        a = a.detach().cpu()
        if a.is_floating_point() and a.element_size() < 4:  # float16 / bfloat16
            a = a.float()
        a = a.numpy()
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    layout = "(N, C)" if channels_last else "(C, N)"
    if a.ndim != 2:
        hint = ""
        if a.ndim == 1:
            hint = f": for one channel pass {name}[:, None]" if channels_last else f": for one channel pass {name}[None]"
        elif a.ndim == 3:
            hint = f": pass one example, e.g. {name}[0]"
        raise ValueError(f"{name} must be one series of shape {layout} (time steps, channels), got shape {a.shape}{hint}")
    if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float64)
    elif a.dtype == np.float16:
        a = a.astype(np.float32)
    elif not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return a.T if channels_last else a


def _x_values(x_values, n: int) -> np.ndarray:
    if x_values is None:
        return np.arange(n)
    if hasattr(x_values, "detach"):
        x_values = x_values.detach().cpu().double().numpy()
    x = np.asarray(x_values)
    if x.ndim != 1 or x.shape[0] != n:
        raise ValueError(f"x_values must have one value per time step, shape ({n},), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x) or not np.isfinite(x).all():
        raise ValueError("x_values must be finite real numbers")
    steps = np.diff(x)
    if not ((steps > 0).all() or (steps < 0).all()):
        raise ValueError("x_values must be strictly increasing or strictly decreasing")
    return x


def _span_edges(x: np.ndarray) -> np.ndarray:
    """N + 1 edges: half way between neighbours, the first and last half a step beyond the ends."""
    x = x.astype(np.float64)
    if x.size == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = (x[:-1] + x[1:]) / 2
    return np.concatenate([[x[0] - (x[1] - x[0]) / 2], mid, [x[-1] + (x[-1] - x[-2]) / 2]])


def _name(value, enum: type):
    """An enum member's name; anything else as it is."""
    return value.name if isinstance(value, enum) else value


def _check(attr, data, x_values, method, sign, channel_labels, channels_last, outlier_perc, alpha_overlay):
    method = _name(method, TimeseriesVisualizationMethod)
    sign = _name(sign, VisualizeSign)
    if method not in TIMESERIES_METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(map(repr, TIMESERIES_METHODS))}")
    _check_sign(sign)
    _check_outlier_perc(outlier_perc)
    if not 0 <= alpha_overlay <= 1:
        raise ValueError(f"alpha_overlay must be between 0 and 1, got {alpha_overlay!r}")
    a = _series(attr, "attr", channels_last)
    d = _series(data, "data", channels_last)
    if a.shape != d.shape:
        layout = "(N, C)" if channels_last else "(C, N)"
        shape = (lambda s: s[::-1] if channels_last else s)
        raise ValueError(
            f"attr of shape {shape(a.shape)} does not match data of shape {shape(d.shape)}: "
            f"pass the attribution of this series, both as {layout}"
        )
    n_channels, n_steps = d.shape
    if n_steps == 0 or n_channels == 0:
        raise ValueError(f"data has no time steps or no channels (shape {d.shape[::-1] if channels_last else d.shape})")
    if channel_labels is not None:
        channel_labels = list(channel_labels)
        if len(channel_labels) != n_channels:
            raise ValueError(f"{len(channel_labels)} channel_labels for {n_channels} channels: pass one label per channel")
    return method, sign, a, d, _x_values(x_values, n_steps), channel_labels


def _spans(ax, values, edges, cmap, norm, alpha_overlay) -> None:
    colours = cmap(norm(values))
    for left, right, colour in zip(edges[:-1], edges[1:], colours):
        ax.axvspan(xmin=left, xmax=right, facecolor=tuple(colour), edgecolor=None, alpha=alpha_overlay)


def _y_limits(series: np.ndarray):
    finite = series[np.isfinite(series)]
    if not finite.size:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    pad = 0.1 * (hi - lo) if hi > lo else max(0.1 * abs(lo), 0.5)
    return lo - pad, hi + pad


def visualize_timeseries_attr(
    attr,
    data,
    x_values=None,
    method: str = "overlay_individual",
    sign: str = "absolute_value",
    channel_labels: Sequence[str] | None = None,
    channels_last: bool = True,
    plt_fig_axis=None,
    outlier_perc: float = 2,
    cmap=None,
    alpha_overlay: float = 0.7,
    show_colorbar: bool = False,
    title: str | None = None,
    fig_size=(6, 6),
    use_pyplot: bool = True,
    **pyplot_kwargs: Any,
):
    """Draws one series' attribution over its data in one of Captum's three ways.

    Args:
      attr: one example's attribution, (N, C) (time steps, channels), or (C, N) with
        ``channels_last=False``; a torch tensor or a batch of one is taken too.
      data: the series, the same shape.
      x_values: the N positions of the time steps on the x-axis; default 0..N-1. Strictly
        increasing (or decreasing); spans reach half way to the neighbouring steps.
      method: "overlay_individual", "overlay_combined" or "colored_graph" (module docstring).
      sign: "absolute_value", "positive", "negative" or "all", as ``visualize_image_attr``.
      channel_labels: one y-axis label per channel (the legend for "overlay_combined").
      channels_last: whether ``attr`` and ``data`` are (N, C) (True) or (C, N).
      plt_fig_axis: a ``(figure, axes)`` to draw on instead of a new figure: one axis per
        panel (C, or 1 for "overlay_combined"), a single axis or a sequence of them.
      outlier_perc: percent of the total |attribution|, held by the largest entries, that
        saturates (NOTE: [Scale of a time-series plot] in ``xattr/viz/timeseries.py``).
      cmap: colour map; by default Blues, Greens, Reds, or red-white-green by sign.
      alpha_overlay: the spans' opacity ("overlay_*"; the colour bar's, except for
        "colored_graph").
      show_colorbar: a horizontal colour bar under the last panel.
      title: the first panel's title.
      fig_size: size in inches of a new figure.
      use_pyplot: make the figure with pyplot and call ``pyplot.show()``; False returns a plain
        ``matplotlib.figure.Figure`` (Agg canvas) and never imports pyplot.
      **pyplot_kwargs: passed to ``Axes.plot`` (overlays) or ``LineCollection`` (colored_graph).

    Returns:
      ``(figure, axes)``: as Captum, one ``Axes`` for a one-panel plot, else the numpy array of
      the panels' axes (what was passed in ``plt_fig_axis``, when given).

    Example:
      >>> fig, ax = xattr.viz.visualize_timeseries_attr(attr[0], series[0], method="overlay_combined", sign="all")
    """
    method, sign, a, d, x, channel_labels = _check(
        attr, data, x_values, method, sign, channel_labels, channels_last, outlier_perc, alpha_overlay
    )
    n_channels, n_steps = d.shape
    if n_channels > n_steps:
        warn(
            f"Number of channels ({n_channels}) greater than time series length ({n_steps}): "
            f"attr and data are read as {'(N, C)' if channels_last else '(C, N)'}; "
            "check channels_last"
        )
    n_panels = 1 if method == "overlay_combined" else n_channels
    if plt_fig_axis is not None:
        fig, returned = plt_fig_axis
        panels = list(np.ravel(np.asarray(returned, dtype=object)))
        if len(panels) < n_panels:
            raise ValueError(f"plt_fig_axis holds {len(panels)} axes for {n_panels} panels: pass one axis per panel")
    else:
        fig = _new_figure(use_pyplot, fig_size)
        returned = fig.subplots(nrows=n_panels, sharex=True)
        panels = list(np.ravel(np.asarray(returned, dtype=object)))

    if method == "overlay_combined":
        a = a.sum(0)  # NOTE: [Scale of a time-series plot]
    norm_attr = _normalize_map(a, sign, outlier_perc)
    from matplotlib.colors import Normalize

    _, vmin, vmax = _SIGN_CMAPS[sign]
    colours = _colormap(cmap, sign)
    cm_norm = Normalize(vmin, vmax)
    edges = _span_edges(x)

    if method == "overlay_individual":
        for c, ax in enumerate(panels[:n_panels]):
            ax.plot(x, d[c], **pyplot_kwargs)
            if channel_labels is not None:
                ax.set_ylabel(channel_labels[c])
            _spans(ax, norm_attr[c], edges, colours, cm_norm, alpha_overlay)
    elif method == "overlay_combined":
        import matplotlib
        from cycler import cycler

        ax = panels[0]
        ax.set_prop_cycle(cycler("color", matplotlib.colormaps["Dark2"].colors))
        for c in range(n_channels):
            ax.plot(x, d[c], label=channel_labels[c] if channel_labels else None, **pyplot_kwargs)
        _spans(ax, norm_attr, edges, colours, cm_norm, alpha_overlay)
        if channel_labels:
            ax.legend(loc="best")
    else:  # colored_graph
        from matplotlib.collections import LineCollection

        for c, ax in enumerate(panels[:n_panels]):
            points = np.stack([x, d[c]], axis=-1).reshape(-1, 1, 2)
            segments = np.concatenate([points[:-1], points[1:]], axis=1)
            lines = LineCollection(segments, cmap=colours, norm=cm_norm, **pyplot_kwargs)
            lines.set_array(norm_attr[c])  # segment t takes step t's colour
            ax.add_collection(lines)
            limits = _y_limits(d[c])
            if limits is not None:
                ax.set_ylim(*limits)
            if channel_labels is not None:
                ax.set_ylabel(channel_labels[c])
    if method != "overlay_combined":
        fig.subplots_adjust(hspace=0)
    for ax in panels[:n_panels]:  # shared in a new figure; maybe not in a given one
        ax.set_xlim(*((x[0], x[-1]) if n_steps > 1 else (edges[0], edges[-1])))

    if show_colorbar:
        from matplotlib.cm import ScalarMappable
        from mpl_toolkits.axes_grid1 import make_axes_locatable

        bar_ax = make_axes_locatable(panels[n_panels - 1]).append_axes("bottom", size="5%", pad=0.4)
        bar_alpha = 1.0 if method == "colored_graph" else alpha_overlay
        fig.colorbar(ScalarMappable(cm_norm, colours), orientation="horizontal", cax=bar_ax, alpha=bar_alpha)
    if title:
        panels[0].set_title(title)
    if use_pyplot:
        _show()
    return fig, returned
