"""The slurm executor on a real single-node SLURM cluster (tests/slurm_cluster.py): a sweep as a
job array equals the inline sweep, with job ids in sweep.json; a task preempted by a real
higher-priority job is requeued and resumes from the step it stopped at, bit for bit.

The cluster needs Debian's slurmctld, slurmd, slurm-client, munge, slurmdbd and mariadb-server
(.ci/run installs them).  Without them these tests skip, saying so, unless
FLOPSCALE_REQUIRE_SLURM=1 (set by .ci/run), where a missing cluster is a failure.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flopscale.engine.data import stdlib_sample

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_cluster import SlurmCluster, missing_binaries  # noqa: E402

SAME = ("step", "tokens", "flops", "flops_total", "flops_executed", "train_loss", "val_loss", "lr", "grad_noise_scale")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = missing_binaries()
    if missing:
        msg = f"SLURM test cluster needs {', '.join(missing)} (apt-get install slurmctld slurmd slurm-client munge slurmdbd mariadb-server)"
        if os.environ.get("FLOPSCALE_REQUIRE_SLURM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster runs its daemons as root")
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    with c:
        yield c


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    d = tmp_path_factory.mktemp("slurmdata")
    data = stdlib_sample(d / "text", n_files=10)
    train = {"data": data, "tokenizer": "bpe-300", "batch_size": 4, "grad_accum": 2, "noise_scale": True,
             "lr": 0.003, "eval_batches": 2}
    out = {}
    for name, steps, models in (("test-slurm", 40, [[1, 16, 2], [1, 24, 2], [2, 32, 2]]),
                                ("test-preempt", 800, [[1, 16, 2], [1, 24, 2]])):
        p = d / f"{name}.json"
        p.write_text(json.dumps({"name": name, "description": "SLURM tests", "n_ctx": 16, "tokens": steps * 4 * 16,
                                 "models": models, "evals": 6, "cpu_threads": 1, "train": train}))
        out[name] = str(p)
    return out


def _sweep(*args, timeout=600):
    r = subprocess.run([sys.executable, "-m", "flopscale.cli", "sweep", *args, "--quiet"], capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _metrics(run_dir):
    return [{k: r[k] for k in SAME} for r in map(json.loads, Path(run_dir, "metrics.jsonl").read_text().splitlines())]


def _same_runs(a: Path, b: Path):
    names = sorted(p.name for p in (a / "runs").iterdir())
    assert names and names == sorted(p.name for p in (b / "runs").iterdir())
    for n in names:
        assert _metrics(a / "runs" / n) == _metrics(b / "runs" / n), n


def test_slurm_sweep_equals_inline_with_job_ids(slurm, presets, tmp_path):
    p = presets["test-slurm"]
    _sweep("--preset", p, "--out", str(tmp_path / "inline"), "--n-boot", "20")
    r = _sweep("--preset", p, "--out", str(tmp_path / "slurm"), "--n-boot", "20", "--executor", "slurm",
               "--slurm-time", "30", "--slurm-partition", "low", "--slurm-cpus-per-task", "1",
               "--slurm-option", "comment=flopscale-test")
    assert "alpha_N" in r.stdout
    _same_runs(tmp_path / "inline", tmp_path / "slurm")
    man = json.loads((tmp_path / "slurm" / "sweep.json").read_text())
    assert man["executor"] == "slurm"
    arrays = set()
    for e in man["runs"]:
        assert e["status"] == "done" and e["executor"] == "slurm", e
        assert re.fullmatch(r"\d+_\d+", e["job_id"]), e["job_id"]  # one array task per run
        arrays.add(e["job_id"].split("_")[0])
        assert e["node"] == "localhost" and e["start"] <= e["end"]
    assert len(arrays) == 1  # one job array
    inline = json.loads((tmp_path / "inline" / "sweep.json").read_text())
    assert man["fit"]["alpha_N"] == inline["fit"]["alpha_N"]
    acct = slurm._run("sacct", "-n", "-X", "-j", arrays.pop(), "-o", "JobID,Partition,State", "--parsable2").stdout
    assert acct.count("|low|COMPLETED") == 3, acct


@pytest.fixture(scope="module")
def preempt_inline(presets, tmp_path_factory):
    out = tmp_path_factory.mktemp("preempt") / "inline"
    _sweep("--preset", presets["test-preempt"], "--out", str(out), "--no-fit")
    return out


def _submit_and_wait_for_progress(slurm, preset, out):
    """--no-wait submission, then wait until a task is well into its run; returns (args, job ids)."""
    args = ["--preset", preset, "--out", str(out), "--no-fit", "--executor", "slurm", "--slurm-time", "30"]
    r = _sweep(*args, "--no-wait")  # submit and return
    assert "run the same command again" in r.stdout
    first = {e["name"]: e["job_id"] for e in json.loads((out / "sweep.json").read_text())["runs"]}
    assert all(first.values()), first
    runs = [out / "runs" / n for n in first]
    deadline = time.time() + 180
    while time.time() < deadline:
        rows = [len((d / "metrics.jsonl").read_text().splitlines()) if (d / "metrics.jsonl").exists() else 0 for d in runs]
        if max(rows) >= 30:
            break
        time.sleep(0.05)
    assert max(rows) >= 30, (rows, slurm.squeue(), slurm.logs())
    assert max(rows) < 800, "the runs finished before they could be stopped; make them longer"
    return args, first


def _resumed(out: Path) -> list:
    logs = "".join(f.read_text(errors="replace") for f in (out / "slurm").rglob("*_log.out"))
    return logs, [(r, int(s)) for r, s in re.findall(r"resuming (\S+) from step (\d+)", logs)]


def test_preempted_task_is_requeued_and_resumes_bit_identical(slurm, presets, preempt_inline, tmp_path):
    out = tmp_path / "slurm"
    args, first = _submit_and_wait_for_progress(slurm, presets["test-preempt"], out)
    # a job in the higher-priority partition takes the node: both running tasks are preempted
    slurm.sbatch("-p", "high", "-c", "2", "-o", str(tmp_path / "preemptor.out"), "--wrap", "sleep 2")
    # the same command again follows the requeued tasks to the end and collects them
    _sweep(*args)
    man = json.loads((out / "sweep.json").read_text())
    assert {e["name"]: e["job_id"] for e in man["runs"]} == first  # requeued, not submitted again
    assert all(e["status"] == "done" for e in man["runs"])
    logs, resumed = _resumed(out)
    assert resumed and all(s > 0 for _, s in resumed), logs[-3000:]  # resumed, not restarted
    acct = slurm._run("sacct", "-n", "-D", "-X", "-o", "JobID,State", "--parsable2").stdout
    assert "PREEMPTED" in acct or "REQUEUED" in acct, acct
    _same_runs(preempt_inline, out)


def test_sigterm_to_a_task_is_requeued_by_submitit(slurm, presets, preempt_inline, tmp_path):
    """A SIGTERM that SLURM does not follow with a requeue of its own (the one --signal=TERM@90
    sends before the time limit; here `scancel --signal=TERM`): submitit's handler requeues."""
    out = tmp_path / "slurm"
    args, first = _submit_and_wait_for_progress(slurm, presets["test-preempt"], out)
    for jid in first.values():
        slurm._run("scancel", "--signal=TERM", jid)
    _sweep(*args)
    man = json.loads((out / "sweep.json").read_text())
    assert {e["name"]: e["job_id"] for e in man["runs"]} == first and all(e["status"] == "done" for e in man["runs"])
    logs, resumed = _resumed(out)
    assert "Requeued job" in logs and resumed and all(s > 0 for _, s in resumed), logs[-3000:]
    _same_runs(preempt_inline, out)
