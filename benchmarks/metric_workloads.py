"""Metric and concept workloads: infidelity, sensitivity_max, TCAV (see workloads.py).

Same conventions as `workloads.build`: contenders are zero-argument callables, everything that is
not the timed call (transforms, attributions given to infidelity, Captum objects, the floors'
prebuilt rows) is built before timing, and agreement is judged before a time counts.

- infidelity, 50 perturbations, saliency attributions (computed before timing and given to both
  libraries, as Captum's API takes them), Gaussian perturbations I ~ N(0, 0.1^2) (the perturbed
  input is x - I): both libraries call the same perturbation function once on the 50 B
  example-major copies with torch's global generator, so with one seed they draw the same noise
  and must agree exactly. Floor: one no-grad forward of the (50 + 1) B prebuilt rows (the copies
  and x).
- sensitivity_max, 10 perturbations, of saliency: uniform noise in the L-infinity ball of radius
  0.02 (both libraries' default; Captum draws it on the CPU, xattr on the inputs' device, so on
  CUDA agreement is judged with xattr's `uniform_noise` given to both). Floor: one fwd+bwd of the
  (10 + 1) B prebuilt rows (saliency at x and at every copy).
- TCAV on the suite's small CNN (on either device), layers conv2 and conv3, 2 concepts and 4
  random concepts of 32 examples each, R = 3 runs (each concept against randoms[1:], and the
  random CAVs randoms[0] against randoms[1:], Captum's tutorial setup; 18 CAVs), 16 inputs,
  target class 3.
  Timed with each library's default classifier (scikit-learn's SGDClassifier(alpha=0.01,
  max_iter=1000, tol=1e-3) on a random 2/3 split, in both); Captum writes activations and CAVs
  to a fresh temporary save_path per call (its design: with an old one it would load them), xattr
  keeps them in memory (cache_dir=None, its default). Captum's default classifier is random (an
  unseeded SGD and split), so agreement is judged on the same pipeline with one deterministic
  classifier in both, the difference of the class means (Captum: a `Classifier` whose weights are
  class mean minus overall mean; xattr: ``classifier=lambda X, y: mean(X[y==1]) - mean(X[y==0])``,
  ``test_fraction=0``): the sign-count scores of every concept and random CAV must be equal.
  Floor: one no-grad forward of the 192 concept examples up to conv3 and one forward + backward of
  the 16 inputs to the conv2 and conv3 activations.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import warnings
from typing import Callable

import torch

import xattr
from xattr.metrics import gaussian_noise, uniform_noise

from .layer_workloads import _cut
from .perturbation_workloads import SPLIT_ROWS, forward_floors
from .workloads import N_CLASSES, SEED, SmallCNN, Workload, _one_hot, _seeded, agreement_tol, fwd_bwd, make_model

INFIDELITY_STD = 0.1
TCAV_LAYERS = ("conv2", "conv3")
TCAV_SIZE, TCAV_CONCEPTS, TCAV_RANDOMS, TCAV_TARGET = 32, 2, 4, 3


def _seeded_call(fn: Callable[[], object]) -> Callable[[], object]:
    def run():
        torch.manual_seed(SEED)
        return fn()

    return run


def _relative(a: torch.Tensor, b: torch.Tensor, tol: float | None = None) -> tuple[str, bool]:
    """Max abs difference relative to the largest value (metric values can be far below 1)."""
    tol = agreement_tol(b) if tol is None else tol
    diff, scale = float((a - b).abs().max()), float(b.abs().max())
    return f"max abs diff {diff:.1e} (max abs value {scale:.1e})", diff <= tol * scale


def _infidelity(model, x, y, split: int, n: int = 50) -> Workload:
    from captum.metrics import infidelity  # noqa: PLC0415

    f = xattr.target(model, y)
    attr = xattr.saliency(f)(x).detach()  # given to both libraries
    perturb = gaussian_noise(INFIDELITY_STD)
    inf_x = xattr.metrics.infidelity(f, attr, perturb, n_perturb_samples=n)
    inf_split = xattr.metrics.infidelity(f, attr, perturb, n_perturb_samples=n, chunk_size=split)

    def captum():
        return infidelity(model, perturb, x, attr, target=y, n_perturb_samples=n)

    noise = INFIDELITY_STD * torch.randn((n,) + tuple(x.shape), generator=torch.Generator().manual_seed(SEED)).to(x.device)
    rows = torch.cat([x, (x.unsqueeze(0) - noise).reshape((-1,) + tuple(x.shape[1:]))])
    return Workload(
        f"infidelity, {n} perturbations (saliency attributions)", "metric",
        lambda: inf_x(x), captum, forward_floors(model, rows, split),
        lambda: _relative(_seeded_call(lambda: inf_x(x))(), _seeded_call(captum)()), "exact (same seed, same draws), tol 1e-5 relative to the largest value",
        notes=[f"infidelity: xattr: metrics.infidelity(target(model, y), attributions, gaussian_noise({INFIDELITY_STD}), "
               f"n_perturb_samples={n})(x); Captum: captum.metrics.infidelity(model, the same perturb_func, x, "
               f"attributions, target=y, n_perturb_samples={n}); attributions = saliency, computed before timing; "
               f"floor: one no-grad forward of the {rows.shape[0]} prebuilt rows (x and x - I for every copy), or the same "
               f"rows in calls of {split}, the faster."],
        info={"noise draw alone": lambda: torch.randn((n,) + tuple(x.shape), device=x.device),
              f"xattr with chunk_size={split}": lambda: inf_split(x)},
    )


def _sensitivity(model, x, y, n: int = 10) -> Workload:
    from captum.attr import Saliency  # noqa: PLC0415
    from captum.metrics import sensitivity_max  # noqa: PLC0415

    sal_x = xattr.saliency(xattr.target(model, y))
    sal_c = Saliency(model)
    cuda = x.device.type == "cuda"

    def run_x(**kw):
        return xattr.metrics.sensitivity_max(sal_x, x, n_perturb_samples=n, **kw)

    def run_c(**kw):
        return sensitivity_max(sal_c.attribute, x, target=y, n_perturb_samples=n, **kw)

    def agree():
        kw = {"perturb_func": uniform_noise} if cuda else {}  # Captum's default draws on the CPU
        return _relative(_seeded_call(lambda: run_x(**kw))(), _seeded_call(lambda: run_c(**kw))())

    noise = torch.empty((n,) + tuple(x.shape)).uniform_(-0.02, 0.02, generator=torch.Generator().manual_seed(SEED)).to(x.device)
    rows = torch.cat([x, (x.unsqueeze(0) + noise).reshape((-1,) + tuple(x.shape[1:]))])
    with torch.no_grad():
        n_out = model(x[:1]).shape[1]
    return Workload(
        f"sensitivity_max, {n} perturbations (saliency)", "metric",
        run_x, run_c, {"fwd+bwd": fwd_bwd(model, rows, _one_hot(y, n + 1, n_out).to(x.device))},
        agree, "exact (same seed, same draws), tol 1e-5 relative to the largest value" + (" (with xattr's uniform_noise given to both on CUDA)" if cuda else ""),
        notes=[f"sensitivity_max: xattr: metrics.sensitivity_max(saliency(target(model, y)), x, n_perturb_samples={n}); "
               f"Captum: captum.metrics.sensitivity_max(Saliency(model).attribute, x, target=y, n_perturb_samples={n}); "
               "both with their default perturbation (uniform in the L-infinity ball of radius 0.02); floor: one "
               f"fwd+bwd of the {rows.shape[0]} prebuilt rows (x and its copies)."],
        info={"noise draw alone": lambda: torch.empty((n,) + tuple(x.shape), device=x.device).uniform_(-0.02, 0.02)},
    )


# ---------------------------------------------------------------- TCAV --------------------------


def _concept_data(device: str) -> list[torch.Tensor]:
    """2 concepts (a bright first channel; horizontal stripes) and 6 random sets, 32 examples each."""
    g = torch.Generator().manual_seed(SEED + 4)
    shape = (TCAV_SIZE, 3, 32, 32)
    bright = torch.randn(shape, generator=g)
    bright[:, 0] += 1.0
    stripes = torch.randn(shape, generator=g) + (torch.arange(32) % 2).float()[None, None, :, None]
    randoms = [torch.randn(shape, generator=g) for _ in range(TCAV_RANDOMS)]
    return [t.to(device) for t in [bright, stripes] + randoms]


def _mean_diff(X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """xattr's deterministic CAV classifier for the agreement: concept mean minus counterpart mean."""
    return X[y == 1].mean(0) - X[y == 0].mean(0)


class _CaptumMeanDiff:
    """The same boundary through Captum's Classifier interface: per class, class mean minus overall mean
    (for two sets of equal size, +-(concept mean - counterpart mean) / 2: the same signs)."""

    def train_and_eval(self, dataloader, **kwargs):
        xs, ys = zip(*list(dataloader))
        x, y = torch.cat(xs), torch.cat(ys)
        self.cls = sorted(set(y.tolist()))
        self.w = torch.stack([x[y == c].mean(0) - x.mean(0) for c in self.cls])
        return {"accs": torch.tensor(1.0)}

    def weights(self):
        return self.w

    def classes(self):
        return self.cls


def _tcav(device: str) -> Workload:
    from captum.concept import TCAV  # noqa: PLC0415
    from captum.concept import Concept as CConcept  # noqa: PLC0415

    from xattr.concepts import Concept, tcav  # noqa: PLC0415

    model = _seeded(SmallCNN).to(device).eval()
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn((16, 3, 32, 32), generator=gen).to(device)
    data = _concept_data(device)
    names = ["bright", "stripes"] + [f"random{i}" for i in range(TCAV_RANDOMS)]
    xc = [Concept(i, nm, d) for i, (nm, d) in enumerate(zip(names, data))]
    cc = [CConcept(i, nm, [d]) for i, (nm, d) in enumerate(zip(names, data))]
    concepts_x, randoms_x = xc[:TCAV_CONCEPTS], xc[TCAV_CONCEPTS:]
    concepts_c, randoms_c = cc[:TCAV_CONCEPTS], cc[TCAV_CONCEPTS:]
    sets = [[c, r] for c in concepts_c for r in randoms_c[1:]] + [[randoms_c[0], r] for r in randoms_c[1:]]
    base = tempfile.mkdtemp(prefix="xattr-bench-tcav-")
    atexit.register(shutil.rmtree, base, True)

    def run_x(classifier=None, **kw):
        return tcav(model, list(TCAV_LAYERS), concepts_x, x, target=TCAV_TARGET, randoms=randoms_x, null="anchor",
                    classifier=classifier, generator=SEED, **kw)  # fmt: skip

    def run_c(classifier=None):
        path = tempfile.mkdtemp(dir=base)  # fresh: Captum loads activations and CAVs from an old save_path
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # DefaultClassifier warns on construction
                return TCAV(model, list(TCAV_LAYERS), classifier=classifier, save_path=path).interpret(x, sets, target=TCAV_TARGET)
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def agree():
        ours = run_x(classifier=_mean_diff, test_fraction=0.0)
        theirs = run_c(classifier=_CaptumMeanDiff())
        worst, n = 0.0, 0
        for layer in TCAV_LAYERS:
            for ci, c in enumerate(concepts_c):
                got = ours[c.name][layer].sign_count
                want = torch.tensor([float(theirs[f"{c.id}-{r.id}"][layer]["sign_count"][0]) for r in randoms_c[1:]])
                worst, n = max(worst, float((got.cpu().double() - want.double()).abs().max())), n + len(want)
            got = ours[concepts_x[0].name][layer].random_sign_count
            want = torch.tensor([float(theirs[f"{randoms_c[0].id}-{r.id}"][layer]["sign_count"][0]) for r in randoms_c[1:]])
            worst, n = max(worst, float((got.cpu().double() - want.double()).abs().max())), n + len(want)
        # the timed default-classifier runs, for reference only (both classifiers are random)
        d_x, d_c = run_x(), run_c()
        diffs = [abs(float(d_x[c.name][layer].sign_count.mean()) -
                     sum(float(d_c[f"{c.id}-{r.id}"][layer]["sign_count"][0]) for r in randoms_c[1:]) / (TCAV_RANDOMS - 1))
                 for c in concepts_c for layer in TCAV_LAYERS]  # fmt: skip
        text = (f"mean-difference classifier: max abs diff of {n} sign-count scores {worst:.1e}; default classifiers "
                f"(random, reference only): max abs diff of mean scores {max(diffs):.2f}")
        return text, worst <= 1e-6

    cut = _cut("cnn", model)
    _, up_to_conv3, _ = cut["cam"]
    _, up_to_conv2, _ = cut["layer"]
    every = torch.cat(data)
    cot = _one_hot(torch.full((x.shape[0],), TCAV_TARGET, device=device), 1).to(device)

    def floor():
        with torch.no_grad():
            up_to_conv3(every)
        h2 = up_to_conv2(x).detach().requires_grad_()
        h3 = model.conv3(model.pool(model.relu2(h2)))
        out = model.fc(model.relu3(h3).mean((2, 3)))
        return torch.autograd.grad(out, [h2, h3], cot)

    n_cavs = (TCAV_CONCEPTS + 1) * (TCAV_RANDOMS - 1) * len(TCAV_LAYERS)
    return Workload(
        f"TCAV (CNN, layers conv2+conv3, {TCAV_CONCEPTS} concepts, {TCAV_RANDOMS - 1} random runs, {n_cavs} CAVs)", "tcav",
        run_x, run_c, {"activations + layer gradients": floor},
        agree, "exact sign-count scores with the same deterministic classifier (mean difference) in both",
        notes=[f"TCAV: xattr: concepts.tcav(model, {list(TCAV_LAYERS)}, {TCAV_CONCEPTS} concepts, x, target={TCAV_TARGET}, "
               f"randoms={TCAV_RANDOMS} random concepts, null='anchor', generator=0) (default classifier; t-tests included); "
               f"Captum: TCAV(model, {list(TCAV_LAYERS)}, save_path=a fresh temporary directory).interpret(x, {len(sets)} "
               f"experimental sets, target={TCAV_TARGET}) (default classifier); {TCAV_SIZE} examples per concept, 16 inputs; "
               f"{n_cavs} CAVs each. The floor is the model's work only (no classifier): one no-grad forward of the "
               f"{every.shape[0]} concept examples to conv3 and one forward + backward of the inputs to the conv2 and "
               "conv3 activations."],
    )


def build(model_name: str, device: str) -> list[Workload]:
    """infidelity and sensitivity_max on the suite's model; TCAV on the small CNN on ``device``."""
    model, shape, batch = make_model(model_name, device)
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn((batch,) + shape, generator=gen).to(device)  # the same x, y as workloads.build
    y = torch.randint(0, N_CLASSES, (batch,), generator=gen).to(device)
    work = [_infidelity(model, x, y, SPLIT_ROWS[model_name]), _sensitivity(model, x, y)]
    try:
        import xattr.concepts  # noqa: F401, PLC0415
    except ImportError as err:
        name = "TCAV (CNN)"
        work.append(Workload(name, "tcav", None, None, {}, None, "", skip=f"xattr.concepts is not importable ({err})"))
    else:
        work.append(_tcav(device))
    return work
