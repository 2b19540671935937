"""Maximum flows by certified integer rounds (xattr/_src/max_flow.py) against a pure-Python
Edmonds-Karp, brute-force minimum cuts, networkx (where installed), and flow properties."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xattr._src.max_flow as mf
from xattr._src.max_flow import layered_flows, max_flow


def edmonds_karp(capacity, source, sink):
    """Shortest augmenting paths by breadth-first search on the dense residual matrix, in float64
    (xattr's attention flow before scipy); residuals at most 1e-12 of the largest count as zero."""
    res = np.array(capacity, dtype=np.float64)
    tol = 1e-12 * max(float(res.max(initial=0.0)), 0.0)
    total = 0.0
    while True:
        parent = np.full(len(res), -1)
        parent[source] = source
        queue = [source]
        for u in queue:  # the queue grows while it is read
            nbrs = np.flatnonzero((res[u] > tol) & (parent < 0))
            parent[nbrs] = u
            if parent[sink] >= 0:
                break
            queue.extend(nbrs.tolist())
        if parent[sink] < 0:
            return total
        path, v = [], sink
        while v != source:
            path.append((parent[v], v))
            v = parent[v]
        bottleneck = min(res[u, v] for u, v in path)
        for u, v in path:
            res[u, v] -= bottleneck
            res[v, u] += bottleneck
        total += bottleneck


def dense_layers(steps):
    """The whole attention-flow graph as a dense matrix: node l T + k is token k of layer l,
    an edge from (l, k) to (l - 1, j) of capacity steps[l - 1][k, j]."""
    layers, t = len(steps), steps[0].shape[0]
    cap = np.zeros(((layers + 1) * t, (layers + 1) * t))
    for l, step in enumerate(steps, start=1):
        cap[l * t:(l + 1) * t, (l - 1) * t:l * t] = step
    return cap


def loop_flows(steps, rows):
    """One Edmonds-Karp per output row and input token on the dense graph."""
    cap, layers, t = dense_layers(steps), len(steps), steps[0].shape[0]
    return np.array([[edmonds_karp(cap, layers * t + i, j) for j in range(t)] for i in rows])


def min_cut(cap, source, sink):
    """The smallest capacity of the edges leaving S, over every set S holding the source and not the sink."""
    others = [v for v in range(len(cap)) if v not in (source, sink)]
    best = np.inf
    for pick in itertools.product([False, True], repeat=len(others)):
        inside = np.zeros(len(cap), dtype=bool)
        inside[source] = True
        inside[[v for v, p in zip(others, pick) if p]] = True
        best = min(best, cap[inside][:, ~inside].sum())
    return best


def attention_steps(rng, layers, t, residual=0.5, sparsity=0.0):
    """Row-normalised maps like attention flow's: softmax rows (some entries zeroed), mixed with I."""
    out = []
    for _ in range(layers):
        a = np.exp(2 * rng.standard_normal((t, t)))
        a *= rng.random((t, t)) >= sparsity
        a /= np.where(a.sum(1, keepdims=True) > 0, a.sum(1, keepdims=True), 1.0)
        step = (1 - residual) * a + residual * np.eye(t)
        sums = step.sum(1, keepdims=True)
        out.append(step / np.where(sums > 0, sums, 1.0))
    return out


def test_a_textbook_network_and_the_reverse_direction():
    cap = np.zeros((6, 6))
    for u, v, c in [(0, 1, 16), (0, 2, 13), (1, 3, 12), (2, 1, 4), (2, 4, 14), (3, 2, 9), (3, 5, 20), (4, 3, 7),
                    (4, 5, 4)]:  # fmt: skip
        cap[u, v] = c
    assert max_flow(cap, 0, 5) == edmonds_karp(cap, 0, 5) == 23.0  # CLRS's network
    assert max_flow(cap, 5, 0) == 0.0
    assert max_flow(cap / 7.0, 0, 5) == pytest.approx(23.0 / 7.0, rel=1e-14)


@pytest.mark.parametrize("seed", range(4))
def test_dense_graphs_with_opposite_edges_match_edmonds_karp(seed):
    rng = np.random.default_rng(seed)
    for _ in range(8):
        v = int(rng.integers(3, 12))
        cap = rng.random((v, v)) * (rng.random((v, v)) < 0.5) * 10.0 ** rng.integers(-3, 3)
        for s, t in [(0, v - 1), (v - 1, 1)]:
            ref = edmonds_karp(cap, s, t)
            assert max_flow(cap, s, t) == pytest.approx(ref, rel=1e-11, abs=1e-300)


@pytest.mark.parametrize("layers, t, residual, sparsity", [(1, 5, 0.5, 0.0), (2, 6, 0.3, 0.0), (3, 7, 0.5, 0.0),
                                                           (4, 6, 0.0, 0.5), (6, 8, 0.5, 0.0), (5, 5, 0.9, 0.3)])
def test_layered_flows_match_edmonds_karp(layers, t, residual, sparsity):
    rng = np.random.default_rng(layers * 100 + t)
    steps = attention_steps(rng, layers, t, residual, sparsity)
    ref = loop_flows(steps, range(t))
    got = layered_flows(steps, range(t))
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(layered_flows(steps, [t - 1, 0]), got[[t - 1, 0]])  # rows alone


def test_many_chunks_give_the_flows_of_one_union(monkeypatch):
    rng = np.random.default_rng(7)
    steps = attention_steps(rng, 4, 6)
    whole = layered_flows(steps, range(6))
    monkeypatch.setattr(mf, "_ENTRIES", 1)  # one problem per scipy call
    np.testing.assert_allclose(layered_flows(steps, range(6)), whole, rtol=1e-12, atol=0)
    monkeypatch.setattr(mf, "_ENTRIES", 5 * 200)  # a few per call, the last chunk shorter
    np.testing.assert_allclose(layered_flows(steps, range(6)), whole, rtol=1e-12, atol=0)


def test_layered_flows_match_networkx():
    nx = pytest.importorskip("networkx")
    rng = np.random.default_rng(3)
    layers, t = 6, 16
    steps = attention_steps(rng, layers, t)
    g = nx.DiGraph()
    for l, step in enumerate(steps, start=1):
        for k in range(t):
            for j in range(t):
                g.add_edge((l, k), (l - 1, j), capacity=float(step[k, j]))
    ref = np.array([nx.maximum_flow_value(g, (layers, 0), (0, j)) for j in range(t)])
    np.testing.assert_allclose(layered_flows(steps, [0])[0], ref, rtol=1e-10, atol=0)


def test_the_certified_gap_bounds_the_error_and_is_tiny():
    rng = np.random.default_rng(11)
    steps = attention_steps(rng, 5, 6)
    cap = dense_layers(steps)
    graph, forward, z_at = mf._union(6, 5, 6)
    internal = np.concatenate([steps[m - 1].ravel() for m in range(2, 5)])
    inner = np.zeros((6, len(forward)))
    inner[:, forward] = internal
    inner[:, z_at] = steps[0][:, np.arange(6)].T
    h = np.concatenate([np.repeat(steps[-1][2][None], 6, 0).ravel(), np.zeros(36), inner.ravel()])
    values, gaps = mf._solve(graph, 0, 1, h)
    ref = np.array([edmonds_karp(cap, 5 * 6 + 2, j) for j in range(6)])
    assert (values <= ref * (1 + 1e-13)).all()  # a feasible flow: never above the maximum
    assert (ref - values <= gaps + 1e-14 * ref).all()  # ... and at most the gap below it
    assert (gaps <= 1e-12 * values + 2.0**-50).all()


# -- properties ----------------------------------------------------------------------------------
capacities = st.floats(0.0, 1.0, allow_subnormal=False) | st.sampled_from([0.0, 1e-9, 0.5, 1.0])


@st.composite
def layered(draw):
    layers, t = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    steps = [np.array(draw(st.lists(capacities, min_size=t * t, max_size=t * t))).reshape(t, t)
             for _ in range(layers)]  # fmt: skip
    return steps, draw(st.integers(0, t - 1)), draw(st.integers(0, t - 1))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(layered())
def test_the_flow_is_the_brute_force_minimum_cut(case):
    steps, i, j = case
    layers, t = len(steps), steps[0].shape[0]
    cut = min_cut(dense_layers(steps), layers * t + i, j)
    got = layered_flows(steps, [i])[0, j]
    assert got == pytest.approx(cut, rel=1e-12, abs=1e-15)
    assert got <= min(steps[-1][i].sum(), steps[0][:, j].sum()) * (1 + 1e-15)  # source out, sink in


@settings(max_examples=25, deadline=None, derandomize=True)
@given(v=st.integers(2, 6), seed=st.integers(0, 10_000), density=st.floats(0.2, 1.0))
def test_dense_flow_is_the_minimum_cut_and_bounded_by_the_ends(v, seed, density):
    rng = np.random.default_rng(seed)
    cap = rng.random((v, v)) * (rng.random((v, v)) < density)
    np.fill_diagonal(cap, 0.0)
    got = max_flow(cap, 0, v - 1)
    assert got == pytest.approx(min_cut(cap, 0, v - 1), rel=1e-12, abs=1e-15)
    assert got <= min(cap[0].sum(), cap[:, v - 1].sum()) * (1 + 1e-15)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), layers=st.integers(3, 4), t=st.integers(2, 5), grow=st.floats(0.0, 1.0))
def test_more_capacity_never_less_flow(seed, layers, t, grow):
    rng = np.random.default_rng(seed)
    steps = attention_steps(rng, layers, t, sparsity=0.3)
    more = [s + grow * rng.random((t, t)) * (rng.random((t, t)) < 0.3) for s in steps]
    before, after = layered_flows(steps, range(t)), layered_flows(more, range(t))
    assert (after >= before * (1 - 1e-12)).all()


def test_errors_are_clear():
    with pytest.raises(ValueError, match="square"):
        max_flow(np.zeros((2, 3)), 0, 1)
    with pytest.raises(ValueError, match="two different nodes"):
        max_flow(np.zeros((3, 3)), 1, 1)
    with pytest.raises(ValueError, match="two different nodes"):
        max_flow(np.zeros((3, 3)), 0, 3)
    with pytest.raises(ValueError, match=">= 0"):
        max_flow(-np.ones((3, 3)), 0, 2)
    with pytest.raises(ValueError, match="finite"):
        max_flow(np.full((3, 3), np.inf), 0, 2)


def test_scale_free_and_a_warning_when_the_rounds_run_out(monkeypatch):
    rng = np.random.default_rng(5)
    cap = rng.random((7, 7)) * (rng.random((7, 7)) < 0.6)
    ref = edmonds_karp(cap, 0, 6)
    for unit in [1e-200, 1e-9, 1e9, 1e200]:  # any unit: the same flow, scaled
        assert max_flow(cap * unit, 0, 6) == pytest.approx(ref * unit, rel=1e-12)
    monkeypatch.setattr(mf, "_ROUNDS", 1)
    with pytest.warns(UserWarning, match="1 rounds left a gap"):
        low = max_flow(cap, 0, 6)
    assert ref * (1 - 1e-6) < low <= ref  # one round: a true flow, about 1e-8 short


def test_non_finite_maps_are_refused():
    steps = attention_steps(np.random.default_rng(0), 3, 4)
    steps[1][2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        layered_flows(steps, [0])


@pytest.mark.parametrize("layers", [1, 2, 4])
def test_the_progress_bar_counts_every_flow_once(layers, monkeypatch):
    class Bar:
        def __init__(self):
            self.n = 0

        def update(self, k):
            self.n += k

    steps = attention_steps(np.random.default_rng(layers), layers, 5)
    monkeypatch.setattr(mf, "_ENTRIES", 300)  # several scipy calls for four layers
    bar = Bar()
    got = layered_flows(steps, [4, 0, 2], bar)
    assert bar.n == 3 * 5
    np.testing.assert_allclose(got, loop_flows(steps, [4, 0, 2]), rtol=1e-10, atol=1e-14)
