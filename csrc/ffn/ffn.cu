// The feedforward block y = gelu_tanh(x W_in^T + b_in) W_out^T + b_out on cuBLASLt, with the
// bias, GELU and their gradients fused into the GEMM epilogues instead of separate kernels:
//
//   forward   h = gelu(x W_in^T + b_in)   GELU_AUX_BIAS   (aux := the pre-activation h_pre)
//             y = h W_out^T + b_out       BIAS
//   backward  dh_pre = (dy W_out) * gelu'(h_pre), db_in = colsum(dh_pre)   DGELU_BGRAD
//             dW_out = dy^T h, db_out = colsum(dy)                          BGRADB
//             dW_in = dh_pre^T x;  dx = dh_pre W_in                         DEFAULT
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

__device__ __forceinline__ float gelu_tanh(float x) {
  const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return 0.5f * x * (1.f + tanhf(u));
}
__device__ __forceinline__ float dgelu_tanh(float x) {
  const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  const float t = tanhf(u);
  return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * 0.7978845608028654f * (1.f + 3.f * 0.044715f * x * x);
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
             DType dtype, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  check(M, d, F);
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
  // dW_in^T (d, F) = x^T (d, M) dh_pre (M, F).
  Gemm g3{CUBLAS_OP_N, CUBLAS_OP_T, d, F, M, x, d, dh_pre, F, dw_in, d};
  run_gemm(g3, dtype, workspace, workspace_bytes, stream);
  // dx^T (d, M) = W_in^T (d, F) dh_pre^T (F, M).
  Gemm g4{CUBLAS_OP_N, CUBLAS_OP_N, d, M, F, w_in, d, dh_pre, F, dx, d};
  run_gemm(g4, dtype, workspace, workspace_bytes, stream);
}

}  // namespace flopscale
