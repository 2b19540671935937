"""Image heatmaps of attributions, written as PNG files next to their inputs.

matplotlib is imported only when a figure is drawn, and only its object-oriented API with the
Agg canvas is used: nothing here touches pyplot, the global backend or any open window, so it
is safe in scripts, tests and servers.

Colour maps:
  signed  attributions keep their sign: red pushes the explained output up, blue pushes it
          down, white is zero ("RdBu_r", symmetric around 0).
  abs     magnitudes only (saliency, SmoothGrad-squared, VarGrad): white is zero, dark red large.
  auto    "abs" when every value is >= 0, else "signed".
Each map is divided by a high percentile of its |values| (99.5 by default), so one outlier
pixel does not wash out the rest; values beyond it saturate.

Non-finite values (NaN, +-inf) are left out of the sign and of that percentile, so the rest of
the map is drawn as if they were absent; they are painted in neutral grey (`NONFINITE_COLOR`,
named under the colour bar), a colour neither map uses.

Attributions are channel-first, (C, H, W), as torch gives them; a channel-last (H, W, C) array
(as Captum's tutorials build for ``visualize_image_attr``) is recognised too, see `to_map`.

A map smaller than its input (a layer attribution such as a 4x4 Grad-CAM of a 16x16 image) is
resized to the input's height and width by bilinear interpolation (``align_corners=False``, as
``xattr.upsample(attr, size, mode="bilinear")``) before it is drawn, so it lines up with the
input and its outline; a map larger than its input is an error.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

SIGNED_CMAP = "RdBu_r"
ABS_CMAP = "Reds"
INPUT_CMAP = "gray_r"
NONFINITE_COLOR = "0.6"  # grey: pixels whose attribution is NaN or +-inf


def _numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()  # float64 is exact for every real dtype (bf16 included)
    return np.asarray(a, dtype=np.float64)


CHANNEL_SIZES = (1, 3, 4)  # sizes a channel dim of an image attribution is taken to have


def to_map(attr, size=None) -> np.ndarray:
    """One example's attribution (C, H, W), (H, W, C) or (H, W) -> an (H, W) map, summing channels.

    A 3-d array is channel-first, (C, H, W), unless it reads as channel-last:

    * without ``size``: channel-last when its last dim is 1, 3 or 4 and its first dim is not
      (``(32, 32, 3)`` is channel-last, ``(3, 32, 32)`` and ``(1, 4, 4)`` channel-first);
    * with ``size``, the (H, W) of the image it is drawn over: the layout whose (H, W) equals
      ``size`` is used. When only the channel-last reading matches but the array does not read
      as channel-last by the rule above (``(4, 4, 1)`` over a 4x4 image, where both ends could
      be channels, or ``(8, 8, 5)`` over an 8x8 one), that is a ValueError asking for the
      channel-first array. A map matching
      neither (a layer-sized map) is channel-first, or channel-last where the rule above says
      so and that reading fits inside the image with the nearer aspect ratio.

    Example:
      >>> m = xattr.viz.to_map(attr[0])         # (H, W), channels summed
    """
    a = _numpy(attr)
    if a.ndim == 3:
        a = a.sum(-1) if _channel_last(a.shape, size) else a.sum(0)
    if a.ndim != 2:
        raise ValueError(f"an image attribution must have shape (C, H, W), (H, W, C) or (H, W), got {a.shape}")
    return a


def _channel_last(shape, size) -> bool:
    """Whether a 3-d attribution of ``shape`` is (H, W, C) rather than (C, H, W); see `to_map`."""
    first, _, last = shape
    by_shape = last in CHANNEL_SIZES and first not in CHANNEL_SIZES
    size = None if size is None else tuple(int(n) for n in size)
    if size is None or 0 in shape or 0 in size:
        return by_shape
    first_hw, last_hw = tuple(shape[1:]), tuple(shape[:2])
    if first_hw == size:
        return False
    if last_hw == size:
        if not by_shape:
            raise ValueError(
                f"the attribution's shape {tuple(shape)} could be (C, H, W) or (H, W, C), and only (H, W, C) "
                f"matches its {size[0]}x{size[1]} image: pass it channel-first, shape {(last, *last_hw)} "
                "(np.moveaxis(attr, -1, 0), or attr.permute(2, 0, 1) for a tensor)"
            )
        return True
    if not by_shape or last_hw[0] > size[0] or last_hw[1] > size[1]:
        return False
    if first_hw[0] > size[0] or first_hw[1] > size[1]:
        return True
    target = np.log(size[0] / size[1])
    return abs(np.log(last_hw[0] / last_hw[1]) - target) < abs(np.log(first_hw[0] / first_hw[1]) - target)


def to_image(x) -> np.ndarray:
    """One input image (1, H, W), (3, H, W), (H, W), or channel-last (H, W, 1), (H, W, 3) as Captum's
    tutorials build them -> (H, W) or (H, W, 3) scaled to [0, 1].

    Example:
      >>> img = xattr.viz.to_image(x[0])        # (H, W) or (H, W, 3), in [0, 1]
    """
    a = _numpy(x)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    elif a.ndim == 3 and a.shape[0] == 3:
        a = a.transpose(1, 2, 0)
    elif a.ndim == 3 and a.shape[-1] in (1, 3):  # channel-last (numpy, matplotlib, Captum's tutorials)
        a = a[..., 0] if a.shape[-1] == 1 else a
    elif a.ndim != 2:
        raise ValueError(f"an input image must have shape (1, H, W), (3, H, W), (H, W), (H, W, 1) or (H, W, 3), got {a.shape}")
    finite = a[np.isfinite(a)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    return (a - lo) / (hi - lo) if hi > lo else np.where(np.isfinite(a), 0.0, np.nan)


_CAPTUM_SIGNS = {"all": "signed", "absolute_value": "abs"}


def resolve_sign(a: np.ndarray, sign: str) -> str:
    """"auto" -> "abs" when every finite value is >= 0, else "signed"; other signs are checked.
    Captum's names for these two, "all" and "absolute_value", are accepted too; its "positive" and
    "negative" are drawn by `visualize_image_attr`."""
    sign = _CAPTUM_SIGNS.get(sign, sign)
    if sign not in ("auto", "signed", "abs"):
        hint = " (Captum's 'positive' and 'negative' maps: xattr.viz.visualize_image_attr)" if sign in ("positive", "negative") else ""
        raise ValueError(f"sign must be 'auto', 'signed' or 'abs' (or Captum's 'all', 'absolute_value'), got {sign!r}{hint}")
    if sign == "auto":
        return "abs" if (a[np.isfinite(a)] >= 0).all() else "signed"
    return sign


def _percentile_scale(mags: np.ndarray, percentile: float) -> float:
    """The ``percentile`` of the finite entries of ``mags`` (>= 0), or 1.0 when that is not > 0."""
    mags = mags[np.isfinite(mags)]
    scale = float(np.percentile(mags, percentile)) if mags.size else 0.0
    return scale if scale > 0 else 1.0


def normalize(a: np.ndarray, sign: str = "auto", *, percentile: float = 99.5, scale: float | None = None):
    """Scales a map to [-1, 1] ("signed") or [0, 1] ("abs"); returns (values, sign, scale).

    Non-finite entries (NaN, +-inf) take no part in the sign or the percentile scale and come
    back as NaN, so one of them does not change how the finite rest is drawn.

    Example:
      >>> values, sign, scale = xattr.viz.normalize(attr[0, 0].numpy())   # values in [-1, 1] or [0, 1]
    """
    a = np.asarray(a, dtype=np.float64)
    sign = resolve_sign(a, sign)
    v = np.abs(a) if sign == "abs" else a
    scale = _percentile_scale(np.abs(v), percentile) if scale is None else scale
    scale = scale if scale > 0 else 1.0
    lo = 0.0 if sign == "abs" else -1.0
    return np.where(np.isfinite(v), np.clip(v / scale, lo, 1.0), np.nan), sign, scale


def _cmap(name: str):
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad=NONFINITE_COLOR)


def draw(ax, attr, image=None, *, sign: str = "auto", percentile: float = 99.5, scale: float | None = None, outline: bool = True):
    """Draws one example's attribution on a matplotlib axis; returns the sign map used.

    With ``image`` and ``outline``, the input's shape is traced as a thin grey contour. A map
    smaller than ``image`` (a layer attribution) is scaled and signed at its own size, then
    resized to the image's height and width by bilinear interpolation (as
    ``xattr.upsample(attr, size, mode="bilinear")``; non-finite pixels stay grey blocks), so
    map and outline line up. A map larger than ``image`` raises ValueError. Non-finite
    values are drawn in `NONFINITE_COLOR`.

    Example:
      >>> fig, ax = plt.subplots()
      >>> sign = xattr.viz.draw(ax, attr[0], x[0])       # "signed" or "abs": the colour map used
    """
    img = to_image(image) if image is not None else None
    values, sign, _ = normalize(to_map(attr, img.shape[:2] if img is not None else None), sign, percentile=percentile, scale=scale)
    if img is not None and values.shape != img.shape[:2]:
        if values.shape[0] > img.shape[0] or values.shape[1] > img.shape[1]:
            raise ValueError(
                f"the attribution map {values.shape} is larger than its input image {img.shape[:2]}: "
                "pass the matching input, or resize the attribution first"
            )
        values = _resize_bilinear(values, img.shape[:2])
    if sign == "signed":
        ax.imshow(values, cmap=_cmap(SIGNED_CMAP), vmin=-1, vmax=1, interpolation="nearest")
    else:
        ax.imshow(values, cmap=_cmap(ABS_CMAP), vmin=0, vmax=1, interpolation="nearest")
    if img is not None and outline:
        gray = img.mean(-1) if img.ndim == 3 else img
        if np.nanmin(gray) < 0.5 < np.nanmax(gray):
            k = max(1, 64 // max(gray.shape))  # small images: trace a smooth, upsampled outline
            ys, xs = (np.linspace(0, n - 1, k * n) for n in gray.shape)
            ax.contour(xs, ys, _upsample(gray, k), levels=[0.5], colors="0.3", linewidths=0.7, alpha=0.75)
    _bare(ax)
    return sign


def _resize_bilinear(a: np.ndarray, shape) -> np.ndarray:
    """Resizes a 2D map to ``shape``: F.interpolate(mode="bilinear", align_corners=False) in numpy.

    NaN pixels are resized as nearest-neighbour blocks (F.interpolate(mode="nearest")), and
    weigh as 0 in the bilinear blend of their neighbours, so they neither grow nor vanish.
    """
    bad = ~np.isfinite(a)
    a = np.where(bad, 0.0, a)
    for axis, (n_in, n_out) in enumerate(zip(a.shape, shape)):
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5  # np.interp clamps the ends as torch does
        a = np.apply_along_axis(lambda r: np.interp(src, np.arange(n_in), r), axis, a)
        near = np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(int), n_in - 1)
        bad = np.take(bad, near, axis=axis)
    return np.where(bad, np.nan, a)


def _upsample(a: np.ndarray, k: int) -> np.ndarray:
    """Bilinear k-fold upsampling of a 2D array (numpy only)."""
    if k == 1:
        return a
    ys, xs = (np.linspace(0, n - 1, k * n) for n in a.shape)
    rows = np.stack([np.interp(xs, np.arange(a.shape[1]), r) for r in a])
    return np.stack([np.interp(ys, np.arange(a.shape[0]), c) for c in rows.T]).T


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("0.8")


def _batch(a, name: str) -> list:
    if isinstance(a, (list, tuple)):
        return list(a)
    arr = a if hasattr(a, "shape") else np.asarray(a)
    if len(arr.shape) < 3:
        raise ValueError(f"{name} must be batched, shape (B, C, H, W) or (B, H, W); got {tuple(arr.shape)}")
    return [arr[i] for i in range(arr.shape[0])]


def save_grid(
    path,
    images,
    columns: Mapping[str, object],
    *,
    signs: Mapping[str, str] | str = "auto",
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    shared_scale: str = "cell",
    highlight: Sequence[int] | None = None,
    examples_as: str = "rows",
    input_title: str = "input",
    cell: float = 1.15,
    dpi: int = 150,
) -> str:
    """Writes a grid PNG: one row per example, the input first, then one column per attribution.

    Args:
      path: PNG file to write (parent folders are created).
      images: inputs (B, C, H, W) or (B, H, W), or None for no input column.
      columns: column title -> attributions (B, C, H, W) or (B, H, W) for the same B examples.
      signs: "auto" | "signed" | "abs" for every column, or a mapping column title -> sign.
      row_labels: one label per example.
      title: figure title.
      shared_scale: "cell" scales each map by itself; "row" shares one scale across an
        example's maps, so they are comparable (e.g. the classes of one example).
      highlight: per example, the index of one attribution column to frame (e.g. the
        predicted class), or None.
      examples_as: "rows" (default) or "columns" (a strip: input above, attributions below).
      cell: size of one cell in inches.

    Returns:
      the path written, as a string.

    Example:
      >>> f = xattr.target(model, 3)
      >>> columns = {"IG": xattr.integrated_gradients(f)(x), "saliency": xattr.saliency(f)(x)}
      >>> xattr.viz.save_grid("grid.png", x, columns)        # returns the path
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if shared_scale not in ("cell", "row"):
        raise ValueError(f"shared_scale must be 'cell' or 'row', got {shared_scale!r}")
    if examples_as not in ("rows", "columns"):
        raise ValueError(f"examples_as must be 'rows' or 'columns', got {examples_as!r}")
    if images is None and not columns:
        raise ValueError("nothing to draw: pass images, or at least one attribution in columns")
    cols = {name: _batch(a, f"columns[{name!r}]") for name, a in columns.items()}
    imgs = _batch(images, "images") if images is not None else None
    n_ex = len(next(iter(cols.values()))) if cols else len(imgs)
    for name, a in cols.items():
        if len(a) != n_ex:
            raise ValueError(f"column {name!r} has {len(a)} examples but the others have {n_ex}")
    if imgs is not None and len(imgs) != n_ex:
        raise ValueError(f"images has {len(imgs)} examples but the columns have {n_ex}: give one attribution per image")
    if row_labels is not None and len(row_labels) != n_ex:
        raise ValueError(f"{len(row_labels)} row_labels for {n_ex} examples")
    sign_of = (lambda n: signs) if isinstance(signs, str) else (lambda n: signs.get(n, "auto"))
    offset = 1 if imgs is not None else 0
    n_panels = offset + len(cols)
    titles = ([input_title] if imgs is not None else []) + list(cols)
    by_rows = examples_as == "rows"
    n_rows, n_cols = (n_ex, n_panels) if by_rows else (n_panels, n_ex)
    side_labels = row_labels if by_rows else titles
    top_labels = titles if by_rows else row_labels

    label_w = (0.55 if side_labels else 0.0) if by_rows else 0.95
    lines = max((str(t).count("\n") + 1 for t in top_labels or []), default=0)
    head = (0.45 if title else 0.12) + 0.16 * lines
    nonfinite = any(not np.isfinite(to_map(m)).all() for a in cols.values() for m in a)
    foot = 0.6 + 0.14 * nonfinite  # room for the note on grey pixels
    fig = Figure(figsize=(label_w + cell * n_cols + 0.05, head + foot + cell * n_rows), dpi=dpi)
    FigureCanvasAgg(fig)
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=label_w / width, right=1 - 0.05 / width, top=1 - head / height, bottom=foot / height, wspace=0.06, hspace=0.06)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    at = (lambda e, p: axes[e, p]) if by_rows else (lambda e, p: axes[p, e])
    used = set()
    for e in range(n_ex):
        scales = {}
        if shared_scale == "row" and cols:
            size = to_image(imgs[e]).shape[:2] if imgs is not None else None
            mags = np.concatenate([np.abs(to_map(a[e], size)).ravel() for a in cols.values()])
            scales = dict.fromkeys(cols, _percentile_scale(mags, 99.5))
        if imgs is not None:
            ax = at(e, 0)
            img = to_image(imgs[e])
            ax.imshow(img, cmap=INPUT_CMAP if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            _bare(ax)
        for c, (name, a) in enumerate(cols.items()):
            ax = at(e, offset + c)
            used.add(draw(ax, a[e], imgs[e] if imgs is not None else None, sign=sign_of(name), scale=scales.get(name)))
            if highlight is not None and highlight[e] == c:
                for spine in ax.spines.values():
                    spine.set_color("black")
                    spine.set_linewidth(2.0)
    for i, text in enumerate(side_labels or []):
        axes[i, 0].set_ylabel(text, fontsize=8.5, rotation=0, ha="right", va="center", labelpad=5)
    for j, text in enumerate(top_labels or []):
        axes[0, j].set_title(text, fontsize=8.5)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.12 / height, va="top")
    _legend(fig, used | ({"nonfinite"} if nonfinite else set()), foot / height, width)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return str(path)


def _legend(fig, used: set, foot: float, width: float) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bars = [s for s in ("signed", "abs") if s in used]
    for i, s in enumerate(bars):
        w = min(0.34, 2.6 / width)  # at most 2.6 inches wide
        x0 = 0.5 + (i - len(bars) / 2) * (w + 0.06) + 0.03
        cax = fig.add_axes([x0, foot * 0.5, w, foot * 0.14])
        norm = Normalize(-1, 1) if s == "signed" else Normalize(0, 1)
        bar = fig.colorbar(ScalarMappable(norm, SIGNED_CMAP if s == "signed" else ABS_CMAP), cax=cax, orientation="horizontal")
        bar.set_ticks([-1, 0, 1] if s == "signed" else [0, 1])
        bar.set_ticklabels(["against", "0", "for"] if s == "signed" else ["0", "large"])
        bar.ax.tick_params(labelsize=7, length=2)
        bar.outline.set_linewidth(0.4)
        cax.set_title("signed attribution" if s == "signed" else "|attribution|", fontsize=7.5, pad=2)
    if "nonfinite" in used:
        fig.text(0.5, foot * 0.05, "grey: NaN or infinite attribution", ha="center", va="bottom", fontsize=7, color="0.35")


def save_heatmap(path, attr, images=None, *, sign: str = "auto", name: str = "attribution", labels=None, title=None, **kw) -> str:
    """Writes one method's heatmaps next to their inputs: a column per example, input above.

    ``attr`` is batched, (B, C, H, W) or (B, H, W); for one example pass ``attr[None]``.
    Other keywords go to `save_grid`.

    Example:
      >>> attr = xattr.integrated_gradients(xattr.target(model, 3))(x)
      >>> xattr.viz.save_heatmap("ig.png", attr, x)          # returns the path
    """
    kw.setdefault("examples_as", "columns")
    return save_grid(path, images, {name: attr}, signs=sign, row_labels=labels, title=title, **kw)
