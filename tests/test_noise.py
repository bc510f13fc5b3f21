"""Gradient noise scale (McCandlish et al. 2018): the two-batch-size estimator recovers a known
B_simple = tr(Sigma)/|G|^2 on linear regression, through real backward passes and the same
gradient-accumulation bookkeeping the trainer uses."""

import math

import pytest
import torch

from flopscale.engine.noise import MicroBatchNorms, NoiseScaleEstimator, unbiased_estimates


def _regression_b_simple(d, delta_sq, sigma_sq):
    """Per-example loss 0.5 (x.w - y)^2 with x ~ N(0, I), y = x.w* + eps, eps ~ N(0, sigma^2), at
    w = w* + delta.  The per-example gradient is g = x (x.delta - eps), so G = delta and, by the
    Gaussian fourth moment E[x x^T (x.delta)^2] = |delta|^2 I + 2 delta delta^T,
    Sigma = (|delta|^2 + sigma^2) I + delta delta^T, tr(Sigma) = d (|delta|^2 + sigma^2) + |delta|^2."""
    return (d * (delta_sq + sigma_sq) + delta_sq) / delta_sq


@pytest.mark.parametrize("b_small,accum", [(4, 4), (16, 2)])
def test_recovers_known_b_simple_linear_regression(b_small, accum):
    torch.manual_seed(0)
    d, sigma = 24, 1.0
    w_star = torch.randn(d, dtype=torch.float64)
    delta = torch.randn(d, dtype=torch.float64)
    delta *= 0.7 / delta.norm()
    w = torch.nn.Parameter(w_star + delta)
    want = _regression_b_simple(d, float(delta.norm() ** 2), sigma ** 2)  # ~ 74
    est = NoiseScaleEstimator(ema=0.998)
    for step in range(3000):
        norms = MicroBatchNorms([w], accum)
        for _ in range(accum):
            x = torch.randn(b_small, d, dtype=torch.float64)
            y = x @ w_star + sigma * torch.randn(b_small, dtype=torch.float64)
            loss = 0.5 * ((x @ w - y) ** 2).mean()
            (loss / accum).backward()
            norms.after_backward()
        est.update(norms.mean_sq, b_small, float(w.grad.pow(2).sum()), b_small * accum)
        w.grad = None
    got = est.b_simple
    print(f"B_simple: estimated {got:.2f}, exact {want:.2f} (B_small {b_small}, B_big {b_small * accum})")
    assert abs(got / want - 1) < 0.10


def test_micro_batch_norms_match_separate_gradients():
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.randn(5, 3))
    xs = [torch.randn(7, 5) for _ in range(3)]
    sq = []
    for x in xs:  # each micro-batch's own gradient, computed alone
        w.grad = None
        (x @ w).square().mean().backward()
        sq.append(float(w.grad.pow(2).sum()))
    w.grad = None
    norms = MicroBatchNorms([w], 3)
    for x in xs:
        ((x @ w).square().mean() / 3).backward()
        norms.after_backward()
    assert norms.mean_sq == pytest.approx(sum(sq) / 3, rel=1e-5)


def test_unbiased_estimates_exact_in_expectation():
    # E|G_B|^2 = |G|^2 + tr(Sigma)/B exactly: plugging expectations in returns the truth
    g2, tr = 2.0, 50.0
    got = unbiased_estimates(g2 + tr / 4, 4, g2 + tr / 32, 32)
    assert got == pytest.approx((g2, tr))
    with pytest.raises(ValueError, match="b_small < b_big"):
        unbiased_estimates(1.0, 8, 1.0, 8)


def test_ema_ratio_not_ratio_of_ratios_and_state_roundtrip():
    est = NoiseScaleEstimator(ema=0.5)
    assert est.b_simple is None
    est.update(3.0, 1, 1.0, 3)   # |G|^2 = 0, tr = 3: noise-dominated, no ratio yet
    assert est.b_simple is None
    est.update(6.0, 1, 4.0, 3)   # |G|^2 = 3, tr = 3
    # the ratio of the two EMAs, 0.5*(0.5*3) + 0.5*3 over 0.5*(0.5*0) + 0.5*3, not a mean of ratios
    assert est.b_simple == pytest.approx((0.25 * 3 + 0.5 * 3) / (0.25 * 0 + 0.5 * 3))
    other = NoiseScaleEstimator()
    other.load_state_dict(est.state_dict())
    assert other.b_simple == est.b_simple and math.isclose(other.g2, est.g2)
