"""Processes as tests see them: a process's children and descendants, read from /proc (Linux)."""

from pathlib import Path


def children(pid: int) -> list:
    """The pids whose parent is ``pid``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4, after the command in parentheses
                out.append(int(d.name))
    return out


def descendants(pid: int) -> list:
    """Children, then their descendants."""
    kids = children(pid)
    return kids + [g for k in kids for g in descendants(k)]
