"""The result classes of `bias_check` (xattr/metrics/_bias.py), their summary and plot."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class GroupStats:
    """Rates of one grouping (an attribute, or the intersection of all).

    names: the G groups. size: (G,) examples per group. pred_rate: (G, C) P(pred = c | group).
    label_rate, accuracy, recall: with labels; recall[g, c] = P(pred = c | label = c, group), NaN
    where group g has no example of class c. mi: plug-in I(group; prediction) in nats, p_value: its
    permutation test (NaN without permutations). label_mi: I(group; label). dp_gap: the largest
    difference of pred_rate between groups (binary: of the positive class 1; several classes: the
    largest over classes). eo_gap: the same for recall (equal opportunity), groups with no example
    of the class left out.

    Example:
      >>> g = xattr.metrics.bias_check(model, x, {"sex": sex}, labels=y, generator=0).groups["sex"]
      >>> g.pred_rate, g.mi, g.p_value, g.dp_gap
    """

    names: list
    size: torch.Tensor
    pred_rate: torch.Tensor
    mi: float
    p_value: float
    dp_gap: float
    label_rate: torch.Tensor | None = None
    accuracy: torch.Tensor | None = None
    recall: torch.Tensor | None = None
    label_mi: float | None = None
    eo_gap: float | None = None


@dataclass
class Counterfactual:
    """Prediction changes when the protected columns are set to other observed combinations.

    combos: names of the G combinations; values: (G, P) their column values. flip_rate: the fraction
    of (example, other combination) pairs whose predicted class changes; any_flip_rate: the fraction
    of examples that flip for at least one; mean_change, max_change: of the total-variation distance
    between predicted distributions. flip_matrix[g, h]: the flip rate of the examples at combination g
    set to h (0 on the diagonal); change_matrix likewise. See NOTE: [Counterfactual protected columns].

    Example:
      >>> report = xattr.metrics.bias_check(model, x, columns={"sex": 0}, generator=0)
      >>> report.counterfactual.flip_rate     # share of (example, other value) pairs whose class flips
    """

    attributes: list
    combos: list
    values: torch.Tensor
    flip_rate: float
    any_flip_rate: float
    mean_change: float
    max_change: float
    flip_matrix: torch.Tensor
    change_matrix: torch.Tensor


@dataclass
class Interactions:
    """Pairwise interactions of protected and other columns (NOTE: [Interaction of two columns]).

    protected: the protected attributes' names (rows of ``strength``); others: the other columns'
    indices (its columns). strength[p, j] = mean |Delta| of the pair; main[k] = mean |f(x) - f(x^{k})|
    of each column k of x; baseline: the row b (D,).

    Example:
      >>> report = xattr.metrics.bias_check(model, x, columns={"sex": 0}, interactions=True, generator=0)
      >>> report.interactions.strength        # (P, D - P): each protected column with each other column
    """

    protected: list
    others: list
    strength: torch.Tensor
    main: torch.Tensor
    baseline: torch.Tensor


@dataclass
class BiasReport:
    """The result of `bias_check`: ``groups`` maps each attribute (and, for several, the
    intersection ``"a x b"``) to its `GroupStats`; ``counterfactual`` is a `Counterfactual` when the
    protected attributes include input columns, ``interactions`` an `Interactions` when asked for.

    Example:
      >>> report = xattr.metrics.bias_check(model, x, {"sex": sex, "age": xattr.metrics.bins(age, 3)}, generator=0)
      >>> print(report.summary()); report.groups["sex"].dp_gap
    """

    n: int
    classes: int
    attributes: list
    groups: dict
    n_permutations: int
    accuracy: float | None = None
    counterfactual: Counterfactual | None = None
    interactions: Interactions | None = None
    mi: dict = field(init=False)
    p_values: dict = field(init=False)

    def __post_init__(self):
        self.mi = {k: g.mi for k, g in self.groups.items()}
        self.p_values = {k: g.p_value for k, g in self.groups.items()}

    def summary(self) -> str:
        lines = [f"bias check: {self.n} examples, {self.classes} classes"
                 + (f", accuracy {self.accuracy:.3f}" if self.accuracy is not None else "")]  # fmt: skip
        for key, g in self.groups.items():
            eo = f", equal-opportunity gap {g.eo_gap:.3f}" if g.eo_gap is not None else ""
            lm = f" (labels: {g.label_mi:.4f})" if g.label_mi is not None else ""
            lines.append(f"[{key}] MI(pred; group) = {g.mi:.4f} nats{lm}, p = {g.p_value:.3g}; "
                         f"demographic-parity gap {g.dp_gap:.3f}{eo}")  # fmt: skip
            c = _shown_class(g.pred_rate)
            for i, name in enumerate(g.names):
                acc = f", accuracy {float(g.accuracy[i]):.3f}" if g.accuracy is not None else ""
                lines.append(f"    {name:<28} n={int(g.size[i]):<5} P(pred={c}) = {float(g.pred_rate[i, c]):.3f}{acc}")
        cf = self.counterfactual
        if cf is not None:
            lines.append(f"counterfactual ({', '.join(cf.attributes)}; {len(cf.combos)} combinations): "
                         f"flip rate {cf.flip_rate:.4f}, examples with a flip {cf.any_flip_rate:.4f}, "
                         f"mean |change| {cf.mean_change:.4f}, max {cf.max_change:.4f}")  # fmt: skip
        inter = self.interactions
        if inter is not None:
            for p, name in enumerate(inter.protected):
                top = sorted(zip(inter.strength[p].tolist(), inter.others), reverse=True)[:3]
                lines.append(f"interactions of {name}: " + ", ".join(f"column {j}: {v:.4f}" for v, j in top))
        return "\n".join(lines)

    def plot(self, group: str | None = None):
        """A matplotlib Figure (Agg canvas, no pyplot): the rate of the shown class per group (sizes on the bars, label rates
        as dots), MI per grouping with p-values, and the counterfactual flip matrix."""
        from matplotlib.figure import Figure

        key = group if group is not None else list(self.groups)[-1]
        g = self.groups[key]
        c = _shown_class(g.pred_rate)
        panels = 3 if self.counterfactual is not None else 2
        fig = Figure(figsize=(5 * panels, 4))
        axes = fig.subplots(1, panels)
        pos = range(len(g.names))
        bars = axes[0].bar(pos, g.pred_rate[:, c].tolist(), color="tab:blue", label=f"P(pred={c})")
        for b, n in zip(bars, g.size.tolist()):
            axes[0].annotate(f"n={n}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
        if g.label_rate is not None:
            axes[0].plot(list(pos), g.label_rate[:, c].tolist(), "ko", label=f"P(label={c})")
        axes[0].set_xticks(list(pos), g.names, rotation=45, ha="right", fontsize=8)
        axes[0].set_title(f"{key}: gap {g.dp_gap:.3f}")
        axes[0].legend(fontsize=8)
        keys = list(self.groups)
        bars = axes[1].bar(range(len(keys)), [self.mi[k] for k in keys], color="tab:orange")
        for b, k in zip(bars, keys):
            axes[1].annotate(f"p={self.p_values[k]:.3g}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
        axes[1].set_xticks(range(len(keys)), keys, rotation=45, ha="right", fontsize=8)
        axes[1].set_title("MI(prediction; group), nats")
        if self.counterfactual is not None:
            cf = self.counterfactual
            im = axes[2].imshow(cf.flip_matrix.numpy(), cmap="viridis", vmin=0)
            axes[2].set_xticks(range(len(cf.combos)), cf.combos, rotation=45, ha="right", fontsize=7)
            axes[2].set_yticks(range(len(cf.combos)), cf.combos, fontsize=7)
            axes[2].set_title("flip rate: from (row) set to (column)")
            fig.colorbar(im, ax=axes[2])
        fig.tight_layout()
        return fig


def _shown_class(pred_rate: torch.Tensor) -> int:
    if pred_rate.shape[1] == 2:
        return 1
    return int((pred_rate.max(0).values - pred_rate.min(0).values).argmax())


def _gap(rates: torch.Tensor) -> float:
    """max - min over groups (NaNs left out), of class 1 for two classes, else the largest over classes."""
    r = rates[:, 1:2] if rates.shape[1] == 2 else rates
    hi = torch.where(r.isnan(), -math.inf, r).max(0).values
    lo = torch.where(r.isnan(), math.inf, r).min(0).values
    spans = torch.where(torch.isfinite(hi - lo), hi - lo, torch.zeros_like(hi))
    return float(spans.max())
