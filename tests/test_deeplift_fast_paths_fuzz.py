"""Fuzzing DeepLift's fast paths against the paths they replace: drawn models of linear layers,
layer norms, RMS norms and GELUs, run once with the fast paths on and once with them switched off
(the same two names that tests/test_deeplift_speed_paths.py's ``old_paths`` patches: the code
before them), with the fast paths' own functions wrapped and counted, so that a silent fallback
cannot make a comparison vacuous.

The fast paths: the row-skipping linear (NOTE: [Reference rows take no gradient] in
deeplift_dead_rows.py), the fused layer norm (NOTE: [Written-out steps fused] in
deeplift_fused.py) and GELU's derivative from its backward kernel (`deeplift_rules.derivative`,
switched off here by a derivative that takes GELU's from ``torch.func.jvp``, as before it).
Attributions must agree to 1e-10 of the largest, and both runs must sum to delta where the model
keeps its rows apart (a model that mixes rows breaks DeepLift's pairing, so there only the two
runs are compared).

NOTE: [What the fuzz found]
No drawn case in which the fast paths and the old ones differ beyond rounding: in runs of the
"thorough" profile (2,400 cases each) the largest difference was 2.6e-14 of the largest
attribution (the fused layer norm; the linears 5.9e-15, bit for bit in 587 of 600 cases: the
product of the input rows alone rounds as the whole one but for the BLAS blocking; the RMS norm
models, whose fast path is the linears alone, bit for bit in all 300), and every tie branch
(tied rows, tied elements, rows shifted by a constant before a layer norm, a zero baseline's
rows) agreed too. What does not run fast, by design: the fused layer norm declines where the
norm's input is ``(R, R, ...)`` at rank 2 or 4 (dim 1 as wide as the R rows: `rows_in_dim_0`),
and runs written out with the same numbers; the RMS norm is never fused; a call aborted by an
ambiguous ``(R, L, D)`` with L == R (NOTE: [Rows in dim 0 or dim 1] in row_layout.py) runs its
linears again with k copies. Two things the tests had to be built around: a linear of the input
itself sends its reference rows' gradient only to the baselines, so there a wrong skip changes no
attribution (the model that mixes rows centres its input over the batch first, and a backward
that never multiplies the reference rows then fails; tests/test_deeplift_speed_paths.py's mixing
model has its first linear on the input, so only its counts see that branch), and a GELU's
derivative at a tie matters only where the tied unit's inputs differ (the layer norm of rows
shifted by a constant: a derivative of the wrong GELU there fails; a whole tied row has zero
attributions whatever the multipliers).

NOTE: [Zero reference rows at a norm]
A reference row that is zero at an RMS norm, or constant at a layer norm, has variance 0, so its
rsqrt is ``1 / sqrt(eps)``: 1e6 at BERT's eps of 1e-12, 6.7e7 at torch's default RMS eps
(float64's machine eps). Product's averages and Rescale's secant carry that scale, and the
per-feature attributions become terms of that size that cancel to the output's gap. On a 4-wide
input normed first, against a zero baseline (the output's gap 0.063): attributions up to 4.3e4
through one layer norm of eps 1e-12 (delta 7e-12), 2.2e10 through two in a row (delta 1.6e-7),
and 1.0e14 through two RMS norms at the default eps (delta 0.0144, a quarter of the gap):
summation-to-delta holds only to the rounding of those terms. Both paths alike (the fused op
agrees with the steps to 1e-14 of the largest attribution there; the RMS norm is not fused): a
property of DeepLift's rules at such a reference, not of the fast paths. So `bound` allows 1e-13
of the summed magnitudes besides 1e-10 of the gap.
"""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import xattr
from deeplift_fuzz_support import (
    APPROXIMATE,
    BASELINES,
    Embedded,
    Linears,
    Normed,
    agree,
    both_runs,
    paired,
    rows_tied,
    shape_of,
    skipping,
)

D = torch.float64
# 12 and 24 examples (derandomized); 300 and 600 under the "thorough" profile (conftest.py)
FUZZ = settings(max_examples=settings.default.max_examples, deadline=None)
FUZZ_MORE = settings(max_examples=2 * settings.default.max_examples, deadline=None)
@st.composite
def linear_cases(draw):
    rank = draw(st.integers(2, 4))
    batch = draw(st.integers(1, 4))
    return dict(seed=draw(st.integers(0, 10_000)), rank=rank, batch=batch, bias=draw(st.booleans()), shared=draw(st.booleans()),
                spelling=draw(st.sampled_from(["module", "functional", "strided"] + (["addmm"] if rank == 2 else []))),
                approximate=draw(APPROXIMATE), first_gelu=draw(st.booleans()), inplace=draw(st.booleans()),
                transposed=rank == 4 and draw(st.booleans()), baseline=draw(BASELINES), tied=rows_tied(draw, batch),
                ties=draw(st.sampled_from(["rows", "elements"])))


@FUZZ_MORE
@given(case=linear_cases())
def test_linear_layers_equal_the_whole_product(case):
    """Linears on inputs of rank 2-4, with and without bias, in four spellings, a weight shared,
    a strided input, an in-place ReLU on the output; zero, shared, broadcast and per-example
    baselines with tied rows and elements."""
    options = {k: case[k] for k in ("spelling", "bias", "shared", "approximate", "first_gelu", "inplace", "transposed")}
    model = Linears(case["seed"], **options).to(D).eval()
    g = torch.Generator().manual_seed(case["seed"])
    x, arg, b = paired(case["baseline"], torch.randn(shape_of(case["rank"], case["batch"]), generator=g, dtype=D), g,
                       case["tied"], case["ties"])
    attr_old, delta_old, attr, delta, seen = both_runs(xattr.deep_lift(model, baselines=arg, return_delta=True), x)
    agree(attr, attr_old, delta, delta_old, model(x), model(b))
    skipping(seen, 3, case["batch"], shared=case["baseline"] != "per_example" and case["batch"] >= 2)
    # a tie at a GELU's input: its derivative from the kernel, at each run; none without a tie
    # (a ReLU ties the elements that it zeroes in both rows, tied elements may tie a whole row)
    if case["tied"] or (case["first_gelu"] and bool((x == b).any())):
        assert seen["gelu kernel"] > 0
    elif not case["inplace"] and case["ties"] == "rows":
        assert seen["gelu kernel"] == 0
    for i in case["tied"]:
        assert torch.equal(attr[i], torch.zeros_like(attr[i]))


@FUZZ
@given(seed=st.integers(0, 10_000), mix=st.sampled_from(["flip", "mean"]), rank=st.integers(2, 4), batch=st.integers(1, 4),
       baseline=BASELINES, spelling=st.sampled_from(["module", "functional", "strided"]))
def test_rows_mixed_by_the_model_take_the_whole_product(seed, mix, rank, batch, baseline, spelling):
    """A flip or a batch mean right after the first linear sends its gradient to the reference
    rows: that linear must multiply every row (the ``any()`` fallback), the later ones skip. The
    input is centred over the batch before it, so that its reference rows' gradient reaches the
    input rows' attributions (on a linear of the input itself it would reach only the baselines,
    and a wrong skip there would change no attribution). The model breaks DeepLift's pairing, so
    only the two runs are compared."""
    model = Linears(seed, spelling, approximate="tanh", mix=mix).to(D).eval()
    g = torch.Generator().manual_seed(seed)
    x, arg, b = paired(baseline, torch.randn(shape_of(rank, batch), generator=g, dtype=D), g, [])
    attr_old, delta_old, attr, delta, seen = both_runs(xattr.deep_lift(model, baselines=arg, return_delta=True), x)
    agree(attr, attr_old, delta, delta_old, model(x), model(b), exact=False)
    assert len(seen["linear"]) == seen["linear calls"] >= 3
    assert seen["whole"] == 1 and seen["skipped"] == 2


@st.composite
def norm_cases(draw, kind: str):
    rank = draw(st.integers(2, 4))
    batch = draw(st.integers(1, 4))
    eps = draw(st.sampled_from([1e-12, 1e-5, 1e-2, 0.3] + ([None] if kind == "rms_norm" else [])))  # 1e-12: BERT's
    return dict(seed=draw(st.integers(0, 10_000)), rank=rank, batch=batch, k=draw(st.integers(1, min(2, rank - 1))),
                spelling=draw(st.sampled_from(["module", "functional"])), affine=draw(st.booleans()), bias=draw(st.booleans()),
                eps=eps, approximate=draw(APPROXIMATE), first=draw(st.booleans()), twice=draw(st.booleans()),
                transposed=rank == 4 and draw(st.booleans()), baseline=draw(BASELINES), tied=rows_tied(draw, batch),
                ties=draw(st.sampled_from(["rows", "elements", "shifted"])), rescale_eps=draw(st.sampled_from([1e-10, 1e-3])),
                mix=draw(st.sampled_from(["none", "none", "before", "after"])))


def norm_run(case: dict, kind: str):
    """DeepLift of a drawn `Normed` with both paths; the counts, and the norm's input's dim 1."""
    shape = shape_of(case["rank"], case["batch"])
    normed = (shape[0], shape[2], shape[1], shape[3]) if case["transposed"] else shape  # the norm's input
    options = {k: case[k] for k in ("spelling", "affine", "bias", "eps", "approximate", "first", "twice", "transposed", "mix")}
    model = Normed(case["seed"], normed[-case["k"]:], kind, **options).to(D).eval()
    g = torch.Generator().manual_seed(case["seed"])
    x, arg, b = paired(case["baseline"], torch.randn(shape, generator=g, dtype=D), g, case["tied"], case["ties"])
    dl = xattr.deep_lift(model, baselines=arg, mapping=EXACT, eps=case["rescale_eps"], return_delta=True)
    attr_old, delta_old, attr, delta, seen = both_runs(dl, x)
    # a wide tie threshold takes derivatives at near ties, which breaks the exact sum (for both);
    # a model that mixes rows breaks DeepLift's pairing
    mixed = case["mix"] != "none"
    agree(attr, attr_old, delta, delta_old, model(x), model(b), exact=case["rescale_eps"] == 1e-10 and not mixed)
    if not mixed:
        skipping(seen, 2, case["batch"], shared=case["baseline"] != "per_example" and case["batch"] >= 2)
    else:  # whether the GELU below a batch mean passes its reference rows' gradient on depends on
        # the rows: Rescale multiplies it by the pair's multipliers, but a shared row's are zeros
        assert len(seen["linear"]) == seen["linear calls"] and seen["skipped"] + seen["whole"] == 2
    if case["ties"] != "shifted" and not mixed:
        for i in case["tied"]:
            assert torch.equal(attr[i], torch.zeros_like(attr[i]))
    return seen, normed[1]


@FUZZ_MORE
@given(case=norm_cases("layer_norm"))
def test_layer_norms_fused_equal_the_written_out_steps(case):
    """nn.LayerNorm or F.layer_norm over 1 or 2 dims of inputs of rank 2-4, with or without
    weight and bias, eps varied (the norm's, and DeepLift's tie threshold at rsqrt), on the input
    or a hidden layer, applied twice, on a strided tensor, rows mixed before or after it (the
    fused op, as the steps, gives the reference rows no gradient and reads none of theirs); rows
    tied, elements tied, rows shifted."""
    seen, dim_1 = norm_run(case, "layer_norm")
    rows = seen["linear"][-1][0]  # the last run's rows: R, or k R after a retry
    if dim_1 != rows:
        assert seen["fused"] >= 1 and seen["layer norm backwards"] == 1 + case["twice"]  # (an aborted run may decline)
    else:  # (R, R, ...): rows_dim reads dim 0 and remembers it, which only the steps do: written out
        assert seen["fused"] == 0 and seen["declined"] >= 1 and seen["layer norm backwards"] == 0


@FUZZ
@given(case=norm_cases("rms_norm"))
def test_rms_norms_stay_written_out(case):
    """The fused path covers the layer norm alone: an RMS norm is declined and runs written out
    (its numbers are the steps', with the linears still skipping rows)."""
    seen, _ = norm_run(case, "rms_norm")
    assert seen["fused"] == 0 and seen["declined"] >= 1 + case["twice"] and seen["layer norm backwards"] == 0


EXACT = xattr.rule.exact_deep_lift_rules()


@FUZZ
@given(seed=st.integers(0, 10_000), model_kind=st.sampled_from(["linears", "layer_norm"]), rank=st.integers(2, 4),
       batch=st.integers(1, 3), n=st.integers(1, 3), tied=st.booleans(), chunked=st.booleans())
def test_deep_lift_shap_over_a_baseline_distribution(seed, model_kind, rank, batch, n, tied, chunked):
    """DeepLift SHAP: N copies of the batch, each with its baseline row (shared where B > 1), in
    one call or in chunks of one copy; a distribution row equal to the first input ties that pair."""
    shape = shape_of(rank, batch)
    if model_kind == "linears":
        model, mapping, linears = Linears(seed, approximate="tanh", first_gelu=True), None, 3
    else:
        model, mapping, linears = Normed(seed, shape[-1:]), EXACT, 2
    model = model.to(D).eval()
    g = torch.Generator().manual_seed(seed)
    x, dist = torch.randn(shape, generator=g, dtype=D), 0.5 * torch.randn((n,) + shape[1:], generator=g, dtype=D)
    if tied:
        dist[-1] = x[0]
    dl = xattr.deep_lift_shap(model, baselines=dist, mapping=mapping, chunk_size=2 * batch if chunked else None, return_delta=True)
    attr_old, delta_old, attr, delta, seen = both_runs(dl, x)
    gaps = model(x)[:, None] - model(dist)[None, :]  # (B, N): each pair's
    assert delta.shape == (batch, n)
    agree(attr, attr_old, delta, delta_old, gaps, torch.zeros_like(gaps))
    calls = n if chunked else 1
    assert seen["skipped"] == calls * linears and seen["whole"] == 0
    assert len(seen["linear"]) == seen["linear calls"] >= calls * linears
    copies = 1 if chunked else n
    rows, inputs = seen["linear"][-1]
    assert inputs % (copies * batch) == 0 and rows - inputs == (inputs // batch if batch >= 2 else inputs)
    if model_kind == "layer_norm":  # fused in each call but where the norm's input is (R, R, ...)
        assert seen["layer norm backwards"] == (calls if shape[1] != rows else 0)
    assert (seen["gelu kernel"] > 0) == tied  # the tied pair ties the first GELU's inputs


@FUZZ
@given(seed=st.integers(0, 10_000), layer=st.sampled_from(["embed", "norm", "mid", "embed+mid"]), batch=st.integers(1, 4),
       length=st.integers(1, 5), approximate=APPROXIMATE, pad=st.booleans(), data=st.data())
def test_layer_deep_lift_at_an_embedding_or_an_intermediate_layer(seed, layer, batch, length, approximate, pad, data):
    """Layer DeepLift at the embedding (the layer norm fused, both linears skipping), at the
    layer norm, at the inner linear (the read-out skipping), or at the embedding and the inner
    linear at once, against token baselines: the padding token 0 for every example, or one
    sequence per example with some rows tied."""
    model = Embedded(seed, approximate).to(D).eval()
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 11, (batch, length), generator=g)
    tied = rows_tied(data.draw, batch)
    if pad:
        tokens[tied] = 0
        base, full = 0, torch.zeros_like(tokens)
    else:
        base = torch.randint(0, 11, (batch, length), generator=g)
        base[tied] = tokens[tied]
        full = base
    layers = [getattr(model, name) for name in layer.split("+")]
    split = xattr.at_layer(model, layers if len(layers) > 1 else layers[0])
    dl = xattr.layer_deep_lift(split, baselines=base, mapping=EXACT, return_delta=True)
    attr_old, delta_old, attr, delta, seen = both_runs(dl, tokens)
    several = isinstance(attr, tuple)
    assert several == ("+" in layer)
    for a, a_old, d, d_old in zip(*(t if several else (t,) for t in (attr, attr_old, delta, delta_old))):
        agree(a, a_old, d, d_old, model(tokens), model(full))
        for i in tied:
            assert torch.equal(a[i], torch.zeros_like(a[i]))
    assert seen["skipped"] == (1 if layer == "mid" else 2) and seen["whole"] == 0
    assert seen["layer norm backwards"] == (1 if layer.startswith("embed") else 0)
