"""Gradients with respect to a layer's value: `layer_vjp_rows`, one forward and one backward pass
of a `Split` model function at top level (the layer methods, layer DeepLift and LRP build on it)."""

from __future__ import annotations

import optree
import torch

from . import tree as T
from .checks import check_finite
from .gradients import NoGradientPathWarning, _rows, one_hot, vjp_rows
from .layers import Split
from .targets import Targeted
from .warn import warn


def layer_vjp_rows(split: Split, args: tuple, *, weights=None, chunk_size=None):
    """(h, outputs, dF/dh) at the rows ``args``: one forward and one backward pass at top level.

    NOTE: [Layer gradients are total derivatives]
    dF/dh is taken by adding a zero tensor z to each chosen activation and differentiating with
    respect to z, not by substituting h. So with several layers where one feeds the next, each
    gets its own full gradient (paths through the later layers included), as Captum computes
    per layer, while layer IG (which substitutes h through ``head``) moves all layers at once.
    At top level z is created inside the capture hook, so h, the outputs and dF/dh come from one
    forward and one backward pass, like Captum's layer hooks. Inside torch.func transforms z must
    exist before the VJP, so ``act`` runs first (two forwards).

    NOTE: [Layer gradients through a view]
    At top level a float tensor value that autograd already records (a non-leaf, not itself a
    view) is not given a zero: the hook hands the model ``value.view_as(value)`` and dF/dh is
    taken with respect to that view. A view is a node of its own, so the gradient counts the
    paths from the view only, as it did from z (a layer returning its input, ``nn.Identity``,
    still gets no gradient from a skip path around it), and several layers still get their
    total derivatives. It saves the zeros and the addition over the whole activation and their
    backward node: 94 us of 2.2 ms for Grad-CAM on the benchmark's CNN (conv3, 16x64x8x8, one
    thread). The model then keeps its own value (h + 0 turned a -0.0 into +0.0). A view shares
    the value's memory, so an in-place op after the layer (``ReLU(inplace=True)``) would change
    h and the view's gradient: the hook notes the value's version counter, and if the forward
    wrote into it the call is run again with zeros, and the split adds zeros from then on
    (``copied_values``). Values the model does not record (a frozen model, an input, a
    ``torch.no_grad`` block), values that are views or tensor subclasses, and calls under a
    torch function mode (the rule methods': through a view, layer DeepLift on BLOOM lost its
    conservation, tests/test_custom_functions.py) get zeros, as before.

    NOTE: [Layer call overhead]
    For a tensor value the hook and the result skip the tree maps (three per call in the hook,
    one after), the hook switches grad mode without a context object, the view above replaces
    the zero, and a per-example target is differentiated by a one-hot cotangent (NOTE: [Targets
    differentiated by a one-hot cotangent] in gradients.py). Grad-CAM at the benchmark's CNN
    (conv3, batch 16), against the hook floor (forward with a hook and one backward), the code
    before and after interleaved in one process (2026-11-25): one thread, 80 rounds, loaded
    machine, 1.117x -> 1.079x the floor; 2 threads, 60 rounds, 1.187x -> 1.131x. In the
    benchmark (before/after processes alternated) 1.18 -> 1.10-1.14, where a hand-written
    Grad-CAM is 1.02-1.04x: the rest is the split's Python (hooks, checks, set_stance ~5 us)
    and a few small ops (the finite check, the picked rows, the cotangent, the view).
    """
    multi = split.multi_output
    eager = torch._C._functorch.maybe_current_level() is None and not torch.compiler.is_compiling()
    if not eager:
        h = split.act(*args)
        out, grads = vjp_rows(_Perturbed(split), (T.tree_map(torch.zeros_like, h),) + tuple(args), (0,),
                              weights=weights, chunk_size=chunk_size, method="a layer method")  # fmt: skip
        return h, out, grads[0]
    hs: list[list] = [[] for _ in split.modules]
    zs: list[list] = [[] for _ in split.modules]
    viewed = []  # (value, its version) for each value differentiated through a view of it
    views = not split.copied_values

    def add_zero(i, k, value):
        if isinstance(value, torch.Tensor):  # the common case, without three tree walks (NOTE: [Layer call overhead])
            hs[i].append(value.detach())
            if not value.is_floating_point():
                zs[i].append(value)
                return value
            if views and value.grad_fn is not None and not value._is_view() and type(value) is torch.Tensor \
                    and not torch._C._len_torch_function_stack():  # NOTE: [Layer gradients through a view]
                viewed.append((value, value._version))
                z = value.view_as(value)
                zs[i].append(z)
                return z
            z = torch.zeros_like(value).requires_grad_()
            zs[i].append(z)
            return value + z
        z = T.tree_map(lambda t: torch.zeros_like(t).requires_grad_() if _is_float(t) else t, value)
        hs[i].append(T.tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, value))
        zs[i].append(z)
        return T.tree_map(lambda t, zt: t + zt if _is_float(t) else t, value, z)

    target = split.model if type(split.model) is Targeted and not multi and isinstance(split.model.t, torch.Tensor) \
        and not torch._C._len_torch_function_stack() else None  # NOTE: [Targets differentiated by a one-hot cotangent]
    index = None
    grad = torch.is_grad_enabled()
    torch._C._set_grad_enabled(True)  # torch.enable_grad without its Python layers
    try:
        if target is None:
            out = _rows(T.expand_shared(split._run(args, add_zero, stop_when_done=False)), multi)  # NOTE: [Shared reference]
        else:  # NOTE: [Targets differentiated by a one-hot cotangent] in gradients.py
            full = split._run(args, add_zero, stop_when_done=False, model=target.model)
            picked = target.one_hot_rows(full)
            out, index = (_rows(T.expand_shared(target.select(full)), multi), None) if picked is None else picked
    finally:
        torch._C._set_grad_enabled(grad)
    if any(v._version != version for v, version in viewed):  # written in place after the layer: zeros from now on
        split.copied_values = True
        return layer_vjp_rows(split, args, weights=weights, chunk_size=chunk_size)
    check_finite(out)
    h, z = split._pack(hs), split._pack(zs)
    flat = ([z] if z.is_floating_point() else []) if isinstance(z, torch.Tensor) else [t for t in T.leaves(z) if _is_float(t)]
    if not flat:
        where = "input" if split.inputs else "output"
        raise TypeError(
            f"the layer's {where} holds no floating-point tensor to differentiate (e.g. the token ids an "
            "embedding reads): split at a layer whose " + where + " is float, such as the embedding's output"
        )
    w = None if weights is None else weights.to(out.dtype)
    if index is not None:
        grads = list(torch.autograd.grad(full, flat, one_hot(full, index, w), allow_unused=True))  # w None: ones
        zero = torch.zeros_like
    elif not multi:
        w = torch.ones(out.shape[0], dtype=out.dtype, device=out.device) if w is None else w
        grads = list(torch.autograd.grad(out, flat, w if out.ndim else None, allow_unused=True))
        zero = torch.zeros_like
    else:
        w = torch.ones(out.shape[0], dtype=out.dtype, device=out.device) if w is None else w
        k = out.shape[1]
        cots = torch.eye(k, dtype=out.dtype, device=out.device)[:, None, :] * w[None, :, None]
        per = [torch.autograd.grad(out, flat, cots[j], retain_graph=j < k - 1, allow_unused=True) for j in range(k)]
        zero = lambda t: t.new_zeros(t.shape[:1] + (k,) + t.shape[1:])  # noqa: E731
        grads = [None if all(g is None for g in gs) else torch.stack([torch.zeros_like(t) if g is None else g for g in gs], 1)
                 for gs, t in zip(zip(*per), flat)]  # fmt: skip
    if out.numel() and all(g is None for g in grads):  # NOTE: [No gradient path] in gradients.py
        warn(NO_LAYER_PATH, NoGradientPathWarning)  # NOTE: [Warnings at the user's line] in warn.py
    elif out.numel() and any(g is None for g in grads):  # NOTE: [Parts of a layer's value no path reads]
        warn(_unread_parts(z, grads, split.inputs), NoGradientPathWarning)
    grads = [zero(t) if g is None else g for g, t in zip(grads, flat)]
    if isinstance(h, torch.Tensor):
        return h, out if index is not None else out.detach(), grads[0] if grads else h
    grads = iter(grads)
    g = T.tree_map(lambda t: next(grads) if _is_float(t) else t, h)
    return h, out.detach(), g


NO_LAYER_PATH = (
    "xattr: no gradient reaches the layer's value from the output (every gradient is None), so the layer "
    "attributions are zero: the output does not use the layer (a branch the output never reads, an auxiliary "
    "head), or the model uses it without recording gradients (.detach(), .item(), an integer op)"
)


def _unread_parts(z, grads: list, inputs: bool) -> str:
    """NOTE: [Parts of a layer's value no path reads]
    A layer whose value has several tensors (``(context, attention_probs)``, an LSTM's ``(output,
    (h_n, c_n))``) gets each part's gradient from the paths that read that part after the layer
    (before it, with ``inputs=True``). A part nothing reads there gets zeros, which look like an
    answer: say so, and name the parts. The usual surprise is a part the layer itself used to
    compute another (attention weights, read by the context inside the module): that use is inside
    the layer and is not counted, where Captum's gradient layer methods (LayerConductance,
    InternalInfluence, LayerGradientXActivation) differentiate the tensor with all its uses. Found
    in Captum's BERT tutorial, whose attention-matrix attributions came out zero without a word."""
    paths = [p for p, leaf in zip(optree.tree_paths(z, namespace="xattr"), optree.tree_leaves(z, namespace="xattr"))
             if _is_float(leaf)]
    unread = [_path(p) for p, g in zip(paths, grads) if g is None]
    where = "input" if inputs else "output"
    return (
        f"xattr: the part(s) {', '.join(unread)} of the layer's {where} reach the model's output by no path "
        f"{'through the layer' if inputs else 'after the layer'}, so their attributions are zero. Only the paths "
        f"from the values the layer {'receives' if inputs else 'returns'} count: a value the layer also uses inside "
        "itself to compute another part (attention weights, read by its context) has that use inside the layer, "
        "not counted, where Captum's gradient layer methods count it (docs/layers.md, section 6). To attribute to "
        "such a tensor with its uses, split at a module that produces it before it is used"
    )


def _path(p: tuple) -> str:
    return "[" + "][".join(repr(k) for k in p) + "]" if p else "[]"


def _is_float(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


class _Perturbed:
    """``(z, *args) -> f(*args)`` with z added to the chosen activation(s) (see NOTE above)."""

    def __init__(self, split: Split):
        self.split = split
        self.model = split.model
        self.multi_output = split.multi_output

    def __call__(self, z, *args):
        s = self.split
        given = s._unpack(z)

        def add(i, k, value):
            zt = given[i][k if s.call_index == "all" else 0]
            return T.tree_map(lambda t, d: t + d if _is_float(t) else t, value, zt)

        return T.expand_shared(s._run(args, add, stop_when_done=False))  # NOTE: [Shared reference]
