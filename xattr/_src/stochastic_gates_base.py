"""The shared part of stochastic gates: arguments, random draws, gating and the L0 penalty.

NOTE: [Random streams of stochastic gates]
Without ``generator`` every draw comes from torch's global generator in Captum's order: the
initial parameters (normal, std 0.01, around 0 for log_alpha and 0.5 for mu) at construction,
then one (batch, n_gates) tensor of noise per training-mode forward (none in eval mode), drawn
on the parameter's device in its dtype. Under the same ``torch.manual_seed`` a Captum module and
this one therefore hold the same parameters and draw the same gates. With ``generator`` (an int
seed or a ``torch.Generator``) the same draws come in the same order from that generator alone,
the global one is left untouched, and an int seed gives a private CPU generator whose draws are
moved to the parameter's device, so the gates do not depend on the device either. Drawing in the
parameter's dtype differs from Captum only after ``.double()``: Captum still draws float32 noise.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from .sampling import torch_generator

_REDUCTIONS = ("sum", "mean", "none")


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


class StochasticGatesBase(nn.Module):
    """Gates the features of a batch with random gates and returns the L0 penalty with them.

    See NOTE: [Stochastic gates] in ``stochastic_gates.py``. Subclasses define the distribution:
    `_sample_gate_values`, `_get_gate_values` and `_get_gate_active_probs`.
    """

    mask: torch.Tensor | None

    def __init__(self, n_gates: int, mask: torch.Tensor | None = None, reg_weight: float = 1.0,
                 reg_reduction: str = "sum", *, generator=None) -> None:  # fmt: skip
        super().__init__()
        if isinstance(n_gates, bool) or not isinstance(n_gates, numbers.Integral) or n_gates < 1:
            raise ValueError(f"n_gates must be a positive int, got {n_gates!r}")
        n_gates = int(n_gates)
        if mask is not None:
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"mask must be a tensor of gate indices, got {type(mask).__name__}")
            if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
                raise TypeError(f"mask must hold integer gate indices, got dtype {mask.dtype}")
            if mask.numel() == 0:
                raise ValueError("mask is empty: give one gate index per input feature")
            lo, hi = int(mask.min()), int(mask.max())
            if lo < 0 or hi != n_gates - 1:
                raise ValueError(f"mask must hold gate indices 0..n_gates-1 with n_gates - 1 = {n_gates - 1} "
                                 f"the largest; it holds {lo}..{hi}")  # fmt: skip
            mask = mask.detach().clone().long()
        if reg_reduction not in _REDUCTIONS:
            raise ValueError(f"reg_reduction must be one of 'sum', 'mean', 'none', got {reg_reduction!r}")
        self.n_gates = n_gates
        self.reg_weight = _real("reg_weight", reg_weight)
        self.reg_reduction = reg_reduction
        self.register_buffer("mask", mask)
        self._generator = torch_generator(generator)

    # NOTE: [Random streams of stochastic gates]
    def _draw(self, shape, fill, like: torch.Tensor | None = None) -> torch.Tensor:
        """A new tensor of ``shape`` filled in place by ``fill(tensor, generator)``, like ``like``
        (its device and dtype; CPU and the default dtype when None)."""
        device = like.device if like is not None else torch.device("cpu")
        dtype = like.dtype if like is not None else torch.get_default_dtype()
        g = self._generator
        if g is None:
            return fill(torch.empty(shape, device=device, dtype=dtype), None)
        return fill(torch.empty(shape, device=g.device, dtype=dtype), g).to(device)

    def forward(self, input_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate a batch: returns ``(input_tensor * gates, l0_reg)``.

        Args:
          input_tensor: a batch ``(B, ...)``. Without ``mask`` each example must have
            ``n_gates`` elements (gate k multiplies flattened element k); with it, ``mask`` must
            broadcast to the input's shape and names each element's gate.

        Returns:
          ``gated`` like the input, and ``l0_reg``: ``reg_weight`` times the sum, the mean or
          the vector of the gates' probabilities of being open (``reg_reduction``), to add to
          the loss. In training mode the gates are random (one draw per example); in eval mode
          they are the deterministic `get_gate_values`.
        """
        x = input_tensor
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input_tensor must be a tensor, got {type(x).__name__}")
        if x.ndim < 2:
            raise ValueError(f"input_tensor must be a batch with at least 2 dims (B, ...), got shape {tuple(x.shape)}")
        batch = x.shape[0]
        if batch == 0:
            raise ValueError(f"input_tensor is an empty batch (shape {tuple(x.shape)}): give at least one example")
        if self.mask is None:
            if x[0].numel() != self.n_gates:
                raise ValueError(f"without a mask each example needs n_gates = {self.n_gates} elements, got "
                                 f"{x[0].numel()} (shape {tuple(x.shape)}); pass mask= to share gates")  # fmt: skip
        else:
            try:
                fits = torch.broadcast_shapes(self.mask.shape, x.shape) == x.shape
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(f"mask of shape {tuple(self.mask.shape)} does not broadcast to the input's "
                                 f"shape {tuple(x.shape)}")  # fmt: skip
        gates = self._sample_gate_values(batch).clamp(0, 1)  # (B, n_gates)
        if self.mask is not None:
            index = self.mask.expand(x.shape).reshape(batch, -1)
            gates = torch.gather(gates, 1, index)
        gated = x * gates.reshape(x.shape)
        probs = self._get_gate_active_probs()
        if self.reg_reduction == "sum":
            reg = probs.sum()
        elif self.reg_reduction == "mean":
            reg = probs.mean()
        else:
            reg = probs
        return gated, reg * self.reg_weight

    def get_gate_values(self, clamp: bool = True) -> torch.Tensor:
        """The deterministic (eval-mode) gate of each gate, ``(n_gates,)``, detached; with
        ``clamp=False`` the value before clamping to [0, 1], which still ranks gates beyond 0 or 1."""
        values = self._get_gate_values()
        return (values.clamp(0, 1) if clamp else values).detach()

    def get_gate_active_probs(self) -> torch.Tensor:
        """P(gate > 0) of each gate, ``(n_gates,)``, detached (the terms of the L0 penalty)."""
        return self._get_gate_active_probs().detach()

    def _sample_gate_values(self, batch_size: int) -> torch.Tensor:
        raise NotImplementedError

    def _get_gate_values(self) -> torch.Tensor:
        raise NotImplementedError

    def _get_gate_active_probs(self) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def _pretrained(cls, name: str, value, *args, **kwargs):
        if not isinstance(value, torch.Tensor) or value.ndim != 1 or value.numel() == 0:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a non-empty 1-D tensor, one value per gate; got {got}")
        gates = cls(value.numel(), *args, **kwargs)
        with torch.no_grad():
            getattr(gates, name).copy_(value)
        return gates

    def extra_repr(self) -> str:
        mask = "" if self.mask is None else f", mask={tuple(self.mask.shape)}"
        return f"n_gates={self.n_gates}{mask}, reg_weight={self.reg_weight}, reg_reduction={self.reg_reduction!r}"
