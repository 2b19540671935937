"""Captum's running statistics for the summarizers (summarizer.py): ``Count``, ``Mean``, ``MSE``,
``Var(order)``, ``StdDev(order)``, ``Min``, ``Max``, ``Sum`` and ``CommonStats()``, elementwise over
the observations' shape. Mean and MSE follow Welford's recurrence and merge batches with Chan et
al.'s pairwise formula; each stat names the stats it needs, which the summarizer adds first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

if TYPE_CHECKING:  # the summarizer that holds a stat (summarizer.py imports this module)
    from .summarizer import SummarizerSingleTensor

StatValue = Union[Tensor, int, float]


class Stat:
    """A statistic updated one observation at a time and read with ``get()`` at any point.

    ``name`` is its key in a summary: the ``name`` given, or the lower-cased class name (followed by
    its parameters, if it has any). Two stats of the same class and parameters are the same stat
    (equal and of equal hash), whatever their names. A subclass reads the stats it relies on with
    ``self._get_stat(Other())`` in ``init()``, and lists them in ``_requires()`` so that a summarizer
    adds them and updates them before it."""

    def __init__(self, name: Optional[str] = None, **kwargs: Any) -> None:
        self.params: Dict[str, Any] = kwargs
        self._name = name
        self._other_stats: Optional[SummarizerSingleTensor] = None

    def _requires(self) -> List["Stat"]:
        """The stats this one reads; the summarizer holds and updates them before this one."""
        return []

    def init(self) -> None:
        """Called once the stat belongs to a summarizer: look up the stats it reads here."""

    def _get_stat(self, stat: "Stat") -> Optional["Stat"]:
        if self._other_stats is None:
            raise RuntimeError(f"{type(self).__name__} is not part of a summarizer yet")
        return self._other_stats.get(stat)

    def update(self, x: Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not define update(x)")

    def get(self) -> Optional[StatValue]:
        raise NotImplementedError(f"{type(self).__name__} does not define get()")

    def _can_merge(self) -> bool:
        """Whether ``_update_many`` below is this stat's own batched update (not a subclass's guess)."""
        return False

    def _update_many(self, xs: Tensor) -> None:
        """Adds the observations ``xs[0], xs[1], ...`` at once."""
        for row in xs:
            self.update(row)

    def _key(self) -> Tuple[type, frozenset]:
        return type(self), frozenset(self.params.items())

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stat) and self._key() == other._key()

    def __ne__(self, other: object) -> bool:
        return not self == other

    @property
    def name(self) -> str:
        if self._name is not None:
            return self._name
        base = type(self).__name__.lower()
        return f"{base}({self.params})" if self.params else base

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _float_copy(x: Tensor) -> Tensor:
    return x.clone() if x.is_floating_point() else x.to(torch.float64)


class Count(Stat):
    """The number of observations (updates) so far; ``None`` before the first."""

    def __init__(self, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.n: Optional[int] = None

    def update(self, x: Tensor) -> None:
        self.n = (self.n or 0) + 1

    def _can_merge(self) -> bool:
        return type(self) is Count

    def _update_many(self, xs: Tensor) -> None:
        self.n = (self.n or 0) + xs.shape[0]

    def get(self) -> Optional[int]:
        return self.n


class Mean(Stat):
    """The running elementwise mean, in the input's floating dtype (float64 for integer input)."""

    def __init__(self, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.rolling_mean: Optional[Tensor] = None
        self.n: Optional[Count] = None

    def _requires(self) -> List[Stat]:
        return [Count()]

    def init(self) -> None:
        self.n = self._get_stat(Count())

    def update(self, x: Tensor) -> None:
        # Count is updated first, so it already includes x.
        if self.rolling_mean is None:
            self.rolling_mean = _float_copy(x)
        else:
            self.rolling_mean = self.rolling_mean + (x - self.rolling_mean) / self.n.get()

    def _can_merge(self) -> bool:
        return type(self) is Mean

    def _update_many(self, xs: Tensor) -> None:
        batch_mean = _float_copy(xs).mean(0)
        if self.rolling_mean is None:
            self.rolling_mean = batch_mean
        else:
            self.rolling_mean = self.rolling_mean + (batch_mean - self.rolling_mean) * (xs.shape[0] / self.n.get())

    def get(self) -> Optional[Tensor]:
        return self.rolling_mean


class MSE(Stat):
    """The running elementwise sum of squared deviations from the mean (Welford's ``M2``): zeros after
    one observation, ``None`` before."""

    def __init__(self, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.mse: Optional[Tensor] = None
        self.prev_mean: Optional[Tensor] = None
        self.mean: Optional[Mean] = None
        self.n: Optional[Count] = None

    def _requires(self) -> List[Stat]:
        return [Count(), Mean()]

    def init(self) -> None:
        self.mean = self._get_stat(Mean())
        self.n = self._get_stat(Count())

    def update(self, x: Tensor) -> None:
        # Mean is updated first: the deviation from the mean before x times the one after.
        new_mean = self.mean.get()
        if self.prev_mean is None:
            self.mse = torch.zeros_like(new_mean)
        else:
            self.mse = self.mse + (x - self.prev_mean) * (x - new_mean)
        self.prev_mean = new_mean

    def _can_merge(self) -> bool:
        return type(self) is MSE

    def _update_many(self, xs: Tensor) -> None:
        xs = _float_copy(xs)
        batch_mean = xs.mean(0)
        batch_m2 = (xs - batch_mean).square().sum(0)
        new_mean = self.mean.get()
        if self.prev_mean is None:
            self.mse = batch_m2
        else:
            # Chan et al.: M2 = M2_a + M2_b + d^2 n_a n_b / n, and d n_b / n is the mean's move.
            n_before = self.n.get() - xs.shape[0]
            self.mse = self.mse + batch_m2 + (batch_mean - self.prev_mean) * (new_mean - self.prev_mean) * n_before
        self.prev_mean = new_mean

    def get(self) -> Optional[Tensor]:
        return self.mse


class Var(Stat):
    """The variance ``MSE / (count - order)`` in float64: ``order=0`` the population variance
    (named ``"variance"``), ``order=1`` the sample variance (``"sample_variance"``)."""

    def __init__(self, name: Optional[str] = None, order: int = 0) -> None:
        if name is None:
            name = {0: "variance", 1: "sample_variance"}.get(order, f"variance({order})")
        super().__init__(name=name, order=order)
        self.order = order
        self.mse_stat: Optional[MSE] = None
        self.n_stat: Optional[Count] = None

    def _requires(self) -> List[Stat]:
        return [Count(), MSE()]

    def init(self) -> None:
        self.mse_stat = self._get_stat(MSE())
        self.n_stat = self._get_stat(Count())

    def update(self, x: Tensor) -> None:
        pass  # read from MSE and Count

    def _can_merge(self) -> bool:
        return type(self) is Var

    def _update_many(self, xs: Tensor) -> None:
        pass

    def get(self) -> Optional[Tensor]:
        m2 = self.mse_stat.get()
        if m2 is None:
            return None
        m2 = m2.to(torch.float64)
        n = self.n_stat.get()
        if n is None or n <= self.order:
            return torch.zeros_like(m2)
        return m2 / (n - self.order)


class StdDev(Stat):
    """The square root of ``Var(order)``: ``"std_dev"`` for ``order=0``, ``"sample_std_dev"`` for 1."""

    def __init__(self, name: Optional[str] = None, order: int = 0) -> None:
        if name is None:
            name = {0: "std_dev", 1: "sample_std_dev"}.get(order, f"std_dev({order})")
        super().__init__(name=name, order=order)
        self.order = order
        self.var_stat: Optional[Var] = None

    def _requires(self) -> List[Stat]:
        return [Var(order=self.order)]

    def init(self) -> None:
        self.var_stat = self._get_stat(Var(order=self.order))

    def update(self, x: Tensor) -> None:
        pass  # read from Var

    def _can_merge(self) -> bool:
        return type(self) is StdDev

    def _update_many(self, xs: Tensor) -> None:
        pass

    def get(self) -> Optional[Tensor]:
        var = self.var_stat.get()
        return None if var is None else var.sqrt()


class GeneralAccumFn(Stat):
    """Folds each observation into the result: ``result = fn(result, x)``, the first one copied."""

    _default_fn: Optional[Callable[[Tensor, Tensor], Tensor]] = None
    _batch_reduce: Optional[Callable[[Tensor], Tensor]] = None

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.fn = fn
        self.result: Optional[Tensor] = None

    def update(self, x: Tensor) -> None:
        self.result = x.clone() if self.result is None else self.fn(self.result, x)

    def _can_merge(self) -> bool:
        # A user's fold function has no known batched form; the built-in ones on floats do.
        return type(self) in (Min, Max, Sum) and self.fn is self._default_fn

    def _update_many(self, xs: Tensor) -> None:
        folded = type(self)._batch_reduce(xs)
        self.result = folded if self.result is None else self.fn(self.result, folded)

    def get(self) -> Optional[Tensor]:
        return self.result


class Min(GeneralAccumFn):
    """The running elementwise minimum (``min_fn(result, x)``, ``torch.min`` by default)."""

    _default_fn = torch.min
    _batch_reduce = staticmethod(lambda xs: xs.amin(0))

    def __init__(self, name: Optional[str] = None, min_fn: Callable[[Tensor, Tensor], Tensor] = torch.min) -> None:
        super().__init__(fn=min_fn, name=name)


class Max(GeneralAccumFn):
    """The running elementwise maximum (``max_fn(result, x)``, ``torch.max`` by default)."""

    _default_fn = torch.max
    _batch_reduce = staticmethod(lambda xs: xs.amax(0))

    def __init__(self, name: Optional[str] = None, max_fn: Callable[[Tensor, Tensor], Tensor] = torch.max) -> None:
        super().__init__(fn=max_fn, name=name)


class Sum(GeneralAccumFn):
    """The running elementwise sum (``add_fn(result, x)``, ``torch.add`` by default), in the input's dtype."""

    _default_fn = torch.add
    _batch_reduce = staticmethod(lambda xs: xs.sum(0))

    def __init__(self, name: Optional[str] = None, add_fn: Callable[[Tensor, Tensor], Tensor] = torch.add) -> None:
        super().__init__(fn=add_fn, name=name)


def CommonStats() -> List[Stat]:
    """``[Mean(), Var(order=1), StdDev(order=1), Min(), Max()]``: mean, sample variance and sample
    standard deviation, minimum and maximum."""
    return [Mean(), Var(order=1), StdDev(order=1), Min(), Max()]
