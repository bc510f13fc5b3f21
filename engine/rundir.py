"""A run directory's files: config.json, metrics.jsonl, flops.json and ckpt.pt (docs/ARCHITECTURE.md's
contract), and the code version recorded in config.json.  Every write is atomic
(flopscale.fileio): a run killed at any instant leaves the previous file or the new one.

    from flopscale.engine import rundir
    rundir.save_checkpoint(run / "ckpt.pt", state)
    state = rundir.load_checkpoint(run / "ckpt.pt", device)
    rundir.truncate_metrics(run / "metrics.jsonl", step)   # drop rows logged after a checkpoint
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

from flopscale.fileio import atomic_write, atomic_write_text

CONFIG, METRICS, FLOPS, CHECKPOINT = "config.json", "metrics.jsonl", "flops.json", "ckpt.pt"
POSITIONS = "positions.jsonl"  # --eval-positions: {"step", "val_loss_by_position": [n_ctx floats]} per eval


class TrainError(RuntimeError):
    """A run that cannot go on (NaN loss, a config that differs from the run on disk, a corrupt
    file in the run directory)."""


def code_version() -> str:
    """The git commit of the code (``-dirty`` with uncommitted changes), else the package version."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from flopscale import __version__

    return __version__


def kept_checkpoint(step: int) -> str:
    """The file name of the checkpoint copy a run keeps at ``step`` (TrainConfig.keep_steps)."""
    return f"ckpt-{step}.pt"


def read_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise TrainError(f"{path} is corrupt; move the run directory aside to start afresh") from None


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: Path, device) -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:
        raise TrainError(f"checkpoint {path} is unreadable ({type(e).__name__}); "
                          "move it aside to restart the run") from None


def row_step(line: str) -> int:
    """The step of one metrics.jsonl line; a torn (unparsable) line sorts after every step."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows up to ``step`` (those after the checkpoint were lost work, logged again by
    the resumed run) and drop a torn last line."""
    if path.exists():
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and row_step(ln) <= step]
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def copy_metrics(src: Path, dst: Path, step: int) -> None:
    """Write ``src``'s rows up to ``step`` as ``dst`` (a cooldown branch starts with its parent's curve)."""
    rows = [ln for ln in src.read_text().splitlines() if ln.strip() and row_step(ln) <= step]
    atomic_write_text(dst, "".join(ln + "\n" for ln in rows))


__all__ = ["CONFIG", "METRICS", "POSITIONS", "FLOPS", "CHECKPOINT", "TrainError", "code_version", "read_config",
           "kept_checkpoint", "save_checkpoint", "load_checkpoint", "row_step", "truncate_metrics", "copy_metrics"]
