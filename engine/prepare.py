"""``flopscale data prepare``: text, jsonl, parquet or a saved Hugging Face dataset to token
shards in llm.c's layout, tokenized in parallel processes, resumable after a kill.

    flopscale data prepare corpus/ --out shards/ --tokenizer tokenizer.json --workers 8
    flopscale data prepare fineweb.parquet --out fw/ --tokenizer gpt2          # tiktoken, cached BPE files
    flopscale data prepare saved_dataset/ --out ds/ --text-column content       # a load_from_disk folder
    flopscale train --data shards/ ...                                          # train on them

Sources: a text file or a folder of them (one document per file), ``.jsonl`` / ``.json`` lines and
``.parquet`` files (one document per row of ``--text-column``, default ``text``), or a folder
written by ``datasets.Dataset.save_to_disk`` (its ``train`` split when it holds several).

Tokenizers (``--tokenizer``): a HF ``tokenizer.json``; ``bpe-V``, the byte-level BPE the engine
trains on the standard-library corpus (what ``flopscale train`` uses by default, so the shards
and the default runs share ids); ``gpt2`` (or ``tiktoken:NAME``) through tiktoken, only where its
BPE files are already cached (``TIKTOKEN_CACHE_DIR``): there is no download here.  Each document
is preceded by the end-of-text token where the tokenizer has one (llm.c's fineweb.py does the
same), so documents never run together.

Output, llm.c's layout so the shards also load in llm.c and modded-nanogpt: ``NAME_val_000000.bin``
then ``NAME_train_000001.bin``, ...; each a 1024-byte header of 256 little-endian int32 (magic,
version, token count) and the tokens, version 1 (magic 20240520, uint16) for vocabularies up to
65,536 and version 7 (magic 20240801, uint32) above.  Validation is the first ``--val-tokens``
tokens of the stream (at most a tenth of it) in its own ``_val_`` shard(s); training shards hold
``--shard-tokens`` tokens each (llm.c's 100M), the last one the remainder.  ``prepare.json``
(the tokenizer, its vocabulary and EOT id, the counts, the shards) is written last and marks the
folder complete; ``tokenizer.json`` sits beside it for HF tokenizers.

How it runs: the source is cut into units (groups of text files, byte ranges of a jsonl file at
line boundaries, both of 1/64 of the source clamped to 256 KB .. 16 MB; parquet row groups;
8192-row ranges of a saved dataset), listed in a fixed order.  ``--workers`` processes (forked
where the OS can, else spawned; one tokenizer thread each) tokenize units into
``OUT/.prepare/part_NNNNNN.tok``; a unit is done when its ``.json`` beside it exists
(each file written to a temporary name, then renamed).  A killed run, started again with the same
arguments, skips the done units.  Then the parts are copied in order into the shards (streamed in
8M-token chunks, each shard renamed into place whole) and ``.prepare`` is removed.  Memory: one
unit's text and tokens per worker.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np

from flopscale.fileio import atomic_write_bytes, atomic_write_json

from .formats import DataError, llmc_header, llmc_version_for

UNIT_BYTES = 16 << 20       # text per unit of work (files, jsonl byte ranges), at most
UNIT_SPLIT = 64             # a smaller source is cut into this many units (of at least UNIT_MIN) so workers share it
UNIT_MIN = 256 << 10
UNIT_ROWS = 8192            # rows per unit of a saved HF dataset
COPY_CHUNK = 1 << 23        # tokens per read when assembling shards
DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
TABLE_EXTS = (".jsonl", ".json", ".parquet")
EOT = "<|endoftext|>"

# tiktoken's GPT-2 BPE files (tiktoken_ext/openai_public.py); tiktoken caches each under the
# SHA-1 of its URL.
_GPT2_FILES = ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
               "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json")


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------
def _is_saved_dataset(p: Path) -> bool:
    return p.is_dir() and any((p / m).is_file() for m in DATASET_MARKERS)


def is_dataset_source(p: Path) -> bool:
    """A saved HF dataset, a jsonl/parquet file, or a folder holding only such files."""
    if _is_saved_dataset(p):
        return True
    if p.is_file():
        return p.suffix in TABLE_EXTS
    files = [q for q in p.rglob("*") if q.is_file()]
    return bool(files) and all(q.suffix in TABLE_EXTS for q in files)


def _source_files(p: Path) -> List[Path]:
    return [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))


def source_key(p: Path, tokenizer: str, text_column: str) -> str:
    """Identity of (source files, tokenizer, column): names, sizes and modification times."""
    h = hashlib.sha256(f"{p.resolve()}|{tokenizer}|{text_column}".encode())
    for f in _source_files(p):
        st = f.stat()
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
    if not tokenizer.startswith("bpe-") and Path(tokenizer).is_file():
        h.update(Path(tokenizer).read_bytes())
    return h.hexdigest()[:16]


def _load_saved(path: str):
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if "train" in ds:
            return ds["train"]
        if len(ds) == 1:
            return next(iter(ds.values()))
        raise DataError(f"saved dataset {path} holds splits {', '.join(ds)} and none is 'train'")
    return ds


def list_units(src: Path, text_column: str) -> List[list]:
    """The units of work, in the stream's order: ["files", [paths]] | ["jsonl", path, start, end]
    | ["parquet", path, row_group] | ["saved", folder, row_start, row_end]."""
    if not src.exists():
        raise DataError(f"data source not found: {src}")
    if _is_saved_dataset(src):
        try:
            ds = _load_saved(str(src))
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"cannot load saved dataset {src}: {type(e).__name__}: {e}") from None
        if text_column not in ds.column_names:
            raise DataError(f"saved dataset {src} has no column {text_column!r} (columns: "
                            f"{', '.join(ds.column_names)}); pick one with --text-column")
        n = ds.num_rows
        return [["saved", str(src), a, min(a + UNIT_ROWS, n)] for a in range(0, n, UNIT_ROWS)]
    files = _source_files(src)
    if not files:
        raise DataError(f"data source {src} holds no files")
    # The unit size depends on the source alone (never on --workers): a resumed run cuts the same units.
    unit_bytes = min(UNIT_BYTES, max(UNIT_MIN, sum(f.stat().st_size for f in files) // UNIT_SPLIT))
    units, group, group_bytes = [], [], 0
    for f in files:
        size = f.stat().st_size
        if f.suffix in (".jsonl", ".json"):
            units += [["jsonl", str(f), a, min(a + unit_bytes, size)] for a in range(0, size, unit_bytes)]
        elif f.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(f)
            except Exception as e:
                raise DataError(f"corrupt parquet file {f}: {type(e).__name__}: {e}") from None
            names = pf.schema_arrow.names
            if text_column not in names:
                raise DataError(f"parquet file {f} has no column {text_column!r} (columns: {', '.join(names)}); "
                                "pick one with --text-column")
            units += [["parquet", str(f), g] for g in range(pf.num_row_groups)]
        else:
            group.append(str(f))
            group_bytes += size
            if group_bytes >= unit_bytes:
                units.append(["files", group])
                group, group_bytes = [], 0
    if group:
        units.append(["files", group])
    return units


def read_unit(unit: list, text_column: str) -> List[str]:
    """The documents of one unit."""
    kind = unit[0]
    if kind == "files":
        docs = []
        for f in unit[1]:
            try:
                docs.append(Path(f).read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise DataError(f"corrupt text file {f}: not valid UTF-8") from None
        return docs
    if kind == "jsonl":
        _, path, start, end = unit
        docs = []
        with open(path, "rb") as f:
            if start > 0:  # the line that straddles start belongs to the previous unit
                f.seek(start - 1)
                f.readline()
            while f.tell() < end:
                line = f.readline()
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"corrupt jsonl {path}: a line at byte {f.tell() - len(line)} is not JSON ({e.msg})") from None
                if not isinstance(row, dict) or text_column not in row:
                    keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                    raise DataError(f"jsonl {path}: a row has no {text_column!r} (it has: {keys}); pick one with --text-column")
                docs.append(row[text_column])
        return _check_texts(docs, path, text_column)
    if kind == "parquet":
        import pyarrow.parquet as pq

        col = pq.ParquetFile(unit[1]).read_row_group(unit[2], columns=[text_column]).column(0)
        return _check_texts(col.to_pylist(), unit[1], text_column)
    if kind == "saved":
        ds = _load_saved(unit[1])
        return _check_texts(ds.select(range(unit[2], unit[3]))[text_column], unit[1], text_column)
    raise ValueError(f"unknown unit {unit!r}")


def _check_texts(docs: list, where: str, text_column: str) -> List[str]:
    for d in docs:
        if d is not None and not isinstance(d, str):
            raise DataError(f"{where}: column {text_column!r} holds {type(d).__name__}, not text; pick one with --text-column")
    return [d or "" for d in docs]


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------
def _tiktoken_cache_dir() -> str:
    import tempfile

    return os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or \
        os.path.join(tempfile.gettempdir(), "data-gym-cache")


def resolve_tokenizer(spec: str) -> dict:
    """What a worker needs to build the tokenizer, plus its vocabulary and EOT id:
    {"kind": "hf", "json": str} or {"kind": "tiktoken", "name": str}, "vocab_size", "eot", "spec".
    One-line DataErrors for a missing file, a bad spec, or tiktoken files not cached offline."""
    if spec == "gpt2" or spec.startswith("tiktoken:"):
        name = "gpt2" if spec == "gpt2" else spec.split(":", 1)[1]
        try:
            import tiktoken
        except ImportError:
            raise DataError(f"--tokenizer {spec} needs tiktoken: pip install 'flopscale[data]'") from None
        cache = _tiktoken_cache_dir()
        if name == "gpt2":
            missing = [u for u in _GPT2_FILES if not os.path.isfile(os.path.join(cache, hashlib.sha1(u.encode()).hexdigest()))]
            if missing:
                raise DataError(f"--tokenizer {spec}: tiktoken's GPT-2 BPE files are not cached in {cache} and nothing is "
                                "downloaded here; on a machine with network run `python -c \"import tiktoken; "
                                "tiktoken.get_encoding('gpt2')\"` with TIKTOKEN_CACHE_DIR set, then copy that folder")
        try:
            enc = tiktoken.get_encoding(name)
        except Exception as e:
            raise DataError(f"--tokenizer {spec}: tiktoken cannot load {name!r} offline from {cache} "
                            f"({type(e).__name__})") from None
        return {"kind": "tiktoken", "name": name, "vocab_size": enc.n_vocab, "eot": enc.eot_token, "spec": spec}
    if spec.startswith("bpe-"):
        from .tokenizer import stdlib_tokenizer

        tok, path = stdlib_tokenizer(spec)
        json_path = str(path)
    else:
        p = Path(spec)
        if not p.is_file():
            raise DataError(f"tokenizer file not found: {spec} (want a tokenizer.json, bpe-V or gpt2)")
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(p))
        except Exception:
            raise DataError(f"corrupt tokenizer file {spec}: not a HF tokenizers JSON") from None
        json_path = str(p.resolve())
    return {"kind": "hf", "json": json_path, "vocab_size": tok.get_vocab_size(), "eot": tok.token_to_id(EOT),
            "spec": spec, "sha256_16": hashlib.sha256(Path(json_path).read_bytes()).hexdigest()[:16]}


class _Encoder:
    """The tokenizer inside a worker: one thread (the parallelism is the processes)."""

    def __init__(self, tk: dict):
        self.eot = tk["eot"]
        if tk["kind"] == "tiktoken":
            import tiktoken

            enc = tiktoken.get_encoding(tk["name"])
            self.encode = lambda docs: [enc.encode_ordinary(d) for d in docs]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(tk["json"])
            # encode_batch_fast (tokenizers >= 0.20) skips the character offsets nobody reads here
            batch = getattr(tok, "encode_batch_fast", tok.encode_batch)
            self.encode = lambda docs: [e.ids for e in batch(docs, add_special_tokens=False)]

    def tokens(self, docs: List[str], dtype) -> np.ndarray:
        out = []
        for ids in self.encode(docs):
            if self.eot is not None:
                out.append(np.array([self.eot], dtype=dtype))
            out.append(np.asarray(ids, dtype=dtype))
        return np.concatenate(out) if out else np.zeros(0, dtype=dtype)


_WORKER: dict = {}


def _worker_init(tk: dict, text_column: str, part_dir: str, dtype: str) -> None:
    _WORKER.update(enc=_Encoder(tk), text_column=text_column, part_dir=Path(part_dir), dtype=dtype)


def _work(job) -> dict:
    """Tokenize unit i into part_i.tok, then mark it done with part_i.json; returns its stats.
    A DataError is returned as {"error": message} (one line for the parent to raise)."""
    i, unit = job
    w = _WORKER
    try:
        docs = read_unit(unit, w["text_column"])
    except DataError as e:
        return {"error": str(e)}
    toks = w["enc"].tokens(docs, w["dtype"])
    part = w["part_dir"] / f"part_{i:06d}.tok"
    atomic_write_bytes(part, toks.tobytes())
    stats = {"unit": i, "n_tokens": int(toks.size), "n_docs": len(docs),
             "n_nonempty": sum(1 for d in docs if d.strip()), "max_id": int(toks.max()) if toks.size else -1}
    atomic_write_json(part.with_suffix(".json"), stats)
    return stats


# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------
def _shard_name(prefix: str, split: str, i: int) -> str:
    return f"{prefix}_{split}_{i:06d}.bin"


def prepare(src: str, out: str, tokenizer: str = "bpe-4096", workers: int = 1, text_column: str = "text",
            shard_tokens: int = 100_000_000, val_tokens: int = 10_000_000, name: Optional[str] = None,
            progress: bool = True) -> dict:
    """Tokenize ``src`` into llm.c shards under ``out`` (module docstring); returns prepare.json's
    record.  Started again after a kill it resumes; on a complete folder it returns at once."""
    srcp, outp = Path(src), Path(out)
    if workers < 1 or shard_tokens < 1 or val_tokens < 0:
        raise DataError("--workers and --shard-tokens must be at least 1, --val-tokens at least 0")
    tk = resolve_tokenizer(tokenizer)
    prefix = name or "".join(c if c.isalnum() else "_" for c in (srcp.stem or "data")).strip("_") or "data"
    version = llmc_version_for(tk["vocab_size"])
    dtype = "<u2" if version == 1 else "<u4"
    settings = {"source": str(srcp.resolve()), "tokenizer": tokenizer, "tokenizer_sha256_16": tk.get("sha256_16"),
                "text_column": text_column, "shard_tokens": shard_tokens, "val_tokens": val_tokens, "name": prefix}
    done_path = outp / "prepare.json"
    if done_path.is_file():
        rec = json.loads(done_path.read_text())
        if rec.get("settings") != settings:
            raise DataError(f"{outp} holds shards prepared with other settings; use another --out")
        return rec
    units = list_units(srcp, text_column)
    work = _work_dir(outp, dict(settings, n_units=len(units)))
    stats = _tokenize(units, work, (tk, text_column, str(work), dtype), workers, progress)
    if not any(s["n_nonempty"] for s in stats.values()):
        raise DataError(f"empty text column {text_column!r} in {src}: no document has any text")

    # Assemble: val shard(s) from the head of the stream, then training shards.
    sizes = [stats[i]["n_tokens"] for i in range(len(units))]
    total = sum(sizes)
    n_val = min(val_tokens, total // 10)
    plan = _shard_plan(prefix, n_val, total, shard_tokens)
    if not any(p[0].startswith(f"{prefix}_train_") for p in plan):
        raise DataError(f"{src} tokenizes to {total} tokens: too few for a training shard")
    bounds = np.cumsum([0] + sizes)
    for fname, a, b in plan:
        _write_shard(outp / fname, a, b, bounds, work, dtype, version)
    max_id = max(s["max_id"] for s in stats.values())
    if max_id >= tk["vocab_size"]:  # a tokenizer whose ids exceed its own size: refuse, never write bad shards
        raise DataError(f"tokenizer {tokenizer} produced id {max_id} >= its vocab size {tk['vocab_size']}")
    if tk["kind"] == "hf":
        shutil.copyfile(tk["json"], outp / "tokenizer.json")
    rec = {"format": "llm.c", "version": version, "magic": 20240520 if version == 1 else 20240801,
           "tokenizer": tokenizer, "vocab_size": tk["vocab_size"], "eot": tk["eot"],
           "n_tokens": {"val": n_val, "train": total - n_val}, "n_documents": sum(s["n_docs"] for s in stats.values()),
           "shards": [p[0] for p in plan], "settings": settings}
    atomic_write_json(done_path, rec)
    shutil.rmtree(work, ignore_errors=True)
    return rec


def _work_dir(outp: Path, settings_units: dict) -> Path:
    """OUT/.prepare, holding the settings an unfinished prepare started with (a resume must match them)."""
    work = outp / ".prepare"
    work.mkdir(parents=True, exist_ok=True)
    spath = work / "settings.json"
    if spath.is_file() and json.loads(spath.read_text()) != settings_units:
        raise DataError(f"{outp} holds an unfinished prepare with other settings (or a changed source); use another "
                        f"--out or delete {work}")
    atomic_write_json(spath, settings_units)
    return work


def _tokenize(units: list, work: Path, init: tuple, workers: int, progress: bool) -> dict:
    """{unit index: its part's stats}: the parts a killed prepare finished, then the rest tokenized
    by ``workers`` processes into work/part_NNNNNN.tok."""
    stats = {}
    for i in range(len(units)):
        sj = work / f"part_{i:06d}.json"
        if sj.is_file() and (work / f"part_{i:06d}.tok").is_file():
            stats[i] = json.loads(sj.read_text())
    todo = [(i, u) for i, u in enumerate(units) if i not in stats]
    from tqdm import tqdm

    bar = tqdm(total=None, initial=sum(s["n_tokens"] for s in stats.values()), unit="tok", unit_scale=True,
               disable=not progress, desc=f"tokenizing ({len(todo)} of {len(units)} units left)", file=sys.stderr,
               mininterval=0.5)
    try:
        if workers == 1 or len(todo) <= 1:
            _worker_init(*init)
            results = map(_work, todo)
            for r in results:
                _take(r, stats, bar)
        else:
            import multiprocessing as mp

            # fork where there is one: a spawned worker re-imports flopscale.engine (torch with
            # it), 1.7 s of CPU each; a forked one starts at once.  Workers use neither torch nor
            # a tokenizers thread pool (TOKENIZERS_PARALLELISM=false before the first encode).
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(min(workers, len(todo)), _worker_init, init) as pool:
                for r in pool.imap_unordered(_work, todo):
                    _take(r, stats, bar)
    finally:
        bar.close()
    return stats


def _shard_plan(prefix: str, n_val: int, total: int, shard_tokens: int) -> list:
    """[(file name, start, stop)] in stream positions: val shard(s) from the head, then training shards."""
    plan, k = [], 0
    for split, lo, hi in (("val", 0, n_val), ("train", n_val, total)):
        a = lo
        while a < hi:
            b = min(a + shard_tokens, hi)
            plan.append((_shard_name(prefix, split, k), a, b))
            k, a = k + 1, b
    return plan


def _write_shard(target: Path, a: int, b: int, bounds: np.ndarray, work: Path, dtype: str, version: int) -> None:
    """Stream positions [a, b) copied from the parts (unit i holds [bounds[i], bounds[i+1])) into one
    llm.c shard, written whole or not at all; one already whole (a kill after its rename) is kept."""
    item = np.dtype(dtype).itemsize
    if target.is_file() and target.stat().st_size == 1024 + item * (b - a):
        return  # written whole before a kill (rename is atomic)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(llmc_header(b - a, version))
        for i in range(len(bounds) - 1):
            lo, hi = max(a, bounds[i]), min(b, bounds[i + 1])
            if lo >= hi:
                continue
            with open(work / f"part_{i:06d}.tok", "rb") as pf:
                pf.seek(int(lo - bounds[i]) * item)
                left = int(hi - lo)
                while left:
                    chunk = np.fromfile(pf, dtype=dtype, count=min(left, COPY_CHUNK))
                    f.write(chunk.tobytes())
                    left -= chunk.size
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _take(r: dict, stats: dict, bar) -> None:
    if "error" in r:
        raise DataError(r["error"])
    stats[r["unit"]] = r
    bar.update(r["n_tokens"])


# ---------------------------------------------------------------------------------------------
# CLI: flopscale data prepare
# ---------------------------------------------------------------------------------------------
def add_data_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_cmd", required=True)
    q = sub.add_parser("prepare", help="text, jsonl, parquet or a saved HF dataset to llm.c token shards")
    q.add_argument("src", help="a text file or folder, .jsonl/.parquet file(s), or a save_to_disk folder")
    q.add_argument("--out", required=True, help="folder for the shards (an unfinished one is resumed)")
    q.add_argument("--tokenizer", default="bpe-4096", help="a tokenizer.json, bpe-V (the engine's stdlib BPE) or "
                   "gpt2 / tiktoken:NAME (BPE files cached in TIKTOKEN_CACHE_DIR) (default: bpe-4096)")
    q.add_argument("--workers", type=int, default=1, help="tokenizer processes (default: 1)")
    q.add_argument("--text-column", default="text", help="the text column of jsonl/parquet/HF data (default: text)")
    q.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per training shard (default: 1e8, llm.c's)")
    q.add_argument("--val-tokens", type=int, default=10_000_000,
                   help="validation tokens, the head of the stream, at most a tenth of it (default: 1e7)")
    q.add_argument("--name", default=None, help="shard name prefix (default: the source's name)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")


def run_data(a) -> int:
    rec = prepare(a.src, a.out, tokenizer=a.tokenizer, workers=a.workers, text_column=a.text_column,
                  shard_tokens=a.shard_tokens, val_tokens=a.val_tokens, name=a.name, progress=not a.quiet)
    print(json.dumps({k: rec[k] for k in ("version", "vocab_size", "n_tokens", "shards")}))
    return 0
