"""Shapley values of the features sampled over permutations (the exact values over all 2^F
coalitions are in shapley_exact.py).

A feature's Shapley value is its marginal contribution ``v(S + i) - v(S)`` averaged over the
coalitions ``S`` of the other features, weighted as if the features joined in a uniformly random
order; ``v(S)`` is the model at the input with the features outside ``S`` at their baseline
(NOTE: [Features and coalitions] in perturb.py). The arguments shared with the other
perturbation methods (baselines, feature_mask, argnums, chunk_size, memory_budget,
show_progress, many outputs, aggregate-mode models) are described in ablation.py.

NOTE: [Shapley sampling in one evaluation]
A permutation p of the F features defines the chain of coalitions {}, {p_1}, {p_1, p_2}, ...,
all F; the differences of v along the chain are the marginal contributions of p_1, p_2, ...,
and they telescope to v(all) - v({}) = f(x) - f(baseline), so every sample is exactly complete.
All S chains are known before the model runs, so their inner coalitions (S * (F - 1) per
example, plus the empty one once) go through one `evaluate` call, folded into few model calls
and made chunk by chunk from the ranks (`Coalitions`), never all at once; v(all) is f(x)
itself. Permutations are drawn per example (NOTE: [Explicit randomness]), as the argsort of iid
uniforms, so with an int seed an example gets the same permutations in any batch and for any
chunk size. A model returning one number per batch shares one set of
permutations across the batch. An example's orders are over the features its mask holds (NOTE:
[Each example's own features] in masks.py), its chain F_e + 1 long: examples holding other sets
of ids draw apart, and the shorter chains are padded with empty coalitions in the one
evaluation.

The fast path (for the tabular benchmark: 32 rows, 20 features, S = 25, 15,264 model rows):
f(x) is one more copy in the first model call (`inputs_and_copies`: a call and a clone fewer;
f(x)'s rows then run in a bigger batch, which a matrix kernel may round differently in the last
bit). Where every example holds every feature (one feature set), `_copy_maker` makes each
chunk's copies straight from the ranks, held copy-major as float32 (exact to 2^24 features):
one ``lt`` of the ranks against the chain sizes writes the chunk's 0/1 keep masks (`_keeps`),
already laid out as the model rows, and one ``addcmul`` turns them into the copies in place,
``x k + b (1 - k)`` as `perturb` makes them (its ``torch.where`` for small chunks, off the CPU
and for inputs or baselines that are not finite; bit for bit, tested against the general path).
That replaced a bool chain mask, its transposed copy, a float cast and three float ops per
chunk, and the finiteness sums of every chunk. The permutations are the argsort of the
uniforms' bits as int64 (non-negative doubles sort as their bits: the same permutations, ~30%
faster than the float sort), drawn with one generator re-seeded per example. What remains
there (2 threads, medians): ~1.1 ms of model in 4 calls (budget.MAX_ROWS), ~0.3 ms for the draws
(32 per-example mt19937 fills and an argsort of 800 rows of 20, neither parallel), ~0.1 ms for
the copies, ~0.2 ms for the rest.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from . import tree as T
from .checks import is_traced, warn_if_training
from .copies import WHERE_ELEMENTS, _finite
from .gradients import attribution_fn
from .masks import FeatureSet, feature_sets, features, first_id, place, scatter_features, widen
from .perturb import Coalitions, as_floating, baseline_tree, inputs_and_copies, outputs_at
from .sampling import row_seeds, streams
from .std_error import check_std_error, mean_and_std_error

def _prepare(f, args, nums, as_tuple, baselines, feature_mask):
    warn_if_training(f)
    selected = T.split_args(args, nums)[0]
    masks, n = features(selected, feature_mask)
    base = baseline_tree(selected, baselines, as_tuple)
    out, aggregate = outputs_at(f, args, T.batch_size(selected))
    _check_shared(aggregate, masks, T.batch_size(selected))
    return selected, masks, n, base, out, aggregate


def _check_shared(aggregate: bool, masks, batch: int) -> None:
    if aggregate and any(m.shape[0] > 1 for m in T.leaves(masks)) and batch > 1:
        raise ValueError(
            "the model returns one number per batch, so attributions have one row and coalitions are "
            "shared by all examples: its feature_mask must be shared too (dim 0 of size 1)"
        )


def _spread(phi: torch.Tensor, masks, selected, as_tuple: bool):
    """(rows, F[, O]) per-feature values -> attributions like the inputs, K axis after the batch."""
    phi = phi.movedim(2, 1) if phi.ndim == 3 else phi
    attr = scatter_features(phi, masks, selected)
    return attr if as_tuple else attr[0]


def _ranks(rows: int, n_samples: int, n: int, stream, antithetic: bool, device, seeds=None) -> torch.Tensor:
    """(rows, n_samples, n): rank[b, s, i] = the position of feature i in example b's permutation s.

    The argsort of iid uniforms is a uniformly random permutation; antithetic pairs each drawn
    permutation with its reverse (rank -> n - 1 - rank), interleaved, cut to n_samples.
    ``seeds``: the rows' own, when they are some of the batch's examples (`per_example`).
    """
    drawn = math.ceil(n_samples / 2) if antithetic else n_samples
    u = _uniforms(stream, torch.empty((rows, drawn, n), dtype=torch.float64, device=device), seeds)
    rank = u.view(torch.int64).argsort(-1)  # NOTE: [Shapley sampling in one evaluation]: the uniforms' bits
    if antithetic:
        rank = torch.stack([rank, n - 1 - rank], dim=2).reshape(rows, 2 * drawn, n)[:, :n_samples]
    return rank


# NOTE: [Remembered permutations]
# With an int seed the permutations are a function of the rows' seeds (`row_seeds`: the seed, the
# row's position, its copy id), S, F and the antithetic flag, so a call with the same ones draws
# exactly what an earlier call drew. The attribution function keeps the last few such draws (each
# at most `MEMO_ELEMENTS` ranks) keyed by those, and a later call with the same batch size reuses
# them: the same numbers, bit for bit, without 32 generator seedings and an argsort of 800 rows
# (~0.25 ms of the tabular benchmark's ~2 ms). A torch.Generator or None draws afresh every call,
# as it must. The remembered ranks are read, never written.
MEMO_SIZE, MEMO_ELEMENTS = 4, 2**20


def _remembered_ranks(memo: dict, rows: int, n_samples: int, n: int, stream, antithetic: bool, device, seeds=None):
    """`_ranks`, looked up in ``memo`` first (NOTE: [Remembered permutations]); ``memo`` None: drawn."""
    if memo is None or rows * n_samples * n > MEMO_ELEMENTS:
        return _ranks(rows, n_samples, n, stream, antithetic, device, seeds)
    seeds = row_seeds(stream, rows) if seeds is None else seeds
    key = (tuple(seeds), n_samples, n, antithetic, str(device))
    rank = memo.get(key)
    if rank is None:
        rank = _ranks(rows, n_samples, n, stream, antithetic, device, seeds)
        if len(memo) >= MEMO_SIZE:
            memo.pop(next(iter(memo)))  # the oldest
        memo[key] = rank
    return rank


def _uniforms(stream, u: torch.Tensor, seeds=None) -> torch.Tensor:
    """`per_example`'s uniform draws into u (rows, ...), each row from its own generator, with one
    generator object re-seeded for each row (the same numbers as a new one each, ~1 us a row less)."""
    if stream is None:
        return u.uniform_(0.0, 1.0)
    g = torch.Generator(device=u.device)
    for row, seed in zip(u, row_seeds(stream, u.shape[0]) if seeds is None else seeds):
        row.uniform_(0.0, 1.0, generator=g.manual_seed(seed))
    return u


def shapley_value_sampling(
    f: Callable,
    *,
    n_samples: int = 25,
    baselines: Any = 0.0,
    feature_mask: Any = None,
    argnums: int | Sequence[int] = 0,
    generator=None,
    antithetic: bool = False,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool = False,
    return_std_error: bool = False,
) -> Callable:
    """Shapley values estimated from random feature permutations (Strumbelj & Kononenko 2010).

    For each of ``n_samples`` uniformly random orders of the F features, the features are added
    one at a time to the baseline (every feature removed); a feature's sample is the change of
    the output when it joins. ``phi_i = (1/S) sum_s [v(P_s(i) + i) - v(P_s(i))]`` with
    ``P_s(i)`` the features before i in order s. Unbiased; every sample sums exactly to
    ``f(x) - f(baseline)``. All orders go through one batched evaluation (NOTE: [Shapley
    sampling in one evaluation]): ``B * (1 + S * (F - 1))`` perturbed rows.

    Args (beyond the perturbation methods' shared ones, see ablation.py):
      n_samples: S, the number of permutations per example.
      generator: int seed, ``torch.Generator`` or None (NOTE: [Explicit randomness]); each
        example draws its own permutations.
      antithetic: pair each permutation with its reverse (S/2 drawn, each used twice, an odd S
        drops the last reverse); reduces the variance when contributions grow or shrink with
        the coalition's size.
      return_std_error: also return each feature's Monte Carlo standard error, ``sqrt(s^2 / S)``
        with s^2 the unbiased variance of its S marginal contributions (antithetic: of the S/2
        pair means, over S/2), from the same evaluations (NOTE: [Standard errors of Monte Carlo
        attributions] in std_error.py); n_samples >= 2 (antithetic: even, >= 4).

    Returns:
      ``fn(*args, baselines=..., feature_mask=...)`` like ``args[argnums]`` (a K axis after the
      batch for ``xattr.outputs``), or ``(attributions, std_error)``, the second alike.

    Example:
      >>> attr = xattr.shapley_value_sampling(xattr.target(model, 1), n_samples=50, generator=0)(x)
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if not isinstance(antithetic, bool):
        raise TypeError(f"antithetic must be True or False, got {antithetic!r}")
    check_std_error(return_std_error, n_samples, "shapley_value_sampling", pairs=antithetic)
    nums, as_tuple = T.normalize_argnums(argnums)
    memo = {} if isinstance(generator, int) and not isinstance(generator, bool) else None  # NOTE: [Remembered permutations]

    def fn(*args, baselines=baselines, feature_mask=feature_mask):
        warn_if_training(f)
        selected = T.split_args(args, nums)[0]
        masks, n = features(selected, feature_mask)
        base, batch = baseline_tree(selected, baselines, as_tuple), T.batch_size(selected)
        (stream,) = streams(generator, 1)
        drawn = {}  # rows (the batch, or 1 in aggregate mode) -> its feature sets and permutations

        def chains(aggregate: bool) -> Coalitions:  # f(x) goes into the first call (`inputs_and_copies`)
            _check_shared(aggregate, masks, batch)
            rows = 1 if aggregate else batch
            if rows not in drawn:
                sets = feature_sets(masks, n, rows)
                seeds = None if stream is None else row_seeds(stream, rows)
                device = T.leaves(selected)[0].device
                drawn[rows] = sets, [_remembered_ranks(memo, s.count(rows), n_samples, s.n, stream, antithetic, device, s.pick(seeds))
                                     for s in sets]
            sets, ranks = drawn[rows]  # (r_s, S, F_s)
            copies = max(_chain_length(n_samples, s.n) for s in sets)
            made = _copy_maker(ranks[0], selected, masks, base) if len(sets) == 1 and sets[0].ids is None else None
            return Coalitions(copies, lambda s, e: _chains(ranks, sets, n, rows, s, e), shared=rows == 1, copies=made)

        out, _, vals = inputs_and_copies(f, args, nums, batch, masks=masks, baselines=base, coalitions=chains, chunk_size=chunk_size,
                                         memory_budget=memory_budget, show_progress=show_progress)  # fmt: skip
        sets, ranks = drawn[out.shape[0]]
        vals, pairs = as_floating(vals), antithetic if return_std_error else None
        parts = [_contributions(s.pick(vals), s.pick(out), rank, pairs) for s, rank in zip(sets, ranks)]
        phi = _spread(place([m for m, _ in parts], sets, n, dim=1), masks, selected, as_tuple)
        if not return_std_error:
            return phi
        return phi, _spread(place([se for _, se in parts], sets, n, dim=1), masks, selected, as_tuple)

    return attribution_fn(fn, f)


def _chain_length(n_samples: int, n: int) -> int:
    """Copies evaluated for S permutations of n features: the empty coalition, then each chain's
    n - 1 inner ones."""
    return 1 + n_samples * (n - 1)


def _chains(ranks: list[torch.Tensor], sets: list[FeatureSet], n: int, rows: int, start: int, stop: int) -> torch.Tensor:
    """Copies start..stop-1 of every feature set's chains over all n ids (rows, stop - start, n)
    (`widen`): a set with fewer copies has empty coalitions past its last."""
    if len(sets) == 1 and sets[0].ids is None:
        return _chain(ranks[0], start, stop)
    parts = []
    for s, rank in zip(sets, ranks):
        stop_s = min(stop, _chain_length(rank.shape[1], s.n))
        parts.append(_chain(rank, start, stop_s) if start < stop_s else rank.new_zeros((rank.shape[0], 0, s.n), dtype=torch.bool))
    return widen(parts, sets, n, rows, copies=stop - start)


def _contributions(vals: torch.Tensor, out: torch.Tensor, rank: torch.Tensor, pairs: bool | None = None):
    """Each feature's mean marginal contribution along the chains of ``rank`` (rows, S, F), (rows,
    F[, O]), from the model at the chains' copies, vals (rows, >= 1 + S (F - 1)[, O]), and f(x),
    out (rows[, O]); and its standard error alike, or None when ``pairs`` is None (``pairs``: the
    chains are antithetic pairs, NOTE: [Standard errors of Monte Carlo attributions] in std_error.py)."""
    rows, n_samples, n = rank.shape
    vals = vals[:, : _chain_length(n_samples, n)]
    tail = tuple(vals.shape[2:])  # (O,) for many outputs
    inner = vals[:, 1:].reshape((rows, n_samples, n - 1) + tail)
    start = vals[:, :1, None].expand((rows, n_samples, 1) + tail)
    end = out[:, None, None].expand((rows, n_samples, 1) + tail).to(vals.dtype)
    v = torch.cat([start, inner, end], 2)  # (rows, S, F + 1[, O]): v along each chain
    steps = v[:, :, 1:] - v[:, :, :-1]  # step j adds the feature of rank j
    index = rank.reshape(rank.shape + (1,) * len(tail)).expand(rank.shape + tail)
    samples = torch.gather(steps, 2, index)  # (rows, S, F[, O]): each feature's contribution per chain
    return (samples.mean(1), None) if pairs is None else mean_and_std_error(samples, 1, pairs)


def _chain(rank: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Copies start..stop-1 of the chains (rows, stop - start, F): copy 0 is the empty coalition,
    copy 1 + s * (F - 1) + (j - 1) the first j features (j = 1 .. F-1) of permutation s."""
    rows, _, n = rank.shape
    parts = []
    if start == 0:
        parts.append(torch.zeros((rows, 1, n), dtype=torch.bool, device=rank.device))
        start = 1
    if stop > start and n > 1:
        first, last = (start - 1) // (n - 1), (stop - 2) // (n - 1) + 1  # the permutations of copies start..stop-1
        if (last - first) * (n - 1) <= 2 * (stop - start) + 64:  # whole chains, little to cut off: one comparison
            sizes = torch.arange(1, n, device=rank.device)
            block = (rank[:, first:last, None, :] < sizes[:, None]).reshape(rows, -1, n)
            offset = first * (n - 1) + 1
            parts.append(block[:, start - offset : stop - offset])
        else:  # a few copies of a long chain (many features, a small budget): those copies alone
            copy = torch.arange(start - 1, stop - 1, device=rank.device)  # among the chains' copies
            parts.append(rank[:, copy // (n - 1), :] < (copy % (n - 1) + 1)[:, None])
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def _copy_maker(rank: torch.Tensor, selected: tuple, masks, base: tuple) -> Callable[[int, int], Any] | None:
    """``copies(start, stop)`` for `Coalitions`: the inputs' copies of the chains start..stop-1 made
    straight from the ranks (rows, S, F), as `perturb` makes them (NOTE: [Shapley sampling in one
    evaluation]); None where the general path makes them: shared permutations (rows not the
    batch), a torch.func transform, a mask neither a range of ids nor (1 or B, ...) ids."""
    rows, _, n = rank.shape
    xs, bs, ms = T.leaves(selected), T.leaves(base), T.leaves(masks)
    if n > 2**24 or any(is_traced(x) or is_traced(b) or x.shape[0] != rows for x, b in zip(xs, bs)):
        return None  # (ranks as float32 are exact up to 2^24)
    leaves = []
    for x, b, m in zip(xs, bs, ms):
        first = first_id(m)
        if first is None and m.shape[0] not in (1, rows):
            return None
        index = None if first is not None else torch.broadcast_to(m, (m.shape[0],) + tuple(x.shape[1:])).reshape(m.shape[0], -1)
        fast = x.dtype in (torch.float32, torch.float64) and x.device.type == "cpu" and _finite(x, b)  # `perturb`'s float ops
        leaves.append((x, b.unsqueeze(0), first, index, fast, fast and b.ndim == 0 and b.item() == 0))
    ranked = rank.transpose(0, 1).to(torch.float32, memory_format=torch.contiguous_format)  # (S, rows, F), copy-major
    sizes = torch.arange(1, n, dtype=torch.float32, device=rank.device)
    dtypes = {x.dtype for x in xs}
    one = len(xs) == 1 and leaves[0][2] == 0 and xs[0][0].numel() == n  # the leaf's keep is the whole of the copies' keep
    treedef = T.optree.tree_structure(selected, namespace="xattr")

    def copies(start: int, stop: int):
        c = stop - start
        floats = [fast and x.numel() * c > WHERE_ELEMENTS for x, _, _, _, fast, _ in leaves]  # as `perturb` chooses
        keep = _keeps(ranked, sizes, start, stop, next(iter(dtypes)) if all(floats) and len(dtypes) == 1 else torch.bool)
        made = []
        for (x, b, first, index, _, zero), by_float in zip(leaves, floats):
            if first is not None:
                k = keep if one else keep[:, :, first : first + x[0].numel()]
            else:
                k = keep.index_select(2, index[0]) if index.shape[0] == 1 else keep.gather(2, index.expand(c, -1, -1))
            k = k.reshape((c, rows) + tuple(x.shape[1:]))
            if not by_float:
                copy = torch.where(k if k.dtype == torch.bool else k != 0, x, b)
            else:  # x k + b (1 - k), k in {0, 1} (for a zero b, b (1 - k) is b): into k where k is this leaf's own
                mine = k.dtype == x.dtype and (one or first is None)
                k = k if k.dtype == x.dtype else k.to(x.dtype)
                copy = torch.addcmul(b if zero else (1 - k).mul_(b), x, k, out=k if mine or k.dtype != keep.dtype else None)
            made.append(copy.reshape((-1,) + tuple(x.shape[1:])))
        return T.optree.tree_unflatten(treedef, made)

    return copies


def _keeps(ranked: torch.Tensor, sizes: torch.Tensor, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
    """The keep masks (stop - start, rows, F) of copies start..stop-1 of the chains, 0/1 in dtype,
    from the ranks copy-major (S, rows, F) as floats: copy -1 keeps every feature (the inputs,
    `evaluate`'s ``with_inputs``), copy 0 none, copy 1 + p (F - 1) + (j - 1) those of rank < j in
    permutation p (``sizes``: 1..F-1)."""
    _, rows, n = ranked.shape
    c, inner = stop - start, max(start, 1)  # the first of the chains' copies
    if n > 1 and stop > inner:
        first, last = (inner - 1) // (n - 1), (stop - 2) // (n - 1) + 1  # the permutations of copies inner..stop-1
        if (last - first) * (n - 1) <= 2 * c + 64:  # whole chains, little to cut off: one comparison
            keep = torch.empty(((last - first) * (n - 1) + 2, rows, n), dtype=dtype, device=ranked.device)
            torch.lt(ranked[first:last, None], sizes[:, None, None], out=keep[2:].view(last - first, n - 1, rows, n))
            keep = keep[start + 1 - first * (n - 1) :][:c]  # keep[2] is copy 1 + first (F - 1), keep[1] copy 0 (first = 0)
        else:  # a few copies of long chains: those alone
            keep = torch.empty((c, rows, n), dtype=dtype, device=ranked.device)
            copy = torch.arange(inner - 1, stop - 1, device=ranked.device)  # among the chains' copies
            torch.lt(ranked[copy // (n - 1)], sizes[copy % (n - 1), None, None], out=keep[inner - start :])
    else:
        keep = torch.empty((c, rows, n), dtype=dtype, device=ranked.device)
    if start <= 0 < stop:
        keep[-start] = 0
    if start < 0:
        keep[0] = 1
    return keep
