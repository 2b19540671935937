"""Shapley interactions against shapiq 1.4.1 and SAGE against sage-importance 0.0.6 (see
workloads.py, README.md; tests/test_vs_shapiq.py, tests/test_vs_sage_importance.py).

The Captum column of run.py's table holds the other library here.

- exact k-SII of order 2: xattr ``shapley_interactions(index="k-SII", order=2)`` and shapiq
  ``ExactComputer(game, 12)("k-SII", 2)``, one computer per example (shapiq explains one point at
  a time), on `mlp12` (12-32-32-1 tanh, seeded random weights), 8 rows of seeded normal inputs, the
  baseline 0. shapiq's game is xattr's: the model with the features outside the coalition at the
  baseline, evaluated by the same torch model on the 4096 coalitions of a row (`shapiq_game`).
  Agreement: equal to rounding (both exact).
- SAGE by permutation sampling to convergence: xattr ``sage(..., convergence=0.025)`` and
  sage-importance ``PermutationEstimator(MarginalImputer(model, background), "mse")(X, Y,
  thresh=0.025)`` (its default threshold; xattr's default is 0.05), each with its default block
  (xattr 64 draws between convergence checks, sage-importance 512), on `diabetes_mlp` (10-16-1
  tanh trained for 300 Adam steps on standardised diabetes), all 442 rows, 32 background rows.
  They stop after different numbers of draws, reported in the agreement text. Agreement: each
  estimate within 4 of its standard errors of xattr's exact SAGE values (the same game: the test
  rebuilds it from sage-importance's own imputer and loss).

``python -m benchmarks.interaction_workloads --errors`` prints the table of the docs: the RMS
error of the sampled estimators of both libraries against the exact indices, at equal budgets
(game evaluations, the empty and the full coalition included: the same count in both), median
over seeds. Not timed: shapiq's estimators are pure numpy on a game given as a function.

    python -m benchmarks.interaction_workloads                 # time both, print a table
    python -m benchmarks.interaction_workloads --errors        # the sampled estimators' errors
"""

from __future__ import annotations

import statistics
import warnings

import numpy as np
import torch
from torch import nn

import xattr

from . import timing
from .perturbation_workloads import few_rounds, forward_floors
from .workloads import SEED, Workload, exact

FEATURES, ROWS = 12, 8
OTHER_ROUNDS = 3  # shapiq's exact computer and sage-importance take a second or more per call
THRESH = 0.025  # sage-importance's default convergence threshold, given to both
BACKGROUND = 32
Z = 4.0  # SAGE agreement: within Z standard errors of the exact values
ERROR_SEEDS = 5
ERROR_BUDGETS = (128, 512, 2048, 4096)


def import_shapiq():
    """shapiq, or None when it is not installed."""
    try:
        import shapiq  # noqa: PLC0415
    except ImportError:
        return None
    return shapiq


def import_sage():
    """sage-importance (import name ``sage``), or None when it is not installed or ``sage`` is
    another package (SageMath's)."""
    import importlib.metadata  # noqa: PLC0415

    try:
        importlib.metadata.version("sage-importance")
        import sage  # noqa: PLC0415
    except (ImportError, importlib.metadata.PackageNotFoundError):
        return None
    return sage if hasattr(sage, "PermutationEstimator") else None


def mlp12(dtype=torch.float64) -> tuple[nn.Module, torch.Tensor]:
    """(12-32-32-1 tanh MLP with seeded random weights, 8 seeded normal rows)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = nn.Sequential(nn.Linear(FEATURES, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
        x = torch.randn(ROWS, FEATURES)
    return model.to(dtype).eval(), x.to(dtype)


def diabetes_mlp(dtype=torch.float64) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(10-16-1 tanh MLP trained for 300 Adam steps on standardised diabetes, the 442 rows, targets)."""
    from sklearn.datasets import load_diabetes  # noqa: PLC0415

    data, target = load_diabetes(return_X_y=True)
    x = torch.tensor((data - data.mean(0)) / data.std(0), dtype=dtype)
    y = torch.tensor((target - target.mean()) / target.std(), dtype=dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 1)).to(dtype)
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(300):
            opt.zero_grad()
            (model(x)[:, 0] - y).pow(2).mean().backward()
            opt.step()
    return model.eval(), x, y


def shapiq_game(f, x: torch.Tensor, base: torch.Tensor):
    """xattr's game for one row x (F,) as shapiq takes it: a boolean coalition matrix (C, F) ->
    v (C,), the features outside each coalition at ``base`` (F,)."""

    def game(coalitions):
        z = torch.as_tensor(np.atleast_2d(np.asarray(coalitions, dtype=bool)))  # some approximators pass one (F,)
        with torch.no_grad():
            return f(torch.where(z, x, base)).numpy()

    return game


def shapiq_exact(shapiq, f, x: torch.Tensor, base: torch.Tensor, index: str, order: int) -> list:
    """shapiq's exact index of every row of x: one `ExactComputer` per row."""
    return [shapiq.ExactComputer(shapiq_game(f, row, base[0]), n_players=x.shape[1])(index, order) for row in x]


def as_tensor(ivs: list, keys: list) -> torch.Tensor:
    """(rows, sets) from shapiq's `InteractionValues`, at xattr's keys (`Interactions.to_dict`)."""
    return torch.tensor([[iv[k] for k in keys] for iv in ivs], dtype=torch.float64)


def _exact_ksii(shapiq) -> Workload:
    model, x = mlp12()
    base = torch.zeros(1, FEATURES, dtype=x.dtype)

    def f(a):
        return model(a)[:, 0]

    fn = xattr.shapley_interactions(f, index="k-SII", order=2, baselines=base)

    def agree():
        d = fn(x).to_dict()
        ours = torch.stack(list(d.values()), 1)
        return exact(ours, as_tensor(shapiq_exact(shapiq, f, x, base, "k-SII", 2), list(d)), 1e-10)

    z = torch.rand(2**FEATURES - 1, ROWS, FEATURES, generator=torch.Generator().manual_seed(SEED)) < 0.5
    rows = torch.where(z, x, base).reshape(-1, FEATURES)
    return Workload(
        f"exact k-SII order 2 vs shapiq ExactComputer (MLP, {FEATURES} features, {ROWS} rows)", "other-library",
        lambda: fn(x), few_rounds(lambda: shapiq_exact(shapiq, f, x, base, "k-SII", 2), OTHER_ROUNDS),
        forward_floors(model, rows, 4096), agree, "exact, tol 1e-10 x max(1, max abs index)",
        notes=["exact k-SII vs shapiq: xattr shapley_interactions(f, index='k-SII', order=2, baselines=0)(x); shapiq "
               "ExactComputer(game_of_row, 12)('k-SII', 2) for each of the 8 rows, the game evaluating the same torch "
               f"model on the row's 4096 coalitions; shapiq is timed in {OTHER_ROUNDS} rounds of its own; floor: one "
               f"no-grad forward of the {ROWS * (2**FEATURES - 1)} coalition rows, prebuilt."],
    )


def _sage(sage) -> Workload:
    model, x, y = diabetes_mlp()
    bg = x[1::14][:BACKGROUND]

    def f(a):
        return model(a)[:, 0]

    calls = {"rows": 0}

    def numpy_model(a):
        calls["rows"] += len(a)
        with torch.no_grad():
            return f(torch.as_tensor(np.asarray(a, dtype=np.float64))).numpy()

    imputer = sage.MarginalImputer(numpy_model, bg.numpy())

    def ours():
        return xattr.sage(f, "mse", x, y, background=bg, convergence=THRESH, n_permutations=100_000, generator=SEED)

    def theirs():
        return sage.PermutationEstimator(imputer, "mse", random_state=SEED)(x.numpy(), y.numpy(), thresh=THRESH, bar=False)

    def agree():
        truth = xattr.sage(f, "mse", x, y, background=bg, estimator="exact").values.numpy()
        mine = ours()
        calls["rows"] = 0
        other = theirs()
        draws = calls["rows"] // (BACKGROUND * 11)  # F + 1 imputer calls of M rows per draw
        z_mine = float((np.abs(mine.values.numpy() - truth) / mine.std_errors.numpy()).max())
        z_other = float((np.abs(other.values - truth) / other.std).max())
        text = (f"largest |error| / std err against the exact values: xattr {z_mine:.2f} ({mine.n_draws} draws), "
                f"sage-importance {z_other:.2f} ({draws} draws)")
        return text, z_mine <= Z and z_other <= Z

    blocks = -(-ours().n_draws // 64)  # xattr's draws, in blocks of 64
    unit = torch.cat([x[:64].repeat_interleave(BACKGROUND, 0)] * 10 + [x[:64]])  # 64 draws' chains: F M + 1 rows each

    def floor():
        with torch.no_grad():
            return [model(unit) for _ in range(blocks)]

    return Workload(
        f"SAGE permutation, convergence {THRESH} vs sage-importance (diabetes MLP, 442 rows, {BACKGROUND} background)",
        "other-library", ours, few_rounds(theirs, OTHER_ROUNDS),
        {f"{blocks} forwards of 64 draws' chains": floor}, agree,
        f"each estimate within {Z:g} of its standard errors of xattr's exact SAGE values; draws differ",
        notes=[f"SAGE vs sage-importance: xattr sage(f, 'mse', X, Y, background=32 rows, convergence={THRESH}, "
               f"generator=0); sage-importance PermutationEstimator(MarginalImputer(numpy f, background), 'mse', "
               f"random_state=0)(X, Y, thresh={THRESH}) with its default batch_size=512; both stop by the same "
               f"criterion after different numbers of draws (the agreement text); floor: the no-grad forwards of "
               f"xattr's draws, 64 at a time ({64 * (10 * BACKGROUND + 1)} rows each), prebuilt."],
    )


def build(device: str = "cpu") -> list[Workload]:
    """The shapiq and sage-importance workloads (CPU only: both take numpy)."""
    out = []
    shapiq, sage = import_shapiq(), import_sage()
    if shapiq is None:
        out.append(Workload("vs shapiq", "other-library", None, None, {}, None, "", skip="shapiq is not installed"))
    else:
        out.append(_exact_ksii(shapiq))
    if sage is None:
        out.append(Workload("vs sage-importance", "other-library", None, None, {}, None, "",
                            skip="sage-importance is not installed"))  # fmt: skip
    else:
        out.append(_sage(sage))
    return out


# ------------------------------------------------------------------ sampled estimators' errors ---------------


def _approximators(shapiq, index: str, n: int) -> dict:
    """shapiq's approximators of ``index`` at order 2, as ``{name: seed -> approximator}``."""
    made = {"SHAPIQ": lambda s: shapiq.SHAPIQ(n, 2, index, random_state=s)}
    if index in ("k-SII", "SII"):
        made["KernelSHAPIQ"] = lambda s: shapiq.KernelSHAPIQ(n, 2, index, random_state=s)
        made["SVARMIQ"] = lambda s: shapiq.SVARMIQ(n, 2, index, random_state=s)
        made["PermutationSamplingSII"] = lambda s: shapiq.PermutationSamplingSII(n, 2, index, random_state=s)
    if index == "STII":
        made["PermutationSamplingSTII"] = lambda s: shapiq.PermutationSamplingSTII(n, 2, random_state=s)
    if index == "FSII":
        made["RegressionFSII"] = lambda s: shapiq.RegressionFSII(n, 2, random_state=s)
    return made


def error_table(indices=("k-SII", "STII", "FSII"), budgets=ERROR_BUDGETS, seeds: int = ERROR_SEEDS) -> list[list[str]]:
    """RMS error against the exact order-2 index of the first row of `mlp12`, over every set of 1
    and 2 features (SHAPIQ's FSII: the pairs only, it leaves the main effects out), median over
    ``seeds``; and the RMS of the exact values."""
    shapiq = import_shapiq()
    if shapiq is None:
        raise SystemExit("shapiq is not installed")
    model, x = mlp12()
    x, base = x[:1], torch.zeros(1, FEATURES, dtype=x.dtype)

    def f(a):
        return model(a)[:, 0]

    game = shapiq_game(f, x[0], base[0])
    rows = []
    for index in indices:
        d = xattr.shapley_interactions(f, index=index, order=2, baselines=base)(x).to_dict()
        keys, truth = list(d), torch.stack([v[0] for v in d.values()])
        pairs = torch.tensor([len(k) == 2 for k in keys])
        scale = float(truth.pow(2).mean().sqrt())

        def rms(est, only_pairs=False):
            keep = pairs if only_pairs else torch.ones_like(pairs)
            return float((est - truth)[keep].pow(2).mean().sqrt())

        mine = {
            f"xattr {e}": lambda b, s, e=e: torch.stack([v[0] for v in xattr.shapley_interaction_sampling(
                f, index=index, order=2, n_samples=b, estimator=e, baselines=base, generator=s)(x).to_dict().values()])
            for e in ("regression", "stratified") + (("kernelshap_iq",) if index in ("k-SII", "SII") else ())
        }  # fmt: skip
        theirs = {name: (lambda b, s, mk=mk: as_tensor([mk(s).approximate(b, game)], keys)[0])
                  for name, mk in _approximators(shapiq, index, FEATURES).items()}  # fmt: skip
        for name, run in {**mine, **theirs}.items():
            only_pairs = name == "SHAPIQ" and index == "FSII"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                errs = [statistics.median(rms(run(b, s), only_pairs) for s in range(seeds)) for b in budgets]
            rows.append([index, name + (" (pairs only)" if only_pairs else "")] + [f"{e:.2g}" for e in errs] + [f"{scale:.2g}"])
    return rows


def main(argv=None) -> int:
    from .other_libraries import parser, print_table  # noqa: PLC0415

    p = parser("interaction_workloads", __doc__, repeats=5, budget=4.0)
    p.add_argument("--errors", action="store_true", help="print the sampled estimators' error table instead")
    args = p.parse_args(argv)
    if not args.errors:
        return print_table(build, args)
    timing.configure("cpu", args.threads)
    head = ["index", "estimator"] + [f"budget {b}" for b in ERROR_BUDGETS] + ["RMS of the values"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in error_table():
        print("| " + " | ".join(r) + " |", flush=True)
    return 0

if __name__ == "__main__":
    torch.manual_seed(0)
    raise SystemExit(main())
