"""Exact maximum flows of float capacities through scipy's integer Dinic, refined with a certified gap.

NOTE: [Maximum flow by certified integer rounds]
``scipy.sparse.csgraph.maximum_flow`` runs Dinic's algorithm in compiled code, on int32
capacities only. A float network (capacities h >= 0) is solved by rounds on its residual
network, each round an integer problem:

1. Each copy p (an independent network; see below) carries an upper bound D_p on the flow
   still missing (at first the source's out-capacity). Every residual capacity is cut to D_p
   (an acyclic maximum flow of value <= D_p has no edge above D_p, so the maximum is
   unchanged) and scaled by sigma_p = 2^k, the largest power of two with D_p sigma_p <= 2^30;
   q = floor(h sigma_p) are the integer capacities.
2. Dinic gives an integer maximum flow g <= q; phi = g / sigma_p is a flow of the float
   network (phi <= h, exactly: sigma_p is a power of two), added to the copy's value, and the
   residual becomes h - phi (net flows are antisymmetric, so reverse entries gain phi).
3. The source side S of a minimum cut of the integer problem (the nodes reachable from the
   source where q - g > 0) bounds what is still missing: the residual capacity of the edges
   leaving S. Every one of them was saturated in the integer problem, so each holds less
   than 1 / sigma_p unless cut to D_p; the new D_p is the smaller of that sum and D_p - |phi|.

A copy is done when D_p <= 1e-12 |value_p| + 2^-50 D_p(start) (or D_p <= 2^-900): its value is
a feasible flow, at most D_p below the maximum. A round cuts D_p by about (edges in the cut) /
2^30: on attention maps of 32 to 128 tokens the first round leaves D_p between 1e-8 and 1e-7
and the second below 1e-14, so two rounds are run (at most 8; a warning says if that was not enough). Float
rounding enters only through h - phi (one rounding per edge and round; a nearly saturated
edge's difference is exact by Sterbenz's lemma).

Independent networks are solved in one call as a disjoint union sharing one super-source
and one super-sink: the maximum of the union is the sum of the copies' maxima, so each copy's
part of any maximum flow of the union is a maximum flow of the copy, read off the source's
edges into it. The structure holds every edge in both directions (the reverse as an explicit
0). scipy drops the pairs without capacity in either direction (editing the arrays it is
given in place, so it gets copies) and adds the reverse of every edge it keeps; given just the
pairs with some capacity, both ways, its flow array lines up with those entries one to one.

NOTE: [Attention flow as layered networks]
In attention flow's graph (NOTE: [Attention flow] in attention_maps.py) the source (L, i) has
edges only into layer L - 1, and nothing leaves a node of layer 0, so the other nodes of
layers L and 0 carry no flow: the network for output i and input j is the super-source with
edges of capacity A'_L[i, k] into layer L - 1, the dense layers A'_{L-1} .. A'_2 between the
token layers L - 1 .. 1, and edges of capacity A'_1[k, j] into the super-sink. One layer is
the single edge A'_1[i, j]; two layers are T parallel paths,
    flow(i, j) = sum_k min(A'_2[i, k], A'_1[k, j]),
computed directly. From three layers on, the rows x T problems of an example are copies of
one network that differ only in the source and sink edges, solved as unions of up to about
2 million entries per scipy call (about 250 MB of work arrays).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

from .warn import warn

_TOP = float(2**30)  # the largest integer capacity (int32 with room to spare)
_RTOL, _ATOL = 1e-12, 2.0**-50  # NOTE: [Maximum flow by certified integer rounds]
_ROUNDS = 8
_ENTRIES = 2_000_000  # entries per scipy call (about 250 MB of work arrays)
_TINY = 2.0**-900  # a flow this small counts as found


class _Graph:
    """A canonical CSR structure holding every edge in both directions, split into copies.

    ``twin[e]``: the entry of the reverse edge; ``owner[e]``: the copy of entry e."""

    def __init__(self, indptr, indices, owner, n_copies, twin=None):
        self.indptr, self.indices, self.owner, self.n_copies = indptr, indices, owner, n_copies
        self.n = len(indptr) - 1
        self.rows = np.repeat(np.arange(self.n, dtype=indices.dtype), np.diff(indptr))
        if twin is None:  # transposing a symmetric structure sorts it back: the data are the twins
            ids = sp.csr_array((np.arange(1, len(indices) + 1), indices, indptr), shape=(self.n, self.n))
            twin = ids.T.tocsr().data - 1
        self.twin = twin

    def pattern(self, mask):
        """The CSR (indptr, indices) of the entries where ``mask`` holds (new arrays)."""
        return np.concatenate([[0], np.cumsum(mask)])[self.indptr], self.indices[mask]


def _solve(graph: _Graph, source: int, sink: int, h: np.ndarray):
    """Maximum flow of each copy of a disjoint union (NOTE: [Maximum flow by certified integer rounds]).

    ``h``: float capacities per entry of ``graph`` (consumed). Returns (values, gaps): each copy's
    flow value and a bound on how far below the maximum it may be."""
    n, owner, k = graph.n, graph.owner, graph.n_copies
    out_edges = graph.rows == source
    values = np.zeros(k)
    gap = np.bincount(owner[out_edges], weights=h[out_edges], minlength=k)
    floor = np.maximum(_ATOL * gap, _TINY)
    for _ in range(_ROUNDS):
        active = gap > _RTOL * values + floor
        if not active.any():
            break
        scale = np.zeros(k)
        scale[active] = np.exp2(np.floor(np.log2(_TOP / gap[active])))
        inverse = np.zeros(k)
        inverse[active] = 1.0 / scale[active]  # powers of two: exact
        q = np.minimum(h, gap[owner])
        q *= scale[owner]
        q = np.floor(q, out=q).astype(np.int32)
        # scipy keeps only pairs with some capacity (editing the arrays it is given in place)
        keep = q > 0
        keep |= keep[graph.twin]
        indptr, indices = graph.pattern(keep)
        result = maximum_flow(sp.csr_array((q[keep], indices, indptr), shape=(n, n)), source, sink).flow
        if not (np.array_equal(result.indptr, indptr) and np.array_equal(result.indices, indices)):
            raise RuntimeError("scipy's maximum_flow changed the graph's structure; please report this")
        g = np.zeros(len(q), dtype=np.int32)
        g[keep] = result.data
        phi = g * inverse[owner]
        h -= phi
        got = np.bincount(owner[out_edges], weights=phi[out_edges], minlength=k)
        values += got
        # the source side of a minimum cut of the integer problem bounds what is still missing
        open_ = q > g
        indptr, indices = graph.pattern(open_)
        residual = sp.csr_array((np.ones(len(indices), dtype=np.int8), indices, indptr), shape=(n, n))
        reach = np.zeros(n, dtype=bool)
        reach[breadth_first_order(residual, source, directed=True, return_predecessors=False)] = True
        cut = reach[graph.rows]
        cut &= ~reach[graph.indices]
        bound = np.bincount(owner[cut], weights=h[cut], minlength=k)
        gap = np.where(active, np.maximum(np.minimum(bound, gap - got), 0.0), gap)
    if (gap > _RTOL * values + floor).any():
        warn(f"maximum flow: {_ROUNDS} rounds left a gap of up to {float(gap.max()):.3g} (relative "
             f"{float((gap / np.maximum(values, _TINY)).max()):.3g}); the flows are that much too small at most")
    return values, gap


def max_flow(capacity: np.ndarray, source: int, sink: int) -> float:
    """The maximum flow from ``source`` to ``sink`` of a dense capacity matrix (V, V) of floats >= 0
    (NOTE: [Maximum flow by certified integer rounds]); the diagonal is ignored."""
    cap = _real_array(capacity, "max_flow: capacity")
    if cap.ndim != 2 or cap.shape[0] != cap.shape[1]:
        raise ValueError(f"max_flow needs a square capacity matrix (V, V), got shape {cap.shape}")
    v = cap.shape[0]
    if not (_is_int(source) and _is_int(sink)):
        raise ValueError(f"source and sink must be two different nodes (ints) in [0, {v}), got {source!r} and {sink!r}")
    if not (0 <= source < v and 0 <= sink < v) or source == sink:
        raise ValueError(f"source and sink must be two different nodes in [0, {v}), got {source} and {sink}")
    if not np.isfinite(cap).all() or (cap < 0).any():
        raise ValueError("capacities must be finite and >= 0")
    np.fill_diagonal(cap, 0.0)
    m = sp.csr_array((cap > 0) | (cap.T > 0))
    m.sort_indices()
    graph = _Graph(m.indptr, m.indices, np.zeros(len(m.indices), dtype=np.int64), 1)
    values, _ = _solve(graph, source, sink, cap[graph.rows, graph.indices])
    return float(values[0])


def _is_int(i) -> bool:
    return isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_))


def _real_array(a, what: str) -> np.ndarray:
    """``a`` (an array, a tensor or nested lists of real numbers) as a new float64 array."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{what} must hold real numbers >= 0, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _union(n_copies: int, layers: int, t: int):
    """The graph of ``n_copies`` attention-flow networks (NOTE: [Attention flow as layered networks]):
    node 0 the super-source, 1 the super-sink, 2 + p (L-1) T + (m-1) T + k token k of layer
    m = 1 .. L-1 in copy p. Entries: the source's (copy by copy, T each), the sink's (reverse
    edges), then each copy's block of the token rows. Returns (graph, forward, z_at): where in a
    block the edges A'_m[k, k'] (m = 2 .. L-1, in order) and A'_1[k, j] (into the sink) lie."""
    per = (layers - 1) * t
    cols, kinds, lengths, z_at = [], [], [], None
    for m in range(1, layers):
        parts, kind = [], []
        if m == layers - 1:  # the reverse edge to the super-source
            parts.append(np.zeros((t, 1), dtype=np.int64))
            kind.append(np.zeros((t, 1), dtype=bool))
        if m == 1:  # the edge into the super-sink
            z_col = sum(c.shape[1] for c in parts)
            parts.append(np.ones((t, 1), dtype=np.int64))
            kind.append(np.zeros((t, 1), dtype=bool))
        if m >= 2:  # forward, down to layer m - 1
            parts.append(np.broadcast_to(2 + (m - 2) * t + np.arange(t), (t, t)))
            kind.append(np.ones((t, t), dtype=bool))
        if m <= layers - 2:  # reverse, up to layer m + 1
            parts.append(np.broadcast_to(2 + m * t + np.arange(t), (t, t)))
            kind.append(np.zeros((t, t), dtype=bool))
        block = np.concatenate(parts, 1)
        if m == 1:
            z_at = z_col + block.shape[1] * np.arange(t)
        cols.append(block.ravel())
        kinds.append(np.concatenate(kind, 1).ravel())
        lengths.append(np.full(t, block.shape[1]))
    local, forward, lengths = np.concatenate(cols), np.concatenate(kinds), np.concatenate(lengths)
    e = len(local)
    copy = np.arange(n_copies)[:, None]
    ends = 2 + copy * per + np.arange(t)[None]
    inner = local[None] + (local[None] >= 2) * per * copy
    indices = np.concatenate([(ends + (layers - 2) * t).ravel(), ends.ravel(), inner.ravel()]).astype(np.int32)
    counts = np.concatenate([[n_copies * t, n_copies * t], np.tile(lengths, n_copies)])
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    owner = np.concatenate([np.repeat(np.arange(n_copies), t), np.repeat(np.arange(n_copies), t),
                            np.repeat(np.arange(n_copies), e)])  # fmt: skip
    # the twins: those of one copy, placed where each copy's entries lie in the union
    one = _union(1, layers, t)[0] if n_copies > 1 else None
    if one is None:
        return _Graph(indptr, indices, owner, 1), forward, z_at
    x = one.twin[None]
    at = np.where(x < t, copy * t + x,
                  np.where(x < 2 * t, n_copies * t + copy * t + (x - t), 2 * n_copies * t + copy * e + (x - 2 * t)))
    twin = np.concatenate([at[:, :t].ravel(), at[:, t:2 * t].ravel(), at[:, 2 * t:].ravel()])
    return _Graph(indptr, indices, owner, n_copies, twin), forward, z_at


def layered_flows(steps, rows, progress_bar=None) -> np.ndarray:
    """Attention flow's maximum flows of one example (NOTE: [Attention flow as layered networks]).

    ``steps``: the maps A'_1 .. A'_L (T, T) in forward order, float64; ``rows``: output tokens.
    Returns (len(rows), T): entry [r, j] is the maximum flow from (L, rows[r]) to (0, j)."""
    steps = [_real_array(s, "attention flow: each layer's map") for s in steps]
    if not steps:
        raise ValueError("attention flow needs the maps of one layer at least; got none")
    t = steps[0].shape[0] if steps[0].ndim == 2 else -1
    if any(s.shape != (t, t) for s in steps):
        raise ValueError(f"attention flow needs every layer's map square and over the same tokens, (T, T); got shapes "
                         f"{[s.shape for s in steps]}")  # fmt: skip
    if not all(np.isfinite(s).all() for s in steps):
        raise ValueError("attention flow: the attention maps hold NaN or inf; check the model's attention")
    if any((s < 0).any() for s in steps):
        raise ValueError("attention flow: the attention maps hold negative entries; flows need capacities >= 0 "
                         "(attention probabilities)")  # fmt: skip
    rows = np.asarray(rows)
    if rows.ndim != 1 or (len(rows) and (rows.dtype.kind not in "iu" or rows.min() < 0 or rows.max() >= t)):
        raise ValueError(f"attention flow: rows must be output token indices (ints) in [0, {t}), got {rows.tolist()}")
    rows = rows.astype(np.int64)
    layers = len(steps)
    if layers <= 2:
        if layers == 1:
            out = steps[0][rows].copy()
        else:
            out = np.minimum(steps[1][rows][:, :, None], steps[0][None]).sum(1)
        if progress_bar is not None:
            progress_bar.update(len(rows) * t)
    else:
        out = np.zeros((len(rows), t))
        pairs = [(r, j) for r in range(len(rows)) for j in range(t)]
        block = (2 * (layers - 2) * t + 2) * t + 2 * t
        chunk = max(1, _ENTRIES // block)
        # internal forward capacities of one copy, in block order: A'_m[k, k'] for m = 2 .. L-1
        internal = np.concatenate([steps[m - 1].ravel() for m in range(2, layers)])
        cache = {}
        for start in range(0, len(pairs), chunk):
            part = pairs[start:start + chunk]
            p = len(part)
            if p not in cache:
                cache[p] = _union(p, layers, t)
            graph, forward, z_at = cache[p]
            r_idx = np.array([rows[r] for r, _ in part])
            j_idx = np.array([j for _, j in part])
            inner = np.zeros((p, len(forward)))
            inner[:, forward] = internal
            inner[:, z_at] = steps[0][:, j_idx].T  # A'_1[k, j] into the sink
            h = np.concatenate([steps[-1][r_idx].ravel(), np.zeros(p * t), inner.ravel()])
            values, _ = _solve(graph, 0, 1, h)
            out[[r for r, _ in part], j_idx] = values
            if progress_bar is not None:
                progress_bar.update(p)
    return out
