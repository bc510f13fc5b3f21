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

// CTAs of the backward: enough to fill the GPU twice over, never more than there are row groups.
int bwd_blocks(int rows, int device) {
  const int by_rows = (rows + ln::kBwdWarps - 1) / ln::kBwdWarps;
  return std::max(1, std::min(by_rows, 2 * sm_count(device)));
}

template <typename T>
void fwd_impl(const void* x, const void* res, const void* w, const void* b, void* y, void* s, float* mean,
              float* rstd, int rows, int C, float eps, cudaStream_t stream) {
  const bool vec = (C * sizeof(T)) % 16 == 0 && aligned16(x) && aligned16(res) && aligned16(w) && aligned16(b) &&
                   aligned16(y) && aligned16(s);
  const dim3 grid((rows + ln::kFwdWarps - 1) / ln::kFwdWarps), block(ln::kFwdWarps * 32);
  auto X = static_cast<const T*>(x), R = static_cast<const T*>(res), W = static_cast<const T*>(w),
       Bp = static_cast<const T*>(b);
  auto Y = static_cast<T*>(y), S = static_cast<T*>(s);
  if (vec) {
    if (res) ln::_layernorm_fwd_kernel<T, true, true><<<grid, block, 0, stream>>>(X, R, W, Bp, Y, S, mean, rstd, rows, C, eps);
    else ln::_layernorm_fwd_kernel<T, true, false><<<grid, block, 0, stream>>>(X, R, W, Bp, Y, S, mean, rstd, rows, C, eps);
  } else {
    if (res) ln::_layernorm_fwd_kernel<T, false, true><<<grid, block, 0, stream>>>(X, R, W, Bp, Y, S, mean, rstd, rows, C, eps);
    else ln::_layernorm_fwd_kernel<T, false, false><<<grid, block, 0, stream>>>(X, R, W, Bp, Y, S, mean, rstd, rows, C, eps);
  }
  FS_CHECK_LAUNCH();
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
  int max_smem = 0;
  FS_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  FS_REQUIRE(2 * C * (int64_t)sizeof(float) <= max_smem,
             "layernorm_bwd: width " + std::to_string(C) + " needs more shared memory than the device has");
  const int blocks = bwd_blocks(rows, device);
  const bool vec = (C * sizeof(T)) % 16 == 0 && aligned16(dy) && aligned16(x) && aligned16(w) &&
                   aligned16(dres) && aligned16(dx);
  auto DY = static_cast<const T*>(dy), X = static_cast<const T*>(x), W = static_cast<const T*>(w),
       DR = static_cast<const T*>(dres);
  auto DX = static_cast<T*>(dx);
  if (vec) {
    if (dres) bwd_launch<T, true, true>(DY, X, W, mean, rstd, DR, DX, partial, rows, C, blocks, stream);
    else bwd_launch<T, true, false>(DY, X, W, mean, rstd, DR, DX, partial, rows, C, blocks, stream);
  } else {
    if (dres) bwd_launch<T, false, true>(DY, X, W, mean, rstd, DR, DX, partial, rows, C, blocks, stream);
    else bwd_launch<T, false, false>(DY, X, W, mean, rstd, DR, DX, partial, rows, C, blocks, stream);
  }
  ln::_layernorm_bwd_reduce_kernel<T><<<(C + 255) / 256, 256, 0, stream>>>(partial, static_cast<T*>(dw),
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

int64_t layernorm_bwd_scratch(int rows, int C, int device) {
  return (int64_t)bwd_blocks(rows, device) * 2 * C;
}

}  // namespace flopscale
