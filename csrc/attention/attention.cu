// Host launchers for the flash-style attention kernels: mma.sync (attention_kernels.cuh) on
// any GPU, wgmma (attention_sm90.cuh) on Hopper.  The variants not shipped live in csrc/dev/.
#include "../flopscale.h"
#include "attention_kernels.cuh"
#include "attention_sm90.cuh"

#include <algorithm>
#include <cmath>
#include <string>

namespace flopscale {
namespace {

// Raise a kernel's dynamic shared-memory cap above the default 48 KB (D = 128 needs ~52-58 KB).
template <typename Kernel>
void set_smem(Kernel kernel, int bytes) {
  FS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

// Whether this device runs the wgmma kernels (attention_sm90.cuh): it is a Hopper (sm_90) and
// this build carries their sm_90a code, which a one-element probe launch answers once per device.
bool sm90_built_for_this_device() {
  constexpr int kMaxDevices = 64;
  static int cached[kMaxDevices] = {};  // 0 unknown, 1 yes, 2 no
  int dev = 0;
  FS_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < kMaxDevices && cached[dev] != 0) return cached[dev] == 1;
  int major = 0;
  FS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  int found = 0;
  if (major == 9) {
    int* flag = nullptr;
    FS_CUDA_CHECK(cudaMalloc(&flag, sizeof(int)));
    attn::sm90::_attention_sm90_probe_kernel<<<1, 1>>>(flag);
    const cudaError_t launched = cudaGetLastError();
    if (launched == cudaSuccess) FS_CUDA_CHECK(cudaMemcpy(&found, flag, sizeof(int), cudaMemcpyDeviceToHost));
    FS_CUDA_CHECK(cudaFree(flag));
  }
  if (dev < kMaxDevices) cached[dev] = found == 1 ? 1 : 2;
  return found == 1;
}

// The kernel choice is an argument, recorded with the run, never read from the environment
// (docs/ARCHITECTURE.md, "CUDA: product and lab").  kAttnAuto runs the wgmma kernels where
// sm90_built_for_this_device(), the mma.sync ones elsewhere; kAttnMmaSync runs mma.sync on
// every GPU (the kernels every non-Hopper GPU runs, so that a Hopper can test and time them too).
bool use_wgmma(int kernel) {
  FS_REQUIRE(kernel == kAttnAuto || kernel == kAttnMmaSync,
             "attention: kernel must be 0 (auto) or 1 (mma_sync), got " + std::to_string(kernel));
  return kernel == kAttnAuto && sm90_built_for_this_device();
}

template <typename T, int D>
void fwd_sm90(const void* q, const void* k, const void* v, void* o, float* lse, int BH, int seqlen, bool causal,
              cudaStream_t stream) {
  constexpr int smem = attn::sm90::fwd_smem_bytes<D>();
  auto kernel = attn::sm90::_attention_fwd_sm90_kernel<T, D>;
  set_smem(kernel, smem);
  const dim3 grid(BH, (seqlen + attn::sm90::kFwdBlockM - 1) / attn::sm90::kFwdBlockM);
  const float scale_log2 = 1.4426950408889634f / std::sqrt(static_cast<float>(D));
  kernel<<<grid, attn::sm90::kThreads, smem, stream>>>(static_cast<const T*>(q), static_cast<const T*>(k),
                                                        static_cast<const T*>(v), static_cast<T*>(o), lse, seqlen,
                                                        scale_log2, causal);
  FS_CHECK_LAUNCH();
}

template <typename T, int D>
void bwd_sm90(const void* dout, const void* q, const void* k, const void* v, const float* lse, void* dk, void* dv,
              const float* delta, float* dq_accum, int BH, int seqlen, bool causal, cudaStream_t stream) {
  constexpr int smem = attn::sm90::bwd_smem_bytes<D>();
  auto kernel = attn::sm90::_attention_bwd_sm90_kernel<T, D>;
  set_smem(kernel, smem);
  const dim3 grid(BH, (seqlen + attn::sm90::kBwdBlockN - 1) / attn::sm90::kBwdBlockN);
  kernel<<<grid, attn::sm90::kThreads, smem, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(dout), lse,
      delta, dq_accum, static_cast<T*>(dk), static_cast<T*>(dv), seqlen, 1.f / std::sqrt(static_cast<float>(D)),
      causal);
  FS_CHECK_LAUNCH();
}

template <typename T, int D>
void fwd_impl(const void* q, const void* k, const void* v, void* o, float* lse, int BH, int seqlen, bool causal,
              bool wgmma, cudaStream_t stream) {
  if (wgmma) return fwd_sm90<T, D>(q, k, v, o, lse, BH, seqlen, causal, stream);
  constexpr int smem = attn::fwd_smem_bytes<D>();
  auto kernel = attn::_attention_fwd_kernel<T, D>;
  set_smem(kernel, smem);
  const dim3 grid(BH, (seqlen + attn::kFwdBlockM - 1) / attn::kFwdBlockM);
  const float scale_log2 = 1.4426950408889634f / std::sqrt(static_cast<float>(D));
  kernel<<<grid, attn::kThreads, smem, stream>>>(static_cast<const T*>(q), static_cast<const T*>(k),
                                                 static_cast<const T*>(v), static_cast<T*>(o), lse, seqlen,
                                                 scale_log2, causal);
  FS_CHECK_LAUNCH();
}

template <typename T, int D>
void bwd_impl(const void* dout, const void* q, const void* k, const void* v, const void* o, const float* lse,
              void* dq, void* dk, void* dv, float* delta, float* dq_accum, int BH, int seqlen, bool causal,
              bool wgmma, cudaStream_t stream) {
  const int64_t rows = (int64_t)BH * seqlen;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  FS_CUDA_CHECK(cudaMemsetAsync(dq_accum, 0, sizeof(float) * rows * D, stream));
  {
    constexpr int kWarps = 8;
    const int64_t blocks = (rows + kWarps - 1) / kWarps;
    FS_REQUIRE(blocks < (int64_t(1) << 31), "attention_bwd: too many rows");
    attn::_attention_bwd_preprocess_kernel<T, D><<<(unsigned)blocks, kWarps * 32, 0, stream>>>(
        static_cast<const T*>(dout), static_cast<const T*>(o), delta, rows);
    FS_CHECK_LAUNCH();
  }
  if (wgmma) {
    bwd_sm90<T, D>(dout, q, k, v, lse, dk, dv, delta, dq_accum, BH, seqlen, causal, stream);
  } else {
    constexpr int smem = attn::bwd_smem_bytes<D>();
    auto kernel = attn::_attention_bwd_kernel<T, D>;
    set_smem(kernel, smem);
    const dim3 grid(BH, (seqlen + attn::BwdTiles<D>::kBlockN - 1) / attn::BwdTiles<D>::kBlockN);
    kernel<<<grid, attn::kThreads, smem, stream>>>(
        static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
        static_cast<const T*>(dout), lse, delta, dq_accum, static_cast<T*>(dk), static_cast<T*>(dv), seqlen, scale,
        causal);
    FS_CHECK_LAUNCH();
  }
  {
    const int64_t n = rows * D;
    const int blocks = (int)std::min<int64_t>((n + 255) / 256, 65536);
    attn::_attention_bwd_dq_kernel<T><<<blocks, 256, 0, stream>>>(dq_accum, static_cast<T*>(dq), scale, n);
    FS_CHECK_LAUNCH();
  }
}

void check_shape(int B, int H, int T, int D, DType dtype) {
  FS_REQUIRE(B > 0 && H > 0 && T > 0, "attention: B, H and T must be positive");
  FS_REQUIRE(D == 64 || D == 128, "attention: head dim must be 64 or 128, got " + std::to_string(D));
  FS_REQUIRE(dtype == DType::kFloat16 || dtype == DType::kBFloat16, "attention: dtype must be float16 or bfloat16");
  FS_REQUIRE((int64_t)T <= 65535 * 64, "attention: sequence too long for the grid");
}

}  // namespace

void attention_fwd(const void* q, const void* k, const void* v, void* o, float* lse, int B, int H, int T, int D,
                   bool causal, int kernel, DType dtype, cudaStream_t stream) {
  check_shape(B, H, T, D, dtype);
  const bool wgmma = use_wgmma(kernel);
  const int BH = B * H;
  if (dtype == DType::kFloat16) {
    if (D == 64) fwd_impl<__half, 64>(q, k, v, o, lse, BH, T, causal, wgmma, stream);
    else fwd_impl<__half, 128>(q, k, v, o, lse, BH, T, causal, wgmma, stream);
  } else {
    if (D == 64) fwd_impl<__nv_bfloat16, 64>(q, k, v, o, lse, BH, T, causal, wgmma, stream);
    else fwd_impl<__nv_bfloat16, 128>(q, k, v, o, lse, BH, T, causal, wgmma, stream);
  }
}

void attention_bwd(const void* dout, const void* q, const void* k, const void* v, const void* o, const float* lse,
                   void* dq, void* dk, void* dv, float* delta, float* dq_accum, int B, int H, int T, int D,
                   bool causal, int kernel, DType dtype, cudaStream_t stream) {
  check_shape(B, H, T, D, dtype);
  const bool wgmma = use_wgmma(kernel);
  const int BH = B * H;
  if (dtype == DType::kFloat16) {
    if (D == 64) bwd_impl<__half, 64>(dout, q, k, v, o, lse, dq, dk, dv, delta, dq_accum, BH, T, causal, wgmma, stream);
    else bwd_impl<__half, 128>(dout, q, k, v, o, lse, dq, dk, dv, delta, dq_accum, BH, T, causal, wgmma, stream);
  } else {
    if (D == 64) bwd_impl<__nv_bfloat16, 64>(dout, q, k, v, o, lse, dq, dk, dv, delta, dq_accum, BH, T, causal, wgmma, stream);
    else bwd_impl<__nv_bfloat16, 128>(dout, q, k, v, o, lse, dq, dk, dv, delta, dq_accum, BH, T, causal, wgmma, stream);
  }
}

const char* attention_kernel_name(int kernel) { return use_wgmma(kernel) ? "wgmma" : "mma_sync"; }

void attention_tiles(int D, int kernel, int tiles[4]) {
  if (use_wgmma(kernel)) {
    tiles[0] = attn::sm90::kFwdBlockM;
    tiles[1] = attn::sm90::kFwdBlockN;
    tiles[2] = D <= 64 ? attn::sm90::Bwd<64>::kBlockM : attn::sm90::Bwd<128>::kBlockM;
    tiles[3] = attn::sm90::kBwdBlockN;
    return;
  }
  tiles[0] = attn::kFwdBlockM;
  tiles[1] = attn::kFwdBlockN;
  tiles[2] = D <= 64 ? attn::BwdTiles<64>::kBlockM : attn::BwdTiles<128>::kBlockM;
  tiles[3] = D <= 64 ? attn::BwdTiles<64>::kBlockN : attn::BwdTiles<128>::kBlockN;
}

}  // namespace flopscale
