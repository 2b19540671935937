"""The benchmark runner's statistics: the bootstrap interval of a ratio of medians and the verdict
that uses it (benchmarks/timing.py, benchmarks/run.py)."""

import random
import statistics

import pytest

from benchmarks.run import judge
from benchmarks.timing import git, ratio_interval


def _rounds(n, ratio, noise, seed):
    """n paired rounds: a drifting machine speed shared by both contenders, times their own noise."""
    rng = random.Random(seed)
    den, num = [], []
    for _ in range(n):
        machine = rng.uniform(0.8, 1.6)  # a slow stretch hits both runs of a round
        den.append(machine * (1 + rng.gauss(0, noise)))
        num.append(machine * ratio * (1 + rng.gauss(0, noise)))
    return num, den


def _slow_interval(num, den, draws, seed):
    """The same percentile bootstrap with explicit loops and the standard library."""
    rng = random.Random(seed)
    n = len(num)
    ratios = []
    for _ in range(draws):
        idx = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.median(num[i] for i in idx) / statistics.median(den[i] for i in idx))
    ratios.sort()
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]


def test_interval_holds_the_ratio_of_medians_and_is_deterministic():
    num, den = _rounds(101, 1.1, 0.03, seed=1)
    lo, hi = ratio_interval(num, den)
    point = statistics.median(num) / statistics.median(den)
    assert lo < point < hi
    assert (lo, hi) == ratio_interval(num, den)
    assert lo < 1.1 < hi  # the true ratio, with 95% confidence (a fixed seed: this draw does)


def test_interval_matches_a_slow_bootstrap():
    num, den = _rounds(61, 1.05, 0.05, seed=2)
    lo, hi = ratio_interval(num, den, draws=4000, seed=3)
    slo, shi = _slow_interval(num, den, 4000, seed=4)
    # two independent bootstraps of one sample: their percentiles agree to Monte Carlo error
    assert lo == pytest.approx(slo, abs=0.01)
    assert hi == pytest.approx(shi, abs=0.01)


def test_pairing_removes_the_shared_drift():
    num, den = _rounds(101, 1.1, 0.01, seed=5)
    paired = ratio_interval(num, den)
    unpaired = ratio_interval(num, den, paired=False)  # each list resampled by itself
    assert paired[1] - paired[0] < 0.5 * (unpaired[1] - unpaired[0])
    assert ratio_interval(num, den[:-1], paired=False)[0] > 0  # unpaired lists may differ in length
    with pytest.raises(ValueError, match="paired rounds"):
        ratio_interval(num, den[:-1])


def test_interval_narrows_with_more_rounds():
    few = ratio_interval(*_rounds(15, 1.1, 0.05, seed=6))
    many = ratio_interval(*_rounds(400, 1.1, 0.05, seed=6))
    assert many[1] - many[0] < few[1] - few[0]


def test_too_few_rounds_give_no_interval():
    lo, hi = ratio_interval([1.0], [1.0])
    assert lo != lo and hi != hi  # nan


def test_verdict_reports_misses_with_interval_and_flags_borderline_passes():
    assert judge("gradient", 1.13, 1.2, True, x_floor_ci=(1.10, 1.16)) == (
        "no: xattr/floor 1.130 > 1.05 (95% interval 1.10-1.16)")
    assert judge("gradient", 1.04, 1.2, True, x_floor_ci=(1.01, 1.07)) == (
        "yes (borderline: xattr/floor 95% interval 1.01-1.07 reaches past 1.05)")
    assert judge("gradient", 1.01, 1.2, True, x_floor_ci=(0.99, 1.03)) == "yes"
    assert judge("ablation-tabular", 1.5, 21.0, True, speedup_ci=(19.0, 23.0)) == (
        "yes (borderline: Captum/xattr 95% interval 19.00-23.00 reaches below 20.0)")
    assert judge("ablation-tabular", 1.5, 17.5, True, speedup_ci=(16.0, 19.0)).startswith(
        "no: Captum/xattr 17.500 < 20.0 (95% interval 16.00-19.00)")
    assert judge("gradient", 1.0, 1.2, False) == "no: attributions disagree"


def _git(*args):
    out = git(*args)
    if out is None:
        pytest.skip("not a git checkout")
    return out


def _gpu_file(tmp_path, sha):
    text = "\n".join([
        "# xattr benchmark results", "", "Written by `python -m benchmarks.run --device cuda` in 1 s.", "",
        "- date: today", f"- xattr: 0.1.0, git {sha}", "", "## GPU: a model", "", "| a | b |", "|---|---|", "| 1 | 2 |", "",
        "Floors: ...",
    ])
    path = tmp_path / "gpu.md"
    path.write_text(text)
    return str(path)


def test_gpu_section_says_how_many_commits_it_predates(tmp_path):
    from benchmarks.run import gpu_section

    head = _git("rev-parse", "HEAD")
    first = _git("rev-list", "--max-parents=0", "HEAD").splitlines()[0]
    behind = int(_git("rev-list", "--count", f"{first}..HEAD"))
    touching = int(_git("rev-list", "--count", f"{first}..HEAD", "--", "xattr"))
    current = gpu_section(_gpu_file(tmp_path, head[:7]))
    assert not any(line.startswith("- age:") for line in current)  # a run at HEAD is not stale
    assert current[-3:] == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    old = gpu_section(_gpu_file(tmp_path, first[:7]))
    age = [line for line in old if line.startswith("- age:")]
    assert age == [f"- age: {behind} commits since {first[:7]}, {touching} of them changing xattr/: these GPU figures predate them"]
