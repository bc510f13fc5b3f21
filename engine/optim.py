"""Adafactor whose learning rate is the step size (``--optimizer adafactor``).

    opt = Adafactor(model.parameters(), lr=3e-3, weight_decay=0.1)                 # lr as AdamW's
    opt = Adafactor(model.parameters(), lr=1e-2, scale_parameter=True)             # Shazeer & Stern's scaling

Shazeer & Stern 2018: no first moment; the second moment of a matrix is factored into an
exponential average of its rows' and its columns' mean squared gradients (of a vector, kept
whole), with beta2_t = 1 - t^-0.8; the update grad / sqrt(v) is clipped to RMS <= d (1).  The
paper (and torch.optim.Adafactor, which follows it) also multiplies the step by the parameter's
RMS (at least eps2 = 1e-3) and caps it with the relative step 1/sqrt(t).  With both, ``lr`` is
not a step size: a weight of RMS 0.02 at lr 3e-3 moves 6e-5 per step, and a 2-layer d_model 32
model's loss stays flat for 30 steps (8.32 to 8.33) where AdamW at the same lr falls.  Large
models are trained with both off (T5X and PaLM-style set-ups, HF's ``scale_parameter=False,
relative_step=False``): the step is ``lr`` times the clipped update, so the lr a user knows from
AdamW, under the run's own schedule (train.lr_at), works here.  This class does that; the
relative step is gone (the schedule is the trainer's), parameter scaling is kept behind
``scale_parameter`` (``--adafactor-scale-parameter``).

Its work per element is flops.adafactor_flops's (kernels/flop_counts.py derives the counts).
State per parameter: ``step`` (a float tensor), ``row_var`` and ``col_var`` (matrices: the last
two dimensions factored, leading ones a batch) or ``variance`` (vectors): tensors only, so a
checkpoint of it loads with ``weights_only=True``.
"""

from __future__ import annotations

import torch


class Adafactor(torch.optim.Optimizer):
    def __init__(self, params, lr: float, beta2_decay: float = -0.8, eps: tuple = (None, 1e-3), d: float = 1.0,
                 weight_decay: float = 0.0, scale_parameter: bool = False):
        if lr <= 0:
            raise ValueError(f"Adafactor: lr must be positive, got {lr}")
        if beta2_decay > 0:
            raise ValueError(f"Adafactor: beta2_decay must be <= 0, got {beta2_decay}")
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps1=eps[0], eps2=eps[1], d=d, weight_decay=weight_decay,
                        scale_parameter=scale_parameter)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, d = group["lr"], group["weight_decay"], group["d"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("Adafactor does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    if grad.dim() > 1:
                        state["row_var"] = grad.new_zeros(grad.shape[:-1] + (1,))                 # (..., R, 1)
                        state["col_var"] = grad.new_zeros(grad.shape[:-2] + (1, grad.shape[-1]))  # (..., 1, C)
                    else:
                        state["variance"] = torch.zeros_like(grad)
                eps1 = group["eps1"] if group["eps1"] is not None else torch.finfo(p.dtype).eps
                state["step"] += 1
                t = state["step"].item()
                one_minus_beta2 = t ** group["beta2_decay"]
                alpha = lr
                if group["scale_parameter"]:
                    alpha *= max(group["eps2"], p.norm(2).item() / (p.numel() ** 0.5))
                if wd != 0:
                    p.mul_(1 - lr * wd)  # decoupled, as AdamW's
                if grad.dim() > 1:
                    row_var, col_var = state["row_var"], state["col_var"]
                    row_var.lerp_(torch.norm(grad, dim=-1, keepdim=True).square_().div_(grad.size(-1)), one_minus_beta2)
                    col_var.lerp_(torch.norm(grad, dim=-2, keepdim=True).square_().div_(grad.size(-2)), one_minus_beta2)
                    var = row_var @ col_var                                            # (..., R, C)
                    var.div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))
                else:
                    state["variance"].lerp_(grad * grad, one_minus_beta2)
                    var = state["variance"].clone()
                update = var.clamp_(min=eps1 * eps1).rsqrt_().mul_(grad)  # eps1 squared: it is sqrt'ed
                denom = max(1.0, update.norm(2).item() / ((update.numel() ** 0.5) * d))  # clip RMS(update) to d
                p.add_(update, alpha=-alpha / denom)
        return loss


__all__ = ["Adafactor"]
