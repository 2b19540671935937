"""xattr.robust's attack comparator and minimal perturbation against explicit loops, and every
tool of xattr.robust on an empty batch."""

import functools
import math

import pytest
import torch
from torch import nn

from xattr.robust import attack_comparator, fgsm, min_param_perturbation, pgd

from test_robust import MODEL, X, Y

# ----------------------------------------------------------------------------- comparator


class Shift:
    """A deterministic stand-in for a random attack: attempt k adds k * step."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, step):
        self.calls += 1
        return x + self.calls * step


def accuracy(out, y):
    return (out.argmax(1) == y).double()


@pytest.mark.parametrize("per_eval", [1, 4])
def test_attack_comparator_equals_explicit_loops(per_eval):
    shift = Shift()
    attacks = {
        "fgsm": (functools.partial(fgsm, MODEL), {"epsilon": 0.2, "target": Y}),
        "shift": (shift, {"step": 0.3}, 3),
    }
    res = attack_comparator(MODEL, X, accuracy, attacks, metric_kwargs={"y": Y}, perturbations_per_eval=per_eval)
    assert list(res) == ["Original", "fgsm", "shift"]
    orig = accuracy(MODEL(X), Y)
    assert all(torch.equal(res["Original"][k], orig) for k in ("mean", "min", "max"))
    one = accuracy(MODEL(fgsm(MODEL, X, epsilon=0.2, target=Y)), Y)
    assert all(torch.equal(res["fgsm"][k], one) for k in ("mean", "min", "max"))
    tries = torch.stack([accuracy(MODEL(X + k * 0.3), Y) for k in (1, 2, 3)])
    torch.testing.assert_close(res["shift"]["mean"], tries.mean(0))
    assert torch.equal(res["shift"]["min"], tries.amin(0)) and torch.equal(res["shift"]["max"], tries.amax(0))
    assert shift.calls == 3


def test_attack_comparator_tuple_metrics_numbers_and_no_original():
    def metric(out):
        return float(out.sum()), out.max(1).values

    res = attack_comparator(MODEL, X, metric, {"a": (lambda x, s: x * s, {"s": 2.0})}, include_original=False)
    assert list(res) == ["a"]
    with torch.no_grad():
        out = MODEL(X * 2.0)
    assert res["a"]["mean"][0] == pytest.approx(float(out.sum()))
    torch.testing.assert_close(res["a"]["max"][1], out.max(1).values)


def _tree_model():
    with torch.random.fork_rng():
        torch.manual_seed(2)
        lin_a, lin_b = nn.Linear(5, 3).double(), nn.Linear(4, 3).double()

    def f(d, scale):  # a dict of tensors and a per-example tensor, as f's two arguments
        return lin_a(d["a"]) * scale[:, None] + torch.tanh(lin_b(d["b"]))

    return f


def _tree_input(b):
    g = torch.Generator().manual_seed(b)
    d = {"a": torch.randn(b, 5, generator=g, dtype=torch.float64), "b": torch.randn(b, 4, generator=g, dtype=torch.float64)}
    return d, torch.rand(b, generator=g, dtype=torch.float64) + 0.5


def _tree_shift(x, step):
    """Moves every leaf, the per-example scale included (a deterministic, non-gradient attack)."""
    d, scale = x
    return {k: v + step for k, v in d.items()}, scale * (1 + step)


@pytest.mark.parametrize("b", [1, 4])
def test_attack_comparator_groups_pytree_inputs_leafwise(b):
    """perturbations_per_eval groups the copies leaf by leaf: the numbers are those of a loop."""
    f, x = _tree_model(), _tree_input(b)
    y = f(*x).argmax(1)
    attacks = {
        "fgsm": (functools.partial(fgsm, f), {"epsilon": 2.0, "target": y}),
        "shift": (_tree_shift, {"step": 0.7}, 2),
    }
    with torch.no_grad():
        loop = {
            "Original": accuracy(f(*x), y),
            "fgsm": accuracy(f(*fgsm(f, x, epsilon=2.0, target=y)), y),
            "shift": accuracy(f(*_tree_shift(x, 0.7)), y),
        }
    assert not torch.equal(loop["fgsm"], loop["Original"])  # the attack changes the metric
    for per_eval in (1, 2, 5):
        res = attack_comparator(f, x, accuracy, attacks, metric_kwargs={"y": y}, perturbations_per_eval=per_eval)
        assert list(res) == list(loop)
        for name, expected in loop.items():
            assert all(torch.equal(res[name][k], expected) for k in ("mean", "min", "max")), (per_eval, name)


def test_grouping_splits_tuple_outputs_and_refuses_unshared_leaves():
    def f(x, offset):
        out = MODEL(x + offset)
        return out, out.sum(1)

    metric = lambda out: out[0][:, 0] + out[1]  # noqa: E731
    attacks = {"shift": (lambda x, s: (x[0] + s, x[1]), {"s": 0.5})}
    one, two = (attack_comparator(f, (X, 0.25), metric, attacks, perturbations_per_eval=n) for n in (1, 2))
    with torch.no_grad():
        expected = metric(f(X + 0.5, 0.25))
    assert torch.equal(one["shift"]["mean"], expected) and torch.equal(two["shift"]["mean"], expected)
    changes_offset = {"offset": (lambda x, s: (x[0], x[1] + s), {"s": 0.5})}
    assert torch.equal(attack_comparator(f, (X, 0.25), metric, changes_offset)["offset"]["mean"], expected)
    with pytest.raises(TypeError, match="perturbations_per_eval=1"):  # 0.25 and 0.75 cannot share one call
        attack_comparator(f, (X, 0.25), metric, changes_offset, perturbations_per_eval=2)
    with pytest.raises(ValueError, match="one row per input row"):
        attack_comparator(lambda x: MODEL(x).sum(), X, lambda out: out, {"shift": lambda x: x + 1}, perturbations_per_eval=2)


# ----------------------------------------------------------------------------- minimal perturbation


THRESHOLDS = torch.tensor([0.375, 0.625, 0.815], dtype=torch.float64)  # off the grid of step 0.01
FIRST_WRONG = [0.38, 0.63, 0.82]  # the first grid value past each threshold


def _threshold_model(x):
    """Class 0 while x[:, 0] > 0: untargeted FGSM moves x[:, 0] down by epsilon."""
    return torch.stack([x[:, 0], torch.zeros_like(x[:, 0])], dim=1)


@pytest.mark.parametrize("i", range(3))
def test_min_param_linear_and_binary_find_the_threshold(i):
    x = torch.zeros(1, 2, dtype=torch.float64)
    x[0, 0] = THRESHOLDS[i]
    y = torch.tensor([0])
    attack = functools.partial(fgsm, _threshold_model, target=y)
    found = {}
    for mode in ("linear", "binary"):
        adv, eps = min_param_perturbation(_threshold_model, x, attack, "epsilon", 0.0, 1.0, 0.01, mode=mode, target=y)
        assert _threshold_model(adv).argmax(1).item() == 1
        found[mode] = eps
    assert found["linear"] == pytest.approx(FIRST_WRONG[i]) and found["binary"] == pytest.approx(FIRST_WRONG[i])


def test_min_param_is_per_batch_and_none_when_never_fooled():
    x = torch.stack([THRESHOLDS, torch.zeros(3, dtype=torch.float64)], dim=1)
    y = torch.zeros(3, dtype=torch.long)
    attack = functools.partial(fgsm, _threshold_model, target=y)
    for mode in ("linear", "binary"):  # the first example to flip decides
        adv, eps = min_param_perturbation(_threshold_model, x, attack, "epsilon", 0.0, 1.0, 0.01, mode=mode, target=y,
                                          perturbations_per_eval=3)  # fmt: skip
        assert eps == pytest.approx(0.38)
        assert min_param_perturbation(_threshold_model, x, attack, "epsilon", 0.0, 0.3, 0.01, mode=mode, target=y) == (None, None)
    per_example = lambda out, target: bool((out.argmax(1) == target)[2])  # noqa: E731  (a custom correct_fn)
    _, eps = min_param_perturbation(_threshold_model, x, attack, "epsilon", 0.0, 1.0, 0.01, target=y, correct_fn=per_example)
    assert eps == pytest.approx(0.82)


def test_min_param_groups_pytree_inputs_leafwise():
    def f(d, scale):  # class 0 while d["a"][:, 0] * scale > 0
        return torch.stack([d["a"][:, 0] * scale, torch.zeros_like(scale)], dim=1)

    x = ({"a": torch.tensor([[0.3, 1.0]], dtype=torch.float64)}, torch.ones(1, dtype=torch.float64))
    y = torch.tensor([0])
    attack = functools.partial(fgsm, f, target=y)  # attacks the dict (argnums=0)
    for mode in ("linear", "binary"):
        for per_eval in (1, 3):
            adv, eps = min_param_perturbation(f, x, attack, "epsilon", 0.0, 1.0, 1 / 16, mode=mode, target=y,
                                              perturbations_per_eval=per_eval)  # fmt: skip
            assert eps == 5 / 16, (mode, per_eval)  # the first grid value past 0.3
            assert f(*adv).argmax(1).item() == 1


def test_min_param_grid_is_built_by_index_and_excludes_arg_max():
    """(0, 1, 0.1): the values i * 0.1 for i < 10; by repeated addition the eleventh would be
    0.9999999999999999, arg_max in all but rounding."""
    tried = []

    def attack(x, v):
        tried.append(v)
        return x + v

    correct_below = lambda out, thr: bool((out < thr).all())  # noqa: E731
    for mode in ("linear", "binary"):
        tried.clear()
        found = min_param_perturbation(lambda x: x, torch.zeros(1), attack, "v", 0.0, 1.0, 0.1, mode=mode,
                                       correct_fn=correct_below, correct_kwargs={"thr": 0.95})  # fmt: skip
        assert found == (None, None), mode
        assert set(tried) <= {i * 0.1 for i in range(10)}
        if mode == "linear":
            assert tried == [i * 0.1 for i in range(10)]
        _, value = min_param_perturbation(lambda x: x, torch.zeros(1), attack, "v", 0.0, 1.0, 0.1, mode=mode,
                                          correct_fn=correct_below, correct_kwargs={"thr": 0.85})  # fmt: skip
        assert value == 9 * 0.1, mode  # the same float in both modes
    # integer grids stay integers; a grid ending just below arg_max keeps its last value
    _, steps = min_param_perturbation(lambda x: x, torch.zeros(1), attack, "v", 0, 10, 3,
                                      correct_fn=correct_below, correct_kwargs={"thr": 8})  # fmt: skip
    assert steps == 9 and isinstance(steps, int)
    for mode in ("linear", "binary"):
        _, value = min_param_perturbation(lambda x: x, torch.zeros(1), attack, "v", 0.0, 1.0 + 1e-6, 0.1, mode=mode,
                                          correct_fn=correct_below, correct_kwargs={"thr": 0.95})  # fmt: skip
        assert value == 10 * 0.1, mode
    for bad in ((0.0, 1.0, 0.0), (0.0, 1.0, -0.1), (0.0, math.inf, 0.1), (math.nan, 1.0, 0.1)):
        with pytest.raises(ValueError, match="arg_"):
            min_param_perturbation(lambda x: x, torch.zeros(1), attack, "v", *bad)

# ----------------------------------------------------------------------------- empty batches


def test_empty_batch_gives_empty_results():
    x0, y0 = X[:0], Y[:0]
    attacks = {
        "fgsm": lambda: fgsm(MODEL, x0, epsilon=0.1, target=y0),
        "fgsm, default target": lambda: fgsm(MODEL, x0, epsilon=0.1),
    }
    for norm in ("Linf", "L2"):
        for direction in ("sign", "l2"):
            for start in (False, True):
                for generator in (None, 0):
                    attacks[f"pgd {norm} {direction} {start} {generator}"] = functools.partial(
                        pgd, MODEL, x0, radius=0.1, step_size=0.1, step_num=2, target=y0, norm=norm,
                        direction=direction, random_start=start, generator=generator,
                    )  # fmt: skip
    for name, attack in attacks.items():
        out = attack()
        assert out.shape == (0, 5) and out.dtype == X.dtype, name
    for per_eval in (1, 3):
        res = attack_comparator(MODEL, x0, accuracy, {"fgsm": (functools.partial(fgsm, MODEL), {"epsilon": 0.1, "target": y0}, 2)},
                                metric_kwargs={"y": y0}, perturbations_per_eval=per_eval)  # fmt: skip
        assert list(res) == ["Original", "fgsm"]
        assert all(v.shape == (0,) for r in res.values() for v in r.values())
        for mode in ("linear", "binary"):  # every example of an empty batch is correct: never fooled
            found = min_param_perturbation(MODEL, x0, functools.partial(fgsm, MODEL, target=y0), "epsilon", 0.0, 1.0, 0.1,
                                           mode=mode, target=y0, perturbations_per_eval=per_eval)  # fmt: skip
            assert found == (None, None)
