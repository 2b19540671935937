"""TracIn's functional core against slow loop references: full and layer-restricted TracIn,
self-influence, the factorised last-layer version, random projections, top-k, the algebra of
the scores (hypothesis), the model left alone, and argument errors."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xattr.influence import (
    top_k,
    tracin,
    tracin_fast,
    tracin_fast_features,
    tracin_fast_projected,
    tracin_fast_projections,
    tracin_fast_self_influence,
    tracin_self_influence,
)

D = torch.float64


def mlp(seed: int, d_in=4, hidden=6, d_out=3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).to(D).eval()


def checkpoints(model, seed: int, n: int = 3) -> list:
    """n state dicts along a random walk from the model's weights."""
    g = torch.Generator().manual_seed(seed)
    out, state = [], copy.deepcopy(model.state_dict())
    for _ in range(n):
        state = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in state.items()}
        out.append(state)
    return out


def data(seed: int, n: int, d_in=4, classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=D), torch.randint(0, classes, (n,), generator=g)


def ce(out, y):
    return nn.functional.cross_entropy(out, y, reduction="sum")


def reference(model, states, lrs, loss_one, train, test, params=lambda m: list(m.parameters()), test_loss_one=None):
    """Explicit loops over checkpoints, test and training examples, torch.autograd.grad of
    each example's own loss, the model loaded by load_state_dict into a copy."""
    test_loss_one = test_loss_one or loss_one
    work = copy.deepcopy(model)
    scores = torch.zeros(len(test[0]), len(train[0]), dtype=D)
    for state, lr in zip(states, lrs):
        work.load_state_dict(state)

        def grad_of(loss_fn, x, y):
            gs = torch.autograd.grad(loss_fn(work(x[None])[0], y), params(work))
            return torch.cat([g.flatten() for g in gs])

        for i in range(len(test[0])):
            gi = grad_of(test_loss_one, test[0][i], test[1][i])
            for j in range(len(train[0])):
                gj = grad_of(loss_one, train[0][j], train[1][j])
                scores[i, j] += lr * torch.dot(gi, gj)
    return scores


def ce_one(out, y):
    return nn.functional.cross_entropy(out[None], y[None])


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_slow_loop_reference(seed):
    model = mlp(seed)
    states, lrs = checkpoints(model, seed), [0.5, 0.2, 0.1]
    train, test = data(seed, 9), data(seed + 50, 4)
    ref = reference(model, states, lrs, ce_one, train, test)
    got = tracin(model, states, ce, train, test, learning_rates=lrs, batch_size=4, chunk_size=3)
    torch.testing.assert_close(got, ref, atol=1e-11, rtol=1e-10)
    self_ref = torch.diag(reference(model, states, lrs, ce_one, train, train))
    torch.testing.assert_close(tracin_self_influence(model, states, ce, train, learning_rates=lrs), self_ref, atol=1e-11, rtol=1e-10)


def test_layers_and_test_loss_fn_match_reference():
    model = mlp(2)
    states, lrs = checkpoints(model, 2), [1.0, 0.3, 2.0]
    train, test = data(3, 7), data(4, 3)
    logit0 = lambda out, y: out[:, 0].sum()  # noqa: E731  the test "loss": class 0's logit
    ref = reference(model, states, lrs, ce_one, train, test, params=lambda m: list(m[2].parameters()),
                    test_loss_one=lambda out, y: out[0])  # fmt: skip
    got = tracin(model, states, ce, train, test, layers=["2"], learning_rates=lrs, test_loss_fn=logit0)
    torch.testing.assert_close(got, ref, atol=1e-11, rtol=1e-10)
    assert (got - tracin(model, states, ce, train, test, layers=[model[2]], learning_rates=lrs)).abs().max() > 1e-3


def test_reductions_dataloaders_and_batching_give_the_same_scores():
    model = mlp(5)
    states = checkpoints(model, 5)
    (x, y), test = data(6, 11), data(7, 5)
    base = tracin(model, states, ce, (x, y), test)
    variants = [
        tracin(model, states, nn.CrossEntropyLoss(reduction="mean"), (x, y), test),
        tracin(model, states, nn.CrossEntropyLoss(reduction="none"), (x, y), test, batch_size=3),
        tracin(model, states, ce, DataLoader(TensorDataset(x, y), batch_size=4), DataLoader(TensorDataset(*test), batch_size=2)),
        tracin(model, states, ce, TensorDataset(x, y), test, batch_size=5, chunk_size=2),
    ]
    for v in variants:
        torch.testing.assert_close(v, base, atol=1e-12, rtol=1e-12)
    # a loader that drops or reorders examples: the columns follow what it yields
    dropped = tracin(model, states, ce, DataLoader(TensorDataset(x, y), batch_size=4, drop_last=True), test)
    torch.testing.assert_close(dropped, base[:, :8], atol=1e-12, rtol=1e-12)
    order = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(x, y), batch_size=4, sampler=order.tolist())
    torch.testing.assert_close(tracin(model, states, ce, loader, test), base[:, order], atol=1e-12, rtol=1e-12)


def test_checkpoints_from_paths_with_saved_learning_rates(tmp_path):
    model = mlp(8)
    states = checkpoints(model, 8)
    train, test = data(9, 6), data(10, 2)
    paths = []
    for i, s in enumerate(states):
        paths.append(tmp_path / f"c{i}.pt")
        torch.save({**{f"module.{k}": v for k, v in s.items()}, "learning_rate": 0.1 * (i + 1)}, paths[-1])
    want = tracin(model, states, ce, train, test, learning_rates=[0.1, 0.2, 0.3])
    torch.testing.assert_close(tracin(model, paths, ce, train, test), want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(tracin(model, paths, ce, train, test, learning_rates=1.0), tracin(model, states, ce, train, test))


def weight_reference(model, states, lrs, train, test, layer_index):
    return reference(model, states, lrs, ce_one, train, test, params=lambda m: [m[layer_index].weight])


@pytest.mark.parametrize("seed", [0, 3])
def test_fast_equals_full_tracin_on_the_last_layer(seed):
    model = mlp(seed)
    states, lrs = checkpoints(model, seed), [0.4, 0.7, 0.2]
    train, test = data(seed + 1, 8), data(seed + 2, 3)
    full = tracin(model, states, ce, train, test, layers=["2"], learning_rates=lrs)
    fast = tracin_fast(model, "2", states, ce, train, test, learning_rates=lrs, batch_size=3)
    torch.testing.assert_close(fast, full, atol=1e-12, rtol=1e-10)
    weight_only = tracin_fast(model, model[2], states, ce, train, test, learning_rates=lrs, include_bias=False)
    torch.testing.assert_close(weight_only, weight_reference(model, states, lrs, train, test, 2), atol=1e-11, rtol=1e-10)
    torch.testing.assert_close(tracin_fast_self_influence(model, "2", states, ce, train, learning_rates=lrs),
                               torch.diag(tracin(model, states, ce, train, train, layers=["2"], learning_rates=lrs)))  # fmt: skip
    feats = tracin_fast_features(model, "2", states, ce, train, learning_rates=lrs)
    torch.testing.assert_close(feats @ feats.T, tracin(model, states, ce, train, train, layers=["2"], learning_rates=lrs))


def test_fast_layer_in_the_middle_uses_the_layer_output_gradient():
    model = mlp(4)  # model[0] feeds a tanh, so dL/d(layer output) is not dL/d(model output)
    states = checkpoints(model, 4)
    train, test = data(11, 6), data(12, 3)
    torch.testing.assert_close(tracin_fast(model, "0", states, ce, train, test),
                               tracin(model, states, ce, train, test, layers=["0"]), atol=1e-12, rtol=1e-10)  # fmt: skip


def wide(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 24), nn.Tanh(), nn.Linear(24, 10)).to(D).eval()


def test_projection_converges_to_the_exact_scores():
    model = wide(0)
    states = checkpoints(model, 0, n=2)
    train, test = data(13, 30, d_in=5, classes=10), data(14, 6, d_in=5, classes=10)
    exact = tracin_fast(model, "2", states, ce, train, test)
    errors = {}
    for dim in (9, 64, 225):  # k = 3, 8, 15 per factor, of d_out = 10 and d_a = 25
        errs = [(tracin_fast_projected(model, "2", states, ce, train, test, projection_dim=dim, generator=s) - exact).norm() / exact.norm()
                for s in range(8)]  # fmt: skip
        errors[dim] = float(torch.stack(errs).mean())
    assert errors[9] > errors[64] > errors[225], errors
    assert errors[225] < 0.5 * errors[9], errors
    # unbiased: the mean over many draws is closer to the exact scores than one draw
    mean = torch.stack([tracin_fast_projected(model, "2", states, ce, train, test, projection_dim=9, generator=s) for s in range(60)]).mean(0)
    assert (mean - exact).norm() / exact.norm() < 0.5 * errors[9]
    # nothing to project: exact
    torch.testing.assert_close(tracin_fast_projected(model, "2", states, ce, train, test, projection_dim=250, generator=0), exact)


def test_projection_is_reproducible_from_the_seed():
    model = wide(1)
    states = checkpoints(model, 1, n=2)
    train, test = data(15, 8, d_in=5, classes=10), data(16, 2, d_in=5, classes=10)
    a = tracin_fast_projected(model, "2", states, ce, train, test, projection_dim=16, generator=7)
    b = tracin_fast_projected(model, "2", states, ce, train, test, projection_dim=16, generator=torch.Generator().manual_seed(7))
    c = tracin_fast_projected(model, "2", states, ce, train, test, projection_dim=16, generator=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    p_g, p_a = tracin_fast_projections(model, "2", 16, generator=7)
    assert p_g.shape == (10, 4) and p_a.shape == (25, 4)
    assert tracin_fast_projections(model, "2", 16, generator=7, include_bias=False)[1].shape == (24, 4)


def test_top_k_matches_a_full_sort():
    scores = torch.randn(4, 9, generator=torch.Generator().manual_seed(0), dtype=D)
    for proponents in (True, False):
        idx, val = top_k(scores, 3, proponents)
        for i in range(4):
            order = sorted(range(9), key=lambda j: -scores[i, j].item() if proponents else scores[i, j].item())[:3]
            assert idx[i].tolist() == order
            assert val[i].tolist() == [scores[i, j].item() for j in order]


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n_train=st.integers(1, 6), n_test=st.integers(1, 4), scale=st.floats(0.1, 5.0))
def test_scores_are_symmetric_additive_over_checkpoints_and_linear_in_rates(seed, n_train, n_test, scale):
    model = mlp(seed % 7)
    states = checkpoints(model, seed, n=2)
    train, test = data(seed + 1, n_train), data(seed + 2, n_test)
    both = tracin(model, states, ce, train, test, learning_rates=[1.0, scale])
    one, two = (tracin(model, [s], ce, train, test) for s in states)
    torch.testing.assert_close(both, one + scale * two, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(tracin(model, states, ce, test, train, learning_rates=[1.0, scale]), both.T, atol=1e-10, rtol=1e-10)
    self_inf = tracin_self_influence(model, states, ce, train, learning_rates=[1.0, scale])
    assert (self_inf >= 0).all()
    # Cauchy-Schwarz per checkpoint: |<g_i, g_j>| <= |g_i| |g_j|
    s_test = tracin_self_influence(model, [states[0]], ce, test)
    assert (one.abs() <= (s_test[:, None] * tracin_self_influence(model, [states[0]], ce, train)[None]).sqrt() + 1e-10).all()


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), d_in=st.integers(1, 5), hidden=st.integers(1, 6), d_out=st.integers(1, 4), bias=st.booleans())
def test_fast_factorisation_holds_for_any_layer_shape(seed, d_in, hidden, d_out, bias):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.Softplus(), nn.Linear(hidden, d_out, bias=bias)).to(D)
    states = checkpoints(model, seed, n=2)
    train, test = data(seed, 5, d_in, d_out), data(seed + 1, 3, d_in, d_out)
    full = tracin(model, states, ce, train, test, layers=["2"], learning_rates=[0.5, 2.0])
    fast = tracin_fast(model, "2", states, ce, train, test, learning_rates=[0.5, 2.0])
    torch.testing.assert_close(fast, full, atol=1e-11, rtol=1e-10)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4).to(D), nn.Linear(2, 4).to(D)
        self.head = nn.Linear(4, 1).to(D)

    def forward(self, x1, x2):
        return self.head(torch.tanh(self.a(x1) * self.b(x2)))


def test_two_inputs_and_no_loss_fn_match_reference():
    torch.manual_seed(0)
    model = TwoInputs().eval()
    states = checkpoints(model, 1, n=2)
    g = torch.Generator().manual_seed(2)
    x1, x2, labels = torch.randn(5, 3, generator=g, dtype=D), torch.randn(5, 2, generator=g, dtype=D), torch.zeros(5)
    got = tracin(model, states, None, (x1, x2, labels), (x1[:2], x2[:2], labels[:2]), learning_rates=[0.3, 0.9])
    work = copy.deepcopy(model)
    ref = torch.zeros(2, 5, dtype=D)
    for state, lr in zip(states, [0.3, 0.9]):
        work.load_state_dict(state)
        grads = [torch.cat([t.flatten() for t in torch.autograd.grad(work(x1[j:j + 1], x2[j:j + 1]).sum(), list(work.parameters()))])
                 for j in range(5)]  # fmt: skip
        for i in range(2):
            for j in range(5):
                ref[i, j] += lr * torch.dot(grads[i], grads[j])
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-10)
    fast = tracin_fast(model, "head", states, None, (x1, x2, labels), (x1[:2], x2[:2], labels[:2]), learning_rates=[0.3, 0.9])
    torch.testing.assert_close(fast, tracin(model, states, None, (x1, x2, labels), (x1[:2], x2[:2], labels[:2]), layers=["head"],
                                            learning_rates=[0.3, 0.9]))  # fmt: skip


def test_model_is_left_unchanged():
    model = mlp(6)
    model[2].weight.requires_grad_(False)
    model.train()
    before = copy.deepcopy(model.state_dict())
    states = checkpoints(model, 6)
    train, test = data(17, 5), data(18, 2)
    x_copy = train[0].clone()
    tracin(model, states, ce, train, test)
    tracin_fast(model, "2", states, ce, train, test)
    tracin_fast_projected(model, "2", states, ce, train, test, projection_dim=4, generator=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert model.training and not model[2].weight.requires_grad and model[0].weight.requires_grad
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.equal(train[0], x_copy)


def test_frozen_parameters_are_held_unless_their_layer_is_named():
    model = mlp(7)
    model[0].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    states = checkpoints(model, 7)
    train, test = data(19, 4), data(20, 2)
    torch.testing.assert_close(tracin(model, states, ce, train, test), tracin(model, states, ce, train, test, layers=["2"]))


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3).to(D)

    def forward(self, x):
        return self.fc(self.fc(x))


def test_errors():
    model = mlp(0)
    states = checkpoints(model, 0)
    train, test = data(0, 4), data(1, 2)
    with pytest.raises(ValueError, match="does not fit the model"):
        tracin(model, [{"weight": torch.zeros(2)}], ce, train, test)
    with pytest.raises(ValueError, match="learning_rates"):
        tracin(model, states, ce, train, test, learning_rates=[1.0])
    with pytest.raises(ValueError, match="non-empty list"):
        tracin(model, [], ce, train, test)
    with pytest.raises(ValueError, match="no module named"):
        tracin(model, states, ce, train, test, layers=["9"])
    with pytest.raises(TypeError, match="labels"):
        tracin(model, states, ce, train[0], test)
    with pytest.raises(ValueError, match="first"):
        tracin(model, states, ce, (train[0], train[1][:2]), test)
    with pytest.raises(TypeError, match="nn.Linear"):
        tracin_fast(model, "1", states, ce, train, test)
    with pytest.raises(ValueError, match="exactly once"):
        tracin_fast(Twice(), "fc", [Twice().state_dict()], None, (torch.zeros(2, 3, dtype=D), torch.zeros(2)), (torch.zeros(1, 3, dtype=D), torch.zeros(1)))
    with pytest.raises(ValueError, match="projection_dim"):
        tracin_fast_projected(model, "2", states, ce, train, test, projection_dim=0)
    with pytest.raises(TypeError, match="generator"):
        tracin_fast_projected(model, "2", states, ce, train, test, projection_dim=4, generator="seed")
    with pytest.raises(ValueError, match="learning rates >= 0"):
        tracin_fast_features(model, "2", states, ce, train, learning_rates=-1.0)
    with pytest.raises(ValueError, match="k must be"):
        top_k(torch.zeros(2, 3), 4)
    with pytest.raises(ValueError, match="batch_size"):
        tracin(model, states, ce, train, test, batch_size=0)
