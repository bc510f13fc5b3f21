"""Scaling study: run a preset's grid of training runs (resumable), then the fits, plots and report.

    flopscale sweep --preset cpu-tiny --out sweeps/cpu-tiny        # the README's main job, ~5 min on 2 CPU cores
    flopscale sweep --preset cpu-tiny --out sweeps/cpu-tiny        # again: finished runs are skipped, a killed one resumes
    flopscale sweep --preset h100 --out sweeps/h100 --dry-run      # the grid and its FLOP-ledger time estimate
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

Under torchrun every rank runs the same grid in the same order and each run is DDP over all ranks;
rank 0 alone writes the manifest and the report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

from flopscale.fileio import atomic_write_json

from . import flops as fl
from . import rundir
from .config import ConfigError, ModelConfig, TrainConfig, add_config_arguments, config_values
from .dist import broadcast_object, init_distributed
from .presets import PRESETS, SweepPreset, get_preset

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
    # AdamW over every parameter (blocks, tied embeddings, LayerNorms, biases), counted on the
    # model itself, built on the meta device (no memory, no init cost), by the Trainer's code.
    import torch

    from .model import GPT
    from .train import optimizer_step_flops

    with torch.device("meta"):
        opt = optimizer_step_flops(GPT(mc), tc)
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
    rec = {"preset": preset.name, "description": preset.description, "note": preset.note,
           "code_version": rundir.code_version(), "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "grid": {"models": [list(m) for m in preset.models], "n_ctx": preset.n_ctx, "tokens_per_run": preset.tokens,
                    "max_tokens": preset.max_tokens, "batch_sizes": preset.batch_sizes or [preset.train["batch_size"]]},
           "report_dir": "report", "runs": entries, **extra}
    atomic_write_json(out / "sweep.json", rec)


def run_grid(preset: SweepPreset, out: str | Path, overrides: Optional[dict] = None, progress: bool = True,
             fit: bool = True, n_boot: int = 200, threads: Optional[int] = None) -> dict:
    """Run (or resume) every run of ``preset`` under ``out``/runs, then fit and report.
    Returns the manifest dict.  ``overrides``: TrainConfig fields applied to every run."""
    from tqdm import tqdm

    from .data import Corpus, load_corpus
    from .train import Trainer

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
# Fit and report: flopscale.fitting.fit_and_report on SWEEP_DIR/runs -> SWEEP_DIR/report
# ---------------------------------------------------------------------------------------------
def fit_and_report(out: Path, n_boot: int = 200, progress: bool = True) -> dict:
    """Fit every law the runs support and write SWEEP_DIR/report (fits.json, PNGs, report.md).
    Returns a short summary (alpha_N with its interval, rmse, B_crit) for the manifest."""
    from flopscale import fitting

    report = out / "report"
    try:
        with warnings.catch_warnings():  # overflow in bootstrap resamples far from the optimum is expected
            warnings.simplefilter("ignore", RuntimeWarning)
            fits = fitting.fit_and_report([str(out / "runs")], out=str(report), n_boot=n_boot, quiet=True)
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
# TrainConfig fields a sweep may override for every run (the grid's own fields, such as steps and
# batch_size, come from the preset).
OVERRIDABLE = ("data", "tokenizer", "device", "backend", "dtype", "cuda_attention", "cuda_ffn_backward",
               "triton_ffn_loads")


def add_sweep_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    names = ", ".join(PRESETS)
    p.add_argument("--preset", type=str, required=True, help=f"grid to run: {names}, or a preset .json file")
    p.add_argument("--out", type=str, required=True, help="sweep directory (an existing one is resumed)")
    # Overrides of the preset's TrainConfig fields for every run, generated from the dataclass
    # (engine/config.py); unset flags keep the preset's values.
    add_config_arguments(p, TrainConfig, only=OVERRIDABLE, no_defaults=True,
                         titles={"data": "override the preset's data", "run": "override the preset's run settings",
                                 "kernels": "override the preset's kernel variants"})
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
    overrides = config_values(args, OVERRIDABLE)
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
