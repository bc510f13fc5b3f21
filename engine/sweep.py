"""Scaling study: run a preset's grid of training runs (resumable), then the fits, plots and report.

    flopscale sweep --preset cpu-tiny --out sweeps/cpu-tiny        # the README's main job, ~5 min on 2 CPU cores
    flopscale sweep --preset cpu-tiny --out sweeps/cpu-tiny        # again: finished runs are skipped, a killed one resumes
    flopscale sweep --preset h100 --out sweeps/h100 --dry-run      # the grid and its FLOP-ledger time estimate
    flopscale sweep --preset cpu-smoke --out sweeps/smoke --executor local --workers 2   # two runs at a time
    flopscale sweep --preset h100 --out sweeps/h100 --executor local --data /data/owt    # one run per GPU
    flopscale sweep --preset h100 --out sweeps/h100 --executor slurm --slurm-partition gpu --slurm-time 4:00:00 \
        --slurm-gpus-per-task 1 --no-wait                          # a job array; the same command again collects
    torchrun --nproc-per-node 8 -m flopscale.cli sweep --preset h100 --out sweeps/h100 --data /data/owt   # DDP per run

The presets (what to run) are data in ``engine/presets.py``; this module runs them.  SWEEP_DIR
holds ``sweep.json`` (the manifest: preset, grid, every run's config, status and final numbers),
``runs/<name>/`` (one ``flopscale train`` run directory each) and ``report/`` (``fits.json``, one
PNG per fitted law plus ``frontier.png``, and ``report.md``), written by
``flopscale.fitting.fit_and_report``, the function behind ``flopscale fit SWEEP_DIR/runs --out
SWEEP_DIR/report``.  Runs are ordered cheapest first so that a killed sweep has already finished
the most runs.

Resuming: a run whose checkpoint reached its last step is skipped; an interrupted one is resumed
by the Trainer from its last checkpoint (bit for bit on CPU); a run directory whose config differs
from the preset's is refused with one line (use another --out).

Executors (engine/executors.py): ``inline`` runs the grid one run after another in this process;
``local`` runs it on K spawned worker processes pinned to their GPUs or cores (a run asking for
several GPUs, ``--gpus-per-run``, through torchrun); ``slurm`` submits it as a submitit job array
and follows it (``--no-wait``: submit and return; the same command again collects what finished,
follows what is queued or running and submits only what is missing).  The overall bar follows the
runs' metrics files; sweep.json records each run's ``executor``, ``job_id``, ``node``, ``start``
and ``end``; the fit runs once the grid is complete.  Every executor trains a run by the same
function with the same thread count, so the runs are bit for bit those of an inline sweep on CPU.
A SIGTERM or SIGINT to the sweep reaches its running runs, which checkpoint after their step; the
sweep exits with 128 + the signal and the same command resumes.

Under torchrun (inline only) every rank runs the same grid in the same order and each run is DDP
over all ranks; rank 0 alone writes the manifest and the report.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

from flopscale.fileio import atomic_write_json

from . import flops as fl
from . import rundir
from .rundir import TrainError
from .config import ConfigError, ModelConfig, TrainConfig, add_config_arguments, config_values
from .dist import broadcast_object, init_distributed
from .executors import EXECUTORS, Executor, RunTask, SlurmOptions, full_corpus, local_slots, make_executor
from .presets import PRESETS, SweepPreset, get_preset

# ---------------------------------------------------------------------------------------------
# Cost model (the FLOP ledger's exact per-step counts, not 6ND)
# ---------------------------------------------------------------------------------------------
def run_flops(mc: ModelConfig, tc: TrainConfig, from_step: int = 0) -> dict:
    """{"nonembedding", "all"} model-view FLOPs of a whole run, from ``expected_rows`` per
    micro-batch times the micro-batches, plus the optimizer (flops.optimizer_flops).  ``from_step``:
    a cooldown branch's start; only the steps after it are counted (the rest are its parent's)."""
    mb = tc.batch_size // tc.grad_accum
    rows = fl.expected_rows(mc, mb, mc.n_ctx, "model")
    per_micro_ne = sum(rows[r][0] + rows[r][1] for r in fl.NONEMBEDDING_ROWS)
    per_micro_all = sum(f + b for f, b in rows.values())
    # AdamW over every parameter (blocks, tied embeddings, LayerNorms, biases), counted on the
    # model itself, built on the meta device (no memory, no init cost), by the Trainer's code.
    import torch

    from .model import make_model
    from .train import optimizer_step_flops

    with torch.device("meta"):
        opt = optimizer_step_flops(make_model(mc, loss_impl=tc.loss_impl), tc)
    steps = tc.steps - from_step
    k = steps * tc.grad_accum
    return {"nonembedding": per_micro_ne * k, "all": per_micro_all * k + opt * steps}


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------
def _run_status(run_dir: Path, steps: int) -> str:
    """"done" | "partial" | "pending", from the files alone: done when every final file is
    (rundir.is_complete: metrics at the last step, flops.json written at it, the checkpoint);
    otherwise the Trainer resumes it, or repairs what a kill after its last step left."""
    if rundir.is_complete(run_dir, steps):
        return "done"
    return "partial" if (run_dir / rundir.CONFIG).exists() else "pending"


def run_dirs(out: Path, names) -> dict:
    """{name: out/runs/name}: every name one path component (rundir.check_run_name), every
    path inside out/runs (a preset's variant named "../../x" must not train elsewhere)."""
    runs = Path(os.path.normpath(out / "runs"))
    dirs = {}
    for name in names:
        rundir.check_run_name(name)
        d = Path(os.path.normpath(runs / name))
        if d.parent != runs:
            raise TrainError(f"run {name!r} would train in {d}, outside {runs}")
        dirs[name] = d
    return dirs


def _summary(run_dir: Path) -> dict:
    """Final numbers of a finished run: last row, best (early-stopped) val loss, noise scale."""
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    evals = [r for r in rows if r.get("val_loss") is not None]
    best = min(evals, key=lambda r: r["val_loss"]) if evals else None
    last = rows[-1]
    gns = [r["grad_noise_scale"] for r in rows if r.get("grad_noise_scale")]
    return {"step": last["step"], "tokens": last["tokens"], "flops": last["flops"], "flops_total": last["flops_total"],
            "final_val_loss": evals[-1]["val_loss"] if evals else None,
            "best_val_loss": best["val_loss"] if best else None, "best_step": best["step"] if best else None,
            "grad_noise_scale_tokens": gns[-1] if gns else None,
            "tokens_per_s_median": sorted(r["tokens_per_s"] for r in rows)[len(rows) // 2]}


def _check_sweep_dir(out: Path, preset: SweepPreset) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"sweep directory {out} exists and is not a directory")
    man = out / "sweep.json"
    if man.exists():
        try:
            old = json.loads(man.read_text())
        except json.JSONDecodeError:
            raise ConfigError(f"{man} is corrupt; move {out} aside or use another --out") from None
        if old.get("preset") != preset.name:
            raise ConfigError(f"{out} holds a sweep of preset {old.get('preset')!r}, not {preset.name!r}; "
                              "use another --out")
    elif out.is_dir() and any(p for p in out.iterdir() if p.name not in ("runs", "report", "slurm")):
        raise ConfigError(f"{out} is not empty and holds no sweep.json; use a new or empty --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create sweep directory {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"sweep directory {out} is not writable")


def _write_manifest(out: Path, preset: SweepPreset, entries: List[dict], extra: dict) -> None:
    rec = {"preset": preset.name, "description": preset.description, "note": preset.note,
           "code_version": rundir.code_version(), "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "grid": {"models": [m if isinstance(m, dict) else list(m) for m in preset.models], "n_ctx": preset.n_ctx, "tokens_per_run": preset.tokens,
                    "max_tokens": preset.max_tokens, "batch_sizes": preset.batch_sizes or [preset.train["batch_size"]],
                    "budgets": preset.budgets, "fixed_tokens": preset.fixed_tokens, "ladder": preset.ladder},
           "report_dir": "report", "runs": entries, **extra}
    atomic_write_json(out / "sweep.json", rec)


class _Follower:
    """Each run's cumulative FLOPs from the tail of its metrics.jsonl (what the workers write), so
    the sweep's bar moves while runs train in other processes or on other nodes."""

    def __init__(self):
        self.pos: dict = {}
        self.flops: dict = {}

    def read(self, run_dir: Path) -> int:
        m = run_dir / rundir.METRICS
        try:
            size = m.stat().st_size
        except OSError:
            return self.flops.get(run_dir, 0)
        pos = self.pos.get(run_dir, 0)
        if size < pos:  # truncated on resume: read again from the top
            pos, self.flops[run_dir] = 0, 0
        if size > pos:
            with open(m, "rb") as f:
                f.seek(pos)
                chunk = f.read(size - pos)
            end = chunk.rfind(b"\n") + 1  # complete lines only
            for ln in chunk[:end].splitlines():
                try:
                    self.flops[run_dir] = int(json.loads(ln)["flops_total"])
                except (ValueError, KeyError, TypeError):
                    pass
            self.pos[run_dir] = pos + end
        return self.flops.get(run_dir, 0)


def _read_manifest(out: Path) -> dict:
    try:
        return json.loads((out / "sweep.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


EXEC_FIELDS = ("executor", "job_id", "node", "start", "end")


def run_grid(preset: SweepPreset, out: str | Path, overrides: Optional[dict] = None, progress: bool = True,
             fit: bool = True, n_boot: Optional[int] = None, threads: Optional[int] = None, executor: str = "inline",
             workers: Optional[int] = None, gpus_per_run: int = 1, slurm: Optional[SlurmOptions] = None,
             wait: bool = True) -> dict:
    """Run (or resume) every run of ``preset`` under ``out``/runs on ``executor`` (inline, local,
    slurm: engine/executors.py), then fit and report once the grid is complete.  Returns the
    manifest dict.  ``overrides``: TrainConfig fields applied to every run.  ``wait=False``
    (slurm): submit what is missing and return; the same call again collects."""
    out = Path(out).absolute()
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    specs, parent_of = _grid_specs(preset, out, overrides)
    # validate every config before any work (types, divisibility, unknown fields)
    cfgs = [(s, ModelConfig(**s["model"], n_vocab=257), TrainConfig.from_dict(s["train"])) for s in specs]
    device = cfgs[0][2].device
    rank, world, gpus = _placement(cfgs, device, executor, gpus_per_run)
    # One torch thread per CPU run unless asked otherwise: the same count under every executor,
    # so a run's losses do not depend on where it ran.
    threads = (threads or preset.cpu_threads or 1) if device == "cpu" else None
    if threads:
        import torch

        torch.set_num_threads(threads)
    slots = local_slots(device, workers, threads or 1, gpus_per_run) if executor == "local" else None
    world = world if executor == "inline" else 1  # other executors start their own processes
    grid = _Grid(preset, out, executor, lead=rank == 0, world=world, progress=progress)
    grid.check_dir()
    grid.load_data(cfgs[0][2], len(specs))
    grid.plan(cfgs)
    ex = grid.executor(slots, slurm, wait)
    grid.train(ex, grid.tasks(threads, gpus), parent_of, slots, gpus, threads)
    return grid.finish(fit, preset.n_boot if n_boot is None else n_boot, bool(overrides.get("tracker")))


def _grid_specs(preset: SweepPreset, out: Path, overrides: dict) -> tuple:
    """The preset's runs with the overrides applied, run names checked as path components, each
    cooldown branch pointed at its parent's run directory; and {branch: parent}."""
    specs = preset.runs()
    run_dirs(out, [s["name"] for s in specs])  # names that are paths: checked before anything is written
    for s in specs:
        s["train"] = dict(s["train"], **overrides)
        if s.get("branch_of"):  # a cooldown branch starts from its parent's run directory
            parent, step = s["branch_of"]
            s["train"]["init_from"] = f"{out / 'runs' / parent}@{step}"
    return specs, {s["name"]: s["branch_of"][0] for s in specs if s.get("branch_of")}


def _placement(cfgs: list, device: str, executor: str, gpus_per_run: int) -> tuple:
    """(rank, world, GPUs per run): this process's rank and the world each run is split over (a
    torchrun sweep's, or a run's own GPUs); under DDP a run whose batch does not split over the
    ranks and micro-batches accumulates nothing (``cfgs`` updated in place)."""
    rank, world, _ = init_distributed(device)
    if world > 1 and executor != "inline":
        raise ConfigError(f"--executor {executor} starts its own processes (torchrun for a run that asks for "
                          "several GPUs, --gpus-per-run); run the sweep itself without torchrun")
    if gpus_per_run < 1:
        raise ConfigError(f"--gpus-per-run must be at least 1, got {gpus_per_run}")
    gpus = gpus_per_run if device.startswith("cuda") else 0
    if gpus > 1:
        world = gpus  # each run is DDP over its GPUs (torchrun)
    if world > 1:
        # Under DDP the ranks split each batch; where batch_size / (grad_accum x world) is not
        # whole, accumulate nothing (the ranks' own and the all-reduced gradients still give the
        # noise scale its two batch sizes).
        for i, (s, mc, tc) in enumerate(cfgs):
            if tc.batch_size % (tc.grad_accum * world):
                s["train"]["grad_accum"] = 1
                cfgs[i] = (s, mc, TrainConfig.from_dict(s["train"]))
            if cfgs[i][2].batch_size % world:
                raise ConfigError(f"run {s['name']}: batch_size {tc.batch_size} is not divisible by the "
                                  f"world size {world}")
    return rank, world, gpus


class _Grid:
    """One invocation of a sweep, step by step (run_grid): the directory check, the data, the
    plan (runs cheapest first, their status, the manifest's entries), the executor, the training
    with its progress bar and manifest updates, and the fit once every run is done."""

    def __init__(self, preset: SweepPreset, out: Path, executor: str, lead: bool, world: int, progress: bool):
        self.preset, self.out, self.executor_name = preset, out, executor
        self.lead, self.world, self.progress = lead, world, progress
        self.t_start = time.perf_counter()
        self.timing: dict = {}
        self.failed: List[str] = []

    def check_dir(self) -> None:
        """Rank 0 checks SWEEP_DIR against the preset; every rank stops on its one-line error."""
        err = None
        if self.lead:
            try:
                _check_sweep_dir(self.out, self.preset)
            except ConfigError as e:
                err = str(e)
        err = broadcast_object(err, self.world)
        if err:
            raise ConfigError(err)

    def load_data(self, tc0: TrainConfig, n_runs: int) -> None:
        """One corpus load (BPE training and tokenization happen once, then the cache) that every
        run's D cap slices; workers elsewhere read the cache this fills.  Rank 0 first."""
        self.t_start = time.perf_counter()
        if self.lead:
            say(f"sweep {self.preset.name}: {n_runs} runs -> {self.out} ({self.executor_name}); "
                f"loading data {tc0.data!r} ({tc0.tokenizer})", self.progress)
            self.full = full_corpus(tc0.to_dict())
        broadcast_object(None, self.world)  # rank 0 has filled the token cache
        if not self.lead:
            self.full = full_corpus(tc0.to_dict())
        self.timing["data"] = round(time.perf_counter() - self.t_start, 1)

    def plan(self, cfgs: list) -> None:
        """Each run's cost with the real vocabulary (cheapest first), its status on disk and its
        manifest entry (a finished run keeps where and when it ran)."""
        jobs = []
        for s, mc, tc in cfgs:
            mc = ModelConfig(**s["model"], n_vocab=self.full.vocab_size)
            jobs.append((s, mc, tc, run_flops(mc, tc, from_step=(s.get("branch_of") or [None, 0])[1])))
        jobs.sort(key=lambda j: j[3]["all"])
        self.jobs = jobs
        n_train = self.full.n_train_tokens
        if self.lead and self.preset.tokens > n_train and all(t.max_tokens is None for _, _, t, _ in jobs):
            say(f"warning: {self.preset.tokens:,} tokens per run repeat this corpus's {n_train:,} training tokens "
                f"{self.preset.tokens / n_train:.1f}x; pass --data with a larger corpus for single-epoch runs", True)
        status = {}
        if self.lead:
            status = {s["name"]: _run_status(self.out / "runs" / s["name"], tc.steps) for s, _, tc, _ in jobs}
        self.status = status = broadcast_object(status, self.world)
        n_done = sum(1 for v in status.values() if v == "done")
        if self.lead and n_done:
            say(f"resuming: {n_done} of {len(jobs)} runs already finished"
                + (f", {sum(1 for v in status.values() if v == 'partial')} interrupted" if 'partial' in status.values() else ""),
                self.progress)
        old = {r["name"]: r for r in _read_manifest(self.out).get("runs", [])} if self.lead else {}
        self.entries, self.by_name = [], {}
        for s, mc, tc, cost in jobs:
            ent = {"name": s["name"], "dir": f"runs/{s['name']}", "model": mc.to_dict(), "train": tc.to_dict(),
                   "N": mc.N, "expected_flops": cost, "status": "pending"}
            prev = old.get(s["name"], {})
            ent.update({k: prev[k] for k in EXEC_FIELDS if k in prev})
            self.entries.append(ent)
            self.by_name[s["name"]] = ent
        self.cost_of = {s["name"]: cost["all"] for s, mc, tc, cost in jobs}

    def write(self, extra: Optional[dict] = None) -> None:
        if self.lead:
            _write_manifest(self.out, self.preset, self.entries,
                            extra or {"executor": self.executor_name, "timing_s": self.timing})

    def executor(self, slots, slurm: Optional[SlurmOptions], wait: bool) -> Executor:
        """The executor (engine/executors.py: make_executor); the runs already done are marked so
        in the manifest (on SLURM, with where and when they ran if they finished since --no-wait)."""
        name, self.wait = self.executor_name, wait
        if name == "inline":
            ex = make_executor(name, progress=self.progress)
        elif name == "local":
            ex = make_executor(name, slots=slots)
        else:
            ex = make_executor(name, folder=self.out / "slurm", opts=slurm or SlurmOptions(),
                               job_name=f"flopscale-{self.preset.name}", wait=wait,
                               known={n: e["job_id"] for n, e in self.by_name.items()
                                      if self.status[n] != "done" and e.get("executor") == "slurm" and e.get("job_id")})
        for ent in self.entries:
            if self.status[ent["name"]] != "done":
                continue
            ent["status"] = "done"
            if self.lead:
                ent["final"] = _summary(self.out / ent["dir"])
                if name == "slurm" and ent.get("job_id") and not ent.get("end"):
                    got = (ex.collect_finished(ent["job_id"]) or {}).get(ent["name"])  # finished since --no-wait
                    ent.update({k: got[k] for k in EXEC_FIELDS if got and k in got})
        self.write()
        return ex

    def tasks(self, threads: Optional[int], gpus: int) -> List[RunTask]:
        """The runs still to train; in parallel costliest first, so the longest does not start last."""
        tasks = [RunTask(name=s["name"], run_dir=str(self.out / "runs" / s["name"]), model=mc.to_dict(),
                         train=tc.to_dict(), threads=threads, gpus=gpus)
                 for s, mc, tc, cost in self.jobs if self.status[s["name"]] != "done"]
        if self.executor_name != "inline":
            tasks.reverse()
        return tasks

    # -- training, with the overall bar and the manifest kept current -------------------------------
    def on_start(self, t: RunTask, info: dict) -> None:
        ent = self.by_name[t.name]
        for k in ("node", "start", "end", "error"):
            ent.pop(k, None)
        info = dict(info)
        state = info.pop("state")  # queued | running | submitted
        ent.update(info, status=state)
        if self.executor_name == "inline":
            self.bar.set_postfix_str(f"run {t.name} (N={ent['N']:,})")
        self.write()

    def on_done(self, t: RunTask, info: dict) -> None:
        ent = self.by_name[t.name]
        ent.update({k: v for k, v in info.items() if k in EXEC_FIELDS or k == "error"})
        steps = ent["train"]["steps"]
        if "error" not in info and self.lead and _run_status(Path(t.run_dir), steps) != "done":
            ent["error"] = "the task ended before the run finished"
        if "error" in ent:
            ent["status"] = "failed"
            self.failed.append(f"{t.name}: {ent['error']}")
            say(f"run {t.name} failed: {ent['error']}", True)
        else:
            ent["status"] = "done"
            if self.lead:
                ent["final"] = _summary(Path(t.run_dir))
            self.finished_flops += self.cost_of[t.name]
        self.follower.flops.pop(Path(t.run_dir), None)
        self.tick()
        self.write()

    def tick(self) -> None:
        running = [e for e in self.entries if e["status"] in ("running", "queued", "submitted")]
        now = self.finished_flops + sum(min(self.follower.read(self.out / e["dir"]), self.cost_of[e["name"]])
                                        for e in running)
        self.bar.update(max(0, now - self.bar.n))

    def train(self, ex: Executor, tasks: List[RunTask], parent_of: dict, slots, gpus: int,
              threads: Optional[int]) -> None:
        """Train ``tasks`` on ``ex``: cooldown branches start from checkpoints their parents keep,
        so parents (and every other run) first, then the branches whose parent has finished (with
        --no-wait on SLURM, the rest are submitted by the same command once their parents are
        done).  A signal or an error leaves the manifest saying what to resume."""
        from tqdm import tqdm

        name, wait = self.executor_name, self.wait
        total = sum(self.cost_of.values())
        self.finished_flops = sum(c for n, c in self.cost_of.items() if self.status[n] == "done")
        # Overall progress in FLOPs (the ledger's exact per-run counts), so the ETA weighs big runs right.
        self.bar = tqdm(total=total, initial=self.finished_flops, unit="FLOP", unit_scale=True,
                        desc=f"sweep {self.preset.name}", disable=not (self.progress and self.lead and (wait or name != "slurm")),
                        position=0, dynamic_ncols=True, file=sys.stderr)
        self.follower = _Follower()
        t_train = time.perf_counter()
        if name != "inline" and tasks:
            where = (f"{len(slots)} local workers ({'GPUs ' + ' '.join(','.join(x['gpus']) for x in slots) if gpus else f'{threads} thread(s) each'})"
                     if name == "local" else "SLURM")
            say(f"{len(tasks)} runs on {where}", self.progress)
        try:
            first = [t for t in tasks if t.name not in parent_of]
            if first:
                ex.run(first, on_start=self.on_start, on_done=self.on_done, tick=self.tick)
            second = [t for t in tasks if t.name in parent_of and self.by_name[parent_of[t.name]]["status"] == "done"]
            if second:
                ex.run(second, on_start=self.on_start, on_done=self.on_done, tick=self.tick)
        finally:
            self.bar.close()
            self.timing["runs_this_invocation"] = round(time.perf_counter() - t_train, 1)
            for e in self.entries:  # stopped here (a signal, an error): resumed by the same command
                if e["status"] in ("running", "queued"):
                    e["status"] = "interrupted" if e["status"] == "running" else "pending"
            self.write()

    def finish(self, fit: bool, n_boot: int, tracked: bool) -> dict:
        """The manifest; once every run is done, the fit and report (and, with --tracker, the
        report's figures logged beside the runs)."""
        out = self.out
        man = _read_manifest(out) if self.lead else {}
        if self.lead and self.executor_name == "slurm" and not self.wait:
            waiting = [e for e in self.entries if e["status"] == "submitted"]
            man["waiting"] = len(waiting)
            if waiting:
                say(f"{len(waiting)} runs queued or running on SLURM (job ids {', '.join(sorted({e['job_id'] for e in waiting}))}); "
                    "run the same command again to collect them", True)
                return man
        if self.failed:
            raise TrainError(f"{len(self.failed)} of {len(self.jobs)} runs failed ({'; '.join(self.failed)}); "
                             "the others are kept; run the same command again to retry")
        if self.lead and all(e["status"] == "done" for e in self.entries):
            extra = {"executor": self.executor_name, "timing_s": self.timing}
            if fit:
                t0 = time.perf_counter()
                extra["fit"] = fit_sweep(out, n_boot=n_boot, progress=self.progress)
                if tracked:  # the report's figures beside the runs (engine/trackers.py)
                    from .trackers import log_report

                    log_report(self.jobs[0][2].trackers(), out / "report")
                self.timing["fit_report"] = round(time.perf_counter() - t0, 1)
            self.timing["total_this_invocation"] = round(time.perf_counter() - self.t_start, 1)
            self.write(extra)
            man = json.loads((out / "sweep.json").read_text())
        return man


def say(msg: str, enabled: bool = True) -> None:
    if enabled:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Fit and report: flopscale.fitting.fit_and_report on SWEEP_DIR/runs -> SWEEP_DIR/report
# ---------------------------------------------------------------------------------------------
def _lr_of_config(step: int, train: dict) -> float:
    """The trainer's lr at a step of a run's train config: the report's schedule curves and lr
    areas come from lr_at itself, every step (metrics.jsonl logs it only every log_every)."""
    from .schedule import lr_at

    return lr_at(step, TrainConfig.from_dict(train))


def fit_sweep(out: Path, n_boot: int = 200, progress: bool = True) -> dict:
    """Fit every law the runs support and write SWEEP_DIR/report (fits.json, PNGs, report.md).
    Returns a short summary (alpha_N with its interval, rmse, B_crit) for the manifest."""
    from flopscale import fitting
    from flopscale.planning import outlook_inputs

    report = out / "report"
    try:
        with warnings.catch_warnings():  # overflow in bootstrap resamples far from the optimum is expected
            warnings.simplefilter("ignore", RuntimeWarning)
            fits = fitting.fit_and_report([str(out / "runs")], out=str(report), n_boot=n_boot, quiet=True,
                                          lr_fn=_lr_of_config, outlook=outlook_inputs(str(out / "runs")))
    except fitting.FitError as e:  # the runs are kept; say how to fit again
        raise ValueError(f"the runs finished but the fit failed ({e}); "
                         f"retry with `flopscale fit {out / 'runs'} --out {report}`") from None
    by = {}
    for f in fits.get("fits", []):  # the first entry of a law (the default compute convention)
        by.setdefault(f.get("name", f["law"]), f)
    summ = {"report": "report/report.md", "fits_json": "report/fits.json"}
    n = by.get("n")
    if n:
        summ["alpha_N"] = n["params"]["alpha_N"]
        summ["alpha_N_ci95"] = n["ci95"]["alpha_N"]
        summ["N_c"] = n["params"]["N_c"]
        summ["rmse_log_N"] = n["rmse_log"]
    c = by.get("c")
    if c:
        summ["alpha_C"] = c["params"]["alpha_C"]
        summ["alpha_C_ci95"] = c["ci95"]["alpha_C"]
    b = by.get("bcrit")
    if b:
        summ["B_star"] = b["params"]["B_star"]
        summ["alpha_B"] = b["params"]["alpha_B"]
        summ["alpha_B_ci95"] = b["ci95"]["alpha_B"]
    return summ


def _ci(ci, fmt: str) -> str:
    """"95% CI [lo, hi]", or why there is none (--n-boot 0 fits no interval)."""
    if not ci or len(ci) != 2 or any(v is None for v in ci):
        return "no 95% CI: --n-boot 0"
    return f"95% CI [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def print_fit_summary(summ: dict, out: Path) -> None:
    lines = []
    if "alpha_N" in summ:
        lines.append(f"L(N):  alpha_N = {summ['alpha_N']:.4f}  ({_ci(summ['alpha_N_ci95'], '.4f')})   paper 0.076"
                     f"   rmse_log {summ['rmse_log_N']:.4f}")
    if "alpha_C" in summ:
        lines.append(f"L(C):  alpha_C = {summ['alpha_C']:.4f}  ({_ci(summ['alpha_C_ci95'], '.4f')})   paper 0.050 (C_min)")
    if "alpha_B" in summ:
        lines.append(f"B_crit(L): B_star = {summ['B_star']:.3g} tokens, alpha_B = {summ['alpha_B']:.3f} "
                     f"({_ci(summ['alpha_B_ci95'], '.3f')})   paper B_star 2e8 tokens, alpha_B 0.21")
    lines.append(f"report: {out / 'report' / 'report.md'}")
    print("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
# TrainConfig fields a sweep may override for every run (the grid's own fields, such as steps and
# batch_size, come from the preset).
OVERRIDABLE = ("data", "tokenizer", "data_format", "data_vocab", "text_column", "sampling", "device", "backend",
               "dtype", "cuda_attention", "cuda_ffn_backward", "triton_ffn_loads", "tracker")


def add_sweep_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    names = ", ".join(PRESETS)
    p.add_argument("--preset", type=str, required=True, help=f"grid to run: {names}, or a preset .json file")
    p.add_argument("--out", type=str, required=True, help="sweep directory (an existing one is resumed)")
    # Overrides of the preset's TrainConfig fields for every run, generated from the dataclass
    # (engine/config.py); unset flags keep the preset's values.
    add_config_arguments(p, TrainConfig, only=OVERRIDABLE, no_defaults=True,
                         titles={"data": "override the preset's data", "run": "override the preset's run settings",
                                 "kernels": "override the preset's kernel variants"})
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per run (default: the preset's, else 1), the same under every executor")
    p.add_argument("--n-boot", type=int, default=None,
                   help="bootstrap resamples for the fits' 95%% intervals (default: the preset's, 200 for most)")
    p.add_argument("--no-fit", action="store_true", help="run the grid only (fit later with `flopscale fit SWEEP_DIR/runs`)")
    p.add_argument("--dry-run", action="store_true", help="print the grid and its estimated FLOPs and wall time, run nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: the grid as JSON on stdout ({\"runs\": [...]})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("where the runs execute (engine/executors.py)")
    g.add_argument("--executor", choices=EXECUTORS, default="inline",
                   help="inline: one run after another in this process; local: --workers processes on this machine, "
                        "each pinned to its GPU(s) or cores; slurm: a submitit job array, one task per run")
    g.add_argument("--workers", type=int, default=None,
                   help="local: worker processes (default: GPUs / --gpus-per-run, or cores / --threads on CPU)")
    g.add_argument("--gpus-per-run", type=int, default=1,
                   help="GPUs per run on CUDA (more than 1: the run is launched through torchrun)")
    g.add_argument("--no-wait", action="store_true",
                   help="slurm: submit what is missing and return; the same command again collects what finished")
    g.add_argument("--slurm-partition", default=None, help="slurm: partition (default: the cluster's)")
    g.add_argument("--slurm-time", default=None, help="slurm: time limit per task, minutes or [D-]HH:MM[:SS] (default 60)")
    g.add_argument("--slurm-gpus-per-task", type=int, default=None, help="slurm: GPUs per task (default: --gpus-per-run on CUDA)")
    g.add_argument("--slurm-cpus-per-task", type=int, default=None, help="slurm: CPUs per task (default: --threads)")
    g.add_argument("--slurm-account", default=None, help="slurm: account to charge")
    g.add_argument("--slurm-runs-per-task", type=int, default=None, help="slurm: runs per array task, run one after another")
    g.add_argument("--slurm-array-parallelism", type=int, default=None, help="slurm: array tasks running at once, at most")
    g.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                   help="slurm: any other sbatch option, repeatable (--slurm-option qos=high --slurm-option mem=8G)")
    return p


def dry_run(preset: SweepPreset, overrides: dict, vocab: Optional[int] = None, as_json: bool = False) -> int:
    """Print the grid with the FLOP ledger's exact counts and a wall-time *estimate* at the
    preset's assumed sustained FLOP/s (an assumption, stated; not a measurement).  ``as_json``:
    one object on stdout, ``{"preset", "runs": [{"name", "N", "model", "train", "expected_flops",
    "estimated_min"}], "total_flops", "estimated_min", "assumed_flops_per_s"}``."""
    from .presets import _vocab

    vocab = vocab or _vocab(overrides.get("tokenizer") or preset.train.get("tokenizer", "bpe-4096"))
    rows, runs, tot = [], [], 0
    for s in preset.runs():
        tr = dict(s["train"], **{k: v for k, v in overrides.items() if v is not None})
        mc, tc = ModelConfig(**s["model"], n_vocab=vocab), TrainConfig.from_dict(tr)
        c = run_flops(mc, tc, from_step=(s.get("branch_of") or [None, 0])[1])
        tot += c["all"]
        est = c["all"] / preset.assumed_flops_per_s / 60
        runs.append({"name": s["name"], "N": mc.N, "model": mc.to_dict(), "train": tc.to_dict(),
                     "tokens_per_step": tc.batch_size * mc.n_ctx, "expected_flops": c, "estimated_min": est,
                     "branch_of": s.get("branch_of")})
        rows.append(f"{s['name']:<22}{mc.N:>14,}{tc.steps:>8}{tc.batch_size * mc.n_ctx:>10,}"
                    f"{c['nonembedding']:>14.3g}{c['all']:>14.3g}{est:>10.1f}")
    if as_json:
        print(json.dumps({"preset": preset.name, "description": preset.description, "vocab": vocab, "runs": runs,
                          "total_flops": tot, "estimated_min": tot / preset.assumed_flops_per_s / 60,
                          "assumed_flops_per_s": preset.assumed_flops_per_s}, indent=1))
        return 0
    print(f"preset {preset.name}: {preset.description}\n{preset.note}")
    print(f"{'run':<22}{'N':>14}{'steps':>8}{'tok/step':>10}{'C (non-emb)':>14}{'C (all)':>14}{'est. min':>10}")
    print("\n".join(rows))
    print(f"total {tot:.3g} FLOPs (model view, vocab {vocab}); estimated {tot / preset.assumed_flops_per_s / 60:.1f} min "
          f"at an assumed {preset.assumed_flops_per_s / 1e12:.3g} TFLOP/s sustained (an estimate, not a measurement; "
          "evals, checkpoints and data loading excluded)")
    return 0


def parse_slurm_time(text: str) -> int:
    """Minutes from ``M``, ``HH:MM[:SS]`` or ``D-HH:MM[:SS]`` (sbatch's forms; seconds round up)."""
    t = str(text).strip()
    try:
        days = 0
        if "-" in t:
            d, t = t.split("-", 1)
            days = int(d)
        parts = [int(x) for x in t.split(":")]
        if len(parts) == 1:
            mins = parts[0]
        elif len(parts) in (2, 3):
            h, m, sec = (parts + [0])[:3]
            mins = h * 60 + m + (1 if sec else 0)
        else:
            raise ValueError
        mins += days * 1440
    except ValueError:
        raise ConfigError(f"--slurm-time: want minutes or [D-]HH:MM[:SS], got {text!r}") from None
    if mins < 1:
        raise ConfigError(f"--slurm-time must be at least a minute, got {text!r}")
    return mins


def slurm_options(args) -> SlurmOptions:
    extra = {}
    for kv in args.slurm_option:
        k, eq, v = kv.partition("=")
        k = k.strip().lstrip("-")
        if not k:
            raise ConfigError(f"--slurm-option: want KEY=VALUE (an sbatch option), got {kv!r}")
        extra[k] = v if eq else True
    for name in ("slurm_runs_per_task", "slurm_array_parallelism", "slurm_gpus_per_task", "slurm_cpus_per_task"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "slurm_gpus_per_task" else 1):
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {0 if 'gpus' in name else 1}, got {v}")
    d = SlurmOptions()
    return SlurmOptions(partition=args.slurm_partition,
                        time_min=parse_slurm_time(args.slurm_time) if args.slurm_time else d.time_min,
                        gpus_per_task=args.slurm_gpus_per_task, cpus_per_task=args.slurm_cpus_per_task,
                        account=args.slurm_account, runs_per_task=args.slurm_runs_per_task or d.runs_per_task,
                        array_parallelism=args.slurm_array_parallelism or d.array_parallelism, options=extra)


def run_sweep(args) -> int:
    """flopscale sweep: run a preset's grid (resumable), then fit and report."""
    from .train import RunInterrupted

    preset = get_preset(args.preset)
    n_boot = preset.n_boot if args.n_boot is None else args.n_boot
    if n_boot < 0:
        raise ConfigError(f"--n-boot must be >= 0, got {n_boot}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    if args.workers is not None and (args.executor != "local" or args.workers < 1):
        raise ConfigError("--workers takes a positive count, with --executor local")
    if args.no_wait and args.executor != "slurm":
        raise ConfigError("--no-wait needs --executor slurm")
    if args.json and not args.dry_run:
        raise ConfigError("--json goes with --dry-run (a finished sweep's record is SWEEP_DIR/sweep.json)")
    slurm_set = [a for a in vars(args) if a.startswith("slurm_") and getattr(args, a) not in (None, [])]
    if slurm_set and args.executor != "slurm":
        raise ConfigError(f"--{slurm_set[0].replace('_', '-')} needs --executor slurm")
    overrides = config_values(args, OVERRIDABLE)
    if args.dry_run:
        return dry_run(preset, overrides, as_json=args.json)
    out = Path(args.out)
    t0 = time.perf_counter()
    try:
        man = run_grid(preset, out, overrides, progress=not args.quiet, fit=not args.no_fit, n_boot=n_boot,
                       threads=args.threads, executor=args.executor, workers=args.workers,
                       gpus_per_run=args.gpus_per_run,
                       slurm=slurm_options(args) if args.executor == "slurm" else None, wait=not args.no_wait)
    except RunInterrupted as e:
        print(f"interrupted by {signal.Signals(e.signum).name}: running runs wrote a checkpoint, finished runs are "
              "kept; run the same command again to resume", file=sys.stderr)
        return 128 + e.signum
    if man:
        if man.get("waiting"):
            print(f"sweep {preset.name}: {man['waiting']} of {len(man['runs'])} runs submitted or running; "
                  f"run the same command again to collect them")
            return 0
        if "fit" in man:
            print_fit_summary(man["fit"], out)
        print(f"sweep {preset.name}: {len(man['runs'])} runs in {out}/runs, manifest {out}/sweep.json; "
              f"this invocation took {time.perf_counter() - t0:.0f} s")
    return 0
