"""Visualising attributions: image heatmaps written as PNG files (needs matplotlib), Captum's
``visualize_image_attr`` and ``visualize_timeseries_attr`` figures, mask borders and labels, HTML
word-importance tables for text (``visualize_text``, no dependency), and the dataset-level plots
(class means, clusters, token statistics). docs/viz.md shows them on one page.

matplotlib is imported lazily, when a figure is drawn, through the Agg canvas; pyplot only where
``use_pyplot=True`` (the default of Captum's plots, as Captum's) asks for it.
"""

from .heatmap import draw, normalize, save_grid, save_heatmap, to_image, to_map
from .image import normalize_image_attr, visualize_image_attr, visualize_image_attr_multiple
from .text import TextVisualization, VisualizationDataRecord, visualize_text
from .timeseries import visualize_timeseries_attr
from .masks import draw_mask_border, draw_mask_legend
from .dataset import plot_class_means, plot_clusters, plot_importance, plot_spectrum
from .tokens import plot_token_statistics

__all__ = [
    "TextVisualization",
    "VisualizationDataRecord",
    "draw",
    "draw_mask_border",
    "draw_mask_legend",
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
    "visualize_timeseries_attr",
]
