"""xattr.llm: a target continuation's log-probabilities from one teacher-forced pass, and the
methods composed with it, against slow references written here (a token-by-token decoding loop,
one model call per ablated token, one gradient run per target token).

Tiny random causal LMs of three architectures (`xattr.testing.llm.tiny_lm`, float64); skipped
without transformers.
"""

import pytest
import torch
from hypothesis import given, settings, strategies as st

import xattr
from xattr.testing.llm import tiny_lm

if tiny_lm() is None:
    pytest.skip("needs transformers (xattr.testing.llm.tiny_lm)", allow_module_level=True)

ARCHS = ["gpt2", "llama", "opt"]
V = 100


def _lm(arch="gpt2"):
    return tiny_lm(arch, dtype=torch.float64)


def _ids(rows, length, seed=0):
    return torch.randint(3, V, (rows, length), generator=torch.Generator().manual_seed(seed))


# float64, but rotary position tables are made in float32 whatever the dtype: agreement ~1e-8
def _decoded_log_probs(lm, ids, target):
    """Generation's view: for each row, feed the prompt and the target tokens before t_k, read the
    last position's distribution, one model call per target token."""
    rows = []
    for row in ids:
        seq, each = row[None], []
        for t in target:
            each.append(torch.log_softmax(lm(seq).logits[0, -1], -1)[t])
            seq = torch.cat([seq, t.view(1, 1)], 1)
        rows.append(torch.stack(each))
    return torch.stack(rows)


@pytest.mark.parametrize("arch", ARCHS)
def test_one_pass_equals_token_by_token_decoding(arch):
    lm = _lm(arch)
    ids, target = _ids(3, 6), torch.tensor([5, 17, 17, 42])
    with torch.no_grad():
        got = xattr.llm.target_log_probs(lm, target)(ids)
        want = _decoded_log_probs(lm, ids, target)
    assert got.shape == (3, 5)
    torch.testing.assert_close(got[:, 1:], want, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(got[:, 0], want.sum(1), rtol=1e-7, atol=1e-7)


@settings(max_examples=15, deadline=None)
@given(length=st.integers(1, 7), n_target=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_one_pass_equals_decoding_property(length, n_target, seed):
    lm = _lm("llama")
    ids = _ids(2, length, seed)
    target = torch.randint(0, V, (n_target,), generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        got = xattr.llm.target_log_probs(lm, target, total=False)(ids)
        want = _decoded_log_probs(lm, ids, target)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)


def test_prob_total_and_mask_options():
    lm, ids, target = _lm(), _ids(2, 5), torch.tensor([[7, 8, 9]])  # a (1, T) target is read as (T,)
    with torch.no_grad():
        logp = xattr.llm.target_log_probs(lm, target)(ids)
        p = xattr.llm.target_log_probs(lm, target, prob=True)(ids)
        each = xattr.llm.target_log_probs(lm, target, total=False)(ids)
        masked = xattr.llm.target_log_probs(lm, target)(ids, torch.ones_like(ids))
    torch.testing.assert_close(p, logp.exp())
    torch.testing.assert_close(p[:, 0], p[:, 1:].prod(1))
    torch.testing.assert_close(each, logp[:, 1:])
    torch.testing.assert_close(masked, logp)


def test_output_layer_runs_on_the_target_positions_only():
    """Hugging Face causal LMs take ``logits_to_keep``: the output layer runs on the last T + 1
    positions, not the prompt's; a model without it (a plain callable) returns every position's
    logits, and both read the same numbers."""
    lm, ids, target = _lm("llama"), _ids(2, 9), torch.tensor([7, 8, 9])
    shapes = []
    hook = lm.lm_head.register_forward_hook(lambda m, a, o: shapes.append(tuple(o.shape)))
    try:
        with torch.no_grad():
            kept = xattr.llm.target_log_probs(lm, target)(ids)
            full = xattr.llm.target_log_probs(lambda x: lm(x), target)(ids)
    finally:
        hook.remove()
    assert shapes == [(2, 4, V), (2, 12, V)]
    torch.testing.assert_close(kept, full)
    with pytest.raises(ValueError, match="last 4"):
        xattr.llm.target_log_probs(lambda x: lm(x).logits[:, -2:], target)(ids)


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_prompts_read_what_they_read_alone(arch):
    """Prompts of lengths 6, 4 and 2 left-padded into one batch with a mask: each row equals the
    prompt run alone (position ids from the mask). SDPA attention: transformers' eager
    attention gives NaN for padded rows in float64 (Llama, OPT), with or without xattr."""
    lm, target = tiny_lm(arch, dtype=torch.float64, attn_implementation="sdpa"), torch.tensor([9, 10, 11])
    prompts = [_ids(1, n, seed=n)[0] for n in (6, 4, 2)]
    ids = torch.zeros(3, 6, dtype=torch.long)
    mask = torch.zeros(3, 6, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, 6 - len(p):], mask[r, 6 - len(p):] = p, 1
    f = xattr.llm.target_log_probs(lm, target)
    with torch.no_grad():
        got = f(ids, mask)
        alone = torch.cat([f(p[None]) for p in prompts])
    torch.testing.assert_close(got, alone, rtol=1e-7, atol=1e-7)


def test_feature_ablation_of_every_target_token_equals_one_call_per_token():
    lm, ids, target = _lm(), _ids(2, 6), torch.tensor([11, 12, 13])
    f = xattr.llm.target_log_probs(lm, target)
    got = xattr.feature_ablation(xattr.target(f, xattr.outputs()), baselines=0)(ids)  # (B, 1 + T, L)
    with torch.no_grad():
        full = f(ids)
        want = torch.stack([full - f(ids.index_fill(1, torch.tensor([i]), 0)) for i in range(6)], -1)
    assert got.shape == (2, 4, 6)
    torch.testing.assert_close(got, want)


def test_free_tokens_attributes_only_free_positions():
    lm, target = _lm(), torch.tensor([4, 5])
    ids = torch.tensor([[1, 20, 21, 22, 2, 23]])  # 1 and 2 play BOS/SEP: skipped
    free = xattr.llm.free_positions(ids, skip=[1, 2])
    assert free.tolist() == [1, 2, 3, 5]
    seen = []
    f = xattr.llm.target_log_probs(lm, target)

    def spy(full):
        seen.append(full.clone())
        return f(full)

    g = xattr.target(xattr.llm.free_tokens(spy, ids, free), xattr.outputs())
    got = xattr.feature_ablation(g, baselines=0)(ids[:, free])
    whole = xattr.feature_ablation(xattr.target(f, xattr.outputs()), baselines=0)(ids)
    torch.testing.assert_close(got, whole[..., free])
    two = torch.cat([ids, ids.flip(1)])  # one prompt per example: each keeps its own fixed tokens
    both = xattr.feature_ablation(xattr.target(xattr.llm.free_tokens(f, two, free), xattr.outputs()), baselines=0)
    torch.testing.assert_close(both(two[:, free])[1], xattr.feature_ablation(
        xattr.target(xattr.llm.free_tokens(f, two[1:], free), xattr.outputs()), baselines=0)(two[1:, free])[0])
    inside = xattr.llm.free_tokens(xattr.target(spy, xattr.outputs()), ids, free)  # target inside: the same
    torch.testing.assert_close(xattr.feature_ablation(inside, baselines=0)(ids[:, free]), got)
    rows = torch.cat(seen)
    assert (rows[:, 0] == 1).all() and (rows[:, 4] == 2).all()  # never perturbed
    assert (rows[:, free] == 0).any()


def test_layer_integrated_gradients_all_target_tokens_in_one_pass():
    lm, ids, target = _lm(), _ids(1, 5), torch.tensor([30, 31, 32])
    ref = torch.zeros_like(ids)
    f = xattr.llm.target_log_probs(lm, target)
    emb = lm.get_input_embeddings()
    all_k = xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(f, xattr.outputs()), emb), n_steps=64)
    got = all_k(ids, baselines=ref)  # (1, 1 + T, L + T, D)
    assert got.shape == (1, 4, 8, 32)
    assert got[:, :, 5:].abs().max() == 0  # the target's positions are equal in input and reference
    for k in range(4):  # the slow way: one run per output
        one = xattr.layer_integrated_gradients(xattr.at_layer(xattr.target(f, k), emb), n_steps=64)(ids, baselines=ref)
        torch.testing.assert_close(got[:, k], one)
    with torch.no_grad():
        gap = f(ids) - f(ref)
    torch.testing.assert_close(got.sum((2, 3)), gap, rtol=1e-4, atol=1e-4)  # completeness, every output


def test_generate_matches_hugging_face_and_the_plain_loop():
    lm, ids = _lm(), _ids(1, 4)
    args = dict(max_new_tokens=6, eos_token_id=None, pad_token_id=0)
    hf = xattr.llm.generate(lm, ids, **args)
    plain = xattr.llm.generate(lambda x: lm(x), ids, max_new_tokens=6)
    assert hf.shape == (6,) and torch.equal(hf, plain)
    with torch.no_grad():
        want = lm.generate(input_ids=ids, do_sample=False, **args)[0, 4:]
    assert torch.equal(hf, want)


def test_clear_errors():
    lm = _lm()
    f = xattr.llm.target_log_probs(lm, [3, 4])
    with pytest.raises(ValueError, match="batch, length"):
        f(torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="empty"):
        f(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        xattr.llm.target_log_probs(lm, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        xattr.llm.target_log_probs(lm, [])
    with pytest.raises(TypeError, match="must return logits"):
        xattr.llm.target_log_probs(lambda ids: {"x": 1}, [3])(_ids(1, 2))
    with pytest.raises(ValueError, match="one prompt"):
        xattr.llm.generate(lm, _ids(2, 3))


def test_float_prompt_ids_are_refused_with_the_remedy():
    lm = _lm()
    f = xattr.llm.target_log_probs(lm, torch.tensor([3, 4]))
    ids = _ids(2, 5)
    assert f(ids).shape == (2, 3)
    with pytest.raises(TypeError, match="integer tensor of token ids"):
        f(ids.float())


def test_a_right_padded_batch_is_refused_and_a_left_padded_one_equals_each_prompt_alone():
    """The target follows the last column: right padding predicted t_1 from a pad, silently."""
    lm = _lm("gpt2")  # (HF's eager Llama in float64 gives nan on padded rows: its softmax runs in float32, where the mask is -inf)
    target = torch.tensor([7, 8])
    f = xattr.llm.target_log_probs(lm, target)
    short, long = _ids(1, 3, seed=1), _ids(1, 5, seed=2)
    pad = torch.zeros(1, 2, dtype=long.dtype)
    right = torch.cat([torch.cat([short, pad], 1), long])
    right_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="padded on the right"):
        f(right, right_mask)
    with pytest.raises(ValueError, match="must have the prompt ids' shape"):
        f(right, right_mask[:, :4])
    left = torch.cat([torch.cat([pad, short], 1), long])
    got = f(left, right_mask.flip(1))
    torch.testing.assert_close(got[0], f(short)[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got[1], f(long)[0], atol=1e-6, rtol=1e-6)


def test_free_token_positions_are_checked_when_given():
    ids = _ids(1, 6)
    f = xattr.llm.target_log_probs(_lm(), torch.tensor([3]))
    with pytest.raises(TypeError, match="1-D integer tensor"):
        xattr.llm.free_tokens(f, ids, torch.tensor([1.5, 2.0]))
    with pytest.raises(ValueError, match="distinct"):
        xattr.llm.free_tokens(f, ids, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"lie in \[0, 6\)"):
        xattr.llm.free_tokens(f, ids, torch.tensor([2, 6]))
    with pytest.raises(TypeError, match="skip must be a sequence"):
        xattr.llm.free_positions(ids, None)
    free = xattr.llm.free_positions(ids, [int(ids[0, 0])])
    g = xattr.llm.free_tokens(f, ids, free)
    torch.testing.assert_close(g(ids[:, free]), f(ids))
