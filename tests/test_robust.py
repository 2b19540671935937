"""xattr.robust's attacks (FGSM, PGD) against hand-written references and their invariants."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from xattr.robust import attack_comparator, fgsm, min_param_perturbation, pgd


def _model(seed=0, d=5, c=3):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, c)).double().eval()


def _x(seed=1, b=6, d=5):
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


MODEL, X = _model(), _x()
Y = torch.tensor([0, 1, 2, 0, 1, 2])


def _reference_grad(f, x, y):
    """d/dx of the summed per-example cross-entropy, by torch.autograd directly."""
    x = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(F.cross_entropy(f(x), y, reduction="sum"), x)
    return g


def _loss(f, x, y):
    with torch.no_grad():
        return F.cross_entropy(f(x), y, reduction="none")


# ----------------------------------------------------------------------------- one step


def test_fgsm_is_one_signed_gradient_step():
    g = _reference_grad(MODEL, X, Y)
    torch.testing.assert_close(fgsm(MODEL, X, epsilon=0.1, target=Y), X + 0.1 * g.sign(), rtol=0, atol=0)
    torch.testing.assert_close(fgsm(MODEL, X, epsilon=0.1, target=Y, targeted=True), X - 0.1 * g.sign(), rtol=0, atol=0)


def test_pgd_one_step_is_fgsm_then_projection():
    g = _reference_grad(MODEL, X, Y)
    big = pgd(MODEL, X, radius=1.0, step_size=0.1, step_num=1, target=Y)
    torch.testing.assert_close(big, fgsm(MODEL, X, epsilon=0.1, target=Y), rtol=0, atol=0)
    small = pgd(MODEL, X, radius=0.04, step_size=0.1, step_num=1, target=Y)
    torch.testing.assert_close(small, X + 0.04 * g.sign(), rtol=0, atol=1e-15)
    # L2: the signed step (norm 0.1 * sqrt(5)) rescaled onto the sphere of radius 0.1
    l2 = pgd(MODEL, X, radius=0.1, step_size=0.1, step_num=1, target=Y, norm="L2")
    torch.testing.assert_close(l2, X + 0.1 * g.sign() / math.sqrt(5) * (1 - 1e-6), rtol=1e-6, atol=1e-12)
    # direction="l2": a step along the normalised gradient
    n = pgd(MODEL, X, radius=1.0, step_size=0.1, step_num=1, target=Y, norm="L2", direction="l2")
    torch.testing.assert_close(n, X + 0.1 * g / g.norm(dim=1, keepdim=True))


def test_default_target_is_the_prediction_and_custom_loss():
    pred = MODEL(X).argmax(1)
    torch.testing.assert_close(fgsm(MODEL, X, epsilon=0.1), fgsm(MODEL, X, epsilon=0.1, target=pred))
    margin = lambda out, y: out.gather(1, y[:, None])[:, 0] * -1.0  # noqa: E731  (raise -logit_y)
    x_adv = fgsm(MODEL, X, epsilon=0.1, target=Y, loss=margin)
    x = X.clone().requires_grad_()
    (g,) = torch.autograd.grad(margin(MODEL(x), Y).sum(), x)
    torch.testing.assert_close(x_adv, X + 0.1 * g.sign())


def test_targeted_and_untargeted_directions():
    """On a linear model a small signed step moves every loss the way the attack asks."""
    lin = nn.Linear(5, 3).double().eval()
    up = fgsm(lin, X, epsilon=0.01, target=Y)
    down = fgsm(lin, X, epsilon=0.01, target=Y, targeted=True)
    assert (_loss(lin, up, Y) > _loss(lin, X, Y)).all()
    assert (_loss(lin, down, Y) < _loss(lin, X, Y)).all()
    far = pgd(MODEL, X, radius=0.5, step_size=0.05, step_num=10, target=Y)
    assert _loss(MODEL, far, Y).sum() > _loss(MODEL, X, Y).sum()


def test_per_example_sizes_equal_separate_calls():
    eps = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.05, 0.4], dtype=torch.float64)
    together = pgd(MODEL, X, radius=eps, step_size=eps / 2, step_num=3, target=Y, norm="L2")
    for i in range(6):
        alone = pgd(MODEL, X[i : i + 1], radius=float(eps[i]), step_size=float(eps[i]) / 2, step_num=3, target=Y[i : i + 1], norm="L2")
        torch.testing.assert_close(together[i : i + 1], alone)


# ----------------------------------------------------------------------------- constraints


@given(
    eps=st.floats(0.01, 1.0),
    lo=st.floats(-2.0, -0.1),
    hi=st.floats(0.1, 2.0),
    norm=st.sampled_from(["Linf", "L2"]),
    steps=st.integers(0, 4),
    start=st.booleans(),
)
def test_results_stay_in_the_ball_and_the_bounds(eps, lo, hi, norm, steps, start):
    x = X.clamp(lo, hi)
    one = fgsm(MODEL, x, epsilon=eps, target=Y, lower_bound=lo, upper_bound=hi)
    assert (one - x).abs().max() <= eps + 1e-12 and one.min() >= lo and one.max() <= hi
    many = pgd(MODEL, x, radius=eps, step_size=eps / 3, step_num=steps, norm=norm, random_start=start, target=Y,
               lower_bound=lo, upper_bound=hi, generator=0)  # fmt: skip
    d = many - x
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    assert (size <= eps * (1 + 1e-9)).all()
    assert many.min() >= lo and many.max() <= hi


def test_mask_is_respected():
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)  # broadcast over the batch
    for out in (
        fgsm(MODEL, X, epsilon=0.3, target=Y, mask=mask),
        pgd(MODEL, X, radius=0.3, step_size=0.1, step_num=3, target=Y, mask=mask, random_start=True, generator=1),
        pgd(MODEL, X, radius=0.3, step_size=0.1, step_num=3, target=Y, mask=mask, norm="L2", random_start=True, generator=1),
    ):
        assert torch.equal(out[:, mask == 0], X[:, mask == 0])
        assert (out[:, mask == 1] != X[:, mask == 1]).all()


def test_random_start_seeded_and_batch_size_invariant():
    kw = dict(radius=0.3, step_size=0.1, step_num=2, target=Y, random_start=True)
    for norm in ("Linf", "L2"):
        a = pgd(MODEL, X, norm=norm, generator=7, **kw)
        assert torch.equal(a, pgd(MODEL, X, norm=norm, generator=7, **kw))
        assert not torch.equal(a, pgd(MODEL, X, norm=norm, generator=8, **kw))
        head = pgd(MODEL, X[:2], norm=norm, generator=7, **{**kw, "target": Y[:2]})
        torch.testing.assert_close(a[:2], head, rtol=0, atol=0)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(pgd(MODEL, X, generator=g1, **kw), pgd(MODEL, X, generator=g2, **kw))


def test_random_start_fills_the_l2_ball():
    """Radii r * U^(1/d): the fraction of starts inside radius t * r is t^d."""
    x = torch.zeros(4000, 2, dtype=torch.float64)
    lin = nn.Linear(2, 2).double().eval()
    start = pgd(lin, x, radius=1.0, step_size=0.0, step_num=0, random_start=True, norm="L2", generator=0, target=0)
    inside = (start.norm(dim=1) < 0.5).double().mean()
    assert abs(float(inside) - 0.25) < 0.03


# ----------------------------------------------------------------------------- purity, structure, transforms


def test_never_mutates_inputs_or_model():
    x = X.clone()
    before = {k: v.clone() for k, v in MODEL.state_dict().items()}
    out = pgd(MODEL, x, radius=0.3, step_size=0.1, step_num=2, target=Y, random_start=True, generator=0)
    assert torch.equal(x, X) and not x.requires_grad and not out.requires_grad
    assert all(torch.equal(v, before[k]) for k, v in MODEL.state_dict().items())
    assert all(p.grad is None for p in MODEL.parameters())
    leaf = X.clone().requires_grad_()
    assert not fgsm(MODEL, leaf, epsilon=0.1, target=Y).requires_grad and leaf.grad is None


def test_one_forward_pass_per_step_for_the_whole_batch():
    calls = []

    def counted(x):
        calls.append(x.shape[0])
        return MODEL(x)

    pgd(counted, X, radius=0.3, step_size=0.1, step_num=3, target=Y)
    assert calls == [6, 6, 6]
    fgsm(counted, X, epsilon=0.1)  # plus one call for the default target (the prediction)
    assert calls == [6] * 5


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(2, 3)

    def forward(self, x1, x2, scale):
        return (self.a(x1) + torch.tanh(self.b(x2))) * scale


def test_tuple_of_arguments_and_argnums():
    torch.manual_seed(0)
    model = TwoInputs().double().eval()
    x1, x2, scale = _x(2, 6, 3), _x(3, 6, 2), _x(4, 6, 1).abs()
    out = fgsm(model, (x1, x2, scale), epsilon=0.1, target=Y, argnums=(0, 1))
    assert len(out) == 3 and out[2] is scale
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    g1, g2 = torch.autograd.grad(F.cross_entropy(model(a, b, scale), Y, reduction="sum"), (a, b))
    torch.testing.assert_close(out[0], x1 + 0.1 * g1.sign())
    torch.testing.assert_close(out[1], x2 + 0.1 * g2.sign())
    only2 = pgd(model, (x1, x2, scale), radius=0.2, step_size=0.1, step_num=2, target=Y, argnums=1)
    assert only2[0] is x1 and (only2[1] - x2).abs().max() <= 0.2 + 1e-12


def test_adversarial_training_gradient_inside_torch_func():
    """The attack runs inside torch.func.grad over the parameters (attribution-style training)."""
    params = {k: v.detach() for k, v in MODEL.named_parameters()}

    def training_loss(p):
        f = functools.partial(torch.func.functional_call, MODEL, p)
        x_adv = pgd(f, X, radius=0.2, step_size=0.1, step_num=2, target=Y)
        return F.cross_entropy(f(x_adv), Y)

    got = torch.func.grad(training_loss)(params)
    x_adv = pgd(MODEL, X, radius=0.2, step_size=0.1, step_num=2, target=Y)
    expected = torch.autograd.grad(F.cross_entropy(MODEL(x_adv), Y), list(MODEL.parameters()))
    for (name, _), e in zip(MODEL.named_parameters(), expected):
        torch.testing.assert_close(got[name], e)


def _unrolled_l2_pgd(f, x, y, radius, step_size, step_num):
    """PGD with normalised-gradient steps and L2 projection, written out with torch.autograd
    (create_graph=True, so that the result stays a differentiable function of f's parameters)."""
    xt = x.clone().requires_grad_()
    for _ in range(step_num):
        (g,) = torch.autograd.grad(F.cross_entropy(f(xt), y, reduction="sum"), xt, create_graph=True)
        diff = xt + step_size * g / g.norm(dim=1, keepdim=True) - x
        norm = diff.norm(dim=1, keepdim=True)
        xt = x + diff * torch.where(norm > radius, radius / (norm + 1e-7), torch.ones_like(norm))
    return xt


@pytest.mark.parametrize("fixed", [False, True])
def test_adversarial_training_through_an_l2_attack(fixed):
    """Inside torch.func.grad the attack is differentiated through (the unrolled attack's
    derivative); detaching x_adv gives the gradient at a fixed x_adv. The two differ for
    direction="l2" (docs/robustness.md)."""
    params = {k: v.detach() for k, v in MODEL.named_parameters()}
    kw = dict(radius=0.3, step_size=0.2, step_num=3, target=Y, norm="L2", direction="l2")

    def training_loss(p):
        f = functools.partial(torch.func.functional_call, MODEL, p)
        x_adv = pgd(f, X, **kw)
        return F.cross_entropy(f(x_adv.detach() if fixed else x_adv), Y)

    got = torch.func.grad(training_loss)(params)
    ref_params = {k: v.clone().requires_grad_() for k, v in params.items()}
    f = functools.partial(torch.func.functional_call, MODEL, ref_params)
    x_adv = _unrolled_l2_pgd(f, X, Y, radius=0.3, step_size=0.2, step_num=3)
    torch.testing.assert_close(x_adv.detach(), pgd(MODEL, X, **kw))
    x_adv = x_adv.detach() if fixed else x_adv
    expected = torch.autograd.grad(F.cross_entropy(f(x_adv), Y), list(ref_params.values()))
    for name, e in zip(ref_params, expected):
        torch.testing.assert_close(got[name], e)
    if not fixed:
        fixed_grads = torch.autograd.grad(F.cross_entropy(f(x_adv.detach()), Y), list(ref_params.values()))
        assert max(float((e - d).abs().max()) for e, d in zip(expected, fixed_grads)) > 1e-5


def test_errors():
    with pytest.raises(ValueError, match="norm"):
        pgd(MODEL, X, radius=0.1, step_size=0.1, step_num=1, target=Y, norm="L1")
    with pytest.raises(ValueError, match="targeted attack needs target"):
        fgsm(MODEL, X, epsilon=0.1, targeted=True)
    with pytest.raises(ValueError, match="does not broadcast"):
        fgsm(MODEL, X, epsilon=0.1, target=Y, mask=torch.ones(3))
    with pytest.raises(ValueError, match="epsilon"):
        fgsm(MODEL, X, epsilon=torch.ones(2), target=Y)
    with pytest.raises(TypeError, match="floating-point"):
        fgsm(MODEL, Y, epsilon=0.1, target=Y)
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        fgsm(lambda x: x.sum(1), X, epsilon=0.1, target=Y)
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        pgd(lambda x: x.sum(1), X, radius=0.1, step_size=0.1, step_num=1)
    with pytest.raises(ValueError, match="Original"):
        attack_comparator(MODEL, X, lambda o: o, {"Original": lambda x: x})
    with pytest.raises(ValueError, match="arg_max"):
        min_param_perturbation(MODEL, X, lambda x, e: x, "e", 0.0, 0.1, 0.1)


def test_a_non_finite_loss_is_named_as_the_loss():
    """-log of a probability that underflowed to 0: the error blames the loss, not the model."""
    neg_log = lambda out, y: -torch.log(torch.softmax(out * 1e4, 1)).gather(1, y[:, None])[:, 0]  # noqa: E731
    assert not torch.isfinite(neg_log(MODEL(X), Y)).all()
    for attack in (functools.partial(fgsm, epsilon=0.1), functools.partial(pgd, radius=0.1, step_size=0.1, step_num=1)):
        with pytest.raises(FloatingPointError, match=r"the attack loss is non-finite .* -log\(p\)"):
            attack(MODEL, X, target=Y, loss=neg_log)

    def failing(x):
        raise FloatingPointError("the model's own error")

    with pytest.raises(FloatingPointError, match="the model's own error"):  # passed on as it is
        fgsm(failing, X, epsilon=0.1, target=Y)



def test_a_nan_gradient_entry_stays_where_it_is_and_the_rest_moves():
    """A finite loss whose gradient has NaN entries: those entries stay (torch's sign of NaN is 0),
    the others move, as Captum's threshold does; the docstring of fgsm promises it."""
    w = torch.tensor([[1.0, -2.0, 0.5]])

    def f(x):
        return x @ w.T  # (B, 1)

    def loss(out, target):
        return out[:, 0]  # finite

    x = torch.tensor([[0.2, 0.4, 0.6]])
    nan_at_0 = torch.tensor([[float("nan"), 1.0, 1.0]])

    class NanGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g * nan_at_0

    adv = fgsm(lambda x: f(NanGrad.apply(x)), x, epsilon=0.1, target=0, loss=loss)
    assert torch.isfinite(adv).all()
    torch.testing.assert_close(adv, torch.tensor([[0.2, 0.3, 0.7]]))


@pytest.mark.parametrize("attack, size", [(fgsm, "epsilon"), (pgd, "radius"), (pgd, "step_size")])
@pytest.mark.parametrize("bad", [-0.1, float("nan"), "tensor"])
def test_a_negative_size_is_refused_not_turned_around(attack, size, bad):
    """A negative epsilon or radius flipped the step (the loss fell where it should rise) silently."""
    value = torch.tensor([0.1, 0.1, -0.1, 0.1, 0.1, 0.1]) if bad == "tensor" else bad
    kwargs = {"epsilon": 0.1} if attack is fgsm else {"radius": 0.1, "step_size": 0.05, "step_num": 2}
    kwargs[size] = value
    with pytest.raises(ValueError, match=f"{size} must be >= 0"):
        attack(MODEL, X, target=Y, **kwargs)
    kwargs[size] = 0.0  # zero is a size: no perturbation
    assert torch.equal(attack(MODEL, X, target=Y, **kwargs), X)


@pytest.mark.parametrize("lo, hi", [(1.0, 0.0), (torch.zeros(5), -torch.ones(5))])
def test_inverted_bounds_are_refused(lo, hi):
    """lower_bound > upper_bound clamped every input to the upper bound."""
    for attack in (lambda **kw: fgsm(MODEL, X, epsilon=0.1, target=Y, **kw),
                   lambda **kw: pgd(MODEL, X, radius=0.1, step_size=0.05, step_num=2, target=Y, **kw)):
        with pytest.raises(ValueError, match="lower_bound must not exceed upper_bound"):
            attack(lower_bound=lo, upper_bound=hi)
    assert fgsm(MODEL, X, epsilon=0.1, target=Y, lower_bound=-10.0, upper_bound=10.0).shape == X.shape
