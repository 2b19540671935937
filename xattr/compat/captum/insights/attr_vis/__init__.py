"""``captum.insights.attr_vis``'s names: `AttributionVisualizer` and `Batch`."""

from ..visualizer import AttributionVisualizer, Batch

__all__ = ["AttributionVisualizer", "Batch"]
