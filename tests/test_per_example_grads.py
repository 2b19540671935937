"""The per-example gradient engine of xattr.influence (``_per_example.py``) against explicit
loops of ``torch.autograd.grad``, one example at a time: layer selections, loss reductions,
chunk sizes and byte budgets, a model with batch-norm buffers in eval mode, a tied weight,
several inputs, an outer vmap over checkpoints; the model left as it was; the helpers'
properties (hypothesis) and errors."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from xattr.influence._by_checkpoint import by_checkpoint
from xattr.influence._per_example import (
    check_batch,
    loss_reduction,
    parameter_names,
    per_example_grads,
    positive_int,
    row_bytes,
    row_chunks,
    rows_within,
    squared_norms,
    summed_loss,
)

D = torch.float64


def bn_mlp(seed=0):
    """Linear, batch norm (eval: running statistics as buffers), tanh, linear."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).to(D)
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 1.5)
    return model.eval()


def data(seed, n, d_in=4, classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=D), torch.randint(0, classes, (n,), generator=g)


def state_of(model):
    return {k: v.detach() for k, v in model.state_dict(keep_vars=True).items()}


def reference(model, names, loss_fn, batch, state=None):
    """(b, P): for each example, torch.autograd.grad of its own loss (a batch of one, summed)
    w.r.t. the parameters ``names`` of a copy of the model loaded with ``state``."""
    work = copy.deepcopy(model)
    if state is not None:
        work.load_state_dict(state)
    params = dict(work.named_parameters())
    chosen = [params[n] for n in names]
    *inputs, labels = batch
    rows = []
    for i in range(labels.shape[0]):
        out = work(*(x[i:i + 1] for x in inputs))
        loss = out.sum() if loss_fn is None else loss_fn(out, labels[i:i + 1]).sum()
        gs = torch.autograd.grad(loss, chosen, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(gs, chosen)]))
    return torch.stack(rows)


LOSSES = {
    "ce-none": nn.CrossEntropyLoss(reduction="none"),
    "ce-sum": nn.CrossEntropyLoss(reduction="sum"),
    "ce-mean": nn.CrossEntropyLoss(reduction="mean"),
    "plain function": lambda out, y: nn.functional.cross_entropy(out, y, reduction="none") ** 2,
    "sum of outputs": None,
}
LAYERS = {"all": None, "first": ["0"], "batch norm and last": [3, 1], "last by module": "module"}


def layer_arg(model, key):
    value = LAYERS[key]
    if value == "module":
        return model[3]
    return value if value is None or isinstance(value[0], str) else [model[i] for i in value]


@pytest.mark.parametrize("loss_key", list(LOSSES))
@pytest.mark.parametrize("layer_key", list(LAYERS))
def test_matches_autograd_loop_over_layers_and_losses(loss_key, layer_key):
    model = bn_mlp(1)
    loss_fn = LOSSES[loss_key]
    names = parameter_names(model, layer_arg(model, layer_key))
    batch = data(2, 7)
    ref = reference(model, names, loss_fn, batch)
    got = per_example_grads(model, state_of(model), names, loss_fn, batch)
    assert got.shape == ref.shape == (7, sum(dict(model.named_parameters())[n].numel() for n in names))
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-10)
    if loss_fn is not None and hasattr(loss_fn, "reduction"):  # the reduction told: the same numbers
        told = per_example_grads(model, state_of(model), names, loss_fn, batch, reduction=loss_reduction(loss_fn))
        torch.testing.assert_close(told, ref, atol=1e-12, rtol=1e-10)


def test_selected_layers_name_their_parameters_in_order():
    model = bn_mlp(0)
    assert parameter_names(model, None) == [n for n, _ in model.named_parameters()]
    assert parameter_names(model, [model[3], "0"]) == ["3.weight", "3.bias", "0.weight", "0.bias"]
    assert parameter_names(model, ["1", "1"]) == ["1.weight", "1.bias"]  # a repeat counts once
    model[0].weight.requires_grad_(False)
    assert "0.weight" not in parameter_names(model, None)
    assert "0.weight" in parameter_names(model, None, trainable_only=False)
    assert parameter_names(model, ["0"]) == ["0.weight", "0.bias"]  # a named layer: frozen or not


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 9), chunk=st.one_of(st.none(), st.integers(1, 10)), budget_rows=st.one_of(st.none(), st.integers(1, 10)),
       layer_key=st.sampled_from(list(LAYERS)))  # fmt: skip
def test_chunk_sizes_and_byte_budgets_give_the_same_gradients(n, chunk, budget_rows, layer_key):
    model = bn_mlp(3)
    names = parameter_names(model, layer_arg(model, layer_key))
    state, batch = state_of(model), data(4, n)
    whole = per_example_grads(model, state, names, LOSSES["ce-none"], batch)
    max_bytes = None if budget_rows is None else budget_rows * row_bytes(state, names) + 7  # 7 spare bytes: still budget_rows rows
    got = per_example_grads(model, state, names, LOSSES["ce-none"], batch, chunk_size=chunk, max_bytes=max_bytes)
    torch.testing.assert_close(got, whole, atol=1e-13, rtol=1e-12)
    by_name = per_example_grads(model, state, names, LOSSES["ce-none"], batch, chunk_size=chunk, max_bytes=max_bytes, flat=False)
    assert list(by_name) == names
    torch.testing.assert_close(torch.cat([by_name[k].reshape(n, -1) for k in names], 1), whole, atol=1e-13, rtol=1e-12)
    torch.testing.assert_close(squared_norms(by_name), (whole**2).sum(1), atol=1e-12, rtol=1e-10)


def test_chunks_follow_the_byte_budget(monkeypatch):
    """The rows of each vectorised call: counted by wrapping torch.func.vmap's result."""
    import xattr.influence._per_example as engine

    model = bn_mlp(5)
    names = parameter_names(model, None)
    state = state_of(model)
    per_row = row_bytes(state, names)
    assert per_row == 8 * sum(p.numel() for p in model.parameters())
    sizes = []
    inner = engine.vmap

    def counting(fn, **kw):
        call = inner(fn, **kw)

        def run(p, inputs, labels):
            sizes.append(labels.shape[0])
            return call(p, inputs, labels)

        return run

    monkeypatch.setattr(engine, "vmap", counting)
    per_example_grads(model, state, names, None, data(6, 10), max_bytes=3 * per_row + per_row - 1)
    assert sizes == [3, 3, 3, 1]
    sizes.clear()
    per_example_grads(model, state, names, None, data(6, 10), chunk_size=4, max_bytes=10**9)
    assert sizes == [4, 4, 2]
    sizes.clear()
    per_example_grads(model, state, names, None, data(6, 10), max_bytes=1)  # less than a row: one row per call
    assert sizes == [1] * 10


def test_other_parameter_values_buffers_and_an_outer_vmap_over_checkpoints():
    model = bn_mlp(7)
    g = torch.Generator().manual_seed(0)
    states = [{k: v + 0.2 * torch.randn(v.shape, generator=g, dtype=D) if k.endswith(("weight", "bias", "running_mean")) else v
               for k, v in state_of(model).items()} for _ in range(3)]  # fmt: skip
    names = parameter_names(model, ["0", "3"])
    batch = data(8, 5)
    refs = [reference(model, names, LOSSES["ce-mean"], batch, state=s) for s in states]
    for s, ref in zip(states, refs):
        torch.testing.assert_close(per_example_grads(model, s, names, LOSSES["ce-mean"], batch), ref, atol=1e-12, rtol=1e-10)
    stacked = by_checkpoint(lambda s: per_example_grads(model, s, names, LOSSES["ce-mean"], batch, chunk_size=2), states)
    torch.testing.assert_close(stacked, torch.stack(refs), atol=1e-12, rtol=1e-10)
    assert not torch.allclose(refs[0], refs[1])  # the states do differ


class TwoInputs(nn.Module):
    """Two inputs and a tied weight (the decoder reuses the encoder's)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(9)
        self.enc = nn.Linear(3, 3, bias=False).to(D)
        self.dec = nn.Linear(3, 3, bias=False).to(D)
        self.dec.weight = self.enc.weight
        self.mix = nn.Linear(3, 2).to(D)

    def forward(self, x1, x2):
        return self.mix(self.dec(torch.tanh(self.enc(x1))) * x2)


def test_several_inputs_and_a_tied_weight_differentiate_every_use():
    model = TwoInputs().eval()
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(4, 3, generator=g, dtype=D), torch.randn(4, 3, generator=g, dtype=D), torch.randint(0, 2, (4,), generator=g))
    assert parameter_names(model, None) == ["enc.weight", "mix.weight", "mix.bias"]  # the tied weight once
    assert parameter_names(model, ["dec"]) == ["enc.weight"]
    state = state_of(model)
    assert "dec.weight" in state  # the state dict holds the alias too: it must follow enc.weight
    for layers in (None, ["dec"], ["mix"]):
        names = parameter_names(model, layers)
        ref = reference(model, names, LOSSES["ce-sum"], batch)
        torch.testing.assert_close(per_example_grads(model, state, names, LOSSES["ce-sum"], batch), ref, atol=1e-12, rtol=1e-10)


def test_model_and_data_are_left_unchanged():
    model = bn_mlp(11)
    model[0].weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    batch = data(12, 6)
    copies = [t.clone() for t in batch]
    per_example_grads(model, state_of(model), parameter_names(model, ["0", "1"]), LOSSES["ce-mean"], batch, chunk_size=4)
    per_example_grads(model, dict(model.named_parameters()), parameter_names(model, None), None, batch, flat=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert not model.training and not model[0].weight.requires_grad and model[3].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(batch, copies))


# ------------------------------------------------------------------------ helpers


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 60), step=st.one_of(st.none(), st.integers(1, 70)))
def test_row_chunks_cover_the_rows_in_order(n, step):
    chunks = row_chunks(n, step)
    flat = [i for lo, hi in chunks for i in range(lo, hi)]
    assert flat == list(range(n))
    assert all(hi - lo <= (step or n) and hi > lo for lo, hi in chunks)
    assert len(chunks) == (0 if n == 0 else -(-n // (step or n)))


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 50), min_size=1, max_size=4), budget=st.integers(1, 10_000))
def test_rows_within_is_the_most_rows_that_fit(sizes, budget):
    tensors = {f"p{i}": torch.zeros(s, dtype=torch.float32) for i, s in enumerate(sizes)}
    names = list(tensors)
    rows = rows_within(tensors, names, budget)
    per = 4 * sum(sizes)
    assert row_bytes(tensors, names) == per
    assert rows == max([1] + [r for r in range(1, budget + 1) if r * per <= budget])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), seed=st.integers(0, 1000))
def test_summed_loss_is_the_sum_of_per_example_losses_for_every_reduction(n, seed):
    g = torch.Generator().manual_seed(seed)
    out, labels = torch.randn(n, 3, generator=g, dtype=D), torch.randint(0, 3, (n,), generator=g)
    each = [nn.functional.cross_entropy(out[i:i + 1], labels[i:i + 1]) for i in range(n)]
    total = sum(each)
    for red in ("none", "sum", "mean"):
        loss = nn.CrossEntropyLoss(reduction=red)
        torch.testing.assert_close(summed_loss(loss, out, labels, loss_reduction(loss)), total, atol=1e-12, rtol=1e-12)
    kl = nn.KLDivLoss(reduction="batchmean")
    logp, target = out.log_softmax(1), torch.softmax(torch.randn(n, 3, generator=g, dtype=D), 1)
    kl_each = sum(nn.functional.kl_div(logp[i:i + 1], target[i:i + 1], reduction="sum") for i in range(n))
    torch.testing.assert_close(summed_loss(kl, logp, target, loss_reduction(kl)), kl_each, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(summed_loss(None, out, labels, None), out.sum())
    for i in range(n):  # a batch of one: any reduction, or none told, is the example's own loss
        for red in ("none", "sum", "mean"):
            torch.testing.assert_close(summed_loss(nn.CrossEntropyLoss(reduction=red), out[i:i + 1], labels[i:i + 1], None), each[i])


def test_errors_say_what_to_do():
    out, labels = torch.randn(4, 3, dtype=D), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="per-example losses"):
        summed_loss(lambda o, y: nn.functional.cross_entropy(o, y), out, labels, "none")
    with pytest.raises(ValueError, match="returned shape"):
        summed_loss(lambda o, y: nn.functional.cross_entropy(o, y, reduction="none"), out, labels, "sum")
    with pytest.raises(TypeError, match="return a tensor"):
        summed_loss(lambda o, y: 1.0, out, labels, "sum")

    class Odd:
        reduction = "max"

    with pytest.raises(ValueError, match="'none', 'sum' or 'mean'"):
        loss_reduction(Odd())
    model = bn_mlp(0)
    with pytest.raises(ValueError, match="has no parameters"):
        parameter_names(model, ["2"])  # the tanh
    with pytest.raises(ValueError, match="no module named"):
        parameter_names(model, ["nope"])
    with pytest.raises(ValueError, match="not a module of the model"):
        parameter_names(model, [nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="non-empty list"):
        parameter_names(model, [])
    with pytest.raises(TypeError, match="nn.Module"):
        parameter_names("model", None)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="layers="):
        parameter_names(model, None)
    with pytest.raises(TypeError, match="callable"):
        per_example_grads(model, state_of(model), ["0.weight"], "ce", data(0, 2))
    with pytest.raises(ValueError, match="positive int or None"):
        positive_int(0, "chunk_size")
    assert positive_int(None, "chunk_size") is None and positive_int(3, "x") == 3
    with pytest.raises(TypeError, match="labels last"):
        check_batch(torch.zeros(3), "train")
    with pytest.raises(ValueError, match="same non-zero number of rows"):
        check_batch((torch.zeros(3, 2), torch.zeros(2)), "train")
    with pytest.raises(ValueError, match="empty"):
        check_batch((torch.zeros(0, 2), torch.zeros(0)), "train")
    with pytest.raises(ValueError, match="NaN"):
        check_batch((torch.full((2, 2), float("nan")), torch.zeros(2)), "train")
