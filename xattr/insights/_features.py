"""The payload of a page of several inputs ("parts") and several models: kind "features".

`explore` pages show one input per example, of one kind, for one model. Captum Insights'
pages (``xattr.compat.captum.insights``) show every input of a multi-input model, each drawn
its own way, for one or more models; this module writes their payload, which the same page
(`_page`, with `_page_parts`' script) reads.

The payload is `_payload.payload`'s, with these differences:

- ``parts``: one entry per model input, ``{"name", "type", "categories"}``; ``type`` is
  "image", "text" or "general" (a row of named values, drawn as a bar chart).
- ``models``: the model names; each entry of ``examples`` is one example under one model
  (``"m"``, its model index), so an example appears once per model.
- ``x``: one picture, token list or value row per part. ``a[method]``: ``sum`` (over every
  part), ``contrib`` (each part's sum over the L1 norm of the parts' sums, Insights' "net
  contribution"; 0 for all when the sums are all 0), and ``f``, one entry per part: an image's
  ``sum`` and heatmap ``png``, a text's or general part's ``sum`` and values ``v``.
- ``scores``: "prob" when the stored scores are probabilities (shown as percentages), "raw"
  otherwise (shown as numbers, bars scaled by the largest).
"""

from __future__ import annotations

from typing import Sequence

import torch

from . import _png
from ._payload import num

PART_TYPES = ("image", "text", "general")


def part_input(kind: str, shown) -> object:
    """One part of one example as the page stores it: a PNG data URI, tokens, or values."""
    if kind == "image":
        return _png.input_png(shown)
    if kind == "text":
        return [str(t) for t in shown]
    return [num(v) for v in torch.as_tensor(shown).double().reshape(-1).tolist()]


def part_attr(kind: str, attr: torch.Tensor, shown) -> dict:
    """One part's attribution of one example: image (C, H, W) or (H, W) drawn over ``shown``;
    text (T,) or (T, D...) summed to one score per token; general (F,)."""
    a = attr.detach().cpu().double()
    if kind == "image":
        return {"sum": num(a.sum()), "png": _png.heatmap_png(a, shown)}
    if kind == "text":
        a = a.reshape(a.shape[0], -1).sum(1) if a.dim() > 1 else a
    return {"sum": num(a.sum()), "v": [num(v) for v in a.reshape(-1).tolist()]}


def contributions(sums: Sequence[float]) -> list:
    """Each part's share of the total: ``s_k / sum_j |s_j|`` (all 0 when every sum is 0)."""
    s = torch.tensor([float(v) for v in sums], dtype=torch.float64)
    norm = s.abs().sum()
    return [num(v) for v in (s / norm if norm > 0 else torch.zeros_like(s)).tolist()]


def payload(*, title: str, parts: Sequence[dict], models: Sequence[str], classes: Sequence[str], methods: Sequence[str],
            target_mode: str, labels: bool, scores: str, n_examples: int, examples: list) -> dict:  # fmt: skip
    """The dict the page reads; ``examples`` are the cards (see the module docstring)."""
    for p in parts:
        if p["type"] not in PART_TYPES:
            raise ValueError(f"a page part must be one of {PART_TYPES}, got {p['type']!r}")
    wrong = sum(bool(e["wrong"]) for e in examples) if labels else None
    per_model = None
    if labels and len(models) > 1:
        per_model = [sum(bool(e["wrong"]) for e in examples if e["m"] == m) for m in range(len(models))]
    return {
        "version": 1,
        "kind": "features",
        "title": title,
        "n": len(examples),
        "n_examples": n_examples,
        "classes": [str(c) for c in classes],
        "methods": list(methods),
        "target": target_mode,
        "labels": labels,
        "misclassified": wrong,
        "misclassified_by_model": per_model,
        "feature_names": None,
        "parts": [{"name": str(p["name"]), "type": p["type"], "categories": p.get("categories")} for p in parts],
        "models": [str(m) for m in models],
        "scores": scores,
        "cmap": {"signed": list(_png.SIGNED_ANCHORS), "abs": list(_png.ABS_ANCHORS)},
        "examples": examples,
    }
