"""Models, switches and checks for tests/test_deeplift_fast_paths_fuzz.py (see its NOTEs): the old
paths (`old`), the fast paths' call counters (`counted`), the agreement and summation checks, and
the drawn models (linear stacks, norms, an embedding)."""

import contextlib
from unittest import mock

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

import xattr._src.rules as rules_module
from xattr._src import deeplift_dead_rows, deeplift_fused, deeplift_rules

D = torch.float64

_DERIVATIVE = deeplift_rules.derivative


def _jvp_derivative(op, x, y):
    """`deeplift_rules.derivative` as before the GELU kernel: GELU's from jvp."""
    if op.kind == "gelu":
        return torch.func.jvp(op.fn, (x,), (torch.ones_like(x),))[1]
    return _DERIVATIVE(op, x, y)


def old(fn):
    """``fn()`` with every fast path off: ``old_paths`` of test_deeplift_speed_paths.py, and the
    jvp derivative of GELU."""
    with (mock.patch.object(rules_module, "fused", lambda *a: None),
          mock.patch.object(rules_module, "linear_rows", lambda *a: None),
          mock.patch.object(deeplift_rules, "derivative", _jvp_derivative)):
        return fn()


@contextlib.contextmanager
def counted():
    """Counts the fast paths' runs: row-skipping linears built (with their rows and input rows),
    their backwards by branch, fused layer norms built and their backwards, calls of the fused
    decision, and GELU derivatives taken from the backward kernel."""
    seen = {"linear": [], "skipped": 0, "whole": 0, "fused": 0, "declined": 0}
    linear_rows, fused, backward = rules_module.linear_rows, rules_module.fused, deeplift_dead_rows._InputRows.backward

    def rows_spy(op, rows, n):
        out = linear_rows(op, rows, n)
        if out is not None:
            seen["linear"].append((rows, n))
        return out

    def fused_spy(*args):
        out = fused(*args)
        seen["fused" if out is not None else "declined"] += 1
        return out

    def backward_spy(ctx, grad):
        if grad is not None:
            seen["whole" if bool(grad[ctx.n:].any()) else "skipped"] += 1
        return backward(ctx, grad)

    with (mock.patch.object(rules_module, "linear_rows", wraps=rows_spy) as rows_mock,
          mock.patch.object(rules_module, "fused", wraps=fused_spy),
          mock.patch.object(deeplift_dead_rows._InputRows, "backward", staticmethod(backward_spy)),
          mock.patch.object(deeplift_fused._LayerNorm, "backward", autospec=True, side_effect=deeplift_fused._LayerNorm.backward) as ln,
          mock.patch.object(torch.ops.aten, "gelu_backward", wraps=torch.ops.aten.gelu_backward) as gelu):
        yield seen
    seen["linear calls"], seen["layer norm backwards"], seen["gelu kernel"] = rows_mock.call_count, ln.call_count, gelu.call_count


def close(new, old_value):
    """Equal to 1e-10 of the largest attribution (measured: equal, or a few float64 roundings)."""
    torch.testing.assert_close(new, old_value, rtol=0, atol=1e-10 * max(float(old_value.abs().max()), 1e-300))


def bound(f_x, f_b, attr) -> float:
    """What a sum of the attributions may be off in float64: 1e-10 of the output's gap (or of 1),
    and 1e-13 of the sum of the attributions' magnitudes, where they cancel (NOTE: [Zero reference
    rows at a norm]: measured up to 3e-15 of it)."""
    terms = float(attr.detach().abs().flatten(1).sum(1).max()) if attr.ndim > 1 else float(attr.detach().abs().max())
    return 1e-10 * max(1.0, float((f_x - f_b).detach().abs().max())) + 1e-13 * terms


def conserves(delta, f_x, f_b, attr):
    assert float(delta.detach().abs().max()) <= bound(f_x, f_b, attr)


def paired(kind: str, x: torch.Tensor, g: torch.Generator, tied: list, ties: str = "rows"):
    """(x, the baselines argument, the (B, ...) baselines it stands for): a zero number, zeros
    like x (equal rows: the shared reference), one row broadcast (shared too), or one row per
    example. The rows ``tied`` of x and its baseline are made equal (zero deltas: the multipliers'
    tie branches), by copying the reference into x where it is shared, else x into the baseline;
    ``ties="elements"`` ties a random third of the other elements too, ``"shifted"`` makes the
    tied rows differ by a constant 1.7 instead (a layer norm's input and reference then tie at
    the centred values and the variance, but for rounding)."""
    x = x.clone()
    mask = torch.rand(x.shape, generator=g) < (0.3 if ties == "elements" else 0.0)
    shift = 1.7 if ties == "shifted" else 0.0
    if kind == "per_example":
        b = torch.where(mask, x, 0.5 * torch.randn(x.shape, generator=g, dtype=D))
        b[tied] = x[tied] + shift
        return x, b, b
    row = 0.5 * torch.randn((1,) + x.shape[1:], generator=g, dtype=D) if kind == "row" else torch.zeros((1,) + x.shape[1:], dtype=D)
    x = torch.where(mask, row, x)
    x[tied] = row + shift
    arg = {"zero": 0.0, "zeros_like": torch.zeros_like(x), "row": row}[kind]
    return x, arg, row.expand_as(x)


BASELINES = st.sampled_from(["zero", "zeros_like", "row", "per_example"])
APPROXIMATE = st.sampled_from(["none", "tanh"])


def rows_tied(draw, batch: int) -> list:
    return sorted(draw(st.sets(st.integers(0, batch - 1), max_size=batch)))


def shape_of(rank: int, batch: int, d: int = 4) -> tuple:
    return (batch,) + (3, 2)[: rank - 2] + (d,)


def summed(out: torch.Tensor) -> torch.Tensor:
    """(B, ..., 1) -> (B,): the read-out summed over the positions."""
    out = out.squeeze(-1)
    return out.flatten(1).sum(1) if out.ndim > 1 else out


class Linears(nn.Module):
    """x (B, *mid, d) -> [GELU] -> [rows mixed] -> linear -> [rows mixed] -> GELU -> linear -> [in-place ReLU]
    -> GELU -> linear to 1, summed over the mid dims. The linears as nn.Linear, F.linear, F.linear
    of a strided weight (computed from the parameter) or torch.addmm (rank 2); the first weight
    shared by the first two calls where ``shared``; a rank-4 input transposed first (strided)."""

    def __init__(self, seed: int, spelling: str = "module", bias: bool = True, shared: bool = False, approximate: str = "none",
                 mix: str = "none", first_gelu: bool = False, inplace: bool = False, transposed: bool = False, d: int = 4):
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Linear(d, d, bias=bias)
        self.b = self.a if shared else nn.Linear(d, d, bias=bias)
        self.head = nn.Linear(d, 1, bias=bias)
        self.spelling, self.approximate, self.mix = spelling, approximate, mix
        self.first_gelu, self.inplace, self.transposed = first_gelu, inplace, transposed

    def linear(self, layer: nn.Linear, x):
        if self.spelling == "module":
            return layer(x)
        if self.spelling == "functional":
            return F.linear(x, layer.weight, layer.bias)
        if self.spelling == "strided":
            return F.linear(x, layer.weight.t().contiguous().t(), layer.bias)
        bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features, dtype=x.dtype)
        return torch.addmm(bias, x, layer.weight.t())

    def forward(self, x):
        if self.transposed:
            x = x.transpose(1, 2)
        if self.first_gelu:
            x = F.gelu(x, approximate=self.approximate)
        if self.mix != "none":  # the first linear's reference rows then reach the input rows
            x = x - x.mean(0, keepdim=True)
        h = self.linear(self.a, x)
        if self.mix == "flip":  # the reference rows' gradient reaches the first linear
            h = h.flip(0)
        elif self.mix == "mean":
            h = h - h.mean(0, keepdim=True)
        h = self.linear(self.b, F.gelu(h, approximate=self.approximate))
        if self.inplace:
            F.relu(h, inplace=True)  # written into the row-skipping Function's output
        return summed(self.linear(self.head, F.gelu(h, approximate=self.approximate)))


def skipping(seen: dict, linears: int, batch: int, shared: bool):
    """Every linear call ran as `_InputRows` (a call aborted by an ambiguous shape and run again
    with k copies of the batch adds calls: NOTE: [Rows in dim 0 or dim 1]), each of the last run's
    ``linears`` backwards skipped the reference rows, and its rows were k copies of the batch and
    then k shared reference rows or k copies of the references."""
    assert seen["linear calls"] >= linears and len(seen["linear"]) == seen["linear calls"]
    assert seen["skipped"] == linears and seen["whole"] == 0
    for rows, n in seen["linear"][-linears:]:
        k = n // batch
        assert n == k * batch and rows == n + (k if shared else n)


def both_runs(dl, *args):
    """(attributions, delta) with the fast paths off, then on, with the counts of the second."""
    attr_old, delta_old = old(lambda: dl(*args))
    with counted() as seen:
        attr, delta = dl(*args)
    return attr_old, delta_old, attr, delta, seen


def agree(attr, attr_old, delta, delta_old, f_x, f_b, exact: bool = True):
    """The two runs' attributions and deltas equal; both sum to delta where ``exact``."""
    close(attr, attr_old)
    torch.testing.assert_close(delta, delta_old, rtol=0, atol=bound(f_x, f_b, attr_old))
    if exact:
        conserves(delta, f_x, f_b, attr)
        conserves(delta_old, f_x, f_b, attr_old)


class Normed(nn.Module):
    """x (B, *mid, d) -> [linear, GELU] -> [rows mixed] -> layer norm or RMS norm over the last k
    dims [twice] -> [rows mixed] -> GELU ->
    linear -> GELU -> linear to 1, summed over the mid dims (first: the norm on the input itself;
    transposed: a rank-4 input's mid dims swapped before it, so that the norm reads a strided
    tensor). The norm as a module or a functional call; its weight and bias drawn."""

    def __init__(self, seed: int, shape: tuple, kind: str = "layer_norm", spelling: str = "module", affine: bool = True,
                 bias: bool = True, eps=1e-5, approximate: str = "none", first: bool = False, twice: bool = False,
                 transposed: bool = False, mix: str = "none"):
        super().__init__()
        torch.manual_seed(seed)
        d = shape[-1]
        self.inner, self.head = nn.Linear(d, d), nn.Linear(d, 1)
        self.kind, self.spelling, self.shape, self.eps, self.approximate = kind, spelling, shape, eps, approximate
        self.first, self.twice, self.transposed, self.mix = first, twice, transposed, mix
        if kind == "layer_norm":
            self.norm = nn.LayerNorm(shape, eps=eps, elementwise_affine=affine, bias=bias)
        else:
            self.norm = nn.RMSNorm(shape, eps=eps, elementwise_affine=affine)
        with torch.no_grad():  # away from the defaults (ones, zeros), which hide a swapped weight
            for p in self.norm.parameters():
                p.copy_(torch.randn(p.shape))

    def normed(self, h):
        if self.spelling == "module":
            return self.norm(h)
        if self.kind == "layer_norm":
            return F.layer_norm(h, self.shape, self.norm.weight, self.norm.bias, 1e-5 if self.eps is None else self.eps)
        return F.rms_norm(h, self.shape, self.norm.weight, self.eps)

    def forward(self, x):
        h = x.transpose(1, 2) if self.transposed else x
        if not self.first:
            h = F.gelu(self.inner(h), approximate=self.approximate)
        if self.mix == "before":
            h = h - h.mean(0, keepdim=True)
        h = self.normed(h)
        if self.twice:
            h = self.normed(h)
        if self.mix == "after":  # the norm's reference rows get gradient, which its rules drop
            h = h - h.mean(0, keepdim=True)
        h = F.gelu(h, approximate=self.approximate)
        if self.first:
            h = F.gelu(self.inner(h), approximate=self.approximate)
        return summed(self.head(h))


class Embedded(nn.Module):
    """tokens (B, L) -> embedding -> layer norm -> linear -> GELU -> linear to 1, summed over L."""

    def __init__(self, seed: int, approximate: str, vocab: int = 11, d: int = 6):
        super().__init__()
        torch.manual_seed(seed)
        self.embed, self.norm, self.mid, self.head = nn.Embedding(vocab, d), nn.LayerNorm(d), nn.Linear(d, d), nn.Linear(d, 1)
        self.approximate = approximate

    def forward(self, tokens):
        h = F.gelu(self.mid(self.norm(self.embed(tokens))), approximate=self.approximate)
        return self.head(h).squeeze(-1).sum(1)
