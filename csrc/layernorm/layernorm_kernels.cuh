// LayerNorm over the last dim, forward and backward, with the fused residual-add variant.
//
// Row-resident kernels (the default; `_rows_` in the names).  A "slot" of N threads (N a
// multiple of 32) owns one row; thread t of the slot owns the vectors j = t + i * N, i < NV, of
// the row (V = 16 bytes / sizeof(T) elements each, 1 on the scalar path for widths or pointers
// that are not 16-byte aligned) and keeps them in registers from the load to the output, so
// each element crosses DRAM once.  A CTA holds R = blockDim.x / N slots.  Row sums are a warp
// shuffle, plus one __syncthreads and a shared-memory pass over the slot's warps when N > 32.
//
// Forward: small widths get one warp per row (N = 32, NV up to 4: C <= 1024 bf16 / 512 fp32 /
// 128 scalar); wider rows get NV = 4 and as many warps per row as needed (up to 16), so a
// thread's 4 16-byte loads are in flight together at every width.  Two-pass variance from the
// registers (no E[x^2] - mean^2 cancellation, no second read).  Saves mean and rstd (fp32).
//
// Backward: CTAs (grid = SMs x resident CTAs) stride over row groups; each thread accumulates
// dW = sum dy * xhat and dB = sum dy for the columns it owns in registers over all its rows, the
// CTA's slots are combined once at the end in shared memory, one fp32 partial row per CTA goes to
// global memory, and a second kernel sums the partials column-wise (no atomics: deterministic
// for a given grid).  dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) with
// dxhat = dy * w, plus the gradient arriving at s in the fused variant.
// (The first version accumulated dW/dB with two fp32 shared-memory atomics per element, a CAS
// loop on sm_80/90, at 2 CTAs per SM: ~358 GB/s at every width on an H200.)
//
// The warp-per-row kernels `_layernorm_fwd_kernel` / `_layernorm_bwd_kernel` (three passes over
// the row, re-read from cache) stay as the fallback for widths the row-resident ones do not
// cover (forward C > 2048 vectors, backward C > 512 x NV vectors) and as the lab's variant 3.
#pragma once

#include "../common.cuh"

#include <type_traits>

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

// ------------------------------------------------------------------------------------------
// Row-resident kernels
// ------------------------------------------------------------------------------------------
constexpr int kFwdRowsThreads = 256;   // CTA size target of the forward (R = 256 / N slots)
constexpr int kFwdRowsMaxThreads = 512;  // most threads per row in the forward (the register cap: 128)
constexpr int kBwdRowsThreads = 512;   // most threads per row (and per CTA) in the backward
// CTA size target of the backward (R = 256 / N slots): at ~100 registers a thread this gives 2
// CTAs per SM where N <= 256, whose load / reduce / store phases interleave (each CTA's row
// barrier stalls only its own warps), rather than one 512-thread CTA in lock step.
constexpr int kBwdRowsCta = 256;
constexpr int kBwdBlocksPerSM = 4;     // at most this many backward CTAs (partial rows) per SM

template <typename T> struct Scalar1 { T v[1]; };
// V elements of T as one register-resident value: a 16-byte vector, or one scalar.
template <typename T, int V> using Raw = typename std::conditional<V == 1, Scalar1<T>, Vec16<T>>::type;

template <typename T, int V>
__device__ __forceinline__ Raw<T, V> load_raw(const T* p) {
  if constexpr (V == 1) {
    Scalar1<T> r;
    r.v[0] = p[0];
    return r;
  } else {
    return *reinterpret_cast<const Vec16<T>*>(p);
  }
}
template <typename T, int V>
__device__ __forceinline__ void store_raw(T* p, Raw<T, V> r) {
  if constexpr (V == 1) {
    p[0] = r.v[0];
  } else {
    *reinterpret_cast<Vec16<T>*>(p) = r;
  }
}

// Sum of a (and b) over the N threads of the caller's slot; every thread of the slot gets the
// same bits (xor butterflies are symmetric, and every thread then adds the slot's warp sums in
// the same order).  N is uniform over the CTA, so the barrier is reached by all of its threads.
// red: one entry per warp of the CTA, not touched by anyone else until the caller's next barrier.
__device__ __forceinline__ float slot_sum(float a, float* red, int N) {
  a = warp_sum(a);
  if (N > 32) {
    const int warp = threadIdx.x / 32, nw = N / 32, first = warp - warp % nw;  // the slot's warps
    if (threadIdx.x % 32 == 0) red[warp] = a;
    __syncthreads();
    a = 0.f;
    for (int i = 0; i < nw; ++i) a += red[first + i];
  }
  return a;
}
__device__ __forceinline__ float2 slot_sum2(float a, float b, float2* red, int N) {
  a = warp_sum(a);
  b = warp_sum(b);
  if (N > 32) {
    const int warp = threadIdx.x / 32, nw = N / 32, first = warp - warp % nw;
    if (threadIdx.x % 32 == 0) red[warp] = make_float2(a, b);
    __syncthreads();
    a = 0.f;
    b = 0.f;
    for (int i = 0; i < nw; ++i) {
      const float2 v = red[first + i];
      a += v.x;
      b += v.y;
    }
  }
  return make_float2(a, b);
}

// One row per slot, R = blockDim.x / N slots per CTA, grid = ceil(rows / R).  NV * N * V >= C.
// Same arguments as _layernorm_fwd_kernel, plus N (threads per row).
template <typename T, bool VEC16, bool HAS_RES, int NV>
__global__ void __launch_bounds__(kFwdRowsMaxThreads)
_layernorm_fwd_rows_kernel(const T* __restrict__ x, const T* __restrict__ residual, const T* __restrict__ weight,
                           const T* __restrict__ bias, T* __restrict__ y, T* __restrict__ s_out,
                           float* __restrict__ mean_out, float* __restrict__ rstd_out, int rows, int C, float eps,
                           int N) {
  constexpr int V = VEC16 ? 16 / sizeof(T) : 1;
  __shared__ float red_mean[kFwdRowsMaxThreads / 32], red_var[kFwdRowsMaxThreads / 32];  // one per warp
  const int nvec = C / V;                       // exact: VEC16 implies C % V == 0
  const int t = threadIdx.x % N;
  const int row = blockIdx.x * (blockDim.x / N) + threadIdx.x / N;
  const bool live = row < rows;  // a dead slot (last CTA) still takes part in the barriers
  const size_t off = (size_t)(live ? row : 0) * C;
  // Vectors j = t + i * N of this row that exist: i < cnt.  (One integer compare per use rather
  // than NV predicates kept live through the kernel: those overflow the 7 predicate registers.)
  const int cnt = live ? min(NV, (nvec - t + N - 1) / N) : 0;

  Raw<T, V> v[NV];  // the row's elements this thread owns: s = x + residual in the fused variant
  Raw<T, V> r[HAS_RES ? NV : 1];
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int j = t + i * N;
    if (i < cnt) {
      v[i] = load_raw<T, V>(x + off + (size_t)j * V);
      if constexpr (HAS_RES) r[i] = load_raw<T, V>(residual + off + (size_t)j * V);
    }
  }
  if constexpr (HAS_RES) {
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int j = t + i * N;
      if (i < cnt) {
        // s rounded to T, as the caller will see it; that rounded s is what we normalise
        Raw<T, V> sv;
#pragma unroll
        for (int k = 0; k < V; ++k) sv.v[k] = from_float<T>(to_float(v[i].v[k]) + to_float(r[i].v[k]));
        store_raw<T, V>(s_out + off + (size_t)j * V, sv);
        v[i] = sv;
      }
    }
  }
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    if (i < cnt) {
#pragma unroll
      for (int k = 0; k < V; ++k) sum += to_float(v[i].v[k]);
    }
  }
  const float mean = slot_sum(sum, red_mean, N) / C;
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    if (i < cnt) {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float d = to_float(v[i].v[k]) - mean;
        ss += d * d;
      }
    }
  }
  const float rstd = rsqrtf(slot_sum(ss, red_var, N) / C + eps);
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int j = t + i * N;
    if (i < cnt) {
      const Raw<T, V> w = load_raw<T, V>(weight + (size_t)j * V), b = load_raw<T, V>(bias + (size_t)j * V);
      Raw<T, V> o;
#pragma unroll
      for (int k = 0; k < V; ++k)
        o.v[k] = from_float<T>((to_float(v[i].v[k]) - mean) * rstd * to_float(w.v[k]) + to_float(b.v[k]));
      store_raw<T, V>(y + off + (size_t)j * V, o);
    }
  }
  if (live && t == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// CTAs stride over groups of R = blockDim.x / N rows (blockDim.x <= kBwdRowsThreads).
// Dynamic smem: 2 * C floats when R > 1 (the slots' dW / dB combined), else none.
// partial: (gridDim.x, 2, C) fp32.  dres: gradient at s_out (fused variant) or unused.
template <typename T, bool VEC16, bool HAS_DRES, int NV>
__global__ void __launch_bounds__(kBwdRowsThreads)
_layernorm_bwd_rows_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ weight,
                           const float* __restrict__ mean_in, const float* __restrict__ rstd_in,
                           const T* __restrict__ dres, T* __restrict__ dx, float* __restrict__ partial, int rows,
                           int C, int N) {
  constexpr int V = VEC16 ? 16 / sizeof(T) : 1;
  __shared__ float2 red[2][kBwdRowsThreads / 32];  // double-buffered by row-group parity
  extern __shared__ float smem_acc[];             // [0, C): dW, [C, 2C): dB (R > 1 only)
  const int nvec = C / V;
  const int R = blockDim.x / N, slot = threadIdx.x / N, t = threadIdx.x % N;

  float acc_w[NV][V], acc_b[NV][V];  // this thread's columns' dW, dB over all its rows
#pragma unroll
  for (int i = 0; i < NV; ++i) {
#pragma unroll
    for (int k = 0; k < V; ++k) acc_w[i][k] = acc_b[i][k] = 0.f;
  }

  int parity = 0;
  // The loop bound depends on blockIdx only: every thread of the CTA runs the same iterations,
  // so the barrier in slot_sum2 is uniform.  red[parity] is rewritten two iterations later,
  // after every thread has passed the next iteration's barrier, i.e. finished reading it.
  for (int base = blockIdx.x * R; base < rows; base += gridDim.x * R, parity ^= 1) {
    const int row = base + slot;
    const bool live = row < rows;
    const size_t off = (size_t)(live ? row : 0) * C;
    const int cnt = live ? min(NV, (nvec - t + N - 1) / N) : 0;  // as in the forward
    const float mean = live ? mean_in[row] : 0.f, rstd = live ? rstd_in[row] : 0.f;
    Raw<T, V> g[NV], xv[NV];
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int j = t + i * N;
      if (i < cnt) {
        g[i] = load_raw<T, V>(dy + off + (size_t)j * V);
        xv[i] = load_raw<T, V>(x + off + (size_t)j * V);
      }
    }
    float sum_g = 0.f, sum_gx = 0.f;  // sum dxhat, sum dxhat * xhat over the row
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int j = t + i * N;
      if (i < cnt) {
        const Raw<T, V> w = load_raw<T, V>(weight + (size_t)j * V);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const float gk = to_float(g[i].v[k]);
          const float xhat = (to_float(xv[i].v[k]) - mean) * rstd;
          const float dxhat = gk * to_float(w.v[k]);
          sum_g += dxhat;
          sum_gx += dxhat * xhat;
          acc_w[i][k] += gk * xhat;
          acc_b[i][k] += gk;
        }
      }
    }
    const float2 sums = slot_sum2(sum_g, sum_gx, red[parity], N);
    const float mg = sums.x / C, mgx = sums.y / C;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int j = t + i * N;
      if (i < cnt) {
        const Raw<T, V> w = load_raw<T, V>(weight + (size_t)j * V);
        Raw<T, V> r;
        if constexpr (HAS_DRES) r = load_raw<T, V>(dres + off + (size_t)j * V);
        Raw<T, V> o;
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const float xhat = (to_float(xv[i].v[k]) - mean) * rstd;
          float out = (to_float(g[i].v[k]) * to_float(w.v[k]) - mg - xhat * mgx) * rstd;
          if constexpr (HAS_DRES) out += to_float(r.v[k]);
          o.v[k] = from_float<T>(out);
        }
        store_raw<T, V>(dx + off + (size_t)j * V, o);
      }
    }
  }

  float* p = partial + (size_t)blockIdx.x * 2 * C;
  if (R == 1) {
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int j = t + i * N;
      if (j < nvec) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          p[j * V + k] = acc_w[i][k];
          p[C + j * V + k] = acc_b[i][k];
        }
      }
    }
  } else {
    // Combine the R slots in shared memory, slot by slot (fixed order: deterministic).
    for (int s = 0; s < R; ++s) {
      if (slot == s) {
#pragma unroll
        for (int i = 0; i < NV; ++i) {
          const int j = t + i * N;
          if (j < nvec) {
#pragma unroll
            for (int k = 0; k < V; ++k) {
              smem_acc[j * V + k] = (s == 0 ? 0.f : smem_acc[j * V + k]) + acc_w[i][k];
              smem_acc[C + j * V + k] = (s == 0 ? 0.f : smem_acc[C + j * V + k]) + acc_b[i][k];
            }
          }
        }
      }
      __syncthreads();
    }
    for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) p[c] = smem_acc[c];
  }
}

// Second pass: dW[c] = sum over CTAs of partial[:, 0, c], dB[c] likewise.  Block (32, 32):
// threadIdx.x walks 32 columns (coalesced), threadIdx.y strides the partial rows, then a
// shared-memory sum over y in a fixed order.  grid = ceil(C / 32).
template <typename T>
__global__ void __launch_bounds__(1024)
_layernorm_bwd_reduce_kernel(const float* __restrict__ partial, T* __restrict__ dweight, T* __restrict__ dbias,
                             int n_partial, int C) {
  __shared__ float s_dw[32][33], s_db[32][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  float dw = 0.f, db = 0.f;
  if (c < C) {
#pragma unroll 4
    for (int i = threadIdx.y; i < n_partial; i += 32) {
      dw += partial[(size_t)i * 2 * C + c];
      db += partial[(size_t)i * 2 * C + C + c];
    }
  }
  s_dw[threadIdx.y][threadIdx.x] = dw;
  s_db[threadIdx.y][threadIdx.x] = db;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int i = 1; i < 32; ++i) {
      dw += s_dw[i][threadIdx.x];
      db += s_db[i][threadIdx.x];
    }
    dweight[c] = from_float<T>(dw);
    dbias[c] = from_float<T>(db);
  }
}

}  // namespace ln
}  // namespace flopscale
