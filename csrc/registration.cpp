// Every C++ op schema of fastnst, in one place.
//
// Kernels register implementations elsewhere:
//   CPU  -> csrc/cpu/<op>.cpp   (TORCH_LIBRARY_IMPL(fastnst, CPU, m))
//   CUDA -> csrc/cuda/<op>.cu   (STABLE_TORCH_LIBRARY_IMPL(fastnst, CUDA, m))
// Fake (meta) kernels and autograd are registered from Python, in fastnst/ops/<op>.py.
// Triton kernels are separate ops (fastnst::<op>_triton), defined in fastnst/ops/<op>.py.

#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cpu/cpu_features.h"

#ifndef FASTNST_CUDA_ARCHS
#define FASTNST_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(fastnst, m) {
  // G[b] = scale * F[b] F[b]^T, F = x[b] of shape (C, L); x is (B, C, L), any strides.
  m.def("gram(Tensor x, float scale) -> Tensor");
  // dF[b] = scale * (dG[b] + dG[b]^T) F[b]. The result has x's strides when x is a dense
  // (B, C, L) tensor with channels innermost (stride(1) == 1), else it is contiguous.
  m.def("gram_backward(Tensor grad, Tensor x, float scale) -> Tensor");

  // Layout rule for every [B, C, L] result below (as for gram_backward): x's strides when x is
  // dense with channels innermost (stride(1) == 1, stride(2) == C, C > 1), else contiguous.

  // Per (b, c) statistics of x [B, C, L] (any strides) over L, accumulated in fp32 or better
  // and stable for a large mean: mean, and std = sqrt(var + eps) with var over L - 1
  // (unbiased) or L. Both [B, C] in x's dtype.
  m.def("mean_std(Tensor x, float eps, bool unbiased) -> (Tensor, Tensor)");
  // dx = grad_mean / L + grad_std * (x - mean) / (std * (L - unbiased)); [B, C, L].
  m.def("mean_std_backward(Tensor grad_mean, Tensor grad_std, Tensor x, Tensor mean, Tensor std, "
        "bool unbiased) -> Tensor");

  // Fused normalisation, the kernel of instance norm, conditional instance norm and AdaIN:
  //   y = act(w * (x - mu) * rstd + b + x_scale * x),  rstd = 1 / sqrt(var + eps)
  // mu, var per (b, c) over L (var over L - 1 if unbiased, else L). weight/bias: None, [C] or
  // [B, C] (any float dtype). activation: 0 none, 1 relu. AdaIN is w = alpha * style_std,
  // b = alpha * style_mean, x_scale = 1 - alpha. Returns (y in x's dtype, mean [B, C] fp32,
  // rstd [B, C] fp32).
  m.def("instance_norm(Tensor x, Tensor? weight, Tensor? bias, float eps, bool unbiased, "
        "float x_scale, int activation) -> (Tensor, Tensor, Tensor)");
  // Backward of instance_norm. The ReLU mask is recomputed from y (y > 0), not stored.
  // Returns (dx [B, C, L] in x's dtype, dw [B, C] fp32 = sum_l g' xhat, db [B, C] fp32 =
  // sum_l g'), g' = grad masked by the ReLU; dw/db are per sample (reduce over B for a [C]
  // weight) and empty tensors when weight_grads is false.
  m.def("instance_norm_backward(Tensor grad, Tensor x, Tensor y, Tensor? weight, Tensor mean, "
        "Tensor rstd, bool unbiased, float x_scale, int activation, bool weight_grads) "
        "-> (Tensor, Tensor, Tensor)");
}

// ---- build information, read by fastnst.info -------------------------------------------
static PyObject* build_info(PyObject*, PyObject*) {
  PyObject* d = PyDict_New();
  auto set_str = [&](const char* k, const std::string& v) {
    PyObject* o = PyUnicode_FromString(v.c_str());
    PyDict_SetItemString(d, k, o);
    Py_DECREF(o);
  };
  auto set_bool = [&](const char* k, bool v) { PyDict_SetItemString(d, k, v ? Py_True : Py_False); };
#ifdef FASTNST_WITH_CUDA
  set_bool("with_cuda", true);
#else
  set_bool("with_cuda", false);
#endif
  set_str("cuda_archs", FASTNST_CUDA_ARCHS);
  set_str("compiler", __VERSION__);
  set_str("cpu_kernels", fastnst::cpu::compiled_isa());
  set_str("cpu_isa", fastnst::cpu::runtime_isa());
  return d;
}

static PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "What this build of fastnst._C contains."},
    {nullptr, nullptr, 0, nullptr}};

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}
