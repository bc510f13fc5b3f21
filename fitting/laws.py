"""Scaling-law forms of Kaplan et al. 2020 and Hoffmann et al. 2022, and the paper's derived relations.

    from flopscale.fitting.laws import LAWS, PAPER, predict
    predict("n", PAPER["n"], N=1.5e9)                  # L(N) in nats/token at the paper's constants
    LAWS["nd"].formula                                 # 'L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D'
    allocation_exponents(0.077, 0.76, 0.21)            # derived N, B, S, D exponents of C_min

Every law lives in exactly one place: its public parameter names, its formula as text, and one
function `_log_<law>` that evaluates log(target) and its Jacobian in an internal parameterization
chosen to be well conditioned for the optimizer (fitting/estimator.py). Public values are what a user
reads (N_c in parameters, D_c in tokens, C_c in FLOPs, B_star in tokens); the internal vector
theta is what L-BFGS-B moves.

Why an internal parameterization: in L = (N_c/N)^alpha, N_c ~ 1e13 and alpha ~ 0.08, so
(log N_c, alpha) are strongly correlated (a small change in alpha needs a huge change in N_c).
Writing log L = m - alpha * (log N - mean log N) decouples them: m is the log loss at the data's
geometric centre and alpha the slope, nearly orthogonal. The Chinchilla form keeps Hoffmann's
own parameterization (a = log A, b = log B, e = log E, uncentred) so that his start grid applies
unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import numpy as np
from scipy.optimize import brentq, minimize_scalar

PF_DAY = 8.64e19  # FLOPs in one petaflop/s-day: 1e15 * 86400

# Kaplan et al. 2020 constants (docs/ARCHITECTURE.md "Reference numbers from the paper"); C_c is
# converted from PF-days to FLOPs so every law here takes C in FLOPs. Chinchilla: Hoffmann et al. 2022, eq. (10).
PAPER: Dict[str, Dict[str, float]] = {
    "n": {"alpha_N": 0.076, "N_c": 8.8e13},
    "d": {"alpha_D": 0.095, "D_c": 5.4e13},
    "c": {"alpha_C": 0.050, "C_c": 3.1e8 * PF_DAY},
    "nd": {"alpha_N": 0.076, "alpha_D": 0.103, "N_c": 6.4e13, "D_c": 1.8e13},
    "ns": {"alpha_N": 0.077, "alpha_S": 0.76, "N_c": 6.5e13, "S_c": 2.1e3},
    # B_star: 2e8 tokens in the paper's text, 2.1e8 in its summary table; we quote the text.
    "bcrit": {"B_star": 2e8, "alpha_B": 0.21},
    "chinchilla": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
    # Muennighoff et al. 2023, their C4 fit as published in the paper's repository
    # (github.com/huggingface/datablations, README "Parametric Fit": a, b, e = log A, log B, log E).
    "data-constrained": {"E": float(np.exp(0.6254804)), "A": float(np.exp(6.255414)), "B": float(np.exp(7.3049974)),
                         "alpha": 0.3526596, "beta": 0.3526596, "R_D_star": 15.387756, "R_N_star": 5.309743},
}

# Hoffmann et al. 2022, Table 2: N_opt ~ C^a, D_opt ~ C^b by their three approaches (1: minimum
# over training curves, 2: isoFLOP profiles, 3: the parametric fit of eq. (10)), and Kaplan et al.'s
# row of the same table (N ~ C^0.73, section 6.1; D then ~ C^0.27). Their N counts all parameters
# and C = 6ND; Kaplan's N and C are non-embedding.
PAPER_ALLOCATION_HOFFMANN = {"approach 1": {"a": 0.50, "b": 0.50}, "approach 2": {"a": 0.49, "b": 0.51},
                             "approach 3": {"a": 0.46, "b": 0.54}, "Kaplan et al.": {"a": 0.73, "b": 0.27}}

# Where each reference number comes from (report.md prints this list under the exponent table).
PAPER_SOURCES = {
    "n, d, c, nd, ns, bcrit": "Kaplan et al. 2020, eqs. (1.1)-(1.6) and section 1.2 (non-embedding N, C in PF-days "
                              "converted to FLOPs; B_star 2e8 tokens as in the text, 2.1e8 in the summary table)",
    "chinchilla (E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28)": "Hoffmann et al. 2022, eq. (10), approach 3",
    "N_opt ~ C^a, D_opt ~ C^b (a 0.50/0.49/0.46, b 0.50/0.51/0.54)": "Hoffmann et al. 2022, Table 2, approaches 1/2/3",
    "Kaplan N_opt ~ C^0.73, D ~ C^0.27": "Kaplan et al. 2020, section 6.1 (and Hoffmann et al. 2022, Table 2)",
    "data-constrained": "Muennighoff et al. 2023, the C4 fit in github.com/huggingface/datablations",
}

# The paper's empirical compute-efficient exponents (N, B, S against C_min; section 6.1, Fig. 14).
PAPER_ALLOCATION_EMPIRICAL = {"N": 0.73, "B": 0.24, "S": 0.03}

# Kaplan et al. 2020, eq. D.1 (natural log): the learning rate they found good for N parameters,
# lr(N) = KAPLAN_LR_D1[0] + KAPLAN_LR_D1[1] ln N (it turns negative near N = 1.2e10).
KAPLAN_LR_D1 = (0.003239, -0.0001395)


# Hoffmann et al. 2022, approach 3: the Huber loss's delta on log-loss residuals, the estimator's
# default (fitting/estimator.py) and the report's statement of it when no fit says otherwise.
HUBER_DELTA = 1e-3

# Kaplan et al. 2020, Figure 20 (Appendix D): the loss at context position t, a power law in t with
# a floor; fitting/positions.py fits it to each run's per-position losses.
POSITION_FORMULA = "L(t) = L_inf + (t_c/t)^alpha_t"


def position_law(t: np.ndarray, L_inf: float, t_c: float, alpha_t: float) -> np.ndarray:
    """POSITION_FORMULA at positions t (t = 1: the token after one of context)."""
    return L_inf + (t_c / t) ** alpha_t


def kaplan_lr(N):
    """Kaplan et al.'s eq. D.1, lr(N) = 0.003239 - 0.0001395 ln N."""
    return KAPLAN_LR_D1[0] + KAPLAN_LR_D1[1] * np.log(np.asarray(N, float))


def eq_d1_text() -> str:
    """Eq. D.1 as the report writes it: "lr(N) = 0.003239 - 0.0001395 ln N"."""
    return f"lr(N) = {KAPLAN_LR_D1[0]:g} - {-KAPLAN_LR_D1[1]:g} ln N"


def _lse(*cols: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """log(sum exp(cols)) and the softmax weights (its partial derivatives), overflow-safe."""
    z = np.stack(np.broadcast_arrays(*cols))  # (k, n)
    zmax = z.max(axis=0)
    ez = np.exp(z - zmax)
    s = ez.sum(axis=0)
    return zmax + np.log(s), ez / s


@dataclass(frozen=True)
class Law:
    """One scaling law: names, formula, and its log-space evaluation for the estimator.

    inputs: the columns the law reads (a CSV's column names); target: the column it predicts.
    log_fn(theta, x) -> (log target (n,), Jacobian (n, p)) where x maps input name to the log of
    that input minus its centre (centres from `centres`), and theta is the internal vector.
    """

    name: str
    params: Tuple[str, ...]
    inputs: Tuple[str, ...]
    target: str
    formula: str
    log_fn: Callable
    to_public: Callable      # (theta, centres) -> {name: value}
    to_internal: Callable    # ({name: value}, centres) -> theta
    centred: bool = True     # False: x holds raw logs (Chinchilla, so Hoffmann's grid applies)
    linear: bool = False     # log target linear in theta: Huber fit by IRLS, no start grid
    # Which input the leave-largest-out check holds out (largest value, or smallest for "loss").
    holdout_on: str = ""

    @property
    def n_params(self) -> int:
        return len(self.params)

    def centres(self, cols: Dict[str, np.ndarray]) -> Dict[str, float]:
        if not self.centred:
            return {k: 0.0 for k in self.inputs}
        return {k: float(np.mean(np.log(cols[k]))) for k in self.inputs}

    def design(self, cols: Dict[str, np.ndarray], centres: Dict[str, float]) -> Dict[str, np.ndarray]:
        return {k: np.log(np.asarray(cols[k], dtype=float)) - centres[k] for k in self.inputs}

    def predict(self, params: Dict[str, float], **cols) -> np.ndarray:
        """The law's target (loss, or B for bcrit) at the given inputs, from public parameters."""
        arrs = {k: np.atleast_1d(np.asarray(cols[k], dtype=float)) for k in self.inputs}
        arrs = dict(zip(arrs, np.broadcast_arrays(*arrs.values())))
        centres = {k: 0.0 for k in self.inputs}  # prediction needs no conditioning
        theta = self.to_internal(params, centres)
        f, _ = self.log_fn(theta, self.design(arrs, centres))
        return np.exp(f)


# --- single power laws: L = (X_c/X)^alpha, internal theta = (m, alpha), log L = m - alpha * x ----
# m = alpha * (log X_c - centre), so log X_c = centre + m / alpha.

def _log_power(theta, x, key):
    m, alpha = theta
    xv = x[key]
    f = m - alpha * xv
    return f, np.stack([np.ones_like(xv), -xv], axis=1)


def _power_law(name, key, alpha, const, formula, holdout_on):
    def to_public(theta, c):
        m, a = float(theta[0]), float(theta[1])
        return {alpha: a, const: float(np.exp(c[key] + m / a)) if a != 0 else float("inf")}

    def to_internal(p, c):
        return np.array([p[alpha] * (np.log(p[const]) - c[key]), p[alpha]])

    return Law(name, (alpha, const), (key,), "loss", formula,
               lambda th, x: _log_power(th, x, key), to_public, to_internal,
               linear=True, holdout_on=holdout_on)


# --- bcrit: B = B_star / loss^(1/alpha_B); theta = (m, k), log B = m - k * x_loss, k = 1/alpha_B --

def _bcrit_public(theta, c):
    m, k = float(theta[0]), float(theta[1])
    return {"B_star": float(np.exp(m + k * c["loss"])), "alpha_B": 1.0 / k if k != 0 else float("inf")}


def _bcrit_internal(p, c):
    k = 1.0 / p["alpha_B"]
    return np.array([np.log(p["B_star"]) - k * c["loss"], k])


# --- nd: L = [(N_c/N)^(aN/aD) + D_c/D]^aD -------------------------------------------------------
# theta = (u, r, v, aD): log L = aD * lse(u - r*xN, v - xD), r = aN/aD,
# u = r*(log N_c - cN), v = log D_c - cD.

def _log_nd(theta, x):
    u, r, v, aD = theta
    s, w = _lse(u - r * x["N"], v - x["D"])
    J = np.stack([aD * w[0], -aD * w[0] * x["N"], aD * w[1], s], axis=1)
    return aD * s, J


def _nd_public(theta, c):
    u, r, v, aD = (float(t) for t in theta)
    return {"alpha_N": r * aD, "alpha_D": aD, "N_c": float(np.exp(c["N"] + u / r)) if r else float("inf"),
            "D_c": float(np.exp(c["D"] + v))}


def _nd_internal(p, c):
    r = p["alpha_N"] / p["alpha_D"]
    return np.array([r * (np.log(p["N_c"]) - c["N"]), r, np.log(p["D_c"]) - c["D"], p["alpha_D"]])


# --- ns: L = (N_c/N)^aN + (S_c/S)^aS; theta = (p, aN, q, aS): log L = lse(p - aN*xN, q - aS*xS) --

def _log_ns(theta, x):
    p, aN, q, aS = theta
    s, w = _lse(p - aN * x["N"], q - aS * x["S"])
    J = np.stack([w[0], -w[0] * x["N"], w[1], -w[1] * x["S"]], axis=1)
    return s, J


def _ns_public(theta, c):
    p, aN, q, aS = (float(t) for t in theta)
    return {"alpha_N": aN, "alpha_S": aS,
            "N_c": float(np.exp(c["N"] + p / aN)) if aN else float("inf"),
            "S_c": float(np.exp(c["S"] + q / aS)) if aS else float("inf")}


def _ns_internal(p, c):
    return np.array([p["alpha_N"] * (np.log(p["N_c"]) - c["N"]), p["alpha_N"],
                     p["alpha_S"] * (np.log(p["S_c"]) - c["S"]), p["alpha_S"]])


# --- chinchilla: L = E + A/N^alpha + B/D^beta, Hoffmann's theta = (a, b, e, alpha, beta) ---------
# log L = lse(a - alpha*log N, b - beta*log D, e), a = log A, b = log B, e = log E.

def _log_chinchilla(theta, x):
    # Written out rather than through _lse: this runs ~300k times in one 4500-start fit.
    a, b, e, alpha, beta = theta
    lN, lD = x["N"], x["D"]
    z1 = a - alpha * lN
    z2 = b - beta * lD
    m = np.maximum(np.maximum(z1, z2), e)
    e1, e2, e3 = np.exp(z1 - m), np.exp(z2 - m), np.exp(e - m)
    s = e1 + e2 + e3
    w1, w2 = e1 / s, e2 / s
    J = np.empty((lN.size, 5))
    J[:, 0], J[:, 1], J[:, 2] = w1, w2, e3 / s
    J[:, 3], J[:, 4] = -w1 * lN, -w2 * lD
    return m + np.log(s), J


def _chin_public(theta, c):
    a, b, e, alpha, beta = (float(t) for t in theta)
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": alpha, "beta": beta}


def _chin_internal(p, c):
    return np.array([np.log(p["A"]), np.log(p["B"]), np.log(p["E"]), p["alpha"], p["beta"]])


# --- data-constrained: Muennighoff et al. 2023, eq. (5) -------------------------------------------
# L = E + A/N'^alpha + B/D'^beta with effective data and parameters
#   D' = U_D + U_D R_D* (1 - exp(-R_D/R_D*)),  R_D = D/U_D - 1   (repetitions: epochs - 1, >= 0)
#   N' = U_N + U_N R_N* (1 - exp(-R_N/R_N*)),  R_N = N/U_N - 1   (excess parameters, >= 0)
# U_D = unique tokens (min(U, D): a run cannot see more unique tokens than it trained on) and
# U_N = min(N, N_opt(U_D)), the compute-optimal size for U_D tokens under the law's own Chinchilla
# allocation: N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = (C/6)^(alpha/(alpha+beta)) / G,
# G = (alpha A / (beta B))^(1/(alpha+beta)), so N_opt(D) = G (G D)^(beta/alpha) (the paper's
# repository, `D_to_N`). In logs: log N_opt(U) = (a - b + log(alpha/beta) + beta log U) / alpha.
# theta = (a, b, e, alpha, beta, rd, rn): Hoffmann's five (uncentred, so his grid applies) plus
# rd = log R_D*, rn = log R_N* (positive decay constants).

def _decay(lR, s):
    """log(1 + s (1 - exp(-R/s))) for R = exp(lR) - 1 >= 0, and its derivative in log s."""
    R = np.maximum(np.expm1(lR), 0.0)
    t = R / s
    ex = np.exp(-t)
    h = 1.0 + s * (1.0 - ex)
    return np.log(h), s * ((1.0 - ex) - ex * t) / h, R, ex, h


def _log_data_constrained(theta, x):
    a, b, e, alpha, beta, rd, rn = theta
    lN, lD = x["N"], x["D"]
    lU = np.minimum(x["U"], lD)
    sD, sN = np.exp(rd), np.exp(rn)
    gD, dgD, _, _, _ = _decay(lD - lU, sD)
    lDp = lU + gD                                          # log D'
    with np.errstate(divide="ignore", invalid="ignore"):
        lopt = (a - b + np.log(alpha / beta) + beta * lU) / alpha   # log N_opt(U_D)
    lopt = np.where(np.isfinite(lopt), lopt, np.inf)
    cons = lopt < lN                                        # U_N = N_opt(U_D) < N: excess parameters
    lUN = np.where(cons, lopt, lN)
    gN, dgN, RN, exN, hN = _decay(lN - lUN, sN)
    lNp = lUN + gN                                          # log N'
    # d log N' / d log U_N at fixed N (zero where U_N = N, continuous at the kink)
    g = np.where(cons, 1.0 - exN * (RN + 1.0) / hN, 0.0)
    z1, z2 = a - alpha * lNp, b - beta * lDp
    m = np.maximum(np.maximum(z1, z2), e)
    e1, e2, e3 = np.exp(z1 - m), np.exp(z2 - m), np.exp(e - m)
    s = e1 + e2 + e3
    w1, w2, w3 = e1 / s, e2 / s, e3 / s
    # d log U_N / d (a, b, alpha, beta) where constrained
    dU_a, dU_b = g / alpha, -g / alpha
    dU_al = g * (1.0 / alpha ** 2 - np.where(cons, lopt, 0.0) / alpha)
    dU_be = g * (lU - 1.0 / beta) / alpha
    J = np.empty((lN.size, 7))
    J[:, 0] = w1 * (1.0 - alpha * dU_a)
    J[:, 1] = w2 - w1 * alpha * dU_b
    J[:, 2] = w3
    J[:, 3] = -w1 * (lNp + alpha * dU_al)
    J[:, 4] = -w2 * lDp - w1 * alpha * dU_be
    J[:, 5] = -w2 * beta * dgD
    J[:, 6] = -w1 * alpha * np.where(cons, dgN, 0.0)
    return m + np.log(s), J


def _dc_public(theta, c):
    p = _chin_public(theta[:5], c)
    p["R_D_star"], p["R_N_star"] = float(np.exp(theta[5])), float(np.exp(theta[6]))
    return p


def _dc_internal(p, c):
    return np.concatenate([_chin_internal(p, c), [np.log(p["R_D_star"]), np.log(p["R_N_star"])]])


LAWS: Dict[str, Law] = {
    "n": _power_law("n", "N", "alpha_N", "N_c", "L = (N_c/N)^alpha_N", "N"),
    "d": _power_law("d", "D", "alpha_D", "D_c", "L = (D_c/D)^alpha_D", "D"),
    "c": _power_law("c", "C", "alpha_C", "C_c", "L = (C_c/C)^alpha_C", "C"),
    "nd": Law("nd", ("alpha_N", "alpha_D", "N_c", "D_c"), ("N", "D"), "loss",
              "L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D", _log_nd, _nd_public, _nd_internal,
              holdout_on="N"),
    "ns": Law("ns", ("alpha_N", "alpha_S", "N_c", "S_c"), ("N", "S"), "loss",
              "L = (N_c/N)^alpha_N + (S_c/S)^alpha_S", _log_ns, _ns_public, _ns_internal,
              holdout_on="N"),
    "bcrit": Law("bcrit", ("B_star", "alpha_B"), ("loss",), "B", "B = B_star / loss^(1/alpha_B)",
                 lambda th, x: _log_power(th, x, "loss"), _bcrit_public, _bcrit_internal,
                 linear=True, holdout_on="loss"),
    "chinchilla": Law("chinchilla", ("E", "A", "B", "alpha", "beta"), ("N", "D"), "loss",
                      "L = E + A/N^alpha + B/D^beta", _log_chinchilla, _chin_public, _chin_internal,
                      centred=False, holdout_on="N"),
    "data-constrained": Law("data-constrained", ("E", "A", "B", "alpha", "beta", "R_D_star", "R_N_star"),
                            ("N", "D", "U"), "loss",
                            "L = E + A/N'^alpha + B/D'^beta, D' = U_D + U_D R_D* (1 - exp(-R_D/R_D*)), "
                            "N' = U_N + U_N R_N* (1 - exp(-R_N/R_N*))",
                            _log_data_constrained, _dc_public, _dc_internal, centred=False, holdout_on="N"),
}


def predict(law: str, params: Dict[str, float], **cols) -> np.ndarray:
    """predict("nd", PAPER["nd"], N=1e9, D=1e10) -> array of losses (nats/token)."""
    return LAWS[law].predict(params, **cols)


# ------------------------------------------------------------------------------------------------
# Derived relations (Kaplan et al. 2020, sections 4-6)
# ------------------------------------------------------------------------------------------------

def b_crit(loss, B_star: float = PAPER["bcrit"]["B_star"], alpha_B: float = PAPER["bcrit"]["alpha_B"]):
    """Critical batch size in tokens at a loss (eq. 5.3)."""
    return B_star / np.power(loss, 1.0 / alpha_B)


def s_min(S, B, B_crit):
    """Fewest steps to reach the same loss with B >> B_crit (eq. 5.4)."""
    return S / (1.0 + B_crit / B)


def e_min(E, B, B_crit):
    """Fewest tokens (examples) to reach the same loss with B << B_crit (eq. 5.5 analogue)."""
    return E / (1.0 + B / B_crit)


def c_min(C, B, B_crit):
    """Compute had the run used B << B_crit (eq. 5.5): C_min = C / (1 + B/B_crit)."""
    return C / (1.0 + B / B_crit)


def s_stop(N, D, nd: Dict[str, float] = PAPER["nd"], S_c: float = PAPER["ns"]["S_c"],
           alpha_S: float = PAPER["ns"]["alpha_S"]):
    """Lower bound on the early-stopping step (eq. 5.7): S_stop >~ S_c / [L(N,D) - L(N,inf)]^(1/alpha_S).

    L(N, inf) = (N_c/N)^alpha_N is the nd law with D -> inf. Returns inf where D is so large that
    the run would not overfit (the gap is zero).
    """
    gap = predict("nd", nd, N=N, D=D) - np.power(nd["N_c"] / np.asarray(N, float), nd["alpha_N"])
    with np.errstate(divide="ignore"):
        return S_c / np.power(np.maximum(gap, 0.0), 1.0 / alpha_S)


def overfit_min_tokens(N, nd: Dict[str, float] | None = None, delta: float = 0.02):
    """Dataset size above which overfitting costs < delta in loss (section 4.2).

    With nd=None: the paper's empirical D >~ 5e3 * N^0.74. With fitted nd constants: expand
    L(N,D)/L(N,inf) = [1 + (D_c/D)(N/N_c)^(aN/aD)]^aD ~ 1 + aD (D_c/D)(N/N_c)^(aN/aD) <= 1 + delta,
    so D >= (aD D_c / delta) (N/N_c)^(aN/aD). (At the paper's nd constants this gives 6.0e3 *
    N^0.738, the origin of its rounded 5e3 * N^0.74.)
    """
    N = np.asarray(N, dtype=float)
    if nd is None:
        return 5e3 * np.power(N, 0.74)
    r = nd["alpha_N"] / nd["alpha_D"]
    return nd["alpha_D"] * nd["D_c"] / delta * np.power(N / nd["N_c"], r)


def allocation_exponents(alpha_N: float, alpha_S: float, alpha_B: float) -> Dict[str, float]:
    """Compute-efficient exponents derived from L(N, S_min) and B_crit(L) (section 6.1, appendix B).

    Minimising L(N, S_min) at fixed C_min = 6 N B_crit(L) S_min gives L ~ C_min^-alpha_C_min with
    1/alpha_C_min = 1/alpha_S + 1/alpha_B + 1/alpha_N, and N ~ C^(alpha_C/alpha_N),
    B ~ C^(alpha_C/alpha_B), S ~ C^(alpha_C/alpha_S), D = B*S ~ C^(alpha_C/alpha_B + alpha_C/alpha_S).
    At the paper's constants: alpha_C_min 0.052, N 0.68 (the paper measures 0.73), B 0.25 (0.24),
    S 0.07 (0.03).
    """
    a_c = 1.0 / (1.0 / alpha_S + 1.0 / alpha_B + 1.0 / alpha_N)
    return {"alpha_C_min": a_c, "N": a_c / alpha_N, "B": a_c / alpha_B, "S": a_c / alpha_S,
            "D": a_c / alpha_B + a_c / alpha_S}


def allocation(C, ns: Dict[str, float] = PAPER["ns"], bcrit: Dict[str, float] = PAPER["bcrit"]):
    """Compute-efficient N, B, S, D and loss at a compute budget C (FLOPs), solved numerically.

    For each candidate N, the step count S (= S_min, training at B = B_crit) solves
    C = 6 N B_crit(L(N, S)) S; the optimum N minimises L over log N. Returns a dict of arrays.
    Here C is non-embedding training compute, 6 N FLOPs per token (the paper's C_min convention).
    """
    def L_ns(N, S):
        return (ns["N_c"] / N) ** ns["alpha_N"] + (ns["S_c"] / S) ** ns["alpha_S"]

    def steps_for(N, c):
        # C(S) = 6 N B_crit(L(N,S)) S increases with S (L falls, B_crit grows), so one root.
        g = lambda lS: np.log(6 * N * b_crit(L_ns(N, np.exp(lS)), **bcrit) * np.exp(lS)) - np.log(c)
        return np.exp(brentq(g, -20.0, 80.0, xtol=1e-12))

    out = {k: [] for k in ("C", "N", "S", "B", "D", "loss")}
    for c in np.atleast_1d(np.asarray(C, dtype=float)):
        obj = lambda lN: L_ns(np.exp(lN), steps_for(np.exp(lN), c))
        # the optimum N lies well below C/6 (one token per parameter); bracket generously
        res = minimize_scalar(obj, bounds=(0.0, np.log(c / 6.0)), method="bounded",
                              options={"xatol": 1e-10})
        N = float(np.exp(res.x))
        S = float(steps_for(N, c))
        L = float(L_ns(N, S))
        B = float(b_crit(L, **bcrit))
        for k, v in zip(out, (c, N, S, B, B * S, L)):
            out[k].append(v)
    return {k: np.array(v) for k, v in out.items()}


def chinchilla_allocation(p: Dict[str, float]) -> Dict[str, float]:
    """Hoffmann et al.'s approach-3 allocation from fitted L = E + A/N^alpha + B/D^beta.

    Minimising L at fixed C = 6 N D (the 6ND training-compute rule, as in the paper) gives
    N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b with a = beta/(alpha+beta), b = alpha/(alpha+beta),
    G = (alpha A / (beta B))^(1/(alpha+beta)). At the paper's rounded constants a = 0.452, not the
    0.46 of its Table 2 (the unrounded alpha 0.3392, beta 0.2849 give 0.457; Besiroglu et al. 2024).
    """
    al, be = p["alpha"], p["beta"]
    with np.errstate(all="ignore"):
        G = float(np.power(al * p["A"] / (be * p["B"]), 1.0 / (al + be)))
    return {"a": be / (al + be), "b": al / (al + be), "G": G}


# ------------------------------------------------------------------------------------------------
# Priors for `flopscale plan --prior NAME` (fitting/plan.py): every published constant a plan uses,
# each beside its source, in this one place.  "law" names how plan.py reads "params":
#   kaplan:     L(N, S_min) and B_crit(L) (PAPER above), the compute-efficient allocation solved by
#               `allocation`; C is non-embedding, 6 N FLOPs per token.
#   chinchilla: L = E + A/N^alpha + B/D^beta at C = 6 N D (N all parameters), approach 3.
#   deepseek:   power laws in C of M_opt (non-embedding FLOPs per token, attention included), D_opt,
#               B_opt and eta_opt, with C = M D; no loss law is published in this form.
# ------------------------------------------------------------------------------------------------
PRIORS: Dict[str, Dict] = {
    "kaplan": {
        "law": "kaplan",
        "params": {"ns": PAPER["ns"], "bcrit": PAPER["bcrit"], "nd": PAPER["nd"], "c": PAPER["c"], "d": PAPER["d"]},
        "compute": "nonembedding",
        # eq. (D.1), appendix D.6: lr(N) = 0.003239 - 0.0001395 ln N (negative above N ~ 1.2e10)
        "lr": {"c0": KAPLAN_LR_D1[0], "c1": KAPLAN_LR_D1[1]},
        # eq. (6.7), section 6.3: tokens a compute-efficient run at B_crit processes, single epoch:
        # D(C_min) = 4e10 (C_min / PF-day)^0.26; with L(D) (eq. 1.2) and L(C_min) (eq. 1.3) it fixes
        # the point C* where the two laws contradict (the paper quotes C* ~ 1e4 PF-days, N* ~ 1e12,
        # D* ~ 1e12, L* ~ 1.7 nats, "highly uncertain").
        "data_rate": {"coef": 4e10, "exponent": 0.26},
        # Fig. 5: loss moves a few percent over d_model / n_layer in 20-200 at fixed N
        "aspect": 50.0,
        "fitted_C_max": 10 * PF_DAY,  # the largest budgets of Figs. 13-14, about 10 PF-days (read off the figures)
        "sources": {
            "params": "Kaplan et al. 2020, eqs. (1.1)-(1.6), table 1 summary (PAPER in fitting/laws.py)",
            "allocation": "Kaplan et al. 2020, section 6.1 and appendix B: minimise L(N, S_min) at C_min = 6 N B_crit S_min; "
                          "trained at B = B_crit the run spends C = 2 C_min (S = 2 S_min, eq. 5.4)",
            "lr": "Kaplan et al. 2020, appendix D.6, eq. (D.1)",
            "data_rate": "Kaplan et al. 2020, section 6.3, eq. (6.7)",
            "aspect": "Kaplan et al. 2020, Fig. 5 (aspect ratio 20-200 within a few percent)",
            "fitted_C_max": "Kaplan et al. 2020, Figs. 13-14 (approximate, read off the plots)",
        },
    },
    "chinchilla": {
        "law": "chinchilla",
        "params": PAPER["chinchilla"],
        "compute": "6ND, N all parameters",
        "aspect": 8192 / 80,             # Chinchilla 70B: 80 layers, d_model 8192 (Hoffmann et al. 2022, Table 4)
        "head_dim": 128,
        "fitted_C_max": 3e21,           # the largest isoFLOP budget of Hoffmann et al. 2022, Fig. 3
        "sources": {
            "params": "Hoffmann et al. 2022, eq. (10), approach 3 (E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28)",
            "allocation": "Hoffmann et al. 2022, eq. (4) with eq. (10)'s constants: N_opt = G (C/6)^a",
            "aspect": "Hoffmann et al. 2022, Table 4 (Chinchilla: 80 layers, d_model 8192)",
            "fitted_C_max": "Hoffmann et al. 2022, Fig. 3 (isoFLOP budgets 6e18-3e21)",
        },
    },
    "epoch": {
        "law": "chinchilla",
        # Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt" (arXiv:2404.10102), their
        # refit of approach 3 on the data read off Hoffmann et al.'s Fig. 4 (standard errors E 0.03,
        # A 124.58, B 1293.23, alpha 0.02, beta 0.02).
        "params": {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658},
        "compute": "6ND, N all parameters",
        "aspect": 8192 / 80,
        "head_dim": 128,
        "fitted_C_max": 1.3e22,          # the largest C of their digitised table (svg_extracted_data.csv)
        "sources": {
            "params": "Besiroglu et al. 2024, arXiv:2404.10102, Table 1 (E 1.8172, A 482.01, B 2085.43, alpha 0.3478, "
                      "beta 0.3658)",
            "allocation": "Hoffmann et al. 2022, eq. (4), at Besiroglu et al.'s constants",
            "aspect": "Hoffmann et al. 2022, Table 4 (Chinchilla: 80 layers, d_model 8192)",
            "fitted_C_max": "Besiroglu et al. 2024, the largest C (1.3e22) in their digitised data of Hoffmann et al. Fig. 4",
        },
    },
    "deepseek": {
        "law": "deepseek",
        # M_opt = 0.1715 C^0.5243, D_opt = 5.8316 C^0.4757 (C = M D, M non-embedding FLOPs per token
        # with attention, 72 n_layer d_model^2 + 6 n_layer d_model l_seq); B_opt = 0.2920 C^0.3271
        # tokens, eta_opt = 0.3118 C^-0.1250.
        "params": {"M_coef": 0.1715, "M_exp": 0.5243, "D_coef": 5.8316, "D_exp": 0.4757,
                   "B_coef": 0.2920, "B_exp": 0.3271, "lr_coef": 0.3118, "lr_exp": -0.1250},
        "compute": "nonembedding (C = M D, M with attention)",
        "aspect": 8192 / 95,             # DeepSeek LLM 67B: 95 layers, d_model 8192 (their Table 2)
        "head_dim": 128,
        "fitted_C_max": 3e20,            # their isoFLOP budgets, 1e17 to 3e20 FLOPs
        "sources": {
            "params": "DeepSeek-AI 2024, DeepSeek LLM (arXiv:2401.02954): eq. (1) B_opt and eta_opt, eq. (4) M_opt and "
                      "D_opt",
            "aspect": "DeepSeek-AI 2024, Table 2 (67B: 95 layers, d_model 8192)",
            "fitted_C_max": "DeepSeek-AI 2024, section 3 (compute budgets 1e17-3e20 FLOPs)",
        },
    },
}
