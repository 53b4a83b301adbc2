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
