"""Atomic file writes: the one helper every file the project writes goes through.

    from flopscale.fileio import atomic_write_text, atomic_write_json, atomic_write
    atomic_write_json("run/config.json", record)
    with atomic_write("run/ckpt.pt", "wb") as f:   # any writer that takes a file object
        torch.save(state, f)

A write goes to a temporary file beside the target (same directory, so the rename cannot cross
file systems), is flushed and fsync'ed, then renamed over the target with ``os.replace``, which
POSIX makes atomic: a reader, or a run killed mid-write, sees the old file or the new one, never
half of one.  The directory is fsync'ed after the rename so the new name survives a power cut.
The temporary name carries the pid, so two processes writing the same target never share one.

A write that fails (a full disk above all) raises an OSError that names the file
(``write_error``): a file object's write, flush or fsync errors carry no file name, and the
one-line message the CLI prints (``os_error_line``) must say which file could not be written.

Standard library only: this module sits below every layer (``fitting/`` uses it and imports
nothing else of the project).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import IO, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # a platform or file system that cannot open a directory: best effort
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_error(e: OSError, path: PathLike) -> OSError:
    """``e`` naming ``path`` (the same errno and message): what a failed write raises."""
    err = OSError(e.errno, e.strerror or str(e), str(path))
    err.__cause__ = e
    return err


def os_error_line(e: OSError) -> str:
    """One line for a failed read or write: ``no space left on device writing PATH`` for a full
    disk (ENOSPC, EDQUOT), else the system's message and the file."""
    name = getattr(e, "filename", None)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device writing {name if name is not None else 'a file'}"
    msg = e.strerror or str(e)
    return f"{msg}: {name}" if name is not None else msg


def append_line(path: PathLike, line: str) -> None:
    """Append one line (``line`` without its newline) to ``path``, opened for this line and
    closed (flushed) before returning; a failure names ``path``.  A line torn by a kill or a full
    disk is dropped by whoever reads or truncates the file next (engine/rundir.py
    truncate_metrics).  Opening per line costs microseconds and leaves no buffered data behind
    an error for a later close to fail on again."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        raise write_error(e, path) from None


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file for writing (``mode`` "w" or "wb"); on a clean exit it replaces
    ``path`` atomically, on an exception it is removed and ``path`` is left as it was."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(e, path) from None
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: PathLike, obj, indent: int = 2) -> None:
    """``json.dumps(obj, indent=indent)`` plus a final newline, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


__all__ = ["atomic_write", "atomic_write_text", "atomic_write_bytes", "atomic_write_json", "append_line",
           "write_error", "os_error_line"]
