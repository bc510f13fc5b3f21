"""Training runs: measured compute in metrics.jsonl, falling loss, atomic checkpoints and
bit-identical resume after SIGKILL, refusal of a changed config, NaN detection."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flopscale.engine import ModelConfig, TrainConfig
from flopscale.engine import flops as fl
from flopscale.engine.data import stdlib_sample
from flopscale.engine.train import Trainer, TrainError

SHAPE = ["--n-layer", "2", "--d-model", "32", "--n-heads", "2", "--n-ctx", "32"]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A few real text files (standard-library modules) so tokenization stays fast."""
    return stdlib_sample(tmp_path_factory.mktemp("corpus"))


def _train_cmd(out, corpus, *extra):
    return [sys.executable, "-m", "flopscale.cli", "train", *SHAPE, "--data", corpus, "--tokenizer", "bpe-300",
            "--batch-size", "4", "--out", str(out), "--quiet", *extra]


def _metrics(out):
    return [json.loads(l) for l in Path(out, "metrics.jsonl").read_text().splitlines()]


def test_metrics_flops_equal_ledger(small_corpus, tmp_path):
    mc = ModelConfig(n_layer=2, d_model=32, n_heads=2, n_ctx=32)
    tc = TrainConfig(data=small_corpus, tokenizer="bpe-300", batch_size=4, grad_accum=2, steps=6, eval_every=3, warmup=2)
    tr = Trainer(mc, tc, tmp_path / "run", progress=False)
    tr.run()
    rows = _metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 7))
    # every step: 2 micro-batches of (2, 32); the exact per-step non-embedding count
    per_micro = fl.expected_rows(tr.mc, 2, 32, "model")
    per_step = 2 * sum(per_micro[r][0] + per_micro[r][1] for r in fl.NONEMBEDDING_ROWS)
    assert [r["flops"] for r in rows] == [per_step * s for s in range(1, 7)]
    assert [r["tokens"] for r in rows] == [4 * 32 * s for s in range(1, 7)]
    for k in ("flops_total", "flops_executed", "train_loss", "lr", "tokens_per_s", "mfu", "grad_noise_scale", "val_loss"):
        assert k in rows[0]
    assert rows[2]["val_loss"] is not None and rows[0]["val_loss"] is None
    assert rows[-1]["flops_executed"] > rows[-1]["flops_total"] > rows[-1]["flops"]  # eager attention does T x T
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["N"] == tr.mc.N and cfg["data"]["n_train_tokens"] > 0 and "code_version" in cfg
    fj = json.loads((tmp_path / "run" / "flops.json").read_text())
    assert fj["totals"]["model"]["nonembedding"] == rows[-1]["flops"]
    assert set(fj["views"]) == {"paper", "model", "executed"}
    assert fj["views"]["model"]["optimizer"]["bwd"] == 6 * tr.opt_flops


def test_loss_falls_on_default_corpus(tmp_path):
    mc = ModelConfig(n_layer=2, d_model=64, n_heads=4, n_ctx=64)
    tc = TrainConfig(data="stdlib", batch_size=8, steps=60, eval_every=30, warmup=10, lr=3e-3)
    Trainer(mc, tc, tmp_path / "run", progress=False).run()
    rows = _metrics(tmp_path / "run")
    first_val = [r["val_loss"] for r in rows if r["val_loss"] is not None]
    assert rows[0]["train_loss"] > 8.0  # ~ln(4096) at initialisation
    assert first_val[-1] < rows[0]["train_loss"] - 1.5, first_val  # 8.33 -> ~6.6 in 60 steps


def test_sigkill_resume_bit_identical(small_corpus, tmp_path):
    extra = ["--steps", "24", "--eval-every", "4", "--warmup", "3"]
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(ref, small_corpus, *extra), check=True, capture_output=True)
    run = tmp_path / "killed"
    p = subprocess.Popen(_train_cmd(run, small_corpus, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a checkpoint exists and the run is past it
        m = run / "metrics.jsonl"
        if (run / "ckpt.pt").exists() and m.exists() and len(m.read_text().splitlines()) >= 6:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert done < 24, "the run finished before it could be killed; make it longer"
    subprocess.run(_train_cmd(run, small_corpus, *extra), check=True, capture_output=True)
    a, b = _metrics(ref), _metrics(run)
    assert [r["step"] for r in b] == list(range(1, 25))
    for x, y in zip(a, b):
        assert (x["train_loss"], x["val_loss"], x["flops"], x["flops_executed"]) == \
               (y["train_loss"], y["val_loss"], y["flops"], y["flops_executed"])
    # and the same command on a finished run does nothing
    out = subprocess.run(_train_cmd(run, small_corpus, *extra), check=True, capture_output=True, text=True)
    assert "already complete" in out.stdout


def test_changed_config_refused(small_corpus, tmp_path):
    run = tmp_path / "r"
    subprocess.run(_train_cmd(run, small_corpus, "--steps", "2"), check=True, capture_output=True)
    out = subprocess.run(_train_cmd(run, small_corpus, "--steps", "2", "--lr", "0.001"), capture_output=True, text=True)
    assert out.returncode == 2
    assert "different configuration" in out.stderr and "train.lr" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_nan_loss_stops_with_clear_error(small_corpus, tmp_path):
    mc = ModelConfig(n_layer=1, d_model=16, n_heads=2, n_ctx=16)
    tc = TrainConfig(data=small_corpus, tokenizer="bpe-300", batch_size=2, steps=5, eval_every=2)
    tr = Trainer(mc, tc, tmp_path / "run", progress=False)
    with torch.no_grad():
        tr.model.blocks[0].fc_in.weight[0, 0] = float("nan")
    with pytest.raises(TrainError, match="loss is nan at step 1"):
        tr.run()
