"""The mistakes a user plausibly makes with this session's public functions (wrong types, mismatched
lengths, wrong dims, empty batches, NaN inputs, integer inputs to gradient methods, layers not in
the model, train-mode models, bad generators, out-of-range k / n_clusters / projection_dim) each
raise a clear ValueError / TypeError (or warn) whose message names the argument or says what to
do, never an internal error from deep inside torch, and never a silent wrong answer."""

import copy

import matplotlib
import pytest
import torch
from torch import nn

import xattr
import xattr.concepts as C
import xattr.influence as I
import xattr.metrics as M

matplotlib.use("Agg")

D = torch.float64
NAN = float("nan")


def _mlp(dropout: bool = False) -> nn.Module:
    torch.manual_seed(0)
    mid = nn.Dropout(0.5) if dropout else nn.Tanh()
    net = nn.Sequential(nn.Linear(4, 6), mid, nn.Linear(6, 3)).to(D)
    return net.train() if dropout else net.eval()


MLP, DROP = _mlp(), _mlp(dropout=True)
X = torch.randn(10, 4, dtype=D, generator=torch.Generator().manual_seed(1))
Y = torch.arange(10) % 3
STATES = [copy.deepcopy(MLP.state_dict()) for _ in range(2)]
CE = nn.CrossEntropyLoss()
A, B = torch.arange(20) % 3, torch.arange(20) % 2
F0 = xattr.target(MLP, 0)
CONV = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten()).eval()
IMG_NET = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(72, 3)).to(D).eval()
IMG = torch.randn(2, 1, 6, 6, dtype=D, generator=torch.Generator().manual_seed(2))
P = torch.rand(20, 3, dtype=D).softmax(-1)


def _stats():
    return xattr.attribution_statistics(xattr.saliency, MLP, X, labels=Y, top_k=2)


def _clusters():
    return xattr.cluster_attributions(torch.randn(30, 4, generator=torch.Generator().manual_seed(3)), n_neighbors=5)


# (id, call, error, match): every call is a mistake.
CASES = [
    # softened
    ("softened-model-str", lambda: xattr.softened("model"), TypeError, "nn.Module"),
    ("softened-beta", lambda: xattr.softened(MLP, beta=-1.0), ValueError, "beta"),
    ("softened-temperature", lambda: xattr.softened(MLP, temperature=0.0), ValueError, "temperature"),
    ("softened-max-reductions", lambda: xattr.softened(MLP, max_reductions="yes"), TypeError, "max_reductions"),
    # multiplier_check
    ("mult-model-str", lambda: M.multiplier_check("m", X), TypeError, "model must be an nn.Module"),
    ("mult-method", lambda: M.multiplier_check(MLP, X, target=0, methods=("foo",)), ValueError, "unknown methods"),
    ("mult-top-k-0", lambda: M.multiplier_check(MLP, X, target=0, top_k=0), ValueError, "k=0"),
    ("mult-top-k-big", lambda: M.multiplier_check(MLP, X, target=0, top_k=2.0), ValueError, "between 1 and all"),
    ("mult-n-steps", lambda: M.multiplier_check(MLP, X, target=0, n_steps=0), ValueError, "n_steps"),
    ("mult-empty", lambda: M.multiplier_check(MLP, X[:0], target=0), ValueError, "empty"),
    ("mult-int-x", lambda: M.multiplier_check(MLP, torch.ones(3, 4, dtype=torch.long), target=0), ValueError, "layer="),
    ("mult-generator", lambda: M.multiplier_check(MLP, X, target=0, generator="a"), TypeError, "generator"),
    ("mult-mode", lambda: M.multiplier_check(MLP, X, target=0, mode="x"), ValueError, "mode"),
    ("mult-nan", lambda: M.multiplier_check(MLP, X * NAN, target=0), FloatingPointError, "non-finite"),
    ("mult-target", lambda: M.multiplier_check(MLP, X, target=7), IndexError, "out of range"),
    # mutual information family
    ("mi-lengths", lambda: M.mutual_information(A, B[:5]), ValueError, "one value per example"),
    ("mi-float", lambda: M.mutual_information(torch.randn(20), B), ValueError, "bins"),
    ("mi-empty", lambda: M.mutual_information(A[:0], B[:0]), ValueError, "empty"),
    ("mi-str", lambda: M.mutual_information("abc", B), TypeError, "a must be a tensor"),
    ("mi-3d", lambda: M.mutual_information(A.view(2, 2, 5), B.view(2, 2, 5)), ValueError, r"\(N,\) or \(N, k\)"),
    ("mi-correction", lambda: M.mutual_information(A, B, correction="x"), ValueError, "correction"),
    ("mi-base", lambda: M.mutual_information(A, B, base=-1), ValueError, "base"),
    ("entropy-float", lambda: M.entropy(torch.randn(20)), ValueError, "integer values"),
    ("entropy-base-1", lambda: M.entropy(A, base=1.0), ValueError, "base"),
    ("nmi-lengths", lambda: M.normalized_mutual_information(A, B[:3]), ValueError, "one value per example"),
    ("nmi-average", lambda: M.normalized_mutual_information(A, B, average="x"), ValueError, "average"),
    ("mit-lengths", lambda: M.mutual_information_test(A, B[:3]), ValueError, "one value per example"),
    ("mit-n-permutations", lambda: M.mutual_information_test(A, B, n_permutations=-1), ValueError, "n_permutations"),
    ("mit-generator", lambda: M.mutual_information_test(A, B, generator="x"), TypeError, "generator"),
    ("subgroups-lengths", lambda: M.subgroups(A, B[:3]), ValueError, "one value per example"),
    ("subgroups-none", lambda: M.subgroups(), ValueError, "at least one attribute"),
    ("subgroups-names", lambda: M.subgroups(A, B, names=["x"]), ValueError, "names"),
    ("bins-n-0", lambda: M.bins(torch.randn(10), 0), ValueError, "bins must be >= 1"),
    ("bins-unsorted", lambda: M.bins(torch.randn(10), [1.0, 0.0]), ValueError, "strictly increasing"),
    ("bins-nan", lambda: M.bins(torch.tensor([1.0, NAN]), 2), ValueError, "finite"),
    ("bins-2d", lambda: M.bins(torch.randn(3, 3), 2), ValueError, "1-D"),
    ("bins-empty", lambda: M.bins(torch.randn(0), 2), ValueError, "non-empty"),
    ("soft-mi-lengths", lambda: M.soft_mutual_information(P[:5], A), ValueError, "groups has 20 values for 5 rows"),
    ("soft-mi-1d", lambda: M.soft_mutual_information(torch.rand(20), A), ValueError, r"\(N, C\)"),
    ("soft-mi-logits", lambda: M.soft_mutual_information(torch.randn(20, 3), A), ValueError, "softmax"),
    ("soft-mi-nan", lambda: M.soft_mutual_information(P * NAN, A), ValueError, "NaN"),  # was a silent NaN
    ("soft-mi-float-groups", lambda: M.soft_mutual_information(P, torch.randn(20)), ValueError, "groups must hold"),
    # bias_check
    ("bias-x-str", lambda: M.bias_check(MLP, "x", {"a": A[:10]}), TypeError, "x must be a tensor"),
    ("bias-no-attribute", lambda: M.bias_check(MLP, X), ValueError, "protected"),
    ("bias-labels", lambda: M.bias_check(MLP, X, {"a": A[:10]}, labels=Y[:3]), ValueError, "labels must be 10"),
    ("bias-lengths", lambda: M.bias_check(MLP, X, {"a": A}), ValueError, r"protected\[.a.\] has 20 values for 10"),
    ("bias-outputs", lambda: M.bias_check(MLP, X, {"a": A[:10]}, outputs="x"), ValueError, "outputs"),
    ("bias-column", lambda: M.bias_check(MLP, X, columns={"a": 9}), ValueError, "column index"),
    ("bias-n-permutations", lambda: M.bias_check(MLP, X, {"a": A[:10]}, n_permutations=-1), ValueError, "n_permutations"),
    ("bias-chunk", lambda: M.bias_check(MLP, X, {"a": A[:10]}, chunk_size=0), ValueError, "chunk_size"),
    ("bias-generator", lambda: M.bias_check(MLP, X, {"a": A[:10]}, generator="s"), TypeError, "generator"),
    ("bias-nan", lambda: M.bias_check(MLP, X * NAN, {"a": A[:10]}, n_permutations=0), ValueError, "NaN"),  # was silent
    ("bias-protected-list", lambda: M.bias_check(MLP, X, [A[:10]]), TypeError, "protected must be a dict"),  # was dict()'s error
    # concepts.probe
    ("probe-lengths", lambda: C.probe(MLP, ["0"], X, Y[:3]), ValueError, "one label per input"),
    ("probe-layer", lambda: C.probe(MLP, ["nope"], X, Y), ValueError, "no submodule 'nope'"),
    ("probe-test-fraction", lambda: C.probe(MLP, ["0"], X, Y, test_fraction=1.5), ValueError, "test_fraction"),
    ("probe-n-repeats", lambda: C.probe(MLP, ["0"], X, Y, n_repeats=0), ValueError, "n_repeats"),
    ("probe-float-labels", lambda: C.probe(MLP, ["0"], X, torch.randn(10)), TypeError, r"\.long\(\)"),
    ("probe-empty", lambda: C.probe(MLP, ["0"], X[:0], Y[:0]), ValueError, "empty"),  # was 'one class only ([])'
    ("probe-generator", lambda: C.probe(MLP, ["0"], X, Y, generator="s"), TypeError, "generator"),
    ("probe-nan", lambda: C.probe(MLP, ["0"], X * NAN, Y), ValueError, "NaN"),  # was 'scale must be finite'
    ("probe-one-class", lambda: C.probe(MLP, ["0"], X, torch.zeros(10, dtype=torch.long)), ValueError, "two or more"),
    ("probe-model-str", lambda: C.probe("m", ["0"], X, Y), TypeError, "model must be"),
    # attribution_statistics
    ("stats-method-str", lambda: xattr.attribution_statistics("saliency", MLP, X, labels=Y), TypeError, "method must be"),
    ("stats-labels", lambda: xattr.attribution_statistics(xattr.saliency, MLP, X, labels=Y[:3]), ValueError, "one label per example"),
    ("stats-top-k", lambda: xattr.attribution_statistics(xattr.saliency, MLP, X, labels=Y, top_k=0), ValueError, "top_k"),
    ("stats-by", lambda: xattr.attribution_statistics(xattr.saliency, MLP, X, labels=Y, by="x"), ValueError, "by must be"),
    ("stats-batch-size", lambda: xattr.attribution_statistics(xattr.saliency, MLP, X, labels=Y, batch_size=0), ValueError, "batch_size"),
    ("stats-empty", lambda: xattr.attribution_statistics(xattr.saliency, MLP, X[:0], labels=Y[:0]), ValueError, "no examples"),
    ("stats-int-x", lambda: xattr.attribution_statistics(xattr.saliency, MLP, X.long(), labels=Y), TypeError, "Integer inputs"),
    ("stats-float-labels", lambda: xattr.attribution_statistics(xattr.saliency, MLP, X, labels=torch.randn(10)), TypeError, "class indices"),
    ("stats-labels-range", lambda: xattr.attribution_statistics(xattr.saliency, MLP, X, labels=Y + 5), IndexError, r"\[0, 3\)"),
    ("stats-data-str", lambda: xattr.attribution_statistics(xattr.saliency, MLP, "data"), TypeError, "each batch must be"),
    # cluster_attributions
    ("clusters-str", lambda: xattr.cluster_attributions("a"), TypeError, "attributions must be a tensor"),  # was torch's new()
    ("clusters-1d", lambda: xattr.cluster_attributions(torch.randn(30)), ValueError, "batched"),
    ("clusters-n-clusters-0", lambda: xattr.cluster_attributions(torch.randn(30, 4), n_clusters=0), ValueError, "n_clusters"),
    ("clusters-n-clusters-big", lambda: xattr.cluster_attributions(torch.randn(30, 4), n_clusters=99), ValueError, "n_clusters=99"),
    ("clusters-n-neighbors", lambda: xattr.cluster_attributions(torch.randn(30, 4), n_neighbors=0), ValueError, "n_neighbors"),
    ("clusters-nan", lambda: xattr.cluster_attributions(torch.full((30, 4), NAN)), ValueError, "NaN"),
    ("clusters-empty", lambda: xattr.cluster_attributions(torch.randn(0, 4)), ValueError, "empty"),  # was a reshape error
    ("clusters-embedding", lambda: xattr.cluster_attributions(torch.randn(30, 4), embedding="x"), ValueError, "embedding"),
    ("clusters-generator", lambda: xattr.cluster_attributions(torch.randn(30, 4), generator="x"), TypeError, "generator"),
    ("clusters-pool", lambda: xattr.cluster_attributions(torch.randn(30, 4), pool=0), ValueError, "pool"),
    ("clusters-too-few", lambda: xattr.cluster_attributions(torch.randn(2, 4)), ValueError, "at least 3"),
    # viz (the objects are built lazily inside the call)
    ("class-means-str", lambda: xattr.viz.plot_class_means("s"), TypeError, "attribution_statistics"),  # was AttributeError
    ("class-means-stat", lambda: xattr.viz.plot_class_means(_stats(), stat="x"), ValueError, "stat must be"),
    ("class-means-sign", lambda: xattr.viz.plot_class_means(_stats(), sign="x"), ValueError, "sign must be"),  # was ignored
    ("class-means-names", lambda: xattr.viz.plot_class_means(_stats(), feature_names=["a"]), ValueError, "feature_names"),
    ("class-means-columns", lambda: xattr.viz.plot_class_means(_stats(), columns=0), ValueError, "columns"),
    ("class-means-group", lambda: xattr.viz.plot_class_means(_stats(), groups=[99]), KeyError, "no group 99"),
    ("importance-str", lambda: xattr.viz.plot_importance("s"), TypeError, "attribution_statistics"),  # was AttributeError
    ("importance-top", lambda: xattr.viz.plot_importance(_stats(), top=0), ValueError, "top must be"),
    ("importance-level", lambda: xattr.viz.plot_importance(_stats(), level=1.5), ValueError, "level"),
    ("spectrum-str", lambda: xattr.viz.plot_spectrum("s"), TypeError, "cluster_attributions"),  # was AttributeError
    ("clusters-plot-str", lambda: xattr.viz.plot_clusters("s"), TypeError, "cluster_attributions"),  # was AttributeError
    ("clusters-plot-sign", lambda: xattr.viz.plot_clusters(_clusters(), sign="x"), ValueError, "sign must be"),  # was ignored
    ("clusters-plot-names", lambda: xattr.viz.plot_clusters(_clusters(), feature_names=["a"]), ValueError, "feature_names"),
    # padding remedies
    ("uneven-model-str", lambda: xattr.uneven_padding("m", (1, 9, 9)), TypeError, "nn.Module"),
    ("uneven-shape-str", lambda: xattr.uneven_padding(CONV, "a"), TypeError, "input_shape"),
    ("uneven-shape-negative", lambda: xattr.uneven_padding(CONV, (1, -9, 9)), ValueError, "positive ints"),
    ("uneven-shape-rank", lambda: xattr.uneven_padding(CONV, (9,)), ValueError, "fails on a zeros input of shape"),
    ("uneven-no-conv", lambda: xattr.uneven_padding(nn.Sequential(nn.Linear(3, 3)), (3,)), ValueError, "no convolution"),
    ("even-radius", lambda: xattr.even_input_sizes(CONV, 9, radius=-1), ValueError, "radius"),
    ("even-near-str", lambda: xattr.even_input_sizes(CONV, "a"), TypeError, "near"),
    ("even-near-0", lambda: xattr.even_input_sizes(CONV, 0), ValueError, "positive ints"),
    ("even-model-str", lambda: xattr.even_input_sizes("m", 9), TypeError, "nn.Module"),
    ("mode-name", lambda: xattr.with_padding_mode(CONV, "x"), ValueError, "mode must be one of"),
    ("mode-model-str", lambda: xattr.with_padding_mode("m", "reflect"), TypeError, "nn.Module"),
    ("mode-no-conv", lambda: xattr.with_padding_mode(nn.Sequential(nn.Linear(3, 3)), "reflect"), ValueError, "no convolution"),
    # integrated_hessians
    ("ih-f-str", lambda: xattr.integrated_hessians("f"), TypeError, "callable"),  # was accepted until the call
    ("ih-n-steps", lambda: xattr.integrated_hessians(F0, n_steps=0), ValueError, "n_steps"),
    ("ih-method", lambda: xattr.integrated_hessians(F0, method="x"), ValueError, "unknown method"),
    ("ih-int-x", lambda: xattr.integrated_hessians(F0)(X.long()), TypeError, "Integer inputs"),
    ("ih-baselines", lambda: xattr.integrated_hessians(F0, baselines=torch.zeros(3, 5))(X), ValueError, "baselines"),
    ("ih-argnums", lambda: xattr.integrated_hessians(F0, argnums=3)(X), ValueError, "argnums=3"),
    ("ih-nan", lambda: xattr.integrated_hessians(F0)(X * NAN), FloatingPointError, "non-finite"),
    ("ih-chunk", lambda: xattr.integrated_hessians(F0, chunk_size=0), ValueError, "chunk_size"),
    ("ih-features", lambda: xattr.integrated_hessians(F0, features=torch.tensor([0.5])), TypeError, "features"),
    # blur_integrated_gradients
    ("blur-f-str", lambda: xattr.blur_integrated_gradients("f"), TypeError, "callable"),  # was accepted until the call
    ("blur-sigma", lambda: xattr.blur_integrated_gradients(F0, max_sigma=-1), ValueError, "max_sigma"),
    ("blur-n-steps", lambda: xattr.blur_integrated_gradients(F0, n_steps=0), ValueError, "n_steps"),
    ("blur-method", lambda: xattr.blur_integrated_gradients(F0, method="x"), ValueError, "unknown method"),
    ("blur-int-x", lambda: xattr.blur_integrated_gradients(F0)(X.long()), TypeError, "Integer inputs"),
    ("blur-not-image", lambda: xattr.blur_integrated_gradients(F0)(X), ValueError, r"\(B, \.\.\., H, W\)"),
    ("blur-nan", lambda: xattr.blur_integrated_gradients(xattr.target(IMG_NET, 0), max_sigma=2.0, n_steps=4)(IMG * NAN),
     FloatingPointError, "non-finite"),
    # guided_integrated_gradients
    ("guided-f-str", lambda: xattr.guided_integrated_gradients("f"), TypeError, "callable"),  # was accepted until the call
    ("guided-n-steps", lambda: xattr.guided_integrated_gradients(F0, n_steps=0), ValueError, "n_steps"),
    ("guided-fraction", lambda: xattr.guided_integrated_gradients(F0, fraction=1.5), ValueError, "fraction"),
    ("guided-max-dist", lambda: xattr.guided_integrated_gradients(F0, max_dist=-1), ValueError, "max_dist"),
    ("guided-int-x", lambda: xattr.guided_integrated_gradients(F0)(X.long()), TypeError, "Integer inputs"),
    ("guided-baselines", lambda: xattr.guided_integrated_gradients(F0, baselines=torch.zeros(3, 5))(X), ValueError, "baselines"),
    ("guided-nan", lambda: xattr.guided_integrated_gradients(F0, n_steps=4)(X * NAN), ValueError, "NaN"),  # was silent
    # stochastic gates
    ("bc-n-gates-0", lambda: xattr.BinaryConcreteStochasticGates(0), ValueError, "n_gates"),
    ("bc-n-gates-str", lambda: xattr.BinaryConcreteStochasticGates("3"), ValueError, "n_gates"),
    ("bc-mask", lambda: xattr.BinaryConcreteStochasticGates(3, mask=torch.tensor([0, 1, 5])), ValueError, "mask"),
    ("bc-reduction", lambda: xattr.BinaryConcreteStochasticGates(3, reg_reduction="x"), ValueError, "reg_reduction"),
    ("bc-generator", lambda: xattr.BinaryConcreteStochasticGates(3, generator="x"), TypeError, "generator"),
    ("bc-eps", lambda: xattr.BinaryConcreteStochasticGates(3, eps=-1.0), ValueError, "eps"),
    ("bc-input-size", lambda: xattr.BinaryConcreteStochasticGates(3)(torch.randn(2, 5)), ValueError, "n_gates = 3"),
    ("bc-input-1d", lambda: xattr.BinaryConcreteStochasticGates(3)(torch.randn(3)), ValueError, "at least 2 dims"),
    ("bc-input-empty", lambda: xattr.BinaryConcreteStochasticGates(3)(torch.randn(0, 3)), ValueError, "empty"),  # was IndexError
    ("gauss-n-gates-0", lambda: xattr.GaussianStochasticGates(0), ValueError, "n_gates"),
    ("gauss-std", lambda: xattr.GaussianStochasticGates(3, std=0.0), ValueError, "std"),
    ("gauss-generator", lambda: xattr.GaussianStochasticGates(3, generator="x"), TypeError, "generator"),
    ("gauss-mask-float", lambda: xattr.GaussianStochasticGates(3, mask=torch.tensor([0.0, 1.0, 1.0])), TypeError, "integer gate"),
    ("gauss-input-empty", lambda: xattr.GaussianStochasticGates(3)(torch.randn(0, 3)), ValueError, "empty"),  # was IndexError
    # tracin family
    ("tracin-model-str", lambda: I.tracin("m", STATES, CE, (X, Y), (X, Y)), TypeError, "model must be an nn.Module"),
    ("tracin-lengths", lambda: I.tracin(MLP, STATES, CE, (X, Y[:3]), (X, Y)), ValueError, "first \\(batch\\) dim"),
    ("tracin-test-lengths", lambda: I.tracin(MLP, STATES, CE, (X, Y), (X, Y[:3])), ValueError, "batch of test"),
    ("tracin-no-checkpoints", lambda: I.tracin(MLP, [], CE, (X, Y), (X, Y)), ValueError, "checkpoints"),
    ("tracin-layer", lambda: I.tracin(MLP, STATES, CE, (X, Y), (X, Y), layers=["nope"]), ValueError, "no module named 'nope'"),
    ("tracin-learning-rates", lambda: I.tracin(MLP, STATES, CE, (X, Y), (X, Y), learning_rates=[1.0]), ValueError, "learning_rates"),
    ("tracin-batch-size", lambda: I.tracin(MLP, STATES, CE, (X, Y), (X, Y), batch_size=0), ValueError, "batch_size"),
    ("tracin-chunk", lambda: I.tracin(MLP, STATES, CE, (X, Y), (X, Y), chunk_size=0), ValueError, "chunk_size"),
    ("tracin-empty", lambda: I.tracin(MLP, STATES, CE, (X[:0], Y[:0]), (X, Y)), ValueError, "empty"),  # was a reshape error
    ("tracin-train-mode", lambda: I.tracin(DROP, [copy.deepcopy(DROP.state_dict())], CE, (X, Y), (X, Y)),
     ValueError, r"model\.eval\(\)"),  # was vmap's randomness error
    ("tracin-nan", lambda: I.tracin(MLP, STATES, CE, (X * NAN, Y), (X, Y)), ValueError, "NaN"),  # was a silent NaN matrix
    ("tracin-loss-str", lambda: I.tracin(MLP, STATES, "ce", (X, Y), (X, Y)), TypeError, "loss_fn"),
    ("tracin-train-str", lambda: I.tracin(MLP, STATES, CE, "train", (X, Y)), TypeError, "batch of train"),
    ("tracin-self-lengths", lambda: I.tracin_self_influence(MLP, STATES, CE, (X, Y[:3])), ValueError, "first \\(batch\\) dim"),
    ("tracin-self-train-mode", lambda: I.tracin_self_influence(DROP, [copy.deepcopy(DROP.state_dict())], CE, (X, Y)),
     ValueError, r"model\.eval\(\)"),
    ("fast-layer", lambda: I.tracin_fast(MLP, "nope", STATES, CE, (X, Y), (X, Y)), ValueError, "no module named 'nope'"),
    ("fast-not-linear", lambda: I.tracin_fast(MLP, "1", STATES, CE, (X, Y), (X, Y)), TypeError, "nn.Linear"),
    ("fast-lengths", lambda: I.tracin_fast(MLP, "2", STATES, CE, (X, Y[:3]), (X, Y)), ValueError, "first \\(batch\\) dim"),
    ("fast-nan", lambda: I.tracin_fast(MLP, "2", STATES, CE, (X, Y), (X * NAN, Y)), ValueError, "NaN"),
    ("fast-self-empty", lambda: I.tracin_fast_self_influence(MLP, "2", STATES, CE, (X[:0], Y[:0])), ValueError, "empty"),
    ("projected-dim-0", lambda: I.tracin_fast_projected(MLP, "2", STATES, CE, (X, Y), (X, Y), projection_dim=0),
     ValueError, "projection_dim"),
    ("projected-dim-float", lambda: I.tracin_fast_projected(MLP, "2", STATES, CE, (X, Y), (X, Y), projection_dim=2.5),
     ValueError, "projection_dim"),
    ("projected-generator", lambda: I.tracin_fast_projected(MLP, "2", STATES, CE, (X, Y), (X, Y), projection_dim=3, generator="s"),
     TypeError, "generator"),
    # influence functions
    ("if-model-str", lambda: I.influence_function("m", CE, (X, Y), (X, Y)), TypeError, "model must be an nn.Module"),
    ("if-lengths", lambda: I.influence_function(MLP, CE, (X, Y[:3]), (X, Y)), ValueError, "same non-zero number of rows"),
    ("if-damping", lambda: I.influence_function(MLP, CE, (X, Y), (X, Y), damping=-1.0), ValueError, "damping"),
    ("if-method", lambda: I.influence_function(MLP, CE, (X, Y), (X, Y), method="x"), ValueError, "method"),
    ("if-projection-dim", lambda: I.influence_function(MLP, CE, (X, Y), (X, Y), projection_dim=0), ValueError, "projection_dim"),
    ("if-layer", lambda: I.influence_function(MLP, CE, (X, Y), (X, Y), layers=["nope"]), ValueError, "no module named 'nope'"),
    ("if-empty", lambda: I.influence_function(MLP, CE, (X[:0], Y[:0]), (X, Y)), ValueError, "non-zero number of rows"),
    ("if-train-mode", lambda: I.influence_function(DROP, CE, (X, Y), (X, Y)), ValueError, r"model\.eval\(\)"),
    ("if-cg-steps", lambda: I.influence_function(MLP, CE, (X, Y), (X, Y), method="cg", cg_steps=0), ValueError, "cg_steps"),  # was silent
    ("if-cg-rtol", lambda: I.influence_function(MLP, CE, (X, Y), (X, Y), method="cg", cg_rtol=-1.0), ValueError, "cg_rtol"),
    ("if-loss-str", lambda: I.influence_function(MLP, "ce", (X, Y), (X, Y)), TypeError, "loss_fn"),
    ("if-nan", lambda: I.influence_function(MLP, CE, (X * NAN, Y), (X, Y)), ValueError, "NaN"),  # was 'tol=nan'
    ("if-hessian-data", lambda: I.influence_function(MLP, CE, (X, Y), (X, Y), hessian_data=(X, Y[:3])), ValueError, "hessian_data"),
    ("if-self-lengths", lambda: I.influence_function_self_influence(MLP, CE, (X, Y[:3])), ValueError, "same non-zero number"),
    ("if-self-cg-steps", lambda: I.influence_function_self_influence(MLP, CE, (X, Y), method="cg", cg_steps=-1),
     ValueError, "cg_steps"),
    # similarity_influence and top_k
    ("sim-layer", lambda: I.similarity_influence(MLP, ["nope"], (X,), (X,)), ValueError, "no module named 'nope'"),
    ("sim-metric", lambda: I.similarity_influence(MLP, ["0"], (X,), (X,), metric="x"), ValueError, "metric"),
    ("sim-direction", lambda: I.similarity_influence(MLP, ["0"], (X,), (X,), direction="x"), ValueError, "direction"),
    ("sim-top-k-0", lambda: I.similarity_influence(MLP, ["0"], (X,), (X,), top_k=0), ValueError, "top_k"),
    ("sim-top-k-big", lambda: I.similarity_influence(MLP, ["0"], (X,), (X,), top_k=99), ValueError, "top_k=99"),
    ("sim-empty", lambda: I.similarity_influence(MLP, ["0"], (X[:0],), (X,)), ValueError, "non-zero number of rows"),
    ("sim-batch-size", lambda: I.similarity_influence(MLP, ["0"], (X,), (X,), batch_size=0), ValueError, "batch_size"),
    ("sim-model-str", lambda: I.similarity_influence("m", ["0"], (X,), (X,)), TypeError, "model must be an nn.Module"),
    ("sim-train-str", lambda: I.similarity_influence(MLP, ["0"], "x", (X,)), TypeError, "train must be a tensor"),
    ("sim-nan", lambda: I.similarity_influence(MLP, ["0"], (X * NAN,), (X,)), ValueError, "NaN"),  # was silent
    ("top-k-0", lambda: I.top_k(torch.randn(3, 5), 0), ValueError, r"k must be an int in \[1, n_train = 5\]"),
    ("top-k-big", lambda: I.top_k(torch.randn(3, 5), 99), ValueError, "k must be an int"),
    ("top-k-float", lambda: I.top_k(torch.randn(3, 5), 2.5), ValueError, "k must be an int"),
    ("top-k-1d", lambda: I.top_k(torch.randn(5), 2), ValueError, r"\(n_test, n_train\)"),
    ("top-k-nan", lambda: I.top_k(torch.full((3, 5), NAN), 2), ValueError, "NaN"),  # was a silent ranking of NaNs
    ("randomize-name", lambda: M.randomization_check(MLP, lambda m: xattr.saliency(xattr.target(m, 0)), X, layers=["02"]),
     ValueError, r"no module named '02' \(did you mean '2', '0'\?\)"),  # was AttributeError
]


@pytest.mark.parametrize("call, error, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_mistake_raises_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


TRAIN_MODE_WARNS = [
    ("multiplier_check", lambda: M.multiplier_check(DROP, X, target=0, methods=("saliency",), n_steps=2, generator=0)),
    ("bias_check", lambda: M.bias_check(DROP, X, {"a": A[:10]}, n_permutations=0)),
    ("probe", lambda: C.probe(DROP, ["0"], X, Y, n_repeats=1, noise=[0.0])),
    ("attribution_statistics", lambda: xattr.attribution_statistics(xattr.saliency, DROP, X, labels=Y)),
    ("integrated_hessians", lambda: xattr.integrated_hessians(xattr.target(DROP, 0), n_steps=2)(X)),
    ("guided_integrated_gradients", lambda: xattr.guided_integrated_gradients(xattr.target(DROP, 0), n_steps=4)(X)),
    ("similarity_influence", lambda: I.similarity_influence(DROP, ["0"], (X,), (X,))),  # was silent
]


@pytest.mark.parametrize("call", [c[1] for c in TRAIN_MODE_WARNS], ids=[c[0] for c in TRAIN_MODE_WARNS])
def test_train_mode_with_dropout_warns_and_leaves_the_mode_alone(call):
    with pytest.warns(UserWarning, match=r"train mode.*Dropout.*eval\(\)"):
        call()
    assert DROP.training and all(m.training for m in DROP.modules())


def test_valid_calls_next_to_the_new_checks_still_work():
    """The new checks refuse only the mistakes: the nearest valid calls run and give finite numbers."""
    assert torch.isfinite(I.tracin(MLP, STATES, CE, (X, Y), (X, Y))).all()
    assert torch.isfinite(I.influence_function(MLP, CE, (X, Y), (X, Y), method="cg", cg_steps=1, damping=0.1)).all()
    assert I.top_k(torch.arange(15.0).view(3, 5), 2).indices.tolist() == [[4, 3]] * 3
    assert torch.isfinite(M.soft_mutual_information(P, A))
    assert xattr.cluster_attributions(torch.randn(30, 4).numpy(), n_neighbors=5).labels.shape == (30,)
    gate_out, _ = xattr.GaussianStochasticGates(3, generator=0)(torch.ones(1, 3))
    assert gate_out.shape == (1, 3)
    assert torch.isfinite(xattr.guided_integrated_gradients(F0, n_steps=4)(X)).all()
