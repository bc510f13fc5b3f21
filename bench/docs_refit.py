"""Refit the committed docs reports from fresh runs and compare them byte for byte: a refactor of
fitting/ (or of the engine, whose runs these are) that changes no number passes.

    for p in cpu-tiny cpu-lr cpu-shape cpu-arch; do
        flopscale sweep --preset $p --out /tmp/docs-runs/$p --executor local --workers 2; done   # ~25 min, 2 cores
    python -m flopscale.bench.docs_refit --runs /tmp/docs-runs --out /tmp/docs-refit

Each preset's ROOT/PRESET/runs is fitted as its sweep fits it (fit_and_report with the preset's
n_boot and the trainer's lr function) into OUT/PRESET, without the outlook the sweep adds since
(the committed reports predate it), and its fits.json and report.md are compared with docs/'s
after the run root (an absolute path inside both) is replaced.  Equal files say two things at
once: the engine trained the same runs to the bit, and the fits and report did not change.
Exit status 1 when any file differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from flopscale import fitting
from flopscale.engine.presets import get_preset
from flopscale.engine.sweep import _lr_of_config

DOCS = Path(__file__).resolve().parents[1] / "docs"
REPORTS = {"cpu-tiny": DOCS / "cpu-tiny", **{p: DOCS / "paper-systems" / p for p in ("cpu-lr", "cpu-shape", "cpu-arch")}}
FILES = ("fits.json", "report.md")


def run_root(fits_json: Path) -> str:
    """The runs directory a report was fitted from, as its fits.json "inputs" names it."""
    return json.loads(fits_json.read_text())["inputs"].split(" under ", 1)[1]


def refit(preset: str, runs: Path, out: Path) -> dict:
    t = time.time()
    fitting.fit_and_report([str(runs)], out=str(out), n_boot=get_preset(preset).n_boot, quiet=True, progress=False,
                           lr_fn=_lr_of_config)
    row = {"preset": preset, "fit_s": round(time.time() - t, 1)}
    ours, theirs = run_root(out / "fits.json"), run_root(REPORTS[preset] / "fits.json")
    for name in FILES:
        a = (out / name).read_text().replace(ours, "RUNS")
        b = (REPORTS[preset] / name).read_text().replace(theirs, "RUNS")
        row[name] = "identical" if a == b else "DIFFERS"
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", required=True, help="ROOT holding PRESET/runs for each preset (flopscale sweep --out ROOT/PRESET)")
    ap.add_argument("--out", required=True, help="where the refitted reports go (OUT/PRESET)")
    ap.add_argument("--presets", default=",".join(REPORTS), help="comma-separated (default: all four)")
    args = ap.parse_args(argv)
    rows = []
    for p in args.presets.split(","):
        if p not in REPORTS:
            print(f"error: no committed report for preset {p!r} (have {', '.join(REPORTS)})", file=sys.stderr)
            return 2
        runs = Path(args.runs) / p / "runs"
        if not runs.is_dir():
            print(f"error: {runs} is not a directory (run: flopscale sweep --preset {p} --out {Path(args.runs) / p})",
                  file=sys.stderr)
            return 2
        rows.append(refit(p, runs, Path(args.out) / p))
    print("| preset | fit s | " + " | ".join(FILES) + " |\n| --- | --- | " + " | ".join("---" for _ in FILES) + " |")
    for r in rows:
        print(f"| {r['preset']} | {r['fit_s']} | " + " | ".join(r[f] for f in FILES) + " |")
    return 0 if all(r[f] == "identical" for r in rows for f in FILES) else 1


if __name__ == "__main__":
    sys.exit(main())
