"""Shapley value sampling's fast path: chain copies made straight from the ranks, f(x) folded into
the first call (NOTE: [Shapley sampling in one evaluation]). Each piece against a slow reference:
the general path (coalitions -> keep masks -> `perturb`), explicit loops, `per_example` draws."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import xattr
import xattr._src.shapley as S
from xattr._src.sampling import per_example, row_seeds, streams

torch.manual_seed(0)
MLP = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
MLP64 = copy.deepcopy(MLP).double()
CNN = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2)).eval()
X = torch.randn(6, 12)
X[0, 3], X[1, 4] = -0.0, 0.0  # signed zeros must come through as the general path makes them
XI = torch.randn(3, 2, 6, 6)


def _general(monkeypatch, call):
    """``call()`` with the fast copies off: every copy made by `perturb` from the chains' masks."""
    with monkeypatch.context() as m:
        m.setattr(S, "_copy_maker", lambda *a, **k: None)
        return call()


CASES = {
    "default": lambda: xattr.shapley_value_sampling(xattr.target(MLP, 1), n_samples=7, generator=0)(X),
    "where (small chunks)": lambda: xattr.shapley_value_sampling(xattr.target(MLP, 1), n_samples=7, generator=0, chunk_size=12)(X),
    "float64": lambda: xattr.shapley_value_sampling(xattr.target(MLP64, 1), n_samples=5, generator=1)(X.double()),
    "number baseline": lambda: xattr.shapley_value_sampling(xattr.target(MLP, 0), n_samples=5, generator=2, baselines=0.5)(X),
    "-0.0 baseline": lambda: xattr.shapley_value_sampling(xattr.target(MLP, 0), n_samples=5, generator=2, baselines=-0.0)(X),
    "tensor baseline": lambda: xattr.shapley_value_sampling(xattr.target(MLP, 2), n_samples=5, generator=3, baselines=X.flip(0))(X),
    "shared groups": lambda: xattr.shapley_value_sampling(xattr.target(MLP, 1), n_samples=6, generator=4,
                                                          feature_mask=torch.arange(12) // 3)(X),
    "per-example ids": lambda: xattr.shapley_value_sampling(xattr.target(MLP, 1), n_samples=6, generator=5,
                                                            feature_mask=torch.stack([torch.randperm(12, generator=torch.Generator().manual_seed(i)) % 4 for i in range(6)]))(X),
    "many outputs, std error": lambda: xattr.shapley_value_sampling(xattr.target(MLP, xattr.outputs([0, 2])), n_samples=4, generator=6,
                                                                    return_std_error=True)(X),
    "antithetic": lambda: xattr.shapley_value_sampling(xattr.target(MLP, 1), n_samples=6, generator=7, antithetic=True)(X),
    "image, long chains, tiny chunks": lambda: xattr.shapley_value_sampling(xattr.target(CNN, 1), n_samples=2, generator=8, chunk_size=6)(XI),
    "image, large chunks": lambda: xattr.shapley_value_sampling(xattr.target(CNN, 0), n_samples=3, generator=9)(XI),
    "two inputs": lambda: xattr.shapley_value_sampling(lambda a, b: MLP(torch.cat([a, b], 1))[:, 0], n_samples=5, generator=10,
                                                       argnums=(0, 1))(X[:, :5], X[:, 5:]),
    "an infinite input": lambda: xattr.shapley_value_sampling(lambda v: torch.nan_to_num(MLP(v), posinf=9.0, neginf=-9.0)[:, 0],
                                                              n_samples=4, generator=11)(torch.where(X > 1.5, math.inf, X)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_copies_are_the_general_paths_bit_for_bit(monkeypatch, case):
    made, maker = [], S._copy_maker

    def counted(*a):
        copies = maker(*a)
        assert copies is not None, "every case here takes the fast path"
        return lambda s, e: made.append((s, e)) or copies(s, e)

    with monkeypatch.context() as m:
        m.setattr(S, "_copy_maker", counted)
        fast = CASES[case]()
    assert made and made[0][0] == -1  # copy -1: the inputs, f(x) in the first call
    general = _general(monkeypatch, CASES[case])
    for a, b in zip(fast if isinstance(fast, tuple) else (fast,), general if isinstance(general, tuple) else (general,)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)), case  # signed zeros too


def _keeps_reference(rank: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Copies start..stop-1 by explicit loops: -1 keeps all, 0 none, 1 + p (F - 1) + (j - 1) rank < j in p."""
    rows, _, n = rank.shape
    out = torch.zeros(stop - start, rows, n)
    for c in range(start, stop):
        for b in range(rows):
            for i in range(n):
                if c == -1:
                    keep = True
                elif c == 0:
                    keep = False
                else:
                    p, j = divmod(c - 1, n - 1)
                    keep = int(rank[b, p, i]) < j + 1
                out[c - start, b, i] = float(keep)
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 40), st.data())
def test_keeps_match_the_loops(rows, n_samples, n, data):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    rank = torch.rand(rows, n_samples, n, generator=g).argsort(-1)
    total = S._chain_length(n_samples, n)
    start = data.draw(st.integers(-1, total - 1))
    stop = data.draw(st.integers(start + 1, total))
    ranked = rank.transpose(0, 1).to(torch.float32, memory_format=torch.contiguous_format)
    sizes = torch.arange(1, n, dtype=torch.float32)
    want = _keeps_reference(rank, start, stop)
    for dtype in (torch.float32, torch.bool):
        got = S._keeps(ranked, sizes, start, stop, dtype)
        assert got.shape == want.shape and torch.equal(got.float(), want)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(2, 9), st.integers(0, 2**40))
def test_ranks_are_the_argsort_of_per_example_uniforms(rows, n_samples, n, seed):
    (stream,) = streams(seed, 1)
    u = per_example(stream, torch.empty(rows, n_samples, n, dtype=torch.float64), lambda v, g: v.uniform_(0.0, 1.0, generator=g))
    got = S._ranks(rows, n_samples, n, stream, False, "cpu")
    assert torch.equal(got, u.argsort(-1))
    assert torch.equal(S._ranks(rows, n_samples, n, stream, False, "cpu", row_seeds(stream, rows)), got)
    assert torch.equal(got.sort(-1).values, torch.arange(n).expand(rows, n_samples, n))  # permutations


def test_f_of_x_goes_into_the_first_call():
    calls = []

    def counted(v):
        calls.append(v.shape[0])
        return MLP(v)[:, 1]

    xattr.shapley_value_sampling(counted, n_samples=4)(X)
    assert calls == [(1 + 1 + 4 * 11) * 6]  # the inputs, the empty coalition and every chain's inner ones: one call
    calls.clear()
    xattr.shapley_value_sampling(counted, n_samples=4, chunk_size=60)(X)
    assert sum(calls) == (1 + 1 + 4 * 11) * 6 and max(calls) <= 60 and len(calls) == math.ceil(46 / 10)


def test_one_number_per_batch_still_takes_shared_permutations():
    loss = lambda v: MLP(v)[:, 1].sum()  # noqa: E731
    attr = xattr.shapley_value_sampling(loss, n_samples=5, generator=0)(X)
    assert attr.shape == (1, 12)
    torch.testing.assert_close(attr.sum(), loss(X) - loss(torch.zeros_like(X)), rtol=1e-5, atol=1e-5)  # complete
    with pytest.raises(ValueError, match="feature_mask must be shared"):
        xattr.shapley_value_sampling(loss, n_samples=2, feature_mask=torch.arange(12).repeat(6, 1))(X)
