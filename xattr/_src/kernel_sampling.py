"""KernelSHAP's paired sampler: whole coalition sizes enumerated, the rest drawn with their complements.

NOTE: [Paired KernelSHAP sampling]
``kernel_shap(..., sampling="paired")`` spends the same budget as Captum's sampler, N =
``n_samples - 2`` coalitions besides the empty and the full one, in the way Lundberg & Lee's
shap package does (and Covert & Lee 2021 analyse), on M features with the Shapley kernel
k(s) = (M - 1) / (C(M, s) s (M - s)):

1. Sizes come in pairs {s, M - s}, s = 1..floor(M/2) (one size when s = M - s), holding
   c_s = C(M, s) coalitions (2 C(M, s) for two sizes) and the kernel mass m_s = c_s k(s)
   ((M - 1) / (s (M - s)) per size). From the outside in, a pair is *enumerated* (every coalition
   of its sizes used once, with weight k(s)) while the budget left, N', would draw at least c_s
   of them from the remaining sizes' kernel distribution: N' m_s / (mass of the pairs not yet
   enumerated) >= c_s (1 - 1e-8); then N' -= c_s. With N >= 2^M - 2 every pair is enumerated and
   the fit is the exact Shapley value.
2. The rest, P = floor(N' / 2) pairs of coalitions (an odd N' leaves one evaluation unused), is
   drawn from the sizes lo..hi not enumerated: a size s with probability proportional to
   1 / (s (M - s)), then s features uniformly (the selection sampling of `shapley_draws`: one
   uniform for the size, one per feature), and the coalition S comes with its complement M \\ S
   (antithetic: S and M \\ S have the same kernel weight and, by that symmetry, the same
   distribution). Draws repeat until P *distinct* pairs have been seen, at most 4 N' draws (as
   shap's); a pair seen again adds one to its count instead of costing evaluations. With R =
   sum_{s = lo..hi} (M - 1) / (s (M - s)) the remaining kernel mass and D the draws made up to the
   P-th distinct pair, each member of a pair drawn c times weighs R c / (2 D): a Monte Carlo
   estimate of the kernel-weighted squares over the sizes not enumerated (unbiased for a fixed
   D; stopping at the P-th distinct pair makes D random, as in shap), whose weights sum to R, as
   those sizes' exact weights do.
3. The fit is the same constrained weighted least squares as the default's (`constrained_lstsq`:
   efficiency imposed exactly, for every budget).

The coalitions evaluated per example are: the empty one, the enumerated ones (per pair, the
s-subsets in lexicographic order of their features, then their complements when M - s != s),
then the drawn pairs in the order of their first draw, each as [the member without the last
feature, its complement]. Pairs are told apart by that member, packed into 62-bit words
(ceil(M / 62) per pair) and sorted per example, so the bookkeeping is batched and exact.

Randomness: every example draws from its own generator (NOTE: [Explicit randomness]), m + 1
float64 uniforms per draw, in rounds (first P + P/2 + 8 draws, then doubling the drawn count, up
to the cap) until every example of its group holds P distinct pairs. Groups hold as many
examples as their keys' sorts fit the memory budget; on the CPU a round's uniforms are filled a
budget at a time, each example continuing its generator, and since consecutive CPU fills
continue one sequence (NOTE: [Coalition draws within the memory budget] in coalitions.py) the
result is that of drawing one at a time until the P-th distinct pair, whatever the rounds, the
groups and the budget (tested against such a loop). On other devices a round is one fill per
example, its size fixed by P, so the draws are still the example's own. An example's values
depend on its generator alone: the same in any batch at the same position, the first k of a
batch the same alone.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .masks import FeatureSet

SAMPLINGS = ("captum", "paired")
_WORD = 62  # features per int64 key word (bit 63, the sign, unused)


class SizePlan(NamedTuple):
    """The enumeration rule's outcome for M features and N coalitions (NOTE: [Paired KernelSHAP sampling])."""

    enumerated: int  # pairs of sizes {s, M - s}, s = 1..enumerated, used whole
    pairs: int  # P: distinct complementary pairs to draw from the other sizes
    lo: int  # the sizes drawn: lo..hi (empty when lo > hi)
    hi: int
    mass: float  # R: their kernel mass, sum (M - 1) / (s (M - s)) over s = lo..hi
    left: int  # N': the budget left after the enumeration (2 P or 2 P + 1)


def pair_counts(m: int) -> list[int]:
    """The coalitions of each pair of sizes {s, m - s}, s = 1..m // 2 (one size where 2 s = m)."""
    return [math.comb(m, s) * (1 if 2 * s == m else 2) for s in range(1, m // 2 + 1)]


def size_plan(m: int, n_coalitions: int, start: int = 0) -> SizePlan:
    """Which sizes ``n_coalitions`` (besides the empty and the full one) enumerate, and what is
    drawn; ``start``: the first pairs of sizes {s, m - s}, s = 1..start, are enumerated whatever
    the budget (KernelSHAP-IQ's border; the caller checks that the budget holds them)."""
    half = m // 2
    count = pair_counts(m)
    mass = [(m - 1) / (s * (m - s)) * (1 if 2 * s == m else 2) for s in range(1, half + 1)]
    j = min(start, half)
    left = n_coalitions - sum(count[:j])
    if n_coalitions >= 2**m - 2:
        j, left = half, n_coalitions - (2**m - 2)
    while j < half and left * (mass[j] / math.fsum(mass[j:])) / count[j] >= 1 - 1e-8:
        left -= count[j]
        j += 1
    lo, hi = j + 1, m - 1 - j
    sampled = math.fsum((m - 1) / (s * (m - s)) for s in range(lo, hi + 1))
    return SizePlan(j, left // 2 if lo <= hi else 0, lo, hi, sampled, left)


def enumerated_coalitions(m: int, plan: SizePlan, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The plan's enumerated coalitions (E, m) bool, each pair's s-subsets then their
    complements, and their Shapley kernel weights (E,) in ``dtype``."""
    parts, weights = [torch.zeros(0, m, dtype=torch.bool, device=device)], []
    for s in range(1, plan.enumerated + 1):
        idx = torch.combinations(torch.arange(m, device=device), s)
        z = torch.zeros(idx.shape[0], m, dtype=torch.bool, device=device)
        z.scatter_(1, idx, True)
        both = [z] if 2 * s == m else [z, ~z]
        parts += both
        weights += [(m - 1) / (math.comb(m, s) * s * (m - s))] * (len(both) * z.shape[0])
    return torch.cat(parts), torch.tensor(weights, dtype=torch.float64).to(device=device, dtype=dtype)


def paired_coalitions(s: FeatureSet, rows: int, n_samples: int, stream, seeds, device, dtype, budget: int,
                      plan: SizePlan | None = None) -> tuple:  # fmt: skip
    """One feature set's coalitions with the paired sampler, as `_kernel_coalitions` gives them:
    (its examples or 1, 1 + E + 2P, n_s) bool, the empty one first, and the others' weights (its
    examples, E + 2P) (NOTE: [Paired KernelSHAP sampling]); ``plan``: `size_plan`'s for the set,
    where the caller fixes one (KernelSHAP-IQ's border)."""
    m, count = s.n, s.count(rows)
    plan = size_plan(m, n_samples - 2) if plan is None else plan
    enum, w_enum = enumerated_coalitions(m, plan, device, dtype)
    if plan.pairs == 0:
        z = torch.cat([torch.zeros(1, m, dtype=torch.bool, device=device), enum])[None]
        return z, w_enum[None].expand(count, -1)
    e = enum.shape[0]
    z = torch.zeros(count, 1 + e + 2 * plan.pairs, m, dtype=torch.bool, device=device)
    z[:, 1 : 1 + e] = enum
    w = torch.empty(count, e + 2 * plan.pairs, dtype=dtype, device=device)
    w[:, :e] = w_enum
    seeds = s.pick(seeds)
    cap = 4 * plan.left
    words = -(-m // _WORD)
    per = max(1, budget // max(1, 6 * 8 * cap * words))  # examples whose keys and sort fit the budget
    for a in range(0, count, per):
        b = min(a + per, count)
        keys, runs = _draw_until_distinct(b - a, plan, m, cap, stream, None if seeds is None else seeds[a:b], device, budget)
        pairs, weight, valid = _first_pairs(keys, runs, plan, m)
        z[a:b, 1 + e :: 2], z[a:b, 2 + e :: 2] = pairs, ~pairs & valid[..., None]  # unfilled slots: empty, weight 0
        w[a:b, e::2], w[a:b, e + 1 :: 2] = weight, weight
    return z, w


def _size_cdf(plan: SizePlan, m: int) -> torch.Tensor:
    sizes = torch.arange(plan.lo, plan.hi + 1, dtype=torch.float64)
    cdf = torch.cumsum((m - 1) / (sizes * (m - sizes)), 0)
    return cdf / cdf[-1]


def _keys(u: torch.Tensor, plan: SizePlan, m: int, cdf: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """The pair keys (d, words) of the draws made from the uniforms u (d, m + 1): a size by
    ``cdf`` from u[:, 0], then selection sampling (feature j taken with probability (size - taken
    so far) / (m - j)), made canonical (the member without the last feature) and packed."""
    need = (torch.searchsorted(cdf, u[:, 0].contiguous(), right=True).clamp_max(plan.hi - plan.lo) + plan.lo).to(u.dtype)
    z = torch.empty(u.shape[0], m, dtype=torch.bool, device=u.device)
    for j in range(m):
        z[:, j] = u[:, j + 1] * (m - j) < need
        need = need - z[:, j].to(need.dtype)
    z ^= z[:, -1:].clone()  # the complement when the last feature is in: one key per pair
    words = -(-m // _WORD)
    packed = torch.zeros(u.shape[0], words * _WORD, dtype=torch.int64, device=u.device)
    packed[:, :m] = z
    return (packed.view(-1, words, _WORD) * bits).sum(-1)  # integer sums: exact in any order


def _unpack(keys: torch.Tensor, m: int) -> torch.Tensor:
    j = torch.arange(m, device=keys.device)
    return ((keys[..., j // _WORD] >> (j % _WORD)) & 1).bool()


def _draw_until_distinct(rows: int, plan: SizePlan, m: int, cap: int, stream, seeds, device, budget: int) -> tuple:
    """Each example's pair keys (rows, D, words), drawn in rounds from its generator until every
    example holds ``plan.pairs`` distinct pairs or D = ``cap``, and their `_runs`."""
    bits = torch.ones(_WORD, dtype=torch.int64, device=device) << torch.arange(_WORD, device=device)
    cdf = _size_cdf(plan, m).to(device)
    gens = [None if stream is None else torch.Generator(device=device).manual_seed(seeds[i]) for i in range(rows)]
    cpu = torch.device(device).type == "cpu"
    step = max(1, budget // (8 * (m + 1) * rows)) if cpu else None  # draws per fill: NOTE: [Coalition draws within the memory budget]
    done, d = [], min(cap, plan.pairs + plan.pairs // 2 + 8)
    while True:
        for a in range(0, d, step or d):
            u = torch.empty(rows, min(step or d, d - a), m + 1, dtype=torch.float64, device=device)
            for i, g in enumerate(gens):  # each example continues its own generator
                u[i].uniform_(0.0, 1.0, generator=g)
            done.append(_keys(u.view(-1, m + 1), plan, m, cdf, bits).view(rows, u.shape[1], -1))
        keys = torch.cat(done, 1)
        runs = _runs(keys)
        drawn = keys.shape[1]
        if drawn >= cap or bool((runs[2].sum(1) >= plan.pairs).all()):
            return keys, runs
        d = min(cap - drawn, drawn)


def _runs(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A stable lexicographic sort of each example's keys (rows, D, words): (order (rows, D), the
    draws in sorted order; new (rows, D), whether a sorted position starts a run of equal keys;
    first (rows, D), whether a draw, in draw order, is its pair's first)."""
    rows, D, words = keys.shape
    order = torch.arange(D, device=keys.device).expand(rows, D)
    for w in reversed(range(words)):  # least significant word first: stable sorts make it lexicographic
        order = order.gather(1, torch.sort(keys[..., w].gather(1, order), dim=1, stable=True).indices)
    ranked = keys.gather(1, order[..., None].expand(-1, -1, words))
    new = torch.ones(rows, D, dtype=torch.bool, device=keys.device)
    new[:, 1:] = (ranked[:, 1:] != ranked[:, :-1]).any(-1)
    return order, new, torch.empty_like(new).scatter_(1, order, new)  # stable: a run's head is the pair's first draw


def _distinct(keys: torch.Tensor, runs: tuple, pairs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From `_runs`: first (rows, D), whether a draw is its pair's first; used (rows,), the draws
    up to the ``pairs``-th distinct pair (all D when fewer are distinct); count (rows, D), the
    draws of each draw's pair among those (cumulative sums over the sorted runs: no scatter-add,
    deterministic on every device)."""
    rows, D, _ = keys.shape
    order, new, first = runs
    used = (first.cumsum(1) < pairs).sum(1).add(1).clamp_max(D)
    at = torch.arange(D, device=keys.device).expand(rows, D)
    taken = torch.cat([torch.zeros(rows, 1, dtype=torch.int64, device=keys.device), (order < used[:, None]).cumsum(1)], 1)
    start = torch.where(new, at, 0).cummax(1).values  # each sorted position's run of equal keys: [start, end)
    end = torch.where(torch.cat([new[:, 1:], torch.ones_like(new[:, :1])], 1), at + 1, D).flip(1).cummin(1).values.flip(1)
    count = taken.gather(1, end) - taken.gather(1, start)
    return first, used, torch.empty_like(count).scatter_(1, order, count)


def _first_pairs(keys: torch.Tensor, runs: tuple, plan: SizePlan, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``plan.pairs`` distinct pairs of each example's draws, (rows, P, m) bool (the
    members without the last feature), and each member's weight R c / (2 D) (rows, P) float64:
    c the pair's draws among the D up to the P-th distinct one (all draws when fewer are
    distinct; missing pairs, ``valid`` False, are empty and weigh 0)."""
    rows, D, _ = keys.shape
    first, used, counts = _distinct(keys, runs, plan.pairs)
    at = torch.arange(D, device=keys.device).expand(rows, D)
    pos = torch.full((rows, plan.pairs), D, dtype=torch.int64, device=keys.device)
    ranked = torch.where(first & (at < used[:, None]), at, D).sort(1).values[:, : plan.pairs]
    pos[:, : ranked.shape[1]] = ranked  # the selected draws in draw order, D where fewer are distinct
    valid = pos < D
    pos = pos.clamp_max(D - 1)
    c = counts.gather(1, pos).to(torch.float64) * valid
    pairs = _unpack(keys.gather(1, pos[..., None].expand(-1, -1, keys.shape[2])), m) & valid[..., None]
    return pairs, c * (plan.mass / (2 * used[:, None].to(torch.float64))), valid
