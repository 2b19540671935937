"""Shapley value sampling with an int seed remembers its permutations between calls (NOTE:
[Remembered permutations] in xattr/_src/shapley.py): the same numbers as drawing them afresh, one
draw per batch size, bounded, and never for a torch.Generator or None."""

import pytest
import torch
from torch import nn

import xattr
from xattr._src import shapley


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).eval()


@pytest.fixture
def draws(monkeypatch):
    """The number of `_ranks` draws made since the test began."""
    calls = []
    real = shapley._ranks
    monkeypatch.setattr(shapley, "_ranks", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    return calls


@pytest.mark.parametrize("options", [{}, {"antithetic": True}, {"return_std_error": True}], ids=["plain", "antithetic", "std-error"])
def test_a_second_call_reuses_the_draw_and_equals_a_fresh_function(options, draws):
    model, x = _model(), torch.randn(5, 6)
    f = xattr.target(model, 1)
    sv = xattr.shapley_value_sampling(f, n_samples=6, generator=3, **options)
    first, second = sv(x), sv(x)
    assert len(draws) == 1
    fresh = xattr.shapley_value_sampling(f, n_samples=6, generator=3, **options)(x)
    for a, b, c in zip(*(t if isinstance(t, tuple) else (t,) for t in (first, second, fresh))):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert len(draws) == 2  # the new function drew its own


def test_other_inputs_of_the_same_size_reuse_the_permutations(draws):
    model = _model()
    f = xattr.target(model, 0)
    sv = xattr.shapley_value_sampling(f, n_samples=4, generator=0)
    x1, x2 = torch.randn(3, 6), torch.randn(3, 6)
    a = sv(x1)
    b = sv(x2)
    assert len(draws) == 1
    assert torch.equal(b, xattr.shapley_value_sampling(f, n_samples=4, generator=0)(x2))
    assert not torch.equal(a, b)


def test_batch_sizes_draw_apart_and_keep_batch_invariance(draws):
    f = xattr.target(_model(), 2)
    sv = xattr.shapley_value_sampling(f, n_samples=5, generator=7)
    x = torch.randn(8, 6)
    whole, head = sv(x), sv(x[:3])
    assert len(draws) == 2
    torch.testing.assert_close(head, whole[:3], rtol=0, atol=1e-6)  # each example its own permutations


def test_a_generator_or_none_draws_every_call(draws):
    f = xattr.target(_model(), 1)
    x = torch.randn(4, 6)
    g = xattr.shapley_value_sampling(f, n_samples=3, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(g(x), g(x))
    none = xattr.shapley_value_sampling(f, n_samples=3)
    none(x), none(x)
    assert len(draws) == 4


def test_the_memo_keeps_the_last_few_draws(draws):
    f = xattr.target(_model(), 1)
    sv = xattr.shapley_value_sampling(f, n_samples=2, generator=1)
    sizes = list(range(1, shapley.MEMO_SIZE + 2))
    for b in sizes:
        sv(torch.randn(b, 6))
    assert len(draws) == len(sizes)
    sv(torch.randn(sizes[-1], 6))  # still remembered
    assert len(draws) == len(sizes)
    sv(torch.randn(sizes[0], 6))  # the oldest, dropped
    assert len(draws) == len(sizes) + 1


def test_large_draws_are_not_kept(draws, monkeypatch):
    monkeypatch.setattr(shapley, "MEMO_ELEMENTS", 4 * 3 * 6 - 1)
    f = xattr.target(_model(), 1)
    sv = xattr.shapley_value_sampling(f, n_samples=3, generator=1)
    x = torch.randn(4, 6)
    assert torch.equal(sv(x), sv(x))
    assert len(draws) == 2
