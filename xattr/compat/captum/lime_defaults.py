"""Captum's LIME defaults as xattr's own functions with Captum's semantics, callable on their own
(the tutorials call them directly): the per-sample exponential kernel, the Bernoulli(1/2)
sampler and the interpretable-to-input transform. ``Lime`` recognises each and runs xattr's
batched equivalent instead (surrogate.py)."""

from __future__ import annotations

import math
from typing import Callable

import torch


_CAPTUM_KERNEL = "_xattr_captum_exp_kernel"


def get_exp_kernel_similarity_function(distance_mode: str = "cosine", kernel_width: float = 1.0) -> Callable[..., float]:
    """Captum's per-sample exponential kernel: ``similarity(original_inp, perturbed_inp, interp_sample,
    **kwargs) -> float``, ``exp(-d^2 / (2 kernel_width^2))`` with ``d`` the cosine distance
    ``1 - cos`` (``"cosine"``) or the Euclidean distance (``"euclidean"``) between the two inputs,
    each flattened (a tuple's tensors concatenated), in at least float32. ``interp_sample`` and
    the kwargs are not read. Callable on its own (the tutorials' ``sim(img, perturbed, None)``);
    ``Lime`` recognises it and computes the same weights batched, as
    ``xattr.exp_kernel_similarity(distance_mode, kernel_width)``, whose function takes every
    example's copies at once ((B, N, ...) leaves).
    """
    if distance_mode not in ("cosine", "euclidean"):
        raise ValueError(f"distance_mode must be 'cosine' or 'euclidean', got {distance_mode!r}")
    if not kernel_width > 0:
        raise ValueError(f"kernel_width must be positive, got {kernel_width}")

    def flat(inp) -> torch.Tensor:
        leaves = inp if isinstance(inp, (tuple, list)) else (inp,)
        x = torch.cat([torch.as_tensor(t).reshape(-1) for t in leaves])
        return x.to(torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.float32)

    def exp_kernel_similarity(original_inp, perturbed_inp, interp_sample=None, **kwargs) -> float:
        with torch.no_grad():
            x, p = flat(original_inp), flat(perturbed_inp)
            if x.shape != p.shape:
                raise ValueError(f"the original and perturbed inputs have {x.numel()} and {p.numel()} elements: "
                                 "they must have the same")  # fmt: skip
            dt = torch.promote_types(x.dtype, p.dtype)
            x, p = x.to(dt), p.to(dt)
            if distance_mode == "cosine":
                d = 1 - float(torch.nn.functional.cosine_similarity(x, p, dim=0))
            else:
                d = float((x - p).norm())
        return math.exp(-(d * d) / (2 * kernel_width**2))

    setattr(exp_kernel_similarity, _CAPTUM_KERNEL, (distance_mode, float(kernel_width)))
    return exp_kernel_similarity


def default_perturb_func(original_inp, **kwargs) -> torch.Tensor:
    """Captum's default LIME sampling: a (1, num_interp_features) long tensor of Bernoulli(1/2)
    draws (torch's global generator) on the inputs' device. Needs ``num_interp_features=``. ``Lime``
    recognises it and draws every example's coalitions at once (``generator=``)."""
    if "num_interp_features" not in kwargs:
        raise ValueError("default_perturb_func needs num_interp_features= (the number of interpretable features)")
    device = (original_inp[0] if isinstance(original_inp, (tuple, list)) else original_inp).device
    return torch.bernoulli(torch.full((1, int(kwargs["num_interp_features"])), 0.5)).to(device=device, dtype=torch.long)


def default_from_interp_rep_transform(curr_sample, original_inputs, **kwargs):
    """Captum's default transform from a (1, F) 0/1 interpretable sample to a model input: each
    element of ``original_inputs`` kept where its feature (``feature_mask=``, ids into the
    sample) is 1 and set to ``baselines=`` where it is 0. A tuple of inputs takes tuples of masks
    and baselines (one number is used for every tensor)."""
    for key in ("feature_mask", "baselines"):
        if key not in kwargs:
            raise ValueError(f"default_from_interp_rep_transform needs {key}=")
    sample = torch.as_tensor(curr_sample).reshape(-1)

    def one(x: torch.Tensor, mask, base):
        keep = sample.to(x.device)[torch.as_tensor(mask, device=x.device)].bool()
        return torch.where(keep, x, torch.as_tensor(base, dtype=x.dtype, device=x.device))

    masks, bases = kwargs["feature_mask"], kwargs["baselines"]
    if not isinstance(original_inputs, tuple):
        return one(original_inputs, masks, bases)
    bases = bases if isinstance(bases, tuple) else (bases,) * len(original_inputs)
    return tuple(one(x, m, b) for x, m, b in zip(original_inputs, masks, bases))
