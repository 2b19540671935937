"""The lasso's solution path (homotopy), batched: the support and signs for few samples.

NOTE: [Lasso by homotopy when samples are few]
With fewer samples than features the F x F Gram matrix is singular, the lasso's solution
holds up to N - 1 features, and proximal gradient needs thousands of steps to find which: the
Gram matrix is badly conditioned on that support. The solution path does not: as
the penalty lam falls from max_j |r_j| (where beta = 0) to alpha, beta(lam) is piecewise linear,
and between two events (a feature joining the active set A, where its correlation
|r_j - (G beta)_j| reaches lam, or leaving it, where its coefficient reaches 0) it moves along
d_A = G_AA^{-1} sign_A (Osborne, Presnell & Turlach 2000; Efron et al. 2004's LARS-lasso). So
about |A| steps of O(S^2) work reach alpha, S = min(N, F) the most features a unique solution
holds: a join extends the Cholesky factor of G_AA by one row (a triangular solve), a leave
refactors it. Every (example, output) walks its own path in the same batched steps, one event
each per step. The path gives only the support and signs: `solvers.lasso_gram` then solves
the KKT system on them exactly and checks it, as it does for its proximal-gradient guesses,
and a problem whose path failed (a singular G_AA: features with equal columns, a solution
that is not unique) or whose check fails goes on to the proximal-gradient iterations and
scikit-learn's duality-gap rule. `solvers.lasso` takes the path for N <= F / 2: its steps are
small, so it costs about N of them of a fixed overhead, while proximal gradient gets fast as N
nears F (measured on LIME-like problems, F = 16..256, batch 1: the path was 1.2-13x faster at
N = F / 2 and below, 2-5x slower at N = 3F / 4 and above). Measured again after proximal
gradient's steps got longer (a tighter eigenvalue bound) and its corrections smarter: at N = F / 2
the two are within 1.5x either way (the path faster for F <= 64, proximal gradient for F >= 128),
and below it proximal gradient still has heavy tails (F = 128, N = 51, 4 examples: 952 ms, the
path 105 ms), so the switch stays at F / 2.
"""

from __future__ import annotations

import torch

_PARALLEL = 1e-8  # |1 -+ (G d)_j| below this: feature j's correlation keeps pace with lam


def lasso_path(gram, r, alpha: float, slots: int, max_steps: int | None = None):
    """Support and signs of argmin 1/2 b'G b - r'b + alpha |b|_1 by following its path from b = 0.

    gram (B, F, F), r (B, F, K); ``slots``: the most active features followed (min(N, F));
    ``max_steps``: events at most (default 4 slots + 16). Returns (active (B, K, F) bool, sign
    (B, K, F), ok (B, K)): ok where the path reached alpha without a singular step.
    """
    B, F, K = r.shape
    dt, dev = r.dtype, r.device
    S = max(1, min(slots, F))
    steps = 4 * S + 16 if max_steps is None else max_steps
    rt = r.transpose(1, 2).contiguous()  # (B, K, F)
    bi = torch.arange(B, device=dev)[:, None].expand(B, K)
    diag = torch.diagonal(gram, dim1=-2, dim2=-1)  # (B, F)
    tiny = 1e3 * torch.finfo(dt).eps
    beta = torch.zeros_like(rt)
    active = torch.zeros(B, K, F, dtype=torch.bool, device=dev)
    sign = torch.zeros_like(rt)
    ids = torch.zeros(B, K, S, dtype=torch.long, device=dev)  # the active features, in the order they joined
    count = torch.zeros(B, K, dtype=torch.long, device=dev)
    chol = torch.eye(S, dtype=dt, device=dev).expand(B, K, S, S).clone()  # of G_AA, the identity past count
    lam, first = rt.abs().max(-1)
    done = lam <= alpha
    failed = torch.zeros_like(done)
    state = (beta, active, sign, ids, count, chol, failed)
    state = _join(gram, bi, diag, state, ~done, first, torch.sign(rt.gather(2, first[..., None]))[..., 0], tiny)
    beta, active, sign, ids, count, chol, failed = state
    pos, feats = torch.arange(S, device=dev), torch.arange(F, device=dev)
    inf = torch.tensor(float("inf"), dtype=dt, device=dev)
    nobody = torch.zeros_like(active)
    left = nobody  # the feature that just left: not taken back at once (rounding)
    for _ in range(steps):
        live = ~(done | failed)
        if not bool(live.any()):
            break
        used = pos < count[..., None]  # (B, K, S)
        x = torch.cholesky_solve((sign.gather(2, ids) * used)[..., None], chol)[..., 0]
        d = torch.zeros_like(beta).scatter_add_(2, ids, x * used)  # (B, K, F): dbeta / d(-lam)
        a = d @ gram  # G d: 1 on A in sign, the correlations' rate off it (gram symmetric)
        c = rt - beta @ gram  # the correlations now, recomputed: no drift
        free = ~active & ~left & ~failed[..., None]
        # a free feature whose correlation moves with lam (|a_j| = 1: collinear with the active
        # ones, so not unique) never reaches it first: such features are left out, not joined
        up = torch.where(free & (1 - a > _PARALLEL), (lam[..., None] - c) / (1 - a), inf)
        down = torch.where(free & (1 + a > _PARALLEL), (lam[..., None] + c) / (1 + a), inf)
        join_at, joiner = torch.minimum(up, down).clamp_min(0).min(-1)
        leave_at, leaver = torch.where(active & (beta * d < 0), -beta / d, inf).min(-1)
        end_at = lam - alpha
        finish = live & (end_at <= join_at) & (end_at <= leave_at)
        leave = live & ~finish & (leave_at <= join_at)
        join = live & ~finish & ~leave
        step = torch.where(finish, end_at, torch.where(leave, leave_at, join_at))
        step = torch.where(live, step, 0.0)
        beta = beta + step[..., None] * d
        lam = torch.where(finish, alpha, lam - step)
        done = done | finish
        if bool(leave.any()):
            hit = leave[..., None] & (feats == leaver[..., None])
            beta, active, sign = torch.where(hit, 0.0, beta), active & ~hit, torch.where(hit, 0.0, sign)
            ids, count, chol, failed = _leave(gram, bi, leave, leaver, ids, count, chol, failed)
            left = hit
        else:
            left = nobody
        new_sign = torch.sign((c - step[..., None] * a).gather(2, joiner[..., None]))[..., 0]
        state = _join(gram, bi, diag, (beta, active, sign, ids, count, chol, failed), join, joiner, new_sign, tiny)
        beta, active, sign, ids, count, chol, failed = state
    return active, sign, done & ~failed


def _join(gram, bi, diag, state, join, j, sgn, tiny):
    """Adds feature j (B, K) with sign sgn to the active sets where ``join``: its row of the
    Cholesky factor is L^{-1} G_{A j} and sqrt(G_jj - |that|^2); a pivot below ``tiny`` G_jj
    (G_AA singular with it) fails the problem."""
    beta, active, sign, ids, count, chol, failed = state
    S = ids.shape[-1]
    used = torch.arange(S, device=ids.device) < count[..., None]
    col = gram[bi, :, j]  # (B, K, F): G[:, j]
    row = torch.linalg.solve_triangular(chol, (col.gather(2, ids) * used)[..., None], upper=False)[..., 0]
    pivot = diag[bi, j] - (row * row).sum(-1)
    ok = join & (pivot > tiny * diag[bi, j]) & (count < S)
    at = torch.arange(S, device=ids.device) == count.clamp_max(S - 1)[..., None]  # the next free slot
    new_row = torch.where(at, pivot.clamp_min(0).sqrt()[..., None], row * used)
    chol = torch.where((ok[..., None] & at)[..., None], new_row[..., None, :], chol)
    ids = torch.where(ok[..., None] & at, j[..., None], ids)
    hit = ok[..., None] & (torch.arange(active.shape[-1], device=ids.device) == j[..., None])
    active, sign = active | hit, torch.where(hit, sgn[..., None], sign)
    return beta, active, sign, ids, count + ok.long(), chol, failed | (join & ~ok)


def _leave(gram, bi, leave, j, ids, count, chol, failed):
    """Removes feature j from the active sets where ``leave``: the others close up, in order,
    and those problems' Cholesky factors are computed again."""
    B, K, S = ids.shape
    pos = torch.arange(S, device=ids.device)
    keep = (pos < count[..., None]) & ~(leave[..., None] & (ids == j[..., None]))
    order = torch.argsort(torch.where(keep, pos, S + pos), -1)  # keys distinct: the order kept
    ids = torch.where(leave[..., None], ids.gather(2, order), ids)
    count = torch.where(leave, keep.sum(-1), count)
    used = pos < count[..., None]
    sub = gram[bi[..., None], ids].gather(3, ids[..., None, :].expand(B, K, S, S))  # G_AA, (B, K, S, S)
    pair = used[..., :, None] & used[..., None, :]
    system = torch.where(pair, sub, torch.eye(S, dtype=chol.dtype, device=chol.device))
    del sub
    fresh, info = torch.linalg.cholesky_ex(system)
    chol = torch.where(leave[..., None, None], fresh, chol)
    return ids, count, chol, failed | (leave & (info != 0))
