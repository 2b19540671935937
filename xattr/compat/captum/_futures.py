"""Captum's ``attribute_future``: the perturbation classes with a model that returns futures.

NOTE: [Futures from the model]
Captum 0.7 added ``attribute_future`` to FeatureAblation, FeaturePermutation and the Shapley
classes: the forward function returns a ``torch.futures.Future`` (a remote or asynchronous model)
and the call returns a Future of the attributions. xattr's engine evaluates the perturbed copies in
batched calls whose results it needs at once, so here each call's future is waited on in turn:
the attributions are the same numbers as ``attribute`` with the waited model, the returned Future
is already complete, and nothing overlaps. Errors (bad arguments, a forward function that returns
a tensor instead of a future, the model's own) raise at the call, not at ``wait()``. The instance
is not changed: the waited model goes to a shallow copy.
"""

from __future__ import annotations

import copy

import torch


def _waited(forward, name: str):
    def call(*args, **kwargs):
        out = forward(*args, **kwargs)
        if not isinstance(out, torch.futures.Future):
            raise TypeError(
                f"{name}.attribute_future needs a forward function that returns a torch.futures.Future "
                f"(got {type(out).__name__}); for one that returns tensors, call attribute"
            )
        return out.wait()

    return call


class FutureAttribution:
    """Adds ``attribute_future(...)``: the same keywords as ``attribute``, a completed Future back."""

    def attribute_future(self, *args, **kwargs) -> torch.futures.Future:
        twin = copy.copy(self)
        twin.forward_func = _waited(self.forward_func, type(self).__name__)
        done = torch.futures.Future()
        done.set_result(twin.attribute(*args, **kwargs))
        return done
