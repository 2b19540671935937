"""The loop shared by `sensitivity_max` and the stability metrics (`worst_over_copies`) against
slow loops over examples and copies, bit for bit: sensitivity_max keeps the attributions' dtype
(Captum's float32 results), the stability metrics widen half precision to float32, and all of
them see the same perturbed copies.

The attribution functions here are elementwise (with a per-example sum), so an example's
attributions do not depend, to the last bit, on the batch it is computed in; the perturbed
copies are the ones the metric drew, recorded by the perturbation function."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xattr import metrics as M
from xattr.metrics import uniform_noise
from xattr.metrics._worst_case import worst_over_copies

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
ORDS = ["fro", 1, math.inf, 3]
ATTRS = {
    "wave": lambda x: x * torch.sin(3 * x),
    "cube_plus_sum": lambda x: x**3 - x.sum(1, keepdim=True),
    "relu_step": lambda x: torch.relu(x - 0.5) * 4,  # zero attributions for small inputs
}


def inputs(seed: int, shape, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def recording(drawn: list):
    """`uniform_noise` that appends what it returns to ``drawn`` (one call per example when
    seeded, one for all examples otherwise: rows example-major either way)."""

    def perturb(x, r, *, generator=None):
        out = uniform_noise(x, r, generator=generator)
        drawn.append(out)
        return out

    return perturb


def copies_of(drawn: list, batch: int, n: int) -> torch.Tensor:
    c = torch.cat(drawn)
    return c.reshape((batch, n) + tuple(c.shape[1:]))


def slow_sensitivity(attr_fn, x, copies, norm_ord) -> torch.Tensor:
    """max_k ||phi(x_ik) - phi(x_i)|| / ||phi(x_i)|| (0 norm counting as 1), one example and
    one copy at a time."""
    o = 2.0 if norm_ord == "fro" else float(norm_ord)
    out = []
    for i in range(x.shape[0]):
        phi = attr_fn(x[i : i + 1])[0].reshape(-1)
        best = None
        for k in range(copies.shape[1]):
            d = torch.linalg.vector_norm(attr_fn(copies[i, k][None])[0].reshape(-1) - phi, ord=o)
            best = d if best is None or d > best else best
        norm = torch.linalg.vector_norm(phi, ord=o)
        out.append(best / (norm if norm != 0 else torch.ones_like(norm)))
    return torch.stack(out)


def assert_bitwise(got: torch.Tensor, want: torch.Tensor):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want), (got, want)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 4),
    n=st.integers(1, 5),
    chunk=st.sampled_from([None, 1, 3, 7]),
    norm_ord=st.sampled_from(ORDS),
    dtype=st.sampled_from(DTYPES),
    name=st.sampled_from(sorted(ATTRS)),
    seeded=st.booleans(),
)
def test_sensitivity_max_is_the_slow_loop_bit_for_bit_in_the_attributions_dtype(
    seed, batch, n, chunk, norm_ord, dtype, name, seeded
):
    x = inputs(seed, (batch, 6), dtype)
    drawn = []
    if not seeded:
        torch.manual_seed(seed)
    got = M.sensitivity_max(
        ATTRS[name], x, perturb_func=recording(drawn), perturb_radius=0.1, n_perturb_samples=n,
        norm_ord=norm_ord, generator=seed if seeded else None, chunk_size=chunk,
    )  # fmt: skip
    assert_bitwise(got, slow_sensitivity(ATTRS[name], x, copies_of(drawn, batch, n), norm_ord))
    assert got.dtype == dtype  # not widened: float32 attributions give Captum's float32 numbers


def test_sensitivity_max_of_several_inputs_is_the_slow_loop_over_their_joint_norm():
    a, b = inputs(0, (3, 4)), inputs(1, (3, 2, 3))
    fn = lambda u, v: (u * v.sum((1, 2))[:, None], torch.sin(v) * u.sum(1)[:, None, None])  # noqa: E731
    drawn = []
    got = M.sensitivity_max(fn, a, b, argnums=(0, 1), perturb_func=recording(drawn), n_perturb_samples=4,
                            perturb_radius=0.05, generator=3, chunk_size=5)  # fmt: skip
    ca = torch.cat([d[0] for d in drawn]).reshape(3, 4, 4)
    cb = torch.cat([d[1] for d in drawn]).reshape(3, 4, 2, 3)
    want = []
    for i in range(3):
        phi = torch.cat([t[0].reshape(-1) for t in fn(a[i : i + 1], b[i : i + 1])])
        dists = [
            torch.linalg.vector_norm(torch.cat([t[0].reshape(-1) for t in fn(ca[i, k][None], cb[i, k][None])]) - phi)
            for k in range(4)
        ]
        want.append(max(dists) / torch.linalg.vector_norm(phi))
    assert_bitwise(got, torch.stack(want))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(-3, 3), norm_ord=st.sampled_from(["fro", 1, math.inf]),
       dtype=st.sampled_from([torch.float32, torch.float64]))  # fmt: skip
def test_sensitivity_max_is_invariant_to_scaling_the_attributions_by_a_power_of_two(seed, k, norm_ord, dtype):
    x = inputs(seed, (3, 5), dtype)
    fn = ATTRS["wave"]
    kw = dict(n_perturb_samples=3, perturb_radius=0.1, norm_ord=norm_ord, generator=seed)
    assert_bitwise(M.sensitivity_max(lambda v: fn(v) * 2.0**k, x, **kw), M.sensitivity_max(fn, x, **kw))


def test_sensitivity_max_of_zero_attributions_divides_by_one_and_of_constant_ones_is_zero():
    x = inputs(4, (3, 5))
    x[0] = 0.5  # relu(x - 0.5) is 0 at x, not at its copies: ||phi(x)|| = 0 counts as 1
    fn = lambda v: torch.relu(v - 0.5)  # noqa: E731
    drawn = []
    got = M.sensitivity_max(fn, x, perturb_func=recording(drawn), perturb_radius=0.1, n_perturb_samples=4, generator=2)
    assert_bitwise(got, slow_sensitivity(fn, x, copies_of(drawn, 3, 4), "fro"))
    assert got[0] > 0
    assert_bitwise(M.sensitivity_max(lambda v: torch.ones_like(v) * 3, x, generator=0), torch.zeros(3))


def wide(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32) if t.dtype in (torch.float16, torch.bfloat16) else t


def slow_worst(x, copies, attr_fn, model, score, cast):
    """max_k score(...) for one example and one copy at a time, shaped as the loop hands them:
    inputs and attributions through ``cast``, the model's outputs always widened."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        x0, e0, h0 = cast(xi), cast(attr_fn(xi)), wide(model(xi))
        vals = [
            score(x0, cast(c)[None, None], e0, cast(attr_fn(c[None]))[None], [h0], [wide(model(c[None]))[None]])[0, 0]
            for c in copies[i]
        ]
        out.append(max(vals))
    return torch.stack(out)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 3), n=st.integers(1, 5),
       chunk=st.sampled_from([None, 1, 4]), dtype=st.sampled_from(DTYPES), widen=st.booleans())  # fmt: skip
def test_the_loop_hands_each_copy_its_input_attributions_and_outputs(seed, batch, n, chunk, dtype, widen):
    x = inputs(seed, (batch, 5), dtype)
    attr_fn, model = ATTRS["cube_plus_sum"], lambda v: torch.tanh(2 * v)

    def score(x0, xs, e0, es, outs0, outs):  # every argument counts, at a different scale
        return (
            torch.linalg.vector_norm(xs - x0, dim=-1)
            + 10 * torch.linalg.vector_norm(es - e0, ord=1, dim=-1)
            + 100 * (outs[0] - outs0[0]).abs().amax(-1)
        )

    drawn = []
    got = worst_over_copies(attr_fn, (x,), score, n, recording(drawn), 0.1, 0, seed, chunk, calls=(model,),
                            widen=widen)  # fmt: skip
    cast = wide if widen else (lambda t: t)
    assert_bitwise(got, slow_worst(x, copies_of(drawn, batch, n), attr_fn, model, score, cast))
    # the model's outputs are widened either way, so a half score comes out float32 (type promotion)
    assert got.dtype == wide(x).dtype


def test_the_loop_keeps_minus_inf_where_no_copy_counts_and_the_max_of_the_others():
    x = inputs(5, (4, 3))

    def score(x0, xs, e0, es, outs0, outs):  # only copies whose first element went up count
        d = (xs - x0).amax(-1)
        return torch.where(xs[..., 0] > x0[..., 0], d, torch.full_like(d, -math.inf))

    drawn = []
    got = worst_over_copies(torch.sin, (x,), score, 1, recording(drawn), 0.1, 0, 7, None)
    c = copies_of(drawn, 4, 1)[:, 0]
    want = torch.where(c[:, 0] > x[:, 0], (c - x).amax(-1), torch.full((4,), -math.inf))
    assert_bitwise(got, want)
    assert (got == -math.inf).any() and (got > -math.inf).any()  # seed 7 gives both kinds


def test_sensitivity_max_and_the_stability_metrics_see_the_same_copies():
    x = inputs(6, (3, 4))
    seen = {}
    for name, metric in {
        "sensitivity_max": lambda p: M.sensitivity_max(ATTRS["wave"], x, perturb_func=p, perturb_radius=0.05,
                                                       n_perturb_samples=5, generator=11),  # fmt: skip
        "local_lipschitz_estimate": lambda p: M.local_lipschitz_estimate(ATTRS["wave"], x, perturb_func=p,
                                                                         radius=0.05, n_samples=5, generator=11),
        "relative_input_stability": lambda p: M.relative_input_stability(None, ATTRS["wave"], x, perturb_func=p,
                                                                         radius=0.05, n_samples=5, generator=11),
    }.items():  # fmt: skip
        drawn = []
        metric(recording(drawn))
        seen[name] = copies_of(drawn, 3, 5)
    assert torch.equal(seen["sensitivity_max"], seen["local_lipschitz_estimate"])
    assert torch.equal(seen["sensitivity_max"], seen["relative_input_stability"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_stability_metrics_widen_half_precision_while_sensitivity_max_keeps_it(dtype):
    x = inputs(7, (3, 4), dtype)
    fn = ATTRS["wave"]
    assert M.sensitivity_max(fn, x, generator=0).dtype == dtype
    assert M.local_lipschitz_estimate(fn, x, radius=0.05, n_samples=3, generator=0).dtype == torch.float32
    assert M.relative_input_stability(None, fn, x, radius=0.05, n_samples=3, generator=0).dtype == torch.float32


def test_sensitivity_max_still_enters_as_a_new_call_inside_a_model():
    assert getattr(M.sensitivity_max, "enters_as_new_call", False)
    assert getattr(M.local_lipschitz_estimate, "enters_as_new_call", False)


def test_an_attr_fn_writing_into_its_input_cannot_change_the_copies():
    """The copies' inputs are kept before attr_fn runs: attr(x) = 2x gives a Lipschitz estimate of
    exactly 2 even when attr_fn zeroes its input afterwards (before: 26-37)."""
    x = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def writes(v):
        out = v * 2
        v.zero_()
        return out

    got = M.local_lipschitz_estimate(writes, x.clone(), radius=0.1, n_samples=6, generator=0)
    torch.testing.assert_close(got, torch.full((5,), 2.0, dtype=torch.float64), rtol=1e-12, atol=0)
