"""The results layer (issue 22): fits.json is the same with or without a report directory, the
report reads the results without changing them, every law is fitted once per request, and the
report's Huber line prints the delta the fits used.

    python -m pytest -q tests/test_fit_results.py
"""

import copy
import csv
import json

import numpy as np
import pytest

from flopscale.fitting import api, frontier as frontier_mod
from flopscale.fitting import fit_and_report
from flopscale.fitting.report import write_report
from flopscale.fitting.results import FitResults
from flopscale.fitting.synth import law_points, write_study


@pytest.fixture(scope="module")
def n_csv(tmp_path_factory):
    p = tmp_path_factory.mktemp("tab") / "n.csv"
    cols = law_points("n", N=np.logspace(6, 9, 8), seed=0)
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["N", "loss"])
        w.writerows(zip(cols["N"], cols["loss"]))
    return str(p)


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory):
    return write_study(str(tmp_path_factory.mktemp("study")), sizes=(1e5, 3e5, 1e6), budgets=(1e14, 3e14, 1e15),
                       rows=30, cooldown=False, gns=False)


def test_fits_json_is_the_payload_with_or_without_a_report(tmp_path, n_csv):
    without = fit_and_report(csv=n_csv, laws="n", n_boot=10)
    with_ = fit_and_report(csv=n_csv, laws="n", n_boot=10, out=str(tmp_path / "r"))
    on_disk = (tmp_path / "r" / "fits.json").read_text()
    assert json.loads(on_disk) == with_ == without
    assert on_disk == json.dumps(without, indent=1) + "\n"
    assert set(without["panels"]) == {f"panel{k}" for k in range(1, 7)} | {"overview"}


def test_report_line_prints_the_huber_delta_used(tmp_path, n_csv):
    fit_and_report(csv=n_csv, laws="n", n_boot=0, out=str(tmp_path / "a"), huber_delta=1e-2)
    fit_and_report(csv=n_csv, laws="n", n_boot=0, out=str(tmp_path / "b"))
    a = (tmp_path / "a" / "report.md").read_text()
    b = (tmp_path / "b" / "report.md").read_text()
    assert "Huber loss (delta 1e-2)" in a and "delta 1e-3" not in a
    assert "Huber loss (delta 1e-3)" in b


def test_write_report_reads_the_results_and_changes_nothing(tmp_path, study_runs, monkeypatch):
    captured = {}
    real = api.write_report

    def spy(out_dir, results):
        captured["before"] = copy.deepcopy(results.payload)
        captured["results"] = results
        return real(out_dir, results)

    monkeypatch.setattr(api, "write_report", spy)
    payload = fit_and_report([study_runs], laws="n,c", n_boot=5, out=str(tmp_path / "r"))
    res = captured["results"]
    assert isinstance(res, FitResults) and res.payload is payload
    assert payload == captured["before"]  # nothing written into the results while drawing
    with pytest.raises(Exception):
        res.payload = {}  # frozen
    # presentation alone, from the results: the same fits.json
    write_report(str(tmp_path / "again"), res)
    assert (tmp_path / "again" / "fits.json").read_text() == (tmp_path / "r" / "fits.json").read_text()


def test_law_c_is_fitted_once_per_convention(study_runs, monkeypatch):
    calls = []
    for mod in (api, frontier_mod):
        real = mod.fit
        monkeypatch.setattr(mod, "fit", lambda law, *a, _real=real, **k: calls.append(law) or _real(law, *a, **k))
    payload = fit_and_report([study_runs], laws="c", n_boot=5)
    convs = [f.get("compute") for f in payload["fits"] if f["law"] == "c"]
    assert sorted(convs) == ["all", "nonembedding"]
    assert calls.count("c") == len(convs) == 2  # was 4: the frontier fitted L(C) again and threw it away
    assert "L_C" not in payload["frontier"]


def test_bcrit_is_fitted_once_and_converts_ns_steps(tmp_path, monkeypatch):
    """ns converts S to S_min with the request's own bcrit fit (fitted first), not a second one."""
    runs = write_study(str(tmp_path / "gns"), sizes=(1e5, 3e5, 1e6), budgets=(1e14, 3e14, 1e15), rows=30,
                       cooldown=False, gns=True)
    calls = []
    real = api.fit
    monkeypatch.setattr(api, "fit", lambda law, *a, **k: calls.append(law) or real(law, *a, **k))
    payload = fit_and_report([runs], laws="bcrit,ns", n_boot=5)
    by = {f.get("name", f["law"]): f for f in payload["fits"]}
    assert calls.count("bcrit") == 1 and calls.count("ns") == 1
    assert "S converted to S_min" in by["ns"]["source"]
    assert [f["law"] for f in payload["fits"]] == ["ns", "bcrit"]  # fits.json keeps the plan's order
