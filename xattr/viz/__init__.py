"""Visualising attributions: image heatmaps written as PNG files (needs matplotlib), Captum's
``visualize_image_attr`` figures, and HTML word-importance tables for text (``visualize_text``,
no dependency).

matplotlib is imported lazily, when a figure is drawn, through the Agg canvas; pyplot only where
``visualize_image_attr(..., use_pyplot=True)`` (its default, as Captum's) asks for it.
"""

from .heatmap import draw, normalize, save_grid, save_heatmap, to_image, to_map
from .image import normalize_image_attr, visualize_image_attr, visualize_image_attr_multiple
from .text import TextVisualization, VisualizationDataRecord, visualize_text
from .dataset import plot_class_means, plot_clusters, plot_importance, plot_spectrum
from .tokens import plot_token_statistics

__all__ = [
    "TextVisualization",
    "VisualizationDataRecord",
    "draw",
    "normalize",
    "normalize_image_attr",
    "plot_class_means",
    "plot_clusters",
    "plot_importance",
    "plot_spectrum",
    "plot_token_statistics",
    "save_grid",
    "save_heatmap",
    "to_image",
    "to_map",
    "visualize_image_attr",
    "visualize_image_attr_multiple",
    "visualize_text",
]
