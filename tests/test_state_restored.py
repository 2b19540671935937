"""A model that raises part-way through an attribution (in a forward, in a backward, an Exception
or a BaseException such as KeyboardInterrupt) leaves nothing behind: no hooks, no torch function
mode, grad and inference mode as they were, the model's mode, weights and requires_grad as they
were, no xattr scope still set; and the next call gives the numbers of a call that never failed
(no cache remembers the failure).
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.nn.modules import module as _module

import xattr
from xattr._src import deeplift_rules, input_copies, lrp_input_rules, rule_limits, sampling
from xattr._src import tree as T
from xattr.concepts import _cache

_SCOPES = (T._BATCH, T._SHARED, sampling._COPIES, deeplift_rules._ROWS, input_copies.INPUT_COPIES,
           lrp_input_rules.ABOVE_SPLIT, rule_limits._CONSTANT_LEVELS)  # fmt: skip
_GLOBAL_HOOKS = ("_global_forward_pre_hooks", "_global_forward_hooks", "_global_forward_hooks_always_called",
                 "_global_backward_pre_hooks", "_global_backward_hooks")  # fmt: skip


class Boom(Exception):
    pass


class _RaiseInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        raise Boom("in backward")


class Bomb(nn.Module):
    """Identity that counts its calls and fails on call ``at``: raising ``exc`` there, or, with
    ``backward``, in the backward pass of that call's output."""

    def __init__(self):
        super().__init__()
        self.calls, self.at, self.exc, self.backward = 0, None, Boom, False

    def arm(self, at, exc=Boom, backward=False):
        self.calls, self.at, self.exc, self.backward = 0, at, exc, backward

    def forward(self, x):
        self.calls += 1
        if self.calls != self.at:
            return x
        if self.backward:
            return _RaiseInBackward.apply(x)
        raise self.exc("boom")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), Bomb(), nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(),
                         Bomb(), nn.Flatten(), nn.Linear(3 * 25, 4)).eval()  # fmt: skip


X = torch.rand(3, 1, 5, 5, generator=torch.Generator().manual_seed(1))
D = torch.rand(4, 1, 5, 5, generator=torch.Generator().manual_seed(2))
MASK = torch.arange(25).reshape(1, 1, 5, 5) // 5

METHODS = {
    "saliency": lambda f, s: xattr.saliency(f),
    "ig_chunked": lambda f, s: xattr.integrated_gradients(f, n_steps=6, chunk_size=6),
    "smoothgrad_ig": lambda f, s: xattr.smoothgrad(xattr.integrated_gradients(f, n_steps=3), stdevs=0.1, n_samples=3,
                                                   generator=0, chunk_size=6),  # fmt: skip
    "gradient_shap": lambda f, s: xattr.gradient_shap(f, baselines=D, n_samples=3, generator=0, chunk_size=3),
    "layer_ig": lambda f, s: xattr.layer_integrated_gradients(s, n_steps=4, chunk_size=6),
    "gradient_x_activation": lambda f, s: xattr.gradient_x_activation(s),
    "layer_activation": lambda f, s: xattr.layer_activation(s),
    "neuron_conductance": lambda f, s: xattr.neuron_conductance(s, (1, 2, 2), n_steps=4, chunk_size=6),
    "guided_backprop": lambda f, s: xattr.guided_backprop(f),
    "deep_lift_shap": lambda f, s: xattr.deep_lift_shap(f, baselines=D[:2]),
    "lrp_box": lambda f, s: xattr.lrp(f, composite=xattr.rule.epsilon_gamma_box("0", 0.0, 1.0)),
    "layer_lrp": lambda f, s: xattr.layer_lrp(s),
    "feature_ablation": lambda f, s: xattr.feature_ablation(f, feature_mask=MASK, chunk_size=6),
    "shapley": lambda f, s: xattr.shapley_value_sampling(f, feature_mask=MASK, n_samples=2, generator=0, chunk_size=9),
    "kernel_shap": lambda f, s: xattr.kernel_shap(f, feature_mask=MASK, n_samples=12, generator=0),
    "infidelity": lambda f, s: lambda x: xattr.metrics.infidelity(f, xattr.saliency(f), xattr.metrics.gaussian_noise(0.1),
                                                                   n_perturb_samples=3, generator=0, chunk_size=6)(x),  # fmt: skip
    "sensitivity": lambda f, s: lambda x: xattr.metrics.sensitivity_max(xattr.saliency(f), x, n_perturb_samples=3,
                                                                         generator=0, chunk_size=6),  # fmt: skip
    "pgd": lambda f, s: lambda x: xattr.robust.pgd(s.model.model, x, radius=0.1, step_size=0.05, step_num=3,
                                                   random_start=True, generator=0, target=torch.tensor([0, 1, 2])),  # fmt: skip
}


def _state(model) -> dict:
    return {
        "module hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._backward_pre_hooks))
                         for m in model.modules()],  # fmt: skip
        "global hooks": [len(getattr(_module, g)) for g in _GLOBAL_HOOKS],
        "torch function modes": torch._C._len_torch_function_stack(),
        "grad": torch.is_grad_enabled(),
        "inference": torch.is_inference_mode_enabled(),
        "functorch level": torch._C._functorch.maybe_current_level(),
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "scopes": [v.get() for v in _SCOPES],
    }


def _same(a, b) -> bool:
    return all(torch.equal(u, v) for u, v in zip(T.leaves(a), T.leaves(b)))


@pytest.mark.parametrize("name", list(METHODS))
def test_a_failing_model_leaves_nothing_behind(name):
    model = _model()
    f = xattr.target(model, 2)
    fn = METHODS[name](f, xattr.at_layer(f, model[3]))
    expected = fn(X)
    weights = [p.detach().clone() for p in model.parameters()]
    before = _state(model)
    calls = [model[2].calls, model[5].calls]
    failures = [(bomb, at, exc, back) for bomb, n in zip((model[2], model[5]), calls) for at in sorted({1, n}) if at <= n
                for exc, back in ((Boom, False), (KeyboardInterrupt, False), (Boom, True))]  # fmt: skip
    for bomb, at, exc, back in failures:
        bomb.arm(at, exc, back)
        try:
            fn(X)
        except (Boom, KeyboardInterrupt):
            pass
        bomb.at = None
        assert _state(model) == before, (bomb, at, exc, back)
        assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
        assert _same(fn(X), expected), (bomb, at, exc, back)


def test_interrupted_cache_write_leaves_no_file(tmp_path, monkeypatch):
    """A write interrupted inside torch.save left its temporary file behind."""
    path = str(tmp_path / "cavs" / "c.pt")
    save = torch.save

    def save_then_interrupt(obj, f):
        save(obj, f)
        raise KeyboardInterrupt

    monkeypatch.setattr(_cache.torch, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _cache.save_plain(path, {"v": torch.ones(3)})
    assert os.listdir(os.path.dirname(path)) == []
    monkeypatch.setattr(_cache.torch, "save", save)
    _cache.save_plain(path, {"v": torch.ones(3)})
    assert torch.equal(_cache.load_plain(path)["v"], torch.ones(3))


def test_an_activation_capture_stops_a_forward_that_catches_exceptions():
    """The early stop of a capture is a BaseException: a forward wrapping its layers in
    ``try/except Exception`` does not swallow it and run on (the model's later layers)."""

    class Guarded(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.after = nn.Linear(3, 4), nn.Linear(4, 2), 0

        def forward(self, x):
            try:
                h = self.a(x)
            except Exception:  # noqa: BLE001 (the point of the test)
                h = torch.zeros(x.shape[0], 4)
            self.after += 1
            return self.b(h)

    torch.manual_seed(0)
    model, x = Guarded().eval(), torch.randn(2, 3)
    fn = xattr.layer_activation(xattr.at_layer(model, model.a))
    fn(x)  # the first call of a signature runs the whole forward, to count the layer's calls
    model.after = 0
    act = fn(x)  # later calls stop at the layer
    torch.testing.assert_close(act, model.a(x).detach())
    assert model.after == 0
