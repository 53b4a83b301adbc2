// Direct convolution of any square kernel and stride for the inference of the style-transfer
// networks: the layers Winograd (conv_winograd.cpp) does not take and oneDNN runs slowly here:
// the 9 x 9 convolutions of a 3-channel image, the stride-2 convolutions, and the narrow
// (3 to 8 output channels) layers at full resolution.
//
//   y[b, o, i, j] = bias[o] + sum_{c, u, v} w[o, c, u, v] X[b, c, s i + u, s j + v]
//   X = reflect_pad(upsample_nearest(x, upsample), pad)   (never formed: read through index maps)
//   y is [B, Co, Ho, Wo], Ho = (Hv - k) / s + 1, Hv = H upsample + 2 pad (likewise Wo)
//
// Every output is bias + its products summed by fp32 FMAs in one fixed order (u, then v, then
// c innermost), whatever the path or layout: the rounding of a direct fp32 convolution (no
// transform), the same bits from every path below.
//
// Scheme. The output rows (b, i) go to the threads in contiguous runs. Two ways to read X:
//   * direct read (more than 8 output channels, a dense channels_last x, no upsampling, C of
//     16, 32, 64 or 128, stride 1 or 2): the channel-vector microkernel broadcasts straight
//     from x, whose pixel and channel strides are then compile-time constants; a block of
//     pixels that reaches the reflected border reads a small patch gathered through the
//     index maps instead.
//   * staged (everything else): each run keeps a ring of k staged rows of X: row r of X is
//     copied once, de-interleaved by the stride into [phase s][C][ld] (column j s + phase at
//     [phase][c][j]; a channels_last x with C a multiple of 16 by 16 x 16 transposes), so that
//     for every tap (u, v) the inputs of consecutive output pixels are consecutive floats:
//     X[c, s i + u, s (j + t) + v] is staged[u][v % s][c][j + t + v / s]. (Rows of an
//     upsampled x that repeat the previous one are copied from its slot.)
// The microkernels:
//   * channel vectors (Co > 8): 12 output pixels x 32 output channels (or 24 x 16) of
//     accumulators; per input channel and tap, one or two weight vectors and a broadcast per
//     pixel. y is written channels_last.
//   * pixel vectors (Co <= 8, staged): Co output channels x 2 to 6 vectors of 16 consecutive
//     output pixels; per input channel and tap, a load per pixel vector and a broadcast weight
//     per output channel. y is written contiguous (NCHW), the layout of a narrow
//     full-resolution layer's output that the next norm reads best (and the networks' RGB
//     outputs).
// The weight is repacked once per call: [Co / 32][k][k][C][32] (zero-padded to whole vectors)
// for the first, [k][k][C][Co] for the second.
//
// Measured here (AMD EPYC Zen 5, 2 threads, whose fp32 FMA peak is ~218 GFLOP/s): 175-195
// GFLOP/s on the 9 x 9 3-channel input layers and the 8-3 channel output layers, 130-175 on
// the stride-2 layers; 1.2-4.9x oneDNN's convolution of the padded input (fastnst bench --op conv).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/conv_maps.h"
#include "cpu/cpu_features.h"
#include "cpu/out_cache.h"

#if defined(FASTNST_X86)
#include <immintrin.h>
#endif

namespace fastnst {
namespace cpu {
namespace {

constexpr int64_t kSmallCo = 8;  // Co <= kSmallCo: pixel vectors, NCHW output
constexpr int64_t kMaxDirectK = 16;  // the direct-read path takes kernels up to this size

struct DGeo {
  int64_t B, C, Co, Hv, Wv, Ho, Wo, k, s, pad, Wx;
  int64_t sB, sC, sH, sW;  // x's strides, in elements
  const int64_t* rows;     // [Hv]: the row of x that row i of X reads
  const int64_t* cols;     // [Wv]: the column of x that column j of X reads
  const float* x;
  float* y;
  const float* wp;    // the packed weight
  const float* bias;  // [Co padded to 32] (channel vectors) or [Co] (pixel vectors); zeros if none
  int64_t ld;         // floats per staged (phase, channel) row
  int64_t slot;       // floats per staged row of X: s * C * ld
};

#if defined(FASTNST_X86)
#define DCONV_INL __attribute__((target("avx512f,fma"), always_inline)) inline
#define DCONV_FN __attribute__((target("avx512f,fma")))

inline __mmask16 lanes(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }

// c[j] = column j of the 16 x 16 block r (r[i] = row i): four rounds of shuffles.
DCONV_INL void transpose16(const __m512 r[16], __m512 c[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int q = 0; q < 4; ++q) {  // u[4q + e], lane L: rows 4q .. 4q + 3 of column 4L + e
    const __m512d a = _mm512_castps_pd(t[4 * q]), b = _mm512_castps_pd(t[4 * q + 1]);
    const __m512d a2 = _mm512_castps_pd(t[4 * q + 2]), b2 = _mm512_castps_pd(t[4 * q + 3]);
    u[4 * q + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, a2));
    u[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, a2));
    u[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, b2));
    u[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, b2));
  }
  for (int e = 0; e < 4; ++e) {
    const __m512 lo01 = _mm512_shuffle_f32x4(u[e], u[4 + e], 0x44), hi01 = _mm512_shuffle_f32x4(u[e], u[4 + e], 0xEE);
    const __m512 lo23 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0x44), hi23 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0xEE);
    c[e] = _mm512_shuffle_f32x4(lo01, lo23, 0x88);
    c[4 + e] = _mm512_shuffle_f32x4(lo01, lo23, 0xDD);
    c[8 + e] = _mm512_shuffle_f32x4(hi01, hi23, 0x88);
    c[12 + e] = _mm512_shuffle_f32x4(hi01, hi23, 0xDD);
  }
}

// Row vr of image b of X into dst[phase][c][j] (j < ld; the columns past X stay as they are:
// zero from the slot's allocation). A channels_last x with C a multiple of 16: blocks of 16
// staged columns x 16 channels, loaded as pixel vectors and transposed; otherwise one scalar
// copy per element, in the order x is laid out in.
DCONV_FN void stage_row(const DGeo& g, int64_t b, int64_t vr, float* dst) {
  const float* src = g.x + b * g.sB + g.rows[vr] * g.sH;
  const int64_t s = g.s, C = g.C, ld = g.ld;
  if (g.sC == 1 && C % 16 == 0) {
    for (int64_t ph = 0; ph < s; ++ph) {
      const int64_t n = (g.Wv - ph + s - 1) / s;  // staged columns of this phase
      for (int64_t j = 0; j < n; j += 16) {
        const int64_t m = std::min<int64_t>(16, n - j);
        const float* px[16];
        for (int64_t t = 0; t < 16; ++t) px[t] = src + g.cols[(j + std::min(t, m - 1)) * s + ph] * g.sW;
        for (int64_t c0 = 0; c0 < C; c0 += 16) {
          __m512 r[16], col[16];
          for (int t = 0; t < 16; ++t) r[t] = _mm512_loadu_ps(px[t] + c0);
          transpose16(r, col);
          float* d = dst + (ph * C + c0) * ld + j;
          if (m == 16) {
            for (int cc = 0; cc < 16; ++cc) _mm512_storeu_ps(d + cc * ld, col[cc]);
          } else {
            const __mmask16 mk = lanes(m);
            for (int cc = 0; cc < 16; ++cc) _mm512_mask_storeu_ps(d + cc * ld, mk, col[cc]);
          }
        }
      }
    }
    return;
  }
  for (int64_t ph = 0; ph < s; ++ph) {
    const int64_t n = (g.Wv - ph + s - 1) / s;
    if (g.sC == 1) {  // channels_last (C not a multiple of 16): a pixel's channels together
      for (int64_t j = 0; j < n; ++j) {
        const float* p = src + g.cols[j * s + ph] * g.sW;
        float* d = dst + ph * C * ld + j;
        for (int64_t c = 0; c < C; ++c) d[c * ld] = p[c];
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        const float* p = src + c * g.sC;
        float* d = dst + (ph * C + c) * ld;
        for (int64_t j = 0; j < n; ++j) d[j] = p[g.cols[j * s + ph] * g.sW];
      }
    }
  }
}

// Channel vectors: y[pixel ox0 + t][o0 + 16 v + lane] for t < nt (<= R), v < NV; `width`
// output channels in this block (the last vector masked to it).
template <int R, int NV>
DCONV_INL void micro_channels(const DGeo& g, const float* const* rp, int64_t ox0, const float* wb,
                              const float* bias, float* out, int64_t nt, int64_t width) {
  __m512 acc[R][NV];
  for (int v = 0; v < NV; ++v) {
    const __m512 bv = _mm512_loadu_ps(bias + 16 * v);
    for (int t = 0; t < R; ++t) acc[t][v] = bv;
  }
  const int64_t C = g.C, ld = g.ld, k = g.k, s = g.s;
  const float* w = wb;
  for (int64_t u = 0; u < k; ++u) {
    for (int64_t v0 = 0; v0 < k; ++v0) {
      const float* a = rp[u] + (v0 % s) * C * ld + ox0 + v0 / s;
      for (int64_t c = 0; c < C; ++c, a += ld, w += NV * 16) {
        __m512 wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_ps(w + 16 * v);
#pragma GCC unroll 24
        for (int t = 0; t < R; ++t) {
          const __m512 xv = _mm512_set1_ps(a[t]);
          for (int v = 0; v < NV; ++v) acc[t][v] = _mm512_fmadd_ps(xv, wv[v], acc[t][v]);
        }
      }
    }
  }
  const __mmask16 last = lanes(width - 16 * (NV - 1));
  for (int t = 0; t < R; ++t) {
    if (t >= nt) break;
    float* o = out + t * g.Co;
    for (int v = 0; v < NV - 1; ++v) _mm512_storeu_ps(o + 16 * v, acc[t][v]);
    _mm512_mask_storeu_ps(o + 16 * (NV - 1), last, acc[t][NV - 1]);
  }
}

// Pixel vectors: y[b][o][oy][ox0 + 16 p + lane] for o < CO, p < PV (masked to nt pixels).
template <int CO, int PV>
DCONV_INL void micro_pixels(const DGeo& g, const float* const* rp, int64_t ox0, float* out, int64_t plane,
                            int64_t nt) {
  __m512 acc[CO][PV];
  for (int o = 0; o < CO; ++o) {
    const __m512 bv = _mm512_set1_ps(g.bias[o]);
    for (int p = 0; p < PV; ++p) acc[o][p] = bv;
  }
  const int64_t C = g.C, ld = g.ld, k = g.k, s = g.s;
  const float* w = g.wp;
  for (int64_t u = 0; u < k; ++u) {
    for (int64_t v0 = 0; v0 < k; ++v0) {
      const float* a = rp[u] + (v0 % s) * C * ld + ox0 + v0 / s;
      for (int64_t c = 0; c < C; ++c, a += ld, w += CO) {
        // the CO weights in registers first, then each pixel vector loaded once and used CO
        // times (CO PV + CO + 1 registers)
        __m512 wv[CO];
        for (int o = 0; o < CO; ++o) wv[o] = _mm512_set1_ps(w[o]);
        for (int p = 0; p < PV; ++p) {
          __m512 xv = _mm512_loadu_ps(a + 16 * p);
          asm("" : "+v"(xv));  // one load into a register: the compiler would fold it into each FMA
          for (int o = 0; o < CO; ++o) acc[o][p] = _mm512_fmadd_ps(xv, wv[o], acc[o][p]);
        }
      }
    }
  }
  for (int p = 0; p < PV; ++p) {
    const int64_t n = nt - 16 * p;
    if (n <= 0) break;
    const __mmask16 m = lanes(n);
    for (int o = 0; o < CO; ++o) _mm512_mask_storeu_ps(out + o * plane + 16 * p, m, acc[o][p]);
  }
}

template <int CO, int PV>
DCONV_FN void row_pixels(const DGeo& g, const float* const* rp, int64_t b, int64_t oy) {
  const int64_t plane = g.Ho * g.Wo;
  float* out = g.y + b * g.Co * plane + oy * g.Wo;
  for (int64_t ox = 0; ox < g.Wo; ox += 16 * PV)
    micro_pixels<CO, PV>(g, rp, ox, out + ox, plane, std::min<int64_t>(16 * PV, g.Wo - ox));
}

DCONV_FN void row_channels(const DGeo& g, const float* const* rp, int64_t b, int64_t oy) {
  const int64_t kkc = g.k * g.k * g.C;
  float* out = g.y + (b * g.Ho + oy) * g.Wo * g.Co;
  for (int64_t o0 = 0; o0 < g.Co; o0 += 32) {
    const int64_t width = std::min<int64_t>(32, g.Co - o0);
    const float* wb = g.wp + o0 * kkc;
    if (width > 16) {
      for (int64_t ox = 0; ox < g.Wo; ox += 12)
        micro_channels<12, 2>(g, rp, ox, wb, g.bias + o0, out + ox * g.Co + o0, std::min<int64_t>(12, g.Wo - ox), width);
    } else {
      for (int64_t ox = 0; ox < g.Wo; ox += 24)
        micro_channels<24, 1>(g, rp, ox, wb, g.bias + o0, out + ox * g.Co + o0, std::min<int64_t>(24, g.Wo - ox), width);
    }
  }
}

// Channel vectors read straight from a dense channels_last x (no upsampling) whose channel
// count C and stride S are compile-time: pixel t, tap (u, v), channel c of the block at
// rp[u][(t S + v) C + c] (constant displacements). rp[u] points at x's row for tap row u,
// at the column of the block's first virtual column, or at a patch of the same layout
// gathered through the index maps where the block reaches the reflected border.
template <int R, int NV, int C, int S>
DCONV_INL void micro_direct(const float* const* rp, int64_t k, const float* wb, const float* bias, float* out,
                            int64_t Co, int64_t nt, int64_t width) {
  __m512 acc[R][NV];
  for (int v = 0; v < NV; ++v) {
    const __m512 bv = _mm512_loadu_ps(bias + 16 * v);
    for (int t = 0; t < R; ++t) acc[t][v] = bv;
  }
  const float* w = wb;
  for (int64_t u = 0; u < k; ++u) {
    for (int64_t v0 = 0; v0 < k; ++v0) {
      const float* a = rp[u] + v0 * C;
      for (int c = 0; c < C; ++c, ++a, w += NV * 16) {
        __m512 wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_ps(w + 16 * v);
#pragma GCC unroll 24
        for (int t = 0; t < R; ++t) {
          const __m512 xv = _mm512_set1_ps(a[t * S * C]);
          for (int v = 0; v < NV; ++v) acc[t][v] = _mm512_fmadd_ps(xv, wv[v], acc[t][v]);
        }
      }
    }
  }
  const __mmask16 last = lanes(width - 16 * (NV - 1));
  for (int t = 0; t < R; ++t) {
    if (t >= nt) break;
    float* o = out + t * Co;
    for (int v = 0; v < NV - 1; ++v) _mm512_storeu_ps(o + 16 * v, acc[t][v]);
    _mm512_mask_storeu_ps(o + 16 * (NV - 1), last, acc[t][NV - 1]);
  }
}

// Output row (b, oy), channels o0 .. o0 + NV 16 by micro_direct; `patch` holds k (R - 1) S + k
// pixels of C floats.
template <int R, int NV, int C, int S>
DCONV_FN void row_direct_block(const DGeo& g, int64_t b, int64_t oy, int64_t o0, float* patch) {
  const int64_t k = g.k, pw = (R - 1) * S + k;  // patch columns
  const int64_t width = std::min<int64_t>(NV * 16, g.Co - o0);
  const float* wb = g.wp + o0 * k * k * C;
  float* out = g.y + (b * g.Ho + oy) * g.Wo * g.Co + o0;
  const float* xrow[kMaxDirectK];
  const float* rp[kMaxDirectK];
  for (int64_t u = 0; u < k; ++u) xrow[u] = g.x + b * g.sB + g.rows[oy * S + u] * g.sH;
  for (int64_t ox = 0; ox < g.Wo; ox += R) {
    const int64_t nt = std::min<int64_t>(R, g.Wo - ox);
    // interior: the block's virtual columns ox S .. (ox + R - 1) S + k - 1 are x's columns
    // minus pad, in order (no reflection), and all R pixels exist
    if (nt == R && ox * S >= g.pad && (ox + R - 1) * S + k - 1 < g.pad + g.Wx) {
      for (int64_t u = 0; u < k; ++u) rp[u] = xrow[u] + (ox * S - g.pad) * C;
    } else {
      for (int64_t u = 0; u < k; ++u) {
        float* d = patch + u * pw * C;
        for (int64_t j = 0; j < pw; ++j) {
          const int64_t vc = ox * S + j;
          if (vc < g.Wv)
            std::memcpy(d + j * C, xrow[u] + g.cols[vc] * C, sizeof(float) * C);
          else
            std::memset(d + j * C, 0, sizeof(float) * C);
        }
        rp[u] = d;
      }
    }
    micro_direct<R, NV, C, S>(rp, k, wb, g.bias + o0, out + ox * g.Co, g.Co, nt, width);
  }
}

template <int C, int S>
void run_rows_direct(const DGeo& g, int64_t r0, int64_t r1) {
  std::vector<float> patch(static_cast<size_t>(g.k * (23 * S + g.k) * C));
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / g.Ho, oy = r % g.Ho;
    for (int64_t o0 = 0; o0 < g.Co; o0 += 32) {
      if (g.Co - o0 > 16)
        row_direct_block<12, 2, C, S>(g, b, oy, o0, patch.data());
      else
        row_direct_block<24, 1, C, S>(g, b, oy, o0, patch.data());
    }
  }
}

// The direct-read path for x's channel count and the stride, if it has one.
using RowsFn = void (*)(const DGeo&, int64_t, int64_t);
RowsFn direct_rows_fn(int64_t C, int64_t S) {
  switch (C * 4 + S) {
    case 16 * 4 + 1: return &run_rows_direct<16, 1>;
    case 16 * 4 + 2: return &run_rows_direct<16, 2>;
    case 32 * 4 + 1: return &run_rows_direct<32, 1>;
    case 32 * 4 + 2: return &run_rows_direct<32, 2>;
    case 64 * 4 + 1: return &run_rows_direct<64, 1>;
    case 64 * 4 + 2: return &run_rows_direct<64, 2>;
    case 128 * 4 + 1: return &run_rows_direct<128, 1>;
    case 128 * 4 + 2: return &run_rows_direct<128, 2>;
    default: return nullptr;
  }
}

void run_row(const DGeo& g, const float* const* rp, int64_t b, int64_t oy) {
  switch (g.Co > kSmallCo ? 0 : g.Co) {
    case 0: row_channels(g, rp, b, oy); break;
    case 1: row_pixels<1, 6>(g, rp, b, oy); break;
    case 2: row_pixels<2, 6>(g, rp, b, oy); break;
    case 3: row_pixels<3, 6>(g, rp, b, oy); break;
    case 4: row_pixels<4, 5>(g, rp, b, oy); break;
    case 5: row_pixels<5, 4>(g, rp, b, oy); break;
    case 6: row_pixels<6, 3>(g, rp, b, oy); break;
    case 7: row_pixels<7, 3>(g, rp, b, oy); break;
    default: row_pixels<8, 2>(g, rp, b, oy); break;
  }
}

// Output rows r0 .. r1 (r = b Ho + oy) with a ring of k staged rows of X.
void run_rows(const DGeo& g, int64_t r0, int64_t r1) {
  const int64_t k = g.k;
  std::vector<float> ring(static_cast<size_t>(k * g.slot), 0.f);
  std::vector<int64_t> tag(static_cast<size_t>(k), -1);  // b Hv + vr held by each slot
  std::vector<const float*> rp(static_cast<size_t>(k));
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / g.Ho, oy = r % g.Ho;
    for (int64_t u = 0; u < k; ++u) {
      const int64_t vr = oy * g.s + u, sl = vr % k, id = b * g.Hv + vr;
      float* dst = ring.data() + sl * g.slot;
      if (tag[sl] != id) {
        const int64_t prev = (vr + k - 1) % k;  // the slot of row vr - 1
        if (vr > 0 && tag[prev] == id - 1 && g.rows[vr] == g.rows[vr - 1])
          std::memcpy(dst, ring.data() + prev * g.slot, sizeof(float) * g.slot);
        else
          stage_row(g, b, vr, dst);
        tag[sl] = id;
      }
      rp[u] = dst;
    }
    run_row(g, rp.data(), b, oy);
  }
}
#endif  // FASTNST_X86

at::Tensor conv2d_direct_cpu(const at::Tensor& x, const at::Tensor& weight0, const c10::optional<at::Tensor>& bias0,
                             int64_t stride, int64_t upsample, int64_t pad) {
  check_isa();
  const char* op = "conv2d_direct";
  TORCH_CHECK(x.dim() == 4, op, ": x must be [B, C, H, W], got ", x.dim(), " dimensions");
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, ": x must be float32, got ", x.scalar_type());
  TORCH_CHECK(weight0.dim() == 4 && weight0.size(2) == weight0.size(3) && weight0.size(1) == x.size(1) &&
                  weight0.size(2) >= 1,
              op, ": weight must be [Co, C, k, k] with C = x's ", x.size(1), " channels, got ", weight0.sizes());
  TORCH_CHECK(weight0.scalar_type() == at::kFloat, op, ": weight must be float32, got ", weight0.scalar_type());
  TORCH_CHECK(weight0.device() == x.device(), op, ": weight must be on x's device");
  const int64_t B = x.size(0), C = x.size(1), Hx = x.size(2), Wx = x.size(3), Co = weight0.size(0), k = weight0.size(2);
  TORCH_CHECK(C > 0 && Co > 0, op, ": the input and output channels must be positive, got C = ", C, ", Co = ", Co);
  TORCH_CHECK(stride >= 1 && upsample >= 1 && pad >= 0, op, ": stride and upsample must be >= 1 and pad >= 0, got ",
              stride, ", ", upsample, " and ", pad);
  check_virtual_input(op, Hx, Wx, upsample, pad, k);
  const int64_t Hv = Hx * upsample + 2 * pad, Wv = Wx * upsample + 2 * pad;
  const at::Tensor bias = checked_bias(op, bias0, Co, x);
  TORCH_CHECK(has_avx512(), op, ": needs the avx512 CPU path, this process runs ", runtime_isa(),
              " (call fastnst.ops.conv.conv, which uses aten's convolution there)");
  const int64_t Ho = (Hv - k) / stride + 1, Wo = (Wv - k) / stride + 1;
  const bool small = Co <= kSmallCo;
  at::Tensor y = small ? reusable_empty_pooled(OutSlot::kConv, {B, Co, Ho, Wo}, {Co * Ho * Wo, Ho * Wo, Wo, 1}, x.options())
                       : reusable_empty_pooled(OutSlot::kConv, {B, Co, Ho, Wo}, {Co * Ho * Wo, 1, Wo * Co, Co}, x.options());
  if (B == 0) return y;
#if defined(FASTNST_X86)
  // packed weight and bias
  const at::Tensor wt = weight0.permute({2, 3, 1, 0}).contiguous();  // [k][k][C][Co]
  const float* wtp = wt.data_ptr<float>();
  const int64_t kkc = k * k * C;
  std::vector<float> wp, bp;  // wp: the channel-vector packing (the pixel vectors read wt itself)
  if (small) {
    bp.assign(static_cast<size_t>(Co), 0.f);
  } else {
    const int64_t cop = (Co + 15) / 16 * 16;
    wp.assign(static_cast<size_t>(kkc * ((Co + 31) / 32 * 32)), 0.f);
    bp.assign(static_cast<size_t>((Co + 31) / 32 * 32), 0.f);
    for (int64_t o0 = 0; o0 < Co; o0 += 32) {
      const int64_t wdt = std::min<int64_t>(32, cop - o0);  // 32, or 16 for a last block of <= 16
      float* dst = wp.data() + o0 * kkc;
      for (int64_t q = 0; q < kkc; ++q)
        for (int64_t o = 0; o < wdt && o0 + o < Co; ++o) dst[q * wdt + o] = wtp[q * Co + o0 + o];
    }
  }
  if (bias.defined()) std::copy(bias.data_ptr<float>(), bias.data_ptr<float>() + Co, bp.begin());
  const std::vector<int64_t> rows = reflect_upsample_map(Hx, upsample, pad), cols = reflect_upsample_map(Wx, upsample, pad);
  const int64_t ld = (Wo + 96 + k + 15) / 16 * 16;  // the microkernels read up to 96 + k past Wo
  DGeo g{B, C, Co, Hv, Wv, Ho, Wo, k, stride, pad, Wx, x.stride(0), x.stride(1), x.stride(2), x.stride(3), rows.data(),
         cols.data(), x.data_ptr<float>(), y.data_ptr<float>(), small ? wtp : wp.data(), bp.data(), ld,
         stride * C * ld};
  // Runs of rows long enough that restaging the k - s rows a run shares with the previous one
  // stays small against the run's work.
  const int64_t grain = std::max<int64_t>(4, 4 * k);
  // dense channels_last pixels, no upsampling: the channel-vector microkernel reads x itself
  const RowsFn direct = (!small && upsample == 1 && k <= kMaxDirectK && x.size(1) > 0 && x.stride(1) == 1 &&
                   x.stride(3) == C) ? direct_rows_fn(C, stride) : nullptr;
  at::parallel_for(0, B * Ho, grain, [&](int64_t r0, int64_t r1) { direct ? direct(g, r0, r1) : run_rows(g, r0, r1); });
#endif
  return y;
}

}  // namespace

std::string conv_direct_routes() {
  return std::string("conv2d_direct\tfloat32\t") +
         (has_avx512() ? "avx512\tdirect: x read in place (channels_last) or through staged rows, 12 x 32 "
                         "channel-vector or Co x 96 pixel-vector microkernels\n"
                       : std::string(isa_name(isa())) + "\tnot served below avx512: fastnst.ops.conv.conv runs aten's convolution\n");
}

TORCH_LIBRARY_IMPL(fastnst, CPU, m) { m.impl("conv2d_direct", &conv2d_direct_cpu); }

}  // namespace cpu
}  // namespace fastnst
