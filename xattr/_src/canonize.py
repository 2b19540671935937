"""Canonizers: equivalent rewrites of a model that LRP rules treat better.

NOTE: [Merging batch norm]
In eval mode a batch norm is an affine map per channel, ``y = s * (z - mean) + beta`` with
``s = gamma / sqrt(var + eps)``. Following a conv or linear layer ``z = W x + b`` it merges into
it: ``W' = s W`` (per output channel), ``b' = s (b - mean) + beta``. The merged model computes
the same function, but LRP rules such as gamma and alpha-beta now see the true weights of the
composite layer (Montavon et al. 2019; Guillemot et al. 2020), instead of propagating through a
separate elementwise layer.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def _fold(layer: nn.Module, bn: nn.Module) -> None:
    scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    layer.weight.mul_(scale.reshape((-1,) + (1,) * (layer.weight.ndim - 1)))
    new_bias = (bias - bn.running_mean) * scale + shift
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.copy_(new_bias)


def _check_eval(model: nn.Module) -> None:
    training = [n for n, m in model.named_modules() if isinstance(m, _NORMS) and m.training]
    if training:
        raise ValueError(f"merge_batch_norm needs batch norms in eval mode (call model.eval()); training: {training}")


def merge_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with each batch norm that directly follows a conv or linear merged into it.

    The original is untouched. The copy computes the same outputs (NOTE: [Merging batch norm]);
    module names are kept, merged batch norms become ``nn.Identity``. Uses torch.fx when the
    model traces; otherwise merges neighbours inside ``nn.Sequential`` containers.

    Example:
      >>> attr = xattr.lrp(xattr.target(xattr.merge_batch_norm(model), 3))(x)
    """
    _check_eval(model)
    model = copy.deepcopy(model)
    try:
        traced = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure falls back to Sequential neighbours
        _merge_sequential(model)
        return model
    modules = dict(traced.named_modules())
    uses: dict = {}
    for node in traced.graph.nodes:
        if node.op == "call_module":
            uses[node.target] = uses.get(node.target, 0) + 1
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], _NORMS):
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and isinstance(modules[prev.target], _LAYERS)):
            continue
        if len(prev.users) != 1 or uses[prev.target] != 1 or uses[node.target] != 1:
            continue
        _fold(modules[prev.target], modules[node.target])
        _replace(traced, node.target, nn.Identity().train(False))  # the batch norm's mode (eval)
    traced.recompile()
    return traced


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def _merge_sequential(model: nn.Module) -> None:
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            if isinstance(seq._modules[a], _LAYERS) and isinstance(seq._modules[b], _NORMS):
                _fold(seq._modules[a], seq._modules[b])
                seq._modules[b] = nn.Identity().train(False)
