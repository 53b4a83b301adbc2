#pragma once
// AVX-512 building blocks shared by the CPU kernels: a register-blocked GEMM microkernel
// and a packing routine that transposes (and widens to fp32) a panel of a matrix.
//
// Everything here is compiled with __attribute__((target("avx512f"))) and must only be
// called after cpu::has_avx512() returned true.

#if defined(FASTNST_X86)
#include <immintrin.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace fastnst {
namespace cpu {
namespace avx512 {

#define FASTNST_AVX512 __attribute__((target("avx512f"), always_inline)) inline
#define FASTNST_AVX512_FN __attribute__((target("avx512f")))

// ---- loading 16 elements as fp32 --------------------------------------------------------
FASTNST_AVX512 __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
FASTNST_AVX512 __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
FASTNST_AVX512 __m512 load16(const c10::BFloat16* p) {
  // bf16 is the top half of an fp32: widen to 32 bits and shift into place.
  __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

// ---- 16 x 16 transpose -------------------------------------------------------------------
// r[i] holds row i; afterwards r[j] holds column j. Three stages: 32-bit interleave inside
// 128-bit lanes, 64-bit shuffles inside lanes, then a 4 x 4 transpose of the 128-bit lanes.
FASTNST_AVX512 void transpose16(__m512 r[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // r[4g + q] now holds, in lane L, rows 4g..4g+3 of column 4L + q.
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g) {
    r[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    r[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
    r[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    r[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
  }
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    __m512 s0 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0x88);
    __m512 s1 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0xDD);
    __m512 s2 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0x88);
    __m512 s3 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0xDD);
    t[q] = _mm512_shuffle_f32x4(s0, s2, 0x88);       // column q
    t[8 + q] = _mm512_shuffle_f32x4(s0, s2, 0xDD);   // column 8 + q
    t[4 + q] = _mm512_shuffle_f32x4(s1, s3, 0x88);   // column 4 + q
    t[12 + q] = _mm512_shuffle_f32x4(s1, s3, 0xDD);  // column 12 + q
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// Strip packing: P[(c / 16) * ss + k * 16 + c % 16] = float(X[c * sc + k * sk]) for c < rows,
// k < cols, zero for rows <= c < round_up(rows, 16). Each strip of 16 rows of X becomes a
// contiguous (cols x 16) panel, so a GEMM microkernel reads it with unit stride.
template <typename T>
FASTNST_AVX512_FN void pack_strips(const T* X, int64_t sc, int64_t sk, int64_t rows, int64_t cols,
                                   float* P, int64_t ss) {
  const int64_t full = rows / 16 * 16;
  if (sk == 1) {
    // Rows of X are contiguous: 16 x 16 register transposes.
    for (int64_t c = 0; c < full; c += 16) {
      float* strip = P + (c / 16) * ss;
      int64_t k = 0;
      for (; k + 16 <= cols; k += 16) {
        __m512 r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) r[i] = load16(X + (c + i) * sc + k);
        transpose16(r);
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) _mm512_storeu_ps(strip + (k + i) * 16, r[i]);
      }
      for (; k < cols; ++k)
        for (int i = 0; i < 16; ++i) strip[k * 16 + i] = static_cast<float>(X[(c + i) * sc + k]);
    }
  } else if (sc == 1) {
    // Columns of X are contiguous (channels-last): widening copies of 16 elements.
    for (int64_t k = 0; k < cols; ++k) {
      const T* src = X + k * sk;
      for (int64_t c = 0; c < full; c += 16)
        _mm512_storeu_ps(P + (c / 16) * ss + k * 16, load16(src + c));
    }
  } else {
    for (int64_t c = 0; c < full; ++c)
      for (int64_t k = 0; k < cols; ++k)
        P[(c / 16) * ss + k * 16 + c % 16] = static_cast<float>(X[c * sc + k * sk]);
  }
  if (full < rows) {
    float* strip = P + (full / 16) * ss;
    for (int64_t k = 0; k < cols; ++k)
      for (int64_t i = 0; i < 16; ++i)
        strip[k * 16 + i] = full + i < rows ? static_cast<float>(X[(full + i) * sc + k * sk]) : 0.f;
  }
}

// ---- GEMM microkernel ---------------------------------------------------------------------
// O[r, 16v + j] (+)= sum_k A[r * a_rs + k * a_ks] * B[k * ldb + v * b_vs + j]
// for r < MR, v < NV, j < 16 (the last vector is masked by `mask`, when MASKED).
// b_vs = 16 reads B as a plain row-major matrix; a larger b_vs reads strip-packed panels.
// MR * NV fp32 accumulators live in zmm registers; each k costs NV vector loads of B and MR
// broadcasts of A for MR * NV FMAs.
template <int MR, int NV, bool MASKED>
FASTNST_AVX512_FN void microkernel(int64_t K, const float* __restrict A, int64_t a_rs, int64_t a_ks,
                                   const float* __restrict B, int64_t ldb, int64_t b_vs,
                                   float* __restrict O, int64_t ldo, __mmask16 mask,
                                   bool accumulate) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();

  for (int64_t k = 0; k < K; ++k) {
    __m512 b[NV];
    const float* bk = B + k * ldb;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      if (MASKED && v == NV - 1)
        b[v] = _mm512_maskz_loadu_ps(mask, bk + v * b_vs);
      else
        b[v] = _mm512_loadu_ps(bk + v * b_vs);
    }
    const float* ak = A + k * a_ks;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      __m512 a = _mm512_set1_ps(ak[r * a_rs]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
    }
  }

#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    float* o = O + r * ldo;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      if (MASKED && v == NV - 1) {
        __m512 x = acc[r][v];
        if (accumulate) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, o + 16 * v));
        _mm512_mask_storeu_ps(o + 16 * v, mask, x);
      } else {
        __m512 x = acc[r][v];
        if (accumulate) x = _mm512_add_ps(x, _mm512_loadu_ps(o + 16 * v));
        _mm512_storeu_ps(o + 16 * v, x);
      }
    }
  }
}

// Dispatch on the number of rows left (1..MR) so every call runs a fully unrolled kernel.
template <int MR, int NV, bool MASKED>
FASTNST_AVX512_FN void microkernel_rows(int64_t rows, int64_t K, const float* A, int64_t a_rs,
                                        int64_t a_ks, const float* B, int64_t ldb, int64_t b_vs,
                                        float* O, int64_t ldo, __mmask16 mask, bool accumulate) {
  if constexpr (MR == 0) {
    return;
  } else {
    if (rows >= MR) {
      microkernel<MR, NV, MASKED>(K, A, a_rs, a_ks, B, ldb, b_vs, O, ldo, mask, accumulate);
    } else {
      microkernel_rows<MR - 1, NV, MASKED>(rows, K, A, a_rs, a_ks, B, ldb, b_vs, O, ldo, mask,
                                           accumulate);
    }
  }
}

// O (M x N, row stride ldo) (+)= A (M x K, strides a_rs, a_ks) * B (K x N, row stride ldb).
// Tiles of MR rows x NV*16 columns; the column remainder is masked.
template <int MR, int NV>
FASTNST_AVX512_FN void gemm_block(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs,
                                  int64_t a_ks, const float* B, int64_t ldb, float* O, int64_t ldo,
                                  bool accumulate) {
  constexpr int64_t NB = 16 * NV;
  for (int64_t n0 = 0; n0 < N; n0 += NB) {
    const int64_t nw = std::min<int64_t>(NB, N - n0);
    for (int64_t m0 = 0; m0 < M; m0 += MR) {
      const int64_t mr = std::min<int64_t>(MR, M - m0);
      const float* a = A + m0 * a_rs;
      float* o = O + m0 * ldo + n0;
      if (nw == NB) {
        microkernel_rows<MR, NV, false>(mr, K, a, a_rs, a_ks, B + n0, ldb, 16, o, ldo, 0xFFFF, accumulate);
      } else {
        // Remainder columns: fewer, masked vectors.
        const int64_t nv = (nw + 15) / 16;
        const __mmask16 mask = static_cast<__mmask16>((1u << (nw - 16 * (nv - 1))) - 1u);
        switch (nv) {
          case 1: microkernel_rows<MR, 1, true>(mr, K, a, a_rs, a_ks, B + n0, ldb, 16, o, ldo, mask, accumulate); break;
          case 2: if constexpr (NV >= 2) microkernel_rows<MR, 2, true>(mr, K, a, a_rs, a_ks, B + n0, ldb, 16, o, ldo, mask, accumulate); break;
          case 3: if constexpr (NV >= 3) microkernel_rows<MR, 3, true>(mr, K, a, a_rs, a_ks, B + n0, ldb, 16, o, ldo, mask, accumulate); break;
          default: if constexpr (NV >= 4) microkernel_rows<MR, 4, true>(mr, K, a, a_rs, a_ks, B + n0, ldb, 16, o, ldo, mask, accumulate); break;
        }
      }
    }
  }
}


// ---- bfloat16 pairs (AVX512-BF16) -----------------------------------------------------------
// vdpbf16ps multiplies 32 bf16 pairs exactly (a bf16 product fits fp32) and adds both products
// of each pair to an fp32 lane: acc[i] += a[2i] b[2i] + a[2i+1] b[2i+1] (fp32 additions, rounded
// to nearest even; subnormals read and written as zero). Panels for it hold pairs of
// consecutive reduction elements as one 32-bit word (low half the even element), so a GEMM
// tile is the fp32 one above with half the k steps, each doing twice the multiply-adds.
// Compiled for AVX512-BF16; call only where cpu::has_avx512bf16().
#define FASTNST_BF16DP __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), always_inline)) inline
#define FASTNST_BF16DP_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// Pair-strip packing: P[(c / 16) * ss + kp * 16 + c % 16] = bits(X[c, 2 kp]) | bits(X[c, 2 kp + 1]) << 16
// (element (c, k) at X[c * sc + k * sk]) for c < rows, kp < ceil(cols / 2); the partner of an odd
// last column and the rows from `rows` to round_up(rows, 16) are 0.
FASTNST_BF16DP_FN inline void pack_pair_strips(const c10::BFloat16* Xb, int64_t sc, int64_t sk, int64_t rows,
                                               int64_t cols, uint32_t* P, int64_t ss) {
  const uint16_t* X = reinterpret_cast<const uint16_t*>(Xb);
  const int64_t full = rows / 16 * 16, pairs = (cols + 1) / 2;
  auto pair = [&](int64_t c, int64_t kp) -> uint32_t {
    if (c >= rows) return 0u;
    const uint32_t lo = X[c * sc + 2 * kp * sk];
    const uint32_t hi = 2 * kp + 1 < cols ? X[c * sc + (2 * kp + 1) * sk] : 0u;
    return lo | (hi << 16);
  };
  if (sk == 1) {
    // Rows of X are contiguous: 16 words of a row are 16 pairs; 16 x 16 word transposes.
    const int64_t whole = cols / 32;  // blocks of 16 pairs read without a partial pair
    for (int64_t c = 0; c < full; c += 16) {
      uint32_t* strip = P + (c / 16) * ss;
      for (int64_t blk = 0; blk < whole; ++blk) {
        __m512 r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) r[i] = _mm512_castsi512_ps(_mm512_loadu_si512(X + (c + i) * sc + 32 * blk));
        transpose16(r);
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) _mm512_storeu_si512(strip + (16 * blk + i) * 16, _mm512_castps_si512(r[i]));
      }
      for (int64_t kp = 16 * whole; kp < pairs; ++kp)
        for (int i = 0; i < 16; ++i) strip[kp * 16 + i] = pair(c + i, kp);
    }
  } else if (sc == 1) {
    // Columns of X are contiguous (channels-last): two rows of 16 elements interleave into 16 pairs.
    for (int64_t kp = 0; kp < pairs; ++kp) {
      const uint16_t* lo = X + 2 * kp * sk;
      const bool has_hi = 2 * kp + 1 < cols;
      for (int64_t c = 0; c < full; c += 16) {
        __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo + c)));
        if (has_hi) {
          const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo + sk + c)));
          v = _mm512_or_si512(v, _mm512_slli_epi32(h, 16));
        }
        _mm512_storeu_si512(P + (c / 16) * ss + kp * 16, v);
      }
    }
  } else {
    for (int64_t c = 0; c < full; ++c)
      for (int64_t kp = 0; kp < pairs; ++kp) P[(c / 16) * ss + kp * 16 + c % 16] = pair(c, kp);
  }
  if (full < rows) {
    uint32_t* strip = P + (full / 16) * ss;
    for (int64_t kp = 0; kp < pairs; ++kp)
      for (int64_t i = 0; i < 16; ++i) strip[kp * 16 + i] = pair(full + i, kp);
  }
}

// O[r, 16v + j] (+)= sum_kp dot(A pair (r, kp), B pair (kp, 16v + j)), A pair at A[r * a_rs + kp * a_ks],
// B's 16 pairs at B[kp * ldb + v * b_vs]: the fp32 microkernel on pairs (full tiles only).
template <int MR, int NV>
FASTNST_BF16DP_FN void dp_microkernel(int64_t KP, const uint32_t* __restrict A, int64_t a_rs, int64_t a_ks,
                                      const uint32_t* __restrict B, int64_t ldb, int64_t b_vs,
                                      float* __restrict O, int64_t ldo, bool accumulate) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < KP; ++kp) {
    __m512bh b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(B + kp * ldb + v * b_vs);
    const uint32_t* ak = A + kp * a_ks;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(ak[r * a_rs]));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, b[v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    float* o = O + r * ldo;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      __m512 x = acc[r][v];
      if (accumulate) x = _mm512_add_ps(x, _mm512_loadu_ps(o + 16 * v));
      _mm512_storeu_ps(o + 16 * v, x);
    }
  }
}

template <int MR, int NV>
FASTNST_BF16DP_FN void dp_microkernel_rows(int64_t rows, int64_t KP, const uint32_t* A, int64_t a_rs,
                                           int64_t a_ks, const uint32_t* B, int64_t ldb, int64_t b_vs, float* O,
                                           int64_t ldo, bool accumulate) {
  if constexpr (MR == 0) {
    return;
  } else {
    if (rows >= MR)
      dp_microkernel<MR, NV>(KP, A, a_rs, a_ks, B, ldb, b_vs, O, ldo, accumulate);
    else
      dp_microkernel_rows<MR - 1, NV>(rows, KP, A, a_rs, a_ks, B, ldb, b_vs, O, ldo, accumulate);
  }
}


// O (M x N, row stride ldo) = A (M x KP pairs: pair (r, kp) at A[r * a_rs + kp * a_ks]) * B (KP x N
// pairs, row stride ldb), in tiles of MR rows x 16 NV columns. Columns are computed in whole
// vectors: B's and O's rows must hold round_up(N, 16) elements (B's padding read, O's written).
template <int MR, int NV>
FASTNST_BF16DP_FN void dp_gemm_block(int64_t M, int64_t N, int64_t KP, const uint32_t* A, int64_t a_rs,
                                     int64_t a_ks, const uint32_t* B, int64_t ldb, float* O, int64_t ldo) {
  constexpr int64_t NB = 16 * NV;
  for (int64_t n0 = 0; n0 < N; n0 += NB) {
    const int64_t nv = std::min<int64_t>(NV, (N - n0 + 15) / 16);
    for (int64_t m0 = 0; m0 < M; m0 += MR) {
      const int64_t mr = std::min<int64_t>(MR, M - m0);
      const uint32_t* a = A + m0 * a_rs;
      float* o = O + m0 * ldo + n0;
      switch (nv) {
        case 1: dp_microkernel_rows<MR, 1>(mr, KP, a, a_rs, a_ks, B + n0, ldb, 16, o, ldo, false); break;
        case 2: if constexpr (NV >= 2) dp_microkernel_rows<MR, 2>(mr, KP, a, a_rs, a_ks, B + n0, ldb, 16, o, ldo, false); break;
        case 3: if constexpr (NV >= 3) dp_microkernel_rows<MR, 3>(mr, KP, a, a_rs, a_ks, B + n0, ldb, 16, o, ldo, false); break;
        default: if constexpr (NV >= 4) dp_microkernel_rows<MR, 4>(mr, KP, a, a_rs, a_ks, B + n0, ldb, 16, o, ldo, false); break;
      }
    }
  }
}

}  // namespace avx512
}  // namespace cpu
}  // namespace fastnst
#endif  // FASTNST_X86
