"""Axiom and invariance checkers for attribution functions, in the spirit of ``jax.test_util.check_grads``.

Every checker returns None when the property holds and raises AssertionError with a message
saying which example/feature broke it and by how much. A precondition the caller must provide
(equal features for symmetry, equal models for implementation invariance) raises ValueError.
``atol``/``rtol`` default by dtype (`default_tolerance`); quadrature and Monte Carlo errors are
the caller's to budget: pass looser tolerances for few integration steps or non-smooth models.

Shared arguments:
  attr_fn: an attribution function ``attr_fn(*args) -> attributions`` (any xattr method).
  args: positional arguments of attr_fn (and of the model); dim 0 of every tensor whose first
    dimension equals the batch size is the batch axis.
  argnums: which argument(s) are attributed (as in the method), int or tuple of ints.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import optree
import torch

_TOL = {torch.float16: (1e-3, 1e-2), torch.bfloat16: (1e-2, 5e-2), torch.float32: (1e-5, 1e-4), torch.float64: (1e-9, 1e-7)}


def default_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) used when a checker is given none: loose enough for reordered sums only."""
    return _TOL.get(dtype, (1e-5, 1e-4))


def _tols(t: torch.Tensor, atol, rtol) -> tuple[float, float]:
    da, dr = default_tolerance(t.dtype)
    return (da if atol is None else atol), (dr if rtol is None else rtol)


def _flatten(tree):
    return optree.tree_flatten_with_path(tree, namespace="xattr")


def assert_trees_close(actual: Any, expected: Any, *, atol=None, rtol=None, what: str = "attributions") -> None:
    """Asserts two trees of tensors have one structure, equal shapes and dtypes, and close values."""
    pa, la, sa = _flatten(actual)
    _, le, se = _flatten(expected)
    if sa != se:
        raise AssertionError(f"{what}: structure {sa} differs from the expected {se}")
    for path, a, e in zip(pa, la, le):
        where = f"{what}{''.join(f'[{p!r}]' for p in path)}"
        if isinstance(a, torch.Tensor) != isinstance(e, torch.Tensor):
            raise AssertionError(f"{where}: {type(a).__name__} where {type(e).__name__} is expected")
        if not isinstance(a, torch.Tensor):
            if type(a) is not type(e) or a != e:
                raise AssertionError(f"{where}: {a!r} != expected {e!r}")
            continue
        if a.shape != e.shape:
            raise AssertionError(f"{where}: shape {tuple(a.shape)} differs from the expected {tuple(e.shape)}")
        at, rt = _tols(e, atol, rtol)
        torch.testing.assert_close(a, e, atol=at, rtol=rt, equal_nan=False, msg=lambda m: f"{where}: {m}")


def _argnums(argnums) -> tuple[tuple[int, ...], bool]:
    return ((argnums,), False) if isinstance(argnums, int) else (tuple(argnums), True)


def _selected(args: tuple, argnums):
    nums, as_tuple = _argnums(argnums)
    sel = tuple(args[i] for i in nums)
    return sel if as_tuple else sel[0]


def _batch_size(tree) -> int:
    sizes = {t.shape[0] for t in optree.tree_leaves(tree, namespace="xattr") if isinstance(t, torch.Tensor) and t.ndim}
    if len(sizes) != 1:
        raise ValueError(f"attributed inputs must share one batch size in dim 0, got {sorted(sizes)}")
    return sizes.pop()


def _rows(args: tuple, batch: int, index) -> tuple:
    """Selects rows of every tensor whose dim 0 is the batch; other leaves pass unchanged."""
    pick = lambda t: t[index] if isinstance(t, torch.Tensor) and t.ndim and t.shape[0] == batch else t  # noqa: E731
    return optree.tree_map(pick, args, namespace="xattr")


def _per_example_sum(attr: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    keep = 2 if attr.ndim == x.ndim + 1 else 1  # a K axis after the batch for many outputs
    return attr.reshape(tuple(attr.shape[:keep]) + (-1,)).sum(-1)


def check_completeness(
    f: Callable, attr_fn: Callable, *args, baselines: Any = 0.0, argnums: int | Sequence[int] = 0, atol=None, rtol=None
) -> None:
    """Checks ``sum(attr_fn(*args)) == f(x) - f(baseline)`` for every example (and every output).

    Args:
      f: the model function attr_fn explains (one output per example, or ``xattr.outputs``).
      baselines: the baselines attr_fn integrates from: a number, a tensor broadcastable to the
        input, or a tree like ``args[argnums]``.

    Example:
      >>> f = xattr.target(model, 0)
      >>> check_completeness(f, xattr.integrated_gradients(f, n_steps=100), x, atol=1e-4, rtol=1e-3)
    """
    nums, as_tuple = _argnums(argnums)
    selected = _selected(args, argnums)
    if isinstance(baselines, (int, float)):
        base = optree.tree_map(lambda x: torch.full_like(x, float(baselines)), selected, namespace="xattr")
    elif isinstance(baselines, torch.Tensor) and isinstance(selected, torch.Tensor):
        base = baselines.to(selected).expand_as(selected)
    else:
        base = optree.tree_map(lambda x, b: torch.as_tensor(b).to(x).expand_as(x), selected, baselines, namespace="xattr")
    call_b = list(args)
    for i, b in zip(nums, base if as_tuple else (base,)):
        call_b[i] = b
    attr = attr_fn(*args)
    with torch.no_grad():
        out_x, out_b = f(*args), f(*call_b)
    if out_x.ndim == 2 and out_x.shape[1] == 1 and not getattr(f, "multi_output", False):
        out_x, out_b = out_x[:, 0], out_b[:, 0]
    attr_leaves, input_leaves = optree.tree_leaves(attr, namespace="xattr"), optree.tree_leaves(selected, namespace="xattr")
    if optree.tree_structure(attr, namespace="xattr") != optree.tree_structure(selected, namespace="xattr") or not all(
        isinstance(a, torch.Tensor) for a in attr_leaves
    ):
        raise AssertionError(
            f"attributions have structure {optree.tree_structure(attr, namespace='xattr')} but the attributed "
            f"inputs {optree.tree_structure(selected, namespace='xattr')}: one tensor per input tensor is expected"
        )
    total = sum(_per_example_sum(a, x) for a, x in zip(attr_leaves, input_leaves))
    delta = out_x - out_b
    if total.shape != delta.shape:
        raise AssertionError(
            f"attributions sum to shape {tuple(total.shape)} per batch but f(x) - f(baseline) has shape "
            f"{tuple(delta.shape)}: does attr_fn explain f?"
        )
    if not torch.isfinite(delta).all():
        raise AssertionError(f"completeness: f(x) - f(baseline) is not finite: {delta.flatten().tolist()[:8]}")
    at, rt = _tols(delta, atol, rtol)
    gap = (total - delta).abs()
    bad = ~(gap <= at + rt * delta.abs())  # NaN attributions fail too
    if bad.any():
        k = int(torch.where(torch.isnan(gap), torch.inf, gap).argmax())
        i = k // max(1, delta[0].numel()) if delta.ndim > 1 else k
        raise AssertionError(
            f"completeness fails for {int(bad.sum())} of {bad.numel()} example outputs (atol={at}, rtol={rt}); "
            f"worst: example {i}: sum of attributions {total.flatten()[k].item():.6g} vs f(x) - f(baseline) = "
            f"{out_x.flatten()[k].item():.6g} - {out_b.flatten()[k].item():.6g} = {delta.flatten()[k].item():.6g} "
            f"(gap {gap.flatten()[k].item():.3g}). For integrated gradients, more n_steps or the "
            "'gausslegendre' method shrink the quadrature error."
        )


def check_batch_invariance(attr_fn: Callable, *args, argnums: int | Sequence[int] = 0, by: str = "example", atol=None, rtol=None) -> None:
    """Checks that a batch's attributions equal those of its parts, so examples never interact.

    ``by="example"``: the batch result equals a loop over single examples (every deterministic
    method). ``by="prefix"``: the first k examples give the same result alone as in the full
    batch, for every k (seeded Monte Carlo methods, which draw example i's noise from the i-th
    block of the seeded stream: NOTE [Explicit randomness]).
    """
    if by not in ("example", "prefix"):
        raise ValueError(f"by must be 'example' or 'prefix', got {by!r}")
    batch = _batch_size(_selected(args, argnums))
    full = attr_fn(*args)
    for k in range(batch if by == "example" else batch - 1):
        index = slice(k, k + 1) if by == "example" else slice(0, k + 1)
        part = attr_fn(*_rows(args, batch, index))
        what = f"example {k} alone vs in a batch of {batch}" if by == "example" else f"first {k + 1} examples alone vs in a batch of {batch}"
        assert_trees_close(part, optree.tree_map(lambda t: t[index], full, namespace="xattr"), atol=atol, rtol=rtol, what=what)


def check_chunk_invariance(
    make_attr_fn: Callable[[int | None], Callable], *args, chunk_sizes: Iterable[int] = (1, 2, 3, 5), atol=None, rtol=None
) -> None:
    """Checks ``make_attr_fn(chunk_size)(*args)`` is the same for every chunk size and for None."""
    reference = make_attr_fn(None)(*args)
    for size in chunk_sizes:
        assert_trees_close(make_attr_fn(size)(*args), reference, atol=atol, rtol=rtol, what=f"chunk_size={size} vs None")


def _mix(f1: Callable, f2: Callable, a: float, b: float) -> Callable:
    def mixed(*args, **kwargs):
        return a * f1(*args, **kwargs) + b * f2(*args, **kwargs)

    mixed.multi_output = getattr(f1, "multi_output", False)
    return mixed


def check_linearity(method: Callable, f1: Callable, f2: Callable, a: float, b: float, *args, atol=None, rtol=None) -> None:
    """Checks ``method(a f1 + b f2)(*args) == a method(f1)(*args) + b method(f2)(*args)``.

    ``method(f) -> attr_fn`` (e.g. ``functools.partial(xattr.integrated_gradients, n_steps=32)``);
    stochastic methods must be seeded so the three calls draw the same noise.
    """
    got = method(_mix(f1, f2, a, b))(*args)
    want = optree.tree_map(lambda p, q: a * p + b * q, method(f1)(*args), method(f2)(*args), namespace="xattr")
    assert_trees_close(got, want, atol=atol, rtol=rtol, what=f"linearity: method({a} f1 + {b} f2) vs {a} method(f1) + {b} method(f2)")


def _flat_index(index, shape: torch.Size) -> int:
    """One example's feature index (an int into the flattened example, or a tuple with one entry
    per dim; negative entries count from the end) as a flat index, checked against ``shape``."""
    size = math.prod(shape)
    if isinstance(index, int):
        if not -size <= index < size:
            raise IndexError(f"feature index {index} is out of range for an example of {size} features")
        return index % size
    index = tuple(index)
    if len(index) != len(shape):
        raise IndexError(f"feature index {index} has {len(index)} entries for an example of shape {tuple(shape)}")
    flat = 0
    for i, n in zip(index, shape):
        if not -n <= i < n:
            raise IndexError(f"feature index {index} is out of range for an example of shape {tuple(shape)}")
        flat = flat * n + i % n
    return flat


def _features(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, [K,] D): attributions with one example's features flattened."""
    return a.reshape(tuple(a.shape[: 2 if a.ndim == x.ndim + 1 else 1]) + (-1,))


def check_symmetry(attr_fn: Callable, x: torch.Tensor, i, j, *, atol=None, rtol=None) -> None:
    """For a model symmetric in features i and j (and baselines equal there), x_i == x_j gives equal attributions.

    ``i``, ``j``: feature indices into one example (ints into the flattened example or tuples).
    """
    shape = x.shape[1:]
    fi, fj = _flat_index(i, shape), _flat_index(j, shape)
    flat = x.reshape(x.shape[0], -1)
    if not torch.equal(flat[:, fi], flat[:, fj]):
        raise ValueError(f"check_symmetry needs x[:, {i}] == x[:, {j}] for every example")
    attr = _features(attr_fn(x), x)
    assert_trees_close(attr[..., fi], attr[..., fj], atol=atol, rtol=rtol, what=f"symmetry: attributions of features {i} and {j}")


def check_dummy(attr_fn: Callable, x: torch.Tensor, features, *, atol=None) -> None:
    """Checks that features the model ignores get zero attribution (|attribution| <= atol).

    ``features``: a boolean mask of one example's shape, or an iterable of feature indices
    (ints into the flattened example, or tuples).
    """
    if isinstance(features, torch.Tensor) and features.dtype == torch.bool:
        if features.shape != x.shape[1:]:
            raise ValueError(
                f"check_dummy: a boolean mask must have one example's shape {tuple(x.shape[1:])}, got {tuple(features.shape)}"
            )
        flat_idx = features.reshape(-1).nonzero().flatten().tolist()
    else:
        flat_idx = [_flat_index(f, x.shape[1:]) for f in features]
    attr = _features(attr_fn(x), x)
    at = atol if atol is not None else default_tolerance(attr.dtype)[0]
    vals = attr[..., flat_idx].abs()
    if vals.numel() and not bool((vals <= at).all()):  # NaN attributions fail too
        vals = torch.where(torch.isnan(vals), torch.inf, vals)
        worst = int(vals.reshape(-1, len(flat_idx)).max(0).values.argmax())
        raise AssertionError(
            f"dummy: features ignored by the model got non-zero attributions (atol={at}); worst is feature "
            f"{flat_idx[worst]} (flattened) with |attribution| up to {vals.max().item():.3g}"
        )


def check_implementation_invariance(method: Callable, f1: Callable, f2: Callable, *args, atol=None, rtol=None) -> None:
    """Checks that two functionally equal models (f1(*args) == f2(*args)) get equal attributions."""
    with torch.no_grad():
        o1, o2 = f1(*args), f2(*args)
    at, rt = _tols(o1, atol, rtol)
    if o1.shape != o2.shape or not torch.allclose(o1, o2, atol=at, rtol=rt):
        raise ValueError("f1 and f2 give different outputs on these inputs, so they are not one function")
    assert_trees_close(method(f1)(*args), method(f2)(*args), atol=atol, rtol=rtol, what="implementation invariance")


def check_dtype_device(attr_fn: Callable, *args, argnums: int | Sequence[int] = 0, n_outputs: int | None = None) -> None:
    """Checks attributions have the attributed argument's structure, and each leaf its dtype, device and shape.

    ``n_outputs``: K for a many-outputs target, whose attributions have a K axis after the batch.
    """
    selected = _selected(args, argnums)
    pa, la, sa = _flatten(attr_fn(*args))
    _, lx, sx = _flatten(selected)
    if sa != sx:
        raise AssertionError(f"attributions have structure {sa}, the attributed inputs {sx}")
    for path, a, x in zip(pa, la, lx):
        shape = tuple(x.shape) if n_outputs is None else (x.shape[0], n_outputs) + tuple(x.shape[1:])
        got = (tuple(a.shape), a.dtype, a.device)
        if got != (shape, x.dtype, x.device):
            raise AssertionError(f"attributions{list(path)}: (shape, dtype, device) = {got}, expected {(shape, x.dtype, x.device)}")


def check_grads_match_finite_differences(
    f: Callable, *args, argnums: int | Sequence[int] = 0, eps: float = 1e-6, atol=1e-6, rtol=1e-5
) -> None:
    """Checks ``xattr.grad(f, argnums=argnums)`` against central finite differences (use float64).

    The attributed arguments must be tensors. One pair of model calls per input feature, all examples at once (examples must not interact).
    """
    from xattr import grad  # noqa: PLC0415 (xattr.testing must import without cycles)

    nums, as_tuple = _argnums(argnums)
    got = grad(f, argnums=argnums)(*args)
    grads = []
    for pos in nums:
        x = args[pos]

        def at(shift):
            call = list(args)
            call[pos] = x + shift
            with torch.no_grad():
                out = f(*call)
            return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 and not getattr(f, "multi_output", False) else out

        flat = torch.zeros_like(x).reshape(x.shape[0], -1)
        cols = []
        for d in range(flat.shape[1]):
            e = flat.clone()
            e[:, d] = eps
            e = e.reshape(x.shape)
            cols.append((at(e) - at(-e)) / (2 * eps))
        fd = torch.stack(cols, -1)  # (B, [K,] D)
        grads.append(fd.reshape(tuple(fd.shape[:-1]) + tuple(x.shape[1:])))
    want = tuple(grads) if as_tuple else grads[0]
    assert_trees_close(got, want, atol=atol, rtol=rtol, what="gradient vs central finite differences")
