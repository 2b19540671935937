"""The result of `xattr.sage`: SAGE values with their standard errors, a text summary, a dict and
a bar chart (drawn like `xattr.viz`'s dataset plots: a matplotlib Figure on the Agg canvas, no
pyplot)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SageResult:
    """SAGE values of the F feature ids (NOTE: [The SAGE game under marginal imputation] in sage.py).

    Attributes:
      values: (F,) float64 CPU tensor, each feature's share of the loss reduction; they sum to
        ``loss_empty - loss_full`` (exactly for the exact estimator; for the permutation
        estimator up to rounding, as every draw's samples telescope).
      std_errors: (F,) standard errors of the values (0 for the exact estimator).
      loss_empty: mean loss of the model's average prediction, no feature known (estimated
        over the draws for the permutation estimator; with ``n_background`` m, the loss of an
        m-row average, larger: NOTE: [SAGE inner samples] in sage_estimators.py).
      loss_full: mean loss of the model with every feature known.
      feature_names: one name per feature id.
      estimator: "permutation" or "exact".
      n_draws: draws (example, order, background rows) used; 0 for the exact estimator.
      converged: whether the convergence criterion was met (always True for "exact"; False
        when ``convergence=None`` asked for no check).
      ratio: the last largest standard error over the values' spread (max - min).

    Example:
      >>> res = xattr.sage(model, "cross_entropy", X, Y, background=X[:50], generator=0)
      >>> print(res.summary()); res.values   # (F,), summing to loss_empty - loss_full
    """

    values: torch.Tensor
    std_errors: torch.Tensor
    loss_empty: float
    loss_full: float
    feature_names: list
    estimator: str
    n_draws: int
    converged: bool
    ratio: float

    @property
    def total(self) -> float:
        """The loss reduction the values share: ``loss_empty - loss_full`` (v of all features)."""
        return self.loss_empty - self.loss_full

    def order(self) -> list[int]:
        """Feature ids from the most to the least important (largest value first; ties by id)."""
        return sorted(range(len(self.values)), key=lambda i: (-float(self.values[i]), i))

    def to_dict(self) -> dict:
        """Plain Python numbers and lists, strict JSON: a non-finite number (the infinite standard
        errors and ratio of a single draw) becomes None."""
        return {
            "values": [_finite(v) for v in self.values.tolist()],
            "std_errors": [_finite(v) for v in self.std_errors.tolist()],
            "feature_names": list(self.feature_names),
            "loss_empty": _finite(self.loss_empty),
            "loss_full": _finite(self.loss_full),
            "total": _finite(self.total),
            "estimator": self.estimator,
            "n_draws": int(self.n_draws),
            "converged": bool(self.converged),
            "ratio": _finite(self.ratio),
        }

    def summary(self, top: int | None = None) -> str:
        """A table of the features by value, with standard errors and shares of the total."""
        _check_top(top)
        ids = self.order()[: top if top is not None else len(self.values)]
        width = max([7] + [len(self.feature_names[i]) for i in ids])
        how = "exact" if self.estimator == "exact" else f"{self.n_draws} draws, largest std err {self.ratio:.2g} of the spread"
        lines = [
            f"SAGE ({how}): loss {self.loss_empty:.4g} with no feature known, {self.loss_full:.4g} with all; "
            f"the features share {self.total:.4g}",
            f"{'feature':<{width}}  {'value':>10}  {'std err':>9}  {'share':>7}",
        ]
        for i in ids:
            v, e = float(self.values[i]), float(self.std_errors[i])
            share = f"{v / self.total:7.1%}" if self.total != 0 else f"{'-':>7}"
            lines.append(f"{self.feature_names[i]:<{width}}  {v:10.4g}  {e:9.2g}  {share}")
        return "\n".join(lines)

    def plot(self, *, top: int | None = None, title: str | None = None, path=None, dpi: int = 120):
        """Horizontal bars of the values, largest on top, with error bars of +-1.96 standard
        errors (a 95% normal interval). Returns a matplotlib Figure (Agg canvas, no pyplot);
        ``path`` also writes it there."""
        import numpy as np

        from ..viz.dataset import _bars, _done, _figure

        _check_top(top)
        ids = self.order()[: top if top is not None else len(self.values)]
        values = self.values.numpy()[ids]
        err = 1.96 * self.std_errors.numpy()[ids]
        fig = _figure(5.0, 1.0 + 0.25 * len(ids), dpi)
        ax = fig.add_subplot(1, 1, 1)
        _bars(ax, values, [self.feature_names[i] for i in ids], err=np.nan_to_num(err, posinf=0.0))
        what = "exact" if self.estimator == "exact" else f"{self.n_draws} draws, 95% interval"
        ax.set_xlabel(f"SAGE value: loss reduction ({what})", fontsize=8)
        ax.set_title(title or "SAGE global feature importance", fontsize=10)
        fig.tight_layout()
        return _done(fig, path, dpi)


def _check_top(top) -> None:
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ValueError(f"top must be a positive int or None, got {top!r}")


def _finite(v: float):
    return float(v) if math.isfinite(v) else None
