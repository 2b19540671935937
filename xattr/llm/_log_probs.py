"""The number an LLM attribution explains: the log-probability of a target continuation.

NOTE: [One teacher-forced pass for every target token]
A causal language model's logits at position i depend on tokens 0..i only. So the
log-probability of each target token t_k after a prompt p (what generation would give, one token
at a time) is read from one forward pass over ``[p, t]``: row ``len(p) - 1 + k`` of its logits
predicts ``t_k``. Captum's `LLMAttribution` decodes token by token by default, T forward passes
per perturbed prompt (with a key/value cache); both give the same numbers up to float rounding
(tests/test_llm_log_probs.py checks it against a token-by-token loop on GPT-2 and Llama
architectures). The one-pass form is also what makes the rest composable: the log-probabilities
of all T tokens are one model function's (B, T) output, so a perturbation method explains all of
them from the same perturbed copies, and a gradient method takes their T gradients in one
vmapped pass (``xattr.outputs()``). It assumes causal attention: for a model whose position i
sees later tokens (a masked LM, prefix-LM attention over the target) it is not generation's
probability. A Hugging Face causal LM is also given ``logits_to_keep=T + 1``, so its output
layer runs on the target's positions only (`keep_logits`).
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from xattr._src.checks import is_traced


def _logits(out) -> torch.Tensor:
    """The logits of a model's output: a tensor, ``.logits`` (Hugging Face), or a tuple's first."""
    if isinstance(out, torch.Tensor):
        logits = out
    elif hasattr(out, "logits"):
        logits = out.logits
    elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        logits = out[0]
    else:
        raise TypeError(f"the model must return logits (B, L, V), an output with .logits, or a tuple starting "
                        f"with them; got {type(out).__name__}")
    if logits.ndim == 4 and logits.shape[1] == 1:  # (B, 1, L, V): some multimodal heads
        logits = logits[:, 0]
    if logits.ndim != 3:
        raise ValueError(f"the model's logits must be (batch, length, vocabulary), got shape {tuple(logits.shape)}")
    return logits


def as_target(target, device=None) -> torch.Tensor:
    """A target continuation as a 1-D LongTensor of token ids (a (1, T) tensor is flattened)."""
    t = torch.as_tensor(target, device=device)
    if t.ndim == 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"the target must be a non-empty 1-D sequence of token ids, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"the target must hold integer token ids, got {t.dtype}")
    return t.long()


def read_log_probs(out, t: torch.Tensor, *, total: bool, prob: bool) -> torch.Tensor:
    """(B, [1 +] T) from a model's output on ``[prompt, target]`` rows, ``t`` (B, T) the target's
    ids. The logits that predict the target are the T before the last position's (whether the
    model returned all positions' logits or, with ``logits_to_keep``, only the last T + 1)."""
    n = t.shape[1]
    logits = _logits(out)
    if logits.shape[1] < n + 1:
        raise ValueError(f"the model returned logits for {logits.shape[1]} positions; the target's {n} tokens need the "
                         f"last {n + 1}")
    each = torch.log_softmax(logits[:, -(n + 1) : -1], -1).gather(-1, t[..., None])[..., 0]  # (B, T)
    if total:
        each = torch.cat([each.sum(-1, keepdim=True), each], -1)
    return each.exp() if prob else each


_KEEP = ("logits_to_keep", "num_logits_to_keep")


def takes(model: Callable, keyword: str) -> bool:
    """Whether the model's forward takes ``keyword``."""
    forward = getattr(model, "forward", model)
    try:
        return keyword in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def keep_logits(model: Callable, n: int) -> dict:
    """``{"logits_to_keep": n + 1}`` for a model whose forward takes it (Hugging Face causal LMs:
    the output layer then runs on the last n + 1 positions only, not on the prompt's; for a
    vocabulary of 150k that is most of the logits' memory), else ``{}``."""
    return next(({k: n + 1} for k in _KEEP if takes(model, k)), {})


def _check_left_padded(mask: torch.Tensor, ids: torch.Tensor) -> None:
    """The target goes after each prompt's last column, so every row's real tokens must end
    there: a prompt padded on the right would predict the first target token from a pad (log
    P(" than") -11.6 where the prompt alone gives -0.0008, silently)."""
    if tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"attention_mask must have the prompt ids' shape {tuple(ids.shape)}, got {tuple(mask.shape)}")
    if is_traced(mask):
        return
    if not bool(mask[:, -1].all()):
        raise ValueError("the prompts are padded on the right (the attention mask ends in 0 in some row): the target "
                         "follows each prompt's last column, so pad on the left (tokenizer.padding_side = 'left')")


def target_log_probs(model: Callable, target, *, total: bool = True, prob: bool = False) -> Callable:
    """A model function: prompts in, the target continuation's log-probabilities out.

    ``f = target_log_probs(model, target)`` and ``f(ids)`` (ids (B, L), one prompt per row)
    runs the causal LM once on ``[ids, target]`` for all B rows and returns (B, 1 + T): column 0
    is the log-probability of the whole target, columns 1..T that of each target token given the
    prompt and the target tokens before it (Captum's `LLMAttribution` layout). NOTE: [One
    teacher-forced pass for every target token].

    Args:
      model: a causal LM called as ``model(ids)`` (or ``model(ids, attention_mask=mask)`` when
        ``f`` is given a mask) returning logits (B, L, V), a Hugging Face output with
        ``.logits``, or a tuple starting with them.
      target: the continuation's token ids, (T,) (a (1, T) tensor or a list works too).
      total: False leaves out column 0: (B, T).
      prob: probabilities instead of log-probabilities (column 0 the whole target's, the
        product of the tokens'): Captum's ``attr_target="prob"``.

    Returns:
      ``f(ids, attention_mask=None) -> (B, 1 + T)`` (or (B, T)), differentiable, so every
      method composes: ``xattr.feature_ablation(xattr.target(f, xattr.outputs()), baselines=unk)``
      for perturbations of the token ids, ``xattr.at_layer(..., model.get_input_embeddings())``
      for gradient methods. A mask given to ``f`` covers the prompt (the target's positions are
      attended): prompts of different lengths batch when padded on the left, and a model whose
      forward takes ``position_ids`` is given them from the mask (0 at each row's first real
      token), so a padded row reads what it reads alone. Right padding cannot work: the target
      must follow the prompt's last token.

    Example:
      >>> f = xattr.llm.target_log_probs(lm, tokenizer.encode(" ugly", add_special_tokens=False))
      >>> f(ids)                                # (1, 2): log p(" ugly" | prompt), then per token
    """
    tokens = as_target(target)
    n = tokens.shape[0]
    kept, positions = keep_logits(model, n), takes(model, "position_ids")  # the model's keywords, read once

    def log_probs(ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if ids.ndim != 2:
            raise ValueError(f"prompt ids must be (batch, length), got shape {tuple(ids.shape)}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"prompt ids must be an integer tensor of token ids, got {ids.dtype} (to attribute "
                            "embeddings, attribute at the embedding layer: xattr.at_layer(f, model.get_input_embeddings()))")
        rows, length = ids.shape
        keep = dict(kept)
        if length == 0:
            raise ValueError("the prompt is empty: the first target token needs a position to be predicted from")
        t = tokens.to(ids.device).expand(rows, n)
        full = torch.cat([ids, t.to(ids.dtype)], 1)
        if attention_mask is not None:
            _check_left_padded(attention_mask, ids)
            mask = torch.cat([attention_mask, attention_mask.new_ones(rows, n)], 1)
            keep["attention_mask"] = mask
            if positions:  # left padding: the first real token is position 0
                keep["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return read_log_probs(model(full, **keep), t, total=total, prob=prob)

    log_probs.__qualname__ = log_probs.__name__ = "target_log_probs"
    return log_probs
