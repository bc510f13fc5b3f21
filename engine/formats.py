"""Token-shard formats, memory-mapped: what researchers already have on disk.

    from flopscale.engine.formats import open_shards, Tokens
    shards = open_shards(["fineweb_train_000001.bin", ...])      # headers checked, nothing loaded
    toks = Tokens([s.memmap() for s in shards])                   # one memmap per shard
    toks[idx]                                                     # gather: only those pages are read

| format (``--data-format``) | layout | dtype | vocabulary |
| --- | --- | --- | --- |
| ``llmc`` (llm.c, modded-nanogpt) | 1024-byte header of 256 little-endian int32: [0] magic, [1] version, [2] token count; then the tokens | magic 20240520 / version 1: uint16; magic 20240801 / version 7: uint32 | ``prepare.json`` of ``flopscale data prepare``, else the largest id + 1 |
| ``flopstok`` (flopscale's own) | 24-byte header: ``FLOPSTOK``, uint32 version 1, uint32 vocab size, uint64 token count | uint16 | the header's |
| ``nanogpt`` (``train.bin`` / ``val.bin``) | headerless | uint16 | ``meta.pkl``'s ``vocab_size`` (read without running code), else the largest id + 1 |
| ``olmo`` (OLMo / Dolma ``.npy`` written through ``np.memmap``) | headerless | uint16 or uint32: by ``--n-vocab`` (> 65,536: uint32), else detected | the largest id + 1 |

``auto`` tells llm.c and FLOPSTOK shards apart by their first bytes; a headerless array has no
header to detect, so it needs ``--data-format nanogpt|olmo``.  Every check is one line
(:class:`DataError`): a wrong magic, a header whose count disagrees with the file size, token ids
at or above the vocabulary, a folder whose shards mix formats, versions or vocabularies.

The largest token id of a shard is found by reading the file in 4M-token chunks (never a memmap,
whose pages would stay in the process's RSS), once: the result is cached under
``$FLOPSCALE_CACHE/scan`` keyed by the file's path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np


class DataError(ValueError):
    """Bad or missing data; the message is one line meant for the user."""


FLOPSTOK_MAGIC = b"FLOPSTOK"
FLOPSTOK_HEADER = struct.Struct("<8sIIQ")  # magic, version, vocab size, n_tokens
LLMC_HEADER_BYTES = 256 * 4                # 256 little-endian int32
LLMC_VERSIONS = {20240520: (1, "<u2"), 20240801: (7, "<u4")}  # magic -> (version, token dtype)
LLMC_MAGIC = {v: m for m, (v, _) in LLMC_VERSIONS.items()}     # version -> magic
FORMATS = ("auto", "llmc", "flopstok", "nanogpt", "olmo", "hf", "text")  # --data-format
SAMPLING = ("with-replacement", "without-replacement")                  # --sampling (engine/data.py: Corpus.batch)
SCAN_CHUNK = 1 << 22                       # tokens per read when scanning for the largest id (8-16 MB)


@dataclass(frozen=True)
class Shard:
    """One token file: where its tokens start, their dtype and count (header-checked)."""

    path: Path
    fmt: str                 # llmc | flopstok | nanogpt | olmo
    version: int             # llm.c's 1 or 7; 1 for flopstok; 0 for headerless arrays
    dtype: str               # "<u2" or "<u4"
    offset: int              # bytes before the first token
    n: int                   # tokens
    vocab: Optional[int]     # the header's vocabulary (flopstok), else None

    def memmap(self) -> np.ndarray:
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=(self.n,))

    def max_id(self) -> int:
        return scan_max(self)

    def describe(self) -> str:
        return {"llmc": f"llm.c v{self.version}", "flopstok": "FLOPSTOK"}.get(self.fmt, self.fmt) + \
            f" ({np.dtype(self.dtype).name})"


def _file_size(path: Path) -> int:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    return path.stat().st_size


def _check_count(path: Path, size: int, offset: int, itemsize: int, n: int) -> None:
    if size != offset + itemsize * n:
        holds = (size - offset) / itemsize
        raise DataError(f"corrupt shard {path}: header says {n} tokens, file holds {holds:g} "
                        f"({size} bytes = {offset}-byte header + {itemsize}-byte tokens)")
    if n == 0:
        raise DataError(f"empty shard {path}: no tokens")


def open_shard(path, fmt: str = "auto", n_vocab: Optional[int] = None) -> Shard:
    """Read and check one file's header (nothing else).  ``fmt`` auto detects llm.c and
    FLOPSTOK shards; headerless arrays need nanogpt or olmo."""
    path = Path(path)
    size = _file_size(path)
    with open(path, "rb") as f:
        head = f.read(LLMC_HEADER_BYTES)
    if fmt in ("nanogpt", "olmo"):
        if head[:6] == b"\x93NUMPY":
            raise DataError(f"{path} has an NPY header; --data-format {fmt} reads headerless token arrays "
                            "(np.memmap files)")
        if fmt == "nanogpt":
            dtype = "<u2"
        else:
            dtype = olmo_dtype(path, size, n_vocab)
        item = np.dtype(dtype).itemsize
        if size % item or size == 0:
            raise DataError(f"corrupt token array {path}: {size} bytes is not a whole number of "
                            f"{np.dtype(dtype).name} tokens")
        return Shard(path, fmt, 0, dtype, 0, size // item, None)
    if head[:8] == FLOPSTOK_MAGIC:
        if fmt not in ("auto", "flopstok"):
            raise DataError(f"{path} is a FLOPSTOK shard, not --data-format {fmt}")
        if size < FLOPSTOK_HEADER.size:
            raise DataError(f"corrupt shard {path}: {size} bytes, shorter than its header")
        _, version, vocab, n = FLOPSTOK_HEADER.unpack(head[:FLOPSTOK_HEADER.size])
        if version != 1:
            raise DataError(f"corrupt shard {path}: FLOPSTOK version {version} (want 1)")
        _check_count(path, size, FLOPSTOK_HEADER.size, 2, n)
        return Shard(path, "flopstok", 1, "<u2", FLOPSTOK_HEADER.size, n, vocab)
    if fmt == "flopstok":
        raise DataError(f"corrupt shard {path}: bad magic or version (not a flopscale token shard)")
    if len(head) < 12:
        raise DataError(f"corrupt shard {path}: {size} bytes, shorter than a shard header")
    magic, version, n = struct.unpack("<3i", head[:12])
    if magic not in LLMC_VERSIONS:
        raise DataError(f"unknown shard format {path}: magic {magic} is neither llm.c's (20240520, 20240801) nor "
                        "FLOPSTOK; for a headerless token array pass --data-format nanogpt or olmo")
    want, dtype = LLMC_VERSIONS[magic]
    if version != want:
        raise DataError(f"corrupt shard {path}: llm.c magic {magic} goes with version {want}, header says {version}")
    if size < LLMC_HEADER_BYTES:
        raise DataError(f"corrupt shard {path}: {size} bytes, shorter than llm.c's 1024-byte header")
    _check_count(path, size, LLMC_HEADER_BYTES, np.dtype(dtype).itemsize, n)
    return Shard(path, "llmc", version, dtype, LLMC_HEADER_BYTES, n, None)


def olmo_dtype(path: Path, size: int, n_vocab: Optional[int]) -> str:
    """OLMo/Dolma write uint16 for vocabularies up to 65,536 and uint32 above.  With --n-vocab
    that decides; without it, the first 64k words read as uint32 tell: real uint32 ids stay below
    2^24, while two uint16 ids read as one uint32 put the second id in the high half (>= 2^24
    unless every second token is below 256, which no real text does)."""
    if n_vocab is not None:
        return "<u4" if n_vocab > 65536 else "<u2"
    if size % 4:
        return "<u2"
    with open(path, "rb") as f:
        sample = np.frombuffer(f.read(4 * 65536), dtype="<u4")
    return "<u4" if sample.size and int(sample.max()) < (1 << 24) else "<u2"


def llmc_header(n_tokens: int, version: int) -> bytes:
    """llm.c's 1024-byte header (what its fineweb.py's write_datafile lays out)."""
    h = np.zeros(256, dtype="<i4")
    h[0], h[1], h[2] = LLMC_MAGIC[version], version, n_tokens
    return h.tobytes()


def llmc_version_for(vocab_size: int) -> int:
    """llm.c's layout for a vocabulary: version 1 (uint16) up to 65,536 ids, version 7 (uint32) above."""
    return 1 if vocab_size <= 65536 else 7


# ---------------------------------------------------------------------------------------------
# Scanning without loading
# ---------------------------------------------------------------------------------------------
def _scan_cache_path(shard: Shard) -> Path:
    from .cache import cache_dir

    st = shard.path.stat()
    key = hashlib.sha256(f"{shard.path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{shard.dtype}|{shard.offset}"
                         .encode()).hexdigest()[:24]
    return cache_dir() / "scan" / f"{key}.json"


def scan_max(shard: Shard) -> int:
    """The largest token id in a shard, read in chunks (memory: one chunk), cached."""
    cpath = _scan_cache_path(shard)
    try:
        return int(json.loads(cpath.read_text())["max_id"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    m = 0
    with open(shard.path, "rb") as f:
        f.seek(shard.offset)
        left = shard.n
        while left:
            chunk = np.fromfile(f, dtype=shard.dtype, count=min(left, SCAN_CHUNK))
            if chunk.size == 0:
                raise DataError(f"corrupt shard {shard.path}: ends early")
            m = max(m, int(chunk.max()))
            left -= chunk.size
    from flopscale.fileio import atomic_write_json

    cpath.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cpath, {"path": str(shard.path), "max_id": m})
    return m


# ---------------------------------------------------------------------------------------------
# nanoGPT's meta.pkl, read without running anything
# ---------------------------------------------------------------------------------------------
class _PlainData(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numbers only: find_class (the one door to code in a
    pickle: classes, functions, reduce targets) refuses every name."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing {module}.{name}: meta.pkl may hold plain data only")


def read_meta_vocab(path: Path) -> int:
    """nanoGPT's meta.pkl {'vocab_size': V, 'itos': ..., 'stoi': ...} -> V, never running code."""
    try:
        with open(path, "rb") as f:
            meta = _PlainData(f).load()
    except Exception as e:  # anything a hostile or damaged pickle raises is one line
        raise DataError(f"{path}: not a plain-data meta.pkl ({type(e).__name__}: {e}); pass --n-vocab instead") from None
    v = meta.get("vocab_size") if isinstance(meta, dict) else None
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise DataError(f"{path}: no integer vocab_size in meta.pkl; pass --n-vocab instead")
    return v


# ---------------------------------------------------------------------------------------------
# A token sequence over many shards
# ---------------------------------------------------------------------------------------------
class Tokens:
    """A read-only 1-D token sequence made of parts (memmaps of shards, or arrays) with a
    cumulative-offset index; nothing is concatenated.  ``toks[a:b]`` is another Tokens (views);
    ``toks[idx]`` for an integer array gathers those positions (a window may span two parts: the
    sequence is the parts end to end, as the concatenation was before)."""

    def __init__(self, parts):
        self.parts = [p for p in parts if len(p)]
        self.bounds = np.cumsum([0] + [len(p) for p in self.parts]).astype(np.int64)  # (n_parts + 1,)

    @property
    def size(self) -> int:
        return int(self.bounds[-1])

    def __len__(self) -> int:
        return self.size

    @property
    def dtype(self):
        return self.parts[0].dtype if self.parts else np.dtype(np.uint16)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(self.size)
            if step != 1:
                raise ValueError("Tokens slices take step 1")
            out = []
            for p, lo in zip(self.parts, self.bounds[:-1]):
                a, b = max(start - lo, 0), min(stop - lo, len(p))
                if a < b:
                    out.append(p[a:b])
            return Tokens(out)
        idx = np.asarray(key)
        if idx.ndim == 0:
            i = int(idx) + (self.size if int(idx) < 0 else 0)
            k = int(np.searchsorted(self.bounds, i, side="right")) - 1
            return self.parts[k][i - self.bounds[k]]
        if len(self.parts) == 1:
            out = np.array(self.parts[0][idx])
            _release(self.parts[0])
            return out
        which = np.searchsorted(self.bounds, idx, side="right") - 1  # part of each position
        out = np.empty(idx.shape, dtype=self.dtype)
        for k in np.unique(which):
            m = which == k
            out[m] = self.parts[k][idx[m] - self.bounds[k]]
            _release(self.parts[k])
        return out

    def windows(self, offsets: np.ndarray, n: int) -> np.ndarray:
        """(len(offsets), n) tokens, row r = positions offsets[r] .. offsets[r] + n - 1: what
        ``self[offsets[:, None] + arange(n)]`` gives, by contiguous slice copies (30x faster than
        an element gather at 256 x 1025 on several shards); a row across a shard boundary is read
        from both."""
        out = np.empty((len(offsets), n), dtype=self.dtype)
        first = np.searchsorted(self.bounds, offsets, side="right") - 1
        touched = set()
        for r, (o, k) in enumerate(zip(np.asarray(offsets).tolist(), first.tolist())):
            if o < 0 or o + n > self.size:
                raise IndexError(f"window {o}..{o + n} outside 0..{self.size}")
            a, filled = o - int(self.bounds[k]), 0
            while filled < n:
                p = self.parts[k]
                take = min(n - filled, len(p) - a)
                out[r, filled:filled + take] = p[a:a + take]
                touched.add(k)
                filled, k, a = filled + take, k + 1, 0
        for k in touched:
            _release(self.parts[k])
        return out

    def __eq__(self, other):
        """Elementwise, as for arrays (materializes both: small data only)."""
        return np.asarray(self) == np.asarray(other)

    __hash__ = None

    def __array__(self, dtype=None, copy=None):
        """The whole sequence as one array: for small data (tests, eval sets), never training."""
        a = np.concatenate([np.asarray(p) for p in self.parts]) if self.parts else np.zeros(0, np.uint16)
        return a.astype(dtype) if dtype is not None else a


def _release(part) -> None:
    """Unmap the pages a gather touched from this process (they stay in the page cache).  Linux
    6.x maps a whole large folio of the page cache per fault (about 1 MB per window read here,
    MADV_RANDOM or not), so without this a run's RSS grows with the corpus it has sampled: +210 MB
    after 20 steps of 8 windows on a 200M-token set (bench/bench_data.py).  MADV_DONTNEED on a
    read-only shared file mapping drops only page-table entries; the next read faults them back."""
    mm = getattr(part, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_DONTNEED)


def fingerprint(shards: List[Shard]) -> str:
    """A cheap identity of a shard set: names, sizes and the first and last MiB of each (hashing
    every byte of a 20 GB corpus would take minutes and is not what provenance needs)."""
    h = hashlib.sha256()
    for s in shards:
        size = s.path.stat().st_size
        h.update(f"{s.path.name}|{size}".encode())
        with open(s.path, "rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(size - (1 << 20))
                h.update(f.read())
    return h.hexdigest()[:16]


def shard_files(p: Path, fmt: str) -> List[Path]:
    """The token files of a path: the file itself, or a folder's *.bin (and *.npy for olmo)."""
    if p.is_file():
        return [p]
    exts = (".bin", ".npy") if fmt == "olmo" else (".bin",)
    return sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in exts)


def check_uniform(shards: List[Shard], name: str) -> None:
    """One format and version per shard set (the model reads one tokenizer's ids)."""
    kinds = sorted({s.describe() for s in shards})
    if len(kinds) > 1:
        raise DataError(f"shards under {name} mix formats or versions ({', '.join(kinds)}); keep one tokenizer's "
                        "shards per folder")
    vocabs = sorted({s.vocab for s in shards if s.vocab is not None})
    if len(vocabs) > 1:
        raise DataError(f"shards under {name} disagree on vocab size: {vocabs}")


def is_val(path: Path) -> bool:
    """llm.c names validation shards *_val_*; nanoGPT's is val.bin."""
    return "val" in path.name
