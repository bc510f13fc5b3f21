"""Do the backends train alike?  The same run (seed, data, schedule) on each backend, step by
step: training losses, their largest gap to the ``torch`` backend, and the model-view FLOPs
(identical by construction of the ledger, checked here on real runs).

    python -m flopscale.bench.train_backends --device cuda --dtype bfloat16 --backends torch,triton,cuda
    python -m flopscale.bench.train_backends --device cpu --backends torch,triton --steps 3   # interpreter

The corpus is a dozen standard-library modules (tokenized in seconds, no download).
"""

import argparse
import json
import tempfile
from pathlib import Path

from flopscale.engine import ModelConfig, TrainConfig
from flopscale.engine.data import stdlib_sample
from flopscale.engine.train import Trainer
from flopscale.fileio import atomic_write_json


def track_one(backend: str, mc: ModelConfig, data: str, workdir: Path, **train) -> dict:
    """Train one backend; return its per-step losses and FLOP totals."""
    tc = TrainConfig(data=data, tokenizer="bpe-300", backend=backend, seed=1234, **train)
    run = workdir / f"run-{backend}"
    Trainer(mc, tc, run, progress=False).run()
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return {"train_loss": [r["train_loss"] for r in rows], "flops": rows[-1]["flops"],
            "flops_executed": rows[-1]["flops_executed"], "tokens_per_s": rows[-1]["tokens_per_s"]}


def compare(results: dict) -> dict:
    """Add each backend's largest per-step loss gap to torch and whether model FLOPs agree."""
    ref = results.get("torch", {})
    for r in results.values():
        if "train_loss" in r and "train_loss" in ref:
            r["max_abs_loss_gap_vs_torch"] = max(abs(x - y) for x, y in zip(r["train_loss"], ref["train_loss"]))
            r["same_model_flops_as_torch"] = r["flops"] == ref["flops"]
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="torch,triton,cuda", help="comma list; torch first is the reference")
    ap.add_argument("--device", default="cuda", help="cuda or cpu")
    ap.add_argument("--dtype", default="bfloat16", help="float32 | bfloat16")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per backend")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    ap.add_argument("--json", default=None, help="write the result here")
    a = ap.parse_args(argv)
    # head dim 64 and d_ff % 8 == 0: shapes every backend supports
    mc = ModelConfig(n_layer=2, d_model=128, n_heads=2, n_ctx=128)
    train = dict(batch_size=a.batch_size, steps=a.steps, eval_every=a.steps, warmup=max(1, a.steps // 10),
                 lr=a.lr, device=a.device, dtype=a.dtype)
    res = {}
    with tempfile.TemporaryDirectory() as d:
        data = stdlib_sample(Path(d) / "corpus")
        for be in a.backends.split(","):
            try:
                res[be] = track_one(be, mc, data, Path(d), **train)
            except Exception as e:  # one backend's failure must not hide the others' results
                res[be] = {"error": f"{type(e).__name__}: {e}"}
    compare(res)
    print(f"{'backend':<8}{'first loss':>12}{'last loss':>12}{'max gap vs torch':>18}{'model FLOPs equal':>19}{'tok/s':>10}")
    for be, r in res.items():
        if "error" in r:
            print(f"{be:<8} ERROR {r['error']}")
            continue
        print(f"{be:<8}{r['train_loss'][0]:>12.4f}{r['train_loss'][-1]:>12.4f}{r.get('max_abs_loss_gap_vs_torch', 0):>18.4f}"
              f"{str(r.get('same_model_flops_as_torch')):>19}{r['tokens_per_s']:>10.0f}")
    if a.json:
        atomic_write_json(a.json, {"device": a.device, "dtype": a.dtype, "steps": a.steps, "results": res})


if __name__ == "__main__":
    main()
