"""The paper's other systems (Kaplan et al. 2020, issue 13): the cpu-shape, cpu-arch and cpu-lr
grids hold their designs (equal-N shapes over a decade of aspect ratio with head and d_ff
variants; three architectures over a decade of N with per-position evals; an lr sweep at several
sizes and schedules of equal area, the area summed with the trainer's own lr_at); model entries
as objects and train variants in presets (JSON files included); the new schedules' shapes, the
old ones unchanged, and a tiny run of a new schedule trains."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from flopscale.engine import ConfigError, ModelConfig, TrainConfig
from flopscale.engine.data import stdlib_sample
from flopscale.engine.presets import PRESETS, SweepPreset, get_preset
from flopscale.engine.schedule import lr_at
from flopscale.engine.train import Trainer

N_TOL = 0.05  # shapes "of equal N": within 5% of the group's smallest N (cpu-shape's note: 3.4%)


def _area(train: dict) -> float:
    """Sum of the trainer's lr over a run's steps (the test's own sum, not presets.lr_area)."""
    tc = TrainConfig.from_dict(train)
    return math.fsum(lr_at(t, tc) for t in range(tc.steps))


def _tokens(r) -> int:
    return r["train"]["steps"] * r["train"]["batch_size"] * r["model"]["n_ctx"]


def _groups_by_n(cfgs):
    """Configs clustered by N: each group within N_TOL of its smallest member."""
    groups = []
    for c in sorted(cfgs, key=lambda c: c.N):
        if groups and c.N <= groups[-1][0].N * (1 + N_TOL):
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups


def _check_common(runs):
    assert len({r["name"] for r in runs}) == len(runs)
    assert len({_tokens(r) for r in runs}) == 1  # every run the same token budget
    for r in runs:
        TrainConfig.from_dict(r["train"])
        assert r["train"]["tokenizer"] == "bpe-512" and r["model"]["n_ctx"] == 64


def test_shape_grid():
    runs = PRESETS["cpu-shape"].runs()
    _check_common(runs)
    cfgs = [ModelConfig(**r["model"]) for r in runs]
    default_ff = [c for c in cfgs if c.d_ff == 4 * c.d_model]
    # aspect ratio: at least three N, each with >= 4 shapes spanning >= 10x in d_model / n_layer
    spans = []
    for g in _groups_by_n(default_ff):
        shapes = {(c.n_layer, c.d_model) for c in g}
        if len(shapes) >= 4:
            ars = [d / L for L, d in shapes]
            spans.append(max(ars) / min(ars))
    assert len(spans) >= 3 and min(spans) >= 10, spans
    # heads: one (n_layer, d_model, d_ff) at >= 4 head counts
    heads = {}
    for c in cfgs:
        heads.setdefault((c.n_layer, c.d_model, c.d_ff), set()).add(c.n_heads)
    assert max(len(h) for h in heads.values()) >= 4, heads
    # d_ff / d_model: >= 4 ratios spanning 0.5..8 at one N (to the tolerance)
    best = max(_groups_by_n(cfgs), key=lambda g: len({c.d_ff / c.d_model for c in g}))
    ratios = {c.d_ff / c.d_model for c in best}
    assert len(ratios) >= 4 and min(ratios) <= 0.5 and max(ratios) >= 8, ratios
    names = {r["name"] for r in runs}
    assert {"L1-d128", "L16-d32", "L4-d64-h1", "L4-d90-ff1", "L4-d50-ff8"} <= names, names


def test_arch_grid():
    runs = PRESETS["cpu-arch"].runs()
    _check_common(runs)
    by_arch = {}
    for r in runs:
        by_arch.setdefault(r["model"].get("arch", "gpt"), []).append(ModelConfig(**r["model"]).N)
        assert r["train"]["eval_positions"] is True
        assert ("prose", "pydoc") in TrainConfig.from_dict(r["train"]).eval_corpora()
        assert r["train"]["backend"] == "torch"  # the LSTM runs on torch only
    assert set(by_arch) == {"gpt", "lstm", "universal"}
    for arch, Ns in by_arch.items():
        assert len(set(Ns)) >= 3 and math.log10(max(Ns) / min(Ns)) >= 1.0, (arch, Ns)
    assert {"lstm-L1-d40", "universal-L2-d64", "L2-d64"} <= {r["name"] for r in runs}


def test_lr_grid():
    p = get_preset("cpu-lr")  # the note is filled in when the preset is asked for
    runs = p.runs()
    _check_common(runs)
    by_model = {}
    for r in runs:
        by_model.setdefault(json.dumps(r["model"], sort_keys=True), []).append(r)
    # best lr vs N: >= 3 sizes, each with >= 4 cosine lrs over >= 1.5 decades
    swept = 0
    for rs in by_model.values():
        lrs = sorted({r["train"]["lr"] for r in rs if r["train"].get("schedule", "cosine") == "cosine"})
        if len(lrs) >= 4 and math.log10(lrs[-1] / lrs[0]) >= 1.5:
            swept += 1
    assert swept >= 3
    # schedules at equal area: every non-cosine run's area equals its size's cosine lr3e-3 run's
    schedules, n_sizes = set(), 0
    for rs in by_model.values():
        ref = next(r for r in rs if r["name"].endswith("-lr3e-3"))
        others = [r for r in rs if r["train"].get("schedule", "cosine") != "cosine"]
        if not others:
            continue
        n_sizes += 1
        a_ref = _area(ref["train"])
        for r in others:
            schedules.add(r["train"]["schedule"])
            assert _area(r["train"]) == pytest.approx(a_ref, rel=1e-9, abs=0), r["name"]
            assert {k: v for k, v in r["train"].items() if k not in ("lr", "schedule")} == \
                   {k: v for k, v in ref["train"].items() if k not in ("lr", "schedule")}
        peaks = {r["train"]["schedule"]: r["train"]["lr"] for r in others}
        # equal area is not equal peak: a schedule that never decays has the lowest peak
        assert peaks["constant"] < peaks["wsd"] < ref["train"]["lr"] * 1.0000001
        assert f"{a_ref:.6g}" in p.note  # the note states the area the report quotes
    assert n_sizes >= 2 and {"linear", "wsd", "constant"} <= schedules


@pytest.mark.parametrize("name", ["cpu-shape", "cpu-arch", "cpu-lr"])
def test_dry_run_json_prints_the_grid(name):
    p = subprocess.run([sys.executable, "-m", "flopscale.cli", "sweep", "--preset", name, "--out", "unused",
                        "--dry-run", "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    grid = json.loads(p.stdout)
    want = PRESETS[name].runs()
    assert [r["name"] for r in grid["runs"]] == [r["name"] for r in want]
    for got, r in zip(grid["runs"], want):
        assert got["model"] == ModelConfig(**r["model"], n_vocab=512).to_dict()
        assert got["train"] == TrainConfig.from_dict(r["train"]).to_dict()
        assert got["N"] == ModelConfig(**r["model"]).N


def _preset(**kw):
    base = dict(name="t", description="t", n_ctx=16, tokens=10 * 4 * 16, models=[(1, 32, 2)],
                train=dict(batch_size=4, lr=1e-3, warmup=2))
    return SweepPreset(**{**base, **kw})


def test_model_entries_variants_and_names(tmp_path):
    p = _preset(models=[(2, 64, 4), {"n_layer": 2, "d_model": 64, "n_heads": 2},
                        {"n_layer": 2, "d_model": 64, "n_heads": 4, "d_ff": 512}, {"arch": "lstm", "n_layer": 1, "d_model": 64},
                        {"arch": "universal", "n_layer": 3, "d_model": 32, "n_heads": 2}],
                variants=[{"name": "lr1e-3"}, {"name": "lr3e-3", "lr": 3e-3},
                          {"name": "constant", "schedule": "constant", "area_of": "lr1e-3", "models": [0]}])
    names = [r["name"] for r in p.runs()]
    assert names == ["L2-d64-h4-ff4-lr1e-3", "L2-d64-h4-ff4-lr3e-3", "L2-d64-h4-ff4-constant",
                     "L2-d64-h2-ff4-lr1e-3", "L2-d64-h2-ff4-lr3e-3", "L2-d64-h4-ff8-lr1e-3", "L2-d64-h4-ff8-lr3e-3",
                     "lstm-L1-d64-lr1e-3", "lstm-L1-d64-lr3e-3", "universal-L3-d32-lr1e-3", "universal-L3-d32-lr3e-3"]
    runs = {r["name"]: r for r in p.runs()}
    assert runs["lstm-L1-d64-lr1e-3"]["model"] == {"arch": "lstm", "n_layer": 1, "d_model": 64, "n_ctx": 16}
    assert runs["L2-d64-h4-ff8-lr3e-3"]["train"]["lr"] == 3e-3
    c = runs["L2-d64-h4-ff4-constant"]["train"]
    assert c["schedule"] == "constant" and c["lr"] < 1e-3
    assert _area(c) == pytest.approx(_area(runs["L2-d64-h4-ff4-lr1e-3"]["train"]), rel=1e-12)
    # a JSON preset file: [n_layer, d_model, n_heads] lists and objects, variants
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"name": "j", "description": "j", "n_ctx": 16, "tokens": 640, "train": {"batch_size": 4},
                             "models": [[1, 32, 2], {"arch": "lstm", "n_layer": 1, "d_model": 32}],
                             "variants": [{"name": "wsd", "schedule": "wsd"}]}))
    assert [r["name"] for r in get_preset(str(f)).runs()] == ["L1-d32-wsd", "lstm-L1-d32-wsd"]


@pytest.mark.parametrize("kw,needle", [
    (dict(models=[(1, 32, 2), {"n_layer": 1, "d_model": 32, "n_heads": 2}]), "run names repeat"),
    (dict(models=[{"n_layer": 1, "d_model": 32, "n_ctx": 8}]), "a model entry takes"),
    (dict(models=[{"d_model": 32}]), "a model entry takes"),
    (dict(models=[(1, 32)]), "a model entry is"),
    (dict(variants=[{"name": "a"}, {"name": "a"}]), "a variant is a unique name"),
    (dict(variants=[{"name": "a", "lr_peak": 1}]), "a variant is a unique name"),
    (dict(variants=[{"name": "a", "area_of": "b"}]), "area_of must name another variant"),
    (dict(variants=[{"name": "a", "models": [3]}]), "models are indices"),
    (dict(variants=[{"name": "a", "models": [0]}, {"name": "b", "area_of": "a"}],
          models=[(1, 32, 2), (1, 48, 2)]), "runs on models its area_of"),
    (dict(variants=[{"name": "a"}], budgets=[[1e9, [0]]]), "not with budgets"),
])
def test_bad_presets_are_one_line_errors(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        _preset(**kw).runs()


def test_new_schedules_shapes():
    kw = dict(steps=100, warmup=10, lr=1.0, min_lr_frac=0.1)
    lin = [lr_at(t, TrainConfig(schedule="linear", **kw)) for t in range(101)]
    const = [lr_at(t, TrainConfig(schedule="constant", **kw)) for t in range(101)]
    cos = [lr_at(t, TrainConfig(schedule="cosine", **kw)) for t in range(101)]
    for lrs in (lin, const):
        assert lrs[:10] == cos[:10] and lrs[9] == 1.0  # the same warmup
    assert all(a > b for a, b in zip(lin[10:], lin[11:]))  # strictly decreasing
    assert lin[10] == 1.0 and lin[100] == pytest.approx(0.1) and lin[99] == pytest.approx(0.1 + 0.9 / 90)
    assert all(b - a == pytest.approx(-0.01) for a, b in zip(lin[10:100], lin[11:100]))  # a straight line
    assert set(const[10:]) == {1.0}  # no decay, no floor
    tc = TrainConfig(schedule="constant", steps=50, warmup=0, lr=2e-3)
    assert [lr_at(t, tc) for t in range(50)] == [2e-3] * 50
    # the cosine's area equals the straight line's between the same endpoints (symmetric about it)
    assert math.fsum(lin[:100]) == pytest.approx(math.fsum(cos[:100]), rel=1e-12)


def test_cosine_and_wsd_unchanged():
    """Exact values of the schedules before linear and constant were added (bit for bit)."""
    want = {
        "cosine": {0: 0.00030000000000000003, 9: 0.003, 10: 0.003, 33: 0.0025877888001196465, 74: 0.0008188570083103615,
                   75: 0.0007822367269231718, 76: 0.0007466736814155418, 99: 0.00030082238352422075,
                   120: 0.00030000000000000003},
        "wsd": {0: 0.00030000000000000003, 9: 0.003, 10: 0.003, 33: 0.003, 74: 0.003, 75: 0.002892, 76: 0.002784,
                99: 0.0002999999999999999, 120: 0.0002999999999999999},
    }
    areas = {"cosine": 0.16635, "wsd": 0.2514}
    for sched, vals in want.items():
        tc = TrainConfig(schedule=sched, steps=100, warmup=10, lr=3e-3, min_lr_frac=0.1, decay_frac=0.25)
        assert {t: lr_at(t, tc) for t in vals} == vals, sched
        assert math.fsum(lr_at(t, tc) for t in range(100)) == areas[sched], sched


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_a_new_schedule_trains(schedule, tmp_path_factory):
    corpus = stdlib_sample(tmp_path_factory.mktemp("corpus"), n_files=6)
    tc = TrainConfig(data=corpus, tokenizer="bpe-300", batch_size=4, steps=16, warmup=2, lr=3e-3, schedule=schedule,
                     eval_every=16, eval_batches=2)
    out = tmp_path_factory.mktemp("run")
    Trainer(ModelConfig(n_layer=1, d_model=32, n_heads=2, n_ctx=16), tc, out, progress=False).run()
    rows = [json.loads(ln) for ln in Path(out, "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [lr_at(t, tc) for t in range(16)]  # the trainer follows lr_at
    assert json.loads(Path(out, "config.json").read_text())["train"]["schedule"] == schedule
    first, last = rows[0]["train_loss"], rows[-1]["train_loss"]
    assert math.isfinite(last) and last < first, (first, last)
    assert rows[-1]["val_loss"] is not None and math.isfinite(rows[-1]["val_loss"])
