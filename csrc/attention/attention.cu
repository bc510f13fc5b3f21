// Host launchers for the flash-style attention kernels: mma.sync (attention_kernels.cuh) on
// any GPU, wgmma (attention_sm90.cuh) on Hopper.
#include "../flopscale.h"
#include "attention_kernels.cuh"
#include "attention_sm90.cuh"
#include "tensor_map.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>

namespace flopscale {
namespace {

// Raise a kernel's dynamic shared-memory cap above the default 48 KB (D = 128 needs ~52-58 KB).
template <typename Kernel>
void set_smem(Kernel kernel, int bytes) {
  FS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

// The wgmma kernels (attention_sm90.cuh) run when the device is a Hopper (sm_90) and this
// build carries their sm_90a code, which a one-element probe launch answers once per device.
// FLOPSCALE_ATTN_SM90 picks the kernels, for A/B runs:
//   0  the mma.sync kernels (what every other GPU runs)
//   1  wgmma forward variant 1, backward variant 1
//   2  wgmma forward variant 2, backward variant 2
//   3  wgmma forward variant 2, backward variant 3
//   4  the warp-specialized wgmma forward (TMA producer, consumer ping-pong), backward variant 2
//   5  the warp-specialized forward and the warp-specialized backward (TMA producer)
//   6  as 5, the backward adding dQ by TMA reduce from a dQ-writer warp instead of atomics
//   (4-6 were written without a GPU: csrc/dev/attention_forward.cu variant 7 and
//   attention_backward.cu variants 6 and 7 time them)
// Unset, Hopper runs set kSm90Default, the fastest measured (H200, 2026-11-26, csrc/dev lab at
// (B, H, T) = (2, 16, 4096): backward variant 2 ran 321 / 262 TFLOP/s at D = 128 / 64 against
// 299 / 253 for variant 3's bulk reduce and 288 / 245 for variant 1).
constexpr int kSm90Default = 2;
struct Sm90Pick {
  int fwd = 0, bwd = 0;  // 0: mma.sync; else the wgmma kernels' kVariant (5, 6: warp-specialized)
};

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

Sm90Pick sm90_pick() {
  int set = kSm90Default;
  if (const char* env = std::getenv("FLOPSCALE_ATTN_SM90")) {
    FS_REQUIRE(std::strlen(env) == 1 && env[0] >= '0' && env[0] <= '6',
               std::string("FLOPSCALE_ATTN_SM90 must be one of 0-6, got '") + env + "'");
    set = env[0] - '0';
  }
  Sm90Pick pick;
  if (set == 0 || !sm90_built_for_this_device()) return pick;
  pick.fwd = set == 1 ? 1 : set >= 4 ? 5 : 2;
  pick.bwd = set == 4 ? 2 : set;
  return pick;
}

template <typename T, int D, int kVariant>
void fwd_sm90(const void* q, const void* k, const void* v, void* o, float* lse, int BH, int seqlen, bool causal,
              cudaStream_t stream) {
  constexpr int smem = attn::sm90::fwd_smem_bytes<D, kVariant>();
  auto kernel = attn::sm90::_attention_fwd_sm90_kernel<T, D, kVariant>;
  set_smem(kernel, smem);
  const dim3 grid(BH, (seqlen + attn::sm90::kFwdBlockM - 1) / attn::sm90::kFwdBlockM);
  const float scale_log2 = 1.4426950408889634f / std::sqrt(static_cast<float>(D));
  kernel<<<grid, attn::sm90::kThreads, smem, stream>>>(static_cast<const T*>(q), static_cast<const T*>(k),
                                                        static_cast<const T*>(v), static_cast<T*>(o), lse, seqlen,
                                                        scale_log2, causal);
  FS_CHECK_LAUNCH();
}

template <typename T, int D>
void fwd_sm90_ws(const void* q, const void* k, const void* v, void* o, float* lse, int BH, int seqlen, bool causal,
                 cudaStream_t stream) {
  constexpr int smem = attn::sm90::fwd_ws_smem_bytes<D>();
  auto kernel = attn::sm90::_attention_fwd_sm90_ws_kernel<T, D>;
  set_smem(kernel, smem);
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  const int64_t rows = (int64_t)BH * seqlen;
  const dim3 grid(BH, (seqlen + attn::sm90::kFwdBlockM - 1) / attn::sm90::kFwdBlockM);
  const float scale_log2 = 1.4426950408889634f / std::sqrt(static_cast<float>(D));
  kernel<<<grid, attn::sm90::kWsThreads, smem, stream>>>(
      attn::tile_map(q, rows, D, kBf16), attn::tile_map(k, rows, D, kBf16),
      attn::tile_map(v, rows, D, kBf16), static_cast<T*>(o), lse, seqlen, scale_log2, causal);
  FS_CHECK_LAUNCH();
}

template <typename T, int D, int kVariant>
void bwd_sm90(const void* dout, const void* q, const void* k, const void* v, const float* lse, void* dk, void* dv,
              const float* delta, float* dq_accum, int BH, int seqlen, bool causal, cudaStream_t stream) {
  constexpr int smem = attn::sm90::bwd_smem_bytes<D, kVariant>();
  auto kernel = attn::sm90::_attention_bwd_sm90_kernel<T, D, kVariant>;
  set_smem(kernel, smem);
  const dim3 grid(BH, (seqlen + attn::sm90::kBwdBlockN - 1) / attn::sm90::kBwdBlockN);
  kernel<<<grid, attn::sm90::kThreads, smem, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(dout), lse,
      delta, dq_accum, static_cast<T*>(dk), static_cast<T*>(dv), seqlen, 1.f / std::sqrt(static_cast<float>(D)),
      causal);
  FS_CHECK_LAUNCH();
}

template <typename T, int D, bool kDqTma>
void bwd_sm90_ws(const void* dout, const void* q, const void* k, const void* v, const float* lse, void* dk, void* dv,
                 const float* delta, float* dq_accum, int BH, int seqlen, bool causal, cudaStream_t stream) {
  constexpr int smem = attn::sm90::bwd_ws_smem_bytes<D, kDqTma>();
  auto kernel = attn::sm90::_attention_bwd_sm90_ws_kernel<T, D, kDqTma>;
  set_smem(kernel, smem);
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  constexpr int BM = attn::sm90::Bwd<D>::kBlockM;
  const int64_t rows = (int64_t)BH * seqlen;
  const dim3 grid(BH, (seqlen + attn::sm90::kBwdBlockN - 1) / attn::sm90::kBwdBlockN);
  kernel<<<grid, attn::sm90::kWsThreads, smem, stream>>>(
      attn::tile_map(q, rows, D, kBf16, BM), attn::tile_map(k, rows, D, kBf16, attn::sm90::kBwdBlockN),
      attn::tile_map(v, rows, D, kBf16, attn::sm90::kBwdBlockN), attn::tile_map(dout, rows, D, kBf16, BM),
      attn::tile_map_f32(dq_accum, rows, D, BM), lse, delta, dq_accum, static_cast<T*>(dk), static_cast<T*>(dv), seqlen, 1.f / std::sqrt(static_cast<float>(D)),
      causal);
  FS_CHECK_LAUNCH();
}

template <typename T, int D>
void fwd_impl(const void* q, const void* k, const void* v, void* o, float* lse, int BH, int seqlen, bool causal,
              cudaStream_t stream) {
  const Sm90Pick pick = sm90_pick();
  if (pick.fwd == 1) return fwd_sm90<T, D, 1>(q, k, v, o, lse, BH, seqlen, causal, stream);
  if (pick.fwd == 2) return fwd_sm90<T, D, 2>(q, k, v, o, lse, BH, seqlen, causal, stream);
  if (pick.fwd == 5) return fwd_sm90_ws<T, D>(q, k, v, o, lse, BH, seqlen, causal, stream);
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
              cudaStream_t stream) {
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
  const Sm90Pick pick = sm90_pick();
  if (pick.bwd == 1) {
    bwd_sm90<T, D, 1>(dout, q, k, v, lse, dk, dv, delta, dq_accum, BH, seqlen, causal, stream);
  } else if (pick.bwd == 2) {
    bwd_sm90<T, D, 2>(dout, q, k, v, lse, dk, dv, delta, dq_accum, BH, seqlen, causal, stream);
  } else if (pick.bwd == 3) {
    bwd_sm90<T, D, 3>(dout, q, k, v, lse, dk, dv, delta, dq_accum, BH, seqlen, causal, stream);
  } else if (pick.bwd == 5) {
    bwd_sm90_ws<T, D, false>(dout, q, k, v, lse, dk, dv, delta, dq_accum, BH, seqlen, causal, stream);
  } else if (pick.bwd == 6) {
    bwd_sm90_ws<T, D, true>(dout, q, k, v, lse, dk, dv, delta, dq_accum, BH, seqlen, causal, stream);
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
                   bool causal, DType dtype, cudaStream_t stream) {
  check_shape(B, H, T, D, dtype);
  const int BH = B * H;
  if (dtype == DType::kFloat16) {
    if (D == 64) fwd_impl<__half, 64>(q, k, v, o, lse, BH, T, causal, stream);
    else fwd_impl<__half, 128>(q, k, v, o, lse, BH, T, causal, stream);
  } else {
    if (D == 64) fwd_impl<__nv_bfloat16, 64>(q, k, v, o, lse, BH, T, causal, stream);
    else fwd_impl<__nv_bfloat16, 128>(q, k, v, o, lse, BH, T, causal, stream);
  }
}

void attention_bwd(const void* dout, const void* q, const void* k, const void* v, const void* o, const float* lse,
                   void* dq, void* dk, void* dv, float* delta, float* dq_accum, int B, int H, int T, int D,
                   bool causal, DType dtype, cudaStream_t stream) {
  check_shape(B, H, T, D, dtype);
  const int BH = B * H;
  if (dtype == DType::kFloat16) {
    if (D == 64) bwd_impl<__half, 64>(dout, q, k, v, o, lse, dq, dk, dv, delta, dq_accum, BH, T, causal, stream);
    else bwd_impl<__half, 128>(dout, q, k, v, o, lse, dq, dk, dv, delta, dq_accum, BH, T, causal, stream);
  } else {
    if (D == 64) bwd_impl<__nv_bfloat16, 64>(dout, q, k, v, o, lse, dq, dk, dv, delta, dq_accum, BH, T, causal, stream);
    else bwd_impl<__nv_bfloat16, 128>(dout, q, k, v, o, lse, dq, dk, dv, delta, dq_accum, BH, T, causal, stream);
  }
}

void attention_tiles(int D, int tiles[4]) {
  if (sm90_pick().fwd != 0) {
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
