// The torch-facing surface of flopscale._C: one fwd/bwd pair per op, and what the attention
// kernel choice resolves to (for the run's record); nothing else.
//
// Tensors are checked (device, dtype, shape), made contiguous, and their raw pointers handed
// to the torch-free launchers declared in flopscale.h, on torch's current stream.  Outputs and
// scratch are allocated here with torch's caching allocator.  Imported by exactly one Python
// module, flopscale/kernels/cuda_backend.py.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "flopscale.h"

namespace {

using flopscale::DType;

DType dtype_of(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return DType::kFloat32;
    case torch::kFloat16: return DType::kFloat16;
    case torch::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "flopscale: unsupported dtype ", t.scalar_type());
  }
  return DType::kFloat32;
}

void check_cuda(const torch::Tensor& t, const char* name, const torch::Tensor& like) {
  TORCH_CHECK(t.is_cuda(), "flopscale: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == like.device(), "flopscale: ", name, " is on another device");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "flopscale: ", name, " has dtype ", t.scalar_type(),
              ", expected ", like.scalar_type());
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// cuBLASLt workspace: 32 MiB, as torch gives cuBLAS on Hopper; allocated per call from the caching
// allocator (cheap after the first call) so that it follows torch's stream semantics.
constexpr int64_t kWorkspaceBytes = 32 << 20;

// ---- attention -------------------------------------------------------------------------------
// kernel: 0 auto (wgmma on a Hopper whose build carries sm_90a code, mma.sync elsewhere), 1 mma.sync
// on every GPU.  An argument, not an environment variable, so that the run records what ran
// (attention_kernel_name) and a Hopper can still test and time the kernels other GPUs run.
std::vector<torch::Tensor> attention_fwd(torch::Tensor q, torch::Tensor k, torch::Tensor v, bool causal,
                                         int64_t kernel) {
  check_cuda(q, "q", q);
  check_cuda(k, "k", q);
  check_cuda(v, "v", q);
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "attention_fwd: q, k, v must all be (B, H, T, D) of one shape");
  const c10::cuda::CUDAGuard guard(q.device());
  q = q.contiguous();
  k = k.contiguous();
  v = v.contiguous();
  const int B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  auto o = torch::empty_like(q);
  auto lse = torch::empty({B, H, T}, q.options().dtype(torch::kFloat32));
  flopscale::attention_fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr<float>(), B, H, T, D,
                           causal, (int)kernel, dtype_of(q), stream());
  return {o, lse};
}

std::vector<torch::Tensor> attention_bwd(torch::Tensor dout, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                         torch::Tensor o, torch::Tensor lse, bool causal, int64_t kernel) {
  for (auto* p : {&dout, &k, &v, &o}) check_cuda(*p, "attention_bwd input", q);
  TORCH_CHECK(lse.is_cuda() && lse.scalar_type() == torch::kFloat32, "attention_bwd: lse must be CUDA float32");
  TORCH_CHECK(dout.sizes() == q.sizes() && o.sizes() == q.sizes(), "attention_bwd: shape mismatch");
  const c10::cuda::CUDAGuard guard(q.device());
  dout = dout.contiguous();
  q = q.contiguous();
  k = k.contiguous();
  v = v.contiguous();
  o = o.contiguous();
  lse = lse.contiguous();
  const int B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  auto dq = torch::empty_like(q), dk = torch::empty_like(k), dv = torch::empty_like(v);
  auto f32 = q.options().dtype(torch::kFloat32);
  auto delta = torch::empty({B, H, T}, f32);
  auto dq_accum = torch::empty({B, H, T, D}, f32);
  flopscale::attention_bwd(dout.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr<float>(),
                           dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), delta.data_ptr<float>(),
                           dq_accum.data_ptr<float>(), B, H, T, D, causal, (int)kernel, dtype_of(q), stream());
  return {dq, dk, dv};
}

// Needs the current CUDA device (the probe of attention.cu runs on it).
std::string attention_kernel_name(int64_t kernel) { return flopscale::attention_kernel_name((int)kernel); }

std::vector<int64_t> attention_tiles(int64_t D, int64_t kernel) {
  int t[4];
  flopscale::attention_tiles((int)D, (int)kernel, t);
  return {t[0], t[1], t[2], t[3]};
}

// ---- layernorm -------------------------------------------------------------------------------
std::vector<torch::Tensor> ln_fwd(torch::Tensor x, c10::optional<torch::Tensor> residual, torch::Tensor w,
                                  torch::Tensor b, double eps) {
  check_cuda(x, "x", x);
  check_cuda(w, "weight", x);
  check_cuda(b, "bias", x);
  const int64_t C = x.size(-1);
  TORCH_CHECK(w.numel() == C && b.numel() == C, "layernorm_fwd: weight and bias must have x.shape[-1] elements");
  const c10::cuda::CUDAGuard guard(x.device());
  x = x.contiguous();
  w = w.contiguous();
  b = b.contiguous();
  const int64_t rows = x.numel() / C;
  auto y = torch::empty_like(x);
  auto f32 = x.options().dtype(torch::kFloat32);
  auto mean = torch::empty({rows}, f32), rstd = torch::empty({rows}, f32);
  torch::Tensor s;
  const void* res_ptr = nullptr;
  if (residual.has_value()) {
    check_cuda(*residual, "residual", x);
    TORCH_CHECK(residual->sizes() == x.sizes(), "add_layernorm_fwd: residual must have x's shape");
    residual = residual->contiguous();
    res_ptr = residual->data_ptr();
    s = torch::empty_like(x);
  }
  flopscale::layernorm_fwd(x.data_ptr(), res_ptr, w.data_ptr(), b.data_ptr(), y.data_ptr(),
                           s.defined() ? s.data_ptr() : nullptr, mean.data_ptr<float>(), rstd.data_ptr<float>(),
                           (int)rows, (int)C, (float)eps, dtype_of(x), stream());
  if (s.defined()) return {y, s, mean, rstd};
  return {y, mean, rstd};
}

std::vector<torch::Tensor> ln_bwd(torch::Tensor dy, torch::Tensor x, torch::Tensor w, torch::Tensor mean,
                                  torch::Tensor rstd, c10::optional<torch::Tensor> dres) {
  check_cuda(dy, "dy", x);
  check_cuda(w, "weight", x);
  const c10::cuda::CUDAGuard guard(x.device());
  dy = dy.contiguous();
  x = x.contiguous();
  w = w.contiguous();
  const int64_t C = x.size(-1), rows = x.numel() / C;
  TORCH_CHECK(dy.sizes() == x.sizes(), "layernorm_bwd: dy must have x's shape");
  auto dx = torch::empty_like(x), dw = torch::empty_like(w), db = torch::empty_like(w);
  const void* dres_ptr = nullptr;
  if (dres.has_value()) {
    check_cuda(*dres, "dresidual", x);
    dres = dres->contiguous();
    dres_ptr = dres->data_ptr();
  }
  auto partial = torch::empty({flopscale::layernorm_bwd_scratch((int)rows, (int)C, x.get_device())},
                              x.options().dtype(torch::kFloat32));
  flopscale::layernorm_bwd(dy.data_ptr(), x.data_ptr(), w.data_ptr(), mean.contiguous().data_ptr<float>(),
                           rstd.contiguous().data_ptr<float>(), dres_ptr, dx.data_ptr(), dw.data_ptr(), db.data_ptr(),
                           partial.data_ptr<float>(), (int)rows, (int)C, dtype_of(x), stream());
  return {dx, dw, db};
}

std::vector<torch::Tensor> layernorm_fwd(torch::Tensor x, torch::Tensor w, torch::Tensor b, double eps) {
  return ln_fwd(x, c10::nullopt, w, b, eps);
}
std::vector<torch::Tensor> layernorm_bwd(torch::Tensor dy, torch::Tensor x, torch::Tensor w, torch::Tensor mean,
                                         torch::Tensor rstd) {
  return ln_bwd(dy, x, w, mean, rstd, c10::nullopt);
}
std::vector<torch::Tensor> add_layernorm_fwd(torch::Tensor x, torch::Tensor residual, torch::Tensor w, torch::Tensor b,
                                             double eps) {
  return ln_fwd(x, residual, w, b, eps);
}
std::vector<torch::Tensor> add_layernorm_bwd(torch::Tensor dy, torch::Tensor ds, torch::Tensor s, torch::Tensor w,
                                             torch::Tensor mean, torch::Tensor rstd) {
  return ln_bwd(dy, s, w, mean, rstd, ds);
}

// ---- feedforward -----------------------------------------------------------------------------
std::vector<torch::Tensor> ffn_fwd(torch::Tensor x, torch::Tensor w_in, torch::Tensor b_in, torch::Tensor w_out,
                                   torch::Tensor b_out) {
  for (auto* p : {&w_in, &b_in, &w_out, &b_out}) check_cuda(*p, "feedforward weight", x);
  TORCH_CHECK(x.dim() == 2, "ffn_fwd: x must be (rows, d_model)");
  const int64_t M = x.size(0), d = x.size(1), F = w_in.size(0);
  TORCH_CHECK(w_in.sizes() == torch::IntArrayRef({F, d}) && w_out.sizes() == torch::IntArrayRef({d, F}) &&
                  b_in.numel() == F && b_out.numel() == d,
              "ffn_fwd: expected w_in (d_ff, d_model), b_in (d_ff,), w_out (d_model, d_ff), b_out (d_model,)");
  const c10::cuda::CUDAGuard guard(x.device());
  x = x.contiguous();
  w_in = w_in.contiguous();
  b_in = b_in.contiguous();
  w_out = w_out.contiguous();
  b_out = b_out.contiguous();
  auto h_pre = torch::empty({M, F}, x.options()), h = torch::empty({M, F}, x.options());
  auto y = torch::empty({M, d}, x.options());
  auto ws = torch::empty({kWorkspaceBytes}, x.options().dtype(torch::kUInt8));
  flopscale::ffn_fwd(x.data_ptr(), w_in.data_ptr(), b_in.data_ptr(), w_out.data_ptr(), b_out.data_ptr(), h_pre.data_ptr(),
                     h.data_ptr(), y.data_ptr(), (int)M, (int)d, (int)F, dtype_of(x), ws.data_ptr(), kWorkspaceBytes,
                     stream());
  return {y, h_pre, h};
}

// lt_epilogues: false, plain GEMMs and one element-wise pass (the faster on an H200); true, cuBLASLt's
// DGELU_BGRAD / BGRADB epilogues.  An argument so that other GPUs and cuBLAS versions can be timed
// both ways, and the run records which ran.
std::vector<torch::Tensor> ffn_bwd(torch::Tensor dy, torch::Tensor x, torch::Tensor w_in, torch::Tensor w_out,
                                   torch::Tensor h_pre, torch::Tensor h, bool lt_epilogues) {
  for (auto* p : {&dy, &w_in, &w_out, &h_pre, &h}) check_cuda(*p, "feedforward tensor", x);
  const int64_t M = x.size(0), d = x.size(1), F = w_in.size(0);
  TORCH_CHECK(dy.sizes() == x.sizes(), "ffn_bwd: dy must have x's shape");
  const c10::cuda::CUDAGuard guard(x.device());
  dy = dy.contiguous();
  x = x.contiguous();
  w_in = w_in.contiguous();
  w_out = w_out.contiguous();
  h_pre = h_pre.contiguous();
  h = h.contiguous();
  auto dx = torch::empty_like(x), dw_in = torch::empty_like(w_in), dw_out = torch::empty_like(w_out);
  auto db_in = torch::empty({F}, x.options()), db_out = torch::empty({d}, x.options());
  auto dh_pre = torch::empty({M, F}, x.options());
  auto ws = torch::empty({kWorkspaceBytes}, x.options().dtype(torch::kUInt8));
  flopscale::ffn_bwd(dy.data_ptr(), x.data_ptr(), w_in.data_ptr(), w_out.data_ptr(), h_pre.data_ptr(), h.data_ptr(),
                     dx.data_ptr(), dw_in.data_ptr(), db_in.data_ptr(), dw_out.data_ptr(), db_out.data_ptr(),
                     dh_pre.data_ptr(), (int)M, (int)d, (int)F, lt_epilogues, dtype_of(x), ws.data_ptr(), kWorkspaceBytes,
                     stream());
  return {dx, dw_in, db_in, dw_out, db_out};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "flopscale CUDA kernels: flash attention, LayerNorm, cuBLASLt feedforward";
  namespace py = pybind11;
  m.def("attention_fwd", &attention_fwd, "causal/full attention forward -> (o, lse); kernel 0 auto, 1 mma.sync",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal"), py::arg("kernel"));
  m.def("attention_bwd", &attention_bwd, "attention backward -> (dq, dk, dv); kernel 0 auto, 1 mma.sync",
        py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("o"), py::arg("lse"), py::arg("causal"),
        py::arg("kernel"));
  m.def("attention_kernel_name", &attention_kernel_name,
        "what `kernel` resolves to on the current device: 'wgmma' or 'mma_sync'", py::arg("kernel"));
  m.def("attention_tiles", &attention_tiles,
        "(fwd BLOCK_M, fwd BLOCK_N, bwd BLOCK_M, bwd BLOCK_N) of the kernels `kernel` resolves to, for a head dim",
        py::arg("D"), py::arg("kernel"));
  m.def("layernorm_fwd", &layernorm_fwd, "LayerNorm forward -> (y, mean, rstd)");
  m.def("layernorm_bwd", &layernorm_bwd, "LayerNorm backward -> (dx, dweight, dbias)");
  m.def("add_layernorm_fwd", &add_layernorm_fwd, "s = x + residual, y = LN(s) -> (y, s, mean, rstd)");
  m.def("add_layernorm_bwd", &add_layernorm_bwd, "fused add+LayerNorm backward -> (dx (= dresidual), dweight, dbias)");
  m.def("ffn_fwd", &ffn_fwd, "feedforward forward on cuBLASLt -> (y, h_pre, h)");
  m.def("ffn_bwd", &ffn_bwd,
        "feedforward backward on cuBLASLt -> (dx, dw_in, db_in, dw_out, db_out); lt_epilogues: cuBLASLt's "
        "DGELU_BGRAD / BGRADB epilogues instead of plain GEMMs and one pass",
        py::arg("dy"), py::arg("x"), py::arg("w_in"), py::arg("w_out"), py::arg("h_pre"), py::arg("h"),
        py::arg("lt_epilogues"));
}
