"""xattr: model interpretability for PyTorch as pure function transforms on torch.func.

A method is a transform ``method(f, **options) -> attr_fn``; ``attr_fn(*args)`` returns
attributions shaped like the attributed argument. See docs/concepts.md.
"""

from ._src.gradients import grad, value_and_grad
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
from ._src.paths import Profile, path_integral, quadrature
from ._src.sampling import expectation, smooth
from ._src.targets import Outputs, neuron, outputs, target

__version__ = "0.1.0"

__all__ = [
    "Outputs",
    "Profile",
    "Split",
    "at_layer",
    "completeness_gap",
    "expectation",
    "grad",
    "gradient_shap",
    "input_x_gradient",
    "integrated_gradients",
    "neuron",
    "outputs",
    "path_integral",
    "quadrature",
    "saliency",
    "smooth",
    "smoothgrad",
    "smoothgrad_sq",
    "target",
    "value_and_grad",
    "vargrad",
]
