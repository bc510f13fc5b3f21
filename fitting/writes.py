"""Where the fit writes (`--out REPORT_DIR`, `--json FILE`): checked before any fitting starts, and
an OSError while writing turned into one FitError line naming the path.

    from flopscale.fitting.writes import check_out_dir, check_out_file, write_error
    check_out_dir("reports/x")         # FitError if it, or a folder above it, is a file
    try: ...write...
    except OSError as e: raise write_error("reports/x", e) from None   # "no space left on device: ..."

Checked first because a Chinchilla fit can take a minute: a path that cannot be written should
fail before the fit, not after it.
"""

from __future__ import annotations

import errno
import os
import re

from .estimator import FitError


def _nearest_existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.lexists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def check_out_dir(out: str, flag: str = "--out") -> None:
    """out is a directory, or can be made one: no file at it or at a folder above it."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise FitError(f"{flag} {out}: is a file, not a directory")
    anc = _nearest_existing(out)
    if not os.path.isdir(anc):
        raise FitError(f"{flag} {out}: {anc} is a file, not a directory")
    if not os.access(anc, os.W_OK):
        raise FitError(f"{flag} {out}: {anc} is not writable")


def check_out_file(path: str, flag: str = "--json") -> None:
    """path can be written as a file: not a directory, its folder exists (nothing is created)."""
    if os.path.isdir(path):
        raise FitError(f"{flag} {path}: is a directory, not a file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        anc = _nearest_existing(parent)
        if os.path.exists(anc) and not os.path.isdir(anc):
            raise FitError(f"{flag} {path}: {anc} is a file, not a directory")
        raise FitError(f"{flag} {path}: no such directory {parent}")
    if not os.access(parent, os.W_OK):
        raise FitError(f"{flag} {path}: {parent} is not writable")


def _target(filename) -> str:
    # flopscale.fileio writes DIR/.NAME.tmpPID first: name the file meant, not the temporary one
    if not filename:
        return ""
    d, b = os.path.split(str(filename))
    m = re.match(r"^\.(.*)\.tmp\d+$", b)
    return os.path.join(d, m.group(1)) if m else str(filename)


def write_error(path: str, e: OSError) -> FitError:
    """One line for an OSError while writing under path (the file when the error names it)."""
    where = _target(getattr(e, "filename", None)) or str(path)
    if e.errno == errno.ENOSPC:
        return FitError(f"no space left on device writing {where}")
    if e.errno == errno.EDQUOT:
        return FitError(f"disk quota exceeded writing {where}")
    return FitError(f"cannot write {where}: {e.strerror or e}")
