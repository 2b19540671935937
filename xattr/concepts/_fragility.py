"""Fragility of a probe: the level of noise on the activations at which its accuracy collapses,
and `ProbeResult`, which holds a probe's numbers per layer and shows them.

NOTE: [Fragility of a probe]
A probe's held-out accuracy says whether a property is linearly decodable at a layer; it does
not say how much room the decision has. Fragility measures that room: noise is added to the
held-out activations and the probe (trained on clean ones) is scored again, at a grid of levels.
  scale      s = sqrt(mean_ij (X_ij - m_j)^2) over the training activations X (N_train, F),
             m their mean per feature: the root-mean-square of the centred activations (the
             square root of the features' mean variance, population normalisation). Noise at
             level sigma adds sigma^2 s^2 F to the expected squared norm, sigma^2 times the
             activations' total variance: sigma = 1 is noise as large as the activations' own
             spread, whatever the layer's width and units, so layers compare.
  draws      repeat r = 0..R-1 draws one standard normal E_r of the held-out activations' shape
             (float64, from a CPU ``torch.Generator`` seeded ``seed_of(generator, f"repeat{r}")``)
             and every level uses it: X_test + sigma s E_r. Common draws make the curve move
             smoothly with sigma, and its steps between levels are not draw noise.
  curve      a(sigma) = mean over the R repeats of the probe's accuracy on the noisy activations.
  clean      a0 = the accuracy on the clean held-out activations (the probe's accuracy).
  chance     c = the frequency of the most common class among the held-out labels (the accuracy
             of always guessing it).
  threshold  t = (a0 + c) / 2, the midpoint between clean accuracy and chance.
  collapse   the smallest sigma on the grid's piecewise log-linear curve where accuracy reaches t:
             with k the first grid index where a(sigma_k) <= t,
               k > 0:  exp(log sigma_{k-1} + (a_{k-1} - t) / (a_{k-1} - a_k) (log sigma_k - log sigma_{k-1}))
                       (linear in sigma where sigma_{k-1} = 0: a level 0 has no logarithm)
               k = 0:  sigma_0, an upper bound: accuracy had collapsed at the smallest level (a
                       warning says so: give smaller levels)
               none:   inf (the probe never collapses on the grid)
               a0 <= c: nan (a probe no better than chance has nothing to collapse from).
A larger collapse level is a more robust (less fragile) encoding of the property at that layer
for that probe; it depends on the probe's regularisation as much as on the layer, so compare
layers under one classifier. In any direction the noise has variance sigma^2 s^2 = sigma^2 V / F
(V the total variance, F the width): a direction holding a share p of the variance sees a
signal-to-noise ratio p F / sigma^2, so the level mixes the layer's width, how its variance
spreads over directions, and the probe's margins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ._classifier import seed_of

DEFAULT_LEVELS = tuple(10.0 ** (k / 5) for k in range(-10, 11))  # 0.01 .. 100, five per decade


def activation_scale(X: torch.Tensor) -> float:
    """The root-mean-square of the centred activations X (N, F): the unit of the noise levels
    (NOTE: [Fragility of a probe]).

    Example:
      >>> scale = xattr.concepts.activation_scale(h_train)   # a float: the unit of the noise levels
    """
    X = torch.as_tensor(X).detach().double()
    if X.ndim != 2 or X.shape[0] < 1:
        raise ValueError(f"activation_scale needs activations (N, F) with N >= 1, got shape {tuple(X.shape)}")
    return float((X - X.mean(0)).pow(2).mean().sqrt())


def check_levels(levels) -> torch.Tensor:
    """``levels`` as a float64 (S,) tensor: non-negative, finite, strictly increasing."""
    lv = torch.as_tensor(levels, dtype=torch.float64).detach().cpu().reshape(-1)
    if lv.numel() == 0 or not bool(torch.isfinite(lv).all()) or bool((lv < 0).any()):
        raise ValueError(f"noise levels must be a non-empty list of finite levels >= 0, got {levels!r}")
    if lv.numel() > 1 and not bool((lv[1:] > lv[:-1]).all()):
        raise ValueError(f"noise levels must be strictly increasing, got {lv.tolist()}")
    return lv


def noise_curve(predict: Callable, X: torch.Tensor, y: torch.Tensor, levels, *, scale: float, n_repeats: int = 5,
                generator=0) -> torch.Tensor:  # fmt: skip
    """Accuracy of ``predict`` on ``X + level * scale * E_r``, averaged over the repeats r.

    Args:
      predict: ``fn(Z) -> labels`` for float64 activations Z (n, F); labels a tensor or array (n,).
      X, y: the held-out activations (n, F) and their labels (n,).
      levels: the noise levels sigma (S,), >= 0, increasing; 0 gives the clean accuracy.
      scale: the unit of the levels, e.g. `activation_scale` of the training activations.
      n_repeats: R, the draws averaged (NOTE: [Fragility of a probe]: one draw per repeat,
        shared by all levels).
      generator: int seed or torch.Generator; the draws of repeat r come from
        ``seed_of(generator, f"repeat{r}")``.

    Returns:
      (S,) float64 accuracies in [0, 1].

    Example:
      >>> levels = torch.tensor([0.0, 0.5, 1.0, 2.0, 4.0])
      >>> acc = xattr.concepts.noise_curve(clf.predict, h_test, y_test, levels, scale=scale, generator=0)  # (5,)
    """
    lv = check_levels(levels)
    if isinstance(n_repeats, bool) or not isinstance(n_repeats, int) or n_repeats < 1:
        raise ValueError(f"n_repeats must be a positive int, got {n_repeats!r}")
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be finite and >= 0, got {scale}")
    X = X.detach().double()
    y = torch.as_tensor(y).reshape(-1).cpu()
    n, feats = X.shape
    base = seed_of(generator)
    per_call = max(1, (1 << 24) // max(1, n * feats))  # levels per predict call: at most 2^24 numbers
    total = torch.zeros(len(lv), dtype=torch.float64)
    for r in range(n_repeats):
        g = torch.Generator().manual_seed(seed_of(base, f"repeat{r}"))
        E = torch.randn(n, feats, generator=g, dtype=torch.float64).to(X.device)
        for s in range(0, len(lv), per_call):
            sig = (lv[s : s + per_call] * scale).to(X.device)
            Z = (X[None] + sig[:, None, None] * E[None]).reshape(-1, feats)
            pred = torch.as_tensor(predict(Z)).reshape(len(sig), n).cpu()
            total[s : s + len(sig)] += (pred == y[None]).double().sum(1) / n
    return total / n_repeats


def collapse_level(levels, curve, clean: float, chance: float) -> float:
    """The noise level at which ``curve`` falls to the midpoint of ``clean`` and ``chance``
    (NOTE: [Fragility of a probe]): log-linear between grid levels; inf if it never does, nan
    if ``clean <= chance``, ``levels[0]`` if it already has there.

    Example:
      >>> acc = xattr.concepts.noise_curve(clf.predict, h_test, y_test, levels, scale=scale, generator=0)
      >>> xattr.concepts.collapse_level(levels, acc, float(acc[0]), chance=0.1)   # a float sigma
    """
    lv = check_levels(levels)
    a = torch.as_tensor(curve, dtype=torch.float64).reshape(-1).cpu()
    if a.shape != lv.shape:
        raise ValueError(f"curve has {a.numel()} values for {lv.numel()} levels")
    if not clean > chance:
        return math.nan
    t = (clean + chance) / 2
    below = (a <= t).nonzero()
    if len(below) == 0:
        return math.inf
    k = int(below[0])
    if k == 0:
        return float(lv[0])
    lo, hi = float(lv[k - 1]), float(lv[k])
    frac = (float(a[k - 1]) - t) / (float(a[k - 1]) - float(a[k]))
    if lo == 0.0:  # a level 0 below: no log scale there, linear in sigma
        return frac * hi
    at = math.exp(math.log(lo) + frac * (math.log(hi) - math.log(lo)))
    return min(max(at, lo), hi)  # exp(log(hi)) may round past hi


@dataclass(frozen=True)
class ProbeResult:
    """Probes of one property at L layers (NOTE: [Probes and control tasks] in _probes.py).

    Attributes:
      layers: the L layer names; features: their widths F.
      accuracy: (L,) held-out accuracy of each layer's probe.
      control_accuracy: (L,) held-out accuracy of the control probe (NaN with ``control=False``).
      levels: (S,) the noise levels sigma, in units of each layer's ``scale``.
      curves: (L, S) held-out accuracy under noise at each level, mean over the repeats.
      collapse: (L,) the collapse level (NOTE: [Fragility of a probe]): inf where the probe never
        collapses on the grid, NaN where its accuracy is not above chance.
      scale: (L,) each layer's activation scale (RMS of its centred training activations).
      chance: the frequency of the most common class among the held-out labels.
      classes: (K,) the class labels; train_index, test_index: the rows of the split.

    Example:
      >>> res = xattr.concepts.probe(model, ["fc1", "fc2"], x, y, generator=0)
      >>> res.accuracy, res.control_accuracy, res.collapse   # (L,) each
    """

    layers: tuple
    features: tuple
    accuracy: torch.Tensor
    control_accuracy: torch.Tensor
    levels: torch.Tensor
    curves: torch.Tensor
    collapse: torch.Tensor
    scale: torch.Tensor
    chance: float
    classes: torch.Tensor
    train_index: torch.Tensor
    test_index: torch.Tensor

    @property
    def selectivity(self) -> torch.Tensor:
        """(L,) accuracy - control accuracy (Hewitt and Liang 2019)."""
        return self.accuracy - self.control_accuracy

    @property
    def threshold(self) -> torch.Tensor:
        """(L,) the accuracy that marks collapse: midway between clean accuracy and chance."""
        return (self.accuracy + self.chance) / 2

    def summary(self) -> str:
        """A table: per layer its width, accuracy, control accuracy, selectivity, collapse level."""
        rows = [("layer", "F", "accuracy", "control", "selectivity", "collapse")]
        for i, name in enumerate(self.layers):
            vals = (self.accuracy[i], self.control_accuracy[i], self.selectivity[i])
            cells = [f"{float(v):.3f}" for v in vals]
            rows.append((name, str(self.features[i]), *cells, f"{float(self.collapse[i]):.3g}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        table = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        note = (f"chance (most common class) {self.chance:.3f}; {len(self.train_index)} train, "
                f"{len(self.test_index)} held out; collapse: noise level x activation scale")  # fmt: skip
        return "\n".join([*table, note])

    def plot(self):
        """A matplotlib Figure (Agg canvas, no pyplot): accuracy, control accuracy and selectivity
        per layer (left); accuracy against the noise level, one line per layer, collapse points
        marked (right)."""
        try:
            from matplotlib.figure import Figure
        except ImportError as err:
            raise ImportError("ProbeResult.plot needs matplotlib (pip install matplotlib)") from err
        fig = Figure(figsize=(11, 4))
        left, right = fig.subplots(1, 2)
        x = list(range(len(self.layers)))
        left.plot(x, self.accuracy.tolist(), "o-", label="accuracy")
        if not bool(torch.isnan(self.control_accuracy).all()):
            left.plot(x, self.control_accuracy.tolist(), "s--", label="control accuracy")
            left.plot(x, self.selectivity.tolist(), "^-", label="selectivity")
        left.axhline(self.chance, color="gray", ls=":", label="chance")
        left.set_xticks(x, list(self.layers), rotation=30)
        left.set_ylabel("held-out accuracy, selectivity")
        left.legend(fontsize=8)
        pos = self.levels > 0  # a level 0 has no place on the log axis
        for i, name in enumerate(self.layers):
            (line,) = right.plot(self.levels[pos].tolist(), self.curves[i, pos].tolist(), label=name)
            c = float(self.collapse[i])
            if math.isfinite(c) and c > 0:
                right.plot([c], [float(self.threshold[i])], "o", color=line.get_color(), ms=7, mfc="none")
        right.set_xscale("log")
        right.axhline(self.chance, color="gray", ls=":")
        right.set_xlabel("noise level sigma (x activation scale); o: collapse")
        right.set_ylabel("held-out accuracy")
        right.legend(fontsize=8)
        fig.tight_layout()
        return fig
