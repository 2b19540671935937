"""Shapley interaction indices from a weighted least-squares fit over paired coalitions.

NOTE: [Interaction regression]
``shapley_interaction_sampling(..., estimator="regression")``. The coalitions are those of
``kernel_shap(sampling="paired")`` (NOTE: [Paired KernelSHAP sampling] in kernel_sampling.py):
the sizes {s, F - s} enumerated whole from the outside in while the budget allows, the rest
drawn with their complements, every coalition L with a weight w_L that estimates the Shapley
kernel mu(s) = (F - 1) / (C(F, s) s (F - s)), s = |L| (w_L = mu(s) exactly on the enumerated
sizes; on the drawn ones R c / (2 D), an inverse-probability weight: a drawn L has probability
mu(s) / R, R the drawn sizes' kernel mass, so sum_L w_L h(L) / mu(|L|) estimates sum_L h(L)).

1. The fit (Faith-SHAP, Tsai, Yeh & Ravikumar 2023). With x_L[T] = [T subset of L] for the
   p = sum_{j=1..k} C(F, j) sets T of 1..k features, the polynomial surrogate
   g(L) = v({}) + sum_T x_L[T] E(T) minimises sum_L w_L (v(L) - v({}) - x_L . E)^2 over the
   sampled proper coalitions, subject to sum_T E(T) = v(all) - v({}) (`constrained_lstsq`,
   KernelSHAP's solver, on p columns instead of F: the constraint exact, a minimum-norm
   solution where fewer coalitions than unknowns leave the system singular). The Faith-SHAP
   index is *defined* as this fit with the exact weights mu over all 2^F coalitions, mu({}) =
   mu(all) = infinity: so for index="FSII" E is the estimate, and it is the exact FSII when
   n_samples >= 2^F (every size enumerated, w = mu).
2. The other indices (k-SII, SII, STII) are the index of the surrogate plus a correction for
   what the surrogate misses. g's Moebius dividends are E(T) (|T| <= k) and 0 above, so by
   NOTE: [Interaction indices as weights on the game] its index is exactly
       I_g(T) = sum_{S superset of T, |S| <= k} w(|S|, |T|) E(S)
   (for k-SII and STII w(r, j) = [r = j] when r <= k: I_g = E; for SII, E(S) / (|S| - |T| + 1)
   summed over S). The residual r(L) = v(L) - g(L) is 0 at {} and at all (by the constraint)
   and its index, sum_L gamma_j(|L|, |L & T|) r(L), is estimated from the same coalitions with
   the inverse-probability weights w_L / mu(|L|):
       I(T) ~ I_g(T) + sum_L (w_L / mu(|L|)) gamma_j(|L|, |L & T|) r(L).
   This is the regression-adjusted Monte Carlo estimator (Witter, Liu & Musco 2025, for
   Shapley and probabilistic values): the surrogate carries what it fits, the sampled sum only
   the residual, whose variance is small when the game is close to a degree-k polynomial. With
   every coalition enumerated the weighted sum is the exact index of r, so I = I_g + I_r is
   exact, whatever the fit.
Efficiency holds for every budget (STII, FSII, k-SII): sum_T E(T) = v(all) - v({}) by the
constraint, and for these indices I_g sums to g(all) - g({}) = the same, while each proper
coalition's weights gamma sum to 0 over all T of orders 1..k (the index of the game that is 1
at that coalition only sums to 0), so the correction adds nothing to the total.

This is not KernelSHAP-IQ (Fumagalli et al. 2024), which fits SII order by order to the
residuals of the lower orders with order-dependent kernels and needs the exact weights of the
outer sizes from order 3 on; the surrogate-plus-correction form gives every index and order
from one fit, exact at a full budget by construction. Cost: per example one p x p system
(float64) and the (N, p) design of the N coalitions, on top of the N model rows.
"""

from __future__ import annotations

import math

import torch

from .interaction_indices import combinations, gamma_table, moebius_weight
from .shapley_interactions import combine
from .solvers import constrained_lstsq

MAX_TERMS = 4096  # sets of 1..order features fitted at most (a p x p system per example and output)
BLOCK = 2**24  # the most elements of one block of the design matrix (examples x coalitions x terms)


def n_terms(n: int, order: int) -> int:
    """p: the sets of 1..order of n features, the unknowns of the fit."""
    return sum(math.comb(n, j) for j in range(1, order + 1))


def check_terms(n: int, order: int) -> None:
    """Refuses a fit with more than MAX_TERMS unknowns (each example solves a p x p system)."""
    p = n_terms(n, order)
    if p > MAX_TERMS:
        raise ValueError(
            f"estimator='regression' fits one unknown per set of 1..{order} of the F={n} features: p={p} unknowns "
            f"(at most {MAX_TERMS}). Group the inputs into fewer features with feature_mask, lower order, or use "
            "estimator='stratified'"
        )


def design(z: torch.Tensor, order: int) -> torch.Tensor:
    """x_L[T] = [T subset of L] for coalitions z (lead, N, n) bool and the sets T of 1..order
    features (each order's in `combinations` order): (lead, N, p) float64."""
    n = z.shape[-1]
    cols = [z[..., combinations(n, j).to(z.device)].all(-1) for j in range(1, order + 1)]
    return torch.cat(cols, -1).to(torch.float64)


def kernel(sizes: torch.Tensor, n: int) -> torch.Tensor:
    """mu(s) = (n - 1) / (C(n, s) s (n - s)) per coalition size, float64; 1 at s = 0 and s = n
    (those coalitions carry weight 0 here: the empty one is the fit's offset, the full one f(x))."""
    table = [1.0] + [(n - 1) / (math.comb(n, s) * s * (n - s)) for s in range(1, n)] + [1.0]
    return torch.tensor(table, dtype=torch.float64, device=sizes.device)[sizes]


def containment(n: int, j: int, r: int, device) -> torch.Tensor:
    """(C(n, j), C(n, r)) float64: [T subset of S] for T of j and S of r features (`combinations` order)."""
    small, large = combinations(n, j).to(device), combinations(n, r).to(device)
    onehot = torch.zeros(large.shape[0], n, dtype=torch.bool, device=device).scatter_(1, large, True)
    return onehot[:, small].all(-1).T.to(torch.float64)


def regression(index: str, order: int, vals: torch.Tensor, out: torch.Tensor, z: torch.Tensor,
               w: torch.Tensor) -> dict[int, torch.Tensor]:  # fmt: skip
    """{j: (rows, [K,] C(n, j))} float64 from one feature set's coalitions z (1 or rows, N, n) bool
    (the empty one excluded) with weights w (rows, N), the model there, vals (rows, >= 1 + N[, K])
    (copy 0: the empty coalition), and f(x), out (rows[, K]) (NOTE: [Interaction regression])."""
    rows, big_n, n = w.shape[0], z.shape[1], z.shape[2]
    many = out.ndim == 2
    v = vals[:, : 1 + big_n].to(torch.float64)
    v = v if many else v[..., None]  # (rows, 1 + N, K)
    full = (out if many else out[:, None]).to(torch.float64)  # (rows, K)
    y, total = v[:, 1:] - v[:, :1], full - v[:, 0]
    w = w.to(torch.float64)
    sizes = z.sum(-1)  # (1 or rows, N)
    p = n_terms(n, order)
    per = max(1, BLOCK // max(1, big_n * p))
    coef, resid = [], []
    for a in range(0, rows, per):  # examples a block at a time: the design is (block, N, p)
        b = min(a + per, rows)
        x = design(z if z.shape[0] == 1 else z[a:b], order).expand(b - a, -1, -1)
        e = constrained_lstsq(x, y[a:b], w[a:b], total[a:b])  # (block, K, p)
        coef.append(e)
        if index != "FSII":
            resid.append(y[a:b] - x @ e.transpose(1, 2))  # r(L) = v(L) - g(L), (block, N, K)
    coef = torch.cat(coef)
    starts = [0]
    for j in range(1, order + 1):
        starts.append(starts[-1] + math.comb(n, j))
    by_order = {j: coef[..., starts[j - 1] : starts[j]] for j in range(1, order + 1)}  # (rows, K, C(n, j))
    if index != "FSII":
        ht = w / kernel(sizes, n)  # inverse-probability weights w_L / mu(|L|)
        a_res = torch.cat(resid) * ht[..., None]
        surrogate = {}
        for j in range(1, order + 1):
            surrogate[j] = sum(by_order[r] @ (float(moebius_weight(index, r, j, order)) * containment(n, j, r, z.device)).T
                               for r in range(j, order + 1))  # fmt: skip
        by_order = {j: surrogate[j] + combine(z, a_res, sizes, gamma_table(index, n, order, j), combinations(n, j))
                    for j in range(1, order + 1)}  # fmt: skip
    return {j: e if many else e[:, 0] for j, e in by_order.items()}
