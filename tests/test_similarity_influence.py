"""Similarity influence against explicit loops over example pairs, its properties, Captum's
SimilarityInfluence (cosine and euclidean, both directions), hooks and errors."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr.influence as xi
from xattr.compat.captum import SimilarityInfluence
from xattr.compat.captum import euclidean_distance  # exported where Captum users look for it

D = torch.float64


def net(seed: int, dtype=D) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)).to(dtype).eval()


def inputs(seed: int, n: int, dtype=D) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reference_scores(acts_test, acts_train, metric):
    """Every pair in a Python loop: cosine as a.b / (|a||b|), euclidean as sqrt(sum (a-b)^2)."""
    out = torch.zeros(len(acts_test), len(acts_train), dtype=D)
    for i, a in enumerate(acts_test.tolist()):
        for j, b in enumerate(acts_train.tolist()):
            if metric == "cosine":
                na, nb = math.sqrt(sum(v * v for v in a)), math.sqrt(sum(v * v for v in b))
                out[i, j] = sum(u * v for u, v in zip(a, b)) / (na * nb) if na and nb else 0.0
            else:
                out[i, j] = math.sqrt(sum((u - v) ** 2 for u, v in zip(a, b)))
    return out


def reference_top(scores, k, direction):
    idx, vals = [], []
    for row in scores.tolist():
        order = sorted(range(len(row)), key=lambda j: row[j], reverse=direction == "max")[:k]
        idx.append(order)
        vals.append([row[j] for j in order])
    return torch.tensor(idx), torch.tensor(vals, dtype=D)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("direction", ["max", "min"])
def test_matches_pairwise_loop(metric, direction):
    model = net(0)
    train, test = inputs(0, 13), inputs(1, 3)
    with torch.no_grad():
        acts = {"1": (model[:2](train), model[:2](test)), "3": (model[:4](train), model[:4](test))}
    got = xi.similarity_influence(model, [model[1], "3"], train, test, metric=metric, direction=direction, top_k=4, batch_size=5)
    full = xi.similarity_influence(model, {"a": model[1]}, train, test, metric=metric, top_k=None)
    assert set(got) == {"1", "3"} and set(full) == {"a"}
    for name, (a_tr, a_te) in acts.items():
        ref = reference_scores(a_te, a_tr, metric)
        idx, vals = reference_top(ref, 4, direction)
        assert torch.equal(got[name][0], idx)
        torch.testing.assert_close(got[name][1], vals, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(full["a"], reference_scores(acts["1"][1], acts["1"][0], metric), atol=1e-12, rtol=1e-10)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 12), batch=st.integers(1, 5), k=st.integers(1, 3))
def test_properties(seed, n, batch, k):
    model = net(seed)
    train = inputs(seed, n)
    k = min(k, n)
    # an example is at distance 0 from itself, and nothing is nearer
    near = xi.similarity_influence(model, [model[3]], train, train, metric="euclidean", direction="min", top_k=1, batch_size=batch)
    idx, dist = near["3"]
    assert (dist[:, 0] <= 1e-12).all()
    # cosine lies in [-1, 1], sorted by the direction; the batch size changes nothing
    for direction in ("max", "min"):
        a = xi.similarity_influence(model, [model[3]], train, train[:2], direction=direction, top_k=k)["3"]
        b = xi.similarity_influence(model, [model[3]], train, train[:2], direction=direction, top_k=k, batch_size=batch)["3"]
        assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1], atol=1e-14)
        assert (a[1].abs() <= 1 + 1e-12).all()
        steps = a[1][:, 1:] - a[1][:, :-1]
        assert (steps <= 1e-15).all() if direction == "max" else (steps >= -1e-15).all()
    # cosine is blind to scale: a custom metric that doubles the test activations agrees
    doubled = xi.similarity_influence(
        model, [model[3]], train, train[:2], metric=lambda t, s: xi._similarity.cosine(2 * t, s), top_k=None
    )["3"]
    torch.testing.assert_close(doubled, xi.similarity_influence(model, [model[3]], train, train[:2], top_k=None)["3"])


def test_multi_input_model_and_custom_metric():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4).double(), nn.Linear(2, 4).double()

        def forward(self, x, z):
            return torch.tanh(self.a(x) + self.b(z))

    torch.manual_seed(0)
    model = Two().eval()
    g = torch.Generator().manual_seed(0)
    train = (torch.randn(7, 3, generator=g, dtype=D), torch.randn(7, 2, generator=g, dtype=D))
    test = (torch.randn(2, 3, generator=g, dtype=D), torch.randn(2, 2, generator=g, dtype=D))
    dot = xi.similarity_influence(model, "a", train, test, metric=lambda t, s: t @ s.T, top_k=None)["a"]
    with torch.no_grad():
        ref = torch.tensor([[float(model.a(test[0][i]) @ model.a(train[0][j])) for j in range(7)] for i in range(2)], dtype=D)
    torch.testing.assert_close(dot, ref, atol=1e-12, rtol=1e-10)


def test_zero_activations_warn_and_score_zero():
    model = net(1)
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every ReLU unit is off: all activations of layer 1 are zero
    train, test = inputs(2, 4), inputs(3, 2)
    with pytest.warns(UserWarning, match="all-zero activations"):
        got = xi.similarity_influence(model, [model[1]], train, test, top_k=None)
    assert torch.equal(got["1"], torch.zeros(2, 4, dtype=D))


def test_model_untouched_and_no_hooks():
    model = net(2)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    train, test = inputs(4, 6), inputs(5, 2)
    copy_train = train.clone()
    xi.similarity_influence(model, [model[1], model[3]], train, test, top_k=2)
    assert model.training and torch.equal(train, copy_train)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_errors():
    model = net(3)
    train, test = inputs(6, 5), inputs(7, 2)
    with pytest.raises(ValueError, match="direction"):
        xi.similarity_influence(model, [model[1]], train, test, direction="up")
    with pytest.raises(ValueError, match="metric"):
        xi.similarity_influence(model, [model[1]], train, test, metric="dot")
    with pytest.raises(ValueError, match="top_k"):
        xi.similarity_influence(model, [model[1]], train, test, top_k=6)
    with pytest.raises(ValueError, match="metric must return shape"):
        xi.similarity_influence(model, [model[1]], train, test, metric=lambda t, s: t @ t.T)
    with pytest.raises(ValueError, match="no module named"):
        xi.similarity_influence(model, ["9"], train, test)
    with pytest.raises(ValueError, match="not a module of the model"):
        xi.similarity_influence(model, [nn.ReLU()], train, test)
    with pytest.raises(ValueError, match="given twice"):
        xi.similarity_influence(model, [model[1], "1"], train, test)
    with pytest.raises(TypeError, match="tensor or a tuple"):
        xi.similarity_influence(model, [model[1]], [1, 2], test)
    with pytest.raises(ValueError, match="not a valid value"):
        SimilarityInfluence(model, "1", train, "unused", similarity_direction="up")


# ---------------------------------------------------------------------------------------------
# Captum


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("direction", ["max", "min"])
def test_similarity_influence_matches_captum(tmp_path, metric, direction):
    captum_influence = pytest.importorskip("captum.influence")
    from captum.influence._core.similarity_influence import euclidean_distance as captum_euclidean
    from torch.utils.data import TensorDataset

    model = net(4, dtype=torch.float32)
    x = inputs(8, 20, dtype=torch.float32)
    ds = TensorDataset(x, torch.zeros(20))
    test = inputs(9, 3, dtype=torch.float32)
    ours_kw = {} if metric == "cosine" else {"similarity_metric": euclidean_distance}
    theirs_kw = {} if metric == "cosine" else {"similarity_metric": captum_euclidean}
    ours = SimilarityInfluence(model, ["1", "3"], ds, str(tmp_path), similarity_direction=direction, batch_size=5, **ours_kw)
    theirs = captum_influence.SimilarityInfluence(
        model, ["1", "3"], ds, str(tmp_path), model_id=f"{metric}-{direction}", similarity_direction=direction, batch_size=5, **theirs_kw
    )
    a, b = ours.influence(test, top_k=4), theirs.influence(test, top_k=4)
    assert set(a) == set(b) == {"1", "3"}
    for layer in ("1", "3"):
        assert torch.equal(a[layer][0], b[layer][0])
        torch.testing.assert_close(a[layer][1], b[layer][1], atol=1e-6, rtol=1e-5)


def test_zero_activations_scored_like_captum(tmp_path):
    captum_influence = pytest.importorskip("captum.influence")
    model = net(5, dtype=torch.float32)
    x = inputs(10, 6, dtype=torch.float32)
    x[2] = -50.0
    with torch.no_grad():
        model[0].weight.abs_()
        model[0].bias.zero_()
        acts = model[:2](x)
        t_acts = model[:2](inputs(11, 2, dtype=torch.float32).abs())
    zero = acts.norm(dim=1) == 0
    assert zero[2] and not zero.all()  # some training examples have all-zero activations at layer 1
    test = inputs(11, 2, dtype=torch.float32).abs()
    ours = SimilarityInfluence(model, ["1", "3"], x, str(tmp_path), batch_size=6)
    # (Captum fails on a single layer: its LayerActivation result is wrapped in a list twice)
    theirs = captum_influence.SimilarityInfluence(model, ["1", "3"], x, str(tmp_path), model_id="zeros", batch_size=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = ours.influence(test, top_k=6), theirs.influence(test, top_k=6)
    assert set(a) == set(b)
    for layer in ("1", "3"):
        assert torch.equal(a[layer][0], b[layer][0])
        torch.testing.assert_close(a[layer][1], b[layer][1], atol=1e-6, rtol=1e-5)
    # Captum's arithmetic: a zero row becomes a row of replace_nan (-2 for "max"), so its score
    # is -2 times the sum of the normalised test activation (not -2 itself)
    expected = -2 * (t_acts / t_acts.norm(dim=1, keepdim=True)).sum(1)
    idx, vals = a["1"]
    for i in range(2):
        for j, v in zip(idx[i].tolist(), vals[i].tolist()):
            if zero[j]:
                assert abs(v - expected[i].item()) < 1e-5


def test_zero_acts_entry_like_captum(tmp_path):
    captum_influence = pytest.importorskip("captum.influence")
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3))
        model[0].bias.zero_()
    x = torch.tensor([[1.0, 2.0, 0.5], [-1.0, -1.0, -1.0], [0.3, -2.0, 4.0]])  # row 1: all-zero ReLU output
    test = torch.tensor([[0.0, 5.0, -1.0], [1.0, 1.0, 1.0]])  # row 0 has one unit on: its unit vector sums to 1
    ours = SimilarityInfluence(model, ["0", "1"], x, str(tmp_path), batch_size=3)
    theirs = captum_influence.SimilarityInfluence(model, ["0", "1"], x, str(tmp_path), model_id="z", batch_size=3)
    with pytest.warns(RuntimeWarning, match="zero-vector activations"):
        a = ours.influence(test, top_k=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = theirs.influence(test, top_k=2)
    assert set(a) == set(b) == {"0", "1", "zero_acts-1"}
    assert torch.equal(a["zero_acts-1"], b["zero_acts-1"]) and a["zero_acts-1"].tolist() == [[0, 1]]
    for layer in ("0", "1"):
        assert torch.equal(a[layer][0], b[layer][0])
        torch.testing.assert_close(a[layer][1], b[layer][1])
