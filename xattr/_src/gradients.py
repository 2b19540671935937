"""Per-example gradients through torch.func: the one differentiation primitive every method uses.

NOTE: [Per-example gradients of a batch-native model]
For a model whose examples do not interact (any model in eval mode), the gradient of the sum of
the per-example outputs with respect to the batch is the batch of per-example gradients. So one
VJP with a cotangent of ones gives all B gradients from one forward and one backward pass.
Weighted cotangents give weighted gradients for free, which the path integral uses to apply its
quadrature weights inside the backward pass. For K outputs per example the VJP is vmapped over
K one-hot cotangents (`jacrev`'s trick) inside transforms.

NOTE: [K backward passes]
K outputs always cost one forward pass and K backward passes through that one graph, never K
forwards. At top level the K backward passes run one after another (retaining the graph until
the last): on CPU this measured 2.3-2.8x faster than vmapping them, whose batched backward
faults in ~1.8 GiB per call on the 10-class IG benchmark. Inside transforms they are vmapped,
in groups bounded by chunk_size. (GPU: unmeasured; revisit with the GPU benchmark table.)

NOTE: [Detached results]
Outside any torch.func transform, the VJP runs under torch.no_grad(): the global autograd graph
is not recorded, so attributions come back detached (as Captum's do) and no memory is held for
the parameters' graph. Inside a torch.func transform (jacrev over an attribution function for
Integrated Hessians, torch.func.grad over functional_call for attribution-regularised
training) nothing is disabled and attributions stay differentiable at that transform's level.
The rule-based methods are the exception: they refuse to run inside a transform that would
differentiate them (NOTE: [Rule-based attributions are first-order] in rule_limits.py).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
from torch.func import vjp, vmap

from . import tree as T
from .checks import check_finite, check_float_inputs, transforms_around, warn_if_training
from .folded_errors import note_folded
from .nesting import as_new_call, inside_model, marked, running_model
from .targets import Targeted
from .warn import warn


def detached():
    """torch.no_grad() unless a torch.func transform is active. See NOTE: [Detached results].

    NOTE: [Inference mode]
    Under ``torch.inference_mode()`` autograd records nothing, so every gradient would come back
    zero (torch.func's vjp says nothing) or fail deep inside a rule's graph walk. An attribution
    is a computation that needs autograd, so at top level it leaves inference mode for its own
    duration; tensors made in inference mode among its arguments are copied first (autograd may
    not save them), and the attributions returned are ordinary tensors.
    """
    if torch._C._functorch.maybe_current_level() is None:
        if torch.is_inference_mode_enabled():
            return _outside_inference_mode()
        return torch.no_grad()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _outside_inference_mode():
    with torch.inference_mode(False), torch.no_grad():
        yield


def model_calls():
    """``torch.no_grad()`` for the model calls, unless a torch.func gradient transform (grad, vjp,
    jacrev) is differentiating this call: attributions are then differentiable at its level, as
    NOTE: [Detached results] promises (a no_grad inside the transformed function would make its
    gradient zero). Under vmap alone, or outside transforms, nothing is recorded. It also marks
    the region as the model's (NOTE: [Attributions inside a model's forward] in nesting.py)."""
    return running_model(no_grad=not transforms_around(torch._C._functorch.TransformType.Grad))


def attribution_fn(inner: Callable, wrapped: Callable, *, detach: bool = True) -> Callable:
    """Marks a public attribution function: runs it `detached()` (``detach=False``: ``inner``
    sees to that itself, and to a call from inside a model), records what it wraps. Called
    from inside a model's forward it runs as a call of its own (NOTE: [Attributions inside a
    model's forward] in nesting.py)."""

    if not detach:  # no wrapper: a call layer costs a small model's loop a few percent
        inner.__wrapped__ = wrapped
        inner.attribution_function = True
        return inner

    def run(args, kwargs):
        if _made_in_inference_mode(args):  # NOTE: [Inference mode]
            args = T.tree_map(_ordinary, args)
        try:
            return inner(*args, **kwargs)
        except (RuntimeError, IndexError) as err:  # NOTE: [Per-example tensors from outside the arguments]
            note_folded(err, wrapped, args)
            raise

    def fn(*args, **kwargs):
        if inside_model():
            return as_new_call(fn, args, kwargs)
        if torch._C._functorch.maybe_current_level() is None and not torch.is_inference_mode_enabled():
            grad = torch.is_grad_enabled()  # `detached()`'s torch.no_grad, without its Python layers
            torch._C._set_grad_enabled(False)
            try:
                return run(args, kwargs)
            finally:
                torch._C._set_grad_enabled(grad)
        with detached():
            return run(args, kwargs)

    fn.__wrapped__ = wrapped
    fn.__doc__ = inner.__doc__
    fn.attribution_function = True  # `rules` composes with it (NOTE: [Attributions inside a model's forward])
    return fn


def _made_in_inference_mode(args: tuple) -> bool:
    """Whether any tensor in args was made under inference mode (plain tensors checked first:
    this runs on every call of every attribution function)."""
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.is_inference():
                return True
        elif a is not None and not isinstance(a, (int, float, bool, str)):
            if any(isinstance(t, torch.Tensor) and t.is_inference() for t in T.leaves(a)):
                return True
    return False


def _ordinary(t):
    """A copy of an inference tensor that autograd may save (NOTE: [Inference mode])."""
    if isinstance(t, torch.Tensor) and t.is_inference():
        with torch.inference_mode(False):
            return t.clone()
    return t


def is_multi_output(f: Callable) -> bool:
    return bool(getattr(f, "multi_output", False))


def _rows(out: torch.Tensor, multi: bool) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model function must return a tensor, got {type(out).__name__}")
    if multi:
        if out.ndim != 2:
            raise ValueError(f"a many-outputs target must give shape (B, K), got {tuple(out.shape)}")
        return out
    if out.ndim == 2 and out.shape[1] == 1:
        return out[:, 0]
    if out.ndim > 1:
        raise ValueError(
            f"the model function returns outputs of shape {tuple(out.shape[1:])} per example but a gradient method "
            "explains one number per example. Choose it with xattr.target(model, t) (t: class index, LongTensor "
            "of shape (B,), or xattr.outputs([...]) for several outputs at once); in xattr.compat.captum, with "
            "target= or a neuron_selector that picks one value per example."
        )
    return out


def vjp_rows(
    f: Callable,
    args: tuple,
    argnums: tuple[int, ...],
    *,
    weights: torch.Tensor | None = None,
    chunk_size: int | None = None,
    method: str = "a gradient method",
):
    """Returns (outputs (R,) or (R, K), gradients of the selected args as a tuple of trees).

    ``weights`` (R,) scales each row's cotangent. For K outputs, ``chunk_size`` (model rows, as
    everywhere) bounds the backward work vmapped at once: max(1, chunk_size // R) cotangents.
    """
    T.checked_chunk_size(chunk_size)
    selected, rebuild = T.split_args(args, argnums)
    check_float_inputs(selected, method)
    multi = is_multi_output(f)
    target = None if multi else _one_hot_target(f)  # NOTE: [Targets differentiated by a one-hot cotangent]

    def fn(*sel):
        return _rows(f(*rebuild(sel)), multi)

    def model(*sel):  # the target's model, with the rules where f is `rules` around the target
        return target.model(*rebuild(sel)) if target is f else f.run(target.model, rebuild(sel), {})

    out, pull = _forward(fn, selected, None if target is None else (target, model))
    # check_finite(out) waits for the device: on a GPU it comes after the backward is queued, so
    # the host does not stall between forward and backward (the error is the same).
    if out.ndim == 0:  # one number for the whole batch ("aggregate" output): weight rows afterwards
        grads = pull(torch.ones_like(out), False)
        check_finite(out)
        if weights is None:
            return out, grads
        return out, T.tree_map(lambda g: g * weights.reshape((-1,) + (1,) * (g.ndim - 1)).to(g.dtype), grads)
    if not multi:
        ones = None if pull.eager else torch.ones(out.shape[0], dtype=out.dtype, device=out.device)  # None: ones at top level
        grads = pull(ones if weights is None else weights.to(out.dtype), False)
        check_finite(out)
        return out, grads
    w = torch.ones(out.shape[0], dtype=out.dtype, device=out.device) if weights is None else weights.to(out.dtype)
    check_finite(out)
    k = out.shape[1]
    eye = torch.eye(k, dtype=out.dtype, device=out.device)
    cotangents = eye[:, None, :] * w[None, :, None]  # (K, R, K)
    if pull.eager:  # NOTE: [K backward passes]
        grads = [pull(cotangents[j], j < k - 1) for j in range(k)]
        return out, T.tree_map(lambda *gs: torch.stack(gs, 1), *grads)
    per = None if chunk_size is None else max(1, chunk_size // max(1, out.shape[0]))
    grads = vmap(lambda c: pull(c, True), chunk_size=per)(cotangents)
    return out, T.tree_map(lambda g: g.movedim(0, 1), grads)


def _one_hot_target(f: Callable) -> Targeted | None:
    """The `Targeted` whose rows a gradient method may pick by a one-hot cotangent: f itself, or
    the target that `rules` wrap (`Ruled.one_hot_target`); None where its target is no tensor or a
    torch function mode is active around the call."""
    if type(f) is Targeted:
        target = f
    else:
        ruled = getattr(f, "one_hot_target", None)
        target = None if ruled is None else ruled()
    if target is None or not isinstance(target.t, torch.Tensor) or torch._C._len_torch_function_stack():
        return None
    return target


def _forward(fn: Callable, selected: tuple, targeted: tuple | None = None):
    """Runs fn once; returns (outputs, pull) with ``pull(cotangent, retain_graph) -> grads``.
    ``targeted``: (the `Targeted` fn is, a function running its model) for the one-hot path at
    top level (NOTE: [Targets differentiated by a one-hot cotangent]).

    NOTE: [Two differentiation backends]
    Inside a torch.func transform (or torch.compile) the VJP is torch.func.vjp, so attributions
    compose with vmap/grad/jacrev. At top level (no transform active) the same VJP is taken with
    torch.autograd.grad on detached copies of the inputs that require grad (never the user's
    tensors): measured on a 3-conv CNN on CPU, torch.func.vjp adds ~160 us per call and its
    pullback retains every saved activation until the backward ends, which cost 8-25% on
    saliency, SmoothGrad and GradientShap. Both give identical numbers (tests/test_reference.py
    checks the top-level path; tests/test_core.py the transform path).
    """
    if torch._C._functorch.maybe_current_level() is not None or torch.compiler.is_compiling():
        tracked = []

        def traced(*sel):  # requires_grad at vjp's own level: whether the output depends on sel
            out = fn(*sel)
            tracked.append(not isinstance(out, torch.Tensor) or out.requires_grad)
            return out

        out, pullback = vjp(marked(traced), *selected)  # NOTE: [Attributions inside a model's forward]
        if tracked and not tracked[0] and out.numel():
            warn(NO_PATH, NoGradientPathWarning)  # NOTE: [No gradient path]: the same warning under transforms

        def pull(cotangent, retain):
            return pullback(cotangent, retain_graph=retain)

        pull.eager = False
        return out, pull
    plain = T._tensors(selected)  # a tuple of tensors: no tree to flatten (NOTE: [Gradient call overhead])
    flat, treedef = (selected, None) if plain else T.optree.tree_flatten(selected, namespace="xattr")
    diff = [t.detach().requires_grad_() if isinstance(t, torch.Tensor) else t for t in flat]
    grad = torch.is_grad_enabled()
    torch._C._set_grad_enabled(True)  # torch.enable_grad without its Python layers
    index = None
    try:
        with running_model():  # NOTE: [Attributions inside a model's forward]
            inputs = diff if plain else T.optree.tree_unflatten(treedef, diff)
            if targeted is None:
                out = fn(*inputs)
            else:
                full = targeted[1](*inputs)
                picked = targeted[0].one_hot_rows(full)
                out, index = (_rows(targeted[0].select(full), False), None) if picked is None else picked
    finally:
        torch._C._set_grad_enabled(grad)
    wrt = diff if plain else [t for t in diff if isinstance(t, torch.Tensor)]

    def pull(cotangent, retain):  # cotangent None: ones, one per row
        if index is not None and full.requires_grad:  # the target's rows by a one-hot cotangent of the model's output
            grads = torch.autograd.grad(full, wrt, one_hot(full, index, cotangent), retain_graph=retain, allow_unused=True)
        elif index is None and out.requires_grad:
            if cotangent is None:
                cotangent = torch.ones(out.shape[0], dtype=out.dtype, device=out.device)
            grads = torch.autograd.grad(out, wrt, cotangent, retain_graph=retain, allow_unused=True)
        else:  # the output does not depend on the inputs at all
            grads = (None,) * len(wrt)
        if wrt and out.numel() and all(g is None for g in grads):
            warn(NO_PATH, NoGradientPathWarning)  # NOTE: [No gradient path], [Warnings at the user's line]
        if plain:
            return tuple(_zero_if_none(g, t) for g, t in zip(grads, diff))
        it = iter(grads)
        leaves = [_zero_if_none(next(it), t) if isinstance(t, torch.Tensor) else t for t in diff]
        return T.optree.tree_unflatten(treedef, leaves)

    pull.eager = True
    return (out if index is not None else out.detach()), pull


def one_hot(full: torch.Tensor, index: torch.Tensor, cotangent: torch.Tensor | None) -> torch.Tensor:
    """The cotangent of the model's output ``full`` (R, C) that the rows picked at the flat
    (row-major) positions ``index`` (R,) receive ``cotangent`` (R,) by (None: ones): zeros, plus
    the cotangent at the positions, as the backward of a gather makes it (0 + w, bit for bit;
    -0.0 too; 1.0 filled in for ones).

    NOTE: [Targets differentiated by a one-hot cotangent]
    A per-example target picks f(x)[r, t_r] from the model's (R, C) output with a gather (and a
    squeeze), two autograd nodes whose backward makes zeros and scatters the cotangent into them.
    At top level (`gradients._forward`, `layers.layer_vjp_rows`) the gradient methods instead run
    the target's model, take the picked rows without autograd (`Targeted.one_hot_rows`, the
    memoised flat index of the perturbation methods' `take`) and differentiate the model's
    output itself with that cotangent built directly: the same numbers (tests compare every
    gradient method against the gather path), two ops and two autograd nodes fewer per call
    (29 us of 2.07 ms, 1.4%, on the benchmark's CNN at batch 16 and one thread, interleaved).
    `rules` around a target (guided backprop, LRP: ``rules(target(model, t), mapping)``) run the
    target's model with the rules (`Ruled.run`: graph hooks, or the mode during the model call
    only) and pick the rows the same way, so the mode no longer dispatches the selection's ops
    either. Anything else (an int or callable target, K outputs, an output that is not (R, C)
    float, a shared reference row, a torch.func transform, a torch function mode active around
    the call, DeepLift's paired rows) takes the target's usual selection."""
    cot = full.new_zeros(full.shape)  # contiguous: the positions are its own
    if cotangent is None:
        return cot.view(-1).index_fill_(0, index, 1.0).view(full.shape)
    return cot.put_(index, cotangent, accumulate=True)


# NOTE: [No gradient path]
# Where the model computes its output from the attributed inputs without recording gradients
# (a ``torch.no_grad()`` block around a frozen backbone, ``.detach()``, ``.item()``, an integer
# op), autograd finds no path and every gradient is None. Captum raises ("appears to not have
# been used in the graph"); xattr gives zeros, the gradient autograd defines, and says why with
# a NoGradientPathWarning, since all-zero attributions look like an answer. A rule that blocks
# every path (an LRP composite with softmax blocked) gives the same Nones and the same warning.
# A path from some of the inputs (one of several unused) is not warned about: that is a
# model's ordinary case; nor is an empty batch. Inside torch.func transforms and torch.compile
# (the torch.func.vjp backend) the output's requires_grad at vjp's own level says whether any
# path exists (parameters or an outer transform's tracking do not set it), so the same warning
# comes there too.
class NoGradientPathWarning(UserWarning):
    """The attributed output has no autograd path from the attributed inputs.

    Example:
      >>> warnings.simplefilter("error", xattr.NoGradientPathWarning)   # make a zero attribution an error
      >>> xattr.saliency(lambda z: model(z.detach())[:, 3])(x)           # raises: no path from z
    """


NO_PATH = (
    "xattr: no gradient reaches the attributed inputs from the output (every gradient is None), so the "
    "attributions are zero. Either the model computes the output from them without recording gradients, "
    "through a torch.no_grad() block (a frozen backbone), .detach(), .item() or an integer op such as argmax "
    "(to attribute past that point, split the model after it with xattr.at_layer), or a rule blocks every "
    "path (xattr.rule.Block)"
)


def _zero_if_none(g, t: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(t) if g is None else g


def value_and_grad(f: Callable, *, argnums: int | Sequence[int] = 0, chunk_size: int | None = None) -> Callable:
    """Transforms a model function into one returning its outputs and per-example gradients.

    Args:
      f: model function returning one number per example (B,) — use ``xattr.target`` to choose
        it — or ``(B, K)`` when the target is ``xattr.outputs``.
      argnums: which positional argument(s) to differentiate; the others pass through untouched.
      chunk_size: most model rows per backward call; with K outputs, K backward passes of B rows
        are vmapped in groups of max(1, chunk_size // B).

    Returns:
      ``fn(*args) -> (out, grads)`` with ``out`` of shape (B,) or (B, K) and ``grads`` shaped like
      ``args[argnums]`` (a tuple for tuple ``argnums``), with a K axis after the batch for K outputs.

    Example:
      >>> out, g = xattr.value_and_grad(xattr.target(model, 0))(x)
    """
    return attribution_fn(_value_and_grad(f, argnums, chunk_size), f)


def _value_and_grad(f: Callable, argnums, chunk_size) -> Callable:
    """`value_and_grad` without the `attribution_fn` wrapper (NOTE: [Gradient call overhead])."""
    nums, as_tuple = T.normalize_argnums(argnums)

    def fn(*args):
        warn_if_training(f)
        with T.batch_scope(T.batch_size(T.split_args(args, nums)[0])):
            out, grads = vjp_rows(f, args, nums, chunk_size=chunk_size)
        return out, grads if as_tuple else grads[0]

    return fn


def grad(f: Callable, *, argnums: int | Sequence[int] = 0, chunk_size: int | None = None) -> Callable:
    """Like `value_and_grad`, returning only the gradients.

    Example:
      >>> g = xattr.grad(xattr.target(model, 3))(x)              # like x
    """
    return attribution_fn(unwrapped_grad(f, argnums=argnums, chunk_size=chunk_size), f)


def unwrapped_grad(f: Callable, *, argnums: int | Sequence[int] = 0, chunk_size: int | None = None) -> Callable:
    """`grad` without the `attribution_fn` wrapper, for methods that wrap it once themselves.

    NOTE: [Gradient call overhead]
    Saliency was three wrappers deep (saliency, grad, value_and_grad), each running the entry
    checks of `attribution_fn` (a call from inside a model, no_grad, inference tensors): the
    methods built on the gradient now wrap it once. For one plain tensor argument the forward
    of the VJP skips the tree flatten and unflatten, and switches grad mode without the Python
    context objects, a per-example target takes the one-hot cotangent below, and `tree.tree_map`
    applies fn to a lone tensor without optree. Saliency on the benchmark's CNN (batch 16), code
    before and after interleaved in one process, 60 rounds, 2 threads (2026-11-25): 1.089x ->
    1.053x its floor (one plain ``autograd.grad`` of the batch with a one-hot cotangent, without
    the ``abs``); in the benchmark itself, before/after processes alternated: 1.08-1.09 -> 1.06-1.07."""
    vg = _value_and_grad(f, argnums, chunk_size)
    return lambda *args: vg(*args)[1]
