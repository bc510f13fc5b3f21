"""Faults on the fitting side (issue 20): a corrupted run log, paths that cannot be written, a full
disk, a CSV with a byte-order mark, values no fit can use. Each ends in one `error:` line.

    python -m pytest -q tests/test_fit_faults.py

The full-disk case mounts a real 64 KiB tmpfs (root only; skipped with the reason otherwise).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pytest

from flopscale.fitting.cli import add_fit_arguments, run_fit
from flopscale.fitting.estimator import FitError
from flopscale.fitting.runs import load_run, read_csv
from flopscale.fitting.synth import law_points, write_run


def _args(argv):
    return add_fit_arguments(argparse.ArgumentParser()).parse_args(argv)


def _cli(*argv, top=False):
    cmd = [sys.executable, "-m", "flopscale.cli", "fit"] if top else [sys.executable, "-m", "flopscale.fitting.cli"]
    return subprocess.run(cmd + [str(a) for a in argv], capture_output=True, text=True, timeout=120)


def _one_error_line(p, frag):
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and frag in lines[0], p.stderr
    return lines[0]


def _csv(path, cols, bom=False):
    names = list(cols)
    rows = [",".join(names)] + [",".join(repr(float(v)) for v in r) for r in zip(*[cols[k] for k in names])]
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + ("\n".join(rows) + "\n").encode())
    return str(path)


@pytest.fixture
def n_csv(tmp_path):
    return _csv(tmp_path / "n.csv", law_points("n", N=np.logspace(6, 9, 8), seed=0))


def _rewrite_steps(run_dir, fn):
    m = os.path.join(run_dir, "metrics.jsonl")
    rows = [json.loads(l) for l in open(m)]
    with open(m, "w") as f:
        for r in fn(rows):
            f.write(json.dumps(r) + "\n")


def test_duplicated_steps_refused_naming_the_run(tmp_path):
    r = write_run(str(tmp_path / "sweep" / "r0"), N=1e6, steps=60, eval_every=20, seed=0)
    write_run(str(tmp_path / "sweep" / "r1"), N=4e6, steps=60, eval_every=20, seed=1)
    load_run(r)  # clean log: fine
    # a restart that appended to the old log: steps 1..60 then 1..12 again
    _rewrite_steps(r, lambda rows: rows + [dict(x) for x in rows[:12]])
    with pytest.raises(FitError) as e:
        load_run(r)
    msg = str(e.value)
    assert "r0" in msg and "non-increasing step 1" in msg and "\n" not in msg, msg
    line = _one_error_line(_cli(tmp_path / "sweep"), "r0/metrics.jsonl")
    assert "non-increasing" in line


def test_repeated_step_refused(tmp_path):
    r = write_run(str(tmp_path / "r0"), N=1e6, steps=40, eval_every=20, seed=0)
    _rewrite_steps(r, lambda rows: rows[:10] + [dict(rows[9])] + rows[10:])
    with pytest.raises(FitError, match=r"duplicated step 10 at row 11 \(after step 10\)"):
        load_run(r)


def test_unwritable_outputs_fail_before_the_fit(tmp_path, n_csv):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [(["--out", a_file], "is a file, not a directory"),
             (["--out", a_file / "sub" / "report"], f"{a_file} is a file, not a directory"),
             (["--json", a_file / "x.json"], f"{a_file} is a file, not a directory"),
             (["--json", tmp_path], "is a directory, not a file"),
             (["--json", tmp_path / "nowhere" / "x.json"], "no such directory")]
    for extra, frag in cases:
        with pytest.raises(FitError) as e:
            run_fit(_args(["--csv", n_csv, "--law", "n", "--n-boot", "5", "--quiet"] + [str(x) for x in extra]))
        assert frag in str(e.value) and "\n" not in str(e.value), (extra, str(e.value))
    assert a_file.read_text() == "x"
    # through the top-level CLI: one line, no traceback
    _one_error_line(_cli("--csv", n_csv, "--law", "n", "--out", a_file / "r", top=True), "is a file")
    _one_error_line(_cli("--csv", n_csv, "--law", "n", "--json", a_file / "x.json", top=True), "is a file")


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_is_one_line(tiny_fs, n_csv):
    # the report's PNGs overflow 64 KiB
    line = _one_error_line(_cli("--csv", n_csv, "--law", "n", "--n-boot", "5", "--quiet", "--out", tiny_fs / "rep"),
                           "no space left on device writing")
    assert str(tiny_fs) in line
    # every file the report did write is whole (atomic writes), and no temporary file is left
    assert not [p for p in (tiny_fs / "rep").iterdir() if ".tmp" in p.name]
    shutil.rmtree(tiny_fs / "rep")
    # --json onto a full disk: fill it first
    try:
        with open(tiny_fs / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass
    line = _one_error_line(_cli("--csv", n_csv, "--law", "n", "--n-boot", "5", "--quiet",
                                "--json", tiny_fs / "fit.json", top=True), "no space left on device writing")
    assert str(tiny_fs / "fit.json") in line
    assert not any(p.name.startswith(".fit.json.tmp") for p in tiny_fs.iterdir())


def test_csv_with_byte_order_mark(tmp_path):
    cols = law_points("n", N=np.logspace(6, 9, 8), seed=0)
    plain = run_fit_json(tmp_path, _csv(tmp_path / "plain.csv", cols))
    bom = run_fit_json(tmp_path, _csv(tmp_path / "bom.csv", cols, bom=True))
    assert list(read_csv(str(tmp_path / "bom.csv"))) == ["N", "loss"]
    assert bom["params"] == plain["params"] and bom["n_points"] == 8


def run_fit_json(tmp_path, csv_path):
    out = tmp_path / (os.path.basename(csv_path) + ".json")
    assert run_fit(_args(["--csv", csv_path, "--law", "n", "--n-boot", "5", "--quiet", "--json", str(out)])) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("value,frag", [(1e300, "outside the range a fit can use"),
                                        (1e-300, "outside the range a fit can use"),
                                        (float("inf"), "NaN or infinite"),
                                        (0.0, "must be positive")])
def test_values_no_fit_can_use(tmp_path, value, frag):
    cols = law_points("n", N=np.logspace(6, 9, 8), seed=0)
    cols["N"][3] = value
    with pytest.raises(FitError) as e:
        run_fit(_args(["--csv", _csv(tmp_path / "x.csv", cols), "--law", "n", "--n-boot", "5", "--quiet"]))
    assert frag in str(e.value) and "'N'" in str(e.value) and "row 3" in str(e.value), str(e.value)


def test_not_utf8_csv(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes("N,loss,note\n1e6,3.0,caf\xe9\n".encode("latin-1"))
    with pytest.raises(FitError, match="not UTF-8"):
        read_csv(str(p))


def _chin_table(n, seed=0):
    side = int(np.ceil(np.sqrt(n)))
    NN, DD = np.meshgrid(np.logspace(7, 11, side), np.logspace(9, 13, side))
    return law_points("chinchilla", N=NN.ravel()[:n], D=DD.ravel()[:n], noise=0.01, seed=seed)


def test_screened_start_grid_finds_the_full_grids_optimum(monkeypatch):
    """Above FULL_GRID_MAX_POINTS the grid is screened by its objective (all starts at once) and
    L-BFGS runs from the best SCREEN_KEEP: the same optimum as L-BFGS from every start."""
    import importlib
    est = importlib.import_module("flopscale.fitting.estimator")
    cols = _chin_table(400)
    assert 400 > est.FULL_GRID_MAX_POINTS and len(est._coarse_hoffmann()) > est.SCREEN_KEEP
    calls = []
    real = est.minimize
    monkeypatch.setattr(est, "minimize", lambda *a, **k: calls.append(1) or real(*a, **k))
    screened = est.fit("chinchilla", cols, grid="coarse", n_boot=0, holdout=False)
    n_screened = len(calls)
    monkeypatch.setattr(est, "FULL_GRID_MAX_POINTS", 10 ** 9)
    full = est.fit("chinchilla", cols, grid="coarse", n_boot=0, holdout=False)
    # L-BFGS from SCREEN_KEEP starts plus the polish of the best distinct optima, not from all 243
    assert n_screened <= est.SCREEN_KEEP + 2 * est.MAX_GRID_STARTS_BOOT + 2 < len(calls) - n_screened
    assert screened["n_starts"] == full["n_starts"] == len(est._coarse_hoffmann())
    for k, v in full["params"].items():
        assert screened["params"][k] == pytest.approx(v, rel=1e-6), k
    assert screened["objective"] <= full["objective"] * (1 + 1e-9)


def test_long_fit_shows_progress_on_stderr(monkeypatch, capsys):
    import importlib
    est = importlib.import_module("flopscale.fitting.estimator")
    monkeypatch.setattr(est, "PROGRESS_DELAY_S", 0.0)
    est.fit("chinchilla", _chin_table(300), grid="coarse", n_boot=3, holdout=False, progress=True)
    err = capsys.readouterr().err
    assert "chinchilla: starts" in err and "chinchilla: bootstrap" in err
    est.fit("chinchilla", _chin_table(300), grid="coarse", n_boot=3, holdout=False, progress=False)
    assert capsys.readouterr().err == ""
