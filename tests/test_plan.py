"""`flopscale plan`: closed forms by hand, the shape's exact N, a plan from synthetic laws recovering
the true optimum, the data-constrained plan, the guards, wall time from a real run, the CLI."""

import json
import math

import numpy as np
import pytest

from flopscale.cli import build_parser, main
from flopscale.fitting import fit, fit_and_report, predict
from flopscale.fitting.laws import PAPER, PF_DAY, PRIORS, allocation
from flopscale.fitting.plan import (flat_range, kaplan_crossover, loss_at_fixed_C, make_plan, nd_optimum, optimum,
                                    plan_from_fits, plan_from_prior, prior_spec)
from flopscale.planning import flops_per_token, run_throughput, shape_fns

FNS = shape_fns(50257)


def _hand_chinchilla(p, C):
    """Hoffmann et al. eq. (4) written out: G = (alpha A / (beta B))^(1/(alpha+beta))."""
    a, b = p["alpha"], p["beta"]
    G = (a * p["A"] / (b * p["B"])) ** (1 / (a + b))
    return G * (C / 6) ** (b / (a + b)), (C / 6) ** (a / (a + b)) / G


@pytest.mark.parametrize("prior", ["chinchilla", "epoch"])
@pytest.mark.parametrize("C", [1e18, 5.76e23])
def test_chinchilla_form_closed_form(prior, C):
    p = plan_from_prior(prior, C, shape_fns=FNS)
    N, D = _hand_chinchilla(PRIORS[prior]["params"], C)
    assert p["N_opt"] == pytest.approx(N, rel=1e-6)
    assert p["D_opt"] == pytest.approx(D, rel=1e-6)
    assert 6 * p["N_opt"] * p["D_opt"] == pytest.approx(C, rel=1e-9)
    # the shape counts all parameters (Hoffmann's N): exact Table 1 count within 5% of N_opt
    m = p["model"]
    assert m["N"] == FNS["n_params"](m, p["n_ctx"])["all"]
    assert abs(m["N"] / p["N_opt"] - 1) <= 0.05
    assert p["loss"]["value"] == pytest.approx(float(predict("chinchilla", PRIORS[prior]["params"], N=N, D=D)[0]), rel=1e-9)


@pytest.mark.parametrize("C", [1e15, 1e19, 1e22])
def test_kaplan_prior_shape_and_allocation(C):
    from flopscale.engine.config import ModelConfig

    p = plan_from_prior("kaplan", C, shape_fns=FNS)
    al = allocation(C / 2)  # trained at B = B_crit: C = 2 C_min
    assert p["N_opt"] == pytest.approx(al["N"][0], rel=1e-9)
    assert p["D_opt"] == pytest.approx(C / (6 * p["N_opt"]), rel=1e-12)
    m = p["model"]
    cfg = ModelConfig(n_layer=m["n_layer"], d_model=m["d_model"], n_heads=m["n_heads"], d_ff=m["d_ff"], n_ctx=1024)
    assert cfg.N == m["N"]                         # engine's non-embedding N, exactly
    assert abs(cfg.N / p["N_opt"] - 1) <= 0.05
    # the flat-range helper solves the same equation as laws.allocation: its curve bottoms out at N_opt
    f = lambda n: float(loss_at_fixed_C("kaplan", PRIORS["kaplan"]["params"], C, n)[0])
    L0 = f(p["N_opt"])
    assert L0 == pytest.approx(p["loss"]["value"], rel=1e-7)
    assert f(p["N_opt"] * 1.05) > L0 and f(p["N_opt"] / 1.05) > L0


def test_nd_closed_form_is_the_minimum():
    from scipy.optimize import minimize_scalar

    p, C = PAPER["nd"], 1e21
    N = nd_optimum(p, C)
    res = minimize_scalar(lambda x: float(np.log(predict("nd", p, N=np.exp(x), D=C / (6 * np.exp(x)))[0])),
                          bounds=(5, 40), method="bounded", options={"xatol": 1e-12})
    assert N == pytest.approx(math.exp(res.x), rel=1e-5)


def test_flat_range_edges_sit_at_half_a_percent():
    pr = PRIORS["chinchilla"]["params"]
    C = 1e21
    o = optimum("chinchilla", pr, C)
    lo, hi = flat_range("chinchilla", pr, C, o["N"], o["loss"])
    assert lo < o["N"] < hi
    for n in (lo, hi):
        assert float(loss_at_fixed_C("chinchilla", pr, C, n)[0]) == pytest.approx(1.005 * o["loss"], rel=1e-8)


def test_kaplan_crossover_by_hand():
    c, d, r = PAPER["c"], PAPER["d"], PRIORS["kaplan"]["data_rate"]
    x = kaplan_crossover()
    # (C_c/C)^aC = (D_c / (k (C/PF)^e))^aD  <=>  the same logs
    lhs = c["alpha_C"] * math.log(c["C_c"] / x["C"])
    rhs = d["alpha_D"] * math.log(d["D_c"] / (r["coef"] * (x["C"] / PF_DAY) ** r["exponent"]))
    assert lhs == pytest.approx(rhs, rel=1e-9)
    assert x["loss"] == pytest.approx((c["C_c"] / x["C"]) ** c["alpha_C"], rel=1e-12)
    # the paper's order of magnitude: C* ~ 1e4 PF-days (1e4-1e5 from its rounded constants), L* ~ 1.5-1.7
    assert 1e4 <= x["C_pf_days"] <= 2e5 and 1.4 < x["loss"] < 1.8


def test_guards_warn_far_outside_and_past_the_crossover():
    spec = prior_spec("chinchilla")
    inside = make_plan(spec, spec["fitted"]["C_max"] / 10)
    assert not any(g["warn"] for g in inside["guards"])
    far = make_plan(spec, 1000 * spec["fitted"]["C_max"])
    g = {x["name"]: x for x in far["guards"]}
    assert g["budget_over_fitted_C"]["warn"] and g["budget_over_fitted_C"]["value"] == pytest.approx(1000)
    past = make_plan(spec, 3 * kaplan_crossover()["C"])
    assert {x["name"]: x for x in past["guards"]}["kaplan_crossover"]["warn"]


def test_unique_tokens_more_epochs_than_unconstrained():
    """Below D_opt, the data-constrained law (Muennighoff et al. 2023) repeats data: more epochs
    than the unconstrained plan would need on U tokens, more tokens in all, and, because their
    excess-parameter decay R_N* (5.3) is faster than the data decay R_D* (15.4), a *smaller* N
    (their finding: spend the extra compute on epochs rather than parameters)."""
    C = 1e21
    free = plan_from_prior("chinchilla", C)
    U = free["D_opt"] / 10
    dc = plan_from_prior("chinchilla", C, unique_tokens=U)
    assert dc["law"] == "data-constrained"
    assert dc["epochs"] == pytest.approx(dc["D_opt"] / U)
    assert dc["epochs"] > dc["unconstrained"]["epochs"] == pytest.approx(10)
    assert dc["D_opt"] > free["D_opt"] and dc["N_opt"] < free["N_opt"]
    assert dc["loss"]["value"] > free["loss"]["value"]
    # at U >= D_opt nothing repeats and the plan is the unconstrained one
    same = plan_from_prior("chinchilla", C, unique_tokens=2 * free["D_opt"])
    assert same["N_opt"] == pytest.approx(free["N_opt"], rel=1e-3)


TRUTH = {"E": 1.8, "A": 400.0, "B": 1500.0, "alpha": 0.34, "beta": 0.37}


@pytest.fixture(scope="module")
def synthetic_study():
    """A synthetic isoFLOP study at 1e16-1e19 FLOPs from a known Chinchilla law (0.5% log noise),
    fitted by the real fit_and_report (fits.json) and fit (its bootstrap draws)."""
    rng = np.random.default_rng(0)
    N, D = [], []
    for C in np.logspace(16, 19, 4):
        n0 = optimum("chinchilla", TRUTH, C)["N"]
        for f in np.logspace(-1, 1, 7):
            N.append(n0 * f)
            D.append(C / (6 * n0 * f))
    N, D = np.array(N), np.array(D)
    loss = predict("chinchilla", TRUTH, N=N, D=D) * np.exp(0.005 * rng.standard_normal(N.size))
    cols = {"N": N, "D": D, "loss": loss, "C": 6 * N * D}
    payload = fit_and_report(data=cols, laws="chinchilla", n_boot=40, grid="coarse")
    _, boot = fit("chinchilla", cols, n_boot=40, grid="coarse", return_boot=True, holdout=False)
    return json.loads(json.dumps(payload)), boot  # as read back from fits.json


@pytest.mark.parametrize("C", [1e19, 1e20])
def test_plan_from_synthetic_fits_recovers_the_true_optimum(synthetic_study, C):
    payload, boot = synthetic_study
    p = plan_from_fits(payload, C, boot={"chinchilla": boot}, shape_fns=FNS, n_ctx=256)
    t = optimum("chinchilla", TRUTH, C)
    assert p["N_opt"] == pytest.approx(t["N"], rel=0.05)
    assert p["D_opt"] == pytest.approx(t["D"], rel=0.05)
    lo, hi = p["loss"]["pi90"]
    assert lo < t["loss"] < hi and lo < p["loss"]["value"] < hi
    assert "bootstrap draws" in p["loss"]["pi90_method"]
    g = {x["name"]: x for x in p["guards"]}
    assert g["budget_over_fitted_C"]["value"] == pytest.approx(C / 1e19)
    assert abs(p["model"]["N"] / p["N_opt"] - 1) <= 0.05


def test_plan_from_fits_without_draws_says_the_interval_is_too_narrow(synthetic_study):
    payload, _ = synthetic_study
    p = plan_from_fits(payload, 1e19)
    assert p["loss"]["pi90"] is not None and "too narrow" in p["loss"]["pi90_method"]
    far = plan_from_fits(payload, 1e22)  # 1000x the largest fitted C
    assert {x["name"]: x for x in far["guards"]}["budget_over_fitted_C"]["warn"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from flopscale.engine import ModelConfig, TrainConfig
    from flopscale.engine.data import stdlib_sample
    from flopscale.engine.train import Trainer

    corpus = stdlib_sample(tmp_path_factory.mktemp("corpus"))
    out = tmp_path_factory.mktemp("runs") / "run"
    mc = ModelConfig(n_layer=1, d_model=16, n_heads=1, n_ctx=16)
    tc = TrainConfig(data=corpus, tokenizer="bpe-300", batch_size=2, steps=6, eval_every=3, warmup=1)
    Trainer(mc, tc, out, progress=False).run()
    return out


def test_wall_time_from_a_finished_run(tiny_run):
    t = run_throughput(str(tiny_run))
    rows = [json.loads(l) for l in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((tiny_run / "config.json").read_text())
    from flopscale.engine.config import ModelConfig

    fpt = flops_per_token(ModelConfig.from_dict(cfg["model"]))["all"]
    assert t["tokens_per_s_run"] == pytest.approx(float(np.median([r["tokens_per_s"] for r in rows][3:])))
    assert t["flops_per_s"] == pytest.approx(t["tokens_per_s_run"] * fpt)
    p = plan_from_prior("kaplan", 1e13, shape_fns=shape_fns(t["n_vocab"]), n_ctx=t["n_ctx"], throughput=t)
    tps = t["flops_per_s"] / p["model"]["flops_per_token"]["all"]
    assert p["wall_time_s"] == pytest.approx(p["D_opt"] / tps)


def test_cli_plan_from_a_report_reads_its_bootstrap_draws(tmp_path, capsys):
    """`flopscale fit --out` keeps each fit's draws beside fits.json (bootstrap.npz, plain arrays);
    `flopscale plan --fits` then gives the loss interval its parameter uncertainty, and without the
    file says the interval is too narrow."""
    rng = np.random.default_rng(1)
    N = np.repeat(np.logspace(6, 8, 5), 5)
    D = np.tile(np.logspace(8, 10, 5), 5)
    loss = predict("chinchilla", TRUTH, N=N, D=D) * np.exp(0.005 * rng.standard_normal(N.size))
    rep = tmp_path / "report"
    fit_and_report(data={"N": N, "D": D, "loss": loss}, laws="chinchilla", n_boot=20, grid="coarse", out=str(rep))
    with np.load(rep / "bootstrap.npz", allow_pickle=False) as z:
        assert z["chinchilla"].shape == (20, 5)
    for keep in (True, False):
        if not keep:
            (rep / "bootstrap.npz").unlink()
        out = tmp_path / f"plan-{keep}.json"
        assert main(["plan", "--fits", str(rep / "fits.json"), "--budget", "1e20", "--json", str(out)]) == 0
        method = json.loads(out.read_text())["loss"]["pi90_method"]
        assert ("bootstrap draws" in method and "too narrow" not in method) if keep else "too narrow" in method


def test_cli_json_and_emitted_train_flags(tmp_path, capsys):
    out, cfg = tmp_path / "plan.json", tmp_path / "train.sh"
    assert main(["plan", "--prior", "chinchilla", "--budget", "1e21", "--json", str(out),
                 "--emit-config", str(cfg), "--tokens-per-s", "1e6"]) == 0
    p = json.loads(out.read_text())
    for k in ("params", "source", "N_opt", "D_opt", "model", "batch_size_tokens", "lr", "steps", "warmup_steps", "loss",
              "wall_time_s", "guards"):
        assert k in p, k
    assert set(p["model"]) >= {"n_layer", "d_model", "n_heads", "d_ff", "N"}
    assert set(p["loss"]) >= {"value", "pi90"}
    assert p["wall_time_s"] == pytest.approx(p["D_opt"] / 1e6)
    line = cfg.read_text().split()
    assert line[:2] == ["flopscale", "train"]
    a = build_parser().parse_args(line[1:])  # the real train parser takes the emitted flags
    from flopscale.cli import _model_config
    from flopscale.engine.config import TrainConfig, config_values

    mc = _model_config(a, 50257)
    tc = TrainConfig(**config_values(a, TrainConfig.__dataclass_fields__))
    assert (mc.n_layer, mc.d_model, mc.n_heads, mc.d_ff) == tuple(p["model"][k] for k in ("n_layer", "d_model", "n_heads", "d_ff"))
    assert tc.steps == p["steps"] and tc.batch_size * mc.n_ctx == p["batch_size_tokens"]
    assert tc.warmup == p["warmup_steps"] and tc.lr == pytest.approx(p["lr"], rel=1e-3)


def test_cli_gpu_hours_spends_the_hours():
    import io
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["plan", "--prior", "epoch", "--gpu-hours", "100", "--peak-tflops", "989", "--mfu", "0.4",
                     "--json", "-"]) == 0
    p = json.loads(buf.getvalue())
    # the hours are spent (to within the jump where the discrete shape changes), never exceeded
    assert p["wall_time_s"] == pytest.approx(100 * 3600, rel=2e-2) and p["wall_time_s"] <= 100 * 3600 * (1 + 1e-9)
    assert p["compute"]["C_all"] == pytest.approx(p["wall_time_s"] * 989e12 * 0.4, rel=1e-9)


@pytest.mark.parametrize("argv, msg", [
    (["--prior", "chinchilla", "--budget", "-1"], "budget must be a positive"),
    (["--fits", "/nonexistent/fits.json", "--budget", "1e20"], "no such file"),
    (["--prior", "kaplan", "--budget", "1e20", "--unique-tokens", "1e9"], "Chinchilla-form law"),
    (["--prior", "epoch", "--gpu-hours", "10"], "needs a throughput"),
    (["--prior", "epoch", "--budget", "1e20", "--peak-tflops", "900"], "go together"),
])
def test_cli_errors_are_one_line(argv, msg, capsys):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1


def test_cli_fits_without_a_loss_law(tmp_path, capsys):
    f = tmp_path / "fits.json"
    f.write_text(json.dumps({"fits": [{"law": "n", "name": "n", "params": PAPER["n"]}]}))
    assert main(["plan", "--fits", str(f), "--budget", "1e20"]) == 2
    assert "no fit of N and D" in capsys.readouterr().err


def test_fits_with_only_ns_take_kaplans_route():
    """A study with L(N, S) but no L(N, D) (the cpu-shape sweep): the plan minimises L(N, S_min)
    with B_crit(L) as the kaplan prior does; at the paper's constants the two plans agree."""
    payload = {"fits": [{"law": "ns", "name": "ns", "params": PAPER["ns"], "rmse_log": 0.01, "n_points": 50,
                         "ranges": {"N": [1e6, 1e9]}}]}
    C = 1e19
    own, prior = plan_from_fits(payload, C), plan_from_prior("kaplan", C)
    assert own["N_opt"] == pytest.approx(prior["N_opt"], rel=1e-9)
    assert own["batch_size_tokens_law"] == pytest.approx(prior["batch_size_tokens_law"], rel=1e-9)
    assert own["loss"]["pi90"] is not None and "residual scatter only" in own["loss"]["pi90_method"]
    # a sweep's outlook on such a study: the plans, and the backtest skipped in one plain line (it
    # scores one law; the route is two), not backtest's complaint about a law named 'kaplan'
    from flopscale.fitting.api import study_outlook
    payload["study"] = {"C_range": [1e15, 1e17]}
    o = study_outlook(payload, [], [], {}, "best", "nonembedding", 0, 0)
    assert [p["law"] for p in o["plans"]] == ["kaplan", "kaplan"] and "backtest" not in o
    assert "two fitted laws" in o["backtest_skipped"] and "does not predict" not in o["backtest_skipped"]


def test_lr_from_the_studys_scans_and_aspect_from_its_shape_runs():
    """cpu-lr's committed fits.json (4 lr scans) with a Chinchilla entry added: the plan's lr is the
    power law of lr_best in N through the scans, at N_opt; cpu-shape's best aspect sets the shape."""
    from flopscale.fitting import fit_power

    root = __import__("pathlib").Path(__file__).resolve().parents[1] / "docs" / "paper-systems"
    payload = json.loads((root / "cpu-lr" / "fits.json").read_text())
    payload["ablations"]["shape"] = json.loads((root / "cpu-shape" / "fits.json").read_text())["ablations"]["shape"]
    payload["fits"].append({"law": "chinchilla", "name": "chinchilla", "params": TRUTH, "rmse_log": 0.01, "n_points": 30,
                            "ranges": {"N": [1e4, 1e6], "D": [1e5, 1e7]}})
    p = plan_from_fits(payload, 1e13, shape_fns=shape_fns(4096), n_ctx=64)
    scans = payload["ablations"]["lr"]["scans"]
    pw = fit_power([s["N"] for s in scans], [s["lr_best"] for s in scans], n_boot=0)
    assert p["lr"] == pytest.approx(pw["coef"] * p["N_opt"] ** pw["exponent"], rel=1e-9)
    assert "lr scans" in p["sources"]["lr"]
    groups = payload["ablations"]["shape"]["groups"]
    best = max(groups, key=lambda g: g["N_geomean"])["best"]["aspect"]
    assert "shape runs" in p["sources"]["model"] and f"{best:.3g}" in p["sources"]["model"]


def test_study_plans_at_10x_and_100x(synthetic_study):
    from flopscale.fitting.outlook_report import plan_markdown
    from flopscale.fitting.plan import study_plans

    payload, boot = synthetic_study
    plans = study_plans(payload, boot={"chinchilla": boot})
    assert [p["budget"] for p in plans] == pytest.approx([1e20, 1e21])
    assert not plans[0]["guards"][0]["warn"] and plans[1]["guards"][0]["value"] == pytest.approx(100)
    md = plan_markdown(plans[1])
    assert "N_opt" in md and "budget_over_fitted_C" in md


@pytest.mark.parametrize("argv", [["--help"], ["plan", "--help"], ["backtest", "--help"]])
def test_help_prints(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0 and "usage" in capsys.readouterr().out
