"""The arithmetic the LRP rules share: the stabilizer, transposes (one weight or several in one
call), and whether a layer's input is known to have no negative entry (`AlphaBeta`, `ZPlus`).
The rules themselves are in lrp_rules.py.

NOTE: [Alpha-beta convolutions per layer]
Alpha-beta splits a layer's input x and weight W by sign: ``z+ = op(x+, W+) + op(x-, W-) + b+``
and ``z- = op(x+, W-) + op(x-, W+) + b-``, and passes back ``g = alpha ([x > 0] op^T(W+, s+) +
[x < 0] op^T(W-, s+)) - beta ([x > 0] op^T(W-, s-) + [x < 0] op^T(W+, s-))`` with ``s+- = g_z z
/ stab(z+-)`` (`ZPlus` is alpha 1, beta 0 without the bias). On an input with no negative
entry, x+ = x and x- = 0, so every term of x- is 0 and is not computed. Convolutions (or matrix
products) per layer, the model's own forward op(x, W, b) included:

    rule                    input        forward   backward (op^T)
    alpha 1, beta 0 / z+    x >= 0       2         1
    alpha 1, beta 0 / z+    any sign     3         2 (1 call up to 8 input channels)
    alpha, beta > 0         x >= 0       3         2
    alpha, beta > 0         any sign     5         4 (2 calls up to 8 input channels)
    epsilon                 any          1         1  (the op's own VJP)
    gamma                   any          2         1

One plain forward and backward is 1 + 1, so z+ on inputs >= 0 (every layer after a ReLU) is at
its arithmetic minimum: z+ itself needs op(x, W+), which no other op gives, and its transpose.
So is gamma (``op(x, W + gamma W+)`` is a forward of its own, then its transpose). Before the
skip, alpha-beta ran 5 forward ops and 2 transposes per layer at every beta (it built z- for
beta = 0 too). On the zennit benchmark's VGG (benchmarks/zennit_workloads.py, CPU, batch 16,
medians of 3 runs), xattr / floor went from 2.97 to 1.65 for z+ at the convs (zennit / xattr
0.91 -> 1.63: 21.9 -> 12.0 ms, zennit 19.6) and from 3.04 to 1.65 for alpha 1, beta 0 (zennit /
xattr 1.51 -> 2.69); epsilon-gamma-box, 1.85 -> 1.69, gained from `ZBox` (NOTE: [z-box per
layer]) and the stabilizer's 5 kernels.

Knowing that x has no negative entry must be cheap and exact, and must be decided in the forward
(the backward reads what the forward saved, NOTE: [Backward callbacks read no context] in
rule_base.py); `non_negative` decides, outside torch.func transforms only (a value check under
``vmap`` is data-dependent control flow; there every layer takes the general path):

- structurally, free on every device: x is a ReLU's output, or a max-pool of one, unchanged since
  (its autograd node holds the tensors it saved, and unpacking one fails when it was written to
  since; a pool's output is checked to be unwritten, version 0);
- else, on CPU, by value: ``x.min() >= 0``, one reduction (12 us on a VGG activation of 131k
  floats, against ~1 ms for the convolution it saves); nan fails it. On a GPU that reduction is a
  host sync, so there only the structural check is made (not measured here: no GPU).

A wrong "yes" would change numbers, a wrong "no" only costs time: the checks say yes only when
sure. tests/test_lrp_fast_paths.py holds the skip equal to the general path, on inputs that do and
do not satisfy it.

NOTE: [z-box per layer]
`ZBox` (the input layer of epsilon-gamma-box) needs ``op(x, W) - op(l, W+) - op(h, W-)`` and three
transposes, ``x op^T(W, s) - l op^T(W+, s) - h op^T(W-, s)``. Its bounds are the same for every
row (numbers, or tensors broadcastable to one input), so ``op(l, W+)`` and ``op(h, W-)`` are
computed on one row and broadcast (a bound given with a row per example keeps the full ops); on
up to 5 input channels (pixels) the three transposes run as one (`transposes`: the
weights side by side along the input channels, which there costs about one). So 2 full forward
convolutions (the model's and ``op(x, W)``) and 2 of one row, and about 1 transpose, where it
ran 4 full ones and 3: on the VGG benchmark's first conv (3 -> 32 channels, 32x32, batch 16) a
forward conv costs ~1.2 ms on CPU, a one-row one 25 us. Values equal up to rounding.
"""

from __future__ import annotations

import torch

from . import ops
from .deeplift_rules import floored
from .rule_base import pullback


def stabilize(z: torch.Tensor, eps: float, *, where: bool | None = None) -> torch.Tensor:
    """``z + eps * sign(z)`` with sign(0) = 1, so it is never 0 for eps > 0.

    Two spellings with equal values: float ops on CPU (NOTE: [Float masks]), 5 kernels on one new
    tensor (``sign(sign(z) + 1/2)`` is sign(z) with 1 at 0, and nan at nan; 28 us where the
    7-kernel ``sign + 1 - |sign|`` took 38, on 131k floats); on other devices (``where=None``: by
    z's device) a ``torch.where`` of 4 kernels, which on a GPU is memory traffic saved on every
    layer's activation.
    """
    eps = floored(eps, z.dtype)
    if where if where is not None else z.device.type != "cpu":
        return torch.where(z >= 0, z + eps, z - eps)
    return torch.sign(z).add_(0.5).sign_().mul_(eps).add_(z)  # in place on one new tensor


def stabilized_ratio(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``z / stabilize(z, eps)``, as ``|z| / (|z| + eps)``: the stabilized value has z's sign and
    size ``|z| + eps``, and IEEE rounding is symmetric in sign, so the quotients are equal (but for
    the sign of a zero quotient at ``z = -0.0``). 3 kernels and 2 new tensors on every device,
    where the quotient of `stabilize` costs 8 kernels on CPU (5 elsewhere): it runs on every ruled
    layer's output. (Fresh tensors cost: a third one measured 1.5x the time of the two.)"""
    a, eps = z.abs(), floored(eps, z.dtype)
    if torch._C._functorch.maybe_current_level() is not None:
        return a / (a + eps)
    return a.div_(a + eps)


def transpose(op: ops.Op, x: torch.Tensor, weight, bias, s: torch.Tensor) -> torch.Tensor:
    """``J^T s`` for the op's Jacobian with respect to its input, at weight (affine ops: any x).
    Under autocast s has the forward's dtype (bfloat16), the saved input and weights float32: a
    conv runs in s's dtype (oneDNN refuses mixed ones), a VJP gets s in its output's dtype."""
    if op.kind == "linear":
        return s @ weight.to(s.dtype)
    if op.kind == "conv" and isinstance(op.options["padding"], (int, tuple, list)):
        # the input gradient alone, given the real input: torch.nn.grad.conv{n}d_input passes a
        # stride-0 stand-in, for which oneDNN measured 3-13% slower on the LRP benchmark's convs
        o, nd = op.options, op.options["nd"]
        x, weight = x.to(s.dtype), weight.to(s.dtype)
        return torch.ops.aten.convolution_backward(
            s, x, weight, None, _n(o["stride"], nd), _n(o["padding"], nd), _n(o["dilation"], nd), False, [0] * nd, o["groups"], (True, False, False)
        )[0]
    rest = () if weight is None else (weight, bias)
    out, back = pullback(lambda t: op.fn(t, *rest), x)
    return back(s.to(out.dtype))[0]


_WIDE = 16  # input channels of the widest conv `transposes` makes of several


def transposes(op: ops.Op, x: torch.Tensor, weights: tuple, s: torch.Tensor) -> tuple:
    """``transpose(op, x, w, None, s)`` for each w of ``weights`` (same shape), in one call outside
    transforms where that is faster: a linear layer's weights side by side (one matrix product);
    a conv's of one group side by side along the input channels (one convolution backward against
    an input of k times the channels) where those are few. Equal values up to rounding. On CPU
    (batch 16, 3x3 kernels, 3 weights / 2 weights): 3 -> 32 channels at 32x32 took 1.32 / 0.88 ms
    apart and 0.46 / 0.45 ms side by side, 1 -> 16 at 28x28 0.55 and 0.20 ms; but 32 -> 64 at
    16x16 0.78 and 0.72 ms, and 128 -> 256 at 4x4 0.65 and 1.5 ms: so a conv joins its weights up
    to `_WIDE` input channels in all (input layers, which z^B and alpha-beta's signed path meet)."""
    k, o = len(weights), op.options
    if k > 1 and _eager():
        if op.kind == "linear":
            return (s @ torch.cat(weights, 1).to(s.dtype)).chunk(k, -1)
        if (op.kind == "conv" and o["groups"] == 1 and k * x.shape[1] <= _WIDE
                and isinstance(o["padding"], (int, tuple, list))):
            nd = o["nd"]
            wide = x.new_empty((x.shape[0], k * x.shape[1]) + tuple(x.shape[2:]), dtype=s.dtype)  # its shape alone is read
            return torch.ops.aten.convolution_backward(
                s, wide, torch.cat(weights, 1).to(s.dtype), None, _n(o["stride"], nd), _n(o["padding"], nd),
                _n(o["dilation"], nd), False, [0] * nd, 1, (True, False, False)
            )[0].chunk(k, 1)
    return tuple(transpose(op, x, w, None, s) for w in weights)


def _n(v, nd: int) -> list:
    """A conv option (an int or one per spatial dim) as a list of nd ints."""
    return [v] * nd if isinstance(v, int) else list(v)


def _eager() -> bool:
    return torch._C._functorch.maybe_current_level() is None


def _added(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b, into a (a fresh tensor) outside transforms."""
    return a.add_(b) if _eager() else a + b


def _masked(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``t * mask`` for a bool mask (the values of ``t * mask.float()``), into t (fresh) outside transforms."""
    return t.mul_(mask) if _eager() else t * mask


def _times(c: float, t: torch.Tensor) -> torch.Tensor:
    """``c * t``; t itself for c = 1 (the same values)."""
    return t if c == 1 else c * t


_RELU_NODES = frozenset({"ReluBackward0", "ReluBackward1"})


def non_negative(x: torch.Tensor) -> bool:
    """True when x surely has no negative entry (NOTE: [Alpha-beta convolutions per layer])."""
    if torch._C._functorch.maybe_current_level() is not None or not x.is_floating_point() or not x.numel():
        return False
    if _from_relu(x):
        return True
    return x.device.type == "cpu" and bool(x.min() >= 0)


def _from_relu(x: torch.Tensor) -> bool:
    """x is a ReLU's output, or a max-pool's of one, and nothing has written to either since."""
    node = x.grad_fn
    if node is None:
        return False
    name = type(node).__name__
    if name.startswith("MaxPool") and x.output_nr == 0 and x._version == 0 and x._base is None:
        parents = node.next_functions
        return (bool(parents) and parents[0][0] is not None and type(parents[0][0]).__name__ in _RELU_NODES
                and _unpacks(node, "_saved_self") and _unpacks(parents[0][0], "_saved_result"))
    return name in _RELU_NODES and _unpacks(node, "_saved_result")


def _unpacks(node, name: str) -> bool:
    """The node's saved tensor ``name`` unpacks: it is there and unwritten since it was saved
    (torch raises for a saved tensor at a later version, or a freed graph)."""
    try:
        return isinstance(getattr(node, name), torch.Tensor)
    except (RuntimeError, AttributeError):
        return False
