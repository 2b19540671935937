"""The mistakes a user plausibly makes with the public functions added in session 25 (Shapley
interactions and their `Interactions` result, the curves of an `Evaluation`, ROAD's ``ties``,
attention flow and its maximum flows, ``return_std_error=`` of the Monte Carlo methods and
KernelSHAP, the explorer's evaluation view): bools passed as ints, zero or negative counts,
floats for ints, wrong ranks and shapes, NaN inputs, unknown names and out-of-range indices each
raise a clear ValueError / TypeError whose message names the argument or says what to do, never
an internal error from deep inside torch, numpy or scipy, and never a silent wrong answer."""


import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

import xattr
import xattr.metrics as M
import xattr.metrics.entries as E
from xattr._src.max_flow import layered_flows, max_flow
from xattr.insights import explore
from test_new_api_errors_today import _Attention  # two heads, softmax probabilities, residual

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

D = torch.float64
NAN = float("nan")

torch.manual_seed(0)
MLP = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(D).eval()
X = torch.randn(6, 4, dtype=D, generator=torch.Generator().manual_seed(1))
F0 = xattr.target(MLP, 0)
FK = xattr.target(MLP, xattr.outputs())
SAL = xattr.saliency(F0)
GROUPS = torch.tensor([0, 0, 1, 2])
torch.manual_seed(0)
IMG_NET = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(72, 3)).to(D).eval()
IMG = torch.randn(2, 1, 6, 6, dtype=D, generator=torch.Generator().manual_seed(2))
FI = xattr.target(IMG_NET, 0)
Y6 = torch.tensor([0, 1, 2, 0, 1, 2])


torch.manual_seed(0)
TN = nn.Sequential(_Attention(), _Attention(), _Attention()).to(D).eval()  # three layers: the max-flow path
TX = torch.randn(2, 3, 4, dtype=D, generator=torch.Generator().manual_seed(3))
CAP = np.array([[0, 1.0, 2.0], [0, 0, 1.0], [0, 0, 0]])
STEPS = [np.full((3, 3), 1 / 3) for _ in range(3)]
SPLIT = xattr.at_layer(MLP, MLP[0])
_CACHE = {}


def _si(**kw):
    return xattr.shapley_interactions(F0, **kw)


def _sis(**kw):
    kw.setdefault("n_samples", 32)
    kw.setdefault("generator", 0)
    return xattr.shapley_interaction_sampling(F0, **kw)


def _inter(many=False):
    key = ("inter", many)
    if key not in _CACHE:
        _CACHE[key] = xattr.shapley_interactions(FK if many else F0, order=2)(X)
    return _CACHE[key]


def _sage(loss="cross_entropy", Y=None, **kw):
    kw = {"n_permutations": 8, "generator": 0, "convergence": None, **kw}
    return xattr.sage(MLP, loss, X, Y6 if Y is None else Y, background=X[:2], **kw)


def _make(f):
    return xattr.saliency(f)


def _evaluation():
    if "ev" not in _CACHE:
        _CACHE["ev"] = M.evaluate(MLP, {"a": _make, "b": _make}, X, metrics=["deletion", "sparseness"], show_progress=False)
    return _CACHE["ev"]


def _ax():
    return plt.subplots()[1]


def _explore(tmp, **kw):
    return explore(MLP, X[:1], methods={"s": _make}, path=f"{tmp}/page.html", show_progress=False, **kw)


TMP = "/tmp"

# (id, call, error, match): every call is a mistake.
CASES = [
    # shapley_interactions: index, order, max_features
    ("si-index", lambda: _si(index="shap"), ValueError, "index must be one of 'k-SII', 'SII'"),
    ("si-index-none", lambda: _si(index=None), ValueError, "index must be one of"),
    ("si-index-int", lambda: _si(index=2), ValueError, "index must be one of"),
    ("si-index-list", lambda: _si(index=["SII"]), ValueError, "index must be one of"),
    ("si-order-0", lambda: _si(order=0), ValueError, r"order must be a positive int \(2 for pairs\)"),
    ("si-order-neg", lambda: _si(order=-1), ValueError, "order must be a positive int"),
    ("si-order-bool", lambda: _si(order=True), ValueError, "order must be a positive int"),
    ("si-order-float", lambda: _si(order=2.0), ValueError, "order must be a positive int"),
    ("si-order-str", lambda: _si(order="2"), ValueError, "order must be a positive int"),
    ("si-max-features-0", lambda: _si(max_features=0), ValueError, "max_features must be a positive int"),  # was accepted
    ("si-max-features-bool", lambda: _si(max_features=True), ValueError, "max_features must be a positive int"),  # was accepted when built
    ("si-max-features-float", lambda: _si(max_features=4.5), ValueError, "max_features must be a positive int"),  # was accepted
    ("si-max-features-str", lambda: _si(max_features="20"), ValueError, "max_features must be a positive int"),  # was a TypeError at the call
    ("si-max-features-small", lambda: _si(max_features=3)(X), ValueError, r"F=4 would take 16 model rows per example \(max_features=3\)"),
    ("si-f-str", lambda: xattr.shapley_interactions("f"), TypeError, "f must be the model function"),  # was accepted until the call
    ("si-chunk-size-0", lambda: _si(chunk_size=0)(X), ValueError, "chunk_size must be a positive number of rows"),
    ("si-argnums-str", lambda: _si(argnums="0"), TypeError, "argnums must be an int or a non-empty tuple of ints"),
    # feature_mask / baselines at the call
    ("si-mask-float", lambda: _si()(X, feature_mask=GROUPS.double()), TypeError, r"feature_mask must hold integer feature ids.*mask\.long\(\)"),
    ("si-mask-bool", lambda: _si()(X, feature_mask=torch.tensor([True, False, True, False])), TypeError, "feature_mask must hold integer feature ids.*boolean mask is ambiguous"),
    ("si-mask-shape", lambda: _si()(X, feature_mask=torch.tensor([0, 1, 2])), ValueError, r"feature_mask of shape \(3,\) does not broadcast to the input"),
    ("si-mask-rows", lambda: _si()(X, feature_mask=GROUPS.repeat(4, 1)), ValueError, "feature_mask has 4 rows"),
    ("si-mask-3d", lambda: _si()(X, feature_mask=GROUPS[None, None]), ValueError, "feature_mask of shape .* has more dims than the input"),
    ("si-mask-neg", lambda: _si()(X, feature_mask=torch.tensor([0, -1, 1, 2])), ValueError, "feature_mask ids must be >= 0"),
    ("si-baselines-shape", lambda: _si()(X, baselines=torch.zeros(3)), ValueError, r"baselines of shape \(3,\) does not broadcast"),
    ("si-baselines-rows", lambda: _si()(X, baselines=torch.zeros(4, 4, dtype=D)), ValueError, r"baselines of shape \(4, 4\) does not broadcast"),
    ("si-baselines-str", lambda: _si()(X, baselines="zero"), ValueError, "baselines must have the same structure"),
    ("si-baselines-nan", lambda: _si()(X, baselines=NAN), FloatingPointError, "non-finite.*the baselines"),
    ("si-nan", lambda: _si()(X * NAN), FloatingPointError, "model returned 6 non-finite value"),
    ("si-empty", lambda: _si()(X[:0]), ValueError, "the batch is empty"),
    # shapley_interaction_sampling
    ("sis-index", lambda: _sis(index="x"), ValueError, "index must be one of"),
    ("sis-order-0", lambda: _sis(order=0), ValueError, "order must be a positive int"),
    ("sis-order-bool", lambda: _sis(order=True), ValueError, "order must be a positive int"),
    ("sis-order-float", lambda: _sis(order=1.5), ValueError, "order must be a positive int"),
    ("sis-n-samples-0", lambda: _sis(n_samples=0), ValueError, r"n_samples must be an int >= 2"),
    ("sis-n-samples-1", lambda: _sis(n_samples=1), ValueError, "n_samples must be an int >= 2"),
    ("sis-n-samples-bool", lambda: _sis(n_samples=True), ValueError, "n_samples must be an int >= 2"),
    ("sis-n-samples-float", lambda: _sis(n_samples=32.0), ValueError, "n_samples must be an int >= 2"),
    ("sis-n-samples-str", lambda: _sis(n_samples="32"), ValueError, "n_samples must be an int >= 2"),
    ("sis-n-samples-none", lambda: _sis(n_samples=None), ValueError, "n_samples must be an int >= 2"),
    ("sis-stratified-short", lambda: _sis(n_samples=3, estimator="stratified")(X), ValueError, r"use n_samples >= 5"),
    ("sis-regression-short", lambda: _sis(n_samples=4)(X), UserWarning, "fit is singular and its minimum-norm solution is used. Use n_samples >= 12"),
    ("sis-estimator", lambda: _sis(estimator="kernel"), ValueError, "estimator must be one of"),
    ("sis-estimator-case", lambda: _sis(estimator="Regression"), ValueError, "estimator must be one of"),
    ("sis-estimator-none", lambda: _sis(estimator=None), ValueError, "estimator must be one of"),
    ("sis-estimator-list", lambda: _sis(estimator=["regression"]), ValueError, "estimator must be one of"),
    ("sis-generator-str", lambda: _sis(generator="s")(X), TypeError, "generator must be an int seed, a torch.Generator or None, got str"),
    ("sis-generator-float", lambda: _sis(generator=1.5)(X), TypeError, "generator must be an int seed.*got float"),
    ("sis-generator-bool", lambda: _sis(generator=True)(X), TypeError, "generator must be an int seed.*got bool"),
    ("sis-generator-stratified", lambda: _sis(generator="s", estimator="stratified")(X), TypeError, "generator must be an int seed"),
    ("sis-mask-float", lambda: _sis()(X, feature_mask=GROUPS.double()), TypeError, "feature_mask must hold integer feature ids"),
    ("sis-mask-shape", lambda: _sis()(X, feature_mask=torch.tensor([0, 1])), ValueError, r"feature_mask of shape \(2,\) does not broadcast"),
    ("sis-mask-neg", lambda: _sis()(X, feature_mask=torch.tensor([0, -1, 1, 2])), ValueError, "feature_mask ids must be >= 0"),
    ("sis-baselines-shape", lambda: _sis()(X, baselines=torch.zeros(2, 3, dtype=D)), ValueError, r"baselines of shape \(2, 3\) does not broadcast"),
    ("sis-nan", lambda: _sis()(X * NAN), FloatingPointError, "model returned 6 non-finite value"),
    ("sis-empty", lambda: _sis()(X[:0]), ValueError, "the batch is empty"),
    ("sis-f-str", lambda: xattr.shapley_interaction_sampling("f"), TypeError, "f must be the model function"),  # was accepted until the call
    ("sis-regression-terms", lambda: xattr.shapley_interaction_sampling(xattr.target(lambda x: x.sum(1, keepdim=True), 0),
                                                                          order=4, n_samples=8, generator=0)(torch.zeros(1, 40, dtype=D)),
     ValueError, "p=102090 unknowns.*Group the inputs into fewer features"),
    # Interactions: values / compressed / top / to_dict
    ("inter-values-0", lambda: _inter().values(0), ValueError, r"order must be an int in 1..2 \(the order these interactions were computed to\), got 0"),
    ("inter-values-3", lambda: _inter().values(3), ValueError, r"order must be an int in 1..2"),
    ("inter-values-neg", lambda: _inter().values(-1), ValueError, "order must be an int in 1..2"),
    ("inter-values-bool", lambda: _inter().values(True), ValueError, "order must be an int in 1..2"),
    ("inter-values-float", lambda: _inter().values(1.0), ValueError, "order must be an int in 1..2"),
    ("inter-values-str", lambda: _inter().values("2"), ValueError, "order must be an int in 1..2"),
    ("inter-compressed-3", lambda: _inter().compressed(3), ValueError, "order must be an int in 1..2"),
    ("inter-compressed-bool", lambda: _inter().compressed(False), ValueError, "order must be an int in 1..2"),
    ("inter-top-neg", lambda: _inter().top(-1), ValueError, r"n must be an int >= 0"),
    ("inter-top-bool", lambda: _inter().top(True), ValueError, "n must be an int >= 0"),
    ("inter-top-float", lambda: _inter().top(2.5), ValueError, "n must be an int >= 0"),
    ("inter-top-example-big", lambda: _inter().top(3, example=6), ValueError, r"example must be an int in 0..5"),
    ("inter-top-example-neg", lambda: _inter().top(3, example=-7), ValueError, "example must be an int in 0..5"),
    ("inter-top-example-bool", lambda: _inter().top(3, example=True), ValueError, "example must be an int"),
    ("inter-top-example-float", lambda: _inter().top(3, example=1.0), ValueError, "example must be an int"),
    ("inter-top-order-3", lambda: _inter().top(3, order=3), ValueError, "order must be an int in 1..2"),
    ("inter-top-order-0", lambda: _inter().top(3, order=0), ValueError, "order must be an int in 1..2"),
    ("inter-top-output-one", lambda: _inter().top(3, output=0), ValueError, "leave output=None"),
    ("inter-top-output-missing", lambda: _inter(True).top(3), ValueError, "choose one with output=k"),
    ("inter-top-output-big", lambda: _inter(True).top(3, output=3), ValueError, r"output must be an int in 0..2"),
    ("inter-top-output-bool", lambda: _inter(True).top(3, output=True), ValueError, "output must be an int"),
    ("inter-top-output-str", lambda: _inter(True).top(3, output="0"), ValueError, "output must be an int"),
    ("inter-top-positional-example", lambda: _inter().top(3, 1), TypeError, r"top\(\) takes from 1 to 2 positional arguments"),
    ("inter-to-dict-arg", lambda: _inter().to_dict(2), TypeError, r"to_dict\(\) takes 1 positional argument"),
    ("inter-main-effects-call", lambda: _inter().main_effects(1), TypeError, "'Tensor' object is not callable"),
    # Evaluation curves / mean_curves / plot_curves / to_html
    ("curves-unknown", lambda: _evaluation().curves("nope"), KeyError, "unknown metric 'nope'; the metrics are"),
    ("curves-not-curve", lambda: _evaluation().curves("sparseness"), ValueError, "gives one number per example, not a curve"),
    ("curves-int", lambda: _evaluation().curves(0), TypeError, r"metric must be the name of one curve metric \(a str\), one of \['deletion'\]"),
    ("curves-none", lambda: _evaluation().curves(None), TypeError, "metric must be the name of one curve metric"),
    ("curves-list", lambda: _evaluation().curves(["deletion"]), TypeError, "metric must be the name"),  # was "unhashable type"
    ("mean-curves-unknown", lambda: _evaluation().mean_curves("nope"), KeyError, "unknown metric 'nope'"),
    ("mean-curves-not-curve", lambda: _evaluation().mean_curves("sparseness"), ValueError, "gives one number per example, not a curve"),
    ("mean-curves-level-0", lambda: _evaluation().mean_curves("deletion", level=0.0), ValueError, r"level must lie in \(0, 1\)"),
    ("mean-curves-level-1", lambda: _evaluation().mean_curves("deletion", level=1), ValueError, "level must lie in"),
    ("mean-curves-level-95", lambda: _evaluation().mean_curves("deletion", level=95), ValueError, "level must lie in"),
    ("mean-curves-level-nan", lambda: _evaluation().mean_curves("deletion", level=NAN), ValueError, "level must lie in"),
    ("mean-curves-level-bool", lambda: _evaluation().mean_curves("deletion", level=True), ValueError, "level must lie in"),
    ("mean-curves-level-str", lambda: _evaluation().mean_curves("deletion", level="0.9"), ValueError, "level must lie in"),
    ("mean-curves-n-boot-0", lambda: _evaluation().mean_curves("deletion", n_boot=0), ValueError, "n_boot must be a positive int"),
    ("mean-curves-n-boot-neg", lambda: _evaluation().mean_curves("deletion", n_boot=-5), ValueError, "n_boot must be a positive int"),
    ("mean-curves-n-boot-bool", lambda: _evaluation().mean_curves("deletion", n_boot=True), ValueError, "n_boot must be a positive int"),
    ("mean-curves-n-boot-float", lambda: _evaluation().mean_curves("deletion", n_boot=100.0), ValueError, "n_boot must be a positive int"),
    ("plot-curves-unknown", lambda: _evaluation().plot_curves("nope"), KeyError, "unknown metric 'nope'"),
    ("plot-curves-not-curve", lambda: _evaluation().plot_curves("sparseness"), ValueError, "gives one number per example, not a curve"),
    ("plot-curves-level", lambda: _evaluation().plot_curves("deletion", level=1.5), ValueError, "level must lie in"),
    ("plot-curves-n-boot-0", lambda: _evaluation().plot_curves("deletion", n_boot=0), ValueError, "n_boot must be a positive int"),
    ("plot-curves-ax-str", lambda: _evaluation().plot_curves("deletion", ax="ax"), TypeError, "ax must be a matplotlib Axes"),
    ("plot-curves-dpi-0", lambda: _evaluation().plot_curves("deletion", dpi=0), ValueError, "dpi must be positive"),
    ("plot-curves-level-positional", lambda: _evaluation().plot_curves("deletion", None, 0.9), TypeError, r"plot_curves\(\) takes from 2 to 3 positional arguments"),
    ("to-html-curves-str", lambda: _evaluation().to_html(curves="yes"), TypeError, "curves must be True or False"),
    ("to-html-curves-int", lambda: _evaluation().to_html(curves=1), TypeError, "curves must be True or False"),
    ("to-html-curves-none", lambda: _evaluation().to_html(curves=None), TypeError, "curves must be True or False"),
    ("to-html-curves-list", lambda: _evaluation().to_html(curves=["deletion"]), TypeError, "curves must be True or False"),
    ("to-html-level", lambda: _evaluation().to_html(level=2.0), ValueError, "level must lie in"),
    ("to-html-n-boot-0", lambda: _evaluation().to_html(n_boot=0), ValueError, "n_boot must be a positive int"),
    ("mean-curves-list", lambda: _evaluation().mean_curves(["deletion"]), TypeError, "metric must be the name"),  # was "unhashable type"
    ("plot-curves-list", lambda: _evaluation().plot_curves(("deletion",)), TypeError, "metric must be the name"),  # was "unhashable type"
    ("to-dict-level", lambda: _evaluation().to_dict(level=0.0), ValueError, "level must lie in"),
    # road(ties=...)
    ("road-ties", lambda: M.road(FI, SAL, ties="x"), ValueError, "ties must be 'random'"),
    ("road-ties-none", lambda: M.road(FI, SAL, ties=None), ValueError, "ties must be 'random'"),
    ("road-ties-case", lambda: M.road(FI, SAL, ties="Random"), ValueError, "ties must be 'random'"),
    ("road-ties-bool", lambda: M.road(FI, SAL, ties=True), ValueError, "ties must be 'random'"),
    ("road-ties-int", lambda: M.road(FI, SAL, ties=0), ValueError, "ties must be 'random'"),
    ("road-ties-list", lambda: M.road(FI, SAL, ties=["random"]), ValueError, "ties must be 'random'"),
    ("road-ties-generator", lambda: M.road(FI, xattr.saliency(FI), ties="index", generator="s")(IMG), TypeError, "generator must be an int seed"),
    ("entry-road-ties", lambda: E.road(ties="random"), TypeError, "unexpected keyword argument 'ties'"),
    # attention flow's maximum flows
    ("maxflow-nonsquare", lambda: max_flow(np.zeros((3, 4)), 0, 2), ValueError, r"square capacity matrix \(V, V\)"),
    ("maxflow-1d", lambda: max_flow(np.zeros(3), 0, 2), ValueError, "square capacity matrix"),
    ("maxflow-3d", lambda: max_flow(np.zeros((2, 3, 3)), 0, 2), ValueError, "square capacity matrix"),
    ("maxflow-empty", lambda: max_flow(np.zeros((0, 0)), 0, 0), ValueError, r"source and sink must be two different nodes in \[0, 0\)"),
    ("maxflow-negative", lambda: max_flow(-CAP, 0, 2), ValueError, "capacities must be finite and >= 0"),
    ("maxflow-nan", lambda: max_flow(CAP * NAN, 0, 2), ValueError, "capacities must be finite and >= 0"),
    ("maxflow-inf", lambda: max_flow(CAP + np.inf, 0, 2), ValueError, "capacities must be finite"),
    ("maxflow-same", lambda: max_flow(CAP, 1, 1), ValueError, "two different nodes"),
    ("maxflow-source-big", lambda: max_flow(CAP, 3, 2), ValueError, r"two different nodes in \[0, 3\)"),
    ("maxflow-sink-neg", lambda: max_flow(CAP, 0, -1), ValueError, r"two different nodes in \[0, 3\)"),
    ("maxflow-source-float", lambda: max_flow(CAP, 0.5, 2), ValueError, r"source and sink must be two different nodes \(ints\)"),  # was a flow of 0
    ("maxflow-source-bool", lambda: max_flow(CAP, False, 2), ValueError, r"two different nodes \(ints\) in \[0, 3\), got False"),  # was numpy's TypeError
    ("maxflow-source-str", lambda: max_flow(CAP, "0", 2), ValueError, r"two different nodes \(ints\) in \[0, 3\), got '0'"),  # was "'<=' not supported"
    ("maxflow-str", lambda: max_flow("cap", 0, 2), TypeError, "capacity must hold real numbers"),  # was numpy's "could not convert"
    ("maxflow-complex", lambda: max_flow(CAP + 1j, 0, 2), TypeError, "capacity must hold real numbers"),  # was the real part, silently
    ("maxflow-tensor-nan", lambda: max_flow(torch.full((3, 3), NAN), 0, 2), ValueError, "capacities must be finite and >= 0"),
    ("layered-empty", lambda: layered_flows([], [0]), ValueError, "one layer at least"),  # was IndexError
    ("layered-nan", lambda: layered_flows([s * NAN for s in STEPS], [0]), ValueError, "the attention maps hold NaN or inf"),
    ("layered-negative", lambda: layered_flows([-s for s in STEPS], [0]), ValueError, "negative entries.*>= 0"),  # was a silent result
    ("layered-nonsquare", lambda: layered_flows([np.ones((3, 2))] * 3, [0]), ValueError, r"square and over the same tokens, \(T, T\)"),  # was a broadcast error
    ("layered-mismatch", lambda: layered_flows([np.ones((3, 3)), np.ones((2, 2)), np.ones((3, 3))], [0]), ValueError,
     "over the same tokens"),  # was a broadcast error
    ("layered-row-big", lambda: layered_flows(STEPS, [3]), ValueError, r"rows must be output token indices \(ints\) in \[0, 3\)"),  # was IndexError
    ("layered-row-neg-big", lambda: layered_flows(STEPS, [-4]), ValueError, "rows must be output token indices"),  # was IndexError
    ("layered-rows-float", lambda: layered_flows(STEPS, [0.5]), ValueError, "rows must be output token indices"),  # was row 0, silently
    ("flow-layers-empty", lambda: xattr.attention_flow(MLP, layers=[])(X), ValueError, "layers is empty: give modules, names or a module class"),
    ("flow-no-attention", lambda: xattr.attention_flow(MLP)(X), ValueError, "no attention probabilities were seen in the forward pass"),
    ("flow-head-fusion", lambda: xattr.attention_flow(MLP, head_fusion="sum"), ValueError, "head_fusion must be one of"),
    ("flow-residual-bool", lambda: xattr.attention_flow(MLP, residual=True), ValueError, r"residual must be a number in \[0, 1\]"),
    ("flow-query-str", lambda: xattr.attention_flow(MLP, query="0"), ValueError, "query must be None or an int"),
    ("flow-query-tensor", lambda: xattr.attention_flow(MLP, query=torch.tensor([0, 1])), ValueError, "query must be None or an int"),
    # return_std_error= of the Monte Carlo methods
    ("smooth-se-int", lambda: xattr.smooth(SAL, n_samples=4, return_std_error=1), TypeError, "return_std_error must be True or False"),
    ("smooth-se-str", lambda: xattr.smooth(SAL, n_samples=4, return_std_error="yes"), TypeError, "return_std_error must be True or False"),
    ("smooth-se-none", lambda: xattr.smooth(SAL, n_samples=4, return_std_error=None), TypeError, "return_std_error must be True or False"),
    ("smooth-se-n-1", lambda: xattr.smooth(SAL, n_samples=1, return_std_error=True), ValueError, r"at least two independent samples \(n_samples >= 2\)"),
    ("smooth-se-n-0", lambda: xattr.smooth(SAL, n_samples=0, return_std_error=True)(X), ValueError, "n_samples must be a positive int"),
    ("smooth-se-n-bool", lambda: xattr.smooth(SAL, n_samples=True, return_std_error=True)(X), ValueError,
     "n_samples must be a positive int"),  # was read as 1, with a NaN standard error
    ("smooth-se-var", lambda: xattr.smooth(SAL, n_samples=4, reduce="var", return_std_error=True), ValueError, "not available for reduce='var'"),
    ("smoothgrad-se-int", lambda: xattr.smoothgrad(F0, n_samples=4, return_std_error=0), TypeError, "return_std_error must be True or False"),
    ("smoothgrad-se-n-1", lambda: xattr.smoothgrad(F0, n_samples=1, return_std_error=True), ValueError, r"at least two independent samples \(n_samples >= 2\); got n_samples=1"),
    ("smoothgrad-sq-se-str", lambda: xattr.smoothgrad_sq(F0, n_samples=4, return_std_error="no"), TypeError, "return_std_error must be True or False"),
    ("smoothgrad-sq-se-n-1", lambda: xattr.smoothgrad_sq(F0, n_samples=1, return_std_error=True), ValueError, r"at least two independent samples \(n_samples >= 2\); got n_samples=1"),
    ("vargrad-se", lambda: xattr.vargrad(F0, n_samples=4, return_std_error=True), ValueError, "not available for reduce='var'"),
    ("vargrad-se-int", lambda: xattr.vargrad(F0, n_samples=4, return_std_error=1), TypeError, "return_std_error must be True or False"),
    ("expectation-se-int", lambda: xattr.expectation(SAL, baselines=X, n_samples=4, return_std_error=1), TypeError,
     "return_std_error must be True or False"),
    ("expectation-se-n-1", lambda: xattr.expectation(SAL, baselines=X, n_samples=1, return_std_error=True), ValueError, r"at least two independent samples \(n_samples >= 2\); got n_samples=1"),
    ("gshap-se-int", lambda: xattr.gradient_shap(F0, baselines=X, n_samples=4, return_std_error=1), TypeError,
     "return_std_error must be True or False"),
    ("gshap-se-np-bool", lambda: xattr.gradient_shap(F0, baselines=X, n_samples=4, return_std_error=np.bool_(True)), TypeError,
     "return_std_error must be True or False"),
    ("gshap-se-n-1", lambda: xattr.gradient_shap(F0, baselines=X, n_samples=1, return_std_error=True), ValueError, r"at least two independent samples \(n_samples >= 2\); got n_samples=1"),
    ("layer-gshap-se-int", lambda: xattr.layer_gradient_shap(SPLIT, baselines=X, n_samples=4, return_std_error=1), TypeError,
     "return_std_error must be True or False"),
    ("layer-gshap-se-n-1", lambda: xattr.layer_gradient_shap(SPLIT, baselines=X, n_samples=1, return_std_error=True), ValueError,
     r"at least two independent samples \(n_samples >= 2\); got n_samples=1"),
    ("svs-se-int", lambda: xattr.shapley_value_sampling(F0, n_samples=4, return_std_error=1), TypeError,
     "return_std_error must be True or False"),
    ("svs-se-n-1", lambda: xattr.shapley_value_sampling(F0, n_samples=1, return_std_error=True), ValueError, r"at least two independent samples \(n_samples >= 2\); got n_samples=1"),
    ("svs-se-antithetic-odd", lambda: xattr.shapley_value_sampling(F0, n_samples=5, antithetic=True, return_std_error=True),
     ValueError, "give an even n_samples"),
    ("svs-se-antithetic-2", lambda: xattr.shapley_value_sampling(F0, n_samples=2, antithetic=True, return_std_error=True),
     ValueError, r"antithetic pairs \(n_samples >= 4\)"),
    ("svs-antithetic-str", lambda: xattr.shapley_value_sampling(F0, n_samples=4, antithetic="yes"), TypeError, "antithetic must be True or False"),  # was read as True
    ("ks-se-int", lambda: xattr.kernel_shap(F0, n_samples=10, return_std_error=1), TypeError, "return_std_error must be True or False"),
    ("ks-se-str", lambda: xattr.kernel_shap(F0, n_samples=10, return_std_error="yes"), TypeError, "return_std_error must be True or False"),
    ("ks-se-n-3", lambda: xattr.kernel_shap(F0, n_samples=3, return_std_error=True), ValueError, r"at least two of them besides the empty and the full one \(n_samples >= 4\)"),
    ("ks-se-n-1", lambda: xattr.kernel_shap(F0, n_samples=1, return_std_error=True), ValueError, "n_samples must be an int >= 2"),
    ("ks-se-paired-short", lambda: xattr.kernel_shap(F0, n_samples=6, sampling="paired", return_std_error=True)(X),
     RuntimeWarning, r"standard error is undefined \(NaN\) for 6 of 6 examples.*Raise n_samples"),  # documented
    ("ks-se-captum-short", lambda: xattr.kernel_shap(F0, n_samples=4, return_std_error=True, generator=0)(X), RuntimeWarning,
     r"undefined \(NaN\).*Raise n_samples"),  # documented
    ("lime-se", lambda: xattr.lime(F0, return_std_error=True), TypeError, "return_std_error"),
    ("lime-se-false", lambda: xattr.lime(F0, return_std_error=False), TypeError, "return_std_error"),
    # sage, lightly (its draws are being changed; these are the arguments' checks)
    ("sage-estimator", lambda: _sage(estimator="kernel"), ValueError, "estimator must be 'permutation' or 'exact'"),
    ("sage-n-permutations-0", lambda: _sage(n_permutations=0), ValueError, "n_permutations must be a positive int"),
    ("sage-n-permutations-bool", lambda: _sage(n_permutations=True), ValueError, "n_permutations must be a positive int"),
    ("sage-convergence-neg", lambda: _sage(convergence=-1.0), ValueError, "convergence must be a positive number"),
    ("sage-convergence-nan", lambda: _sage(convergence=NAN), ValueError, "convergence must be a positive number"),
    ("sage-block-size-0", lambda: _sage(block_size=0), ValueError, "block_size must be a positive int"),
    ("sage-n-background-0", lambda: _sage(n_background=0), ValueError, "n_background must be a positive int"),
    ("sage-loss", lambda: _sage(loss="xx"), ValueError, "loss must be one of"),
    ("sage-feature-names", lambda: _sage(feature_names=["a"]), ValueError, "1 feature_names for 4 feature ids"),
    ("sage-y-rows", lambda: _sage(Y=Y6[:3]), ValueError, "X and Y need the same number N > 0 of rows"),
    ("sage-generator", lambda: _sage(generator="s"), TypeError, "generator must be an int seed"),
    # attention_flow on a model with attention: query out of range, layers unknown
    ("flow-query-neg-big", lambda: xattr.attention_flow(TN, query=-4)(TX), ValueError, r"query must lie in \[-3, 3\) for 3 tokens"),
    ("flow-query-big", lambda: xattr.attention_flow(TN, query=3)(TX), ValueError, r"query must lie in \[-3, 3\)"),
    ("flow-layers-unknown", lambda: xattr.attention_flow(TN, layers=["nope"])(TX), ValueError, "no module named 'nope'"),
    ("flow-nan", lambda: xattr.attention_flow(TN)(TX * NAN), ValueError, "attention probabilities hold NaN or infinite values"),
    ("flow-empty", lambda: xattr.attention_flow(TN)(TX[:0]), ValueError, "the batch is empty .* no attention maps"),
    # explore(evaluation=True) on tiny inputs
    ("explore-eval-str", lambda: _explore(TMP, evaluation="yes"), TypeError, "evaluation must be True"),
    ("explore-eval-int", lambda: _explore(TMP, evaluation=1), TypeError, "evaluation must be True"),
    ("explore-eval-unknown", lambda: _explore(TMP, evaluation=["nope"]), ValueError, "explore: evaluation: unknown metric 'nope'"),
    ("explore-eval-empty", lambda: _explore(TMP, evaluation=[]), ValueError, "explore: evaluation is empty"),  # was "metrics is empty"
    ("explore-masks-no-eval", lambda: _explore(TMP, masks=torch.ones(1, 4, dtype=torch.bool)), ValueError, "pass evaluation= too"),
    ("explore-eval-pointing-no-masks", lambda: _explore(TMP, evaluation=["pointing_game"]), ValueError, r"explore: evaluation: metric\(s\) \['pointing_game'\] .*pass masks="),
    ("explore-eval-generator", lambda: _explore(TMP, evaluation=True, generator="s"), TypeError, "generator must be an int seed"),
    ("explore-eval-dict-int", lambda: _explore(TMP, evaluation={"d": 3}), TypeError, "explore: evaluation: metric 'd' must be an"),
    ("explore-eval-twice", lambda: _explore(TMP, evaluation=["deletion", "deletion"]), ValueError, "explore: evaluation: .*given twice"),
    ("explore-eval-dict-empty", lambda: _explore(TMP, evaluation={}), ValueError, "explore: evaluation is empty"),  # was "metrics is empty"
]


def _run(call, error, match):
    if issubclass(error, Warning):
        with pytest.warns(error, match=match):
            call()
    else:
        with pytest.raises(error, match=match):
            call()


def _param(case):
    cid, call, error, match, *why = case
    marks = [pytest.mark.xfail(strict=True, reason=why[0])] if why else []
    return pytest.param(call, error, match, id=cid, marks=marks)


@pytest.mark.parametrize("call, error, match", [_param(c) for c in CASES])
def test_mistake_raises_a_clear_error(call, error, match):
    try:
        _run(call, error, match)
    finally:
        plt.close("all")


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_valid_calls_next_to_the_new_checks_still_work():
    """The new checks refuse only the mistakes: the nearest valid calls run and give the right numbers."""
    # an order above F is allowed (documented: STII, FSII, k-SII at order >= F are the dividends; no set is larger)
    above = _si(order=5)(X)
    assert above.compressed(5).shape == (6, 0) and torch.allclose(above.total(), above.output - above.baseline_output)
    top = _si(order=4, max_features=4)(X)  # order = F: every set, the Moebius dividends for k-SII
    assert top.compressed(4).shape == (6, 1) and torch.allclose(top.total(), top.output - top.baseline_output)
    grouped = _sis(order=3, estimator="stratified", n_samples=16)(X, feature_mask=GROUPS)  # order = F = 3, 2^3 <= 16: exact
    assert torch.allclose(grouped.total(), _si(order=3)(X, feature_mask=GROUPS).total())
    assert len(_inter(True).top(3, output=-1)) == 3
    ev = _evaluation()
    assert set(ev.curves("deletion")) == {"a", "b"} and ev.mean_curves("deletion", level=0.5, n_boot=10)["a"].n == 6
    assert max_flow(CAP, np.int64(0), 2) == 3.0 == max_flow(torch.tensor(CAP), 0, 2) == max_flow(CAP.astype(int).tolist(), 0, 2)
    # uniform 1/3 maps: each input token is fed by three 1/3 edges out of three 1/3 edges from the output: flow 1
    assert np.allclose(layered_flows(STEPS, np.array([2], dtype=np.int32)), 1.0)
    assert torch.allclose(xattr.attention_flow(TN, query=-1)(TX).sum(-1), torch.ones(2, dtype=D))
    attr, se = xattr.smooth(SAL, n_samples=2, return_std_error=True, generator=0)(X)
    assert attr.shape == se.shape == X.shape and bool((se >= 0).all())
    # the explorer's evaluation on one example and one method, curve metrics included
    one = M.evaluate(MLP, {"s": _make}, X[:1], metrics=["deletion", "insertion"], show_progress=False)
    band = one.mean_curves("deletion")["s"]
    assert band.n == 1 and np.allclose(band.low, band.mean) and np.allclose(band.high, band.mean)
    with open(_explore(TMP, evaluation=["deletion", "sparseness"])) as fh:
        assert "deletion" in fh.read()
