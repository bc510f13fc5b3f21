"""Synthetic data with known constants, for tests, benchmarks and trying the report.

    from flopscale.fitting.synth import law_points, write_run
    cols = law_points("n", N=np.logspace(6, 9, 12), noise=0.004, seed=0)   # paper's constants
    write_run("/tmp/sweep/r0", N=3e6, batch_seqs=64, steps=2000, n_ctx=128)  # config.json + metrics.jsonl

Run directories follow the file formats of docs/ARCHITECTURE.md: config.json with model, train, N, data;
metrics.jsonl with one row per logged step. Their loss curves follow L(N, S_min) (the `ns` law) with
S_min = S / (1 + B_crit(L)/B), so the frontier, B_crit and L(N) fits have a known truth.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional

import numpy as np

from flopscale.fileio import atomic_write, atomic_write_json

from .laws import LAWS, PAPER, b_crit


def law_points(law: str, params: Optional[Dict[str, float]] = None, noise: float = 0.004,
               seed: int = 0, **cols) -> Dict[str, np.ndarray]:
    """Inputs as given, target from the law times exp(N(0, noise)) (multiplicative noise)."""
    L = LAWS[law]
    params = PAPER[law] if params is None else params
    arrs = dict(zip(L.inputs, np.broadcast_arrays(*[np.asarray(cols[k], float) for k in L.inputs])))
    y = L.predict(params, **arrs)
    rng = np.random.default_rng(seed)
    out = {k: v.ravel().copy() for k, v in arrs.items()}
    out[L.target] = (y * np.exp(rng.normal(0.0, noise, y.shape))).ravel()
    return out


def _shape_for(N: float, n_ctx: int) -> dict:
    # N = 12 n_layer d_model^2 with d_attn = d_model, d_ff = 4 d_model; keep d_model/n_layer ~ 32
    n_layer = max(1, int(round((N / (12 * 32 ** 2)) ** (1 / 3))))
    d_model = int(round(np.sqrt(N / (12 * n_layer))))
    return {"n_layer": n_layer, "d_model": d_model, "n_heads": 1, "d_attn": d_model, "d_ff": 4 * d_model,
            "n_ctx": n_ctx, "n_vocab": 4096}


def curve_loss(N: float, S, B_tokens: float, ns=None, bcrit=None, use_bcrit: bool = True):
    """L(N, S_min(S, B)) solved by fixed-point iteration (B_crit depends on the loss reached)."""
    ns = PAPER["ns"] if ns is None else ns
    bcrit = PAPER["bcrit"] if bcrit is None else bcrit
    S = np.asarray(S, float)
    L = LAWS["ns"].predict(ns, N=N, S=S)
    if not use_bcrit:
        return L
    for _ in range(30):
        Smin = S / (1.0 + b_crit(L, **bcrit) / B_tokens)
        L = LAWS["ns"].predict(ns, N=N, S=Smin)
    return L


def lr_fraction(S, steps: int, schedule: str = "constant", decay_frac: float = 0.2, decay_from: int = 0):
    """The learning rate over its peak at steps S: constant, cosine to 0, or warmup-stable-decay
    (constant, then linear to 0 over the last decay_frac of the run, or from step decay_from)."""
    S = np.asarray(S, float)
    if schedule == "constant":
        return np.ones_like(S)
    if schedule == "cosine":
        return 0.5 * (1 + np.cos(np.pi * np.clip(S / steps, 0, 1)))
    if schedule == "wsd":
        start = decay_from or (1 - decay_frac) * steps
        return np.clip((steps - S) / max(steps - start, 1), 0, 1)
    raise ValueError(f"schedule must be constant, cosine or wsd, got {schedule!r}")


def write_run(path: str, N: float, batch_seqs: int = 64, steps: int = 1000, n_ctx: int = 128,
              eval_every: int = 50, log_every: int = 1, n_train_tokens: Optional[int] = None,
              noise: float = 0.01, val_noise: float = 0.002, gns_every: int = 0, gns_noise: float = 0.05,
              use_bcrit: bool = True, seed: int = 0, ns=None, bcrit=None, N_exact: bool = True,
              n_vocab: int = 4096, embedding_flops: bool = False, schedule: str = "constant",
              lr_bump: float = 0.03, decay_frac: float = 0.2, init_from: Optional[str] = None,
              start_step: int = 0, n_layer: Optional[int] = None) -> str:
    """Write config.json and metrics.jsonl for one synthetic run; returns path.

    flops = 6 N tokens (non-embedding training FLOPs, the paper's C); flops_total is 1.1x that, or
    with embedding_flops=True that plus the de-embedding matmul, 6 d_model n_vocab per token (so the
    non-embedding share falls for small models, as in real runs). config.json records
    n_params_total = N + (n_vocab + n_ctx) d_model. train_loss carries multiplicative noise `noise`,
    val_loss `val_noise`; grad_noise_scale (every gns_every steps, in tokens) is B_crit(L) times
    log-normal noise, the paper's B_noise ~ B_crit.

    schedule (constant, cosine, wsd): the loss sits lr_bump x lr/peak above L(N, S_min), the excess
    a high learning rate costs, gone once it has decayed; so a short cosine run ends below a longer
    run at the same compute (the saw-tooth a plain per-C minimum shows). A cooldown branch:
    init_from="PARENT_DIR@STEP" (recorded in config.json's train, as the engine writes it),
    start_step=STEP, schedule="wsd" decaying from STEP to `steps`; its rows start after STEP and
    count the parent's compute up to STEP.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(path, exist_ok=True)
    B = batch_seqs * n_ctx
    model = _shape_for(N, n_ctx)
    model["n_vocab"] = n_vocab
    if n_layer is not None:  # same N at another depth (the embedding view separates depths)
        model["n_layer"] = n_layer
        model["d_model"] = int(round(np.sqrt(N / (12 * n_layer))))
        model["d_attn"], model["d_ff"] = model["d_model"], 4 * model["d_model"]
    train = {"batch_size": batch_seqs, "grad_accum": 1, "steps": steps, "lr": 1e-3,
             "max_tokens": n_train_tokens, "eval_every": eval_every, "schedule": schedule}
    if init_from:
        train["init_from"] = init_from
    cfg = {"model": model, "train": train,
           "N": int(N) if N_exact else 2 * model["d_model"] * model["n_layer"] * 6 * model["d_model"],
           "data": {"n_train_tokens": n_train_tokens, "source": "synthetic"}}
    cfg["n_params_total"] = int(cfg["N"] + (n_vocab + n_ctx) * model["d_model"])
    atomic_write_json(os.path.join(path, "config.json"), cfg)
    S = np.arange(start_step + log_every, steps + 1, log_every, dtype=float)
    tokens = S * B
    L = curve_loss(N, S, B, ns, bcrit, use_bcrit)
    L = L * (1 + lr_bump * lr_fraction(S, steps, schedule, decay_frac, decay_from=start_step if init_from else 0)) \
        if schedule != "constant" else L
    per_token_total = 6 * N * 1.1 if not embedding_flops else 6 * N + 6 * model["d_model"] * n_vocab
    with atomic_write(os.path.join(path, "metrics.jsonl"), "w") as f:
        for s, t, l in zip(S, tokens, L):
            s = int(s)
            # evaluate at the first logged step past each multiple of eval_every
            ev = s // eval_every != (s - log_every) // eval_every or s == steps
            gns = None
            if gns_every and s // gns_every != (s - log_every) // gns_every:
                bc = b_crit(l, **(PAPER["bcrit"] if bcrit is None else bcrit))
                gns = float(bc * np.exp(rng.normal(0, gns_noise)))
            row = {"step": s, "tokens": int(t), "flops": float(6 * N * t), "flops_total": float(per_token_total * t),
                   "flops_executed": float(6 * N * t * 1.2),
                   "train_loss": float(l * np.exp(rng.normal(0, noise))),
                   "val_loss": float(l * np.exp(rng.normal(0, val_noise))) if ev else None,
                   "lr": 1e-3, "tokens_per_s": 1e5, "mfu": None, "grad_noise_scale": gns}
            f.write(json.dumps(row) + "\n")
    return path


def write_study(root: str, sizes=(1e5, 3e5, 1e6, 3e6, 1e7), budgets=(1e14, 3e14, 1e15), batch_seqs: int = 32,
                n_ctx: int = 128, cooldown: bool = True, gns: bool = True, rows: int = 120, seed: int = 0) -> str:
    """A small synthetic scaling study under root/runs: every size at every compute budget (so each
    size runs at several lengths, the isoFLOP slices and the data axis appear, and the plain per-C
    minimum of the cosine curves has a saw-tooth), realistic embedding FLOPs, noise scale logged,
    and, with cooldown=True, a warmup-stable-decay run of the largest size at the largest budget
    with a cooldown branch from its midpoint. About `rows` logged rows per run. Returns root/runs."""
    runs = os.path.join(root, "runs")
    B = batch_seqs * n_ctx
    i = 0
    for C in budgets:
        for N in sizes:
            steps = max(20, int(round(C / (6 * N * B))))
            le = max(1, steps // rows)
            write_run(os.path.join(runs, f"C{C:.0e}_N{N:.0e}"), N=N, batch_seqs=batch_seqs, steps=steps,
                      n_ctx=n_ctx, log_every=le, eval_every=max(1, steps // 20), gns_every=(4 * le if gns else 0),
                      use_bcrit=False, embedding_flops=True, schedule="cosine", seed=seed + i)
            i += 1
    if cooldown:
        N = sizes[-1]
        steps = max(40, int(round(budgets[-1] / (6 * N * B))))
        parent = os.path.join(runs, f"wsd_N{N:.0e}")
        le = max(1, steps // rows)
        write_run(parent, N=N, batch_seqs=batch_seqs, steps=steps, n_ctx=n_ctx, log_every=le,
                  eval_every=max(1, steps // 20), use_bcrit=False, embedding_flops=True, schedule="wsd",
                  seed=seed + i)
        at = steps // 2
        write_run(os.path.join(runs, f"wsd_N{N:.0e}_cool{at}"), N=N, batch_seqs=batch_seqs,
                  steps=at + max(4, steps // 10), n_ctx=n_ctx, log_every=max(1, le // 4),
                  eval_every=max(1, steps // 80), use_bcrit=False, embedding_flops=True, schedule="wsd",
                  init_from=f"{parent}@{at}", start_step=at, seed=seed + i + 1)
    return runs
