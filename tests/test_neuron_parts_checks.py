"""``xattr.neuron(..., part=...)``: the batch-first check reads the chosen part only (an LSTM's
states), parts of several layers, named tuples, ModelOutputs and plain functions, a callable
with a part, the errors, the model left as it was, and Captum's neuron classes given the part as
a callable selector."""

import warnings

import pytest
import torch
from test_neuron_parts import D, METHODS, Keyed, Lstm, Nested, Net, Pair, data, grad_by_hand
from torch import nn

import xattr


def test_the_lstms_states_are_not_checked_for_a_neuron_in_its_output():
    """NOTE: [Neurons in one part of a layer's value]: the states (layers, B, H) hold the batch in
    dim 1; a neuron in the output reads none of them, so the default split serves it, while a
    callable (which sees every tensor) and a neuron in a state are refused there."""
    m = Lstm()
    x = data((3, 5, 3))
    split = xattr.at_layer(m, m.block)
    got = xattr.saliency(xattr.neuron(split, (2, 1), part=0), abs=False)(x)
    torch.testing.assert_close(got, grad_by_hand(m, x, 0, (2, 1)))
    with pytest.raises(ValueError, match=r"batch in dim 0.*batch_dim"):
        xattr.saliency(xattr.neuron(split, lambda v: v[0][:, 2, 1]))(x)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\) for 3 rows.*batch_dim"):
        xattr.saliency(xattr.neuron(split, (1, 3), part=(1, 0)))(x)


def test_a_state_that_only_looks_batch_first_is_refused_and_the_output_is_not():
    """layers == B == L: h_n is (B, B, H) and passes a shape check; the probe on doubled rows
    (run on the chosen part alone) tells it from the output, (B, B, H) as well but batch-first."""
    m = Lstm(layers=3)
    x = data((3, 3, 3))
    split = xattr.at_layer(m, m.block)
    with pytest.raises(ValueError, match=r"only looked batch-first"):
        xattr.saliency(xattr.neuron(split, (1, 3), part=(1, 0)))(x)
    got = xattr.saliency(xattr.neuron(split, (1, 3), part=0), abs=False)(x)
    torch.testing.assert_close(got, grad_by_hand(m, x, 0, (1, 3)))


def test_parts_of_several_layers_a_named_tuple_and_a_plain_function():
    m = Net(Nested)
    x = data((4, 4), seed=8)
    want = xattr.saliency(xattr.neuron(xattr.at_layer(m, m.block), 1, part=(1, 0)), abs=False)(x)
    two_layers = xattr.at_layer(m, [m.inp, m.block])  # act: (inp's output, block's value)
    torch.testing.assert_close(xattr.saliency(xattr.neuron(two_layers, 1, part=(1, 1, 0)), abs=False)(x), want)
    plain = lambda v: m.block(m.relu(m.inp(v)))  # noqa: E731  (no split: part applies to its return)
    torch.testing.assert_close(xattr.saliency(xattr.neuron(plain, 1, part=(1, 0)), abs=False)(x), want)

    from collections import namedtuple

    Out = namedtuple("Out", ["first", "second"])

    class Named(Nested):
        def values(self, x, relu):
            a, (b, c) = super().values(x, relu)
            return Out(a, (b, c))

    named = Net(Named)
    got = xattr.saliency(xattr.neuron(xattr.at_layer(named, named.block), 1, part=("second", 0)), abs=False)(x)
    torch.testing.assert_close(got, want)


def test_a_model_output_is_read_by_key():
    modeling_outputs = pytest.importorskip("transformers.modeling_outputs")

    class Hf(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 3)

        def forward(self, x):
            h = torch.tanh(self.lin(x))
            return modeling_outputs.BaseModelOutput(last_hidden_state=h, hidden_states=(x, h))

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.inp, self.block = nn.Linear(4, 5), Hf()
            self.to(D).eval()

        def forward(self, x):
            return self.block(self.inp(x)).last_hidden_state.sum(-1, keepdim=True)

    m = Wrap()
    x = data((3, 4))
    got = xattr.saliency(xattr.neuron(xattr.at_layer(m, m.block), 2, part="last_hidden_state"), abs=False)(x)
    by_position = xattr.saliency(xattr.neuron(xattr.at_layer(m, m.block), 2, part=("hidden_states", 1)), abs=False)(x)
    reference = xattr.saliency(lambda v: torch.tanh(m.block.lin(m.inp(v)))[:, 2], abs=False)(x)
    torch.testing.assert_close(got, reference)
    torch.testing.assert_close(by_position, reference)


def test_errors_name_the_parts_and_the_fix():
    m = Net(Nested)
    x = data((4, 4))
    split = xattr.at_layer(m, m.block)
    parts = r"\(0: \(4, 4\), \(1, 0\): \(4, 3\), \(1, 1\): \(4, 2\)\)"  # each with its shape
    with pytest.raises(TypeError, match=rf"returns a tuple of 2 parts {parts}.*part=0.*callable"):
        xattr.saliency(xattr.neuron(split, 1))(x)
    with pytest.raises(TypeError, match=r"returns a tuple of 2 parts.*part="):  # K neurons need one tensor too
        xattr.saliency(xattr.neuron(split, xattr.outputs([0, 1])))(x)
    with pytest.raises(ValueError, match=r"part=\(1, 2\).*no part 2 at 1; its parts: 0: \(4, 4\)"):
        xattr.saliency(xattr.neuron(split, 1, part=(1, 2)))(x)
    with pytest.raises(ValueError, match=r"part=1 of the layer's value is a tuple, not a tensor.*part=\(1, 0\)"):
        xattr.saliency(xattr.neuron(split, 1, part=1))(x)
    with pytest.raises(ValueError, match=r"part=\(0, 1\) goes past a tensor"):
        xattr.saliency(xattr.neuron(split, 1, part=(0, 1)))(x)
    with pytest.raises(ValueError, match=r"part=0 given, but the layer's output is one tensor of shape \(4, 5\): leave part out"):
        xattr.saliency(xattr.neuron(xattr.at_layer(m, m.inp), 1, part=0))(x)
    keyed = Net(Keyed)
    ksplit = xattr.at_layer(keyed, keyed.block)
    keys = r"\('a': \(4, 4\), 'n': not a tensor, 'b': \(4, 3\)\)"
    with pytest.raises(TypeError, match=rf"returns a dict of 3 parts {keys}.*part='a'"):
        xattr.saliency(xattr.neuron(ksplit, 1))(x)
    with pytest.raises(ValueError, match=r"part='n' of the layer's value is not a tensor"):
        xattr.saliency(xattr.neuron(ksplit, 1, part="n"))(x)
    with pytest.raises(ValueError, match=r"no part 'c'; its parts: 'a': \(4, 4\)"):
        xattr.saliency(xattr.neuron(ksplit, 1, part="c"))(x)
    with pytest.raises(ValueError, match=r"part=\(\) names the whole value"):
        xattr.neuron(split, 1, part=())
    for bad in (True, [1, 0], slice(0, 1)):
        with pytest.raises(TypeError, match=r"part must be an int position, a dict key, or a tuple"):
            xattr.neuron(split, 1, part=bad)
    with pytest.raises(ValueError, match=r"part=\(1, 0\) goes past a tensor: the function's value at 1 is a tensor"):
        xattr.saliency(xattr.neuron(lambda v: m.block(m.relu(m.inp(v)))[1], 1, part=(1, 0)))(x)


def test_a_callable_with_a_part_receives_that_tensor():
    m = Net(Nested)
    x = data((4, 4))
    split = xattr.at_layer(m, m.block)
    got = xattr.saliency(xattr.neuron(split, lambda t: t.sum(1), part=(1, 0)), abs=False)(x)
    want = xattr.saliency(xattr.neuron(split, lambda v: v[1][0].sum(1)), abs=False)(x)
    torch.testing.assert_close(got, want)


def test_the_model_and_the_input_are_left_unchanged():
    m = Lstm()
    m.inp.train()  # a mixed mode, to see it kept
    modes = {n: mod.training for n, mod in m.named_modules()}
    state = {k: v.clone() for k, v in m.state_dict().items()}
    x = data((3, 5, 3))
    x0 = x.clone()
    split = xattr.at_layer(m, m.block, batch_dim=(0, 1))
    for method in METHODS.values():
        for part, index in ((0, (2, 1)), ((1, 0), (1, 3)), ((1, 1), xattr.outputs([(0, 0), (1, 2)]))):
            method(xattr.neuron(split, index, part=part))(x)
    with pytest.raises(ValueError):
        xattr.saliency(xattr.neuron(split, 1, part=(1, 5)))(x)  # an error mid-call leaves nothing behind either
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    for mod in m.modules():
        assert not (mod._forward_hooks or mod._forward_pre_hooks or mod._backward_hooks), type(mod).__name__
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in m.parameters())
    assert torch.equal(x, x0) and not x.requires_grad


@pytest.mark.parametrize("cls", ["NeuronGradient", "NeuronIntegratedGradients", "NeuronDeepLift", "NeuronGuidedBackprop",
                                 "NeuronFeatureAblation"])  # fmt: skip
def test_captum_adapters_take_the_part_as_a_callable_selector(cls):
    """Captum's ``neuron_selector`` has no part: a callable picks it there (Captum refuses an
    index on a layer of several tensors). The adapters with it equal ``xattr.neuron(part=...)``
    and Captum itself on a flat tuple (Captum fails on a nested one: 'tuple' has no 'clone')."""
    captum_attr = pytest.importorskip("captum.attr")
    from xattr.compat import captum as compat

    m = Net(Pair)
    x = data((5, 4), seed=9)
    ours = getattr(compat, cls)(m, m.block).attribute(x, neuron_selector=lambda v: v[1][:, 2])
    method = {
        "NeuronGradient": METHODS["saliency"], "NeuronIntegratedGradients": lambda f: xattr.integrated_gradients(f),
        "NeuronDeepLift": METHODS["deep_lift"], "NeuronGuidedBackprop": METHODS["guided_backprop"],
        "NeuronFeatureAblation": METHODS["feature_ablation"],
    }[cls]  # fmt: skip
    torch.testing.assert_close(ours, method(xattr.neuron(xattr.at_layer(m, m.block), 2, part=1))(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum's "Input Tensor 0 did not already require gradients"
        theirs = getattr(captum_attr, cls)(m, m.block).attribute(x.clone(), neuron_selector=lambda v: v[1][:, 2])
    torch.testing.assert_close(ours, theirs.detach(), atol=1e-7, rtol=1e-6)


def test_neuron_conductance_takes_a_part():
    """Part (1, 1) of Nested's value is the output of its module l3: splitting there gives the same
    neuron with an int index, and a callable gives it too; K neurons in a part equal K calls; an
    index alone on the tuple is refused with the parts listed, and part= named."""
    m = Net(Nested)
    x = data((4, 4), seed=10)
    f = xattr.target(m, 1)
    split = xattr.at_layer(f, m.block)
    got = xattr.neuron_conductance(split, 1, part=(1, 1), n_steps=8)(x)
    want = xattr.neuron_conductance(xattr.at_layer(f, m.block.l3), 1, n_steps=8)(x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(xattr.neuron_conductance(split, lambda v: v[1][1][:, 1], n_steps=8)(x), want)
    assert got.abs().sum() > 0
    many = xattr.neuron_conductance(split, xattr.outputs([0, 1]), part=(1, 1), n_steps=8)(x)
    for k in (0, 1):
        torch.testing.assert_close(many[:, k], xattr.neuron_conductance(split, k, part=(1, 1), n_steps=8)(x))
    with pytest.raises(TypeError, match=r"part=.*callable"):  # an index alone cannot say which part
        xattr.neuron_conductance(split, 1, n_steps=8)(x)
    with pytest.raises(ValueError, match="no part 5"):
        xattr.neuron_conductance(split, 1, part=(1, 5), n_steps=8)(x)
