"""DeepLift's summation-to-delta on more Hugging Face architectures (tests/hf_zoo_more.py), as
tests/test_deeplift_hf_zoo.py checks hf_zoo's 24: layer DeepLift at the word embeddings of a
padded batch (the mask f's second argument), `deep_lift` on the pixels of an image model and on
Whisper's log-mel features, the exact mapping, float64. docs/rules.md, "DeepLift on Hugging Face
architectures", has the numbers.

With `exact_deep_lift_rules` and the model in float64 throughout the delta is float64 rounding
(below 1e-12 of |f(x) - f(b)|) for all of them: XLNet's two-stream attention on ``(L, B, H, d)``
einsums, Longformer's sliding chunks, Funnel's pooling, MPNet's and DeBERTa's relative positions,
ConvBERT's span convolutions, BigBird, CodeGen, GPT-BigCode (multi-query), BART's and mBART's
encoders, CLIP's text and vision towers, Gemma 2's softcapped scores, StableLM, Persimmon (squared
ReLU, q/k layer norms), Starcoder2, OLMo (clipped q/k/v), Qwen3, Cohere, Mamba's sequential scan,
BEiT, DINOv2, ConvNeXt, SegFormer and Whisper's encoder. DeBERTa-v2 was 2.4e-4 off before
tables not computed from the input stopped counting as merged rows (NOTE: [Rows merged with
another dim]): its relative position keys, ``(H, 2k, d)``, repeated to ``(R * H, 2k, d)``, noted
the heads' size position-major when H happened to equal the call's rows.
"""

from __future__ import annotations

import pytest
import torch

import xattr

hf_zoo = pytest.importorskip("hf_zoo")
if hf_zoo.transformers is None:
    pytest.skip("needs transformers", allow_module_level=True)
import hf_zoo_more  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")

EXACT = xattr.rule.exact_deep_lift_rules()
ZOO = hf_zoo_more.ZOO

# as they are, these cast to float32 inside (RMS and layer norms, softmax's dtype, scores or
# DeBERTa's hand-written layer norm): the delta is float32's rounding; Longformer's padded
# example has a NaN gradient of its own (test_longformer_padding_gradient_is_nan_as_it_is)
CASTS = {"funnel", "deberta", "codegen", "gpt_bigcode:eager", "clip_text:eager", "gemma2", "stablelm:eager",
         "persimmon", "starcoder2", "olmo", "qwen3", "cohere", "mamba", "beit", "clip_vision:eager", "segformer"}


def _name(key):
    return key.split(":")[0]


def _relative_delta(case, f=None, mapping=EXACT):
    """|delta| / |f(x) - f(b)|, the largest of the examples (float64 throughout unless f is
    given), and the attributions."""
    return hf_zoo.deep_lift_gap(case, mapping, f or hf_zoo.in_float64(case.f), 1e-3)


@pytest.mark.parametrize("key", list(ZOO))
def test_exact_mapping_conserves(key):
    """Exact to float64 rounding in float64 throughout; as it is, to float32's rounding where
    the model casts to float32, and to float64's where it does not."""
    case = ZOO[key]()
    assert _relative_delta(case)[0] < 1e-12
    if _name(key) == "longformer":
        return
    as_is = _relative_delta(case, f=case.f)[0]
    assert as_is < (1e-5 if key in CASTS or _name(key) in CASTS else 1e-12)


@pytest.mark.parametrize("key", ["xlnet:eager", "deberta_v2:eager", "gemma2:eager", "convnext:eager"])
def test_defaults_are_off(key):
    """The defaults keep the gradient at attention and norms: far from conserving (1.6e-2 for
    Gemma 2 to 2.2 for DeBERTa-v2)."""
    assert _relative_delta(ZOO[key](), mapping=None)[0] > 1e-3


def test_mamba_is_exact_with_the_defaults():
    """Mamba has neither attention nor a library norm (its RMS norm is written with ``rsqrt`` and
    products, its scan with ``exp``, products and ``@``, all of which the default rules pair):
    exact with the defaults too."""
    assert _relative_delta(ZOO["mamba:eager"](), mapping=None)[0] < 1e-12


@pytest.mark.parametrize("name", ["bart", "clip_vision", "whisper"])
def test_eager_and_sdpa_agree(name):
    """Two spellings of one function: equal attributions (float64 throughout)."""
    a, b = (_relative_delta(ZOO[f"{name}:{attn}"]())[1] for attn in ("eager", "sdpa"))
    assert torch.allclose(a, b, rtol=0, atol=1e-10 * a.abs().max())


@pytest.mark.parametrize("key", ["deberta_v2:eager", "xlnet:eager"])
def test_padded_example_alone_gets_its_row(key):
    """The padded example alone (its mask a second argument) gets its attributions in the batch."""
    case = ZOO[key]()
    ids, mask, ref = case.inputs()
    split = xattr.at_layer(hf_zoo.in_float64(case.f), case.embedding)
    both = xattr.layer_deep_lift(split, baselines=ref, mapping=EXACT)(ids, mask)
    alone = xattr.layer_deep_lift(split, baselines=ref[1:], mapping=EXACT)(ids[1:], mask[1:])
    assert torch.allclose(alone, both[1:], rtol=0, atol=1e-12 * both.abs().max())


def test_xlnet_embeds_sequence_first():
    """XLNet embeds its ids transposed, ``(L, B, D)``: a layer DeepLift there is refused with a
    pointer to a batch-first layer; its ``inputs_embeds`` (what hf_zoo_more's f passes) are
    batch-first, the same function."""
    case = ZOO["xlnet:eager"]()
    ids, mask, ref = case.inputs()

    def f(ids, mask, embedded=False):
        given = dict(inputs_embeds=case.embedding(ids)) if embedded else dict(input_ids=ids)
        return case.model(attention_mask=mask, **given).last_hidden_state[:, 0].sum(-1)

    with pytest.raises(ValueError, match="sequence-first"):
        xattr.layer_deep_lift(xattr.at_layer(f, case.embedding), baselines=ref, mapping=EXACT)(ids, mask)
    with torch.no_grad():
        assert torch.allclose(f(ids, mask), f(ids, mask, True), rtol=0, atol=1e-14)


def test_longformer_padding_gradient_is_nan_as_it_is():
    """As it is, a padded query of Longformer whose window holds only padding scores
    ``finfo(float64).min`` everywhere, -inf in its float32 softmax: its weights are NaN, masked to
    0 in the forward but not in the backward, so the plain gradient is NaN at the padded example
    (autograd's own, not xattr's doing); float64 throughout, DeepLift is exact (above)."""
    case = ZOO["longformer:eager"]()
    ids, mask, ref = case.inputs()
    kept = []
    handle = case.embedding.register_forward_hook(lambda m, i, o: kept.append(o))
    try:
        (grad,) = torch.autograd.grad(case.f(ids, mask).sum(), kept)
    finally:
        handle.remove()
    assert grad[1].isnan().any() and not grad[0].isnan().any()
    attr = xattr.layer_deep_lift(xattr.at_layer(case.f, case.embedding), baselines=ref, mapping=EXACT)(ids, mask)
    assert attr[1].isnan().any() and not attr[0].isnan().any()
