"""padding_bias and border_ratio: constant maps without zero padding, a biased border with it."""

import math

import pytest
import torch
from torch import nn

import xattr
from xattr._src.demo_model import DigitsCNN


def _net(mode="zeros", padding=1, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=padding, padding_mode=mode),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=padding, padding_mode=mode),
        nn.ReLU(),
        nn.Flatten(),
    ).eval()


def _reference(model, module, shape, fill):
    """The slow way: a plain forward hook, one channel at a time."""
    seen = []
    handle = module.register_forward_hook(lambda mod, inp, out: seen.append(out.detach().clone()))
    try:
        with torch.no_grad():
            model(torch.full((1, *shape), float(fill)))
    finally:
        handle.remove()
    (out,) = seen
    c = out.shape[1]
    total = torch.zeros(out.shape[2:])
    for k in range(c):
        total += out[0, k]
    return total / c


@pytest.mark.parametrize("mode,padding", [("circular", 1), ("zeros", 0)])
def test_no_zero_padding_gives_constant_map(mode, padding):
    model = _net(mode, padding)
    maps = xattr.padding_bias(model, {"c1": model[0], "c2": model[2]}, (1, 8, 8), fill=[0.3, 1.0])
    assert set(maps) == {"c1", "c2"}
    side = 8 if padding else 4
    assert maps["c2"].shape == (side, side)
    for m in maps.values():
        assert float((m - m.mean()).abs().max()) <= 1e-6
        assert xattr.border_ratio(m) <= 1e-6


def test_zero_padding_biases_the_border():
    model = _net("zeros", 1)
    maps = xattr.padding_bias(model, [model[0], model[2]], (1, 8, 8), fill=1.0)
    assert list(maps) == ["0", "2"]  # named by their path in the model
    for m in maps.values():
        assert m.shape == (8, 8)
        interior = m[2:-2, 2:-2]
        assert float((interior - interior.mean()).abs().max()) <= 1e-6  # far from the pad: constant
        assert float((m[0] - interior.mean()).abs().max()) > 1e-4  # top row differs
        assert float((m[:, -1] - interior.mean()).abs().max()) > 1e-4  # right column differs
    # one padded layer: only the outer ring differs, so the interior of width 1 is constant
    assert xattr.border_ratio(maps["0"]) == math.inf
    # two: the second ring differs too, a finite positive ratio
    r = xattr.border_ratio(maps["2"])
    assert 0 < r < math.inf
    assert xattr.border_ratio(maps["2"], width=2) == math.inf


@pytest.mark.parametrize("fill", [0.0, 0.7, -1.5])
def test_matches_forward_hook_reference(fill):
    model = _net("zeros", 1, seed=3)
    maps = xattr.padding_bias(model, {"a": model[1], "b": model[3]}, (1, 8, 8), fill=fill)
    torch.testing.assert_close(maps["a"], _reference(model, model[1], (1, 8, 8), fill))
    torch.testing.assert_close(maps["b"], _reference(model, model[3], (1, 8, 8), fill))


def test_fills_are_averaged():
    model = _net("zeros", 1, seed=1)
    both = xattr.padding_bias(model, [model[2]], (1, 8, 8), fill=[0.2, 0.9])["2"]
    one = [xattr.padding_bias(model, [model[2]], (1, 8, 8), fill=v)["2"] for v in (0.2, 0.9)]
    torch.testing.assert_close(both, (one[0] + one[1]) / 2)


def test_demo_model_and_dtype():
    torch.manual_seed(0)
    model = DigitsCNN().double().eval()
    maps = xattr.padding_bias(model, [model[1], model[3]], (1, 8, 8), fill=0.5, dtype=torch.float64)
    assert maps["3"].dtype == torch.float64 and maps["3"].shape == (8, 8)
    assert xattr.border_ratio(maps["3"]) > 0


@pytest.mark.parametrize("training", [False, True])
def test_model_unchanged(training):
    model = _net("zeros", 1)
    model.train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    xattr.padding_bias(model, [model[0], model[2]], (1, 8, 8))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(m.training == training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_argument_errors():
    model = _net()
    with pytest.raises(ValueError, match="empty"):
        xattr.padding_bias(model, [], (1, 8, 8))
    with pytest.raises(ValueError, match="empty"):
        xattr.padding_bias(model, {}, (1, 8, 8))
    with pytest.raises(ValueError, match="not a module of the model"):
        xattr.padding_bias(model, [nn.Conv2d(1, 1, 3)], (1, 8, 8))
    with pytest.raises(ValueError, match="not a module of the model"):
        xattr.padding_bias(model, {"x": nn.Conv2d(1, 1, 3)}, (1, 8, 8))
    with pytest.raises(TypeError):
        xattr.padding_bias(model, ["0"], (1, 8, 8))
    with pytest.raises(TypeError, match="input_shape"):
        xattr.padding_bias(model, [model[0]], 8)
    for bad in [(), (1, 0, 8), (1, -8, 8), (1, 8.0, 8)]:
        with pytest.raises(ValueError, match="input_shape"):
            xattr.padding_bias(model, [model[0]], bad)
    with pytest.raises(ValueError, match="fill"):
        xattr.padding_bias(model, [model[0]], (1, 8, 8), fill=[])
    with pytest.raises(ValueError, match=r"\(1, C, H, W\)"):
        xattr.padding_bias(model, [model[4]], (1, 8, 8))  # Flatten: 2-D output
    assert all(not m._forward_hooks for m in model.modules())


def test_border_ratio_known_values():
    m = torch.zeros(5, 5)
    assert xattr.border_ratio(m) == 0.0  # 0/0
    m[0, 0] = 1.0
    assert xattr.border_ratio(m) == math.inf  # constant interior, border differs
    # interior 3x3: one 1 among zeros -> mean 1/9, mean |dev| = (8 * 1/9 + 8/9) / 9 = 16/81
    # border ring of 16 pixels, all 0 -> mean |dev| = 1/9
    m = torch.zeros(5, 5)
    m[2, 2] = 1.0
    assert xattr.border_ratio(m) == pytest.approx((1 / 9) / (16 / 81))
    # border all 2, interior alternating 0/1 on a 4x4 with width 1: interior [[0,1],[1,0]]
    m = torch.full((4, 4), 2.0)
    m[1:3, 1:3] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert xattr.border_ratio(m) == pytest.approx(1.5 / 0.5)
    # width 2 on a 6x6: interior is the 2x2 centre
    m = torch.full((6, 6), 5.0)
    m[2:4, 2:4] = torch.tensor([[1.0, 3.0], [3.0, 1.0]])
    assert xattr.border_ratio(m, width=2) == pytest.approx(3.0 / 1.0)
    assert xattr.border_ratio(m.numpy(), width=2) == pytest.approx(3.0)
    # rounding noise counts as zero, an explicit tol overrides
    m = torch.ones(5, 5)
    m[0, 0] += 1e-7
    assert xattr.border_ratio(m) == 0.0
    assert xattr.border_ratio(m, tol=0.0) == math.inf


def test_border_ratio_errors():
    with pytest.raises(ValueError, match="2-D"):
        xattr.border_ratio(torch.zeros(1, 5, 5))
    with pytest.raises(ValueError, match="interior"):
        xattr.border_ratio(torch.zeros(4, 4), width=2)
    with pytest.raises(ValueError, match="width"):
        xattr.border_ratio(torch.zeros(5, 5), width=0)
    with pytest.raises(ValueError, match="finite"):
        xattr.border_ratio(torch.full((5, 5), float("nan")))
