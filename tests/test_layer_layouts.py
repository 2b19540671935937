"""Layer and neuron methods at a sequence-first layer, (L, B, D) (NOTE: [Batch-first layers]).

Each model has a batch-first twin with the same weights; at the split layer the twin's activation
is the sequence-first one transposed. Methods that treat every unit alike (layer_activation,
gradient_x_activation, layer_lrp) must give the twin's attributions transposed; every method that
reads the batch in dim 0 must refuse the layout by name, also when L == B (or L == the rows of a
chunk), where the shapes look batch-first and the old code gave wrong numbers without an error.
"""

import pytest
import torch
from torch import nn

import xattr

D_IN, D, C = 3, 4, 2
LAYOUT = r"dim 0 is not the batch"


class Transposed(nn.Module):
    """proj -> [transpose(0, 1)] -> mid -> tanh -> [transpose(0, 1)] -> mean over positions -> out."""

    def __init__(self, seq_first: bool):
        super().__init__()
        self.seq_first = seq_first
        self.proj, self.mid, self.out = nn.Linear(D_IN, D), nn.Linear(D, D), nn.Linear(D, C)

    def forward(self, x):  # x: (B, L, D_IN)
        e = self.proj(x)
        e = e.transpose(0, 1) if self.seq_first else e
        h = torch.tanh(self.mid(e))
        h = h.transpose(0, 1) if self.seq_first else h
        return self.out(h.mean(1))


class Encoder(nn.Module):
    """An nn.TransformerEncoderLayer, batch_first as given, between two linear layers."""

    def __init__(self, seq_first: bool):
        super().__init__()
        self.seq_first = seq_first
        self.proj, self.out = nn.Linear(D_IN, D), nn.Linear(D, C)
        self.mid = nn.TransformerEncoderLayer(D, 2, 8, dropout=0.0, batch_first=not seq_first)

    def forward(self, x):
        e = self.proj(x)
        e = e.transpose(0, 1) if self.seq_first else e
        h = self.mid(e)
        h = h.transpose(0, 1) if self.seq_first else h
        return self.out(torch.tanh(h).mean(1))


def twins(cls):
    torch.manual_seed(0)
    sf = cls(True).eval()
    bf = cls(False).eval()
    bf.load_state_dict(sf.state_dict())
    return sf, bf


def data(batch, length):
    return torch.randn(batch, length, D_IN, generator=torch.Generator().manual_seed(1))


SHAPES = [(3, 5), (3, 3), (3, 6)]  # (B, L): L != B, L == B (looks batch-first), L == 2B


def split(m, **kw):
    return xattr.at_layer(xattr.target(m, 1), m.mid, **kw)


REFUSING = {
    "layer_integrated_gradients": lambda m: xattr.layer_integrated_gradients(split(m), n_steps=4),
    "layer_integrated_gradients inputs=True": lambda m: xattr.layer_integrated_gradients(split(m, inputs=True), n_steps=4),
    "layer_integrated_gradients chunked": lambda m: xattr.layer_integrated_gradients(split(m), n_steps=4, chunk_size=6),
    "conductance": lambda m: xattr.conductance(split(m), n_steps=4),
    "internal_influence": lambda m: xattr.internal_influence(split(m), n_steps=4),
    "internal_influence chunked": lambda m: xattr.internal_influence(split(m), n_steps=4, chunk_size=6),
    "grad_cam": lambda m: xattr.grad_cam(split(m), relu=False),
    "guided_grad_cam": lambda m: xattr.guided_grad_cam(split(m)),
    "layer_gradient_shap": lambda m: lambda x: xattr.layer_gradient_shap(
        split(m), baselines=torch.zeros((2,) + x.shape[1:]), n_samples=2, generator=0
    )(x),
    "layer_feature_ablation": lambda m: xattr.layer_feature_ablation(split(m)),
    "layer_feature_permutation": lambda m: xattr.layer_feature_permutation(split(m), generator=0),
    "neuron saliency": lambda m: xattr.saliency(xattr.neuron(xattr.at_layer(m, m.mid), (1, 2)), abs=False),
    "neuron integrated_gradients": lambda m: xattr.integrated_gradients(xattr.neuron(xattr.at_layer(m, m.mid), (1, 2)), n_steps=4),
    "neuron outputs": lambda m: xattr.saliency(xattr.neuron(xattr.at_layer(m, m.mid), xattr.outputs([(0, 1), (1, 2)]))),
    "neuron_conductance": lambda m: xattr.neuron_conductance(split(m), (1, 2), n_steps=4),
}


@pytest.mark.parametrize("name", sorted(REFUSING))
@pytest.mark.parametrize("batch,length", SHAPES)
def test_a_method_that_reads_the_batch_in_dim_0_refuses_a_sequence_first_layer(name, batch, length):
    """Before: unclear errors (``baselines of shape (0, 6, 4) does not broadcast``, ``Mismatch in
    shape: grad_output[0]``, ``mat1 and mat2 shapes cannot be multiplied``) or, where the shapes
    fit, wrong numbers: Grad-CAM's map mixed examples (off by 0.021 of 0.077 with L == B), a
    neuron's saliency was taken at position 1 of every example (off by 0.16 of 0.16), internal
    influence and layer IG with a chunk of L rows returned (B, L, D) numbers of the wrong units."""
    sf, bf = twins(Transposed)
    x = data(batch, length)
    make = REFUSING[name]
    make(bf)(x)  # the batch-first twin works
    with pytest.raises(ValueError, match=LAYOUT):
        make(sf)(x)


@pytest.mark.parametrize("name", ["grad_cam", "neuron saliency", "layer_feature_ablation", "layer_integrated_gradients"])
@pytest.mark.parametrize("length", [3, 5])
def test_a_sequence_first_transformer_encoder_layer_is_refused(name, length):
    sf, bf = twins(Encoder)
    x = data(3, length)
    REFUSING[name](bf)(x)
    with pytest.raises(ValueError, match=LAYOUT):
        REFUSING[name](sf)(x)


AGNOSTIC = {
    "layer_activation": lambda m: xattr.layer_activation(split(m)),
    "gradient_x_activation": lambda m: xattr.gradient_x_activation(split(m)),
    "layer gradient": lambda m: xattr.gradient_x_activation(split(m), multiply=False),
    "per-example targets": lambda m: xattr.gradient_x_activation(
        xattr.at_layer(xattr.target(m, torch.tensor([0, 1, 1])), m.mid)
    ),
    "layer_lrp": lambda m: xattr.layer_lrp(split(m)),
}


@pytest.mark.parametrize("name", sorted(AGNOSTIC))
@pytest.mark.parametrize("batch,length", SHAPES)
def test_a_method_that_treats_units_alike_gives_the_twins_numbers_transposed(name, batch, length):
    sf, bf = twins(Transposed)
    x = data(batch, length)
    got, want = AGNOSTIC[name](sf)(x), AGNOSTIC[name](bf)(x)
    torch.testing.assert_close(got.transpose(0, 1), want)


def test_many_outputs_at_a_sequence_first_layer_put_k_after_dim_0():
    sf, bf = twins(Encoder)
    x = data(3, 3)
    many = lambda m: xattr.gradient_x_activation(xattr.at_layer(xattr.target(m, xattr.outputs([0, 1])), m.mid))
    got, want = many(sf)(x), many(bf)(x)  # (L, K, B, D) and (B, K, L, D)
    torch.testing.assert_close(got.permute(2, 1, 0, 3), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["grad_cam", "neuron saliency", "layer_feature_ablation", "internal_influence chunked"])
def test_a_batch_first_layer_whose_shape_could_be_sequence_first_is_accepted(name):
    """(B, L, D) with L == B (or L == the rows of a chunk) is run once more to tell the layouts
    apart: a batch-first layer passes and each example's numbers are its own."""
    _, bf = twins(Transposed)
    x = data(3, 3 if "chunked" not in name else 6)
    whole = REFUSING[name](bf)(x)
    alone = torch.cat([REFUSING[name](bf)(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(whole, alone, atol=1e-6, rtol=1e-5)
