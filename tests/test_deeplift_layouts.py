"""DeepLift on sequence-first layouts (NOTE: [Rows in dim 0 or dim 1] in xattr/_src/row_layout.py).

Every model here takes batch-first inputs; its ``batch_first=False`` twin (the same weights)
transposes to ``(L, B, D)`` inside, runs torch's sequence-first layers, and transposes back. The
rules find the rows in dim 1 there, so each twin gives the batch-first numbers (attributions and
delta), whatever L is next to the row count R (B + 1 shared, 2B paired, c(B + 1) for DeepLift
SHAP): L == R and L == 2R, where a sequence-first tensor looks batch-first, run again with more
rows. Before, a sequence-first ReLU kept its ordinary derivative (summation-to-delta broke: the
delta of an affine-ReLU-max-pool model grew from 1e-16 to 2e-3 - 8e-3), and at L == R positions
were paired as if they were examples (an example alone 3e-3 to 2e-2 off its row in the batch). Batch invariance, vmap == loop, chunking, custom mappings, the layer,
neuron and compat variants; batch-first models run one call.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr.compat.captum import DeepLift, DeepLiftShap, LayerDeepLift

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop", "ignore:enable_nested_tensor")
D = 8


def _randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class Twin(nn.Module):
    """Batch-first inputs (B, L, D); ``batch_first=False`` runs the middle sequence-first."""

    def __init__(self, kind: str, batch_first: bool):
        super().__init__()
        self.kind, self.batch_first = kind, batch_first
        self.pre, self.head = nn.Linear(D, D), nn.Linear(D, 3)
        if kind == "mlp":  # affine maps, ReLU, tanh and a max-pool over features: summation holds exactly
            self.f1, self.f2 = nn.Linear(D, 2 * D), nn.Linear(D, D)
        elif kind == "encoder":
            self.layer = nn.TransformerEncoderLayer(D, 2, 16, dropout=0.1, batch_first=batch_first, activation="relu")
        elif kind == "decoder":
            self.layer = nn.TransformerDecoderLayer(D, 2, 16, dropout=0.1, batch_first=batch_first, norm_first=True,
                                                    activation="gelu")
            self.memory = nn.Linear(D, D)
        elif kind == "lstm":  # one fused call, then ReLU and softmax on its (L, B, D) output
            self.rnn = nn.LSTM(D, D, batch_first=batch_first)
        else:  # "mha": the attention weights too (a softmax of (B * H, L, L))
            self.att = nn.MultiheadAttention(D, 2, batch_first=batch_first)

    def forward(self, x):
        h = torch.sigmoid(self.pre(x))
        h = h if self.batch_first else h.transpose(0, 1)
        if self.kind == "mlp":
            h = torch.tanh(self.f2(F.max_pool1d(F.relu(self.f1(h)), 2)))
        elif self.kind == "encoder":
            h = self.layer(h)
        elif self.kind == "decoder":
            h = self.layer(h, torch.tanh(self.memory(h)))
        elif self.kind == "lstm":
            h = torch.softmax(F.relu(self.rnn(h)[0]), -1)
        else:
            o, w = self.att(h, F.relu(h), torch.tanh(h), need_weights=True)
            w = w.amax(-1)  # (B, L) in both layouts
            h = F.relu(o) + (w if self.batch_first else w.transpose(0, 1))[..., None]
        h = h if self.batch_first else h.transpose(0, 1)
        return self.head(h.mean(1))


def _twins(kind: str, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        first = Twin(kind, True).double().eval()
    second = Twin(kind, False).double().eval()
    second.load_state_dict(first.state_dict())
    return first, second


def _methods(f, model, batch: int, length: int):
    dist = _randn(2, length, D, seed=5) * 0.1
    out = {
        "shared": (xattr.deep_lift(f, return_delta=True), {}),
        "per_example": (xattr.deep_lift(f, return_delta=True), {"baselines": _randn(batch, length, D, seed=6) * 0.1}),
        "shap": (xattr.deep_lift_shap(f, baselines=dist, return_delta=True), {}),
        "layer": (xattr.layer_deep_lift(xattr.at_layer(f, model.pre), return_delta=True), {}),
    }
    return out


# (B, L): L == B + 1 (the shared row count), L == 2B (the paired one), L == 2(B + 1) (DeepLift SHAP's
# two copies), B == 1 with L == 2; and lengths next to none of them
CASES = [(3, 4), (3, 6), (3, 8), (2, 3), (2, 4), (1, 2), (1, 5), (3, 7)]


@pytest.mark.parametrize("kind", ["mlp", "encoder", "decoder", "mha", "lstm"])
@pytest.mark.parametrize("batch, length", CASES, ids=[f"B{b}-L{n}" for b, n in CASES])
def test_sequence_first_twin_equals_batch_first(kind, batch, length):
    first, second = _twins(kind, seed=10 + batch + length)
    x = _randn(batch, length, D, seed=20 + length)
    f1, f2 = xattr.target(first, 1), xattr.target(second, 1)
    m1, m2 = _methods(f1, first, batch, length), _methods(f2, second, batch, length)
    for name, (attr, kw) in m1.items():
        want, want_delta = attr(x, **kw)
        got, delta = m2[name][0](x, **kw)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(delta, want_delta, rtol=1e-7, atol=1e-11, msg=lambda m: f"{name} delta: {m}")
        if kind == "mlp":  # summation-to-delta, exactly: affine maps, ReLU, tanh, sigmoid, max-pool
            assert delta.abs().max() < 1e-9, (name, delta)
        alone = [m2[name][0](x[j : j + 1], **{k: v[j : j + 1] for k, v in kw.items()})[0] for j in range(batch)]
        torch.testing.assert_close(torch.cat(alone), got, rtol=1e-9, atol=1e-11, msg=lambda m: f"{name} alone: {m}")


@pytest.mark.parametrize("kind", ["mlp", "encoder", "mha"])
@pytest.mark.parametrize("length", [2, 3, 5])
def test_vmap_equals_the_loop(kind, length):
    """Under vmap each example is a batch of one (2 paired rows): L == 2 is ambiguous there."""
    _, model = _twins(kind, seed=30 + length)
    x, base = _randn(3, length, D, seed=31), _randn(3, length, D, seed=32) * 0.1
    attr = xattr.deep_lift(xattr.target(model, 2))
    mapped = torch.func.vmap(lambda r, b: attr(r[None], baselines=b[None])[0])(x, base)
    loop = torch.cat([attr(x[j : j + 1], baselines=base[j : j + 1]) for j in range(3)])
    torch.testing.assert_close(mapped, loop, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(attr(x, baselines=base), loop, rtol=1e-9, atol=1e-11)


class _Halves(xattr.rule.Rescale):
    shares_reference = False  # a rule that cannot share a reference row: 2B paired rows


@pytest.mark.parametrize("length", [4, 6, 8])
def test_chunks_custom_mappings_neurons_and_compat(length):
    first, second = _twins("encoder", seed=40 + length)
    x, dist = _randn(3, length, D, seed=41), _randn(3, length, D, seed=42) * 0.1
    f1, f2 = xattr.target(first, 0), xattr.target(second, 0)
    builds = {
        "chunked shap": lambda f, m: xattr.deep_lift_shap(f, baselines=dist, chunk_size=4),
        "paired mapping": lambda f, m: xattr.deep_lift(f, mapping={F.relu: _Halves()}),
        "eps mapping": lambda f, m: xattr.deep_lift(f, mapping={torch.relu: xattr.rule.Rescale(1e-6)}),
        "neuron": lambda f, m: xattr.deep_lift(xattr.neuron(xattr.at_layer(f, m.pre), (1, 2))),
        "layer shap": lambda f, m: xattr.layer_deep_lift_shap(xattr.at_layer(f, m.pre), baselines=dist),
    }
    for name, build in builds.items():
        torch.testing.assert_close(build(f2, second)(x), build(f1, first)(x), rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}: {m}")
    for make in (DeepLift, DeepLiftShap, lambda m: LayerDeepLift(m, m.pre)):
        got, delta = make(second).attribute(x, baselines=dist, target=0, return_convergence_delta=True)
        want, want_delta = make(first).attribute(x, baselines=dist, target=0, return_convergence_delta=True)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(delta, want_delta, rtol=1e-7, atol=1e-11)


def _spied(model, rows: list):
    def spied(x):
        rows.append(x.shape[0])
        return model(x)

    return spied


def test_batch_first_models_run_one_call_and_ambiguous_ones_one_more():
    """A CNN with as many channels as rows, (R, R, H, W), and a batch-first encoder with L != R run
    once (tests/test_deeplift_layouts_rank.py: other ranks). L == R runs again, with twice the rows."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 9, 4), nn.ReLU(),
                        nn.Linear(4, 2)).double().eval()
    first, second = _twins("encoder", seed=50)
    for model, x, want in ((cnn, _randn(3, 3, 8, 8, seed=51), [4]), (first, _randn(3, 5, D, seed=52), [4]),
                           (second, _randn(3, 5, D, seed=52), [4]), (first, _randn(3, 4, D, seed=52), [4, 8]),
                           (second, _randn(3, 4, D, seed=52), [4, 8])):
        rows: list = []
        xattr.deep_lift(xattr.target(_spied(model, rows), 1))(x)
        assert rows == want


@pytest.mark.parametrize("length", [7, 4])
def test_layer_deep_lift_refuses_a_sequence_first_activation(length):
    """At a sequence-first layer's output (L, B, D) the layer rows were read from the sequence dim:
    attributions of shape (3, 4, 8) for inputs (3, 7, 8), no error. L == R retries, then refuses."""
    _, second = _twins("encoder", seed=55)
    split = xattr.at_layer(xattr.target(second, 1), second.layer)
    with pytest.raises(ValueError, match="does not hold the call's rows"):
        xattr.layer_deep_lift(split)(_randn(3, length, D, seed=56))


def test_a_direct_paired_rows_refuses_an_ambiguous_tensor():
    """Under a user's own paired_rows an ambiguous tensor is an error; a 2-d pool over a (L, R, W)
    tensor (unbatched: it pools the rows dim too) keeps its values."""
    ruled = xattr.rules(lambda t: F.relu(t.transpose(0, 1)).sum(), xattr.rule.deep_lift_rules())
    pool = xattr.rules(lambda t: F.max_pool2d(t.transpose(0, 1), 2), xattr.rule.deep_lift_rules())
    with xattr.rule.paired_rows(4, reference_grads=False, shared=1):
        ruled(_randn(4, 5, D, seed=60))  # (5, 4, D): the rows in dim 1
        t = _randn(4, 5, 6, seed=61)
        torch.testing.assert_close(pool(t), F.max_pool2d(t.transpose(0, 1), 2), rtol=0, atol=0)
        with pytest.raises(ValueError, match="dim 0 or in dim 1"):
            ruled(_randn(4, 4, D, seed=60))


def test_rows_mixed_with_rows_stay_ambiguous_and_raise():
    """A model whose tensors hold the rows in both dims (it mixes examples: no DeepLift of it is
    per example) is refused after a few row counts, not guessed."""

    def pairwise(x):
        return torch.tanh(x[:, None] - x[None]).sum((1, 2))

    with pytest.raises(ValueError, match="stayed ambiguous"):
        xattr.deep_lift(pairwise)(_randn(3, D, seed=61))
