"""The paper's other systems in the report (fitting/ablations.py): model shape at fixed N (Kaplan
Fig. 5), architectures (Figs. 7, 17), loss per position by arch (Figs. 7 right, 20), other data
distributions (Fig. 8), learning rate and schedule (Figs. 21-22, eq. D.1).

    python -m pytest -q tests/test_fit_ablations.py

Run directories are written in the real format (config.json with every model and train field as
`flopscale train` writes them, metrics.jsonl rows with val_loss_NAME at evals, positions.jsonl),
with real data's faults: unequal N inside a shape group, an arch with too few sizes, noise, a scan
with too few learning rates, a distribution logged by only some runs.
"""

import json
import math
import os

import numpy as np
import pytest

from flopscale.fitting import fit_and_report
from flopscale.fitting import ablation_report as R
from flopscale.fitting import ablations as A

# the config.json of a real `flopscale train --n-layer 1 --d-model 32 --n-heads 2 --n-ctx 64 --steps 40
# --batch-size 8 --eval-every 20 --tokenizer bpe-512 --eval-data prose=pydoc` run
MODEL = {"n_layer": 1, "d_model": 32, "n_heads": 2, "d_attn": 32, "d_ff": 128, "n_ctx": 64, "n_vocab": 512,
         "arch": "gpt"}
TRAIN = {"data": "stdlib", "tokenizer": "bpe-512", "max_tokens": None, "batch_size": 8, "grad_accum": 1, "steps": 40,
         "lr": 0.003, "min_lr_frac": 0.1, "warmup": 20, "schedule": "cosine", "decay_frac": 0.2, "weight_decay": 0.1,
         "optimizer": "adamw", "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0, "eval_every": 20, "eval_batches": 4,
         "eval_data": None, "eval_positions": False, "log_every": 1, "seed": 1337, "keep_steps": None,
         "init_from": None, "backend": "torch", "device": "cpu", "dtype": "float32", "noise_scale": False,
         "compile": False, "loss_impl": "full", "cuda_attention": "auto", "cuda_ffn_backward": "split",
         "triton_ffn_loads": "auto"}


def n_params(m):
    """engine/flops.py's N for the three archs (the engine is not imported by fitting tests)."""
    if m["arch"] == "lstm":
        return 8 * m["n_layer"] * m["d_model"] ** 2
    blocks = 1 if m["arch"] == "universal" else m["n_layer"]
    return 2 * m["d_model"] * blocks * (2 * m["d_attn"] + m["d_ff"])


def lr_cosine(step, t):
    if step < t["warmup"]:
        return t["lr"] * (step + 1) / t["warmup"]
    frac = min((step - t["warmup"]) / max(1, t["steps"] - t["warmup"]), 1.0)
    return t["lr"] * (t["min_lr_frac"] + (1 - t["min_lr_frac"]) * 0.5 * (1 + math.cos(math.pi * frac)))


def lr_linear(step, t):
    if step < t["warmup"]:
        return t["lr"] * (step + 1) / t["warmup"]
    frac = min((step - t["warmup"]) / max(1, t["steps"] - t["warmup"]), 1.0)
    return t["lr"] * (1 - (1 - t["min_lr_frac"]) * frac)


def write_run(root, name, loss, model=None, train=None, others=None, positions=None, drop=0.4, seed=0):
    """A run whose val_loss falls to `loss` at its last eval; others: {NAME: its loss there};
    positions: a list of n_ctx losses for positions.jsonl."""
    m = dict(MODEL, **(model or {}))
    m.setdefault("d_attn", m["d_model"])
    if model and "d_model" in model:
        m["d_attn"] = model.get("d_attn", m["d_model"])
        m["d_ff"] = model.get("d_ff", 4 * m["d_model"])
    t = dict(TRAIN, **(train or {}))
    N = n_params(m)
    path = os.path.join(str(root), name)
    os.makedirs(path, exist_ok=True)
    cfg = {"model": m, "train": t, "N": N, "N_counts": "matmul weights of the n_layer blocks",
           "n_params_total": N + (m["n_vocab"] + m["n_ctx"]) * m["d_model"],
           "data": {"source": "stdlib", "n_train_tokens": 13993782, "tokenizer": t["tokenizer"]},
           "code_version": "test", "tokens_per_step": t["batch_size"] * m["n_ctx"], "world_size": 1}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    apply = m["n_layer"] if m["arch"] == "universal" else 1  # a universal block runs n_layer times
    per_token = 6 * N * apply * (1.05 if m["arch"] != "lstm" else 1.0)
    fn = {"cosine": lr_cosine, "linear": lr_linear}.get(t["schedule"], lr_cosine)
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(1, t["steps"] + 1):
        tok = s * t["batch_size"] * m["n_ctx"]
        ev = s % t["eval_every"] == 0 or s == t["steps"]
        cur = loss + drop * (1 - s / t["steps"])
        row = {"step": s, "tokens": tok, "flops": per_token * tok, "flops_total": 2 * per_token * tok,
               "flops_executed": 2.2 * per_token * tok, "train_loss": cur * (1 + 0.01 * rng.normal()),
               "val_loss": cur if ev else None, "lr": fn(s - 1, t), "tokens_per_s": 1e5, "mfu": None,
               "grad_noise_scale": None}
        for k, v in (others or {}).items():
            row["val_loss_" + k] = v + (cur - loss) if ev else None
        rows.append(row)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    if positions is not None:
        with open(os.path.join(path, "positions.jsonl"), "w") as f:
            f.write(json.dumps({"step": t["steps"], "val_loss_by_position": list(map(float, positions))}) + "\n")
    return path


def size_grid(root, arch="gpt", widths=(32, 48, 64, 96), alpha=0.08, Nc=3e12, noise=0.0, seed=0, **kw):
    """One run per width, loss = (Nc/N)^alpha times exp(noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for d in widths:
        m = {"arch": arch, "d_model": d, "n_heads": 2, "n_layer": 2}
        N = n_params(dict(MODEL, **m, d_attn=d, d_ff=4 * d))
        L = (Nc / N) ** alpha * math.exp(noise * rng.normal())
        out.append(write_run(root, f"{arch}-d{d}", L, model=m, seed=seed + d, **kw))
    return out


def analyses(root, **kw):
    return A.ablations(sorted(os.path.join(str(root), d) for d in os.listdir(str(root))), **kw)


# ------------------------------------------------------------------------------------------------
# Shape (Fig. 5)
# ------------------------------------------------------------------------------------------------

# N = 12 n_layer d_model^2 at d_ff = 4 d_model: five shapes within 2% of N = 49152, one group
SHAPES = [  # (n_layer, d_model, n_heads, d_ff or None, loss)
    (1, 64, 4, None, 4.30), (4, 32, 2, None, 4.20), (2, 45, 3, None, 4.25), (1, 48, 4, 416, 4.41),
    (1, 64, 1, None, 4.36)]
SMALL = [(1, 32, 2, None, 4.9), (3, 18, 2, None, 5.0)]   # N 12288 and 11664: a group of two shapes


def _write_shapes(root, shapes, prefix):
    for i, (L, d, h, ff, loss) in enumerate(shapes):
        m = {"n_layer": L, "d_model": d, "n_heads": h, "d_attn": d, "d_ff": ff or 4 * d}
        write_run(root, f"{prefix}{i}", loss, model=m, seed=i)


def test_shape_loss_increase_equals_the_hand_computation(tmp_path):
    _write_shapes(tmp_path, SHAPES, "a")
    _write_shapes(tmp_path, SMALL, "b")
    write_run(tmp_path, "lstm", 4.0, model={"arch": "lstm", "d_model": 78, "n_layer": 1})  # N 48672: not a shape
    sh = analyses(tmp_path).payload["shape"]
    assert len(sh["groups"]) == 1
    g = sh["groups"][0]
    Ns = [n_params(dict(MODEL, n_layer=L, d_model=d, d_attn=d, d_ff=ff or 4 * d)) for L, d, h, ff, _ in SHAPES]
    assert g["N_range"] == [min(Ns), max(Ns)] and min(Ns) < max(Ns)   # unequal N inside the group
    best = min(s[-1] for s in SHAPES)
    want = {f"a{i}": 100 * (s[-1] / best - 1) for i, s in enumerate(SHAPES)}
    got = {r["run"]: r["increase_pct"] for r in g["runs"]}
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-9), k
    assert g["spread_pct"] == pytest.approx(100 * (4.41 / 4.20 - 1))
    assert (g["best"]["n_layer"], g["best"]["d_model"], g["best"]["n_heads"]) == (4, 32, 2)
    assert g["best"]["aspect"] == 8
    ff = {r["run"]: r["ff_ratio"] for r in g["runs"]}
    assert ff["a3"] == pytest.approx(416 / 48) and ff["a0"] == 4
    assert g["n_spread_effect_pct"] == pytest.approx(100 * ((max(Ns) / min(Ns)) ** 0.076 - 1))
    # the two-shape group gets its one-line reason, no line
    assert any("2 shapes, a line needs 3; not drawn" in n for n in sh["notes"]), sh["notes"]


def test_shape_series_one_thing_at_a_time(tmp_path):
    """A group laid out like a shape study at N ~ 197k: an aspect series, a heads series at one body, a
    d_ff series at N held by n_layer and d_model; each shape lands in its panel's series."""
    aspect = [(1, 128, 4, None), (2, 90, 6, None), (4, 64, 4, None), (8, 45, 3, None), (16, 32, 2, None)]
    heads = [(4, 64, h, None) for h in (1, 2, 8, 16)]
    ff = [(8, 70, 5, 35), (8, 64, 4, 64), (6, 64, 4, 128), (2, 70, 5, 560)]
    rng = np.random.default_rng(3)
    shapes = [s + (4.0 + 0.05 * rng.random(),) for s in aspect + heads + ff]
    _write_shapes(tmp_path, shapes, "s")
    g = analyses(tmp_path).payload["shape"]["groups"]
    assert len(g) == 1 and g[0]["n_shapes"] == 13
    g = g[0]
    got = {r["run"]: r["series"] for r in g["runs"]}
    assert got["s2"] == "reference" and g["series"]["reference"] == "s2"          # L4-d64-h4
    assert {k for k, v in got.items() if v == "aspect"} == {"s0", "s1", "s3", "s4"}
    assert {k for k, v in got.items() if v == "heads"} == {"s5", "s6", "s7", "s8"}
    assert {k for k, v in got.items() if v == "ff"} == {"s9", "s10", "s11", "s12"}
    for k, members in (("aspect", range(5)), ("heads", (2, 5, 6, 7, 8)), ("ff", (2, 9, 10, 11, 12))):
        inc = [r["increase_pct"] for r in g["runs"] if int(r["run"][1:]) in members]
        assert g["series"][k]["spread_pct"] == pytest.approx(max(inc) - min(inc))


def test_shape_group_keeps_each_shapes_best_lr_and_leaves_other_training_apart(tmp_path):
    _write_shapes(tmp_path, SHAPES[:3], "a")
    m = {"n_layer": 1, "d_model": 64, "n_heads": 4, "d_attn": 64, "d_ff": 256}
    write_run(tmp_path, "a0-lr", 4.10, model=m, train={"lr": 0.001})  # the same shape at another lr: lower
    write_run(tmp_path, "a0-long", 3.0, model=m, train={"steps": 80})  # other training: not in the group
    g = analyses(tmp_path).payload["shape"]["groups"][0]
    by = {r["run"]: r for r in g["runs"]}
    assert set(by) == {"a0-lr", "a1", "a2"}
    assert by["a0-lr"]["n_runs"] == 2 and by["a0-lr"]["increase_pct"] == 0.0
    assert g["lrs"] == [0.001, 0.003]


def test_shapes_whose_training_differs_are_named_not_compared(tmp_path):
    for i, (L, d, h, ff, loss) in enumerate(SHAPES[:3]):
        write_run(tmp_path, f"s{i}", loss, model={"n_layer": L, "d_model": d, "n_heads": h}, train={"steps": 40 + 20 * i})
    sh = analyses(tmp_path).payload["shape"]
    assert not sh["groups"]
    assert len(sh["notes"]) == 1 and "training differs (steps)" in sh["notes"][0]


# ------------------------------------------------------------------------------------------------
# Architectures (Figs. 7, 17)
# ------------------------------------------------------------------------------------------------

def test_arch_fits_per_arch_gap_and_compute(tmp_path):
    size_grid(tmp_path, "gpt", alpha=0.08, Nc=3e12, noise=0.002, seed=1)
    size_grid(tmp_path, "lstm", widths=(32, 48, 64), alpha=0.05, Nc=3e18, noise=0.002, seed=2)
    size_grid(tmp_path, "universal", widths=(32, 48), alpha=0.08, Nc=2e12, seed=3)   # too few sizes
    ar = analyses(tmp_path, n_boot=50).payload["arch"]
    assert ar["archs"] == ["gpt", "lstm", "universal"]
    pa = ar["per_arch"]
    assert pa["gpt"]["alpha_N"] == pytest.approx(0.08, abs=0.01)
    assert pa["lstm"]["alpha_N"] == pytest.approx(0.05, abs=0.01)
    lo, hi = pa["gpt"]["ci95"]
    assert lo < pa["gpt"]["alpha_N"] < hi
    assert "alpha_N" not in pa["universal"] and pa["universal"]["note"] == "2 sizes, a power law needs 3; no fit"
    assert [f["name"] for f in ar["fits"]] == ["n.arch_gpt", "n.arch_lstm"]   # api's grouped naming
    assert set(ar["side_by_side"]["params"]["n"]["alpha_N"]) == {"gpt", "lstm"}
    g = ar["gap"]
    assert g["reference"] == "gpt" and g["inside_all_ranges"]
    Ns = {a: [n_params(dict(MODEL, arch=a, n_layer=2, d_model=d, d_attn=d, d_ff=4 * d)) for d in w]
          for a, w in (("gpt", (32, 48, 64, 96)), ("lstm", (32, 48, 64)))}
    assert g["N"] == pytest.approx(math.sqrt(max(min(v) for v in Ns.values()) * min(max(v) for v in Ns.values())))
    true = {"gpt": (3e12 / g["N"]) ** 0.08, "lstm": (3e18 / g["N"]) ** 0.05}
    assert g["gap"]["lstm"] == pytest.approx(true["lstm"] - true["gpt"], abs=0.02)
    # C / 6ND: the universal Transformer applies its shared block n_layer = 2 times
    assert pa["universal"]["C_per_6ND"] == pytest.approx(2 * 1.05)
    assert pa["lstm"]["C_per_6ND"] == pytest.approx(1.0)


def test_arch_with_one_arch_missing_and_none_fittable(tmp_path):
    size_grid(tmp_path / "a", "gpt", widths=(32, 48, 64))
    size_grid(tmp_path / "a", "lstm", widths=(32, 48, 64), alpha=0.05, Nc=3e18)
    ar = analyses(tmp_path / "a", n_boot=0).payload["arch"]
    assert ar["archs"] == ["gpt", "lstm"] and "universal" not in ar["per_arch"] and "gap" in ar
    size_grid(tmp_path / "b", "gpt", widths=(32, 48))
    size_grid(tmp_path / "b", "lstm", widths=(32,))
    ab = analyses(tmp_path / "b", n_boot=0)
    ar = ab.payload["arch"]
    assert not ar["fits"] and ar["notes"] == ["no arch has 3 sizes (the most: 2), so no L(N) fits and no figure"]
    os.makedirs(tmp_path / "b-out")
    assert "arch" not in R.write_figures(ab, str(tmp_path / "b-out"))
    assert "no arch has 3 sizes" in "\n".join(R.sections(ab.payload))


def test_one_arch_is_no_arch_section(tmp_path):
    size_grid(tmp_path, "gpt")
    assert "arch" not in analyses(tmp_path).payload


# ------------------------------------------------------------------------------------------------
# Loss per position by arch (Figs. 7 right, 20)
# ------------------------------------------------------------------------------------------------

def _curve(kind, n=64, seed=0):
    t = np.arange(1, n + 1, dtype=float)
    noise = 0.003 * np.random.default_rng(seed).normal(size=n)
    if kind == "power":   # a Transformer: keeps falling
        return 3.0 + 2.0 * t ** -0.5 + noise
    return 3.6 + 1.4 * np.exp(-t / 3.0) + noise   # an LSTM: flat after a few tokens


def test_positions_by_arch_pick_similar_N_and_see_the_plateau(tmp_path):
    write_run(tmp_path, "gpt-s", 4.2, model={"d_model": 32}, positions=_curve("power", seed=1))
    write_run(tmp_path, "gpt-l", 4.0, model={"d_model": 96, "n_heads": 4}, positions=_curve("power", seed=2))
    write_run(tmp_path, "lstm", 4.3, model={"arch": "lstm", "d_model": 40}, positions=_curve("flat", seed=3))
    from flopscale.fitting.positions import position_fits
    dirs = sorted(str(tmp_path / d) for d in os.listdir(tmp_path))
    pa = A.ablations(dirs, positions=position_fits(dirs)).payload["positions_by_arch"]
    # lstm N = 8 * 40^2 = 12800, closest to gpt-s (12288), not gpt-l
    assert pa["per_arch"]["gpt"]["run"] == "gpt-s" and pa["per_arch"]["lstm"]["run"] == "lstm"
    assert pa["N_ratio"] == pytest.approx(12800 / 12288)
    assert pa["per_arch"]["gpt"]["alpha_t"] == pytest.approx(0.5, abs=0.05)
    y = _curve("flat", seed=3)
    assert pa["per_arch"]["lstm"]["late_drop"] == pytest.approx(y[16:32].mean() - y[32:].mean())
    assert abs(pa["per_arch"]["lstm"]["late_drop"]) < 3 * pa["per_arch"]["lstm"]["late_drop_se"] + 1e-3
    assert pa["per_arch"]["gpt"]["late_drop"] > 0.05
    md = "\n".join(R.sections({"positions_by_arch": pa}))
    assert "the LSTM gains less from late positions" in md and "These contexts are 64 tokens" in md


# ------------------------------------------------------------------------------------------------
# Other distributions (Fig. 8)
# ------------------------------------------------------------------------------------------------

def test_linear_fit_exact_and_interval():
    x = np.array([4.0, 4.2, 4.5, 5.0, 5.5])
    f = A.linear_fit(x, 1.2 * x - 0.3)
    assert f["slope"] == pytest.approx(1.2) and f["offset"] == pytest.approx(-0.3)
    assert f["ci95"]["slope"][1] - f["ci95"]["slope"][0] == pytest.approx(0, abs=1e-9)
    rng = np.random.default_rng(0)
    y = x + 0.7 + 0.01 * rng.normal(size=x.size)
    f = A.linear_fit(x, y)
    p = np.polyfit(x, y, 1)
    assert (f["slope"], f["offset"]) == pytest.approx(tuple(p))
    assert f["gap_mean"] == pytest.approx(np.mean(y - x))
    assert f["gap_ci95"][0] < 0.7 < f["gap_ci95"][1]


def test_other_distribution_offset_recovered_and_too_few_runs(tmp_path):
    rng = np.random.default_rng(5)
    for i, d in enumerate((16, 24, 32, 48, 64, 96, 128, 160)):
        L = (3e12 / n_params(dict(MODEL, d_model=d, d_attn=d, d_ff=4 * d))) ** 0.08
        others = {"prose": L + 0.7 + 0.01 * rng.normal()}
        if i < 2:
            others["code"] = L + 0.2   # logged by two runs only
        write_run(tmp_path, f"r{i}", L, model={"d_model": d}, others=others, seed=i)
    od = analyses(tmp_path).payload["other_data"]
    assert od["names"] == ["code", "prose"]
    f = od["per_name"]["prose"]["fit"]
    assert f["n_points"] == 8
    assert f["ci95"]["slope"][0] < 1 < f["ci95"]["slope"][1]
    assert f["gap_mean"] == pytest.approx(0.7, abs=0.01)
    assert f["gap_ci95"][0] < 0.7 < f["gap_ci95"][1]
    assert od["per_name"]["code"]["note"] == "2 runs with val_loss_code, a line with an interval needs 3"
    # the point is read at the run's best evaluation, the same row as its val_loss
    assert od["per_name"]["prose"]["points"][0]["loss_other"] - od["per_name"]["prose"]["points"][0]["loss"] == \
        pytest.approx(0.7, abs=0.05)


# ------------------------------------------------------------------------------------------------
# Learning rate (Figs. 21-22, eq. D.1) and schedules
# ------------------------------------------------------------------------------------------------

LRS = (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)


def _lr_loss(lr, best, L0=4.0, k=0.05):
    return L0 + k * math.log(lr / best) ** 2


def test_best_lr_per_N_and_the_trend(tmp_path):
    truth = {}
    for d in (32, 64, 128):
        N = n_params(dict(MODEL, d_model=d, d_attn=d, d_ff=4 * d))
        truth[N] = 3e-3 * (N / 12288) ** -0.25
        for lr in LRS:
            write_run(tmp_path, f"d{d}-lr{lr:g}", _lr_loss(lr, truth[N]), model={"d_model": d}, train={"lr": lr})
    # a scan with two learning rates and one whose minimum is at its edge
    for lr in LRS[:2]:
        write_run(tmp_path, f"d48-lr{lr:g}", 4.5, model={"d_model": 48}, train={"lr": lr, "steps": 60})
    for lr in LRS[:3]:
        write_run(tmp_path, f"d48e-lr{lr:g}", _lr_loss(lr, 1e-4), model={"d_model": 48}, train={"lr": lr})
    lr = analyses(tmp_path).payload["lr"]
    by = {s["label"]: s for s in lr["scans"]}
    for N, want in truth.items():
        s = by[f"gpt N = {N:.3g}"]
        assert s["method"] == "parabola" and not s["edge"]
        assert s["lr_best"] == pytest.approx(want, rel=1e-6)   # a parabola in ln lr through 3 exact points
        assert s["kaplan_D1"] == pytest.approx(0.003239 - 0.0001395 * math.log(N))
    edge = [s for s in lr["scans"] if s.get("edge")]
    assert len(edge) == 1 and edge[0]["edge"] == "lowest" and edge[0]["lr_best"] == 1e-3
    assert any("2 learning rates, locating a minimum needs 3" in n for n in lr["notes"])
    assert lr["trend"]["exponent"] == pytest.approx(-0.25, abs=1e-6) and lr["trend"]["n_sizes"] == 3
    assert {s["label"] for s in lr["scans"] if s["N"] == 27648} == {"gpt N = 2.76e+04 (steps 40)",
                                                                     "gpt N = 2.76e+04 (steps 60)"}
    Nmin, Nmax = lr["trend"]["N_range"]
    d1 = A.kaplan_lr(np.array([Nmin, Nmax]))
    assert lr["trend"]["kaplan_per_decade"] == pytest.approx((d1[1] / d1[0]) ** (1 / math.log10(Nmax / Nmin)))


def test_best_lr_noisy_scan_lands_between_neighbours():
    rng = np.random.default_rng(0)
    losses = [_lr_loss(lr, 5e-3) + 0.002 * rng.normal() for lr in LRS]
    b = A.best_lr(LRS, losses)
    assert b["lr_min"] == 4e-3 and 2e-3 <= b["lr_best"] <= 8e-3
    assert b["lr_best"] == pytest.approx(5e-3, rel=0.3)


def test_schedule_beside_a_peak_scan_compares_equal_areas(tmp_path):
    for lr in (1e-3, 3e-3, 1e-2):   # a cosine scan of peaks, the lowest loss at 1e-2
        write_run(tmp_path, f"cos{lr:g}", {1e-3: 4.3, 3e-3: 4.2, 1e-2: 4.1}[lr], train={"lr": lr})
    cos = sum(lr_cosine(s, dict(TRAIN, lr=3e-3)) for s in range(40))
    lin = sum(lr_linear(s, dict(TRAIN, lr=1.0)) for s in range(40))
    write_run(tmp_path, "lin", 4.25, train={"schedule": "linear", "lr": cos / lin})   # the area of cos0.003
    g = analyses(tmp_path).payload["schedule"]["groups"][0]
    by = {r["schedule"]: r for r in g["runs"]}
    assert by["cosine"]["run"] == "cos0.003" and by["cosine"]["n_runs"] == 3
    assert by["linear"]["lr_area"] == pytest.approx(by["cosine"]["lr_area"])
    assert g["spread"] == pytest.approx(0.05) and g["area_ratio"] == pytest.approx(1.0)


def test_schedules_spread_area_and_lr_fn(tmp_path):
    write_run(tmp_path, "cos", 4.10, train={"schedule": "cosine", "lr": 0.003})
    write_run(tmp_path, "lin", 4.13, train={"schedule": "linear", "lr": 0.0031})
    write_run(tmp_path, "other", 3.0, train={"schedule": "linear", "lr": 0.003, "seed": 1})   # another seed
    sc = analyses(tmp_path).payload["schedule"]
    assert len(sc["groups"]) == 1
    g = sc["groups"][0]
    assert {r["run"] for r in g["runs"]} == {"cos", "lin"}
    assert g["spread"] == pytest.approx(0.03) and g["spread_pct"] == pytest.approx(100 * (4.13 / 4.10 - 1))
    assert g["best"] == "cosine"
    t = dict(TRAIN, schedule="linear", lr=0.0031)
    area = {r["run"]: r["lr_area"] for r in g["runs"]}
    assert area["lin"] == pytest.approx(sum(lr_linear(s, t) for s in range(40)))
    assert g["area_ratio"] == pytest.approx(max(area.values()) / min(area.values()))
    # a caller above fitting/ (the sweep) may recompute every step from the config
    calls = []

    def fn(step, train):
        calls.append(step)
        return 1.0
    sc = analyses(tmp_path, lr_fn=fn).payload["schedule"]
    assert calls and all(r["lr_area"] == 40 and r["lr_source"] == "recomputed from the config"
                         for r in sc["groups"][0]["runs"])


# ------------------------------------------------------------------------------------------------
# The report: figures and sections when the runs vary, nothing when they don't
# ------------------------------------------------------------------------------------------------

SECTIONS = {"shape": "## Model shape at fixed N", "arch": "## Architectures", "positions_by_arch":
            "## Loss per position by architecture", "other_data": "## Other data distributions",
            "lr": "## Learning rate (", "schedule": "## Learning-rate schedules"}


def test_report_writes_every_figure_and_section(tmp_path):
    root = tmp_path / "runs"
    _write_shapes(root, SHAPES, "shape")
    size_grid(root, "gpt", widths=(32, 48, 64, 96), others={"prose": 5.0})
    size_grid(root, "lstm", widths=(32, 48, 64), alpha=0.05, Nc=3e18, others={"prose": 5.1})
    for lr in LRS[:3]:
        write_run(root, f"lr{lr:g}", _lr_loss(lr, 2e-3), model={"d_model": 40}, train={"lr": lr})
    write_run(root, "lin", 4.3, model={"d_model": 40}, train={"lr": 0.003, "schedule": "linear"})
    for name, kind, m in (("pg", "power", {"d_model": 32}), ("pl", "flat", {"arch": "lstm", "d_model": 40})):
        write_run(root, "pos-" + name, 4.5, model=m, train={"eval_positions": True, "seed": 7}, positions=_curve(kind))
    out = tmp_path / "report"
    payload = fit_and_report([str(root)], out=str(out), laws="n", n_boot=20)
    ab = payload["ablations"]
    assert set(ab) == set(SECTIONS)
    md = (out / "report.md").read_text()
    fits = json.loads((out / "fits.json").read_text())
    for key, head in SECTIONS.items():
        assert head in md, key
        png = out / A.FILES[key]
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", key
        assert fits["ablations"][key]["png"] == A.FILES[key]
        assert f"]({A.FILES[key]})" in md
    assert md.index("## Loss per token position") < md.index(SECTIONS["shape"])  # appended after the rest
    assert "no figure" not in md


def test_no_variation_no_section_no_figure(tmp_path):
    root = tmp_path / "runs"
    size_grid(root, "gpt", widths=(32, 48, 64, 96))
    out = tmp_path / "report"
    payload = fit_and_report([str(root)], out=str(out), laws="n", n_boot=0)
    assert "ablations" not in payload
    assert "ablations" not in json.loads((out / "fits.json").read_text())
    md = (out / "report.md").read_text()
    assert not any(h in md for h in SECTIONS.values())
    assert not any((out / f).exists() for f in A.FILES.values())


def test_too_few_points_is_one_line_and_no_figure(tmp_path):
    root = tmp_path / "runs"
    size_grid(root, "gpt", widths=(32, 48, 64, 96))
    _write_shapes(root, SMALL, "small")                     # two shapes at N ~ 12k
    for lr in LRS[:2]:                                      # two learning rates
        write_run(root, f"lr{lr:g}", 4.4, model={"d_model": 40}, train={"lr": lr})
    size_grid(root / "lstm", "lstm", widths=(32,))           # one lstm size
    out = tmp_path / "report"
    fit_and_report([str(root)], out=str(out), laws="n", n_boot=0)
    md = (out / "report.md").read_text().splitlines()
    for key, why in (("shape", "2 shapes, a line needs 3; not drawn"),
                     ("lr", "2 learning rates, locating a minimum needs 3")):
        assert not (out / A.FILES[key]).exists(), key
        hits = [ln for ln in md if why in ln]
        assert hits and all(ln.startswith("- ") or ln.startswith("|") for ln in hits), (key, hits)
    # the lstm's one size says why in the arch table; gpt gets its fit, drawn with the lstm's point
    assert any(ln.startswith("| lstm | 1 |") and "a power law needs 3; no fit" in ln for ln in md)
    assert (out / A.FILES["arch"]).is_file()
