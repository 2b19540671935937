"""The counter-based generator of SAGE's draws (xattr/_src/counter_rng.py) against a Python
big-integer splitmix64, and its numbers for uniformity, independence and determinism."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from xattr._src import counter_rng as rng

U = 2**64


def mix_ref(z: int) -> int:
    z %= U
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % U
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % U
    return z ^ (z >> 31)


def bits_ref(seed: int, i: int, s: int) -> int:
    row = mix_ref(mix_ref(seed) + (i + 1) * 0x9E3779B97F4A7C15)
    return mix_ref(row + (s + 1) * 0xD1B54A32D192ED03)


def test_splitmix64_known_output():
    # splitmix64 seeded with 0: its first output is mix(0x9E3779B97F4A7C15) = 0xE220A8397B1DCDAF
    assert mix_ref(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF
    assert rng.mix(torch.tensor([rng.GAMMA])).item() % U == 0xE220A8397B1DCDAF


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**62), draws=st.lists(st.integers(0, 2**62), min_size=1, max_size=6),
       n_slots=st.integers(1, 5))  # fmt: skip
def test_bits_equal_the_big_integer_reference_for_large_seeds_and_indices(seed, draws, n_slots):
    got = rng.bits(seed, torch.tensor(draws), n_slots)
    for a, i in enumerate(draws):
        for s in range(n_slots):
            assert got[a, s].item() % U == bits_ref(seed, i, s)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**62), start=st.integers(0, 10**6), n=st.integers(1, 40), cut=st.integers(0, 40))
def test_a_draws_bits_do_not_depend_on_the_others_asked_with_it(seed, start, n, cut):
    whole = rng.bits(seed, torch.arange(start, start + n), 3)
    cut = min(cut, n)
    parts = torch.cat([rng.bits(seed, torch.arange(start, start + cut), 3), rng.bits(seed, torch.arange(start + cut, start + n), 3)])
    assert torch.equal(whole, parts)
    assert torch.equal(whole.flip(0), rng.bits(seed, torch.arange(start, start + n).flip(0), 3))


def test_uniforms_pass_kolmogorov_smirnov_and_chi_square():
    b = rng.bits(12345, torch.arange(20000), 4)
    u = rng.uniform(b).numpy()
    assert u.min() >= 0 and u.max() < 1
    for s in range(4):
        assert stats.kstest(u[:, s], "uniform").pvalue > 1e-3
    idx = rng.below(b[:, 0], 7).numpy()
    counts = np.bincount(idx, minlength=7)
    assert counts.sum() == 20000 and stats.chisquare(counts).pvalue > 1e-3
    bitfreq = np.array([((b[:, 1] >> k) & 1).double().mean().item() for k in range(64)])
    assert np.abs(bitfreq - 0.5).max() < 4 * 0.5 / math.sqrt(20000)  # every bit, the sign bit included, fair


def test_slots_and_neighbouring_draws_are_independent():
    u = rng.uniform(rng.bits(7, torch.arange(20000), 3)).numpy()
    for a, b in ((u[:, 0], u[:, 1]), (u[:, 1], u[:, 2]), (u[:-1, 0], u[1:, 0])):
        assert abs(stats.pearsonr(a, b)[0]) < 4 / math.sqrt(len(a))
        # 4 x 4 contingency table of the pair: chi-square test of independence
        table = np.histogram2d(a, b, bins=4, range=[[0, 1], [0, 1]])[0]
        assert stats.chi2_contingency(table)[1] > 1e-3
    other = rng.uniform(rng.bits(8, torch.arange(20000), 1)).numpy()[:, 0]
    assert abs(stats.pearsonr(u[:, 0], other)[0]) < 4 / math.sqrt(20000)  # seeds 7 and 8


def test_orders_are_uniform_over_permutations():
    keys = rng.bits(3, torch.arange(24000), 4)
    perms = rng.orders(keys)
    assert torch.equal(perms.sort(1).values, torch.arange(4).expand(24000, 4))
    codes = (perms * torch.tensor([64, 16, 4, 1])).sum(1)
    counts = np.unique(codes.numpy(), return_counts=True)[1]
    assert len(counts) == 24 and stats.chisquare(counts).pvalue > 1e-3


def test_below_stays_in_range_and_refuses_bad_arguments():
    b = torch.tensor([-1, 0, 2**63 - 1, -(2**63)])
    assert rng.below(b, 5).tolist() == [4, 0, 2, 2]  # u = 1 - 2^-53, 0, just under 1/2, 1/2: the logical shift
    assert rng.below(b, 1).tolist() == [0, 0, 0, 0]
    with pytest.raises(TypeError, match="seed"):
        rng.bits(1.5, torch.arange(3), 2)
    with pytest.raises(ValueError, match="int64"):
        rng.bits(1, torch.arange(3, dtype=torch.int32), 2)
