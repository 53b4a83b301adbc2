// Style swap on the CPU (Chen & Schmidt 2016, "Fast Patch-based Style Transfer of Arbitrary
// Style"): exact normalised-cross-correlation patch matching in bounded memory, then overlap
// averaging of the chosen (unnormalised) style patches. Contract in csrc/registration.cpp.
//
// Matching without the patch GEMM. The public algorithm scores every content patch against
// every style patch with a convolution whose K is C*k*k. The same scores come from inner
// products of single pixels: with G(u, v) = <content pixel u, style pixel v> (K = C),
//
//     <content patch p, style patch q> = sum over (dy, dx) < k of G(p + (dy, dx), q + (dy, dx)),
//
// a sum along k*k shifted diagonals of G. G costs 2 C flops per pixel pair instead of
// 2 C k^2 per patch pair: 9x fewer for 3x3 patches at stride 1 (minus the halo below).
//
// Tiling. Both maps are cut into blocks of patches (a x b content patches, c x d style
// patches); a block of patches covers a block of pixels that is k - 1 larger (the halo). Style
// pixel blocks are packed once ([C][pixels], fp32); each thread takes content blocks, packs
// one, and for every style block computes the pixel tile G = A^T B with the AVX-512 GEMM
// microkernel (csrc/cpu/gemm_avx512.h), sums its diagonals into the block's scores (16-lane
// vectors along a row of style patches at stride 1), scales them by the style patches'
// inverse norms and folds them into a running (best score, lowest index) per content patch.
// Only one G tile per thread exists at a time (576 x 832 fp32 for k <= 17): memory is
// O(content + style). With 24 x 24 content and 24 x 34 style pixel blocks and 3 x 3 patches
// the halo costs (24/22)^2 (24 * 34)/(22 * 32) = 1.38x, so the pixel GEMM does 6.5x fewer
// flops than the patch GEMM; it runs at ~190 GFLOP/s on this project's 2-core machine.
//
// Ties. Every G entry is the same fp32 FMA chain over the channels and every score sums the
// k*k diagonals in the same order, so equal style patches give bit-equal scores; the running
// argmax keeps the lowest index among equal maxima; a NaN score never wins. Inverse norms are
// 1 / (||q|| + eps), and 0 for an all-zero patch, which therefore scores 0 (never NaN, even
// with eps = 0).
//
// float64 (gradcheck/tests) and CPUs without AVX-512 run the same tiling with scalar loops
// (fp64 accumulation for fp64 input); on AVX2 CPUs the pixel GEMM takes AVX2 + FMA tiles. float16/bfloat16 inputs are widened to fp32 when packed.
//
// Reconstruction: per (sample, channel) plane, each content patch adds its chosen style patch;
// every pixel is then divided by its cover count, which is separable (rows x columns covered),
// and pixels no patch covers (stride > patch size, or a remainder row/column) are 0.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu_features.h"
#include "gemm_avx2.h"
#include "gemm_avx512.h"

namespace fastnst {
namespace cpu {
namespace {

// Pixel blocks (a block is never smaller than one patch). Larger blocks waste less on the
// halo but make G tiles that leave the L2; these measured best for 256-channel maps here
// (24 x 24 content, 24 x 34 style pixels: G tiles of 576 x 816).
constexpr int64_t kContentBlock = 24;
constexpr int64_t kStyleBlockRows = 24;
constexpr int64_t kStyleBlockCols = 34;
constexpr int64_t kMinPatches = 8;

struct Grid {
  int64_t k, s;
  int64_t n;      // patches per row or column of the map
  int64_t per;    // patches per block side
  int64_t blocks; // blocks along this axis
  int64_t count(int64_t blk) const { return std::min(per, n - blk * per); }
  int64_t pixels(int64_t cnt) const { return (cnt - 1) * s + k; }
  int64_t first_pixel(int64_t blk) const { return blk * per * s; }
};

Grid make_grid(int64_t size, int64_t k, int64_t s, int64_t block_pixels) {
  Grid g{k, s, (size - k) / s + 1, 1, 0};
  // At least kMinPatches patches per side: for large patches a block of ~24 pixels would hold
  // one patch and the pixel GEMM would cost k^2 times the patch GEMM; 8 keeps it cheaper up
  // to k ~ 40 (the G tile then grows to ((7 s + k)^2)^2 floats per thread).
  g.per = std::max<int64_t>(kMinPatches, (block_pixels - k) / s + 1);
  g.per = std::min(g.per, g.n);
  g.blocks = (g.n + g.per - 1) / g.per;
  return g;
}

struct Block {
  int64_t rows, cols;      // patches
  int64_t prow, pcol;      // pixels
  int64_t y0, x0;          // first pixel
  int64_t q0i, q0j;        // first patch
};

Block block_of(const Grid& gy, const Grid& gx, int64_t bi, int64_t bj) {
  Block b;
  b.rows = gy.count(bi);
  b.cols = gx.count(bj);
  b.prow = gy.pixels(b.rows);
  b.pcol = gx.pixels(b.cols);
  b.y0 = gy.first_pixel(bi);
  b.x0 = gx.first_pixel(bj);
  b.q0i = bi * gy.per;
  b.q0j = bj * gx.per;
  return b;
}

inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

// P[c * ld + r * blk.pcol + x] = X[c, y0 + r, x0 + x] for the pixel block, zero-padded to ld.
template <typename T, typename A>
void pack_block(const T* X, int64_t C, int64_t sc, int64_t sh, int64_t sw, const Block& blk,
                A* P, int64_t ld) {
  const int64_t np = blk.prow * blk.pcol;
  for (int64_t c = 0; c < C; ++c) {
    A* dst = P + c * ld;
    const T* src = X + c * sc + blk.y0 * sh + blk.x0 * sw;
    for (int64_t r = 0; r < blk.prow; ++r)
      for (int64_t x = 0; x < blk.pcol; ++x)
        dst[r * blk.pcol + x] = static_cast<A>(src[r * sh + x * sw]);
    for (int64_t i = np; i < ld; ++i) dst[i] = A(0);
  }
}

// The same block as channel pairs for the bf16 pixel GEMM (gemm_avx512.h, "bfloat16 pairs"):
// P[cp * ld + r * blk.pcol + x] = bits(X[2 cp, ...]) | bits(X[2 cp + 1, ...]) << 16, the partner of
// an odd last channel 0, zero-padded to ld.
inline void pack_block_pairs(const c10::BFloat16* Xb, int64_t C, int64_t sc, int64_t sh, int64_t sw,
                             const Block& blk, uint32_t* P, int64_t ld) {
  const uint16_t* X = reinterpret_cast<const uint16_t*>(Xb);
  const int64_t np = blk.prow * blk.pcol;
  for (int64_t cp = 0; cp < (C + 1) / 2; ++cp) {
    uint32_t* dst = P + cp * ld;
    const uint16_t* lo = X + 2 * cp * sc + blk.y0 * sh + blk.x0 * sw;
    const bool has_hi = 2 * cp + 1 < C;
    for (int64_t r = 0; r < blk.prow; ++r)
      for (int64_t x = 0; x < blk.pcol; ++x) {
        const int64_t o = r * sh + x * sw;
        dst[r * blk.pcol + x] = uint32_t{lo[o]} | (has_hi ? uint32_t{lo[o + sc]} << 16 : 0u);
      }
    for (int64_t i = np; i < ld; ++i) dst[i] = 0u;
  }
}

// inv[q] = 1 / (||style patch q|| + eps) (0 for an all-zero patch), computed from per-pixel
// squared norms so that equal patches get bit-equal values.
template <typename T, typename A>
void inverse_norms(const T* S, int64_t C, int64_t Hs, int64_t Ws, int64_t sc, int64_t sh,
                   int64_t sw, const Grid& gy, const Grid& gx, double eps, A* inv) {
  std::vector<A> sq(Hs * Ws, A(0));
  at::parallel_for(0, Hs, 8, [&](int64_t y0, int64_t y1) {
    for (int64_t y = y0; y < y1; ++y)
      for (int64_t c = 0; c < C; ++c) {
        const T* row = S + c * sc + y * sh;
        A* o = sq.data() + y * Ws;
        for (int64_t x = 0; x < Ws; ++x) {
          const A v = static_cast<A>(row[x * sw]);
          o[x] += v * v;
        }
      }
  });
  const int64_t k = gy.k, s = gy.s;
  at::parallel_for(0, gy.n, 8, [&](int64_t i0, int64_t i1) {
    for (int64_t qi = i0; qi < i1; ++qi)
      for (int64_t qj = 0; qj < gx.n; ++qj) {
        A acc = 0;
        for (int64_t dy = 0; dy < k; ++dy)
          for (int64_t dx = 0; dx < k; ++dx) acc += sq[(qi * s + dy) * Ws + qj * s + dx];
        inv[qi * gx.n + qj] = acc > A(0) ? A(1) / (std::sqrt(acc) + static_cast<A>(eps)) : A(0);
      }
  });
}

// Running best of one content patch.
template <typename A>
struct Best {
  A score;
  int64_t index;
  void offer(A v, int64_t q) {
    if (v > score || (v == score && q < index)) {
      score = v;
      index = q;
    }
  }
};

// Diagonal sums of one G tile, scalar: any stride, any dtype.
template <typename A>
void fold_scalar(const A* G, int64_t ldg, const Block& cb, const Block& sb, int64_t k, int64_t s,
                 int64_t mw, const A* inv, Best<A>* best) {
  for (int64_t pi = 0; pi < cb.rows; ++pi)
    for (int64_t pj = 0; pj < cb.cols; ++pj) {
      Best<A>& b = best[pi * cb.cols + pj];
      for (int64_t qi = 0; qi < sb.rows; ++qi)
        for (int64_t qj = 0; qj < sb.cols; ++qj) {
          A acc = 0;
          for (int64_t dy = 0; dy < k; ++dy)
            for (int64_t dx = 0; dx < k; ++dx)
              acc += G[((pi * s + dy) * cb.pcol + pj * s + dx) * ldg + (qi * s + dy) * sb.pcol +
                       qj * s + dx];
          const int64_t q = (sb.q0i + qi) * mw + sb.q0j + qj;
          b.offer(acc * inv[q], q);
        }
    }
}

// G[i, j] = sum_c A[c, i] B[c, j], scalar (fp64 / no AVX-512).
template <typename A>
void tile_gemm_scalar(int64_t M, int64_t N, int64_t C, const A* Pa, int64_t lda, const A* Pb,
                      int64_t ldb, A* G, int64_t ldg) {
  for (int64_t i = 0; i < M; ++i) {
    A* g = G + i * ldg;
    for (int64_t j = 0; j < N; ++j) g[j] = 0;
    for (int64_t c = 0; c < C; ++c) {
      const A a = Pa[c * lda + i];
      const A* b = Pb + c * ldb;
      for (int64_t j = 0; j < N; ++j) g[j] += a * b[j];
    }
  }
}

#if defined(FASTNST_X86)
// Stride 1: a row of up to 16 style patches is one vector; k*k masked loads per row.
FASTNST_AVX512_FN void fold_avx512_s1(const float* G, int64_t ldg, const Block& cb,
                                      const Block& sb, int64_t k, int64_t mw, const float* inv,
                                      Best<float>* best) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __mmask16 full = static_cast<__mmask16>(sb.cols >= 16 ? 0xFFFFu : (1u << sb.cols) - 1u);
  for (int64_t pi = 0; pi < cb.rows; ++pi)
    for (int64_t pj = 0; pj < cb.cols; ++pj) {
      __m512 vbest = ninf;
      __m512i vidx = _mm512_setzero_si512();
      for (int64_t qi = 0; qi < sb.rows; ++qi)
        for (int64_t qj = 0; qj < sb.cols; qj += 16) {  // style patches (qi, qj .. qj + 15)
          const __mmask16 mask = sb.cols - qj >= 16 ? full : static_cast<__mmask16>((1u << (sb.cols - qj)) - 1u);
          __m512 acc = _mm512_setzero_ps();
          for (int64_t dy = 0; dy < k; ++dy) {
            const float* grow = G + ((pi + dy) * cb.pcol + pj) * ldg + (qi + dy) * sb.pcol + qj;
            for (int64_t dx = 0; dx < k; ++dx)
              acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, grow + dx * ldg + dx));
          }
          const int64_t q0 = (sb.q0i + qi) * mw + sb.q0j + qj;
          const __m512 score = _mm512_mul_ps(acc, _mm512_maskz_loadu_ps(mask, inv + q0));
          const __mmask16 gt = _mm512_mask_cmp_ps_mask(mask, score, vbest, _CMP_GT_OQ);
          vbest = _mm512_mask_blend_ps(gt, vbest, score);
          vidx = _mm512_mask_blend_epi32(gt, vidx,
                                         _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int>(q0))));
        }
      const float m = _mm512_reduce_max_ps(vbest);
      if (!(m >= best[pi * cb.cols + pj].score)) continue;  // also skips NaN-only rows
      const __mmask16 eq = _mm512_mask_cmp_ps_mask(full, vbest, _mm512_set1_ps(m), _CMP_EQ_OQ);
      const int q = _mm512_mask_reduce_min_epi32(eq, vidx);
      best[pi * cb.cols + pj].offer(m, q);
    }
}
#endif

// PAIRS (bfloat16 on AVX512-BF16): both maps are packed as channel pairs and the pixel GEMM
// runs on vdpbf16ps: every product exact, summed in fp32 in one fixed order (the same chain for
// every entry of G, so the tie rules hold as in the fp32 path).
template <typename T, typename A, bool PAIRS = false>
void match_impl(const at::Tensor& content, const at::Tensor& style, int64_t k, int64_t s,
                double eps, at::Tensor& out, bool vector) {
  const int64_t B = content.size(0), C = content.size(1), Hc = content.size(2), Wc = content.size(3);
  const int64_t Bs = style.size(0), Hs = style.size(2), Ws = style.size(3);
  const Grid cy = make_grid(Hc, k, s, kContentBlock), cx = make_grid(Wc, k, s, kContentBlock);
  const Grid sy = make_grid(Hs, k, s, kStyleBlockRows), sx = make_grid(Ws, k, s, kStyleBlockCols);
  const int64_t n_style = sy.n * sx.n;
  const int64_t n_sblk = sy.blocks * sx.blocks, n_cblk = cy.blocks * cx.blocks;
  const int64_t ldc = round16(cy.pixels(cy.per) * cx.pixels(cx.per));  // packed content row
  const int64_t lds = round16(sy.pixels(sy.per) * sx.pixels(sx.per));  // packed style row / G row
  const int64_t ldg = lds + 16;  // G row stride (16 floats of padding between rows)
  const T* CX = content.data_ptr<T>();
  const T* SX = style.data_ptr<T>();
  int64_t* I = out.data_ptr<int64_t>();
  const bool avx2 = !vector && isa() >= Isa::kAvx2;

  // Every buffer comes from the torch allocator (so profilers see it): the packed style
  // blocks (~1.4x the style for 3 x 3 patches), its inverse norms, and per thread one packed
  // content block, one G tile and the running best of a block (~2.5 MB for C = 256, k = 3).
  const auto aopts = content.options().dtype(std::is_same_v<A, double> ? at::kDouble : at::kFloat);
  at::Tensor packed_t = at::empty({n_sblk * C * lds}, aopts);
  at::Tensor inv_t = at::empty({n_style}, aopts);
  const int64_t nthreads = at::get_num_threads();
  const int64_t scratch = C * ldc + ldc * ldg + 16;
  at::Tensor scratch_t = at::empty({nthreads * scratch}, aopts);  // fully written before read
  at::Tensor best_t = at::empty({nthreads * cy.per * cx.per * static_cast<int64_t>(sizeof(Best<A>))},
                                content.options().dtype(at::kByte));
  A* packed = packed_t.data_ptr<A>();
  A* inv = inv_t.data_ptr<A>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t bs = Bs == 1 ? 0 : b;
    if (b == 0 || Bs != 1) {
      const T* S = SX + bs * style.stride(0);
      inverse_norms<T, A>(S, C, Hs, Ws, style.stride(1), style.stride(2), style.stride(3), sy, sx,
                          eps, inv);
      at::parallel_for(0, n_sblk, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          const Block sb = block_of(sy, sx, t / sx.blocks, t % sx.blocks);
          if constexpr (PAIRS)
            pack_block_pairs(S, C, style.stride(1), style.stride(2), style.stride(3), sb,
                             reinterpret_cast<uint32_t*>(packed + t * C * lds), lds);
          else
            pack_block<T, A>(S, C, style.stride(1), style.stride(2), style.stride(3), sb,
                             packed + t * C * lds, lds);
        }
      });
    }
    const T* X = CX + b * content.stride(0);
    int64_t* Ib = I + b * cy.n * cx.n;
    at::parallel_for(0, n_cblk, 1, [&](int64_t t0, int64_t t1) {
      const int64_t tid = at::get_thread_num();
      TORCH_INTERNAL_ASSERT(tid >= 0 && tid < nthreads, "style_swap_match: thread ", tid, " of ", nthreads);
      A* pa = scratch_t.data_ptr<A>() + tid * scratch;
      A* g = pa + C * ldc;
      Best<A>* best = reinterpret_cast<Best<A>*>(best_t.data_ptr<uint8_t>()) + tid * cy.per * cx.per;
      for (int64_t t = t0; t < t1; ++t) {
        const Block cb = block_of(cy, cx, t / cx.blocks, t % cx.blocks);
        if constexpr (PAIRS)
          pack_block_pairs(X, C, content.stride(1), content.stride(2), content.stride(3), cb,
                           reinterpret_cast<uint32_t*>(pa), ldc);
        else
          pack_block<T, A>(X, C, content.stride(1), content.stride(2), content.stride(3), cb, pa, ldc);
        for (int64_t e = 0; e < cb.rows * cb.cols; ++e) best[e] = {-std::numeric_limits<A>::infinity(), 0};
        const int64_t M = cb.prow * cb.pcol;
        for (int64_t u = 0; u < n_sblk; ++u) {
          const Block sb = block_of(sy, sx, u / sx.blocks, u % sx.blocks);
          const A* pb = packed + u * C * lds;
          const int64_t N = sb.prow * sb.pcol;
#if defined(FASTNST_X86)
          if constexpr (PAIRS) {
            // G (M x N) = A^T B on channel pairs: pair (r, cp) at pa[cp * ldc + r].
            avx512::dp_gemm_block<6, 4>(M, N, (C + 1) / 2, reinterpret_cast<const uint32_t*>(pa), 1, ldc,
                                        reinterpret_cast<const uint32_t*>(pb), lds, g, ldg);
            if (s == 1)
              fold_avx512_s1(g, ldg, cb, sb, k, sx.n, inv, best);
            else
              fold_scalar<A>(g, ldg, cb, sb, k, s, sx.n, inv, best);
            continue;
          }
          if constexpr (std::is_same_v<A, float>) {
            if (vector) {
              // G (M x N) = A^T B: A(r, c) = pa[c * ldc + r], B(c, n) = pb[c * lds + n].
              avx512::gemm_block<6, 4>(M, N, C, pa, 1, ldc, pb, lds, g, ldg, false);
              if (s == 1)
                fold_avx512_s1(g, ldg, cb, sb, k, sx.n, inv, best);
              else
                fold_scalar<A>(g, ldg, cb, sb, k, s, sx.n, inv, best);
              continue;
            }
          }
#endif
#if defined(FASTNST_X86)
          if constexpr (std::is_same_v<A, float>) {
            if (avx2) {  // AVX2 + FMA tiles for the pixel GEMM, the scalar fold
              avx2::gemm_block<6>(M, N, C, pa, 1, ldc, pb, lds, g, ldg, false);
              fold_scalar<A>(g, ldg, cb, sb, k, s, sx.n, inv, best);
              continue;
            }
          }
#endif
          tile_gemm_scalar<A>(M, N, C, pa, ldc, pb, lds, g, ldg);
          fold_scalar<A>(g, ldg, cb, sb, k, s, sx.n, inv, best);
        }
        for (int64_t pi = 0; pi < cb.rows; ++pi)
          for (int64_t pj = 0; pj < cb.cols; ++pj)
            Ib[(cb.q0i + pi) * cx.n + cb.q0j + pj] = best[pi * cb.cols + pj].index;
      }
    });
  }
}

void check_pair(const at::Tensor& content, const at::Tensor& style, int64_t k, int64_t s) {
  TORCH_CHECK(content.device().is_cpu() && style.device().is_cpu(),
              "fastnst::style_swap_match (cpu): content and style must be CPU tensors, got ",
              content.device(), " and ", style.device());
  TORCH_CHECK(content.dim() == 4 && style.dim() == 4,
              "fastnst::style_swap_match: content and style must be [B, C, H, W], got ",
              content.sizes(), " and ", style.sizes());
  TORCH_CHECK(content.scalar_type() == style.scalar_type(),
              "fastnst::style_swap_match: content and style must have the same dtype, got ",
              content.scalar_type(), " and ", style.scalar_type());
  const auto dt = content.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
              "fastnst::style_swap_match: inputs must be float32, float16, bfloat16 or float64, got ", dt);
  TORCH_CHECK(content.size(1) == style.size(1),
              "fastnst::style_swap_match: content and style must have the same channels, got ",
              content.size(1), " and ", style.size(1));
  TORCH_CHECK(style.size(0) == 1 || style.size(0) == content.size(0),
              "fastnst::style_swap_match: style batch must be 1 or content's (", content.size(0),
              "), got ", style.size(0));
  TORCH_CHECK(k >= 1 && s >= 1, "fastnst::style_swap_match: patch_size and stride must be >= 1, got ",
              k, " and ", s);
  TORCH_CHECK(k <= std::min(style.size(2), style.size(3)) &&
                  k <= std::min(content.size(2), content.size(3)),
              "fastnst::style_swap_match: patch_size ", k,
              " is larger than the content or style map (", content.sizes(), ", ", style.sizes(), ")");
  TORCH_CHECK(content.numel() > 0 && style.numel() > 0,
              "fastnst::style_swap_match: content and style must be non-empty");
}

at::Tensor style_swap_match_cpu(const at::Tensor& content, const at::Tensor& style,
                                int64_t patch_size, int64_t stride, double eps) {
  check_isa();
  check_pair(content, style, patch_size, stride);
  TORCH_CHECK(eps >= 0, "fastnst::style_swap_match: eps must be >= 0, got ", eps);
  const int64_t k = patch_size, s = stride;
  const int64_t nh = (content.size(2) - k) / s + 1, nw = (content.size(3) - k) / s + 1;
  const int64_t n_style = ((style.size(2) - k) / s + 1) * ((style.size(3) - k) / s + 1);
  TORCH_CHECK(n_style < (int64_t{1} << 31), "fastnst::style_swap_match: at most 2^31 - 1 style patches, got ",
              n_style);
  at::Tensor out = at::empty({content.size(0), nh, nw}, content.options().dtype(at::kLong));
  const bool vector = has_avx512();
  switch (content.scalar_type()) {
    case at::kDouble: match_impl<double, double>(content, style, k, s, eps, out, false); break;
    case at::kFloat: match_impl<float, float>(content, style, k, s, eps, out, vector); break;
    case at::kHalf: match_impl<c10::Half, float>(content, style, k, s, eps, out, vector); break;
    default:
#if defined(FASTNST_X86)
      if (has_avx512bf16()) {
        match_impl<c10::BFloat16, float, true>(content, style, k, s, eps, out, vector);
        break;
      }
#endif
      match_impl<c10::BFloat16, float>(content, style, k, s, eps, out, vector);
      break;
  }
  return out;
}

// ---- reconstruction ---------------------------------------------------------------------
template <typename T, typename A>
void reconstruct_impl(const at::Tensor& style, const at::Tensor& idx, int64_t k, int64_t s,
                      at::Tensor& out) {
  const int64_t B = out.size(0), C = out.size(1), H = out.size(2), W = out.size(3);
  const int64_t nh = idx.size(1), nw = idx.size(2);
  const int64_t mw = (style.size(3) - k) / s + 1;
  const int64_t Bs = style.size(0);
  const int64_t ssb = style.stride(0), ssc = style.stride(1), ssh = style.stride(2), ssw = style.stride(3);
  const T* S = style.data_ptr<T>();
  const int64_t* I = idx.data_ptr<int64_t>();
  const int64_t ib = idx.stride(0), ii = idx.stride(1), ij = idx.stride(2);
  T* O = out.data_ptr<T>();
  // Cover counts are separable: rows covered by patch rows times columns by patch columns.
  auto covers = [&](int64_t n, int64_t size) {
    std::vector<int64_t> cnt(size, 0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t d = 0; d < k; ++d) ++cnt[i * s + d];
    return cnt;
  };
  const std::vector<int64_t> cnt_y = covers(nh, H), cnt_x = covers(nw, W);
  at::parallel_for(0, B * C, 1, [&](int64_t t0, int64_t t1) {
    std::vector<A> acc(H * W);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / C, c = t % C;
      const T* Sp = S + (Bs == 1 ? 0 : b) * ssb + c * ssc;
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t i = 0; i < nh; ++i)
        for (int64_t j = 0; j < nw; ++j) {
          const int64_t q = I[b * ib + i * ii + j * ij];
          const T* src = Sp + (q / mw) * s * ssh + (q % mw) * s * ssw;
          A* dst = acc.data() + i * s * W + j * s;
          for (int64_t dy = 0; dy < k; ++dy)
            for (int64_t dx = 0; dx < k; ++dx) dst[dy * W + dx] += static_cast<A>(src[dy * ssh + dx * ssw]);
        }
      T* o = O + t * H * W;
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) {
          const int64_t n = cnt_y[y] * cnt_x[x];
          o[y * W + x] = static_cast<T>(n ? acc[y * W + x] / static_cast<A>(n) : A(0));
        }
    }
  });
}

at::Tensor style_swap_reconstruct_cpu(const at::Tensor& style, const at::Tensor& indices,
                                      int64_t patch_size, int64_t stride, int64_t out_h,
                                      int64_t out_w) {
  check_isa();
  const int64_t k = patch_size, s = stride;
  TORCH_CHECK(style.device().is_cpu() && indices.device().is_cpu(),
              "fastnst::style_swap_reconstruct (cpu): style and indices must be CPU tensors, got ",
              style.device(), " and ", indices.device());
  TORCH_CHECK(style.dim() == 4, "fastnst::style_swap_reconstruct: style must be [Bs, C, H, W], got ",
              style.sizes());
  const auto dt = style.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
              "fastnst::style_swap_reconstruct: style must be float32, float16, bfloat16 or float64, got ", dt);
  TORCH_CHECK(k >= 1 && s >= 1, "fastnst::style_swap_reconstruct: patch_size and stride must be >= 1, got ",
              k, " and ", s);
  TORCH_CHECK(k <= std::min(style.size(2), style.size(3)) && k <= std::min(out_h, out_w),
              "fastnst::style_swap_reconstruct: patch_size ", k, " is larger than the style map ",
              style.sizes(), " or the output (", out_h, ", ", out_w, ")");
  const int64_t nh = (out_h - k) / s + 1, nw = (out_w - k) / s + 1;
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.dim() == 3 && indices.size(1) == nh &&
                  indices.size(2) == nw && (style.size(0) == 1 || style.size(0) == indices.size(0)),
              "fastnst::style_swap_reconstruct: indices must be int64 [B, ", nh, ", ", nw,
              "] (B = style batch or any B with a style batch of 1), got ", indices.scalar_type(), " ",
              indices.sizes());
  const int64_t n_style = ((style.size(2) - k) / s + 1) * ((style.size(3) - k) / s + 1);
  if (indices.numel() > 0) {
    const auto mm = at::aminmax(indices);
    const int64_t lo = std::get<0>(mm).item<int64_t>(), hi = std::get<1>(mm).item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < n_style, "fastnst::style_swap_reconstruct: indices must lie in [0, ",
                n_style, ") (the style patches), got values in [", lo, ", ", hi, "]");
  }
  // Gather from a channel-planar copy when style is channels_last (strided gathers otherwise).
  const at::Tensor st = style.stride(3) == 1 ? style : style.contiguous();
  at::Tensor out = at::empty({indices.size(0), style.size(1), out_h, out_w}, style.options());
  switch (dt) {
    case at::kDouble: reconstruct_impl<double, double>(st, indices, k, s, out); break;
    case at::kFloat: reconstruct_impl<float, float>(st, indices, k, s, out); break;
    case at::kHalf: reconstruct_impl<c10::Half, float>(st, indices, k, s, out); break;
    default: reconstruct_impl<c10::BFloat16, float>(st, indices, k, s, out); break;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnst, CPU, m) {
  m.impl("style_swap_match", &style_swap_match_cpu);
  m.impl("style_swap_reconstruct", &style_swap_reconstruct_cpu);
}

}  // namespace cpu
}  // namespace fastnst
