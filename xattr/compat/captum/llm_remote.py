"""Captum's ``RemoteLLMAttribution``: perturbation attribution of a language model behind an API.

The model is not here: a *provider* answers two questions about it, the log-probability of each
token of a target string after a prompt (``get_logprobs``) and, when no target is given, a
continuation (``generate``). Every perturbed prompt is decoded to text and sent on its own, so
the cost is one request per perturbation, and the numbers are whatever the provider returns
(a server tokenizes the text again; the target's log-probabilities must come back one per
target token, or the call fails). Write a provider by subclassing ``RemoteLLMProvider``;
``VLLMProvider`` talks to a vLLM server through the ``openai`` client (its ``prompt_logprobs``
extension), or to any object with that client's ``completions.create`` (``client=``, an xattr
keyword: a local stand-in for tests or another OpenAI-compatible server).

    fa = FeatureAblation(RemoteLLMAttribution.placeholder_model)
    llm_attr = RemoteLLMAttribution(fa, tokenizer, VLLMProvider("http://host:8000/v1"))
    result = llm_attr.attribute(TextTemplateInput("{} is better than {}", ["Beautiful", "ugly"]), target=" ugly.")
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, Callable

import torch

from .llm import DEFAULT_GEN_ARGS, LLMAttribution


class RemoteLLMProvider(ABC):
    """What ``RemoteLLMAttribution`` asks of a remote model."""

    api_url: str

    @abstractmethod
    def generate(self, prompt: str, **gen_args: Any) -> str:
        """A continuation of ``prompt`` (text)."""

    @abstractmethod
    def get_logprobs(self, input_prompt: str, target_str: str, tokenizer=None) -> list[float]:
        """One log-probability per token of ``target_str`` (as ``tokenizer`` splits it) after
        ``input_prompt``."""


class _PlaceholderModel:
    """Stands where a model would: the attribution method needs a forward function, and the
    LLM classes read its ``device``; ``RemoteLLMAttribution`` replaces the function."""

    device = torch.device("cpu")

    def __call__(self, *args, **kwargs) -> int:
        return 0


class RemoteLLMAttribution(LLMAttribution):
    """``RemoteLLMAttribution(attr_method, tokenizer, provider, attr_target="log_prob")``: the
    methods, inputs and result of ``LLMAttribution``, with the target's log-probabilities asked
    of ``provider`` for each perturbed prompt (module docstring)."""

    placeholder_model = _PlaceholderModel()

    def __init__(self, attr_method, tokenizer, provider: RemoteLLMProvider, attr_target: str = "log_prob") -> None:
        super().__init__(attr_method, tokenizer, attr_target)
        if not callable(getattr(provider, "get_logprobs", None)):
            raise TypeError(f"provider must have a get_logprobs(input_prompt, target_str, tokenizer) method; "
                            f"got {type(provider).__name__}")
        self.provider = provider

    def _prompt_text(self, model_input) -> str:
        """A model input as the text sent to the provider (token ids are decoded)."""
        if isinstance(model_input, torch.Tensor):
            return self.tokenizer.decode(model_input.flatten())
        if isinstance(model_input, str):
            return model_input
        raise TypeError(f"RemoteLLMAttribution sends text: an input's model input must be a string or token ids, "
                        f"got {type(model_input).__name__}")

    def _get_target_tokens(self, inp, target=None, gen_args: dict | None = None) -> torch.Tensor:
        if target is not None:
            return super()._get_target_tokens(inp, target, gen_args)
        if not callable(getattr(self.provider, "generate", None)):
            raise ValueError("target is None, so the target is generated, but the provider has no generate() method: "
                             "give the target as a string or a tensor of token ids")
        text = self.provider.generate(self._prompt_text(inp.to_model_input()), **dict(gen_args or DEFAULT_GEN_ARGS))
        return torch.tensor(self.tokenizer.encode(text, add_special_tokens=False), dtype=torch.long)

    def _forward(self, inp, target_tokens: torch.Tensor, inspect: Callable | None) -> Callable:
        """(k, n) rows of 0/1 -> (k, 1 + T) or (k,): one provider request per row."""
        target_str = self.tokenizer.decode(target_tokens)
        n_tokens = len(target_tokens)

        def one(bits: torch.Tensor) -> torch.Tensor:
            prompt = self._prompt_text(inp.to_model_input(bits))
            got = self.provider.get_logprobs(input_prompt=prompt, target_str=target_str, tokenizer=self.tokenizer)
            if len(got) != n_tokens:
                raise ValueError(f"the provider returned {len(got)} log-probabilities for a target of {n_tokens} tokens")
            per_token = torch.as_tensor([float(v) for v in got], dtype=torch.float)
            values = torch.cat([per_token.sum(0, keepdim=True), per_token])
            if inspect is not None:
                inspect(prompt, target_str, values.exp().tolist())
            values = values.exp() if self.attr_target == "prob" else values
            return values if self.include_per_token_attr else values[0]

        def forward(bits: torch.Tensor) -> torch.Tensor:
            return torch.stack([one(bits[r : r + 1]) for r in range(bits.shape[0])]).to(self.device)

        return forward


class VLLMProvider(RemoteLLMProvider):
    """``VLLMProvider(api_url, model_name=None, *, client=None)``: a vLLM server's completions
    endpoint. ``model_name`` None takes the server's first model. Log-probabilities come from
    one request per prompt with the target appended (``prompt_logprobs``), read from the last
    as many prompt positions as ``tokenizer`` gives the target tokens."""

    def __init__(self, api_url: str, model_name: str | None = None, *, client=None) -> None:
        if not isinstance(api_url, str) or not api_url.strip():
            raise ValueError("api_url is required (the server's OpenAI-compatible base URL, e.g. http://host:8000/v1)")
        self.api_url = api_url
        if client is None:
            try:
                from openai import OpenAI
            except ImportError as err:
                raise ImportError("VLLMProvider needs the 'openai' package (pip install openai), "
                                  "or an OpenAI-compatible client passed as client=") from err
            client = OpenAI(base_url=api_url, api_key=os.getenv("OPENAI_API_KEY", "EMPTY"))
        self.client = client
        if model_name is None:
            models = list(client.models.list().data)
            if not models:
                raise ValueError(f"the server at {api_url} lists no models")
            model_name = models[0].id
        self.model_name = model_name

    def generate(self, prompt: str, **gen_args: Any) -> str:
        args = dict(gen_args)
        args.setdefault("max_tokens", args.pop("max_new_tokens", 25))
        args.pop("max_new_tokens", None)
        args.pop("do_sample", None)  # not an OpenAI argument (sampling follows temperature)
        response = self.client.completions.create(model=self.model_name, prompt=prompt, **args)
        if not getattr(response, "choices", None):
            raise KeyError("the server's response has no 'choices'")
        return response.choices[0].text

    def get_logprobs(self, input_prompt: str, target_str: str, tokenizer=None) -> list[float]:
        if tokenizer is None:
            raise ValueError("VLLMProvider.get_logprobs needs the tokenizer (to count the target's tokens)")
        if not target_str:
            raise ValueError("the target string is empty")
        n = len(tokenizer.encode(target_str, add_special_tokens=False))
        response = self.client.completions.create(
            model=self.model_name, prompt=input_prompt + target_str, temperature=0.0, max_tokens=1,
            extra_body={"prompt_logprobs": 0},
        )  # fmt: skip
        if not getattr(response, "choices", None):
            raise KeyError("the server's response has no 'choices'")
        positions = getattr(response.choices[0], "prompt_logprobs", None)
        if not positions:
            raise KeyError("the server's response has no 'prompt_logprobs' (is it a vLLM server?)")
        out = []
        for entry in positions[-n:]:
            if not entry or len(entry) != 1:
                raise ValueError(f"expected one token's log-probability at each target position, got {entry!r}")
            out.append(float(next(iter(entry.values()))["logprob"]))
        if len(out) != n:
            raise ValueError(f"the server returned {len(out)} target log-probabilities, expected {n}")
        return out
