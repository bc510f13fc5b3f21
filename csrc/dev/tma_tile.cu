// Lab check, no variants: the TMA tile path that the TMA and warp-specialized attention kernels
// (attention_sm90_lab.cuh: forward variants 6, 7; backward 7, 8) stand on, tested apart from any
// GEMM, so that when one of those kernels fails its float64 check this says at once whether the
// copies themselves are at fault.
//
// For D in {64, 128} and box heights R in {64, 128}: a (300, D) bf16 matrix of small integers
// (exact in bf16) is read through a tile_map (tensor_map.h) with tma_tile<D, R> into one shared
// tile, several times over one mbarrier, each time at another row (the last one partly past the
// end, where TMA must give zeros); after each load every thread reads the tile back through
// sw128_offset<R>, the layout the wgmma descriptors assume, and writes it out.  The mbarrier is
// driven as the backward's producer drives its full barriers: 32 arrivals (one warp) plus the
// copy's bytes set by mbar_expect_tx_only, the phase parity flipping with each load.  Then the
// other direction, as the backward's dQ writer uses it: an fp32 tile written through
// sw128_f32_offset is added by tma_reduce_add_f32 (tile_map_f32) into a (300, D) fp32 buffer,
// at the same three rows, the last box partly past the end (TMA must drop those rows).  The
// host compares every element exactly (small integers: exact in bf16 and in fp32 sums).
//
// Build and run (from the repository root; needs an sm_90 GPU):
//   nvcc -O3 -gencode arch=compute_90a,code=sm_90a -Icsrc csrc/dev/tma_tile.cu -o /tmp/tma_tile && /tmp/tma_tile
#include "attention_sm90_lab.cuh"
#include "tensor_map.h"

#include <cstdio>
#include <vector>

using bf16 = __nv_bfloat16;
using namespace flopscale;

constexpr int kRows = 300;
constexpr int kLoads = 3;
// First row of load l; the last box runs past row 299.
__host__ __device__ constexpr int start_row(int l) { return l == 0 ? 0 : l == 1 ? 100 : 256; }

template <int D, int R>
__global__ void __launch_bounds__(128) _tma_roundtrip_kernel(const __grid_constant__ CUtensorMap map, bf16* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t tile = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t bar = tile + R * D * 2;
  unsigned char* const tile_ptr = smem_raw + (tile - smem_u32(smem_raw));
  const int tid = threadIdx.x;
  if (tid == 0) {
    attn::sm90::lab::mbar_init(bar, 32);
    attn::sm90::lab::mbar_init_fence();
  }
  __syncthreads();
  for (int load = 0; load < kLoads; ++load) {
    if (tid < 32) {
      if (tid == 0) {
        attn::sm90::lab::mbar_expect_tx_only(bar, R * D * 2);
        attn::sm90::lab::tma_tile<D, R>(tile, &map, start_row(load), bar);
      }
      attn::sm90::lab::mbar_arrive(bar);
    }
    attn::sm90::lab::mbar_wait(bar, load & 1);
    bf16* dst = out + (size_t)load * R * D;
    for (int e = tid; e < R * D; e += blockDim.x) {
      const int r = e / D, c = e % D;
      dst[e] = *reinterpret_cast<const bf16*>(tile_ptr + attn::sm90::sw128_offset<R>(r, c));
    }
    __syncthreads();  // every thread has read the tile before the next copy overwrites it
  }
#endif
}

// Adds the pattern stage(load, r, c) into rows start_row(load).. of the buffer, one load at a time.
template <int D, int R>
__global__ void __launch_bounds__(128) _tma_reduce_kernel(const __grid_constant__ CUtensorMap map) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t tile = (smem_u32(smem_raw) + 1023u) & ~1023u;
  for (int load = 0; load < kLoads; ++load) {
    for (int e = threadIdx.x; e < R * D; e += blockDim.x) {
      const int r = e / D, c = e % D;
      const float v = (float)(load * 1000 + r * 3 + c);
      asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(tile + attn::sm90::lab::sw128_f32_offset<R>(r, c)), "f"(v) : "memory");
    }
    attn::sm90::fence_proxy_async();
    __syncthreads();
    if (threadIdx.x == 0) {
      attn::sm90::lab::tma_reduce_add_f32<D, R>(&map, tile, start_row(load));
      asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
      asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
    }
    __syncthreads();  // the tile is read before it is overwritten
  }
  if (threadIdx.x == 0) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#endif
}

float value(int r, int c) { return (float)((r * 131 + c * 7) % 255 - 127); }  // exact in bf16

template <int D, int R>
int check() {
  std::vector<bf16> h((size_t)kRows * D);
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < D; ++c) h[(size_t)r * D + c] = __float2bfloat16(value(r, c));
  bf16 *src, *out;
  FS_CUDA_CHECK(cudaMalloc(&src, h.size() * 2));
  FS_CUDA_CHECK(cudaMalloc(&out, (size_t)kLoads * R * D * 2));
  FS_CUDA_CHECK(cudaMemcpy(src, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  FS_CUDA_CHECK(cudaMemset(out, 0xFF, (size_t)kLoads * R * D * 2));  // NaN: an element not written fails
  const int smem = R * D * 2 + 1024 + 8;
  FS_CUDA_CHECK(cudaFuncSetAttribute(_tma_roundtrip_kernel<D, R>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  _tma_roundtrip_kernel<D, R><<<1, 128, smem>>>(attn::tile_map(src, kRows, D, true, R), out);
  FS_CHECK_LAUNCH();
  FS_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<bf16> got((size_t)kLoads * R * D);
  FS_CUDA_CHECK(cudaMemcpy(got.data(), out, got.size() * 2, cudaMemcpyDeviceToHost));
  int bad = 0, first_r = -1, first_c = -1, first_load = -1;
  for (int l = 0; l < kLoads; ++l) {
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < D; ++c) {
        const int row = start_row(l) + r;
        const float want = row < kRows ? value(row, c) : 0.f;
        const float have = __bfloat162float(got[((size_t)l * R + r) * D + c]);
        if (!(have == want)) {
          if (bad++ == 0) first_load = l, first_r = r, first_c = c;
        }
      }
    }
  }
  printf("tma_tile D=%3d R=%3d: %s (%d loads, %d of %d elements wrong", D, R, bad ? "FAIL" : "OK  ", kLoads, bad,
         kLoads * R * D);
  if (bad) printf("; first: load %d, row %d, column %d", first_load, first_r, first_c);
  printf(")\n");
  cudaFree(src);
  cudaFree(out);
  return bad != 0;
}

template <int D, int R>
int check_reduce() {
  std::vector<float> h((size_t)kRows * D), want;
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < D; ++c) h[(size_t)r * D + c] = value(r, c);
  want = h;
  for (int l = 0; l < kLoads; ++l)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < D; ++c)
        if (start_row(l) + r < kRows) want[(size_t)(start_row(l) + r) * D + c] += (float)(l * 1000 + r * 3 + c);
  float* buf;
  FS_CUDA_CHECK(cudaMalloc(&buf, h.size() * 4));
  FS_CUDA_CHECK(cudaMemcpy(buf, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
  const int smem = R * D * 4 + 1024;
  FS_CUDA_CHECK(cudaFuncSetAttribute(_tma_reduce_kernel<D, R>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  _tma_reduce_kernel<D, R><<<1, 128, smem>>>(attn::tile_map_f32(buf, kRows, D, R));
  FS_CHECK_LAUNCH();
  FS_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> got(h.size());
  FS_CUDA_CHECK(cudaMemcpy(got.data(), buf, got.size() * 4, cudaMemcpyDeviceToHost));
  int bad = 0, first = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(got[i] == want[i]) && bad++ == 0) first = (int)i;
  }
  printf("tma_reduce_add_f32 D=%3d R=%3d: %s (%d of %zu elements wrong", D, R, bad ? "FAIL" : "OK  ", bad, got.size());
  if (bad) printf("; first: row %d, column %d: %g, want %g", first / D, first % D, got[first], want[first]);
  printf(")\n");
  cudaFree(buf);
  return bad != 0;
}

int main() {
  int major = 0;
  FS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  if (major != 9) {
    printf("tma_tile: needs an sm_90 GPU (this one is sm_%d0): skipped\n", major);
    return 0;
  }
  const int failures = check<64, 64>() + check<64, 128>() + check<128, 64>() + check<128, 128>() +
                       check_reduce<64, 128>() + check_reduce<128, 64>();
  return failures ? 1 : 0;
}
