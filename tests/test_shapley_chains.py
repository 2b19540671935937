"""Shapley value sampling makes each call's coalitions alone: a chunk of a few copies of a long
chain (many features, a small memory budget) must not build whole chains (F x F bools each)."""

import torch

import xattr
from xattr._src.shapley import _chain


def _loop(rank, start, stop):
    rows, _, n = rank.shape
    out = []
    for c in range(start, stop):
        if c == 0:
            out.append(torch.zeros(rows, n, dtype=torch.bool))
            continue
        perm, size = (c - 1) // (n - 1), (c - 1) % (n - 1) + 1
        out.append(rank[:, perm, :] < size)  # the first `size` features of permutation `perm`
    return torch.stack(out, 1)


def test_chain_copies_equal_an_explicit_loop_for_any_span():
    torch.manual_seed(0)
    for rows, n_perm, n in [(3, 4, 7), (2, 3, 300), (1, 2, 2)]:
        rank = torch.stack([torch.stack([torch.randperm(n) for _ in range(n_perm)]) for _ in range(rows)])
        length = 1 + n_perm * (n - 1)
        for start in range(0, length, max(1, length // 17)):
            for width in (1, 2, 5, 70, 400):  # within one chain, across chains, whole chains
                stop = min(length, start + width)
                assert torch.equal(_chain(rank, start, stop), _loop(rank, start, stop)), (n, start, stop)


def test_a_small_budget_gives_the_same_values():
    torch.manual_seed(0)
    w = torch.randn(300, dtype=torch.float64)
    f = lambda x: torch.tanh(x @ w) + (x[:, :5] ** 2).sum(1)  # noqa: E731
    x = torch.randn(2, 300, dtype=torch.float64)
    svs = lambda **kw: xattr.shapley_value_sampling(f, n_samples=2, generator=0, **kw)(x)  # noqa: E731
    torch.testing.assert_close(svs(memory_budget=2**12), svs())
