"""Trackers: a run's metrics rows mirrored to TensorBoard and/or Weights & Biases.

    flopscale train ... --out runs/a --tracker tensorboard --tracker wandb
    tensorboard --logdir runs/a/tb                  # one run;  --logdir SWEEP_DIR for a whole sweep
    WANDB_MODE=offline flopscale train ... --tracker wandb; wandb sync runs/a/wandb/offline-run-*

    with open_trackers(tc.trackers(), run_dir) as tr:    # what the Trainer does
        tr.log(row)                                                      # after each metrics.jsonl row

``metrics.jsonl`` stays the record; a tracker is a view of it.  Each row's numbers go out under
the stable names of :data:`NAMES` (``val_loss_NAME`` as ``val/loss_NAME``, any other number as
``other/KEY``) at the row's ``step``; nulls and non-numbers are left out.  TensorBoard scalars are
written as float64 tensors, so the FLOP counts (ints below 2^53 are exact) and losses read back
equal to metrics.jsonl.  The run's config.json goes out as hyperparameters (TensorBoard's hparams
plugin, flattened, plus the whole record as text; W&B's run config).

Where: TensorBoard events in ``RUN_DIR/tb/``; W&B in ``RUN_DIR/wandb/`` (the run id in
``RUN_DIR/wandb/flopscale-run.json``).  A run of a sweep (``SWEEP_DIR/runs/NAME`` beside
``SWEEP_DIR/sweep.json``) is in W&B group ``basename(SWEEP_DIR)`` under the name NAME;
``tensorboard --logdir SWEEP_DIR`` shows every run as ``runs/NAME/tb`` (and the report's figures as
``report/tb``): one log dir per sweep, a folder per run, each run directory self-contained.

W&B mode: ``WANDB_MODE`` (online, offline, disabled) is honoured; when it is unset the run is
online only where an API key is configured (``WANDB_API_KEY`` or a netrc entry for the W&B host),
offline otherwise, and ``WANDB_MODE=online`` without a key falls back to offline with a warning:
a run never waits on a login prompt.  ``wandb sync`` uploads an offline run later.

Failures never reach the run: a library that is missing, a tracker that fails to start, or one
that dies mid-run (its service killed, its file closed) is one ``warning:`` line on stderr and
the run goes on without it.  The libraries are imported only when their tracker starts, which is
lazily, at the first row logged (a run refused for its config, or already complete, starts none).

Resume: on start a tracker first replays the rows of metrics.jsonl it lacks (after the last step
it surely holds, before the first new row), so a tracker added on resume, or to a cooldown
branch, shows the whole curve.  TensorBoard rewrites: its steps file (``tb/flopscale-steps``,
flushed per row) says what it holds, and the writer's ``purge_step`` makes TensorBoard's reader
drop the old events from the session's first step on, so the rows redone after the checkpoint
replace the killed session's and no step is doubled.  W&B reuses the run id (``resume="allow"``)
and skips what it surely holds (its history steps only grow; :class:`WandbTracker` says what a
SIGKILLed session leaves).
"""

from __future__ import annotations

import itertools
import json
import math
import netrc
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterable, Optional
from urllib.parse import urlparse

from flopscale.fileio import atomic_write_json

from . import rundir
from .config import TRACKERS

TB_DIR, WANDB_DIR = "tb", "wandb"
STEPS_FILE = "flopscale-steps"          # in tb/: the steps it has logged, one a line
WANDB_RUN_FILE = "flopscale-run.json"   # {"id", "last_step"}: the W&B run a resume continues, what it holds
WANDB_PROJECT = "flopscale"             # when WANDB_PROJECT is unset
WANDB_INIT_TIMEOUT_S = 30               # online: how long a start may wait on the server

# metrics.jsonl key -> the name a tracker shows (docs/ARCHITECTURE.md, "Trackers").
NAMES = {
    "train_loss": "train/loss",
    "val_loss": "val/loss",
    "lr": "optim/lr",
    "grad_norm": "optim/grad_norm",
    "grad_noise_scale": "optim/grad_noise_scale_tokens",
    "tokens": "progress/tokens",
    "tokens_per_s": "perf/tokens_per_s",
    "mfu": "perf/mfu",
    "hfu": "perf/hfu",
    # cumulative FLOPs, the three views of the ledger: paper (Table 1, non-embedding), model (exact,
    # non-embedding: the C of fits; and every row), executed (what the kernels ran, every row)
    "flops_paper": "compute/flops_paper",
    "flops": "compute/flops",
    "flops_total": "compute/flops_total",
    "flops_executed": "compute/flops_executed",
}


def metric_name(key: str) -> str:
    """The tracker name of a metrics.jsonl key."""
    if key in NAMES:
        return NAMES[key]
    if key.startswith("val_loss_"):
        return "val/loss_" + key[len("val_loss_"):]
    return "other/" + key


def scalars(row: dict) -> dict:
    """{tracker name: number} of a metrics row: every finite int or float but the step."""
    return {metric_name(k): v for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def sweep_group(run_dir: Path) -> Optional[str]:
    """The sweep a run belongs to (SWEEP_DIR/runs/NAME beside SWEEP_DIR/sweep.json), else None."""
    run_dir = Path(run_dir).absolute()
    sweep = run_dir.parent.parent
    return sweep.name if run_dir.parent.name == "runs" and (sweep / "sweep.json").exists() else None


def warn(msg: str) -> None:
    """One line on stderr that does not break a progress bar."""
    from tqdm import tqdm

    tqdm.write(f"warning: {msg}", file=sys.stderr)


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0]}" if s else type(e).__name__


def flat_hparams(config: dict) -> dict:
    """config.json's model and train fields and its top-level numbers, flat ("model.n_layer",
    "train.lr", "N"), as TensorBoard's hparams plugin takes them (bool, number or string)."""
    out = {}
    for k, v in config.items():
        items = [(f"{k}.{kk}", vv) for kk, vv in v.items()] if k in ("model", "train") and isinstance(v, dict) else [(k, v)]
        for name, val in items:
            if isinstance(val, (bool, int, float, str)):
                out[name] = val
            elif val is None and k in ("model", "train"):
                out[name] = "None"
    return out


def read_rows(path: Path) -> list:
    """metrics.jsonl's complete rows."""
    out = []
    if path.exists():
        for ln in path.read_text().splitlines():
            try:
                out.append(json.loads(ln))
            except json.JSONDecodeError:
                pass
    return out


# ---------------------------------------------------------------------------------------------
# One tracker each.  start(first) opens the library; log(step, values); close().  Any exception
# is caught by Trackers, which warns once and drops the tracker.
# ---------------------------------------------------------------------------------------------
class _Tracker:
    name = "?"
    folder = "?"

    def __init__(self, run_dir: Path, config: Optional[dict], group: Optional[str]):
        self.run_dir, self.group, self._config = run_dir, group, config
        self.dir = run_dir / self.folder

    @property
    def config(self) -> dict:
        """The run's hyperparameters: config.json as the run recorded it (read at start)."""
        if self._config is None:
            self._config = json.loads((self.run_dir / rundir.CONFIG).read_text())
        return self._config

    def last_logged(self) -> int:
        """The last step this tracker surely holds from earlier sessions (-1: none)."""
        raise NotImplementedError

    def start(self, first: int) -> None:
        """Open the library for a session whose first row is step ``first``."""
        raise NotImplementedError

    def skip_through(self, last: int) -> int:
        """After start: the steps up to this one are not logged again (-1: none skipped)."""
        return -1

    def log(self, step: int, values: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def abandon(self) -> None:
        """After a failure: release what can be released, quietly."""
        try:
            self.close()
        except Exception:
            pass


_EVENT_FILES = itertools.count()


class EventFile:
    """One TensorBoard event file, written synchronously with tensorboard's own RecordWriter:
    a failed write raises here, in the caller (torch's SummaryWriter writes from a background
    thread, which dies with a traceback of its own).  ``purge_step``: the file starts with the
    mark that makes TensorBoard's reader drop earlier events from that step on (what
    ``SummaryWriter(purge_step=)`` writes)."""

    def __init__(self, logdir: Path, purge_step: Optional[int] = None):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._Event = Event
        logdir.mkdir(parents=True, exist_ok=True)
        # tensorboard's naming; a reader loads a folder's files in name (= time) order
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_EVENT_FILES)}"
        self._f = open(logdir / name, "wb")
        self._w = RecordWriter(self._f)
        step = purge_step or 0
        self.write(Event(wall_time=time.time(), step=step, file_version="brain.Event:2"))
        if purge_step is not None:
            self.write(Event(wall_time=time.time(), step=step, session_log=SessionLog(status=SessionLog.START)))

    def write(self, event) -> None:
        self._w.write(event.SerializeToString())

    def add(self, summary, step: int) -> None:
        self.write(self._Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        self._w.flush()

    def close(self) -> None:
        self._w.close()


class TensorBoardTracker(_Tracker):
    """Rewrites: every session starts with purge_step = its first step, so TensorBoard's reader
    drops what an earlier (killed) session wrote from there on.  Every session marks its start
    that way: the reader takes the first mark as a start and the later ones as restarts."""

    name, folder = "tensorboard", TB_DIR

    def __init__(self, *a):
        super().__init__(*a)
        self.events = self._steps = None

    def last_logged(self) -> int:
        try:  # the steps file is flushed after the events of each row: a killed session's last row is in it
            lines = (self.dir / STEPS_FILE).read_text().split()
        except OSError:
            return -1
        return max((int(s) for s in lines if s.isdigit()), default=-1)

    def start(self, first: int) -> None:
        from torch.utils.tensorboard.summary import hparams, scalar, text

        self._scalar = scalar
        self.events = EventFile(self.dir, purge_step=first)
        # hparams in the run's own folder (SummaryWriter.add_hparams would start a sub-run);
        # the metric names link the HPARAMS tab to the curves.
        metrics = {NAMES[k]: None for k in ("train_loss", "val_loss", "flops")}
        for s in hparams(flat_hparams(self.config), metrics):
            self.events.add(s, 0)
        self.events.add(text("config", "```\n" + json.dumps(self.config, indent=1) + "\n```"), first)
        self.events.flush()

    def log(self, step: int, values: dict) -> None:
        for tag, v in values.items():  # float64 tensors: FLOP counts below 2^53 stay exact
            self.events.add(self._scalar(tag, v, new_style=True, double_precision=True), step)
        self.events.flush()
        if self._steps is None:
            self._steps = open(self.dir / STEPS_FILE, "a")
        self._steps.write(f"{step}\n")
        self._steps.flush()  # like metrics.jsonl: per row, survives a killed process

    def close(self) -> None:
        ev, f = self.events, self._steps
        self.events, self._steps = None, None
        if f is not None:
            f.close()
        if ev is not None:
            ev.close()


def wandb_mode() -> tuple:
    """(mode, why or None): WANDB_MODE if set; otherwise online where an API key is configured,
    offline elsewhere; online without a key is offline (a run never waits on a login prompt)."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower() or None
    if mode in ("disabled", "offline", "dryrun"):
        return ("offline" if mode == "dryrun" else mode), None
    if _wandb_key_configured():
        return "online", None
    if mode == "online":
        return "offline", "WANDB_MODE=online but no W&B API key is configured; logging offline (wandb sync uploads later)"
    return "offline", None


def _wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker(_Tracker):
    """W&B history steps only grow, so a step it holds is skipped, never rewritten.  What it
    surely holds: the last step of a session that closed (``run.finish()`` returned; kept in
    flopscale-run.json) and, online, what the server reports (``run.starting_step``).  wandb's
    service buffers records, so a SIGKILLed session may have written some of its rows or none:
    the next session logs every row after the last sure step again; where both sessions of an
    offline run hold a step, ``wandb sync`` (of both, oldest first) keeps the first."""

    name, folder = "wandb", WANDB_DIR

    def _state(self) -> dict:
        try:
            st = json.loads((self.dir / WANDB_RUN_FILE).read_text())
            return st if isinstance(st, dict) and isinstance(st.get("id"), str) else {}
        except (OSError, ValueError):
            return {}

    def last_logged(self) -> int:
        return int(self._state().get("last_step", -1))

    def skip_through(self, last: int) -> int:
        return max(last, int(getattr(self.run, "starting_step", 0) or 0) - 1)

    def start(self, first: int) -> None:
        import wandb
        from wandb.sdk.lib.runid import generate_id

        mode, why = wandb_mode()
        if why:
            warn(f"tracker wandb: {why}")
        self.holds = mode != "disabled"  # a disabled run keeps nothing: its steps are not held
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = self._state() or {"id": generate_id()}
        atomic_write_json(self.dir / WANDB_RUN_FILE, self.state)  # before init: a killed start reuses the id
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT, dir=str(self.run_dir), id=self.state["id"],
            resume="allow", name=self.run_dir.name, group=self.group, config=self.config, mode=mode,
            reinit="create_new",  # an inline sweep trains its runs one after another in one process
            # online with no network: a warning after WANDB_INIT_TIMEOUT_S, not wandb's 90 s
            settings=wandb.Settings(console="off", silent=True, init_timeout=WANDB_INIT_TIMEOUT_S))
        self.run.define_metric(NAMES["val_loss"], summary="min")

    def log(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)
        self.last = step

    def close(self) -> None:
        run = getattr(self, "run", None)
        if run is not None:
            self.run = None
            run.finish()
            if self.holds and getattr(self, "last", None) is not None:  # finished: every row so far is on disk (or uploaded)
                atomic_write_json(self.dir / WANDB_RUN_FILE, {**self.state, "last_step": self.last})

    def abandon(self) -> None:
        super().abandon()
        self.run = None
        try:  # a dead service: unregister wandb's atexit teardown (it would print a traceback at exit)
            import wandb

            wandb.teardown()
        except Exception:
            pass


KINDS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}
assert set(KINDS) | {"none"} == set(TRACKERS)


class Trackers:
    """The trackers of one run (none: every call is a no-op).  ``log(row)`` after each
    metrics.jsonl row; ``close()`` (or the ``with`` block's end) at the end of the run."""

    def __init__(self, names: Iterable[str], run_dir, config: Optional[dict] = None, group: Optional[str] = None):
        self.run_dir = Path(run_dir)
        group = group if group is not None else sweep_group(self.run_dir)
        self.pending = [KINDS[n](self.run_dir, config, group) for n in names if n != "none"]
        self.live = []

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _drop(self, t: _Tracker, what: str, e: BaseException) -> None:
        hint = " (pip install 'flopscale[trackers]')" if isinstance(e, ImportError) else ""
        warn(f"tracker {t.name} {what} ({_one_line(e)}){hint}; the run goes on without it, metrics.jsonl is unaffected")
        t.abandon()
        for lst in (self.pending, self.live):
            if t in lst:
                lst.remove(t)

    def _start(self, t: _Tracker, step: int) -> None:
        """Open ``t`` for a session whose first new row is ``step``, after replaying the rows of
        metrics.jsonl it lacks (those after the last step it surely holds, before ``step``)."""
        last = t.last_logged()
        older = [r for r in read_rows(self.run_dir / rundir.METRICS) if last < r.get("step", -1) < step]
        t.start(older[0]["step"] if older else step)
        t.skip_to = t.skip_through(last)
        for r in older:
            self._log_one(t, r["step"], scalars(r))

    def _log_one(self, t: _Tracker, step: int, values: dict) -> None:
        if step > t.skip_to:
            t.log(step, values)

    def log(self, row: dict) -> None:
        if not (self.pending or self.live):
            return
        step = int(row["step"])
        for t in list(self.pending):
            self.pending.remove(t)
            try:
                self._start(t, step)
                self.live.append(t)
            except Exception as e:
                self._drop(t, "did not start", e)
        values = scalars(row)
        for t in list(self.live):
            try:
                self._log_one(t, step, values)
            except Exception as e:
                self._drop(t, f"failed at step {step}", e)

    def close(self) -> None:
        self.pending = []
        for t in list(self.live):
            try:
                t.close()
                self.live.remove(t)
            except Exception as e:
                self._drop(t, "failed to close", e)


def open_trackers(names: Iterable[str], run_dir, config: Optional[dict] = None, group: Optional[str] = None) -> Trackers:
    """The Trainer's one call: ``with open_trackers(tc.trackers(), out) as tr``.  ``config``: the
    hyperparameters to show (default: RUN_DIR/config.json, read when the first tracker starts)."""
    return Trackers(names or (), run_dir, config, group)


# ---------------------------------------------------------------------------------------------
# flopscale fit / sweep: a report's figures
# ---------------------------------------------------------------------------------------------
def log_report(names: Iterable[str], report_dir, group: Optional[str] = None) -> None:
    """Log a report folder's figures (``*.png``) and report.md to the trackers ``names``: as
    images and text in ``REPORT_DIR/tb/``, and as a W&B run of job type ``fit`` named after the
    folder in ``REPORT_DIR/wandb/`` (in the sweep's group for SWEEP_DIR/report).  Failures are
    one warning line, as for runs."""
    report_dir = Path(report_dir)
    if group is None and (report_dir.absolute().parent / "sweep.json").exists():
        group = report_dir.absolute().parent.name
    pngs = sorted(report_dir.glob("*.png"))
    md = report_dir / "report.md"
    text = md.read_text() if md.exists() else ""
    for name in names or ():
        if name == "none":
            continue
        try:
            _LOG_REPORT[name](report_dir, pngs, text, group)
        except Exception as e:
            hint = " (pip install 'flopscale[trackers]')" if isinstance(e, ImportError) else ""
            warn(f"tracker {name} could not log the report's figures ({_one_line(e)}){hint}")


def _report_tb(report_dir: Path, pngs: list, md: str, group) -> None:
    import matplotlib.image as mpimg
    from torch.utils.tensorboard.summary import image, text

    ev = EventFile(report_dir / TB_DIR)
    try:
        for p in pngs:
            img = mpimg.imread(str(p))  # (H, W, 3 or 4) floats in [0, 1]
            ev.add(image(p.stem, img[..., :3], dataformats="HWC"), 0)
        if md:
            ev.add(text("report", md), 0)
    finally:
        ev.close()


def _report_wandb(report_dir: Path, pngs: list, text: str, group) -> None:
    import wandb

    mode, why = wandb_mode()
    if why:
        warn(f"tracker wandb: {why}")
    run = wandb.init(project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT, dir=str(report_dir),
                     name=report_dir.name, group=group, job_type="fit", mode=mode, reinit="create_new",
                     settings=wandb.Settings(console="off", silent=True, init_timeout=WANDB_INIT_TIMEOUT_S))
    try:
        run.log({f"report/{p.stem}": wandb.Image(str(p)) for p in pngs}, step=0)
        fits = report_dir / "fits.json"
        if fits.exists():
            run.summary["fits"] = json.loads(fits.read_text())
    finally:
        run.finish()


_LOG_REPORT = {"tensorboard": _report_tb, "wandb": _report_wandb}

__all__ = ["NAMES", "TB_DIR", "WANDB_DIR", "STEPS_FILE", "WANDB_RUN_FILE", "Trackers", "open_trackers", "log_report",
           "metric_name", "scalars", "sweep_group", "wandb_mode", "flat_hparams"]
