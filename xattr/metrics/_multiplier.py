"""How much of an explanation is its input multiplier: randomization checks with and without it.

NOTE: [The input multiplier check]
Gradient x input, integrated gradients and DeepLift multiply a gradient by ``x - baseline``
(x for gradient x input). Kokhlikyan, Miglani, Alsallakh, Martin and Reblitz-Richardson
("Investigating sanity checks for saliency maps with image and text classification", 2021)
found that this *input multiplier* carries the input's own pattern (for text: which positions
hold words and which hold padding, how large each token's embedding is) into the map, so that
the maps of a method with it stay similar to the trained model's however much of the model is
randomized (Adebayo et al.'s check fails to flag them), while the same method without it does
not. `multiplier_check` makes that two numbers per method and step:
  - ``randomization``: `randomization_check` of each method (its scores: the similarity of the
    randomized model's map to the trained model's, per layer step and example);
  - ``to_multiplier``: the similarity of each method's map to the multiplier alone, on the
    trained model (row 0) and after each step (row j + 1).
Methods come in pairs, with and without the multiplier:
  "saliency" (|grad|) and "gradient" (grad)   <->  "input_x_gradient"      (multiplier x)
  "average_gradient" (the mean gradient along the straight path b -> x, IG before it is
  multiplied: ``integral_0^1 grad f(b + a (x - b)) da`` by the same quadrature)
                                              <->  "integrated_gradients"  (multiplier x - b)
A method whose maps stay close to its multiplier's on the randomized models, and close to the
trained model's maps, shows the input, not the model.

With ``layer`` (text: the embedding) the methods attribute that layer's output h
(`xattr.at_layer`, the model's own arguments passed through) and the multiplier is h (or
h - b); the layer is found by name in every randomized copy, so where the check randomizes the
layer itself (the embedding, last in the cascade) the multiplier is the random layer's output
and changes with it. ``reduce`` makes each map one score per position before it is compared:
"sum" over the last axis (`xattr.token_scores`), "norm" (the L2 norm over it) or None (the maps
as they are). The multiplier map is reduced as ``|m|.sum(-1)``, ``m.norm(dim=-1)`` or m itself.
Every method sees the same randomized weights (one seed, drawn from ``generator``, for all of
them). The multiplier of each model is recorded while `randomization_check` runs the method on
that model, so the layer steps are its own, not re-implemented here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .._src.methods import input_x_gradient, integrated_gradients, saliency
from .._src.gradients import grad
from .._src.layers import at_layer
from .._src.submodules import submodule
from .._src.nesting import new_call_inside_model
from .._src.paths import path_integral, quadrature
from .._src.progress import progress
from .._src.targets import target as _target
from ._common import batch_of
from ._randomization import Randomization, randomization_check
from ._similarity import MEASURES

# name -> (multiplies, multiplier kind): "x" for gradient x input, "x - b" for integrated gradients
KINDS = {
    "saliency": (False, "x"),
    "gradient": (False, "x"),
    "input_x_gradient": (True, "x"),
    "average_gradient": (False, "x - b"),
    "integrated_gradients": (True, "x - b"),
}
REDUCTIONS = (None, "sum", "norm")


@dataclass
class MultiplierCheck:
    """The result of `multiplier_check` (NOTE: [The input multiplier check]).

    methods: the method names. multiplies: name -> whether it multiplies by its multiplier.
    layers: the randomized layers in step order (step j randomizes layers[j], and the earlier
      ones too in the cascading mode). measures: the similarity names.
    randomization: name -> `Randomization` (scores: measure -> (L, B), the trained model's map
      against step j's).
    to_multiplier: name -> measure -> (L + 1, B): the map against its multiplier's map, row 0 on
      the trained model, row j + 1 after step j.
    multipliers: kind ("x" or "x - b") -> list of L + 1 reduced multiplier maps (trained first).

    Example:
      >>> check = xattr.metrics.multiplier_check(model, x, target=3, generator=0)
      >>> print(check.summary()); check.plot("multiplier.png")
    """

    mode: str
    methods: list
    multiplies: dict
    layers: list
    measures: list
    randomization: dict
    to_multiplier: dict
    multipliers: dict = field(default_factory=dict)

    def _measure(self, measure: str | None) -> str:
        measure = self.measures[0] if measure is None else measure
        if measure not in self.measures:
            raise ValueError(f"measure {measure!r} was not computed; the check has {self.measures}")
        return measure

    def curve(self, method: str, measure: str | None = None, *, against: str = "original") -> torch.Tensor:
        """Mean over examples (NaNs left out) per step, (L + 1,): ``against="original"``: the
        similarity to the trained model's map (row 0: the trained map with itself);
        ``"multiplier"``: to the multiplier's map (row 0: on the trained model)."""
        measure = self._measure(measure)
        if method not in self.methods:
            raise ValueError(f"method {method!r} is not in the check; it has {self.methods}")
        if against == "original":
            r = self.randomization[method]
            rows = torch.cat([_self_scores(r, measure), r.scores[measure]])
        elif against == "multiplier":
            rows = self.to_multiplier[method][measure]
        else:
            raise ValueError(f"against must be 'original' or 'multiplier', got {against!r}")
        return rows.double().nanmean(1)

    def final(self, measure: str | None = None, *, against: str = "original") -> dict:
        """name -> the mean similarity after the last step (the whole cascade random)."""
        return {m: float(self.curve(m, measure, against=against)[-1]) for m in self.methods}

    def summary(self, measure: str | None = None) -> str:
        """A table: per method, whether it multiplies, its similarity to the trained map after the
        last step, and its similarity to the multiplier on the trained and the last model."""
        measure = self._measure(measure)
        n = next(iter(self.randomization.values())).scores[measure].shape[1]
        lines = [f"multiplier check ({self.mode}, {len(self.layers)} layer steps, {measure}, mean of {n} examples)",
                 f"{'method':<22}{'multiplier':>11}{'vs trained map, all random':>28}{'vs multiplier: trained -> random':>35}"]
        for m in self.methods:
            orig, mult = self.curve(m, measure), self.curve(m, measure, against="multiplier")
            mark = "yes" if self.multiplies[m] else "no"
            lines.append(f"{m:<22}{mark:>11}{float(orig[-1]):>28.3f}{float(mult[0]):>26.3f} -> {float(mult[-1]):.3f}")
        return "\n".join(lines)

    def plot(self, path=None, *, measure: str | None = None):
        """A matplotlib Figure (Agg canvas, no pyplot): per method, the similarity to the trained
        map (solid) and to the multiplier (dashed) along the steps; saved as PNG when ``path``."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        measure = self._measure(measure)
        fig = Figure(figsize=(1.6 + 1.1 * (len(self.layers) + 1), 3.6), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        steps = range(len(self.layers) + 1)
        for i, m in enumerate(self.methods):
            color = f"C{i}"
            ax.plot(steps, self.curve(m, measure).numpy(), "-o", color=color, label=f"{m}: vs trained map")
            ax.plot(steps, self.curve(m, measure, against="multiplier").numpy(), "--", color=color, label=f"{m}: vs multiplier")
        ax.set_xticks(list(steps))
        ax.set_xticklabels(["trained"] + [f"+{name or 'model'}" for name in self.layers], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(measure)
        ax.set_title(f"input multiplier check ({self.mode})", fontsize=10)
        ax.legend(fontsize=6.5, loc="best")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, facecolor="white")
        return fig


def _self_scores(r: Randomization, measure: str) -> torch.Tensor:
    """The trained map against itself, (1, B), by the named measure (1 but for constant maps)."""
    fn = MEASURES[measure]
    return fn(r.original, r.original, 0.1)[None].to(r.scores[measure].dtype)


@new_call_inside_model  # NOTE: [Attributions inside a model's forward] in nesting.py
def multiplier_check(
    model: nn.Module | Callable[[], nn.Module],
    x: Any,
    *,
    target=None,
    layer: str | nn.Module | None = None,
    methods: Sequence[str] = ("saliency", "input_x_gradient", "average_gradient", "integrated_gradients"),
    baselines: Any = 0.0,
    reduce: str | None = None,
    mode: str = "cascading",
    layers: Sequence[str | nn.Module] | None = None,
    similarity: Sequence[str] = ("spearman_abs", "topk"),
    top_k: int | float = 0.1,
    n_steps: int = 32,
    generator=None,
    show_progress: bool = False,
) -> MultiplierCheck:
    """Randomization checks of methods with and without the input multiplier, and the similarity
    of their maps to the multiplier alone (NOTE: [The input multiplier check] in
    ``xattr/metrics/_multiplier.py``).

    Args:
      model: the trained ``nn.Module`` (never modified), or a zero-argument builder of it.
      x: the model's input(s): a tensor, or a tuple of positional arguments (token ids).
      target: the output to explain: an int, a (B,) integer tensor, or None for the trained
        model's predicted class of each example (the same target on every randomized model).
      layer: attribute this layer's output (a name, or a module of the trained model), e.g. the
        embedding of a text model; None attributes the first input (a float tensor).
      methods: names among "saliency", "gradient", "input_x_gradient", "average_gradient",
        "integrated_gradients".
      baselines: b of "integrated_gradients" and "average_gradient" (a number or a tensor
        broadcastable to the attributed input or layer output).
      reduce: None, "sum" (one score per position: the sum over the last axis, as
        `xattr.token_scores`) or "norm" (the L2 norm over it).
      mode, layers, top_k, generator: as `randomization_check` (one seed for every method).
      similarity: names among "spearman", "spearman_abs", "ssim", "topk".
      n_steps: quadrature nodes (Gauss-Legendre) of the path methods.
      show_progress: a progress bar over the methods (needs tqdm).

    Returns:
      `MultiplierCheck`, with ``summary()``, ``plot()``, ``curve()`` and ``final()``.

    Example:
      >>> check = xattr.metrics.multiplier_check(model, ids, layer="embedding", reduce="sum", generator=0)
      >>> print(check.summary())
    """
    unknown = [m for m in methods if m not in KINDS]
    if unknown or not methods:
        raise ValueError(f"unknown methods {unknown}: use names among {sorted(KINDS)}" if unknown else "methods is empty")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods has repeated names: {list(methods)}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    bad = [s for s in similarity if not isinstance(s, str) or s not in MEASURES]
    if bad or not similarity:
        raise ValueError(f"similarity must name measures among {sorted(MEASURES)}, got {list(similarity)}")
    quadrature("gausslegendre", n_steps)
    args = x if isinstance(x, tuple) else (x,)
    batch_of(args)
    if not callable(model):
        raise TypeError(f"model must be an nn.Module or a builder returning one, got {type(model).__name__}")
    trained = model if isinstance(model, nn.Module) else model()
    if not isinstance(trained, nn.Module):
        raise TypeError(f"model must be an nn.Module or a builder returning one, got {type(trained).__name__}")
    layer_name = _layer_name(trained, layer)
    if layer_name is None and not (isinstance(args[0], torch.Tensor) and args[0].is_floating_point()):
        raise ValueError("the first input is not a float tensor (token ids?): pass layer= (the embedding) to attribute its output")
    if target is None:
        with torch.no_grad():
            target = trained(*args).argmax(-1)
    seed = int(torch.randint(0, 2**62, (1,))) if generator is None else generator
    if isinstance(seed, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=seed))
    model_arg = trained if isinstance(model, nn.Module) else model
    result = {}
    multipliers: dict = {}
    for name in progress(show_progress, list(methods), total=len(methods), desc="multiplier check", unit="method"):
        recorded: list = []
        build = _builder(name, target, layer_name, baselines, reduce, n_steps, recorded)
        result[name] = (randomization_check(model_arg, build, x, mode=mode, layers=layers, similarity=tuple(similarity),
                                            top_k=top_k, generator=seed, keep=True), recorded)
    to_multiplier = {}
    for name, (r, recorded) in result.items():
        maps = [r.original, *r.attributions]
        if len(recorded) != len(maps):
            raise RuntimeError(f"multiplier_check recorded {len(recorded)} multipliers for {len(maps)} models")
        to_multiplier[name] = {s: torch.stack([MEASURES[s](a, m, top_k) for a, m in zip(maps, recorded)]) for s in similarity}
        multipliers.setdefault(KINDS[name][1], recorded)
    first = next(iter(result.values()))[0]
    return MultiplierCheck(
        mode=mode,
        methods=list(methods),
        multiplies={m: KINDS[m][0] for m in methods},
        layers=list(first.layers),
        measures=list(similarity),
        randomization={m: r for m, (r, _) in result.items()},
        to_multiplier=to_multiplier,
        multipliers=multipliers,
    )


def _layer_name(model: nn.Module, layer) -> str | None:
    if layer is None:
        return None
    if isinstance(layer, nn.Module):
        for n, m in model.named_modules():
            if m is layer:
                return n
        raise ValueError(f"layer {type(layer).__name__} is not a module of the model")
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module name, an nn.Module of the model or None, got {type(layer).__name__}")
    submodule(model, layer)  # a ValueError naming the near names for a wrong one
    return layer


def _method(name: str, f: Callable, baselines, n_steps: int) -> Callable:
    if name == "saliency":
        return saliency(f)
    if name == "gradient":
        return grad(f)
    if name == "input_x_gradient":
        return input_x_gradient(f)
    if name == "integrated_gradients":
        return integrated_gradients(f, baselines=baselines, n_steps=n_steps)
    return path_integral(f, baselines=baselines, n_steps=n_steps, path=_averaged)


def _averaged(x, b, alphas):
    """The straight line with unit velocity: the path integral is the mean gradient along it."""
    a = alphas.to(x.dtype).reshape((-1,) + (1,) * x.ndim)
    return b + a * (x - b), torch.ones_like(x)


def _reduced(a: torch.Tensor, reduce) -> torch.Tensor:
    if reduce == "sum":
        return a.sum(-1)
    if reduce == "norm":
        return a.norm(dim=-1)
    return a


def _multiplier_map(m: torch.Tensor, reduce) -> torch.Tensor:
    if reduce == "sum":
        return m.abs().sum(-1)
    return _reduced(m, reduce)


def _builder(name, target, layer_name, baselines, reduce, n_steps, recorded: list) -> Callable:
    """``model -> attr_fn`` for `randomization_check`; each call also records that model's
    multiplier map (NOTE: [The input multiplier check])."""
    kind = KINDS[name][1]

    def multiplier(v):
        b = torch.as_tensor(baselines, dtype=v.dtype, device=v.device)
        return (v - b) if kind == "x - b" else v

    def build(m: nn.Module) -> Callable:
        f = _target(m, target)
        if layer_name is None:
            fn = _method(name, f, baselines, n_steps)

            def attr(*args):
                recorded.append(_multiplier_map(multiplier(args[0]).detach(), reduce))
                return _reduced(fn(*args), reduce)

            return attr
        split = at_layer(f, m.get_submodule(layer_name))
        fn = _method(name, split.head, baselines, n_steps)

        def attr_layer(*args):
            h = split.act(*args).detach()
            recorded.append(_multiplier_map(multiplier(h), reduce))
            return _reduced(fn(h, *args), reduce)

        return attr_layer

    return build

