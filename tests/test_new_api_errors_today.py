"""The mistakes a user plausibly makes with today's public functions (token statistics, attention
maps, the faithfulness / ROAD / stability / localization metrics, `evaluate`, the TracIn index,
paired KernelSHAP sampling and the new plots): bools passed as ints, zero or negative counts,
floats for ints, wrong ranks, mismatched batches, NaN inputs, unknown options and empty batches
each raise a clear ValueError / TypeError whose message names the argument or says what to do,
never an internal error from deep inside torch, and never a silent wrong answer."""

import copy
import functools
import math

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xattr
import xattr.influence as I
import xattr.metrics as M
import xattr.metrics.entries as E

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

D = torch.float64
NAN = float("nan")


class _Attention(nn.Module):
    """Self-attention with the probabilities from F.softmax, plus the residual."""

    def __init__(self, dim: int = 4, heads: int = 2):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        return x + self.proj((p @ v).transpose(1, 2).reshape(b, t, d))


class _Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a1, self.a2, self.head = _Attention(), _Attention(), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.a2(self.a1(x))[:, 0])


class _Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.e, self.o = nn.Embedding(5, 3), nn.Linear(3, 2)

    def forward(self, ids):
        return self.o(self.e(ids).mean(1))


torch.manual_seed(0)
TN = _Transformer().to(D).eval()
TX = torch.randn(2, 5, 4, dtype=D, generator=torch.Generator().manual_seed(1))
MAPS = torch.rand(2, 5, 5, dtype=D, generator=torch.Generator().manual_seed(2)).softmax(-1)
torch.manual_seed(0)
MLP = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(D).eval()
X = torch.randn(10, 4, dtype=D, generator=torch.Generator().manual_seed(1))
Y = torch.arange(10) % 3
F0 = xattr.target(MLP, 0)
SAL = xattr.saliency(F0)
ATTR = SAL(X)
STATES = [copy.deepcopy(MLP.state_dict()) for _ in range(2)]
CE = nn.CrossEntropyLoss()
torch.manual_seed(0)
IMG_NET = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(72, 3)).to(D).eval()
IMG = torch.randn(2, 1, 6, 6, dtype=D, generator=torch.Generator().manual_seed(2))
FI = xattr.target(IMG_NET, 0)
IATTR = xattr.saliency(FI)(IMG)
MASK = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
MASK[:, :, 1:3, 1:3] = True
IDS = torch.tensor([[1, 2, 3, 0], [2, 2, 1, 0]])
IDS_Y = torch.tensor([0, 1])
torch.manual_seed(0)
BAG = _Bag().eval()
ABL = functools.partial(xattr.feature_ablation, baselines=0)
SERIES = torch.randn(20, 3, generator=torch.Generator().manual_seed(3)).numpy()
M2 = torch.ones(5, 5, dtype=torch.bool)
LAYER = MLP[0]


def _make(f):
    return xattr.saliency(f)


def _stats():
    return xattr.token_statistics(ABL, BAG, IDS, labels=IDS_Y)


def _index():
    return I.tracin_fast_index(MLP, "2", STATES, CE, (X, Y))


def _evaluation():
    return M.evaluate(MLP, {"a": _make, "b": _make}, X, metrics=["sparseness", "complexity"], show_progress=False)


def _ev(entry, model=MLP, x=X, masks=None):
    return M.evaluate(model, {"s": _make}, x, metrics=[entry], masks=masks, show_progress=False)


def _ax():
    return plt.subplots()[1]


def _ts(**kw):
    return xattr.viz.visualize_timeseries_attr(SERIES, SERIES, use_pyplot=False, **kw)


# (id, call, error, match): every call is a mistake.
CASES = [
    # token_statistics, TokenStatistics.top / merge
    ("ts-method-str", lambda: xattr.token_statistics("x", BAG, IDS, labels=IDS_Y), TypeError, "method must be a transform"),
    ("ts-model-str", lambda: xattr.token_statistics(ABL, "m", IDS, labels=IDS_Y), TypeError, "model a callable"),
    ("ts-batch-size-0", lambda: xattr.token_statistics(ABL, BAG, IDS, labels=IDS_Y, batch_size=0), ValueError, "batch_size"),
    ("ts-batch-size-bool", lambda: xattr.token_statistics(ABL, BAG, IDS, labels=IDS_Y, batch_size=True), ValueError, "batch_size"),
    ("ts-vocab-size-neg", lambda: xattr.token_statistics(ABL, BAG, IDS, labels=IDS_Y, vocab_size=-1), ValueError, "vocab_size"),
    ("ts-vocab-size-bool", lambda: xattr.token_statistics(ABL, BAG, IDS, labels=IDS_Y, vocab_size=True), ValueError, "vocab_size"),
    ("ts-empty", lambda: xattr.token_statistics(ABL, BAG, IDS[:0], labels=IDS_Y[:0]), ValueError, "at least one example"),
    ("ts-1d-ids", lambda: xattr.token_statistics(ABL, BAG, IDS[0], labels=IDS_Y[:1]), ValueError, r"token ids \(N, T\)"),
    ("ts-float-ids", lambda: xattr.token_statistics(ABL, BAG, IDS.double(), labels=IDS_Y), TypeError,
     r"integer token ids.*ids\.long\(\)"),  # was embedding's RuntimeError
    ("ts-labels-len", lambda: xattr.token_statistics(ABL, BAG, IDS, labels=torch.tensor([0, 1, 1])), ValueError,
     "one label per example"),
    ("ts-float-labels", lambda: xattr.token_statistics(ABL, BAG, IDS, labels=torch.tensor([0.0, 1.0])), TypeError,
     "integer class indices"),
    ("ts-reduce", lambda: xattr.token_statistics(ABL, BAG, IDS, labels=IDS_Y, reduce="x"), ValueError, "reduce must be"),
    ("ts-target", lambda: xattr.token_statistics(ABL, BAG, IDS, labels=IDS_Y, target="x"), ValueError, "target must be"),
    ("ts-nan-attributions", lambda: xattr.TokenStatistics.from_attributions(IDS, torch.full((2, 4), NAN)), ValueError,
     "NaN or infinite"),
    ("top-k-0", lambda: _stats().top(0, 0), ValueError, "k must be a positive int"),
    ("top-k-bool", lambda: _stats().top(0, True), ValueError, "k must be a positive int"),
    ("top-k-float", lambda: _stats().top(0, 2.5), ValueError, "k must be a positive int"),
    ("top-min-count-bool", lambda: _stats().top(0, 2, min_count=True), ValueError, "min_count"),
    ("top-group", lambda: _stats().top(7), KeyError, r"no group 7; the groups are \(0, 1\)"),
    ("merge-str", lambda: _stats().merge("x"), TypeError, "another TokenStatistics"),
    # attention_rollout / attention_flow / attention_gradient_rollout
    ("rollout-model-str", lambda: xattr.attention_rollout("m"), TypeError, "needs a model"),
    ("rollout-residual", lambda: xattr.attention_rollout(TN, residual=1.5), ValueError, r"residual must be a number in \[0, 1\]"),
    ("rollout-residual-nan", lambda: xattr.attention_rollout(TN, residual=NAN), ValueError, "residual"),
    ("rollout-residual-str", lambda: xattr.attention_rollout(TN, residual="a"), ValueError, "residual"),
    ("rollout-discard", lambda: xattr.attention_rollout(TN, discard_ratio=1.0), ValueError, r"discard_ratio .*\[0, 1\)"),
    ("rollout-discard-neg", lambda: xattr.attention_rollout(TN, discard_ratio=-0.1), ValueError, "discard_ratio"),
    ("rollout-head-fusion", lambda: xattr.attention_rollout(TN, head_fusion="x"), ValueError, "head_fusion must be one of"),
    ("rollout-layers-int", lambda: xattr.attention_rollout(TN, layers=3)(TX), TypeError, "nn.Module objects or names"),
    ("rollout-empty", lambda: xattr.attention_rollout(TN)(TX[:0]), ValueError, "empty"),  # was an empty (0, T, T) result
    ("rollout-nan", lambda: xattr.attention_rollout(TN)(TX * NAN), ValueError, "NaN"),  # was a silent NaN map
    ("flow-query-bool", lambda: xattr.attention_flow(TN, query=True), ValueError, "query must be None or an int"),
    ("flow-query-float", lambda: xattr.attention_flow(TN, query=1.5), ValueError, "query must be None or an int"),
    ("flow-query-big", lambda: xattr.attention_flow(TN, query=99)(TX), ValueError, r"query must lie in \[-5, 5\)"),
    ("flow-residual", lambda: xattr.attention_flow(TN, residual=-0.5), ValueError, "residual"),
    ("flow-empty", lambda: xattr.attention_flow(TN)(TX[:0]), ValueError, "empty"),  # was an empty result
    ("flow-nan", lambda: xattr.attention_flow(TN)(TX * NAN), ValueError, "NaN"),  # was a silent all-zero flow
    ("grad-rollout-f-str", lambda: xattr.attention_gradient_rollout("f"), TypeError, "a callable"),
    ("grad-rollout-empty", lambda: xattr.attention_gradient_rollout(xattr.target(TN, 0))(TX[:0]), ValueError, "empty"),  # was an empty result
    ("grad-rollout-nan", lambda: xattr.attention_gradient_rollout(xattr.target(TN, 0))(TX * NAN), ValueError, "NaN"),  # was a silent NaN map
    # attention_weights / attention_gradients
    ("weights-model-str", lambda: xattr.attention_weights("m"), TypeError, "needs a model"),
    ("weights-layer", lambda: xattr.attention_weights(TN, layers=["nope"])(TX), ValueError, "no module named 'nope'"),
    ("weights-empty", lambda: xattr.attention_weights(TN)(TX[:0]), ValueError, "empty"),  # was empty maps
    ("weights-nan", lambda: xattr.attention_weights(TN)(TX * NAN), ValueError, "NaN"),  # was NaN maps
    ("gradients-f-str", lambda: xattr.attention_gradients("f"), TypeError, "a callable"),
    ("gradients-empty", lambda: xattr.attention_gradients(xattr.target(TN, 0))(TX[:0]), ValueError, "empty"),  # was empty maps
    # query_row / tokens_to_image
    ("query-row-str", lambda: xattr.query_row("m"), TypeError, "tensor of maps"),  # was AttributeError
    ("query-row-1d", lambda: xattr.query_row(torch.rand(5)), ValueError, r"\(\.\.\., T, T\)"),
    ("query-row-nonsquare", lambda: xattr.query_row(torch.rand(2, 5, 4)), ValueError, r"\(\.\.\., T, T\)"),
    ("query-row-bool", lambda: xattr.query_row(MAPS, True), ValueError, r"query must be an int in \[-5, 5\)"),
    ("query-row-big", lambda: xattr.query_row(MAPS, 9), ValueError, "query must be an int"),
    ("query-row-neg", lambda: xattr.query_row(MAPS, -9), ValueError, "query must be an int"),
    ("query-row-float", lambda: xattr.query_row(MAPS, 1.5), ValueError, "query must be an int"),
    ("query-row-tensor-len", lambda: xattr.query_row(MAPS, torch.tensor([0, 1, 2])), ValueError, "one integer index per example"),
    ("t2i-str", lambda: xattr.tokens_to_image("r", (2, 2)), TypeError, "relevance tensor"),  # was AttributeError
    ("t2i-grid-wrong", lambda: xattr.tokens_to_image(torch.rand(2, 5), (2, 3)), ValueError, "2x3 grid is 7 tokens"),
    ("t2i-grid-bool", lambda: xattr.tokens_to_image(torch.rand(2, 5), (True, 4)), ValueError, "grid_hw must be two positive ints"),
    ("t2i-grid-str", lambda: xattr.tokens_to_image(torch.rand(2, 5), "ab"), ValueError, "grid_hw"),
    ("t2i-grid-zero", lambda: xattr.tokens_to_image(torch.rand(2, 1), (0, 4)), ValueError, "grid_hw"),
    ("t2i-prefix-neg", lambda: xattr.tokens_to_image(torch.rand(2, 5), (2, 2), prefix=-1), ValueError, "prefix"),
    ("t2i-prefix-bool", lambda: xattr.tokens_to_image(torch.rand(2, 5), (2, 2), prefix=True), ValueError, "prefix"),
    ("t2i-mode", lambda: xattr.tokens_to_image(torch.rand(2, 5), (2, 2), size=4, mode="x"), ValueError,
     "mode must be one of"),  # was F.interpolate's NotImplementedError
    ("t2i-size-neg", lambda: xattr.tokens_to_image(torch.rand(2, 5), (2, 2), size=(-4, 4)), ValueError,
     "size must be None"),  # was F.interpolate's RuntimeError
    ("t2i-size-bool", lambda: xattr.tokens_to_image(torch.rand(2, 5), (2, 2), size=True), ValueError, "size"),  # was a 1x1 image
    # faithfulness_correlation / monotonicity / monotonicity_correlation
    ("fc-f-str", lambda: M.faithfulness_correlation("f", SAL, subset_size=2), TypeError, "f must be the model function"),  # was accepted until the call
    ("fc-subset-0", lambda: M.faithfulness_correlation(F0, SAL, subset_size=0), ValueError, "subset_size must be a positive int"),
    ("fc-subset-bool", lambda: M.faithfulness_correlation(F0, SAL, subset_size=True), ValueError, "subset_size"),
    ("fc-subset-float", lambda: M.faithfulness_correlation(F0, SAL, subset_size=1.5), ValueError, "subset_size"),
    ("fc-subset-big", lambda: M.faithfulness_correlation(F0, SAL, subset_size=9)(X), ValueError, "fewest here: 4"),
    ("fc-n-samples-1", lambda: M.faithfulness_correlation(F0, SAL, subset_size=2, n_samples=1), ValueError, "n_samples must be an int >= 2"),
    ("fc-n-samples-bool", lambda: M.faithfulness_correlation(F0, SAL, subset_size=2, n_samples=True), ValueError, "n_samples"),
    ("fc-attr-batch", lambda: M.faithfulness_correlation(F0, ATTR[:3], subset_size=2)(X), ValueError, r"shape \(3, 4\) do not match"),
    ("fc-nan", lambda: M.faithfulness_correlation(F0, SAL, subset_size=2)(X * NAN), FloatingPointError, "non-finite"),
    ("fc-attr-nan", lambda: M.faithfulness_correlation(F0, ATTR * NAN, subset_size=2)(X), ValueError, "NaN"),  # was silent NaN
    ("fc-empty", lambda: M.faithfulness_correlation(F0, SAL, subset_size=2)(X[:0]), ValueError, "empty"),
    ("fc-generator", lambda: M.faithfulness_correlation(F0, SAL, subset_size=2, generator="s")(X), TypeError, "generator"),
    ("mono-f-str", lambda: M.monotonicity("f", SAL), TypeError, "f must be the model function"),  # was accepted until the call
    ("mono-attr-batch", lambda: M.monotonicity(F0, ATTR[:3])(X), ValueError, "do not match"),
    ("mono-attr-nan", lambda: M.monotonicity(F0, ATTR * NAN)(X), ValueError, "NaN"),  # was a silent score from a NaN ranking
    ("mono-empty", lambda: M.monotonicity(F0, SAL)(X[:0]), ValueError, "empty"),
    ("mc-f-str", lambda: M.monotonicity_correlation("f", SAL), TypeError, "f must be the model function"),  # was accepted until the call
    ("mc-n-samples-0", lambda: M.monotonicity_correlation(F0, SAL, n_samples=0), ValueError, "n_samples must be a positive int"),
    ("mc-n-samples-bool", lambda: M.monotonicity_correlation(F0, SAL, n_samples=True), ValueError, "n_samples"),
    ("mc-n-samples-float", lambda: M.monotonicity_correlation(F0, SAL, n_samples=1.5), ValueError, "n_samples"),
    ("mc-n-samples-no-perturb", lambda: M.monotonicity_correlation(F0, SAL, n_samples=3), ValueError, "without a perturb_func"),
    ("mc-perturb-str", lambda: M.monotonicity_correlation(F0, SAL, perturb_func="x"), TypeError,
     "perturb_func must be callable"),  # was "'str' object is not callable" at the call
    ("mc-attr-batch", lambda: M.monotonicity_correlation(F0, ATTR[:3])(X), ValueError, "do not match"),
    ("mc-attr-nan", lambda: M.monotonicity_correlation(F0, ATTR * NAN)(X), ValueError, "NaN"),  # was a silent correlation
    ("mc-empty", lambda: M.monotonicity_correlation(F0, SAL)(X[:0]), ValueError, "empty"),
    # road / noisy_linear_imputation
    ("road-order", lambda: M.road(FI, SAL, order="x"), ValueError, "order must be 'morf'"),
    ("road-imputation", lambda: M.road(FI, SAL, imputation="x"), ValueError, "imputation must be"),
    ("road-noise-neg", lambda: M.road(FI, SAL, noise=-1.0), ValueError, "noise must be a finite number >= 0"),
    ("road-noise-nan", lambda: M.road(FI, SAL, noise=NAN), ValueError, "noise"),
    ("road-percentages-big", lambda: M.road(FI, SAL, percentages=[0.5, 1.5]), ValueError, r"numbers in \[0, 1\)"),
    ("road-percentages-empty", lambda: M.road(FI, SAL, percentages=[]), ValueError, "non-empty sequence"),
    ("road-percentages-nan", lambda: M.road(FI, SAL, percentages=[NAN]), ValueError, "percentages"),
    ("road-percentages-str", lambda: M.road(FI, SAL, percentages="x"), ValueError, "percentages"),
    ("road-argnums-tuple", lambda: M.road(FI, SAL, argnums=(0,)), TypeError, "argnums must be an int"),
    ("road-argnums-bool", lambda: M.road(FI, SAL, argnums=True), TypeError, "argnums must be an int"),
    ("road-attr-batch", lambda: M.road(FI, IATTR[:1])(IMG), ValueError, "do not fit images"),
    ("road-attr-nan", lambda: M.road(FI, IATTR * NAN)(IMG), ValueError, "NaN"),  # was a silent curve
    ("road-nan", lambda: M.road(FI, IATTR)(IMG * NAN), FloatingPointError, "non-finite"),
    ("road-not-image", lambda: M.road(F0, ATTR)(X), ValueError, r"\(B, C, H, W\)"),
    ("road-empty", lambda: M.road(FI, xattr.saliency(FI))(IMG[:0]), ValueError, "empty"),
    ("impute-mask-float", lambda: M.noisy_linear_imputation(IMG, MASK.double()), TypeError, "removed must be a bool tensor"),
    ("impute-mask-shape", lambda: M.noisy_linear_imputation(IMG, MASK[..., :3]), ValueError, "removed of shape"),
    ("impute-noise-neg", lambda: M.noisy_linear_imputation(IMG, MASK, noise=-1.0), ValueError, "noise"),
    ("impute-nan", lambda: M.noisy_linear_imputation(IMG * NAN, MASK), ValueError, "NaN"),  # was a silent NaN image
    ("impute-1d", lambda: M.noisy_linear_imputation(torch.randn(6), torch.zeros(6, dtype=torch.bool)), ValueError, "single image"),
    ("impute-str", lambda: M.noisy_linear_imputation("x", MASK), ValueError, r"\(B, C, H, W\)"),
    ("impute-int", lambda: M.noisy_linear_imputation(IMG.long(), MASK), ValueError, "float images"),
    ("impute-generator", lambda: M.noisy_linear_imputation(IMG, MASK, generator="s"), TypeError, "generator"),
    ("impute-empty", lambda: M.noisy_linear_imputation(IMG[:0], MASK[:0]), ValueError, "empty"),  # was a reshape RuntimeError
    ("impute-all-removed", lambda: M.noisy_linear_imputation(IMG, torch.ones_like(MASK)), ValueError, "every pixel removed"),
    # local_lipschitz_estimate / relative_*_stability
    ("lip-radius-neg", lambda: M.local_lipschitz_estimate(SAL, X, radius=-1.0, n_samples=2), ValueError, "radius must be a positive"),
    ("lip-radius-nan", lambda: M.local_lipschitz_estimate(SAL, X, radius=NAN, n_samples=2), ValueError, "radius"),
    ("lip-n-samples-0", lambda: M.local_lipschitz_estimate(SAL, X, radius=0.1, n_samples=0), ValueError, "n_samples must be a positive int"),
    ("lip-n-samples-bool", lambda: M.local_lipschitz_estimate(SAL, X, radius=0.1, n_samples=True), ValueError, "n_samples"),
    ("lip-n-samples-float", lambda: M.local_lipschitz_estimate(SAL, X, radius=0.1, n_samples=2.5), ValueError, "n_samples"),
    ("lip-norm", lambda: M.local_lipschitz_estimate(SAL, X, radius=0.1, n_samples=2, norm="x"), ValueError, "norm must be 'l1'"),
    ("lip-nan", lambda: M.local_lipschitz_estimate(SAL, X * NAN, radius=0.1, n_samples=2), FloatingPointError, "non-finite"),
    ("lip-empty", lambda: M.local_lipschitz_estimate(SAL, X[:0], radius=0.1, n_samples=2), ValueError, "empty"),
    ("lip-no-inputs", lambda: M.local_lipschitz_estimate(SAL, radius=0.1, n_samples=2), IndexError,
     "called with 0 positional argument"),
    ("lip-attr-fn-str", lambda: M.local_lipschitz_estimate("a", X, radius=0.1, n_samples=2), TypeError, "attr_fn must be"),
    ("lip-generator", lambda: M.local_lipschitz_estimate(SAL, X, radius=0.1, n_samples=2, generator="s"), TypeError, "generator"),
    ("ris-p", lambda: M.relative_input_stability(MLP, SAL, X, radius=0.1, n_samples=2, p="x"), ValueError, "p must be 'l1'"),
    ("ris-p-0", lambda: M.relative_input_stability(MLP, SAL, X, radius=0.1, n_samples=2, p=0), ValueError, "number >= 1"),
    ("ris-eps-neg", lambda: M.relative_input_stability(MLP, SAL, X, radius=0.1, n_samples=2, eps_min=-1.0), ValueError, "eps_min"),
    ("ris-n-samples-bool", lambda: M.relative_input_stability(MLP, SAL, X, radius=0.1, n_samples=True), ValueError, "n_samples"),
    ("ris-nan", lambda: M.relative_input_stability(MLP, SAL, X * NAN, radius=0.1, n_samples=2), FloatingPointError, "non-finite"),
    ("ris-empty", lambda: M.relative_input_stability(MLP, SAL, X[:0], radius=0.1, n_samples=2), ValueError, "empty"),
    ("ris-model-str", lambda: M.relative_input_stability("m", SAL, X, radius=0.1, n_samples=2), TypeError,
     "model must be the model function"),  # was "'str' object is not callable"
    ("ros-model-none", lambda: M.relative_output_stability(None, SAL, X, radius=0.1, n_samples=2), TypeError, "giving the logits"),
    ("ros-n-samples-0", lambda: M.relative_output_stability(MLP, SAL, X, radius=0.1, n_samples=0), ValueError, "n_samples"),
    ("ros-eps-div-neg", lambda: M.relative_output_stability(MLP, SAL, X, radius=0.1, n_samples=2, eps_div=-1.0), ValueError, "eps_div"),
    ("ros-nan", lambda: M.relative_output_stability(MLP, SAL, X * NAN, radius=0.1, n_samples=2), FloatingPointError, "non-finite"),
    ("rrs-layer-name", lambda: M.relative_representation_stability(MLP, SAL, X, layer="0", radius=0.1, n_samples=2), TypeError,
     "nn.Module layers, got str"),
    ("rrs-model-str", lambda: M.relative_representation_stability("m", SAL, X, layer=LAYER, radius=0.1, n_samples=2), TypeError,
     "needs the model function"),
    ("rrs-n-samples-bool", lambda: M.relative_representation_stability(MLP, SAL, X, layer=LAYER, radius=0.1, n_samples=True),
     ValueError, "n_samples"),
    ("rrs-radius-0", lambda: M.relative_representation_stability(MLP, SAL, X, layer=LAYER, radius=0.0, n_samples=2),
     ValueError, "radius"),
    ("rrs-nan", lambda: M.relative_representation_stability(MLP, SAL, X * NAN, layer=LAYER, radius=0.1, n_samples=2),
     FloatingPointError, "non-finite"),
    # localization
    ("pg-batch", lambda: M.pointing_game(IATTR, MASK[:1]), ValueError, r"mask of shape \(1, 1, 6, 6\) does not match"),
    ("pg-mask-shape", lambda: M.pointing_game(IATTR, MASK[..., :3]), ValueError, "does not match the map"),
    ("pg-tolerance-neg", lambda: M.pointing_game(IATTR, MASK, tolerance=-1), ValueError, "tolerance must be a finite number"),
    ("pg-tolerance-bool", lambda: M.pointing_game(IATTR, MASK, tolerance=True), ValueError, "tolerance"),
    ("pg-tolerance-nan", lambda: M.pointing_game(IATTR, MASK, tolerance=NAN), ValueError, "tolerance"),
    ("pg-nan", lambda: M.pointing_game(IATTR * NAN, MASK), ValueError, "nan or inf"),
    ("pg-empty", lambda: M.pointing_game(IATTR[:0], MASK[:0]), ValueError, "empty"),
    ("pg-channel-dim", lambda: M.pointing_game(IATTR, MASK, channel_dim=5), ValueError, "channel_dim=5"),
    ("pg-channel-dim-bool", lambda: M.pointing_game(IATTR, MASK, channel_dim=True), TypeError, "channel_dim must be an int"),
    ("pg-attr-str", lambda: M.pointing_game("a", MASK), TypeError, "one attribution tensor"),
    ("pg-mask-str", lambda: M.pointing_game(IATTR, "m"), TypeError, "mask must be a tensor"),
    ("pg-mask-float", lambda: M.pointing_game(IATTR, MASK.double() * 0.5), ValueError, "only 0 and 1"),
    ("pg-no-element-axis", lambda: M.pointing_game(torch.rand(6), torch.ones(6, dtype=torch.bool), channel_dim=None),
     ValueError, "no element axis"),
    ("rma-batch", lambda: M.relevance_mass_accuracy(IATTR, MASK[:1]), ValueError, "does not match"),
    ("rma-nan", lambda: M.relevance_mass_accuracy(IATTR * NAN, MASK), ValueError, "nan or inf"),
    ("rma-empty-mask", lambda: M.relevance_mass_accuracy(IATTR, torch.zeros_like(MASK)), ValueError, "no region to localize"),
    ("rma-empty", lambda: M.relevance_mass_accuracy(IATTR[:0], MASK[:0]), ValueError, "empty"),
    ("rra-batch", lambda: M.relevance_rank_accuracy(IATTR, MASK[:1]), ValueError, "does not match"),
    ("rra-nan", lambda: M.relevance_rank_accuracy(IATTR * NAN, MASK), ValueError, "nan or inf"),
    ("rra-empty-mask", lambda: M.relevance_rank_accuracy(IATTR, torch.zeros_like(MASK)), ValueError, "no region"),
    ("al-batch", lambda: M.attribution_localization(IATTR, MASK[:1]), ValueError, "does not match"),
    ("al-nan", lambda: M.attribution_localization(IATTR * NAN, MASK), ValueError, "nan or inf"),
    ("al-empty-mask", lambda: M.attribution_localization(IATTR, torch.zeros_like(MASK)), ValueError, "no region"),
    ("al-weighted-str", lambda: M.attribution_localization(IATTR, MASK, weighted="yes"), TypeError,
     "weighted must be True or False"),  # was read as True
    # evaluate
    ("ev-model-str", lambda: M.evaluate("m", {"s": _make}, X, show_progress=False), TypeError, "needs a model function"),
    ("ev-methods-list", lambda: M.evaluate(MLP, [_make], X, show_progress=False), TypeError, "non-empty dict"),
    ("ev-methods-empty", lambda: M.evaluate(MLP, {}, X, show_progress=False), TypeError, "non-empty dict"),
    ("ev-method-str", lambda: M.evaluate(MLP, {"s": "saliency"}, X, metrics=["sparseness"], show_progress=False), TypeError,
     "method 's' must be make"),
    ("ev-metric", lambda: M.evaluate(MLP, {"s": _make}, X, metrics=["nope"], show_progress=False), ValueError, "unknown metric 'nope'"),
    ("ev-metrics-empty", lambda: M.evaluate(MLP, {"s": _make}, X, metrics=[], show_progress=False), ValueError, "metrics is empty"),
    ("ev-target", lambda: M.evaluate(MLP, {"s": _make}, X, metrics=["sparseness"], target="x", show_progress=False),
     ValueError, "target must be 'predicted'"),
    ("ev-labels-len", lambda: M.evaluate(MLP, {"s": _make}, X, metrics=["sparseness"], target="labels", labels=Y[:3],
                                         show_progress=False), ValueError, r"labels must be an int tensor \(N,\) = \(10,\)"),
    ("ev-batch-size-0", lambda: M.evaluate(MLP, {"s": _make}, X, batch_size=0, show_progress=False), ValueError, "batch_size"),
    ("ev-batch-size-bool", lambda: M.evaluate(MLP, {"s": _make}, X, batch_size=True, show_progress=False), ValueError, "batch_size"),
    ("ev-output", lambda: M.evaluate(MLP, {"s": _make}, X, output="x", show_progress=False), ValueError, "output must be one of"),
    ("ev-empty", lambda: M.evaluate(MLP, {"s": _make}, X[:0], metrics=["sparseness"], show_progress=False), ValueError, "non-empty"),
    ("ev-no-inputs", lambda: M.evaluate(MLP, {"s": _make}, metrics=["sparseness"], show_progress=False), TypeError, "needs the model's inputs"),
    ("ev-nan", lambda: M.evaluate(MLP, {"s": _make}, X * NAN, metrics=["sparseness"], show_progress=False), FloatingPointError, "non-finite"),
    ("ev-attr-shape", lambda: M.evaluate(MLP, {"s": ATTR[:3]}, X, metrics=["sparseness"], show_progress=False), ValueError,
     "precomputed attributions of method 's'"),
    ("ev-masks-batch", lambda: _ev("pointing_game", IMG_NET, IMG, MASK[:1]), ValueError, "one mask per example"),
    ("ev-generator", lambda: M.evaluate(MLP, {"s": _make}, X, generator="s", show_progress=False), TypeError, "generator"),
    ("compare-method", lambda: _evaluation().compare("a", "nope", "sparseness"), KeyError, "unknown method 'nope'"),
    ("compare-metric", lambda: _evaluation().compare("a", "b", "nope"), KeyError, "unknown metric 'nope'"),
    ("compare-level", lambda: _evaluation().compare("a", "b", "sparseness", level=1.5), ValueError, r"level must lie in \(0, 1\)"),
    ("compare-n-boot-0", lambda: _evaluation().compare("a", "b", "sparseness", n_boot=0), ValueError, "n_boot"),
    ("compare-n-boot-bool", lambda: _evaluation().compare("a", "b", "sparseness", n_boot=True), ValueError, "n_boot"),
    ("table-level-nan", lambda: _evaluation().table(level=NAN), ValueError, "level"),
    ("plot-level", lambda: _evaluation().plot(level=2.0), ValueError, "level"),
    ("plot-ncols-0", lambda: _evaluation().plot(ncols=0), ValueError, "ncols must be a positive int"),  # was ZeroDivisionError
    ("plot-ncols-bool", lambda: _evaluation().plot(ncols=True), ValueError, "ncols"),  # was matplotlib's TypeError
    # entries.*: refused when built, or by their metric when evaluate runs them
    ("entry-road-order", lambda: E.road(order="x"), ValueError, "order must be 'morf' or 'lerf'"),
    ("entry-name", lambda: E.sparseness(name=3), TypeError, "name must be a non-empty str"),
    ("entry-subset-fraction", lambda: E.faithfulness_correlation(subset=1.5), ValueError, r"fraction must lie in \(0, 1\)"),  # was at evaluate
    ("entry-subset-0", lambda: E.faithfulness_correlation(subset=0), ValueError, "subset must be an int >= 1"),  # was at evaluate
    ("entry-fc-n-samples", lambda: E.faithfulness_correlation(n_samples=1), ValueError, "n_samples must be an int >= 2"),  # was at evaluate
    ("entry-sensitivity-n-samples", lambda: E.sensitivity_max(n_samples=True), ValueError,
     "n_samples must be an int >= 1"),  # was torch's repeat_interleave TypeError inside evaluate
    ("entry-sensitivity-radius", lambda: E.sensitivity_max(radius=0), ValueError, "radius must be a finite number > 0"),
    ("entry-infidelity-n-samples", lambda: E.infidelity(n_samples=0), ValueError, "n_samples must be an int >= 1"),  # was at evaluate
    ("entry-lipschitz-radius", lambda: E.local_lipschitz_estimate(radius=-1.0), ValueError, "radius must be a finite number > 0"),  # was at evaluate
    ("entry-ris-n-samples", lambda: E.relative_input_stability(n_samples=0), ValueError, "n_samples must be an int >= 1"),
    ("entry-ros-radius", lambda: E.relative_output_stability(radius=True), ValueError, "radius must be a finite number > 0"),
    ("entry-deletion-n-steps", lambda: _ev(E.deletion(n_steps=0)), ValueError, "n_steps"),
    ("entry-mc-n-samples", lambda: E.monotonicity_correlation(n_samples=0), ValueError, "n_samples must be an int >= 1"),  # was at evaluate
    ("entry-pointing-tolerance", lambda: _ev(E.pointing_game(tolerance=-1), IMG_NET, IMG, MASK), ValueError, "tolerance"),
    ("entry-randomization-similarity", lambda: _ev(E.randomization(similarity="x")), ValueError, "similarity must be one of"),
    ("entry-randomization-mode", lambda: _ev(E.randomization(mode="x")), ValueError, "mode must be one of"),
    ("entry-rrs-layer", lambda: _ev(E.relative_representation_stability(layer=None)), TypeError, "layer must be a module of the model"),
    ("entry-rrs-n-samples", lambda: E.relative_representation_stability(layer=None, n_samples=True), ValueError, "n_samples"),
    ("entry-road-percentages", lambda: _ev(E.road(percentages=[2.0]), IMG_NET, IMG), ValueError, "percentages"),
    # tracin_fast_index and .influence
    ("index-model-str", lambda: I.tracin_fast_index("m", "2", STATES, CE, (X, Y)), TypeError,
     "model must be an nn.Module"),  # was AttributeError
    ("index-layer", lambda: I.tracin_fast_index(MLP, "nope", STATES, CE, (X, Y)), ValueError, "no module named 'nope'"),
    ("index-not-linear", lambda: I.tracin_fast_index(MLP, "1", STATES, CE, (X, Y)), TypeError, "nn.Linear"),
    ("index-empty", lambda: I.tracin_fast_index(MLP, "2", STATES, CE, (X[:0], Y[:0])), ValueError, "empty"),
    ("index-nan", lambda: I.tracin_fast_index(MLP, "2", STATES, CE, (X * NAN, Y)), ValueError, "NaN"),
    ("index-lengths", lambda: I.tracin_fast_index(MLP, "2", STATES, CE, (X, Y[:3])), ValueError, r"first \(batch\) dim"),
    ("index-no-checkpoints", lambda: I.tracin_fast_index(MLP, "2", [], CE, (X, Y)), ValueError, "checkpoints"),
    ("index-projection-0", lambda: I.tracin_fast_index(MLP, "2", STATES, CE, (X, Y), projection_dim=0), ValueError, "projection_dim"),
    ("index-projection-bool", lambda: I.tracin_fast_index(MLP, "2", STATES, CE, (X, Y), projection_dim=True), ValueError,
     "projection_dim"),
    ("index-batch-size-0", lambda: I.tracin_fast_index(MLP, "2", STATES, CE, (X, Y), batch_size=0), ValueError, "batch_size"),
    ("index-batch-size-bool", lambda: I.tracin_fast_index(MLP, "2", STATES, CE, (X, Y), batch_size=True), ValueError, "batch_size"),
    ("index-learning-rates", lambda: I.tracin_fast_index(MLP, "2", STATES, CE, (X, Y), learning_rates=[1.0]), ValueError,
     "one per checkpoint"),
    ("index-loss-str", lambda: I.tracin_fast_index(MLP, "2", STATES, "ce", (X, Y)), TypeError, "loss_fn"),
    ("index-generator", lambda: I.tracin_fast_index(MLP, "2", STATES, CE, (X, Y), projection_dim=2, generator="s"), TypeError,
     "generator"),
    ("influence-k-0", lambda: _index().influence((X, Y), k=0), ValueError, r"k must be an int in \[1, n_train = 10\]"),
    ("influence-k-bool", lambda: _index().influence((X, Y), k=True), ValueError, "k must be an int"),
    ("influence-k-big", lambda: _index().influence((X, Y), k=99), ValueError, "k must be an int"),
    ("influence-nan", lambda: _index().influence((X * NAN, Y)), ValueError, "NaN"),
    ("influence-empty", lambda: _index().influence((X[:0], Y[:0])), ValueError, "empty"),
    ("influence-lengths", lambda: _index().influence((X, Y[:3])), ValueError, r"first \(batch\) dim"),
    ("influence-test-str", lambda: _index().influence("t"), TypeError, "must be a tuple"),
    ("influence-loss-str", lambda: _index().influence((X, Y), test_loss_fn="ce"), TypeError, "test_loss_fn"),
    ("influence-proponents-str", lambda: _index().influence((X, Y), k=2, proponents="no"), TypeError,
     "proponents must be True"),  # was read as True
    # kernel_shap(sampling=...)
    ("ks-sampling", lambda: xattr.kernel_shap(F0, sampling="x"), ValueError, r"sampling must be one of \('captum', 'paired'\)"),
    ("ks-sampling-none", lambda: xattr.kernel_shap(F0, sampling=None), ValueError, "sampling must be one of"),
    ("ks-paired-n-samples-0", lambda: xattr.kernel_shap(F0, sampling="paired", n_samples=0), ValueError, "n_samples must be an int >= 2"),
    ("ks-paired-n-samples-1", lambda: xattr.kernel_shap(F0, sampling="paired", n_samples=1), ValueError, "n_samples"),
    ("ks-paired-n-samples-bool", lambda: xattr.kernel_shap(F0, sampling="paired", n_samples=True), ValueError, "n_samples"),
    ("ks-paired-n-samples-float", lambda: xattr.kernel_shap(F0, sampling="paired", n_samples=2.5), ValueError, "n_samples"),
    ("ks-paired-nan", lambda: xattr.kernel_shap(F0, sampling="paired", n_samples=10, generator=0)(X * NAN), FloatingPointError,
     "non-finite"),
    ("ks-paired-empty", lambda: xattr.kernel_shap(F0, sampling="paired", n_samples=10, generator=0)(X[:0]), ValueError, "empty"),
    ("ks-paired-generator", lambda: xattr.kernel_shap(F0, sampling="paired", n_samples=10, generator="s")(X), TypeError, "generator"),
    # viz
    ("ts-viz-method", lambda: _ts(method="x"), ValueError, "unknown method 'x'"),
    ("ts-viz-sign", lambda: _ts(sign="x"), ValueError, "unknown sign 'x'"),
    ("ts-viz-shape", lambda: xattr.viz.visualize_timeseries_attr(SERIES, SERIES[:5], use_pyplot=False), ValueError, "does not match data"),
    ("ts-viz-1d", lambda: xattr.viz.visualize_timeseries_attr(SERIES[:, 0], SERIES[:, 0], use_pyplot=False), ValueError,
     r"attr\[:, None\]"),
    ("ts-viz-3d", lambda: xattr.viz.visualize_timeseries_attr(SERIES[None].repeat(2, 0), SERIES[None].repeat(2, 0), use_pyplot=False),
     ValueError, "pass one example"),
    ("ts-viz-str", lambda: xattr.viz.visualize_timeseries_attr("a", SERIES, use_pyplot=False), ValueError, r"shape \(N, C\)"),
    ("ts-viz-labels", lambda: _ts(channel_labels=["a"]), ValueError, "one label per channel"),
    ("ts-viz-x-values", lambda: _ts(x_values=list(range(5))), ValueError, "one value per time step"),
    ("ts-viz-outlier", lambda: _ts(outlier_perc=150), ValueError, "outlier_perc"),
    ("ts-viz-outlier-neg", lambda: _ts(outlier_perc=-1), ValueError, "outlier_perc"),
    ("ts-viz-alpha", lambda: _ts(alpha_overlay=2.0), ValueError, "alpha_overlay"),
    ("ts-viz-empty", lambda: xattr.viz.visualize_timeseries_attr(SERIES[:0], SERIES[:0], use_pyplot=False), ValueError,
     "no time steps"),
    ("border-ax-str", lambda: xattr.viz.draw_mask_border("ax", M2), TypeError, "ax must be a matplotlib Axes"),  # was AttributeError
    ("border-1d", lambda: xattr.viz.draw_mask_border(_ax(), M2[0]), ValueError, r"mask must be 2-d, \(H, W\)"),
    ("border-3d", lambda: xattr.viz.draw_mask_border(_ax(), M2[None].repeat(2, 1, 1)), ValueError, "one segment's mask"),
    ("border-str", lambda: xattr.viz.draw_mask_border(_ax(), "m"), ValueError, "2-d"),
    ("border-nan", lambda: xattr.viz.draw_mask_border(_ax(), torch.full((5, 5), NAN)), ValueError,
     "NaN"),  # was every pixel read as inside
    ("border-width-0", lambda: xattr.viz.draw_mask_border(_ax(), M2, border_width=0), ValueError, "border_width must be a positive"),
    ("border-width-bool", lambda: xattr.viz.draw_mask_border(_ax(), M2, border_width=True), ValueError, "border_width"),
    ("border-width-float", lambda: xattr.viz.draw_mask_border(_ax(), M2, border_width=1.5), ValueError, "border_width"),
    ("legend-ax-str", lambda: xattr.viz.draw_mask_legend("ax", M2, "a"), TypeError, "ax must be a matplotlib Axes"),  # was AttributeError
    ("legend-1d", lambda: xattr.viz.draw_mask_legend(_ax(), M2[0], "a"), ValueError, "2-d"),
    ("legend-nan", lambda: xattr.viz.draw_mask_legend(_ax(), torch.full((5, 5), NAN), "a"), ValueError, "NaN"),  # was a label placed
    ("legend-alpha", lambda: xattr.viz.draw_mask_legend(_ax(), M2, "a", bbox_alpha=2.0), ValueError, "outside 0-1 range"),
    ("tokens-plot-str", lambda: xattr.viz.plot_token_statistics("s"), TypeError, "needs the TokenStatistics"),
    ("tokens-plot-k-0", lambda: xattr.viz.plot_token_statistics(_stats(), k=0), ValueError, "k must be a positive int"),
    ("tokens-plot-k-bool", lambda: xattr.viz.plot_token_statistics(_stats(), k=True), ValueError, "k must be a positive int"),
    ("tokens-plot-min-count", lambda: xattr.viz.plot_token_statistics(_stats(), min_count=0), ValueError, "min_count"),
    ("tokens-plot-group", lambda: xattr.viz.plot_token_statistics(_stats(), groups=[9]), KeyError, "no group 9"),
    ("tokens-plot-groups-empty", lambda: xattr.viz.plot_token_statistics(_stats(), groups=[]), ValueError, "groups is empty"),
    ("tokens-plot-dpi", lambda: xattr.viz.plot_token_statistics(_stats(), dpi=0), ValueError, "dpi must be positive"),
]


@pytest.mark.parametrize("call, error, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_mistake_raises_a_clear_error(call, error, match):
    try:
        with pytest.raises(error, match=match):
            call()
    finally:
        plt.close("all")


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_valid_calls_next_to_the_new_checks_still_work():
    """The new checks refuse only the mistakes: the nearest valid calls run and give finite numbers."""
    roll = xattr.attention_rollout(TN)(TX)
    assert roll.shape == (2, 5, 5) and torch.allclose(roll.sum(-1), torch.ones(2, 5, dtype=D))
    assert torch.isfinite(xattr.attention_flow(TN, query=0)(TX)).all()
    assert xattr.query_row(MAPS[0], 1).shape == (5,)
    assert xattr.tokens_to_image(torch.rand(2, 5), (2, 2), size=(4, 4), mode="nearest").shape == (2, 4, 4)
    assert xattr.tokens_to_image(torch.rand(2, 5), [2, 2], size=[3, 5]).shape == (2, 3, 5)
    ids_stats = xattr.token_statistics(ABL, BAG, IDS.int(), labels=IDS_Y)
    assert ids_stats.count.sum() == IDS.numel()
    zero_attr = ATTR.clone()
    zero_attr[:, 0] = 0.0
    assert M.monotonicity(F0, zero_attr)(X).shape == (10,)
    assert torch.isfinite(M.faithfulness_correlation(F0, SAL, subset_size=2, generator=0)(X)).any()
    assert M.monotonicity_correlation(F0, ATTR, perturb_func=M.uniform_noise, n_samples=2, generator=0)(X).shape == (10,)
    assert torch.isfinite(M.road(FI, IATTR, percentages=[0.2, 0.5], generator=0)(IMG).auc).all()
    assert torch.isfinite(M.noisy_linear_imputation(IMG, MASK[0, 0], generator=0)).all()
    assert torch.isfinite(M.relative_input_stability(None, SAL, X, radius=0.1, n_samples=2, generator=0)).all()
    a = M.attribution_localization(IATTR.abs(), MASK, weighted=True)
    b = M.attribution_localization(IATTR.abs(), MASK, weighted=False)
    assert torch.allclose(a, b * 36 / 4)
    assert len(_evaluation().plot(ncols=1).axes) == 2
    index = _index()
    top, bottom = index.influence((X, Y), k=2), index.influence((X, Y), k=2, proponents=False)
    scores = index.influence((X, Y))
    assert torch.equal(scores.gather(1, top.indices), scores.topk(2, dim=1).values)
    assert torch.equal(scores.gather(1, bottom.indices), scores.topk(2, dim=1, largest=False).values)
    ax = _ax()
    assert xattr.viz.draw_mask_border(ax, torch.eye(5)) is not None
    assert xattr.viz.draw_mask_legend(ax, torch.eye(5), "a").get_text() == "a"
    fig, _ = xattr.viz.visualize_timeseries_attr(SERIES, SERIES * NAN, use_pyplot=False)  # NaN gaps in the data still plot
    assert fig is not None
    plt.close("all")
