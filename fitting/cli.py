"""`flopscale fit`: fit scaling laws to runs or to a CSV of points, write JSON and a report.

    flopscale fit sweeps/cpu-small --out reports/cpu-small            # every law the runs support
    flopscale fit runs/a runs/b --law n,nd --json fits.json
    flopscale fit --csv points.csv --law chinchilla --json -          # JSON to stdout
    python -m flopscale.fitting.cli --csv points.csv --law n          # same, without the top-level CLI

Laws: n, d, c, nd, ns, bcrit, chinchilla (fitting/laws.py); --law takes one or a comma list; the
default, auto, fits every law the data supports and says in the report which it skipped and why.
A CSV's columns are named N, D, C, S, B, loss (those a law needs). From a CSV, `bcrit` is fitted
only when asked for (a table of runs usually holds the run's batch size in B, not B_crit).

Errors: bad input raises FitError (a ValueError with a one-line message). `run_fit` lets it
propagate; the top-level `flopscale` CLI, and this module's `main`, print `error: <msg>` on
stderr and exit with status 2.

--json OUT writes the single fit's dict ({"law", "params", "ci95", "n_points", "loss_fn",
"rmse_log", ...}) when one law was fitted, a list of them otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

import numpy as np

from .fit import HUBER_DELTA, N_BOOT, FitError, check_points, fit
from .laws import LAWS

AUTO_FROM_CSV = ("n", "d", "c", "nd", "ns", "chinchilla")


def add_fit_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("paths", nargs="*", metavar="SWEEP_DIR|RUN_DIR",
                        help="run directories, or sweep directories searched recursively for runs")
    parser.add_argument("--csv", type=str, default=None, metavar="FILE",
                        help="fit a table of points instead (columns N, D, C, S, B, loss)")
    parser.add_argument("--law", type=str, default="auto",
                        help=f"law(s) to fit, comma separated: {', '.join(LAWS)}, or auto (default)")
    parser.add_argument("--json", type=str, default=None, metavar="OUT",
                        help="write the fit result(s) as JSON to OUT ('-' for stdout)")
    parser.add_argument("--out", type=str, default=None, metavar="REPORT_DIR",
                        help="write fits.json, one PNG per law and report.md here")
    parser.add_argument("--point", type=str, default="best", choices=("best", "final"),
                        help="per-run point: best (lowest val_loss, early stopping) or final evaluation")
    parser.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--huber-delta", type=float, default=HUBER_DELTA,
                        help="Huber loss threshold on log residuals (Hoffmann et al.: 1e-3)")
    parser.add_argument("--grid", type=str, default="full", choices=("full", "coarse"),
                        help="chinchilla start grid: full (Hoffmann's 4500 starts) or coarse (243, quick looks)")
    parser.add_argument("--quiet", action="store_true", help="no summary table on stdout")
    return parser


def _parse_laws(spec: str) -> Optional[List[str]]:
    if spec in ("auto", "", None):
        return None
    laws = [s.strip() for s in spec.split(",") if s.strip()]
    for l in laws:
        if l not in LAWS:
            raise FitError(f"unknown law {l!r}; choose one of {', '.join(LAWS)} (or auto)")
    return laws


def _enough_for_auto(law: str, cols) -> None:
    """auto mode fits a law only where it is testable: >= 3 distinct values of each scale input
    and at least one point more than parameters (an explicit --law fits anyway, with warnings)."""
    L = LAWS[law]
    for k in L.inputs:
        if k != "loss" and np.unique(cols[k]).size < 3:
            raise FitError(f"{np.unique(cols[k]).size} distinct value(s) of {k}, auto needs 3")
    if len(cols[L.target]) <= L.n_params:
        raise FitError(f"{len(cols[L.target])} points for {L.n_params} parameters")


def _plan_csv(path: str, laws: Optional[List[str]]):
    from .runs import best_per, read_csv

    cols = read_csv(path)
    plan, skipped = [], {}
    for law in laws or AUTO_FROM_CSV:
        L = LAWS[law]
        need = list(L.inputs) + [L.target]
        if laws is None and not all(k in cols for k in need):
            continue  # auto: only the laws whose columns are present
        c = {k: cols[k] for k in need if k in cols}
        if laws is None:
            check_points(law, c)
            try:
                _enough_for_auto(law, c)
            except FitError as e:
                skipped[law] = str(e)
                continue
        # L(N) (L(D)) from a table that also varies D (N): the best loss per N (D), as for runs
        other = {"n": "D", "d": "N"}.get(law)
        if other and other in cols and np.unique(cols[other]).size > 1 and len(c) == len(need):
            check_points(law, c)  # report bad values before the selection could hide them
            plan.append((law, best_per(c, L.inputs[0]), f"{path}: lowest loss per {L.inputs[0]}"))
        else:
            plan.append((law, c, path))
    return plan, skipped, {"csv": path}


def _plan_runs(paths: List[str], laws: Optional[List[str]], point: str, n_boot: int, seed: int):
    from . import batch as B
    from .frontier import frontier, run_curve
    from .runs import best_per, curve_points, load_runs, run_points

    runs = load_runs(paths)
    pts = run_points(runs, point)
    want = laws or list(LAWS)
    plan, skipped, extra = [], {}, {"runs": [r.path for r in runs]}
    src = f"{len(runs)} runs, {point} val_loss per run"

    def add(law, cols, source, name=""):
        try:
            check_points(law, cols)
            if laws is None:
                _enough_for_auto(law, cols)
        except FitError as e:
            if laws is not None:
                raise FitError(f"law {law!r} from runs: {e}") from None
            skipped[name or law] = str(e)
            return
        plan.append((law, cols, source) if not name else (law, cols, source, name))

    if "n" in want:
        add("n", best_per(pts, "N"), f"{src}, lowest per N")
    if "d" in want:
        add("d", best_per(pts, "D"), f"{src}, lowest per D (D = unique tokens seen)")
    if "nd" in want:
        add("nd", pts, src)
    if "chinchilla" in want:
        add("chinchilla", pts, src)
    if "bcrit" in want or "ns" in want:
        g = B.gns_points(runs)
        se = B.se_points(runs)
        extra["batch"] = {"gns_points": int(g["B"].size), "se_points": int(se["points"]["B"].size),
                          "se_detail": se["detail"]}
        if g["B"].size:
            add("bcrit", g, "logged grad_noise_scale (tokens) against smoothed train loss")
        if se["points"]["B"].size:
            add("bcrit", se["points"], "B_crit from steps and tokens to reach a loss at several batch sizes",
                name="bcrit_se")
        if not g["B"].size and not se["points"]["B"].size:
            skipped["bcrit"] = "no grad_noise_scale logged and no runs differing only in batch size"
            if laws is not None and "bcrit" in laws:
                raise FitError("law 'bcrit' from runs: no grad_noise_scale logged and no runs differing only in batch size")
    if "ns" in want:
        cp = curve_points(runs)
        source = "every evaluation past 20% of each run"
        have_bcrit = [p for p in plan if p[0] == "bcrit"]
        if have_bcrit:
            # S -> S_min with the B_crit(L) measured here (paper eq. 5.4)
            bc = fit("bcrit", have_bcrit[0][1], n_boot=0, holdout=False)["params"]
            from .laws import b_crit, s_min
            cp = dict(cp, S=s_min(cp["S"], cp["B"], b_crit(cp["loss"], **bc)))
            source += ", S converted to S_min with the fitted B_crit(L)"
        else:
            source += ", S as run (no B_crit available to convert to S_min)"
        add("ns", {k: cp[k] for k in ("N", "S", "loss")}, source)
    fr = None
    if "c" in want:
        try:
            fr = frontier(runs, point=point, n_boot=n_boot, seed=seed)
        except FitError as e:
            if laws is not None:
                raise
            skipped["c"] = str(e)
        if fr is not None:
            env = fr["envelope"]
            add("c", {"C": np.array(env["C"]), "loss": np.array(env["loss"])},
                "lower envelope of the loss curves (compute frontier)")
            extra["frontier"] = fr
            extra["frontier_curves"] = [c for c in (run_curve(r) for r in runs) if c is not None]
    # keep the order of LAWS for the report
    order = {k: i for i, k in enumerate(LAWS)}
    plan.sort(key=lambda p: order[p[0]])
    return plan, skipped, extra


def run_fit(args) -> int:
    """Run `flopscale fit` with parsed args; raises FitError on bad input (see module docstring)."""
    from .report import FitEntry, clean_json, write_report

    laws = _parse_laws(args.law)
    if args.csv and args.paths:
        raise FitError("give run/sweep directories or --csv FILE, not both")
    if not args.csv and not args.paths:
        raise FitError("nothing to fit: give run or sweep directories, or --csv FILE")
    if args.n_boot < 0:
        raise FitError(f"--n-boot must be >= 0, got {args.n_boot}")
    if not args.huber_delta > 0:
        raise FitError(f"--huber-delta must be positive, got {args.huber_delta}")
    if args.csv:
        plan, skipped, extra = _plan_csv(args.csv, laws)
        inputs = f"CSV {args.csv}"
    else:
        plan, skipped, extra = _plan_runs(args.paths, laws, args.point, args.n_boot, args.seed)
        inputs = f"{len(extra['runs'])} run directories under {', '.join(args.paths)}"
    if not plan:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no law's columns are present"
        raise FitError(f"no law could be fitted ({why})")

    entries = []
    for item in plan:
        law, cols, source = item[:3]
        name = item[3] if len(item) > 3 else ""
        res, boot = fit(law, cols, delta=args.huber_delta, n_boot=args.n_boot, seed=args.seed,
                        grid=args.grid, return_boot=True)
        entries.append(FitEntry(res, boot, check_points(law, cols), source=str(source), name=name))

    results = [dict(e.fit, source=e.source) for e in entries]
    if args.json:
        payload = clean_json(results[0] if len(results) == 1 else results)
        text = json.dumps(payload, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    if args.out:
        write_report(args.out, entries, frontier=extra.get("frontier"), frontier_curves=extra.get("frontier_curves"),
                     batch=extra.get("batch"), inputs=inputs, skipped=skipped)
    if not args.quiet and args.json != "-":
        for e in entries:
            r = e.fit
            ps = ", ".join(f"{k}={v:.4g} [{r['ci95'][k][0]:.4g}, {r['ci95'][k][1]:.4g}]" for k, v in r["params"].items())
            print(f"{e.stem:11s} n={r['n_points']:<5d} rmse_log={r['rmse_log']:.4f}  {ps}")
            for w in r["warnings"]:
                print(f"{'':11s} warning: {w}")
        for k, v in skipped.items():
            print(f"{k:11s} skipped: {v}")
        if args.out:
            print(f"report: {args.out}/report.md")
    return 0


def main(argv=None) -> int:
    parser = add_fit_arguments(argparse.ArgumentParser(
        prog="flopscale fit", description="Fit scaling laws to runs or a CSV of points."))
    args = parser.parse_args(argv)
    try:
        return run_fit(args)
    except FitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
