"""The de-embedding and the cross-entropy in one op, chunked over rows so the full (N, V) fp32
logits never exist (at GPT-2 scale they are the largest activation: 16k x 50k x 4 B = 3.3 GB).

    loss = linear_cross_entropy(h, w, targets)         # mean over rows of -log softmax(h W^T)[t]
    loss = linear_cross_entropy_ref(h, w, targets)     # F.linear, then fp32 F.cross_entropy

Idea (Liger-Kernel's fused linear cross-entropy, written here in PyTorch): for each chunk of
rows, logits = h_c W^T (working dtype), upcast to fp32, log-sum-exp, the loss, and at once the
logits' gradient (softmax - onehot) / N, which goes straight into dh_c = g W and dW += g^T h_c
(fp32 accumulation).  The chunk's logits are then dropped; backward only scales the saved dh,
dW by the incoming gradient.  Chunk rows ~ N / ceil(V / d): a chunk's logits are about the
size of h.

FLOPs (a multiply-add is 2), the same as the unfused pair, so the ledger's model view (and the
executed view, booked from the same formulas) does not change: the matmuls are the deembed
row's 2*N*d*V forward and 2 x that backward (dh and dW, run during the forward here, booked as
backward); per logit max, subtract, exp, sum (LOSS_FWD = 4) and p = exp(x - lse), scale by 1/N
(LOSS_BWD = 3), per row LOSS_FWD_PER_ROW and LOSS_BWD_PER_ROW (kernels/flop_counts.py).
Rounding differs from the unfused path (chunked sums, dW summed chunk by chunk): within 1e-6
relative in fp32.
"""

import math

import torch
import torch.nn.functional as F


def linear_cross_entropy_ref(h, w, targets, upcast=False):
    """h (N, d), w (V, d), targets (N,) int64: mean cross-entropy of h W^T, in fp32 (float64 upcast)."""
    if upcast:
        h, w = h.double(), w.double()
    logits = F.linear(h, w)
    return F.cross_entropy(logits.float() if not upcast else logits, targets)


def chunk_rows(N: int, V: int, d: int) -> int:
    """Rows per chunk: a power of two near N / ceil(V / d), so a chunk's logits ~ h's size."""
    n = max(1, math.ceil(N / max(1, math.ceil(V / d))))
    return min(N, 1 << (n - 1).bit_length())


class LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, targets, chunk):
        N = h.shape[0]
        grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        dh = torch.empty_like(h) if grad else None
        dw = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if grad else None
        for s in range(0, N, chunk):
            hc, tc = h[s:s + chunk], targets[s:s + chunk]
            logits = (hc @ w.t()).float()  # (n, V): fp32 for the exp-sum, as the unfused path
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            loss += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum()
            if grad:
                g = torch.exp(logits - lse[:, None])  # softmax
                g.scatter_add_(1, tc[:, None], torch.full_like(lse[:, None], -1.0))
                g = (g / N).to(h.dtype)  # d(mean loss) / d logits, in the matmuls' dtype
                dh[s:s + chunk] = g @ w
                dw += (g.t() @ hc).float()
        if grad:
            ctx.save_for_backward(dh, dw.to(w.dtype))
        return loss / N

    @staticmethod
    def backward(ctx, dloss):
        dh, dw = ctx.saved_tensors
        return dh * dloss.to(dh.dtype), dw * dloss.to(dw.dtype), None, None


def linear_cross_entropy(h, w, targets, chunk=None):
    """Mean cross-entropy of the logits h W^T against ``targets``, never holding all of them.
    h (N, d), w (V, d) (same dtype), targets (N,) int64; ``chunk`` rows (default chunk_rows)."""
    if h.dim() != 2 or w.dim() != 2 or h.shape[1] != w.shape[1] or targets.shape != h.shape[:1]:
        raise ValueError(f"linear_cross_entropy wants h (N, d), w (V, d), targets (N,); got "
                         f"{tuple(h.shape)}, {tuple(w.shape)}, {tuple(targets.shape)}")
    chunk = chunk or chunk_rows(h.shape[0], w.shape[0], w.shape[1])
    if not (h.requires_grad or w.requires_grad) or not torch.is_grad_enabled():
        with torch.no_grad():  # eval: the loss alone, still chunked
            return _loss_only(h, w, targets, chunk)
    return LinearCrossEntropyFunction.apply(h, w, targets, chunk)


def _loss_only(h, w, targets, chunk):
    N = h.shape[0]
    loss = torch.zeros((), dtype=torch.float32, device=h.device)
    for s in range(0, N, chunk):
        logits = (h[s:s + chunk] @ w.t()).float()
        loss += (torch.logsumexp(logits, -1) - logits.gather(1, targets[s:s + chunk, None]).squeeze(1)).sum()
    return loss / N
