"""Shapley interaction indices of sets of features, exact over all 2^F coalitions.

The game is the one of `shapley_values` (v(S): the model with the features outside S at their
baseline), the indices those of NOTE: [Interaction indices as weights on the game] in
interaction_indices.py: SII, STII, FSII and k-SII of every set of 1..order features. The
arguments shared with the other perturbation methods (baselines, feature_mask, argnums,
chunk_size, memory_budget, show_progress, many outputs, aggregate-mode models) are described
in ablation.py.

NOTE: [Interactions from all coalitions]
Every coalition but the full one (which is f(x)) is evaluated once, in one `evaluate` call, as
for exact Shapley values: B (2^F - 1) perturbed rows. Then for each order j and each set T of j
features, I(T) = sum_L gamma_j(|L|, |L & T|) v(L) over the 2^F coalitions L (coded by their
bits), a matrix product of the values (rows[, K], 2^F) with the (2^F, sets) table of weights,
built a block of sets at a time so that it never holds more than `BLOCK` elements; in float64,
rounded to the outputs' dtype at the end. Cost of that sum: 2^F C(F, j) multiply-adds per
example and output, next to 2^F model rows. Each example enumerates the coalitions of its own
features (NOTE: [Each example's own features] in masks.py) and its sets are laid over the F ids
by `spread`, 0 for every set holding an id the example lacks.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from . import tree as T
from .gradients import attribution_fn
from .checks import check_model_fn
from .interaction_indices import Interactions, check_index, combinations, gamma_table, ranks
from .masks import FeatureSet, feature_sets, features
from .perturb import Coalitions, as_floating, evaluate
from .shapley import _prepare
from .shapley_exact import _bits, _check_count, _every

MAX_FEATURES = 20  # 2^20 coalitions: about a million model rows per example, as for shapley_values
BLOCK = 2**22  # the most elements of one block of the weight table (32 MiB in float64)


def shapley_interactions(
    f: Callable,
    *,
    index: str = "k-SII",
    order: int = 2,
    baselines: Any = 0.0,
    feature_mask: Any = None,
    argnums: int | Sequence[int] = 0,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool | None = None,
    max_features: int = MAX_FEATURES,
) -> Callable:
    """Exact Shapley interaction indices of every set of 1..``order`` features.

    ``index``: "SII" (Grabisch & Roubens 1999),
    ``SII(T) = sum_{S subset of N - T} |S|! (F - |S| - |T|)! / (F - |T| + 1)! * D_T v(S)`` with the
    discrete derivative ``D_T v(S) = sum_{L subset of T} (-1)^(|T| - |L|) v(S + L)``; "STII"
    (Shapley-Taylor, Sundararajan et al. 2020): the Moebius dividends below the top order, and
    at the top order each dividend shared equally among its subsets of that size; "FSII"
    (Faith-SHAP, Tsai et al. 2023): the best fit of v by a polynomial of degree ``order`` in
    the Shapley kernel's weights; "k-SII" (Bordt & von Luxburg 2023): SII folded into an
    efficient explanation of order ``order``. Order 1 of each is the Shapley value. STII, FSII
    and k-SII are efficient: the indices of all 1 <= |T| <= order sum to ``f(x) - f(baseline)``.
    NOTE: [Interaction indices as weights on the game] in interaction_indices.py; cost: NOTE:
    [Interactions from all coalitions] (``B (2^F - 1)`` perturbed rows).

    Args (beyond the perturbation methods' shared ones, see ablation.py):
      index: "k-SII", "SII", "STII" or "FSII": any case, "-", "_" and spaces optional ("kSII"),
        or the papers' names "Faith-SHAP" / "FSI", "Shapley-Taylor" / "STI".
      order: the largest set size k explained (2: pairs and main effects).
      show_progress: None (default): a progress bar over the model calls appears once they have
        run for 10 s (2^F rows can take minutes on an image model), nothing on shorter runs;
        True: a bar from the start; False: never.
      max_features: refuse an example holding more features than this (the cost doubles with
        each one); group inputs into features with ``feature_mask``, or estimate with
        ``xattr.shapley_interaction_sampling``.

    Returns:
      ``fn(*args, baselines=..., feature_mask=...)`` giving an `Interactions`:
      ``.values(j)`` the dense symmetric (B, [K,] F, ..., F) indices of order j, ``.main_effects``
      (B, [K,] F), ``.pairs`` (B, [K,] F, F), ``.to_dict()``, ``.top(n)``, ``.total()``; F is the
      largest feature id plus one, K the outputs of ``xattr.outputs``.

    Example:
      >>> inter = xattr.shapley_interactions(xattr.target(model, 1), index="STII", feature_mask=groups)(x)
      >>> inter.pairs[0]  # the first example's (F, F) pair matrix
    """
    check_model_fn(f, "shapley_interactions")
    index = check_index(index, order)
    if isinstance(max_features, bool) or not isinstance(max_features, int) or max_features < 1:
        raise ValueError(f"max_features must be a positive int (the most features one example may hold; the cost "
                         f"is 2^F model rows), got {max_features!r}")  # fmt: skip
    nums, as_tuple = T.normalize_argnums(argnums)

    def fn(*args, baselines=baselines, feature_mask=feature_mask):
        selected = T.split_args(args, nums)[0]
        masks, n = features(selected, feature_mask)
        _check_count(max(s.n for s in feature_sets(masks, n, T.batch_size(selected))), max_features,
                     "shapley_interactions", "the indices with xattr.shapley_interaction_sampling")  # fmt: skip
        selected, masks, n, base, out, aggregate = _prepare(f, args, nums, as_tuple, baselines, feature_mask)
        rows, device = out.shape[0], out.device
        sets = feature_sets(masks, n, rows)  # NOTE: [Each example's own features]
        widest = max(s.n for s in sets)
        every = Coalitions(2**widest - 1, lambda s, e: _every(sets, n, rows, s, e, device), shared=len(sets) == 1)
        vals = as_floating(evaluate(f, args, nums, masks=masks, baselines=base, coalitions=every, aggregate=aggregate,
                                    chunk_size=chunk_size, memory_budget=memory_budget, show_progress=show_progress))  # fmt: skip
        parts = [_exact(index, order, s.pick(vals), s.pick(out), s.n) for s in sets]
        by_order = {j: spread([p[j] for p in parts], sets, n, j, rows).to(vals.dtype) for j in range(1, order + 1)}
        return Interactions(index, order, n, by_order, out, vals[:, 0])  # copy 0: the empty coalition

    return attribution_fn(fn, f)


def _exact(index: str, order: int, vals: torch.Tensor, out: torch.Tensor, n: int) -> dict[int, torch.Tensor]:
    """{j: (rows, [K,] C(n, j))} float64 from the model at the 2^n - 1 coalitions but the full
    one, vals (rows, >= 2^n - 1[, K]) in the order of their codes, and f(x), out (rows[, K])."""
    v = torch.cat([vals[:, : 2**n - 1], out[:, None].to(vals.dtype)], 1).to(torch.float64)
    z = _bits(torch.arange(2**n, device=vals.device), n)[None]  # (1, 2^n, n)
    sizes = z.sum(-1)
    return {j: combine(z, v, sizes, gamma_table(index, n, order, j), combinations(n, j)) for j in range(1, order + 1)}


def combine(z: torch.Tensor, a: torch.Tensor, sizes: torch.Tensor, gamma: torch.Tensor, combos: torch.Tensor) -> torch.Tensor:
    """sum_m a[:, m] gamma[|z_m|, |z_m & T|] for every set T of ``combos`` (C, j): (rows, [K,] C).

    z: coalitions (1 or rows, M, n) bool, sizes their sizes (1 or rows, M); a: (rows, M[, K])
    float64, what each coalition's weight multiplies (v, or a sampled stratum's scaled v)."""
    rows, m = a.shape[:2]
    lead, j = z.shape[0], combos.shape[1]
    combos, gamma = combos.to(z.device), gamma.to(device=z.device, dtype=a.dtype)
    at = a.movedim(1, -1)  # (rows, [K,] M)
    out = a.new_zeros((rows,) + tuple(a.shape[2:]) + (combos.shape[0],))
    step = max(1, BLOCK // max(1, lead * m * max(j, 1)))
    for c in range(0, combos.shape[0], step):
        held = z[:, :, combos[c : c + step]].sum(-1)  # (1 or rows, M, c): |z_m & T|
        g = gamma[sizes[:, :, None], held]  # (1 or rows, M, c)
        out[..., c : c + step] = at.matmul(g[0]) if lead == 1 else torch.einsum("r...m,rmc->r...c", at, g)
    return out


def spread(parts: list[torch.Tensor], sets: list[FeatureSet], n: int, j: int, rows: int) -> torch.Tensor:
    """Each feature set's order-j values over its own features, (its examples, [K,] C(n_s, j)),
    laid over all n ids: (rows, [K,] C(n, j)), 0 at every set holding an id the examples lack."""
    if len(sets) == 1 and sets[0].ids is None:
        return parts[0]
    total = combinations(n, j).shape[0]
    placed = []
    for s, p in zip(sets, parts):
        full = p.new_zeros(p.shape[:-1] + (total,))
        if p.shape[-1]:
            local = combinations(s.n, j)
            ids = torch.arange(n) if s.ids is None else s.ids.cpu()
            full[..., ranks(ids[local]).to(p.device)] = p
        placed.append(full)
    if len(sets) == 1:
        return placed[0]
    order = torch.argsort(torch.cat([s.rows for s in sets]))  # the batch's rows, from the sets' order
    return torch.cat(placed)[order]
