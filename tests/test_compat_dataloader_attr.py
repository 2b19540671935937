"""xattr.compat.captum.DataLoaderAttribution: Captum 0.9's numbers, a slow reference, its calls, its errors.

The reference below ablates one feature at a time with explicit element assignment, traverses
the batches with one model call each, and reduces by hand: nothing of the implementation is
shared. The Captum comparisons run live and skip without captum.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xattr.compat import captum as X
from xattr.compat.captum.dataloader_attr import DataLoaderAttribution, InputRole

N, TOL = 10, dict(rtol=1e-12, atol=1e-12)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=g, dtype=torch.float64)
    z = torch.randn(N, 2, 2, generator=g, dtype=torch.float64)
    w = torch.rand(N, generator=g, dtype=torch.float64) + 0.5
    y = torch.randint(0, 2, (N,), generator=g)
    return x, z, w, y


class Net(nn.Module):
    """Two attributed inputs (x: (B, 3), z: (B, 2, 2)) and a per-example pass-through weight w."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b = nn.Linear(3, 4).double(), nn.Linear(4, 4).double()
        self.head = nn.Linear(4, 2).double()

    def forward(self, x, z, w):
        h = torch.tanh(self.a(x) * self.b(z.flatten(1)))
        return self.head(h) * w[:, None]


NET = Net().eval()
ROLES = (0, 0, 1, 2)  # x, z attributed; w passed to the model; y (labels) left out
LOADER = DataLoader(TensorDataset(*_data()), batch_size=4)  # batches of 4, 4, 2
MASKS = (torch.tensor([[0, 1, 1]]), torch.tensor([[[2, 0], [2, 3]]]))  # feature 0 spans both inputs


def _correct(accum, output, inputs):  # an int count of right answers, using the labels (role 2)
    hits = (output.argmax(1) == inputs[3]).sum()
    return hits if accum is None else accum + hits


def _weighted(accum, output, inputs):  # uses the perturbed inputs it is given
    value = (output.sum(1) * inputs[0].sum(1)).sum(0, keepdim=True)
    return value if accum is None else torch.cat([accum, value])


CASES = {
    "default": dict(),
    "flat": dict(return_input_shape=False),
    "sum": dict(to_metric=lambda acc: acc.sum(0)),
    "scalar metric": dict(to_metric=lambda acc: acc.sum()),
    "count": dict(reduce=_correct),
    "accuracy": dict(reduce=_correct, to_metric=lambda n: n / N),
    "perturbed inputs": dict(reduce=_weighted, perturbations_per_pass=2),
    "masks": dict(feature_mask=MASKS, to_metric=lambda acc: acc.mean(0), return_input_shape=False),
    "masks shaped": dict(feature_mask=MASKS, to_metric=lambda acc: acc[:6].reshape(3, 2, 2)),
    "broadcast mask": dict(feature_mask=(torch.tensor([[2, 0, 1]]), torch.tensor([[1, 0]])), perturbations_per_pass=3),
    "scalar baselines": dict(baselines=(0.5, -1), perturbations_per_pass=2),
    "tensor baselines": dict(baselines=(torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64), torch.full((1, 2, 2), 0.7, dtype=torch.float64))),
    "all per pass": dict(feature_mask=MASKS, baselines=(1.0, torch.tensor([[[0.5, -0.5]]], dtype=torch.float64)), perturbations_per_pass=10),
    "per pass 4": dict(perturbations_per_pass=4, to_metric=lambda acc: acc.sum(0)),
    "ids from 2": dict(feature_mask=tuple(m + 2 for m in MASKS), return_input_shape=False),  # zero columns 0 and 1
}  # fmt: skip


def _captum(model):
    attr = pytest.importorskip("captum.attr")
    return attr.DataLoaderAttribution(attr.FeatureAblation(model))


def _as_tuple(a):
    return a if isinstance(a, tuple) else (a,)


def _same(a, b, **tol):
    a, b = _as_tuple(a), _as_tuple(b)
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert p.shape == q.shape and p.dtype == q.dtype
        torch.testing.assert_close(p, q, **(tol or TOL))


def reference(model, batches, roles, baselines, masks, reduce, to_metric, return_input_shape=True):
    """Feature ablation over the data, written out: one feature, one batch, one model call at a time."""
    lone = isinstance(batches[0], torch.Tensor)
    batches = [[b] if lone else list(b) for b in batches]
    attributed = [e for e, r in enumerate(roles) if r == 0]
    first = batches[0]
    if masks is None:  # every element its own feature, ids running on across the inputs
        masks, start = [], 0
        for e in attributed:
            shape = first[e].shape[1:]
            masks.append(torch.arange(start, start + math.prod(shape)).reshape(1, *shape))
            start += math.prod(shape)
    if baselines is None:
        baselines = [0.0] * len(attributed)

    def metric(feature):
        accum = None
        for batch in batches:
            batch = list(batch)  # a copy
            for a, e in enumerate(attributed):
                x = batch[e].clone()
                chosen = (masks[a] == feature).expand_as(x)
                base = torch.as_tensor(baselines[a], dtype=x.dtype).expand_as(x)
                for idx in chosen.nonzero().tolist():
                    x[tuple(idx)] = base[tuple(idx)]
                batch[e] = x
            output = model(*[v for v, r in zip(batch, roles) if r != 2])
            accum = reduce(accum, output, tuple(batch))
        return accum if to_metric is None else to_metric(accum)

    original = metric(-1).flatten()
    n_features = max(int(m.max()) for m in masks) + 1
    unique = torch.stack([original - metric(j).flatten() for j in range(n_features)], dim=1)
    if not return_input_shape:
        return unique
    out = []
    for a, e in enumerate(attributed):
        shape = first[e].shape[1:]
        mask = masks[a].expand(1, *shape)[0]
        out.append(torch.stack([unique[:, int(mask[idx])] for idx in _positions(shape)], dim=1).reshape(-1, *shape))
    return out[0] if lone else tuple(out)


def _positions(shape):
    return [tuple(i) for i in torch.ones(shape).nonzero().tolist()] if shape else [()]


def _concat(accum, output, inputs):
    return output if accum is None else torch.cat([accum, output])


@pytest.mark.parametrize("name", list(CASES))
def test_same_numbers_as_captum(name):
    kw = dict(input_roles=ROLES, **CASES[name])
    expected = _captum(NET).attribute(LOADER, **kw)
    _same(DataLoaderAttribution(X.FeatureAblation(NET)).attribute(LOADER, **kw), expected)
    _same(DataLoaderAttribution(X.FeatureAblation(NET)).attribute(LOADER, batch_copies=False, **kw), expected)


@pytest.mark.parametrize("name", ["default", "count", "masks", "tensor baselines", "all per pass"])
def test_same_numbers_as_a_slow_reference(name):
    kw = dict(CASES[name])
    masks = kw.get("feature_mask")
    expected = reference(NET, list(LOADER), ROLES, kw.get("baselines"), masks, kw.get("reduce", _concat),
                         kw.get("to_metric"), kw.get("return_input_shape", True))  # fmt: skip
    for per_pass in (1, 3):
        for batch_copies in (True, False):
            kw.update(perturbations_per_pass=per_pass, batch_copies=batch_copies)
            _same(DataLoaderAttribution(X.FeatureAblation(NET)).attribute(LOADER, input_roles=ROLES, **kw), expected)


def test_one_element_batches_and_captums_feature_ablation():
    x, z, w, y = _data()
    model = nn.Sequential(nn.Linear(3, 2).double()).eval()
    loader = DataLoader(TensorDataset(x), batch_size=3)  # batches are one-element lists: a tuple comes back
    expected = _captum(model).attribute(loader)
    assert isinstance(expected, tuple) and len(expected) == 1
    from captum.attr import FeatureAblation

    _same(DataLoaderAttribution(FeatureAblation(model)).attribute(loader), expected)
    _same(DataLoaderAttribution(X.FeatureAblation(model)).attribute(loader, perturbations_per_pass=2), expected)


def test_lone_tensor_batches_give_a_tensor():
    # Captum 0.9 zips a lone tensor batch row by row (its model sees only the first row): xattr
    # treats the tensor as a one-element batch and returns a tensor, as the reference does
    x, *_ = _data()
    model = nn.Linear(3, 2).double().eval()
    batches = [x[:4], x[4:]]
    out = DataLoaderAttribution(X.FeatureAblation(model)).attribute(batches, to_metric=lambda a: a.sum(0))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
    _same(out, reference(model, batches, (0,), None, None, _concat, lambda a: a.sum(0)))


def test_non_tensor_pass_through_and_a_loss_per_batch():
    x, *_ = _data()
    lin = nn.Linear(3, 2).double().eval()

    def scaled(x, scale):  # a Python float passed through (role 1): the copies go one call each
        return lin(x) * scale

    def loss(x):  # one number per batch: the stacked call's output has no rows, so one call per copy
        return lin(x).pow(2).mean()

    add = lambda acc, out, inp: out if acc is None else acc + out  # noqa: E731
    batches = [[x[:5], 2.0], [x[5:], 2.0]]
    for model, roles, data, reduce in ((scaled, (0, 1), batches, None), (loss, None, [[x[:5]], [x[5:]]], add)):
        expected = _captum(model).attribute(data, input_roles=roles, reduce=reduce, perturbations_per_pass=2)
        _same(DataLoaderAttribution(X.FeatureAblation(model)).attribute(data, input_roles=roles, reduce=reduce, perturbations_per_pass=2), expected)  # fmt: skip


class _Counting:
    """A re-iterable dataloader counting its traversals."""

    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def test_traversals_and_model_calls():
    x, *_ = _data()
    lin = nn.Linear(3, 2).double().eval()
    rows = []

    def model(x):
        rows.append(x.shape[0])
        return lin(x)

    for per_pass, copies, calls in ((1, True, [8, 4, 4, 2, 4, 2]), (2, True, [12, 6, 4, 2]), (2, False, [4, 4, 4, 2, 2, 2, 4, 2])):
        data, rows[:] = _Counting([[x[:4]], [x[4:6]]]), []
        DataLoaderAttribution(X.FeatureAblation(model)).attribute(data, perturbations_per_pass=per_pass, batch_copies=copies)
        assert data.passes == 1 + math.ceil(3 / per_pass)  # the first batch is read once to learn the layout
        assert rows == calls  # the unablated data rides along with the first pass


def test_ids_missing_in_between_cost_nothing_and_give_zero():
    x, *_ = _data()
    lin = nn.Linear(3, 2).double().eval()
    calls = []
    model = lambda x: calls.append(1) or lin(x)  # noqa: E731
    mask = torch.tensor([[0, 3, 3]])
    out = DataLoaderAttribution(X.FeatureAblation(model)).attribute([[x]], feature_mask=mask, return_input_shape=False)
    assert out.shape == (N * 2, 4) and not out[:, 1:3].any() and len(calls) == 2  # Captum: 5
    _same(out, _captum(lin).attribute([[x]], feature_mask=mask, return_input_shape=False))


def test_progress_bar(monkeypatch):
    x, *_ = _data()
    dla = DataLoaderAttribution(X.FeatureAblation(nn.Linear(3, 2).double().eval()))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        with_bar = dla.attribute([[x[:5]], [x[5:]]], show_progress=True)
    assert "dataloader batches" in err.getvalue()
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # tqdm absent: a warning, no bar, the same numbers
    with pytest.warns(UserWarning, match="needs tqdm"):
        _same(dla.attribute([[x[:5]], [x[5:]]], show_progress=True), with_bar)


def test_input_role_values_are_captums():
    assert (InputRole.need_attr, InputRole.need_forward, InputRole.no_forward) == (0, 1, 2)
    assert X.DataLoaderAttribution is DataLoaderAttribution


def _dla():
    return DataLoaderAttribution(X.FeatureAblation(lambda x, *rest: x.sum(1, keepdim=True)))


X4 = torch.rand(4, 3)


@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(dataloader=[[X4, X4], [X4]]), ValueError, "batch 1 of the dataloader has 1 elements but the first batch had 2"),
        (dict(dataloader=[[X4], X4]), ValueError, "lone tensor"),
        (dict(dataloader=[{"x": X4}]), TypeError, "tensors or tuples/lists"),
        (dict(dataloader=iter([[X4]])), TypeError, "pass a DataLoader or a list of batches"),
        (dict(dataloader=[]), ValueError, "yields no batches"),
        (dict(dataloader=5), TypeError, "iterable of batches"),
        (dict(dataloader=[[X4, X4]], input_roles=(0,)), ValueError, "give one role per element"),
        (dict(dataloader=[[X4, X4]], input_roles=(1, 2)), ValueError, "mark at least one tensor with role 0"),
        (dict(dataloader=[[X4, X4]], input_roles=(0, 3)), ValueError, "must be 0"),
        (dict(dataloader=[[X4, "text"]], input_roles=(0, 0)), TypeError, "give other elements role 1 or 2"),
        (dict(dataloader=[[X4]], feature_mask=torch.tensor([[-1, 0, 1]])), ValueError, "negative feature id -1"),
        (dict(dataloader=[[X4]], feature_mask=torch.tensor([[0.0, 1, 2]])), TypeError, "integer tensor"),
        (dict(dataloader=[[X4]], feature_mask=torch.zeros(4, 3, dtype=torch.long)), ValueError, "broadcast to one example, \\(1, 3\\)"),
        (dict(dataloader=[[X4]], feature_mask=(torch.tensor([[0, 1, 2]]),) * 2), ValueError, "feature_mask has 2 tensors"),
        (dict(dataloader=[[X4]], baselines=torch.zeros(2, 3)), ValueError, "baselines\\[0\\] has shape \\(2, 3\\)"),
        (dict(dataloader=[[X4]], baselines=(0, 1)), ValueError, "baselines has 2 entries"),
        (dict(dataloader=[[X4]], baselines="zero"), TypeError, "number or a tensor"),
        (dict(dataloader=[[X4], [torch.rand(4, 5)]]), ValueError, "same per-example shapes"),
        (dict(dataloader=[[X4]], perturbations_per_pass=0), ValueError, "perturbations_per_pass must be an int >= 1"),
        (dict(dataloader=[[X4]], to_metric=lambda acc: 1.0), TypeError, "to_metric returned a float: return a tensor"),
        (dict(dataloader=[[X4]], to_metric=lambda acc: acc > 0), TypeError, "bool tensor"),
        (dict(dataloader=[[X4]], reduce=lambda acc, out, inp: [out]), TypeError, "reduce \\(to_metric is None\\) returned a list"),
        (dict(dataloader=[[X4[:, :0]]]), ValueError, "no features"),
    ],
)  # fmt: skip
def test_errors(kw, error, match):
    with pytest.raises(error, match=match):
        _dla().attribute(**kw)


def test_errors_from_the_model_side():
    with pytest.raises(TypeError, match=r"use DataLoaderAttribution\(FeatureAblation\(model\)\)"):
        DataLoaderAttribution(X.Occlusion(NET))
    with pytest.raises(TypeError, match="FeatureAblation instance"):
        DataLoaderAttribution(NET)
    loss = DataLoaderAttribution(X.FeatureAblation(lambda x: x.sum()))
    with pytest.raises(ValueError, match="pass reduce="):
        loss.attribute([[X4], [X4]])
    calls = itertools.count()
    with pytest.raises(ValueError, match="one shape"):
        _dla().attribute([[X4]], to_metric=lambda acc: acc[: 1 + min(next(calls), 1)])
    with pytest.raises(NotImplementedError):
        _dla().attribute_future()


def test_train_mode_warns_and_nothing_is_mutated():
    model = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.0))
    x = X4.clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        DataLoaderAttribution(X.FeatureAblation(model)).attribute([[x]])
    assert any("train mode" in str(w.message) for w in caught)
    assert torch.equal(x, X4) and torch.is_grad_enabled()
