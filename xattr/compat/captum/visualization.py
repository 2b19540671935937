"""Captum's ``captum.attr.visualization`` text helpers: ``VisualizationDataRecord`` and ``visualize_text``.

    from xattr.compat.captum import visualization as viz    # was: from captum.attr import visualization as viz
    html = viz.visualize_text([viz.VisualizationDataRecord(...)])

Both are ``xattr.viz.text``'s (see there for the differences from Captum: escaped words, an
HTML string returned, IPython optional). Captum's image plots (``visualize_image_attr`` and
the rest) are not here: ``xattr.viz`` draws image heatmaps with its own functions.
"""

from xattr.viz.text import VisualizationDataRecord, visualize_text

__all__ = ["VisualizationDataRecord", "visualize_text"]
