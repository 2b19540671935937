"""How much of a CPU call is the allocator's: DeepLift on the suite's CNN, back to back.

    python -m benchmarks.page_faults
    MALLOC_TRIM_THRESHOLD_=268435456 MALLOC_MMAP_THRESHOLD_=268435456 python -m benchmarks.page_faults

Times 100 calls of xattr's DeepLift (batch 16, 3x32x32, zero baseline) and of the plain
forward+backward of its B + 1 rows, one after the other, and reads the process's minor page
faults and system time around them (``resource.getrusage``). glibc gives freed memory at the top
of its heap back to the system and the next call faults it in again; the two variables keep it
with the process. docs/rules.md ("What it costs") reports both runs.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from typing import Callable

import torch

import xattr

from .rule_workloads import TwoPoolCNN, _inputs, _same_weights, _seeded_rows
from .workloads import N_CLASSES, fwd_bwd, make_model

CALLS = 100


def measure(fn: Callable[[], object], calls: int = CALLS) -> tuple[float, float, float]:
    """(median ms per call, minor page faults per call, system ms per call) after 10 warm-up calls."""
    for _ in range(10):
        fn()
    before, times = resource.getrusage(resource.RUSAGE_SELF), []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return statistics.median(times) * 1e3, (after.ru_minflt - before.ru_minflt) / calls, (after.ru_stime - before.ru_stime) / calls * 1e3


def main() -> None:
    torch.set_num_threads(2)
    base, shape, batch = make_model("cnn", "cpu")
    model = _same_weights(TwoPoolCNN(), base, "cpu")
    x, y = _inputs(batch, shape, "cpu")
    dl = xattr.deep_lift(xattr.target(model, y), baselines=0.0)
    rows = torch.cat([x, torch.zeros_like(x[:1])])
    floor = fwd_bwd(model, rows, _seeded_rows(y, N_CLASSES, "cpu"))
    env = {k: os.environ[k] for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_") if k in os.environ}
    print(f"allocator settings: {env or 'glibc defaults'}")
    for name, fn in (("deep_lift", lambda: dl(x)), ("fwd+bwd of B + 1 rows", floor)):
        ms, faults, system = measure(fn)
        print(f"{name}: median {ms:.2f} ms, {faults:.0f} minor page faults and {system:.2f} ms system time per call")


if __name__ == "__main__":
    main()
