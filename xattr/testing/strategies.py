"""Hypothesis strategies for small random models and inputs to property-test attributions.

Every model is built deterministically from a drawn `ModelSpec` (which records a seed), so a
failing example prints as a short, reproducible spec: ``spec.build()`` recreates the model.
Building never touches torch's global random state (it runs under ``torch.random.fork_rng``).
Models are in eval mode and small (a few features, a few units), so a property test with tens
of examples runs in about a second on a CPU.

Example:
  >>> from hypothesis import given
  >>> from xattr.testing import strategies as xst
  >>> @given(xst.models_and_inputs(activations=xst.SMOOTH, pool=False))  # max-pool is not smooth
  ... def test_ig_complete(model_x):
  ...     model, x = model_x
  ...     f = xattr.target(model, 0)
  ...     check_completeness(f, xattr.integrated_gradients(f, n_steps=64), x, atol=1e-6, rtol=1e-5)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch
from hypothesis import assume
from hypothesis import strategies as st
from torch import nn

ACTIVATIONS = ("relu", "gelu", "softplus", "tanh")
SMOOTH = ("gelu", "softplus", "tanh")  # infinitely differentiable: quadrature converges fast
_ACT = {"relu": nn.ReLU, "gelu": nn.GELU, "softplus": nn.Softplus, "tanh": nn.Tanh}

seeds = st.integers(min_value=0, max_value=2**31 - 1)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A small random model: ``kind`` "mlp", "cnn" or "linear", built from ``seed``.

    ``in_shape`` is one example's shape ((D,) for mlp/linear, (C, H, W) for cnn); ``hidden`` the
    hidden widths (mlp) or conv channels (cnn); ``pool`` adds a max-pool after the first hidden
    layer; ``softmax`` a softmax head over ``n_out`` outputs.
    """

    kind: str
    seed: int
    in_shape: tuple[int, ...]
    n_out: int = 3
    activation: str = "tanh"
    hidden: tuple[int, ...] = (4,)
    pool: bool = False
    softmax: bool = False
    dtype: torch.dtype = torch.float64

    def build(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = _LAYOUTS[self.kind](self)
        return model.to(self.dtype).eval()


def _mlp(spec: ModelSpec) -> nn.Sequential:
    act = _ACT[spec.activation]
    layers: list[nn.Module] = [nn.Flatten()]
    width = spec.in_shape[0]
    for i, h in enumerate(spec.hidden):
        layers += [nn.Linear(width, h), act()]
        width = h
        if i == 0 and spec.pool and width >= 2:  # (B, h) -> (B, 1, h) -> pool -> (B, h // 2)
            layers += [nn.Unflatten(1, (1, width)), nn.MaxPool1d(2), nn.Flatten()]
            width //= 2
    layers.append(nn.Linear(width, spec.n_out))
    if spec.softmax:
        layers.append(nn.Softmax(dim=1))
    return nn.Sequential(*layers)


def _cnn(spec: ModelSpec) -> nn.Sequential:
    act = _ACT[spec.activation]
    c, h, w = spec.in_shape
    layers: list[nn.Module] = []
    for i, ch in enumerate(spec.hidden):
        layers += [nn.Conv2d(c, ch, 3, padding=1), act()]
        c = ch
        if i == 0 and spec.pool:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, spec.n_out)]
    if spec.softmax:
        layers.append(nn.Softmax(dim=1))
    return nn.Sequential(*layers)


def _linear(spec: ModelSpec) -> nn.Sequential:
    n_in = 1
    for s in spec.in_shape:
        n_in *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, spec.n_out))


_LAYOUTS = {"mlp": _mlp, "cnn": _cnn, "linear": _linear}


@st.composite
def model_specs(
    draw,
    kinds: Sequence[str] = ("mlp", "cnn"),
    activations: Sequence[str] = ACTIVATIONS,
    pool: bool | None = None,
    softmax: bool | None = None,
    n_out: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> ModelSpec:
    """Draws a `ModelSpec`; ``pool``/``softmax``/``n_out`` fixed when given, drawn when None."""
    kind = draw(st.sampled_from(list(kinds)))
    if kind == "cnn" or (kind == "linear" and draw(st.booleans())):  # affine models take images too
        in_shape = (draw(st.integers(1, 2)), draw(st.integers(4, 5)), draw(st.integers(4, 5)))
        hidden = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    else:
        in_shape = (draw(st.integers(2, 6)),)
        hidden = tuple(draw(st.lists(st.integers(2, 6), min_size=1, max_size=2)))
    return ModelSpec(
        kind=kind,
        seed=draw(seeds),
        in_shape=in_shape,
        n_out=n_out if n_out is not None else draw(st.integers(1, 4)),
        activation=draw(st.sampled_from(list(activations))),
        hidden=hidden,
        pool=pool if pool is not None else (kind != "linear" and draw(st.booleans())),
        softmax=softmax if softmax is not None else draw(st.booleans()),
        dtype=dtype,
    )


def models(**spec_kwargs) -> st.SearchStrategy[nn.Module]:
    """Small random models in eval mode (see `model_specs` for the options)."""
    return model_specs(**spec_kwargs).map(lambda spec: spec.build())


def random_tensor(shape: Sequence[int], seed: int, dtype: torch.dtype = torch.float64, scale: float = 1.0) -> torch.Tensor:
    """A standard normal tensor from its own generator (the global random state is untouched)."""
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(tuple(shape), generator=gen, dtype=torch.float64)).to(dtype)


def inputs(
    shape: Sequence[int], *, batch_sizes: st.SearchStrategy[int] = st.integers(1, 3), dtype: torch.dtype = torch.float64
) -> st.SearchStrategy[torch.Tensor]:
    """Batches (B, *shape) of standard normal inputs, B drawn from ``batch_sizes``."""
    return st.tuples(batch_sizes, seeds).map(lambda bs: random_tensor((bs[0],) + tuple(shape), bs[1], dtype))


@st.composite
def models_and_inputs(draw, *, batch_sizes: st.SearchStrategy[int] = st.integers(1, 3), **spec_kwargs):
    """(model, x): a random model and a batch of inputs of its shape and dtype."""
    spec = draw(model_specs(**spec_kwargs))
    x = draw(inputs(spec.in_shape, batch_sizes=batch_sizes, dtype=spec.dtype))
    return spec.build(), x


def linear_models_and_inputs(**kwargs) -> st.SearchStrategy:
    """(model, x) for affine models ``W flatten(x) + c`` (MLP or image-shaped inputs)."""
    kwargs.setdefault("kinds", ("linear",))
    return models_and_inputs(softmax=False, **kwargs)


@st.composite
def symmetric_models_and_inputs(draw, *, dtype: torch.dtype = torch.float64, **spec_kwargs):
    """(model, x, i, j): an MLP symmetric in input features i and j, and x with x_i == x_j.

    Symmetry comes from tying the first layer's weight columns i and j, so swapping the two
    features leaves every hidden unit unchanged.
    """
    spec = draw(model_specs(kinds=("mlp",), dtype=dtype, **spec_kwargs))
    model = spec.build()
    d = spec.in_shape[0]
    i = draw(st.integers(0, d - 1))
    j = draw(st.integers(0, d - 1).filter(lambda j: j != i))
    with torch.no_grad():
        model[1].weight[:, j] = model[1].weight[:, i]
    x = draw(inputs(spec.in_shape, dtype=dtype)).clone()
    x[:, j] = x[:, i]
    return model, x, i, j


@st.composite
def dummy_models_and_inputs(draw, *, dtype: torch.dtype = torch.float64, **spec_kwargs):
    """(model, x, mask): a model that ignores the input features where ``mask`` (x.shape[1:]) is True.

    MLPs ignore features whose first-layer weight columns are zero; CNNs ignore an input channel
    whose filters are zero; a linear model on a (C, H, W) example ignores a whole channel (the
    columns of its flattened features are zero), so the mask marks what the model ignores.
    """
    spec = draw(model_specs(dtype=dtype, **spec_kwargs))
    model = spec.build()
    first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    mask = torch.zeros(spec.in_shape, dtype=torch.bool)
    n_units = spec.in_shape[0]
    inner = math.prod(spec.in_shape[1:])  # flattened features per entry of dim 0 (a Linear reads them all)
    dead = draw(st.lists(st.integers(0, n_units - 1), min_size=1, max_size=max(1, n_units - 1), unique=True))
    with torch.no_grad():
        for k in dead:
            if isinstance(first, nn.Linear):
                first.weight[:, k * inner : (k + 1) * inner] = 0.0
            else:
                first.weight[:, k] = 0.0
            mask[k] = True
    return model, draw(inputs(spec.in_shape, dtype=dtype)), mask


@st.composite
def twin_models_and_inputs(draw, *, dtype: torch.dtype = torch.float64, **spec_kwargs):
    """(model, twin, x): two different implementations of one function.

    The twin is the same MLP with its first hidden layer's units permuted (weights rows, biases
    and the next layer's columns), so parameters and intermediate values differ but outputs agree.
    """
    spec = draw(model_specs(kinds=("mlp",), dtype=dtype, pool=False, **spec_kwargs))
    width = spec.hidden[0]
    assume(width >= 2)  # one unit has no other order
    model, twin = spec.build(), spec.build()
    order = draw(st.permutations(range(width)).filter(lambda p: list(p) != sorted(p)))  # never the identity
    perm = torch.tensor(order)
    first, second = twin[1], twin[3]
    with torch.no_grad():
        first.weight.copy_(first.weight[perm])
        first.bias.copy_(first.bias[perm])
        second.weight.copy_(second.weight[:, perm])
    return model, twin, draw(inputs(spec.in_shape, dtype=dtype))
