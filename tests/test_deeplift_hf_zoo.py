"""DeepLift's summation-to-delta across Hugging Face transformer architectures (tests/hf_zoo.py:
tiny random configurations, float64, a padded batch of 2 with its attention mask as f's second
argument, layer DeepLift at the word embeddings against a reference of token 1; image models by
`deep_lift` on the pixels). docs/rules.md, "DeepLift on Hugging Face architectures", has the numbers.

With `exact_deep_lift_rules` the delta is float64 rounding (below 1e-12 of |f(x) - f(b)|) for every
architecture but those in `GAPS`, once the model computes in float64 throughout: Hugging Face's RMS
norms, eager softmax (``dtype=torch.float32``) and some attention scores cast to float32 whatever
the model's dtype, and as they are the delta is float32's rounding (below 1e-6). The defaults keep
the gradient at attention and norms and are off by 1e-3 to 30 times the change.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xattr

hf_zoo = pytest.importorskip("hf_zoo")
if hf_zoo.transformers is None:
    pytest.skip("needs transformers", allow_module_level=True)
pytestmark = pytest.mark.filterwarnings("ignore")

EXACT = xattr.rule.exact_deep_lift_rules()

# |delta| / |f(x) - f(b)| with the exact mapping, float64 throughout, and where it goes (docs/rules.md)
GAPS = {
    "bloom": 3.4e-3,  # its GELU is a torch.autograd.Function (a backward of its own the rules never see)
}
# before the rows merged with another dim were paired (NOTE: [Rows merged with another dim]), and
# baddbmm written out: OPT 3.1 (its MLP on (B * L, D)), Swin 2.7e-3 (windows in the rows), Qwen2-MoE
# 0.63, BLOOM with its GELU a module 9.5e-5 (heads in the rows, (B * H, L, d), and baddbmm); before their
# experts ran densely (NOTE: [Experts dispatched densely] in deeplift_moe.py), Mixtral 0.16 and Qwen2-MoE 0.32
MERGED = ("opt", "swin")
# the architectures that cast to float32 inside (as they are: float32's rounding)
CASTS = {"gpt_neo", "gpt_neox:eager", "phi:eager", "t5_encoder", "llama", "mistral", "qwen2", "gemma", "phi3",
         "vit:eager", "deit:eager", "mixtral:eager", "qwen2_moe"}  # Mixtral with SDPA: 1.2e-6


def _name(key):
    return key.split(":")[0]


def _casts(key):
    return key in CASTS or _name(key) in CASTS


def _relative_delta(case, mapping=EXACT, f=None):
    """|delta| / |f(x) - f(b)| per example, and the attributions."""
    return hf_zoo.deep_lift_gap(case, mapping, f or case.f, 1e-5)


CONSERVING = [k for k in hf_zoo.ZOO if _name(k) not in GAPS]


@pytest.mark.parametrize("key", CONSERVING)
def test_exact_mapping_conserves(key):
    """Exact to float64 rounding, with the model in float64 throughout; as it is, to float32's
    rounding where it casts to float32 (and to float64's where it does not)."""
    case = hf_zoo.ZOO[key]()
    assert _relative_delta(case, f=hf_zoo.in_float64(case.f))[0] < 1e-12
    if _casts(key):
        assert _relative_delta(case)[0] < 1e-6


@pytest.mark.parametrize("key", ["bert:eager", "gpt2:sdpa", "llama:sdpa", "falcon:eager", "vit:sdpa"])
def test_defaults_are_off(key):
    """The defaults keep the gradient at attention and norms: far from conserving."""
    case = hf_zoo.ZOO[key]()
    assert _relative_delta(case, mapping=None, f=hf_zoo.in_float64(case.f))[0] > 1e-3


@pytest.mark.parametrize("name", ["bert", "llama", "vit"])
def test_eager_and_sdpa_agree(name):
    """Two spellings of one function: equal attributions (float64 throughout)."""
    attrs = []
    for attn in ("eager", "sdpa"):
        case = hf_zoo.ZOO[f"{name}:{attn}"]()
        attrs.append(_relative_delta(case, f=hf_zoo.in_float64(case.f))[1])
    assert torch.allclose(attrs[0], attrs[1], rtol=0, atol=1e-10 * attrs[0].abs().max())


@pytest.mark.parametrize("key", ["gpt2:eager", "mistral:sdpa", "t5_encoder:eager"])
def test_padded_example_alone_gets_its_row(key):
    """The padded example alone (its mask a second argument) gets its attributions in the batch."""
    case = hf_zoo.ZOO[key]()
    f = hf_zoo.in_float64(case.f)
    ids, mask, ref = case.inputs()
    split = xattr.at_layer(f, case.embedding)
    both = xattr.layer_deep_lift(split, baselines=ref, mapping=EXACT)(ids, mask)
    alone = xattr.layer_deep_lift(split, baselines=ref[1:], mapping=EXACT)(ids[1:], mask[1:])
    assert torch.allclose(alone, both[1:], rtol=0, atol=1e-12 * both.abs().max())


@pytest.mark.parametrize("key", [k for k in hf_zoo.ZOO if _name(k) in GAPS])
def test_documented_gaps(key):
    """Where the op is an autograd.Function, it keeps its gradient and the delta shows it
    (docs/rules.md, `GAPS`)."""
    case = hf_zoo.ZOO[key]()
    measured = _relative_delta(case, f=hf_zoo.in_float64(case.f))[0]
    assert GAPS[_name(key)] / 3 < measured < GAPS[_name(key)] * 3


def test_bloom_with_its_gelu_as_a_module():
    """BLOOM's ``GeLUFunction`` swapped for ``nn.GELU(approximate="tanh")`` (the same function to
    rounding) conserves: its attention's ``baddbmm`` (written out) and ``bmm`` on the heads merged
    into the rows, ``(B * H, L, d)``, pair their rows (9.5e-5 before, when they kept their gradient)."""
    case = hf_zoo.ZOO["bloom:eager"]()
    for block in case.model.h:
        block.mlp.gelu_impl = nn.GELU(approximate="tanh")
    assert _relative_delta(case, f=hf_zoo.in_float64(case.f))[0] < 1e-12


def test_merged_rows_run_unshared():
    """Swin merges its windows into the rows; against one shared reference row the call stops at
    the first merged op and runs again with 2B rows (NOTE: [Rows merged with another dim]): the
    numbers of a call that never shares (a per-example argument beside the input)."""
    case = hf_zoo.ZOO["swin:eager"]()
    f = hf_zoo.in_float64(case.f)
    x, ref = case.inputs()
    shared = xattr.deep_lift(f, baselines=ref, mapping=EXACT)(x)
    apart = xattr.deep_lift(lambda t, unused: f(t), baselines=ref, mapping=EXACT)(x, torch.zeros(x.shape[0]))
    assert torch.allclose(shared, apart, rtol=0, atol=1e-12 * apart.abs().max())
