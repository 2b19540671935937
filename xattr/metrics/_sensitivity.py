"""Max-sensitivity (Yeh et al. 2019): the largest relative change of the attributions in a small ball."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .._src.nesting import new_call_inside_model
from ._noise import uniform_noise
from ._worst_case import worst_over_copies


@new_call_inside_model  # NOTE: [Attributions inside a model's forward] in nesting.py
def sensitivity_max(
    attr_fn: Callable,
    *args,
    perturb_func: Callable = uniform_noise,
    perturb_radius: float = 0.02,
    n_perturb_samples: int = 10,
    norm_ord: str | float = "fro",
    argnums: int | Sequence[int] = 0,
    generator=None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``max_s ||phi(x_s) - phi(x)|| / ||phi(x)||`` over perturbed inputs ``x_s``, one number per example.

    The norms are taken over all attributed tensors of an example together; ``||phi(x)|| = 0``
    counts as 1 (Captum's convention).

    Args:
      attr_fn: any attribution function; it is called once (or once per chunk) on x and its
        ``n_perturb_samples`` perturbed copies folded into the batch, x first. A
        seeded one (an int ``generator``) is one function: each copy gets the draws (noise,
        coalitions, baselines, feature permutation) that ``attr_fn`` called on that copy of
        the batch alone gets, which are phi(x)'s (NOTE: [Seeds of folded copies]), so the
        metric is 0 at ``perturb_radius=0``.
      args: its arguments.
      perturb_func: ``perturb_func(x[, perturb_radius][, generator=g]) -> perturbed x`` (the
        radius is passed when the function takes a second positional argument); default
        `uniform_noise`, uniform in the L-infinity ball of radius ``perturb_radius``.
      n_perturb_samples: perturbed copies per example.
      norm_ord: "fro" (the 2-norm of the flattened attributions) or a number for ``vector_norm``.
      argnums: the perturbed (attributed) argument(s); others pass through, tiled.
      generator: int seed or torch.Generator (NOTE: [Explicit randomness]).
      chunk_size: most rows (examples x copies) per call of attr_fn.

    Returns:
      (B,) tensor in the attributions' dtype, as Captum's (lower is more stable); differentiable
      inside a torch.func transform, detached otherwise (NOTE: [Detached results]).

    Example:
      >>> sal = xattr.saliency(xattr.target(model, 3))
      >>> s = xattr.metrics.sensitivity_max(sal, x, perturb_radius=0.02, n_perturb_samples=10, generator=0)  # (B,)
    """
    if not isinstance(n_perturb_samples, int) or n_perturb_samples < 1:
        raise ValueError(f"n_perturb_samples must be a positive int, got {n_perturb_samples!r}")
    ord_ = _ord(norm_ord)

    def score(x0, xs, e0, es, outs0, outs):
        # max_s(d_s / |phi(x)|) is max_s(d_s) / |phi(x)| to the bit: rounding a quotient is monotone
        norm = torch.linalg.vector_norm(e0, ord=ord_, dim=-1)
        dist = torch.linalg.vector_norm(es - e0.unsqueeze(0), ord=ord_, dim=-1)
        return dist / torch.where(norm == 0, torch.ones_like(norm), norm)

    return worst_over_copies(attr_fn, args, score, n_perturb_samples, perturb_func, perturb_radius, argnums,
                             generator, chunk_size, widen=False, reads_inputs=False)  # fmt: skip


def _ord(norm_ord) -> float:
    if norm_ord == "fro":
        return 2.0
    if isinstance(norm_ord, (int, float)) and not isinstance(norm_ord, bool):
        return float(norm_ord)
    raise ValueError(f"norm_ord must be 'fro' or a number (2, 1, float('inf'), ...), got {norm_ord!r}")
