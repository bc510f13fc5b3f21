"""The estimator recovers known constants from noisy synthetic points (fitting/estimator.py).

    /work/venv/bin/pytest tests/test_fit_recovery.py -q -s     # -s prints the recovered numbers

Points come from the paper's constants (Hoffmann's for chinchilla) times exp(N(0, 0.004)), i.e.
0.4% multiplicative noise, fixed seeds. Exponent tolerances are a few thousandths; predictions
at 100x the largest size in the data must land within 1% of the true law.
"""

import numpy as np
import pytest

from flopscale.fitting.estimator import fit, fit_power, hoffmann_grid
from flopscale.fitting.laws import LAWS, PAPER
from flopscale.fitting.synth import law_points

NOISE = 0.004


def _check(law, res, far, tol):
    L = LAWS[law]
    err = {k: res["params"][k] - PAPER[law][k] for k in res["params"]}
    rel100 = float(np.max(np.abs(L.predict(res["params"], **far) / L.predict(PAPER[law], **far) - 1)))
    print(f"\n{law}: params {res['params']}\n  errors {err}\n  ci95 {res['ci95']}\n  rmse_log "
          f"{res['rmse_log']:.5f}  100x relative error {rel100:.5f}  holdout {res['holdout'] and res['holdout'].get('rel_err_max')}")
    for k, t in tol.items():
        assert abs(err[k]) <= t, (k, err[k])
    assert rel100 < 0.01
    # the noise level is what the residuals show
    assert 0.5 * NOISE < res["rmse_log"] < 1.5 * NOISE
    h = res["holdout"]
    assert h["n_held_out"] >= 1 and h["rel_err_max"] < 0.02
    assert set(res) >= {"law", "params", "ci95", "n_points", "loss_fn", "rmse_log"}
    for k in L.params:
        lo, hi = res["ci95"][k]
        assert lo <= res["params"][k] <= hi


@pytest.mark.parametrize("law,key,lo,hi", [("n", "N", 6, 9), ("d", "D", 7, 10), ("c", "C", 15, 21)])
def test_single_power_laws(law, key, lo, hi):
    cols = law_points(law, **{key: np.logspace(lo, hi, 13)}, noise=NOISE, seed=1)
    res = fit(law, cols, seed=0)
    a = [k for k in res["params"] if k.startswith("alpha")][0]
    _check(law, res, {key: np.array([10.0 ** hi * 100])}, {a: 0.002})
    assert res["n_points"] == 13 and res["law"] == law


def test_bcrit():
    cols = law_points("bcrit", loss=np.linspace(2.5, 5.0, 13), noise=NOISE, seed=2)
    res = fit("bcrit", cols)
    # "100x larger models": B_crit at the loss a 100x larger N reaches under L(N), ~ 0.7x the lowest
    _check("bcrit", res, {"loss": np.array([2.5 * 100 ** -0.076])}, {"alpha_B": 0.002})


def test_nd():
    NN, DD = np.meshgrid(np.logspace(6, 9, 7), np.logspace(8, 11, 7))
    cols = law_points("nd", N=NN.ravel(), D=DD.ravel(), noise=NOISE, seed=1)
    res = fit("nd", cols, n_boot=60)
    _check("nd", res, {"N": np.array([1e11]), "D": np.array([1e13])}, {"alpha_N": 0.002, "alpha_D": 0.003})


def test_ns():
    NN, SS = np.meshgrid(np.logspace(6, 9, 7), np.logspace(3, 5, 7))
    cols = law_points("ns", N=NN.ravel(), S=SS.ravel(), noise=NOISE, seed=1)
    res = fit("ns", cols, n_boot=60)
    # alpha_S (0.76) is ten times alpha_N: a few thousandths is relative 1%
    _check("ns", res, {"N": np.array([1e11]), "S": np.array([1e7])}, {"alpha_N": 0.002, "alpha_S": 0.01})


def test_chinchilla_hoffmann_approach3():
    """Full 4500-point start grid, Huber delta 1e-3 summed, on Hoffmann's own constants."""
    assert hoffmann_grid().shape == (4500, 5)
    NN, DD = np.meshgrid(np.logspace(7, 11, 8), np.logspace(9, 13, 8))
    cols = law_points("chinchilla", N=NN.ravel(), D=DD.ravel(), noise=0.003, seed=0)
    res = fit("chinchilla", cols, n_boot=40)
    assert res["n_starts"] == 4500
    p = res["params"]
    print("\nchinchilla", p, res["ci95"])
    assert abs(p["alpha"] - 0.34) < 0.004 and abs(p["beta"] - 0.28) < 0.004
    assert abs(p["E"] - 1.69) < 0.01
    assert abs(np.log(p["A"] / 406.4)) < 0.1 and abs(np.log(p["B"] / 410.7)) < 0.1
    far = {"N": np.array([1e13]), "D": np.array([2e14])}
    rel = LAWS["chinchilla"].predict(p, **far) / LAWS["chinchilla"].predict(PAPER["chinchilla"], **far) - 1
    assert abs(rel[0]) < 0.01
    for k in ("alpha", "beta", "E"):
        lo, hi = res["ci95"][k]
        assert lo <= PAPER["chinchilla"][k] <= hi, k


def test_huber_resists_outliers():
    cols = law_points("n", N=np.logspace(6, 9, 13), noise=NOISE, seed=3)
    cols["loss"][[2, 9]] *= np.array([1.3, 0.8])  # two corrupted runs
    res = fit("n", cols, n_boot=0, holdout=False)
    print("\nn with 2 outliers: alpha_N", res["params"]["alpha_N"])
    assert abs(res["params"]["alpha_N"] - 0.076) < 0.003


def test_reproducible_with_seed():
    cols = law_points("nd", N=np.repeat(np.logspace(6, 9, 5), 5), D=np.tile(np.logspace(8, 11, 5), 5), seed=4)
    a = fit("nd", cols, n_boot=20, seed=7)
    b = fit("nd", cols, n_boot=20, seed=7)
    assert a == b


def test_fit_power():
    x = np.logspace(15, 20, 12)
    y = 3e-2 * x ** 0.73 * np.exp(np.random.default_rng(0).normal(0, NOISE, x.size))
    r = fit_power(x, y)
    assert abs(r["exponent"] - 0.73) < 0.002
    assert r["ci95"]["exponent"][0] <= 0.73 <= r["ci95"]["exponent"][1]
