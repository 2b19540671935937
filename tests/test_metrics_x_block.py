"""x as block 0 of the copies' calls (NOTE: [x as copy 0] in xattr/metrics/_common.py).

sensitivity_max and infidelity call their function once on x and its copies together; where the
perturbed copies cannot sit beside x in one tensor (another dtype) x keeps a call of its own. Both
ways are checked against explicit loops over examples and copies, and the chunked calls against
the whole one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xattr
from xattr import metrics as M

D = torch.float64
B, N, P = 3, 5, 4


def _model() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(P, 6), nn.Tanh(), nn.Linear(6, 2)).to(D).eval()
    return lambda v: net(v.to(D))  # takes the float32 copies of _noise_f32 too


def _x() -> torch.Tensor:
    return torch.randn(B, P, generator=torch.Generator().manual_seed(2), dtype=D)


def _kept(perturb):
    """perturb_func recording its output: the copies, example-major."""
    seen = []

    def fn(x, generator=None):
        out = perturb(x, generator)
        seen.append(out)
        return out

    return fn, seen


def _noise(x, generator):
    return x + 0.1 * torch.randn(x.shape, generator=generator, dtype=x.dtype)


def _noise_f32(x, generator):  # copies in another dtype than x: x gets a call of its own
    return _noise(x, generator).float()


def _calls(fn):
    rows = []

    def spy(*a):
        rows.append(a[0].shape[0])
        return fn(*a)

    return spy, rows


@pytest.mark.parametrize("perturb, fold", [(_noise, True), (_noise_f32, False)])
@pytest.mark.parametrize("chunk_size", [None, 2 * B, B])
def test_sensitivity_max_equals_its_loop(perturb, fold, chunk_size):
    f = xattr.target(_model(), 1)
    sal = xattr.saliency(f)
    attr_fn, rows = _calls(sal)
    pf, seen = _kept(perturb)
    x = _x()
    got = M.sensitivity_max(attr_fn, x, perturb_func=pf, n_perturb_samples=N, generator=0, chunk_size=chunk_size)
    copies = torch.cat(seen).reshape(B, N, P)  # one perturb_func call per example (a seeded draw)
    want = []
    for i in range(B):
        e0 = sal(x[i : i + 1]).double()
        want.append(max(float((sal(copies[i, s : s + 1]).double() - e0).norm()) for s in range(N)) / float(e0.norm()))
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=D), rtol=1e-6, atol=1e-12)
    per = {None: N + 1, 2 * B: 2, B: 1}[chunk_size] * B if fold else {None: N, 2 * B: 2, B: 1}[chunk_size] * B
    assert rows[0] == (per if fold else B), rows
    assert sum(rows) == (N + 1) * B


@pytest.mark.parametrize("perturb, fold", [(_noise, True), (_noise_f32, False)])
@pytest.mark.parametrize("chunk_size", [None, 2 * B, B])
def test_infidelity_equals_its_loop(perturb, fold, chunk_size):
    model = _model()
    f = xattr.target(model, 0)
    phi = torch.randn(B, P, generator=torch.Generator().manual_seed(3), dtype=D)
    spy, rows = _calls(f)
    pf, seen = _kept(perturb)
    x = _x()
    got = M.infidelity(spy, phi, pf, n_perturb_samples=N, generator=0, chunk_size=chunk_size, normalize=False)(x)
    copies = torch.cat(seen).reshape(B, N, P)
    want = []
    for i in range(B):
        fx = float(f(x[i : i + 1]))
        errs = []
        for s in range(N):
            pert = copies[i, s : s + 1]
            size = x[i : i + 1] - pert.double()
            errs.append((float((size * phi[i]).sum()) - (fx - float(f(pert)))) ** 2)
        want.append(sum(errs) / N)
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=D), rtol=1e-5, atol=1e-12)
    assert rows[0] == ((N + 1) * B if chunk_size is None else chunk_size) if fold else rows[0] == B, rows
    assert sum(rows) == (N + 1) * B


def test_a_seeded_attribution_draws_at_x_what_it_draws_at_every_copy():
    """At radius 0 every copy is x, and a seeded method in the same call as x gives x's numbers."""
    f = xattr.target(_model(), 1)
    shap = xattr.gradient_shap(f, baselines=torch.randn(4, P, dtype=D), n_samples=3, stdevs=0.1, generator=5)
    for chunk_size in (None, B, 2 * B):
        got = M.sensitivity_max(shap, _x(), perturb_func=lambda x: x.clone(), n_perturb_samples=N,
                                chunk_size=chunk_size)  # fmt: skip
        assert torch.equal(got, torch.zeros(B, dtype=got.dtype)), got
