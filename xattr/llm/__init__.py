"""Attribution for generative language models (docs/llm.md).

The number explained is the log-probability of a target continuation, read for every target
token from one teacher-forced forward pass (``target_log_probs``); every xattr method then
composes with it: perturbation methods over the prompt's token ids, gradient methods at the
input embedding, all target tokens at once with ``xattr.outputs()``:

    f = xattr.target(xattr.llm.target_log_probs(lm, target), xattr.outputs())   # (B, 1 + T)
    scores = xattr.feature_ablation(f, baselines=unk_id)(ids)                  # (B, 1 + T, L)
    emb = xattr.at_layer(f, lm.get_input_embeddings())
    lig = xattr.layer_integrated_gradients(emb)(ids, baselines=ref_ids)        # (B, 1 + T, L + T, D)

Captum's classes over these (``LLMAttribution``, ``LLMGradientAttribution``, ``TextTokenInput``,
``TextTemplateInput``) are in ``xattr.compat.captum``.
"""

from ._log_probs import target_log_probs
from ._tokens import DEFAULT_GEN_ARGS, free_positions, free_tokens, generate

__all__ = ["DEFAULT_GEN_ARGS", "free_positions", "free_tokens", "generate", "target_log_probs"]
