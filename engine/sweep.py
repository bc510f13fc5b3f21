"""Scaling study: a grid of training runs (resumable), then the fits, plots and report.

    flopscale sweep --preset cpu-tiny --out sweeps/cpu-tiny        # the README's main job, ~10 min on 2 CPU cores
    flopscale sweep --preset cpu-tiny --out sweeps/cpu-tiny        # again: finished runs are skipped, a killed one resumes
    flopscale sweep --preset h100 --out sweeps/h100 --dry-run      # the grid and its FLOP-ledger time estimate
    torchrun --nproc-per-node 8 -m flopscale.cli sweep --preset h100 --out sweeps/h100 --data /data/owt   # DDP per run

SWEEP_DIR holds ``sweep.json`` (the manifest: preset, grid, every run's config, status and final
numbers), ``runs/<name>/`` (one ``flopscale train`` run directory each) and ``report/``
(``fits.json``, one PNG per fitted law plus ``frontier.png``, and ``report.md``, written by
``flopscale.fitting``'s ``run_fit``, the same code as ``flopscale fit SWEEP_DIR/runs --out
SWEEP_DIR/report``).

A grid is model sizes (always; shapes near a fixed aspect ratio d_model / n_layer, head dim 16
to 64, as in the paper's section 3), times dataset caps D (presets that ask for L(N, D)), times
batch sizes (presets that ask for B_crit from the steps/tokens trade-off).  Every run of a preset
trains for the same number of tokens unless the preset says otherwise, so L(N) here is the loss
at a fixed token budget, not at convergence (report.md says so).  Runs are ordered cheapest
first so that a killed sweep has already finished the most runs.

Resuming: a run whose checkpoint reached its last step is skipped; an interrupted one is resumed
by the Trainer from its last checkpoint (bit for bit on CPU); a run directory whose config differs
from the preset's is refused with one line (use another --out).

Under torchrun every rank runs the same grid in the same order and each run is DDP over all ranks;
rank 0 alone writes the manifest and the report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from . import flops as fl
from .config import ConfigError, ModelConfig, TrainConfig

# Paper comparison numbers (DESIGN.md "Reference numbers"); the fit report carries the rest.
PAPER_ALPHA_N = 0.076
PAPER_B_STAR, PAPER_ALPHA_B = 2e8, 0.21


@dataclass
class SweepPreset:
    """A named scaling study.  ``models`` are (n_layer, d_model, n_heads); the run's steps are
    ``tokens // (batch_size * n_ctx)`` for every batch size of the grid."""

    name: str
    description: str
    models: List[tuple]                    # (n_layer, d_model, n_heads), smallest first
    n_ctx: int
    tokens: int                            # training tokens of the largest model's runs
    train: Dict[str, object]               # TrainConfig fields shared by every run (batch_size included)
    tokens_exponent: float = 0.0           # smaller models train tokens * (N_max / N)^exponent
    max_tokens: List[Optional[int]] = field(default_factory=lambda: [None])  # dataset caps D (L(N, D))
    batch_sizes: Optional[List[int]] = None  # sequences per step (B_crit from S/E); None: train["batch_size"]
    evals: int = 10                        # evaluations (and checkpoints) per run
    lr_by_size: bool = False               # Kaplan's lr(N) = 0.003239 - 0.0001395 log N, scaled to train["lr"]
    assumed_flops_per_s: float = 15e9      # for --dry-run's wall-time estimate (see the preset's note)
    cpu_threads: Optional[int] = None      # torch threads for CPU runs (None: torch's default)
    note: str = ""

    def runs(self) -> List[dict]:
        """Every run of the grid: {"name", "model": ModelConfig kwargs, "train": TrainConfig kwargs}."""
        out = []
        bss = self.batch_sizes or [self.train["batch_size"]]
        n_max = max(ModelConfig(n_layer=L, d_model=d, n_heads=H).N for L, d, H in self.models)
        for (L, d, H) in self.models:
            n = ModelConfig(n_layer=L, d_model=d, n_heads=H).N
            tokens = int(self.tokens * (n_max / n) ** self.tokens_exponent)
            for cap in self.max_tokens:
                for bs in bss:
                    ga = int(self.train.get("grad_accum", 1))
                    steps = max(1, tokens // (bs * self.n_ctx))
                    tr = dict(self.train, batch_size=bs, steps=steps,
                              eval_every=max(1, steps // self.evals), max_tokens=cap,
                              warmup=max(1, min(int(self.train.get("warmup", 0)) or steps // 10, steps // 2)))
                    if bs % ga:
                        tr["grad_accum"] = 1
                    mc = dict(n_layer=L, d_model=d, n_heads=H, n_ctx=self.n_ctx)
                    if self.lr_by_size:
                        N = ModelConfig(**mc).N
                        # Kaplan et al. eq. (D.1); relative to its value at N = 1e5 so train["lr"] sets the scale
                        k = (0.003239 - 0.0001395 * math.log(N)) / (0.003239 - 0.0001395 * math.log(1e5))
                        tr["lr"] = float(f"{self.train['lr'] * k:.3g}")
                    name = f"L{L}-d{d}" + (f"-D{_si(cap)}" if len(self.max_tokens) > 1 else "") + \
                           (f"-B{bs}" if self.batch_sizes and len(self.batch_sizes) > 1 else "")
                    out.append({"name": name, "model": mc, "train": tr})
        return out


def _si(n: Optional[int]) -> str:
    if n is None:
        return "all"
    for unit, k in (("G", 10 ** 9), ("M", 10 ** 6), ("k", 10 ** 3)):
        if n >= k and n % (k // 100 or 1) == 0:
            return f"{n / k:g}{unit}"
    return str(n)


# ---------------------------------------------------------------------------------------------
# Presets.  Shapes keep d_model / n_layer near 32 (CPU) or 64 (GPU) and head dim 16-64.
# ---------------------------------------------------------------------------------------------
_CPU_TRAIN = dict(data="stdlib", tokenizer="bpe-4096", batch_size=16, grad_accum=2, lr=3e-3, warmup=40,
                  eval_batches=8, noise_scale=True, device="cpu", backend="torch", dtype="float32")
_GPU_TRAIN = dict(data="stdlib", tokenizer="bpe-4096", batch_size=64, grad_accum=2, lr=1e-3,
                  eval_batches=20, noise_scale=True, device="cuda", backend="triton", dtype="bfloat16")
_GPU_MODELS = [(2, 128, 2), (4, 256, 4), (6, 384, 6), (8, 512, 8), (10, 640, 10), (12, 768, 12)]

PRESETS: Dict[str, SweepPreset] = {
    "cpu-tiny": SweepPreset(
        name="cpu-tiny",
        description="L(N), L(C) frontier and B_noise(L) on 2 CPU cores in under 10 minutes",
        models=[(1, 32, 2), (2, 40, 2), (2, 64, 4), (3, 96, 6), (4, 128, 8)],  # N 12k .. 786k (1.8 decades)
        # Every size trains on the same 655k tokens (640 steps of 16 x 64), so L(N) is read at a
        # fixed D.  (Training the small sizes longer, tokens x (N_max/N)^0.5, was tried: they then
        # beat the undertrained large ones and L(N) came out inverted.)
        n_ctx=64, tokens=640 * 16 * 64, train=_CPU_TRAIN, evals=16, assumed_flops_per_s=25e9,
        # One thread: on 2 cores shared with other work, two OpenMP threads spin at every op's
        # barrier while one is descheduled; measured 593 ms/step with 2 threads against 117 ms/step
        # with 1 for the L3-d96 run (load average 4 on 2 cores).  `--threads 2` on an idle machine.
        cpu_threads=1,
        note="640 steps of 16 x 64 tokens per size (655k tokens, 0.07 epochs of the stdlib corpus: no "
             "repetition); micro-batches of 8 give the noise scale; stdlib BPE-4096; one torch thread.",
    ),
    "h100": SweepPreset(
        name="h100",
        description="L(N), L(C) frontier and B_noise(L) up to a GPT-2-small-class model on one H100",
        models=_GPU_MODELS, n_ctx=1024, tokens=200 * 2 ** 20, train=_GPU_TRAIN, evals=20, lr_by_size=True,
        assumed_flops_per_s=0.35 * 989e12,
        note="N 393k .. 85M (2.3 decades), 200M tokens per size at 64 x 1024 tokens per step. The "
             "stdlib corpus holds ~8.9M training tokens, so pass --data with a larger corpus (a folder of "
             "text or .bin shards) to stay single-epoch. Wall-time estimate assumes 35% MFU in bf16.",
    ),
    "h100-nd": SweepPreset(
        name="h100-nd",
        description="L(N, D): four sizes x four dataset caps, early-stopped, on one H100",
        models=[(2, 128, 2), (4, 256, 4), (6, 384, 6), (8, 512, 8)], n_ctx=1024, tokens=100 * 2 ** 20,
        train=_GPU_TRAIN, max_tokens=[2 ** 20, 2 ** 22, 2 ** 24, None], evals=40, lr_by_size=True,
        assumed_flops_per_s=0.35 * 989e12,
        note="100M tokens per run over dataset caps of 1M, 4M, 16M tokens and the whole corpus (repeated "
             "epochs overfit; the best val loss is the early-stopped L(N, D)). Assumes 35% MFU in bf16.",
    ),
    "h100-bcrit": SweepPreset(
        name="h100-bcrit",
        description="B_crit(L): two sizes x six batch sizes (steps/tokens trade-off) plus the noise scale",
        models=[(4, 256, 4), (8, 512, 8)], n_ctx=1024, tokens=100 * 2 ** 20,
        train=_GPU_TRAIN, batch_sizes=[8, 16, 32, 64, 128, 256], evals=40,
        lr_by_size=True, assumed_flops_per_s=0.30 * 989e12,
        note="Batch sizes 8k .. 262k tokens at a fixed 100M-token budget; B_crit from (S, E) to reach "
             "each loss (Kaplan eq. 5.4/5.5) beside B_noise. Assumes 30% MFU (small batches run less efficiently).",
    ),
}

# Test-only presets are registered here by tests (a tiny grid that runs in seconds).
_EXTRA_PRESETS: Dict[str, SweepPreset] = {}


def register_preset(p: SweepPreset) -> None:
    """Add a preset by name (tests register tiny ones; users may register their own)."""
    _EXTRA_PRESETS[p.name] = p


def get_preset(name: str) -> SweepPreset:
    allp = {**PRESETS, **_EXTRA_PRESETS}
    if name in allp:
        return allp[name]
    # A preset file: a JSON object with SweepPreset's fields (models as [n_layer, d_model, n_heads] lists)
    p = Path(name)
    if name.endswith(".json") and p.is_file():
        try:
            d = json.loads(p.read_text())
            d["models"] = [tuple(m) for m in d["models"]]
            return SweepPreset(**d)
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise ConfigError(f"preset file {name}: not a valid sweep preset ({type(e).__name__}: {e})") from None
    raise ConfigError(f"unknown sweep preset {name!r}; choose one of {', '.join(allp)} or a preset .json file")


# ---------------------------------------------------------------------------------------------
# Cost model (the FLOP ledger's exact per-step counts, not 6ND)
# ---------------------------------------------------------------------------------------------
def run_flops(mc: ModelConfig, tc: TrainConfig) -> dict:
    """{"nonembedding", "all"} model-view FLOPs of a whole run, from ``expected_rows`` per
    micro-batch times the micro-batches, plus the optimizer (flops.optimizer_flops)."""
    mb = tc.batch_size // tc.grad_accum
    rows = fl.expected_rows(mc, mb, mc.n_ctx, "model")
    per_micro_ne = sum(rows[r][0] + rows[r][1] for r in fl.NONEMBEDDING_ROWS)
    per_micro_all = sum(f + b for f, b in rows.values())
    # AdamW over every parameter: blocks, embeddings (tied), LayerNorms, biases
    d, L, V, T = mc.d_model, mc.n_layer, mc.n_vocab, mc.n_ctx
    da, dff = mc.d_attn, mc.d_ff
    matrices = (V + T) * d + L * (3 * d * da + da * d + 2 * d * dff)  # decayed (dim >= 2), train.make_optimizer
    vectors = L * (3 * da + d + dff + d + 4 * d) + 2 * d                # biases and LayerNorm gains
    opt = fl.optimizer_flops(matrices + vectors, matrices if tc.weight_decay > 0 else 0, tc.grad_clip > 0)
    k = tc.steps * tc.grad_accum
    return {"nonembedding": per_micro_ne * k, "all": per_micro_all * k + opt * tc.steps}


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------
def _run_status(run_dir: Path, steps: int) -> tuple:
    """("done" | "partial" | "pending", last logged metrics row or None), from the files alone."""
    m = run_dir / "metrics.jsonl"
    last = None
    if m.exists():
        for ln in m.read_text().splitlines():
            try:
                last = json.loads(ln)
            except json.JSONDecodeError:
                pass
    if last is not None and last.get("step") == steps and (run_dir / "ckpt.pt").exists():
        return "done", last
    return ("partial" if (run_dir / "config.json").exists() else "pending"), last


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
    elif out.is_dir() and any(p for p in out.iterdir() if p.name not in ("runs", "report")):
        raise ConfigError(f"{out} is not empty and holds no sweep.json; use a new or empty --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create sweep directory {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"sweep directory {out} is not writable")


def _write_manifest(out: Path, preset: SweepPreset, entries: List[dict], extra: dict) -> None:
    from .train import atomic_write_text, code_version

    rec = {"preset": preset.name, "description": preset.description, "note": preset.note,
           "code_version": code_version(), "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "grid": {"models": [list(m) for m in preset.models], "n_ctx": preset.n_ctx, "tokens_per_run": preset.tokens,
                    "max_tokens": preset.max_tokens, "batch_sizes": preset.batch_sizes or [preset.train["batch_size"]]},
           "report_dir": "report", "runs": entries, **extra}
    atomic_write_text(out / "sweep.json", json.dumps(rec, indent=2) + "\n")


def run_grid(preset: SweepPreset, out: str | Path, overrides: Optional[dict] = None, progress: bool = True,
             fit: bool = True, n_boot: int = 200, threads: Optional[int] = None) -> dict:
    """Run (or resume) every run of ``preset`` under ``out``/runs, then fit and report.
    Returns the manifest dict.  ``overrides``: TrainConfig fields applied to every run."""
    from tqdm import tqdm

    from .data import Corpus, load_corpus
    from .train import Trainer, broadcast_object, init_distributed

    out = Path(out)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    specs = preset.runs()
    for s in specs:
        s["train"] = dict(s["train"], **overrides)
    # validate every config before any work (types, divisibility, unknown fields)
    cfgs = [(s, ModelConfig(**s["model"], n_vocab=257), TrainConfig.from_dict(s["train"])) for s in specs]
    rank, world, _ = init_distributed(cfgs[0][2].device)
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
    threads = threads or preset.cpu_threads
    if threads and cfgs[0][2].device == "cpu":
        import torch

        torch.set_num_threads(threads)
    lead = rank == 0
    err = None
    if lead:
        try:
            _check_sweep_dir(out, preset)
        except ConfigError as e:
            err = str(e)
    err = broadcast_object(err, world)  # every rank stops on rank 0's one-line error
    if err:
        raise ConfigError(err)
    t_start = time.perf_counter()
    # One corpus load (BPE training and tokenization happen once, then the cache); each run's D
    # cap is a slice of the same token array.
    tc0 = cfgs[0][2]
    if lead:
        say(f"sweep {preset.name}: {len(specs)} runs -> {out}; loading data {tc0.data!r} ({tc0.tokenizer})", progress)
    full = None
    if lead:
        full = load_corpus(tc0.data, tc0.tokenizer, None)
    broadcast_object(None, world)  # rank 0 has filled the token cache
    if not lead:
        full = load_corpus(tc0.data, tc0.tokenizer, None)
    t_data = time.perf_counter() - t_start

    def corpus_for(tc: TrainConfig) -> Corpus:
        if (tc.data, tc.tokenizer) != (tc0.data, tc0.tokenizer):
            return load_corpus(tc.data, tc.tokenizer, tc.max_tokens)
        train = full.train if tc.max_tokens is None else full.train[:tc.max_tokens]
        prov = dict(full.provenance, n_train_tokens=int(train.size))
        return Corpus(train=train, val=full.val, vocab_size=full.vocab_size, provenance=prov)

    # real vocabulary for the cost model; cheapest runs first
    jobs = []
    for s, mc, tc in cfgs:
        mc = ModelConfig(**s["model"], n_vocab=full.vocab_size)
        jobs.append((s, mc, tc, run_flops(mc, tc)))
    jobs.sort(key=lambda j: j[3]["all"])
    n_train = full.n_train_tokens
    if lead and preset.tokens > n_train and all(t.max_tokens is None for _, _, t, _ in jobs):
        say(f"warning: {preset.tokens:,} tokens per run repeat this corpus's {n_train:,} training tokens "
            f"{preset.tokens / n_train:.1f}x; pass --data with a larger corpus for single-epoch runs", True)

    status = {}
    if lead:
        status = {s["name"]: _run_status(out / "runs" / s["name"], tc.steps)[0] for s, _, tc, _ in jobs}
    status = broadcast_object(status, world)
    total = sum(j[3]["all"] for j in jobs)
    done_flops = sum(j[3]["all"] for j in jobs if status[j[0]["name"]] == "done")
    n_done = sum(1 for v in status.values() if v == "done")
    if lead and n_done:
        say(f"resuming: {n_done} of {len(jobs)} runs already finished"
            + (f", {sum(1 for v in status.values() if v == 'partial')} interrupted" if 'partial' in status.values() else ""),
            progress)
    # Overall progress in FLOPs (the ledger's exact per-run counts), so the ETA weighs big runs right.
    bar = tqdm(total=total, initial=done_flops, unit="FLOP", unit_scale=True, desc=f"sweep {preset.name}",
               disable=not (progress and lead), position=0, dynamic_ncols=True, file=sys.stderr)
    entries = []
    t_train = time.perf_counter()
    for s, mc, tc, cost in jobs:
        rd = out / "runs" / s["name"]
        ent = {"name": s["name"], "dir": f"runs/{s['name']}", "model": mc.to_dict(), "train": tc.to_dict(),
               "N": mc.N, "expected_flops": cost}
        if status[s["name"]] != "done":
            bar.set_postfix_str(f"run {len(entries) + 1}/{len(jobs)} {s['name']} (N={mc.N:,})")
            tr = Trainer(mc, tc, rd, progress=progress, corpus=corpus_for(tc), progress_position=1)
            tr.run()
            bar.update(cost["all"])
        if lead:
            ent["status"] = "done"
            ent["final"] = _summary(rd)
        entries.append(ent)
        if lead:
            _write_manifest(out, preset, entries + [
                {"name": j[0]["name"], "dir": f"runs/{j[0]['name']}", "N": j[1].N, "status": "pending"}
                for j in jobs[len(entries):]], {"timing_s": {"data": round(t_data, 1)}})
    bar.close()
    t_runs = time.perf_counter() - t_train
    man = {}
    if lead:
        extra = {"timing_s": {"data": round(t_data, 1), "runs_this_invocation": round(t_runs, 1)}}
        if fit:
            t0 = time.perf_counter()
            extra["fit"] = fit_and_report(out, n_boot=n_boot, progress=progress)
            extra["timing_s"]["fit_report"] = round(time.perf_counter() - t0, 1)
        extra["timing_s"]["total_this_invocation"] = round(time.perf_counter() - t_start, 1)
        _write_manifest(out, preset, entries, extra)
        man = json.loads((out / "sweep.json").read_text())
    return man


def say(msg: str, enabled: bool = True) -> None:
    if enabled:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Fit and report: flopscale.fitting's own CLI entry point, on SWEEP_DIR/runs -> SWEEP_DIR/report
# ---------------------------------------------------------------------------------------------
def fit_and_report(out: Path, n_boot: int = 200, progress: bool = True) -> dict:
    """Fit every law the runs support and write SWEEP_DIR/report (fits.json, PNGs, report.md).
    Returns a short summary (alpha_N with its interval, rmse, B_crit) for the manifest."""
    from flopscale.fitting.cli import add_fit_arguments, run_fit

    report = out / "report"
    args = add_fit_arguments(argparse.ArgumentParser()).parse_args(
        [str(out / "runs"), "--out", str(report), "--n-boot", str(n_boot), "--quiet"])
    try:
        with warnings.catch_warnings():  # overflow in bootstrap resamples far from the optimum is expected
            warnings.simplefilter("ignore", RuntimeWarning)
            run_fit(args)
    except ValueError as e:  # FitError: the runs are kept; say how to fit again
        raise ValueError(f"the runs finished but the fit failed ({e}); "
                         f"retry with `flopscale fit {out / 'runs'} --out {report}`") from None
    fits = json.loads((report / "fits.json").read_text())
    by = {f.get("name", f["law"]): f for f in fits.get("fits", [])}
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


def print_summary(summ: dict, out: Path) -> None:
    lines = []
    if "alpha_N" in summ:
        lo, hi = summ["alpha_N_ci95"]
        lines.append(f"L(N):  alpha_N = {summ['alpha_N']:.4f}  (95% CI [{lo:.4f}, {hi:.4f}])   paper 0.076"
                     f"   rmse_log {summ['rmse_log_N']:.4f}")
    if "alpha_C" in summ:
        lo, hi = summ["alpha_C_ci95"]
        lines.append(f"L(C):  alpha_C = {summ['alpha_C']:.4f}  (95% CI [{lo:.4f}, {hi:.4f}])   paper 0.050 (C_min)")
    if "alpha_B" in summ:
        lo, hi = summ["alpha_B_ci95"]
        lines.append(f"B_crit(L): B_star = {summ['B_star']:.3g} tokens, alpha_B = {summ['alpha_B']:.3f} "
                     f"(95% CI [{lo:.3f}, {hi:.3f}])   paper B_star 2e8 tokens, alpha_B 0.21")
    lines.append(f"report: {out / 'report' / 'report.md'}")
    print("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def add_sweep_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    names = ", ".join(PRESETS)
    p.add_argument("--preset", type=str, required=True, help=f"grid to run: {names}, or a preset .json file")
    p.add_argument("--out", type=str, required=True, help="sweep directory (an existing one is resumed)")
    p.add_argument("--data", type=str, default=None, help="override the preset's data (stdlib, text, folder, .bin shards)")
    p.add_argument("--tokenizer", type=str, default=None, help="override the preset's tokenizer (bpe-V or a tokenizer.json)")
    p.add_argument("--device", type=str, default=None, help="override the preset's device (cpu, cuda)")
    p.add_argument("--backend", type=str, default=None, help="override the preset's backend (torch, triton, cuda)")
    p.add_argument("--dtype", type=str, default=None, help="override the preset's dtype (float32, bfloat16, float16)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (default: the preset's; cpu-tiny uses 1)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for the fits' 95%% intervals")
    p.add_argument("--no-fit", action="store_true", help="run the grid only (fit later with `flopscale fit SWEEP_DIR/runs`)")
    p.add_argument("--dry-run", action="store_true", help="print the grid and its estimated FLOPs and wall time, run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def dry_run(preset: SweepPreset, overrides: dict, vocab: int = 4096) -> int:
    """Print the grid with the FLOP ledger's exact counts and a wall-time *estimate* at the
    preset's assumed sustained FLOP/s (an assumption, stated; not a measurement)."""
    rows, tot = [], 0
    for s in preset.runs():
        tr = dict(s["train"], **{k: v for k, v in overrides.items() if v is not None})
        mc, tc = ModelConfig(**s["model"], n_vocab=vocab), TrainConfig.from_dict(tr)
        c = run_flops(mc, tc)
        tot += c["all"]
        rows.append(f"{s['name']:<22}{mc.N:>14,}{tc.steps:>8}{tc.batch_size * mc.n_ctx:>10,}"
                    f"{c['nonembedding']:>14.3g}{c['all']:>14.3g}{c['all'] / preset.assumed_flops_per_s / 60:>10.1f}")
    print(f"preset {preset.name}: {preset.description}\n{preset.note}")
    print(f"{'run':<22}{'N':>14}{'steps':>8}{'tok/step':>10}{'C (non-emb)':>14}{'C (all)':>14}{'est. min':>10}")
    print("\n".join(rows))
    print(f"total {tot:.3g} FLOPs (model view, vocab {vocab}); estimated {tot / preset.assumed_flops_per_s / 60:.1f} min "
          f"at an assumed {preset.assumed_flops_per_s / 1e12:.3g} TFLOP/s sustained (an estimate, not a measurement; "
          "evals, checkpoints and data loading excluded)")
    return 0


def run_sweep(args) -> int:
    """flopscale sweep: run a preset's grid (resumable), then fit and report."""
    preset = get_preset(args.preset)
    if args.n_boot < 0:
        raise ConfigError(f"--n-boot must be >= 0, got {args.n_boot}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    overrides = {"data": args.data, "tokenizer": args.tokenizer, "device": args.device, "backend": args.backend,
                 "dtype": args.dtype}
    if args.dry_run:
        return dry_run(preset, overrides)
    out = Path(args.out)
    t0 = time.perf_counter()
    man = run_grid(preset, out, overrides, progress=not args.quiet, fit=not args.no_fit, n_boot=args.n_boot,
                    threads=args.threads)
    if man:
        if "fit" in man:
            print_summary(man["fit"], out)
        print(f"sweep {preset.name}: {len(man['runs'])} runs in {out}/runs, manifest {out}/sweep.json; "
              f"this invocation took {time.perf_counter() - t0:.0f} s")
    return 0
