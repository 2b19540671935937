"""Plots of per-token attribution statistics (`xattr.TokenStatistics`).

Like `xattr.viz.dataset`, each function returns a matplotlib ``Figure`` on the Agg canvas (no
pyplot) and, given ``path``, also writes it there.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .dataset import _bars, _done, _expect, _figure

_OBJ = "the TokenStatistics that xattr.token_statistics returns"


def plot_token_statistics(
    stats,
    *,
    k: int = 10,
    min_count: int = 5,
    groups: Sequence | None = None,
    title: str | None = None,
    path=None,
    dpi: int = 120,
):
    """One panel per group: its ``k`` tokens of largest mean attribution (red, on top) and its
    ``k`` of smallest (blue, below), among tokens seen at least ``min_count`` times, with error
    bars of one standard error and each token's count in its label.

    Returns the Figure: one axis per group, in the order of ``groups`` (default: every group).

    Example:
      >>> stats = xattr.token_statistics(method, model, loader, pad_id=0, vocab=words)
      >>> fig = xattr.viz.plot_token_statistics(stats, k=5, min_count=10, path="tokens.png")
    """
    _expect(stats, ("groups", "top", "n_examples"), _OBJ, "plot_token_statistics")
    keys = list(stats.groups) if groups is None else list(groups)
    if not keys:
        raise ValueError("groups is empty: name at least one group")
    panels = []
    for key in keys:
        high = stats.top(key, k, min_count=min_count)
        low = [r for r in stats.top(key, k, min_count=min_count, largest=False) if r.id not in {h.id for h in high}]
        panels.append((key, high + low[::-1]))  # the largest first, the smallest last
    rows = max(1, max(len(p) for _, p in panels))
    fig = _figure(3.2 * len(keys), 0.9 + 0.2 * rows, dpi)
    for i, (key, table) in enumerate(panels):
        ax = fig.add_subplot(1, len(keys), i + 1)
        g = stats.index(key) if key in stats.groups else None
        n = int(stats.n_examples[g]) if g is not None else stats.n
        ax.set_title(f"{key} (n={n})", fontsize=8)
        if not table:
            ax.text(0.5, 0.5, f"no token seen {min_count}+ times", ha="center", va="center", fontsize=7, transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        values = np.array([r.mean for r in table])
        err = np.nan_to_num(np.array([r.se for r in table]))
        _bars(ax, values, [f"{r.token} \u00d7{r.count}" for r in table], err=err)
    fig.suptitle(title or f"mean attribution per token by {stats.by or 'dataset'} ({min_count}+ occurrences)", fontsize=10)
    fig.tight_layout()
    return _done(fig, path, dpi)


__all__ = ["plot_token_statistics"]
