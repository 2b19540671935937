"""Perturbed copies of an input: every element exactly the input's or the baseline's value
(NOTE: [Perturbed copies in one call] in `perturb`), and the same copies made by a kernel chosen
once for a prepared call (`copier`)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .checks import is_traced

# Perturbed copies of up to this many elements are one torch.where on CPU (four float ops
# otherwise: per element where is ~10x slower there, but small tensors cost the calls, not the
# elements); off the CPU always.
WHERE_ELEMENTS = 2**15
# A float dtype's same-sized integer dtype: a prepared call's small CPU copies are integer
# arithmetic on the floats' bits (see `copier`).
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _by_where(x: torch.Tensor, keep: torch.Tensor) -> bool:
    """Whether float copies with a bool keep are one ``torch.where`` (off the CPU, or small
    enough that the calls cost more than the elements) rather than float ops: `perturb`'s
    choice, which `copier` must make alike."""
    return x.device.type != "cpu" or x.numel() * keep.shape[0] <= WHERE_ELEMENTS


def _finite(*ts: torch.Tensor) -> bool:
    """Whether the float tensors ts hold finite values only, by one sum each: a NaN or an infinity
    makes its sum NaN or infinite (a sum of finite values that overflows says no as well, which
    costs only the faster kernel). False inside a torch.func transform or torch.compile, where
    no value may be read."""
    return not any(is_traced(t) for t in ts) and all(math.isfinite(t.sum().item()) for t in ts)


def perturb(x: torch.Tensor, b: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Copies (c, B, ...): x where keep is 1, b where it is 0 (NOTE: [Perturbed copies in one call]).

    Exact for every dtype: one ``torch.where``, or for large float copies on CPU with finite
    inputs and baselines ``x * k + b * (1 - k)`` with k in {0, 1} (equal up to the sign of a
    zero: ``x * 1 + b * 0`` is +0.0 for x = -0.0 and b >= 0). A float keep strictly
    between 0 and 1 (float inputs only) gives ``b + keep * (x - b)``.
    """
    if not x.is_floating_point():
        return torch.where(keep.bool(), x, b)
    if keep.dtype == torch.bool:
        if _by_where(x, keep) or not _finite(x, b):  # NaN * 0 and inf * 0 are NaN: the float ops would spread them
            return torch.where(keep, x, b)  # one kernel
        # x * 1 + b * 0 == x and x * 0 + b * 1 == b for finite values (a zero's sign aside, see above)
        k = keep.to(x.dtype)  # float ops, ~10x faster than torch.where per element on CPU (NOTE: [Float masks])
        return torch.addcmul(b * (1 - k), x, k)  # b * (1 - k) is coalition-sized when b is shared
    keep = keep.to(x.dtype)
    return torch.where(keep == 1, x, torch.where(keep == 0, b, b + keep * (x - b)))


def copier(x: torch.Tensor, b: torch.Tensor, keep: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """(``v -> perturb(v, b, keep)`` for every v of x's shape, dtype and device, bytes it holds):
    the kernel chosen and the mask's own work done once, for a prepared call (NOTE: [Prepared
    calls]); the same copies bit for bit. Small copies, `perturb`'s ``torch.where``, are on CPU one
    integer ``addcmul`` on the floats' bits instead, ``bits(v) * m + bits(b) * (1 - m)`` with m in
    {0, 1} at full size: exact for every value (no float arithmetic touches them: NaN, infinities
    and signed zeros come through as they are) and 3-4x faster there than ``torch.where`` (13,440
    float32 elements: 5.8 us against 18-32 us with a broadcast baseline); a CPU float without a
    same-sized integer dtype keeps ``torch.where`` with its mask at full size (a broadcast operand
    costs that kernel twice the time). The float spelling of large copies keeps ``k`` and, when
    it is no larger than ``k``, ``b * (1 - k)``; like `perturb` it hands an input that is not
    all finite to ``torch.where`` (a sum per call), and a baseline that is not, every input."""
    if not x.is_floating_point() or keep.dtype != torch.bool:
        return (lambda v: perturb(v, b, keep)), keep.numel() * keep.element_size()
    if _by_where(x, keep):
        if x.device.type != "cpu":
            return (lambda v: torch.where(keep, v, b)), keep.numel()
        full, bits = keep.expand(torch.broadcast_shapes(keep.shape, x.shape)), _BITS.get(x.dtype)
        if bits is None:
            full = full.contiguous()
            return (lambda v: torch.where(full, v, b)), full.numel()
        m = full.to(bits)
        kept_bits = b.view(bits) * (1 - m)  # b's bits where a copy drops the feature, 0 where it keeps it
        return (lambda v: torch.addcmul(kept_bits, v.view(bits), m).view(v.dtype)), 2 * m.numel() * m.element_size()
    if not _finite(b):
        return (lambda v: torch.where(keep, v, b)), keep.numel()
    k = keep.to(x.dtype)
    per_example = torch.broadcast_shapes(b.shape, k.shape) != k.shape  # b * (1 - k) is copies-sized: made per call
    kept_base = None if per_example else b * (1 - k)

    def copies(v: torch.Tensor) -> torch.Tensor:
        if not _finite(v):  # as in `perturb`: NaN * 0 is NaN (rare: k's bool made again, not held)
            return torch.where(k.bool(), v, b)
        return torch.addcmul(b * (1 - k) if per_example else kept_base, v, k)

    return copies, (1 if per_example else 2) * k.numel() * k.element_size()
