"""Faults a real cluster produces, tried on real processes (issue 20): kill -9 at chosen points, a
full disk (a real tmpfs), a hostile checkpoint or preset, a file where a directory belongs.  Every
case ends in one ``error:`` line and a non-zero exit, or in a run bit for bit the uninterrupted
one (same rows, no duplicates, same flops.json, same weights), with nothing left corrupted.

Kills: ``os.kill(pid, SIGKILL)`` from outside at a point found by polling the run's files where
the window is wide; where it is a few microseconds (between writing ckpt-S.pt and ckpt.pt, after
the final checkpoint and before flops.json) the process kills itself with a real SIGKILL through
the documented hook FLOPSCALE_KILL_AFTER=FILE[@STEP] (engine/rundir.py ``written``).

A process that is killed is a ``flopscale train`` subprocess; the reference run, the reruns and
the cases that end in an error call ``cli.main`` in this process (the same code path, without
the few seconds of an interpreter start each; the same torch thread count as the subprocesses,
torch's default, so the runs are bit for bit comparable).
"""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flopscale import cli
from flopscale.engine import rundir
from flopscale.engine.data import stdlib_sample

STEPS = 12
ARGS = ["--n-layer", "1", "--d-model", "16", "--n-heads", "2", "--n-ctx", "16", "--batch-size", "2",
        "--steps", str(STEPS), "--eval-every", "3", "--warmup", "2", "--eval-batches", "1", "--keep-steps", "6",
        "--eval-positions", "--tokenizer", "bpe-300", "--quiet"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return stdlib_sample(tmp_path_factory.mktemp("corpus"), n_files=4)


def _cmd(corpus, out, *extra):
    return [sys.executable, "-m", "flopscale.cli", "train", *ARGS, "--data", corpus, "--out", str(out), *extra]


def _killed(corpus, out, kill_after):
    """``flopscale train`` in a subprocess that SIGKILLs itself after writing ``kill_after``."""
    p = subprocess.run(_cmd(corpus, out), capture_output=True, text=True, timeout=300,
                       env={**os.environ, rundir.KILL_AFTER_ENV: kill_after})
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    return p


def _rerun(capsys, corpus, out, *extra):
    """The same command again, in this process: exit 0; returns (stdout, stderr)."""
    capsys.readouterr()
    assert cli.main(_train_argv(corpus, out, *extra)) == 0
    return capsys.readouterr()


def _main_error(capsys, *argv, needles=()):
    """cli.main in this process: a non-zero exit and exactly one stderr line, ``error: ...``."""
    capsys.readouterr()
    rc = cli.main(list(argv))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0 and len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _train_argv(corpus, out, *extra):
    return ["train", *ARGS, "--data", corpus, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """The uninterrupted run every faulted one must end equal to."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert cli.main(_train_argv(corpus, out)) == 0
    return out


def _rows(path):
    return [json.loads(ln) for ln in Path(path).read_text().splitlines()]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_tensors(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b))
    return a == b


def _incomplete_copy(ref, dst):
    """The reference as a kill after its final checkpoint leaves it (flops.json not yet written):
    the same command loads ckpt.pt again (a complete run is left alone, nothing loaded)."""
    shutil.copytree(ref, dst)
    (dst / "flops.json").unlink()
    return dst


def assert_like_reference(run, ref):
    """Bit for bit the uninterrupted run: every row (but the wall-clock throughput), positions,
    flops.json, config.json, both checkpoints; no duplicate step, no torn line, no temp file."""
    a, b = _rows(run / "metrics.jsonl"), _rows(ref / "metrics.jsonl")
    assert [r["step"] for r in a] == list(range(1, STEPS + 1))
    drop = ("tokens_per_s", "mfu")
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
           [{k: v for k, v in r.items() if k not in drop} for r in b]
    assert _rows(run / "positions.jsonl") == _rows(ref / "positions.jsonl")
    for f in ("flops.json", "config.json"):
        assert json.loads((run / f).read_text()) == json.loads((ref / f).read_text()), f
    for f in ("ckpt.pt", "ckpt-6.pt"):
        x, y = _state(run / f), _state(ref / f)
        assert x["step"] == y["step"] and _same_tensors(x, y), f
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
    assert rundir.is_complete(run, STEPS)


CASES = []  # (case, how it ended): the count, printed when the module ends (pytest -s shows it)


@pytest.fixture(scope="module", autouse=True)
def _print_cases():
    yield
    print("\ncases tried by tests/test_faults.py (each passed test handled its cases cleanly):")
    for case, how in CASES:
        print(f"  {case}: {how}")
    print(f"  {len(CASES)} cases")


def _done(case, how):
    CASES.append((case, how))


# ---------------------------------------------------------------------------------------------
# kill -9: before the first eval, between the kept and the latest checkpoint, after the last
# row, after the final checkpoint; each rerun of the same command picks up where it can
# ---------------------------------------------------------------------------------------------
def test_kill_chain_ends_like_uninterrupted(corpus, reference, tmp_path, capsys):
    run = tmp_path / "run"
    # 1. killed after row 2, before the first checkpoint (step 3); a torn line and a killed
    #    writer's temp file left behind too
    _killed(corpus, run, "metrics.jsonl@2")
    assert not (run / "ckpt.pt").exists() and len(_rows(run / "metrics.jsonl")) == 2
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "tokens": 9')
    (run / ".ckpt.pt.tmp999999").write_bytes(b"half a checkpoint")
    # 2. rerun, killed right after writing ckpt-6.pt, before ckpt.pt (still at step 3)
    _killed(corpus, run, "ckpt-6.pt")
    assert not (run / ".ckpt.pt.tmp999999").exists()
    assert _state(run / "ckpt.pt")["step"] == 3 and _state(run / "ckpt-6.pt")["step"] == 6
    assert [r["step"] for r in _rows(run / "metrics.jsonl")] == list(range(1, 7))
    _done("kill -9 before the first eval, torn last line, orphaned .ckpt.pt.tmpPID; rerun", "bit-identical")
    # 3. rerun (resumes from the kept ckpt-6.pt, the newer), killed after the final checkpoint,
    #    before the final flops.json
    p = _killed(corpus, run, f"ckpt.pt@{STEPS}")
    assert "resuming" in p.stderr and "from step 6" in p.stderr
    assert rundir.flops_json_step(run) == 9 and not rundir.is_complete(run, STEPS)
    _done("kill -9 between writing ckpt-6.pt and ckpt.pt; rerun", "bit-identical (resumes from ckpt-6.pt)")
    # 4. the same command repairs flops.json and calls the run complete
    out, _ = _rerun(capsys, corpus, run)
    assert "already complete" in out
    assert_like_reference(run, reference)
    _done("kill -9 after the final checkpoint, before the final flops.json; rerun", "bit-identical (flops.json repaired)")


def test_outside_sigkill_at_a_polled_point(corpus, reference, tmp_path, capsys):
    """A kill from outside at whatever instant the run has reached once it is past its first
    checkpoint: the rerun ends equal to the reference wherever the kill landed."""
    run = tmp_path / "run"
    p = subprocess.Popen(_cmd(corpus, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        m = run / "metrics.jsonl"
        if (run / "ckpt.pt").exists() and m.exists() and m.read_text().count("\n") >= 4:
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = len((run / "metrics.jsonl").read_text().splitlines())
    assert killed_at < STEPS, "the run finished before it could be killed"
    _rerun(capsys, corpus, run)
    assert_like_reference(run, reference)
    _done(f"kill -9 from outside (polled: after row {killed_at}); rerun", "bit-identical")


# ---------------------------------------------------------------------------------------------
# bad checkpoints: unreadable, moved aside, code in a pickle, another run's, another shape
# ---------------------------------------------------------------------------------------------
def test_bad_checkpoint_then_moved_aside(corpus, reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    rundir.truncate_metrics(run / "metrics.jsonl", 7)  # as if killed at step 7 with a garbled ckpt.pt
    rundir.truncate_metrics(run / "positions.jsonl", 7)
    (run / "ckpt.pt").write_bytes(b"\x00garbage" * 100)
    _main_error(capsys, *_train_argv(corpus, run), needles=(str(run / "ckpt.pt"), "unreadable", "move it aside"))
    _done("unreadable ckpt.pt", "error line")
    (run / "ckpt.pt").rename(run / "ckpt.pt.bad")  # as the message says
    _, err = _rerun(capsys, corpus, run)
    assert "from step 6" in err  # the kept copy
    (run / "ckpt.pt.bad").unlink()
    assert_like_reference(run, reference)
    _done("ckpt.pt moved aside as advised; rerun", "bit-identical (resumes from ckpt-6.pt)")


class _Plant:
    """Unpickling this would create ``marker`` (builtins.open(marker, "w"))."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_code_in_a_checkpoint_never_runs(corpus, reference, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    run = _incomplete_copy(reference, tmp_path / "run")
    good = _state(run / "ckpt.pt")
    torch.save({**good, "x": _Plant(marker)}, run / "ckpt.pt")  # torch's zip format
    _main_error(capsys, *_train_argv(corpus, run), needles=(str(run / "ckpt.pt"), ".open)", "not loaded"))
    assert not marker.exists()
    _done("ckpt.pt whose pickle __reduce__ creates a file; resume", "error line, file never created")
    with open(run / "ckpt.pt", "wb") as f:  # a bare pickle (torch's legacy format)
        pickle.dump({"step": 1, "x": _Plant(marker)}, f, protocol=2)
    _main_error(capsys, *_train_argv(corpus, run), needles=(str(run / "ckpt.pt"), ".open)", "not loaded"))
    assert not marker.exists()
    _done("bare-pickle ckpt.pt with __reduce__; resume", "error line, file never created")
    # --init-from: the parent's kept checkpoint
    torch.save({**good, "x": _Plant(marker)}, run / "ckpt-6.pt")
    branch = tmp_path / "branch"
    _main_error(capsys, *_train_argv(corpus, branch, "--init-from", f"{run}@6"),
                needles=(str(run / "ckpt-6.pt"), ".open)"))
    assert not marker.exists()
    _done("parent ckpt-6.pt with __reduce__; --init-from", "error line, file never created")


def test_checkpoint_of_another_run_refused(corpus, reference, tmp_path, capsys):
    """A checkpoint copied from a run with another seed (same shapes): resume and --init-from
    refuse it by its config fingerprint."""
    run = _incomplete_copy(reference, tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"]["seed"] = 7  # this run is seed 7; its checkpoints are the reference's (seed 1337)
    (run / "config.json").write_text(json.dumps(cfg))
    _main_error(capsys, *_train_argv(corpus, run, "--seed", "7"),
                needles=(str(run / "ckpt.pt"), "another configuration", "fingerprint"))
    _done("ckpt.pt copied from a run with another seed; resume", "error line")
    _main_error(capsys, *_train_argv(corpus, tmp_path / "branch", "--seed", "7", "--init-from", f"{run}@6"),
                needles=(str(run / "ckpt-6.pt"), "another configuration"))
    _done("parent's ckpt-6.pt copied from another seed; --init-from", "error line")
    # and a branch from the real parent works (its fingerprint is the parent's config's)
    rc = cli.main(_train_argv(corpus, tmp_path / "good-branch", "--init-from", f"{reference}@6"))
    assert rc == 0
    rows = _rows(tmp_path / "good-branch" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert rows[:6] == _rows(reference / "metrics.jsonl")[:6]


def test_checkpoint_that_does_not_fit(corpus, reference, tmp_path, capsys):
    run = _incomplete_copy(reference, tmp_path / "run")
    good = _state(run / "ckpt.pt")
    bad = {**good, "model": {**good["model"], "wte.weight": torch.zeros(3, 5)}} if "wte.weight" in good["model"] \
        else {**good, "model": {k: torch.zeros(3, 5) for k in good["model"]}}
    torch.save(bad, run / "ckpt.pt")
    line = _main_error(capsys, *_train_argv(corpus, run), needles=(str(run / "ckpt.pt"), "does not fit", "size mismatch"))
    assert len(line) < 600
    _done("checkpoint of another shape (fingerprint forged)", "error line (was 17 lines)")
    torch.save({k: v for k, v in good.items() if k not in ("opt", "ledger")}, run / "ckpt.pt")
    _main_error(capsys, *_train_argv(corpus, run), needles=(str(run / "ckpt.pt"), "lacks opt, ledger"))
    _done("checkpoint missing keys", "error line")
    torch.save([1, 2, 3], run / "ckpt.pt")
    _main_error(capsys, *_train_argv(corpus, run), needles=(str(run / "ckpt.pt"), "not a flopscale checkpoint"))
    _done("checkpoint that is a list", "error line")


# ---------------------------------------------------------------------------------------------
# the run directory: --out a file, under a file, '/', a non-run directory, a list config.json
# ---------------------------------------------------------------------------------------------
def test_out_dir_refusals(corpus, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    _main_error(capsys, *_train_argv(corpus, f), needles=("is a file",))
    _done("train --out FILE", "error line")
    _main_error(capsys, *_train_argv(corpus, f / "run"), needles=("lies under", str(f)))
    _done("train --out FILE/run", "error line")
    _main_error(capsys, *_train_argv(corpus, "/"), needles=("not empty and holds no run",))
    _done("train --out /", "error line")
    src = tmp_path / "src"
    src.mkdir()
    (src / "main.py").write_text("print('mine')\n")
    _main_error(capsys, *_train_argv(corpus, src), needles=("not empty and holds no run", "main.py"))
    assert sorted(p.name for p in src.iterdir()) == ["main.py"]
    _done("train --out a non-empty source directory", "error line, nothing written")
    lst = tmp_path / "listcfg"
    lst.mkdir()
    (lst / "config.json").write_text("[1, 2]")
    _main_error(capsys, *_train_argv(corpus, lst), needles=(str(lst / "config.json"), "not a flopscale run config"))
    _done("list-valued config.json", "error line")


def test_config_rejected_at_first_batch_leaves_no_config(corpus, tmp_path, capsys):
    """Data too short for n_ctx is refused before config.json is written, so the corrected
    command in the same --out starts afresh instead of being refused as a changed config."""
    run = tmp_path / "run"
    _main_error(capsys, *_train_argv(corpus, run, "--max-tokens", "10"), needles=("fewer than n_ctx + 2",))
    assert not (run / "config.json").exists() and not (run / "metrics.jsonl").exists()
    rc = cli.main(["train", *[a if a != str(STEPS) else "2" for a in ARGS], "--data", corpus, "--out", str(run),
                   "--keep-steps", "1"])
    assert rc == 0 and [r["step"] for r in _rows(run / "metrics.jsonl")] == [1, 2]
    _done("config rejected at the first batch, then the corrected command", "error line, then a clean run")


def test_nan_stop_without_a_checkpoint_says_so(corpus, tmp_path):
    from flopscale.engine import ModelConfig, TrainConfig
    from flopscale.engine.train import Trainer, TrainError

    mc = ModelConfig(n_layer=1, d_model=16, n_heads=2, n_ctx=16)
    tc = TrainConfig(data=corpus, tokenizer="bpe-300", batch_size=2, steps=5, eval_every=2)
    tr = Trainer(mc, tc, tmp_path / "run", progress=False)
    with torch.no_grad():
        tr.model.blocks[0].fc_in.weight[0, 0] = float("nan")
    with pytest.raises(TrainError, match="no checkpoint of .* was written yet") as e:
        tr.run()
    assert "is kept" not in str(e.value)
    _done("NaN loss before the first checkpoint", "error line without a kept-checkpoint claim")


# ---------------------------------------------------------------------------------------------
# sweeps: hostile run names, --n-boot 0
# ---------------------------------------------------------------------------------------------
def _preset(tmp_path, corpus, variants):
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"name": "faults", "description": "x", "n_ctx": 16, "tokens": 4 * 2 * 16,
                             "models": [[1, 16, 2]], "evals": 2, "variants": variants,
                             "train": {"data": corpus, "tokenizer": "bpe-300", "batch_size": 2, "eval_batches": 1}}))
    return str(p)


@pytest.mark.parametrize("name", ["../../../../x", "a/b", "..", "", ".hidden", "a\\b", "tab\there"])
def test_sweep_run_names_are_one_path_component(corpus, tmp_path, capsys, name):
    preset = _preset(tmp_path, corpus, [{"name": name, "lr": 0.001}])
    out = tmp_path / "deep" / "er" / "sw"
    _main_error(capsys, "sweep", "--preset", preset, "--out", str(out), "--quiet",
                needles=("not one path component",) if name else ())
    assert not out.exists() and not (tmp_path / "x").exists()
    _done(f"sweep preset variant named {name!r}", "error line, nothing written")


def test_run_paths_stay_under_runs(tmp_path):
    from flopscale.engine.config import ConfigError
    from flopscale.engine.sweep import run_dirs

    assert run_dirs(tmp_path, ["L1-d16"]) == {"L1-d16": tmp_path / "runs" / "L1-d16"}
    for bad in ("../x", "/abs", "a/../../b"):
        with pytest.raises(ConfigError, match="not one path component"):
            run_dirs(tmp_path, [bad])


def test_sweep_n_boot_zero_summary(capsys):
    from flopscale.engine.sweep import print_summary

    print_summary({"alpha_N": 0.07, "alpha_N_ci95": None, "rmse_log_N": 0.01, "alpha_C": 0.05,
                   "alpha_C_ci95": [None, None]}, Path("sw"))
    out = capsys.readouterr().out
    assert "alpha_N = 0.0700" in out and "no 95% CI: --n-boot 0" in out
    _done("sweep --n-boot 0 (summary after the report)", "no crash: says there is no interval")


# ---------------------------------------------------------------------------------------------
# a full disk: a real tmpfs, filled to leave a chosen number of bytes
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (disk-full cases not run)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): disk-full cases not run")

    def leave(n_bytes: int) -> Path:
        """Fill the disk so that about n_bytes stay free; returns the filler (delete it to free)."""
        filler = mnt / "filler"
        st = os.statvfs(mnt)
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - n_bytes))
        return filler

    try:
        yield mnt, leave
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_in_train_then_rerun(corpus, reference, small_disk, capsys):
    mnt, leave = small_disk
    run = mnt / "run"
    filler = leave(48 * 1024)  # config.json and the rows fit; the first checkpoint (~125 kB) does not
    _main_error(capsys, *_train_argv(corpus, run), needles=("no space left on device writing", str(run / "ckpt.pt")))
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
    _done("disk full writing the first checkpoint (train)", "error line")
    filler.unlink()
    _rerun(capsys, corpus, run)
    assert_like_reference(run, reference)
    _done("rerun after freeing the disk", "bit-identical")


@pytest.mark.parametrize("free_pages", [0, 2])
def test_disk_full_early(corpus, reference, small_disk, capsys, free_pages):
    """A disk that is full at once (the lock's record fails), or once the lock and config.json
    are written (the first metrics row fails): the error names the file; the rerun on a freed
    disk drops what was half written."""
    mnt, leave = small_disk
    run = mnt / "run"
    run.mkdir()
    filler = leave(free_pages * os.statvfs(mnt).f_frsize)
    line = _main_error(capsys, *_train_argv(corpus, run), needles=("no space left on device writing", str(run)))
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
    _done(f"disk full with {free_pages} pages free (train: fails writing {line.split(str(run))[-1].strip('/')})",
          "error line")
    filler.unlink()
    _rerun(capsys, corpus, run)
    assert_like_reference(run, reference)
    _done("rerun after freeing the disk", "bit-identical")


def test_disk_full_in_sweep(corpus, small_disk, capsys):
    mnt, leave = small_disk
    preset = _preset(mnt.parent, corpus, [{"name": "a", "lr": 0.001}])
    leave(0)
    threads = torch.get_num_threads()
    try:
        line = _main_error(capsys, "sweep", "--preset", preset, "--out", str(mnt / "sw"), "--quiet",
                           needles=("no space left on device writing", str(mnt / "sw")))
    finally:
        torch.set_num_threads(threads)  # the sweep set one thread per run in this process
    assert not [p for p in (mnt / "sw").rglob("*") if ".tmp" in p.name]
    _done(f"disk full in sweep (fails writing {line.split(str(mnt / 'sw'))[-1].strip('/')})", "error line")
