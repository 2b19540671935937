"""DeepLift through Hugging Face mixture-of-experts blocks (Mixtral, Qwen2/3-MoE, DeepSeek, GPT-OSS...): dense dispatch.

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
    g, u = linear(h, gate_up_proj[e]).chunk(2, -1),   D = G(scores(router_logits))

D the dense routing weights (0 off the top k), so every op is on whole rows and takes the
mapping's rules (Rescale or the exact rules at the softmax and SiLU, `Product` at ``act * up``
and ``D * FFN``), and G takes `TopKRouting` (NOTE: [DeepLift at top-k routing] in
moe_routing.py; the scores, softmax or sigmoid, and G's kind: NOTE: [Routers of other kinds] in
moe_routers.py). FFN_e is `expert`: Hugging Face's declared experts layouts (``has_gate``,
``has_bias``, ``is_transposed``; the module's own ``_apply_gate``, GPT-OSS's clamped GLU
included), as its experts implementations compute them. The forward is the block's own: unselected experts add exact zeros, in the
order the block adds its experts, and D holds the router's own weights. Every call checks that:
where ``scatter(top_k_weights, top_k_index)`` differs from D (a router of a kind its attributes
do not say: PhiMoE's sparsemixer, a scale without ``routed_scaling_factor``) it is a ValueError
naming the module, never a wrong answer. The cost is E experts on every token instead of k.

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
of the DeepLift call then passes a Python hook). A block counts where it has a router, ``gate``
or ``router`` (``top_k``, a 2-d ``weight`` (E, H), or ``wg.weight``), called with the tokens and
returning ``(router_logits, top_k_weights, top_k_index)``, and ``experts`` called with
``(hidden, top_k_index, top_k_weights)`` in one of Hugging Face's layouts (3-d ``gate_up_proj`` (E,
2I, H), or (E, H, 2I) transposed, ``down_proj`` to match, optional biases, no post-expert norm),
or where it is one of Llama 4's, DBRX's or JetMoE's blocks, or JetMoE's attention, laid out their
own way (`_layout`: NOTE: [Experts of their own layouts] in moe_layouts.py, NOTE: [A mixture of
attention heads, densely] in moe_attention.py, with hooks of their own, `_Dense._add_layout`);
others keep their own forward.
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

from .checks import _modules
from .moe_attention import bound as attention_bound
from .moe_attention import find_moa, moa_dense
from .moe_layouts import find_layout, layout_dense
from .moe_routers import check_routing, router_routing
from .moe_routing import ruled_routing

_BLOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # root module -> ((name, gate, experts, block), ...)


def _flags(m) -> tuple:
    """(has_gate, has_bias, is_transposed): Hugging Face's experts layout (``use_experts_implementation``)."""
    return bool(getattr(m, "has_gate", True)), bool(getattr(m, "has_bias", False)), bool(getattr(m, "is_transposed", False))


def _experts_shape(m):
    """(E, H) of an experts module in a layout we compute densely (NOTE: [Experts dispatched
    densely]), or None."""
    has_gate, has_bias, transposed = _flags(m)
    up, down = getattr(m, "gate_up_proj" if has_gate else "up_proj", None), getattr(m, "down_proj", None)
    if not (isinstance(up, torch.Tensor) and isinstance(down, torch.Tensor) and up.ndim == 3 and down.ndim == 3):
        return None
    if getattr(m, "has_post_expert_norm", False) or (not has_gate or not hasattr(type(m), "_apply_gate")) and not callable(
            getattr(m, "act_fn", None)):
        return None
    e, out, h = (up.shape[0], up.shape[2], up.shape[1]) if transposed else up.shape
    inner = out // 2 if has_gate else out
    if has_gate and out % 2 or tuple(down.shape) != ((e, inner, h) if transposed else (e, h, inner)):
        return None
    if has_bias:
        biases = getattr(m, "gate_up_proj_bias" if has_gate else "up_proj_bias", None), getattr(m, "down_proj_bias", None)
        if not all(isinstance(t, torch.Tensor) for t in biases) or (tuple(biases[0].shape), tuple(biases[1].shape)) != (
                (e, out), (e, h)):
            return None
    return e, h


def _linear(x, weight, bias, transposed: bool):
    y = x @ weight if transposed else F.linear(x, weight)
    return y if bias is None else y + bias


def expert(m: nn.Module, hidden: torch.Tensor, e: int) -> torch.Tensor:
    """Expert e of m on every row of hidden, as Hugging Face's experts implementations compute it:
    up (or gate-up) projection, the module's ``_apply_gate`` (or its activation), down projection."""
    has_gate, has_bias, transposed = _flags(m)
    up = m.gate_up_proj if has_gate else m.up_proj
    y = _linear(hidden, up[e], (m.gate_up_proj_bias if has_gate else m.up_proj_bias)[e] if has_bias else None, transposed)
    if not has_gate:
        y = m.act_fn(y)
    elif hasattr(type(m), "_apply_gate"):
        y = m._apply_gate(y)
    else:
        g, u = y.chunk(2, dim=-1)
        y = m.act_fn(g) * u
    return _linear(y, m.down_proj[e], m.down_proj_bias[e] if has_bias else None, transposed)


def _router_weight(r: nn.Module):
    weight = getattr(r, "weight", None)
    return weight if isinstance(weight, torch.Tensor) else getattr(getattr(r, "wg", None), "weight", None)


def _block(m: nn.Module):
    """(router, experts, m) of a mixture-of-experts block m, or None (Llama 4's, DBRX's and
    JetMoE's: their `Layout`'s router and replaced module, NOTE: [Experts of their own layouts])."""
    experts = getattr(m, "experts", None)
    gate = next((r for r in (getattr(m, "gate", None), getattr(m, "router", None)) if isinstance(r, nn.Module)), None)
    shape = _experts_shape(experts) if isinstance(experts, nn.Module) else None
    if gate is None or shape is None:
        layout = _layout(m)
        return None if layout is None else (layout.gate, layout.experts, m)
    weight, k = _router_weight(gate), getattr(gate, "top_k", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or not isinstance(k, int):
        return None
    return (gate, experts, m) if tuple(weight.shape) == shape and 0 < k <= shape[0] else None


def _layout(m: nn.Module):
    """The `Layout` of a block of NOTE: [Experts of their own layouts] or of a JetMoE attention
    (NOTE: [A mixture of attention heads, densely]), or None."""
    return find_layout(m) or find_moa(m)


def moe_blocks(root: nn.Module) -> tuple:
    """``((name, gate, experts, block), ...)``: the mixture-of-experts blocks of root (cached per root)."""
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

    def add(self, name: str, gate: nn.Module, experts: nn.Module, block: nn.Module | None = None) -> None:
        if id(experts) in self.hooked:
            return
        self.hooked.add(id(experts))
        key = id(experts)
        layout = None if block is None or _experts_shape(experts) is not None else _layout(block)
        if layout is not None:
            return self._add_layout(name, layout, block, key)

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
            self.outputs[key] = dense_output(module, gate, hidden, logits, index, weights, name, block)
            return call(hidden[:0], index[:0], weights[:0])  # its own forward: zero tokens, no work

        def after(module, args, out):
            if threading.get_ident() == self.owner and key in self.outputs:
                return self.outputs.pop(key)
            return None

        self.handles += [gate.register_forward_hook(keep), experts.register_forward_pre_hook(before, with_kwargs=True),
                         experts.register_forward_hook(after)]

    def _add_layout(self, name: str, layout, block: nn.Module, key: int) -> None:
        """The hooks of a block of NOTE: [Experts of their own layouts] (moe_layouts.py)."""
        mine = lambda: threading.get_ident() == self.owner  # noqa: E731
        gate, experts = layout.gate, layout.experts
        if layout.kind == "moa":  # the dense attention from the call's arguments; its own forward without the cache
            def before_attention(module, args, kwargs):
                if not mine():
                    return None
                hidden, mask, rotary, cache, extra, call = attention_bound(module, args, kwargs)
                self.outputs[key], replay = moa_dense(layout, hidden, mask, rotary, cache, extra, name)
                return call(replay)

            def after_attention(module, args, out):
                if mine() and key in self.outputs:
                    return (self.outputs.pop(key),) + tuple(out[1:])
                return None

            self.handles += [experts.register_forward_pre_hook(before_attention, with_kwargs=True),
                             experts.register_forward_hook(after_attention)]
            return
        if layout.kind == "jetmoe":  # the whole block: zero tokens in, the dense output out
            def before(module, args):
                if mine():
                    self.logits[key] = args[0]
                    return (args[0][..., :0, :],) + args[1:]
                return None

            def after(module, args, out):
                if not mine() or key not in self.logits:
                    return None
                x = self.logits.pop(key)
                hidden = x.reshape(-1, x.shape[-1])
                _, batch_index, batch_gates, sizes, logits = gate(hidden)
                return layout_dense(layout, hidden, logits, (batch_index, batch_gates, sizes), name).view(x.shape)

            self.handles += [experts.register_forward_pre_hook(before), experts.register_forward_hook(after)]
            return

        def keep(module, args, out):  # llama4: its input and (scores, logits); dbrx: the logits
            if mine() and (args or layout.kind != "llama4"):  # llama4's router called by keyword: not kept, refused
                self.logits[key] = (args[0], out) if layout.kind == "llama4" else out

        def before(module, args, kwargs):
            if not mine():
                return None
            kept = self.logits.pop(key, None)
            if kept is None:
                raise ValueError(f"DeepLift's dense experts: {name or type(module).__name__} ({type(module).__name__}) ran "
                                 f"without its router ({type(gate).__name__}) before it; it cannot be computed densely")
            if layout.kind == "llama4":
                hidden, (scores, logits) = kept
                self.outputs[key] = layout_dense(layout, hidden, logits, (scores,), name)
                e, h = experts.gate_up_proj.shape[:2]  # its own forward on E zero tokens (0 would not view as (E, -1, H))
                return (torch.zeros(e, h, dtype=hidden.dtype, device=hidden.device),) + args[1:], kwargs
            hidden, index, weights, call = _bound(module, args, kwargs)
            flat = hidden.reshape(-1, hidden.shape[-1])
            self.outputs[key] = layout_dense(layout, flat, kept, (index, weights), name).view(hidden.shape)
            return call(hidden[..., :0, :], index[:0], weights[:0])

        def after(module, args, out):
            if mine() and key in self.outputs:
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
                 weights: torch.Tensor, name: str = "", block: nn.Module | None = None) -> torch.Tensor:
    """The experts' output with every expert on every token, weighted by the dense routing weights
    of the router's logits (NOTE: [Experts dispatched densely]); checked against the router's own
    ``(top_k_index, top_k_weights)``."""
    routing = router_routing(gate, block)
    if routing.score == "sigmoid":
        p = torch.sigmoid(logits)
    else:
        p = torch.softmax(logits, dim=-1, dtype=torch.float32)  # as the routers do: the softmax in float32
    dense = ruled_routing(p, routing)
    check_routing(dense, index, weights, routing, name, gate, experts)
    dense = dense.to(hidden.dtype)
    out = None
    for e in range(dense.shape[-1]):
        term = expert(experts, hidden, e) * dense[:, e : e + 1]
        out = term if out is None else out + term
    return out


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
        for name, gate, experts, block in blocks:
            dense.add(name, gate, experts, block)
        if not roots:  # a function whose model is not found: look at each module as it runs
            dense.handles.append(nn.modules.module.register_module_forward_pre_hook(functools.partial(_discover, dense)))
        yield
    finally:
        dense.remove()


def _discover(dense: _Dense, module, args):
    """A module about to run, and its children: a block among them is hooked before its parts run
    (a JetMoE block or attention, whose own forward the hooks replace, is found by its parent: hooks
    added to the module being called would miss this call)."""
    if threading.get_ident() != dense.owner:
        return
    for m in (module, *module.children()):
        if id(m) not in dense.checked:
            dense.checked.add(id(m))
            parts = _block(m)
            if parts is not None:
                dense.add(type(m).__name__, *parts)
