"""PNG pictures of inputs and attribution heatmaps, as ``data:`` URIs, with numpy and zlib only.

The explorer page embeds every picture, so it is drawn here without matplotlib: the maps are
scaled by `xattr.viz.normalize` (the same percentile scale as the PNG heatmaps of `xattr.viz`)
and coloured by linear interpolation between the anchor colours of the diverging red/blue map
("RdBu_r", signed attributions) and the white-to-red one ("Reds", magnitudes), the colour maps
`xattr.viz` draws with. Pictures keep the input's own height and width (8x8 digits give 8x8
PNGs); the page scales them up without smoothing. The encoder writes no timestamp or other
metadata, so the same arrays always give the same bytes.
"""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

from ..viz.heatmap import normalize, to_image, to_map

# anchor colours, evenly spaced over the map's range: -1..1 (signed), 0..1 (abs)
SIGNED_ANCHORS = ("#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7",
                  "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f")  # fmt: skip
ABS_ANCHORS = ("#fff5f0", "#fee0d2", "#fcbba1", "#fc9272", "#fb6a4a", "#ef3b2c", "#cb181d", "#a50f15", "#67000d")
NONFINITE_RGB = (0.6, 0.6, 0.6)  # the grey of xattr.viz's NONFINITE_COLOR


def _rgb(hex_colours) -> np.ndarray:
    return np.array([[int(h[i : i + 2], 16) / 255.0 for i in (1, 3, 5)] for h in hex_colours])


def colour(values: np.ndarray, sign: str) -> np.ndarray:
    """Scaled values ([-1, 1] for "signed", [0, 1] for "abs"; NaN allowed) -> RGB in [0, 1], shape (..., 3)."""
    anchors = _rgb(SIGNED_ANCHORS if sign == "signed" else ABS_ANCHORS)
    v = np.asarray(values, dtype=np.float64)
    t = (v + 1.0) / 2.0 if sign == "signed" else v
    pos = np.clip(np.nan_to_num(t, nan=0.0), 0.0, 1.0) * (len(anchors) - 1)
    lo = np.minimum(np.floor(pos).astype(int), len(anchors) - 2)
    w = (pos - lo)[..., None]
    out = anchors[lo] * (1.0 - w) + anchors[lo + 1] * w
    return np.where(np.isfinite(v)[..., None], out, np.array(NONFINITE_RGB))


def encode_png(pixels: np.ndarray) -> bytes:
    """(H, W) grey or (H, W, 3) RGB values in [0, 1] -> the bytes of an 8-bit PNG."""
    a = np.clip(np.nan_to_num(np.asarray(pixels, dtype=np.float64), nan=0.5), 0.0, 1.0)
    a = np.round(a * 255.0).astype(np.uint8)
    height, width = a.shape[:2]
    colour_type = 0 if a.ndim == 2 else 2
    rows = a.reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _display(x) -> np.ndarray:
    """One input image as shown: (H, W) grey, dark ink on white as xattr.viz draws it, or (H, W, 3)."""
    img = to_image(x)
    return 1.0 - img if img.ndim == 2 else img


def input_png(x) -> str:
    """One input image, (C, H, W) or (H, W), as a PNG data URI of its own size."""
    return data_uri(encode_png(_display(x)))


def heatmap_png(attr, x) -> str:
    """One example's attribution drawn over its input: the signed (or magnitude) colour map of
    the channel-summed map, darkened where the input is dark, so the input's shape shows through.

    The map is scaled per example and method (`xattr.viz.normalize`, sign "auto": all-positive
    maps such as saliency take the magnitude map); non-finite values are grey.
    """
    shown = _display(x)
    grey = shown.mean(-1) if shown.ndim == 3 else shown
    values, sign, _ = normalize(to_map(attr, grey.shape), "auto")
    if values.shape != grey.shape:
        raise ValueError(f"an attribution map {values.shape} does not match its {grey.shape[0]}x{grey.shape[1]} image")
    rgb = colour(values, sign) * (0.6 + 0.4 * np.nan_to_num(grey, nan=1.0))[..., None]
    return data_uri(encode_png(rgb))

