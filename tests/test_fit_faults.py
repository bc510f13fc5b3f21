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
from flopscale.fitting.fit import FitError
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


