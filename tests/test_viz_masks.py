"""Segment outlines and labels: draw_mask_border, draw_mask_legend (Captum 0.8+'s) and mask_border.

The border is checked pixel by pixel against a written-out definition (a mask pixel within
city-block distance border_width of a pixel outside the mask or the image), against
scipy.ndimage.binary_erosion, and the drawn RGBA image and label against Captum's.
"""

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

os.environ.setdefault("MPLBACKEND", "Agg")
pytest.importorskip("matplotlib")

from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import xattr.viz  # noqa: E402
from xattr.viz.masks import draw_mask_border, draw_mask_legend, mask_border  # noqa: E402


def _border_reference(mask, width):
    """Explicit loops: on the border iff inside and some pixel with |di| + |dj| <= width is not."""
    h, w = mask.shape
    out = np.zeros((h, w), dtype=bool)
    for i in range(h):
        for j in range(w):
            if not mask[i, j]:
                continue
            for di in range(-width, width + 1):
                for dj in range(-width, width + 1):
                    if abs(di) + abs(dj) > width:
                        continue
                    a, b = i + di, j + dj
                    if not (0 <= a < h and 0 <= b < w) or not mask[a, b]:
                        out[i, j] = True
    return out


MASKS = arrays(bool, st.tuples(st.integers(1, 9), st.integers(1, 9)))


@settings(max_examples=40, deadline=None)
@given(mask=MASKS, width=st.integers(1, 4))
def test_border_equals_the_pixel_loop_and_scipy(mask, width):
    from scipy.ndimage import binary_erosion

    border = mask_border(mask, width)
    np.testing.assert_array_equal(border, _border_reference(mask, width))
    np.testing.assert_array_equal(border, mask & ~binary_erosion(mask, iterations=width))
    assert not (border & ~mask).any()  # inside the mask
    assert border.any() == mask.any()  # only an empty mask has no border
    assert not (border & ~mask_border(mask, width + 1)).any()  # wider borders contain narrower ones


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), width=st.integers(1, 6))
def test_border_of_a_full_rectangle_is_a_ring(h, w, width):
    border = mask_border(np.ones((h, w), dtype=bool), width)
    assert border.sum() == h * w - max(h - 2 * width, 0) * max(w - 2 * width, 0)


def _captum():
    return pytest.importorskip("captum.attr._utils.visualization")


@pytest.mark.parametrize("colour", ["black", "red", np.array([0.2, 0.4, 0.6, 0.5])])
@pytest.mark.parametrize("width", [1, 2, 3])
def test_drawn_border_equals_captums(colour, width):
    cv = _captum()
    g = np.random.default_rng(width)
    mask = np.zeros((12, 10), dtype=bool)
    mask[2:9, 1:8] = True
    mask[g.random((12, 10)) < 0.15] ^= True
    ours, theirs = Figure().subplots(), Figure().subplots()
    image = draw_mask_border(ours, mask, border_width=width, border_color=colour)
    cv.draw_mask_border(theirs, mask, border_width=width, border_color=colour)
    assert image is ours.images[0] and len(ours.images) == len(theirs.images) == 1
    drawn = ours.images[0].get_array()
    np.testing.assert_array_equal(drawn, theirs.images[0].get_array())
    rgba = to_rgba(colour if isinstance(colour, str) else tuple(colour))
    border = _border_reference(mask, width)
    np.testing.assert_array_equal(drawn[border], np.tile(rgba, (border.sum(), 1)))
    assert (drawn[~border] == 0).all()  # transparent off the border


def test_drawn_label_equals_captums():
    cv = _captum()
    mask = np.zeros((9, 11), dtype=bool)
    mask[1:4, 2:9] = True
    mask[6, 10] = True
    ours, theirs = Figure().subplots(), Figure().subplots()
    text = draw_mask_legend(ours, mask, "seg 3", fontsize=7, text_color="yellow", bbox_facecolor="blue", bbox_alpha=0.3)
    cv.draw_mask_legend(theirs, mask, "seg 3", fontsize=7, text_color="yellow", bbox_facecolor="blue", bbox_alpha=0.3)
    (t,) = theirs.texts
    assert text is ours.texts[0] and len(ours.texts) == 1
    rows = [i for i in range(9) for j in range(11) if mask[i, j]]
    cols = [j for i in range(9) for j in range(11) if mask[i, j]]
    assert text.get_position() == t.get_position()
    np.testing.assert_allclose(text.get_position(), (sum(cols) / len(cols), sum(rows) / len(rows)), rtol=1e-12)
    assert (text.get_text(), text.get_color(), text.get_fontsize(), text.get_ha(), text.get_va()) == (
        t.get_text(), t.get_color(), t.get_fontsize(), t.get_ha(), t.get_va())  # fmt: skip
    box, their_box = text.get_bbox_patch(), t.get_bbox_patch()
    assert box.get_facecolor() == their_box.get_facecolor() and box.get_alpha() == their_box.get_alpha() == 0.3
    assert box.get_boxstyle().pad == their_box.get_boxstyle().pad == 0.2


def test_empty_masks_draw_nothing_and_inputs_are_taken_as_given():
    ax = Figure().subplots()
    empty = np.zeros((4, 5), dtype=bool)
    assert draw_mask_border(ax, empty) is None and draw_mask_legend(ax, empty, "x") is None
    assert len(ax.images) == len(ax.texts) == len(ax.get_children()) - len(Figure().subplots().get_children()) == 0
    mask = torch.zeros(6, 6, dtype=torch.int64)
    mask[1:5, 1:5] = 1
    before = mask.clone()
    draw_mask_border(ax, mask, border_color=(0.0, 1.0, 0.0))  # RGB: transparent off the border
    drawn = ax.images[0].get_array()
    assert torch.equal(mask, before)
    np.testing.assert_array_equal(drawn[..., 3] == 1, _border_reference(mask.numpy() != 0, 1))
    assert draw_mask_legend(ax, mask, "m").get_position() == (2.5, 2.5)
    assert xattr.viz.draw_mask_border is draw_mask_border and xattr.viz.draw_mask_legend is draw_mask_legend


@pytest.mark.parametrize("width", [0, -1, 1.5, True])
def test_bad_border_width(width):
    with pytest.raises(ValueError, match="border_width must be a positive integer"):
        draw_mask_border(Figure().subplots(), np.ones((3, 3), dtype=bool), border_width=width)


def test_bad_masks():
    ax = Figure().subplots()
    with pytest.raises(ValueError, match=r"mask must be 2-d, \(H, W\), got shape \(1, 3, 3\)"):
        draw_mask_border(ax, np.ones((1, 3, 3), dtype=bool))
    with pytest.raises(ValueError, match="2-d"):
        draw_mask_legend(ax, np.ones(3, dtype=bool), "x")
    with pytest.raises(ValueError, match="booleans or numbers"):
        draw_mask_border(ax, np.array([["a"]]))
