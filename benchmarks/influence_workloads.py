"""Training-data influence workloads: TracInCP and TracInCPFast, xattr's compat classes against
Captum's (same conventions as `workloads.build`: contenders are zero-argument callables, objects
are built before timing, agreement is judged before a time counts).

Setup: an MLP 64-32-10 (ReLU) on scikit-learn's digits (pixels / 16), trained briefly by SGD from
a fixed seed, three checkpoints saved as state dicts in a temporary directory with their learning
rates; 1000 training and 100 test examples, float32, training DataLoader batches of 100.

- TracInCP, all 2,410 parameters, ``influence(test)`` -> (100, 1000). Captum with its defaults
  (``sample_wise_grads_per_batch=False``: one ``torch.autograd.grad`` per example, loss with
  ``reduction="none"``); for reference (not a contender) Captum with
  ``sample_wise_grads_per_batch=True`` (hooks on the Linear layers, loss with reduction "sum").
  Floor: per checkpoint, ``vmap(grad)`` per-example gradients of the 1100 examples from
  parameters already in memory and one (100, P) x (P, 1000) matmul.
- TracInCPFast on the last layer (``final_fc_layer=model[2]``, loss with reduction "sum"),
  ``influence(test)`` -> (100, 1000). Floor: per checkpoint, one batched forward of the 1100
  examples with the last layer's input kept, one backward to the logits, and the two Gram
  matrices multiplied.
- TracInCP ``self_influence()`` over the 1000 training examples (Captum's default loop order).
  Floor: per checkpoint, ``vmap(grad)`` per-example gradients of the 1000 and their squared norms.
- TracInCPFast on the last layer for 10 query batches of 10 test examples: xattr builds a
  ``tracin_fast_index`` once (the training factors) and queries it 10 times; Captum, which
  keeps nothing between calls of its ``TracInCPFast``, calls ``influence`` 10 times (its
  ``TracInCPFastRandProj`` does precompute, but needs the ``annoy`` package by default). For
  reference (not a contender) xattr's ``TracInCPFast.influence`` 10 times. Floor: the training
  factors once per checkpoint (one batched forward and backward), then per query the test
  factors and the two Gram matrices.
Agreement: max abs difference against Captum's scores, relative to the largest score.

Run standalone: ``python -m benchmarks.influence_workloads`` prints both libraries' medians.
"""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile
import warnings

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import TensorDataset

from .workloads import SEED, Workload

N_TRAIN, N_TEST, N_CHECKPOINTS, BATCH = 1000, 100, 3, 100


def _setup():
    from sklearn.datasets import load_digits  # noqa: PLC0415

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(SEED)
    perm = torch.randperm(len(x), generator=g)
    train = (x[perm[:N_TRAIN]], y[perm[:N_TRAIN]])
    test = (x[perm[N_TRAIN:N_TRAIN + N_TEST]], y[perm[N_TRAIN:N_TRAIN + N_TEST]])
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    folder = tempfile.mkdtemp(prefix="xattr-tracin-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    paths, rates = [], {}
    for epoch in range(3 * N_CHECKPOINTS):
        order = torch.randperm(N_TRAIN, generator=g)
        for i in range(0, N_TRAIN, 50):
            b = order[i:i + 50]
            opt.zero_grad()
            nn.functional.cross_entropy(model(train[0][b]), train[1][b]).backward()
            opt.step()
        if epoch % 3 == 2:
            path = os.path.join(folder, f"checkpoint-{epoch}.pt")
            torch.save(model.state_dict(), path)
            paths.append(path)
            rates[path] = 0.3
    model.eval()

    def load(net, path):
        net.load_state_dict(torch.load(path))
        return rates[path]

    return model, train, test, paths, load


def _agreement(ours, theirs) -> tuple[str, bool]:
    diff = float((ours - theirs).abs().max())
    scale = float(theirs.abs().max())
    return f"max abs diff {diff:.1e} (max abs score {scale:.1e})", diff <= 1e-4 * max(1.0, scale)


def _floor_full(model, train, test, states, lrs, self_only=False):
    names = [n for n, _ in model.named_parameters()]

    def loss(p, x, y):
        out = functional_call(model, p, (x[None],))
        return nn.functional.cross_entropy(out, y[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))

    def run():
        total = 0
        for state, lr in zip(states, lrs):
            p = {n: state[n] for n in names}
            if self_only:
                gr = per_example(p, *train)
                total = total + lr * sum(gr[n].flatten(1).square().sum(1) for n in names)
                continue
            gt, gr = per_example(p, *test), per_example(p, *train)
            gt = torch.cat([gt[n].flatten(1) for n in names], 1)
            gr = torch.cat([gr[n].flatten(1) for n in names], 1)
            total = total + lr * gt @ gr.T
        return total

    return run


def _fc_factors(work, x, y):
    """The last layer's input and the loss gradient at the model's output, for a batch."""
    a = work[:-1](x)
    out = work[-1](a).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(out, y, reduction="sum"), out)
    return a.detach(), g


def _floor_fast(model, train, test, states, lrs):
    work = copy.deepcopy(model)

    def run():
        total = 0
        for state, lr in zip(states, lrs):
            work.load_state_dict(state)
            at, gt = _fc_factors(work, *test)
            ar, gr = _fc_factors(work, *train)
            total = total + lr * (gt @ gr.T) * (at @ ar.T)
        return total

    return run


def _floor_fast_index(model, train, queries, states, lrs):
    work = copy.deepcopy(model)

    def run():
        held = []
        for state in states:
            work.load_state_dict(state)
            held.append(_fc_factors(work, *train))
        out = []
        for q in queries:
            total = 0
            for state, lr, (ar, gr) in zip(states, lrs, held):
                work.load_state_dict(state)
                at, gt = _fc_factors(work, *q)
                total = total + lr * (gt @ gr.T) * (at @ ar.T)
            out.append(total)
        return out

    return run


def build(device: str = "cpu") -> list[Workload]:
    """TracInCP, TracInCPFast and TracInCP self-influence on the digits MLP (CPU only)."""
    if device != "cpu":
        return [Workload(n, "influence", None, None, {}, None, "", skip="CPU workload") for n in ("TracInCP (digits MLP)",)]
    import captum.influence as ci  # noqa: PLC0415

    from xattr.compat.captum import TracInCP, TracInCPFast  # noqa: PLC0415
    from xattr.influence import tracin_fast_index  # noqa: PLC0415

    model, train, test, paths, load = _setup()
    states = [torch.load(p) for p in paths]
    lrs = [load(copy.deepcopy(model), p) for p in paths]
    dataset = TensorDataset(*train)
    none, total = nn.CrossEntropyLoss(reduction="none"), nn.CrossEntropyLoss(reduction="sum")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours_cp = TracInCP(model, dataset, paths, load, loss_fn=none, batch_size=BATCH)
        theirs_cp = ci.TracInCP(copy.deepcopy(model), dataset, paths, load, loss_fn=none, batch_size=BATCH)
        theirs_sw = ci.TracInCP(copy.deepcopy(model), dataset, paths, load, loss_fn=total, batch_size=BATCH,
                                sample_wise_grads_per_batch=True)  # fmt: skip
        ours_fast = TracInCPFast(model, model[2], dataset, paths, load, loss_fn=total, batch_size=BATCH)
        twin = copy.deepcopy(model)
        theirs_fast = ci.TracInCPFast(twin, twin[2], dataset, paths, load, loss_fn=total, batch_size=BATCH)

    def quiet(fn):
        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fn()

        return run

    how = "max abs difference of the (100, 1000) scores against Captum's, within 1e-4 of the largest score"
    queries = [(test[0][i:i + 10], test[1][i:i + 10]) for i in range(0, N_TEST, 10)]

    def ours_index():
        index = tracin_fast_index(model, model[2], paths, total, train, learning_rates=lrs, include_bias=False)
        return torch.cat([index.influence(q) for q in queries])

    def ten_calls(obj):
        return lambda: torch.cat([obj.influence(q) for q in queries])
    return [
        Workload("TracInCP (digits MLP)", "influence", lambda: ours_cp.influence(test), quiet(lambda: theirs_cp.influence(test)),
                 {"vmap grads + matmul": _floor_full(model, train, test, states, lrs)},
                 lambda: _agreement(ours_cp.influence(test), quiet(lambda: theirs_cp.influence(test))()), how,
                 info={"captum sample_wise_grads_per_batch=True": quiet(lambda: theirs_sw.influence(test))}),
        Workload("TracInCPFast (digits MLP)", "influence", lambda: ours_fast.influence(test), quiet(lambda: theirs_fast.influence(test)),
                 {"batched fwd/bwd + Gram products": _floor_fast(model, train, test, states, lrs)},
                 lambda: _agreement(ours_fast.influence(test), quiet(lambda: theirs_fast.influence(test))()), how),
        Workload("TracInCP self_influence (digits MLP)", "influence", lambda: ours_cp.self_influence(),
                 quiet(lambda: theirs_cp.self_influence()),
                 {"vmap grads, squared norms": _floor_full(model, train, test, states, lrs, self_only=True)},
                 lambda: _agreement(ours_cp.self_influence(), quiet(lambda: theirs_cp.self_influence())()),
                 "max abs difference of the 1000 self-influence scores against Captum's"),
        Workload("TracInCPFast, 10 query batches via index (digits MLP)", "influence", ours_index, quiet(ten_calls(theirs_fast)),
                 {"training factors once, Gram products per query": _floor_fast_index(model, train, queries, states, lrs)},
                 lambda: _agreement(ours_index(), quiet(ten_calls(theirs_fast))()),
                 "max abs difference of the 10 stacked (10, 1000) score blocks against Captum's TracInCPFast",
                 info={"xattr TracInCPFast.influence x10 (no index)": ten_calls(ours_fast)}),
    ]  # fmt: skip


def main() -> None:
    from . import timing  # noqa: PLC0415

    timing.configure("cpu", torch.get_num_threads())
    for w in build("cpu"):
        text, agreed = w.agreement()
        contenders = {"xattr": w.xattr, "captum": w.captum, **{f"floor: {k}": v for k, v in w.floors.items()}, **w.info}
        times = timing.interleaved(contenders, "cpu", warmup=1, repeats=5)
        med = {k: 1e3 * timing.median(v) for k, v in times.items()}
        cells = ", ".join(f"{k} {v:.1f} ms" for k, v in med.items())
        print(f"{w.name}: {cells}; Captum/xattr {med['captum'] / med['xattr']:.1f}x; {text}; agreed: {agreed}", flush=True)


if __name__ == "__main__":
    main()
