"""Every user mistake named in the design gets a clear error or warning (design section 2)."""

import warnings

import pytest
import torch
from torch import nn

import xattr


def _mlp(dropout=False):
    torch.manual_seed(0)
    layers = [nn.Linear(4, 8), nn.ReLU()] + ([nn.Dropout(0.5)] if dropout else []) + [nn.Linear(8, 3)]
    return nn.Sequential(*layers).eval()


X = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))


def test_baseline_shape_mismatch_says_what_shapes_work():
    ig = xattr.integrated_gradients(xattr.target(_mlp(), 0), baselines=torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"baselines of shape \(3, 4\) does not broadcast to the input's shape \(5, 4\)"):
        ig(X)


def test_baseline_tree_structure_mismatch():
    f = lambda d: d["a"].sum(1) + d["b"].sum(1)  # noqa: E731
    ig = xattr.integrated_gradients(f, baselines={"a": torch.zeros(5, 2)})
    with pytest.raises(ValueError, match="same structure as the attributed inputs"):
        ig({"a": torch.ones(5, 2), "b": torch.ones(5, 3)})


def test_one_baseline_per_argument_without_argnums_names_argnums():
    """Baselines for two arguments while argnums is left at 0 (a two-input model translated from
    Captum's tuple inputs): the error says to pass argnums, not an internal float() complaint."""
    f = lambda a, b: a.sum(1) * b.sum(1)  # noqa: E731
    a, b = torch.ones(5, 2), torch.ones(5, 3)
    with pytest.raises(ValueError, match=r"2 parts for 1 attributed input.*argnums=\(0, 1\)") as info:
        xattr.integrated_gradients(f, baselines=(a * 0, b * 0))(a, b)
    assert "float()" not in str(info.value)
    got = xattr.integrated_gradients(f, baselines=(a * 0, b * 0), argnums=(0, 1))(a, b)  # what it says to do
    assert [g.shape for g in got] == [a.shape, b.shape]


@pytest.mark.parametrize("t", [3, -4, (7,), torch.tensor([0, 1, 2, 3, 9])])
def test_target_out_of_range(t):
    with pytest.raises(IndexError, match="out of range|must lie in"):
        xattr.saliency(xattr.target(_mlp(), t))(X)


def test_target_checked_again_after_an_in_place_change():
    """Targets are range-checked once per tensor; modifying the tensor in place re-arms the check."""
    t = torch.tensor([0, 1, 2, 0, 1])
    sal = xattr.saliency(xattr.target(_mlp(), t))
    sal(X)
    t[2] = 7
    with pytest.raises(IndexError, match=r"must lie in \[0, 3\)"):
        sal(X)
    t[2] = 2
    sal(X)
    with pytest.raises(IndexError, match=r"must lie in \[0, 2\)"):  # the same tensor, a model with fewer outputs
        xattr.saliency(xattr.target(nn.Linear(4, 2), t))(X)


def test_targets_made_in_inference_mode_are_checked_every_call():
    with torch.inference_mode():
        good, bad = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 1, 2, 0, 3])
    assert xattr.saliency(xattr.target(_mlp(), good))(X).shape == X.shape
    with pytest.raises(IndexError, match=r"must lie in \[0, 3\)"):
        xattr.saliency(xattr.target(_mlp(), bad))(X)


def test_many_outputs_out_of_range():
    with pytest.raises(IndexError, match=r"must lie in \[0, 3\)"):
        xattr.saliency(xattr.target(_mlp(), xattr.outputs(torch.tensor([0, 5]))))(X)


def test_multi_output_model_without_target():
    with pytest.raises(ValueError, match=r"returns outputs of shape \(3,\) per example.*xattr.target"):
        xattr.saliency(_mlp())(X)


def test_list_target_is_refused_as_ambiguous():
    with pytest.raises(TypeError, match="ambiguous.*xattr.outputs"):
        xattr.saliency(xattr.target(_mlp(), [0, 1, 2, 0, 1]))(X)


def test_float_target_tensor_refused():
    with pytest.raises(TypeError, match="integer class indices"):
        xattr.saliency(xattr.target(_mlp(), torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0])))(X)


def test_per_example_target_with_wrong_batch():
    with pytest.raises(ValueError, match="dim 0 must equal the batch size"):
        xattr.saliency(xattr.target(_mlp(), torch.tensor([0, 1, 2])))(X)


def test_integer_inputs_point_to_the_embedding():
    emb = nn.Embedding(10, 4)
    f = lambda ids: emb(ids).sum((1, 2))  # noqa: E731
    with pytest.raises(TypeError, match="at_layer.*embedding"):
        xattr.integrated_gradients(f)(torch.tensor([[1, 2], [3, 4]]))


def test_non_finite_outputs():
    f = lambda x: torch.log(x).sum(1)  # noqa: E731
    with pytest.raises(FloatingPointError, match="non-finite"):
        xattr.saliency(f)(torch.tensor([[1.0, -1.0]]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_outputs_of_a_perturbation_method(bad):
    f = lambda x: x.sum(1) + torch.where(x[:, 0] == 0, bad, 0.0)  # noqa: E731  (finite at x, not at the baseline)
    with pytest.raises(FloatingPointError, match="1 non-finite"):
        xattr.feature_ablation(f)(torch.tensor([[1.0, 2.0]]))


def test_outputs_whose_sum_overflows_are_finite():
    """The finite check sums the outputs first; a sum that overflows falls back to the exact check."""
    big = torch.finfo(torch.float32).max
    f = lambda x: x.sum(1) * 0 + big  # noqa: E731  (every output finite, their sum inf)
    attr = xattr.feature_ablation(f)(torch.ones(4, 3))
    assert torch.equal(attr, torch.zeros(4, 3))


def test_train_mode_with_dropout_warns_and_mode_is_kept():
    model = _mlp(dropout=True).train()
    with pytest.warns(UserWarning, match=r"train mode.*Dropout.*model.eval\(\)"):
        xattr.saliency(xattr.target(model, 0))(X)
    assert model.training


def _train_mode_warnings(fn) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return sum("train mode" in str(w.message) for w in caught)


def test_the_train_mode_check_sees_mode_changes_and_modules_added_later():
    """The check runs on every call: a later .train()/.eval() is seen at once, and so is a dropout
    or batch-norm module added afterwards (by attribute, add_module, Sequential.append or
    assignment into a Sequential) to a function already built."""
    model = _mlp(dropout=False).eval()
    sal = xattr.saliency(xattr.target(model, 0))
    assert _train_mode_warnings(lambda: sal(X)) == 0
    model.train()  # no dropout or batch-norm yet: train mode is fine
    assert _train_mode_warnings(lambda: sal(X)) == 0
    for add in (lambda m: setattr(m, "extra", nn.Dropout()), lambda m: m.add_module("extra", nn.BatchNorm1d(3)),
                lambda m: m.append(nn.Dropout()), lambda m: m.__setitem__(0, nn.Sequential(m[0], nn.Dropout()))):
        grown = _mlp(dropout=False).train()
        g = xattr.saliency(xattr.target(grown, 0))
        assert _train_mode_warnings(lambda: g(X)) == 0
        add(grown)
        assert _train_mode_warnings(lambda: g(X)) == 1
        grown.eval()
        assert _train_mode_warnings(lambda: g(X)) == 0
        grown.train()
        assert _train_mode_warnings(lambda: g(X)) == 1


def test_the_train_mode_check_works_for_modules_that_are_not_dictionary_keys():
    class Unhashable(nn.Sequential):
        __hash__ = None

    model = Unhashable(nn.Linear(4, 3), nn.Dropout()).train()
    assert _train_mode_warnings(lambda: xattr.saliency(xattr.target(model, 0))(X)) == 1
    model.eval()
    assert _train_mode_warnings(lambda: xattr.saliency(xattr.target(model, 0))(X)) == 0


def test_eval_mode_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xattr.integrated_gradients(xattr.target(_mlp(dropout=True), 0))(X)


def test_bad_options():
    f = xattr.target(_mlp(), 0)
    with pytest.raises(ValueError, match="unknown method 'simpson'"):
        xattr.integrated_gradients(f, method="simpson")
    with pytest.raises(ValueError, match="n_steps must be a positive int"):
        xattr.integrated_gradients(f, n_steps=0)
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        xattr.integrated_gradients(f, chunk_size=0)(X)
    with pytest.raises(ValueError, match="reduce must be"):
        xattr.smooth(xattr.saliency(f), reduce="median")(X)
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        xattr.smooth(xattr.saliency(f), n_samples=0)(X)
    with pytest.raises(TypeError, match="generator must be"):
        xattr.smooth(xattr.saliency(f), generator="seed")(X)
    with pytest.raises(IndexError, match="argnums=2"):
        xattr.saliency(f, argnums=2)(X)
    with pytest.raises(ValueError, match="stdevs has 2 entries"):
        xattr.smooth(xattr.saliency(f), stdevs=(0.1, 0.2))(X)


@pytest.mark.parametrize("sd", [-0.1, float("nan"), float("inf")])
def test_a_noise_scale_that_is_no_standard_deviation_is_named(sd):
    f = xattr.target(_mlp(), 0)
    with pytest.raises(ValueError, match="stdevs must be finite and >= 0"):
        xattr.smoothgrad(xattr.saliency(f), stdevs=sd, generator=0)(X)
    with pytest.raises(ValueError, match="stdevs must be finite and >= 0"):
        xattr.gradient_shap(f, baselines=torch.zeros(3, 4), stdevs=sd)(X)
    with pytest.raises(ValueError, match="stdevs must be finite and >= 0"):  # one of the per-input numbers
        xattr.smooth(xattr.saliency(lambda a, b: f(a + b)), stdevs=[0.1, sd], argnums=(0, 1))(X, X)
    with pytest.raises(ValueError, match="perturb_radius must be a finite number >= 0"):
        xattr.metrics.sensitivity_max(xattr.saliency(f), X, perturb_radius=sd)
    torch.testing.assert_close(xattr.smoothgrad(xattr.saliency(f), stdevs=0.0, generator=0)(X), xattr.saliency(f)(X))  # 0: allowed


def test_gradient_shap_baseline_distribution_shape():
    gs = xattr.gradient_shap(xattr.target(_mlp(), 0), baselines=torch.zeros(10, 3))
    with pytest.raises(ValueError, match=r"distribution of shape \(N, 4\)"):
        gs(X)


def test_batch_size_mismatch_between_inputs():
    f = lambda a, b: (a.sum(1) + b.sum(1))  # noqa: E731
    with pytest.raises(ValueError, match="share one batch size"):
        xattr.integrated_gradients(f, argnums=(0, 1))(torch.ones(3, 2), torch.ones(4, 2))


def test_model_and_user_tensors_unchanged():
    model = _mlp()
    params = {k: v.clone() for k, v in model.state_dict().items()}
    x = X.clone()
    f = xattr.target(model, 1)
    methods = [
        xattr.saliency(f),
        xattr.input_x_gradient(f),
        xattr.integrated_gradients(f, return_delta=True),
        xattr.gradient_shap(f, baselines=torch.zeros(2, 4), generator=0),
        xattr.smoothgrad(xattr.saliency(f), stdevs=0.1, generator=0),
    ]
    for attr_fn in methods:
        attr_fn(x)
        assert torch.equal(x, X) and not x.requires_grad and x.grad is None
        assert not model.training
        for k, v in model.state_dict().items():
            assert torch.equal(v, params[k])
        assert all(p.grad is None for p in model.parameters())
        assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_per_example_target_whose_length_divides_the_batch_is_refused():
    x4 = X[:4]
    with pytest.raises(ValueError, match="2 rows but the inputs have a batch of 4"):
        xattr.saliency(xattr.target(_mlp(), torch.tensor([0, 1])))(x4)
    with pytest.raises(ValueError, match="2 rows but the inputs have a batch of 4"):
        xattr.integrated_gradients(xattr.target(_mlp(), xattr.outputs(torch.tensor([[0, 1], [1, 2]]))))(x4)


def test_saliency_checks_batch_sizes_of_a_dict_input():
    f = lambda d: d["a"].sum(1)  # noqa: E731
    with pytest.raises(ValueError, match="share one batch size"):
        xattr.saliency(f)({"a": torch.ones(5, 2), "b": torch.ones(2, 2)})


@pytest.mark.parametrize(
    "make",
    [
        lambda f: xattr.smoothgrad(xattr.saliency(f), stdevs=0.1, generator=0),
        lambda f: xattr.gradient_shap(f, baselines=torch.zeros(2, 4), generator=0),
        lambda f: xattr.expectation(xattr.integrated_gradients(f), baselines=torch.zeros(2, 4), generator=0),
        lambda f: xattr.integrated_gradients(xattr.target(f.model, xattr.outputs([0, 1]))),
    ],
)
def test_train_mode_warns_exactly_once_through_compositions(make):
    model = _mlp(dropout=True).train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make(xattr.target(model, 0))(X)
    assert sum("train mode" in str(w.message) for w in caught) == 1


@pytest.mark.parametrize(
    "method", ["saliency", "input_x_gradient", "grad", "value_and_grad", "guided_backprop", "deconvolution", "lrp",
               "integrated_gradients", "deep_lift", "feature_ablation"])
@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True])
@pytest.mark.parametrize("many", [False, True], ids=["one output", "two outputs"])
def test_every_method_refuses_a_chunk_size_that_is_not_a_positive_int(method, chunk_size, many):
    f = xattr.target(_mlp(), xattr.outputs([0, 2]) if many else 0)
    with pytest.raises(ValueError, match="chunk_size must be a positive number of rows"):
        getattr(xattr, method)(f, chunk_size=chunk_size)(X)


def test_an_empty_batch_with_an_empty_per_example_target():
    """Gradient methods return empty attributions (a 0-row target divided by zero before), and a
    0-row target never passes as a target for a batch that has rows."""
    empty = torch.zeros(0, 4)
    t = torch.zeros(0, dtype=torch.long)
    f = xattr.target(_mlp(), t)
    assert f(empty).shape == (0,)
    for method in (xattr.saliency, xattr.integrated_gradients, xattr.input_x_gradient):
        assert method(f)(empty).shape == (0, 4)
    with pytest.raises(ValueError, match="0 rows cannot follow a batch of 5 rows"):
        f(X)


def test_layer_activation_warns_about_train_mode_and_names_the_running_statistics():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)).train()
    with pytest.warns(UserWarning, match="running statistics"):
        xattr.layer_activation(xattr.at_layer(model, model[1]))(torch.randn(5, 3))


def test_integrated_gradients_and_neuron_conductance_on_token_ids_name_themselves():
    """Both run on `path_integral`; its name in their error sent users to a function they never called."""
    emb = torch.nn.Embedding(10, 4)
    lin = torch.nn.Linear(4, 1)
    f = lambda ids: lin(emb(ids)).sum((1, 2))  # noqa: E731
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(TypeError, match=r"^integrated_gradients differentiates .*torch.int64.*at_layer"):
        xattr.integrated_gradients(f)(ids)
    with pytest.raises(TypeError, match=r"^neuron_conductance differentiates .*torch.int64"):
        xattr.neuron_conductance(xattr.at_layer(f, lin), 0)(ids)
    x = torch.randn(2, 3, 4)
    g = lambda e: lin(e).sum((1, 2))  # noqa: E731
    torch.testing.assert_close(xattr.integrated_gradients(g)(x), xattr.path_integral(g)(x), rtol=0, atol=0)


def test_numpy_integer_targets_are_ints_and_integer_arrays_tensors():
    np = pytest.importorskip("numpy")
    f = _mlp()
    sal = lambda t: xattr.saliency(xattr.target(f, t))(X)  # noqa: E731
    assert torch.equal(sal(np.int64(2)), sal(2))
    assert torch.equal(sal(np.uint8(1)), sal(1))
    ys = np.array([0, 2, 1, 1, 0])
    assert torch.equal(sal(ys), sal(torch.tensor([0, 2, 1, 1, 0])))
    split = xattr.at_layer(f, f[0])
    assert torch.equal(xattr.saliency(xattr.neuron(split, (np.int32(3),)))(X), xattr.saliency(xattr.neuron(split, (3,)))(X))
    for bad in (np.float64(1.0), np.array([True, False, True, True, False])):
        with pytest.raises(TypeError, match="unsupported target"):
            sal(bad)
