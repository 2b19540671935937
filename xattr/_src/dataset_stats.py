"""Attribution statistics over a whole dataset, streamed batch by batch in one pass.

NOTE: [Streaming attribution moments]
For every group (a class label, a predicted class, or one group "all") and every feature j the
statistics keep, in float64: the count n, the mean of a_j, M2 = sum (a_j - mean)^2, the mean
of |a_j|, the M2 of |a_j| and how many examples had j among their top-k features by |a_j|.
Each batch's moments are computed exactly (two passes over the batch: its mean, then the
squared deviations from it) and merged into the running ones by Chan, Golub and LeVeque's
pairwise update: with n = n_a + n_b and delta = mean_b - mean_a,
  mean = mean_a + delta * n_b / n,    M2 = M2_a + M2_b + delta^2 * n_a * n_b / n.
The update is exact in real arithmetic, so any split of the data into batches, and any order
of merging shards, gives the one-pass result up to float64 rounding; unlike the textbook
sum-of-squares formula it does not cancel catastrophically when the mean is large against
the spread. The sample variance is M2 / (n - 1).

The global importance of feature j is the mean of |a_j| over every example, and its standard
error sqrt(var(|a_j|) / n). Its interval is mean +- z * se with z the standard normal quantile
(1.96 for 95%): a central-limit interval, fair from some tens of examples on, too narrow for
a handful. Ties in the top-k are broken by feature index (the lower flat index wins), so the
counts are deterministic.
"""

from __future__ import annotations

import statistics as _stats
from dataclasses import dataclass

import torch


_BY = ("label", "prediction", None)


@dataclass(frozen=True, eq=False)
class AttributionStatistics:
    """Per-group moments of attributions; build with `attribution_statistics` or `from_attributions`.

    Every tensor is a plain CPU tensor; per-group ones have shape ``(G, *feature_shape)``, row g
    belonging to ``groups[g]`` (sorted). See NOTE: [Streaming attribution moments].

    Attributes:
      groups: the group keys: class indices (ints) for ``by="label"``/``"prediction"``, or
        ``("all",)`` for ``by=None``.
      count: (G,) int64, examples per group.
      mean, m2: float64 mean and sum of squared deviations of the signed attributions.
      mean_abs, m2_abs: the same for |attribution|.
      top_k_count: int64, how many examples of the group had the feature among their ``top_k``
        largest |attribution| (ties: the lower flat index first).
      top_k: k of ``top_k_count`` (clamped to the number of features).
      by: how examples were grouped ("label", "prediction", None), for `summary`.

    Example:
      >>> stats = xattr.AttributionStatistics.from_attributions(attr, y, by="label")
      >>> stats.mean[stats.index(3)], stats.importance   # class 3's mean map; global mean |a|
    """

    groups: tuple
    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor
    mean_abs: torch.Tensor
    m2_abs: torch.Tensor
    top_k_count: torch.Tensor
    top_k: int
    by: str | None = "label"

    # --- building -------------------------------------------------------------------------

    @classmethod
    def from_attributions(cls, attributions, groups=None, *, top_k: int = 10, by: str | None = "label") -> "AttributionStatistics":
        """Statistics of one batch of precomputed attributions ``(B, *feature_shape)``.

        ``groups`` is an integer tensor ``(B,)`` of group keys (class indices), or None for
        one group ``"all"``. Merge batches with `merge`.
        """
        a = _float64(attributions, "attributions")
        n_ex = a.shape[0]
        if n_ex == 0:
            raise ValueError("attributions hold no examples: give at least one")
        top_k = _check_top_k(top_k)
        flat = a.reshape(n_ex, -1)
        n_feat = flat.shape[1]
        if n_feat == 0:
            raise ValueError(f"attributions of shape {tuple(a.shape)} have no features")
        keys, inv = group_keys(groups, n_ex, "attributions")
        n_g = len(keys)
        count = torch.bincount(inv, minlength=n_g)
        mean, m2 = _group_moments(flat, inv, count)
        mags = flat.abs()
        mean_abs, m2_abs = _group_moments(mags, inv, count)
        k = min(top_k, n_feat)
        order = torch.sort(mags, dim=1, descending=True, stable=True).indices[:, :k]
        hits = torch.zeros_like(flat, dtype=torch.long).scatter_(1, order, 1)
        top = torch.zeros(n_g, n_feat, dtype=torch.long).index_add_(0, inv, hits)
        shape = (n_g, *a.shape[1:])
        return cls(keys, count, mean.reshape(shape), m2.reshape(shape), mean_abs.reshape(shape), m2_abs.reshape(shape),
                   top.reshape(shape), k, by)  # fmt: skip

    def merge(self, other: "AttributionStatistics") -> "AttributionStatistics":
        """The statistics of the union of both datasets (shards, workers), by Chan's update.

        Groups are matched by key; a group in only one side is taken as it is. Both must have
        the same feature shape and ``top_k``. Merging is associative and commutative up to
        float64 rounding (NOTE: [Streaming attribution moments]).
        """
        if not isinstance(other, AttributionStatistics):
            raise TypeError(f"merge needs another AttributionStatistics, got {type(other).__name__}")
        if self.feature_shape != other.feature_shape:
            raise ValueError(f"cannot merge statistics of feature shapes {self.feature_shape} and {other.feature_shape}")
        if self.top_k != other.top_k:
            raise ValueError(f"cannot merge statistics of top_k={self.top_k} and top_k={other.top_k}: compute both with one top_k")
        if self.by != other.by:
            raise ValueError(f"cannot merge statistics grouped by {self.by!r} and by {other.by!r}")
        try:
            keys = tuple(sorted(set(self.groups) | set(other.groups)))
        except TypeError:
            raise ValueError(f"cannot merge groups {self.groups} and {other.groups}: their keys are of different kinds") from None
        return _merge_rows(keys, self, other)

    # --- derived statistics ---------------------------------------------------------------

    @property
    def feature_shape(self) -> tuple:
        return tuple(self.mean.shape[1:])

    @property
    def n(self) -> int:
        """Examples seen, over every group."""
        return int(self.count.sum())

    def index(self, group) -> int:
        """Row of ``group`` in the per-group tensors."""
        if group not in self.groups:
            raise KeyError(f"no group {group!r}; the groups are {self.groups}")
        return self.groups.index(group)

    @property
    def variance(self) -> torch.Tensor:
        """Sample variance (ddof=1) per group and feature; NaN for a group of one example."""
        return _sample_variance(self.m2, self.count)

    @property
    def std(self) -> torch.Tensor:
        return self.variance.sqrt()

    @property
    def top_k_frequency(self) -> torch.Tensor:
        """Fraction of each group's examples with the feature in their top-k by |attribution|."""
        return self.top_k_count.double() / _per_row(self.count, self.m2)

    def overall(self) -> "AttributionStatistics":
        """Every group merged into one, ``"all"``."""
        merged = None
        for g in range(len(self.groups)):
            row = AttributionStatistics(("all",), *(getattr(self, f)[g : g + 1] for f in _ROWS), self.top_k, self.by)
            merged = row if merged is None else _merge_rows(("all",), merged, row)
        return merged

    @property
    def importance(self) -> torch.Tensor:
        """Global mean |attribution| per feature, over every example: ``feature_shape``."""
        return self.overall().mean_abs[0]

    @property
    def importance_se(self) -> torch.Tensor:
        """Standard error of `importance`: sqrt(sample variance of |a| / n); NaN for n = 1."""
        every = self.overall()
        return (every.variance_abs[0] / every.n).sqrt()

    @property
    def variance_abs(self) -> torch.Tensor:
        """Sample variance (ddof=1) of |attribution| per group and feature."""
        return _sample_variance(self.m2_abs, self.count)

    def importance_interval(self, level: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high): `importance` -+ z * `importance_se`, z the normal quantile of ``level``."""
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
            raise ValueError(f"level must be a probability in (0, 1), e.g. 0.95; got {level!r}")
        z = _stats.NormalDist().inv_cdf(0.5 + level / 2)
        mid, se = self.importance, self.importance_se
        return mid - z * se, mid + z * se

    def summary(self, n_features: int = 5, level: float = 0.95) -> str:
        """A text report: counts per group, the most important features globally (mean |a| with
        its interval) and each group's largest mean |a| features."""
        lo, hi = self.importance_interval(level)
        imp = self.importance.flatten()
        top = torch.sort(imp, descending=True, stable=True).indices[:n_features]
        lines = [f"AttributionStatistics: {self.n} examples, {len(self.groups)} group(s) by {self.by or 'none'}, "
                 f"feature shape {self.feature_shape}, top_k={self.top_k}",  # fmt: skip
                 f"global mean |attribution| ({level:.0%} interval):"]
        for j in top.tolist():
            lines.append(f"  {_name(j, self.feature_shape):>14}  {imp[j]:.4g}  [{lo.flatten()[j]:.4g}, {hi.flatten()[j]:.4g}]")
        for g, key in enumerate(self.groups):
            mags = self.mean_abs[g].flatten()
            best = torch.sort(mags, descending=True, stable=True).indices[:n_features].tolist()
            names = ", ".join(f"{_name(j, self.feature_shape)}={mags[j]:.3g}" for j in best)
            lines.append(f"group {key!r}: n={int(self.count[g])}; largest mean |a|: {names}")
        return "\n".join(lines)


_ROWS = ("count", "mean", "m2", "mean_abs", "m2_abs", "top_k_count")


def _per_row(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def _sample_variance(m2: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    den = _per_row(count - 1, m2).double()
    return torch.where(den > 0, m2 / den.clamp_min(1), torch.nan)


def _name(j: int, shape: tuple) -> str:
    if len(shape) == 1:
        return f"[{j}]"
    idx = []
    for n in reversed(shape):
        idx.append(j % n)
        j //= n
    return str(tuple(reversed(idx)))


def _group_moments(flat: torch.Tensor, inv: torch.Tensor, count: torch.Tensor):
    """Per-group mean and M2 of rows ``flat`` (B, F), two exact passes."""
    n_g = len(count)
    total = torch.zeros(n_g, flat.shape[1], dtype=torch.float64).index_add_(0, inv, flat)
    mean = total / count[:, None]
    dev = flat - mean[inv]
    m2 = torch.zeros_like(total).index_add_(0, inv, dev * dev)
    return mean, m2


def _chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merged (mean, M2) of two samples of sizes n_a, n_b >= 1 (float64 per-row tensors)."""
    n = n_a + n_b
    delta = mean_b - mean_a
    return mean_a + delta * (n_b / n), m2_a + m2_b + delta * delta * (n_a * n_b / n)


def group_keys(groups, n_ex: int, noun: str) -> tuple[tuple, torch.Tensor]:
    """``(keys, inv)``: the sorted distinct group keys (``("all",)`` without groups) and each
    example's index into them."""
    if groups is None:
        return ("all",), torch.zeros(n_ex, dtype=torch.long)
    g = _as_labels(groups, "groups")
    if g.shape != (n_ex,):
        raise ValueError(f"groups has shape {tuple(g.shape)} but there are {n_ex} {noun}: give one key per example")
    uniq, inv = torch.unique(g, sorted=True, return_inverse=True)
    return tuple(int(k) for k in uniq), inv


def _merge_rows(keys: tuple, a: AttributionStatistics, b: AttributionStatistics) -> AttributionStatistics:
    rows = {}
    for key in keys:
        ia = a.groups.index(key) if key in a.groups else None
        ib = b.groups.index(key) if key in b.groups else None
        if ib is None or ia is None:
            src, i = (a, ia) if ib is None else (b, ib)
            rows[key] = [getattr(src, f)[i] for f in _ROWS]
            continue
        na, nb = a.count[ia].double(), b.count[ib].double()
        mean, m2 = _chan(na, a.mean[ia], a.m2[ia], nb, b.mean[ib], b.m2[ib])
        mean_abs, m2_abs = _chan(na, a.mean_abs[ia], a.m2_abs[ia], nb, b.mean_abs[ib], b.m2_abs[ib])
        rows[key] = [a.count[ia] + b.count[ib], mean, m2, mean_abs, m2_abs, a.top_k_count[ia] + b.top_k_count[ib]]
    fields = [torch.stack([rows[k][i] for k in keys]) for i in range(len(_ROWS))]
    return AttributionStatistics(keys, *fields, a.top_k, a.by)


def _float64(a, name: str) -> torch.Tensor:
    if isinstance(a, (tuple, list)) and a and isinstance(a[0], torch.Tensor):
        raise TypeError(f"{name} must be one tensor (B, ...), got a {type(a).__name__} of tensors: attribute one input at a time")
    t = torch.as_tensor(a).detach()
    if t.ndim < 2:
        raise ValueError(f"{name} must be batched, shape (B, *features); got shape {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    t = t.to("cpu", torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} hold NaN or infinite values; statistics need finite attributions")
    return t


def _as_labels(y, name: str) -> torch.Tensor:
    t = torch.as_tensor(y)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices (a LongTensor), got dtype {t.dtype}")
    if t.ndim != 1:
        raise ValueError(f"{name} must have shape (B,), one class index per example; got {tuple(t.shape)}")
    return t.detach().to("cpu", torch.long)


def _check_top_k(top_k) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    return top_k


__all__ = ["AttributionStatistics"]
