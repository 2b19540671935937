"""Evaluating attributions: metrics are functions of functions.

They take a model function and an attribution function (or precomputed attributions), draw
perturbed copies of every example with explicit, per-example randomness, and evaluate all copies
folded into the batch in few calls. See docs/metrics/.

Beside them: bias checks of a classifier (mutual information of its predictions with protected
attributes and their intersections, subgroup rates, counterfactual flips; docs/metrics/bias.md)
and the input-multiplier sanity check of saliency methods (docs/sanity.md).
"""

from ._bias import bias_check
from ._bias_report import BiasReport, Counterfactual, GroupStats, Interactions
from . import entries
from ._concentration import complexity, sparseness
from ._curves import Curve, deletion, insertion, patch_mask
from ._evaluate import evaluate
from ._evaluation import Cell, Comparison, Evaluation
from ._faithfulness import faithfulness_correlation, monotonicity, monotonicity_correlation
from ._infidelity import infidelity
from ._localization import attribution_localization, pointing_game, relevance_mass_accuracy, relevance_rank_accuracy
from ._multiplier import MultiplierCheck, multiplier_check
from ._mutual_info import (
    bins,
    entropy,
    mutual_information,
    mutual_information_test,
    normalized_mutual_information,
    soft_mutual_information,
    subgroups,
)
from ._noise import gaussian_noise, subset_to_baseline, uniform_noise
from ._randomization import Randomization, randomization_check
from ._road import noisy_linear_imputation, road
from ._sensitivity import sensitivity_max
from ._similarity import spearman, ssim, top_k_intersection
from ._stability import (
    local_lipschitz_estimate,
    relative_input_stability,
    relative_output_stability,
    relative_representation_stability,
)

__all__ = [
    "BiasReport",
    "Cell",
    "Comparison",
    "Counterfactual",
    "Curve",
    "Evaluation",
    "GroupStats",
    "Interactions",
    "MultiplierCheck",
    "Randomization",
    "attribution_localization",
    "bias_check",
    "bins",
    "complexity",
    "deletion",
    "entries",
    "entropy",
    "evaluate",
    "faithfulness_correlation",
    "gaussian_noise",
    "infidelity",
    "insertion",
    "local_lipschitz_estimate",
    "monotonicity",
    "monotonicity_correlation",
    "multiplier_check",
    "mutual_information",
    "mutual_information_test",
    "noisy_linear_imputation",
    "normalized_mutual_information",
    "patch_mask",
    "pointing_game",
    "randomization_check",
    "relative_input_stability",
    "relative_output_stability",
    "relative_representation_stability",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "road",
    "sensitivity_max",
    "soft_mutual_information",
    "sparseness",
    "spearman",
    "ssim",
    "subgroups",
    "subset_to_baseline",
    "top_k_intersection",
    "uniform_noise",
]
