"""Captum's image plots: ``visualize_image_attr`` and ``visualize_image_attr_multiple``.

    from xattr.viz import visualize_image_attr, visualize_image_attr_multiple
    fig, ax = visualize_image_attr(attr, image, method="blended_heat_map", sign="all")
    fig, axes = visualize_image_attr_multiple(attr, image, ["original_image", "heat_map"],
                                              ["all", "positive"], use_pyplot=False)

The arguments, defaults and pictures are Captum 0.9's, so ``from xattr.compat.captum import
visualization as viz`` is a drop-in for ``from captum.attr import visualization as viz``:

* ``attr`` is one example's attribution, (H, W, C) or (H, W); a torch tensor, a (C, H, W)
  array and a batch of one, (1, C, H, W), are taken too. Channels are summed.
* ``original_image`` is the input picture, (H, W, C) or (H, W) (or as ``attr``), with values
  in [0, 1] (scaled by 255) or in [0, 255].
* ``sign`` picks what is shown: "positive" (green), "negative" (red, as magnitudes),
  "absolute_value" (blue) or "all" (red through white to green).
* The map is scaled as Captum scales it (`normalize_image_attr`): the ``outlier_perc`` percent of
  the total |attribution| carried by the largest pixels saturates, the rest is divided by the
  smallest of those pixels, and everything is clipped to [-1, 1].
* ``method``: "heat_map", "blended_heat_map" (over the image in grey), "original_image",
  "masked_image" (the image times the map) or "alpha_scaling" (the map as the image's opacity).

Layouts. A 3-d ``attr`` is (H, W, C) unless its first dim is 1, 3 or 4 and its last is not;
with ``original_image`` given, the layout whose height and width match the image's is used, and
a map matching neither is an error. ``original_image`` is (H, W, C) unless its first dim is 1,
3 or 4 and its last is not.

Where this differs from Captum 0.9:

* ``visualize_image_attr(None, image, method="original_image")`` (Captum's tutorials call it so)
  draws the image; Captum fails on ``None.shape``.
* A map with nothing of the chosen sign (``sign="negative"`` on a saliency map, all zeros)
  draws as zeros, and ``outlier_perc=100`` saturates every non-zero pixel; Captum fails an
  assertion ("Cannot normalize by scale factor = 0"). Captum's warning for a scale below 1e-5 is
  not given: the scale is in the attribution's own units, so small scales are normal.
* NaN and infinite attributions take no part in the scale and are drawn in grey (as elsewhere in
  ``xattr.viz``); masked_image and alpha_scaling treat them as 0. Captum fails on them.
* Unknown methods or signs, a missing image, ``sign="all"`` with masked_image or alpha_scaling,
  and images whose height and width differ from the attribution's raise ValueError up front,
  before any figure is made (Captum raises KeyError or AssertionError, some of them after
  creating the figure, or draws mismatched arrays over each other).
* Grey images ((H, W) or (H, W, 1)) are drawn in grey, on a 0-255 scale (Captum draws them in
  matplotlib's default colour map, stretched to their own range), and work with
  blended_heat_map and alpha_scaling (Captum fails on their missing channel axis). An image
  with values above 1 is drawn as 0-255 integers in every method (Captum's original_image
  passes such a float image to matplotlib, which clips it to [0, 1]); an RGBA image's own
  alpha is replaced in alpha_scaling.

pyplot is imported only with ``use_pyplot=True`` (the default, as in Captum: the figure is made
by ``pyplot`` and ``pyplot.show()`` is called). With ``use_pyplot=False`` the figure is a plain
``matplotlib.figure.Figure`` on the Agg canvas, returned without being shown.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Sequence

import numpy as np

from .heatmap import CHANNEL_SIZES, NONFINITE_COLOR

__all__ = [
    "ImageVisualizationMethod",
    "VisualizeSign",
    "normalize_image_attr",
    "visualize_image_attr",
    "visualize_image_attr_multiple",
]


class ImageVisualizationMethod(Enum):
    """Captum's names (and numbers) of the ``method`` values of `visualize_image_attr`."""

    heat_map = 1
    blended_heat_map = 2
    original_image = 3
    masked_image = 4
    alpha_scaling = 5


class VisualizeSign(Enum):
    """Captum's names (and numbers) of the ``sign`` values of the image and time-series plots."""

    positive = 1
    absolute_value = 2
    negative = 3
    all = 4


METHODS = ("heat_map", "blended_heat_map", "original_image", "masked_image", "alpha_scaling")
SIGNS = ("all", "positive", "negative", "absolute_value")

_USES_IMAGE = ("blended_heat_map", "original_image", "masked_image", "alpha_scaling")
_ONE_SIGNED = ("masked_image", "alpha_scaling")  # they show magnitudes: sign="all" has no picture
# sign -> (colour map, vmin, vmax); "all" runs from red (-1) through white (0) to green (+1)
_SIGN_CMAPS = {
    "all": (("red", "white", "green"), -1.0, 1.0),
    "positive": ("Greens", 0.0, 1.0),
    "negative": ("Reds", 0.0, 1.0),
    "absolute_value": ("Blues", 0.0, 1.0),
}


# --------------------------------------------------------------------------- arrays and layouts


def _to_numpy(a, name: str) -> np.ndarray:
    """A torch tensor or array-like -> numpy, one example (a leading batch dim of 1 is dropped)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu()
        if a.is_floating_point() and a.element_size() < 4:  # float16 / bfloat16
            a = a.float()
        a = a.numpy()
    a = np.asarray(a)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be one image, (H, W, C), (C, H, W) or (H, W), got shape {a.shape}"
            + (": pass one example, e.g. attr[0]" if a.ndim == 4 else "")
        )
    return a


def _reads_channel_first(shape) -> bool:
    return len(shape) == 3 and shape[0] in CHANNEL_SIZES and shape[-1] not in CHANNEL_SIZES


def _image_array(original_image) -> np.ndarray:
    """The input image as (H, W) or (H, W, C), in Captum's 0-255 range (ints where it scaled)."""
    img = _to_numpy(original_image, "original_image")
    if _reads_channel_first(img.shape):
        img = np.moveaxis(img, 0, -1)
    if img.dtype == bool:
        img = img.astype(np.uint8)
    if not np.issubdtype(img.dtype, np.number) or np.iscomplexobj(img):
        raise ValueError(f"original_image must hold real numbers, got dtype {img.dtype}")
    if img.size and not np.isfinite(img).all():
        raise ValueError("original_image holds NaN or infinite values")
    if img.size and np.max(img) <= 1:
        img = _to_pixels(img * 255)
    return img


def _to_pixels(a: np.ndarray) -> np.ndarray:
    """0-255 integers, as matplotlib draws integer RGB(A) arrays (truncated, then clipped)."""
    return np.clip(a.astype(int), 0, 255)


def _attr_map(attr, size=None) -> np.ndarray:
    """One attribution -> an (H, W) float map, channels summed; ``size`` is the image's (H, W)."""
    a = _to_numpy(attr, "attr")
    if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float64)
    elif a.dtype == np.float16:
        a = a.astype(np.float32)  # float16 running totals overflow
    elif not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"attr must hold real numbers, got dtype {a.dtype}")
    if a.ndim == 2:
        if size is not None and a.shape != size:
            raise _mismatch(a.shape, size)
        return a
    last_hw, first_hw = a.shape[:2], a.shape[1:]
    if size is None:
        return a.sum(0) if _reads_channel_first(a.shape) else a.sum(-1)
    if last_hw == size:  # Captum's layout first: (H, W, C)
        return a.sum(-1)
    if first_hw == size:
        return a.sum(0)
    raise _mismatch(a.shape, size)


def _mismatch(shape, size) -> ValueError:
    return ValueError(
        f"attr of shape {tuple(shape)} does not match original_image, whose height and width are "
        f"{tuple(size)}: pass the attribution of this image, as (H, W, C), (C, H, W) or (H, W)"
    )


# --------------------------------------------------------------------------- normalisation


def _check_sign(sign) -> None:
    if sign not in SIGNS:
        raise ValueError(f"unknown sign {sign!r}: choose one of {', '.join(map(repr, SIGNS))}")


def _check_outlier_perc(outlier_perc) -> None:
    if not 0 <= outlier_perc <= 100:
        raise ValueError(f"outlier_perc must be between 0 and 100, got {outlier_perc!r}")


def _normalize_map(m: np.ndarray, sign: str, outlier_perc) -> np.ndarray:
    if sign == "positive":
        v = np.maximum(m, 0)
    elif sign == "negative":
        v = np.minimum(m, 0)
    elif sign == "absolute_value":
        v = np.abs(m)
    else:
        v = m
    finite = np.isfinite(v)
    mags = np.sort(np.abs(v[finite]))
    scale = v.dtype.type(0)
    if mags.size:
        # The largest pixels holding ``outlier_perc`` percent of the total saturate: the scale is
        # the smallest value at which the running total of sorted magnitudes reaches the rest.
        running = np.cumsum(mags)
        reach = running[-1] * 0.01 * (100.0 - outlier_perc)
        scale = mags[min(int(np.searchsorted(running, reach, side="left")), mags.size - 1)]
    flip = -1 if sign == "negative" else 1  # negative maps come back as magnitudes in [0, 1]
    with np.errstate(invalid="ignore"):
        if scale > 0:
            out = np.clip(v / (flip * scale), -1, 1)
        else:  # nothing of this sign (or outlier_perc=100 on a map with zeros): the limit scale -> 0
            out = (np.sign(v) * flip).astype(v.dtype)
    return np.where(finite, out, np.nan)


def normalize_image_attr(attr, sign: str = "absolute_value", outlier_perc: float = 2) -> np.ndarray:
    """The (H, W) map `visualize_image_attr` draws, scaled as Captum 0.9 scales it.

    ``attr`` is one attribution, (H, W, C), (C, H, W) or (H, W) (see the module's layouts);
    channels are summed. The map is first restricted to ``sign``: "positive" keeps values > 0,
    "negative" values < 0, "absolute_value" takes |values|, "all" keeps everything. Sorting
    the magnitudes, the scale is the smallest one at which their running total reaches
    ``100 - outlier_perc`` percent of the whole; the map is divided by it and clipped to
    [-1, 1]. So "all" lies in [-1, 1], and the others in [0, 1] ("negative" as magnitudes).
    Numbers equal Captum's on finite inputs (same dtype: float32 stays float32). A map with
    nothing of ``sign`` is all zeros; NaN and infinite entries take no part in the scale and
    come back as NaN.

    Example:
      >>> m = xattr.viz.normalize_image_attr(attr[0].permute(1, 2, 0).numpy(), sign="all")   # (H, W) in [-1, 1]
    """
    _check_sign(sign)
    _check_outlier_perc(outlier_perc)
    return _normalize_map(_attr_map(attr), sign, outlier_perc)


# --------------------------------------------------------------------------- drawing


def _check(attr, original_image, method, sign, outlier_perc):
    """Validates one plot's arguments; returns (image or None, normalised map or None)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(map(repr, METHODS))}")
    _check_sign(sign)
    _check_outlier_perc(outlier_perc)
    if original_image is None and method in _USES_IMAGE:
        raise ValueError(f"method {method!r} draws the input image: pass original_image")
    if attr is None and method != "original_image":
        raise ValueError(f"method {method!r} draws the attribution: attr is None")
    if sign == "all" and method in _ONE_SIGNED:
        raise ValueError(
            f"method {method!r} cannot show positive and negative attributions at once: "
            "choose sign 'positive', 'negative' or 'absolute_value'"
        )
    img = _image_array(original_image) if original_image is not None else None
    if img is not None and method != "heat_map" and img.ndim == 3 and img.shape[-1] not in CHANNEL_SIZES:
        raise ValueError(
            f"original_image of shape {img.shape} has {img.shape[-1]} channels; "
            f"method {method!r} draws it as a picture, which needs 1, 3 or 4"
        )
    norm = None
    if attr is not None:
        m = _attr_map(attr, img.shape[:2] if img is not None else None)
        if method != "original_image":
            norm = _normalize_map(m, sign, outlier_perc)
    return img, norm


def _colormap(cmap, sign: str):
    from matplotlib import colormaps
    from matplotlib.colors import Colormap, LinearSegmentedColormap

    if cmap is None:
        cmap = _SIGN_CMAPS[sign][0]
        if not isinstance(cmap, str):
            cmap = LinearSegmentedColormap.from_list("red_white_green", list(cmap))
    if isinstance(cmap, str):
        cmap = colormaps[cmap]
    if not isinstance(cmap, Colormap):
        raise ValueError(f"cmap must be a colour map name or a matplotlib Colormap, got {cmap!r}")
    return cmap.with_extremes(bad=NONFINITE_COLOR)


def _show_picture(ax, img: np.ndarray):
    pic = _to_pixels(img)
    if pic.ndim == 3 and pic.shape[-1] == 1:
        pic = pic[..., 0]
    if pic.ndim == 2:
        return ax.imshow(pic, cmap="gray", vmin=0, vmax=255)
    return ax.imshow(pic)


def _draw(ax, method, sign, img, norm, cmap, alpha_overlay):
    """Draws one method on ``ax``; returns the heat map's image (for a colour bar) or None."""
    if method == "original_image":
        _show_picture(ax, img)
        return None
    if method in _ONE_SIGNED:
        weight = np.nan_to_num(norm, nan=0.0)
        if method == "masked_image":
            _show_picture(ax, img * (weight[..., None] if img.ndim == 3 else weight))
        else:
            rgb = _to_pixels(img if img.ndim == 3 else img[..., None])[..., :3]
            if rgb.shape[-1] == 1:
                rgb = np.repeat(rgb, 3, axis=-1)
            ax.imshow(np.concatenate([rgb, _to_pixels(weight[..., None] * 255)], axis=-1))
        return None
    _, vmin, vmax = _SIGN_CMAPS[sign]
    colours = _colormap(cmap, sign)
    if method == "heat_map":
        return ax.imshow(norm, cmap=colours, vmin=vmin, vmax=vmax)
    ax.imshow(img.mean(-1) if img.ndim == 3 else img, cmap="gray")  # blended_heat_map
    return ax.imshow(norm, cmap=colours, vmin=vmin, vmax=vmax, alpha=alpha_overlay)


def _new_figure(use_pyplot: bool, fig_size):
    if use_pyplot:
        from matplotlib import pyplot

        return pyplot.figure(figsize=fig_size)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=fig_size)
    FigureCanvasAgg(fig)
    return fig


def _show() -> None:
    from matplotlib import pyplot

    pyplot.show()


def visualize_image_attr(
    attr,
    original_image=None,
    method: str = "heat_map",
    sign: str = "absolute_value",
    plt_fig_axis=None,
    outlier_perc: float = 2,
    cmap=None,
    alpha_overlay: float = 0.5,
    show_colorbar: bool = False,
    title: str | None = None,
    fig_size=(6, 6),
    use_pyplot: bool = True,
):
    """Draws one image attribution in one of Captum's five ways; returns ``(figure, axis)``.

    Args:
      attr: one example's attribution, (H, W, C) or (H, W) (also (C, H, W), a batch of one and
        torch tensors); may be None for ``method="original_image"``.
      original_image: the input picture, same height and width, values in [0, 1] or [0, 255];
        needed by every method but "heat_map".
      method: "heat_map", "blended_heat_map", "original_image", "masked_image" or
        "alpha_scaling" (see the module docstring).
      sign: "absolute_value", "positive", "negative" or "all" ("all" is refused by
        masked_image and alpha_scaling, which show magnitudes).
      plt_fig_axis: a ``(figure, axis)`` to draw on instead of a new figure.
      outlier_perc: percent of the total |attribution|, held by the largest pixels, that
        saturates (`normalize_image_attr`).
      cmap: colour map of the heat map; by default Blues, Greens, Reds, or red-white-green by sign.
      alpha_overlay: the heat map's opacity in "blended_heat_map".
      show_colorbar: a horizontal colour bar under the axis (an empty slot where nothing has
        colours, so plots side by side stay aligned).
      title: the axis title.
      fig_size: size in inches of a new figure.
      use_pyplot: make the figure with pyplot and call ``pyplot.show()``; False returns a plain
        ``matplotlib.figure.Figure`` (Agg canvas) and never imports pyplot.

    Example:
      >>> fig, ax = xattr.viz.visualize_image_attr(attr[0].permute(1, 2, 0), x[0].permute(1, 2, 0),
      ...                                          method="blended_heat_map", sign="all")
    """
    img, norm = _check(attr, original_image, method, sign, outlier_perc)
    if plt_fig_axis is not None:
        fig, ax = plt_fig_axis
        if isinstance(ax, (list, tuple, np.ndarray)):
            ax = np.ravel(np.asarray(ax, dtype=object))[0]
    else:
        fig = _new_figure(use_pyplot, fig_size)
        ax = fig.subplots()
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    heat = _draw(ax, method, sign, img, norm, cmap, alpha_overlay)
    if show_colorbar:
        from mpl_toolkits.axes_grid1 import make_axes_locatable

        bar_ax = make_axes_locatable(ax).append_axes("bottom", size="5%", pad=0.1)
        if heat is not None:
            fig.colorbar(heat, cax=bar_ax, orientation="horizontal")
        else:
            bar_ax.axis("off")
    if title:
        ax.set_title(title)
    if use_pyplot:
        _show()
    return fig, ax


def visualize_image_attr_multiple(
    attr,
    original_image,
    methods: Sequence[str],
    signs: Sequence[str],
    titles: Sequence[str] | None = None,
    fig_size=(8, 6),
    use_pyplot: bool = True,
    **kwargs: Any,
):
    """Draws ``len(methods)`` plots of one attribution side by side, in one row.

    ``methods[i]`` and ``signs[i]`` (and ``titles[i]``) make plot i, as `visualize_image_attr`;
    other keywords (``outlier_perc``, ``cmap``, ``alpha_overlay``, ``show_colorbar``) go to
    every plot. Returns ``(figure, axes)``: a list of axes, or one axis for one method (as
    Captum 0.9). Every plot is checked before the figure is made.

    Example:
      >>> fig, axes = xattr.viz.visualize_image_attr_multiple(attr[0].permute(1, 2, 0), x[0].permute(1, 2, 0),
      ...                                                     ["original_image", "heat_map"], ["all", "positive"])
    """
    methods, signs = list(methods), list(signs)
    if not methods:
        raise ValueError("methods is empty: pass at least one method")
    if len(methods) != len(signs):
        raise ValueError(f"{len(methods)} methods but {len(signs)} signs: pass one sign per method")
    if titles is not None and len(titles) != len(methods):
        raise ValueError(f"{len(titles)} titles for {len(methods)} methods: pass one title per method")
    for method, sign in zip(methods, signs):
        _check(attr, original_image, method, sign, kwargs.get("outlier_perc", 2))
    fig = _new_figure(use_pyplot, fig_size)
    grid = fig.subplots(1, len(methods), squeeze=True)
    axes = grid if len(methods) == 1 else list(grid)
    for i, ax in enumerate([grid] if len(methods) == 1 else axes):
        visualize_image_attr(
            attr,
            original_image,
            method=methods[i],
            sign=signs[i],
            plt_fig_axis=(fig, ax),
            use_pyplot=False,
            title=titles[i] if titles else None,
            **kwargs,
        )
    fig.tight_layout()
    if use_pyplot:
        _show()
    return fig, axes
