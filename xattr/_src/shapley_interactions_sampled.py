"""Shapley interaction indices estimated from sampled coalitions: by regression (the default,
NOTE: [Interaction regression] in interaction_regression.py), stratified by size (SHAP-IQ style)
or by KernelSHAP-IQ (NOTE: [KernelSHAP-IQ] in kernelshap_iq.py).

NOTE: [Stratified interaction sampling]
Every index of NOTE: [Interaction indices as weights on the game] (interaction_indices.py) is a
weighted sum over all coalitions, I(T) = sum_L gamma_j(|L|, |L & T|) v(L), whose weights depend on
the coalition's size s and its overlap with T only (Fumagalli et al. 2023 write SII, STII and
the other cardinal indices so; FSII and k-SII, linear and symmetric, are of the same form). The
coalitions are split into strata by size, and of the budget of ``n_samples`` coalitions:
  * the empty and the full coalition are always used (v({}) is evaluated, v(all) is f(x));
  * the strata are enumerated whole from the outside in (sizes 1 and F-1 first: the fewest
    coalitions and, under the Shapley kernel, the most weight), as long as the share of the
    budget that the kernel q(s) ~ 1 / (s (F - s)) gives a stratum covers it, and every stratum
    not enumerated can still get a sample; with ``n_samples >= 2^F`` every stratum is enumerated
    and the result is the exact one;
  * each remaining stratum s gets M_s >= 1 coalitions drawn uniformly among its C(F, s), with
    replacement (M_s: one each, the rest of the budget in proportion to q(s), by largest
    remainders), and contributes
        c G_j(s) + C(F, s) / M_s sum_{m=1..M_s} gamma_j(s, |L_m & T|) (v(L_m) - c),
    where G_j(s) = sum_{|L| = s} gamma_j(s, |L & T|) is known exactly (`stratum_totals`) and
    c = (v({}) + v(all)) / 2 is a constant per example and output: a control variate that
    takes the coalitions' common level out of the sampled sum without biasing it.
So each stratum's sum, and the estimate, is unbiased, with a standard error ~ 1 / sqrt(M_s). It is
exactly efficient for every draw (STII, FSII, k-SII): the index of the game that is 1 at one
proper coalition L and 0 elsewhere sums to 0 over the sets of 1..k features, so L's weights
gamma_j(|L|, |L & T|) sum to 0 over all T and orders, and so do the strata's totals G_j(s): every
term but v({}) and v(all) drops out of the sum. An
example's coalitions are drawn from its own generator (NOTE: [Explicit randomness]): as the
argsort of (M, F_e) iid uniforms, a feature in the coalition when its rank is below the
stratum's size, so an example gets the same coalitions in any batch and for any chunk size.
All go through one `evaluate` call; the coalitions (rows, n_samples, F) are held as bool.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from . import kernelshap_iq
from . import tree as T
from .gradients import attribution_fn
from .checks import check_model_fn
from .interaction_indices import Interactions, check_index, combinations, gamma_table, stratum_totals
from .interaction_regression import check_terms, n_terms, regression
from .kernel_sampling import paired_coalitions
from .masks import FeatureSet, feature_sets, widen
from .perturb import as_floating, evaluate
from .sampling import row_seeds, streams
from .shapley import _prepare
from .shapley_interactions import combine, spread
from .surrogate_fits import fit_budget
from .warn import warn

ESTIMATORS = ("regression", "stratified", "kernelshap_iq")


def shapley_interaction_sampling(
    f: Callable,
    *,
    index: str = "k-SII",
    order: int = 2,
    n_samples: int = 1024,
    estimator: str = "regression",
    baselines: Any = 0.0,
    feature_mask: Any = None,
    argnums: int | Sequence[int] = 0,
    generator=None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool = False,
) -> Callable:
    """Shapley interaction indices estimated from ``n_samples`` coalitions per example.

    The indices of `shapley_interactions` ("k-SII", "SII", "STII", "FSII", sets of 1..``order``
    features). ``estimator="regression"`` (default): KernelSHAP's paired coalitions (the outer
    sizes enumerated, the rest drawn with their complements), the Faith-SHAP weighted least
    squares fit of a degree-``order`` polynomial to them (FSII itself), and for the other indices
    the polynomial's exact index plus the residual's, estimated from the same coalitions (NOTE:
    [Interaction regression]); slightly biased, far lower error (see the docs). ``"stratified"``:
    each index as a weighted sum over the coalitions, estimated stratum by stratum of coalition
    size with a control variate (NOTE: [Stratified interaction sampling]); unbiased.
    ``"kernelshap_iq"`` (SII and k-SII only): KernelSHAP-IQ (Fumagalli et al. 2024), SII fitted
    order by order to the residual of the lower orders with each order's kernel, on the same
    paired coalitions with the border sizes 1..order-1 and F-order+1..F-1 enumerated; k-SII
    folded from it (NOTE: [KernelSHAP-IQ] in kernelshap_iq.py). All three are exact when
    ``n_samples >= 2^F``; exactly efficient for STII, FSII and k-SII. Cost:
    ``B (n_samples - 1)`` perturbed rows at most (the full coalition is f(x)).

    Args (beyond the perturbation methods' shared ones, see ablation.py):
      index, order: as for `shapley_interactions`.
      n_samples: coalitions per example, the empty and the full one included. "stratified":
        at least F + 1 (one per coalition size) unless ``2^F`` is fewer. "regression": any >= 2;
        below about ``p + 2`` (p the sets of 1..order features) the fit is singular and its
        minimum-norm solution is used. "kernelshap_iq": at least 2 plus the coalitions of sizes
        1..order-1 and F-order+1..F-1 (unless ``2^F`` is fewer); singular fits as "regression".
      estimator: "regression", "stratified" or "kernelshap_iq".
      generator: int seed, ``torch.Generator`` or None (NOTE: [Explicit randomness]); each
        example draws its own coalitions.

    Returns:
      ``fn(*args, baselines=..., feature_mask=...)`` giving an `Interactions` (see
      `shapley_interactions`).

    Example:
      >>> inter = xattr.shapley_interaction_sampling(xattr.target(model, 1), n_samples=4096, generator=0)(x)
    """
    check_model_fn(f, "shapley_interaction_sampling")
    index = check_index(index, order)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2 (the empty and the full coalition at least), got {n_samples!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator == "kernelshap_iq":
        kernelshap_iq.check_index(index)
    nums, as_tuple = T.normalize_argnums(argnums)

    def fn(*args, baselines=baselines, feature_mask=feature_mask):
        selected, masks, n, base, out, aggregate = _prepare(f, args, nums, as_tuple, baselines, feature_mask)
        rows, device = out.shape[0], out.device
        sets = feature_sets(masks, n, rows)
        if estimator == "kernelshap_iq":  # NOTE: [KernelSHAP-IQ] in kernelshap_iq.py
            return kernelshap_iq.interactions(f, args, nums, index, order, n_samples, generator, masks, n, base, out,
                                              aggregate, sets, chunk_size, memory_budget, show_progress)  # fmt: skip
        if estimator == "regression":
            return _regression(f, args, nums, index, order, n_samples, generator, masks, n, base, out, aggregate, sets,
                               chunk_size, memory_budget, show_progress)  # fmt: skip
        plans = [plan(s.n, n_samples) for s in sets]
        (stream,) = streams(generator, 1)
        seeds = None if stream is None else row_seeds(stream, rows)
        drawn = [_coalitions(s, p, rows, stream is not None, s.pick(seeds), device) for s, p in zip(sets, plans)]
        z = widen([d[0] for d in drawn], sets, n, rows)
        vals = as_floating(evaluate(f, args, nums, masks=masks, baselines=base, coalitions=z, aggregate=aggregate,
                                    chunk_size=chunk_size, memory_budget=memory_budget, show_progress=show_progress))  # fmt: skip
        parts = [_estimate(index, order, s.pick(vals), s.pick(out), zs, sizes, p) for s, (zs, sizes), p in zip(sets, drawn, plans)]
        by_order = {j: spread([p[j] for p in parts], sets, n, j, rows).to(vals.dtype) for j in range(1, order + 1)}
        return Interactions(index, order, n, by_order, out, vals[:, 0])  # copy 0: the empty coalition

    return attribution_fn(fn, f)


def _regression(f, args, nums, index, order, n_samples, generator, masks, n, base, out, aggregate, sets, chunk_size,
                memory_budget, show_progress) -> Interactions:  # fmt: skip
    """``estimator="regression"``: NOTE: [Interaction regression] in interaction_regression.py."""
    rows, device = out.shape[0], out.device
    for s in sets:
        check_terms(s.n, order)
    short = [s.n for s in sets if n_samples - 2 < n_terms(s.n, order) and n_samples < 2**s.n]
    if short:
        warn(
            f"n_samples={n_samples} leaves fewer coalitions than the {n_terms(max(short), order)} sets of 1..{order} of "
            f"F={max(short)} features that estimator='regression' fits: the fit is singular and its minimum-norm "
            f"solution is used. Use n_samples >= {n_terms(max(short), order) + 2} (or more) for a determined fit",
            UserWarning,
        )
    (stream,) = streams(generator, 1)
    seeds = None if stream is None else row_seeds(stream, rows)
    budget = fit_budget(memory_budget, device)
    drawn = [paired_coalitions(s, rows, n_samples, stream, seeds, device, torch.float64, budget) for s in sets]
    z = widen([d[0] for d in drawn], sets, n, rows)
    vals = as_floating(evaluate(f, args, nums, masks=masks, baselines=base, coalitions=z, aggregate=aggregate,
                                chunk_size=chunk_size, memory_budget=memory_budget, show_progress=show_progress))  # fmt: skip
    parts = [regression(index, order, s.pick(vals), s.pick(out), zs[:, 1:], ws) for s, (zs, ws) in zip(sets, drawn)]
    by_order = {j: spread([p[j] for p in parts], sets, n, j, rows).to(vals.dtype) for j in range(1, order + 1)}
    return Interactions(index, order, n, by_order, out, vals[:, 0])  # copy 0: the empty coalition


def plan(n: int, budget: int) -> tuple[list[int], dict[int, int]]:
    """(the sizes enumerated whole, {size: samples} for the sampled ones) for n features and
    ``budget`` coalitions, the empty and the full one included (NOTE: [Stratified interaction
    sampling])."""
    todo = list(range(1, n))
    if n <= 1 or budget >= 2**n:
        return todo, {}
    if budget < n + 1:
        raise ValueError(
            f"n_samples={budget} cannot give each of the {n - 1} coalition sizes 1..{n - 1} of F={n} features a sample, "
            f"besides the empty and the full coalition: use n_samples >= {n + 1}"
        )
    q = {s: 1.0 / (s * (n - s)) for s in todo}
    left, enumerated = budget - 2, []
    while todo:
        if left >= sum(math.comb(n, s) for s in todo):
            return sorted(enumerated + todo), {}
        s = min(todo, key=lambda s: math.comb(n, s))  # the outermost stratum left
        share = left * q[s] / sum(q[t] for t in todo)
        if share < math.comb(n, s) or left - math.comb(n, s) < len(todo) - 1:
            break
        enumerated.append(s)
        todo.remove(s)
        left -= math.comb(n, s)
    total_q, extra = sum(q[t] for t in todo), left - len(todo)
    exact = {s: extra * q[s] / total_q for s in todo}
    counts = {s: 1 + math.floor(exact[s]) for s in todo}
    rest = extra - sum(counts.values()) + len(todo)
    for s in sorted(todo, key=lambda s: (-(exact[s] - math.floor(exact[s])), s))[:rest]:
        counts[s] += 1
    return sorted(enumerated), counts


def _coalitions(s: FeatureSet, p: tuple, rows: int, seeded: bool, seeds, device) -> tuple[torch.Tensor, torch.Tensor]:
    """One feature set's coalitions over its own features (its examples or 1, 1 + E + M, n_s):
    the empty one, the enumerated strata, then each example's draws of the sampled strata; and
    the coalitions' sizes (1 + E + M,)."""
    enumerated, counts = p
    count = s.count(rows)
    fixed = [torch.zeros(1, s.n, dtype=torch.bool, device=device)]
    for size in enumerated:
        c = combinations(s.n, size).to(device)
        fixed.append(torch.zeros(c.shape[0], s.n, dtype=torch.bool, device=device).scatter_(1, c, True))
    fixed = torch.cat(fixed)
    sizes = torch.tensor([k for k, m in counts.items() for _ in range(m)], dtype=torch.long, device=device)
    if not len(sizes):
        return fixed[None], fixed.sum(-1)
    z = torch.empty(count, len(fixed) + len(sizes), s.n, dtype=torch.bool, device=device)
    z[:, : len(fixed)] = fixed
    for i in range(count):  # each example from its own generator: NOTE: [Explicit randomness]
        g = torch.Generator(device=device).manual_seed(seeds[i]) if seeded else None
        u = torch.rand(len(sizes), s.n, dtype=torch.float64, device=device, generator=g)
        z[i, len(fixed) :] = u.argsort(-1).argsort(-1) < sizes[:, None]
    return z, torch.cat([fixed.sum(-1), sizes])


def _estimate(index: str, order: int, vals: torch.Tensor, out: torch.Tensor, z: torch.Tensor, sizes: torch.Tensor,
              p: tuple) -> dict[int, torch.Tensor]:  # fmt: skip
    """{j: (rows, [K,] C(n, j))} float64 from the model at one set's coalitions z (1 or rows, N, n),
    vals (rows, >= N[, K]), and f(x), out (rows[, K]) (NOTE: [Stratified interaction sampling])."""
    n, fixed = z.shape[2], 1 + sum(math.comb(z.shape[2], s) for s in p[0])
    v = vals[:, : z.shape[1]].to(torch.float64)
    full = out.to(torch.float64)
    z_fixed = torch.cat([z[:1, :fixed], torch.ones(1, 1, n, dtype=torch.bool, device=z.device)], 1)
    a_fixed = torch.cat([v[:, :fixed], full[:, None]], 1)
    sizes_fixed = torch.cat([sizes[:fixed], sizes.new_full((1,), n)])[None]
    c = (v[:, 0] + full) / 2  # the control variate, (rows[, K])
    sampled = sizes[fixed:]
    scale = torch.tensor([math.comb(n, k) / p[1][k] for k in sampled.tolist()], dtype=torch.float64, device=z.device)
    a_drawn = (v[:, fixed:] - c[:, None]) * scale.reshape((1, -1) + (1,) * (v.ndim - 2))
    result = {}
    for j in range(1, order + 1):
        combos = combinations(n, j)
        gamma = gamma_table(index, n, order, j)
        est = combine(z_fixed, a_fixed, sizes_fixed, gamma, combos)
        if len(sampled):
            est = est + combine(z[:, fixed:], a_drawn, sampled.expand(z.shape[0], -1), gamma, combos)
            known = float(sum(stratum_totals(index, n, order, j)[k] for k in p[1]))
            est = est + c[..., None] * known
        result[j] = est
    return result
