"""Timing helpers: interleaved round-robin runs, medians, machine and version info.

Every contender of a workload is timed in the same process, in rounds: each round runs every
contender once, in an order rotated from round to round, so that slow drifts of the machine
(other processes, thermal state, allocator warm-up) hit all contenders alike. The figure that
counts is the median over rounds. `ratio_interval` says how far a ratio of two such medians can be
trusted: on a shared 2-core machine a 5% target sits inside the round-to-round noise.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch


def configure(device: str, threads: int) -> None:
    """Fixes the thread count (CPU) so runs are comparable with the reference figures."""
    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextlib.contextmanager
def full_fp32(device: str):
    """Float32 proper for agreement checks on CUDA: TF32 off (cuDNN convolutions use it by
    default) and deterministic cuDNN algorithms (with cudnn.benchmark some chosen algorithms are
    less accurate: on an H100, layer IG at ResNet-50's layer3 differed from Captum by 3.3e-3 of
    0.19 with them, by 3e-7 with deterministic ones, and by 1e-10 in float64). Timing keeps the
    device's defaults."""
    if not device.startswith("cuda"):
        yield
        return
    flags = ("allow_tf32", "deterministic", "benchmark")
    before = [getattr(torch.backends.cudnn, k) for k in flags], torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        for k, v in zip(flags, before[0]):
            setattr(torch.backends.cudnn, k, v)
        torch.backends.cuda.matmul.allow_tf32 = before[1]


def release(device: str) -> None:
    """Returns cached GPU memory between workloads (a no-op on CPU)."""
    if device.startswith("cuda"):
        import gc  # noqa: PLC0415

        gc.collect()
        torch.cuda.empty_cache()


def time_once(fn: Callable[[], object], device: str) -> float:
    """Seconds for one call of fn, the device synchronized before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    elapsed = time.perf_counter() - t0
    del out
    return elapsed


def interleaved(
    contenders: dict[str, Callable[[], object]],
    device: str,
    *,
    warmup: int = 2,
    repeats: int = 7,
    max_repeats: int | None = None,
    budget_s: float | None = None,
) -> dict[str, list[float]]:
    """Times every contender round-robin; returns {name: [seconds per round]}.

    Runs ``warmup`` untimed rounds, then at least ``repeats`` timed rounds, adding rounds (up to
    ``max_repeats``) while the rounds so far used less than ``budget_s`` seconds: cheap workloads
    get more rounds, which makes their medians steadier.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            time_once(contenders[name], device)
    times: dict[str, list[float]] = {name: [] for name in names}
    max_repeats = max(repeats, max_repeats or repeats)
    spent, rounds = 0.0, 0
    while rounds < repeats or (budget_s is not None and rounds < max_repeats and spent < budget_s):
        order = names[rounds % len(names):] + names[: rounds % len(names)]
        for name in order:
            t = time_once(contenders[name], device)
            times[name].append(t)
            spent += t
        rounds += 1
    return times


def faulted_mib(fn: Callable[[], object]) -> float:
    """MiB of memory newly faulted in (minor page faults) during one call of fn; nan if unknown."""
    try:
        import resource  # noqa: PLC0415 (Unix only)
    except ImportError:
        return float("nan")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    return (after - before) * resource.getpagesize() / 2**20


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> float:
    """Relative interquartile range: a rough noise figure for one contender's timings."""
    if len(values) < 4:
        return float("nan")
    q = statistics.quantiles(values, n=4, method="inclusive")
    return (q[2] - q[0]) / statistics.median(values)


def ratio_interval(num: list[float], den: list[float], *, paired: bool = True, level: float = 0.95,
                   draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A bootstrap interval for ``median(num) / median(den)``: the central ``level`` of that ratio
    over ``draws`` resamplings of the rounds (percentile bootstrap, a fixed seed).

    ``paired``: round i of both lists ran back to back (interleaved timing), so the rounds are
    resampled together and a slow stretch of the machine moves both medians; otherwise (Captum
    timed in rounds of its own) each list is resampled by itself.
    """
    import numpy as np  # noqa: PLC0415

    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if paired and a.size != b.size:
        raise ValueError(f"paired rounds need lists of one length, got {a.size} and {b.size}")
    if a.size < 2 or b.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a.size, (draws, a.size))
    ib = ia if paired else rng.integers(0, b.size, (draws, b.size))
    ratios = np.median(a[ia], axis=1) / np.median(b[ib], axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return float(lo), float(hi)


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def git(*args: str) -> str | None:
    """The stripped output of ``git ARGS`` in the repository, or None where git fails."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_sha() -> str:
    sha = git("rev-parse", "--short", "HEAD")
    if sha is None:
        return "unknown"
    return sha + (" (xattr/ has uncommitted changes)" if git("status", "--porcelain", "--", "xattr") else "")


def commits_since(sha: str) -> tuple[int, int] | None:
    """(commits after ``sha`` up to HEAD, how many of them change xattr/), or None if unknown."""
    counts = [git("rev-list", "--count", f"{sha}..HEAD", *extra) for extra in ((), ("--", "xattr"))]
    if not all(c and c.isdigit() for c in counts):
        return None
    return int(counts[0]), int(counts[1])


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def machine_info(device: str) -> dict[str, str]:
    """Machine, versions and date for the header of RESULTS.md."""
    import captum  # noqa: PLC0415 (benchmarks need captum; imported late so --help works without it)

    import xattr  # noqa: PLC0415

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{_cpu_model()} ({os.cpu_count()} logical CPUs)",
        "torch threads": str(torch.get_num_threads()),
        "load average at start (1/5/15 min)": _load(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "captum": captum.__version__,
        "xattr": f"{xattr.__version__}, git {_git_sha()}",
        "platform": platform.platform(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = str(torch.version.cuda)
    return info
