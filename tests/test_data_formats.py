"""Token formats people have on disk (engine/formats.py, engine/data.py): each written with numpy
exactly as its upstream writer lays it out, read memory-mapped, and trained on; the bad-data
errors; sampling without replacement; --unique-tokens recorded where the fitter reads it."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from flopscale.engine.config import ModelConfig, TrainConfig
from flopscale.engine.data import DataError, load_corpus, write_shard
from flopscale.engine.formats import Tokens
from flopscale.engine.train import Trainer

N_CTX = 16


# -- upstream writers, as they lay files out ---------------------------------------------------
def write_llmc(path, toks, version):
    """llm.c dev/data/data_common.py write_datafile: 256 int32 header [magic, version, n], then
    the tokens (uint16 for version 1, uint32 for version 7)."""
    header = np.zeros(256, dtype=np.int32)
    header[0] = {1: 20240520, 7: 20240801}[version]
    header[1] = version
    header[2] = len(toks)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(toks, dtype={1: np.uint16, 7: np.uint32}[version]).tobytes())


def write_memmap(path, toks, dtype):
    """nanoGPT's prepare.py and OLMo/Dolma's token files: np.memmap(mode='w+'), no header."""
    arr = np.memmap(path, dtype=dtype, mode="w+", shape=(len(toks),))
    arr[:] = toks
    arr.flush()
    del arr


def _toks(n, vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, n)


def _train(data, out, steps=2, **train):
    mc = ModelConfig(n_layer=1, d_model=16, n_heads=2, n_ctx=N_CTX, n_vocab=2)
    tc = TrainConfig(data=str(data), batch_size=2, steps=steps, eval_every=steps, eval_batches=1, warmup=1, **train)
    tr = Trainer(mc, tc, out, progress=False)
    row = tr.run()
    return tr, row


def _rows(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


# -- each format, trained on -----------------------------------------------------------------
def test_llmc_v1_folder_memmapped_and_trained(tmp_path):
    d = tmp_path / "fw"
    d.mkdir()
    parts = [_toks(3000, 300, s) for s in range(3)]
    write_llmc(d / "fw_val_000000.bin", parts[0], 1)
    write_llmc(d / "fw_train_000001.bin", parts[1], 1)
    write_llmc(d / "fw_train_000002.bin", parts[2], 1)
    c = load_corpus(str(d))
    assert c.provenance["format"] == "llm.c v1 (uint16)" and c.vocab_size == int(max(parts[1].max(), parts[2].max(), parts[0].max())) + 1
    assert all(isinstance(p, np.memmap) for p in c.train.parts + c.val.parts)  # nothing loaded, nothing copied
    assert c.n_train_tokens == 6000 and c.val.size == 3000
    # windows are read in place and may span the shard boundary: the tokens of the concatenation
    both = np.concatenate(parts[1:])
    idx = np.array([[2990 + j for j in range(N_CTX + 1)], [5 + j for j in range(N_CTX + 1)]])
    assert np.array_equal(c.train[idx], both[idx])
    tr, row = _train(d, tmp_path / "run")
    assert tr.mc.n_vocab == c.vocab_size and np.isfinite(row["val_loss"])


def test_llmc_v7_uint32_vocab_above_65536(tmp_path):
    d = tmp_path / "big"
    d.mkdir()
    toks = _toks(2000, 70000, 1)
    toks[7] = 69999
    write_llmc(d / "x_train_000001.bin", toks, 7)
    write_llmc(d / "x_val_000000.bin", _toks(500, 70000, 2), 7)
    c = load_corpus(str(d), data_format="llmc", n_vocab=70000)
    assert c.train.dtype == np.dtype("<u4") and c.vocab_size == 70000
    x, y = c.batch("train", 0, 0, 4, N_CTX, 1)
    assert int(x.max()) < 70000 and x.dtype.is_floating_point is False
    tr, row = _train(d, tmp_path / "run", data_vocab=70000)
    assert tr.mc.n_vocab == 70000 and np.isfinite(row["val_loss"])


def test_nanogpt_train_val_bin_with_meta_pkl(tmp_path):
    d = tmp_path / "shakespeare_char"
    d.mkdir()
    write_memmap(d / "train.bin", _toks(4000, 65, 3), np.uint16)
    write_memmap(d / "val.bin", _toks(400, 65, 4), np.uint16)
    chars = [chr(32 + i) for i in range(65)]
    with open(d / "meta.pkl", "wb") as f:  # nanoGPT data/shakespeare_char/prepare.py
        pickle.dump({"vocab_size": 65, "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}, f)
    c = load_corpus(str(d), data_format="nanogpt")
    assert c.vocab_size == 65 and c.provenance["vocab_from"] == "meta.pkl"
    assert c.n_train_tokens == 4000 and c.val.size == 400
    tr, row = _train(d, tmp_path / "run", data_format="nanogpt")
    assert tr.mc.n_vocab == 65 and np.isfinite(row["val_loss"])


class _Boom:
    def __reduce__(self):
        return (print, ("ran code from meta.pkl",))


def test_meta_pkl_is_never_executed(tmp_path, capsys):
    d = tmp_path / "nano"
    d.mkdir()
    write_memmap(d / "train.bin", _toks(1000, 50, 5), np.uint16)
    with open(d / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 50, "x": _Boom()}, f)
    with pytest.raises(DataError, match="not a plain-data meta.pkl.*--n-vocab"):
        load_corpus(str(d), data_format="nanogpt")
    assert "ran code" not in capsys.readouterr().out
    c = load_corpus(str(d / "train.bin"), data_format="nanogpt", n_vocab=50)  # the way around it
    assert c.vocab_size == 50 and c.val.size == 50  # no val.bin: the last 5% held out


@pytest.mark.parametrize("dtype,vocab", [(np.uint16, 50280), (np.uint32, 100278)])
def test_olmo_headerless_arrays_dtype_detected(tmp_path, dtype, vocab):
    d = tmp_path / "dolma"
    d.mkdir()
    toks = _toks(3000, vocab, 6)
    write_memmap(d / "part-0-00000.npy", toks, dtype)
    c = load_corpus(str(d), data_format="olmo")
    assert c.train.dtype == np.dtype(dtype) and c.vocab_size == int(toks.max()) + 1
    assert np.array_equal(np.asarray(c.train), toks[:c.n_train_tokens])
    c2 = load_corpus(str(d), data_format="olmo", n_vocab=vocab)  # --n-vocab picks the dtype
    assert c2.train.dtype == np.dtype(dtype) and c2.vocab_size == vocab
    if dtype is np.uint16:
        tr, row = _train(d, tmp_path / "run", data_format="olmo")
        assert np.isfinite(row["val_loss"])


def test_flopstok_shards_still_read(tmp_path):
    write_shard(tmp_path / "a.bin", _toks(1500, 40, 7), 40)
    write_shard(tmp_path / "b_val.bin", _toks(300, 40, 8), 40)
    c = load_corpus(str(tmp_path))
    assert c.vocab_size == 40 and c.provenance["format"].startswith("FLOPSTOK") and c.val.size == 300
    assert isinstance(c.train.parts[0], np.memmap)
    tr, row = _train(tmp_path, tmp_path / "run")
    assert tr.mc.n_vocab == 40 and np.isfinite(row["val_loss"])


def _texts(n=60):
    words = "the quick brown fox jumps over a lazy dog while data flows through shards".split()
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(words, 30)) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    """A small byte-level BPE (the engine's trainer) saved as a HF tokenizer.json."""
    from flopscale.engine.tokenizer import train_bpe

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_bpe(iter(_texts()), 300).save(str(path))
    return str(path)


@pytest.mark.parametrize("kind", ["saved", "parquet", "jsonl"])
def test_hf_datasets_on_disk_trained(tmp_path, kind, tokenizer_json):
    """load_from_disk folders, parquet and jsonl with a text column (here 'content')."""
    texts = _texts()
    src = tmp_path / "src"
    if kind == "saved":
        import datasets

        datasets.Dataset.from_dict({"content": texts, "id": list(range(len(texts)))}).save_to_disk(str(src))
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        src.mkdir()
        pq.write_table(pa.table({"content": texts}), src / "part-0.parquet", row_group_size=25)
    else:
        src.mkdir()
        (src / "a.jsonl").write_text("".join(json.dumps({"content": t}) + "\n" for t in texts))
    with pytest.raises(DataError, match="no column 'text'|no 'text'"):
        load_corpus(str(src), tokenizer_json)
    tr, row = _train(src, tmp_path / "run", tokenizer=tokenizer_json, text_column="content")
    c = tr.corpus
    assert c.provenance["format"] == "llm.c v1 (uint16)" and c.vocab_size == 300 and np.isfinite(row["val_loss"])
    assert c.tokenizer is not None  # the tokenizer is known: the vocabulary is its size


# -- bad data: one line each ---------------------------------------------------------------------
def test_bad_shards_are_one_line_errors(tmp_path):
    write_llmc(tmp_path / "ok.bin", _toks(500, 300), 1)
    raw = (tmp_path / "ok.bin").read_bytes()
    (tmp_path / "magic.bin").write_bytes(np.int32(12345).tobytes() + raw[4:])
    with pytest.raises(DataError, match="magic 12345.*--data-format nanogpt or olmo"):
        load_corpus(str(tmp_path / "magic.bin"))
    (tmp_path / "short.bin").write_bytes(raw[:-6])
    with pytest.raises(DataError, match="header says 500 tokens, file holds 497"):
        load_corpus(str(tmp_path / "short.bin"))
    (tmp_path / "ver.bin").write_bytes(raw[:4] + np.int32(7).tobytes() + raw[8:])
    with pytest.raises(DataError, match="goes with version 1, header says 7"):
        load_corpus(str(tmp_path / "ver.bin"))
    with pytest.raises(DataError, match=r"token id \d+ >= vocab size 100"):
        load_corpus(str(tmp_path / "ok.bin"), n_vocab=100)


def test_mixed_v1_v7_folder_refused_in_one_line(tmp_path):
    write_llmc(tmp_path / "d_train_000001.bin", _toks(500, 300), 1)
    write_llmc(tmp_path / "d_train_000002.bin", _toks(500, 300), 7)
    out = subprocess.run([sys.executable, "-m", "flopscale.cli", "train", "--n-layer", "1", "--d-model", "16",
                          "--n-ctx", "16", "--steps", "1", "--quiet", "--data", str(tmp_path), "--out",
                          str(tmp_path / "r")], capture_output=True, text=True, timeout=300)
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "mix formats or versions (llm.c v1 (uint16), llm.c v7 (uint32))" in lines[0]


# -- memory, sampling, data-constrained runs ---------------------------------------------------
def test_tokens_slices_are_views():
    a, b = np.arange(10, dtype=np.uint16), np.arange(10, 25, dtype=np.uint16)
    t = Tokens([a, b])
    s = t[5:18]
    assert s.size == 13 and np.array_equal(np.asarray(s), np.arange(5, 18))
    assert all(np.shares_memory(p, q) for p, q in zip(s.parts, (a, b)))  # views, no copy
    assert t[12] == 12 and t[-1] == 24


def test_without_replacement_is_a_permutation_per_epoch(tmp_path):
    write_llmc(tmp_path / "t_train_000001.bin", np.arange(16 * 40 + 1) % 60000, 1)
    write_llmc(tmp_path / "t_val_000000.bin", _toks(200, 300), 1)
    c = load_corpus(str(tmp_path))
    W = c.n_windows(N_CTX)
    assert W == 40
    starts = []
    for step in range(5):  # 5 steps x 2 micro-batches x 4 sequences = one epoch of 40 windows
        for micro in range(2):
            x, _ = c.batch("train", step, micro, 4, N_CTX, seed=3, sampling="without-replacement", global_batch=8)
            starts += (x[:, 0] // N_CTX).tolist()
            assert (x[:, 1:] - x[:, :-1] == 1).all()  # fixed windows at stride n_ctx
    assert sorted(starts) == list(range(W))
    # the same sequences however the step is split into micro-batches (resume on another world size)
    x8, _ = c.batch("train", 2, 0, 8, N_CTX, seed=3, sampling="without-replacement", global_batch=8)
    assert (x8[:, 0] // N_CTX).tolist() == starts[16:24]
    nxt, _ = c.batch("train", 5, 0, 8, N_CTX, seed=3, sampling="without-replacement", global_batch=8)
    assert (nxt[:, 0] // N_CTX).tolist() != starts[:8]  # epoch 1: a new permutation
    assert c.epoch_record(5 * 8 * N_CTX, 5, 8, N_CTX, "without-replacement")["epoch"] == 0
    assert c.epoch_record(6 * 8 * N_CTX, 6, 8, N_CTX, "without-replacement")["epoch"] == 1


def test_unique_tokens_recorded_for_the_data_constrained_fit(tmp_path):
    from flopscale.fitting.runs import load_run, run_point

    write_llmc(tmp_path / "u_train_000001.bin", _toks(5000, 300, 9), 1)
    write_llmc(tmp_path / "u_val_000000.bin", _toks(500, 300, 10), 1)
    out = tmp_path / "run"
    tr, _ = _train(tmp_path, out, steps=4, unique_tokens=40, sampling="without-replacement")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["unique_tokens"] == 40 and cfg["data"]["n_train_tokens"] == 40
    assert cfg["data"]["epochs"] == 4 * 2 * N_CTX / 40
    rows = _rows(out)
    assert [r["unique_tokens"] for r in rows] == [40] * 4
    assert [r["epochs"] for r in rows] == [r["tokens"] / 40 for r in rows]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]  # 2 windows of 16 in 40 tokens, 2 sequences per step
    p = run_point(load_run(str(out)), tokens_seen=True)
    assert p["U"] == 40 and p["D"] == 4 * 2 * N_CTX
