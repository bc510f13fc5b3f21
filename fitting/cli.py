"""`flopscale fit`: fit scaling laws to runs or to a CSV of points, write JSON and a report.

    flopscale fit sweeps/cpu-small --out reports/cpu-small            # every law the runs support
    flopscale fit runs/a runs/b --law n,nd --json fits.json
    flopscale fit --csv points.csv --law chinchilla --json -          # JSON to stdout
    python -m flopscale.fitting.cli --csv points.csv --law n          # same, without the top-level CLI

    flopscale fit --csv isoflops.csv --law isoflop --json -           # Hoffmann's approach 2
    flopscale fit --csv isoflops.csv --law isoflop --group cfg --json -   # one fit per value of column cfg
    flopscale fit --csv dc.csv --law data-constrained --fix E=1.87,A=521,B=1488,alpha=0.35,beta=0.35

Laws: n, d, c, nd, ns, bcrit, chinchilla, data-constrained (fitting/laws.py) and isoflop
(fitting/isoflop.py, a procedure rather than a formula); --law takes one or a comma list; the
default, auto, fits every law the data supports and says in the report which it skipped and why.
A CSV's columns are named N, D, C, S, B, U, loss (those a law needs; others, text included, are
ignored). From a CSV, `bcrit` is fitted only when asked for (a table of runs usually holds the
run's batch size in B, not B_crit). --fix NAME=VALUE,... holds parameters of the law(s) fixed.
--group COL fits each law once per value of a table column (a `config` or `name` column) and
puts the fits side by side in the report and in fits.json's "groups". --n-boot 0 gives no
intervals (ci95 null) and no warning about them; a degenerate bootstrap interval (most resamples
failed, all equal, or piled at one extreme) is flagged in the fit's warnings.
--compute nonembedding|all picks which measured C (metrics.jsonl `flops` or `flops_total`) the
C-based fits of runs use; the other convention is fitted too, under the name LAW_<convention>.

From Python (the sweep uses this): fit_and_report(paths, out=REPORT_DIR, laws=..., fix=...) returns
the fits.json content; run_fit(args) is the CLI's thin wrapper around it.

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

from flopscale.fileio import atomic_write_text

from .api import ALL_LAWS, COMPUTE, fit_and_report
from .estimator import N_BOOT, FitError
from .isoflop import TOL_DEX, WINDOW_DEX
from .laws import HUBER_DELTA
from .writes import check_out_file, write_error


def add_fit_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("paths", nargs="*", metavar="SWEEP_DIR|RUN_DIR",
                        help="run directories, or sweep directories searched recursively for runs")
    parser.add_argument("--csv", type=str, default=None, metavar="FILE",
                        help="fit a table of points instead (columns N, D, C, S, B, U, loss; others ignored)")
    parser.add_argument("--law", type=str, default="auto",
                        help=f"law(s) to fit, comma separated: {', '.join(ALL_LAWS)}, or auto (default)")
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
    parser.add_argument("--fix", type=str, default=None, metavar="NAME=VALUE[,NAME=VALUE...]",
                        help="hold parameters fixed (two-stage fits); reported as fixed, with no interval")
    parser.add_argument("--compute", type=str, default="nonembedding", choices=tuple(COMPUTE),
                        help="C of C-based fits from runs: nonembedding (metrics `flops`, the paper's C) or all "
                             "(`flops_total`); the other is fitted too. For a CSV: the convention its C is in")
    parser.add_argument("--slice-tol", type=float, default=TOL_DEX, metavar="DEX",
                        help="isoflop: budgets within this many decades (gap between neighbours) form one slice")
    parser.add_argument("--slice-window", type=float, default=WINDOW_DEX, metavar="DEX",
                        help="isoflop: half-width in decades of N of the window each slice's parabola is fitted in")
    parser.add_argument("--group", type=str, default=None, metavar="COL",
                        help="with --csv: fit each law once per value of column COL (text or number) and report "
                             "the fits side by side (fits named LAW.COL_VALUE)")
    parser.add_argument("--quiet", action="store_true", help="no summary table on stdout")
    return parser


def run_fit(args) -> int:
    """Run `flopscale fit` with parsed args; raises FitError on bad input (see module docstring)."""
    if args.json and args.json != "-":
        check_out_file(args.json)  # before the fit, which can take a minute
    payload = fit_and_report(
        args.paths, args.out, laws=args.law, point=args.point, n_boot=args.n_boot, seed=args.seed,
        compute=args.compute, fix=args.fix, quiet=args.quiet or args.json == "-", csv=args.csv,
        huber_delta=args.huber_delta, grid=args.grid, slice_tol=args.slice_tol, slice_window=args.slice_window,
        group=args.group, progress=False if args.quiet else None)
    if args.json:
        results = payload["fits"]
        text = json.dumps(results[0] if len(results) == 1 else results, indent=1)
        if args.json == "-":
            print(text)
        else:
            try:
                atomic_write_text(args.json, text + "\n")
            except OSError as e:
                raise write_error(args.json, e) from None
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
