// Kernel-variant lab: causal attention backward (bf16 in/out, fp32 accumulate), llm.c dev/cuda style.
// Variant numbers are the lab's one scheme (csrc/dev/README.md): the same number is the same idea
// in attention_forward.cu, where both directions have it (the backward has no naive variant 1).
//
//   variant 2  mma.sync m16n8k16 (FlashAttention-2 order): 64 keys per CTA on 4 warps, dK / dV
//              in registers, query tiles of 64 (D = 64) or 32 (D = 128, two cp.async stages),
//              dQ through 8-byte fp32 atomics.  Shipped: attn::_attention_bwd_kernel
//              (csrc/attention/attention_kernels.cuh), what the extension runs off Hopper.
//   variant 3  Hopper (sm_90a only): warpgroup MMAs (wgmma) from 128-byte-swizzled shared
//              memory, 128 keys per CTA on two warpgroups, query tiles of 8192 / D two stages
//              deep; P^T from registers into dV, dS^T through shared memory into dK and dQ: the
//              first wgmma backward, attn::sm90::lab::_attention_bwd_sm90_kernel<T, D, 3>.
//   variant 4  as 3, with lse / delta prefetched in the tile's cp.async group and one CTA
//              barrier fewer per query tile.  Shipped: attn::sm90::_attention_bwd_sm90_kernel
//              (csrc/attention/attention_sm90.cuh), what the extension runs on sm_90a.
//   variant 5  as 4, with fewer waits on the tensor cores: dV issued as soon as S^T is done
//              (dP^T still running), dS^T formed and stashed under dV, dK and dQ waited for
//              together: lab::_attention_bwd_sm90_kernel<T, D, 5>.  Written without a GPU;
//              not yet run.
//   variant 6  as 4, with the CTA's dQ tile staged in shared memory and added to the fp32
//              buffer by one bulk reduce (cp.reduce.async.bulk) instead of 8-byte atomics:
//              lab::_attention_bwd_sm90_kernel<T, D, 6>.
//   variant 7  variant 4's per-tile work, warp-specialized: a producer warpgroup (24 registers)
//              loads Q / dO by TMA and lse / delta into shared memory three stages ahead on
//              mbarriers, two consumer warpgroups (240 registers) own 64 keys each, dS^T is
//              double-buffered, one barrier between the consumers per tile and none for the
//              CTA: lab::_attention_bwd_sm90_ws_kernel<T, D, false>.  Written without a GPU;
//              not yet run.
//   variant 8  as 7, with dQ staged by the consumers in a swizzled fp32 tile and added to the
//              buffer with one TMA reduce per tile by a dQ-writer warp, instead of atomics:
//              lab::_attention_bwd_sm90_ws_kernel<T, D, true>.  Written without a GPU; not yet run.
// All use the same delta preprocess and dQ cast kernels (attention_kernels.cuh).
//
// Build and run (from the repository root):
//   nvcc -O3 --use_fast_math -gencode arch=compute_90a,code=sm_90a -Icsrc \
//        csrc/dev/attention_backward.cu -o /tmp/attention_backward
//   /tmp/attention_backward            # every variant;  /tmp/attention_backward 7   # one
//   /tmp/attention_backward 7 check    # validation only;  /tmp/attention_backward list
// Each variant is checked against a float64 CPU reference (dQ, dK, dV; relative Frobenius
// error under 1e-2, outputs poisoned with NaN first) at (B * H, T) = (2, 77) and (2, 300) for
// head dims 64 and 128, then timed at (B, H, T) = (2, 16, 4096) causal, median of 20 runs, in
// TFLOP/s with FlashAttention's causal-halved backward count 2.5 * 4 * B * H * T^2 * D / 2.
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

struct Buffers {
  bf16 *q, *k, *v, *o, *dout, *dq, *dk, *dv;
  float *lse, *delta, *dq_accum;
};

// variants 3, 5 and 6 (the lab's copies of the wgmma backward loop)
template <int D, int kVariant>
void launch_sm90_lab(const Buffers& b, int BH, int T, float scale) {
  constexpr int smem = attn::sm90::lab::bwd_smem_bytes<D, kVariant>();
  FS_CUDA_CHECK(cudaFuncSetAttribute(attn::sm90::lab::_attention_bwd_sm90_kernel<bf16, D, kVariant>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const dim3 grid(BH, (T + attn::sm90::kBwdBlockN - 1) / attn::sm90::kBwdBlockN);
  attn::sm90::lab::_attention_bwd_sm90_kernel<bf16, D, kVariant><<<grid, attn::sm90::kThreads, smem>>>(
      b.q, b.k, b.v, b.dout, b.lse, b.delta, b.dq_accum, b.dk, b.dv, T, scale, true);
}

// variant 4: the extension's kernel on sm_90a, launched as attention.cu launches it
template <int D>
void launch_sm90(const Buffers& b, int BH, int T, float scale) {
  constexpr int smem = attn::sm90::bwd_smem_bytes<D>();
  FS_CUDA_CHECK(cudaFuncSetAttribute(attn::sm90::_attention_bwd_sm90_kernel<bf16, D>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const dim3 grid(BH, (T + attn::sm90::kBwdBlockN - 1) / attn::sm90::kBwdBlockN);
  attn::sm90::_attention_bwd_sm90_kernel<bf16, D><<<grid, attn::sm90::kThreads, smem>>>(
      b.q, b.k, b.v, b.dout, b.lse, b.delta, b.dq_accum, b.dk, b.dv, T, scale, true);
}

// variants 7 (kDqTma false) and 8 (true)
template <int D, bool kDqTma>
void launch_sm90_ws(const Buffers& b, int BH, int T, float scale) {
  constexpr int smem = attn::sm90::lab::bwd_ws_smem_bytes<D, kDqTma>();
  FS_CUDA_CHECK(cudaFuncSetAttribute(attn::sm90::lab::_attention_bwd_sm90_ws_kernel<bf16, D, kDqTma>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  constexpr int BM = attn::sm90::Bwd<D>::kBlockM, BN = attn::sm90::kBwdBlockN;
  const int64_t rows = (int64_t)BH * T;
  const dim3 grid(BH, (T + BN - 1) / BN);
  attn::sm90::lab::_attention_bwd_sm90_ws_kernel<bf16, D, kDqTma><<<grid, attn::sm90::lab::kWsThreads, smem>>>(
      attn::tile_map(b.q, rows, D, true, BM), attn::tile_map(b.k, rows, D, true, BN),
      attn::tile_map(b.v, rows, D, true, BN), attn::tile_map(b.dout, rows, D, true, BM),
      attn::tile_map_f32(b.dq_accum, rows, D, BM), b.lse, b.delta,
      b.dq_accum, b.dk, b.dv, T, scale, true);
}

template <int D>
void launch(int variant, const Buffers& b, int BH, int T) {
  const int64_t rows = (int64_t)BH * T;
  const float scale = 1.f / std::sqrt((float)D);
  FS_CUDA_CHECK(cudaMemsetAsync(b.dq_accum, 0, sizeof(float) * rows * D));
  attn::_attention_bwd_preprocess_kernel<bf16, D><<<(unsigned)((rows + 7) / 8), 256>>>(b.dout, b.o, b.delta, rows);
  FS_CHECK_LAUNCH();
  if (variant == 2) {  // the extension's kernel off Hopper
    constexpr int smem = attn::bwd_smem_bytes<D>();
    FS_CUDA_CHECK(cudaFuncSetAttribute(attn::_attention_bwd_kernel<bf16, D>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const dim3 grid(BH, (T + attn::BwdTiles<D>::kBlockN - 1) / attn::BwdTiles<D>::kBlockN);
    attn::_attention_bwd_kernel<bf16, D><<<grid, attn::kThreads, smem>>>(
        b.q, b.k, b.v, b.dout, b.lse, b.delta, b.dq_accum, b.dk, b.dv, T, scale, true);
  } else if (variant == 3) {
    launch_sm90_lab<D, 3>(b, BH, T, scale);
  } else if (variant == 4) {
    launch_sm90<D>(b, BH, T, scale);
  } else if (variant == 5) {
    launch_sm90_lab<D, 5>(b, BH, T, scale);
  } else if (variant == 6) {
    launch_sm90_lab<D, 6>(b, BH, T, scale);
  } else if (variant == 7) {
    launch_sm90_ws<D, false>(b, BH, T, scale);
  } else {
    launch_sm90_ws<D, true>(b, BH, T, scale);
  }
  FS_CHECK_LAUNCH();
  const int64_t n = rows * D;
  attn::_attention_bwd_dq_kernel<bf16><<<(int)std::min<int64_t>((n + 255) / 256, 65536), 256>>>(b.dq_accum, b.dq,
                                                                                               scale, n);
  FS_CHECK_LAUNCH();
}

static float bf(bf16 v) { return __bfloat162float(v); }

Buffers alloc(size_t n, size_t rows) {
  Buffers b;
  for (bf16** p : {&b.q, &b.k, &b.v, &b.o, &b.dout, &b.dq, &b.dk, &b.dv}) FS_CUDA_CHECK(cudaMalloc(p, n * 2));
  for (float** p : {&b.lse, &b.delta}) FS_CUDA_CHECK(cudaMalloc(p, rows * sizeof(float)));
  FS_CUDA_CHECK(cudaMalloc(&b.dq_accum, n * sizeof(float)));
  return b;
}
void release(Buffers& b) {
  for (bf16* p : {b.q, b.k, b.v, b.o, b.dout, b.dq, b.dk, b.dv}) cudaFree(p);
  for (float* p : {b.lse, b.delta, b.dq_accum}) cudaFree(p);
}

template <int D>
int run(const LabRun& lab) {
  int failures = 0;
  auto rnd = [] { return (float)rand() / RAND_MAX * 2.f - 1.f; };
  for (const int T : {77, 300}) {
    const int BH = 2;
    const size_t n = (size_t)BH * T * D, rows = (size_t)BH * T;
    std::vector<bf16> hq(n), hk(n), hv(n), hdo(n), ho(n);
    for (size_t i = 0; i < n; ++i) {
      hq[i] = __float2bfloat16(2.f * rnd());
      hk[i] = __float2bfloat16(2.f * rnd());
      hv[i] = __float2bfloat16(rnd());
      hdo[i] = __float2bfloat16(rnd());
    }
    // float64 reference: forward (O rounded to bf16 as the kernels see it, lse), then the gradients
    std::vector<float> hlse(rows);
    std::vector<double> rdq(n, 0.0), rdk(n, 0.0), rdv(n, 0.0);
    const double scale = 1.0 / std::sqrt((double)D);
    for (int bh = 0; bh < BH; ++bh) {
      const size_t off = (size_t)bh * T * D;
      auto at = [&](const std::vector<bf16>& m, int r, int d) { return (double)bf(m[off + (size_t)r * D + d]); };
      for (int i = 0; i < T; ++i) {
        std::vector<double> p(i + 1), dp(i + 1);
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j <= i; ++j) {
          double acc = 0;
          for (int d = 0; d < D; ++d) acc += at(hq, i, d) * at(hk, j, d);
          p[j] = acc * scale;
          mx = std::max(mx, p[j]);
        }
        for (int j = 0; j <= i; ++j) sum += (p[j] = std::exp(p[j] - mx));
        for (int j = 0; j <= i; ++j) p[j] /= sum;
        hlse[(size_t)bh * T + i] = (float)(mx + std::log(sum));
        double delta = 0;
        for (int d = 0; d < D; ++d) {
          double acc = 0;
          for (int j = 0; j <= i; ++j) acc += p[j] * at(hv, j, d);
          ho[off + (size_t)i * D + d] = __float2bfloat16((float)acc);
          delta += at(hdo, i, d) * acc;
        }
        for (int j = 0; j <= i; ++j) {
          double acc = 0;
          for (int d = 0; d < D; ++d) acc += at(hdo, i, d) * at(hv, j, d);
          dp[j] = p[j] * (acc - delta);  // dS
        }
        for (int j = 0; j <= i; ++j) {
          for (int d = 0; d < D; ++d) {
            rdv[off + (size_t)j * D + d] += p[j] * at(hdo, i, d);
            rdq[off + (size_t)i * D + d] += scale * dp[j] * at(hk, j, d);
            rdk[off + (size_t)j * D + d] += scale * dp[j] * at(hq, i, d);
          }
        }
      }
    }
    Buffers b = alloc(n, rows);
    FS_CUDA_CHECK(cudaMemcpy(b.q, hq.data(), n * 2, cudaMemcpyHostToDevice));
    FS_CUDA_CHECK(cudaMemcpy(b.k, hk.data(), n * 2, cudaMemcpyHostToDevice));
    FS_CUDA_CHECK(cudaMemcpy(b.v, hv.data(), n * 2, cudaMemcpyHostToDevice));
    FS_CUDA_CHECK(cudaMemcpy(b.o, ho.data(), n * 2, cudaMemcpyHostToDevice));
    FS_CUDA_CHECK(cudaMemcpy(b.dout, hdo.data(), n * 2, cudaMemcpyHostToDevice));
    FS_CUDA_CHECK(cudaMemcpy(b.lse, hlse.data(), rows * sizeof(float), cudaMemcpyHostToDevice));
    for (const int var : lab.variants) {
      for (bf16* p : {b.dq, b.dk, b.dv}) FS_CUDA_CHECK(cudaMemset(p, 0xFF, n * 2));  // NaN: unwritten rows fail
      launch<D>(var, b, BH, T);
      FS_CUDA_CHECK(cudaDeviceSynchronize());
      const char* names[3] = {"dq", "dk", "dv"};
      bf16* outs[3] = {b.dq, b.dk, b.dv};
      const std::vector<double>* refs[3] = {&rdq, &rdk, &rdv};
      printf("D=%3d variant %d: check T=%3d", D, var, T);
      for (int w = 0; w < 3; ++w) {
        std::vector<bf16> h(n);
        FS_CUDA_CHECK(cudaMemcpy(h.data(), outs[w], n * 2, cudaMemcpyDeviceToHost));
        double num = 0, den = 0;
        for (size_t i = 0; i < n; ++i) {
          const double e = bf(h[i]) - (*refs[w])[i];
          num += e * e;
          den += (*refs[w])[i] * (*refs[w])[i];
        }
        const double rel = std::sqrt(num / den);
        const bool ok = rel < 1e-2;  // NaN fails too
        failures += !ok;
        printf("  %s %s %.2e", names[w], ok ? "ok" : "FAIL", rel);
      }
      printf("\n");
    }
    release(b);
  }
  if (lab.time) {
    const int B = 2, H = 16, T = 4096, BH = B * H;
    const size_t n = (size_t)BH * T * D, rows = (size_t)BH * T;
    Buffers b = alloc(n, rows);
    std::vector<bf16> h(n);
    for (bf16* p : {b.q, b.k, b.v, b.o, b.dout}) {
      for (auto& x : h) x = __float2bfloat16(rnd());
      FS_CUDA_CHECK(cudaMemcpy(p, h.data(), n * 2, cudaMemcpyHostToDevice));
    }
    std::vector<float> hl(rows, 4.f);  // any finite lse: timing only
    FS_CUDA_CHECK(cudaMemcpy(b.lse, hl.data(), rows * sizeof(float), cudaMemcpyHostToDevice));
    for (const int var : lab.variants) {
      launch<D>(var, b, BH, T);  // warm-up
      const double med = median_ms([&] { launch<D>(var, b, BH, T); }, 20);
      const double flops = 2.5 * 4.0 * B * H * (double)T * T * D / 2;
      printf("D=%3d variant %d: (B,H,T)=(%d,%d,%d) causal  %.3f ms  %.1f TFLOP/s\n", D, var, B, H, T, med,
             flops / med / 1e9);
    }
    release(b);
  }
  return failures;
}

int main(int argc, char** argv) {
  const LabRun lab = lab_variants(argc, argv, {2, 3, 4, 5, 6, 7, 8}, 3);
  if (lab.variants.empty()) return 0;
  srand(0);
  const int failures = run<64>(lab) + run<128>(lab);
  return failures ? 1 : 0;
}
