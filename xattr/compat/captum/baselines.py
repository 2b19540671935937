"""Captum's ``ProductBaselines``: a baseline drawn at random, one candidate per feature.

    baselines = ProductBaselines({"name": ["Alex", "Sam"], ("city", "country"): [("Oslo", "Norway"), ("Lima", "Peru")]})
    TextTemplateInput("{name} lives in {city}, {country}", values, baselines=baselines)

Each call picks one candidate per entry, independently (a draw from the product of the
candidate lists). A tuple key gives several template fields one joint candidate (a tuple of
values). A list of lists gives a list, a dict a dict keyed by field. As in Captum the draws
use Python's ``random`` module (``random.seed`` fixes them, and the same seed gives Captum's
draws); ``rng=random.Random(seed)`` gives a private stream instead.
"""

from __future__ import annotations

import random
from typing import Any

from .llm_inputs import keyed_list

__all__ = ["ProductBaselines"]


class ProductBaselines:
    """``ProductBaselines(baseline_values, *, rng=None)``; calling it (or ``sample()``) draws one
    baseline. See the module docstring."""

    def __init__(self, baseline_values, *, rng: random.Random | None = None) -> None:
        self.dict_keys, values = keyed_list(baseline_values, "baseline_values must be a list of candidate lists or a dict of them")
        for i, candidates in enumerate(values):
            if isinstance(candidates, (str, bytes)) or not hasattr(candidates, "__len__") or len(candidates) == 0:
                key = self.dict_keys[i] if self.dict_keys else i
                raise ValueError(f"baseline_values[{key!r}] must be a non-empty list of candidates, got {candidates!r}")
        self.baseline_values = values
        self.rng = rng

    def sample(self) -> list | dict[str, Any]:
        choice = (self.rng or random).choice
        drawn = [choice(candidates) for candidates in self.baseline_values]
        if not self.dict_keys:
            return drawn
        out: dict[str, Any] = {}
        for key, value in zip(self.dict_keys, drawn):
            if isinstance(key, tuple):
                if not isinstance(value, (tuple, list)) or len(value) != len(key):
                    raise ValueError(f"the candidates of the joint key {key!r} must be tuples of {len(key)} values, "
                                     f"got {value!r}")
                out.update(zip(key, value))
            else:
                out[key] = value
        return out

    def __call__(self) -> list | dict[str, Any]:
        return self.sample()
