"""Warnings shown at the user's line.

NOTE: [Warnings at the user's line]
xattr warns deep inside its own call stack (a pullback, a layer's backward, a check before the
first forward), at depths that differ from method to method and under torch.func transforms,
so a fixed ``stacklevel`` pointed into xattr or torch (``xattr/_src/layer_paths.py:65:
NoGradientPathWarning``), which tells a user nothing of where they called. `warn` walks out of
xattr's, torch's and contextlib's frames and shows the warning at the first frame beyond them:
the user's call of the attribution function (or of their model, where a hook warns from inside
its forward). Filters by category work as before; the warning's module is the user's.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import torch

_INSIDE = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                for m in (sys.modules[__name__.split(".")[0]], torch))  # fmt: skip
_INSIDE += (os.path.abspath(contextlib.__file__),)


def warn(message: str, category: type = UserWarning, *, at=None) -> None:
    """``warnings.warn(message, category)`` shown at frame ``at``, or by default at the first frame
    outside xattr and torch."""
    frame = at
    if frame is None:
        frame = sys._getframe(1)
        while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INSIDE):
            frame = frame.f_back
    if frame is None:  # called from xattr or torch alone (a thread's target): where it is
        warnings.warn(message, category, stacklevel=2)
        return
    warnings.warn_explicit(message, category, frame.f_code.co_filename, frame.f_lineno,
                           module=frame.f_globals.get("__name__", "<unknown>"),
                           registry=frame.f_globals.setdefault("__warningregistry__", {}))  # fmt: skip
