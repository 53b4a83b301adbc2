// Gram matrix on the CPU.
//
// Forward:  G[b] = s * F[b] F[b]^T              F[b] = x[b] as (C, L), s = 1 / divisor
// Backward: dF[b] = s * (dG[b] + dG[b]^T) F[b]  (one GEMM; dG need not be symmetric)
// (Gatys et al. 2016, "Image Style Transfer Using Convolutional Neural Networks".)
//
// AVX-512 path (float32, float16, bfloat16 inputs; fp32 accumulation):
//  * forward is a SYRK: the reduction dimension L is cut into chunks of kc columns; each chunk
//    of F is transposed and widened into a packed fp32 panel P (kc x Cp), and only the
//    upper-triangle register tiles of G (8 rows x 48 columns) are computed from it, then
//    mirrored. Threads split the batch when it is large enough, else L (each owns a partial
//    G), or, for short rows, the triangle's row blocks.
//  * backward forms S = s (dG + dG^T) once (C x C) and runs one GEMM, dF = S F, with a
//    6 x 64 register tile; for channels-innermost x it computes dF^T = F^T S instead, so the
//    gradient keeps x's layout and no transpose is needed.
// bfloat16 on AVX512-BF16 CPUs: the forward runs the same SYRK on bf16 pairs (vdpbf16ps), the
// backward oneDNN's bf16 GEMM; AVX2 CPUs run both on AVX2 tiles (gemm_avx2.h). Which path a
// dtype takes, and why, is in the routes below. CPUs below AVX2 and float64 (gradcheck) take a
// plain ATen path in the accumulation dtype.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu_features.h"
#include "gemm_avx2.h"
#include "gemm_avx512.h"
#include "layout.h"

namespace fastnst {
namespace cpu {
namespace {

void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), "fastnst::gram (cpu): ", name, " must be a CPU tensor, got ",
              x.device());
  TORCH_CHECK(x.dim() == 3, "fastnst::gram: ", name, " must be [B, C, L], got ", x.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
              "fastnst::gram: ", name,
              " must be float32, float16, bfloat16 or float64 (cpu), got ", dt);
}

at::Tensor empty_grad_like(const at::Tensor& x, at::ScalarType dtype) {
  return rule_output(x, dtype, OutSlot::kGramBackward);
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

#if defined(FASTNST_X86)
constexpr int64_t kFwdMR = 8;    // rows of G per register tile
constexpr int64_t kFwdNV = 3;    // 16-wide column vectors of G per register tile
constexpr int64_t kBwdMR = 6;
constexpr int64_t kBwdCols = 64;  // columns of dF per packed panel / parallel task
#define FASTNST_ROW_FN __attribute__((target("avx512f,avx512bw,avx512vl")))

// Panel formats of the forward SYRK. Fp32Panel: fp32 columns, any input dtype widened to them.
// PairPanel: bfloat16 pairs (two consecutive columns per 32-bit word) for vdpbf16ps, on CPUs
// with AVX512-BF16: each k step multiplies twice as many elements, accumulating in fp32.
struct Fp32Panel {
  using U = float;
  static constexpr int64_t kCols = 1;  // columns of F per panel element
};
struct PairPanel {
  using U = uint32_t;
  static constexpr int64_t kCols = 2;
};
// Avx2Panel: the fp32 panels, packed and multiplied by the AVX2 + FMA code (gemm_avx2.h).
struct Avx2Panel {
  using U = float;
  static constexpr int64_t kCols = 1;
};

// One register tile row block of the upper triangle: rows [j0, j0 + mr) of G, columns from the
// 16-strip holding row j0 to the end, from a strip-packed panel P (strip stride ss) of ku units
// (columns, or column pairs).
template <class F>
inline void syrk_rows(int64_t j0, int64_t mr, int64_t Cp, int64_t ku, const typename F::U* P, int64_t ss,
                      float* G, bool accumulate) {
  const int64_t sa = j0 / 16;
  const typename F::U* A = P + sa * ss + j0 % 16;  // A(r, k) = P[sa][k][j0 % 16 + r]
  for (int64_t i0 = sa * 16; i0 < Cp; i0 += 16 * kFwdNV) {
    const int64_t nv = std::min<int64_t>(kFwdNV, (Cp - i0) / 16);
    const typename F::U* Bm = P + (i0 / 16) * ss;
    float* O = G + j0 * Cp + i0;
    if constexpr (std::is_same<F, Avx2Panel>::value) {
      // One 16-column strip at a time, rows in tiles of 4 (4 x 2 ymm accumulators).
      for (int64_t v = 0; v < nv; ++v)
        for (int64_t r0 = 0; r0 < mr; r0 += 4)
          avx2::microkernel_rows<4, 2, false>(std::min<int64_t>(4, mr - r0), ku, A + r0, 1, 16, Bm + v * ss, 16,
                                              O + r0 * Cp + 16 * v, Cp, avx2::lanes(8), accumulate);
    } else if constexpr (std::is_same<F, PairPanel>::value) {
      switch (nv) {
        case 3: avx512::dp_microkernel_rows<kFwdMR, 3>(mr, ku, A, 1, 16, Bm, 16, ss, O, Cp, accumulate); break;
        case 2: avx512::dp_microkernel_rows<kFwdMR, 2>(mr, ku, A, 1, 16, Bm, 16, ss, O, Cp, accumulate); break;
        default: avx512::dp_microkernel_rows<kFwdMR, 1>(mr, ku, A, 1, 16, Bm, 16, ss, O, Cp, accumulate); break;
      }
    } else {
      switch (nv) {
        case 3: avx512::microkernel_rows<kFwdMR, 3, false>(mr, ku, A, 1, 16, Bm, 16, ss, O, Cp, 0xFFFF, accumulate); break;
        case 2: avx512::microkernel_rows<kFwdMR, 2, false>(mr, ku, A, 1, 16, Bm, 16, ss, O, Cp, 0xFFFF, accumulate); break;
        default: avx512::microkernel_rows<kFwdMR, 1, false>(mr, ku, A, 1, 16, Bm, 16, ss, O, Cp, 0xFFFF, accumulate); break;
      }
    }
  }
}

// Packs columns [k0, k0 + kw) of sample X (strides sc, sl) into P, strip stride ss.
template <typename T, class F>
inline void pack_panel(const T* X, int64_t sc, int64_t sl, int64_t C, int64_t kw, typename F::U* P, int64_t ss) {
  if constexpr (std::is_same<F, PairPanel>::value)
    avx512::pack_pair_strips(X, sc, sl, C, kw, P, ss);
  else if constexpr (std::is_same<F, Avx2Panel>::value)
    avx2::pack_strips<T>(X, sc, sl, C, kw, P, ss);
  else
    avx512::pack_strips<T>(X, sc, sl, C, kw, P, ss);
}

// ---- the forward's last step on AVX-512: partial sums, scale, mirror, narrow ----------------
// 16 elements of a row of G stored as T (lanes in m): fp32 as is, fp16 rounded to nearest
// even (vcvtps2ph), bf16 rounded to nearest even as c10::BFloat16 rounds (NaN -> 0x7FC0).
FASTNST_ROW_FN inline void store_row(float* p, __m512 v, __mmask16 m) { _mm512_mask_storeu_ps(p, m, v); }
FASTNST_ROW_FN inline void store_row(c10::Half* p, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
FASTNST_ROW_FN inline void store_row(c10::BFloat16* p, __m512 v, __mmask16 m) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(r));
}

// Row block [i0, i0 + ih) of G from its nsplit partial Grams (C x Cp fp32 each, summed in order,
// then scaled: the scalar loop's operations), written with its mirror as 16 x 16 tiles.
template <typename T>
FASTNST_ROW_FN void reduce_row_blocks(const float* Gb, int64_t nsplit, int64_t C, int64_t Cp, int64_t i0,
                                      int64_t ih, float fscale, T* Ob) {
  const __m512 vs = _mm512_set1_ps(fscale);
  for (int64_t j0 = i0; j0 < C; j0 += 16) {
    const int64_t jw = std::min<int64_t>(16, C - j0);
    const __mmask16 mj = static_cast<__mmask16>(jw == 16 ? 0xFFFFu : (1u << jw) - 1u);
    const __mmask16 mi = static_cast<__mmask16>(ih == 16 ? 0xFFFFu : (1u << ih) - 1u);
    __m512 rows[16];
    for (int r = 0; r < 16; ++r) {
      __m512 v = _mm512_setzero_ps();
      if (r < ih)
        for (int64_t s = 0; s < nsplit; ++s) v = _mm512_add_ps(v, _mm512_loadu_ps(Gb + s * C * Cp + (i0 + r) * Cp + j0));
      rows[r] = _mm512_mul_ps(v, vs);
    }
    __m512 cols[16];
    for (int r = 0; r < 16; ++r) cols[r] = rows[r];
    avx512::transpose16(cols);  // cols[c][r] = rows[r][c]
    if (j0 == i0) {
      // The diagonal tile: lanes left of the diagonal take the mirrored (upper) value.
      for (int r = 0; r < ih; ++r)
        store_row(Ob + (i0 + r) * C + i0, _mm512_mask_mov_ps(rows[r], static_cast<__mmask16>((1u << r) - 1u), cols[r]),
                  mj);
    } else {
      for (int r = 0; r < ih; ++r) store_row(Ob + (i0 + r) * C + j0, rows[r], mj);
      for (int c = 0; c < jw; ++c) store_row(Ob + (j0 + c) * C + i0, cols[c], mi);
    }
  }
}

template <typename T, class F = Fp32Panel>
void gram_forward_avx512(const at::Tensor& x, double scale, at::Tensor& out) {
  using U = typename F::U;
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  const int64_t sb = x.stride(0), sc = x.stride(1), sl = x.stride(2);
  const T* X = x.data_ptr<T>();
  const int64_t Cp = (C + 15) / 16 * 16;
  // Chunk of L: the packed panel (kc x Cp fp32, or as many bytes of pairs) stays in L2 and one
  // strip of it in L1.
  const int64_t kc = std::clamp<int64_t>((131072 / Cp) / 16 * 16, 16, 512) * F::kCols;
  const auto units = [](int64_t cols) { return (cols + F::kCols - 1) / F::kCols; };

  const int64_t nthreads = at::get_num_threads();
  int64_t nsplit = 1;
  if (B < nthreads) {
    // Split L between threads; each part should still hold a few chunks of work.
    nsplit = std::min<int64_t>((nthreads + B - 1) / B, std::max<int64_t>(1, L / (512 * F::kCols)));
  }
  // Rows too short to give every thread a part of L: the threads share the triangle's row
  // blocks instead (one partial G per sample).
  const bool share_rows = B * nsplit < nthreads && L <= 4 * kc;
  if (share_rows) nsplit = 1;
  const int64_t items = B * nsplit;
  at::Tensor partial = at::empty({items, C, Cp}, x.options().dtype(at::kFloat));
  float* Gp = partial.data_ptr<float>();

  if (share_rows) {
    // Threads pack a chunk's strips together, then take the triangle's row blocks interleaved,
    // so that each gets a fair part of it (the top rows are the longest).
    const int64_t ku = units(kc), ss = ku * 16, nstrips = Cp / 16;
    std::vector<U> panel(static_cast<size_t>(ku * Cp));
    U* P = panel.data();
    const int64_t nblocks = (C + kFwdMR - 1) / kFwdMR;
    for (int64_t b = 0; b < B; ++b) {
      float* G = Gp + b * C * Cp;
      for (int64_t k0 = 0; k0 < L; k0 += kc) {
        const int64_t kw = std::min(kc, L - k0);
        const bool accumulate = k0 != 0;
        at::parallel_for(0, nstrips, 1, [&](int64_t s0, int64_t s1) {
          pack_panel<T, F>(X + b * sb + 16 * s0 * sc + k0 * sl, sc, sl, std::min(C, 16 * s1) - 16 * s0, kw,
                           P + s0 * ss, ss);
        });
        at::parallel_for(0, nthreads, 1, [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t)
            for (int64_t blk = t; blk < nblocks; blk += nthreads) {
              const int64_t j0 = blk * kFwdMR;
              syrk_rows<F>(j0, std::min(kFwdMR, C - j0), Cp, units(kw), P, ss, G, accumulate);
            }
        });
      }
    }
  } else at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    const int64_t ss = units(kc) * 16;
    std::vector<U> panel(static_cast<size_t>(units(kc) * Cp));
    U* P = panel.data();
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t b = item / nsplit, s = item % nsplit;
      const int64_t k_begin = L * s / nsplit, k_end = L * (s + 1) / nsplit;
      float* G = Gp + item * C * Cp;
      if (k_begin == k_end) {
        std::fill(G, G + C * Cp, 0.f);
        continue;
      }
      for (int64_t k0 = k_begin; k0 < k_end; k0 += kc) {
        const int64_t kw = std::min(kc, k_end - k0);
        pack_panel<T, F>(X + b * sb + k0 * sl, sc, sl, C, kw, P, ss);
        const bool accumulate = k0 != k_begin;
        for (int64_t j0 = 0; j0 < C; j0 += kFwdMR)
          syrk_rows<F>(j0, std::min(kFwdMR, C - j0), Cp, units(kw), P, ss, G, accumulate);
      }
    }
  });

  // Sum the partial Grams, scale, mirror the upper triangle and narrow to the output dtype,
  // in 16 x 16 blocks so that both the block and its mirror are written a row at a time.
  // Values come from the upper triangle only: G is exactly symmetric.
  T* O = out.data_ptr<T>();
  const float fscale = static_cast<float>(scale);
  const int64_t nb = (C + 15) / 16;
#if defined(FASTNST_X86)
  if constexpr (!std::is_same<F, Avx2Panel>::value) {  // AVX-512: the same sums, 16 lanes a row
    at::parallel_for(0, B * nb, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / nb, i0 = (t % nb) * 16, ih = std::min<int64_t>(16, C - i0);
        reduce_row_blocks<T>(Gp + b * nsplit * C * Cp, nsplit, C, Cp, i0, ih, fscale, O + b * C * C);
      }
    });
    return;
  }
#endif
  at::parallel_for(0, B * nb, 1, [&](int64_t t0, int64_t t1) {
    float tile[16][16];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / nb, i0 = (t % nb) * 16, ih = std::min<int64_t>(16, C - i0);
      T* Ob = O + b * C * C;
      const float* Gb = Gp + b * nsplit * C * Cp;
      for (int64_t j0 = i0; j0 < C; j0 += 16) {
        const int64_t jw = std::min<int64_t>(16, C - j0);
        for (int64_t r = 0; r < ih; ++r)
          for (int64_t c = 0; c < jw; ++c) {
            float v = 0.f;
            for (int64_t s = 0; s < nsplit; ++s) v += Gb[s * C * Cp + (i0 + r) * Cp + j0 + c];
            tile[r][c] = v * fscale;
          }
        const bool diag = j0 == i0;
        for (int64_t r = 0; r < ih; ++r)
          for (int64_t c = diag ? r : 0; c < jw; ++c) Ob[(i0 + r) * C + j0 + c] = static_cast<T>(tile[r][c]);
        for (int64_t c = 0; c < jw; ++c)
          for (int64_t r = 0; r < (diag ? c : ih); ++r) Ob[(j0 + c) * C + i0 + r] = static_cast<T>(tile[r][c]);
      }
    }
  });
}

// One GEMM block of the backward: AVX-512 (6 x 64 tiles) or AVX2 (6 x 16).
template <bool AVX2>
inline void bwd_block(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_ks, const float* B,
                      int64_t ldb, float* O, int64_t ldo) {
  if constexpr (AVX2)
    avx2::gemm_block<kBwdMR>(M, N, K, A, a_rs, a_ks, B, ldb, O, ldo, false);
  else
    avx512::gemm_block<kBwdMR, 4>(M, N, K, A, a_rs, a_ks, B, ldb, O, ldo, false);
}

// dF = S F (row mode) or dF^T = F^T S (channels mode), S = s (dG + dG^T), all fp32.
template <bool AVX2 = false>
void gram_backward_avx512(const at::Tensor& S, const at::Tensor& xf, at::Tensor& outf) {
  const int64_t B = xf.size(0), C = xf.size(1), L = xf.size(2);
  const float* Sp = S.data_ptr<float>();
  const float* X = xf.data_ptr<float>();
  float* O = outf.data_ptr<float>();
  const int64_t sb = xf.stride(0);
  if (channels_innermost(xf)) {
    // Rows of F^T (length C) are contiguous: out^T (L x C) = F^T (L x C) * S (C x C).
    // Tasks: 192 rows of F^T x 128 columns of S (column slices keep short images parallel).
    const int64_t rows = 192, cols = 128;
    const int64_t nblk = (L + rows - 1) / rows, ncb = (C + cols - 1) / cols;
    at::parallel_for(0, B * nblk * ncb, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / (nblk * ncb), m0 = (t / ncb % nblk) * rows, n0 = (t % ncb) * cols;
        const int64_t m = std::min(rows, L - m0), n = std::min(cols, C - n0);
        bwd_block<AVX2>(m, n, C, X + b * sb + m0 * C, /*a_rs=*/C, /*a_ks=*/1, Sp + b * C * C + n0, /*ldb=*/C,
                        O + b * C * L + m0 * C + n0, /*ldo=*/C);
      }
    });
  } else {
    // Rows of F (length L) are contiguous: out (C x L) = S (C x C) * F (C x L), one panel of
    // kBwdCols columns of F at a time, copied to a contiguous buffer first (rows of F are L
    // apart: read in place, a panel of a large layer would thrash the cache sets).
    // S is symmetric, so S[r, k] is read as S[k, r]: the MR broadcasts share a cache line.
    const int64_t sc = xf.stride(1);
    const int64_t nblk = (L + kBwdCols - 1) / kBwdCols;
    at::parallel_for(0, B * nblk, 1, [&](int64_t t0, int64_t t1) {
      std::vector<float> panel(static_cast<size_t>(C * kBwdCols));
      float* P = panel.data();
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / nblk, n0 = (t % nblk) * kBwdCols;
        const int64_t n = std::min(kBwdCols, L - n0);
        const float* F = X + b * sb + n0;
        for (int64_t k = 0; k < C; ++k) std::memcpy(P + k * kBwdCols, F + k * sc, n * sizeof(float));
        bwd_block<AVX2>(C, n, C, Sp + b * C * C, /*a_rs=*/1, /*a_ks=*/C, P, /*ldb=*/kBwdCols,
                        O + b * C * L + n0, /*ldo=*/L);
      }
    });
  }
}
#endif  // FASTNST_X86

// ---- routes --------------------------------------------------------------------------------
// Which code computes a Gram (forward) or its one-GEMM backward, by dtype and the ISA level in
// use (cpu_features.h), with the reason `fastnst info` prints (gram_routes below).
//   kOwnFp32   fastnst's AVX-512 SYRK / GEMM on fp32 panels (16-bit inputs widened exactly)
//   kOwnPairs  fastnst's SYRK on bf16 pairs (vdpbf16ps, fp32 accumulation)
//   kOneDnn    ATen's bf16 batched GEMM, which hands it to oneDNN (AMX tiles or vdpbf16ps,
//              fp32 accumulation, one rounding to bf16) where ATen's own heuristics allow
//   kBlas      ATen's fp32 batched GEMM (MKL)
//   kPortable  ATen's batched GEMM in the accumulation dtype (float64 input, CPUs below AVX2)
//   kOwnAvx2   the fp32 SYRK / GEMM with AVX2 + FMA tiles (AVX2 CPUs, or FASTNST_CPU_ISA=avx2)
enum class Route { kOwnFp32, kOwnPairs, kOneDnn, kBlas, kPortable, kOwnAvx2 };

struct RouteChoice {
  Route route;
  const char* why;
};

// FASTNST_GRAM_FP32=own|blas pins the fp32 route (default: own: on AMD Zen 5 2.5-3.3x MKL's
// sgemm forward at every shape of the benchmark (README); on the Intel Xeon with AMX of issue
// 13, 1.31x forward as a geometric mean, but a thin margin at relu5_1; AVX2 is unmeasured on a
// real AVX2 CPU). Both variables are checked at every Gram call (check_gram_env).
Route fp32_route() {
  static const Route r = [] {
    const char* v = std::getenv("FASTNST_GRAM_FP32");
    if (v && std::strcmp(v, "blas") == 0) return Route::kBlas;
    TORCH_CHECK(!v || !*v || std::strcmp(v, "own") == 0, "fastnst: FASTNST_GRAM_FP32 must be 'own' or 'blas', got '", v, "'");
    return Route::kOwnFp32;
  }();
  return r;
}

// FASTNST_GRAM_BF16=own|onednn pins the bf16 forward where the CPU has AVX512-BF16 (default:
// oneDNN on AMX CPUs, fastnst's pairs SYRK otherwise), so each route is testable on either.
const char* bf16_pin() {
  static const char* pin = [] {
    const char* v = std::getenv("FASTNST_GRAM_BF16");
    if (!v || !*v) return "";
    TORCH_CHECK(std::strcmp(v, "own") == 0 || std::strcmp(v, "onednn") == 0,
                "fastnst: FASTNST_GRAM_BF16 must be 'own' or 'onednn', got '", v, "'");
    return std::strcmp(v, "own") == 0 ? "own" : "onednn";
  }();
  return pin;
}

// Reads (and so validates) both pins, whatever route the call takes.
void check_gram_env() {
  (void)fp32_route();
  (void)bf16_pin();
}

// The part of the choice both directions share: float64, the levels below AVX-512, float32.
bool shared_route(at::ScalarType dt, bool forward, RouteChoice& rc) {
  const bool blas = fp32_route() == Route::kBlas && dt == at::kFloat;
  if (dt == at::kDouble) {
    rc = {Route::kPortable, "float64: ATen bmm in float64"};
  } else if (isa() < Isa::kAvx2) {
    rc = {Route::kPortable, "no AVX2 in use: ATen bmm in fp32 (MKL picks its own ISA)"};
  } else if (blas) {
    rc = {Route::kBlas, "FASTNST_GRAM_FP32=blas: MKL sgemm"};
  } else if (!has_avx512()) {
    rc = {Route::kOwnAvx2, forward ? "AVX2: fastnst's fp32 SYRK on 4 x 16 FMA tiles (16-bit widened exactly)"
                                   : "AVX2: fastnst's fp32 GEMM on 6 x 16 FMA tiles (16-bit widened exactly)"};
  } else if (dt == at::kFloat) {
    rc = {Route::kOwnFp32, forward ? "AVX-512: fastnst's fp32 SYRK (half the GEMM's flops)"
                                   : "AVX-512: fastnst's fp32 GEMM"};
  } else {
    return false;
  }
  return true;
}

RouteChoice forward_route(at::ScalarType dt) {
  RouteChoice rc{};
  if (shared_route(dt, true, rc)) return rc;
  if (dt == at::kBFloat16) {
    const char* pin = has_avx512bf16() ? bf16_pin() : "";
    if (std::strcmp(pin, "onednn") == 0)
      return {Route::kOneDnn, "FASTNST_GRAM_BF16=onednn: oneDNN bf16 matmul (fp32 accumulation)"};
    if (has_amx() && std::strcmp(pin, "own") != 0)
      return {Route::kOneDnn, "AMX-BF16: oneDNN bf16 matmul on AMX tiles (fp32 accumulation)"};
    if (has_avx512bf16()) return {Route::kOwnPairs, "AVX512-BF16: fastnst's SYRK on bf16 pairs (vdpbf16ps, fp32 accumulation)"};
    return {Route::kOwnFp32, "AVX-512 without BF16: widened exactly to fp32, fastnst's SYRK"};
  }
  return {Route::kOwnFp32, "float16 (no fp16 dot product to fp32 on AVX-512): widened exactly to fp32, fastnst's SYRK"};
}

RouteChoice backward_route(at::ScalarType dt) {
  RouteChoice rc{};
  if (shared_route(dt, false, rc)) return rc;
  if (dt == at::kBFloat16 && has_avx512bf16())
    return {Route::kOneDnn, has_amx() ? "AMX-BF16: oneDNN bf16 matmul on AMX tiles (fp32 accumulation)"
                                      : "AVX512-BF16: oneDNN bf16 matmul (vdpbf16ps, fp32 accumulation)"};
  return {Route::kOwnFp32, "16-bit without a bf16/fp16 dot product in use: widened exactly to fp32, fastnst's GEMM"};
}

// G's lower triangle replaced by its upper one: a GEMM's G[i, j] and G[j, i] may sum in
// different orders, the op's G is exactly symmetric.
void mirror_upper(at::Tensor& out) {
  const int64_t C = out.size(1);
  if (C < 2) return;
  at::Tensor lower = at::tril(at::ones({C, C}, out.options().dtype(at::kBool)), -1);
  out.copy_(at::where(lower, out.transpose(1, 2), out));
}

}  // namespace

at::Tensor gram_cpu(const at::Tensor& x, double scale) {
  check_isa();
  check_gram_env();
  check_input(x, "x");
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  at::Tensor out = at::empty({B, C, C}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  if (L == 0) return out.zero_();
  const Route route = forward_route(x.scalar_type()).route;
#if defined(FASTNST_X86)
  if (route == Route::kOwnAvx2) {
    switch (x.scalar_type()) {
      case at::kFloat: gram_forward_avx512<float, Avx2Panel>(x, scale, out); break;
      case at::kHalf: gram_forward_avx512<c10::Half, Avx2Panel>(x, scale, out); break;
      default: gram_forward_avx512<c10::BFloat16, Avx2Panel>(x, scale, out); break;
    }
    return out;
  }
  if (route == Route::kOwnFp32 || route == Route::kOwnPairs) {
    switch (x.scalar_type()) {
      case at::kFloat: gram_forward_avx512<float>(x, scale, out); break;
      case at::kHalf: gram_forward_avx512<c10::Half>(x, scale, out); break;
      default:
        if (route == Route::kOwnPairs)
          gram_forward_avx512<c10::BFloat16, PairPanel>(x, scale, out);
        else
          gram_forward_avx512<c10::BFloat16>(x, scale, out);
        break;
    }
    return out;
  }
#endif
  if (route == Route::kOneDnn || route == Route::kBlas) {
    // One batched GEMM in x's dtype, the scale applied to the fp32 accumulators.
    at::baddbmm_out(out, out, x, x.transpose(1, 2), /*beta=*/0, /*alpha=*/scale);
    mirror_upper(out);
    return out;
  }
  // Portable path: one batched GEMM in the accumulation dtype.
  const at::Tensor xa = x.to(acc_type(x.scalar_type()));
  out.copy_(at::bmm(xa, xa.transpose(1, 2)).mul_(scale));
  mirror_upper(out);
  return out;
}

at::Tensor gram_backward_cpu(const at::Tensor& grad, const at::Tensor& x, double scale) {
  check_isa();
  check_gram_env();
  check_input(x, "x");
  TORCH_CHECK(grad.device().is_cpu(), "fastnst::gram_backward (cpu): grad must be a CPU tensor");
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()),
              "fastnst::gram_backward: grad must be a floating-point tensor, got ", grad.scalar_type());
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == B && grad.size(1) == C && grad.size(2) == C,
              "fastnst::gram_backward: grad must be [B, C, C] = [", B, ", ", C, ", ", C,
              "], got ", grad.sizes());
  const auto acc = acc_type(x.scalar_type());
  at::Tensor out = empty_grad_like(x, x.scalar_type());
  if (out.numel() == 0) return out;
  // S = s (dG + dG^T): C x C per sample, tiny next to F (a stride-0 grad, as G.sum() gives, is
  // read in place by these two small ops).
  at::Tensor g = grad.to(acc);
  at::Tensor S = (g + g.transpose(1, 2)).mul_(scale).contiguous();
  const Route route = backward_route(x.scalar_type()).route;
#if defined(FASTNST_X86)
  if (route == Route::kOwnFp32 || route == Route::kOwnAvx2) {
    at::Tensor xf = x;
    if (!channels_innermost(xf) && !(xf.stride(2) == 1 || L == 1)) xf = xf.contiguous();
    if (xf.scalar_type() != at::kFloat) {
      // Widened into a retained buffer in x's layout (a fresh one costs its page faults).
      at::Tensor w = rule_output(xf, at::kFloat, OutSlot::kGramWiden);
      w.copy_(xf);
      xf = w;
    }
    at::Tensor outf = out.scalar_type() == at::kFloat ? out : rule_output(x, at::kFloat, OutSlot::kGramWidenOut);
    if (route == Route::kOwnAvx2)
      gram_backward_avx512<true>(S, xf, outf);
    else
      gram_backward_avx512<false>(S, xf, outf);
    if (!outf.is_same(out)) out.copy_(outf);
    return out;
  }
#endif
  if (route == Route::kOneDnn || route == Route::kBlas) {
    // S rounded to x's dtype once (bf16: as eager autocast's dG is), one GEMM with fp32
    // accumulation written straight into the gradient in the layout rule's strides.
    const at::Tensor Sx = S.to(x.scalar_type());
    if (channels_innermost(x)) {
      at::Tensor outT = out.transpose(1, 2);  // [B, L, C], contiguous
      at::bmm_out(outT, x.transpose(1, 2), Sx);  // F^T S = (S F)^T, S symmetric
    } else {
      at::bmm_out(out, Sx, x.stride(2) == 1 || L == 1 ? x : x.contiguous());
    }
    return out;
  }
  out.copy_(at::bmm(S, x.to(acc)));
  return out;
}

// One line per (op, dtype): "gram<TAB>float32<TAB>route<TAB>why", for fastnst info.
std::string gram_routes() {
  static const char* names[] = {"own-fp32", "own-bf16-pairs", "onednn", "mkl", "aten", "own-avx2"};
  std::string text;
  const std::pair<at::ScalarType, const char*> dtypes[] = {
      {at::kFloat, "float32"}, {at::kBFloat16, "bfloat16"}, {at::kHalf, "float16"}, {at::kDouble, "float64"}};
  for (const char* op : {"gram", "gram_backward"})
    for (const auto& [dt, dname] : dtypes) {
      const RouteChoice rc = std::strcmp(op, "gram") == 0 ? forward_route(dt) : backward_route(dt);
      text += std::string(op) + "\t" + dname + "\t" + names[static_cast<int>(rc.route)] + "\t" + rc.why + "\n";
    }
  return text;
}

TORCH_LIBRARY_IMPL(fastnst, CPU, m) {
  m.impl("gram", &gram_cpu);
  m.impl("gram_backward", &gram_backward_cpu);
}

}  // namespace cpu
}  // namespace fastnst
