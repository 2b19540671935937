"""Max-sensitivity (Yeh et al. 2019): the largest relative change of the attributions in a small ball."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .._src import tree as T
from .._src.checks import warn_if_training
from .._src.nesting import new_call_inside_model
from .._src.sampling import copy_blocks
from ._common import batch_of, draw_copies, flat, n_positional, passthrough, positive_nums, same_structure, stopped
from ._noise import uniform_noise


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
      attr_fn: any attribution function; it is called once at ``args`` and once (or once per
        chunk) on all ``n_perturb_samples * B`` perturbed copies folded into the batch. A
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
      (B,) tensor (lower is more stable); differentiable inside a torch.func transform, detached
      otherwise (NOTE: [Detached results]).
    """
    if not isinstance(n_perturb_samples, int) or n_perturb_samples < 1:
        raise ValueError(f"n_perturb_samples must be a positive int, got {n_perturb_samples!r}")
    ord_ = _ord(norm_ord)
    nums, as_tuple = T.normalize_argnums(argnums)
    idx = positive_nums(nums, len(args))
    warn_if_training(attr_fn)
    selected, rebuild = T.split_args(args, idx)
    batch = batch_of(selected)
    x = selected if as_tuple else selected[0]
    n = n_perturb_samples
    phi0 = stopped(attr_fn(*args))
    ref = flat(phi0)  # (B, P)
    extra = (perturb_radius,) if n_positional(perturb_func) > 1 else ()
    pert = draw_copies(perturb_func, x, n, extra=extra, generator=generator, what="perturb_func")
    if not same_structure(pert, x):
        raise ValueError("perturb_func must return perturbed input(s) with the structure of the attributed input(s)")
    worst = None
    with T.batch_scope(batch):
        for s, e in T.chunks(n, batch, chunk_size):
            rows = T.tree_map(lambda p: p[:, s:e].transpose(0, 1).reshape((-1,) + tuple(p.shape[2:])), pert)
            call = passthrough(args, idx, e - s, batch)
            with copy_blocks(s, e, batch, same_draws=True):  # phi(x)'s draws: NOTE: [Seeds of folded copies]
                phi = stopped(attr_fn(*T.split_args(call, idx)[1](rows if as_tuple else (rows,))))
            got = flat(phi).reshape(e - s, batch, -1)
            if got.shape[-1] != ref.shape[-1]:
                raise ValueError(
                    f"attr_fn returned {got.shape[-1]} values per perturbed copy but {ref.shape[-1]} per example"
                )
            dist = torch.linalg.vector_norm(got - ref.unsqueeze(0), ord=ord_, dim=-1).amax(0)
            worst = dist if worst is None else torch.maximum(worst, dist)
    norm = torch.linalg.vector_norm(ref, ord=ord_, dim=-1)
    return worst / torch.where(norm == 0, torch.ones_like(norm), norm)


def _ord(norm_ord) -> float:
    if norm_ord == "fro":
        return 2.0
    if isinstance(norm_ord, (int, float)) and not isinstance(norm_ord, bool):
        return float(norm_ord)
    raise ValueError(f"norm_ord must be 'fro' or a number (2, 1, float('inf'), ...), got {norm_ord!r}")
