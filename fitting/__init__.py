"""Scaling-law fits: law forms, the robust estimator, the compute frontier, B_crit, reports.

    from flopscale.fitting import fit, predict, LAWS, PAPER, FitError
    res = fit("n", {"N": N, "loss": loss})     # {"law", "params", "ci95", "n_points", "loss_fn", "rmse_log", ...}
    predict("chinchilla", PAPER["chinchilla"], N=7e10, D=1.4e12)

The `flopscale fit` subcommand lives in fitting/cli.py (add_fit_arguments, run_fit).
"""

from .fit import FitError, fit, fit_power
from .laws import LAWS, PAPER, PF_DAY, allocation, allocation_exponents, predict

__all__ = ["FitError", "fit", "fit_power", "LAWS", "PAPER", "PF_DAY", "allocation", "allocation_exponents",
           "predict"]
