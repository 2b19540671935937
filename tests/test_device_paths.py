"""The CUDA code paths, run on the CPU under a fake CUDA device (NOTE: [A fake CUDA device for
tests] in fake_cuda.py): every tensor xattr makes must follow the inputs' device, every generator
the device it draws on, and the device's own choices (the accelerator's memory budget,
``torch.where`` copies, coalitions drawn one example at a time, prepared calls) must give the
CPU's numbers. The fake device draws the CPU's random numbers, so a seeded method gives the same
result on both; on a real GPU the draws differ from the CPU's (Philox), but not with the budget,
chunking or batch, which is checked here on the CUDA branches.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from sklearn.linear_model import Ridge

import xattr
import xattr.compat.captum as captum
import xattr.metrics as M
from fake_cuda import FREE, OnCuda, fake_cuda, on_cpu, on_cuda
from xattr._src import budget, prepared

B, D = 4, 12
PER_EXAMPLE = torch.tensor([[0] * 6 + [1] * 6, [2] * 12, [0, 1, 2] * 4, [3] * 6 + [0] * 6])
PAIRS = torch.arange(D)[None] // 2


def _data():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(D, 3, generator=g, dtype=torch.float64)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    phi = torch.randn(B, D, generator=g, dtype=torch.float64)
    return w, x, phi


def _one(w):
    return lambda x: torch.tanh(x @ w)[:, 1]


def _total(w):  # one Python number for the whole batch (a loss's .item())
    return lambda x: float(torch.tanh(x @ w)[:, 1].sum())


# name -> (model weights, precomputed attributions) -> a function of the inputs, built once and
# called three times: a signature met twice is prepared, then served (NOTE: [Prepared calls])
CASES = {
    "feature_ablation": lambda w, p: xattr.feature_ablation(_one(w)),
    "feature_ablation_per_example_masks": lambda w, p: xattr.feature_ablation(_one(w), feature_mask=PER_EXAMPLE),
    "feature_ablation_two_outputs": lambda w, p: xattr.feature_ablation(xattr.target(lambda x: x @ w, xattr.outputs([0, 2]))),
    "occlusion": lambda w, p: xattr.occlusion(_one(w), sliding_window_shapes=(3,), strides=2),
    "feature_permutation": lambda w, p: xattr.feature_permutation(_one(w), generator=0),
    "shapley_value_sampling": lambda w, p: xattr.shapley_value_sampling(_one(w), n_samples=3, generator=0),
    "shapley_value_sampling_per_example": lambda w, p: xattr.shapley_value_sampling(_one(w), n_samples=2, generator=0,
                                                                                    feature_mask=PER_EXAMPLE),
    "shapley_values": lambda w, p: xattr.shapley_values(_one(w), feature_mask=PAIRS // 2),
    "lime": lambda w, p: xattr.lime(_one(w), n_samples=40, generator=0),
    "lime_global_generator": lambda w, p: xattr.lime(_one(w), n_samples=20, generator=None),
    "lime_ridge_euclidean": lambda w, p: xattr.lime(_one(w), n_samples=30, generator=0, interpretable_model=xattr.ridge(0.1),
                                                    similarity_func=xattr.exp_kernel_similarity("euclidean")),
    "lime_sklearn": lambda w, p: xattr.lime(_one(w), n_samples=30, generator=0, interpretable_model=Ridge(alpha=0.1)),
    "lime_per_example": lambda w, p: xattr.lime(_one(w), n_samples=30, generator=0, feature_mask=PER_EXAMPLE),
    "lime_perturb_func": lambda w, p: xattr.lime(_one(w), n_samples=30, generator=0,
                                                 perturb_func=lambda n, f, g: torch.rand(n, f, generator=g, device=g.device) < 0.5),
    # torch.cumsum of floats raises on CUDA under deterministic algorithms (the suite's setting)
    "kernel_shap_deterministic_algorithms": lambda w, p: xattr.kernel_shap(_one(w), n_samples=40, generator=0),
    "kernel_shap_global_generator": lambda w, p: xattr.kernel_shap(_one(w), n_samples=20, generator=None),
    "kernel_shap_per_example": lambda w, p: xattr.kernel_shap(_one(w), n_samples=30, generator=0, feature_mask=PER_EXAMPLE),
    "kernel_shap_enumerated": lambda w, p: xattr.kernel_shap(_one(w), n_samples=64, generator=0, feature_mask=PAIRS // 2),
    # a model answering one Python number: its outputs were made on the CPU, beside CUDA masks
    "feature_ablation_python_number": lambda w, p: xattr.feature_ablation(_total(w), feature_mask=PAIRS),
    "occlusion_python_number": lambda w, p: xattr.occlusion(_total(w), sliding_window_shapes=(3,)),
    "shapley_values_python_number": lambda w, p: xattr.shapley_values(_total(w), feature_mask=PAIRS // 2),
    "lime_python_number": lambda w, p: xattr.lime(_total(w), n_samples=20, generator=0),
    "kernel_shap_python_number": lambda w, p: xattr.kernel_shap(_total(w), n_samples=20, generator=0),
    "smoothgrad_of_ablation": lambda w, p: xattr.smoothgrad(xattr.feature_ablation(_one(w)), stdevs=0.1, n_samples=4, generator=0),
    "vargrad_of_kernel_shap": lambda w, p: xattr.vargrad(xattr.kernel_shap(_one(w), n_samples=20, generator=1), stdevs=0.1,
                                                         n_samples=3, generator=0),
    "expectation_of_ablation": lambda w, p: lambda x: xattr.expectation(xattr.feature_ablation(_one(w)), baselines=x.flip(0)[:3] * 0.5,
                                                                        n_samples=3, generator=0)(x),
    "infidelity": lambda w, p: M.infidelity(_one(w), p, M.gaussian_noise(0.1), n_perturb_samples=5, generator=0, normalize=True),
    "infidelity_subset": lambda w, p: M.infidelity(_one(w), p, M.subset_to_baseline(0.5), baselines=0.0, n_perturb_samples=5,
                                                   generator=0),
    "sensitivity_max": lambda w, p: lambda x: M.sensitivity_max(xattr.kernel_shap(_one(w), n_samples=20, generator=1), x,
                                                                n_perturb_samples=3, generator=0),
    "deletion_per_example": lambda w, p: lambda x: M.deletion(_one(w), p, feature_mask=PER_EXAMPLE)(x).scores,
    "insertion_patches": lambda w, p: lambda x: M.insertion(_one(w), p, feature_mask=M.patch_mask((D,), (3,)), n_steps=3)(x).scores,
    "sparseness_complexity": lambda w, p: lambda x: torch.stack([M.sparseness(p, x), M.complexity(p, x)]),
    "spearman_topk_ssim": lambda w, p: lambda x: torch.stack([M.spearman(p, x), M.top_k_intersection(p, p * 2, k=3),
                                                              M.ssim(p.reshape(B, 1, 3, 4), x.reshape(B, 1, 3, 4), window=3)]),
    "captum_feature_ablation_list_target": lambda w, p: lambda x: captum.FeatureAblation(lambda x: x @ w).attribute(
        x, target=[0, 1, 2, 1]),
    "captum_feature_permutation_perm_func": lambda w, p: lambda x: captum.FeaturePermutation(
        lambda x: x @ w, perm_func=lambda t, m: torch.where(m, t.flip(0), t)).attribute(x, target=1, feature_mask=PAIRS),
    "captum_kernel_shap": lambda w, p: lambda x: captum.KernelShap(lambda x: x @ w).attribute(x, target=1, n_samples=20),
}


def _cuda_run(case, w, x, phi, calls: int = 1):
    with fake_cuda():
        w, x, phi = on_cuda((w, x, phi))
        fn, outs = case(w, phi), []
        for _ in range(calls):
            torch.manual_seed(5)
            outs.append(fn(x))
    assert all(isinstance(o, OnCuda) for o in outs), "the result left the inputs' device"
    return [on_cpu(o) for o in outs]


def _signature_on_cuda_too(plain):
    """`prepared.signature` that takes an `OnCuda` input as the plain tensor it stands for (a
    prepared call serves only plain tensors), so that the fake device reaches the served path."""

    def signature(args, nums, *objs):
        return plain(tuple(on_cpu(a) for a in args), nums, *(on_cpu(o) for o in objs))

    return signature


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_cuda_paths_give_the_cpus_results(name, monkeypatch):
    monkeypatch.setattr(prepared, "signature", _signature_on_cuda_too(prepared.signature))
    w, x, phi = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(5)
        expected = CASES[name](w, phi)(x)
        got = _cuda_run(CASES[name], w, x, phi, calls=3)  # a signature met twice is prepared, then served
    for out in got:
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


BUDGETS = {
    "feature_ablation": lambda f, **kw: xattr.feature_ablation(f, feature_mask=PER_EXAMPLE, **kw),
    "occlusion": lambda f, **kw: xattr.occlusion(f, sliding_window_shapes=(2,), **kw),
    "shapley_value_sampling": lambda f, **kw: xattr.shapley_value_sampling(f, n_samples=3, generator=0, **kw),
    "lime": lambda f, **kw: xattr.lime(f, n_samples=50, generator=0, **kw),
    "lime_global_generator": lambda f, **kw: xattr.lime(f, n_samples=30, generator=None, **kw),
    "kernel_shap": lambda f, **kw: xattr.kernel_shap(f, n_samples=50, generator=0, **kw),
    "kernel_shap_per_example": lambda f, **kw: xattr.kernel_shap(f, n_samples=30, generator=2, feature_mask=PER_EXAMPLE, **kw),
}


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_on_cuda_the_budget_and_chunks_change_no_number(name):
    """The accelerator's default budget (one call here), a budget of a few bytes (one copy per
    call, coalitions drawn a few at a time, fits one example at a time) and a chunk size give
    the same numbers, equal to the CPU's."""
    w, x, _ = _data()
    torch.manual_seed(3)
    expected = BUDGETS[name](_one(w))(x)
    with warnings.catch_warnings(), fake_cuda():
        warnings.simplefilter("ignore")  # a budget below one example's fit warns
        wc, xc = on_cuda((w, x))
        for kw in ({}, {"memory_budget": 64}, {"chunk_size": 5}):
            torch.manual_seed(3)
            torch.testing.assert_close(on_cpu(BUDGETS[name](_one(wc), **kw)(xc)), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["lime", "kernel_shap", "shapley_value_sampling"])
def test_on_cuda_an_examples_draws_do_not_depend_on_its_batch(method):
    """Each example's coalitions come from its own CUDA generator: the first two examples get
    the same attributions in a batch of four and alone."""
    make = {"lime": lambda f: xattr.lime(f, n_samples=30, generator=7, interpretable_model=xattr.linear_regression()),
            "kernel_shap": lambda f: xattr.kernel_shap(f, n_samples=30, generator=7),
            "shapley_value_sampling": lambda f: xattr.shapley_value_sampling(f, n_samples=2, generator=7)}[method]  # fmt: skip
    w, x, _ = _data()
    with fake_cuda():
        wc, xc = on_cuda((w, x))
        whole, part = on_cpu(make(_one(wc))(xc)), on_cpu(make(_one(wc))(xc[:2]))
    torch.testing.assert_close(part, whole[:2], rtol=0, atol=1e-12)


def test_the_cuda_default_budget_is_a_64th_of_the_free_and_cached_memory(monkeypatch):
    calls = []
    with fake_cuda(free=6 * 2**30, memory_stats={"reserved_bytes.all.current": 3 * 2**30, "allocated_bytes.all.current": 2**30}):
        assert budget.default_budget(torch.device("cuda")) == (6 + 2) * 2**30 // 64  # 128 MiB
        ask = torch.cuda.mem_get_info
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: calls.append(device) or ask(device))
        x = torch.zeros(8, 100_000, device="cuda")  # 3.2 MB a copy: 20 fit the least budget
        assert budget.copies_per_call((x,), 8, None, None, n_copies=10) == 20 and not calls  # they fit it: no query
        assert budget.copies_per_call((x,), 8, None, None, n_copies=100) == 2**27 // 3_200_000 and calls  # 128 MiB: 41
    with fake_cuda(free=2**30):
        assert budget.default_budget(torch.device("cuda")) == budget.MEMORY_BUDGET  # at least
    with fake_cuda(free=FREE):
        assert budget.default_budget(torch.device("cuda")) == budget.budget_from_free(FREE)


def test_the_fake_device_enforces_the_cuda_rules():
    """The checks the tests above rely on: each raises as CUDA would."""
    with fake_cuda():
        x = torch.ones(3, device="cuda")
        assert isinstance(x, OnCuda) and x.device.type == "cuda" and isinstance(x + torch.tensor(1.0), OnCuda)
        with pytest.raises(RuntimeError, match="same device"):
            x + torch.ones(3)
        with pytest.raises(RuntimeError, match="indexed tensor"):
            torch.ones(3)[torch.tensor([0, 1], device="cuda")]
        assert torch.equal(on_cpu(x[torch.tensor([0, 2])]), torch.ones(2))  # CPU indices into a CUDA tensor
        with pytest.raises(RuntimeError, match="generator"):
            torch.empty(3, device="cuda").uniform_(generator=torch.Generator().manual_seed(0))
        with pytest.raises(RuntimeError, match="generator"):
            torch.empty(3).uniform_(generator=torch.Generator(device="cuda").manual_seed(0))
        with pytest.raises(RuntimeError, match="deterministic"):
            torch.cumsum(x, 0)
        assert torch.equal(on_cpu(torch.cumsum(x.long(), 0)), torch.tensor([1, 2, 3]))
        assert type(x.cpu()) is torch.Tensor and isinstance(torch.zeros(2).to("cuda"), OnCuda)
