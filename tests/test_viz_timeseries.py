"""Captum's time-series plot (visualize_timeseries_attr) and the rest of captum.attr.visualization.

The artists drawn (spans, lines, line collections, labels) are compared with Captum 0.9's for the
same call, and with slow references written out here: the outlier-percentile scale as a loop,
span edges step by step. Captum 0.9 calls matplotlib.cm.get_cmap, which matplotlib 3.9 removed;
the comparisons put it back (as matplotlib.colormaps' lookup) for Captum alone.
"""

import os
import sys
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

os.environ.setdefault("MPLBACKEND", "Agg")  # only pyplot reads it: Agg if nothing chose before
matplotlib = pytest.importorskip("matplotlib")

from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from xattr.compat.captum import visualization as viz  # noqa: E402
from xattr.viz.timeseries import TIMESERIES_METHODS  # noqa: E402

SIGNS = ("positive", "absolute_value", "negative", "all")
N, C = 9, 3


def _series(seed=0, n=N, c=C):
    g = np.random.default_rng(seed)
    return g.normal(size=(n, c)), g.normal(size=(n, c))


@pytest.fixture
def captum_viz(monkeypatch):
    """Captum's module, runnable on matplotlib >= 3.9; its stray pyplot figures closed after."""
    cv = pytest.importorskip("captum.attr._utils.visualization")
    from matplotlib import cm, colormaps, pyplot

    monkeypatch.setattr(cm, "get_cmap", lambda c: colormaps[c] if isinstance(c, str) else c, raising=False)
    yield cv
    pyplot.close("all")


@pytest.fixture
def no_pyplot(monkeypatch):
    """Any use of matplotlib.pyplot fails while this fixture is active."""

    class Trap(types.ModuleType):
        def __getattr__(self, name):
            raise AssertionError(f"pyplot.{name} used with use_pyplot=False")

    trap = Trap("matplotlib.pyplot")
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", trap)
    monkeypatch.setattr(matplotlib, "pyplot", trap, raising=False)


def _panels(axes):
    return list(np.ravel(np.asarray(axes, dtype=object)))


def _drawn(ax):
    """What one panel shows: spans (x, width, RGBA), lines, line collections, labels."""
    spans = [(p.get_x(), p.get_width(), tuple(p.get_facecolor())) for p in ax.patches]
    lines = [(ln.get_xydata(), matplotlib.colors.to_rgba(ln.get_color()), ln.get_label(), ln.get_linewidth()) for ln in ax.lines]
    colls = []
    for lc in ax.collections:
        assert isinstance(lc, LineCollection)
        arr = np.asarray(lc.get_array())
        colls.append((np.asarray(lc.get_segments()), arr, lc.cmap(lc.norm(arr)), lc.get_linewidth()))
    legend = ax.get_legend()
    return {
        "spans": spans,
        "lines": lines,
        "colls": colls,
        "ylabel": ax.get_ylabel(),
        "title": ax.get_title(),
        "legend": [] if legend is None else [t.get_text() for t in legend.get_texts()],  # Captum: an empty one
    }


def _assert_same_panel(ours, theirs):
    assert len(ours["spans"]) == len(theirs["spans"])
    for (x, w, c), (tx, tw, tc) in zip(ours["spans"], theirs["spans"]):
        np.testing.assert_allclose([x, w], [tx, tw], rtol=0, atol=1e-12)
        np.testing.assert_allclose(c, tc, rtol=0, atol=1e-12)
    assert len(ours["lines"]) == len(theirs["lines"])
    for (xy, col, label, lw), (txy, tcol, tlabel, tlw) in zip(ours["lines"], theirs["lines"]):
        np.testing.assert_array_equal(xy, txy)
        assert col == tcol and label == tlabel and lw == tlw
    assert len(ours["colls"]) == len(theirs["colls"])
    for (seg, arr, cols, lw), (tseg, tarr, tcols, tlw) in zip(ours["colls"], theirs["colls"]):
        np.testing.assert_array_equal(seg, tseg)
        np.testing.assert_allclose(arr, tarr, rtol=1e-12, atol=0)
        np.testing.assert_allclose(cols, tcols, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(lw, tlw)
    for key in ("ylabel", "title", "legend"):
        assert ours[key] == theirs[key], key


# --------------------------------------------------------------------------- against Captum


@pytest.mark.parametrize("method", TIMESERIES_METHODS)
@pytest.mark.parametrize("sign", SIGNS)
def test_artists_equal_captums(captum_viz, method, sign):
    for seed, x_values, bar in [(0, None, False), (1, np.linspace(-1.0, 3.0, N), True)]:
        attr, data = _series(seed)
        kw = dict(x_values=x_values, method=method, sign=sign, channel_labels=["a", "b", "c"],
                  title="T", show_colorbar=bar, use_pyplot=False, outlier_perc=10)  # fmt: skip
        fig, axes = viz.visualize_timeseries_attr(attr, data, **kw)
        tfig, taxes = captum_viz.visualize_timeseries_attr(attr, data, **kw)
        assert isinstance(fig, Figure) and type(axes) is type(taxes)
        assert len(fig.axes) == len(tfig.axes) == (1 if method == "overlay_combined" else C) + bar
        for ours, theirs in zip(_panels(axes), _panels(taxes)):
            _assert_same_panel(_drawn(ours), _drawn(theirs))
        n_spans = sum(len(ax.patches) for ax in fig.axes)
        assert n_spans == {"overlay_individual": N * C, "overlay_combined": N, "colored_graph": 0}[method]


@pytest.mark.filterwarnings("ignore:No artists with labels found")  # Captum's combined legend without labels
@pytest.mark.parametrize("method", TIMESERIES_METHODS)
def test_pyplot_figure_equals_captums_with_its_x_range(captum_viz, method):
    from matplotlib import pyplot

    attr, data = _series(2)
    x = np.arange(N) * 0.5 + 2
    fig, axes = viz.visualize_timeseries_attr(attr, data, x_values=x, method=method, sign="all", linewidth=3)
    tfig, taxes = captum_viz.visualize_timeseries_attr(attr, data, x_values=x, method=method, sign="all", linewidth=3)
    assert fig.number in pyplot.get_fignums()
    for ours, theirs in zip(_panels(axes), _panels(taxes)):
        _assert_same_panel(_drawn(ours), _drawn(theirs))
        assert ours.get_xlim() == theirs.get_xlim() == (2.0, 6.0)  # Captum's plt.xlim hits its own figure here
    assert fig.subplotpars.hspace == tfig.subplotpars.hspace


def test_colored_graph_y_range(captum_viz):
    attr, half = _series(3, n=8)
    sym = np.concatenate([half[:4], -half[:4]])  # min = -max per channel: Captum's 1.2 * min, 1.2 * max
    _, axes = viz.visualize_timeseries_attr(attr, sym, method="colored_graph", use_pyplot=False)
    _, taxes = captum_viz.visualize_timeseries_attr(attr, sym, method="colored_graph", use_pyplot=False)
    for ours, theirs in zip(axes, taxes):
        np.testing.assert_allclose(ours.get_ylim(), theirs.get_ylim(), rtol=1e-12)
    positive = np.abs(half) + 1.0  # Captum's lower limit 1.2 * min lies above the minimum
    _, axes = viz.visualize_timeseries_attr(attr, positive, method="colored_graph", use_pyplot=False)
    _, taxes = captum_viz.visualize_timeseries_attr(attr, positive, method="colored_graph", use_pyplot=False)
    for c, (ours, theirs) in enumerate(zip(axes, taxes)):
        lo, hi = positive[:, c].min(), positive[:, c].max()
        assert ours.get_ylim()[0] < lo and ours.get_ylim()[1] > hi
        assert theirs.get_ylim()[0] > lo


def test_use_pyplot_false_leaves_pyplot_alone_where_captums_opens_a_figure(captum_viz):
    from matplotlib import pyplot

    pyplot.close("all")
    attr, data = _series(4)
    fig, axes = viz.visualize_timeseries_attr(attr, data, use_pyplot=False)
    assert pyplot.get_fignums() == [] and fig.subplotpars.hspace == 0
    assert axes[0].get_xlim() == (0.0, N - 1.0)
    captum_viz.visualize_timeseries_attr(attr, data, use_pyplot=False)
    assert len(pyplot.get_fignums()) == 1  # Captum's plt.xlim made one


# --------------------------------------------------------------------------- slow references


def _scale_reference(values, sign, outlier_perc):
    """Captum's outlier-percentile scale written as a loop over the sorted magnitudes."""
    flat = [float(v) for v in np.ravel(values)]
    kept = {"positive": [max(v, 0.0) for v in flat], "negative": [min(v, 0.0) for v in flat],
            "absolute_value": [abs(v) for v in flat], "all": flat}[sign]  # fmt: skip
    mags = sorted(abs(v) for v in kept)
    goal = sum(mags) * 0.01 * (100 - outlier_perc)
    running, scale = 0.0, mags[-1]
    for m in mags:
        running += m
        if running >= goal:
            scale = m
            break
    out = []
    for v in kept:
        if scale == 0:
            out.append(0.0)
        else:
            out.append(min(1.0, max(-1.0, v / scale)) * (-1 if sign == "negative" else 1))
    return np.array(out).reshape(np.shape(values))


def _edges_reference(x):
    edges = []
    for i in range(len(x)):
        left = x[i] - (x[1] - x[0]) / 2 if i == 0 else (x[i - 1] + x[i]) / 2
        edges.append(left)
    edges.append(x[-1] + (x[-1] - x[-2]) / 2)
    return edges


@pytest.mark.parametrize("sign", SIGNS)
@pytest.mark.parametrize("method", ["overlay_individual", "overlay_combined"])
def test_span_colours_and_edges_equal_the_slow_reference(sign, method):
    from matplotlib import colormaps
    from matplotlib.colors import LinearSegmentedColormap

    attr, data = _series(5)
    x = np.cumsum(np.random.default_rng(5).uniform(0.2, 2.0, size=N))  # uneven steps
    _, axes = viz.visualize_timeseries_attr(attr, data, x_values=x, method=method, sign=sign, outlier_perc=5, use_pyplot=False)
    combined = method == "overlay_combined"
    expected = _scale_reference(attr.sum(1) if combined else attr.T, sign, 5)
    cmap = {"positive": colormaps["Greens"], "negative": colormaps["Reds"], "absolute_value": colormaps["Blues"],
            "all": LinearSegmentedColormap.from_list("rwg", ["red", "white", "green"])}[sign]  # fmt: skip
    lo = -1.0 if sign == "all" else 0.0
    edges = _edges_reference(x)
    for c, ax in enumerate(_panels(axes)):
        row = expected if combined else expected[c]
        assert len(ax.patches) == N
        for t, patch in enumerate(ax.patches):
            np.testing.assert_allclose(patch.get_facecolor()[:3], cmap((row[t] - lo) / (1 - lo))[:3], atol=1e-12)
            assert patch.get_facecolor()[3] == 0.7
            np.testing.assert_allclose([patch.get_x(), patch.get_x() + patch.get_width()], edges[t : t + 2], atol=1e-12)
            assert patch.get_x() < x[t] < patch.get_x() + patch.get_width()


def test_colored_graph_segments_equal_the_slow_reference():
    attr, data = _series(6, n=7, c=2)
    x = np.linspace(0, 1, 7)
    _, axes = viz.visualize_timeseries_attr(attr, data, x_values=x, method="colored_graph", sign="all", use_pyplot=False)
    expected = _scale_reference(attr.T, "all", 2)
    for c, ax in enumerate(axes):
        (lc,) = ax.collections
        segments = lc.get_segments()
        assert len(segments) == 6
        for t in range(6):
            np.testing.assert_array_equal(segments[t], [[x[t], data[t, c]], [x[t + 1], data[t + 1, c]]])
        np.testing.assert_allclose(lc.get_array(), expected[c], atol=1e-12)
        assert lc.norm.vmin == -1 and lc.norm.vmax == 1


# --------------------------------------------------------------------------- properties


def _colours(axes):
    return np.array([p.get_facecolor() for ax in _panels(axes) for p in ax.patches])


@settings(max_examples=15, deadline=None)
@given(
    steps=st.lists(st.floats(0.01, 10.0), min_size=2, max_size=12),
    start=st.floats(-100, 100),
    seed=st.integers(0, 2**16),
)
def test_spans_tile_the_x_axis(steps, start, seed):
    x = start + np.concatenate([[0.0], np.cumsum(steps)])
    attr, data = _series(seed, n=len(x), c=2)
    fig, axes = viz.visualize_timeseries_attr(attr, data, x_values=x, use_pyplot=False)
    for ax in axes:
        lefts = np.array([p.get_x() for p in ax.patches])
        rights = lefts + np.array([p.get_width() for p in ax.patches])
        assert len(lefts) == len(x)
        np.testing.assert_allclose(rights[:-1], lefts[1:], rtol=1e-12, atol=1e-9)  # no gap, no overlap
        assert (lefts < x).all() and (x < rights).all()
        assert ax.get_xlim() == (x[0], x[-1])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), power=st.integers(-4, 4), n=st.integers(2, 10))
def test_colours_ignore_the_attributions_scale_and_darken_with_them(seed, power, n):
    attr, data = _series(seed, n=n, c=2)
    for sign in ("positive", "absolute_value"):
        _, axes = viz.visualize_timeseries_attr(attr, data, sign=sign, use_pyplot=False)
        _, scaled = viz.visualize_timeseries_attr(attr * 2.0**power, data, sign=sign, use_pyplot=False)
        colours = _colours(axes)
        np.testing.assert_array_equal(colours, _colours(scaled))  # powers of 2 scale exactly
        value = np.ravel(attr.T) if sign == "positive" else np.abs(np.ravel(attr.T))
        light = colours[:, :3].sum(1)  # Greens and Blues darken as the value grows
        order = np.argsort(value, kind="stable")
        assert (np.diff(light[order]) <= 1e-12).all()
        if sign == "positive":  # steps at or below zero share the colour of 0
            zero = matplotlib.colormaps["Greens"](0.0)
            assert np.allclose(colours[value <= 0, :3], zero[:3])


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), c=st.integers(1, 4), sign=st.sampled_from(SIGNS))
def test_layouts_and_tensors_draw_the_same(seed, c, sign):
    attr, data = _series(seed, n=6, c=c)
    _, axes = viz.visualize_timeseries_attr(attr, data, sign=sign, use_pyplot=False)
    _, first = viz.visualize_timeseries_attr(attr.T, data.T, sign=sign, channels_last=False, use_pyplot=False)
    _, tens = viz.visualize_timeseries_attr(torch.from_numpy(attr)[None], torch.from_numpy(data), sign=sign, use_pyplot=False)
    for a, b, t in zip(_panels(axes), _panels(first), _panels(tens)):
        _assert_same_panel(_drawn(a), _drawn(b))
        _assert_same_panel(_drawn(a), _drawn(t))
    # one channel combined is that channel drawn alone
    _, comb = viz.visualize_timeseries_attr(attr.sum(1, keepdims=True), data[:, :1], method="overlay_combined",
                                            sign=sign, use_pyplot=False)  # fmt: skip
    _, alone = viz.visualize_timeseries_attr(attr.sum(1, keepdims=True), data[:, :1], sign=sign, use_pyplot=False)
    np.testing.assert_array_equal(_colours(comb), _colours(alone))


# --------------------------------------------------------------------------- figures, arguments, errors


def test_axes_returned_and_figure_without_pyplot(no_pyplot):
    attr, data = _series(7)
    fig, axes = viz.visualize_timeseries_attr(attr, data, use_pyplot=False, show_colorbar=True)
    assert isinstance(fig, Figure) and isinstance(axes, np.ndarray) and axes.shape == (C,)
    assert len(fig.axes) == C + 1 and all(ax.get_shared_x_axes().joined(axes[0], ax) for ax in axes)
    fig, ax = viz.visualize_timeseries_attr(attr, data, method="overlay_combined", use_pyplot=False)
    assert isinstance(ax, matplotlib.axes.Axes) and len(ax.lines) == C and ax.get_legend() is None
    fig, ax = viz.visualize_timeseries_attr(attr[:, :1], data[:, :1], method="colored_graph", use_pyplot=False)
    assert isinstance(ax, matplotlib.axes.Axes) and len(ax.collections) == 1
    fig.savefig(os.devnull, format="png")


def test_given_axes_are_drawn_on():
    attr, data = _series(8, c=2)
    fig = Figure()
    grid = fig.subplots(1, 3)
    out_fig, out_axes = viz.visualize_timeseries_attr(attr, data, plt_fig_axis=(fig, grid), use_pyplot=False)
    assert out_fig is fig and out_axes is grid
    assert [len(ax.patches) for ax in grid] == [N, N, 0]
    assert all(ax.get_xlim() == (0.0, N - 1.0) for ax in grid[:2])
    with pytest.raises(ValueError, match="holds 1 axes for 2 panels"):
        viz.visualize_timeseries_attr(attr, data, plt_fig_axis=(fig, grid[0]), use_pyplot=False)


def test_keywords_enums_nan_and_single_steps():
    from matplotlib.colors import to_rgba

    attr, data = _series(9, c=2)
    _, axes = viz.visualize_timeseries_attr(attr, data, use_pyplot=False, linewidth=4, color="black")
    assert all(ax.lines[0].get_linewidth() == 4 and ax.lines[0].get_color() == "black" for ax in axes)
    _, axes = viz.visualize_timeseries_attr(attr, data, method=viz.TimeseriesVisualizationMethod.colored_graph,
                                            sign=viz.VisualizeSign.all, linewidth=5, use_pyplot=False)  # fmt: skip
    assert all(list(ax.collections[0].get_linewidth()) == [5] for ax in axes)
    bad = attr.copy()
    bad[3, 0] = np.nan
    _, axes = viz.visualize_timeseries_attr(bad, data, use_pyplot=False)
    assert axes[0].patches[3].get_facecolor()[:3] == to_rgba("0.6")[:3]  # NaN: grey, outside the scale
    np.testing.assert_array_equal(_colours(axes)[N:], _colours(viz.visualize_timeseries_attr(attr[:, 1:], data[:, 1:], use_pyplot=False)[1]))
    _, axes = viz.visualize_timeseries_attr(np.abs(attr), data, sign="negative", use_pyplot=False)  # nothing negative
    assert np.allclose(_colours(axes)[:, :3], matplotlib.colormaps["Reds"](0.0)[:3])
    _, ax = viz.visualize_timeseries_attr(attr[:1, :1], data[:1, :1], x_values=[3.0], use_pyplot=False)
    assert ax.get_xlim() == (2.5, 3.5) and ax.patches[0].get_width() == 1.0


def test_more_channels_than_steps_warns_at_the_callers_line():
    attr, data = _series(10, n=3, c=5)
    with pytest.warns(UserWarning, match=r"channels \(5\) greater than time series length \(3\)") as rec:
        viz.visualize_timeseries_attr(attr, data, use_pyplot=False)
    assert rec[0].filename == __file__


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(method="individual_channels"), "unknown method 'individual_channels'"),
        (dict(sign="pos"), "unknown sign 'pos'"),
        (dict(data=np.zeros(N)), r"data must be one series of shape \(N, C\).*data\[:, None\]"),
        (dict(attr=np.zeros(C), data=np.zeros(C), channels_last=False), r"shape \(C, N\).*attr\[None\]"),
        (dict(attr=np.zeros((2, N, C))), r"attr\[0\]"),
        (dict(attr=np.zeros((N, C + 1))), r"attr of shape \(9, 4\) does not match data of shape \(9, 3\)"),
        (dict(channel_labels=["a"]), "1 channel_labels for 3 channels"),
        (dict(x_values=np.arange(N + 1)), r"one value per time step, shape \(9,\)"),
        (dict(x_values=np.r_[0, 2, 1, np.arange(3, N)]), "strictly increasing"),
        (dict(outlier_perc=101), "outlier_perc"),
        (dict(alpha_overlay=1.5), "alpha_overlay"),
        (dict(data=np.array([["a"] * C] * N)), "real numbers"),
    ],
)
def test_bad_arguments_raise_before_a_figure(change, message):
    from matplotlib import pyplot

    attr, data = _series(11)
    kw = dict(attr=attr, data=data, use_pyplot=True)
    kw.update(change)
    before = pyplot.get_fignums()
    with pytest.raises(ValueError, match=message):
        viz.visualize_timeseries_attr(**kw)
    assert pyplot.get_fignums() == before
