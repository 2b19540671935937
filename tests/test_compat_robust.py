"""xattr.compat.captum's FGSM, PGD, AttackComparator and MinParamPerturbation against Captum 0.9.

The deterministic cases live in tests/gen_captum_robust_expected.py, which also wrote Captum's
numbers into tests/captum_robust_expected.py; both libraries go through the same ``run``.
Random starts, which Captum draws from torch's global generator, are compared live when captum
is installed.
"""

import warnings

import pytest
import torch

from xattr.compat import captum as X
from xattr.compat.captum import robust as R

try:  # tests/ on sys.path (pytest's default rootdir-less import mode) or tests as a package
    from . import captum_robust_expected as E
    from . import gen_captum_robust_expected as G
except ImportError:
    import captum_robust_expected as E
    import gen_captum_robust_expected as G

MODELS = G.build_models()
CASES = {c.name: c for c in G.CASES}


def _matches(out, expected, path="result"):
    """out has expected's structure (dicts, tuples, None, numbers) and its values."""
    if expected is None:
        assert out is None, f"{path}: expected None"
    elif isinstance(expected, dict):
        assert isinstance(out, dict) and set(out) == set(expected), f"{path}: keys {sorted(out)} != {sorted(expected)}"
        for k in expected:
            _matches(out[k], expected[k], f"{path}[{k!r}]")
    elif isinstance(expected, tuple):
        assert isinstance(out, tuple) and len(out) == len(expected), f"{path}: expected a tuple of {len(expected)}"
        for i, (o, e) in enumerate(zip(out, expected)):
            _matches(o, e, f"{path}[{i}]")
    elif isinstance(expected, float) and not isinstance(out, torch.Tensor):
        assert out == pytest.approx(expected, rel=1e-9), path
    else:
        assert isinstance(out, torch.Tensor), f"{path}: expected a tensor, got {type(out).__name__}"
        assert not out.requires_grad, f"{path}: compat results are detached"
        torch.testing.assert_close(out, torch.tensor(expected, dtype=out.dtype), rtol=1e-6, atol=1e-8, msg=path)


@pytest.mark.parametrize("name", list(CASES))
def test_same_numbers_as_captum(name):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = G.run(CASES[name], R, MODELS)
    _matches(out, E.EXPECTED[name])


def test_exported_from_the_package_and_callable():
    assert getattr(X, "FGSM", R.FGSM) is R.FGSM  # exported by xattr.compat.captum
    model = MODELS["mlp"]
    attack = R.FGSM(model, lower_bound=-1.0, upper_bound=1.0)
    torch.testing.assert_close(attack(G.X, 0.1, G.Y), attack.perturb(G.X, 0.1, G.Y))
    assert attack.bound(torch.tensor([-3.0, 3.0])).tolist() == [-1.0, 1.0]
    assert attack.zero_thresh == 1e-6 and R.PGD(model).fgsm.zero_thresh == 1e-6


def test_comparator_keeps_the_metric_type_and_warns_on_missing_args():
    model = MODELS["mlp"]
    cmp = R.AttackComparator(model, G.metric)
    cmp.add_attack(R.FGSM(model), attack_kwargs={"epsilon": 0.1}, additional_attack_arg_names=["target", "missing"])
    with pytest.raises(RuntimeError, match="same name"):
        cmp.add_attack(R.FGSM(model))
    with pytest.warns(UserWarning, match="missing"):
        res = cmp.evaluate(G.X, target=G.Y)
    assert isinstance(res["Original"], G.Metrics) and set(res["FGSM"]) == {"mean"}
    cmp.reset()
    assert cmp.summary() == {}


def test_comparator_summary_leaves_out_empty_batches():
    """An empty batch's means are empty: the summary averages the other batches (Captum's turns nan)."""
    model = MODELS["mlp"]
    cmp = R.AttackComparator(model, lambda out: out[:, 0])
    cmp.add_attack(lambda x: x + 0.1, "shift")
    first = cmp.evaluate(G.X)
    empty = cmp.evaluate(G.X[:0])
    assert empty["Original"].shape == (0,) and empty["shift"]["mean"].shape == (0,)
    second = cmp.evaluate(G.X[:2])
    summary = cmp.summary()
    for key, mean in (("Original", lambda r: r["Original"]), ("shift", lambda r: r["shift"]["mean"])):
        torch.testing.assert_close(summary[key]["mean"], (mean(first).mean() + mean(second).mean()) / 2)


def test_preproc_before_and_after_the_attack():
    """apply_before_preproc: the attack sees the raw inputs and the model their preprocessing."""
    model = MODELS["mlp"]
    pre = lambda x: x * 2.0  # noqa: E731
    shift = lambda x, d: x + d  # noqa: E731
    cmp = R.AttackComparator(model, lambda out: out[:, 0], preproc_fn=pre)
    cmp.add_attack(shift, "before", attack_kwargs={"d": 0.1})
    cmp.add_attack(shift, "after", apply_before_preproc=False, attack_kwargs={"d": 0.1})
    res = cmp.evaluate(G.X)
    with torch.no_grad():
        torch.testing.assert_close(res["before"]["mean"], model(pre(G.X + 0.1))[:, 0])
        torch.testing.assert_close(res["after"]["mean"], model(pre(G.X) + 0.1)[:, 0])
    x0 = float(G.X[0, 0])  # the model below is correct while 2 * x0 (+ shifts) stays below 3
    for before, first in ((True, (1.5 - x0) // 0.5 * 0.5 + 0.5), (False, (3 - 2 * x0) // 0.5 * 0.5 + 0.5)):
        mp = R.MinParamPerturbation(lambda x: x, shift, "d", 0.0, 50.0, 0.5, mode="binary", preproc_fn=pre,
                                    apply_before_preproc=before, correct_fn=lambda out: bool((out[:, 0] < 3).all()))  # fmt: skip
        adv, d = mp.evaluate(G.X[:1])
        assert d == pytest.approx(first)
        torch.testing.assert_close(adv, G.X[:1] + d if before else pre(G.X[:1]) + d)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_random_start_matches_captum_under_the_same_global_seed(norm):
    """Captum draws from torch's global generator; so does the adapter without ``generator``.

    L2 with one example only: Captum 0.9 multiplies a (B,) radius into the last axis, which
    broadcasts only for B = 1 (the adapter draws one radius per example).
    """
    robust = pytest.importorskip("captum.robust")
    model = MODELS["mlp"]
    x, y = (G.X, G.Y) if norm == "Linf" else (G.X[:1], G.Y[:1])
    outs = []
    for lib in (robust, R):
        torch.manual_seed(5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outs.append(lib.PGD(model, lower_bound=-2.0, upper_bound=2.0).perturb(x, 0.3, 0.05, 3, y, random_start=True, norm=norm))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-6, atol=1e-8)


def test_seeded_random_start():
    model = MODELS["mlp"]
    pgd = R.PGD(model)
    a = pgd.perturb(G.X, 0.3, 0.05, 2, G.Y, random_start=True, norm="L2", generator=3)
    torch.testing.assert_close(a, pgd.perturb(G.X, 0.3, 0.05, 2, G.Y, random_start=True, norm="L2", generator=3))
    assert ((a - G.X).norm(dim=1) <= 0.3 + 1e-9).all()


def _confident_model():
    """Softmax of large logits: example 0's target probability below underflows to exactly 0."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        lin = torch.nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.mul_(100)
    return torch.nn.Sequential(lin, torch.nn.Softmax(-1)).eval()


UNDERFLOW_X = torch.tensor([[1.0, -1.0, 2.0, 0.5], [0.01, 0.02, -0.01, 0.0], [0.03, -0.02, 0.0, 0.01]])


def test_default_loss_leaves_an_underflowed_example_unchanged_as_captum():
    """-log(0) = inf: the example's gradient is nan, Captum leaves it and attacks the others."""
    model = _confident_model()
    with torch.no_grad():
        p = model(UNDERFLOW_X)
    y = torch.stack([p[0].argmin(), p[1].argmax(), p[2].argmax()])
    assert p[0, y[0]] == 0 and (p[1:].gather(1, y[1:, None]) > 0).all()
    x = UNDERFLOW_X[1:].clone().requires_grad_()  # the others, by hand: one signed step of -log p_y
    (g,) = torch.autograd.grad(-torch.log(model(x).gather(1, y[1:, None])).sum(), x)
    for targeted, sign in ((False, 1.0), (True, -1.0)):
        out = R.FGSM(model).perturb(UNDERFLOW_X, 0.1, y, targeted=targeted)
        assert torch.equal(out[0], UNDERFLOW_X[0])
        torch.testing.assert_close(out[1:], UNDERFLOW_X[1:] + sign * 0.1 * torch.where(g.abs() > 1e-6, g.sign(), 0))
    out = R.PGD(model).perturb(UNDERFLOW_X, 0.3, 0.1, 3, y)
    assert torch.equal(out[0], UNDERFLOW_X[0])
    torch.testing.assert_close(out[1:], R.PGD(model).perturb(UNDERFLOW_X[1:], 0.3, 0.1, 3, y[1:]))


def test_infinite_loss_gradients_move_by_their_sign_as_captum():
    """-log of an output that is exactly 0 and linear in the input: gradient -inf, a full step;
    0/0 = nan where a non-target output is 0: that element stays (Captum's |g| > zero_thresh)."""
    x = torch.tensor([[0.0, 0.5, 0.5], [0.2, 0.0, 0.8], [0.3, 0.3, 0.4]])
    out = R.FGSM(lambda z: z).perturb(x, 0.1, torch.tensor([0, 0, 2]))
    torch.testing.assert_close(out, torch.tensor([[-0.1, 0.5, 0.5], [0.1, 0.0, 0.8], [0.3, 0.3, 0.3]]))


def test_non_finite_losses_match_captum_live():
    robust = pytest.importorskip("captum.robust")
    model = _confident_model()
    with torch.no_grad():
        p = model(UNDERFLOW_X)
    y = torch.stack([p[0].argmin(), p[1].argmax(), p[2].argmax()])
    custom = lambda out, t: -torch.log(out.gather(1, t[:, None])[:, 0])  # noqa: E731  (a loss_func of one's own)
    for loss in (None, custom):
        outs = []
        for lib in (robust, R):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outs.append((lib.FGSM(model, loss).perturb(UNDERFLOW_X, 0.1, y),
                             lib.PGD(model, loss, lower_bound=-1.0, upper_bound=1.0).perturb(UNDERFLOW_X, 0.3, 0.1, 3, y)))  # fmt: skip
        for theirs, ours in zip(*outs):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_empty_batch_gives_empty_results():
    model, x0, y0 = MODELS["mlp"], G.X[:0], G.Y[:0]
    assert R.FGSM(model).perturb(x0, 0.1, y0).shape == x0.shape
    for norm in ("Linf", "L2"):
        out = R.PGD(model).perturb(x0, 0.3, 0.1, 2, y0, norm=norm, random_start=True)
        assert out.shape == x0.shape
