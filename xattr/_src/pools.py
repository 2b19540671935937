"""Max and average pools, plain and adaptive, 1-3d (kinds ``"max_pool"`` and ``"avg_pool"``): their
spellings and parsers, which ops.py adds to its table, and `pool_with_indices`, which the max-pool
rules (DeepLift's, LRP's) read a pool's argmax from."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def _max_pool(make: Callable, nd: int):
    pool = getattr(F, f"max_pool{nd}d_with_indices")

    def parse(func, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        return_indices = return_indices or func is pool
        options = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
        if nd == 2:
            fn = lambda x: _max_pool2d(x, options)  # noqa: E731
        else:
            fn = lambda x: pool(x, **options)[0]  # noqa: E731
        return make("max_pool", fn, (input,), dict(options, nd=nd, return_indices=return_indices), func, False)

    return parse


def _adaptive_max_pool(make: Callable, nd: int):
    pool = getattr(F, f"adaptive_max_pool{nd}d_with_indices")

    def parse(func, input, output_size, return_indices=False):
        fn = lambda x: pool(x, output_size)[0]  # noqa: E731
        options = dict(output_size=output_size, nd=nd, return_indices=bool(return_indices) or func is pool)
        return make("max_pool", fn, (input,), options, func, False)

    return parse


_POOL_KEYS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")


def pool_with_indices(op, x: torch.Tensor):
    """A max-pool op's output at x and the flat spatial index of each output's argmax (the same
    layout for plain and adaptive max-pools)."""
    nd = op.options["nd"]
    if "output_size" in op.options:
        return getattr(F, f"adaptive_max_pool{nd}d_with_indices")(x, op.options["output_size"])
    options = {k: op.options[k] for k in _POOL_KEYS}
    if nd == 2 and _channels_last_pays(x):  # NOTE: [Max-pools in channels-last]
        y, indices = F.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last), **options)
        return y.contiguous(), indices.contiguous()
    return getattr(F, f"max_pool{nd}d_with_indices")(x, **options)


# NOTE: [Max-pools in channels-last]
# torch's CPU max-pool over a contiguous (N, C, H, W) tensor walks each window with a branch per
# element (``val > max || isnan(val)``), which on activations (half zeros after a ReLU) the CPU
# mispredicts; its channels-last kernel compares whole vectors of channels. Copying x to
# channels-last, pooling, and copying the output and indices back costs 3.5-4.6x less at one
# thread for 16-64 channels (17x16x32x32, 2x2 windows: 0.96 -> 0.27 ms; 1x64x112x112, 3x3 stride 2:
# 4.0 -> 0.84 ms) and 1.1-3x less at two, where the plain kernel is parallel over N*C. The two
# kernels visit a window in the same order with the same comparison, so values and indices are
# the same bit for bit, NaN, -inf, signed zeros, padding and ceil_mode included (tested against
# torch's on random windows). With few channels there is nothing to vectorize and the copies
# dominate (16x3x32x32: 2-5x slower), hence the thresholds; 3-d pools gained at one thread and
# lost at two, so they keep torch's layout.
_CL_CHANNELS, _CL_SPATIAL = 16, 64


def called(op, func: Callable, args: tuple, kwargs: dict):
    """``func(*args, **kwargs)``, the op as the model called it, where a rule keeps the op's own
    backward (NOTE: [Rules as output hooks] in rule_apply.py); a 2-d max-pool without indices in
    channels-last where that pays (NOTE: [Max-pools in channels-last])."""
    if op.kind == "max_pool" and op.options["nd"] == 2 and "output_size" not in op.options and not op.options["return_indices"]:
        return _max_pool2d(op.tensors[0], {k: op.options[k] for k in _POOL_KEYS})
    return func(*args, **kwargs)


def _max_pool2d(x: torch.Tensor, options: dict) -> torch.Tensor:
    """F.max_pool2d(x, **options), in channels-last where that pays (NOTE: [Max-pools in channels-last])."""
    if _channels_last_pays(x):
        return _ChannelsLastPool.apply(x, tuple(options[k] for k in _POOL_KEYS))[0]
    return F.max_pool2d(x, **options)


class _ChannelsLastPool(torch.autograd.Function):
    """A 2-d max-pool run in channels-last whose gradient comes back in x's own layout: torch's
    autograd through ``x.contiguous(memory_format=torch.channels_last)`` hands the next op back a
    channels-last gradient, and an elementwise backward that mixes it with a contiguous saved
    tensor (ReLU's) ran 4x slower than the pool saved. The backward is torch's own max-pool
    backward, with the argmax indices, which do not depend on the layout."""

    @staticmethod
    def forward(x, options):
        y, indices = F.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last), *options)
        return y.contiguous(), indices.contiguous()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.options = inputs[1]
        ctx.save_for_backward(inputs[0], output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad, _):
        x, indices = ctx.saved_tensors
        kernel, stride, padding, dilation, ceil_mode = ctx.options
        stride = kernel if stride is None or stride == [] else stride
        args = [_pair(v) for v in (kernel, stride, padding, dilation)]
        return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, *args, ceil_mode, indices), None


def _pair(v) -> list:
    return [v, v] if isinstance(v, int) else list(v)


def _channels_last_pays(x: torch.Tensor) -> bool:
    return (x.ndim == 4 and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, torch.bfloat16)
            and x.shape[1] >= _CL_CHANNELS and x.shape[2] * x.shape[3] >= _CL_SPATIAL and x.is_contiguous()
            and not torch._C._functorch.is_functorch_wrapped_tensor(x))


def _avg_pool(make: Callable, nd: int):
    pool = getattr(F, f"avg_pool{nd}d")

    def parse(func, input, *rest, **kwargs):
        fn = lambda x: pool(x, *rest, **kwargs)  # noqa: E731
        return make("avg_pool", fn, (input,), {"nd": nd}, func, False)

    return parse


def _adaptive_avg_pool(make: Callable, nd: int):
    pool = getattr(F, f"adaptive_avg_pool{nd}d")

    def parse(func, input, output_size):
        return make("avg_pool", lambda x: pool(x, output_size), (input,), {"nd": nd}, func, False)

    return parse


def spellings(make: Callable) -> list:
    """``[(torch function, kind, parser)]`` of every pool; ``make``: ops.Op."""
    out = []
    for nd in (1, 2, 3):
        for f in (getattr(F, f"max_pool{nd}d"), getattr(torch, f"max_pool{nd}d"), getattr(F, f"max_pool{nd}d_with_indices")):
            out.append((f, "max_pool", _max_pool(make, nd)))
        for f in (getattr(F, f"adaptive_max_pool{nd}d"), getattr(F, f"adaptive_max_pool{nd}d_with_indices")):
            out.append((f, "max_pool", _adaptive_max_pool(make, nd)))
        out.append((getattr(F, f"avg_pool{nd}d"), "avg_pool", _avg_pool(make, nd)))
        out.append((getattr(F, f"adaptive_avg_pool{nd}d"), "avg_pool", _adaptive_avg_pool(make, nd)))
    return out
