"""The rest of captum.attr.visualization: the enums, the HTML helpers (format_*) and the module's
exports, against Captum 0.9's where it is installed (time-series plots: test_viz_timeseries.py)."""

import os
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

os.environ.setdefault("MPLBACKEND", "Agg")  # only pyplot reads it: Agg if nothing chose before
matplotlib = pytest.importorskip("matplotlib")

import xattr.viz  # noqa: E402
from xattr.compat.captum import visualization as viz  # noqa: E402


@pytest.fixture
def captum_viz(monkeypatch):
    """Captum's module, runnable on matplotlib >= 3.9; its stray pyplot figures closed after."""
    cv = pytest.importorskip("captum.attr._utils.visualization")
    from matplotlib import cm, colormaps, pyplot

    monkeypatch.setattr(cm, "get_cmap", lambda c: colormaps[c] if isinstance(c, str) else c, raising=False)
    yield cv
    pyplot.close("all")


def test_exports_and_enums(captum_viz):
    for name in ("visualize_timeseries_attr", "draw_mask_border", "draw_mask_legend"):
        assert getattr(xattr.viz, name) is getattr(viz, name)
    public = {n for n in dir(captum_viz) if not n.startswith("_") and callable(getattr(captum_viz, n))}
    public -= {"Any", "Callable", "Dict", "Iterable", "List", "Optional", "Sequence", "Tuple", "Union", "Axes",
               "Colormap", "Enum", "Figure", "HTML", "LineCollection", "LinearSegmentedColormap", "Normalize",
               "Tensor", "AxesImage", "cast", "display", "make_axes_locatable", "ndarray"}  # fmt: skip
    assert public <= set(viz.__all__)
    for name in ("ImageVisualizationMethod", "TimeseriesVisualizationMethod", "VisualizeSign"):
        assert [(m.name, m.value) for m in getattr(viz, name)] == [(m.name, m.value) for m in getattr(captum_viz, name)]


def _squash(s):
    return re.sub(r"\s+", " ", s)


PLAIN = st.text(st.characters(blacklist_characters="<>&\"'", blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=25, deadline=None)
@given(token=st.one_of(PLAIN, PLAIN.map(lambda s: f"<{s}>"), st.text(max_size=8)), label=st.one_of(PLAIN, st.integers()))
def test_html_helpers_equal_captums(token, label):
    cv = pytest.importorskip("captum.attr._utils.visualization")
    assert viz.format_special_tokens(token) == cv.format_special_tokens(token)
    assert viz.format_classname(label) == cv.format_classname(label)
    assert _squash(viz.format_tooltip(token, label)) == _squash(cv.format_tooltip(token, label))


@settings(max_examples=20, deadline=None)
@given(words=st.lists(st.one_of(PLAIN.filter(lambda w: w.strip() == w and w), st.sampled_from(["<unk>", "<pad>", "</s>"])), max_size=6),
       extra=st.integers(0, 2), seed=st.integers(0, 999))  # fmt: skip
def test_format_word_importances_equals_captums(words, extra, seed):
    cv = pytest.importorskip("captum.attr._utils.visualization")
    scores = np.random.default_rng(seed).normal(size=len(words) + extra) * 0.8
    for imp in (list(scores), scores, torch.from_numpy(scores)):
        assert _squash(viz.format_word_importances(words, imp)) == _squash(cv.format_word_importances(words, imp))
    assert viz.format_word_importances(words, None) == cv.format_word_importances(words, None) == "<td></td>"


def test_html_helpers_escape_and_feed_visualize_text():
    assert viz.format_classname("<b>") == '<td><text style="padding-right:2em"><b>&lt;b&gt;</b></text></td>'
    assert viz.format_special_tokens("<unk>") == "#unk" and viz.format_special_tokens("a<b") == "a<b"
    assert "a&lt;b" in viz.format_word_importances(["a<b"], [0.5])
    with pytest.raises(ValueError, match="2 words but only 1"):
        viz.format_word_importances(["a", "b"], [0.5])
    record = viz.VisualizationDataRecord(torch.tensor([0.4, -0.3]), 0.9, 1, 0, 1, 0.1, ["good", "<unk>"], 0.0)
    html = viz.visualize_text([record], legend=False)
    assert viz.format_word_importances(["good", "<unk>"], torch.tensor([0.4, -0.3])) in html
    assert viz.format_classname("1 (0.90)") in html and viz.format_classname(0) in html
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert viz.format_tooltip("<mark>w</mark>", "0.5") == '<div class="tooltip"><mark>w</mark> <span class="tooltiptext">0.5</span> </div>'
