"""Concept-based attribution: concept activation vectors (CAVs) and TCAV (Kim et al. 2018).

Does the model's prediction for a class depend on a human concept ("stripes" for "zebra")?
A concept is a set of example inputs; a CAV is the normal of a linear boundary between the
layer activations of the concept's examples and of random examples; TCAV measures how often
moving the activation towards the concept raises the output, and tests that against random
CAVs. Built on ``xattr.at_layer``: activations are ``split.act``, sensitivities are the layer
gradients of ``xattr.gradient_x_activation(split, multiply=False)``. See docs/tcav.md.

    from xattr.concepts import Concept, tcav
    res = tcav(model, ["conv2"], [Concept(0, "stripes", striped)], zebras, target=3,
               randoms=random_images, n_random_runs=10, generator=0)
    res["stripes"]["conv2"].score, res["stripes"]["conv2"].p_value

Probes (docs/probes.md): ``probe(model, layers, inputs, labels)`` fits a linear probe on every
layer's activations, with a control task (selectivity) and the noise level at which its
accuracy collapses (fragility).
"""

from ._cache import fingerprint
from ._classifier import CAV, LogisticRegression, fit_cav
from ._data import Concept, random_concepts
from ._fragility import ProbeResult, activation_scale, collapse_level, noise_curve
from ._probes import MultinomialLogisticRegression, probe
from ._stats import ttest
from ._tcav import TCAVResult, TCAVScore, activations, cav, tcav

__all__ = [
    "CAV",
    "Concept",
    "LogisticRegression",
    "MultinomialLogisticRegression",
    "ProbeResult",
    "TCAVResult",
    "TCAVScore",
    "activation_scale",
    "activations",
    "cav",
    "collapse_level",
    "fingerprint",
    "fit_cav",
    "noise_curve",
    "probe",
    "random_concepts",
    "tcav",
    "ttest",
]
