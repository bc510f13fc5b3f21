"""What the FLOP accounting costs: a training step with the ledger open versus the same step
with no ledger (``record`` then returns at once and books nothing).

    python -m flopscale.bench.bench_ledger                 # CPU, a few model sizes
    python -m flopscale.bench.bench_ledger --device cuda --json out.json

Work model: none; this is a ratio of wall times of the same step, interleaved so drift in
the machine's speed hits both arms alike, and each arm's *minimum* is compared: on a shared
machine other processes only ever add time, so the minimum is the least disturbed sample
(the median is printed too).  Target: overhead under 1% of a step.
"""

import argparse
import contextlib
import statistics
import time

import torch

from flopscale.engine import GPT, FlopLedger, ModelConfig
from flopscale.engine import flops as fl
from flopscale.fileio import atomic_write_json

SHAPES = {  # (model config, batch size); n_ctx is the sequence length of every batch
    "nano": (dict(n_layer=2, d_model=64, n_heads=4, n_ctx=128, n_vocab=4096), 8),
    "micro": (dict(n_layer=3, d_model=96, n_heads=6, n_ctx=128, n_vocab=4096), 8),
    "mini": (dict(n_layer=4, d_model=128, n_heads=8, n_ctx=128, n_vocab=4096), 8),
}


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(cfg_kw: dict, batch: int, device: str, reps: int = 30) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig(**cfg_kw)
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    idx = torch.randint(0, cfg.n_vocab, (batch, cfg.n_ctx), device=device)
    led = FlopLedger()

    def step(with_ledger: bool) -> float:
        _sync(device)
        t0 = time.perf_counter()
        if with_ledger:
            with led:
                _, loss = model(idx, idx)
                loss.backward()
        else:
            _, loss = model(idx, idx)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t0

    for _ in range(5):
        step(True), step(False)
    on, off = [], []
    for _ in range(reps):  # interleaved
        on.append(step(True))
        off.append(step(False))
    t_on, t_off = min(on), min(off)
    # The isolated cost: the same bookings on a 1-element tensor (the pass's one record, then
    # the one backward tap) minus the same tiny forward/backward with no ledger open, so the number
    # does not depend on the step's arithmetic or on the machine's other load.
    calls = [model._pass_counts(batch, cfg.n_ctx, True)]  # one booking per pass, whatever the depth
    tiny = torch.ones(1, requires_grad=True)

    def books(with_ledger: bool) -> float:
        t0 = time.perf_counter()
        with led if with_ledger else contextlib.nullcontext():
            y = tiny * 1.0
            for b in calls:
                y = fl.record(y, b)
            fl.record_backward(y).backward()
        return time.perf_counter() - t0

    t_books = max(0.0, min(books(True) for _ in range(reps)) - min(books(False) for _ in range(reps)))
    return {"shape": cfg_kw, "batch": batch, "device": device, "ms_with_ledger": 1e3 * t_on,
            "ms_without": 1e3 * t_off, "overhead_fraction": (t_on - t_off) / t_off,
            "isolated_ms_per_step": 1e3 * t_books, "isolated_fraction": t_books / t_off,
            "median_ms_with_ledger": 1e3 * statistics.median(on), "median_ms_without": 1e3 * statistics.median(off)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--reps", type=int, default=30, help="interleaved repetitions per arm")
    ap.add_argument("--json", default=None, help="write the rows here")
    a = ap.parse_args(argv)
    rows = [measure(kw, b, a.device, a.reps) for kw, b in SHAPES.values()]
    print(f"{'shape':<8}{'min ms, ledger':>16}{'min ms, none':>14}{'overhead':>10}{'isolated':>10}{'median ms (ledger / none)':>28}")
    for name, r in zip(SHAPES, rows):
        print(f"{name:<8}{r['ms_with_ledger']:>16.2f}{r['ms_without']:>14.2f}{100 * r['overhead_fraction']:>9.2f}%{100 * r['isolated_fraction']:>9.2f}%"
              f"{r['median_ms_with_ledger']:>16.2f} / {r['median_ms_without']:.2f}")
    if a.json:
        atomic_write_json(a.json, {"torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
