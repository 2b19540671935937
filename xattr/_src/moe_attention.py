"""DeepLift's dense experts for JetMoE's mixture of attention heads (MoA).

NOTE: [A mixture of attention heads, densely]
JetMoE's attention (``JetMoeAttention``) routes each token to k of E experts (``JetMoeMoA``,
router as its MLP's: softmax of the top-k logits). Slot j of token t takes the query
``q_j(t) = W_in[e_j(t)] h_t`` (``input_linear.weight`` (E, P, H), P = kv heads * head dim), the
expert of its j-th largest logit; every slot attends with the same keys and values (``kv_proj``,
rotary, ``repeat(1, k, 1, 1)`` over the heads); slot j's output goes through that expert's
``output_linear.weight[e]`` (E, H, P), is weighted by its routing weight, and the slots are summed
(``index_add``), plus ``bias``. The slots are ordered by the logits, so an example's slot j and its
reference's hold different experts: no row of the queries has its pair, and DeepLift's delta was
0.56 of the change of the output.

Each head's attention is its own softmax over the keys, so a slot's output depends on its expert
alone, not on its slot: with ``A_e(t) = attention(rope(W_in[e] h_t), K, V)``,

    out(t) = sum_e D[t, e] * W_out[e] A_e(t) + bias,

D the dense routing weights (0 off the top k). That is the dense form: E groups of query heads in
place of k (keys and values repeated E times), every expert on every token, every op on whole
rows (the queries of expert e for an example and its reference pair as any attention's do), D
from the router's logits through `TopKRouting` and checked against the router's own ``(batch_index,
batch_gates, expert_size)``. The cost: E / k times the attention's query heads.

How: a pre-hook on the attention computes the dense output from the call's own arguments
(the mask, the rotary embeddings, the module's own ``apply_rotary_pos_emb`` and attention
function, the cache updated once, here) and lets the module's own forward run with a `Replay` in
place of the cache (its ``update`` returns the keys and values the cache gave, past ones included,
and updates nothing: the cache is not updated twice); a hook returns the dense output in its
place. Its attention weights (k groups of heads) and router logits are the module's own.
"""

from __future__ import annotations

import functools
import inspect
import sys

import torch
import torch.nn.functional as F
from torch import nn

from .moe_layouts import Layout, _linear_weight, _param, dense_routing
from .moe_routing import Routing


def find_moa(m: nn.Module) -> Layout | None:
    """The `Layout` ("moa") of a JetMoE attention with a mixture of attention heads, or None."""
    moa = getattr(m, "experts", None)
    if not (type(m).__name__.startswith("JetMoe") and isinstance(moa, nn.Module) and callable(getattr(moa, "reduce", None))):
        return None
    gate, bias = getattr(moa, "router", None), _param(moa, "bias", 1)
    up, down = (_param(getattr(moa, n, None), "weight", 3) for n in ("input_linear", "output_linear"))
    weight = _linear_weight(gate) if isinstance(gate, nn.Module) else None
    k, d = getattr(gate, "top_k", None), getattr(m, "head_dim", None)
    if weight is None or up is None or down is None or bias is None or not isinstance(k, int) or not isinstance(d, int):
        return None
    e, h = weight.shape
    p = up.shape[1]
    if tuple(up.shape) != (e, p, h) or tuple(down.shape) != (e, h, p) or bias.shape[0] != h or p % d:
        return None
    if not (0 < k <= e and k == getattr(m, "top_k", None) and isinstance(getattr(m, "kv_proj", None), nn.Linear)):
        return None
    return Layout("moa", gate, m, Routing(k, True, "softmax"))


@functools.lru_cache(maxsize=None)
def _signature(cls):
    return inspect.signature(cls.forward)


def bound(module: nn.Module, args: tuple, kwargs: dict):
    """(hidden_states, attention_mask, position_embeddings, cache, other kwargs, call): the
    attention call's arguments; ``call(cache)`` is the pre-hook's ``(args, kwargs)`` with that cache."""
    sig = _signature(type(module))
    given = sig.bind(module, *args, **kwargs).arguments
    extra_name = next((n for n, p in sig.parameters.items() if p.kind is p.VAR_KEYWORD), None)
    extra = dict(given.get(extra_name, {})) if extra_name else {}
    cache = given.get("cache", extra.pop("past_key_values", None))
    names = list(sig.parameters)[1:]

    def call(replay):
        new_args = tuple(replay if names[i] == "cache" else a for i, a in enumerate(args))
        new_kwargs = {n: (replay if n in ("cache", "past_key_values") else v) for n, v in kwargs.items()}
        return new_args, new_kwargs

    return given.get("hidden_states"), given.get("attention_mask"), given.get("position_embeddings"), cache, extra, call


class Replay:
    """In place of the cache for the module's own forward: ``update`` gives the keys and values
    the dense attention got from the cache, and updates nothing (NOTE: [A mixture of attention
    heads, densely])."""

    def __init__(self, keys, values):
        self.keys, self.values = keys, values

    def update(self, *args, **kwargs):
        return self.keys, self.values


def moa_dense(layout: Layout, hidden_states, attention_mask, position_embeddings, cache, kwargs: dict, name: str = ""):
    """(output, replay): the attention's output, every expert's queries on every token (NOTE: [A
    mixture of attention heads, densely]); the cache, where there is one, updated as the module's
    forward does, and a `Replay` of it for the module's own forward (None where there is none)."""
    attn = layout.experts
    moa, code = attn.experts, sys.modules[type(attn).__module__]
    shape = hidden_states.shape[:-1]
    flat = hidden_states.reshape(-1, hidden_states.shape[-1])
    _, batch_index, batch_gates, sizes, logits = layout.gate(flat)
    dense = dense_routing(layout, logits, (batch_index, batch_gates, sizes), name).to(hidden_states.dtype)
    e = dense.shape[-1]
    queries = torch.stack([F.linear(hidden_states, moa.input_linear.weight[i]) for i in range(e)], dim=-2)
    q = queries.view(*shape, -1, attn.head_dim).transpose(1, 2)
    k, v = (t.view(*shape, -1, attn.head_dim).transpose(1, 2) for t in attn.kv_proj(hidden_states).chunk(2, dim=-1))
    cos, sin = position_embeddings
    q, k = code.apply_rotary_pos_emb(q, k, cos, sin)
    replay = None
    if cache is not None:
        k, v = cache.update(k, v, attn.layer_idx, kwargs=kwargs)
        replay = Replay(k, v)
    interface = code.ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, code.eager_attention_forward)
    out, _ = interface(attn, q, k.repeat(1, e, 1, 1), v.repeat(1, e, 1, 1), attention_mask,
                       dropout=attn.attention_dropout if attn.training else 0.0, scaling=attn.scaling, **kwargs)
    out = out.reshape(*shape, e, -1)
    weights = dense.view(*shape, e)
    total = None
    for i in range(e):
        term = F.linear(out[..., i, :], moa.output_linear.weight[i]) * weights[..., i : i + 1]
        total = term if total is None else total + term
    return total + moa.bias, replay
