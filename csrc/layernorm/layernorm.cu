// Host launchers for the LayerNorm kernels (layernorm_kernels.cuh).
#include "../flopscale.h"
#include "layernorm_kernels.cuh"

#include <algorithm>

namespace flopscale {
namespace {

bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) % 16) == 0; }

int sm_count(int device) {
  int n = 0;
  FS_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

int cdiv(int a, int b) { return (a + b - 1) / b; }
int round_up32(int a) { return cdiv(a, 32) * 32; }

// Launch shape of a row-resident kernel: NV vectors per thread, N threads per row, R rows per
// CTA.  nv == 0: the width is outside what the kernel covers; use the warp-per-row fallback.
struct RowsCfg {
  int nv = 0, n = 0, r = 0;
};

// Forward: one warp per row while 4 vectors per lane cover the row; else NV = 4 and up to 16
// warps per row.  R fills a 256-thread CTA.  (NV = 8 spilled a few bytes on sm_90a.)
RowsCfg fwd_cfg(int nvec) {
  RowsCfg k;
  if (nvec <= 32 * 4) {
    k.n = 32;
    k.nv = nvec <= 32 ? 1 : nvec <= 64 ? 2 : 4;
  } else {
    k.nv = 4;
    k.n = round_up32(cdiv(nvec, 4));
    if (k.n > ln::kFwdRowsMaxThreads) return RowsCfg{};
  }
  k.r = std::max(1, ln::kFwdRowsThreads / k.n);
  return k;
}

// Backward: NV at most nv_max (the register budget: 2 * NV * V fp32 accumulators per thread),
// no larger than one warp per row needs; N up to kBwdRowsThreads; R fills kBwdRowsCta threads.
RowsCfg bwd_cfg(int nvec, int nv_max) {
  RowsCfg k;
  int nv = 1;
  while (nv < nv_max && nv * 32 < nvec) nv *= 2;
  k.nv = nv;
  k.n = round_up32(cdiv(nvec, nv));
  if (k.n > ln::kBwdRowsThreads) return RowsCfg{};
  k.r = std::max(1, ln::kBwdRowsCta / k.n);
  return k;
}

// CTAs of the fallback backward: enough to fill the GPU twice over, never more than row groups.
int bwd_blocks(int rows, int device) {
  const int by_rows = (rows + ln::kBwdWarps - 1) / ln::kBwdWarps;
  return std::max(1, std::min(by_rows, 2 * sm_count(device)));
}

template <typename T, bool VEC, bool RES, int NV>
void fwd_rows_launch(const T* x, const T* res, const T* w, const T* b, T* y, T* s, float* mean, float* rstd, int rows,
                     int C, float eps, const RowsCfg& k, cudaStream_t stream) {
  ln::_layernorm_fwd_rows_kernel<T, VEC, RES, NV><<<cdiv(rows, k.r), k.n * k.r, 0, stream>>>(
      x, res, w, b, y, s, mean, rstd, rows, C, eps, k.n);
}

template <typename T, bool VEC, bool RES>
void fwd_rows(const T* x, const T* res, const T* w, const T* b, T* y, T* s, float* mean, float* rstd, int rows, int C,
              float eps, const RowsCfg& k, cudaStream_t stream) {
  switch (k.nv) {
    case 1: fwd_rows_launch<T, VEC, RES, 1>(x, res, w, b, y, s, mean, rstd, rows, C, eps, k, stream); break;
    case 2: fwd_rows_launch<T, VEC, RES, 2>(x, res, w, b, y, s, mean, rstd, rows, C, eps, k, stream); break;
    default: fwd_rows_launch<T, VEC, RES, 4>(x, res, w, b, y, s, mean, rstd, rows, C, eps, k, stream); break;
  }
}

template <typename T>
void fwd_impl(const void* x, const void* res, const void* w, const void* b, void* y, void* s, float* mean,
              float* rstd, int rows, int C, float eps, cudaStream_t stream) {
  const bool vec = (C * sizeof(T)) % 16 == 0 && aligned16(x) && aligned16(res) && aligned16(w) && aligned16(b) &&
                   aligned16(y) && aligned16(s);
  auto X = static_cast<const T*>(x), R = static_cast<const T*>(res), W = static_cast<const T*>(w),
       Bp = static_cast<const T*>(b);
  auto Y = static_cast<T*>(y), S = static_cast<T*>(s);
  const RowsCfg k = fwd_cfg(vec ? C / (int)(16 / sizeof(T)) : C);
  if (k.nv) {
    if (vec) {
      if (res) fwd_rows<T, true, true>(X, R, W, Bp, Y, S, mean, rstd, rows, C, eps, k, stream);
      else fwd_rows<T, true, false>(X, R, W, Bp, Y, S, mean, rstd, rows, C, eps, k, stream);
    } else {
      if (res) fwd_rows<T, false, true>(X, R, W, Bp, Y, S, mean, rstd, rows, C, eps, k, stream);
      else fwd_rows<T, false, false>(X, R, W, Bp, Y, S, mean, rstd, rows, C, eps, k, stream);
    }
    FS_CHECK_LAUNCH();
    return;
  }
  const dim3 grid((rows + ln::kFwdWarps - 1) / ln::kFwdWarps), block(ln::kFwdWarps * 32);
  if (vec) {
    if (res) ln::_layernorm_fwd_kernel<T, true, true><<<grid, block, 0, stream>>>(X, R, W, Bp, Y, S, mean, rstd, rows, C, eps);
    else ln::_layernorm_fwd_kernel<T, true, false><<<grid, block, 0, stream>>>(X, R, W, Bp, Y, S, mean, rstd, rows, C, eps);
  } else {
    if (res) ln::_layernorm_fwd_kernel<T, false, true><<<grid, block, 0, stream>>>(X, R, W, Bp, Y, S, mean, rstd, rows, C, eps);
    else ln::_layernorm_fwd_kernel<T, false, false><<<grid, block, 0, stream>>>(X, R, W, Bp, Y, S, mean, rstd, rows, C, eps);
  }
  FS_CHECK_LAUNCH();
}

// Returns the number of CTAs launched (= partial rows written).
template <typename T, bool VEC, bool DRES, int NV>
int bwd_rows_launch(const T* dy, const T* x, const T* w, const float* mean, const float* rstd, const T* dres, T* dx,
                    float* partial, int rows, int C, const RowsCfg& k, int device, cudaStream_t stream) {
  auto kernel = ln::_layernorm_bwd_rows_kernel<T, VEC, DRES, NV>;
  const int threads = k.n * k.r;
  const int smem = k.r > 1 ? 2 * C * (int)sizeof(float) : 0;  // r > 1 implies N <= 128: C <= 128 * NV * V <= 2048, 16 KB
  if (smem > 48 * 1024) FS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  // The occupancy query costs microseconds of host time per call: remember the last answer
  // (per instantiation and host thread; training calls one width at a time).
  static thread_local int last_threads = -1, last_smem = -1, last_device = -1, last_resident = 1;
  if (threads != last_threads || smem != last_smem || device != last_device) {
    int resident = 0;
    FS_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, threads, smem));
    last_threads = threads;
    last_smem = smem;
    last_device = device;
    last_resident = std::min(std::max(resident, 1), ln::kBwdBlocksPerSM);
  }
  const int resident = last_resident;
  const int blocks = std::max(1, std::min(cdiv(rows, k.r), resident * sm_count(device)));
  kernel<<<blocks, threads, smem, stream>>>(dy, x, w, mean, rstd, dres, dx, partial, rows, C, k.n);
  FS_CHECK_LAUNCH();
  return blocks;
}

template <typename T, bool VEC, bool DRES>
int bwd_rows(const T* dy, const T* x, const T* w, const float* mean, const float* rstd, const T* dres, T* dx,
             float* partial, int rows, int C, const RowsCfg& k, int device, cudaStream_t stream) {
  constexpr int V = VEC ? 16 / sizeof(T) : 1;
  switch (k.nv) {
    case 1: return bwd_rows_launch<T, VEC, DRES, 1>(dy, x, w, mean, rstd, dres, dx, partial, rows, C, k, device, stream);
    case 2: return bwd_rows_launch<T, VEC, DRES, 2>(dy, x, w, mean, rstd, dres, dx, partial, rows, C, k, device, stream);
    case 4:
      if constexpr (V <= 4) return bwd_rows_launch<T, VEC, DRES, 4>(dy, x, w, mean, rstd, dres, dx, partial, rows, C, k, device, stream);
      break;
    case 8:
      if constexpr (V == 1) return bwd_rows_launch<T, VEC, DRES, 8>(dy, x, w, mean, rstd, dres, dx, partial, rows, C, k, device, stream);
      break;
  }
  FS_REQUIRE(false, "layernorm_bwd: internal error: no kernel for NV " + std::to_string(k.nv));
  return 0;
}

template <typename T, bool VEC, bool DRES>
void bwd_launch(const T* dy, const T* x, const T* w, const float* mean, const float* rstd, const T* dres, T* dx,
                float* partial, int rows, int C, int blocks, cudaStream_t stream) {
  auto kernel = ln::_layernorm_bwd_kernel<T, VEC, DRES>;
  const int smem = 2 * C * (int)sizeof(float);
  if (smem > 48 * 1024) FS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kernel<<<blocks, ln::kBwdWarps * 32, smem, stream>>>(dy, x, w, mean, rstd, dres, dx, partial, rows, C);
  FS_CHECK_LAUNCH();
}

template <typename T>
void bwd_impl(const void* dy, const void* x, const void* w, const float* mean, const float* rstd, const void* dres,
              void* dx, void* dw, void* db, float* partial, int rows, int C, cudaStream_t stream) {
  int device = 0;
  FS_CUDA_CHECK(cudaGetDevice(&device));
  const bool vec = (C * sizeof(T)) % 16 == 0 && aligned16(dy) && aligned16(x) && aligned16(w) &&
                   aligned16(dres) && aligned16(dx);
  constexpr int kV = 16 / sizeof(T);
  // Register budget of the accumulators: NV * V <= 16 columns per thread (8 on the scalar path).
  const RowsCfg k = vec ? bwd_cfg(C / kV, 16 / kV) : bwd_cfg(C, 8);
  auto DY = static_cast<const T*>(dy), X = static_cast<const T*>(x), W = static_cast<const T*>(w),
       DR = static_cast<const T*>(dres);
  auto DX = static_cast<T*>(dx);
  int blocks = 0;
  if (k.nv) {
    if (vec) {
      if (dres) blocks = bwd_rows<T, true, true>(DY, X, W, mean, rstd, DR, DX, partial, rows, C, k, device, stream);
      else blocks = bwd_rows<T, true, false>(DY, X, W, mean, rstd, DR, DX, partial, rows, C, k, device, stream);
    } else {
      if (dres) blocks = bwd_rows<T, false, true>(DY, X, W, mean, rstd, DR, DX, partial, rows, C, k, device, stream);
      else blocks = bwd_rows<T, false, false>(DY, X, W, mean, rstd, DR, DX, partial, rows, C, k, device, stream);
    }
  } else {
    int max_smem = 0;
    FS_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    FS_REQUIRE(2 * C * (int64_t)sizeof(float) <= max_smem,
               "layernorm_bwd: width " + std::to_string(C) + " needs more shared memory than the device has");
    blocks = bwd_blocks(rows, device);
    if (vec) {
      if (dres) bwd_launch<T, true, true>(DY, X, W, mean, rstd, DR, DX, partial, rows, C, blocks, stream);
      else bwd_launch<T, true, false>(DY, X, W, mean, rstd, DR, DX, partial, rows, C, blocks, stream);
    } else {
      if (dres) bwd_launch<T, false, true>(DY, X, W, mean, rstd, DR, DX, partial, rows, C, blocks, stream);
      else bwd_launch<T, false, false>(DY, X, W, mean, rstd, DR, DX, partial, rows, C, blocks, stream);
    }
  }
  ln::_layernorm_bwd_reduce_kernel<T><<<cdiv(C, 32), dim3(32, 32), 0, stream>>>(partial, static_cast<T*>(dw),
                                                                               static_cast<T*>(db), blocks, C);
  FS_CHECK_LAUNCH();
}

}  // namespace

void layernorm_fwd(const void* x, const void* residual, const void* weight, const void* bias, void* y, void* s_out,
                   float* mean, float* rstd, int rows, int C, float eps, DType dtype, cudaStream_t stream) {
  FS_REQUIRE(rows > 0 && C > 0, "layernorm: rows and width must be positive");
  FS_REQUIRE(residual == nullptr || s_out != nullptr, "layernorm: the fused variant needs an s output");
  switch (dtype) {
    case DType::kFloat32: fwd_impl<float>(x, residual, weight, bias, y, s_out, mean, rstd, rows, C, eps, stream); break;
    case DType::kFloat16: fwd_impl<__half>(x, residual, weight, bias, y, s_out, mean, rstd, rows, C, eps, stream); break;
    case DType::kBFloat16: fwd_impl<__nv_bfloat16>(x, residual, weight, bias, y, s_out, mean, rstd, rows, C, eps, stream); break;
  }
}

void layernorm_bwd(const void* dy, const void* x, const void* weight, const float* mean, const float* rstd,
                   const void* dres, void* dx, void* dweight, void* dbias, float* partial, int rows, int C,
                   DType dtype, cudaStream_t stream) {
  FS_REQUIRE(rows > 0 && C > 0, "layernorm: rows and width must be positive");
  switch (dtype) {
    case DType::kFloat32: bwd_impl<float>(dy, x, weight, mean, rstd, dres, dx, dweight, dbias, partial, rows, C, stream); break;
    case DType::kFloat16: bwd_impl<__half>(dy, x, weight, mean, rstd, dres, dx, dweight, dbias, partial, rows, C, stream); break;
    case DType::kBFloat16: bwd_impl<__nv_bfloat16>(dy, x, weight, mean, rstd, dres, dx, dweight, dbias, partial, rows, C, stream); break;
  }
}

// An upper bound on the CTAs either backward launches (row-resident: <= rows and
// <= kBwdBlocksPerSM per SM; fallback: <= rows / 8 and <= 2 per SM), times 2 * C floats.
int64_t layernorm_bwd_scratch(int rows, int C, int device) {
  return (int64_t)std::max(1, std::min(rows, ln::kBwdBlocksPerSM * sm_count(device))) * 2 * C;
}

}  // namespace flopscale
