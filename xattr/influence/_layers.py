"""Layers given as modules or names, resolved against the model: written once for TracIn,
influence functions and similarity influence (each keeps its own rules for lists, dicts and
repeats)."""

from __future__ import annotations

from torch import nn


def module_paths(model: nn.Module) -> dict[int, str]:
    """``id(module) -> its first path in the model`` (a reused module keeps its first name)."""
    paths: dict[int, str] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(m), name)
    return paths


def resolve_layer(model: nn.Module, layer, paths: dict[int, str]) -> tuple[str, nn.Module]:
    """``(path, module)`` for a layer given as a module of the model or a dotted name of one."""
    if isinstance(layer, str):
        try:
            return layer, model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"the model has no module named {layer!r}") from None
    if isinstance(layer, nn.Module):
        if id(layer) not in paths:
            raise ValueError(f"layer {type(layer).__name__} is not a module of the model")
        return paths[id(layer)], layer
    raise TypeError(f"layers must hold modules or module names, got {type(layer).__name__}")


TRAIN_MODE_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def refuse_train_mode(model: nn.Module) -> None:
    """Per-example gradients need a model whose output for one example depends on that example
    only: refuse batch-norm and dropout layers in train mode (else vmap fails deep inside torch
    on dropout's random draw)."""
    moving = [n for n, m in model.named_modules() if m.training and isinstance(m, TRAIN_MODE_LAYERS)]
    if moving:
        raise ValueError(
            f"layer {moving[0]!r} ({type(model.get_submodule(moving[0])).__name__}) is in train mode: its "
            "output depends on the batch or on chance; call model.eval() first (the model is never changed)"
        )
