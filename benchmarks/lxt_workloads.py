"""AttnLRP against LXT 2.1, the authors' library (Achtibat et al. 2024), on a random Llama.

LXT is BSD-licensed; it is installed and run, never copied. Its efficient mode patches a
transformers model's classes (``monkey_patch``) so that the ordinary gradient times the input is
AttnLRP: the gradients of q and k are divided by 4 and that of v by 2 at the attention function's
entry (the uniform rule at ``q @ k^T`` and ``weights @ v``), a gated MLP's product by 2, the RMS
norm's ``rsqrt`` detached, activations ``fn(x)`` given the gradient ``fn(x) / (x + 1e-10)``, and
the rest (linear layers, softmax) left their gradient. xattr computes the same with
``xattr.rule.attn_lrp_rules(eps)`` (NOTE: [AttnLRP in gradient form] in xattr/_src/attn_lrp.py).

Two settings make the two compute the same quantity (tests/test_vs_lxt.py):

- ``eps=0``: LXT's linear layers keep their gradient (LRP-0); xattr's default epsilon is 1e-9.
- LXT's identity rule divides by ``x + 1e-10`` (not sign-aware); xattr's `Pass` by x. `LxtPass`
  below is `Pass` with LXT's stabiliser: with it the two are equal to the last bit on a float64
  Llama; with `Pass` they differ by about 1e-9 of the largest relevance.

Running LXT under transformers 5: LXT 2.1 was written for transformers 4.5x. Its package
``lxt.efficient`` imports its BERT patch, a copy of transformers 4's ``modeling_bert`` that fails
to import under transformers 5 (``transformers.modeling_attn_mask_utils`` is gone), so
`import_lxt` loads ``lxt.efficient.core`` and the model patches without it; and its attention
patch replaces ``ALL_ATTENTION_FUNCTIONS`` by a plain dict where transformers 5 calls
``.get_interface``, so `lxt_patched` wraps the dict back (`_Interface`; it looks functions up,
nothing more). ``monkey_patch`` changes classes for the whole process (``torch.nn.Dropout.forward``
among them): `lxt_patched` restores every attribute it changed on leaving.

Vision transformers: `lxt_vit_workloads`.

    python -m benchmarks.lxt_workloads      # time both, print a table
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import types
import warnings

import torch
import torch.nn.functional as F

import xattr
from xattr import rule as xr

from .workloads import SEED, Workload

TOL64 = 1e-12  # float64 agreement with LXT's stabiliser, relative to the largest relevance


class LxtPass(xr.Pass):
    """`Pass` with LXT's stabiliser: ``g_x = g_y * phi(x) / (x + 1e-10)`` (LXT's
    ``identity_rule_implicit``), for conformance checks; xattr's `Pass` divides by x (0 at 0)."""

    def forward(self, op, *tensors):
        y = op.fn(*tensors)
        return y, (y / (tensors[0] + 1e-10),)


def lxt_rules(**options) -> dict:
    """``attn_lrp_rules(0.0)`` with LXT's stabiliser at SiLU and GELU: LXT's efficient AttnLRP."""
    rules = xr.attn_lrp_rules(0.0, **options)
    rules.update({F.silu: LxtPass(), F.gelu: LxtPass()})
    return rules


def import_lxt():
    """``lxt.efficient.core`` (its ``monkey_patch``) with the model patches importable, or None
    when lxt or transformers is missing. Its BERT patch is left out (see the module docstring)."""
    from xattr.testing.text import transformers_module  # noqa: PLC0415

    if transformers_module() is None:
        return None
    try:
        import lxt  # noqa: PLC0415
    except ImportError:
        return None
    if "lxt.efficient.core" not in sys.modules:
        base = os.path.join(os.path.dirname(lxt.__file__), "efficient")
        for name, path in (("lxt.efficient", base), ("lxt.efficient.models", os.path.join(base, "models"))):
            if name not in sys.modules:  # a namespace without the package's __init__ (which imports bert)
                package = types.ModuleType(name)
                package.__path__ = [path]
                sys.modules[name] = package
        sys.modules["lxt.efficient.models"].get_default_map = None  # core imports it; patch maps are passed
    import lxt.efficient.core as core  # noqa: PLC0415

    return core


class _Interface(dict):
    """transformers 5's ``AttentionInterface.get_interface`` on LXT's plain dict of attention functions."""

    def get_interface(self, name, default):
        return default if name == "eager" else self[name]


@contextlib.contextmanager
def lxt_patched(modeling, patch_map):
    """LXT's ``monkey_patch(modeling, patch_map)`` for the duration; every attribute it changed on
    the patched classes and modules is restored on leaving."""
    core = import_lxt()
    saved = {t: dict(vars(t)) for t in patch_map}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            core.monkey_patch(modeling, patch_map)
        failed = [str(w.message) for w in caught if "patch" in str(w.message).lower()]
        if failed:
            raise RuntimeError(f"LXT's monkey_patch failed: {failed}")
        if type(getattr(modeling, "ALL_ATTENTION_FUNCTIONS", None)) is dict:
            modeling.ALL_ATTENTION_FUNCTIONS = _Interface(modeling.ALL_ATTENTION_FUNCTIONS)
        yield
    finally:
        for target, before in saved.items():
            _restore(target, before)


def _restore(target, before: dict) -> None:
    """Puts back the attributes of a class or module as ``dict(vars(target))`` had them: those
    added since are deleted, those changed are set back."""
    now = dict(vars(target))
    for key in now.keys() - before.keys():
        delattr(target, key)
    for key, value in before.items():
        if now.get(key) is not value:
            setattr(target, key, value)


def llama_patches():
    """(modeling_llama, LXT's AttnLRP patch map for it)."""
    import_lxt()
    import lxt.efficient.models.llama as patches  # noqa: PLC0415

    return patches.modeling_llama, patches.attnLRP


def gpt2_patches():
    """(modeling_gpt2, LXT's AttnLRP patch map for it)."""
    import_lxt()
    import lxt.efficient.models.gpt2 as patches  # noqa: PLC0415

    return patches.modeling_gpt2, patches.attnLRP


def lxt_relevance(model, patches, embeds, target, **kwargs) -> torch.Tensor:
    """LXT's relevance at the input embeddings: ``embeds * embeds.grad`` after ``target(out).sum()``
    is backpropagated through the patched model; ``patches`` is ``(modeling, patch_map)``."""
    e = embeds.detach().clone().requires_grad_(True)
    with lxt_patched(*patches):
        target(model(inputs_embeds=e, **kwargs)).sum().backward()
    return (e * e.grad).detach()


def tiny_llama(*, layers: int = 2, hidden: int = 32, heads: int = 4, kv_heads: int = 2, vocab: int = 50,
               attn: str = "eager", seed: int = 0, dtype=torch.float64):
    """A random-weight Llama built from a config (nothing downloaded), eval mode."""
    from xattr.testing.text import transformers_module  # noqa: PLC0415

    tr = transformers_module()
    torch.manual_seed(seed)
    config = tr.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=128,
                            attn_implementation=attn)  # fmt: skip
    return tr.LlamaForCausalLM(config).to(dtype).eval()


def last_logit(model, token: int):
    """f(embeds) = the logit of ``token`` at the last position, one per example."""
    return lambda e: model(inputs_embeds=e).logits[:, -1, token]


def _llama_workload(layers: int = 4, hidden: int = 256, tokens: int = 32) -> Workload:
    name = f"AttnLRP vs LXT (Llama {layers}x{hidden}, {tokens} tokens)"
    model = tiny_llama(layers=layers, hidden=hidden, heads=8, kv_heads=4, vocab=512, seed=SEED, dtype=torch.float32)
    ids = torch.randint(0, 512, (1, tokens), generator=torch.Generator().manual_seed(SEED))
    embeds = model.model.embed_tokens(ids).detach()
    token, patches = 7, llama_patches()
    ours = xattr.lrp(last_logit(model, token), composite=xr.attn_lrp_rules(0.0))

    def floor():  # one plain forward and backward: input times gradient
        e = embeds.clone().requires_grad_(True)
        model(inputs_embeds=e).logits[:, -1, token].sum().backward()
        return e * e.grad

    def agreement():
        m64, e64 = copy.deepcopy(model).double(), embeds.double()
        theirs = lxt_relevance(m64, patches, e64, lambda out: out.logits[:, -1, token])
        same = xattr.lrp(last_logit(m64, token), composite=lxt_rules())(e64)
        plain = xattr.lrp(last_logit(m64, token), composite=xr.attn_lrp_rules(0.0))(e64)
        scale = float(theirs.abs().max())
        d_same, d_plain = float((same - theirs).abs().max()) / scale, float((plain - theirs).abs().max()) / scale
        text = f"float64, max diff / max |R|: {d_same:.1e} with LXT's stabiliser, {d_plain:.1e} with Pass"
        return text, d_same <= TOL64 and d_plain <= 1e-7

    return Workload(name, "other-library", lambda: ours(embeds), lambda: lxt_relevance(model, patches, embeds,
                    lambda out: out.logits[:, -1, token]), {"fwd+bwd": floor}, agreement,
                    "float64 copies; eps=0 and LXT's activation stabiliser in xattr (LxtPass)")  # fmt: skip


def build(device: str = "cpu") -> list[Workload]:
    """The LXT workloads (CPU: Llama, ViT), skipped with a note when lxt or transformers is missing."""
    if import_lxt() is None:
        return [Workload("AttnLRP vs LXT", "other-library", None, None, {}, None, "", skip="lxt is not installed")]
    from .lxt_vit_workloads import build_vit  # noqa: PLC0415 (it imports this module)

    return [_llama_workload(), build_vit()]


def main(argv=None) -> int:
    from .other_libraries import parser, print_table  # noqa: PLC0415

    return print_table(build, parser("lxt_workloads", __doc__).parse_args(argv))


if __name__ == "__main__":
    torch.manual_seed(0)
    raise SystemExit(main())
