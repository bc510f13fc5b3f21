"""One training run with measured compute.

    flopscale train --n-layer 2 --d-model 64 --n-heads 4 --n-ctx 128 --steps 200 --out runs/nano
    flopscale train ... --out runs/nano      # the same command again resumes where it stopped

    torchrun --nproc-per-node 2 -m flopscale.cli train ... --out runs/ddp    # DDP, CPU (gloo) or GPUs (nccl)
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        -m flopscale.cli train ... --device cuda --out runs/big               # multi-node

RUN_DIR gets ``config.json`` (model and training config, N, data provenance, code version),
``metrics.jsonl`` (one object per logged step, the keys of docs/ARCHITECTURE.md), ``flops.json``
(the ledger's rows in three views, forward and backward) and ``ckpt.pt``.  Checkpoints are written atomically
(temporary file, then rename) at every eval and at the end; the batches of a step depend only on
(seed, step), so on CPU a resumed run continues bit for bit as if it had never stopped.

Distributed (torch.distributed, launched by ``torchrun``): when ``WORLD_SIZE`` > 1 the process
group is initialised from the environment (nccl on CUDA, gloo on CPU) and the model is wrapped in
DDP.  ``batch_size`` stays the *global* batch: each step is world_size x grad_accum micro-batches
of batch_size / (world_size x grad_accum) sequences, and the micro-batch that rank r draws as its
m-th is global micro-batch k = r * grad_accum + m, drawn from (seed, step, k) alone; so a run on
W ranks sees exactly the sequences a single process sees with grad_accum W x larger.  Each rank's
FLOP counts for a step are all-reduced (summed) into the ledger, so ``flops`` in metrics.jsonl is
the global exact count; the optimizer row is booked once in the model view (one update of the
weights is the algorithm) and world_size times in the executed view (every rank applies it).
Rank 0 alone writes config.json, metrics.jsonl, flops.json and the checkpoint; every rank reads
the checkpoint on resume (a shared file system is assumed), and a run may resume on another
world size.

Stopping: SIGTERM (what SLURM sends before it kills a preempted or timed-out job) or SIGINT
makes ``run()`` finish the step it is in, write a checkpoint and raise :class:`RunInterrupted`
(a KeyboardInterrupt, so the CLI exits non-zero with one line); the same command again prints
``resuming RUN_DIR from step S`` and continues bit for bit on CPU.  Under DDP the ranks agree on
the step to stop at (one all-reduce of the flag per step).  A process training in RUN_DIR holds
``RUN_DIR/.lock`` (engine/runlock.py); a second one refuses with one line naming the holder.

Gradient noise scale (``noise_scale``, engine/noise.py): single-process, the small batch is one
micro-batch and the big batch the whole step (grad_accum >= 2); under DDP, the small batch is one
rank's share and the big batch the all-reduced one.  Logged in **tokens** (sequences x n_ctx).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from flopscale.fileio import append_line, atomic_write_json, os_error_line, write_error

from . import flops as fl
from . import rundir
from .config import WATCH_FIELDS, ConfigError, ModelConfig, TrainConfig
from .data import DataError, data_options, load_corpus
from .dist import all_reduce_ints, all_reduce_mean_grads, all_reduce_sum, barrier, broadcast_object, init_distributed
from .model import LanguageModel, make_model
from .noise import MicroBatchNorms, NoiseScaleEstimator, sq_norm, sq_norm_tensor
from .optim import Adafactor
from .rundir import TrainError
from .runlock import LOCK, RunLock
from .schedule import lr_at
from .trackers import open_trackers


# Dense bf16/fp16 tensor-core peaks (FLOP/s) by device-name fragment, for MFU.  None elsewhere.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def peak_flops(device: str, dtype: str):
    if not device.startswith("cuda") or dtype == "float32" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def decay_split(model: torch.nn.Module) -> tuple:
    """(decayed, not decayed) parameters: matmul weights and embeddings (dim >= 2) decay; biases
    and LayerNorm gains never do."""
    params = list(model.parameters())
    return [p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]


def optimizer_step_flops(model: torch.nn.Module, tc: TrainConfig) -> int:
    """FLOPs of one optimizer step (with clipping) over ``model``'s parameters: AdamW's
    flops.optimizer_flops, or flops.adafactor_flops from the shapes.  Works on a model built on
    the meta device (the sweep's cost model)."""
    decay, other = decay_split(model)
    n_decayed = sum(p.numel() for p in decay) if tc.weight_decay > 0 else 0
    if tc.optimizer == "adafactor":
        return fl.adafactor_flops([tuple(p.shape) for p in decay + other], n_decayed, tc.grad_clip > 0,
                                  tc.adafactor_scale_parameter)
    return fl.optimizer_flops(sum(p.numel() for p in decay + other), n_decayed, tc.grad_clip > 0)


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal after finishing its step and writing a checkpoint."""

    def __init__(self, signum: int, step: int, run_dir: str):
        super().__init__(signum, step, run_dir)
        self.signum, self.step, self.run_dir = signum, step, run_dir

    def __str__(self) -> str:
        where = f" at step {self.step} of {self.run_dir}: checkpoint written" if self.step >= 0 else f" ({self.run_dir})"
        return f"{signal.Signals(self.signum).name}{where}; run the same command again to resume"


class StopOnSignal:
    """While active (main thread only), SIGTERM and SIGINT set ``signum`` instead of killing
    the process; the previous handlers come back on exit.  Nested ones share what they catch (a
    signal that reached a sweep's worker before its Trainer started is not lost).  Later signals
    are ignored: the run is already on its way out (SIGKILL still works)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    _active: list = []

    def __init__(self):
        self.signum = None
        self._old = {}

    @classmethod
    def _handler(cls, signum, frame):
        for s in cls._active:
            if s.signum is None:
                s.signum = signum

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            self.signum = next((s.signum for s in self._active if s.signum), None)
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, StopOnSignal._handler)
            StopOnSignal._active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        if self in StopOnSignal._active:
            StopOnSignal._active.remove(self)
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


def make_optimizer(model: LanguageModel, tc: TrainConfig):
    decay, other = decay_split(model)
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": other, "weight_decay": 0.0}]
    # CUDA: the fused kernel (one launch for every tensor).  CPU: foreach, which is bit for bit
    # the per-tensor loop here (tests/test_train_speed_paths.py), so CPU runs and resumes stay
    # exact; CPU's fused AdamW rounds differently.
    if tc.optimizer == "adafactor":  # engine/optim.py: lr is the step size (beta2_decay -0.8, eps (None, 1e-3), d 1)
        opt = Adafactor(groups, lr=tc.lr, scale_parameter=tc.adafactor_scale_parameter)
        return opt, optimizer_step_flops(model, tc)
    fast = {"fused": True} if next(model.parameters()).device.type == "cuda" else {"foreach": True}
    opt = torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=1e-8, **fast)
    return opt, optimizer_step_flops(model, tc)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_MMAP_THRESHOLD_MAX = 32 << 20                     # glibc's ceiling for it on 64-bit (4 * 1024 * 1024 * sizeof(long))


def reuse_freed_cpu_memory() -> bool:
    """Let a CPU training process reuse the memory of the tensors it frees (glibc only; a no-op
    elsewhere).  torch's CPU tensors come from malloc, and glibc serves every block above its
    (adaptive) mmap threshold with a fresh mmap and returns it at free: each step's activations
    and gradients were then new pages, 8-15k page faults and 10-30 ms of system time per step of
    bench_train's CPU shape (~160 ms), varying from run to run.  Blocks up to 32 MiB now come
    from the heap, which is never trimmed: 0-500 faults per step.  Process-wide, so in
    bench_train the reference runs under it too.  Returns whether it applied."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))


def check_device(tc: TrainConfig) -> None:
    """One line saying what to do when the device, or the backend on it, cannot run here
    (rather than torch's "Torch not compiled with CUDA enabled" or Triton's "0 active drivers")."""
    try:
        dev = torch.device(tc.device)
    except RuntimeError:
        raise ConfigError(f"unknown device {tc.device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "was built without CUDA" if torch.version.cuda is None else "sees no CUDA GPU"
            raise ConfigError(f"--device {tc.device}: this torch ({torch.__version__}) {why}; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {tc.device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                              f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {tc.device!r}; use cpu, cuda or cuda:N")
    if tc.backend == "cuda" and dev.type != "cuda":
        raise ConfigError("--backend cuda runs CUDA kernels on GPU tensors; use --device cuda, or --backend torch on CPU")
    if tc.backend == "triton" and dev.type != "cuda":
        from flopscale.kernels.triton_utils import INTERPRET

        if not INTERPRET:
            raise ConfigError("--backend triton on --device cpu needs Triton's interpreter: set TRITON_INTERPRET=1 "
                              "before starting (slow; for tests), or use --device cuda, or --backend torch")


class Trainer:
    """Holds a run's state; ``run()`` trains to ``steps`` and returns the last metrics row.

    Under torchrun (WORLD_SIZE > 1) every rank builds a Trainer with the same arguments; the
    process group is initialised here if it is not already.
    """

    def __init__(self, mc: ModelConfig, tc: TrainConfig, out: str | Path, progress: bool = True, corpus=None,
                 progress_position: int = 0):
        self.tc, self.out, self.progress, self.progress_position = tc, Path(out), progress, progress_position
        check_device(tc)
        self.rank, self.world, local = init_distributed(tc.device)
        if tc.batch_size % (tc.grad_accum * self.world):
            raise ConfigError(f"batch_size ({tc.batch_size}) must be divisible by grad_accum x world size "
                              f"({tc.grad_accum} x {self.world})")
        if tc.noise_scale and tc.grad_accum * self.world < 2:
            raise ConfigError("noise_scale needs two batch sizes: grad_accum >= 2 or a DDP world size >= 2")
        if corpus is None:
            # Rank 0 trains the tokenizer and writes the token cache; the others then read it.
            if self.rank == 0:
                corpus = load_corpus(tc.data, tc.tokenizer, tc.max_tokens, tc.eval_corpora(), **data_options(tc))
            barrier(self.world)
            if self.rank != 0:
                corpus = load_corpus(tc.data, tc.tokenizer, tc.max_tokens, tc.eval_corpora(), **data_options(tc))
        self.corpus = corpus.with_unique_tokens(tc.unique_tokens)  # --unique-tokens: the first U tokens, repeated
        if mc.n_vocab != self.corpus.vocab_size:
            mc = ModelConfig.from_dict({**mc.to_dict(), "n_vocab": self.corpus.vocab_size})
        self.mc = mc
        torch.manual_seed(tc.seed)
        dev = tc.device
        if self.world > 1 and dev == "cuda":
            dev = f"cuda:{local}"
        self.device = torch.device(dev)
        if self.device.type == "cpu":
            reuse_freed_cpu_memory()
        self.model = make_model(mc, backend=tc.backend, kernel_options=tc.kernel_options(),
                                loss_impl=tc.loss_impl).to(self.device)  # the bare module (checkpoints, eval)
        if tc.compile:
            self.model.compile_core()
        self._prefetched = None  # ((step, micro), (x, y) on the device): the next batch, drawn early
        self.ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.model, device_ids=ids)
        self.opt, self.opt_flops = make_optimizer(self.model, tc)
        self.ledger = fl.FlopLedger()
        self.noise = NoiseScaleEstimator() if tc.noise_scale else None
        self.step, self.tokens = 0, 0
        self._ckpt_step = None     # the step of the last checkpoint written or loaded
        self._wrote_config = False  # this call started the run (wrote its config.json)
        self.grad_norm = None  # the last step's global gradient norm before clipping (a device tensor)
        peak = peak_flops(dev, tc.dtype)
        self.peak = peak * self.world if peak else None
        self.autocast_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(tc.dtype)

    @property
    def micro_batch(self) -> int:
        """Sequences per micro-batch on one rank."""
        return self.tc.batch_size // (self.tc.grad_accum * self.world)

    # -- run directory ---------------------------------------------------------------------
    def config_record(self) -> dict:
        return {
            "model": self.mc.to_dict(), "train": self.tc.to_dict(), "N": self.mc.N,
            "N_counts": fl.n_counts(self.mc),  # universal: the shared block once
            "n_params_total": self.model.num_params(non_embedding=False),
            "data": {**self.corpus.provenance,  # unique tokens U and the epochs the run plans over them
                     "epochs": self.tc.steps * self.tc.batch_size * self.mc.n_ctx / max(1, self.corpus.n_train_tokens)},
            "code_version": rundir.code_version(),
            "tokens_per_step": self.tc.batch_size * self.mc.n_ctx,
            "world_size": self.world,
            "kernels": self.model.ops.describe(),  # the backend, its options and what they resolve to
        }

    def _check_or_write_config(self) -> bool:
        """Write config.json for a new run; for an existing one, refuse a different config.
        Returns True when there is a checkpoint to resume from.  Rank 0 decides, all ranks agree."""
        res = None
        if self.rank == 0:
            try:
                res = self._check_or_write_config_local()
            except TrainError as e:
                res = e
        res = broadcast_object(res if not isinstance(res, TrainError) else ("error", str(res)), self.world)
        if isinstance(res, tuple):
            raise TrainError(res[1])
        return res

    def _check_or_write_config_local(self) -> bool:
        self.out.mkdir(parents=True, exist_ok=True)
        rundir.clean_temp_files(self.out)  # a killed writer's ".ckpt.pt.tmpPID" (we hold the lock)
        cpath = self.out / rundir.CONFIG
        rec = self.config_record()
        if cpath.exists():
            old = rundir.read_config(cpath)
            defaults = {"model": ModelConfig.__dataclass_fields__, "train": TrainConfig.__dataclass_fields__}

            def old_value(sec, k):  # a field added since the run was made reads as its default
                o = old.get(sec, {})
                return o[k] if k in o else defaults[sec][k].default

            diffs = [f"{sec}.{k}: {old_value(sec, k)!r} -> {v!r}"
                     for sec in ("model", "train") for k, v in rec[sec].items()
                     if old_value(sec, k) != v and k not in WATCH_FIELDS]
            if diffs:
                raise TrainError(f"{self.out} holds a run with a different configuration ({'; '.join(diffs)}); "
                                 "use another --out or the same flags")
            if self._checkpoints():
                return True
            self._start_over()  # killed before its first checkpoint, or the checkpoint was moved aside
            return False
        self._check_batches()  # what the first step would refuse, refused before config.json exists
        atomic_write_json(cpath, rec)
        self._wrote_config = True
        return False

    def _checkpoints(self) -> list:
        """This run's checkpoint files as (path, step or None), ckpt.pt first, then its kept
        copies, newest first."""
        kept = [(self.out / rundir.kept_checkpoint(k), k) for k in sorted(self.tc.kept_steps(), reverse=True)]
        return [(p, k) for p, k in [(self.out / rundir.CHECKPOINT, None), *kept] if p.exists()]

    def _start_over(self) -> None:
        """A run directory with no checkpoint: its rows and flops.json are of lost work; the run
        starts from step 0 and writes them again (rank 0)."""
        rundir.truncate_metrics(self.out / rundir.METRICS, 0)
        rundir.truncate_metrics(self.out / rundir.POSITIONS, 0)
        (self.out / rundir.FLOPS).unlink(missing_ok=True)

    def _check_batches(self) -> None:
        """Draw step 0's first batch of every split (cheap: offsets and a gather) so that data too
        short for n_ctx is refused before a fresh run writes config.json; a corrected retry of
        the same --out then starts afresh instead of being refused as a changed config."""
        for split in ("train", "val", *self.corpus.evals):
            self.corpus.batch(split, 0, 0, self.micro_batch, self.mc.n_ctx, self.tc.seed)

    @property
    def fingerprint(self) -> str:
        """The fingerprint of this run's config, carried by its checkpoints (rundir.fingerprint)."""
        return rundir.fingerprint(self.mc.to_dict(), self.tc.to_dict())

    def save_checkpoint(self) -> None:
        """The state at ``self.step`` (tensors, numbers, strings, lists and dicts only: read back with
        weights_only=True), then flops.json.  The kept copy ckpt-S.pt is written before ckpt.pt:
        a kill between the two leaves ckpt.pt at the previous checkpoint, the resume redoes the
        steps to S and writes both again (or resumes from ckpt-S.pt, the newer, see ``resume``)."""
        if self.rank == 0:
            state = {
                "step": self.step, "tokens": self.tokens, "model": self.model.state_dict(),
                "opt": self.opt.state_dict(), "ledger": self.ledger.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "noise": self.noise.state_dict() if self.noise else None,
                "world_size": self.world, "fingerprint": self.fingerprint,
            }
            if self.step in self.tc.kept_steps():  # a copy for cooldown branches to start from
                rundir.save_checkpoint(self.out / rundir.kept_checkpoint(self.step), state)
            rundir.save_checkpoint(self.out / rundir.CHECKPOINT, state)
            self._write_flops_json()
        self._ckpt_step = self.step
        barrier(self.world)  # nobody runs ahead of a checkpoint that may be resumed from

    def read_checkpoint(self, path: Path, fingerprint: str | None = None, owner: str | None = None) -> dict:
        """Checkpoint ``path``, which must carry ``fingerprint`` (by default this run's)."""
        return rundir.load_checkpoint(path, self.device, fingerprint=fingerprint or self.fingerprint,
                                      owner=owner or str(self.out))

    def load_checkpoint(self, path: Path, fingerprint: str | None = None, owner: str | None = None,
                        ck: dict | None = None) -> dict:
        """Load the state of checkpoint ``path`` (``ck``: its contents, already read); a checkpoint
        that does not fit the model is one TrainError line.  Returns its contents."""
        if ck is None:
            ck = self.read_checkpoint(path, fingerprint, owner)
        try:
            self.model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["opt"])
            self.ledger.load_state_dict(ck["ledger"])
            torch.set_rng_state(ck["torch_rng"].cpu())
            if self.noise is not None and ck.get("noise"):
                self.noise.load_state_dict(ck["noise"])
            self.step, self.tokens = int(ck["step"]), int(ck["tokens"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else (lines or [""])[0]
            more = f" (and {len(lines) - 2} more)" if len(lines) > 2 and lines[0].startswith("Error(s)") else ""
            raise TrainError(f"checkpoint {path} does not fit this run's model or optimizer: {detail}{more}; "
                             "move it aside to restart the run") from None
        self._ckpt_step = self.step
        return ck

    def resume(self) -> None:
        """Continue from this run's newest checkpoint: ckpt.pt, or a kept ckpt-K.pt newer than it
        (a kill between writing the two; ckpt.pt moved aside).  Rows logged after it were lost
        work: metrics.jsonl and positions.jsonl are cut back to its step (torn lines dropped) and
        the resumed run writes them again.  A kept copy missing at the step of ckpt.pt is derived
        from it."""
        files = self._checkpoints()
        path, ck = files[0][0], None
        if files[0][1] is None:  # ckpt.pt
            ck = self.read_checkpoint(path)
            newer = [p for p, k in files[1:] if k > int(ck["step"])]
            if newer:
                path, ck = newer[0], None
        ck = self.load_checkpoint(path, ck=ck)
        if self.rank == 0:
            rundir.truncate_metrics(self.out / rundir.METRICS, self.step)
            rundir.truncate_metrics(self.out / rundir.POSITIONS, self.step)
            kept = self.out / rundir.kept_checkpoint(self.step)
            if self.step in self.tc.kept_steps() and not kept.exists():
                rundir.save_checkpoint(kept, ck)
        barrier(self.world)

    def _finish_complete(self) -> None:
        """The checkpoint is at the last step: the run is complete once every final file is.  A
        kill after the final checkpoint left flops.json behind: write it again from the ledger."""
        err = None
        if self.rank == 0:
            if rundir.flops_json_step(self.out) != self.step:
                self._write_flops_json()
            last = rundir.last_step(self.out / rundir.METRICS)
            if last != self.step:
                err = (f"{self.out}: the checkpoint is at the final step {self.step} but metrics.jsonl ends at step "
                       f"{last}; the run's record is incomplete: move the run directory aside to train it again")
        err = broadcast_object(err, self.world)
        if err:
            raise TrainError(err)

    def start_branch(self) -> None:
        """A fresh run with ``init_from`` = PARENT@S: check that its first S steps are the
        parent's (same model, data, seed and optimizer; the same learning rate at every step
        before S), load the checkpoint the parent kept at S, and copy the parent's metrics rows
        up to S, so this run's curve and its cumulative FLOPs are whole."""
        parent, s = self.tc.branch_point()
        pdir = Path(parent)
        ckpt = pdir / rundir.kept_checkpoint(s)
        if not (pdir / rundir.CONFIG).exists():
            raise TrainError(f"init_from {self.tc.init_from}: no run in {pdir}")
        old = rundir.read_config(pdir / rundir.CONFIG)
        ptc = TrainConfig.from_dict({k: v for k, v in old["train"].items() if k in TrainConfig.__dataclass_fields__})
        own = {"steps", "eval_every", "eval_batches", "log_every", "keep_steps", "init_from", *WATCH_FIELDS}
        diffs = [k for k, v in self.tc.to_dict().items() if k not in own and getattr(ptc, k) != v]
        if ModelConfig.from_dict(old["model"]).to_dict() != self.mc.to_dict():  # fields added since read as defaults
            diffs.insert(0, "model")
        bad_lr = next((t for t in range(s) if lr_at(t, ptc) != lr_at(t, self.tc)), None)
        if diffs or bad_lr is not None:
            why = f"fields differ: {', '.join(diffs)}" if diffs else f"the learning rate differs at step {bad_lr}"
            raise TrainError(f"init_from {self.tc.init_from}: its first {s} steps are not this run's ({why}); "
                             "a cooldown branch needs the same config, and a wsd parent still in its stable phase")
        if not ckpt.exists():
            raise TrainError(f"init_from {self.tc.init_from}: {ckpt} does not exist (train the parent with "
                             f"--keep-steps {s} first)")
        self.load_checkpoint(ckpt, fingerprint=rundir.fingerprint(old["model"], old["train"]), owner=str(pdir))
        if self.rank == 0:
            rundir.copy_metrics(pdir / rundir.METRICS, self.out / rundir.METRICS, s)
            if (pdir / rundir.POSITIONS).exists():
                rundir.copy_metrics(pdir / rundir.POSITIONS, self.out / rundir.POSITIONS, s)
            _say(f"starting {self.out} from {pdir} at step {s} (cooldown branch)")
        self.save_checkpoint()  # a resumed branch resumes from here, not from the parent

    def _write_flops_json(self) -> None:
        led = self.ledger
        rec = {
            "convention": "FLOPs (multiply-add = 2); backward includes the optimizer row",
            "steps": self.step, "tokens": self.tokens, "N": self.mc.N, "world_size": self.world,
            "views": led.to_dict(),
            "totals": {v: {"nonembedding": led.total(v), "all": led.total(v, rows="all")} for v in fl.VIEWS},
            "paper_6ND": 6 * self.mc.N * self.tokens,
            "kernels": self.model.ops.describe(),  # with the autotune choices of the launches so far
        }
        atomic_write_json(self.out / rundir.FLOPS, rec)
        rundir.written(self.out / rundir.FLOPS, self.step)

    # -- steps -----------------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _all_reduce_sum(self, values: list) -> list:
        return all_reduce_sum(values, self.world, self.device)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over eval_batches fixed batches (the same at every eval); under
        DDP, batch i is evaluated by rank i % world_size and the sum all-reduced.  With
        ``eval_positions`` the loss per token position too (``self.positions``), and the mean
        loss is their mean."""
        if self.tc.eval_positions:
            return self._evaluate_positions()
        self.model.eval()
        tc, total = self.tc, torch.zeros((), dtype=torch.float64, device=self.device)
        for i in range(self.rank, tc.eval_batches, self.world):
            x, y = self._to_device(*self.corpus.batch("val", i, 0, self.micro_batch, self.mc.n_ctx, tc.seed))
            with self._autocast():
                _, loss = self.model(x, y)
            total += loss.detach().double()  # on the device: one host sync per eval, below
        self.model.train()
        return self._all_reduce_sum([float(total)])[0] / tc.eval_batches

    @torch.no_grad()
    def _evaluate_positions(self) -> float:
        """``evaluate`` per position: the per-token losses of the same batches, summed over the
        sequences at each position t (n_ctx sums, float64), all-reduced, then averaged.  Every
        batch holds micro_batch sequences of n_ctx tokens, so the mean over positions is the
        mean over tokens: the eval loss (equal to the default path's up to rounding)."""
        self.model.eval()
        tc, T = self.tc, self.mc.n_ctx
        sums = torch.zeros(T, dtype=torch.float64, device=self.device)
        for i in range(self.rank, tc.eval_batches, self.world):
            x, y = self._to_device(*self.corpus.batch("val", i, 0, self.micro_batch, T, tc.seed))
            with self._autocast():
                logits, _ = self.model(x)  # (B, T, V)
            tok = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1),
                                                    reduction="none").view(y.shape)  # (B, T)
            sums += tok.double().sum(0)
        self.model.train()
        n_seq = tc.eval_batches * self.micro_batch
        self.positions = [s / n_seq for s in self._all_reduce_sum(sums.tolist())]
        return sum(self.positions) / T

    @torch.no_grad()
    def evaluate_others(self) -> dict:
        """{"val_loss_NAME": mean loss} on each --eval-data corpus: eval_batches fixed batches of
        its own stream (the same at every eval), as ``evaluate``."""
        tc, out = self.tc, {}
        names = list(self.corpus.evals)
        if not names:
            return out
        self.model.eval()
        totals = []
        for name in names:
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            for i in range(self.rank, tc.eval_batches, self.world):
                x, y = self._to_device(*self.corpus.batch(name, i, 0, self.micro_batch, self.mc.n_ctx, tc.seed))
                with self._autocast():
                    _, loss = self.model(x, y)
                total += loss.detach().double()
            totals.append(float(total))
        self.model.train()
        return {f"val_loss_{n}": s / tc.eval_batches for n, s in zip(names, self._all_reduce_sum(totals))}

    def _to_device(self, x, y):
        """A host batch to the device: pinned and non-blocking on CUDA (the copy overlaps the
        work already queued); the same tensors on CPU."""
        if self.device.type != "cuda":
            return x, y
        return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)

    def _train_batch(self, step: int, micro: int):
        """Train micro-batch ``micro`` (global index) of ``step`` on the device; the one drawn
        ahead by ``_prefetch`` when it is that one.  Batches depend on (seed, step, micro) alone,
        so drawing early changes nothing."""
        if self._prefetched is not None and self._prefetched[0] == (step, micro):
            batch = self._prefetched[1]
            self._prefetched = None
            return batch
        return self._to_device(*self.corpus.batch("train", step, micro, self.micro_batch, self.mc.n_ctx, self.tc.seed,
                                                  sampling=self.tc.sampling, global_batch=self.tc.batch_size))

    def _prefetch(self, step: int, micro: int) -> None:
        self._prefetched = ((step, micro), self._train_batch(step, micro))

    def _book_step_flops(self, step_ledger: fl.FlopLedger) -> None:
        """Sum this step's per-rank counts over ranks into the run's ledger, then the optimizer."""
        if self.world > 1:
            state = step_ledger.state_dict()
            keys = [(v, r) for v in fl.VIEWS for r in fl.ROWS]
            # int64 holds any one step's count (2^63 ~ 9e18; GPT-3 175B x 3.2M tokens is 3.4e18)
            vals = all_reduce_ints([c for v, r in keys for c in state[v][r]], self.world, self.device)
            step_ledger.load_state_dict({v: {r: vals[2 * i:2 * i + 2] for i, (vv, r) in enumerate(keys) if vv == v}
                                         for v in fl.VIEWS})
        self.ledger.merge(step_ledger)
        self.ledger.add("model", "optimizer", 0, self.opt_flops)
        self.ledger.add("executed", "optimizer", 0, self.opt_flops * self.world)

    def train_step(self) -> float:
        tc, mb, A = self.tc, self.micro_batch, self.tc.grad_accum
        lr = lr_at(self.step, tc)
        for g in self.opt.param_groups:
            g["lr"] = lr
        params = [p for p in self.model.parameters() if p.requires_grad]
        fwd = self.ddp if self.ddp is not None else self.model
        # Noise scale under DDP: accumulate every micro-batch locally (no_sync), read the rank's
        # own gradient, then all-reduce by hand; otherwise DDP reduces in the last backward.
        manual_reduce = self.ddp is not None and self.noise is not None
        # The micro-batch losses add up on the device (float64, as Python floats would): the
        # one host sync of a step is the float() at its end, after the next batch is drawn.
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        micro_norms = MicroBatchNorms(params, A) if self.noise is not None and self.world == 1 else None
        step_ledger = fl.FlopLedger()
        with step_ledger:
            for micro in range(A):
                k = self.rank * A + micro  # global micro-batch index (module docstring)
                x, y = self._train_batch(self.step, k)
                sync = self.ddp is None or (micro == A - 1 and not manual_reduce)
                ctx = self.ddp.no_sync() if not sync else contextlib.nullcontext()
                with ctx:
                    with self._autocast():
                        _, loss = fwd(x, y)
                    (loss / A).backward()
                total += loss.detach().double()
                if micro_norms is not None:
                    micro_norms.after_backward()
        self._book_step_flops(step_ledger)
        noise_sq = None  # single process: (mean |g_micro|^2, |G_step|^2) as device tensors, read below
        if self.noise is not None:
            grads = [p.grad for p in params]
            if self.world == 1:
                noise_sq = (micro_norms.mean_sq_tensor, sq_norm_tensor(grads))
            else:
                local_sq = sq_norm(grads)  # this rank's gradient over batch_size / world sequences
                all_reduce_mean_grads(grads, self.world)
                mean_local = self._all_reduce_sum([local_sq])[0] / self.world
                self.noise.update(mean_local, tc.batch_size // self.world, sq_norm(grads), tc.batch_size)
        if tc.grad_clip > 0:
            self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += tc.batch_size * self.mc.n_ctx
        self._prefetch(self.step, self.rank * A)  # drawn and copied while the device works
        if noise_sq is None:
            return self._all_reduce_sum([float(total) / A])[0] / self.world
        total_f, small, big = torch.stack([total, *(t.to(total.device) for t in noise_sq)]).tolist()  # the one sync
        self.noise.update(small, mb, big, tc.batch_size)
        return total_f / A

    def noise_scale_tokens(self):
        """The smoothed B_simple in tokens, or None (off, or |G|^2 not yet positive)."""
        if self.noise is None:
            return None
        b = self.noise.b_simple
        return b * self.mc.n_ctx if b is not None else None

    def _lock(self):
        """Rank 0 takes RUN_DIR/.lock (every rank stops on its one-line refusal)."""
        lock, err = None, None
        if self.rank == 0:
            try:
                rundir.check_out_dir(self.out)
                lock = RunLock(self.out).acquire()
            except TrainError as e:
                err = str(e)
            except OSError as e:  # the lock's record on a full disk: one line naming it
                err = os_error_line(e if e.filename is not None else write_error(e, self.out / LOCK))
        err = broadcast_object(err, self.world)
        if err:
            raise TrainError(err)
        return lock

    def _stop_requested(self, stop: StopOnSignal):
        """The signal to stop on, agreed by every rank (so they all stop after the same step)."""
        if self.world == 1:
            return stop.signum
        anyone = self._all_reduce_sum([1.0 if stop.signum else 0.0])[0]
        return (stop.signum or signal.SIGTERM) if anyone else None

    def run(self) -> dict:
        lock = self._lock()
        try:
            with StopOnSignal() as stop:
                return self._run(stop)
        finally:
            if lock is not None:
                lock.release()

    def _run(self, stop: StopOnSignal) -> dict:
        try:
            return self._train(stop)
        except (ConfigError, DataError):
            # Bad input met before the first checkpoint of a run this call started: leave no
            # config.json behind, so that the corrected command starts afresh in the same --out.
            if self.rank == 0 and self._wrote_config and not self._checkpoints():
                for name in (rundir.CONFIG, rundir.METRICS, rundir.POSITIONS, rundir.FLOPS):
                    (self.out / name).unlink(missing_ok=True)
            raise

    def _train(self, stop: StopOnSignal) -> dict:
        tc = self.tc
        if self._check_or_write_config():
            if rundir.is_complete(self.out, tc.steps):  # every final file is there: nothing to load
                return {"step": tc.steps, "complete": True}
            self.resume()
            if self.rank == 0 and self.step < tc.steps:
                _say(f"resuming {self.out} from step {self.step}")
        elif tc.init_from:
            self.start_branch()
        if self.step >= tc.steps:
            self._finish_complete()
            return {"step": self.step, "complete": True}
        lead = self.rank == 0
        mpath = self.out / rundir.METRICS
        kept = tc.kept_steps()
        bar = _progress(total=tc.steps, initial=self.step, enabled=self.progress and lead, desc=self.out.name,
                        position=self.progress_position)
        row = {}
        # metrics.jsonl rows: append_line opens the file per row (a failed write leaves nothing buffered)
        with open_trackers(tc.trackers() if lead else (), self.out) as tracker:
            # Throughput counts training steps only (evals and checkpoints excluded).
            t_train, tok_last, flops_last = 0.0, self.tokens, self.ledger.total("model", rows="all")
            exec_last = self.ledger.total("executed", rows="all")
            while self.step < tc.steps:
                t0 = time.perf_counter()
                train_loss = self.train_step()
                t_train += time.perf_counter() - t0
                if not math.isfinite(train_loss):
                    ck = (f"the last good checkpoint (step {self._ckpt_step}) in {self.out} is kept"
                          if self._ckpt_step is not None else f"no checkpoint of {self.out} was written yet")
                    raise TrainError(f"training loss is {train_loss} at step {self.step}; {ck} (lower --lr?)")
                do_eval = self.step % tc.eval_every == 0 or self.step == tc.steps
                val_loss = self.evaluate() if do_eval else None
                others = self.evaluate_others() if do_eval else dict.fromkeys(f"val_loss_{n}" for n in self.corpus.evals)
                if do_eval and not math.isfinite(val_loss):
                    raise TrainError(f"validation loss is {val_loss} at step {self.step}")
                if do_eval and tc.eval_positions and lead:
                    ppath = self.out / rundir.POSITIONS
                    append_line(ppath, json.dumps({"step": self.step, "val_loss_by_position": self.positions}))
                    rundir.written(ppath, self.step)
                if self.step % tc.log_every == 0 or do_eval:
                    dt = max(t_train, 1e-9)
                    tps = (self.tokens - tok_last) / dt
                    flops_now = self.ledger.total("model", rows="all")
                    exec_now = self.ledger.total("executed", rows="all")
                    mfu = (flops_now - flops_last) / dt / self.peak if self.peak else None
                    hfu = (exec_now - exec_last) / dt / self.peak if self.peak else None
                    t_train, tok_last, flops_last, exec_last = 0.0, self.tokens, flops_now, exec_now
                    row = {
                        "step": self.step, "tokens": self.tokens,
                        "flops": self.ledger.total("model"),
                        "flops_paper": self.ledger.total("paper"),
                        "flops_total": self.ledger.total("model", rows="all"),
                        "flops_executed": self.ledger.total("executed", rows="all"),
                        "train_loss": train_loss, "val_loss": val_loss, "lr": lr_at(self.step - 1, tc),
                        "tokens_per_s": tps,
                        "mfu": mfu, "hfu": hfu,
                        "grad_norm": float(self.grad_norm) if self.grad_norm is not None else None,
                        "grad_noise_scale": self.noise_scale_tokens(),
                        # unique_tokens, epochs (tokens / unique_tokens), epoch (without replacement)
                        **self.corpus.epoch_record(self.tokens, self.step, tc.batch_size, self.mc.n_ctx, tc.sampling),
                        **others,  # --eval-data: val_loss_NAME (null where not evaluated)
                    }
                    if lead:
                        append_line(mpath, json.dumps(row))
                        rundir.written(mpath, self.step)
                        tracker.log(row)  # TensorBoard / W&B (--tracker); a failing tracker only warns
                if do_eval or self.step in kept:
                    self.save_checkpoint()
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.3f}", **({"val": f"{val_loss:.3f}"} if val_loss is not None else {}))
                signum = self._stop_requested(stop)
                if signum:
                    if not (do_eval or self.step in kept):
                        self.save_checkpoint()
                    bar.close()
                    raise RunInterrupted(signum, self.step, str(self.out))
        bar.close()
        return row


def _say(msg: str) -> None:
    """One line on stderr that does not break a progress bar."""
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


def _progress(total: int, initial: int, enabled: bool, desc: str, position: int = 0):
    from tqdm import tqdm

    # position > 0: a run's bar under a sweep's overall bar, cleared when the run ends
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step",
                dynamic_ncols=True, mininterval=1.0, file=sys.stderr, position=position, leave=position == 0)
