// Flash-style causal attention for Hopper (sm_90a): warpgroup MMAs (wgmma) fed from
// 128-byte-swizzled shared memory.  The kernels the extension dispatches on sm_90a (lab
// variant 4 of csrc/dev/, forward and backward: the fastest measured there, H200 2026-11-26)
// and the tile code they share; every other variant lives in csrc/dev/attention_sm90_lab.cuh.
//
// Both kernels run two warpgroups (256 threads) per CTA; every operand tile is copied with
// cp.async straight into the layout wgmma reads (rows of 64 elements = 128 B, 16-byte chunks
// XOR-swizzled by row % 8, 8-row atoms of 1024 B, one panel per 64 columns), two or three
// stages deep.
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
//   dS^T goes to shared memory (swizzled like the operand tiles)
//   dV  += P^T dO, dK += dS^T Q       wgmma m64nDk16, B MN-major; A = P^T from registers,
//                                     A = dS^T from shared memory (K-major)
//   dQ += dS K as one m64n64 tile per warpgroup (A = dS read
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
#include "attention_kernels.cuh"  // store_o_lse, shared with the mma.sync forward
#include "wgmma.cuh"

#include <math_constants.h>

namespace flopscale {
namespace attn {
namespace sm90 {

constexpr int kThreads = 256;  // two warpgroups
constexpr int kFwdBlockM = 128, kFwdBlockN = 128;
constexpr int kFwdStages = 3;  // K / V stages of the forward
constexpr int kBwdBlockN = 128;
template <int D> struct Bwd { static constexpr int kBlockM = 8192 / D; };

template <int D> constexpr int fwd_smem_bytes() {
  // Q, the K and V stages, alignment slack
  return kFwdBlockM * D * 2 + 2 * kFwdStages * kFwdBlockN * D * 2 + 1024;
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
// The next tile's S = Q K^T is issued together with the last tile's O += P V, so the softmax
// of tile j runs while the tensor cores do P_{j-1} V_{j-1} (FlashAttention-3's
// intra-warpgroup overlap); K/V three stages deep, one barrier per tile (lab variant 4).
// ==========================================================================================
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// S (64 x BN of this warpgroup) = Q K^T; the caller commits.
template <typename T, int D, int BN>
__device__ __forceinline__ void issue_qk(float* s, uint32_t q_rows, uint32_t kbuf) {
  constexpr int BM = kFwdBlockM;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint64_t da = desc_sw128(q_rows + (kk / 4) * (BM * 128) + (kk % 4) * 32, 16);
    const uint64_t db = desc_sw128(kbuf + (kk / 4) * (BN * 128) + (kk % 4) * 32, 16);
    WgmmaSS<T, BN>::template run<0, 0>(s, da, db, kk > 0);
  }
}
// O += P V with P as A fragments and V read MN-major; the caller commits.
template <typename T, int D, int BN>
__device__ __forceinline__ void issue_pv(float* o, const uint32_t (*p)[4], uint32_t vbuf) {
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) WgmmaRS<T, D>::template run<1>(o, p[kk], desc_sw128(vbuf + kk * 2048, BN * 128), 1);
}

// Mask one tile's scores and turn them into probabilities against the updated running max;
// returns, per row pair, the factor by which O and the running sum must be rescaled.
template <int BN>
__device__ __forceinline__ void softmax_tile(float* s, float* row_max, float* row_sum, float* corr, int n0,
                                             int row_base, int t, int T_len, bool need_mask, bool causal,
                                             float scale_log2) {
  if (need_mask) {
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) {
      const int col = n0 + 8 * (i / 4) + 2 * t + (i % 2);
      const int row = row_base + 8 * ((i / 2) % 2);
      if (col >= T_len || (causal && col > row)) s[i] = -CUDART_INF_F;
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = row_max[r];
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * r], s[4 * j + 2 * r + 1]) * scale_log2);
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));  // a row lives in the 4 lanes of a quad
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float mx_use = mx == -CUDART_INF_F ? 0.f : mx;  // a row with no key yet: exp2 gives 0, not NaN
    corr[r] = exp2f(row_max[r] - mx_use);
    row_max[r] = mx;
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float pv = exp2f(s[4 * j + 2 * r + e] * scale_log2 - mx_use);
        s[4 * j + 2 * r + e] = pv;
        sum += pv;
      }
    }
    row_sum[r] = row_sum[r] * corr[r] + sum;
  }
}

template <int D> __device__ __forceinline__ void rescale_rows(float* o, const float* corr) {
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    o[4 * j] *= corr[0];
    o[4 * j + 1] *= corr[0];
    o[4 * j + 2] *= corr[1];
    o[4 * j + 3] *= corr[1];
  }
}

// One warpgroup's 64 query rows of the forward: O and S accumulators, P as A fragments, the
// online-softmax state, and the steps every forward variant is built from.
template <typename T, int D>
struct FwdRows {
  static constexpr int BN = kFwdBlockN;
  float o[D / 2], s[BN / 2];
  uint32_t p[BN / 16][4];
  float row_max[2] = {-CUDART_INF_F, -CUDART_INF_F}, row_sum[2] = {0.f, 0.f}, corr[2];
  int row_base, wg_m0, t, T_len;  // row_base: this thread's first row (and + 8)
  bool causal;
  float scale_log2;

  __device__ __forceinline__ FwdRows(int m0, int wg, int warp, int lane, int T_len_, bool causal_, float scale_log2_)
      : row_base(m0 + wg * 64 + warp * 16 + lane / 4), wg_m0(m0 + wg * 64), t(lane % 4), T_len(T_len_),
        causal(causal_), scale_log2(scale_log2_) {
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  }
  // keys past T, or (causal) keys after some row of this warpgroup
  __device__ __forceinline__ bool need_mask(int n0) const {
    return (n0 + BN > T_len) || (causal && n0 + BN - 1 > wg_m0);
  }
  __device__ __forceinline__ void softmax(int n0) {
    softmax_tile<BN>(s, row_max, row_sum, corr, n0, row_base, t, T_len, need_mask(n0), causal, scale_log2);
  }
  __device__ __forceinline__ void pack_p() {
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) acc_to_a<T>(p[kk], s, kk);
  }
  // S = Q K^T for the key tile at n0 (this warpgroup's Q rows at q_rows, K at kbuf), waited
  // for; softmax; O rescaled (not needed on the first tile, where O is 0); P packed.  In two
  // halves (issue, finish) for kernels that do something between them.
  __device__ __forceinline__ void issue_qk_only(uint32_t q_rows, uint32_t kbuf) {
    wgmma_fence();
    issue_qk<T, D, BN>(s, q_rows, kbuf);
    wgmma_commit();
  }
  __device__ __forceinline__ void finish_qk(int n0, bool rescale) {
    wgmma_wait<0>();
    fence_regs<BN / 2>(s);
    softmax(n0);
    if (rescale) rescale_rows<D>(o, corr);
    pack_p();
  }
  __device__ __forceinline__ void qk_softmax(uint32_t q_rows, uint32_t kbuf, int n0, bool rescale) {
    issue_qk_only(q_rows, kbuf);
    finish_qk(n0, rescale);
  }
  // O += P V (V at vbuf), waited for; also in two halves.
  __device__ __forceinline__ void issue_pv_only(uint32_t vbuf) {
    fence_regs<D / 2>(o);
    wgmma_fence();
    issue_pv<T, D, BN>(o, p, vbuf);
    wgmma_commit();
  }
  __device__ __forceinline__ void finish_pv() {
    wgmma_wait<0>();
    fence_regs<D / 2>(o);
  }
  __device__ __forceinline__ void pv(uint32_t vbuf) {
    issue_pv_only(vbuf);
    finish_pv();
  }
  // The overlapped step, in two halves: issue S of this tile (K at kbuf) and P V of the last
  // one (V at vbuf_prev) ...
  __device__ __forceinline__ void issue_qk_pv(uint32_t q_rows, uint32_t kbuf, uint32_t vbuf_prev) {
    fence_regs<D / 2>(o);
    wgmma_fence();
    issue_qk<T, D, BN>(s, q_rows, kbuf);
    wgmma_commit();
    issue_pv<T, D, BN>(o, p, vbuf_prev);
    wgmma_commit();
  }
  // ... then the softmax while P V still runs, and the rescale and packing once it is done.
  __device__ __forceinline__ void finish_qk_pv(int n0) {
    wgmma_wait<1>();  // S of this tile; P V of the last may still run
    fence_regs<BN / 2>(s);
    softmax(n0);
    wgmma_wait<0>();  // P V done: O is whole again, and p may be overwritten
    fence_regs<D / 2>(o);
    rescale_rows<D>(o, corr);
    pack_p();
  }
  __device__ __forceinline__ void store(T* O_bh, float* lse_bh) const {
    store_o_lse<T, D>(o, row_max, row_sum, row_base, t, T_len, O_bh, lse_bh);
  }
};
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1)
_attention_fwd_sm90_kernel(const T* __restrict__ Q, const T* __restrict__ K, const T* __restrict__ V,
                           T* __restrict__ O, float* __restrict__ LSE, int T_len, float scale_log2, bool causal) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int BM = kFwdBlockM, BN = kFwdBlockN;
  constexpr int kStages = kFwdStages;
  constexpr int kKVBytes = BN * D * 2;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t sQ = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t sK = sQ + BM * D * 2;          // kStages stages
  const uint32_t sV = sK + kStages * kKVBytes;  // kStages stages

  const int bh = blockIdx.x;
  const int m0 = (gridDim.y - 1 - blockIdx.y) * BM;  // the longest rows first
  const size_t base = (size_t)bh * T_len * D;
  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int n_end = causal ? min(T_len, m0 + BM) : T_len;
  const int n_blocks = (n_end + BN - 1) / BN;
  FwdRows<T, D> rows(m0, wg, warp, lane, T_len, causal, scale_log2);

  load_tile<T, BM, D>(sQ, Q + base, m0, T_len, tid);
  load_tile<T, BN, D>(sK, K + base, 0, T_len, tid);
  load_tile<T, BN, D>(sV, V + base, 0, T_len, tid);
  cp_async_commit();

  // Tile j lives in stage j % 3.  At the top of step j, tile j has landed (waited for, then
  // the barrier); tile j + 1 is issued right after the barrier into the stage of tile j - 2,
  // which every thread finished reading in step j - 1 (its P V was waited for there).
  cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();
  if (n_blocks > 1) {
    load_tile<T, BN, D>(sK + kKVBytes, K + base, BN, T_len, tid);
    load_tile<T, BN, D>(sV + kKVBytes, V + base, BN, T_len, tid);
    cp_async_commit();
  }
  rows.qk_softmax(sQ + wg * 64 * 128, sK, 0, false);
  int stage = 0;  // stage of tile nb - 1
  for (int nb = 1; nb < n_blocks; ++nb) {
    const int n0 = nb * BN;
    const int cur = stage == 2 ? 0 : stage + 1;  // stage of tile nb
    const int nxt = cur == 2 ? 0 : cur + 1;      // stage of tile nb + 1
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    if (nb + 1 < n_blocks) {
      load_tile<T, BN, D>(sK + nxt * kKVBytes, K + base, n0 + BN, T_len, tid);
      load_tile<T, BN, D>(sV + nxt * kKVBytes, V + base, n0 + BN, T_len, tid);
      cp_async_commit();
    }
    rows.issue_qk_pv(opaque(sQ) + wg * 64 * 128, sK + cur * kKVBytes, sV + stage * kKVBytes);
    rows.finish_qk_pv(n0);
    stage = cur;
  }
  rows.pv(sV + stage * kKVBytes);

  rows.store(O + base, LSE + (size_t)bh * T_len);
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

// ==========================================================================================
// Backward.  grid (B * H, ceil(T / 128)); block 256; dynamic smem bwd_smem_bytes<D>().
// lse in natural-log units (as the forward saves it), delta = rowsum(dO * O), scale = 1/sqrt(D);
// dQacc (fp32, zeroed) receives the unscaled dS K.  lse / delta come with the tile's cp.async
// group, prefetched a tile ahead; the top-of-tile barrier doubles as the one that publishes the
// landed tile (loads of the next tile are issued after it), two CTA barriers per tile; dQ added
// with red.global.add.v2.f32 (lab variant 4).
// ==========================================================================================
template <int D> constexpr int bwd_smem_bytes() {
  constexpr int BM = Bwd<D>::kBlockM;
  // K, V; 2 stages of Q and dO; dS^T; 2 stages of lse and delta; alignment slack
  return 2 * kBwdBlockN * D * 2 + 4 * BM * D * 2 + kBwdBlockN * BM * 2 + 4 * BM * 4 + 1024;
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void cp_async_4_to(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0));
}
#endif

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1)
_attention_bwd_sm90_kernel(const T* __restrict__ Q, const T* __restrict__ K, const T* __restrict__ V,
                           const T* __restrict__ dO, const float* __restrict__ LSE, const float* __restrict__ Delta,
                           float* __restrict__ dQacc, T* __restrict__ dK, T* __restrict__ dV, int T_len, float scale,
                           bool causal) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int BM = Bwd<D>::kBlockM, BN = kBwdBlockN;
  constexpr int kQBytes = BM * D * 2;
  constexpr int kRowStages = 2;  // stages of lse / delta
  constexpr float kLog2e = 1.4426950408889634f;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t smem0 = smem_u32(smem_raw);
  const uint32_t sK = (smem0 + 1023u) & ~1023u;
  const uint32_t sV = sK + BN * D * 2;
  const uint32_t sQ = sV + BN * D * 2;     // 2 stages
  const uint32_t sdO = sQ + 2 * kQBytes;   // 2 stages
  const uint32_t sdS = sdO + 2 * kQBytes;  // dS^T: BN keys x BM queries, swizzled like the rest
  const uint32_t sRows = sdS + BN * BM * 2;             // kRowStages x {lse[BM], delta[BM]}
  auto smem_ptr = [&](uint32_t addr) { return smem_raw + (addr - smem0); };

  const int bh = blockIdx.x;
  const int n0 = blockIdx.y * BN;  // the low key tiles see the most queries: they go first
  const size_t base = (size_t)bh * T_len * D;
  const size_t row0 = (size_t)bh * T_len;
  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int t = lane % 4;
  const int key_base = n0 + wg * 64 + warp * 16 + lane / 4;  // and + 8
  const float scale_log2 = scale * kLog2e;

  const int m_first = causal ? n0 / BM : 0;
  const int m_blocks = (T_len + BM - 1) / BM;

  // lse / delta of query tile m0 into row stage st
  auto load_rows = [&](int st, int m0) {
    if (tid < 2 * BM) {
      const int r = tid % BM, row = m0 + r;
      const float* src = (tid < BM ? LSE : Delta) + row0 + (row < T_len ? row : 0);
      cp_async_4_to(sRows + (st * 2 * BM + tid) * 4, src, row < T_len);
    }
  };

  load_tile<T, BN, D>(sK, K + base, n0, T_len, tid);
  load_tile<T, BN, D>(sV, V + base, n0, T_len, tid);
  load_tile<T, BM, D>(sQ, Q + base, m_first * BM, T_len, tid);
  load_tile<T, BM, D>(sdO, dO + base, m_first * BM, T_len, tid);
  load_rows(0, m_first * BM);
  cp_async_commit();

  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.f;

  for (int mb = m_first; mb < m_blocks; ++mb) {
    const int m0 = mb * BM;
    const int stage = (mb - m_first) & 1;
    const uint32_t qbuf = sQ + stage * kQBytes, dobuf = sdO + stage * kQBytes;
    const uint32_t kbase = opaque(sK), vbase = opaque(sV), dsbase = opaque(sdS);
    const float* sLse = reinterpret_cast<const float*>(smem_ptr(sRows + stage * 2 * BM * 4));
    const float* sDelta = sLse + BM;
    // This tile landed (its group was the only one in flight); after the barrier every thread
    // is done with the last tile, so the next one may go into the other stage.
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    if (mb + 1 < m_blocks) {
      load_tile<T, BM, D>(sQ + (stage ^ 1) * kQBytes, Q + base, m0 + BM, T_len, tid);
      load_tile<T, BM, D>(sdO + (stage ^ 1) * kQBytes, dO + base, m0 + BM, T_len, tid);
      load_rows(stage ^ 1, m0 + BM);
      cp_async_commit();
    }

    // ---- S^T = K Q^T and dP^T = V dO^T (64 keys x BM queries per warpgroup) ------------------
    // acc = (this warpgroup's 64 rows of the key-side tile at a_tile) x (the query tile at
    // b_tile)^T, k = D, both K-major; one commit group
    auto issue_keys_x_queries = [&](float* acc, uint32_t a_tile, uint32_t b_tile) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint64_t da = desc_sw128(a_tile + (kk / 4) * (BN * 128) + wg * 64 * 128 + (kk % 4) * 32, 16);
        const uint64_t db = desc_sw128(b_tile + (kk / 4) * (BM * 128) + (kk % 4) * 32, 16);
        WgmmaSS<T, BM>::template run<0, 0>(acc, da, db, kk > 0);
      }
      wgmma_commit();
    };
    float s[BM / 2], dp[BM / 2];
    wgmma_fence();
    issue_keys_x_queries(s, kbase, qbuf);
    issue_keys_x_queries(dp, vbase, dobuf);

    // P^T (zero where masked: query past T, key past T, key after query) and
    // dS^T = P^T (dP^T - delta), packed as A fragments; dS^T is also stashed in shared memory
    // (keys x queries) as the A operand of dK and dQ.
    const bool need_mask = (m0 + BM > T_len) || (n0 + BN > T_len) || (causal && m0 < n0 + BN - 1);
    auto prob = [&](int i) {
      const int qi = 8 * (i / 4) + 2 * t + (i % 2);  // query within the tile
      float pv = exp2f(s[i] * scale_log2 - sLse[qi] * kLog2e);
      if (need_mask) {
        const int q = m0 + qi;
        const int key = key_base + 8 * ((i / 2) % 2);
        if (q >= T_len || key >= T_len || (causal && q < key)) pv = 0.f;
      }
      return pv;
    };
    auto grad_s = [&](int i) { return s[i] * (dp[i] - sDelta[8 * (i / 4) + 2 * t + (i % 2)]); };
    unsigned char* const ds_raw = smem_ptr(sdS);
    const int kr = wg * 64 + warp * 16 + lane / 4;  // this thread's first key row within the CTA tile
    auto stash_ds = [&](const uint32_t* a, int kk) {
      const int qc = 16 * kk + 2 * t;
      *reinterpret_cast<uint32_t*>(ds_raw + sw128_offset<BN>(kr, qc)) = a[0];
      *reinterpret_cast<uint32_t*>(ds_raw + sw128_offset<BN>(kr + 8, qc)) = a[1];
      *reinterpret_cast<uint32_t*>(ds_raw + sw128_offset<BN>(kr, qc + 8)) = a[2];
      *reinterpret_cast<uint32_t*>(ds_raw + sw128_offset<BN>(kr + 8, qc + 8)) = a[3];
    };
    // dV += P^T dO: A = P^T from registers, B = dO read MN-major (k = queries, n = D)
    uint32_t pa[BM / 16][4];
    auto issue_dv = [&]() {
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) {
        WgmmaRS<T, D>::template run<1>(dv, pa[kk], desc_sw128(dobuf + kk * 2048, BM * 128), 1);
      }
    };

    wgmma_wait<0>();
    fence_regs<BM / 2>(s);
    fence_regs<BM / 2>(dp);
    uint32_t dsa[BM / 16][4];
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {  // 16 queries at a time, so s and dp die as they are packed
#pragma unroll
      for (int i = 8 * kk; i < 8 * kk + 8; ++i) {
        s[i] = prob(i);
        dp[i] = grad_s(i);
      }
      acc_to_a<T>(pa[kk], s, kk);
      acc_to_a<T>(dsa[kk], dp, kk);
    }
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) stash_ds(dsa[kk], kk);
    fence_proxy_async();
    // this warpgroup's 64 rows of dS^T are written (named barrier 1 + wg, its 128 threads)
    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");

    // ---- dV += P^T dO, dK += dS^T Q (A = dS^T from shared memory,
    //      K-major; B = Q read MN-major) --------------------------------------------------------------
    fence_regs<D / 2>(dv);
    fence_regs<D / 2>(dk);
    wgmma_fence();
    issue_dv();
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
#pragma unroll
    for (int i = 0; i < 32; i += 2) {
      const int q = m0 + q_off + warp * 16 + lane / 4 + 8 * ((i / 2) % 2);
      const int col = d_off + 8 * (i / 4) + 2 * t;
      if (q < T_len) {
        float* dst = dQacc + base + (size_t)q * D + col;
        asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(dst), "f"(dq[i]), "f"(dq[i + 1]) : "memory");
      }
    }
  }

  store_dk_dv<T, D>(dk, dv, key_base, t, T_len, scale, dK + base, dV + base);
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

}  // namespace sm90
}  // namespace attn
}  // namespace flopscale
