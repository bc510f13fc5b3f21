"""Trackers (engine/trackers.py) against the real libraries, offline: TensorBoard events read back
with tensorboard's own EventAccumulator, W&B's offline run files read with wandb's own protobuf
records.  One tiny run is SIGKILLed (after its checkpoint at step 4), SIGTERMed, then finished;
both trackers must equal metrics.jsonl step for step, with no step twice.  A W&B service killed
mid-run must not stop training; `flopscale fit --tracker` logs the report's figures."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flopscale.engine import trackers as trk
from flopscale.engine.config import ConfigError, TrainConfig
from flopscale.engine.data import stdlib_sample
from procs import children

pytest.importorskip("tensorboard", reason="the trackers extra (pip install 'flopscale[trackers]') is not installed")
pytest.importorskip("wandb", reason="the trackers extra (pip install 'flopscale[trackers]') is not installed")

# TensorBoard's own reader, the one its server loads runs with: it honours the writer's purge_step
# (SessionLog.START) for tensor summaries, which is what our float64 scalars are.
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402
from wandb.proto import wandb_internal_pb2  # noqa: E402

STEPS, CKPT = 16, 4
SHAPE = ["--n-layer", "1", "--d-model", "16", "--n-heads", "2", "--n-ctx", "16", "--tokenizer", "bpe-300",
         "--batch-size", "4", "--grad-accum", "2", "--noise-scale", "--warmup", "2", "--eval-every", "12", "--quiet"]


def _env(tmp: Path) -> dict:
    """Offline W&B with every folder it writes under ``tmp``; no key, so nothing tries the network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    for name in ("CONFIG", "CACHE", "DATA", ""):
        d = tmp / f"wandb-{name.lower() or 'dir'}"
        d.mkdir(exist_ok=True)
        env[f"WANDB_{name}_DIR" if name else "WANDB_DIR"] = str(d)
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DISABLE_GIT="true")
    return env


def _cmd(corpus, out, *extra):
    return [sys.executable, "-m", "flopscale.cli", "train", *SHAPE, "--data", corpus, "--out", str(out), *extra]


def _rows(run: Path) -> list:
    p = run / "metrics.jsonl"
    return [json.loads(ln) for ln in p.read_text().splitlines()] if p.exists() else []


def _wait(cond, what: str, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not cond():
        assert time.time() < end, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return _env(tmp_path_factory.mktemp("wandb-home"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return stdlib_sample(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, corpus, env):
    """A run of a sweep's layout (SWEEP/runs/r1 beside SWEEP/sweep.json) with both trackers, in
    three sessions: SIGKILLed after its kept checkpoint at step 4 (before its next at 12), then
    stopped by SIGTERM (a checkpoint at the step it finished), then run to the end."""
    sweep = tmp_path_factory.mktemp("sweep-grp")
    (sweep / "sweep.json").write_text("{}")
    run = sweep / "runs" / "r1"
    cmd = _cmd(corpus, run, "--steps", str(STEPS), "--keep-steps", str(CKPT), "--tracker", "tensorboard",
               "--tracker", "wandb")
    t0 = time.time()
    err = ""
    for sig, rows in ((signal.SIGKILL, CKPT + 2), (signal.SIGTERM, 2 * CKPT + 1)):
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait(lambda: (run / f"ckpt-{CKPT}.pt").exists() and len(_rows(run)) >= rows or p.poll() is not None,
              f"{rows} rows")
        p.send_signal(sig)
        err += p.communicate()[1]
        if sig == signal.SIGKILL:
            at_kill = len(_rows(run))
            assert CKPT < at_kill < 12, f"killed after {at_kill} rows; the test needs rows past the checkpoint at {CKPT}"
    stopped = len(_rows(run))
    assert p.returncode == 128 + signal.SIGTERM and stopped < STEPS, err
    t1 = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    print(f"\nkilled after {at_kill} rows, stopped at {stopped} ({t1 - t0:.1f} s); last session {time.time() - t1:.1f} s")
    assert out.returncode == 0, out.stderr
    assert f"resuming {run} from step {stopped}" in out.stderr
    return {"run": run, "sweep": sweep, "at_kill": at_kill, "stopped": stopped, "stderr": err + out.stderr}


def _tb(run: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run / trk.TB_DIR), size_guidance={"tensors": 0})
    ea.Reload()
    return ea


def test_tensorboard_equals_metrics_after_resume(resumed):
    run, rows = resumed["run"], _rows(resumed["run"])
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert "warning" not in resumed["stderr"] and "Traceback" not in resumed["stderr"], resumed["stderr"]
    ea = _tb(run)
    expect = {}
    for r in rows:
        for tag, v in trk.scalars(r).items():
            expect.setdefault(tag, []).append((r["step"], v))
    for need in ("train/loss", "val/loss", "optim/lr", "optim/grad_norm", "optim/grad_noise_scale_tokens",
                 "progress/tokens", "perf/tokens_per_s", "compute/flops_paper", "compute/flops", "compute/flops_total",
                 "compute/flops_executed"):
        assert need in expect, need
    got = {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in ea.Tensors(tag)]
           for tag in ea.Tags()["tensors"] if tag in expect}
    # every row's every number, once per step (the rows redone after the checkpoint replaced the
    # killed session's, tokens_per_s included), exact as float64
    assert got == expect
    assert [s for s, _ in got["val/loss"]] == [12, STEPS]
    hp = plugin_data_pb2.HParamsPluginData.FromString(
        ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info.hparams
    assert hp["model.d_model"].number_value == 16 and hp["train.tracker"].string_value == "tensorboard,wandb"
    assert hp["N"].number_value == json.loads((run / "config.json").read_text())["N"]


def _wandb_records(path: Path) -> list:
    """The records of a .wandb file: W&B's 7-byte header, then LevelDB-log framing (32 KiB blocks;
    a chunk is crc32c(4) length(2, LE) type(1): 1 full, 2 first, 3 middle, 4 last), each record a
    wandb_internal_pb2.Record."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, out, buf = 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is zero padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += block - pos % block
            continue
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def _wandb_runs(run: Path) -> list:
    """[(run record, {step: {key: value}}, config {key: value})] per offline session, in order."""
    out = []
    for d in sorted((run / trk.WANDB_DIR).glob("offline-run-*")):
        (f,) = d.glob("run-*.wandb")
        recs = _wandb_records(f)
        kinds = [r.WhichOneof("record_type") for r in recs]
        info = next((r.run for r, k in zip(recs, kinds) if k == "run"), None)  # None: nothing was written
        hist = {}
        for r, k in zip(recs, kinds):
            if k == "history":
                assert r.history.step.num not in hist, f"step {r.history.step.num} twice in {f.name}"
                items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
                hist[r.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
        cfg = {i.key: json.loads(i.value_json) for i in info.config.update} if info else {}
        for r, k in zip(recs, kinds):
            if k == "config":
                cfg.update({i.key: json.loads(i.value_json) for i in r.config.update})
        out.append((info, hist, cfg))
    return out


def test_wandb_offline_history_and_config_after_resume(resumed):
    run, rows, stopped = resumed["run"], _rows(resumed["run"]), resumed["stopped"]
    sessions = _wandb_runs(run)
    assert len(sessions) == 3
    run_id = json.loads((run / trk.WANDB_DIR / trk.WANDB_RUN_FILE).read_text())["id"]
    for i, (info, _, cfg) in enumerate(sessions):
        if info is None and i == 0:  # the SIGKILLed session: its service may have written nothing
            continue
        assert (info.run_id, info.display_name, info.run_group) == (run_id, "r1", resumed["sweep"].name)
        want = json.loads((run / "config.json").read_text())
        assert {k: cfg[k] for k in ("model", "train", "N")} == {k: want[k] for k in ("model", "train", "N")}
    killed, closed, last = (h for _, h, _ in sessions)
    # the SIGKILLed session holds what wandb's service had written, if anything; the next one
    # logged every row again from the last step W&B surely held (none: no session had closed)
    assert set(killed) <= set(range(1, resumed["at_kill"] + 1))
    # a session stopped cleanly (SIGTERM) and its resume share no step
    assert sorted(closed) == list(range(1, stopped + 1)) and sorted(last) == list(range(stopped + 1, STEPS + 1))
    hist = {**closed, **last}
    for r in rows:  # every number of every row, as metrics.jsonl has it
        assert hist[r["step"]] == trk.scalars(r), r["step"]
    for s, h in killed.items():
        assert {k: v for k, v in h.items() if not k.startswith("perf/")} == \
               {k: v for k, v in hist[s].items() if not k.startswith("perf/")}


def test_killed_wandb_service_does_not_stop_training(corpus, env, tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen(_cmd(corpus, run, "--steps", "12", "--tracker", "wandb", "--tracker", "tensorboard"),
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait(lambda: len(_rows(run)) >= 2 or p.poll() is not None, "two rows")
    core = [c for c in children(p.pid) if b"wandb-core" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert core, "no wandb-core process under the run"
    for c in core:
        os.kill(c, signal.SIGKILL)
    killed_at = len(_rows(run))
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert killed_at < 12, "the run finished before its W&B service was killed; make it longer"
    assert [r["step"] for r in _rows(run)] == list(range(1, 13))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: tracker wandb failed at step"), err
    assert "metrics.jsonl is unaffected" in lines[0]
    # TensorBoard, beside it, went on to the end
    assert [e.step for e in _tb(run).Tensors("train/loss")] == list(range(1, 13))


def test_tensorboard_file_closed_mid_run_is_one_warning(tmp_path, capsys):
    with trk.open_trackers(["tensorboard"], tmp_path, {"N": 1}) as tr:
        tr.log({"step": 1, "train_loss": 2.0})
        tr.live[0].events._f.close()  # the event file under the writer, as a failing disk leaves it
        for s in (2, 3):
            tr.log({"step": s, "train_loss": 1.0})
        assert not tr.live
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: tracker tensorboard failed at step 2"), err
    assert [e.step for e in _tb(tmp_path).Tensors("train/loss")] == [1]


def test_tracker_flag_checked():
    assert TrainConfig(tracker="wandb,tensorboard,wandb").trackers() == ("wandb", "tensorboard")
    assert TrainConfig(tracker="none").trackers() == ()
    with pytest.raises(ConfigError, match="unknown tracker 'mlflow'"):
        TrainConfig(tracker="mlflow")
    with pytest.raises(ConfigError, match="goes alone"):
        TrainConfig(tracker="none,wandb")


def test_missing_library_is_one_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets where it is not installed
    with trk.open_trackers(["wandb"], tmp_path, {"N": 1}) as tr:
        tr.log({"step": 1, "train_loss": 2.0})
        tr.log({"step": 2, "train_loss": 1.5})
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tracker wandb did not start (ModuleNotFoundError" in err[0] and "flopscale[trackers]" in err[0]


def test_names_are_stable():
    row = {"step": 3, "train_loss": 2.5, "val_loss": None, "val_loss_pydoc": 3.0, "flops": 10, "mfu": None,
           "epochs": 0.5, "note": "text", "ok": True}
    assert trk.scalars(row) == {"train/loss": 2.5, "val/loss_pydoc": 3.0, "compute/flops": 10, "other/epochs": 0.5}


def _use_env(monkeypatch, env: dict) -> None:
    """In this process: the offline W&B set-up of ``env`` and no key."""
    for k in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        if k.startswith("WANDB_"):
            monkeypatch.setenv(k, v)


def test_wandb_disabled_holds_nothing(tmp_path, env, monkeypatch):
    _use_env(monkeypatch, env)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with trk.open_trackers(["wandb"], tmp_path, {"N": 1}) as tr:
        tr.log({"step": 1, "train_loss": 2.0})
        assert [t.name for t in tr.live] == ["wandb"]
    # a later, enabled session must log step 1 again
    assert "last_step" not in json.loads((tmp_path / trk.WANDB_DIR / trk.WANDB_RUN_FILE).read_text())
    assert not list((tmp_path / trk.WANDB_DIR).glob("offline-run-*"))


def test_fit_logs_report_figures(tmp_path, env, monkeypatch):
    from flopscale.cli import main

    _use_env(monkeypatch, env)
    csv = tmp_path / "points.csv"
    csv.write_text("N,loss\n" + "".join(f"{n},{(8.8e13 / n) ** 0.076:.6f}\n" for n in (1e5, 3e5, 1e6, 3e6, 1e7)))
    rep = tmp_path / "report"
    assert main(["fit", "--csv", str(csv), "--law", "n", "--n-boot", "0", "--quiet", "--out", str(rep),
                 "--tracker", "tensorboard", "--tracker", "wandb"]) == 0
    pngs = sorted(p.stem for p in rep.glob("*.png"))
    assert pngs
    ea = EventAccumulator(str(rep / trk.TB_DIR), size_guidance={"tensors": 0})
    ea.Reload()
    assert sorted(ea.PluginTagToContent("images")) == pngs
    (d,) = (rep / trk.WANDB_DIR).glob("offline-run-*")
    assert sorted(p.name.rsplit("_", 2)[0] for p in (d / "files" / "media" / "images" / "report").glob("*.png")) == pngs
