"""Evaluating attributions: metrics are functions of functions.

They take a model function and an attribution function (or precomputed attributions), draw
perturbed copies of every example with explicit, per-example randomness, and evaluate all copies
folded into the batch in few calls. See docs/metrics/.
"""

from ._concentration import complexity, sparseness
from ._curves import Curve, deletion, insertion, patch_mask
from ._infidelity import infidelity
from ._noise import gaussian_noise, subset_to_baseline, uniform_noise
from ._randomization import Randomization, randomization_check
from ._sensitivity import sensitivity_max
from ._similarity import spearman, ssim, top_k_intersection

__all__ = [
    "Curve",
    "Randomization",
    "complexity",
    "deletion",
    "gaussian_noise",
    "infidelity",
    "insertion",
    "patch_mask",
    "randomization_check",
    "sensitivity_max",
    "sparseness",
    "spearman",
    "ssim",
    "subset_to_baseline",
    "top_k_intersection",
    "uniform_noise",
]
