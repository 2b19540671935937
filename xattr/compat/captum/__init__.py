"""Captum's API over xattr: change one import, keep your code, get xattr's numbers and speed.

    from xattr.compat.captum import IntegratedGradients   # was: from captum.attr import ...

Each class takes Captum 0.9's constructor arguments, and its ``attribute`` Captum's keywords,
defaults and return conventions (tensor in -> tensor out, tuple in -> tuple out, a Python list
target means one target per example), as a thin adapter over xattr's functional core. The
deliberate differences (exact trapezoid weights, xattr's random streams, what is not supported)
are listed in docs/migration.md.
"""

from ._convert import Attribution
from .bases import GradientAttribution, NeuronAttribution, PerturbationAttribution
from .backprop import (
    Deconvolution,
    DeepLift,
    DeepLiftShap,
    GuidedBackprop,
    GuidedGradCam,
    LayerDeepLift,
    LayerDeepLiftShap,
    NeuronDeconvolution,
    NeuronDeepLift,
    NeuronDeepLiftShap,
    NeuronGuidedBackprop,
)
from .dataloader_attr import DataLoaderAttribution, InputRole
from .concepts import CAV, Classifier, Concept, ConceptInterpreter, CustomIterableDataset, DefaultClassifier, TCAV, concepts_to_str, dataset_to_dataloader
from .input_wrapper import InputIdentity, ModelInputWrapper
from .gradient import GradientShap, InputXGradient, IntegratedGradients, Saliency
from .layer import (
    InternalInfluence,
    LayerActivation,
    LayerAttribution,
    LayerConductance,
    LayerGradCam,
    LayerGradientShap,
    LayerGradientXActivation,
    LayerIntegratedGradients,
)
from .lrp import LRP, Alpha1_Beta0_Rule, EpsilonRule, GammaRule, IdentityRule, LayerLRP, PropagationRule
from .neuron import NeuronConductance, NeuronGradient, NeuronGradientShap, NeuronIntegratedGradients
from .metrics import infidelity, infidelity_perturb_func_decorator, sensitivity_max
from .noise_tunnel import NoiseTunnel
from .influence_functions import NaiveInfluenceFunction, SimilarityInfluence, cosine_similarity, euclidean_distance
from .influence import DataInfluence, KMostInfluentialResults, TracInCP, TracInCPBase, TracInCPFast, TracInCPFastRandProj
from .robust import FGSM, PGD, AttackComparator, MinParamPerturbation, Perturbation
from .perturbation import (
    FeatureAblation,
    FeaturePermutation,
    LayerFeatureAblation,
    LayerFeaturePermutation,
    NeuronFeatureAblation,
    Occlusion,
    ShapleyValues,
    ShapleyValueSampling,
)
from .linear_models import SkLearnLasso, SkLearnLinearRegression, SkLearnRidge
from .llm_inputs import ImageMaskInput, InterpretableInput, TextTemplateInput, TextTokenInput
from .llm_result import LLMAttributionResult
from .llm import BaseLLMAttribution, LLMAttribution, LLMGradientAttribution
from .llm_remote import RemoteLLMAttribution, RemoteLLMProvider, VLLMProvider
from .baselines import ProductBaselines
from .lime_defaults import default_from_interp_rep_transform, default_perturb_func, get_exp_kernel_similarity_function
from .surrogate import KernelShap, Lime, LimeBase
from ..._src.stochastic_gates import BinaryConcreteStochasticGates, GaussianStochasticGates, StochasticGatesBase
from .summarizer import MSE, ClassSummarizer, CommonStats, Count, Max, Mean, Min, StatValue, StdDev, Sum, Summarizer, SummarizerSingleTensor, Var
from .text import (
    InterpretableEmbeddingBase,
    TokenReferenceBase,
    configure_interpretable_embedding_layer,
    remove_interpretable_embedding_layer,
)
from . import visualization
from .insights import AttributionVisualizer, BaseFeature, Batch, GeneralFeature, ImageFeature, TextFeature

__all__ = [
    "DataInfluence",
    "KMostInfluentialResults",
    "TracInCP",
    "TracInCPBase",
    "TracInCPFast",
    "TracInCPFastRandProj",
    "ImageMaskInput",
    "InterpretableInput",
    "BaseLLMAttribution",
    "GradientAttribution",
    "NeuronAttribution",
    "PerturbationAttribution",
    "LLMAttribution",
    "LLMAttributionResult",
    "LLMGradientAttribution",
    "RemoteLLMAttribution",
    "RemoteLLMProvider",
    "VLLMProvider",
    "ProductBaselines",
    "TextTemplateInput",
    "TextTokenInput",
    "DataLoaderAttribution",
    "InputRole",
    "CustomIterableDataset",
    "InputIdentity",
    "ModelInputWrapper",
    "concepts_to_str",
    "dataset_to_dataloader",
    "InterpretableEmbeddingBase",
    "TokenReferenceBase",
    "configure_interpretable_embedding_layer",
    "remove_interpretable_embedding_layer",
    "visualization",
    "AttributionVisualizer",
    "BaseFeature",
    "Batch",
    "GeneralFeature",
    "ImageFeature",
    "TextFeature",
    "infidelity",
    "infidelity_perturb_func_decorator",
    "sensitivity_max",
    "CAV",
    "ConceptInterpreter",
    "Perturbation",
    "Classifier",
    "Concept",
    "DefaultClassifier",
    "TCAV",
    "FeatureAblation",
    "FeaturePermutation",
    "KernelShap",
    "LayerFeatureAblation",
    "LayerFeaturePermutation",
    "Lime",
    "LimeBase",
    "SkLearnLasso",
    "SkLearnLinearRegression",
    "SkLearnRidge",
    "BinaryConcreteStochasticGates",
    "GaussianStochasticGates",
    "StochasticGatesBase",
    "default_from_interp_rep_transform",
    "default_perturb_func",
    "get_exp_kernel_similarity_function",
    "NeuronFeatureAblation",
    "Occlusion",
    "ShapleyValueSampling",
    "ShapleyValues",
    "AttackComparator",
    "FGSM",
    "MinParamPerturbation",
    "PGD",
    "Alpha1_Beta0_Rule",
    "EpsilonRule",
    "GammaRule",
    "IdentityRule",
    "LRP",
    "LayerLRP",
    "PropagationRule",
    "Attribution",
    "Deconvolution",
    "DeepLift",
    "DeepLiftShap",
    "GradientShap",
    "GuidedBackprop",
    "GuidedGradCam",
    "InputXGradient",
    "IntegratedGradients",
    "InternalInfluence",
    "LayerActivation",
    "LayerAttribution",
    "LayerConductance",
    "LayerDeepLift",
    "LayerDeepLiftShap",
    "LayerGradCam",
    "LayerGradientShap",
    "LayerGradientXActivation",
    "LayerIntegratedGradients",
    "NeuronConductance",
    "NeuronDeconvolution",
    "NeuronDeepLift",
    "NeuronDeepLiftShap",
    "NeuronGradient",
    "NeuronGradientShap",
    "NeuronGuidedBackprop",
    "NeuronIntegratedGradients",
    "NoiseTunnel",
    "NaiveInfluenceFunction",
    "SimilarityInfluence",
    "cosine_similarity",
    "euclidean_distance",
    "Saliency",
    "ClassSummarizer",
    "CommonStats",
    "Count",
    "MSE",
    "Max",
    "Mean",
    "Min",
    "StatValue",
    "StdDev",
    "Sum",
    "Summarizer",
    "SummarizerSingleTensor",
    "Var",
]
