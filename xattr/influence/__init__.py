"""Training-data attribution: which training examples a prediction depends on.

TracIn (Pruthi et al. 2020) sums, over training checkpoints, the learning rate times the dot
product of the loss gradients of a test example and of a training example; influence functions
(Koh and Liang 2017) weight that dot product by the inverse Hessian of the training loss;
similarity influence compares layer activations. Per-example gradients come from
``torch.func.vmap(torch.func.grad(...))`` over ``functional_call``: no hooks, no Python loop
over examples. See docs/influence.md.
"""

__all__: list[str] = []
