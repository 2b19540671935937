"""`evaluate`: every attribution method under every metric, in one call, as an `Evaluation`.

NOTE: [Seeds of an evaluation]
One int ``generator`` seeds everything. Each metric gets, per batch of inputs, the seed
``derive(generator, "metric", name, batch index)``, the same for every method: all methods are
scored on the same perturbations, subsets and noise (common random numbers), so their
differences carry no noise of the metric's own draws. Each method's attribution call runs with
torch's global generator forked and seeded by ``derive(generator, "method", name, batch
index)``, and each metric call with the metric's seed, so a method or metric drawing from the
global generator (``lambda f: lambda x: torch.randn_like(x)``) repeats too, and the caller's
global random state is left as it was. Seeds are derived from names, not positions: adding a
method or a metric changes no other number.

The metrics seed per example *position in their call* (NOTE: [Explicit randomness]), and with
``batch_size`` each batch is one call with its own seed. So a deterministic metric (deletion,
insertion, sparseness, complexity, monotonicity, localization) of a deterministic method gives
the same numbers for every ``batch_size``, while a seeded one (infidelity, faithfulness
correlation, sensitivity, stability, ROAD's noise) draws other, equally distributed, values
when ``batch_size`` changes (the batches are independent: giving each batch the same seed would
give the first example of every batch the same draws). A rerun with the same ``generator`` and
``batch_size`` repeats every number. Seeded methods (SmoothGrad with ``generator=0``) likewise
draw per position in their call.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Mapping

import torch

from .._src.nesting import new_call_inside_model
from .._src.progress import progress
from .._src.targets import target as _target
from .._src.warn import warn
from . import entries as E
from ._evaluation import Evaluation

OUTPUTS = ("logit", "probability")


def _registry() -> dict:
    return {
        "deletion": E.deletion, "insertion": E.insertion, "infidelity": E.infidelity,
        "faithfulness_correlation": E.faithfulness_correlation, "sparseness": E.sparseness,
        "complexity": E.complexity, "sensitivity_max": E.sensitivity_max, "monotonicity": E.monotonicity,
        "monotonicity_correlation": E.monotonicity_correlation, "road_morf": lambda: E.road(order="morf"),
        "road_lerf": lambda: E.road(order="lerf"), "local_lipschitz": E.local_lipschitz_estimate,
        "relative_input_stability": E.relative_input_stability,
        "relative_output_stability": E.relative_output_stability, "randomization": E.randomization,
        "pointing_game": E.pointing_game, "relevance_mass": E.relevance_mass_accuracy,
        "relevance_rank": E.relevance_rank_accuracy, "attribution_localization": E.attribution_localization,
    }  # fmt: skip


def derive(base: int, *parts) -> int:
    """A seed in [0, 2**62) from the base seed and names/indices (stable across runs and Pythons)."""
    text = "\x1f".join([str(base), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") % 2**62


@new_call_inside_model  # NOTE: [Attributions inside a model's forward] in nesting.py
def evaluate(
    model: Callable,
    methods: Mapping[str, Any],
    inputs: torch.Tensor,
    *,
    metrics=None,
    target="predicted",
    labels=None,
    masks=None,
    batch_size: int | None = None,
    generator=0,
    show_progress: bool = True,
    output: str = "logit",
) -> Evaluation:
    """Scores every method with every metric on every example: an `Evaluation`.

    Args:
      model: the classifier, ``model(x) -> (N, K)`` logits (an ``nn.Module`` or a function);
        used as it is (never put in eval mode for you; the metrics warn about a model in train mode).
      methods: name -> ``make(f) -> attr_fn`` (as `xattr.insights.explore`'s: ``lambda f:
        xattr.integrated_gradients(f, n_steps=32)``), or name -> precomputed attributions
        shaped like ``inputs`` (the metrics that recompute attributions then refuse them).
      inputs: one tensor (N, ...) of examples.
      metrics: name -> `entries.Entry`, or a list of entries or names (``"deletion"``,
        ``"road_morf"``, ...: the entries with their default options); None: `entries.defaults`
        (deletion, insertion, faithfulness correlation, infidelity, sparseness: model calls
        only, no further attribution call).
      target: the class each example is explained and scored for, chosen once and shared by
        every method and metric: "predicted" (the argmax of the model's output), "labels" (the
        ``labels``), an int, or an int tensor (N,).
      labels: (N,) true classes, for ``target="labels"``.
      masks: (N, ...) ground-truth masks, one per example, for the localization metrics.
      batch_size: examples per call of each method and metric (None: all at once); see NOTE:
        [Seeds of an evaluation] for what it changes.
      generator: int seed (or torch.Generator, from which one seed is drawn) for every draw
        (NOTE: [Seeds of an evaluation]); None: torch's global generator, unseeded.
      show_progress: a tqdm bar over (method, metric, batch).
      output: what ``f`` (the function methods explain and metrics score) returns per example:
        "logit" (the target's logit) or "probability" (its softmax probability).

    Returns:
      `Evaluation` with the per-example values (method x metric x example) and its tables.
    """
    if not callable(model):
        raise TypeError(f"evaluate needs a model function, got {type(model).__name__}")
    if not isinstance(inputs, torch.Tensor) or inputs.ndim < 2 or len(inputs) == 0:
        got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a non-empty tensor (N, ...) of examples, got {got}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    n = len(inputs)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    base = _base_seed(generator)
    named = _methods(methods, inputs)
    chosen = _metrics(metrics)
    mask = _masks(masks, n, chosen)
    _check_precomputed(named, chosen)
    bs = n if batch_size is None else batch_size
    spans = [(s, min(s + bs, n)) for s in range(0, n, bs)]
    targets = _targets(model, inputs, target, labels, spans)
    wrap = (lambda m: m) if output == "logit" else _Softmax

    values = torch.full((len(named), len(chosen), n), float("nan"), dtype=torch.float64)
    bar = progress(show_progress, total=len(named) * len(chosen) * len(spans), desc="xattr evaluate", unit="metric")
    try:
        for i, (mname, method) in enumerate(named.items()):
            for b, (s, e) in enumerate(spans):
                xb, tb = inputs[s:e], targets[s:e]
                f_of = _f_of(wrap, tb)
                f = f_of(model)
                make = method if callable(method) else None
                with _seeded(base, xb, "method", mname, b):
                    phi = method(f)(xb) if make is not None else method[s:e]
                phi = _check_attributions(phi, xb, mname)
                attr = _Cached(None if make is None else make(f), xb, phi, mname)
                for k, (kname, entry) in enumerate(chosen.items()):
                    if bar is not None:
                        bar.set_postfix_str(f"{mname} / {kname}")
                    seed = None if base is None else derive(base, "metric", kname, b)
                    run_seed = None if base is None else derive(base, "metric", kname)
                    with _seeded(base, xb, "metric", kname, b):
                        out = entry(f, attr, xb, model=model, mask=None if mask is None else mask[s:e], make=make,
                                    f_of=f_of, generator=seed, run_seed=run_seed)  # fmt: skip
                    values[i, k, s:e] = _per_example(out, e - s, kname)
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    directions = {k: entry.direction for k, entry in chosen.items()}
    return Evaluation(list(named), list(chosen), directions, values, targets.cpu(), seed=0 if base is None else base)


def _base_seed(generator) -> int | None:
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be an int seed, a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _methods(methods, inputs: torch.Tensor) -> dict:
    if not isinstance(methods, Mapping) or not methods:
        raise TypeError("methods must be a non-empty dict name -> make(f) -> attr_fn (or -> precomputed attributions)")
    for name, m in methods.items():
        if not isinstance(name, str):
            raise TypeError(f"method names must be str, got {name!r}")
        if isinstance(m, torch.Tensor):
            if tuple(m.shape) != tuple(inputs.shape):
                raise ValueError(
                    f"precomputed attributions of method {name!r} have shape {tuple(m.shape)}, but the inputs "
                    f"have shape {tuple(inputs.shape)}: give one attribution per input element"
                )
        elif not callable(m):
            raise TypeError(
                f"method {name!r} must be make(f) -> attr_fn or a tensor of attributions, got {type(m).__name__}"
            )
    return dict(methods)


def _metrics(metrics) -> dict:
    if metrics is None:
        return E.defaults()
    known = _registry()
    items = list(metrics.items()) if isinstance(metrics, Mapping) else [(None, m) for m in metrics]
    if not items:
        raise ValueError("metrics is empty: give at least one (or None for the defaults)")
    out = {}
    for key, m in items:
        if isinstance(m, str):
            key = m if key is None else key
            if m not in known:
                hint = ""
                if "representation" in m:
                    hint = " (it needs a layer: entries.relative_representation_stability(layer=...))"
                raise ValueError(
                    f"unknown metric {m!r}{hint}; known names: {sorted(known)}, or give an xattr.metrics.entries entry"
                )
            m = known[m]()
        if not isinstance(m, E.Entry):
            raise TypeError(
                f"metric {key or m!r} must be an xattr.metrics.entries entry (or a name); wrap your own function "
                "fn(f, attr_fn, x) -> (B,) as entries.custom(fn, 'higher' or 'lower')"
            )
        name = key if key is not None else m.name
        if name in out:
            raise ValueError(f"metric {name!r} is given twice: give one of them another name= or dict key")
        out[name] = m
    return out


def _masks(masks, n: int, chosen: dict):
    needing = [k for k, e in chosen.items() if "mask" in e.needs]
    if masks is None:
        if needing:
            raise ValueError(
                f"metric(s) {needing} compare attributions with ground-truth regions: pass masks= (N, ...)"
            )
        return None
    if not isinstance(masks, torch.Tensor) or masks.ndim < 2 or masks.shape[0] != n:
        got = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"masks must be a tensor (N, ...) with one mask per example (N = {n}), got {got}; "
                         "a mask shared by every example: masks=mask.expand(N, *mask.shape)")  # fmt: skip
    return masks


def _check_precomputed(named: dict, chosen: dict) -> None:
    fixed = [m for m, v in named.items() if isinstance(v, torch.Tensor)]
    calling = [k for k, e in chosen.items() if "method" in e.needs]
    if fixed and calling:
        raise ValueError(
            f"metric(s) {calling} recompute attributions at other inputs (or on a changed model), so the "
            f"precomputed attributions of method(s) {fixed} cannot serve them: give make(f) -> attr_fn instead"
        )


def _targets(model, inputs, target, labels, spans) -> torch.Tensor:
    n = len(inputs)
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.shape != (n,) or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an int tensor (N,) = ({n},), got {labels.dtype} {tuple(labels.shape)}")
        if isinstance(target, str) and target == "predicted":
            warn("labels are given but target='predicted': they are not used (pass target='labels' to explain them)")
    if isinstance(target, str):
        if target == "labels":
            if labels is None:
                raise ValueError("target='labels' needs labels= (N,)")
            return labels.long().to(inputs.device)
        if target != "predicted":
            raise ValueError(f"target must be 'predicted', 'labels', an int or an int tensor (N,), got {target!r}")
        with torch.no_grad():
            outs = [model(inputs[s:e]) for s, e in spans]
        if not all(isinstance(o, torch.Tensor) and o.ndim == 2 for o in outs):
            raise ValueError("target='predicted' needs a model returning logits (N, K); give target= yourself")
        return torch.cat(outs).argmax(1)
    if isinstance(target, int) and not isinstance(target, bool):
        return torch.full((n,), target, dtype=torch.long, device=inputs.device)
    if isinstance(target, torch.Tensor) and target.shape == (n,) and not target.is_floating_point():
        if target.dtype != torch.bool:
            return target.long().to(inputs.device)
    raise ValueError(f"target must be 'predicted', 'labels', an int or an int tensor (N,) = ({n},), got {target!r}")


class _Softmax:
    """The model's softmax probabilities (``model`` kept reachable for the train-mode check)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, *args):
        return self.model(*args).softmax(-1)


def _f_of(wrap, t: torch.Tensor) -> Callable:
    return lambda m: _target(wrap(m), t)


class _seeded:
    """torch's global generator forked (CPU, and the inputs' accelerator) and seeded, for one call."""

    def __init__(self, base, x: torch.Tensor, *parts):
        self.seed = None if base is None else derive(base, "global", *parts)
        self.devices = [x.device] if x.device.type != "cpu" else []
        self.fork = None

    def __enter__(self):
        if self.seed is None:
            return
        kind = self.devices[0].type if self.devices else "cuda"
        self.fork = torch.random.fork_rng(devices=self.devices, device_type=kind)
        self.fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        if self.fork is not None:
            return self.fork.__exit__(*exc)


class _Cached:
    """The method's attribution function that gives the attributions already computed when
    called at the batch itself (every metric first calls it there), and computes otherwise."""

    def __init__(self, fn, x, phi, name: str):
        self.fn, self.x, self.phi, self.name = fn, x, phi, name
        self.__wrapped__ = fn

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and args[0] is self.x:
            return self.phi
        if self.fn is None:
            raise ValueError(f"method {self.name!r} is precomputed: this metric needs make(f) -> attr_fn")
        return self.fn(*args, **kwargs)


def _check_attributions(phi, x: torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(phi, (tuple, list)) and len(phi) == 1:
        phi = phi[0]
    if not isinstance(phi, torch.Tensor) or tuple(phi.shape) != tuple(x.shape):
        got = tuple(phi.shape) if isinstance(phi, torch.Tensor) else type(phi).__name__
        raise ValueError(f"method {name!r} gave attributions of shape {got} for inputs of shape {tuple(x.shape)}")
    return phi.detach()


def _per_example(out, batch: int, name: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.shape != (batch,):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"metric {name!r} returned {got}; a metric must give one number per example ({batch},) or a Curve"
        )
    return out.detach().to(torch.float64).cpu()
