"""Compute frontier (envelope, isoFLOP) and critical batch size from synthetic runs.

    /work/venv/bin/pytest tests/test_fit_frontier.py -q -s

The synthetic runs (fitting/synth.py) follow L(N, S) = (N_c/N)^alpha_N + (S_c/S)^alpha_S at the
paper's constants. At a fixed batch B, minimising it at fixed C = 6 N B S gives
N_opt ~ C^(alpha_S/(alpha_N+alpha_S)) = C^0.908 and L ~ C^-(alpha_N alpha_S/(alpha_N+alpha_S)) = C^-0.0699
(the frontier's truth here; the paper's 0.73 / 0.050 also fold in B = B_crit(L)).
"""

import numpy as np
import pytest

from flopscale.fitting.batch import bcrit_from_pairs, gns_points, se_points, steps_to_loss
from flopscale.fitting.estimator import fit
from flopscale.fitting.frontier import frontier, lower_envelope
from flopscale.fitting.isoflop import fit_isoflop
from flopscale.fitting.runs import load_runs, run_points
from flopscale.fitting.synth import write_run

aN, aS = 0.077, 0.76
N_EXP = aS / (aN + aS)
L_EXP = aN * aS / (aN + aS)


def test_envelope_frontier(tmp_path):
    for i, N in enumerate(np.logspace(5, 7, 13)):
        write_run(str(tmp_path / f"r{i:02d}"), N=N, batch_seqs=32, steps=4000, log_every=10, eval_every=50,
                  use_bcrit=False, seed=i)
    runs = load_runs([str(tmp_path)])
    env = lower_envelope(runs)
    assert np.all(np.diff(env["N"]) >= 0)  # bigger models take over as compute grows
    fr = frontier(runs, n_boot=50)
    a_c, a_n = fr["L_C"]["params"]["alpha_C"], fr["N_opt"]["exponent"]
    print(f"\nenvelope: alpha_C {a_c:.4f} (truth {L_EXP:.4f}), N_opt exponent {a_n:.3f} (truth {N_EXP:.3f}), "
          f"{fr['N_opt']['n_sizes_on_frontier']} sizes on the envelope")
    assert abs(a_c - L_EXP) < 0.005
    assert abs(a_n - N_EXP) < 0.06  # N on the envelope is a staircase of 13 sizes


def test_isoflop(tmp_path):
    for j, C in enumerate([1e15, 1e16, 1e17]):
        centre = 5e6 * (C / 1e15) ** N_EXP  # sizes around the optimum, +-0.75 decades
        for i, N in enumerate(centre * np.logspace(-0.75, 0.75, 5)):
            S = int(C / (6 * N * 32 * 128))
            write_run(str(tmp_path / f"c{j}n{i}"), N=N, batch_seqs=32, steps=S, log_every=max(1, S // 50),
                      eval_every=max(1, S // 5), use_bcrit=False, seed=i)
    pts = run_points(load_runs([str(tmp_path)]), "final", tokens_seen=True)
    iso = fit_isoflop({k: pts[k] for k in ("N", "C", "loss", "D")}, n_boot=0)
    assert len(iso["slices"]) == 3 and all("N_opt" in s and "note" not in s for s in iso["slices"])
    print(f"\nisoFLOP N_opt exponent {iso['params']['a']:.4f} (truth {N_EXP:.4f})")
    assert abs(iso["params"]["a"] - N_EXP) < 0.02


def test_bcrit_from_two_batch_sizes_exact():
    S_min, E_min = 8000.0, 8000.0 * 2e5
    B = np.array([3e4, 6e5])
    S = S_min + E_min / B
    s, e, bc = bcrit_from_pairs(S, B)
    assert s == pytest.approx(S_min, rel=1e-10) and bc == pytest.approx(2e5, rel=1e-10)
    # (S/S_min - 1)(E/E_min - 1) = 1
    np.testing.assert_allclose((S / s - 1) * (B * S / e - 1), 1.0, rtol=1e-10)


def test_steps_to_loss_interpolates():
    step = np.array([1.0, 10.0, 100.0, 1000.0])
    loss = np.array([5.0, 4.0, 3.0, 2.0])
    assert steps_to_loss(step, loss, 3.5) == pytest.approx(np.sqrt(10 * 100))
    assert np.isnan(steps_to_loss(step, loss, 1.0))


@pytest.fixture(scope="module")
def batch_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bs")
    for i, b in enumerate([32, 128, 512]):
        B = b * 1024
        steps = int(10000 * (1 + 1.9e5 / B))
        le = max(1, steps // 1000)
        write_run(str(d / f"b{b}"), N=1e6, batch_seqs=b, steps=steps, n_ctx=1024, log_every=le,
                  eval_every=steps // 10, gns_every=5 * le, seed=i, noise=0.005)
    return load_runs([str(d)])


def test_bcrit_from_se_pairs(batch_runs):
    se = se_points(batch_runs)
    L = se["points"]["loss"]
    truth = 2e8 / L ** (1 / 0.21)
    rel = se["points"]["B"] / truth - 1
    print(f"\nB_crit from (S, E) at {len(L)} losses: relative errors {np.round(rel, 3)}")
    assert len(L) >= 6 and np.max(np.abs(rel)) < 0.1
    r = fit("bcrit", se["points"], n_boot=50)
    print("bcrit from (S, E):", r["params"], r["ci95"])
    assert abs(r["params"]["alpha_B"] - 0.21) < 0.03


def test_bcrit_from_noise_scale(batch_runs):
    g = gns_points(batch_runs)
    r = fit("bcrit", g, n_boot=50)
    print(f"\nbcrit from grad_noise_scale ({len(g['B'])} points):", r["params"], r["ci95"])
    assert abs(r["params"]["alpha_B"] - 0.21) < 0.01
    assert abs(np.log(r["params"]["B_star"] / 2e8)) < 0.2
