"""`xattr.metrics.top_k_intersection` where magnitudes tie at the k-th largest (NOTE: [Ties at the
k-th magnitude] in xattr/metrics/_similarity.py): the tied elements share what is left of k, so the
score depends on the maps' values alone, not on the order ``torch.topk`` happens to pick ties in
(which differs between CPU and CUDA and between sizes)."""

from __future__ import annotations

from fractions import Fraction

import torch
from hypothesis import given
from hypothesis import strategies as st

from xattr import metrics as M

D = torch.float64


def _memberships(values: list[float], k: int) -> list[Fraction]:
    """Each element's share of the k largest, by counting: 1 above the k-th value, the rest of k
    split evenly among the elements equal to it."""
    kth = sorted(values, reverse=True)[k - 1]
    above = sum(v > kth for v in values)
    at = sum(v == kth for v in values)
    return [Fraction(1) if v > kth else Fraction(k - above, at) if v == kth else Fraction(0) for v in values]


def _reference(a: list[float], b: list[float], k: int) -> float:
    wa, wb = _memberships([abs(v) for v in a], k), _memberships([abs(v) for v in b], k)
    return float(sum(min(x, y) for x, y in zip(wa, wb)) / k)


def test_tied_zeros_share_the_last_places():
    a = torch.tensor([[2.0, 0, 0, 0, 0]], dtype=D)  # top 2: index 0, then one of four zeros
    b = torch.tensor([[2.0, 1, 0, 0, 0]], dtype=D)  # top 2: indices 0 and 1
    assert M.top_k_intersection(a, b, k=2).item() == 0.625  # (1 + 1/4) / 2
    assert M.top_k_intersection(b, a, k=2).item() == 0.625
    assert M.top_k_intersection(a, a, k=2).item() == 1.0


def test_the_score_does_not_depend_on_where_ties_sit():
    """torch.topk on the CPU took the zero at index 4 of [1, 1, 0, 0, 0] for k = 3, so moving the
    elements (the same move in both maps) changed the score: 2/3 or 1 before, now 7/9 for each."""
    a = torch.tensor([1.0, 1, 0, 0, 0], dtype=D)
    b = torch.tensor([1.0, 0, 1, 0, 0], dtype=D)
    scores = set()
    for perm in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3], [1, 4, 0, 3, 2]):
        scores.add(round(M.top_k_intersection(a[perm][None], b[perm][None], k=3).item(), 12))
    assert scores == {round(_reference([1, 1, 0, 0, 0], [1, 0, 1, 0, 0], 3), 12)}


@given(
    st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3)), min_size=1, max_size=30),
    st.integers(1, 30),
    st.randoms(use_true_random=False),
)
def test_equals_the_counting_reference_and_is_permutation_invariant(pairs, k, rnd):
    k = min(k, len(pairs))
    a, b = [float(p[0]) for p in pairs], [float(p[1]) for p in pairs]
    want = _reference(a, b, k)
    ta, tb = torch.tensor([a], dtype=D), torch.tensor([b], dtype=D)
    assert abs(M.top_k_intersection(ta, tb, k=k).item() - want) < 1e-12
    perm = list(range(len(a)))
    rnd.shuffle(perm)
    assert abs(M.top_k_intersection(ta[:, perm], tb[:, perm], k=k).item() - want) < 1e-12
    assert abs(M.top_k_intersection(ta, ta, k=k).item() - 1.0) < 1e-12


def test_without_ties_it_is_the_plain_count():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, 7, 7, generator=g, dtype=D), torch.randn(4, 3, 7, 7, generator=g, dtype=D)
    for k in (1, 10, 0.3, 147):
        kk = k if isinstance(k, int) else -(-int(k * 147 * 1000) // 1000)
        want = []
        for i in range(4):
            top_a = set(a[i].abs().flatten().argsort(descending=True)[:kk].tolist())
            top_b = set(b[i].abs().flatten().argsort(descending=True)[:kk].tolist())
            want.append(len(top_a & top_b) / kk)
        torch.testing.assert_close(M.top_k_intersection(a, b, k=k), torch.tensor(want, dtype=D))
