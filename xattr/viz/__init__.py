"""Visualising attributions: image heatmaps written as PNG files (needs matplotlib).

matplotlib is imported lazily, when a figure is drawn, and only through the Agg canvas.
"""

from .heatmap import draw, normalize, save_grid, save_heatmap, to_image, to_map

__all__ = ["draw", "normalize", "save_grid", "save_heatmap", "to_image", "to_map"]
