"""Edge cases of the heatmap helper: non-finite pixels, layer-sized maps, empty grids, float64."""

import os

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

import xattr  # noqa: E402
from xattr.viz import heatmap  # noqa: E402


def _axis():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    FigureCanvasAgg(fig)
    return fig.subplots()


def _square_image(n: int = 16) -> torch.Tensor:
    x = torch.zeros(1, n, n)
    x[:, n // 4 : 3 * n // 4, n // 4 : 3 * n // 4] = 1
    return x


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_one_nonfinite_pixel_keeps_the_percentile_scale(bad):
    g = np.random.default_rng(0)
    a = g.random((8, 8)) * 1e-3  # a small, all >= 0 map
    a[0, 0] = bad
    finite = np.delete(a.ravel(), 0)
    values, sign, scale = heatmap.normalize(a)
    assert sign == "abs"  # the sign comes from the finite pixels only
    assert scale == pytest.approx(np.percentile(finite, 99.5))
    assert np.isnan(values[0, 0])  # drawn in NONFINITE_COLOR
    rest = np.delete(values.ravel(), 0)
    np.testing.assert_allclose(rest, np.clip(finite / scale, 0, 1))
    assert rest.max() == 1.0  # not washed out to ~white


def test_nonfinite_pixels_do_not_decide_signed_or_scale_of_signed_maps():
    a = np.array([[-1.0, 2.0], [np.nan, 4.0]])
    values, sign, scale = heatmap.normalize(a, percentile=100)
    assert (sign, scale) == ("signed", 4.0)
    np.testing.assert_allclose(values, [[-0.25, 0.5], [np.nan, 1.0]])


def test_finite_maps_are_normalized_as_before():
    a = np.random.default_rng(1).normal(size=(6, 5))
    for sign in ("auto", "signed", "abs"):
        values, used, scale = heatmap.normalize(a, sign)
        v = np.abs(a) if used == "abs" else a
        assert scale == float(np.percentile(np.abs(v), 99.5))
        np.testing.assert_array_equal(values, np.clip(v / scale, 0.0 if used == "abs" else -1.0, 1.0))


def test_all_nonfinite_map_draws_grey(tmp_path):
    values, sign, scale = heatmap.normalize(np.full((3, 3), np.nan))
    assert scale == 1.0 and np.isnan(values).all()
    x = torch.rand(1, 1, 3, 3)
    path = heatmap.save_heatmap(tmp_path / "nan.png", torch.full((1, 1, 3, 3), float("nan")), x)
    assert os.path.getsize(path) > 1000
    ax = _axis()
    heatmap.draw(ax, torch.full((1, 3, 3), float("nan")), x[0])
    rgba = ax.images[0].to_rgba(ax.images[0].get_array())
    assert (rgba[..., 3] == 1).all() and np.ptp(rgba[..., :3]) == 0  # opaque grey, not see-through


def test_nonfinite_pixels_are_drawn_in_the_documented_grey():
    from matplotlib.colors import to_rgba

    a = torch.rand(1, 4, 4)
    a[0, 1, 2] = float("nan")
    a[0, 3, 3] = float("inf")
    for sign in ("signed", "abs"):
        ax = _axis()
        heatmap.draw(ax, a, sign=sign)
        im = ax.images[0]
        rgba = im.to_rgba(im.get_array())
        grey = to_rgba(heatmap.NONFINITE_COLOR)
        np.testing.assert_allclose(rgba[1, 2], grey, atol=1 / 255)
        np.testing.assert_allclose(rgba[3, 3], grey, atol=1 / 255)
        assert not np.allclose(rgba[0, 0], grey, atol=0.05)


def test_row_shared_scale_ignores_nonfinite_pixels(tmp_path, monkeypatch):
    seen = []
    draw = heatmap.draw

    def spy(ax, attr, image=None, **kw):
        seen.append(kw["scale"])
        return draw(ax, attr, image, **kw)

    monkeypatch.setattr(heatmap, "draw", spy)
    a = torch.rand(1, 1, 8, 8) * 1e-3
    b = torch.rand(1, 1, 8, 8) * 1e-3
    b[0, 0, 0, 0] = float("nan")
    heatmap.save_grid(tmp_path / "g.png", torch.rand(1, 1, 8, 8), {"a": a, "b": b}, shared_scale="row")
    mags = np.concatenate([a.double().numpy().ravel(), b.double().numpy().ravel()[1:]])
    assert seen == [pytest.approx(np.percentile(mags, 99.5))] * 2


def test_to_image_ignores_nonfinite_pixels():
    x = torch.tensor([[[0.0, 2.0], [float("nan"), 4.0]]])
    img = heatmap.to_image(x)
    np.testing.assert_allclose(img, [[0.0, 0.5], [np.nan, 1.0]])


def test_layer_sized_map_is_resized_bilinearly_to_the_image():
    cam = torch.randn(1, 4, 4, dtype=torch.float64)
    ax = _axis()
    heatmap.draw(ax, cam, _square_image(16), sign="signed", percentile=100)
    shown = np.asarray(ax.images[0].get_array())
    assert shown.shape == (16, 16)
    values = torch.from_numpy(heatmap.normalize(heatmap.to_map(cam), "signed", percentile=100)[0])
    expected = xattr.upsample(values[None, None], (16, 16), mode="bilinear")[0, 0]
    np.testing.assert_allclose(shown, expected.numpy(), atol=1e-12)


def test_non_integer_ratio_and_rgb_image_match_torch_bilinear():
    cam = torch.rand(1, 3, 5, dtype=torch.float64)
    image = torch.rand(3, 7, 11)
    ax = _axis()
    heatmap.draw(ax, cam, image, sign="abs", percentile=100)
    shown = np.asarray(ax.images[0].get_array())
    values = torch.from_numpy(heatmap.normalize(heatmap.to_map(cam), "abs", percentile=100)[0])
    expected = torch.nn.functional.interpolate(values[None, None], (7, 11), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(shown, expected[0, 0].numpy(), atol=1e-12)


def test_nonfinite_pixel_of_a_layer_sized_map_stays_one_block():
    cam = torch.rand(1, 4, 4)
    cam[0, 1, 2] = float("nan")
    ax = _axis()
    heatmap.draw(ax, cam, _square_image(16))
    shown = np.ma.filled(ax.images[0].get_array(), np.nan)
    expected = np.zeros((16, 16), bool)
    expected[4:8, 8:12] = True
    np.testing.assert_array_equal(np.isnan(shown), expected)


def test_map_larger_than_the_image_is_an_error():
    with pytest.raises(ValueError, match=r"\(16, 16\) is larger than its input image \(8, 8\)"):
        heatmap.draw(_axis(), torch.rand(1, 16, 16), _square_image(8))


def test_save_grid_with_a_layer_sized_column(tmp_path, drawn_shapes):
    shapes = drawn_shapes
    x = torch.stack([_square_image(16), _square_image(16)])
    path = heatmap.save_grid(tmp_path / "cam.png", x, {"cam 4x4": torch.rand(2, 1, 4, 4), "input": torch.rand(2, 1, 16, 16)})
    assert os.path.getsize(path) > 1000
    assert shapes == [(16, 16)] * 4  # every map drawn at the input's size, under its outline


def test_save_grid_with_nothing_to_draw_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="nothing to draw"):
        heatmap.save_grid(tmp_path / "empty.png", None, {})
    assert not (tmp_path / "empty.png").exists()


def test_float64_tensors_keep_their_precision():
    a = torch.tensor([[1e-50, 3e-50], [1.0, 1.0 + 1e-12]], dtype=torch.float64)
    m = heatmap.to_map(a)
    assert m.dtype == np.float64
    np.testing.assert_array_equal(m, a.numpy())  # float32 would flush 1e-50 to 0 and merge the 1s
    tiny = torch.tensor([[1e-50, 2e-50], [3e-50, 4e-50]], dtype=torch.float64)
    values, _, scale = heatmap.normalize(heatmap.to_map(tiny), percentile=100)
    assert scale == 4e-50
    np.testing.assert_allclose(values, [[0.25, 0.5], [0.75, 1.0]])


def test_low_precision_tensors_still_convert():
    a = torch.tensor([[0.5, -1.0]], dtype=torch.bfloat16)
    np.testing.assert_array_equal(heatmap.to_map(a), [[0.5, -1.0]])


def test_save_grid_refuses_images_and_columns_of_other_batch_sizes(tmp_path):
    """More images than attributions dropped the extra images silently; fewer raised an IndexError."""
    import xattr.viz as V

    x, a = torch.rand(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    for images, column in ((x, a[:1]), (x[:1], a)):
        with pytest.raises(ValueError, match="images has .* examples but the columns have"):
            V.save_grid(str(tmp_path / "g.png"), images, {"s": column})
    assert (tmp_path / "ok.png").name in str(V.save_grid(str(tmp_path / "ok.png"), x, {"s": a}))
