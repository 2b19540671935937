"""Guided backprop and deconvolution at clamps that are ReLUs (NOTE: [Clamps that are ReLUs] in
xattr/_src/deeplift_rules.py).

``x.clamp(min=0)``, ``clamp_min(x, 0)``, ``torch.maximum(x, zeros)`` and the other clamp spellings of
a ReLU give exactly the numbers of the same network written with ``torch.relu``: eagerly (the graph
walk), under the torch function mode (an in-place op on a view sends the call there), under vmap,
in chunks, one example at a time, for neuron attributions and for compiled models. A clamp with an
upper bound or a nonzero lower bound is no ReLU and keeps its ordinary gradient (checked against
hand-written guided backward passes); a tensor lower bound is a ReLU where it is 0.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr.rule import Deconv, Guided
from xattr.testing import check_batch_invariance, check_chunk_invariance

from compile_support import needs_compile
from rule_fuzz_nets import DeconvReLU, GuidedReLU

# every spelling of ReLU as a clamp or a threshold, as f(h); in-place ones write into a fresh layer output
RELU_CLAMPS = {
    "x.clamp(min=0)": lambda h: h.clamp(min=0),
    "torch.clamp(x, 0)": lambda h: torch.clamp(h, 0),
    "torch.clamp(min=0.0)": lambda h: torch.clamp(h, min=0.0),
    "x.clip(0)": lambda h: h.clip(0),
    "torch.clip(min=0)": lambda h: torch.clip(h, min=0),
    "x.clamp_min(0)": lambda h: h.clamp_min(0),
    "torch.clamp_min": lambda h: torch.clamp_min(h, 0.0),
    "x.clamp_(min=0)": lambda h: h.clamp_(min=0),
    "torch.clamp_": lambda h: torch.clamp_(h, min=0),
    "x.clip_(0)": lambda h: h.clip_(0),
    "x.clamp_min_(0)": lambda h: h.clamp_min_(0),
    "torch.clamp_min_": lambda h: torch.clamp_min_(h, 0),
    "torch.maximum(x, zeros)": lambda h: torch.maximum(h, torch.zeros_like(h)),
    "torch.maximum(zeros, x)": lambda h: torch.maximum(torch.zeros_like(h), h),
    "x.maximum(zeros)": lambda h: h.maximum(torch.zeros_like(h)),
    "torch.max(x, 0-d zero)": lambda h: torch.max(h, torch.zeros((), dtype=h.dtype)),
    "torch.max(zeros, x)": lambda h: torch.max(torch.zeros_like(h), h),
    "x.clamp(min=zeros)": lambda h: h.clamp(min=torch.zeros_like(h)),
    "torch.clamp_min(x, zeros)": lambda h: torch.clamp_min(h, torch.zeros(h.shape[-1], dtype=h.dtype)),
    "x.clamp_min_(zeros)": lambda h: h.clamp_min_(torch.zeros_like(h)),
    # F.threshold(x, 0, 0): x where x > 0, else 0, a ReLU too (its node sends the call to the mode)
    "F.threshold(x, 0, 0)": lambda h: F.threshold(h, 0.0, 0.0),
    "torch.threshold(x, 0, 0)": lambda h: torch.threshold(h, 0, 0),
    "nn.Threshold(0, 0)": nn.Threshold(0.0, 0.0),
    "F.threshold_(x, 0, 0)": lambda h: F.threshold_(h, 0.0, 0.0),
    "nn.Threshold(0, 0, inplace=True)": nn.Threshold(0.0, 0.0, inplace=True),
}
METHODS = {"guided": xattr.guided_backprop, "deconv": xattr.deconvolution}


class Mlp(nn.Module):
    """Linear, activation, linear, activation, linear. The first layer has no bias and the inputs
    hold zero rows, so some pre-activations are exactly 0: ReLU's ``[x > 0]`` is tested at ties,
    where torch's clamp passes the gradient and ``maximum`` half of it. ``on_view``: an in-place op
    on a view of the first layer's output (its CopySlices node sends the call to the mode)."""

    def __init__(self, act, on_view: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2, self.l3 = nn.Linear(6, 8, bias=False), nn.Linear(8, 8), nn.Linear(8, 3)
        self.act, self.on_view = act, on_view

    def forward(self, x):
        h = self.l1(x)
        if self.on_view:
            h[:, :2].mul_(1.5)
        h = self.act(h)
        return self.l3(self.act(self.l2(h)))


class Cnn(nn.Module):
    def __init__(self, act):
        super().__init__()
        torch.manual_seed(1)
        self.conv, self.lin = nn.Conv2d(2, 3, 3, padding=1), nn.Linear(3 * 5 * 5, 4)
        self.act = act

    def forward(self, x):
        return self.lin(self.act(self.conv(x)).flatten(1))


def _inputs() -> torch.Tensor:
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    x[1] = 0.0  # zero pre-activations in the first layer (no bias): ties at the ReLU's kink
    x[3, :3] = 0.0
    return x


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("spelling", sorted(RELU_CLAMPS))
def test_every_clamp_spelling_equals_the_relu_spelling(spelling, method):
    attr, act = METHODS[method], RELU_CLAMPS[spelling]
    x = _inputs()
    expected = attr(xattr.target(Mlp(torch.relu), 1))(x)
    for on_view in (False, True):  # the graph walk, and the torch function mode
        got = attr(xattr.target(Mlp(act, on_view), 1))(x)
        assert torch.equal(got, attr(xattr.target(Mlp(torch.relu, on_view), 1))(x)), (spelling, on_view)
    assert torch.equal(attr(xattr.target(Mlp(act), 1))(x), expected)
    assert not torch.allclose(expected, xattr.saliency(xattr.target(Mlp(torch.relu), 1), abs=False)(x)), "must differ from the gradient"
    model, relu = Mlp(act), Mlp(torch.relu)
    vmapped = torch.func.vmap(lambda r: attr(xattr.target(model, 1))(r[None])[0])(x)
    relu_vmapped = torch.func.vmap(lambda r: attr(xattr.target(relu, 1))(r[None])[0])(x)
    if "zero" in spelling:  # a tensor bound under vmap: the rule's torch.where lays the gradient out
        # otherwise than ReLU's backward, and the next layer's matmul rounds differently (1 ulp)
        torch.testing.assert_close(vmapped, relu_vmapped, atol=1e-7, rtol=1e-6)
    else:
        assert torch.equal(vmapped, relu_vmapped), spelling
    check_chunk_invariance(lambda c: attr(xattr.target(model, 1), chunk_size=c), x, chunk_sizes=(1, 2))
    check_batch_invariance(attr(xattr.target(model, 1)), x)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("spelling", ["x.clamp(min=0)", "x.clamp_min_(0)", "torch.maximum(zeros, x)", "x.clamp(min=zeros)",
                                      "nn.Threshold(0, 0, inplace=True)"])
def test_conv_nets_and_every_target(spelling, method):
    attr, act = METHODS[method], RELU_CLAMPS[spelling]
    x = torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(3))
    for t in (0, torch.tensor([3, 2, 1, 0]), xattr.outputs(range(4))):
        assert torch.equal(attr(xattr.target(Cnn(act), t))(x), attr(xattr.target(Cnn(F.relu), t))(x))


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("spelling", ["x.clamp_(min=0)", "x.clamp_min_(0)", "x.clamp_min_(zeros)"])
def test_in_place_on_a_view(spelling, method):
    """An in-place clamp on part of a layer's output (a CopySlices node: the torch function mode)."""
    attr, act = METHODS[method], RELU_CLAMPS[spelling]

    class OnView(Mlp):
        def forward(self, x):
            h = self.l2(self.l1(x))
            self.act(h[:, :5])
            return self.l3(h)

    x, model, relu = _inputs(), OnView(act), OnView(torch.relu_)
    assert torch.equal(attr(xattr.target(model, 0))(x), attr(xattr.target(relu, 0))(x))
    vmapped = torch.func.vmap(lambda r: attr(xattr.target(model, 0))(r[None])[0])(x)
    relu_vmapped = torch.func.vmap(lambda r: attr(xattr.target(relu, 0))(r[None])[0])(x)
    torch.testing.assert_close(vmapped, relu_vmapped, atol=1e-7, rtol=1e-6)  # 1 ulp at a tensor bound, as above


@pytest.mark.parametrize("method", sorted(METHODS))
def test_neuron_variants(method):
    attr = METHODS[method]
    x = _inputs()
    for spelling in ("x.clamp_min(0)", "torch.max(zeros, x)"):
        ruled, relu = Mlp(RELU_CLAMPS[spelling]), Mlp(torch.relu)
        got = attr(xattr.neuron(xattr.at_layer(ruled, ruled.l3), 2))(x)
        assert torch.equal(got, attr(xattr.neuron(xattr.at_layer(relu, relu.l3), 2))(x)), spelling


def test_a_user_mapping_keyed_by_clamp():
    x = _inputs()
    for rule in (Guided(), Deconv()):
        ruled = xattr.rules(Mlp(lambda h: h.clamp(min=0)), {F.relu: rule, torch.clamp: rule})
        expected = xattr.rules(Mlp(torch.relu), {F.relu: rule})
        assert torch.equal(xattr.grad(xattr.target(ruled, 0))(x), xattr.grad(xattr.target(expected, 0))(x))
        # keyed by F.relu alone, the rule stays with ReLU ops: the clamp keeps its gradient
        plain = xattr.rules(Mlp(lambda h: h.clamp(min=0)), {F.relu: rule})
        assert torch.equal(xattr.grad(xattr.target(plain, 0))(x), xattr.grad(xattr.target(Mlp(lambda h: h.clamp(min=0)), 0))(x))
    with pytest.raises(ValueError, match="never run"):
        xattr.rules(Mlp(torch.relu), {torch.sigmoid: Guided()})


# ----------------------------------------------------------------------------- clamps that are no ReLU


REFERENCE_RELU = {"guided": GuidedReLU.apply, "deconv": DeconvReLU.apply}  # written out in rule_fuzz_nets
NO_RELUS = {  # (the clamp or threshold as called, as the reference computes it: ordinary gradient)
    "clamp(0, 0.6)": lambda h: h.clamp(0, 0.6),
    "clamp(min=0.2)": lambda h: h.clamp(min=0.2),
    "clamp_min(-0.3)": lambda h: h.clamp_min(-0.3),
    "clamp_(0, 1) in place": lambda h: h.clamp_(0, 1),
    "clamp(max=0)": lambda h: h.clamp(max=0),
    "maximum(x, 0.1)": lambda h: torch.maximum(h, torch.full_like(h, 0.1)),
    "clamp(min=zeros, max=ones)": lambda h: h.clamp(min=torch.zeros_like(h), max=torch.ones_like(h)),
    # thresholds other than (0, 0) (F.threshold(x, 0, 0) is a ReLU: below)
    "threshold(x, 0.2, 0)": lambda h: F.threshold(h, 0.2, 0.0),
    "threshold(x, 0, 0.5)": lambda h: F.threshold(h, 0.0, 0.5),
    "threshold(x, -0.1, -0.1)": lambda h: F.threshold(h, -0.1, -0.1),
}


def _reference(method: str, clamp, x, target: int) -> torch.Tensor:
    """The rule method on ``relu(l1(x))`` -> clamp -> ``l3``: the ReLU by its written-out Function,
    the clamp by torch's own gradient."""
    model = Mlp(None)
    x = x.detach().requires_grad_()
    out = model.l3(clamp(model.l2(REFERENCE_RELU[method](model.l1(x)))))
    return torch.autograd.grad(out[:, target].sum(), x)[0]


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("name", sorted(NO_RELUS))
def test_a_clamp_that_is_no_relu_keeps_its_gradient(name, method):
    clamp, x = NO_RELUS[name], _inputs()

    class Mixed(Mlp):
        def forward(self, x):
            return self.l3(clamp(self.l2(torch.relu(self.l1(x)))))

    attr, model = METHODS[method], Mixed(None)
    got = attr(xattr.target(model, 1))(x)
    torch.testing.assert_close(got, _reference(method, clamp, x, 1), atol=1e-6, rtol=1e-5)
    vmapped = torch.func.vmap(lambda r: attr(xattr.target(model, 1))(r[None])[0])(x)
    torch.testing.assert_close(vmapped, got, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_tensor_bound_is_a_relu_where_it_is_zero(method):
    """``torch.maximum(x, t)``: guided/deconv at the elements where t == 0, the clamp's gradient
    ``g * [x >= t]`` at the others."""
    bound = torch.tensor([0.0, 0.3, 0.0, -0.2, 0.0, 0.0, 0.5, 0.0])
    x = _inputs()

    class Bounded(Mlp):
        def forward(self, x):
            return self.l3(torch.maximum(self.l2(torch.relu(self.l1(x))), bound))

    def by_element(h):
        ruled = REFERENCE_RELU[method](h)
        plain = torch.maximum(h, bound)
        return torch.where(bound == 0, ruled, plain)

    attr, model = METHODS[method], Bounded(None)
    expected = _reference(method, by_element, x, 2)
    torch.testing.assert_close(attr(xattr.target(model, 2))(x), expected, atol=1e-6, rtol=1e-5)
    vmapped = torch.func.vmap(lambda r: attr(xattr.target(model, 2))(r[None])[0])(x)
    torch.testing.assert_close(vmapped, expected, atol=1e-6, rtol=1e-5)


@needs_compile
@pytest.mark.parametrize("method", sorted(METHODS))
def test_compiled_models(method):
    attr = METHODS[method]
    x = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(4))
    try:
        for spelling in ("x.clamp_min(0)", "torch.maximum(zeros, x)"):
            compiled = torch.compile(Cnn(RELU_CLAMPS[spelling]), backend="aot_eager")
            assert torch.equal(attr(xattr.target(compiled, 1))(x), attr(xattr.target(Cnn(F.relu), 1))(x)), spelling
    finally:
        torch._dynamo.reset()


# ----------------------------------------------------------------------------- thresholds beside ReLU modules


@pytest.mark.parametrize("method", sorted(METHODS))
def test_thresholds_beside_relu_modules(method):
    """A net with nn.ReLU modules (the graph walk's nodes) and one zero threshold (sent to the mode)."""
    attr, x = METHODS[method], _inputs()

    class Mixed(Mlp):
        def forward(self, x):
            return self.l3(F.threshold(self.l2(torch.relu(self.l1(x))), 0.0, 0.0))

    assert torch.equal(attr(xattr.target(Mixed(None), 0))(x), attr(xattr.target(Mlp(torch.relu), 0))(x))

