"""xattr against other attribution libraries: zennit (LRP), shap (KernelSHAP, DeepExplainer,
GradientExplainer), Quantus (evaluation metrics), shapiq (Shapley interactions), sage-importance
(SAGE) and LXT (AttnLRP). The workloads are in `zennit_workloads`, `shap_workloads`,
`quantus_workloads`, `interaction_workloads` and `lxt_workloads`; each is skipped
with a note when its library is missing.

    python -m benchmarks.other_libraries                 # time them all, print a markdown table
    python -m benchmarks.other_libraries --only Kernel   # those whose name contains "Kernel"

Wired into run.py as a family, `build(device)` gives the workloads, whose ``captum`` contender is
the other library. Families: LRP workloads are "gradient" (<= 1.05x floor and never slower than
the other library), the shap and Quantus ones "other-library" (`TARGETS`, `LIMITS`: never slower than
the other library).
"""

from __future__ import annotations

import argparse
import time

import torch

from . import timing
from .workloads import Workload

TARGETS = {"other-library": "never slower than the other library (zennit, shap, quantus, shapiq, sage-importance, lxt)"}
LIMITS = {"other-library": (None, 1.0)}  # (most xattr/floor, least other/xattr), as run.limits
COLUMNS = ["workload", "xattr ms", "other ms", "floor ms", "xattr/floor", "other/floor", "other/xattr", "agreement"]


def build(device: str = "cpu") -> list[Workload]:
    from .interaction_workloads import build as build_interactions  # noqa: PLC0415
    from .lxt_workloads import build as build_lxt  # noqa: PLC0415
    from .quantus_workloads import build as build_quantus  # noqa: PLC0415
    from .shap_workloads import build as build_shap  # noqa: PLC0415
    from .zennit_workloads import build as build_zennit  # noqa: PLC0415

    return build_zennit(device) + build_shap(device) + build_quantus(device) + build_interactions(device) + build_lxt(device)


def run_one(w: Workload, device: str, repeats: int, budget: float) -> list[str]:
    """One table row: agreement first, then interleaved rounds (a contender marked by
    `perturbation_workloads.few_rounds` is timed in rounds of its own afterwards)."""
    if w.skip:
        return [w.name] + ["-"] * 6 + [f"skipped: {w.skip}"]
    text, agreed = w.agreement()
    rounds = getattr(w.captum, "rounds", None)
    contenders = {"xattr": w.xattr, **({"other": w.captum} if rounds is None else {}), **{f"floor: {k}": v for k, v in w.floors.items()}}
    times = timing.interleaved(contenders, device, repeats=repeats, max_repeats=101, budget_s=budget)
    if rounds is not None:
        times["other"] = [timing.time_once(w.captum, device) for _ in range(rounds)]
    med = {k: timing.median(v) for k, v in times.items()}
    tf = min(v for k, v in med.items() if k.startswith("floor: "))
    tx, to = med["xattr"], med["other"]
    verdict = "" if agreed else " (DISAGREE)"
    return [w.name, f"{1e3 * tx:.2f}", f"{1e3 * to:.2f}", f"{1e3 * tf:.2f}", f"{tx / tf:.2f}", f"{to / tf:.2f}",
            f"{to / tx:.2f}", text + verdict]


def parser(module: str, doc: str, *, repeats: int = 9, budget: float = 4.0) -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.<module>`` for a family of other-library workloads."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{module}", description=doc.splitlines()[0])
    p.add_argument("--only", default="", help="run only workloads whose name contains this (comma-separated)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--budget", type=float, default=budget, help="seconds of timed rounds per workload")
    return p


def print_table(build_fn, args) -> int:
    """Times the workloads of ``build_fn("cpu")`` selected by ``args`` and prints a markdown table."""
    timing.configure("cpu", args.threads)
    rows = []
    for w in build_fn("cpu"):
        if args.only and not any(part.strip().lower() in w.name.lower() for part in args.only.split(",")):
            continue
        t0 = time.perf_counter()
        rows.append(run_one(w, "cpu", args.repeats, args.budget))
        print(f"  {' | '.join(rows[-1])} [{time.perf_counter() - t0:.0f} s]", flush=True)
    print("\n| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


def main(argv=None) -> int:
    return print_table(build, parser("other_libraries", __doc__).parse_args(argv))


if __name__ == "__main__":
    torch.manual_seed(0)
    raise SystemExit(main())
