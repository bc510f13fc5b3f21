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
  grouped planning `_plan_groups`, names `n.arch_VALUE`), the gap at a common N, the loss
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

from .estimator import FitError, NonNumericColumn

SHAPE_TOL = 0.10        # runs within 10% of a group's smallest N are "equal N" (Kaplan Fig. 5)
MIN_SHAPES = 3          # shapes an N group needs for a line in the shape figure
MIN_SIZES = 3           # distinct N an arch needs for its L(N) fit (api's auto rule)
MIN_LRS = 3             # learning rates a scan needs to locate its minimum
SHAPE_FIELDS = ("n_layer", "d_model", "n_heads", "d_attn", "d_ff")
# the fields a schedule comparison may vary (equal-area schedules have their own peak lr)
SCHEDULE_FIELDS = ("schedule", "lr", "warmup", "min_lr_frac", "decay_frac")
# train fields that change how a run executes or is logged, not what it learns
HOW_IT_RAN = ("device", "backend", "compile", "loss_impl", "eval_every", "eval_batches", "eval_positions",
              "log_every", "keep_steps", "noise_scale", "grad_accum")
HOW_IT_RAN_PREFIX = ("cuda_", "triton_")
ARCH_ORDER = ("gpt", "lstm", "universal")
ARCH_COLOUR = {"gpt": "C0", "lstm": "C3", "universal": "C2"}
PAPER_ALPHA_N = 0.076   # laws.PAPER["n"]["alpha_N"]: what an N spread inside a shape group is worth
# Kaplan et al. 2020, eq. D.1 (natural log): the learning rate they found good for N parameters
D1 = (0.003239, -0.0001395)
FILES = {"shape": "shape.png", "arch": "arch.png", "positions_by_arch": "positions_by_arch.png",
         "other_data": "other_data.png", "lr": "lr.png", "schedule": "schedule.png"}


def kaplan_lr(N):
    """Kaplan et al.'s eq. D.1, lr(N) = 0.003239 - 0.0001395 ln N (it turns negative near N = 1.2e10)."""
    return D1[0] + D1[1] * np.log(np.asarray(N, float))


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
    from .runs import load_run, run_point

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


def _g(v, nd=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{nd}g}"


def _t975(dof: int) -> float:
    from scipy.stats import t
    return float(t.ppf(0.975, dof))


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
                           "n_spread_effect_pct": float(100.0 * (n_ratio ** PAPER_ALPHA_N - 1.0)),
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


SERIES = {"aspect": "aspect ratio", "ff": "d_ff / d_model", "heads": "heads"}


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
    from .api import _plan_groups, _side_by_side
    from .estimator import fit
    from .laws import LAWS

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
    plan, _, values = _plan_groups(cols, "runs, lowest loss per N", "arch", ["n"], {}, "nonembedding")
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
           "side_by_side": _side_by_side(fits, "arch", [v for v in values if v in boots])}
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

    def __init__(self, payload: dict, recs: List[Rec], arch_boots=None, positions=None, lr_fn=None):
        self.payload, self.recs, self.arch_boots, self.positions, self.lr_fn = payload, recs, arch_boots or {}, \
            positions or [], lr_fn

    def write(self, out_dir: str) -> Dict[str, str]:
        """The PNGs of the analyses that have something to draw; their names go into the payload."""
        files = {}
        for key, draw in (("shape", _plot_shape), ("arch", _plot_arch), ("positions_by_arch", _plot_positions),
                          ("other_data", _plot_other), ("lr", _plot_lr), ("schedule", _plot_schedule)):
            sec = self.payload.get(key)
            if sec and _drawable(key, sec):
                path = os.path.join(out_dir, FILES[key])
                draw(self, sec, path)
                sec["png"] = FILES[key]
                files[key] = path
        return files

    @staticmethod
    def sections(payload: Optional[dict]) -> List[str]:
        return sections(payload or {})


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
    from .report import clean_json

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
    return Ablations(clean_json(pay), recs, boots, positions, lr_fn)


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _plain(axis) -> None:
    """Plain numbers on a log axis (a toy study spans well under a decade of loss)."""
    from matplotlib.ticker import FormatStrFormatter
    axis.set_major_formatter(FormatStrFormatter("%.3g"))
    axis.set_minor_formatter(FormatStrFormatter("%.3g"))


def _ax_style(ax, title, xlabel, ylabel, logx=True, logy=False, plainx=False):
    if logx:
        ax.set_xscale("log", base=2 if plainx else 10)
        lo, hi = ax.get_xlim()
        if plainx or hi < 10 * lo:
            _plain(ax.xaxis)
            ax.tick_params(axis="x", which="minor", labelsize=6)
    if logy:
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        if hi < 10 * lo:
            _plain(ax.yaxis)
            ax.tick_params(axis="y", which="minor", labelsize=6)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, which="both", alpha=0.25)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6.5)


def _plot_shape(ab, sec, path):
    from .report import _save

    plt = _plt()
    fig, axs = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, (panel, key, xl, logx) in zip(axs, (("aspect", "aspect", "aspect ratio d_model / n_layer", True),
                                                ("ff", "ff_ratio", "feedforward ratio d_ff / d_model", True),
                                                ("heads", "n_heads", "attention heads n_heads", True))):
        varied = False
        for i, g in enumerate(sec["groups"]):
            ser = g["series"].get(panel)
            if not ser:
                continue
            rows = sorted((r for r in g["runs"] if r["run"] in ser["runs"]), key=lambda r: r[key])
            varied = True
            c = f"C{i % 10}"
            ax.plot([r[key] for r in rows], [r["increase_pct"] for r in rows], "o-", color=c, ms=4, lw=1.1,
                    label=f"{g['label']}: {len(rows)} shapes, spread {ser['spread_pct']:.2f}%")
            ref = next(r for r in rows if r["series"] == "reference")
            ax.scatter([ref[key]], [ref["increase_pct"]], s=50, facecolors="none", edgecolors=c, zorder=4)
        if not varied:
            ax.text(0.5, 0.5, "no group varies this alone", ha="center", va="center", transform=ax.transAxes,
                    fontsize=8, color="0.4")
        _ax_style(ax, f"{SERIES[panel]} at fixed N (ring: the series' reference shape)", xl,
                  "loss increase over the group's best shape (%)", logx=logx, plainx=logx)
        ax.axhline(0, color="0.5", lw=0.6)
    fig.suptitle(f"Kaplan et al. Fig. 5 for these runs: N within {100 * sec['tolerance']:.0f}% per group", fontsize=10)
    _save(fig, path)


def _plot_arch(ab, sec, path):
    from .frontier import lower_envelope
    from .laws import LAWS
    from .panels import _band_power
    from .report import _save

    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for a in sec["archs"]:
        c = ARCH_COLOUR.get(a, "C4")
        rs = [r for r in ab.recs if r.arch == a]
        a1.scatter([r.N for r in rs], [r.loss for r in rs], s=16, color=c, alpha=0.8, zorder=3, label=f"{a} runs")
        if a in ab.arch_boots:
            f, boot = ab.arch_boots[a]
            lo, hi = f["ranges"]["N"]
            grid = np.logspace(np.log10(lo), np.log10(hi * 10), 80)
            ci = f["ci95"].get("alpha_N")
            a1.plot(grid, LAWS["n"].predict(f["params"], N=grid), color=c, ls="--",
                    label=f"{a}: alpha_N {f['params']['alpha_N']:.3f}"
                          + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else ""))
            band = _band_power(LAWS["n"].params, boot, LAWS["n"], grid, "N")
            if band is not None:
                a1.fill_between(grid, band[0], band[1], color=c, alpha=0.12, lw=0)
        for r in rs:
            if len(r.curve[0]):
                a2.plot(r.curve[0], r.curve[1], color=c, lw=0.6, alpha=0.45)
        try:
            env = lower_envelope([r.run for r in rs])
            a2.plot(env["C"], env["loss"], color=c, lw=2, label=f"{a}: best loss with compute <= C")
        except FitError:
            pass
    g = sec.get("gap")
    if g:
        a1.axvline(g["N"], color="0.5", ls=":", lw=0.8, label=f"common N {g['N']:.3g} (gap in report.md)")
    L = [r.loss for r in ab.recs]
    a1.set_ylim(min(L) / 1.15, max(L) * 1.15)   # a loose fit's band would flatten the data
    _ax_style(a1, "Figs. 7, 17: L(N) per architecture (non-embedding N)", "N (non-embedding parameters)",
              "loss (nats/token)", logy=True)
    _ax_style(a2, "L(C) per architecture: curves and their lower envelope", "C (non-embedding FLOPs)",
              "loss (nats/token)", logy=True)
    _save(fig, path)


def _plot_positions(ab, sec, path):
    from .positions import position_law
    from .report import _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    chosen = {v["path"] for v in sec["per_arch"].values()}
    for f in ab.positions:
        if not f.get("N") or f["run"] in chosen:
            continue
        y = np.asarray(f["losses"], float)
        ax.plot(np.arange(1, y.size + 1), y, color=ARCH_COLOUR.get(f["arch"], "C4"), lw=0.5, alpha=0.25)
    for a, v in sec["per_arch"].items():
        f = next(f for f in ab.positions if f["run"] == v["path"])
        y = np.asarray(f["losses"], float)
        t = np.arange(1, y.size + 1)
        c = ARCH_COLOUR.get(a, "C4")
        ax.plot(t, y, color=c, lw=1.4, label=f"{a} N={v['N']:.3g}"
                + (f", alpha_t {v['alpha_t']:.3f}" if v.get("alpha_t") is not None else ""))
        if "params" in f:
            ax.plot(t, position_law(t.astype(float), **f["params"]), color=c, ls="--", lw=0.8)
    _ax_style(ax, "Figs. 7 right, 20: loss per position, archs at similar N (faint: other runs)",
              "token position t in the context", "validation loss (nats/token)")
    _save(fig, path)


def _plot_other(ab, sec, path):
    from .report import _save

    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    xs = []
    for i, nm in enumerate(sec["names"]):
        e = sec["per_name"][nm]
        c = f"C{(i + 1) % 10}"
        x = np.array([p["loss"] for p in e["points"]])
        y = np.array([p["loss_other"] for p in e["points"]])
        xs += list(x)
        a1.scatter(x, y, s=16, color=c, zorder=3, label=f"{nm}: {len(x)} runs")
        if "fit" in e:
            f = e["fit"]
            g = np.linspace(x.min(), x.max(), 20)
            a1.plot(g, f["slope"] * g + f["offset"], color=c, lw=1.2,
                    label=f"{nm}: slope {f['slope']:.3f}, offset {f['offset']:+.3f}")
        N = np.array([p["N"] for p in e["points"]])
        a2.scatter(N, y, s=16, color=c, label=f"val_loss_{nm}")
    if xs:
        lim = np.array([min(xs), max(xs)])
        a1.plot(lim, lim, color="0.5", ls=":", lw=0.8, label="slope 1 through 0 (y = x)")
    N0 = np.array([r.N for r in ab.recs])
    a2.scatter(N0, [r.loss for r in ab.recs], s=16, color="C0", label="val_loss (training distribution)")
    _ax_style(a1, "Fig. 8 right: other distributions against the training one", "val_loss, training distribution",
              "val_loss on the other distribution", logx=False)
    _ax_style(a2, "Fig. 8 left: both against N", "N (non-embedding parameters)", "loss (nats/token)")
    _save(fig, path)


def _plot_lr(ab, sec, path):
    from .report import _save

    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for i, s in enumerate(sec["scans"]):
        c = f"C{i % 10}"
        a1.plot(s["lrs"], s["losses"], "o-", color=c, ms=4, lw=1.1, label=s["label"])
        if "lr_best" in s:
            a1.scatter([s["lr_best"]], [s["loss_best"]], marker="*", s=90, color=c, edgecolors="k", zorder=4)
    good = [s for s in sec["scans"] if "lr_best" in s]
    for s in good:
        a2.scatter([s["N"]], [s["lr_best"]], s=40 if not s.get("edge") else 30, marker="*" if not s.get("edge") else "^",
                   color="C0", edgecolors="k", zorder=3)
    a2.scatter([], [], marker="*", s=40, color="C0", edgecolors="k", label="best lr per N (parabola in ln lr)")
    if any(s.get("edge") for s in good):
        a2.scatter([], [], marker="^", s=30, color="C0", edgecolors="k", label="at the scan's edge (a bound)")
    Ns = np.array([s["N"] for s in sec["scans"]])
    g = np.logspace(np.log10(Ns.min() / 2), np.log10(Ns.max() * 2), 50)
    a2.plot(g, kaplan_lr(g), color="0.4", ls=":", label="Kaplan eq. D.1 (another setup: compare the trend)")
    _ax_style(a1, "Fig. 21: loss against learning rate per model size (star: best)", "learning rate (peak)",
              "loss (nats/token)")
    _ax_style(a2, "best learning rate against N", "N (non-embedding parameters)", "learning rate", logy=True)
    _save(fig, path)


def _plot_schedule(ab, sec, path):
    from .report import _save

    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.4))
    by = {r.path: r for r in ab.recs}
    k = 0
    for gi, g in enumerate(sec["groups"]):
        for x in g["runs"]:
            st, lr = _lr_of(by[x["path"]], ab.lr_fn)
            a1.plot(st, lr, color=f"C{k % 10}", lw=1.1, ls=["-", "--", ":", "-."][gi % 4],
                    label=f"{x['label']} ({g['label']}): area {x['lr_area']:.3g}")
            k += 1
        labels = [x["label"] for x in g["runs"]]
        a2.bar([f"{lab}\n{g['label']}" if len(sec["groups"]) > 1 else lab for lab in labels],
               [x["final_loss"] for x in g["runs"]], color=[f"C{(k - len(labels) + j) % 10}" for j in range(len(labels))])
    fl = [x["final_loss"] for g in sec["groups"] for x in g["runs"]]
    a2.set_ylim(min(fl) - 0.05 * (max(fl) - min(fl) + 1e-3) - 0.02, max(fl) + 0.02)
    _ax_style(a1, "Fig. 22: learning-rate schedules (area = sum of lr over steps)", "step", "learning rate",
              logx=False)
    _ax_style(a2, "final loss per schedule", "schedule", "final val_loss (nats/token)", logx=False)
    a2.tick_params(axis="x", labelsize=6)
    _save(fig, path)


# ------------------------------------------------------------------------------------------------
# report.md
# ------------------------------------------------------------------------------------------------

def _ci(ci, nd=3) -> str:
    return "" if not ci or None in ci else f" [{_g(ci[0], nd)}, {_g(ci[1], nd)}]"


def _img(sec, key) -> List[str]:
    return [f"![{key}]({sec['png']})", ""] if sec.get("png") else []


def _notes(sec) -> List[str]:
    return [f"- {n}." for n in sec.get("notes") or []] + ([""] if sec.get("notes") else [])


def sections(ab: dict) -> List[str]:
    md: List[str] = []
    sh = ab.get("shape")
    if sh:
        md += ["## Model shape at fixed N (Kaplan et al. Fig. 5)", "",
               f"Groups: {sh['rule']}. Loss increase = loss / (the group's best loss) - 1. Kaplan et al. find the loss "
               "varies only a few percent over a wide range of shapes at fixed N (aspect ratio 20-200 within about "
               "3%).", ""]
        if sh["groups"]:
            md += ["| group | shapes | N range | best shape (n_layer, d_model, n_heads, d_ff) | best loss | spread "
                   "(max - min increase) | spread by aspect / d_ff ratio / heads | N spread alone at alpha_N 0.076 |",
                   "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            for g in sh["groups"]:
                b = g["best"]
                by = " / ".join(f"{g['series'][k]['spread_pct']:.2f}%" if k in g["series"] else "—" for k in SERIES)
                md.append(f"| {g['label']} | {g['n_shapes']} | {_g(g['N_range'][0])}-{_g(g['N_range'][1])} | "
                          f"{b['n_layer']}, {b['d_model']}, {b['n_heads']}, {b['d_ff']} (aspect {_g(b['aspect'])}) | "
                          f"{b['loss']:.4f} | {g['spread_pct']:.2f}% | {by} | {g['n_spread_effect_pct']:.2f}% |")
            md += ["", "Each group's shapes are split into series that vary one thing from a reference shape (the "
                       "figure's three panels; the reference sits in all three).", "",
                   "| group | run | series | n_layer | d_model | n_heads | head dim | d_ff | aspect | d_ff/d_model | N | "
                   "loss | increase |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            for g in sh["groups"]:
                for r in g["runs"]:
                    md.append(f"| {g['label']} | `{r['run']}` | {r['series']} | {r['n_layer']} | {r['d_model']} | "
                              f"{r['n_heads']} | {_g(r['d_head'])} | {r['d_ff']} | {_g(r['aspect'])} | "
                              f"{_g(r['ff_ratio'])} | {_g(r['N'])} | {r['loss']:.4f} | {r['increase_pct']:.2f}% |")
            md.append("")
            worst = max(sh["groups"], key=lambda g: g["spread_pct"])
            md += [f"Here the loss spreads by {worst['spread_pct']:.2f}% at most across shapes of one N "
                   f"({worst['label']}); the groups' own N spread accounts for up to "
                   f"{max(g['n_spread_effect_pct'] for g in sh['groups']):.2f}% of loss at the paper's alpha_N.", ""]
            for g in sh["groups"]:
                tried = sorted({r["n_runs"] for r in g["runs"]})
                if len(tried) > 1:
                    md += [f"- {g['label']}: its shapes were run {tried[0]} to {tried[-1]} times (learning rates "
                           f"{', '.join(_g(v) for v in g['lrs'])}): the shapes tried more often are favoured.", ""]
        md += _notes(sh) + _img(sh, "shape")
    ar = ab.get("arch")
    if ar:
        md += ["## Architectures: Transformer, LSTM, universal Transformer (Kaplan et al. Figs. 7, 17)", "",
               "One L(N) fit per arch (law `n`, the lowest loss per N; 95% bootstrap intervals). Kaplan et al.: "
               "LSTMs match Transformers at small N but fall behind as N grows; a universal Transformer, reusing "
               "its weights, does slightly better per parameter and worse per FLOP. The fits above this section "
               "pool every arch.", "",
               "| arch | sizes | N range | alpha_N | 95% interval | rmse_log | C / 6ND (median) | note |",
               "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for a in ar["archs"]:
            e = ar["per_arch"][a]
            md.append(f"| {a} | {e['n_sizes']} | {_g(e['N_range'][0])}-{_g(e['N_range'][1])} | "
                      f"{_g(e.get('alpha_N'), 4)} | {_ci(e.get('ci95'), 4).strip() or '—'} | {_g(e.get('rmse_log'))} | "
                      f"{_g(e.get('C_per_6ND'))} | {e.get('note') or '; '.join(e.get('warnings') or [])} |")
        md.append("")
        g = ar.get("gap")
        if g:
            ref = g["reference"]
            where = "inside every fitted range" if g["inside_all_ranges"] else "outside some fitted range: an extrapolation"
            md += [f"At N = {_g(g['N'])} ({where}), against {ref}: "
                   + "; ".join(f"{a} {g['loss'][a]:.4f} nats ({g['gap'][a]:+.4f}, {g['gap_pct'][a]:+.2f}%)"
                               for a in g["loss"]) + ".", ""]
        cr = {a: e["C_per_6ND"] for a, e in ar["per_arch"].items() if e.get("C_per_6ND")}
        if "universal" in cr:
            md += [f"Compute and parameters part ways for the universal Transformer: its N counts the shared block "
                   f"once, its C every application, so C / 6ND is {_g(cr['universal'])} (layers "
                   f"{', '.join(map(str, ar['per_arch']['universal']['n_layer']))}) against "
                   + ", ".join(f"{a} {_g(v)}" for a, v in cr.items() if a != "universal") + ".", ""]
        md += _notes(ar) + _img(ar, "arch")
    pa = ab.get("positions_by_arch")
    if pa:
        nctx = max(pa["n_ctx"])
        md += ["## Loss per position by architecture (Kaplan et al. Figs. 7 right, 20)", "",
               f"One run per arch at the nearest N to one another (N within a factor {pa['N_ratio']:.2f}); late drop = "
               f"mean loss over positions ({nctx // 4}, {nctx // 2}] minus the mean over ({nctx // 2}, {nctx}] (about "
               "0 for a plateau), with a rough standard error from neighbouring positions.", "",
               "| arch | run | N | alpha_t | alpha_t over all its runs (median, range) | late drop (nats) |",
               "| --- | --- | --- | --- | --- | --- |"]
        for a, v in pa["per_arch"].items():
            al = v.get("alpha_t_all")
            md.append(f"| {a} | `{v['run']}` | {_g(v['N'])} | {_g(v.get('alpha_t'))} | "
                      + (f"{_g(al['median'])} ({_g(al['min'])}-{_g(al['max'])}, {al['n_runs']} "
                         f"run{'s' if al['n_runs'] != 1 else ''})" if al else "—")
                      + f" | {v['late_drop']:+.4f} ± {_g(v['late_drop_se'], 2)} |")
        md.append("")
        md += ["Kaplan et al.: Transformers keep improving with position, the LSTM's per-token loss plateaus after "
               "about 100 tokens. "
               + (f"These contexts are {nctx} tokens, shorter than that, so the plateau itself cannot show; what "
                  "can is whether the LSTM gains less from the later positions: " if nctx < 100 else "Here: ")
               + _position_verdict(pa) + ".", ""]
        md += _img(pa, "positions_by_arch")
    od = ab.get("other_data")
    if od:
        md += ["## Other data distributions (Kaplan et al. Fig. 8)", "",
               "Each run's loss on another corpus (metrics.jsonl `val_loss_NAME`, at the evaluation its val_loss point "
               "comes from) against its loss on the training distribution: a least-squares line y = slope x + offset "
               "(t intervals, 95%) and the mean gap y - x (slope held at 1). Kaplan et al. find the transfer a roughly "
               "constant offset: slope about 1.", "",
               "| distribution | runs | slope | 95% interval | offset (nats) | 95% interval | mean gap y - x | 95% "
               "interval | rmse |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        notes = []
        for nm in od["names"]:
            e = od["per_name"][nm]
            f = e.get("fit")
            if f:
                md.append(f"| {nm} | {e['n_runs']} | {f['slope']:.3f} | {_ci(f['ci95']['slope']).strip()} | "
                          f"{f['offset']:+.3f} | {_ci(f['ci95']['offset']).strip()} | {f['gap_mean']:+.4f} | "
                          f"{_ci(f['gap_ci95'], 4).strip()} | {f['rmse']:.3g} |")
            else:
                notes.append(f"- {nm}: {e['note']}; no fit.")
        md += [""] + (notes + [""] if notes else []) + _img(od, "other_data")
    lr = ab.get("lr")
    if lr:
        md += ["## Learning rate (Kaplan et al. Figs. 21-22, eq. D.1)", "",
               "Runs identical but for the peak lr, one scan per model. Best lr: the vertex of a parabola in ln lr "
               "through the lowest loss and its two neighbours (the minimum itself when it sits at the scan's edge, "
               "then only a bound). Eq. D.1, lr(N) = 0.003239 - 0.0001395 ln N, is Kaplan et al.'s fit for their "
               "setup (batch, schedule, data): compare the trend with N, not the level.", "",
               "| scan | learning rates | lowest loss at | best lr | how | eq. D.1 at this N | best / D.1 |",
               "| --- | --- | --- | --- | --- | --- | --- |"]
        for s in lr["scans"]:
            if "lr_best" in s:
                how = s["method"] + (f": the {s['edge']} lr tried, a bound" if s.get("edge") else "")
                md.append(f"| {s['label']} | {', '.join(_g(v) for v in s['lrs'])} | {_g(s['lr_min'])} | "
                          f"{_g(s['lr_best'])} | {how} | {_g(s['kaplan_D1'])} | "
                          f"{_g(s['lr_best'] / s['kaplan_D1']) if s['kaplan_D1'] > 0 else '—'} |")
            else:
                md.append(f"| {s['label']} | {', '.join(_g(v) for v in s['lrs'])} | — | — | {s['note']} | — | — |")
        md.append("")
        t = lr.get("trend")
        if t:
            md += [f"Trend over {t['n_sizes']} sizes (N {_g(t['N_range'][0])}-{_g(t['N_range'][1])}): best lr ~ "
                   f"N^{t['exponent']:.3f}, a factor {t['per_decade']:.3g} per decade of N; eq. D.1 over the same N: "
                   + (f"a factor {t['kaplan_per_decade']:.3g} per decade." if t.get("kaplan_per_decade") else
                      "not positive there."), ""]
        md += _notes(lr) + _img(lr, "lr")
    sc = ab.get("schedule")
    if sc:
        md += ["## Learning-rate schedules (Kaplan et al. Fig. 22)", "",
               "Runs identical but for the schedule fields (" + ", ".join(SCHEDULE_FIELDS) + "). Area = the sum of the "
               "learning rate over the steps. Kaplan et al. find that schedules of equal area end within a small range "
               "of loss, whatever their shape.", "",
               "| group | schedule | run | peak lr | lr area | final loss | best loss | lr curve from |",
               "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for g in sc["groups"]:
            for x in g["runs"]:
                tried = f" ({x['picked']}, of {x['n_runs']} tried)" if x["n_runs"] > 1 else ""
                md.append(f"| {g['label']} | {x['label']} | `{x['run']}` | {_g(x['lr_peak'])}{tried} | "
                          f"{_g(x['lr_area'])} | {x['final_loss']:.4f} | {x['loss']:.4f} | {x['lr_source']} |")
        md.append("")
        for g in sc["groups"]:
            md.append(f"- {g['label']}: final losses spread by {g['spread']:.4f} nats ({g['spread_pct']:.2f}%) across "
                      f"{len(g['runs'])} schedules, best {g['best']}; lr areas "
                      + (f"within a factor {g['area_ratio']:.3f} of one another." if g.get("area_ratio") else "unknown."))
        md += [""] + _img(sc, "schedule")
    return md


def _position_verdict(pa: dict) -> str:
    per = pa["per_arch"]
    bits = [f"{a} {v['late_drop']:+.3f} ± {_g(v['late_drop_se'], 2)} nats" for a, v in per.items()]
    if "lstm" in per and any(a != "lstm" for a in per):
        l = per["lstm"]
        others = [v for a, v in per.items() if a != "lstm"]
        se = max([l["late_drop_se"]] + [v["late_drop_se"] for v in others])
        gap = min(v["late_drop"] for v in others) - l["late_drop"]
        if math.isfinite(se) and gap > 2 * se:
            verdict = "the LSTM gains less from late positions than the Transformers, as the paper's plateau implies"
        elif math.isfinite(se) and gap < -2 * se:
            verdict = "the LSTM gains more from late positions here, unlike the paper"
        else:
            verdict = "the difference is within the noise of these per-position losses"
        return "late drops " + ", ".join(bits) + f": {verdict}"
    return "late drops " + ", ".join(bits)
