"""DeepLift through Hugging Face mixture-of-experts blocks (Mixtral, Qwen2-MoE): dense dispatch.

NOTE: [Experts dispatched densely]
A Mixtral or Qwen2-MoE block routes each token to k experts by index: ``experts(hidden (T, H),
top_k_index (T, k), top_k_weights (T, k))`` runs expert e on ``hidden[token_idx]``, the tokens
that chose it, and ``index_add_``s the weighted results back. The T tokens are the paired rows
merged with the sequence (NOTE: [Rows merged with another dim]), but an example's token and its
reference's choose different experts, so inside an expert no row has its pair: its SiLU and its
products kept their gradient, and DeepLift's delta was 0.16 (Mixtral) and 0.32 (Qwen2-MoE) of
the change of the output. While a DeepLift method runs (`dense_experts`), every such block of the
model is computed densely instead: every expert on every token,

    out = sum_e D[:, e:e+1] * FFN_e(h),   FFN_e(h) = linear(act(g) * u, down_proj[e]),
    g, u = linear(h, gate_up_proj[e]).chunk(2, -1),   D = G(softmax(router_logits))

D the dense routing weights (0 off the top k), so every op is on whole rows and takes the
mapping's rules (Rescale or the exact rules at the softmax and SiLU, `Product` at ``act * up``
and ``D * FFN``), and G takes `TopKRouting` (NOTE: [DeepLift at top-k routing] in
moe_routing.py). The forward is the block's own: unselected experts add exact zeros, in the
order the block adds its experts, and D holds the router's own weights. Every call checks that:
where ``scatter(top_k_weights, top_k_index)`` differs from D (a router that is not softmax-top-k:
sigmoid scores, groups, a scaling factor) it is a ValueError naming the module, never a wrong
answer. The cost is E experts on every token instead of k.

How: a forward hook on the router keeps its ``router_logits`` output (an activation of the
graph), a pre-hook on the experts module computes the dense output and hands the module's own
forward an empty batch (zero tokens: it does no work, and no ruled op runs on rows that have no
pairs), and a forward hook returns the dense output in place of the module's. The hooks exist
only during the DeepLift call, are removed in a ``finally`` (errors too), act only in the thread
that made them (NOTE: [Layers of shared models in threads] in layers.py), and touch nothing else
of the model. The blocks are found once per model (`moe_blocks`, cached by root module, found
behind f as `rules` finds it, or in the closures and globals of a plain function); a model
without them pays one cache lookup per call. Where no module is found behind f at all (a model
reached some other way: an attribute of an object, a container), a global pre-hook looks for
blocks as their modules run (every module call
of the DeepLift call then passes a Python hook). A block counts where it has ``gate`` (``top_k``,
a 2-d ``weight`` (E, H)) and ``experts`` (3-d ``gate_up_proj`` (E, 2I, H) and ``down_proj``
(E, H, I), ``act_fn``, Hugging Face's default layout: no bias, not transposed, gate and up
concatenated); others keep their own forward (and their gap).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .checks import _modules, is_traced
from .moe_routing import ruled_routing

_BLOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # root module -> ((name, gate, experts), ...)


def _is_experts(m) -> bool:
    up, down = getattr(m, "gate_up_proj", None), getattr(m, "down_proj", None)
    if not (isinstance(up, torch.Tensor) and isinstance(down, torch.Tensor) and up.ndim == 3 and down.ndim == 3):
        return False
    e, two_i, h = up.shape
    if two_i % 2 or tuple(down.shape) != (e, h, two_i // 2) or not callable(getattr(m, "act_fn", None)):
        return False
    layout = (getattr(m, "has_gate", True), getattr(m, "has_bias", False), getattr(m, "is_transposed", False),
              getattr(m, "is_concatenated", True), getattr(m, "has_post_expert_norm", False))
    gate = getattr(type(m), "_apply_gate", None)
    return layout == (True, False, False, True, False) and (gate is None or getattr(gate, "__name__", None) == "_default_apply_gate")


def _block(m: nn.Module):
    """(gate, experts) of a mixture-of-experts block this module is, or None."""
    gate, experts = getattr(m, "gate", None), getattr(m, "experts", None)
    if not isinstance(gate, nn.Module) or not isinstance(experts, nn.Module) or not _is_experts(experts):
        return None
    weight, k = getattr(gate, "weight", None), getattr(gate, "top_k", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or not isinstance(k, int):
        return None
    e, _, h = experts.gate_up_proj.shape
    return (gate, experts) if tuple(weight.shape) == (e, h) and 0 < k <= e else None


def moe_blocks(root: nn.Module) -> tuple:
    """``((name, gate, experts), ...)``: the mixture-of-experts blocks of root (cached per root)."""
    found = _BLOCKS.get(root)
    if found is None:
        found = tuple((name, *parts) for name, m in root.named_modules() if (parts := _block(m)) is not None)
        _BLOCKS[root] = found
    return found


def _behind(f) -> list:
    """The modules behind f: as `rules` finds them, or those a plain function closes over or reads
    as globals (through other functions it closes over or calls by global name)."""
    return _modules(f) or _modules(f, deep=True)


class _Dense:
    """The hooks of one DeepLift call (NOTE: [Experts dispatched densely])."""

    def __init__(self):
        self.owner = threading.get_ident()
        self.handles: list = []
        self.hooked: set = set()
        self.checked: set = set()  # the modules `_discover` looked at
        self.logits: dict = {}
        self.outputs: dict = {}

    def add(self, name: str, gate: nn.Module, experts: nn.Module) -> None:
        if id(experts) in self.hooked:
            return
        self.hooked.add(id(experts))
        key = id(experts)

        def keep(module, args, out):
            if threading.get_ident() == self.owner:
                self.logits[key] = out[0] if isinstance(out, (tuple, list)) else out

        def before(module, args, kwargs):
            if threading.get_ident() != self.owner:
                return None
            hidden, index, weights, call = _bound(module, args, kwargs)
            logits = self.logits.pop(key, None)
            if logits is None:
                raise ValueError(f"DeepLift's dense experts: {name or type(module).__name__} ({type(module).__name__}) ran "
                                 f"without its router ({type(gate).__name__}) before it; it cannot be computed densely")
            self.outputs[key] = dense_output(module, gate, hidden, logits, index, weights, name)
            return call(hidden[:0], index[:0], weights[:0])  # its own forward: zero tokens, no work

        def after(module, args, out):
            if threading.get_ident() == self.owner and key in self.outputs:
                return self.outputs.pop(key)
            return None

        self.handles += [gate.register_forward_hook(keep), experts.register_forward_pre_hook(before, with_kwargs=True),
                         experts.register_forward_hook(after)]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.logits.clear()
        self.outputs.clear()


@functools.lru_cache(maxsize=None)
def _names(cls) -> tuple:
    return tuple(inspect.signature(cls.forward).parameters)[1:]


def _bound(module, args: tuple, kwargs: dict):
    """(hidden_states, top_k_index, top_k_weights, call) of an experts call: ``call(h, i, w)`` is
    the pre-hook's ``(args, kwargs)`` with those three replaced."""
    names = _names(type(module))[:3]
    given = dict(zip(names, args), **kwargs)
    if len(names) < 3 or any(a not in given for a in names):
        raise ValueError(f"DeepLift's dense experts: {type(module).__name__} was called without (hidden_states, "
                         "top_k_index, top_k_weights)")

    def call(*three):
        new = dict(zip(names, three))
        return tuple(new.get(a, v) for a, v in zip(names, args)) + args[3:], {a: new.get(a, v) for a, v in kwargs.items()}

    return given[names[0]], given[names[1]], given[names[2]], call


def dense_output(experts: nn.Module, gate: nn.Module, hidden: torch.Tensor, logits: torch.Tensor, index: torch.Tensor,
                 weights: torch.Tensor, name: str = "") -> torch.Tensor:
    """The experts' output with every expert on every token, weighted by the dense routing weights
    of the router's logits (NOTE: [Experts dispatched densely]); checked against the router's own
    ``(top_k_index, top_k_weights)``."""
    k = gate.top_k
    normalize = bool(getattr(gate, "norm_topk_prob", True))
    p = torch.softmax(logits, dim=-1, dtype=torch.float32)  # both routers: the softmax in float32
    routing = ruled_routing(p, k, normalize)
    _check(routing, index, weights, k, name, gate, experts)
    routing = routing.to(hidden.dtype)
    out = None
    for e in range(experts.gate_up_proj.shape[0]):
        g, u = F.linear(hidden, experts.gate_up_proj[e]).chunk(2, dim=-1)
        y = F.linear(experts.act_fn(g) * u, experts.down_proj[e])
        term = y * routing[:, e : e + 1]
        out = term if out is None else out + term
    return out


def _check(routing: torch.Tensor, index, weights, k: int, name: str, gate, experts) -> None:
    """Refuses a router whose own top-k weights are not ``routing`` (NOTE: [Experts dispatched densely])."""
    where = f"{name or type(experts).__name__} (router {type(gate).__name__})"
    if not (isinstance(index, torch.Tensor) and isinstance(weights, torch.Tensor)) or tuple(index.shape) != (routing.shape[0], k):
        got = tuple(index.shape) if isinstance(index, torch.Tensor) else type(index).__name__
        raise ValueError(f"DeepLift's dense experts: {where} gave top_k_index of shape {got}, not ({routing.shape[0]}, {k}): "
                         "not a softmax-top-k router; DeepLift cannot compute this block densely")
    if is_traced(routing) or is_traced(weights):  # no data-dependent check under transforms
        return
    with torch.no_grad():
        theirs = torch.zeros(routing.shape, dtype=torch.float64, device=routing.device)
        theirs.scatter_(-1, index.long(), weights.detach().to(torch.float64))
        gap = (theirs - routing.detach().to(torch.float64)).abs().max().item() if theirs.numel() else 0.0
    tol = 64 * max(torch.finfo(routing.dtype).eps, torch.finfo(weights.dtype).eps if weights.is_floating_point() else 0.0)
    if not gap <= tol:
        raise ValueError(
            f"DeepLift's dense experts: {where} routes by other weights than softmax and top-{k} of its logits"
            f"{' (renormalised)' if getattr(gate, 'norm_topk_prob', True) else ''} (they differ by {gap:.3g}): a router of "
            "another kind, whose block DeepLift cannot compute densely; its attributions would be wrong")


@contextlib.contextmanager
def dense_experts(f):
    """While it is open, the mixture-of-experts blocks behind f run densely (NOTE: [Experts
    dispatched densely]); nothing is done where f's model has none."""
    roots = _behind(f)
    blocks = [b for root in roots for b in moe_blocks(root)]
    if roots and not blocks:
        yield
        return
    dense = _Dense()
    try:
        for name, gate, experts in blocks:
            dense.add(name, gate, experts)
        if not roots:  # a function whose model is not found: look at each module as it runs
            dense.handles.append(nn.modules.module.register_module_forward_pre_hook(functools.partial(_discover, dense)))
        yield
    finally:
        dense.remove()


def _discover(dense: _Dense, module, args):
    if threading.get_ident() == dense.owner and id(module) not in dense.checked:
        dense.checked.add(id(module))
        parts = _block(module)
        if parts is not None:
            dense.add(type(module).__name__, *parts)
