// LayerNorm over the last dim, forward and backward, with the fused residual-add variant.
//
// Forward: one warp per row; lanes stride the row with 16-byte vectors (8 bf16/fp16 or 4 fp32
// per load) when the width and pointers allow it, scalars otherwise.  Three passes over the
// row: sum (writing s = x + residual in the fused variant), sum of squared deviations (two-pass
// variance: no E[x^2] - mean^2 cancellation), normalise.  Passes 2-3 re-read the row, which
// is in L1 by then.  Saves mean and rstd (fp32) per row.
//
// Backward: one warp per row again, CTAs grid-striding over rows; each CTA accumulates its
// rows' dW = sum dy * xhat and dB = sum dy in shared memory (fp32 shared atomics), writes one
// partial row per CTA, and a second kernel reduces the partials over CTAs (no global atomics,
// deterministic for a given grid).  dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
// with dxhat = dy * w, plus the gradient arriving at s in the fused variant.
#pragma once

#include "../common.cuh"

namespace flopscale {
namespace ln {

constexpr int kFwdWarps = 4;  // rows per CTA in the forward
constexpr int kBwdWarps = 8;  // rows in flight per CTA in the backward

template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* p, float* out) {
  if constexpr (V == 1) {
    out[0] = to_float(p[0]);
  } else {
    const Vec16<T> v = *reinterpret_cast<const Vec16<T>*>(p);
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = to_float(v.v[i]);
  }
}
template <typename T, int V>
__device__ __forceinline__ void store_vec(T* p, const float* in) {
  if constexpr (V == 1) {
    p[0] = from_float<T>(in[0]);
  } else {
    Vec16<T> v;
#pragma unroll
    for (int i = 0; i < V; ++i) v.v[i] = from_float<T>(in[i]);
    *reinterpret_cast<Vec16<T>*>(p) = v;
  }
}

// x, residual, y, s_out: (rows, C); weight, bias: (C,); mean, rstd: (rows,).
// VEC16: every row start and C are multiples of 16 bytes.  HAS_RES: the fused residual add.
template <typename T, bool VEC16, bool HAS_RES>
__global__ void __launch_bounds__(kFwdWarps * 32)
_layernorm_fwd_kernel(const T* __restrict__ x, const T* __restrict__ residual, const T* __restrict__ weight,
                      const T* __restrict__ bias, T* __restrict__ y, T* s_out, float* __restrict__ mean_out,
                      float* __restrict__ rstd_out, int rows, int C, float eps) {
  constexpr int V = VEC16 ? 16 / sizeof(T) : 1;
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kFwdWarps + threadIdx.x / 32;
  if (row >= rows) return;
  const size_t off = (size_t)row * C;
  // In the fused variant the row we normalise is s, rounded to T as the caller will see it.
  const T* src = HAS_RES ? s_out + off : x + off;

  float sum = 0.f;
  for (int c = lane * V; c < C; c += 32 * V) {
    float v[V];
    load_vec<T, V>(x + off + c, v);
    if constexpr (HAS_RES) {
      float r[V];
      load_vec<T, V>(residual + off + c, r);
#pragma unroll
      for (int i = 0; i < V; ++i) v[i] = to_float(from_float<T>(v[i] + r[i]));
      store_vec<T, V>(s_out + off + c, v);
    }
#pragma unroll
    for (int i = 0; i < V; ++i) sum += v[i];
  }
  const float mean = warp_sum(sum) / C;

  float ss = 0.f;
  for (int c = lane * V; c < C; c += 32 * V) {
    float v[V];
    load_vec<T, V>(src + c, v);  // the same lane wrote these s values: program order suffices
#pragma unroll
    for (int i = 0; i < V; ++i) ss += (v[i] - mean) * (v[i] - mean);
  }
  const float rstd = rsqrtf(warp_sum(ss) / C + eps);

  for (int c = lane * V; c < C; c += 32 * V) {
    float v[V], w[V], b[V];
    load_vec<T, V>(src + c, v);
    load_vec<T, V>(weight + c, w);
    load_vec<T, V>(bias + c, b);
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = (v[i] - mean) * rstd * w[i] + b[i];
    store_vec<T, V>(y + off + c, v);
  }
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// Dynamic smem: 2 * C floats (the CTA's dW and dB partial sums).
// partial: (gridDim.x, 2, C) fp32.  dres: gradient at s_out (fused variant) or unused.
template <typename T, bool VEC16, bool HAS_DRES>
__global__ void __launch_bounds__(kBwdWarps * 32, 1)
_layernorm_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ weight,
                      const float* __restrict__ mean_in, const float* __restrict__ rstd_in,
                      const T* __restrict__ dres, T* __restrict__ dx, float* __restrict__ partial, int rows,
                      int C) {
  constexpr int V = VEC16 ? 16 / sizeof(T) : 1;
  extern __shared__ float smem_acc[];  // [0, C): dW partial, [C, 2C): dB partial
  float* s_dw = smem_acc;
  float* s_db = smem_acc + C;
  for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) smem_acc[c] = 0.f;
  __syncthreads();

  const int lane = threadIdx.x % 32;
  for (int row = blockIdx.x * kBwdWarps + threadIdx.x / 32; row < rows; row += gridDim.x * kBwdWarps) {
    const size_t off = (size_t)row * C;
    const float mean = mean_in[row], rstd = rstd_in[row];
    float sum_g = 0.f, sum_gx = 0.f;  // sum dxhat, sum dxhat * xhat
    for (int c = lane * V; c < C; c += 32 * V) {
      float g[V], xv[V], w[V];
      load_vec<T, V>(dy + off + c, g);
      load_vec<T, V>(x + off + c, xv);
      load_vec<T, V>(weight + c, w);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float xhat = (xv[i] - mean) * rstd;
        const float dxhat = g[i] * w[i];
        sum_g += dxhat;
        sum_gx += dxhat * xhat;
        xv[i] = g[i] * xhat;  // now this row's dW contribution
      }
      // Shared atomics: the CTA's 8 warps hit the same columns (8-way at worst, fp32 RED on smem).
#pragma unroll
      for (int i = 0; i < V; ++i) {
        atomicAdd(s_dw + c + i, xv[i]);
        atomicAdd(s_db + c + i, g[i]);
      }
    }
    sum_g = warp_sum(sum_g) / C;
    sum_gx = warp_sum(sum_gx) / C;
    for (int c = lane * V; c < C; c += 32 * V) {
      float g[V], xv[V], w[V], out[V];
      load_vec<T, V>(dy + off + c, g);
      load_vec<T, V>(x + off + c, xv);
      load_vec<T, V>(weight + c, w);
      float r[V];
      if constexpr (HAS_DRES) load_vec<T, V>(dres + off + c, r);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float xhat = (xv[i] - mean) * rstd;
        out[i] = (g[i] * w[i] - sum_g - xhat * sum_gx) * rstd;
        if constexpr (HAS_DRES) out[i] += r[i];
      }
      store_vec<T, V>(dx + off + c, out);
    }
  }
  __syncthreads();
  float* p = partial + (size_t)blockIdx.x * 2 * C;
  for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) p[c] = smem_acc[c];
}

// Second pass: dW[c] = sum over CTAs of partial[:, 0, c], dB[c] likewise; coalesced over c.
template <typename T>
__global__ void _layernorm_bwd_reduce_kernel(const float* __restrict__ partial, T* __restrict__ dweight,
                                             T* __restrict__ dbias, int n_partial, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float dw = 0.f, db = 0.f;
  for (int i = 0; i < n_partial; ++i) {
    dw += partial[(size_t)i * 2 * C + c];
    db += partial[(size_t)i * 2 * C + C + c];
  }
  dweight[c] = from_float<T>(dw);
  dbias[c] = from_float<T>(db);
}

}  // namespace ln
}  // namespace flopscale
