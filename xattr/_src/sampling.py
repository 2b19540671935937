"""Explicit randomness: seeded streams and per-example draws, per-input numbers, baseline
distributions. The Monte Carlo transforms built on them (the noise tunnel, expectation, gradient
SHAP's samples) are in noise_tunnel.py.

NOTE: [Explicit randomness]
Every stochastic transform takes ``generator``: an int seed, a ``torch.Generator``, or None for
torch's global generator. From it xattr derives one independent stream per random quantity (each
input tensor's noise, baseline indices, path alphas) and, within a stream, one generator per
example (seeded by the stream and the example's index). So with the same seed an example gets
the same draws whatever the batch size it is in, and all draws are made before chunking, so
the chunk size never changes them either. With generator=None draws come from the global
generator in one call and batch-size invariance is not promised.

NOTE: [Seeds of folded copies]
A transform that folds S copies of the batch into one call of an inner attribution function
(the noise tunnel, expectation, sensitivity) hands it rows that are copies, not examples. A
seeded stochastic inner method (gradient SHAP, Shapley sampling, LIME, KernelSHAP) would seed
by its row index, so which draws a copy got depended on how the copies were chunked, and on the
batch size. `copy_blocks` therefore declares, for the inner call, that its rows are blocks of
the true batch B, each block with an id that names the copy (and, nested, the copy of a copy);
`row_seeds` seeds row i from (stream, example i mod B, its block's id). Outside any fold the
id is 0 and the seeds are the plain per-example ones: a method's numbers do not change. Feature
permutation, whose draws belong to the batch and not to an example, shuffles each block within
itself with the block's own seed (`folded_blocks`, `block_seed`).

The noise tunnel and expectation average over copies, so each copy has its own id. Sensitivity
compares ``phi(x_s)`` with ``phi(x)`` for one seeded function ``phi``: its copies keep the
caller's ids (``same_draws``) and draw what ``phi(x_s)`` alone draws, phi(x)'s (own draws
scored the method's noise: 0.1 to 1.8 at a perturbation radius of 0).

NOTE: [Per-input numbers]
``stdevs`` (one noise level per attributed tensor) is one number for all; a list or tuple of
numbers, one per tensor in the inputs' *leaf order* (optree's: a dict's keys sorted, so for
``{"z": ..., "a": ...}`` the first number is "a"'s); or a tree like the attributed inputs
(a dict keyed like the input), where a number may also stand for a whole subtree.

NOTE: [Baseline distributions]
A distribution of baselines (gradient SHAP, DeepLift SHAP, `expectation`) is a tree like the
attributed inputs of tensors (N, ...) whose row k is one baseline for every tensor together.
A number is a one-row distribution of that value, whole or at one leaf; a leaf with one row
(a number, or a tensor (1, ...)) is shared by every row of the others.
"""

from __future__ import annotations

import contextvars
import math
import numbers

import torch

from . import tree as T


def torch_generator(generator, device=None) -> torch.Generator | None:
    """``generator`` as torch's samplers take it: an int seed becomes a ``torch.Generator`` (on
    ``device``) seeded with it (modulo 2^64, as ``manual_seed`` reads a negative one); a
    Generator or None as it is (NOTE: [Explicit randomness])."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, numbers.Integral):
        raise TypeError(f"generator must be an int seed, a torch.Generator or None, got {type(generator).__name__}")
    made = torch.Generator() if device is None else torch.Generator(device=device)
    return made.manual_seed(int(generator) % 2**64)


def streams(generator, n: int) -> list:
    """n independent stream seeds derived from `generator` (None: torch's global generator)."""
    if generator is None:
        return [None] * n
    if isinstance(generator, bool) or not isinstance(generator, (int, torch.Generator)):
        raise TypeError(f"generator must be an int seed, a torch.Generator or None, got {type(generator).__name__}")
    if isinstance(generator, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    else:
        seed = generator
    return [(seed * 1_000_003 + 0x9E3779B1 * (i + 1)) % 2**62 for i in range(n)]


_COPIES: contextvars.ContextVar = contextvars.ContextVar("xattr_copy_blocks", default=None)  # (B, block ids)


def _mix(parent: int, copy: int) -> int:
    return (parent * 0x100000001B3 + (copy + 1) * 0xC2B2AE3D27D4EB4F) % 2**61


class copy_blocks:
    """Declares that the inner call's rows are copies ``start..stop`` (copy-major, as `T.fold`
    lays them out) of the caller's ``rows`` rows (NOTE: [Seeds of folded copies]); with
    ``same_draws`` every copy keeps the caller's ids, so draws, as if it were called alone."""

    __slots__ = ("ids", "token")

    def __init__(self, start: int, stop: int, rows: int, *, same_draws: bool = False):
        outer = _COPIES.get()
        if outer is None or rows != outer[0] * len(outer[1]):
            outer = (rows, (0,))  # the caller's rows are a batch of examples
        self.ids = (outer[0], tuple(q if same_draws else _mix(q, p) for p in range(start, stop) for q in outer[1]))
        self.token = None

    def __enter__(self):
        self.token = _COPIES.set(self.ids)

    def __exit__(self, *exc) -> None:
        _COPIES.reset(self.token)


def folded_blocks(rows: int) -> tuple[int, tuple[int, ...]] | None:
    """(B, the blocks' ids) when ``rows`` are folded copies of a batch of B, copy-major, each
    block a copy with its own id (NOTE: [Seeds of folded copies]); None for a batch of examples."""
    blocks = _COPIES.get()
    return blocks if blocks is not None and rows == blocks[0] * len(blocks[1]) else None


def block_seed(stream: int, block: int) -> int:
    """The seed of one folded copy's draws that are shared by its rows (a permutation of its batch)."""
    return (stream + 0x9E3779B97F4A7C15 * block) % 2**63


def row_seeds(stream: int, rows: int) -> list[int]:
    """One generator seed per row of a draw for ``rows`` rows: the example's seed in its stream,
    moved by the row's copy id when the rows are folded copies (NOTE: [Seeds of folded copies])."""
    blocks = _COPIES.get()
    if blocks is None or rows != blocks[0] * len(blocks[1]):
        return [(stream + 0x51ED27 * (i + 1)) % 2**63 for i in range(rows)]
    b, ids = blocks
    return [(stream + 0x51ED27 * (i % b + 1) + 0x9E3779B97F4A7C15 * ids[i // b]) % 2**63 for i in range(rows)]


def per_example(stream, out: torch.Tensor, fill, seeds: list[int] | None = None) -> torch.Tensor:
    """Fills ``out`` (B, ...) in place, example i from its own generator seeded by (stream, i).

    torch's bulk samplers do not have the prefix property (the values drawn for the first
    elements depend on the total size drawn), so batch-size invariance needs one generator per
    example. ``fill(view, generator)`` samples into a view in place; with no stream the whole
    buffer is filled from the global generator in one call. When ``out`` holds some of the
    batch's examples only (a group of them: NOTE: [Each example's own features]), ``seeds`` are
    theirs: the batch's `row_seeds` at their positions, so each draws what it would beside the
    others.
    """
    if stream is None:
        fill(out, None)
        return out
    for i, seed in enumerate(row_seeds(stream, out.shape[0]) if seeds is None else seeds):
        fill(out[i], torch.Generator(device=out.device).manual_seed(seed))
    return out


def normal_like(x: torch.Tensor, n: int, stdev: float, stream) -> torch.Tensor | None:
    """(n, B, ...) Gaussian noise of std `stdev` for x (B, ...); None when stdev is 0."""
    if stdev == 0:
        return None
    z = torch.empty((x.shape[0], n) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    return per_example(stream, z, lambda v, g: v.normal_(0.0, stdev, generator=g)).transpose(0, 1)


def noisy_rows(x: torch.Tensor, noise: torch.Tensor | None, start: int, stop: int) -> torch.Tensor:
    """Copies start..stop of x (B, ...) plus their noise, folded to ((stop - start) * B, ...)."""
    if noise is None:
        return T.fold(x, stop - start)
    part = noise[start:stop]  # example-major in memory (drawn per example): a plain add would keep that
    if torch._C._functorch.maybe_current_level() is not None or part.requires_grad or x.requires_grad:
        return T.fold_rows(x.unsqueeze(0) + part)
    out = torch.empty(part.shape, dtype=torch.result_type(x, part), device=x.device)  # copy-major: the fold is a view
    return T.fold_rows(torch.add(x.unsqueeze(0), part, out=out))


def uniform_rows(batch: int, n: int, stream, like: torch.Tensor) -> torch.Tensor:
    """(n, B) uniform draws on [0, 1)."""
    u = torch.empty((batch, n), dtype=like.dtype, device=like.device)
    return per_example(stream, u, lambda v, g: v.uniform_(0.0, 1.0, generator=g)).T


def index_rows(batch: int, n: int, high: int, stream, device) -> torch.Tensor:
    """(n, B) integer draws in [0, high)."""
    idx = torch.empty((batch, n), dtype=torch.long, device=device)
    return per_example(stream, idx, lambda v, g: v.random_(0, high, generator=g)).T


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) or (isinstance(v, torch.Tensor) and v.ndim == 0 and not v.is_complex())


def _per_leaf(value, selected: tuple, as_tuple: bool, name: str = "stdevs") -> list[float]:
    """One number per attributed tensor, in leaf order (NOTE: [Per-input numbers]); each a finite
    number >= 0 (a standard deviation)."""
    return _non_negative(_leaf_numbers(value, selected, as_tuple, name), value, name)


def _non_negative(values: list[float], given, name: str) -> list[float]:
    bad = [v for v in values if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise ValueError(f"{name} must be finite and >= 0 (a noise standard deviation), got {given!r}")
    return values


def _leaf_numbers(value, selected: tuple, as_tuple: bool, name: str) -> list[float]:
    n = len(T.leaves(selected))
    if _is_number(value):
        return [float(value)] * n
    flat = isinstance(value, (list, tuple)) and all(_is_number(v) for v in value)
    if flat and len(value) == n:
        return [float(v) for v in value]
    tree = value if as_tuple else (value,)
    try:  # a tree like the attributed inputs, or a prefix of it (one number for a whole argument)
        given = T.optree.tree_leaves(tree, namespace="xattr")
        subtrees = T.optree.tree_structure(tree, namespace="xattr").flatten_up_to(selected)
    except (ValueError, TypeError):
        given = None
    if given is None or not all(_is_number(v) for v in given):
        if flat:
            raise ValueError(
                f"{name} has {len(value)} entries but there are {n} attributed input tensors (a sequence gives one "
                "number per tensor in the inputs' leaf order: a dict's sorted keys)"
            )
        raise ValueError(
            f"{name} must be one number, a sequence of {n} number(s) (one per attributed input tensor, in leaf order: "
            f"a dict's sorted keys), or a tree like the attributed inputs with a number for each tensor; got {value!r}"
        )
    return [float(v) for v, sub in zip(given, subtrees) for _ in T.leaves(sub)]


def _narrowest(xs: list, method: str) -> torch.Tensor:
    """The input whose dtype every other input's promotes from (float16 < float32 < float64)."""
    for x in xs:
        if all(torch.promote_types(x.dtype, y.dtype) == y.dtype for y in xs):
            return x
    raise TypeError(
        f"{method} interpolates every attributed tensor with one path position per sample, but their dtypes "
        f"{sorted({str(y.dtype) for y in xs})} have no narrowest one (float16 beside bfloat16); give them one dtype"
    )


def distribution(selected: tuple, baselines, as_tuple: bool, *, method: str, like_inputs: bool = True):
    """A baseline distribution as a tuple of trees like ``selected``, leaves (N, ...), and N.

    NOTE: [Baseline distributions]. ``baselines`` is a number, a tensor (one attributed tensor),
    or a tree like ``args[argnums]`` (a tuple of them for tuple argnums) of tensors and numbers.
    With ``like_inputs`` each row must have its input's per-example shape and the tensors take
    its dtype and device; without, rows are left as given (the inner method checks them) and
    only numbers are made, in the input's dtype.
    """
    xs = T.leaves(selected)
    treedef = T.optree.tree_structure(selected, namespace="xattr")
    if _is_number(baselines) or (isinstance(baselines, torch.Tensor) and len(xs) == 1):
        given = [baselines] * len(xs)
    else:
        try:
            given = treedef.flatten_up_to(baselines if as_tuple else (baselines,))
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{method}: baselines must be a number, or tensors (N, ...) (or numbers) in a tree like the attributed "
                f"inputs, which have {len(xs)} tensor(s): {err}"
            ) from None
    for x, d in zip(xs, given):
        if _is_number(d):
            continue
        if not isinstance(d, torch.Tensor) or d.ndim == 0:
            raise TypeError(f"{method}: a baseline distribution's leaves are tensors (N, ...) or numbers, got {d!r}")
        if like_inputs and tuple(d.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(
                f"{method}: baselines are a distribution of shape (N, {', '.join(map(str, x.shape[1:]))}) "
                f"matching one input example; got {tuple(d.shape)}"
            )
    sizes = sorted({d.shape[0] for d in given if not _is_number(d)} - {1})
    if len(sizes) > 1:
        raise ValueError(f"{method}: every baseline tensor needs the same number of rows N (or one row); got {sizes}")
    if any(not _is_number(d) and d.shape[0] == 0 for d in given):
        raise ValueError(f"{method} averages over the baseline distribution's rows, and it has none (N = 0): pass at least one row")
    n = sizes[0] if sizes else 1
    rows = []
    for x, d in zip(xs, given):
        if _is_number(d):
            d = torch.full((1,) + tuple(x.shape[1:]), float(d), dtype=x.dtype, device=x.device)
        elif like_inputs:
            d = d.to(dtype=x.dtype, device=x.device)
        rows.append(d.expand((n,) + tuple(d.shape[1:])) if d.shape[0] != n else d)
    return T.optree.tree_unflatten(treedef, rows), n
