"""Attribution statistics per vocabulary token: how much each word counts, on average, per class.

NOTE: [Per-token attribution moments]
`AttributionStatistics` keeps moments per input position, which for text is no property of
any word: position 3 holds "the" in one sentence and "awful" in the next. `TokenStatistics`
keys the moments by token id instead. Every counted position of every example is one
observation a of the token at that position (its attribution, reduced to one number per
token: summed over an embedding's last dims, or their L2 norm), and for every group g (a class
label, a predicted class, or "all") and id v it keeps, in float64: the count n (occurrences),
the mean of a and M2 = sum (a - mean)^2, plus how many of the group's examples contain v at
least once. One example that repeats a word adds one observation per repetition.

A batch's moments are exact (two passes over the batch's observations of each (g, v) pair,
`dataset_stats._group_moments`) and batches, shards and workers are merged with Chan, Golub
and LeVeque's pairwise update (`dataset_stats._chan`, NOTE: [Streaming attribution moments]),
so any split of the data gives the one-pass result up to float64 rounding. A pair never seen
has count 0 and stored mean and M2 0, which that update leaves exact: with n_a = 0 it returns
side b. The tensors are dense (G, V), V the largest id seen plus one (or the vocabulary's
size): 24 bytes per pair, about 7 MB for 10 classes of a 30,000-token vocabulary.

Positions are left out by id (``pad_id``: padding, and any special tokens one wants to skip)
or by a mask (1 = counted, the attention-mask convention). The sample variance is M2 / (n - 1)
(NaN below two occurrences) and the standard error of the mean sqrt(var / n). A ranking of
tokens by mean keeps those seen at least ``min_count`` times in the group: a token seen once
has a mean that is one draw, and the largest of many one-draw means is noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

import torch

from .dataset_stats import _BY, _chan, _group_moments, group_keys

REDUCE = ("sum", "norm")


class TokenScore(NamedTuple):
    """One row of a token ranking: the id, its string, occurrences, examples holding it, and
    the mean attribution with its standard error (NaN below two occurrences)."""

    id: int
    token: str
    count: int
    examples: int
    mean: float
    se: float


class FrequencyView(NamedTuple):
    """Every token seen in a group: ids, occurrences and mean attribution, most frequent first
    (ties: the lower id first)."""

    ids: torch.Tensor
    count: torch.Tensor
    mean: torch.Tensor


@dataclass(frozen=True, eq=False, repr=False)
class TokenStatistics:
    """Per-group, per-token moments of token attributions; build with `xattr.token_statistics`
    or `from_attributions`. See NOTE: [Per-token attribution moments].

    Attributes:
      groups: the group keys, sorted: class indices (ints), or ``("all",)`` for ``by=None``.
      count: (G, V) int64 occurrences of each token id among the group's counted positions.
      mean, m2: (G, V) float64 mean and sum of squared deviations of the attribution (0 where
        the count is 0).
      example_count: (G, V) int64, the group's examples holding the token at least once.
      n_examples: (G,) int64, the group's examples (with or without counted positions).
      by: how examples were grouped ("label", "prediction", None).
      reduce: how attributions were made one number per token ("sum" or "norm").
      vocab: one string per id (``vocab[v]``), or None: tokens are then named "[v]".

    Example:
      >>> stats = xattr.TokenStatistics.from_attributions(ids, scores, y, pad_id=0, vocab=words)
      >>> stats.top(1, 5, min_count=10)      # class 1's five tokens of largest mean attribution
    """

    groups: tuple
    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor
    example_count: torch.Tensor
    n_examples: torch.Tensor
    by: str | None = "label"
    reduce: str = "sum"
    vocab: tuple | None = None

    # --- building -------------------------------------------------------------------------

    @classmethod
    def from_attributions(cls, ids, attributions, groups=None, *, mask=None, pad_id=None, vocab=None,
                          vocab_size: int | None = None, by: str | None = "label", reduce: str = "sum") -> "TokenStatistics":  # fmt: skip
        """Statistics of one batch: token ids ``(B, T)`` and their attributions ``(B, T)`` or
        ``(B, T, ...)`` (an embedding's, reduced over the trailing dims by ``reduce``).

        Args:
          groups: an integer tensor ``(B,)`` of group keys (class indices), or None for one
            group ``"all"``.
          mask: ``(B, T)``, nonzero where a position counts (an attention mask); default all.
          pad_id: an id, or a list of ids, never counted (padding, special tokens).
          vocab: the token strings: a list (index = id), a dict token -> id, or a tokenizer
            with ``convert_ids_to_tokens``; only for naming.
          vocab_size: the least number of ids covered (default: the vocabulary's size, or
            the largest id counted plus one, whichever is larger).
          by, reduce: recorded, and checked by `merge`; ``reduce`` is "sum" (signed, Captum's
            and `xattr.token_scores`' choice) or "norm" (the L2 norm, unsigned).
        """
        if by not in _BY:
            raise ValueError(f"by must be 'label', 'prediction' or None, got {by!r}")
        if reduce not in REDUCE:
            raise ValueError(f"reduce must be 'sum' (over the embedding dims) or 'norm' (their L2 norm), got {reduce!r}")
        ids = _ids(ids)
        n_ex, n_pos = ids.shape
        a = _token_values(attributions, ids.shape, reduce)
        keep = _keep(ids, mask, pad_id)
        names = vocab if isinstance(vocab, tuple) and all(isinstance(s, str) for s in vocab[:1]) else _vocab(vocab)
        keys, inv = group_keys(groups, n_ex, "examples")
        sel_ids = ids[keep]
        if len(sel_ids) and int(sel_ids.min()) < 0:
            raise ValueError(f"token ids must be >= 0, got {int(sel_ids.min())} at a counted position: exclude it with pad_id= or mask=")
        size = max(int(sel_ids.max()) + 1 if len(sel_ids) else 0, len(names) if names is not None else 0, _size(vocab_size))
        n_g = len(keys)
        row = inv[:, None].expand(n_ex, n_pos)
        key = row[keep] * size + sel_ids  # one flat (group, id) key per counted position
        count = torch.zeros(n_g * size, dtype=torch.long)
        mean = torch.zeros(n_g * size, dtype=torch.float64)
        m2 = torch.zeros(n_g * size, dtype=torch.float64)
        if len(key):
            uniq_key, kinv = torch.unique(key, return_inverse=True)
            cnt = torch.bincount(kinv, minlength=len(uniq_key))
            mu, dev2 = _group_moments(a[keep][:, None], kinv, cnt)
            count[uniq_key], mean[uniq_key], m2[uniq_key] = cnt, mu[:, 0], dev2[:, 0]
        # examples holding each (group, id): unique (example, id) pairs, counted per group
        example = torch.arange(n_ex)[:, None].expand(n_ex, n_pos)[keep]
        pairs = torch.unique(example * size + sel_ids) if len(key) else torch.zeros(0, dtype=torch.long)
        holding = torch.bincount(inv[pairs // max(size, 1)] * size + pairs % max(size, 1), minlength=n_g * size)
        shape = (n_g, size)
        return cls(keys, count.reshape(shape), mean.reshape(shape), m2.reshape(shape), holding.reshape(shape),
                   torch.bincount(inv, minlength=n_g), by, reduce, names)  # fmt: skip

    def merge(self, other: "TokenStatistics") -> "TokenStatistics":
        """The statistics of the union of both datasets (shards, workers), by Chan's update.

        Groups are matched by key, ids by value (the smaller id range is padded with zeros).
        Both must share ``by``, ``reduce`` and, where both have one, the vocabulary. Merging is
        associative and commutative up to float64 rounding.
        """
        if not isinstance(other, TokenStatistics):
            raise TypeError(f"merge needs another TokenStatistics, got {type(other).__name__}")
        if self.by != other.by:
            raise ValueError(f"cannot merge statistics grouped by {self.by!r} and by {other.by!r}")
        if self.reduce != other.reduce:
            raise ValueError(f"cannot merge statistics reduced by {self.reduce!r} and by {other.reduce!r}")
        if self.vocab is not None and other.vocab is not None and self.vocab is not other.vocab and self.vocab != other.vocab:
            raise ValueError("cannot merge statistics over different vocabularies: compute both with one vocab=")
        try:
            keys = tuple(sorted(set(self.groups) | set(other.groups)))
        except TypeError:
            raise ValueError(f"cannot merge groups {self.groups} and {other.groups}: their keys are of different kinds") from None
        size = max(self.vocab_size, other.vocab_size)
        a, b = self._aligned(keys, size), other._aligned(keys, size)
        n_a, n_b = a["count"].double(), b["count"].double()
        mean, m2 = _chan(n_a, a["mean"], a["m2"], n_b, b["mean"], b["m2"])
        seen = (n_a + n_b) > 0  # both 0: 0/0 in the update; the pair stays at 0
        return TokenStatistics(keys, a["count"] + b["count"], torch.where(seen, mean, 0.0), torch.where(seen, m2, 0.0),
                               a["example_count"] + b["example_count"], a["n_examples"] + b["n_examples"], self.by,
                               self.reduce, self.vocab if self.vocab is not None else other.vocab)  # fmt: skip

    def _aligned(self, keys: tuple, size: int) -> dict:
        """This statistics' fields laid out on the rows ``keys`` and ``size`` ids (zeros elsewhere)."""
        out = {}
        for f in ("count", "mean", "m2", "example_count"):
            t = getattr(self, f)
            full = torch.zeros(len(keys), size, dtype=t.dtype)
            for g, key in enumerate(self.groups):
                full[keys.index(key), : t.shape[1]] = t[g]
            out[f] = full
        n = torch.zeros(len(keys), dtype=torch.long)
        for g, key in enumerate(self.groups):
            n[keys.index(key)] = self.n_examples[g]
        out["n_examples"] = n
        return out

    # --- derived statistics ---------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Ids covered: the columns of the per-token tensors."""
        return int(self.count.shape[1])

    @property
    def n_tokens(self) -> int:
        """Counted positions, over every group."""
        return int(self.count.sum())

    @property
    def n(self) -> int:
        """Examples seen, over every group."""
        return int(self.n_examples.sum())

    @property
    def variance(self) -> torch.Tensor:
        """Sample variance (ddof=1) per group and id; NaN below two occurrences."""
        return torch.where(self.count > 1, self.m2 / (self.count - 1).clamp_min(1), torch.nan)

    @property
    def std(self) -> torch.Tensor:
        return self.variance.sqrt()

    @property
    def se(self) -> torch.Tensor:
        """Standard error of each mean, sqrt(variance / count); NaN below two occurrences."""
        return (self.variance / self.count.clamp_min(1)).sqrt()

    def index(self, group) -> int:
        """Row of ``group`` in the per-group tensors."""
        if group not in self.groups:
            raise KeyError(f"no group {group!r}; the groups are {self.groups}")
        return self.groups.index(group)

    def token(self, token_id: int) -> str:
        """The string of an id: ``vocab[id]``, or "[id]" without a vocabulary."""
        v = int(token_id)
        return self.vocab[v] if self.vocab is not None and 0 <= v < len(self.vocab) else f"[{v}]"

    def overall(self) -> "TokenStatistics":
        """Every group merged into one, ``"all"``."""
        merged = None
        for g in range(len(self.groups)):
            row = TokenStatistics(("all",), self.count[g : g + 1], self.mean[g : g + 1], self.m2[g : g + 1],
                                  self.example_count[g : g + 1], self.n_examples[g : g + 1], self.by, self.reduce, self.vocab)  # fmt: skip
            merged = row if merged is None else merged.merge(row)
        return merged

    def top(self, group, k: int = 20, *, min_count: int = 5, largest: bool = True) -> list[TokenScore]:
        """The ``k`` tokens of largest (``largest=False``: smallest) mean attribution in
        ``group``, among those seen at least ``min_count`` times in it; ties to the lower id.
        Use ``"all"`` for the tokens over every group (`overall`)."""
        k, min_count = _positive(k, "k"), _positive(min_count, "min_count")
        s = self.overall() if group == "all" and "all" not in self.groups else self
        g = s.index(group)
        ok = (s.count[g] >= min_count).nonzero().flatten()
        order = torch.sort(s.mean[g, ok], descending=largest, stable=True).indices[:k]
        se = s.se[g]
        return [TokenScore(int(v), s.token(v), int(s.count[g, v]), int(s.example_count[g, v]), float(s.mean[g, v]), float(se[v]))
                for v in ok[order].tolist()]  # fmt: skip

    def frequency_vs_mean(self, group) -> FrequencyView:
        """Every token seen in ``group``: its occurrences against its mean attribution, the most
        frequent first. Frequent tokens (articles, punctuation) tend to carry small means; a
        token both frequent and far from 0 is what the model reads across the class."""
        s = self.overall() if group == "all" and "all" not in self.groups else self
        g = s.index(group)
        seen = (s.count[g] > 0).nonzero().flatten()
        order = torch.sort(s.count[g, seen], descending=True, stable=True).indices
        ids = seen[order]
        return FrequencyView(ids, s.count[g, ids], s.mean[g, ids])

    def summary(self, k: int = 5, min_count: int = 5) -> str:
        """A text report: per group, its examples and counted tokens, and the ``k`` tokens of
        largest and of smallest mean (seen at least ``min_count`` times)."""
        lines = [repr(self)]
        for key in self.groups:
            g = self.index(key)
            lines.append(f"group {key!r}: {int(self.n_examples[g])} examples, {int(self.count[g].sum())} tokens")
            for largest, what in ((True, "largest"), (False, "smallest")):
                rows = self.top(key, k, min_count=min_count, largest=largest)
                text = ", ".join(f"{r.token!r} {r.mean:+.3g} (n={r.count})" for r in rows) or f"no token seen {min_count}+ times"
                lines.append(f"  {what} mean: {text}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        seen = int((self.count.sum(0) > 0).sum())
        return (f"TokenStatistics(by={self.by!r}, groups={self.groups}, examples={self.n_examples.tolist()}, "
                f"tokens={self.n_tokens}, distinct ids={seen} of {self.vocab_size}, reduce={self.reduce!r})")  # fmt: skip


# --- checks and conversions -----------------------------------------------------------------


def _ids(ids) -> torch.Tensor:
    t = torch.as_tensor(ids).detach()
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"ids must be integer token ids, got dtype {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"ids must have shape (B, T), one row of token ids per example; got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError("ids hold no examples: give at least one")
    return t.to("cpu", torch.long)


def _token_values(attributions, shape: tuple, reduce: str) -> torch.Tensor:
    """(B, T) float64 per-token attributions from (B, T) or (B, T, ...)."""
    if isinstance(attributions, (tuple, list)) and attributions and isinstance(attributions[0], torch.Tensor):
        raise TypeError(f"attributions must be one tensor (B, T) or (B, T, D), got a {type(attributions).__name__} of tensors")
    a = torch.as_tensor(attributions).detach()
    if tuple(a.shape[:2]) != tuple(shape):
        raise ValueError(f"attributions of shape {tuple(a.shape)} do not match the ids {tuple(shape)}: give (B, T) or (B, T, D)")
    if a.is_complex() or a.dtype == torch.bool:
        raise TypeError(f"attributions must hold real numbers, got dtype {a.dtype}")
    a = a.to("cpu", torch.float64)
    if a.ndim > 2:
        flat = a.reshape(*shape, -1)
        a = flat.sum(-1) if reduce == "sum" else flat.norm(dim=-1)
    if not torch.isfinite(a).all():
        raise ValueError("attributions hold NaN or infinite values; statistics need finite attributions")
    return a


def _keep(ids: torch.Tensor, mask, pad_id) -> torch.Tensor:
    keep = torch.ones_like(ids, dtype=torch.bool)
    if mask is not None:
        m = torch.as_tensor(mask).detach().cpu()
        if tuple(m.shape) != tuple(ids.shape):
            raise ValueError(f"mask has shape {tuple(m.shape)} but the ids {tuple(ids.shape)}: give one flag per position")
        keep &= m != 0
    if pad_id is not None:
        pads = [pad_id] if isinstance(pad_id, int) else list(pad_id) if isinstance(pad_id, (list, tuple, set, frozenset)) else None
        if pads is None or not all(isinstance(p, int) and not isinstance(p, bool) for p in pads):
            raise TypeError(f"pad_id must be a token id (int) or a list of them, got {pad_id!r}")
        if pads:
            keep &= ~torch.isin(ids, torch.tensor(pads, dtype=torch.long))
    return keep


def _vocab(vocab) -> tuple | None:
    """One string per id from a list of tokens, a dict token -> id, or a tokenizer."""
    if vocab is None:
        return None
    if hasattr(vocab, "convert_ids_to_tokens") and hasattr(vocab, "__len__"):
        return tuple(str(t) for t in vocab.convert_ids_to_tokens(list(range(len(vocab)))))
    if isinstance(vocab, Mapping):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vocab.values()):
            raise TypeError("vocab as a dict must map token strings to ids >= 0 (a tokenizer's get_vocab())")
        out = [None] * (max(vocab.values(), default=-1) + 1)
        for tok, v in vocab.items():
            out[v] = str(tok)
        return tuple(f"[{i}]" if t is None else t for i, t in enumerate(out))
    if isinstance(vocab, (str, bytes)) or not isinstance(vocab, Sequence):
        raise TypeError(f"vocab must be a list of token strings (index = id), a dict token -> id or a tokenizer, got {type(vocab).__name__}")
    return tuple(str(t) for t in vocab)


def _size(vocab_size) -> int:
    if vocab_size is None:
        return 0
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int or None, got {vocab_size!r}")
    return vocab_size


def _positive(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


__all__ = ["FrequencyView", "TokenScore", "TokenStatistics"]
