"""``python -m xattr.demo``: xattr's method families on a small CNN trained on 8x8 digits.

Trains a CNN on scikit-learn's bundled digits (no downloads, seconds on a CPU), explains a
handful of test images with gradient and path methods (saliency, IG with every quadrature,
gradient SHAP, the noise tunnels, expected IG), rule-based ones (DeepLift, guided backprop,
LRP), a layer method (Grad-CAM), and perturbation ones (occlusion, KernelSHAP), prints a
table (completeness gap and time per method) and writes heatmap PNGs next to the inputs into
an output folder:

  overview.png       rows = images, columns = input + one column per method
  classes.png        integrated gradients for all 10 classes at once (xattr.outputs)
  ig_quadrature.png  integrated gradients with each quadrature rule
  methods/<name>.png one method per file, inputs above their attributions
  table.md           the printed table
  explorer.html      an interactive page (no server): 120 test images, filter by class or
                     mistakes, open one to compare four methods, or see each class's mean
                     maps (xattr.insights.explore)
  class_means.png    each class's mean integrated-gradients map over every test image
                     (xattr.attribution_statistics)
  evaluation.md      the explorer's methods (and a random map) scored on the same images
  evaluation.png     by deletion, insertion, faithfulness correlation, infidelity and
                     sparseness, with 95% intervals (xattr.metrics.evaluate)
  llm_tokens.png     a tiny language model trained on the Zen of Python: which words of
                     "beautiful is better than" make it continue with "ugly." (exact Shapley
                     values per target token; needs the 'text' extra, skipped without it)
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

import xattr
from xattr._src import demo_llm, demo_model

QUADRATURE = ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right")
EXPLORED = 120  # test images in explorer.html
NOISE = 0.15  # SmoothGrad noise: 15% of the [0, 1] pixel range (Smilkov et al. suggest 10-20%)


@dataclass
class Method:
    name: str  # table row and file name
    column: str  # column title in the overview
    expr: str  # the xattr expression, shown in the table
    fn: Callable  # x -> attributions
    baseline: str | None  # "zero", "distribution", or None: no baseline notion, no gap
    sign: str  # heatmap colour map: "signed" or "abs"
    rows: int  # model rows evaluated: examples x path steps x samples
    overview: bool = True  # a column of overview.png
    all_classes: bool = False  # attributions (B, 10, ...) for every class


def build_methods(model, f, pool, *, batch: int, n_steps: int, samples: int, seed: int) -> list[Method]:
    """The demo's methods, explaining ``f`` (one class per example) or all 10 classes."""
    ig = xattr.integrated_gradients
    inner = max(8, n_steps // 4)  # IG steps inside a Monte Carlo transform
    mc = max(4, samples // 2)  # Monte Carlo samples around an IG
    methods = [
        Method("saliency", "saliency\n|grad|", "saliency(f)", xattr.saliency(f), None, "abs", batch),
        Method("input_x_gradient", "input x\ngradient", "input_x_gradient(f)", xattr.input_x_gradient(f), "zero", "signed", batch),
    ]
    for q in QUADRATURE:
        methods.append(
            Method(
                f"ig_{q}", "integrated\ngradients", f"integrated_gradients(f, method={q!r})",
                ig(f, n_steps=n_steps, method=q), "zero", "signed", batch * n_steps, overview=q == "gausslegendre",
            )
        )
    methods += [
        Method(
            "gradient_shap", "gradient\nSHAP", "gradient_shap(f, baselines=x_train)",
            xattr.gradient_shap(f, baselines=pool, n_samples=samples, generator=seed),
            "distribution", "signed", batch * samples,
        ),
        Method(
            "smoothgrad", "SmoothGrad", "smoothgrad(saliency(f))",
            xattr.smoothgrad(xattr.saliency(f), stdevs=NOISE, n_samples=samples, generator=seed),
            None, "abs", batch * samples,
        ),
        Method(
            "smoothgrad_sq", "SmoothGrad\nsquared", "smoothgrad_sq(saliency(f))",
            xattr.smoothgrad_sq(xattr.saliency(f), stdevs=NOISE, n_samples=samples, generator=seed),
            None, "abs", batch * samples,
        ),
        Method(
            "vargrad", "VarGrad", "vargrad(saliency(f))",
            xattr.vargrad(xattr.saliency(f), stdevs=NOISE, n_samples=samples, generator=seed),
            None, "abs", batch * samples,
        ),
        Method(
            "smoothgrad_ig", "SmoothGrad\nover IG", "smoothgrad(integrated_gradients(f))",
            xattr.smoothgrad(ig(f, n_steps=inner), stdevs=NOISE, n_samples=mc, generator=seed),
            "zero", "signed", batch * inner * mc,
        ),
        Method(
            "expected_ig", "expected\nIG", "expectation(integrated_gradients(f), baselines=x_train)",
            xattr.expectation(ig(f, n_steps=inner), baselines=pool, n_samples=mc, generator=seed),
            "distribution", "signed", batch * inner * mc,
        ),
        Method("deep_lift", "DeepLift", "deep_lift(f)", xattr.deep_lift(f), "zero", "signed", batch + 1),
        Method("guided_backprop", "guided\nbackprop", "guided_backprop(f)", xattr.guided_backprop(f), None, "signed", batch),
        Method("lrp", "LRP\n(epsilon)", "lrp(f)", xattr.lrp(f), None, "signed", batch),
        Method(
            "grad_cam", "Grad-CAM\n(2nd conv)", "grad_cam(at_layer(f, model[2]))",
            xattr.grad_cam(xattr.at_layer(f, model[2])), None, "abs", batch,
        ),
        Method(
            "occlusion", "occlusion\n2x2", "occlusion(f, sliding_window_shapes=(1, 2, 2))",
            xattr.occlusion(f, sliding_window_shapes=(1, 2, 2)), None, "signed", batch * 49,
        ),
        Method(
            "kernel_shap", "KernelSHAP\n2x2 patches", "kernel_shap(f, feature_mask=patches)",
            xattr.kernel_shap(f, feature_mask=_patches(), n_samples=4 * samples, generator=seed),
            None, "signed", batch * 4 * samples,  # a patch's value is on each of its 4 pixels: no pixel sum
        ),
        Method(
            "ig_all_classes", "", "integrated_gradients(target(model, outputs(range(10))))",
            ig(xattr.target(model, xattr.outputs(range(10))), n_steps=n_steps),
            "zero", "signed", batch * n_steps, overview=False, all_classes=True,
        ),
    ]
    return methods


def _patches() -> torch.Tensor:
    """A feature mask of 16 2x2 patches of an 8x8 digit, (1, 8, 8): KernelSHAP's features."""
    rows = torch.arange(8) // 2
    return (rows[:, None] * 4 + rows[None, :])[None]


@torch.no_grad()
def completeness(model, x, attr, classes, baseline: str | None, pool) -> float | None:
    """mean |sum(attr) - (f(x) - f(b))| over examples (and classes), f = the explained logit(s).

    ``classes``: (B,) the explained class of each example, or None for all of them (attr
    (B, 10, ...)). For a baseline distribution f(b) is averaged over its rows.
    """
    if baseline is None:
        return None
    ref = torch.zeros_like(x[:1]) if baseline == "zero" else pool
    gain = model(x) - model(ref).mean(0)  # (B, 10)
    if classes is not None:
        gain = gain.gather(1, classes[:, None])[:, 0]
    total = attr.reshape(gain.shape + (-1,)).sum(-1)
    return float((total - gain).abs().mean())


def timed(fn, x, repeats: int):
    """(attributions, best wall time in ms over `repeats` calls)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        attr = fn(x)
        best = min(best, 1e3 * (time.perf_counter() - start))
    return attr, best


def format_table(rows: list[tuple]) -> str:
    """Markdown table of (method, expression, model rows, gap or None, ms) rows."""
    header = ("method", "xattr expression", "model rows", "completeness gap", "time (ms)")
    cells = [header] + [
        (name, expr, str(n), "-" if gap is None else f"{gap:.2e}", f"{ms:.1f}") for name, expr, n, gap, ms in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    right = (False, False, True, True, True)

    def line(r):
        return "| " + " | ".join(c.rjust(w) if rj else c.ljust(w) for c, w, rj in zip(r, widths, right)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if rj else "-" * (w + 2) for w, rj in zip(widths, right)) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def pick_images(y_test: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the first test image of each digit, in order of appearance: n distinct labels."""
    first = {}
    for i, y in enumerate(y_test.tolist()):
        first.setdefault(y, i)
        if len(first) == n:
            break
    return torch.tensor(list(first.values()))


def parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m xattr.demo",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="xattr-demo-output", help="output folder (default: ./xattr-demo-output)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default: 10)")
    p.add_argument("--images", type=int, default=6, help="test images to explain, 1 to 10 (default: 6)")
    p.add_argument("--n-steps", type=int, default=50, help="integrated-gradients steps (default: 50)")
    p.add_argument("--samples", type=int, default=32, help="Monte Carlo samples (default: 32)")
    p.add_argument("--repeats", type=int, default=3, help="timing: best of this many calls (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="seed for split, training and sampling (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="print only the results")
    args = p.parse_args(argv)
    if not 1 <= args.images <= 10:
        p.error("--images must be between 1 and 10")
    if args.n_steps < 2 or args.samples < 1 or args.epochs < 1 or args.repeats < 1:
        p.error("--n-steps must be >= 2 and --samples, --epochs, --repeats >= 1")
    return args


def main(argv=None) -> dict:
    """Runs the demo; returns {"accuracy", "rows", "table", "files", "out", "llm"} (used by the tests)."""
    from tqdm.auto import tqdm

    from xattr.viz import save_grid, save_heatmap

    args = parse(argv)
    say = (lambda *a: None) if args.no_progress else (lambda *a: print(*a, flush=True))
    out_dir = os.path.abspath(args.out)
    os.makedirs(os.path.join(out_dir, "methods"), exist_ok=True)

    say(f"[1/4] training a small CNN on scikit-learn's 8x8 digits ({args.epochs} epochs, seed {args.seed})")
    start = time.perf_counter()
    data = demo_model.load_digits(args.seed)
    model = demo_model.train(data, epochs=args.epochs, lr=1e-2, seed=args.seed)
    acc = demo_model.accuracy(model, data.x_test, data.y_test)
    print(
        f"test accuracy: {100 * acc:.1f}% on {len(data.y_test)} held-out images "
        f"(trained on {len(data.y_train)} in {time.perf_counter() - start:.1f} s)",
        flush=True,
    )

    idx = pick_images(data.y_test, args.images)
    x, y = data.x_test[idx], data.y_test[idx]
    with torch.no_grad():
        probs = model(x).softmax(1)
    pred = probs.argmax(1)
    f = xattr.target(model, pred)  # explain each image's predicted class: a LongTensor (B,)
    pool = data.x_train[:256]  # the baseline distribution of gradient SHAP and expected IG
    methods = build_methods(model, f, pool, batch=len(x), n_steps=args.n_steps, samples=args.samples, seed=args.seed)

    say(f"[2/4] explaining {len(x)} test images with {len(methods)} methods (time: best of {args.repeats})")
    xattr.saliency(f)(x)  # warm-up: one-off set-up costs do not land in the first timing
    rows, attrs = [], {}
    bar = tqdm(methods, disable=args.no_progress, unit="method", file=sys.stdout, leave=False, ncols=90)
    for m in bar:
        bar.set_postfix_str(m.name)
        attrs[m.name], ms = timed(m.fn, x, args.repeats)
        gap = completeness(model, x, attrs[m.name], None if m.all_classes else pred, m.baseline, pool)
        rows.append((m.name, m.expr, m.rows, gap, ms))
    bar.close()

    say(f"[3/4] writing heatmaps to {out_dir}")
    labels = [f"{int(t)} -> {int(p)}\n{100 * float(probs[i, p]):.0f}%" for i, (t, p) in enumerate(zip(y, pred))]
    shown = [m for m in methods if m.overview]
    quad = [m for m in methods if m.name.startswith("ig_") and not m.all_classes]
    files = [
        save_grid(
            os.path.join(out_dir, "overview.png"), x, {m.column: attrs[m.name] for m in shown},
            signs={m.column: m.sign for m in shown}, row_labels=labels,
            title="xattr on 8x8 digits: attributions for the predicted class (label -> prediction, confidence)",
        ),
        save_grid(
            os.path.join(out_dir, "classes.png"), x, {f"class {k}": attrs["ig_all_classes"][:, k] for k in range(10)},
            signs="signed", row_labels=labels, shared_scale="row", highlight=pred.tolist(),
            title="integrated gradients for all 10 classes in one pass: target(model, outputs(range(10)))"
            "  [frame: predicted class]",
        ),
        save_grid(
            os.path.join(out_dir, "ig_quadrature.png"), x,
            {m.name[3:].replace("_", "\n"): attrs[m.name] for m in quad},
            signs="signed", row_labels=labels, shared_scale="row",
            title=f"integrated gradients, {args.n_steps} steps, by quadrature rule",
        ),
    ]
    explorer = os.path.join(out_dir, "explorer.html")  # every test image, filterable, 4 methods each
    files.append(xattr.insights.explore(
        model, data.x_test[:EXPLORED], labels=data.y_test[:EXPLORED], path=explorer, show_progress=False,
        title=f"xattr on 8x8 digits: the first {EXPLORED} test images"))
    # the dataset view: every test image's IG for its label, streamed, then each class's mean map
    stats = xattr.attribution_statistics(
        functools.partial(xattr.integrated_gradients, n_steps=16), model, data.x_test, labels=data.y_test, batch_size=128)
    files.append(os.path.join(out_dir, "class_means.png"))
    xattr.viz.plot_class_means(stats, path=files[-1], title=(
        f"mean integrated gradients per class over {stats.n} test images: xattr.attribution_statistics"))
    # the same images' methods scored by faithfulness and complexity metrics, a random map beside them
    scored = dict(xattr.insights.explorer.default_methods("image", model, data.x_test[:EXPLORED]))
    scored["random"] = lambda f: (lambda v: torch.randn(v.shape, generator=torch.Generator().manual_seed(args.seed), dtype=v.dtype))
    evaluation = xattr.metrics.evaluate(model, scored, data.x_test[:EXPLORED],
                                        output="probability", show_progress=False, generator=args.seed)  # fmt: skip
    files.append(os.path.join(out_dir, "evaluation.md"))
    with open(files[-1], "w") as fh:
        fh.write(f"methods on the first {EXPLORED} test images, predicted class, probability output "
                 f"(xattr.metrics.evaluate; arrows: better direction; [95% bootstrap interval])\n\n"
                 f"{evaluation.to_markdown(digits=3)}\n")  # fmt: skip
    files.append(os.path.join(out_dir, "evaluation.png"))
    evaluation.plot(path=files[-1])
    for m in methods:
        if not m.all_classes:
            path = os.path.join(out_dir, "methods", f"{m.name}.png")
            files.append(save_heatmap(path, attrs[m.name], x, sign=m.sign, name=m.column, labels=labels, title=m.expr))

    say("[4/4] a language model: training a tiny GPT-2 on the Zen of Python and explaining a continuation")
    llm = demo_llm.run(out_dir, say)
    if llm is not None:
        files += llm[0]

    table = format_table(rows)
    note = (
        "completeness gap: mean |sum(attr) - (f(x) - f(b))| over images (and classes); f = the explained\n"
        "logit, b = the zero image, or for a baseline distribution f(b) averaged over 256 training images.\n"
        "Monte Carlo methods are complete only in expectation. '-': no baseline. model rows: examples x\n"
        "path steps x samples folded into the batch axis."
    )
    files.append(os.path.join(out_dir, "table.md"))
    with open(files[-1], "w") as fh:
        fh.write(f"test accuracy: {100 * acc:.1f}%\n\n{table}\n\n{note}\n")
    if llm is not None:
        print(f"\n{llm[1]}", flush=True)
    print(f"\n{table}\n\n{note}\n\nwrote {len(files)} files to {out_dir} (start with overview.png)", flush=True)
    return {"accuracy": acc, "rows": rows, "table": table, "files": files, "out": out_dir, "llm": llm and llm[1]}


if __name__ == "__main__":
    main()
