"""The routing weights of a softmax-top-k mixture-of-experts router, and DeepLift's rule for them.

NOTE: [DeepLift at top-k routing]
A Mixtral or Qwen2-MoE router turns each token's expert probabilities p (E of them, a softmax)
into dense routing weights ``D = G(p)``, ``G(p)_e = p_e * s_e(p)``, ``s_e = 1[e in S(p)] * r(p)``:
S(p) the k experts of largest p (``torch.topk``), ``r = 1 / Z``, ``Z`` the sum of p over S(p)
where the router renormalises (Mixtral always, Qwen2-MoE with ``norm_topk_prob``), else r = 1.
DeepLift needs multipliers M (E x E per token) with ``M (p - q) = G(p) - G(q)`` exactly, q the
reference token's probabilities. Write ``avg(t) = (t(p) + t(q)) / 2`` and ``d(t) = t(p) - t(q)``
for I = 1[e in S], r, s, p. The product identity ``d(ab) = avg(b) d(a) + avg(a) d(b)``, applied
three times (``p_e s_e``, ``I_e r`` and, where r = 1 / Z, ``d(r) = -r(p) r(q) d(Z)`` with ``Z =
sum_j I_j p_j``), splits the change into a part linear in dp and a part from the top-k set
alone:

    d(G_e) = sum_j A_ej dp_j + c_e
    A_ej = avg(s_e) [e == j] - w_e avg(I_j),     w_e = avg(p_e) avg(I_e) kappa
    c_e  = avg(p_e) avg(r) d(I_e) - w_e sum_j avg(p_j) d(I_j)

with ``kappa = r(p) r(q)`` where the router renormalises, else 0. A is what DeepLift's own rules
give the same steps written out (`Product` at the two products and the quotient); where the
top-k sets agree, c = 0 and M = A; where p == q, A is G's Jacobian. The jump c (an expert
entering or leaving the top k, and the normaliser's share of it) is a step, owed to no single
p_j: it is spread over the experts in either top-k set, U = S(p) | S(q), in proportion to their
own change, ``c dp_U^T / |dp_U|^2`` (the multipliers of least norm that carry c on U). Each
p_j in U then takes the share ``dp_j^2 / |dp_U|^2`` of the jump, whatever its sign: the experts
that moved most are held responsible for the switch, and an expert outside both sets, which
took no part in it (its own change reaches D only through the softmax, upstream), takes none.
That is one exact split among many (any M with ``M dp = c`` on top of A conserves); it is chosen
because it is exact, equals the written-out rules and the Jacobian where those are defined, and
needs no division by a single dp_j (which a tie would make 0/0). Where ``dp_U = 0`` but the sets
differ (a tie broken differently, p and q equal on U) the jump is spread over every dp_j; where
dp = 0, c = 0. So ``M dp = d(G)`` holds to rounding for every pair of probability rows
(tests/test_deeplift_moe.py checks it against a loop per token pair).

The multipliers are kept factored, five vectors per token (`routing_terms`): the backward is
``g * avg(s) - (g . w) avg(I) + (g . c) v``, ``v = dp_U / |dp_U|^2``, O(E) per token, never the
E x E matrix (`routing_multipliers` builds it, for tests).

NOTE: [A p-norm normaliser]
DBRX divides the top-k weights by their P-norm, ``N = (sum_j I_j p_j^P)^(1/P)`` (P = 1 by
default: the sum). Write ``Z_P = sum_j I_j p_j^P``, so ``N = Z_P^(1/P)``. Two secants carry the
change of N exactly: ``d(N) = sigma d(Z_P)``, sigma = ``d(N) / d(Z_P)`` (``N / (P Z_P)``, the
slope, where ``Z_P`` does not change), and ``d(p_j^P) = t_j dp_j``, ``t_j = d(p_j^P) / dp_j``
(``P p_j^(P-1)`` where p_j does not change). The product identity on ``Z_P`` then gives

    d(Z_P) = sum_j avg(I_j) t_j dp_j + sum_j avg(p_j^P) d(I_j),

so the rule above holds with kappa times sigma, ``avg(I_j)`` in A times ``t_j``, and the jump's
normaliser share summing ``avg(p_j^P) d(I_j)`` in place of ``avg(p_j) d(I_j)``:

    A_ej = avg(s_e) [e == j] - w_e avg(I_j) t_j,    w_e = avg(p_e) avg(I_e) r(p) r(q) sigma
    c_e  = avg(p_e) avg(r) d(I_e) - w_e sum_j avg(p_j^P) d(I_j).

P = 1 gives t = sigma = 1 and the rule above, bit for bit (it is computed so); at p == q, A is
G's Jacobian again. The third vector of the factored terms is ``avg(I) t``.
(tests/test_deeplift_moe_more.py checks ``M dp == d(G)`` against a loop per token pair.)
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from . import ops
from .deeplift_rules import _flat, _halves, _on_rows
from .merged_rows import BATCH, Unshared, merged_rows
from .row_layout import _ROWS
from .rule_apply import apply_rule
from .rule_base import Rule, Saved


@dataclasses.dataclass(frozen=True, eq=False)
class Routing:
    """How a router turns its scores s (softmax or sigmoid of its logits) into dense routing
    weights (NOTE: [Routers of other kinds] in moe_routers.py): the experts of the top_k largest ``s + bias``
    (``bias`` None: of s) among the ``topk_group`` best of ``groups`` equal groups (scored by the
    sum of their two largest ``s + bias``, or, ``group_score="max"``, by their largest s), weighted
    by s, divided by ``max(sum + eps, floor)`` over the chosen where ``normalize`` (or by their
    ``power``-norm, NOTE: [A p-norm normaliser]), times ``scale``."""

    top_k: int
    normalize: bool = True
    score: str = "softmax"
    scale: float = 1.0
    eps: float = 0.0
    bias: torch.Tensor | None = None
    groups: int = 1
    topk_group: int = 1
    group_score: str = "top2"
    floor: float = 0.0
    power: float = 1.0


def selected(s: torch.Tensor, routing: Routing) -> torch.Tensor:
    """``top_k_index`` (..., k) of the chosen experts, as the router picks them."""
    choice = s if routing.bias is None else s + routing.bias.to(s.dtype)
    if routing.groups > 1:
        e = s.shape[-1]
        grouped = choice.unflatten(-1, (routing.groups, e // routing.groups))
        if routing.group_score == "max":
            group_scores = (s.unflatten(-1, (routing.groups, e // routing.groups))).amax(-1)
        else:
            group_scores = grouped.topk(2, dim=-1)[0].sum(-1)
        best = torch.topk(group_scores, routing.topk_group, dim=-1, sorted=False)[1]
        keep = torch.zeros_like(group_scores).scatter(-1, best, 1.0).bool()
        choice = choice.masked_fill(~keep.repeat_interleave(e // routing.groups, dim=-1), float("-inf"))
    return torch.topk(choice, routing.top_k, dim=-1)[1]


def routing_weights(p: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Dense routing weights ``G(p)`` (..., E) of scores p: the router's own top-k weights, scattered
    (the same gather, sum and scaling, so the same numbers to a rounding of the sum's order)."""
    indices = selected(p, routing)
    values = p.gather(-1, indices)
    if routing.normalize:
        total = values.sum(dim=-1, keepdim=True) if routing.power == 1 else torch.norm(
            values, p=routing.power, dim=-1, keepdim=True)  # as DBRX's router
        values = values / _floored(total + routing.eps, routing.floor)
    if routing.scale != 1.0:
        values = values * routing.scale
    return torch.zeros_like(p).scatter(-1, indices, values)


def _floored(z: torch.Tensor, floor: float) -> torch.Tensor:
    return z.clamp(min=floor) if floor else z


def _indicator(p: torch.Tensor, routing: Routing):
    """``1[e in S(p)]``, r(p) (ones where the router does not renormalise), Z(p), ``max(Z + eps,
    floor)`` and the sum of ``p^power`` over S(p) (Z is its ``1 / power``-th power)."""
    one = torch.zeros_like(p).scatter(-1, selected(p, routing), 1.0)
    if routing.power == 1:
        z = z_pow = (one * p).sum(dim=-1, keepdim=True)
    else:
        z_pow = (one * p.pow(routing.power)).sum(dim=-1, keepdim=True)
        z = z_pow.pow(1.0 / routing.power)
    floored = _floored(z + routing.eps, routing.floor)
    r = floored.reciprocal() if routing.normalize else torch.ones_like(z)
    return one, r, z, floored, z_pow


def _secant(fp: torch.Tensor, fq: torch.Tensor, p: torch.Tensor, q: torch.Tensor, slope_at_p: torch.Tensor) -> torch.Tensor:
    """``(f(p) - f(q)) / (p - q)``, f's slope at p where p == q."""
    d = p - q
    return torch.where(d == 0, slope_at_p, (fp - fq) / torch.where(d == 0, torch.ones_like(d), d))


def _power_terms(p, q, zp, zq, zpow_p, zpow_q, power: float):
    """(t, sigma, avg(p^power)) of NOTE: [A p-norm normaliser]: t_j the secant of ``x^power`` from
    q_j to p_j, sigma the secant of ``z^(1/power)`` from ``Z_P(q)`` to ``Z_P(p)``."""
    if power == 1:
        return 1.0, 1.0, (p + q) * 0.5
    p, q = torch.broadcast_tensors(p, q)
    pp, qp = p.pow(power), q.pow(power)
    t = _secant(pp, qp, p, q, power * p.pow(power - 1))
    sigma = _secant(zp, zq, zpow_p, zpow_q, zp / (power * zpow_p))  # d z^(1/P) / dz = z^(1/P) / (P z)
    return t, sigma, (pp + qp) * 0.5


def routing_terms(p: torch.Tensor, q: torch.Tensor, routing: Routing) -> torch.Tensor:
    """The factored multipliers of G from q to p (NOTE: [DeepLift at top-k routing]): ``avg(s), w,
    avg(I), c, v`` joined along the last dim, (..., 5E); p and q broadcast against each other."""
    ip, rp, zp, fp, zpow_p = _indicator(p, routing)
    iq, rq, zq, fq, zpow_q = _indicator(q, routing)
    scale = routing.scale
    avg_p, avg_i = (p + q) * 0.5, (ip + iq) * 0.5
    t, sigma, avg_pow = _power_terms(p, q, zp, zq, zpow_p, zpow_q, routing.power) if routing.normalize else (1.0, 1.0, avg_p)
    avg_s = (ip * rp + iq * rq) * (0.5 * scale)
    # the floor's multiplier d(max(Z + eps, floor)) / dZ: 1 above it, its own slope across it
    dz = zp - zq
    slope = 1.0 if not routing.floor else torch.where(
        dz == 0, (zp + routing.eps >= routing.floor).to(p.dtype), (fp - fq) / torch.where(dz == 0, 1, dz))
    w = avg_p * avg_i * (rp * rq * slope * sigma * scale) if routing.normalize else torch.zeros_like(avg_p)
    d_i = ip - iq
    c = avg_p * ((rp + rq) * (0.5 * scale)) * d_i - w * (avg_pow * d_i).sum(dim=-1, keepdim=True)
    dp = (p - q).expand_as(avg_p)
    on_u = dp * torch.maximum(ip, iq)
    norm_u = (on_u * on_u).sum(dim=-1, keepdim=True)
    spread = torch.where(norm_u == 0, dp, on_u)  # the sets differ with p == q on U: over every dp_j
    norm = torch.where(norm_u == 0, (dp * dp).sum(dim=-1, keepdim=True), norm_u)
    v = spread / torch.where(norm == 0, torch.ones_like(norm), norm)  # dp == 0: c == 0, v == 0
    return torch.cat([avg_s.expand_as(avg_p), w, (avg_i * t).expand_as(avg_p), c, v], dim=-1)


def _parts(terms: torch.Tensor) -> tuple:
    return terms.unflatten(-1, (5, terms.shape[-1] // 5)).unbind(-2)


def routing_multipliers(p: torch.Tensor, q: torch.Tensor, routing: Routing) -> torch.Tensor:
    """The multipliers M (..., E, E) of G from q to p, ``M[e, j] = d G_e / d p_j`` in DeepLift's
    sense: ``M @ (p - q) == G(p) - G(q)`` (NOTE: [DeepLift at top-k routing])."""
    avg_s, w, avg_i, c, v = _parts(routing_terms(p, q, routing))
    return torch.diag_embed(avg_s) - w.unsqueeze(-1) * avg_i.unsqueeze(-2) + c.unsqueeze(-1) * v.unsqueeze(-2)


def pulled(grad: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
    """``grad @ M`` from the factored terms: what reaches p of the gradient at G(p)."""
    avg_s, w, avg_i, c, v = _parts(terms)
    return grad * avg_s - (grad * w).sum(-1, keepdim=True) * avg_i + (grad * c).sum(-1, keepdim=True) * v


class TopKRouting(Rule):
    """DeepLift at a softmax-top-k router's dense routing weights ``G(p)`` (NOTE: [DeepLift at
    top-k routing]): paired rows (an input token's probabilities and its reference's, in dim 0)
    take the exact multipliers; rows that are not paired, G's Jacobian. Applied by
    `ruled_routing`, not through a mapping (deeplift_moe.py runs it)."""

    shares_reference = True

    def forward(self, op, p):
        routing = op.options["routing"]
        y = routing_weights(p, routing)
        rows = _ROWS.get()[0]
        if rows is None or p.ndim != 2 or p.shape[0] != rows:
            return y, (routing_terms(p, p, routing),)
        x, ref = _halves(p)
        return y, (_on_rows(_flat(routing_terms(x, ref, routing), p)),)

    def backward(self, op, saved: Saved, grad):
        return (pulled(grad, saved.extras[0]),)


_RULE = TopKRouting()


def ruled_routing(p: torch.Tensor, routing: Routing) -> torch.Tensor:
    """``routing_weights(p, routing)`` whose backward is `TopKRouting`'s. The tokens of a
    mixture-of-experts block are the paired rows merged with the sequence, ``(R * L, E)``: where the
    call noted that size batch-major (NOTE: [Rows merged with another dim]), they are the rows of
    the op, as the rules mode takes them for its own ops; against a shared reference row such a
    tensor stops the call for DeepLift to run it unshared (`Unshared`), as there."""
    op = ops.Op("moe_routing", functools.partial(routing_weights, routing=routing), (p,), {"routing": routing},
                routing_weights, False)
    rows, reference_grads, shared, notes, seen = _ROWS.get()
    if rows is None or p.ndim != 2 or p.shape[0] == rows or seen is None or not seen.merged:
        return apply_rule(_RULE, op)
    found = merged_rows(seen.merged, rows, (p,))
    if found is None or found[0] != BATCH:  # no rows to pair: the Jacobian
        return apply_rule(_RULE, op)
    if shared:
        raise Unshared
    token = _ROWS.set((found[1], reference_grads, 0, notes, seen))
    try:
        return apply_rule(_RULE, op)
    finally:
        _ROWS.reset(token)
