"""`flopscale backtest`: interval coverage on synthetic data with a known truth (and the controls
that show the check can fail), the error figures by hand, the allocation exponent, the guards at
1000x outside the fitted range, tables and real runs through the CLI."""

import json

import numpy as np
import pytest

from flopscale.cli import main
from flopscale.fitting import predict
from flopscale.fitting.backtest import allocation_exponent, backtest, load_points
from flopscale.fitting.outlook_report import backtest_markdown
from flopscale.fitting.laws import PAPER

SEEDS = 60  # x 4 held-out points each: 240 points, about 2 s


def _power_study(seed, truth=None, N=np.logspace(6, 9, 12), noise=0.01):
    rng = np.random.default_rng(seed)
    L = (predict("n", PAPER["n"], N=N) if truth is None else truth(N)) * np.exp(noise * rng.standard_normal(N.size))
    return {"N": N, "loss": L}


def _coverage(truth=None, n_boot=100):
    inside = []
    for seed in range(SEEDS):
        bt = backtest(_power_study(seed, truth), "n", "N=1e8", n_boot=n_boot, seed=seed)
        assert bt["n_test"] == 4
        inside += [p["inside"] for p in bt["points"]]
    return float(np.mean(inside))


def test_90pct_intervals_cover_80_to_95pct_of_held_out_points():
    """Truth L = (N_c/N)^alpha_N (Kaplan's constants), 1% log-normal noise, 12 sizes over 1e6-1e9,
    fit on N <= 1e8 and predict the 4 larger sizes (up to 10x out), 60 seeds."""
    cov = _coverage()
    print(f"coverage of the 90% intervals: {cov:.3f} over {4 * SEEDS} held-out points")
    assert 0.80 <= cov <= 0.95


def test_coverage_check_can_fail():
    """The same check fails where it should: residual scatter alone (no parameter uncertainty)
    under-covers extrapolations, and a misspecified law (truth with an offset E, fitted by a pure
    power law) is biased and misses."""
    assert _coverage(n_boot=0) < 0.80
    assert _coverage(truth=lambda N: 1.5 + (1e5 / N) ** 0.3) < 0.80


def test_error_figures_by_hand():
    cols = _power_study(3)
    bt = backtest(cols, "n", "N=2e8", n_boot=50)
    train = cols["N"] <= 2e8
    from flopscale.fitting import fit

    p = fit("n", {k: v[train] for k, v in cols.items()}, n_boot=0, holdout=False)["params"]
    pred = predict("n", p, N=cols["N"][~train])
    pct = 100 * (pred / cols["loss"][~train] - 1)
    assert bt["n_train"] == int(train.sum()) and bt["n_test"] == int((~train).sum())
    assert bt["mape"] == pytest.approx(np.mean(np.abs(pct)), rel=1e-9)
    assert bt["bias"] == pytest.approx(np.mean(pct), rel=1e-9)
    assert bt["max_abs_pct_err"] == pytest.approx(np.max(np.abs(pct)), rel=1e-9)
    assert bt["coverage90"] == pytest.approx(np.mean([q["inside"] for q in bt["points"]]))
    assert all(q["pi90"][0] < q["predicted"] < q["pi90"][1] for q in bt["points"])
    assert bt["allocation_exponent"]["split"] is None  # L(N) has no allocation
    assert "coverage" in backtest_markdown(bt)


def test_allocation_exponent_of_split_and_full_fit():
    truth = PAPER["nd"]
    rng = np.random.default_rng(0)
    N = np.repeat(np.logspace(6, 9, 5), 4)
    D = np.tile(np.logspace(8, 10, 4), 5)
    L = predict("nd", truth, N=N, D=D) * np.exp(0.003 * rng.standard_normal(N.size))
    bt = backtest({"N": N, "D": D, "loss": L}, "nd", "N=2e8", n_boot=10)
    a_true = allocation_exponent("nd", truth)
    assert a_true == pytest.approx(0.103 / (0.076 + 0.103))
    a = bt["allocation_exponent"]
    assert a["split"] == pytest.approx(a_true, abs=0.05) and a["full"] == pytest.approx(a_true, abs=0.05)
    assert a["change"] == pytest.approx(a["split"] - a["full"])


def test_guards_warn_when_the_truth_lies_1000x_outside():
    cols = _power_study(0, N=np.logspace(3, 9, 25))
    bt = backtest(cols, "n", "N=1e6", n_boot=20)  # fit on 1e3-1e6, predict up to 1e9
    g = {x["name"]: x for x in bt["guards"]}
    assert g["N_over_fitted"]["value"] == pytest.approx(1000) and g["N_over_fitted"]["warn"]
    assert bt["warn"]
    near = backtest(cols, "n", "N=2e8", n_boot=20)
    assert not near["warn"]


def test_cli_table(tmp_path, capsys):
    cols = _power_study(1)
    f = tmp_path / "pts.csv"
    f.write_text("N,loss,name\n" + "".join(f"{float(n)!r},{float(l)!r},r{i}\n" for i, (n, l) in enumerate(zip(cols["N"], cols["loss"]))))
    out = tmp_path / "bt.json"
    assert main(["backtest", "--csv", str(f), "--law", "n", "--split", "N=1e8", "--n-boot", "30", "--json", str(out)]) == 0
    bt = json.loads(out.read_text())
    for k in ("n_train", "n_test", "mape", "bias", "max_abs_pct_err", "coverage90", "allocation_exponent"):
        assert k in bt, k
    assert "MAPE" in capsys.readouterr().out


@pytest.mark.parametrize("split, msg", [("Q=1", "no such column"), ("N=1e12", "nothing is left to predict"),
                                        ("N=1", "nothing to fit on"), ("N", "COL=VALUE"), ("name=3", "not a number")])
def test_cli_errors_are_one_line(tmp_path, capsys, split, msg):
    cols = _power_study(1)
    f = tmp_path / "pts.csv"
    f.write_text("N,loss,name\n" + "".join(f"{float(n)!r},{float(l)!r},r{i}\n" for i, (n, l) in enumerate(zip(cols["N"], cols["loss"]))))
    assert main(["backtest", "--csv", str(f), "--law", "n", "--split", split, "--n-boot", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Four real runs of growing width (a few steps each): L(N) from run directories."""
    from flopscale.engine import ModelConfig, TrainConfig
    from flopscale.engine.data import stdlib_sample
    from flopscale.engine.train import Trainer

    corpus = stdlib_sample(tmp_path_factory.mktemp("corpus"))
    root = tmp_path_factory.mktemp("sweep")
    for d in (8, 16, 24, 32):
        mc = ModelConfig(n_layer=1, d_model=d, n_heads=1, n_ctx=16)
        tc = TrainConfig(data=corpus, tokenizer="bpe-300", batch_size=2, steps=4, eval_every=2, warmup=1)
        Trainer(mc, tc, root / f"d{d}", progress=False).run()
    return root


def test_backtest_from_runs(tiny_runs, capsys):
    cols = load_points(paths=[str(tiny_runs)], law="n")
    assert sorted(cols["N"]) == [2 * d * (2 * d + 4 * d) for d in (8, 16, 24, 32)]  # 12 d^2 per layer
    assert main(["backtest", str(tiny_runs), "--law", "n", "--split", f"N={12 * 24 ** 2}", "--n-boot", "20",
                 "--json", "-"]) == 0
    bt = json.loads(capsys.readouterr().out)
    assert bt["n_train"] == 3 and bt["n_test"] == 1
    assert bt["points"][0]["N"] == 12 * 32 ** 2
    assert main(["backtest", str(tiny_runs), "--law", "bcrit", "--split", "N=1"]) == 2
    assert "use --csv" in capsys.readouterr().err


def test_largest_budget_split_holds_out_the_top_isoflop_budget():
    from flopscale.fitting.backtest import largest_budget_split

    C = np.array([1e18, 1.02e18, 1e19, 0.98e19, 1e20, 1.03e20, 0.99e20])
    col, v = largest_budget_split({"C": C})
    assert col == "C" and 1.0e19 < v < 0.99e20
    assert (C > v).sum() == 3
