"""Where flopscale keeps what it rebuilds on demand (trained tokenizers, token arrays, prepared
datasets, vocabulary scans): ``$FLOPSCALE_CACHE``, default ``~/.cache/flopscale``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    d = Path(os.environ.get("FLOPSCALE_CACHE", Path.home() / ".cache" / "flopscale"))
    d.mkdir(parents=True, exist_ok=True)
    return d
