"""LayerNorm over the last dimension, with an optional fused residual add.

Reference first (the ``torch`` backend, the tests and the benchmarks all call it); the Triton
kernels, launchers and autograd Function follow below it.
"""

import torch
import torch.nn.functional as F


def layer_norm_ref(x, weight, bias, eps=1e-5, upcast=False):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last dim.  x: (..., C)."""
    dtype = x.dtype
    if upcast:
        x, weight, bias = x.double(), weight.double(), bias.double()
    y = F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    return y.to(dtype) if upcast else y


def add_layer_norm_ref(x, residual, weight, bias, eps=1e-5, upcast=False):
    """The pre-LN block's ``s = x + residual; y = LN(s)``.  Returns (y, s)."""
    dtype = x.dtype
    if upcast:
        x, residual = x.double(), residual.double()
    s = x + residual
    y = layer_norm_ref(s, weight, bias, eps, upcast=upcast)
    return (y.to(dtype), s.to(dtype)) if upcast else (y, s)


# =============================================================================================
# Triton: fused LayerNorm (and residual add + LayerNorm) forward and backward.
#
# Forward: one program per row, the whole row in registers (BLOCK_C = next_power_of_2(C));
# mean and rstd (fp32) are saved.  With a residual, s = x + residual is rounded to the input
# dtype, stored (the block's second output) and normalised, all in one pass over memory.
# Backward: G programs, each over a contiguous run of rows, write dx and keep dW, dB partial
# sums in fp32 registers; a second small kernel reduces the (G, C) partials.  No atomics.
# =============================================================================================
import functools
from typing import Optional

from . import accounting
from .library import compiling
from .flop_counts import LN_BWD, LN_BWD_PER_ROW, LN_FWD, LN_FWD_PER_ROW, RESIDUAL_BWD, RESIDUAL_FWD
from .triton_utils import INTERPRET, add_count, launch_counter, tl, triton


@triton.jit
def _layer_norm_fwd_kernel(X, R, W, B, Y, S, MEAN, RSTD, CNT, C, eps,
                           BLOCK_C: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                           COUNT_FLOPS: tl.constexpr, FLOPS_PER_ROW: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < C
    x = tl.load(X + row * C + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        # Add in fp32 and round once to the input dtype, exactly as eager's x + residual does;
        # the rounded s is what gets stored and normalised.
        x += tl.load(R + row * C + cols, mask=mask, other=0.0).to(tl.float32)
        s = x.to(S.dtype.element_ty)
        tl.store(S + row * C + cols, s, mask=mask)
        x = s.to(tl.float32)
    mean = tl.sum(x, 0) / C
    xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 0) / C + eps)  # biased variance, as F.layer_norm
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * C + cols, (xc * rstd * w + b).to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)
    if COUNT_FLOPS:
        tl.atomic_add(CNT, FLOPS_PER_ROW)


@triton.jit
def _layer_norm_bwd_kernel(X, W, DY, DX, DRES, DW_PART, DB_PART, MEAN, RSTD, CNT, M, C,
                           rows_per_program, BLOCK_C: tl.constexpr, HAS_DRES: tl.constexpr,
                           COUNT_FLOPS: tl.constexpr, FLOPS_PER_ROW: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < C
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_C], tl.float32)
    db = tl.zeros([BLOCK_C], tl.float32)
    row_start = pid.to(tl.int64) * rows_per_program  # int64: M * C may pass 2**31
    for i in tl.range(0, tl.minimum(rows_per_program, M - row_start)):
        row = row_start + i
        off = row * C + cols
        x = tl.load(X + off, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + off, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        wdy = w * dy
        c1 = tl.sum(xhat * wdy, 0) / C
        c2 = tl.sum(wdy, 0) / C
        dx = (wdy - (xhat * c1 + c2)) * rstd
        if HAS_DRES:  # the skip path's gradient meets the normalised path's here
            dx += tl.load(DRES + off, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
        if COUNT_FLOPS:
            tl.atomic_add(CNT, FLOPS_PER_ROW)
    tl.store(DW_PART + pid * C + cols, dw, mask=mask)
    tl.store(DB_PART + pid * C + cols, db, mask=mask)


@triton.jit
def _layer_norm_bwd_dwdb_kernel(DW_PART, DB_PART, DW, DB, CNT, G, C, BLOCK_G: tl.constexpr,
                                BLOCK_N: tl.constexpr, COUNT_FLOPS: tl.constexpr):
    # Second stage: column sums of the (G, C) fp32 partials.
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dw = tl.zeros([BLOCK_G, BLOCK_N], tl.float32)
    db = tl.zeros([BLOCK_G, BLOCK_N], tl.float32)
    for g0 in tl.range(0, G, BLOCK_G):
        rows = g0 + tl.arange(0, BLOCK_G)
        mask = (rows[:, None] < G) & (cols[None, :] < C)
        dw += tl.load(DW_PART + rows[:, None] * C + cols[None, :], mask=mask, other=0.0)
        db += tl.load(DB_PART + rows[:, None] * C + cols[None, :], mask=mask, other=0.0)
        if COUNT_FLOPS:  # two (BLOCK_G, BLOCK_N) accumulations
            tl.atomic_add(CNT, 2 * BLOCK_G * BLOCK_N)
    tl.store(DW + cols, tl.sum(dw, 0).to(DW.dtype.element_ty), mask=cols < C)
    tl.store(DB + cols, tl.sum(db, 0).to(DB.dtype.element_ty), mask=cols < C)


# --- launchers ---------------------------------------------------------------------------------
_DWDB_BLOCK_G, _DWDB_BLOCK_N = 32, 64


def _block_c(C):
    BLOCK_C = triton.next_power_of_2(C)
    if BLOCK_C > 65536:  # one row must fit in registers/shared memory
        raise ValueError(f"layer_norm supports rows up to 65536 features; got {C}")
    return BLOCK_C


def _num_warps(BLOCK_C):
    return min(max(BLOCK_C // 256, 1), 8)  # ~8 elements per thread, up to 8 warps


def _groups(M, device):
    """Partial-sum rows G: enough programs to fill the GPU (4 per SM), few under the
    interpreter (4, so a program still loops over several rows)."""
    if device.type == "cuda" and not INTERPRET:
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 4
    rows_per_program = triton.cdiv(M, min(M, target))
    return triton.cdiv(M, rows_per_program), rows_per_program


def _flops_per_row(C, backward):
    BLOCK_C = _block_c(C)  # every lane of the padded row computes
    return LN_BWD * BLOCK_C + LN_BWD_PER_ROW if backward else LN_FWD * BLOCK_C + LN_FWD_PER_ROW


# --- what the launches execute ------------------------------------------------------------------
# Convention: the per-element constants of kernels/flop_counts.py (LN_FWD, LN_BWD) applied to the
# padded row BLOCK_C = next_power_of_2(C) that each program computes (what the kernels'
# COUNT_FLOPS atomics add per row), plus the backward's second stage: the column sums of the
# (G, C) dW, dB partials, 2 adds per element of whole (32, 64) tiles.  The fused residual add
# (x + residual forward, dx + dres backward) counts RESIDUAL_FWD / RESIDUAL_BWD over the real
# elements, as the model view does.  Cached per shape: a launch books a lookup.
@functools.lru_cache(maxsize=None)
def _executed_rows(M, C, backward, residual, G=0):
    """((row, FLOPs), ...) one forward (or backward, with G partial rows) launch books."""
    ln = M * _flops_per_row(C, backward)
    if backward:
        ln += 2 * triton.cdiv(G, _DWDB_BLOCK_G) * _DWDB_BLOCK_G * triton.cdiv(C, _DWDB_BLOCK_N) * _DWDB_BLOCK_N
    rows = [("layernorm", ln)]
    if residual:
        rows.append(("residual", (RESIDUAL_BWD if backward else RESIDUAL_FWD) * M * C))
    return tuple(rows)


def layer_norm_executed(rows, C, G=None, residual=False, device="cpu"):
    """{row: (fwd, bwd)} the Triton kernels compute for a LayerNorm over (rows, C) whose
    backward used G partial rows (default: what ``_groups`` picks on ``device``); ``residual``:
    the fused add form.  What the launches book."""
    G = _groups(rows, torch.device(device))[0] if G is None else G
    fwd, bwd = dict(_executed_rows(rows, C, False, residual)), dict(_executed_rows(rows, C, True, residual, G))
    return {row: (fwd[row], bwd[row]) for row in fwd}


def layer_norm_forward(x, residual, weight, bias, eps, counter=None, sinks=None):
    """x, residual (or None): (M, C) contiguous.  Returns (y, s or None, mean, rstd).  Books
    its executed FLOPs into ``sinks`` (default: the open ones)."""
    M, C = x.shape
    BLOCK_C = _block_c(C)
    y = torch.empty_like(x)
    s = torch.empty_like(x) if residual is not None else None
    mean = torch.empty(M, dtype=torch.float32, device=x.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    cnt = launch_counter(x.device, counter is not None)
    _layer_norm_fwd_kernel[(M,)](
        x, residual if residual is not None else x, weight, bias, y, s if s is not None else y,
        mean, rstd, cnt, C, eps,
        BLOCK_C=BLOCK_C, HAS_RESIDUAL=residual is not None, COUNT_FLOPS=counter is not None,
        FLOPS_PER_ROW=_flops_per_row(C, False), num_warps=_num_warps(BLOCK_C))
    add_count(counter, cnt)
    sinks = accounting.active_sinks() if sinks is None else sinks
    if sinks:
        accounting.book(sinks, _executed_rows(M, C, False, residual is not None))
    return y, s, mean, rstd


def layer_norm_backward(dy, x, weight, mean, rstd, dres=None, counter=None, sinks=None):
    """dy, x (the normalised input, s for the residual form), dres (or None): (M, C).
    Returns (dx, dweight, dbias); dx includes dres (the residual path's gradient).  Books its
    executed FLOPs (backward) into ``sinks`` (default: the open ones; the autograd Functions
    pass those of the forward)."""
    M, C = x.shape
    BLOCK_C = _block_c(C)
    G, rows_per_program = _groups(M, x.device)
    dx = torch.empty_like(x)
    dw_part = torch.empty((G, C), dtype=torch.float32, device=x.device)
    db_part = torch.empty((G, C), dtype=torch.float32, device=x.device)
    cnt = launch_counter(x.device, counter is not None)
    _layer_norm_bwd_kernel[(G,)](
        x, weight, dy, dx, dres if dres is not None else dy, dw_part, db_part, mean, rstd, cnt,
        M, C, rows_per_program, BLOCK_C=BLOCK_C, HAS_DRES=dres is not None,
        COUNT_FLOPS=counter is not None, FLOPS_PER_ROW=_flops_per_row(C, True),
        num_warps=_num_warps(BLOCK_C))
    dw = torch.empty_like(weight)
    db = torch.empty_like(weight)
    _layer_norm_bwd_dwdb_kernel[(triton.cdiv(C, _DWDB_BLOCK_N),)](
        dw_part, db_part, dw, db, cnt, G, C, BLOCK_G=_DWDB_BLOCK_G, BLOCK_N=_DWDB_BLOCK_N,
        COUNT_FLOPS=counter is not None)
    add_count(counter, cnt)
    sinks = accounting.active_sinks() if sinks is None else sinks
    if sinks:
        accounting.book(sinks, _executed_rows(M, C, True, dres is not None, G), True)
    return dx, dw, db


# --- custom ops: one node each to torch.compile, CUDA graphs and FlopCounterMode ------------------
@torch.library.custom_op("flopscale::triton_layer_norm_fwd", mutates_args=())
def _layer_norm_fwd_op(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, _, mean, rstd = layer_norm_forward(x2.contiguous(), None, weight, bias, eps)
    return y, mean, rstd


@_layer_norm_fwd_op.register_fake
def _(x2, weight, bias, eps):
    M = x2.shape[0]
    return x2.new_empty(x2.shape), x2.new_empty(M, dtype=torch.float32), x2.new_empty(M, dtype=torch.float32)


@torch.library.custom_op("flopscale::triton_add_layer_norm_fwd", mutates_args=())
def _add_layer_norm_fwd_op(x2: torch.Tensor, r2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return layer_norm_forward(x2.contiguous(), r2.contiguous(), weight, bias, eps)


@_add_layer_norm_fwd_op.register_fake
def _(x2, r2, weight, bias, eps):
    M = x2.shape[0]
    return (x2.new_empty(x2.shape), x2.new_empty(x2.shape), x2.new_empty(M, dtype=torch.float32),
            x2.new_empty(M, dtype=torch.float32))


@torch.library.custom_op("flopscale::triton_layer_norm_bwd", mutates_args=())
def _layer_norm_bwd_op(dy2: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                       rstd: torch.Tensor, dres: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dres = dres.contiguous() if dres is not None else None
    return layer_norm_backward(dy2.contiguous(), x2.contiguous(), weight, mean, rstd, dres,
                               sinks=accounting.backward_sinks())


@_layer_norm_bwd_op.register_fake
def _(dy2, x2, weight, mean, rstd, dres):
    return x2.new_empty(x2.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _ln_setup(ctx, inputs, output):
    x2, weight, bias, eps = inputs
    ctx.save_for_backward(x2, weight, output[1], output[2])


def _ln_op_backward(ctx, dy, dmean, drstd):
    x2, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = torch.ops.flopscale.triton_layer_norm_bwd(dy, x2, weight, mean, rstd, None)
    return dx, dw, db, None


def _add_ln_setup(ctx, inputs, output):
    x2, r2, weight, bias, eps = inputs
    ctx.save_for_backward(output[1], weight, output[2], output[3])


def _add_ln_op_backward(ctx, dy, ds, dmean, drstd):
    s, weight, mean, rstd = ctx.saved_tensors
    dy = dy if dy is not None else torch.zeros_like(s)
    ds = ds if ds is not None else torch.zeros_like(s)
    dsum, dw, db = torch.ops.flopscale.triton_layer_norm_bwd(dy, s, weight, mean, rstd, ds)
    return dsum, dsum, dw, db, None


_layer_norm_fwd_op.register_autograd(_ln_op_backward, setup_context=_ln_setup)
_add_layer_norm_fwd_op.register_autograd(_add_ln_op_backward, setup_context=_add_ln_setup)
# LayerNorm does no matmul: FlopCounterMode counts it as 0 (it has no formula), like aten's.


class LayerNormFunction(torch.autograd.Function):
    """The eager path: the ledgers open at the forward get the backward's counts too."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, counter):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()  # (M, C)
        ctx.sinks = accounting.active_sinks()  # the backward books into the forward's ledgers
        if counter is not None:
            y, _, mean, rstd = layer_norm_forward(x2, None, weight, bias, eps, counter, ctx.sinks)
        else:
            y, mean, rstd = torch.ops.flopscale.triton_layer_norm_fwd(x2, weight, bias, eps)
        ctx.save_for_backward(x2, weight, mean, rstd)
        ctx.counter = counter
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, mean, rstd = ctx.saved_tensors
        dy2 = dy.reshape(x2.shape).contiguous()
        if ctx.counter is not None:
            dx, dw, db = layer_norm_backward(dy2, x2, weight, mean, rstd, None, ctx.counter, ctx.sinks)
        else:
            with accounting.scoped(ctx.sinks):
                dx, dw, db = torch.ops.flopscale.triton_layer_norm_bwd(dy2, x2, weight, mean, rstd, None)
        return dx.view(dy.shape), dw, db, None, None


class AddLayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps, counter):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        r2 = residual.reshape(x2.shape).contiguous()
        ctx.sinks = accounting.active_sinks()
        if counter is not None:
            y, s, mean, rstd = layer_norm_forward(x2, r2, weight, bias, eps, counter, ctx.sinks)
        else:
            y, s, mean, rstd = torch.ops.flopscale.triton_add_layer_norm_fwd(x2, r2, weight, bias, eps)
        ctx.save_for_backward(s, weight, mean, rstd)
        ctx.counter = counter
        return y.view(shape), s.view(shape)

    @staticmethod
    def backward(ctx, dy, ds):
        s, weight, mean, rstd = ctx.saved_tensors
        shape = dy.shape if dy is not None else ds.shape
        dy2 = dy.reshape(s.shape).contiguous() if dy is not None else torch.zeros_like(s)
        # A zero ds where s went unused (autograd materialises it): the kernel still adds it,
        # so the residual row's backward is booked whichever outputs were used.
        ds2 = ds.reshape(s.shape).contiguous() if ds is not None else torch.zeros_like(s)
        if ctx.counter is not None:
            dsum, dw, db = layer_norm_backward(dy2, s, weight, mean, rstd, ds2, ctx.counter, ctx.sinks)
        else:
            with accounting.scoped(ctx.sinks):
                dsum, dw, db = torch.ops.flopscale.triton_layer_norm_bwd(dy2, s, weight, mean, rstd, ds2)
        dsum = dsum.view(shape)
        return dsum, dsum, dw, db, None, None


def _check(x, weight, bias):
    C = x.shape[-1]
    if weight.shape != (C,) or bias.shape != (C,):
        raise ValueError(f"layer_norm wants weight and bias of shape ({C},); got "
                         f"{tuple(weight.shape)}, {tuple(bias.shape)}")


def layer_norm(x, weight, bias, eps=1e-5, counter=None):
    """Fused LayerNorm over the last dim; ``counter`` as in attention (instrumented mode)."""
    _check(x, weight, bias)
    if counter is None and compiling():
        return torch.ops.flopscale.triton_layer_norm_fwd(x.reshape(-1, x.shape[-1]), weight, bias, eps)[0].view(x.shape)
    return LayerNormFunction.apply(x, weight, bias, eps, counter)


def add_layer_norm(x, residual, weight, bias, eps=1e-5, counter=None):
    """(LN(x + residual), x + residual) in one pass; both outputs are differentiable."""
    _check(x, weight, bias)
    if residual.shape != x.shape:
        raise ValueError(f"add_layer_norm wants residual of x's shape {tuple(x.shape)}; got {tuple(residual.shape)}")
    if counter is None and compiling():
        C = x.shape[-1]
        y, s, _, _ = torch.ops.flopscale.triton_add_layer_norm_fwd(x.reshape(-1, C), residual.reshape(-1, C),
                                                                   weight, bias, eps)
        return y.view(x.shape), s.view(x.shape)
    return AddLayerNormFunction.apply(x, residual, weight, bias, eps, counter)
