"""Standard errors of KernelSHAP's estimates (``kernel_shap(..., return_std_error=True)``).

NOTE: [Standard errors of KernelSHAP]
KernelSHAP is not an average of per-sample attributions (NOTE: [Standard errors of Monte
Carlo attributions] in std_error.py) but the solution of a regression, a smooth function of
sums over the sampled coalitions; its sampling covariance follows by the delta method, as
Covert & Lee (2021) derive it, from the same samples. For one example and one output, with
coalitions z_n (M-vectors of 0/1), weights w_n and targets t_n = v(z_n) - v(0), the estimate is

    phi = argmin sum_n w_n (z_n.phi - t_n)^2   subject to   1.phi = T = v(1) - v(0),

whose optimality conditions are A phi + 1 lambda = b, 1.phi = T with A = sum_n w_n z_n z_n'
and b = sum_n w_n z_n t_n. T is not sampled. Perturbing (A, b) by (dA, db) and keeping the
constraint, A dphi + 1 dlambda = db - dA phi and 1.dphi = 0, so

    dphi = Q (db - dA phi) = Q sum_n dw_n z_n r_n,     r_n = t_n - z_n.phi (the residual),
    Q = the upper-left M x M block of [[A, 1], [1', 0]]^-1 = P (P A P)^+ P,   P = I - 11'/M,

P A P's pseudo-inverse taken on the plane 1.u = 0 (Q 1 = 0: a shift of every h below by a
multiple of 1 changes nothing). The random part of the sums is what the draws contribute:

- Captum's sampler: N = n_samples - 2 i.i.d. draws, weight 1 each; the sums are N times the
  means of h_n = z_n r_n (and of z_n z_n'), so phi's covariance is Q N Cov(h) Q, Cov(h)
  estimated by the draws' sample covariance (divisor N - 1). With every coalition enumerated
  (``n_samples >= 2^M``) nothing is random: SE 0.
- The paired sampler (NOTE: [Paired KernelSHAP sampling] in kernel_sampling.py): the enumerated
  sizes are constants of the sums (no variance). The rest comes from D i.i.d. draws, draw d a
  pair {S_d, complement} whose two members both enter with weight R / (2 D) (R the sampled sizes'
  kernel mass): the independent unit is the *pair*, h_d = z_d r_d + z'_d r'_d over its two
  members (their errors are dependent, which is the pairing's point), and the sums' random
  part is (R / (2 D)) sum_d h_d with covariance D (R / (2 D))^2 Cov(h). A pair drawn c times is
  one coalition pair of weight w = R c / (2 D) and stands for c equal draws.

In both cases, over units j (rows, or pairs) of weight w_j (a row's; a pair's per member),
W = sum_j w_j and D draws,

    Cov(phi) = Q [ W / (D - 1) sum_j w_j (h_j - hbar)(h_j - hbar)' ] Q,    hbar = sum_j w_j h_j / W,

which is the sample covariance over the D draws (a pair drawn c times counted c times:
w_j = c_j W / D) scaled as above (captum: w = 1, W = D = N; paired: W = R / 2). The SE is the
square root of its diagonal, per output. D is not passed along with the weights; it is
recovered from them: the draw that completes the P distinct pairs is its pair's only one, so
D = R / (2 min_j w_j) (rounded); where the draws stopped at their cap (fewer than P distinct
pairs, empty slots of weight 0) D is the cap, 4 N'. The stopping rule makes D random; the
estimate treats it as fixed, as the weights do.

Where it is undefined by the budget alone, the call is refused (ValueError): fewer than two
draws (n_samples < 4 for the default sampler; P < 2 pairs left to draw for the paired one, or a
budget that enumerates some sizes and leaves fewer than 2 coalitions for the rest, a
deterministic but inexact fit). Where it is undefined by an example's draws, that example's SE
is NaN, with a warning: no residual freedom (no more distinct weighted coalitions than the
M - 1 free values: the fit interpolates and every residual is 0; for the paired sampler no more
distinct complementary pairs, enumerated ones included, since under the constraint a pair of
equal weights is one row of the fit, z.phi against (t + T - t') / 2), or a singular system on
the plane (the distinct draws, Captum's sampler repeating sizes 1 and M - 1 often, do not
determine phi; the minimum-norm answer has no sampling distribution to speak of). NaN rather
than an error, as one unlucky example of a large batch should not cost the others theirs; a
loop waiting for ``max SE < tol`` keeps going on NaN. A larger n_samples cures each. Just past
those limits the SE is itself noisy (few residual degrees of freedom: a feature's can even come
out 0 by chance, seen with 6 pairs over 5 features), and the delta method reads low: give the
draws a few times M.

What the SE is not: the delta method is first order (phi is a ratio-like function of sums, so
it also has a bias of order 1/N, not measured), and mean +- 1.96 SE is a 95% interval only as
far as the normal approximation holds; tests/test_kernel_shap_error.py measures its calibration
against exact Shapley values for both samplers.

Cost: one more pass over the coalitions for the residuals and the plane's Gram matrix, and an
eigendecomposition of it per example: float64 (B, M, M), the passes within ``memory_budget`` in
steps of samples as the fit's; and, to count the distinct coalitions, their 62-bit keys, int64
(B, N, ceil(M / 62)), sorted. No model call more.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .coalitions import MAX_ENUMERATED
from .kernel_sampling import _WORD, _runs, size_plan
from .solvers import sample_rows
from .warn import warn

_RTOL = 1e-10  # eigenvalues of the plane's Gram matrix below this times the largest: singular


class Units(NamedTuple):
    """What is random in one feature set's KernelSHAP fit (NOTE: [Standard errors of KernelSHAP])."""

    kind: str  # "exact" (SE 0), "rows" (Captum's i.i.d. draws), "pairs" (the paired sampler's)
    first: int = 0  # the first sampled row (after the enumerated ones)
    pairs: int = 0  # P, pair slots
    mass: float = 0.0  # R, the sampled sizes' kernel mass
    cap: int = 0  # the draws' cap, 4 N'


def check_n_samples(return_std_error, n_samples) -> None:
    """Refuses, when the call is built, a flag that is not a bool or a budget of fewer than two draws."""
    if not isinstance(return_std_error, bool):
        raise TypeError(f"kernel_shap: return_std_error must be True or False, got {return_std_error!r}")
    if return_std_error and isinstance(n_samples, int) and not isinstance(n_samples, bool) and 2 <= n_samples < 4:
        raise ValueError(
            f"kernel_shap: return_std_error estimates the sampled coalitions' variance, which needs at least two of "
            f"them besides the empty and the full one (n_samples >= 4); got n_samples={n_samples}"
        )


def sampled_units(m: int, n_samples: int, sampling: str) -> Units:
    """What ``n_samples`` samples of an example over ``m`` features, drawn by ``sampling``, hold
    at random; refuses budgets that leave the SE undefined (NOTE: [Standard errors of KernelSHAP])."""
    if m <= 1:
        return Units("exact")
    if sampling == "captum":
        return Units("exact") if m <= MAX_ENUMERATED and n_samples >= 2**m else Units("rows")
    plan = size_plan(m, n_samples - 2)
    if plan.lo > plan.hi:
        return Units("exact")
    if plan.pairs < 2:
        enumerated = f"coalition sizes 1..{plan.enumerated} and their complements" if plan.enumerated else "no size"
        raise ValueError(
            f"kernel_shap: return_std_error with sampling='paired', n_samples={n_samples} and {m} features: the budget "
            f"enumerates {enumerated} and leaves {plan.left} coalitions, {plan.pairs} pair(s) for sizes {plan.lo}..{plan.hi}: "
            f"a standard error needs two drawn pairs at least. "
            f"Raise n_samples (to {n_samples + 4 - 2 * plan.pairs} or more)"
        )
    first = sum(math.comb(m, s) * (1 if 2 * s == m else 2) for s in range(1, plan.enumerated + 1))
    return Units("pairs", first, plan.pairs, plan.mass, 4 * plan.left)


def shap_std_error(z: torch.Tensor, w: torch.Tensor, t: torch.Tensor, phi: torch.Tensor, units: Units,
                   memory_budget: int | None) -> torch.Tensor:  # fmt: skip
    """The standard errors (B, K, M), float64, of `constrained_lstsq`'s phi (B, K, M) fitted to
    coalitions z (B or 1, N, M) bool, weights w (B, N) and targets t (B, N, K) = v(z) - v(0)
    (NOTE: [Standard errors of KernelSHAP]); ``memory_budget``: bytes of the float64 steps."""
    B, K, M = phi.shape
    if units.kind == "exact":
        return torch.zeros(B, K, M, dtype=torch.float64, device=phi.device)
    z = z.expand(B, -1, -1)
    w, t, phi = w.to(torch.float64), t.to(torch.float64), phi.detach().to(torch.float64)
    N = z.shape[1]
    q, bad = _plane_inverse(z, w, units, memory_budget)
    first = units.first
    sw = w[:, first:]  # the sampled rows' weights
    total = sw.sum(1)  # (B,)
    if units.kind == "rows":
        unit_w, W, draws = sw, total, torch.full((B,), N, dtype=torch.float64, device=w.device)
    else:
        unit_w, W = sw[:, ::2], total / 2  # a pair's weight, per member
        draws = _draws(unit_w, units)
    hsum = phi.new_zeros(B, K, M)
    for a, b in _steps(memory_budget, B, K * M, N - first, 3):  # pass 1: hbar
        zr = _zr(z, t, phi, first + a, first + b)
        hsum += torch.einsum("bn,bnkm->bkm", sw[:, a:b], zr)
    hbar = hsum / W[:, None, None]
    acc = phi.new_zeros(B, K, M)
    step = 1 if units.kind == "rows" else 2
    n_units = (N - first) // step
    for a, b in _steps(memory_budget, B, K * M * step, n_units, 4):  # pass 2: the centred second moments through Q
        zr = _zr(z, t, phi, first + step * a, first + step * b)
        h = zr if step == 1 else zr[:, ::2] + zr[:, 1::2]
        y = torch.einsum("bjkm,bmn->bjkn", h - hbar[:, None], q)
        acc += torch.einsum("bj,bjkm->bkm", unit_w[:, a:b], y * y)
    se = (acc * (W / (draws - 1))[:, None, None]).clamp_min(0).sqrt()
    return torch.where(bad[:, None, None], math.nan, se)


def _steps(memory_budget, batch, width, n, copies):
    rows = sample_rows(memory_budget, batch, width, n, copies=copies)
    return ((a, min(a + rows, n)) for a in range(0, n, rows))


def _zr(z, t, phi, a, b) -> torch.Tensor:
    """z_n r_n (B, b - a, K, M) for the rows a..b: each coalition times its residuals t - z.phi."""
    x = z[:, a:b].to(torch.float64)
    r = t[:, a:b] - torch.einsum("bnm,bkm->bnk", x, phi)
    return x[:, :, None, :] * r[..., None]


def _plane_inverse(z, w, units: Units, memory_budget) -> torch.Tensor:
    """(Q = P (P A P)^+ P (B, M, M), A = sum_n w_n z_n z_n'; bad (B,), where P A P is singular on
    the plane or the fit has no residual freedom, warned about) (NOTE: [Standard errors of KernelSHAP])."""
    B, N, M = z.shape
    gram = w.new_zeros(B, M, M)
    for a, b in _steps(memory_budget, B, M, N, 3):
        x = z[:, a:b].to(torch.float64)
        xc = x - x.mean(2, keepdim=True)  # z P
        gram.baddbmm_((xc * w[:, a:b, None]).transpose(1, 2), xc)
    vals, vecs = torch.linalg.eigh(gram)  # ascending; the direction 1 has eigenvalue 0
    keep = vals > _RTOL * vals[:, -1:].clamp_min(torch.finfo(torch.float64).tiny)
    bad = (keep.sum(1) < M - 1) | (_distinct(z, w, units.kind == "pairs") <= M - 1)
    if bool(bad.any()):
        warn(
            f"kernel_shap: the standard error is undefined (NaN) for {int(bad.sum())} of {B} examples over {M} features: "
            f"their distinct sampled coalitions do not determine the {M - 1} free values with residuals to spare (too "
            "few, or repeats of too few). Raise n_samples",
            RuntimeWarning,
        )
    inv = torch.where(keep, 1.0 / torch.where(keep, vals, 1.0), 0.0)
    return vecs @ (inv[:, :, None] * vecs.transpose(1, 2)), bad


def _distinct(z: torch.Tensor, w: torch.Tensor, pairs: bool) -> torch.Tensor:
    """How many distinct nonempty coalitions of positive weight each example holds (B,), or with
    ``pairs`` distinct complementary pairs (a pair of equal weights is one row of the fit: NOTE:
    [Standard errors of KernelSHAP]): its rows packed into 62-bit keys, a feature at a time, and
    sorted (the paired sampler's `_runs`)."""
    B, N, M = z.shape
    held = z & (w > 0)[..., None]  # weight 0 (the paired sampler's empty slots): the empty key, discounted
    if pairs:  # one key per pair: the member without the last feature
        held = (held ^ held[..., -1:]) & (w > 0)[..., None]
    keys = torch.zeros(B, N, -(-M // _WORD), dtype=torch.int64, device=z.device)
    for j in range(M):
        keys[..., j // _WORD] |= held[..., j].to(torch.int64) << (j % _WORD)
    _, new, _ = _runs(keys)
    return new.sum(1) - (keys == 0).all(-1).any(1).to(torch.int64)


def _draws(unit_w: torch.Tensor, units: Units) -> torch.Tensor:
    """D per example (B,), float64: the cap where fewer than P distinct pairs were found, else
    R / (2 w) for the lightest pair, drawn once (NOTE: [Standard errors of KernelSHAP])."""
    valid = unit_w > 0
    lightest = torch.where(valid, unit_w, math.inf).amin(1)
    found = (units.mass / (2 * lightest)).round()
    return torch.where(valid.sum(1) < units.pairs, float(units.cap), found)
