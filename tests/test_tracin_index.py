"""The user-held fast TracIn index (`tracin_fast_index`): its scores, self-influence and
features against the one-shot functions and an explicit autograd loop over the last layer's
weight and bias; several test batches from one training pass; projections; the algebra of the
scores (hypothesis); the model left alone; errors."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import xattr.influence._tracin_fast as core_fast
from test_tracin_calls import D, ce, data, mlp, walk
from xattr.influence import (
    TopK,
    TracInFastIndex,
    top_k,
    tracin,
    tracin_fast,
    tracin_fast_features,
    tracin_fast_index,
    tracin_fast_projected,
    tracin_fast_projections,
    tracin_fast_self_influence,
)


def loop_reference(model, states, lrs, train, test, bias=True, test_loss=None):
    """sum_c lr_c <grad, grad> over the last layer's weight (and bias), one example at a time."""
    test_loss = test_loss or ce
    work = copy.deepcopy(model)
    scores = torch.zeros(len(test[0]), len(train[0]), dtype=D)
    for state, lr in zip(states, lrs):
        work.load_state_dict(state)
        params = [work[2].weight, work[2].bias] if bias else [work[2].weight]

        def grad_of(loss, x, y):
            return torch.cat([g.flatten() for g in torch.autograd.grad(loss(work(x[None]), y[None]), params)])

        gt = [grad_of(test_loss, x, y) for x, y in zip(*test)]
        gr = [grad_of(ce, x, y) for x, y in zip(*train)]
        for i in range(len(gt)):
            for j in range(len(gr)):
                scores[i, j] += lr * torch.dot(gt[i], gr[j])
    return scores


def counting(monkeypatch):
    calls = []
    inner = core_fast.layer_factors

    def wrapped(*args, **kwargs):
        calls.append(len(args[4][-1]))  # the rows of the batch
        return inner(*args, **kwargs)

    monkeypatch.setattr(core_fast, "layer_factors", wrapped)
    return calls


@pytest.mark.parametrize("include_bias", [True, False])
def test_index_equals_the_loop_reference_and_the_one_shot_functions(include_bias, monkeypatch):
    model = mlp(1)
    states, lrs = walk(model, 1), [0.5, -0.2, 0.1]
    train, test1, test2 = data(2, 11), data(3, 4), data(4, 2)
    calls = counting(monkeypatch)
    index = tracin_fast_index(model, "2", states, ce, train, learning_rates=lrs, include_bias=include_bias)
    assert isinstance(index, TracInFastIndex) and sum(calls) == 11  # the training pass: 11 rows in all
    assert index.a.shape == (3, 11, 6 + include_bias) and index.g.shape == (3, 11, 3) and index.learning_rates == lrs
    calls.clear()
    s1, s2 = index.influence(test1), index.influence(test2)
    assert sum(calls) == 4 + 2  # each query runs its own test examples only
    for s, t in ((s1, test1), (s2, test2)):
        ref = loop_reference(model, states, lrs, train, t, bias=include_bias)
        torch.testing.assert_close(s, ref, atol=1e-11, rtol=1e-10)
        torch.testing.assert_close(s, tracin_fast(model, "2", states, ce, train, t, learning_rates=lrs, include_bias=include_bias),
                                   atol=1e-12, rtol=1e-12)  # fmt: skip
    calls.clear()
    self_inf = index.self_influence()
    assert calls == []  # no model call
    diag = torch.stack([loop_reference(model, states, lrs, (x[None], y[None]), (x[None], y[None]), bias=include_bias)[0, 0]
                        for x, y in zip(*train)])  # fmt: skip
    torch.testing.assert_close(self_inf, diag, atol=1e-11, rtol=1e-10)
    torch.testing.assert_close(self_inf, tracin_fast_self_influence(model, "2", states, ce, train, learning_rates=lrs,
                                                                    include_bias=include_bias), atol=0, rtol=0)  # fmt: skip
    if include_bias:
        torch.testing.assert_close(s1, tracin(model, states, ce, train, test1, layers=["2"], learning_rates=lrs), atol=1e-11, rtol=1e-10)


def test_test_loss_batching_dataloaders_and_top_k():
    model = mlp(5)
    states, lrs = walk(model, 5), [0.3, 0.2, 0.4]
    train, test = data(6, 13), data(7, 5)

    def logit0(out, y):
        return out[:, 0].sum()

    index = tracin_fast_index(model, model[2], states, ce, DataLoader(TensorDataset(*train), batch_size=4), learning_rates=lrs, batch_size=3)
    whole = tracin_fast_index(model, "2", states, ce, train, learning_rates=lrs)
    torch.testing.assert_close(index.a, whole.a, atol=1e-13, rtol=1e-12)
    for test_loss in (None, logit0):
        got = index.influence(TensorDataset(*test), test_loss_fn=test_loss)  # a Dataset, columns in chunks of 3
        ref = loop_reference(model, states, lrs, train, test, test_loss=test_loss and (lambda o, y: logit0(o, y)))
        torch.testing.assert_close(got, ref, atol=1e-11, rtol=1e-10)
        torch.testing.assert_close(got, tracin_fast(model, "2", states, ce, train, test, learning_rates=lrs, test_loss_fn=test_loss),
                                   atol=1e-12, rtol=1e-12)  # fmt: skip
    scores = whole.influence(test)
    for proponents in (True, False):
        best = whole.influence(test, k=4, proponents=proponents)
        assert isinstance(best, TopK)
        expected = top_k(scores, 4, proponents)
        assert torch.equal(best.indices, expected.indices) and torch.equal(best.scores, expected.scores)
        order = scores.argsort(1, descending=proponents)[:, :4]  # brute force
        assert torch.equal(best.indices, order)


def test_features_and_projections_equal_the_one_shot_functions():
    model = mlp(8, d_in=5, hidden=9, d_out=4)
    states, lrs = walk(model, 8), [0.5, 0.2, 0.1]
    train, test = data(9, 12, d_in=5, classes=4), data(10, 3, d_in=5, classes=4)
    index = tracin_fast_index(model, "2", states, ce, train, learning_rates=lrs)
    f_train = index.features()
    torch.testing.assert_close(f_train, tracin_fast_features(model, "2", states, ce, train, learning_rates=lrs), atol=0, rtol=0)
    f_test = index.features(test)
    torch.testing.assert_close(f_test @ f_train.T, index.influence(test), atol=1e-12, rtol=1e-10)
    for seed in (0, 1):
        proj = tracin_fast_index(model, "2", states, ce, train, learning_rates=lrs, projection_dim=9, generator=seed)
        p_g, p_a = tracin_fast_projections(model, "2", 9, generator=seed)
        assert proj.projections[0].shape == (4, 3) and proj.projections[1].shape == (10, 3)
        assert torch.equal(proj.projections[0], p_g) and torch.equal(proj.projections[1], p_a)
        torch.testing.assert_close(proj.a, index.a @ p_a, atol=1e-13, rtol=1e-12)
        torch.testing.assert_close(proj.g, index.g @ p_g, atol=1e-13, rtol=1e-12)
        got = proj.influence(test)
        torch.testing.assert_close(got, tracin_fast_projected(model, "2", states, ce, train, test, projection_dim=9, generator=seed,
                                                              learning_rates=lrs), atol=1e-12, rtol=1e-12)  # fmt: skip
        feats = tracin_fast_features(model, "2", states, ce, train, projections=(p_g, p_a), learning_rates=lrs)
        test_feats = tracin_fast_features(model, "2", states, ce, test, projections=(p_g, p_a), learning_rates=lrs)
        torch.testing.assert_close(got, test_feats @ feats.T, atol=1e-12, rtol=1e-10)  # the features' dot products
        torch.testing.assert_close(proj.self_influence(), (feats**2).sum(1), atol=1e-12, rtol=1e-10)
    again = tracin_fast_index(model, "2", states, ce, train, learning_rates=lrs, projection_dim=9, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again.influence(test), got, atol=0, rtol=0)  # the same seed: the same numbers
    exact = tracin_fast_index(model, "2", states, ce, train, learning_rates=lrs, projection_dim=40, generator=0)
    assert exact.projections is None  # 4 * 10 <= 40: nothing to project
    torch.testing.assert_close(exact.influence(test), index.influence(test), atol=0, rtol=0)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), n_train=st.integers(1, 7), n_test=st.integers(1, 4),
       rates=st.lists(st.floats(-1, 1, allow_nan=False), min_size=2, max_size=2))  # fmt: skip
def test_scores_are_symmetric_additive_over_checkpoints_and_linear_in_rates(seed, n_train, n_test, rates):
    model = mlp(seed % 5)
    states = walk(model, seed, n=2)
    train, test = data(seed + 1, n_train), data(seed + 2, n_test)
    both = tracin_fast_index(model, "2", states, ce, train, learning_rates=rates).influence(test)
    swapped = tracin_fast_index(model, "2", states, ce, test, learning_rates=rates).influence(train)
    torch.testing.assert_close(both, swapped.T, atol=1e-11, rtol=1e-9)
    parts = [tracin_fast_index(model, "2", [s], ce, train, learning_rates=r).influence(test) for s, r in zip(states, rates)]
    torch.testing.assert_close(both, parts[0] + parts[1], atol=1e-11, rtol=1e-9)
    doubled = tracin_fast_index(model, "2", states, ce, train, learning_rates=[2 * r for r in rates]).influence(test)
    torch.testing.assert_close(doubled, 2 * both, atol=1e-11, rtol=1e-9)
    positive = tracin_fast_index(model, "2", states, ce, train, learning_rates=[abs(r) for r in rates])
    self_inf = positive.self_influence()
    assert bool((self_inf >= 0).all())
    cross = positive.influence(train)
    assert bool((cross.abs() <= (self_inf[:, None] * self_inf[None, :]).sqrt() * (1 + 1e-9) + 1e-12).all())  # Cauchy-Schwarz


def test_model_checkpoints_and_data_are_left_unchanged():
    model = mlp(11)
    model[2].weight.requires_grad_(False)
    model.train()
    before = copy.deepcopy(model.state_dict())
    states = walk(model, 11)
    saved = copy.deepcopy(states)
    train, test = data(12, 6), data(13, 2)
    copies = [t.clone() for t in train + test]
    index = tracin_fast_index(model, "2", states, ce, train, projection_dim=4, generator=0)
    index.influence(test)
    index.features(test)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert model.training and not model[2].weight.requires_grad
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(train + test, copies))
    assert all(torch.equal(s[k], t[k]) for s, t in zip(states, saved) for k in s)


def test_the_index_keeps_its_own_copies_of_the_states():
    model = mlp(14)
    live = model.state_dict()  # shares storage with the model's parameters
    train, test = data(15, 6), data(16, 2)
    index = tracin_fast_index(model, "2", [live], ce, train)
    before = index.influence(test)
    with torch.no_grad():
        model[2].weight.mul_(-3.0)  # "training further": the state dict's tensors change too
    assert torch.equal(live["2.weight"], model[2].weight)
    torch.testing.assert_close(index.influence(test), before, atol=0, rtol=0)
    assert not torch.allclose(tracin_fast(model, "2", [live], ce, train, test), before)
    assert repr(index) == "TracInFastIndex(checkpoints=1, n_train=6, d_a=7, d_g=3, projected=False)"


def test_errors():
    model = mlp(0)
    states = walk(model, 0)
    train = data(1, 5)
    with pytest.raises(TypeError, match="nn.Linear"):
        tracin_fast_index(model, "1", states, ce, train)
    index = tracin_fast_index(model, "2", states, ce, train, learning_rates=[0.1, -0.2, 0.3])
    assert index.influence(train).shape == (5, 5)  # negative learning rates: scores are fine
    with pytest.raises(ValueError, match="learning rates >= 0"):
        index.features()
    with pytest.raises(ValueError, match="k must be"):
        index.influence(train, k=6)
    with pytest.raises(TypeError, match="test_loss_fn"):
        index.influence(train, test_loss_fn="ce")
    with pytest.raises(ValueError, match="projection_dim"):
        tracin_fast_index(model, "2", states, ce, train, projection_dim=0)
    with pytest.raises(ValueError, match="do not fit"):
        tracin_fast_features(model, "2", states, ce, train, projections=(torch.zeros(3, 2, dtype=D), torch.zeros(5, 2, dtype=D)))
    with pytest.raises(ValueError, match="empty"):
        index.influence((train[0][:0], train[1][:0]))
