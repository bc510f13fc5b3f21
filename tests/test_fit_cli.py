"""`flopscale fit` end to end: CSV and run directories in, JSON and a report out; bad input is one line.

    /work/venv/bin/pytest tests/test_fit_cli.py -q

run_fit raises FitError (one-line message) on bad input; `python -m flopscale.fitting.cli` and the
top-level CLI print `error: <msg>` on stderr and exit 2.
"""

import argparse
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from flopscale.fitting.cli import add_fit_arguments, run_fit
from flopscale.fitting.estimator import FitError
from flopscale.fitting.runs import load_runs, run_points
from flopscale.fitting.synth import law_points, write_run


def _args(argv):
    return add_fit_arguments(argparse.ArgumentParser()).parse_args(argv)


def _write_csv(path, cols, names=None):
    names = names or list(cols)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        w.writerows(zip(*[cols[k] for k in names]))
    return str(path)


@pytest.fixture
def n_csv(tmp_path):
    return _write_csv(tmp_path / "n.csv", law_points("n", N=np.logspace(6, 9, 10), seed=0))


def test_csv_json(tmp_path, n_csv, capsys):
    out = tmp_path / "fit.json"
    assert run_fit(_args(["--csv", n_csv, "--law", "n", "--json", str(out), "--n-boot", "50"])) == 0
    res = json.loads(out.read_text())
    assert res["law"] == "n" and res["n_points"] == 10
    assert set(res) >= {"law", "params", "ci95", "n_points", "loss_fn", "rmse_log"}
    assert abs(res["params"]["alpha_N"] - 0.076) < 0.003
    assert set(res["ci95"]) == {"alpha_N", "N_c"}
    assert "alpha_N" in capsys.readouterr().out


def test_csv_json_stdout_via_subprocess(n_csv):
    p = subprocess.run([sys.executable, "-m", "flopscale.fitting.cli", "--csv", n_csv, "--law", "n",
                        "--json", "-", "--n-boot", "20"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["law"] == "n"


BAD = [
    # (argv builder, expected fragment of the message)
    (lambda d: ["--csv", str(d / "missing.csv")], "no such file"),
    (lambda d: ["--csv", "{n_csv}", "--law", "zeta"], "unknown law 'zeta'"),
    (lambda d: ["--csv", "{n_csv}", "--law", "nd"], "missing D"),
    (lambda d: ["--csv", "{nan_csv}", "--law", "n"], "NaN"),
    (lambda d: ["--csv", "{neg_csv}", "--law", "n"], "must be positive"),
    (lambda d: ["--csv", "{few_csv}", "--law", "nd"], "only 3 point(s)"),
    (lambda d: ["--csv", "{text_csv}", "--law", "n"], "not a number"),
    (lambda d: [str(d / "nowhere")], "no such file or directory"),
    (lambda d: [str(d)], "no run directories"),
    (lambda d: [], "nothing to fit"),
]


@pytest.fixture
def bad_files(tmp_path, n_csv):
    d = tmp_path / "bad"
    d.mkdir()
    N = np.logspace(6, 9, 6)
    loss = (8.8e13 / N) ** 0.076
    files = {"n_csv": n_csv}
    files["nan_csv"] = _write_csv(d / "nan.csv", {"N": N, "loss": np.where(np.arange(6) == 2, np.nan, loss)})
    files["neg_csv"] = _write_csv(d / "neg.csv", {"N": N, "loss": -loss})
    files["few_csv"] = _write_csv(d / "few.csv", {"N": N[:3], "D": N[:3] * 10, "loss": loss[:3]})
    (d / "text.csv").write_text("N,loss\n1e6,abc\n1e7,3.0\n")
    files["text_csv"] = str(d / "text.csv")
    (d / "empty").mkdir()
    return d, files


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input_run_fit(bad_files, case):
    d, files = bad_files
    build, frag = BAD[case]
    argv = [a.format(**files) for a in build(d / "empty" if case == 8 else d)]
    with pytest.raises(FitError) as e:
        run_fit(_args(argv))
    msg = str(e.value)
    assert frag in msg and "\n" not in msg, msg


@pytest.mark.parametrize("case", [0, 1, 3, 7])
def test_bad_input_subprocess(bad_files, case):
    d, files = bad_files
    build, frag = BAD[case]
    argv = [a.format(**files) for a in build(d)]
    p = subprocess.run([sys.executable, "-m", "flopscale.fitting.cli", *argv], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and frag in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_corrupt_metrics_is_one_line(tmp_path):
    r = write_run(str(tmp_path / "r0"), N=1e6, steps=200, seed=0)
    with open(os.path.join(r, "metrics.jsonl"), "r+") as f:
        lines = f.readlines()
        lines[5] = "{not json\n"
        f.seek(0)
        f.writelines(lines)
    with pytest.raises(FitError, match=r"metrics.jsonl:6: not valid JSON"):
        run_fit(_args([str(tmp_path)]))


def test_run_points_choices(tmp_path):
    r = write_run(str(tmp_path / "s" / "a"), N=2e6, batch_seqs=16, n_ctx=128, steps=400, eval_every=100,
                  n_train_tokens=500_000, seed=0)
    run = load_runs([str(tmp_path / "s")])[0]
    best, final = run_points([run], "best"), run_points([run], "final")
    assert best["N"][0] == 2e6 and best["B"][0] == 16 * 128
    assert final["S"][0] == 400 and final["C"][0] == pytest.approx(6 * 2e6 * 400 * 16 * 128)
    # D counts unique tokens: 400 steps * 2048 tokens = 819200 > 500000 in the dataset
    assert final["D"][0] == 500_000
    assert best["loss"][0] <= final["loss"][0]


def test_sweep_report(tmp_path):
    """A synthetic sweep: 5 sizes x 2 batch sizes, noise-scale logged; auto fits and a full report."""
    sweep = tmp_path / "sweep"
    i = 0
    for N in np.logspace(5, 7, 5):
        for b in (16, 64):
            steps = int(3000 * (1 + 1.5e5 / (b * 1024)))
            log_every = max(1, steps // 300)
            write_run(str(sweep / f"n{i}_b{b}"), N=N, batch_seqs=b, steps=steps, n_ctx=1024, log_every=log_every,
                      eval_every=max(1, steps // 20), gns_every=4 * log_every, n_train_tokens=int(3e8), seed=i)
            i += 1
    out = tmp_path / "report"
    assert run_fit(_args([str(sweep), "--out", str(out), "--n-boot", "30", "--quiet"])) == 0
    files = set(os.listdir(out))
    assert {"fits.json", "report.md", "n.png", "c.png", "ns.png", "bcrit.png", "frontier.png"} <= files, files
    fj = json.loads((out / "fits.json").read_text())
    laws = {f["name"] for f in fj["fits"]}
    assert {"n", "c", "ns", "bcrit"} <= laws
    bc = [f for f in fj["fits"] if f["name"] == "bcrit"][0]
    # noise scale logged as B_crit(L) * 5% log-normal noise: the paper's alpha_B comes back
    assert abs(bc["params"]["alpha_B"] - 0.21) < 0.01
    md = (out / "report.md").read_text()
    assert "| alpha_N |" in md and "paper" in md and "PF-days" in md and "Compute-efficient allocation" in md
    # every run passes over its 3e8-token dataset, so D takes one value: d, nd, chinchilla are skipped, saying why
    assert "Not fitted" in md and "`nd`" in md and "distinct value" in md


def test_report_warns_when_exponents_inseparable(tmp_path):
    """Three sizes over half a decade: the report must say the data cannot separate exponents."""
    NN, DD = np.meshgrid([1e8, 1.8e8, 3e8], [2e9, 4e9, 6e9])
    cols = law_points("chinchilla", N=NN.ravel(), D=DD.ravel(), seed=0)
    path = _write_csv(tmp_path / "few.csv", cols)
    out = tmp_path / "rep"
    run_fit(_args(["--csv", path, "--law", "chinchilla", "--grid", "coarse", "--n-boot", "30", "--out", str(out),
                   "--quiet"]))
    md = (out / "report.md").read_text()
    assert "cannot" in md and "separate" in md
    fj = json.loads((out / "fits.json").read_text())
    assert fj["fits"][0]["warnings"]
