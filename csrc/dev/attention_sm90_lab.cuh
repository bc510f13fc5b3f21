// The lab's wgmma attention variants (sm_90a): every one not shipped in the extension, each
// numbered as csrc/dev/README.md's table numbers it (one scheme for forward and backward: the
// same number is the same idea in both directions where both have it).  Included by the lab
// programs csrc/dev/attention_forward.cu, attention_backward.cu and tma_tile.cu, never by the
// extension; the shipped kernels (variant 4) and the tile code these build on are in
// csrc/attention/attention_sm90.cuh.
//
//   forward   3 first wgmma loop · 5 as 4 + ping-pong within a tile · 6 as 4 + TMA on
//             mbarriers · 7 warp-specialized (TMA producer, two consumers taking turns)
//   backward  3 first wgmma loop · 5 as 4 + fewer tensor-core waits · 6 as 4 + dQ by bulk
//             reduce · 7 warp-specialized (TMA producer) · 8 as 7 + a dQ-writer warp (TMA reduce)
//
// Promoting one: move its kernel (and whatever only it uses) into csrc/attention/, dispatch it
// from attention.cu, and move the loser here in its place, with its measurements in the README.
#pragma once

#include "../attention/attention_sm90.cuh"

#include <cuda.h>  // CUtensorMap (the type only: tensor maps are encoded through the runtime's driver entry point)

namespace flopscale {
namespace attn {
namespace sm90 {
namespace lab {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// The same for fp32: element (r, c) of an R-row tile stored as 32-column panels of 128-byte
// rows, 16-byte chunks XOR-swizzled by row % 8 (the box layout of tensor_map.h's tile_map_f32).
template <int R> __device__ __forceinline__ uint32_t sw128_f32_offset(int r, int c) {
  return (uint32_t)((c >> 5) * (R * 128) + r * 128 + ((((c >> 2) & 7) ^ (r & 7)) << 4) + (c & 3) * 4);
}

// The two fp32 values of a pack2'd pair (the low half first).
template <typename T> __device__ __forceinline__ float2 unpack2(uint32_t v) {
  const typename TypeTraits<T>::T2 h = *reinterpret_cast<const typename TypeTraits<T>::T2*>(&v);
  return make_float2(to_float(h.x), to_float(h.y));
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// ==========================================================================================
// Forward variants 3 and 5: the wgmma forward's loop as it was (3) and with one more idea (5).
// grid (B * H, ceil(T / 128)); block 256; dynamic smem fwd_smem_bytes<D, kVariant>().
//   variant 3: per key tile, S = Q K^T, wait, softmax, O += P V, wait; K/V two stages deep
//              (the first wgmma forward).
//   variant 4: the shipped sm90::_attention_fwd_sm90_kernel (the next tile's S = Q K^T issued
//              with the last tile's O += P V, three stages); this template's other branch is
//              that kernel's code, kept so that 5 reads as 4 plus one change.
//   variant 5: as 4, and warpgroup 1 issues its GEMMs only after warpgroup 0 has issued its
//              own (a named barrier), so that warpgroup 0's softmax runs under warpgroup 1's
//              GEMMs: FlashAttention-3's ping-pong, within one tile (the per-tile CTA barrier
//              still aligns them).  Written without a GPU: not yet run.
// ==========================================================================================
template <int kVariant> __host__ __device__ constexpr int fwd_stages() { return kVariant == 3 ? 2 : 3; }
template <int D, int kVariant> constexpr int fwd_smem_bytes() {
  // Q, the K and V stages, alignment slack
  return kFwdBlockM * D * 2 + 2 * fwd_stages<kVariant>() * kFwdBlockN * D * 2 + 1024;
}

template <typename T, int D, int kVariant>
__global__ void __launch_bounds__(kThreads, 1)
_attention_fwd_sm90_kernel(const T* __restrict__ Q, const T* __restrict__ K, const T* __restrict__ V,
                           T* __restrict__ O, float* __restrict__ LSE, int T_len, float scale_log2, bool causal) {
  static_assert(kVariant == 3 || kVariant == 5, "lab forward variants 3 and 5 (4 is sm90::_attention_fwd_sm90_kernel)");
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int BM = kFwdBlockM, BN = kFwdBlockN;
  constexpr int kStages = fwd_stages<kVariant>();
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

  if constexpr (kVariant == 3) {
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
      rows.qk_softmax(opaque(sQ) + wg * 64 * 128, sK + stage * kKVBytes, n0, true);
      rows.pv(sV + stage * kKVBytes);
      __syncthreads();  // both warpgroups are done with this stage's K and V
    }
  } else {
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
      // variant 5: warpgroup 1 issues after warpgroup 0 (named barrier 3: 128 arrive, 128 sync)
      if constexpr (kVariant == 5) {
        if (wg == 1) asm volatile("bar.sync 3, 256;\n" ::: "memory");
      }
      rows.issue_qk_pv(opaque(sQ) + wg * 64 * 128, sK + cur * kKVBytes, sV + stage * kKVBytes);
      if constexpr (kVariant == 5) {
        if (wg == 0) asm volatile("bar.arrive 3, 256;\n" ::: "memory");
      }
      rows.finish_qk_pv(n0);
      stage = cur;
    }
    rows.pv(sV + stage * kKVBytes);
  }

  rows.store(O + base, LSE + (size_t)bh * T_len);
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

// ==========================================================================================
// Forward variant 6, TMA (not yet run: written without a GPU).  The same per-tile work as
// variant 4 (the shipped forward), but no CTA barrier per tile:
// one thread (tid 0) issues the tile copies with the tensor-memory accelerator
// (cp.async.bulk.tensor, 128-byte swizzle: the layout the wgmma descriptors read), each stage
// has a "full" mbarrier (the copy's byte count) and an "empty" one (one arrival per warpgroup
// once its P V of that tile is done), so each warpgroup waits only for its own data and the
// two drift apart by up to a tile instead of meeting every tile.
// Tensor maps: a 2-D (B * H * T, D) view of Q, K and V, boxes of 128 rows x 64 columns; rows
// past T read the next head's rows (masked like the zero-filled rows of the other variants:
// keys past T get -inf, query rows past T are not stored) and rows past B * H * T read zeros.
// grid (B * H, ceil(T / 128)); block 256; dynamic smem fwd_tma_smem_bytes<D>().
// ==========================================================================================
template <int D> constexpr int fwd_tma_smem_bytes() {
  return sm90::fwd_smem_bytes<D>() + 8 * 8;  // + the mbarriers: full[3], empty[3], q
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Wait for the phase of bar with this parity to complete.  A wait past 2^31 clock cycles (over
// a second at Hopper's clocks; a tile takes microseconds) traps, so that a protocol bug in these
// kernels, written without a GPU, fails its launch ("unspecified launch failure") within
// seconds instead of hanging the process until a timeout kills it.  All in one asm block: with
// the loop written in C++, the warp-specialized kernels' consumers spilled (0.2-2 KB), as if
// held to the launch's 168 registers rather than setmaxnreg's 240 (only the one needing fewer
// than 168, the forward at D = 64, did not).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done, late;\n.reg .u32 t0, t1;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@done bra end_%=;\n"
      "mov.u32 t0, %%clock;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@done bra end_%=;\n"
      "mov.u32 t1, %%clock;\n"
      "sub.u32 t1, t1, t0;\n"
      "setp.gt.u32 late, t1, 2147483648;\n"
      "@late trap;\n"
      "bra wait_%=;\n"
      "end_%=:\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// Set the transaction count a phase of bar waits for, without arriving.
__device__ __forceinline__ void mbar_expect_tx_only(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Rows [row, row + R) x columns [64 p, 64 p + 64) of a tensor map's 2-D view (its box: R rows),
// for p < D / 64, into the panels of an R-row swizzled tile at dst; completes on bar.
template <int D, int R = 128>
__device__ __forceinline__ void tma_tile(uint32_t dst, const CUtensorMap* map, int row, uint32_t bar) {
#pragma unroll
  for (int p = 0; p < D / 64; ++p) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
            dst + p * R * 128),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(64 * p), "r"(row), "r"(bar)
        : "memory");
  }
}
// Add an R-row fp32 tile, staged at src as D / 32 panels of 32 columns (128-byte rows, swizzled
// like the operand tiles), into rows [row, row + R) of a tile_map_f32 tensor map's 2-D view; one
// bulk group, which the caller commits and waits for.
template <int D, int R>
__device__ __forceinline__ void tma_reduce_add_f32(const CUtensorMap* map, uint32_t src, int row) {
#pragma unroll
  for (int p = 0; p < D / 32; ++p) {
    asm volatile(
        "cp.reduce.async.bulk.tensor.2d.global.shared::cta.add.tile.bulk_group [%0, {%1, %2}], [%3];\n" ::"l"(
            reinterpret_cast<uint64_t>(map)),
        "r"(32 * p), "r"(row), "r"(src + p * R * 128)
        : "memory");
  }
}
// After a thread's mbarrier.init calls: makes them visible to the copies (the async proxy)
// before any copy completes on them; the caller then synchronizes the CTA.
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// What the two TMA forwards share: their shared memory (Q, three stages of K and of V, each
// 1024-B aligned, as the swizzle acts on address bits; then the mbarriers, 8 bytes each) and
// the CTA's place (its 128 query rows, longest first; the key tiles they see).
template <int D>
struct FwdTmaCta {
  static constexpr int BM = kFwdBlockM, BN = kFwdBlockN, kStages = 3;
  static_assert(BM == 128 && BN == 128, "the tensor maps' boxes are 128 rows");
  static constexpr int kKVBytes = BN * D * 2;
  uint32_t sQ, sK, sV, bars;
  int bh, m0, row0, n_blocks;  // row0: this head's first row in the tensor maps' 2-D view
  __device__ __forceinline__ FwdTmaCta(unsigned char* smem_raw, int T_len, bool causal)
      : sQ((smem_u32(smem_raw) + 1023u) & ~1023u), sK(sQ + BM * D * 2), sV(sK + kStages * kKVBytes),
        bars(sV + kStages * kKVBytes), bh(blockIdx.x), m0((gridDim.y - 1 - blockIdx.y) * BM), row0(bh * T_len),
        n_blocks(((causal ? min(T_len, m0 + BM) : T_len) + BN - 1) / BN) {}
  __device__ __forceinline__ uint32_t bar(int i) const { return bars + 8 * i; }
  __device__ __forceinline__ uint32_t k_stage(int st) const { return sK + st * kKVBytes; }
  __device__ __forceinline__ uint32_t v_stage(int st) const { return sV + st * kKVBytes; }
};
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1)
_attention_fwd_sm90_tma_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                               const __grid_constant__ CUtensorMap tm_v, T* __restrict__ O, float* __restrict__ LSE,
                               int T_len, float scale_log2, bool causal) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cta = FwdTmaCta<D>;
  constexpr int BM = Cta::BM, BN = Cta::BN, kStages = Cta::kStages, kKVBytes = Cta::kKVBytes;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const Cta cta(smem_raw, T_len, causal);
  const uint32_t sQ = cta.sQ;
  const int bh = cta.bh, m0 = cta.m0, row0 = cta.row0, n_blocks = cta.n_blocks;
  auto full = [&](int st) { return cta.bar(st); };  // the mbarriers: full[3], empty[3], q
  auto empty = [&](int st) { return cta.bar(kStages + st); };
  const uint32_t qbar = cta.bar(2 * kStages);

  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  FwdRows<T, D> rows(m0, wg, warp, lane, T_len, causal, scale_log2);
  auto load_kv = [&](int nb) {  // tid 0: tile nb into stage nb % 3
    const int st = nb % kStages;
    mbar_expect_tx(full(st), 2 * kKVBytes);
    tma_tile<D>(cta.k_stage(st), &tm_k, row0 + nb * BN, full(st));
    tma_tile<D>(cta.v_stage(st), &tm_v, row0 + nb * BN, full(st));
  };

  if (tid == 0) {
    for (int st = 0; st < kStages; ++st) {
      mbar_init(full(st), 1);
      mbar_init(empty(st), 2);
    }
    mbar_init(qbar, 1);
    mbar_init_fence();
  }
  __syncthreads();
  if (tid == 0) {
    mbar_expect_tx(qbar, BM * D * 2);
    tma_tile<D>(sQ, &tm_q, row0 + m0, qbar);
    load_kv(0);
    if (n_blocks > 1) load_kv(1);
  }

  mbar_wait(qbar, 0);
  mbar_wait(full(0), 0);
  __syncwarp();  // warp 0 reconverges after tid 0's copies: wgmma is .sync.aligned
  rows.qk_softmax(sQ + wg * 64 * 128, cta.k_stage(0), 0, false);
  for (int nb = 1; nb < n_blocks; ++nb) {
    const int cur = nb % kStages, prev = (nb - 1) % kStages;
    // Tile nb + 1 goes into the stage of tile nb - 2, which both warpgroups released in step
    // nb - 1 (after its P V).  Only tid 0 waits for that; its warpgroup waits with it.
    if (tid == 0 && nb + 1 < n_blocks) {
      if (nb >= 2) mbar_wait(empty((nb + 1) % kStages), ((nb - 2) / kStages) & 1);
      load_kv(nb + 1);
    }
    mbar_wait(full(cur), (nb / kStages) & 1);
    __syncwarp();
    rows.issue_qk_pv(opaque(sQ) + wg * 64 * 128, cta.k_stage(cur), cta.v_stage(prev));
    rows.finish_qk_pv(nb * BN);
    // this warpgroup is done with tile nb - 1 (its K in step nb - 1, its V in finish_qk_pv)
    if (tid % 128 == 0) mbar_arrive(empty(prev));
  }
  rows.pv(cta.v_stage((n_blocks - 1) % kStages));
  rows.store(O + (size_t)bh * T_len * D, LSE + (size_t)bh * T_len);
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

// ==========================================================================================
// Forward variant 7, warp-specialized (not yet run: written without a GPU).  FlashAttention-3's
// structure on the per-tile steps above, three warpgroups per CTA:
//   warpgroup 0, the producer: drops to 24 registers (setmaxnreg) and one thread issues every
//     tile copy by TMA: Q once, then K and V of each key tile into three stages, each with its
//     own "full" mbarrier for K and for V (the copy's byte count) and one "empty" mbarrier
//     (one arrival per consumer warpgroup once it has read both), so it runs up to three tiles
//     ahead and never holds up a consumer;
//   warpgroups 1 and 2, the consumers: rise to 240 registers and do variant 4's steps on 64
//     query rows each (the next tile's S issued with the last tile's P V), taking turns to
//     issue their GEMMs (named barriers 1 and 2: a consumer issues after the other has issued
//     and before it issues again), so one consumer's softmax runs under the other's GEMMs.
// No CTA barrier after the start.  Tensor maps as for the TMA kernel above.
// grid (B * H, ceil(T / 128)); block 384; dynamic smem fwd_ws_smem_bytes<D>().
// ==========================================================================================
constexpr int kWsThreads = 384;
template <int D> constexpr int fwd_ws_smem_bytes() {
  return sm90::fwd_smem_bytes<D>() + 8 * 10;  // + the mbarriers: full_k[3], full_v[3], empty[3], q
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
template <int N> __device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N> __device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <typename T, int D>
__global__ void __launch_bounds__(kWsThreads, 1)
_attention_fwd_sm90_ws_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                              const __grid_constant__ CUtensorMap tm_v, T* __restrict__ O, float* __restrict__ LSE,
                              int T_len, float scale_log2, bool causal) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cta = FwdTmaCta<D>;
  constexpr int BM = Cta::BM, BN = Cta::BN, kStages = Cta::kStages, kKVBytes = Cta::kKVBytes;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const Cta cta(smem_raw, T_len, causal);
  const uint32_t sQ = cta.sQ;
  const int bh = cta.bh, m0 = cta.m0, row0 = cta.row0, n_blocks = cta.n_blocks;
  auto full_k = [&](int st) { return cta.bar(st); };  // the mbarriers: full_k[3], full_v[3], empty[3], q
  auto full_v = [&](int st) { return cta.bar(kStages + st); };
  auto empty = [&](int st) { return cta.bar(2 * kStages + st); };
  const uint32_t qbar = cta.bar(3 * kStages);
  const int tid = threadIdx.x, wg = tid / 128;

  if (tid == 0) {
    for (int st = 0; st < kStages; ++st) {
      mbar_init(full_k(st), 1);
      mbar_init(full_v(st), 1);
      mbar_init(empty(st), 2);
    }
    mbar_init(qbar, 1);
    mbar_init_fence();
  }
  __syncthreads();

  if (wg == 0) {  // ---- producer ----
    setmaxnreg_dec<24>();
    if (tid == 0) {
      mbar_expect_tx(qbar, BM * D * 2);
      tma_tile<D>(sQ, &tm_q, row0 + m0, qbar);
      for (int nb = 0; nb < n_blocks; ++nb) {
        const int st = nb % kStages;
        // the stage's last tile, nb - 3, released by both consumers (its use nb / 3 - 1)
        if (nb >= kStages) mbar_wait(empty(st), (nb / kStages - 1) & 1);
        mbar_expect_tx(full_k(st), kKVBytes);
        tma_tile<D>(cta.k_stage(st), &tm_k, row0 + nb * BN, full_k(st));
        mbar_expect_tx(full_v(st), kKVBytes);
        tma_tile<D>(cta.v_stage(st), &tm_v, row0 + nb * BN, full_v(st));
      }
    }
    return;
  }

  // ---- consumers ----
  setmaxnreg_inc<240>();
  const int c = wg - 1, ctid = tid - 128 * wg, warp = ctid / 32, lane = ctid % 32;
  FwdRows<T, D> rows(m0, c, warp, lane, T_len, causal, scale_log2);
  const uint32_t q_rows = sQ + c * 64 * 128;
  // Turns: consumer c issues after bar.sync on barrier 1 + c, which completes when the other
  // consumer has arrived there (after its own issue); consumer 1 arrives once up front so that
  // consumer 0 goes first, and skips its arrival after its last issue, so every barrier phase
  // is completed (n_blocks + 1 issues each).
  const int n_issues = n_blocks + 1;
  int issue = 0;
  auto my_turn = [&]() { asm volatile("bar.sync %0, 256;\n" ::"r"(1 + c) : "memory"); };
  auto their_turn = [&]() {
    if (c == 0 || ++issue < n_issues) asm volatile("bar.arrive %0, 256;\n" ::"r"(2 - c) : "memory");
  };
  if (c == 1) asm volatile("bar.arrive 1, 256;\n" ::: "memory");

  mbar_wait(qbar, 0);
  mbar_wait(full_k(0), 0);
  __syncwarp();
  my_turn();
  rows.issue_qk_only(q_rows, cta.k_stage(0));
  their_turn();
  rows.finish_qk(0, false);
  for (int nb = 1; nb < n_blocks; ++nb) {
    const int cur = nb % kStages, prev = (nb - 1) % kStages;
    mbar_wait(full_k(cur), (nb / kStages) & 1);
    mbar_wait(full_v(prev), ((nb - 1) / kStages) & 1);
    __syncwarp();
    my_turn();
    rows.issue_qk_pv(opaque(q_rows), cta.k_stage(cur), cta.v_stage(prev));
    their_turn();
    rows.finish_qk_pv(nb * BN);
    // this warpgroup has read tile nb - 1 (its K in step nb - 1, its V just now)
    if (ctid == 0) mbar_arrive(empty(prev));
    __syncwarp();
  }
  const int last = (n_blocks - 1) % kStages;
  mbar_wait(full_v(last), ((n_blocks - 1) / kStages) & 1);
  __syncwarp();
  my_turn();
  rows.issue_pv_only(cta.v_stage(last));
  their_turn();
  rows.finish_pv();
  rows.store(O + (size_t)bh * T_len * D, LSE + (size_t)bh * T_len);
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

// ==========================================================================================
// Backward variants 3, 5 and 6: the wgmma backward's loop as it was (3) and with one more idea
// each (5, 6).  grid (B * H, ceil(T / 128)); block 256; dynamic smem bwd_smem_bytes<D, kVariant>().
// lse in natural-log units (as the forward saves it), delta = rowsum(dO * O), scale = 1/sqrt(D);
// dQacc (fp32, zeroed) receives the unscaled dS K.
//   variant 3: lse / delta read with plain loads each query tile (their latency sits before a
//              barrier), three CTA barriers per tile, dQ added with red.global.add.v2.f32
//              (the first wgmma backward).
//   variant 4: the shipped sm90::_attention_bwd_sm90_kernel: lse / delta come with the tile's
//              cp.async group, prefetched a tile ahead, two CTA barriers per tile; dQ as in 3.
//              This template's remaining branches are that kernel's code, kept so that 5 and 6
//              read as 4 plus one change.
//   variant 5: as 4, with fewer waits on the tensor cores: P^T is formed and dV issued as
//              soon as S^T is done, while dP^T still runs; dS^T is computed (from the packed
//              P^T) and stashed under dV; dK, then dQ, are issued back to back and waited for
//              together (the barrier before dQ no longer waits for dK).  Written without a
//              GPU: not yet run.
//   variant 6: as 4, but the CTA's (BM, D) dQ tile is staged in shared memory (fp32) and added
//              to dQacc with one bulk reduce (cp.reduce.async.bulk .add.f32) instead of
//              BM * D / 2 8-byte atomics: one more barrier, 32 KB more shared memory.
// ==========================================================================================
template <int D, int kVariant> constexpr int bwd_smem_bytes() {
  constexpr int BM = Bwd<D>::kBlockM;
  // K, V; 2 stages of Q and dO; dS^T; lse and delta (1 stage for variant 3, 2 otherwise);
  // the fp32 dQ tile (variant 6); alignment slack
  return 2 * kBwdBlockN * D * 2 + 4 * BM * D * 2 + kBwdBlockN * BM * 2 + (kVariant == 3 ? 2 : 4) * BM * 4 +
         (kVariant == 6 ? BM * D * 4 : 0) + 1024;
}

template <typename T, int D, int kVariant>
__global__ void __launch_bounds__(kThreads, 1)
_attention_bwd_sm90_kernel(const T* __restrict__ Q, const T* __restrict__ K, const T* __restrict__ V,
                           const T* __restrict__ dO, const float* __restrict__ LSE, const float* __restrict__ Delta,
                           float* __restrict__ dQacc, T* __restrict__ dK, T* __restrict__ dV, int T_len, float scale,
                           bool causal) {
  static_assert(kVariant == 3 || kVariant == 5 || kVariant == 6,
                "lab backward variants 3, 5 and 6 (4 is sm90::_attention_bwd_sm90_kernel)");
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int BM = Bwd<D>::kBlockM, BN = kBwdBlockN;
  constexpr int kQBytes = BM * D * 2;
  constexpr int kRowStages = kVariant == 3 ? 1 : 2;  // stages of lse / delta
  constexpr float kLog2e = 1.4426950408889634f;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t smem0 = smem_u32(smem_raw);
  const uint32_t sK = (smem0 + 1023u) & ~1023u;
  const uint32_t sV = sK + BN * D * 2;
  const uint32_t sQ = sV + BN * D * 2;     // 2 stages
  const uint32_t sdO = sQ + 2 * kQBytes;   // 2 stages
  const uint32_t sdS = sdO + 2 * kQBytes;  // dS^T: BN keys x BM queries, swizzled like the rest
  const uint32_t sRows = sdS + BN * BM * 2;             // kRowStages x {lse[BM], delta[BM]}
  const uint32_t sdQ = sRows + kRowStages * 2 * BM * 4;  // variant 6: (BM, D) fp32, row-major
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

  // lse / delta of query tile m0 into row stage st (variants 5 and 6)
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
  if constexpr (kVariant != 3) load_rows(0, m_first * BM);
  cp_async_commit();

  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.f;

  for (int mb = m_first; mb < m_blocks; ++mb) {
    const int m0 = mb * BM;
    const int stage = (mb - m_first) & 1;
    const uint32_t qbuf = sQ + stage * kQBytes, dobuf = sdO + stage * kQBytes;
    const uint32_t kbase = opaque(sK), vbase = opaque(sV), dsbase = opaque(sdS);
    const float* sLse = reinterpret_cast<const float*>(smem_ptr(sRows + (kVariant == 3 ? 0 : stage) * 2 * BM * 4));
    const float* sDelta = sLse + BM;
    if constexpr (kVariant == 3) {
      __syncthreads();  // the last tile is done with sdS, the row values and the other stage
      if (mb + 1 < m_blocks) {
        load_tile<T, BM, D>(sQ + (stage ^ 1) * kQBytes, Q + base, m0 + BM, T_len, tid);
        load_tile<T, BM, D>(sdO + (stage ^ 1) * kQBytes, dO + base, m0 + BM, T_len, tid);
        cp_async_commit();
      }
      if (tid < BM) {
        const int row = m0 + tid;
        float* rows = reinterpret_cast<float*>(smem_ptr(sRows));
        rows[tid] = row < T_len ? LSE[row0 + row] : 0.f;
        rows[BM + tid] = row < T_len ? Delta[row0 + row] : 0.f;
      }
      if (mb + 1 < m_blocks) cp_async_wait<1>();
      else cp_async_wait<0>();
      fence_proxy_async();
      __syncthreads();
    } else {
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

    if constexpr (kVariant == 5) {
      // S^T first: P^T and its dV product go while dP^T is still on the tensor cores.
      wgmma_wait<1>();
      fence_regs<BM / 2>(s);
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) {
#pragma unroll
        for (int i = 8 * kk; i < 8 * kk + 8; ++i) s[i] = prob(i);
        acc_to_a<T>(pa[kk], s, kk);
      }
      fence_regs<D / 2>(dv);
      wgmma_fence();
      issue_dv();
      wgmma_commit();
      wgmma_wait<1>();  // dP^T done; dV may still run
      fence_regs<BM / 2>(dp);
      // dS^T from the packed P^T (fp32 P^T is dead by now: at D = 64 keeping it spilled): P is
      // rounded to T once more than in the other variants, as dS^T itself is before its GEMMs.
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) {
        uint32_t a[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const float2 pv = unpack2<T>(pa[kk][r]);
          const int i = 8 * kk + 2 * r;
          const float d0 = sDelta[8 * (i / 4) + 2 * t], d1 = sDelta[8 * (i / 4) + 2 * t + 1];
          dp[i] = pv.x * (dp[i] - d0);
          dp[i + 1] = pv.y * (dp[i + 1] - d1);
        }
        acc_to_a<T>(a, dp, kk);
        stash_ds(a, kk);
      }
    } else {
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
    }
    fence_proxy_async();
    // this warpgroup's 64 rows of dS^T are written (named barrier 1 + wg, its 128 threads)
    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");

    // ---- dV += P^T dO (variant 5 issued it above), dK += dS^T Q (A = dS^T from shared memory,
    //      K-major; B = Q read MN-major) --------------------------------------------------------------
    fence_regs<D / 2>(dv);
    fence_regs<D / 2>(dk);
    wgmma_fence();
    if constexpr (kVariant != 5) issue_dv();
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      const uint64_t da = desc_sw128(dsbase + (kk / 4) * (BN * 128) + wg * 64 * 128 + (kk % 4) * 32, 16);
      WgmmaSS<T, D>::template run<0, 1>(dk, da, desc_sw128(qbuf + kk * 2048, BM * 128), 1);
    }
    wgmma_commit();
    if constexpr (kVariant != 5) {  // variant 5 waits for dV and dK together with dQ, below
      wgmma_wait<0>();  // dV has read pa
      fence_regs<D / 2>(dv);
      fence_regs<D / 2>(dk);
    }
    if constexpr (kVariant == 6) {
      // the last tile's bulk reduce has finished reading sdQ (issued a whole tile ago)
      if (tid == 0) asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
    }
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
    if constexpr (kVariant == 5) {
      fence_regs<D / 2>(dv);
      fence_regs<D / 2>(dk);
    }
    if constexpr (kVariant == 6) {
      float* tile = reinterpret_cast<float*>(smem_ptr(sdQ));
#pragma unroll
      for (int i = 0; i < 32; i += 2) {
        const int r = q_off + warp * 16 + lane / 4 + 8 * ((i / 2) % 2);
        const int col = d_off + 8 * (i / 4) + 2 * t;
        *reinterpret_cast<float2*>(tile + r * D + col) = make_float2(dq[i], dq[i + 1]);
      }
      fence_proxy_async();
      __syncthreads();
      if (tid == 0) {
        const uint32_t bytes = (uint32_t)(min(BM, T_len - m0) * D * 4);
        asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(
                         dQacc + base + (size_t)m0 * D),
                     "r"(sdQ), "r"(bytes)
                     : "memory");
        asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
      }
    } else {
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
  }
  if constexpr (kVariant == 6) {
    if (tid == 0) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");  // sdQ stays valid until read
  }

  store_dk_dv<T, D>(dk, dv, key_base, t, T_len, scale, dK + base, dV + base);
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

// ==========================================================================================
// Backward variants 7 and 8, warp-specialized (not yet run: written without a GPU).  The
// per-tile work of variant 4 (the shipped backward) on FlashAttention-3's structure, three
// warpgroups per CTA:
//   warpgroup 0, the producer: drops to 24 registers; its first warp loads K and V once and
//     then, for each query tile, Q and dO by TMA (one thread) and lse / delta with plain loads
//     (all 32 lanes, into shared memory), three stages deep, each stage with a "full" mbarrier
//     (the 32 lanes' arrivals and the TMA bytes) and an "empty" one (one arrival per consumer
//     once its dV and dK of that tile are done);
//   warpgroups 1 and 2, the consumers: rise to 240 registers and own 64 keys each, as the two
//     warpgroups of variant 4 do.
// dS^T is double-buffered, so the one barrier both consumers meet per tile (all of dS^T
// written, before dQ) also frees the buffer the next tile but one writes; there is no CTA
// barrier after the start and no consumer thread issues a copy.
// kDqTma false (variant 7): each consumer adds its dQ tile with 8-byte atomics.
// kDqTma true (variant 8): FlashAttention-3's dQ writer: the consumers store their
//   dQ tiles into one fp32 staging tile (swizzled, so the fragment stores are free of bank
//   conflicts: variant 6's row-major staging had them) and arrive on named barrier 4; the
//   producer warpgroup's second warp adds the tile to dQacc with one TMA reduce
//   (cp.reduce.async.bulk.tensor .add) and, once the copy has read it, frees the staging tile
//   (named barrier 5).  Rows past T add zeros (their dS is 0), to the next head's rows or
//   past the end, where TMA drops them.  32 KB more shared memory: two Q / dO stages at D = 64.
// Tensor maps: Q and dO with boxes of BM rows, K and V with boxes of 128 rows, dQacc (fp32)
// with boxes of BM rows x 32 columns (csrc/dev/tensor_map.h).
// grid (B * H, ceil(T / 128)); block 384; dynamic smem bwd_ws_smem_bytes<D, kDqTma>().
// ==========================================================================================
template <int D, bool kDqTma> __host__ __device__ constexpr int bwd_ws_stages() { return kDqTma && D == 64 ? 2 : 3; }
template <int D, bool kDqTma> constexpr int bwd_ws_smem_bytes() {
  constexpr int BM = Bwd<D>::kBlockM, S = bwd_ws_stages<D, kDqTma>();
  // K, V; S stages of Q and dO; 2 buffers of dS^T; the fp32 dQ staging tile (kDqTma); S stages
  // of lse and delta; the mbarriers full[S], empty[S], kv; alignment slack
  return 2 * kBwdBlockN * D * 2 + S * 2 * BM * D * 2 + 2 * kBwdBlockN * BM * 2 + (kDqTma ? BM * D * 4 : 0) +
         S * 2 * BM * 4 + 8 * (2 * S + 1) + 1024;
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// One consumer warpgroup's 64 keys: the dK and dV accumulators and the per-tile steps, the
// same work as the lambdas of the shipped sm90::_attention_bwd_sm90_kernel.  That kernel keeps
// its own copy: moved onto these steps, its register allocation changed (at D = 64 it spilled,
// SASS compared without a GPU), and it is the measured default.  If variant 7 or 8 wins on a
// GPU, BwdKeys is promoted with it.  Accumulator element i of a thread: key row kr + 8 * ((i / 2) % 2) of the CTA
// tile, query (or D) column 8 * (i / 4) + 2 * t + i % 2.
template <typename T, int D>
struct BwdKeys {
  static constexpr int BM = Bwd<D>::kBlockM, BN = kBwdBlockN;
  static constexpr float kLog2e = 1.4426950408889634f;
  // One query tile's S^T, dP^T and packed P^T: declared inside the tile loop, so that nothing
  // of one tile can be live into the next (the wgmma wrappers take their accumulators as
  // read-write operands).
  struct Tile {
    float s[BM / 2], dp[BM / 2];
    uint32_t pa[BM / 16][4];
  };
  float dk[D / 2], dv[D / 2];
  // kr: this thread's first key row in the CTA tile (warpgroup wg: rows 64 wg..); everything
  // else about the thread is derived from it, to keep the live registers few (D = 64 runs at
  // the 240 of setmaxnreg with a handful to spare)
  int kr, t, n0, T_len;
  bool causal;
  float scale_log2;

  __device__ __forceinline__ BwdKeys(int n0_, int wg, int warp, int lane, int T_len_, bool causal_, float scale)
      : kr(wg * 64 + warp * 16 + lane / 4), t(lane % 4), n0(n0_), T_len(T_len_), causal(causal_),
        scale_log2(scale * kLog2e) {
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.f;
  }
  __device__ __forceinline__ int wg() const { return kr / 64; }
  __device__ __forceinline__ int key_base() const { return n0 + kr; }

  // acc = (this warpgroup's 64 rows of the key-side tile at a_tile) x (the query tile at
  // b_tile)^T, k = D, both K-major; one commit group
  __device__ __forceinline__ void issue_keys_x_queries(float* acc, uint32_t a_tile, uint32_t b_tile) const {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint64_t da = desc_sw128(a_tile + (kk / 4) * (BN * 128) + wg() * 64 * 128 + (kk % 4) * 32, 16);
      const uint64_t db = desc_sw128(b_tile + (kk / 4) * (BM * 128) + (kk % 4) * 32, 16);
      WgmmaSS<T, BM>::template run<0, 0>(acc, da, db, kk > 0);
    }
    wgmma_commit();
  }
  // S^T = K Q^T, then dP^T = V dO^T: two commit groups
  __device__ __forceinline__ void issue_s_dp(Tile& x, uint32_t kbase, uint32_t vbase, uint32_t qbuf,
                                             uint32_t dobuf) const {
    wgmma_fence();
    issue_keys_x_queries(x.s, kbase, qbuf);
    issue_keys_x_queries(x.dp, vbase, dobuf);
  }

  // queries past T, keys past T, or (causal) a key after a query: some P^T entry is masked
  __device__ __forceinline__ bool need_mask(int m0) const {
    return (m0 + BM > T_len) || (n0 + BN > T_len) || (causal && m0 < n0 + BN - 1);
  }
  // P^T entry i (0 where masked), lse in natural-log units
  __device__ __forceinline__ float prob(const Tile& x, int i, const float* sLse, int m0, bool mask) const {
    const int qi = 8 * (i / 4) + 2 * t + (i % 2);  // query within the tile
    float pv = exp2f(x.s[i] * scale_log2 - sLse[qi] * kLog2e);
    if (mask) {
      const int q = m0 + qi;
      const int key = key_base() + 8 * ((i / 2) % 2);
      if (q >= T_len || key >= T_len || (causal && q < key)) pv = 0.f;
    }
    return pv;
  }
  // dS^T (keys x queries) into shared memory, swizzled like the operand tiles: the A operand
  // of dK and dQ
  // (At D = 128 the row comes through opaque(), so that the offsets are formed each tile rather
  // than hoisted out of the tile loop and held for good: without it the dQ-writer kernel spilled
  // at D = 128; with it, at D = 64.  Register allocation tuning, checked by .ci/check_cuda.sh.)
  __device__ __forceinline__ void stash_ds(unsigned char* ds_raw, const uint32_t* a, int kk) const {
    const int qc = 16 * kk + 2 * t, r = D == 128 ? (int)opaque((uint32_t)kr) : kr;
    *reinterpret_cast<uint32_t*>(ds_raw + sw128_offset<BN>(r, qc)) = a[0];
    *reinterpret_cast<uint32_t*>(ds_raw + sw128_offset<BN>(r + 8, qc)) = a[1];
    *reinterpret_cast<uint32_t*>(ds_raw + sw128_offset<BN>(r, qc + 8)) = a[2];
    *reinterpret_cast<uint32_t*>(ds_raw + sw128_offset<BN>(r + 8, qc + 8)) = a[3];
  }
  // After issue_s_dp: P^T formed and packed (pa) as soon as S^T is done, while dP^T may still
  // run; then dS^T = P^T (dP^T - delta), from the packed P^T, stashed 16 queries at a time.
  // The fp32 P^T dies as it is packed: with it and dP^T both live, D = 64 (BM = 128) spilled
  // under the consumers' 240 registers.  P is thus rounded to T once more than in the other
  // backward kernels' dS^T (as dS^T itself is before its GEMMs).
  __device__ __forceinline__ void p_ds(Tile& x, const float* sLse, const float* sDelta, int m0,
                                       unsigned char* ds_raw) const {
    wgmma_wait<1>();
    fence_regs<BM / 2>(x.s);
    const bool mask = need_mask(m0);
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
#pragma unroll
      for (int i = 8 * kk; i < 8 * kk + 8; ++i) x.s[i] = prob(x, i, sLse, m0, mask);
      acc_to_a<T>(x.pa[kk], x.s, kk);
    }
    wgmma_wait<0>();
    fence_regs<BM / 2>(x.dp);
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float2 pv = unpack2<T>(x.pa[kk][r]);
        const int i = 8 * kk + 2 * r;  // and i + 1: queries 8 * (i / 4) + 2 t + {0, 1}
        x.dp[i] = pv.x * (x.dp[i] - sDelta[8 * (i / 4) + 2 * t]);
        x.dp[i + 1] = pv.y * (x.dp[i + 1] - sDelta[8 * (i / 4) + 2 * t + 1]);
      }
      uint32_t dsa[4];
      acc_to_a<T>(dsa, x.dp, kk);
      stash_ds(ds_raw, dsa, kk);
    }
  }
  // dV += P^T dO: A = P^T from registers, B = dO read MN-major (k = queries, n = D); no commit
  __device__ __forceinline__ void issue_dv(const Tile& x, uint32_t dobuf) {
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      WgmmaRS<T, D>::template run<1>(dv, x.pa[kk], desc_sw128(dobuf + kk * 2048, BM * 128), 1);
    }
  }
  // dK += dS^T Q: A = this warpgroup's rows of dS^T from shared memory (K-major), B = Q read
  // MN-major; no commit
  __device__ __forceinline__ void issue_dk(uint32_t dsbase, uint32_t qbuf) {
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      const uint64_t da = desc_sw128(dsbase + (kk / 4) * (BN * 128) + wg() * 64 * 128 + (kk % 4) * 32, 16);
      WgmmaSS<T, D>::template run<0, 1>(dk, da, desc_sw128(qbuf + kk * 2048, BM * 128), 1);
    }
  }
  // This warpgroup's dQ tile: D = 128, all BM = 64 queries x columns 64 wg..; D = 64, queries
  // 64 wg.. x all 64 columns
  static constexpr int kDqTileSize = 32;
  __device__ __forceinline__ int dq_query_off() const { return D == 128 ? 0 : 64 * wg(); }
  __device__ __forceinline__ int dq_col_off() const { return D == 128 ? 64 * wg() : 0; }
  // dQ tile = dS K, k = the CTA's 128 keys (A = dS read MN-major from the stored dS^T, B = K
  // MN-major), waited for
  __device__ __forceinline__ void dq_tile(float* dq, uint32_t dsbase, uint32_t kbase) const {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      const uint64_t da = desc_sw128(dsbase + (dq_query_off() / 64) * (BN * 128) + kk * 2048, BN * 128);
      const uint64_t db = desc_sw128(kbase + (dq_col_off() / 64) * (BN * 128) + kk * 2048, BN * 128);
      WgmmaSS<T, 64>::template run<1, 1>(dq, da, db, kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs<kDqTileSize>(dq);
  }
  // dQ tile added to the fp32 buffer (this head's, dQacc_bh) with 8-byte atomics
  __device__ __forceinline__ void dq_add(const float* dq, float* dQacc_bh, int m0) const {
#pragma unroll
    for (int i = 0; i < kDqTileSize; i += 2) {
      const int q = m0 + dq_query_off() + kr % 64 + 8 * ((i / 2) % 2);
      const int col = dq_col_off() + 8 * (i / 4) + 2 * t;
      if (q < T_len) {
        float* dst = dQacc_bh + (size_t)q * D + col;
        asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(dst), "f"(dq[i]), "f"(dq[i + 1]) : "memory");
      }
    }
  }
  // dQ tile into the fp32 staging tile at stage (a shared-memory address), in the layout of
  // sw128_f32_offset (what the dQ tensor map's boxes hold); the 8 rows a warp's store covers
  // then fall on distinct banks
  __device__ __forceinline__ void stage_dq(const float* dq, uint32_t stage) const {
#pragma unroll
    for (int i = 0; i < kDqTileSize; i += 2) {
      const int r = dq_query_off() + kr % 64 + 8 * ((i / 2) % 2);
      const int col = dq_col_off() + 8 * (i / 4) + 2 * t;
      asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(stage + sw128_f32_offset<BM>(r, col)), "f"(dq[i]),
                   "f"(dq[i + 1])
                   : "memory");
    }
  }
  __device__ __forceinline__ void store(float scale, T* dK_bh, T* dV_bh) const {
    store_dk_dv<T, D>(dk, dv, key_base(), t, T_len, scale, dK_bh, dV_bh);
  }
};
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <typename T, int D, bool kDqTma>
__global__ void __launch_bounds__(kWsThreads, 1)
_attention_bwd_sm90_ws_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                              const __grid_constant__ CUtensorMap tm_v, const __grid_constant__ CUtensorMap tm_do,
                              const __grid_constant__ CUtensorMap tm_dq, const float* __restrict__ LSE, const float* __restrict__ Delta,
                              float* __restrict__ dQacc, T* __restrict__ dK, T* __restrict__ dV, int T_len, float scale,
                              bool causal) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int BM = Bwd<D>::kBlockM, BN = kBwdBlockN, kStages = bwd_ws_stages<D, kDqTma>();
  static_assert(BN == 128, "the K / V tensor maps' boxes are 128 rows");
  constexpr int kQBytes = BM * D * 2, kKBytes = BN * D * 2, kDsBytes = BN * BM * 2;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t smem0 = smem_u32(smem_raw);
  const uint32_t sK = (smem0 + 1023u) & ~1023u;
  const uint32_t sV = sK + kKBytes;
  const uint32_t sQ = sV + kKBytes;                  // kStages stages
  const uint32_t sdO = sQ + kStages * kQBytes;       // kStages stages
  const uint32_t sdS = sdO + kStages * kQBytes;      // 2 buffers of dS^T (BN keys x BM queries)
  const uint32_t sdQ = sdS + 2 * kDsBytes;           // kDqTma: the fp32 dQ staging tile
  const uint32_t sRows = sdQ + (kDqTma ? BM * D * 4 : 0);  // kStages x {lse[BM], delta[BM]}
  const uint32_t bars = sRows + kStages * 2 * BM * 4;  // full[kStages], empty[kStages], kv
  auto full = [&](int st) { return bars + 8 * st; };
  auto empty = [&](int st) { return bars + 8 * (kStages + st); };
  const uint32_t kvbar = bars + 8 * 2 * kStages;
  auto smem_ptr = [&](uint32_t addr) { return smem_raw + (addr - smem0); };

  const int bh = blockIdx.x;
  const int n0 = blockIdx.y * BN;  // the low key tiles see the most queries: they go first
  const int row0 = bh * T_len;     // this head's first row in the 2-D views
  const int tid = threadIdx.x, wg = tid / 128;
  const int m_first = causal ? n0 / BM : 0;
  const int m_blocks = (T_len + BM - 1) / BM;

  if (tid == 0) {
    for (int st = 0; st < kStages; ++st) {
      mbar_init(full(st), 32);
      mbar_init(empty(st), 2);
    }
    mbar_init(kvbar, 1);
    mbar_init_fence();
  }
  __syncthreads();

  if (wg == 0) {  // ---- producer ----
    setmaxnreg_dec<24>();
    if (tid < 32) {
      const int lane = tid;
      if (lane == 0) {
        mbar_expect_tx(kvbar, 2 * kKBytes);
        tma_tile<D, BN>(sK, &tm_k, row0 + n0, kvbar);
        tma_tile<D, BN>(sV, &tm_v, row0 + n0, kvbar);
      }
      for (int mb = m_first; mb < m_blocks; ++mb) {
        const int i = mb - m_first, st = i % kStages, m0 = mb * BM;
        // the stage's last tile, i - 3, released by both consumers (its use i / 3 - 1)
        if (i >= kStages) mbar_wait(empty(st), (i / kStages - 1) & 1);
        if (lane == 0) {
          mbar_expect_tx_only(full(st), 2 * kQBytes);
          tma_tile<D, BM>(sQ + st * kQBytes, &tm_q, row0 + m0, full(st));
          tma_tile<D, BM>(sdO + st * kQBytes, &tm_do, row0 + m0, full(st));
        }
        float* rows = reinterpret_cast<float*>(smem_ptr(sRows + st * 2 * BM * 4));
        for (int r = lane; r < BM; r += 32) {
          const int row = m0 + r;
          rows[r] = row < T_len ? LSE[row0 + row] : 0.f;
          rows[BM + r] = row < T_len ? Delta[row0 + row] : 0.f;
        }
        mbar_arrive(full(st));  // release: the lse / delta stores above are seen by the waiters
      }
    } else if (kDqTma && tid < 64) {  // the dQ writer
      asm volatile("bar.arrive 5, 288;\n" ::: "memory");  // the staging tile starts free
      for (int mb = m_first; mb < m_blocks; ++mb) {
        asm volatile("bar.sync 4, 288;\n" ::: "memory");  // both consumers have staged this tile's dQ
        if (tid == 32) {
          tma_reduce_add_f32<D, BM>(&tm_dq, sdQ, row0 + mb * BM);
          asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
          asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");  // the staging tile is read
        }
        __syncwarp();
        if (mb + 1 < m_blocks) asm volatile("bar.arrive 5, 288;\n" ::: "memory");  // and free again
      }
      if (tid == 32) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");  // the adds are done
    }
    return;
  }

  // ---- consumers ----
  setmaxnreg_inc<240>();
  const int c = wg - 1, ctid = tid - 128 * wg, warp = ctid / 32, lane = ctid % 32;
  BwdKeys<T, D> keys(n0, c, warp, lane, T_len, causal, scale);
  mbar_wait(kvbar, 0);
  for (int mb = m_first; mb < m_blocks; ++mb) {
    const int i = mb - m_first, st = i % kStages, m0 = mb * BM;
    const uint32_t qbuf = sQ + st * kQBytes, dobuf = sdO + st * kQBytes, dsbuf = sdS + (i & 1) * kDsBytes;
    const float* sLse = reinterpret_cast<const float*>(smem_ptr(sRows + st * 2 * BM * 4));
    const float* sDelta = sLse + BM;
    mbar_wait(full(st), (i / kStages) & 1);
    __syncwarp();

    // S^T, dP^T; P^T and dS^T, this consumer's rows of dS^T stashed
    typename BwdKeys<T, D>::Tile x;
    keys.issue_s_dp(x, opaque(sK), opaque(sV), qbuf, dobuf);
    keys.p_ds(x, sLse, sDelta, m0, smem_ptr(dsbuf));
    fence_proxy_async();
    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + c) : "memory");  // this consumer's 128 threads

    // dV += P^T dO, dK += dS^T Q; then this consumer is done with the stage (Q, dO, lse, delta)
    fence_regs<D / 2>(keys.dv);
    fence_regs<D / 2>(keys.dk);
    wgmma_fence();
    keys.issue_dv(x, dobuf);
    keys.issue_dk(dsbuf, qbuf);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs<D / 2>(keys.dv);
    fence_regs<D / 2>(keys.dk);
    if (ctid == 0) mbar_arrive(empty(st));
    __syncwarp();

    // all of dS^T is in shared memory (both consumers: barrier 3, 256 threads); dQ += dS K
    asm volatile("bar.sync 3, 256;\n" ::: "memory");
    float dq[BwdKeys<T, D>::kDqTileSize];
    keys.dq_tile(dq, dsbuf, opaque(sK));
    if constexpr (kDqTma) {
      asm volatile("bar.sync 5, 288;\n" ::: "memory");  // the writer is done with the last tile
      keys.stage_dq(dq, sdQ);
      fence_proxy_async();
      asm volatile("bar.arrive 4, 288;\n" ::: "memory");
    } else {
      keys.dq_add(dq, dQacc + (size_t)row0 * D, m0);
    }
  }
  keys.store(scale, dK + (size_t)row0 * D, dV + (size_t)row0 * D);
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

}  // namespace lab
}  // namespace sm90
}  // namespace attn
}  // namespace flopscale
