"""LIME's and KernelSHAP's random coalitions, drawn as bool within the memory budget.

NOTE: [Coalition draws within the memory budget]
Each coalition is made from uniforms (F float32 for LIME, F + 1 float64 for KernelSHAP) that are
read once and dropped, so they are drawn ``budget`` bytes at a time and the only tensor of the
call's size is the bool coalitions (NOTE: [Coalitions held as bool] in surrogate.py). The steps
change no number: on the CPU, torch's ``uniform_`` takes each element in turn from the generator
(mt19937), whatever the size of the fill, so consecutive fills of the pieces of a buffer from
one generator give the numbers of one fill of the whole. There a step is a group of whole
examples when one example fits the budget, else a part of one example's samples, drawn from its
generator (or the global one, for generator=None) carried on from the step before. A CUDA
generator (Philox) assigns numbers by thread and launch size, not in order, so on other devices
a fill is split only where it always was: each example whole from its own generator, and with
generator=None the whole batch in one call (held at once: the budget is not kept there).
KernelSHAP's coalitions are drawn straight after their empty coalition, in the tensor that is
evaluated, not drawn and then copied next to it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .kernel_sampling import paired_coalitions
from .masks import FeatureSet, widen
from .sampling import per_example, row_seeds

MAX_ENUMERATED = 24  # kernel_shap enumerates every coalition when n_samples >= 2^F and F is at most this


def uniform_steps(z: torch.Tensor, width: int, dtype, stream, seeds, budget: int | None, write: Callable) -> None:
    """Draws each example's (n, width) uniforms in [0, 1) for the coalitions z (rows, n, ...) in
    steps of about ``budget`` bytes (None: at once), calling ``write(part of z, its uniforms)``
    for each (NOTE: [Coalition draws within the memory budget]); ``seeds`` are the examples'
    generators' (None: the stream's `row_seeds`)."""
    rows, n = z.shape[0], z.shape[1]
    sample = max(1, width * torch.empty((), dtype=dtype).element_size())
    budget = rows * max(1, n) * sample if budget is None else budget
    seeds = row_seeds(stream, rows) if seeds is None and stream is not None else seeds
    cpu = z.device.type == "cpu"
    if not cpu or n * sample <= budget:
        per = rows if stream is None and not cpu else max(1, budget // (max(1, n) * sample))
        for a in range(0, rows, per):
            u = torch.empty(min(per, rows - a), n, width, device=z.device, dtype=dtype)
            per_example(stream, u, lambda v, g: v.uniform_(0.0, 1.0, generator=g), None if seeds is None else seeds[a : a + per])
            write(z[a : a + per], u)
        return
    step = max(1, budget // sample)
    for i in range(rows):
        g = None if stream is None else torch.Generator(device=z.device).manual_seed(seeds[i])
        for a in range(0, n, step):
            u = torch.empty(min(step, n - a), width, dtype=dtype, device=z.device)
            write(z[i, a : a + step], u.uniform_(0.0, 1.0, generator=g))


def bernoulli_draws(rows: int, n: int, m: int, stream, seeds, device, budget: int) -> torch.Tensor:
    """LIME's (rows, n, m) coalitions, bool: each feature kept with probability 1/2. The uniforms
    are float32 whatever the default dtype (a float64 default drew other numbers from the same
    seed), ``budget`` bytes at a time (NOTE: [Coalition draws within the memory budget])."""
    z = torch.empty(rows, n, m, device=device, dtype=torch.bool)
    uniform_steps(z, m, torch.float32, stream, seeds, budget, lambda part, u: torch.lt(u, 0.5, out=part))
    return z


def kernel_draws(sets: list[FeatureSet], m: int, rows: int, n_samples: int, stream, seeds, device, dtype, budget: int,
                 sampling: str = "captum") -> tuple:  # fmt: skip
    """KernelSHAP's coalitions to evaluate, (rows or 1, 1 + N, m) bool: the empty one, then each
    set's over all m ids; and per set its coalitions (views, without the empty one) and weights.
    ``sampling="paired"``: NOTE: [Paired KernelSHAP sampling] in kernel_sampling.py."""
    draw = _kernel_coalitions if sampling == "captum" else paired_coalitions
    drawn = [draw(s, rows, n_samples, stream, seeds, device, dtype, budget) for s in sets]
    return widen([z for z, _ in drawn], sets, m, rows), [(z[:, 1:], w) for z, w in drawn]


def _kernel_coalitions(s: FeatureSet, rows: int, n_samples: int, stream, seeds, device, dtype, budget: int) -> tuple:
    """One feature set's coalitions over its own features, the empty one first, (its examples or
    1, 1 + N, n_s), and the others' weights (its examples, N): every coalition with its Shapley
    kernel weight when ``n_samples >= 2^n_s``, else N = n_samples - 2 draws of weight 1."""
    count = s.count(rows)
    if s.n <= MAX_ENUMERATED and n_samples >= 2**s.n:
        z, w = all_coalitions(s.n, device, dtype)
        return z[None], w[None].expand(count, -1)
    z = torch.empty(count, n_samples - 1, s.n, device=device, dtype=torch.bool)
    z[:, 0] = False
    shapley_draws(count, n_samples - 2, s.n, stream, device, s.pick(seeds), budget, out=z[:, 1:])
    return z, torch.ones(count, n_samples - 2, dtype=dtype, device=device)


def shapley_draws(rows: int, n: int, m: int, stream, device, seeds=None, budget: int | None = None, out=None) -> torch.Tensor:
    """(rows, n, m) coalitions (into ``out`` if given): a size k in 1..m-1 with probability ~
    (m-1)/(k(m-k)), then k of the m features uniformly, by selection sampling (feature j is taken
    with probability (k - taken so far) / (m - j): every k-subset equally likely, exactly k taken,
    no sort). The float64 uniforms, m + 1 per coalition, are drawn ``budget`` bytes at a time
    (None: at once; NOTE: [Coalition draws within the memory budget])."""
    z = torch.empty(rows, n, m, device=device, dtype=torch.bool) if out is None else out  # NOTE: [Coalitions held as bool]
    cdf = _size_cdf(m, z.device) if m > 1 else None
    uniform_steps(z, m + 1, torch.float64, stream, seeds, budget, lambda part, u: _select(part, u, m, cdf))
    return z


def _size_cdf(m: int, device) -> torch.Tensor:
    """The CDF of `shapley_draws`' coalition sizes 1..m-1, made on the CPU and moved to ``device``:
    torch.cumsum of floats on CUDA raises under ``torch.use_deterministic_algorithms(True)``."""
    sizes = torch.arange(1, m, dtype=torch.float64)
    cdf = torch.cumsum((m - 1) / (sizes * (m - sizes)), 0)
    return (cdf / cdf[-1]).to(device)


def _select(z: torch.Tensor, u: torch.Tensor, m: int, cdf: torch.Tensor) -> None:
    """Writes `shapley_draws`' coalitions for the uniforms u (..., m + 1) into z (..., m), the
    sizes drawn by their CDF ``cdf`` (`_size_cdf`)."""
    need = (torch.searchsorted(cdf, u[..., 0].contiguous(), right=True).clamp_max(m - 2) + 1).to(u.dtype)
    for j in range(m):
        take = u[..., j + 1] * (m - j) < need
        z[..., j] = take
        need = need - take.to(need.dtype)


def all_coalitions(m: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Every coalition but the full one, the empty one first, (2^m - 1, m) bool, and the others'
    Shapley kernel weights (2^m - 2) in the float dtype ``dtype``. Built a feature at a time (no
    int64 (2^m, m) temporary)."""
    ids = torch.arange(0, 2**m - 1, device=device)
    z = torch.empty(2**m - 1, m, device=device, dtype=torch.bool)
    for j in range(m):
        torch.ne((ids >> j) & 1, 0, out=z[:, j])
    k = z[1:].sum(1)
    kernel = torch.tensor([0.0] + [(m - 1) / (math.comb(m, j) * j * (m - j)) for j in range(1, m)] + [0.0], dtype=torch.float64)
    return z, kernel.to(device)[k].to(dtype)
