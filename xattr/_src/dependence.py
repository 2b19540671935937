"""Whether a tensor depends on the attributed input: `differentiated`, which the parsers of ops.py
ask of a clamp's bounds and of both factors of a product.

NOTE: [Remembered graph walks]
`differentiated` walks the autograd graph from a tensor down to a leaf that is not a parameter
(an attributed input). In a deep network that walk is as long as the network, and a model with a
product in every block (the squeeze-and-excitation gates of MobileNetV3 and EfficientNet) asks it
twice per block: the walks grow with depth, and on MobileNetV3-small (4 images of 96x96, one CPU
thread) they took 4 ms of DeepLift's 47. Within one ruled call (`remembering`, entered by
rules.py), a node found to lead to such a leaf is remembered, so a later walk stops at the first
node of an earlier one (the previous block's factors lie on its way down): each walk then covers
about one block. What is remembered is held for that call only (the nodes are alive anyway while
its graph is).
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

_PROVEN: contextvars.ContextVar = contextvars.ContextVar("xattr_differentiated_nodes", default=None)


@contextlib.contextmanager
def remembering():
    """`differentiated` remembers, until the end of the block, the nodes it found to lead to
    the input (NOTE: [Remembered graph walks])."""
    token = _PROVEN.set(set())
    try:
        yield
    finally:
        _PROVEN.reset(token)


def differentiated(t: torch.Tensor) -> bool:
    """Whether gradients are taken through t from something other than parameters: t requires
    grad (under torch.func transforms: at the innermost level) and is, or was computed from, a
    tensor that requires grad and is not an ``nn.Parameter`` (an attributed input, or anything
    computed from one). A bound computed from parameters alone (``self.raw_lo.exp()``) is not."""
    if not t.requires_grad or isinstance(t, torch.nn.Parameter):
        return False
    proven = _PROVEN.get()
    start = t.grad_fn
    todo, seen = [start], set()
    while todo:
        node = todo.pop()
        if node is None:
            return True  # t itself is a leaf that requires grad
        if node in seen:
            continue
        if proven is not None and node in proven:
            proven.add(start)
            return True
        seen.add(node)
        leaf = getattr(node, "variable", None)  # AccumulateGrad: a leaf
        if leaf is not None and not isinstance(leaf, torch.nn.Parameter):
            if proven is not None:
                proven.add(start)
            return True
        todo.extend(n for n, _ in node.next_functions if n is not None)
    return False
