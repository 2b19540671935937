"""Infidelity (Yeh et al. 2019): how badly attributions predict the output's change under perturbations."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .._src import tree as T
from .._src.checks import baselines_like, check_finite, warn_if_training
from .._src.gradients import model_calls
from .._src.nesting import new_call_inside_model
from .._src.budget import copies_per_call
from ._common import attributed, block_rows, draw_copies, model_rows, passthrough, same_structure, x_foldable


def infidelity(
    f: Callable,
    attr_fn_or_attributions: Any,
    perturb_func: Callable,
    *,
    n_perturb_samples: int = 10,
    normalize: bool = False,
    baselines: Any = None,
    argnums: int | Sequence[int] = 0,
    generator=None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
) -> Callable:
    """Infidelity: ``E_I[(I . phi(x) - (f(x) - f(x - I)))^2]``, one number per example.

    Args:
      f: model function with one output per example (``xattr.target`` chooses it).
      attr_fn_or_attributions: an attribution function (called once at the inputs) or
        precomputed attributions shaped like ``args[argnums]``.
      perturb_func: ``perturb_func(x[, baselines][, generator=g])`` returning either
        ``(I, perturbed)`` or only the perturbed input (then ``I = x - perturbed``); called on
        example-major copies (NOTE: [Perturbed copies of each example]). Receives the baselines
        (full tensors like the copies, also for a number) when ``baselines`` is given; see
        `subset_to_baseline` for the ``I`` that suits global attributions.
      n_perturb_samples: perturbations per example.
      normalize: scale the attributions by the optimal ``beta = E[I.phi dF] / E[(I.phi)^2]``
        first (Captum's ``normalize``), which makes the metric blind to the attributions' scale.
      argnums: the attributed argument(s); the others pass through, tiled with the copies.
      generator: int seed or torch.Generator (NOTE: [Explicit randomness]); needs a
        perturb_func with a ``generator`` keyword.
      chunk_size, memory_budget: model rows, or bytes of perturbed inputs, per no-grad call
        (default budget: 2 MiB on CPU, at least 64 MiB on an accelerator; at most 4096 rows).
        Inside a torch.func gradient transform the model calls are differentiated, so
        ``torch.func.grad`` of the metric is its gradient (NOTE: [Detached results]).

    Returns:
      ``fn(*args) -> (B,)`` tensor of infidelities (lower is better).

    Example:
      >>> f = xattr.target(model, 3)
      >>> inf = xattr.metrics.infidelity(f, xattr.saliency(f), xattr.metrics.gaussian_noise(0.1), generator=0)(x)  # (B,)
    """
    if not isinstance(n_perturb_samples, int) or n_perturb_samples < 1:
        raise ValueError(f"n_perturb_samples must be a positive int, got {n_perturb_samples!r}")
    nums, as_tuple = T.normalize_argnums(argnums)
    n = n_perturb_samples

    @new_call_inside_model  # NOTE: [Attributions inside a model's forward] in nesting.py
    def fn(*args):
        warn_if_training(f)
        idx, selected, rebuild, batch, x, phi = attributed(args, nums, as_tuple, attr_fn_or_attributions)
        batched = () if baselines is None else (baselines_like(x, baselines),)
        drawn = draw_copies(perturb_func, x, n, batched=batched, generator=generator, what="perturb_func")
        pert, pert_size = _perturbation(drawn, x)
        iphi = _dot(pert_size, phi)  # (B, n)
        lead = int(x_foldable(x, pert))  # f(x) is block 0 of the first call: NOTE: [x as copy 0] in _common.py
        if not lead:
            with model_calls():
                fx = model_rows(f(*T.cloned(args)))  # a model writing into its input leaves x as it was
            check_finite(fx)
        per = copies_per_call(selected, batch, chunk_size, memory_budget, n + lead)
        outs = []
        with model_calls(), T.batch_scope(batch):
            for s in range(0, n + lead, per):
                e = min(s + per, n + lead)
                rows = block_rows(x, pert, s, e, lead)
                call = passthrough(args, idx, e - s, batch)
                out = model_rows(f(*T.split_args(call, idx)[1](rows if as_tuple else (rows,))))
                check_finite(out)
                outs.append(out.reshape(e - s, batch))
        outs = torch.cat(outs)
        if lead:
            fx, outs = outs[0], outs[1:]
        df = fx[:, None] - outs.T  # (B, n)
        return infidelity_from(iphi, df, normalize)

    return fn


def infidelity_from(iphi: torch.Tensor, df: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Infidelity from the per-sample ``I . phi`` and ``f(x) - f(x - I)``, both (B, n)."""
    iphi, df = iphi.to(df.dtype), df
    if not normalize:
        return ((iphi - df) ** 2).mean(1)
    a, b = (iphi * iphi).sum(1), (iphi * df).sum(1)
    beta = b / torch.where(a == 0, torch.ones_like(a), a)
    return ((beta[:, None] * iphi - df) ** 2).mean(1)


def _perturbation(drawn, x):
    """(perturbed copies, perturbations I), each a tree like x of (B, n, ...) leaves."""
    if same_structure(drawn, x):
        return drawn, T.tree_map(lambda xi, p: xi.unsqueeze(1) - p, x, drawn)
    if isinstance(drawn, (tuple, list)) and len(drawn) == 2 and all(same_structure(d, x) for d in drawn):
        size, pert = drawn
        T.tree_map(_same_shape, size, pert)
        return pert, size
    raise ValueError(
        "perturb_func must return the perturbed input(s), or a pair (perturbation, perturbed input(s)), "
        f"each with the structure of the attributed input(s) {T.optree.tree_structure(x, namespace='xattr')}; got "
        f"{T.optree.tree_structure(drawn, namespace='xattr')}"
    )


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"perturb_func returned a perturbation of shape {tuple(a.shape[1:])} for a perturbed "
                         f"input of shape {tuple(b.shape[1:])}; they must match")  # fmt: skip


def _dot(pert_size, phi) -> torch.Tensor:
    """sum over features of I * phi, per example and copy: (B, n), as one batched matrix product
    per leaf (no (B, n, ...) product in memory)."""
    total = 0
    for i, a in zip(T.leaves(pert_size), T.leaves(phi)):
        dtype = torch.promote_types(i.dtype, a.dtype)
        dtype = torch.int64 if dtype == torch.bool else dtype  # bmm has no bool kernel; a sum of bools is int64
        rows, cols = i.reshape(i.shape[0], i.shape[1], -1).to(dtype), a.reshape(a.shape[0], -1, 1).to(dtype)
        total = total + torch.bmm(rows, cols)[..., 0]
    return total
