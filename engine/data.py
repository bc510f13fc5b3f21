"""Data: the embedded default corpus, user text, pre-tokenized shards, and a cached BPE.

    from flopscale.engine.data import load_corpus
    corpus = load_corpus("stdlib", tokenizer="bpe-4096")   # train/val uint16 token arrays
    x, y = corpus.batch("train", step=0, micro=0, batch_size=8, n_ctx=128, seed=1)

The default corpus is the Python standard library's own source (found at run time through
``sysconfig``; about 30 MB of human-written code and text), split into train and validation by
file.  A byte-level BPE is trained on the training files with HF ``tokenizers`` and cached with
the token arrays under ``$FLOPSCALE_CACHE`` (default ``~/.cache/flopscale``), keyed by a hash of
the corpus content and the tokenizer spec.

Pre-tokenized shards (engine/formats.py has the table): llm.c / modded-nanogpt ``.bin`` shards
(header magic 20240520 uint16 or 20240801 uint32), nanoGPT's headerless ``train.bin`` / ``val.bin``,
OLMo/Dolma headerless arrays, and flopscale's own ``FLOPSTOK`` shards (a 24-byte header: magic,
uint32 version 1, uint32 vocab size, uint64 token count; then uint16 ids, which is also how the
token cache of a text corpus is stored).  Hugging Face datasets on disk (``load_from_disk``
folders, parquet, jsonl) are tokenized once by engine/prepare.py into llm.c shards in the cache.

Memory: every shard is one ``np.memmap``; the splits are :class:`formats.Tokens` (a cumulative-
offset index over the memmaps, never concatenated), and a batch reads only its windows' pages.
So a run's memory does not grow with the corpus (bench/bench_data.py measures it).

Sampling, deterministic from (seed, split, step, micro-batch) alone so a resumed run needs no
loader state:
- ``with-replacement`` (the default, unchanged since the first version): each window of n_ctx + 1
  tokens starts at a uniform random offset; windows may span two shards (the shards are read end
  to end, as the concatenation of earlier versions was, so old runs' batches are unchanged).
- ``without-replacement``: the training split is cut into W = (U - 1) // n_ctx windows at stride
  n_ctx; global sequence g = step * batch_size + micro * micro_batch + i is window perm_e[g % W]
  of epoch e = g // W, perm_e a permutation seeded by (seed, e).  Every window is seen once per
  epoch; a permutation is kept as 4 bytes per window, the last two epochs' (W = 10M for 10B tokens
  at n_ctx 1024: 40 MB each).
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from flopscale.fileio import atomic_write_bytes

from .cache import cache_dir
from .formats import (FLOPSTOK_HEADER as SHARD_HEADER, FLOPSTOK_MAGIC as SHARD_MAGIC, SAMPLING, DataError, Tokens,
                      check_uniform, fingerprint, is_val, open_shard, read_meta_vocab, shard_files)
from .tokenizer import EOT, hash_files, load_tokenizer, read_text, split_by_file, stdlib_files




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
    """(tokens, vocab_size) of a FLOPSTOK shard: tokens a read-only uint16 memmap, the ids checked
    against the vocabulary by a chunked scan; a DataError for a missing, short or corrupt file."""
    shard = open_shard(path, "flopstok")
    _check_ids([shard], shard.vocab)
    return shard.memmap(), shard.vocab


def _check_ids(shards, vocab: int) -> int:
    """The largest id over the shards; a DataError naming the shard whose ids reach ``vocab``."""
    top = 0
    for s in shards:
        m = s.max_id()
        if m >= vocab:
            raise DataError(f"corrupt shard {s.path}: token id {m} >= vocab size {vocab}")
        top = max(top, m)
    return top


# ---------------------------------------------------------------------------------------------
# Text sources
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Tokenizing (the tokenizers themselves: engine/tokenizer.py)
# ---------------------------------------------------------------------------------------------
def _encode_files(tok, files: list) -> np.ndarray:
    eot = tok.token_to_id(EOT)
    out = []
    texts = [read_text(f) for f in files]
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
    train: Tokens                # token ids (memory-mapped shards or arrays), already capped at max_tokens
    val: Tokens
    vocab_size: int
    provenance: dict = field(default_factory=dict)
    tokenizer: object = None     # the HF tokenizer of a text corpus (None for shards)
    evals: dict = field(default_factory=dict)  # name -> uint16 tokens of another distribution (add_eval)
    _perms: dict = field(default_factory=dict, repr=False)  # (seed, W, epoch) -> permutation (without-replacement)

    def __post_init__(self):
        self.train = self.train if isinstance(self.train, Tokens) else Tokens([self.train])
        self.val = self.val if isinstance(self.val, Tokens) else Tokens([self.val])

    @property
    def n_train_tokens(self) -> int:
        return int(self.train.size)

    def batch(self, split: str, step: int, micro: int, batch_size: int, n_ctx: int, seed: int,
              sampling: str = "with-replacement", global_batch: Optional[int] = None):
        """Windows of n_ctx+1 tokens at offsets drawn from (seed, split, step, micro) alone, so
        a resumed run draws exactly the batches it would have drawn.  ``sampling``
        without-replacement (training split only) walks a seeded permutation of fixed windows
        per epoch; ``global_batch`` (sequences per step, default ``batch_size``) places the
        micro-batch in it.  Returns x, y (B, T) int64."""
        data = {"train": self.train, "val": self.val}.get(split)
        stream = [0 if split == "train" else 1]
        if data is None:  # another distribution (add_eval): its own random stream
            data, stream = self.evals[split], [2, zlib.crc32(split.encode())]
        if sampling not in SAMPLING:
            raise DataError(f"sampling must be one of {', '.join(SAMPLING)}, got {sampling!r}")
        if split == "train" and sampling == "without-replacement":
            offs = self._permuted_offsets(step, micro, batch_size, n_ctx, seed, global_batch or batch_size)
        else:
            hi = data.size - n_ctx - 1
            if hi < 1:
                raise DataError(f"the {split} split has {data.size} tokens, fewer than n_ctx + 2 = {n_ctx + 2}")
            rng = np.random.default_rng([seed, *stream, step, micro])
            offs = rng.integers(0, hi + 1, size=batch_size)
        if isinstance(data, Tokens):  # shards: contiguous copies of each window
            win = data.windows(offs, n_ctx + 1)  # (B, T + 1)
        else:
            win = data[offs[:, None] + np.arange(n_ctx + 1)[None, :]]
        w = torch.from_numpy(win.astype(np.int64))
        return w[:, :-1], w[:, 1:]

    def n_windows(self, n_ctx: int) -> int:
        """Fixed windows of the training split for without-replacement sampling (stride n_ctx)."""
        W = (self.train.size - 1) // n_ctx
        if W < 1:
            raise DataError(f"the train split has {self.train.size} tokens, fewer than n_ctx + 1 = {n_ctx + 1}")
        return W

    def _permuted_offsets(self, step, micro, batch_size, n_ctx, seed, global_batch) -> np.ndarray:
        W = self.n_windows(n_ctx)
        g = step * global_batch + micro * batch_size + np.arange(batch_size, dtype=np.int64)  # global sequence ids
        epoch, pos = g // W, g % W
        out = np.empty(batch_size, dtype=np.int64)
        for e in np.unique(epoch):
            key = (seed, W, int(e))
            if key not in self._perms:
                if len(self._perms) >= 2:  # a batch spans at most two epochs: keep the last two
                    self._perms.pop(next(iter(self._perms)))
                perm = np.random.default_rng([seed, 3, int(e)]).permutation(W)
                self._perms[key] = perm.astype(np.uint32) if W < 2 ** 32 else perm  # kept: 4 bytes per window
            m = epoch == e
            out[m] = self._perms[key][pos[m]].astype(np.int64) * n_ctx
        return out

    def epoch_record(self, tokens: int, step: int, global_batch: int, n_ctx: int, sampling: str) -> dict:
        """What metrics.jsonl records of the data at a step: ``unique_tokens`` U (the training
        split's size), ``epochs`` (tokens trained on / U) and, without replacement, ``epoch``
        (the 0-based epoch of the step's last sequence)."""
        U = self.n_train_tokens
        rec = {"unique_tokens": U, "epochs": tokens / U if U else None}
        if sampling == "without-replacement" and step > 0:
            rec["epoch"] = int((step * global_batch - 1) // self.n_windows(n_ctx))
        return rec

    def with_unique_tokens(self, unique_tokens: Optional[int]) -> "Corpus":
        """This corpus with its training split cut to the first ``unique_tokens`` tokens (a
        data-constrained run repeats them); itself when None."""
        if unique_tokens is None:
            return self
        if unique_tokens > self.n_train_tokens:
            raise DataError(f"--unique-tokens {unique_tokens:,} exceeds the {self.n_train_tokens:,} training tokens "
                            f"of {self.provenance.get('source', 'the data')}")
        prov = dict(self.provenance, n_train_tokens=int(unique_tokens), unique_tokens=int(unique_tokens))
        return Corpus(train=self.train[:unique_tokens], val=self.val, vocab_size=self.vocab_size, provenance=prov,
                      tokenizer=self.tokenizer, evals=self.evals)


def _text_corpus(files: list, root: Optional[Path], spec: str, name: str) -> tuple:
    train_f, val_f = split_by_file(files, root)
    key = hash_files(files)
    tok, tok_desc = load_tokenizer(spec, lambda: (read_text(f) for f in train_f), key)
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

        tree = ast.parse(read_text(f))
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
                return "\n\n".join(ast.literal_eval(node.value).values())
    return read_text(f)


def load_corpus(data: str = "stdlib", tokenizer: str = "bpe-4096", max_tokens: Optional[int] = None,
                eval_data=(), data_format: str = "auto", n_vocab: Optional[int] = None,
                text_column: str = "text") -> Corpus:
    """Load (and cache) a corpus.  ``data``: "stdlib", a text file, a shard, or a folder (of text,
    shards, or a Hugging Face dataset on disk).  ``data_format``: auto (by extension and header),
    or one of formats.FORMATS where a file has no header to tell (nanogpt, olmo).  ``n_vocab``:
    the vocabulary (default: the tokenizer's, else the largest id + 1).  ``eval_data``: ((name,
    path), ...) other distributions, tokenized with the corpus's tokenizer; their files are
    removed from the training corpus first (so never in its train split)."""
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
        from .prepare import is_dataset_source

        if data_format in ("nanogpt", "olmo", "llmc", "flopstok"):
            shards = [f for f in shard_files(p, data_format) if f.resolve() not in held_out]
            if not shards:
                raise DataError(f"no token files under {data} for --data-format {data_format}")
            train, val, vocab, prov = _shard_corpus(shards, data, data_format, n_vocab)
        elif data_format == "hf" or (data_format == "auto" and is_dataset_source(p)):
            train, val, vocab, prov = _dataset_corpus(p, tokenizer, text_column, n_vocab)
        elif data_format == "auto" and any(f.suffix == ".bin" for f in files):
            train, val, vocab, prov = _shard_corpus([f for f in files if f.suffix == ".bin"], data, "auto", n_vocab)
        else:
            for f in files:
                if f.stat().st_size == 0:
                    raise DataError(f"empty data file: {f}")
            train, val, vocab, prov = _text_corpus(files, p if p.is_dir() else None, tokenizer, str(p))
    if not isinstance(train, Tokens):
        train, val = Tokens([train]), Tokens([val])
    if n_vocab is not None and data_format not in ("nanogpt", "olmo", "llmc", "flopstok") and prov.get("format") is None:
        if n_vocab < vocab:  # a text corpus: the tokenizer fixes the ids
            raise DataError(f"--n-vocab {n_vocab} is below the tokenizer's vocabulary {vocab}")
        vocab = n_vocab
    prov["n_train_tokens_full"] = int(train.size)
    if max_tokens is not None:
        train = train[:max_tokens]
    prov["n_train_tokens"] = int(train.size)
    prov["unique_tokens"] = int(train.size)
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
        corpus.evals[name] = np.asarray(ids, dtype=np.uint16 if vocab <= 65536 else np.uint32)
        prov.setdefault("eval_data", {})[name] = {"path": path, "n_files": len(files), "n_tokens": len(ids),
                                                 "held_out_of_training": True}
    return corpus


def data_options(tc) -> dict:
    """load_corpus's keyword options from a TrainConfig."""
    return {"data_format": tc.data_format, "n_vocab": tc.data_vocab, "text_column": tc.text_column}


def _shard_corpus(files: list, name: str, fmt: str, n_vocab: Optional[int]) -> tuple:
    """Memory-mapped shards: headers checked, one format per set, the vocabulary from the data
    (a FLOPSTOK header, nanoGPT's meta.pkl, data prepare's prepare.json) or the largest id + 1,
    unless ``n_vocab``; every id checked below it (a chunked scan, cached)."""
    shards = [open_shard(f, fmt, n_vocab) for f in files]
    check_uniform(shards, name)
    root = Path(name) if Path(name).is_dir() else Path(name).parent
    vocab, vocab_from = shards[0].vocab, "header"
    if n_vocab is None and vocab is None and shards[0].fmt == "nanogpt" and (root / "meta.pkl").is_file():
        vocab, vocab_from = read_meta_vocab(root / "meta.pkl"), "meta.pkl"
    if n_vocab is None and vocab is None and (root / "prepare.json").is_file():
        try:
            vocab, vocab_from = int(json.loads((root / "prepare.json").read_text())["vocab_size"]), "prepare.json"
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{root / 'prepare.json'}: no vocab_size (not written by flopscale data prepare?)") from None
    tok = None
    if vocab_from == "prepare.json" and (root / "tokenizer.json").is_file():  # data prepare's HF tokenizer
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    if n_vocab is not None:
        vocab, vocab_from = n_vocab, "--n-vocab"
    if vocab is not None:
        _check_ids(shards, vocab)
    else:
        vocab, vocab_from = _check_ids(shards, 2 ** 32) + 1, "largest id + 1"
    val_s = [s for s in shards if is_val(s.path)]
    train_s = [s for s in shards if s not in val_s]
    if not train_s:
        raise DataError(f"no training shards under {name} (every shard's name contains 'val')")
    train = Tokens([s.memmap() for s in train_s])
    if val_s:
        val = Tokens([s.memmap() for s in val_s])
    else:  # hold out the last 5% of the tokens
        cut = int(train.size * 0.95)
        train, val = train[:cut], train[cut:]
    prov = {"source": name, "format": shards[0].describe(), "n_shards": len(shards), "n_train_shards": len(train_s),
            "n_val_shards": len(val_s), "tokenizer": "pre-tokenized", "vocab_from": vocab_from,
            "shards_fingerprint_16": fingerprint(shards)}
    if tok is not None:  # --eval-data can be tokenized the same way
        prov["_tokenizer"] = tok
    return train, val, vocab, prov


def _dataset_corpus(p: Path, tokenizer: str, text_column: str, n_vocab: Optional[int]) -> tuple:
    """A Hugging Face dataset on disk (load_from_disk folder, parquet, jsonl): tokenized once by
    engine/prepare.py into llm.c shards in the cache (keyed by the source files and the
    tokenizer), then read like any shards.  ``bpe-V`` is the stdlib BPE (as in data prepare)."""
    from .prepare import prepare, source_key

    out = cache_dir() / f"prepared-{source_key(p, tokenizer, text_column)}"
    prepare(str(p), str(out), tokenizer=tokenizer, workers=1, text_column=text_column, progress=False)
    shards = sorted(out.glob("*.bin"))
    train, val, vocab, prov = _shard_corpus(shards, str(out), "llmc", n_vocab)
    prov.update(source=str(p), prepared=str(out), tokenizer=tokenizer, text_column=text_column)
    return train, val, vocab, prov
