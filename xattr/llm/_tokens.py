"""Prompts as features: attributing a subset of the prompt's tokens, and generating a target."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from xattr._src.gradients import is_multi_output

from ._log_probs import _logits

DEFAULT_GEN_ARGS = {"max_new_tokens": 25, "do_sample": False, "temperature": None, "top_p": None}


def free_positions(ids: torch.Tensor, skip: Sequence[int] | torch.Tensor = ()) -> torch.Tensor:
    """The positions (a 1-D LongTensor) of a (1, L) prompt whose token is not in ``skip``
    (special tokens such as BOS that a user does not want as features).

    Example:
      >>> free = xattr.llm.free_positions(ids, [tok.cls_token_id])      # e.g. tensor([1, 2, 3])
    """
    if ids.ndim != 2 or ids.shape[0] != 1:
        raise ValueError(f"free_positions takes one prompt, ids of shape (1, L); got {tuple(ids.shape)}")
    if skip is None or isinstance(skip, (str, bytes)):
        raise TypeError(f"skip must be a sequence (or tensor) of token ids, got {skip!r}")
    skip = torch.as_tensor(list(skip) if not isinstance(skip, torch.Tensor) else skip, dtype=ids.dtype, device=ids.device)
    return torch.nonzero(~torch.isin(ids[0], skip.reshape(-1)))[:, 0]


def free_tokens(f: Callable, ids: torch.Tensor, positions: torch.Tensor) -> Callable:
    """``g(free_ids, *rest) = f(ids with free_ids written at positions, *rest)``.

    The attributed input of ``g`` is the prompt's tokens at ``positions`` only, (B, P); the
    others stay as in ``ids`` (1 row shared by all, or B rows, one per example, L). A method applied to ``g`` gives one score per
    free token and never perturbs the others (Captum's ``TextTokenInput(skip_tokens=...)``).

    Example:
      >>> g = xattr.target(xattr.llm.free_tokens(log_probs, ids, free), xattr.outputs())
      >>> phi = xattr.shapley_values(g, baselines=unk_id)(ids[:, free])   # (1, 1 + T, P)
    """
    positions = _checked_positions(positions, ids)

    def with_fixed(free_ids: torch.Tensor, *rest):
        rows, held = free_ids.shape[0], ids.shape[0]
        if held == 1:
            full = ids.to(free_ids.device).expand(rows, -1)
        elif rows % held == 0:  # methods fold copies of the B examples copy-major: row r is example r % B
            full = ids.to(free_ids.device).repeat(rows // held, 1)
        else:
            raise ValueError(f"free_tokens holds {held} prompts but was given {rows} rows of free tokens")
        return f(full.index_copy(1, positions.to(free_ids.device), free_ids.to(full.dtype)), *rest)

    with_fixed.multi_output = is_multi_output(f)  # f = xattr.target(..., xattr.outputs()) keeps its K outputs
    return with_fixed


def _checked_positions(positions, ids: torch.Tensor) -> torch.Tensor:
    """``positions`` as a 1-D LongTensor of distinct columns of ``ids`` (a float was truncated,
    a repeated position let one of its written tokens win, out of range failed inside the call)."""
    given = torch.as_tensor(positions, device=ids.device)
    if given.is_floating_point() or given.is_complex() or given.dtype == torch.bool or given.ndim != 1:
        raise TypeError(f"positions must be a 1-D integer tensor of prompt positions, got {given.dtype} of shape "
                        f"{tuple(given.shape)} (xattr.llm.free_positions makes one)")
    positions = given.long()
    length = ids.shape[-1]
    if positions.numel() and not bool(((positions >= 0) & (positions < length)).all()):
        raise ValueError(f"positions must lie in [0, {length}) for prompts of length {length}, got {positions.tolist()}")
    if positions.unique().numel() != positions.numel():
        raise ValueError(f"positions must be distinct, got {positions.tolist()}")
    return positions


@torch.no_grad()
def generate(model: Callable, ids: torch.Tensor, **gen_args) -> torch.Tensor:
    """The model's continuation of one prompt (1, L), as a 1-D LongTensor of new token ids.

    A model with a Hugging Face ``generate`` method runs it with ``gen_args`` over greedy
    defaults (``max_new_tokens=25, do_sample=False``, Captum's); any other causal LM is decoded
    greedily, one full forward per token (``max_new_tokens`` and ``eos_token_id`` are read).

    Example:
      >>> new_ids = xattr.llm.generate(lm, ids, max_new_tokens=5)   # 1-D LongTensor of new tokens
      >>> tok.decode(new_ids)
    """
    if ids.ndim != 2 or ids.shape[0] != 1:
        raise ValueError(f"generate takes one prompt, ids of shape (1, L); got {tuple(ids.shape)}")
    args = {**DEFAULT_GEN_ARGS, **gen_args}
    if callable(getattr(model, "generate", None)):
        out = model.generate(input_ids=ids, **args)
        return out[0, ids.shape[1]:]
    eos = args.get("eos_token_id")
    seq = ids
    for _ in range(int(args["max_new_tokens"])):
        nxt = _logits(model(seq))[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt.to(seq.dtype)], 1)
        if eos is not None and int(nxt) == eos:
            break
    return seq[0, ids.shape[1]:]
