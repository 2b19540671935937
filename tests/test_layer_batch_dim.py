"""``at_layer(..., batch_dim=d)`` (NOTE: [Layers with the batch in another dim]).

Every layer-registry method at a sequence-first layer split with ``batch_dim=1`` must give the
numbers of its batch-first twin (same weights, the layer built batch-first); a batch dim
anywhere must give what an explicit per-example loop with a forward hook gives; a wrong
``batch_dim`` must be refused by name. Before, ``at_layer`` had no ``batch_dim`` and these
methods refused every sequence-first layer.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr

from layer_registry import LAYER_METHODS_UNDER_TEST
from test_layer_layouts import D, D_IN, SHAPES, Encoder, Transposed, data, twins

TWINS = {"transposed": Transposed, "encoder": Encoder}
NEURON = (1, 2)  # (position, unit) of one example's batch-first activation
TOL = dict(atol=1e-5, rtol=1e-4)


def _split(model, seq_first: bool, **kw):
    return xattr.at_layer(xattr.target(model, 1), model.mid, batch_dim=1 if seq_first else 0, **kw)


def _pair(method, cls, batch, length, **kw):
    sf, bf = twins(cls)
    x = data(batch, length)
    got = method.make(_split(sf, True), index=NEURON, generator=0, **kw)(x)
    want = method.make(_split(bf, False), index=NEURON, generator=0, **kw)(x)
    return got, want


@pytest.mark.parametrize("method", LAYER_METHODS_UNDER_TEST, ids=repr)
@pytest.mark.parametrize("batch,length", SHAPES)
def test_every_layer_method_at_a_sequence_first_layer_gives_the_batch_first_twins_numbers(method, batch, length):
    got, want = _pair(method, Transposed, batch, length)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("method", LAYER_METHODS_UNDER_TEST, ids=repr)
def test_every_layer_method_at_a_sequence_first_transformer_encoder_layer(method):
    got, want = _pair(method, Encoder, 3, 4)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("method", [m for m in LAYER_METHODS_UNDER_TEST if m.chunked], ids=repr)
def test_chunked_at_a_sequence_first_layer(method):
    got, want = _pair(method, Transposed, 3, 6, chunk_size=6)  # a chunk of 6 rows == L: looks batch-first
    torch.testing.assert_close(got, want, **TOL)


OTHERS = {
    "layer_lrp": lambda s: xattr.layer_lrp(s),
    "guided_grad_cam": lambda s: xattr.guided_grad_cam(s),
    "layer_feature_permutation": lambda s: xattr.layer_feature_permutation(s, generator=0),
    "layer_deep_lift delta": lambda s: xattr.layer_deep_lift(s, return_delta=True),
    "gradient_x_activation outputs": lambda s: xattr.gradient_x_activation(
        xattr.at_layer(xattr.target(s.model.model, xattr.outputs([0, 1])), s.modules[0], batch_dim=s.batch_dim)
    ),
    "inputs=True": lambda s: xattr.layer_integrated_gradients(
        xattr.at_layer(s.model, s.modules[0], inputs=True, batch_dim=s.batch_dim), n_steps=4
    ),
}


@pytest.mark.parametrize("name", sorted(OTHERS))
@pytest.mark.parametrize("cls", sorted(TWINS))
def test_more_methods_at_a_sequence_first_layer(name, cls):
    sf, bf = twins(TWINS[cls])
    x = data(3, 5)
    got, want = OTHERS[name](_split(sf, True))(x), OTHERS[name](_split(bf, False))(x)
    torch.testing.assert_close(got, want, **TOL)


def test_layer_deep_lift_sums_to_delta_at_a_sequence_first_layer():
    sf, _ = twins(Encoder)
    sf = sf.double()
    x = data(3, 5).double()
    attr, delta = xattr.layer_deep_lift(_split(sf, True), return_delta=True)(x)
    assert attr.shape == (3, 5, 4)
    assert delta.abs().max() < 1e-10
    f = xattr.target(sf, 1)
    torch.testing.assert_close(attr.flatten(1).sum(1), f(x) - f(torch.zeros_like(x)))


class Lstm(nn.Module):
    """An nn.LSTM, batch_first as given, read at its output sequence and its last hidden state."""

    def __init__(self, seq_first: bool):
        super().__init__()
        self.seq_first = seq_first
        self.mid = nn.LSTM(3, 4, num_layers=2, batch_first=not seq_first)
        self.out = nn.Linear(8, 2)

    def forward(self, x):  # x: (B, L, 3)
        o, (h, _) = self.mid(x.transpose(0, 1) if self.seq_first else x)
        o = o.transpose(0, 1) if self.seq_first else o
        return self.out(torch.cat([o.mean(1), h[-1]], -1))


LSTM_METHODS = {
    "layer_integrated_gradients": lambda s: xattr.layer_integrated_gradients(s, n_steps=4),
    "gradient_x_activation": lambda s: xattr.gradient_x_activation(s),
    "internal_influence": lambda s: xattr.internal_influence(s, n_steps=4),
    "layer_deep_lift": lambda s: xattr.layer_deep_lift(s),
    "layer_activation": lambda s: xattr.layer_activation(s),
}


@pytest.mark.parametrize("name", sorted(LSTM_METHODS))
def test_an_lstms_output_and_states_with_one_batch_dim_each(name):
    """Sequence-first: every tensor of (output, (h_n, c_n)) holds the batch in dim 1 (batch_dim=1);
    batch-first: the output in dim 0, the states in dim 1 (batch_dim=(0, 1))."""
    torch.manual_seed(0)
    sf, bf = Lstm(True).double().eval(), Lstm(False).double().eval()
    bf.load_state_dict(sf.state_dict())
    x = torch.randn(3, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = LSTM_METHODS[name](xattr.at_layer(xattr.target(sf, 1), sf.mid, batch_dim=1))(x)
    want = LSTM_METHODS[name](xattr.at_layer(xattr.target(bf, 1), bf.mid, batch_dim=(0, 1)))(x)
    assert got[0].shape == (3, 5, 4) and got[1][0].shape == (3, 2, 4)
    for g, w in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        torch.testing.assert_close(g, w)


def test_a_batch_first_lstms_states_are_refused_without_batch_dim():
    torch.manual_seed(0)
    bf = Lstm(False).double().eval()
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"batch_dim=1"):
        xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(bf, 1), bf.mid))(x)


class Permuted(nn.Module):
    """proj -> permute(order) -> tanh(mid) over the last dim -> undo the permutation -> out:
    ``mid``'s output holds the batch at ``order.index(0)``."""

    def __init__(self, order: tuple):
        super().__init__()
        self.order = order
        self.proj, self.mid, self.out = nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):  # (B, P, Q, 2)
        h = self.proj(x).permute(*self.order, 3)
        h = torch.tanh(self.mid(h)).permute(*[self.order.index(i) for i in range(3)], 3)
        return self.out(h.mean((1, 2)))


def _looped_gradient_x_activation(model, x, d):
    """The slow reference: one example at a time, the layer's output caught by a forward hook,
    its gradient by autograd, the example's slice taken out of dim d."""
    rows = []
    for i in range(x.shape[0]):
        caught = []
        handle = model.mid.register_forward_hook(lambda mod, inp, out: caught.append(out))
        try:
            y = model(x[i : i + 1])[0, 1]
        finally:
            handle.remove()
        (g,) = torch.autograd.grad(y, caught[0])
        rows.append((caught[0] * g).select(d, 0).detach())
    return torch.stack(rows)


@settings(max_examples=25, deadline=None)
@given(order=st.permutations([0, 1, 2]), batch=st.integers(1, 4), p=st.integers(1, 4), q=st.integers(1, 4),
       negative=st.booleans())  # fmt: skip
def test_gradient_x_activation_with_the_batch_anywhere_equals_a_looped_reference(order, batch, p, q, negative):
    torch.manual_seed(3)
    model = Permuted(tuple(order)).double().eval()
    x = torch.randn(batch, p, q, 2, dtype=torch.float64)
    d = order.index(0)
    spec = d - 4 if negative else d  # the activation is 4-d
    got = xattr.gradient_x_activation(xattr.at_layer(xattr.target(model, 1), model.mid, batch_dim=spec))(x)
    torch.testing.assert_close(got, _looped_gradient_x_activation(model, x, d))


@settings(max_examples=15, deadline=None)
@given(order=st.permutations([0, 1, 2]), batch=st.integers(1, 3), p=st.integers(1, 3), q=st.integers(1, 3))
def test_layer_integrated_gradients_with_the_batch_anywhere_is_complete_on_an_affine_model(order, batch, p, q):
    """With ``mid`` affine the head is affine in h: layer IG's attributions sum to f(x) - f(x with
    h at its value for the input baseline 0), whichever dim holds the batch."""
    torch.manual_seed(4)
    model = Permuted(tuple(order)).double().eval()
    model.forward = lambda x: model.out(  # tanh removed
        model.mid(model.proj(x).permute(*order, 3)).permute(*[order.index(i) for i in range(3)], 3).mean((1, 2))
    )
    x = torch.randn(batch, p, q, 2, dtype=torch.float64)
    split = xattr.at_layer(xattr.target(model, 1), model.mid, batch_dim=order.index(0))
    attr = xattr.layer_integrated_gradients(split, n_steps=3)(x)
    h = split.act(x)
    assert attr.shape == h.shape and h.shape[0] == batch
    h0 = split.act(torch.zeros_like(x))
    torch.testing.assert_close(attr.flatten(1).sum(1), split.head(h, x) - split.head(h0, x))


def test_gradients_of_an_attribution_at_a_sequence_first_layer_match_the_twin():
    sf, bf = twins(Encoder)
    x = data(2, 3)
    go = lambda m, s: torch.func.grad(lambda x: xattr.layer_integrated_gradients(_split(m, s), n_steps=3)(x).sum())(x)  # noqa: E731
    torch.testing.assert_close(go(sf, True), go(bf, False), **TOL)


def test_several_layers_and_every_call_take_the_same_batch_dim():
    sf, bf = twins(Transposed)
    x = data(3, 5)
    many = lambda m, d: xattr.gradient_x_activation(xattr.at_layer(xattr.target(m, 1), [m.mid], batch_dim=d))(x)  # noqa: E731
    every = lambda m, d: xattr.layer_integrated_gradients(  # noqa: E731
        xattr.at_layer(xattr.target(m, 1), m.mid, call_index="all", batch_dim=d), n_steps=3
    )(x)
    torch.testing.assert_close(many(sf, 1), many(bf, 0))
    torch.testing.assert_close(every(sf, 1), every(bf, 0))


@pytest.mark.parametrize(
    "spec,error,match",
    [
        ("1", TypeError, "batch_dim must be an int"),
        (True, TypeError, "batch_dim must be an int"),
        (1.0, TypeError, "batch_dim must be an int"),
        (3, ValueError, r"shape \(5, 3, 4\), which has no dim 3"),
        ((1, 1), ValueError, r"a prefix of its structure\), which is Tensor\(5, 3, 4\)"),
    ],
)
def test_a_wrong_batch_dim_is_refused_by_name(spec, error, match):
    sf, _ = twins(Transposed)
    with pytest.raises(error, match=match):
        xattr.gradient_x_activation(xattr.at_layer(xattr.target(sf, 1), sf.mid, batch_dim=spec))(data(3, 5))


def test_the_refusal_without_batch_dim_names_it():
    sf, _ = twins(Transposed)
    with pytest.raises(ValueError, match=r"at_layer\(\.\.\., batch_dim=1\)"):
        xattr.grad_cam(xattr.at_layer(xattr.target(sf, 1), sf.mid))(data(3, 5))
    with pytest.raises(ValueError, match=r"batch_dim=1"):
        xattr.layer_deep_lift(xattr.at_layer(xattr.target(sf, 1), sf.mid))(data(3, 5))


class Merged(nn.Module):
    """proj -> reshape(-1, D) -> tanh(mid) -> reshape back -> mean -> out, as OPT's MLP: ``mid``
    sees each example's positions together, ``(B * L, D)`` (``"batch-major"``); with
    ``"sequence-first"`` the merge is of an ``(L, B, D)`` tensor, interleaving the examples;
    ``None`` keeps ``(B, L, D)``, the twin."""

    def __init__(self, merge):
        super().__init__()
        self.merge = merge
        self.proj, self.mid, self.out = nn.Linear(D_IN, D), nn.Linear(D, D), nn.Linear(D, 2)

    def forward(self, x):  # (B, L, D_IN)
        e = self.proj(x)
        if self.merge == "sequence-first":
            e = e.transpose(0, 1)
        shape = e.shape
        h = torch.tanh(self.mid(e if self.merge is None else e.reshape(-1, shape[-1])))
        h = h.reshape(shape)
        if self.merge == "sequence-first":
            h = h.transpose(0, 1)
        return self.out(h.mean(1))



def _merged_twins(merge="batch-major"):
    torch.manual_seed(0)
    a, b = Merged(merge).double().eval(), Merged(None).double().eval()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("method", LAYER_METHODS_UNDER_TEST, ids=repr)
@pytest.mark.parametrize("batch,length", SHAPES)
def test_every_layer_method_at_a_merged_layer_gives_the_unmerged_twins_numbers(method, batch, length):
    merged, twin = _merged_twins()
    x = data(batch, length).double()
    got = method.make(xattr.at_layer(xattr.target(merged, 1), merged.mid, batch_dim="merged"), index=NEURON, generator=0)(x)
    want = method.make(xattr.at_layer(xattr.target(twin, 1), twin.mid), index=NEURON, generator=0)(x)
    torch.testing.assert_close(got, want)


MERGED_OTHERS = {
    "layer_lrp": lambda s: xattr.layer_lrp(s),
    "layer_deep_lift exact": lambda s: xattr.layer_deep_lift(s, mapping=xattr.rule.exact_deep_lift_rules()),
    "layer_feature_permutation": lambda s: xattr.layer_feature_permutation(s, generator=0),
    "layer_activation": lambda s: xattr.layer_activation(s),
    "gradient_x_activation": lambda s: xattr.gradient_x_activation(s),
    "layer_integrated_gradients": lambda s: xattr.layer_integrated_gradients(s, n_steps=4),
    "neuron saliency": lambda s: xattr.saliency(xattr.neuron(s, NEURON)),
}


@pytest.mark.parametrize("name", sorted(MERGED_OTHERS))
def test_more_methods_at_a_merged_layer(name):
    merged, twin = _merged_twins()
    x = data(3, 5).double()
    got = MERGED_OTHERS[name](xattr.at_layer(xattr.target(merged, 1), merged.mid, batch_dim="merged"))(x)
    want = MERGED_OTHERS[name](xattr.at_layer(xattr.target(twin, 1), twin.mid))(x)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", sorted(MERGED_OTHERS))
@pytest.mark.parametrize("length", [5, 3])
def test_a_sequence_first_merge_is_refused_as_merged(name, length):
    """Its ``(L * B, D)`` has the shape of a batch-major merge; read as one, each example would
    get rows of the others (measured without the check: layer IG off by 0.058, its largest
    attribution 0.032)."""
    interleaved, _ = _merged_twins("sequence-first")
    split = xattr.at_layer(xattr.target(interleaved, 1), interleaved.mid, batch_dim="merged")
    with pytest.raises(ValueError, match="the rows are interleaved"):
        MERGED_OTHERS[name](split)(data(3, length).double())


def test_a_value_that_does_not_merge_the_batch_is_refused_as_merged():
    sf, _ = twins(Transposed)  # mid's (L, B, D) = (5, 3, 4) for 3 rows: 5 is no multiple of 3
    with pytest.raises(ValueError, match=r"whose dim 0 is not a multiple of the call's \d+ rows"):
        xattr.gradient_x_activation(xattr.at_layer(xattr.target(sf, 1), sf.mid, batch_dim="merged"))(data(3, 5))


def test_opts_mlp_layer_integrated_gradients_equals_captums():
    """OPT runs its MLP on ``hidden.reshape(-1, D)``: Captum's LayerIntegratedGradients pairs
    those rows right (batch-major) and returns them merged, ``(B * L, ffn)``."""
    pytest.importorskip("transformers")
    captum_attr = pytest.importorskip("captum.attr")
    import hf_zoo

    case = hf_zoo.ZOO["opt:eager"]()
    ids, mask, ref = case.inputs()
    fc1 = case.model.decoder.layers[0].fc1
    ours = xattr.layer_integrated_gradients(xattr.at_layer(case.f, fc1, batch_dim="merged"), baselines=ref, n_steps=8)(ids, mask)
    theirs = captum_attr.LayerIntegratedGradients(case.f, fc1).attribute(ids, baselines=ref, additional_forward_args=(mask,), n_steps=8)
    assert ours.shape == (ids.shape[0], ids.shape[1], theirs.shape[-1])
    torch.testing.assert_close(ours.flatten(0, 1), theirs, atol=1e-7, rtol=1e-6)


def test_opts_mlp_layer_deep_lift_pairs_each_example_with_its_reference():
    pytest.importorskip("transformers")
    import hf_zoo

    case = hf_zoo.ZOO["opt:eager"]()
    ids, mask, ref = case.inputs()
    split = xattr.at_layer(case.f, case.model.decoder.layers[0].fc1, batch_dim="merged")
    exact = xattr.rule.exact_deep_lift_rules()
    both = xattr.layer_deep_lift(split, baselines=ref, mapping=exact)(ids, mask)
    alone = torch.cat([xattr.layer_deep_lift(split, baselines=ref[i : i + 1], mapping=exact)(ids[i : i + 1], mask[i : i + 1])
                       for i in range(ids.shape[0])])  # fmt: skip
    torch.testing.assert_close(both, alone)
