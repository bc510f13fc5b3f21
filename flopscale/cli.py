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


def _add_model_args(p: argparse.ArgumentParser, n_ctx: int, n_vocab: int | None) -> list:
    """The model-shape flags, from ModelConfig's fields (engine/config.py).  --n-layer and
    --d-model are required; --n-heads defaults to head dim 64 (config.default_heads)."""
    from flopscale.engine.config import ModelConfig, add_config_arguments

    return add_config_arguments(
        p, ModelConfig, skip=() if n_vocab is not None else ("n_vocab",), required=("n_layer", "d_model"),
        defaults={"n_layer": None, "d_model": None, "n_heads": None, "n_ctx": n_ctx, "n_vocab": n_vocab},
        titles={"model": "model shape (Kaplan et al. notation)"})


def _model_config(a, n_vocab: int):
    from flopscale.engine.config import ModelConfig, config_values, default_heads

    kw = config_values(a, [f for f in ModelConfig.__dataclass_fields__ if f != "n_vocab"])
    kw.setdefault("n_heads", default_heads(a.d_attn or a.d_model))
    return ModelConfig(**kw, n_vocab=n_vocab)


# ---------------------------------------------------------------------------------------------
def cmd_flops(a) -> int:
    from flopscale.engine import flops as fl

    cfg = _model_config(a, a.n_vocab)
    T = cfg.n_ctx
    # The LSTM's rows are shown for --arch lstm only (a Transformer's table stays the paper's).
    hide = () if cfg.arch == "lstm" else fl.LSTM_ROWS
    model = {r: c for r, c in fl.expected_rows(cfg, 1, T, "model").items() if r not in hide}
    table1_rows = [r for r in fl.TABLE1_ROWS if r not in hide]
    out = {
        "config": cfg.to_dict(),
        "N": fl.non_embedding_params(cfg),
        "N_counts": fl.n_counts(cfg),
        "C_forward": fl.forward_flops_per_token(cfg),
        "params": {r: c for r, c in fl.table1_params(cfg).items() if r not in hide},
        "forward_flops_per_token": {r: c for r, c in fl.table1_forward_flops_per_token(cfg).items() if r not in hide},
        "model": {
            "sequence_length": T,
            "convention": "FLOPs (multiply-add = 2) for one sequence of n_ctx tokens, causal attention exact",
            "rows": {r: {"fwd": f, "bwd": b} for r, (f, b) in model.items() if r != "optimizer"},
            "nonembedding_forward_per_token": sum(model[r][0] for r in fl.NONEMBEDDING_ROWS if r in model) / T,
        },
    }
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    p, f = out["params"], out["forward_flops_per_token"]
    print(f"config: {json.dumps(out['config'])}")
    print(f"{'row':<20}{'params':>16}{'paper fwd/token':>18}{'model fwd/token':>18}")
    for r in table1_rows:
        print(f"{r:<20}{p[r]:>16,}{f[r]:>18,}{model[r][0] / T:>18,.1f}")
    for r in fl.EXTRA_ROWS:
        if r != "optimizer" and r not in hide:
            print(f"{r:<20}{'':>16}{'-':>18}{model[r][0] / T:>18,.1f}")
    print(f"N (non-embedding params) = {out['N']:,}")
    print(f"C_forward (per token)    = {out['C_forward']:,}")
    print(f"model view, T = n_ctx    = {out['model']['nonembedding_forward_per_token']:,.1f} non-embedding FLOPs/token "
          f"(mask row x (T+1)/T of the paper's)")
    return 0


def cmd_train(a) -> int:
    from flopscale.engine.config import TrainConfig, config_values
    from flopscale.engine.train import Trainer

    tc = TrainConfig(**config_values(a, TrainConfig.__dataclass_fields__))
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
    """Every flag of `flopscale train`: one per ModelConfig and TrainConfig field, generated
    from the dataclasses (engine/config.py), plus --out and --quiet."""
    from flopscale.engine.config import TrainConfig, add_config_arguments

    _add_model_args(p, n_ctx=128, n_vocab=None)
    add_config_arguments(p, TrainConfig, titles={"kernels": "kernel variants (recorded in config.json)"})
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="run directory (an existing one is resumed)")


def _add_data_parser(sub) -> None:
    """`flopscale data prepare ...` (engine/prepare.py): text, jsonl, parquet or a saved HF
    dataset to llm.c token shards."""
    from flopscale.engine.prepare import add_data_arguments, run_data

    p = sub.add_parser("data", help="data tools: `data prepare SRC --out DIR` tokenizes into llm.c shards")
    add_data_arguments(p)
    p.set_defaults(fn=run_data)


class _Parser(argparse.ArgumentParser):
    """A usage error is one line and exit status 2, like every other bad input here (argparse
    would print the whole usage block first); ``--help`` still prints everything."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="flopscale", description="Fused kernels, measured FLOPs, scaling-law fits.")
    sub = ap.add_subparsers(dest="cmd", required=True)  # subcommand parsers are _Parsers too

    p = sub.add_parser("flops", help="Table 1 of Kaplan et al. for one config, plus the exact model view")
    _add_model_args(p, n_ctx=1024, n_vocab=50257)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(fn=cmd_flops)

    p = sub.add_parser("train", help="one training run with measured compute")
    _add_train_args(p)
    p.set_defaults(fn=cmd_train)

    _add_data_parser(sub)

    # Subcommands defined in other layers.  A broken import is a bug to see, not a subcommand to
    # hide: the ImportError propagates with its traceback.
    import importlib

    for name, mod, add, run in (("fit", "flopscale.fitting.cli", "add_fit_arguments", "run_fit"),
                                ("bench", "flopscale.bench.cli", "add_bench_arguments", "run_bench"),
                                ("sweep", "flopscale.engine.sweep", "add_sweep_arguments", "run_sweep")):
        m = importlib.import_module(mod)
        p = sub.add_parser(name, help=(m.__doc__ or "").strip().splitlines()[0] if m.__doc__ else None)
        getattr(m, add)(p)
        p.set_defaults(fn=getattr(m, run))
        if name == "fit":  # fitting/ imports nothing of the engine: its trackers are wired here
            _add_fit_tracker(p)

    # `flopscale plan` (fitted laws or a published prior to a training plan) and `flopscale backtest`
    # (a law's own extrapolation error): flopscale/planning.py over fitting/plan.py, fitting/backtest.py.
    from flopscale import planning

    for name, add, run, help_ in (
            ("plan", planning.add_plan_arguments, planning.run_plan,
             "A training plan (N, D, shape, batch, lr, steps, loss with its interval, guards) at a budget"),
            ("backtest", planning.add_backtest_arguments, planning.run_backtest,
             "Fit a law on COL <= VALUE, predict the rest: MAPE, bias, 90%% interval coverage")):
        p = sub.add_parser(name, help=help_)
        add(p)
        p.set_defaults(fn=run)
    return ap


def _add_fit_tracker(p: argparse.ArgumentParser) -> None:
    from flopscale.engine.config import TRACKERS

    p.add_argument("--tracker", action="append", choices=TRACKERS, default=None,
                   help="also log the report's figures (PNGs) and report.md to TensorBoard (REPORT_DIR/tb/) or "
                        "W&B (REPORT_DIR/wandb/, a run of job type fit; in the sweep's group for SWEEP_DIR/report); "
                        "repeatable; needs --out")
    p.set_defaults(fn=cmd_fit)


def cmd_fit(a) -> int:
    """flopscale fit, then its report's figures to the trackers (engine/trackers.py)."""
    from flopscale.fitting.cli import run_fit

    trackers = [t for t in a.tracker or () if t != "none"]
    if trackers and not a.out:
        raise ValueError("--tracker logs the report's figures: give --out REPORT_DIR")
    rc = run_fit(a)
    if trackers:
        from flopscale.engine.trackers import log_report

        log_report(trackers, a.out)
    return rc


def main(argv=None) -> int:
    from flopscale.engine.config import ConfigError
    from flopscale.engine.data import DataError
    from flopscale.engine.train import RunInterrupted, TrainError

    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        return int(a.fn(a) or 0)
    except (ConfigError, DataError, TrainError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk above all: "no space left on device writing PATH"
        from flopscale.fileio import os_error_line

        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except RunInterrupted as e:  # SIGTERM / SIGINT: the step finished and a checkpoint was written
        print(f"interrupted by {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
