"""DDP through torch.distributed (torchrun, gloo on CPU): two ranks match one process with the
same global batch (losses within float tolerance, FLOPs exactly), and a killed DDP run resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flopscale.engine import ModelConfig, TrainConfig
from flopscale.engine.data import stdlib_sample
from flopscale.engine.train import Trainer
from procs import descendants

SHAPE = dict(n_layer=2, d_model=32, n_heads=2, n_ctx=32)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return stdlib_sample(tmp_path_factory.mktemp("corpus"), n_files=10)


def _torchrun(out, corpus, steps, eval_every, **popen):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "flopscale.cli", "train", "--n-layer", "2", "--d-model", "32", "--n-heads", "2", "--n-ctx", "32",
           "--data", corpus, "--tokenizer", "bpe-300", "--batch-size", "8", "--grad-accum", "1",
           "--steps", str(steps), "--eval-every", str(eval_every), "--warmup", "2", "--noise-scale",
           "--quiet", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **popen)


def _kill_tree(pid):
    """SIGKILL the torchrun this test started and its workers (torchrun puts each worker in a
    session of its own, so killing torchrun's process group would leave them running)."""
    for q in descendants(pid) + [pid]:
        try:
            os.kill(q, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _metrics(out):
    return [json.loads(l) for l in Path(out, "metrics.jsonl").read_text().splitlines()]


def _single(corpus, out, steps, eval_every):
    """One process, grad_accum 2: micro-batches 0 and 1 of each step are exactly what ranks 0
    and 1 draw under DDP with grad_accum 1 (global micro-batch k = rank * grad_accum + micro)."""
    tc = TrainConfig(data=corpus, tokenizer="bpe-300", batch_size=8, grad_accum=2, steps=steps,
                     eval_every=eval_every, warmup=2, noise_scale=True)
    tr = Trainer(ModelConfig(**SHAPE), tc, out, progress=False)
    tr.run()
    return tr, _metrics(out)


def _compare(ref, got, opt_flops):
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    for a, b in zip(ref, got):
        print(f"step {a['step']}: loss {a['train_loss']:.7f} vs {b['train_loss']:.7f}, "
              f"val {a['val_loss']} vs {b['val_loss']}, B_noise {a['grad_noise_scale']:.4f} vs {b['grad_noise_scale']:.4f}")
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5, abs=1e-6)
        if a["val_loss"] is not None:
            assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5, abs=1e-6)
        assert b["grad_noise_scale"] == pytest.approx(a["grad_noise_scale"], rel=1e-3)
        # the ledger: all-reduced per-step counts equal the one-process counts exactly
        assert (b["flops"], b["flops_total"], b["tokens"]) == (a["flops"], a["flops_total"], a["tokens"])
        # executed view: every rank applies the optimizer update
        assert b["flops_executed"] - a["flops_executed"] == a["step"] * opt_flops


def test_two_rank_gloo_matches_single_process(corpus_dir, tmp_path):
    tr, ref = _single(corpus_dir, tmp_path / "single", 6, 3)
    p = _torchrun(tmp_path / "ddp", corpus_dir, 6, 3)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    got = _metrics(tmp_path / "ddp")
    _compare(ref, got, tr.opt_flops)
    cfg = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert cfg["world_size"] == 2
    fj = json.loads((tmp_path / "ddp" / "flops.json").read_text())
    assert fj["totals"]["model"]["nonembedding"] == ref[-1]["flops"]


def test_killed_ddp_run_resumes(corpus_dir, tmp_path):
    """SIGKILL torchrun and its ranks mid-run; the same command resumes from rank 0's checkpoint
    and continues exactly as an uninterrupted DDP run does (gloo sums in a fixed order on CPU)."""
    steps = 150  # long enough that the kill lands mid-run
    p = _torchrun(tmp_path / "ref", corpus_dir, steps, 4)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    ref = _metrics(tmp_path / "ref")
    run = tmp_path / "ddp"
    p = _torchrun(run, corpus_dir, steps, 4)
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:  # kill once past a checkpoint
        m = run / "metrics.jsonl"
        if (run / "ckpt.pt").exists() and m.exists() and len(m.read_text().splitlines()) >= 6:
            break
        time.sleep(0.01)
    _kill_tree(p.pid)
    p.communicate()
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert done < steps, "the run finished before it could be killed; make it longer"
    p = _torchrun(run, corpus_dir, steps, 4)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    got = _metrics(run)
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    keys = ("train_loss", "val_loss", "grad_noise_scale", "flops", "flops_total", "flops_executed", "tokens")
    for a, b in zip(ref, got):
        assert [a[k] for k in keys] == [b[k] for k in keys], a["step"]
