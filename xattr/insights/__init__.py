"""Insights: an interactive explorer of a model's attributions over a set of examples.

``xattr.insights.explore(model, inputs, labels=..., classes=...)`` computes every method's
attributions for every example (batched, one call per method) and writes one static,
self-contained HTML page to browse them: filter by predicted and true class, show the
misclassified examples, open one to compare the methods, or see each class's mean
attribution per method. No server and no network; see docs/insights.md.
"""

from .explorer import default_methods, explore

__all__ = ["default_methods", "explore"]
