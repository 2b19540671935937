"""DeepLift's Rescale at order statistics along a dim (kind ``"sort"``: NOTE: [Order statistics along
a dim] in order_stats.py): `Rescale` hands these ops here.

NOTE: [DeepLift at order statistics]
Along the sorted dim, output slot j is the order statistic of ascending rank r_j: ``y_j = x[pi(j)]``
at the example, ``y_ref_j = x_ref[pi_ref(j)]`` at the reference. Rescale's multiplier of an
elementwise op, ``(y - y_ref) / (x - x_ref)``, is the op's derivative averaged along the straight
path from the reference to the example; here the derivative is a permutation matrix, and its
average is the multiplier: ``M[j, p]`` = the fraction of the path ``x_ref + t (x - x_ref)``, t in
[0, 1], on which position p holds rank r_j. Each y_j is continuous and piecewise linear along the
path with slope ``dx[p]`` while p holds its rank, so ``sum_p M[j, p] dx[p] = y_j - y_ref_j``
exactly, for any x and reference, with no division (no eps) and every multiplier in [0, 1] (each
row and each column of the full sort's M sums to 1).

The max-pool rule (NOTE: [Max-pool multipliers per output]), each output's change split between
pi(j) and pi_ref(j), is exact for the max and the min alone: at another rank the change can come
from neither position (x = (1, 2, 9), x_ref = (1, 2, 0): the median moves from 1 to 2, and
neither x[1] nor x_ref[0] moved), and where one did, its share over its own difference is
unbounded (its difference is not bounded below by the change, as at a maximum). So kind "sort"
takes the path average; at the extreme ranks (``topk(x, 1)``) it differs from kind "max"'s
max-pool rule, both exact.

Computation: the order just after t = 0 (by x_ref, then the direction ``x - x_ref``, then index)
and just before t = 1 (by x, then minus the direction, then index) give each position p's rank
at the start and at the end (`_rank`); each q on the other side of p at the end crosses p once, at ``t = a / (a - c)`` (a, c: the differences at 0 and 1,
read from the endpoints themselves, so a crossing lies in [0, 1] and ``t_pq == t_qp`` bit for
bit), moving p's rank by one. p's crossing times sorted give the segments on which its rank is
constant, and their lengths go to M by a scatter. O(n^2 log n) time and O(n^2) memory per
sorted vector of length n, in blocks of positions (at most ``_BLOCK`` elements at once); M has
one row per returned slot (k for topk). Where only some ranks are returned (topk, kthvalue,
median), only the positions that can reach them somewhere on the path are computed
(`_reachable`): top-3 of 200 steps in 32 channels for 8 examples took 0.07 s (a reference of 0)
to 0.15 s (a random one) on one CPU thread, against 0.003 s for the ordinary gradient; a full
sort of the same took 0.6-0.85 s. The backward is ``g @ M``. Rows pair as for Rescale
(NOTE: [Paired rows], [Shared reference], [Rows in dim 0 or dim 1]); where the sorted dim holds
the rows, or outside paired rows, the ordinary gradient: to torch's indices.
"""

from __future__ import annotations

import torch

from .deeplift_rules import _halves, _on_rows

_BLOCK = 1 << 22  # elements of the (..., positions, n) temporaries at once


def path_multipliers(u1: torch.Tensor, u0: torch.Tensor, ranks) -> torch.Tensor:
    """``M[..., j, p]``: the fraction of the path from u0 to u1 (broadcast, sorted along the last
    dim of size n) on which position p holds ascending rank ``ranks[j]`` (NOTE: [DeepLift at order
    statistics])."""
    u1, u0 = torch.broadcast_tensors(u1, u0)
    n, lead = u1.shape[-1], u1.shape[:-1]
    slots = len(ranks)
    if n == 0 or slots == 0:
        return u1.new_zeros(lead + (slots, n))
    slot_of = torch.full((n,), slots, dtype=torch.long, device=u1.device)  # rank -> slot (slots: dropped)
    slot_of[torch.as_tensor(ranks, dtype=torch.long, device=u1.device)] = torch.arange(slots, device=u1.device)
    d = u1 - u0
    start, end = _rank(u0, d), _rank(u1, -d)  # each position's rank just after t = 0 and just before t = 1
    positions = _reachable(start, end, min(ranks), max(ranks)) if slots < n else None
    every = positions is None
    if every:
        positions = torch.arange(n, device=u1.device).expand(lead + (n,))
    per = max(1, _BLOCK // max(1, u1[..., 0].numel() * n))
    blocks = [_columns(u1, u0, start, end, positions[..., i : i + per], slot_of, slots)
              for i in range(0, positions.shape[-1], per)]
    m = torch.cat(blocks, -1) if len(blocks) > 1 else blocks[0]
    if every:
        return m
    return m.new_zeros(lead + (slots, n)).scatter(-1, positions.unsqueeze(-2).expand(m.shape), m)


def _rank(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Each position's rank in the order by ``first``, then ``second``, then index."""
    order = torch.sort(second, dim=-1, stable=True).indices
    order = order.gather(-1, torch.sort(first.gather(-1, order), dim=-1, stable=True).indices)
    return torch.empty_like(order).scatter(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))


def _reachable(start: torch.Tensor, end: torch.Tensor, low: int, high: int):
    """The positions (..., C) that may hold a rank in [low, high] somewhere on the path, padded
    with others to the same count C in every vector; None under torch.func transforms (the count
    is read) or where every position may. A position that B others precede at both ends (so all
    along: the paths are straight) and A others follow stays between ranks B and n - 1 - A, so
    the others' columns are 0. B >= start + end - (n - 1) and A >= n - 1 - start - end first
    leave out most positions at O(n) cost; B and A are counted (O(n) each) for those left."""
    if torch._C._functorch.maybe_current_level() is not None:
        return None
    n = start.shape[-1]
    total = start + end
    kept = _first((total >= low) & (total <= high + n - 1))
    if kept is None:
        return None
    s, e = start.gather(-1, kept).unsqueeze(-1), end.gather(-1, kept).unsqueeze(-1)
    count = lambda t: t.view(torch.uint8).sum(-1, dtype=torch.int32)  # noqa: E731 (bool sums are slower)
    before = count((start.unsqueeze(-2) < s) & (end.unsqueeze(-2) < e))
    after = count((start.unsqueeze(-2) > s) & (end.unsqueeze(-2) > e))
    reach = (total.gather(-1, kept) >= low) & (total.gather(-1, kept) <= high + n - 1) & (before <= high) & (n - 1 - after >= low)
    chosen = _first(reach)
    return kept if chosen is None else kept.gather(-1, chosen)


def _first(keep: torch.Tensor):
    """The indices (..., C) of the True entries of ``keep`` first, C the most in any vector (at
    least 1); None where that is every entry."""
    c = int(keep.sum(-1).max()) if keep.numel() else 0
    if c >= keep.shape[-1]:
        return None
    return torch.sort((~keep).to(torch.uint8), dim=-1, stable=True).indices[..., : max(c, 1)]


def _columns(u1, u0, start, end, p, slot_of, slots: int) -> torch.Tensor:
    """M's columns (..., slots, positions) of the positions p (..., positions)."""
    a = u0.unsqueeze(-2) - u0.gather(-1, p).unsqueeze(-1)  # (..., positions, n): x_q - x_p at t = 0
    c = u1.unsqueeze(-2) - u1.gather(-1, p).unsqueeze(-1)  # at t = 1
    before0 = start.unsqueeze(-2) < start.gather(-1, p).unsqueeze(-1)  # q below p just after t = 0
    crosses = before0 != (end.unsqueeze(-2) < end.gather(-1, p).unsqueeze(-1))  # ... and not just before t = 1
    span = a - c
    t = torch.where(crosses, a / torch.where(span == 0, torch.ones_like(span), span), torch.ones_like(a)).clamp(0, 1)
    step = torch.where(crosses, torch.where(before0, -1, 1), 0)
    t, order = t.sort(-1)
    rank = torch.cat([start.gather(-1, p).unsqueeze(-1), step.gather(-1, order)], -1).cumsum(-1)  # (..., positions, n + 1)
    edges = torch.cat([torch.zeros_like(t[..., :1]), t, torch.ones_like(t[..., :1])], -1)
    lengths = edges[..., 1:] - edges[..., :-1]
    m = u1.new_zeros(u1.shape[:-1] + (slots + 1, p.shape[-1]))
    return m.scatter_add(-2, slot_of[rank].transpose(-1, -2), lengths.transpose(-1, -2))[..., :slots, :]


def _view(t: torch.Tensor, dim: int, second: int) -> torch.Tensor:
    """t with the sorted dim last, and the rows in dim 0 (``second``: they sit in dim 1)."""
    v = t.movedim(dim, -1)
    return v.transpose(0, 1) if second else v


def forward(op, x: torch.Tensor, rows: int | None):
    """(output, extras) of `Rescale` at a kind ``"sort"`` op; ``rows``: the rows' dim of x."""
    o = op.options
    dim = o["dim"]
    out = o["call"](x)
    y = out if o["name"] == "msort" else out[0]
    if rows is None or rows == dim:  # not paired, or sorted across the rows: the ordinary gradient
        indices = out.indices if o["return_indices"] else torch.sort(x, dim=0).indices  # msort's own sort
        return y, (indices, x.new_zeros(()).expand(x.shape))
    second = rows - int(dim < rows)  # the rows' dim in the view: 0 or 1
    v = _view(x, dim, second)
    v1, v0 = _halves(v)
    m = path_multipliers(v1, v0, o["ranks"])
    m = m.flatten(0, 1) if v1.ndim > v.ndim else m  # (input rows, ..., slots, n): c copies' blocks merged
    return y, (_on_rows(m), x.new_zeros(()).expand(second))


def backward(op, extras: tuple, grad: torch.Tensor) -> torch.Tensor:
    o = op.options
    dim = o["dim"]
    g = grad if o["keepdim"] else grad.unsqueeze(dim)
    if extras[0].dtype == torch.long:  # the ordinary gradient, to torch's indices
        indices, like = extras
        return g.new_zeros(like.shape).scatter(dim, indices if o["keepdim"] else indices.unsqueeze(dim), g)
    m, flag = extras
    second = flag.shape[0]
    gv = (_view(g, dim, second).unsqueeze(-2) @ m).squeeze(-2)  # (rows, ..., n)
    if second:
        gv = gv.transpose(0, 1)
    return gv.movedim(-1, dim)
