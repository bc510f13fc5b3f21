"""Learning-rate schedules and cooldown branches: a wsd run's cooldown branch (init_from a
checkpoint its parent kept in the stable phase) is the same run, bit for bit on CPU, as a
standalone wsd run of the branch's length; a branch that is not is refused with one line."""

import dataclasses
import json
from pathlib import Path

import pytest

from flopscale.engine import ModelConfig, TrainConfig
from flopscale.engine.data import stdlib_sample
from flopscale.engine.schedule import decay_start_step, lr_at
from flopscale.engine.train import Trainer, TrainError

MC = ModelConfig(n_layer=1, d_model=32, n_heads=2, n_ctx=16)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return stdlib_sample(tmp_path_factory.mktemp("corpus"), n_files=6)


def _tc(corpus, **kw):
    base = dict(data=corpus, tokenizer="bpe-300", batch_size=4, grad_accum=2, noise_scale=True, warmup=4,
                lr=3e-3, schedule="wsd", decay_frac=0.25, eval_every=8, eval_batches=2)
    return TrainConfig(**{**base, **kw})


def _rows(run):
    return [json.loads(ln) for ln in Path(run, "metrics.jsonl").read_text().splitlines()]


def test_wsd_shape():
    tc = TrainConfig(schedule="wsd", steps=100, warmup=10, lr=1.0, min_lr_frac=0.1, decay_frac=0.2)
    lrs = [lr_at(t, tc) for t in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0
    assert decay_start_step(tc) == 80 and set(lrs[10:80]) == {1.0}
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:]))  # strictly decreasing cooldown
    assert lrs[-1] == pytest.approx(0.1)  # ends at the floor
    longer = dataclasses.replace(tc, steps=200)
    assert [lr_at(t, longer) for t in range(80)] == lrs[:80]  # the stable phase is shared


def test_cooldown_branch_equals_a_standalone_run(corpus, tmp_path):
    parent = _tc(corpus, steps=40, keep_steps="24")                      # decays from step 30
    Trainer(MC, parent, tmp_path / "parent", progress=False).run()
    assert (tmp_path / "parent" / "ckpt-24.pt").exists()
    branch = _tc(corpus, steps=32, init_from=f"{tmp_path / 'parent'}@24")  # decays from step 24
    Trainer(MC, branch, tmp_path / "branch", progress=False).run()
    alone = _tc(corpus, steps=32)
    Trainer(MC, alone, tmp_path / "alone", progress=False).run()
    b, a = _rows(tmp_path / "branch"), _rows(tmp_path / "alone")
    assert [r["step"] for r in b] == list(range(1, 33))
    for key in ("train_loss", "tokens", "flops", "flops_total", "flops_executed", "grad_noise_scale", "lr"):
        assert [r[key] for r in b] == [r[key] for r in a], key
    assert b[-1]["val_loss"] == a[-1]["val_loss"]
    assert _rows(tmp_path / "parent")[:24] == b[:24]  # the copied curve
    flops_b = json.loads((tmp_path / "branch" / "flops.json").read_text())["views"]
    flops_a = json.loads((tmp_path / "alone" / "flops.json").read_text())["views"]
    assert flops_b == flops_a
    # run again: complete, nothing retrained
    assert Trainer(MC, branch, tmp_path / "branch", progress=False).run() == {"step": 32, "complete": True}


def test_bad_branches_are_refused(corpus, tmp_path):
    Trainer(MC, _tc(corpus, steps=12, keep_steps="8", schedule="cosine"), tmp_path / "cos", progress=False).run()
    with pytest.raises(TrainError, match="fields differ: schedule"):
        Trainer(MC, _tc(corpus, steps=12, init_from=f"{tmp_path / 'cos'}@8"), tmp_path / "b0", progress=False).run()
    # a wsd parent already cooling down at the branch step (its decay starts at step 6)
    Trainer(MC, _tc(corpus, steps=8, decay_frac=0.25, keep_steps="7"), tmp_path / "late", progress=False).run()
    with pytest.raises(TrainError, match="learning rate differs at step 6"):
        Trainer(MC, _tc(corpus, steps=10, decay_frac=0.25, init_from=f"{tmp_path / 'late'}@7"), tmp_path / "b1",
                progress=False).run()
    Trainer(MC, _tc(corpus, steps=20, keep_steps="8"), tmp_path / "wsd", progress=False).run()
    with pytest.raises(TrainError, match="fields differ: seed"):
        Trainer(MC, _tc(corpus, steps=12, seed=7, init_from=f"{tmp_path / 'wsd'}@8"), tmp_path / "b2",
                progress=False).run()
    with pytest.raises(TrainError, match="ckpt-6.pt does not exist"):
        Trainer(MC, _tc(corpus, steps=12, init_from=f"{tmp_path / 'wsd'}@6"), tmp_path / "b3", progress=False).run()
    with pytest.raises(TrainError, match="no run in"):
        Trainer(MC, _tc(corpus, steps=12, init_from=f"{tmp_path / 'nope'}@6"), tmp_path / "b4", progress=False).run()
