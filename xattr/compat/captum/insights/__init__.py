"""Captum Insights' API (removed from Captum in 0.9) over xattr's offline explorer page.

    from xattr.compat.captum.insights import AttributionVisualizer, Batch         # was: captum.insights
    from xattr.compat.captum.insights.attr_vis.features import ImageFeature       # was: captum.insights.attr_vis.features

The same constructors; ``render()`` and ``serve()`` write one static HTML page instead of a
widget or a Flask server (docs/insights.md, "From Captum Insights").
"""

from .features import BaseFeature, GeneralFeature, ImageFeature, TextFeature
from .visualizer import AttributionVisualizer, Batch

__all__ = ["AttributionVisualizer", "BaseFeature", "Batch", "GeneralFeature", "ImageFeature", "TextFeature"]
