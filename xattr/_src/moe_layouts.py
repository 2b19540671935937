"""DeepLift's dense experts for the blocks of Llama 4, DBRX and JetMoE: their own layouts.

NOTE: [Experts of their own layouts]
Three Hugging Face families keep their experts in layouts of their own, and route in their own way;
each is computed densely as NOTE: [Experts dispatched densely] (deeplift_moe.py) says, every
expert on every token, ``out = sum_e D[:, e] FFN_e(h)``, D from the router's logits through the
exact rules (`ruled_routing`), checked on every call against the router's own weights:

- Llama 4 (``Llama4TextMoe``): the router keeps the top-k logits, ``sigmoid`` of them (0
  elsewhere): ``D = G(sigmoid(l))``, the top k of the sigmoid scores, not renormalised (sigmoid is
  monotone, so the same top k as the logits'). Its experts (``gate_up_proj`` (E, H, 2I),
  ``down_proj`` (E, I, H), a bmm over the expert dim) run already on every token, but on the
  token *scaled* by D: ``routed_out[e] = FFN_e(D_e h)``, laid out (E * T, H) for the block to
  sum over e. Those rows, ``h.repeat(E, 1)``, are the paired rows merged behind the expert dim,
  which the rows mode does not pair (and its router's top-k scores kept their gradient at the
  top-k switch): delta 0.044 of the change. Densely, ``FFN_e(D_e * h)`` on the (T, H) tokens,
  concatenated to (E * T, H): every op on paired rows, ``D_e * h`` a `Product`, D the rule of
  NOTE: [DeepLift at top-k routing] with r = 1. The check compares the router's own dense
  scores with D.
- DBRX (``DbrxFFN``): a softmax in the logits' dtype, the top k, divided by their p-norm
  (``moe_normalize_expert_weights``, 1 by default; NOTE: [A p-norm normaliser] in
  moe_routing.py; None: not divided). Experts ``DbrxExpertGLU``: ``w1``, ``v1``, ``w2`` each
  (E * I, H), ``FFN_e(h) = (act(h w1_e^T) * (h v1_e^T)) w2_e``. The router returns the logits
  alone; the block holds ``top_k``. The experts take ``(hidden, top_k_index, top_k_weights)`` as
  Hugging Face's do, and are checked the same way.
- JetMoE's MLP (``JetMoeMoE``): softmax of the top-k logits (the renormalised top k of the
  softmax, as GPT-OSS), experts ``JetMoeParallelExperts`` (``input_linear.weight`` (E, 2I, H),
  ``output_linear.weight`` (E, H, I)), then the block's ``bias``. Its forward sorts the tokens by
  expert inside itself, so the whole block is replaced: a pre-hook hands it zero tokens, a hook
  returns the dense output; the router is called on the tokens by the hook (its logits are the
  graph's), and its own ``(batch_index, batch_gates, expert_size)`` are the check.

JetMoE's attention is a mixture too (MoA, ``JetMoeMoA``, whose ``map`` and ``reduce`` the
attention's own forward calls): NOTE: [A mixture of attention heads, densely] in moe_attention.py.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .checks import is_traced
from .moe_routers import check_dense, check_routing
from .moe_routing import Routing, ruled_routing


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    """A block of one of these families: ``kind`` ("llama4", "dbrx", "jetmoe"; "moa": JetMoE's
    attention, moe_attention.py), its router, the module whose forward the dense output replaces
    (``experts``), its `Routing`."""

    kind: str
    gate: nn.Module
    experts: nn.Module
    routing: Routing


def _param(m, name: str, ndim: int):
    t = getattr(m, name, None)
    return t if isinstance(t, torch.Tensor) and t.ndim == ndim else None


def _linear_weight(m):
    layer = getattr(m, "layer", None)
    return _param(layer, "weight", 2) if isinstance(layer, nn.Linear) and layer.bias is None else None


def _llama4(m) -> Layout | None:
    experts, gate = getattr(m, "experts", None), getattr(m, "router", None)
    if not (isinstance(gate, nn.Linear) and gate.bias is None and isinstance(experts, nn.Module)):
        return None
    up, down, k = _param(experts, "gate_up_proj", 3), _param(experts, "down_proj", 3), getattr(gate, "top_k", None)
    if up is None or down is None or not isinstance(k, int) or not callable(getattr(experts, "act_fn", None)):
        return None
    e, h, two_i = up.shape
    if two_i % 2 or tuple(down.shape) != (e, two_i // 2, h) or tuple(gate.weight.shape) != (e, h) or not 0 < k <= e:
        return None
    if not (callable(getattr(m, "shared_expert", None)) and type(m).__name__.startswith("Llama4")):
        return None  # the block's forward (shared expert + the sum over e) is Llama 4's
    return Layout("llama4", gate, experts, Routing(k, False, "sigmoid"))


def _dbrx(m) -> Layout | None:
    experts, gate, k = getattr(m, "experts", None), getattr(m, "router", None), getattr(m, "top_k", None)
    mlp = getattr(experts, "mlp", None)
    weight = _linear_weight(gate) if isinstance(gate, nn.Module) else None
    if weight is None or not isinstance(k, int) or not callable(getattr(mlp, "activation_fn", None)):
        return None
    w = [_param(mlp, n, 2) for n in ("w1", "v1", "w2")]
    e, h = weight.shape
    if any(t is None or tuple(t.shape) != tuple(w[0].shape) for t in w) or w[0].shape[1] != h or w[0].shape[0] % e:
        return None
    if not (0 < k <= e and hasattr(m, "moe_normalize_expert_weights") and type(m).__name__.startswith("Dbrx")):
        return None
    power = m.moe_normalize_expert_weights
    if power is not None and not (isinstance(power, (int, float)) and power > 0):
        return None
    return Layout("dbrx", gate, experts, Routing(k, power is not None, "softmax", power=float(power or 1.0)))


def _jetmoe(m) -> Layout | None:
    gate, bias = getattr(m, "router", None), _param(m, "bias", 1)
    up, down = (_param(getattr(m, n, None), "weight", 3) for n in ("input_linear", "output_linear"))
    weight = _linear_weight(gate) if isinstance(gate, nn.Module) else None
    k = getattr(gate, "top_k", None)
    if weight is None or up is None or down is None or bias is None or not isinstance(k, int):
        return None
    e, h = weight.shape
    two_i = up.shape[1]
    if tuple(up.shape) != (e, two_i, h) or two_i % 2 or tuple(down.shape) != (e, h, two_i // 2) or bias.shape[0] != h:
        return None
    if not (0 < k <= e and callable(getattr(m, "activation", None)) and type(m).__name__.startswith("JetMoe")):
        return None
    return Layout("jetmoe", gate, m, Routing(k, True, "softmax"))


def find_layout(m: nn.Module) -> Layout | None:
    """The `Layout` of a Llama 4, DBRX or JetMoE mixture-of-experts block (NOTE: [Experts of their
    own layouts]), or None."""
    for find in (_llama4, _dbrx, _jetmoe):
        found = find(m)
        if found is not None:
            return found
    return None


def layout_expert(layout: Layout, hidden: torch.Tensor, e: int) -> torch.Tensor:
    """Expert e of the block on every row of hidden (T, H)."""
    if layout.kind == "llama4":
        m = layout.experts
        g, u = (hidden @ m.gate_up_proj[e]).chunk(2, dim=-1)
        return (u * m.act_fn(g)) @ m.down_proj[e]
    if layout.kind == "dbrx":
        mlp = layout.experts.mlp
        e_count = layout.gate.layer.weight.shape[0]
        w1, v1, w2 = (t.view(e_count, -1, t.shape[-1])[e] for t in (mlp.w1, mlp.v1, mlp.w2))
        return (mlp.activation_fn(hidden.matmul(w1.T)) * hidden.matmul(v1.T)).matmul(w2)
    m = layout.experts  # jetmoe
    g, u = F.linear(hidden, m.input_linear.weight[e]).chunk(2, dim=-1)
    return F.linear(m.activation(g) * u, m.output_linear.weight[e])


def scores(layout: Layout, logits: torch.Tensor) -> torch.Tensor:
    """The router's scores of its logits, in the dtype it computes them."""
    if layout.kind == "llama4":
        return torch.sigmoid(logits.float())
    if layout.kind == "dbrx":
        return torch.softmax(logits, dim=-1, dtype=logits.dtype)
    return torch.softmax(logits, dim=-1, dtype=torch.float32)


def dense_routing(layout: Layout, logits: torch.Tensor, own: tuple, name: str = "") -> torch.Tensor:
    """The dense routing weights (T, E) of the router's logits, through `TopKRouting`, checked
    against ``own``, what the router gave (llama4: its dense scores; dbrx: ``(top_k_index,
    top_k_weights)``; jetmoe, moa: ``(batch_index, batch_gates, expert_size)``)."""
    dense = ruled_routing(scores(layout, logits), layout.routing)
    if layout.kind == "llama4":
        check_dense(dense, own[0], layout.routing, name, layout.gate, layout.experts)
    elif layout.kind == "dbrx":
        check_routing(dense, own[0], own[1], layout.routing, name, layout.gate, layout.experts)
    elif not (is_traced(own[1]) or is_traced(dense)):  # no data-dependent check under transforms
        batch_index, batch_gates, sizes = own
        chosen = torch.repeat_interleave(torch.arange(dense.shape[-1], device=dense.device),
                                         torch.as_tensor(sizes, device=dense.device))
        with torch.no_grad():
            theirs = torch.zeros(dense.shape, dtype=torch.float64, device=dense.device)
            theirs.index_put_((batch_index, chosen), batch_gates.detach().to(torch.float64))
        check_dense(dense, theirs, layout.routing, name, layout.gate, layout.experts, batch_gates.dtype)
    return dense


def layout_dense(layout: Layout, hidden: torch.Tensor, logits: torch.Tensor, own: tuple, name: str = "") -> torch.Tensor:
    """The block's experts' output, every expert on every token of hidden (T, H), weighted by the
    dense routing weights of logits (`dense_routing`; ``own`` for its check), in the layout the
    block expects: (E * T, H) for Llama 4, (T, H) otherwise (JetMoE's with its bias added)."""
    return _summed(layout, hidden, dense_routing(layout, logits, own, name).to(hidden.dtype))


def _summed(layout: Layout, hidden: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    if layout.kind == "llama4":  # NOTE: [Experts of their own layouts]: the experts scale their input
        return torch.cat([layout_expert(layout, dense[:, e : e + 1] * hidden, e) for e in range(dense.shape[-1])])
    out = None
    for e in range(dense.shape[-1]):
        term = layout_expert(layout, hidden, e) * dense[:, e : e + 1]
        out = term if out is None else out + term
    return out + layout.experts.bias if layout.kind == "jetmoe" else out
