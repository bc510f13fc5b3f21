"""From fitted laws to a training plan: N_opt, D_opt, shape, batch, lr, steps, loss with its interval, guards.

    from flopscale.fitting.plan import plan_from_prior, plan_from_fits
    p = plan_from_prior("chinchilla", 1e21)                 # p["N_opt"], p["D_opt"], p["loss"], p["guards"]
    p = plan_from_fits(json.load(open("report/fits.json")), 10 * C_max, boot={"chinchilla": draws})
    print(outlook_report.plan_markdown(p))

This module is compute only (it returns plain dicts; fitting/outlook_report.py writes them as markdown).  It imports
nothing of the project above fitting/: the model shape's exact N and FLOPs per token come in as
callables (``shape_fns``: flopscale/planning.py builds them from engine/flops.py), and so does the
measured throughput.  Without them the plan has no model shape and no wall time (null).

Where each number comes from (the plan's "sources" says it again for each one):
- N_opt, D_opt: the law's own optimum at C = 6 N D (N counted as the law counts it).  Chinchilla
  form: Hoffmann et al.'s closed form N_opt = G (C/6)^a, D_opt = (C/6)^b / G (laws.chinchilla_allocation).
  Kaplan's L(N, D) (law nd): minimising (N_c/N)^r + 6 D_c N / C, r = alpha_N/alpha_D, gives
  N_opt = (r N_c^r C / (6 D_c))^(1/(1+r)).  Kaplan's prior: laws.allocation (L(N, S_min) with
  B_crit(L)) at C_min = C/2, since training at B = B_crit spends 2 C_min (S = 2 S_min, eq. 5.4).
  DeepSeek: M_opt, D_opt power laws in C (N_opt = M_opt / 6).  --unique-tokens U: the
  data-constrained law (Muennighoff et al. 2023), minimised over N numerically.
- loss: the law at (N_opt, D_opt); its 90% prediction interval combines parameter uncertainty (the
  law evaluated at each bootstrap draw of its parameters) and the fit's residual scatter (a log-normal
  factor exp(s z), s = rmse_log sqrt(n / (n - p)), the unbiased residual scale); 5th and 95th
  percentiles of the product.  `flopscale fit --out` keeps the draws beside fits.json (bootstrap.npz, fitting/api.py write_bootstrap; `flopscale plan --fits` reads it); in Python pass them as ``boot``
  (fit(..., return_boot=True) gives them); without them the interval holds the residual scatter
  only and says so ("pi90_method").
- batch: the fit's B_crit(L) at the predicted loss (law bcrit), Kaplan's B_crit(L) for the kaplan
  prior, otherwise DeepSeek's B_opt(C).  lr: the study's lr scans (a power law of lr_best in N),
  Kaplan's eq. (D.1) for the kaplan prior, otherwise DeepSeek's eta_opt(C).
- guards: budget / largest fitted C, N_opt / largest fitted N, the fitted runs' spread of tokens per
  parameter, the flat range of N within 0.5% of the best predicted loss, and the crossing of
  Kaplan's L(C) and L(D(C)) (section 6.3).  A guard "warns" past 100x or past the crossing.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import numpy as np
from scipy.optimize import brentq, minimize_scalar
from scipy.stats import norm

from .estimator import FitError, fit_power
from .laws import LAWS, PAPER, PF_DAY, PRIORS, allocation, b_crit, chinchilla_allocation, eq_d1_text, predict

FLAT_TOL = 0.005          # the flat range: N where the loss at fixed C is within 0.5% of the best
EXTRAPOLATION_WARN = 100  # a plan this far past the fitted budget (or N) warns
PI_LEVEL = 0.90
PI_PER_DRAW = 50          # residual-scatter samples per parameter draw
WARMUP_FRAC = 0.1         # warmup = 10% of the steps (the engine's default: 20 of 200) ...
WARMUP_MAX = 3000         # ... at most Kaplan et al.'s 3000 steps (section 2.2)
SCHEDULE = "cosine"       # Kaplan et al.'s warmup + cosine decay, the engine's default
LOSS_LAWS = ("chinchilla", "nd", "ns")  # fits.json entries a plan can be made from, in order of preference

ShapeFns = Dict[str, Callable]  # {"n_params": f(shape) -> {"nonembedding", "all"}, "flops_per_token": f(shape, n_ctx) -> {...}}


# ------------------------------------------------------------------------------------------------
# Optimum at a budget
# ------------------------------------------------------------------------------------------------

def nd_optimum(p: Dict[str, float], C: float) -> float:
    """N_opt of Kaplan's L(N, D) at C = 6 N D (closed form; module docstring)."""
    r = p["alpha_N"] / p["alpha_D"]
    return float((r * p["N_c"] ** r * C / (6.0 * p["D_c"])) ** (1.0 / (1.0 + r)))


def loss_at_fixed_C(law: str, params: Dict, C: float, N, unique_tokens: Optional[float] = None):
    """The law's loss for models of N parameters trained on D = C / (6 N) tokens (the kaplan prior:
    at C_min = C/2, steps from C_min = 6 N B_crit(L) S_min).  None for laws without a loss."""
    N = np.atleast_1d(np.asarray(N, float))
    if law in ("chinchilla", "nd"):
        return predict(law, params, N=N, D=C / (6.0 * N))
    if law == "data-constrained":
        return predict(law, params, N=N, D=C / (6.0 * N), U=np.full_like(N, float(unique_tokens)))
    if law == "kaplan":
        return np.array([_kaplan_loss(params, float(n), C / 2.0) for n in N])
    return None


def _kaplan_loss(params: Dict, N: float, C_min: float) -> float:
    """L(N, S_min) where C_min = 6 N B_crit(L) S_min (laws.allocation solves the same equation
    inside its optimiser; tests/test_plan.py checks the two agree at the optimum)."""

    ns, bc = params["ns"], params["bcrit"]
    L = lambda S: (ns["N_c"] / N) ** ns["alpha_N"] + (ns["S_c"] / S) ** ns["alpha_S"]
    g = lambda lS: math.log(6 * N * b_crit(L(math.exp(lS)), **bc) * math.exp(lS)) - math.log(C_min)
    try:
        return float(L(math.exp(brentq(g, -20.0, 80.0, xtol=1e-12))))
    except ValueError:
        return float("nan")


def optimum(law: str, params: Dict, C: float, unique_tokens: Optional[float] = None) -> Dict[str, float]:
    """{"N", "D", "loss", ...} at budget C in the law's convention (module docstring)."""
    if law == "chinchilla":
        al = chinchilla_allocation(params)
        N = al["G"] * (C / 6.0) ** al["a"]
        D = (C / 6.0) ** al["b"] / al["G"]
        return {"N": N, "D": D, "loss": float(predict(law, params, N=N, D=D)[0]), "a": al["a"], "b": al["b"]}
    if law == "nd":
        N = nd_optimum(params, C)
        D = C / (6.0 * N)
        r = params["alpha_N"] / params["alpha_D"]
        return {"N": N, "D": D, "loss": float(predict(law, params, N=N, D=D)[0]), "a": 1 / (1 + r), "b": r / (1 + r)}
    if law == "data-constrained":

        # a grid first: the law has a kink where N passes N_opt(U) and can hold two local minima
        top = math.log(C / 6.0)
        grid = np.linspace(0.0, top, 801)
        vals = np.log(loss_at_fixed_C(law, params, C, np.exp(grid), unique_tokens))
        i = int(np.nanargmin(vals))
        f = lambda lN: math.log(loss_at_fixed_C(law, params, C, math.exp(lN), unique_tokens)[0])
        res = minimize_scalar(f, bounds=(grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]), method="bounded",
                              options={"xatol": 1e-10})
        N = float(math.exp(res.x))
        return {"N": N, "D": C / (6.0 * N), "loss": float(math.exp(res.fun))}
    if law == "kaplan":
        try:
            with np.errstate(all="ignore"):
                al = allocation(C / 2.0, params["ns"], params["bcrit"])
        except (ValueError, ZeroDivisionError, OverflowError) as e:  # scipy's brentq finds no root
            raise FitError(f"plan: L(N, S_min) with B_crit(L) has no compute-efficient allocation at C = {C:.3g} "
                           f"(ns {params['ns']}, bcrit {params['bcrit']}: {e})") from None
        N, S_min, B, L = (float(al[k][0]) for k in ("N", "S", "B", "loss"))
        return {"N": N, "D": C / (6.0 * N), "loss": L, "S_min": S_min, "B_crit": B}
    if law == "deepseek":
        p = params
        M = p["M_coef"] * C ** p["M_exp"]
        return {"N": M / 6.0, "D": p["D_coef"] * C ** p["D_exp"], "loss": None, "M": M, "a": p["M_exp"], "b": p["D_exp"]}
    raise FitError(f"plan: no optimum for law {law!r}")


def flat_range(law: str, params: Dict, C: float, N_opt: float, loss_opt: Optional[float],
               unique_tokens: Optional[float] = None, tol: float = FLAT_TOL) -> Optional[List[float]]:
    """[N_lo, N_hi]: the models whose loss at budget C stays within (1 + tol) of the best."""
    if loss_opt is None or loss_at_fixed_C(law, params, C, N_opt, unique_tokens) is None:
        return None

    target = math.log(loss_opt * (1.0 + tol))
    h = lambda lN: math.log(loss_at_fixed_C(law, params, C, math.exp(lN), unique_tokens)[0]) - target
    x0, top = math.log(N_opt), math.log(C / 6.0)
    edges = []
    for direction in (-1.0, 1.0):
        step, x = 0.05, x0
        while True:
            nxt = x + direction * step
            if nxt <= 0.0 or nxt >= top:       # N < 1 or fewer than one token per parameter
                edges.append(math.exp(min(max(nxt, 0.0), top)))
                break
            if h(nxt) > 0:
                edges.append(math.exp(brentq(h, min(x, nxt), max(x, nxt), xtol=1e-10)))
                break
            x, step = nxt, step * 1.5
    return [float(edges[0]), float(edges[1])]


# ------------------------------------------------------------------------------------------------
# Prediction interval
# ------------------------------------------------------------------------------------------------

def residual_scale(rmse_log: Optional[float], n_points: Optional[int], n_free: int) -> Optional[float]:
    """The unbiased residual scale in log space: rmse_log sqrt(n / (n - p))."""
    if rmse_log is None or not n_points:
        return None
    if n_points <= n_free:
        return float(rmse_log)
    return float(rmse_log) * math.sqrt(n_points / (n_points - n_free))


def prediction_interval(center: float, draws: Optional[np.ndarray], sigma_log: Optional[float],
                        level: float = PI_LEVEL, seed: int = 0) -> Optional[List[float]]:
    """[lo, hi] of (a bootstrap draw's prediction) x exp(sigma_log z), z ~ N(0, 1).  draws: the
    predicted values at each bootstrap draw of the parameters (None: residual scatter only)."""
    q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    d = None if draws is None else np.asarray(draws, float)
    d = None if d is None else d[np.isfinite(d) & (d > 0)]
    s = float(sigma_log or 0.0)
    if d is None or d.size == 0:
        if not s:
            return None

        k = float(norm.ppf((1 + level) / 2))
        return [center * math.exp(-k * s), center * math.exp(k * s)]
    z = np.random.default_rng(seed).standard_normal((d.size, PI_PER_DRAW))
    samples = d[:, None] * np.exp(s * z)
    lo, hi = np.percentile(samples, q)
    return [float(lo), float(hi)]


def draw_predictions(law: str, boot, names, **cols) -> Optional[np.ndarray]:
    """The law's prediction at cols (arrays) for every bootstrap draw: (n_draws, n_points)."""
    if boot is None:
        return None
    boot = np.asarray(boot, float)
    if boot.ndim != 2 or boot.shape[0] == 0:
        return None
    out = np.full((boot.shape[0], np.atleast_1d(next(iter(cols.values()))).size), np.nan)
    with np.errstate(all="ignore"):
        for i, row in enumerate(boot):
            if np.all(np.isfinite(row)):
                out[i] = predict(law, dict(zip(names, row)), **cols)
    return out


# ------------------------------------------------------------------------------------------------
# Batch, learning rate, shape, throughput
# ------------------------------------------------------------------------------------------------

def deepseek_batch(C: float, p: Dict = PRIORS["deepseek"]["params"]) -> float:
    return float(p["B_coef"] * C ** p["B_exp"])


def deepseek_lr(C: float, p: Dict = PRIORS["deepseek"]["params"]) -> float:
    return float(p["lr_coef"] * C ** p["lr_exp"])


def kaplan_lr(N: float, p: Dict = PRIORS["kaplan"]["lr"]) -> float:
    return float(p["c0"] + p["c1"] * math.log(N))


def lr_from_scans(scans: List[Dict], N: float):
    """(lr, how) from the study's lr scans (fits.json ablations.lr.scans): a power law of lr_best
    in N through 3 or more sizes, else the largest scanned size's lr_best."""
    pts = [(float(s["N"]), float(s["lr_best"])) for s in scans
           if s.get("lr_best") and s.get("N") and not s.get("edge")]
    if not pts:
        return None, None
    Ns = np.array([p[0] for p in pts])
    lrs = np.array([p[1] for p in pts])
    if np.unique(Ns).size >= 3:

        pw = fit_power(Ns, lrs, n_boot=0)
        return (float(pw["coef"] * N ** pw["exponent"]),
                f"the study's lr scans: lr_best = {pw['coef']:.3g} N^{pw['exponent']:.3f} over {np.unique(Ns).size} "
                f"sizes ({Ns.min():.3g}-{Ns.max():.3g}), at N_opt")
    i = int(np.argmax(Ns))
    return float(lrs[i]), f"the study's lr scan at the largest scanned N ({Ns[i]:.3g}); fewer than 3 sizes for a trend"


def _heads(d_model: int, head_dim: int) -> int:
    for hd in (head_dim, 128, 64, 32, 16, 8):
        if hd <= d_model and d_model % hd == 0:
            return d_model // hd
    return 1


def search_shape(N_target: float, aspect: float, n_params: Callable, count: str = "nonembedding",
                 head_dim: int = 64, tol: float = 0.05) -> Optional[Dict]:
    """(n_layer, d_model, n_heads, d_ff = 4 d_model) whose exact N (``n_params(shape)[count]``) is
    within ``tol`` of N_target, closest in aspect ratio d_model / n_layer to ``aspect`` (ties: the
    closer N).  For each n_layer, d_model solves N(shape) = N_target (N grows with d_model), then is
    rounded to a multiple of the head dim where the model is wide enough (else of 8, else of 1)."""
    def shape(L, d):
        return {"n_layer": L, "d_model": d, "n_heads": _heads(d, head_dim), "d_ff": 4 * d}

    def N_of(L, d):
        return n_params(shape(L, d))[count]

    L0 = max(1.0, (N_target / (12.0 * aspect ** 2)) ** (1.0 / 3.0))  # N ~ 12 n_layer d_model^2
    best = None
    for L in range(1, int(L0 * 4) + 2):
        lo, hi = 1, 2
        while N_of(L, hi) < N_target:
            lo, hi = hi, hi * 2
        if N_of(L, lo) > N_target * (1 + tol):
            break  # even d_model 1 is too big: deeper is worse
        while hi - lo > 1:  # N_of(L, lo) < N_target <= N_of(L, hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if N_of(L, mid) < N_target else (lo, mid)
        cands = set()
        for q in (head_dim, 8, 1):
            if q > 1 and hi < 4 * q:
                continue
            cands |= {max(q, lo // q * q), -(-hi // q) * q}
        for d in sorted(cands):
            N = N_of(L, d)
            err = abs(N / N_target - 1.0)
            if err > tol:
                continue
            # prefer the aspect, then a head-dim multiple, then the closer N
            key = (round(abs(math.log((d / L) / aspect)), 1), 0 if d % head_dim == 0 else 1 if d % 8 == 0 else 2, err)
            if best is None or key < best[0]:
                best = (key, dict(shape(L, d), N=int(N), aspect=d / L, N_rel_err=err))
    return None if best is None else best[1]


# ------------------------------------------------------------------------------------------------
# Guards
# ------------------------------------------------------------------------------------------------

def kaplan_crossover(c: Dict = PAPER["c"], d: Dict = PAPER["d"], rate: Optional[Dict] = None) -> Optional[Dict]:
    """Where L(C) = (C_c/C)^alpha_C meets L(D(C)) = (D_c/D(C))^alpha_D, D(C) = coef C^exponent the
    data a compute-efficient run processes (Kaplan et al. section 6.3).  rate None: the paper's
    eq. (6.7), D = 4e10 (C/PF-day)^0.26.  None where L(D(C)) falls at least as fast as L(C) (no
    contradiction ahead)."""
    if rate is None:
        r = PRIORS["kaplan"]["data_rate"]
        rate = {"coef": r["coef"] * PF_DAY ** -r["exponent"], "exponent": r["exponent"]}  # C in FLOPs
    aC, aD, e = c["alpha_C"], d["alpha_D"], rate["exponent"]
    den = aD * e - aC
    if den >= 0:
        return None
    x = (aD * (math.log(d["D_c"]) - math.log(rate["coef"])) - aC * math.log(c["C_c"])) / den
    C = math.exp(x)
    return {"C": C, "C_pf_days": C / PF_DAY, "D": rate["coef"] * C ** e, "loss": (c["C_c"] / C) ** aC}


def _guard(name, value, warn, message, **extra):
    return dict({"name": name, "value": value, "warn": bool(warn), "message": message}, **extra)


def make_guards(C: float, N_opt: float, D_opt: float, fitted: Dict, flat: Optional[List[float]],
                crossover: Optional[Dict], crossover_source: str, compute_name: str) -> List[Dict]:
    g = []
    cmax = fitted.get("C_max")
    if cmax:
        r = C / cmax
        g.append(_guard("budget_over_fitted_C", r, r > EXTRAPOLATION_WARN,
                        f"budget {C:.3g} is {r:.3g}x the largest fitted C ({cmax:.3g}, {fitted.get('C_source', '')})"
                        + (f"; more than {EXTRAPOLATION_WARN}x past the fitted range" if r > EXTRAPOLATION_WARN else "")))
    else:
        g.append(_guard("budget_over_fitted_C", None, False, "the fitted range of C is not known"))
    nmax = fitted.get("N_max")
    if nmax:
        r = N_opt / nmax
        g.append(_guard("N_over_fitted_N", r, r > EXTRAPOLATION_WARN,
                        f"N_opt {N_opt:.3g} is {r:.3g}x the largest fitted N ({nmax:.3g})"
                        + (f"; more than {EXTRAPOLATION_WARN}x past the fitted range" if r > EXTRAPOLATION_WARN else "")))
    tpp = fitted.get("tokens_per_param")
    plan_tpp = D_opt / N_opt
    if tpp:
        out = not (tpp[0] <= plan_tpp <= tpp[1])
        g.append(_guard("tokens_per_param_spread", list(map(float, tpp)), out,
                        f"fitted runs span {tpp[0]:.3g}-{tpp[1]:.3g} tokens per parameter; the plan has {plan_tpp:.3g}"
                        + ("; outside the fitted spread" if out else ""), plan=plan_tpp))
    else:
        g.append(_guard("tokens_per_param_spread", None, False,
                        f"the fitted runs' tokens per parameter are not known; the plan has {plan_tpp:.3g}", plan=plan_tpp))
    if flat:
        g.append(_guard("flat_N_range", flat, False,
                        f"N from {flat[0]:.3g} to {flat[1]:.3g} ({flat[1] / flat[0]:.3g}x) keeps the predicted loss "
                        f"within {100 * FLAT_TOL:g}% of the best at this budget", ratio=flat[1] / flat[0]))
    else:
        g.append(_guard("flat_N_range", None, False, "no loss law to measure the flat range with"))
    if crossover:
        past = C >= crossover["C"]
        g.append(_guard("kaplan_crossover", crossover["C"], past,
                        f"{crossover_source}: L(C) and L(D(C)) cross at C* = {crossover['C']:.3g} FLOPs "
                        f"({crossover['C_pf_days']:.3g} PF-days, D* {crossover['D']:.3g} tokens, L* {crossover['loss']:.3g}); "
                        f"the budget is {C / crossover['C']:.3g}x C*" + ("; past the point where the laws contradict "
                                                                         "each other" if past else "")
                        + ("; C* lies inside the fitted range: these L(C) and L(D) fits already disagree there"
                           if fitted.get("C_max") and crossover["C"] < fitted["C_max"] else ""),
                        crossover=crossover, compute=compute_name))
    else:
        g.append(_guard("kaplan_crossover", None, False, f"{crossover_source}: no crossing of L(C) and L(D(C))"))
    return g


# ------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------

def _dc_params(base: Dict[str, float], dc: Optional[Dict[str, float]]) -> Dict[str, float]:
    if dc is not None:
        return dict(dc)
    m = PAPER["data-constrained"]
    return dict({k: base[k] for k in ("E", "A", "B", "alpha", "beta")}, R_D_star=m["R_D_star"], R_N_star=m["R_N_star"])


def make_plan(spec: Dict, budget: float, *, unique_tokens: Optional[float] = None, shape_fns: Optional[ShapeFns] = None,
              n_ctx: int = 1024, throughput: Optional[Dict] = None, seed: int = 0) -> Dict:
    """The plan at ``budget`` (FLOPs, in the law's convention) from ``spec`` (plan_from_prior /
    plan_from_fits build it).  shape_fns: the exact N and FLOPs per token of a shape (else no shape,
    no wall time); throughput: {"flops_per_s" or "tokens_per_s", "source"}.  Its keys come in the
    order of the steps below (ARCHITECTURE.md lists them)."""
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise FitError(f"plan: the budget must be a positive number of FLOPs, got {budget!r}")
    sources: Dict[str, str] = {}
    warnings: List[str] = list(spec.get("warnings", []))
    plan_law, plan_params = _plan_law(spec, unique_tokens, sources)
    out, loss = _allocation(spec, plan_law, plan_params, budget, unique_tokens, sources)
    N_opt, D_opt = out["N_opt"], out["D_opt"]
    out["compute"] = {"law": spec["compute"], "N_counts": spec["N_counts"], "C_law": float(budget)}
    out["model"] = model = _shape(spec, out, shape_fns, n_ctx, warnings)
    sources["model"] = f"exact N of the shape (engine/flops.py), aspect ratio {spec['aspect']:.3g} from {spec['aspect_source']}"
    C_ds = budget if model is None else out["compute"].get("C_nonembedding", budget)
    _batch(spec, loss, C_ds, n_ctx, out, sources)
    out["lr"], how = _lr(spec, N_opt, C_ds, warnings)
    sources["lr"] = how or "none"
    _steps(out, sources)
    out["loss"] = _loss_interval(spec, plan_law, loss, N_opt, D_opt, unique_tokens, seed, warnings)
    sources["loss"] = f"{plan_law} law at (N_opt, D_opt)"
    out["wall_time_s"], out["throughput"] = _wall_time(throughput, model, D_opt, warnings)
    flat = flat_range(plan_law, plan_params, budget, N_opt, loss, unique_tokens)
    out["guards"] = make_guards(budget, N_opt, D_opt, spec.get("fitted", {}), flat, spec.get("crossover"),
                                spec.get("crossover_source", ""), spec["compute"])
    out["warn"] = [g["message"] for g in out["guards"] if g["warn"]]
    out["sources"] = sources
    out["warnings"] = warnings
    return out


def _plan_law(spec: Dict, unique_tokens: Optional[float], sources: Dict) -> tuple:
    """(law, params) the plan optimises: the spec's, or with --unique-tokens the data-constrained
    law built on its Chinchilla form."""
    law, params = spec["law"], spec["params"]
    if unique_tokens is None:
        return law, params
    if not unique_tokens > 0:
        raise FitError(f"--unique-tokens must be positive, got {unique_tokens}")
    if law not in ("chinchilla", "data-constrained"):
        raise FitError(f"--unique-tokens needs a Chinchilla-form law (the data-constrained law of Muennighoff et al. "
                       f"2023 builds on it); {spec['source']} has law {law!r}")
    sources["data-constrained"] = spec.get("dc_source") or (
        "Muennighoff et al. 2023: R_D*, R_N* of their C4 fit (PAPER['data-constrained']) on this law's "
        "E, A, B, alpha, beta")
    return "data-constrained", _dc_params(params, spec.get("dc_params"))


def _allocation(spec: Dict, plan_law: str, plan_params: Dict, budget: float, unique_tokens: Optional[float],
                sources: Dict) -> tuple:
    """(the plan's first keys: N_opt, D_opt, tokens per parameter, epochs; the predicted loss)."""
    opt = optimum(plan_law, plan_params, budget, unique_tokens)
    N_opt, D_opt = opt["N"], opt["D"]
    sources["N_opt, D_opt"] = spec["allocation_source"] if plan_law != "data-constrained" else \
        "the data-constrained law minimised over N at C = 6 N D"
    out: Dict = {"source": spec["source"], "law": plan_law, "params": plan_params, "budget": float(budget),
                 "N_opt": float(N_opt), "D_opt": float(D_opt), "tokens_per_param": float(D_opt / N_opt)}
    if "a" in opt:
        out["allocation_exponents"] = {"a": opt["a"], "b": opt["b"]}
    if unique_tokens is None:
        out["unique_tokens"], out["epochs"] = None, None
        return out, opt["loss"]
    law = spec["law"]
    ref = optimum(law if law != "data-constrained" else "chinchilla",
                  {k: plan_params[k] for k in ("E", "A", "B", "alpha", "beta")}, budget)
    out["unique_tokens"] = float(unique_tokens)
    out["epochs"] = float(D_opt / unique_tokens)
    out["unconstrained"] = {"N_opt": ref["N"], "D_opt": ref["D"], "loss": ref["loss"],
                            "epochs": float(ref["D"] / unique_tokens)}
    return out, opt["loss"]


def _shape(spec: Dict, out: Dict, shape_fns: Optional[ShapeFns], n_ctx: int, warnings: List[str]) -> Optional[Dict]:
    """The model shape nearest N_opt at the spec's aspect ratio, with its exact FLOPs per token
    (and the plan's exact C on it, into out["compute"]); None without shape_fns or a shape."""
    if shape_fns is None:
        return None
    N_opt, D_opt = out["N_opt"], out["D_opt"]
    count = "all" if spec["N_counts"].startswith("all") else "nonembedding"
    model = search_shape(N_opt, spec["aspect"], lambda s: shape_fns["n_params"](s, n_ctx), count,
                         spec.get("head_dim", 64))
    if model is None:
        warnings.append(f"no (n_layer, d_model) shape within 5% of N_opt = {N_opt:.3g}")
        return None
    model["n_ctx"] = int(n_ctx)
    fpt = shape_fns["flops_per_token"](model, n_ctx)
    model["flops_per_token"] = fpt
    out["compute"].update({"C_nonembedding": float(D_opt * fpt["nonembedding"]), "C_all": float(D_opt * fpt["all"]),
                           "note": "the ledger's exact training FLOPs (model view, fwd + bwd, full-length "
                                   "sequences) for D_opt tokens on this shape"})
    return model


def _batch(spec: Dict, loss: Optional[float], C_ds: float, n_ctx: int, out: Dict, sources: Dict) -> None:
    """The batch: B_crit at the predicted loss where the spec has a B_crit law, else DeepSeek's
    B_opt(C); rounded to whole sequences of n_ctx tokens."""
    if spec.get("bcrit") is not None and loss is not None:
        B = float(b_crit(loss, **spec["bcrit"]))
        sources["batch_size_tokens"] = spec["bcrit_source"]
    else:
        B = deepseek_batch(C_ds)
        sources["batch_size_tokens"] = ("DeepSeek-AI 2024 eq. (1): B_opt = 0.2920 C^0.3271 (C = non-embedding "
                                        "training FLOPs)")
    out["batch_size_tokens_law"] = B
    bs = max(1, int(round(B / n_ctx)))
    out["batch_size"] = bs
    out["n_ctx"] = int(n_ctx)
    out["batch_size_tokens"] = int(bs * n_ctx)


def _lr(spec: Dict, N_opt: float, C_ds: float, warnings: List[str]) -> tuple:
    """(lr, where it came from): the study's lr scans, Kaplan's eq. (D.1) for his prior, else
    DeepSeek's eta_opt(C)."""
    lr, how = None, None
    if spec.get("lr_scans"):
        lr, how = lr_from_scans(spec["lr_scans"], N_opt)
    if lr is None and spec.get("lr_rule") == "kaplan":
        lr, how = kaplan_lr(N_opt), f"Kaplan et al. 2020 eq. (D.1): {eq_d1_text().replace('lr(N)', 'lr')}"
        if lr <= 0:
            warnings.append(f"Kaplan's eq. (D.1) gives lr {lr:.3g} <= 0 at N = {N_opt:.3g} (it fails above ~1.2e10)")
            lr = None
    if lr is None and how is None:
        lr, how = deepseek_lr(C_ds), "DeepSeek-AI 2024 eq. (1): eta_opt = 0.3118 C^-0.1250"
    return lr, how


def _steps(out: Dict, sources: Dict) -> None:
    steps = max(1, int(math.ceil(out["D_opt"] / out["batch_size_tokens"])))
    out["steps"] = steps
    out["warmup_steps"] = int(min(WARMUP_MAX, max(1, math.ceil(WARMUP_FRAC * steps))))
    out["schedule"] = SCHEDULE
    sources["steps"] = "D_opt / batch_size_tokens"
    sources["warmup_steps"] = f"{100 * WARMUP_FRAC:g}% of the steps, at most {WARMUP_MAX} (Kaplan et al. 2020, section 2.2)"


def _loss_interval(spec: Dict, plan_law: str, loss: Optional[float], N_opt: float, D_opt: float,
                   unique_tokens: Optional[float], seed: int, warnings: List[str]) -> Dict:
    """{"value", "pi90", "pi90_method"}: the law's loss at the plan, its 90% prediction interval
    from the bootstrap draws (of the law planned with) and the residual scatter, and how it was made."""
    if loss is None:
        return {"value": None, "pi90": None, "pi90_method": f"{spec['source']} publishes no loss law in this form"}
    sigma = spec.get("sigma_log")
    draws = None
    if spec.get("boot") is not None and plan_law == spec["law"]:
        cols = {"N": N_opt, "D": D_opt} if plan_law != "data-constrained" else {"N": N_opt, "D": D_opt, "U": unique_tokens}
        draws = draw_predictions(plan_law, spec["boot"], LAWS[plan_law].params, **cols)[:, 0]
    pi = prediction_interval(loss, draws, sigma, seed=seed)
    if draws is not None:
        method = (f"{int(np.isfinite(draws).sum())} bootstrap draws of the parameters x residual scatter "
                  f"(log sd {sigma:.3g})" if sigma else "bootstrap draws of the parameters")
    elif sigma:
        method = (f"residual scatter only (log sd {sigma:.3g}): no bootstrap draws were given, so parameter "
                  f"uncertainty is left out and the interval is too narrow")
        warnings.append("pi90 leaves out parameter uncertainty (no bootstrap draws): it is too narrow")
    else:
        method = ("a published prior carries neither bootstrap draws nor residuals: no interval"
                  if spec["source"].startswith("prior") else "no bootstrap draws and no residual scale: no interval")
    return {"value": float(loss), "pi90": pi, "pi90_method": method}


def _wall_time(throughput: Optional[Dict], model: Optional[Dict], D_opt: float, warnings: List[str]) -> tuple:
    """(wall_time_s, throughput record): D_opt at the given tokens/s, or FLOP/s over the shape's
    FLOPs per token; (None, None) without a throughput."""
    if not throughput:
        return None, None
    tps = throughput.get("tokens_per_s")
    if tps is None and throughput.get("flops_per_s") and model is not None:
        tps = throughput["flops_per_s"] / model["flops_per_token"]["all"]
    if not tps:
        warnings.append("a throughput was given, but no model shape to turn FLOP/s into tokens/s")
        return None, None
    return float(D_opt / tps), dict(throughput, tokens_per_s_plan=float(tps))


def prior_spec(name: str) -> Dict:
    """The spec make_plan reads, for a shipped prior (fitting/laws.py PRIORS)."""
    if name not in PRIORS:
        raise FitError(f"unknown prior {name!r}; choose one of {', '.join(PRIORS)}")
    pr = PRIORS[name]
    src = pr["sources"]
    spec = {"law": pr["law"], "params": pr["params"], "source": f"prior {name}: {src['params']}",
            "compute": pr["compute"], "aspect": pr["aspect"], "aspect_source": src["aspect"],
            "head_dim": pr.get("head_dim", 64),
            "allocation_source": src.get("allocation", src["params"]),
            "fitted": {"C_max": pr["fitted_C_max"], "C_source": src["fitted_C_max"]},
            "crossover": kaplan_crossover(), "crossover_source": "Kaplan et al. 2020 eqs. (1.2), (1.3), (6.7)"}
    spec["N_counts"] = "all parameters (embeddings included)" if pr["law"] == "chinchilla" else "nonembedding"
    if name == "kaplan":
        spec["bcrit"] = PAPER["bcrit"]
        spec["bcrit_source"] = "Kaplan et al. 2020 eq. (5.3): B_crit = B_star / L^(1/alpha_B) at the predicted loss"
        spec["lr_rule"] = "kaplan"
    return spec


def plan_from_prior(name: str, budget: float, **kw) -> Dict:
    """make_plan from a shipped prior (kaplan, chinchilla, epoch, deepseek)."""
    return make_plan(prior_spec(name), budget, **kw)


def _entries(fits) -> List[Dict]:
    if isinstance(fits, dict) and "fits" in fits:
        return list(fits["fits"])
    if isinstance(fits, dict) and "law" in fits:
        return [fits]
    if isinstance(fits, list) and all(isinstance(f, dict) and "law" in f for f in fits):
        return list(fits)
    raise FitError("fits: expected fits.json from `flopscale fit --out` (an object with \"fits\"), or the output "
                   "of `flopscale fit --json` (one fit or a list)")


def fits_spec(fits, law: Optional[str] = None, boot: Optional[Dict] = None) -> Dict:
    """The spec make_plan reads, from a fits.json payload (or `flopscale fit --json` output).
    law: the entry to plan from (its name, e.g. chinchilla, nd), default the first of LOSS_LAWS
    present; boot: {entry name: (n_boot, n_params) bootstrap draws} for the loss interval."""
    by_name = {f.get("name", f["law"]): f for f in _entries(fits)}
    entry = _plan_entry(by_name, law)
    name = entry.get("name", entry["law"])
    n_free = LAWS[entry["law"]].n_params - len(entry.get("fixed") or {})
    payload = fits if isinstance(fits, dict) and "fits" in fits else {}
    study = payload.get("study") or {}
    bc = by_name.get("bcrit")
    law_of_plan, params = entry["law"], dict(entry["params"])
    if entry["law"] == "ns":  # Kaplan's route: L(N, S_min) with B_crit(L), the study's or the paper's
        law_of_plan = "kaplan"
        params = {"ns": params, "bcrit": {k: (bc or {"params": PAPER["bcrit"]})["params"][k] for k in ("B_star", "alpha_B")}}
    spec: Dict = {"law": law_of_plan, "params": params,
                  "source": f"own fits: {name} ({entry.get('source', 'fit')}; {entry.get('n_points')} points)",
                  "compute": "6ND", "N_counts": "nonembedding (the runs' N)" if study.get("source") == "runs"
                  else "as the fitted table's N column",
                  "sigma_log": residual_scale(entry.get("rmse_log"), entry.get("n_points"), n_free),
                  "allocation_source": {"chinchilla": "Hoffmann et al. 2022 eq. (4) at the fitted constants",
                                        "nd": "L(N, D) at C = 6 N D, closed form (fitting/plan.py)",
                                        "ns": "L(N, S_min) with B_crit(L) (own bcrit fit, else Kaplan's) minimised at "
                                              "C_min = C/2 (laws.allocation), as for the kaplan prior",
                                        "data-constrained": "the data-constrained law minimised over N"}[entry["law"]],
                  "warnings": []}
    if entry["law"] == "data-constrained":
        spec["dc_params"] = dict(entry["params"])
        spec["dc_source"] = f"own fits: {name}"
    elif "data-constrained" in by_name:
        spec["dc_params"] = dict(by_name["data-constrained"]["params"])
        spec["dc_source"] = "own fits: data-constrained"
    if law_of_plan in LAWS:  # bootstrap draws of the law's own parameters (none for the ns route)
        if boot is not None and name in boot:
            spec["boot"] = np.asarray(boot[name], float)
        elif entry.get("boot") is not None:
            spec["boot"] = np.asarray(entry["boot"], float)
    _bcrit_spec(spec, bc, law_of_plan, params)
    _ablation_spec(spec, payload.get("ablations") or {})
    spec["fitted"] = _fitted_range(entry.get("ranges") or {}, study)
    _crossover_spec(spec, by_name, payload.get("frontier") or {})
    return spec


def _plan_entry(by_name: Dict[str, dict], law: Optional[str]) -> dict:
    """The fits.json entry to plan from: the one named, else the first of LOSS_LAWS present."""
    if law is not None:
        if law not in by_name:
            raise FitError(f"fits: no fit named {law!r} (have: {', '.join(by_name)})")
        entry = by_name[law]
        if entry["law"] not in LOSS_LAWS and entry["law"] != "data-constrained":
            raise FitError(f"fits: a plan needs a law of N and D ({', '.join(LOSS_LAWS)}); {law!r} is law {entry['law']!r}")
        return entry
    entry = next((by_name[k] for k in LOSS_LAWS if k in by_name), None)
    if entry is None:
        raise FitError(f"fits: no fit of N and D to plan from (need one of {', '.join(LOSS_LAWS)}; have "
                       f"{', '.join(by_name) or 'none'})")
    return entry


def _bcrit_spec(spec: Dict, bc: Optional[dict], law_of_plan: str, params: Dict) -> None:
    """B_crit(L) from the study's own bcrit fit, else Kaplan's on his route, else none (DeepSeek's batch)."""
    if bc is not None:
        spec["bcrit"] = {k: bc["params"][k] for k in ("B_star", "alpha_B")}
        spec["bcrit_source"] = (f"own fits: bcrit, B_crit = {bc['params']['B_star']:.3g} / L^(1/{bc['params']['alpha_B']:.3g}) "
                                f"tokens at the predicted loss (fitted over losses {bc['ranges']['loss'][0]:.3g}-"
                                f"{bc['ranges']['loss'][1]:.3g})")
    elif law_of_plan == "kaplan":
        spec["bcrit"] = params["bcrit"]
        spec["bcrit_source"] = "Kaplan et al. 2020 eq. (5.3) (the study has no bcrit fit): B_crit at the predicted loss"


def _ablation_spec(spec: Dict, abl: Dict) -> None:
    """lr scans and the best aspect ratio from the study's ablations (fits.json "ablations"), else Kaplan's."""
    scans = (abl.get("lr") or {}).get("scans")
    if scans:
        spec["lr_scans"] = scans
    groups = (abl.get("shape") or {}).get("groups") or []
    if groups:
        g = max(groups, key=lambda g: g.get("N_geomean", 0))
        spec["aspect"] = float(g["best"]["aspect"])
        spec["aspect_source"] = f"the study's shape runs: best aspect at N ~ {g.get('N_geomean', 0):.3g} ({g['best']['run']})"
    else:
        spec["aspect"] = PRIORS["kaplan"]["aspect"]
        spec["aspect_source"] = "no shape runs in the study; " + PRIORS["kaplan"]["sources"]["aspect"]


def _fitted_range(rng: Dict, study: Dict) -> Dict:
    """What the guards compare a plan with: the largest C and N fitted, the tokens per parameter spanned."""
    fitted: Dict = {}
    if study.get("C_range"):
        fitted["C_max"], fitted["C_source"] = float(study["C_range"][1]), "the study's largest run, C = nonembedding"
    elif "N" in rng and "D" in rng:
        fitted["C_max"], fitted["C_source"] = 6.0 * rng["N"][1] * rng["D"][1], "6 N_max D_max of the fitted points"
    if "N" in rng:
        fitted["N_max"] = float(rng["N"][1])
    if study.get("tokens_per_param_range"):
        fitted["tokens_per_param"] = [float(v) for v in study["tokens_per_param_range"]]
    elif "N" in rng and "D" in rng:
        fitted["tokens_per_param"] = [rng["D"][0] / rng["N"][1], rng["D"][1] / rng["N"][0]]
    return fitted


def _crossover_spec(spec: Dict, by_name: Dict[str, dict], fr) -> None:
    """Where L(C) and L(D(C)) cross: the study's own c, d and frontier D_opt(C) fits, else Kaplan's."""
    c, d = by_name.get("c"), by_name.get("d")
    dopt = fr.get("D_opt") if isinstance(fr, dict) else None
    if c is not None and d is not None and dopt:
        spec["crossover"] = kaplan_crossover(c["params"], d["params"], {"coef": dopt["coef"], "exponent": dopt["exponent"]})
        spec["crossover_source"] = "own fits c, d and the frontier's D_opt(C)"
    else:
        spec["crossover"] = kaplan_crossover()
        spec["crossover_source"] = "Kaplan et al. 2020 eqs. (1.2), (1.3), (6.7) (the study has no c, d and frontier fits)"


def plan_from_fits(fits, budget: float, *, law: Optional[str] = None, boot: Optional[Dict] = None, **kw) -> Dict:
    """make_plan from a fits.json payload (the lead's report: plans at 10x and 100x its largest C)."""
    return make_plan(fits_spec(fits, law, boot), budget, **kw)


def study_plans(fits, factors=(10, 100), **kw) -> List[Dict]:
    """Plans at ``factors`` x the study's largest fitted C (fits.json "study" C_range, else 6 N_max
    D_max of the planned fit): the main job's report's "plan for 10x and 100x"."""
    spec = fits_spec(fits, kw.pop("law", None), kw.pop("boot", None))
    cmax = spec["fitted"].get("C_max")
    if not cmax:
        raise FitError("fits: the study's largest C is not known")
    return [make_plan(spec, f * cmax, **kw) for f in factors]
