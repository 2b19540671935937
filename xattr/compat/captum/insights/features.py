"""Captum Insights' features: how each model input is transformed, given a baseline, and shown.

    ImageFeature("Photo", baseline_transforms=[lambda x: x * 0], input_transforms=[normalize])

A feature describes one positional input of the model. Its ``input_transforms`` turn one
example of the dataset into what the model takes, its ``baseline_transforms`` turn that
transformed example into the attribution baseline (only the first is used, as in Insights; none
gives zeros), and its ``visualization_transform`` turns the original example into what the page
shows. Every transform sees one example without its batch dimension (an image (C, H, W), a
sentence's ids (T,)), as in Insights, except ``visualization_transform``, which gets the example
with a batch dimension of one, (1, ...), as Insights passed it. On the page an `ImageFeature` is
a picture with each method's heatmap over it, a `TextFeature` its words coloured by their
scores, and a `GeneralFeature` a bar chart of its named values.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Union

Transforms = Optional[Union[Callable, List[Callable]]]


def _transforms(value, what: str, name) -> list:
    if value is None:
        return []
    if callable(value):
        return [value]
    if isinstance(value, (list, tuple)) and all(callable(t) for t in value):
        return list(value)
    raise TypeError(f"feature {name!r}: {what} must be a callable, a list of callables, or None; got {value!r}")


class BaseFeature:
    """One model input of an `AttributionVisualizer` (Captum's base; use a subclass).

    Args:
      name: the label shown on the page, e.g. "Photo".
      baseline_transforms: a callable or list of callables applied to the transformed example
        to make its baseline; only the first is used (Insights supported one baseline). None or
        an empty list: a zero baseline.
      input_transforms: callables applied in order to each example to make the model's input.
      visualization_transform: a callable from the original example (1, ...) to what is shown.
    """

    def __init__(self, name: str, baseline_transforms: Transforms, input_transforms: Transforms,
                 visualization_transform: Optional[Callable]) -> None:  # fmt: skip
        if not isinstance(name, str):
            raise TypeError(f"a feature's name must be a str, got {type(name).__name__}")
        if visualization_transform is not None and not callable(visualization_transform):
            raise TypeError(f"feature {name!r}: visualization_transform must be a callable or None, got {visualization_transform!r}")
        self.name = name
        self.baseline_transforms = _transforms(baseline_transforms, "baseline_transforms", name)
        self.input_transforms = _transforms(input_transforms, "input_transforms", name)
        self.visualization_transform = visualization_transform

    @staticmethod
    def visualization_type() -> str:
        raise NotImplementedError("BaseFeature is abstract: use ImageFeature, TextFeature or GeneralFeature")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ImageFeature(BaseFeature):
    """An image input, (N, C, H, W) with C = 1 (grey) or 3 (RGB): shown as the picture (after
    ``visualization_transform``, when given) and each method's heatmap over it."""

    def __init__(self, name: str, baseline_transforms: Transforms, input_transforms: Transforms,
                 visualization_transform: Optional[Callable] = None) -> None:  # fmt: skip
        super().__init__(name, baseline_transforms, input_transforms, visualization_transform)

    @staticmethod
    def visualization_type() -> str:
        return "image"


class TextFeature(BaseFeature):
    """A text input, token ids (N, T): shown as its words, each coloured by its score.

    ``visualization_transform`` turns one example's ids (1, T) into its words (a list of str, at
    most T; None shows the ids). ``input_transforms`` usually map the ids to embeddings (T, D)
    so gradient methods apply; each token's score is then its embedding's attributions summed.
    """

    def __init__(self, name: str, baseline_transforms: Transforms, input_transforms: Transforms,
                 visualization_transform: Optional[Callable]) -> None:  # fmt: skip
        super().__init__(name, baseline_transforms, input_transforms, visualization_transform)

    @staticmethod
    def visualization_type() -> str:
        return "text"


class GeneralFeature(BaseFeature):
    """A row of named values (N, F), one name per column in ``categories``: shown as a table of
    the values and a bar chart of their attributions. No transforms; the baseline is zero."""

    def __init__(self, name: str, categories: Sequence[str]) -> None:
        super().__init__(name, None, None, None)
        if isinstance(categories, str) or not isinstance(categories, Sequence):
            raise TypeError(f"feature {name!r}: categories must be a list of names, got {categories!r}")
        self.categories = [str(c) for c in categories]

    @staticmethod
    def visualization_type() -> str:
        return "general"
