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
from typing import Any, Callable, Mapping, Sequence

import torch

from .._src import tree as T
from .._src.nesting import new_call_inside_model
from .._src.progress import progress
from .._src.targets import target as _target
from .._src.warn import warn
from . import entries as E
from ._evaluation import Evaluation
from ._evaluation_curves import Collector

OUTPUTS = ("logit", "probability")


def _registry() -> dict:
    return E.known()


def derive(base: int, *parts) -> int:
    """A seed in [0, 2**62) from the base seed and names/indices (stable across runs and Pythons)."""
    text = "\x1f".join([str(base), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") % 2**62


@new_call_inside_model  # NOTE: [Attributions inside a model's forward] in nesting.py
def evaluate(
    model: Callable,
    methods: Mapping[str, Any],
    *args,
    argnums: int | Sequence[int] = 0,
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
        shaped like ``args[argnums]`` (a tuple of tensors for a tuple ``argnums``; the metrics that
        recompute attributions then refuse them).
      *args: the model's positional arguments, batched: ``model(*args)``. ``args[argnums]`` are
        the attributed inputs (tensors (N, ...)); the others pass through to the model, the
        methods and the metrics (an attention mask, lengths): tensors with N rows are sliced
        with the batches, 0-d tensors and non-tensors are passed as they are.
      argnums: the attributed argument(s), an int or a tuple, as for every metric of
        `xattr.metrics`; build each method with the same ``argnums`` (its attributions have the
        structure of ``args[argnums]``: a tuple of tensors for a tuple). Entries that score one
        attributed tensor refuse a tuple up front (NOTE: [Entries with several inputs] in
        entries.py).
      metrics: name -> `entries.Entry`, or a list of entries or names (``"deletion"``,
        ``"road_morf"``, ...: the entries with their default options); None: `entries.defaults`
        (deletion, insertion, faithfulness correlation, infidelity, sparseness: model calls
        only, no further attribution call).
      target: the class each example is explained and scored for, chosen once and shared by
        every method and metric: "predicted" (the argmax of the model's output), "labels" (the
        ``labels``), an int, or an int tensor (N,). "prediction" and "label" (the words of
        `xattr.attribution_statistics`) mean the same.
      labels: (N,) true classes, for ``target="labels"``.
      masks: (N, ...) ground-truth masks, one per example, for the localization metrics (over
        one attributed input: with several, the entry's ``argnum`` names it).
      batch_size: examples per call of each method and metric (None: all at once); see NOTE:
        [Seeds of an evaluation] for what it changes.
      generator: int seed (or torch.Generator, from which one seed is drawn) for every draw
        (NOTE: [Seeds of an evaluation]); None: torch's global generator, unseeded.
      show_progress: a tqdm bar over (method, metric, batch).
      output: what ``f`` (the function methods explain and metrics score) returns per example:
        "logit" (the target's logit) or "probability" (its softmax probability).

    Returns:
      `Evaluation` with the per-example values (method x metric x example) and its tables, and
      for the curve metrics (deletion, insertion, ROAD, randomization) every example's curve
      (NOTE: [Curves of an evaluation] in _evaluation_curves.py).

    Example:
      >>> methods = {"saliency": xattr.saliency, "ig": lambda f: xattr.integrated_gradients(f, n_steps=32)}
      >>> ev = xattr.metrics.evaluate(model, methods, x, target="labels", labels=y)
      >>> print(ev.to_markdown())             # method x metric means with 95% intervals
    """
    if not callable(model):
        raise TypeError(f"evaluate needs a model function, got {type(model).__name__}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    nums, inputs, n = _inputs(args, argnums)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    base = base_seed(generator)
    named = _methods(methods, inputs)
    chosen = E.resolve(metrics)
    E.check_inputs(chosen, nums)
    mask = E.check_masks(masks, n, chosen)
    _check_precomputed(named, chosen)
    bs = n if batch_size is None else batch_size
    spans = [(s, min(s + bs, n)) for s in range(0, n, bs)]
    device = T.leaves(inputs)[0].device
    targets = _targets(model, args, n, device, target, labels, spans)
    wrap = (lambda m: m) if output == "logit" else _Softmax

    values = torch.full((len(named), len(chosen), n), float("nan"), dtype=torch.float64)
    kept = Collector(len(named), n)  # NOTE: [Curves of an evaluation] in _evaluation_curves.py
    bar = progress(show_progress, total=len(named) * len(chosen) * len(spans), desc="xattr evaluate", unit="metric")
    try:
        for i, (mname, method) in enumerate(named.items()):
            for b, (s, e) in enumerate(spans):
                ab, tb = _rows(args, n, s, e), targets[s:e]
                xb = ab[nums] if isinstance(nums, int) else tuple(ab[j] for j in nums)
                f_of = _f_of(wrap, tb)
                f = f_of(model)
                make = method if callable(method) else None
                with _seeded(base, device, "method", mname, b):
                    phi = method(f)(*ab) if make is not None else T.tree_map(lambda t: t[s:e], method)
                phi = _check_attributions(phi, xb, mname)
                attr = _Cached(None if make is None else make(f), ab, phi, mname)
                for k, (kname, entry) in enumerate(chosen.items()):
                    if bar is not None:
                        bar.set_postfix_str(f"{mname} / {kname}")
                    seed = None if base is None else derive(base, "metric", kname, b)
                    run_seed = None if base is None else derive(base, "metric", kname)
                    with _seeded(base, device, "metric", kname, b):
                        out = entry.trace(f, attr, xb, model=model, mask=None if mask is None else mask[s:e],
                                          make=make, f_of=f_of, generator=seed, run_seed=run_seed, args=ab,
                                          argnums=nums)  # fmt: skip
                    values[i, k, s:e] = _per_example(out.values, e - s, kname)
                    kept.add(kname, i, s, e, out)
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    directions = {k: entry.direction for k, entry in chosen.items()}
    return Evaluation(list(named), list(chosen), directions, values, targets.cpu(), seed=0 if base is None else base,
                      curves=kept.build())  # fmt: skip


def base_seed(generator) -> int | None:
    """The evaluation's base seed: an int as given, one drawn from a torch.Generator, or None
    (NOTE: [Seeds of an evaluation]); a TypeError for anything else."""
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be an int seed, a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _methods(methods, inputs) -> dict:
    if not isinstance(methods, Mapping) or not methods:
        raise TypeError("methods must be a non-empty dict name -> make(f) -> attr_fn (or -> precomputed attributions)")
    for name, m in methods.items():
        if not isinstance(name, str):
            raise TypeError(f"method names must be str, got {name!r}")
        if isinstance(m, list):
            m = tuple(m)
        if isinstance(m, (torch.Tensor, tuple)):
            if _shapes(m) != _shapes(inputs):
                raise ValueError(
                    f"precomputed attributions of method {name!r} have shape {_shapes(m)}, but the attributed "
                    f"inputs have shape {_shapes(inputs)}: give one attribution per input element (a tuple of "
                    "tensors for several attributed inputs)"
                )
        elif not callable(m):
            raise TypeError(
                f"method {name!r} must be make(f) -> attr_fn or a tensor of attributions, got {type(m).__name__}"
            )
    return {k: tuple(m) if isinstance(m, list) else m for k, m in methods.items()}


def _shapes(tree):
    if isinstance(tree, tuple):
        return tuple(_shapes(t) for t in tree)
    return tuple(tree.shape) if isinstance(tree, torch.Tensor) else type(tree).__name__


def _inputs(args: tuple, argnums):
    """(argnums normalised: an int or a tuple of non-negative positions, the attributed
    input(s) ``args[argnums]``, N), after checking that every batched argument has N rows."""
    if not args:
        raise TypeError("evaluate needs the model's inputs: evaluate(model, methods, x) or (model, methods, *args)")
    if isinstance(argnums, bool):
        raise TypeError(f"argnums must be an int or a tuple of ints, got {argnums!r}")
    nums, as_tuple = T.normalize_argnums(argnums)
    if any(isinstance(a, bool) or not isinstance(a, int) or not -len(args) <= a < len(args) for a in nums):
        raise ValueError(f"argnums={argnums!r} must name positional arguments among the {len(args)} given")
    nums = tuple(a % len(args) for a in nums)
    for j in nums:
        x = args[j]
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or len(x) == 0:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            what = "inputs" if len(args) == 1 else f"the attributed argument {j}"
            raise ValueError(f"{what} must be a non-empty tensor (N, ...) of examples, got {got}")
    n = len(args[nums[0]])
    for j, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.ndim >= 1 and len(a) != n:
            raise ValueError(
                f"argument {j} has {len(a)} rows but the attributed input(s) have N = {n}: every tensor argument "
                "is batched with the examples and sliced with them (a tensor shared by every example: close "
                "over it in the model, e.g. functools.partial)"
            )
    inputs = tuple(args[j] for j in nums) if as_tuple else args[nums[0]]
    return (nums if as_tuple else nums[0]), inputs, n


def _rows(args: tuple, n: int, s: int, e: int) -> tuple:
    """Rows s:e of every batched argument; the others as they are."""
    if (s, e) == (0, n):
        return tuple(args)
    return tuple(a[s:e] if isinstance(a, torch.Tensor) and a.ndim >= 1 else a for a in args)


def _check_precomputed(named: dict, chosen: dict) -> None:
    fixed = [m for m, v in named.items() if not callable(v)]
    calling = [k for k, e in chosen.items() if "method" in e.needs]
    if fixed and calling:
        raise ValueError(
            f"metric(s) {calling} recompute attributions at other inputs (or on a changed model), so the "
            f"precomputed attributions of method(s) {fixed} cannot serve them: give make(f) -> attr_fn instead"
        )


_TARGET_SPELLINGS = {"label": "labels", "prediction": "predicted"}  # attribution_statistics' words


def _targets(model, args: tuple, n: int, device, target, labels, spans) -> torch.Tensor:
    if isinstance(target, str):
        target = _TARGET_SPELLINGS.get(target, target)
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
            return labels.long().to(device)
        if target != "predicted":
            raise ValueError(f"target must be 'predicted', 'labels', an int or an int tensor (N,), got {target!r}")
        with torch.no_grad():
            outs = [model(*_rows(args, n, s, e)) for s, e in spans]
        if not all(isinstance(o, torch.Tensor) and o.ndim == 2 for o in outs):
            raise ValueError("target='predicted' needs a model returning logits (N, K); give target= yourself")
        return torch.cat(outs).argmax(1)
    if isinstance(target, int) and not isinstance(target, bool):
        return torch.full((n,), target, dtype=torch.long, device=device)
    if isinstance(target, torch.Tensor) and target.shape == (n,) and not target.is_floating_point():
        if target.dtype != torch.bool:
            return target.long().to(device)
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

    def __init__(self, base, device: torch.device, *parts):
        self.seed = None if base is None else derive(base, "global", *parts)
        self.devices = [device] if device.type != "cpu" else []
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

    def __init__(self, fn, args: tuple, phi, name: str):
        self.fn, self.args, self.phi, self.name = fn, args, phi, name
        self.__wrapped__ = fn

    def __call__(self, *args, **kwargs):
        if not kwargs and len(args) == len(self.args) and all(a is b for a, b in zip(args, self.args)):
            return self.phi
        if self.fn is None:
            raise ValueError(f"method {self.name!r} is precomputed: this metric needs make(f) -> attr_fn")
        return self.fn(*args, **kwargs)


def _check_attributions(phi, x, name: str):
    if isinstance(phi, list):
        phi = tuple(phi)
    if isinstance(x, torch.Tensor) and isinstance(phi, tuple) and len(phi) == 1:
        phi = phi[0]
    if _shapes(phi) != _shapes(x) or not all(isinstance(t, torch.Tensor) for t in T.leaves(phi)):
        raise ValueError(
            f"method {name!r} gave attributions of shape {_shapes(phi)} for attributed inputs of shape "
            f"{_shapes(x)}: build it with evaluate's argnums (a tuple of tensors for several inputs)"
        )
    return T.tree_map(lambda t: t.detach(), phi)


def _per_example(out, batch: int, name: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.shape != (batch,):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"metric {name!r} returned {got}; a metric must give one number per example ({batch},) or a Curve"
        )
    return out.detach().to(torch.float64).cpu()
