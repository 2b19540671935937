"""Per-example loss gradients over named parameters: the one engine of xattr.influence.

TracIn (full and self-influence), the influence functions and the Captum classes built on them
all take their per-example gradients from `per_example_grads`, their parameters from
`parameter_names` and their batch losses from `summed_loss`.

NOTE: [Per-example losses]
Per-example gradients come from ``vmap(grad(loss))`` where ``loss`` runs the model on ONE
example as a batch of one, ``loss_fn(model(x[None]), y[None])``, summed to a scalar. On a batch
of one, a loss with reduction "sum", "mean" or "none" (summed) is the same number, the
example's own loss, so no reduction needs to be known or corrected for (Captum multiplies "mean"
gradients by the batch size, and assumes "sum" for a loss without a ``reduction`` attribute;
both give the same per-example gradient as here for a loss that is a sum or mean over examples).
Where the reduction is known (``reduction=`` given: the influence functions read the loss's
``.reduction`` attribute, since their Hessian takes the loss of a whole batch) `summed_loss` also
checks that the loss returned what its reduction says. With ``loss_fn=None`` the "loss" is the
sum of the model's outputs for the example, as in Captum. The model must run under
``torch.func.vmap``: eval-mode batch norm, no dropout in train mode, no ``.item()`` on
activations.

NOTE: [Rows per vectorised call]
One ``vmap(grad)`` call holds a row of gradients per example: ``row_bytes`` = the bytes of the
chosen parameters. ``chunk_size`` (rows) and ``max_bytes`` (a budget: ``max_bytes //
row_bytes`` rows, at least one) both bound the rows of one call; the examples go through in
consecutive chunks of the smaller, all at once when neither is given. Chunking changes no
number: each example's gradient is computed on its own.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .._src.progress import progress
from ._layers import module_paths, resolve_layer

REDUCTIONS = ("none", "sum", "mean")


def loss_reduction(loss_fn: Callable) -> str:
    """The ``.reduction`` attribute of ``loss_fn`` ("none" without one; KL divergence's
    "batchmean" is a mean over examples)."""
    red = getattr(loss_fn, "reduction", "none")
    red = "mean" if red == "batchmean" else red
    if red not in REDUCTIONS:
        raise ValueError(f"loss_fn.reduction must be 'none', 'sum' or 'mean', got {red!r}")
    return red


def summed_loss(loss_fn: Callable | None, out, labels: torch.Tensor, reduction: str | None) -> torch.Tensor:
    """The sum of the per-example losses of a batch: ``out.sum()`` for ``loss_fn=None``; with
    ``reduction=None`` whatever ``loss_fn`` returns, summed (right for a batch of one); else
    read as that reduction, checked. See NOTE: [Per-example losses]."""
    if loss_fn is None:
        return out.sum()
    loss = loss_fn(out, labels)
    if reduction is None:
        return loss.sum()
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn must return a tensor, got {type(loss).__name__}")
    n = labels.shape[0]
    if reduction == "none":
        if loss.ndim == 0 and n > 1:
            raise ValueError(
                f"loss_fn returned one number for a batch of {n}: return per-example losses "
                "(reduction='none'), or give loss_fn a .reduction attribute 'sum' or 'mean'"
            )
        return loss.sum()
    if loss.ndim != 0:
        raise ValueError(f"loss_fn.reduction is {reduction!r} but it returned shape {tuple(loss.shape)}")
    return loss * n if reduction == "mean" else loss


def example_loss(model: nn.Module, loss_fn: Callable | None, reduction: str | None = None) -> Callable:
    """``f(state, inputs, label) -> scalar``: the loss of ONE example (no batch dim), run as a
    batch of one through ``functional_call(model, state, ...)``."""
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable or None, got {type(loss_fn).__name__}")

    def f(state, inputs, label):
        out = functional_call(model, state, tuple(x.unsqueeze(0) for x in inputs))
        return summed_loss(loss_fn, out, label.unsqueeze(0), reduction)

    return f


def parameter_names(model: nn.Module, layers, *, trainable_only: bool = True) -> list[str]:
    """Names (as ``model.named_parameters()`` gives them, a tied parameter once) of the
    parameters to differentiate: with ``layers=None`` every parameter (that requires grad, with
    ``trainable_only``), else every parameter of the given modules (modules or their names),
    whether it requires grad or not, in order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    named = list(model.named_parameters())
    if layers is None:
        names = [n for n, p in named if p.requires_grad or not trainable_only]
        if not names:
            raise ValueError("the model has no parameter that requires grad: name the layers to use with layers=")
        return names
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError("layers must be a module, a module name, or a non-empty list of them")
    by_id = {id(p): n for n, p in named}
    paths = module_paths(model)
    chosen: dict[str, None] = {}
    for layer in layers:
        _, layer = resolve_layer(model, layer, paths)
        ps = list(layer.parameters())
        if not ps:
            raise ValueError(f"layer {type(layer).__name__} has no parameters: choose layers with weights")
        for p in ps:
            chosen[by_id[id(p)]] = None
    return list(chosen)


def positive_int(value, name: str, allow_none: bool = True):
    """``value`` when a positive int (or None, with ``allow_none``); else a ValueError naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")
    return value


def check_batch(batch, what: str) -> tuple:
    """``batch`` as a tuple ``(x_1, ..., x_m, labels)`` of tensors with the same number of rows
    (at least one) and finite floating-point values, or a clear error naming ``what``."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(
            f"each batch of {what} must be a tuple (x_1, ..., x_m, labels) of tensors with at least one input "
            f"and the labels last, got {type(batch).__name__}" + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    if not all(isinstance(t, torch.Tensor) and t.ndim >= 1 for t in batch):
        raise TypeError(f"each element of a batch of {what} must be a tensor with a batch dim")
    n = batch[0].shape[0]
    if any(t.shape[0] != n for t in batch):
        raise ValueError(f"the tensors of a batch of {what} need the same non-zero number of rows, their first (batch) dim: "
                         f"{[t.shape[0] for t in batch]}")  # fmt: skip
    if n == 0:
        raise ValueError(f"a batch of {what} is empty (0 examples): give the same non-zero number of rows in each tensor")
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in batch):
        raise ValueError(f"a batch of {what} holds NaN or infinite values: their gradients, and so every score, would be NaN")
    return tuple(batch)


def row_bytes(tensors: Mapping[str, torch.Tensor], names: list[str]) -> int:
    """Bytes of one example's gradient of the parameters ``names``."""
    return sum(tensors[n].numel() * tensors[n].element_size() for n in names)


def rows_within(tensors: Mapping[str, torch.Tensor], names: list[str], max_bytes: int) -> int:
    """How many examples' gradients of ``names`` fit in ``max_bytes`` (at least one)."""
    return max(1, max_bytes // max(row_bytes(tensors, names), 1))


def row_chunks(n: int, step: int | None) -> list[tuple[int, int]]:
    """``[(lo, hi), ...]``: rows ``0 .. n`` in consecutive chunks of ``step`` (all for None)."""
    step = step or max(n, 1)
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]


def per_example_grads(model: nn.Module, state: Mapping[str, torch.Tensor], names: list[str], loss_fn: Callable | None, batch, *,
                      reduction: str | None = None, chunk_size: int | None = None, max_bytes: int | None = None,
                      flat: bool = True, show_progress: bool = False, desc: str = "gradients"):  # fmt: skip
    """The loss gradient of each example of ``batch`` (``(x_1, ..., x_m, labels)``) w.r.t. the
    parameters ``names`` at the values ``state`` (parameters and buffers by name; one not in
    it is the model's own): ``(b, P)``, flattened and concatenated in the order of ``names``,
    or with ``flat=False`` ``{name: (b, *shape)}``. Detached. See NOTE: [Per-example losses]
    and NOTE: [Rows per vectorised call]; runs under an outer ``vmap`` over ``state``."""
    f = example_loss(model, loss_fn, reduction)
    trained = {n: state[n] for n in names}
    canonical = {id(p): n for n, p in model.named_parameters()}
    aliases = {n for n, p in model.named_parameters(remove_duplicate=False) if canonical[id(p)] != n}
    held = {k: v for k, v in state.items() if k not in aliases}  # a tied alias follows its first name

    def one(p, inputs, label):
        return f({**held, **p}, inputs, label)

    per_row = vmap(grad(one), in_dims=(None, 0, 0))
    *inputs, labels = batch
    step = chunk_size
    if max_bytes is not None:
        step = min(step or labels.shape[0], rows_within(state, names, max_bytes))
    parts = []
    for lo, hi in progress(show_progress, row_chunks(labels.shape[0], step), desc=desc, unit="chunk"):
        g = per_row(trained, tuple(x[lo:hi] for x in inputs), labels[lo:hi])
        parts.append(torch.cat([g[n].reshape(hi - lo, -1) for n in names], dim=1).detach() if flat else g)
    if flat:
        return parts[0] if len(parts) == 1 else torch.cat(parts)
    return {n: torch.cat([g[n] for g in parts]).detach() for n in names}


def squared_norms(grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``(b,)``: each example's squared gradient norm from ``{name: (b, *shape)}``, without
    concatenating the gradients."""
    return sum(g.reshape(g.shape[0], -1).square().sum(1) for g in grads.values())
