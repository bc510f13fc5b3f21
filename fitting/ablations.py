"""The paper's other systems: model shape, architectures, loss per position by architecture, other
data distributions, learning rate and schedule (Kaplan et al. 2020, Figures 5, 7, 8, 17, 20-22).

    from flopscale.fitting.ablations import ablations
    ab = ablations(run_dirs, point="best", n_boot=200, positions=position_fits(run_dirs))
    ab.payload          # fits.json "ablations": {"shape", "arch", ...}, only what the runs vary
    ab.write(out_dir)   # the PNGs (flopscale.fileio); ab.sections(payload["ablations"]): report.md

Everything is read from each run's config.json (model and train fields), never from run names,
and an analysis appears only when the runs vary in its way:

- **shape** (Fig. 5): Transformer runs of one arch whose configs are identical but for the shape
  fields (n_layer, d_model, n_heads, d_attn, d_ff) and lr (a preset may set lr by N), grouped by
  non-embedding N within SHAPE_TOL (10%) of the group's smallest; per shape the lowest loss over
  its runs (the best lr tried); per group the loss increase over its best shape, in percent, in
  three series from a reference shape (`_series`): against d_model/n_layer, d_ff/d_model and
  n_heads. A group needs MIN_SHAPES shapes to be drawn.
- **arch** (Figs. 7, 17): one L(N) fit per arch (law `n` on the lowest loss per N, through api's
  grouped planning `plan_groups`, names `n.arch_VALUE`), the gap at a common N, the loss
  against measured C (a universal Transformer applies its N n_layer times: C/6ND ~ n_layer).
- **positions by arch** (Figs. 7 right, 20): the per-position curves of runs of each arch at
  the nearest N to one another, and alpha_t per arch (fitting/positions.py fits each run).
- **other data** (Fig. 8): every metrics.jsonl column val_loss_NAME against the training
  distribution's val_loss at the same evaluation, y = slope x + offset by least squares (t
  intervals), the mean gap at slope 1, and both against N.
- **lr** (Figs. 21-22, eq. D.1): runs identical but for lr; the loss against lr per N, the best
  lr (a parabola in ln lr through the minimum and its two neighbours), and eq. D.1 beside it.
- **schedule** (Fig. 22): runs identical but for the schedule fields (SCHEDULE_FIELDS, lr
  included: equal-area schedules need their own peaks; a schedule run at several peaks beside
  ones run once is represented by its run of the closest area); the final loss per schedule and
  each run's learning-rate curve. The curve is what the trainer logged (metrics.jsonl `lr`, the
  value of engine/train.py's schedule function at that step); fitting/ imports nothing of the
  engine, so a caller above it (the sweep) may pass that function as ``lr_fn(step, train)``
  to recompute every step from the config instead.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
from scipy.stats import t as student_t

from .estimator import FitError, NonNumericColumn, fit
from .frontier import lower_envelope
from .laws import LAWS, PAPER, kaplan_lr
from .numbers import sig as _g
from .results import SCHEDULE_FIELDS, SERIES, clean_json
from .runs import load_run, run_point
from .selection import plan_groups, side_by_side

SHAPE_TOL = 0.10        # runs within 10% of a group's smallest N are "equal N" (Kaplan Fig. 5)
MIN_SHAPES = 3          # shapes an N group needs for a line in the shape figure
MIN_SIZES = 3           # distinct N an arch needs for its L(N) fit (api's auto rule)
MIN_LRS = 3             # learning rates a scan needs to locate its minimum
SHAPE_FIELDS = ("n_layer", "d_model", "n_heads", "d_attn", "d_ff")
# train fields that change how a run executes or is logged, not what it learns
HOW_IT_RAN = ("device", "backend", "compile", "loss_impl", "eval_every", "eval_batches", "eval_positions",
              "log_every", "keep_steps", "noise_scale", "grad_accum")
HOW_IT_RAN_PREFIX = ("cuda_", "triton_")
ARCH_ORDER = ("gpt", "lstm", "universal")
FILES = {"shape": "shape.png", "arch": "arch.png", "positions_by_arch": "positions_by_arch.png",
         "other_data": "other_data.png", "lr": "lr.png", "schedule": "schedule.png"}


# ------------------------------------------------------------------------------------------------
# Runs as records
# ------------------------------------------------------------------------------------------------

@dataclass
class Rec:
    path: str
    name: str
    model: dict
    train: dict
    N: float
    arch: str
    loss: float               # the run's point (best or final evaluation), as the fits read it
    final_loss: float         # its last evaluation
    C: float                  # non-embedding C at the point
    tokens: float             # tokens at the point
    curve: tuple              # (C, val_loss) at every evaluation
    lr_curve: tuple           # (step, lr) as logged
    other: Dict[str, float] = field(default_factory=dict)   # val_loss_NAME at the point's evaluation
    other_at: Dict[str, float] = field(default_factory=dict)  # val_loss at that same evaluation
    n_ctx: int = 0
    run: object = None        # the runs.Run it was read from (the figures' lower envelopes)
    lr_recomputed: bool = False  # lr_curve recomputed from the config (_lr_of) instead of as logged


def load_records(runs: List, point: str = "best") -> List[Rec]:
    """Records of runs: runs.Run objects as fit_and_report loaded them, or run directories."""

    recs = []
    for run in runs:
        if isinstance(run, str):
            run = load_run(run)
        pt = run_point(run, point)
        val = run.val_loss
        ev = np.flatnonzero(np.isfinite(val))
        other, other_at = {}, {}
        for nm, o in run.val_other.items():
            both = ev[np.isfinite(o[ev])]
            if both.size:
                i = int(both[np.argmin(val[both])]) if point == "best" else int(both[-1])
                other[nm], other_at[nm] = float(o[i]), float(val[i])
        model = run.config.get("model") or {}
        ok = np.isfinite(run.step) & np.isfinite(run.lr)
        evc = np.isfinite(run.val_loss) & np.isfinite(run.flops)
        recs.append(Rec(path=run.path, name=run.name, model=model, train=run.config.get("train") or {}, N=run.N,
                        arch=str(model.get("arch", "gpt")), loss=pt["loss"],
                        final_loss=float(val[ev[-1]]) if ev.size else pt["loss"], C=pt["C"],
                        tokens=float(run.tokens[int(np.flatnonzero(run.step == pt["S"])[0])])
                        if (run.step == pt["S"]).any() else math.nan,
                        curve=(run.flops[evc], run.val_loss[evc]), lr_curve=(run.step[ok], run.lr[ok]), other=other,
                        other_at=other_at,
                        n_ctx=run.n_ctx, run=run))
    return recs


def _identity(r: Rec, free_model=(), free_train=()) -> str:
    """What a run trained, as one string: model and train fields minus the free ones and the ones
    that only change how it ran (device, backend, logging, kernel variants)."""
    m = {k: v for k, v in r.model.items() if k not in free_model}
    t = {k: v for k, v in r.train.items() if k not in free_train and k not in HOW_IT_RAN
         and not k.startswith(HOW_IT_RAN_PREFIX)}
    return json.dumps({"model": m, "train": t}, sort_keys=True, default=str)


def _differing(recs: List[Rec], section: str, skip=()) -> List[str]:
    keys = sorted({k for r in recs for k in getattr(r, section)})
    out = []
    for k in keys:
        if k in skip or k in HOW_IT_RAN or k.startswith(HOW_IT_RAN_PREFIX):
            continue
        if len({json.dumps(getattr(r, section).get(k), default=str) for r in recs}) > 1:
            out.append(k)
    return out


def group_by_n(Ns, tol: float = SHAPE_TOL) -> List[np.ndarray]:
    """Indices grouped by N: sorted, a group holds the N within (1 + tol) of its smallest."""
    Ns = np.asarray(Ns, float)
    order = np.argsort(Ns, kind="stable")
    groups, cur = [], []
    for i in order:
        if cur and Ns[i] > Ns[cur[0]] * (1 + tol):
            groups.append(np.array(cur))
            cur = []
        cur.append(int(i))
    if cur:
        groups.append(np.array(cur))
    return groups


def _t975(dof: int) -> float:
    return float(student_t.ppf(0.975, dof))


# ------------------------------------------------------------------------------------------------
# 1 Shape at fixed N (Kaplan Fig. 5)
# ------------------------------------------------------------------------------------------------

def _shape(r: Rec) -> dict:
    m = r.model
    d_attn = m.get("d_attn") or m.get("d_model")
    return {"n_layer": m.get("n_layer"), "d_model": m.get("d_model"), "n_heads": m.get("n_heads"),
            "d_attn": d_attn, "d_ff": m.get("d_ff") or 4 * m.get("d_model", 0),
            "aspect": m["d_model"] / m["n_layer"], "ff_ratio": (m.get("d_ff") or 4 * m["d_model"]) / m["d_model"],
            "d_head": d_attn / m["n_heads"] if m.get("n_heads") else None}


def shape_analysis(recs: List[Rec], tol: float = SHAPE_TOL, min_shapes: int = MIN_SHAPES) -> Optional[dict]:
    """None when no N group holds two shapes; else {"tolerance", "groups": [...], "notes": [...]}."""
    tr = [r for r in recs if r.arch != "lstm" and all(r.model.get(k) for k in ("n_layer", "d_model", "n_heads"))]
    groups, notes, small = [], [], []
    for rs in _by(tr, lambda r: _identity(r, SHAPE_FIELDS, ("lr",))):
        for idx in group_by_n([r.N for r in rs], tol):
            g = [rs[i] for i in idx]
            per: Dict[tuple, Rec] = {}
            n_runs: Dict[tuple, int] = {}
            for r in g:
                key = tuple(_shape(r)[k] for k in SHAPE_FIELDS)
                n_runs[key] = n_runs.get(key, 0) + 1
                if key not in per or r.loss < per[key].loss:
                    per[key] = r
            if len(per) < 2:
                continue
            Ns = [r.N for r in per.values()]
            label = f"{g[0].arch} N ≈ {_g(float(np.exp(np.mean(np.log(Ns)))))}"
            if len(per) < min_shapes:
                small.append(f"{label}: {len(per)} shapes, a line needs {min_shapes}; not drawn")
                continue
            best_loss = min(r.loss for r in per.values())
            rows = []
            for key, r in sorted(per.items(), key=lambda kv: kv[1].model["d_model"] / kv[1].model["n_layer"]):
                rows.append(dict(_shape(r), run=r.name, N=r.N, loss=r.loss, lr=r.train.get("lr"),
                                 n_runs=n_runs[key], increase_pct=100.0 * (r.loss / best_loss - 1.0)))
            b = min(rows, key=lambda x: x["loss"])
            inc = [x["increase_pct"] for x in rows]
            series = _series(rows)
            n_ratio = max(Ns) / min(Ns)
            lrs = sorted({r.train.get("lr") for r in g if r.train.get("lr") is not None})  # every run's
            groups.append({"label": label, "arch": g[0].arch, "N_range": [min(Ns), max(Ns)],
                           "N_geomean": float(np.exp(np.mean(np.log(Ns)))), "n_shapes": len(rows), "runs": rows,
                           "best": {k: b[k] for k in ("run", "n_layer", "d_model", "n_heads", "d_ff", "aspect", "loss")},
                           "spread_pct": float(max(inc) - min(inc)),
                           "series": series,
                           # what the N spread alone is worth at the paper's alpha_N
                           "n_spread_effect_pct": float(100.0 * (n_ratio ** PAPER["n"]["alpha_N"] - 1.0)),
                           "lrs": lrs})
    notes += small
    if not groups:
        # shapes at near-equal N whose training differs: say which fields kept them apart
        for arch in sorted({r.arch for r in tr}):
            rs = [r for r in tr if r.arch == arch]
            for idx in group_by_n([r.N for r in rs], tol):
                g = [rs[i] for i in idx]
                shapes = {tuple(_shape(r)[k] for k in SHAPE_FIELDS) for r in g}
                if len(shapes) >= 2 and not any(len({tuple(_shape(r)[k] for k in SHAPE_FIELDS) for r in v}) >= 2
                                                for v in _by(g, lambda r: _identity(r, SHAPE_FIELDS, ("lr",)))):
                    diff = _differing(g, "train", skip=("lr",)) + _differing(g, "model", skip=SHAPE_FIELDS)
                    notes.append(f"{arch} N ≈ {_g(g[0].N)}: {len(shapes)} shapes, but their training differs "
                                 f"({', '.join(diff)}); not compared")
    if not groups and not notes:
        return None
    return {"tolerance": tol, "min_shapes": min_shapes, "groups": groups, "notes": notes,
            "rule": f"runs identical but for the shape (and lr), N within {100 * tol:.0f}% of the group's smallest; "
                    f"per shape the lowest loss over its runs"}


def _series(rows: List[dict]) -> dict:
    """Which panel each shape of a group belongs to, as a study varies one thing at a time: the
    reference is the shape at the most common d_ff / d_model that shares its (n_layer, d_model,
    d_ff) with the most others (ties: the most common head dim, then the lower loss); a shape differing from it only in n_heads is
    in the heads series, one at another d_ff / d_model in the ff series, the rest (same d_ff /
    d_model, another aspect ratio) in the aspect series.  Each row gets "series"; returns
    {"reference": run, SERIES key: {"runs", "spread_pct"}} (the reference belongs to every series)."""
    ffs = [x["ff_ratio"] for x in rows]
    mode = max(set(ffs), key=lambda v: (ffs.count(v), -min(x["loss"] for x in rows if x["ff_ratio"] == v)))
    body = lambda x: (x["n_layer"], x["d_model"], x["d_attn"], x["d_ff"])
    bodies = [body(x) for x in rows]
    hd = [x["d_head"] for x in rows]   # a tie at one body: the head dim most shapes have
    ref = max((x for x in rows if x["ff_ratio"] == mode),
              key=lambda x: (bodies.count(body(x)), hd.count(x["d_head"]), -x["loss"]))
    out = {"reference": ref["run"]}
    for x in rows:
        x["series"] = ("reference" if x is ref else "heads" if body(x) == body(ref)
                       else "ff" if x["ff_ratio"] != ref["ff_ratio"] else "aspect")
    for k in SERIES:
        mem = [x for x in rows if x["series"] in (k, "reference")]
        if len(mem) >= 2:
            inc = [x["increase_pct"] for x in mem]
            out[k] = {"runs": [x["run"] for x in mem], "spread_pct": float(max(inc) - min(inc))}
    return out


def _by(recs, key) -> List[List[Rec]]:
    d: Dict[str, List[Rec]] = {}
    for r in recs:
        d.setdefault(key(r), []).append(r)
    return list(d.values())


# ------------------------------------------------------------------------------------------------
# 2 Architectures (Figs. 7, 17)
# ------------------------------------------------------------------------------------------------

def arch_analysis(recs: List[Rec], n_boot: int = 200, seed: int = 0):
    """None unless the runs hold two or more archs; else ({...}, {arch: (fit, boot)})."""

    archs = sorted({r.arch for r in recs}, key=lambda a: (ARCH_ORDER + (a,)).index(a))
    if len(archs) < 2:
        return None
    # the lowest loss per (arch, N): the best-trained run of each size, as L(N) takes it
    best: Dict[tuple, Rec] = {}
    for r in recs:
        k = (r.arch, r.N)
        if k not in best or r.loss < best[k].loss:
            best[k] = r
    pts = sorted(best.values(), key=lambda r: (archs.index(r.arch), r.N))
    cols = {"N": np.array([r.N for r in pts]), "loss": np.array([r.loss for r in pts]),
            "arch": NonNumericColumn("arch is text", len(pts), [r.arch for r in pts])}
    plan, _, values = plan_groups(cols, "runs, lowest loss per N", "arch", ["n"], {}, "nonembedding")
    per, fits, notes = {}, [], []
    boots = {}
    for it in plan:
        a = it["group"]["value"]
        c = it["cols"]
        n = int(np.unique(c["N"]).size)
        ratio = [r.C / (6 * r.N * r.tokens) for r in recs if r.arch == a and r.tokens > 0 and math.isfinite(r.C)]
        entry = {"n_sizes": n, "N_range": [float(np.min(c["N"])), float(np.max(c["N"]))],
                 "C_per_6ND": float(np.median(ratio)) if ratio else None,
                 "n_layer": sorted({r.model.get("n_layer") for r in recs if r.arch == a})}
        if n < MIN_SIZES:
            entry["note"] = f"{n} size{'s' if n != 1 else ''}, a power law needs {MIN_SIZES}; no fit"
        else:
            try:
                res, boot = fit("n", c, n_boot=n_boot, seed=seed, return_boot=True)
            except FitError as e:
                entry["note"] = f"no fit ({e})"
                per[a] = entry
                continue
            res.update(name=it["name"], group=it["group"], source=it["source"])
            fits.append(res)
            boots[a] = (res, boot)
            entry.update(fit=it["name"], alpha_N=res["params"]["alpha_N"], N_c=res["params"]["N_c"],
                         ci95=res["ci95"].get("alpha_N"), rmse_log=res["rmse_log"], warnings=res["warnings"])
        per[a] = entry
    out = {"archs": archs, "per_arch": per, "fits": fits, "notes": notes,
           "side_by_side": side_by_side(fits, "arch", [v for v in values if v in boots])}
    if len(boots) >= 2:
        lo = max(per[a]["N_range"][0] for a in boots)
        hi = min(per[a]["N_range"][1] for a in boots)
        inside = lo <= hi
        Ns = [per[a]["N_range"][k] for a in boots for k in (0, 1)]
        Nx = float(math.sqrt(lo * hi)) if inside else float(np.exp(np.mean(np.log(Ns))))
        ref = "gpt" if "gpt" in boots else next(iter(boots))
        L = {a: float(LAWS["n"].predict(f["params"], N=np.array([Nx]))[0]) for a, (f, _) in boots.items()}
        out["gap"] = {"N": Nx, "inside_all_ranges": inside, "reference": ref, "loss": L,
                      "gap": {a: L[a] - L[ref] for a in L}, "gap_pct": {a: 100 * (L[a] / L[ref] - 1) for a in L}}
    if not boots:
        most = max(e["n_sizes"] for e in per.values())
        out["notes"].append(f"no arch has {MIN_SIZES} sizes (the most: {most}), so no L(N) fits and no figure")
    return out, boots


# ------------------------------------------------------------------------------------------------
# 3 Loss per position by arch (Figs. 7 right, 20)
# ------------------------------------------------------------------------------------------------

def _late_drop(losses) -> tuple:
    """Mean loss over t in (n_ctx/4, n_ctx/2] minus the mean over (n_ctx/2, n_ctx], with a rough
    standard error from the scatter of neighbouring positions (about 0 for a plateau)."""
    y = np.asarray(losses, float)
    n = y.size
    a, b = y[n // 4:n // 2], y[n // 2:]
    sd = float(np.std(np.diff(y[n // 4:]), ddof=1) / math.sqrt(2)) if n >= 8 else math.nan
    se = sd * math.sqrt(1 / max(a.size, 1) + 1 / max(b.size, 1))
    return float(a.mean() - b.mean()), se


def positions_by_arch(fits: Optional[List[dict]]) -> Optional[dict]:
    fits = [f for f in (fits or []) if f.get("N")]
    archs = sorted({f["arch"] for f in fits}, key=lambda a: (ARCH_ORDER + (a,)).index(a))
    if len(archs) < 2:
        return None
    ref = "gpt" if "gpt" in archs else archs[0]
    best = None
    for anchor in (f for f in fits if f["arch"] == ref):
        pick = {ref: anchor}
        for a in archs:
            if a != ref:
                pick[a] = min((f for f in fits if f["arch"] == a), key=lambda f: abs(math.log(f["N"] / anchor["N"])))
        score = max(abs(math.log(f["N"] / anchor["N"])) for f in pick.values())
        if best is None or score < best[0]:
            best = (score, pick)
    score, pick = best
    per = {}
    for a in archs:
        mine = [f for f in fits if f["arch"] == a]
        at = [f["params"]["alpha_t"] for f in mine if "params" in f]
        f = pick[a]
        drop, se = _late_drop(f["losses"])
        per[a] = {"run": os.path.basename(os.path.normpath(f["run"])), "path": f["run"], "N": f["N"],
                  "n_ctx": len(f["losses"]),
                  "alpha_t": f["params"]["alpha_t"] if "params" in f else None,
                  "alpha_t_all": {"median": float(np.median(at)), "min": float(min(at)), "max": float(max(at)),
                                  "n_runs": len(at)} if at else None,
                  "late_drop": drop, "late_drop_se": se, "note": f.get("note")}
    return {"reference": ref, "N_ratio": float(math.exp(score)), "per_arch": per,
            "n_ctx": sorted({v["n_ctx"] for v in per.values()})}


# ------------------------------------------------------------------------------------------------
# 4 Other distributions (Fig. 8)
# ------------------------------------------------------------------------------------------------

def linear_fit(x, y) -> dict:
    """y = slope x + offset by least squares, with t intervals (95%); and the mean gap y - x (slope 1)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = x.size
    X = np.stack([x, np.ones_like(x)], axis=1)
    (slope, offset), *_ = np.linalg.lstsq(X, y, rcond=None)
    r = y - X @ np.array([slope, offset])
    dof = n - 2
    s2 = float(r @ r / dof) if dof > 0 else math.nan
    cov = s2 * np.linalg.inv(X.T @ X)
    t = _t975(dof) if dof > 0 else math.nan
    d = y - x
    tg = _t975(n - 1) if n > 1 else math.nan
    gse = float(np.std(d, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"n_points": int(n), "slope": float(slope), "offset": float(offset),
            "ci95": {"slope": [float(slope - t * math.sqrt(cov[0, 0])), float(slope + t * math.sqrt(cov[0, 0]))],
                     "offset": [float(offset - t * math.sqrt(cov[1, 1])), float(offset + t * math.sqrt(cov[1, 1]))]},
            "rmse": float(np.sqrt(np.mean(r ** 2))), "gap_mean": float(d.mean()),
            "gap_ci95": [float(d.mean() - tg * gse), float(d.mean() + tg * gse)]}


def other_data_analysis(recs: List[Rec]) -> Optional[dict]:
    names = sorted({k for r in recs for k in r.other})
    if not names:
        return None
    out = {}
    for nm in names:
        rs = [r for r in recs if nm in r.other]
        x = [r.other_at[nm] for r in rs]   # the training distribution's loss at the same evaluation
        e = {"n_runs": len(rs), "points": [{"run": r.name, "N": r.N, "arch": r.arch, "loss": r.other_at[nm],
                                            "loss_other": r.other[nm]} for r in rs]}
        if len(rs) < 3 or np.unique(x).size < 2:
            e["note"] = f"{len(rs)} run{'s' if len(rs) != 1 else ''} with val_loss_{nm}, a line with an interval needs 3"
        else:
            e["fit"] = linear_fit(x, [r.other[nm] for r in rs])
        out[nm] = e
    return {"names": names, "per_name": out}


# ------------------------------------------------------------------------------------------------
# 5 Learning rate and schedule (Figs. 21-22, eq. D.1)
# ------------------------------------------------------------------------------------------------

def best_lr(lrs, losses) -> dict:
    """The scan's minimum, and the vertex of the parabola in ln lr through it and its neighbours."""
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    o = np.argsort(lrs)
    lrs, losses = lrs[o], losses[o]
    i = int(np.argmin(losses))
    out = {"lr_min": float(lrs[i]), "loss_min": float(losses[i]), "edge": None}
    if i == 0 or i == lrs.size - 1:
        out["edge"] = "lowest" if i == 0 else "highest"
        out["lr_best"], out["loss_best"], out["method"] = out["lr_min"], out["loss_min"], "minimum at the scan's edge"
        return out
    x = np.log(lrs[i - 1:i + 2])
    a, b, c = np.polyfit(x, losses[i - 1:i + 2], 2)
    if a <= 0:
        out["lr_best"], out["loss_best"], out["method"] = out["lr_min"], out["loss_min"], "minimum"
        return out
    v = float(np.clip(-b / (2 * a), x[0], x[2]))
    out["lr_best"], out["loss_best"], out["method"] = float(math.exp(v)), float(a * v * v + b * v + c), "parabola"
    return out


def lr_analysis(recs: List[Rec]) -> Optional[dict]:
    scans, notes = [], []
    cands = [rs for rs in _by(recs, lambda r: _identity(r, (), ("lr",)))
             if len({r.train.get("lr") for r in rs if r.train.get("lr") is not None}) >= 2]
    for rs, label in zip(cands, _labels(cands)):
        lrs = sorted({r.train.get("lr") for r in rs if r.train.get("lr") is not None})
        per = {}
        for r in rs:
            lr = r.train.get("lr")
            if lr is not None and (lr not in per or r.loss < per[lr].loss):
                per[lr] = r
        s = {"label": label, "N": rs[0].N, "arch": rs[0].arch, "lrs": [float(v) for v in lrs],
             "losses": [per[v].loss for v in lrs], "runs": [per[v].name for v in lrs]}
        if len(lrs) < MIN_LRS:
            s["note"] = f"{len(lrs)} learning rates, locating a minimum needs {MIN_LRS}"
            notes.append(f"{label}: {s['note']}")
        else:
            s.update(best_lr(lrs, s["losses"]))
            s["kaplan_D1"] = float(kaplan_lr(rs[0].N))
        scans.append(s)
    if not scans:
        return None
    scans.sort(key=lambda s: (s["arch"], s["N"]))
    out = {"scans": scans, "notes": notes}
    good = [s for s in scans if "lr_best" in s and not s.get("edge")]
    Ns = np.array([s["N"] for s in good])
    if np.unique(Ns).size >= 2:
        k = float(np.polyfit(np.log(Ns), np.log([s["lr_best"] for s in good]), 1)[0])
        dec = math.log10(Ns.max() / Ns.min())
        d1 = kaplan_lr([Ns.min(), Ns.max()])
        out["trend"] = {"exponent": k, "per_decade": 10 ** k, "n_sizes": int(np.unique(Ns).size),
                        "kaplan_per_decade": float((d1[1] / d1[0]) ** (1 / dec)) if d1.min() > 0 else None,
                        "N_range": [float(Ns.min()), float(Ns.max())]}
    elif any("lr_best" in s for s in scans):
        out["notes"].append(f"{len(good)} size{'s' if len(good) != 1 else ''} with an interior best lr; "
                            "a trend against N needs 2")
    return out


def _lr_of(r: Rec, lr_fn: Optional[Callable]) -> tuple:
    """(step, lr): the logged learning rate (row `step` carries the lr of its update), or every step
    recomputed from the config by lr_fn(step0, train) (step0 = step - 1, the trainer's numbering),
    once per run: the recomputed curve replaces the logged one in the record."""
    steps = int(r.train.get("steps") or 0)
    if lr_fn is not None and steps and not r.lr_recomputed:
        s = np.arange(steps)
        r.lr_curve, r.lr_recomputed = (s + 1.0, np.array([lr_fn(int(k), r.train) for k in s], float)), True
    return r.lr_curve


def _area(step, lr) -> float:
    step, lr = np.asarray(step, float), np.asarray(lr, float)
    if not step.size:
        return math.nan
    d = np.diff(np.concatenate([[0.0], step]))   # each logged row stands for the steps since the last
    return float(np.sum(lr * d))


def _labels(groups: List[List[Rec]]) -> List[str]:
    """'ARCH N = ...' per group of runs, plus the train fields that tell apart groups sharing it."""
    base = [f"{g[0].arch} N = {_g(g[0].N)}" for g in groups]
    out = []
    for b, g in zip(base, groups):
        twins = [h[0] for c, h in zip(base, groups) if c == b]
        diff = _differing(twins, "train", skip=SCHEDULE_FIELDS) if len(twins) > 1 else []
        out.append(b + (" (" + ", ".join(f"{k} {g[0].train.get(k)}" for k in diff) + ")" if diff else ""))
    return out


def schedule_analysis(recs: List[Rec], lr_fn: Optional[Callable] = None) -> Optional[dict]:
    """Per group of runs identical but for SCHEDULE_FIELDS, one run per schedule: where a schedule was
    run at several peaks beside schedules run once (cpu-lr's cosine scan beside its equal-area
    schedules), the peak whose lr area is closest to theirs; else the lowest final loss."""
    groups = []
    shape_of = lambda r: tuple(json.dumps(r.train.get(k), default=str) for k in SCHEDULE_FIELDS if k != "lr")
    cands = [rs for rs in _by(recs, lambda r: _identity(r, (), SCHEDULE_FIELDS)) if len({shape_of(r) for r in rs}) >= 2]
    for rs, label in zip(cands, _labels(cands)):
        vary = [k for k in SCHEDULE_FIELDS if k not in ("schedule", "lr")
                and len({json.dumps(r.train.get(k), default=str) for r in rs}) > 1]
        per: Dict[tuple, List[Rec]] = {}
        for r in rs:
            per.setdefault(shape_of(r), []).append(r)
        areas = {id(r): _area(*_lr_of(r, lr_fn)) for r in rs}
        single = [areas[id(t[0])] for t in per.values() if len(t) == 1 and areas[id(t[0])] > 0]
        target = float(np.exp(np.mean(np.log(single)))) if single else None
        rows = []
        for tried in per.values():
            if target is not None and len(tried) > 1:
                # a scan of peaks beside single runs: the run of equal area is the comparison
                r = min(tried, key=lambda r: abs(math.log(max(areas[id(r)], 1e-300) / target)))
                pick = "the peak whose lr area is closest to the other schedules'"
            else:
                r = min(tried, key=lambda r: r.final_loss)
                pick = "the peak with the lowest final loss" if len(tried) > 1 else ""
            lab = str(r.train.get("schedule", "?")) + "".join(f", {k} {r.train.get(k)}" for k in vary)
            rows.append({"run": r.name, "path": r.path, "label": lab, "schedule": r.train.get("schedule"), "lr_peak": r.train.get("lr"),
                         "n_runs": len(tried), "picked": pick, "final_loss": r.final_loss, "loss": r.loss,
                         "lr_area": areas[id(r)],
                         "lr_source": "recomputed from the config" if lr_fn is not None else "metrics.jsonl lr"})
        rows.sort(key=lambda x: x["label"])
        fl = [x["final_loss"] for x in rows]
        ar = [x["lr_area"] for x in rows if math.isfinite(x["lr_area"])]
        groups.append({"label": label, "N": rs[0].N, "runs": rows,
                       "spread": float(max(fl) - min(fl)), "spread_pct": float(100 * (max(fl) / min(fl) - 1)),
                       "area_ratio": float(max(ar) / min(ar)) if ar and min(ar) > 0 else None,
                       "best": min(rows, key=lambda x: x["final_loss"])["label"]})
    if not groups:
        return None
    return {"groups": sorted(groups, key=lambda g: g["N"])}


# ------------------------------------------------------------------------------------------------
# The whole thing
# ------------------------------------------------------------------------------------------------

class Ablations:
    """The analyses the runs support (payload, JSON-safe) and what their figures need."""

    def __init__(self, payload: dict, recs: List[Rec], arch_boots=None, positions=None, arch_envelopes=None):
        # recs: a schedule run's lr_curve is the one its lr_area was summed over (recomputed by lr_fn)
        self.payload, self.recs, self.arch_boots, self.positions = payload, recs, arch_boots or {}, positions or []
        self.arch_envelopes = arch_envelopes or {}  # {arch: lower envelope of its curves, or None}


def _drawable(key: str, sec: dict) -> bool:
    if key == "shape":
        return bool(sec["groups"])
    if key == "arch":
        return bool(sec["fits"])
    if key == "other_data":
        return any("fit" in e for e in sec["per_name"].values())
    if key == "lr":
        return any("lr_best" in s for s in sec["scans"])
    return True


def ablations(runs: List, point: str = "best", n_boot: int = 200, seed: int = 0,
              positions: Optional[List[dict]] = None, lr_fn: Optional[Callable] = None) -> Ablations:
    """runs: runs.Run objects (fit_and_report passes the ones it loaded) or run directories."""

    recs = load_records(runs, point)
    pay, boots = {}, {}
    sh = shape_analysis(recs)
    if sh:
        pay["shape"] = sh
    ar = arch_analysis(recs, n_boot=n_boot, seed=seed)
    if ar:
        pay["arch"], boots = ar
    pa = positions_by_arch(positions)
    if pa:
        pay["positions_by_arch"] = pa
    od = other_data_analysis(recs)
    if od:
        pay["other_data"] = od
    lr = lr_analysis(recs)
    if lr:
        pay["lr"] = lr
    sc = schedule_analysis(recs, lr_fn)
    if sc:
        pay["schedule"] = sc
    pay = clean_json(pay)
    for key, sec in pay.items():  # the figure each drawable analysis gets (ablation_report.write_figures draws it)
        if _drawable(key, sec):
            sec["png"] = FILES[key]
    return Ablations(pay, recs, boots, positions, _arch_envelopes(pay.get("arch"), recs))


def _arch_envelopes(sec: Optional[dict], recs: List[Rec]) -> Dict[str, Optional[dict]]:
    """Each arch's L(C) lower envelope (frontier.lower_envelope), for the arch figure."""
    if not sec or not sec.get("png"):
        return {}
    out = {}
    for a in sec["archs"]:
        try:
            out[a] = lower_envelope([r.run for r in recs if r.arch == a])
        except FitError:
            out[a] = None
    return out

