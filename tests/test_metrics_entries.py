"""`xattr.metrics.entries`: the public module keeps its names after the split into themed
files, and every entry constructor refuses bad options when it is built (NOTE: [Options
checked when an entry is built]), before `evaluate` computes any attribution."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import xattr
from xattr import metrics as M
from xattr.metrics import entries
from xattr.metrics._evaluate import derive

NAMES = [
    "Context", "Entry", "Traced", "attribution_localization", "check_inputs", "check_masks", "complexity", "custom",
    "defaults", "deletion", "faithfulness_correlation", "infidelity", "insertion", "known",
    "local_lipschitz_estimate", "monotonicity", "monotonicity_correlation", "pointing_game", "randomization",
    "relative_input_stability", "relative_output_stability", "relative_representation_stability",
    "relevance_mass_accuracy", "relevance_rank_accuracy", "resolve", "road", "sensitivity_max", "sparseness",
]  # fmt: skip


def test_the_public_module_keeps_every_name_and_each_lives_in_a_themed_file():
    assert sorted(entries.__all__) == sorted(NAMES)
    themed = {"xattr.metrics._entries_faithfulness", "xattr.metrics._entries_robustness",
              "xattr.metrics._entries_maps", "xattr.metrics._entry", "xattr.metrics.entries"}  # fmt: skip
    for name in NAMES:
        assert getattr(entries, name).__module__ in themed, name
    for name, make in entries.known().items():
        e = make()
        assert isinstance(e, entries.Entry) and e.name.startswith(name)  # randomization_spearman_abs


class Layer(nn.Linear):
    pass


BAD = [
    # (constructor, options, error, message)
    (entries.infidelity, dict(n_samples=0), ValueError, "n_samples must be an int >= 1"),
    (entries.infidelity, dict(normalize="yes"), TypeError, "normalize must be True or False"),
    (entries.infidelity, dict(perturb="noise", std=-1.0), ValueError, "std must be a finite number > 0"),
    (entries.infidelity, dict(perturb="noise", std=math.nan), ValueError, "std must be a finite number"),
    (entries.infidelity, dict(p=1.5), ValueError, "p must be a finite number > 0 and <= 1"),
    (entries.infidelity, dict(p=0), ValueError, "p must be"),
    (entries.infidelity, dict(perturb="shuffle"), ValueError, "perturb must be 'subset', 'noise'"),
    (entries.infidelity, dict(baselines="zeros"), TypeError, "baselines must be a number, a tensor"),
    (entries.deletion, dict(n_steps=0), ValueError, "n_steps must be an int >= 1"),
    (entries.deletion, dict(n_steps=2.5), ValueError, "n_steps must be an int"),
    (entries.insertion, dict(n_steps=True), ValueError, "n_steps must be an int"),
    (entries.insertion, dict(baselines=None), TypeError, "baselines must be"),
    (entries.deletion, dict(feature_mask=torch.zeros(6, 6)), TypeError, "feature_mask must be None, an int tensor"),
    (entries.deletion, dict(feature_mask=torch.ones(6, 6, dtype=torch.bool)), TypeError, "mask.long()"),
    (entries.deletion, dict(feature_mask=-torch.ones(6, 6, dtype=torch.long)), ValueError, "ids must be >= 0"),
    (entries.deletion, dict(feature_mask="patches"), TypeError, "feature_mask must be"),
    (entries.faithfulness_correlation, dict(n_samples=1), ValueError, "n_samples must be an int >= 2"),
    (entries.faithfulness_correlation, dict(subset=1.5), ValueError, "fraction must lie in"),
    (entries.faithfulness_correlation, dict(subset="half"), TypeError, "subset must be an int or a fraction"),
    (entries.faithfulness_correlation, dict(baselines=[]), TypeError, "baselines must be"),
    (entries.faithfulness_correlation, dict(feature_mask=torch.rand(6, 6)), TypeError, "feature_mask"),
    (entries.monotonicity, dict(baselines=object()), TypeError, "baselines must be"),
    (entries.monotonicity, dict(feature_mask=3.0), TypeError, "feature_mask must be"),
    (entries.monotonicity_correlation, dict(n_samples=0), ValueError, "n_samples must be an int >= 1"),
    (entries.monotonicity_correlation, dict(n_samples=3), ValueError, "without a perturb_func"),
    (entries.monotonicity_correlation, dict(perturb_func="noise"), TypeError, "perturb_func must be a function"),
    (entries.monotonicity_correlation, dict(baselines="mean"), TypeError, "baselines must be"),
    (entries.road, dict(order="up"), ValueError, "order must be 'morf' or 'lerf'"),
    (entries.road, dict(percentages=(0.5, 0.2)), ValueError, "strictly increasing"),
    (entries.road, dict(percentages=(0.2, 1.0)), ValueError, r"in \[0, 1\)"),
    (entries.road, dict(percentages="some"), ValueError, "percentages"),
    (entries.road, dict(noise=-0.1), ValueError, "noise must be a finite number >= 0"),
    (entries.road, dict(name=""), TypeError, "name must be a non-empty str"),
    (entries.sensitivity_max, dict(radius=0), ValueError, "radius must be a finite number > 0"),
    (entries.sensitivity_max, dict(radius=math.inf), ValueError, "radius must be a finite number"),
    (entries.sensitivity_max, dict(n_samples=1.0), ValueError, "n_samples must be an int"),
    (entries.sensitivity_max, dict(perturb_func=0.1), TypeError, "perturb_func must be a function"),
    (entries.local_lipschitz_estimate, dict(norm="l3"), ValueError, "norm must be 'l1', 'l2', 'linf' or a number"),
    (entries.local_lipschitz_estimate, dict(norm=0.5), ValueError, "norm must be"),
    (entries.local_lipschitz_estimate, dict(radius=-1), ValueError, "radius"),
    (entries.relative_input_stability, dict(n_samples=-2), ValueError, "n_samples"),
    (entries.relative_output_stability, dict(radius="small"), ValueError, "radius"),
    (entries.relative_representation_stability, dict(layer="fc"), TypeError, "layer must be a module of the model"),
    (entries.relative_representation_stability, dict(layer=[]), TypeError, "layer must be"),
    (entries.relative_representation_stability, dict(layer=nn.ReLU(), radius=0), ValueError, "radius"),
    (entries.randomization, dict(similarity="pearson"), ValueError, "similarity must be one of"),
    (entries.randomization, dict(mode="all"), ValueError, "mode must be one of"),
    (entries.randomization, dict(layers=3), TypeError, "layers must be modules of the model or their names"),
    (entries.randomization, dict(layers=[]), TypeError, "layers must be"),
    (entries.randomization, dict(name=7), TypeError, "name must be a non-empty str"),
    (entries.pointing_game, dict(tolerance=-1), ValueError, "tolerance must be a finite number >= 0"),
    (entries.pointing_game, dict(tolerance=math.nan), ValueError, "tolerance"),
    (entries.pointing_game, dict(channel_dim=1.0), TypeError, "channel_dim must be an int"),
    (entries.relevance_mass_accuracy, dict(channel_dim="c"), TypeError, "channel_dim"),
    (entries.relevance_rank_accuracy, dict(argnum=1.0), TypeError, "argnum must be an int"),
    (entries.attribution_localization, dict(weighted=1), TypeError, "weighted must be True or False"),
    (entries.sparseness, dict(name=""), TypeError, "name must be a non-empty str"),
    (entries.complexity, dict(name=3), TypeError, "name must be"),
    (entries.deletion, dict(steps=4), TypeError, "unexpected keyword argument 'steps'"),
]


@pytest.mark.parametrize("make, options, error, message", BAD, ids=[f"{b[0].__name__}-{i}" for i, b in enumerate(BAD)])
def test_bad_options_are_refused_when_the_entry_is_built(make, options, error, message):
    with pytest.raises(error, match=message):
        make(**options)


def test_custom_refuses_a_non_function_and_a_bad_name_when_built():
    with pytest.raises(TypeError, match="custom needs a function"):
        entries.custom("deletion", "lower")
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        entries.custom(lambda f, a, x: x, "lower", name=4)
    with pytest.raises(ValueError, match="direction"):
        entries.custom(lambda f, a, x: x, "up")


GOOD = [
    (entries.infidelity, dict(perturb="noise", std=0.5, baselines="ignored with noise")),
    (entries.infidelity, dict(perturb=M.gaussian_noise(0.1), p=1.0, baselines=(0.0, torch.zeros(1)))),
    (entries.deletion, dict(n_steps=None, baselines=torch.zeros(1, 1, 6, 6), feature_mask=np.zeros((6, 6), int))),
    (entries.insertion, dict(feature_mask=(torch.zeros(6, 6, dtype=torch.long), torch.arange(4)))),
    (entries.faithfulness_correlation, dict(subset=3, baselines=np.zeros(3))),
    (entries.monotonicity_correlation, dict(n_samples=4, perturb_func=M.uniform_noise, baselines="anything")),
    (entries.road, dict(order="lerf", percentages=0.5, noise=0)),
    (entries.local_lipschitz_estimate, dict(norm=math.inf)),
    (entries.local_lipschitz_estimate, dict(norm="linf", radius=1)),
    (entries.relative_representation_stability, dict(layer=[nn.ReLU(), Layer(2, 2)])),
    (entries.randomization, dict(similarity="ssim", mode="independent", layers=["0", nn.Linear(2, 2)])),
    (entries.pointing_game, dict(tolerance=1.5, channel_dim=None, argnum=0)),
]


@pytest.mark.parametrize("make, options", GOOD, ids=[f"{g[0].__name__}-{i}" for i, g in enumerate(GOOD)])
def test_good_options_still_build(make, options):
    assert isinstance(make(**options), entries.Entry)


def test_a_function_similarity_runs_and_keeps_its_curve():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)).double().eval()
    x = torch.rand(4, 2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def cosine(a, b):
        return nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)

    make = lambda f: xattr.saliency(f)  # noqa: E731
    ev = M.evaluate(model, {"s": make}, x, metrics=[entries.randomization(similarity=cosine)], show_progress=False)
    assert ev.metrics == ["randomization_cosine"]
    t = model(x).argmax(1)
    ref = M.randomization_check(model, lambda m: make(xattr.target(m, t)), x, similarity=(cosine,),
                                generator=derive(0, "metric", "randomization_cosine")).scores["cosine"]  # fmt: skip
    c = ev.curves("randomization_cosine")["s"]
    torch.testing.assert_close(c.y, ref.T.double(), rtol=0, atol=0)
    torch.testing.assert_close(c.values, ref[-1].double(), rtol=0, atol=0)
    assert c.ticks == ("3", "1") and c.rule == "last"
