"""Tables as people have them (--group, DataFrames, text columns), honest intervals, one-line errors.

    /work/venv/bin/pytest tests/test_fit_tables.py -q -s
"""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from flopscale.fitting import fit, fit_and_report, fit_isoflop
from flopscale.fitting.estimator import FitError, bootstrap_intervals
from flopscale.fitting.synth import law_points

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_fit_isoflop import TRUTH, faulty_table  # noqa: E402


class Frame:
    """The DataFrame surface the API relies on (.columns, [], .to_numpy()), without pandas."""

    class _Col:
        def __init__(self, v):
            self.v = v

        def to_numpy(self):
            return np.asarray(self.v, dtype=object)

    def __init__(self, d):
        self.d = d
        self.columns = list(d)

    def __getitem__(self, k):
        return self._Col(self.d[k])


def _write(path, cols):
    names = list(cols)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        w.writerows(zip(*[cols[k] for k in names]))
    return str(path)


def _two_configs():
    a, _ = faulty_table(11)
    b, _ = faulty_table(12)
    b = dict(b, loss=b["loss"] * 1.05)  # a second configuration: same optimum, 5% worse everywhere
    cols = {k: np.concatenate([a[k], b[k]]) for k in a}
    cols["cfg"] = ["base"] * len(a["N"]) + ["wide-ffn"] * len(b["N"])
    cols["name"] = [f"run{i}" for i in range(len(cols["N"]))]
    return cols


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "flopscale.fitting.cli", *argv], capture_output=True, text=True,
                          timeout=300)


def test_cli_group_isoflop_side_by_side(tmp_path):
    path = _write(tmp_path / "iso.csv", _two_configs())
    p = _cli("--csv", path, "--law", "isoflop", "--group", "cfg", "--json", "-", "--n-boot", "20")
    assert p.returncode == 0, p.stderr
    fits = json.loads(p.stdout)
    assert [f["name"] for f in fits] == ["isoflop.cfg_base", "isoflop.cfg_wide-ffn"]
    assert [f["group"] for f in fits] == [{"column": "cfg", "value": "base"}, {"column": "cfg", "value": "wide-ffn"}]
    for f in fits:
        assert abs(f["params"]["a"] - TRUTH["a"]) < 0.03 and f["ci95"]["a"] is not None
    out = tmp_path / "rep"
    res = fit_and_report(csv=path, out=out, laws="isoflop", group="cfg", n_boot=0)
    g = res["groups"]
    assert g["column"] == "cfg" and g["values"] == ["base", "wide-ffn"]
    assert set(g["params"]["isoflop"]["a"]) == {"base", "wide-ffn"}
    md = (out / "report.md").read_text()
    assert "## Side by side: one fit per `cfg`" in md and "| cfg = base | cfg = wide-ffn |" in md
    assert (out / "isoflop.cfg_base.png").exists()


def test_dataframe_and_dict_give_the_same_fit():
    cols = _two_configs()
    d = {k: np.asarray(v) for k, v in cols.items()}
    sel = d["cfg"] == "base"
    plain = {k: d[k][sel].astype(float) for k in ("N", "C", "loss", "D")}
    frame = Frame({k: list(v[sel]) for k, v in d.items()})  # string columns included
    assert fit_isoflop(frame, n_boot=0)["params"] == fit_isoflop(plain, n_boot=0)["params"]
    r1 = fit_and_report(data=Frame({k: list(v) for k, v in d.items()}), laws="isoflop", group="cfg", n_boot=0)
    assert r1["fits"][0]["params"] == fit_isoflop(plain, n_boot=0)["params"]
    n = law_points("n", N=np.logspace(6, 9, 8), seed=0)
    fr = Frame({"N": list(n["N"]), "loss": list(n["loss"]), "config": ["x"] * 8})
    assert fit("n", fr, n_boot=0)["params"] == fit("n", n, n_boot=0)["params"]
    with pytest.raises(FitError, match=r"column 'N' value 'x' \(row 0\) is not a number"):
        fit("n", Frame({"N": ["x"] * 8, "loss": list(n["loss"])}))  # a text column the law needs


def test_pandas_dataframe():
    pd = pytest.importorskip("pandas")
    d = {k: np.asarray(v) for k, v in _two_configs().items()}
    sel = d["cfg"] == "base"
    plain = {k: d[k][sel].astype(float) for k in ("N", "C", "loss", "D")}
    df = pd.DataFrame({k: v for k, v in d.items()})
    assert fit_and_report(data=df, laws="isoflop", group="cfg", n_boot=0)["fits"][0]["params"] == \
        fit_isoflop(plain, n_boot=0)["params"]


def test_n_boot_zero_no_interval_no_warning():
    cols = law_points("n", N=np.logspace(6, 9, 10), seed=0)
    r = fit("n", cols, n_boot=0)
    assert r["ci95"] == {"alpha_N": None, "N_c": None}
    assert not [w for w in r["warnings"] if "interval" in w], r["warnings"]
    NN, DD = np.meshgrid(np.logspace(7, 10, 4), np.logspace(9, 12, 4))
    ch = fit("chinchilla", law_points("chinchilla", N=NN.ravel(), D=DD.ravel(), seed=0), n_boot=0, grid="coarse")
    assert all(v is None for v in ch["ci95"].values()) and all(v is None for v in ch["allocation"]["ci95"].values())
    assert not [w for w in ch["warnings"] if "interval" in w], ch["warnings"]


def test_degenerate_bootstrap_flagged():
    n = 100
    same = np.tile([[0.3, 1.0]], (n, 1))
    ci, w = bootstrap_intervals(["x", "y"], same, {}, n)
    assert ci["x"] == [0.3, 0.3] and len(w) == 2 and all("every bootstrap resample" in m for m in w)
    rng = np.random.default_rng(0)
    piled = np.stack([np.where(rng.random(n) < 0.7, 50.0, rng.uniform(5, 50, n)), rng.normal(0, 1, n)], 1)
    ci, w = bootstrap_intervals(["R", "z"], piled, {}, n)
    assert len(w) == 1 and "R:" in w[0] and "highest value" in w[0] and "degenerate" in w[0]
    failed = np.full((n, 1), np.nan)
    failed[:20, 0] = rng.normal(0, 1, 20)
    ci, w = bootstrap_intervals(["q"], failed, {}, n)
    assert "only 20 of 100" in w[0]
    ci, w = bootstrap_intervals(["q"], failed, {"q": 1.0}, n)
    assert ci == {"q": None} and not w
    # end to end: points on a law exactly, 3 distinct sizes, resamples that can only give one value
    cols = {"N": np.repeat([1e6, 1e7, 1e8], 3), "loss": np.repeat((8.8e13 / np.array([1e6, 1e7, 1e8])) ** 0.076, 3)}
    r = fit("n", cols, n_boot=50, holdout=False)
    assert any("zero-width" in m for m in r["warnings"]), r["warnings"]


@pytest.mark.parametrize("make,argv,frag", [
    (lambda c: {k: c[k] for k in ("N", "loss", "D")}, ["--law", "isoflop"], "missing C"),
    (lambda c: c, ["--law", "data-constrained"], "missing U"),
    (lambda c: {"N": c["N"], "C": np.full(c["N"].size, 1e20), "loss": c["loss"]}, ["--law", "isoflop"],
     "usable slice(s) of 1"),
    (lambda c: {k: c[k][:3] for k in ("N", "D", "loss")}, ["--law", "chinchilla"], "only 3 point(s)"),
    (lambda c: c, ["--law", "isoflop", "--fix", "alpha=0.3"], "not a parameter of law 'isoflop'"),
    (lambda c: c, ["--law", "chinchilla", "--fix", "a=0.3"], "not a parameter of law 'chinchilla'"),
    (lambda c: c, ["--law", "isoflop", "--group", "nope"], "--group nope: no such column"),
])
def test_bad_tables_one_line_exit_2(tmp_path, make, argv, frag):
    cols, _ = faulty_table(5)
    path = _write(tmp_path / "t.csv", make(cols))
    p = _cli("--csv", path, *argv, "--n-boot", "0", "--grid", "coarse")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and frag in lines[0], p.stderr
