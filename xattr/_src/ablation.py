"""Feature ablation, occlusion and feature permutation: the output's drop when a feature (or a
window) takes its baseline, or its values from another example of the batch.

Shared arguments of the perturbation methods:
  f: model function with one output per example (``xattr.target``), ``xattr.outputs([...])`` for
     K outputs (a K axis after the batch), or one number per batch (Captum's aggregate mode:
     attributions then have one row).
  baselines: what a removed feature becomes: a number, a tensor broadcastable to the input
     (shared or per example), or a tree like ``args[argnums]``; also a call keyword.
  feature_mask: int feature ids per element (NOTE: [Features and coalitions] in perturb.py),
     broadcastable to the input; None makes every element its own feature; also a call keyword.
  argnums: the attributed argument(s); the others pass through (tiled with the copies).
  chunk_size: model rows per call; memory_budget: bytes of perturbed inputs per call when
     chunk_size is None (NOTE: [Perturbed copies in one call]).
  show_progress: a tqdm bar over the model calls.

Bool and integer inputs (token ids) are perturbed exactly, with baselines of their dtype; the
attributions are floating point. All model calls run under ``torch.no_grad`` (inside a
torch.func gradient transform they are recorded, so attributions are differentiable there): the
model is only called, never modified or hooked. docs/perturbation.md describes the engine
(perturb.py), docs/methods/ each method.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Sequence

import optree
import torch

from . import tree as T
from .checks import warn_if_training
from .folded_errors import noted
from .gradients import attribution_fn, detached
from .masks import SMALL, constant, features, held_ids, scatter_features, scatterer
from .nesting import as_new_call, inside_model
from .perturb import Coalitions, baseline_tree, evaluate, outputs_at
from .prepared import Prepared, drops_of
from .paths import WIDE
from .sampling import block_seed, folded_blocks, streams


def feature_ablation(
    f: Callable,
    *,
    baselines: Any = 0.0,
    feature_mask: Any = None,
    argnums: int | Sequence[int] = 0,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool = False,
) -> Callable:
    """Feature ablation: ``a_i = f(x) - f(x with feature(i) set to its baseline)``.

    Every element of a feature gets the feature's drop. F features cost F perturbed copies
    (``F * B`` model rows, plus B for ``f(x)``), evaluated in as few model calls as the memory
    budget allows (Captum: one per copy by default). Exact: equals the explicit loop over
    features (tested). With the default mask and a zero baseline it is complete on affine
    models: the drops sum to ``f(x) - f(0)``.

    Returns:
      ``fn(*args, baselines=..., feature_mask=...)`` like ``args[argnums]`` (a K axis after
      the batch for ``xattr.outputs``).

    Example:
      >>> attr = xattr.feature_ablation(xattr.target(model, 3), feature_mask=segments)(x)
    """
    nums, as_tuple = T.normalize_argnums(argnums)
    prepared = Prepared()  # NOTE: [Prepared calls]

    def fn(*args, baselines=baselines, feature_mask=feature_mask):
        if inside_model():  # NOTE: [Attributions inside a model's forward] in nesting.py
            return as_new_call(fn, args, {"baselines": baselines, "feature_mask": feature_mask})
        warn_if_training(f)
        key = prepared.key(args, nums, show_progress, baselines, feature_mask)
        attr = prepared.serve(key, args)
        if attr is None:

            def setup(selected):
                masks, n = features(selected, feature_mask)
                held, spread = held_ids(masks, n), scatterer(masks, selected)
                finish = spread if held is None else lambda drops: spread(_at_ids(drops, held, n))
                return masks, baseline_tree(selected, baselines, as_tuple), _one_off(n, T.leaves(masks)[0].device, held), finish

            with detached(), noted(f, args):
                attr = prepared.attributions(key, f, args, nums, setup, held=(baselines, feature_mask), chunk_size=chunk_size,
                                             memory_budget=memory_budget, show_progress=show_progress)  # fmt: skip
        return attr if as_tuple else attr[0]

    return attribution_fn(fn, f, detach=False)  # the served path runs under no_grad itself


def _one_off(n: int, device, held: torch.Tensor | None = None) -> torch.Tensor | Coalitions:
    """The n coalitions that each leave one feature out (copy j drops feature j), of feature
    ablation and feature permutation; with ``held``, those of the held ids only (copy j drops
    feature held[j]). Up to `SMALL` entries they are one cached (n, n) tensor;
    beyond, they are made chunk by chunk (`Coalitions`): all n^2 at once would be the largest
    thing the call holds (0.9 GB for a 3x100x100 image with every element its own feature)."""
    ids = torch.arange(n, device=device)
    if held is not None:
        return held[:, None] != ids if len(held) * n <= SMALL else Coalitions(len(held), lambda s, e: (ids != held[s:e, None])[None])
    if n * n <= SMALL:
        return constant(("ablate one", n, device), lambda: ~torch.eye(n, dtype=torch.bool, device=device))
    return Coalitions(n, lambda s, e: (ids != torch.arange(s, e, device=device)[:, None])[None])


def _at_ids(values: torch.Tensor, held: torch.Tensor, n: int) -> torch.Tensor:
    """Values (..., len(held)) of the held ids as (..., n), 0 at the ids no example holds."""
    return values.new_zeros(values.shape[:-1] + (n,)).index_copy(-1, held, values)


def _positions(size: int, window: int, stride: int) -> list[int]:
    """Window starts along one dim: from 0 by ``stride`` until a window reaches the end."""
    return list(range(0, stride * math.ceil((size - window) / stride) + 1, stride))


def _check_window(shape, window, strides) -> tuple[tuple, tuple]:
    shape, window = tuple(shape), tuple(window) if isinstance(window, (tuple, list, torch.Size)) else (window,)
    if len(window) != len(shape):
        raise ValueError(f"sliding window {window} must have one entry per input dim {shape} (without the batch)")
    strides = (strides,) * len(shape) if isinstance(strides, int) else tuple(strides)
    if len(strides) != len(shape):
        raise ValueError(f"strides {strides} must have one entry per input dim {shape}")
    if any(not isinstance(v, int) or isinstance(v, bool) for v in window + strides):
        raise TypeError(f"sliding window {window} and strides {strides} must be ints")
    if any(w > s or w < 1 for w, s in zip(window, shape)):
        raise ValueError(f"sliding window {window} does not fit the input {shape}")
    if any(st < 1 for st in strides):
        raise ValueError(f"strides {strides} must be positive")
    return window, strides


def window_masks(shape: Sequence[int], window: Sequence[int], strides: Sequence[int] | int) -> torch.Tensor:
    """Boolean masks (W, *shape) of every window position of a sliding window over one example.

    ``window`` and ``strides`` cover the trailing dims of ``shape`` (one entry per dim, or an
    int stride for all); windows start at 0 and step by the stride until one reaches the end
    of the dim, which may be cut short by the input's edge (Captum's placement:
    ``ceil((size - window) / stride) + 1`` positions per dim). Positions are in row-major order
    of their corners (the order of occlusion's copies).

    Example:
      >>> masks = xattr.window_masks((1, 8, 8), (1, 4, 4), 2)   # (9, 1, 8, 8) bool, one per position
    """
    shape = tuple(shape)
    window, strides = _check_window(shape, window, strides)
    starts = [_positions(s, w, st) for s, w, st in zip(shape, window, strides)]
    masks = torch.zeros((math.prod(len(r) for r in starts),) + shape, dtype=torch.bool)
    for i, corner in enumerate(itertools.product(*starts)):
        masks[(i,) + tuple(slice(c, c + w) for c, w in zip(corner, window))] = True
    return masks


class _Grid:
    """A sliding window's positions over one input, on the grid of cells its edges cut.

    NOTE: [Occlusion on cells]
    Along each dim the window's starts and (clipped) ends cut the axis into cells; every window
    covers whole cells, so elements of one cell are occluded together and get the same
    attribution. The cells (their product over dims) are occlusion's features: W windows over
    P elements need a (W, cells) coalition matrix, not (W, P) masks, and it is made chunk by
    chunk from each dim's window starts and ends (`Coalitions`, `_Cover`), so even stride 1
    (cells = elements) never holds all W masks. Averaging the drops over the windows that
    cover a cell sums, dim by dim, the drops of the consecutive positions that cover each of
    the dim's cells: no (positions, cells) table either, which for a long axis at stride 1 is
    L x L (1.5 GB as float32 for L = 12,000).
    """

    def __init__(self, shape, window, strides, device):
        self.shape = tuple(shape)
        window, strides = _check_window(self.shape, window, strides)
        # a window spanning a whole dim has one position there, whatever the stride (as in Captum)
        if any(st > w and w < size for st, w, size in zip(strides, window, self.shape)):
            raise ValueError(f"strides {strides} exceed the sliding window {window} over an input of shape {self.shape}: "
                             "elements between windows would never be occluded")
        self.dims, cell_ids = [], []
        for size, w, st in zip(self.shape, window, strides):
            starts = _positions(size, w, st)
            ends = [min(s + w, size) for s in starts]
            cuts = torch.tensor(sorted({0, size, *starts, *ends}), device=device)
            self.dims.append(_Cover(torch.tensor(starts, device=device), torch.tensor(ends, device=device), cuts))
            cell_ids.append(torch.searchsorted(cuts, torch.arange(size, device=device), right=True) - 1)
        self.n_windows = math.prod(d.n_positions for d in self.dims)
        self.n_cells = math.prod(d.n_cells for d in self.dims)
        ids = torch.zeros((), dtype=torch.long, device=device)
        for d, cells in zip(self.dims, cell_ids):
            ids = ids[..., None] * d.n_cells + cells
        self.cell_of = ids  # (*shape): each element's cell

    def covered(self, start: int, stop: int) -> torch.Tensor:
        """(stop - start, cells): which cells windows start..stop-1 cover."""
        idx = torch.arange(start, stop, device=self.cell_of.device)
        out = torch.ones((stop - start, 1), dtype=torch.bool, device=idx.device)
        for d in reversed(self.dims):  # row-major: the last dim varies fastest
            rows = d.covers(idx % d.n_positions)  # (c, cells_d)
            out = (rows[:, :, None] & out[:, None, :]).reshape(stop - start, -1)
            idx = idx // d.n_positions
        return out

    def average(self, drops: torch.Tensor) -> torch.Tensor:
        """(..., W) drops per window -> (..., cells): the mean drop of the windows covering each cell."""
        lead, wide = drops.shape[:-1], WIDE.get(drops.dtype, drops.dtype)  # NOTE: [Sums over chunks] in paths.py
        t = drops.reshape(lead + tuple(d.n_positions for d in self.dims)).to(wide)
        counts = torch.ones((), dtype=wide, device=drops.device)
        for d in self.dims:  # sum over the positions of dim d, which moves the dim's cells to the end
            t = d.sum_over(t, len(lead))
            counts = counts[..., None] * d.counts().to(drops.device, wide)
        return (t / counts.clamp(min=1)).to(drops.dtype).reshape(lead + (self.n_cells,))


class _Cover:
    """One dim of a `_Grid`: its window positions (starts, ends clipped at the edge) and the cells
    ``[cuts[j], cuts[j + 1])`` they cut. Starts and ends both grow with the position, so the
    windows covering cell j are the consecutive positions ``first[j]..last[j]``."""

    def __init__(self, starts: torch.Tensor, ends: torch.Tensor, cuts: torch.Tensor):
        self.starts, self.ends, self.lo, self.hi = starts, ends, cuts[:-1], cuts[1:]
        self.n_positions, self.n_cells = len(starts), len(cuts) - 1
        self.first = torch.searchsorted(ends, self.hi)  # the first window that ends at or after the cell's end
        self.last = torch.searchsorted(starts, self.lo, right=True) - 1  # the last that starts at or before its start
        self.most = int(self.counts().max())  # read once here: a served call's averaging waits for no device

    def covers(self, positions: torch.Tensor) -> torch.Tensor:
        """(len(positions), cells) bool: the cells each window covers."""
        return (self.starts[positions, None] <= self.lo) & (self.hi <= self.ends[positions, None])

    def counts(self) -> torch.Tensor:
        """(cells,): how many windows cover each cell."""
        return (self.last - self.first + 1).clamp(min=0)

    def sum_over(self, t: torch.Tensor, axis: int) -> torch.Tensor:
        """t with its ``axis`` of positions replaced by one of cells, moved to the end: for each cell
        the sum over the windows covering it, one of them per step (at most window / stride)."""
        first, last = self.first.to(t.device), self.last.to(t.device)
        count = last - first + 1
        tail = (1,) * (t.ndim - axis - 1)
        total = None
        for i in range(self.most):
            part = t.index_select(axis, torch.minimum(first + i, last).clamp(min=0))
            part = torch.where((i < count).reshape((-1,) + tail), part, 0)  # a cell covered fewer times adds nothing
            total = part if total is None else total + part
        return total.movedim(axis, -1)


def _per_input(value, n: int, is_item) -> list:
    """One value per input: a single item for all, a tuple of n items, or a tree of items."""
    if is_item(value):
        return [value] * n
    items = optree.tree_leaves(value, is_leaf=is_item, namespace="xattr")
    if len(items) != n or not all(is_item(v) for v in items):
        raise ValueError(f"expected one entry per attributed input tensor ({n}), got {value!r}")
    return items


def _strides_per_input(strides, n: int) -> list:
    """Captum's reading: for several inputs a tuple of n entries is one per input."""
    if n > 1 and isinstance(strides, (tuple, list)) and len(strides) == n:
        if not all(_is_stride(v) for v in strides):
            raise TypeError(f"strides {strides!r}: each input's entry must be an int or a tuple of ints")
        return list(strides)
    return _per_input(strides, n, _is_stride)


def _is_shape(v) -> bool:
    return isinstance(v, (tuple, list, torch.Size)) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)


def _is_stride(v) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or _is_shape(v)


def occlusion(
    f: Callable,
    *,
    sliding_window_shapes,
    strides=1,
    baselines: Any = 0.0,
    argnums: int | Sequence[int] = 0,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool = False,
) -> Callable:
    """Occlusion: a sliding window set to the baseline; each element averages the drops of its windows.

    ``a_i = mean over windows w containing i of (f(x) - f(x with w occluded))`` (Zeiler &
    Fergus 2014). W window positions cost W perturbed copies (``W * B`` model rows), batched
    into few calls; the window positions are Captum's (`window_masks`), the last one along
    each dim cut short by the edge. Exact: equals the explicit loop over windows (tested).

    Args (beyond the shared ones):
      sliding_window_shapes: the window per input (without the batch dim); for several
        inputs a tuple of them in the inputs' leaf order, or a tree like the inputs (each copy
        occludes one window of one input, as in Captum).
      strides: an int or a tuple per dim; for several inputs the same for all, or one per
        input (a tuple of as many entries as inputs is read per input, as in Captum). Each
        stride must be at most its window (no element left unoccluded).

    Example:
      >>> attr = xattr.occlusion(xattr.target(model, 3), sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4))(x)
    """
    nums, as_tuple = T.normalize_argnums(argnums)
    prepared = Prepared()  # NOTE: [Prepared calls]

    def fn(*args, baselines=baselines):
        if inside_model():  # NOTE: [Attributions inside a model's forward] in nesting.py
            return as_new_call(fn, args, {"baselines": baselines})
        warn_if_training(f)
        key = prepared.key(args, nums, show_progress, baselines)
        attr = prepared.serve(key, args)
        if attr is None:
            with detached(), noted(f, args):
                attr = prepared.attributions(key, f, args, nums, lambda selected: setup(selected, baselines), held=(baselines,),
                                             chunk_size=chunk_size, memory_budget=memory_budget, show_progress=show_progress)  # fmt: skip
        return attr if as_tuple else attr[0]

    def setup(selected, baselines):
        leaves = T.leaves(selected)
        shapes = _per_input(sliding_window_shapes, len(leaves), _is_shape) if len(leaves) > 1 else [sliding_window_shapes]
        steps = _strides_per_input(strides, len(leaves))
        grids = [_Grid(x.shape[1:], w, st, x.device) for x, w, st in zip(leaves, shapes, steps)]
        cells = [g.n_cells for g in grids]
        offsets = [sum(cells[:i]) for i in range(len(grids))]
        cell_ids = iter([(o + g.cell_of)[None] for g, o in zip(grids, offsets)])  # cells are the features
        masks = T.tree_map(lambda _: next(cell_ids), selected)
        coalitions = Coalitions(sum(g.n_windows for g in grids), _window_rows(grids, offsets, sum(cells), leaves[0].device))
        spread = scatterer(masks, selected)

        def finish(diff):  # (B, [O,] W_total): window j of input i is one copy
            pieces = torch.split(diff, [g.n_windows for g in grids], dim=-1)
            return spread(torch.cat([g.average(p) for g, p in zip(grids, pieces)], -1))

        return masks, baseline_tree(selected, baselines, as_tuple), coalitions, finish

    return attribution_fn(fn, f, detach=False)  # the served path runs under no_grad itself


def _window_rows(grids, offsets, n_cells: int, device) -> Callable[[int, int], torch.Tensor]:
    """Copies start..stop-1 -> (1, stop - start, cells): all kept but the copy's window."""
    firsts = list(itertools.accumulate([0] + [g.n_windows for g in grids]))

    def rows(start: int, stop: int) -> torch.Tensor:
        keep = torch.ones((stop - start, n_cells), dtype=torch.bool, device=device)
        for g, off, lo, hi in zip(grids, offsets, firsts, firsts[1:]):
            s, e = max(start, lo), min(stop, hi)
            if s < e:
                keep[s - start : e - start, off : off + g.n_cells] = ~g.covered(s - lo, e - lo)
        return keep[None]

    return rows


class _Shuffled:
    """Feature permutation's per-copy baselines: copy j is the batch reordered by perms[j],
    made chunk by chunk (``self[s:e]`` is (e - s, B, ...))."""

    def __init__(self, x: torch.Tensor, perms: torch.Tensor):
        self.x, self.perms = x, perms

    def __getitem__(self, sl: slice) -> torch.Tensor:
        return self.x[self.perms[sl]]


def _permutations(n: int, batch: int, generator, device) -> torch.Tensor:
    """(n, batch): one uniformly random permutation of the batch per feature, never the identity
    (Captum redraws it too: it would leave the feature in place and give zero).

    Rows that are folded copies of a batch (feature permutation inside `smooth` or
    `expectation`: NOTE: [Seeds of folded copies]) are each copy's batch shuffled within itself,
    with the copy's own draws: shuffling across copies mixed an example with its own noisy
    copies, and made the numbers depend on how many copies a chunk held."""
    (stream,) = streams(generator, 1)
    blocks = folded_blocks(batch)
    if blocks is None:
        return _shuffles(n, batch, stream, device)
    b, ids = blocks
    parts = [_shuffles(n, b, None if stream is None else block_seed(stream, i), device) + k * b for k, i in enumerate(ids)]
    return torch.cat(parts, 1)


def _shuffles(n: int, batch: int, seed: int | None, device) -> torch.Tensor:
    """(n, batch) permutations of the batch, none the identity, from ``seed`` (None: torch's global generator)."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    perms = torch.rand((n, batch), generator=gen, dtype=torch.float64).argsort(1)
    ident = torch.arange(batch)
    while True:
        same = (perms == ident).all(1)
        if not same.any():
            return perms.to(device)
        perms[same] = torch.rand((int(same.sum()), batch), generator=gen, dtype=torch.float64).argsort(1)


def feature_permutation(
    f: Callable,
    *,
    feature_mask: Any = None,
    argnums: int | Sequence[int] = 0,
    generator=None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool = False,
) -> Callable:
    """Permutation feature importance: ``a_i = f(x) - f(x with feature(i) shuffled across the batch)``.

    Per feature j one random permutation pi_j of the B examples (never the identity) is drawn;
    example b's copy j takes feature j's elements from example ``pi_j(b)`` and keeps the rest
    (Breiman 2001; Fisher, Rudin & Dominici 2019; Captum's FeaturePermutation). A feature
    spanning several tensors moves as one. F features cost F copies (``F * B`` model rows),
    batched into few calls; the shuffled batches are made chunk by chunk. The attributions
    depend on the whole batch by design: an example's result changes with its batch-mates, and
    a batch of one cannot be permuted. Usually f is a per-example loss or the batch's mean
    loss (aggregate mode: one row of attributions, one importance per feature).

    Args (beyond the shared ones, see the module docstring):
      generator: int seed, ``torch.Generator`` or None (torch's global generator); with a seed
        the permutations, and so the result, are reproducible and do not depend on
        ``chunk_size`` (NOTE: [Explicit randomness]).

    Returns:
      ``fn(*args, feature_mask=...)`` like ``args[argnums]`` (a K axis after the batch for
      ``xattr.outputs``; one row for a model returning one number per batch).

    Example:
      >>> attr = xattr.feature_permutation(loss_per_example, feature_mask=columns, generator=0)(x, y)
    """
    nums, as_tuple = T.normalize_argnums(argnums)

    def fn(*args, feature_mask=feature_mask):
        warn_if_training(f)
        selected = T.split_args(args, nums)[0]
        batch = T.batch_size(selected)
        blocks = folded_blocks(batch)
        examples = batch if blocks is None else blocks[0]  # a folded copy's batch
        if examples < 2:
            raise ValueError(
                "feature_permutation shuffles each feature across the batch, so it needs a batch of at least 2 "
                f"examples (got {examples}); for one example use feature_ablation with a baseline"
            )
        masks, n = features(selected, feature_mask)
        out, aggregate = outputs_at(f, args, batch)
        device = T.leaves(masks)[0].device
        perms, held = _permutations(n, batch, generator, device), held_ids(masks, n)  # one per id: ids keep their draws
        perms = perms if held is None else perms[held]  # copies of the held ids only
        base = T.tree_map(lambda x: _Shuffled(x, perms.to(x.device)), selected)
        outs = evaluate(f, args, nums, masks=masks, baselines=base, coalitions=_one_off(n, device, held), copy_baselines=True,
                        aggregate=aggregate, chunk_size=chunk_size, memory_budget=memory_budget,
                        show_progress=show_progress)  # fmt: skip
        diff = drops_of(out, outs.movedim(1, 0))
        diff = diff if held is None else _at_ids(diff, held, n)
        attr = scatter_features(diff, masks, selected)
        return attr if as_tuple else attr[0]

    return attribution_fn(fn, f)
