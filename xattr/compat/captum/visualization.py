"""Captum's ``captum.attr.visualization``: the image, time-series and text plots and their helpers.

    from xattr.compat.captum import visualization as viz    # was: from captum.attr import visualization as viz
    fig, ax = viz.visualize_image_attr(attr_hwc, image_hwc, method="blended_heat_map", sign="all")
    fig, axes = viz.visualize_image_attr_multiple(attr_hwc, image_hwc, ["original_image", "heat_map"],
                                                  ["all", "positive"])
    fig, axes = viz.visualize_timeseries_attr(attr_nc, data_nc, method="colored_graph", sign="all")
    html = viz.visualize_text([viz.VisualizationDataRecord(...)])

``visualize_image_attr`` and ``visualize_image_attr_multiple`` are ``xattr.viz.image``'s: Captum
0.9's arguments, normalisation (equal numbers, see ``normalize_image_attr``), colour maps and
return values; they also take torch tensors and channel-first arrays, draw
``visualize_image_attr(None, image, method="original_image")``, and raise ValueError for bad
arguments before making a figure (see there for every difference). ``visualize_timeseries_attr``
is ``xattr.viz.timeseries``'s: Captum's three methods ("overlay_individual",
"overlay_combined", "colored_graph"), signs, scale and artists, working with matplotlib 3.9+
(where Captum 0.9's fails on the removed ``matplotlib.cm.get_cmap``) and without pyplot under
``use_pyplot=False``. ``draw_mask_border`` and ``draw_mask_legend`` (Captum 0.8+) are
``xattr.viz.masks``'s. ``VisualizationDataRecord``, ``visualize_text`` and the HTML helpers
``format_classname``, ``format_special_tokens``, ``format_tooltip`` and
``format_word_importances`` are ``xattr.viz.text``'s (escaped words, an HTML string returned,
IPython optional). The enums ``ImageVisualizationMethod``, ``TimeseriesVisualizationMethod`` and
``VisualizeSign`` have Captum's members and values.
"""

from xattr.viz.image import (
    ImageVisualizationMethod,
    VisualizeSign,
    normalize_image_attr,
    visualize_image_attr,
    visualize_image_attr_multiple,
)
from xattr.viz.masks import draw_mask_border, draw_mask_legend
from xattr.viz.text import (
    VisualizationDataRecord,
    format_classname,
    format_special_tokens,
    format_tooltip,
    format_word_importances,
    visualize_text,
)
from xattr.viz.timeseries import TimeseriesVisualizationMethod, visualize_timeseries_attr

__all__ = [
    "ImageVisualizationMethod",
    "TimeseriesVisualizationMethod",
    "VisualizationDataRecord",
    "VisualizeSign",
    "draw_mask_border",
    "draw_mask_legend",
    "format_classname",
    "format_special_tokens",
    "format_tooltip",
    "format_word_importances",
    "normalize_image_attr",
    "visualize_image_attr",
    "visualize_image_attr_multiple",
    "visualize_text",
    "visualize_timeseries_attr",
]
