"""Training-data attribution: which training examples a prediction depends on.

TracIn (Pruthi et al. 2020) sums, over training checkpoints, the learning rate times the dot
product of the loss gradients of a test example and of a training example; influence functions
(Koh and Liang 2017) weight that dot product by the inverse Hessian of the training loss;
similarity influence compares layer activations. Per-example gradients come from one engine
(``_per_example.py``), ``torch.func.vmap(torch.func.grad(...))`` over ``functional_call``: no
hooks, no Python loop over examples. `tracin_fast_index` holds the fast TracIn's training
factors for many queries. See docs/influence.md (TracIn) and docs/influence_functions.md
(influence functions, similarity influence).
"""

from ._influence_function import influence_function, influence_function_self_influence
from ._similarity import similarity_influence
from ._tracin import TopK, top_k, tracin, tracin_self_influence
from ._tracin_fast import tracin_fast, tracin_fast_projections
from ._tracin_index import TracInFastIndex, tracin_fast_features, tracin_fast_index, tracin_fast_projected, tracin_fast_self_influence

__all__: list[str] = ["influence_function", "influence_function_self_influence", "similarity_influence",
    "TopK", "top_k", "tracin", "tracin_self_influence", "tracin_fast", "tracin_fast_self_influence",
    "tracin_fast_features", "tracin_fast_projected", "tracin_fast_projections", "tracin_fast_index", "TracInFastIndex"]
