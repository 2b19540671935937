"""Bias checks of a classifier: mutual information with protected attributes, subgroup rates and
counterfactual flips (Kokhlikyan, Alsallakh, Wang, Miglani, Yang and Adkins 2022, "Bias Mitigation
Framework for Intersectional Subgroups in Neural Networks").

NOTE: [Counterfactual protected columns]
When the protected attributes are columns of a 2-D input x, the observed combinations of their
values are the G rows of ``unique(x[:, cols], dim=0)``. Every example is copied G times with its
protected columns set to each combination (the copy at its own combination is x itself and is
left out of the rates), and all G N copies are evaluated in calls of at most ``chunk_size``
rows, built chunk by chunk. A flip is a change of the predicted class; the change of the output
is the total-variation distance 0.5 sum_c |p'(c) - p(c)| between the predicted distributions
(softmax of logits; for one logit, the sigmoid: |p'(1) - p(1)|).

NOTE: [Interaction of two columns]
With ``interactions=True`` every protected column i is paired with every other column j of x.
With f(x) the predicted probability of the class predicted at x, b a baseline row (default: the
column means of x) and x^S the copy of x with the columns S set to b's values,
  Delta_ij(x) = f(x) - f(x^{i}) - f(x^{j}) + f(x^{i,j}),
the mixed second difference: 0 when the effect of moving x_i to b_i does not depend on x_j (f
additive in the two columns between x and b), whatever the size of either main effect. The
report holds mean_x |Delta_ij| (P, D - P), and for scale the main effects mean_x |f(x) - f(x^{k})|
of every column k. For two classes either class's probability gives the same |Delta|. All
N (D + P (D - P)) copies are evaluated in calls of at most ``chunk_size`` rows.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

from .._src.checks import warn_if_training
from .._src.nesting import new_call_inside_model, running_model
from .._src.progress import progress
from .._src.warn import warn
from ._bias_report import BiasReport, Counterfactual, GroupStats, Interactions, _gap
from ._mutual_info import codes, mi_from_table, permutation_p_values, table

_MAX_VALUES = 64  # more distinct values in a protected column: it is continuous, bin it


def _group_stats(ids, k, names, pred, c: int, labels, mi, p) -> GroupStats:
    size = torch.bincount(ids, minlength=k)
    sz = size.double()[:, None]
    pred_rate = table(ids, k, pred, c) / sz
    stats = GroupStats(names=names, size=size.cpu(), pred_rate=pred_rate.cpu(), mi=mi, p_value=p, dp_gap=_gap(pred_rate))
    if labels is not None:
        lab = table(ids, k, labels, c)
        stats.label_rate = (lab / sz).cpu()
        hit = (pred == labels).double()
        stats.accuracy = (torch.zeros(k, dtype=torch.float64, device=ids.device).index_add(0, ids, hit) / size.double()).cpu()
        both = table(ids, k, torch.where(pred == labels, labels, c), c + 1)[:, :c]  # correct, by class
        stats.recall = (both / lab).cpu()  # 0/0 = NaN: no example of the class in the group
        stats.label_mi = float(mi_from_table(lab))
        stats.eo_gap = _gap(stats.recall)
    return stats


def _distribution(out: torch.Tensor, outputs: str, what: str) -> torch.Tensor:
    """(rows, C) predicted distributions from model outputs (rows, C) or (rows,) / (rows, 1)."""
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise TypeError(f"{what} must return a floating tensor, got {type(out).__name__ if not isinstance(out, torch.Tensor) else out.dtype}")
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.ndim == 1:
        p1 = out.sigmoid() if outputs == "logits" else out
        return torch.stack([1 - p1, p1], 1).double()
    if out.ndim != 2:
        raise ValueError(f"{what} must return (N, C) class scores or (N,) / (N, 1) binary ones, got shape {tuple(out.shape)}")
    return (out.softmax(1) if outputs == "logits" else out).double()


def _attribute(values, name: str, n: int):
    t = torch.as_tensor(values.detach() if isinstance(values, torch.Tensor) else values)
    if t.ndim != 1:
        raise ValueError(f"protected[{name!r}] must be 1-D (N,), got shape {tuple(t.shape)}")
    ids, k = codes(t, f"protected[{name!r}]")
    if ids.shape[0] != n:
        raise ValueError(f"protected[{name!r}] has {ids.shape[0]} values for {n} examples of x")
    labels = [str(int(v)) for v in torch.unique(t.long()).tolist()]
    return ids, k, labels


@new_call_inside_model  # NOTE: [Attributions inside a model's forward] in nesting.py
def bias_check(
    model: Callable,
    x: torch.Tensor,
    protected: Mapping | None = None,
    *,
    labels=None,
    columns: Mapping[str, int] | None = None,
    outputs: str = "logits",
    n_permutations: int = 999,
    chunk_size: int = 4096,
    interactions: bool = False,
    baseline=None,
    generator=None,
    show_progress: bool = False,
) -> BiasReport:
    """Measures how a classifier's predictions depend on protected attributes.

    Args:
      model: an ``nn.Module`` or function mapping x (N, ...) to class scores (N, C), or to one
        binary score (N,) / (N, 1); called with gradients off, its mode left as it is.
      x: the inputs (N, ...), at least 2 examples.
      protected: dict name -> discrete values (N,) (integers; bin continuous ones with `bins`).
      labels: optional true classes (N,) in 0..C-1: adds label rates, accuracy, recall per group.
      columns: dict name -> column of a 2-D x holding that protected attribute (its values, at
        most 64 distinct ones, are read from x; a name given here is not also given in
        ``protected``). Turns on the counterfactual check (NOTE: [Counterfactual protected columns]).
      outputs: ``"logits"`` (softmax, or sigmoid for one score) or ``"probs"`` (used as they are).
      n_permutations: of the permutation test (NOTE: [Permutation test of mutual information] in
        ``_mutual_info.py``); 0 skips it (p-values NaN).
      chunk_size: most rows per model call in the counterfactual and interaction checks.
      interactions: also measure the interaction of each protected column with each other column
        of x against ``baseline`` (a row (D,); default the column means of x): NOTE: [Interaction
        of two columns]. Needs ``columns``.
      generator: int seed, torch.Generator or None (global generator) for the permutations.
      show_progress: progress bars (tqdm) over permutation blocks and model calls.

    Returns:
      A `BiasReport` with ``summary()`` and ``plot()``.

    Example:
      >>> report = xattr.metrics.bias_check(model, x, {"sex": sex}, labels=y, generator=0)
      >>> print(report.summary())
    """
    if outputs not in ("logits", "probs"):
        raise ValueError(f"outputs must be 'logits' or 'probs', got {outputs!r}")
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int) or n_permutations < 0:
        raise ValueError(f"n_permutations must be an int >= 0, got {n_permutations!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module or a function), got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    n = x.shape[0] if x.ndim else 0
    if n < 2:
        raise ValueError(f"bias_check needs at least 2 examples, got {n}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN or infinite values: the model's outputs, and so every statistic, would be NaN")
    for what, m in (("protected", protected), ("columns", columns)):
        if m is not None and not isinstance(m, Mapping):
            raise TypeError(f"{what} must be a dict {{name: {'values' if what == 'protected' else 'column'}}}, got {type(m).__name__}")
    protected = dict(protected or {})
    columns = dict(columns or {})
    if not protected and not columns:
        raise ValueError("give at least one protected attribute: protected={name: values} or columns={name: column}")
    both = sorted(set(protected) & set(columns))
    if both:
        raise ValueError(f"{both} are given both in protected and in columns: give each attribute once")
    if interactions and not columns:
        raise ValueError("interactions=True needs the protected attributes as input columns: pass columns=")
    if columns and x.ndim != 2:
        raise ValueError(f"columns needs a 2-D input x (N, D), got shape {tuple(x.shape)}")
    if len({col % x.shape[1] for col in columns.values() if isinstance(col, int)}) < len(columns):
        raise ValueError(f"columns must name a different column for each attribute, got {columns}")
    attrs = {}
    for name, values in protected.items():
        attrs[name] = _attribute(values, name, n)
    for name, col in columns.items():
        if isinstance(col, bool) or not isinstance(col, int) or not -x.shape[1] <= col < x.shape[1]:
            raise ValueError(f"columns[{name!r}] must be a column index of x (0..{x.shape[1] - 1}), got {col!r}")
        values, ids = torch.unique(x[:, col].detach(), return_inverse=True)
        if len(values) > _MAX_VALUES:
            raise ValueError(
                f"column {col} ({name!r}) has {len(values)} distinct values: a protected attribute must be "
                "discrete; bin it (xattr.metrics.bins) and pass the bins in protected=, or put binned values in x"
            )
        attrs[name] = (ids, len(values), [f"{v:.4g}" for v in values.tolist()])
    warn_if_training(model)
    with running_model(no_grad=True):  # marks the model's region (NOTE: [Attributions inside a model's forward])
        probs = _distribution(model(x), outputs, "the model")
    if probs.shape[0] != n:
        raise ValueError(f"the model returned {probs.shape[0]} rows for {n} examples")
    classes = probs.shape[1]
    pred = probs.argmax(1)
    device = pred.device
    if labels is not None:
        lab_ids = torch.as_tensor(labels)
        codes(lab_ids, "labels")  # integer values, not empty
        lab_ids = lab_ids.long().reshape(-1).to(device)
        if lab_ids.shape[0] != n or (lab_ids < 0).any() or (lab_ids >= classes).any():
            raise ValueError(f"labels must be {n} class indices in 0..{classes - 1}, got shape {tuple(lab_ids.shape)}")
    else:
        lab_ids = None
    names = list(attrs)
    groupings = {name: (ids.to(device), k, [f"{name}={v}" for v in vals]) for name, (ids, k, vals) in attrs.items()}
    if len(names) > 1:
        combos, inter = torch.unique(torch.stack([groupings[m][0] for m in names], 1), dim=0, return_inverse=True)
        inter_names = [", ".join(f"{m}={attrs[m][2][v]}" for m, v in zip(names, row)) for row in combos.tolist()]
        groupings[" x ".join(names)] = (inter, len(combos), inter_names)
    mis, ps = permutation_p_values(pred, [(ids, k) for ids, k, _ in groupings.values()], classes, n_permutations, generator, show_progress)
    groups = {key: _group_stats(ids, k, gn, pred, classes, lab_ids, mi, p)
              for (key, (ids, k, gn)), mi, p in zip(groupings.items(), mis, ps)}  # fmt: skip
    accuracy = float((pred == lab_ids).double().mean()) if lab_ids is not None else None
    cf = None
    if columns:
        cf = _counterfactual(model, x, columns, probs, pred, outputs, chunk_size, show_progress)
    inter = _interactions(model, x, columns, baseline, probs, outputs, chunk_size, show_progress) if interactions else None
    return BiasReport(n=n, classes=classes, attributes=names, groups=groups, n_permutations=n_permutations,
                      accuracy=accuracy, counterfactual=cf, interactions=inter)  # fmt: skip


def _counterfactual(model, x, columns, probs, pred, outputs, chunk_size, show_progress) -> Counterfactual:
    """NOTE: [Counterfactual protected columns]."""
    names = list(columns)
    cols = torch.tensor([columns[m] % x.shape[1] for m in names], device=x.device)
    combos, own = torch.unique(x[:, cols].detach(), dim=0, return_inverse=True)
    n, g = x.shape[0], combos.shape[0]
    combo_names = [", ".join(f"{m}={v:.4g}" for m, v in zip(names, row)) for row in combos.tolist()]
    if g == 1:
        warn(f"the protected columns {names} take one combination of values in x: nothing to change, no counterfactual")
        nan = math.nan
        z = torch.zeros(1, 1, dtype=torch.float64)
        return Counterfactual(names, combo_names, combos.cpu(), nan, nan, nan, nan, z, z.clone())
    copies = _evaluate(model, lambda r: _with(x, r % n, cols, combos[r // n]), g * n, x.device, outputs, chunk_size,
                       show_progress, "counterfactuals")  # fmt: skip
    cf_pred = copies.argmax(1).reshape(g, n)
    change = 0.5 * (copies.reshape(g, n, -1) - probs[None]).abs().sum(-1)
    own = own.to(pred.device)
    other = torch.arange(g, device=pred.device)[:, None] != own[None, :]  # (G, N)
    flips = (cf_pred != pred[None, :]) & other
    change = torch.where(other, change, torch.zeros_like(change))
    count = torch.bincount(own, minlength=g).double()[:, None]
    flip_matrix = torch.zeros(g, g, dtype=torch.float64, device=pred.device).index_add(0, own, flips.T.double()) / count
    change_matrix = torch.zeros(g, g, dtype=torch.float64, device=pred.device).index_add(0, own, change.T) / count
    pairs = int(other.sum())
    return Counterfactual(
        attributes=names, combos=combo_names, values=combos.cpu(),
        flip_rate=int(flips.sum()) / pairs, any_flip_rate=float(flips.any(0).double().mean()),
        mean_change=float(change.sum()) / pairs, max_change=float(change.max()),
        flip_matrix=flip_matrix.cpu(), change_matrix=change_matrix.cpu(),
    )  # fmt: skip


def _with(x: torch.Tensor, examples: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Copies of x's rows ``examples`` with columns ``cols`` set to ``values`` (one row each)."""
    copy = x.detach()[examples].clone()
    copy[:, cols] = values.to(copy.dtype)
    return copy


def _evaluate(model, make_rows, rows: int, device, outputs: str, chunk_size: int, show_progress: bool, desc: str):
    """Predicted distributions (rows, C) float64 of ``make_rows(r)`` for all r, chunk by chunk."""
    out = []
    spans = [(s, min(s + chunk_size, rows)) for s in range(0, rows, chunk_size)]
    with running_model(no_grad=True):
        for s, e in progress(show_progress, spans, total=len(spans), desc=desc, unit="call"):
            r = torch.arange(s, e, device=device)
            p = _distribution(model(make_rows(r)), outputs, "the model")
            if p.shape[0] != e - s:
                raise ValueError(f"the model returned {p.shape[0]} rows for {e - s} inputs")
            out.append(p)
    return torch.cat(out)


def _interactions(model, x, columns, baseline, probs, outputs, chunk_size, show_progress) -> Interactions:
    """NOTE: [Interaction of two columns]."""
    n, d = x.shape
    prot = [columns[m] % d for m in columns]
    others = [j for j in range(d) if j not in prot]
    if baseline is None:
        b = x.detach().mean(0)
    else:
        b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device).reshape(-1)
        if b.shape[0] != d:
            raise ValueError(f"baseline must be one row of {d} values (one per column of x), got shape {tuple(b.shape)}")
    masks = torch.eye(d, dtype=torch.bool, device=x.device)  # variant k < D: column k at the baseline
    pairs = torch.zeros(len(prot), len(others), d, dtype=torch.bool, device=x.device)
    for p, i in enumerate(prot):
        pairs[p, :, i] = True
        pairs[p, torch.arange(len(others)), others] = True
    masks = torch.cat([masks, pairs.reshape(-1, d)])
    v = masks.shape[0]

    def rows(r):
        m = masks[r // n]
        return torch.where(m, b, x.detach()[r % n])

    f = _evaluate(model, rows, v * n, x.device, outputs, chunk_size, show_progress, "interactions")
    cls = probs.argmax(1)
    f = f.reshape(v, n, -1).gather(2, cls.reshape(1, n, 1).expand(v, n, 1))[..., 0]  # (V, N)
    f0 = probs.gather(1, cls[:, None])[:, 0]
    single, both = f[:d], f[d:].reshape(len(prot), len(others), n)
    delta = f0 - single[prot][:, None] - single[others][None] + both
    return Interactions(
        protected=list(columns), others=others, strength=delta.abs().mean(-1).cpu(),
        main=(f0 - single).abs().mean(-1).cpu(), baseline=b.detach().cpu(),
    )  # fmt: skip
