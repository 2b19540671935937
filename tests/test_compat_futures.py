"""attribute_future (NOTE: [Futures from the model] in xattr/compat/captum/_futures.py): a model
returning torch futures gives a completed Future of the same numbers as attribute with the model
waited on; Captum's own attribute_future on the same model where captum is installed."""

import pytest
import torch

from xattr.compat import captum as X

torch.manual_seed(0)
NET = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double().eval()
X5 = torch.randn(6, 5, dtype=torch.float64)
MASK = torch.tensor([[0, 0, 1, 2, 2]])


def future_net(x, scale=1.0):
    done = torch.futures.Future()
    done.set_result(NET(x) * scale)
    return done


CASES = {
    "FeatureAblation": dict(target=1, feature_mask=MASK, perturbations_per_eval=2, baselines=0.5),
    "FeaturePermutation": dict(target=2, feature_mask=MASK),
    "ShapleyValueSampling": dict(target=0, n_samples=3, baselines=0.1),
    "ShapleyValues": dict(target=0, feature_mask=MASK, perturbations_per_eval=3),
}


def _attribute(cls, forward, future: bool, **kw):
    if cls.__name__.startswith("Shapley") or cls.__name__ == "FeaturePermutation":
        torch.manual_seed(3)  # Captum's sampling classes draw from torch's global generator
    obj = cls(forward)
    return obj.attribute_future(X5, **kw) if future else obj.attribute(X5, **kw)


@pytest.mark.parametrize("name", sorted(CASES))
def test_future_equals_attribute_with_the_waited_model(name):
    cls = getattr(X, name)
    kw = dict(CASES[name], additional_forward_args=(2.0,))
    got = _attribute(cls, future_net, True, **kw)
    assert isinstance(got, torch.futures.Future) and got.done()
    want = _attribute(cls, lambda x, s: NET(x) * s, False, **kw)
    torch.testing.assert_close(got.wait(), want, rtol=0, atol=0)
    assert got.wait().abs().sum() > 0


@pytest.mark.parametrize("name", ["FeatureAblation", "ShapleyValues"])  # the sampling ones draw differently
def test_future_matches_captum(name):
    captum_attr = pytest.importorskip("captum.attr")
    kw = CASES[name]
    want = _attribute(getattr(captum_attr, name), future_net, True, **kw).wait()
    got = _attribute(getattr(X, name), future_net, True, **kw).wait()
    torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-6, atol=1e-7)  # Captum: float32 here


def test_a_model_returning_tensors_is_refused_and_the_instance_is_unchanged():
    obj = X.FeatureAblation(NET)
    with pytest.raises(TypeError, match="returns a torch.futures.Future.*call attribute"):
        obj.attribute_future(X5, target=0)
    assert obj.forward_func is NET
    torch.testing.assert_close(obj.attribute(X5, target=0), X.FeatureAblation(NET).attribute(X5, target=0))
