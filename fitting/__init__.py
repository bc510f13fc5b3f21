"""Scaling-law fits: law forms, the robust estimator, the compute frontier, B_crit, reports.

    from flopscale.fitting import fit, predict, LAWS, PAPER, FitError
    res = fit("n", {"N": N, "loss": loss})     # {"law", "params", "ci95", "n_points", "loss_fn", "rmse_log", ...}
    predict("chinchilla", PAPER["chinchilla"], N=7e10, D=1.4e12)

    fit_isoflop({"N": N, "C": C, "loss": loss})   # Hoffmann's approach 2: a, b and per-budget slices
    fit_and_report(["sweeps/s/runs"], out="sweeps/s/report")   # what `flopscale fit` does; returns fits.json

The `flopscale fit` subcommand lives in fitting/cli.py (add_fit_arguments, run_fit -> fit_and_report).
Layering: fitting/ imports nothing of the project but flopscale.fileio (atomic writes).
"""

from .api import fit_and_report
from .estimator import FitError, fit, fit_power
from .isoflop import fit_isoflop
from .laws import LAWS, PAPER, PF_DAY, allocation, allocation_exponents, chinchilla_allocation, predict

__all__ = ["FitError", "fit", "fit_power", "fit_isoflop", "fit_and_report", "LAWS", "PAPER", "PF_DAY", "allocation",
           "allocation_exponents", "chinchilla_allocation", "predict"]
