"""Canonizers: equivalent rewrites of a model that LRP rules treat better.

NOTE: [Merging batch norm]
In eval mode a batch norm is an affine map per channel, ``y = s * (z - mean) + beta`` with
``s = gamma / sqrt(var + eps)``. Following a conv or linear layer ``z = W x + b`` it merges into
it: ``W' = s W`` (per output channel), ``b' = s (b - mean) + beta``. The merged model computes
the same function, but LRP rules such as gamma and alpha-beta now see the true weights of the
composite layer (Montavon et al. 2019; Guillemot et al. 2020), instead of propagating through a
separate elementwise layer.

A linear layer acts on the last dim and a batch norm on dim 1: the two are the same dim only
for activations of shape (B, F). A merged linear (`FoldedLinear`, still an ``nn.Linear``) keeps
its original weights and the batch norm for other shapes, where it computes them unmerged. A
batch norm without running statistics (``track_running_stats=False``) normalises by the batch's
own statistics even in eval mode, is not affine, and is never merged.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import fx, nn

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = nn.modules.batchnorm._BatchNorm


class FoldedLinear(nn.Linear):
    """An ``nn.Linear`` with a following BatchNorm1d merged into it, for inputs of shape (B, F);
    other shapes run the original weights, then the batch norm's affine map on dim 1 (NOTE:
    [Merging batch norm])."""

    def __init__(self, linear: nn.Linear, bn: nn.Module):
        factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        super().__init__(linear.in_features, linear.out_features, bias=True, **factory)
        self.train(linear.training)
        scale, shift = _affine(bn)
        with torch.no_grad():
            self.register_buffer("unfolded_weight", linear.weight.detach().clone())
            self.register_buffer("unfolded_bias", None if linear.bias is None else linear.bias.detach().clone())
            self.register_buffer("norm_scale", scale.clone())
            self.register_buffer("norm_shift", (shift - bn.running_mean * scale).clone())
            self.weight.copy_(linear.weight)
            self.bias.copy_(linear.bias if linear.bias is not None else torch.zeros_like(self.bias))
        _fold(self, bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            return super().forward(x)
        y = F.linear(x, self.unfolded_weight, self.unfolded_bias)
        channel = (-1,) + (1,) * (y.ndim - 2)  # the batch norm's dim 1
        return y * self.norm_scale.view(channel) + self.norm_shift.view(channel)


def _affine(bn: nn.Module):
    """(scale, beta) of an eval-mode batch norm: ``y = scale * (z - mean) + beta``."""
    scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias if bn.affine else torch.zeros_like(bn.running_mean)


def _mergeable(layer: nn.Module, bn: nn.Module) -> bool:
    return isinstance(layer, _LAYERS) and isinstance(bn, _NORMS) and bn.running_var is not None


def _merged(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """The layer to put in place of ``layer``, with ``bn`` merged (``layer`` may be changed)."""
    if isinstance(layer, nn.Linear):
        return FoldedLinear(layer, bn)
    _fold(layer, bn)
    return layer


@torch.no_grad()
def _fold(layer: nn.Module, bn: nn.Module) -> None:
    scale, shift = _affine(bn)
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
    module names are kept, merged batch norms become ``nn.Identity``, merged linears
    `FoldedLinear`s (an ``nn.Linear``); batch norms without running statistics stay. Uses torch.fx when the
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
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and _mergeable(modules[prev.target], modules[node.target])):
            continue
        if len(prev.users) != 1 or uses[prev.target] != 1 or uses[node.target] != 1:
            continue
        _replace(traced, prev.target, _merged(modules[prev.target], modules[node.target]))
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
            if _mergeable(seq._modules[a], seq._modules[b]):
                seq._modules[a] = _merged(seq._modules[a], seq._modules[b])
                seq._modules[b] = nn.Identity().train(False)
