"""Entropy and mutual information of discrete variables, and its differentiable counterpart.

NOTE: [Plug-in mutual information]
For discrete A and B observed on N examples, the contingency table n_ab (how many examples have
A = a and B = b) with margins n_a, n_b gives the plug-in (maximum-likelihood) estimate

  I(A; B) = sum_{a,b: n_ab > 0} (n_ab / N) log(N n_ab / (n_a n_b)),
  H(A)    = -sum_a (n_a / N) log(n_a / N),

in nats (``base`` divides by log(base)). A variable given as (N, k) is one joint variable whose
values are the rows: MI with ``(sex, age_band)`` is the MI with the intersectional subgroup. The
table is built by one ``bincount`` over the codes ``a * K_b + b``, so there is no Python loop
over groups, and everything is float64. N n_ab and n_a n_b are exact integers in float64, so an
exactly independent table (n_ab = n_a n_b / N) gives exactly 0. The plug-in estimate is biased
upwards: with K_a and K_b values and independent variables its expectation is about
(K_a - 1)(K_b - 1) / (2N). ``correction="miller_madow"`` adds Miller and Madow's first-order
term (m - 1) / (2N) to every entropy, m the number of occupied cells, so that
  I_MM = I + (m_a + m_b - m_ab - 1) / (2N),
which may come out slightly negative for independent variables (it is not clipped).

NOTE: [Soft mutual information]
A classifier's prediction is a distribution p_i(y) (its softmax). With Y_hat drawn from that
distribution for example i and A the example's group, the joint distribution of (A, Y_hat) over
the data is p(a, y) = (1/N) sum_{i in a} p_i(y), so
  p(a) = n_a / N,   p(y | a) = mean_{i in a} p_i(y),   p(y) = mean_i p_i(y),
  I(A; Y_hat) = sum_a p(a) KL(p(. | a) || p(.)).
It is differentiable in the probabilities (the group means are an ``index_add``), which makes it
a training penalty (Kokhlikyan et al. 2022, "Bias Mitigation Framework for Intersectional
Subgroups in Neural Networks"): ``loss + lam * soft_mutual_information(softmax(logits), ids)``.
For one-hot probabilities p(a, y) is the contingency table over N, and the value is the plug-in
MI of the hard predictions. Cells with p(y | a) = 0 add 0 and pass a zero gradient (the
logarithms are clamped at the dtype's smallest normal number, so 0 * log 0 is never NaN).

NOTE: [Permutation test of mutual information]
Under the null hypothesis that B (in `bias_check`, the prediction) is independent of A (a
grouping), every reordering of B over the examples is as likely as the observed one. B is
permuted ``n_permutations`` times (in `bias_check`, the same permutations for every grouping)
and the plug-in MI recomputed for each: p = (1 + #{null MI >= observed MI}) / (1 + n_permutations), the null
counted as reaching the observed value within 1e-12 * max(1, MI) (equal tables in another
order give MIs that differ in the last bits). The permutations are ``argsort`` of uniform draws
(n, N) from one CPU generator seeded from ``generator``, drawn in blocks of at most 2**22
numbers (`permutations`); all contingency tables of a block come from one ``bincount``.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

from .._src.progress import progress
from .._src.sampling import streams

_TRANSFORMED = torch._C._functorch.maybe_current_level


def _as_tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{what} must be a tensor (or an array or list) of integers, got {type(x).__name__}") from err


def codes(x, what: str = "values") -> tuple[torch.Tensor, int]:
    """Discrete values (N,) or (N, k) as codes (N,) in 0..K-1 (rows of (N, k) as one value) and K."""
    t = _as_tensor(x, what)
    if t.ndim not in (1, 2):
        raise ValueError(f"{what} must be (N,) or (N, k) (k columns = one joint variable), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{what} is empty: mutual information needs at least one example")
    if t.is_complex():
        raise TypeError(f"{what} must hold integers, got complex values ({t.dtype})")
    if t.dtype == torch.bool:
        t = t.long()
    elif t.is_floating_point():
        if not torch.isfinite(t).all() or not torch.equal(t, t.round()):
            raise ValueError(
                f"{what} must hold integer values (discrete categories), got non-integer {t.dtype} values: "
                "bin a continuous variable first, e.g. xattr.metrics.bins(x, 4)"
            )
        t = t.long()
    if t.ndim == 2:
        if t.shape[1] == 0:
            return torch.zeros(t.shape[0], dtype=torch.long, device=t.device), 1
        values, inv = torch.unique(t, dim=0, return_inverse=True)
    else:
        values, inv = torch.unique(t, return_inverse=True)
    return inv.reshape(-1), int(values.shape[0])


def _pair(a, b) -> tuple[torch.Tensor, int, torch.Tensor, int]:
    ca, ka = codes(a, "a")
    cb, kb = codes(b, "b")
    if ca.shape[0] != cb.shape[0]:
        raise ValueError(f"a and b must have one value per example each, got {ca.shape[0]} and {cb.shape[0]} examples")
    return ca, ka, cb.to(ca.device), kb


def table(ca: torch.Tensor, ka: int, cb: torch.Tensor, kb: int) -> torch.Tensor:
    """Contingency tables (..., K_a, K_b) float64 of codes (..., N): one bincount for all leading rows."""
    lead = ca.shape[:-1] if ca.ndim > cb.ndim else cb.shape[:-1]
    ca, cb = ca.expand(*lead, ca.shape[-1]), cb.expand(*lead, cb.shape[-1])
    rows = math.prod(lead)
    offset = torch.arange(rows, device=ca.device).reshape(*lead, 1) * (ka * kb)
    flat = (offset + ca * kb + cb).reshape(-1)
    return torch.bincount(flat, minlength=rows * ka * kb).reshape(*lead, ka, kb).double()


def mi_from_table(t: torch.Tensor) -> torch.Tensor:
    """Plug-in MI in nats of contingency tables (..., K_a, K_b) (NOTE: [Plug-in mutual information])."""
    n = t.sum((-2, -1), keepdim=True)
    outer = t.sum(-1, keepdim=True) * t.sum(-2, keepdim=True)
    ratio = torch.where(t > 0, n * t / outer.clamp_min(1), torch.ones_like(t))
    return (t / n * ratio.log()).sum((-2, -1)).clamp_min(0.0)


def _entropy_counts(counts: torch.Tensor) -> torch.Tensor:
    n = counts.sum(-1, keepdim=True)
    p = counts / n
    return -torch.special.xlogy(p, p).sum(-1)


def _scale(base) -> float:
    if base is None:
        return 1.0
    if isinstance(base, bool) or not isinstance(base, numbers.Real) or not base > 0 or base == 1:
        raise ValueError(f"base must be a positive number other than 1 (2 for bits, e for nats), or None, got {base!r}")
    return 1.0 / math.log(base)


def _check_correction(correction) -> None:
    if correction not in (None, "miller_madow"):
        raise ValueError(f"correction must be None or 'miller_madow', got {correction!r}")


def entropy(a, *, correction: str | None = None, base: float | None = None) -> float:
    """Plug-in entropy H(A) of discrete values (N,) or (N, k) (rows as one joint value), in nats.

    ``correction="miller_madow"`` adds (m - 1) / (2N), m the number of values observed;
    ``base`` changes the unit (2: bits). See NOTE: [Plug-in mutual information].

    Example:
      >>> xattr.metrics.entropy(sex, base=2)                  # a float, in bits
    """
    _check_correction(correction)
    scale = _scale(base)
    ca, ka = codes(a, "a")
    counts = torch.bincount(ca, minlength=ka).double()
    h = float(_entropy_counts(counts))
    if correction == "miller_madow":
        h += (int((counts > 0).sum()) - 1) / (2 * ca.shape[0])
    return h * scale


def mutual_information(a, b, *, correction: str | None = None, base: float | None = None) -> float:
    """Plug-in mutual information I(A; B) of two discrete variables, in nats by default.

    Args:
      a, b: integer (or bool, or integer-valued float) tensors, arrays or lists, each (N,) or
        (N, k); k columns are one joint variable (an intersectional subgroup).
      correction: None for the plug-in estimate, or ``"miller_madow"`` for its first-order bias
        correction (can be slightly negative; NOTE: [Plug-in mutual information]).
      base: the logarithm's base (2 for bits); None for nats.

    Returns:
      A float, computed in float64 from the contingency table (one ``bincount``, no loop).
      Equals ``sklearn.metrics.mutual_info_score(a, b)`` for 1-D inputs.

    Example:
      >>> xattr.metrics.mutual_information(sex, model(x).argmax(1))   # a float, in nats
    """
    _check_correction(correction)
    scale = _scale(base)
    ca, ka, cb, kb = _pair(a, b)
    t = table(ca, ka, cb, kb)
    mi = float(mi_from_table(t))
    if correction == "miller_madow":
        m_ab = int((t > 0).sum())
        mi += (ka + kb - m_ab - 1) / (2 * ca.shape[0])  # every value of a and b is observed
    return mi * scale


_AVERAGES = {
    "arithmetic": lambda x, y: (x + y) / 2,
    "geometric": lambda x, y: math.sqrt(x * y),
    "min": min,
    "max": max,
}


def normalized_mutual_information(a, b, *, average: str = "arithmetic") -> float:
    """I(A; B) / mean(H(A), H(B)) in [0, 1], plug-in estimates.

    ``average`` is the mean of the two entropies: ``"arithmetic"`` (the default, as scikit-learn's
    ``normalized_mutual_info_score``), ``"geometric"``, ``"min"`` or ``"max"``. As in
    scikit-learn, two constant variables give 1 and independent ones (MI = 0) give 0.

    Example:
      >>> xattr.metrics.normalized_mutual_information(sex, model(x).argmax(1))   # a float in [0, 1]
    """
    if average not in _AVERAGES:
        raise ValueError(f"average must be one of {sorted(_AVERAGES)}, got {average!r}")
    ca, ka, cb, kb = _pair(a, b)
    if ka == kb == 1:
        return 1.0
    t = table(ca, ka, cb, kb)
    mi = float(mi_from_table(t))
    if mi == 0.0:
        return 0.0
    ha, hb = float(_entropy_counts(t.sum(-1))), float(_entropy_counts(t.sum(-2)))
    return min(1.0, mi / _AVERAGES[average](ha, hb))


def subgroups(*attributes, names: Sequence[str] | None = None, **named) -> tuple[torch.Tensor, list[str]]:
    """Intersectional subgroup ids from several discrete attributes.

    Args:
      *attributes: integer tensors (N,) (e.g. sex, and an age band from `bins`), or one dict
        name -> tensor; or, instead, keywords ``subgroups(sex=s, age=band)``.
      names: the attributes' names (default: the dict's keys or keywords, else ``a0, a1, ...``).

    Returns:
      ``(ids, names)``: ids (N,) long in 0..G-1, one per combination of values that occurs, in
      lexicographic order of the values; ``names[g]`` reads like ``"sex=1, age=0"``.

    Example:
      >>> ids, names = xattr.metrics.subgroups(sex=sex, age=xattr.metrics.bins(age, 3))
      >>> names[ids[0]]                        # e.g. "sex=0, age=1"
    """
    if named:
        if attributes or names is not None:
            raise ValueError("give the attributes either as keywords or as positional tensors (with names=), not both")
        attributes = (named,)
    if len(attributes) == 1 and isinstance(attributes[0], dict):
        if names is not None:
            raise ValueError("give names either as the dict's keys or as names=, not both")
        names, attributes = list(attributes[0]), tuple(attributes[0].values())
    if not attributes:
        raise ValueError("subgroups needs at least one attribute")
    names = [f"a{i}" for i in range(len(attributes))] if names is None else [str(n) for n in names]
    if len(names) != len(attributes):
        raise ValueError(f"got {len(names)} names for {len(attributes)} attributes")
    cols = []
    for name, attr in zip(names, attributes):
        t = _as_tensor(attr, f"attribute {name!r}")
        if t.ndim != 1:
            raise ValueError(f"attribute {name!r} must be 1-D (N,), got shape {tuple(t.shape)}")
        codes(t, f"attribute {name!r}")  # checks: integer values, not empty
        cols.append(t.long())
    if len({c.shape[0] for c in cols}) != 1:
        raise ValueError(f"the attributes must have one value per example each, got lengths {[c.shape[0] for c in cols]}")
    combos, ids = torch.unique(torch.stack([c.to(cols[0].device) for c in cols], 1), dim=0, return_inverse=True)
    labels = [", ".join(f"{n}={int(v)}" for n, v in zip(names, row)) for row in combos.tolist()]
    return ids, labels


def bins(x, edges_or_n, *, return_edges: bool = False):
    """Discretises a continuous variable (N,) into bin ids 0..m (long).

    ``edges_or_n`` is either the number of bins n (equal-frequency bins, as far as ties allow:
    the interior edges are the k/n quantiles of x, k = 1..n-1, taken as observed values (the
    ``"lower"`` quantile), with duplicates and an edge at the maximum dropped, so no bin is empty) or the increasing interior edges
    e_1 < ... < e_m themselves. Intervals are closed on the right, as ``pandas.cut``'s: bin k
    holds e_k < x <= e_{k+1}, bin 0 is ``x <= e_1``, bin m is ``x > e_m``. With
    ``return_edges`` also returns the edges (float64).

    Example:
      >>> band = xattr.metrics.bins(age, 3)                   # (N,) ids 0..2, equal-frequency bins
      >>> band = xattr.metrics.bins(age, [30.0, 50.0])        # (N,) ids 0..2: <= 30, <= 50, above
    """
    t = _as_tensor(x, "x")
    if t.ndim != 1 or t.shape[0] == 0:
        raise ValueError(f"bins needs a non-empty 1-D tensor (N,), got shape {tuple(t.shape)}")
    v = t.double()
    if not torch.isfinite(v).all():
        raise ValueError("bins needs finite values")
    if isinstance(edges_or_n, numbers.Integral) and not isinstance(edges_or_n, bool):
        n = int(edges_or_n)
        if n < 1:
            raise ValueError(f"the number of bins must be >= 1, got {n}")
        qs = torch.arange(1, n, dtype=torch.float64, device=v.device) / n
        edges = torch.unique(torch.quantile(v, qs, interpolation="lower")) if n > 1 else v.new_zeros(0)
        edges = edges[edges < v.max()]
    else:
        edges = _as_tensor(edges_or_n, "edges").double().to(v.device)
        if edges.ndim != 1 or not torch.isfinite(edges).all() or (edges.diff() <= 0).any():
            raise ValueError(f"edges must be a 1-D strictly increasing sequence of finite numbers, got {edges_or_n!r}")
    ids = torch.bucketize(v, edges)  # the number of edges < x
    return (ids, edges) if return_edges else ids


def soft_mutual_information(probs: torch.Tensor, groups, *, base: float | None = None) -> torch.Tensor:
    """Differentiable I(A; Y_hat) between groups and a classifier's predicted distribution.

    ``p(y | a)`` is the mean of ``probs`` over group a, ``I = sum_a p(a) KL(p(y | a) || p(y))``
    (NOTE: [Soft mutual information]). Equals `mutual_information(groups, argmax)` when ``probs``
    are one-hot.

    Args:
      probs: (N, C) class probabilities (e.g. ``logits.softmax(-1)``); rows must sum to 1.
      groups: discrete group values (N,) or (N, k), e.g. `subgroups`' ids. Not differentiated.
      base: the logarithm's base; None for nats.

    Returns:
      A 0-d tensor in ``probs``' dtype, with gradients to ``probs``: the training penalty
      ``loss + lam * soft_mutual_information(logits.softmax(-1), ids)``.

    Example:
      >>> ids, names = xattr.metrics.subgroups(sex=sex, age=band)
      >>> loss = F.cross_entropy(logits, y) + 0.1 * xattr.metrics.soft_mutual_information(logits.softmax(-1), ids)
    """
    scale = _scale(base)
    if not isinstance(probs, torch.Tensor) or not probs.is_floating_point() or probs.ndim != 2:
        got = f"{probs.dtype} tensor of shape {tuple(probs.shape)}" if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"probs must be a floating (N, C) tensor of class probabilities, got {got}")
    ids, k = codes(groups, "groups")
    if ids.shape[0] != probs.shape[0]:
        raise ValueError(f"groups has {ids.shape[0]} values for {probs.shape[0]} rows of probs")
    if _TRANSFORMED() is None:  # a value check needs concrete numbers, not a transform's tracers
        eps = torch.finfo(probs.dtype).eps
        sums = probs.detach().sum(1)
        if not torch.isfinite(probs.detach()).all():
            raise ValueError("probs hold NaN or infinite values: pass finite probabilities (apply softmax to finite logits)")
        if (probs.detach() < 0).any() or ((sums - 1).abs() > max(1e-6, 64 * eps * probs.shape[1])).any():
            raise ValueError("probs must be probabilities: non-negative rows that sum to 1 (apply softmax to logits)")
    ids = ids.to(probs.device)
    counts = torch.bincount(ids, minlength=k).to(probs.dtype)
    cond = torch.zeros(k, probs.shape[1], dtype=probs.dtype, device=probs.device).index_add(0, ids, probs)
    cond = cond / counts[:, None]
    marg = probs.mean(0)
    tiny = torch.finfo(probs.dtype).tiny
    kl = torch.where(cond > 0, cond * (cond.clamp_min(tiny).log() - marg.clamp_min(tiny).log()), torch.zeros_like(cond))
    return (counts / probs.shape[0] * kl.sum(1)).sum() * scale


def permutations(n_permutations: int, n: int, generator):
    """Blocks (b, n) of permutations of range(n), drawn as NOTE: [Permutation test of mutual
    information] says; ``generator``: an int seed, a torch.Generator or None (global)."""
    (seed,) = streams(generator, 1)
    g = None if seed is None else torch.Generator().manual_seed(seed)
    block = max(1, (1 << 22) // max(1, n))
    for s in range(0, n_permutations, block):
        yield torch.rand(min(block, n_permutations - s), n, generator=g).argsort(1)


def mutual_information_test(a, b, *, n_permutations: int = 999, generator=None) -> tuple[float, float]:
    """Plug-in I(A; B) in nats and its permutation-test p-value (B permuted).

    p = (1 + #{permutations with MI >= observed}) / (1 + n_permutations), so never 0
    (NOTE: [Permutation test of mutual information]). ``generator``: an int seed, a
    torch.Generator or None (torch's global generator).

    Example:
      >>> mi, p = xattr.metrics.mutual_information_test(sex, model(x).argmax(1), n_permutations=999, generator=0)
    """
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int) or n_permutations < 1:
        raise ValueError(f"n_permutations must be a positive int, got {n_permutations!r}")
    ca, ka, cb, kb = _pair(a, b)
    (mi,), (p,) = permutation_p_values(cb, [(ca, ka)], kb, n_permutations, generator)
    return mi, p


def permutation_p_values(pred, groupings, classes: int, n_permutations: int, generator, show_progress: bool = False):
    """Observed MI and permutation p-value per grouping (ids, G) with codes ``pred`` (N,) in
    0..classes-1, which are permuted."""
    observed = [float(mi_from_table(table(ids, k, pred, classes))) for ids, k in groupings]
    if n_permutations == 0:
        return observed, [math.nan] * len(groupings)
    hits = [0] * len(groupings)
    blocks = permutations(n_permutations, pred.shape[0], generator)
    total = -(-n_permutations // max(1, (1 << 22) // max(1, pred.shape[0])))
    for perm in progress(show_progress, blocks, total=total, desc="permutations", unit="block"):
        shuffled = pred[perm.to(pred.device)]
        for j, (ids, k) in enumerate(groupings):
            null = mi_from_table(table(ids, k, shuffled, classes))
            hits[j] += int((null >= observed[j] - 1e-12 * max(1.0, observed[j])).sum())
    return observed, [(1 + h) / (1 + n_permutations) for h in hits]
