"""Counter-based random numbers: 64 random bits for every (seed, draw, slot) at once, computed
with int64 tensor ops for a whole block of draws.

NOTE: [Counter-based draws]
A seeded draw that must not depend on how the draws are batched (``block_size``,
``chunk_size``) was made from its own ``torch.Generator`` seeded by (seed, draw index): ~11 us
of seeding per draw, more than the draw itself. Here draw i's numbers are a hash of
(seed, i, slot) instead, so any block of draws is computed in one go and is the same whatever
the block. The hash is splitmix64's finalizer (Steele, Lea and Flood, "Fast splittable
pseudorandom number generators", 2014; the mixer of java.util.SplittableRandom), applied twice:
  row(i)     = mix(key + (i + 1) * GAMMA)            key = mix(seed): splitmix64's i-th output
  bits(i, s) = mix(row(i) + (s + 1) * GAMMA_SLOT)
with mix(z) = z ^ (z >>> 31) after two rounds of z = (z ^ (z >>> r)) * C. Everything is modulo
2^64: torch's int64 multiply and add wrap around (two's complement), and ``>>`` on int64 is an
*arithmetic* shift, so the logical shift ``>>>`` is spelt ``(z >> r) & (2^(64-r) - 1)``; the
constants above 2^63 are written as their negative int64 twins. tests/test_counter_rng.py
checks the tensors against a Python big-integer reference, and the numbers for uniformity
(chi-square, Kolmogorov-Smirnov) and for independence across slots and draws. The numbers are
good for Monte Carlo, not for cryptography.

Derived draws: a uniform in [0, 1) is the top 53 bits times 2^-53; an index below n is
floor(u n) (bias below n 2^-53); a uniformly random order of F items is the argsort of F
slots' bits (a tie, of probability about F^2 2^-65, is broken by position, stably); k of M
items without replacement are the first k of such an order.
"""

from __future__ import annotations

import torch

_U64 = 2**64


def _signed(c: int) -> int:
    """The int64 with the same 64 bits as the unsigned c."""
    c %= _U64
    return c - _U64 if c >= 2**63 else c


GAMMA = _signed(0x9E3779B97F4A7C15)  # splitmix64's increment: 2^64 / the golden ratio, odd
GAMMA_SLOT = _signed(0xD1B54A32D192ED03)  # another odd constant for the slots (an R2 sequence's)
_C1 = _signed(0xBF58476D1CE4E5B9)
_C2 = _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, r: int) -> torch.Tensor:
    """Logical right shift of int64 bits (``>>`` alone copies the sign bit in)."""
    return (z >> r) & ((1 << (64 - r)) - 1)


def mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on int64 tensors, bit for bit (wrapping arithmetic)."""
    z = (z ^ _shr(z, 30)) * _C1
    z = (z ^ _shr(z, 27)) * _C2
    return z ^ _shr(z, 31)


def mix_int(z: int) -> int:
    """`mix` of one Python int (any size, taken modulo 2^64), as an int64 value."""
    z %= _U64
    z = ((z ^ (z >> 30)) * (_C1 % _U64)) % _U64
    z = ((z ^ (z >> 27)) * (_C2 % _U64)) % _U64
    return _signed(z ^ (z >> 31))


def bits(seed: int, draws: torch.Tensor, n_slots: int) -> torch.Tensor:
    """(D, n_slots) int64: 64 random bits for each draw index in ``draws`` (D,) and slot 0..n_slots-1,
    the same for a draw whatever the other draws asked with it (NOTE: [Counter-based draws])."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if draws.dtype != torch.int64 or draws.ndim != 1:
        raise ValueError(f"draws must be int64 indices (D,), got {draws.dtype} {tuple(draws.shape)}")
    row = mix((draws + 1) * GAMMA + mix_int(seed))
    slot = (torch.arange(1, n_slots + 1, dtype=torch.int64, device=draws.device) * GAMMA_SLOT)
    return mix(row[:, None] + slot[None, :])


def uniform(b: torch.Tensor) -> torch.Tensor:
    """Uniform float64 in [0, 1) from int64 bits: the top 53 bits times 2^-53."""
    return _shr(b, 11).to(torch.float64) * 2.0**-53


def below(b: torch.Tensor, n: int) -> torch.Tensor:
    """Uniform int64 indices 0..n-1 from int64 bits (floor(u n); bias below n 2^-53)."""
    return (uniform(b) * n).long().clamp_(max=n - 1)


def orders(b: torch.Tensor) -> torch.Tensor:
    """A uniformly random order of the last dim's slots per row: the argsort of their bits (stable)."""
    return torch.argsort(b, dim=-1, stable=True)
