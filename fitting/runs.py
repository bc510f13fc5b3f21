"""Read training runs (config.json + metrics.jsonl) and CSV tables into the points each law fits.

    from flopscale.fitting.runs import load_runs, run_points, read_csv
    runs = load_runs(["sweeps/cpu-small"])          # every run dir found below, recursively
    pts = run_points(runs, point="best")            # columns N, D, C, S, B, loss (one row per run)
    cols = read_csv("points.csv")                   # columns as written in the header

Per-run point (one row per run, `run_points`), the choices and why:
- loss: validation loss (nats/token) at the run's best evaluation (point="best", the paper's early
  stopping, which keeps overfitting out of L(N) and L(N,D)), or its last one (point="final"). A run
  that never evaluated falls back to its mean train loss over the last 5% of logged steps.
- N: config["N"], the non-embedding parameters the engine counted (required: a config.json
  without it is an error naming the file, never a count recomputed here from the model shape).
- S: the step of that evaluation; C: cumulative model FLOPs at that step, non-embedding (`flops`,
  the paper's C, compute="nonembedding") or all rows (`flops_total`, compute="all").
- B: tokens per optimizer step, tokens / step at that point (batch_size * n_ctx for a fixed batch).
- D: unique training tokens seen, min(tokens, data.n_train_tokens): the dataset size for multi-epoch
  runs (Kaplan's D in L(D), L(N,D)), the tokens trained on for single-epoch runs (Chinchilla's D).
  With tokens_seen=True (the data-constrained law and isoFLOP slices): D is the tokens trained on
  and U = min(D, data.n_train_tokens), the unique tokens (a `--max-tokens` cap, or the corpus).

Which rows each law gets from runs (`law_points`): `n` takes, per distinct N, the lowest loss over
runs (the best-trained model of that size approximates the converged L(N)); `d` likewise per
distinct D; `nd` and `chinchilla` every run; `c` the compute frontier (frontier.py); `ns` every
evaluation past the first 20% of each run (learning curves, S converted to S_min when B_crit is
known); `bcrit` the logged gradient noise scale or (S, E) pairs (batch.py).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from .estimator import FitError, NonNumericColumn

COLUMNS = ("N", "D", "C", "S", "B", "loss")


@dataclass
class Run:
    path: str
    config: dict
    N: float
    n_ctx: int
    n_train_tokens: Optional[float]  # None: unbounded (a stream, or not recorded)
    step: np.ndarray          # (T,) every logged row
    tokens: np.ndarray
    flops: np.ndarray         # cumulative non-embedding model FLOPs
    flops_total: np.ndarray   # cumulative FLOPs of all rows; NaN where not logged
    train_loss: np.ndarray    # NaN where not logged
    val_loss: np.ndarray      # NaN where not evaluated
    gns: np.ndarray           # gradient noise scale in tokens, NaN where not estimated
    lr: np.ndarray            # the learning rate of each logged row, NaN where not logged
    val_other: Dict[str, np.ndarray] = field(default_factory=dict)  # NAME -> val_loss_NAME (--eval-data)

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.path))

    @property
    def batch_tokens(self) -> float:
        """Tokens per optimizer step (the paper's B), from the log; exact for a fixed batch."""
        ok = self.step > 0
        if ok.any():
            return float(np.median(self.tokens[ok] / self.step[ok]))
        tr = self.config.get("train", {})
        return float(tr.get("batch_size", 1) * self.n_ctx)

    def unique_tokens(self, tokens):
        return np.minimum(tokens, self.n_train_tokens) if self.n_train_tokens else tokens

    def compute(self, kind: str = "nonembedding") -> np.ndarray:
        """Cumulative C per logged row: "nonembedding" (`flops`) or "all" (`flops_total`)."""
        if kind == "nonembedding":
            return self.flops
        if kind == "all":
            return self.flops_total
        raise FitError(f"compute must be 'nonembedding' or 'all', got {kind!r}")


def find_run_dirs(paths: Sequence[str]) -> List[str]:
    """Run directories (holding config.json and metrics.jsonl) at or below each path, sorted."""
    found = []
    for p in paths:
        if not os.path.exists(p):
            raise FitError(f"no such file or directory: {p}")
        if not os.path.isdir(p):
            raise FitError(f"{p} is not a directory (pass run or sweep directories, or --csv FILE)")
        hits = []
        for root, dirs, files in os.walk(p):
            dirs.sort()
            if "config.json" in files and "metrics.jsonl" in files:
                hits.append(root)
        if not hits:
            raise FitError(f"no run directories (config.json + metrics.jsonl) under {p}")
        found += hits
    return sorted(set(found))


def load_run(path: str) -> Run:
    cfg_path = os.path.join(path, "config.json")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise FitError(f"{cfg_path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    model = cfg.get("model", {}) or {}
    if "N" not in cfg:
        raise FitError(f"{cfg_path}: no 'N' (non-embedding parameters, written by `flopscale train`)")
    try:
        N = float(cfg["N"])
    except (TypeError, ValueError):
        raise FitError(f"{cfg_path}: 'N' is {cfg['N']!r}, not a number") from None
    if not (math.isfinite(N) and N > 0):
        raise FitError(f"{cfg_path}: 'N' must be a positive number, got {cfg['N']!r}")
    n_ctx = int(model.get("n_ctx", 1024))
    data = cfg.get("data", {}) or {}
    n_train = data.get("n_train_tokens") or (cfg.get("train", {}) or {}).get("max_tokens")

    rows = []
    m_path = os.path.join(path, "metrics.jsonl")
    with open(m_path) as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                # a run killed mid-write leaves a torn last line; anything else is corruption
                if f.read().strip() == "":
                    break
                raise FitError(f"{m_path}:{i}: not valid JSON ({e.msg})") from None
    if not rows:
        raise FitError(f"{m_path}: no logged steps")
    _check_steps(rows, m_path)

    def col(key, required=False):
        vals = [r.get(key) for r in rows]
        if required and any(v is None for v in vals):
            raise FitError(f"{m_path}: rows without {key!r}")
        return np.array([np.nan if v is None else float(v) for v in vals])

    gns = col("grad_noise_scale")
    # The paper's B_noise is in tokens. A trainer that logs it per sequence says so in its config.
    if (cfg.get("train", {}) or {}).get("grad_noise_scale_unit") == "sequences":
        gns = gns * n_ctx
    return Run(path=path, config=cfg, N=N, n_ctx=n_ctx,
               n_train_tokens=float(n_train) if n_train else None,
               step=col("step", True), tokens=col("tokens", True), flops=col("flops", True),
               flops_total=col("flops_total"),
               train_loss=col("train_loss"), val_loss=col("val_loss"), gns=gns, lr=col("lr"),
               val_other={k[len("val_loss_"):]: col(k)
                          for k in sorted({k for r in rows for k in r if k.startswith("val_loss_")})})


def _check_steps(rows, m_path: str) -> None:
    """One row per logged step, steps strictly increasing: a duplicated or backwards step means the
    log was appended to by a restart (or merged from two runs), and fitting it would count points twice."""
    prev = None
    for i, r in enumerate(rows, 1):
        s = r.get("step")
        if s is None:
            continue  # "rows without 'step'" is reported by the column reader
        try:
            s = float(s)
        except (TypeError, ValueError):
            raise FitError(f"{m_path}: row {i} has step {r.get('step')!r}, not a number") from None
        if prev is not None and not s > prev:
            what = "duplicated" if s == prev else "non-increasing"
            raise FitError(f"{m_path}: {what} step {s:g} at row {i} (after step {prev:g}); the run's log is "
                           f"corrupt (a restart appended to it?), refusing to fit it")
        prev = s


def load_runs(paths: Sequence[str]) -> List[Run]:
    return [load_run(p) for p in find_run_dirs(paths)]


def run_point(run: Run, point: str = "best", compute: str = "nonembedding",
              tokens_seen: bool = False) -> Dict[str, float]:
    """One run's (N, D, C, S, B, U, loss) row; see the module docstring for the choices."""
    ev = np.flatnonzero(np.isfinite(run.val_loss))
    if ev.size:
        i = int(ev[np.argmin(run.val_loss[ev])]) if point == "best" else int(ev[-1])
        loss = float(run.val_loss[i])
    else:
        tr = np.flatnonzero(np.isfinite(run.train_loss))
        if not tr.size:
            raise FitError(f"{run.path}: no val_loss or train_loss logged")
        tail = tr[-max(1, len(tr) // 20):]
        i = int(tail[-1])
        loss = float(np.mean(run.train_loss[tail]))
    C = float(run.compute(compute)[i])
    if not math.isfinite(C):
        raise FitError(f"{run.path}: no {'flops_total' if compute == 'all' else 'flops'} logged at step "
                       f"{int(run.step[i])} (--compute {compute})")
    U = float(run.unique_tokens(run.tokens[i]))
    return {"N": run.N, "D": float(run.tokens[i]) if tokens_seen else U, "C": C,
            "S": float(run.step[i]), "B": run.batch_tokens, "U": U, "loss": loss}


def run_points(runs: Sequence[Run], point: str = "best", compute: str = "nonembedding",
               tokens_seen: bool = False) -> Dict[str, np.ndarray]:
    rows = [run_point(r, point, compute, tokens_seen) for r in runs]
    keys = COLUMNS + (("U",) if tokens_seen else ())
    return {k: np.array([r[k] for r in rows]) for k in keys}


def best_per(pts: Dict[str, np.ndarray], key: str) -> Dict[str, np.ndarray]:
    """For each distinct value of `key`, the row with the lowest loss."""
    keep = []
    for v in np.unique(pts[key]):
        idx = np.flatnonzero(pts[key] == v)
        keep.append(idx[np.argmin(pts["loss"][idx])])
    keep = np.array(sorted(keep))
    return {k: v[keep] for k, v in pts.items()}


def curve_points(runs: Sequence[Run], skip_frac: float = 0.2) -> Dict[str, np.ndarray]:
    """Every validation evaluation past the first skip_frac of each run: N, S, B, C, D, loss."""
    out = {k: [] for k in COLUMNS}
    for r in runs:
        ev = np.flatnonzero(np.isfinite(r.val_loss) & (r.step > skip_frac * np.nanmax(r.step)) & (r.step > 0))
        for i in ev:
            for k, v in (("N", r.N), ("D", r.unique_tokens(r.tokens[i])), ("C", r.flops[i]),
                         ("S", r.step[i]), ("B", r.batch_tokens), ("loss", r.val_loss[i])):
                out[k].append(float(v))
    return {k: np.array(v) for k, v in out.items()}


def read_csv(path: str) -> Dict[str, object]:
    """Columns of a CSV with a header row. A column holding anything that is not a number (names,
    notes) becomes a NonNumericColumn: ignored unless a law needs it, then its first bad value is
    the error (file, line, column)."""
    if not os.path.exists(path):
        raise FitError(f"no such file: {path}")
    # utf-8-sig: a spreadsheet's UTF-8 export starts with a byte-order mark, which would otherwise
    # become part of the first column's name ("\ufeffN", then "missing N")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise FitError(f"{path}: empty file") from None
            rows = [r for r in reader if any(c.strip() for c in r)]
    except UnicodeDecodeError as e:
        raise FitError(f"{path}: not UTF-8 text (byte {e.start}); save the table as UTF-8 CSV") from None
    except IsADirectoryError:
        raise FitError(f"{path}: is a directory, not a CSV file") from None
    if not rows:
        raise FitError(f"{path}: header but no rows")
    cols: Dict[str, list] = {h: [] for h in header}
    raw: Dict[str, list] = {h: [] for h in header}
    bad: Dict[str, str] = {}
    for ln, r in enumerate(rows, 2):
        if len(r) != len(header):
            raise FitError(f"{path}:{ln}: {len(r)} fields, header has {len(header)}")
        for h, v in zip(header, r):
            v = v.strip()
            raw[h].append(v)
            try:
                cols[h].append(float(v) if v else math.nan)
            except ValueError:
                bad.setdefault(h, f"{path}:{ln}: column {h!r} value {v!r} is not a number")
                cols[h].append(math.nan)
    return {h: (NonNumericColumn(bad[h], len(v), raw[h]) if h in bad else np.array(v)) for h, v in cols.items()}


def smooth(v: np.ndarray, frac: float = 0.02) -> np.ndarray:
    """Centred moving average over ~frac of the points (window shrinks at the ends).

    Centred rather than an EMA: an EMA lags, so on a falling loss curve it reads high at every
    step and would bias B_crit(L) and the frontier toward higher loss.
    """
    v = np.asarray(v, float)
    h = int(frac * len(v) / 2)
    if h < 1:
        return v.copy()
    c = np.concatenate([[0.0], np.cumsum(v)])
    i = np.arange(len(v))
    lo, hi = np.maximum(0, i - h), np.minimum(len(v), i + h + 1)
    return (c[hi] - c[lo]) / (hi - lo)
