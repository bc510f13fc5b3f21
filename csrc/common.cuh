// Shared device helpers for flopscale's CUDA kernels: error checks, dtype traits, 16-byte
// vectors, cp.async and the mma.sync / ldmatrix wrappers of the attention kernels.
//
// No torch headers here or in any .cu file: every kernel source compiles with plain nvcc
// (.ci/check_cuda.sh does exactly that); only csrc/bindings.cpp sees torch.
#pragma once

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <stdexcept>
#include <string>

// Every CUDA runtime call is checked; a failure becomes a C++ exception, which pybind11 turns
// into a Python RuntimeError naming the file, line and the CUDA error string.
#define FS_CUDA_CHECK(expr)                                                                    \
  do {                                                                                         \
    cudaError_t fs_err_ = (expr);                                                              \
    if (fs_err_ != cudaSuccess) {                                                              \
      throw std::runtime_error(std::string("flopscale CUDA error: ") +                        \
                               cudaGetErrorString(fs_err_) + " at " __FILE__ ":" +             \
                               std::to_string(__LINE__) + " (" #expr ")");                     \
    }                                                                                          \
  } while (0)

// Launch errors surface on the launch itself (bad config) or asynchronously; check the former.
#define FS_CHECK_LAUNCH() FS_CUDA_CHECK(cudaGetLastError())

#define FS_REQUIRE(cond, msg)                                                                  \
  do {                                                                                         \
    if (!(cond)) throw std::runtime_error(std::string("flopscale: ") + (msg));                 \
  } while (0)

namespace flopscale {

// ------------------------------------------------------------------------------------------
// dtype traits: float <-> storage type, and the packed 2-element type used by the MMA paths.
// ------------------------------------------------------------------------------------------
template <typename T> struct TypeTraits;

template <> struct TypeTraits<float> {
  __device__ __forceinline__ static float to_float(float x) { return x; }
  __device__ __forceinline__ static float from_float(float x) { return x; }
};
template <> struct TypeTraits<__half> {
  using T2 = __half2;
  __device__ __forceinline__ static float to_float(__half x) { return __half2float(x); }
  __device__ __forceinline__ static __half from_float(float x) { return __float2half_rn(x); }
  __device__ __forceinline__ static uint32_t pack2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};
template <> struct TypeTraits<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  __device__ __forceinline__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ __forceinline__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
  __device__ __forceinline__ static uint32_t pack2(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

template <typename T> __device__ __forceinline__ float to_float(T x) { return TypeTraits<T>::to_float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x) { return TypeTraits<T>::from_float(x); }

// 16 bytes of T, moved with one LDG.128 / STG.128.
template <typename T> struct alignas(16) Vec16 {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// ------------------------------------------------------------------------------------------
// cp.async (sm_80+): 16-byte global -> shared copies that bypass registers.  src_bytes = 0
// zero-fills the destination without reading global memory (used for rows past T); the source
// address must still be a valid pointer, so callers clamp it to the tensor's base.
// ------------------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ------------------------------------------------------------------------------------------
// ldmatrix: four 8x8 b16 matrices; lane l supplies the address of row (l % 8) of matrix l / 8
// and receives, in register i, the elements (row l / 4, cols 2*(l % 4) + {0, 1}) of matrix i
// (transposed with .trans).
// ------------------------------------------------------------------------------------------
__device__ __forceinline__ void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                            const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(smem_u32(smem)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                                  const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(smem_u32(smem)));
}

// mma.sync m16n8k16, fp32 accumulate: D = A(16x16, row) * B(16x8, col) + C.
// Fragments (g = lane / 4, t = lane % 4):
//   A: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
//   B: b0 (k = 2t..2t+1, n = g), b1 (k = 2t+8.., n = g)
//   C: c0,c1 (g, 2t..2t+1), c2,c3 (g+8, 2t..2t+1)
template <typename T> struct Mma;
template <> struct Mma<__half> {
  __device__ __forceinline__ static void run(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <> struct Mma<__nv_bfloat16> {
  __device__ __forceinline__ static void run(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

}  // namespace flopscale
