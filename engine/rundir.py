"""A run directory's files: config.json, metrics.jsonl, flops.json and ckpt.pt (docs/ARCHITECTURE.md's
contract), and the code version recorded in config.json.  Every write is atomic
(flopscale.fileio): a run killed at any instant leaves the previous file or the new one.

    from flopscale.engine import rundir
    rundir.save_checkpoint(run / "ckpt.pt", state)          # state["fingerprint"] = rundir.fingerprint(model, train)
    state = rundir.load_checkpoint(run / "ckpt.pt", device, fingerprint=...)  # weights_only; refuses another run's
    rundir.truncate_metrics(run / "metrics.jsonl", step)   # drop rows logged after a checkpoint

Nothing from a file runs: a checkpoint holds tensors, numbers, strings, lists and dicts only and is
read with ``torch.load(weights_only=True)``; a pickle that names anything else (a class, a
function: what a crafted ``__reduce__`` needs) is refused before any of it is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import signal
import subprocess
import warnings
from pathlib import Path

import torch

from flopscale.fileio import atomic_write, atomic_write_text, write_error

from .config import ConfigError

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
    """A run's config.json: an object with "model" and "train" objects, or one line saying why not."""
    try:
        rec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TrainError(f"{path} is corrupt; move the run directory aside to start afresh") from None
    if not isinstance(rec, dict) or not all(isinstance(rec.get(k), dict) for k in ("model", "train")):
        raise TrainError(f"{path} is not a flopscale run config (want an object with \"model\" and \"train\" "
                         "objects); move the run directory aside to start afresh")
    return rec


# -- checkpoints ----------------------------------------------------------------------------------
# What every checkpoint holds (train.Trainer.save_checkpoint writes them, load_checkpoint checks them).
CHECKPOINT_KEYS = ("step", "tokens", "model", "opt", "ledger", "torch_rng", "fingerprint")


def fingerprint(model: dict, train: dict) -> str:
    """A hash of the config that writes a checkpoint: the ModelConfig and TrainConfig fields (as
    ``to_dict`` gives them) that differ from their declared defaults, so a field added to the
    dataclasses later, read at its default, leaves the fingerprint of an older run unchanged.
    Every field counts, ``steps`` included, but config.WATCH_FIELDS (who watches a run, which a
    resume may change): a run resumes only under the config it was started with (train.Trainer
    refuses any other), so a checkpoint of any other config is another run's."""
    from .config import WATCH_FIELDS, ModelConfig, TrainConfig

    rec = {}
    for sec, cls, d in (("model", ModelConfig, model), ("train", TrainConfig, train)):
        defaults = {f.name: f.default for f in cls.__dataclass_fields__.values()}
        rec[sec] = {k: v for k, v in sorted(d.items())
                    if (k not in defaults or v != defaults[k]) and not (sec == "train" and k in WATCH_FIELDS)}
    return hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16]


def _os_error_in(e: BaseException):
    """The OSError behind ``e`` (torch.save reports a failed write as a RuntimeError whose
    context is the file object's OSError), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def save_checkpoint(path: Path, state: dict) -> None:
    try:
        with atomic_write(path, "wb") as f:
            torch.save(state, f)
    except RuntimeError as e:
        os_err = _os_error_in(e)
        if os_err is None:
            raise
        raise write_error(os_err, path) from None
    written(path, state.get("step"))


# Fault injection (tests/test_faults.py; docs/ARCHITECTURE.md, Testing).  With
# FLOPSCALE_KILL_AFTER=NAME or NAME@STEP in the environment, the process sends itself SIGKILL
# right after it has written the run-directory file NAME (at STEP: the checkpoint's step, the
# metrics or positions row's step, flops.json's steps).  The instants it reaches, between two
# writes a few microseconds apart, are ones no outside timing can hit; everything else the
# tests kill from outside.  Unset (always, outside tests) it costs one dictionary lookup.
KILL_AFTER_ENV = "FLOPSCALE_KILL_AFTER"


def written(path: Path, step=None) -> None:
    spec = os.environ.get(KILL_AFTER_ENV)
    if spec:
        name, _, at = spec.partition("@")
        if Path(path).name == name and (not at or (step is not None and int(at) == int(step))):
            os.kill(os.getpid(), signal.SIGKILL)


def load_checkpoint(path: Path, device, fingerprint: str | None = None, owner: str = "this run") -> dict:
    """Read a checkpoint with ``weights_only=True`` (nothing in it runs), check that it holds
    every key of CHECKPOINT_KEYS and, given ``fingerprint``, that it was written by that config
    (``owner`` names the run in the refusal).  Every failure is one TrainError line."""
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: the refusal says it
            warnings.simplefilter("ignore")
            ck = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        what = re.search(r"GLOBAL ([\w.]+)", str(e))
        if what is None:  # not a pickle torch can read without running one: garbage, a foreign format
            raise TrainError(f"checkpoint {path} is unreadable (not a torch checkpoint of tensors, numbers, strings, "
                             "lists and dicts); move it aside to restart the run") from None
        raise TrainError(f"checkpoint {path} holds more than tensors, numbers, strings, lists and dicts (it names "
                         f"{what.group(1)}); it was not written by flopscale and is not loaded: move it aside to "
                         "restart the run") from None
    except Exception as e:
        raise TrainError(f"checkpoint {path} is unreadable ({type(e).__name__}); "
                         "move it aside to restart the run") from None
    if not isinstance(ck, dict):
        raise TrainError(f"checkpoint {path} is not a flopscale checkpoint (a {type(ck).__name__}, not a dict); "
                         "move it aside to restart the run")
    missing = [k for k in CHECKPOINT_KEYS if k not in ck]
    if missing:
        raise TrainError(f"checkpoint {path} lacks {', '.join(missing)} (not a flopscale checkpoint, or one "
                         "written before checkpoints carried a config fingerprint); move it aside to restart the run")
    if fingerprint is not None and ck["fingerprint"] != fingerprint:
        raise TrainError(f"checkpoint {path} was written by another configuration than {owner}'s (fingerprint "
                         f"{ck['fingerprint']} != {fingerprint}: copied from another run?); move it aside to restart")
    return ck


# -- the run directory itself ---------------------------------------------------------------------
# Entries a directory may hold and still be taken for a fresh run (nothing of a run written yet):
# the lock, a multi-GPU run's torchrun log, a tracker's folders (created with the run), and the
# temporary files of atomic writes (flopscale.fileio: ".NAME.tmpPID").
_FRESH_OK = {".lock", "torchrun.log", "tb", "wandb"}
_TMP = re.compile(r"^\..+\.tmp\d+$")


def check_out_dir(out: Path) -> None:
    """Refuse, in one line, an --out that is a file, lies under a file, or is a non-empty
    directory that holds no run (``train --out /`` or into a source tree), as sweeps do."""
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            where = "is a file" if p == out else f"lies under {p}, which is a file"
            raise TrainError(f"--out {out} {where}; give a run directory")
    if (out / CONFIG).exists() or not out.is_dir():
        return
    other = sorted(e.name for e in out.iterdir() if e.name not in _FRESH_OK and not _TMP.match(e.name))
    if other:
        raise TrainError(f"--out {out} is not empty and holds no run (no {CONFIG}; it holds {other[0]}"
                         f"{f' and {len(other) - 1} more' if len(other) > 1 else ''}); use a new or empty directory")


def clean_temp_files(run_dir: Path) -> list:
    """Remove the temporary files that atomic writes of a killed process left (".ckpt.pt.tmpPID").
    Called by the one writer of the directory, under its lock, so none of them is being written."""
    gone = []
    for e in run_dir.iterdir() if run_dir.is_dir() else ():
        if _TMP.match(e.name) and e.is_file():
            try:
                e.unlink()
                gone.append(e.name)
            except FileNotFoundError:
                pass
    return gone


def last_step(path: Path):
    """The step of the last whole row of a metrics.jsonl (None: no file or no row)."""
    if not path.exists():
        return None
    last = None
    for ln in path.read_text().splitlines():
        s = row_step(ln)
        if s != _TORN:
            last = s
    return last


def flops_json_step(run_dir: Path):
    """The "steps" flops.json was written at (None: missing or unreadable)."""
    try:
        return int(json.loads((run_dir / FLOPS).read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_complete(run_dir: Path, steps: int) -> bool:
    """A run is complete when every final file is: metrics.jsonl ends at ``steps``, flops.json
    was written at ``steps`` (after the final checkpoint, so the checkpoint is there too) and
    ckpt.pt exists.  A kill between them leaves it incomplete; the same command repairs it."""
    return (last_step(run_dir / METRICS) == steps and flops_json_step(run_dir) == steps
            and (run_dir / CHECKPOINT).exists())


def check_run_name(name, what: str = "run name") -> str:
    """A name that becomes one path component (a sweep's run, a preset's variant): not empty, no
    separator, no leading dot ('.', '..', hidden names), printable.  Returns it, or a
    ConfigError line."""
    if (not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name
            or (os.sep in name) or (os.altsep and os.altsep in name) or not name.isprintable()):
        raise ConfigError(f"{what} {name!r} is not one path component (want a non-empty name without '/', "
                         "'\\' or a leading '.')")
    return name


_TORN = 1 << 62


def row_step(line: str) -> int:
    """The step of one metrics.jsonl line; a torn (unparsable) line sorts after every step."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return _TORN


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows up to ``step`` (those after the checkpoint were lost work, logged again by
    the resumed run; ``step`` 0: none) and drop a torn line.  A row is kept only if its step
    is above the previous kept row's, so rows appended twice by an older run are dropped too."""
    if path.exists():
        atomic_write_text(path, _rows_upto(path, step))


def _rows_upto(path: Path, step: int) -> str:
    keep, prev = [], 0
    for ln in path.read_text(errors="replace").splitlines():
        s = row_step(ln)
        if prev < s <= step:
            keep.append(ln)
            prev = s
    return "".join(ln + "\n" for ln in keep)


def copy_metrics(src: Path, dst: Path, step: int) -> None:
    """Write ``src``'s rows up to ``step`` as ``dst`` (a cooldown branch starts with its parent's curve)."""
    atomic_write_text(dst, _rows_upto(src, step))


__all__ = ["CONFIG", "METRICS", "POSITIONS", "FLOPS", "CHECKPOINT", "CHECKPOINT_KEYS", "TrainError", "code_version",
           "read_config", "kept_checkpoint", "fingerprint", "save_checkpoint", "load_checkpoint", "check_out_dir",
           "clean_temp_files", "last_step", "flops_json_step", "is_complete", "check_run_name", "row_step",
           "truncate_metrics", "copy_metrics"]
