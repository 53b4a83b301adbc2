// 3x3 stride-1 convolution by Winograd's minimal filtering, F(4x4, 3x3) (Lavin & Gray, "Fast
// Algorithms for Convolutional Neural Networks", CVPR 2016), for the inference of the
// style-transfer networks (their residual blocks and upsampling convolutions are 3x3, stride 1,
// on reflection-padded inputs, which fastnst::instance_norm_pad writes).
//
//   y[b, o, i, j] = bias[o] + sum_{c, u, v} w[o, c, u, v] X[b, c, i + u, j + v]
//   X = reflect_pad(upsample_nearest(x, upsample), pad)   (never formed: read through index maps)
//   (a valid cross-correlation: y is [B, Co, Hv - 2, Wv - 2], Hv = H upsample + 2 pad)
//
// Each 4 x 4 output tile comes from the 6 x 6 input tile d around it:
//   Y = A^T [ sum_c (G g_oc G^T) . (B^T d_c B) ] A
// so the 9 multiply-adds per output of the direct form become 36 per 16 outputs (4x fewer),
// spent in 36 independent GEMMs M[p] = V[p] U[p] (tiles x C times C x Co, p = the 36 positions of
// the transformed tile). Matrices (points 0, +-1, +-2, infinity):
//   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
//   G   = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
//   A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
//
// Accuracy: fp32 throughout (transforms, GEMM accumulation). The transforms' coefficients (up
// to 8 in A, 5 in B) amplify rounding: the error is ~10-30x that of a direct fp32 convolution
// (~1e-5 of the output's scale, measured in tests/test_conv.py against float64), far below
// what an 8-bit image resolves. Only float32 is served (bf16 inputs would lose too much in the
// transforms; the networks run their bf16 convolutions on oneDNN).
//
// The virtual input X lets the networks' norm stage write the small tensor x instead of the
// padded (and 4x larger, upsampled) one, once per layer.
//
// Layout: x is read channels_last ([B, H, W, C] in memory; other layouts are copied once),
// y is written channels_last. Channels are processed 16 to a vector, so C and Co must be
// multiples of 16. Blocks of kT consecutive tiles (row-major over b, tile row, tile column)
// go to the threads; per block, the input transform writes V [36][kT][C], then for each block
// of 32 (or 16) output channels the 36 GEMMs write M [36][kT][32] (an L2-sized buffer) and the
// output transform reads it back, adds the bias and stores the tile (clipped at the border).
// U [36][Co / 32][C][32] (the transformed weight) is made once per call, in parallel.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
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

constexpr int kT = 24;  // tiles per block: two groups of the microkernel's kR rows
constexpr int kR = 12;  // microkernel rows (tiles) x up to 2 vectors of 16 output channels

#if defined(FASTNST_X86)
#define WINO_INL __attribute__((target("avx512f,fma"), always_inline)) inline
#define WINO_FN __attribute__((target("avx512f,fma")))

// r = B^T d for one column of 6 vectors.
WINO_INL void bt6(const __m512 d[6], __m512 r[6]) {
  const __m512 four = _mm512_set1_ps(4.f), five = _mm512_set1_ps(5.f), two = _mm512_set1_ps(2.f);
  const __m512 a = _mm512_fnmadd_ps(four, d[2], d[4]);             // d4 - 4 d2
  const __m512 b = _mm512_fnmadd_ps(four, d[1], d[3]);             // d3 - 4 d1
  const __m512 c = _mm512_sub_ps(d[4], d[2]);                      // d4 - d2
  const __m512 e = _mm512_mul_ps(two, _mm512_sub_ps(d[3], d[1]));  // 2 (d3 - d1)
  r[0] = _mm512_fnmadd_ps(five, d[2], _mm512_fmadd_ps(four, d[0], d[4]));
  r[1] = _mm512_add_ps(a, b);
  r[2] = _mm512_sub_ps(a, b);
  r[3] = _mm512_add_ps(c, e);
  r[4] = _mm512_sub_ps(c, e);
  r[5] = _mm512_fnmadd_ps(five, d[3], _mm512_fmadd_ps(four, d[1], d[5]));
}

// V[p] = (B^T d B)[p / 6][p % 6] for a 6 x 6 tile d, stored at out + p * pstride.
WINO_INL void input_transform(const __m512 d[6][6], float* out, int64_t pstride) {
  __m512 tmp[6][6];
  for (int s = 0; s < 6; ++s) {
    __m512 col[6] = {d[0][s], d[1][s], d[2][s], d[3][s], d[4][s], d[5][s]}, r[6];
    bt6(col, r);
    for (int i = 0; i < 6; ++i) tmp[i][s] = r[i];
  }
  for (int i = 0; i < 6; ++i) {
    __m512 r[6];
    bt6(tmp[i], r);
    for (int j = 0; j < 6; ++j) _mm512_storeu_ps(out + (6 * i + j) * pstride, r[j]);
  }
}

// r = A^T m for one column of 6 vectors (4 results).
WINO_INL void at6(const __m512 m[6], __m512 r[4]) {
  const __m512 s12 = _mm512_add_ps(m[1], m[2]), d12 = _mm512_sub_ps(m[1], m[2]);
  const __m512 s34 = _mm512_add_ps(m[3], m[4]), d34 = _mm512_sub_ps(m[3], m[4]);
  r[0] = _mm512_add_ps(_mm512_add_ps(m[0], s12), s34);
  r[1] = _mm512_fmadd_ps(_mm512_set1_ps(2.f), d34, d12);
  r[2] = _mm512_fmadd_ps(_mm512_set1_ps(4.f), s34, s12);
  r[3] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.f), d34, d12), m[5]);
}

// r = G g for one column of 3 vectors (6 results).
WINO_INL void g3(const __m512 g[3], __m512 r[6]) {
  const __m512 s02 = _mm512_add_ps(g[0], g[2]);
  const __m512 sixth = _mm512_set1_ps(1.f / 6.f);
  r[0] = _mm512_mul_ps(_mm512_set1_ps(0.25f), g[0]);
  r[1] = _mm512_mul_ps(_mm512_set1_ps(-1.f / 6.f), _mm512_add_ps(s02, g[1]));
  r[2] = _mm512_mul_ps(_mm512_set1_ps(-1.f / 6.f), _mm512_sub_ps(s02, g[1]));
  const __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.f / 24.f), g[0], _mm512_mul_ps(sixth, g[2]));
  const __m512 q = _mm512_mul_ps(_mm512_set1_ps(1.f / 12.f), g[1]);
  r[3] = _mm512_add_ps(p, q);
  r[4] = _mm512_sub_ps(p, q);
  r[5] = g[2];
}

// U[p][ob][c][w] (w = 32, or 16 for a last block of 16 channels) from wt [C][3][3][Co].
WINO_FN void transform_weight(const float* wt, float* U, int64_t C, int64_t Co, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t o = 0; o < Co; o += 16) {
      __m512 g[3][3], t[6][3], u[6];
      for (int a = 0; a < 3; ++a)
        for (int b = 0; b < 3; ++b) g[a][b] = _mm512_loadu_ps(wt + ((c * 3 + a) * 3 + b) * Co + o);
      for (int b = 0; b < 3; ++b) {  // columns: t[.][b] = G g[.][b]
        __m512 col[3] = {g[0][b], g[1][b], g[2][b]}, r[6];
        g3(col, r);
        for (int i = 0; i < 6; ++i) t[i][b] = r[i];
      }
      const int64_t ob = o / 32, w = std::min<int64_t>(32, Co - ob * 32), lane = o % 32;
      for (int i = 0; i < 6; ++i) {  // rows: U[i][.] = t[i][.] G^T
        g3(t[i], u);
        for (int j = 0; j < 6; ++j)
          _mm512_storeu_ps(U + (6 * i + j) * C * Co + ob * 32 * C + c * w + lane, u[j]);
      }
    }
  }
}

// Geometry of one call.
struct Geo {
  int64_t B, C, Co, Hp, Wp, H, W, th, tw;  // Hp, Wp: the virtual input X; H, W: the output
  int64_t Hx, Wx;   // x's own height and width
  const int64_t* rows;  // [Hp]: the row of x that row i of X reads
  const int64_t* cols;  // [Wp]: the column of x that column j of X reads
  const float* x;   // [B, Hx, Wx, C]
  float* y;         // [B, H, W, Co]
  const float* U;   // [36][Co / 32][C][32]
  const float* bias;  // [Co] or nullptr
};

// V[p][t][c0..c0+16) of tile t (tile row ty, column tx of image b).
WINO_FN void input_tile(const Geo& g, int64_t b, int64_t ty, int64_t tx, float* V, int t) {
  const int64_t y0 = 4 * ty, x0 = 4 * tx;
  const float* src[6][6];  // each pixel of the tile in x, nullptr beyond X
  for (int r = 0; r < 6; ++r)
    for (int s = 0; s < 6; ++s)
      src[r][s] = (y0 + r < g.Hp && x0 + s < g.Wp)
                      ? g.x + ((b * g.Hx + g.rows[y0 + r]) * g.Wx + g.cols[x0 + s]) * g.C
                      : nullptr;
  for (int64_t c = 0; c < g.C; c += 16) {
    __m512 d[6][6];
    for (int r = 0; r < 6; ++r)
      for (int s = 0; s < 6; ++s) d[r][s] = src[r][s] ? _mm512_loadu_ps(src[r][s] + c) : _mm512_setzero_ps();
    input_transform(d, V + t * g.C + c, kT * g.C);
  }
}

// M[rows][NV * 16] = A[rows][K] * Bm[K][ldb] for `rows` <= kR; lda = K, ldm = 32.
template <int NV>
WINO_INL void micro(const float* A, int64_t K, const float* Bm, int64_t ldb, float* M) {
  __m512 acc[kR][NV];
  for (int r = 0; r < kR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(Bm + k * ldb + 16 * v);
#pragma GCC unroll 12
    for (int r = 0; r < kR; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * K + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < kR; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(M + r * 32 + 16 * v, acc[r][v]);
}

template <int NV>
WINO_FN void gemm_block(const Geo& g, const float* V, float* M, int64_t ob) {
  const int64_t w = NV * 16;
  for (int p = 0; p < 36; ++p) {
    const float* Up = g.U + p * g.C * g.Co + ob * 32 * g.C;
    for (int r0 = 0; r0 < kT; r0 += kR)
      micro<NV>(V + (p * kT + r0) * g.C, g.C, Up, w, M + (p * kT + r0) * 32);
  }
}

// y tile of tile t from M[p][t][lane0 .. lane0 + 16) = output channels o0 .. o0 + 16 (M holds
// `tiles` tiles per position; G: Geo or SplitGeo, for y, H, W, Co and bias).
template <class G>
WINO_FN void output_tile(const G& g, int64_t b, int64_t ty, int64_t tx, const float* M, int t, int lane0,
                         int64_t o0, int tiles) {
  __m512 m[6][6], tmp[4][6];
  for (int p = 0; p < 36; ++p) m[p / 6][p % 6] = _mm512_loadu_ps(M + (p * tiles + t) * 32 + lane0);
  for (int s = 0; s < 6; ++s) {
    __m512 col[6] = {m[0][s], m[1][s], m[2][s], m[3][s], m[4][s], m[5][s]}, r[4];
    at6(col, r);
    for (int i = 0; i < 4; ++i) tmp[i][s] = r[i];
  }
  const __m512 bias = g.bias ? _mm512_loadu_ps(g.bias + o0) : _mm512_setzero_ps();
  const int64_t y0 = 4 * ty, x0 = 4 * tx;
  const int ni = static_cast<int>(std::min<int64_t>(4, g.H - y0)), nj = static_cast<int>(std::min<int64_t>(4, g.W - x0));
  for (int i = 0; i < ni; ++i) {
    __m512 r[4];
    at6(tmp[i], r);
    float* row = g.y + ((b * g.H + y0 + i) * g.W + x0) * g.Co + o0;
    for (int j = 0; j < nj; ++j) _mm512_storeu_ps(row + j * g.Co, _mm512_add_ps(r[j], bias));
  }
}

void run_blocks(const Geo& g, int64_t blk0, int64_t blk1) {
  const int64_t ntiles = g.B * g.th * g.tw;
  std::vector<float> Vbuf(static_cast<size_t>(36 * kT * g.C), 0.f), Mbuf(static_cast<size_t>(36 * kT * 32), 0.f);
  float* V = Vbuf.data();
  float* M = Mbuf.data();
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const int64_t t0 = blk * kT, n = std::min<int64_t>(kT, ntiles - t0);
    int64_t bt[kT][3];
    for (int64_t t = 0; t < n; ++t) {
      const int64_t id = t0 + t;
      bt[t][0] = id / (g.th * g.tw);
      bt[t][1] = (id / g.tw) % g.th;
      bt[t][2] = id % g.tw;
      input_tile(g, bt[t][0], bt[t][1], bt[t][2], V, static_cast<int>(t));
    }
    for (int64_t ob = 0; ob * 32 < g.Co; ++ob) {
      const int64_t w = std::min<int64_t>(32, g.Co - ob * 32);
      if (w == 32)
        gemm_block<2>(g, V, M, ob);
      else
        gemm_block<1>(g, V, M, ob);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t l = 0; l < w; l += 16)
          output_tile(g, bt[t][0], bt[t][1], bt[t][2], M, static_cast<int>(t), static_cast<int>(l), ob * 32 + l, kT);
    }
  }
}

// ---- k x k kernels (k = 3 m) split into m x m blocks of 3 x 3 ---------------------------------
// y = sum over the blocks (a, b) of the 3x3 convolution of X shifted by (3a, 3b) with the block
// w[:, :, 3a:3a+3, 3b:3b+3]; each by F(4x4, 3x3), the m^2 C (block, channel) pairs forming the
// GEMMs' K: M[p] = V[p] U[p] with V[p] [K][16 tiles] and U[p] [K][Co]. For the networks' 9x9
// layers on 3-channel images (C = 3, K = 27), which the channel-vectorised kernel above cannot
// take: vectorised over 16 consecutive tiles of a tile row instead, whose inputs are 16
// consecutive floats of rows staged in 4 column phases ([phase][c][j] = X[c, row, 4 j + phase]).
constexpr int kST = 16;  // tiles per block (one vector)

struct SplitGeo {
  int64_t B, C, Co, m, K, Hv, Wv, H, W, th, tw, ld;
  int64_t sB, sC, sH, sW;
  const int64_t* rows;
  const int64_t* cols;
  const float* x;
  float* y;
  const float* U;     // [36][Co / 32][K][32]
  const float* bias;  // [Co] or nullptr
};

// Staged row vr of image b (zeros for vr >= Hv: rows of partial tiles past the image).
void split_stage(const SplitGeo& g, int64_t b, int64_t vr, float* dst) {
  const int64_t slot = 4 * g.C * g.ld;
  if (vr >= g.Hv) {
    std::fill(dst, dst + slot, 0.f);
    return;
  }
  const float* src = g.x + b * g.sB + g.rows[vr] * g.sH;
  for (int64_t ph = 0; ph < 4; ++ph)
    for (int64_t c = 0; c < g.C; ++c) {
      const float* p = src + c * g.sC;
      float* d = dst + (ph * g.C + c) * g.ld;
      const int64_t n = (g.Wv - ph + 3) / 4;
      for (int64_t j = 0; j < n; ++j) d[j] = p[g.cols[4 * j + ph] * g.sW];
    }
}

// M[rows 8][NV * 16] += A[K][16] (tiles t0 .. t0 + 8) times Bm[K][ldb].
template <int NV>
WINO_INL void micro_tiles(const float* A, int64_t K, const float* Bm, int64_t ldb, float* M) {
  constexpr int R = 8;
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(Bm + k * ldb + 16 * v);
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(A[k * kST + r]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(M + r * 32 + 16 * v, acc[r][v]);
}

// One block of 16 tiles (tile row ty of image b, tiles tx0 ..): rp[r] = staged row 4 ty + r.
WINO_FN void split_block(const SplitGeo& g, const float* const* rp, int64_t b, int64_t ty, int64_t tx0, float* V,
                         float* M) {
  const int64_t C = g.C, K = g.K, ld = g.ld;
  for (int64_t a = 0; a < g.m; ++a)
    for (int64_t bb = 0; bb < g.m; ++bb)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t k = (a * g.m + bb) * C + c;
        __m512 d[6][6];
        for (int r = 0; r < 6; ++r)
          for (int s = 0; s < 6; ++s) {
            const int64_t col = 3 * bb + s;  // the tile's column offset in X
            d[r][s] = _mm512_loadu_ps(rp[3 * a + r] + ((col % 4) * C + c) * ld + tx0 + col / 4);
          }
        input_transform(d, V + k * kST, K * kST);
      }
  const int64_t nt = std::min<int64_t>(kST, g.tw - tx0);
  for (int64_t ob = 0; ob * 32 < g.Co; ++ob) {
    const int64_t w = std::min<int64_t>(32, g.Co - ob * 32);
    for (int p = 0; p < 36; ++p) {
      const float* Up = g.U + p * K * g.Co + ob * 32 * K;
      for (int t0 = 0; t0 < kST; t0 += 8) {
        if (w == 32)
          micro_tiles<2>(V + p * K * kST + t0, K, Up, 32, M + (p * kST + t0) * 32);
        else
          micro_tiles<1>(V + p * K * kST + t0, K, Up, 16, M + (p * kST + t0) * 32);
      }
    }
    for (int64_t t = 0; t < nt; ++t)
      for (int64_t l = 0; l < w; l += 16)
        output_tile(g, b, ty, tx0 + t, M, static_cast<int>(t), static_cast<int>(l), ob * 32 + l, kST);
  }
}

// Tile rows r0 .. r1 (r = b th + ty), with a ring of the 3 (m - 1) + 6 staged rows they read.
void split_rows(const SplitGeo& g, int64_t r0, int64_t r1) {
  const int64_t nrows = 3 * (g.m - 1) + 6, slot = 4 * g.C * g.ld;
  std::vector<float> ring(static_cast<size_t>(nrows * slot), 0.f);
  std::vector<int64_t> tag(static_cast<size_t>(nrows), -1);
  std::vector<const float*> rp(static_cast<size_t>(nrows));
  std::vector<float> V(static_cast<size_t>(36 * g.K * kST)), M(static_cast<size_t>(36 * kST * 32));
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / g.th, ty = r % g.th;
    for (int64_t i = 0; i < nrows; ++i) {
      const int64_t vr = 4 * ty + i, sl = vr % nrows, id = b * (g.Hv + 4 * nrows) + vr;
      float* dst = ring.data() + sl * slot;
      if (tag[sl] != id) {
        split_stage(g, b, vr, dst);
        tag[sl] = id;
      }
      rp[i] = dst;
    }
    for (int64_t tx0 = 0; tx0 < g.tw; tx0 += kST) split_block(g, rp.data(), b, ty, tx0, V.data(), M.data());
  }
}
#endif  // FASTNST_X86

at::Tensor conv3x3_winograd_cpu(const at::Tensor& x0, const at::Tensor& weight0, const c10::optional<at::Tensor>& bias0,
                                int64_t upsample, int64_t pad) {
  check_isa();
  const char* op = "conv3x3_winograd";
  TORCH_CHECK(x0.dim() == 4, op, ": x must be [B, C, H, W], got ", x0.dim(), " dimensions");
  TORCH_CHECK(x0.scalar_type() == at::kFloat, op, ": x must be float32 (the Winograd transforms lose too much "
              "in 16-bit floats), got ", x0.scalar_type());
  TORCH_CHECK(weight0.dim() == 4 && weight0.size(2) == 3 && weight0.size(3) == 3 && weight0.size(1) == x0.size(1),
              op, ": weight must be [Co, C, 3, 3] with C = x's ", x0.size(1), " channels, got ", weight0.sizes());
  TORCH_CHECK(weight0.scalar_type() == at::kFloat, op, ": weight must be float32, got ", weight0.scalar_type());
  const int64_t B = x0.size(0), C = x0.size(1), Hx = x0.size(2), Wx = x0.size(3), Co = weight0.size(0);
  TORCH_CHECK(C % 16 == 0 && Co % 16 == 0 && C > 0 && Co > 0, op,
              ": the input and output channels must be positive multiples of 16, got C = ", C, ", Co = ", Co);
  TORCH_CHECK(upsample >= 1 && pad >= 0, op, ": upsample must be >= 1 and pad >= 0, got ", upsample, " and ", pad);
  check_virtual_input(op, Hx, Wx, upsample, pad, 3);
  const int64_t Hp = Hx * upsample + 2 * pad, Wp = Wx * upsample + 2 * pad;
  const at::Tensor bias = checked_bias(op, bias0, Co, x0);
  TORCH_CHECK(weight0.device() == x0.device(), op, ": weight must be on x's device");
  TORCH_CHECK(has_avx512(), op, ": needs the avx512 CPU path, this process runs ", runtime_isa(),
              " (call fastnst.ops.conv.conv3x3, which uses aten's convolution there)");
  const int64_t H = Hp - 2, W = Wp - 2;
  at::Tensor y = reusable_empty_pooled(OutSlot::kConv, {B, Co, H, W}, {Co * H * W, 1, W * Co, Co}, x0.options());
  if (B == 0) return y;
#if defined(FASTNST_X86)
  const at::Tensor x = x0.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor wt = weight0.permute({1, 2, 3, 0}).contiguous();  // [C][3][3][Co]
  at::Tensor U = at::empty({36 * C * Co}, x0.options());
  const float* wtp = wt.data_ptr<float>();
  float* Up = U.data_ptr<float>();
  at::parallel_for(0, C, 8, [&](int64_t c0, int64_t c1) { transform_weight(wtp, Up, C, Co, c0, c1); });
  const std::vector<int64_t> rows = reflect_upsample_map(Hx, upsample, pad), cols = reflect_upsample_map(Wx, upsample, pad);
  Geo g{B, C, Co, Hp, Wp, H, W, (H + 3) / 4, (W + 3) / 4, Hx, Wx, rows.data(), cols.data(), x.data_ptr<float>(),
        y.data_ptr<float>(), Up, bias.defined() ? bias.data_ptr<float>() : nullptr};
  const int64_t nblocks = (B * g.th * g.tw + kT - 1) / kT;
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) { run_blocks(g, b0, b1); });
#endif
  return y;
}

at::Tensor conv_winograd_split_cpu(const at::Tensor& x, const at::Tensor& weight0, const c10::optional<at::Tensor>& bias0,
                                   int64_t upsample, int64_t pad) {
  check_isa();
  const char* op = "conv_winograd_split";
  TORCH_CHECK(x.dim() == 4, op, ": x must be [B, C, H, W], got ", x.dim(), " dimensions");
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, ": x must be float32 (the Winograd transforms lose too much "
              "in 16-bit floats), got ", x.scalar_type());
  TORCH_CHECK(weight0.dim() == 4 && weight0.size(2) == weight0.size(3) && weight0.size(2) % 3 == 0 &&
                  weight0.size(2) > 0 && weight0.size(1) == x.size(1),
              op, ": weight must be [Co, C, k, k] with k a multiple of 3 and C = x's ", x.size(1), " channels, got ",
              weight0.sizes());
  TORCH_CHECK(weight0.scalar_type() == at::kFloat, op, ": weight must be float32, got ", weight0.scalar_type());
  TORCH_CHECK(weight0.device() == x.device(), op, ": weight must be on x's device");
  const int64_t B = x.size(0), C = x.size(1), Hx = x.size(2), Wx = x.size(3), Co = weight0.size(0), k = weight0.size(2);
  TORCH_CHECK(C > 0 && Co > 0 && Co % 16 == 0, op,
              ": the output channels must be a positive multiple of 16 and C positive, got C = ", C, ", Co = ", Co);
  TORCH_CHECK(upsample >= 1 && pad >= 0, op, ": upsample must be >= 1 and pad >= 0, got ", upsample, " and ", pad);
  check_virtual_input(op, Hx, Wx, upsample, pad, k);
  const int64_t Hv = Hx * upsample + 2 * pad, Wv = Wx * upsample + 2 * pad;
  const at::Tensor bias = checked_bias(op, bias0, Co, x);
  TORCH_CHECK(has_avx512(), op, ": needs the avx512 CPU path, this process runs ", runtime_isa(),
              " (call fastnst.ops.conv.conv, which uses aten's convolution there)");
  const int64_t H = Hv - k + 1, W = Wv - k + 1, m = k / 3, K = m * m * C;
  at::Tensor y = reusable_empty_pooled(OutSlot::kConv, {B, Co, H, W}, {Co * H * W, 1, W * Co, Co}, x.options());
  if (B == 0) return y;
#if defined(FASTNST_X86)
  // wt[(a m + b) C + c][u][v][o] = w[o][c][3 a + u][3 b + v]: the blocks as K input channels
  const at::Tensor wt = weight0.reshape({Co, C, m, 3, m, 3}).permute({2, 4, 1, 3, 5, 0}).contiguous();
  at::Tensor U = at::empty({36 * K * Co}, x.options());
  const float* wtp = wt.data_ptr<float>();
  float* Up = U.data_ptr<float>();
  at::parallel_for(0, K, 8, [&](int64_t c0, int64_t c1) { transform_weight(wtp, Up, K, Co, c0, c1); });
  const std::vector<int64_t> rows = reflect_upsample_map(Hx, upsample, pad), cols = reflect_upsample_map(Wx, upsample, pad);
  const int64_t th = (H + 3) / 4, tw = (W + 3) / 4;
  const int64_t ld = (tw + kST - 1) / kST * kST + 4;  // blocks of 16 tiles read up to 3 columns on
  SplitGeo g{B, C, Co, m, K, Hv, Wv, H, W, th, tw, ld, x.stride(0), x.stride(1), x.stride(2), x.stride(3),
             rows.data(), cols.data(), x.data_ptr<float>(), y.data_ptr<float>(), Up,
             bias.defined() ? bias.data_ptr<float>() : nullptr};
  at::parallel_for(0, B * th, 4, [&](int64_t r0, int64_t r1) { split_rows(g, r0, r1); });
#endif
  return y;
}

}  // namespace

std::string conv_routes() {
  return std::string("conv3x3_winograd\tfloat32\t") +
         (has_avx512() ? "avx512\tWinograd F(4x4, 3x3): fastnst's transforms and 12 x 32 GEMM microkernel\n"
                       : std::string(isa_name(isa())) + "\tnot served below avx512: fastnst.ops.conv.conv3x3 runs aten's convolution\n") +
         "conv_winograd_split\tfloat32\t" +
         (has_avx512() ? "avx512\tWinograd F(4x4, 3x3) on the 3x3 blocks of a k x k kernel, 16 tiles a vector\n"
                       : std::string(isa_name(isa())) + "\tnot served below avx512: fastnst.ops.conv.conv runs aten's convolution\n");
}

TORCH_LIBRARY_IMPL(fastnst, CPU, m) {
  m.impl("conv3x3_winograd", &conv3x3_winograd_cpu);
  m.impl("conv_winograd_split", &conv_winograd_split_cpu);
}

}  // namespace cpu
}  // namespace fastnst
