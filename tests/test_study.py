"""The main job's study design (cpu-tiny): the grid has what the laws need, and a shrunken copy
of it, run end to end, gives isoFLOP slices with interior minima, a frontier that never rises,
and the same numbers on two local workers as inline."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flopscale.engine import ModelConfig, TrainConfig
from flopscale.engine.data import stdlib_sample
from flopscale.engine.presets import get_preset
from flopscale.fitting.api import fixed_d_runs


def test_cpu_tiny_design():
    p = get_preset("cpu-tiny")
    runs = p.runs()
    by = {r["name"]: r for r in runs}
    Ns = sorted({ModelConfig(**r["model"]).N for r in runs})
    assert len(Ns) >= 6 and math.log10(Ns[-1] / Ns[0]) >= 2  # 6+ sizes over 2+ decades
    assert len(p.budgets) >= 3 and all(len(m) >= 4 for _, m in p.budgets)  # 3+ slices of 4+ sizes
    for r in runs:
        tc = TrainConfig.from_dict(r["train"])
        assert tc.steps >= 100 and tc.noise_scale and tc.schedule == "wsd", r["name"]
        if r.get("branch_of"):  # a cooldown branch: its parent keeps the checkpoint it starts from
            parent, step = r["branch_of"]
            assert str(step) in by[parent]["train"]["keep_steps"].split(",")
            assert by[parent]["train"]["steps"] > tc.steps
    fixed = [r for r in runs if "D328k" in r["name"]]
    assert len({r["model"]["d_model"] * 10 + r["model"]["n_layer"] for r in fixed}) == len(p.models)  # L(N) at one D


def test_fixed_d_runs_picks_the_shared_d():
    pts = {"N": np.array([1e3, 1e3, 1e4, 1e4, 1e5, 1e5, 1e6]), "D": np.array([5, 9, 5, 7, 5, 8, 5.]),
           "loss": np.array([3, 2.9, 2.5, 2.4, 2.2, 2.1, 2.0])}
    assert fixed_d_runs(pts).tolist() == [0, 2, 4, 6]
    one_d_each = {k: v[[0, 2, 4, 6]] for k, v in pts.items()}
    assert fixed_d_runs(one_d_each) is None  # lowest per N is the same thing then


@pytest.fixture(scope="module")
def shrunk(tmp_path_factory):
    """cpu-tiny's structure at toy scale: three budgets over seven sizes, a fixed D, wsd ladders."""
    d = tmp_path_factory.mktemp("study")
    data = stdlib_sample(d / "data", n_files=12)
    p = d / "shrunk.json"
    p.write_text(json.dumps({
        "name": "shrunk", "description": "cpu-tiny at toy scale", "n_ctx": 16, "tokens": 0, "evals": 4,
        # N_opt near 450, 650, 1100 at these budgets (measured): each budget's sizes bracket it
        "models": [[1, 4, 2], [1, 6, 2], [1, 8, 2], [1, 12, 2], [1, 16, 2], [1, 24, 2], [2, 24, 2]],
        "budgets": [[2.4e8, [0, 1, 2, 3, 4]], [5e8, [0, 1, 2, 3, 4, 5]], [1e9, [1, 2, 3, 4, 5, 6]]],
        "fixed_tokens": 200 * 4 * 16, "ladder": True, "lr_by_size": True, "cpu_threads": 1, "n_boot": 20,
        "train": {"data": data, "tokenizer": "bpe-300", "batch_size": 4, "grad_accum": 2, "noise_scale": True,
                  "lr": 0.01, "warmup": 10, "eval_batches": 32}}))
    return str(p)


def _sweep(preset, out, *extra):
    r = subprocess.run([sys.executable, "-m", "flopscale.cli", "sweep", "--preset", preset, "--out", str(out),
                        "--quiet", *extra], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return None if "--no-fit" in extra else json.loads((Path(out) / "report" / "fits.json").read_text())


def test_shrunken_study_end_to_end(shrunk, tmp_path):
    fits = _sweep(shrunk, tmp_path / "inline")
    # the same grid on two workers, not fitted again: the fit reads the runs in the parent whatever the
    # executor, so runs equal to the bit are the whole check
    _sweep(shrunk, tmp_path / "local", "--executor", "local", "--workers", "2", "--no-fit")
    names = sorted(p.name for p in (tmp_path / "inline" / "runs").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "local" / "runs").iterdir())
    for n in names:  # parallel and serial runs agree bit for bit
        a = (tmp_path / "inline" / "runs" / n / "metrics.jsonl").read_text().splitlines()
        b = (tmp_path / "local" / "runs" / n / "metrics.jsonl").read_text().splitlines()
        key = lambda ln: {k: v for k, v in json.loads(ln).items() if k not in ("tokens_per_s", "mfu")}  # noqa: E731
        assert [key(x) for x in a] == [key(x) for x in b], n
    by = {f.get("name", f["law"]): f for f in fits["fits"]}
    assert {"n", "nd", "chinchilla", "c", "isoflop", "bcrit"} <= set(by), sorted(by)
    used = [s for s in by["isoflop"]["slices"] if "note" not in s]
    assert len(used) >= 3, by["isoflop"]["slices"]  # the three budgets' minima are interior
    env = fits["frontier"]["envelope"]["loss"]
    assert all(b <= a for a, b in zip(env, env[1:]))  # the frontier never rises
    # the report's outlook: plans at 10x and 100x the largest fitted C, a backtest of the largest budget
    o = fits["outlook"]
    plans = o["plans"]
    assert [p["budget"] / plans[0]["budget"] for p in plans] == [1.0, 10.0]
    for p in plans:
        lo, hi = p["loss"]["pi90"]
        assert lo < p["loss"]["value"] < hi and "no bootstrap draws" not in p["loss"]["pi90_method"]
        # toy N (d_model 4-24): a shape within 5% of N_opt may not exist; then the plan says so
        assert (p["model"] is None and p["warnings"]) or (p["wall_time_s"] > 0 and p["model"]["N"] > 0), p
    bt = o["backtest"]
    assert bt["n_train"] >= 3 and bt["n_test"] >= 1 and 0 <= bt["coverage90"] <= 1 and bt["mape"] >= 0
    md = (tmp_path / "inline" / "report" / "report.md").read_text()
    assert "## Beyond the study" in md and "Backtest: the largest budget" in md


def test_resliced_points_interpolate_each_size_to_the_other_conventions_budget():
    """A grid laid out at equal non-embedding C: in all-FLOPs C each size sits at its own C
    (embedding share differs by size); reslicing puts every bracketing size at the budget's C,
    its loss interpolated between its own runs (exact for a loss linear in log-log)."""
    from flopscale.fitting.api import resliced_points

    sizes = np.array([1e3, 3e3, 1e4, 3e4])
    share = np.array([0.3, 0.5, 0.7, 0.9])          # non-embedding share of each size's FLOPs
    budgets = np.array([1e10, 4e10, 1.6e11])
    N = np.repeat(sizes, budgets.size)
    C1 = np.tile(budgets, sizes.size)
    C2 = C1 / np.repeat(share, budgets.size)
    loss = 10 * C2 ** -0.05 * N ** 0.01              # log-linear in log C2 at fixed N
    D = C2 / (6 * N)
    prim = {"N": N, "C": C1, "loss": loss, "D": D}
    other = {"N": N, "C": C2, "loss": loss, "D": D}
    out = resliced_points(prim, other, slice_tol=0.1, min_runs=2)
    assert out is not None
    for c in np.unique(out["C"]):
        m = out["C"] == c
        assert np.allclose(out["loss"][m], 10 * c ** -0.05 * out["N"][m] ** 0.01, rtol=1e-12)
        assert np.allclose(out["D"][m], c / (6 * out["N"][m]), rtol=1e-12)
    # no size is extrapolated: the smallest budget in C2 lies below the lowest-share size's runs
    lo = np.exp(np.mean(np.log(budgets[0] / share)))
    assert sizes[0] not in out["N"][np.isclose(out["C"], lo)]
    assert resliced_points(prim, other, slice_tol=0.1, min_runs=5) is None  # too few sizes per budget
