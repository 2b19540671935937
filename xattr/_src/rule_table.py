"""A rule mapping sorted by key type, checked against the model (NOTE: [Choosing a rule] in
rules.py)."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from . import ops, pairwise
from . import rule_apply, rule_base
from .submodules import near_names
from .graph_hooks import GRAPH_NODES, TENSOR_CLAMP_NODES, THRESHOLD_NODES, UNDER_MODE, accepts_relus

try:  # what a torch function mode sees of an autograd.Function's call under torch.func transforms
    from torch._functorch.autograd_function import custom_function_call as FUNCTION_CALL
except ImportError:  # pragma: no cover (torch before 2.1)
    FUNCTION_CALL = None


def _answered_by_mode(func, *args, **kwargs):
    """`FUNCTION_CALL`'s entry in `Table.parsers`: the mode answers it before parsing."""
    return None


class Table:
    """The mapping, sorted by key type (NOTE: [Choosing a rule])."""

    def __init__(self, mapping: Mapping, root: nn.Module | None):
        self.by_kind: dict = {}
        self.by_name: dict = {}
        self.by_module: dict = {}
        self.by_type: dict = {}
        for key, rule in mapping.items():
            if not isinstance(rule, rule_base.Rule):
                raise TypeError(f"rules maps keys to xattr.rule.Rule objects; {key!r} maps to {type(rule).__name__}")
            _check_kinds(rule)
            if isinstance(key, str):
                self.by_name[key] = rule
            elif isinstance(key, type) and issubclass(key, nn.Module):
                self.by_type[key] = rule
            elif isinstance(key, nn.Module):
                self.by_module[id(key)] = (key, rule)
            elif key in ops.KIND_OF:
                kind = ops.KIND_OF[key]
                _check_accepts(key, kind, rule)
                if kind in self.by_kind and self.by_kind[kind][1] is not rule:
                    raise ValueError(
                        f"{_name(self.by_kind[kind][0])} and {_name(key)} both stand for every {kind!r} op but map to "
                        "different rules; key by module type (e.g. nn.Conv1d vs nn.Conv2d) to tell them apart. To "
                        "replace an entry of a shipped mapping (lrp_rules(), epsilon_plus()), key by the same function "
                        f"({_name(self.by_kind[kind][0])}) or delete that entry first"
                    )
                self.by_kind[kind] = (key, rule)
                for also in pairwise.STANDS_FOR.get(kind, ()):  # "tensor_pow", by "pow"'s keys
                    if also in rule.kinds:
                        self.by_kind[also] = (key, rule)
            else:
                raise TypeError(
                    f"rules cannot key on {key!r}: use a torch function ({sorted(ops.KINDS)} have one), an "
                    "nn.Module subclass, an nn.Module instance, or a module name"
                )
        self.names: dict = {}
        if self.by_name:
            if root is None:
                raise ValueError("rules keyed by module name need root=the model those names belong to")
            for n, m in root.named_modules(remove_duplicate=False):  # a shared module has several names
                self.names.setdefault(id(m), []).append(n)
            missing = sorted(set(self.by_name) - {n for names in self.names.values() for n in names})
            if missing:
                raise ValueError(f"no module named {missing} in {type(root).__name__}{near_names(root, missing[0])}")
        if self.by_module and root is not None:
            _check_instances(root, [key for key, _ in self.by_module.values()])
        self.tracks_modules = bool(self.by_name or self.by_module or self.by_type)
        # The parsers of the ops some rule could claim: the others are not parsed (a parser may
        # reject a call, e.g. softmax with an implicit dim, that runs fine untouched).
        self.parsers = {func: parser for func, parser in ops.PARSERS.items()
                        if self.tracks_modules or not ops.PARSES[func].isdisjoint(self.by_kind)}
        self.by_node = self._graph_hooks()
        if FUNCTION_CALL is not None:  # a model's own autograd.Function under torch.func transforms
            self.parsers[FUNCTION_CALL] = _answered_by_mode  # rules.py, `_RulesMode._function_call`
        self.inside_functions: dict = {}  # Function class -> kind of a ruled op inside, or None

    def _graph_hooks(self) -> dict:
        """{autograd node name: (rule, op without tensors)} when every rule can be put on the
        graph after the call (NOTE: [Rules as graph hooks]), else {}."""
        if self.tracks_modules or not self.by_kind:
            return {}
        by_node = {}
        for kind, (key, rule) in self.by_kind.items():
            # a rule that decides per op is not known to the walk, but for `accepts_relus`, whose
            # test at clamps the walk makes itself (NOTE: [Clamps that are ReLUs] in guided_rules.py)
            accepts = type(rule).accepts
            if kind == "threshold" and accepts is accepts_relus:  # the node does not tell ReLU thresholds apart
                by_node.update(dict.fromkeys(THRESHOLD_NODES, UNDER_MODE))
                continue
            walkable = accepts is accepts_relus or (accepts is rule_base.Rule.accepts and kind != "clamp")
            if kind not in GRAPH_NODES or kind not in rule.kinds or not walkable or type(rule).input_grad is rule_base.Rule.input_grad:
                return {}
            plain, names = GRAPH_NODES[kind]
            light = rule_apply._without_tensors(ops.PARSERS[plain](plain, torch.zeros(1), *((0,) if kind == "clamp" else ())))
            by_node.update(dict.fromkeys(names, (rule, light)))
            if kind == "clamp":
                by_node.update(dict.fromkeys(TENSOR_CLAMP_NODES, UNDER_MODE))
        return by_node

    def resolve(self, op: ops.Op, stack: list) -> rule_base.Rule | None:
        for module in reversed(stack):
            for rule in self._module_rules(module):
                if rule is not None and rule.accepts(op):
                    return rule
        rule = self.by_kind.get(op.kind, (None, None))[1]
        return rule if rule is not None and rule.accepts(op) else None

    def _module_rules(self, module):
        for name in self.names.get(id(module), ()):
            yield self.by_name.get(name)
        if self.by_module:
            yield self.by_module.get(id(module), (None, None))[1]
        for cls in type(module).__mro__ if self.by_type else ():
            yield self.by_type.get(cls)


def _name(fn) -> str:
    """``F.relu``, ``torch.sigmoid``, ``Tensor.relu``: how a torch function key is written (for errors)."""
    for prefix, space in (("F", F), ("torch", torch), ("Tensor", torch.Tensor)):
        for name in dir(space):
            if not name.startswith("_") and getattr(space, name, None) is fn:
                return f"{prefix}.{name}"
    return repr(fn)


def _check_kinds(rule: rule_base.Rule) -> None:
    """Refuses a rule whose ``kinds`` is not a collection of op kind names (``kinds = "relu"``
    would test substrings: "elu" is in "relu"; ``{"ReLU"}`` would never match), or is empty where
    the rule decides by kind alone: such a rule would be silently skipped at every op."""
    kinds = rule.kinds
    if isinstance(kinds, str) or not isinstance(kinds, (set, frozenset, tuple, list)):
        raise TypeError(f"{type(rule).__name__}.kinds must be a frozenset of op kinds such as frozenset({{'relu'}}), "
                        f"not {kinds!r}")
    unknown = sorted(k for k in kinds if k not in ops.KINDS)
    if unknown:
        raise ValueError(f"{type(rule).__name__}.kinds names no op kind: {unknown}; the kinds are {sorted(ops.KINDS)}")
    if not kinds and type(rule).accepts is rule_base.Rule.accepts:
        raise ValueError(f"{type(rule).__name__}.kinds is empty, so the rule applies to no op: set kinds (or override "
                         "accepts(op))")


def merged(defaults: Mapping, mapping: Mapping | None) -> dict:
    """``{**defaults, **mapping}`` where a torch-function key of ``mapping`` also replaces the
    defaults' key of its kind: ``{torch.relu: rule}`` over DeepLift's ``{F.relu: Rescale()}``
    replaces it (the two stand for one kind, which a mapping may map to only one rule)."""
    mapping = dict(mapping or {})
    kinds = {ops.KIND_OF[k] for k in mapping if _is_kind_key(k)}
    return {**{k: r for k, r in defaults.items() if not (_is_kind_key(k) and ops.KIND_OF[k] in kinds)}, **mapping}


def _is_kind_key(key) -> bool:
    return not isinstance(key, (str, type, nn.Module)) and key in ops.KIND_OF


def _check_accepts(key, kind: str, rule: rule_base.Rule) -> None:
    """Refuses a kind key whose rule declares it never applies to that kind (``{F.relu: Gamma()}``):
    the rule would be silently skipped at every such op. A rule with its own ``accepts`` decides
    per op, so it is left to decide."""
    accepted = {kind} | pairwise.STANDS_FOR.get(kind, frozenset())  # NOTE: [Elementwise functions of two inputs]
    if type(rule).accepts in (rule_base.Rule.accepts, accepts_relus) and accepted.isdisjoint(rule.kinds):
        raise ValueError(
            f"rules: {_name(key)} stands for every {kind!r} op, but {type(rule).__name__} applies to {sorted(rule.kinds)} "
            "ops only, so it would never run; key it by an op of one of those kinds, or by module"
        )


def _check_instances(root: nn.Module, keys: list) -> None:
    """Refuses module-instance keys that are not modules of ``root``: no op would ever run inside
    them, and the rule would be silently skipped (a module of the original model keying a rule
    for a copy of it, such as `merge_batch_norm`'s, is one)."""
    inside = {id(m) for m in root.modules()}
    strangers = [type(k).__name__ for k in keys if id(k) not in inside]
    if strangers:
        raise ValueError(
            f"rules keyed by module instances that are not modules of the {type(root).__name__} being explained: "
            f"{strangers}. A copy of a module is another instance (xattr.merge_batch_norm returns a copy of the "
            "model: take the modules from the copy, or key by module name)"
        )
