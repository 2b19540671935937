"""Side-by-side benchmark of xattr against Captum and the plain-torch floor.

    python -m benchmarks.run                      # CPU suite (3-conv CNN), writes benchmarks/RESULTS.md
    python -m benchmarks.run --quick              # fewer rounds, for a smoke test
    python -m benchmarks.run --device cuda        # GPU suite (ResNet-50), if a GPU and torchvision exist
    python -m benchmarks.run --device all         # both
    python -m benchmarks.run --only IG --out -    # workloads whose name contains "IG", print only
    python -m benchmarks.run --only Lime --out -  # also Occlusion, FeatureAblation, Shapley, KernelShap,
                                                  # infidelity, sensitivity, TCAV
    python -m benchmarks.run --only LLM --out -   # LLMAttribution and LLMGradientAttribution on a small Llama

See benchmarks/README.md for what is measured and how targets are judged.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch

from . import timing

TARGETS = {
    "gradient": "<= 1.05x floor and never slower than Captum",
    "many": "<= 1.1x floor (1 forward + K backward) and >= 1.3x faster than Captum's loop",
    "occlusion-defaults": "<= 1.2x floor; on GPU also >= 4x faster than Captum's defaults (perturbations_per_eval=1)",
    "occlusion": "<= 1.2x floor",
    "ablation-tabular": ">= 20x faster than Captum's defaults",
    "surrogate": ">= 100x faster than Captum at the same n_samples; results statistically equivalent",
    "metric": "<= 1.2x floor",
    "tcav": "never slower than Captum",
    "ablation-llm": "<= 1.2x floor; on GPU also >= 4x faster than Captum's defaults (cached token-by-token decoding, one perturbation per call)",
    "sampling-llm": ">= 100x faster than Captum's defaults at the same n_samples; results statistically equivalent",
    "influence": "never slower than Captum (no target in benchmarks.md: training-data influence came later)",
    "other-library": "never slower than the other library (zennit, shap; no target in benchmarks.md)",
}
TARGET_GROUPS = [  # (label in RESULTS.md, families)
    ("gradient methods (also layer IG, Grad-CAM, DeepLift, GuidedBackprop, LRP)", ["gradient"]),
    ("many outputs (all classes, K neurons, K target tokens of an LLM)", ["many"]),
    ("occlusion on Captum's defaults", ["occlusion-defaults"]),
    ("occlusion, perturbations_per_eval=64", ["occlusion"]),
    ("feature ablation and Shapley sampling (tabular)", ["ablation-tabular"]),
    ("KernelSHAP and LIME", ["surrogate"]),
    ("metrics (infidelity, sensitivity_max)", ["metric"]),
    ("TCAV", ["tcav"]),
    ("feature ablation on an LLM (LLMAttribution), Captum's defaults", ["ablation-llm"]),
    ("Shapley sampling on an LLM (LLMAttribution)", ["sampling-llm"]),
    ("training-data influence (TracInCP, TracInCPFast)", ["influence"]),
    ("against other libraries (zennit's LRP, shap's explainers; own section)", ["other-library"]),
]
GPU_RESULTS = "benchmarks/RESULTS-gpu.md"  # written on a GPU machine by --device cuda --out GPU_RESULTS
COLUMNS = ["workload", "xattr ms", "Captum ms", "floor ms", "xattr/floor", "Captum/floor",
           "Captum/xattr", "agreement", "target met"]


def limits(family: str, device: str) -> tuple[float | None, float | None]:
    """(most xattr/floor, least Captum/xattr) for a family of workloads; None: no such target."""
    gpu = device.startswith("cuda")
    return {
        "gradient": (1.05, 1.0),
        "many": (1.1, 1.3),
        "occlusion-defaults": (1.2, 4.0 if gpu else None),
        "occlusion": (1.2, None),
        "ablation-tabular": (None, 20.0),
        "surrogate": (None, 100.0),
        "metric": (1.2, None),
        "tcav": (None, 1.0),
        "ablation-llm": (1.2, 4.0 if gpu else None),
        "sampling-llm": (None, 100.0),
        "influence": (None, 1.0),
        "other-library": (None, 1.0),
    }[family]


def judge(family: str, x_floor: float, speedup: float, agreed: bool, device: str = "cpu", *,
          x_floor_ci: tuple[float, float] | None = None, speedup_ci: tuple[float, float] | None = None) -> str:
    """"yes", or "no: " and what missed. With the ratios' 95% intervals (`timing.ratio_interval`)
    a miss also gives its interval, and a pass whose interval reaches past the limit is marked
    borderline: on a noisy machine another run may land on the other side."""
    limit, min_speedup = limits(family, device)
    misses, close = [], []

    def span(ci):
        return f"95% interval {ci[0]:.2f}-{ci[1]:.2f}"

    if limit is not None:
        if x_floor > limit:
            misses.append(f"xattr/floor {x_floor:.3f} > {limit}" + (f" ({span(x_floor_ci)})" if x_floor_ci else ""))
        elif x_floor_ci and x_floor_ci[1] > limit:
            close.append(f"xattr/floor {span(x_floor_ci)} reaches past {limit}")
    if min_speedup is not None:
        if speedup < min_speedup:
            misses.append(f"Captum/xattr {speedup:.3f} < {min_speedup}" + (f" ({span(speedup_ci)})" if speedup_ci else ""))
        elif speedup_ci and speedup_ci[0] < min_speedup:
            close.append(f"Captum/xattr {span(speedup_ci)} reaches below {min_speedup}")
    if not agreed:
        misses.append("attributions disagree")
    if misses:
        return "no: " + "; ".join(misses)
    return "yes" + (f" (borderline: {'; '.join(close)})" if close else "")


def run_suite(model_name: str, device: str, args, suite=None) -> tuple[list[list[str]], list[str]]:
    from .influence_workloads import build as build_influence  # noqa: PLC0415 (imports captum)
    from .layer_workloads import build as build_layers  # noqa: PLC0415 (imports captum)
    from .llm_workloads import build as build_llm  # noqa: PLC0415 (imports captum)
    from .metric_workloads import build as build_metrics  # noqa: PLC0415 (imports captum)
    from .perturbation_workloads import build as build_perturbation  # noqa: PLC0415 (imports captum)
    from .rule_workloads import build as build_rules  # noqa: PLC0415 (imports captum)
    from .text_workloads import build as build_text  # noqa: PLC0415 (imports captum)
    from .workloads import build  # noqa: PLC0415 (imports captum)

    rows, notes = [], []
    resnet = tuple(args.resnet_deeplift) if args.resnet_deeplift else None
    suite = suite if suite is not None else (build(model_name, device) + build_layers(model_name, device) + build_rules(model_name, device, resnet=resnet)
             + build_text(device) + build_llm(device)
             + build_perturbation(model_name, device) + build_metrics(model_name, device) + build_influence(device))
    for w in suite:
        if args.only and not any(part.strip().lower() in w.name.lower() for part in args.only.split(",")):
            continue
        if w.skip:
            rows.append([w.name] + ["-"] * 6 + [f"skipped: {w.skip}", "-"])
            notes.append(f"{w.name}: skipped: {w.skip}.")
            print(f"  {w.name}: skipped ({w.skip})", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            with timing.full_fp32(device):  # agreement in float32 proper; timing with the device's defaults
                text, agreed = w.agreement()  # also a first (untimed) run of both libraries
        except Exception as err:  # noqa: BLE001 (a failing workload must not hide the others)
            msg = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            rows.append([w.name] + ["-"] * 6 + [f"error: {msg}", "no: the run failed"])
            notes.append(f"{w.name}: failed before timing with {msg}")
            print(f"  {w.name}: FAILED {msg}", flush=True)
            continue
        floors = dict(w.floors)
        for k in list(floors):  # a floor spelling that cannot run here (say, out of GPU memory) drops out
            if len(floors) > 1:
                try:
                    timing.time_once(floors[k], device)
                except torch.cuda.OutOfMemoryError as err:
                    del floors[k]
                    notes.append(f"{w.name}: floor candidate {k} dropped: {type(err).__name__} (the others remain).")
                    print(f"  {w.name}: floor candidate {k} dropped ({type(err).__name__})", flush=True)
                    timing.release(device)
        has_captum = w.captum is not None  # None: Captum fails on this workload (the agreement text says why)
        # A Captum call that takes seconds (marked by perturbation_workloads.few_rounds) is timed in a few
        # rounds of its own after the others; the agreement call above was its warm-up.
        captum_rounds = getattr(w.captum, "rounds", None) if has_captum else None
        interleaved = has_captum and captum_rounds is None
        contenders = {"xattr": w.xattr, **({"captum": w.captum} if has_captum else {}), **{f"floor: {k}": v for k, v in floors.items()}, **w.info}
        try:
            times = timing.interleaved(
                {k: v for k, v in contenders.items() if k != "captum" or interleaved}, device, warmup=1 if args.quick else 2,
                repeats=args.repeats, max_repeats=args.repeats if args.quick else args.max_repeats, budget_s=args.budget,
            )
            if has_captum and not interleaved:
                times["captum"] = [timing.time_once(w.captum, device) for _ in range(captum_rounds)]
        except Exception as err:  # noqa: BLE001 (as above: record it, go on with the next workload)
            msg = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            rows.append([w.name] + ["-"] * 6 + [f"{text}; timing failed: {msg}", "no: the run failed"])
            notes.append(f"{w.name}: failed while timing with {msg}")
            print(f"  {w.name}: FAILED while timing: {msg}", flush=True)
            timing.release(device)
            continue
        timing.release(device)
        med = {k: timing.median(v) for k, v in times.items()}
        floor_name = min(floors, key=lambda k: med[f"floor: {k}"])
        tx, tf = med["xattr"], med[f"floor: {floor_name}"]
        tc = med["captum"] if has_captum else float("nan")
        speedup = tc / tx if has_captum else float("inf")  # Captum fails: "never slower than Captum" holds
        xf_ci = timing.ratio_interval(times["xattr"], times[f"floor: {floor_name}"])
        cx_ci = timing.ratio_interval(times["captum"], times["xattr"], paired=interleaved) if has_captum else None
        verdict = judge(w.family, tx / tf, speedup, agreed, device, x_floor_ci=xf_ci, speedup_ci=cx_ci)
        c_cells = [f"{1e3 * tc:.1f}", f"{tc / tf:.2f}", f"{speedup:.2f}"] if has_captum else ["fails", "-", "-"]
        rows.append([w.name, f"{1e3 * tx:.1f}", c_cells[0], f"{1e3 * tf:.1f}", f"{tx / tf:.2f}",
                     c_cells[1], c_cells[2], text, verdict])
        noise = ", ".join(f"{k} {100 * timing.spread(v):.0f}%" for k, v in times.items())
        faults = ", ".join(f"{k} {timing.faulted_mib(contenders[k]):.0f}" for k in contenders) if device == "cpu" else ""
        rounds = f"{len(times['xattr'])} rounds" + (f" (Captum: {captum_rounds} rounds of its own after them)" if captum_rounds else "")
        how = w.how.replace("tol 1e-5", "tol 1e-4 (CUDA, TF32 off for the check)") if device.startswith("cuda") else w.how
        cis = f"xattr/floor {xf_ci[0]:.2f}-{xf_ci[1]:.2f}" + (f", Captum/xattr {cx_ci[0]:.2f}-{cx_ci[1]:.2f}" if cx_ci else "")
        notes.append(f"{w.name}: {rounds}; agreement judged {how}; "
                     f"timing spread (IQR/median) {noise}; 95% bootstrap intervals over rounds: {cis}" + (f"; MiB page-faulted per call: {faults}." if faults else "."))
        if len(floors) > 1:
            cands = ", ".join(f"{k} {1e3 * med['floor: ' + k]:.1f} ms" for k in floors)
            notes.append(f"{w.name}: floor candidates {cands}; the floor is the fastest, {floor_name}.")
        if w.info:
            extra = ", ".join(f"{k} {1e3 * med[k]:.1f} ms = {med[k] / tf:.2f}x floor" for k in w.info)
            notes.append(f"{w.name}: for reference (not a contender): {extra}.")
        notes.extend(w.notes)
        print(f"  {w.name}: xattr {1e3 * tx:.1f} ms, Captum {c_cells[0]}{' ms' if has_captum else ''}, floor {1e3 * tf:.1f} ms "
              f"({floor_name}); x/floor {tx / tf:.2f}, C/floor {c_cells[1]}, C/x {c_cells[2]}; {text}; "
              f"{verdict} [{time.perf_counter() - t0:.0f} s]", flush=True)
    return rows, notes


OTHER_COLUMNS = [c.replace("Captum", "other") for c in COLUMNS]


def table(rows: list[list[str]], columns: list[str] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def gpu_section(path: str) -> list[str]:
    """The GPU section of a markdown file written by a ``--device cuda`` run, headed by that run's
    command and machine lines (a GPU machine's run is merged into the CPU run's RESULTS.md)."""
    lines = open(path).read().splitlines()
    written = next(i for i, line in enumerate(lines) if line.startswith("Written by"))
    machine = []
    for line in lines[written + 2:]:
        if not line.startswith("- "):
            break
        machine.append(line)
    start = next(i for i, line in enumerate(lines) if line.startswith("## GPU"))
    end = next((i for i, line in enumerate(lines) if i > start and (line.startswith("Floors:") or line.startswith("## "))), len(lines))
    body = lines[start + 1:end]
    while body and not body[-1].strip():
        body.pop()
    return [lines[start], "", f"From a separate run on a GPU machine: {lines[written][len('Written by '):]}", ""] + machine + _age(machine) + body


def _age(machine: list[str]) -> list[str]:
    """A machine line saying how many commits (and how many changing xattr/) came after the commit
    a stored GPU run names, so that a reader knows the GPU figures predate them; none if unknown."""
    import re  # noqa: PLC0415

    sha = next((m.group(1) for line in machine if line.startswith("- xattr:") for m in [re.search(r"git ([0-9a-f]{7,40})", line)] if m), None)
    counts = None if sha is None else timing.commits_since(sha)
    if not counts or counts[0] == 0:
        return []
    return [f"- age: {counts[0]} commits since {sha}, {counts[1]} of them changing xattr/: these GPU figures predate them"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu (3-conv CNN), cuda (ResNet-50) or all")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--quick", action="store_true", help="5 rounds, 1 warm-up: a smoke test, not a result")
    p.add_argument("--repeats", type=int, default=None, help="least number of timed rounds (default 9; 5 with --quick)")
    p.add_argument("--max-repeats", type=int, default=101, help="most rounds while under --budget")
    p.add_argument("--budget", type=float, default=8.0, help="seconds of timed rounds per workload before stopping at --repeats")
    p.add_argument("--only", default="", help="run only workloads whose name contains this (several: comma-separated)")
    p.add_argument("--resnet-deeplift", type=int, nargs=2, metavar=("BATCH", "SIDE"), default=None,
                   help="batch and image side of the ResNet-50 DeepLift workload (default: 2 112 on CPU, 8 224 on GPU)")
    p.add_argument("--out", default="benchmarks/RESULTS.md", help="markdown output file, '-' to only print")
    p.add_argument("--gpu-from", default=GPU_RESULTS, metavar="FILE",
                   help="markdown written by a --device cuda run on a GPU machine: its GPU section, with that "
                        f"run's machine lines, goes into this (CPU) run's output (default {GPU_RESULTS} when it "
                        "exists; '' for none)")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (5 if args.quick else 9)
    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
    warnings.filterwarnings("ignore", message=".*required_grads has been set automatically")

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if not any(d.startswith("cuda") for d in devices):
        why = "not requested (run with --device cuda or all)" if torch.cuda.is_available() else "no CUDA device on this machine"
        gpu_note = ("GPU", None, [f"not run: {why}."])
    else:
        gpu_note = None
    from_file = args.gpu_from and gpu_note and (args.gpu_from != GPU_RESULTS or os.path.exists(GPU_RESULTS))
    gpu_md = gpu_section(args.gpu_from) if from_file else None
    start = time.perf_counter()
    info = timing.machine_info("cuda" if "cuda" in devices and torch.cuda.is_available() else "cpu")
    sections = []
    for device in devices:
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                sections.append(("GPU", None, ["skipped: no CUDA device on this machine."]))
                print("cuda: skipped (no CUDA device)")
                continue
            from xattr.testing.vision import models  # noqa: PLC0415

            if models() is None:
                sections.append(("GPU", None, ["skipped: torchvision is not installed (ResNet-50 needs it)."]))
                print("cuda: skipped (torchvision missing)")
                continue
            timing.configure(device, args.threads)
            label, model = f"GPU: ResNet-50 (random weights), batch 8, 3x224x224 ({torch.cuda.get_device_name()})", "resnet50"
        else:
            timing.configure(device, args.threads)
            label, model = f"CPU: 3-conv CNN, batch 16, 3x32x32, 10 classes, {torch.get_num_threads()} threads", "cnn"
        print(f"{label}", flush=True)
        rows, notes = run_suite(model, device, args)
        sections.append((label, rows, notes))
        if not device.startswith("cuda"):
            from .other_libraries import build as build_other  # noqa: PLC0415 (imports zennit, shap where installed)

            print("against other libraries", flush=True)
            rows, notes = run_suite(model, device, args, suite=build_other(device))
            if rows:
                sections.append(("CPU: against other libraries (the 'other' columns: zennit or shap, as the workload says)",
                                 rows, notes, OTHER_COLUMNS))
    if gpu_note and not gpu_md:
        sections.append(gpu_note)
    elapsed = time.perf_counter() - start

    md = ["# xattr benchmark results", "",
          f"Written by `{' '.join(['python -m benchmarks.run'] + list(sys.argv[1:] if argv is None else argv))}` "
          f"in {elapsed:.0f} s{' (--quick: a smoke test, not a result)' if args.quick else ''}.", ""]
    md += [f"- {k}: {v}" for k, v in info.items()]
    md += ["", "Times are medians of interleaved rounds (xattr, Captum and the floor run round-robin in one "
           "process, after warm-up). Ratios are what count; CPU absolute times depend on the machine and "
           "its load. A verdict gives its ratio's 95% bootstrap interval over this run's rounds; separate runs can "
           "differ by more (benchmarks/README.md, 'Reading CPU numbers'). Targets (from /work/shared/benchmarks.md):"]
    md += [f"- {label}: {'; '.join(TARGETS[f] for f in fams)}" for label, fams in TARGET_GROUPS]
    for label, rows, notes, *columns in sections:
        md += ["", f"## {label}", ""]
        if rows is not None:
            md += [table(rows, *columns), ""]
        md += ["Notes:", ""] + [f"- {n}" for n in notes]
    if gpu_md:
        md += [""] + gpu_md
    md += ["", "Floors: IG = one forward+backward of the n_steps-times expanded batch; Saliency = one of the "
           "batch; SmoothGrad and GradientShap = one of the 25-times expanded batch; all classes = one "
           "forward of the 20-times expanded batch plus 10 backward passes (fastest plain-torch spelling); "
           "neuron IG = one forward of the n_steps-times expanded batch up to the layer plus K backward "
           "passes (fastest plain-torch spelling); layer IG = the layer activation of input and baseline "
           "plus one forward+backward of the 50-times expanded path through the part of the model after "
           "the layer; Grad-CAM = one forward + one backward to the layer (the model cut by hand at the "
           "layer, or a forward hook: the faster counts); DeepLift = one forward+backward of the doubled "
           "batch (inputs then baselines, 2B rows); GuidedBackprop and LRP = one of the batch; occlusion, "
           "feature ablation, Shapley sampling, KernelSHAP and LIME = one no-grad forward of all perturbed copies "
           "at once (with the unperturbed batch where the method needs f(x)), or the same rows in calls of at most 128 "
           "(image models) or 4096 (tabular) rows, the faster counts; infidelity = the same for x and its perturbed "
           "copies; "
           "sensitivity_max = one fwd+bwd of x and its perturbed copies; TCAV = the concept examples' activations "
           "(one no-grad forward) plus one forward+backward of the inputs to the layers (no classifier); "
           "LLM feature ablation and Shapley sampling = one no-grad forward of the rows [perturbed prompt, target] "
           "the method needs (all target tokens from that one teacher-forced pass); LLM layer IG = the embeddings "
           "of input and baseline plus one forward of the n_steps rows [path embeddings, target] and one backward "
           "pass per target token (fastest plain-torch spelling). "
           "Floor inputs are built before timing, so the floor times the model's work only.", ""]
    text = "\n".join(md)
    if args.out == "-":
        print(text)
    else:
        with open(args.out, "w") as fh:
            fh.write(text)
        print(f"wrote {args.out} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
