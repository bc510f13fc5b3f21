"""`flopscale data prepare` (engine/prepare.py): llm.c layout, the same shards from 1 or 2 worker
processes, resume after an interruption, tokenizer errors offline, empty text."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from flopscale.engine import prepare as prep
from flopscale.engine.data import DataError, load_corpus
from flopscale.engine.tokenizer import train_bpe

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def _docs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(5, 60)))) for _ in range(n)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_bpe(iter(_docs()), 300).save(str(path))
    return str(path)


def _read_llmc(path):
    raw = np.fromfile(path, dtype="<i4", count=256)
    dtype = {1: "<u2", 7: "<u4"}[int(raw[1])]
    return raw, np.fromfile(path, dtype=dtype, offset=1024)


def test_layout_and_workers_agree(tmp_path, tok, monkeypatch):
    from tokenizers import Tokenizer

    monkeypatch.setattr(prep, "UNIT_BYTES", 2048)  # several units from a small folder
    src = tmp_path / "txt"
    src.mkdir()
    docs = _docs()
    for i, d in enumerate(docs):
        (src / f"doc{i:03d}.txt").write_text(d)
    one = prep.prepare(str(src), str(tmp_path / "w1"), tokenizer=tok, workers=1, shard_tokens=1500, progress=False)
    two = prep.prepare(str(src), str(tmp_path / "w2"), tokenizer=tok, workers=2, shard_tokens=1500, progress=False)
    assert one["shards"] == two["shards"] and len(one["shards"]) >= 3
    for name in one["shards"]:
        a, b = (tmp_path / "w1" / name).read_bytes(), (tmp_path / "w2" / name).read_bytes()
        assert a == b, name
    assert one["shards"][0] == "txt_val_000000.bin" and one["shards"][1] == "txt_train_000001.bin"
    # llm.c's header words and dtype, and the stream: EOT before every document (files in name order)
    t = Tokenizer.from_file(tok)
    eot = t.token_to_id("<|endoftext|>")
    want = np.concatenate([[eot] + t.encode(d, add_special_tokens=False).ids for d in docs])
    got = []
    for name in one["shards"]:
        hdr, toks = _read_llmc(tmp_path / "w1" / name)
        assert hdr[0] == 20240520 and hdr[1] == 1 and hdr[2] == toks.size and not hdr[3:].any()
        assert (tmp_path / "w1" / name).stat().st_size == 1024 + 2 * toks.size
        got.append(toks)
    assert np.array_equal(np.concatenate(got), want)
    assert one["n_tokens"]["val"] == want.size // 10 and one["vocab_size"] == 300
    assert not (tmp_path / "w1" / ".prepare").exists() and (tmp_path / "w1" / "tokenizer.json").is_file()
    (tmp_path / "other.txt").write_text(" ".join(_docs(20, 9)))
    c = load_corpus(str(tmp_path / "w1"), eval_data=(("other", str(tmp_path / "other.txt")),))
    assert c.vocab_size == 300 and c.provenance["vocab_from"] == "prepare.json"  # llm.c shards, vocab from prepare.json
    assert c.evals["other"].size > 100  # and its tokenizer.json tokenizes --eval-data


def test_resume_after_interruption(tmp_path, tok, monkeypatch):
    """A unit fails half-way (a corrupt line); the units before it stay done; with the line fixed
    (same length), the same command skips them and the shards equal a fresh run's."""
    monkeypatch.setattr(prep, "UNIT_BYTES", 4096)
    lines = [json.dumps({"text": d}) for d in _docs(200, 1)]
    bad = len(lines) * 3 // 4
    good = lines[bad]
    lines[bad] = "{" + "x" * (len(good) - 1)  # not JSON, the same byte length
    src = tmp_path / "c.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="not JSON"):
        prep.prepare(str(src), str(out), tokenizer=tok, progress=False)
    done = sorted((out / ".prepare").glob("part_*.json"))
    assert len(done) >= 2 and not (out / "prepare.json").exists()
    lines[bad] = good
    src.write_text("\n".join(lines) + "\n")
    rec = prep.prepare(str(src), str(out), tokenizer=tok, progress=False)
    fresh = prep.prepare(str(src), str(tmp_path / "fresh"), tokenizer=tok, progress=False)
    assert rec["shards"] == fresh["shards"]
    for name in rec["shards"]:
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()
    assert prep.prepare(str(src), str(out), tokenizer=tok, progress=False) == rec  # complete: nothing to do
    with pytest.raises(DataError, match="other settings"):
        prep.prepare(str(src), str(out), tokenizer=tok, text_column="body", progress=False)


def test_resume_skips_done_units(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(prep, "UNIT_BYTES", 4096)
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in _docs(150, 2)))
    out = tmp_path / "out"
    units = prep.list_units(src, "text")
    work = out / ".prepare"
    work.mkdir(parents=True)
    # a run killed after its first unit: that part (poisoned with a marker value) must be reused as is
    prep._worker_init(prep.resolve_tokenizer(tok), "text", str(work), "<u2")
    prep._work((0, units[0]))
    part = np.fromfile(work / "part_000000.tok", dtype="<u2")
    part[1] = 299
    part.tofile(work / "part_000000.tok")
    import flopscale.fileio as fio

    fio.atomic_write_json(work / "settings.json", {
        "source": str(src.resolve()), "tokenizer": tok, "tokenizer_sha256_16": prep.resolve_tokenizer(tok)["sha256_16"],
        "text_column": "text", "shard_tokens": 100_000_000, "val_tokens": 10_000_000, "name": "c", "n_units": len(units)})
    prep.prepare(str(src), str(out), tokenizer=tok, progress=False)
    _, val = _read_llmc(out / "c_val_000000.bin")
    assert val[1] == 299  # the done unit was not tokenized again


def test_uint32_layout_for_large_vocab(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(69990)}  # 70,000 ids, the text's words at the top
    vocab.update({w: 69990 + i for i, w in enumerate(WORDS[:9])})
    vocab["[UNK]"] = 69999
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "big.json"
    t.save(str(path))
    src = tmp_path / "a.txt"
    src.write_text(" ".join(WORDS[:5] * 40))
    rec = prep.prepare(str(src), str(tmp_path / "o"), tokenizer=str(path), progress=False)
    assert rec["version"] == 7 and rec["magic"] == 20240801
    hdr, toks = _read_llmc(tmp_path / "o" / rec["shards"][-1])
    assert hdr[0] == 20240801 and hdr[1] == 7 and toks.dtype == np.dtype("<u4") and toks.max() >= 69990


def test_empty_text_column_and_bad_tokenizers(tmp_path, tok):
    src = tmp_path / "e.jsonl"
    src.write_text("".join(json.dumps({"text": ""}) + "\n" for _ in range(5)))
    with pytest.raises(DataError, match="empty text column 'text'"):
        prep.prepare(str(src), str(tmp_path / "o"), tokenizer=tok, progress=False)
    with pytest.raises(DataError, match="tokenizer file not found"):
        prep.prepare(str(src), str(tmp_path / "o2"), tokenizer=str(tmp_path / "nope.json"), progress=False)


def test_tiktoken_offline_error(tmp_path, monkeypatch):
    pytest.importorskip("tiktoken")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    (tmp_path / "a.txt").write_text("hello world")
    with pytest.raises(DataError, match="GPT-2 BPE files are not cached in .*empty-cache"):
        prep.prepare(str(tmp_path / "a.txt"), str(tmp_path / "o"), tokenizer="gpt2", progress=False)


def _tiktoken_gpt2_cached() -> bool:
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        return False
    cache = prep._tiktoken_cache_dir()
    return all(os.path.isfile(os.path.join(cache, hashlib.sha1(u.encode()).hexdigest())) for u in prep._GPT2_FILES)


@pytest.mark.skipif(not _tiktoken_gpt2_cached(), reason="tiktoken's GPT-2 BPE files are not cached here "
                    "(TIKTOKEN_CACHE_DIR) and there is no network to fetch them")
def test_tiktoken_gpt2_real(tmp_path):
    import tiktoken

    docs = _docs(30, 3)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    rec = prep.prepare(str(tmp_path / "a.jsonl"), str(tmp_path / "o"), tokenizer="gpt2", progress=False)
    enc = tiktoken.get_encoding("gpt2")
    want = np.concatenate([[enc.eot_token] + enc.encode_ordinary(d) for d in docs])
    got = np.concatenate([_read_llmc(tmp_path / "o" / s)[1] for s in rec["shards"]])
    assert rec["vocab_size"] == 50257 and np.array_equal(got, want)


def test_cli_prepare_and_one_line_error(tmp_path, tok):
    src = tmp_path / "a.txt"
    src.write_text(" ".join(_docs(40, 4)))
    out = subprocess.run([sys.executable, "-m", "flopscale.cli", "data", "prepare", str(src), "--out",
                          str(tmp_path / "o"), "--tokenizer", tok, "--quiet"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["shards"] == ["a_val_000000.bin", "a_train_000001.bin"]
    out = subprocess.run([sys.executable, "-m", "flopscale.cli", "data", "prepare", str(tmp_path / "missing"), "--out",
                          str(tmp_path / "o2"), "--tokenizer", tok], capture_output=True, text=True, timeout=300)
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "data source not found" in lines[0], out.stderr
