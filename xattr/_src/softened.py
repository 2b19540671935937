"""`softened`: a model run with every ReLU a Softplus and every max-pool a LogSumExp pool.

NOTE: [Softened operations]
Kokhlikyan, Miglani, Alsallakh, Martin and Reblitz-Richardson ("Investigating sanity checks
for saliency maps with image and text classification", 2021) found that a smoother network
function gives more reliable saliency maps (lower infidelity). `softened(model)` runs the
user's model under a ``TorchFunctionMode`` that answers the ops themselves, not module types,
so ``nn.ReLU``, ``F.relu``, ``torch.relu``, ``x.relu()``, ``x.relu_()``, ``ReLU(inplace=True)``
and a module reused five times are all caught (as the rules are: NOTE: [Intercepting
operations] in rules.py):

  relu(x)  ->  softplus_beta(x) = log(1 + exp(beta x)) / beta      (``F.softplus``, torch's
               threshold 20: exactly x where beta x > 20)
  max over a window W of n real elements  ->  LSE_t(W) = t log( (1/n) sum_{w in W} exp(w / t) )

The LSE pool is the normalised log-sum-exp pooling of Pinheiro and Collobert (CVPR 2015),
with temperature t = 1/r. Its bounds, for every window:
  max(W) - t log n  <=  LSE_t(W)  <=  max(W),     mean(W) <= LSE_t(W)      (Jensen),
it decreases as t grows (from the max at t -> 0 towards the mean as t -> inf), and
softplus_beta(x) - relu(x) lies in (0, log(2) / beta]. So beta -> inf and t -> 0 give the
original model back. Elements of the padding (torch pads a max-pool with -inf) are not
elements of the window: n counts the real ones only, and the LSE of a window lies between the
mean and the max of its real elements.

Computed as nested log-mean-exps, one spatial dim at a time: a window is the product of one
interval per dim, and the mean over a product is the mean over each factor in turn, so
``t * lme_1(lme_2(x / t))`` is the LSE above exactly (up to rounding), with -inf padding,
``index_select`` for the windows and ``torch.logsumexp`` (stable) for each.

Which calls:
  - ReLU: ``F.relu`` (``inplace=``), ``torch.relu``, ``Tensor.relu``, ``torch.relu_``,
    ``Tensor.relu_``, ``F.relu_``; an in-place call writes the softplus into its input (the
    softplus is taken of a copy, whose value autograd keeps). Not ReLU, left as they are:
    ``relu6``, ``leaky_relu``, ``threshold``, ``clamp(min=0)``, ``torch.maximum(x, 0)``.
  - max-pools: ``F.max_pool{1,2,3}d``, ``torch.max_pool{1,2,3}d`` (``nn.MaxPool*``) with
    kernel, stride, padding, dilation and ceil_mode; ``F.adaptive_max_pool{1,2,3}d``
    (``nn.AdaptiveMaxPool*``: torch's windows, ``floor(i L / o)`` to ``ceil((i + 1) L / o)``).
    Refused with a ValueError, never left as a max: ``return_indices=True`` and the
    ``*_with_indices`` forms (an LSE has no argmax: ``MaxUnpool`` would undo a max that was not
    taken), fractional max-pools (random windows), and ReLU RNNs (``nn.RNN(nonlinearity="relu")``,
    whose ReLUs run inside one fused kernel).
  - max reductions, with ``max_reductions=True`` (the default): ``x.max(dim)``,
    ``torch.max(x, dim, keepdim)``, ``torch.amax``/``Tensor.amax`` and ``x.max()``, on floating
    tensors: the LSE over the reduced dims (n their number of elements). The max-over-time of a
    text CNN is such a reduction. ``x.max(dim)`` still returns torch's own argmax indices beside
    the smoothed values (a reduction written into ``out=`` is refused). Integer tensors (token
    ids, lengths), the two-tensor ``torch.max(a, b)`` (an elementwise maximum) and minima are
    left as they are. Pass
    ``max_reductions=False`` where the model takes maxima for other purposes (a stabilising
    ``x - x.max(dim, keepdim=True)`` before a softmax is harmless: any shift cancels there).

The mode is entered in the wrapper's ``forward`` and sits above every mode already on torch's
stack, so the method's rules (DeepLift, LRP) see the softplus and the ops of the LSE, not the
ReLU and the max. DeepLift has a rule for each: Rescale at softplus, and at every
``torch.logsumexp`` of the LSE pools and reductions the secant of logsumexp (`ExactSoftmax`:
NOTE: [DeepLift through logsumexp] in deeplift_softmax.py), so through a softened model its
attributions sum to f(x) - f(b) up to rounding. Measured (docs/sanity.md): 9e-17 in float64 on
a small CNN with two pools, where logsumexp's ordinary gradient (DeepLift before that rule)
missed 0.025 of a change of 0.05; 6e-8 in float32 on a random-weight torchvision ResNet-18
(64 x 64 inputs), where it missed 0.19 of 0.48 (at 224 x 224: 6e-7, and 0.60 of 1.26). It
is a torch function mode: it sees ops under ``torch.func.grad``, ``vmap`` and ``jacrev`` as
well, and it is per thread. A torch.compile'd model runs its Python source
(as under the rules: NOTE: [Rules on compiled models]); TorchScript, which the mode cannot see
into, is refused, and so is tracing the wrapper with torch.fx (xattr's traced layer heads then
fall back to the hook head).

NOTE: [Softened defaults]
beta = 10 and t = 0.1. A softened model explains a *different* function than the trained one,
so the defaults keep it close: softplus differs from ReLU by at most log(2)/10 = 0.069 (at 0),
and the LSE pool from the max by at most 0.1 log n (0.28 for a window of 16). On the tiny text
CNN of docs/sanity.md (activations of order 1) this keeps the predictions of the trained model
on every one of its test sentences, while the gradient of the max-over-time is shared by every
position within about t of the max instead of going to one. Smaller beta or larger t smooth
more and move the function further; for models whose activations are much larger or smaller
than 1, scale t (and 1/beta) with them.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .rule_limits import calls_jit, eager_compiled, jit_error

_RELU = (F.relu, torch.relu, torch.Tensor.relu)
_RELU_INPLACE = (torch.relu_, torch.Tensor.relu_, F.relu_)
_POOLS = {getattr(m, f"max_pool{nd}d"): nd for nd in (1, 2, 3) for m in (F, torch)}
_ADAPTIVE = {getattr(F, f"adaptive_max_pool{nd}d"): nd for nd in (1, 2, 3)}
_WITH_INDICES = (
    *(getattr(F, f"{kind}_pool{nd}d_with_indices") for nd in (1, 2, 3) for kind in ("max", "adaptive_max")),
    *(getattr(torch, f"max_pool{nd}d_with_indices", None) for nd in (1, 2, 3)),
    torch.adaptive_max_pool1d,
)
_REFUSED = {
    **dict.fromkeys((f for f in _WITH_INDICES if f is not None), "a max-pool returning indices"),
    **dict.fromkeys((F.fractional_max_pool2d, F.fractional_max_pool3d, F.fractional_max_pool2d_with_indices,
                     F.fractional_max_pool3d_with_indices), "a fractional max-pool (random windows)"),
    **dict.fromkeys((torch.rnn_relu, torch.rnn_relu_cell), "a ReLU RNN (its ReLUs run inside one fused kernel)"),
}
_fx_tracing = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", torch.fx._symbolic_trace.is_fx_tracing)
_REDUCTIONS = (torch.max, torch.Tensor.max, torch.amax, torch.Tensor.amax)


def lse_reduce(x: torch.Tensor, dims, temperature: float, keepdim: bool = False) -> torch.Tensor:
    """``t log mean exp(x / t)`` over ``dims`` (NOTE: [Softened operations])."""
    dims = tuple(range(x.ndim)) if not dims else tuple(d % x.ndim for d in dims)
    n = math.prod(x.shape[d] for d in dims)
    return temperature * (torch.logsumexp(x / temperature, dims, keepdim=keepdim) - math.log(n))


def _tuple(v, nd: int, what: str) -> tuple:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
    if len(v) == 1:
        v = v * nd
    if len(v) != nd or not all(isinstance(i, numbers.Integral) for i in v):
        raise ValueError(f"a {nd}-d max-pool needs {what} as an int or {nd} ints, got {v!r}")
    return tuple(int(i) for i in v)


def _out_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's max-pool output length along one dim."""
    span = d * (k - 1) + 1
    if k < 1 or s < 1 or d < 1 or p < 0 or p > k // 2:  # torch's own limits
        raise ValueError(f"invalid max-pool window: kernel {k}, stride {s}, padding {p}, dilation {d} (the padding "
                         "must be at most half the kernel size)")
    num = size + 2 * p - span
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:  # the last window must start inside the input or the left padding
        out -= 1
    if out < 1:
        raise ValueError(f"max-pool window (kernel {k}, dilation {d}, padding {p}) is larger than the input ({size})")
    return out


def _lme_windows(g: torch.Tensor, dim: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> torch.Tensor:
    """log-mean-exp of g over torch's max-pool windows along ``dim``; padding excluded from the mean."""
    size = g.shape[dim]
    out = _out_size(size, k, s, p, d, ceil_mode)
    right = max((out - 1) * s + d * (k - 1) + 1 - size - p, 0)
    g = F.pad(g.movedim(dim, -1), (p, right), value=-math.inf)
    # index_select, not unfold: unfold's backward has no batching rule (a warning under vmap)
    starts = [i * s for i in range(out)]
    index = torch.tensor([a + j * d for a in starts for j in range(k)], device=g.device)
    count = torch.tensor([sum(p <= a + j * d < p + size for j in range(k)) for a in starts], dtype=g.dtype, device=g.device)
    windows = g.index_select(-1, index).unflatten(-1, (out, k))
    return (torch.logsumexp(windows, -1) - count.log()).movedim(-1, dim)


def _lme_adaptive(g: torch.Tensor, dim: int, out: int | None) -> torch.Tensor:
    """log-mean-exp of g over torch's adaptive windows along ``dim``."""
    size = g.shape[dim]
    out = size if out is None else int(out)
    if out < 1:
        raise ValueError(f"adaptive max-pool output size must be positive, got {out}")
    parts = []
    for i in range(out):
        lo, hi = (i * size) // out, -(-((i + 1) * size) // out)
        parts.append(torch.logsumexp(g.narrow(dim, lo, hi - lo), dim, keepdim=True) - math.log(hi - lo))
    return torch.cat(parts, dim)


def lse_pool(x, nd: int, temperature: float, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """The LSE pool of ``F.max_pool{nd}d``'s windows (NOTE: [Softened operations])."""
    k = _tuple(kernel_size, nd, "kernel_size")
    s = k if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else _tuple(stride, nd, "stride")
    p, d = _tuple(padding, nd, "padding"), _tuple(dilation, nd, "dilation")
    _check_rank(x, nd)
    g = x / temperature
    for i in range(nd):
        g = _lme_windows(g, x.ndim - nd + i, k[i], s[i], p[i], d[i], bool(ceil_mode))
    return temperature * g


def lse_adaptive_pool(x, nd: int, temperature: float, output_size):
    """The LSE pool of ``F.adaptive_max_pool{nd}d``'s windows."""
    _check_rank(x, nd)
    sizes = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,) * nd
    if len(sizes) != nd:
        raise ValueError(f"a {nd}-d adaptive max-pool needs output_size as an int or {nd} values, got {output_size!r}")
    g = x / temperature
    for i in range(nd):
        g = _lme_adaptive(g, x.ndim - nd + i, sizes[i])
    return temperature * g


def _check_rank(x, nd):
    if x.ndim not in (nd + 1, nd + 2):
        raise ValueError(f"a {nd}-d max-pool needs a ({nd + 1})- or ({nd + 2})-d input, got shape {tuple(x.shape)}")


def _pool_args(func, args, kwargs, names):
    bound = dict(zip(names, args))
    clash = set(bound) & set(kwargs)
    if clash:
        raise TypeError(f"{func.__name__}() got multiple values for {sorted(clash)}")
    bound.update(kwargs)
    return bound


_POOL_NAMES = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


class _SoftMode(TorchFunctionMode):
    """Answers ReLUs, max-pools and (optionally) max reductions with their smooth forms."""

    def __init__(self, beta: float, temperature: float, max_reductions: bool):
        super().__init__()
        self.beta, self.t, self.reductions = beta, temperature, max_reductions

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU or func in _RELU_INPLACE:
            return self._relu(func, args, kwargs)
        if func in _POOLS:
            b = _pool_args(func, args, kwargs, _POOL_NAMES)
            if b.pop("return_indices", False):
                raise _refused("a max-pool with return_indices=True")
            return lse_pool(b.pop("input"), _POOLS[func], self.t, **b)
        if func in _ADAPTIVE:
            b = _pool_args(func, args, kwargs, ("input", "output_size", "return_indices"))
            if b.get("return_indices", False):
                raise _refused("an adaptive max-pool with return_indices=True")
            return lse_adaptive_pool(b["input"], _ADAPTIVE[func], self.t, b["output_size"])
        if func in _REFUSED:
            raise _refused(_REFUSED[func])
        if self.reductions and func in _REDUCTIONS:
            out = self._reduction(func, args, kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)

    def _relu(self, func, args, kwargs):
        x = args[0] if args else kwargs["input"]
        inplace = func in _RELU_INPLACE or bool(args[1] if len(args) > 1 else kwargs.get("inplace", False))
        if not inplace:
            return F.softplus(x, beta=self.beta)
        # the softplus of a copy: autograd keeps its input, which the write below would change
        return x.copy_(F.softplus(x.clone(), beta=self.beta))

    def _reduction(self, func, args, kwargs):
        """The LSE of a max reduction, or None where the call is no reduction of a float tensor."""
        x, rest = args[0], args[1:]
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim == 0:
            return None
        if "out" in kwargs:
            raise _refused("a max reduction written into out=")
        names = ("dim", "keepdim")
        given = dict(zip(names, rest))
        if set(kwargs) - set(names) or len(rest) > 2:
            return None
        given.update(kwargs)
        dim = given.get("dim")
        if isinstance(dim, torch.Tensor):  # torch.max(a, b): an elementwise maximum
            return None
        keepdim = bool(given.get("keepdim", False))
        if func in (torch.amax, torch.Tensor.amax):
            dims = () if dim is None else (tuple(dim) if isinstance(dim, (tuple, list)) else (dim,))
            return lse_reduce(x, dims, self.t, keepdim)
        if dim is None:  # x.max(): every element
            return lse_reduce(x, (), self.t)
        values = lse_reduce(x, (dim,), self.t, keepdim)
        return torch.return_types.max((values, func(x, dim, keepdim).indices))


def _refused(what: str) -> ValueError:
    return ValueError(
        f"xattr.softened cannot smooth {what}: it would stay a hard max (or ReLU) in the softened model. Replace it "
        "in the model (a plain max-pool without indices, nn.RNN with nonlinearity='tanh' or a GRU/LSTM), or attribute "
        "the original model"
    )


class Softened(nn.Module):
    """The result of `softened`: runs ``module`` with its ReLUs and max-pools smoothed.

    ``module`` is the user's model itself (shared, not copied), registered as the child
    ``"module"``: parameters and layers are the same objects, so ``at_layer`` on the model's
    submodules works, and ``.train()``/``.eval()`` on the wrapper set the model's mode too.
    Unknown attributes are read from the model (``soft.embedding is model.embedding``).
    """

    def __init__(self, module: nn.Module, beta: float, temperature: float, max_reductions: bool):
        super().__init__()
        self.module = module
        self.beta, self.temperature, self.max_reductions = beta, temperature, max_reductions

    def forward(self, *args, **kwargs):
        if _fx_tracing():
            raise RuntimeError("xattr.softened runs its model under a torch function mode, which torch.fx cannot trace")
        with eager_compiled(), _SoftMode(self.beta, self.temperature, self.max_reductions):
            return self.module(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("__") or "_modules" not in self.__dict__ or "module" not in self._modules:
                raise
            return getattr(self._modules["module"], name)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, temperature={self.temperature}, max_reductions={self.max_reductions}"


def softened(model: nn.Module, *, beta: float = 10.0, temperature: float = 0.1, max_reductions: bool = True) -> Softened:
    """The model with every ReLU a Softplus and every max-pool a LogSumExp pool.

    Kokhlikyan et al. 2021: a smoother network function gives saliency maps of lower
    infidelity. The ops are caught wherever they are called (NOTE: [Softened operations] in
    ``xattr/_src/softened.py``); nothing is copied and the model is not changed.

    Args:
      model: an eager ``nn.Module`` (not TorchScript).
      beta: softplus sharpness, ``softplus(x) = log(1 + exp(beta x)) / beta``; > 0. Within
        ``log(2) / beta`` of the ReLU.
      temperature: t of the LSE pool ``t log mean exp(window / t)``; > 0. Between the window's
        mean and max, within ``t log n`` of the max (n elements).
      max_reductions: also smooth max reductions of float tensors (``x.max(dim)``,
        ``torch.amax``, ``x.max()``): the max-over-time of text CNNs. Defaults: NOTE:
        [Softened defaults].

    Returns:
      a `Softened` module sharing the model's parameters; every xattr method accepts it.

    Example:
      >>> soft = xattr.softened(model, beta=10.0, temperature=0.1)
      >>> attr = xattr.saliency(xattr.target(soft, 1))(x)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"softened needs an nn.Module, got {type(model).__name__}: wrap the function in an nn.Module")
    found = calls_jit(model)
    if found is not None:
        raise jit_error(type(found).__name__, "xattr.softened")
    for name, value in (("beta", beta), ("temperature", temperature)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not isinstance(max_reductions, bool):
        raise TypeError(f"max_reductions must be True or False, got {max_reductions!r}")
    return Softened(model, float(beta), float(temperature), max_reductions)
