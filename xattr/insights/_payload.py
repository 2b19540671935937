"""The explorer's numbers: predictions, one batched attribution call per method, and the JSON
payload the page reads.

Everything the page shows is in the payload (one dict, written once as JSON): per example its
index, true label, predicted label, explained target, top-3 softmax probabilities, the input (an
image as a PNG data URI, a row of feature values, or tokens), and per method the attribution's
sum and its picture or values. Floats are rounded to 6 significant digits and non-finite ones
stored as null (JSON has no NaN), so the same inputs always give the same page.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch

from .._src.targets import target as _target
from .._src.progress import progress
from . import _png

TOP_K = 3


def num(v: float):
    """A float as stored: 6 significant digits, None when not finite."""
    v = float(v)
    return float(f"{v:.6g}") if math.isfinite(v) else None


def _chunks(n: int, chunk_size: int | None):
    step = n if not chunk_size else int(chunk_size)
    return [(s, min(s + step, n)) for s in range(0, n, max(step, 1))] or [(0, 0)]


@torch.no_grad()
def logits(model: Callable, inputs: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
    """The model's outputs for every example, (N, C), checked to be logits of one row per example."""
    outs = []
    for s, e in _chunks(len(inputs), chunk_size):
        out = model(inputs[s:e])
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"explore: the model must return a tensor of logits (B, C), got {type(out).__name__}")
        if out.dim() != 2 or out.shape[0] != e - s:
            raise ValueError(
                f"explore: the model must return logits of shape (B, C) (one row of class scores per example); "
                f"for a batch of {e - s} it returned shape {tuple(out.shape)}"
            )
        outs.append(out.detach().cpu())
    return torch.cat(outs)


def attributions(name: str, make: Callable, model: Callable, inputs: torch.Tensor, targets: torch.Tensor,
                 kind: str, chunk_size: int | None) -> torch.Tensor:  # fmt: skip
    """``make(target(model, targets[chunk]))(inputs[chunk])`` for each chunk of examples, joined and checked.

    Image attributions are shaped like the inputs (or (B, 1, H, W), a channel-summed map);
    tabular ones like the inputs; text ones (B, T) per token, or (B, T, D) at an embedding,
    summed over D.
    """
    parts = []
    for s, e in _chunks(len(inputs), chunk_size):
        x = inputs[s:e]
        fn = make(_target(model, targets[s:e].to(x.device)))
        if not callable(fn):
            raise TypeError(f"explore: method {name!r}: make(f) must return an attribution function, got {type(fn).__name__}")
        attr = fn(x)
        if not isinstance(attr, torch.Tensor):
            raise TypeError(
                f"explore: method {name!r} must return one tensor of attributions, got {type(attr).__name__} "
                "(a method with return_delta=True returns a pair: leave it out here)"
            )
        parts.append(_checked(name, attr.detach(), x, kind).cpu())
    return torch.cat(parts)


def _checked(name: str, attr: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    shape, want = tuple(attr.shape), tuple(x.shape)
    if kind == "text":
        if attr.dim() == 3 and shape[:2] == want:
            return attr.sum(-1)
        ok, expected = shape == want, f"{want} (one score per token) or {want + ('D',)} (at an embedding)"
    elif kind == "image" and x.dim() == 4:
        ok, expected = shape == want or shape == (want[0], 1, *want[2:]), f"{want} or {(want[0], 1, *want[2:])}"
    else:
        ok, expected = shape == want, str(want)
    if not ok:
        raise ValueError(f"explore: method {name!r} returned attributions of shape {shape} for inputs {want}; expected {expected}")
    if attr.is_complex():
        raise TypeError(f"explore: method {name!r} returned complex attributions")
    return attr.to(torch.float64) if not attr.is_floating_point() else attr


def compute(methods: Mapping[str, Callable], model: Callable, inputs: torch.Tensor, targets: torch.Tensor,
            kind: str, chunk_size: int | None, show_progress: bool) -> dict:  # fmt: skip
    """Every method's attributions for every example: name -> (N, ...) tensor."""
    items = progress(show_progress, list(methods.items()), desc="xattr explore", unit="method", leave=False)
    out = {}
    for name, make in items:
        if hasattr(items, "set_postfix_str"):
            items.set_postfix_str(name)
        out[name] = attributions(name, make, model, inputs, targets, kind, chunk_size)
    return out


def _input_repr(kind: str, x: torch.Tensor, tokens: Sequence[str] | None):
    if kind == "image":
        return _png.input_png(x)
    if kind == "tabular":
        return [num(v) for v in x.double().tolist()]
    return [str(t) for t in tokens]


def _attr_repr(kind: str, a: torch.Tensor, x: torch.Tensor, n_tokens: int | None) -> dict:
    if kind == "image":
        return {"sum": num(a.double().sum()), "png": _png.heatmap_png(a, x)}
    values = a.double()[:n_tokens] if kind == "text" else a.double()  # the sum is over every token
    return {"sum": num(a.double().sum()), "v": [num(v) for v in values.tolist()]}


def payload(*, kind: str, title: str, inputs: torch.Tensor, logits_: torch.Tensor, labels: torch.Tensor | None,
            targets: torch.Tensor, target_mode: str, classes: Sequence[str], attrs: Mapping[str, torch.Tensor],
            feature_names: Sequence[str] | None, tokens: Sequence[Sequence[str]] | None) -> dict:  # fmt: skip
    """The dict the page reads (see the module docstring)."""
    probs = torch.softmax(logits_.double(), dim=1)
    top_p, top_c = probs.topk(min(TOP_K, probs.shape[1]), dim=1)
    pred = logits_.argmax(1)
    examples = []
    for i in range(len(inputs)):
        x = inputs[i].detach().cpu()
        toks = None if tokens is None else tokens[i]
        ex = {
            "i": i,
            "y": None if labels is None else int(labels[i]),
            "p": int(pred[i]),
            "t": int(targets[i]),
            "conf": num(probs[i, pred[i]]),
            "top": [[int(c), num(p)] for c, p in zip(top_c[i].tolist(), top_p[i].tolist())],
            "wrong": None if labels is None else bool(pred[i] != labels[i]),
            "x": _input_repr(kind, x, toks),
            "a": {name: _attr_repr(kind, a[i], x, None if toks is None else len(toks)) for name, a in attrs.items()},
        }
        examples.append(ex)
    wrong = None if labels is None else int((pred != labels).sum())
    return {
        "version": 1,
        "kind": kind,
        "title": title,
        "n": len(inputs),
        "classes": [str(c) for c in classes],
        "methods": list(attrs),
        "target": target_mode,
        "labels": labels is not None,
        "misclassified": wrong,
        "feature_names": None if feature_names is None else [str(n) for n in feature_names],
        "cmap": {"signed": list(_png.SIGNED_ANCHORS), "abs": list(_png.ABS_ANCHORS)},
        "examples": examples,
    }
