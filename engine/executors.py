"""Where a sweep's runs execute: in this process, in K local worker processes, or as SLURM job
arrays.  Every executor trains a run by the same function, :func:`train_run`, so a run's losses
do not depend on where it ran (bit for bit on CPU at the same thread count).

    ex = make_executor("local", workers=2)                 # or "inline", or "slurm" (SlurmOptions)
    ex.run(tasks, on_start=..., on_done=..., tick=...)     # blocks until every task ended

- ``inline``: one run after another in this process (a shared corpus, the Trainer's own bar);
  under torchrun every rank runs the same grid and each run is DDP over all ranks.
- ``local``: ``concurrent.futures.ProcessPoolExecutor`` with spawned workers.  Each worker owns
  a slot: its GPUs (``CUDA_VISIBLE_DEVICES``) or its cores (``os.sched_setaffinity``, ``threads``
  cores per run).  A run asking for several GPUs is launched from its worker through
  ``torchrun --standalone`` on the slot's GPUs.
- ``slurm``: submitit.  One array task per run, or per group of small runs; partition, time
  limit, GPUs and CPUs per task, account and any sbatch option.  The task is checkpointable: on
  SIGTERM (preemption, or ``--signal=TERM@90`` before the time limit) the run finishes its step and
  writes its checkpoint, then submitit's handler requeues the task, which resumes bit for bit.

An executor reports through three callbacks: ``on_start(task, info)`` when a task is handed to a
worker or submitted (``info``: ``executor``, ``job_id``), ``on_done(task, info)`` when it ended
(adds ``node``, ``start``, ``end``, or ``error``: one line), and ``tick()`` while it waits (the
sweep follows the runs' metrics files from there).  A signal to the sweep (SIGTERM, SIGINT)
reaches the running tasks, which checkpoint; the sweep then exits non-zero (RunInterrupted).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .config import ConfigError, ModelConfig, TrainConfig, flag_name
from .rundir import TrainError

EXECUTORS = ("inline", "local", "slurm")


@dataclass
class RunTask:
    """One run of a sweep, everything a worker on any machine needs (picklable)."""

    name: str
    run_dir: str                  # absolute
    model: dict                   # ModelConfig fields
    train: dict                   # TrainConfig fields
    threads: Optional[int] = None  # torch CPU threads (None: torch's default)
    gpus: int = 0                 # GPUs the run uses (0 on CPU; > 1: torchrun)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


# ---------------------------------------------------------------------------------------------
# Training one run: the function every executor calls
# ---------------------------------------------------------------------------------------------
_CORPORA: Dict[tuple, object] = {}  # (data, tokenizer) -> the full corpus, once per process


def corpus_for(train: dict):
    """The run's corpus: the process's one load of (data, tokenizer, eval_data), its training
    tokens capped at max_tokens (what ``load_corpus(data, tokenizer, max_tokens, eval_corpora)``
    returns, without reloading: the other distributions evaluated, and held out of training)."""
    from .data import Corpus, load_corpus

    key = (train["data"], train["tokenizer"], TrainConfig.from_dict(train).eval_corpora())
    if key not in _CORPORA:
        _CORPORA[key] = load_corpus(key[0], key[1], None, key[2])
    full = _CORPORA[key]
    cap = train.get("max_tokens")
    tr = full.train if cap is None else full.train[:cap]
    prov = dict(full.provenance, n_train_tokens=int(tr.size))
    return Corpus(train=tr, val=full.val, vocab_size=full.vocab_size, provenance=prov, tokenizer=full.tokenizer,
                  evals=full.evals)


def train_command(task: RunTask) -> List[str]:
    """``flopscale train`` for the run, under torchrun on the task's GPUs (multi-GPU runs)."""
    mc, tc = ModelConfig.from_dict(task.model), TrainConfig.from_dict(task.train)
    args = []
    for cfg, skip in ((mc, ("n_vocab",)), (tc, ())):
        for f in type(cfg).__dataclass_fields__.values():
            v = getattr(cfg, f.name)
            if f.name in skip or v is None:
                continue
            if isinstance(v, bool):
                args += [flag_name(f)] if v else []
            else:
                args += [flag_name(f), str(v)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={task.gpus}",
            "-m", "flopscale.cli", "train", *args, "--out", task.run_dir, "--quiet"]


def train_run(task: RunTask, progress: bool = False, progress_position: int = 0, corpus=None) -> dict:
    """Train (or resume) one run here; returns {"node", "start", "end", "pid"}.  Raises
    RunInterrupted after a signal (the checkpoint is written), TrainError/ConfigError otherwise."""
    start = _now()
    if task.gpus > 1:
        _torchrun(task)
    else:
        import torch

        from .train import Trainer

        if task.threads and task.train.get("device", "cpu") == "cpu":
            torch.set_num_threads(task.threads)
        mc, tc = ModelConfig.from_dict(task.model), TrainConfig.from_dict(task.train)
        Trainer(mc, tc, task.run_dir, progress=progress, corpus=corpus or corpus_for(task.train),
                progress_position=progress_position).run()
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()  # SLURM's name for it, where it has one
    return {"node": node, "start": start, "end": _now(), "pid": os.getpid()}


def _torchrun(task: RunTask) -> None:
    """A multi-GPU run: torchrun's workers are this process's children; a signal here is passed
    on (torchrun forwards it to every rank, which agree on the step to stop at)."""
    from .train import RunInterrupted, StopOnSignal

    log = Path(task.run_dir, "torchrun.log")
    Path(task.run_dir).mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as lf, StopOnSignal() as stop:
        p = subprocess.Popen(train_command(task), stdout=lf, stderr=subprocess.STDOUT)
        sent = False
        while p.poll() is None:
            if stop.signum and not sent:
                p.send_signal(signal.SIGTERM)
                sent = True
            time.sleep(0.2)
    if stop.signum:
        raise RunInterrupted(stop.signum, -1, task.run_dir)
    if p.returncode:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("error:")]
        raise TrainError(tail[-1][len("error: "):] if tail else
                         f"torchrun exited with status {p.returncode}; see {log}")


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError):  # a full disk: "no space left on device writing PATH"
        from flopscale.fileio import os_error_line

        return os_error_line(e)
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[-1] if s else ''}" if not isinstance(e, (TrainError, ConfigError)) else s[0]


# ---------------------------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------------------------
class Executor:
    """Runs tasks; reports through on_start(task, info), on_done(task, info) and tick()."""

    name = "?"

    def run(self, tasks: List[RunTask], on_start: Callable, on_done: Callable, tick: Callable) -> None:
        raise NotImplementedError


class InlineExecutor(Executor):
    """One run after another in this process: the corpus is shared, errors stop the sweep."""

    name = "inline"

    def __init__(self, progress: bool = True, corpora: Optional[dict] = None):
        """``corpora``: {(data, tokenizer): Corpus} already loaded here (the sweep's), shared."""
        self.progress = progress
        _CORPORA.update(corpora or {})

    def run(self, tasks, on_start, on_done, tick):
        for t in tasks:
            on_start(t, {"executor": self.name, "job_id": None, "state": "running"})
            info = train_run(t, progress=self.progress, progress_position=1)
            on_done(t, dict(info, executor=self.name, job_id=None))


# -- local: a pool of spawned worker processes, one slot (GPUs or cores) each ------------------
_BUSY = threading.Event()  # in a worker: a task is running


def _worker_init(slots, pids) -> None:
    slot = slots.get()
    if slot.get("gpus") is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slot["gpus"]))
    if slot.get("cores"):
        os.sched_setaffinity(0, slot["cores"])
    # Idle workers ignore the terminal's SIGINT and a stray SIGTERM: the parent decides; a running
    # Trainer installs its own handlers (checkpoint after the step, then exit).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pids.put(os.getpid())
    parent = os.getppid()

    def watch_parent():  # a SIGKILLed sweep: the running run checkpoints and the worker goes
        while os.getppid() == parent:
            time.sleep(1.0)
        if _BUSY.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            os._exit(1)

    threading.Thread(target=watch_parent, daemon=True).start()


def _worker_run(task: RunTask) -> dict:
    from .train import StopOnSignal

    _BUSY.set()
    try:
        with StopOnSignal():  # a signal before the Trainer is up still stops the run after one step
            return train_run(task)
    finally:
        _BUSY.clear()


def _visible_gpus() -> List[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def local_slots(device: str, workers: Optional[int], threads: int, gpus_per_run: int) -> List[dict]:
    """One slot per worker: {"gpus": [...]} on CUDA, {"cores": [...]} on CPU (None: unpinned,
    when the workers ask for more cores than this process may use)."""
    if device == "cuda":
        gpus = _visible_gpus()
        n = workers or len(gpus) // max(1, gpus_per_run)
        if n < 1 or n * gpus_per_run > len(gpus):
            raise ConfigError(f"{n or 1} workers x {gpus_per_run} GPUs per run need {max(n, 1) * gpus_per_run} GPUs; "
                              f"{len(gpus)} visible")
        return [{"gpus": gpus[i * gpus_per_run:(i + 1) * gpus_per_run]} for i in range(n)]
    cores = sorted(os.sched_getaffinity(0))
    n = workers or max(1, len(cores) // threads)
    if n * threads > len(cores):
        return [{"cores": None} for _ in range(n)]
    return [{"cores": cores[i * threads:(i + 1) * threads]} for i in range(n)]


class LocalExecutor(Executor):
    """K spawned worker processes (concurrent.futures), each pinned to its slot."""

    name = "local"

    def __init__(self, slots: List[dict]):
        self.slots = slots

    def run(self, tasks, on_start, on_done, tick):
        from .train import RunInterrupted, StopOnSignal

        if not tasks:
            return
        ctx = mp.get_context("spawn")
        slot_q, pid_q = ctx.Queue(), ctx.Queue()
        n = min(len(self.slots), len(tasks))
        for s in self.slots[:n]:
            slot_q.put(s)
        pids: List[int] = []
        interrupted = None
        with StopOnSignal() as stop, \
                cf.ProcessPoolExecutor(n, mp_context=ctx, initializer=_worker_init, initargs=(slot_q, pid_q)) as pool:
            futs = {}
            for t in tasks:
                futs[pool.submit(_worker_run, t)] = t
                on_start(t, {"executor": self.name, "job_id": None, "state": "queued"})
            pending, started = set(futs), set()
            forwarded = False
            while pending:
                done, pending = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
                for f in pending - started:
                    if f.running():  # handed to a worker
                        started.add(f)
                        on_start(futs[f], {"executor": self.name, "job_id": None, "state": "running"})
                while not pid_q.empty():
                    pids.append(pid_q.get())
                if stop.signum and not forwarded:
                    # Pass the signal on to every worker (a running Trainer checkpoints after its
                    # step; an idle worker ignores it) and start nothing new.
                    forwarded = True
                    for f in pending:
                        f.cancel()
                    for pid in pids:
                        try:
                            os.kill(pid, signal.SIGTERM)
                        except ProcessLookupError:
                            pass
                for f in done:
                    t = futs[f]
                    if f.cancelled():
                        continue
                    try:
                        info = f.result()
                    except RunInterrupted as e:
                        interrupted = interrupted or e
                        continue
                    except BaseException as e:  # a failed run is reported; the others go on
                        if isinstance(e, cf.process.BrokenProcessPool):
                            raise TrainError(f"a worker process died while running {t.name} "
                                             "(out of memory? killed?); run the same command again to resume") from None
                        on_done(t, {"executor": self.name, "job_id": None, "error": _one_line(e)})
                        continue
                    on_done(t, dict(info, executor=self.name, job_id=None))
                pending = {f for f in pending if not f.cancelled()}
                tick()
        if stop.signum or interrupted:
            raise RunInterrupted(stop.signum or interrupted.signum, -1, "the sweep")


# -- slurm: submitit job arrays -----------------------------------------------------------------
@dataclass
class SlurmOptions:
    partition: Optional[str] = None
    time_min: int = 60
    gpus_per_task: Optional[int] = None
    cpus_per_task: Optional[int] = None
    account: Optional[str] = None
    runs_per_task: int = 1
    array_parallelism: int = 256
    options: Dict[str, str] = field(default_factory=dict)  # any other sbatch option: {"qos": "high"}
    signal_delay_s: int = 90
    max_requeues: int = 20


class SlurmTask:
    """What one array task runs: its group of runs, in order, each in this process.  Submitit
    sees ``checkpoint``: when the task is preempted or near its time limit, the run in progress
    finishes its step and checkpoints (train.StopOnSignal), then submitit's handler requeues the
    same SlurmTask, which resumes that run from its checkpoint (finished runs are skipped)."""

    def __init__(self, tasks: List[RunTask]):
        self.tasks = tasks

    def __call__(self) -> List[dict]:
        from .train import RunInterrupted

        out = []
        for t in self.tasks:
            try:
                info = train_run(t)
            except RunInterrupted as e:
                # The checkpoint is written: hand over to submitit's handler (it calls checkpoint()
                # below, runs `scontrol requeue` and exits).  Without one, stop as a failure would.
                handler = signal.getsignal(e.signum)
                if not callable(handler):
                    raise
                try:
                    handler(e.signum, None)
                except subprocess.CalledProcessError:
                    # `scontrol requeue` refused: SLURM is requeuing the job itself (a preemption
                    # under PreemptMode=REQUEUE).  Leave as submitit would after a requeue, with no
                    # result file, so nobody takes this attempt for the end of the task.
                    print(f"{t.name}: SLURM requeues this task itself; it resumes from step {e.step}",
                          file=sys.stderr, flush=True)
                    sys.exit(-1)
                raise
            job = os.environ.get("SLURM_ARRAY_JOB_ID")
            jid = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ.get("SLURM_JOB_ID")
            out.append(dict(info, name=t.name, executor="slurm", job_id=jid))
        return out

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(SlurmTask(self.tasks))


ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "PREEMPTED", "CONFIGURING", "RESIZING",
                 "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "READY", "UNKNOWN")


def _submitit():
    """submitit, its preemption signal set to SIGTERM (what SLURM sends a preempted job's steps,
    and what ``--signal=TERM@delay`` sends before the time limit).  Its default, SIGUSR2, would
    leave a preempted task to be killed with its work since the last eval."""
    os.environ["SUBMITIT_PREEMPT_SIGNAL"] = "TERM"  # read by the job's submitit when it starts
    import submitit
    from submitit.core.job_environment import JobEnvironment

    JobEnvironment.USR_SIG = "TERM"  # the sbatch --signal line written here
    return submitit


class SlurmExecutor(Executor):
    """Submit the tasks as one job array (submitit) and, unless ``wait`` is False, follow them to
    the end.  ``known``: run name -> job id of tasks submitted by an earlier invocation that may
    still be queued or running: they are followed, not submitted again."""

    name = "slurm"

    def __init__(self, folder: Path, opts: SlurmOptions, job_name: str, wait: bool = True,
                 known: Optional[Dict[str, str]] = None, poll_s: float = 2.0):
        self.folder, self.opts, self.job_name, self.wait = Path(folder), opts, job_name, wait
        self.known, self.poll_s = known or {}, poll_s

    def _executor(self, gpus: int, cpus: int):
        submitit = _submitit()
        o = self.opts
        ex = submitit.SlurmExecutor(folder=self.folder / "%j", max_num_timeout=o.max_requeues)
        params = dict(job_name=self.job_name, time=o.time_min, ntasks_per_node=1, nodes=1,
                      cpus_per_task=o.cpus_per_task or cpus, array_parallelism=o.array_parallelism,
                      signal_delay_s=o.signal_delay_s, stderr_to_stdout=True,
                      setup=["export SUBMITIT_PREEMPT_SIGNAL=TERM"], additional_parameters=dict(o.options))
        g = o.gpus_per_task if o.gpus_per_task is not None else gpus
        if g:
            params["gpus_per_task"] = g
        if o.partition:
            params["partition"] = o.partition
        if o.account:
            params["account"] = o.account
        try:
            ex.update_parameters(**params)
        except ValueError as e:
            raise ConfigError(f"slurm options: {str(e).splitlines()[0]}") from None
        return ex

    def job(self, job_id: str):
        return _submitit().SlurmJob(folder=self.folder / "%j", job_id=job_id)

    def run(self, tasks, on_start, on_done, tick):
        from .train import RunInterrupted, StopOnSignal

        jobs = []  # (job, [tasks])
        fresh = []
        for t in tasks:
            jid = self.known.get(t.name)
            if jid and self._active(self.job(jid)):
                jobs.append((self.job(jid), [t]))
            else:
                fresh.append(t)
        if fresh:
            groups = [fresh[i:i + self.opts.runs_per_task] for i in range(0, len(fresh), self.opts.runs_per_task)]
            ex = self._executor(max(t.gpus for t in fresh), max(t.threads or 1 for t in fresh))
            try:
                with ex.batch():
                    subs = [ex.submit(SlurmTask(g)) for g in groups]
            except Exception as e:  # sbatch refused (bad partition, account, option): its one line
                msg = [ln for ln in str(e).splitlines() if ln.strip()]
                raise ConfigError(f"sbatch failed: {msg[-1] if msg else e}") from None
            jobs += list(zip(subs, groups))
        for j, g in jobs:
            for t in g:
                on_start(t, {"executor": self.name, "job_id": j.job_id, "state": "submitted"})
        if not self.wait:
            return
        watcher = _submitit().SlurmJob.watcher
        left = list(jobs)
        with StopOnSignal() as stop:
            while left:
                if stop.signum:
                    # Leaving does not stop the cluster's jobs: they go on; run the command again to collect.
                    raise RunInterrupted(stop.signum, -1, "the sweep (its SLURM jobs keep running)")
                time.sleep(self.poll_s)
                watcher.update()
                still = []
                for j, g in left:
                    if self._ended(j):
                        self._collect(j, g, on_done)
                    else:
                        still.append((j, g))
                left = still
                tick()

    @staticmethod
    def _ended(job) -> bool:
        """SLURM's word first (a requeued task may have left a result file from an earlier
        attempt); the result file where sacct does not know the job (yet)."""
        state = (job.watcher.get_state(job.job_id, mode="cache").split() or ["UNKNOWN"])[0].upper()
        if state == "UNKNOWN":
            return job.paths.result_pickle.exists()
        return state not in ACTIVE_STATES

    def _active(self, job) -> bool:
        job.watcher.update()
        return not self._ended(job)

    def _collect(self, job, group, on_done) -> None:
        try:
            infos = {i["name"]: i for i in job.result()}
        except Exception as e:
            msg = _job_error(e, job)
            for t in group:
                on_done(t, {"executor": self.name, "job_id": job.job_id, "error": msg})
            return
        for t in group:
            on_done(t, dict(infos.get(t.name, {}), executor=self.name, job_id=job.job_id))

    def collect_finished(self, job_id: str) -> Optional[dict]:
        """{name: info} of a finished job of an earlier invocation (None if unreadable)."""
        try:
            j = self.job(job_id)
            if not j.paths.result_pickle.exists():
                return None
            return {i["name"]: i for i in j.result()}
        except Exception:
            return None


def _job_error(e: BaseException, job) -> str:
    """One line for a failed array task: the run's own error where submitit relays it."""
    text = str(e)
    for ln in reversed(text.splitlines()):
        ln = ln.strip()
        if ln.startswith(("flopscale.engine.rundir.TrainError:", "flopscale.engine.config.ConfigError:",
                          "TrainError:", "ConfigError:")):
            return ln.split(":", 1)[1].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"job {job.job_id}: {lines[-1] if lines else type(e).__name__} (log {job.paths.stdout})"


def make_executor(name: str, **kw) -> Executor:
    if name == "inline":
        return InlineExecutor(**kw)
    if name == "local":
        return LocalExecutor(**kw)
    if name == "slurm":
        return SlurmExecutor(**kw)
    raise ConfigError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


__all__ = ["EXECUTORS", "RunTask", "SlurmOptions", "Executor", "InlineExecutor", "LocalExecutor", "SlurmExecutor",
           "SlurmTask", "make_executor", "train_run", "train_command", "corpus_for", "local_slots"]
