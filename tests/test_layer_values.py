"""Layers whose value holds more than tensors (NOTE: [Layer values with more than tensors]):
a dict with a count and a None, a tuple with a cache object, a Hugging Face ``ModelOutput``.
Every method must give, at the value's tensor, the numbers of a twin whose layer returns that
tensor alone, and the model must read its own non-tensor leaves back; before, the methods failed
on them ("'int' object has no attribute 'ndim'", "'int' object is not subscriptable")."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xattr

from layer_registry import LAYER_METHODS_UNDER_TEST


class Cache:
    """A non-tensor object in a layer's output, as older transformers' past_key_value."""

    def __init__(self, scale: float):
        self.scale = scale


class Block(nn.Module):
    def __init__(self, style: str):
        super().__init__()
        self.style = style
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        if self.style == "dict":
            return {"h": h, "none": None, "n": 2, "name": "block"}
        if self.style == "tuple":
            return h, Cache(2.0)
        return h


class Model(nn.Module):
    def __init__(self, style: str):
        super().__init__()
        torch.manual_seed(0)
        self.style = style
        self.proj, self.block, self.out = nn.Linear(3, 4), Block(style), nn.Linear(4, 2)

    def forward(self, x):
        y = self.block(self.proj(x))
        if self.style == "dict":
            assert y["name"] == "block" and y["none"] is None
            h, scale = y["h"], y["n"]  # the model reads its own count back
        elif self.style == "tuple":
            h, scale = y[0], y[1].scale
        else:
            h, scale = y, 2.0
        return self.out(torch.tanh(h * scale))


X = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _pair(style):
    a, b = Model(style).double().eval(), Model("tensor").double().eval()
    b.load_state_dict(a.state_dict())
    return a, b


def _tensor_of(style, attr):
    return attr["h"] if style == "dict" else attr[0]


@pytest.mark.parametrize("method", [m for m in LAYER_METHODS_UNDER_TEST if not m.neuron], ids=repr)
@pytest.mark.parametrize("style", ["dict", "tuple"])
def test_every_layer_method_at_a_value_with_more_than_tensors(method, style):
    """(``xattr.neuron`` indexes a tensor activation only.)"""
    model, twin = _pair(style)
    split = lambda m: xattr.at_layer(xattr.target(m, 1), m.block)  # noqa: E731
    got = method.make(split(model), generator=0)(X)
    want = method.make(split(twin), generator=0)(X)
    if style == "dict":
        assert (got["n"], got["none"], got["name"]) == (None, None, None)
    else:
        assert len(got) == 2 and got[1] is None
    torch.testing.assert_close(_tensor_of(style, got), want)


@pytest.mark.parametrize("style", ["dict", "tuple"])
def test_the_head_gives_the_model_its_own_leaves_back(style):
    model, twin = _pair(style)
    split = xattr.at_layer(xattr.target(model, 1), model.block)
    h = split.act(X)
    zero = {"h": torch.zeros(5, 4, dtype=torch.float64), "none": None, "n": None, "name": None} if style == "dict" else (
        torch.zeros(5, 4, dtype=torch.float64), None)  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(split.head(h, X), xattr.target(twin, 1)(X))
        torch.testing.assert_close(split.head(zero, X), twin.out(torch.zeros(5, 4, dtype=torch.float64))[:, 1])


def test_a_hugging_face_model_output():
    """BertModel's encoder returns a BaseModelOutput (one optree leaf): layer IG there equals
    layer IG at its last layer's tensor, and the whole base model's output gives one attribution
    per field."""
    pytest.importorskip("transformers")
    import hf_zoo

    case = hf_zoo.ZOO["bert:eager"]()
    ids, mask, ref = case.inputs()
    encoder = case.model.bert.encoder
    at_encoder = xattr.layer_integrated_gradients(xattr.at_layer(case.f, encoder), baselines=ref, n_steps=4)(ids, mask)
    at_last = xattr.layer_integrated_gradients(xattr.at_layer(case.f, encoder.layer[-1]), baselines=ref, n_steps=4)(ids, mask)
    assert set(at_encoder) == {"last_hidden_state"}
    torch.testing.assert_close(at_encoder["last_hidden_state"], at_last)
    gxa = xattr.gradient_x_activation(xattr.at_layer(case.f, case.model.bert))(ids, mask)
    assert set(gxa) == {"last_hidden_state", "pooler_output"}
    assert gxa["last_hidden_state"].shape == (ids.shape[0], ids.shape[1], case.model.config.hidden_size)


def test_a_model_output_with_the_batch_in_dim_1():
    """``batch_dim`` applies to the tensors in the value's shown structure: a ModelOutput (one
    optree leaf) was passed over, its tensor left sequence-first, and refused."""
    modeling_outputs = pytest.importorskip("transformers.modeling_outputs")

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, h):
            return modeling_outputs.BaseModelOutput(last_hidden_state=self.lin(h))

    class Seq(nn.Module):
        def __init__(self, seq_first: bool):
            super().__init__()
            torch.manual_seed(0)
            self.seq_first, self.a, self.block, self.b = seq_first, nn.Linear(3, 3), Wrapped(), nn.Linear(3, 2)

        def forward(self, x):  # (B, L, 3)
            h = self.a(x).transpose(0, 1) if self.seq_first else self.a(x)
            y = self.block(h).last_hidden_state
            y = y.transpose(0, 1) if self.seq_first else y
            return self.b(torch.tanh(y).mean(1))

    sf, bf = Seq(True).double().eval(), Seq(False).double().eval()
    bf.load_state_dict(sf.state_dict())
    x = torch.randn(3, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    got = xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(sf, 1), sf.block, batch_dim=1), n_steps=4)(x)
    want = xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(bf, 1), bf.block), n_steps=4)(x)
    torch.testing.assert_close(got["last_hidden_state"], want["last_hidden_state"])


@pytest.mark.parametrize("style", ["dict", "tuple"])
def test_a_neuron_of_a_value_with_more_than_tensors_is_picked_by_a_callable(style):
    model, twin = _pair(style)
    split = xattr.at_layer(xattr.target(model, 1), model.block)
    pick = (lambda a: a["h"][:, 2]) if style == "dict" else (lambda a: a[0][:, 2])
    got = xattr.integrated_gradients(xattr.neuron(split, pick), n_steps=4)(X)
    want = xattr.integrated_gradients(xattr.neuron(xattr.at_layer(xattr.target(twin, 1), twin.block), 2), n_steps=4)(X)
    torch.testing.assert_close(got, want)
    with pytest.raises(TypeError, match="callable"):  # an int cannot say which part
        xattr.saliency(xattr.neuron(split, 2))(X)


class PositionalConstants(nn.Module):
    """``block(h, None, 2.0)``: the layer's input (``inputs=True``) is ``(h, None, 2.0)``."""

    def __init__(self, positional: bool):
        super().__init__()
        torch.manual_seed(0)
        self.positional = positional
        self.proj, self.block, self.out = nn.Linear(3, 4), _Gated(), nn.Linear(4, 2)

    def forward(self, x):
        h = self.proj(x)
        y = self.block(h, None, 2.0) if self.positional else self.block(h, scale=2.0)
        return self.out(torch.tanh(y))


class _Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x, gate=None, scale=1.0):
        return self.lin(x) * scale


@pytest.mark.parametrize("method", [m for m in LAYER_METHODS_UNDER_TEST if not m.neuron], ids=repr)
def test_a_layer_input_with_positional_constants(method):
    """The float 2.0 in the input made the methods fail; now it comes back as None, and the
    tensor's attributions are a twin's that passes the constant by keyword."""
    model, twin = PositionalConstants(True).double().eval(), PositionalConstants(False).double().eval()
    twin.load_state_dict(model.state_dict())
    split = lambda m: xattr.at_layer(xattr.target(m, 1), m.block, inputs=True)  # noqa: E731
    got = method.make(split(model), generator=0)(X)
    want = method.make(split(twin), generator=0)(X)
    assert len(got) == 3 and got[1] is None and got[2] is None
    torch.testing.assert_close(got[0], want)
