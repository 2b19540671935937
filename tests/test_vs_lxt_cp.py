"""CP-LRP against LXT 2.1's ``cp_LRP`` patches (the authors' library), run live; every test skips
where lxt is not installed (CI).

CP-LRP (Ali et al. 2022) is LRP with the attention weights held constant: no relevance through
the softmax, the values take all of it. xattr: ``attn_lrp_rules(eps, hold_attention=True)``. LXT
ships a ``cp_LRP`` patch map beside ``attnLRP`` in ``lxt.efficient.models.{llama, qwen2, qwen3,
gemma3, gpt2}`` (chosen by passing it to ``monkey_patch``; the default map is ``attnLRP``) and, for
torchvision's ViT, only ``cp_LRP``. What it does, and what xattr gives:

- attention (``patch_cp_attention``): the query and key detached at the attention function's
  entry, eager and every function of transformers' registry (SDPA among them). xattr's held
  softmax (`Block`) and `FixedAttention` give the same numbers, to the last bit on Llama.
- gated MLPs (``cp_gated_mlp_forward``: Llama, Qwen 2 and 3, Gemma 3): the gate ``act(gate_proj(x))``
  detached, so ``up_proj`` takes the whole product's relevance and the gate none (signal-take-all,
  as at the attention weights). xattr's ``hold_attention=True`` leaves the MLP as in AttnLRP:
  the uniform rule at ``gate * up``, half to each, the gate's half through SiLU (`Pass`) to
  ``gate_proj``. That is the one difference on Llama: 5% of the largest relevance here; with the
  gate held (``FixedGate(gate=0)`` keyed by ``LlamaMLP``) the two are equal to the last bit, and LXT
  with its AttnLRP MLP put back under its CP attention equals ``hold_attention=True`` to the last
  bit (with LXT's ``x + 1e-10`` at SiLU, `LxtPass`). `FixedGate` holds a factor that broadcasts
  or one its op marks as a gate by itself; ``gate=0`` names the first factor of the MLP's product.
  Qwen 2, Qwen 3 and Gemma 3 the same (random float64 models): bit for bit with the gate held.
- GPT-2's ``cp_LRP`` differs from its ``attnLRP`` in the attention alone: equal to rounding.
- torchvision's ViT: equal at the pixels in tests/test_vs_lxt_vit.py; here, bias-free, at the
  encoder's input, where CP-LRP conserves and AttnLRP does not.
- ``patch_cp_attention`` writes into transformers' attention registry (one object shared by every
  model in the process: under transformers 5 its ``_local_mapping``) where the AttnLRP patch
  replaces the module's attribute, so `lxt_patched` leaves it wrapped (every model keeps CP
  attention, and LXT's AttnLRP patch then refuses to apply); `lxt_cp_patched` puts it back.

Both CP-LRP variants conserve relevance on the bias-free Llama (to float32 rounding: its RMS norm
computes in float32), where AttnLRP's softmax rule does not.
"""

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from xattr import rule as xr

pytest.importorskip("lxt")
from benchmarks.lxt_workloads import lxt_patched, lxt_rules, tiny_llama  # noqa: E402
from benchmarks.lxt_vit_workloads import lxt_vit_rules, tiny_vit, vit_patches  # noqa: E402
from test_vs_lxt import _gpt2, _ids  # noqa: E402

D = torch.float64
TOKEN = 3


@contextlib.contextmanager
def lxt_cp_patched(modeling, patch_map):
    """`lxt_patched` for a ``cp_LRP`` map: also puts the shared attention registry back (where
    ``patch_cp_attention``'s item assignments land: the ``_local_mapping`` of transformers 5's
    ``AttentionInterface``, or the plain dict itself under transformers 4)."""
    store = getattr(modeling.ALL_ATTENTION_FUNCTIONS, "_local_mapping", modeling.ALL_ATTENTION_FUNCTIONS)
    saved = dict(store)
    try:
        with lxt_patched(modeling, patch_map):
            yield
    finally:
        store.clear()
        store.update(saved)


def lxt_maps(name):
    """(modeling module, LXT's ``attnLRP`` map, its ``cp_LRP`` map) for ``lxt.efficient.models.<name>``."""
    import importlib

    patches = importlib.import_module(f"lxt.efficient.models.{name}")
    return getattr(patches, f"modeling_{name}"), patches.attnLRP, patches.cp_LRP


def lxt_grad_x_input(model, patch, embeds, target, **kwargs):
    """``embeds * grad`` of ``target(model(inputs_embeds=embeds))`` under ``patch`` (a context)."""
    e = embeds.detach().clone().requires_grad_(True)
    with patch:
        (grad,) = torch.autograd.grad(target(model(inputs_embeds=e, **kwargs)).sum(), e)
    return (e * grad).detach()


def gap(ours, theirs) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def padded_batch():
    """Two sequences of 7 token ids, the second right-padded after 5; its mask and last real positions."""
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask, mask.sum(1) - 1


def llama_case(attn):
    """(model, ids, mask, LXT's target on the output, xattr's split at the embeddings)."""
    model = tiny_llama(attn=attn)
    ids, mask, last = padded_batch()
    rows = torch.arange(len(ids))

    def f(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits[rows, last, TOKEN]

    return model, ids, mask, (lambda out: out.logits[rows, last, TOKEN]), xattr.at_layer(f, model.model.embed_tokens)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_llama_cp_lrp_equals_lxt_once_the_gate_is_held(lxt_transformers, attn):
    """LXT's Llama ``cp_LRP`` (a right-padded batch, each example's last real token, relevance at the
    embedding layer): ``hold_attention=True`` with the MLP's gate held is LXT's numbers to the last
    bit; without it they differ by the gate (4.9e-2 of the largest relevance, measured); the
    padding takes none in both. Neither is AttnLRP (LXT's and xattr's: 0.13 away) nor the input
    times the gradient (0.49), so the comparison says something."""
    modeling, attn_map, cp_map = lxt_maps("llama")
    model, ids, mask, target, split = llama_case(attn)
    e = model.model.embed_tokens(ids).detach()
    theirs = lxt_grad_x_input(model, lxt_cp_patched(modeling, cp_map), e, target, attention_mask=mask)
    held = xr.attn_lrp_rules(0.0, hold_attention=True)
    ours = xattr.layer_lrp(split, composite={**held, modeling.LlamaMLP: xr.FixedGate(gate=0)})(ids, mask)
    assert torch.equal(ours, theirs)
    assert not theirs[1, 5:].any() and theirs[1, :5].abs().sum(-1).min() > 0
    assert 2e-2 < gap(xattr.layer_lrp(split, composite=held)(ids, mask), theirs) < 0.1
    their_attn_lrp = lxt_grad_x_input(model, lxt_patched(modeling, attn_map), e, target, attention_mask=mask)
    assert gap(their_attn_lrp, theirs) > 5e-2
    assert gap(xattr.layer_lrp(split, composite=xr.attn_lrp_rules(0.0))(ids, mask), theirs) > 5e-2
    plain = lxt_grad_x_input(model, contextlib.nullcontext(), e, target, attention_mask=mask)
    assert gap(plain, theirs) > 5e-2


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_llama_the_gate_is_the_only_difference(lxt_transformers, attn):
    """LXT's ``cp_LRP`` map with its ``attnLRP`` MLP patch put back (identity rule at SiLU, the
    product's gradient halved) is ``hold_attention=True`` exactly, with LXT's stabiliser at SiLU
    (`LxtPass`); with xattr's `Pass` the two differ by that stabiliser alone (measured 9e-9 eager,
    7.5e-9 SDPA)."""
    modeling, attn_map, cp_map = lxt_maps("llama")
    model, ids, mask, target, split = llama_case(attn)
    mixed = {**cp_map, modeling.LlamaMLP: attn_map[modeling.LlamaMLP]}
    theirs = lxt_grad_x_input(model, lxt_cp_patched(modeling, mixed), model.model.embed_tokens(ids), target,
                              attention_mask=mask)  # fmt: skip
    ours = xattr.layer_lrp(split, composite=lxt_rules(hold_attention=True))(ids, mask)
    assert torch.equal(ours, theirs)
    plain = xattr.layer_lrp(split, composite=xr.attn_lrp_rules(0.0, hold_attention=True))(ids, mask)
    assert 1e-12 < gap(plain, theirs) < 1e-7


GATED = {  # LXT's module: (config, model, MLP class) in transformers; the gap without the gate held, measured
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "Qwen2MLP", 6.5e-2),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", "Qwen3MLP", 3.2e-2),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", "Gemma3MLP", 0.39),
}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", sorted(GATED))
def test_other_gated_models_equal_lxt_once_the_gate_is_held(lxt_transformers, name, attn):
    """LXT's other ``cp_LRP`` maps (random float64 models of 2 layers, width 32; Qwen 2 has
    biases at q, k, v; Qwen 3 RMS norms on q and k; Gemma 3 a tanh GELU gate, a sliding window and
    a scaled embedding): the same as on Llama, bit for bit with the gate held, and apart by the
    gate alone without it (measured 3.2e-2 to 0.39 of the largest relevance)."""
    config, cls, mlp, measured = GATED[name]
    torch.manual_seed(0)
    options = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=128, attn_implementation=attn)  # fmt: skip
    if name == "gemma3":
        options.update(head_dim=8, sliding_window=4)
    model = getattr(lxt_transformers, cls)(getattr(lxt_transformers, config)(**options)).to(D).eval()
    modeling, _, cp_map = lxt_maps(name)
    ids, embed = _ids(), model.get_input_embeddings()
    theirs = lxt_grad_x_input(model, lxt_cp_patched(modeling, cp_map), embed(ids), lambda out: out.logits[:, -1, TOKEN])
    split = xattr.at_layer(lambda ids: model(input_ids=ids).logits[:, -1, TOKEN], embed)
    held = xr.attn_lrp_rules(0.0, hold_attention=True)
    assert torch.equal(xattr.layer_lrp(split, composite={**held, getattr(modeling, mlp): xr.FixedGate(gate=0)})(ids), theirs)
    assert measured / 2 < gap(xattr.layer_lrp(split, composite=held)(ids), theirs) < 2 * measured


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_gpt2_cp_lrp_equals_lxt(lxt_transformers, attn):
    """GPT-2 (no gated MLP): LXT's ``cp_LRP`` is ``hold_attention=True`` with LXT's stabiliser at
    GELU, to rounding (erf GELU; measured 1e-16 - 3e-16 of the largest relevance), and with
    ``gelu_new`` (written out, its gate held by xattr) to LXT's ``x + 1e-10`` (measured 7.5e-9).
    AttnLRP is 2.5e-2 away."""
    modeling, _, cp_map = lxt_maps("gpt2")
    for activation in ("gelu", "gelu_new"):
        model = _gpt2(lxt_transformers, activation, attn)
        e = model.transformer.wte(_ids()).detach()
        theirs = lxt_grad_x_input(model, lxt_cp_patched(modeling, cp_map), e, lambda out: out.logits[:, -1, TOKEN])

        def f(e):
            return model(inputs_embeds=e).logits[:, -1, TOKEN]

        held = gap(xattr.lrp(f, composite=lxt_rules(hold_attention=True))(e), theirs)
        if activation == "gelu":
            assert held < 1e-13
            assert gap(xattr.lrp(f, composite=lxt_rules())(e), theirs) > 1e-2
        else:
            assert 1e-12 < held < 1e-7


def conservation(model, ids):
    """(f, sum of xattr's relevance under hold_attention=True, the same with the gate held, under
    AttnLRP, LXT's under cp_LRP), at the embeddings of the unpadded batch, each example's last token."""
    modeling, _, cp_map = lxt_maps("llama")

    def f(ids):
        return model(input_ids=ids).logits[:, -1, TOKEN]

    split = xattr.at_layer(f, model.model.embed_tokens)
    held = xr.attn_lrp_rules(0.0, hold_attention=True)
    sums = [xattr.layer_lrp(split, composite=c)(ids).sum((1, 2))
            for c in (held, {**held, modeling.LlamaMLP: xr.FixedGate(gate=0)}, xr.attn_lrp_rules(0.0))]  # fmt: skip
    theirs = lxt_grad_x_input(model, lxt_cp_patched(modeling, cp_map), model.model.embed_tokens(ids),
                              lambda out: out.logits[:, -1, TOKEN])  # fmt: skip
    with torch.no_grad():
        fx = f(ids)
    return fx, *sums, theirs.sum((1, 2))


@pytest.fixture(scope="module")
def bias_free_llama(lxt_transformers):
    model = tiny_llama()
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]  # Llama: no biases anywhere
    return model


def test_cp_lrp_conserves_where_attn_lrp_does_not(bias_free_llama):
    """Bias-free, eps 0: CP-LRP (both variants, and LXT's) hands the embeddings ``f(x)`` to float32
    rounding (the RMS norm computes in float32 in transformers; measured at most 2e-6 of f);
    AttnLRP's softmax rule loses a large part of it (measured -10% and +290% of f on these two
    examples)."""
    fx, held, gate, attn_lrp, lxt = conservation(bias_free_llama, _ids())
    for sums in (held, gate, lxt):
        torch.testing.assert_close(sums, fx, rtol=1e-5, atol=0)
    assert float(((attn_lrp - fx) / fx).abs().max()) > 1.0
    assert float(((attn_lrp - fx) / fx).abs().min()) > 1e-2
    torch.testing.assert_close(gate, lxt, rtol=0, atol=0)


@settings(max_examples=4, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), length=st.integers(2, 9))
def test_cp_lrp_conserves_on_random_tokens(bias_free_llama, seed, length):
    """The same on random token sequences: ``sum(R) = f(x)`` to float32 rounding for both CP
    variants and LXT's, and xattr with the gate held equals LXT bit for bit."""
    ids = torch.randint(0, 50, (2, length), generator=torch.Generator().manual_seed(seed))
    fx, held, gate, _, lxt = conservation(bias_free_llama, ids)
    scale = float(fx.abs().max())
    for sums in (held, gate, lxt):
        torch.testing.assert_close(sums, fx, rtol=1e-5, atol=1e-6 * scale)
    assert torch.equal(gate, lxt)


def test_vit_cp_lrp_conserves_at_the_encoder_input():
    """torchvision's ViT with every bias zeroed (LXT's only ViT map is ``cp_LRP``; tests/test_vs_lxt_vit.py
    compares it at the pixels). At the encoder's input (the tokens after the class token and the
    position embedding, the last place anything is added; LXT's by a hook that keeps its
    gradient): LXT and ``lxt_vit_rules()`` equal to rounding (measured 4.6e-16 of the largest
    relevance); ``sum(R) = f(x)`` for ``hold_attention=True`` to rounding (7e-16 of f), for LXT
    and `LxtPass` to LXT's ``x + 1e-10`` at GELU (1e-10 of f); AttnLRP (xattr's: LXT ships none
    for this model) misses by 3% and 11% of f."""
    if vit_patches() is None:
        pytest.skip("torchvision (or transformers, which LXT's import needs) is not installed")
    model = tiny_vit()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    x = torch.randn(2, 3, 32, 32, dtype=D, generator=torch.Generator().manual_seed(1))
    classes = torch.tensor([3, 7])
    kept = []

    def keep(module, inputs, out):
        out.retain_grad()
        kept.append(out)

    handle = model.encoder.dropout.register_forward_hook(keep)
    try:
        with lxt_patched(*vit_patches()):
            model(x).gather(1, classes[:, None]).sum().backward()
    finally:
        handle.remove()
    theirs = (kept[0] * kept[0].grad).detach()
    split = xattr.at_layer(xattr.target(model, classes), model.encoder.dropout)
    with torch.no_grad():
        fx = split.head(split.act(x), x)
    assert gap(xattr.layer_lrp(split, composite=lxt_vit_rules())(x), theirs) < 1e-13
    torch.testing.assert_close(theirs.sum((1, 2)), fx, rtol=1e-9, atol=0)
    _, held = xattr.layer_lrp(split, composite=xr.attn_lrp_rules(0.0, hold_attention=True), return_delta=True)(x)
    assert float((held / fx).abs().max()) < 1e-13
    _, attn_lrp = xattr.layer_lrp(split, composite=xr.attn_lrp_rules(0.0), return_delta=True)(x)
    assert float((attn_lrp / fx).abs().min()) > 1e-2


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``, bias-free, read at one output: Llama's MLP in miniature."""

    def __init__(self, d, hidden, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.gate_proj, self.up_proj = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, 1, bias=False)
        self.to(D).eval()

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))[:, 0]


def swiglu_reference(mlp, x):
    """Relevance values by hand, one example, explicit loops: LRP-0 at ``down``; at the product
    either all of each unit's relevance to ``up`` (the gate held), or half to ``up`` and half through
    SiLU (identity rule) to ``gate`` (the uniform rule); LRP-0 at ``up`` and ``gate``. Returns
    (held, shared, f)."""
    Wg, Wu, Wd = (m.weight.detach().tolist() for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    X = x.tolist()
    d, h = len(X), len(Wu)
    u = [sum(Wu[j][i] * X[i] for i in range(d)) for j in range(h)]
    a = [sum(Wg[j][i] * X[i] for i in range(d)) for j in range(h)]
    gate = [v / (1.0 + math.exp(-v)) for v in a]
    z = [gate[j] * u[j] for j in range(h)]
    f = sum(Wd[0][j] * z[j] for j in range(h))
    R_z = [z[j] * Wd[0][j] / f * f for j in range(h)]
    held = [sum(X[i] * Wu[j][i] / u[j] * R_z[j] for j in range(h)) for i in range(d)]
    via_gate = [sum(X[i] * Wg[j][i] / a[j] * R_z[j] / 2 for j in range(h)) for i in range(d)]
    shared = [held[i] / 2 + via_gate[i] for i in range(d)]
    return torch.tensor(held, dtype=D), torch.tensor(shared, dtype=D), f


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), d=st.integers(1, 5), hidden=st.integers(1, 6))
def test_held_gate_matches_the_rule_by_hand(seed, d, hidden):
    """``FixedGate(gate=0)`` keyed by the MLP class gives the hand-computed relevance with the gate held, and
    ``hold_attention=True`` alone the uniform rule's; both conserve ``f(x)`` (bias-free, LRP-0)."""
    mlp = SwiGLU(d, hidden, seed)
    x = torch.randn(3, d, dtype=D, generator=torch.Generator().manual_seed(seed + 1))
    held_rules = xr.attn_lrp_rules(0.0, hold_attention=True)
    held = xattr.lrp(mlp, composite={**held_rules, SwiGLU: xr.FixedGate(gate=0)})(x)
    shared = xattr.lrp(mlp, composite=held_rules)(x)
    for row in range(len(x)):
        ref_held, ref_shared, f = swiglu_reference(mlp, x[row])
        scale = max(1.0, float(ref_held.abs().max()), float(ref_shared.abs().max()))
        torch.testing.assert_close(held[row], ref_held, rtol=1e-9, atol=1e-12 * scale)
        torch.testing.assert_close(shared[row], ref_shared, rtol=1e-9, atol=1e-12 * scale)
        for r in (held[row], shared[row]):
            torch.testing.assert_close(r.sum().item(), f, rtol=1e-9, atol=1e-12 * scale)


def test_lxt_cp_patch_writes_the_shared_registry_and_is_undone(lxt_transformers):
    """``patch_cp_attention`` wraps the functions of the attention registry in place: the registry
    GPT-2's module sees changes too (one object for every model). `lxt_cp_patched` restores it,
    the classes get their attributes back, and LXT's AttnLRP patch (which refuses functions it
    finds already wrapped) still applies afterwards."""
    llama, attn_map, cp_map = lxt_maps("llama")
    gpt2 = lxt_maps("gpt2")[0]
    registry = llama.ALL_ATTENTION_FUNCTIONS
    assert gpt2.ALL_ATTENTION_FUNCTIONS is registry
    watched = [llama.LlamaMLP, llama.LlamaRMSNorm, torch.nn.Dropout, llama]
    before_attrs = [dict(vars(t)) for t in watched]
    before = dict(registry.items())
    with lxt_cp_patched(llama, cp_map):
        inside = dict(gpt2.ALL_ATTENTION_FUNCTIONS.items())
        assert inside.keys() == before.keys() and all(inside[k] is not before[k] for k in before)
        assert all(dict(vars(t)) != b for t, b in zip(watched, before_attrs))
    assert llama.ALL_ATTENTION_FUNCTIONS is registry
    assert {k: v for k, v in registry.items()} == before
    for t, b in zip(watched, before_attrs):
        a = dict(vars(t))
        assert a.keys() == b.keys() and all(a[k] is b[k] for k in b), t
    with lxt_patched(llama, attn_map):  # raises if LXT finds the registry already wrapped
        pass
