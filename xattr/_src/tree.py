"""Pytree plumbing: choosing attributed arguments and folding copies into the batch axis.

NOTE: [Folding copies into the batch axis]
Every expanded axis (path steps, noise samples, baseline draws) is folded into dim 0 of the
model's input, *copy-major*: n copies of a batch of B rows become n*B rows where row r belongs
to example r % B. The model is called once per chunk of copies, which is the same work a plain
batched torch call does (the "floor"). Anything per-example that travels with the rows (targets,
pass-through arguments with a batch axis) is tiled the same way, so folds compose: a noise
tunnel around integrated gradients gives n_steps * n_samples * B rows and row r is still example
r % B. Measured faster than nested vmap for conv nets on CPU, and identical in value.

NOTE: [Shared pass-through tensors under nesting]
A pass-through argument is per-example when its dim 0 is the batch size B of the *outermost*
call, and only then: the outermost call tiles those and hands every other leaf on unchanged
(a weight vector, a (1, d) scale at B > 1). An inner method of a composition sees S*B folded
rows, and a shared tensor whose length happens to be S*B looks per-example to it: tiled again,
it multiplied a ``w.sum()`` by n_steps or crashed an elementwise use. So each outermost call's
`batch_scope` keeps a record, by identity, of the tensor leaves that a `fold` inside it left
unchanged, and a fold never tiles a recorded leaf: once an enclosing fold has decided that a
tensor is shared, it stays shared however deep the nesting, whatever its length. Everything
else keeps the dim-0 rule, so per-row values an enclosing method makes for its inner call (the
baselines `expectation` draws, a per-example tensor rebuilt by the user's own wrapper) still
follow their rows. Per-call keywords (``baselines=``) are folded, and recorded, the same way.
Cost: a dict entry per untiled leaf per fold, and one check per tiled leaf once the record
is non-empty; calls without pass-through tensors pay nothing. A fold made outside any batch
scope records nothing, so a fold whose result goes to an inner attribution function must run
inside the scope it calls it in (`monte_carlo` and the metrics' `passthrough` do).
At B = 1 the rule cannot tell a shared (1, d) tensor from a per-example one: it is tiled, and a
model that sums over its rows (``w.sum()``) sees n copies. Per-example extras concatenated to
the input at B = 1 are the common case, so xattr keeps the one rule at every batch size (Captum
tiles every tensor with a dim 0, at any B); give a shared tensor without the leading 1 (shape
(d,) broadcasts alike) or bind it in a closure or `functools.partial`.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Sequence

import optree
import torch

Tree = Any


def tree_map(fn: Callable, tree: Tree, *rest: Tree) -> Tree:
    if isinstance(tree, torch.Tensor) and all(isinstance(r, torch.Tensor) for r in rest):
        return fn(tree, *rest)  # one tensor: a leaf of its own (~3 us of optree's walk saved)
    if type(tree) is tuple and _tensors(tree) and all(type(r) is tuple and len(r) == len(tree) and _tensors(r) for r in rest):
        return tuple(fn(*leaf) for leaf in zip(tree, *rest))  # the common case, without flattening
    return optree.tree_map(fn, tree, *rest, namespace="xattr")


def _tensors(items: tuple) -> bool:
    return all(isinstance(v, torch.Tensor) for v in items)


def leaves(tree: Tree) -> list:
    if type(tree) is tuple and _tensors(tree):
        return list(tree)
    return optree.tree_leaves(tree, namespace="xattr")


def signature(args) -> tuple:
    """The shapes, dtypes and devices of args' tensors (other leaves by type)."""
    return tuple((t.shape, t.dtype, t.device) if isinstance(t, torch.Tensor) else type(t) for t in leaves(args))


def normalize_argnums(argnums: int | Sequence[int]) -> tuple[tuple[int, ...], bool]:
    """Returns (argnums as a tuple, whether the caller asked for a tuple)."""
    if isinstance(argnums, int):
        return (argnums,), False
    argnums = tuple(argnums)
    if not argnums or not all(isinstance(a, int) for a in argnums):
        raise TypeError(f"argnums must be an int or a non-empty tuple of ints, got {argnums!r}")
    _check_unique(argnums, argnums)
    return argnums, True


def _check_unique(argnums: tuple, idx: tuple) -> None:
    """A ValueError when two argnums name one argument (as torch.func.grad refuses them): the
    same argument attributed twice gets all zeros in one of its places."""
    if len(idx) > 1 and len(set(idx)) < len(idx):
        twice = next(i for n, i in enumerate(idx) if i in idx[:n])
        raise ValueError(
            f"argnums={argnums!r} names positional argument {twice} more than once; list each "
            "attributed argument once"
        )


def split_args(args: tuple, argnums: tuple[int, ...]) -> tuple[tuple, Callable[[tuple], tuple]]:
    """Pulls the attributed arguments out of args; returns them and a function putting them back."""
    n = len(args)
    idx = tuple(a + n if a < 0 else a for a in argnums)
    for a, i in zip(argnums, idx):
        if not 0 <= i < n:
            raise IndexError(f"argnums={a} but the function was called with {n} positional argument(s)")
    _check_unique(argnums, idx)  # (0, -3) with 3 arguments: normalize_argnums cannot see it
    selected = tuple(args[i] for i in idx)
    for a, x in zip(argnums, selected):
        if isinstance(x, torch.Tensor):
            if x.ndim == 0:
                _not_batched(x, f"attributed argument {a}")
        elif _BATCH.get() is None:  # the outermost split of a call (inner ones see its rows): a tree's leaves
            for leaf in leaves(x):
                if not isinstance(leaf, torch.Tensor) or leaf.ndim == 0:
                    _not_batched(x, f"attributed argument {a}")

    def rebuild(selected: tuple) -> tuple:
        out = list(args)
        for i, value in zip(idx, selected):
            out[i] = value
        return tuple(out)

    return selected, rebuild


def cloned(tree: Tree) -> Tree:
    """The tree with every tensor leaf copied: what a model that writes into its arguments in
    place may be given, leaving the caller's tensors as they were. An empty tensor has no values
    to protect and is passed as it is (so layer methods' stand-ins for unread arguments keep what
    they stand for: `layers.unread_dropped`)."""
    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) and t.numel() else t, tree)


def batch_size(tree: Tree) -> int:
    """The batch size B of the attributed inputs: every leaf a tensor, all sharing dim 0.

    Every method computes it first, so this is where an attributed leaf that is not a batched
    tensor (a float temperature, a 0-d tensor inside an attributed dict) is refused, by name."""
    size = None
    for leaf in leaves(tree):
        if not isinstance(leaf, torch.Tensor) or leaf.ndim == 0:
            _not_batched(tree, "the attributed argument(s)")
        if size is None:
            size = leaf.shape[0]
        elif leaf.shape[0] != size:
            size = -1
    if size is None or size < 0:
        sizes = sorted({leaf.shape[0] for leaf in leaves(tree)})
        raise ValueError(
            "attributed inputs must all share one batch size in dim 0; "
            f"got dim-0 sizes {sizes if sizes else 'none (no tensors)'}"
        )
    return size


def _not_batched(tree: Tree, name: str) -> None:
    """Raises for the first leaf of ``tree`` that is not a tensor with a batch axis, naming it."""
    paths, values, _ = optree.tree_flatten_with_path(tree, namespace="xattr")
    path, leaf = next((p, v) for p, v in zip(paths, values) if not isinstance(v, torch.Tensor) or v.ndim == 0)
    where = f"the leaf at {''.join(f'[{k!r}]' for k in path)} of {name}" if path else name
    what = "a 0-d tensor" if isinstance(leaf, torch.Tensor) else f"a {type(leaf).__name__} ({leaf!r:.40})"
    raise (ValueError if isinstance(leaf, torch.Tensor) else TypeError)(
        f"attributed inputs must be tensors with a batch axis (dim 0), but {where} is {what}. Pass a "
        "number or a shared tensor without a batch axis (a temperature, a weight) as a separate "
        "positional argument left out of argnums, where it passes through unchanged, or bind it "
        "in a closure (functools.partial)"
    )


def fold(tree: Tree, n: int, batch: int | None = None) -> Tree:
    """Tiles every batched tensor leaf n times along dim 0 (copy-major). See the NOTE above.

    With ``batch`` given, only tensors whose dim 0 equals it are tiled (pass-through arguments);
    other leaves (scalars, non-batched tensors, non-tensors) are returned unchanged, and so is a
    tensor that a fold enclosing this one left unchanged (NOTE: [Shared pass-through tensors
    under nesting]).
    """

    if batch is None:
        return tree_map(lambda leaf: _tile(leaf, n), tree)
    scope = _BATCH.get()
    if scope is None:  # outside any call's scope: nothing to record (see the NOTE)
        return tree_map(lambda leaf: _tile(leaf, n) if _batched(leaf, batch) else leaf, tree)

    def tile(leaf):  # NOTE: [Shared pass-through tensors under nesting]
        if not isinstance(leaf, torch.Tensor) or leaf.ndim == 0:
            return leaf
        kept = scope.kept
        if leaf.shape[0] != batch:
            if kept is None:
                kept = scope.kept = {}
            kept[id(leaf)] = leaf  # held: its id stays its own while the call runs
            return leaf
        if kept is not None and kept.get(id(leaf)) is leaf:
            return leaf
        return _tile(leaf, n)

    return tree_map(tile, tree)


def _batched(leaf, batch: int) -> bool:
    return isinstance(leaf, torch.Tensor) and leaf.ndim > 0 and leaf.shape[0] == batch


def _tile(leaf, n: int):
    if not isinstance(leaf, torch.Tensor) or leaf.ndim == 0:
        return leaf
    return leaf.repeat((n,) + (1,) * (leaf.ndim - 1))


def unfold(tree: Tree, n: int) -> Tree:
    """(n*B, ...) -> (n, B, ...) for every leaf."""
    return tree_map(lambda t: t.reshape((n, t.shape[0] // n) + tuple(t.shape[1:])), tree)


def fold_rows(tree: Tree) -> Tree:
    """(n, B, ...) -> (n*B, ...) for every leaf."""
    return tree_map(lambda t: t.reshape((t.shape[0] * t.shape[1],) + tuple(t.shape[2:])), tree)


def expand_like(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Inserts the K (many-outputs) axis into v when the gradient g carries one after the batch."""
    return v.unsqueeze(1) if g.ndim == v.ndim + 1 else v


_BATCH: contextvars.ContextVar = contextvars.ContextVar("xattr_batch", default=None)


class batch_scope:
    """Records the caller's true batch size B for the duration of an attribution call.

    The outermost call wins: inside a noise tunnel around IG, per-example tensors (targets,
    baselines) must have B rows even though the inner method sees S*B folded rows. A class,
    not a generator context manager: it is entered on every attribution call, and the
    generator's machinery cost ~4x as much (a few microseconds that a small model notices).
    The outermost scope is itself the context's value: it also holds ``kept``, the pass-through
    tensors its folds left unchanged (NOTE: [Shared pass-through tensors under nesting]).
    """

    __slots__ = ("batch", "token", "kept")

    def __init__(self, batch: int):
        self.batch, self.token, self.kept = batch, None, None

    def __enter__(self) -> None:
        if _BATCH.get() is None:
            self.kept = None
            self.token = _BATCH.set(self)

    def __exit__(self, *exc) -> None:
        if self.token is not None:
            _BATCH.reset(self.token)
            self.token = self.kept = None


@contextlib.contextmanager
def outside_batch_scope():
    """Runs a nested call as a new outermost call (its rows are its batch), e.g. a foreign
    attribution function whose per-example arguments the caller has already tiled."""
    token = _BATCH.set(None)
    try:
        yield
    finally:
        _BATCH.reset(token)


def true_batch() -> int | None:
    scope = _BATCH.get()
    return None if scope is None else scope.batch


_SHARED: contextvars.ContextVar = contextvars.ContextVar("xattr_shared_reference", default=None)


@contextlib.contextmanager
def shared_reference(rows: int, copies: int = 1):
    """Declares that calls of ``rows + copies`` rows hold ``rows`` inputs (``copies`` copies of
    a batch, copy-major) and one reference row per copy, shared by that copy's inputs
    (DeepLift's NOTE: [Shared reference]); see `expand_shared`."""
    token = _SHARED.set((rows, copies))
    try:
        yield
    finally:
        _SHARED.reset(token)


def expand_shared(t: torch.Tensor) -> torch.Tensor:
    """Inside `shared_reference`: a (rows + copies, ...) tensor as (2 rows, ...), each reference
    row repeated for every input row of its copy, so that per-example selections (a target per
    example) apply row by row. Anything else is returned unchanged."""
    shared = _SHARED.get()
    if shared is None or not isinstance(t, torch.Tensor) or t.ndim == 0 or t.shape[0] != shared[0] + shared[1]:
        return t
    rows, copies = shared
    return torch.cat([t[:rows], repeat_references(t[rows:], rows, copies)])


def repeat_references(refs: torch.Tensor, rows: int, copies: int) -> torch.Tensor:
    """``copies`` reference rows, one per copy, repeated for each of their copy's input rows:
    (rows, ...) in copy-major order (an expanded view for one copy)."""
    if copies == 1:
        return refs.expand((rows,) + tuple(refs.shape[1:]))
    return refs.repeat_interleave(rows // copies, 0)


def tile_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Tiles a per-example tensor (B, ...) to `rows` folded rows (rows must be a multiple of B)."""
    n = copies_of(t, rows)
    return t if n == 1 else t.repeat((n,) + (1,) * (t.ndim - 1))


def copies_of(t: torch.Tensor, rows: int) -> int:
    """How many copies of the batch of a per-example tensor (B, ...) `rows` folded rows hold."""
    b, true = t.shape[0], true_batch()
    if true is not None and b != true:
        raise ValueError(
            f"a per-example tensor has {b} rows but the inputs have a batch of {true}; "
            "its dim 0 must equal the batch size of the inputs"
        )
    if b == 0:  # an empty batch: no rows, no copies to count (rows must be 0 as well)
        if rows:
            raise ValueError(f"a per-example tensor with 0 rows cannot follow a batch of {rows} rows")
        return 1
    if rows % b:
        raise ValueError(
            f"a per-example tensor with {b} rows cannot follow a batch of {rows} rows; "
            "its dim 0 must equal the batch size of the inputs"
        )
    return rows // b


SMALL_SNAPSHOT = 1024  # elements of an integer or bool tensor whose snapshot is a Python list


class _Listed(list):
    """A small integer or bool tensor's values as Python numbers (``tolist``), a `cpu_snapshot`."""


def cpu_snapshot(t: torch.Tensor) -> torch.Tensor | _Listed | None:
    """A copy of a CPU tensor's values, to compare with later (None on other devices).

    A memo keyed on a tensor and its version counter misses writes that bypass the counter
    (through ``.data``, or a numpy array sharing a CPU tensor's memory); comparing values with
    this copy sees them. On a GPU comparing would wait for the device, so there only ``.data``
    writes go unseen. A small integer or bool tensor (a target per example, a feature mask) is
    kept as a Python list, compared without a torch op: its numbers are its bits, and a memo
    checks it on every call, where one op more costs ~5 us (NOTE: [Prepared calls])."""
    if t.device.type != "cpu":
        return None
    if not (t.is_floating_point() or t.is_complex()) and t.numel() <= SMALL_SNAPSHOT:
        return _Listed([t.shape, t.tolist()])
    return t.clone()


def matches_snapshot(t: torch.Tensor, snapshot: torch.Tensor | _Listed) -> bool:
    """Whether t holds its `cpu_snapshot`'s values bit for bit. ``torch.equal`` compares numbers:
    it takes a value flipped from 0.0 to -0.0 for unchanged (a model may tell the zeros apart)
    and one holding a NaN for changed."""
    if type(snapshot) is _Listed:
        return t.shape == snapshot[0] and not (t.is_floating_point() or t.is_complex()) and t.tolist() == snapshot[1]
    return torch.equal(_bits(t), _bits(snapshot))


_INTS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # an integer dtype of each element size


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A float, complex or bool tensor's bits as integers of its element size (the same memory)."""
    if t.is_complex():
        t = torch.view_as_real(t)  # (a lazily conjugated tensor has no bit-level view)
    return t.view(_INTS[t.element_size()]) if t.is_floating_point() or t.dtype == torch.bool else t


def checked_chunk_size(chunk_size):
    """chunk_size as given, when it is None or a positive int; else a ValueError."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size!r}")
    return chunk_size


def chunks(n: int, batch: int, chunk_size: int | None) -> list[tuple[int, int]]:
    """Splits n copies of a batch into (start, stop) ranges of at most chunk_size rows each.

    ``chunk_size`` counts model rows (examples x copies), like Captum's internal_batch_size; a
    chunk always holds at least one whole copy of the batch.
    """
    if checked_chunk_size(chunk_size) is None:
        return [(0, n)]
    per = max(1, chunk_size // max(1, batch))
    return [(s, min(s + per, n)) for s in range(0, n, per)]
