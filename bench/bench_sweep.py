"""Sweep executors on one machine: the same preset inline and on K local workers, wall time of
the whole command (data from a warm token cache, runs, fit and report) and of the runs phase,
and a check that every run's per-step numbers are identical.

    python -m flopscale.bench.bench_sweep                          # cpu-smoke, 2 workers
    python -m flopscale.bench.bench_sweep --preset cpu-tiny --workers 2 --json bench/results/cpu_sweep.json

Work model: wall-clock seconds (the executors change where runs train, not what they compute);
the speedup is inline / local, measured back to back in one invocation, with the machine's load
average recorded beside it (a busy core makes a pinned worker wait).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _sweep(preset: str, out: Path, *extra: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "flopscale.cli", "sweep", "--preset", preset, "--out", str(out),
                        "--quiet", *extra], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"error: sweep {' '.join(extra) or 'inline'} failed: {r.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def _rows(run_dir: Path) -> list:
    drop = ("tokens_per_s", "mfu")
    return [{k: v for k, v in json.loads(ln).items() if k not in drop}
            for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-smoke", help="sweep preset to time (default: cpu-smoke)")
    ap.add_argument("--workers", type=int, default=2, help="local workers (default: 2)")
    ap.add_argument("--json", default=None, help="write the result here")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        from flopscale.engine.data import load_corpus
        from flopscale.engine.presets import get_preset

        tc = get_preset(a.preset).train
        load_corpus(tc.get("data", "stdlib"), tc.get("tokenizer", "bpe-4096"))  # warm token cache for both
        load0 = os.getloadavg()[0]
        wall = {"inline": _sweep(a.preset, d / "inline")}
        wall["local"] = _sweep(a.preset, d / "local", "--executor", "local", "--workers", str(a.workers))
        load1 = os.getloadavg()[0]
        man = {k: json.loads((d / k / "sweep.json").read_text()) for k in wall}
        names = sorted(p.name for p in (d / "inline" / "runs").iterdir())
        same = all(_rows(d / "inline" / "runs" / n) == _rows(d / "local" / "runs" / n) for n in names)
    runs = {k: man[k]["timing_s"]["runs_this_invocation"] for k in wall}
    res = {"preset": a.preset, "workers": a.workers, "cpus": os.cpu_count(), "wall_s": wall, "runs_phase_s": runs,
           "speedup_wall": wall["inline"] / wall["local"], "speedup_runs": runs["inline"] / runs["local"],
           "bit_identical": same, "load_avg_before_after": [load0, load1]}
    print(f"{a.preset}: inline {wall['inline']:.1f} s, local x{a.workers} {wall['local']:.1f} s -> "
          f"{res['speedup_wall']:.2f}x wall, {res['speedup_runs']:.2f}x runs phase; per-step numbers identical: "
          f"{same}; load average {load0:.1f} -> {load1:.1f} on {os.cpu_count()} cores")
    if a.json:
        from flopscale.fileio import atomic_write_json

        atomic_write_json(a.json, res)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
