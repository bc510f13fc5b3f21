// Kernel-variant lab: causal attention forward (bf16 in/out, fp32 accumulate), llm.c dev/cuda style.
// Variant numbers are the lab's one scheme (csrc/dev/README.md): the same number is the same idea
// in attention_backward.cu, where both directions have it.
//
//   variant 1  naive: one thread per (query row, 32 output dims), one pass with an online
//              softmax over the keys in fp32 CUDA cores, O in registers.  No reuse of K/V across queries
//              beyond L1/L2: the baseline the tensor-core kernel must beat by orders of magnitude.
//   variant 2  flash-style tiles on tensor cores (mma.sync m16n8k16): 64 queries per CTA, K/V
//              tiles of 64 keys through shared memory with cp.async (next K tile loads during
//              P V, next V tile during Q K^T), online softmax in registers, P re-packed from
//              the S accumulators as the A operand.  Shipped: attn::_attention_fwd_kernel
//              (csrc/attention/attention_kernels.cuh), what the extension runs off Hopper.
//   variant 3  Hopper (sm_90a only): warpgroup MMAs (wgmma) from 128-byte-swizzled shared
//              memory, 128 queries per CTA on two warpgroups, 128-key tiles two stages deep,
//              P fed to P V from registers: the first wgmma forward,
//              attn::sm90::lab::_attention_fwd_sm90_kernel<T, D, 3> (attention_sm90_lab.cuh).
//   variant 4  as 3, with the next tile's Q K^T issued together with the last tile's P V so the
//              softmax overlaps the tensor cores' P V, and K/V three stages deep (one barrier
//              per tile).  Shipped: attn::sm90::_attention_fwd_sm90_kernel
//              (csrc/attention/attention_sm90.cuh), what the extension runs on sm_90a.
//   variant 5  as 4, with warpgroup 1 issuing its GEMMs after warpgroup 0 each tile (a named
//              barrier), FlashAttention-3's ping-pong within a tile:
//              lab::_attention_fwd_sm90_kernel<T, D, 5>.  Written without a GPU; not yet run.
//   variant 6  as 4, with K, V (and Q) brought in by the tensor-memory accelerator on
//              mbarriers (one full and one empty barrier per stage, tid 0 issuing) instead of
//              cp.async by every thread and a CTA barrier per tile, so the warpgroups wait
//              only for their own data: lab::_attention_fwd_sm90_tma_kernel.  Written
//              without a GPU; not yet run.
//   variant 7  FlashAttention-3's warp specialization on variant 4's steps: a producer
//              warpgroup (24 registers, setmaxnreg) issues every copy by TMA, separate full
//              barriers for K and V, and two consumer warpgroups (240 registers) take turns
//              issuing their GEMMs (named barriers), so one's softmax runs under the other's
//              GEMMs; no CTA barrier per tile: lab::_attention_fwd_sm90_ws_kernel.  Written
//              without a GPU; not yet run.
//
// Build and run (from the repository root):
//   nvcc -O3 --use_fast_math -gencode arch=compute_90a,code=sm_90a -Icsrc \
//        csrc/dev/attention_forward.cu -o /tmp/attention_forward
//   /tmp/attention_forward            # every variant;  /tmp/attention_forward 5   # one
//   /tmp/attention_forward 5 check    # validation only;  /tmp/attention_forward list
// Each variant is checked against a float64 CPU reference at (B, H, T) = (1, 2, 77) and
// (1, 2, 300) for head
// dims 64 and 128 (ragged T: a partial last tile), then timed at (4, 16, 2048) causal, median
// of 20 runs, in TFLOP/s with the causal-halved count 4 * B * H * T^2 * D / 2 (as
// FlashAttention reports).
#include "../attention/attention_kernels.cuh"
#include "../attention/attention_sm90.cuh"
#include "attention_sm90_lab.cuh"
#include "tensor_map.h"
#include "timing.cuh"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

using bf16 = __nv_bfloat16;
using namespace flopscale;

// ---- variant 1 -----------------------------------------------------------------------------
// One thread per (query row, 32-dim chunk of the output): each recomputes the row's scores
// (D / 32 times over), which keeps 32 accumulators in registers rather than D (D = 128 would spill).
constexpr int kNaiveChunk = 32;
template <int D>
__global__ void _attention_fwd_naive_kernel(const bf16* Q, const bf16* K, const bf16* V, bf16* O, int BH, int T,
                                            float scale) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  constexpr int kChunks = D / kNaiveChunk;
  if (idx >= BH * T * kChunks) return;
  const int chunk = idx % kChunks, row = idx / kChunks;
  const int bh = row / T, i = row % T;
  const bf16* q = Q + ((size_t)bh * T + i) * D;
  float o[kNaiveChunk];
#pragma unroll
  for (int d = 0; d < kNaiveChunk; ++d) o[d] = 0.f;
  float m = -INFINITY, l = 0.f;
  for (int j = 0; j <= i; ++j) {
    const bf16* k = K + ((size_t)bh * T + j) * D;
    float s = 0.f;
#pragma unroll 8
    for (int d = 0; d < D; ++d) s += __bfloat162float(q[d]) * __bfloat162float(k[d]);
    s *= scale;
    const float m_new = fmaxf(m, s);
    const float corr = __expf(m - m_new), p = __expf(s - m_new);
    l = l * corr + p;
    const bf16* v = V + ((size_t)bh * T + j) * D + chunk * kNaiveChunk;
#pragma unroll
    for (int d = 0; d < kNaiveChunk; ++d) o[d] = o[d] * corr + p * __bfloat162float(v[d]);
    m = m_new;
  }
  bf16* out = O + ((size_t)bh * T + i) * D + chunk * kNaiveChunk;
#pragma unroll
  for (int d = 0; d < kNaiveChunk; ++d) out[d] = __float2bfloat16(o[d] / l);
}

// variant 6
template <int D>
void launch_sm90_tma(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, int BH, int T) {
  constexpr int smem = attn::sm90::lab::fwd_tma_smem_bytes<D>();
  FS_CUDA_CHECK(cudaFuncSetAttribute(attn::sm90::lab::_attention_fwd_sm90_tma_kernel<bf16, D>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const int64_t rows = (int64_t)BH * T;
  const dim3 grid(BH, (T + attn::sm90::kFwdBlockM - 1) / attn::sm90::kFwdBlockM);
  attn::sm90::lab::_attention_fwd_sm90_tma_kernel<bf16, D><<<grid, attn::sm90::kThreads, smem>>>(
      attn::tile_map(q, rows, D, true), attn::tile_map(k, rows, D, true),
      attn::tile_map(v, rows, D, true), o, lse, T, 1.4426950408889634f / std::sqrt((float)D), true);
}

// variant 7
template <int D>
void launch_sm90_ws(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, int BH, int T) {
  constexpr int smem = attn::sm90::lab::fwd_ws_smem_bytes<D>();
  FS_CUDA_CHECK(cudaFuncSetAttribute(attn::sm90::lab::_attention_fwd_sm90_ws_kernel<bf16, D>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const int64_t rows = (int64_t)BH * T;
  const dim3 grid(BH, (T + attn::sm90::kFwdBlockM - 1) / attn::sm90::kFwdBlockM);
  attn::sm90::lab::_attention_fwd_sm90_ws_kernel<bf16, D><<<grid, attn::sm90::lab::kWsThreads, smem>>>(
      attn::tile_map(q, rows, D, true), attn::tile_map(k, rows, D, true),
      attn::tile_map(v, rows, D, true), o, lse, T, 1.4426950408889634f / std::sqrt((float)D), true);
}

// variants 3 and 5 (the lab's copies of the wgmma forward loop)
template <int D, int kVariant>
void launch_sm90_lab(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, int BH, int T) {
  constexpr int smem = attn::sm90::lab::fwd_smem_bytes<D, kVariant>();
  FS_CUDA_CHECK(cudaFuncSetAttribute(attn::sm90::lab::_attention_fwd_sm90_kernel<bf16, D, kVariant>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const dim3 grid(BH, (T + attn::sm90::kFwdBlockM - 1) / attn::sm90::kFwdBlockM);
  attn::sm90::lab::_attention_fwd_sm90_kernel<bf16, D, kVariant><<<grid, attn::sm90::kThreads, smem>>>(
      q, k, v, o, lse, T, 1.4426950408889634f / std::sqrt((float)D), true);
}

// variant 4: the extension's kernel on sm_90a, launched as attention.cu launches it
template <int D>
void launch_sm90(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, int BH, int T) {
  constexpr int smem = attn::sm90::fwd_smem_bytes<D>();
  FS_CUDA_CHECK(cudaFuncSetAttribute(attn::sm90::_attention_fwd_sm90_kernel<bf16, D>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const dim3 grid(BH, (T + attn::sm90::kFwdBlockM - 1) / attn::sm90::kFwdBlockM);
  attn::sm90::_attention_fwd_sm90_kernel<bf16, D><<<grid, attn::sm90::kThreads, smem>>>(
      q, k, v, o, lse, T, 1.4426950408889634f / std::sqrt((float)D), true);
}

template <int D>
void launch(int variant, const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, int BH, int T) {
  if (variant == 1) {
    _attention_fwd_naive_kernel<D><<<(BH * T * (D / kNaiveChunk) + 127) / 128, 128>>>(q, k, v, o, BH, T, 1.f / std::sqrt((float)D));
  } else if (variant == 3) {
    launch_sm90_lab<D, 3>(q, k, v, o, lse, BH, T);
  } else if (variant == 4) {
    launch_sm90<D>(q, k, v, o, lse, BH, T);
  } else if (variant == 5) {
    launch_sm90_lab<D, 5>(q, k, v, o, lse, BH, T);
  } else if (variant == 6) {
    launch_sm90_tma<D>(q, k, v, o, lse, BH, T);
  } else if (variant == 7) {
    launch_sm90_ws<D>(q, k, v, o, lse, BH, T);
  } else {  // variant 2: the extension's kernel off Hopper
    constexpr int smem = attn::fwd_smem_bytes<D>();
    FS_CUDA_CHECK(cudaFuncSetAttribute(attn::_attention_fwd_kernel<bf16, D>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const dim3 grid(BH, (T + attn::kFwdBlockM - 1) / attn::kFwdBlockM);
    attn::_attention_fwd_kernel<bf16, D><<<grid, attn::kThreads, smem>>>(
        q, k, v, o, lse, T, 1.4426950408889634f / std::sqrt((float)D), true);
  }
  FS_CHECK_LAUNCH();
}

float bf(bf16 v) { return __bfloat162float(v); }

template <int D>
int run(const LabRun& lab) {
  int failures = 0;
  auto rnd = [] { return (float)rand() / RAND_MAX * 2.f - 1.f; };
  // ---- validation at small ragged shapes (one partial tile; several, with the diagonal inside) ----
  for (const int T : {77, 300}) {
    const int BH = 2;
    const size_t n = (size_t)BH * T * D;
    std::vector<bf16> hq(n), hk(n), hv(n), ho(n);
    for (size_t i = 0; i < n; ++i) {
      hq[i] = __float2bfloat16(2.f * rnd());
      hk[i] = __float2bfloat16(2.f * rnd());
      hv[i] = __float2bfloat16(rnd());
    }
    std::vector<double> ref(n);
    for (int bh = 0; bh < BH; ++bh) {
      for (int i = 0; i < T; ++i) {
        std::vector<double> s(i + 1);
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j <= i; ++j) {
          double acc = 0;
          for (int d = 0; d < D; ++d) acc += (double)bf(hq[((size_t)bh * T + i) * D + d]) * bf(hk[((size_t)bh * T + j) * D + d]);
          s[j] = acc / std::sqrt((double)D);
          mx = std::max(mx, s[j]);
        }
        for (int j = 0; j <= i; ++j) sum += (s[j] = std::exp(s[j] - mx));
        for (int d = 0; d < D; ++d) {
          double acc = 0;
          for (int j = 0; j <= i; ++j) acc += s[j] * bf(hv[((size_t)bh * T + j) * D + d]);
          ref[((size_t)bh * T + i) * D + d] = acc / sum;
        }
      }
    }
    bf16 *q, *k, *v, *o;
    float* lse;
    FS_CUDA_CHECK(cudaMalloc(&q, n * 2)); FS_CUDA_CHECK(cudaMalloc(&k, n * 2));
    FS_CUDA_CHECK(cudaMalloc(&v, n * 2)); FS_CUDA_CHECK(cudaMalloc(&o, n * 2));
    FS_CUDA_CHECK(cudaMalloc(&lse, BH * T * sizeof(float)));
    FS_CUDA_CHECK(cudaMemcpy(q, hq.data(), n * 2, cudaMemcpyHostToDevice));
    FS_CUDA_CHECK(cudaMemcpy(k, hk.data(), n * 2, cudaMemcpyHostToDevice));
    FS_CUDA_CHECK(cudaMemcpy(v, hv.data(), n * 2, cudaMemcpyHostToDevice));
    for (const int var : lab.variants) {
      FS_CUDA_CHECK(cudaMemset(o, 0xFF, n * 2));  // NaN: unwritten rows fail
      launch<D>(var, q, k, v, o, lse, BH, T);
      FS_CUDA_CHECK(cudaDeviceSynchronize());
      FS_CUDA_CHECK(cudaMemcpy(ho.data(), o, n * 2, cudaMemcpyDeviceToHost));
      double max_err = 0;
      for (size_t i = 0; i < n; ++i) {
        const double e = std::fabs(bf(ho[i]) - ref[i]);
        max_err = std::isnan(e) ? INFINITY : std::max(max_err, e);
      }
      // P is rounded to bf16 before P V (2^-9 relative) and O to bf16 on store: 2^-6 absolute
      // on outputs of magnitude <= 1 leaves room for both, and catches any indexing error.
      const bool ok = max_err <= 0x1p-6;
      failures += !ok;
      printf("D=%3d variant %d: check T=%d %s max_err %.3e\n", D, var, T, ok ? "OK  " : "FAIL", max_err);
    }
    cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(o); cudaFree(lse);
  }
  // ---- timing ----
  if (lab.time) {
    const int B = 4, H = 16, T = 2048, BH = B * H;
    const size_t n = (size_t)BH * T * D;
    std::vector<bf16> h(n);
    for (auto& x : h) x = __float2bfloat16(rnd());
    bf16 *q, *k, *v, *o;
    float* lse;
    FS_CUDA_CHECK(cudaMalloc(&q, n * 2)); FS_CUDA_CHECK(cudaMalloc(&k, n * 2));
    FS_CUDA_CHECK(cudaMalloc(&v, n * 2)); FS_CUDA_CHECK(cudaMalloc(&o, n * 2));
    FS_CUDA_CHECK(cudaMalloc(&lse, BH * T * sizeof(float)));
    for (bf16* p : {q, k, v}) FS_CUDA_CHECK(cudaMemcpy(p, h.data(), n * 2, cudaMemcpyHostToDevice));
    for (const int var : lab.variants) {
      launch<D>(var, q, k, v, o, lse, BH, T);  // warm-up
      const double med = median_ms([&] { launch<D>(var, q, k, v, o, lse, BH, T); }, var == 1 ? 3 : 20);
      const double flops = 4.0 * B * H * (double)T * T * D / 2;  // causal-halved
      printf("D=%3d variant %d: (B,H,T)=(%d,%d,%d) causal  %.3f ms  %.1f TFLOP/s\n", D, var, B, H, T, med,
             flops / med / 1e9);
    }
    cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(o); cudaFree(lse);
  }
  return failures;
}

int main(int argc, char** argv) {
  const LabRun lab = lab_variants(argc, argv, {1, 2, 3, 4, 5, 6, 7}, 3);
  if (lab.variants.empty()) return 0;
  srand(0);
  const int failures = run<64>(lab) + run<128>(lab);
  return failures ? 1 : 0;
}
