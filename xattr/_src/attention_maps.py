"""Attention rollout, attention flow and gradient-weighted rollout: token-to-token relevance maps.

NOTE: [Attention rollout]
Abnar and Zuidema 2020, "Quantifying Attention Flow in Transformers". Each layer's attention
A_l (B, H, T, T) is fused over heads (mean, max or min) into a (B, T, T) map; optionally the
``discard_ratio`` share of its smallest entries (floor(ratio * T * T) of them per example, ties
in index order) is set to zero; the residual connection is modelled by
    A'_l = (1 - r) A_l + r I        (r = ``residual``, 0.5 in the paper),
and each row of A'_l is divided by its sum (a row that sums to zero, possible only with r = 0,
stays zero). The rollout is the product from the first layer up,
    R = A'_L A'_{L-1} ... A'_1,
so that R[i, j] is the share of token j's input in token i's state at the top: each row sums
to 1, and the row of the [CLS] token (or of any query token) is that token's relevance over
the input tokens. With identity attention in every head and layer the rollout is the identity.

NOTE: [Gradient-weighted attention rollout]
Chefer, Gur and Wolf 2021, "Generic Attention-model Explainability for Interpreting Bi-Modal
and Encoder-Decoder Transformers", self-attention rule. With dA_l the gradient of the target
output with respect to layer l's attention probabilities (NOTE: [Gradients with respect to
attention probabilities] in attention_capture.py),
    Abar_l = mean over heads of (dA_l * A_l)^+,
    R_0 = I,   R_l = R_{l-1} + Abar_l R_{l-1}     (l = 1 .. L in forward order),
and R = R_L. Rows do not sum to 1; R[i, j] >= 0, with 1 + (something) on the diagonal. The
paper's relevance of the input tokens for a classification token is the row R[cls] (its code
for ViT reads R[0, 1:], the patches). One forward and one backward pass (K backward passes for
K outputs).

NOTE: [Attention flow]
Abnar and Zuidema's second method. The layers form a graph with one node per token and layer,
(l, k) for l = 0 (the input) .. L, and an edge from (l, k) down to (l - 1, j) of capacity
A'_l[k, j], the head-fused, residual-mixed, row-normalised map of NOTE: [Attention rollout]. The
flow of input token j into output token i is the maximum flow from (L, i) to (0, j); each
output token's flows are divided by their sum (as in the authors' code), so rows sum to 1.
Where rollout multiplies along every path, flow is limited by the path's narrowest edge. The
maximum flows are exact in float64 (to 1e-12 relative, certified): each (row, j) problem is a
small layered network (NOTE: [Attention flow as layered networks] in max_flow.py; one layer is
A'_1 itself, two layers a sum of minima) solved by scipy's compiled Dinic on integer
capacities in two rounds on the residual network, many problems per call (NOTE: [Maximum
flow by certified integer rounds]). A row costs T maximum flows on 2 (L - 2) T^2 + 4 T edge
entries each. Measured with 6 layers, 4 heads, random maps, one example, on 2 CPU cores
shared with other work (timings vary by about 50%); the former pure-Python Edmonds-Karp,
now the tests' reference, in brackets:
    T = 12:   every row 0.03-0.06 s (1.4 s)                   one row 0.003 s (0.12 s)
    T = 32:   every row 0.8-1.4 s (68.6 s idle, 133 s here)   one row 0.03-0.07 s (3.4 s)
    T = 64:   every row 11 s (not run: ~30 min estimated)     one row 0.25-0.5 s (29 s)
    T = 128:  every row 307 s (not run: ~25 h estimated)      one row 1.3-2.6 s (712 s)
Ask for the rows needed (``query=0`` for [CLS]).
"""

from __future__ import annotations

import numbers
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .attention_capture import attention_gradients, attention_weights
from .gradients import attribution_fn
from .max_flow import layered_flows
from .progress import progress

_FUSIONS = ("mean", "max", "min")


def _square(maps: Sequence[torch.Tensor], method: str) -> None:
    for i, a in enumerate(maps):
        if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"{method} needs self-attention maps (B, H, T, T); attention call {i} gave shape "
                             f"{tuple(a.shape)} (cross-attention?): choose the self-attention modules with layers=")
        if a.shape != maps[0].shape[:1] + a.shape[1:2] + maps[0].shape[2:]:
            raise ValueError(f"{method}: attention call {i} has shape {tuple(a.shape)}, call 0 {tuple(maps[0].shape)}: "
                             "every layer must attend over the same T tokens")


def _steps(maps, head_fusion: str, residual: float, discard_ratio: float):
    """Each layer's A'_l (B, T, T): fused over heads, discarded, mixed with I, rows normalised."""
    for a in maps:
        fused = getattr(a, head_fusion)(dim=1)
        if head_fusion != "mean":
            fused = fused.values
        b, t, _ = fused.shape
        k = int(discard_ratio * t * t)
        if k:
            smallest = fused.reshape(b, t * t).argsort(dim=-1, stable=True)[:, :k]
            fused = fused.reshape(b, t * t).scatter(-1, smallest, 0.0).reshape(b, t, t)
        eye = torch.eye(t, dtype=fused.dtype, device=fused.device)
        step = (1.0 - residual) * fused + residual * eye
        sums = step.sum(-1, keepdim=True)
        yield step / torch.where(sums == 0, torch.ones_like(sums), sums)


def rollout(maps: Sequence[torch.Tensor], *, head_fusion: str = "mean", residual: float = 0.5,
            discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout of given maps, each (B, H, T, T) in forward order (NOTE: [Attention rollout])."""
    _square(maps, "attention_rollout")
    out = None
    for step in _steps(maps, head_fusion, residual, discard_ratio):
        out = step if out is None else step @ out
    return out


def flow(maps: Sequence[torch.Tensor], *, head_fusion: str = "mean", residual: float = 0.5, query=None,
         show_progress: bool = False) -> torch.Tensor:
    """Attention flow of given maps (B, H, T, T) in forward order (NOTE: [Attention flow]):
    (B, T, T), or (B, T) for one ``query`` row."""
    _square(maps, "attention_flow")
    steps = [s.detach().double().cpu().numpy() for s in _steps(maps, head_fusion, residual, 0.0)]
    b_n, t = steps[0].shape[:2]
    rows = list(range(t)) if query is None else [query % t]
    out = np.zeros((b_n, len(rows), t))
    work = progress(show_progress, total=b_n * len(rows) * t, desc="attention flow", unit="flow")
    for b in range(b_n):
        out[b] = layered_flows([s[b] for s in steps], rows, work)
        totals = out[b].sum(-1, keepdims=True)
        out[b] /= np.where(totals > 0, totals, 1.0)
    if work is not None:
        work.close()
    result = torch.from_numpy(out).to(dtype=maps[0].dtype, device=maps[0].device)
    return result[:, 0] if query is not None else result


def gradient_rollout(maps: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s rollout of maps (B, H, T, T) and their gradients (B, H, T, T), or (B, K, H, T, T)
    for K outputs (NOTE: [Gradient-weighted attention rollout])."""
    _square(maps, "attention_gradient_rollout")
    out = None
    for a, g in zip(maps, grads):
        if g.ndim == 5:
            a = a[:, None]
        cam = (g * a).clamp(min=0).mean(dim=-3)  # (B, [K,] T, T)
        if out is None:
            out = torch.eye(cam.shape[-1], dtype=cam.dtype, device=cam.device).expand_as(cam)
        out = out + cam @ out
    return out


def _check_mixing(head_fusion, residual) -> None:
    if head_fusion not in _FUSIONS:
        raise ValueError(f"head_fusion must be one of {_FUSIONS}, got {head_fusion!r}")
    if isinstance(residual, bool) or not isinstance(residual, numbers.Real) or not 0.0 <= float(residual) <= 1.0:
        raise ValueError(f"residual must be a number in [0, 1] (0.5 in the paper), got {residual!r}")


def attention_rollout(model: Callable, *, layers=None, head_fusion: str = "mean", residual: float = 0.5,
                      discard_ratio: float = 0.0) -> Callable:
    """Attention rollout (Abnar & Zuidema 2020): token-to-token relevance through all layers.

    See NOTE: [Attention rollout] in ``xattr/_src/attention_maps.py``; the attention maps are
    read as in `xattr.attention_weights` (NOTE: [Capturing attention probabilities]).

    Args:
      model: an ``nn.Module`` or a function of the model's arguments; used as it is.
      layers: None for every attention call; or modules, names or an ``nn.Module`` class whose
        attention calls count (each must be self-attention over the same T tokens).
      head_fusion: "mean" (the paper), "max" or "min" over the heads.
      residual: the weight r of the identity in ``(1 - r) A + r I``, 0 <= r <= 1.
      discard_ratio: the share of each fused map's smallest entries set to zero, 0 <= ratio < 1.

    Returns:
      ``fn(*args, **kwargs)`` giving the rollout ``(B, T, T)`` (rows sum to 1); row i is query
      token i's relevance over the input tokens (`xattr.query_row` reads it).

    Example:
      >>> cls_relevance = xattr.query_row(xattr.attention_rollout(bert)(ids, mask), 0)
    """
    _check_mixing(head_fusion, residual)
    if (isinstance(discard_ratio, bool) or not isinstance(discard_ratio, numbers.Real)
            or not 0.0 <= float(discard_ratio) < 1.0):  # fmt: skip
        raise ValueError(f"discard_ratio must be a number in [0, 1), got {discard_ratio!r}")
    weights = attention_weights(model, layers=layers)

    def fn(*args, **kwargs):
        return rollout(weights(*args, **kwargs), head_fusion=head_fusion, residual=float(residual),
                       discard_ratio=float(discard_ratio))  # fmt: skip

    return attribution_fn(fn, model)


def attention_flow(model: Callable, *, layers=None, head_fusion: str = "mean", residual: float = 0.5, query=None,
                   show_progress: bool = False) -> Callable:
    """Attention flow (Abnar & Zuidema 2020): token relevance as maximum flows through the layers.

    See NOTE: [Attention flow] in ``xattr/_src/attention_maps.py``. The same layer maps as
    `attention_rollout` (without discarding); each output token's flows are normalised to sum 1.
    Exact maximum flows by scipy's Dinic, T per row and example (NOTE: [Maximum flow by certified
    integer rounds] in ``xattr/_src/max_flow.py``): about 1 s for all rows of a 32-token, 6-layer
    example, about 2 s for one row at 128 tokens; pass ``query`` for one row.

    Args:
      model, layers, head_fusion, residual: as for `attention_rollout`.
      query: None for every output token's row, or an int (0: [CLS]) for that row alone.
      show_progress: a progress bar over the maximum flows (needs tqdm).

    Returns:
      ``fn(*args, **kwargs)`` giving ``(B, T, T)``, or ``(B, T)`` with ``query``.

    Example:
      >>> cls_flow = xattr.attention_flow(bert, query=0)(ids, mask)
    """
    _check_mixing(head_fusion, residual)
    if query is not None and (isinstance(query, bool) or not isinstance(query, numbers.Integral)):
        raise ValueError(f"query must be None or an int (the output token's row), got {query!r}")
    weights = attention_weights(model, layers=layers)

    def fn(*args, **kwargs):
        maps = weights(*args, **kwargs)
        t = maps[0].shape[-1] if maps else 0
        if query is not None and not -t <= query < t:
            raise ValueError(f"query must lie in [-{t}, {t}) for {t} tokens, got {query}")
        return flow(maps, head_fusion=head_fusion, residual=float(residual), query=query, show_progress=show_progress)

    return attribution_fn(fn, model)


def attention_gradient_rollout(f: Callable, *, layers=None) -> Callable:
    """Gradient-weighted attention rollout (Chefer, Gur & Wolf 2021): relevance maps for a target.

    See NOTE: [Gradient-weighted attention rollout] in ``xattr/_src/attention_maps.py``.

    Args:
      f: a model function with one output per example (``xattr.target(model, t)``), or K outputs
        (``xattr.target(model, xattr.outputs([...]))``: one map per output, K backward passes).
      layers: as for `attention_rollout`.

    Returns:
      ``fn(*args, **kwargs)`` giving ``R`` (B, T, T), or (B, K, T, T) for K outputs; detached.

    Example:
      >>> rel = xattr.query_row(xattr.attention_gradient_rollout(xattr.target(vit, 3))(images), 0)
    """
    grads = attention_gradients(f, layers=layers)

    def fn(*args, **kwargs):
        maps, ds = grads(*args, **kwargs)
        return gradient_rollout(maps, ds)

    return attribution_fn(fn, f)


def query_row(maps: torch.Tensor, query=0) -> torch.Tensor:
    """Row ``query`` of token-to-token maps (..., T, T): that token's relevance over the tokens.

    ``query`` is an int (0: the [CLS] token; -1: the last), or an integer tensor with one index
    per example (B,) (the last real token of each padded sentence, for a decoder). Returns (..., T).

    Example:
      >>> cls_rel = xattr.query_row(xattr.attention_rollout(vit)(images), 0)   # (B, T): [CLS]'s row
    """
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"query_row needs a tensor of maps (..., T, T), got {type(maps).__name__}")
    if maps.ndim < 2 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"query_row needs maps (..., T, T), got shape {tuple(maps.shape)}")
    t = maps.shape[-1]
    if isinstance(query, torch.Tensor):
        integer = not query.dtype.is_floating_point and not query.dtype.is_complex and query.dtype != torch.bool
        if not integer or query.ndim != 1 or query.shape[0] != maps.shape[0]:
            raise ValueError(f"query as a tensor must hold one integer index per example, shape ({maps.shape[0]},); "
                             f"got {query.dtype} of shape {tuple(query.shape)}")
        if ((query < -t) | (query >= t)).any():
            raise ValueError(f"query indices must lie in [-{t}, {t}), got {query.tolist()}")
        idx = (query % t).to(maps.device).reshape((-1,) + (1,) * (maps.ndim - 2) + (1,))
        return maps.gather(-2, idx.expand(*maps.shape[:-2], 1, t)).squeeze(-2)
    if isinstance(query, bool) or not isinstance(query, numbers.Integral) or not -t <= query < t:
        raise ValueError(f"query must be an int in [-{t}, {t}) or a tensor of one index per example, got {query!r}")
    return maps[..., int(query), :]


_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")


def tokens_to_image(rel: torch.Tensor, grid_hw, *, prefix: int = 1, size=None, mode: str = "bilinear") -> torch.Tensor:
    """A vision transformer's per-token relevance (..., T) as a patch grid (..., h, w).

    The first ``prefix`` tokens ([CLS], register or distillation tokens) are dropped and the
    other ``h * w`` laid out row by row (ViT's patch order). With ``size`` (an int or (H, W))
    the grid is resized to the image with ``F.interpolate(..., mode=mode)``.

    Example:
      >>> heat = xattr.tokens_to_image(cls_rel, (14, 14), size=224)        # (B, 224, 224)
    """
    if (not isinstance(grid_hw, (tuple, list)) or len(grid_hw) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in grid_hw)):  # fmt: skip
        raise ValueError(f"grid_hw must be two positive ints (patch rows, patch columns), got {grid_hw!r}")
    if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
        raise ValueError(f"prefix must be a non-negative int (the tokens before the patches), got {prefix!r}")
    if not isinstance(rel, torch.Tensor):
        raise TypeError(f"tokens_to_image needs a relevance tensor (..., T), got {type(rel).__name__}")
    if size is not None and not (isinstance(size, int) and not isinstance(size, bool) and size > 0) and not (
            isinstance(size, (tuple, list)) and len(size) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size)):  # fmt: skip
        raise ValueError(f"size must be None, a positive int or two positive ints (H, W), got {size!r}")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES} (F.interpolate's modes for images), got {mode!r}")
    h, w = grid_hw
    if rel.ndim < 1 or rel.shape[-1] != prefix + h * w:
        raise ValueError(f"tokens_to_image: {prefix} prefix token(s) + a {h}x{w} grid is {prefix + h * w} tokens, "
                         f"but the relevance has {rel.shape[-1] if rel.ndim else 0} (shape {tuple(rel.shape)})")
    grid = rel[..., prefix:].reshape(*rel.shape[:-1], h, w)
    if size is None:
        return grid
    size = (size, size) if isinstance(size, int) else tuple(size)
    lead = grid.shape[:-2]
    flat = grid.reshape(-1, 1, h, w)
    corners = {} if mode in ("nearest", "area") else {"align_corners": False}
    up = F.interpolate(flat, size=size, mode=mode, **corners)
    return up.reshape(*lead, *size)
