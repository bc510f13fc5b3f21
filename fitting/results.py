"""The results of one `fit` request (compute): what fits.json serialises, and the fits behind it.

    from flopscale.fitting.results import FitEntry, build_payload
    payload = build_payload(entries, frontiers=..., inputs="33 run directories under ...")
    # the fits.json content: strict JSON (NaN and inf as null); docs/ARCHITECTURE.md gives the schema

FitEntry keeps one fit with what its figure needs (the bootstrap parameters and the points).
The presentation modules (figures.py, panels.py, report.py) read these and never change them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from .laws import PAPER, PAPER_ALLOCATION_EMPIRICAL, PAPER_ALLOCATION_HOFFMANN, allocation_exponents
from .study import caveats, exponent_rows, frontier_entries, frontiers_by_compute  # noqa: F401 (re-exported)


# The report's six panels and the overview, one PNG each (drawn by panels.py): fits.json names them
# under "panels" whether or not a report directory was written.
PANELS = {"1": "panel1_loss_vs_compute.png", "2": "panel2_loss_vs_data.png", "3": "panel3_loss_vs_params.png",
          "4": "panel4_allocation.png", "5": "panel5_bcrit.png", "6": "panel6_isoflop.png"}
PANEL_FILES = {**{f"panel{k}": v for k, v in PANELS.items()}, "overview": "overview.png"}


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



def build_payload(entries: List[FitEntry], *, frontiers: Optional[dict] = None, compute: str = "nonembedding",
                  batch: Optional[dict] = None, inputs: str = "", skipped: Optional[Dict[str, str]] = None,
                  study: Optional[dict] = None) -> dict:
    """The fits.json content (strict JSON: NaN and inf as null). study: study.summarise's dict."""
    payload = {"inputs": inputs, "fits": [dict(e.fit, source=e.source, name=e.stem) for e in entries]}
    frontiers = frontiers or {}
    for conv, fr in frontiers.items():
        key = "frontier" if conv == compute else f"frontier_{conv}"
        payload[key] = {k: v for k, v in fr.items() if k != "L_C"}  # law `c` is its own entry in "fits"
    if batch is not None:
        payload["batch"] = batch
    if skipped:
        payload["skipped"] = skipped
    by = {e.fit["law"]: e.fit for e in entries}
    if "ns" in by and "bcrit" in by:
        payload["allocation"] = allocation_exponents(by["ns"]["params"]["alpha_N"], by["ns"]["params"]["alpha_S"],
                                                     by["bcrit"]["params"]["alpha_B"])
    payload["allocation_paper"] = {"derived": allocation_exponents(PAPER["ns"]["alpha_N"], PAPER["ns"]["alpha_S"],
                                                                   PAPER["bcrit"]["alpha_B"]),
                                   "empirical": PAPER_ALLOCATION_EMPIRICAL,
                                   "hoffmann_table2": PAPER_ALLOCATION_HOFFMANN}

    payload = clean_json(payload)
    if study is not None:
        payload["study"] = clean_json(study)
    payload["exponents"] = clean_json(exponent_rows(payload, study))
    payload["caveats"] = caveats(payload, study)
    return payload


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
