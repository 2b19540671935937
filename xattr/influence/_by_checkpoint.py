"""Several checkpoints of a model in one vectorised call.

NOTE: [Checkpoints in one vectorised call]
Each vectorised gradient call has a fixed cost (functorch's batching of every operation,
``functional_call``'s swap of the parameters) that, on a small model, is as large as the
arithmetic. So several checkpoints go through one call: their states are stacked on a leading
dim and an outer ``vmap`` runs over them, around the per-example ``vmap(grad)``. As many go
together as keep (checkpoints x rows) within ``batch_size``, and within ``chunk_size`` when that
is given, where rows is the larger of the test set and a training batch (for the fast
self-influence and features: all the examples). So the rows of one call, and of the test
gradients held across training batches, stay within what ``batch_size`` bounds; where one
batch already takes more than half of ``batch_size`` (the default 256 rows of `tracin` on any
real training set) the checkpoints go one at a time, as before. `tracin_fast` also runs the
test examples and the first training batch as one batch when they take the same loss (no
``test_loss_fn``), fit in ``batch_size`` together, and agree in dtype, device and shape.
`tracin_self_influence` keeps one checkpoint per call: it has no matmul to share the fixed
cost with, and three checkpoints' per-example gradients at once (29 MB on the benchmark) were
slower than one at a time (5.7 against 5.0 ms; fresh pages for the larger buffers on some
calls, 47 MiB of page faults per call in two benchmark runs).

The numbers are those of one call per checkpoint and batch, up to float rounding. On the
benchmark's digits MLP (3 checkpoints, 1000 training and 100 test examples, a 2-core CPU) the
fast TracIn's six calls become one, and its core takes 1.4-1.9 ms instead of 3.5-4.2 ms. The
full TracIn's score matrices stay one matmul per checkpoint (`grams`): a batched ``bmm`` of
(3, 100, 2410) x (3, 2410, 1000) took 9.4 ms there against 7.6 ms for three ``mm`` (the fast
version's Gram matrices, with inner dims of 10 and 32, are one ``bmm``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import vmap


def checkpoints_per_call(n_checkpoints: int, rows: int, batch_size: int | None, chunk_size: int | None) -> int:
    """How many checkpoints one vectorised call evaluates together: as many as keep
    ``checkpoints x rows`` within ``batch_size`` and ``chunk_size`` (those given), at least one.
    See NOTE: [Checkpoints in one vectorised call]."""
    limits = [n for n in (batch_size, chunk_size) if n is not None]
    if not limits:
        return 1
    return max(1, min(n_checkpoints, min(limits) // max(rows, 1)))


def groups(states: list, per_call: int) -> list:
    """``states`` (``[(state, lr), ...]``) in consecutive groups of ``per_call``, each as
    ``([state, ...], [lr, ...])``."""
    out = []
    for i in range(0, len(states), per_call):
        part = states[i:i + per_call]
        out.append(([s for s, _ in part], [lr for _, lr in part]))
    return out


def by_checkpoint(fn: Callable, states: list):
    """``fn(state)`` (a tensor or a tuple of tensors) at each of ``states``, stacked on a new
    leading dim, in one vectorised call (an outer ``vmap`` over the stacked states); one call
    per state where the model cannot run with batched parameters (``.item()`` on a buffer,
    control flow on a parameter's value: vmap raises a RuntimeError)."""
    if len(states) > 1:
        stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
        try:
            return vmap(fn)(stacked)
        except RuntimeError:  # one state at a time below: an error of fn itself is raised there
            pass
    outs = [fn(s) for s in states]
    if isinstance(outs[0], tuple):
        return tuple(torch.stack(parts) for parts in zip(*outs))
    return torch.stack(outs)


def weighted_sum(rates: list, parts) -> torch.Tensor:
    """``sum_c rates[c] * parts[c]``, in order (``parts``: a stacked tensor or a sequence)."""
    total = rates[0] * parts[0]
    for lr, part in zip(rates[1:], parts[1:]):
        total = total + lr * part
    return total


def grams(left: torch.Tensor, right: torch.Tensor) -> list:
    """``[left[c] @ right[c].T for each c]`` of two ``(k, n, P)`` and ``(k, m, P)`` stacks: one
    matmul per checkpoint (a batched ``bmm`` of the same is slower on CPU)."""
    return [a @ b.T for a, b in zip(left, right)]
