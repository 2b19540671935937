"""KernelSHAP-IQ: the Shapley interaction index fitted order by order to the lower orders' residuals.

NOTE: [KernelSHAP-IQ]
``shapley_interaction_sampling(..., estimator="kernelshap_iq")``, after Fumagalli, Muschalik,
Kolpaczki, Huellermeier & Hammer (ICML 2024). With B_l the Bernoulli numbers (B_1 = -1/2) let
    lambda_k(t) = sum_{r=1..t} C(t, r) B_{k-r},    x_L[S] = lambda_k(|L & S|)
for a coalition L and the sets S of k features (the game T -> lambda_k(|T & S|) has the Moebius
dividends B_{k-|A|} on the nonempty A inside S, so its SII of every order above k is 0). The
residual games are r_1(L) = v(L) - v({}) and r_{k+1}(L) = r_k(L) - x_L . phi_k, and the SII of
order k is the weighted least-squares fit of r_k by x . phi with the kernel
    mu_k(s) = 1 / ((F - 2k + 1) C(F - 2k, s - k))  for k <= s <= F - k,  infinite otherwise
(s = |L|; "the border": the sizes below k and above F - k, empty and full included). Since
the lower orders' games have no order-k SII, SII_k(r_k) = SII_k(v) whatever the lower
estimates were; the paper proves the fit exact for k = 1, 2 and conjectures it for higher k.
The infinite weights make the fit two-level, here solved exactly (no large finite weight):
  * k = 1: x_L = [i in L] and mu_1 is proportional to the Shapley kernel: KernelSHAP with
    sum phi = v(all) - v({}) (`constrained_lstsq`, the solver of `kernel_shap`).
  * k = 2: the border rows B (sizes 1, F - 1 and all) are fitted first, in the least-squares
    sense (the rows of {i} and of all - {i} are equal, -1/2 on the pairs holding i, with
    different residuals: their mean is what can be met): phi = phi_0 + N y with phi_0 = B^+ r_B,
    N an orthonormal basis of B's null space (an SVD in float64, cached per F and k), and y
    the mu_2-weighted fit of the interior sizes' r - x . phi_0.
  * k >= 3: a least-squares border is no longer exact (measured at a full budget on random
    games of 5 to 8 players, values N(0, 1): errors of 0.15 to 1.2 at orders 3 and 4), and the paper's
    algorithm (as shapiq implements it) sums the border with the exact SII weights instead,
    phi_0(S) = sum_{L in the border} gamma(|L|, |L & S|) r_k(L) (`gamma_table("SII")`), and
    fits the interior with the border's residual set to 0: phi = phi_0 + N y, y the mu_k-weighted
    fit of the interior's r (not r - x . phi_0). Exact at a full budget (tests: orders 1-3).
A singular interior fit (fewer coalitions than the free unknowns) takes the minimum-norm y.
On the same coalitions shapiq's routine (weight 1e8 for the infinite one) gives the same values
to 1e-8..2e-7 (tests/test_kernelshap_iq.py).

The coalitions. The border is needed whole: the paired sampler (NOTE: [Paired KernelSHAP
sampling] in kernel_sampling.py) with its size pairs {s, F - s}, s = 1..order-1, enumerated
first whatever the budget, and its rule then carrying on from pair ``order`` inward; the rest
is drawn with complements from the sizes left, each coalition's weight w_L an estimate of the
Shapley kernel mu(s) = (F - 1) / (C(F, s) s (F - s)), so that w_L mu_k(s) / mu(s) is the order-k
weight (inverse-probability weighted, as shapiq's sampling adjustment weights). The paper's
sampler (shapiq's) draws sizes by the same law 1 / (s (F - s)) with the border enumerated, and
enumerates any size whose expected draws exceed its coalitions; it samples single coalitions
(pairing optional) where this one draws complementary pairs and enumerates from the outside in
by pairs of sizes. At order 1 nothing is forced: the coalitions and the values are those of
``kernel_shap(sampling="paired")``. An example's draws come from its own generator (NOTE:
[Explicit randomness]); the border coalitions are the same for every example, so B, its
pseudo-inverse and N are computed once.

k-SII (Bordt & von Luxburg 2023) is SII folded down by the Bernoulli numbers,
k-SII(T) = sum_{l=0..k-|T|} B_l sum_{|K| = l, K disjoint from T} SII(T + K), applied to the
estimates. It is exactly efficient for every budget: a set of s features adds SII(S) times
sum_{j=1..s} C(s, j) B_{s-j}, which is 1 for s = 1 and 0 above, so the total is the order-1 sum,
v(all) - v({}) by KernelSHAP's constraint. The paper defines the method for SII and k-SII
only: STII and FSII are refused (estimator="regression" gives them).
Cost: per example, output and order k a d x d system, d = C(F, k) less the border's rank, and
the (N, C(F, k)) design of its N coalitions, built a block of examples at a time.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import torch

from .interaction_indices import Interactions, _bernoulli, combinations, gamma_table
from .interaction_regression import MAX_TERMS, containment
from .kernel_sampling import SizePlan, enumerated_coalitions, pair_counts, paired_coalitions, size_plan
from .masks import FeatureSet, widen
from .perturb import as_floating, evaluate
from .sampling import row_seeds, streams
from .shapley_interactions import combine, spread
from .solvers import constrained_lstsq, solve_psd
from .surrogate_fits import fit_budget
from .warn import warn

INDICES = ("SII", "k-SII")
BLOCK = 2**24  # the most elements of one block of a design matrix (examples x coalitions x sets)


def check_index(index: str) -> None:
    """Refuses the indices the paper does not define KernelSHAP-IQ for (``index`` canonical)."""
    if index not in INDICES:
        raise ValueError(
            f"estimator='kernelshap_iq' estimates SII and k-SII only (Fumagalli et al. 2024 fit SII order by order "
            f"and fold it into k-SII), not {index}: use estimator='regression' or 'stratified' for {index}"
        )


def border_count(m: int, k: int) -> int:
    """The coalitions of sizes 1..k-1 and m-k+1..m-1 of m features: the first pairs of sizes the
    paired enumeration lists, and the border of order k (empty and full not counted)."""
    return sum(pair_counts(m)[: min(k - 1, m // 2)])


def border_plan(m: int, n_coalitions: int, order: int) -> SizePlan:
    """The paired sampler's plan with the border of ``order`` enumerated whatever the budget
    (NOTE: [KernelSHAP-IQ]); the rule of `kernel_sampling.size_plan` from there inward."""
    j, held = min(order - 1, m // 2), border_count(m, order)
    if n_coalitions < 2**m - 2 and n_coalitions < held:
        sizes = f"sizes 1..{order - 1} and {m - order + 1}..{m - 1}" if j < m // 2 else "every size"
        raise ValueError(
            f"estimator='kernelshap_iq' at order={order} uses every coalition of {sizes} of F={m} features (their "
            f"kernel weight is infinite): use n_samples >= {held + 2}, or a lower order"
        )
    return size_plan(m, n_coalitions, start=j)


def draw(s: FeatureSet, rows: int, n_samples: int, order: int, stream, seeds, device, budget: int) -> tuple:
    """One feature set's coalitions as `paired_coalitions` gives them (float64 weights), with the
    border of ``order`` enumerated first whatever the budget (`border_plan`)."""
    plan = border_plan(s.n, n_samples - 2, order)
    return paired_coalitions(s, rows, n_samples, stream, seeds, device, torch.float64, budget, plan=plan)


class Border(NamedTuple):
    """The border of order k over m features, shared by every example (NOTE: [KernelSHAP-IQ])."""

    z: torch.Tensor  # (nb + 1, m) bool: the coalitions of sizes < k and > m - k as enumerated, then the full one
    x: torch.Tensor  # (nb + 1, C(m, k)) float64: their rows of the design
    pinv: torch.Tensor  # (C(m, k), nb + 1): x's pseudo-inverse
    null: torch.Tensor  # (C(m, k), d): an orthonormal basis of x's null space


@lru_cache(maxsize=8)
def border(m: int, k: int) -> Border:
    """The border's coalitions in the order `draw` lists them (the first pairs of sizes of the
    paired enumeration), its design rows, their pseudo-inverse and null space (an SVD, float64, CPU)."""
    plan = SizePlan(min(k - 1, m // 2), 0, 1, 0, 0.0, 0)  # only .enumerated is read
    z = torch.cat([enumerated_coalitions(m, plan, "cpu", torch.float64)[0], torch.ones(1, m, dtype=torch.bool)])
    x = _design(z, k)
    u, sv, vh = torch.linalg.svd(x, full_matrices=True)
    rank = int((sv > (float(sv.max()) if sv.numel() else 0.0) * max(x.shape) * torch.finfo(torch.float64).eps).sum())
    return Border(z, x, vh[:rank].T @ (u[:, :rank] / sv[:rank]).T, vh[rank:].T.contiguous())


def free_unknowns(m: int, k: int) -> int:
    """d: the order-k unknowns the border leaves to the interior fit, C(m, k) - rank(B)."""
    c = math.comb(m, k)
    return c if c == 0 or c > MAX_TERMS else border(m, k).null.shape[1]


def _lambda(k: int) -> torch.Tensor:
    """lambda_k(t), t = 0..k, float64."""
    b = _bernoulli(k)
    return torch.tensor([float(sum((math.comb(t, r) * b[k - r] for r in range(1, t + 1)), 0)) for t in range(k + 1)],
                        dtype=torch.float64)  # fmt: skip


def _design(z: torch.Tensor, k: int) -> torch.Tensor:
    """x_L[S] = lambda_k(|L & S|) for coalitions z (..., N, m) bool: (..., N, C(m, k)) float64."""
    combos = combinations(z.shape[-1], k).to(z.device)
    return _lambda(k).to(z.device)[z[..., combos].sum(-1)]


def _interior_weight(m: int, k: int, device) -> torch.Tensor:
    """mu_k(s) / mu(s) per size s = 0..m (mu the Shapley kernel), 0 on the border."""
    table = [math.comb(m, s) * s * (m - s) / ((m - 1) * (m - 2 * k + 1) * math.comb(m - 2 * k, s - k))
             if k <= s <= m - k else 0.0 for s in range(m + 1)]  # fmt: skip
    return torch.tensor(table, dtype=torch.float64, device=device)


def fit(index: str, order: int, vals: torch.Tensor, out: torch.Tensor, z: torch.Tensor, w: torch.Tensor,
        budget: int | None = None) -> dict[int, torch.Tensor]:  # fmt: skip
    """{j: (rows, [K,] C(n, j))} float64 from one feature set's coalitions z (1 or rows, N, n)
    bool (the empty one excluded, the border first), their Shapley kernel weights w (rows, N),
    the model there, vals (rows, >= 1 + N[, K]) (copy 0: the empty coalition), and f(x), out
    (rows[, K]) (NOTE: [KernelSHAP-IQ])."""
    rows, big_n, n = w.shape[0], z.shape[1], z.shape[2]
    many = out.ndim == 2
    v = vals[:, : 1 + big_n].to(torch.float64)
    v = v if many else v[..., None]  # (rows, 1 + N, K)
    full = (out if many else out[:, None]).to(torch.float64)
    r, rest = v[:, 1:] - v[:, :1], full - v[:, 0]  # the residual at the coalitions and at the full one
    w = w.to(torch.float64)
    phi1 = constrained_lstsq(z.expand(rows, -1, -1), r, w, rest, memory_budget=budget)  # (rows, K, n): KernelSHAP
    per = max(1, BLOCK // max(1, big_n * n)) if z.shape[0] > 1 else rows
    r = torch.cat([r[a : a + per] - z[a : a + per].to(torch.float64) @ phi1[a : a + per].transpose(1, 2)
                   for a in range(0, rows, per)])  # fmt: skip
    rest = rest - phi1.sum(-1)
    sii = {1: phi1}
    for k in range(2, order + 1):
        sii[k], r, rest = _order(k, r, rest, z, w)
    if index == "k-SII":
        b = _bernoulli(order)
        sii = {j: sum(float(b[q - j]) * sii[q] @ containment(n, j, q, z.device).T for q in range(j, order + 1))
               for j in range(1, order + 1)}  # fmt: skip
    return {j: e if many else e[:, 0] for j, e in sii.items()}


def _order(k: int, r: torch.Tensor, rest: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> tuple:
    """phi_k (rows, K, C(n, k)) and the residuals past it, r (rows, N, K) and rest (rows, K)."""
    rows, big_n, n = w.shape[0], z.shape[1], z.shape[2]
    c = math.comb(n, k)
    if c == 0:
        return r.new_zeros(rows, r.shape[2], 0), r, rest
    nb = border_count(n, k)
    edge = border(n, k)
    zb, xb, pinv, null = (t.to(z.device) for t in edge)
    if not torch.equal(zb[:nb], z[0, :nb]):  # `draw` lists the border first, in this order
        raise RuntimeError("internal error: the coalitions do not begin with the border of order k")
    rb = torch.cat([r[:, :nb], rest[:, None]], 1)  # (rows, nb + 1, K)
    if k == 2:  # the border fitted by least squares: phi_0 = B^+ r_B
        phi0 = torch.einsum("cb,rbk->rkc", pinv, rb)
    else:  # the border summed with SII's exact weights
        phi0 = combine(zb[None], rb, zb.sum(-1)[None], gamma_table("SII", n, k, k), combinations(n, k))
    zi = z[:, nb:]
    omega = w[:, nb:] * _interior_weight(n, k, z.device)[zi.sum(-1)]  # (rows, Ni)
    phi, r = phi0.clone(), r.clone()
    per = max(1, BLOCK // max(1, (big_n - nb) * c))
    xi = _design(zi, k) if z.shape[0] == 1 else None  # one design for all examples
    for a in range(0, rows, per):  # examples a block at a time: the design is (block, Ni, C)
        b = min(a + per, rows)
        x = xi if xi is not None else _design(zi[a:b], k)
        resp = r[a:b, nb:] - x @ phi0[a:b].transpose(1, 2) if k == 2 else r[a:b, nb:]
        xr = x @ null  # (1 or block, Ni, d)
        xw = xr * omega[a:b, :, None]
        y = solve_psd(xw.transpose(1, 2) @ xr, xw.transpose(1, 2) @ resp)  # (block, d, K)
        phi[a:b] += (null @ y).transpose(1, 2)
        fitted = phi[a:b].transpose(1, 2)  # (block, C, K)
        r[a:b, :nb] -= xb[:nb] @ fitted
        r[a:b, nb:] -= x @ fitted
    rest = rest - torch.einsum("c,rkc->rk", xb[nb], phi)  # lambda_k(k) = 0 for k >= 2: stays 0
    return phi, r, rest


def interactions(f, args, nums, index, order, n_samples, generator, masks, n, base, out, aggregate, sets, chunk_size,
                 memory_budget, show_progress) -> Interactions:  # fmt: skip
    """``shapley_interaction_sampling(..., estimator="kernelshap_iq")``: NOTE: [KernelSHAP-IQ]."""
    rows, device = out.shape[0], out.device
    short = []  # (F, k, d) of the fits with fewer coalitions than free unknowns
    for s in sets:
        widest = max(range(1, order + 1), key=lambda k: math.comb(s.n, k))
        if math.comb(s.n, widest) > MAX_TERMS:
            raise ValueError(
                f"estimator='kernelshap_iq' fits one unknown per set of {widest} of the F={s.n} features at order "
                f"{widest}: {math.comb(s.n, widest)} unknowns (at most {MAX_TERMS}). Group the inputs into fewer "
                "features with feature_mask, or lower order"
            )
        if n_samples < 2**s.n:
            border_plan(s.n, n_samples - 2, order)  # refuses a budget short of the border
            short += [(s.n, k, free_unknowns(s.n, k)) for k in range(1, order + 1)
                      if n_samples - 2 - border_count(s.n, k) < free_unknowns(s.n, k)]  # fmt: skip
    if short:
        m, k, d = max(short, key=lambda t: t[2])
        warn(
            f"n_samples={n_samples} leaves {n_samples - 2 - border_count(m, k)} coalitions besides the border for the "
            f"{d} free unknowns of the order-{k} fit of estimator='kernelshap_iq' (F={m} features): the fit is singular and "
            f"its minimum-norm solution is used. Use n_samples >= {border_count(m, k) + d + 2} (or more) for a "
            "determined fit",
            UserWarning,
        )
    (stream,) = streams(generator, 1)
    seeds = None if stream is None else row_seeds(stream, rows)
    budget = fit_budget(memory_budget, device)
    drawn = [draw(s, rows, n_samples, order, stream, seeds, device, budget) for s in sets]
    z = widen([d[0] for d in drawn], sets, n, rows)
    vals = as_floating(evaluate(f, args, nums, masks=masks, baselines=base, coalitions=z, aggregate=aggregate,
                                chunk_size=chunk_size, memory_budget=memory_budget, show_progress=show_progress))  # fmt: skip
    parts = [fit(index, order, s.pick(vals), s.pick(out), zs[:, 1:], ws, budget) for s, (zs, ws) in zip(sets, drawn)]
    by_order = {j: spread([p[j] for p in parts], sets, n, j, rows).to(vals.dtype) for j in range(1, order + 1)}
    return Interactions(index, order, n, by_order, out, vals[:, 0])  # copy 0: the empty coalition
