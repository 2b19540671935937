"""Captum's summarizers: running statistics of attributions gathered one update at a time, for a
whole dataset that never sits in memory at once.

    summ = Summarizer([Mean(), StdDev(order=1), Min(), Max()])
    for x in loader:
        summ.update(ig.attribute(x, target=0).mean(0))   # one update is one observation
    summ.summary                                          # {"mean": ..., "sample_std_dev": ..., ...}

The statistics are elementwise over the observations' shape. ``Count`` is the number of updates,
``Mean`` the running mean, ``MSE`` the running sum of squared deviations from the mean, ``Var(order)``
that sum over ``count - order`` (``order=1`` is the unbiased sample variance; ``0`` when there are
no more than ``order`` observations), ``StdDev(order)`` its square root, and ``Min``, ``Max``, ``Sum``
fold each update into the result with ``torch.min``, ``torch.max``, ``torch.add`` (or the function
given). Mean and MSE follow Welford's recurrence, so a stream whose mean is large next to its spread
keeps its variance (the naive ``E[x^2] - E[x]^2`` cancels it away); batches of observations are
merged with Chan et al.'s pairwise formula. Stats a stat needs are added and updated first
(``StdDev`` -> ``Var`` -> ``MSE`` -> ``Mean`` -> ``Count``), and only the stats asked for are shown.

``Summarizer.update`` takes a tensor, a float, or a tuple of them (one running summary per element;
``summary`` is then a list of dicts). ``ClassSummarizer.update(x, labels)`` takes a batch: example
``i`` of every tensor is one observation, filed under ``labels[i]`` (or under ``labels`` for all,
when it is a single label) and in the overall summary.

Dtypes are Captum's: ``Mean`` and ``MSE`` are in the input's floating dtype (float64 for integer
inputs), ``Var`` and ``StdDev`` in float64, ``Min``/``Max``/``Sum`` in the input's dtype, ``Count`` a
Python int. Where this module differs from Captum 0.9, on purpose:

* tensor labels are keyed by their Python values (``labels=torch.tensor([0, 1, 0])`` gives classes
  ``0`` and ``1``; Captum keys each element tensor by identity, one class per example);
* ``ClassSummarizer`` adds a batch's examples by class in one merge rather than one by one, which
  changes the last bits of float results;
* updates whose shape differs from the first one's, a tuple after a single tensor (or the reverse),
  or a tuple of another length raise ``ValueError`` (Captum asserts, broadcasts, or starts a fresh
  summary for the new tuple element);
* ``StdDev(order=k)`` for ``k > 1`` is named ``"std_dev(k)"`` (Captum's is ``"std_dev" + "k)"``),
  ``Var(order=1)`` after one update is float64 zeros (Captum gives the input's dtype there), and
  a custom ``Stat`` subclass can be summarized (Captum's ordering raises ``KeyError`` for one).
"""

from __future__ import annotations

import copy
import numbers
from typing import Any, Dict, Generic, List, Optional, Sequence, Tuple, TypeVar, Union

import torch
from torch import Tensor

from .summary_stats import MSE, CommonStats, Count, GeneralAccumFn, Max, Mean, Min, Stat, StatValue, StdDev, Sum, Var

KeyType = TypeVar("KeyType")


def _check_stats(stats: Sequence[Stat], who: str) -> List[Stat]:
    if isinstance(stats, Stat) or not isinstance(stats, (list, tuple)):
        raise TypeError(f"{who} takes a list of Stat objects (e.g. [Mean(), StdDev()]), got {type(stats).__name__}")
    for stat in stats:
        if not isinstance(stat, Stat):
            raise TypeError(f"{who}: every stat must be a Stat object (e.g. Mean()), got {stat!r}")
    return list(stats)


def _with_requirements(stats: Sequence[Stat]) -> List[Stat]:
    """``stats`` without repeats (the first of equal stats kept), with every stat they require, each
    after the stats it requires: the order in which to update them."""
    ordered: List[Stat] = []
    seen: Dict[Stat, Stat] = {}
    visiting: set = set()

    def visit(stat: Stat) -> None:
        if stat in seen:
            return
        if stat in visiting:
            raise ValueError(f"stats require each other in a cycle through {stat!r}")
        visiting.add(stat)
        for needed in stat._requires():
            visit(needed)
        visiting.discard(stat)
        seen[stat] = stat
        ordered.append(stat)

    for stat in stats:
        visit(stat)
    return ordered


def _shape_text(shape: torch.Size) -> str:
    return str(tuple(shape))


class SummarizerSingleTensor:
    """The running summary of one stream of tensors; ``Summarizer`` keeps one per tuple element.

    ``stats`` are updated in order with every observation (the stats they require are added when
    missing); ``summary_stats_indices`` picks those of ``stats`` that ``summary`` shows (all of them
    when left out). The stat objects are used, not copied: give each summarizer its own."""

    def __init__(self, stats: List[Stat], summary_stats_indices: Optional[List[int]] = None) -> None:
        stats = _check_stats(stats, "SummarizerSingleTensor")
        self._stats = _with_requirements(stats)
        self._stat_to_stat: Dict[Stat, Stat] = {stat: stat for stat in self._stats}
        if summary_stats_indices is None:
            summary_stats_indices = list(range(len(stats)))
        shown = [self._stat_to_stat[stats[i]] for i in summary_stats_indices]
        self._summary_stats = list(dict.fromkeys(shown))
        self._shape: Optional[torch.Size] = None
        for stat in self._stats:
            stat._other_stats = self
        for stat in self._stats:
            stat.init()

    def _check_shape(self, shape: torch.Size) -> None:
        if self._shape is None:
            self._shape = shape
        elif shape != self._shape:
            raise ValueError(
                f"summarizer update of shape {_shape_text(shape)}, but the earlier updates had shape "
                f"{_shape_text(self._shape)}: every update is one observation of the same shape"
            )

    def update(self, x: Tensor) -> None:
        """Adds the observation ``x`` to every stat."""
        if not isinstance(x, Tensor):
            raise TypeError(f"SummarizerSingleTensor.update takes a tensor, got {type(x).__name__}")
        self._check_shape(x.shape)
        for stat in self._stats:
            stat.update(x)

    def _update_many(self, xs: Tensor) -> None:
        """Adds the observations ``xs[0], xs[1], ...``, merged as one batch where every stat can."""
        if xs.shape[0] == 0:
            return
        self._check_shape(xs.shape[1:])
        if xs.is_floating_point() and all(stat._can_merge() for stat in self._stats):
            for stat in self._stats:
                stat._update_many(xs)
        else:
            for row in xs:
                self.update(row)

    def get(self, stat: Stat) -> Optional[Stat]:
        """This summarizer's stat equal to ``stat`` (same class and parameters), or ``None``."""
        return self._stat_to_stat.get(stat)

    @property
    def summary(self) -> Dict[str, Optional[StatValue]]:
        """``{stat.name: stat.get()}`` for the stats asked for."""
        return {stat.name: stat.get() for stat in self._summary_stats}


def _as_observation(value: Union[Tensor, float], who: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float32)
    raise TypeError(f"{who} takes a tensor, a float or a tuple of them, got {type(value).__name__}")


class Summarizer:
    """Running summaries of a stream of tensors, or of tuples of tensors (one summary per element).

    ``Summarizer(stats)``; ``update(x)`` adds one observation, ``summary`` reads the stats:
    ``{name: value}`` for tensor updates, a list of such dicts for tuple updates, ``None`` before the
    first update. Equal stats (same class and parameters) given twice are kept once, the first
    one's name shown."""

    def __init__(self, stats: List[Stat]) -> None:
        requested = _check_stats(stats, type(self).__name__)
        self._requested = requested
        self._stats = _with_requirements(requested)
        position = {stat: i for i, stat in enumerate(self._stats)}
        self._summary_stats_indices = list(dict.fromkeys(position[stat] for stat in requested))
        self._summarizers: List[SummarizerSingleTensor] = []
        self._is_inputs_tuple: Optional[bool] = None

    def _slots(self, n: int, is_tuple: bool) -> List[SummarizerSingleTensor]:
        """The per-element summarizers for an update of ``n`` elements, created on the first update."""
        who = f"{type(self).__name__}.update"
        if self._is_inputs_tuple is None:
            self._is_inputs_tuple = is_tuple
            self._summarizers = [
                SummarizerSingleTensor(copy.deepcopy(self._stats), self._summary_stats_indices) for _ in range(n)
            ]
        elif is_tuple != self._is_inputs_tuple:
            first, now = ("a tuple", "a single value") if self._is_inputs_tuple else ("a single value", "a tuple")
            raise ValueError(f"{who} got {now}, but the first update was {first}: keep one form throughout")
        elif n != len(self._summarizers):
            raise ValueError(
                f"{who} got a tuple of {n} elements, but the first update had {len(self._summarizers)}: "
                "every update must have the same number of elements"
            )
        return self._summarizers

    def update(self, x: Union[float, Tensor, Tuple[Union[float, Tensor], ...]]) -> None:
        """Adds one observation: a tensor (or float), or a tuple of them, one per summary."""
        who = f"{type(self).__name__}.update"
        is_tuple = isinstance(x, tuple)
        values = [_as_observation(v, who) for v in (x if is_tuple else (x,))]
        if is_tuple and not values:
            raise ValueError(f"{who} got an empty tuple")
        summarizers = self._slots(len(values), is_tuple)
        for summ, value in zip(summarizers, values):  # every check before any stat changes
            if summ._shape is not None:
                summ._check_shape(value.shape)
        for summ, value in zip(summarizers, values):
            summ.update(value)

    def _update_many(self, xs: Tuple[Tensor, ...]) -> None:
        """Adds the observations ``tuple(t[i] for t in xs)`` for every ``i`` (a tuple stream)."""
        if xs[0].shape[0] == 0:
            return
        summarizers = self._slots(len(xs), True)
        for summ, t in zip(summarizers, xs):
            if summ._shape is not None:
                summ._check_shape(t.shape[1:])
        for summ, t in zip(summarizers, xs):
            summ._update_many(t)

    @property
    def summary(self) -> Optional[Union[Dict[str, Optional[StatValue]], List[Dict[str, Optional[StatValue]]]]]:
        """The stats by name: a dict, a list of dicts for tuple updates, ``None`` before any update."""
        if not self._summarizers:
            return None
        summaries = [summ.summary for summ in self._summarizers]
        return summaries if self._is_inputs_tuple else summaries[0]


def _label_key(label: Any) -> Any:
    if isinstance(label, Tensor):
        if label.numel() != 1:
            raise ValueError(f"a label tensor must hold one value, got shape {_shape_text(label.shape)}")
        return label.item()
    return label


class ClassSummarizer(Summarizer, Generic[KeyType]):
    """Running summaries per class and overall, from batches of attributions.

    ``update(x, labels)``: ``x`` is a tensor or a tuple of tensors whose first dimension is the batch;
    example ``i`` (``tuple(t[i] for t in x)``) is one observation, added to the summary of class
    ``labels[i]`` and to the overall one. ``labels`` is a list or 1-d tensor with one label per
    example (or a single label for all), or any other hashable value: the label of every example.
    With labels the summaries are lists of dicts (one per tensor of ``x``, as for tuple updates).
    ``labels=None`` adds ``x`` whole, as one observation, to the overall summary only.

    ``summary`` is the overall summary, ``class_summaries`` ``{label: summary}``, ``summaries``
    ``{label: Summarizer}``."""

    def __init__(self, stats: List[Stat]) -> None:
        super().__init__(stats)
        self.summaries: Dict[KeyType, Summarizer] = {}

    def update(self, x: Union[Tensor, Tuple[Tensor, ...]], labels: Any = None) -> None:  # type: ignore[override]
        if labels is None:
            super().update(x)
            return
        xs = x if isinstance(x, tuple) else (x,)
        if not xs:
            raise ValueError("ClassSummarizer.update got an empty tuple")
        for t in xs:
            if not isinstance(t, Tensor):
                raise TypeError(f"ClassSummarizer.update with labels takes a tensor or a tuple of tensors, got {type(t).__name__}")
            if t.dim() == 0:
                raise ValueError("ClassSummarizer.update with labels takes batches: each tensor needs a batch dimension")
        batch = xs[0].shape[0]
        if any(t.shape[0] != batch for t in xs):
            raise ValueError(
                f"ClassSummarizer.update: the tensors' batch sizes differ ({[t.shape[0] for t in xs]})"
            )

        if isinstance(labels, Tensor):
            if labels.dim() > 1:
                raise ValueError(f"labels must be 1-d (one per example), got shape {_shape_text(labels.shape)}")
            keys = labels.reshape(-1).tolist()
        elif isinstance(labels, list):
            keys = [_label_key(label) for label in labels]
        else:
            keys = [labels]
        if len(keys) == 0:
            raise ValueError("labels is empty: give one label per example, or one label for all of them")
        if len(keys) == 1:
            keys = keys * batch
        elif len(keys) != batch:
            raise ValueError(
                f"{len(keys)} labels for a batch of {batch} examples: give one label per example "
                "(the first dimension of x), or one label for all of them"
            )
        if batch == 0:
            return

        # Check the forms and shapes against the overall summary before anything changes.
        if self._is_inputs_tuple is not None:
            self._slots(len(xs), True)
            for summ, t in zip(self._summarizers, xs):
                summ._check_shape(t.shape[1:])

        rows: Dict[Any, List[int]] = {}
        for i, key in enumerate(keys):
            rows.setdefault(key, []).append(i)
        for key, index in rows.items():
            summ = self.summaries.get(key)
            if summ is None:
                summ = self.summaries[key] = Summarizer(self._requested)
            if len(index) == batch:
                summ._update_many(xs)
            else:
                picked = torch.tensor(index, device=xs[0].device)
                summ._update_many(tuple(t.index_select(0, picked) for t in xs))
        super()._update_many(xs)

    @property
    def class_summaries(self) -> Dict[KeyType, Any]:
        """``{label: summary}``: each class's summary (a list of dicts, one per tensor of ``x``)."""
        return {key: summ.summary for key, summ in self.summaries.items()}


__all__ = [
    "ClassSummarizer",
    "CommonStats",
    "Count",
    "GeneralAccumFn",
    "Max",
    "Mean",
    "Min",
    "MSE",
    "Stat",
    "StatValue",
    "StdDev",
    "Sum",
    "Summarizer",
    "SummarizerSingleTensor",
    "Var",
]
