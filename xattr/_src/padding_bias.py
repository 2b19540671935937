"""Padding-induced spatial bias: how a CNN's feature maps respond to a constant input.

NOTE: [Padding bias from a constant input]
A convolution over a constant image gives the same value at every position it computes from
the image alone. Where its window reaches into zero padding it sees other values, so the
border of the map differs from the interior, and each further padded layer widens that ring
(Alsallakh, Kokhlikyan, Miglani, Yuan and Reblitz-Richardson, "Mind the Pad -- CNNs Can
Develop Blind Spots", ICLR 2021). The artifacts reach every attribution computed through
those layers. `padding_bias` feeds the model one constant input per fill value, reads each
named layer's output with `at_layer` (its hooks are removed within the call) and averages it
over channels; `border_ratio` sums the map up as one number: how far the border ring sits
from the interior's mean, relative to how far the interior itself varies. Without padding,
or with circular padding, the map of a constant input is constant and the ratio 0.

Deviations below rounding level (``tol``, by default 64 machine epsilons of the map's
largest magnitude) count as zero, so that a map equal up to rounding (a convolution
backend that sums in another order at the edges) is read as constant and not as 0/eps.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from .layers import at_layer


def _named_layers(model: nn.Module, layers) -> dict[str, nn.Module]:
    paths: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), name)
    if isinstance(layers, nn.Module):
        layers = [layers]
    if isinstance(layers, Mapping):
        named = dict(layers)
    elif isinstance(layers, (list, tuple)):
        named = {}
        for m in layers:
            if not isinstance(m, nn.Module):
                raise TypeError(f"layers must hold nn.Module objects, got {type(m).__name__}")
            if id(m) not in paths:
                raise ValueError(f"layer {type(m).__name__} is not a module of the model")
            name = paths[id(m)]
            if name in named:
                raise ValueError(f"layer {name!r} is given twice")
            named[name] = m
    else:
        raise TypeError(f"layers must be a dict name -> module or a list of modules, got {type(layers).__name__}")
    if not named:
        raise ValueError("layers is empty: name at least one module")
    for name, m in named.items():
        if not isinstance(m, nn.Module):
            raise TypeError(f"layer {name!r} is not an nn.Module but {type(m).__name__}")
        if id(m) not in paths:
            raise ValueError(f"layer {name!r} ({type(m).__name__}) is not a module of the model")
    return named


def _shape(input_shape) -> tuple[int, ...]:
    if isinstance(input_shape, int) or not isinstance(input_shape, (tuple, list, torch.Size)):
        raise TypeError(f"input_shape must be a tuple of ints (one example, no batch dim), got {input_shape!r}")
    if not input_shape or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in input_shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {tuple(input_shape)!r}")
    return tuple(input_shape)


def padding_bias(
    model: nn.Module,
    layers,
    input_shape,
    *,
    fill=0.0,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> dict[str, torch.Tensor]:
    """Channel-averaged activation maps of named layers for a constant input.

    See NOTE: [Padding bias from a constant input].

    Args:
      model: an ``nn.Module`` taking one image batch; used as it is (its train/eval mode and
        parameters are left unchanged, and no hook stays on it).
      layers: a dict name -> module, or a list of modules (named by their path in the model,
        as ``model.named_modules()`` gives it). Each must output a ``(1, C, H, W)`` tensor.
      input_shape: the shape of one example without the batch dim, e.g. ``(1, 8, 8)``.
      fill: the constant value of every input element, or a list of values whose maps are
        averaged (one forward pass each, batch 1).
      dtype, device: of the input; the device defaults to that of the model's first parameter.

    Returns:
      ``{name: map}``, each map a detached ``(H, W)`` tensor: the layer's output averaged over
      channels (and over the fills).

    Example:
      >>> maps = xattr.padding_bias(model, [model[0], model[2]], (1, 8, 8))
      >>> xattr.border_ratio(maps["2"])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"padding_bias needs an nn.Module model, got {type(model).__name__}")
    named = _named_layers(model, layers)
    shape = _shape(input_shape)
    fills = list(fill) if isinstance(fill, (list, tuple)) else [fill]
    if not fills:
        raise ValueError("fill is an empty list: give at least one value")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    names = list(named)
    split = at_layer(model, [named[n] for n in names])
    sums: list = [None] * len(names)
    with torch.no_grad():
        for value in fills:
            x = torch.full((1, *shape), float(value), dtype=dtype, device=device)
            acts = split.act(x)
            for i, (name, a) in enumerate(zip(names, acts)):
                if not isinstance(a, torch.Tensor) or a.ndim != 4 or a.shape[0] != 1:
                    got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
                    raise ValueError(f"layer {name!r} must output a (1, C, H, W) tensor, got {got}")
                m = a[0].mean(dim=0)
                sums[i] = m if sums[i] is None else sums[i] + m
    return {name: (s / len(fills)).detach() for name, s in zip(names, sums)}


def border_ratio(map, width: int = 1, *, tol: float | None = None) -> float:
    """Mean |map - interior mean| on the border ring over the same in the interior.

    Args:
      map: a 2-D ``(H, W)`` map (a tensor or array), e.g. one of `padding_bias`'s.
      width: the ring's width in pixels; the interior ``map[width:-width, width:-width]``
        must not be empty.
      tol: deviations at most this large count as zero (default: 64 machine epsilons of the
        map's dtype times its largest magnitude, i.e. rounding noise).

    Returns:
      The ratio as a float: 0 for a constant map, ``inf`` where the interior is constant but
      the border is not, and 0 where both are constant (0/0).

    Example:
      >>> maps = xattr.padding_bias(model, [model[0], model[2]], (1, 28, 28))
      >>> xattr.border_ratio(maps["2"], width=1)   # a float: 0 for a flat map, large for a bright rim
    """
    m = torch.as_tensor(map).detach()
    if m.ndim != 2:
        raise ValueError(f"border_ratio needs a 2-D (H, W) map, got shape {tuple(m.shape)}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    h, w = m.shape
    if h <= 2 * width or w <= 2 * width:
        raise ValueError(f"a {h}x{w} map has no interior inside a border of width {width}")
    eps = torch.finfo(m.dtype).eps if m.is_floating_point() else 0.0
    m = m.double()
    if not torch.isfinite(m).all():
        raise ValueError("border_ratio needs a finite map")
    inner = torch.zeros(h, w, dtype=torch.bool, device=m.device)
    inner[width:-width, width:-width] = True
    if tol is None:
        tol = 64 * eps * float(m.abs().max())
    dev = (m - m[inner].mean()).abs()
    dev = torch.where(dev <= tol, torch.zeros_like(dev), dev)
    num = float(dev[~inner].mean())
    den = float(dev[inner].mean())
    if den == 0.0:
        return math.inf if num > 0.0 else 0.0
    return num / den
