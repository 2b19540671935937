"""Progress bars for long work: tqdm when asked for and installed (it is optional: the demo
extra); without it, one warning and no bar."""

from __future__ import annotations

from .warn import warn


def progress(show: bool, iterable=None, *, total=None, desc: str, unit: str, **kwargs):
    """``tqdm(iterable, total=..., desc=..., unit=...)`` when ``show``; else ``iterable`` as it is
    (None for a bar without an iterable). A missing tqdm warns and gives no bar."""
    if not show:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warn("show_progress needs tqdm (pip install tqdm); running without a progress bar")
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit=unit, **kwargs)
