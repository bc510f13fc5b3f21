"""The ``flopscale`` command line.

    flopscale flops --n-layer 12 --d-model 768 --json          # Table 1 for GPT-2 small
    flopscale train --n-layer 2 --d-model 64 --n-heads 4 --n-ctx 128 --steps 200 --out runs/nano
    flopscale sweep --preset cpu-tiny --out sweeps/cpu-tiny     # a scaling study, then the fit
    flopscale fit sweeps/cpu-tiny --out sweeps/cpu-tiny/report  # laws, intervals, plots, report
    flopscale bench --op attention --json bench/results/h100.json

Bad input is one line on stderr (``error: ...``) and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys


def _add_model_args(p: argparse.ArgumentParser, n_ctx: int, n_vocab: int | None) -> None:
    g = p.add_argument_group("model shape (Kaplan et al. notation)")
    g.add_argument("--n-layer", type=int, required=True, help="Transformer blocks")
    g.add_argument("--d-model", type=int, required=True, help="residual stream width")
    g.add_argument("--n-heads", type=int, default=None, help="attention heads (default: d_model / 64, at least 1)")
    g.add_argument("--d-attn", type=int, default=None, help="attention width (default: d_model)")
    g.add_argument("--d-ff", type=int, default=None, help="feedforward width (default: 4 * d_model)")
    g.add_argument("--n-ctx", type=int, default=n_ctx, help=f"context length (default: {n_ctx})")
    if n_vocab is not None:
        g.add_argument("--n-vocab", type=int, default=n_vocab, help=f"vocabulary size (default: {n_vocab})")


def _model_config(a, n_vocab: int):
    from flopscale.engine import ModelConfig

    heads = a.n_heads if a.n_heads is not None else max(1, (a.d_attn or a.d_model) // 64)
    return ModelConfig(n_layer=a.n_layer, d_model=a.d_model, n_heads=heads, d_attn=a.d_attn, d_ff=a.d_ff,
                       n_ctx=a.n_ctx, n_vocab=n_vocab)


# ---------------------------------------------------------------------------------------------
def cmd_flops(a) -> int:
    from flopscale.engine import flops as fl

    cfg = _model_config(a, a.n_vocab)
    T = cfg.n_ctx
    model = fl.expected_rows(cfg, 1, T, "model")
    out = {
        "config": cfg.to_dict(),
        "N": fl.non_embedding_params(cfg),
        "C_forward": fl.forward_flops_per_token(cfg),
        "params": fl.table1_params(cfg),
        "forward_flops_per_token": fl.table1_forward_flops_per_token(cfg),
        "model": {
            "sequence_length": T,
            "convention": "FLOPs (multiply-add = 2) for one sequence of n_ctx tokens, causal attention exact",
            "rows": {r: {"fwd": f, "bwd": b} for r, (f, b) in model.items() if r != "optimizer"},
            "nonembedding_forward_per_token": sum(model[r][0] for r in fl.NONEMBEDDING_ROWS) / T,
        },
    }
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    p, f = out["params"], out["forward_flops_per_token"]
    print(f"config: {json.dumps(out['config'])}")
    print(f"{'row':<20}{'params':>16}{'paper fwd/token':>18}{'model fwd/token':>18}")
    for r in fl.TABLE1_ROWS:
        print(f"{r:<20}{p[r]:>16,}{f[r]:>18,}{model[r][0] / T:>18,.1f}")
    for r in fl.EXTRA_ROWS:
        if r != "optimizer":
            print(f"{r:<20}{'':>16}{'-':>18}{model[r][0] / T:>18,.1f}")
    print(f"N (non-embedding params) = {out['N']:,}")
    print(f"C_forward (per token)    = {out['C_forward']:,}")
    print(f"model view, T = n_ctx    = {out['model']['nonembedding_forward_per_token']:,.1f} non-embedding FLOPs/token "
          f"(mask row x (T+1)/T of the paper's)")
    return 0


def cmd_train(a) -> int:
    from flopscale.engine import TrainConfig
    from flopscale.engine.train import Trainer

    tc = TrainConfig(
        data=a.data, tokenizer=a.tokenizer, max_tokens=a.max_tokens, batch_size=a.batch_size, grad_accum=a.grad_accum,
        steps=a.steps, lr=a.lr, min_lr_frac=a.min_lr_frac, warmup=a.warmup, weight_decay=a.weight_decay,
        grad_clip=a.grad_clip, eval_every=a.eval_every, eval_batches=a.eval_batches, log_every=a.log_every,
        seed=a.seed, backend=a.backend, device=a.device, dtype=a.dtype, noise_scale=a.noise_scale,
    )
    mc = _model_config(a, 257)  # n_vocab is set from the tokenizer
    tr = Trainer(mc, tc, a.out, progress=not a.quiet)
    if not a.quiet:
        print(f"run {a.out}: N = {tr.mc.N:,} non-embedding params, D = {tr.corpus.n_train_tokens:,} train tokens, "
              f"backend {tc.backend} on {tc.device}", file=sys.stderr)
    row = tr.run()
    if row.get("complete"):
        print(f"{a.out} is already complete at step {row['step']}")
    else:
        print(json.dumps({k: row[k] for k in ("step", "tokens", "flops", "train_loss", "val_loss")}))
    return 0


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from flopscale.engine import TrainConfig

    d = TrainConfig.__dataclass_fields__
    _add_model_args(p, n_ctx=128, n_vocab=None)
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d["data"].default, help="'stdlib' (the default corpus), a text file, a .bin shard or a folder")
    g.add_argument("--tokenizer", default=d["tokenizer"].default, help="bpe-V (trained on the corpus and cached) or a tokenizer.json")
    g.add_argument("--max-tokens", type=int, default=None, help="cap the training set at this many tokens (dataset size D)")
    g = p.add_argument_group("schedule")
    g.add_argument("--batch-size", type=int, default=d["batch_size"].default, help="sequences per optimizer step")
    g.add_argument("--grad-accum", type=int, default=d["grad_accum"].default, help="micro-batches per step")
    g.add_argument("--steps", type=int, default=d["steps"].default, help="optimizer steps")
    g.add_argument("--lr", type=float, default=d["lr"].default, help="peak learning rate")
    g.add_argument("--min-lr-frac", type=float, default=d["min_lr_frac"].default, help="cosine floor as a fraction of --lr")
    g.add_argument("--warmup", type=int, default=d["warmup"].default, help="linear warmup steps")
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"].default, help="AdamW decoupled weight decay")
    g.add_argument("--grad-clip", type=float, default=d["grad_clip"].default, help="global gradient-norm clip (0: off)")
    g = p.add_argument_group("run")
    g.add_argument("--backend", default=d["backend"].default, help="torch | triton | cuda")
    g.add_argument("--device", default=d["device"].default, help="cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default=d["dtype"].default, help="float32 | bfloat16 | float16 (autocast)")
    g.add_argument("--seed", type=int, default=d["seed"].default, help="initialisation and data-order seed")
    g.add_argument("--eval-every", type=int, default=d["eval_every"].default, help="steps between evals and checkpoints")
    g.add_argument("--eval-batches", type=int, default=d["eval_batches"].default, help="validation batches per eval")
    g.add_argument("--log-every", type=int, default=d["log_every"].default, help="steps between metrics rows")
    g.add_argument("--noise-scale", action="store_true", help="estimate the gradient noise scale (needs --grad-accum >= 2)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="run directory (an existing one is resumed)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flopscale", description="Fused kernels, measured FLOPs, scaling-law fits.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("flops", help="Table 1 of Kaplan et al. for one config, plus the exact model view")
    _add_model_args(p, n_ctx=1024, n_vocab=50257)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(fn=cmd_flops)

    p = sub.add_parser("train", help="one training run with measured compute")
    _add_train_args(p)
    p.set_defaults(fn=cmd_train)

    for name, mod, add, run in (("fit", "flopscale.fitting.cli", "add_fit_arguments", "run_fit"),
                                ("bench", "flopscale.bench.cli", "add_bench_arguments", "run_bench"),
                                ("sweep", "flopscale.engine.sweep", "add_sweep_arguments", "run_sweep")):
        try:
            m = __import__(mod, fromlist=[add])
        except ImportError:
            continue  # that subcommand is not built yet
        p = sub.add_parser(name, help=(m.__doc__ or "").strip().splitlines()[0] if m.__doc__ else None)
        getattr(m, add)(p)
        p.set_defaults(fn=getattr(m, run))
    return ap


def main(argv=None) -> int:
    from flopscale.engine.config import ConfigError
    from flopscale.engine.data import DataError
    from flopscale.engine.train import TrainError

    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        return int(a.fn(a) or 0)
    except (ConfigError, DataError, TrainError, ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
