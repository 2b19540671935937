"""Path and sampling methods over several attributed tensors: integer leaves, mixed float dtypes,
per-tensor stdevs, numbers as baseline distributions.

Each leaf walks its path in its own dtype and is checked up front, whatever its place in leaf
order (NOTE: [Each leaf's path in its own dtype] in xattr/_src/paths.py); stdevs and baseline
distributions follow NOTE: [Per-input numbers] and NOTE: [Baseline distributions] in
xattr/_src/sampling.py. References are explicit loops or the equivalent spelled-out call.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xattr

INTEGER_ERROR = r"Integer inputs \(token ids\) have no gradient|token ids cannot be interpolated"


def _counted(fn):
    calls = []

    def model(*args):
        calls.append(1)
        return fn(*args)

    return model, calls


# --------------------------------------------------------------------------- integer leaves


def _masked_model():
    torch.manual_seed(0)
    lin = nn.Linear(4, 1)
    return lambda emb, mask: (lin(emb)[..., 0] * mask).sum(1), lin


def _integer_cases():
    """(attributed arguments, how to call) with the integer mask first and after the float leaf."""
    emb, mask = torch.rand(3, 5, 4), torch.ones(3, 5, dtype=torch.long)
    body, lin = _masked_model()
    for int_key, float_key in (("a_mask", "emb"), ("mask", "emb")):  # sorted: mask first, then last
        yield "dict", (lambda d, k=int_key: body(d["emb"], d[k])), ({float_key: emb, int_key: mask},), 0, lin
    yield "tuple", (lambda e, m: body(e, m)), (emb, mask), (0, 1), lin
    yield "tuple", (lambda m, e: body(e, m)), (mask, emb), (0, 1), lin


def test_integrated_gradients_refuses_an_integer_leaf_in_any_position():
    for _, fn, args, argnums, _ in _integer_cases():
        model, calls = _counted(fn)
        with pytest.raises(TypeError, match=INTEGER_ERROR):
            xattr.integrated_gradients(model, argnums=argnums, n_steps=4)(*args)
        with pytest.raises(TypeError, match=INTEGER_ERROR):
            xattr.path_integral(model, argnums=argnums, n_steps=4, return_profile=True)(*args)
        assert not calls  # checked before any path point reaches the model


def test_gradient_shap_refuses_an_integer_leaf_in_any_position():
    for kind, fn, args, argnums, _ in _integer_cases():
        model, calls = _counted(fn)
        if kind == "dict":
            dist = {k: torch.zeros((2,) + v.shape[1:], dtype=v.dtype) for k, v in args[0].items()}
        else:
            dist = tuple(torch.zeros((2,) + a.shape[1:], dtype=a.dtype) for a in args)
        with pytest.raises(TypeError, match=INTEGER_ERROR):
            xattr.gradient_shap(model, argnums=argnums, baselines=dist, n_samples=3, generator=0)(*args)
        assert not calls


def test_layer_gradient_shap_and_neuron_conductance_refuse_an_integer_leaf_in_any_position():
    for kind, fn, args, argnums, lin in _integer_cases():
        model, calls = _counted(fn)
        split = xattr.at_layer(model, lin)
        dist = 0.0 if kind == "dict" else tuple(torch.zeros((1,) + a.shape[1:], dtype=a.dtype) for a in args)
        for method in (
            lambda: xattr.layer_gradient_shap(split, argnums=argnums, baselines=dist, n_samples=2, generator=0),
            lambda: xattr.neuron_conductance(split, (0, 0), argnums=argnums, n_steps=4),
            lambda: xattr.conductance(split, argnums=argnums, n_steps=4),
            lambda: xattr.internal_influence(split, argnums=argnums, n_steps=4),
        ):
            with pytest.raises(TypeError, match=INTEGER_ERROR):
                method()(*args)
        assert not calls
    # layer integrated gradients interpolates the layer's values only: token ids and a mask are fine
    emb, lin = nn.Embedding(7, 4), nn.Linear(4, 1)
    f = lambda d: (lin(emb(d["ids"]))[..., 0] * d["mask"]).sum(1)  # noqa: E731
    ids, mask = torch.randint(0, 7, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    lig = xattr.layer_integrated_gradients(xattr.at_layer(f, emb), n_steps=16, return_delta=True)
    attr, delta = lig({"ids": ids, "mask": mask}, baselines={"ids": 0, "mask": mask})
    assert attr.shape == (2, 5, 4) and delta.abs().max() < 1e-4


# --------------------------------------------------------------------------- mixed float dtypes


def _two_branch():
    """F(a, b) = tanh-MLP_64(a) + softplus-MLP_32(b): a float64 branch and a float32 one."""
    torch.manual_seed(1)
    fa = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    fb = nn.Sequential(nn.Linear(4, 5), nn.Softplus(), nn.Linear(5, 1))
    seen = []

    def model(a, b):
        seen.append((a.dtype, b.dtype))
        return fa(a)[:, 0] + fb(b)[:, 0].double()

    return model, fa, fb, seen


def _ig_loop(model, a, b, ba, bb, n_steps, method):
    """IG by an explicit loop over steps: each input's points in its own dtype, the float64
    nodes and weights of the rule, the weighted sum in each gradient's dtype."""
    alphas, weights = xattr.quadrature(method, n_steps)
    total_a, total_b = torch.zeros_like(a), torch.zeros_like(b)
    for alpha, w in zip(alphas.tolist(), weights.tolist()):
        pa = (ba + alpha * (a - ba)).detach().requires_grad_()  # python float: stays float64
        pb = (bb + torch.tensor(alpha, dtype=b.dtype) * (b - bb)).detach().requires_grad_()
        ga, gb = torch.autograd.grad(model(pa, pb).sum(), (pa, pb))
        total_a += w * ga
        total_b += torch.tensor(w, dtype=b.dtype) * gb
    return total_a * (a - ba), total_b * (b - bb)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
def test_integrated_gradients_with_mixed_dtypes_matches_a_per_leaf_float64_loop(method):
    model, _, _, seen = _two_branch()
    a, b = torch.rand(3, 3, dtype=torch.float64), torch.rand(3, 4)
    ba, bb = torch.full((1, 3), 0.2, dtype=torch.float64), torch.full((1, 4), -0.1)
    ref_a, ref_b = _ig_loop(model, a, b, ba, bb, 12, method)
    calls = {
        "float64 first": lambda: xattr.integrated_gradients(model, argnums=(0, 1), baselines=(ba, bb), n_steps=12, method=method)(a, b),
        "float32 first": lambda: xattr.integrated_gradients(
            lambda b_, a_: model(a_, b_), argnums=(0, 1), baselines=(bb, ba), n_steps=12, method=method
        )(b, a)[::-1],
        "dict, chunked": lambda: tuple(
            xattr.integrated_gradients(
                lambda d: model(d["x64"], d["a32"]), baselines={"x64": ba, "a32": bb}, n_steps=12, method=method, chunk_size=9
            )({"x64": a, "a32": b})[k]
            for k in ("x64", "a32")
        ),
    }
    for name, call in calls.items():
        seen.clear()
        attr_a, attr_b = call()
        assert set(seen) == {(torch.float64, torch.float32)}, name  # each input reached the model in its dtype
        assert attr_a.dtype == torch.float64 and attr_b.dtype == torch.float32, name
        torch.testing.assert_close(attr_a, ref_a, atol=1e-13, rtol=0, msg=name)
        torch.testing.assert_close(attr_b, ref_b, atol=1e-6, rtol=1e-5, msg=name)


def test_path_profile_with_mixed_dtypes_keeps_each_gradient_in_its_dtype():
    model, _, _, _ = _two_branch()
    a, b = torch.rand(2, 3, dtype=torch.float64), torch.rand(2, 4)
    total, profile = xattr.path_integral(model, argnums=(1, 0), n_steps=6, return_profile=True)(a, b)
    assert [g.dtype for g in profile.grads] == [torch.float32, torch.float64]
    assert profile.alphas.dtype == profile.weights.dtype == torch.float64
    w = profile.weights.reshape(-1, 1, 1)
    torch.testing.assert_close(total[1], ((profile.grads[1] * w).sum(0)) * a, atol=1e-14, rtol=0)
    plain = xattr.path_integral(model, argnums=(1, 0), n_steps=6)(a, b)
    torch.testing.assert_close(plain[1], total[1], atol=1e-14, rtol=0)
    torch.testing.assert_close(plain[0], total[0])


def test_layer_path_methods_with_mixed_dtypes_equal_their_one_branch_runs():
    """F is a sum of a float64 branch of a and a float32 branch of b: at a layer of b's branch,
    conductance and neuron conductance are those of b's branch alone, in any argument order."""
    model, _, fb, seen = _two_branch()
    a, b = torch.rand(3, 3, dtype=torch.float64), torch.rand(3, 4)
    alone = lambda b_: fb(b_)[:, 0].double()  # noqa: E731
    ref_cond = xattr.conductance(xattr.at_layer(alone, fb[0]), n_steps=8)(b)
    ref_neuron = xattr.neuron_conductance(xattr.at_layer(alone, fb[0]), 2, n_steps=8)(b)
    ref_ii = xattr.internal_influence(xattr.at_layer(alone, fb[0]), n_steps=8)(b)
    swapped = lambda b_, a_: model(a_, b_)  # noqa: E731
    for f, args, i_b in ((model, (a, b), 1), (swapped, (b, a), 0)):
        split = xattr.at_layer(f, fb[0])
        seen.clear()
        torch.testing.assert_close(xattr.conductance(split, argnums=(0, 1), n_steps=8)(*args), ref_cond)
        torch.testing.assert_close(xattr.internal_influence(split, argnums=(0, 1), n_steps=8)(*args), ref_ii)
        neuron = xattr.neuron_conductance(split, 2, argnums=(0, 1), n_steps=8)(*args)
        assert set(seen) == {(torch.float64, torch.float32)}
        assert [t.dtype for t in neuron] == [x.dtype for x in args]
        torch.testing.assert_close(neuron[i_b], ref_neuron)
        assert not neuron[1 - i_b].abs().max()  # a does not reach the neuron


def test_gradient_shap_with_mixed_dtypes_keeps_each_input_in_its_dtype():
    """On a model affine in each input, every draw's attribution is exactly (x - b) * W."""
    torch.manual_seed(2)
    la, lb = nn.Linear(3, 1).double(), nn.Linear(4, 1)
    seen = []

    def model(a, b):
        seen.append((a.dtype, b.dtype))
        return la(a)[:, 0] + lb(b)[:, 0].double()

    a, b = torch.rand(3, 3, dtype=torch.float64), torch.rand(3, 4)
    da, db = torch.rand(1, 3, dtype=torch.float64), torch.rand(1, 4)
    exact_a, exact_b = (a - da) * la.weight[0].detach(), (b - db) * lb.weight[0].detach()
    for order in ((0, 1), (1, 0)):
        args, dist = (a, b), (da, db)
        f = model if order == (0, 1) else (lambda b_, a_: model(a_, b_))
        args, dist = tuple(args[i] for i in order), tuple(dist[i] for i in order)
        seen.clear()
        out = xattr.gradient_shap(f, argnums=(0, 1), baselines=dist, n_samples=4, generator=0)(*args)
        out = tuple(out[order.index(i)] for i in (0, 1))
        assert set(seen) == {(torch.float64, torch.float32)}
        assert out[0].dtype == torch.float64 and out[1].dtype == torch.float32
        torch.testing.assert_close(out[0], exact_a, atol=1e-14, rtol=0)
        torch.testing.assert_close(out[1], exact_b)
        lgs = xattr.layer_gradient_shap(xattr.at_layer(f, lb), argnums=(0, 1), baselines=dist, n_samples=4, generator=0)(*args)
        torch.testing.assert_close(lgs, (lb(b) - lb(db)).detach())


# --------------------------------------------------------------------------- stdevs per input


def _noise_seen():
    seen = {}

    def model(d):
        seen.update({k: v.clone() for k, v in d.items()})
        return d["z"].sum(1) + 2 * d["a"].sum(1)

    return model, seen


def test_stdevs_as_a_dict_keyed_like_the_input_equals_the_leaf_order_list():
    model, seen = _noise_seen()
    d = {"z": torch.zeros(2, 3), "a": torch.zeros(2, 3)}  # leaf order: "a", then "z"
    by_key = xattr.smoothgrad(xattr.saliency(model), stdevs={"z": 0.5, "a": 0.0}, n_samples=3, generator=0)
    out = by_key(d)
    assert seen["z"].abs().max() > 0 and not seen["a"].abs().max()  # the noise went to "z"
    by_order = xattr.smoothgrad(xattr.saliency(model), stdevs=[0.0, 0.5], n_samples=3, generator=0)(d)
    for k in d:
        torch.testing.assert_close(out[k], by_order[k])
    gs_key = xattr.gradient_shap(model, baselines=0.0, stdevs={"z": 0.3, "a": 0.1}, n_samples=3, generator=1)(d)
    gs_order = xattr.gradient_shap(model, baselines=0.0, stdevs=(0.1, 0.3), n_samples=3, generator=1)(d)
    for k in d:
        torch.testing.assert_close(gs_key[k], gs_order[k])


def test_stdevs_tree_for_tuple_argnums_may_give_one_number_per_argument():
    seen = {}

    def f(d, x):
        seen.update(p=d["p"].clone(), q=d["q"].clone(), x=x.clone())
        return d["p"].sum(1) + d["q"].sum(1) + x.sum(1)

    d, x = {"q": torch.zeros(2, 3), "p": torch.zeros(2, 3)}, torch.zeros(2, 2)
    sal = xattr.saliency(f, argnums=(0, 1))
    prefix = xattr.smoothgrad(sal, argnums=(0, 1), stdevs=(0.0, 0.4), n_samples=2, generator=0)(d, x)
    assert not seen["p"].abs().max() and not seen["q"].abs().max() and seen["x"].abs().max() > 0
    full = xattr.smoothgrad(sal, argnums=(0, 1), stdevs=({"p": 0.0, "q": 0.0}, 0.4), n_samples=2, generator=0)(d, x)
    flat = xattr.smoothgrad(sal, argnums=(0, 1), stdevs=[0.0, 0.0, 0.4], n_samples=2, generator=0)(d, x)
    for got in (full, flat):
        torch.testing.assert_close(got[1], prefix[1])


def test_stdevs_with_other_keys_or_entries_is_a_clear_error():
    model, _ = _noise_seen()
    d = {"z": torch.zeros(2, 3), "a": torch.zeros(2, 3)}
    with pytest.raises(ValueError, match="tree like the attributed inputs"):
        xattr.smoothgrad(xattr.saliency(model), stdevs={"z": 0.5, "b": 0.0}, n_samples=1)(d)
    with pytest.raises(ValueError, match="stdevs has 3 entries but there are 2 .*leaf order"):
        xattr.smoothgrad(xattr.saliency(model), stdevs=[0.5, 0.0, 0.1], n_samples=1)(d)


# --------------------------------------------------------------------------- numbers as distributions


def _dict_model():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 2))
    return (lambda d: net(torch.cat([d["a"], d["z"]], 1))[:, 1]), net


def _assert_same_tree(x, y):
    if isinstance(x, dict):
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(x[k], y[k], atol=1e-6, rtol=1e-5)
    else:
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)


def _distribution_methods(f, net):
    return {
        "gradient_shap": lambda b: xattr.gradient_shap(f, baselines=b, n_samples=4, generator=0),
        "layer_gradient_shap": lambda b: xattr.layer_gradient_shap(xattr.at_layer(f, net[0]), baselines=b, n_samples=4, generator=0),
        "deep_lift_shap": lambda b: xattr.deep_lift_shap(f, baselines=b),
        "layer_deep_lift_shap": lambda b: xattr.layer_deep_lift_shap(xattr.at_layer(f, net[0]), baselines=b),
        "expectation": lambda b: xattr.expectation(xattr.integrated_gradients(f, n_steps=4), baselines=b, n_samples=4, generator=0),
    }


def test_a_number_is_a_one_row_distribution_for_a_tree_input():
    f, net = _dict_model()
    d = {"z": torch.rand(3, 4), "a": torch.rand(3, 3)}
    one_row = {"z": torch.full((1, 4), 0.25), "a": torch.full((1, 3), 0.25)}
    for name, make in _distribution_methods(f, net).items():
        got, want = make(0.25)(d), make(one_row)(d)
        assert not isinstance(got, tuple), name
        _assert_same_tree(got, want)


def test_a_number_leaf_in_a_distribution_equals_that_value_in_every_row():
    f, net = _dict_model()
    d = {"z": torch.rand(3, 4), "a": torch.rand(3, 3)}
    dz = torch.rand(5, 4)
    for name, make in _distribution_methods(f, net).items():
        want = make({"a": torch.full((5, 3), 0.25), "z": dz})(d)
        _assert_same_tree(make({"a": 0.25, "z": dz})(d), want)
        _assert_same_tree(make({"a": torch.full((1, 3), 0.25), "z": dz})(d), want)  # one row: shared


def test_gradient_shap_number_baseline_with_tuple_argnums():
    torch.manual_seed(4)
    la, lb = nn.Linear(3, 1), nn.Linear(4, 1)
    f = lambda a, b: torch.tanh(la(a)[:, 0] + lb(b)[:, 0])  # noqa: E731
    a, b = torch.rand(2, 3), torch.rand(2, 4)
    got = xattr.gradient_shap(f, argnums=(0, 1), baselines=0.0, n_samples=3, generator=0)(a, b)
    want = xattr.gradient_shap(f, argnums=(0, 1), baselines=(torch.zeros(1, 3), torch.zeros(1, 4)), n_samples=3, generator=0)(a, b)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    mixed = xattr.gradient_shap(f, argnums=(0, 1), baselines=(0.0, torch.zeros(1, 4)), n_samples=3, generator=0)(a, b)
    for g, w in zip(mixed, want):
        torch.testing.assert_close(g, w)


def test_distributions_with_different_row_counts_are_a_clear_error():
    f, net = _dict_model()
    d = {"z": torch.rand(3, 4), "a": torch.rand(3, 3)}
    for name, make in _distribution_methods(f, net).items():
        with pytest.raises(ValueError, match=r"same number of rows N \(or one row\); got \[2, 5\]"):
            make({"a": torch.rand(2, 3), "z": torch.rand(5, 4)})(d)
