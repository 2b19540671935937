"""Model-parameter randomization sanity checks (Adebayo et al. 2018).

NOTE: [Re-initialising a layer on a copy]
The user's model is never touched: layers are re-initialised on a deep copy (or on a fresh model
from a builder). A layer is re-initialised by its own ``reset_parameters()`` (PyTorch's default
initialiser for that layer type) run on a CPU copy of the layer under a forked CPU random state
seeded from ``generator``, then copied into place; so the new weights are the same on every
device, and the global random state is unchanged. A layer without ``reset_parameters`` gets
Gaussian weights with its own parameters' standard deviations. Each layer has one seed, so a
layer gets the same new weights in every step of a cascade and in the independent mode.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .._src import tree as T
from .._src.sampling import streams
from ._common import batch_of
from ._similarity import MEASURES


@dataclass
class Randomization:
    """The result of `randomization_check`.

    layers: the randomized layer names, in the order of the steps (step j randomizes layers[j],
      with all earlier ones too in the cascading mode). scores: measure name -> (L, B) tensor of
      similarities between the original and step j's attributions. original: the attributions of
      the unmodified model. attributions: step j's attributions, when kept (``keep=True``).
    """

    mode: str
    layers: list
    scores: dict
    original: Any
    attributions: list = field(default_factory=list)


def randomization_check(
    model: nn.Module | Callable[[], nn.Module],
    method_builder: Callable[[nn.Module], Callable],
    x: Any,
    *,
    mode: str = "cascading",
    layers: Sequence[str | nn.Module] | None = None,
    similarity: Sequence[str | Callable] = ("spearman", "spearman_abs", "ssim", "topk"),
    top_k: int | float = 0.1,
    generator=None,
    keep: bool = False,
) -> Randomization:
    """Re-initialises layers and measures how much the attributions change.

    A method whose maps barely change when the model's weights are randomized explains the
    input, not the model (Adebayo et al. 2018): similarity should drop as layers are randomized.

    Args:
      model: the trained ``nn.Module`` (deep-copied, never modified), or a zero-argument builder
        returning the trained model (called once per fresh copy needed).
      method_builder: ``model -> attr_fn``, e.g. ``lambda m: xattr.saliency(xattr.target(m, 3))``.
      x: the input(s): a tensor, or a tuple of positional arguments of attr_fn.
      mode: "cascading" (randomize from the last layer down, accumulating) or "independent"
        (one layer at a time, the others trained).
      layers: names (or modules) of the layers, ordered from input to output; default: every
        module with parameters of its own, in registration order ("" is the model itself).
      similarity: names among "spearman", "spearman_abs", "ssim" (image maps only), "topk", or
        callables ``(original, randomized) -> (B,)``.
      top_k: k of "topk", a count or a fraction of the elements.
      generator: int seed or torch.Generator for the new weights (NOTE: [Re-initialising a layer on a copy]).
      keep: also keep every step's attributions.

    Returns:
      `Randomization` with per-step, per-example scores.
    """
    if mode not in ("cascading", "independent"):
        raise ValueError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    fresh = (lambda: copy.deepcopy(model)) if isinstance(model, nn.Module) else model
    trained = model if isinstance(model, nn.Module) else model()
    args = x if isinstance(x, tuple) else (x,)
    measures = [(s, MEASURES[s]) if isinstance(s, str) and s in MEASURES else _custom(s) for s in similarity]
    names = _layer_names(trained, layers)
    order = list(reversed(names))  # top (output) first
    seeds = _seeds(generator, len(order))
    original = _detach(method_builder(trained)(*args))
    batch_of(original)  # NOTE: [Empty batches]: before any layer is re-initialised
    scores = {name: [] for name, _ in measures}
    kept = []
    work = fresh() if mode == "cascading" else None
    for j, name in enumerate(order):
        if mode == "independent":
            work = fresh()
        _reinit(work.get_submodule(name), seeds[j])
        attr = _detach(method_builder(work)(*args))
        for m_name, measure in measures:
            scores[m_name].append(measure(original, attr, top_k))
        if keep:
            kept.append(attr)
    return Randomization(mode, order, {k: torch.stack(v) for k, v in scores.items()}, original, kept)


def _custom(s):
    if callable(s):
        return getattr(s, "__name__", repr(s)), lambda a, b, k: s(a, b)
    raise ValueError(f"unknown similarity {s!r}: use {sorted(MEASURES)} or a callable (original, randomized) -> (B,)")


def _layer_names(model: nn.Module, layers) -> list:
    by_module = {id(m): n for n, m in model.named_modules()}
    if layers is None:
        names = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
        if not names:
            raise ValueError("the model has no layers with parameters to randomize")
        return names
    out = []
    for layer in layers:
        if isinstance(layer, nn.Module):
            if id(layer) not in by_module:
                raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")
            out.append(by_module[id(layer)])
        else:
            model.get_submodule(layer)  # raises a clear AttributeError for a wrong name
            out.append(layer)
    return out


def _seeds(generator, n: int) -> list:
    if generator is None:
        return [int(torch.randint(0, 2**62, (1,))) for _ in range(n)]
    return streams(generator, n)


@torch.no_grad()
def _reinit(module: nn.Module, seed: int) -> None:
    """See NOTE: [Re-initialising a layer on a copy]."""
    own = dict(module.named_parameters(recurse=False))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        if hasattr(module, "reset_parameters"):
            cpu = copy.deepcopy(module).to("cpu")
            cpu.reset_parameters()
            new = dict(cpu.named_parameters())
            for name, value in cpu.named_buffers():
                module.get_buffer(name).copy_(value)
            for name, p in module.named_parameters():
                p.copy_(new[name])
            return
        for p in own.values():
            std = float(p.detach().float().std()) if p.numel() > 1 else 1.0
            p.copy_(torch.randn(p.shape, dtype=torch.float64).mul_(std))


def _detach(tree):
    return T.tree_map(lambda a: a.detach() if isinstance(a, torch.Tensor) else a, tree)
