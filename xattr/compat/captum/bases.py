"""Captum's abstract attribution bases: what ``isinstance`` checks and subclasses rely on.

Captum sorts its classes under ``GradientAttribution``, ``PerturbationAttribution``,
``LayerAttribution`` and ``NeuronAttribution`` (a layer or neuron class is also a gradient or a
perturbation one). Code written against Captum tests those (``isinstance(m,
GradientAttribution)``), subclasses them for a method of its own, or calls the one method they
add: ``GradientAttribution.compute_convergence_delta``. The adapters here sit under the same
bases as Captum's classes of the same name (tests/test_compat_bases.py checks every pair).
"""

from __future__ import annotations

from typing import Callable

import torch

from ._convert import Attribution, Call


def _rows_summed(t: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,): the sum over everything but the batch axis (a (B,) tensor as it is)."""
    return t.reshape(t.shape[0], -1).sum(1)


def _points_like(call: Call, start_point) -> tuple:
    """Captum's start point (None, a number, a tensor or a tuple of them; one row may stand for
    every example) as one tensor per input, shaped like it."""
    starts = []
    for x, b in zip(call.inputs, call.baselines(start_point)):
        if not isinstance(b, torch.Tensor):
            starts.append(torch.full_like(x, b))
        elif b.shape == x.shape:
            starts.append(b)
        elif b.ndim == x.ndim and b.shape[0] == 1 and b.shape[1:] == x.shape[1:]:
            starts.append(b.expand_as(x))
        else:
            raise ValueError(
                f"start_point of shape {tuple(b.shape)} does not match its end point {tuple(x.shape)} "
                "(give the same shape, or one row for every example)"
            )
    return tuple(starts)


class GradientAttribution(Attribution):
    """Base of the gradient methods (Captum's ``captum.attr.GradientAttribution``)."""

    def compute_convergence_delta(self, attributions, start_point, end_point, target=None, additional_forward_args=None):
        """Per example: the sum of ``attributions`` (over every input and element) minus
        ``F(end_point) - F(start_point)``, where F is the forward function at ``target`` (its
        output rows summed when it gives more than one number per example). The completeness
        gap of a path method from ``start_point`` to ``end_point``; Captum's definition."""
        call = Call.build(self.forward_func, end_point, target, additional_forward_args)
        attributions = attributions if isinstance(attributions, tuple) else (attributions,)
        if len(attributions) != len(call.inputs):
            raise ValueError(f"{len(attributions)} attribution tensors for {len(call.inputs)} end-point tensors")
        for a, x in zip(attributions, call.inputs):
            if a.shape[0] != x.shape[0]:
                raise ValueError(
                    f"attributions and end_point must have the same number of examples (dim 0): {a.shape[0]} and {x.shape[0]}"
                )
        starts = _points_like(call, start_point)
        with torch.no_grad():
            end = _rows_summed(call.model(*call.inputs, *call.extra))
            start = _rows_summed(call.model(*starts, *call.extra))
            total = sum(_rows_summed(a) for a in attributions)
        return total - (end - start)


class PerturbationAttribution(Attribution):
    """Base of the perturbation methods (Captum's ``captum.attr.PerturbationAttribution``):
    they multiply by inputs, in Captum's terms (an attribution compares the input with a
    reference)."""

    @property
    def multiplies_by_inputs(self) -> bool:
        return True


class NeuronAttribution(Attribution):
    """Base of the neuron methods (Captum's ``captum.attr.NeuronAttribution``): holds the
    layer; ``attribute`` takes the ``neuron_selector``."""

    def __init__(self, forward_func: Callable, layer, device_ids=None) -> None:
        super().__init__(forward_func)
        self.layer = layer
        self.device_ids = device_ids  # ignored: xattr runs on the inputs' device

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.forward_func!r}, {self.layer!r})"
