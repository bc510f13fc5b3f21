"""Evaluation extras: the loss per token position (--eval-positions)."""

import json
import math
from pathlib import Path

import pytest

from flopscale.engine import ModelConfig, TrainConfig
from flopscale.engine.data import stdlib_sample
from flopscale.engine.train import Trainer


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    return stdlib_sample(tmp_path_factory.mktemp("corpus"), n_files=4)


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_positions_average_to_the_eval_loss(arch, small_corpus, tmp_path):
    mc = ModelConfig(n_layer=1, d_model=32, n_heads=2, n_ctx=24, arch=arch)
    tc = TrainConfig(data=small_corpus, tokenizer="bpe-300", batch_size=4, steps=6, eval_every=3, warmup=2,
                     eval_batches=3, eval_positions=True)
    tr = Trainer(mc, tc, tmp_path / "run", progress=False)
    tr.run()
    rows = [json.loads(l) for l in Path(tmp_path / "run", "metrics.jsonl").read_text().splitlines()]
    pos = [json.loads(l) for l in Path(tmp_path / "run", "positions.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["val_loss"] is not None]
    assert [p["step"] for p in pos] == [r["step"] for r in evals] == [3, 6]
    for p, r in zip(pos, evals):
        by_t = p["val_loss_by_position"]
        assert len(by_t) == 24 and all(math.isfinite(x) and x > 0 for x in by_t)
        assert sum(by_t) / len(by_t) == pytest.approx(r["val_loss"], rel=1e-12, abs=0)
    # the same model and batches through the default eval path: the same loss up to rounding
    tr.tc.eval_positions = False
    assert tr.evaluate() == pytest.approx(evals[-1]["val_loss"], rel=1e-6)


def test_position_law_recovered_from_synthetic_curve():
    import numpy as np

    from flopscale.fitting.laws import position_law
    from flopscale.fitting.positions import fit_position_law

    t = np.arange(1, 65, dtype=float)
    y = position_law(t, 3.2, 7.5, 0.6) * (1 + 1e-4 * np.sin(t))  # a hair of noise
    p = fit_position_law(y)["params"]
    assert p["L_inf"] == pytest.approx(3.2, rel=2e-2)
    assert p["t_c"] == pytest.approx(7.5, rel=5e-2)
    assert p["alpha_t"] == pytest.approx(0.6, rel=3e-2)


def test_report_fits_positions_of_runs(small_corpus, tmp_path):
    from flopscale.fitting.api import fit_and_report

    for i, arch in enumerate(["gpt", "lstm", "universal"]):
        mc = ModelConfig(n_layer=1 + i % 2, d_model=16 + 8 * i, n_heads=2, n_ctx=24, arch=arch)
        tc = TrainConfig(data=small_corpus, tokenizer="bpe-300", batch_size=4, steps=4, eval_every=2, warmup=1,
                         eval_batches=2, eval_positions=True)
        Trainer(mc, tc, tmp_path / "runs" / arch, progress=False).run()
    out = tmp_path / "report"
    payload = fit_and_report([str(tmp_path / "runs")], out=str(out), laws="n", n_boot=0)
    pos = payload["positions"]
    assert sorted(p["arch"] for p in pos) == ["gpt", "lstm", "universal"]
    assert all(set(p["params"]) == {"L_inf", "t_c", "alpha_t"} and len(p["losses"]) == 24 for p in pos)
    assert (out / "positions.png").stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "## Loss per token position" in md and "positions.png" in md


def test_eval_data_held_out_of_training(tmp_path):
    import shutil
    import subprocess  # noqa: F401

    import numpy as np

    from flopscale.engine.data import eval_files, load_corpus, pydoc_topics_file
    from flopscale.engine.tokenizer import stdlib_files

    folder = Path(stdlib_sample(tmp_path / "corpus", n_files=5))
    held = sorted(folder.iterdir())[2]
    tc = TrainConfig(data=str(folder), tokenizer="bpe-300", batch_size=4, steps=4, eval_every=2, warmup=1,
                     eval_batches=2, eval_data=f"held={held},prose=pydoc")
    corpus = load_corpus(tc.data, tc.tokenizer, None, tc.eval_corpora())
    assert corpus.provenance["n_files"] == 4  # the held file left the training corpus
    assert set(corpus.evals) == {"held", "prose"}
    # the training split is exactly that of the corpus without the held file, and the held file's
    # tokens are the eval corpus (plus its end-of-text token)
    rest = tmp_path / "rest"
    rest.mkdir()
    for f in folder.iterdir():
        if f != held:
            shutil.copy(f, rest / f.name)
    alone = load_corpus(str(rest), tc.tokenizer)
    assert np.array_equal(alone.train, corpus.train) and np.array_equal(alone.val, corpus.val)
    assert corpus.evals["held"].size == len(corpus.tokenizer.encode(held.read_text()).ids) + 1
    # the default second distribution is part of the stdlib corpus, so --eval-data X=pydoc removes it
    assert eval_files("pydoc")[0] in {f.resolve() for f in stdlib_files()} and pydoc_topics_file().exists()
    mc = ModelConfig(n_layer=1, d_model=16, n_heads=2, n_ctx=24)
    Trainer(mc, tc, tmp_path / "run", progress=False).run()
    rows = [json.loads(l) for l in Path(tmp_path / "run", "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        for k in ("val_loss_held", "val_loss_prose"):
            assert (r[k] is None) == (r["val_loss"] is None) and (r[k] is None or r[k] > 0)
    shutil.rmtree(tmp_path / "run")


@pytest.mark.parametrize("flag,why", [("prose", "NAME=PATH"), ("x=/no/such/corpus", "eval data not found")])
def test_eval_data_bad_input_one_line(flag, why, tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "flopscale.cli", "train", "--n-layer", "1", "--d-model", "16",
                          "--data", stdlib_sample(tmp_path / "c", n_files=2), "--tokenizer", "bpe-300",
                          "--eval-data", "ok=pydoc", "--eval-data", flag, "--steps", "1", "--quiet",
                          "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert why in out.stderr and "Traceback" not in out.stderr
