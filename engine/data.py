"""Data: the embedded default corpus, user text, pre-tokenized shards, and a cached BPE.

    from flopscale.engine.data import load_corpus
    corpus = load_corpus("stdlib", tokenizer="bpe-4096")   # train/val uint16 token arrays
    x, y = corpus.batch("train", step=0, micro=0, batch_size=8, n_ctx=128, seed=1)

The default corpus is the Python standard library's own source (found at run time through
``sysconfig``; about 30 MB of human-written code and text), split into train and validation by
file.  A byte-level BPE is trained on the training files with HF ``tokenizers`` and cached with
the token arrays under ``$FLOPSCALE_CACHE`` (default ``~/.cache/flopscale``), keyed by a hash of
the corpus content and the tokenizer spec.

Pre-tokenized shards are ``.bin`` files: a 24-byte header (magic ``FLOPSTOK``, uint32 version 1,
uint32 vocab size, uint64 token count, little-endian) followed by the uint16 token ids.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sysconfig
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from flopscale.fileio import atomic_write_bytes

SHARD_MAGIC = b"FLOPSTOK"
SHARD_HEADER = struct.Struct("<8sIIQ")  # magic, version, vocab size, n_tokens
VAL_EVERY = 20  # one file in 20 (by a hash of its path) goes to validation
EOT = "<|endoftext|>"


class DataError(ValueError):
    """Bad or missing data; the message is one line meant for the user."""


def cache_dir() -> Path:
    d = Path(os.environ.get("FLOPSCALE_CACHE", Path.home() / ".cache" / "flopscale"))
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------
def write_shard(path, tokens: np.ndarray, vocab_size: int) -> None:
    tokens = np.asarray(tokens)
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise DataError(f"token id {int(tokens.max())} >= vocab size {vocab_size}")
    hdr = SHARD_HEADER.pack(SHARD_MAGIC, 1, vocab_size, tokens.size)
    atomic_write_bytes(Path(path), hdr + tokens.astype("<u2").tobytes())


def read_shard(path) -> tuple:
    """(tokens uint16, vocab_size); a DataError for a missing, short or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    size = path.stat().st_size
    if size < SHARD_HEADER.size:
        raise DataError(f"corrupt shard {path}: {size} bytes, shorter than its header")
    with open(path, "rb") as f:
        magic, version, vocab, n = SHARD_HEADER.unpack(f.read(SHARD_HEADER.size))
    if magic != SHARD_MAGIC or version != 1:
        raise DataError(f"corrupt shard {path}: bad magic or version (not a flopscale token shard)")
    if size != SHARD_HEADER.size + 2 * n:
        raise DataError(f"corrupt shard {path}: header says {n} tokens, file holds {(size - SHARD_HEADER.size) // 2}")
    if n == 0:
        raise DataError(f"empty shard {path}: no tokens")
    toks = np.memmap(path, dtype="<u2", mode="r", offset=SHARD_HEADER.size, shape=(n,))
    toks = np.asarray(toks, dtype=np.uint16)
    if int(toks.max()) >= vocab:
        raise DataError(f"corrupt shard {path}: token id {int(toks.max())} >= vocab size {vocab}")
    return toks, vocab


# ---------------------------------------------------------------------------------------------
# Text sources
# ---------------------------------------------------------------------------------------------
def stdlib_files() -> list:
    """The standard library's .py files (site-packages excluded), sorted for determinism."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts]
    # A few test fixtures are deliberately in other encodings (latin-1, bad UTF-8): skip them.
    files = [p for p in files if _is_utf8(p)]
    if not files:
        raise DataError(f"no standard-library sources found under {root}")
    return sorted(files, key=lambda p: str(p.relative_to(root)))


def _is_utf8(path: Path) -> bool:
    try:
        path.read_bytes().decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# A dozen standard-library modules: a corpus that tokenizes in seconds, for tests, benchmarks
# and quick looks (every machine has it; nothing is downloaded).
SAMPLE_MODULES = ("argparse.py", "textwrap.py", "shlex.py", "fractions.py", "heapq.py", "bisect.py",
                  "colorsys.py", "base64.py", "calendar.py", "difflib.py", "json/decoder.py", "json/encoder.py")


def stdlib_sample(folder, n_files: Optional[int] = None) -> str:
    """Copy the first ``n_files`` of SAMPLE_MODULES (all by default) into ``folder``; returns it
    as a str for ``--data``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    root = Path(sysconfig.get_paths()["stdlib"])
    for name in SAMPLE_MODULES[:n_files]:
        atomic_write_bytes(folder / name.replace("/", "_"), (root / name).read_bytes())
    return str(folder)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"corrupt text file {path}: not valid UTF-8") from None


def _split_by_file(files: list, root: Optional[Path]) -> tuple:
    """Deterministic train/val split by a hash of each file's relative path."""
    train, val = [], []
    for f in files:
        key = str(f.relative_to(root)) if root else f.name
        (val if zlib.crc32(key.encode()) % VAL_EVERY == 0 else train).append(f)
    if not val or not train:  # too few files to split by file: split by tokens later
        return files, []
    return train, val


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
def train_bpe(texts, vocab_size: int):
    """A GPT-2-style byte-level BPE trained on an iterator of strings."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _encode_files(tok, files: list) -> np.ndarray:
    eot = tok.token_to_id(EOT)
    out = []
    texts = [_read_text(f) for f in files]
    for i in range(0, len(texts), 256):
        for enc in tok.encode_batch(texts[i:i + 256]):
            out.append(np.asarray(enc.ids, dtype=np.uint16))
            if eot is not None:
                out.append(np.asarray([eot], dtype=np.uint16))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint16)


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------
@dataclass
class Corpus:
    train: np.ndarray            # uint16 token ids, already capped at max_tokens
    val: np.ndarray
    vocab_size: int
    provenance: dict = field(default_factory=dict)
    tokenizer: object = None     # the HF tokenizer of a text corpus (None for shards)
    evals: dict = field(default_factory=dict)  # name -> uint16 tokens of another distribution (add_eval)

    @property
    def n_train_tokens(self) -> int:
        return int(self.train.size)

    def batch(self, split: str, step: int, micro: int, batch_size: int, n_ctx: int, seed: int):
        """Windows of n_ctx+1 tokens at offsets drawn from (seed, split, step, micro) alone, so
        a resumed run draws exactly the batches it would have drawn.  Returns x, y (B, T) int64."""
        data = {"train": self.train, "val": self.val}.get(split)
        stream = [0 if split == "train" else 1]
        if data is None:  # another distribution (add_eval): its own random stream
            data, stream = self.evals[split], [2, zlib.crc32(split.encode())]
        hi = data.size - n_ctx - 1
        if hi < 1:
            raise DataError(f"the {split} split has {data.size} tokens, fewer than n_ctx + 2 = {n_ctx + 2}")
        rng = np.random.default_rng([seed, *stream, step, micro])
        offs = rng.integers(0, hi + 1, size=batch_size)
        idx = offs[:, None] + np.arange(n_ctx + 1)[None, :]
        w = torch.from_numpy(data[idx].astype(np.int64))
        return w[:, :-1], w[:, 1:]


def _hash_files(files: list) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _load_tokenizer(spec: str, texts_for_training, key: str):
    """(tokenizer, description).  spec is 'bpe-V' (trained and cached) or a tokenizer.json."""
    from tokenizers import Tokenizer

    if not spec.startswith("bpe-"):
        p = Path(spec)
        if not p.is_file():
            raise DataError(f"tokenizer file not found: {spec}")
        try:
            return Tokenizer.from_file(str(p)), str(p)
        except Exception:
            raise DataError(f"corrupt tokenizer file {spec}: not a HF tokenizers JSON") from None
    path = cache_dir() / f"tokenizer-{key}-{spec}.json"
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path)), spec
        except Exception:
            path.unlink()  # a damaged cache entry is rebuilt, never trusted
    tok = train_bpe(texts_for_training(), int(spec[4:]))
    atomic_write_bytes(path, tok.to_str().encode())
    return tok, spec


def _text_corpus(files: list, root: Optional[Path], spec: str, name: str) -> tuple:
    train_f, val_f = _split_by_file(files, root)
    key = _hash_files(files)
    tok, tok_desc = _load_tokenizer(spec, lambda: (_read_text(f) for f in train_f), key)
    # Token caches are keyed by the corpus content and the tokenizer itself (a user's
    # tokenizer.json may change in place), never by a path alone.
    tok_key = spec if spec.startswith("bpe-") else hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]
    cdir = cache_dir()
    tpath, vpath = cdir / f"tokens-{key}-{tok_key}-train.bin", cdir / f"tokens-{key}-{tok_key}-val.bin"
    vocab = tok.get_vocab_size()
    try:
        train, _ = read_shard(tpath)
        val, _ = read_shard(vpath)
    except DataError:
        train = _encode_files(tok, train_f)
        val = _encode_files(tok, val_f) if val_f else np.zeros(0, dtype=np.uint16)
        if not val_f:  # one file, or too few to split by file: hold out the last 5% of tokens
            cut = int(train.size * 0.95)
            train, val = train[:cut], train[cut:]
        if train.size == 0 or val.size == 0:
            raise DataError(f"data {name!r} tokenizes to too few tokens to split into train and validation")
        write_shard(tpath, train, vocab)
        write_shard(vpath, val, vocab)
    prov = {"source": name, "n_files": len(files), "n_train_files": len(train_f), "n_val_files": len(val_f),
            "content_sha256_16": key, "tokenizer": tok_desc}
    prov["_tokenizer"] = tok
    return train, val, vocab, prov


def pydoc_topics_file() -> Path:
    """The default second distribution: Python's pydoc_data/topics.py, the English prose of the
    language reference's help topics (every CPython has it)."""
    return Path(sysconfig.get_paths()["stdlib"]) / "pydoc_data" / "topics.py"


def eval_files(path: str) -> list:
    """The files of an --eval-data PATH ('pydoc', a text file or a folder), resolved."""
    p = pydoc_topics_file() if path == "pydoc" else Path(path)
    if not p.exists():
        raise DataError(f"eval data not found: {path}")
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    if not files:
        raise DataError(f"eval data folder {path} holds no files")
    return [f.resolve() for f in files]


def _eval_text(f: Path) -> str:
    if f == pydoc_topics_file().resolve():  # the topics dict's prose, not its Python syntax
        import ast

        tree = ast.parse(_read_text(f))
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
                return "\n\n".join(ast.literal_eval(node.value).values())
    return _read_text(f)


def load_corpus(data: str = "stdlib", tokenizer: str = "bpe-4096", max_tokens: Optional[int] = None,
                eval_data=()) -> Corpus:
    """Load (and cache) a corpus.  ``data``: "stdlib", a text file, a .bin shard, or a folder.
    ``eval_data``: ((name, path), ...) other distributions, tokenized with the corpus's tokenizer;
    their files are removed from the training corpus first (so never in its train split)."""
    held_out = {f for _, path in eval_data for f in eval_files(path)}
    if data == "stdlib":
        files = [f for f in stdlib_files() if f.resolve() not in held_out]
        train, val, vocab, prov = _text_corpus(files, Path(sysconfig.get_paths()["stdlib"]), tokenizer, "stdlib")
    else:
        p = Path(data)
        if not p.exists():
            raise DataError(f"data path not found: {data}")
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        files = [f for f in files if f.resolve() not in held_out]
        if not files:
            raise DataError(f"data {data} holds no files (besides --eval-data's)")
        shards = [f for f in files if f.suffix == ".bin"]
        if shards:
            train, val, vocab, prov = _shard_corpus(shards, data)
        else:
            for f in files:
                if f.stat().st_size == 0:
                    raise DataError(f"empty data file: {f}")
            train, val, vocab, prov = _text_corpus(files, p if p.is_dir() else None, tokenizer, str(p))
    prov["n_train_tokens_full"] = int(train.size)
    if max_tokens is not None:
        train = train[:max_tokens]
    prov["n_train_tokens"] = int(train.size)
    prov["n_val_tokens"] = int(val.size)
    prov["vocab_size"] = int(vocab)
    tok = prov.pop("_tokenizer", None)
    corpus = Corpus(train=train, val=val, vocab_size=vocab, provenance=prov, tokenizer=tok)
    for name, path in eval_data:
        if tok is None:
            raise DataError(f"--eval-data {name}={path}: needs a text training corpus (its tokenizer), not shards")
        files = eval_files(path)
        eot = tok.token_to_id(EOT)
        ids = [t for f in files for t in tok.encode(_eval_text(f)).ids + ([eot] if eot is not None else [])]
        corpus.evals[name] = np.asarray(ids, dtype=np.uint16)
        prov.setdefault("eval_data", {})[name] = {"path": path, "n_files": len(files), "n_tokens": len(ids),
                                                 "held_out_of_training": True}
    return corpus


def _shard_corpus(shards: list, name: str) -> tuple:
    val_s = [s for s in shards if "val" in s.name]
    train_s = [s for s in shards if s not in val_s]
    loaded = {s: read_shard(s) for s in shards}
    vocabs = {v for _, v in loaded.values()}
    if len(vocabs) != 1:
        raise DataError(f"shards under {name} disagree on vocab size: {sorted(vocabs)}")
    vocab = vocabs.pop()
    if not train_s:
        raise DataError(f"no training shards under {name} (every .bin name contains 'val')")
    train = np.concatenate([loaded[s][0] for s in train_s])
    if val_s:
        val = np.concatenate([loaded[s][0] for s in val_s])
    else:
        cut = int(train.size * 0.95)
        train, val = train[:cut], train[cut:]
    prov = {"source": name, "n_shards": len(shards), "tokenizer": "pre-tokenized",
            "content_sha256_16": _hash_files(sorted(shards))}
    return train, val, vocab, prov
