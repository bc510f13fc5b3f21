"""The tokenizers a corpus is read with, and the sources the default one is trained on: the
standard library's own files (found through ``sysconfig``), their train/validation split by file,
and the byte-level BPE (HF ``tokenizers``) trained on the training files and cached under
``$FLOPSCALE_CACHE`` (engine/cache.py), keyed by a hash of the files and the spec.  engine/data.py
builds corpora with it, engine/prepare.py tokenizes datasets with it.

    from flopscale.engine.tokenizer import stdlib_tokenizer
    tok, path = stdlib_tokenizer("bpe-4096")
"""

from __future__ import annotations

import hashlib
import sysconfig
import zlib
from pathlib import Path
from typing import Optional

from flopscale.fileio import atomic_write_bytes

from .cache import cache_dir
from .formats import DataError

VAL_EVERY = 20  # one file in 20 (by a hash of its path) goes to validation
EOT = "<|endoftext|>"


def stdlib_files() -> list:
    """The standard library's .py files (site-packages excluded), sorted for determinism."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts]
    # A few test fixtures are deliberately in other encodings (latin-1, bad UTF-8): skip them.
    files = [p for p in files if is_utf8(p)]
    if not files:
        raise DataError(f"no standard-library sources found under {root}")
    return sorted(files, key=lambda p: str(p.relative_to(root)))


def is_utf8(path: Path) -> bool:
    try:
        path.read_bytes().decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"corrupt text file {path}: not valid UTF-8") from None


def split_by_file(files: list, root: Optional[Path]) -> tuple:
    """Deterministic train/val split by a hash of each file's relative path."""
    train, val = [], []
    for f in files:
        key = str(f.relative_to(root)) if root else f.name
        (val if zlib.crc32(key.encode()) % VAL_EVERY == 0 else train).append(f)
    if not val or not train:  # too few files to split by file: split by tokens later
        return files, []
    return train, val


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


def hash_files(files: list) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def load_tokenizer(spec: str, texts_for_training, key: str):
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


def stdlib_tokenizer(spec: str) -> tuple:
    """(tokenizer, its cached tokenizer.json path): the BPE ``bpe-V`` that ``load_corpus("stdlib",
    spec)`` trains on the standard library (trained and cached here if it is not yet)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files()
    train_f, _ = split_by_file(files, root)
    key = hash_files(files)
    tok, _ = load_tokenizer(spec, lambda: (read_text(f) for f in train_f), key)
    return tok, cache_dir() / f"tokenizer-{key}-{spec}.json"
