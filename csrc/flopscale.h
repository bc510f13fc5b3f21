// The host-side C++ API of flopscale's CUDA kernels: what csrc/bindings.cpp calls.
//
// Pointers are device pointers to contiguous row-major tensors; every function launches on
// `stream`, checks every CUDA / cuBLASLt status and throws std::runtime_error on failure.
// Nothing here depends on torch, so the kernels build (and are resource-checked) with nvcc alone.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace flopscale {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// ---- attention (csrc/attention/attention.cu) ---------------------------------------------
// kernel picks the kernels, for the run to record what ran (the extension reads no environment
// variables): kAttnAuto, the wgmma kernels on a Hopper whose build carries sm_90a code and the
// mma.sync ones elsewhere; kAttnMmaSync, mma.sync on every GPU (so that a Hopper can test and
// time the kernels other GPUs run).  Any other value throws.
constexpr int kAttnAuto = 0, kAttnMmaSync = 1;
// q, k, v, o: (B, H, T, D), D in {64, 128}, fp16 or bf16.  lse: (B, H, T) fp32, natural log of
// each row's softmax denominator in the scaled domain (scale = 1/sqrt(D)), saved for backward.
void attention_fwd(const void* q, const void* k, const void* v, void* o, float* lse, int B, int H,
                   int T, int D, bool causal, int kernel, DType dtype, cudaStream_t stream);
// delta: (B, H, T) fp32 scratch; dq_accum: (B, H, T, D) fp32 scratch (zeroed here).
void attention_bwd(const void* dout, const void* q, const void* k, const void* v, const void* o,
                   const float* lse, void* dq, void* dk, void* dv, float* delta, float* dq_accum, int B,
                   int H, int T, int D, bool causal, int kernel, DType dtype, cudaStream_t stream);
// What `kernel` resolves to on the current device: "wgmma" or "mma_sync".
const char* attention_kernel_name(int kernel);
// Tile sizes the kernels `kernel` resolves to really use, for the executed-FLOP ledger:
// {fwd BLOCK_M, fwd BLOCK_N, bwd BLOCK_M (queries), bwd BLOCK_N (keys)}.
void attention_tiles(int D, int kernel, int tiles[4]);

// ---- layernorm (csrc/layernorm/layernorm.cu) ---------------------------------------------
// x, residual, y, s_out: (rows, C) in dtype; weight, bias: (C,) in dtype; mean, rstd: (rows,)
// fp32.  residual == nullptr is plain LayerNorm; otherwise s_out = x + residual, y = LN(s_out).
void layernorm_fwd(const void* x, const void* residual, const void* weight, const void* bias, void* y,
                   void* s_out, float* mean, float* rstd, int rows, int C, float eps, DType dtype,
                   cudaStream_t stream);
// x: the normalised input (s for the fused variant).  dres: gradient arriving at s_out (fused
// variant) or nullptr; it is added to dx.  partial: fp32 scratch of layernorm_bwd_scratch floats.
void layernorm_bwd(const void* dy, const void* x, const void* weight, const float* mean,
                   const float* rstd, const void* dres, void* dx, void* dweight, void* dbias,
                   float* partial, int rows, int C, DType dtype, cudaStream_t stream);
int64_t layernorm_bwd_scratch(int rows, int C, int device);

// ---- feedforward on cuBLASLt (csrc/ffn/ffn.cu) --------------------------------------------
// x: (M, d); w_in: (F, d); b_in: (F,); w_out: (d, F); b_out: (d,)  (torch.nn.Linear layouts).
// Forward writes h_pre = x w_in^T + b_in (M, F) and h = gelu_tanh(h_pre) from one fused GEMM,
// then y = h w_out^T + b_out (M, d).  workspace: cuBLASLt scratch of workspace_bytes.
void ffn_fwd(const void* x, const void* w_in, const void* b_in, const void* w_out, const void* b_out,
             void* h_pre, void* h, void* y, int M, int d, int F, DType dtype, void* workspace,
             size_t workspace_bytes, cudaStream_t stream);
// dh_pre: (M, F) scratch for the GELU-input gradient.  lt_epilogues picks the backward:
// false, plain GEMMs and one element-wise pass of ours (faster on an H200); true, cuBLASLt's
// DGELU_BGRAD / BGRADB epilogues, kept to re-time on other GPUs and cuBLAS versions.
void ffn_bwd(const void* dy, const void* x, const void* w_in, const void* w_out, const void* h_pre,
             const void* h, void* dx, void* dw_in, void* db_in, void* dw_out, void* db_out,
             void* dh_pre, int M, int d, int F, bool lt_epilogues, DType dtype, void* workspace,
             size_t workspace_bytes, cudaStream_t stream);

}  // namespace flopscale
