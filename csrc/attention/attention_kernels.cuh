// Flash-style causal attention on tensor cores (mma.sync m16n8k16, fp32 accumulate).
//
// Forward (one CTA = 64 queries of one (b, h), 4 warps x 16 query rows): stream 64-key tiles
// of K and V through shared memory with cp.async, S = Q K^T on tensor cores, an online
// softmax in registers (exp2 with the 1/sqrt(D) * log2(e) scale folded in), O += P V with P
// re-packed straight from the S accumulators into A fragments.  Saves the per-row log-sum-exp.
//
// Backward (FlashAttention-2 order, one CTA = 64 keys, 4 warps x 16 key rows): dK and dV stay
// in registers while the CTA walks the query tiles at or below the diagonal; per tile it
// recomputes S^T = K Q^T and P^T from the saved LSE, dV += P^T dO, dP^T = V dO^T,
// dS^T = P^T (dP^T - delta), dK += dS^T Q, and dQ += dS K goes to an fp32 accumulator with
// atomics (every key tile adds into the same dQ rows; 8-byte red.v2.f32 on sm_90).  delta = rowsum(dO * O) comes from a
// preprocess kernel, the fp32 dQ is scaled and cast by a postprocess kernel.  At D = 128 the
// next query tile's Q and dO are prefetched (cp.async, two stages) while the current one computes.
//
// Shapes: (B, H, T, D) contiguous, D in {64, 128}; any T >= 1 (ragged tails are zero-filled
// in shared memory and masked).  Scores use scale = 1/sqrt(D).
#pragma once

#include "../common.cuh"

#include <math_constants.h>

namespace flopscale {
namespace attn {

// 8 halves (16 B) of padding per shared-memory row: a row stride of 144 or 272 bytes is 16 B
// mod 128 B, so the 8 row addresses of one ldmatrix phase fall on 8 distinct 16-byte bank groups.
constexpr int kPad = 8;
constexpr int kThreads = 128;  // 4 warps

constexpr int kFwdBlockM = 64;  // queries per CTA (4 warps x 16 rows)
constexpr int kFwdBlockN = 64;  // keys per K/V tile
// Backward: 64 keys per CTA.  Queries per tile: 64 for D = 64; 32 for D = 128, where the
// register-resident dK and dV (2 x 16 x 128 fp32 per warp = 128 registers a thread) leave no
// room for 64-wide S^T and dP^T tiles without spilling.
// Q / dO stages: D = 128 prefetches the next query tile into a second stage while this one
// computes (239 -> 244 registers, still 2 CTAs per SM); at D = 64 the prefetch took the kernel
// from 168 to 206 registers (3 -> 2 CTAs per SM) or spilled when capped, so it loads in place.
template <int D> struct BwdTiles {
  static constexpr int kBlockM = D <= 64 ? 64 : 32;
  static constexpr int kBlockN = 64;
  static constexpr int kStages = D <= 64 ? 1 : 2;
};

template <int D> constexpr int fwd_smem_bytes() { return 3 * kFwdBlockM * (D + kPad) * 2; }
// Backward smem: K, V (BN rows each), Q and dO (kStages of BM rows each), dS^T (BN x BM), and
// LSE / delta of the tile.
template <int D> constexpr int bwd_smem_bytes() {
  return (2 * BwdTiles<D>::kBlockN * (D + kPad) + 2 * BwdTiles<D>::kStages * BwdTiles<D>::kBlockM * (D + kPad) +
          BwdTiles<D>::kBlockN * (BwdTiles<D>::kBlockM + kPad)) * 2 +
         2 * BwdTiles<D>::kBlockM * 4;
}

// Copy a (ROWS, D) tile starting at global row r0 into shared memory (row stride D + kPad);
// rows at or past T are zero-filled.  All kThreads threads take part; the caller commits.
template <typename T, int ROWS, int D>
__device__ __forceinline__ void load_tile_async(T* smem, const T* gmem, int r0, int T_len, int tid) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
#pragma unroll
  for (int c = tid; c < ROWS * kChunks; c += kThreads) {
    const int r = c / kChunks, cc = c % kChunks;
    const int row = r0 + r;
    const bool ok = row < T_len;
    cp_async_16(smem + r * (D + kPad) + cc * 8, gmem + (size_t)(ok ? row : 0) * D + cc * 8, ok);
  }
}

// A fragment (16 x 16, row-major in smem with row stride LD) at (row0, col0).
template <typename T, int LD>
__device__ __forceinline__ void load_a(uint32_t* a, const T* smem, int row0, int col0, int lane) {
  ldmatrix_x4(a[0], a[1], a[2], a[3],
              smem + (row0 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + col0 + (lane / 16) * 8);
}
// A fragment whose smem holds A^T: A[m][k] = smem[k][m], at A-origin (m0, k0).
template <typename T, int LD>
__device__ __forceinline__ void load_a_trans(uint32_t* a, const T* smem, int m0, int k0, int lane) {
  ldmatrix_x4_trans(a[0], a[1], a[2], a[3],
                    smem + (k0 + (lane % 8) + (lane / 16) * 8) * LD + m0 + ((lane / 8) % 2) * 8);
}
// B fragments of two adjacent n-tiles (n0 and n0 + 8) for k in [k0, k0 + 16), when smem holds
// B^T row-major: B[k][n] = smem[n][k] (K in Q K^T).  b[0], b[1]: n-tile n0; b[2], b[3]: n0 + 8.
template <typename T, int LD>
__device__ __forceinline__ void load_b_nk(uint32_t* b, const T* smem, int n0, int k0, int lane) {
  ldmatrix_x4(b[0], b[1], b[2], b[3],
              smem + (n0 + (lane % 8) + (lane / 16) * 8) * LD + k0 + ((lane / 8) % 2) * 8);
}
// Same, when smem holds B row-major: B[k][n] = smem[k][n] (V in P V), via ldmatrix.trans.
template <typename T, int LD>
__device__ __forceinline__ void load_b_kn(uint32_t* b, const T* smem, int n0, int k0, int lane) {
  ldmatrix_x4_trans(b[0], b[1], b[2], b[3],
                    smem + (k0 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + n0 + (lane / 16) * 8);
}

// Re-pack two adjacent fp32 C tiles (columns k0..k0+7 and k0+8..k0+15) as one A fragment.
template <typename T>
__device__ __forceinline__ void c_to_a(uint32_t* a, const float* c_lo, const float* c_hi) {
  a[0] = TypeTraits<T>::pack2(c_lo[0], c_lo[1]);
  a[1] = TypeTraits<T>::pack2(c_lo[2], c_lo[3]);
  a[2] = TypeTraits<T>::pack2(c_hi[0], c_hi[1]);
  a[3] = TypeTraits<T>::pack2(c_hi[2], c_hi[3]);
}

// Forward epilogue, shared with the wgmma kernels (attention_sm90.cuh): O / l for this thread's
// two rows of an m16n8-layout accumulator (element 4 j + 2 r + e: row row_base + 8 r, column
// 8 j + 2 t + e), and lse = ln(sum_j exp(scale * s_j)) in natural-log units.
template <typename T, int D>
__device__ __forceinline__ void store_o_lse(const float* o, const float* row_max, const float* row_sum, int row_base,
                                            int t, int T_len, T* O_bh, float* lse_bh) {
  constexpr float kLn2 = 0.69314718055994531f;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    const int row = row_base + r * 8;
    if (row < T_len) {
      T* orow = O_bh + (size_t)row * D;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<uint32_t*>(orow + 8 * j + 2 * t) =
            TypeTraits<T>::pack2(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
      }
      if (t == 0) lse_bh[row] = (row_max[r] + log2f(sum)) * kLn2;
    }
  }
}

// ==========================================================================================
// Forward
// ==========================================================================================
// grid (B * H, ceil(T / 64)); block 128; dynamic smem fwd_smem_bytes<D>().
template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
_attention_fwd_kernel(const T* __restrict__ Q, const T* __restrict__ K, const T* __restrict__ V,
                      T* __restrict__ O, float* __restrict__ LSE, int T_len, float scale_log2, bool causal) {
  constexpr int BM = kFwdBlockM, BN = kFwdBlockN, LD = D + kPad;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);  // (BM, LD)
  T* sK = sQ + BM * LD;                    // (BN, LD)
  T* sV = sK + BN * LD;                    // (BN, LD)

  const int bh = blockIdx.x;
  // The last query tiles see the most keys under the causal mask: schedule them first.
  const int m0 = (gridDim.y - 1 - blockIdx.y) * BM;
  const size_t base = (size_t)bh * T_len * D;
  const T* q = Q + base;
  const T* k = K + base;
  const T* v = V + base;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;

  const int n_end = causal ? min(T_len, m0 + BM) : T_len;
  const int n_blocks = (n_end + BN - 1) / BN;

  load_tile_async<T, BM, D>(sQ, q, m0, T_len, tid);
  load_tile_async<T, BN, D>(sK, k, 0, T_len, tid);
  cp_async_commit();  // group: Q, K_0
  load_tile_async<T, BN, D>(sV, v, 0, T_len, tid);
  cp_async_commit();  // group: V_0

  float acc_o[D / 8][4];  // this warp's 16 rows x D, C-fragment layout
#pragma unroll
  for (int i = 0; i < D / 8; ++i) acc_o[i][0] = acc_o[i][1] = acc_o[i][2] = acc_o[i][3] = 0.f;
  // Running max (log2 domain, scores already times scale * log2 e) and partial sum for rows
  // g and g + 8 of the warp's 16; the sum covers only this lane's columns until the end.
  float row_max[2] = {-CUDART_INF_F, -CUDART_INF_F};
  float row_sum[2] = {0.f, 0.f};
  const int row_base = m0 + warp * 16 + g;

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int n0 = nb * BN;
    cp_async_wait<1>();  // Q and K_nb have landed; V_nb may still be in flight
    __syncthreads();

    // ---- S = Q K^T: 16 rows x BN keys per warp -------------------------------------------
    float s[BN / 8][4];
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      load_a<T, LD>(a, sQ, warp * 16, kk * 16, lane);
#pragma unroll
      for (int nn = 0; nn < BN / 16; ++nn) {
        uint32_t b[4];
        load_b_nk<T, LD>(b, sK, nn * 16, kk * 16, lane);
        Mma<T>::run(s[2 * nn], a, b[0], b[1]);
        Mma<T>::run(s[2 * nn + 1], a, b[2], b[3]);
      }
    }

    // ---- mask: keys past T, and keys after the query under the causal mask ---------------
    const bool need_mask = (n0 + BN > T_len) || (causal && n0 + BN - 1 > m0);
    if (need_mask) {
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = n0 + j * 8 + 2 * t + (e & 1);
          const int row = row_base + (e >> 1) * 8;
          if (col >= T_len || (causal && col > row)) s[j][e] = -CUDART_INF_F;
        }
      }
    }

    // ---- online softmax ------------------------------------------------------------------
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]) * scale_log2);
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));  // the 4 lanes of a quad share a row
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // A row with every key masked so far keeps max -inf; subtract 0 then so exp2 gives 0, not NaN.
      const float mx_use = mx == -CUDART_INF_F ? 0.f : mx;
      const float corr = exp2f(row_max[r] - mx_use);
      row_max[r] = mx;
      row_sum[r] *= corr;
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        acc_o[i][2 * r] *= corr;
        acc_o[i][2 * r + 1] *= corr;
      }
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float p = exp2f(s[j][2 * r + e] * scale_log2 - mx_use);
          s[j][2 * r + e] = p;
          row_sum[r] += p;
        }
      }
    }

    cp_async_wait<0>();  // V_nb has landed
    __syncthreads();     // ... and every warp is done reading sK
    if (nb + 1 < n_blocks) {
      load_tile_async<T, BN, D>(sK, k, n0 + BN, T_len, tid);  // overlaps with P V below
      cp_async_commit();
    }

    // ---- O += P V ------------------------------------------------------------------------
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4];
      c_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t b[4];
        load_b_kn<T, LD>(b, sV, dn * 16, kk * 16, lane);
        Mma<T>::run(acc_o[2 * dn], a, b[0], b[1]);
        Mma<T>::run(acc_o[2 * dn + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // every warp is done reading sV
    if (nb + 1 < n_blocks) {
      load_tile_async<T, BN, D>(sV, v, n0 + BN, T_len, tid);
      cp_async_commit();
    }
  }

  store_o_lse<T, D>(&acc_o[0][0], row_max, row_sum, row_base, t, T_len, O + base, LSE + (size_t)bh * T_len);
}

// Backward epilogue, shared with the wgmma kernels (attention_sm90.cuh): this thread's two key
// rows of dK (times the softmax scale) and dV from m16n8-layout accumulators.
template <typename T, int D>
__device__ __forceinline__ void store_dk_dv(const float* dk, const float* dv, int key_base, int t, int T_len,
                                            float scale, T* dK_bh, T* dV_bh) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = key_base + r * 8;
    if (key < T_len) {
      T* dk_row = dK_bh + (size_t)key * D;
      T* dv_row = dV_bh + (size_t)key * D;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<uint32_t*>(dk_row + 8 * j + 2 * t) =
            TypeTraits<T>::pack2(dk[4 * j + 2 * r] * scale, dk[4 * j + 2 * r + 1] * scale);
        *reinterpret_cast<uint32_t*>(dv_row + 8 * j + 2 * t) =
            TypeTraits<T>::pack2(dv[4 * j + 2 * r], dv[4 * j + 2 * r + 1]);
      }
    }
  }
}

// ==========================================================================================
// Backward
// ==========================================================================================
// delta[row] = sum_d dO[row, d] * O[row, d] (fp32), one warp per row of the (B*H*T, D) view.
template <typename T, int D>
__global__ void __launch_bounds__(256)
_attention_bwd_preprocess_kernel(const T* __restrict__ dO, const T* __restrict__ O, float* __restrict__ delta,
                                 int64_t rows) {
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const T* a = dO + row * D;
  const T* b = O + row * D;
  float acc = 0.f;
#pragma unroll
  for (int d = 2 * lane; d < D; d += 64) {
    acc += to_float(a[d]) * to_float(b[d]) + to_float(a[d + 1]) * to_float(b[d + 1]);
  }
  acc = warp_sum(acc);
  if (lane == 0) delta[row] = acc;
}

// dq = scale * dq_accum, cast to T.
template <typename T>
__global__ void _attention_bwd_dq_kernel(const float* __restrict__ dq_accum, T* __restrict__ dq, float scale,
                                         int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    dq[i] = from_float<T>(dq_accum[i] * scale);
  }
}

// grid (B * H, ceil(T / 64)); block 128; dynamic smem bwd_smem_bytes<D>().
// lse is in natural-log units (as the forward saves it); scale = 1/sqrt(D).
template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
_attention_bwd_kernel(const T* __restrict__ Q, const T* __restrict__ K, const T* __restrict__ V,
                      const T* __restrict__ dO, const float* __restrict__ LSE, const float* __restrict__ Delta,
                      float* __restrict__ dQacc, T* __restrict__ dK, T* __restrict__ dV, int T_len, float scale,
                      bool causal) {
  constexpr int BM = BwdTiles<D>::kBlockM, BN = BwdTiles<D>::kBlockN;
  constexpr int LD = D + kPad, LDS = BM + kPad;
  constexpr float kLog2e = 1.4426950408889634f;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);  // (BN, LD)
  T* sV = sK + BN * LD;                    // (BN, LD)
  constexpr int kStages = BwdTiles<D>::kStages;
  T* sQbuf = sV + BN * LD;                 // kStages x (BM, LD)
  T* sdObuf = sQbuf + kStages * BM * LD;   // kStages x (BM, LD)
  T* sdS = sdObuf + kStages * BM * LD;     // (BN, LDS): dS^T, keys x queries
  float* sLse = reinterpret_cast<float*>(sdS + BN * LDS);  // (BM,) lse * log2 e
  float* sDelta = sLse + BM;                                // (BM,)

  const int bh = blockIdx.x;
  const int n0 = (gridDim.y - 1 - blockIdx.y) * BN;
  const size_t base = (size_t)bh * T_len * D;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const float scale_log2 = scale * kLog2e;

  const int m_first = causal ? n0 / BM : 0;  // query tiles wholly above the diagonal see none of these keys
  const int m_blocks = (T_len + BM - 1) / BM;  // m_first < m_blocks: n0 < T_len

  // cp.async groups, completed in order: {K, V}, then one {Q, dO} group per query tile.
  load_tile_async<T, BN, D>(sK, K + base, n0, T_len, tid);
  load_tile_async<T, BN, D>(sV, V + base, n0, T_len, tid);
  cp_async_commit();
  if constexpr (kStages == 2) {
    load_tile_async<T, BM, D>(sQbuf, Q + base, m_first * BM, T_len, tid);
    load_tile_async<T, BM, D>(sdObuf, dO + base, m_first * BM, T_len, tid);
    cp_async_commit();
  }

  float acc_dk[D / 8][4], acc_dv[D / 8][4];  // this warp's 16 keys x D
#pragma unroll
  for (int i = 0; i < D / 8; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dk[i][e] = acc_dv[i][e] = 0.f;
  }
  const int key_base = n0 + warp * 16 + g;  // + 8 for the C fragment's second row

  for (int mb = m_first; mb < m_blocks; ++mb) {
    const int m0 = mb * BM;
    const int stage = kStages == 2 ? (mb - m_first) & 1 : 0;
    T* sQ = sQbuf + stage * BM * LD;
    T* sdO = sdObuf + stage * BM * LD;
    // The previous tile is done with sQ / sdO (every stage), sdS, sLse, sDelta.
    __syncthreads();
    const bool prefetch = kStages == 2 && mb + 1 < m_blocks;
    if constexpr (kStages == 2) {
      if (prefetch) {  // the next query tile into the other stage, in flight during this one
        load_tile_async<T, BM, D>(sQbuf + (stage ^ 1) * BM * LD, Q + base, m0 + BM, T_len, tid);
        load_tile_async<T, BM, D>(sdObuf + (stage ^ 1) * BM * LD, dO + base, m0 + BM, T_len, tid);
        cp_async_commit();
      }
    } else {
      load_tile_async<T, BM, D>(sQ, Q + base, m0, T_len, tid);
      load_tile_async<T, BM, D>(sdO, dO + base, m0, T_len, tid);
      cp_async_commit();
    }
    if (tid < BM) {
      const int row = m0 + tid;
      sLse[tid] = row < T_len ? LSE[(size_t)bh * T_len + row] * kLog2e : 0.f;
      sDelta[tid] = row < T_len ? Delta[(size_t)bh * T_len + row] : 0.f;
    }
    // This tile's group (and K, V) complete: all but the newest group while a prefetch is in
    // flight, else all.
    if (prefetch) cp_async_wait<1>();
    else cp_async_wait<0>();
    __syncthreads();

    // ---- S^T = K Q^T: 16 keys x BM queries per warp ---------------------------------------
    float s[BM / 8][4];
#pragma unroll
    for (int j = 0; j < BM / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      load_a<T, LD>(a, sK, warp * 16, kk * 16, lane);
#pragma unroll
      for (int nn = 0; nn < BM / 16; ++nn) {
        uint32_t b[4];
        load_b_nk<T, LD>(b, sQ, nn * 16, kk * 16, lane);
        Mma<T>::run(s[2 * nn], a, b[0], b[1]);
        Mma<T>::run(s[2 * nn + 1], a, b[2], b[3]);
      }
    }

    // ---- P^T = exp(scale * S^T - lse), zero where masked (query past T, key past T, or
    //      key after query): masked entries must be exactly 0 so they add nothing to dQ ----
    const bool need_mask = (m0 + BM > T_len) || (n0 + BN > T_len) || (causal && m0 < n0 + BN - 1);
#pragma unroll
    for (int j = 0; j < BM / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qi = j * 8 + 2 * t + (e & 1);  // query within the tile
        float p = exp2f(s[j][e] * scale_log2 - sLse[qi]);
        if (need_mask) {
          const int qrow = m0 + qi;
          const int key = key_base + (e >> 1) * 8;
          if (qrow >= T_len || key >= T_len || (causal && qrow < key)) p = 0.f;
        }
        s[j][e] = p;
      }
    }

    // ---- dV += P^T dO ----------------------------------------------------------------------
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      uint32_t a[4];
      c_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t b[4];
        load_b_kn<T, LD>(b, sdO, dn * 16, kk * 16, lane);
        Mma<T>::run(acc_dv[2 * dn], a, b[0], b[1]);
        Mma<T>::run(acc_dv[2 * dn + 1], a, b[2], b[3]);
      }
    }

    // ---- dP^T = V dO^T, then dS^T = P^T (dP^T - delta) (in place) ---------------------------
    float dp[BM / 8][4];
#pragma unroll
    for (int j = 0; j < BM / 8; ++j) dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      load_a<T, LD>(a, sV, warp * 16, kk * 16, lane);
#pragma unroll
      for (int nn = 0; nn < BM / 16; ++nn) {
        uint32_t b[4];
        load_b_nk<T, LD>(b, sdO, nn * 16, kk * 16, lane);
        Mma<T>::run(dp[2 * nn], a, b[0], b[1]);
        Mma<T>::run(dp[2 * nn + 1], a, b[2], b[3]);
      }
    }
#pragma unroll
    for (int j = 0; j < BM / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = s[j][e] * (dp[j][e] - sDelta[j * 8 + 2 * t + (e & 1)]);
    }

    // ---- dK += dS^T Q; stash dS^T (as T) for the dQ product ---------------------------------
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      uint32_t a[4];
      c_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
      // a[0]: (key g, queries 2t..), a[1]: (key g+8, ...), a[2]/a[3]: queries + 8
      const int r = warp * 16 + g;
      const int c = kk * 16 + 2 * t;
      *reinterpret_cast<uint32_t*>(sdS + r * LDS + c) = a[0];
      *reinterpret_cast<uint32_t*>(sdS + (r + 8) * LDS + c) = a[1];
      *reinterpret_cast<uint32_t*>(sdS + r * LDS + c + 8) = a[2];
      *reinterpret_cast<uint32_t*>(sdS + (r + 8) * LDS + c + 8) = a[3];
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t b[4];
        load_b_kn<T, LD>(b, sQ, dn * 16, kk * 16, lane);
        Mma<T>::run(acc_dk[2 * dn], a, b[0], b[1]);
        Mma<T>::run(acc_dk[2 * dn + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // sdS complete

    // ---- dQ[m0 : m0 + BM] += dS K  (unscaled; the postprocess multiplies by scale) ----------
    // Warps split the (BM, D) output: BM / 16 row groups x (4 / (BM / 16)) column groups.
    constexpr int kRowGroups = BM / 16;
    constexpr int kColGroups = 4 / kRowGroups;
    constexpr int kCols = D / kColGroups;
    const int qr0 = (warp % kRowGroups) * 16;
    const int dc0 = (warp / kRowGroups) * kCols;
    float* dq_rows = dQacc + base;
#pragma unroll
    for (int dn = 0; dn < kCols / 16; ++dn) {
      float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        uint32_t a[4], b[4];
        load_a_trans<T, LDS>(a, sdS, qr0, kk * 16, lane);
        load_b_kn<T, LD>(b, sK, dc0 + dn * 16, kk * 16, lane);
        Mma<T>::run(acc[0], a, b[0], b[1]);
        Mma<T>::run(acc[1], a, b[2], b[3]);
      }
      // C fragment: acc[h][2r], acc[h][2r + 1] are (row g + 8r, columns 2t and 2t + 1), so each
      // pair is one 8-byte float2 atomic on sm_90 (red.global.add.v2.f32): half the atomic
      // operations.  (H200, first run: the backward ran at ~172 G fp32 atomics/s at both
      // D = 64 and D = 128, i.e. bound by the dQ atomics rather than by the matmuls.)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int qrow = m0 + qr0 + g + r * 8;
          const int col = dc0 + dn * 16 + h * 8 + 2 * t;  // even: dst is 8-byte aligned
          if (qrow < T_len) {
            float* dst = dq_rows + (size_t)qrow * D + col;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            // red (no return value): atomicAdd(float2*) is atom.v2, whose unused result cost a
            // stack slot and a spill here.
            asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(dst), "f"(acc[h][2 * r]),
                         "f"(acc[h][2 * r + 1])
                         : "memory");
#else
            atomicAdd(dst, acc[h][2 * r]);
            atomicAdd(dst + 1, acc[h][2 * r + 1]);
#endif
          }
        }
      }
    }
  }

  store_dk_dv<T, D>(&acc_dk[0][0], &acc_dv[0][0], key_base, t, T_len, scale, dK + base, dV + base);
}

}  // namespace attn
}  // namespace flopscale
