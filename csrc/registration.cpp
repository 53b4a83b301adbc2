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

  // Inference form of instance_norm (biased variance, x_scale 0) for the networks' norm ->
  // [upsample ->] reflection pad -> conv stages, written straight into the next conv's input:
  //   out = reflect_pad(upsample_nearest(act(instance_norm(x)) + residual, upsample), pad)
  // x [B, C, H, W] (any strides; computed channels_last), residual None or x's shape and dtype
  // (any strides), upsample >= 1, 0 <= pad < H * upsample, W * upsample. Returns
  // [B, C, H * upsample + 2 pad, W * upsample + 2 pad] channels_last in x's dtype, each value
  // bit for bit instance_norm's (plus the residual, rounded in x's dtype). No autograd.
  m.def("instance_norm_pad(Tensor x, Tensor? weight, Tensor? bias, float eps, int activation, "
        "Tensor? residual, int upsample, int pad) -> Tensor");

  // Valid 3 x 3, stride-1 convolution of the upsampled, reflection-padded x (the networks'
  // [upsample ->] pad -> conv layers), that input never formed:
  //   y[b, o, i, j] = bias[o] + sum_{c, u, v} weight[o, c, u, v] X[b, c, i + u, j + v],
  //   X = reflect_pad(upsample_nearest(x, upsample), pad)
  // by Winograd's F(4x4, 3x3) in fp32 (error ~1e-5 of the output's scale). x float32
  // [B, C, H, W] (any strides; read channels_last), weight float32 [Co, C, 3, 3], bias None or
  // [Co]; C and Co multiples of 16; upsample >= 1, 0 <= pad < H upsample, W upsample; X at least
  // 3 x 3. Returns [B, Co, Hv - 2, Wv - 2] channels_last, Hv = H upsample + 2 pad.
  // CPU with the avx512 path only; no autograd (fastnst.ops.conv.conv3x3 decides).
  m.def("conv3x3_winograd(Tensor x, Tensor weight, Tensor? bias, int upsample=1, int pad=0) -> Tensor");

  // Direct convolution of the same virtual input with any square kernel and stride:
  //   y[b, o, i, j] = bias[o] + sum_{c, u, v} weight[o, c, u, v] X[b, c, s i + u, s j + v]
  // in fp32 (one FMA per product). x float32 [B, C, H, W] (any strides), weight float32
  // [Co, C, k, k], bias None or [Co]; stride, upsample >= 1, 0 <= pad < H upsample, W upsample;
  // X at least k x k. Returns [B, Co, (Hv - k) / s + 1, (Wv - k) / s + 1], channels_last for
  // Co > 8 and contiguous for Co <= 8. CPU with the avx512 path only; no autograd
  // (fastnst.ops.conv.conv decides).
  // The same valid convolution (stride 1) with a k x k weight, k a multiple of 3, as the sum of
  // its (k / 3)^2 3 x 3 blocks' convolutions of the shifted input, each by F(4x4, 3x3) (error
  // ~1e-5 of the output's scale, as conv3x3_winograd's). x float32 [B, C, H, W] (any strides),
  // weight float32 [Co, C, k, k] with Co a multiple of 16, bias None or [Co]. Returns
  // [B, Co, Hv - k + 1, Wv - k + 1] channels_last. CPU with the avx512 path only; no autograd.
  m.def("conv_winograd_split(Tensor x, Tensor weight, Tensor? bias, int upsample=1, int pad=0) -> Tensor");

  m.def("conv2d_direct(Tensor x, Tensor weight, Tensor? bias, int stride=1, int upsample=1, int pad=0) -> Tensor");

  // Style swap (Chen & Schmidt 2016), in two ops. Geometry shared by both, k = patch_size,
  // s = stride: content patches sit at (i s, j s), i < nh = (Hc - k) / s + 1, j < nw =
  // (Wc - k) / s + 1; style patches at (qi s, qj s), qi < mh = (Hs - k) / s + 1,
  // qj < mw = (Ws - k) / s + 1, numbered q = qi * mw + qj (the stride applies to both grids,
  // as in the public implementations).
  //
  // Matching: content [B, C, Hc, Wc], style [Bs, C, Hs, Ws] (Bs = 1 or B; any strides; same
  // float dtype). For every content patch p, the q maximising
  //   score(p, q) = <content patch p, style patch q> / (||style patch q||_2 + eps)
  // (norm over C x k x k; products accumulated in fp32, fp64 for fp64 input), and score 0 for
  // an all-zero style patch (no NaN, even with eps = 0); ties go to the lowest q; a NaN score
  // never wins (all NaN: q = 0). Never forms the nh nw x mh mw score matrix. Returns int64
  // [B, nh, nw].
  m.def("style_swap_match(Tensor content, Tensor style, int patch_size, int stride, float eps) "
        "-> Tensor");
  // Reconstruction: out[b, c, y, x] = (sum over the content patches p = (i, j) that cover
  // (y, x) of style[b or 0, c, qi s + y - i s, qj s + x - j s], q = indices[b, i, j]) / n(y, x),
  // n(y, x) the number of such patches; 0 where no patch covers (y, x) (possible when s > 1).
  // style [Bs, C, Hs, Ws] any strides, indices int64 [B, nh, nw] with nh = (out_h - k) / s + 1,
  // nw = (out_w - k) / s + 1. Returns a contiguous [B, C, out_h, out_w] in style's dtype
  // (accumulated in fp32, fp64 for fp64). Indices outside [0, mh mw): the CPU kernel raises;
  // the GPU kernels (which cannot check without a sync) write NaN where they are used.
  m.def("style_swap_reconstruct(Tensor style, Tensor indices, int patch_size, int stride, "
        "int out_h, int out_w) -> Tensor");
}

namespace fastnst {
namespace cpu {
std::string gram_routes();  // gram.cpp
std::string conv_routes();  // conv_winograd.cpp
std::string conv_direct_routes();  // conv_direct.cpp
}  // namespace cpu
}  // namespace fastnst

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
  set_str("cpu_isa_detected", fastnst::cpu::isa_name(fastnst::cpu::cpu_isa()));
  set_str("cpu_isa_error", fastnst::cpu::isa_choice().error);
  // Paths of the other CPU ops, by the same level (see the kernels' file comments).
  namespace c = fastnst::cpu;
  std::string routes;
  try {
    routes = c::gram_routes();
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    routes = std::string("gram\t-\terror\t") + msg.substr(0, msg.find('\n')) + "\n";
  }
  const char* norm16 = !c::has_avx512() ? "generic\tscalar loops (fp32 arithmetic)"
                       : c::has_avx512bf16() ? "avx512bf16\tfastnst's AVX-512 16-bit kernels, bf16 rounded by vcvtneps2bf16"
                                             : "avx512\tfastnst's AVX-512 16-bit kernels, bf16 rounded in integer arithmetic";
  const char* norm32 = c::has_avx512() ? "avx512\tfastnst's AVX-512 kernels (rows and channels-innermost)"
                                       : "generic\tscalar loops (compiled for baseline x86-64)";
  for (const char* op : {"mean_std", "instance_norm", "instance_norm_backward", "instance_norm_pad"}) {
    routes += std::string(op) + "\tfloat32\t" + norm32 + "\n";
    routes += std::string(op) + "\tbfloat16\t" + norm16 + "\n";
    routes += std::string(op) + "\tfloat16\t" + (c::has_avx512() ? "avx512\tfastnst's AVX-512 16-bit kernels" : "generic\tscalar loops (fp32 arithmetic)") + "\n";
  }
  const bool avx2 = c::isa() >= c::Isa::kAvx2;
  const char* swap32 = c::has_avx512() ? "avx512\tpixel GEMM on fastnst's AVX-512 microkernel"
                       : avx2          ? "avx2\tpixel GEMM on AVX2 + FMA tiles, scalar diagonal sums"
                                       : "generic\tscalar loops";
  routes += std::string("style_swap_match\tfloat32\t") + swap32 + "\n";
  routes += std::string("style_swap_match\tbfloat16\t") +
            (c::has_avx512bf16() ? "avx512bf16\tpixel GEMM on bf16 pairs (vdpbf16ps, fp32 accumulation)"
             : c::has_avx512() ? "avx512\twidened exactly to fp32, AVX-512 microkernel" : swap32) + "\n";
  routes += std::string("style_swap_match\tfloat16\t") +
            (c::has_avx512() ? "avx512\twidened exactly to fp32, AVX-512 microkernel" : swap32) + "\n";
  routes += c::conv_routes();
  routes += c::conv_direct_routes();
  set_str("cpu_routes", routes);
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
