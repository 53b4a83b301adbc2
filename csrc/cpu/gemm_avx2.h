#pragma once
// AVX2 + FMA building blocks for CPUs without AVX-512 (and FASTNST_CPU_ISA=avx2): the fp32
// GEMM microkernel of gemm_avx512.h with 8-wide vectors, reading the same strip-packed panels
// (a 16-column strip is two ymm vectors), and the strip packing as plain loops.
//
// Everything here is compiled with __attribute__((target("avx2,fma"))) and must only be called
// where cpu::isa() >= Isa::kAvx2.

#if defined(FASTNST_X86)
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace fastnst {
namespace cpu {
namespace avx2 {

#define FASTNST_AVX2_FN __attribute__((target("avx2,fma")))

// Lanes < n of an 8-lane mask for _mm256_maskload_ps / _mm256_maskstore_ps (n <= 8).
FASTNST_AVX2_FN inline __m256i lanes(int64_t n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), idx);
}

// O[r, 8v + j] (+)= sum_k A[r * a_rs + k * a_ks] * B[k * ldb + 8v + j] for r < MR, v < NV, j < 8;
// MASKED: only the last vector's lanes in `mask` are read and written. MR * NV accumulators.
template <int MR, int NV, bool MASKED>
FASTNST_AVX2_FN void microkernel(int64_t K, const float* __restrict A, int64_t a_rs, int64_t a_ks,
                                 const float* __restrict B, int64_t ldb, float* __restrict O, int64_t ldo,
                                 __m256i mask, bool accumulate) {
  __m256 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 b[NV];
    const float* bk = B + k * ldb;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      b[v] = MASKED && v == NV - 1 ? _mm256_maskload_ps(bk + 8 * v, mask) : _mm256_loadu_ps(bk + 8 * v);
    const float* ak = A + k * a_ks;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_broadcast_ss(ak + r * a_rs);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    float* o = O + r * ldo;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      __m256 x = acc[r][v];
      if (MASKED && v == NV - 1) {
        if (accumulate) x = _mm256_add_ps(x, _mm256_maskload_ps(o + 8 * v, mask));
        _mm256_maskstore_ps(o + 8 * v, mask, x);
      } else {
        if (accumulate) x = _mm256_add_ps(x, _mm256_loadu_ps(o + 8 * v));
        _mm256_storeu_ps(o + 8 * v, x);
      }
    }
  }
}

template <int MR, int NV, bool MASKED>
FASTNST_AVX2_FN void microkernel_rows(int64_t rows, int64_t K, const float* A, int64_t a_rs, int64_t a_ks,
                                      const float* B, int64_t ldb, float* O, int64_t ldo, __m256i mask,
                                      bool accumulate) {
  if constexpr (MR == 0) {
    return;
  } else {
    if (rows >= MR)
      microkernel<MR, NV, MASKED>(K, A, a_rs, a_ks, B, ldb, O, ldo, mask, accumulate);
    else
      microkernel_rows<MR - 1, NV, MASKED>(rows, K, A, a_rs, a_ks, B, ldb, O, ldo, mask, accumulate);
  }
}

// O (M x N, row stride ldo) (+)= A (M x K, strides a_rs, a_ks) * B (K x N, row stride ldb), in
// tiles of MR rows x 16 columns; the column remainder is masked.
template <int MR>
FASTNST_AVX2_FN void gemm_block(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_ks,
                                const float* B, int64_t ldb, float* O, int64_t ldo, bool accumulate) {
  for (int64_t n0 = 0; n0 < N; n0 += 16) {
    const int64_t nw = std::min<int64_t>(16, N - n0);
    for (int64_t m0 = 0; m0 < M; m0 += MR) {
      const int64_t mr = std::min<int64_t>(MR, M - m0);
      const float* a = A + m0 * a_rs;
      float* o = O + m0 * ldo + n0;
      if (nw == 16)
        microkernel_rows<MR, 2, false>(mr, K, a, a_rs, a_ks, B + n0, ldb, o, ldo, lanes(8), accumulate);
      else if (nw > 8)
        microkernel_rows<MR, 2, true>(mr, K, a, a_rs, a_ks, B + n0, ldb, o, ldo, lanes(nw - 8), accumulate);
      else
        microkernel_rows<MR, 1, true>(mr, K, a, a_rs, a_ks, B + n0, ldb, o, ldo, lanes(nw), accumulate);
    }
  }
}

// gemm_avx512.h's pack_strips (the same panel layout) as plain loops, compiled for AVX2.
template <typename T>
FASTNST_AVX2_FN void pack_strips(const T* X, int64_t sc, int64_t sk, int64_t rows, int64_t cols, float* P,
                                 int64_t ss) {
  const int64_t strips = (rows + 15) / 16;
  for (int64_t s = 0; s < strips; ++s) {
    float* strip = P + s * ss;
    const int64_t c0 = 16 * s, n = std::min<int64_t>(16, rows - c0);
    if (sc == 1) {
      for (int64_t k = 0; k < cols; ++k) {
        const T* src = X + k * sk + c0;
        for (int64_t i = 0; i < n; ++i) strip[k * 16 + i] = static_cast<float>(src[i]);
        for (int64_t i = n; i < 16; ++i) strip[k * 16 + i] = 0.f;
      }
    } else {
      // Row by row (unit stride reads along k when sk == 1), 16 lanes of a panel row apart.
      for (int64_t i = 0; i < 16; ++i) {
        if (i < n) {
          const T* src = X + (c0 + i) * sc;
          for (int64_t k = 0; k < cols; ++k) strip[k * 16 + i] = static_cast<float>(src[k * sk]);
        } else {
          for (int64_t k = 0; k < cols; ++k) strip[k * 16 + i] = 0.f;
        }
      }
    }
  }
}

}  // namespace avx2
}  // namespace cpu
}  // namespace fastnst
#endif  // FASTNST_X86
