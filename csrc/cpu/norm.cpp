// Instance statistics and fused normalisation on the CPU: mean_std, instance_norm (which also
// carries conditional instance norm and AdaIN) and their backwards.
//
// Statistics per (b, c) over L (Ulyanov et al. 2016; Huang & Belongie 2017):
//   mean = sum x / L,  var = sum (x - mean)^2 / N',  N' = L - 1 (unbiased) or L.
// They are computed in one pass as sums shifted by K, the mean of the row's first block,
//   s1 = sum (x - K),  s2 = sum (x - K)^2,  mean = K + s1 / L,  M2 = s2 - s1^2 / L,
// which stays accurate for activations with a large mean (K is close to it), with fp32 lanes
// over blocks of 512 elements flushed into fp64 totals (float64 input: fp64 throughout).
//
// Forward:  y = act(w (x - mean) rstd + b + x_scale x) = act(a x + c),
//           a = w rstd + x_scale,  c = b - w mean rstd,  rstd = 1 / sqrt(var + eps).
// Backward: g' = grad * (y > 0) for ReLU (mask recomputed from y), xhat = (x - mean) rstd,
//           dw = sum g' xhat,  db = sum g',
//           dx = x_scale g' + rstd w (g' - db / L - xhat dw / N')  =  p g' + q x + s.
// Two passes over a row (statistics, then the elementwise map), for rows laid out with L
// contiguous or, for channels_last images, with C contiguous (vectorised over channels).
// An upstream gradient of one value per row (stride 0 along L, as y.sum() and weighted sums of
// per-channel sums give) is read in place, never materialised (row_scalar_grad): the row
// kernels run on a shared row of ones with the value folded into their coefficients, the
// channels-innermost loops on a small per-thread buffer of the sample's gradient C-vector.
// float16 and bfloat16 are widened exactly to fp32, computed as float32 is, and rounded to
// nearest even once, when stored; statistics and weight gradients stay fp32. On AVX-512 CPUs
// (with BW/VL) their rows run 16-bit twins of the float32 kernels and their channels-innermost
// layouts vectorised twins of the scalar loops: either way bit for bit the float32 result on
// the widened input, rounded.

// GCC 12's AVX-512 headers make their "undefined" operands as `__m512 __Y = __Y;` and then
// warn, once per inlined intrinsic, that __Y is used uninitialised (GCC bug 105593, fixed in
// 13). The warning belongs to the header's lines, so it is silenced where the headers are first
// read (ATen already includes <immintrin.h>).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(FASTNST_X86)
#include <immintrin.h>
#endif
#pragma GCC diagnostic pop

#include "cpu_features.h"
#include "layout.h"

namespace fastnst {
namespace cpu {
namespace {

constexpr int64_t kBlock = 512;  // fp32 partial sums per block, then fp64 totals
constexpr int64_t kStreamBytes = int64_t{16} << 20;  // outputs this large bypass the caches

at::Tensor empty_rule(const at::Tensor& x, at::ScalarType dtype) {
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  auto opts = x.options().dtype(dtype);
  if (channels_innermost(x)) return at::empty_strided({B, C, L}, {C * L, 1, C}, opts);
  return at::empty({B, C, L}, opts);
}

at::Tensor output_rule(const at::Tensor& x, OutSlot slot) { return rule_output(x, x.scalar_type(), slot); }

// x densely in the rule's layout ([B][L][C] or [B][C][L]): itself, or a copy.
at::Tensor canonical(const at::Tensor& x, bool channels) {
  if (!channels) return x.contiguous();
  if (x.size(0) == 1 || x.stride(0) == x.size(1) * x.size(2)) return x;
  at::Tensor out = empty_rule(x, x.scalar_type());  // e.g. a batch slice x[::2]
  out.copy_(x);
  return out;
}

// t with exactly the strides of `like` (a copy when they differ).
at::Tensor same_layout(const at::Tensor& t, const at::Tensor& like) {
  if (t.strides() == like.strides()) return t;
  at::Tensor out = at::empty_strided(like.sizes(), like.strides(), t.options());
  out.copy_(t);
  return out;
}

void check_x(const at::Tensor& x, const char* op) {
  check_isa();  // a bad FASTNST_CPU_ISA is an error here, as in every op
  TORCH_CHECK(x.device().is_cpu(), "fastnst::", op, " (cpu): x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 3, "fastnst::", op, ": x must be [B, C, L], got ", x.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
              "fastnst::", op, ": x must be float32, float16, bfloat16 or float64 (cpu), got ", dt);
  TORCH_CHECK(x.size(2) > 0, "fastnst::", op, ": x must have L > 0");
}

// Every tensor argument must be on the CPU (the dispatcher sends a call that mixes in a meta
// tensor to the fake kernel, which checks the same).
void check_cpu(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK(!t.defined() || t.device().is_cpu(), "fastnst::", op, " (cpu): ", name,
              " must be a CPU tensor like x, got ", t.device());
}

// The small per-(b, c) arguments (weight, bias, saved statistics) are read in place, whatever
// their float dtype and strides, rather than converted by ATen: under bf16 autocast the fp32
// parameters of a bf16 activation would otherwise cost an aten::copy_ per tensor and call.
bool readable(const at::Tensor& t) {
  const auto dt = t.scalar_type();
  return dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16;
}

// double(t[i * s0 + j * s1]) at [i * cols + j] for i < rows, j < cols; t readable().
std::vector<double> gather(const at::Tensor& t, int64_t rows, int64_t cols, int64_t s0, int64_t s1) {
  std::vector<double> out(rows * cols);
  auto read = [&](auto tag) {
    using U = decltype(tag);
    const U* p = t.data_ptr<U>();
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) out[i * cols + j] = static_cast<double>(p[i * s0 + j * s1]);
  };
  switch (t.scalar_type()) {
    case at::kFloat: read(float()); break;
    case at::kDouble: read(double()); break;
    case at::kHalf: read(c10::Half()); break;
    default: read(c10::BFloat16()); break;
  }
  return out;
}

// t's n elements in logical order as doubles. A readable tensor of rank <= 2 (the [B, C]
// statistics and upstream gradients) is read in place through its strides, 0 included (the
// gradient of m.sum() is an expanded scalar): no conversion or copy by ATen.
std::vector<double> flat_doubles(const at::Tensor& t0) {
  if (readable(t0) && t0.dim() <= 2) {
    const int64_t d = t0.dim();
    return gather(t0, d == 2 ? t0.size(0) : 1, d == 0 ? 1 : t0.size(d - 1), d == 2 ? t0.stride(0) : 0,
                  d == 0 ? 0 : t0.stride(d - 1));
  }
  const at::Tensor t = readable(t0) && t0.is_contiguous() ? t0 : t0.to(at::kDouble).contiguous();
  return gather(t, 1, t.numel(), 0, 1);
}

// An upstream gradient [B, C, L] that is one value per row (b, c): stride 0 along L, any
// strides for B and C (0 included), as `y.sum()` (strides (0, 0, 0)) or
// `(y.sum((2, 3)) * w).sum()` ((C, 1, 0)) hand the backward. Its B * C values as doubles in
// `rows` (read in place, before any conversion: .to() or a layout copy would materialise all
// B * C * L elements). False for any other gradient, which is read densely as before; one
// that is stride 0 along only some spatial dims of an image (not along all of L) reaches the
// kernels densified already, by the view's backward (its [B, C, L] view needs a reshape).
bool row_scalar_grad(const at::Tensor& g, std::vector<double>& rows) {
  if (g.dim() != 3 || g.stride(2) != 0 || !readable(g) || g.numel() == 0) return false;
  rows = gather(g, g.size(0), g.size(1), g.stride(0), g.stride(1));
  return true;
}

// Per-(b, c) weight/bias as B * C doubles (fill when absent).
std::vector<double> per_sample(const c10::optional<at::Tensor>& t, int64_t B, int64_t C, double fill,
                               const char* name, const char* op) {
  if (!t.has_value() || !t->defined()) return std::vector<double>(B * C, fill);
  check_cpu(*t, name, op);
  const at::Tensor& t0 = *t;
  TORCH_CHECK((t0.dim() == 1 && t0.size(0) == C) || (t0.dim() == 2 && t0.size(0) == B && t0.size(1) == C),
              "fastnst::", op, ": ", name, " must be [C] or [B, C] = [", C, "] or [", B, ", ", C,
              "], got ", t0.sizes());
  const at::Tensor v = readable(t0) ? t0 : t0.to(at::kDouble);  // e.g. an integer tensor: as before
  return gather(v, B, C, v.dim() == 2 ? v.stride(0) : 0, v.stride(v.dim() - 1));  // [C]: shared by the batch
}

// A [B, C] statistics tensor of dtype sd (float or double) holding v.
at::Tensor stats_tensor(const std::vector<double>& v, int64_t B, int64_t C, at::ScalarType sd) {
  at::Tensor t = at::empty({B, C}, at::TensorOptions().dtype(sd));
  if (sd == at::kDouble) {
    std::copy(v.begin(), v.end(), t.data_ptr<double>());
  } else {
    float* p = t.data_ptr<float>();
    for (size_t i = 0; i < v.size(); ++i) p[i] = static_cast<float>(v[i]);
  }
  return t;
}

// ---- statistics -----------------------------------------------------------------------------
// A block's shifted sums in fp64: taken when the fp32 lanes overflowed (|x - K| beyond ~1e17:
// a block of 512 squares passes FLT_MAX although the variance itself fits in fp32).
template <typename T>
void block_sums_fp64(const T* p, int64_t n, double K, double& s1, double& s2) {
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(p[i]) - K;
    s1 += d;
    s2 += d * d;
  }
}

// Exact statistics in fp64 (x at p[i * stride]): two passes, and exactly (x, 0) for a constant
// row, where a rounded mean would leave a spurious variance that 1 / sqrt(var) blows up when
// eps = 0. Rows with a NaN or Inf give NaN/Inf statistics, as torch.var.
template <typename T>
void exact_stats(const T* p, int64_t L, int64_t stride, double& mean, double& m2) {
  double s = 0, lo = static_cast<double>(p[0]), hi = lo;
  for (int64_t i = 0; i < L; ++i) {
    const double v = static_cast<double>(p[i * stride]);
    s += v;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  if (lo == hi && std::isfinite(s)) {
    mean = lo;
    m2 = 0;
    return;
  }
  const double mu = s / L;
  double q = 0;
  for (int64_t i = 0; i < L; ++i) {
    const double d = static_cast<double>(p[i * stride]) - mu;
    q += d * d;
  }
  mean = mu;
  m2 = q;
}

// Whether shifted sums lost too much to cancellation (M2 below 2^-16 of the shifted sum of
// squares: a near-constant row whose shift K missed its mean), or saw a NaN/Inf: such rows
// are recomputed by exact_stats.
inline bool needs_exact(double m2, double s2, int64_t L) {
  // Also rows whose deviations are below ~2^-30 (their fp32 squares may underflow: the std of
  // values ~1e-30 is representable although their squares are not). Exactly constant rows
  // take this path too: one extra pass that returns their value and 0.
  return !(m2 >= s2 * 0x1p-16) || !std::isfinite(s2) || !(s2 >= 0x1p-60 * static_cast<double>(L));
}

// 1 / sqrt(v), v = var + eps, and 0 where v = 0 (eps = 0 on a constant channel), as PyTorch's
// batch and instance norm kernels: the normalised value is then 0 and the output the bias.
inline double inv_std(double v) { return v == 0 ? 0.0 : 1.0 / std::sqrt(v); }

// Shifted sums of n elements of p (stride 1), shift K.
template <typename T, typename A>
void shifted_sums(const T* p, int64_t n, A K, A& s1, A& s2) {
  using L = typename std::conditional<std::is_same<A, double>::value && !std::is_same<T, double>::value,
                                      float, A>::type;  // lane type: fp32 for narrow inputs
  const L k = static_cast<L>(K);
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t i1 = std::min(n, i0 + kBlock);
    L a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = i0; i < i1; ++i) {
      const L d = static_cast<L>(p[i]) - k;
      a += d;
      b += d * d;
    }
    if (std::isfinite(static_cast<double>(b))) {
      s1 += a;
      s2 += b;
    } else {
      block_sums_fp64(p + i0, i1 - i0, static_cast<double>(K), s1, s2);
    }
  }
}

#if defined(FASTNST_X86)
// float32 rows on AVX-512: the same blocked shifted sums with four independent fp32 vector
// accumulators per sum (a single one would wait on the add latency: ~1 element per cycle).
__attribute__((target("avx512f"))) float block_mean_avx512(const float* p, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p + i + 16));
  }
  for (; i < n; i += 16) {
    const __mmask16 t = i + 16 <= n ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1u);
    a0 = _mm512_add_ps(a0, _mm512_maskz_loadu_ps(t, p + i));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) / static_cast<float>(n);
}

__attribute__((target("avx512f"))) void shifted_sums_avx512(const float* p, int64_t n, float K,
                                                           double& s1, double& s2) {
  const __m512 k = _mm512_set1_ps(K), zero = _mm512_setzero_ps();
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t i1 = std::min(n, i0 + kBlock);
    __m512 a[4] = {zero, zero, zero, zero}, b[4] = {zero, zero, zero, zero};
    int64_t i = i0;
    for (; i + 64 <= i1; i += 64) {
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(p + i + 16 * u), k);
        a[u] = _mm512_add_ps(a[u], d);
        b[u] = _mm512_fmadd_ps(d, d, b[u]);
      }
    }
    for (; i < i1; i += 16) {
      const __mmask16 t = i + 16 <= i1 ? 0xFFFF : static_cast<__mmask16>((1u << (i1 - i)) - 1u);
      const __m512 d = _mm512_maskz_sub_ps(t, _mm512_maskz_loadu_ps(t, p + i), k);
      a[0] = _mm512_add_ps(a[0], d);
      b[0] = _mm512_fmadd_ps(d, d, b[0]);
    }
    const float ta = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
    const float tb = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(b[0], b[1]), _mm512_add_ps(b[2], b[3])));
    if (std::isfinite(tb)) {
      s1 += ta;
      s2 += tb;
    } else {
      block_sums_fp64(p + i0, i1 - i0, static_cast<double>(K), s1, s2);
    }
  }
}

// Elements of a row at o to store before o is aligned for streaming stores of 16 elements (64
// bytes for float, 32 for 16-bit types): 0..15, or -1 when o is not even element-aligned (then
// no streaming).
template <typename T>
inline int64_t stream_head(const T* o, int64_t n) {
  constexpr int64_t kV = 16 * static_cast<int64_t>(sizeof(T));
  const uintptr_t a = reinterpret_cast<uintptr_t>(o);
  if (a % sizeof(T) != 0) return -1;
  return std::min<int64_t>(n, static_cast<int64_t>((kV - a % kV) % kV) / static_cast<int64_t>(sizeof(T)));
}

// y = act(q (x - k) + s) over a float32 row (k: the row's mean rounded to float, so that the
// cancellation happens in x - k, exactly for x near k, not between q x and s). STREAM: non-temporal stores (for outputs larger than
// the caches: no read-for-ownership of y's lines, ~1/3 less memory traffic); the caller
// issues the store fence.
// ReLU as max(0, v): MAXPS returns its second operand when either is NaN, so a NaN stays NaN
// (and -0 stays -0), as torch.relu and the 16-bit kernels give.
template <bool RELU, bool STREAM>
__attribute__((target("avx512f"))) void map_row_avx512(const float* x, float* o, int64_t n, float k, float q,
                                                       float s) {
  const __m512 vq = _mm512_set1_ps(q), vs = _mm512_set1_ps(s), vk = _mm512_set1_ps(k), zero = _mm512_setzero_ps();
  int64_t i = 0;
  const int64_t head = STREAM ? stream_head(o, n) : -1;
  if (head >= 0) {
    // Unaligned head with a masked store, then 64-byte aligned streaming stores.
    if (head > 0) {
      const __mmask16 t = static_cast<__mmask16>((1u << head) - 1u);
      __m512 v = _mm512_fmadd_ps(vq, _mm512_maskz_sub_ps(t, _mm512_maskz_loadu_ps(t, x), vk), vs);
      if (RELU) v = _mm512_max_ps(zero, v);
      _mm512_mask_storeu_ps(o, t, v);
      i = head;
    }
    for (; i + 16 <= n; i += 16) {
      __m512 v = _mm512_fmadd_ps(vq, _mm512_sub_ps(_mm512_loadu_ps(x + i), vk), vs);
      if (RELU) v = _mm512_max_ps(zero, v);
      _mm512_stream_ps(o + i, v);
    }
  }
  for (; i + 32 <= n; i += 32) {
    __m512 v0 = _mm512_fmadd_ps(vq, _mm512_sub_ps(_mm512_loadu_ps(x + i), vk), vs);
    __m512 v1 = _mm512_fmadd_ps(vq, _mm512_sub_ps(_mm512_loadu_ps(x + i + 16), vk), vs);
    if (RELU) {
      v0 = _mm512_max_ps(zero, v0);
      v1 = _mm512_max_ps(zero, v1);
    }
    _mm512_storeu_ps(o + i, v0);
    _mm512_storeu_ps(o + i + 16, v1);
  }
  for (; i < n; i += 16) {
    const __mmask16 t = i + 16 <= n ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1u);
    __m512 v = _mm512_fmadd_ps(vq, _mm512_maskz_sub_ps(t, _mm512_maskz_loadu_ps(t, x + i), vk), vs);
    if (RELU) v = _mm512_max_ps(zero, v);
    _mm512_mask_storeu_ps(o + i, t, v);
  }
}

// ---- float16 / bfloat16 rows on AVX-512 -------------------------------------------------------
// The float32 kernels, reading and writing 16-bit elements. Each element widens exactly to fp32,
// every operation is the float32 kernel's (same lanes, order and FMAs), and each result is
// rounded to nearest even once, at the store: a 16-bit row gets exactly the float32 kernel's
// result on its widened values, rounded (the scalar path also computes in fp32, as
// at::opmath_type, and differs only in the order of its sums and in not fusing multiply-adds).
// Row tails are masked 16-bit loads and stores (AVX-512 BW/VL, has_avx512_lowp()). The target
// also names AVX512-BF16 so that Bf16Ne can use vcvtneps2bf16; that store runs only where
// has_avx512bf16(), and the compilers emit BF16 instructions for nothing else here (only for
// their intrinsics or __bf16 arithmetic), so the other formats run on any has_avx512_lowp() CPU.
#define FASTNST_LOWP_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define FASTNST_LOWP __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), always_inline)) inline

// Element formats: how 16 lanes widen to fp32 and round back.
struct Fp16 {
  using T = c10::Half;
  static FASTNST_LOWP __m512 widen(__m256i h) { return _mm512_cvtph_ps(h); }
  // IEEE round to nearest even (subnormals, overflow to Inf) as c10::Half; NaN stays NaN.
  static FASTNST_LOWP __m256i narrow(__m512 v) {
    return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
};

// bfloat16 rounded in integer arithmetic, as c10::BFloat16 (and torch's .to(torch.bfloat16)):
// the top half of x + 0x7FFF + (bit 16 of x). A NaN instead keeps its top half with the quiet
// bit set, as vcvtneps2bf16 does: rounding could carry its payload into Inf (or wrap to -0).
struct Bf16 {
  using T = c10::BFloat16;
  static FASTNST_LOWP __m512 widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));  // exact
  }
  static FASTNST_LOWP __m256i narrow(__m512 v) {
    const __m512i u = _mm512_castps_si512(v), hi = _mm512_srli_epi32(u, 16);
    const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), _mm512_and_si512(hi, _mm512_set1_epi32(1)));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
    r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), hi, _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
  }
};

// bfloat16 rounded by vcvtneps2bf16 (AVX512-BF16): nearest even as Bf16, in one instruction,
// but it reads fp32 subnormals as zero; lanes holding one (|v| < 2^-126, v != 0: practically
// never) are rounded as Bf16 instead, so both formats give the same bits.
struct Bf16Ne {
  using T = c10::BFloat16;
  static FASTNST_LOWP __m512 widen(__m256i h) { return Bf16::widen(h); }
  static FASTNST_LOWP __m256i narrow(__m512 v) {
    __m256i r = (__m256i)_mm512_cvtneps_pbh(v);
    const __m512i u = _mm512_castps_si512(v);
    const __mmask16 sub = _mm512_mask_test_epi32_mask(_mm512_testn_epi32_mask(u, _mm512_set1_epi32(0x7F800000)), u,
                                                      _mm512_set1_epi32(0x7FFFFFFF));
    if (sub) r = _mm256_mask_mov_epi16(r, sub, Bf16::narrow(v));
    return r;
  }
};

// float32 itself, for the channels-innermost loops below: the scalar loops vectorise over
// channels only to the baseline target's 4 lanes, these kernels take 16, with the same
// operations in the same order (so the same bits).
struct F32 {
  using T = float;
};

// The format T loads as (bfloat16 loads do not depend on how stores round).
template <typename T>
using LoadFormat = typename std::conditional<
    std::is_same<T, float>::value, F32,
    typename std::conditional<std::is_same<T, c10::Half>::value, Fp16, Bf16>::type>::type;

template <class E>
FASTNST_LOWP __m512 lp_load(const typename E::T* p) {
  if constexpr (std::is_same<E, F32>::value) return _mm512_loadu_ps(p);
  else return E::widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
// Lanes outside t read as 0 (and fault on nothing, as _mm512_maskz_loadu_ps).
template <class E>
FASTNST_LOWP __m512 lp_maskz_load(__mmask16 t, const typename E::T* p) {
  if constexpr (std::is_same<E, F32>::value) return _mm512_maskz_loadu_ps(t, p);
  else return E::widen(_mm256_maskz_loadu_epi16(t, p));
}
template <class E>
FASTNST_LOWP void lp_store(typename E::T* p, __m512 v) {
  if constexpr (std::is_same<E, F32>::value) _mm512_storeu_ps(p, v);
  else _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), E::narrow(v));
}
template <class E>
FASTNST_LOWP void lp_mask_store(typename E::T* p, __mmask16 t, __m512 v) {
  if constexpr (std::is_same<E, F32>::value) _mm512_mask_storeu_ps(p, t, v);
  else _mm256_mask_storeu_epi16(p, t, E::narrow(v));
}
template <class E>
FASTNST_LOWP void lp_stream(typename E::T* p, __m512 v) {  // p 32-byte aligned (stream_head)
  static_assert(!std::is_same<E, F32>::value, "float32 rows stream through map_row_avx512");
  _mm256_stream_si256(reinterpret_cast<__m256i*>(p), E::narrow(v));
}

// block_mean_avx512 on 16-bit elements.
template <class E>
FASTNST_LOWP_FN float block_mean_lowp(const typename E::T* p, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm512_add_ps(a0, lp_load<E>(p + i));
    a1 = _mm512_add_ps(a1, lp_load<E>(p + i + 16));
  }
  for (; i < n; i += 16) {
    const __mmask16 t = i + 16 <= n ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1u);
    a0 = _mm512_add_ps(a0, lp_maskz_load<E>(t, p + i));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) / static_cast<float>(n);
}

// shifted_sums_avx512 on 16-bit elements.
template <class E>
FASTNST_LOWP_FN void shifted_sums_lowp(const typename E::T* p, int64_t n, float K, double& s1, double& s2) {
  const __m512 k = _mm512_set1_ps(K), zero = _mm512_setzero_ps();
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t i1 = std::min(n, i0 + kBlock);
    __m512 a[4] = {zero, zero, zero, zero}, b[4] = {zero, zero, zero, zero};
    int64_t i = i0;
    for (; i + 64 <= i1; i += 64) {
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        const __m512 d = _mm512_sub_ps(lp_load<E>(p + i + 16 * u), k);
        a[u] = _mm512_add_ps(a[u], d);
        b[u] = _mm512_fmadd_ps(d, d, b[u]);
      }
    }
    for (; i < i1; i += 16) {
      const __mmask16 t = i + 16 <= i1 ? 0xFFFF : static_cast<__mmask16>((1u << (i1 - i)) - 1u);
      const __m512 d = _mm512_maskz_sub_ps(t, lp_maskz_load<E>(t, p + i), k);
      a[0] = _mm512_add_ps(a[0], d);
      b[0] = _mm512_fmadd_ps(d, d, b[0]);
    }
    const float ta = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
    const float tb = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(b[0], b[1]), _mm512_add_ps(b[2], b[3])));
    if (std::isfinite(tb)) {
      s1 += ta;
      s2 += tb;
    } else {  // bfloat16 reaches ~3e38: squares overflow fp32 as for float rows
      block_sums_fp64(p + i0, i1 - i0, static_cast<double>(K), s1, s2);
    }
  }
}

// The ReLU of the 16-bit kernels: max(0, v) is v when v is NaN (x86's max returns its second
// operand when either is NaN), so NaN stays NaN and -0 stays -0, as std::max(v, 0) in the
// scalar path and torch.relu.
FASTNST_LOWP __m512 relu_lowp(__m512 v) { return _mm512_max_ps(_mm512_setzero_ps(), v); }

// map_row_avx512 on 16-bit elements: y = act(q (x - k) + s).
template <class E, bool RELU, bool STREAM>
FASTNST_LOWP_FN void map_row_lowp(const typename E::T* x, typename E::T* o, int64_t n, float k, float q, float s) {
  const __m512 vq = _mm512_set1_ps(q), vs = _mm512_set1_ps(s), vk = _mm512_set1_ps(k);
  int64_t i = 0;
  const int64_t head = STREAM ? stream_head(o, n) : -1;
  if (head >= 0) {
    // Unaligned head with a masked store, then 32-byte aligned streaming stores (two per line:
    // the write-combining buffer joins them).
    if (head > 0) {
      const __mmask16 t = static_cast<__mmask16>((1u << head) - 1u);
      __m512 v = _mm512_fmadd_ps(vq, _mm512_maskz_sub_ps(t, lp_maskz_load<E>(t, x), vk), vs);
      if (RELU) v = relu_lowp(v);
      lp_mask_store<E>(o, t, v);
      i = head;
    }
    for (; i + 16 <= n; i += 16) {
      __m512 v = _mm512_fmadd_ps(vq, _mm512_sub_ps(lp_load<E>(x + i), vk), vs);
      if (RELU) v = relu_lowp(v);
      lp_stream<E>(o + i, v);
    }
  }
  for (; i + 32 <= n; i += 32) {
    __m512 v0 = _mm512_fmadd_ps(vq, _mm512_sub_ps(lp_load<E>(x + i), vk), vs);
    __m512 v1 = _mm512_fmadd_ps(vq, _mm512_sub_ps(lp_load<E>(x + i + 16), vk), vs);
    if (RELU) {
      v0 = relu_lowp(v0);
      v1 = relu_lowp(v1);
    }
    lp_store<E>(o + i, v0);
    lp_store<E>(o + i + 16, v1);
  }
  for (; i < n; i += 16) {
    const __mmask16 t = i + 16 <= n ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1u);
    __m512 v = _mm512_fmadd_ps(vq, _mm512_maskz_sub_ps(t, lp_maskz_load<E>(t, x + i), vk), vs);
    if (RELU) v = relu_lowp(v);
    lp_mask_store<E>(o + i, t, v);
  }
}

// ---- float16 / bfloat16, channels innermost ---------------------------------------------------
// The scalar channels-layout loops (row_stats, affine_map_impl, grad_sums) vectorise over
// channels for float32 but not through the 16-bit conversions. These are those loops, 16
// channels a vector, lane for lane the same fp32 operations in the same order, products rounded
// on their own (the scalar loops have no FMA: the generic code targets baseline x86-64): bit
// for bit the scalar loops' result, which is the float32 loops' result on the widened values,
// rounded.

// a * b rounded, never contracted with a following add into an FMA (GCC contracts the plain
// _mm512_mul_ps / _mm512_add_ps, which are vector arithmetic to it; the rounding-mode form is a
// builtin it leaves alone).
FASTNST_LOWP __m512 mul_rounded(__m512 a, __m512 b) { return _mm512_mul_round_ps(a, b, _MM_FROUND_CUR_DIRECTION); }

// 1.0 where m > 0, else 0.0: the scalar loops' `g *= (m > 0)` (a product, so an Inf or NaN
// gradient under a masked-out output gives NaN there, as in those loops).
FASTNST_LOWP __m512 positive01(__m512 m) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(m, _mm512_setzero_ps(), _CMP_GT_OQ), _mm512_set1_ps(1.0f));
}

inline __mmask16 lanes(int64_t n) { return n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1u); }

// 16 lanes (full) or those in t, the others 0.
template <class E>
FASTNST_LOWP __m512 ld_lanes(bool full, __mmask16 t, const typename E::T* a) {
  return full ? lp_load<E>(a) : lp_maskz_load<E>(t, a);
}
FASTNST_LOWP __m512 ld_lanes(bool full, __mmask16 t, const float* a) {
  return full ? _mm512_loadu_ps(a) : _mm512_maskz_loadu_ps(t, a);
}

// The loop of the channels-innermost block sums: a[c] = sum_l A, q[c] = sum_l Q over n rows
// (row l at offset l * C), (A, Q) = term(offset, lanes, full, v[c]) with v a per-channel shift,
// from zero, rows in order; four channel vectors at a time (independent add chains), then
// masked vectors of the channels left.
template <class Term>
FASTNST_LOWP void channel_pair_sums(const Term& term, int64_t C, int64_t n, const float* v, float* a, float* q) {
  const __m512 zero = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 64 <= C; c += 64) {
    __m512 va[4], vq[4], vv[4];
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      va[u] = vq[u] = zero;
      vv[u] = _mm512_loadu_ps(v + c + 16 * u);
    }
    for (int64_t l = 0; l < n; ++l) {
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        __m512 ta, tq;
        term(l * C + c + 16 * u, 0xFFFF, true, vv[u], ta, tq);
        va[u] = _mm512_add_ps(va[u], ta);
        vq[u] = _mm512_add_ps(vq[u], tq);
      }
    }
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      _mm512_storeu_ps(a + c + 16 * u, va[u]);
      _mm512_storeu_ps(q + c + 16 * u, vq[u]);
    }
  }
  for (; c < C; c += 16) {
    const __mmask16 t = lanes(C - c);
    const __m512 vv = _mm512_maskz_loadu_ps(t, v + c);
    __m512 va = zero, vq = zero;
    for (int64_t l = 0; l < n; ++l) {
      __m512 ta, tq;
      term(l * C + c, t, false, vv, ta, tq);
      va = _mm512_add_ps(va, ta);
      vq = _mm512_add_ps(vq, tq);
    }
    _mm512_mask_storeu_ps(a + c, t, va);
    _mm512_mask_storeu_ps(q + c, t, vq);
  }
}

// row_stats' block: (x - k[c], (x - k[c])^2).
template <class E>
struct ShiftedSquares {
  const typename E::T* x;
  FASTNST_LOWP void operator()(int64_t off, __mmask16 t, bool full, __m512 vk, __m512& ta, __m512& tq) const {
    const __m512 d = _mm512_sub_ps(ld_lanes<E>(full, t, x + off), vk);
    ta = d;
    tq = mul_rounded(d, d);
  }
};

// grad_sums' block: (g', g' (x - mu[c])), g' = g times (m > 0) when HAS_M.
template <class E, bool HAS_M>
struct GradSums {
  const typename E::T *g, *m, *x;
  FASTNST_LOWP void operator()(int64_t off, __mmask16 t, bool full, __m512 vmu, __m512& ta, __m512& tq) const {
    __m512 gv = ld_lanes<E>(full, t, g + off);
    if (HAS_M) gv = mul_rounded(gv, positive01(ld_lanes<E>(full, t, m + off)));
    ta = gv;
    tq = mul_rounded(gv, _mm512_sub_ps(ld_lanes<E>(full, t, x + off), vmu));
  }
};

// Per-channel shifted sums over n rows of x (row l at x + l * C): a[c] = sum (x - k[c]),
// q[c] = sum (x - k[c])^2, from zero, rows in order (row_stats' block).
template <class E>
FASTNST_LOWP_FN void channel_sums_lowp(const typename E::T* x, int64_t C, int64_t n, const float* k, float* a,
                                       float* q) {
  channel_pair_sums(ShiftedSquares<E>{x}, C, n, k, a, q);
}

// affine_map_impl's element on 16 channels: p g' + q ((x - k) r) + s, g' = g (HAS_G) times
// (m > 0) (HAS_M), else 0.
template <class E, bool HAS_G, bool HAS_M>
FASTNST_LOWP __m512 channel_map16(__mmask16 t, bool full, const typename E::T* x, const typename E::T* g,
                                  const typename E::T* m, const float* p, const float* q, const float* s,
                                  const float* k, const float* r) {
  __m512 gv = HAS_G ? ld_lanes<E>(full, t, g) : _mm512_setzero_ps();
  if (HAS_M) gv = mul_rounded(gv, positive01(ld_lanes<E>(full, t, m)));
  const __m512 xk = _mm512_sub_ps(ld_lanes<E>(full, t, x), ld_lanes(full, t, k));
  const __m512 qx = mul_rounded(ld_lanes(full, t, q), mul_rounded(xk, ld_lanes(full, t, r)));
  return _mm512_add_ps(_mm512_add_ps(mul_rounded(ld_lanes(full, t, p), gv), qx), ld_lanes(full, t, s));
}

// n rows of C channels (row l at offset l * C), act() of the above. Rows come in runs, not one
// call per row: with tens of channels the call and loop set-up would cost as much as the row.
template <class E, bool HAS_G, bool HAS_M, bool RELU>
FASTNST_LOWP_FN void channel_map_lowp(const typename E::T* x, const typename E::T* g, const typename E::T* m,
                                      typename E::T* o, int64_t C, int64_t n, const float* p, const float* q,
                                      const float* s, const float* k, const float* r) {
  for (int64_t l = 0; l < n; ++l, x += C, g += C, m += C, o += C) {
    int64_t c = 0;
    for (; c + 16 <= C; c += 16) {
      __m512 v = channel_map16<E, HAS_G, HAS_M>(0xFFFF, true, x + c, g + c, m + c, p + c, q + c, s + c, k + c, r + c);
      if (RELU) v = relu_lowp(v);
      lp_store<E>(o + c, v);
    }
    if (c < C) {
      const __mmask16 t = lanes(C - c);
      __m512 v = channel_map16<E, HAS_G, HAS_M>(t, false, x + c, g + c, m + c, p + c, q + c, s + c, k + c, r + c);
      if (RELU) v = relu_lowp(v);
      lp_mask_store<E>(o + c, t, v);
    }
  }
}

// grad_sums' block over n rows: a[c] = sum g', q[c] = sum g' (x - mu[c]), from zero.
template <class E, bool HAS_M>
FASTNST_LOWP_FN void channel_grad_sums_lowp(const typename E::T* g, const typename E::T* m, const typename E::T* x,
                                            int64_t C, int64_t n, const float* mu, float* a, float* q) {
  channel_pair_sums(GradSums<E, HAS_M>{g, m, x}, C, n, mu, a, q);
}
#endif

// Calls f(E()) with 16-bit T's element format for this CPU (bfloat16 stores by vcvtneps2bf16
// where it has AVX512-BF16) and returns true; false, without calling f, where T is not 16-bit
// or the CPU lacks AVX-512 BW/VL (the scalar path).
template <typename T, typename F>
bool with_lowp(F&& f) {
#if defined(FASTNST_X86)
  if constexpr (std::is_same<T, c10::Half>::value) {
    if (has_avx512_lowp()) {
      f(Fp16());
      return true;
    }
  } else if constexpr (std::is_same<T, c10::BFloat16>::value) {
    if (has_avx512bf16()) {
      f(Bf16Ne());
      return true;
    }
    if (has_avx512_lowp()) {
      f(Bf16());
      return true;
    }
  }
#endif
  (void)f;
  return false;
}

// with_lowp for the channels-innermost kernels, which also take float32 (format F32): the
// scalar loops vectorise over channels only to the baseline target's 4 lanes.
template <typename T, typename F>
bool with_channel_format(F&& f) {
#if defined(FASTNST_X86)
  if constexpr (std::is_same<T, float>::value) {
    if (has_avx512_lowp()) {
      f(F32());
      return true;
    }
    return false;
  }
#endif
  return with_lowp<T>(std::forward<F>(f));
}

// mean and M2 (sum of squared deviations) of one contiguous row. Narrow inputs: shifted by the
// mean of the first block, so (K - mean)^2 is ~var / 512 and s2 - s1^2 / L loses nothing;
// rows where it would (near-constant rows, overflowed or non-finite values) are recomputed
// exactly. float64: two exact passes.
template <typename T>
void one_row_stats(const T* p, int64_t L, double& mean, double& m2) {
  if constexpr (std::is_same<T, double>::value) {
    exact_stats<T>(p, L, 1, mean, m2);
  } else {
    const int64_t n0 = std::min<int64_t>(L, kBlock);
    double s1 = 0, s2 = 0, K = 0;
    bool done = false;
#if defined(FASTNST_X86)
    if constexpr (std::is_same<T, float>::value) {
      if (has_avx512()) {
        const float Kf = block_mean_avx512(p, n0);
        if (std::isfinite(Kf)) {
          K = Kf;
          shifted_sums_avx512(p, L, Kf, s1, s2);
          done = true;
        }
      }
    } else if (has_avx512_lowp()) {  // float16, bfloat16: the same sums on the widened values
      using E = LoadFormat<T>;
      const float Kf = block_mean_lowp<E>(p, n0);
      if (std::isfinite(Kf)) {
        K = Kf;
        shifted_sums_lowp<E>(p, L, Kf, s1, s2);
        done = true;
      }
    }
#endif
    if (!done) {
      for (int64_t i = 0; i < n0; ++i) K += static_cast<double>(p[i]);
      K = static_cast<float>(K / n0);
      shifted_sums<T, double>(p, L, K, s1, s2);
    }
    mean = K + s1 / L;
    m2 = std::max(0.0, s2 - s1 * s1 / L);
    if (needs_exact(m2, s2, L)) exact_stats<T>(p, L, 1, mean, m2);
  }
}

// mean[b, c], M2[b, c] of x in the rule's layout (float64 input: by rows, from a copy if needed).
template <typename T>
void row_stats(const at::Tensor& x0, bool channels, std::vector<double>& mean, std::vector<double>& m2) {
  const bool rows = !channels || std::is_same<T, double>::value;
  const at::Tensor x = rows && channels ? x0.contiguous() : x0;
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  const T* X = x.data_ptr<T>();
  mean.assign(B * C, 0.0);
  m2.assign(B * C, 0.0);
  if (rows) {
    at::parallel_for(0, B * C, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) one_row_stats<T>(X + r * L, L, mean[r], m2[r]);
    });
    return;
  }
  // Channels innermost: x[b, l, c] at b*L*C + l*C + c. Threads take chunks of L with partial
  // per-channel sums (same shift K[c] = x[b, 0, c], so the partial sums simply add).
  const int64_t nthreads = at::get_num_threads();
  const int64_t nchunk = std::max<int64_t>(1, std::min<int64_t>(nthreads, L / 64));
  std::vector<double> s1(B * nchunk * C, 0.0), s2(B * nchunk * C, 0.0);
  // Shift per channel: the mean of the first rows (see above).
  const int64_t n0 = std::min<int64_t>(L, 64);
  std::vector<double> K0(B * C, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t l = 0; l < n0; ++l)
      for (int64_t c = 0; c < C; ++c) K0[b * C + c] += static_cast<double>(X[(b * L + l) * C + c]);
    for (int64_t c = 0; c < C; ++c) K0[b * C + c] = static_cast<float>(K0[b * C + c] / n0);
  }
  // float16 / bfloat16: the block sums by channel_sums_lowp, if the CPU has it.
  void (*lowp_sums)(const T*, int64_t, int64_t, const float*, float*, float*) = nullptr;
#if defined(FASTNST_X86)
  with_channel_format<T>([&](auto e) { lowp_sums = channel_sums_lowp<LoadFormat<typename decltype(e)::T>>; });
#endif
  at::parallel_for(0, B * nchunk, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> a(C), q(C), k(C);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / nchunk, ch = t % nchunk;
      const int64_t l0 = L * ch / nchunk, l1 = L * (ch + 1) / nchunk;
      const T* base = X + b * L * C;
      double* S1 = s1.data() + t * C;
      double* S2 = s2.data() + t * C;
      for (int64_t c = 0; c < C; ++c) k[c] = static_cast<float>(K0[b * C + c]);
      for (int64_t i0 = l0; i0 < l1; i0 += kBlock / 8) {
        const int64_t i1 = std::min(l1, i0 + kBlock / 8);
        if (lowp_sums) {
          lowp_sums(base + i0 * C, C, i1 - i0, k.data(), a.data(), q.data());
        } else {
          std::fill(a.begin(), a.end(), 0.f);
          std::fill(q.begin(), q.end(), 0.f);
          for (int64_t l = i0; l < i1; ++l) {
            const T* row = base + l * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              const float d = static_cast<float>(row[c]) - k[c];
              a[c] += d;
              q[c] += d * d;
            }
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          if (std::isfinite(q[c])) {
            S1[c] += a[c];
            S2[c] += q[c];
          } else {  // fp32 overflow (see block_sums_fp64): this block of channel c in fp64
            for (int64_t l = i0; l < i1; ++l) {
              const double d = static_cast<double>(base[l * C + c]) - static_cast<double>(k[c]);
              S1[c] += d;
              S2[c] += d * d;
            }
          }
        }
      }
    }
  });
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      double t1 = 0, t2 = 0;
      for (int64_t ch = 0; ch < nchunk; ++ch) {
        t1 += s1[(b * nchunk + ch) * C + c];
        t2 += s2[(b * nchunk + ch) * C + c];
      }
      const double K = K0[b * C + c];
      mean[b * C + c] = K + t1 / L;
      m2[b * C + c] = std::max(0.0, t2 - t1 * t1 / L);
      if (needs_exact(m2[b * C + c], t2, L)) exact_stats<T>(X + b * L * C + c, L, C, mean[b * C + c], m2[b * C + c]);
    }
}

// The element of the maps below: act(p g' + q ((x - k) r) + s), g' = g (HAS_G) zeroed where
// m <= 0 (HAS_M). One definition, so that every kernel computing a forward value (instance_norm,
// instance_norm_pad) rounds it the same way.
template <typename A, bool HAS_G, bool HAS_M, bool RELU>
inline A map_elem(A p, A q, A s, A k, A r, A xv, A gv, A mv) {
  A g = HAS_G ? gv : A(0);
  if (HAS_M) g *= static_cast<A>(mv > A(0));  // branch-free: the mask is data, not control
  A v = p * g + q * ((xv - k) * r) + s;
  if (RELU) v = std::max(v, A(0));
  return v;
}

// Rows of a per-thread buffer holding one sample's gradient C-vector repeated (a gradient of one
// value per (b, c) in the channels-innermost loops): the block of rows grad_sums sums at a time,
// and the most the map's 16-bit/F32 kernels take per call then.
constexpr int64_t kGradRows = kBlock / 8;

// buf (kGradRows rows of C) = the gradient of sample b in every row, from the [B, C] table gtab.
template <typename T>
void fill_grad_rows(std::vector<T>& buf, const T* gtab, int64_t b, int64_t C) {
  buf.resize(kGradRows * C);
  for (int64_t l = 0; l < kGradRows; ++l) std::copy(gtab + b * C, gtab + (b + 1) * C, buf.begin() + l * C);
}

// ---- the elementwise map y = f(x[, g]) with per-(b, c) coefficients ---------------------------
// out[b, c, l] = act(P[bc] * g' + Q[bc] * (x - K[bc]) + R[bc]); g' = g (HAS_G), zeroed where the mask
// m <= 0 (HAS_M: the ReLU's mask recomputed from y). Flags are template parameters so that
// every variant is a branch-free, vectorised loop. g_rows (channels layout only): G is a [B, C]
// table, one gradient value per (b, c) for every l (see row_scalar_grad), read from a buffer of
// it repeated: the same values, so the same bits, as the materialised gradient would give.
template <typename T, bool HAS_G, bool HAS_M, bool RELU>
void affine_map_impl(const at::Tensor& x, const T* G, const T* M, bool channels,
                     const std::vector<double>& P, const std::vector<double>& Q,
                     const std::vector<double>& R, const std::vector<double>& K, const std::vector<double>* S,
                     at::Tensor& out, bool g_rows) {
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  TORCH_INTERNAL_ASSERT(!g_rows || (channels && HAS_G), "affine_map: a [B, C] gradient needs the channels layout");
  const T* X = x.data_ptr<T>();
  T* O = out.data_ptr<T>();
  using A = at::opmath_type<T>;
  auto elem = [](A p, A q, A s, A k, A r, A xv, A gv, A mv) {
    return map_elem<A, HAS_G, HAS_M, RELU>(p, q, s, k, r, xv, gv, mv);
  };
  if (!channels) {
    at::parallel_for(0, B * C, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const A p = P[r], q = Q[r], s = R[r], k = K[r], sc = S ? static_cast<A>((*S)[r]) : A(1);
        const T* xr = X + r * L;
        const T* gr = HAS_G ? G + r * L : xr;
        const T* mr = HAS_M ? M + r * L : xr;
        T* orow = O + r * L;
#pragma omp simd
        for (int64_t l = 0; l < L; ++l)
          orow[l] = static_cast<T>(elem(p, q, s, k, sc, static_cast<A>(xr[l]), static_cast<A>(gr[l]),
                                        static_cast<A>(mr[l])));
      }
    });
    return;
  }
  // float16 / bfloat16: rows by channel_map_lowp, if the CPU has it.
  void (*lowp_map)(const T*, const T*, const T*, T*, int64_t, int64_t, const float*, const float*, const float*,
                   const float*, const float*) = nullptr;
#if defined(FASTNST_X86)
  with_channel_format<T>([&](auto e) { lowp_map = channel_map_lowp<decltype(e), HAS_G, HAS_M, RELU>; });
#endif
  at::parallel_for(0, B * L, 64, [&](int64_t t0, int64_t t1) {
    std::vector<A> p(C), q(C), s(C), k(C), sc(C);
    std::vector<T> gbuf;  // g_rows: sample b's gradient, kGradRows times
    int64_t cur_b = -1;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / L;
      if (b != cur_b) {
        for (int64_t c = 0; c < C; ++c) {
          p[c] = P[b * C + c];
          q[c] = Q[b * C + c];
          s[c] = R[b * C + c];
          k[c] = K[b * C + c];
          sc[c] = S ? static_cast<A>((*S)[b * C + c]) : A(1);
        }
        if (g_rows) fill_grad_rows(gbuf, G, b, C);
        cur_b = b;
      }
      const T* xr = X + t * C;
      const T* gr = HAS_G ? (g_rows ? gbuf.data() : G + t * C) : xr;
      const T* mr = HAS_M ? M + t * C : xr;
      T* orow = O + t * C;
      if constexpr (std::is_same<A, float>::value) {
        if (lowp_map) {  // the rest of sample b's rows in this chunk, in one call
          int64_t n = std::min(t1, (b + 1) * L) - t;
          if (g_rows) n = std::min(n, kGradRows);  // the rows gbuf holds
          lowp_map(xr, gr, mr, orow, C, n, p.data(), q.data(), s.data(), k.data(), sc.data());
          t += n - 1;
          continue;
        }
      }
#pragma omp simd
      for (int64_t c = 0; c < C; ++c)
        orow[c] = static_cast<T>(elem(p[c], q[c], s[c], k[c], sc[c], static_cast<A>(xr[c]), static_cast<A>(gr[c]),
                                      static_cast<A>(mr[c])));
    }
  });
}

template <typename T>
void affine_map(const at::Tensor& x, const T* G, const T* M, bool relu, bool channels,
                const std::vector<double>& P, const std::vector<double>& Q,
                const std::vector<double>& R, const std::vector<double>& K, at::Tensor& out,
                const std::vector<double>* S = nullptr, bool g_rows = false) {
  if (G && M) return affine_map_impl<T, true, true, false>(x, G, M, channels, P, Q, R, K, S, out, g_rows);
  if (G) return affine_map_impl<T, true, false, false>(x, G, M, channels, P, Q, R, K, S, out, g_rows);
  if (relu) return affine_map_impl<T, false, false, true>(x, G, M, channels, P, Q, R, K, S, out, false);
  return affine_map_impl<T, false, false, false>(x, G, M, channels, P, Q, R, K, S, out, false);
}

// Per-(b, c) sums of g' and g' * (x - mean) for the backward (g' masked by y > 0 if relu). G: the
// gradient in x's layout, or with g_rows a [B, C] table of one value per (b, c) (see
// row_scalar_grad), read from a buffer of kGradRows rows of it: the same values in the same
// operations as the materialised gradient, so the same bits.
template <typename T>
void grad_sums(const at::Tensor& x, const T* G, bool g_rows, const T* M,
               const std::vector<double>& mean, std::vector<double>& sg, std::vector<double>& sgx) {
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  const T* X = x.data_ptr<T>();
  using A = at::opmath_type<T>;
  sg.assign(B * C, 0.0);
  sgx.assign(B * C, 0.0);
  // Channels layout only: rows with L contiguous take norm_rows_backward_fused.
  const int64_t nthreads = at::get_num_threads();
  const int64_t nchunk = std::max<int64_t>(1, std::min<int64_t>(nthreads, L / 64));
  std::vector<double> p1(B * nchunk * C, 0.0), p2(B * nchunk * C, 0.0);
  // float16 / bfloat16: the block sums by channel_grad_sums_lowp, if the CPU has it.
  void (*lowp_sums)(const T*, const T*, const T*, int64_t, int64_t, const float*, float*, float*) = nullptr;
#if defined(FASTNST_X86)
  with_channel_format<T>([&](auto e) {
    using E = LoadFormat<typename decltype(e)::T>;
    lowp_sums = M ? channel_grad_sums_lowp<E, true> : channel_grad_sums_lowp<E, false>;
  });
#endif
  static_assert(kGradRows == kBlock / 8, "grad_sums' blocks are the rows of its gradient buffer");
  at::parallel_for(0, B * nchunk, 1, [&](int64_t t0, int64_t t1) {
    std::vector<A> a(C), q(C), mu(C);
    std::vector<T> gbuf;  // g_rows: sample b's gradient, kGradRows times
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / nchunk, ch = t % nchunk;
      const int64_t l0 = L * ch / nchunk, l1 = L * (ch + 1) / nchunk;
      for (int64_t c = 0; c < C; ++c) mu[c] = static_cast<A>(mean[b * C + c]);
      if (g_rows) fill_grad_rows(gbuf, G, b, C);
      for (int64_t i0 = l0; i0 < l1; i0 += kBlock / 8) {
        const int64_t i1 = std::min(l1, i0 + kBlock / 8);
        const T* Gb = g_rows ? gbuf.data() : G + (b * L + i0) * C;  // the block's gradient rows
        bool done = false;
        if constexpr (std::is_same<A, float>::value) {
          if (lowp_sums) {
            const int64_t off = (b * L + i0) * C;
            lowp_sums(Gb, M ? M + off : X + off, X + off, C, i1 - i0, mu.data(), a.data(), q.data());
            done = true;
          }
        }
        if (!done) {
          std::fill(a.begin(), a.end(), A(0));
          std::fill(q.begin(), q.end(), A(0));
          for (int64_t l = i0; l < i1; ++l) {
            const int64_t off = (b * L + l) * C;
            const T* gl = Gb + (l - i0) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              A gv = static_cast<A>(gl[c]);
              if (M) gv *= static_cast<A>(static_cast<A>(M[off + c]) > A(0));
              a[c] += gv;
              q[c] += gv * (static_cast<A>(X[off + c]) - mu[c]);
            }
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          p1[t * C + c] += a[c];
          p2[t * C + c] += q[c];
        }
      }
    }
  });
  for (int64_t b = 0; b < B; ++b)
    for (int64_t ch = 0; ch < nchunk; ++ch)
      for (int64_t c = 0; c < C; ++c) {
        sg[b * C + c] += p1[(b * nchunk + ch) * C + c];
        sgx[b * C + c] += p2[(b * nchunk + ch) * C + c];
      }
}

// ---- fused row kernels (L contiguous): statistics and map while the row is in cache --------
template <typename T, bool HAS_G, bool HAS_M, bool RELU>
inline void map_row(const T* xr, const T* gr, const T* mr, T* orow, int64_t n,
                    at::opmath_type<T> p, at::opmath_type<T> q, at::opmath_type<T> s, at::opmath_type<T> k,
                    at::opmath_type<T> r = 1) {
  using A = at::opmath_type<T>;
  if (!HAS_G) gr = xr;
  if (!HAS_M) mr = xr;
#pragma omp simd
  for (int64_t l = 0; l < n; ++l) {
    A g = HAS_G ? static_cast<A>(gr[l]) : A(0);
    if (HAS_M) g *= static_cast<A>(static_cast<A>(mr[l]) > A(0));  // branch-free
    A v = p * g + q * ((static_cast<A>(xr[l]) - k) * r) + s;
    if (RELU) v = std::max(v, A(0));
    orow[l] = static_cast<T>(v);
  }
}

// Forward, row layout: per row, statistics then y = act(a x + c), one parallel pass.
template <typename T, bool RELU, typename S>
void norm_rows_fused(const at::Tensor& x, const double* wp, const double* bp, double eps, double n,
                     double x_scale, S* mean_out, S* rstd_out, at::Tensor& y) {
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  const T* X = x.data_ptr<T>();
  T* Y = y.data_ptr<T>();
  using A = at::opmath_type<T>;
  const bool use_avx512 = has_avx512();
  // Outputs that cannot stay in the caches are written with streaming stores.
  const bool stream = static_cast<int64_t>(sizeof(T)) * B * C * L >= kStreamBytes;
  // float16 / bfloat16: the AVX-512 map for T's format, if the CPU has one.
  void (*lowp_map)(const T*, T*, int64_t, float, float, float) = nullptr;
#if defined(FASTNST_X86)
  with_lowp<T>([&](auto e) {
    using E = decltype(e);
    lowp_map = stream ? map_row_lowp<E, RELU, true> : map_row_lowp<E, RELU, false>;
  });
#endif
  (void)use_avx512;
  (void)stream;
  at::parallel_for(0, B * C, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      double mean, m2;
      one_row_stats<T>(X + r * L, L, mean, m2);
      const double rstd = inv_std(m2 / n + eps);
      mean_out[r] = static_cast<S>(mean);
      rstd_out[r] = static_cast<S>(rstd);
      // y = q (x - mean) + b + x_scale mean = q (x - k) + sh, k = mean rounded to x's precision.
      const double qd = wp[r] * rstd + x_scale;
      const A q = static_cast<A>(qd), k = static_cast<A>(mean);
      const A sh = static_cast<A>(bp[r] + x_scale * mean - qd * (mean - static_cast<double>(k)));
#if defined(FASTNST_X86)
      if constexpr (std::is_same<T, float>::value) {
        if (use_avx512) {
          if (stream)
            map_row_avx512<RELU, true>(X + r * L, Y + r * L, L, k, q, sh);
          else
            map_row_avx512<RELU, false>(X + r * L, Y + r * L, L, k, q, sh);
          if (stream && r + 1 == r1) _mm_sfence();
          continue;
        }
      }
#endif
      if (lowp_map) {
        lowp_map(X + r * L, Y + r * L, L, k, q, sh);
#if defined(FASTNST_X86)
        if (stream && r + 1 == r1) _mm_sfence();
#endif
        continue;
      }
      map_row<T, false, false, RELU>(X + r * L, nullptr, nullptr, Y + r * L, L, A(0), q, sh, k);
    }
  });
}

// ---- AVX-512 versions of the masked backward loops (float32) ------------------------------------
// GCC leaves the ReLU-masked loops scalar; these keep them vectorised (mask = y > 0 as a k-mask).
#if defined(FASTNST_X86)
__attribute__((target("avx512f"))) void masked_sums_avx512(const float* G, const float* M, const float* X,
                                                          int64_t L, float mu, double& t1, double& t2) {
  // Full vectors use plain loads and a zero-masking move (masked memory operations are slower
  // on some AVX-512 CPUs); only the row's tail is a masked load.
  const __m512 vmu = _mm512_set1_ps(mu), zero = _mm512_setzero_ps();
  for (int64_t i0 = 0; i0 < L; i0 += kBlock) {
    const int64_t i1 = std::min(L, i0 + kBlock);
    __m512 a[2] = {zero, zero}, b[2] = {zero, zero};  // two chains hide the add latency
    int64_t l = i0;
    for (; l + 32 <= i1; l += 32) {
#pragma GCC unroll 2
      for (int u = 0; u < 2; ++u) {
        const __mmask16 k = _mm512_cmp_ps_mask(_mm512_loadu_ps(M + l + 16 * u), zero, _CMP_GT_OQ);
        const __m512 g = _mm512_maskz_mov_ps(k, _mm512_loadu_ps(G + l + 16 * u));
        const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(X + l + 16 * u), vmu);
        a[u] = _mm512_add_ps(a[u], g);
        b[u] = _mm512_fmadd_ps(g, d, b[u]);
      }
    }
    for (; l < i1; l += 16) {
      const __mmask16 tail = l + 16 <= i1 ? 0xFFFF : static_cast<__mmask16>((1u << (i1 - l)) - 1u);
      const __mmask16 k = _mm512_mask_cmp_ps_mask(tail, _mm512_maskz_loadu_ps(tail, M + l), zero, _CMP_GT_OQ);
      const __m512 g = _mm512_maskz_loadu_ps(k, G + l);
      const __m512 x = _mm512_maskz_loadu_ps(k, X + l);
      a[0] = _mm512_add_ps(a[0], g);
      b[0] = _mm512_fmadd_ps(g, _mm512_maskz_sub_ps(k, x, vmu), b[0]);
    }
    t1 += _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
    t2 += _mm512_reduce_add_ps(_mm512_add_ps(b[0], b[1]));
  }
}

// p * (g where m > 0) + q * (x - mu) + s for 16 elements.
__attribute__((target("avx512f"), always_inline)) inline __m512 masked_affine16(
    const float* G, const float* M, const float* X, __m512 vp, __m512 vq, __m512 vs, __m512 vmu, __m512 vr) {
  const __mmask16 k = _mm512_cmp_ps_mask(_mm512_loadu_ps(M), _mm512_setzero_ps(), _CMP_GT_OQ);
  const __m512 g = _mm512_maskz_mov_ps(k, _mm512_loadu_ps(G));
  const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(X), vmu), vr);
  return _mm512_fmadd_ps(vp, g, _mm512_fmadd_ps(vq, xh, vs));
}

// The same for the first n < 16 elements (masked loads and store).
__attribute__((target("avx512f"), always_inline)) inline void masked_affine_part(
    const float* G, const float* M, const float* X, float* O, int64_t n, __m512 vp, __m512 vq, __m512 vs,
    __m512 vmu, __m512 vr) {
  const __mmask16 t = static_cast<__mmask16>((1u << n) - 1u);
  const __mmask16 k = _mm512_mask_cmp_ps_mask(t, _mm512_maskz_loadu_ps(t, M), _mm512_setzero_ps(), _CMP_GT_OQ);
  const __m512 g = _mm512_maskz_loadu_ps(k, G);
  const __m512 x = _mm512_mul_ps(_mm512_maskz_sub_ps(t, _mm512_maskz_loadu_ps(t, X), vmu), vr);
  _mm512_mask_storeu_ps(O, t, _mm512_fmadd_ps(vp, g, _mm512_fmadd_ps(vq, x, vs)));
}

template <bool STREAM>
__attribute__((target("avx512f"))) void masked_map_avx512(const float* G, const float* M, const float* X,
                                                         float* O, int64_t L, float p, float q, float s,
                                                         float mu, float r) {
  const __m512 vp = _mm512_set1_ps(p), vq = _mm512_set1_ps(q), vs = _mm512_set1_ps(s), vmu = _mm512_set1_ps(mu),
               vr = _mm512_set1_ps(r);
  int64_t l = 0;
  const int64_t head = STREAM ? stream_head(O, L) : -1;
  if (head >= 0) {
    // Masked head up to a 64-byte boundary of O, then aligned streaming stores.
    if (head > 0) masked_affine_part(G, M, X, O, head, vp, vq, vs, vmu, vr);
    for (l = head; l + 16 <= L; l += 16)
      _mm512_stream_ps(O + l, masked_affine16(G + l, M + l, X + l, vp, vq, vs, vmu, vr));
  }
  for (; l + 16 <= L; l += 16) _mm512_storeu_ps(O + l, masked_affine16(G + l, M + l, X + l, vp, vq, vs, vmu, vr));
  if (l < L) masked_affine_part(G + l, M + l, X + l, O + l, L - l, vp, vq, vs, vmu, vr);
}

// The same on 16-bit elements (see map_row_lowp). MASK: g' = g where y > 0 (ReLU). Without it
// (M unread: callers pass X) the masks are all-true, so that the 16-bit backward without ReLU
// runs these kernels too (float32 rows without ReLU keep the loop GCC vectorises itself).
template <class E, bool MASK>
FASTNST_LOWP_FN void masked_sums_lowp(const typename E::T* G, const typename E::T* M, const typename E::T* X,
                                      int64_t L, float mu, double& t1, double& t2) {
  const __m512 vmu = _mm512_set1_ps(mu), zero = _mm512_setzero_ps();
  for (int64_t i0 = 0; i0 < L; i0 += kBlock) {
    const int64_t i1 = std::min(L, i0 + kBlock);
    __m512 a[2] = {zero, zero}, b[2] = {zero, zero};
    int64_t l = i0;
    for (; l + 32 <= i1; l += 32) {
#pragma GCC unroll 2
      for (int u = 0; u < 2; ++u) {
        __m512 g = lp_load<E>(G + l + 16 * u);
        if (MASK) g = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(lp_load<E>(M + l + 16 * u), zero, _CMP_GT_OQ), g);
        const __m512 d = _mm512_sub_ps(lp_load<E>(X + l + 16 * u), vmu);
        a[u] = _mm512_add_ps(a[u], g);
        b[u] = _mm512_fmadd_ps(g, d, b[u]);
      }
    }
    for (; l < i1; l += 16) {
      const __mmask16 tail = l + 16 <= i1 ? 0xFFFF : static_cast<__mmask16>((1u << (i1 - l)) - 1u);
      const __mmask16 k =
          MASK ? _mm512_mask_cmp_ps_mask(tail, lp_maskz_load<E>(tail, M + l), zero, _CMP_GT_OQ) : tail;
      const __m512 g = lp_maskz_load<E>(k, G + l);
      const __m512 x = lp_maskz_load<E>(k, X + l);
      a[0] = _mm512_add_ps(a[0], g);
      b[0] = _mm512_fmadd_ps(g, _mm512_maskz_sub_ps(k, x, vmu), b[0]);
    }
    t1 += _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
    t2 += _mm512_reduce_add_ps(_mm512_add_ps(b[0], b[1]));
  }
}

template <class E, bool MASK>
FASTNST_LOWP __m512 masked_affine16_lowp(const typename E::T* G, const typename E::T* M, const typename E::T* X,
                                         __m512 vp, __m512 vq, __m512 vs, __m512 vmu, __m512 vr) {
  __m512 g = lp_load<E>(G);
  if (MASK) g = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(lp_load<E>(M), _mm512_setzero_ps(), _CMP_GT_OQ), g);
  const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(lp_load<E>(X), vmu), vr);
  return _mm512_fmadd_ps(vp, g, _mm512_fmadd_ps(vq, xh, vs));
}

template <class E, bool MASK>
FASTNST_LOWP void masked_affine_part_lowp(const typename E::T* G, const typename E::T* M, const typename E::T* X,
                                          typename E::T* O, int64_t n, __m512 vp, __m512 vq, __m512 vs, __m512 vmu,
                                          __m512 vr) {
  const __mmask16 t = static_cast<__mmask16>((1u << n) - 1u);
  const __mmask16 k =
      MASK ? _mm512_mask_cmp_ps_mask(t, lp_maskz_load<E>(t, M), _mm512_setzero_ps(), _CMP_GT_OQ) : t;
  const __m512 g = lp_maskz_load<E>(k, G);
  const __m512 x = _mm512_mul_ps(_mm512_maskz_sub_ps(t, lp_maskz_load<E>(t, X), vmu), vr);
  lp_mask_store<E>(O, t, _mm512_fmadd_ps(vp, g, _mm512_fmadd_ps(vq, x, vs)));
}

template <class E, bool MASK, bool STREAM>
FASTNST_LOWP_FN void masked_map_lowp(const typename E::T* G, const typename E::T* M, const typename E::T* X,
                                     typename E::T* O, int64_t L, float p, float q, float s, float mu, float r) {
  const __m512 vp = _mm512_set1_ps(p), vq = _mm512_set1_ps(q), vs = _mm512_set1_ps(s), vmu = _mm512_set1_ps(mu),
               vr = _mm512_set1_ps(r);
  int64_t l = 0;
  const int64_t head = STREAM ? stream_head(O, L) : -1;
  if (head >= 0) {
    if (head > 0) masked_affine_part_lowp<E, MASK>(G, M, X, O, head, vp, vq, vs, vmu, vr);
    for (l = head; l + 16 <= L; l += 16)
      lp_stream<E>(O + l, masked_affine16_lowp<E, MASK>(G + l, M + l, X + l, vp, vq, vs, vmu, vr));
  }
  for (; l + 16 <= L; l += 16)
    lp_store<E>(O + l, masked_affine16_lowp<E, MASK>(G + l, M + l, X + l, vp, vq, vs, vmu, vr));
  if (l < L) masked_affine_part_lowp<E, MASK>(G + l, M + l, X + l, O + l, L - l, vp, vq, vs, vmu, vr);
}
#endif

// Backward, row layout: per row, the two gradient sums then dx = p g' + q x + s.
// G: the gradient, row r at G + r * L; or, with gr (a gradient of one value per row, gr[r] for
// row r: see row_scalar_grad), a row of L ones that every row reads. The kernels then run on
// g = 1 and the row's value is folded in: the sums of g' = gr[r] m are gr[r] times those of m,
// and dx = (p gr[r]) m + q x + s. Dense gradients take exactly the operations they took before.
template <typename T, bool RELU, typename S>
void norm_rows_backward_fused(const at::Tensor& x, const T* G, const double* gr, const T* M, const double* wp,
                              const double* mean, const double* rs, double n, double x_scale,
                              S* dw, S* db, at::Tensor& dx) {
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  const T* X = x.data_ptr<T>();
  T* D = dx.data_ptr<T>();
  using A = at::opmath_type<T>;
  const bool use_avx512 = has_avx512();
  // The backward reads three tensors (x, y, grad) that should stay in the last-level cache:
  // dx bypasses it from a quarter of the forward's threshold (it is not read again soon: it
  // becomes x.grad or the next layer's incoming gradient, consumed after other work).
  const bool stream = static_cast<int64_t>(sizeof(T)) * B * C * L >= kStreamBytes / 4;
  // float16 / bfloat16: the AVX-512 kernels for T's format, if the CPU has them.
  void (*lowp_sums)(const T*, const T*, const T*, int64_t, float, double&, double&) = nullptr;
  void (*lowp_map)(const T*, const T*, const T*, T*, int64_t, float, float, float, float, float) = nullptr;
#if defined(FASTNST_X86)
  with_lowp<T>([&](auto e) {
    using E = decltype(e);
    lowp_sums = masked_sums_lowp<E, RELU>;
    lowp_map = stream ? masked_map_lowp<E, RELU, true> : masked_map_lowp<E, RELU, false>;
  });
#endif
  (void)use_avx512;
  (void)stream;
  at::parallel_for(0, B * C, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const A mu = static_cast<A>(mean[r]);
      const T* Gr = gr ? G : G + r * L;  // this row's gradient (the shared ones for gr)
      double t1 = 0, t2 = 0;
#if defined(FASTNST_X86)
      constexpr bool kVec = RELU && std::is_same<T, float>::value;
      if (kVec && use_avx512) {
        masked_sums_avx512(reinterpret_cast<const float*>(Gr), reinterpret_cast<const float*>(M + r * L),
                           reinterpret_cast<const float*>(X + r * L), L, static_cast<float>(mu), t1, t2);
      } else
#endif
      if (lowp_sums) {
        lowp_sums(Gr, RELU ? M + r * L : X + r * L, X + r * L, L, static_cast<float>(mu), t1, t2);
      } else
      for (int64_t i0 = 0; i0 < L; i0 += kBlock) {
        const int64_t i1 = std::min(L, i0 + kBlock);
        A a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
        for (int64_t l = i0; l < i1; ++l) {
          A gv = static_cast<A>(Gr[l]);
          if (RELU) gv *= static_cast<A>(static_cast<A>(M[r * L + l]) > A(0));
          a += gv;
          b += gv * (static_cast<A>(X[r * L + l]) - mu);
        }
        t1 += a;
        t2 += b;
      }
      if (gr) {  // the sums of m and m (x - mean), times the row's gradient
        t1 *= gr[r];
        t2 *= gr[r];
      }
      const double rstd = rs[r], wv = wp[r], dwv = t2 * rstd, dbv = t1;
      // The xhat term as qx * ((x - mean) * rstd): rstd^2 alone under- or overflows fp32 for
      // sigma beyond ~1e19 or below ~1e-19.
      const double q = -rstd * wv * dwv / n;
      if (dw) {
        dw[r] = static_cast<S>(dwv);
        db[r] = static_cast<S>(dbv);
      }
      // dx = pp g' + q (x - mean) + ss; mean is exact in x's precision (saved as such).
      const A pp = static_cast<A>(gr ? (x_scale + rstd * wv) * gr[r] : x_scale + rstd * wv);
      const A ss = static_cast<A>(-rstd * wv * dbv / L);
#if defined(FASTNST_X86)
      if (kVec && use_avx512) {
        auto run = stream ? masked_map_avx512<true> : masked_map_avx512<false>;
        run(reinterpret_cast<const float*>(Gr), reinterpret_cast<const float*>(M + r * L),
            reinterpret_cast<const float*>(X + r * L), reinterpret_cast<float*>(D + r * L), L,
            static_cast<float>(pp), static_cast<float>(q), static_cast<float>(ss), static_cast<float>(mu),
            static_cast<float>(rstd));
        if (stream && r + 1 == r1) _mm_sfence();
        continue;
      }
#endif
      if (lowp_map) {
        lowp_map(Gr, RELU ? M + r * L : X + r * L, X + r * L, D + r * L, L, static_cast<float>(pp),
                 static_cast<float>(q), static_cast<float>(ss), static_cast<float>(mu), static_cast<float>(rstd));
#if defined(FASTNST_X86)
        if (stream && r + 1 == r1) _mm_sfence();
#endif
        continue;
      }
      map_row<T, true, RELU, false>(X + r * L, Gr, RELU ? M + r * L : nullptr, D + r * L, L, pp,
                                    static_cast<A>(q), ss, mu, static_cast<A>(rstd));
    }
  });
}

template <typename F>
void dispatch(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(float()); break;
    case at::kDouble: f(double()); break;
    case at::kHalf: f(c10::Half()); break;
    default: f(c10::BFloat16()); break;
  }
}

// v rounded to the precision the elementwise maps of dtype compute in (the shift K): fp64 for
// float64, fp32 otherwise. float16/bfloat16 take the fp32 shift as in norm_rows_fused (not one
// rounded to 16 bits), so that they compute exactly what float32 does on their widened values.
double round_to(at::ScalarType dtype, double v) {
  return dtype == at::kDouble ? v : static_cast<double>(static_cast<float>(v));
}

// Statistics and weight gradients: fp32, fp64 for fp64 input (a float64 gradcheck must be
// float64 all the way).
at::ScalarType stats_dtype(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// The forward map's coefficients from the statistics: y = Q (x - K) + R, K = the mean rounded to
// the map's precision (see norm_rows_fused), rstd = 1 / sqrt(M2 / n + eps).
void forward_coefficients(at::ScalarType dtype, const std::vector<double>& mean, const std::vector<double>& m2,
                          const std::vector<double>& w, const std::vector<double>& bb, double eps, double n,
                          double x_scale, std::vector<double>& Q, std::vector<double>& R,
                          std::vector<double>& K, std::vector<double>& rstd) {
  const size_t N = mean.size();
  Q.resize(N);
  R.resize(N);
  K.resize(N);
  rstd.resize(N);
  for (size_t r = 0; r < N; ++r) {
    rstd[r] = inv_std(m2[r] / n + eps);
    Q[r] = w[r] * rstd[r] + x_scale;
    K[r] = round_to(dtype, mean[r]);
    R[r] = bb[r] + x_scale * mean[r] - Q[r] * (mean[r] - K[r]);
  }
}

// ---- instance_norm_pad: inference, channels_last, written straight into the padded input of
// the next convolution --------------------------------------------------------------------------
// out = reflect_pad(upsample_nearest(act(instance_norm(x)) + residual, u), p). The statistics and
// the per-element map are instance_norm's (row_stats, forward_coefficients, map_elem or
// channel_map_lowp, on the same channels-innermost layout), so each value is bit for bit
// instance_norm's y; the residual is added in x's dtype, as `y + residual` rounds. Pass 1 maps
// the rows of pixels of x (parallel over (b, h)) into the interior of the result, each value
// u x u times; pass 2 (parallel over the result's rows) copies the reflected border, rows from
// interior rows first, then each row's columns from its own interior (corners included), as
// F.pad's "reflect". Saves the normalised tensor, the padded copy and, with u > 1, the
// upsampled one.
template <typename T, bool RELU>
void norm_pad_map(const at::Tensor& x, const at::Tensor* res, const std::vector<double>& Q,
                  const std::vector<double>& R, const std::vector<double>& K, int64_t u, int64_t pad,
                  at::Tensor& out) {
  using A = at::opmath_type<T>;
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = out.size(2), Wo = out.size(3), h = H * u, w = W * u;
  const T* X = x.data_ptr<T>();
  T* O = out.data_ptr<T>();
  std::vector<A> q(B * C), s(B * C), k(B * C), zero(C, A(0)), one(C, A(1));
  for (int64_t i = 0; i < B * C; ++i) {
    q[i] = static_cast<A>(Q[i]);
    s[i] = static_cast<A>(R[i]);
    k[i] = static_cast<A>(K[i]);
  }
  void (*lowp_map)(const T*, const T*, const T*, T*, int64_t, int64_t, const float*, const float*, const float*,
                   const float*, const float*) = nullptr;
#if defined(FASTNST_X86)
  with_channel_format<T>([&](auto e) { lowp_map = channel_map_lowp<decltype(e), false, false, RELU>; });
#endif
  const T* RS = res ? res->data_ptr<T>() : nullptr;
  const int64_t rb = res ? res->stride(0) : 0, rc = res ? res->stride(1) : 0;
  const int64_t rh = res ? res->stride(2) : 0, rw = res ? res->stride(3) : 0;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, W * C));
  at::parallel_for(0, B * H, grain, [&](int64_t t0, int64_t t1) {
    std::vector<T> tmp(u > 1 ? W * C : 0);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / H, i = t % H;
      const T* xr = X + t * W * C;  // channels_last: (b, i) is row t of W pixels
      T* first = O + ((b * Ho + pad + i * u) * Wo + pad) * C;
      T* row = u > 1 ? tmp.data() : first;
      const A *qb = q.data() + b * C, *sb = s.data() + b * C, *kb = k.data() + b * C;
      if constexpr (std::is_same<A, float>::value) {
        if (lowp_map) {
          lowp_map(xr, xr, xr, row, C, W, zero.data(), qb, sb, kb, one.data());
        }
      }
      if (!lowp_map) {
        for (int64_t j = 0; j < W; ++j) {
          const T* xp = xr + j * C;
          T* op = row + j * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c)
            op[c] = static_cast<T>(map_elem<A, false, false, RELU>(A(0), qb[c], sb[c], kb[c], A(1),
                                                                 static_cast<A>(xp[c]), A(0), A(0)));
        }
      }
      if (RS) {
        const T* rr = RS + b * rb + i * rh;
        for (int64_t j = 0; j < W; ++j) {
          T* op = row + j * C;
          const T* rp = rr + j * rw;
          for (int64_t c = 0; c < C; ++c) op[c] = static_cast<T>(static_cast<A>(op[c]) + static_cast<A>(rp[c * rc]));
        }
      }
      if (u > 1) {
        for (int64_t j = 0; j < W; ++j)
          for (int64_t d = 0; d < u; ++d) std::memcpy(first + (j * u + d) * C, row + j * C, C * sizeof(T));
        for (int64_t d = 1; d < u; ++d) std::memcpy(first + d * Wo * C, first, w * C * sizeof(T));
      }
    }
  });
  if (pad == 0) return;
  at::parallel_for(0, B * Ho, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, Wo * C)),
                   [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / Ho, r = t % Ho;
      T* row = O + t * Wo * C;
      int64_t src = -1;
      if (r < pad) src = 2 * pad - r;
      else if (r >= pad + h) src = 2 * (pad + h) - 2 - r;
      if (src >= 0) std::memcpy(row + pad * C, O + ((b * Ho + src) * Wo + pad) * C, w * C * sizeof(T));
      for (int64_t kk = 0; kk < pad; ++kk) {
        std::memcpy(row + (pad - 1 - kk) * C, row + (pad + 1 + kk) * C, C * sizeof(T));
        std::memcpy(row + (pad + w + kk) * C, row + (pad + w - 2 - kk) * C, C * sizeof(T));
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_cpu(
    const at::Tensor& x0, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    double eps, bool unbiased, double x_scale, int64_t activation);

at::Tensor instance_norm_pad_cpu(const at::Tensor& x0, const c10::optional<at::Tensor>& weight,
                                 const c10::optional<at::Tensor>& bias, double eps, int64_t activation,
                                 const c10::optional<at::Tensor>& residual, int64_t upsample, int64_t pad) {
  const char* op = "instance_norm_pad";
  check_isa();
  TORCH_CHECK(x0.device().is_cpu(), "fastnst::", op, " (cpu): x must be a CPU tensor, got ", x0.device());
  TORCH_CHECK(x0.dim() == 4, "fastnst::", op, ": x must be [B, C, H, W], got ", x0.sizes());
  const auto dt = x0.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
              "fastnst::", op, ": x must be float32, float16, bfloat16 or float64 (cpu), got ", dt);
  TORCH_CHECK(activation == 0 || activation == 1, "fastnst::", op, ": activation must be 0 (none) or 1 (relu)");
  TORCH_CHECK(eps >= 0, "fastnst::", op, ": eps must be >= 0, got ", eps);
  TORCH_CHECK(upsample >= 1, "fastnst::", op, ": upsample must be >= 1, got ", upsample);
  TORCH_CHECK(pad >= 0, "fastnst::", op, ": pad must be >= 0, got ", pad);
  const int64_t B = x0.size(0), C = x0.size(1), H = x0.size(2), W = x0.size(3);
  TORCH_CHECK(H * W > 1, "fastnst::", op, ": x must have more than 1 spatial element per channel, got ",
              x0.sizes());
  TORCH_CHECK(pad < H * upsample && pad < W * upsample, "fastnst::", op, ": reflection padding ", pad,
              " must be smaller than the (upsampled) height and width ", H * upsample, " x ", W * upsample);
  check_cpu(weight.has_value() ? *weight : at::Tensor(), "weight", op);
  check_cpu(bias.has_value() ? *bias : at::Tensor(), "bias", op);
  at::Tensor res;
  if (residual.has_value() && residual->defined()) {
    res = *residual;
    check_cpu(res, "residual", op);
    TORCH_CHECK(res.sizes() == x0.sizes() && res.scalar_type() == dt, "fastnst::", op,
                ": residual must have x's shape ", x0.sizes(), " and dtype ", dt, ", got ", res.sizes(), " ",
                res.scalar_type());
  }
  // x channels_last ([B][H][W][C], viewed as [B, C, L] with channels innermost), copied if not.
  const at::Tensor x4 = x0.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor x = x4.view({B, C, H * W});  // C == 1: contiguous rows, the same data
  const int64_t Ho = H * upsample + 2 * pad, Wo = W * upsample + 2 * pad;
  at::Tensor out = reusable_empty_pooled(OutSlot::kNormPad, {B, C, Ho, Wo}, {C * Ho * Wo, 1, Wo * C, C}, x0.options());
  std::vector<double> Q, R, K;
  at::Tensor src = x4;
  if (C > 1) {
    const std::vector<double> w = per_sample(weight, B, C, 1.0, "weight", op);
    const std::vector<double> bb = per_sample(bias, B, C, 0.0, "bias", op);
    std::vector<double> mean, m2, rstd;
    dispatch(dt, [&](auto tag) { row_stats<decltype(tag)>(x, true, mean, m2); });
    forward_coefficients(dt, mean, m2, w, bb, eps, static_cast<double>(H * W), 0.0, Q, R, K, rstd);
  } else {
    // One channel: instance_norm takes its row kernels, whose map differs in rounding from the
    // channels-innermost one; its y is taken as it is and copied by the identity map (exact).
    src = std::get<0>(instance_norm_cpu(x, weight, bias, eps, false, 0.0, activation)).view({B, C, H, W});
    Q.assign(B, 1.0);
    R.assign(B, 0.0);
    K.assign(B, 0.0);
    activation = 0;
  }
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    auto run = activation == 1 ? norm_pad_map<T, true> : norm_pad_map<T, false>;
    run(src, res.defined() ? &res : nullptr, Q, R, K, upsample, pad, out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mean_std_cpu(const at::Tensor& x0, double eps, bool unbiased) {
  check_x(x0, "mean_std");
  const int64_t B = x0.size(0), C = x0.size(1), L = x0.size(2);
  TORCH_CHECK(!unbiased || L > 1, "fastnst::mean_std: the unbiased variance needs L >= 2, got L = ", L);
  const bool channels = channels_innermost(x0);
  const at::Tensor x = canonical(x0, channels);
  std::vector<double> mean, m2;
  dispatch(x.scalar_type(), [&](auto tag) { row_stats<decltype(tag)>(x, channels, mean, m2); });
  const double n = static_cast<double>(L - (unbiased ? 1 : 0));
  at::Tensor m = at::empty({B, C}, at::TensorOptions().dtype(at::kDouble));
  at::Tensor s = at::empty({B, C}, at::TensorOptions().dtype(at::kDouble));
  double* mp = m.data_ptr<double>();
  double* sp = s.data_ptr<double>();
  for (int64_t r = 0; r < B * C; ++r) {
    mp[r] = mean[r];
    sp[r] = std::sqrt(m2[r] / n + eps);
  }
  return {m.to(x0.scalar_type()), s.to(x0.scalar_type())};
}

at::Tensor mean_std_backward_cpu(const at::Tensor& gm, const at::Tensor& gs, const at::Tensor& x0,
                                 const at::Tensor& mean, const at::Tensor& std_, bool unbiased) {
  check_x(x0, "mean_std_backward");
  const int64_t B = x0.size(0), C = x0.size(1), L = x0.size(2);
  const bool channels = channels_innermost(x0);
  const at::Tensor x = canonical(x0, channels);
  auto d = [&](const at::Tensor& t, const char* name) {
    check_cpu(t, name, "mean_std_backward");
    TORCH_CHECK(t.numel() == B * C, "fastnst::mean_std_backward: ", name, " must be [B, C] = [", B,
                ", ", C, "], got ", t.sizes());
    return flat_doubles(t);
  };
  const std::vector<double> g1 = d(gm, "grad_mean"), g2 = d(gs, "grad_std"), mu = d(mean, "mean"),
                            sd = d(std_, "std");
  const double n = static_cast<double>(L - (unbiased ? 1 : 0));
  std::vector<double> P(B * C, 0.0), Q(B * C), R(B * C);
  // A zero grad_std contributes nothing, also where std = 0 or the row holds a NaN/Inf (the
  // term would be 0 / 0 or 0 * Inf): such rows are grad_mean / L exactly, as autograd of the
  // reference gives.
  int64_t n_zero = 0;
  for (int64_t r = 0; r < B * C; ++r) {
    const bool zero = g2[r] == 0;
    n_zero += zero;
    Q[r] = zero ? 0.0 : g2[r] / (sd[r] * n);
    R[r] = g1[r] / L;  // dx = R + Q (x - mean); mean is exact in x's precision (the op's output)
  }
  at::Tensor out = output_rule(x0, OutSlot::kMeanStdBackward);
  auto opts = at::TensorOptions().dtype(at::kDouble);
  if (n_zero == B * C) {  // e.g. only the mean is used: no pass over x at all
    out.view({B, C, L}).copy_(at::from_blob(R.data(), {B, C, 1}, opts).expand({B, C, L}));
    return out;
  }
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    affine_map<T>(x, nullptr, nullptr, false, channels, P, Q, R, mu, out);
  });
  if (n_zero > 0) {
    std::vector<uint8_t> zero(B * C);
    for (int64_t r = 0; r < B * C; ++r) zero[r] = Q[r] == 0;
    const at::Tensor mask = at::from_blob(zero.data(), {B, C, 1}, at::TensorOptions().dtype(at::kBool));
    const at::Tensor rows = at::from_blob(R.data(), {B, C, 1}, opts).to(out.scalar_type());
    out.copy_(at::where(mask, rows, out));
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_cpu(
    const at::Tensor& x0, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    double eps, bool unbiased, double x_scale, int64_t activation) {
  check_x(x0, "instance_norm");
  TORCH_CHECK(activation == 0 || activation == 1, "fastnst::instance_norm: activation must be 0 (none) or 1 (relu)");
  TORCH_CHECK(eps >= 0, "fastnst::instance_norm: eps must be >= 0, got ", eps);
  const int64_t B = x0.size(0), C = x0.size(1), L = x0.size(2);
  TORCH_CHECK(!unbiased || L > 1, "fastnst::instance_norm: the unbiased variance needs L >= 2, got L = ", L);
  const bool channels = channels_innermost(x0);
  const at::Tensor x = canonical(x0, channels);
  const std::vector<double> w = per_sample(weight, B, C, 1.0, "weight", "instance_norm");
  const std::vector<double> bb = per_sample(bias, B, C, 0.0, "bias", "instance_norm");
  const auto sopts = at::TensorOptions().dtype(stats_dtype(x0));
  if (!channels) {
    at::Tensor mean_t = at::empty({B, C}, sopts);
    at::Tensor rstd_t = at::empty({B, C}, sopts);
    at::Tensor y = output_rule(x0, OutSlot::kNormForward);
    const double n = static_cast<double>(L - (unbiased ? 1 : 0));
    dispatch(x.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      using S = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
      auto run = activation == 1 ? norm_rows_fused<T, true, S> : norm_rows_fused<T, false, S>;
      run(x, w.data(), bb.data(), eps, n, x_scale, mean_t.data_ptr<S>(),
          rstd_t.data_ptr<S>(), y);
    });
    return {y, mean_t, rstd_t};
  }
  std::vector<double> mean, m2;
  dispatch(x.scalar_type(), [&](auto tag) { row_stats<decltype(tag)>(x, channels, mean, m2); });
  const double n = static_cast<double>(L - (unbiased ? 1 : 0));
  std::vector<double> P(B * C, 0.0), Q, R, K, rstd;
  forward_coefficients(x.scalar_type(), mean, m2, w, bb, eps, n, x_scale, Q, R, K, rstd);
  at::Tensor mean_t = stats_tensor(mean, B, C, stats_dtype(x0));
  at::Tensor rstd_t = stats_tensor(rstd, B, C, stats_dtype(x0));
  at::Tensor y = output_rule(x0, OutSlot::kNormForward);
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    affine_map<T>(x, nullptr, nullptr, activation == 1, channels, P, Q, R, K, y);
  });
  return {y, mean_t, rstd_t};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_backward_cpu(
    const at::Tensor& grad0, const at::Tensor& x0, const at::Tensor& y0,
    const c10::optional<at::Tensor>& weight, const at::Tensor& mean_t, const at::Tensor& rstd_t,
    bool unbiased, double x_scale, int64_t activation, bool weight_grads) {
  check_x(x0, "instance_norm_backward");
  check_cpu(grad0, "grad", "instance_norm_backward");
  check_cpu(y0, "y", "instance_norm_backward");
  check_cpu(mean_t, "mean", "instance_norm_backward");
  check_cpu(rstd_t, "rstd", "instance_norm_backward");
  const int64_t B = x0.size(0), C = x0.size(1), L = x0.size(2);
  TORCH_CHECK(grad0.sizes() == x0.sizes() && y0.sizes() == x0.sizes(),
              "fastnst::instance_norm_backward: grad and y must be shaped like x ", x0.sizes());
  TORCH_CHECK(mean_t.numel() == B * C && rstd_t.numel() == B * C,
              "fastnst::instance_norm_backward: mean and rstd must be [B, C]");
  const bool channels = channels_innermost(x0);
  const at::Tensor x = canonical(x0, channels);
  // A gradient of one value per row (y.sum(), y.sum((2, 3)) weighted) is read in place as its
  // B * C values, whatever its dtype; any other is converted to x's dtype and layout.
  std::vector<double> g_rows;
  const bool row_g = row_scalar_grad(grad0, g_rows);
  if (row_g && grad0.scalar_type() != x.scalar_type()) {
    dispatch(x.scalar_type(), [&](auto tag) {  // rounded to x's dtype, as grad0.to() would round
      using T = decltype(tag);
      for (double& v : g_rows) v = static_cast<double>(static_cast<T>(v));
    });
  }
  const at::Tensor g = row_g ? at::Tensor() : same_layout(grad0.to(x.scalar_type()), x);
  const at::Tensor y = activation == 1 ? same_layout(y0.to(x.scalar_type()), x) : at::Tensor();
  const std::vector<double> w = per_sample(weight, B, C, 1.0, "weight", "instance_norm_backward");
  const std::vector<double> mean = flat_doubles(mean_t), rstd_v = flat_doubles(rstd_t);
  const double* rs = rstd_v.data();
  const double* wp = w.data();
  const double n = static_cast<double>(L - (unbiased ? 1 : 0));
  if (!channels) {
    const auto sopts = at::TensorOptions().dtype(stats_dtype(x0));
    at::Tensor dw = at::empty({weight_grads ? B : 0, weight_grads ? C : 0}, sopts);
    at::Tensor db = at::empty({weight_grads ? B : 0, weight_grads ? C : 0}, sopts);
    if (!weight_grads) {
      dw = dw.view({0});
      db = db.view({0});
    }
    at::Tensor dx = output_rule(x0, OutSlot::kNormBackward);
    dispatch(x.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      using S = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
      auto run = activation == 1 ? norm_rows_backward_fused<T, true, S> : norm_rows_backward_fused<T, false, S>;
      std::vector<T> ones(row_g ? L : 0, T(1));  // the row every row reads for a per-row gradient
      run(x, row_g ? ones.data() : g.data_ptr<T>(), row_g ? g_rows.data() : nullptr,
          activation == 1 ? y.data_ptr<T>() : nullptr, wp, mean.data(), rs, n, x_scale,
          weight_grads ? dw.data_ptr<S>() : nullptr, weight_grads ? db.data_ptr<S>() : nullptr, dx);
    });
    return {dx, dw, db};
  }
  // Channels innermost: a per-row gradient as a [B, C] table in x's dtype (the values, rounded
  // as .to() rounds, that the materialised gradient would hold).
  auto grad_of = [&](auto tag) {
    using T = decltype(tag);
    std::vector<T> tab(row_g ? B * C : 0);
    for (size_t i = 0; i < tab.size(); ++i) tab[i] = static_cast<T>(g_rows[i]);
    return tab;
  };
  std::vector<double> sg, sgx;
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const std::vector<T> tab = grad_of(tag);
    grad_sums<T>(x, row_g ? tab.data() : g.data_ptr<T>(), row_g, activation == 1 ? y.data_ptr<T>() : nullptr,
                 mean, sg, sgx);
  });
  std::vector<double> P(B * C), Q(B * C), R(B * C);
  std::vector<double> dwv_all(weight_grads ? B * C : 0), dbv_all(weight_grads ? B * C : 0);
  for (int64_t r = 0; r < B * C; ++r) {
    const double rstd = rs[r], wv = wp[r];
    const double dwv = sgx[r] * rstd;  // sum g' xhat
    const double dbv = sg[r];
    P[r] = x_scale + rstd * wv;
    Q[r] = -rstd * wv * dwv / n;  // times (x - mean) rstd (see norm_rows_backward_fused)
    R[r] = -rstd * wv * dbv / L;  // dx = P g' + Q (x - mean) rstd + R
    if (weight_grads) {
      dwv_all[r] = dwv;
      dbv_all[r] = dbv;
    }
  }
  const auto sd = stats_dtype(x0);
  at::Tensor dw = weight_grads ? stats_tensor(dwv_all, B, C, sd) : at::empty({0}, at::TensorOptions().dtype(sd));
  at::Tensor db = weight_grads ? stats_tensor(dbv_all, B, C, sd) : at::empty({0}, at::TensorOptions().dtype(sd));
  at::Tensor dx = output_rule(x0, OutSlot::kNormBackward);
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const std::vector<T> tab = grad_of(tag);
    affine_map<T>(x, row_g ? tab.data() : g.data_ptr<T>(), activation == 1 ? y.data_ptr<T>() : nullptr, false,
                  channels, P, Q, R, mean, dx, &rstd_v, row_g);
  });
  return {dx, dw, db};
}

TORCH_LIBRARY_IMPL(fastnst, CPU, m) {
  m.impl("mean_std", &mean_std_cpu);
  m.impl("mean_std_backward", &mean_std_backward_cpu);
  m.impl("instance_norm", &instance_norm_cpu);
  m.impl("instance_norm_backward", &instance_norm_backward_cpu);
  m.impl("instance_norm_pad", &instance_norm_pad_cpu);
}

}  // namespace cpu
}  // namespace fastnst
