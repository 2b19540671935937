"""How TracIn's work is split into vectorised calls, and what the Captum classes keep between
calls: several checkpoints per call (and the fast version's joint test + first training batch)
give the numbers of one call per checkpoint and of the slow loop reference; the loaded
checkpoints are reused only while nothing they came from has changed (files rewritten in
place, other models, other loaders, partial loaders, checkpoints that are not files)."""

import copy
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, vmap
from torch.utils.data import TensorDataset

import xattr.compat.captum._loaded_checkpoints as loaded_checkpoints
import xattr.influence._tracin as core
import xattr.influence._tracin_fast as core_fast
from xattr.compat.captum import TracInCP, TracInCPFast, TracInCPFastRandProj
from xattr.compat.captum.influence import _GRADIENT_BYTES
from xattr.influence import (
    tracin,
    tracin_fast,
    tracin_fast_features,
    tracin_fast_self_influence,
    tracin_self_influence,
)
from xattr.influence._by_checkpoint import checkpoints_per_call
from xattr.influence._per_example import rows_within

D = torch.float64


def mlp(seed=0, d_in=4, hidden=6, d_out=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).to(D).eval()


def walk(model, seed=0, n=3):
    """n state dicts along a random walk from the model's weights."""
    g = torch.Generator().manual_seed(seed)
    out, state = [], copy.deepcopy(model.state_dict())
    for _ in range(n):
        state = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=D) for k, v in state.items()}
        out.append(state)
    return out


def data(seed, n, d_in=4, classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=D), torch.randint(0, classes, (n,), generator=g)


def ce(out, y):
    return nn.functional.cross_entropy(out, y, reduction="sum")


class ToDouble(nn.Module):
    def forward(self, x):
        return x.to(D)


def loop_reference(model, states, lrs, train, test, params=lambda m: list(m.parameters())):
    """Explicit loops over checkpoints and example pairs, torch.autograd.grad of each example's loss."""
    work = copy.deepcopy(model)
    scores = torch.zeros(len(test[0]), len(train[0]), dtype=D)
    for state, lr in zip(states, lrs):
        work.load_state_dict(state)

        def grad_of(x, y):
            gs = torch.autograd.grad(nn.functional.cross_entropy(work(x[None]), y[None]), params(work))
            return torch.cat([g.flatten() for g in gs])

        for i in range(len(test[0])):
            gi = grad_of(test[0][i], test[1][i])
            for j in range(len(train[0])):
                scores[i, j] += lr * torch.dot(gi, grad_of(train[0][j], train[1][j]))
    return scores


def counting(monkeypatch, module, name):
    """Count the calls of ``module.name`` (each vectorised call over checkpoints calls it once)."""
    calls = []
    inner = getattr(module, name)

    def wrapped(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


# ------------------------------------------------------------------ checkpoints per call


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 500), st.one_of(st.none(), st.integers(1, 2000)), st.one_of(st.none(), st.integers(1, 2000)))
def test_checkpoints_per_call_is_the_most_that_fit(n, rows, batch_size, chunk_size):
    per = checkpoints_per_call(n, rows, batch_size, chunk_size)
    limits = [x for x in (batch_size, chunk_size) if x is not None]
    brute = max([1] + [k for k in range(1, n + 1) if limits and all(k * rows <= x for x in limits)])
    assert per == brute


def test_grouped_calls_match_the_loop_reference_and_one_call_per_checkpoint(monkeypatch):
    model = mlp(1)
    states, lrs = walk(model, 1), [0.5, -0.2, 0.1]
    train, test = data(2, 9), data(3, 4)
    calls = counting(monkeypatch, core, "per_example_grads")
    grouped = tracin(model, states, ce, train, test, learning_rates=lrs, batch_size=64)
    assert len(calls) == 2  # the 3 checkpoints together: the test set, then the one training batch
    calls.clear()
    single = tracin(model, states, ce, train, test, learning_rates=lrs, batch_size=64, chunk_size=9)  # 9 rows: one checkpoint per call
    assert len(calls) == 6
    ref = loop_reference(model, states, lrs, train, test)
    torch.testing.assert_close(grouped, ref, atol=1e-11, rtol=1e-10)
    torch.testing.assert_close(single, ref, atol=1e-11, rtol=1e-10)
    two = tracin(model, states, ce, train, test, learning_rates=lrs, batch_size=18)  # 2 checkpoints, then 1
    torch.testing.assert_close(two, ref, atol=1e-11, rtol=1e-10)
    self_ref = torch.stack([loop_reference(model, states, lrs, (x[None], y[None]), (x[None], y[None]))[0, 0] for x, y in zip(*train)])
    for bs, cs in [(64, None), (18, None), (5, 2)]:
        torch.testing.assert_close(tracin_self_influence(model, states, ce, train, learning_rates=lrs, batch_size=bs, chunk_size=cs),
                                   self_ref, atol=1e-11, rtol=1e-10)  # fmt: skip


def test_fast_joint_batch_matches_separate_calls_and_the_weight_reference(monkeypatch):
    model = mlp(4)
    states, lrs = walk(model, 4), [0.3, 0.2, 0.1]
    train, test = data(5, 10), data(6, 3)
    calls = counting(monkeypatch, core_fast, "layer_factors")
    joint = tracin_fast(model, "2", states, ce, train, test, learning_rates=lrs, include_bias=False)
    assert len(calls) == 1  # 3 checkpoints, test and training examples: one vectorised call
    calls.clear()
    other = tracin_fast(model, "2", states, ce, train, test, learning_rates=lrs, include_bias=False,
                        test_loss_fn=lambda out, y: ce(out, y))  # another loss object: no joint batch  # fmt: skip
    assert len(calls) == 2
    calls.clear()
    apart = tracin_fast(model, "2", states, ce, train, test, learning_rates=lrs, include_bias=False, batch_size=4)
    assert len(calls) == 3 * (1 + 3)  # one checkpoint per call: the test set and 3 training batches each
    ref = loop_reference(model, states, lrs, train, test, params=lambda m: [m[2].weight])
    for got in (joint, other, apart):
        torch.testing.assert_close(got, ref, atol=1e-11, rtol=1e-10)
    # test inputs of another dtype are not joined with the training batch (cat would promote them)
    cast = nn.Sequential(ToDouble(), *model)
    calls.clear()
    f32 = tracin_fast(cast, "3", [{f"{int(k[0]) + 1}{k[1:]}": v for k, v in s.items()} for s in states], ce, train,
                      (test[0].float(), test[1]), learning_rates=lrs, include_bias=False)  # fmt: skip
    assert len(calls) == 2
    torch.testing.assert_close(f32, tracin_fast(model, "2", states, ce, train, (test[0].float().to(D), test[1]),
                                                learning_rates=lrs, include_bias=False), atol=1e-12, rtol=1e-12)  # fmt: skip
    with_bias = tracin(model, states, ce, train, train, layers=["2"], learning_rates=lrs).diagonal()
    for bs in (64, 4):
        torch.testing.assert_close(tracin_fast_self_influence(model, "2", states, ce, train, learning_rates=lrs, batch_size=bs),
                                   with_bias, atol=1e-11, rtol=1e-10)  # fmt: skip
        f = tracin_fast_features(model, "2", states, ce, train, learning_rates=lrs, batch_size=bs)
        torch.testing.assert_close((f * f).sum(1), with_bias, atol=1e-11, rtol=1e-10)


def test_gradient_rows_keep_the_budget():
    model = mlp(0)  # 4*6 + 6 + 6*3 + 3 = 51 float64 parameters
    params = dict(model.named_parameters())
    assert rows_within(params, list(params), _GRADIENT_BYTES) == _GRADIENT_BYTES // (51 * 8)
    assert rows_within(params, ["2.weight"], _GRADIENT_BYTES) == _GRADIENT_BYTES // (18 * 8)
    big = {"weight": torch.empty(2**24 + 1)}  # a row of more than 64 MiB: still one row
    assert rows_within(big, ["weight"], _GRADIENT_BYTES) == 1


# ------------------------------------------------------------------ loaded checkpoints kept


def saved(tmp_path, model, seed=0):
    paths, states = [], walk(model, seed)
    for i, s in enumerate(states):
        paths.append(str(tmp_path / f"ckpt-{i}.pt"))
        torch.save({**s, "learning_rate": 0.1 * (i + 1)}, paths[-1])
    return paths, states, [0.1, 0.2, 0.3]


class Loader:
    """Captum's loader contract, counting its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, net, path):
        self.calls += 1
        state = torch.load(path)
        lr = state.pop("learning_rate")
        net.load_state_dict(state)
        return lr


def test_checkpoints_are_loaded_once_and_reloaded_when_a_file_is_rewritten(tmp_path):
    model = mlp(0)
    paths, states, lrs = saved(tmp_path, model)
    train, test = data(1, 8), data(2, 3)
    load = Loader()
    cp = TracInCP(model, TensorDataset(*train), paths, load, loss_fn=nn.CrossEntropyLoss(), batch_size=3)
    first = cp.influence(test)
    torch.testing.assert_close(first, loop_reference(model, states, lrs, train, test), atol=1e-11, rtol=1e-10)
    assert load.calls == 3
    torch.testing.assert_close(cp.influence(test), first, atol=0, rtol=0)
    cp.self_influence()
    assert load.calls == 3  # kept
    # rewrite the middle checkpoint in place: same size, its old timestamps put back
    stat = os.stat(paths[1])
    new = {k: -v for k, v in states[1].items()}
    torch.save({**new, "learning_rate": 0.2}, paths[1])
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(paths[1]).st_size == stat.st_size
    after = cp.influence(test)
    assert load.calls == 6
    torch.testing.assert_close(after, loop_reference(model, [states[0], new, states[2]], lrs, train, test), atol=1e-11, rtol=1e-10)
    assert (after - first).abs().max() > 1e-3


def test_another_model_loader_or_checkpoint_list_reloads(tmp_path, monkeypatch):
    model = mlp(0)
    paths, states, lrs = saved(tmp_path, model)
    train, test = data(1, 8), data(2, 3)
    load = Loader()
    fast = TracInCPFast(model, model[2], TensorDataset(*train), paths, load, loss_fn=nn.CrossEntropyLoss(reduction="sum"))
    ref = loop_reference(model, states, lrs, train, test, params=lambda m: [m[2].weight])
    torch.testing.assert_close(fast.influence(test), ref, atol=1e-11, rtol=1e-10)
    fast.influence(test)
    assert load.calls == 3
    fast.model = copy.deepcopy(model)  # an equal model, another object
    fast.final_fc_layer = fast.model[2]
    torch.testing.assert_close(fast.influence(test), ref, atol=1e-11, rtol=1e-10)
    assert load.calls == 6
    fast.model.float()  # the same object, its dtype changed: a loaded copy is float32
    loaded, _ = fast._states()
    assert load.calls == 9 and all(v.dtype == torch.float32 for s in loaded for v in s.values())
    fast.model.double()
    other = Loader()
    fast.checkpoints_load_func = other
    torch.testing.assert_close(fast.influence(test), ref, atol=1e-11, rtol=1e-10)
    assert (load.calls, other.calls) == (9, 3)
    monkeypatch.setattr(loaded_checkpoints, "KEEP_BYTES", 3 * 51 * 8 - 1)  # the 3 states take 3 * 51 float64s
    fast.checkpoints = fast.checkpoints
    fast.influence(test)
    fast.influence(test)
    assert other.calls == 9  # too large to keep: loaded on every call
    monkeypatch.setattr(loaded_checkpoints, "KEEP_BYTES", 3 * 51 * 8)
    fast.checkpoints = fast.checkpoints  # (what could not be kept is not tried again until then)
    fast.influence(test)
    fast.influence(test)
    assert other.calls == 12
    fast.checkpoints = paths[:2]  # setting checkpoints drops what was kept
    torch.testing.assert_close(fast.influence(test), loop_reference(model, states[:2], lrs[:2], train, test,
                                                                     params=lambda m: [m[2].weight]), atol=1e-11, rtol=1e-10)  # fmt: skip
    assert other.calls == 14
    # the projected version's test features reuse its loaded checkpoints too
    proj_load = Loader()
    proj = TracInCPFastRandProj(model, model[2], TensorDataset(*train), paths, proj_load, loss_fn=nn.CrossEntropyLoss(reduction="sum"))
    torch.testing.assert_close(proj.influence(test, k=None), ref, atol=1e-11, rtol=1e-10)  # nothing to project: exact
    proj.influence(test, k=None)
    assert proj_load.calls == 3


def test_partial_loaders_and_in_memory_checkpoints_load_on_every_call(tmp_path, monkeypatch):
    model = mlp(0)
    paths, states, lrs = saved(tmp_path, model)
    train, test = data(1, 8), data(2, 3)

    def last_layer_only(net, path):  # the first layer keeps what the model (then the last checkpoint) had
        last_layer_only.calls += 1
        state = torch.load(path)
        net[2].load_state_dict({"weight": state["2.weight"], "bias": state["2.bias"]})
        return state["learning_rate"]

    last_layer_only.calls = 0
    user = copy.deepcopy(model)
    cp = TracInCP(user, TensorDataset(*train), paths, last_layer_only, loss_fn=nn.CrossEntropyLoss())
    mixed = [{**model.state_dict(), "2.weight": s["2.weight"], "2.bias": s["2.bias"]} for s in states]
    torch.testing.assert_close(cp.influence(test), loop_reference(model, mixed, lrs, train, test), atol=1e-11, rtol=1e-10)
    with torch.no_grad():
        user[0].weight.mul_(2.0)  # the user's model changes: what the loader leaves follows it
    changed = [{**m, "0.weight": 2.0 * m["0.weight"]} for m in mixed]
    torch.testing.assert_close(cp.influence(test), loop_reference(model, changed, lrs, train, test), atol=1e-11, rtol=1e-10)
    assert last_layer_only.calls == 6
    digests = counting(monkeypatch, loaded_checkpoints, "file_digests")
    cp.influence(test)
    assert digests == [] and last_layer_only.calls == 9  # known not to be kept: no file read twice

    def from_memory(net, state):
        from_memory.calls += 1
        net.load_state_dict(state)
        return 0.5

    from_memory.calls = 0
    in_memory = [copy.deepcopy(s) for s in states]
    cp = TracInCP(model, TensorDataset(*train), in_memory, from_memory, loss_fn=nn.CrossEntropyLoss())
    cp.influence(test)
    with torch.no_grad():
        in_memory[0]["2.bias"].add_(1.0)  # changed in place: must be seen
    got = cp.influence(test)
    assert from_memory.calls == 6
    torch.testing.assert_close(got, loop_reference(model, in_memory, [0.5] * 3, train, test), atol=1e-11, rtol=1e-10)


class Gated(nn.Module):
    """Control flow on a buffer's value: runs per example under vmap, not with batched states."""

    def __init__(self):
        super().__init__()
        self.body = mlp(7)
        self.register_buffer("gate", torch.tensor(1.0, dtype=D))

    def forward(self, x):
        out = self.body(x)
        return out if self.gate.item() > 0 else -out


def test_models_that_cannot_take_batched_states_fall_back_to_one_call_per_checkpoint():
    model = Gated().eval()
    states = [{"gate": torch.tensor(g, dtype=D), **{f"body.{k}": v for k, v in s.items()}}
              for g, s in zip([1.0, -1.0, 1.0], walk(model.body, 7))]  # fmt: skip
    train, test = data(8, 6), data(9, 2)
    lrs = [0.2, 0.3, 0.4]
    ref = loop_reference(model, states, lrs, train, test)
    torch.testing.assert_close(tracin(model, states, ce, train, test, learning_rates=lrs), ref, atol=1e-11, rtol=1e-10)
    ref_w = loop_reference(model, states, lrs, train, test, params=lambda m: [m.body[2].weight])
    torch.testing.assert_close(tracin_fast(model, "body.2", states, ce, train, test, learning_rates=lrs, include_bias=False),
                               ref_w, atol=1e-11, rtol=1e-10)  # fmt: skip
    with pytest.raises(RuntimeError):  # the nested call does fail on this model
        vmap(lambda s: functional_call(model, s, (test[0],)))({k: torch.stack([s[k] for s in states]) for k in states[0]})
