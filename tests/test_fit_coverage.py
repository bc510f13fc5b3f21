"""Bootstrap 95% intervals cover the true exponent at about their nominal rate.

    /work/venv/bin/pytest tests/test_fit_coverage.py -q -s
"""

import numpy as np

from flopscale.fitting.estimator import fit
from flopscale.fitting.synth import law_points


def test_bootstrap_coverage_alpha_N():
    draws, hits, widths = 100, 0, []
    for s in range(draws):
        cols = law_points("n", N=np.logspace(6, 9, 12), noise=0.004, seed=1000 + s)
        r = fit("n", cols, n_boot=200, seed=s, holdout=False)
        lo, hi = r["ci95"]["alpha_N"]
        hits += lo <= 0.076 <= hi
        widths.append(hi - lo)
    rate = hits / draws
    print(f"\ncoverage of alpha_N over {draws} draws: {rate:.2f} (nominal 0.95), mean width {np.mean(widths):.4f}")
    # binomial sd at 0.95 with 100 draws is 0.022; percentile bootstraps with 12 points run a little low
    assert 0.88 <= rate <= 0.99
