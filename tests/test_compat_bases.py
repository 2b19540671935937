"""Captum's abstract bases in xattr.compat.captum: the same class tree as Captum's, and
GradientAttribution.compute_convergence_delta against Captum's and against a hand computation."""

import inspect

import pytest
import torch
from torch import nn

import xattr.compat.captum as X

captum_attr = pytest.importorskip("captum.attr")

BASES = ["Attribution", "GradientAttribution", "PerturbationAttribution", "LayerAttribution", "NeuronAttribution"]
PAIRS = [
    n for n in captum_attr.__all__
    if inspect.isclass(getattr(captum_attr, n)) and issubclass(getattr(captum_attr, n), captum_attr.Attribution) and hasattr(X, n)
]  # fmt: skip


def test_every_base_exists():
    for b in BASES:
        assert inspect.isclass(getattr(X, b)), b


def test_pairs_cover_the_families():
    assert {"IntegratedGradients", "LayerConductance", "NeuronGradient", "FeatureAblation", "Lime", "LLMAttribution"} <= set(PAIRS)


@pytest.mark.parametrize("name", PAIRS)
def test_same_bases_as_captum(name):
    ours, theirs = getattr(X, name), getattr(captum_attr, name)
    assert [b for b in BASES if issubclass(ours, getattr(X, b))] == [b for b in BASES if issubclass(theirs, getattr(captum_attr, b))]


@pytest.mark.parametrize("name", [n for n in PAIRS if issubclass(getattr(captum_attr, n), captum_attr.PerturbationAttribution)])
def test_perturbation_classes_multiply_by_inputs_as_captum(name):
    if name == "LimeBase":
        pytest.skip("LimeBase needs six functions to be built; Lime and KernelShap cover it")
    model = nn.Sequential(nn.Linear(3, 2))
    args = (model, model[0]) if name.startswith(("Neuron", "Layer")) else (model,)
    assert getattr(X, name)(*args).multiplies_by_inputs == getattr(captum_attr, name)(*args).multiplies_by_inputs


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

    def forward(self, x, y, scale):
        return torch.tanh(self.a(x) + self.b(y)) * scale


@pytest.mark.parametrize("target", [1, [0, 2, 1, 1, 0], "tensor"])
def test_convergence_delta_tuple_inputs_extra_args(target):
    torch.manual_seed(1)
    model = TwoInputs().double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    scale = torch.rand(5, 1, dtype=torch.float64) + 0.5
    if target == "tensor":
        target = torch.tensor([2, 2, 0, 1, 0])
    bx = torch.randn(1, 4, dtype=torch.float64)  # one row for every example
    ours_ig = X.IntegratedGradients(model)
    attr = ours_ig.attribute((x, y), baselines=(bx, 0.5), target=target, additional_forward_args=(scale,), n_steps=3, method="riemann_right")
    ours = ours_ig.compute_convergence_delta(attr, (bx, 0.5), (x, y), target=target, additional_forward_args=(scale,))
    theirs = captum_attr.IntegratedGradients(model).compute_convergence_delta(
        attr, (bx, 0.5), (x, y), target=target, additional_forward_args=(scale,)
    )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    rows = [target] * 5 if isinstance(target, int) else [int(t) for t in target]
    # each example with its own scale row, by an explicit loop
    with torch.no_grad():
        hand = torch.tensor([
            sum(float(a[i].sum()) for a in attr)
            - (float(model(x[i:i + 1], y[i:i + 1], scale[i:i + 1])[0, rows[i]])
               - float(model(bx, torch.full((1, 2), 0.5, dtype=torch.float64), scale[i:i + 1])[0, rows[i]]))
            for i in range(5)
        ], dtype=torch.float64)  # fmt: skip
    torch.testing.assert_close(ours, hand, rtol=0, atol=1e-12)
    assert ours.abs().max() > 1e-6  # 3 right-Riemann steps leave a visible gap


def test_convergence_delta_sums_rows_without_target():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.Softplus(), nn.Linear(4, 2)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    attr = torch.randn(6, 3, dtype=torch.float64)
    ours = X.Saliency(model).compute_convergence_delta(attr, None, x)
    theirs = captum_attr.Saliency(model).compute_convergence_delta(attr, None, x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    hand = attr.sum(1) - (model(x).sum(1) - model(torch.zeros_like(x)).sum(1))
    torch.testing.assert_close(ours, hand.detach(), rtol=0, atol=1e-12)


def test_convergence_delta_of_layer_and_neuron_classes():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    for name, args in [("LayerIntegratedGradients", (model, model[0])), ("NeuronGradient", (model, model[0]))]:
        attr = torch.randn(4, 3, dtype=torch.float64)
        ours = getattr(X, name)(*args).compute_convergence_delta(attr, 0.0, x, target=1)
        theirs = getattr(captum_attr, name)(*args).compute_convergence_delta(attr, 0.0, x, target=1)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


def test_ig_completeness_through_the_base():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    ig = X.IntegratedGradients(model)
    attr, delta = ig.attribute(x, target=0, n_steps=64, method="gausslegendre", return_convergence_delta=True)
    torch.testing.assert_close(ig.compute_convergence_delta(attr, 0.0, x, target=0), delta, rtol=0, atol=1e-10)


def test_convergence_delta_errors():
    model = nn.Linear(3, 2)
    sal = X.Saliency(model)
    with pytest.raises(ValueError, match="number of examples"):
        sal.compute_convergence_delta(torch.zeros(2, 3), 0.0, torch.zeros(3, 3), target=0)
    with pytest.raises(ValueError, match="does not match"):
        sal.compute_convergence_delta(torch.zeros(3, 3), torch.zeros(2, 3), torch.zeros(3, 3), target=0)
    with pytest.raises(ValueError, match="attribution tensors"):
        sal.compute_convergence_delta((torch.zeros(3, 3), torch.zeros(3, 3)), 0.0, torch.zeros(3, 3), target=0)


def test_a_user_subclass_of_gradient_attribution():
    """Code that writes its own method on Captum's base keeps working on xattr's."""

    class Doubled(X.GradientAttribution):
        def attribute(self, inputs, target=None):
            return 2 * X.Saliency(self.forward_func).attribute(inputs, target=target, abs=False)

    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    m = Doubled(model)
    assert isinstance(m, X.Attribution) and not m.has_convergence_delta()
    torch.testing.assert_close(m.attribute(x, target=1), 2 * model.weight[1].detach().expand(4, 3))


@pytest.mark.parametrize("module,base,names", [
    ("captum.robust", "Perturbation", ["FGSM", "PGD", "MinParamPerturbation", "AttackComparator"]),
    ("captum.concept", "ConceptInterpreter", ["TCAV"]),
])  # fmt: skip
def test_robust_and_concept_bases_as_captum(module, base, names):
    theirs = pytest.importorskip(module)
    for n in names:
        assert issubclass(getattr(X, n), getattr(X, base)) == issubclass(getattr(theirs, n), getattr(theirs, base)), n


def test_user_subclasses_of_robust_and_concept_bases():
    class Shift(X.Perturbation):
        def perturb(self, inputs, by=1.0):
            return inputs + by

    assert torch.equal(Shift()(torch.zeros(2), by=3.0), torch.full((2,), 3.0))

    class Norms(X.ConceptInterpreter):
        def interpret(self, inputs):
            return self.model(inputs).norm(dim=1)

    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    torch.testing.assert_close(Norms(model).interpret(x), model(x).norm(dim=1))
    assert isinstance(X.FGSM(model), X.Perturbation)
