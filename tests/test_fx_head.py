"""The fx-traced head (NOTE: [Traced heads]) equals the hook head exactly, or is not used."""

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr._src import fx_head
from xattr._src.layers import _Head

torch.manual_seed(0)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)


class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.layer, self.b = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        u = torch.tanh(self.a(x))
        return self.b(self.layer(u) + u)


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.layer, self.b = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        u = self.a(x)
        v = F.relu(self.layer(u)) + 1.0
        v.mul_(2.0)
        u.add_(1.0)  # written after the layer, read below
        w = self.layer(v)  # a second call of the layer (call_index)
        return self.b(w + u)


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding, self.lin, self.out = nn.Embedding(10, 5), nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, ids, mask):
        e = self.lin(self.embedding(ids))
        e = e * mask.unsqueeze(-1)
        return self.out(e.sum(1) / mask.sum(1, keepdim=True))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.layer, self.b = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        u = self.a(x)
        if u.sum() > 0:  # data-dependent Python control flow: not traceable
            u = -u
        return self.b(self.layer(u))


def _double(m):
    return m.double().eval()


X = torch.randn(5, 4, dtype=torch.float64)
CASES = {
    "cnn": (lambda: _double(CNN()), lambda m: m.net[2], (torch.randn(3, 1, 6, 6, dtype=torch.float64),), {}),
    "cnn-input": (lambda: _double(CNN()), lambda m: m.net[2], (torch.randn(3, 1, 6, 6, dtype=torch.float64),), {"inputs": True}),
    "skip": (lambda: _double(Skip()), lambda m: m.layer, (X,), {}),
    "inplace-0": (lambda: _double(InPlace()), lambda m: m.layer, (X,), {"call_index": 0}),
    "inplace-1": (lambda: _double(InPlace()), lambda m: m.layer, (X,), {"call_index": 1}),
    "tokens": (lambda: _double(Tokens()), lambda m: m.embedding,
               (torch.randint(0, 10, (4, 7)), (torch.rand(4, 7) > 0.3).double()), {}),
}  # fmt: skip


def _hook_head(split, h, *args):
    """The hook head alone (the traced one disabled)."""
    saved = fx_head.traced_head
    try:
        import xattr._src.layers as L

        L.traced_head = lambda *a: None
        return _Head(split)(h, *args)
    finally:
        L.traced_head = saved


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("targeted", [False, True])
def test_traced_head_equals_hook_head(name, targeted):
    make, layer_of, args, kw = CASES[name]
    model = make()
    f = xattr.target(model, 1) if targeted else model
    split = xattr.at_layer(f, layer_of(model), **kw)
    h = split.act(*args)
    h = h + 0.1 * torch.randn_like(h)
    h_before = h.clone()
    assert fx_head.traced_head(split, h, args) is not None
    got, want = split.head(h, *args), _hook_head(split, h, *args)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.equal(h, h_before)  # nothing written into the caller's h
    g_got = torch.func.grad(lambda h: split.head(h, *args).sum())(h)
    g_want = torch.func.grad(lambda h: _hook_head(split, h, *args).sum())(h)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=0)
    hs = torch.stack([h, 2 * h])
    v_got = torch.func.vmap(lambda h: split.head(h, *args))(hs)
    v_want = torch.stack([_hook_head(split, hi, *args) for hi in hs])
    torch.testing.assert_close(v_got, v_want, rtol=0, atol=0)


def test_skip_connection_keeps_the_part_still_used_and_drops_the_rest():
    model = _double(CNN())
    split = xattr.at_layer(model, model.net[2])
    head = fx_head.traced_head(split, torch.zeros(1), (torch.zeros(1, 1, 6, 6, dtype=torch.float64),))
    called = [n.target for n in head.gm.graph.nodes if n.op == "call_module"]
    assert called == ["net.3", "net.4", "net.5", "net.6"]
    model = _double(Skip())
    split = xattr.at_layer(model, model.layer)
    head = fx_head.traced_head(split, torch.zeros(1), (X,))
    assert "a" in [n.target for n in head.gm.graph.nodes if n.op == "call_module"]


def test_no_hooks_or_changes_on_the_model():
    model = _double(Skip())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    split = xattr.at_layer(model, model.layer)
    split.head(split.act(X), X)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert split.model is model


@pytest.mark.parametrize("why", ["untraceable", "train", "hooked", "non-tensor", "many", "all", "function"])
def test_falls_back_where_it_must(why):
    model = _double(Branchy() if why == "untraceable" else Skip())
    f, layer, kw, args = model, model.layer, {}, (X,)
    if why == "train":
        model.train()
    if why == "many":
        layer = [model.layer, model.b]
    if why == "all":
        kw = {"call_index": "all"}
    if why == "function":
        f = lambda x: model(x)  # noqa: E731
    handle = model.a.register_forward_hook(lambda *a: None) if why == "hooked" else None
    split = xattr.at_layer(f, layer, **kw)
    h = split.act(*args)
    if why == "non-tensor":
        model.forward = lambda x, scale=1.0: Skip.forward(model, x) * scale
        args = (X, 2.0)
    assert fx_head.traced_head(split, h, args) is None
    out = split.head(h, *args)  # the hook head still answers
    assert out.shape[0] == X.shape[0]
    if handle is not None:
        handle.remove()


class Scaled(nn.Module):
    """A plain attribute read by forward: fx bakes its value into the trace."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.a, self.layer, self.b = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 3)
        self.temperature, self.options = 1.0, {"relu": True}

    def forward(self, x):
        h = self.layer(self.a(x))
        h = torch.relu(h) if self.options["relu"] else torch.tanh(h)
        return self.b(h) / self.temperature


def test_a_changed_plain_attribute_is_a_new_trace():
    model = _double(Scaled())
    split = xattr.at_layer(model, model.layer)
    lfa = xattr.layer_feature_ablation(xattr.at_layer(xattr.target(model, 1), model.layer))

    def check():
        with torch.no_grad():
            torch.testing.assert_close(split.head(split.act(X), X), model(X), rtol=0, atol=0)
        fresh = xattr.layer_feature_ablation(xattr.at_layer(xattr.target(model, 1), model.layer))(X)
        torch.testing.assert_close(lfa(X), fresh, rtol=0, atol=0)

    check()
    traced = fx_head.traced_head(split, split.act(X), (X,))
    assert traced is not None and fx_head.traced_head(split, split.act(X), (X,)) is traced  # cached while nothing changes
    model.temperature = 0.25
    check()
    model.options["relu"] = False  # a container changed in place
    check()
    assert fx_head.traced_head(split, split.act(X), (X,)) is not traced


def test_layer_ig_same_numbers_both_heads():
    model = _double(CNN())
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    split = xattr.at_layer(xattr.target(model, torch.tensor([0, 2, 1])), model.net[2])
    got = xattr.layer_integrated_gradients(split, n_steps=8)(x)
    import xattr._src.layers as L

    saved = L.traced_head
    try:
        L.traced_head = lambda *a: None
        want = xattr.layer_integrated_gradients(split, n_steps=8)(x)
    finally:
        L.traced_head = saved
    torch.testing.assert_close(got, want, rtol=0, atol=0)


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.layer = nn.Linear(4, 3), nn.Linear(3, 3)

    def forward(self, x):
        return self.layer(self.a(x)) * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)


def test_constants_made_in_forward_stay_off_the_model_and_tracing_under_vmap():
    model = _double(Constant())
    names = set(model.__dict__)
    split = xattr.at_layer(model, model.layer)
    h = split.act(X)
    hs = torch.stack([h, -h])
    got = torch.func.vmap(lambda h: split.head(h, X))(hs)  # the first call, and the trace, inside vmap
    assert set(model.__dict__) == names
    assert fx_head.traced_head(split, h, (X,)) is not None
    torch.testing.assert_close(got, torch.stack([_hook_head(split, hi, X) for hi in hs]), rtol=0, atol=0)


SCALE = 1.0  # read by GlobalScaled.forward


class Configured(nn.Module):
    """Reads a config object's attribute (Hugging Face style) and a module-level global."""

    def __init__(self):
        super().__init__()
        self.layer, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.config = types.SimpleNamespace(temperature=1.0, inner=types.SimpleNamespace(flip=False))

    def forward(self, x):
        y = self.b(torch.tanh(self.layer(x))) / self.config.temperature * SCALE
        return -y if self.config.inner.flip else y


def _head_checker(model):
    """(split at model.layer, check): check() asserts the head reproduces the model exactly."""
    split = xattr.at_layer(model, model.layer)

    def check():
        with torch.no_grad():
            torch.testing.assert_close(split.head(split.act(X), X), model(X), rtol=0, atol=0)

    return split, check


def test_config_objects_changed_in_place_and_globals_are_a_new_trace():
    global SCALE
    model = _double(Configured())
    split, check = _head_checker(model)
    try:
        check()
        traced = fx_head.traced_head(split, split.act(X), (X,))
        assert traced is not None
        model.config.temperature = 4.0  # the same object, changed in place
        check()
        model.config.inner.flip = True  # one level further down
        check()
        SCALE = 3.0
        check()
        assert fx_head.traced_head(split, split.act(X), (X,)) is not traced
    finally:
        SCALE = 1.0


class Storing(nn.Module):
    """A forward that keeps its features on the module (a feature-extraction habit)."""

    def __init__(self):
        super().__init__()
        self.layer, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.features = None

    def forward(self, x):
        h = torch.tanh(self.layer(x))
        self.features = h
        return self.b(h)


def test_a_forward_writing_its_attributes_is_not_traced_and_keeps_no_proxy(monkeypatch):
    model = _double(Storing())
    model(X)
    builds = []
    real = fx_head._build
    monkeypatch.setattr(fx_head, "_build", lambda *a: builds.append(1) or real(*a))
    lig = xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(model, 1), model.layer), n_steps=4)
    got = [lig(X) for _ in range(3)]
    assert isinstance(model.features, torch.Tensor)  # not an fx Proxy left by the trace
    assert len(builds) == 1  # tried once, then the hook head for good
    split = xattr.at_layer(xattr.target(model, 1), model.layer)
    monkeypatch.setattr("xattr._src.layers.traced_head", lambda *a: None)  # the hook head only
    hook = xattr.layer_integrated_gradients(split, n_steps=4)(X)
    for g in got:
        torch.testing.assert_close(g, hook, rtol=0, atol=0)


OFFSET = 0.0  # read by _shifted, a helper the forward calls, and by Helped._scaled through a lambda


def _shifted(y):
    return y + OFFSET


class Helped(nn.Module):
    """Reads globals only through a module-level helper and a method of its own."""

    def __init__(self):
        super().__init__()
        self.layer, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def _scaled(self, y):
        return (lambda t: t * (1.0 + OFFSET))(y)

    def forward(self, x):
        return self._scaled(_shifted(self.b(torch.tanh(self.layer(x)))))


def test_globals_read_by_called_functions_are_a_new_trace():
    global OFFSET
    model = _double(Helped())
    split, check = _head_checker(model)
    try:
        check()
        traced = fx_head.traced_head(split, split.act(X), (X,))
        assert traced is not None
        OFFSET = 2.0
        check()
        assert fx_head.traced_head(split, split.act(X), (X,)) is not traced
    finally:
        OFFSET = 0.0


class ClassScaled(nn.Module):
    """Reads a class attribute and an attribute of an imported module (here `types`' stand-in, a
    module object made for the test)."""

    FACTOR = 1.0

    def __init__(self):
        super().__init__()
        self.layer, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.layer(x))) * self.FACTOR * _CFG.SHIFT


_CFG = types.ModuleType("xattr_test_cfg")  # an imported configuration module
_CFG.SHIFT = 1.0


def test_class_attributes_and_module_attributes_are_a_new_trace():
    model = _double(ClassScaled())
    split, check = _head_checker(model)
    try:
        check()
        traced = fx_head.traced_head(split, split.act(X), (X,))
        assert traced is not None
        ClassScaled.FACTOR = 2.0
        check()
        _CFG.SHIFT = 3.0
        check()
        assert fx_head.traced_head(split, split.act(X), (X,)) is not traced
    finally:
        ClassScaled.FACTOR, _CFG.SHIFT = 1.0, 1.0


_LAZY = types.ModuleType("xattr_test_lazy")  # a module whose __getattr__ (PEP 562) fails on other names
_LAZY.__getattr__ = lambda name: {"SHIFT": 1.0}[name]


class LazyConfigured(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.layer(x))
        return self.b(h.reshape(h.shape[0], -1)) * _LAZY.SHIFT


def test_a_module_with_its_own_getattr_is_read_without_calling_it():
    """Keying reads a module's own attributes only: its __getattr__ ran for every name the
    forward reads ('torch', 'shape', ...) and its KeyError escaped from the layer method."""
    model = _double(LazyConfigured())
    split, check = _head_checker(model)
    check()
    assert fx_head.traced_head(split, split.act(X), (X,)) is not None


@pytest.mark.parametrize("where", ["root", "submodule"])
def test_a_forward_replaced_on_the_instance_is_not_traced(where):
    """fx traces the root's class forward: a ``model.forward = ...`` (accelerate's hooks wrap
    forward so) was ignored and the head gave the class forward's numbers (off by 0.54). A
    submodule's replaced forward is what fx calls, but what it reads is not in the cache key:
    both run the hook head."""
    model = _double(Scaled())
    if where == "root":
        model.forward = lambda x: model.b(model.layer(model.a(x)) * 2.0)
    else:
        inner = model.b.forward
        model.b.forward = lambda h: inner(h) * 3.0
    split, check = _head_checker(model)
    assert fx_head.traced_head(split, split.act(X), (X,)) is None
    check()


class StopGradient(nn.Module):
    """A forward that changes a mode after the layer: fx records no mode in its graph."""

    def __init__(self, how):
        super().__init__()
        torch.manual_seed(6)
        self.how = how
        self.a, self.layer, self.b = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = self.layer(self.a(x))
        if self.how == "no_grad":
            with torch.no_grad():
                scale = h.norm(dim=1, keepdim=True)
        elif self.how == "set_grad_enabled":
            with torch.set_grad_enabled(False):
                scale = h.norm(dim=1, keepdim=True)
        elif self.how == "decorated":
            scale = _norm_without_grad(h)
        else:  # autocast
            with torch.autocast("cpu", dtype=torch.bfloat16):
                scale = (h @ h.T).diagonal()[:, None].float() ** 0.5
        return self.b(h / scale)


@torch.no_grad()
def _norm_without_grad(h):
    return h.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("how", ["no_grad", "set_grad_enabled", "decorated", "autocast"])
@pytest.mark.parametrize("first_under_no_grad", [False, True])
def test_a_forward_that_changes_the_grad_or_autocast_mode_is_not_traced(how, first_under_no_grad):
    """The traced head differentiated through a ``with torch.no_grad():`` stop-gradient (layer IG
    off by 0.34 of 0.83, Captum equal to the hook head) and ran an autocast block in float64."""
    model = _double(StopGradient(how))
    f = xattr.target(model, 1)
    split = xattr.at_layer(f, model.layer)
    h = split.act(X)
    if first_under_no_grad:  # a perturbation method traces first, under no_grad
        with torch.no_grad():
            split.head(h, X)
    assert fx_head.traced_head(split, h, (X,)) is None
    got = xattr.layer_integrated_gradients(split, n_steps=4)(X)
    want = xattr.integrated_gradients(lambda h: _hook_head(split, h, X), n_steps=4, baselines=split.act(torch.zeros_like(X)))(h)
    torch.testing.assert_close(got, want)


class Collecting(nn.Module):
    """A forward that changes, in place, a list, a dict and a set it holds."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.layer, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.seen, self.cache, self.sizes = [], {}, set()

    def forward(self, x):
        h = torch.tanh(self.layer(x))
        self.seen.append(h.shape[0])
        self.cache["h"] = h
        self.sizes.add(h.shape[0])
        return self.b(h)


def test_a_forward_changing_its_containers_in_place_is_not_traced_and_keeps_no_proxy(monkeypatch):
    """The trace left fx Proxies in the model's list and dict (``model.cache["h"]`` a Proxy)."""
    model = _double(Collecting())
    builds = []
    real = fx_head._build
    monkeypatch.setattr(fx_head, "_build", lambda *a: builds.append(1) or real(*a))
    split = xattr.at_layer(xattr.target(model, 1), model.layer)
    got = [xattr.layer_integrated_gradients(split, n_steps=4)(X) for _ in range(2)]
    assert isinstance(model.cache["h"], torch.Tensor)
    assert all(type(n) is int for n in model.seen) and all(type(n) is int for n in model.sizes)
    assert model.seen[-1] == 4 * X.shape[0]  # the hook head ran the forward on the path's rows
    assert len(builds) == 1
    monkeypatch.setattr("xattr._src.layers.traced_head", lambda *a: None)
    hook = xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(model, 1), model.layer), n_steps=4)(X)
    for g in got:
        torch.testing.assert_close(g, hook, rtol=0, atol=0)


class LastLayer(nn.Module):
    """The layer is the last call: the head returns h itself (through a view)."""

    def __init__(self):
        super().__init__()
        self.a, self.layer = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.layer(torch.tanh(self.a(x))).view(-1, 3)


class ViewThenInPlace(nn.Module):
    """An in-place op on a view of the layer's output (reshape, then relu_)."""

    def __init__(self):
        super().__init__()
        self.layer, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.layer(x)
        h.view(-1, 2, 3).relu_()
        return self.b(h)


@pytest.mark.parametrize("name, clones", [("cnn", True), ("skip", False), ("inplace-0", False), ("last", True),
                                          ("view-then-relu_", True)])
def test_h_is_cloned_only_where_the_graph_may_write_into_it_or_return_it(name, clones):
    """NOTE: [Traced heads]: the clone of h is kept where an in-place op may reach h (a
    ReLU(inplace=True) right after the layer, relu_ on a view of it) or the head returns h; else
    skipped. Either way the caller's h is never written and the numbers are the hook head's."""
    cases = {**CASES, "last": (lambda: _double(LastLayer()), lambda m: m.layer, (X,), {}),
             "view-then-relu_": (lambda: _double(ViewThenInPlace()), lambda m: m.layer, (X,), {})}
    make, layer_of, args, kw = cases[name]
    model = make()
    split = xattr.at_layer(model, layer_of(model), **kw)
    h = split.act(*args) + 0.1
    h_before = h.clone()
    traced = fx_head.traced_head(split, h, args)
    assert traced is not None and traced.clones is clones
    out = split.head(h, *args)
    torch.testing.assert_close(out, _hook_head(split, h, *args), rtol=0, atol=0)
    assert torch.equal(h, h_before)
    if name == "last":  # writing into the result leaves h alone
        out.add_(1.0)
        assert torch.equal(h, h_before)
    leaf = h.detach().requires_grad_()  # as layer IG hands the path: a leaf that requires grad
    (g,) = torch.autograd.grad(split.head(leaf, *args).sum(), leaf)
    (g_hook,) = torch.autograd.grad(_hook_head(split, leaf, *args).sum(), leaf)
    torch.testing.assert_close(g, g_hook, rtol=0, atol=0)


@pytest.mark.parametrize("name, unread", [("cnn", {0}), ("skip", set()), ("tokens", {0})])
def test_layer_ig_passes_arguments_the_traced_head_never_reads_as_empty_stand_ins(name, unread, monkeypatch):
    """NOTE: [Traced heads]: layer IG hands an argument the pruned head never reads (the model's
    input, for a head that starts at a middle layer) as an empty stand-in instead of tiling it
    with the path's steps; the attributions are those of the tiled call, bit for bit; an argument
    the head reads (a skip from the input, a mask) is tiled as before; and a head call that takes
    the hook head after all (tracing busy in another thread) gets the tensors back, tiled."""
    import xattr._src.layer_methods as LM  # noqa: PLC0415
    import xattr._src.layers as L  # noqa: PLC0415

    make, layer_of, args, kw = CASES[name]
    model = make()
    split = xattr.at_layer(xattr.target(model, 1), layer_of(model), **kw)
    traced = fx_head.traced_head(split, split.act(*args), args)
    assert traced is not None and set(traced.unread) == unread
    seen = []
    real = LM.unread_dropped
    monkeypatch.setattr(LM, "unread_dropped", lambda *a: seen.append(real(*a)) or seen[-1])
    got = xattr.layer_integrated_gradients(split, n_steps=8, chunk_size=16)(*args)
    assert [i for i, a in enumerate(seen[0]) if a.numel() == 0] == sorted(unread)
    calls = []

    def first_only(*a):  # traced for unread_dropped's question, then busy: every head call takes the hook head
        calls.append(1)
        return fx_head.traced_head(*a) if len(calls) == 1 else None

    monkeypatch.setattr(L, "traced_head", first_only)
    seen.clear()
    assert torch.equal(got, xattr.layer_integrated_gradients(split, n_steps=8, chunk_size=16)(*args))
    assert len(calls) > 2 and [i for i, a in enumerate(seen[0]) if a.numel() == 0] == sorted(unread)
    monkeypatch.setattr(L, "traced_head", fx_head.traced_head)
    monkeypatch.setattr(LM, "unread_dropped", lambda split, h, args: args)
    assert torch.equal(got, xattr.layer_integrated_gradients(split, n_steps=8, chunk_size=16)(*args))
