"""Captum's ``LLMAttribution`` and ``LLMGradientAttribution`` over ``xattr.llm``.

Both take a compat attribution object built on a Hugging Face-style causal LM and a tokenizer,
and explain the log-probability (or probability) of a target continuation of a prompt given as
an interpretable input (``TextTokenInput``, ``TextTemplateInput``, ``ImageMaskInput``: features
are tokens, template values or image segments). The return is an ``LLMAttributionResult``:
``seq_attr`` for the whole target, ``token_attr`` per target token.

How xattr differs from Captum in cost, not in numbers (NOTE: [One teacher-forced pass for every
target token] in xattr/llm/_log_probs.py):

- Captum decodes the target one token at a time for every perturbed prompt (``forward_in_tokens=
  True``, its default): T model calls per perturbation, one perturbation per call. xattr reads
  all T log-probabilities from one pass over ``[prompt, target]`` and evaluates the perturbed
  prompts together (token inputs: all in one batch; template and image inputs: one batch per
  group of equal-shaped model inputs). ``forward_in_tokens`` and ``use_cached_outputs`` are
  accepted and change nothing; the numbers agree with Captum's to float rounding on causal LMs.
- ``LLMGradientAttribution`` runs the wrapped gradient method once for all T target tokens
  (``xattr.outputs()``: T gradients in one vmapped pass) where Captum runs it T times.

Per-token attributions come from the methods whose estimate is linear in the model's outputs
per coalition (``FeatureAblation``, ``ShapleyValueSampling``, ``ShapleyValues``); ``Lime`` and
``KernelShap`` give ``seq_attr`` only, as in Captum. ``RemoteLLMAttribution`` (a model behind
an API) is in llm_remote.py.
"""

from __future__ import annotations

from copy import copy
from typing import Any, Callable, Mapping

import torch

import xattr
from xattr.llm._log_probs import keep_logits, read_log_probs

from ._convert import Attribution
from .layer import LayerGradientShap, LayerGradientXActivation, LayerIntegratedGradients
from .llm_inputs import TextTokenInput
from .llm_result import LLMAttributionResult, pretty_tokens
from .perturbation import FeatureAblation, ShapleyValues, ShapleyValueSampling
from .surrogate import KernelShap, Lime

DEFAULT_GEN_ARGS = xattr.llm.DEFAULT_GEN_ARGS


def _token_input(inp) -> bool:
    """A token input (xattr's, or an object with the same fields, such as Captum's own)."""
    return isinstance(inp, TextTokenInput) or all(hasattr(inp, a) for a in ("inp_tensor", "itp_tensor", "itp_mask"))


class BaseLLMAttribution(Attribution):
    """Shared by both classes: the model, tokenizer and device, the target's tokens, and the
    model input made from an interpretable input."""

    SUPPORTED_METHODS: tuple = ()

    def __init__(self, attr_method, tokenizer) -> None:
        if not isinstance(attr_method, self.SUPPORTED_METHODS):
            names = ", ".join(c.__name__ for c in self.SUPPORTED_METHODS)
            raise TypeError(f"{type(self).__name__} wraps one of xattr.compat.captum's {names}; got "
                            f"{type(attr_method).__name__}")
        self.forward_func = attr_method.forward_func
        self.model = self.forward_func
        self.tokenizer = tokenizer
        device = getattr(self.model, "device", None)
        if not isinstance(device, torch.device):
            params = getattr(self.model, "parameters", None)
            first = next(iter(params()), None) if callable(params) else None
            device = first.device if first is not None else torch.device("cpu")
        self.device = device
        self.attr_method = copy(attr_method)

    def _get_target_tokens(self, inp, target=None, gen_args: dict | None = None) -> torch.Tensor:
        if target is None:
            if not callable(getattr(self.model, "generate", None)):
                raise ValueError("target is None, so the target is generated, but the model has no generate() "
                                 "method: give the target as a string or a tensor of token ids")
            model_inp = self._format_model_input(inp.to_model_input())
            out = self.model.generate(**model_inp, **(gen_args or DEFAULT_GEN_ARGS))
            return out[0, model_inp["input_ids"].shape[1]:]
        if gen_args is not None:
            raise ValueError("gen_args is for generating the target: pass it only with target=None")
        if isinstance(target, str):
            ids = torch.tensor(self.tokenizer.encode(target, add_special_tokens=False), dtype=torch.long)
            if not ids.numel():
                raise ValueError(f"target {target!r} encodes to no tokens: give the text whose log-probability to explain")
            return ids
        if isinstance(target, torch.Tensor):
            return _target_ids(target)
        raise TypeError(f"target must be a string, a tensor of token ids or None; got {type(target).__name__}")

    def _format_model_input(self, model_input) -> dict:
        """``{"input_ids": (1, L), ...}`` from a string (tokenized), a tensor of ids, or a mapping."""
        if isinstance(model_input, str):
            model_input = self.tokenizer.encode(model_input, return_tensors="pt")
        if isinstance(model_input, torch.Tensor):
            return {"input_ids": model_input.to(self.device)}
        if not isinstance(model_input, Mapping):
            raise TypeError(f"an interpretable input's model input must be a string, a tensor of ids or a mapping; "
                            f"got {type(model_input).__name__}")
        return dict(model_input)

    def attribute_future(self) -> Callable:
        raise NotImplementedError(f"attribute_future is not implemented for {type(self).__name__}")



def _target_ids(target: torch.Tensor) -> torch.Tensor:
    """A target given as token ids: integers, one sequence (T,) (or (1, T), Captum's batch of one), not empty."""
    if target.dtype in (torch.bool,) or target.is_floating_point() or target.is_complex():
        raise TypeError(f"a target tensor holds token ids: an integer tensor, got {target.dtype}")
    if target.ndim == 2 and target.shape[0] == 1:
        target = target[0]
    if target.ndim != 1:
        raise ValueError(f"a target tensor holds one sequence of token ids, shape (T,) or (1, T); got {tuple(target.shape)}")
    if not target.numel():
        raise ValueError("the target tensor is empty: give the token ids whose log-probability to explain")
    return target.long()

class LLMAttribution(BaseLLMAttribution):
    """``LLMAttribution(attr_method, tokenizer, attr_target="log_prob")``: a perturbation method
    (``FeatureAblation``, ``ShapleyValueSampling``, ``ShapleyValues``, ``Lime``, ``KernelShap``)
    over the features of a prompt, explaining a target continuation's log-probability
    (``"log_prob"``) or probability (``"prob"``). See the module docstring."""

    SUPPORTED_METHODS = (FeatureAblation, ShapleyValueSampling, ShapleyValues, Lime, KernelShap)
    SUPPORTED_PER_TOKEN_ATTR_METHODS = (FeatureAblation, ShapleyValueSampling, ShapleyValues)

    def __init__(self, attr_method, tokenizer, attr_target: str = "log_prob") -> None:
        super().__init__(attr_method, tokenizer)
        if attr_target not in ("log_prob", "prob"):
            raise ValueError(f"attr_target must be 'log_prob' or 'prob', got {attr_target!r}")
        self.attr_target = attr_target
        self.include_per_token_attr = isinstance(attr_method, self.SUPPORTED_PER_TOKEN_ATTR_METHODS)

    def _forward(self, inp, target_tokens: torch.Tensor, inspect: Callable | None) -> Callable:
        """The model function of the interpretable tensor: (k, n) rows of 0/1 (1 keeps a feature)
        -> (k, 1 + T) (per-token methods) or (k,), all rows in as few model calls as shapes allow."""
        tokens = target_tokens.to(self.device)
        total_only = not self.include_per_token_attr
        prob = self.attr_target == "prob"
        response = self.tokenizer.decode(target_tokens) if inspect is not None else None  # the same for every call

        def run(model_inp: dict) -> torch.Tensor:
            ids = model_inp["input_ids"]
            rows = ids.shape[0]
            t = tokens.expand(rows, -1)
            full = torch.cat([ids, t.to(ids.dtype)], 1)
            inputs = {**model_inp, "input_ids": full,
                      "attention_mask": torch.ones(full.shape, dtype=torch.long, device=full.device),
                      **keep_logits(self.model, t.shape[1])}
            with torch.no_grad():
                values = read_log_probs(self.model(**inputs), t, total=True, prob=prob)
            if inspect is not None:
                for row in range(rows):
                    inspect(self.tokenizer.decode(ids[row]), response, values[row].tolist())
            return values[:, 0] if total_only else values

        def forward(bits: torch.Tensor) -> torch.Tensor:
            if _token_input(inp):  # one batch: every row has the prompt's length
                return run({"input_ids": inp.to_model_input(bits).to(self.device)})
            made = [self._format_model_input(inp.to_model_input(bits[r : r + 1])) for r in range(bits.shape[0])]
            groups: dict = {}
            for r, m in enumerate(made):
                key = tuple((k, tuple(v.shape)) for k, v in sorted(m.items()) if isinstance(v, torch.Tensor))
                groups.setdefault(key, []).append(r)
            out = [None] * len(made)
            for rows in groups.values():
                first = made[rows[0]]
                batch = {k: (torch.cat([made[r][k] for r in rows]) if isinstance(v, torch.Tensor) else v)
                         for k, v in first.items()}
                for r, value in zip(rows, run(batch)):
                    out[r] = value
            return torch.stack(out)

        return forward

    def attribute(self, inp, target=None, num_trials: int = 1, gen_args: dict | None = None,
                  use_cached_outputs: bool = True, _inspect_forward: Callable | None = None,
                  forward_in_tokens: bool = True, **kwargs: Any) -> LLMAttributionResult:
        """Attributions of the target's (log-)probability to the input's features, averaged over
        ``num_trials`` runs of the method. ``target``: a string (tokenized without special
        tokens), a tensor of token ids, or None to generate it (``gen_args`` over greedy decoding
        of 25 tokens). ``use_cached_outputs`` and ``forward_in_tokens`` change nothing in xattr
        (one teacher-forced pass; module docstring). ``kwargs`` go to the method's
        ``attribute`` (``n_samples``, ``feature_mask``, ``show_progress``, ...)."""
        if not isinstance(num_trials, int) or num_trials < 1:
            raise ValueError(f"num_trials must be a positive integer, got {num_trials!r}")
        if "target" in kwargs or "additional_forward_args" in kwargs:
            raise TypeError("target and additional_forward_args are set by LLMAttribution itself")
        target_tokens = self._get_target_tokens(inp, target, gen_args)
        method = copy(self.attr_method)
        method.forward_func = self._forward(inp, target_tokens, _inspect_forward)
        outputs = xattr.outputs() if self.include_per_token_attr else None
        rows = 1 + len(target_tokens) if self.include_per_token_attr else 1
        attr = torch.zeros(rows, inp.n_itp_features, dtype=torch.float, device=self.device)
        for _ in range(num_trials):
            bits = inp.to_tensor().to(self.device)
            attr += method.attribute(bits, target=outputs, **kwargs).reshape(attr.shape)
        attr = inp.format_attr(attr / num_trials)
        return LLMAttributionResult(
            seq_attr=attr[0], token_attr=attr[1:] if self.include_per_token_attr else None,
            input_tokens=inp.values, output_tokens=pretty_tokens(target_tokens, self.tokenizer), inp=inp,
        )


class LLMGradientAttribution(BaseLLMAttribution):
    """``LLMGradientAttribution(attr_method, tokenizer)``: a layer gradient method
    (``LayerIntegratedGradients``, ``LayerGradientXActivation``, ``LayerGradientShap``; its
    layer is the model's input embedding) over the tokens of a ``TextTokenInput``, explaining the
    log-probability of each target token; ``seq_attr`` is their sum. All T target tokens take
    one run of the method (Captum: T runs). Attributions are summed over the embedding's width.

    As in Captum, the method's input is the 0/1 token tensor, not the embedding: its baselines
    are 0/1 tensors too (0: the token's baseline id). ``LayerGradientShap`` scales that tensor
    towards its baseline, and a token whose entry is below 1 is replaced, so its gradients are
    taken at the baseline prompt (every random point gives the same one); layer IG
    interpolates the embedding itself. Captum's ``LayerGradientShap`` here explains the first
    target token again for later ones (docs/llm.md, section 9); xattr explains each."""

    SUPPORTED_METHODS = (LayerGradientShap, LayerGradientXActivation, LayerIntegratedGradients)

    def attribute(self, inp, target=None, gen_args: dict | None = None, **kwargs: Any) -> LLMAttributionResult:
        if not _token_input(inp):
            raise TypeError(f"LLMGradientAttribution attributes tokens: give a TextTokenInput, got {type(inp).__name__}")
        if "target" in kwargs or "additional_forward_args" in kwargs:
            raise TypeError("target and additional_forward_args are set by LLMGradientAttribution itself")
        target_tokens = self._get_target_tokens(inp, target, gen_args)
        per_token = xattr.llm.target_log_probs(self.model, target_tokens.to(self.device), total=False)
        method = copy(self.attr_method)
        method.forward_func = lambda bits: per_token(inp.to_model_input(bits).to(self.device))
        bits = inp.to_tensor().to(self.device)
        if isinstance(method, LayerGradientShap):
            bits = bits.float()  # Captum scales the 0/1 tensor towards its baselines
        attr = method.attribute(bits, target=xattr.outputs(), **kwargs)  # (1, T, L + T, D)
        if isinstance(attr, (tuple, list)):
            raise TypeError("the method's layer must be the model's input embedding (one tensor output)")
        length = inp.inp_tensor.shape[1]
        attr = attr.detach()[0, :, :length].sum(-1)  # (T, L)
        if inp.itp_mask is not None:
            attr = attr[:, inp.itp_mask[0].to(attr.device)]
        return LLMAttributionResult(
            seq_attr=attr.sum(0), token_attr=attr, input_tokens=inp.values,
            output_tokens=pretty_tokens(target_tokens, self.tokenizer),
        )
