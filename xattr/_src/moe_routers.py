"""Which routing a Hugging Face router computes, read from its attributes, and the check of every call.

NOTE: [Routers of other kinds]
Hugging Face's mixture-of-experts routers differ in four ways, all functions of the router's
logits l through scores s (``softmax(l)`` or ``sigmoid(l)``), ``G(s)_e = scale * s_e * I_e(s) *
r(s)`` (NOTE: [DeepLift at top-k routing] in moe_routing.py):

- the score: softmax (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2, HunYuan; GPT-OSS and GraniteMoE
  take the softmax of the top-k logits, which is the renormalised top-k of the softmax) or
  sigmoid (DeepSeek-V3, GLM4-MoE, dots1, EXAONE-MoE, LFM2-MoE);
- the selection I: the top k of s, or of ``s + bias`` (a score-correction bias, a constant
  buffer: the choice moves, the weights stay s), within the ``topk_group`` best of
  ``n_group`` groups (DeepSeek-V3's groups scored by the sum of their two largest ``s + bias``,
  DeepSeek-V2's ``group_limited_greedy`` by their largest s);
- the normaliser ``r = 1 / (Z + eps)`` over the chosen, ``eps`` 1e-20 (DeepSeek-V3) or 1e-6
  (LFM2-MoE), or r = 1;
- a ``routed_scaling_factor``.

I is a function of s alone (bias and groups are constants of the router), and every one of these
G is ``scale * p_e I_e r`` with ``d(r) = -r(p) r(q) d(Z)`` (eps cancels in the difference), so the
rule of NOTE: [DeepLift at top-k routing] carries over unchanged, times ``scale``: exact for each.
`router_routing` reads the kind from the router's attributes (``e_score_correction_bias``:
DeepSeek-V3's sigmoid routers; ``use_expert_bias``: LFM2-MoE's, the bias kept by the block;
``topk_method``: DeepSeek-V2's; otherwise softmax top-k with ``norm_topk_prob`` and
``routed_scaling_factor`` where present). That reading is a guess from names; what makes it safe
is `check_routing`: every call compares the router's own ``(top_k_index, top_k_weights)``,
scattered, with ``G(s)`` (to 64 rounding units), and a router of another kind (PhiMoE's
sparsemixer, a scaled router without the attribute) is a ValueError naming the module.
"""

from __future__ import annotations

import torch
from torch import nn

from .checks import is_traced
from .moe_routing import Routing


def router_routing(gate: nn.Module, block: nn.Module | None = None) -> Routing:
    """The `Routing` a router's attributes say it computes (NOTE: [Routers of other kinds]);
    `check_routing` then holds every call to it."""
    k, scale = gate.top_k, float(getattr(gate, "routed_scaling_factor", 1.0) or 1.0)
    if isinstance(getattr(gate, "e_score_correction_bias", None), torch.Tensor):  # DeepSeek-V3, GLM4-MoE, dots1
        groups = int(getattr(gate, "num_group", 1) or 1)
        return Routing(k, bool(getattr(gate, "norm_topk_prob", True)), "sigmoid", scale, 1e-20,
                       gate.e_score_correction_bias, groups, int(getattr(gate, "topk_group", groups) or groups))
    statics = getattr(getattr(gate, "moe_statics", None), "e_score_correction_bias", None)
    if isinstance(statics, torch.Tensor) and statics.numel() == gate_experts(gate):  # ERNIE-4.5-MoE: softmax + bias
        return Routing(k, True, "softmax", scale, 0.0, statics.reshape(-1), floor=float(getattr(gate, "norm_min", 0.0)))
    if isinstance(getattr(gate, "use_expert_bias", None), bool):  # LFM2-MoE: the block holds the bias
        bias = getattr(block, "expert_bias", None) if gate.use_expert_bias else None
        return Routing(k, bool(getattr(gate, "norm_topk_prob", True)), "sigmoid", scale, 1e-6, bias)
    if isinstance(getattr(gate, "topk_method", None), str):  # DeepSeek-V2
        groups = int(getattr(gate, "num_group", 1) or 1) if gate.topk_method == "group_limited_greedy" else 1
        return Routing(k, False, "softmax", scale, 0.0, None, groups, int(getattr(gate, "topk_group", 1) or 1), "max")
    return Routing(k, bool(getattr(gate, "norm_topk_prob", True)), "softmax", scale)


def gate_experts(gate: nn.Module) -> int:
    weight = getattr(gate, "weight", None)
    return int((weight if isinstance(weight, torch.Tensor) else gate.wg.weight).shape[0])


def _describe(routing: Routing) -> str:
    parts = [f"{routing.score} and top-{routing.top_k}"]
    parts += ["+ a score bias"] * (routing.bias is not None)
    parts += [f"in the best {routing.topk_group} of {routing.groups} groups"] * (routing.groups > 1)
    norm = "(renormalised)" if routing.power == 1 else f"(divided by their {routing.power:g}-norm)"
    parts += [norm] * routing.normalize + [f"(at least {routing.floor:g})"] * bool(routing.floor)
    parts += [f"times {routing.scale:g}"] * (routing.scale != 1.0)
    return " ".join(parts)


def check_routing(dense: torch.Tensor, index, weights, spec: Routing, name: str, gate, experts) -> None:
    """Refuses a router whose own top-k weights are not ``dense``, its `Routing` of its scores
    (NOTE: [Routers of other kinds])."""
    routing, k = dense, spec.top_k
    where = f"{name or type(experts).__name__} (router {type(gate).__name__})"
    if not (isinstance(index, torch.Tensor) and isinstance(weights, torch.Tensor)) or tuple(index.shape) != (routing.shape[0], k):
        got = tuple(index.shape) if isinstance(index, torch.Tensor) else type(index).__name__
        raise ValueError(f"DeepLift's dense experts: {where} gave top_k_index of shape {got}, not ({routing.shape[0]}, {k}): "
                         "not a top-k router; DeepLift cannot compute this block densely")
    if is_traced(routing) or is_traced(weights):  # no data-dependent check under transforms
        return
    with torch.no_grad():
        theirs = torch.zeros(routing.shape, dtype=torch.float64, device=routing.device)
        theirs.scatter_(-1, index.long(), weights.detach().to(torch.float64))
    check_dense(routing, theirs, spec, name, gate, experts, weights.dtype)


def check_dense(dense: torch.Tensor, theirs: torch.Tensor, spec: Routing, name: str, gate, experts, dtype=None) -> None:
    """Refuses a router whose own dense routing weights ``theirs`` (T, E) are not ``dense``
    (to 64 rounding units of the coarser dtype; ``dtype``: theirs' own, before a cast)."""
    if is_traced(dense) or is_traced(theirs):  # no data-dependent check under transforms
        return
    where = f"{name or type(experts).__name__} (router {type(gate).__name__})"
    if tuple(theirs.shape) != tuple(dense.shape):
        raise ValueError(f"DeepLift's dense experts: {where} gave routing weights of shape {tuple(theirs.shape)}, not "
                         f"{tuple(dense.shape)}: DeepLift cannot compute this block densely")
    with torch.no_grad():
        gap = (theirs.detach().to(torch.float64) - dense.detach().to(torch.float64)).abs().max().item() if theirs.numel() else 0.0
    dtype = theirs.dtype if dtype is None else dtype
    tol = 64 * max(torch.finfo(dense.dtype).eps, torch.finfo(dtype).eps if dtype.is_floating_point else 0.0)
    if not gap <= tol:
        raise ValueError(
            f"DeepLift's dense experts: {where} routes by other weights than {_describe(spec)} of its logits "
            f"(they differ by {gap:.3g}): a router of "
            "another kind, whose block DeepLift cannot compute densely; its attributions would be wrong")
