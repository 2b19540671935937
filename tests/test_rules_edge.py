"""Edges of the rule-based methods: what they refuse, and what they get right at the borders.

Every rule-based method, DeepLift's included, runs under torch.func gradient transforms (their
derivatives: tests/test_attribution_derivatives*.py); activation checkpointing; LRP's input-layer rules beside other paths and
inputs; mapping keys checked against the model; merge_batch_norm on models fx cannot trace in
one piece; DeepLift's max-pool rule under vmap; adaptive max-pools; empty baseline
distributions; grouped-query attention.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, jacfwd, jacrev, jvp, vjp, vmap
from torch.utils.checkpoint import checkpoint

import xattr
from xattr.rule import Flat, Gamma, WSquare, ZBox, deep_lift_rules, lrp_rules
from xattr.testing.strategies import random_tensor

D = torch.float64


def _seeded(seed: int, make):
    torch.manual_seed(seed)
    return make().double().eval()


def convnet() -> nn.Sequential:
    """A ruled op (the first ReLU) feeds a later nonlinearity (tanh): where differentiating a
    rule-based attribution goes wrong."""
    return _seeded(0, lambda: nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1),
                                            nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)))  # fmt: skip


X = random_tensor((2, 1, 4, 4), seed=1)


def rule_methods(model: nn.Module) -> dict:
    f = xattr.target(model, 1)
    split = xattr.at_layer(f, model[2])
    dist = random_tensor((3, 1, 4, 4), seed=2)
    return {
        "guided_backprop": xattr.guided_backprop(f),
        "deconvolution": xattr.deconvolution(f),
        "guided_grad_cam": xattr.guided_grad_cam(split),
        "deep_lift": xattr.deep_lift(f, baselines=0.1),
        "deep_lift_shap": xattr.deep_lift_shap(f, baselines=dist),
        "layer_deep_lift": xattr.layer_deep_lift(split),
        "layer_deep_lift_shap": xattr.layer_deep_lift_shap(split, baselines=dist),
        "lrp": xattr.lrp(f),
        "layer_lrp": xattr.layer_lrp(split),
    }


METHODS = list(rule_methods(convnet()))

OUTER = {
    "grad": lambda s, x: grad(s)(x),
    "vjp": lambda s, x: (lambda out, pull: pull(torch.ones_like(out)))(*vjp(s, x)),
    "jacrev": lambda s, x: jacrev(s)(x),
    "jvp": lambda s, x: jvp(s, (x,), (x,)),
    "jacfwd": lambda s, x: jacfwd(s)(x),
    "vmap(grad)": lambda s, x: vmap(grad(lambda xi: s(xi[None])))(x),
    "grad(vmap)": lambda s, x: grad(lambda x: vmap(lambda xi: s(xi[None]))(x).sum())(x),
}


# --------------------------------------------------------------------------- outer derivatives


@pytest.mark.parametrize("outer", list(OUTER))
@pytest.mark.parametrize("name", METHODS)
def test_rule_based_methods_run_under_an_outer_derivative(name, outer):
    """The DeepLift methods refused every transform here before (NotImplementedError); their
    derivatives are checked against central differences in
    tests/test_attribution_derivatives_deeplift.py, the others' in
    tests/test_attribution_derivatives.py; here every transform runs on the CNN, finite."""
    fn = rule_methods(convnet())[name]
    out = OUTER[outer](lambda x: fn(x).sum(), X)
    assert all(torch.isfinite(t).all() for t in torch.utils._pytree.tree_leaves(out))


@pytest.mark.parametrize("name", METHODS)
def test_rule_based_methods_under_vmap_equal_the_batch(name):
    fn = rule_methods(convnet())[name]
    torch.testing.assert_close(vmap(lambda xi: fn(xi[None])[0])(X), fn(X))


def test_a_ruled_gradient_inside_a_second_gradient_transform_is_refused():
    model = convnet()
    ruled = xattr.rules(model, {F.relu: xattr.rule.Guided()})
    one = grad(lambda x: ruled(x)[:, 1].sum())(X)  # the ruled gradient itself: one level, allowed
    torch.testing.assert_close(one, xattr.guided_backprop(xattr.target(model, 1))(X))
    with pytest.raises(NotImplementedError, match="a gradient through xattr.rules cannot run inside"):
        grad(lambda x: xattr.grad(xattr.target(ruled, 1))(x).sum())(X)
    with pytest.raises(NotImplementedError, match="a gradient through xattr.rules cannot run inside"):
        grad(lambda x: grad(lambda z: ruled(z)[:, 1].sum())(x).sum())(X)


# --------------------------------------------------------------------------- activation checkpointing


class Checkpointed(nn.Module):
    def __init__(self, act: type, reentrant: bool | None):
        super().__init__()
        self.reentrant = reentrant
        self.block = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), act(), nn.Linear(8, 8), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = self.block(x) if self.reentrant is None else checkpoint(self.block, x, use_reentrant=self.reentrant)
        return self.fc(h)


def _checkpointed(act, reentrant):
    plain = _seeded(3, lambda: Checkpointed(act, None))
    ck = _seeded(3, lambda: Checkpointed(act, reentrant))
    return plain, ck


@pytest.mark.parametrize("method", ["deep_lift", "deconvolution", "lrp", "deep_lift_shap"])
def test_rules_of_their_own_under_a_checkpoint_are_refused(method):
    """NOTE: [Rules and activation checkpointing]: the backward recomputes the block outside the
    rules (DeepLift was off by up to 6e-2, silently)."""
    _, ck = _checkpointed(nn.Tanh, False)
    f = xattr.target(ck, 1)
    make = {"deep_lift": lambda: xattr.deep_lift(f), "deconvolution": lambda: xattr.deconvolution(f),
            "lrp": lambda: xattr.lrp(f), "deep_lift_shap": lambda: xattr.deep_lift_shap(f, baselines=torch.zeros(2, 6, dtype=D))}
    with pytest.raises(RuntimeError, match="inside torch.utils.checkpoint"):
        make[method]()(random_tensor((4, 6), seed=4))


def test_rules_on_the_graph_under_a_checkpoint_give_the_plain_numbers():
    """Guided backprop (graph hooks, or node hooks under module keys) and LRP-epsilon (output hooks)
    keep the plain op's node, which the recomputation reproduces."""
    plain, ck = _checkpointed(nn.ReLU, False)
    x = random_tensor((4, 6), seed=4)
    for make in (xattr.guided_backprop, xattr.lrp,
                 lambda f: xattr.grad(xattr.rules(f, {nn.ReLU: xattr.rule.Guided()}))):  # fmt: skip
        torch.testing.assert_close(make(xattr.target(ck, 1))(x), make(xattr.target(plain, 1))(x))


@pytest.mark.parametrize("method", ["grad", "guided_backprop", "deep_lift", "lrp"])
def test_a_reentrant_checkpoint_is_refused_by_torch_for_every_method(method):
    _, ck = _checkpointed(nn.ReLU, True)
    fn = getattr(xattr, method)(xattr.target(ck, 1))
    with pytest.raises(RuntimeError, match="use_reentrant"):
        fn(random_tensor((4, 6), seed=4))


# --------------------------------------------------------------------------- LRP's input-layer rules


def mlp() -> nn.Sequential:
    return _seeded(5, lambda: nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 8, bias=False), nn.ReLU(),
                                            nn.Linear(8, 3, bias=False)))  # fmt: skip


@pytest.mark.parametrize("rule", [ZBox(0.0, 1.0), WSquare(), Flat()], ids=["zbox", "wsquare", "flat"])
def test_an_input_layer_rule_on_a_hidden_layer_is_refused(rule):
    """It returns relevance, which the layers below would take for a gradient (the delta was 5e-2)."""
    model = mlp()
    with pytest.raises(ValueError, match="whose input is not an attributed input"):
        xattr.lrp(xattr.target(model, 1), composite={**lrp_rules(), "2": rule})(torch.rand(4, 6, dtype=D))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.img, self.tab, self.out = nn.Linear(6, 4, bias=False), nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)

    def forward(self, img, tab):
        return self.out(torch.relu(self.img(img) + self.tab(tab)))


def test_an_input_no_input_layer_rule_reads_gets_x_times_g():
    """NOTE: [Input-layer relevance]: ZBox on the image layer leaves the table's relevance x * g."""
    model = _seeded(6, TwoInputs)
    img, tab = torch.rand(3, 6, dtype=D), torch.rand(3, 3, dtype=D)
    f = xattr.target(model, 1)
    boxed = {**lrp_rules(1e-12), "img": ZBox(0.0, 1.0)}
    (r_img, r_tab), delta = xattr.lrp(f, argnums=(0, 1), composite=boxed, return_delta=True)(img, tab)
    torch.testing.assert_close(r_tab, xattr.lrp(f, argnums=1, composite=lrp_rules(1e-12))(img, tab))
    torch.testing.assert_close(r_img, xattr.lrp(f, argnums=0, composite=boxed)(img, tab))
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-9, rtol=0)  # conserved (bias-free)
    by_hand = xattr.grad(xattr.target(xattr.rules(model, boxed), 1))(img, tab)  # the ZBox signal is relevance
    torch.testing.assert_close(r_img, by_hand)


class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.s = nn.Linear(5, 5, bias=False), nn.Linear(5, 2, bias=False), nn.Linear(5, 2, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + self.s(x)


def test_an_input_reached_through_an_input_layer_rule_and_a_skip_adds_both_shares():
    model = _seeded(7, Skip)
    x = torch.rand(3, 5, dtype=D)
    f = xattr.target(model, 0)
    fn = xattr.lrp(f, composite={**lrp_rules(1e-12), "a": ZBox(0.0, 1.0)}, return_delta=True)
    r, delta = fn(x)
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-9, rtol=0)
    through_a = xattr.grad(xattr.target(xattr.rules(lambda z: model.b(torch.relu(model.a(z))), {model.a: ZBox(0.0, 1.0),
                                                                                                **lrp_rules(1e-12)}, root=model), 0))(x)  # fmt: skip
    skip = x * model.s.weight[0].detach()  # LRP-0 of one linear layer: x_i w_i
    torch.testing.assert_close(r, through_a + skip)
    torch.testing.assert_close(vmap(lambda xi: fn(xi[None])[0][0])(x), r)


@pytest.mark.parametrize("rule", [ZBox(0.0, 1.0), WSquare(), Flat()], ids=["zbox", "wsquare", "flat"])
def test_an_input_layer_rule_behind_flatten_reads_a_view_of_the_input(rule):
    model = _seeded(8, lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False)))
    x = torch.rand(4, 3, 4, dtype=D)
    fn = xattr.lrp(xattr.target(model, 1), composite={**lrp_rules(1e-12), "1": rule}, return_delta=True)
    r, delta = fn(x)
    flat = xattr.grad(xattr.target(xattr.rules(model[1:], {**lrp_rules(1e-12), "1": rule}), 1))(x.flatten(1))
    torch.testing.assert_close(r, flat.reshape(x.shape))
    torch.testing.assert_close(vmap(lambda xi: fn(xi[None])[0][0])(x), r)
    k = xattr.lrp(xattr.target(model, xattr.outputs([0, 1])), composite={**lrp_rules(1e-12), "1": rule})(x)
    torch.testing.assert_close(k[:, 1], r)


def flat_mlp(seed: int = 8) -> nn.Sequential:
    return _seeded(seed, lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False)))


def test_an_input_layer_rule_reads_a_batch_sliced_from_a_larger_tensor():
    """A view of a view (``data[:4]`` handed to the model, then nn.Flatten) has no replayable
    view function: it was refused as "not an attributed input"; it is the clone's relevance."""
    model = flat_mlp()
    data = torch.rand(10, 3, 4, dtype=D)
    fn = xattr.lrp(xattr.target(model, 0), composite={**lrp_rules(1e-12), "1": ZBox(0.0, 1.0)}, return_delta=True)
    r, delta = fn(data[:4])
    expected, _ = fn(data[:4].clone())
    torch.testing.assert_close(r, expected)
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-9, rtol=0)  # conserved (bias-free)


class Moved(nn.Module):
    """The input-layer linear reads data moved from the input (no view of it)."""

    def __init__(self, move):
        super().__init__()
        self.move = move
        self.a, self.b = nn.Linear(12, 8, bias=False), nn.Linear(8, 3, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(self.move(x))))


DATA_MOVES = {
    "permute-flatten": lambda x: x.permute(0, 2, 1).flatten(1),
    "permute-reshape": lambda x: torch.permute(x, (0, 2, 1)).reshape(x.shape[0], -1),
    "transpose-contiguous": lambda x: x.transpose(1, 2).contiguous().flatten(1),
    "cat of slices": lambda x: torch.cat([x.permute(0, 2, 1)[:, :2], x.permute(0, 2, 1)[:, 2:]], 1).flatten(1),
    "full slice": lambda x: x.permute(0, 2, 1)[:, :].flatten(1),
    "index": lambda x: x.permute(0, 2, 1).flatten(1)[:, torch.arange(12)],
    "stack-unbind": lambda x: torch.stack(x.permute(0, 2, 1).unbind(1), 1).flatten(1),
}


@pytest.mark.parametrize("move", list(DATA_MOVES))
def test_an_input_layer_rule_reads_data_moved_from_the_input(move):
    """Data movement that is not a view (a copy after permute, cat, indexing) was refused as "not
    an attributed input": the rules mode replays it on the copy (NOTE: [Input-layer relevance])."""
    rule = ZBox(0.0, 1.0)
    model = _seeded(10, lambda: Moved(DATA_MOVES[move]))
    x = torch.rand(2, 3, 4, dtype=D)
    r, delta = xattr.lrp(xattr.target(model, 0), composite={**lrp_rules(1e-12), "a": rule}, return_delta=True)(x)
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-9, rtol=0)  # conserved (bias-free)
    moved = DATA_MOVES[move](x)
    by_hand = xattr.grad(xattr.target(xattr.rules(lambda z: model.b(torch.relu(model.a(z))), {**lrp_rules(1e-12), model.a: rule},
                                                  root=model), 0))(moved)  # fmt: skip
    xr = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(DATA_MOVES[move](xr), xr, by_hand)  # the moved relevance, moved back
    torch.testing.assert_close(r, expected)


class MovedHidden(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8, bias=False), nn.Linear(8, 3, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).transpose(0, 1).contiguous().transpose(0, 1))


def test_an_input_layer_rule_reading_a_moved_hidden_layer_is_refused():
    model = _seeded(11, MovedHidden)
    with pytest.raises(ValueError, match="whose input is not an attributed input"):
        xattr.lrp(xattr.target(model, 1), composite={**lrp_rules(), "b": ZBox(0.0, 1.0)})(torch.rand(4, 6, dtype=D))


def test_an_input_layer_rule_on_an_argument_not_attributed_runs_as_is():
    """With argnums choosing a subset, ZBox on the layer reading the other argument was refused as
    a hidden layer; it reads a leaf of the call, so its relevance simply goes nowhere."""
    model = _seeded(6, TwoInputs)
    img, tab = torch.rand(3, 6, dtype=D), torch.rand(3, 3, dtype=D)
    f = xattr.target(model, 1)
    boxed = {**lrp_rules(1e-12), "img": ZBox(0.0, 1.0), "tab": ZBox(0.0, 1.0)}
    r_img, r_tab = xattr.lrp(f, argnums=(0, 1), composite=boxed)(img, tab)
    torch.testing.assert_close(xattr.lrp(f, argnums=0, composite=boxed)(img, tab), r_img)
    torch.testing.assert_close(xattr.lrp(f, argnums=1, composite=boxed)(img, tab), r_tab)


# --------------------------------------------------------------------------- mapping keys


def test_a_module_instance_key_that_is_not_in_the_model_is_refused():
    """The original model's conv keying a rule for merge_batch_norm's copy: silently ignored before."""
    model = _seeded(9, lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)))
    merged = xattr.merge_batch_norm(model)
    x = torch.rand(2, 3, 8, 8, dtype=D)
    f = xattr.target(merged, 1)
    with pytest.raises(ValueError, match="not modules of the Sequential.*merge_batch_norm returns a copy"):
        xattr.lrp(f, composite={**lrp_rules(), model[0]: Gamma(1.0)})(x)
    with pytest.raises(ValueError, match="not modules of"):
        xattr.rules(merged, {model[0]: Gamma(1.0)})
    by_own = xattr.lrp(f, composite={**lrp_rules(), merged.get_submodule("0"): Gamma(1.0)})(x)
    torch.testing.assert_close(by_own, xattr.lrp(f, composite={**lrp_rules(), "0": Gamma(1.0)})(x))
    xattr.rules(lambda z: merged(z), {model[0]: Gamma(1.0)})  # no model found behind f: nothing to check against


def test_a_kind_key_whose_rule_never_applies_to_that_kind_is_refused():
    with pytest.raises(ValueError, match="relu stands for every 'relu' op, but Gamma applies to .* never run"):
        xattr.rules(mlp(), {F.relu: Gamma()})
    with pytest.raises(ValueError, match="never run"):
        xattr.lrp(xattr.target(mlp(), 0), composite={**lrp_rules(), torch.tanh: Gamma()})


# --------------------------------------------------------------------------- merge_batch_norm without one graph


class ConvAlsoAlone(nn.Module):
    """Data-dependent control flow, and the conv is called on its own beside its Sequential."""

    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3))
        with torch.no_grad():
            self.seq[1].running_mean.normal_()
            self.seq[1].running_var.uniform_(0.3, 3)

    def forward(self, x):
        if x.sum() > -1e9:
            return self.seq(x) + self.seq[0](x)
        return x


class WeightsRead(nn.Module):
    """Traceable; the forward reads the conv's weight itself."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.running_var.uniform_(0.3, 3)

    def forward(self, x):
        return self.bn(self.conv(x)).sum((1, 2, 3)) + self.conv.weight.sum()


class BranchesDisagree(nn.Module):
    """The pair runs on one path; on the other the batch norm reads something else."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.running_mean.normal_()

    def forward(self, x):
        return self.bn(self.conv(x)) if x.mean() > 0 else self.bn(x)


class Unrollable(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3))
        with torch.no_grad():
            self.seq[1].running_mean.normal_()

    def forward(self, x):
        for _ in range(len(x)):  # len of a traced value: fx cannot follow it
            x = x
        return self.seq(x)


@pytest.mark.parametrize("make", [ConvAlsoAlone, WeightsRead, BranchesDisagree], ids=lambda c: c.__name__)
def test_merge_batch_norm_leaves_pairs_used_elsewhere(make):
    """NOTE: [Merging batch norm]: the fallback folded the conv in place (max diff 1.21)."""
    model = _seeded(10, make)
    x = random_tensor((2, 2 if make is not BranchesDisagree else 3, 5, 5), seed=11)
    merged = xattr.merge_batch_norm(model)
    for sign in (1.0, -1.0):  # both branches of BranchesDisagree
        torch.testing.assert_close(merged(sign * x), model(sign * x), rtol=1e-12, atol=1e-12)
    assert any(isinstance(m, nn.BatchNorm2d) for m in merged.modules())


def test_merge_batch_norm_merges_along_every_path_and_warns_where_it_cannot_trace():
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU())
            with torch.no_grad():
                self.seq[1].running_mean.normal_()

        def forward(self, x):
            h = self.seq(x)
            if h.sum() > 0:
                h = h * 2 if h.mean() > 1 else h + 1
            return h

    model = _seeded(12, Branches)
    x = random_tensor((2, 2, 5, 5), seed=13)
    merged = xattr.merge_batch_norm(model)
    assert type(merged) is Branches and isinstance(merged.seq[1], nn.Identity)
    for scale in (1.0, -1.0, 10.0):
        torch.testing.assert_close(merged(scale * x), model(scale * x))
    model = _seeded(12, Unrollable)
    with pytest.warns(UserWarning, match="no batch norm was merged"):
        merged = xattr.merge_batch_norm(model)
    assert isinstance(merged.seq[1], nn.BatchNorm2d) and not hasattr(merged, "_tensor_constant0")
    torch.testing.assert_close(merged(x), model(x))


# --------------------------------------------------------------------------- DeepLift's max-pool rule


def lenet() -> nn.Sequential:
    """A max-pool followed only by affine layers: the gradient reaching it is the same for every
    example, so under vmap it is not batched where the multipliers are."""
    return _seeded(14, lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                             nn.Linear(2 * 2 * 2, 3)))  # fmt: skip


def test_deep_lift_through_a_max_pool_under_vmap_equals_the_batch():
    model = lenet()
    x, b = random_tensor((3, 1, 4, 4), seed=15), random_tensor((3, 1, 4, 4), seed=16)
    f = xattr.target(model, 2)
    dl = xattr.deep_lift(f)
    torch.testing.assert_close(vmap(lambda xi, bi: dl(xi[None], baselines=bi[None])[0])(x, b), dl(x, baselines=b))
    torch.testing.assert_close(vmap(lambda xi: dl(xi[None])[0])(x), dl(x))
    shap = xattr.deep_lift_shap(f, baselines=b)
    torch.testing.assert_close(vmap(lambda xi: shap(xi[None])[0])(x), shap(x))
    unpaired = xattr.grad(xattr.rules(f, deep_lift_rules()))  # outside paired rows: the ordinary max-pool gradient
    torch.testing.assert_close(vmap(lambda xi: unpaired(xi[None])[0])(x), xattr.grad(f)(x))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_deep_lift_at_an_adaptive_max_pool_is_the_max_pool_rule(nd):
    """An adaptive max-pool whose windows tile the input is that max-pool: the same attributions
    (the plain gradient before), and summation-to-delta holds."""
    conv, adaptive, pool = [getattr(nn, f"{n}{nd}d") for n in ("Conv", "AdaptiveMaxPool", "MaxPool")]
    size = (6,) * nd

    def net(p, out=3):
        return _seeded(17, lambda: nn.Sequential(conv(1, 2, 3, padding=1), nn.ReLU(), p, nn.Flatten(), nn.Linear(2 * out**nd, 3)))

    a, m = net(adaptive(3)), net(pool(2))
    x, b = random_tensor((3, 1) + size, seed=18), random_tensor((3, 1) + size, seed=20)  # live references too
    got, delta = xattr.deep_lift(xattr.target(a, 1), baselines=b, return_delta=True)(x)
    torch.testing.assert_close(got, xattr.deep_lift(xattr.target(m, 1), baselines=b)(x))
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-12, rtol=0)
    torch.testing.assert_close(xattr.lrp(xattr.target(a, 1))(x), xattr.lrp(xattr.target(m, 1))(x))
    uneven = net(adaptive(4), 4)  # overlapping windows
    x, b = random_tensor((3, 1) + (7,) * nd, seed=19), random_tensor((3, 1) + (7,) * nd, seed=21)
    _, delta = xattr.deep_lift(xattr.target(uneven, 1), baselines=b, return_delta=True)(x)
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- clear errors, attention


def test_deep_lift_shap_refuses_an_empty_distribution():
    model = mlp()
    f = xattr.target(model, 1)
    x = torch.rand(3, 6, dtype=D)
    with pytest.raises(ValueError, match=r"N = 0"):
        xattr.deep_lift_shap(f, baselines=torch.zeros(0, 6, dtype=D))(x)
    with pytest.raises(ValueError, match=r"N = 0"):
        xattr.layer_deep_lift_shap(xattr.at_layer(f, model[0]), baselines=torch.zeros(0, 6, dtype=D))(x)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # torch's vmap of its CPU attention kernel
def test_lrp_through_grouped_query_attention_repeats_key_value_heads_as_sdpa_does():
    g = torch.Generator().manual_seed(20)
    wq, wk, wv = (torch.randn(8, n, generator=g, dtype=D) for n in (8, 4, 4))

    def attend(x, gqa=True):
        b, n, _ = x.shape
        q = (x @ wq).view(b, n, 4, 2).transpose(1, 2)
        k = (x @ wk).view(b, n, 2, 2).transpose(1, 2)
        v = (x @ wv).view(b, n, 2, 2).transpose(1, 2)
        if not gqa:
            k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa).sum((1, 2, 3))

    x = random_tensor((3, 5, 8), seed=21)
    fn = xattr.lrp(attend, return_delta=True)
    r, delta = fn(x)
    torch.testing.assert_close(r, xattr.lrp(lambda z: attend(z, gqa=False))(x))
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-12, rtol=0)
    torch.testing.assert_close(vmap(lambda xi: fn(xi[None])[0][0])(x), r)


def test_no_warning_from_a_plain_merge():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xattr.merge_batch_norm(lenet())


def test_neuron_conductance_of_a_ruled_model_under_vmap_equals_the_batch():
    """Its dF/dh inside vmap is a gradient taken at a constant (stopped): not a second
    differentiation of the rules (it was refused under vmap); an outer grad still is."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 4)).double().eval()
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    ruled = xattr.rules(m, {F.relu: xattr.rule.Guided()})
    nc = xattr.neuron_conductance(xattr.at_layer(xattr.target(ruled, 1), m[0]), (0, 2, 2))
    torch.testing.assert_close(torch.func.vmap(nc)(x[:, None])[:, 0], nc(x))
    with pytest.raises(NotImplementedError, match="differentiates"):
        torch.func.grad(lambda x: nc(x).sum())(x)


class _WritesIntoItsInput(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a, self.b = nn.Linear(4, 5, bias=False), nn.Linear(5, 1, bias=False)

    def forward(self, x):
        x = x.clone()
        if self.how == "mul_":
            x.mul_(2)
        else:
            x[:, 0] = 0.0
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("how", ["mul_", "setitem"])
def test_an_input_layer_rule_reading_data_written_in_place_is_refused(how):
    """A write into moved input data is not replayed on the copy: the copy would be stale and the
    relevance that of another function (half of f(x) for x.mul_(2)), so it is refused."""
    torch.manual_seed(0)
    m = _WritesIntoItsInput(how).double().eval()
    x = torch.rand(3, 4, dtype=torch.float64)
    lrp = xattr.lrp(xattr.target(m, 0), composite={**lrp_rules(1e-12), "a": ZBox(0.0, 1.0)})
    with pytest.raises(ValueError, match="not an attributed input"):
        lrp(x)


class _Scores(nn.Module):
    """Attention without softmax, gated: two-tensor ops (kinds "matmul" and "product")."""

    def forward(self, q, k, v):
        return (q @ k.transpose(1, 2)) @ v * q


class _WithScores(nn.Module):
    def __init__(self, detach: bool = False):
        super().__init__()
        self.a, self.scores, self.out, self.detach = nn.Linear(3, 3), _Scores(), nn.Linear(3, 1), detach

    def forward(self, x):
        h = self.a(x)
        s = self.scores(h, h, h)
        return self.out((s.detach() if self.detach else s) + h).sum((1, 2))


def test_block_keyed_by_a_module_holding_products_and_matmuls():
    """Block returns one gradient per tensor of the op: two at ``a * b`` and ``a @ b``. Before,
    it returned one there and the call raised 'Block().backward returned 1 gradients for 2
    tensors'. Blocked, the module passes nothing back: the gradient of the model with its output
    detached."""
    torch.manual_seed(0)
    model, twin = _WithScores().double(), _WithScores(detach=True).double()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    got = xattr.grad(xattr.rules(model, {_Scores: xattr.rule.Block()}, root=model))(x)
    torch.testing.assert_close(got, xattr.grad(twin)(x))
