"""Time the Chinchilla fit (Hoffmann et al. approach 3) with the full 4500-point start grid.

    python bench/bench_fit.py                  # 300 points, full grid, one core
    python bench/bench_fit.py --points 500 --n-boot 200
    python bench/bench_fit.py --rows 2000,20000 --save bench/results/cpu_fit.json --label after
        # the whole fit `flopscale fit --csv T --law chinchilla` runs (grid, 200 bootstrap resamples,
        # leave-largest-out), on tables of those many rows; merged into the file under the label

Tables above 200 rows are screened (fitting/estimator.py: the grid's objective for all 4500 starts at
once, L-BFGS from the best 100, bootstrap refits from the best optimum); smaller ones run every start.

Work model: one L-BFGS-B run (scipy.optimize, Huber delta 1e-3 summed over points, log-sum-exp
parameterisation) from each of 4500 starts, alpha, beta in {0, 0.5, ..., 2}, e in {-1, ..., 1},
a, b in {0, 5, ..., 25}; then the bootstrap refits from the best few optima. Each objective
evaluation is O(points); the time is dominated by per-iteration overhead, so it grows slowly
with the number of points. Numbers depend on the CPU and its load: the device line says which.
Runs on one core: OpenBLAS is held to one thread (fitting/_threads.py) and nothing forks.
"""

import argparse
import json
import os
import platform
import time

import numpy as np

from flopscale.fileio import atomic_write_json
from flopscale.fitting.estimator import fit
from flopscale.fitting.laws import PAPER
from flopscale.fitting.synth import law_points


def table(rows: int, seed: int = 0, noise: float = 0.01):
    """rows (N, D, loss) points on a grid over 4 decades of N and D, Chinchilla's constants, noise."""
    side = int(np.ceil(np.sqrt(rows)))
    NN, DD = np.meshgrid(np.logspace(7, 11, side), np.logspace(9, 13, side))
    return law_points("chinchilla", N=NN.ravel()[:rows], D=DD.ravel()[:rows], noise=noise, seed=seed)


def time_tables(rows_list, save, label, seed=0):
    """The CLI's whole Chinchilla fit (defaults: full grid, 200 resamples, holdout) per table size."""
    out = []
    for rows in rows_list:
        cols = table(rows, seed)
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        res = fit("chinchilla", cols, seed=seed, progress=False)
        dt = time.perf_counter() - t0
        row = {"rows": rows, "seconds": round(dt, 2), "load_avg_before_after": [load0, os.getloadavg()[0]],
               "n_boot": res["n_boot"], "n_starts": res["n_starts"],
               "params": {k: round(v, 6) for k, v in res["params"].items()}}
        print(json.dumps(row))
        out.append(row)
    if save:
        doc = json.load(open(save)) if os.path.exists(save) else {}
        doc.setdefault("workload", "flopscale fit --csv T --law chinchilla: full 4500-start grid, 200 bootstrap "
                                   "resamples, leave-largest-out; T from bench_fit.table(rows), noise 0.01")
        doc["device"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus (shared)"
        doc[label] = out
        atomic_write_json(save, doc)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=300, help="number of (N, D, loss) points")
    ap.add_argument("--n-boot", type=int, default=0, help="bootstrap resamples timed separately")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=str, default=None, help="comma list of table sizes: time the CLI's whole fit")
    ap.add_argument("--save", type=str, default=None, help="with --rows: merge the timings into this JSON file")
    ap.add_argument("--label", type=str, default="after", help="with --save: the key the timings go under")
    args = ap.parse_args()
    if args.rows:
        time_tables([int(r) for r in args.rows.split(",")], args.save, args.label, args.seed)
        return

    side = int(np.ceil(np.sqrt(args.points)))
    NN, DD = np.meshgrid(np.logspace(7, 11, side), np.logspace(9, 13, side))
    cols = law_points("chinchilla", N=NN.ravel()[: args.points], D=DD.ravel()[: args.points], noise=0.003,
                      seed=args.seed)
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the claim says
    except (AttributeError, OSError):
        pass
    t0 = time.perf_counter()
    res = fit("chinchilla", cols, n_boot=0, holdout=False, seed=args.seed)
    t_grid = time.perf_counter() - t0
    print(f"device: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, pinned to 1, "
          f"load avg {os.getloadavg()[0]:.2f}")
    print(f"chinchilla fit: {args.points} points, {res['n_starts']} starts: {t_grid:.2f} s "
          f"({1e3 * t_grid / res['n_starts']:.2f} ms per start)")
    print("  fitted", {k: round(v, 4) for k, v in res["params"].items()})
    print("  truth ", PAPER["chinchilla"])
    if args.n_boot:
        t0 = time.perf_counter()
        res = fit("chinchilla", cols, n_boot=args.n_boot, holdout=False, seed=args.seed)
        t_all = time.perf_counter() - t0
        # reported whole: on a loaded machine the difference of two timings is noise, not the bootstrap
        print(f"grid + {args.n_boot} bootstrap resamples (a second, separate run): {t_all:.2f} s")


if __name__ == "__main__":
    main()
