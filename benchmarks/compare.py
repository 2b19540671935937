"""xattr at two commits, timed side by side in one process: did a change make a method faster?

    python -m benchmarks.compare REV                       # every workload, working tree vs REV
    python -m benchmarks.compare REV --only deep_lift,feature_ablation --repeats 300 --runs 3

The suite's ratios to the floor move by 0.05-0.1 between runs on a shared 2-core VM, more than
most single changes. Here both versions run round-robin in one process (rotated rounds, as in
`timing.interleaved`), so load drifts hit both alike; each run prints the median time of each
and ``old/new`` (above 1: the working tree is faster). REV's ``xattr`` package is exported with
``git archive`` into a temporary directory as ``xattr_rev`` (its own absolute imports renamed),
so the two never share a module. CPU only; the models are the CPU suite's.
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

import torch

import xattr

from . import perturbation_workloads as P
from . import rule_workloads as R
from . import workloads as W
from .timing import configure, interleaved, median

_IMPORT = re.compile(r"^(\s*)(import xattr$|import xattr\.|from xattr[. ])", re.M)


def load_revision(rev: str, into: Path):
    """REV's xattr package as the module ``xattr_rev`` (exported under ``into``)."""
    data = subprocess.run(["git", "archive", rev, "xattr"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        try:
            tar.extractall(into, filter="data")
        except TypeError:  # Python before 3.11.4 has no extraction filters (the archive is our own)
            tar.extractall(into)
    package = into / "xattr_rev"
    (into / "xattr").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text()

        def rename(m: re.Match) -> str:
            stmt = m.group(2)
            return m.group(1) + ("import xattr_rev as xattr" if stmt == "import xattr" else stmt.replace("xattr", "xattr_rev", 1))

        path.write_text(_IMPORT.sub(rename, text))
    sys.path.insert(0, str(into))
    return importlib.import_module("xattr_rev")


def workloads(lib) -> dict[str, Callable[[], Callable[[], object]]]:
    """Name -> a builder of one zero-argument call of ``lib`` on the CPU suite's model and inputs."""
    base, shape, batch = W.make_model("cnn", "cpu")
    x, y = R._inputs(batch, shape, "cpu")
    two_pool = R._same_weights(R.TwoPoolCNN(), base, "cpu")
    tab, xt, yt = P.make_tabular("cpu")

    def call(fn, arg):
        return lambda: fn(arg)

    return {
        "saliency": lambda: call(lib.saliency(lib.target(base, y)), x),
        "guided_backprop": lambda: call(lib.guided_backprop(lib.target(base, y)), x),
        "deep_lift": lambda: call(lib.deep_lift(lib.target(two_pool, y), baselines=0.0), x),
        "deep_lift_resnet50": lambda: _resnet_deep_lift(lib),
        "grad_cam": lambda: call(lib.grad_cam(lib.at_layer(lib.target(base, y), base.conv3)), x),
        "layer_integrated_gradients": lambda: call(
            lib.layer_integrated_gradients(lib.at_layer(lib.target(base, y), base.conv2), n_steps=50), x
        ),
        "lrp": lambda: call(lib.lrp(lib.target(W._seeded(lambda: R.VGGStyle()).eval(), y)), x),
        "occlusion": lambda: call(lib.occlusion(lib.target(base, y), sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4)), x),
        "feature_ablation": lambda: call(lib.feature_ablation(lib.target(tab, yt)), xt),
        "shapley_value_sampling": lambda: call(lib.shapley_value_sampling(lib.target(tab, yt), n_samples=25, generator=0), xt),
        "kernel_shap": lambda: call(lib.kernel_shap(lib.target(tab, yt), n_samples=200, generator=0), xt),
        "lime": lambda: call(lib.lime(lib.target(tab, yt), n_samples=200, generator=0), xt),
    }


def _resnet_deep_lift(lib) -> Callable[[], object]:
    """DeepLift on torchvision's ResNet-50 at the CPU suite's size (`rule_workloads.RESNET_DEEPLIFT`)."""
    from xattr.testing.vision import models  # noqa: PLC0415

    if models() is None:
        raise SystemExit("deep_lift_resnet50 needs torchvision")
    batch, side = R.RESNET_DEEPLIFT["cpu"]
    model = W._seeded(lambda: models().resnet50(weights=None)).eval()
    x, y = R._inputs(batch, (3, side, side), "cpu")
    fn = lib.deep_lift(lib.target(model, y), baselines=0.0)
    return lambda: fn(x)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    p.add_argument("rev", help="the commit to compare the working tree with (e.g. HEAD~3, a sha)")
    p.add_argument("--only", default="", help="comma-separated workload names (default: all)")
    p.add_argument("--repeats", type=int, default=100, help="timed rounds per run (default 100)")
    p.add_argument("--runs", type=int, default=1, help="independent runs per workload (default 1)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    configure("cpu", args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        old = load_revision(args.rev, Path(tmp))
        new_calls, old_calls = workloads(xattr), workloads(old)
        names = [n.strip() for n in args.only.split(",") if n.strip()] or list(new_calls)
        unknown = sorted(set(names) - set(new_calls))
        if unknown:
            raise SystemExit(f"unknown workloads {unknown}; choose from {sorted(new_calls)}")
        for name in names:
            new, before = new_calls[name](), old_calls[name]()
            for run in range(args.runs):
                t = interleaved({"new": new, "old": before}, "cpu", warmup=3, repeats=args.repeats)
                m_new, m_old = median(t["new"]) * 1e3, median(t["old"]) * 1e3
                print(f"{name} run {run + 1}: new {m_new:.3f} ms, {args.rev} {m_old:.3f} ms, old/new {m_old / m_new:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
