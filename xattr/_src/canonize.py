"""Canonizers: equivalent rewrites of a model that LRP rules treat better.

NOTE: [Merging batch norm]
In eval mode a batch norm is an affine map per channel, ``y = s * (z - mean) + beta`` with
``s = gamma / sqrt(var + eps)``. Following a conv or linear layer ``z = W x + b`` it merges into
it: ``W' = s W`` (per output channel), ``b' = s (b - mean) + beta``. The merged model computes
the same function, but LRP rules such as gamma and alpha-beta now see the true weights of the
composite layer (Montavon et al. 2019; Guillemot et al. 2020), instead of propagating through a
separate elementwise layer.

A merge is safe only where the layer's output goes to the batch norm alone and each of the two
modules runs exactly once there: a layer also called elsewhere (``self.seq[0](x)`` beside
``self.seq(x)``), or whose output also feeds a skip, would compute the batch norm there too. So
pairs are taken from a torch.fx graph of the forward, which lists every module call and who
reads its output (`_pairs`): one call each, the layer's only reader the batch norm, and neither
module's parameters read by other code. A model with data-dependent control flow (``if
x.sum() > 0``) has no single graph; it is traced once per path through its conditions, each
condition answered True or False in turn (`_every_path`, at most 64 paths), and a pair is
merged only where every path calls both modules as a pair or neither. A path that raises right
after a condition was answered, nothing traced in between (``assert cond``, ``if cond: raise``:
answered so, the model would raise too), is taken as one the model cannot run, and skipped: the
pairs are checked on the paths that trace. Any other error (a Proxy where a value is needed:
loops over tensor values, numpy, ``isinstance`` checks on shapes) means fx cannot trace that
code, and is not skipped, as that path may run for real and call a layer without its batch
norm. The merged modules are then swapped into a copy of the model, whose forward
(and its control flow) stays. A model that cannot be traced even so (code fx cannot trace on
some path, no path that traces, too many paths) is returned unmerged, with a warning. What fx
cannot see cannot be checked: hooks, and modules reached through globals; conditions on Python
values (not tensors) are taken as they are when traced.

Tracing runs the forward's Python code, and a forward may change the module's state (a call
counter, a cache it fills on the first call, perhaps with an fx Proxy). So each trace runs on a
throwaway deep copy of the model, and the merged modules go into a copy never traced (module
names are the same in every copy), of the model's own class with its own forward. Never the
GraphModule of a trace, even where its forward writes nothing: fx inlines every module it does
not treat as a leaf (a residual block, a Sequential), so in a GraphModule those modules never
run, and a composite key on them (``{BasicBlock: Gamma()}``, ``"layer1"``), their hooks and
``at_layer`` at them would silently do nothing.

A linear layer acts on the last dim and a batch norm on dim 1: the two are the same dim only
for activations of shape (B, F). A merged linear (`FoldedLinear`, still an ``nn.Linear``) keeps
its original weights and the batch norm for other shapes, where it computes them unmerged. A
batch norm without running statistics (``track_running_stats=False``) normalises by the batch's
own statistics even in eval mode, is not affine, and is never merged.

A weight computed from other tensors on every access (``torch.nn.utils.parametrizations``'
weight_norm, spectral_norm, orthogonal, any ``parametrize.register_parametrization``; the old
hook-style ``torch.nn.utils.weight_norm``/``spectral_norm`` and ``prune``, which recompute it
before every call) cannot be scaled in place: the scaling would be lost at the next access while
the folded bias stays. So both modules of a pair are first made plain (`make_plain`): each such
tensor becomes an ordinary parameter holding its current value (spectral norm's without another
power-iteration step, as in eval mode), then folded. A merged layer computes what the original
computes in eval mode; it no longer renormalises if trained further. A weight that is neither a
parameter nor one of these (a user's own pre-hook writing it) is not merged. The old hook-style
ones keep their computed weight as a non-leaf tensor attribute, which ``copy.deepcopy`` refuses:
`copy_model` hands the copy a detached clone, which the copy's hook recomputes before each call.
"""

from __future__ import annotations

import collections
import copy

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize, prune
from torch.nn.utils.spectral_norm import SpectralNorm as _HookSpectralNorm
from torch.nn.utils.weight_norm import WeightNorm as _HookWeightNorm

from .warn import warn

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


def hook_reparametrized(module: nn.Module) -> dict:
    """{tensor name: hook} of the old hook-style reparametrizations on ``module`` (weight_norm,
    spectral_norm, pruning), which recompute the tensor before every call."""
    found = {}
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, (_HookWeightNorm, _HookSpectralNorm)):
            found[hook.name] = hook
        elif isinstance(hook, prune.BasePruningMethod):
            found[hook._tensor_name] = hook
    return found


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also of a model with old hook-style reparametrizations, whose
    computed tensor (a non-leaf attribute) deepcopy refuses: the copy gets a detached clone of
    it, which its own hook recomputes before each call (NOTE: [Merging batch norm])."""
    memo = {}
    for module in model.modules():
        for name in hook_reparametrized(module):
            t = module.__dict__.get(name)
            if isinstance(t, torch.Tensor) and not t.is_leaf:
                memo[id(t)] = t.detach().clone()
    return copy.deepcopy(model, memo)


def _foldable(module: nn.Module) -> bool:
    """Whether every weight and bias of ``module`` is a parameter (or None), parametrized, or
    recomputed by a known hook: what `make_plain` can turn into a parameter."""
    hooked = hook_reparametrized(module)
    return all(name in module._parameters or parametrize.is_parametrized(module, name) or name in hooked
               for name in ("weight", "bias") if hasattr(module, name))  # fmt: skip


@torch.no_grad()
def make_plain(module: nn.Module) -> None:
    """Each parametrized or hook-recomputed tensor of ``module`` (a copy) made an ordinary
    parameter (a buffer, where its originals are) holding its current value (NOTE: [Merging
    batch norm]).

    Not by ``parametrize.remove_parametrizations``: it deletes the tensor's property from the
    module's class, which a deep copy shares with the original, so the original would lose its
    weight (torch 2.x). The copy is given back the class it had before it was parametrized."""
    if parametrize.is_parametrized(module):
        values = {}
        for name, plist in module.parametrizations.items():
            plist.eval()  # spectral norm: no power-iteration step
            originals = list(plist.parameters(recurse=False))
            grad = any(t.requires_grad for t in originals)
            values[name] = (getattr(module, name).detach().clone(), bool(originals), grad)
        module.__class__ = type(module).__bases__[0]  # as remove_parametrizations restores it
        del module._modules["parametrizations"]
        for name, (value, parameter, grad) in values.items():
            if parameter:
                module.register_parameter(name, nn.Parameter(value, requires_grad=grad))
            else:
                module.register_buffer(name, value)
    for name, hook in hook_reparametrized(module).items():
        if isinstance(hook, _HookWeightNorm):
            torch.nn.utils.remove_weight_norm(module, name)
        elif isinstance(hook, _HookSpectralNorm):
            torch.nn.utils.remove_spectral_norm(module, name)
        else:
            prune.remove(module, name)


def _mergeable(layer: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(layer, _LAYERS) and isinstance(bn, _NORMS) and bn.running_var is not None
            and _foldable(layer) and _foldable(bn))  # fmt: skip


def _merged(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """The layer to put in place of ``layer``, with ``bn`` merged (``layer`` and ``bn``, from a
    copy, may be changed)."""
    make_plain(layer)
    make_plain(bn)
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
    `FoldedLinear`s (an ``nn.Linear``); batch norms without running statistics stay, and so do
    pairs whose layer is also called elsewhere or whose output is also read elsewhere. Uses a
    torch.fx graph of the model, or one per path through its data-dependent conditions (a path
    that raises when traced, an ``assert``, is skipped), each traced on a throwaway copy: the copy
    returned was never traced, so a forward that changes its own state starts as the model's does,
    and is of the model's class, with its forward: every module in it still runs (composite keys on
    a block, ``at_layer`` at it).
    A model fx cannot trace so comes back unmerged, with a warning. A parametrized weight
    (weight_norm, spectral_norm, orthogonal; old hook-style weight_norm, spectral_norm, pruning)
    of a merged pair becomes a plain parameter holding its current value, then merged.

    Example:
      >>> attr = xattr.lrp(xattr.target(xattr.merge_batch_norm(model), 3))(x)
    """
    _check_eval(model)
    try:
        traced = fx.symbolic_trace(copy_model(model))  # tracing runs the forward, which may change its state
    except Exception:  # noqa: BLE001 - any tracing failure: trace each path through the conditions
        return _merge_along_paths(model)
    # never the GraphModule: it inlines every module it does not treat as a leaf (a residual block),
    # whose keys in a composite (by name or type) and hooks (at_layer) then never apply
    return _merge_into(copy_model(model), [traced.graph])


def _merge_along_paths(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the pairs merged that are safe on every path through its forward."""
    graphs, error = _every_path(model)
    if graphs is None:
        warn(
            f"merge_batch_norm: torch.fx cannot trace {type(model).__name__} ({error}), not even one path through "
            "its conditions at a time, so no batch norm was merged (the copy computes as the model does)",
        )
        return copy_model(model)
    return _merge_into(copy_model(model), graphs)


def _merge_into(model: nn.Module, graphs: list) -> nn.Module:
    """Merges, in ``model`` itself (never traced), the pairs safe on every graph (traced from copies)."""
    modules = dict(model.named_modules())
    for layer, norm in _safe_pairs(graphs, modules):
        _replace(model, layer, _merged(modules[layer], modules[norm]))
        _replace(model, norm, nn.Identity().train(False))
    return model


class _PathTracer(fx.Tracer):
    """Traces one path through the forward's data-dependent conditions: each is answered from
    ``choices`` in order, then False; ``made`` records the answers given."""

    def __init__(self, choices: list):
        super().__init__()
        self.choices, self.made = choices, []
        self.nodes_when_answered = -1

    def to_bool(self, obj) -> bool:
        choice = self.choices[len(self.made)] if len(self.made) < len(self.choices) else False
        self.made.append(choice)
        self.nodes_when_answered = len(self.graph.nodes)
        return choice

    def cannot_run(self, error: Exception) -> bool:
        """Whether ``error`` ends a path the model itself cannot take: raised right after a
        condition this tracer answered, nothing traced in between (``assert cond``, ``if cond:
        raise``). Anything else (numpy or ``isinstance`` handed a Proxy, fx's own errors) is code
        fx cannot trace, which real inputs may well run."""
        return (
            not isinstance(error, fx.proxy.TraceError)
            and self.nodes_when_answered == len(self.graph.nodes)
        )


_PATHS = 64  # most paths traced: a forward with more conditions is left unmerged


def _every_path(model: nn.Module):
    """(the fx graph of every path through the forward's conditions that traces, None), or
    (None, why not). Each path is traced on a throwaway deep copy of ``model``.

    Depth first: after a path, the last condition answered False is answered True next, those
    after it dropped, until every condition on every path has been answered both ways. A path
    that raises is one the model cannot run, and skipped, unless fx could not trace its code
    (NOTE: [Merging batch norm])."""
    graphs, choices, error = [], [], None
    for _ in range(_PATHS):
        tracer = _PathTracer(choices)
        try:
            graphs.append(tracer.trace(copy_model(model)))
        except Exception as e:  # noqa: BLE001 - a path the model cannot run, or code fx cannot trace
            error = f"{type(e).__name__}: {e}".split("\n")[0][:200]
            if not tracer.cannot_run(e):
                return None, error
        made = tracer.made
        while made and made[-1]:
            made.pop()
        if not made:
            return (graphs, None) if graphs else (None, f"every path raises, {error}")
        choices = made[:-1] + [True]
    return None, f"more than {_PATHS} paths through its conditions"


def _pairs(graph: fx.Graph, modules: dict) -> tuple[dict, collections.Counter, set]:
    """In one graph: {layer: batch norm} for the mergeable pairs, the calls per module, and the
    modules whose parameters or buffers the graph reads directly (get_attr)."""
    uses = collections.Counter(node.target for node in graph.nodes if node.op == "call_module")
    read = {node.target.rpartition(".")[0] for node in graph.nodes if node.op == "get_attr"}
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _NORMS) or not node.args:
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and _mergeable(modules.get(prev.target), modules[node.target])):
            continue
        if len(prev.users) == 1 and uses[prev.target] == 1 and uses[node.target] == 1:
            pairs[prev.target] = node.target
    return pairs, uses, read


def _safe_pairs(graphs: list, modules: dict) -> list:
    """The (layer, batch norm) pairs to merge: on every graph the two run as a pair or not at all,
    and no graph reads their tensors directly (NOTE: [Merging batch norm])."""
    found = [_pairs(graph, modules) for graph in graphs]
    candidates = {pair for pairs, _, _ in found for pair in pairs.items()}
    safe = []
    for layer, norm in sorted(candidates):
        if all((pairs.get(layer) == norm or uses[layer] == uses[norm] == 0) and not {layer, norm} & read
               for pairs, uses, read in found):  # fmt: skip
            safe.append((layer, norm))
    return safe


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)
