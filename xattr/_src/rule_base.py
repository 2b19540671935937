"""`Rule`, the base class of every modified backward rule, and what a rule's backward receives.

How rules are chosen and applied: NOTE: [Intercepting operations] in rules.py; how an op runs
under its rule: rule_apply.py."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from . import ops


class Saved(NamedTuple):
    """What a rule's backward receives: the op's input tensors (when the rule keeps them), the
    extra tensors its forward computed, and its output (when the rule keeps it).

    Example:
      >>> def backward(self, op, saved, grad):        # in a Rule with keep_inputs = True
      ...     (x,) = saved.inputs
      ...     return (grad * (x > 0),)
    """

    inputs: tuple
    extras: tuple
    output: torch.Tensor | None = None


class _NotKept(tuple):
    """``saved.inputs`` of a rule that keeps no inputs: empty, and indexing it says why."""

    def __getitem__(self, index):
        raise IndexError("saved.inputs is empty: this rule keeps no inputs (set keep_inputs = True, or override keeps(op))")


NOT_KEPT = _NotKept()

_NO_OUTPUT = "saved.output is not kept: set keep_output = True on the rule to receive the op's output"


class _OutputNotKept:
    """``saved.output`` of a rule that does not keep its output: using it says why (a bare None
    failed far from the cause, e.g. "'>' not supported between 'NoneType' and 'int'")."""

    def __getattr__(self, name):
        raise AttributeError(_NO_OUTPUT)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise TypeError(_NO_OUTPUT)

    def __bool__(self):
        raise TypeError(_NO_OUTPUT)

    def __repr__(self) -> str:
        return "<saved.output not kept: keep_output = False>"


def _refuse(self, *args):
    raise TypeError(_NO_OUTPUT)


for _op in ("add radd sub rsub mul rmul truediv rtruediv floordiv pow rpow matmul rmatmul neg pos abs "
            "gt ge lt le getitem float int").split():
    setattr(_OutputNotKept, f"__{_op}__", _refuse)

OUTPUT_NOT_KEPT = _OutputNotKept()

# NOTE: [Backward callbacks read no context]
# On CUDA, torch's autograd engine runs a backward pass on a worker thread of its own per device.
# torch's thread-local state goes with it (grad mode, torch.func's levels, torch function modes),
# but not Python's ``contextvars``: there every context variable reads its default. xattr keeps
# its per-call state in context variables (DeepLift's paired rows, `rows_dim`, the shared
# reference, LRP's input copies and layer flag, the batch scope, `RULED_VJP`: nesting.py lists
# them), so whatever runs in a backward pass (a rule's ``backward`` and ``input_grad``, the
# Functions' ``backward`` and the node and output hooks of rule_apply.py and graph_hooks.py)
# must not read them: it would read the call's values on CPU and the defaults on a GPU, and give
# wrong numbers with no error. What a backward needs from the call is computed in ``forward``
# (its extras, their shapes: `Rescale` finds its input rows from a saved tensor's, not from
# `_ROWS`) or decided in ``forward``/``output_scale`` and kept on the Function's context or in the
# hook. The one backward that runs a rule's ``forward`` again (`rule_apply._differentiable_backward`,
# under torch.func transforms) runs it in a copy of the forward's context. Tested on CPU by running
# every backward callback in an empty context (tests/test_device_threads.py, whose
# tests/device_threads.py stands in for the device threads): DeepLift's derivatives read the
# defaults before that copy, 0.022 off.


class Rule:
    """A modified backward pass for some kinds of operation (subclass it; see docs/rules.md).

    Override ``backward(op, saved, grad)`` to return a tuple with one gradient per tensor of the op
    (None where there is none), and optionally ``forward(op, *tensors) -> (output, extras)`` to
    compute tensors the backward needs (output: ``op.fn(*tensors)``; extras: a tuple of new
    tensors). Set ``kinds`` to a frozenset of the op kinds the rule accepts (`ops.KINDS`) and
    ``keep_inputs = True`` to receive the op's inputs in ``saved.inputs`` (``keep_output = True``:
    its output in ``saved.output``, a copy outside transforms: NOTE: [A kept output is a copy]).
    ``forward``, ``backward`` and ``input_grad`` receive the op without its tensors
    (``op.tensors == ()``); ``accepts``, ``keeps``, ``scales_output`` and ``written_out`` receive them.

    A rule in a DeepLift mapping that never reads an example's row beside its reference's (it
    pairs no rows) may set ``shares_reference = True``: DeepLift may then run one reference row
    for the batch (NOTE: [Shared reference]); without it, the 2B paired rows. (The built-in
    `Rescale` pairs rows through helpers that know both layouts.)

    A rule for an elementwise kind whose gradient is a function of the op's ordinary one
    (guided backprop: ``max(dx, 0)`` of the ReLU's own ``dx``) may also override
    ``input_grad(op, grad)``: outside torch.func transforms the op then runs untouched and
    ``input_grad`` is a hook on its autograd node (NOTE: [Rules as backward hooks]); ``backward``
    must give the same values (transforms use it).

    ``backward`` and ``input_grad`` may run on another thread (autograd's, on a GPU), where
    context variables read their defaults: they use only what ``forward`` saved, never per-call
    state (NOTE: [Backward callbacks read no context]).

    Example:
      >>> class MyTanh(xattr.rule.Rule):
      ...     kinds, keep_inputs = frozenset({"tanh"}), True
      ...     def backward(self, op, saved, grad):
      ...         return xattr.rule.pullback(op.fn, *saved.inputs)[1](grad)   # tanh's own gradient
      >>> g = xattr.grad(xattr.target(xattr.rules(model, {torch.tanh: MyTanh()}), 1))(x)
    """

    kinds: frozenset = frozenset()
    keep_inputs: bool = False
    keep_output: bool = False
    shares_reference: bool = False  # see above and NOTE: [Shared reference]

    def accepts(self, op: ops.Op) -> bool:
        return op.kind in self.kinds

    def keeps(self, op: ops.Op) -> bool:
        """Whether the backward needs the op's input tensors (``saved.inputs``)."""
        return self.keep_inputs

    def forward(self, op: ops.Op, *tensors):
        return op.fn(*tensors), ()

    def backward(self, op: ops.Op, saved: Saved, grad: torch.Tensor) -> tuple:
        raise NotImplementedError(
            f"{type(self).__name__} has no backward(op, saved, grad): every rule needs one (a rule with input_grad or "
            "output_scale too: under torch.func transforms and at in-place calls on views it runs)"
        )

    def input_grad(self, op: ops.Op, grad: torch.Tensor) -> torch.Tensor:
        """The rule's gradient from the op's ordinary input gradient ``grad`` (optional; elementwise
        kinds). ``grad`` is the op's own backward result, used nowhere else: change it in place, and
        return it (returning None would leave the op no gradient: it is refused)."""
        raise NotImplementedError(f"{type(self).__name__} has no input_grad(op, grad)")

    def written_out(self, op: ops.Op) -> Callable | None:
        """A function to run in the op's place, called with the op's own arguments, with the rules
        on (optional): the op written as calls the rules see, each then ruled by the mapping
        (`Unfused`: NOTE: [Ops written out] in rules.py). None: the op runs, with this rule's backward."""
        return None

    def _reroute(self, op: ops.Op) -> ops.Op:
        """The op to run instead, called with the op's own tensors before it runs (optional): the
        same op with some tensors swapped for others of equal value, whose gradient the caller
        reads apart (LRP's input-layer rules: NOTE: [Input-layer relevance] in lrp_methods.py). A
        rule that reroutes always runs through its Function, never as a hook."""
        raise NotImplementedError

    def scales_output(self, op: ops.Op) -> bool:
        """Whether, for this op, the rule's gradient is the op's ordinary VJP of the incoming
        gradient times `output_scale` (NOTE: [Rules as output hooks]); decided before the op runs."""
        return False

    def output_scale(self, op: ops.Op, out: torch.Tensor) -> torch.Tensor:
        """The factor of the incoming gradient, from the op's output (called without grad, where
        `scales_output` said yes): a tensor that broadcasts to ``out``, or a number; ``backward`` must give the same gradients (transforms use it)."""
        raise NotImplementedError(f"{type(self).__name__}.scales_output said yes but it has no output_scale(op, out)")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def pullback(fn: Callable, *primals: torch.Tensor):
    """``torch.func.vjp(fn, *primals)`` for use inside a rule's backward.

    NOTE: [vjp inside a rule]
    Under ``vmap`` a rule's backward runs on saved tensors that belong to the vmapped forward;
    handing such a tensor straight to ``torch.func.vjp`` trips an internal functorch assertion
    (torch 2.13: "batched == nullptr"). A fresh copy made inside the backward is an ordinary
    tensor of the current level, so the primals are cloned first (cheap next to the VJP).

    Example:
      >>> def backward(self, op, saved, grad):        # in a Rule with keep_inputs = True
      ...     _, vjp = xattr.rule.pullback(op.fn, *saved.inputs)
      ...     return vjp(grad)                          # one gradient per tensor of the op
    """
    return torch.func.vjp(fn, *(p.clone() for p in primals))
