"""``captum.insights.attr_vis.features``' names (also ``captum.insights.features`` in older Captum)."""

from ..features import BaseFeature, GeneralFeature, ImageFeature, TextFeature

__all__ = ["BaseFeature", "GeneralFeature", "ImageFeature", "TextFeature"]
