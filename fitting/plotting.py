"""Plotting helpers every figure shares (presentation): matplotlib off-screen, atomic PNG writes,
and the one bootstrap band.

    from flopscale.fitting.plotting import pyplot, save_figure, bootstrap_band
    plt = pyplot()
    fig, ax = plt.subplots()
    lo_hi = bootstrap_band(LAWS["n"], boot, LAWS["n"].params, N=grid)   # (lo, hi) or None
    save_figure(fig, "report/n.png")

matplotlib is imported inside these functions only: computing a fit never loads it.
"""

from __future__ import annotations

import numpy as np

from flopscale.fileio import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str) -> None:
    """tight_layout, then the PNG (dpi 110) written atomically (flopscale.fileio), figure closed."""
    plt = pyplot()
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def bootstrap_band(law, boot, names, **cols):
    """The 95% band of a law's prediction at cols: pointwise 2.5/97.5 percentiles over the bootstrap
    parameter rows (boot, columns named by names) that predict finite values; None with fewer
    than 10 such rows (or no bootstrap)."""
    if boot is None or not len(boot):
        return None
    preds = []
    for row in boot:
        if not np.all(np.isfinite(row)):
            continue
        with np.errstate(all="ignore"):
            p = law.predict(dict(zip(names, row)), **cols)
        if np.all(np.isfinite(p)):
            preds.append(p)
    if len(preds) < 10:
        return None
    preds = np.array(preds)
    return np.percentile(preds, 2.5, axis=0), np.percentile(preds, 97.5, axis=0)
