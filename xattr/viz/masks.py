"""Outlines and labels of image segments: Captum's ``draw_mask_border`` and ``draw_mask_legend``.

    from xattr.viz import draw_mask_border, draw_mask_legend
    ax.imshow(image)
    for i, segment in enumerate(masks):          # boolean (H, W) masks, e.g. feature_mask == i
        draw_mask_border(ax, segment, border_width=1, border_color="white")
        draw_mask_legend(ax, segment, str(i))

Both draw on an existing axis (an image of the same height and width is usually shown there
first) and draw nothing for an empty mask, as Captum 0.8+.

NOTE: [Border of a mask]
The border is the mask minus its binary erosion repeated ``border_width`` times with the
4-neighbour cross (scipy's default structuring element, which Captum uses), where pixels
beyond the image count as outside. ``border_width`` crosses in a row erode by the diamond
|di| + |dj| <= border_width, so a mask pixel is on the border exactly when some pixel within
that city-block distance lies outside the mask or outside the image. The border is drawn as an
(H, W, 4) RGBA image: the colour on border pixels, fully transparent elsewhere. Written in
numpy (the same pixels as ``scipy.ndimage.binary_erosion(mask, iterations=border_width)``).

Where this differs from Captum: masks may be torch tensors and 0/1 or non-boolean arrays
(non-zero is inside); ``border_color`` is any matplotlib colour (Captum takes a name or an RGBA
array, and an RGB array draws the whole image black); ``border_width`` must be a positive
integer (Captum's 0 erodes until nothing changes, so the whole mask becomes border); a mask
that is not 2-d raises ValueError; both functions return what they drew (the ``AxesImage`` or
``Text``, None for an empty mask) where Captum returns None.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["draw_mask_border", "draw_mask_legend", "mask_border"]


def _mask(mask) -> np.ndarray:
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-d, (H, W), got shape {m.shape}: pass one segment's mask")
    if not (m.dtype == bool or np.issubdtype(m.dtype, np.number)):
        raise ValueError(f"mask must hold booleans or numbers, got dtype {m.dtype}")
    if m.dtype != bool and not np.isfinite(m).all():
        raise ValueError("mask holds NaN or infinite values: pass a boolean (or 0/1) mask")
    return m != 0


def _check_ax(ax) -> None:
    from matplotlib.axes import Axes

    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes (e.g. fig, ax = plt.subplots()), got {type(ax).__name__}")


def mask_border(mask, border_width: int = 1) -> np.ndarray:
    """The (H, W) boolean border of ``mask``, ``border_width`` pixels wide, inside the mask.

    NOTE: [Border of a mask] in ``xattr/viz/masks.py``.
    """
    if isinstance(border_width, bool) or not isinstance(border_width, numbers.Integral) or border_width < 1:
        raise ValueError(f"border_width must be a positive integer (pixels), got {border_width!r}")
    inside = _mask(mask)
    eroded = inside
    for _ in range(int(border_width)):
        if not eroded.any():
            break
        p = np.pad(eroded, 1, constant_values=False)  # beyond the image is outside
        eroded = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return inside & ~eroded


def draw_mask_border(ax, mask, border_width: int = 1, border_color="black"):
    """Draws the inner border of ``mask`` on ``ax`` in ``border_color``; returns the AxesImage.

    Args:
      ax: the matplotlib axis to draw on.
      mask: one segment, a 2-d boolean (or 0/1) array or tensor of the image's (H, W).
      border_width: the border's width in pixels, measured inside the mask (a positive int).
      border_color: any matplotlib colour: a name, an RGB or RGBA tuple or array.

    An empty mask draws nothing and returns None. The border is an RGBA image, transparent off
    the border (NOTE: [Border of a mask] in ``xattr/viz/masks.py``), drawn with ``ax.imshow``.

    Example:
      >>> fig, ax = xattr.viz.visualize_image_attr(None, image, method="original_image")
      >>> xattr.viz.draw_mask_border(ax, segments == 3, border_width=2, border_color="red")
    """
    from matplotlib.colors import to_rgba

    _check_ax(ax)
    border = mask_border(mask, border_width)  # checks both first
    rgba = np.asarray(to_rgba(border_color if isinstance(border_color, str) else tuple(np.ravel(border_color))))
    if not border.any():  # only an empty mask has no border: erosion takes its outermost pixels
        return None
    return ax.imshow(border[..., None] * rgba.reshape(1, 1, 4))


def draw_mask_legend(
    ax,
    mask,
    label: str,
    fontsize: int = 10,
    text_color: str = "white",
    bbox_facecolor: str = "black",
    bbox_alpha: float = 0.6,
):
    """Writes ``label`` at the centroid of ``mask`` on ``ax``; returns the Text (None if empty).

    The centroid is the mean row and mean column of the mask's pixels (it may lie outside a
    non-convex segment, as in Captum). The text is centred there, in ``text_color`` and
    ``fontsize``, on a rounded box of ``bbox_facecolor`` at opacity ``bbox_alpha``.

    Example:
      >>> xattr.viz.draw_mask_legend(ax, segments == 3, "segment 3")   # the label at the segment's centroid
    """
    _check_ax(ax)
    inside = _mask(mask)
    if not inside.any():
        return None
    rows, cols = np.nonzero(inside)
    return ax.text(
        cols.mean(),
        rows.mean(),
        label,
        color=text_color,
        fontsize=fontsize,
        ha="center",
        va="center",
        bbox={"boxstyle": "round,pad=0.2", "facecolor": bbox_facecolor, "alpha": bbox_alpha},
    )
