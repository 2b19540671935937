"""A module of a model by its dotted name, with the near names in the error where there is none."""

from __future__ import annotations

import difflib

from torch import nn


def near_names(model: nn.Module, name: str, n: int = 3) -> str:
    """`` (did you mean 'a', 'b'?)`` for the model's module names closest to ``name``, or ``""``."""
    names = [m for m, _ in model.named_modules(remove_duplicate=False) if m]
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.6)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def submodule(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)``, raising a ValueError that names the closest modules."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{type(model).__name__} has no module named {name!r}{near_names(model, name)}") from None
