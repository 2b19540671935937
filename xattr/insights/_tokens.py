"""The explorer's dataset view for text: each class's tokens of largest and smallest mean attribution.

NOTE: [Token statistics on the explorer page]
A per-position mean says nothing about a word (NOTE: [Per-token attribution moments] in
``xattr/_src/token_stats.py``), so a text page's dataset view groups the page's own
attributions by token id with `TokenStatistics.from_attributions`, the same four ways as the
image and tabular view (`_dataset.view_masks`: by true label or prediction, over every example
or the misclassified ones). Counted are the positions the page shows (each example's first
``len(tokens[i])`` ids), less the tokenizer's padding id when there is one; a token is named by
the string the page shows for it (the first one seen, if one id is shown several ways).

Per view, method and group the page stores the group's example and token counts and two
lists of ``[token, mean, count]``: the `K` tokens of largest positive mean ("for" the
explained class) and the `K` of most negative mean ("against" it), among the tokens seen at
least `MIN_COUNT` times in the group. The attributions explain the page's ``target`` class of
each example, as in the image view.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .._src.token_stats import TokenStatistics
from ._dataset import finite_methods, view_masks
from ._payload import num

K = 10
MIN_COUNT = 2


def _names(inputs: torch.Tensor, tokens: Sequence[Sequence[str]], size: int) -> tuple:
    """id -> the string the page shows for it first; "[id]" for ids never shown."""
    out = [None] * size
    for row, toks in zip(inputs.tolist(), tokens):
        for v, t in zip(row, toks):
            if 0 <= v < size and out[v] is None:
                out[v] = str(t)
    return tuple(f"[{i}]" if t is None else t for i, t in enumerate(out))


def statistics(inputs: torch.Tensor, attrs: Mapping[str, torch.Tensor], labels: torch.Tensor | None, pred: torch.Tensor,
               tokens: Sequence[Sequence[str]], pad_id: int | None = None) -> dict:  # fmt: skip
    """view -> method -> `TokenStatistics` of the view's examples (None when it has none), for
    the methods with finite attributions (NOTE: [Token statistics on the explorer page])."""
    ids = inputs.detach().cpu().long()
    shown = torch.arange(ids.shape[1])[None, :] < torch.tensor([len(t) for t in tokens])[:, None]
    counted = ids[shown & (ids >= 0)]
    names = _names(ids, tokens, int(counted.max()) + 1 if len(counted) else 0)
    ok, _ = finite_methods(attrs)
    out = {}
    for view, (keys, mask) in view_masks(labels, pred).items():
        by = "label" if view.startswith("label") else "prediction"
        out[view] = {
            name: TokenStatistics.from_attributions(ids[mask], attrs[name][mask], keys[mask], mask=shown[mask], pad_id=pad_id,
                                                    vocab=names, by=by) if mask.any() else None  # fmt: skip
            for name in ok
        }
    return out


def payload(inputs: torch.Tensor, attrs: Mapping[str, torch.Tensor], labels: torch.Tensor | None, pred: torch.Tensor,
            tokens: Sequence[Sequence[str]], pad_id: int | None = None) -> dict:  # fmt: skip
    """The page's ``dataset`` entry for text (module docstring)."""
    _, skipped = finite_methods(attrs)
    stats = statistics(inputs, {n: a for n, a in attrs.items() if n not in skipped}, labels, pred, tokens, pad_id)
    views = {}
    for view, (keys, mask) in view_masks(labels, pred).items():
        groups = tuple(int(g) for g in torch.unique(keys[mask]))
        entry = {"groups": list(groups), "n": [int((keys[mask] == g).sum()) for g in groups], "methods": {}}
        for name in attrs:
            s = stats[view].get(name)
            if name in skipped:
                entry["methods"][name] = None
            elif s is None:
                entry["methods"][name] = []
            else:
                assert s.groups == groups and s.n_examples.tolist() == entry["n"]
                entry["methods"][name] = [_group(s, g) for g in groups]
        views[view] = entry
    return {"views": views, "skipped": skipped, "k": K, "min_count": MIN_COUNT}


def _group(s: TokenStatistics, key: int) -> dict:
    def rows(largest: bool) -> list:
        keep = (lambda m: m > 0) if largest else (lambda m: m < 0)
        return [[r.token, num(r.mean), r.count] for r in s.top(key, K, min_count=MIN_COUNT, largest=largest) if keep(r.mean)]

    return {"t": int(s.count[s.index(key)].sum()), "pos": rows(True), "neg": rows(False)}
