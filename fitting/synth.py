"""Synthetic data with known constants, for tests, benchmarks and trying the report.

    from flopscale.fitting.synth import law_points, write_run
    cols = law_points("n", N=np.logspace(6, 9, 12), noise=0.004, seed=0)   # paper's constants
    write_run("/tmp/sweep/r0", N=3e6, batch_seqs=64, steps=2000, n_ctx=128)  # config.json + metrics.jsonl

Run directories follow the CLI contract (DESIGN.md): config.json with model, train, N, data;
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


def write_run(path: str, N: float, batch_seqs: int = 64, steps: int = 1000, n_ctx: int = 128,
              eval_every: int = 50, log_every: int = 1, n_train_tokens: Optional[int] = None,
              noise: float = 0.01, val_noise: float = 0.002, gns_every: int = 0, gns_noise: float = 0.05,
              use_bcrit: bool = True, seed: int = 0, ns=None, bcrit=None, N_exact: bool = True) -> str:
    """Write config.json and metrics.jsonl for one synthetic run; returns path.

    flops = 6 N tokens (non-embedding training FLOPs, the paper's C); train_loss carries
    multiplicative noise `noise`, val_loss `val_noise`; grad_noise_scale (every gns_every steps, in
    tokens) is B_crit(L) times log-normal noise, the paper's B_noise ~ B_crit.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(path, exist_ok=True)
    B = batch_seqs * n_ctx
    model = _shape_for(N, n_ctx)
    cfg = {"model": model,
           "train": {"batch_size": batch_seqs, "grad_accum": 1, "steps": steps, "lr": 1e-3,
                     "max_tokens": n_train_tokens, "eval_every": eval_every},
           "N": int(N) if N_exact else 2 * model["d_model"] * model["n_layer"] * 6 * model["d_model"],
           "data": {"n_train_tokens": n_train_tokens, "source": "synthetic"}}
    atomic_write_json(os.path.join(path, "config.json"), cfg)
    S = np.arange(log_every, steps + 1, log_every, dtype=float)
    tokens = S * B
    L = curve_loss(N, S, B, ns, bcrit, use_bcrit)
    with atomic_write(os.path.join(path, "metrics.jsonl"), "w") as f:
        for s, t, l in zip(S, tokens, L):
            s = int(s)
            # evaluate at the first logged step past each multiple of eval_every
            ev = s // eval_every != (s - log_every) // eval_every or s == steps
            gns = None
            if gns_every and s // gns_every != (s - log_every) // gns_every:
                bc = b_crit(l, **(PAPER["bcrit"] if bcrit is None else bcrit))
                gns = float(bc * np.exp(rng.normal(0, gns_noise)))
            row = {"step": s, "tokens": int(t), "flops": float(6 * N * t), "flops_total": float(6 * N * t * 1.1),
                   "flops_executed": float(6 * N * t * 1.2),
                   "train_loss": float(l * np.exp(rng.normal(0, noise))),
                   "val_loss": float(l * np.exp(rng.normal(0, val_noise))) if ev else None,
                   "lr": 1e-3, "tokens_per_s": 1e5, "mfu": None, "grad_noise_scale": gns}
            f.write(json.dumps(row) + "\n")
    return path
