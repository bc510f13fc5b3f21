"""`flopscale plan` and `flopscale backtest`: fitted laws to a training plan, and the laws' own error.

    flopscale plan --prior chinchilla --budget 1e21                         # N_opt, D_opt, shape, batch, lr, steps
    flopscale plan --fits sweeps/s/report/fits.json --budget 1.6e13 --run sweeps/s/runs/L2-d64-C1.3T --json -
    flopscale plan --prior epoch --gpu-hours 1000 --peak-tflops 989 --mfu 0.4 --emit-config
    flopscale plan --prior chinchilla --budget 1e21 --unique-tokens 5e9     # the data-constrained law
    flopscale backtest --csv points.csv --law chinchilla --split C=1e20 --json -
    flopscale backtest sweeps/s --law nd --split N=1e5

The orchestration layer over fitting/plan.py and fitting/backtest.py (which compute and return plain
dicts): it supplies what fitting/ may not import, the model shape's exact N and training FLOPs per
token (engine/flops.py, the ledger's model view) and the measured throughput of a finished run
(its metrics.jsonl tokens_per_s), and turns a plan into `flopscale train` flags.

Throughput, in order: --run RUN_DIR (the run's median tokens_per_s over its second half times its
exact FLOPs per token: the FLOP/s it sustained, assumed to carry over to the planned shape), else
--tokens-per-s (taken as the planned model's), else --peak-tflops with --mfu.  --gpu-hours H turns
that FLOP/s into the budget: the law's C whose D_opt tokens take H hours at the plan's tokens/s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from typing import Dict, Optional

import numpy as np

from flopscale.fileio import atomic_write_text

DEFAULT_N_CTX = 1024     # the paper's context (flopscale flops's default) when no run is given
DEFAULT_N_VOCAB = 50257  # GPT-2's BPE, likewise


# ---------------------------------------------------------------------------------------------
# The exact N and FLOPs per token of a shape (engine/flops.py), for fitting/plan.py
# ---------------------------------------------------------------------------------------------
def shape_fns(n_vocab: int) -> Dict:
    from flopscale.engine import flops as fl
    from flopscale.engine.config import ModelConfig

    def cfg(shape, n_ctx):
        return ModelConfig(n_layer=int(shape["n_layer"]), d_model=int(shape["d_model"]), n_heads=int(shape["n_heads"]),
                           d_ff=int(shape["d_ff"]), n_ctx=int(n_ctx), n_vocab=int(n_vocab))

    def n_params(shape, n_ctx):
        c = cfg(shape, n_ctx)
        return {"nonembedding": fl.non_embedding_params(c), "all": int(sum(fl.table1_params(c).values()))}

    return {"n_params": n_params, "flops_per_token": lambda shape, n_ctx: flops_per_token(cfg(shape, n_ctx))}


def flops_per_token(cfg) -> Dict[str, float]:
    """Training FLOPs per token (forward + backward, model view, a full n_ctx sequence): the
    non-embedding rows (the paper's C) and every row (embedding, LayerNorm, loss, ...; the optimizer
    step is per step, not per token, and left out)."""
    from flopscale.engine import flops as fl

    rows = fl.expected_rows(cfg, 1, cfg.n_ctx, "model")
    T = cfg.n_ctx
    return {"nonembedding": sum(sum(rows[r]) for r in fl.NONEMBEDDING_ROWS) / T,
            "all": sum(sum(v) for v in rows.values()) / T}


def run_throughput(run_dir: str) -> Dict:
    """{"flops_per_s", "tokens_per_s_run", "mfu_run", "source", "n_ctx", "n_vocab"} of a finished run."""
    from flopscale.engine.config import ModelConfig

    cpath, mpath = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "metrics.jsonl")
    if not (os.path.isfile(cpath) and os.path.isfile(mpath)):
        raise ValueError(f"--run {run_dir}: not a run directory (needs config.json and metrics.jsonl)")
    try:
        with open(cpath) as f:
            mc = ModelConfig.from_dict(json.load(f)["model"])
        rows = []
        with open(mpath) as f:
            for line in f:
                if line.strip():
                    rows.append(json.loads(line))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"--run {run_dir}: unreadable config.json or metrics.jsonl ({e})") from None
    tps = np.array([r["tokens_per_s"] for r in rows if r.get("tokens_per_s")], float)
    if tps.size == 0:
        raise ValueError(f"--run {run_dir}: metrics.jsonl has no tokens_per_s")
    later = tps[tps.size // 2:]  # the first steps carry warm-up and compilation
    t = float(np.median(later))
    mfu = [r["mfu"] for r in rows[len(rows) // 2:] if r.get("mfu")]
    fpt = flops_per_token(mc)["all"]
    return {"flops_per_s": t * fpt, "tokens_per_s_run": t, "mfu_run": float(np.median(mfu)) if mfu else None,
            "n_ctx": mc.n_ctx, "n_vocab": mc.n_vocab,
            "source": f"run {run_dir}: median tokens_per_s {t:.4g} over its last {later.size} rows x its exact "
                      f"{fpt:.4g} FLOPs/token = {t * fpt:.4g} FLOP/s, assumed to carry over to the planned shape"}


def outlook_inputs(runs_dir: str) -> Dict:
    """fit_and_report's ``outlook`` for a sweep's runs: the exact N of a shape at their vocabulary,
    their n_ctx, and the throughput of the run that trained the most tokens (run_throughput), so
    the report's plans at 10x and 100x carry a wall time on this hardware."""
    runs = sorted(d for d in (os.path.join(runs_dir, n) for n in os.listdir(runs_dir))
                  if os.path.isfile(os.path.join(d, "metrics.jsonl")))
    if not runs:
        raise ValueError(f"{runs_dir}: no runs")

    def tokens(d):
        with open(os.path.join(d, "metrics.jsonl"), "rb") as f:
            last = f.read().rstrip().rsplit(b"\n", 1)[-1]
        return json.loads(last).get("tokens", 0) if last else 0

    tp = run_throughput(max(runs, key=tokens))
    return {"shape_fns": shape_fns(tp["n_vocab"]), "n_ctx": tp["n_ctx"], "throughput": tp}


# ---------------------------------------------------------------------------------------------
# `flopscale plan`
# ---------------------------------------------------------------------------------------------
def add_plan_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from flopscale.fitting.laws import PRIORS

    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--budget", type=float, default=None, metavar="C",
                   help="training compute in FLOPs, in the law's convention (6ND; DeepSeek: M D)")
    g.add_argument("--gpu-hours", type=float, default=None, metavar="H",
                   help="device hours instead of FLOPs (needs --run, --tokens-per-s or --peak-tflops with --mfu)")
    s = p.add_mutually_exclusive_group(required=True)
    s.add_argument("--fits", type=str, default=None, metavar="FITS.json",
                   help="your own fits: REPORT/fits.json of `flopscale fit --out`, or `flopscale fit --json` output")
    s.add_argument("--prior", type=str, default=None, choices=tuple(PRIORS),
                   help="a published law (constants and sources in fitting/laws.py PRIORS)")
    p.add_argument("--law", type=str, default=None,
                   help="with --fits: the fit to plan from (default: chinchilla, else nd)")
    p.add_argument("--unique-tokens", type=float, default=None, metavar="U",
                   help="unique tokens available: plan with the data-constrained law (Muennighoff et al. 2023)")
    p.add_argument("--run", type=str, default=None, metavar="RUN_DIR",
                   help="a finished run whose measured tokens/s (and n_ctx, n_vocab) the plan uses")
    p.add_argument("--tokens-per-s", type=float, default=None, help="throughput of the planned model, tokens/s")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak, TFLOP/s (with --mfu)")
    p.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation assumed, 0-1 (with --peak-tflops)")
    p.add_argument("--n-ctx", type=int, default=None, help=f"context length (default: the run's, else {DEFAULT_N_CTX})")
    p.add_argument("--n-vocab", type=int, default=None,
                   help=f"vocabulary, for the FLOPs of all rows (default: the run's, else {DEFAULT_N_VOCAB})")
    p.add_argument("--seed", type=int, default=0, help="seed of the prediction interval's Monte Carlo")
    p.add_argument("--json", type=str, default=None, metavar="OUT", help="write the plan as JSON ('-' for stdout)")
    p.add_argument("--emit-config", type=str, nargs="?", const="-", default=None, metavar="PATH",
                   help="write the plan as a `flopscale train` command line (to PATH, or stdout)")
    p.add_argument("--out-run", type=str, default="runs/plan", metavar="RUN_DIR",
                   help="the --out of the emitted train command")
    return p


def _throughput(a) -> Optional[Dict]:
    if a.run:
        return run_throughput(a.run)
    if a.tokens_per_s is not None:
        if not a.tokens_per_s > 0:
            raise ValueError(f"--tokens-per-s must be positive, got {a.tokens_per_s}")
        return {"tokens_per_s": a.tokens_per_s, "source": f"--tokens-per-s {a.tokens_per_s:g} (the planned model's)"}
    if a.peak_tflops is not None or a.mfu is not None:
        if a.peak_tflops is None or a.mfu is None:
            raise ValueError("--peak-tflops and --mfu go together")
        if not (a.peak_tflops > 0 and 0 < a.mfu <= 1):
            raise ValueError(f"--peak-tflops must be positive and --mfu in (0, 1], got {a.peak_tflops}, {a.mfu}")
        f = a.peak_tflops * 1e12 * a.mfu
        return {"flops_per_s": f, "source": f"--peak-tflops {a.peak_tflops:g} x --mfu {a.mfu:g} = {f:.4g} FLOP/s"}
    return None


def budget_for_hours(make, hours: float, tput: Dict) -> float:
    """The law's C whose plan's D_opt tokens take ``hours`` at the plan's tokens/s.  The wall time
    D_opt / tokens_per_s = D_opt flops_per_token / FLOP/s grows about as C, so C <- C (T / D_opt),
    T the tokens the hours buy, converges in a few steps.  The shape is discrete: where the plan's
    shape flips between two, the time jumps and no C gives the hours exactly; then bisection in
    log C returns the largest C whose plan fits in the hours."""
    def ratio(C):  # tokens the hours buy / tokens the plan needs
        p = make(C)
        tps = (p.get("throughput") or {}).get("tokens_per_s_plan")
        if not tps:
            raise ValueError("--gpu-hours needs a throughput the plan can use (--run, --tokens-per-s, or --peak-tflops "
                             "with --mfu and a model shape)")
        return hours * 3600.0 * tps / p["D_opt"]

    C = 1e18
    seen = []
    for _ in range(20):
        r = ratio(C)
        seen.append((C, r))
        if abs(r - 1.0) < 1e-9:
            return C
        C *= r
    lo = max((c for c, r in seen if r >= 1.0), default=None)
    hi = min((c for c, r in seen if r < 1.0), default=None)
    if lo is None or hi is None or not lo < hi:
        raise ValueError(f"--gpu-hours: the budget did not converge (last ratio {seen[-1][1]:.6g})")
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if ratio(mid) >= 1.0 else (lo, mid)
        if hi / lo - 1.0 < 1e-12:
            break
    return lo


def train_args(plan: Dict, out: str) -> list:
    """The plan as `flopscale train` flags (model shape, batch in sequences, steps, lr, warmup)."""
    m = plan["model"]
    if m is None:
        raise ValueError("the plan has no model shape to emit")
    args = ["--n-layer", m["n_layer"], "--d-model", m["d_model"], "--n-heads", m["n_heads"], "--d-ff", m["d_ff"],
            "--n-ctx", plan["n_ctx"], "--batch-size", plan["batch_size"], "--steps", plan["steps"],
            "--warmup", plan["warmup_steps"], "--schedule", plan["schedule"]]
    if plan["lr"] is not None:
        args += ["--lr", f"{plan['lr']:.4g}"]
    if plan.get("unique_tokens"):
        args += ["--max-tokens", int(plan["unique_tokens"])]
    return [str(x) for x in args + ["--out", out]]


def run_plan(a) -> int:
    from flopscale.fitting.api import read_bootstrap
    from flopscale.fitting.outlook_report import plan_markdown
    from flopscale.fitting.plan import fits_spec, make_plan, prior_spec

    if a.fits:
        try:
            with open(a.fits) as f:
                fits = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"--fits {a.fits}: no such file") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"--fits {a.fits}: not JSON ({e})") from None
        spec = fits_spec(fits, a.law, boot=read_bootstrap(a.fits))  # the draws `flopscale fit --out` keeps
    else:
        if a.law:
            raise ValueError("--law picks a fit of --fits; a --prior has its own law")
        spec = prior_spec(a.prior)
    tput = _throughput(a)
    n_ctx = a.n_ctx or (tput or {}).get("n_ctx") or DEFAULT_N_CTX
    n_vocab = a.n_vocab or (tput or {}).get("n_vocab") or DEFAULT_N_VOCAB
    if n_ctx < 1 or n_vocab < 1:
        raise ValueError("--n-ctx and --n-vocab must be positive")
    fns = shape_fns(n_vocab)
    make = lambda C: make_plan(spec, C, unique_tokens=a.unique_tokens, shape_fns=fns, n_ctx=n_ctx, throughput=tput,
                               seed=a.seed)
    if a.gpu_hours is not None:
        if not a.gpu_hours > 0:
            raise ValueError(f"--gpu-hours must be positive, got {a.gpu_hours}")
        if tput is None:
            raise ValueError("--gpu-hours needs a throughput: --run RUN_DIR, --tokens-per-s, or --peak-tflops with --mfu")
        budget = budget_for_hours(make, a.gpu_hours, tput)
    else:
        budget = a.budget
    plan = make(budget)
    if a.gpu_hours is not None:
        plan["gpu_hours"] = a.gpu_hours
    if plan["model"] is not None:
        plan["train_args"] = train_args(plan, a.out_run)
    text = json.dumps(plan, indent=1, default=float)
    if a.json == "-":
        print(text)
    elif a.json:
        atomic_write_text(a.json, text + "\n")
    if a.emit_config:
        if plan["model"] is None:
            raise ValueError("--emit-config: no model shape within 5% of N_opt")
        line = "flopscale train " + " ".join(shlex.quote(x) for x in plan["train_args"])
        if a.emit_config == "-":
            print(line)
        else:
            atomic_write_text(a.emit_config, line + "\n")
    if a.json != "-" and a.emit_config != "-":
        print(plan_markdown(plan), end="")
    return 0


# ---------------------------------------------------------------------------------------------
# `flopscale backtest`
# ---------------------------------------------------------------------------------------------
def add_backtest_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from flopscale.fitting.backtest import BACKTEST_N_BOOT
    from flopscale.fitting.laws import LAWS

    p.add_argument("paths", nargs="*", metavar="SWEEP_DIR|RUN_DIR", help="run directories (or --csv)")
    p.add_argument("--csv", type=str, default=None, metavar="FILE", help="a table of points (columns N, D, C, S, B, U, loss)")
    p.add_argument("--law", type=str, required=True, choices=tuple(LAWS), help="the law to fit and test")
    p.add_argument("--split", type=str, required=True, metavar="COL=VALUE", help="fit on COL <= VALUE, predict the rest")
    p.add_argument("--n-boot", type=int, default=BACKTEST_N_BOOT, help="bootstrap draws for the 90%% intervals")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--grid", type=str, default="full", choices=("full", "coarse"), help="chinchilla start grid")
    p.add_argument("--point", type=str, default="best", choices=("best", "final"), help="per-run point (from runs)")
    p.add_argument("--compute", type=str, default="nonembedding", choices=("nonembedding", "all"),
                   help="the C of runs (metrics flops or flops_total)")
    p.add_argument("--json", type=str, default=None, metavar="OUT", help="write the result as JSON ('-' for stdout)")
    return p


def run_backtest(a) -> int:
    from flopscale.fitting.backtest import backtest, load_points
    from flopscale.fitting.outlook_report import backtest_markdown

    if a.n_boot < 0:
        raise ValueError(f"--n-boot must be >= 0, got {a.n_boot}")
    cols = load_points(csv=a.csv, paths=a.paths, law=a.law, point=a.point, compute=a.compute)
    bt = backtest(cols, a.law, a.split, n_boot=a.n_boot, seed=a.seed, grid=a.grid)
    text = json.dumps(bt, indent=1, default=float)
    if a.json == "-":
        print(text)
    else:
        if a.json:
            atomic_write_text(a.json, text + "\n")
        print(backtest_markdown(bt), end="")
    return 0


if __name__ == "__main__":  # python -m flopscale.planning plan|backtest ...
    from flopscale.cli import main

    sys.exit(main(sys.argv[1:]))
