"""Bad input: one clear line on stderr, a non-zero exit, never a traceback."""

import subprocess
import sys

import numpy as np
import pytest

from flopscale.engine.data import DataError, load_corpus, read_shard, write_shard

TRAIN = ["train", "--n-layer", "1", "--d-model", "16", "--n-heads", "2", "--n-ctx", "16", "--steps", "1", "--quiet"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "flopscale.cli", *args], capture_output=True, text=True, timeout=300)


def _assert_one_line_error(out, *needles):
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = [l for l in out.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, out.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def shard_dir(tmp_path):
    write_shard(tmp_path / "ok.bin", np.arange(500) % 50, 50)
    return tmp_path


def test_d_model_not_divisible(tmp_path):
    _assert_one_line_error(_cli("flops", "--n-layer", "2", "--d-model", "100", "--n-heads", "3"), "divisible by n_heads")


def test_zero_layers(tmp_path):
    _assert_one_line_error(_cli("flops", "--n-layer", "0", "--d-model", "64"), "n_layer must be at least 1")


def test_missing_data_file(tmp_path):
    _assert_one_line_error(_cli(*TRAIN, "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "r")), "not found")


def test_empty_data_file(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    _assert_one_line_error(_cli(*TRAIN, "--data", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "r")), "empty")


def test_corrupt_shard(tmp_path):
    (tmp_path / "bad.bin").write_bytes(b"\x00" * 100)
    _assert_one_line_error(_cli(*TRAIN, "--data", str(tmp_path / "bad.bin"), "--out", str(tmp_path / "r")), "corrupt")


def test_negative_lr(shard_dir):
    _assert_one_line_error(_cli(*TRAIN, "--data", str(shard_dir / "ok.bin"), "--lr", "-1", "--out", str(shard_dir / "r")),
                           "lr must be positive")


def test_unknown_backend(shard_dir):
    _assert_one_line_error(_cli(*TRAIN, "--data", str(shard_dir / "ok.bin"), "--backend", "jax", "--out", str(shard_dir / "r")),
                           "unknown backend")


def test_shard_round_trip_and_corruptions(tmp_path):
    toks = np.random.default_rng(0).integers(0, 1000, 777)
    write_shard(tmp_path / "a.bin", toks, 1000)
    got, vocab = read_shard(tmp_path / "a.bin")
    assert vocab == 1000 and np.array_equal(got, toks)
    raw = (tmp_path / "a.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes(raw[:-2])
    with pytest.raises(DataError, match="header says 777 tokens"):
        read_shard(tmp_path / "short.bin")
    (tmp_path / "magic.bin").write_bytes(b"NOTTOKEN" + raw[8:])
    with pytest.raises(DataError, match="bad magic"):
        read_shard(tmp_path / "magic.bin")
    with pytest.raises(DataError, match=">= vocab size"):
        write_shard(tmp_path / "big.bin", np.array([5, 2000]), 1000)


def test_non_utf8_text(tmp_path):
    (tmp_path / "latin.txt").write_bytes("caf\xe9 ".encode("latin-1") * 100)
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_corpus(str(tmp_path / "latin.txt"), "bpe-300")


def test_shards_and_max_tokens(shard_dir):
    c = load_corpus(str(shard_dir), max_tokens=100)
    assert c.vocab_size == 50 and c.n_train_tokens == 100 and c.val.size == 25  # 5% of 500 held out
    x, y = c.batch("train", step=3, micro=1, batch_size=4, n_ctx=16, seed=7)
    x2, y2 = c.batch("train", step=3, micro=1, batch_size=4, n_ctx=16, seed=7)
    assert x.shape == (4, 16) and (x == x2).all() and (x[:, 1:] == y[:, :-1]).all()
