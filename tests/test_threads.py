"""Attribution functions called from several threads: each thread gets its sequential numbers, and
a thread's plain forward of a shared model is not touched by another thread's attribution.

The interleavings that used to go wrong are forced with events (a module that waits in one thread
until another has run), so these tests are deterministic: NOTE: [Layers of shared models in
threads] in layers.py, NOTE: [Tracing beside other threads] in fx_head.py.
"""

from __future__ import annotations

import os
import threading
import types
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.fx._symbolic_trace as fx_trace
from torch import nn

import xattr
from xattr.concepts import _cache

WAIT = 10.0  # seconds an event may take: only reached when the code under test is broken


class Gate(nn.Module):
    """Identity; the first time it runs in thread ``owner`` (with a tensor, or with an fx Proxy
    when ``on_trace``), it lets ``meanwhile`` run in another thread and waits for it."""

    def __init__(self):
        super().__init__()
        # kept on a plain object, not as the module's own lists and dicts: a forward that writes
        # its attributes, or changes their contents, is not traced (NOTE: [Traced heads])
        self.box = types.SimpleNamespace(owner=[None], on_trace=[False], meanwhile=[], result={})

    owner = property(lambda self: self.box.owner)
    on_trace = property(lambda self: self.box.on_trace)
    meanwhile = property(lambda self: self.box.meanwhile)
    result = property(lambda self: self.box.result)

    def forward(self, x):
        traced = isinstance(x, torch.fx.Proxy)
        if threading.get_ident() == self.owner[0] and traced == self.on_trace[0] and self.meanwhile:
            job = self.meanwhile.pop()
            worker = threading.Thread(target=self._run, args=(job,))
            worker.start()
            worker.join(WAIT)
        return x

    def _run(self, job):
        try:
            self.result["value"] = job()
        except Exception as err:  # noqa: BLE001 (recorded for the test to show)
            self.result["error"] = err


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), Gate(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).eval()


X = torch.rand(5, 6, generator=torch.Generator().manual_seed(1))
X2 = torch.rand(3, 6, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("method", ["gradient_x_activation", "layer_activation", "hook_head"])
def test_another_threads_forward_during_a_layer_method(method):
    model = _model()
    split = xattr.at_layer(xattr.target(model, 1), model[3])
    fn = {
        "gradient_x_activation": xattr.gradient_x_activation(split),
        "layer_activation": xattr.layer_activation(split),
        # the hook head (not the traced one) runs for call_index="all"
        "hook_head": xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(model, 1), model[3], call_index="all"),
                                                      n_steps=4),  # fmt: skip
    }[method]
    expected, plain = fn(X), model(X2)
    gate = model[2]
    gate.owner[0] = threading.get_ident()
    gate.meanwhile.append(lambda: model(X2))  # a plain forward, in another thread
    got = fn(X)
    assert not gate.meanwhile, "the gate was not reached"
    assert "error" not in gate.result, gate.result.get("error")
    assert torch.equal(gate.result["value"], plain)
    for a, b in zip(got if isinstance(got, tuple) else (got,), expected if isinstance(expected, tuple) else (expected,)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_another_threads_forward_during_a_trace():
    """The first call of a split's head traces the model with torch.fx, which patches
    nn.Module.__call__ for the whole process: another thread's forward of any model raised
    NameError ("module is not installed as a submodule")."""
    model, other = _model(), _model(3)
    plain = other(X2)
    gate = model[2]
    gate.owner[0], gate.on_trace[0] = threading.get_ident(), True
    gate.meanwhile.append(lambda: other(X2))
    split = xattr.at_layer(xattr.target(model, 1), model[3])
    got = xattr.layer_integrated_gradients(split, n_steps=4)(X)
    assert not gate.meanwhile, "the model was not traced"
    assert "error" not in gate.result, gate.result.get("error")
    assert torch.equal(gate.result["value"], plain)
    hook_head = xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(model, 1), model[3], call_index="all"), n_steps=4)
    torch.testing.assert_close(got, hook_head(X)[0])


class Meet(nn.Module):
    """Identity; while traced, the first model's waits (up to 0.5 s) for the second's trace to start,
    and the second's trace waits until the first model's call is over."""

    def __init__(self, first: bool, events: dict):
        super().__init__()
        self.first, self.events = first, events

    def forward(self, x):
        if isinstance(x, torch.fx.Proxy):
            if self.first:
                self.events["tracing"].set()
                self.events["started"].wait(0.5)  # the other trace may start now (once fixed, it waits for this one)
            else:
                self.events["started"].set()
                self.events["first_done"].wait(WAIT)
        return x


def test_two_threads_tracing_leave_nn_module_as_it_was():
    """Two traces that overlap ended out of order and left nn.Module.__getattr__ patched for good."""
    original = (nn.Module.__call__, nn.Module.__getattr__)
    models = [_model(0), _model(3)]
    expected = [xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(m, 1), m[3], call_index="all"), n_steps=4)(X)[0]
                for m in models]  # fmt: skip
    events, errors, results = {k: threading.Event() for k in ("tracing", "started", "first_done")}, [], {}
    for i, m in enumerate(models):
        m[2] = Meet(i == 0, events).eval()

    def run(i):
        try:
            results[i] = xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(models[i], 1), models[i][3]), n_steps=4)(X)
        except Exception as err:  # noqa: BLE001
            errors.append(err)
        finally:
            if i == 0:
                events["first_done"].set()

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
        threads[0].start()
        assert events["tracing"].wait(WAIT), "the first model was not traced"
        threads[1].start()
        for t in threads:
            t.join(3 * WAIT)
        assert (nn.Module.__call__, nn.Module.__getattr__) == original
        assert not errors, errors
        for i in (0, 1):
            torch.testing.assert_close(results[i], expected[i])
    finally:  # never leave a broken nn.Module behind for the rest of the suite
        nn.Module.__call__, nn.Module.__getattr__ = fx_trace._orig_module_call, fx_trace._orig_module_getattr


def test_concurrent_cache_writes_of_one_key(tmp_path, monkeypatch):
    """Two threads writing the same cache file used one temporary name: the second rename failed
    (FileNotFoundError), or renamed the other's half-written file into place."""
    path = str(tmp_path / "acts" / "c.pt")
    both_written = threading.Barrier(2, timeout=WAIT)
    save = torch.save

    def save_then_meet(obj, f):
        save(obj, f)
        both_written.wait()

    monkeypatch.setattr(_cache.torch, "save", save_then_meet)
    values = [{"v": torch.full((4,), float(i))} for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda v: _cache.save_plain(path, v), values))  # re-raises a thread's error
    assert os.listdir(os.path.dirname(path)) == ["c.pt"]
    assert any(torch.equal(_cache.load_plain(path)["v"], v["v"]) for v in values)


def _methods(model):
    f = xattr.target(model, 1)
    split = xattr.at_layer(f, model[3])
    background = torch.rand(4, 6, generator=torch.Generator().manual_seed(5))
    return {
        "saliency": xattr.saliency(f),
        "ig": xattr.integrated_gradients(f, n_steps=8, chunk_size=10),
        "smoothgrad": xattr.smoothgrad(xattr.saliency(f), stdevs=0.1, n_samples=4, generator=0, chunk_size=10),
        "gradient_shap": xattr.gradient_shap(f, baselines=background, n_samples=4, generator=0),
        "layer_ig": xattr.layer_integrated_gradients(split, n_steps=8),
        "gxa": xattr.gradient_x_activation(split),
        "conductance": xattr.conductance(split, n_steps=4),
        "neuron_ig": xattr.integrated_gradients(xattr.neuron(split, 2), n_steps=4),
        "guided": xattr.guided_backprop(f),
        "deep_lift": xattr.deep_lift(f),
        "lrp": xattr.lrp(f),
        "layer_lrp": xattr.layer_lrp(split),
        "ablation": xattr.feature_ablation(f),
        "shapley": xattr.shapley_value_sampling(f, n_samples=2, generator=0),
        "plain": model,
    }


def test_many_methods_from_four_threads_match_sequential():
    """Every method of every family, 4 threads, on one shared model and on a model of each thread."""
    shared = _model()
    own = [_model(s) for s in (4, 5)]
    fns = [(name, fn) for m in [shared, *own] for name, fn in _methods(m).items()]
    expected = [fn(X) for _, fn in fns]
    jobs = [i % len(fns) for i in range(3 * len(fns))]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: fns[i][1](X), jobs))
    for i, g in zip(jobs, got):
        torch.testing.assert_close(g, expected[i], rtol=0, atol=0, msg=lambda m, i=i: f"{fns[i][0]}: {m}")


_PAUSES: dict = {}  # thread id -> (event to set, event to wait for): one pause in reset_parameters
_EVENTS = {k: threading.Event() for k in ("a_in", "b_in", "a_drawn")}


class PausingLinear(nn.Linear):
    """nn.Linear whose reset_parameters pauses once in a thread given a pause (module-level
    events: the layer is deep-copied before it is re-initialised)."""

    def reset_parameters(self):
        pause = _PAUSES.pop(threading.get_ident(), None)
        if pause is not None:
            _EVENTS[pause[0]].set()
            _EVENTS[pause[1]].wait(0.5)  # the other check may draw now (once fixed, it waits its turn)
        super().reset_parameters()


def test_randomization_checks_in_two_threads_draw_their_own_weights():
    """reset_parameters draws from torch's global generator: a check in another thread that seeded
    it meanwhile made this check's new weights (and scores) its own."""
    torch.manual_seed(0)
    models = [nn.Sequential(PausingLinear(6, 3)).eval() for _ in range(2)]

    def check(i):
        saliency = lambda m: xattr.saliency(xattr.target(m, 0), abs=False)  # noqa: E731
        return xattr.metrics.randomization_check(models[i], saliency, X, generator=10 + i, similarity=("spearman",),
                                                 keep=True).attributions[0]  # fmt: skip

    expected = [check(0), check(1)]
    got = {}
    for event in _EVENTS.values():
        event.clear()

    def run(i, pause):
        _PAUSES[threading.get_ident()] = pause
        got[i] = check(i)

    a = threading.Thread(target=run, args=(0, ("a_in", "b_in")))
    b = threading.Thread(target=run, args=(1, ("b_in", "a_drawn")))
    a.start()
    assert _EVENTS["a_in"].wait(WAIT)
    b.start()
    a.join(WAIT)
    _EVENTS["a_drawn"].set()
    b.join(WAIT)
    for i in (0, 1):
        torch.testing.assert_close(got[i], expected[i], rtol=0, atol=0)


class HeldLinear(nn.Module):
    """A linear layer that, run in any thread but owner[0], says so and waits to be released:
    another thread's forward of the shared model, inside this module meanwhile."""

    def __init__(self, events):
        super().__init__()
        self.lin, self.events, self.owner = nn.Linear(6, 8), events, [None]

    def forward(self, x):
        x = self.lin(x)
        if self.owner[0] is not None and threading.get_ident() != self.owner[0]:
            self.events["held"].set()
            self.events["release"].wait(WAIT)
        return x


class Start(nn.Module):
    """Identity; run in thread owner[0] with a job queued, starts it in another thread and waits
    until it holds."""

    def __init__(self, events):
        super().__init__()
        self.events, self.owner, self.jobs = events, [None], []

    def forward(self, x):
        if threading.get_ident() == self.owner[0] and self.jobs:
            threading.Thread(target=self.jobs.pop()).start()
            self.events["held"].wait(WAIT)
        return x


def test_rules_by_name_ignore_another_threads_forward():
    """The rules' module stack is kept by global module hooks, which every thread's forward runs:
    another thread's plain forward of the same model, inside module "0" meanwhile, made the
    ops of later modules take module "0"'s rule."""
    events = {"held": threading.Event(), "release": threading.Event()}
    torch.manual_seed(0)
    model = nn.Sequential(HeldLinear(events), nn.ReLU(), Start(events), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(1))
    fn = xattr.lrp(xattr.target(model, 0), composite={"0": xattr.rule.Gamma(1.0)})
    expected = fn(x)
    me = threading.get_ident()
    model[0].owner[0] = model[2].owner[0] = me
    model[2].jobs.append(lambda: model(x))
    try:
        got = fn(x)
    finally:
        events["release"].set()
    assert events["held"].is_set()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
