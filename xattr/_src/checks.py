"""Input validation with messages that say what to do. Never a silent wrong answer."""

from __future__ import annotations

import functools
import math
import types

import torch
from torch import nn

from . import tree as T
from .exact_baselines import check_exact
from .warn import warn


def is_traced(t: torch.Tensor) -> bool:
    """True inside vmap/grad wrappers or torch.compile, where data-dependent checks must not run."""
    if torch.compiler.is_compiling():
        return True
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


def transforms_around(*kinds) -> int:
    """How many torch.func transforms of these kinds (``torch._C._functorch.TransformType``:
    Grad for grad/vjp/jacrev, Jvp for jvp/jacfwd, Vmap) are active around this call; 0 at once
    outside every transform."""
    if torch._C._functorch.maybe_current_level() is None:
        return 0
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters  # noqa: PLC0415

    return sum(i.key() in kinds for i in retrieve_all_functorch_interpreters())


# Layer methods that walk a path in (or add noise to) the model's *inputs*, as Captum's do: already
# split at a layer, they need other advice than "split at the embedding" for token ids.
INPUT_PATH_LAYER_METHODS = ("conductance", "internal_influence", "layer_gradient_shap")


def check_model_fn(f, method: str, what: str = "") -> None:
    """Refuses, when a method is built, a model function that is not callable (it would fail at
    the first call, inside the method). ``what``: what f must return, for the message."""
    if not callable(f):
        raise TypeError(f"{method}: f must be the model function, a callable{what} (e.g. xattr.target(model, c)), "
                        f"got {type(f).__name__}")  # fmt: skip


def check_float_inputs(selected: tuple, method: str) -> None:
    for leaf in T.leaves(selected):
        if isinstance(leaf, torch.Tensor) and not (leaf.is_floating_point() or leaf.is_complex()):
            got = f"got a {leaf.dtype} tensor (per-example shape {tuple(leaf.shape[1:])})"
            if method in INPUT_PATH_LAYER_METHODS:
                raise TypeError(
                    f"{method} interpolates between the model's inputs and their baselines (as Captum's does), "
                    f"but {got}: token ids cannot be interpolated. Split the model at its embedding, "
                    "emb = xattr.at_layer(f, model.embedding), and run the method on emb.head with the "
                    "embedding's output as its input, e.g. xattr.conductance(xattr.at_layer(emb.head, layer), "
                    "baselines=emb.act(ref))(emb.act(ids), ids) or xattr.gradient_shap(emb.head, "
                    "baselines=emb.act(refs))(emb.act(ids), ids); xattr.layer_integrated_gradients(emb, "
                    "baselines=ref)(ids) interpolates the embedding itself."
                )
            raise TypeError(
                f"{method} differentiates with respect to its inputs, but {got}. Integer inputs (token ids) "
                "have no gradient: split the "
                "model at its embedding with xattr.at_layer(model, model.embedding) and attribute "
                "the embedding output instead, or attribute with a perturbation method."
            )


def check_noisy_inputs(xs: list, stdevs: list) -> None:
    """The noise tunnel adds Gaussian noise: refuse it on bool and integer inputs (token ids)."""
    for x, sd in zip(xs, stdevs):
        if sd != 0 and isinstance(x, torch.Tensor) and not (x.is_floating_point() or x.is_complex()):
            raise TypeError(
                f"the noise tunnel adds Gaussian noise to its inputs, but got a {x.dtype} tensor (per-example "
                f"shape {tuple(x.shape[1:])}) with stdev {sd}: token ids cannot take noise. Put the noise on the "
                "embedding: emb = xattr.at_layer(f, model.embedding), then e.g. "
                "xattr.smoothgrad(xattr.saliency(emb.head), stdevs=s)(emb.act(ids), ids), or "
                "xattr.smoothgrad(xattr.integrated_gradients(emb.head, baselines=emb.act(ref)), stdevs=s)"
                "(emb.act(ids), ids)."
            )


def check_finite(out: torch.Tensor, what: str = "the model") -> None:
    if not isinstance(out, torch.Tensor) or is_traced(out) or not out.numel():
        return
    if out.is_floating_point() and math.isfinite(out.sum().item()):
        return  # one reduction: a finite sum has finite terms (an overflowing sum falls through to the exact check)
    if not torch.isfinite(out).all():
        bad = (~torch.isfinite(out)).sum()
        raise FloatingPointError(
            f"{what} returned {int(bad)} non-finite value(s) (nan/inf) for these inputs; attributions "
            "of non-finite outputs are meaningless. Check the inputs' range, the baselines, and "
            "log/softmax layers (use log_softmax instead of log(softmax))."
        )


def check_baseline(x: torch.Tensor, b, name: str = "baselines") -> torch.Tensor:
    """Broadcasts a baseline (number or tensor) to x's shape, or raises a clear error."""
    if not (x.is_floating_point() or x.is_complex()):  # token ids: 0.5 would truncate to id 0, 300 wrap in uint8
        check_exact(x, b)
    if not isinstance(b, torch.Tensor):
        return torch.full_like(x, float(b))
    if b.ndim == x.ndim and 1 < b.shape[0] != x.shape[0] and b.shape[0] == T.true_batch():
        b = T.tile_rows(b, x.shape[0])  # per-example baselines inside a fold (noise tunnel, ...)
    try:
        shape = torch.broadcast_shapes(b.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"{name} of shape {tuple(b.shape)} does not broadcast to the input's shape {tuple(x.shape)}. "
            "Give a number, one baseline per example (same shape as the input), or a single example "
            f"of shape {(1,) + tuple(x.shape[1:])} that is broadcast across the batch."
        )
    return b.to(dtype=x.dtype, device=x.device).expand_as(x)


def baselines_like(selected, baselines, *, name: str = "baselines"):
    """Matches a baselines tree (or a single number/tensor for every leaf) to the inputs' tree."""
    n_leaves = len(T.leaves(selected))
    if isinstance(baselines, (int, float, torch.Tensor)) and n_leaves == 1:
        return T.tree_map(lambda x: check_baseline(x, baselines, name), selected)
    if isinstance(baselines, (int, float)):
        return T.tree_map(lambda x: check_baseline(x, baselines, name), selected)
    try:
        return T.tree_map(lambda x, b: check_baseline(x, b, name), selected, baselines)
    except (ValueError, TypeError) as err:
        if "does not broadcast" in str(err):
            raise
        if isinstance(baselines, (tuple, list)) and len(baselines) != n_leaves:
            advice = (f"A method attributes the arguments argnums picks (by default argnums=0, the first argument alone): "
                      f"to attribute several, pass argnums={tuple(range(len(baselines)))} with one baseline each"
                      if n_leaves == 1 else "give one baseline per attributed tensor, in the inputs' structure")  # fmt: skip
            raise ValueError(
                f"{name} must have the same structure as the attributed inputs: it has {len(baselines)} parts for "
                f"{n_leaves} attributed input tensor(s). {advice}"
            ) from None
        raise ValueError(
            f"{name} must have the same structure as the attributed inputs (or be one number); "
            f"inputs have {n_leaves} tensor(s): {err}"
        ) from None


def baselines_tuple(selected: tuple, baselines, as_tuple: bool, *, name: str = "baselines") -> tuple:
    """`baselines_like` for a tuple of selected arguments: a tuple of trees like ``selected``.

    For an int ``argnums`` (``as_tuple`` False) ``baselines`` is a tree like that one argument.
    """
    base = baselines_like(selected if as_tuple else selected[0], baselines, name=name)
    return base if as_tuple else (base,)


def _modules(fn, deep: bool = False) -> list[nn.Module]:
    """Finds nn.Modules behind a model function (through xattr wrappers and functools.partial);
    ``deep``: also those a plain function closes over or reads as globals, through the functions
    it closes over or calls by global name (at most 64 objects looked at)."""
    while getattr(type(fn), "reaches_model_only", False):  # a target or a split: what its .model reaches (~1 us less)
        fn = fn.model
    if isinstance(fn, nn.Module):
        return [fn]
    found, seen, todo = [], set(), [fn]
    while todo and (not deep or len(seen) < 64):
        obj = todo.pop()
        if id(obj) in seen or obj is None:
            continue
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            found.append(obj)
            continue
        if isinstance(obj, functools.partial):
            todo.append(obj.func)
        todo.extend(getattr(obj, attr, None) for attr in ("model", "__wrapped__", "__self__"))
        if deep:
            todo.extend(_reached(obj))
    return found


def _reached(obj) -> list:
    """The modules and functions a function closes over, and those it reads as globals (a
    notebook's ``def f(x): return model(x)[:, 0]``)."""
    out = []
    for cell in getattr(obj, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, nn.Module) or callable(value):
            out.append(value)
    if isinstance(obj, types.FunctionType):
        out.extend(v for n in obj.__code__.co_names if isinstance(v := obj.__globals__.get(n), (nn.Module, types.FunctionType)))
    return out


_STOCHASTIC = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm, nn.AlphaDropout)


def _training_stochastic(model: nn.Module) -> list[str]:
    """Type names of the dropout/batch-norm modules in train mode. A plain walk over ``_modules``:
    ``model.modules()`` (prefixes, a memo set, nested generators) costs 3x as much, ~0.13 ms per
    call on a ResNet-50 on CPU, and this runs on every attribution call."""
    found, todo = [], [model]
    while todo:
        m = todo.pop()
        if m is None:  # a child registered as None
            continue
        if m.training and isinstance(m, _STOCHASTIC):
            found.append(type(m).__name__)
        todo.extend(m._modules.values())
    return found


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16 and bfloat16 (complex32: complex64), the dtype itself from float32 up:
    where sums, similarities, scores or classifier fits of half-precision values are computed."""
    return torch.promote_types(dtype, torch.float32)


def warn_if_training(fn) -> None:
    """Warns once per outermost attribution call (nested calls run inside its batch scope)."""
    if T.true_batch() is not None:
        return
    for model in _modules(fn):
        culprits = _training_stochastic(model)
        if culprits:
            warn(
                f"{type(model).__name__} is in train mode and contains {sorted(set(culprits))}: dropout "
                "makes attributions random, and batch-norm makes each example depend on the rest of "
                "the batch and updates its running statistics on every model call (xattr's included). "
                "Call model.eval() before attributing (xattr never changes the mode for you).",
                UserWarning,
            )  # NOTE: [Warnings at the user's line] in warn.py
            return
