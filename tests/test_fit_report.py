"""The report of a whole scaling study: panels, a frontier that never rises, the exponent table in
both compute conventions, the embedding-included view, per-law caveats, cooldown branches.

    python -m pytest -q tests/test_fit_report.py
"""

import csv
import json
import os
import warnings

import numpy as np
import pytest

from flopscale.fitting import fit_and_report
from flopscale.fitting.frontier import lower_envelope, run_curve
from flopscale.fitting.laws import PAPER_ALLOCATION_HOFFMANN, PAPER_SOURCES
from flopscale.fitting.panels import PANELS
from flopscale.fitting.runs import load_runs
from flopscale.fitting.synth import law_points, write_run, write_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    runs = write_study(str(root), rows=60)
    out = root / "report"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        payload = fit_and_report([runs], out=str(out), n_boot=20, grid="coarse")
    return payload, out, runs


def test_every_panel_file_and_the_overview(study):
    payload, out, _ = study
    for name in list(PANELS.values()) + ["overview.png", "fits.json", "report.md"]:
        p = out / name
        assert p.is_file() and p.stat().st_size > 5000, name
        if name.endswith(".png"):
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(payload["panels"]) == {f"panel{k}" for k in PANELS} | {"overview"}
    md = (out / "report.md").read_text()
    assert "![overview](overview.png)" in md
    for name in PANELS.values():
        assert f"({name})" in md
    # the existing sections still there
    for needle in ("| fit | formula |", "Not fitted", "## `n`:", "Compute-efficient allocation",
                   "approaches 1, 2, 3", "Compute-efficient frontier"):
        assert needle in md, needle
    assert not [p for p in os.listdir(out) if ".tmp" in p]


def test_frontier_never_rises_in_fits_json(study):
    _, out, _ = study
    fj = json.loads((out / "fits.json").read_text())
    for key in ("frontier", "frontier_all"):
        loss = np.array(fj[key]["envelope"]["loss"])
        C = np.array(fj[key]["envelope"]["C"])
        assert loss.size > 10 and np.all(np.diff(C) > 0)
        assert np.all(np.diff(loss) <= 0), key


def _plain_min(runs, grid):
    """The per-C minimum over the curves that pass through C (what the envelope used to be)."""
    best = np.full(grid.size, np.inf)
    for r in runs:
        C, L = run_curve(r)
        inside = (grid >= C.min()) & (grid <= C.max())
        best[inside] = np.minimum(best[inside], np.exp(np.interp(np.log(grid[inside]), np.log(C), np.log(L))))
    return best


def test_running_minimum_removes_the_saw_tooth(tmp_path):
    # one size at three cosine lengths and a second size: each short run's cooldown ends below the
    # longer runs at the same C, so the plain per-C minimum rises right after each short run stops
    for i, steps in enumerate((500, 1000, 2000, 4000)):
        write_run(str(tmp_path / f"a{steps}"), N=1e6, batch_seqs=32, steps=steps, log_every=10, eval_every=25,
                  use_bcrit=False, schedule="cosine", lr_bump=0.05, seed=i)
    write_run(str(tmp_path / "b"), N=3e6, batch_seqs=32, steps=3000, log_every=10, eval_every=25,
              use_bcrit=False, schedule="cosine", lr_bump=0.05, seed=9)
    runs = load_runs([str(tmp_path)])
    env = lower_envelope(runs)
    plain = _plain_min(runs, env["C"])
    assert np.any(np.diff(plain[np.isfinite(plain)]) > 1e-4), "the test runs should produce a saw-tooth"
    assert np.all(np.diff(env["loss"]) <= 0)
    assert np.all(env["loss"] <= plain * (1 + 1e-12))
    assert env["carried"].any()
    fits = fit_and_report([str(tmp_path)], laws="c", n_boot=0)
    assert np.all(np.diff(fits["frontier"]["envelope"]["loss"]) <= 0)


def test_exponent_table_both_conventions_and_papers(study):
    payload, out, _ = study
    rows = payload["exponents"]
    by = {(r["quantity"], r["compute"]): r for r in rows}
    for conv in ("nonembedding", "all"):
        assert ("N_opt ~ C^a, approach 1 (frontier)", conv) in by
        assert ("D_opt ~ C^b, approach 1 (frontier)", conv) in by
        assert ("N_opt ~ C^a, approach 3 (L(N, D) fit)", conv) in by
    assert ("N_opt ~ C^a, approach 3 (L(N, D) fit)", "6ND") in by
    assert ("N_opt ~ C^a, approach 2 (isoFLOP)", "nonembedding") in by
    a2 = by[("N_opt ~ C^a, approach 2 (isoFLOP)", "nonembedding")]
    assert a2["hoffmann"] == PAPER_ALLOCATION_HOFFMANN["approach 2"]["a"] and a2["kaplan"] == 0.73
    a3 = by[("N_opt ~ C^a, approach 3 (L(N, D) fit)", "6ND")]
    assert a3["hoffmann"] == 0.46
    assert by[("D_opt ~ C^b, approach 3 (L(N, D) fit)", "6ND")]["hoffmann"] == 0.54
    q = {r["quantity"] for r in rows}
    for need in ("alpha_N", "alpha_N (embeddings included)", "alpha_D", "alpha_C", "alpha_N of L(N, D)",
                 "alpha_D of L(N, D)", "alpha_B of B_crit(L)", "B_star of B_crit(L) (tokens)", "Chinchilla alpha (N)",
                 "Chinchilla beta (D)", "Chinchilla E (nats/token)"):
        assert need in q, need
    assert by[("Chinchilla E (nats/token)", None)]["hoffmann"] == 1.69
    assert {r["compute"] for r in rows if r["quantity"] == "alpha_C"} == {"nonembedding", "all"}
    for r in rows:
        if r["ci95"] is not None:
            assert len(r["ci95"]) == 2
    md = (out / "report.md").read_text()
    assert "## Fitted exponents next to Kaplan et al. 2020 and Hoffmann et al. 2022" in md
    assert "C = 6ND" in md and "Table 2" in md and PAPER_SOURCES


def test_embedding_included_view(study):
    payload, out, runs = study
    fits = {f["name"]: f for f in payload["fits"]}
    t, n = fits["n_total"], fits["n"]
    assert t["law"] == "n" and "embeddings included" in t["N_counts"] and "N_counts" not in n
    totals = sorted({json.loads(open(os.path.join(runs, d, "config.json")).read())["n_params_total"]
                     for d in os.listdir(runs)})
    assert t["ranges"]["N"] == [totals[0], totals[-1]]
    assert t["n_points"] == n["n_points"] and t["ci95"]["alpha_N"] is not None
    md = (out / "report.md").read_text()
    assert "## `n_total`" in md and "Fig. 6" in md


def test_caveat_lines_from_the_data(study):
    payload, out, _ = study
    cav = payload["caveats"]
    for f in payload["fits"]:
        assert f["name"] in cav, f["name"]
    assert "sizes over" in cav["n"] and "decades" in cav["n"] and "interval" in cav["n"]
    share = payload["study"]["nonembedding_share"]
    assert 0 < share["min"] < share["max"] < 1
    assert f"median {100 * share['median']:.0f}%" in cav["c"] and "outside the paper's C" in cav["c"]
    assert "slices used" in cav["isoflop"]
    assert "approach 1 (nonembedding)" in cav and "approach 3" in cav
    md = (out / "report.md").read_text()
    assert "## What this study can and cannot tell" in md
    assert "non-embedding share of compute (flops / flops_total)" in md
    for k in cav:
        assert f"- `{k}`:" in md


def test_cooldown_branches_are_named(study):
    payload, out, _ = study
    cds = payload["study"]["cooldowns"]
    assert len(cds) == 1 and cds[0]["run"].endswith("_cool" + str(cds[0]["step"]))
    md = (out / "report.md").read_text()
    assert "## Points from cooldown branches" in md and f"`{cds[0]['run']}`" in md and "diamonds" in md


def test_report_from_a_table_at_a_fixed_token_budget(tmp_path):
    N = np.logspace(5, 7, 7)
    cols = law_points("n", N=N, seed=1)
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["N", "N_total", "D", "C", "loss", "name"])
        for i, (n, l) in enumerate(zip(cols["N"], cols["loss"])):
            w.writerow([n, n + 4096 * 64, 1e8, 6 * n * 1e8, l, f"r{i}"])
    out = tmp_path / "rep"
    payload = fit_and_report(csv=str(path), out=str(out), laws="n,c", n_boot=20)
    names = {f["name"] for f in payload["fits"]}
    assert {"n", "n_total"} <= names
    for name in list(PANELS.values()) + ["overview.png"]:
        assert (out / name).is_file(), name
    assert "fixed budget" in payload["caveats"]["n"] and "not at convergence" in payload["caveats"]["n"]
    md = (out / "report.md").read_text()
    assert "not known from it" in md  # a table has no flops_total: the share is unknown, said so
