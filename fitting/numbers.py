"""How fitting/ writes a number in text (report.md, notes, caveats, plan and backtest sections): one
function, whose callers choose only the format spec, the mark for a missing value and whether
numbers far from 1 switch to exponent notation.

    fmt(0.07612)               # '0.0761'
    fmt(None)                  # '—'
    fmt(2.5e-5, ".4g", sci=True)   # '2.500e-05'
    sig(1234.5, 2)             # '1.2e+03'
"""

from __future__ import annotations

import math

MISSING = "—"


def fmt(v, spec: str = ".3g", missing: str = MISSING, sci: bool = False) -> str:
    """``v`` formatted with ``spec``; ``missing`` for None, NaN or an infinity.  ``sci``: outside
    [1e-3, 1e5) (zero excepted), 3 decimals of exponent notation instead."""
    if v is None or not math.isfinite(v):
        return missing
    if sci:
        v = float(v)
        if not (1e-3 <= abs(v) < 1e5 or v == 0):
            return f"{v:.3e}"
    return f"{v:{spec}}"


def sig(v, nd: int = 3) -> str:
    """``nd`` significant figures (fmt with ".{nd}g"): the ablations' numbers."""
    return fmt(v, f".{nd}g")


def fmt_short_sci(v: float) -> str:
    """Exponent notation with the mantissa's trailing zeros dropped: 1e-3, 2.5e-2 (a setting, such
    as the Huber delta, as one would type it)."""
    m, ex = f"{v:e}".split("e")
    return f"{m.rstrip('0').rstrip('.')}e{int(ex)}"
