"""Sweeps that scale out, on this machine: the local executor against inline (faster on cpu-smoke,
losses bit for bit), a signal to a run or to a sweep (checkpoint after the step, non-zero exit,
the same command resumes from that step bit for bit), and run-directory locks."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flopscale.engine import ModelConfig, TrainConfig
from flopscale.engine.data import load_corpus, stdlib_sample
from flopscale.engine.executors import RunTask, local_slots, train_command
from flopscale.engine.runlock import RunLock, read_holder
from flopscale.engine.train import TrainError

SAME = ("step", "tokens", "flops", "flops_total", "flops_executed", "train_loss", "val_loss", "lr", "grad_noise_scale")


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "flopscale.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _metrics(run_dir):
    return [json.loads(ln) for ln in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


def _same_runs(a: Path, b: Path):
    """Every run of sweep a equals sweep b's step for step (losses, FLOPs, noise scale, lr)."""
    names = sorted(p.name for p in (a / "runs").iterdir())
    assert names == sorted(p.name for p in (b / "runs").iterdir()) and names
    for n in names:
        ra, rb = _metrics(a / "runs" / n), _metrics(b / "runs" / n)
        assert [{k: r[k] for k in SAME} for r in ra] == [{k: r[k] for k in SAME} for r in rb], n


def _wait_rows(run_dirs, n, p, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        for d in run_dirs:
            m = Path(d, "metrics.jsonl")
            if m.exists() and len(m.read_text().splitlines()) >= n:
                return Path(d)
        time.sleep(0.01)
    raise AssertionError(f"no run reached {n} rows (exit {p.poll()}): {p.stderr.read() if p.poll() is not None else ''}")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return stdlib_sample(tmp_path_factory.mktemp("exdata"), n_files=10)


@pytest.fixture(scope="module")
def long_preset(data, tmp_path_factory):
    """Two tiny sizes, long enough (600 steps) to be stopped in the middle."""
    p = tmp_path_factory.mktemp("expreset") / "test-long.json"
    p.write_text(json.dumps({
        "name": "test-long", "description": "two tiny sizes, 600 steps", "n_ctx": 16, "tokens": 600 * 4 * 16,
        "models": [[1, 16, 2], [1, 24, 2]], "evals": 6, "cpu_threads": 1,
        "train": {"data": data, "tokenizer": "bpe-300", "batch_size": 4, "grad_accum": 2, "noise_scale": True,
                  "lr": 0.003, "eval_batches": 2}}))
    return str(p)


# ---------------------------------------------------------------------------------------------
def test_cpu_smoke_local_two_workers_bit_identical(tmp_path):
    """cpu-smoke on two local workers gives every per-step number of an inline sweep (whole
    commands, warm token cache); the speedup is bench/bench_sweep.py's."""
    from flopscale.engine.presets import get_preset

    tr = get_preset("cpu-smoke").train
    load_corpus(tr["data"], tr["tokenizer"])  # warm the session's token cache so neither run pays for BPE
    walls = {}
    for ex in ("inline", "local"):  # the fit runs in the parent whatever the executor: once is enough
        extra = ["--workers", "2", "--no-fit"] if ex == "local" else []
        t0 = time.perf_counter()
        p = _cli("sweep", "--preset", "cpu-smoke", "--out", str(tmp_path / ex), "--executor", ex, *extra, "--quiet")
        out, err = p.communicate(timeout=600)
        walls[ex] = time.perf_counter() - t0
        assert p.returncode == 0, err[-3000:]
    _same_runs(tmp_path / "inline", tmp_path / "local")
    man = {ex: json.loads((tmp_path / ex / "sweep.json").read_text()) for ex in walls}
    assert man["local"]["executor"] == "local" and man["inline"]["executor"] == "inline"
    for r in man["local"]["runs"]:
        assert r["status"] == "done" and r["executor"] == "local" and r["node"] == socket.gethostname()
        assert r["start"] <= r["end"]
    assert "alpha_N" in man["inline"]["fit"] and "fit" not in man["local"]
    runs = {ex: man[ex]["timing_s"]["runs_this_invocation"] for ex in walls}
    # The speedup is measured by bench/bench_sweep.py (a timed assertion here would fail on a busy
    # machine, and speed targets belong in benchmarks); printed for the log only.
    print(f"cpu-smoke wall: inline {walls['inline']:.1f} s, local x2 {walls['local']:.1f} s "
          f"({walls['inline'] / walls['local']:.2f}x); runs phase {runs['inline']} s vs {runs['local']} s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_then_same_command_resumes_from_that_step(data, tmp_path, sig):
    args = ["--n-layer", "1", "--d-model", "16", "--n-heads", "2", "--n-ctx", "16", "--data", data,
            "--tokenizer", "bpe-300", "--batch-size", "4", "--grad-accum", "2", "--noise-scale", "--steps", "300",
            "--eval-every", "100", "--warmup", "10", "--quiet"]
    ref = _cli("train", *args, "--out", str(tmp_path / "ref"))
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    run = tmp_path / "run"
    p = _cli("train", *args, "--out", str(run))
    _wait_rows([run], 120, p)  # past the checkpoint at step 100, between evals
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "interrupted" in err and "Traceback" not in err, err
    rows = _metrics(run)
    stopped = rows[-1]["step"]
    assert 120 <= stopped < 300
    # it finished that step and wrote its checkpoint there (flops.json is written with it)
    assert json.loads((run / "flops.json").read_text())["steps"] == stopped
    p = _cli("train", *args, "--out", str(run))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert f"resuming {run} from step {stopped}" in err
    assert [{k: r[k] for k in SAME} for r in _metrics(run)] == [{k: r[k] for k in SAME} for r in _metrics(tmp_path / "ref")]


def test_second_writer_refused_with_the_holder(data, tmp_path):
    args = ["train", "--n-layer", "1", "--d-model", "16", "--n-heads", "2", "--n-ctx", "16", "--data", data,
            "--tokenizer", "bpe-300", "--batch-size", "4", "--steps", "100000", "--eval-every", "50", "--quiet",
            "--out", str(tmp_path / "run")]
    first = _cli(*args)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and (read_holder(tmp_path / "run") or {}).get("pid") != first.pid:
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        second = _cli(*args)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2 and "Traceback" not in err, err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and f"in use by pid {first.pid} on {socket.gethostname()}" in lines[0], err
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode != 0  # stopped by the signal, after a checkpoint


def test_lock_in_process_and_left_by_dead_processes(tmp_path):
    d = tmp_path / "run"
    with RunLock(d):
        with pytest.raises(TrainError, match=f"in use by pid {os.getpid()} on {socket.gethostname()}"):
            RunLock(d).acquire()
    # A SIGKILLed holder: its record stays, the kernel has released the lock; the next one takes it.
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal, sys
        sys.path[:0] = {sys.path!r}
        from flopscale.engine.runlock import RunLock
        RunLock({str(d)!r}).acquire()
        os.kill(os.getpid(), signal.SIGKILL)""")])
    p.wait(timeout=60)
    assert read_holder(d)["pid"] == p.pid
    lk = RunLock(d).acquire()
    assert lk.took_over["pid"] == p.pid and read_holder(d)["pid"] == os.getpid()
    lk.release()
    # A holder that died while a forked child of it still holds the lock's file: taken over too.
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, sys, time
        sys.path[:0] = {sys.path!r}
        from flopscale.engine.runlock import RunLock
        RunLock({str(d)!r}).acquire()
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)""")], stdout=subprocess.PIPE, text=True)
    child = int(p.stdout.readline())
    p.wait(timeout=60)
    try:
        lk = RunLock(d).acquire()
        assert lk.took_over["pid"] == p.pid
        lk.release()
    finally:
        os.kill(child, signal.SIGKILL)


def test_local_sweep_sigterm_then_same_command_resumes_bit_identical(long_preset, tmp_path):
    ref = _cli("sweep", "--preset", long_preset, "--out", str(tmp_path / "inline"), "--no-fit", "--quiet")
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    args = ["sweep", "--preset", long_preset, "--out", str(tmp_path / "local"), "--executor", "local",
            "--workers", "2", "--no-fit", "--quiet"]
    p = _cli(*args)
    _wait_rows([tmp_path / "local" / "runs" / n for n in ("L1-d16", "L1-d24")], 150, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM and "interrupted by SIGTERM" in err, err
    stopped = {n: _metrics(tmp_path / "local" / "runs" / n)[-1]["step"] for n in ("L1-d16", "L1-d24")}
    assert all(s < 600 for s in stopped.values()), stopped  # both were stopped (the workers got it)
    man = json.loads((tmp_path / "local" / "sweep.json").read_text())
    assert {r["status"] for r in man["runs"]} == {"interrupted"}
    p = _cli(*args)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    for n, s in stopped.items():
        assert f"resuming {tmp_path / 'local' / 'runs' / n} from step {s}" in err, err
    _same_runs(tmp_path / "inline", tmp_path / "local")
    man = json.loads((tmp_path / "local" / "sweep.json").read_text())
    assert [r["status"] for r in man["runs"]] == ["done", "done"] and all(r["executor"] == "local" for r in man["runs"])


def test_local_slots_pin_cores_or_gpus(monkeypatch):
    cores = sorted(os.sched_getaffinity(0))
    slots = local_slots("cpu", None, 1, 1)
    assert [s["cores"] for s in slots] == [[c] for c in cores]  # default: cores / threads workers
    assert local_slots("cpu", len(cores) + 1, 1, 1)[0]["cores"] is None  # oversubscribed: unpinned
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert [s["gpus"] for s in local_slots("cuda", None, 1, 2)] == [["0", "1"], ["2", "3"]]
    assert [s["gpus"] for s in local_slots("cuda", None, 1, 1)] == [["0"], ["1"], ["2"], ["3"]]


def test_multi_gpu_run_command_is_the_same_run():
    """A run asking for several GPUs goes through torchrun and `flopscale train`: its flags parse
    back to the same ModelConfig and TrainConfig."""
    from flopscale import cli
    from flopscale.engine.config import config_values

    mc = ModelConfig(n_layer=2, d_model=64, n_heads=4, n_ctx=32, n_vocab=4096)
    tc = TrainConfig(batch_size=8, grad_accum=2, noise_scale=True, max_tokens=1000, device="cuda", lr=1e-3)
    cmd = train_command(RunTask(name="r", run_dir="/x/r", model=mc.to_dict(), train=tc.to_dict(), gpus=4))
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m"]
    a = cli.build_parser().parse_args(cmd[cmd.index("train"):])
    assert TrainConfig(**config_values(a, TrainConfig.__dataclass_fields__)) == tc
    assert cli._model_config(a, 4096) == mc and a.out == "/x/r"


def test_torchrun_ranks_stop_at_the_same_step_and_resume(data, tmp_path):
    """SIGTERM to torchrun (what a multi-GPU run of the local executor is) reaches every rank;
    they agree on the step, checkpoint there, and the same command resumes bit for bit."""
    def cmd(out):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "flopscale.cli", "train", "--n-layer", "1", "--d-model", "16", "--n-heads", "2",
                "--n-ctx", "16", "--data", data, "--tokenizer", "bpe-300", "--batch-size", "8", "--steps", "200",
                "--eval-every", "100", "--warmup", "5", "--quiet", "--out", str(out)]

    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = subprocess.run(cmd(tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = tmp_path / "run"
    p = subprocess.Popen(cmd(run), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_rows([run], 110, p)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=120)
    assert p.returncode != 0
    stopped = _metrics(run)[-1]["step"]
    assert 110 <= stopped < 200 and json.loads((run / "flops.json").read_text())["steps"] == stopped
    r = subprocess.run(cmd(run), env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "SIGABRT" in r.stderr:
        # Seen in 2 of 8 fresh-clone runs: a gloo rank aborts ("terminate called without an active
        # exception") as the processes exit after the resumed run has finished, so the same
        # command then finds the run complete (or resumes it); either way it must end bit for bit.
        # engine/dist.py's joint teardown fixed it (a loop of 2-rank runs: 2 of 12 before, 0 of 30
        # after); this retry stays as a guard.
        first = r.stderr
        assert f"resuming {run} from step {stopped}" in first, first[-3000:]
        r = subprocess.run(cmd(run), env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, first[-1500:] + r.stderr[-1500:]
    else:
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"resuming {run} from step {stopped}" in r.stderr
    assert [{k: x[k] for k in SAME} for x in _metrics(run)] == [{k: x[k] for k in SAME} for x in _metrics(tmp_path / "ref")]


def test_slurm_task_runs_its_group_and_checkpoints_as_itself(long_preset, tmp_path):
    """The callable an array task runs (no SLURM needed): its runs in order, then done; its
    checkpoint() for submitit's requeue is the same group again (finished runs are skipped)."""
    from flopscale.engine.executors import SlurmTask
    from flopscale.engine.presets import get_preset

    spec = get_preset(long_preset).runs()[0]
    tasks = []
    for i in range(2):
        tr = dict(spec["train"], steps=5, eval_every=5)
        tasks.append(RunTask(name=f"r{i}", run_dir=str(tmp_path / f"r{i}"), model=dict(spec["model"], n_vocab=300),
                             train=tr, threads=1))
    infos = SlurmTask(tasks)()
    assert [i["name"] for i in infos] == ["r0", "r1"] and all(i["executor"] == "slurm" for i in infos)
    assert all(_metrics(tmp_path / f"r{i}")[-1]["step"] == 5 for i in range(2))
    again = SlurmTask(tasks).checkpoint()
    assert [t.name for t in again.function.tasks] == ["r0", "r1"]


def test_a_sweep_runs_corpus_carries_its_eval_data(data, tmp_path):
    """What an executor hands a run is what `flopscale train` would load: the --eval-data
    corpora tokenized and held out of training (a sweep once dropped them: no val_loss_NAME)."""
    from flopscale.engine.executors import corpus_for, train_run

    held = sorted(Path(data).rglob("*.py"))[0]
    train = TrainConfig(data=data, tokenizer="bpe-300", eval_data=f"held={held}", batch_size=4, steps=2,
                        eval_every=2, eval_batches=1, warmup=1).to_dict()
    got = corpus_for(train)
    want = load_corpus(data, "bpe-300", None, (("held", str(held)),))
    assert list(got.evals) == ["held"] and (got.evals["held"] == want.evals["held"]).all()
    assert (got.train == want.train).all() and got.train.size < corpus_for(dict(train, eval_data=None)).train.size
    mc = ModelConfig(n_layer=1, d_model=16, n_heads=2, n_ctx=16).to_dict()
    train_run(RunTask(name="r", run_dir=str(tmp_path / "r"), model=mc, train=train, threads=1))
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_loss_held"] is not None
