"""The feedforward block: gelu_tanh(x @ w_in.T + b_in) @ w_out.T + b_out.

Weights use torch.nn.Linear's layout (out_features, in_features).  Reference first; the fused
Triton kernels (bias+GELU in the first matmul's epilogue, dGELU in the backward's) follow.
"""

import torch
import torch.nn.functional as F


def feedforward_ref(x, w_in, b_in, w_out, b_out, upcast=False):
    """x: (..., d_model), w_in: (d_ff, d_model), w_out: (d_model, d_ff)."""
    dtype = x.dtype
    if upcast:
        x, w_in, b_in, w_out, b_out = (t.double() for t in (x, w_in, b_in, w_out, b_out))
    h = F.gelu(F.linear(x, w_in, b_in), approximate="tanh")
    y = F.linear(h, w_out, b_out)
    return y.to(dtype) if upcast else y


# =============================================================================================
# Triton: one tiled matmul, C = A @ B, whose epilogue is chosen at compile time:
#   EPILOGUE 0: plain (weight gradients)          1: + bias (second projection)
#   EPILOGUE 2: + bias, store the pre-activation, then GELU(tanh) (first projection)
#   EPILOGUE 3: times GELU'(pre) loaded from PRE (the gradient into the first projection)
# Operands are addressed through strides, so x W^T, dY^T H and friends need no transposed copy.
# Weights are in nn.Linear layout (out_features, in_features).
#
# Two main loops share the epilogues.  16-bit operands with a unit stride in either dimension,
# 16-byte aligned, on Hopper or newer: the tiles stream in through tensor descriptors (the bulk
# tensor copy engine, TMA, zero-filling past the edges, no address arithmetic or masks in the
# loop); a tile stored the other way round is loaded as it lies and transposed in shared memory.
# That covers all six matmuls (x W_in^T and h W_out^T forward; dY W_out, dY^T h, dPre W_in,
# dPre^T x backward).  Otherwise (fp32, odd strides, older GPUs, or a layout whose TMA kernel
# failed to compile): pointer loads.  H200 evidence for the change (first GPU run): the
# pointer-load kernel reached 420-580 TFLOP/s against cuBLAS' ~700 on these shapes.  The
# backend option ffn_loads="pointer" (BACKEND_OPTIONS) forces pointer loads everywhere.
# =============================================================================================
import functools
import math
import sys

from . import accounting
from .library import compiling, flop_formula
from .flop_counts import BIAS_BWD, BIAS_FWD, GELU_BWD, GELU_FWD, padded_matmul_flops
from .triton_utils import INTERPRET, add_count, best_kwargs, f32_dot, launch_counter, mma, tl, triton

_GELU_C = math.sqrt(2.0 / math.pi)


def _mm_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 4},
                              num_warps=4, num_stages=1)]
    # H100 bf16 evidence (Triton's matmul tutorial, cuBLAS' own tile choices): 128x128 or
    # 128x256 tiles, BLOCK_K 64, 3-4 stages; 64x128 for the skinny weight-gradient shapes.
    return [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
    ]


def _set_tma_blocks(nargs):
    """Autotune pre-hook: a descriptor's block shape must be the tile the config loads."""
    BM, BN, BK = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["A_desc"].block_shape = [BM, BK] if nargs["A_KMAJOR"] else [BK, BM]
    nargs["B_desc"].block_shape = [BN, BK] if nargs["B_KMAJOR"] else [BK, BN]


def _tma_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 4},
                              num_warps=4, num_stages=1, pre_hook=_set_tma_blocks)]
    # Hopper TMA + wgmma (Triton tutorial 09's space, cut to the likely winners): 128x256 at 8
    # warps (two warpgroups, 128 fp32 accumulators a thread), 3-4 stages of 48 KB; 128x128 for
    # shapes with few output tiles.  128x128 at 3 stages (96 KB) lets two programs share an SM,
    # so one's epilogue (bias, GELU, two stores) overlaps the other's main loop: at K = 1024
    # the loop is only 16 steps and a lone program's epilogue is a real fraction of its time.
    # A config that overflows shared memory is skipped by the autotuner.
    return [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8,
                      num_stages=3, pre_hook=_set_tma_blocks),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8,
                      num_stages=4, pre_hook=_set_tma_blocks),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8,
                      num_stages=4, pre_hook=_set_tma_blocks),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8,
                      num_stages=3, pre_hook=_set_tma_blocks),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4,
                      num_stages=3, pre_hook=_set_tma_blocks),
    ]


@triton.jit
def _gelu_tanh(x):
    # tanh(u) = 2 * sigmoid(2u) - 1: one exp, stable at both ends.
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return 0.5 * x * (1.0 + (2.0 * tl.sigmoid(2.0 * u) - 1.0))


@triton.jit
def _gelu_tanh_grad(x):
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    t = 2.0 * tl.sigmoid(2.0 * u) - 1.0
    du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du


@triton.jit
def _epilogue(acc, C, BIAS, PRE, offs_m, offs_n, M, N, stride_cm, stride_cn, EPILOGUE: tl.constexpr):
    c_off = offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :] * stride_cn
    c_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if EPILOGUE == 1 or EPILOGUE == 2:
        acc += tl.load(BIAS + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if EPILOGUE == 2:
        # Keep the pre-activation for the backward (rounded as eager's linear output is), and
        # apply GELU to that rounded value as eager does.
        pre = acc.to(C.dtype.element_ty)
        tl.store(PRE + c_off, pre, mask=c_mask)
        acc = _gelu_tanh(pre.to(tl.float32))
    if EPILOGUE == 3:
        pre = tl.load(PRE + c_off, mask=c_mask, other=0.0).to(tl.float32)
        acc = acc.to(C.dtype.element_ty).to(tl.float32) * _gelu_tanh_grad(pre)
    tl.store(C + c_off, acc.to(C.dtype.element_ty), mask=c_mask)


@triton.jit
def _grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program ``pid`` in grouped launch order: GROUP_M row-blocks share each
    B column-block while it is in L2."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    first_m = pid // (GROUP_M * num_n) * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % (GROUP_M * num_n)) % group_size, (pid % (GROUP_M * num_n)) // group_size


@triton.autotune(configs=_mm_configs(), key=["M", "N", "K", "EPILOGUE"], reset_to_zero=["CNT"])
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit
def _ffn_matmul_kernel(A, B, C, BIAS, PRE, CNT, M, N, K,
                       stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                       EPILOGUE: tl.constexpr, F32_DOT: tl.constexpr, COUNT_FLOPS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUP_M: tl.constexpr, EVEN_K: tl.constexpr):
    pid_m, pid_n = _grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = A + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :] * stride_ak  # (BM, BK)
    b_ptrs = B + offs_k[:, None] * stride_bk + offs_n[None, :].to(tl.int64) * stride_bn  # (BK, BN)
    m_ok = offs_m[:, None] < M
    n_ok = offs_n[None, :] < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in tl.range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=m_ok, other=0.0)
            b = tl.load(b_ptrs, mask=n_ok, other=0.0)
        else:
            a = tl.load(a_ptrs, mask=m_ok & (offs_k[None, :] < K - k0), other=0.0)
            b = tl.load(b_ptrs, mask=n_ok & (offs_k[:, None] < K - k0), other=0.0)
        acc = mma(a, b, acc, F32_DOT)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
        if COUNT_FLOPS:  # one (BM, BN, BK) tile, 2 FLOPs per multiply-add
            tl.atomic_add(CNT, 2 * BLOCK_M * BLOCK_N * BLOCK_K)
    _epilogue(acc, C, BIAS, PRE, offs_m, offs_n, M, N, stride_cm, stride_cn, EPILOGUE)


@triton.autotune(configs=_tma_configs(), key=["M", "N", "K", "EPILOGUE", "A_KMAJOR", "B_KMAJOR"],
                 reset_to_zero=["CNT"])
@triton.jit
def _ffn_matmul_tma_kernel(A_desc, B_desc, C, BIAS, PRE, CNT, M, N, K, stride_cm, stride_cn,
                           EPILOGUE: tl.constexpr, A_KMAJOR: tl.constexpr, B_KMAJOR: tl.constexpr,
                           F32_DOT: tl.constexpr, COUNT_FLOPS: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           GROUP_M: tl.constexpr):
    # A_desc: (M, K) row-major (A_KMAJOR) or (K, M) row-major (dY or dPre seen as A = dY^T).
    # B_desc: (N, K) row-major (B_KMAJOR: nn.Linear weights as they are) or (K, N) row-major.
    # Tiles past M, N or K load as zeros.
    pid_m, pid_n = _grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in tl.range(0, K, BLOCK_K):
        if A_KMAJOR:
            a = A_desc.load([off_m, k0])  # (BM, BK)
        else:
            a = A_desc.load([k0, off_m]).T  # (BK, BM) in memory -> (BM, BK)
        if B_KMAJOR:
            b = B_desc.load([off_n, k0]).T  # (BN, BK) in memory -> (BK, BN)
        else:
            b = B_desc.load([k0, off_n])  # (BK, BN)
        acc = mma(a, b, acc, F32_DOT)
        if COUNT_FLOPS:  # one (BM, BN, BK) tile, 2 FLOPs per multiply-add
            tl.atomic_add(CNT, 2 * BLOCK_M * BLOCK_N * BLOCK_K)
    offs_m = off_m + tl.arange(0, BLOCK_M)
    offs_n = off_n + tl.arange(0, BLOCK_N)
    _epilogue(acc, C, BIAS, PRE, offs_m, offs_n, M, N, stride_cm, stride_cn, EPILOGUE)


# --- launchers ---------------------------------------------------------------------------------
LOADS = ("auto", "pointer")  # the ffn_loads option (kernels/__init__.py BACKEND_OPTIONS)
_TMA = {"ok": {}, "failed": set()}  # ok: {device type: bool}; failed: {(A_KMAJOR, B_KMAJOR)}


def _tma_ok(device):
    """Whether this device and Triton build have tensor descriptors (Hopper or newer)."""
    key = str(device)
    if key not in _TMA["ok"]:
        try:
            from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401

            _TMA["ok"][key] = INTERPRET or (device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9)
        except ImportError:
            _TMA["ok"][key] = False
    return _TMA["ok"][key]


def tma_state(loads="auto") -> dict:
    """For Backend.describe(): the load path each device seen so far resolved to, and the
    operand layouts whose TMA kernel failed to compile (they fell back to pointer loads)."""
    return {"devices": {d: "tma" if ok and loads == "auto" else "pointer" for d, ok in _TMA["ok"].items()},
            "failed_layouts": sorted(f"A_KMAJOR={a},B_KMAJOR={b}" for a, b in _TMA["failed"])}


def _descriptor_view(t):
    """t (2-D) as a row-major matrix a tensor descriptor accepts, or None: unit last stride,
    16-byte aligned base and row stride (the copy engine's rules)."""
    e = t.element_size()
    if t.stride(1) == 1 and t.stride(0) * e % 16 == 0 and t.data_ptr() % 16 == 0 and t.stride(0) >= t.shape[1]:
        return t
    return None


def _row_major(t, first):
    """(t or t^T as a row-major matrix, whether it is t itself), trying t first if ``first``."""
    for own in ((True, False) if first else (False, True)):
        v = t if own else t.t()
        if _descriptor_view(v) is not None:
            return v, own
    return None, None


def _tma_operands(a, b, loads="auto"):
    """(A_desc, B_desc, A_KMAJOR, B_KMAJOR) for the TMA kernel, or None where it does not apply
    (or ``loads`` is "pointer")."""
    if loads != "auto" or a.dtype not in (torch.float16, torch.bfloat16) or not _tma_ok(a.device):
        return None
    from triton.tools.tensor_descriptor import TensorDescriptor

    av, a_kmajor = _row_major(a, first=True)  # (M, K) as it lies, else (K, M)
    bt, b_kmajor = _row_major(b.t(), first=True)  # (N, K) as it lies, else (K, N)
    if av is None or bt is None:
        return None
    if (a_kmajor, b_kmajor) in _TMA["failed"]:
        return None
    dummy = [16, 16]  # the autotune pre-hook sets each config's real block shape
    return (TensorDescriptor(av, list(av.shape), list(av.stride()), list(dummy)),
            TensorDescriptor(bt, list(bt.shape), list(bt.stride()), list(dummy)), a_kmajor, b_kmajor)


# --- what the launches execute ------------------------------------------------------------------
# Convention: FLOPs, a multiply-add is 2.  Each matmul runs whole (BLOCK_M, BLOCK_N, BLOCK_K)
# tiles, so it counts 2 * (M, N, K each rounded up to its tile), as the kernels' COUNT_FLOPS
# atomics do.  The epilogues run over the padded (BLOCK_M, BLOCK_N) output tiles: + bias
# (BIAS_FWD) in epilogues 1 and 2, GELU (GELU_FWD) in 2, dGELU (GELU_BWD) in 3.  The bias
# gradients are torch column sums over the real rows (the model view).  Forward: x W_in^T
# (epilogue 2), h W_out^T (1).  Backward: dY W_out (3), dY^T h, dPre W_in, dPre^T x (0): 2x
# the forward before padding.  Cached per (shape, tile, epilogue): a launch books a lookup.
@functools.lru_cache(maxsize=None)
def _matmul_rows(M, N, K, BM, BN, BK, epilogue):
    """((row, FLOPs), ...) one _matmul launch books."""
    out = padded_matmul_flops(M, N, K, BM, BN, BK)
    tile_elems = triton.cdiv(M, BM) * BM * triton.cdiv(N, BN) * BN
    rows = [("feedforward", out)]
    if epilogue in (1, 2):
        rows.append(("bias", BIAS_FWD * tile_elems))
    if epilogue == 2:
        rows.append(("gelu", GELU_FWD * tile_elems))
    if epilogue == 3:
        rows.append(("gelu", GELU_BWD * tile_elems))
    return tuple(rows)


def feedforward_executed(rows, d_model, d_ff, tiles=None):
    """{row: (fwd, bwd)} the Triton kernels compute for one feedforward call whose matmuls ran
    with ``tiles`` = {role: (BLOCK_M, BLOCK_N, BLOCK_K)} over the roles "in", "out" (forward),
    "dh", "dw_out", "dx", "dw_in" (backward); a missing role: the pointer kernel's first
    autotune config (under the interpreter the only one, and the TMA kernel's too).  What the
    launches book."""
    shapes = {"in": (rows, d_ff, d_model, 2), "out": (rows, d_model, d_ff, 1),
              "dh": (rows, d_ff, d_model, 3), "dw_out": (d_model, d_ff, rows, 0),
              "dx": (rows, d_model, d_ff, 0), "dw_in": (d_ff, d_model, rows, 0)}
    default = tuple(_mm_configs()[0].kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    out = {"feedforward": [0, 0], "gelu": [0, 0], "bias": [0, BIAS_BWD * rows * (d_ff + d_model)]}
    for role, (M, N, K, epi) in shapes.items():
        for row, f in _matmul_rows(M, N, K, *(tiles or {}).get(role, default), epi):
            out[row][role not in ("in", "out")] += f
    return {row: tuple(v) for row, v in out.items()}


def _matmul(a, b, epilogue=0, bias=None, pre=None, counter=None, sinks=(), backward=False, loads="auto"):
    """a: (M, K), b: (K, N) as strided views (transposes are free).  Returns (c, pre_out).
    Books its executed FLOPs into ``sinks`` (forward or backward counts)."""
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty((M, N), dtype=a.dtype, device=a.device)
    pre_out = torch.empty_like(c) if epilogue == 2 else None
    pre_arg = pre_out if epilogue == 2 else (pre if pre is not None else c)
    bias_arg = bias if bias is not None else c
    grid = lambda META: (triton.cdiv(M, META["BLOCK_M"]) * triton.cdiv(N, META["BLOCK_N"]),)  # noqa: E731
    meta = dict(EPILOGUE=epilogue, F32_DOT=f32_dot(a.dtype), COUNT_FLOPS=counter is not None)
    tma = _tma_operands(a, b, loads)
    if tma is not None:
        cnt = launch_counter(a.device, counter is not None)
        try:
            _ffn_matmul_tma_kernel[grid](tma[0], tma[1], c, bias_arg, pre_arg, cnt, M, N, K,
                                         c.stride(0), c.stride(1), A_KMAJOR=tma[2],
                                         B_KMAJOR=tma[3], **meta)
        except Exception as e:  # this layout does not compile here: say so once, pointer loads
            print(f"flopscale ffn: TMA matmul (A_KMAJOR={tma[2]}, B_KMAJOR={tma[3]}) unavailable "
                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); using "
                  f"pointer loads", file=sys.stderr)
            _TMA["failed"].add((tma[2], tma[3]))
            tma = None
        else:
            kernel = _ffn_matmul_tma_kernel
    if tma is None:
        cnt = launch_counter(a.device, counter is not None)
        _ffn_matmul_kernel[grid](
            a, b, c, bias_arg, pre_arg, cnt, M, N, K,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1), **meta)
        kernel = _ffn_matmul_kernel
    add_count(counter, cnt)
    kw = best_kwargs(kernel)
    _TILES_RAN[(M, N, K)] = (kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"])
    if sinks:
        accounting.book(sinks, _matmul_rows(M, N, K, kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], epilogue),
                        backward)
    return c, pre_out


# {(M, N, K): (BLOCK_M, BLOCK_N, BLOCK_K)} of the last launch of each GEMM shape: what the
# FlopCounterMode formula below pads each GEMM of an op call to.
_TILES_RAN: dict = {}


def feedforward_forward(x2, w_in, b_in, w_out, b_out, counter=None, sinks=None, loads="auto"):
    """x2: (M, d_model).  Returns (y, pre, h): pre = x W_in^T + b_in, h = gelu(pre).
    Books its executed FLOPs into ``sinks`` (default: the open ones)."""
    sinks = accounting.active_sinks() if sinks is None else sinks
    kw = dict(counter=counter, sinks=sinks, loads=loads)
    h, pre = _matmul(x2, w_in.t(), 2, bias=b_in, **kw)    # (M, d_ff)
    y, _ = _matmul(h, w_out.t(), 1, bias=b_out, **kw)     # (M, d_model)
    return y, pre, h


def feedforward_backward(dy2, x2, w_in, w_out, pre, h, counter=None, sinks=None, loads="auto"):
    """Returns (dx, dw_in, db_in, dw_out, db_out).  Bias gradients are fp32-accumulated sums.
    Books its executed FLOPs (backward) into ``sinks`` (default: the open ones; the autograd
    Function passes those of the forward)."""
    sinks = accounting.active_sinks() if sinks is None else sinks
    kw = dict(counter=counter, sinks=sinks, backward=True, loads=loads)
    dpre, _ = _matmul(dy2, w_out, 3, pre=pre, **kw)       # (M, d_ff)
    dw_out, _ = _matmul(dy2.t(), h, **kw)                 # (d_model, d_ff)
    dx, _ = _matmul(dpre, w_in, **kw)                     # (M, d_model)
    dw_in, _ = _matmul(dpre.t(), x2, **kw)                # (d_ff, d_model)
    db_out = dy2.sum(0, dtype=torch.float32).to(dy2.dtype)
    db_in = dpre.sum(0, dtype=torch.float32).to(dpre.dtype)
    if sinks:  # the two column sums, over the real rows
        accounting.book(sinks, (("bias", BIAS_BWD * dy2.shape[0] * (dy2.shape[1] + dpre.shape[1])),), True)
    return dx, dw_in, db_in, dw_out, db_out


# --- custom ops: one node each to torch.compile, CUDA graphs and FlopCounterMode ------------------
@torch.library.custom_op("flopscale::triton_feedforward_fwd", mutates_args=())
def _feedforward_fwd_op(x2: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor,
                        b_out: torch.Tensor, loads: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return feedforward_forward(x2, w_in, b_in, w_out, b_out, loads=loads)


@_feedforward_fwd_op.register_fake
def _(x2, w_in, b_in, w_out, b_out, loads):
    M, d_ff = x2.shape[0], w_in.shape[0]
    return x2.new_empty((M, w_out.shape[0])), x2.new_empty((M, d_ff)), x2.new_empty((M, d_ff))


@torch.library.custom_op("flopscale::triton_feedforward_bwd", mutates_args=())
def _feedforward_bwd_op(dy2: torch.Tensor, x2: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor,
                        pre: torch.Tensor, h: torch.Tensor, loads: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return feedforward_backward(dy2, x2, w_in, w_out, pre, h, sinks=accounting.backward_sinks(), loads=loads)


@_feedforward_bwd_op.register_fake
def _(dy2, x2, w_in, w_out, pre, h, loads):
    d_ff, d_model = w_in.shape
    return (dy2.new_empty(x2.shape), dy2.new_empty((d_ff, d_model)), dy2.new_empty(d_ff),
            dy2.new_empty((d_model, d_ff)), dy2.new_empty(d_model))


def _ffn_setup(ctx, inputs, output):
    x2, w_in, b_in, w_out, b_out, loads = inputs
    ctx.save_for_backward(x2, w_in, w_out, output[1], output[2])
    ctx.loads = loads


def _ffn_op_backward(ctx, dy, dpre, dh):
    x2, w_in, w_out, pre, h = ctx.saved_tensors
    grads = torch.ops.flopscale.triton_feedforward_bwd(dy.contiguous(), x2, w_in, w_out, pre, h, ctx.loads)
    return (*grads, None)


_feedforward_fwd_op.register_autograd(_ffn_op_backward, setup_context=_ffn_setup)


def _padded(M, N, K):
    """A GEMM's FLOPs on whole tiles, with the tiles its last launch ran with."""
    return padded_matmul_flops(M, N, K, *_TILES_RAN.get((M, N, K), _default_tiles()))


def _default_tiles():
    return tuple(_mm_configs()[0].kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))


@flop_formula(torch.ops.flopscale.triton_feedforward_fwd)
def _feedforward_fwd_flops(x_shape, w_in_shape, *args, out_shape=None, **kwargs):
    (M, d), d_ff = x_shape, w_in_shape[0]
    return _padded(M, d_ff, d) + _padded(M, d, d_ff)


@flop_formula(torch.ops.flopscale.triton_feedforward_bwd)
def _feedforward_bwd_flops(dy_shape, x_shape, w_in_shape, *args, out_shape=None, **kwargs):
    (M, d), d_ff = x_shape, w_in_shape[0]
    return _padded(M, d_ff, d) + _padded(d, d_ff, M) + _padded(M, d, d_ff) + _padded(d_ff, d, M)


class FeedforwardFunction(torch.autograd.Function):
    """The eager path: the ledgers open at the forward get the backward's counts too."""

    @staticmethod
    def forward(ctx, x, w_in, b_in, w_out, b_out, counter, loads):
        x2 = x.reshape(-1, x.shape[-1])  # (M, d_model)
        ctx.sinks = accounting.active_sinks()  # the backward books into the forward's ledgers
        if counter is not None:
            y, pre, h = feedforward_forward(x2, w_in, b_in, w_out, b_out, counter, ctx.sinks, loads)
        else:
            y, pre, h = torch.ops.flopscale.triton_feedforward_fwd(x2, w_in, b_in, w_out, b_out, loads)
        ctx.save_for_backward(x2, w_in, w_out, pre, h)
        ctx.counter, ctx.loads = counter, loads
        return y.view(*x.shape[:-1], w_out.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x2, w_in, w_out, pre, h = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        if ctx.counter is not None:
            grads = feedforward_backward(dy2, x2, w_in, w_out, pre, h, ctx.counter, ctx.sinks, ctx.loads)
        else:
            with accounting.scoped(ctx.sinks):
                grads = torch.ops.flopscale.triton_feedforward_bwd(dy2, x2, w_in, w_out, pre, h, ctx.loads)
        dx, dw_in, db_in, dw_out, db_out = grads
        return dx.view(*dy.shape[:-1], x2.shape[1]), dw_in, db_in, dw_out, db_out, None, None


def feedforward(x, w_in, b_in, w_out, b_out, counter=None, loads="auto"):
    """gelu_tanh(x W_in^T + b_in) W_out^T + b_out with fused epilogues; x: (..., d_model).

    ``loads``: "auto" (tensor descriptors where they apply) or "pointer" (the ffn_loads option).
    ``counter``: as in attention (instrumented mode)."""
    if loads not in LOADS:
        raise ValueError(f"feedforward loads must be one of {', '.join(LOADS)}; got {loads!r}")
    d_model = x.shape[-1]
    d_ff = w_in.shape[0]
    if (w_in.shape != (d_ff, d_model) or w_out.shape != (d_model, d_ff)
            or b_in.shape != (d_ff,) or b_out.shape != (d_model,)):
        raise ValueError(f"feedforward wants w_in (d_ff, {d_model}), b_in (d_ff,), w_out "
                         f"({d_model}, d_ff), b_out ({d_model},); got {tuple(w_in.shape)}, "
                         f"{tuple(b_in.shape)}, {tuple(w_out.shape)}, {tuple(b_out.shape)}")
    if counter is None and compiling():
        y = torch.ops.flopscale.triton_feedforward_fwd(x.reshape(-1, d_model), w_in, b_in, w_out, b_out, loads)[0]
        return y.view(*x.shape[:-1], d_model)
    return FeedforwardFunction.apply(x, w_in, b_in, w_out, b_out, counter, loads)
