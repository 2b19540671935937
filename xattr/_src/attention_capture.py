"""Reading a transformer's attention probabilities (B, H, T, S) during its forward pass.

NOTE: [Capturing attention probabilities]
Attention weights are never a module's output: a BERT layer computes them in the middle of its
forward and keeps them only when asked (``output_attentions=True``), ``nn.MultiheadAttention``
inside torch's transformer layers is called with ``need_weights=False``, and SDPA kernels never
form them at all. So they are read from the torch calls that make them, under a
``TorchFunctionMode`` that exists only during one forward pass (nothing stays on the model):
  - a softmax (``F.softmax``, ``torch.softmax``, ``Tensor.softmax``, ``nn.Softmax``) over the last
    dim of a 4-D tensor: the probabilities of eager attention, as written by hand or by Hugging
    Face's ``eager_attention_forward``, taken as (B, H, T, S);
  - ``F.scaled_dot_product_attention`` with 4-D query, key and value (Hugging Face's default
    "sdpa" attention, and the attention inside every ``nn.MultiheadAttention``): its kernel never
    materialises the probabilities, so the call is answered by its math written out,
        P = softmax(q k^T * scale + mask),   out = P v
    (``scale`` 1/sqrt(d) by default; a bool mask is True where a key is attended, a float mask
    is added; ``is_causal`` the lower triangle; ``enable_gqa`` repeats each key/value head for
    its group of query heads; a query with every key masked gets zero weights). The output equals
    the kernel's up to rounding (float32: ~1e-7 relative), not bit for bit;
  - ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``
    and torchvision's ViT; their fused fast paths are skipped while any torch function mode is
    on): the mode sees it as one call, so it is run as `unfused.multi_head_attention`, the same
    computation spelled with ``F.linear`` and SDPA, whose SDPA call is then captured. Its returned
    weights (``need_weights=True``) are computed beside it, as torch computes them.
Any other spelling (flash-attention or flex-attention kernels, a softmax written as exp/sum, a
custom op) is not seen; when nothing is seen the call fails and says what is read.

With ``layers`` the calls count only while one of the chosen modules runs (tracked with
forward hooks on those modules, registered inside the call and removed in a ``finally``):
a module instance, a name as ``model.named_modules()`` gives it, or an ``nn.Module`` class
(every module of that class). Each named module (instance or name) must make at least one such
call, and a class at least one among its modules; a model's 4-D softmax that is no attention
(a spatial softmax) is kept out this way. Maps come back in the order the forward computes them.

NOTE: [Gradients with respect to attention probabilities]
For gradient-weighted methods every captured P is replaced by ``P + Z`` with ``Z`` a zero tensor
of P's shape that requires grad, made inside the call. The forward is unchanged (adding zeros is
exact) and ``d out / d Z = d out / d P``: the gradient with respect to the probabilities as the
rest of the forward uses them, holding everything that computed P fixed. One backward pass gives
every layer's gradient. Examples of a batch are taken as independent (a model in eval mode), so
the gradient of the sum of the outputs gives each example's gradient; a many-outputs target
(``xattr.outputs``) takes one backward pass per output.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .checks import _modules, at_least_float32, check_model_fn, warn_if_training
from .gradients import _rows, attribution_fn, is_multi_output
from .rule_limits import eager_compiled, refuse_jit
from .unfused import multi_head_attention
from .written_out import attention_probs

_SOFTMAX = frozenset({F.softmax, torch.softmax, torch.Tensor.softmax, torch.special.softmax})

_NOTHING_SEEN = (
    "no attention probabilities were seen in the forward pass{where}. xattr reads a softmax over the last "
    "dim of a 4-D (B, H, T, S) tensor, F.scaled_dot_product_attention and nn.MultiheadAttention; a model "
    "whose attention runs otherwise (flash-attention or flex-attention kernels, a softmax written as exp/sum) "
    "cannot be read. Load a Hugging Face model with attn_implementation=\"eager\" (or \"sdpa\")."
)


class Resolved(tuple):
    """(modules, their labels, the class when a class was given): `layers` checked once."""


def _resolve_layers(f: Callable, layers) -> Resolved:
    """The modules ``layers`` names, checked (a `Resolved`)."""
    if layers is None:
        return Resolved(([], [], None))
    found = _modules(f)
    root = found[0] if len(found) == 1 else None
    names: dict[int, str] = {}
    if root is not None:
        for name, m in root.named_modules(remove_duplicate=False):
            names.setdefault(id(m), name)
    if isinstance(layers, type):
        if not issubclass(layers, nn.Module):
            raise TypeError(f"layers must be an nn.Module class, modules or names, got the class {layers.__name__}")
        if root is None:
            raise ValueError("layers given as a class needs the model behind f: pass an nn.Module "
                             "(or xattr.target of one)")
        mods = [m for m in root.modules() if isinstance(m, layers)]
        if not mods:
            raise ValueError(f"the model has no module of class {layers.__name__}")
        return Resolved((mods, [names.get(id(m), type(m).__name__) for m in mods], layers))
    items = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    if not items:
        raise ValueError("layers is empty: give modules, names or a module class, or None for every attention call")
    mods, labels = [], []
    for item in items:
        if isinstance(item, str):
            if root is None:
                raise ValueError(f"layer name {item!r} needs the model behind f: pass an nn.Module "
                                 "(or xattr.target of one)")
            try:
                m = root.get_submodule(item)
            except AttributeError:
                known = [n for n, _ in root.named_modules() if n][:8]
                raise ValueError(f"the model has no module named {item!r} (names look like {known})") from None
            label = item
        elif isinstance(item, nn.Module):
            if root is not None and id(item) not in names:
                raise ValueError(f"layer {type(item).__name__} is not a module of the model")
            m, label = item, names.get(id(item), type(item).__name__)
        else:
            raise TypeError(f"layers must hold nn.Module objects or names, got {type(item).__name__}")
        if any(m is k for k in mods):
            raise ValueError(f"layer {label!r} is given twice")
        mods.append(m)
        labels.append(label)
    return Resolved((mods, labels, None))


class Captured:
    """One attention call: ``probs`` (B, H, T, S), detached; ``gate`` the zero tensor added to it
    (NOTE: [Gradients with respect to attention probabilities]) or None; ``layer`` the index of
    the innermost chosen module running it (None without ``layers``)."""

    __slots__ = ("probs", "gate", "layer")

    def __init__(self, probs, gate, layer):
        self.probs, self.gate, self.layer = probs, gate, layer


class _Session:
    """The state of one forward pass: chosen modules running now and the calls captured."""

    def __init__(self, gates: bool, tracked: bool):
        self.gates = gates
        self.tracked = tracked
        self.stack: list[int] = []
        self.found: list[Captured] = []
        self.owner = threading.get_ident()

    def active(self) -> bool:
        return not self.tracked or bool(self.stack)

    def keep(self, probs: torch.Tensor) -> torch.Tensor:
        """Notes ``probs`` and returns what the forward goes on with (with the zero gate added)."""
        gate = None
        if self.gates:
            gate = torch.zeros_like(probs, requires_grad=True)
            out = probs + gate
        else:
            out = probs
        self.found.append(Captured(probs.detach(), gate, self.stack[-1] if self.stack else None))
        return out


class _CaptureMode(TorchFunctionMode):
    """NOTE: [Capturing attention probabilities]"""

    def __init__(self, session: _Session):
        super().__init__()
        self.session = session

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SOFTMAX:
            out = func(*args, **kwargs)
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if (self.session.active() and isinstance(out, torch.Tensor) and out.ndim == 4
                    and dim is not None and dim in (-1, 3)):  # fmt: skip
                return self.session.keep(out)
            return out
        if func is F.scaled_dot_product_attention and self.session.active():
            return _attention(self.session, *args, **kwargs)
        if func is F.multi_head_attention_forward and self.session.active():
            with self:  # the mode is off while it handles a call: on again to see the SDPA call inside
                return multi_head_attention(*args, **kwargs)
        return func(*args, **kwargs)


def _attention(session: _Session, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False):
    """``F.scaled_dot_product_attention`` written out, its probabilities captured (NOTE:
    [Capturing attention probabilities])."""
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        return F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale=scale,
                                              enable_gqa=enable_gqa)  # fmt: skip
    if dropout_p:
        raise ValueError(f"attention dropout is on (dropout_p={dropout_p}, a model in train mode): its attention "
                         "weights are random. Call model.eval() before reading attention.")
    work = at_least_float32(query.dtype)  # half precision: softmax in float32, as the kernels do
    probs, value = attention_probs(query, key, value, attn_mask, is_causal, scale, enable_gqa, dtype=work)
    return session.keep(probs) @ value


def run_captured(f: Callable, args: tuple, kwargs: dict, layers, *, gates: bool):
    """``(f(*args, **kwargs), [Captured, ...])`` with every attention call of the forward noted,
    in call order; ``layers`` as given by the user, or resolved by `_resolve_layers`; ``gates``:
    with the zero tensors of NOTE: [Gradients with respect to attention probabilities]."""
    refuse_jit(f)
    mods, labels, cls = layers if isinstance(layers, Resolved) else _resolve_layers(f, layers)
    session = _Session(gates, tracked=bool(mods))
    counts = [0] * len(mods)
    handles = []

    def enter(i):
        def pre(module, inp):
            if threading.get_ident() == session.owner:
                session.stack.append(i)
        return pre

    def leave(i):
        def post(module, inp, out):
            if threading.get_ident() == session.owner and session.stack and session.stack[-1] == i:
                session.stack.pop()
        return post

    try:
        for i, m in enumerate(mods):
            handles.append(m.register_forward_pre_hook(enter(i)))
            handles.append(m.register_forward_hook(leave(i), always_call=True))
        with eager_compiled(), _CaptureMode(session):
            out = f(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    for c in session.found:
        if c.layer is not None:
            counts[c.layer] += 1
    if not session.found:
        where = "" if not mods else f" inside the chosen layers ({', '.join(repr(n) for n in labels[:6])})"
        raise ValueError(_NOTHING_SEEN.format(where=where))
    if cls is None and mods and 0 in counts:
        missing = [labels[i] for i, c in enumerate(counts) if c == 0]
        raise ValueError(f"layer(s) {missing} made no attention call in the forward pass: choose the attention "
                         "modules (e.g. every module of the attention class: "
                         "layers=type(model.encoder.layer[0].attention))")
    if session.found[0].probs.shape[0] == 0:
        raise ValueError("the batch is empty (0 examples): there are no attention maps to read")
    if not all(bool(torch.isfinite(c.probs).all()) for c in session.found):
        raise ValueError("the attention probabilities hold NaN or infinite values (check the inputs for NaN): "
                         "every map computed from them would be NaN or meaningless")
    return out, session.found


def attention_weights(model: Callable, *, layers=None) -> Callable:
    """The attention probabilities of every attention call in a model's forward pass.

    See NOTE: [Capturing attention probabilities] in ``xattr/_src/attention_capture.py``.

    Args:
      model: an ``nn.Module`` or any function of the model's arguments (an ``xattr.target`` too);
        used as it is: its parameters, train/eval mode and hooks are left as they were.
      layers: None for every attention call; or modules, module names (as
        ``model.named_modules()`` gives them), or an ``nn.Module`` class: only calls made inside
        those count.

    Returns:
      ``fn(*args, **kwargs)`` giving a tuple of detached tensors, one per attention call in
      forward order, each ``(B, H, T, S)`` (query T, key S); computed under ``torch.no_grad``.

    Example:
      >>> maps = xattr.attention_weights(bert)(ids, mask)   # 6 tensors (B, 12, T, T)
    """
    if not callable(model):
        raise TypeError(f"attention_weights needs a model (a callable), got {type(model).__name__}")
    resolved = _resolve_layers(model, layers)

    def fn(*args, **kwargs):
        warn_if_training(model)
        with torch.no_grad():
            _, found = run_captured(model, args, kwargs, resolved, gates=False)
        return tuple(c.probs for c in found)

    return attribution_fn(fn, model)


def attention_gradients(f: Callable, *, layers=None) -> Callable:
    """The attention probabilities and the gradient of a target with respect to each of them.

    ``f`` gives one number per example (``xattr.target(model, t)``), or K of them
    (``xattr.target(model, xattr.outputs([...]))``). The gradient is taken with respect to the
    probabilities as the rest of the forward uses them (NOTE: [Gradients with respect to
    attention probabilities]); examples of a batch are independent (eval mode).

    Returns:
      ``fn(*args, **kwargs) -> (weights, grads)``: two tuples with one tensor per attention call,
      ``(B, H, T, S)``; with K outputs the gradients are ``(B, K, H, T, S)``. Detached.

    Example:
      >>> weights, grads = xattr.attention_gradients(xattr.target(vit, 3))(images)
    """
    check_model_fn(f, "attention_gradients")
    multi = is_multi_output(f)
    resolved = _resolve_layers(f, layers)

    def fn(*args, **kwargs):
        warn_if_training(f)
        with torch.enable_grad():
            out, found = run_captured(f, args, kwargs, resolved, gates=True)
            rows = _rows(out, multi)
            gates = [c.gate for c in found]
            if not rows.requires_grad:
                grads = [[torch.zeros_like(g) for g in gates]] * (rows.shape[1] if multi else 1)
            else:
                sums = [rows[:, k].sum() for k in range(rows.shape[1])] if multi else [rows.sum()]
                grads = []
                for k, s in enumerate(sums):
                    got = torch.autograd.grad(s, gates, retain_graph=k < len(sums) - 1, allow_unused=True)
                    grads.append([torch.zeros_like(g) if d is None else d for g, d in zip(gates, got)])
        weights = tuple(c.probs for c in found)
        if multi:
            return weights, tuple(torch.stack([per_k[i] for per_k in grads], 1).detach() for i in range(len(found)))
        return weights, tuple(d.detach() for d in grads[0])

    return attribution_fn(fn, f)
