"""Captum's ``captum.attr.visualization``: the image plots and the text helpers.

    from xattr.compat.captum import visualization as viz    # was: from captum.attr import visualization as viz
    fig, ax = viz.visualize_image_attr(attr_hwc, image_hwc, method="blended_heat_map", sign="all")
    fig, axes = viz.visualize_image_attr_multiple(attr_hwc, image_hwc, ["original_image", "heat_map"],
                                                  ["all", "positive"])
    html = viz.visualize_text([viz.VisualizationDataRecord(...)])

``visualize_image_attr`` and ``visualize_image_attr_multiple`` are ``xattr.viz.image``'s: Captum
0.9's arguments, normalisation (equal numbers, see ``normalize_image_attr``), colour maps and
return values; they also take torch tensors and channel-first arrays, draw
``visualize_image_attr(None, image, method="original_image")``, and raise ValueError for bad
arguments before making a figure (see there for every difference). ``VisualizationDataRecord``
and ``visualize_text`` are ``xattr.viz.text``'s (escaped words, an HTML string returned, IPython
optional). Captum's ``visualize_timeseries_attr`` is not here.
"""

from xattr.viz.image import normalize_image_attr, visualize_image_attr, visualize_image_attr_multiple
from xattr.viz.text import VisualizationDataRecord, visualize_text

__all__ = [
    "VisualizationDataRecord",
    "normalize_image_attr",
    "visualize_image_attr",
    "visualize_image_attr_multiple",
    "visualize_text",
]
