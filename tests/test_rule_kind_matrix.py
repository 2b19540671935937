"""Every built-in rule at every op kind it accepts, in every spelling (tests/rule_kind_specs.py).

For each rule R of `xattr.rule` and each kind K in ``R.kinds``: a float64 net ``lin2(op(lin1(x)))``
with one op of kind K, keyed by K's torch function, by the module holding the op, by its type and
by its name. The forward is unchanged; the backward runs and is finite with the input's shape,
eagerly and under ``vmap(grad)`` (the rule's ``backward``, where eagerly a hook may run); and the
gradient at the op is the rule's documented math against slow references written here: LRP's
from the op's Jacobian, DeepLift's from exact Shapley values (every coalition enumerated) in
paired rows and against one shared reference row, and the ordinary gradient outside them, the
others by their formulas. Also: an in-place call on a view is ruled as the same call out of place
on that part; tensors a transform batches per example (a clamp's bound, ``t / x``'s t, an
attention mask) get no gradient; a kind key whose rule does not accept its kind is refused;
every torch function `rules` parses keys its kind; docs/rules.md lists every kind and each
rule's kinds.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import re
from pathlib import Path

import pytest
import torch

import xattr
from xattr import rule as R
from xattr._src import ops, rule_table
from rule_kind_specs import IN_PLACE, KEY, POSITIVE, SHARED, Head, Net, all_specs, spelled

SPECS = all_specs()
RULES = {
    "Guided": R.Guided, "Deconv": R.Deconv, "Rescale": R.Rescale, "Product": R.Product, "ExactSoftmax": R.ExactSoftmax,
    "Unfused": R.Unfused, "Epsilon": lambda: R.Epsilon(0.01), "Gamma": lambda: R.Gamma(0.5, eps=0.01),
    "GeneralizedGamma": lambda: R.GeneralizedGamma(0.5, eps=0.01),
    "PositiveWeights": lambda: R.PositiveWeights(0.01), "AlphaBeta": lambda: R.AlphaBeta(2.0, 1.0, eps=0.01),
    "ZPlus": lambda: R.ZPlus(0.01), "Pass": R.Pass, "WSquare": lambda: R.WSquare(0.01), "Flat": lambda: R.Flat(0.01),
    "ZBox": lambda: R.ZBox(-1.0, 2.0, eps=0.01), "FixedStd": R.FixedStd, "FixedAttention": R.FixedAttention,
    "FixedGate": R.FixedGate, "Block": R.Block, "Refuse": lambda: R.Refuse("no rule for this op"),
}
CASES = [(name, kind) for name, make in RULES.items() for kind in sorted(ops.KINDS) if kind in make().kinds]
FUSED = ("fused_attention", "fused_recurrent")


def test_every_rule_is_swept():
    shipped = {c for _, c in inspect.getmembers(R, inspect.isclass) if issubclass(c, R.Rule) and c is not R.Rule}
    assert shipped == {type(make()) for make in RULES.values()}


def test_every_kind_has_specs():
    assert set(SPECS) == set(ops.KINDS)


KEYS = ("kind", "module", "type", "name")


@pytest.mark.parametrize("name,kind", CASES)
def test_rule_at_kind(name, kind):
    """(a) the forward unchanged, (b) a finite backward of the right shape, eagerly and under
    vmap(grad), (c) the rule's math at the op, for every spelling of the kind and every key."""
    for spec in SPECS[kind]:
        net = Net(spec)
        x = net.input()
        with torch.no_grad():
            plain = net(x)
        for keyed in KEYS:
            ruled = xattr.rules(net, _mapping(RULES[name](), keyed, kind, net.inner))
            label = f"{name} at {spec.name} by {keyed}"
            if name == "Refuse" or (name == "Block" and kind in FUSED):  # docs/rules.md: fused ops
                message = "no rule for this op" if name == "Refuse" else "cannot apply to a"
                with pytest.raises(NotImplementedError, match=message):
                    ruled(x.clone().requires_grad_())
                continue
            xg = x.clone().requires_grad_()
            out = ruled(xg)
            if name == "Unfused":  # written out: equal but for rounding
                torch.testing.assert_close(out, plain, rtol=1e-12, atol=1e-12, msg=lambda m: f"{label}: {m}")
            else:
                assert torch.equal(out, plain), label
            (g,) = torch.autograd.grad(out.sum(), xg, allow_unused=True, materialize_grads=True)  # Block: none
            assert g.shape == x.shape and torch.isfinite(g).all(), label
            if keyed in ("type", "name"):  # tracked like "module"
                continue
            per_example = torch.func.vmap(torch.func.grad(lambda r: ruled(r[None]).sum()))(x)  # the rule's backward
            torch.testing.assert_close(per_example, g, rtol=1e-9, atol=1e-12, msg=lambda m: f"{label}: {m}")
        if name == "Refuse" or (name == "Block" and kind in FUSED):
            continue
        for keyed in ("kind", "module") if kind != "linear" else ("module",):  # lin2 is linear too
            for rows in (("paired", "shared", None) if name in DEEPLIFT else (None,)):
                _check_math(name, spec, net, keyed, rows)


DEEPLIFT = ("Rescale", "Product", "ExactSoftmax")


def _mapping(rule, keyed: str, kind: str, module):
    return {"kind": {KEY[kind]: rule}, "module": {module: rule}, "type": {type(module): rule}, "name": {"inner": rule}}[keyed]


# -- (c): the gradient at the op against a reference -------------------------------------------


def _ruled_grad(name, spec, net, h, keyed, rows, column=None):
    """The ruled gradient at the op's input h; ``rows``: "paired" (inputs then as many
    references), "shared" (inputs then one reference row), or None (DeepLift's paired rows off)."""
    head = Head(net)
    ruled = xattr.rules(head, _mapping(RULES[name](), keyed, spec.kind, head.inner))
    h = h.clone().requires_grad_()
    n = _inputs(h, rows)
    scope = contextlib.nullcontext()
    if rows is not None:
        scope = R.paired_rows(h.shape[0], reference_grads=False, shared=int(rows == "shared"))
    with scope:
        out = ruled(h)[:n]
        loss = out.sum() if column is None else out[:, column].sum()
        (g,) = torch.autograd.grad(loss, h, allow_unused=True, materialize_grads=True)
    return g


def _inputs(h, rows) -> int:
    return {None: h.shape[0], "paired": h.shape[0] // 2, "shared": h.shape[0] - 1}[rows]


def _plain(spec, net, h, rows=None, column=None):
    """(the operands, the op's output, the gradient reaching it from the first ``rows`` rows)
    without rules."""
    operands = tuple(t.detach().requires_grad_() for t in spec.split(h))
    y = spec.op(net.inner, *operands)
    out = net.lin2(y.flatten(1))
    out = out if rows is None else out[:rows]
    loss = out.sum() if column is None else out[:, column].sum()
    (g,) = torch.autograd.grad(loss, y, retain_graph=True)
    return operands, y.detach(), g, loss


def _to_h(spec, h, grads):
    """The gradient at h of operand gradients (None: none)."""
    h = h.clone().requires_grad_()
    operands = spec.split(h)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(operands, grads)]
    return torch.autograd.grad(operands, h, grads)[0]


def _stab(z, eps):
    return z + eps * torch.where(z >= 0, 1.0, -1.0)


def _h(net, rows):
    """The op's input: lin1 of the inputs (and their references: as many, or one shared row)."""
    if rows is None:
        x = net.input()
    elif rows == "paired":
        x = torch.cat([net.input(), net.input(seed=7)])
    else:
        x = torch.cat([net.input(n=SHARED), net.input(seed=7, n=1)])
    return net.lin1(x).detach()


def _check_math(name, spec, net, keyed, rows):
    label = f"{name} at {spec.name} by {keyed}, {rows} rows"
    h = _h(net, rows)
    n = _inputs(h, rows)
    if name in DEEPLIFT and rows is None:  # outside paired rows: the ordinary gradient (docs/rules.md), by central
        # differences (torch has no derivative of asinh_, and rounds hardsigmoid's 1/6 to float32)
        head, step = Head(net), 1e-6
        with torch.no_grad():
            expected = torch.stack([(head(h + step * e).sum(1) - head(h - step * e).sum(1)) / (2 * step)
                                    for e in torch.eye(h.shape[1], dtype=h.dtype)], 1)
        torch.testing.assert_close(_ruled_grad(name, spec, net, h, keyed, rows), expected, rtol=1e-6, atol=1e-8,
                                   msg=lambda m: f"{label}: {m}")
        return
    if name == "ExactSoftmax":  # summation-to-delta for each output: exact (docs/rules.md)
        for column in (0, 1):
            g = _ruled_grad(name, spec, net, h, keyed, rows, column)
            with torch.no_grad():
                out = Head(net)(h)[:, column]
            delta = ((h[:n] - h[n:]) * g[:n]).sum(1)
            torch.testing.assert_close(delta, out[:n] - out[n:], rtol=1e-9, atol=1e-12, msg=lambda m: f"{label}: {m}")
            assert not g[n:].any(), label
        return
    g = _ruled_grad(name, spec, net, h, keyed, rows)
    expected = _reference(name, spec, net, h, n)
    torch.testing.assert_close(g, expected, rtol=1e-7, atol=1e-9, msg=lambda m: f"{label}: {m}")


def _reference(name, spec, net, h, n):
    kind, inner = spec.kind, net.inner
    if name == "Block":  # documented: no gradient through the op
        return torch.zeros_like(h)
    if name in ("Rescale", "Product"):
        if kind in ("max_pool", "max"):  # a max along dims is a max-pool (NOTE: [Max along a dim])
            return _rescale_max_pool(spec, net, h, n)
        if kind == "softmax":
            return _rescale_softmax(spec, net, h, n)
        if kind == "sort":
            return _rescale_sort(spec, net, h, n)
        return _shapley_multipliers(spec, net, h, n)
    operands, y, g, loss = _plain(spec, net, h)
    if name == "Unfused" or (name in ("Guided", "Deconv") and not (kind == "relu" or spec.relu)):
        return _to_h(spec, h, torch.autograd.grad(loss, operands))  # the ordinary gradient
    x = operands[0].detach()
    if name == "Guided":
        return _to_h(spec, h, [g.clamp(min=0) * (x > 0)])
    if name == "Deconv":
        return _to_h(spec, h, [g.clamp(min=0)])
    if name == "Pass":  # R_x = R_y: g_x = g_y * y / x
        return _to_h(spec, h, [g * y / x])
    if name == "FixedStd":
        return _to_h(spec, h, [_fixed_std(spec, inner, x, g), None, None])
    if name == "FixedAttention":
        return _to_h(spec, h, _fixed_attention(spec, inner, *[t.detach() for t in operands], g))
    if name == "FixedGate" and kind in ("matmul", "einsum"):  # the factors share evenly: 1/k of each one's gradient
        return _to_h(spec, h, [d / len(operands) for d in torch.autograd.grad(loss, operands)])
    if name == "FixedGate":
        a, b = (t.detach() for t in operands)
        if spec.name.startswith("gated"):  # the first factor a recurrent layer's gate
            return _to_h(spec, h, [None, g * a])
        if spec.kind == "quotient":  # the divisor held constant: d(a / b)/da
            return _to_h(spec, h, [g / b, None])
        if spec.name == "a * gate":
            return _to_h(spec, h, [(g * b), None])
        return _to_h(spec, h, [g * b / 2, g * a / 2])
    return _to_h(spec, h, [_lrp(name, spec, inner, x, g)])


def _ref_row(h, n, i):
    return h[n + i] if h.shape[0] == 2 * n else h[n]


def _shapley_multipliers(spec, net, h, n):
    """DeepLift's multipliers at the op, from exact Shapley values of the elements of each input
    row against its reference row (every coalition enumerated), times the gradient there."""
    _, _, g, _ = _plain(spec, net, h, rows=n)
    width = h.shape[1]
    masks = torch.tensor(list(itertools.product([0.0, 1.0], repeat=width)), dtype=h.dtype)  # (2^W, W)
    sizes = masks.sum(1)
    weights = torch.tensor([math.factorial(int(s)) * math.factorial(width - int(s) - 1) / math.factorial(width)
                            if s < width else 0.0 for s in sizes], dtype=h.dtype)
    place = 2.0 ** torch.arange(width - 1, -1, -1, dtype=h.dtype)  # a mask's row in `masks`
    out = torch.zeros_like(h)
    with torch.no_grad():
        for i in range(n):
            x, r = h[i], _ref_row(h, n, i)
            values = spec.op(net.inner, *spec.split(r + masks * (x - r))).flatten(1)  # (2^W, outputs)
            for p in range(width):
                without = masks[:, p] == 0
                with_p = masks[without].clone()
                with_p[:, p] = 1
                phi = (weights[without, None] * (values[(with_p * place).sum(1).long()] - values[without])).sum(0)
                out[i, p] = (g[i].flatten() * phi).sum() / (x[p] - r[p])
    return out


def _rescale_max_pool(spec, net, h, n):
    """NOTE: [Max-pool multipliers per output]: each output's change ``top - y_ref`` to x's argmax,
    ``y - top`` to the reference's, divided there by ``x - x_ref``; argmaxes from the Jacobians."""
    (x,), y, g, _ = _plain(spec, net, h, rows=n)
    pool = lambda t: spec.op(net.inner, t)  # noqa: E731
    out = torch.zeros(x.shape[0], x[0].numel(), dtype=h.dtype)
    for i in range(n):
        j = n + i if h.shape[0] == 2 * n else n
        xi, ri = x[i : i + 1].detach(), x[j : j + 1].detach()
        ja = torch.autograd.functional.jacobian(pool, xi).reshape(y[0].numel(), -1)
        jr = torch.autograd.functional.jacobian(pool, ri).reshape(y[0].numel(), -1)
        yi, yr = y[i].flatten(), y[j].flatten()
        top = (torch.minimum if "min" in spec.name else torch.maximum)(yi, yr)  # a min: -max(-x)
        gi = g[i].flatten()
        out[i] = (ja.T @ (gi * (top - yr)) + jr.T @ (gi * (yi - top))) / (xi - ri).flatten()
    return _to_h(spec, h, [out.view(x.shape)])


def _rescale_sort(spec, net, h, n):
    """NOTE: [DeepLift at order statistics]: the op's Jacobian averaged along the straight path
    from the reference row to the input row, taken at the midpoint of every piece between the
    times where two elements of h cross (the op is linear on each piece)."""
    _, _, g, _ = _plain(spec, net, h, rows=n)
    op = lambda t: spec.op(net.inner, *spec.split(t)).flatten(1)  # noqa: E731
    out = torch.zeros_like(h)
    for i in range(n):
        x, r = h[i], _ref_row(h, n, i)
        a, c = r[None, :] - r[:, None], x[None, :] - x[:, None]
        times = sorted({0.0, 1.0} | {float(t) for t in (a / (a - c)).flatten() if 0 < t < 1})
        mean = sum((t1 - t0) * torch.autograd.functional.jacobian(op, (r + (t0 + t1) / 2 * (x - r))[None])[0, :, 0]
                   for t0, t1 in zip(times, times[1:]))
        out[i] = mean.T @ g[i].flatten()
    return out


def _rescale_softmax(spec, net, h, n):
    """The paper's softmax rule: ``u = g * (y - y_ref) / (x - x_ref)``, minus its mean."""
    (x,), y, g, _ = _plain(spec, net, h, rows=n)
    u = g[:n] * (y[:n] - y[n:]) / (x[:n] - x[n:]).detach()
    return _to_h(spec, h, [torch.cat([u - u.mean(-1, keepdim=True), torch.zeros_like(y[n:])])])


def _fixed_std(spec, inner, x, g):
    if spec.kind == "layer_norm":
        w = inner.ln.weight if hasattr(inner, "ln") else torch.ones(6, dtype=x.dtype)
        v = g * w / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
        return v - v.mean(-1, keepdim=True)
    w, eps = {"nn.RMSNorm": (getattr(inner, "rms", None) and inner.rms.weight, torch.finfo(x.dtype).eps),
              "torch.rms_norm(weight)": (getattr(inner, "wn", None), 1e-5)}.get(spec.name, (None, torch.finfo(x.dtype).eps))
    w = torch.ones(6, dtype=x.dtype) if w is None else w.detach()
    return g * w / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _fixed_attention(spec, inner, q, k, v, g):
    """The values' gradient ``A^T g`` (A the attention weights, by hand), none for q and k."""
    scale = 0.7 if "scale" in spec.name else q.shape[-1] ** -0.5
    scores = torch.einsum("bqd,bkd->bqk", q, k) * scale
    if "is_causal" in spec.name:
        scores = scores.masked_fill(torch.ones(2, 2).triu(1).bool(), -math.inf)
    if "float mask" in spec.name:
        scores = scores + inner.mask
    if "bool mask" in spec.name:
        scores = scores.masked_fill(~inner.keep, -math.inf)
    a = torch.softmax(scores, -1)
    return [None, None, torch.einsum("bqk,bqd->bkd", a, g)]


def _lrp(name, spec, inner, x, g):
    """The gradient an LRP rule passes back at a layer, per example from the layer's Jacobian J
    (z = J x + c): epsilon, gamma and w+ by ``g_x = rho(J)^T (g z / stab(rho(J) x + rho(c)))``,
    alpha-beta from the contributions ``x_i J_ji``, the input-layer rules' relevance itself."""
    rule = RULES[name]()
    out = torch.zeros_like(x)
    weighted = spec.kind in ("linear", "conv", "batch_norm")
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        z = spec.op(inner, xi).detach().flatten()
        J = torch.autograd.functional.jacobian(lambda t: spec.op(inner, t), xi).reshape(z.numel(), -1).detach()
        xf = xi.flatten()
        c = z - J @ xf
        R = z * g[i].flatten()
        if name in ("Epsilon", "Gamma", "PositiveWeights"):
            rho = {"Epsilon": lambda w: w, "Gamma": lambda w: w + 0.5 * w.clamp(min=0),
                   "PositiveWeights": lambda w: w.clamp(min=0)}[name]
            rho_b = lambda b: b if name == "PositiveWeights" else rho(b)  # noqa: E731 (w+ keeps the bias)
            Jr, cr = (rho(J), rho_b(c)) if weighted else (J, c)
            gi = Jr.T @ (R / _stab(Jr @ xf + cr, 0.01))
        elif name == "GeneralizedGamma":  # w + 0.5 w+ where x_j and z_i share a sign, w + 0.5 w- where not
            pos = z >= 0
            same = (xf[None, :] >= 0) == pos[:, None]
            Jr = torch.where(same, J + 0.5 * J.clamp(min=0), J + 0.5 * J.clamp(max=0))
            cr = torch.where(pos, c + 0.5 * c.clamp(min=0), c + 0.5 * c.clamp(max=0))
            gi = Jr.T @ (R / _stab(Jr @ xf + cr, 0.01))
        elif name in ("AlphaBeta", "ZPlus"):
            alpha, beta, bias = (2.0, 1.0, True) if name == "AlphaBeta" else (1.0, 0.0, False)
            C = xf[None, :] * J
            zp = C.clamp(min=0).sum(1) + (c.clamp(min=0) if bias else 0)
            zn = C.clamp(max=0).sum(1) + (c.clamp(max=0) if bias else 0)
            Rx = (alpha * C.clamp(min=0) / _stab(zp, 0.01)[:, None] - beta * C.clamp(max=0) / _stab(zn, 0.01)[:, None]).T @ R
            gi = Rx / xf
        else:  # input-layer rules: the relevance itself
            if name == "ZBox":
                low, high = torch.full_like(xf, -1.0), torch.full_like(xf, 2.0)
                share = xf[None, :] * J - low[None, :] * J.clamp(min=0) - high[None, :] * J.clamp(max=0)
            else:
                share = J * J if name == "WSquare" else (J != 0).to(J.dtype)
            gi = (share / _stab(share.sum(1), 0.01)[:, None]).T @ R
        out[i] = gi.view(xi.shape[1:])
    return out


# -- in place on a view: the same numbers as the op out of place on that part -------------------

_VIEW_CASES = [(name, f, kind) for name, make in RULES.items() if name != "Refuse"
               for f, kind in ops.KIND_OF.items() if f in IN_PLACE and kind in make().kinds
               and kind in ops.ELEMENTWISE - {"clamp", "threshold", "pow"}]


@pytest.mark.parametrize("name,f,kind", _VIEW_CASES, ids=[f"{n}-{spelled(f)}" for n, f, _ in _VIEW_CASES])
def test_in_place_on_a_view_is_ruled_as_out_of_place(name, f, kind):
    """``f_(t[:, 1:])`` in place on a view of t is ``cat([t[:, :1], f(t[:, 1:])])``: the rule applies
    to the view's elements, and the others pass their gradient (eagerly, under vmap, in paired rows)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 6).double()
    positive = kind in POSITIVE

    def in_place(x):
        t = lin(x)
        t = t.abs() + 0.1 if positive else t
        f(t[:, 1:])
        return t.sum(1)

    def out_of_place(x):
        t = lin(x)
        t = t.abs() + 0.1 if positive else t
        return torch.cat([t[:, :1], KEY[kind](t[:, 1:])], 1).sum(1)

    x = torch.randn(4, 5, dtype=torch.float64)
    grads = []
    for fn in (in_place, out_of_place):
        ruled = xattr.rules(fn, {KEY[kind]: RULES[name]()})
        with R.paired_rows(4, reference_grads=False) if name == "Rescale" else contextlib.nullcontext():
            grads.append(torch.func.grad(lambda r: ruled(r).sum())(x))
            xg = x.clone().requires_grad_()
            grads.append(torch.autograd.grad(ruled(xg).sum(), xg)[0])
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[3], rtol=1e-10, atol=1e-12)


# -- tensors a torch.func transform batches: further tensors of the op ---------------------------


def _attention(lin, x, mask):
    q, k, v = lin(x).view(-1, 3, 2, 3).unbind(1)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


_BATCHED = {  # kind: f(lin, x, per-example tensor), whose tensor is a bound, a numerator or a mask
    "attention": _attention,
    "clamp": lambda lin, x, t: torch.clamp(lin(x), min=t[:, :18]),
    "rdiv": lambda lin, x, t: t[:, :18] / (lin(x).abs() + 0.5),
}
_BATCHED_CASES = [(name, kind) for kind in _BATCHED for name, make in RULES.items() if kind in make().kinds and name != "Refuse"]


@pytest.mark.parametrize("name,kind", _BATCHED_CASES)
def test_a_per_example_tensor_under_vmap(name, kind):
    """Under vmap a clamp's tensor bound, the fixed numerator of ``t / x`` and an attention mask
    given per example are tensors of the op (NOTE: [Clamp as an activation], [Attention masks under
    transforms]): every rule gives them no gradient and its per-example numbers are the eager ones."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 18).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    extra = torch.randn(3, 2, 2, dtype=torch.float64) if kind == "attention" else torch.randn(3, 18, dtype=torch.float64)
    ruled = xattr.rules(lambda x, t: _BATCHED[kind](lin, x, t).flatten(1).sum(1), {KEY[kind]: RULES[name]()})
    per_example = torch.func.vmap(torch.func.grad(lambda r, t: ruled(r[None], t[None]).sum()))(x, extra)
    for i in range(3):
        xi = x[i : i + 1].clone().requires_grad_()
        (eager,) = torch.autograd.grad(ruled(xi, extra[i : i + 1]).sum(), xi, allow_unused=True, materialize_grads=True)
        torch.testing.assert_close(per_example[i], eager[0], rtol=1e-9, atol=1e-12)


# -- (d) and the relation between kinds, keys and docs -----------------------------------------


@pytest.mark.parametrize("name", sorted(RULES))
def test_a_kind_key_the_rule_never_accepts_is_refused(name):
    rule = RULES[name]()
    for kind in sorted(ops.KINDS - set(rule.kinds)):
        key = KEY[kind]
        if rule.kinds & ({ops.KIND_OF[key]} | ops.pairwise.STANDS_FOR.get(ops.KIND_OF[key], set())):
            continue  # torch.pow keys "pow" and "tensor_pow" (NOTE: [Elementwise functions of two inputs])
        with pytest.raises(ValueError, match="would never run"):
            xattr.rules(lambda t: t, {key: rule})


def test_every_parsed_function_keys_its_kind():
    block = R.Block()
    for func in ops.PARSERS:
        kind = ops.KIND_OF[func]
        table = rule_table.Table({func: block}, None)
        assert set(table.by_kind) == {kind} | ops.pairwise.STANDS_FOR.get(kind, set()), func
        assert table.by_kind[kind] == (func, block)
    assert {k for f in ops.KIND_OF for k in rule_table.Table({f: block}, None).by_kind} == set(ops.KINDS)


def test_docs_kinds_table_lists_every_kind():
    text = (Path(__file__).parent.parent / "docs" / "rules.md").read_text()
    table = text.split("| kind | calls |", 1)[1].split("\n\n", 1)[0]
    listed = {k for row in table.splitlines()[2:] for k in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert listed == set(ops.KINDS), f"missing from docs/rules.md: {sorted(set(ops.KINDS) - listed)}; " \
                                     f"not kinds: {sorted(listed - set(ops.KINDS))}"


def test_docs_rule_kinds_table_matches_each_rules_kinds():
    text = (Path(__file__).parent.parent / "docs" / "rules.md").read_text()
    table = text.split("| rule | kinds | at those kinds |", 1)[1].split("\n\n", 1)[0]
    documented = {}
    for row in table.splitlines()[2:]:
        names, kinds = row.split("|")[1:3]
        listed = set(ops.KINDS) if "every kind" in kinds else set()
        for token in re.findall(r"`(\w+)`", kinds):
            listed |= set(ops.ELEMENTWISE) if token == "ELEMENTWISE" else {token}
        for rule in re.findall(r"`(\w+)\(", names):
            documented[rule] = listed
    shipped = {type(make()).__name__: make().kinds for make in RULES.values()}
    assert documented == {k: set(v) for k, v in shipped.items()}
