"""The results of one `fit` request: what fits.json serialises, the fits behind it, and the readers
of that payload.  The bottom of fitting/'s layers: it imports nothing of the package.

    from flopscale.fitting.results import FitEntry, FitResults, frontiers_by_compute
    results.payload                     # the fits.json content (study.build_payload; the schema: docs/ARCHITECTURE.md)
    frontiers_by_compute(results.payload)   # {"nonembedding": {...}, "all": {...}}

FitEntry keeps one fit with what its figure needs (the bootstrap parameters and the points).
Compute modules build these; the presentation modules (figures.py, panels.py, report.py,
ablation_report.py, outlook_report.py) read them and never change them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np


# The report's six panels and the overview, one PNG each (drawn by panels.py): fits.json names them
# under "panels" whether or not a report directory was written.
PANELS = {"1": "panel1_loss_vs_compute.png", "2": "panel2_loss_vs_data.png", "3": "panel3_loss_vs_params.png",
          "4": "panel4_allocation.png", "5": "panel5_bcrit.png", "6": "panel6_isoflop.png"}
PANEL_FILES = {**{f"panel{k}": v for k, v in PANELS.items()}, "overview": "overview.png"}

# The ablations' vocabulary (fits.json "ablations", built by ablations.py, drawn by ablation_report.py):
# the fields a schedule comparison may vary (equal-area schedules have their own peak lr), and the
# shape series at fixed N, by key, with the name the report gives each.
SCHEDULE_FIELDS = ("schedule", "lr", "warmup", "min_lr_frac", "decay_frac")
SERIES = {"aspect": "aspect ratio", "ff": "d_ff / d_model", "heads": "heads"}


@dataclass(frozen=True)
class FitEntry:
    fit: dict                      # the dict fit() returns
    boot: Optional[np.ndarray]     # (n_boot, n_params) bootstrap public parameters, law's order
    cols: Dict[str, np.ndarray]    # the points it was fitted to
    source: str = ""               # where the points came from ("runs: best val_loss per run", ...)
    name: str = ""                 # file stem; defaults to the law

    @property
    def stem(self) -> str:
        return self.name or self.fit["law"]



def clean_json(o):
    """numpy scalars/arrays to Python, NaN and inf to null (strict JSON)."""
    if isinstance(o, dict):
        return {str(k): clean_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean_json(v) for v in o]
    if isinstance(o, np.ndarray):
        return clean_json(o.tolist())
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, np.integer):
        return int(o)
    return o



@dataclass(frozen=True)
class FitResults:
    """What one request computed: `payload` is the fits.json content (`to_json` is the file, byte for
    byte); the rest is what the report's figures read. Built once by fit_and_report, after every fit;
    report.write_report(out_dir, results) reads it and changes nothing."""

    payload: dict                          # the fits.json content (build_payload, then the run analyses)
    entries: Tuple[FitEntry, ...]          # every fit, in payload["fits"] order
    study: Optional[dict] = None           # study.study_from_runs / study_from_table: the panels' curves
    frontier_curves: Optional[list] = None  # each run's (C, loss) curve, for frontier.png
    ablations: Optional[object] = None     # ablations.Ablations: its figures' inputs

    def to_json(self) -> str:
        return json.dumps(self.payload, indent=1) + "\n"


def approach3_rows(payload: dict, fit_name: str) -> Dict[str, dict]:
    """{compute convention: the exponent row} of approach 3's a for one chinchilla fit, as
    payload["exponents"] holds it (value, ci95): the panels read it instead of recomputing it."""
    return {r["compute"]: r for r in payload.get("exponents") or []
            if r.get("fit") == fit_name and r["quantity"].startswith("N_opt ~ C^a, approach 3")}


def frontier_entries(payload) -> Dict[str, dict]:
    """The payload's compute frontiers by key ("frontier", "frontier_all"): the one scan for them."""
    return {k: v for k, v in payload.items() if k == "frontier" or k.startswith("frontier_")}


def frontiers_by_compute(payload) -> Dict[str, dict]:
    """The payload's compute frontiers by their convention ("nonembedding", "all")."""
    return {v.get("compute", "nonembedding"): v for v in frontier_entries(payload).values()}
