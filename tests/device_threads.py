"""A CPU stand-in for autograd's device threads, where a backward callback reads every context
variable at its default.

NOTE: [Device threads on CPU]
On CUDA, torch's autograd engine runs the nodes of a backward pass on a worker thread per
device. torch carries its own thread-local state there (grad mode, torch.func's levels, the
torch function modes), but not Python's ``contextvars``: a callback run there sees each
variable's default, whatever the caller had set. On CPU the engine runs them on the calling
thread, in the caller's context, so a callback that reads per-call state (DeepLift's paired rows,
LRP's input copies, the batch scope: NOTE: [Attributions inside a model's forward] in
xattr/_src/nesting.py) gives the right numbers on CPU and silently wrong ones on a GPU.

`device_threads()` runs every backward callback in a fresh, empty ``contextvars.Context()``, as a
device thread would see it, keeping torch's thread-local state (the same thread): the backward of
every custom ``autograd.Function`` (``BackwardCFunction.apply``, through which the engine calls
them: xattr's ruled ops, `rule_limits._Held`, and torch.func's own), every tensor hook
(``Tensor.register_hook``: the output hooks of rule_apply.py) and the node hooks xattr puts on
the graph (`graph_hooks._input_grad`, `graph_hooks._relu_clamp`: a node's ``register_hook`` is
C++, so they are patched at their source). It yields a counter of the callbacks so run, so a
test can check that it saw some. ``strict=True`` goes further: in the callbacks' context every
one of xattr's context variables holds a value that raises when used (indexed, compared, tested,
its attributes read), so a read is caught even where the default would give the same numbers
(only an ``is None`` test of it passes unseen).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys

import torch
from torch.autograd.function import BackwardCFunction

from xattr._src import graph_hooks


class Unreadable:
    """What xattr's context variables hold in a backward callback under ``strict=True``."""

    def _refuse(self, *args, **kwargs):
        raise RuntimeError("a backward callback read one of xattr's context variables (NOTE: [Backward callbacks read "
                           "no context] in xattr/_src/rule_base.py): on a GPU it would read the variable's default")

    for _name in ("getattr", "getitem", "bool", "eq", "ne", "lt", "le", "gt", "ge", "hash", "iter", "len", "contains",
                  "add", "radd", "sub", "rsub", "int", "index", "call"):
        locals()[f"__{_name}__"] = _refuse


def xattr_context_variables() -> list:
    """Every ``contextvars.ContextVar`` held at module level by an imported xattr module."""
    found = {id(v): v for name, module in list(sys.modules.items()) if name.split(".")[0] == "xattr"
             for v in vars(module).values() if isinstance(v, contextvars.ContextVar)}
    return list(found.values())


@contextlib.contextmanager
def device_threads(*, strict: bool = False):
    """Runs every backward callback in an empty context (NOTE: [Device threads on CPU]); with
    ``strict``, one where xattr's context variables are `Unreadable`. Yields ``{"callbacks": n}``,
    the count of callbacks run so."""
    count = {"callbacks": 0}
    unreadable = xattr_context_variables() if strict else []

    def empty() -> contextvars.Context:
        context = contextvars.Context()
        for v in unreadable:
            context.run(v.set, Unreadable())
        return context

    def fresh(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            count["callbacks"] += 1
            return empty().run(fn, *args, **kwargs)

        return run

    register_hook = torch.Tensor.register_hook

    def wrapped_register_hook(self, hook):
        return register_hook(self, fresh(hook))

    patches = [(BackwardCFunction, "apply", fresh(BackwardCFunction.apply)),
               (BackwardCFunction, "apply_boxed", fresh(BackwardCFunction.apply_boxed)),
               (torch.Tensor, "register_hook", wrapped_register_hook),
               (graph_hooks, "_input_grad", fresh(graph_hooks._input_grad)),
               (graph_hooks, "_relu_clamp", fresh(graph_hooks._relu_clamp))]
    originals = [(owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name))
                 for owner, name, _ in patches]
    try:
        for owner, name, new in patches:
            setattr(owner, name, new)
        yield count
    finally:
        for owner, name, old in originals:
            setattr(owner, name, old)
