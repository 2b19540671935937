"""Many-outputs targets for methods that cannot share work between the outputs.

NOTE: [K outputs as K copies of the batch]
Split IG, Guided IG and Integrated Hessians cannot share one computation between the K outputs
of a many-outputs target: Split IG's alpha* depends on the output's values, Guided IG's path on
its gradient, and each output's interactions need Hessian-vector products of its own gradient.
`each_output` folds the K outputs into the batch instead: the attributed inputs (and the
baselines and pass-through tensors with the batch's rows) are tiled K times, copy-major, and the
method runs once, vectorised over the K B rows, on `OutputPerCopy`: the model restricted to
output k on the k-th copy of the batch (row r of any folding of them: output (r // B) mod K).
Every row is then an independent single-output problem with its own alpha*, path or Hessian
(row k B + b is example b, output k), and the result (K B, ...) comes back as (B, K, ...). The
outer call keeps the batch scope of the B examples (the outermost scope wins), so per-example
targets, xattr.outputs of shape (B, K) included, tile over the copies as everywhere else. The
model's forward runs on all K outputs of each row and keeps one: K times the forward work of
one output, where the methods' own cost (gradients, Hessian-vector products) is K times anyway.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import tree as T
from .checks import baselines_tuple
from .gradients import _rows
from .targets import Outputs


class OutputPerCopy:
    """A many-outputs model function restricted to output k on the k-th of K copies of a batch
    of ``batch`` rows: one output per row (NOTE: [K outputs as K copies of the batch])."""

    def __init__(self, model: Callable, n_outputs: int, batch: int):
        self.model, self.n_outputs, self.batch = model, n_outputs, max(batch, 1)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        out = _rows(self.model(*args, **kwargs), True)
        if out.shape[1] != self.n_outputs:
            raise ValueError(f"the many-outputs target gave {out.shape[1]} outputs per row, then {self.n_outputs}")
        k = torch.arange(out.shape[0], device=out.device) // self.batch % self.n_outputs
        return out.gather(1, k[:, None]).squeeze(1)

    def __repr__(self) -> str:
        return f"OutputPerCopy({self.model!r}, {self.n_outputs}, {self.batch})"


def count_outputs(f: Callable, args: tuple) -> int:
    """K, the number of outputs of a many-outputs target: read off ``xattr.outputs`` when it
    names them, else from one forward call without gradients."""
    t = getattr(f, "t", None)
    if isinstance(t, Outputs) and t.indices is not None:
        return t.indices.shape[-1] if isinstance(t.indices, torch.Tensor) else len(t.indices)
    with torch.no_grad():
        return _rows(f(*args), True).shape[1]


def each_output(f: Callable, single: Callable, args: tuple, argnums, baselines) -> Any:
    """``single(g)(*args, baselines=...)`` for each of the K outputs of the many-outputs target f,
    in one call on K copies of the batch; every result leaf (K B, ...) comes back as (B, K, ...)
    (NOTE: [K outputs as K copies of the batch])."""
    nums, as_tuple = T.normalize_argnums(argnums)
    selected = T.split_args(args, nums)[0]
    batch = T.batch_size(selected)
    idx = {a % len(args) for a in nums}
    k = count_outputs(f, args)
    base = baselines_tuple(selected, baselines, as_tuple)
    base = T.tree_map(lambda b, x: torch.broadcast_to(b, x.shape), base, selected)
    with T.batch_scope(batch):
        folded = tuple(a if i in idx else T.fold(a, k, batch) for i, a in enumerate(args))
        folded = T.split_args(folded, nums)[1](T.fold(selected, k))
        base = T.fold(base, k)
        result = single(OutputPerCopy(f, k, batch))(*folded, baselines=base if as_tuple else base[0])
    return T.tree_map(lambda t: t.reshape((k, batch) + tuple(t.shape[1:])).movedim(0, 1), result)
