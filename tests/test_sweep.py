"""Sweeps: the presets' grids, kill-and-resume of a sweep (no finished run lost, the interrupted
one resumed from its checkpoint), the fit and report at the end, and one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import math
import pytest

from flopscale.engine import ModelConfig, TrainConfig
from flopscale.engine.data import stdlib_sample
from flopscale.engine.presets import PRESETS, get_preset
from flopscale.engine.sweep import run_flops

@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory):
    """A test-only preset file: three sizes, 40 steps each, on a few stdlib files (seconds)."""
    d = tmp_path_factory.mktemp("sweepdata")
    stdlib_sample(d, n_files=10)
    p = d / "test-tiny.json"
    p.write_text(json.dumps({
        "name": "test-tiny", "description": "three tiny sizes for the tests", "n_ctx": 16, "tokens": 40 * 4 * 16,
        "models": [[1, 16, 2], [1, 24, 2], [2, 32, 2]], "evals": 8,
        "train": {"data": str(d), "tokenizer": "bpe-300", "batch_size": 4, "grad_accum": 2, "noise_scale": True,
                  "lr": 0.003, "eval_batches": 2}}))
    return str(p)


def _sweep(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "flopscale.cli", "sweep", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _rows(run_dir):
    return Path(run_dir, "metrics.jsonl").read_text().splitlines()


def test_kill_and_rerun_loses_no_finished_run(tiny_preset, tmp_path):
    out = tmp_path / "sw"
    args = ["--preset", tiny_preset, "--out", str(out), "--n-boot", "20"]
    p = _sweep(*args, start_new_session=True)
    deadline, killed_in = time.time() + 240, None
    while time.time() < deadline and p.poll() is None:
        # kill once one run is finished and the next is past its first checkpoint
        try:
            man = json.loads((out / "sweep.json").read_text())
        except (OSError, json.JSONDecodeError):
            man = None
        if man and man["runs"][0]["status"] == "done":
            nxt = out / man["runs"][1]["dir"]
            if (nxt / "ckpt.pt").exists() and (nxt / "metrics.jsonl").exists() and len(_rows(nxt)) >= 7:
                killed_in = nxt
                break
        time.sleep(0.03)
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
    assert killed_in is not None, "the sweep finished (or failed) before it could be killed"
    finished = out / man["runs"][0]["dir"]
    before = {f: (finished / f).read_bytes() for f in ("metrics.jsonl", "flops.json", "config.json")}
    mtime = (finished / "ckpt.pt").stat().st_mtime_ns
    ck_step = json.loads((killed_in / "flops.json").read_text())["steps"]  # written with each checkpoint
    kept = _rows(killed_in)[:ck_step]
    assert 0 < ck_step < 40

    p = _sweep(*args)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr[-3000:]
    assert "resuming: 1 of 3 runs already finished, 1 interrupted" in stderr
    # the finished run was not touched; the interrupted one kept its rows up to its checkpoint
    assert {f: (finished / f).read_bytes() for f in before} == before
    assert (finished / "ckpt.pt").stat().st_mtime_ns == mtime
    rows = _rows(killed_in)
    assert rows[:ck_step] == kept
    assert [json.loads(r)["step"] for r in rows] == list(range(1, 41))

    man = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in man["runs"]] == ["done"] * 3 and man["preset"] == "test-tiny"
    assert all(r["final"]["step"] == 40 for r in man["runs"])
    assert any(r["final"]["grad_noise_scale_tokens"] for r in man["runs"])  # logged, in tokens
    for f in ("fits.json", "report.md", "n.png", "frontier.png"):
        assert (out / "report" / f).is_file(), f
    fits = {f["name"]: f for f in json.loads((out / "report" / "fits.json").read_text())["fits"]}
    assert fits["n"]["n_points"] == 3 and "bcrit" in fits
    assert "alpha_N" in stdout and "paper 0.076" in stdout
    assert man["fit"]["alpha_N"] == fits["n"]["params"]["alpha_N"]

    # a third run has nothing to train, and says so
    p = _sweep(*args, "--no-fit")
    _, stderr = p.communicate(timeout=300)
    assert p.returncode == 0 and "resuming: 3 of 3 runs already finished" in stderr


def _one_line_error(p, *needles):
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_preset_and_bad_sweep_dir(tiny_preset, tmp_path):
    _one_line_error(_sweep("--preset", "nope", "--out", str(tmp_path / "a")), "unknown sweep preset 'nope'", "cpu-tiny")
    (tmp_path / "file").write_text("x")
    _one_line_error(_sweep("--preset", tiny_preset, "--out", str(tmp_path / "file")), "not a directory")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    _one_line_error(_sweep("--preset", tiny_preset, "--out", str(tmp_path / "busy")), "holds no sweep.json")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "sweep.json").write_text(json.dumps({"preset": "cpu-tiny"}))
    _one_line_error(_sweep("--preset", tiny_preset, "--out", str(tmp_path / "other")), "preset 'cpu-tiny'")
    bad = tmp_path / "bad.json"
    bad.write_text("{\"name\": 1}")
    _one_line_error(_sweep("--preset", str(bad), "--out", str(tmp_path / "b")), "not a valid sweep preset")


# The paper's other systems vary shape, architecture and lr on purpose; tests/test_paper_presets.py
# holds their designs.
PAPER_SYSTEMS = ("cpu-shape", "cpu-arch", "cpu-lr")


def test_preset_grids():
    for name, p in PRESETS.items():
        runs = p.runs()
        Ns = sorted({ModelConfig(**r["model"]).N for r in runs})
        assert math.log10(Ns[-1] / Ns[0]) >= 1.5 or name in ("h100-bcrit", "h100-nd", "cpu-smoke") + PAPER_SYSTEMS, name
        for r in runs:
            m = r["model"]
            if name not in PAPER_SYSTEMS:
                # aspect ratio near the paper's; head dim 8-64 (the CPU study's smallest sizes,
                # d_model 16 and 24 with two heads, go below the paper's 16)
                assert 16 <= m["d_model"] / m["n_layer"] <= 64, (name, m)
                assert 8 <= m["d_model"] // m["n_heads"] <= 64, (name, m)
            TrainConfig.from_dict(r["train"])  # every run's config is valid
            # on one device the noise scale needs two batch sizes from gradient accumulation
            assert not r["train"]["noise_scale"] or r["train"]["grad_accum"] >= 2, (name, r["name"])
    assert len({r["train"]["max_tokens"] for r in PRESETS["h100-nd"].runs()}) == 4
    assert len({r["train"]["batch_size"] for r in PRESETS["h100-bcrit"].runs()}) == 6
    assert PRESETS["h100"].models[-1] == (12, 768, 12)  # GPT-2 small's shape
    assert get_preset("cpu-tiny").train["noise_scale"]
    smoke = PRESETS["cpu-smoke"]  # a set-up check: a handful of tiny runs on one thread each
    assert 3 <= len(smoke.runs()) <= 6 and smoke.cpu_threads == 1 and smoke.train["device"] == "cpu"


def test_run_flops_matches_the_ledger_of_a_real_run(tmp_path):
    """The cost model used for the ETA and --dry-run equals what a run's ledger books."""
    from flopscale.engine.train import Trainer

    tc = TrainConfig(data=stdlib_sample(tmp_path / "c", n_files=6), tokenizer="bpe-300", batch_size=4, grad_accum=2, steps=3, eval_every=3)
    tr = Trainer(ModelConfig(n_layer=1, d_model=16, n_heads=2, n_ctx=16), tc, tmp_path / "r", progress=False)
    tr.run()
    c = run_flops(tr.mc, tc)
    assert c["nonembedding"] == tr.ledger.total("model")
    assert c["all"] == tr.ledger.total("model", rows="all")


def test_dry_run_prints_estimate():
    p = _sweep("--preset", "h100", "--out", "unused", "--dry-run")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "L12-d768" in out and "estimated" in out and "assumed" in out


def test_dry_run_json():
    p = _sweep("--preset", "cpu-smoke", "--out", "unused", "--dry-run", "--json")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    grid = json.loads(out)  # stdout is the JSON object alone
    runs = grid["runs"]
    assert [r["name"] for r in runs] == [r["name"] for r in PRESETS["cpu-smoke"].runs()]
    for r in runs:
        assert {"name", "N", "model", "train", "expected_flops"} <= set(r)
        assert r["N"] == ModelConfig(**r["model"]).N
        TrainConfig.from_dict(r["train"])
        assert r["expected_flops"]["all"] == run_flops(ModelConfig(**r["model"]), TrainConfig.from_dict(r["train"]))["all"]
    assert grid["total_flops"] == sum(r["expected_flops"]["all"] for r in runs)


@pytest.mark.parametrize("args,needle", [
    (["--workers", "2"], "--workers takes a positive count, with --executor local"),
    (["--no-wait"], "--no-wait needs --executor slurm"),
    (["--slurm-partition", "gpu"], "--slurm-partition needs --executor slurm"),
    (["--executor", "slurm", "--slurm-time", "soon"], "--slurm-time"),
    (["--executor", "slurm", "--slurm-option", "=x"], "--slurm-option"),
    (["--json"], "--json goes with --dry-run"),
])
def test_executor_flag_errors(tmp_path, args, needle):
    _one_line_error(_sweep("--preset", "cpu-smoke", "--out", str(tmp_path / "s"), *args), needle)
