"""Model-parameter randomization sanity checks (Adebayo et al. 2018).

NOTE: [Re-initialising a layer on a copy]
The user's model is never touched: layers are re-initialised on a deep copy (or on a fresh model
from a builder). A layer is re-initialised by its own ``reset_parameters()`` (PyTorch's default
initialiser for that layer type) run on a CPU copy of the layer under a forked CPU random state
seeded from ``generator``, then copied into place; so the new weights are the same on every
device, and the global random state is unchanged. A layer without ``reset_parameters`` gets
Gaussian weights with its own parameters' standard deviations. Each layer has one seed, so a
layer gets the same new weights in every step of a cascade and in the independent mode.

NOTE: [Re-initialising a parametrized layer]
A parametrized weight (``torch.nn.utils.parametrizations.weight_norm``, ``spectral_norm``,
``orthogonal``, any ``register_parametrization``) is computed from its originals on every
access: ``reset_parameters()`` writes into that computed tensor and is lost, so the layer kept
its trained weight. Instead the CPU copy is made plain (`make_plain`: each such weight an
ordinary parameter), ``reset_parameters()`` draws the fresh weight there, and the fresh weight
is assigned to the layer through its parametrization (``layer.weight = w``, which runs
``right_inverse`` into the originals). So the layer computes what the same layer type with the
same parametrization computes right after construction: weight norm gives ``w`` back exactly
(g = |w|, v = w); orthogonal projects ``w`` onto the orthogonal matrices, as registering it
does; spectral norm keeps ``w`` as its original and divides by its largest singular value,
whose estimates (the ``_u``, ``_v`` buffers) are refreshed by 15 power iterations, as
registering it runs (stale estimates from the trained weight would scale the new one by an
arbitrary factor in eval mode). Re-initialising the originals themselves is not the same: the
layer's initialiser is written for the weight, not for a magnitude and a direction or an
unnormalised matrix. The internal ``X.parametrizations.weight`` modules are not layers of
their own. The old hook-style ``torch.nn.utils.weight_norm``, ``spectral_norm`` and pruning (a
forward pre-hook recomputing the weight before each call) are refused with a clear error on a
layer to randomize, as is a TorchScript model (no ``reset_parameters``, no ``get_submodule``);
elsewhere in the model they are copied (`copy_model`), which plain ``copy.deepcopy`` refuses.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

from .._src import tree as T
from .._src.canonize import copy_model, hook_reparametrized, make_plain
from .._src.nesting import new_call_inside_model
from .._src.sampling import streams
from .._src.submodules import submodule
from ._common import batch_of
from ._similarity import MEASURES


@dataclass
class Randomization:
    """The result of `randomization_check`.

    layers: the randomized layer names, in the order of the steps (step j randomizes layers[j],
      with all earlier ones too in the cascading mode). scores: measure name -> (L, B) tensor of
      similarities between the original and step j's attributions. original: the attributions of
      the unmodified model. attributions: step j's attributions, when kept (``keep=True``).

    Example:
      >>> rnd = xattr.metrics.randomization_check(model, lambda m: xattr.saliency(xattr.target(m, 3)), x, generator=0)
      >>> rnd.layers, rnd.scores["ssim"]      # step names, (L, B) similarities
    """

    mode: str
    layers: list
    scores: dict
    original: Any
    attributions: list = field(default_factory=list)


@new_call_inside_model  # NOTE: [Attributions inside a model's forward] in nesting.py
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

    Example:
      >>> rnd = xattr.metrics.randomization_check(model, lambda m: xattr.saliency(xattr.target(m, 3)), x, generator=0)
      >>> rnd.scores["spearman"]              # (L, B): similarity to the trained model's maps, per step
    """
    if mode not in ("cascading", "independent"):
        raise ValueError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    fresh = (lambda: copy_model(model)) if isinstance(model, nn.Module) else model
    trained = model if isinstance(model, nn.Module) else model()
    _check_eager(trained)
    args = x if isinstance(x, tuple) else (x,)
    measures = [(s, MEASURES[s]) if isinstance(s, str) and s in MEASURES else _custom(s) for s in similarity]
    names = _layer_names(trained, layers)
    _check_hooks(trained, names)
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


def _check_eager(model: nn.Module) -> None:
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError(
            "randomization_check needs an eager nn.Module: a TorchScript model has neither its layers' "
            "reset_parameters() nor get_submodule(). Pass the model before torch.jit.script/trace, or a builder "
            "returning it"
        )


def _check_hooks(model: nn.Module, names: list) -> None:
    """Old hook-style weight/spectral norms on a layer to randomize: refused (NOTE: [Re-initialising
    a parametrized layer])."""
    for name in names:
        for sub_name, sub in model.get_submodule(name).named_modules(prefix=name):
            hooked = hook_reparametrized(sub)
            if hooked:
                kinds = sorted({type(h).__name__ for h in hooked.values()})
                raise ValueError(
                    f"randomization_check cannot re-initialise layer {sub_name!r}: {', '.join(sorted(hooked))} is recomputed "
                    f"before every call by an old hook-style reparametrization ({', '.join(kinds)}: "
                    "torch.nn.utils.weight_norm, spectral_norm or prune), which reset_parameters() cannot reach. "
                    "Use torch.nn.utils.parametrizations.weight_norm / spectral_norm (re-initialised through the "
                    "parametrization), remove it (torch.nn.utils.remove_weight_norm, remove_spectral_norm), or leave "
                    "the layer out of `layers`"
                )


def _inside_parametrizations(model: nn.Module) -> set:
    """ids of the modules that implement parametrizations (``X.parametrizations.weight`` and theirs)."""
    return {id(sub) for m in model.modules() if isinstance(m, parametrize.ParametrizationList) for sub in m.modules()}


def _layer_names(model: nn.Module, layers) -> list:
    by_module = {id(m): n for n, m in model.named_modules()}
    inner = _inside_parametrizations(model)
    if layers is None:
        names = [n for n, m in model.named_modules()
                 if id(m) not in inner and (any(True for _ in m.parameters(recurse=False)) or parametrize.is_parametrized(m))]  # fmt: skip
        if not names:
            raise ValueError("the model has no layers with parameters to randomize")
        return names
    out = []
    for layer in layers:
        if isinstance(layer, nn.Module):
            if id(layer) not in by_module:
                raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")
            name = by_module[id(layer)]
        else:
            name = layer
            submodule(model, layer)  # a ValueError naming the near names for a wrong one
        if id(model.get_submodule(name)) in inner:
            owner = name.split(".parametrizations")[0] if ".parametrizations" in name else "the parametrized layer"
            raise ValueError(
                f"{name!r} implements a parametrization, it is not a layer of its own: name the parametrized layer "
                f"({owner!r}), whose weight is re-initialised through it"
            )
        out.append(name)
    return out


def _seeds(generator, n: int) -> list:
    if generator is None:
        return [int(torch.randint(0, 2**62, (1,))) for _ in range(n)]
    return streams(generator, n)


# ``reset_parameters()`` draws from torch's global generator, which all threads share: two checks
# re-initialising layers in two threads seeded it in turn, and each drew the other's numbers
# (measured: 21 of 24 concurrent checks gave other scores than alone, Spearman off by up to
# 0.45). Re-initialisations take turns; another thread drawing from the global generator
# meanwhile (generator=None) still shares it, as it would with any torch initialiser.
_GLOBAL_GENERATOR = threading.Lock()


@torch.no_grad()
def _reinit(module: nn.Module, seed: int) -> None:
    """See NOTE: [Re-initialising a layer on a copy] and NOTE: [Re-initialising a parametrized layer]."""
    with _GLOBAL_GENERATOR, torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        if hasattr(module, "reset_parameters"):
            cpu = copy.deepcopy(module).to("cpu")
            for sub in list(cpu.modules()):
                make_plain(sub)
            cpu.reset_parameters()
            _assign(module, {**dict(cpu.named_buffers()), **dict(cpu.named_parameters())})
            return
        own = dict(module.named_parameters(recurse=False))
        if parametrize.is_parametrized(module):
            own.update({name: getattr(module, name) for name in module.parametrizations})
        new = {}
        for name, p in own.items():
            std = float(p.detach().float().std()) if p.numel() > 1 else 1.0
            new[name] = torch.randn(p.shape, dtype=torch.float64).mul_(std)
        _assign(module, new)


def _assign(module: nn.Module, new: dict) -> None:
    """Writes the new values (by name, as the plain copy names them) into the module's tensors:
    a parametrized one through its parametrization (NOTE: [Re-initialising a parametrized layer])."""
    for name, value in new.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if parametrize.is_parametrized(owner, leaf):
            current = getattr(owner, leaf)
            setattr(owner, leaf, value.detach().to(device=current.device, dtype=current.dtype))  # right_inverse
            _refresh(owner.parametrizations[leaf])
        else:
            owner._parameters[leaf].copy_(value) if leaf in owner._parameters else owner._buffers[leaf].copy_(value)


def _refresh(plist: nn.Module) -> None:
    """Spectral norm's singular-vector estimates for its new weight: 15 power iterations, as
    ``torch.nn.utils.parametrizations.spectral_norm`` runs when registered."""
    if not any(isinstance(p, _SpectralNorm) for p in plist):
        return
    value = plist.original if plist.is_tensor else tuple(getattr(plist, f"original{i}") for i in range(plist.ntensors))
    for i, p in enumerate(plist):
        if isinstance(p, _SpectralNorm) and value.ndim > 1:
            p._power_method(p._reshape_weight_to_matrix(value), 15)
        value = p(*value) if isinstance(value, tuple) else p(value)


def _detach(tree):
    return T.tree_map(lambda a: a.detach() if isinstance(a, torch.Tensor) else a, tree)
