"""Captum's image plots (visualize_image_attr, visualize_image_attr_multiple) and to_map's layouts.

The scaled map is compared with Captum 0.9's numbers; the figures are checked for their axes and
images; the arrays drawn are compared with the arrays Captum draws for the same call.
"""

import os
import sys
import types

import numpy as np
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")  # only pyplot reads it: Agg if nothing chose before
pytest.importorskip("matplotlib")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import xattr.viz  # noqa: E402
from xattr.compat.captum import visualization as viz  # noqa: E402
from xattr.viz import heatmap  # noqa: E402
from xattr.viz.image import METHODS, SIGNS  # noqa: E402

H, W = 7, 5
ONE_SIGNED = ("masked_image", "alpha_scaling")


def _attr_and_image(seed=0, dtype=np.float64):
    g = np.random.default_rng(seed)
    return g.normal(size=(H, W, 3)).astype(dtype), g.random((H, W, 3))


def _captum():
    return pytest.importorskip("captum.attr._utils.visualization")


@pytest.fixture
def no_pyplot(monkeypatch):
    """Any use of matplotlib.pyplot fails while this fixture is active."""
    import matplotlib

    class Trap(types.ModuleType):
        def __getattr__(self, name):
            raise AssertionError(f"pyplot.{name} used with use_pyplot=False")

    trap = Trap("matplotlib.pyplot")
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", trap)
    monkeypatch.setattr(matplotlib, "pyplot", trap, raising=False)


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("sign", SIGNS)
@pytest.mark.parametrize("outlier_perc", [0.5, 2, 10, 50, 99])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_normalisation_equals_captums(sign, outlier_perc, dtype):
    cv = _captum()
    for seed, shape in enumerate([(H, W, 3), (H, W), (6, 6, 1)]):
        a = np.random.default_rng(seed).normal(size=shape).astype(dtype)
        expected = cv._normalize_attr(a.sum(2) if a.ndim == 3 else a, sign, outlier_perc)
        got = viz.normalize_image_attr(a, sign, outlier_perc)
        assert got.dtype == expected.dtype and got.shape == a.shape[:2]
        np.testing.assert_array_equal(got, expected)


def test_normalisation_takes_tensors_and_channel_first():
    a, _ = _attr_and_image(1)
    expected = viz.normalize_image_attr(a, "all")
    np.testing.assert_array_equal(viz.normalize_image_attr(torch.from_numpy(a).permute(2, 0, 1), "all"), expected)
    np.testing.assert_array_equal(viz.normalize_image_attr(torch.from_numpy(a).permute(2, 0, 1)[None], "all"), expected)
    assert xattr.viz.normalize_image_attr is viz.normalize_image_attr


def test_normalisation_where_captum_fails():
    a = np.abs(np.random.default_rng(2).normal(size=(H, W, 3)))  # all >= 0, like saliency
    np.testing.assert_array_equal(viz.normalize_image_attr(a, "negative"), np.zeros((H, W)))  # Captum: assertion
    np.testing.assert_array_equal(viz.normalize_image_attr(np.zeros((H, W)), "all"), np.zeros((H, W)))
    m = np.array([[0.0, 2.0], [-3.0, 0.5]])
    np.testing.assert_array_equal(viz.normalize_image_attr(m, "all", outlier_perc=100), np.sign(m))
    top = viz.normalize_image_attr(m, "absolute_value", outlier_perc=0)  # Captum can index past the end here
    np.testing.assert_array_equal(top, np.abs(m) / 3)
    m[0, 0] = np.nan
    m[1, 1] = np.inf
    out = viz.normalize_image_attr(m, "all", outlier_perc=0)
    np.testing.assert_array_equal(out, [[np.nan, 2 / 3], [-1.0, np.nan]])  # scale from finite entries only


# --------------------------------------------------------------------------- figures


@pytest.mark.parametrize("method", METHODS)
def test_every_method_and_sign_draws_without_pyplot(method, no_pyplot):
    a, img = _attr_and_image()
    images = 2 if method == "blended_heat_map" else 1
    for sign in SIGNS:
        if sign == "all" and method in ONE_SIGNED:
            continue
        for colorbar in (False, True):
            fig, ax = viz.visualize_image_attr(a, img, method, sign, use_pyplot=False, show_colorbar=colorbar, title="t")
            assert type(fig) is Figure and isinstance(fig.canvas, FigureCanvasAgg)
            assert fig.canvas.manager is None  # not registered with pyplot
            assert len(fig.axes) == 1 + colorbar and fig.axes[0] is ax
            assert len(ax.images) == images and ax.get_title() == "t"
            if colorbar:
                assert fig.axes[1].axison == (method in ("heat_map", "blended_heat_map"))
            fig.canvas.draw()


def test_drawn_arrays_equal_captums():
    cv = _captum()
    a, img = _attr_and_image(3)
    for method in METHODS:
        for sign in SIGNS:
            if sign == "all" and method in ONE_SIGNED:
                continue
            _, ours = viz.visualize_image_attr(a, img, method, sign, outlier_perc=5, use_pyplot=False)
            _, theirs = cv.visualize_image_attr(a, img, method, sign, outlier_perc=5, use_pyplot=False)
            assert len(ours.images) == len(theirs.images)
            for mine, ref in zip(ours.images, theirs.images):
                np.testing.assert_array_equal(np.asarray(mine.get_array()), np.asarray(ref.get_array()))
                assert mine.get_alpha() == ref.get_alpha()
                if method in ("heat_map", "blended_heat_map") and mine is ours.images[-1]:
                    x = np.linspace(0, 1, 11)
                    np.testing.assert_array_equal(mine.cmap(x), ref.cmap(x))  # Captum's colour map per sign
                    assert mine.get_clim() == ref.get_clim()


def test_channel_first_tensors_draw_as_channel_last_arrays():
    a, img = _attr_and_image(4)
    at, it = torch.from_numpy(a).permute(2, 0, 1), torch.from_numpy(img).permute(2, 0, 1)
    for method in ("blended_heat_map", "masked_image"):
        _, ref = viz.visualize_image_attr(a, img, method, "positive", use_pyplot=False)
        _, got = viz.visualize_image_attr(at[None], it, method, "positive", use_pyplot=False)
        for mine, theirs in zip(got.images, ref.images):
            np.testing.assert_array_equal(np.asarray(mine.get_array()), np.asarray(theirs.get_array()))


def test_original_image_without_attr():
    _, img = _attr_and_image()
    fig, ax = viz.visualize_image_attr(None, img, method="original_image", use_pyplot=False)
    np.testing.assert_array_equal(ax.images[0].get_array(), np.clip((img * 255).astype(int), 0, 255))
    grey = img[..., :1]
    _, ax = viz.visualize_image_attr(None, grey, method="original_image", use_pyplot=False)
    assert ax.images[0].get_array().shape == (H, W) and ax.images[0].cmap.name == "gray"


def test_grey_images_work_in_every_method():
    a, img = _attr_and_image(5)
    for grey in (img.mean(-1), img[..., :1]):
        for method in METHODS:
            _, ax = viz.visualize_image_attr(a[..., :1], grey, method, "absolute_value", use_pyplot=False)
            shown = np.asarray(ax.images[-1].get_array())
            assert shown.shape[:2] == (H, W)
            if method == "alpha_scaling":
                assert shown.shape == (H, W, 4)


def test_given_axis_is_drawn_on():
    a, img = _attr_and_image()
    fig = Figure()
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    got_fig, got_ax = viz.visualize_image_attr(a, img, "heat_map", plt_fig_axis=(fig, axes[1]), use_pyplot=False)
    assert got_fig is fig and got_ax is axes[1] and len(axes[1].images) == 1 and not axes[0].images


def test_multiple_layout(no_pyplot):
    a, img = _attr_and_image()
    methods = ["original_image", "heat_map", "blended_heat_map", "masked_image"]
    signs = ["all", "positive", "all", "absolute_value"]
    fig, axes = viz.visualize_image_attr_multiple(a, img, methods, signs, titles=list("abcd"), use_pyplot=False, show_colorbar=True)
    assert isinstance(axes, list) and len(axes) == 4 and isinstance(fig.canvas, FigureCanvasAgg)
    assert len(fig.axes) == 8  # four plots, four colour-bar slots
    assert [ax.get_title() for ax in axes] == list("abcd")
    assert [len(ax.images) for ax in axes] == [1, 1, 2, 1]
    lefts = [ax.get_position().x0 for ax in axes]
    assert lefts == sorted(lefts) and len({round(ax.get_position().y0, 6) for ax in axes}) == 1  # one row
    fig, ax = viz.visualize_image_attr_multiple(a, img, ["heat_map"], ["all"], use_pyplot=False)
    assert ax is fig.axes[0] and len(fig.axes) == 1  # one method: one axis, as Captum returns it


def test_use_pyplot_makes_and_shows_a_pyplot_figure(monkeypatch):
    from matplotlib import pyplot

    shown = []
    monkeypatch.setattr(pyplot, "show", lambda *a, **k: shown.append(1))
    a, img = _attr_and_image()
    fig, ax = viz.visualize_image_attr(a, img, "blended_heat_map", "all")
    fig2, axes = viz.visualize_image_attr_multiple(a, img, ["heat_map", "original_image"], ["all", "all"])
    try:
        assert shown == [1, 1]
        assert pyplot.fignum_exists(fig.number) and pyplot.fignum_exists(fig2.number) and len(axes) == 2
    finally:
        pyplot.close(fig)
        pyplot.close(fig2)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"method": "heatmap"}, "unknown method 'heatmap'"),
        ({"sign": "both"}, "unknown sign 'both'"),
        ({"method": "blended_heat_map", "original_image": None}, "'blended_heat_map' draws the input image: pass original_image"),
        ({"method": "masked_image", "sign": "all"}, "cannot show positive and negative"),
        ({"method": "alpha_scaling", "sign": "all"}, "cannot show positive and negative"),
        ({"attr": None}, "'heat_map' draws the attribution: attr is None"),
        ({"attr": np.zeros((H + 1, W, 3))}, r"attr of shape \(8, 5, 3\) does not match original_image.*\(7, 5\)"),
        ({"attr": np.zeros((W, H))}, r"attr of shape \(5, 7\) does not match"),
        ({"attr": np.zeros((2, 1, H, W))}, r"one image.*got shape \(2, 1, 7, 5\): pass one example"),
        ({"outlier_perc": 101}, "outlier_perc must be between 0 and 100"),
        ({"original_image": np.zeros((H, W, 2)), "method": "original_image"}, "has 2 channels"),
    ],
)
def test_errors_are_clear_and_come_before_a_figure(kw, message, no_pyplot):
    a, img = _attr_and_image()
    args = {"attr": a, "original_image": img, **kw}
    with pytest.raises(ValueError, match=message):
        viz.visualize_image_attr(args.pop("attr"), use_pyplot=True, **args)  # pyplot never reached


def test_multiple_errors(no_pyplot):
    a, img = _attr_and_image()
    with pytest.raises(ValueError, match="2 methods but 1 signs"):
        viz.visualize_image_attr_multiple(a, img, ["heat_map", "heat_map"], ["all"])
    with pytest.raises(ValueError, match="1 titles for 2 methods"):
        viz.visualize_image_attr_multiple(a, img, ["heat_map", "heat_map"], ["all", "all"], titles=["x"])
    with pytest.raises(ValueError, match="methods is empty"):
        viz.visualize_image_attr_multiple(a, img, [], [])
    with pytest.raises(ValueError, match="'masked_image' cannot show"):  # checked before the figure
        viz.visualize_image_attr_multiple(a, img, ["heat_map", "masked_image"], ["all", "all"])


def test_exports():
    for name in ("visualize_image_attr", "visualize_image_attr_multiple"):
        assert getattr(viz, name) is getattr(xattr.viz, name)


# --------------------------------------------------------------------------- to_map layouts


def test_to_map_reads_captum_style_channel_last():
    a = np.random.default_rng(6).normal(size=(3, 16, 12))
    hwc = np.transpose(a, (1, 2, 0))  # what Captum's tutorials build
    np.testing.assert_array_equal(heatmap.to_map(a), a.sum(0))  # channel-first: unchanged
    np.testing.assert_allclose(heatmap.to_map(hwc), a.sum(0), atol=1e-12)
    np.testing.assert_allclose(heatmap.to_map(torch.from_numpy(hwc)), a.sum(0), atol=1e-12)
    np.testing.assert_allclose(heatmap.to_map(hwc[..., :1]), a[0], atol=0)
    ax = Figure().subplots()
    heatmap.draw(ax, hwc, torch.rand(3, 16, 12), sign="signed", percentile=100)
    drawn = np.asarray(ax.images[0].get_array())
    assert drawn.shape == (16, 12)
    np.testing.assert_allclose(drawn, heatmap.normalize(a.sum(0), "signed", percentile=100)[0], atol=1e-12)


def test_to_map_channel_first_is_unchanged():
    g = np.random.default_rng(7)
    for shape in [(1, 4, 4), (3, 8, 8), (1, 3, 5), (16, 6, 6), (4, 4, 4), (3, 3, 3)]:
        a = g.normal(size=shape)
        np.testing.assert_array_equal(heatmap.to_map(a), a.sum(0))
        np.testing.assert_array_equal(heatmap.to_map(a, shape[1:]), a.sum(0))
    layer = g.normal(size=(16, 4, 4))  # a 16-channel 4x4 layer map: channel-first over its image
    for size in [(4, 4), (8, 8), (16, 16)]:
        np.testing.assert_array_equal(heatmap.to_map(layer, size), layer.sum(0))
    small_hwc = g.normal(size=(8, 8, 3))  # channel-last and smaller than its image: the square reading
    np.testing.assert_array_equal(heatmap.to_map(small_hwc, (16, 16)), small_hwc.sum(-1))


def test_to_map_ambiguous_layout_against_the_image_is_an_error():
    a = np.random.default_rng(8).normal(size=(4, 4, 1))  # (C, H, W) or (H, W, C)?
    np.testing.assert_array_equal(heatmap.to_map(a), a.sum(0))  # alone: channel-first, as before
    with pytest.raises(ValueError, match=r"\(4, 4, 1\) could be .* pass it channel-first, shape \(1, 4, 4\)"):
        heatmap.to_map(a, (4, 4))
    with pytest.raises(ValueError, match="pass it channel-first"):
        heatmap.draw(Figure().subplots(), a, torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match=r"\(8, 8, 5\) could be"):
        heatmap.to_map(np.zeros((8, 8, 5)), (8, 8))
    np.testing.assert_array_equal(heatmap.to_map(np.moveaxis(a, -1, 0), (4, 4)), a[..., 0])


def test_save_grid_with_channel_last_columns(tmp_path, drawn_shapes):
    shapes = drawn_shapes
    x = torch.rand(2, 3, 10, 8)
    hwc = x.permute(0, 2, 3, 1).numpy()
    heatmap.save_grid(tmp_path / "g.png", x, {"hwc": list(hwc), "chw": x}, shared_scale="row")
    assert shapes == [(10, 8)] * 4


def test_save_heatmap_takes_channel_last_images_and_captums_sign_names(tmp_path):
    """Captum's tutorials hand matplotlib-style (H, W, C) images and say 'all' / 'absolute_value':
    save_heatmap draws the same picture as from the channel-first image and xattr's names."""
    from matplotlib.figure import Figure

    attr, image = torch.randn(3, 8, 8), torch.rand(3, 8, 8)
    pictures = []
    for img, sign in ((image, "signed"), (image.permute(1, 2, 0).numpy(), "all"), (image, "abs"), (image, "absolute_value")):
        ax = Figure().subplots()
        heatmap.draw(ax, attr, img, sign=sign)
        pictures.append([im.get_array() for im in ax.images])
    for a, b in ((0, 1), (2, 3)):
        assert len(pictures[a]) == len(pictures[b])
        for p, q in zip(pictures[a], pictures[b]):
            np.testing.assert_array_equal(np.asarray(p), np.asarray(q))
    np.testing.assert_array_equal(heatmap.to_image(image[:1].permute(1, 2, 0).numpy()), heatmap.to_image(image[:1]))
    with pytest.raises(ValueError, match="'positive'.*visualize_image_attr"):
        heatmap.save_heatmap(tmp_path / "p.png", attr[None], image[None], sign="positive")
