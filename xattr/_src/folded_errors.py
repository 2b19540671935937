"""A note on the size errors of a model function that reads per-example tensors from outside its
arguments.

NOTE: [Per-example tensors from outside the arguments]
Most methods evaluate the model function on the examples folded with their copies (path steps,
references, perturbed or noisy copies: more rows than the B examples given), and tile the extra
arguments (``fn(ids, mask)``: the mask) alongside. A tensor with one row per example that the
function reads from an enclosing scope instead (``lambda ids: model(ids, attention_mask=mask)``)
keeps its B rows, and the model fails deep inside with torch's size error ("The size of tensor a
(12) must match the size of tensor b (2)", "index 2 is out of bounds for dimension 0"), which
says nothing of the cause. Captum has ``additional_forward_args`` for the same reason.

`attribution_fn` (and the perturbation methods' own calls) hand such errors here: a RuntimeError
or IndexError whose message speaks of a size, raised where the model function itself runs on the
arguments as given (checked under no_grad, only on this error path; a method inside another,
as in a noise tunnel, sees the outer method's copies and leaves the note to it), gets a PEP 678 note
saying what to do. Without ``add_note`` (Python 3.10) the error is raised as it is.
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable

import torch

_SIZE = re.compile(r"size|out of bounds", re.I)
_NOTED = "_xattr_folded_note"


def note_folded(err: BaseException, model_fn: Callable, args: tuple) -> None:
    """Add the note to ``err`` where it fits (NOTE: [Per-example tensors from outside the arguments])."""
    if (not isinstance(err, (RuntimeError, IndexError)) or isinstance(err, NotImplementedError)
            or not hasattr(err, "add_note") or getattr(err, _NOTED, False) or not _SIZE.search(str(err))):
        return
    fn = getattr(model_fn, "model", model_fn)  # a Split from at_layer: its model function
    try:
        with torch.no_grad():
            fn(*args)
    except Exception:  # noqa: BLE001 (it fails on the examples as given too: not this cause)
        return
    setattr(err, _NOTED, True)  # nested methods (a noise tunnel around IG) note it once
    batch = next((t.shape[0] for t in args if isinstance(t, torch.Tensor) and t.ndim), None)
    err.add_note(
        f"xattr: the model function runs on the {batch if batch is not None else 'B'} examples as given, "
        "but the method evaluates it on more rows: each example folded with its copies (path steps, "
        "references, perturbed or noisy copies). A tensor with one row per example that the function "
        "reads from outside its arguments (an attention mask from an enclosing scope) keeps its rows "
        "and no longer fits. Pass it as an extra argument instead, f(ids, mask), and call the method "
        "with it, method(f)(ids, mask): extra arguments are tiled with the copies (NOTE: [Per-example "
        "tensors from outside the arguments])." + _whole(args, batch) + _coincident(args, batch)
    )


def _coincident(args: tuple, batch) -> str:
    """The note's sentence on extra tensor arguments whose dim 0 equals the batch: tiled as one row
    per example, which a tensor shared by every example (an (L, S) mask with L = B) is not."""
    same = _described(args, batch, lambda i, t: i and t.shape[0] == batch)
    if not same:
        return ""
    return (
        f" Here {', '.join(same)} {'has' if len(same) == 1 else 'have'} dim 0 of {batch}, the batch size, so "
        f"{'it was' if len(same) == 1 else 'they were'} read as one row per example and tiled with the copies. "
        "A tensor shared by every example whose dim 0 only happens to equal the batch size (an (L, S) "
        "attention mask with L = B) must not be: give it a leading dim of 1 (mask[None], which broadcasts "
        "in the model), and it is passed whole."
    )


def _described(args: tuple, batch, chosen) -> list:
    """"argument i (shape)" for each tensor argument with a dim 0 that ``chosen(i, t)`` picks (none
    when the batch is unknown)."""
    return [f"argument {i} {tuple(t.shape)}" for i, t in enumerate(args)
            if isinstance(t, torch.Tensor) and t.ndim and batch is not None and chosen(i, t)]


def _whole(args: tuple, batch) -> str:
    """The note's sentence on tensor arguments whose dim 0 is not the batch: passed whole, never
    tiled, so a model reading examples along another of their dims cannot take the copies."""
    odd = _described(args, batch, lambda i, t: t.shape[0] != batch)
    if not odd:
        return ""
    return (
        f" Here {', '.join(odd)} {'has' if len(odd) == 1 else 'have'} no dim 0 of {batch}: such tensors are passed whole to every call, not tiled, "
        "so a model that reads its examples along another of their dims (offsets per table, a sequence-first "
        "mask) cannot take the copies. Give them with the examples in dim 0 and move that dim inside the model function."
    )


@contextlib.contextmanager
def noted(model_fn: Callable, args: tuple):
    """`note_folded` on a RuntimeError or IndexError raised inside."""
    try:
        yield
    except (RuntimeError, IndexError) as err:
        note_folded(err, model_fn, args)
        raise
