"""One writer per run directory: a process training in RUN_DIR holds ``RUN_DIR/.lock``.

    from flopscale.engine.runlock import RunLock
    with RunLock(run_dir):          # TrainError naming the holder if another process has it
        ...train...

The lock is ``fcntl.flock`` on the file (released by the kernel when the holder exits, however it
exits, so a lock left by a dead process is simply taken: a SIGKILLed run, a preempted SLURM task
that comes back on another node).  The file holds the holder's ``{"pid", "host", "since"}`` so the
refusal can say who it is.  flock is advisory and per open file: the descriptor is opened
close-on-exec, so a subprocess never inherits it.  On NFS, Linux maps flock onto the server's
byte-range locks, which is what makes the lock hold across the nodes of a cluster.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from .rundir import TrainError

LOCK = ".lock"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def read_holder(run_dir: str | Path) -> Optional[dict]:
    """The {"pid", "host", "since"} last written to RUN_DIR/.lock, or None."""
    try:
        return json.loads((Path(run_dir) / LOCK).read_text())
    except (OSError, ValueError):
        return None


class RunLock:
    """An exclusive, non-blocking lock on a run directory (a context manager).  ``acquire``
    raises TrainError with one line naming the holder when another process has it."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.fd: Optional[int] = None
        self.took_over: Optional[dict] = None  # the dead holder's record, when one was left behind

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for attempt in (0, 1):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise TrainError(f"cannot lock {self.path}: {e.strerror}") from None
                h = read_holder(self.run_dir) or {}
                if attempt == 0 and self._dead_here(h):
                    # The holder died but a forked child of it still holds the lock's file:
                    # take over on a fresh inode (the orphan keeps a lock on nothing).
                    self.took_over = h
                    try:
                        self.path.unlink()
                    except FileNotFoundError:
                        pass
                    continue
                who = f"pid {h.get('pid', '?')} on {h.get('host', '?')}" + (f" since {h['since']}" if "since" in h else "")
                raise TrainError(f"{self.run_dir} is in use by {who} (lock {self.path}); "
                                 "wait for that run to finish or stop it") from None
        old = read_holder(self.run_dir)
        if old and self.took_over is None and (self._dead_here(old) or old.get("host") != socket.gethostname()):
            # The kernel let go of a previous holder's lock: that process is gone (or, on another
            # host, it ended or its lease expired).  The record is kept for whoever asks.
            self.took_over = old
        rec = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                          "since": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n"
        # Written in place (not renamed over): the lock belongs to this inode.
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, rec.encode(), 0)
        except OSError as e:  # a full disk: let go of the lock, and say which file could not be written
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        self.fd = fd
        return self

    @staticmethod
    def _dead_here(h: dict) -> bool:
        """A holder record naming a process of this host that no longer exists (an empty record
        is a holder that has not written it yet: alive)."""
        try:
            pid = int(h["pid"])
        except (KeyError, TypeError, ValueError):
            return False
        return h.get("host") == socket.gethostname() and pid != os.getpid() and not _pid_alive(pid)

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)  # no stale holder record once released
            except OSError:
                pass
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["LOCK", "RunLock", "read_holder"]
