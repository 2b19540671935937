"""Captum's ``ModelInputWrapper``: a model whose inputs pass through identity modules, so that the
layer classes can attribute to a raw input and to inner layers in one call
(``LayerIntegratedGradients(wrapped, [wrapped.input_maps["image"], wrapped.module.embedding])``,
as Captum's VQA tutorial does).

The functional API needs no wrapper where the input itself is attributed: ``xattr.at_layer``
splits at modules, and a raw input with inner layers is ``integrated_gradients`` over the input
beside ``layer_integrated_gradients`` at the layers; the wrapper is for code written Captum's way.
"""

from __future__ import annotations

import inspect

from torch import nn


class InputIdentity(nn.Module):
    """Returns its input: the module a layer method hooks to reach the raw input ``input_name``."""

    def __init__(self, input_name: str) -> None:
        super().__init__()
        self.input_name = input_name

    def forward(self, x):
        return x


class ModelInputWrapper(nn.Module):
    """``ModelInputWrapper(model)``: ``model`` with each of its forward's named inputs sent through
    ``self.input_maps[name]`` (an `InputIdentity`) before the call; ``self.module`` is the model.
    Positional arguments are matched to the forward's parameters in order, keyword arguments by
    name; a forward taking ``*args`` has no names for them and is refused."""

    def __init__(self, module_to_wrap: nn.Module) -> None:
        super().__init__()
        self.module = module_to_wrap
        params = list(inspect.signature(module_to_wrap.forward).parameters.values())
        if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
            raise TypeError(
                f"ModelInputWrapper needs named inputs; {type(module_to_wrap).__name__}.forward takes *args. Wrap a "
                "forward with one parameter per input"
            )
        self.arg_name_list = [p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
        self.input_maps = nn.ModuleDict({name: InputIdentity(name) for name in self.arg_name_list})

    def forward(self, *args, **kwargs):
        if len(args) > len(self.arg_name_list):
            raise TypeError(f"{type(self.module).__name__}.forward takes {len(self.arg_name_list)} inputs, got {len(args)}")
        args = tuple(self.input_maps[name](a) for name, a in zip(self.arg_name_list, args))
        kwargs = {k: self.input_maps[k](v) if k in self.input_maps else v for k, v in kwargs.items()}
        return self.module(*args, **kwargs)
