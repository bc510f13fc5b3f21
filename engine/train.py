"""One training run with measured compute.

    flopscale train --n-layer 2 --d-model 64 --n-heads 4 --n-ctx 128 --steps 200 --out runs/nano
    flopscale train ... --out runs/nano      # the same command again resumes where it stopped

RUN_DIR gets ``config.json`` (model and training config, N, data provenance, code version),
``metrics.jsonl`` (one object per logged step, DESIGN.md's keys), ``flops.json`` (the ledger's
rows in three views, forward and backward) and ``ckpt.pt``.  Checkpoints are written atomically
(temporary file, then rename) at every eval and at the end; the batches of a step depend only on
(seed, step), so on CPU a resumed run continues bit for bit as if it had never stopped.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import flops as fl
from .config import ConfigError, ModelConfig, TrainConfig
from .data import load_corpus
from .model import GPT


class TrainError(RuntimeError):
    """A run that cannot go on (NaN loss, a config that differs from the run on disk)."""


# Dense bf16/fp16 tensor-core peaks (FLOP/s) by device-name fragment, for MFU.  None elsewhere.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def peak_flops(device: str, dtype: str):
    if not device.startswith("cuda") or dtype == "float32" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to lr * min_lr_frac at ``steps``."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    frac = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    return tc.lr * (tc.min_lr_frac + (1 - tc.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def code_version() -> str:
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


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def make_optimizer(model: GPT, tc: TrainConfig):
    # Decay matmul weights and embeddings (dim >= 2); never biases or LayerNorm gains.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": other, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=1e-8, foreach=False)
    n_params = sum(p.numel() for p in model.parameters())
    n_decayed = sum(p.numel() for p in decay) if tc.weight_decay > 0 else 0
    return opt, fl.optimizer_flops(n_params, n_decayed, tc.grad_clip > 0)


class Trainer:
    """Holds a run's state; ``run()`` trains to ``steps`` and returns the last metrics row."""

    def __init__(self, mc: ModelConfig, tc: TrainConfig, out: str | Path, progress: bool = True, corpus=None):
        self.tc, self.out, self.progress = tc, Path(out), progress
        self.corpus = corpus if corpus is not None else load_corpus(tc.data, tc.tokenizer, tc.max_tokens)
        if mc.n_vocab != self.corpus.vocab_size:
            mc = ModelConfig.from_dict({**mc.to_dict(), "n_vocab": self.corpus.vocab_size})
        self.mc = mc
        torch.manual_seed(tc.seed)
        self.device = torch.device(tc.device)
        self.model = GPT(mc, backend=tc.backend).to(self.device)
        self.opt, self.opt_flops = make_optimizer(self.model, tc)
        self.ledger = fl.FlopLedger()
        self.step, self.tokens = 0, 0
        self.peak = peak_flops(tc.device, tc.dtype)
        self.autocast_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(tc.dtype)

    # -- run directory ---------------------------------------------------------------------
    def config_record(self) -> dict:
        return {
            "model": self.mc.to_dict(), "train": self.tc.to_dict(), "N": self.mc.N,
            "n_params_total": self.model.num_params(non_embedding=False),
            "data": self.corpus.provenance, "code_version": code_version(),
            "tokens_per_step": self.tc.batch_size * self.mc.n_ctx,
        }

    def _check_or_write_config(self) -> bool:
        """Write config.json for a new run; for an existing one, refuse a different config.
        Returns True when there is a checkpoint to resume from."""
        self.out.mkdir(parents=True, exist_ok=True)
        cpath = self.out / "config.json"
        rec = self.config_record()
        if cpath.exists():
            try:
                old = json.loads(cpath.read_text())
            except json.JSONDecodeError:
                raise TrainError(f"{cpath} is corrupt; move the run directory aside to start afresh") from None
            diffs = [f"{sec}.{k}: {old.get(sec, {}).get(k)!r} -> {v!r}"
                     for sec in ("model", "train") for k, v in rec[sec].items() if old.get(sec, {}).get(k) != v]
            if diffs:
                raise TrainError(f"{self.out} holds a run with a different configuration ({'; '.join(diffs)}); "
                                 "use another --out or the same flags")
            return (self.out / "ckpt.pt").exists()
        atomic_write_text(cpath, json.dumps(rec, indent=2) + "\n")
        return False

    def save_checkpoint(self) -> None:
        atomic_torch_save({
            "step": self.step, "tokens": self.tokens, "model": self.model.state_dict(),
            "opt": self.opt.state_dict(), "ledger": self.ledger.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }, self.out / "ckpt.pt")
        self._write_flops_json()

    def load_checkpoint(self) -> None:
        try:
            ck = torch.load(self.out / "ckpt.pt", map_location=self.device, weights_only=False)
        except Exception as e:
            raise TrainError(f"checkpoint {self.out / 'ckpt.pt'} is unreadable ({type(e).__name__}); "
                             "move it aside to restart the run") from None
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        self.ledger.load_state_dict(ck["ledger"])
        torch.set_rng_state(ck["torch_rng"])
        self.step, self.tokens = ck["step"], ck["tokens"]
        # Rows logged after the checkpoint were lost work; the resumed run writes them again.
        mpath = self.out / "metrics.jsonl"
        if mpath.exists():
            keep = [ln for ln in mpath.read_text().splitlines() if ln.strip() and _row_step(ln) <= self.step]
            atomic_write_text(mpath, "".join(ln + "\n" for ln in keep))

    def _write_flops_json(self) -> None:
        led = self.ledger
        rec = {
            "convention": "FLOPs (multiply-add = 2); backward includes the optimizer row",
            "steps": self.step, "tokens": self.tokens, "N": self.mc.N,
            "views": led.to_dict(),
            "totals": {v: {"nonembedding": led.total(v), "all": led.total(v, rows="all")} for v in fl.VIEWS},
            "paper_6ND": 6 * self.mc.N * self.tokens,
        }
        atomic_write_text(self.out / "flops.json", json.dumps(rec, indent=2) + "\n")

    # -- steps -----------------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        tc, losses = self.tc, []
        for i in range(tc.eval_batches):
            x, y = self.corpus.batch("val", i, 0, tc.batch_size // tc.grad_accum, self.mc.n_ctx, tc.seed)
            with self._autocast():
                _, loss = self.model(x.to(self.device), y.to(self.device))
            losses.append(loss.item())
        self.model.train()
        return sum(losses) / len(losses)

    def train_step(self) -> float:
        tc, mb = self.tc, self.tc.batch_size // self.tc.grad_accum
        lr = lr_at(self.step, tc)
        for g in self.opt.param_groups:
            g["lr"] = lr
        total = 0.0
        with self.ledger:
            for micro in range(tc.grad_accum):
                x, y = self.corpus.batch("train", self.step, micro, mb, self.mc.n_ctx, tc.seed)
                with self._autocast():
                    _, loss = self.model(x.to(self.device), y.to(self.device))
                (loss / tc.grad_accum).backward()
                total += loss.item()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
            self.opt.step()
            fl.record_step({"model": {"optimizer": (0, self.opt_flops)}, "executed": {"optimizer": (0, self.opt_flops)}})
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += tc.batch_size * self.mc.n_ctx
        return total / tc.grad_accum

    def run(self) -> dict:
        tc = self.tc
        if self._check_or_write_config():
            self.load_checkpoint()
        if self.step >= tc.steps:
            return {"step": self.step, "complete": True}
        mpath = self.out / "metrics.jsonl"
        bar = _progress(total=tc.steps, initial=self.step, enabled=self.progress, desc=self.out.name)
        row = {}
        with open(mpath, "a") as mf:
            # Throughput counts training steps only (evals and checkpoints excluded).
            t_train, tok_last, flops_last = 0.0, self.tokens, self.ledger.total("model", rows="all")
            while self.step < tc.steps:
                t0 = time.perf_counter()
                train_loss = self.train_step()
                t_train += time.perf_counter() - t0
                if not math.isfinite(train_loss):
                    raise TrainError(f"training loss is {train_loss} at step {self.step}; "
                                     f"the last good checkpoint in {self.out} is kept (lower --lr?)")
                do_eval = self.step % tc.eval_every == 0 or self.step == tc.steps
                val_loss = self.evaluate() if do_eval else None
                if do_eval and not math.isfinite(val_loss):
                    raise TrainError(f"validation loss is {val_loss} at step {self.step}")
                if self.step % tc.log_every == 0 or do_eval:
                    dt = max(t_train, 1e-9)
                    tps = (self.tokens - tok_last) / dt
                    flops_now = self.ledger.total("model", rows="all")
                    mfu = (flops_now - flops_last) / dt / self.peak if self.peak else None
                    t_train, tok_last, flops_last = 0.0, self.tokens, flops_now
                    row = {
                        "step": self.step, "tokens": self.tokens,
                        "flops": self.ledger.total("model"),
                        "flops_total": self.ledger.total("model", rows="all"),
                        "flops_executed": self.ledger.total("executed", rows="all"),
                        "train_loss": train_loss, "val_loss": val_loss, "lr": lr_at(self.step - 1, tc),
                        "tokens_per_s": tps,
                        "mfu": mfu,
                        "grad_noise_scale": None,
                    }
                    mf.write(json.dumps(row) + "\n")
                    mf.flush()
                if do_eval:
                    self.save_checkpoint()
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.3f}", **({"val": f"{val_loss:.3f}"} if val_loss is not None else {}))
        bar.close()
        return row


def _row_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line is dropped


def _progress(total: int, initial: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step",
                dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
