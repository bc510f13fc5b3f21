// The feedforward block y = gelu_tanh(x W_in^T + b_in) W_out^T + b_out on cuBLASLt, with the
// bias, GELU and their gradients fused into the GEMM epilogues instead of separate kernels:
//
//   forward   h = gelu(x W_in^T + b_in)   GELU_AUX_BIAS   (aux := the pre-activation h_pre)
//             y = h W_out^T + b_out       BIAS
//   backward  dh = dy W_out                                               DEFAULT
//             dh_pre = dh * gelu'(h_pre) in place, db_in = colsum(dh_pre)   one pass of ours
//             db_out = colsum(dy)                                           ours
//             dW_out = dy^T h;  dW_in = dh_pre^T x;  dx = dh_pre W_in       DEFAULT
//
// The backward once used cuBLASLt's DGELU_BGRAD (dh GEMM) and BGRADB (dW_out GEMM) epilogues:
// on an H200 (2026-11-26, bf16, 16384 rows, 1024 -> 4096) it took 1.309 ms against 0.769 ms for
// the four bare GEMMs and 0.946 ms for eager PyTorch (GEMMs + a GELU-backward kernel + sums):
// the bias-gradient epilogues reduce over the 16384-row dimension inside the GEMM.  Now the
// GEMMs run plain and one bandwidth-bound pass (read dh and h_pre, write dh_pre: 3 x M x F
// elements, ~0.1 ms at that shape) does the GELU backward and db_in; predicted ~0.88 ms.
// ffn_bwd(..., lt_epilogues = true, ...) runs the fused epilogues, to time both on a new GPU.
//
// cuBLASLt's GELU epilogues use the tanh approximation, the GPT-2 GELU of the reference
// (kernels/ffn.py); tests/test_cuda_ops.py checks it against feedforward_ref.
//
// Layouts: torch tensors are row-major, cuBLASLt is column-major.  A row-major (R, C) matrix
// is a column-major (C, R) one with ld = C, so every product is written transposed:
// row-major Y = X W^T becomes column-major Y^T = W X^T, i.e. D(m=out, n=rows) = op(A) op(B).
// The GELU aux matrix needs a leading dim divisible by 8, hence d_ff % 8 == 0.
#include "../flopscale.h"
#include "../common.cuh"

#include <cublasLt.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <map>
#include <mutex>

#define FS_CUBLAS_CHECK(expr)                                                                  \
  do {                                                                                         \
    cublasStatus_t fs_st_ = (expr);                                                            \
    if (fs_st_ != CUBLAS_STATUS_SUCCESS) {                                                     \
      throw std::runtime_error(std::string("flopscale cuBLASLt error: ") +                    \
                               cublasLtGetStatusName(fs_st_) + " (" +                          \
                               cublasLtGetStatusString(fs_st_) + ") at " __FILE__ ":" +        \
                               std::to_string(__LINE__) + " (" #expr ")");                     \
    }                                                                                          \
  } while (0)

namespace flopscale {
namespace {

constexpr int kMaxDevices = 64;

// One cuBLASLt handle per device, created on first use and kept for the process's lifetime.
cublasLtHandle_t handle_for_current_device() {
  static std::mutex mu;
  static cublasLtHandle_t handles[kMaxDevices] = {};
  int dev = 0;
  FS_CUDA_CHECK(cudaGetDevice(&dev));
  FS_REQUIRE(dev < kMaxDevices, "ffn: device index out of range");
  std::lock_guard<std::mutex> lock(mu);
  if (!handles[dev]) FS_CUBLAS_CHECK(cublasLtCreate(&handles[dev]));
  return handles[dev];
}

// Largest power of two (<= 256) dividing the address: what cuBLASLt's heuristic may assume.
uint32_t alignment(const void* p) {
  uint32_t a = 256;
  const auto v = reinterpret_cast<uintptr_t>(p);
  while (a > 1 && (v % a) != 0) a >>= 1;
  return a;
}

// ---- fallback epilogues ------------------------------------------------------------------------
// Used only when cuBLASLt offers no algorithm for a fused epilogue on this GPU / dtype / layout:
// the GEMM then runs with the default epilogue and these kernels finish the job on D
// (column-major (m, n), leading dim ldd; bias indexed by the row m).
enum class Epi { kBias, kGeluAuxBias, kDGelu };

// GELU (tanh form) and its derivative.  Not via tanhf: under --use_fast_math tanhf compiles to
// tanh.approx.f32 (~2^-11 relative), too coarse for the fp32 path.  With e = exp(2u) (__expf,
// ex2.approx: ~1e-7 relative here), 1 + t = 2e / (1 + e) and 1 - t = 2 / (1 + e) for t = tanh(u),
// free of the cancellation that 1 + t has near t = -1; 2u is clamped to +-80 so that e and
// 1 / (1 + e) stay finite (t is +-1 to fp32 precision well before that).
__device__ __forceinline__ float2 one_plus_minus_tanh(float u) {
  const float e = __expf(fminf(fmaxf(2.f * u, -80.f), 80.f));
  const float inv = 1.f / (1.f + e);
  return make_float2(2.f * e * inv, 2.f * inv);
}
__device__ __forceinline__ float gelu_tanh(float x) {
  const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return 0.5f * x * one_plus_minus_tanh(u).x;
}
__device__ __forceinline__ float dgelu_tanh(float x) {
  const float k0 = 0.7978845608028654f, k1 = 0.044715f;
  const float2 pm = one_plus_minus_tanh(k0 * (x + k1 * x * x * x));  // (1 + t, 1 - t)
  return 0.5f * pm.x + 0.5f * x * (pm.x * pm.y) * k0 * (1.f + 3.f * k1 * x * x);
}

template <typename T>
__global__ void _ffn_epilogue_kernel(T* D, int64_t m, int64_t n, int64_t ldd, const T* bias, T* aux, int64_t ld_aux,
                                     Epi epi) {
  const int64_t total = m * n;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = idx % m, j = idx / m;
    float v = to_float(D[i + j * ldd]);
    if (epi == Epi::kBias) {
      v += to_float(bias[i]);
    } else if (epi == Epi::kGeluAuxBias) {
      const T pre = from_float<T>(v + to_float(bias[i]));
      aux[i + j * ld_aux] = pre;
      v = gelu_tanh(to_float(pre));
    } else {
      v *= dgelu_tanh(to_float(aux[i + j * ld_aux]));
    }
    D[i + j * ldd] = from_float<T>(v);
  }
}

// out[c] = sum_r X[r * stride_r + c * stride_c] for c < n_out, r < n_red (fp32 accumulate).
template <typename T>
__global__ void _ffn_sum_kernel(const T* X, int64_t n_out, int64_t n_red, int64_t stride_c, int64_t stride_r, T* out) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= n_out) return;
  float acc = 0.f;
  for (int64_t r = 0; r < n_red; ++r) acc += to_float(X[r * stride_r + c * stride_c]);
  out[c] = from_float<T>(acc);
}

// V elements of T moved as one access (16 bytes when V = 16 / sizeof(T)).
template <typename T, int V> struct alignas(V * sizeof(T)) Pack {
  T v[V];
};

// Column sums of a row-major (rows, cols) matrix X, with the GELU backward first when DGELU:
// X[r][c] <- X[r][c] * gelu'(aux[r][c]) in place (dh -> dh_pre), and the sums are of the new
// values (fp32, before rounding to T).  Block (32, 8): threadIdx.x owns V consecutive columns
// (one 16-byte access when V > 1), threadIdx.y strides the rows; grid (ceil(cols / 32V),
// ysplit).  partial: (ysplit, cols) fp32, one row per grid row, reduced by the next kernel.
// Requires cols % V == 0 and 16-byte aligned X, aux when V > 1.
template <typename T, int V, bool DGELU>
__global__ void __launch_bounds__(256)
_ffn_colsum_kernel(T* X, const T* __restrict__ aux, float* __restrict__ partial, int64_t rows, int cols) {
  __shared__ float red[8][32 * V + 1];
  const int c0 = (blockIdx.x * 32 + threadIdx.x) * V;
  float acc[V];
#pragma unroll
  for (int k = 0; k < V; ++k) acc[k] = 0.f;
  if (c0 < cols) {
    for (int64_t r = (int64_t)blockIdx.y * 8 + threadIdx.y; r < rows; r += (int64_t)8 * gridDim.y) {
      Pack<T, V>* p = reinterpret_cast<Pack<T, V>*>(X + r * cols + c0);
      Pack<T, V> v = *p;
      if constexpr (DGELU) {
        const Pack<T, V> a = *reinterpret_cast<const Pack<T, V>*>(aux + r * cols + c0);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const float f = to_float(v.v[k]) * dgelu_tanh(to_float(a.v[k]));
          acc[k] += f;
          v.v[k] = from_float<T>(f);
        }
        *p = v;
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) acc[k] += to_float(v.v[k]);
      }
    }
  }
#pragma unroll
  for (int k = 0; k < V; ++k) red[threadIdx.y][threadIdx.x * V + k] = acc[k];
  __syncthreads();
  if (threadIdx.y == 0 && c0 < cols) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float sum = 0.f;
      for (int y = 0; y < 8; ++y) sum += red[y][threadIdx.x * V + k];
      partial[(size_t)blockIdx.y * cols + c0 + k] = sum;
    }
  }
}

// out[c] = sum over n of partial[n][c] (fp32), rounded to T.  Block (32, 32): x walks columns,
// y strides the partial rows, then a shared-memory sum in a fixed order.  grid = ceil(cols / 32).
template <typename T>
__global__ void __launch_bounds__(1024)
_ffn_reduce_partials_kernel(const float* __restrict__ partial, int n, int cols, T* __restrict__ out) {
  __shared__ float red[32][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  float sum = 0.f;
  if (c < cols) {
    for (int i = threadIdx.y; i < n; i += 32) sum += partial[(size_t)i * cols + c];
  }
  red[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    for (int i = 1; i < 32; ++i) sum += red[i][threadIdx.x];
    out[c] = from_float<T>(sum);
  }
}

struct Gemm {
  cublasOperation_t op_a, op_b;
  int64_t m, n, k;  // D is (m, n) column-major; op(A) is (m, k), op(B) is (k, n)
  const void* A;
  int64_t lda;
  const void* B;
  int64_t ldb;
  void* D;
  int64_t ldd;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // bias (BIAS) or bias-gradient output (BGRAD*), Dtype
  const void* aux = nullptr;   // GELU input: written by GELU_AUX_BIAS, read by DGELU_BGRAD
  int64_t ld_aux = 0;
};

// RAII for the descriptors of one call.
struct Descs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~Descs() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

using AlgoKey = std::array<int64_t, 16>;

// Returns false, having launched nothing, when cuBLASLt has no algorithm for g's fused epilogue.
bool try_gemm(const Gemm& g, DType dtype, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const cudaDataType_t dt = dtype == DType::kFloat32 ? CUDA_R_32F
                            : dtype == DType::kFloat16 ? CUDA_R_16F
                                                       : CUDA_R_16BF;
  // fp32 accumulate for every dtype; fp32 inputs stay full fp32 (no TF32), as torch's default.
  const cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  cublasLtHandle_t handle = handle_for_current_device();

  Descs ds;
  FS_CUBLAS_CHECK(cublasLtMatmulDescCreate(&ds.op, compute, CUDA_R_32F));
  FS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSA, &g.op_a, sizeof(g.op_a)));
  FS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSB, &g.op_b, sizeof(g.op_b)));
  FS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &g.epilogue, sizeof(g.epilogue)));
  if (g.bias) {
    FS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)));
  }
  if (g.aux) {
    FS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.aux, sizeof(g.aux)));
    FS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &g.ld_aux, sizeof(g.ld_aux)));
  }
  const bool ta = g.op_a != CUBLAS_OP_N, tb = g.op_b != CUBLAS_OP_N;
  FS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ds.a, dt, ta ? g.k : g.m, ta ? g.m : g.k, g.lda));
  FS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ds.b, dt, tb ? g.n : g.k, tb ? g.k : g.n, g.ldb));
  FS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ds.d, dt, g.m, g.n, g.ldd));

  const uint32_t al_a = alignment(g.A), al_b = alignment(g.B), al_d = alignment(g.D);
  int device = 0;
  FS_CUDA_CHECK(cudaGetDevice(&device));
  // Heuristic queries cost tens of microseconds: remember the answer per problem.
  const AlgoKey key = {device, (int64_t)dtype, g.op_a, g.op_b, g.m, g.n, g.k, g.lda, g.ldb, g.ldd, g.epilogue,
                       g.ld_aux, al_a, al_b, al_d, (int64_t)workspace_bytes};
  static std::mutex mu;
  static std::map<AlgoKey, cublasLtMatmulAlgo_t> cache;
  cublasLtMatmulAlgo_t algo;
  bool found = false;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it != cache.end()) {
      algo = it->second;
      found = true;
    }
  }
  if (!found) {
    FS_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&ds.pref));
    FS_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(ds.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                         &workspace_bytes, sizeof(workspace_bytes)));
    FS_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(ds.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a)));
    FS_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(ds.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b)));
    FS_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(ds.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof(al_d)));
    FS_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(ds.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d)));
    cublasLtMatmulHeuristicResult_t result = {};
    int n_results = 0;
    FS_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle, ds.op, ds.a, ds.b, ds.d, ds.d, ds.pref, 1, &result, &n_results));
    if (n_results == 0) {
      FS_REQUIRE(g.epilogue != CUBLASLT_EPILOGUE_DEFAULT,
                 "ffn: cuBLASLt has no algorithm for a " + std::to_string(g.m) + "x" + std::to_string(g.n) + "x" +
                     std::to_string(g.k) + " GEMM");
      return false;  // the caller retries unfused
    }
    algo = result.algo;
    std::lock_guard<std::mutex> lock(mu);
    cache.emplace(key, algo);
  }
  const float alpha = 1.f, beta = 0.f;
  FS_CUBLAS_CHECK(cublasLtMatmul(handle, ds.op, &alpha, g.A, ds.a, g.B, ds.b, &beta, g.D, ds.d, g.D, ds.d, &algo,
                                 workspace, workspace_bytes, stream));
  return true;
}

template <typename T>
void unfused_epilogue(const Gemm& g, cudaStream_t stream) {
  T* D = static_cast<T*>(g.D);
  const int blocks = (int)std::min<int64_t>((g.m * g.n + 255) / 256, 4096);
  switch (g.epilogue) {
    case CUBLASLT_EPILOGUE_BIAS:
      _ffn_epilogue_kernel<T><<<blocks, 256, 0, stream>>>(D, g.m, g.n, g.ldd, static_cast<const T*>(g.bias), nullptr, 0, Epi::kBias);
      break;
    case CUBLASLT_EPILOGUE_GELU_AUX_BIAS:
      _ffn_epilogue_kernel<T><<<blocks, 256, 0, stream>>>(D, g.m, g.n, g.ldd, static_cast<const T*>(g.bias),
                                                          static_cast<T*>(const_cast<void*>(g.aux)), g.ld_aux, Epi::kGeluAuxBias);
      break;
    case CUBLASLT_EPILOGUE_DGELU_BGRAD:
      _ffn_epilogue_kernel<T><<<blocks, 256, 0, stream>>>(D, g.m, g.n, g.ldd, nullptr,
                                                          static_cast<T*>(const_cast<void*>(g.aux)), g.ld_aux, Epi::kDGelu);
      FS_CHECK_LAUNCH();
      // bias gradient: sum over the n columns of each of the m rows of D
      _ffn_sum_kernel<T><<<(int)((g.m + 255) / 256), 256, 0, stream>>>(D, g.m, g.n, 1, g.ldd, static_cast<T*>(const_cast<void*>(g.bias)));
      break;
    case CUBLASLT_EPILOGUE_BGRADB: {
      // bias gradient: sum of op(B) (k, n) over k; op(B)[r][c] is B[c + r * ldb] when transposed
      const bool tb = g.op_b != CUBLAS_OP_N;
      _ffn_sum_kernel<T><<<(int)((g.n + 255) / 256), 256, 0, stream>>>(
          static_cast<const T*>(g.B), g.n, g.k, tb ? 1 : g.ldb, tb ? g.ldb : 1, static_cast<T*>(const_cast<void*>(g.bias)));
      break;
    }
    default:
      FS_REQUIRE(false, "ffn: no unfused fallback for epilogue " + std::to_string((int)g.epilogue));
  }
  FS_CHECK_LAUNCH();
}

// The fused GEMM when cuBLASLt has one; else the plain GEMM and the epilogue as separate kernels.
void run_gemm(const Gemm& g, DType dtype, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (try_gemm(g, dtype, workspace, workspace_bytes, stream)) return;
  static bool warned = false;
  if (!warned) {
    fprintf(stderr, "flopscale: cuBLASLt offers no fused epilogue %d here; using separate epilogue kernels\n",
            (int)g.epilogue);
    warned = true;
  }
  Gemm plain = g;
  plain.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  plain.bias = nullptr;
  plain.aux = nullptr;
  plain.ld_aux = 0;
  try_gemm(plain, dtype, workspace, workspace_bytes, stream);  // throws if even this has no algorithm
  switch (dtype) {
    case DType::kFloat32: unfused_epilogue<float>(g, stream); break;
    case DType::kFloat16: unfused_epilogue<__half>(g, stream); break;
    case DType::kBFloat16: unfused_epilogue<__nv_bfloat16>(g, stream); break;
  }
}

bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) % 16) == 0; }

// Column sums of X (rows, cols) into out, after the in-place GELU backward when aux != nullptr
// (see _ffn_colsum_kernel).  The fp32 partials (ysplit x cols, ~1 MB) live in the cuBLASLt
// workspace: stream order keeps them apart from the GEMMs that use it before and after.
template <typename T>
void colsum(T* X, const T* aux, T* out, int64_t rows, int cols, void* workspace, size_t workspace_bytes,
            cudaStream_t stream) {
  constexpr int kV = 16 / sizeof(T);
  const bool vec = cols % kV == 0 && aligned16(X) && aligned16(aux);
  const int V = vec ? kV : 1;
  int device = 0, sms = 0;
  FS_CUDA_CHECK(cudaGetDevice(&device));
  FS_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int xblocks = (cols + 32 * V - 1) / (32 * V);
  // ~8 CTAs of 256 threads per SM: one 16-byte load (two with aux) in flight per thread.
  const int64_t ysplit = std::max<int64_t>(
      1, std::min<int64_t>({(8 * (int64_t)sms + xblocks - 1) / xblocks, (rows + 7) / 8, 65535}));
  FS_REQUIRE((size_t)ysplit * cols * sizeof(float) <= workspace_bytes, "ffn: workspace too small for the column sums");
  float* partial = static_cast<float*>(workspace);
  const dim3 grid(xblocks, (unsigned)ysplit), block(32, 8);
  if (vec) {
    if (aux) _ffn_colsum_kernel<T, kV, true><<<grid, block, 0, stream>>>(X, aux, partial, rows, cols);
    else _ffn_colsum_kernel<T, kV, false><<<grid, block, 0, stream>>>(X, aux, partial, rows, cols);
  } else {
    if (aux) _ffn_colsum_kernel<T, 1, true><<<grid, block, 0, stream>>>(X, aux, partial, rows, cols);
    else _ffn_colsum_kernel<T, 1, false><<<grid, block, 0, stream>>>(X, aux, partial, rows, cols);
  }
  FS_CHECK_LAUNCH();
  _ffn_reduce_partials_kernel<T><<<(cols + 31) / 32, dim3(32, 32), 0, stream>>>(partial, (int)ysplit, cols, out);
  FS_CHECK_LAUNCH();
}

// dh_pre = dh * gelu'(h_pre) in place with db_in = its column sums; db_out = column sums of dy.
template <typename T>
void bwd_elementwise(void* dh_pre, const void* h_pre, void* db_in, const void* dy, void* db_out, int M, int d, int F,
                     void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  colsum<T>(static_cast<T*>(dh_pre), static_cast<const T*>(h_pre), static_cast<T*>(db_in), M, F, workspace,
            workspace_bytes, stream);
  // dy is only read (aux == nullptr): the const_cast never writes through it.
  colsum<T>(static_cast<T*>(const_cast<void*>(dy)), nullptr, static_cast<T*>(db_out), M, d, workspace,
            workspace_bytes, stream);
}

void check(int M, int d, int F) {
  FS_REQUIRE(M > 0 && d > 0 && F > 0, "ffn: rows, d_model and d_ff must be positive");
  FS_REQUIRE(F % 8 == 0, "ffn: cuBLASLt's GELU epilogue needs d_ff % 8 == 0, got " + std::to_string(F));
}

}  // namespace

void ffn_fwd(const void* x, const void* w_in, const void* b_in, const void* w_out, const void* b_out, void* h_pre,
             void* h, void* y, int M, int d, int F, DType dtype, void* workspace, size_t workspace_bytes,
             cudaStream_t stream) {
  check(M, d, F);
  // h^T (F, M) = W_in (F, d) x^T (d, M): W_in row-major (F, d) is column-major (d, F) -> op T.
  Gemm g1{CUBLAS_OP_T, CUBLAS_OP_N, F, M, d, w_in, d, x, d, h, F};
  g1.epilogue = CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  g1.bias = b_in;
  g1.aux = h_pre;
  g1.ld_aux = F;
  run_gemm(g1, dtype, workspace, workspace_bytes, stream);
  // y^T (d, M) = W_out (d, F) h^T (F, M): W_out row-major (d, F) is column-major (F, d) -> op T.
  Gemm g2{CUBLAS_OP_T, CUBLAS_OP_N, d, M, F, w_out, F, h, F, y, d};
  g2.epilogue = CUBLASLT_EPILOGUE_BIAS;
  g2.bias = b_out;
  run_gemm(g2, dtype, workspace, workspace_bytes, stream);
}

void ffn_bwd(const void* dy, const void* x, const void* w_in, const void* w_out, const void* h_pre, const void* h,
             void* dx, void* dw_in, void* db_in, void* dw_out, void* db_out, void* dh_pre, int M, int d, int F,
             bool lt_epilogues, DType dtype, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  check(M, d, F);
  // lt_epilogues: cuBLASLt's DGELU_BGRAD / BGRADB epilogues (slower on an H200, see the top of
  // this file), kept so that other GPUs and cuBLAS versions can be timed both ways.
  if (lt_epilogues) {
    // dh_pre^T (F, M) = W_out^T (F, d) dy^T (d, M), times gelu'(h_pre); db_in = row sums of it.
    Gemm g1{CUBLAS_OP_N, CUBLAS_OP_N, F, M, d, w_out, F, dy, d, dh_pre, F};
    g1.epilogue = CUBLASLT_EPILOGUE_DGELU_BGRAD;
    g1.bias = db_in;
    g1.aux = h_pre;
    g1.ld_aux = F;
    run_gemm(g1, dtype, workspace, workspace_bytes, stream);
    // dW_out^T (F, d) = h^T (F, M) dy (M, d); db_out = sums of op(B) over k = M.
    Gemm g2{CUBLAS_OP_N, CUBLAS_OP_T, F, d, M, h, F, dy, d, dw_out, F};
    g2.epilogue = CUBLASLT_EPILOGUE_BGRADB;
    g2.bias = db_out;
    run_gemm(g2, dtype, workspace, workspace_bytes, stream);
  } else {
    // dh^T (F, M) = W_out^T (F, d) dy^T (d, M), written into dh_pre's buffer.
    Gemm g1{CUBLAS_OP_N, CUBLAS_OP_N, F, M, d, w_out, F, dy, d, dh_pre, F};
    run_gemm(g1, dtype, workspace, workspace_bytes, stream);
    // dh_pre = dh * gelu'(h_pre) in place, db_in; db_out from dy.  Row-major (M, F) / (M, d).
    switch (dtype) {
      case DType::kFloat32: bwd_elementwise<float>(dh_pre, h_pre, db_in, dy, db_out, M, d, F, workspace, workspace_bytes, stream); break;
      case DType::kFloat16: bwd_elementwise<__half>(dh_pre, h_pre, db_in, dy, db_out, M, d, F, workspace, workspace_bytes, stream); break;
      case DType::kBFloat16: bwd_elementwise<__nv_bfloat16>(dh_pre, h_pre, db_in, dy, db_out, M, d, F, workspace, workspace_bytes, stream); break;
    }
    // dW_out^T (F, d) = h^T (F, M) dy (M, d).
    Gemm g2{CUBLAS_OP_N, CUBLAS_OP_T, F, d, M, h, F, dy, d, dw_out, F};
    run_gemm(g2, dtype, workspace, workspace_bytes, stream);
  }
  // dW_in^T (d, F) = x^T (d, M) dh_pre (M, F).
  Gemm g3{CUBLAS_OP_N, CUBLAS_OP_T, d, F, M, x, d, dh_pre, F, dw_in, d};
  run_gemm(g3, dtype, workspace, workspace_bytes, stream);
  // dx^T (d, M) = W_in^T (d, F) dh_pre^T (F, M).
  Gemm g4{CUBLAS_OP_N, CUBLAS_OP_N, d, M, F, w_in, d, dh_pre, F, dx, d};
  run_gemm(g4, dtype, workspace, workspace_bytes, stream);
}

}  // namespace flopscale
