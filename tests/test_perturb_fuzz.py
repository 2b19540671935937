"""A configuration fuzzer for the perturbation engine against brute force.

Hypothesis draws a configuration (1-3 input tensors as a tuple ``argnums`` or a dict argument;
float64 / float32 / int64 / bool inputs; feature masks: none, per tensor, ids shared across
tensors, per example ``(B, ...)`` or broadcast, ids with gaps, a single feature; baselines:
numbers, broadcast tensors, per-example tensors, a mixture per tensor, given when the method is
built or on the call; pass-through arguments: a per-example tensor, a shared ``(1, d)`` tensor, a
Python number; targets: an int, one per example, ``xattr.outputs``; aggregate models returning
one number per batch; ``chunk_size`` / ``memory_budget`` forcing many calls; occlusion windows
and strides of every kind; batches of 1-4), and the methods must equal references written as
explicit loops: one model call per perturbed copy, every copy built element by element from
Python lists. Each method is called three times (the third call of a signature takes the
prepared path of feature ablation and occlusion: docs/perturbation.md, Repeated calls), once
more with the drawn ``chunk_size`` / ``memory_budget``, and must leave its inputs unchanged.
"""

from __future__ import annotations

import itertools
import math

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr._src.ablation import _permutations

SHAPES = [(3,), (5,), (2, 3), (3, 4), (2, 2, 3)]
DTYPES = [torch.float64, torch.float32, torch.int64, torch.bool]
KEYS = "abc"


# ----------------------------------------------------------------------------- the model


class Model:
    """A fixed nonlinear function of every input (as float64) and of the pass-through arguments;
    each output row depends on its own input row only. ``kind``: "rows" (B, 3) outputs, or
    "aggregate" one number per batch. ``out32``: outputs rounded to float32."""

    def __init__(self, shapes, layout, extras, kind, out32, seed, first=False):
        g = torch.Generator().manual_seed(seed)
        self.w = [torch.randn(math.prod(s), 3, generator=g, dtype=torch.float64) / math.prod(s) ** 0.5 for s in shapes]
        self.we = torch.randn(2, 3, generator=g, dtype=torch.float64)
        self.n, self.layout, self.extras, self.kind, self.out32 = len(shapes), layout, extras, kind, out32
        self.first = first  # the pass-through arguments come before the attributed ones

    def __call__(self, *args):
        args = list(args)
        if self.first:
            args = args[len(self.extras) :] + args[: len(self.extras)]
        if self.layout == "dict":
            d = args.pop(0)
            xs = [d[k] for k in KEYS[: self.n]]
        else:
            xs, args = args[: self.n], args[self.n :]
        z = sum((x.reshape(x.shape[0], -1).double()[:, :, None] * w).sum(1) for x, w in zip(xs, self.w))
        for kind, e in zip(self.extras, args):
            z = z + (e[:, :, None] * self.we[None]).sum(1) if kind != "number" else z + e
        out = torch.tanh(z) + 0.5 * torch.tanh(z[:, [1, 2, 0]] * z)  # interactions between features
        if self.kind != "rows":
            out = (out * torch.tensor([1.0, -0.5, 0.25], dtype=out.dtype)).sum()
        out = out.float() if self.out32 else out
        return out.item() if self.kind == "aggregate_number" else out


# ----------------------------------------------------------------------------- configurations


def _values(shape, dtype, g):
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) < 0.5
    if dtype == torch.int64:
        return torch.randint(0, 4, shape, generator=g)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


@st.composite
def configs(draw, *, batches=(1, 4), max_features=None, aggregate=True, large=False):
    n = draw(st.integers(1, 3))
    batch = draw(st.integers(*batches))
    large = large and draw(st.booleans())
    small = max_features is not None
    shapes = [draw(st.sampled_from(SHAPES[:3] if small else SHAPES)) for _ in range(n)]
    dtypes = [draw(st.sampled_from(DTYPES)) for _ in range(n)]
    layout = draw(st.sampled_from(["tuple", "dict"])) if n > 1 else draw(st.sampled_from(["tuple", "single"]))
    extras = draw(st.lists(st.sampled_from(["per_example", "shared", "number"]), max_size=3))
    kind = draw(st.sampled_from(["rows", "aggregate", "aggregate_number"])) if aggregate else "rows"
    target = None if kind != "rows" else draw(st.sampled_from(["int", "per_example", "outputs", "outputs_per_example"]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    xs = [_values((batch,) + s, dt, g) for s, dt in zip(shapes, dtypes)]
    if large:  # float copies of more than WHERE_ELEMENTS elements take another kernel on CPU
        shapes, dtypes, n = [(24, 64)] + shapes[1:], [draw(st.sampled_from(DTYPES[:2]))] + dtypes[1:], n
        xs[0] = _values((batch, 24, 64), dtypes[0], g)
    # non-contiguous inputs: every other element of a wider tensor
    xs = [x if not draw(st.booleans()) else torch.stack([x, x], -1)[..., 0] for x in xs]
    ex = []
    for e in extras:
        ex.append(3 * torch.rand((batch if e == "per_example" else 1, 2), generator=g, dtype=torch.float64) if e != "number" else 0.25)
    # feature masks
    mask_kind = draw(st.sampled_from(["none", "shared_ids", "per_tensor", "single"]))
    if (small and mask_kind == "none" and sum(math.prod(s) for s in shapes) > max_features) or (large and mask_kind == "none"):
        mask_kind = "shared_ids"
    masks = None
    if mask_kind != "none":
        most = (max_features or 6) // (n if mask_kind == "per_tensor" else 1)
        n_ids = 1 if mask_kind == "single" else draw(st.integers(1, max(most, 1)))
        gaps = draw(st.booleans())
        pool = [3 * i + (i % 2) for i in range(n_ids)] if gaps else list(range(n_ids))  # e.g. {0, 4, 6, 10}
        # an aggregate model explains the batch as one example: shared masks only
        per_example = kind == "rows" and draw(st.booleans())
        masks = []
        for i, s in enumerate(shapes):
            ids = pool if mask_kind != "per_tensor" else [v + (pool[-1] + 1) * i for v in pool]
            lead = (batch,) if per_example else draw(st.sampled_from([(1,), ()]))
            mshape = tuple(d if draw(st.booleans()) else 1 for d in s) if draw(st.booleans()) else s
            if not lead and draw(st.booleans()):  # fewer dims: the trailing ones
                mshape = mshape[draw(st.integers(0, len(s))) :]
            pick = torch.randint(0, len(ids), lead + mshape, generator=g)
            masks.append(torch.tensor(ids)[pick].to(draw(st.sampled_from([torch.int64, torch.int32, torch.uint8]))))
    base = [draw(_baseline(batch, s, dt, seed + i)) for i, (s, dt) in enumerate(zip(shapes, dtypes))]
    if draw(st.booleans()):  # one number for every tensor
        base = draw(st.sampled_from([0, 1])) if all(dt != torch.bool for dt in dtypes) else False
    return dict(n=n, batch=batch, shapes=shapes, dtypes=dtypes, layout=layout, extras=extras, kind=kind, target=target,
                out32=draw(st.booleans()), first=bool(extras) and draw(st.booleans()), seed=seed, xs=xs, ex=ex, masks=masks, base=base,
                at_call=draw(st.booleans()), chunk=draw(_chunking(batch)))  # fmt: skip


@st.composite
def _baseline(draw, batch, shape, dtype, seed):
    kind = draw(st.sampled_from(["number", "example_shape", "shared", "per_example", "expanded", "trailing", "0-d"]))
    if kind == "number":
        return {torch.bool: True, torch.int64: 2}.get(dtype, -0.5)
    g = torch.Generator().manual_seed(seed)
    if kind == "trailing":  # fewer dims, some of size 1
        shape = tuple(d if draw(st.booleans()) else 1 for d in shape[draw(st.integers(0, len(shape))) :])
    lead = {"example_shape": (), "shared": (1,), "per_example": (batch,), "expanded": (1,), "trailing": (), "0-d": ()}[kind]
    b = _values(lead + (shape if kind != "0-d" else ()), dtype, g)
    return b.expand((batch,) + shape) if kind == "expanded" else b  # a per-example baseline with stride 0


@st.composite
def _chunking(draw, batch):
    kind = draw(st.sampled_from(["chunk_size", "memory_budget"]))
    if kind == "chunk_size":
        return {"chunk_size": draw(st.sampled_from([1, batch, 2 * batch + 1, 7]))}
    return {"memory_budget": draw(st.sampled_from([1, 64, 300]))}


def build(c):
    """(model function, args, argnums, how to rebuild the args from the attributed tensors)."""
    model = Model(c["shapes"], c["layout"], c["extras"], c["kind"], c["out32"], c["seed"], c["first"])
    t = c["target"]
    if t == "int":
        f = xattr.target(model, 2)
    elif t == "per_example":
        f = xattr.target(model, torch.arange(c["batch"]) % 3)
    elif t == "outputs":
        f = xattr.target(model, xattr.outputs([2, 0]))
    elif t == "outputs_per_example":
        f = xattr.target(model, xattr.outputs(torch.tensor([[0, 1], [2, 2], [1, 0], [2, 1]])[: c["batch"]]))
    else:
        f = model
    xs, ex, k = c["xs"], tuple(c["ex"]), len(c["ex"]) if c["first"] else 0
    order = (lambda inputs: ex + inputs) if c["first"] else (lambda inputs: inputs + ex)  # noqa: E731
    if c["layout"] == "dict":
        rebuild = lambda leaves: order(({key: x for key, x in zip(KEYS, leaves)},))  # noqa: E731
        argnums = k
    else:
        rebuild = lambda leaves: order(tuple(leaves))  # noqa: E731
        argnums = k if c["layout"] == "single" else tuple(range(k, k + c["n"]))
    args = rebuild(xs)
    return f, args, argnums, rebuild


def tree(c, items):
    """A per-tensor list as the tree the method takes (the inputs' structure)."""
    if items is None or not isinstance(items, list):
        return items
    if c["layout"] == "dict":
        return {k: v for k, v in zip(KEYS, items)}
    return items[0] if c["layout"] == "single" else tuple(items)


def leaves_of(c, attr):
    if c["layout"] == "dict":
        return [attr[k] for k in KEYS[: c["n"]]]
    return [attr] if c["layout"] == "single" else list(attr)


# ----------------------------------------------------------------------------- references


def call(f, args):
    with torch.no_grad():
        return torch.as_tensor(f(*args), dtype=torch.float64)


def flat(t, shape):
    """Broadcast (the documented reading of masks and baselines) and flatten to a Python list."""
    return torch.broadcast_to(torch.as_tensor(t), shape).reshape(-1).tolist()


def put(x, lists):
    return torch.tensor(lists, dtype=x.dtype).reshape(x.shape)


def spread(c, drops, masks_flat, fx):
    """Per-feature drops {id: (B[, K]) or ()} -> attributions like each input, element by element."""
    out = []
    for x, m in zip(c["xs"], masks_flat):
        rows = 1 if fx.ndim == 0 else x.shape[0]
        per = math.prod(x.shape[1:])
        vals = []
        for b in range(rows):
            vals.append([(drops[m[b * per + k]] if fx.ndim == 0 else drops[m[b * per + k]][b]).tolist() for k in range(per)])
        t = torch.tensor(vals, dtype=torch.float64)  # (rows, per[, K])
        t = t.reshape((rows,) + x.shape[1:] + t.shape[2:])
        out.append(t.movedim(-1, 1) if t.ndim > x.ndim else t)
    return out


def masks_flat(c):
    if c["masks"] is None:
        ids, start = [], 0
        for x in c["xs"]:
            per = math.prod(x.shape[1:])
            ids.append([start + k for _ in range(x.shape[0]) for k in range(per)])
            start += per
        return ids
    return [flat(m, x.shape) for m, x in zip(c["masks"], c["xs"])]


def baselines_flat(c):
    base = c["base"] if isinstance(c["base"], list) else [c["base"]] * c["n"]
    return [flat(b, x.shape) for b, x in zip(base, c["xs"])]


def replaced(c, rebuild, keep):
    """args with element k of tensor i replaced by ``keep(i, k)`` (None keeps the input's)."""
    leaves = []
    for i, x in enumerate(c["xs"]):
        xf = x.reshape(-1).tolist()
        leaves.append(put(x, [xf[k] if keep(i, k) is None else keep(i, k) for k in range(len(xf))]))
    return rebuild(leaves)


def ablation_ref(c, f, rebuild):
    ms, bs = masks_flat(c), baselines_flat(c)
    fx = call(f, rebuild(c["xs"]))
    drops = {}
    for j in sorted({v for m in ms for v in m}):
        copy = replaced(c, rebuild, lambda i, k: bs[i][k] if ms[i][k] == j else None)
        drops[j] = fx - call(f, copy)
    return spread(c, drops, ms, fx)


def permutation_ref(c, f, rebuild, seed):
    ms = masks_flat(c)
    fx = call(f, rebuild(c["xs"]))
    perms = _permutations(max(v for m in ms for v in m) + 1, c["batch"], seed, "cpu").tolist()
    drops = {}
    for j in sorted({v for m in ms for v in m}):
        xs = [x.reshape(-1).tolist() for x in c["xs"]]
        per = [math.prod(x.shape[1:]) for x in c["xs"]]
        src = lambda i, k: xs[i][perms[j][k // per[i]] * per[i] + k % per[i]]  # noqa: E731  from example pi_j(b)
        drops[j] = fx - call(f, replaced(c, rebuild, lambda i, k: src(i, k) if ms[i][k] == j else None))
    return spread(c, drops, ms, fx)


def shapley_ref(c, f, rebuild):
    ms, bs = masks_flat(c), baselines_flat(c)
    ids = sorted({v for m in ms for v in m})
    fx = call(f, rebuild(c["xs"]))
    v = {}
    for r in range(len(ids) + 1):
        for s in itertools.combinations(ids, r):
            v[s] = call(f, replaced(c, rebuild, lambda i, k: None if ms[i][k] in s else bs[i][k]))
    n, phi = len(ids), {}
    for j in ids:
        others = [i for i in ids if i != j]
        total = torch.zeros_like(fx)
        for r in range(n):
            w = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
            for s in itertools.combinations(others, r):
                total = total + w * (v[tuple(sorted(s + (j,)))] - v[s])
        phi[j] = total
    return spread(c, phi, ms, fx)


def occlusion_ref(c, f, rebuild, windows, strides):
    bs = baselines_flat(c)
    fx = call(f, rebuild(c["xs"]))
    out = []
    for i, (x, w, s) in enumerate(zip(c["xs"], windows, strides)):
        shape = x.shape[1:]
        total, count = {}, {}
        starts = [list(range(0, st * math.ceil((n - wd) / st) + 1, st)) for n, wd, st in zip(shape, w, s)]
        for corner in itertools.product(*starts):
            inside = lambda idx: all(c0 <= p < c0 + wd for p, c0, wd in zip(idx, corner, w))  # noqa: E731
            elems = [idx for idx in itertools.product(*map(range, shape)) if inside(idx)]
            flat_in = {sum(p * math.prod(shape[d + 1 :]) for d, p in enumerate(idx)) for idx in elems}
            per = math.prod(shape)
            copy = replaced(c, rebuild, lambda li, k: bs[li][k] if li == i and k % per in flat_in else None)
            drop = fx - call(f, copy)
            for k in flat_in:
                total[k] = total.get(k, 0) + drop
                count[k] = count.get(k, 0) + 1
        rows = [total[k] / count[k] for k in range(math.prod(shape))]
        t = torch.stack(rows, -1)  # ([B, [K,]] per)
        out.append(t.reshape(t.shape[:-1] + shape) if fx.ndim else t.reshape((1,) + shape))
    return out


# ----------------------------------------------------------------------------- checks


def close(c, got, want):
    tol = dict(rtol=1e-5, atol=1e-5) if c["out32"] or torch.float32 in c["dtypes"] else dict(rtol=1e-9, atol=1e-10)
    out = torch.float64 if c["kind"] == "aggregate_number" or not c["out32"] else torch.float32
    for g, w, x in zip(leaves_of(c, got), want, c["xs"]):
        assert g.shape == w.shape, (g.shape, w.shape)
        # the inputs' float dtype (the default one for bool and int inputs) widened to the outputs'
        assert g.dtype == torch.promote_types(x.dtype if x.is_floating_point() else torch.float32, out), (g.dtype, x.dtype)
        torch.testing.assert_close(g.double(), w, **tol)


def run(c, make, want, args):
    """Three calls of one function (the third one prepared), the drawn chunking, inputs untouched."""
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in _flat_args(args)]
    fn = make({})
    results = [fn(*args) for _ in range(3)] + [make(c["chunk"])(*args)]
    for r in results:
        close(c, r, want)
    for r in results[1:]:  # chunking changes nothing beyond the model's rounding
        for a, b in zip(leaves_of(c, r), leaves_of(c, results[0])):
            tol = 1e-6 if a.dtype == torch.float32 else 1e-12
            torch.testing.assert_close(a, b, rtol=tol, atol=tol / 10)
    for a, b in zip(_flat_args(args), before):
        assert (torch.equal(a, b) and a.dtype == b.dtype) if isinstance(a, torch.Tensor) else a == b, "the call changed its inputs"


def _flat_args(args):
    return [v for a in args for v in (a.values() if isinstance(a, dict) else [a])]


def _perturb_kwargs(c, chunk, with_mask=True):
    kw = dict(chunk)
    if with_mask:
        kw["feature_mask"] = tree(c, c["masks"])
    if "base" in c:
        kw["baselines"] = tree(c, c["base"])
    return kw


@given(configs(large=True))
def test_feature_ablation_equals_the_loop(c):
    f, args, argnums, rebuild = build(c)
    want = ablation_ref(c, f, rebuild)
    if c["at_call"]:
        kw = _perturb_kwargs(c, {})
        with_kw = lambda method: lambda *a: method(*a, **kw)  # noqa: E731  one method, called with keywords
        make = lambda chunk: with_kw(xattr.feature_ablation(f, argnums=argnums, **chunk))  # noqa: E731
    else:
        make = lambda chunk: xattr.feature_ablation(f, argnums=argnums, **_perturb_kwargs(c, chunk))  # noqa: E731
    run(c, make, want, args)


@given(configs(max_features=5))
def test_shapley_values_equal_the_definition(c):
    f, args, argnums, rebuild = build(c)
    want = shapley_ref(c, f, rebuild)
    make = lambda chunk: xattr.shapley_values(f, argnums=argnums, **_perturb_kwargs(c, chunk))  # noqa: E731
    run(c, make, want, args)


@given(configs(batches=(2, 4), large=True), st.integers(0, 100))
def test_feature_permutation_equals_the_loop(c, seed):
    f, args, argnums, rebuild = build(c)
    del c["base"]
    want = permutation_ref(c, f, rebuild, seed)
    make = lambda chunk: xattr.feature_permutation(f, argnums=argnums, generator=seed, **_perturb_kwargs(c, chunk))  # noqa: E731
    run(c, make, want, args)
    again = [xattr.feature_permutation(f, argnums=argnums, generator=torch.Generator().manual_seed(seed), **_perturb_kwargs(c, {}))(*args)
             for _ in range(2)]  # fmt: skip
    for a, b in zip(leaves_of(c, again[0]), leaves_of(c, again[1])):
        assert torch.equal(a, b)  # generators seeded alike: the same permutations


@st.composite
def windows(draw, shapes):
    ws, ss = [], []
    for s in shapes:
        w = tuple(draw(st.integers(1 if d < 8 else d // 2, d)) for d in s)  # few windows over a large input
        ws.append(w)
        ss.append(tuple(draw(st.integers(1 if wd < 8 else wd // 2, wd)) for wd in w))
    return ws, ss


@given(configs(large=True), st.data())
def test_occlusion_equals_the_loop(c, data):
    f, args, argnums, rebuild = build(c)
    ws, ss = data.draw(windows(c["shapes"]))
    if data.draw(st.booleans()) and all(len(set(s)) == 1 and s[0] == 1 for s in ss):
        strides = 1
    else:  # an input whose strides are all one number may give that int (Captum's per-input reading)
        each = [s[0] if len(set(s)) == 1 and data.draw(st.booleans()) else s for s in ss]
        strides = ss[0] if c["n"] == 1 else tuple(each)
    want = occlusion_ref(c, f, rebuild, ws, [s for s in ss])
    window = ws[0] if c["n"] == 1 else (tree(c, ws) if data.draw(st.booleans()) else tuple(ws))
    kw = dict(sliding_window_shapes=window, strides=strides, argnums=argnums)
    make = lambda chunk: xattr.occlusion(f, **kw, **_perturb_kwargs(c, chunk, with_mask=False))  # noqa: E731
    run(c, make, want, args)


@given(st.integers(1, 4), st.sampled_from(["int", "per_example", "outputs", "aggregate"]), st.integers(0, 3), st.integers(0, 2**16))
def test_layer_feature_ablation_equals_the_loop(batch, target, mask_kind, seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double().eval()
    x, e = torch.randn(batch, 4, dtype=torch.float64), torch.rand(batch, 1, dtype=torch.float64)
    model = lambda x, e: net(x) * (1 + e)  # noqa: E731  a per-example pass-through argument
    labels = torch.arange(batch) % 3
    select = {  # the target, by hand
        "int": lambda out: out[:, 1],
        "per_example": lambda out: out[torch.arange(batch), labels],
        "outputs": lambda out: out[:, [2, 1]],
        "aggregate": lambda out: out[:, 1].sum(),
    }[target]
    if target == "aggregate":
        f = lambda x, e: select(model(x, e))  # noqa: E731
    else:
        f = xattr.target(model, {"int": 1, "per_example": labels, "outputs": xattr.outputs([2, 1])}[target])
    lead = (batch,) if mask_kind == 3 and target != "aggregate" else (1,)
    mask = [None, torch.tensor([[0, 5, 5, 9, 0]]), torch.zeros(1, 5, dtype=torch.long), torch.randint(0, 3, lead + (5,))][mask_kind]
    base = [0.0, torch.randn(1, 5, dtype=torch.float64), torch.randn(batch, 5, dtype=torch.float64)][seed % 3]
    with torch.no_grad():
        h = torch.tanh(net[0](x))
        head = lambda hh: select(net[2](hh) * (1 + e))  # noqa: E731  the model after the layer
        fx = head(h)
        m = torch.broadcast_to(torch.arange(5) if mask is None else mask, h.shape).tolist()
        bl, hl = torch.broadcast_to(torch.as_tensor(base), h.shape).tolist(), h.tolist()
        want = torch.zeros((1 if fx.ndim == 0 else batch,) + fx.shape[1:] + (5,), dtype=torch.float64)
        for j in sorted({v for row in m for v in row}):
            copy = torch.tensor([[bl[b][u] if m[b][u] == j else hl[b][u] for u in range(5)] for b in range(batch)], dtype=torch.float64)
            drop = fx - head(copy)
            for b in range(want.shape[0]):
                for u in range(5):
                    if m[b][u] == j:
                        want[b, ..., u] = drop if fx.ndim == 0 else drop[b]
    split = xattr.at_layer(f, net[1])
    for kw in ({}, {"chunk_size": 1}, {"memory_budget": 1}):
        got = xattr.layer_feature_ablation(split, layer_mask=mask, layer_baselines=base, **kw)(x, e)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_a_python_float_output_is_differenced_in_double_precision():
    # A loss's .item() is a double: it was rounded to float32 (the inputs' float dtype, here none)
    # before the differences were taken, 8% off for these drops of 2e-4 on a loss near 1000.
    ids = torch.tensor([[0, 3, 1], [2, 2, 1]])
    w = torch.tensor([1e-4, 2e-4, 3e-4], dtype=torch.float64)
    loss = lambda t: float(1000.0 + (t.double() * w).sum())  # noqa: E731  one number per batch
    drops = (ids * w).sum(0, keepdim=True)
    for method in (xattr.feature_ablation, xattr.shapley_values, lambda g: xattr.occlusion(g, sliding_window_shapes=(1,))):
        torch.testing.assert_close(method(loss)(ids, baselines=0), drops, rtol=1e-9, atol=1e-12)
