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
