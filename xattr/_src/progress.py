"""Progress bars for long work: tqdm when asked for and installed (it is optional: the demo
extra); without it, one warning and no bar."""

from __future__ import annotations

from .warn import warn


AUTO_DELAY = 10.0  # seconds before a bar of ``show_progress=None`` appears


def progress(show: bool | None, iterable=None, *, total=None, desc: str, unit: str, **kwargs):
    """``tqdm(iterable, total=..., desc=..., unit=...)`` when ``show``; else ``iterable`` as it is
    (None for a bar without an iterable). A missing tqdm warns and gives no bar.

    ``show=None`` (the default of the methods whose cost grows exponentially with their input,
    exact Shapley values and interactions, where a user may not foresee it): a bar that appears
    only once the work has run for `AUTO_DELAY` seconds, so short runs print nothing (tqdm's text
    bar, on stderr); without tqdm, no bar and no warning."""
    if show is None:
        if total is not None and total <= 1:  # one step has nothing to report
            return iterable
        try:
            from tqdm import tqdm  # the text bar: tqdm.auto's notebook widget would show at once
        except ImportError:
            return iterable
        return tqdm(iterable, total=total, desc=desc, unit=unit, delay=AUTO_DELAY, **kwargs)
    if not show:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warn("show_progress needs tqdm (pip install tqdm); running without a progress bar")
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit=unit, **kwargs)
