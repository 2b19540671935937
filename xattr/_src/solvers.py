"""Batched linear surrogate fits in torch: every example's (and every output's) regression at once.

NOTE: [Batched surrogate fits]
LIME and KernelSHAP fit one small weighted linear model per example and output. Captum runs
scikit-learn once per example in a Python loop; here a *solver* fits all of them in a few
batched tensor operations on the model's device. A solver is any callable

    solver(X, y, sample_weight) -> (coef, intercept)
      X: (B, N, F) interpretable samples (0/1 coalitions), y: (B, N, K) targets (the model's
      outputs, K of them), sample_weight: (B, N) >= 0; coef: (B, K, F), intercept: (B, K).

The built-in solvers minimise scikit-learn's objectives, so each is the same estimator as the
scikit-learn class named after it (tested against it to ~1e-9 in float64):

    lasso(alpha):             1/(2 sum w) sum_n w_n (y_n - c - x_n.beta)^2 + alpha ||beta||_1
    ridge(alpha):             sum_n w_n (y_n - c - x_n.beta)^2 + alpha ||beta||_2^2
    linear_regression():      sum_n w_n (y_n - c - x_n.beta)^2, minimum-norm beta if rank deficient

The intercept c is not penalised: X and y are centred at their w-weighted means, beta is fitted
to the centred data and c = mean(y) - mean(X).beta (``fit_intercept=False``: c = 0, no centring).
Fits run in float64 on the F x F weighted Gram matrix (cheap for the tens to hundreds of
features a surrogate has), summed over steps of samples (``memory_budget``: `sample_rows`), so
no float64 (B, N, F) copy of X is made; `lime` and `kernel_shap` call them on groups of
examples (NOTE: [Surrogate fits within the memory budget] in surrogate_fits.py). A built-in
solver also takes ``memory_budget=`` (bytes of those steps' temporaries; None: all at once)
and says what one example's fit holds, ``fit_bytes(F, K)``. Ridge and least squares are closed forms (a Cholesky solve; an
eigendecomposition pseudo-inverse where the Gram matrix is singular, giving the minimum-norm
solution). The lasso: accelerated proximal gradient (FISTA with adaptive restart) guesses the
support and signs of the solution; after the first step and every few steps after it the KKT
system on that active set is solved exactly and checked (signs agree, |gradient| <= alpha off
the set), a failed check corrected by primal-dual active-set steps (keep the features whose
sign held, add those whose gradient exceeds alpha) for as long as each lowers the count of
violated conditions: from a guess far off they wander, from a near one they converge, often in
more than a fixed few. A passed check makes the result the exact minimiser, not an
approximation to a tolerance; LIME's problems usually pass within the first few solves. After
the first step (whose support, {|r_j| > alpha}, does not depend on the step's size) FISTA starts
again with steps from a bound on G's largest eigenvalue within a few % of it (`_tighter`;
Gershgorin's, used before, was 4x it for LIME's problems over 256 features: 1.7x the steps).
With at most half as many samples as features (N <= F / 2) the support and signs come from
the solution path instead (NOTE: [Lasso by homotopy when samples are few] in lasso_path.py),
then the same exact solve and check: proximal gradient needed thousands of steps there (3 s
for 50 samples over 256 features), the path about N. Problems
without a unique solution stop on scikit-learn's criterion instead, a duality gap below ``tol``
times the weighted variance of y. X may be bool (LIME's and KernelSHAP's coalitions): each step
of samples is made float64 as it is read.
"""

from __future__ import annotations

import dataclasses

import torch

from .lasso_path import lasso_path
from .warn import warn


def sample_rows(memory_budget: int | None, batch: int, n_features: int, n_samples: int, copies: int = 2) -> int:
    """Samples per step of the normal equations' accumulation: ``copies`` float64 (batch, rows,
    F) temporaries within ``memory_budget`` bytes (all N when None); at least one."""
    if memory_budget is None:
        return max(1, n_samples)
    return max(1, min(n_samples, memory_budget // max(1, copies * 8 * batch * n_features)))


def _spans(n: int, rows: int):
    return ((a, min(a + rows, n)) for a in range(0, max(n, 1), rows))


def normal_equations(X, y, w, fit_intercept: bool, rows: int, normalise: bool = False):
    """The centred weighted least-squares system in float64: (X_c' W X_c (B, F, F), X_c' W y_c
    (B, F, K), y_c (B, N, K), x mean (B, F), y mean (B, K), weights (B, N)), X_c and y_c centred
    at the w-weighted means (not centred without an intercept). X is read ``rows`` samples at a
    time, so no float64 (B, N, F) copy of it is made (NOTE: [Batched surrogate fits]); W is the
    weights divided by their sum when ``normalise``."""
    B, N, F = X.shape
    w = w.to(torch.float64)
    s = w.sum(1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)  # (B, 1)
    y = y.to(torch.float64)
    xm, ym = X.new_zeros(B, F, dtype=torch.float64), y.new_zeros(B, y.shape[2])
    if fit_intercept:
        for a, b in _spans(N, rows):
            xm += torch.einsum("bn,bnf->bf", w[:, a:b], X[:, a:b].to(torch.float64))
        xm /= s
        ym = torch.einsum("bn,bnk->bk", w, y) / s
        y = y - ym[:, None]
    wn = w / s if normalise else w
    gram, xty = xm.new_zeros(B, F, F), xm.new_zeros(B, F, y.shape[2])
    for a, b in _spans(N, rows):
        xc = X[:, a:b].to(torch.float64, copy=True).sub_(xm[:, None])  # centred (exact zeros without an intercept); X may be bool
        xw = xc * wn[:, a:b, None]
        gram.baddbmm_(xw.transpose(1, 2), xc)
        xty.baddbmm_(xw.transpose(1, 2), y[:, a:b])
    return gram, xty, y, xm, ym, wn


def _intercept(coef, xm, ym):
    return ym - torch.einsum("bkf,bf->bk", coef, xm)


def _check(X, y, w):
    if X.ndim != 3 or y.ndim != 3 or w.ndim != 2 or X.shape[:2] != y.shape[:2] or w.shape != X.shape[:2]:
        raise ValueError(
            f"a surrogate solver takes X (B, N, F), y (B, N, K) and sample_weight (B, N); got "
            f"{tuple(X.shape)}, {tuple(y.shape)}, {tuple(w.shape)}"
        )


@dataclasses.dataclass(frozen=True)
class linear_regression:  # noqa: N801  (a factory-like callable, spelled like the functions)
    """Weighted least squares, scikit-learn's ``LinearRegression`` (minimum-norm when rank deficient).

    ``linear_regression()(X, y, sample_weight) -> (coef, intercept)``: NOTE [Batched surrogate fits].

    Example:
      >>> attr = xattr.lime(xattr.target(model, 1), interpretable_model=xattr.linear_regression(), generator=0)(x)
    """

    fit_intercept: bool = True

    def __call__(self, X, y, sample_weight, *, memory_budget: int | None = None):
        return ridge(0.0, self.fit_intercept)(X, y, sample_weight, memory_budget=memory_budget)

    def fit_bytes(self, n_features: int, n_outputs: int) -> int:
        return ridge(0.0).fit_bytes(n_features, n_outputs)


@dataclasses.dataclass(frozen=True)
class ridge:  # noqa: N801
    """Weighted ridge regression, scikit-learn's ``Ridge(alpha)``: one Cholesky solve per example.

    ``ridge(alpha)(X, y, sample_weight) -> (coef, intercept)``: NOTE [Batched surrogate fits].

    Example:
      >>> coef, intercept = xattr.ridge(1.0)(X, y, w)   # X (B, N, F), y (B, N, K), w (B, N) -> (B, K, F), (B, K)
    """

    alpha: float = 1.0
    fit_intercept: bool = True

    def __call__(self, X, y, sample_weight, *, memory_budget: int | None = None):
        _check(X, y, sample_weight)
        rows = sample_rows(memory_budget, *X.shape[::2], X.shape[1])
        gram, xty, _, xm, ym, _ = normal_equations(X, y, sample_weight, self.fit_intercept, rows)
        if self.alpha > 0:
            gram.diagonal(dim1=-2, dim2=-1).add_(self.alpha)
        coef = solve_psd(gram, xty).transpose(1, 2)  # (B, K, F)
        return _out(coef, _intercept(coef, xm, ym), sample_weight.dtype)

    def fit_bytes(self, n_features: int, n_outputs: int) -> int:
        """Float64 bytes of one example's fit: the Gram matrix, its Cholesky factor and, where it
        is singular, an eigendecomposition (a copy, the eigenvectors, LAPACK's workspace)."""
        return 8 * n_features * (6 * n_features + 3 * n_outputs)


@dataclasses.dataclass(frozen=True)
class lasso:  # noqa: N801
    """Weighted lasso, scikit-learn's ``Lasso(alpha)`` fitted with ``sample_weight``: the exact minimiser.

    ``lasso(alpha)(X, y, sample_weight) -> (coef, intercept)``: NOTE [Batched surrogate fits].
    ``tol``: the duality-gap tolerance (relative to the weighted variance of y) for problems
    whose solution is not unique; ``max_iter``: proximal-gradient steps at most (none are taken
    where the solution path, used for N <= F / 2, finds the minimiser); ``check_every``: steps
    between exact KKT solves.

    Example:
      >>> attr = xattr.lime(xattr.target(model, 1), interpretable_model=xattr.lasso(0.01), generator=0)(x)
    """

    alpha: float = 0.01
    fit_intercept: bool = True
    tol: float = 1e-12
    max_iter: int = 20_000
    check_every: int = 20

    def __call__(self, X, y, sample_weight, *, memory_budget: int | None = None):
        _check(X, y, sample_weight)
        rows = sample_rows(memory_budget, *X.shape[::2], X.shape[1])
        gram, r, yc, xm, ym, wn = normal_equations(X, y, sample_weight, self.fit_intercept, rows, normalise=True)
        yy = torch.einsum("bn,bnk->bk", wn, yc * yc)  # (B, K)
        N, F = X.shape[1:]
        path = 2 * N <= F  # NOTE: [Lasso by homotopy when samples are few]
        beta = lasso_gram(gram, r, yy, self.alpha, tol=self.tol, max_iter=self.max_iter, check_every=self.check_every,
                          path_slots=min(N, F) if path else None)  # fmt: skip
        coef = beta.transpose(1, 2)
        return _out(coef, _intercept(coef, xm, ym), sample_weight.dtype)

    def fit_bytes(self, n_features: int, n_outputs: int) -> int:
        """Float64 bytes of one example's fit: the Gram matrix, and per output the KKT system,
        its Cholesky factor and their bool mask."""
        return 8 * n_features * (n_features * (1 + 3 * n_outputs) + 8 * n_outputs)


BUILT_IN = (linear_regression, ridge, lasso)


def _f64(*ts):
    """Fits run in float64 (F x F systems: cheap), results come back in the caller's dtype."""
    return tuple(t.to(torch.float64) for t in ts)


def _out(coef, intercept, dtype):
    return coef.to(dtype), intercept.to(dtype)


def solve_psd(gram: torch.Tensor, rhs: torch.Tensor, rtol: float = 1e-12) -> torch.Tensor:
    """Minimum-norm solution of ``gram @ x = rhs`` for symmetric PSD gram (B, F, F), rhs (B, F, K).

    A Cholesky solve where gram is well conditioned; a pseudo-inverse from its eigendecomposition
    (eigenvalues below ``rtol`` times the largest dropped) for the examples where it is not, so
    rank-deficient least squares give the minimum-norm solution, as scikit-learn's do.
    """
    if gram.shape[-1] == 0:
        return rhs.new_zeros(rhs.shape)
    chol, info = torch.linalg.cholesky_ex(gram)
    sol = torch.cholesky_solve(rhs, chol)
    pivots = torch.diagonal(chol, dim1=-2, dim2=-1).square()
    scale = torch.diagonal(gram, dim1=-2, dim2=-1).amax(-1).clamp_min(torch.finfo(gram.dtype).tiny)
    bad = (info != 0) | (pivots.amin(-1) < 1e-9 * scale) | ~torch.isfinite(sol).all(-1).all(-1)
    if bool(bad.any()):
        vals, vecs = torch.linalg.eigh(gram[bad])
        keep = vals > rtol * vals[..., -1:].clamp_min(torch.finfo(gram.dtype).tiny)
        inv = torch.where(keep, 1.0 / torch.where(keep, vals, 1.0), 0.0)
        sol = sol.clone()
        sol[bad] = vecs @ (inv[..., None] * (vecs.transpose(-1, -2) @ rhs[bad]))
    return sol


def lasso_gram(
    gram, r, yy, alpha: float, *, tol: float = 1e-12, max_iter: int = 20_000, check_every: int = 20, refine: int = 16,
    path_slots: int | None = None,
):
    """argmin_beta 1/2 beta'G beta - r'beta + alpha ||beta||_1 for every (example, output) at once.

    gram (B, F, F) symmetric PSD, r (B, F, K), yy (B, K) the weighted sum of squares of the
    centred targets (for the duality gap). Returns beta (B, F, K). NOTE: [Batched surrogate fits].
    ``refine``: active-set corrections at most after each exact solve that fails its check (a
    problem stops at the first that does not lower its count of KKT violations);
    ``path_slots``: first follow the solution path with at most that many active features
    (NOTE: [Lasso by homotopy when samples are few]), None: proximal gradient from the start.
    """
    if alpha < 0:
        raise ValueError(f"lasso alpha must be >= 0, got {alpha}")
    B, F, K = r.shape
    if F == 0:
        return r.new_zeros(B, 0, K)
    dt = r.dtype
    eps = torch.finfo(dt).eps
    # a bound on the largest eigenvalue (Gershgorin's, or the trace) for the first step: its size only
    # sets the speed, and the support found after one step, {|r_j| > alpha}, does not depend on it
    lipschitz = torch.minimum(gram.abs().sum(-1).amax(-1), torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1))
    flat = lipschitz <= eps * gram.abs().amax((1, 2))  # no variation in the samples: beta = 0
    step = torch.where(flat, 0.0, 1.0 / torch.where(flat, 1.0, lipschitz))[:, None, None]  # (B, 1, 1)
    thresh = alpha * step
    slack = 1e3 * eps * (alpha + r.abs().amax(1))  # (B, K) tolerance of the KKT check
    gap_tol = max(tol, 100 * eps) * yy  # (B, K)
    gram_k = gram[:, None]  # (B, 1, F, F) shared by the K outputs

    beta = r.new_zeros(B, F, K)
    momentum = beta
    t = r.new_ones(B, 1, K)
    result = r.new_zeros(B, K, F)
    done = torch.zeros(B, K, dtype=torch.bool, device=r.device)
    rt = r.transpose(1, 2)
    if path_slots is not None:
        active, sign, _ = lasso_path(gram, r, alpha, path_slots)
        result, done = _settle(gram_k, rt, active, sign, alpha, slack, refine, result, done)
        if bool(done.all()):
            return result.transpose(1, 2)
    for it in range(1, max_iter + 1):
        grad = gram @ momentum - r
        new = _soft(momentum - step * grad, thresh)
        # adaptive restart (O'Donoghue & Candes 2015): drop the momentum when it points uphill
        moved = new - beta
        uphill = ((momentum - new) * moved).sum(1, keepdim=True) > 0
        t = torch.where(uphill, torch.ones_like(t), t)
        t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        momentum = new + ((t - 1) / t_next) * moved
        beta, t = new, t_next
        if it % check_every and it not in (1, max_iter):  # the first step's support is often the answer
            continue
        # exact solves on beta's support and signs, then on supports corrected by the KKT conditions
        active, sign = (beta != 0).transpose(1, 2), torch.sign(beta).transpose(1, 2)
        result, done = _settle(gram_k, rt, active, sign, alpha, slack, refine, result, done)
        if bool(done.all()):
            return result.transpose(1, 2)
        # not unique or not found yet: scikit-learn's duality-gap rule on the proximal-gradient iterate
        fresh = ~done & (_duality_gap(gram, r, yy, beta, alpha) <= gap_tol)
        result = torch.where(fresh[..., None], beta.transpose(1, 2), result)
        done = done | fresh
        if bool(done.all()):
            return result.transpose(1, 2)
        if it == 1:  # more steps to take: start again from 0 with longer ones
            step = torch.where(flat, 0.0, 1.0 / torch.where(flat, 1.0, _tighter(gram, lipschitz)))[:, None, None]
            thresh, beta, momentum, t = alpha * step, torch.zeros_like(beta), torch.zeros_like(beta), torch.ones_like(t)
    warn(
        f"the lasso fit did not converge for {int((~done).sum())} of {done.numel()} problems in {max_iter} "
        "steps (its duality gap is above tol); raise max_iter or alpha",
        RuntimeWarning,
    )
    return torch.where(done[:, None, :], result.transpose(1, 2), beta)


def _tighter(gram, bound):
    """A tighter bound on G's largest eigenvalue than ``bound`` (B,): trace(G^16)^(1/16), by three
    squarings, within a few % of it where the spectrum falls off as LIME's does (Gershgorin's was
    4x it at 256 features: 1.7x the steps)."""
    power = gram / bound.clamp_min(torch.finfo(gram.dtype).tiny)[:, None, None]  # eigenvalues <= 1: no overflow
    for _ in range(3):
        power = power @ power
    return torch.minimum(bound, bound * power.square().sum((1, 2)).pow(1 / 16))


def _settle(gram_k, rt, active, sign, alpha, slack, refine, result, done):
    """The exact solve on a guessed support and signs, and up to ``refine`` corrections of it:
    (result, done) with the problems whose solve passed its KKT check filled in. A problem stops
    correcting at the first correction that does not lower its count of KKT violations: from a
    guess far off the corrections wander (each costing a factorisation), from a near one they
    converge, often in more steps than a fixed few would allow."""
    best = None  # the fewest violations so far
    for _ in range(refine + 1):
        sol, grad_at, valid, bad = _kkt_solve(gram_k, rt, active, sign, alpha, slack)
        fresh = ~done & valid
        result = torch.where(fresh[..., None], sol, result)
        done = done | fresh
        if not bool((~done).any() if best is None else (~done & (bad < best)).any()):
            break
        best = bad if best is None else torch.minimum(bad, best)
        active, sign = _next_support(sol, grad_at, active, sign, alpha)
    return result, done


def _soft(v, thresh):
    """sign(v) max(|v| - thresh, 0), in two operations (the same floating-point values)."""
    return v - v.clamp(-thresh, thresh)


def _kkt_solve(gram_k, rt, active, sign, alpha, slack):
    """Solves the optimality conditions on an active set A with signs s: G_AA beta_A = r_A - alpha s_A,
    beta = 0 off A. (beta (B, K, F), gradient G beta - r (B, K, F), valid (B, K), violations (B, K)):
    beta is the minimiser iff its signs on A are s and |gradient| <= alpha off A (the KKT
    conditions); violations counts the features where they fail (NaN counts as failing)."""
    system = torch.where(active[..., :, None] & active[..., None, :], gram_k, 0.0)
    system.diagonal(dim1=-2, dim2=-1).masked_fill_(~active, 1.0)  # identity rows off A
    rhs = torch.where(active, rt - alpha * sign, 0.0)
    chol, info = torch.linalg.cholesky_ex(system)  # G_AA is positive definite where the solution is unique
    sol = torch.cholesky_solve(rhs[..., None], chol)[..., 0]
    grad = (gram_k @ sol[..., None])[..., 0] - rt
    # the violations: a sign that did not hold on A, |gradient| above alpha off it
    bad = torch.where(active, ~(sol * sign > 0), ~(grad.abs() <= alpha + slack[..., None])).sum(-1)
    valid = (info == 0) & (bad == 0) & torch.isfinite(sol).all(-1) & torch.isfinite(grad).all(-1)
    return sol, grad, valid, bad


def _next_support(sol, grad, active, sign, alpha):
    """A primal-dual active-set step: keep the features whose solved sign held, add those whose
    gradient exceeds alpha (with the sign that lowers the objective)."""
    keep = active & (sol * sign > 0)
    add = ~active & (grad.abs() > alpha)
    return keep | add, torch.where(keep, sign, torch.where(add, -torch.sign(grad), 0.0))


def _duality_gap(gram, r, yy, beta, alpha):
    """Lasso duality gap per (example, output), from the Gram form (scikit-learn's stopping rule)."""
    grad = gram @ beta - r  # (B, F, K)
    quad = (beta * (gram @ beta)).sum(1)  # beta' G beta, (B, K)
    lin = (r * beta).sum(1)
    l1 = beta.abs().sum(1)
    resid = (yy - 2 * lin + quad).clamp_min(0)  # weighted ||y - X beta||^2
    primal = 0.5 * resid + alpha * l1
    gmax = grad.abs().amax(1)
    scale = torch.where(gmax > alpha, alpha / gmax.clamp_min(torch.finfo(r.dtype).tiny), torch.ones_like(gmax))
    dual = scale * (yy - lin) - 0.5 * scale * scale * resid
    return primal - dual


def constrained_lstsq(X, t, w, total, *, memory_budget: int | None = None):
    """KernelSHAP's fit: argmin_phi sum_n w_n (x_n.phi - t_n)^2 subject to sum(phi) = total.

    X (B, N, M), t (B, N, K), w (B, N), total (B, K) -> phi (B, K, M). The constraint is imposed
    exactly: phi = total/M + u with u in the plane sum(u) = 0, u the minimum-norm least-squares
    solution there (symmetric in the features, unlike eliminating one of them), from the normal
    equations in float64, accumulated over samples as `sample_rows` allows ``memory_budget``.
    """
    dtype = t.dtype
    t, w, total = _f64(t, w, total)
    B, N, M = X.shape
    base = total / M  # (B, K)
    if N == 0 or M == 1:
        return base[..., None].expand(B, total.shape[1], M).to(dtype)
    gram, rhs = t.new_zeros(B, M, M), t.new_zeros(B, M, t.shape[2])
    for a, b in _spans(N, sample_rows(memory_budget, B, M, N, copies=3)):
        x = X[:, a:b].to(torch.float64)
        centred = x - x.mean(2, keepdim=True)  # X P with P = I - 11'/M
        cw = centred * w[:, a:b, None]
        gram.baddbmm_(cw.transpose(1, 2), centred)  # P X'WX P: singular along 1 ...
        rhs.baddbmm_(cw.transpose(1, 2), t[:, a:b] - base[:, None, :] * x.sum(2, keepdim=True))  # (B, M, K)
    lift = torch.diagonal(gram, dim1=-2, dim2=-1).mean(-1).clamp_min(1.0)[:, None, None] / M
    u = solve_psd(gram.add_(lift), rhs)  # ... made definite along 1, which the right side is orthogonal to
    u = u - u.mean(1, keepdim=True)  # exact zero sum
    return (base[..., None] + u.transpose(1, 2)).to(dtype)


def constrained_lstsq_bytes(n_features: int, n_outputs: int) -> int:
    """Float64 bytes of one example's `constrained_lstsq`: as `ridge`'s."""
    return ridge().fit_bytes(n_features, n_outputs)


def sklearn_fit(estimator, X, y, w):
    """Fits a scikit-learn-style estimator per example (the slow path, for checking): (B, K, F).

    ``estimator`` needs ``fit(X, y, sample_weight=...)`` and ``coef_``; it is cloned per example.
    """
    import copy

    try:
        from sklearn.base import clone
    except ImportError:  # any estimator with the protocol works without scikit-learn
        clone = copy.deepcopy
    B, N, F = X.shape
    K = y.shape[2]
    xs, ys, ws = (t.detach().to(device="cpu", dtype=torch.float64).numpy() for t in (X, y, w))  # float64: a reference fit
    coefs = []
    for i in range(B):
        est = clone(estimator)
        est.fit(xs[i], ys[i] if K > 1 else ys[i, :, 0], sample_weight=ws[i])
        coefs.append(torch.as_tensor(est.coef_, dtype=y.dtype).reshape(K, F))
    return torch.stack(coefs).to(y.device)
