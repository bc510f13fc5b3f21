"""--optimizer adafactor: its FLOPs in the optimizer row, training, and its one-line refusals."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flopscale.engine import ModelConfig, TrainConfig
from flopscale.engine import flops as fl
from flopscale.engine.config import ConfigError
from flopscale.engine.data import stdlib_sample
from flopscale.engine.train import Trainer


def test_adafactor_flops_by_hand():
    # a (3, 5) matrix: 15 per element, 6 per row, 5 per column; a vector of 7: 13 each; clip 3 each
    assert fl.adafactor_flops([(3, 5)], 0, False) == 15 * 15 + 6 * 3 + 5 * 5
    assert fl.adafactor_flops([(7,)], 0, False) == 13 * 7
    assert fl.adafactor_flops([(3, 5), (7,)], 15, True) == 15 * 15 + 6 * 3 + 5 * 5 + 13 * 7 + 15 + 3 * 22


def test_adafactor_trains_and_books_its_row(tmp_path):
    corpus = stdlib_sample(tmp_path / "corpus", n_files=4)
    mc = ModelConfig(n_layer=1, d_model=32, n_heads=2, n_ctx=32)
    tc = TrainConfig(data=corpus, tokenizer="bpe-300", batch_size=4, steps=8, eval_every=4, warmup=2,
                     optimizer="adafactor", lr=1e-2)
    tr = Trainer(mc, tc, tmp_path / "run", progress=False)
    tr.run()
    shapes = [tuple(p.shape) for p in tr.model.parameters()]
    decayed = sum(p.numel() for p in tr.model.parameters() if p.dim() >= 2)
    assert tr.opt_flops == fl.adafactor_flops(shapes, decayed, True)
    assert type(tr.opt).__name__ == "Adafactor"
    fj = json.loads((tmp_path / "run" / "flops.json").read_text())
    assert fj["views"]["model"]["optimizer"]["bwd"] == 8 * tr.opt_flops
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_adafactor_refuses_options_it_lacks(tmp_path):
    with pytest.raises(ConfigError, match="adafactor has no --beta1"):
        TrainConfig(optimizer="adafactor", beta1=0.8)
    out = subprocess.run([sys.executable, "-m", "flopscale.cli", "train", "--n-layer", "1", "--d-model", "16",
                          "--optimizer", "adafactor", "--beta2", "0.99", "--out", str(tmp_path / "r")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "beta2" in out.stderr and "Traceback" not in out.stderr
