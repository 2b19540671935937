"""A fake CUDA device on a CPU-only machine, for the code paths xattr chooses by device.

NOTE: [A fake CUDA device for tests]
CI has no GPU, so every branch taken on ``x.device.type == "cuda"`` (the accelerator's memory
budget, ``torch.where`` copies, coalitions drawn per example, CUDA generators) and every tensor
made without ``device=`` in code that CUDA inputs reach would go untested. Under `fake_cuda()`
a tensor made on, or moved to, ``"cuda"`` is an `OnCuda`: a CPU tensor that reports
``device == cuda:0``. Every op runs on the CPU, but first the CUDA rules are checked and broken
ones raise as on a GPU:

- an op mixing an `OnCuda` with a CPU tensor of one or more dims (a 0-dim CPU tensor is a
  scalar, which CUDA kernels take) raises "Expected all tensors to be on the same device";
  copies between devices are allowed, and indexing a CUDA tensor by CPU indices (CUDA
  moves them), not a CPU tensor by CUDA ones;
- a generator must be on the device of the op that draws from it (a `torch.Generator` made
  for ``"cuda"`` is a CPU one marked as such, so the draws are the CPU's numbers);
- ops that have no deterministic CUDA kernel raise under ``torch.use_deterministic_algorithms``
  (which the suite's conftest turns on), as ``torch.cumsum`` of floats does on a GPU;
- ``torch.cuda.mem_get_info`` and ``memory_stats`` answer for a device with `FREE` bytes free.

Autograd cannot be faked this way (its engine asks the absent CUDA runtime for a stream and
aborts the process), so only tensors that do not require grad may be `OnCuda`: the perturbation
and surrogate methods and the metrics on precomputed attributions run under it, gradient
methods do not.
"""

from __future__ import annotations

import contextlib
import unittest.mock
import weakref

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda", 0)
FREE = 8 * 2**30  # bytes the fake device reports free
aten = torch.ops.aten
_CROSS_DEVICE = {aten.copy_.default, aten._to_copy.default, aten.lift_fresh.default}
_INDEXED = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}
_NONDETERMINISTIC = {aten.cumsum.default, aten.cumsum.out, aten.cumsum_.default, aten.histc.default, aten.put_.default}


class OnCuda(torch.Tensor):
    """A CPU tensor ``elem`` that reports ``device == cuda:0`` (NOTE: [A fake CUDA device for tests])."""

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        if elem.requires_grad:
            raise AssertionError("autograd cannot run on the fake CUDA device (see the module docstring)")
        return torch.Tensor._make_wrapper_subclass(
            cls, elem.shape, strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype, device=CUDA
        )

    def __init__(self, elem: torch.Tensor):
        self.elem = elem

    def __repr__(self) -> str:
        return f"OnCuda({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


_GENERATORS: list = []  # weak references to every generator made under fake_cuda


class _Generator(torch.Generator):
    """``torch.Generator`` under fake_cuda: a CPU generator, marked when made for ``"cuda"``."""

    def __new__(cls, device="cpu"):
        g = super().__new__(cls, "cpu")
        g.on_cuda = torch.device(device).type == "cuda"
        _GENERATORS.append(weakref.ref(g))
        return g

    def __init__(self, device="cpu"):
        pass

    @property
    def device(self) -> torch.device:
        return CUDA if self.on_cuda else torch.device("cpu")


def _made_for_cuda(g: torch._C.Generator) -> bool | None:
    """Whether a generator reaching an op was made for cuda (None: not made under fake_cuda, or
    ambiguous). Ops get a fresh Python object for it, so it is found by its state."""
    state = g.get_state()
    marks = {r().on_cuda for r in _GENERATORS if r() is not None and torch.equal(r().get_state(), state)}
    return marks.pop() if len(marks) == 1 else None


def _unwrap(t):
    return t.elem if isinstance(t, OnCuda) else t


def _run(func, args, kwargs):
    """One aten op under the CUDA rules, run on the CPU (NOTE: [A fake CUDA device for tests])."""
    leaves = tree_flatten((args, kwargs))[0]
    fake = any(isinstance(t, OnCuda) for t in leaves)
    device = kwargs.get("device")
    if device is not None:
        kwargs = dict(kwargs, device=torch.device("cpu"))
    on_cuda = (device is not None and (torch.device(device).type == "cuda" or bool(_MOVING))) or (fake and device is None)
    if fake and func not in _CROSS_DEVICE:
        checked = leaves
        if func in _INDEXED:  # a CUDA tensor takes CPU indices, a CPU tensor no CUDA ones
            if not isinstance(args[0], OnCuda):
                raise RuntimeError("indices should be either on cpu or on the same device as the indexed tensor (cpu)")
            checked = tree_flatten((args[2:], kwargs))[0]  # index_put's values
        if any(isinstance(t, torch.Tensor) and not isinstance(t, OnCuda) and t.dim() > 0 for t in checked):
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu ({func})")
    for g in leaves:
        if isinstance(g, torch._C.Generator) and _made_for_cuda(g) not in (None, on_cuda):
            want, got = ("cuda", "cpu") if on_cuda else ("cpu", "cuda")
            raise RuntimeError(f"Expected a '{want}' device type for generator but found '{got}' ({func})")
    if on_cuda and func in _NONDETERMINISTIC and torch.are_deterministic_algorithms_enabled():
        if func not in (aten.cumsum.default, aten.cumsum.out, aten.cumsum_.default) or args[0].is_floating_point():
            raise RuntimeError(f"{func} does not have a deterministic implementation on CUDA, but you set "
                               "'torch.use_deterministic_algorithms(True)'")  # fmt: skip
    out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
    if not on_cuda:
        return out
    same = {id(t.elem): t for t in leaves if isinstance(t, OnCuda)}  # in-place ops return their input
    return tree_map(lambda t: (same[id(t)] if id(t) in same else OnCuda(t)) if isinstance(t, torch.Tensor) else t, out)


_MOVING: list = []  # non-empty while a factory or move to cuda runs (its aten ops see device="cpu")


def _is_cuda(d) -> bool:
    return isinstance(d, (str, torch.device)) and torch.device(d).type == "cuda"


class _Factories(TorchFunctionMode):
    """Factories and moves to cuda, made on the CPU and wrapped (their Python bindings would ask
    the absent CUDA runtime for a device guard); indexing and the few tensor methods whose
    bindings guard the device, run on the wrapped CPU tensors."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
            if not isinstance(args[0], OnCuda):
                if any(isinstance(t, OnCuda) for t in tree_flatten(args[1])[0]):
                    raise RuntimeError("indices should be either on cpu or on the same device as the indexed tensor (cpu)")
                return func(*args, **kwargs)
            out = func(args[0].elem, *tree_map(_unwrap, args[1:]))
            return None if out is None else OnCuda(out)
        if func is torch.Tensor.tolist and isinstance(args[0], OnCuda):
            return args[0].elem.tolist()
        if func is torch.Tensor.__invert__ and isinstance(args[0], OnCuda):
            return torch.bitwise_not(args[0])
        if func in (torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__bool__, torch.Tensor.__index__,
                    torch.Tensor.contiguous, torch.Tensor.nonzero) and isinstance(args[0], OnCuda):  # fmt: skip
            out = func(args[0].elem, *args[1:], **kwargs)
            return OnCuda(out) if isinstance(out, torch.Tensor) else out
        moved = _is_cuda(kwargs.get("device")) or (func is torch.Tensor.to and any(_is_cuda(a) for a in args[1:]))
        if not moved:
            return func(*args, **kwargs)
        args = tuple("cpu" if _is_cuda(a) else a for a in args)
        kwargs = {k: "cpu" if k == "device" and _is_cuda(v) else v for k, v in kwargs.items()}
        _MOVING.append(True)
        try:
            out = func(*args, **kwargs)
        finally:
            _MOVING.pop()
        return tree_map(lambda t: OnCuda(t) if isinstance(t, torch.Tensor) and not isinstance(t, OnCuda) else t, out)


class _Rules(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


@contextlib.contextmanager
def fake_cuda(free: int = FREE, memory_stats: dict | None = None):
    """Tensors made on or moved to ``"cuda"`` inside are `OnCuda` (NOTE: [A fake CUDA device for tests])."""
    patch = unittest.mock.patch.object
    stats = {} if memory_stats is None else memory_stats
    with patch(torch, "Generator", _Generator), patch(torch.cuda, "_lazy_init", lambda: None), \
            patch(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * 2**30)), \
            patch(torch.cuda, "memory_stats", lambda device=None: dict(stats)), _Rules(), _Factories():  # fmt: skip
        yield


def on_cuda(tree):
    """CPU tensors (a tree) as fresh `OnCuda` copies (call inside `fake_cuda`)."""
    return tree_map(lambda t: OnCuda(t.clone()) if isinstance(t, torch.Tensor) else t, tree)


def on_cpu(tree):
    """`OnCuda` tensors (a tree) as the CPU tensors they hold."""
    return tree_map(_unwrap, tree)
