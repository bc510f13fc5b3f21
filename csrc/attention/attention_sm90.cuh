// Flash-style causal attention for Hopper (sm_90a): warpgroup MMAs (wgmma) fed from
// 128-byte-swizzled shared memory.
//
// Both kernels run two warpgroups (256 threads) per CTA; every operand tile is copied with
// cp.async straight into the layout wgmma reads (rows of 64 elements = 128 B, 16-byte chunks
// XOR-swizzled by row % 8, 8-row atoms of 1024 B, one panel per 64 columns), two stages deep.
//
// Forward (CTA = 128 queries, warpgroup w owns rows 64w..64w+63; key tiles of 128):
//   S = Q K^T            wgmma m64n128k16, A = Q and B = K from shared memory (both K-major)
//   online softmax on the S accumulators (exp2, 1/sqrt(D) * log2 e folded in)
//   O += P V             wgmma m64nDk16, A = P from registers (the S accumulator layout is the
//                        A-fragment layout, so P is only re-packed), B = V read MN-major
// Backward (CTA = 128 keys, warpgroup w owns keys 64w..64w+63; query tiles of BM = 8192 / D,
// i.e. 64 at D = 128 and 128 at D = 64; dK and dV stay in registers):
//   S^T  = K Q^T, dP^T = V dO^T       wgmma m64nBMk16, shared x shared, K-major
//   P^T  = exp2(S^T scale log2e - lse log2e), dS^T = P^T (dP^T - delta)
//   dV  += P^T dO, dK += dS^T Q       wgmma m64nDk16, A from registers, B MN-major
//   dS^T goes to shared memory; dQ += dS K as one m64n64 tile per warpgroup (A = dS read
//   MN-major from the stored dS^T, B = K MN-major), added to an fp32 buffer with 8-byte
//   red.global.add.v2.f32.  delta and the dQ cast come from attention_kernels.cuh's kernels.
// Five matmuls of 2 * BM * BN * D per (query tile, key tile) pair, as in the mma.sync kernel.
//
// Descriptors follow PTX's canonical 128B-swizzle layouts: K-major, SBO = 1024 B (8 rows) and
// LBO unused, a 16-element k step is +32 B inside the 128-B row; MN-major, LBO = the panel
// stride (rows * 128 B) and SBO = 1024 B (8 k rows), a 16-row k step is +2048 B.  The swizzle
// acts on address bits, so every tile starts 1024-B aligned.
//
// Compiled only where __CUDA_ARCH_FEAT_SM90_ALL is defined (sm_90a); elsewhere the kernels are
// empty and the host never launches them (attention.cu probes which build the device runs).
#pragma once

#include "../common.cuh"
#include "wgmma.cuh"

#include <math_constants.h>

namespace flopscale {
namespace attn {
namespace sm90 {

constexpr int kThreads = 256;  // two warpgroups
constexpr int kFwdBlockM = 128, kFwdBlockN = 128;
constexpr int kBwdBlockN = 128;
template <int D> struct Bwd { static constexpr int kBlockM = 8192 / D; };

template <int D> constexpr int fwd_smem_bytes() {
  return kFwdBlockM * D * 2 + 4 * kFwdBlockN * D * 2 + 1024;  // Q, 2 stages of K and V, alignment slack
}
template <int D> constexpr int bwd_smem_bytes() {
  constexpr int BM = Bwd<D>::kBlockM;
  // K, V; 2 stages of Q and dO; dS^T; lse and delta of the tile; alignment slack
  return 2 * kBwdBlockN * D * 2 + 4 * BM * D * 2 + kBwdBlockN * BM * 2 + 2 * BM * 4 + 1024;
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Shared memory written through the generic proxy (cp.async, st.shared) and read next by the
// tensor cores (async proxy) needs this fence in each writing thread before the barrier.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keep the compiler from moving accumulator reads or writes across wgmma issue / wait.
template <int N> __device__ __forceinline__ void fence_regs(float* r) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// An opaque copy of a value: the compiler cannot hoist what is computed from it out of a loop.
// Used on shared-memory base addresses so that the (loop-invariant) wgmma descriptors are
// rebuilt each tile from one register instead of being precomputed, 2 registers each, for the
// whole loop (at D = 128 the backward spilled with them hoisted).
__device__ __forceinline__ uint32_t opaque(uint32_t x) {
  asm volatile("mov.b32 %0, %0;\n" : "+r"(x));
  return x;
}

// wgmma shared-memory descriptor, 128-byte swizzle (PTX "Matrix Descriptor Format").
__device__ __forceinline__ uint64_t desc_sw128(uint32_t addr, uint32_t lbo_bytes) {
  return (uint64_t)((addr & 0x3FFFFu) >> 4) | ((uint64_t)((lbo_bytes >> 4) & 0x3FFFu) << 16) |
         ((uint64_t)(1024 >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void cp_async_16_to(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}

// Byte offset of element (r, c) in an R-row tile stored as 64-column swizzled panels.
template <int R> __device__ __forceinline__ uint32_t sw128_offset(int r, int c) {
  return (uint32_t)((c >> 6) * (R * 128) + r * 128 + ((((c >> 3) & 7) ^ (r & 7)) << 4) + (c & 7) * 2);
}

// Copy rows [r0, r0 + R) of a (T, D) row-major matrix into a swizzled tile at s_tile; rows at
// or past T are zero-filled.  All kThreads threads take part; the caller commits the group.
template <typename T, int R, int D>
__device__ __forceinline__ void load_tile(uint32_t s_tile, const T* g, int r0, int T_len, int tid) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  static_assert((R * kChunks) % kThreads == 0, "tile must split evenly over the CTA");
#pragma unroll
  for (int i = 0; i < R * kChunks / kThreads; ++i) {
    const int c = tid + i * kThreads;
    const int r = c / kChunks, cc = c % kChunks;
    const int row = r0 + r;
    const bool ok = row < T_len;
    cp_async_16_to(s_tile + sw128_offset<R>(r, cc * 8), g + (size_t)(ok ? row : 0) * D + cc * 8, ok);
  }
}

// Pack the fp32 accumulator columns [16 kk, 16 kk + 16) as a wgmma A fragment (4 x b32).
template <typename T> __device__ __forceinline__ void acc_to_a(uint32_t* a, const float* acc, int kk) {
  a[0] = TypeTraits<T>::pack2(acc[8 * kk + 0], acc[8 * kk + 1]);
  a[1] = TypeTraits<T>::pack2(acc[8 * kk + 2], acc[8 * kk + 3]);
  a[2] = TypeTraits<T>::pack2(acc[8 * kk + 4], acc[8 * kk + 5]);
  a[3] = TypeTraits<T>::pack2(acc[8 * kk + 6], acc[8 * kk + 7]);
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// Writes 1 when this build of the kernels carries the sm_90a code path (see attention.cu).
__global__ void _attention_sm90_probe_kernel(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
}

// ==========================================================================================
// Forward.  grid (B * H, ceil(T / 128)); block 256; dynamic smem fwd_smem_bytes<D>().
// Accumulator element i of a thread (m64nN layout): row 16 * warp + lane / 4 + 8 * ((i / 2) % 2),
// column 8 * (i / 4) + 2 * (lane % 4) + i % 2, within the warpgroup's 64 rows.
// ==========================================================================================
template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1)
_attention_fwd_sm90_kernel(const T* __restrict__ Q, const T* __restrict__ K, const T* __restrict__ V,
                           T* __restrict__ O, float* __restrict__ LSE, int T_len, float scale_log2, bool causal) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int BM = kFwdBlockM, BN = kFwdBlockN;
  constexpr int kKVBytes = BN * D * 2;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t sQ = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t sK = sQ + BM * D * 2;  // 2 stages
  const uint32_t sV = sK + 2 * kKVBytes;  // 2 stages

  const int bh = blockIdx.x;
  const int m0 = (gridDim.y - 1 - blockIdx.y) * BM;  // the longest rows first
  const size_t base = (size_t)bh * T_len * D;
  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int t = lane % 4;
  const int row_base = m0 + wg * 64 + warp * 16 + lane / 4;  // and + 8
  const int wg_m0 = m0 + wg * 64;

  const int n_end = causal ? min(T_len, m0 + BM) : T_len;
  const int n_blocks = (n_end + BN - 1) / BN;

  load_tile<T, BM, D>(sQ, Q + base, m0, T_len, tid);
  load_tile<T, BN, D>(sK, K + base, 0, T_len, tid);
  load_tile<T, BN, D>(sV, V + base, 0, T_len, tid);
  cp_async_commit();

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  float row_max[2] = {-CUDART_INF_F, -CUDART_INF_F};
  float row_sum[2] = {0.f, 0.f};

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int n0 = nb * BN;
    const int stage = nb & 1;
    if (nb + 1 < n_blocks) {  // stage ^ 1 was released by the barrier that ended the last tile
      load_tile<T, BN, D>(sK + (stage ^ 1) * kKVBytes, K + base, n0 + BN, T_len, tid);
      load_tile<T, BN, D>(sV + (stage ^ 1) * kKVBytes, V + base, n0 + BN, T_len, tid);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    fence_proxy_async();
    __syncthreads();
    const uint32_t kbuf = sK + stage * kKVBytes, vbuf = sV + stage * kKVBytes, qbase = opaque(sQ);

    // ---- S = Q K^T (64 x BN per warpgroup) ---------------------------------------------------
    float s[BN / 2];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint64_t da = desc_sw128(qbase + (kk / 4) * (BM * 128) + wg * 64 * 128 + (kk % 4) * 32, 16);
      const uint64_t db = desc_sw128(kbuf + (kk / 4) * (BN * 128) + (kk % 4) * 32, 16);
      WgmmaSS<T, BN>::template run<0, 0>(s, da, db, kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs<BN / 2>(s);

    // ---- mask: keys past T, and keys after the query under the causal mask ------------------
    const bool need_mask = (n0 + BN > T_len) || (causal && n0 + BN - 1 > wg_m0);
    if (need_mask) {
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) {
        const int col = n0 + 8 * (i / 4) + 2 * t + (i % 2);
        const int row = row_base + 8 * ((i / 2) % 2);
        if (col >= T_len || (causal && col > row)) s[i] = -CUDART_INF_F;
      }
    }

    // ---- online softmax ------------------------------------------------------------------------
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * r], s[4 * j + 2 * r + 1]) * scale_log2);
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));  // a row lives in the 4 lanes of a quad
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mx_use = mx == -CUDART_INF_F ? 0.f : mx;  // a row with no key yet: exp2 gives 0, not NaN
      const float corr = exp2f(row_max[r] - mx_use);
      row_max[r] = mx;
      row_sum[r] *= corr;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        o[4 * j + 2 * r] *= corr;
        o[4 * j + 2 * r + 1] *= corr;
      }
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float p = exp2f(s[4 * j + 2 * r + e] * scale_log2 - mx_use);
          s[4 * j + 2 * r + e] = p;
          row_sum[r] += p;
        }
      }
    }

    // ---- O += P V -------------------------------------------------------------------------------
    uint32_t p[BN / 16][4];
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) acc_to_a<T>(p[kk], s, kk);
    fence_regs<D / 2>(o);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      const uint64_t db = desc_sw128(vbuf + kk * 2048, BN * 128);
      WgmmaRS<T, D>::template run<1>(o, p[kk], db, 1);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs<D / 2>(o);
    __syncthreads();  // both warpgroups are done with this stage's K and V
  }

  // ---- epilogue: O / l, lse = ln(sum_j exp(scale * s_j)) ----------------------------------------
  constexpr float kLn2 = 0.69314718055994531f;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    const int row = row_base + r * 8;
    if (row < T_len) {
      T* orow = O + base + (size_t)row * D;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<uint32_t*>(orow + 8 * j + 2 * t) =
            TypeTraits<T>::pack2(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
      }
      if (t == 0) LSE[(size_t)bh * T_len + row] = (row_max[r] + log2f(sum)) * kLn2;
    }
  }
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

// ==========================================================================================
// Backward.  grid (B * H, ceil(T / 128)); block 256; dynamic smem bwd_smem_bytes<D>().
// lse in natural-log units (as the forward saves it), delta = rowsum(dO * O), scale = 1/sqrt(D);
// dQacc (fp32, zeroed) receives the unscaled dS K.
// ==========================================================================================
template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1)
_attention_bwd_sm90_kernel(const T* __restrict__ Q, const T* __restrict__ K, const T* __restrict__ V,
                           const T* __restrict__ dO, const float* __restrict__ LSE, const float* __restrict__ Delta,
                           float* __restrict__ dQacc, T* __restrict__ dK, T* __restrict__ dV, int T_len, float scale,
                           bool causal) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int BM = Bwd<D>::kBlockM, BN = kBwdBlockN;
  constexpr int kQBytes = BM * D * 2;
  constexpr float kLog2e = 1.4426950408889634f;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t sK = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t sV = sK + BN * D * 2;
  const uint32_t sQ = sV + BN * D * 2;     // 2 stages
  const uint32_t sdO = sQ + 2 * kQBytes;   // 2 stages
  const uint32_t sdS = sdO + 2 * kQBytes;  // dS^T: BN keys x BM queries, swizzled like the rest
  float* sLse = reinterpret_cast<float*>(smem_raw + (sdS + BN * BM * 2 - smem_u32(smem_raw)));
  float* sDelta = sLse + BM;

  const int bh = blockIdx.x;
  const int n0 = blockIdx.y * BN;  // the low key tiles see the most queries: they go first
  const size_t base = (size_t)bh * T_len * D;
  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int t = lane % 4;
  const int key_base = n0 + wg * 64 + warp * 16 + lane / 4;  // and + 8
  const float scale_log2 = scale * kLog2e;

  const int m_first = causal ? n0 / BM : 0;
  const int m_blocks = (T_len + BM - 1) / BM;

  load_tile<T, BN, D>(sK, K + base, n0, T_len, tid);
  load_tile<T, BN, D>(sV, V + base, n0, T_len, tid);
  load_tile<T, BM, D>(sQ, Q + base, m_first * BM, T_len, tid);
  load_tile<T, BM, D>(sdO, dO + base, m_first * BM, T_len, tid);
  cp_async_commit();

  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.f;

  for (int mb = m_first; mb < m_blocks; ++mb) {
    const int m0 = mb * BM;
    const int stage = (mb - m_first) & 1;
    const uint32_t qbuf = sQ + stage * kQBytes, dobuf = sdO + stage * kQBytes;
    const uint32_t kbase = opaque(sK), vbase = opaque(sV), dsbase = opaque(sdS);
    __syncthreads();  // the last tile is done with sdS, sLse, sDelta and the other stage
    if (mb + 1 < m_blocks) {
      load_tile<T, BM, D>(sQ + (stage ^ 1) * kQBytes, Q + base, m0 + BM, T_len, tid);
      load_tile<T, BM, D>(sdO + (stage ^ 1) * kQBytes, dO + base, m0 + BM, T_len, tid);
      cp_async_commit();
    }
    if (tid < BM) {
      const int row = m0 + tid;
      sLse[tid] = row < T_len ? LSE[(size_t)bh * T_len + row] * kLog2e : 0.f;
      sDelta[tid] = row < T_len ? Delta[(size_t)bh * T_len + row] : 0.f;
    }
    if (mb + 1 < m_blocks) cp_async_wait<1>();
    else cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();

    // ---- S^T = K Q^T and dP^T = V dO^T (64 keys x BM queries per warpgroup) ------------------
    float s[BM / 2], dp[BM / 2];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint64_t da = desc_sw128(kbase + (kk / 4) * (BN * 128) + wg * 64 * 128 + (kk % 4) * 32, 16);
      const uint64_t db = desc_sw128(qbuf + (kk / 4) * (BM * 128) + (kk % 4) * 32, 16);
      WgmmaSS<T, BM>::template run<0, 0>(s, da, db, kk > 0);
    }
    wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint64_t da = desc_sw128(vbase + (kk / 4) * (BN * 128) + wg * 64 * 128 + (kk % 4) * 32, 16);
      const uint64_t db = desc_sw128(dobuf + (kk / 4) * (BM * 128) + (kk % 4) * 32, 16);
      WgmmaSS<T, BM>::template run<0, 0>(dp, da, db, kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs<BM / 2>(s);
    fence_regs<BM / 2>(dp);

    // ---- P^T (zero where masked: query past T, key past T, key after query), then
    //      dS^T = P^T (dP^T - delta); both packed as A fragments ---------------------------------
    const bool need_mask = (m0 + BM > T_len) || (n0 + BN > T_len) || (causal && m0 < n0 + BN - 1);
    uint32_t pa[BM / 16][4], dsa[BM / 16][4];
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {  // 16 queries at a time, so s and dp die as they are packed
#pragma unroll
      for (int i = 8 * kk; i < 8 * kk + 8; ++i) {
        const int qi = 8 * (i / 4) + 2 * t + (i % 2);  // query within the tile
        float pv = exp2f(s[i] * scale_log2 - sLse[qi]);
        if (need_mask) {
          const int q = m0 + qi;
          const int key = key_base + 8 * ((i / 2) % 2);
          if (q >= T_len || key >= T_len || (causal && q < key)) pv = 0.f;
        }
        s[i] = pv;
        dp[i] = pv * (dp[i] - sDelta[qi]);
      }
      acc_to_a<T>(pa[kk], s, kk);
      acc_to_a<T>(dsa[kk], dp, kk);
    }

    // ---- stash dS^T (keys x queries): the A operand of dK here and of dQ below ------------------
    {
      unsigned char* s_raw = smem_raw + (sdS - smem_u32(smem_raw));
      const int kr = wg * 64 + warp * 16 + lane / 4;  // key row within the CTA tile
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) {
        const int qc = 16 * kk + 2 * t;
        *reinterpret_cast<uint32_t*>(s_raw + sw128_offset<BN>(kr, qc)) = dsa[kk][0];
        *reinterpret_cast<uint32_t*>(s_raw + sw128_offset<BN>(kr + 8, qc)) = dsa[kk][1];
        *reinterpret_cast<uint32_t*>(s_raw + sw128_offset<BN>(kr, qc + 8)) = dsa[kk][2];
        *reinterpret_cast<uint32_t*>(s_raw + sw128_offset<BN>(kr + 8, qc + 8)) = dsa[kk][3];
      }
    }
    fence_proxy_async();
    // this warpgroup's 64 rows of dS^T are written (named barrier 1 + wg, its 128 threads)
    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");

    // ---- dV += P^T dO (A = P^T from registers), dK += dS^T Q (A = dS^T from shared memory,
    //      K-major); B read MN-major: k = queries, n = D ----------------------------------------------
    fence_regs<D / 2>(dv);
    fence_regs<D / 2>(dk);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      WgmmaRS<T, D>::template run<1>(dv, pa[kk], desc_sw128(dobuf + kk * 2048, BM * 128), 1);
    }
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      const uint64_t da = desc_sw128(dsbase + (kk / 4) * (BN * 128) + wg * 64 * 128 + (kk % 4) * 32, 16);
      WgmmaSS<T, D>::template run<0, 1>(dk, da, desc_sw128(qbuf + kk * 2048, BM * 128), 1);
    }
    wgmma_commit();
    wgmma_wait<0>();  // dV has read pa
    fence_regs<D / 2>(dv);
    fence_regs<D / 2>(dk);
    __syncthreads();  // all of dS^T is in shared memory

    // ---- dQ += dS K: one 64 x 64 tile per warpgroup (D = 128: all BM = 64 queries, columns
    //      64 wg..; D = 64: queries 64 wg.., all 64 columns), k = the CTA's 128 keys -------------
    {
      const int q_off = D == 128 ? 0 : 64 * wg;
      const int d_off = D == 128 ? 64 * wg : 0;
      float dq[32];
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        const uint64_t da = desc_sw128(dsbase + (q_off / 64) * (BN * 128) + kk * 2048, BN * 128);
        const uint64_t db = desc_sw128(kbase + (d_off / 64) * (BN * 128) + kk * 2048, BN * 128);
        WgmmaSS<T, 64>::template run<1, 1>(dq, da, db, kk > 0);
      }
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs<32>(dq);
      float* dq_rows = dQacc + base;
#pragma unroll
      for (int i = 0; i < 32; i += 2) {
        const int q = m0 + q_off + warp * 16 + lane / 4 + 8 * ((i / 2) % 2);
        const int col = d_off + 8 * (i / 4) + 2 * t;
        if (q < T_len) {
          float* dst = dq_rows + (size_t)q * D + col;
          asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(dst), "f"(dq[i]), "f"(dq[i + 1]) : "memory");
        }
      }
    }
  }

  // ---- epilogue: dK (times the softmax scale), dV -------------------------------------------------
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = key_base + r * 8;
    if (key < T_len) {
      T* dk_row = dK + base + (size_t)key * D;
      T* dv_row = dV + base + (size_t)key * D;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<uint32_t*>(dk_row + 8 * j + 2 * t) =
            TypeTraits<T>::pack2(dk[4 * j + 2 * r] * scale, dk[4 * j + 2 * r + 1] * scale);
        *reinterpret_cast<uint32_t*>(dv_row + 8 * j + 2 * t) =
            TypeTraits<T>::pack2(dv[4 * j + 2 * r], dv[4 * j + 2 * r + 1]);
      }
    }
  }
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

}  // namespace sm90
}  // namespace attn
}  // namespace flopscale
