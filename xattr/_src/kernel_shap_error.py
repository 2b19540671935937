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

    Cov(phi) = Q [ W / (D - 1) sum_j w_j (g_j - gbar)(g_j - gbar)' ] Q,    gbar = sum_j w_j g_j / W,
    g_j = h_j / sqrt(1 - l_j),   l_j = (W / D) sum over the unit's rows of z' Q z,

the sample covariance over the D draws (a pair drawn c times counted c times: w_j = c_j W / D)
scaled as above (captum: w = 1, W = D = N; paired: W = R / 2), of the contributions h_j with
each divided by sqrt(1 - l_j), l_j the leverage of one draw of unit j: the small-sample
correction of NOTE: [Small-sample correction of the KernelSHAP standard error] below (with
l_j = 0 it is the plain delta method; through Q, hbar is 0 for Captum's sampler, not for the
paired one's, whose enumerated rows share the fit). The SE is the square root of its diagonal,
per output. D is not passed along with the weights; it is recovered from them: the draw that
completes the P distinct pairs is its pair's only one, so D = R / (2 min_j w_j) (rounded);
where the draws stopped at their cap (fewer than P distinct pairs, empty slots of weight 0) D
is the cap, 4 N'. The stopping rule makes D random; the estimate treats it as fixed, as the
weights do.

Where it is undefined by the budget alone, the call is refused (ValueError): fewer than two
draws (n_samples < 4 for the default sampler; P < 2 pairs left to draw for the paired one, or a
budget that enumerates some sizes and leaves fewer than 2 coalitions for the rest, a
deterministic but inexact fit). Where it is undefined by an example's draws, that example's SE
is NaN, with a warning: no residual freedom (no more distinct weighted coalitions than the
M - 1 free values: the fit interpolates and every residual is 0; for the paired sampler no more
distinct complementary pairs, enumerated ones included, since under the constraint a pair of
equal weights is one row of the fit, z.phi against (t + T - t') / 2), a singular system on
the plane (the distinct draws, Captum's sampler repeating sizes 1 and M - 1 often, do not
determine phi; the minimum-norm answer has no sampling distribution to speak of), or one
coalition that alone sets a direction of the fit (its draws' leverages summing to 1: its
residual is 0 whatever the model, and nothing measures phi's variance along that direction;
the uncorrected formula reported it as 0, e.g. a feature's SE of 1e-17 with 6 pairs over 5
features). NaN rather than an error, as one unlucky example of a large batch should not cost
the others theirs; a loop waiting for ``max SE < tol`` keeps going on NaN. A larger n_samples
cures each. Just past those limits the SE is itself noisy (few residual degrees of freedom),
and intervals of +- 1.96 SE cover less than 95% even where its square is unbiased: give the
draws a few times M.

What the SE is not: the delta method is first order (phi is a ratio-like function of sums, so
it also has a bias of order 1/N, not measured), and mean +- 1.96 SE is a 95% interval only as
far as the normal approximation holds; tests/test_kernel_shap_error.py and
tests/test_kernel_shap_error_small.py measure its calibration against exact Shapley values for
both samplers.

Cost: one more pass over the coalitions for the residuals and the plane's Gram matrix, and an
eigendecomposition of it per example: float64 (B, M, M); a pass for the draws' leverages (kept:
float64, (B, N) at most) and two over the units' contributions (their mean, then the second
moments), all within ``memory_budget`` in steps of samples as the fit's; and, to count the distinct coalitions and each one's draws,
their 62-bit keys, int64 (B, N, ceil(M / 62)), sorted. No model call more.

NOTE: [Small-sample correction of the KernelSHAP standard error]
The plain delta method (l_j = 0 above; the formula up to this correction) reads low at small
budgets: on the wine model of docs/methods/kernel_shap.md (13 features, 4000 runs) the
estimates' spread over the reported SE was 1.15-1.20 (Captum's sampler) and 1.29-1.37 (paired)
at n_samples=60, 1.07-1.11 and 1.21-1.25 at 100, 1.00-1.05 and 1.01-1.04 at 400. The cause is
the classic bias of a sandwich (HC0) estimator: it plugs in the fit's residuals r, which are
smaller than the errors the draws carry, since the fit has been pulled towards each draw.

Leverage. Move one draw's target by dt: phi moves by Q z w0 dt (the derivative above, w0 = W /
D one draw's weight: 1 for Captum's sampler, R / (2 D) for a pair's member), and that draw's
fitted value by w0 z'Qz dt: its leverage l = w0 z'Qz, the diagonal of the fit's hat matrix
(whose trace, summed over every row with its weight, is the M - 1 free values; the enumerated
rows of the paired sampler hold part of it, so its draws' leverages sum to less). For a linear
model with errors of equal variance per draw, E[r^2] = sigma^2 (1 - l); dividing each draw's
residual by sqrt(1 - l) makes the sandwich unbiased there (HC2: MacKinnon & White 1985; for
clusters Bell & McCaffrey 2002), and for KernelSHAP's deterministic but randomly drawn
residuals it removes most of the bias (measured below). The leverage is a draw's, not a
distinct coalition's: a coalition drawn c times is c independent draws, c rows of weight 1
(Captum's sampler: each row its own l = z'Qz) or one unit of weight c w0 (paired: l per draw
is w0 (z'Qz + zc'Q zc), zc the complement, the same for its c draws); deleting one draw takes
away w0, not c w0.
Their sum over a coalition's draws, c l, is the distinct coalition's leverage; where it is 1
the coalition alone sets a direction of the fit, its residual is 0 and the correction 0/0:
NaN, by the rule above.

Pairs. Under the constraint a pair {S, complement} of equal weights is one row of the fit, z
against (t + T - t') / 2 with weight 2 w0 per draw (above), so its two rows' residuals are one
scalar rho = ((t + T - tc) / 2 - z.phi) and h_d = z r + zc rc = (2 z - 1) rho + ((r + rc) / 2) 1
(zc, tc, rc the complement's), whose second part Q annuls: the pair is one unit with one
residual, and its leverage is that row's, 2 w0 z'Qz = w0 (z'Qz + zc'Q zc) (Q zc = Q (1 - z) =
-Q z). Dividing h_d by sqrt(1 - l_d) therefore is the
cluster correction (CR2) for the two-row cluster, which here is a scalar; the part along 1 it
also scales changes nothing through Q.

Why HC2, and the sample covariance around it. Measured, 4000 runs of the wine row, spread / SE
per feature and coverage of +- 1.96 SE against the exact values (Captum's sampler | paired):

    n_samples=60    plain 1.15-1.20 88.8% | 1.29-1.37 80.8%    HC2 0.99-1.03 93.0% | 0.96-1.03 90.0%
                    D/(D-k) 1.03-1.08 92.0% | 1.04-1.11 87.9%  HC3 0.84-0.89 96.2% | 0.70-0.76 96.0%
    n_samples=100   plain 1.07-1.11 91.8% | 1.21-1.25 86.6%    HC2 0.99-1.02 94.0% | 1.02-1.06 91.7%
                    D/(D-k) 1.01-1.05 93.4% | 1.05-1.09 90.8%  HC3 0.90-0.93 95.9% | 0.86-0.90 95.4%
    n_samples=400   plain 1.00-1.05 94.5% | 1.01-1.04 94.0%    HC2 0.98-1.02 95.0% | 0.99-1.01 94.6%

D/(D - k), k the draws' total leverage (M - 1 for Captum's sampler), scales every residual
alike and corrects too little where leverages are uneven (the paired sampler's); HC3, r / (1 -
l), is the delete-one-draw jackknife's closed form (Sherman-Morrison on the plane: deleting draw
j moves phi by -Q z_j w0 r_j / (1 - l_j)) and, as the jackknife does (Efron & Stein), it
overstates the variance: its SE 7-43% too large at these budgets. HC2 is within a few percent
from 60 samples on, for both samplers and on the 8-feature MLP of the tests, and at 400 differs
from the plain one by 2-3%: the default, and the only formula (no option). The sample covariance's
centring and W / (D - 1) are kept: the paired sampler's units have a mean that Q does not annul,
which costs a degree of freedom, and the same form serves both samplers. For Captum's sampler
that factor D / (D - 1) is a little more than HC2 needs under equal noise (there the mean of SE^2
is Q's diagonal times D / (D - 1): tests/test_kernel_shap_error_small.py), which the random
design's own variance, not in any sandwich, about offsets (without it, measured: 1.00-1.04 and
0.98-1.04 at 60 samples, 0.99-1.02 and 1.03-1.08 at 100, coverage 0.1-0.4 points lower).
What no variance formula fixes: with few residual degrees of freedom the SE is itself noisy, so
+- 1.96 SE covers less than 95% even when SE^2 is right on average (paired at 60 samples: 90%).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .coalitions import MAX_ENUMERATED
from .kernel_sampling import _WORD, _runs, pair_counts, size_plan
from .solvers import sample_rows
from .warn import warn

_RTOL = 1e-10  # eigenvalues of the plane's Gram matrix below this times the largest: singular
_RTOL_LEVERAGE = 1e-8  # a coalition's leverage above 1 minus this: 1, a direction of the fit it alone sets (NaN)


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
    first = sum(pair_counts(m)[: plan.enumerated])
    return Units("pairs", first, plan.pairs, plan.mass, 4 * plan.left)


def shap_std_error(z: torch.Tensor, w: torch.Tensor, t: torch.Tensor, phi: torch.Tensor, units: Units,
                   memory_budget: int | None) -> torch.Tensor:  # fmt: skip
    """The standard errors (B, K, M), float64, of `constrained_lstsq`'s phi (B, K, M) fitted to
    coalitions z (B or 1, N, M) bool, weights w (B, N) and targets t (B, N, K) = v(z) - v(0)
    (NOTE: [Standard errors of KernelSHAP]; NOTE: [Small-sample correction of the KernelSHAP
    standard error]); ``memory_budget``: bytes of the float64 steps."""
    B, K, M = phi.shape
    if units.kind == "exact":
        return torch.zeros(B, K, M, dtype=torch.float64, device=phi.device)
    z = z.expand(B, -1, -1)
    w, t, phi = w.to(torch.float64), t.to(torch.float64), phi.detach().to(torch.float64)
    N = z.shape[1]
    q, bad, copies = _plane_inverse(z, w, units, memory_budget)
    first = units.first
    sw = w[:, first:]  # the sampled rows' weights
    total = sw.sum(1)  # (B,)
    if units.kind == "rows":
        unit_w, W, draws = sw, total, torch.full((B,), N - first, dtype=torch.float64, device=w.device)
    else:
        unit_w, W = sw[:, ::2], total / 2  # a pair's weight, per member
        draws = _draws(unit_w, units)
    one = W / draws  # one draw's weight (per member): 1 for Captum's sampler, R / (2 D) for pairs
    times = copies[:, first:] if units.kind == "rows" else unit_w / one[:, None]  # the draws of each unit's coalition
    step = 1 if units.kind == "rows" else 2
    n_units = (N - first) // step
    spans = list(_steps(memory_budget, B, K * M * step, n_units, 4))
    lev = torch.cat([_leverages(z, q, one, first, step, a, b) for a, b in spans], 1)  # (B, units)
    lifted = ((lev * times > 1 - _RTOL_LEVERAGE) & (unit_w > 0)).any(1)
    scale = (1 - lev).clamp_min(_RTOL_LEVERAGE).rsqrt()  # NOTE: [Small-sample correction of the KernelSHAP standard error]
    gsum = phi.new_zeros(B, K, M)
    for a, b in spans:  # pass 1: the adjusted contributions' weighted mean
        gsum += torch.einsum("bj,bjkm->bkm", unit_w[:, a:b] * scale[:, a:b], _contributions(z, t, phi, first, step, a, b))
    gbar = gsum / W[:, None, None]
    acc = phi.new_zeros(B, K, M)
    for a, b in spans:  # pass 2: their centred second moments through Q
        g = _contributions(z, t, phi, first, step, a, b) * scale[:, a:b, None, None]
        y = torch.einsum("bjkm,bmn->bjkn", g - gbar[:, None], q)
        acc += torch.einsum("bj,bjkm->bkm", unit_w[:, a:b], y * y)
    _warn_undefined(bad, lifted & ~bad, M)
    se = (acc * (W / (draws - 1))[:, None, None]).clamp_min(0).sqrt()
    return torch.where((bad | lifted)[:, None, None], math.nan, se)


def _steps(memory_budget, batch, width, n, copies):
    rows = sample_rows(memory_budget, batch, width, n, copies=copies)
    return ((a, min(a + rows, n)) for a in range(0, n, rows))


def _contributions(z, t, phi, first, step, a, b) -> torch.Tensor:
    """The units a..b's h_j = z r (B, b - a, K, M), summed over a unit's rows (one row, or a
    pair's two): each coalition times its residuals t - z.phi."""
    x = z[:, first + step * a : first + step * b].to(torch.float64)
    r = t[:, first + step * a : first + step * b] - torch.einsum("bnm,bkm->bnk", x, phi)
    h = x[:, :, None, :] * r[..., None]
    return h if step == 1 else h[:, ::2] + h[:, 1::2]


def _leverages(z, q, one, first, step, a, b) -> torch.Tensor:
    """The units a..b's leverages per draw (B, b - a): one draw's weight times z'Qz summed over
    the unit's rows (NOTE: [Small-sample correction of the KernelSHAP standard error])."""
    x = z[:, first + step * a : first + step * b].to(torch.float64)
    quad = (torch.bmm(x, q) * x).sum(-1)
    return one[:, None] * (quad if step == 1 else quad[:, ::2] + quad[:, 1::2])


def _warn_undefined(bad: torch.Tensor, lifted: torch.Tensor, M: int) -> None:
    """One warning for the examples whose SE is NaN (NOTE: [Standard errors of KernelSHAP])."""
    if bool(bad.any()) or bool(lifted.any()):
        B = bad.shape[0]
        why = []
        if bool(bad.any()):
            why.append(
                f"{int(bad.sum())} whose distinct sampled coalitions do not determine the {M - 1} free values with "
                "residuals to spare (too few, or repeats of too few)"
            )
        if bool(lifted.any()):
            why.append(f"{int(lifted.sum())} where one coalition alone sets a direction of the fit (leverage 1)")
        warn(
            f"kernel_shap: the standard error is undefined (NaN) for {int((bad | lifted).sum())} of {B} examples over "
            f"{M} features: {'; '.join(why)}. Raise n_samples",
            RuntimeWarning,
        )


def _plane_inverse(z, w, units: Units, memory_budget) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q = P (P A P)^+ P (B, M, M), A = sum_n w_n z_n z_n'; bad (B,), where P A P is singular on
    the plane or the fit has no residual freedom; each row's copies (B, N), `_distinct`'s) (NOTE:
    [Standard errors of KernelSHAP])."""
    B, N, M = z.shape
    gram = w.new_zeros(B, M, M)
    for a, b in _steps(memory_budget, B, M, N, 3):
        x = z[:, a:b].to(torch.float64)
        xc = x - x.mean(2, keepdim=True)  # z P
        gram.baddbmm_((xc * w[:, a:b, None]).transpose(1, 2), xc)
    vals, vecs = torch.linalg.eigh(gram)  # ascending; the direction 1 has eigenvalue 0
    keep = vals > _RTOL * vals[:, -1:].clamp_min(torch.finfo(torch.float64).tiny)
    distinct, copies = _distinct(z, w, units.kind == "pairs")
    bad = (keep.sum(1) < M - 1) | (distinct <= M - 1)
    inv = torch.where(keep, 1.0 / torch.where(keep, vals, 1.0), 0.0)
    return vecs @ (inv[:, :, None] * vecs.transpose(1, 2)), bad, copies


def _distinct(z: torch.Tensor, w: torch.Tensor, pairs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """How many distinct nonempty coalitions of positive weight each example holds (B,), or with
    ``pairs`` distinct complementary pairs (a pair of equal weights is one row of the fit: NOTE:
    [Standard errors of KernelSHAP]), and how many of its rows hold each row's coalition (B, N),
    float64: its rows packed into 62-bit keys, a feature at a time, and sorted (the paired
    sampler's `_runs`)."""
    B, N, M = z.shape
    held = z & (w > 0)[..., None]  # weight 0 (the paired sampler's empty slots): the empty key, discounted
    if pairs:  # one key per pair: the member without the last feature
        held = (held ^ held[..., -1:]) & (w > 0)[..., None]
    keys = torch.zeros(B, N, -(-M // _WORD), dtype=torch.int64, device=z.device)
    for j in range(M):
        keys[..., j // _WORD] |= held[..., j].to(torch.int64) << (j % _WORD)
    order, new, _ = _runs(keys)
    run = new.cumsum(1) - 1  # each sorted row's run
    size = torch.zeros(B, N, dtype=torch.float64, device=z.device).scatter_add_(1, run, torch.ones_like(run, dtype=torch.float64))
    copies = torch.empty_like(size).scatter_(1, order, size.gather(1, run))
    return new.sum(1) - (keys == 0).all(-1).any(1).to(torch.int64), copies


def _draws(unit_w: torch.Tensor, units: Units) -> torch.Tensor:
    """D per example (B,), float64: the cap where fewer than P distinct pairs were found, else
    R / (2 w) for the lightest pair, drawn once (NOTE: [Standard errors of KernelSHAP])."""
    valid = unit_w > 0
    lightest = torch.where(valid, unit_w, math.inf).amin(1)
    found = (units.mass / (2 * lightest)).round()
    return torch.where(valid.sum(1) < units.pairs, float(units.cap), found)
