"""Visualising attributions: image heatmaps written as PNG files (needs matplotlib), and HTML
word-importance tables for text (``visualize_text``, no dependency).

matplotlib is imported lazily, when a figure is drawn, and only through the Agg canvas.
"""

from .heatmap import draw, normalize, save_grid, save_heatmap, to_image, to_map
from .text import TextVisualization, VisualizationDataRecord, visualize_text

__all__ = [
    "TextVisualization",
    "VisualizationDataRecord",
    "draw",
    "normalize",
    "save_grid",
    "save_heatmap",
    "to_image",
    "to_map",
    "visualize_text",
]
