"""Causal multi-head attention, softmax scale 1/sqrt(D).

Reference first (the ``torch`` backend, the tests and the benchmarks all call it); the Triton
flash-style kernels, launchers and autograd Function follow below it.
"""

import functools
import math

import torch

from .flop_counts import causal_tile_pairs, cdiv, softmax_flops


def attention_ref(q, k, v, causal=True, upcast=False):
    """Eager attention that materialises the full (T, T) score matrix.

    q, k, v: (B, H, T, D).  Returns (B, H, T, D).  Upcast computes in float64.
    """
    dtype = q.dtype
    if upcast:
        q, k, v = q.double(), k.double(), v.double()
    T, D = q.shape[-2], q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))  # (B, H, T, T)
    if causal:
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu_(1)
        scores = scores.masked_fill_(mask, float("-inf"))  # in place: one (B, H, T, T) pass and buffer fewer
    # softmax in float32 at least: fp16/bf16 exp-sums lose too many bits over long rows
    p = torch.softmax(scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores, dim=-1)
    o = p.to(v.dtype) @ v  # (B, H, T, D)
    return o.to(dtype)


class _EagerAttention(torch.autograd.Function):
    """``attention_ref`` (no upcast) as one autograd node: the torch backend's attention.

    The same ops autograd records for attention_ref, in the same order and on the same layouts
    (``torch.matmul`` on (B, H, T, D) views is a bmm of their (B*H, ., .) copies; bmm's backward
    is grad @ mat2^T and mat1^T @ grad), so forward and backward are bit for bit attention_ref's.
    What it saves: the scale and the mask are applied in place instead of in new (B, H, T, T)
    buffers, the mask as an add (masked_fill with a broadcast mask is ~10x slower on CPU), the
    backward skips zeroing what is zero already, and autograd keeps one node, not six.
    Saved for the backward: the bmm operands and the probabilities, as autograd saves them.
    """

    @staticmethod
    def forward(ctx, q, k, v, causal):
        B, H, T, D = q.shape
        q_r = q.reshape(B * H, T, D)
        kt_r = k.transpose(-2, -1).reshape(B * H, D, T)
        scores = torch.bmm(q_r, kt_r).view(B, H, T, T).mul_(1.0 / math.sqrt(D))
        if causal:  # x + 0 = x and x + -inf = -inf: masked_fill's result, in a tenth of its time
            scores.add_(torch.full((T, T), float("-inf"), dtype=scores.dtype, device=q.device).triu_(1))
        low = scores.dtype in (torch.float16, torch.bfloat16)
        p = torch.softmax(scores.float() if low else scores, dim=-1)
        pv_r = p.to(v.dtype).reshape(B * H, T, T)
        v_r = v.reshape(B * H, T, D)
        o = torch.bmm(pv_r, v_r).view(B, H, T, D)
        ctx.save_for_backward(q_r, kt_r, p, pv_r, v_r)
        ctx.shape, ctx.scores_dtype = (B, H, T, D), scores.dtype
        return o

    @staticmethod
    def backward(ctx, do):
        q_r, kt_r, p, pv_r, v_r = ctx.saved_tensors
        B, H, T, D = ctx.shape
        do_r = do.reshape(B * H, T, D)
        dpv = torch.bmm(do_r, v_r.transpose(1, 2)).view(B, H, T, T)
        dv = torch.bmm(pv_r.transpose(1, 2), do_r).view(B, H, T, D)
        # The masked entries of ds are p * (...) with p exactly 0 there: zero already (masked_fill's
        # +0, or -0: a sign no sum that holds one unmasked term can show), so no pass zeroes them.
        ds = torch._softmax_backward_data(dpv.to(p.dtype), p, -1, p.dtype).to(ctx.scores_dtype)
        ds_r = ds.mul_(1.0 / math.sqrt(D)).view(B * H, T, T)
        dq = torch.bmm(ds_r, kt_r.transpose(1, 2)).view(B, H, T, D)
        dk = torch.bmm(q_r.transpose(1, 2), ds_r).view(B, H, D, T).transpose(-2, -1)
        return dq, dk, dv, None


def attention_eager(q, k, v, causal=True):
    """The torch backend's attention: attention_ref's numbers, bit for bit, in one autograd node.
    Under autocast the inputs take the autocast dtype first, as matmul's would."""
    dev = q.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        q, k, v = q.to(dt), k.to(dt), v.to(dt)
    return _EagerAttention.apply(q, k, v, causal)


def attention_executed_ref(B, H, T, D, causal=True):
    """FLOPs the eager reference really computes: full T x T scores, masked afterwards.

    Convention: FLOPs, a multiply-add is 2.  Forward: QK^T (2*T*T*D) + PV (2*T*T*D) per (b, h).
    Backward of eager attention: dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q, four
    T x T x D matmuls = exactly 2x forward.  Softmax over all T*T elements, masked or not.
    """
    fwd = 4 * B * H * T * T * D
    return {"attention_mask": (fwd, 2 * fwd), "softmax": softmax_flops(B * H * T, B * H * T * T)}


# =============================================================================================
# Triton: flash-style attention (online softmax, no T x T matrix in memory).
#
# Forward: one program per (query block, b*h); K/V blocks stream through, the running max and
# sum rescale the accumulator, and the log-sum-exp (base 2) is saved for the backward.
# Backward (no atomics): a preprocess for delta = rowsum(dO * O); one kernel per key block
# that loops over query blocks and accumulates dK, dV; one kernel per query block that loops
# over key blocks and accumulates dQ.  Both recompute P from Q, K and the saved LSE.
# Head dims that are not powers of two (40, 80) run in a BLOCK_D = next_power_of_2(D) tile,
# masked on load and store; the tail of T is masked the same way.
# =============================================================================================
from . import accounting
from .library import compiling, flop_formula
from .triton_utils import INTERPRET, add_count, best_kwargs, f32_dot, launch_counter, mma, tl, triton


def _fwd_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    # H100 evidence from the Triton tutorial and FA2: 128-row query tiles, 64/128-key tiles,
    # 4-8 warps, 2-4 stages.  Causal needs BLOCK_M % BLOCK_N == 0 (the diagonal split).  The
    # tutorial drops 8 warps on Hopper below a 128x128 tile (128x64 at 8 warps left out); at
    # D=128 a 128x128 tile's K and V stages take 64 KB each, so 2 stages is the safe depth
    # (3 may not fit: the autotuner skips a config that runs out of shared memory).
    return [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=4),
    ]


def _dkdv_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    # Keys are the stationary operand: wide key tiles, narrow query tiles (BLOCK_N % BLOCK_M == 0).
    # 32x128 at 4 warps, 5 stages is the Triton tutorial's Hopper choice.
    return [
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 128}, num_warps=4, num_stages=5),
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 128}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=4, num_stages=4),
    ]


def _dq_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    # Queries are stationary: wide query tiles, narrow key tiles (BLOCK_M % BLOCK_N == 0).
    # 128x32 at 4 warps, 5 stages is the Triton tutorial's Hopper choice.
    return [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=4, num_stages=5),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=4),
    ]


@triton.jit
def _attention_fwd_inner(acc, l_i, m_i, q, K, V, offs_m, start, stop, T, qk_scale, CNT,
                         D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr,
                         F32_DOT: tl.constexpr, COUNT_FLOPS: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in tl.range(start, stop, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = offs_d[None, :] < D
        if MASK:
            kv_mask = kv_mask & (offs_n[:, None] < T)
        k = tl.load(K + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)  # (BN, BD)
        v = tl.load(V + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)  # (BN, BD)
        s = mma(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), F32_DOT)  # (BM, BN) raw
        if MASK:
            valid = offs_n[None, :] < T
            if CAUSAL:
                valid = valid & (offs_m[:, None] >= offs_n[None, :])
            s = tl.where(valid, s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])  # (BM, BN)
        else:
            # Off the diagonal: take the max of the raw scores (qk_scale > 0 commutes with max)
            # and fold the scale into one FMA per element, s * qk_scale - m.
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            p = tl.math.exp2(s * qk_scale - m_new[:, None])  # (BM, BN)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = mma(p.to(v.dtype), v, acc * alpha[:, None], F32_DOT)
        m_i = m_new
        if COUNT_FLOPS:  # two (BM, BN, BD) matmuls, 2 FLOPs per multiply-add
            tl.atomic_add(CNT, 4 * BLOCK_M * BLOCK_N * BLOCK_D)
    return acc, l_i, m_i


@triton.autotune(configs=_fwd_configs(), key=["T", "D", "CAUSAL"], reset_to_zero=["CNT"])
@triton.jit
def _attention_fwd_kernel(Q, K, V, O, LSE, CNT, T, qk_scale,
                          D: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                          F32_DOT: tl.constexpr, COUNT_FLOPS: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    if CAUSAL:  # the last query blocks see the most keys: launch them first, light ones fill the tail
        pid_m = tl.num_programs(0) - 1 - pid_m
    start_m = pid_m * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    Q += bh * T * D  # (T, D) slices of contiguous (B, H, T, D)
    K += bh * T * D
    V += bh * T * D
    O += bh * T * D
    LSE += bh * T
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_mask = (offs_m[:, None] < T) & (offs_d[None, :] < D)
    q = tl.load(Q + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)  # (BM, BD)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if CAUSAL:
        # Key blocks wholly left of the diagonal need no mask; the diagonal block(s) do.
        acc, l_i, m_i = _attention_fwd_inner(acc, l_i, m_i, q, K, V, offs_m, 0, start_m, T,
                                             qk_scale, CNT, D, BLOCK_D, BLOCK_M, BLOCK_N, CAUSAL,
                                             False, F32_DOT, COUNT_FLOPS)
        acc, l_i, m_i = _attention_fwd_inner(acc, l_i, m_i, q, K, V, offs_m, start_m,
                                             tl.minimum(start_m + BLOCK_M, T), T, qk_scale, CNT,
                                             D, BLOCK_D, BLOCK_M, BLOCK_N, CAUSAL, True, F32_DOT,
                                             COUNT_FLOPS)
    else:
        full = (T // BLOCK_N) * BLOCK_N  # whole key blocks, then the ragged tail masked
        acc, l_i, m_i = _attention_fwd_inner(acc, l_i, m_i, q, K, V, offs_m, 0, full, T,
                                             qk_scale, CNT, D, BLOCK_D, BLOCK_M, BLOCK_N, CAUSAL,
                                             False, F32_DOT, COUNT_FLOPS)
        acc, l_i, m_i = _attention_fwd_inner(acc, l_i, m_i, q, K, V, offs_m, full, T, T,
                                             qk_scale, CNT, D, BLOCK_D, BLOCK_M, BLOCK_N, CAUSAL,
                                             True, F32_DOT, COUNT_FLOPS)
    o = acc / l_i[:, None]
    tl.store(O + offs_m[:, None] * D + offs_d[None, :], o.to(O.dtype.element_ty), mask=q_mask)
    tl.store(LSE + offs_m, m_i + tl.math.log2(l_i), mask=offs_m < T)  # base 2, scaled units


@triton.jit
def _attention_bwd_preprocess_kernel(O, DO, DELTA, T, D: tl.constexpr, BLOCK_D: tl.constexpr,
                                     BLOCK_M: tl.constexpr):
    # delta_i = sum_j P_ij dP_ij = rowsum(dO_i * O_i): the softmax backward's row term.
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < T) & (offs_d[None, :] < D)
    ptrs = bh * T * D + offs_m[:, None] * D + offs_d[None, :]
    o = tl.load(O + ptrs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * T + offs_m, tl.sum(o * do, 1), mask=offs_m < T)


@triton.jit
def _attention_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, offs_n, start, stop, T,
                              qk_scale, CNT, D: tl.constexpr, BLOCK_D: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
                              F32_DOT: tl.constexpr, COUNT_FLOPS: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    for start_m in tl.range(start, stop, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < T
        q_mask = row_ok[:, None] & (offs_d[None, :] < D)
        q = tl.load(Q + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)    # (BM, BD)
        do = tl.load(DO + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)  # (BM, BD)
        # Rows past T get lse = +inf, so their P is exactly 0 and they add nothing.
        lse = tl.load(LSE + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
        s_t = mma(k, tl.trans(q), tl.zeros([BLOCK_N, BLOCK_M], tl.float32), F32_DOT)  # (BN, BM)
        p_t = tl.math.exp2(s_t * qk_scale - lse[None, :])
        if MASK:
            p_t = tl.where(offs_m[None, :] >= offs_n[:, None], p_t, 0.0)
        dv = mma(p_t.to(do.dtype), do, dv, F32_DOT)
        dp_t = mma(v, tl.trans(do), tl.zeros([BLOCK_N, BLOCK_M], tl.float32), F32_DOT)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = mma(ds_t.to(q.dtype), q, dk, F32_DOT)
        if COUNT_FLOPS:  # four (BN, BM, BD) matmuls: S^T, dV, dP^T, dK
            tl.atomic_add(CNT, 8 * BLOCK_M * BLOCK_N * BLOCK_D)
    return dk, dv


@triton.autotune(configs=_dkdv_configs(), key=["T", "D", "CAUSAL"], reset_to_zero=["CNT"])
@triton.jit
def _attention_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, CNT, T, qk_scale, sm_scale,
                               D: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                               F32_DOT: tl.constexpr, COUNT_FLOPS: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1).to(tl.int64)
    Q += bh * T * D
    K += bh * T * D
    V += bh * T * D
    DO += bh * T * D
    DK += bh * T * D
    DV += bh * T * D
    LSE += bh * T
    DELTA += bh * T
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < T) & (offs_d[None, :] < D)
    # Keys past T load as 0: their dK, dV are never stored, and with k = 0 they cannot reach dQ.
    k = tl.load(K + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)  # (BN, BD)
    v = tl.load(V + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)  # (BN, BD)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if CAUSAL:
        # Queries before start_n cannot see these keys; the first BLOCK_N queries sit on the
        # diagonal (masked), the rest see every key of the block.
        diag_end = tl.minimum(start_n + BLOCK_N, T)
        dk, dv = _attention_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, offs_n, start_n,
                                           diag_end, T, qk_scale, CNT, D, BLOCK_D, BLOCK_M,
                                           BLOCK_N, True, F32_DOT, COUNT_FLOPS)
        dk, dv = _attention_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, offs_n,
                                           start_n + BLOCK_N, T, T, qk_scale, CNT, D, BLOCK_D,
                                           BLOCK_M, BLOCK_N, False, F32_DOT, COUNT_FLOPS)
    else:
        dk, dv = _attention_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, offs_n, 0, T, T,
                                           qk_scale, CNT, D, BLOCK_D, BLOCK_M, BLOCK_N, False,
                                           F32_DOT, COUNT_FLOPS)
    dk *= sm_scale  # dS was taken w.r.t. the scaled scores
    tl.store(DK + offs_n[:, None] * D + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + offs_n[:, None] * D + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attention_bwd_dq_inner(dq, q, do, lse, delta, K, V, offs_m, start, stop, T, qk_scale, CNT,
                            D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, MASK: tl.constexpr, F32_DOT: tl.constexpr,
                            COUNT_FLOPS: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in tl.range(start, stop, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < T) & (offs_d[None, :] < D)
        k = tl.load(K + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)  # (BN, BD)
        v = tl.load(V + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)  # (BN, BD)
        s = mma(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), F32_DOT)     # (BM, BN)
        p = tl.math.exp2(s * qk_scale - lse[:, None])
        if MASK:
            p = tl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
        dp = mma(do, tl.trans(v), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), F32_DOT)
        ds = p * (dp - delta[:, None])
        dq = mma(ds.to(k.dtype), k, dq, F32_DOT)
        if COUNT_FLOPS:  # three (BM, BN, BD) matmuls: S, dP, dQ
            tl.atomic_add(CNT, 6 * BLOCK_M * BLOCK_N * BLOCK_D)
    return dq


@triton.autotune(configs=_dq_configs(), key=["T", "D", "CAUSAL"], reset_to_zero=["CNT"])
@triton.jit
def _attention_bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, CNT, T, qk_scale, sm_scale,
                             D: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                             F32_DOT: tl.constexpr, COUNT_FLOPS: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    if CAUSAL:  # heaviest query blocks first, as in the forward
        pid_m = tl.num_programs(0) - 1 - pid_m
    start_m = pid_m * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    Q += bh * T * D
    K += bh * T * D
    V += bh * T * D
    DO += bh * T * D
    DQ += bh * T * D
    LSE += bh * T
    DELTA += bh * T
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < T
    q_mask = row_ok[:, None] & (offs_d[None, :] < D)
    q = tl.load(Q + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)    # (BM, BD)
    do = tl.load(DO + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)  # (BM, BD)
    lse = tl.load(LSE + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if CAUSAL:
        dq = _attention_bwd_dq_inner(dq, q, do, lse, delta, K, V, offs_m, 0, start_m, T,
                                     qk_scale, CNT, D, BLOCK_D, BLOCK_M, BLOCK_N, False, F32_DOT,
                                     COUNT_FLOPS)
        dq = _attention_bwd_dq_inner(dq, q, do, lse, delta, K, V, offs_m, start_m,
                                     tl.minimum(start_m + BLOCK_M, T), T, qk_scale, CNT, D,
                                     BLOCK_D, BLOCK_M, BLOCK_N, True, F32_DOT, COUNT_FLOPS)
    else:
        dq = _attention_bwd_dq_inner(dq, q, do, lse, delta, K, V, offs_m, 0, T, T, qk_scale,
                                     CNT, D, BLOCK_D, BLOCK_M, BLOCK_N, False, F32_DOT,
                                     COUNT_FLOPS)
    dq *= sm_scale
    tl.store(DQ + offs_m[:, None] * D + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=q_mask)


# --- launchers ---------------------------------------------------------------------------------
_LOG2E = 1.4426950408889634


def _block_d(D):
    return max(16, triton.next_power_of_2(D))  # tl.dot needs >= 16 on each side


def _check(q, k, v):
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"attention wants q, k, v of one shape (B, H, T, D); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"attention supports float32, float16, bfloat16; got {q.dtype}")
    if q.shape[-1] > 256:
        raise ValueError(f"attention supports head dims up to 256; got {q.shape[-1]}")


# --- what the launches execute ------------------------------------------------------------------
# Convention: FLOPs, a multiply-add is 2; matmuls run on whole (BLOCK_M, BLOCK_N, BLOCK_D) tiles,
# so the ragged tail of T, the causal diagonal and the head-dim padding (40 -> 64) all count.
# Per visited tile pair: the forward does 2 matmuls (S = QK^T, PV); the backward recomputes, the
# dK/dV kernel doing 4 (S^T, dV, dP^T, dK) and the dQ kernel 3 (S, dP, dQ), 7 in all against
# eager's 4.  Softmax: softmax_flops over the score elements each kernel touches, its per-row
# term over the query rows of that kernel's padded grid; the backward kernels recompute P
# (forward constants) and apply the softmax backward.  The kernels' COUNT_FLOPS atomics count
# the same matmul FLOPs independently (tests/test_attention.py holds them equal).
# Each function is the row tuple one launch books (kernels/accounting.py), cached per (shape,
# config): a launch costs a cache lookup, not a recount.
_MATMULS = {"fwd": 2, "dkdv": 4, "dq": 3}


@functools.lru_cache(maxsize=None)
def _executed_rows(kind, B, H, T, D, causal, BM, BN):
    """((row, FLOPs), ...) of one launch of kernel ``kind`` ("fwd", "dkdv", "dq") run with
    (BLOCK_M, BLOCK_N) = (BM, BN)."""
    if causal and (BM % BN if kind != "dkdv" else BN % BM):
        # The diagonal split of the causal loops needs it; so does causal_tile_pairs' count.
        raise ValueError(f"causal attention's {kind} kernel needs tiles that divide each other "
                         f"the kernel's way; got BLOCK_M={BM}, BLOCK_N={BN}")
    pairs = B * H * causal_tile_pairs(T, BM, BN, causal)
    mm = pairs * _MATMULS[kind] * 2 * BM * BN * _block_d(D)
    rows_pad, elems = B * H * cdiv(T, BM) * BM, pairs * BM * BN
    sm_fwd, sm_bwd = softmax_flops(rows_pad, elems)
    return (("attention_mask", mm), ("softmax", sm_fwd if kind == "fwd" else sm_fwd + sm_bwd))


def attention_executed(B, H, T, D, causal=True, tiles=None):
    """{row: (fwd, bwd)} the Triton kernels compute for one call whose kernels ran with
    ``tiles`` = {"fwd": (BM, BN), "dkdv": (BM, BN), "dq": (BM, BN)} (default: each kernel's
    first autotune config, the only one under the interpreter).  What the launches book."""
    tiles = tiles or configured_tiles()
    out = {"attention_mask": [0, 0], "softmax": [0, 0]}
    for kind, (BM, BN) in tiles.items():
        for row, f in _executed_rows(kind, B, H, T, D, causal, BM, BN):
            out[row][kind != "fwd"] += f
    return {row: tuple(v) for row, v in out.items()}


def configured_tiles():
    """{kind: (BLOCK_M, BLOCK_N)} of each kernel's first autotune config."""
    return {kind: (k.configs[0].kwargs["BLOCK_M"], k.configs[0].kwargs["BLOCK_N"])
            for kind, k in (("fwd", _attention_fwd_kernel), ("dkdv", _attention_bwd_dkdv_kernel),
                            ("dq", _attention_bwd_dq_kernel))}


def _book(kind, kernel, sinks, B, H, T, D, causal):
    """Book the launch just made of ``kernel`` into ``sinks``, with the config it ran."""
    c = best_kwargs(kernel)
    if sinks:
        accounting.book(sinks, _executed_rows(kind, B, H, T, D, causal, c["BLOCK_M"], c["BLOCK_N"]),
                        kind != "fwd")


def attention_forward(q, k, v, causal=True, counter=None, sinks=None):
    """Returns (o, lse): o (B, H, T, D) in q's dtype, lse (B, H, T) float32 in base 2 units.
    Books its executed FLOPs into ``sinks`` (default: the open ones)."""
    _check(q, k, v)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, H, T, D = q.shape
    o = torch.empty_like(q)
    lse = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    grid = lambda META: (triton.cdiv(T, META["BLOCK_M"]), B * H)  # noqa: E731
    cnt = launch_counter(q.device, counter is not None)
    _attention_fwd_kernel[grid](
        q, k, v, o, lse, cnt, T, _LOG2E / math.sqrt(D),
        D=D, BLOCK_D=_block_d(D), CAUSAL=causal, F32_DOT=f32_dot(q.dtype),
        COUNT_FLOPS=counter is not None)
    add_count(counter, cnt)
    _book("fwd", _attention_fwd_kernel, accounting.active_sinks() if sinks is None else sinks, B, H, T, D, causal)
    return o, lse


def attention_backward(do, q, k, v, o, lse, causal=True, counter=None, sinks=None):
    """Returns (dq, dk, dv) in q's dtype.  Books its executed FLOPs (backward) into ``sinks``
    (default: the open ones; the autograd Function passes those of the forward)."""
    sinks = accounting.active_sinks() if sinks is None else sinks
    do = do.contiguous()
    B, H, T, D = q.shape
    BLOCK_D = _block_d(D)
    delta = torch.empty_like(lse)
    _attention_bwd_preprocess_kernel[(triton.cdiv(T, 64), B * H)](
        o, do, delta, T, D=D, BLOCK_D=BLOCK_D, BLOCK_M=64)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    sm_scale = 1.0 / math.sqrt(D)
    meta = dict(D=D, BLOCK_D=BLOCK_D, CAUSAL=causal, F32_DOT=f32_dot(q.dtype),
                COUNT_FLOPS=counter is not None)
    grid = lambda META: (triton.cdiv(T, META["BLOCK_N"]), B * H)  # noqa: E731
    cnt = launch_counter(q.device, counter is not None)
    _attention_bwd_dkdv_kernel[grid](q, k, v, do, dk, dv, lse, delta, cnt, T,
                                     sm_scale * _LOG2E, sm_scale, **meta)
    add_count(counter, cnt)
    _book("dkdv", _attention_bwd_dkdv_kernel, sinks, B, H, T, D, causal)
    grid = lambda META: (triton.cdiv(T, META["BLOCK_M"]), B * H)  # noqa: E731
    cnt = launch_counter(q.device, counter is not None)
    _attention_bwd_dq_kernel[grid](q, k, v, do, dq, lse, delta, cnt, T,
                                   sm_scale * _LOG2E, sm_scale, **meta)
    add_count(counter, cnt)
    _book("dq", _attention_bwd_dq_kernel, sinks, B, H, T, D, causal)
    return dq, dk, dv


# --- custom ops: one node each to torch.compile, CUDA graphs and FlopCounterMode ------------------
@torch.library.custom_op("flopscale::triton_attention_fwd", mutates_args=())
def _attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_forward(q, k, v, causal)  # books into the open sinks


@_attention_fwd_op.register_fake
def _(q, k, v, causal):
    B, H, T, D = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, T), dtype=torch.float32)


@torch.library.custom_op("flopscale::triton_attention_bwd", mutates_args=())
def _attention_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                      lse: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v, o = q.contiguous(), k.contiguous(), v.contiguous(), o.contiguous()
    return attention_backward(do, q, k, v, o, lse, causal, sinks=accounting.backward_sinks())


@_attention_bwd_op.register_fake
def _(do, q, k, v, o, lse, causal):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _attention_setup(ctx, inputs, output):
    q, k, v, causal = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.causal = causal


def _attention_op_backward(ctx, do, dlse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.flopscale.triton_attention_bwd(do, q, k, v, o, lse, ctx.causal)
    return dq, dk, dv, None


_attention_fwd_op.register_autograd(_attention_op_backward, setup_context=_attention_setup)


def _tiles_ran(kernel):
    c = (kernel.best_config or kernel.configs[0]).kwargs
    return c["BLOCK_M"], c["BLOCK_N"]


def _matmul_flops(kind, kernel, B, H, T, D, causal):
    """The kernel's matmul FLOPs from the tiles it ran with: pairs x matmuls x one whole tile."""
    BM, BN = _tiles_ran(kernel)
    return B * H * causal_tile_pairs(T, BM, BN, causal) * _MATMULS[kind] * 2 * BM * BN * _block_d(D)


@flop_formula(torch.ops.flopscale.triton_attention_fwd)
def _attention_fwd_flops(q_shape, k_shape, v_shape, causal, *args, out_shape=None, **kwargs):
    return _matmul_flops("fwd", _attention_fwd_kernel, *q_shape, causal)


@flop_formula(torch.ops.flopscale.triton_attention_bwd)
def _attention_bwd_flops(do_shape, q_shape, *args, out_shape=None, **kwargs):
    causal = args[4]
    return (_matmul_flops("dkdv", _attention_bwd_dkdv_kernel, *q_shape, causal)
            + _matmul_flops("dq", _attention_bwd_dq_kernel, *q_shape, causal))


class AttentionFunction(torch.autograd.Function):
    """The eager path: the ledgers open at the forward get the backward's counts too."""

    @staticmethod
    def forward(ctx, q, k, v, causal, counter):
        # The kernels index a dense (B, H, T, D) layout; the model hands in strided views of its
        # fused QKV projection, so densify once here and save the dense copies for backward.
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        # The ledgers open now get the backward's counts too, whenever autograd runs it.
        ctx.sinks = accounting.active_sinks()
        if counter is not None:  # instrumented (tests): the launchers take the counter
            o, lse = attention_forward(q, k, v, causal, counter, ctx.sinks)
        else:
            o, lse = torch.ops.flopscale.triton_attention_fwd(q, k, v, causal)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.counter = causal, counter
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        if ctx.counter is not None:
            dq, dk, dv = attention_backward(do, q, k, v, o, lse, ctx.causal, ctx.counter, ctx.sinks)
        else:
            with accounting.scoped(ctx.sinks):
                dq, dk, dv = torch.ops.flopscale.triton_attention_bwd(do, q, k, v, o, lse, ctx.causal)
        return dq, dk, dv, None, None


def attention(q, k, v, causal=True, counter=None):
    """Flash-style attention, q, k, v: (B, H, T, D), scale 1/sqrt(D).

    ``counter``: an int64 tensor of one element; when given, the kernels add the matmul FLOPs
    they execute to it (instrumented mode, tests only: atomics cost time).  The executed FLOPs
    of each launch are booked into the ledgers open when the forward ran (kernels/accounting.py).
    Under torch.compile, the custom op with its registered autograd (kernels/library.py).
    """
    if counter is None and compiling():
        return torch.ops.flopscale.triton_attention_fwd(q.contiguous(), k.contiguous(), v.contiguous(), causal)[0]
    return AttentionFunction.apply(q, k, v, causal, counter)
