"""at_layer and neuron: the split reproduces the model, hooks never stay, reuse is explicit."""

import pytest
import torch
from torch import nn

import xattr
from xattr._src.layer_grads import layer_vjp_rows


class Skip(nn.Module):
    """A shared ReLU used twice, a skip connection around l2, and an in-place op after l1."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.out = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.relu = nn.ReLU()

    def forward(self, x, scale=1.0):
        h = self.l1(x)
        h = torch.relu_(h)  # in place, right after the layer
        h2 = self.relu(self.l2(h)) + h
        return self.out(self.relu(h2)) * scale


def _model():
    torch.manual_seed(0)
    return Skip().double().eval()


X = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("layer, kw", [("l1", {}), ("l2", {}), ("out", {"inputs": True}), ("relu", {"call_index": 1})])
def test_head_of_act_is_the_model(layer, kw):
    model = _model()
    f = xattr.target(model, 2)
    split = xattr.at_layer(f, getattr(model, layer), **kw)
    h = split.act(X)
    torch.testing.assert_close(split.head(h, X), f(X))
    assert _no_hooks(model)


def test_act_is_not_mutated_by_in_place_ops_after_the_layer():
    model = _model()
    split = xattr.at_layer(model, model.l1)
    h = split.act(X)
    torch.testing.assert_close(h, model.l1(X))  # relu_ after l1 did not touch the captured copy
    given = -torch.ones(5, 6, dtype=torch.float64)
    split.head(given, X)
    assert torch.equal(given, -torch.ones(5, 6, dtype=torch.float64))


def test_reused_module_needs_call_index():
    model = _model()
    with pytest.raises(RuntimeError, match="called 2 times.*call_index"):
        xattr.at_layer(model, model.relu).act(X)
    assert _no_hooks(model)
    both = xattr.at_layer(model, model.relu, call_index="all").act(X)
    assert isinstance(both, tuple) and len(both) == 2
    torch.testing.assert_close(xattr.at_layer(model, model.relu, call_index=0).act(X), both[0])
    with pytest.raises(RuntimeError, match="called only 2"):
        xattr.at_layer(model, model.relu, call_index=5).head(both[0], X)


def test_replacing_every_call_changes_the_output_as_expected():
    model = _model()
    split = xattr.at_layer(model, model.relu, call_index="all")
    h0, h1 = split.act(X)
    zeros = (torch.zeros_like(h0), torch.zeros_like(h1))
    torch.testing.assert_close(split.head(zeros, X), model.out.bias.expand(5, 3).detach())


def test_several_layers_at_once():
    model = _model()
    split = xattr.at_layer(model, [model.l1, model.l2])
    h1, h2 = split.act(X)
    assert h1.shape == h2.shape == (5, 6)
    torch.testing.assert_close(split.head((h1, h2), X), model(X))


def test_layer_gradients_one_pass_equals_head_vjp_and_finite_differences():
    model = _model()
    f = xattr.target(model, 0)
    split = xattr.at_layer(f, model.l2)
    h, out, g = layer_vjp_rows(split, (X,))
    torch.testing.assert_close(out, f(X).detach())
    torch.testing.assert_close(g, xattr.grad(split.head)(h, X))
    eps = 1e-6
    for j in range(6):
        e = torch.zeros_like(h)
        e[:, j] = eps
        fd = (split.head(h + e, X) - split.head(h - e, X)) / (2 * eps)
        torch.testing.assert_close(g[:, j], fd.detach(), atol=1e-7, rtol=1e-6)


def test_layer_integrated_gradients_by_composition_is_complete():
    model = _model()
    f = xattr.target(model, 1)
    split = xattr.at_layer(f, model.l2)
    attr, delta = xattr.integrated_gradients(split.head, return_delta=True, n_steps=64)(split.act(X), X)
    assert attr.shape == (5, 6) and delta.abs().max() < 1e-6


def test_pass_through_arguments_reach_the_model():
    model = _model()
    split = xattr.at_layer(xattr.target(model, 0), model.l2)
    h = split.act(X, 3.0)
    torch.testing.assert_close(split.head(h, X, 3.0), model(X, 3.0)[:, 0])


def test_integer_inputs_attributed_at_the_embedding():
    torch.manual_seed(0)
    emb, lin = nn.Embedding(20, 4).double(), nn.Linear(4, 2).double()

    class Text(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lin = emb, lin

        def forward(self, ids):
            return self.lin(self.emb(ids).mean(1))

    model = Text().eval()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    split = xattr.at_layer(xattr.target(model, 1), model.emb)
    attr, delta = xattr.integrated_gradients(split.head, return_delta=True)(split.act(ids), ids)
    assert attr.shape == (2, 3, 4) and delta.abs().max() < 1e-10  # the model is linear in the embedding


def test_neuron_index_slice_and_many():
    model = _model()
    split = xattr.at_layer(model, model.l2)
    one = xattr.saliency(xattr.neuron(split, 3), abs=False)(X)
    w1, w2 = model.l1.weight.detach(), model.l2.weight.detach()
    active = (model.l1(X) > 0).double().detach()  # d relu(l1 x) / d(l1 x)
    torch.testing.assert_close(one, (w2[3] * active) @ w1)
    region = xattr.saliency(xattr.neuron(split, (slice(1, 4),)), abs=False)(X)
    parts = sum(xattr.saliency(xattr.neuron(split, j), abs=False)(X) for j in range(1, 4))
    torch.testing.assert_close(region, parts)
    many = xattr.saliency(xattr.neuron(split, xattr.outputs([3, 1, (slice(1, 4),)])), abs=False)(X)
    assert many.shape == (5, 3, 4)
    torch.testing.assert_close(many[:, 0], one)
    torch.testing.assert_close(many[:, 2], region)


def test_never_called_layer_and_bad_arguments():
    model = _model()
    unused = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="never called"):
        xattr.at_layer(model, unused).act(X)
    with pytest.raises(TypeError, match="nn.Module"):
        xattr.at_layer(model, lambda x: x)
    with pytest.raises(ValueError, match="call_index"):
        xattr.at_layer(model, model.l1, call_index=-1)


def test_act_stops_at_the_layer_after_the_first_full_pass():
    model = _model()
    calls = []
    handle = model.out.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        split = xattr.at_layer(model, model.l1)
        first = split.act(X)  # runs everything once to check l1 is called once
        assert len(calls) == 1
        again = split.act(X)  # now stops at l1: the output layer is not reached
        assert len(calls) == 1
        torch.testing.assert_close(first, again)
        xattr.at_layer(model, model.relu, call_index=0).act(X)  # an int call_index stops at once
        assert len(calls) == 1
    finally:
        handle.remove()


def test_act_checks_single_calls_again_for_each_input_shape():
    """The whole-forward check ran only on a split's first call: a later input whose shape makes
    the forward call the layer twice (one call per chunk of tokens) silently got the first
    chunk's activation."""

    class Chunked(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.out = nn.Linear(3, 5), nn.Linear(5, 2)

        def forward(self, x):  # the encoder runs once per chunk of 4 tokens
            return self.out(torch.cat([self.enc(c) for c in x.split(4, dim=1)], 1).mean(1))

    torch.manual_seed(0)
    model = Chunked().eval()
    split = xattr.at_layer(model, model.enc)
    short = torch.randn(2, 4, 3)
    torch.testing.assert_close(split.act(short), model.enc(short))
    torch.testing.assert_close(split.act(short), model.enc(short))  # the same shape: stops at the layer
    with pytest.raises(RuntimeError, match="called 2 times"):
        split.act(torch.randn(2, 8, 3))


@pytest.mark.parametrize("method", ["gradient_x_activation", "grad_cam"])
def test_a_layer_input_of_token_ids_is_a_clear_error(method):
    """torch said only "`inputs` argument to grad() cannot be empty"."""
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2)).eval()
    split = xattr.at_layer(xattr.target(model, 0), model[0], inputs=True)
    with pytest.raises(TypeError, match="no floating-point tensor to differentiate"):
        getattr(xattr, method)(split)(torch.randint(0, 10, (2, 3)))
