"""`Split.head` traced with torch.fx: the part of the model that h makes irrelevant is skipped.

NOTE: [Traced heads]
The hook head (layers.py) reruns the whole forward and throws the layer's own result away, so
the work before the layer is paid on every call (n_steps times the rows, for layer IG). Where
the model is an ``nn.Module`` (possibly inside ``xattr.target``) that ``torch.fx`` can trace,
the head is instead a GraphModule in which the layer's call_module node (its output, or its
input with ``inputs=True``) is a new first placeholder and every node that cannot reach the
output is removed. Nodes before the layer that the rest still uses (skip connections, masks)
stay, and the model's own arguments are still fed. The GraphModule shares the model's
submodules and parameters by reference; nothing is registered on the model.

Exactness first: the hook head runs whenever this one might differ: a model in train mode
(dropout, batch-norm statistics), any module or global hook, a module whose ``forward`` is
replaced on the instance (``m.forward = ...``, as accelerate's hooks do: fx traces the root's
class forward), a forward that changes the grad, inference or autocast mode (``with
torch.no_grad():`` around a stop-gradient, a ``torch.autocast`` block: fx traces through the
context manager and records no mode, so the graph would differentiate what the model does not;
seen as a node made under a mode other than the trace's), a non-tensor argument or one left
to its default (fx would bake Python values into the graph), several layers or
``call_index="all"``, a layer not seen as exactly the call the hooks would see (traced through,
or inside another leaf module), or a failed trace. Dead nodes are kept when they may write into
a tensor that is still read (in-place ops, ``inplace=True`` modules, ``out=``) or draw random
numbers. h is cloned on entry, as the hook head does, where the pruned graph has an in-place op
whose target may be h or a view of it (followed back through every node that does not make a
fresh tensor: a ReLU(inplace=True) right after the layer), or may return h itself; elsewhere
nothing can write into h and the copy is skipped (layer IG at the CPU benchmark's conv2: a 26 MB
copy of the path per call; fx_graph_writes.py). The model's arguments the pruned graph never
reads are recorded (``TracedHead.unread``), and layer IG, layer feature ablation and layer feature
permutation hand them as empty stand-ins instead of tiling them with the path's steps or the
perturbed copies (`layers.unread_dropped`; `tree.cloned` passes an empty tensor as it is). Traces are cached on the Split, keyed by
the identity and mode of every module, parameter and buffer, and by the plain attributes
(numbers, strings, flags, containers of them by value; plain objects such as a config
namespace by identity and their attributes; other objects by identity) of every module whose
own forward is traced, the model's own classes, and the module-level names their forwards
read, the attributes of the model's own classes and of imported modules that they read
(``self.SCALE``, ``cfg.SCALE``), and the same for the Python functions they call (module-level
functions, also through a module, and methods of the model's own classes, three calls deep):
fx bakes what they read into the graph, so a changed temperature is a new trace. A forward that writes attributes of
its modules (``self.features = h``), or changes a list, dict or set they hold in place
(``self.seen.append(h)``), is not traced again after the first attempt: the trace would leave
fx Proxies there (what was there is put back) and the graph would skip the writes.
"""

from __future__ import annotations

import copy
import inspect
import threading
import types
import weakref

import torch
from torch import fx, nn
from torch.nn.modules import module as _module

from . import tree as T
from .fx_graph_writes import live_nodes, mutates, reaches, returned
from .targets import Targeted

_MISSING = object()
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks", "_global_forward_hooks_always_called")  # fmt: skip


class TracedHead:
    """``(h, *args) -> f(*args)`` with h substituted, on the traced and pruned graph."""

    def __init__(self, gm: fx.GraphModule, fn, n_args: int, clones: bool = True, unread: frozenset = frozenset()):
        self.gm, self.fn, self.n_args, self.clones = gm, fn, n_args, clones
        self.unread = unread  # positions of the model's arguments the pruned graph never reads

    def __call__(self, h, *args):
        if not self.clones:  # NOTE: [Traced heads]: nothing in the graph writes into h
            return self.fn(h, *args)
        return self.fn(T.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, h), *args)


def traced_head(split, h, args: tuple) -> TracedHead | None:
    """The traced head for this call of ``split.head``, or None where the hook head must run."""
    if split.many or split.call_index == "all" or not all(isinstance(a, torch.Tensor) for a in args):
        return None
    if split.inputs and not isinstance(h, torch.Tensor):
        return None
    model, chain = split.model, []
    while isinstance(model, Targeted):
        chain.append(model.t)
        model = model.model
    if not isinstance(model, nn.Module) or any(getattr(_module, g, None) for g in _GLOBAL_HOOKS):
        return None
    if split.__dict__.get("_untraceable"):
        return None
    key = _state(model)
    if key is None:
        return None
    cache = split.__dict__.setdefault("_traced_heads", {})
    entry = cache.get(key, _MISSING)
    if entry is _MISSING:
        if torch.compiler.is_compiling():  # never trace inside dynamo
            return None
        cache.clear()  # one model state at a time: the cache never outgrows one entry
        try:
            entry = _build(split, model, chain)
        except _Stateful:  # its state changes with every call: never traced again
            split.__dict__["_untraceable"] = True
            return None
        except Exception:  # noqa: BLE001 (any tracing failure means: use the hook head)
            entry = None
        cache[key] = entry
    if entry is None or len(args) != entry.n_args:
        return None
    return entry


_MODULE_OWN = frozenset(vars(nn.Module()))  # what every nn.Module holds (parameters, hooks, mode)


def _state(model: nn.Module):
    """Identity of every module, parameter and buffer, and the plain attributes of modules that
    fx traces through; None in train mode or with any hook."""
    key = []
    for m in model.modules():
        if m.training or m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return None
        if "forward" in vars(m):  # replaced on the instance (accelerate's hooks): fx traces type(root).forward
            return None
        key.append((id(m), type(m)))  # a module swapped for another class may get the freed id
        key.extend(id(t) for t in m._parameters.values())
        key.extend(id(t) for t in m._buffers.values())
        if not type(m).__module__.startswith("torch.nn."):  # a model's own class: its forward is traced
            # fx bakes the attributes its forward reads (a temperature, a flag) into the graph
            key.append(tuple((k, _value(v)) for k, v in vars(m).items() if k not in _MODULE_OWN))
            key.append(_globals_read(type(m).forward, type(m)))
    return tuple(key)


def _value(v, depth: int = 2):
    """A plain attribute as a cache key: numbers and strings by value (repr: -0.0 and nan are
    themselves), containers item by item, a plain object (a config namespace, a dataclass) by
    identity and its attributes, ``depth`` levels down; anything else (a tensor, a module, a
    function) by identity."""
    if v is None or isinstance(v, (bool, int, float, complex, str)):
        return type(v), repr(v)
    if isinstance(v, (tuple, list)):
        return type(v), tuple(_value(i, depth) for i in v)
    if isinstance(v, dict):
        return dict, tuple((repr(k), _value(i, depth)) for k, i in v.items())
    if depth and not isinstance(v, (torch.Tensor, nn.Module, type, types.ModuleType)) and not callable(v) and hasattr(v, "__dict__"):
        return id(v), tuple((k, _value(i, depth - 1)) for k, i in vars(v).items())
    return id(v)


def _globals_read(forward, cls: type | None = None, depth: int = 3, seen: set | None = None) -> tuple:
    """The module-level names a forward reads, with their values (fx bakes a global scale or flag
    into the graph as it was when traced), and those read by the Python functions it calls: the
    module-level ones and the methods of ``cls`` (a model's own class), ``depth`` calls deep."""
    code, env = getattr(forward, "__code__", None), getattr(forward, "__globals__", None)
    seen = set() if seen is None else seen
    if code is None or env is None or code in seen:
        return ()
    seen.add(code)
    # the function itself (held: a replaced forward or helper cannot hand its id on) and what its
    # closure cells hold, by value, as for globals
    names, key = _names(code), [forward, tuple(_value(_cell(c)) for c in getattr(forward, "__closure__", None) or ())]
    for name in names:
        value = env.get(name, _MISSING)
        if value is _MISSING and cls is not None:  # self.helper(...), self.SCALE: the class's own
            value = next((k.__dict__[name] for k in _own_classes(cls) if name in k.__dict__), _MISSING)
            value = getattr(value, "fget", None) or getattr(value, "__func__", value)  # a property, static or class method
        if value is _MISSING:
            continue
        key.extend(_keyed(name, value, cls, depth, seen))
        if isinstance(value, types.ModuleType) and not value.__name__.startswith("torch"):
            key.append(_module_read(value, names, cls, depth, seen))  # cfg.SCALE, helpers.post(h)
    return tuple(key)


def _keyed(name: str, value, cls, depth: int, seen: set) -> list:
    """A name read and its value, and what the value reads when it is a function of the user's."""
    key = [(name, _value(value))]
    if depth and _user_function(value):
        key.append(_globals_read(value, cls, depth - 1, seen))
    return key


def _module_read(module: types.ModuleType, names: tuple, cls, depth: int, seen: set) -> tuple:
    """What a forward may read off an imported module (``cfg.SCALE``, ``helpers.post``): its
    attributes named in the code, by value, and the globals of its functions that are called."""
    key, held = [], vars(module)  # not getattr: a module's own __getattr__ (lazy imports) must not run
    for name in names:
        value = held.get(name, _MISSING)
        if value is not _MISSING and not isinstance(value, types.ModuleType):
            key.extend(_keyed(name, value, cls, depth, seen))
    return tuple(key)


_NAMES: dict = {}  # code object -> the names it and the functions defined in it read


def _names(code) -> tuple:
    """``co_names`` of a code object and of the code nested in it (lambdas, comprehensions)."""
    names = _NAMES.get(code)
    if names is None:
        found, todo = {}, [code]
        while todo:
            c = todo.pop()
            found.update(dict.fromkeys(c.co_names))
            todo.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
        if len(_NAMES) > 4096:  # models built on the fly bring new code objects: never grow without bound
            _NAMES.clear()
        names = _NAMES[code] = tuple(found)
    return names


# class -> its own base classes; weak, so a class made per experiment (and what its methods close
# over) dies with its models, and without cls itself in the value, which would keep the key alive
_OWN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _own_classes(cls: type) -> tuple:
    """The classes of ``cls``'s method resolution order that are not torch's own."""
    bases = _OWN.get(cls)
    if bases is None:
        bases = _OWN[cls] = tuple(k for k in cls.__mro__[1:] if k is not object and not k.__module__.startswith("torch"))
    return bases if cls.__module__.startswith("torch") else (cls,) + bases


_EMPTY = object()


def _cell(cell):
    try:
        return cell.cell_contents
    except ValueError:  # a cell not yet filled
        return _EMPTY


def _user_function(value) -> bool:
    """A Python function that is not torch's (fx traces through it, baking what it reads)."""
    return isinstance(value, types.FunctionType) and not (value.__module__ or "").startswith("torch")


class _Stateful(Exception):
    """The model's forward wrote attributes of its modules while traced."""


def _contents(m: nn.Module) -> dict:
    """Shallow copies of the lists, dicts and sets a module holds (not nn.Module's own)."""
    return {k: copy.copy(v) for k, v in vars(m).items() if type(v) in (list, dict, set) and k not in _MODULE_OWN}


def _same_contents(now, then) -> bool:
    if type(now) is dict:
        return now.keys() == then.keys() and all(now[k] is then[k] for k in now)
    if type(now) is list:
        return len(now) == len(then) and all(a is b for a, b in zip(now, then))
    return now == then


def _restore(before: dict, model: nn.Module) -> list:
    """Puts back every module attribute the trace added or replaced (a forward storing
    ``self.features = h`` left an fx Proxy there; the tracer adds ``_tensor_constant`` entries
    on the root), and the contents of the lists, dicts and sets the forward changed in place
    (``self.seen.append(h)``, ``self.cache["h"] = h`` left Proxies in them); returns the names
    the forward itself wrote."""
    written = []
    for m, old, contents in before.values():
        for name, then in contents.items():
            now = m.__dict__.get(name)
            if type(now) is type(then) and not _same_contents(now, then):
                written.append(name)
                now.clear()
                if type(now) is list:
                    now.extend(then)
                else:
                    now.update(then)
        for name in set(m.__dict__) - set(old):
            if not name.startswith("_tensor_constant"):
                written.append(name)
            delattr(m, name)
        for name, value in old.items():
            if m.__dict__.get(name, _MISSING) is not value:
                written.append(name)
                m.__dict__[name] = value
    return written


# NOTE: [Tracing beside other threads]
# ``fx.Tracer.trace`` patches ``nn.Module.__call__`` and ``nn.Module.__getattr__`` for the whole
# process while it runs, and puts back what it found when it ends. Another thread's forward
# during a trace went through the tracer (any model: NameError "module is not installed as a
# submodule"; the traced model: fx Proxies), and two traces in two threads could end out of
# order and leave the patch on the class for good (measured: two threads splitting models
# left ``nn.Module.__getattr__`` patched). So the tracer lets every other thread's modules
# run as they are, and xattr's traces take a lock, one at a time (reentrant: a model may split
# another while it is traced).
_TRACING = threading.RLock()


def _modes() -> tuple:
    """Grad, inference and autocast modes: fx records none of them in a graph."""
    try:
        autocast = (torch.is_autocast_enabled("cpu"), torch.is_autocast_enabled("cuda"))
    except TypeError:  # a torch without the device_type argument
        autocast = (torch.is_autocast_cpu_enabled(), torch.is_autocast_enabled())
    return (torch.is_grad_enabled(), torch.is_inference_mode_enabled()) + autocast


class _Tracer(fx.Tracer):
    def __init__(self, leaves):
        super().__init__()
        self.leaves = leaves
        self.thread = threading.get_ident()
        self.modes = _modes()
        self.modes_changed = False  # NOTE: [Traced heads]: a node made under torch.no_grad() in forward

    def create_node(self, *args, **kwargs):
        if threading.get_ident() == self.thread and _modes() != self.modes:
            self.modes_changed = True
        return super().create_node(*args, **kwargs)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return any(m is x for x in self.leaves) or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        if threading.get_ident() != self.thread:  # NOTE: [Tracing beside other threads]
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val, parameter_proxy_cache: dict):
        if threading.get_ident() != self.thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def _build(split, model: nn.Module, chain: list) -> TracedHead | None:
    params = inspect.signature(model.forward).parameters.values()
    if any(p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params):
        return None
    layer = split.modules[0]
    with _TRACING:  # NOTE: [Tracing beside other threads]
        tracer = _Tracer([layer])
        before = {id(m): (m, dict(m.__dict__), _contents(m)) for m in model.modules()}
        try:  # the tracer stores tensors made in forward on the root (_tensor_constant0): moved to gm
            with torch.enable_grad():
                tracer.modes = _modes()
                graph = tracer.trace(model)
            gm = fx.GraphModule(model, graph)
        finally:
            stateful = _restore(before, model)
    if stateful:  # NOTE: [Traced heads]: a forward that writes its own attributes
        raise _Stateful(stateful)
    if tracer.modes_changed:
        return None
    graph = gm.graph
    calls = []
    for n in graph.nodes:
        if n.op == "call_module":
            m = gm.get_submodule(n.target)
            if m is layer:
                calls.append(n)
            elif any(s is layer for s in m.modules()):
                return None  # the layer also runs inside another leaf: the hooks would count it
    k = 0 if split.call_index is None else split.call_index
    if (split.call_index is None and len(calls) != 1) or k >= len(calls):
        return None
    node = calls[k]
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    with graph.inserting_before(next(iter(graph.nodes))):
        h = graph.placeholder("xattr_h")
    if split.inputs:
        if len(node.args) != 1:
            return None
        node.args = (h,)
    else:
        node.replace_all_uses_with(h)
    live = live_nodes(graph, gm)
    for n in reversed(list(graph.nodes)):
        if n not in live and n.op not in ("placeholder", "output"):
            graph.erase_node(n)
    graph.lint()
    gm.recompile()
    fn = gm
    for t in reversed(chain):
        fn = Targeted(fn, t)
    clones = any(mutates(n, gm) and reaches(n, h, gm) for n in graph.nodes) or returned(graph, h, gm)
    unread = frozenset(i for i, p in enumerate(placeholders) if not p.users)
    return TracedHead(gm, fn, len(placeholders), clones, unread)
