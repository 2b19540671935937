"""SAGE's estimators (permutation sampling and exact enumeration) and the losses of averaged
predictions; `xattr.sage` in sage.py checks the arguments and calls them.

NOTE: [SAGE permutation draws in one evaluation]
A draw is one example (x, y) taken uniformly from the data, one uniformly random order p of
the F features and (with ``n_background`` m) m background rows taken without replacement;
``n_background=None`` uses every background row. Along the chain {}, {p_1}, {p_1, p_2}, ...,
all F, each coalition S gets the loss of the model averaged over the m rows with x's features
in S kept: L_0, ..., L_F (L_F = loss(f(x), y), one row). Feature p_j's sample is
L_{j-1} - L_j, the loss it removes when it joins, and a draw's samples telescope to
L_0 - L_F exactly. A block of D draws is D chains of (F - 1) m + 1 model rows (copy (j, k),
j = 1..F-1: the first j features of the order kept, the rest from the draw's background row k;
then x itself), in as few model calls as ``chunk_size``/``memory_budget`` allow, each call whole
chains. The empty coalition's copies are the background rows themselves whatever the example, so
f(b) is computed once per run and L_0 taken from it (not when an extra argument goes with the
example: then the chain has F m + 1 rows). The running mean and variance of every
feature's samples are merged block by block (Welford's update for a block: Chan, Golub and
LeVeque), the standard errors are sqrt(var / n), and after each block the run stops when the
largest standard error is below ``convergence`` times the spread of the values (max - min), the
paper's criterion (from `MIN_DRAWS` draws on: a handful of draws can agree by chance). One
feature (F = 1, a single group) has no spread, and the paper's ratio would be infinite for ever:
its spread is taken as its |value| (the error relative to the value). Where all values are about
equal (interchangeable features) the spread tends to 0 as fast as the errors and the run seldom
converges: the warning then says so. Draw i is a hash of (seed, i) (NOTE: [Counter-based
draws] in counter_rng.py): with an int seed the draws do not depend on ``block_size`` or
``chunk_size``, only where the run stops does; a ``torch.Generator`` or torch's global one
(``generator=None``) gives the run's seed.

NOTE: [Building the chains]
The copies of a block are one select of (D, F - 1, m, E) elements: x's where the feature's rank
is below j, the background row's elsewhere. For dtypes with a same-sized integer dtype it is done
on the bits, ``x ^ ((x ^ b) & drop)`` with drop all ones or all zeros, exact for every value
(NaN, infinities, signed zeros) and about twice as fast on CPU as ``torch.where`` (80 against
160 us for 64 draws of the diabetes chains); other dtypes take ``torch.where``.

NOTE: [SAGE inner samples]
With ``n_background`` = m < M every L_j of a draw, L_0 included, is the loss of the model
averaged over the same m rows drawn for that draw, so the estimate is unbiased for the game
L_m(S) = E[loss(mean of f(x_S, b_k) over m rows)], not for the game over all M rows (the exact
estimator's). By Jensen's inequality L_m(S) >= L(S) for a convex loss, by more where the
unknown features move the prediction more; L_m(all) = L(all). For the squared error the gap is
E_x Var_b f(x_S, b) (M - m) / (m (M - 1)), the variance of a mean drawn without replacement, so
the total is too large by Var_b f(b) (M - m) / (m (M - 1)). The paper (Algorithm 1) takes L_0
from the mean prediction over all the data instead: the total is then right on average, but a
feature the model ignores gets -(gap at {}) / F and every value moves by that much: neither way
removes the bias of the values, and ours keeps the game a game (v({}) = 0, dummies 0).
``n_background=None`` (the default) uses every row and has no such bias; docs/methods/sage.md
measures it on the diabetes model.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from . import counter_rng as rng
from .budget import copies_per_call
from .checks import check_finite
from .copies import _BITS
from .gradients import model_calls
from .perturb import Coalitions, as_floating, evaluate, output_float_dtype
from .progress import progress
from .sampling import streams

MIN_DRAWS = 32  # draws before the convergence criterion may stop a run: fewer give no usable variance
LOSSES = ("mse", "cross_entropy", "binary_cross_entropy")


def loss_function(loss) -> Callable:
    """The per-example loss of the prediction averaged over m background rows: a function of the
    outputs (R, m, ...) and the labels (R, ...) giving (R,) losses in float64."""
    if callable(loss) and not isinstance(loss, str):
        return _custom(loss)
    if loss == "mse":
        return _mse
    if loss == "cross_entropy":
        return _cross_entropy
    if loss == "binary_cross_entropy":
        return _binary_cross_entropy
    raise ValueError(f"loss must be one of {LOSSES} or a callable loss(output, y) -> (B,) losses, got {loss!r}")


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32 if t.device.type == "mps" else torch.float64)


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mean = _wide(out).mean(1).reshape(out.shape[0], -1)
    target = _wide(y).reshape(y.shape[0], -1)
    if target.shape[1] != mean.shape[1]:
        raise ValueError(
            f"loss='mse': the model gives {mean.shape[1]} number(s) per example but Y has {target.shape[1]}; "
            "give Y one value per model output"
        )
    return (mean - target).pow(2).mean(1)


def _cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if out.ndim == 2 or (out.ndim == 3 and out.shape[2] == 1):  # a softmax over one logit is 1: every loss 0
        raise ValueError(
            "loss='cross_entropy' needs logits (B, C) of C >= 2 classes, but the model gives one number per "
            "example: for one logit of a binary classifier use loss='binary_cross_entropy'"
        )
    if out.ndim != 3:
        raise ValueError(f"loss='cross_entropy' needs logits (B, C) from the model, got {tuple(out.shape[2:])} per example")
    if y.is_floating_point() or y.ndim != 1:
        raise ValueError(f"loss='cross_entropy' needs Y as class ids (N,) of an integer dtype, got {y.dtype} {tuple(y.shape)}")
    c = out.shape[2]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
        raise ValueError(
            f"loss='cross_entropy': the model gives {c} logits, so Y must hold class ids 0 .. {c - 1}; got ids from "
            f"{int(y.min())} to {int(y.max())}"
        )
    # log of the averaged probability of the true class, exactly: logsumexp of log-softmax - log m
    logp = torch.log_softmax(_wide(out), dim=2)
    picked = logp.gather(2, y.long()[:, None, None].expand(-1, out.shape[1], 1))[..., 0]
    return math.log(out.shape[1]) - torch.logsumexp(picked, dim=1)


def _binary_cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = _wide(out).reshape(out.shape[0], out.shape[1], -1)
    if z.shape[2] != 1:
        raise ValueError(f"loss='binary_cross_entropy' needs one logit per example, got {tuple(out.shape[2:])}")
    z, t, log_m = z[..., 0], _wide(y).reshape(-1), math.log(out.shape[1])
    log_p = torch.logsumexp(torch.nn.functional.logsigmoid(z), 1) - log_m
    log_q = torch.logsumexp(torch.nn.functional.logsigmoid(-z), 1) - log_m
    return -(t * log_p + (1 - t) * log_q)


def _custom(loss: Callable) -> Callable:
    def fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value = loss(_wide(out).mean(1), y)
        if not isinstance(value, torch.Tensor) or value.shape != (out.shape[0],):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"the loss must return one loss per example, a tensor ({out.shape[0]},), got {got}: use reduction='none'"
            )
        value = _wide(value)
        if not bool(torch.isfinite(value).all()):
            raise FloatingPointError(
                f"the loss returned {int((~torch.isfinite(value)).sum())} non-finite value(s) (nan/inf) for the model's "
                "averaged outputs: clamp probabilities away from 0 before a log, or average probabilities, not logits"
            )
        return value

    return fn


class _Backgrounds:
    """Per-copy baselines (e - s, D, ...) of copies s..e-1: copy c takes each draw's background row
    ``rows[:, c % m]`` (the last copy, which keeps every feature, any row)."""

    def __init__(self, bg: torch.Tensor, rows: torch.Tensor):
        self.bg, self.rows = bg, rows  # rows: (D, m) indices into bg

    def __getitem__(self, sl: slice) -> torch.Tensor:
        m = self.rows.shape[1]
        k = torch.arange(sl.start, sl.stop, device=self.rows.device) % m
        return self.bg[self.rows[:, k].T]  # (e - s, D, ...)


def _evaluate(call, x, per_example, mask, coalitions, baselines, chunk_size, memory_budget, show_progress):
    return evaluate(call, (x, *per_example), (0,), masks=(mask,), baselines=(baselines,), coalitions=coalitions,
                    copy_baselines=True, chunk_size=chunk_size, memory_budget=memory_budget,
                    show_progress=show_progress)  # fmt: skip


def _draws(seed: int, start: int, stop: int, n_rows: int, n: int, m_all: int, m: int | None):
    """Draws start..stop-1: example indices (D,), ranks (D, F), background rows (D, m) or None
    (every row), from the counter-based bits of (seed, draw, slot): slot 0 the example, slots
    1..F the order's keys, the next M the background rows' (NOTE: [Counter-based draws])."""
    b = rng.bits(seed, torch.arange(start, stop), 1 + n + (m_all if m is not None else 0))
    idx = rng.below(b[:, 0], n_rows)
    rank = rng.orders(rng.orders(b[:, 1 : n + 1]))  # the position of each feature in the order
    rows = rng.orders(b[:, n + 1 :])[:, :m] if m is not None else None
    return idx, rank, rows


class _Chains:
    """The losses L_0..L_F along the chains of a block of draws (NOTE: [SAGE permutation draws in
    one evaluation]; the copies: NOTE: [Building the chains])."""

    def __init__(self, call, loss_fn, X, Y, bg, mask, n, per_example, chunk_size, memory_budget):
        self.call, self.loss_fn, self.n, self.y = call, loss_fn, n, Y
        self.chunk_size, self.memory_budget, self.m_all = chunk_size, memory_budget, bg.shape[0]
        self.shape, self.dtype = tuple(X.shape[1:]), output_float_dtype((X, *per_example))
        e = math.prod(self.shape)
        fid = mask.expand((1,) + self.shape).reshape(e)  # each element's feature 0..F-1
        self.fid = None if e == n and bool((fid == torch.arange(n, device=fid.device)).all()) else fid
        self.x, self.bg = X.reshape(X.shape[0], e), bg.reshape(bg.shape[0], e)
        self.bits = _BITS.get(X.dtype, X.dtype if not X.is_floating_point() and X.dtype != torch.bool else None)
        self.j0 = 0 if per_example else 1  # without per-example arguments the empty coalition's copies are
        self.f_bg = self.l_empty = None  # the background rows themselves, whatever the example: f(b) once
        if not per_example:
            self.f_bg = self._outputs(bg.clone(), [], copies_per_call((bg[:1],), 1, chunk_size, memory_budget), 1)
        self.j = (torch.arange(self.j0, n, device=X.device) - 1).reshape(1, n - self.j0, 1, 1)  # j - 1 per copy

    def _outputs(self, rows: torch.Tensor, pe: list, per: int, width: int) -> torch.Tensor:
        """The model at ``rows``: ``per`` chains of ``width`` rows per call (fewer after running out of memory)."""
        outs, s, adaptive = [], 0, self.chunk_size is None
        with model_calls():
            while s < rows.shape[0]:
                e = min(s + per * width, rows.shape[0])
                try:
                    out = self.call(rows[s:e], *[a[s:e] for a in pe])
                except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError on torch >= 2.5, any device
                    if not adaptive or per == 1:
                        raise
                    per = per // 2
                    continue
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"the model function must return a tensor, got {type(out).__name__}")
                if out.ndim == 0 or out.shape[0] != e - s:
                    raise ValueError(
                        f"the model returned {tuple(out.shape)} for {e - s} input rows: SAGE needs one output row per input row"
                    )
                outs.append(out)
                s = e
        out = as_floating(outs[0] if len(outs) == 1 else torch.cat(outs), self.dtype)
        check_finite(out)
        return out

    def losses(self, idx: torch.Tensor, pe: list, rank: torch.Tensor, rows) -> torch.Tensor:
        """(D, F + 1) losses L_0..L_F of the draws (examples ``idx``, ranks, background rows)."""
        d, k, m = rank.shape[0], self.n - self.j0, self.m_all if rows is None else rows.shape[1]
        x, y = self.x[idx], self.y[idx]
        width = k * m + 1  # each chain's rows: (F - j0) m perturbed copies, then x itself
        base = self.bg[None, None] if rows is None else self.bg[rows][:, None]  # (1 or D, 1, m, E)
        ranks = (rank if self.fid is None else rank[:, self.fid])[:, None, None, :]  # (D, 1, 1, E)
        buf = torch.empty((d, width, x.shape[1]), dtype=x.dtype, device=x.device)
        copies = buf[:, :-1].view(d, k, m, x.shape[1])
        if self.bits is None:
            torch.where(ranks > self.j, base, x[:, None, None], out=copies)
        else:  # NOTE: [Building the chains]
            drop = ((self.j - ranks) >> 63).to(self.bits)  # all ones where the copy takes the background's value
            xb, bb = x.view(self.bits)[:, None, None], base.view(self.bits)
            torch.bitwise_xor(xb, (xb ^ bb) & drop, out=copies.view(self.bits))
        buf[:, -1] = x
        rows_in = buf.reshape((d * width,) + self.shape)
        per = copies_per_call((rows_in[:width],), width, self.chunk_size, self.memory_budget, d)
        out = self._outputs(rows_in, [a.repeat_interleave(width, 0) for a in pe], per, width)
        out = out.reshape((d, width) + tuple(out.shape[1:]))
        parts = [self.loss_fn(out[:, -1:], y)[:, None]]
        if k:
            inner = out[:, :-1].reshape((d * k, m) + tuple(out.shape[2:]))
            parts.insert(0, self.loss_fn(inner, y.repeat_interleave(k, 0)).reshape(d, k))
        if self.j0:
            empty = self.f_bg.expand((d,) + tuple(self.f_bg.shape)) if rows is None else self.f_bg[rows]
            parts.insert(0, self.loss_fn(empty, y)[:, None])
        return torch.cat(parts, 1)


AHEAD = 1024  # draws made at once: counter-based, they are the same whatever the batching


def permutation(call, loss_fn, X, Y, bg, mask, n, per_example, n_permutations, n_background, convergence, block_size,
                 chunk_size, memory_budget, show_progress, generator):  # fmt: skip
    (seed,) = streams(generator, 1)
    if seed is None:  # torch's global generator gives the run's seed
        seed = int(torch.randint(0, 2**62, (1,)))
    chains = _Chains(call, loss_fn, X, Y, bg, mask, n, per_example, chunk_size, memory_budget)
    count, mean, m2 = 0, torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    loss_sums = torch.zeros(2, dtype=torch.float64)  # sums of L_0 and L_F over the draws
    converged, ratio, made = False, math.inf, (0, 0, None)
    bar = progress(show_progress, total=n_permutations, desc="SAGE draws", unit="draw")
    try:
        while count < n_permutations:
            stop = min(count + block_size, n_permutations)
            if stop > made[1]:
                end = min(count + max(block_size, AHEAD), n_permutations)
                drawn = _draws(seed, count, end, X.shape[0], n, bg.shape[0], n_background)
                made = (count, end, [t if t is None else t.to(X.device) for t in drawn] + [drawn[1]])
            s, e = count - made[0], stop - made[0]
            idx, rank, rows, rank_cpu = (t if t is None else t[s:e] for t in made[2])
            pe = [a[idx.to(a.device)] for a in per_example]
            losses = chains.losses(idx, pe, rank, rows).cpu()
            samples = (losses[:, :-1] - losses[:, 1:]).gather(1, rank_cpu)  # (D, F): the loss each feature removed
            count, mean, m2 = _merge(count, mean, m2, samples)
            loss_sums += losses[:, [0, -1]].sum(0)
            if bar is not None:
                bar.update(samples.shape[0])
            if count >= max(2, MIN_DRAWS) or count == n_permutations:
                se = (m2 / (count - 1) / count).sqrt() if count >= 2 else torch.full_like(mean, math.inf)
                # NOTE: [SAGE permutation draws in one evaluation]: one feature's spread is its |value|
                spread = float(mean.max() - mean.min()) if n > 1 else float(mean.abs().max())
                worst = float(se.max())
                ratio = worst / spread if spread > 0 else (0.0 if worst == 0 else math.inf)
                if bar is not None:
                    bar.set_postfix(ratio=f"{ratio:.3g}")
                if convergence is not None and ratio < convergence and count >= MIN_DRAWS:
                    converged = True
                    break
    finally:
        if bar is not None:
            bar.close()
    se = (m2 / (count - 1) / count).sqrt() if count >= 2 else torch.full((n,), math.inf, dtype=torch.float64)
    l_empty, l_full = (loss_sums / count).tolist()
    return mean, se, l_empty, l_full, count, converged, ratio


def _merge(count: int, mean: torch.Tensor, m2: torch.Tensor, samples: torch.Tensor):
    """Welford's running mean and sum of squared deviations, merged with a block of samples
    (Chan, Golub and LeVeque's update; NOTE: [Variance over chunks] in noise_tunnel.py)."""
    c = samples.shape[0]
    b_mean = samples.mean(0)
    b_m2 = (samples - b_mean).pow(2).sum(0)
    total = count + c
    delta = b_mean - mean
    return total, mean + delta * (c / total), m2 + b_m2 + delta.pow(2) * (count * c / total)


def exact(call, loss_fn, X, Y, bg, mask, n, per_example, block_size, chunk_size, memory_budget, show_progress):
    """Exact SAGE values over the N examples and M background rows, and L({}), L(all). The
    examples go ``block_size`` at a time (the outputs of a block, (block, (2^F - 1) M + 1, ...),
    are held at once)."""
    m, device = bg.shape[0], X.device
    codes = 2**n - 1  # every coalition but the full one, times M background rows, then f(x)

    def coalitions(s: int, e: int) -> torch.Tensor:
        code = torch.arange(s, e, device=device).div(m, rounding_mode="floor")  # codes // M; 2^F - 1 for the last
        return (((code[:, None] >> torch.arange(n, device=device)) & 1) == 1)[None]

    total = torch.zeros(codes + 1, dtype=torch.float64)
    for start in range(0, X.shape[0], block_size):
        stop = min(start + block_size, X.shape[0])
        x, y, b = X[start:stop], Y[start:stop], stop - start
        pe = [a[start:stop] for a in per_example]
        rows = torch.arange(m, device=device).expand(b, -1)
        outs = _evaluate(call, x, pe, mask, Coalitions(codes * m + 1, coalitions, shared=True), _Backgrounds(bg, rows),
                         chunk_size, memory_budget, show_progress)  # fmt: skip
        tail = tuple(outs.shape[2:])
        inner = loss_fn(outs[:, : codes * m].reshape((b * codes, m) + tail), y.repeat_interleave(codes, 0)).reshape(b, codes)
        full = loss_fn(outs[:, codes * m :], y)
        total += torch.cat([inner, full[:, None]], 1).sum(0).cpu()
    loss = total / X.shape[0]  # L(S) for S coded 0 .. 2^F - 1
    return shapley_of_losses(loss, n), float(loss[0]), float(loss[-1])


def shapley_of_losses(loss: torch.Tensor, n: int) -> torch.Tensor:
    """phi_i = sum over S without i of |S|! (F - |S| - 1)! / F! [L(S) - L(S + i)], for the losses
    L (2^F,) of the coalitions coded by their bits (feature i: bit i)."""
    code = torch.arange(2**n)
    size = torch.zeros(2**n, dtype=torch.long)
    for i in range(n):
        size += (code >> i) & 1
    weight = torch.tensor([1.0 / (n * math.comb(n - 1, k)) for k in range(n)], dtype=torch.float64)
    phi = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        without = code[((code >> i) & 1) == 0]
        phi[i] = (weight[size[without]] * (loss[without] - loss[without | (1 << i)])).sum()
    return phi
