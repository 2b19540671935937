"""What the nodes of a traced head may write into (NOTE: [Traced heads] in fx_head.py): the nodes
to keep when pruning (`live_nodes`), and whether h needs its clone (`reaches`, `returned`).
Conservative throughout: a node is taken to alias its inputs unless it surely makes a fresh
tensor (a conv, linear, pooling or norm module; F.conv2d, torch.cat, an arithmetic operator)."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

_FRESH_MODULES = (
    nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear, nn.modules.batchnorm._NormBase, nn.LayerNorm,
    nn.GroupNorm, nn.Embedding, nn.EmbeddingBag, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
)  # fmt: skip
_FRESH_FUNCTIONS = {
    F.conv1d, F.conv2d, F.conv3d, F.linear, F.embedding, torch.matmul, torch.cat, torch.stack,
    operator.add, operator.sub, operator.mul, operator.truediv, operator.matmul,
}  # fmt: skip
_RANDOM = ("rand", "bernoulli", "normal", "multinomial", "poisson", "dropout", "exponential", "geometric", "cauchy")


def live_nodes(graph: fx.Graph, gm: fx.GraphModule) -> set:
    """Nodes that reach the output, or may write into a tensor that is read, or draw random numbers."""
    live: set = set()

    def mark(n):
        stack = [n]
        while stack:
            x = stack.pop()
            if x not in live:
                live.add(x)
                stack.extend(x.all_input_nodes)

    nodes = list(graph.nodes)
    mark(nodes[-1])
    changed = True
    while changed:
        changed = False
        for n in nodes:
            if n not in live and n.op != "placeholder" and (_random(n) or (mutates(n, gm) and _touches_live(n, live, gm))):
                mark(n)
                changed = True
    return live


def _name(n) -> str:
    if n.op == "call_method":
        return n.target
    return getattr(n.target, "__name__", "") if n.op == "call_function" else ""


def _random(n) -> bool:
    return any(r in _name(n).lower() for r in _RANDOM)


def mutates(n, gm) -> bool:
    if n.op == "call_module":
        return getattr(gm.get_submodule(n.target), "inplace", False) is True
    if n.op not in ("call_function", "call_method"):
        return False
    name = _name(n)
    return (
        (name.endswith("_") and not name.startswith("_"))
        or n.target is operator.setitem
        or n.kwargs.get("inplace") is True
        or n.kwargs.get("out") is not None
        or any(a is True for a in n.args[1:])  # e.g. F.relu(x, True): conservative
    )


def _touches_live(n, live: set, gm) -> bool:
    """Whether a tensor n may write into can alias one that live nodes read."""
    return any(x in live or x.op == "get_attr" or (x.op == "placeholder" and any(u in live for u in x.users))
               for x in _may_alias(n, gm))  # fmt: skip


def reaches(n, h, gm) -> bool:
    """Whether a tensor the in-place node n writes into may be (a view of) the placeholder h."""
    return any(x is h for x in _may_alias(n, gm))


def _may_alias(n, gm):
    """The nodes whose outputs n's inputs may be (views of): n's inputs followed back through
    every node but those that make fresh tensors (which are yielded, not passed through)."""
    seen, stack = set(), list(n.all_input_nodes)
    while stack:
        x = stack.pop()
        if x in seen:
            continue
        seen.add(x)
        yield x
        if not _fresh(x, gm):
            stack.extend(x.all_input_nodes)


def returned(graph: fx.Graph, h, gm) -> bool:
    """Whether the output may hold h itself or a view of it, which a caller could write into (the
    clone keeps h out of its reach, as the hook head's does): the output's inputs followed back
    through every node but those that make fresh tensors."""
    out = next(n for n in reversed(graph.nodes) if n.op == "output")
    return reaches(out, h, gm)


def _fresh(x, gm) -> bool:
    """Whether node x surely returns a new tensor (no view of its inputs)."""
    if x.op == "call_module":
        m = gm.get_submodule(x.target)
        return isinstance(m, _FRESH_MODULES) and not getattr(m, "inplace", False)
    return x.op == "call_function" and x.target in _FRESH_FUNCTIONS
