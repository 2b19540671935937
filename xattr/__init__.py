"""xattr: model interpretability for PyTorch as pure function transforms on torch.func.

A method is a transform ``method(f, **options) -> attr_fn``; ``attr_fn(*args)`` returns
attributions shaped like the attributed argument. See docs/concepts.md.
"""

from ._src.gradients import NoGradientPathWarning, grad, value_and_grad
from ._src.layers import Split, at_layer
from ._src.methods import (
    completeness_gap,
    gradient_shap,
    input_x_gradient,
    integrated_gradients,
    saliency,
    smoothgrad,
    smoothgrad_sq,
    vargrad,
)
from ._src.layer_methods import (
    grad_cam,
    gradient_x_activation,
    layer_activation,
    layer_gradient_shap,
    layer_integrated_gradients,
    upsample,
)
from ._src.ablation import feature_ablation, feature_permutation, occlusion, window_masks
from ._src.layer_perturb import layer_feature_ablation, layer_feature_permutation
from ._src.shapley import shapley_value_sampling
from ._src.shapley_exact import shapley_values
from ._src.shapley_interactions import shapley_interactions
from ._src.shapley_interactions_sampled import shapley_interaction_sampling
from ._src.interaction_indices import Interactions
from ._src.sage import sage
from ._src.sage_result import SageResult
from ._src.softened import softened
from ._src.split_ig import split_integrated_gradients
from ._src.integrated_hessians import integrated_hessians
from ._src.blur_ig import blur_integrated_gradients
from ._src.guided_ig import guided_integrated_gradients
from ._src.backprop_methods import deep_lift, deep_lift_shap, layer_deep_lift, layer_deep_lift_shap
from ._src.guided_methods import deconvolution, guided_backprop, guided_grad_cam
from ._src.canonize import merge_batch_norm
from ._src.layer_paths import conductance, internal_influence
from ._src.lrp_methods import layer_lrp, lrp
from ._src.neuron_methods import neuron_conductance
from ._src.padding_bias import border_ratio, padding_bias
from ._src.stochastic_gates import BinaryConcreteStochasticGates, GaussianStochasticGates
from ._src.padding_remedies import LayerPadding, UnevenPadding, even_input_sizes, uneven_padding, with_padding_mode
from ._src.dataset_stats import AttributionStatistics
from ._src.dataset_pass import attribution_statistics
from ._src.token_stats import TokenStatistics
from ._src.token_pass import token_statistics
from ._src.attribution_clusters import Clusters, cluster_attributions
from ._src.paths import Profile, path_integral, quadrature
from ._src.rules import rules
from ._src.rule_limits import RuleBypassedWarning
from ._src.noise_tunnel import expectation, smooth
from ._src.surrogate import exp_kernel_similarity, kernel_shap, lasso, lime, linear_regression, ridge
from ._src.targets import Outputs, neuron, outputs, target
from ._src.tokens import reference_tokens, token_scores
from ._src.attention_capture import attention_gradients, attention_weights
from ._src.attention_maps import attention_flow, attention_gradient_rollout, attention_rollout, query_row, tokens_to_image

from . import rule
from . import concepts
from . import llm
from . import metrics
from . import robust
from . import viz
from . import insights
from . import influence

__version__ = "0.1.0"

__all__ = [
    "NoGradientPathWarning",
    "RuleBypassedWarning",
    "deconvolution",
    "feature_ablation",
    "feature_permutation",
    "layer_feature_ablation",
    "layer_feature_permutation",
    "occlusion",
    "window_masks",
    "deep_lift",
    "deep_lift_shap",
    "guided_backprop",
    "guided_grad_cam",
    "layer_deep_lift",
    "layer_deep_lift_shap",
    "layer_lrp",
    "lrp",
    "merge_batch_norm",
    "concepts",
    "llm",
    "metrics",
    "robust",
    "viz",
    "insights",
    "influence",
    "rule",
    "rules",
    "Outputs",
    "Profile",
    "Split",
    "at_layer",
    "completeness_gap",
    "conductance",
    "expectation",
    "grad",
    "grad_cam",
    "gradient_shap",
    "gradient_x_activation",
    "input_x_gradient",
    "integrated_gradients",
    "internal_influence",
    "layer_activation",
    "layer_gradient_shap",
    "layer_integrated_gradients",
    "neuron",
    "neuron_conductance",
    "outputs",
    "padding_bias",
    "border_ratio",
    "BinaryConcreteStochasticGates",
    "GaussianStochasticGates",
    "LayerPadding",
    "UnevenPadding",
    "uneven_padding",
    "even_input_sizes",
    "with_padding_mode",
    "AttributionStatistics",
    "attribution_statistics",
    "TokenStatistics",
    "token_statistics",
    "Clusters",
    "cluster_attributions",
    "path_integral",
    "quadrature",
    "reference_tokens",
    "saliency",
    "sage",
    "SageResult",
    "shapley_interaction_sampling",
    "shapley_interactions",
    "Interactions",
    "shapley_value_sampling",
    "shapley_values",
    "smooth",
    "smoothgrad",
    "smoothgrad_sq",
    "softened",
    "split_integrated_gradients",
    "integrated_hessians",
    "blur_integrated_gradients",
    "guided_integrated_gradients",
    "target",
    "token_scores",
    "attention_weights",
    "attention_gradients",
    "attention_rollout",
    "attention_flow",
    "attention_gradient_rollout",
    "query_row",
    "tokens_to_image",
    "upsample",
    "value_and_grad",
    "vargrad",
    "exp_kernel_similarity",
    "kernel_shap",
    "lasso",
    "lime",
    "linear_regression",
    "ridge",
]
