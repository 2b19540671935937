"""The worst case over perturbed copies: the loop of `sensitivity_max` and the stability metrics
(NOTE: [Neighbourhoods of the stability metrics] in _stability.py)."""

from __future__ import annotations

from typing import Callable

import torch

from .._src import tree as T
from .._src.checks import warn_if_training
from .._src.gradients import model_calls
from .._src.progress import progress
from .._src.sampling import copy_blocks
from ._common import (batch_of, block_rows, draw_copies, flat, n_positional, passthrough, positive_nums, same_structure,
                      stopped, x_foldable)
from ._similarity import result_dtype


def worst_over_copies(attr_fn: Callable, args: tuple, score: Callable, n: int, perturb_func: Callable, radius,
                      argnums, generator, chunk_size, *, calls: tuple = (), widen: bool = True,
                      reads_inputs: bool = True, show_progress: bool = False, desc: str = "") -> torch.Tensor:  # fmt: skip
    """The max over ``n`` copies ``perturb_func(x[, radius][, generator=g])`` of ``score(x0, xs, e0,
    es, outs0, outs)`` (c, B) per example: ``x0`` (B, P) the attributed inputs, ``e0`` (B, Q) the
    attributions, ``outs0[i]`` (B, R_i) the outputs of ``calls[i]`` (widened), at x; ``xs``, ``es``,
    ``outs[i]`` (c, B, ...) the same at a chunk of c copies. ``widen``: inputs and attributions
    widened to at least float32 (`result_dtype`) too, else in their own dtypes. ``reads_inputs``
    False: ``score`` never reads ``xs`` (None), so the copies are not kept; True: ``xs`` is a copy
    taken before ``attr_fn`` runs (an attr_fn that writes into its input cannot change it). x is
    the first block of the first chunk's call (NOTE: [x as copy 0] in _common.py)."""
    cast = _wide if widen else (lambda t: t)
    nums, as_tuple = T.normalize_argnums(argnums)
    idx = positive_nums(nums, len(args))
    warn_if_training(attr_fn)
    selected, _ = T.split_args(args, idx)
    batch = batch_of(selected)
    x = selected if as_tuple else selected[0]
    x0 = cast(flat(x))
    extra = (radius,) if n_positional(perturb_func) > 1 else ()
    pert = draw_copies(perturb_func, x, n, extra=extra, generator=generator, what="perturb_func")
    if not same_structure(pert, x):
        raise ValueError("perturb_func must return perturbed input(s) with the structure of the attributed input(s)")
    lead = int(x_foldable(x, pert))  # NOTE: [x as copy 0] in _common.py
    e0 = outs0 = None
    if not lead:
        e0 = cast(flat(stopped(attr_fn(*T.cloned(args)))))  # an attr_fn writing into its input leaves x as it was
        outs0 = _outputs(calls, args, batch)  # it clones the arguments for each call
    worst = None
    with T.batch_scope(batch):
        spans = T.chunks(n + lead, batch, chunk_size)
        for s, e in progress(show_progress, spans, total=len(spans), desc=desc, unit="chunk"):
            rows = block_rows(x, pert, s, e, lead)
            call = T.split_args(passthrough(args, idx, e - s, batch), idx)[1](rows if as_tuple else (rows,))
            at_x = int(lead and s == 0)  # block 0 is x: score never reads it as a copy
            xs = cast(flat(rows)).reshape(e - s, batch, -1)[at_x:].clone() if reads_inputs else None
            with copy_blocks(s, e, batch, same_draws=True):  # phi(x)'s draws: NOTE: [Seeds of folded copies]
                es = cast(flat(stopped(attr_fn(*call))))
            if es.shape[0] != (e - s) * batch:
                raise ValueError(f"attr_fn returned {es.shape[0]} rows of attributions for {(e - s) * batch} rows of input")
            es = es.reshape(e - s, batch, -1)
            outs = [o.reshape(e - s, batch, -1) for o in _outputs(calls, call, (e - s) * batch)]
            if at_x:
                e0, outs0 = es[0], [o[0] for o in outs]
                es, outs = es[1:], [o[1:] for o in outs]
                if es.shape[0] == 0:
                    continue
            if es.shape[-1] != e0.shape[-1]:
                raise ValueError(
                    f"attr_fn returned {es.shape[-1]} values per perturbed copy but {e0.shape[-1]} per example"
                )
            got = score(x0, xs, e0, es, outs0, outs).amax(0)
            worst = got if worst is None else torch.maximum(worst, got)
    return worst


def _outputs(calls, args: tuple, rows: int) -> list:
    """Each call's output on args as (rows, R) float rows; the model may write into its inputs."""
    outs = []
    with model_calls():
        for c in calls:
            out = _wide(flat(stopped(c(*T.cloned(args)))))
            if out.shape[0] != rows:
                raise ValueError(f"the model gave {out.shape[0]} rows of output for {rows} rows of input")
            outs.append(out)
    return outs


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.to(result_dtype(t.dtype))
