// Style swap on NVIDIA GPUs (CUDA, written against the torch stable ABI): Chen & Schmidt 2016,
// "Fast Patch-based Style Transfer of Arbitrary Style". Contract in csrc/registration.cpp.
//
// Geometry (k = patch_size, s = stride): content patches p = (i, j) at (i s, j s), i < nh =
// (Hc - k) / s + 1, j < nw = (Wc - k) / s + 1; style patches q = qi * mw + qj at (qi s, qj s),
// qi < mh = (Hs - k) / s + 1, qj < mw = (Ws - k) / s + 1. A patch is a C x k x k block.
//
// style_swap_match: indices[b, i, j] = argmax_q score(p, q), ties -> the lowest q, with
//   score(p, q) = <content[b] patch p, style[b or 0] patch q> * inv[q],
//   inv[q] = 1 / (||style patch q||_2 + eps), and inv[q] = 0 for an all-zero patch (score 0,
//   never 0 * inf = NaN when eps = 0).
// It is an implicit GEMM, M = nh nw content patches x N = mh mw style patches x K = C k k, whose
// M x N score matrix is never stored:
//  * inverse norms: a pixel kernel sums the squares over the channels of every style pixel
//    (fp32, channel order), a patch kernel sums those over the k x k window (row-major order)
//    into an fp32 workspace inv [Bs, N]. Equal style patches get bit-equal inv.
//  * matching: a block owns 64 content patches of one sample and walks the style patches in
//    tiles of 64 (all of them, or one contiguous range of tiles when the style patches are split
//    across blocks, below). Per style tile, K goes through shared memory in steps of 32: both
//    operand tiles are gathered straight from the strided 4-D tensors (im2col on the fly: the
//    patch origin offsets of the tile's 64 rows and the (c, dy, dx) offsets of the step's 32 K
//    entries sit in small shared tables; 64 threads keep one K cursor each, advanced by 32 per
//    step with carries instead of divisions) and widened to fp32, the next step's loads are held
//    in registers while the current step is computed, and 256 threads accumulate 4 x 4 register
//    micro-tiles with one fmaf chain per score in K order. Every score therefore has the same
//    summation order (K order, zero padding beyond K adds exact zeros), so equal style patches
//    give bit-equal scores. The tile's scores are scaled by inv and folded into a running best
//    (score, q) per (thread, content patch) in registers: "better" = higher score, or an equal
//    score with a lower q (NaN never wins). At the end the 16 threads that share a content patch
//    merge their bests with warp shuffles under the same rule, which is order-free, so the
//    result is the lowest q among the exact maxima (0 if every score is NaN: non-finite input).
//  * K order: (c, dy, dx) normally, (dy, dx, c) when content has channels innermost
//    (channels_last); the loads of an operand walk 32 consecutive K entries per warp when that
//    operand's channels are innermost (coalesced), else 32 consecutive patches (coalesced along a
//    row of the patch grid at stride 1 for NCHW).
//  * grid: x = content tile, y = range of style tiles, z = sample (chunks of 65535 samples).
//    When B * ceil(M / 64) < 4 blocks per SM (one 64 x 64 content map at k = 3 is 61 blocks),
//    the style tiles are cut into contiguous ranges of at least 4 tiles across gridDim.y; each
//    block writes its (best score, q) per content patch to fp32/int32 workspaces
//    [splits, B, M] and a finalize kernel merges the splits with the same rule. Deterministic:
//    no atomics.
// Shared memory per block: two 32 x 65 fp32 operand tiles (16,640 B) + 64 + 64 row offsets and
// 2 x 2 x 32 K offsets (int64, 2,048 B) = 18,688 B, static.
//
// style_swap_reconstruct: out[b, c, y, x] = (sum over the content patches (i, j) covering (y, x)
// of style[b or 0, c, qi s + y - i s, qj s + x - j s], q = indices[b, i, j]) / n(y, x), 0 where
// n(y, x) = 0; nh, nw from (out_h, out_w). One thread per output element (grid x: pixels of a
// plane, coalesced stores; grid y: planes (b, c)) visits the covering patches i in
// [max(0, ceil((y - k + 1) / s)), min(nh - 1, y / s)] and j likewise, in increasing (i, j)
// order, accumulating in fp32 and dividing by n: deterministic, no atomics.
// indices are not range-checked on the host (that would need a device sync); an index outside
// [0, N) is never dereferenced and turns the pixels its patch covers into NaN.
//
// Inputs: float32, float16 or bfloat16 with any strides (contiguous, channels_last, slices);
// every load goes through the strides. indices: int64, any strides. Outputs: int64 [B, nh, nw]
// and a contiguous [B, C, out_h, out_w] in style's dtype.
//
// Kernels run on the current CUDA stream of the inputs' device, under a device guard.

#include "common.cuh"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

namespace fastnst {
namespace cuda {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

constexpr int kTile = 64;          // content patches (rows) and style patches (columns) of a tile
constexpr int kBK = 32;            // K step
constexpr int kPitch = kTile + 1;  // shared-memory row pitch (odd: no bank conflicts)
constexpr int kThreads = 256;      // 16 x 16 threads, 4 x 4 scores each
constexpr int kLoads = kTile * kBK / kThreads;  // elements of one operand tile per thread (8)
constexpr int kNoIndex = INT_MAX;  // "no candidate yet"; larger than every valid q
constexpr int64_t kMinSplitTiles = 4;  // fewest style tiles per block when N is split
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxGridZ = 65535;
static_assert(kThreads >= kTile + 2 * kBK, "threads 0..63 fill row tables, 64..127 K tables");

// (v, q) beats (best, best_q): a higher score, or the same score at a lower index. NaN never
// beats anything; an initial (-inf, kNoIndex) loses to every non-NaN candidate.
__device__ __forceinline__ bool better(float v, int q, float best, int best_q) {
  return v > best || (v == best && q < best_q);
}

// ---- inverse norms of the style patches ----------------------------------------------------
// sq[bs, y, x] = sum_c style[bs, c, y, x]^2 (fp32, channels in order).
template <typename T>
__global__ void pixel_sq_kernel(const T* __restrict__ style,  // [Bs, C, H, W], strides (sb..sw)
                                int64_t sb, int64_t sc, int64_t sh, int64_t sw, int64_t Bs,
                                int64_t C, int64_t H, int64_t W,
                                float* __restrict__ sq)  // [Bs, H, W] contiguous
{
  const int64_t HW = H * W, n = Bs * HW;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bs = e / HW, yx = e - bs * HW;
    const int64_t y = yx / W, x = yx - y * W;
    const T* px = style + bs * sb + y * sh + x * sw;
    float acc = 0.f;
    for (int64_t c = 0; c < C; ++c) {
      const float v = to_float(px[c * sc]);
      acc = fmaf(v, v, acc);
    }
    sq[e] = acc;
  }
}

// inv[bs, q] = 1 / (sqrt(sum of sq over the patch's k x k pixels, row-major) + eps), 0 for a
// zero sum.
__global__ void inv_norm_kernel(const float* __restrict__ sq,  // [Bs, H, W] contiguous
                                int64_t Bs, int64_t H, int64_t W, int k, int s, int64_t mh,
                                int64_t mw, float eps,
                                float* __restrict__ inv)  // [Bs, mh * mw] contiguous
{
  const int64_t N = mh * mw, n = Bs * N;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bs = e / N, q = e - bs * N;
    const int64_t qi = q / mw, qj = q - qi * mw;
    const float* base = sq + bs * H * W + qi * s * W + qj * s;
    float acc = 0.f;
    for (int dy = 0; dy < k; ++dy)
      for (int dx = 0; dx < k; ++dx) acc += base[dy * W + dx];
    inv[e] = acc > 0.f ? 1.f / (sqrtf(acc) + eps) : 0.f;
  }
}

// ---- matching ------------------------------------------------------------------------------
struct MatchArgs {
  int64_t c_sb, c_sc, c_sh, c_sw;  // content strides
  int64_t s_sb, s_sc, s_sh, s_sw;  // style strides; s_sb = 0 when one style serves every sample
  int64_t inv_sb;                  // inv's batch stride: N, or 0 likewise
  int64_t K;                       // C k k
  int64_t nw, M;                   // content patches per grid row, per sample
  int64_t mw;                      // style patches per grid row
  int N;                           // style patches per sample
  int C, k, s;
  int chan_inner;                  // K order: 1 -> (dy, dx, c), 0 -> (c, dy, dx)
  int c_kfast, s_kfast;            // an operand's loads walk K within a warp (else patches)
  int inc_c, inc_dy, inc_dx;       // kBK in the mixed radix of the K order (see KCursor)
  int n_nt;                        // style tiles, ceil(N / 64)
  int tiles_per_split;             // style tiles per gridDim.y slice
};

// A K entry kg and its (c, dy, dx), advanced by kBK per step without divisions: kBK is
// (inc_c, inc_dy, inc_dx) in the K order's mixed radix, added digit by digit with carries.
// Once kg >= K the digits are meaningless and unused (k_offset returns -1).
struct KCursor {
  int64_t kg;
  int c, dy, dx;
};

__device__ __forceinline__ KCursor k_cursor(const MatchArgs& a, int kk) {
  KCursor u;
  u.kg = kk;
  int r;
  if (a.chan_inner) {  // kg = (dy k + dx) C + c
    r = kk / a.C;
    u.c = kk - r * a.C;
  } else {  // kg = c k^2 + dy k + dx
    const int64_t kk2 = int64_t(a.k) * a.k;
    u.c = static_cast<int>(kk / kk2);
    r = static_cast<int>(kk - u.c * kk2);
  }
  u.dy = r / a.k;
  u.dx = r - u.dy * a.k;
  return u;
}

__device__ __forceinline__ void k_advance(const MatchArgs& a, KCursor& u) {
  u.kg += kBK;
  if (a.chan_inner) {
    u.c += a.inc_c;
    int carry = 0;
    if (u.c >= a.C) {
      u.c -= a.C;
      carry = 1;
    }
    u.dx += a.inc_dx + carry;  // <= 2k - 1
    if (u.dx >= a.k) {
      u.dx -= a.k;
      u.dy += 1;
    }
    u.dy += a.inc_dy;
  } else {
    u.dx += a.inc_dx;  // <= 2k - 2
    if (u.dx >= a.k) {
      u.dx -= a.k;
      u.dy += 1;
    }
    u.dy += a.inc_dy;  // <= 2k - 1
    if (u.dy >= a.k) {
      u.dy -= a.k;
      u.c += 1;
    }
    u.c += a.inc_c;
  }
}

// Offset of the cursor's K entry within a patch whose origin is at 0, or -1 past K.
__device__ __forceinline__ int64_t k_offset(const MatchArgs& a, const KCursor& u, int64_t sc,
                                            int64_t sh, int64_t sw) {
  return u.kg < a.K ? u.c * sc + u.dy * sh + u.dx * sw : -1;
}

// Threads 64..127 own one K lane each (64..95: content, 96..127: style) and write its offset
// for the cursor's step into koff[op][kk].
__device__ __forceinline__ void fill_k_offsets(const MatchArgs& a, const KCursor& u,
                                               int64_t (*koff)[kBK]) {
  const int lane = static_cast<int>(threadIdx.x) - kTile;
  if (lane < 0 || lane >= 2 * kBK) return;
  const int op = lane / kBK, kk = lane % kBK;
  koff[op][kk] = op == 0 ? k_offset(a, u, a.c_sc, a.c_sh, a.c_sw)
                         : k_offset(a, u, a.s_sc, a.s_sh, a.s_sw);
}

// One operand tile: tile[kk][r] = base[rows[r] + koffs[kk]] (0 where either offset is -1),
// stored k-major in shared memory (tile[kk * kPitch + r]). With kfast a warp walks 32
// consecutive kk of one row, otherwise 32 consecutive rows of one kk.
__device__ __forceinline__ void tile_pos(bool kfast, int p, int& r, int& kk) {
  const int t = threadIdx.x;
  if (kfast) {
    kk = t & (kBK - 1);
    r = (t >> 5) + p * (kThreads / kBK);
  } else {
    r = t & (kTile - 1);
    kk = (t >> 6) + p * (kThreads / kTile);
  }
}

template <typename T>
__device__ __forceinline__ void load_tile(float (&reg)[kLoads], const T* __restrict__ base,
                                          const int64_t* rows, const int64_t* koffs, bool kfast) {
#pragma unroll
  for (int p = 0; p < kLoads; ++p) {
    int r, kk;
    tile_pos(kfast, p, r, kk);
    const int64_t ro = rows[r], ko = koffs[kk];
    reg[p] = (ro >= 0 && ko >= 0) ? to_float(base[ro + ko]) : 0.f;
  }
}

__device__ __forceinline__ void store_tile(const float (&reg)[kLoads], float* tile, bool kfast) {
#pragma unroll
  for (int p = 0; p < kLoads; ++p) {
    int r, kk;
    tile_pos(kfast, p, r, kk);
    tile[kk * kPitch + r] = reg[p];
  }
}

// grid: x = 64-patch content tile, y = range of style tiles, z = sample. Rows of a tile are
// content patches p0 + r (thread rows ty + 16 m), columns style patches q0 + c (tx + 16 n).
// With out != nullptr (no split) the block writes the final indices; otherwise its best
// (score, q) per content patch into ws_score / ws_index at [blockIdx.y, b, p].
template <typename T>
__global__ void __launch_bounds__(kThreads)
style_match_kernel(const T* __restrict__ content,  // sample 0 of this launch
                   const T* __restrict__ style,    // style of sample 0 of this launch
                   const float* __restrict__ inv,  // inverse norms of that style, [.., N]
                   MatchArgs a,
                   int64_t* __restrict__ out,       // [B, M] (sample 0 of this launch) or null
                   float* __restrict__ ws_score,    // [splits, B, M] (same offset) or null
                   int* __restrict__ ws_index,      // [splits, B, M] (same offset) or null
                   int64_t ws_split_stride)         // B * M
{
  __shared__ float As[kBK * kPitch];
  __shared__ float Bs[kBK * kPitch];
  __shared__ int64_t row_c[kTile];       // content patch origins (-1: past M)
  __shared__ int64_t row_s[kTile];       // style patch origins (-1: past N)
  __shared__ int64_t koff[2][2][kBK];    // [buffer][content, style][kk] (-1: past K)

  const int t = threadIdx.x;
  const int tx = t & 15, ty = t >> 4;
  const int64_t b = blockIdx.z;
  const int64_t p0 = int64_t(blockIdx.x) * kTile;
  const T* cbase = content + b * a.c_sb;
  const T* sbase = style + b * a.s_sb;
  const float* invb = inv + b * a.inv_sb;
  const bool c_kfast = a.c_kfast != 0, s_kfast = a.s_kfast != 0;
  const KCursor k_first = k_cursor(a, t & (kBK - 1));  // used by threads 64..127

  if (t < kTile) {
    const int64_t p = p0 + t;
    int64_t off = -1;
    if (p < a.M) {
      const int64_t i = p / a.nw, j = p - i * a.nw;
      off = i * a.s * a.c_sh + j * a.s * a.c_sw;
    }
    row_c[t] = off;
  }

  float best[4];
  int best_q[4];
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    best[m] = -INFINITY;
    best_q[m] = kNoIndex;
  }

  const int tile_begin = static_cast<int>(blockIdx.y) * a.tiles_per_split;
  const int tile_end = min(a.n_nt, tile_begin + a.tiles_per_split);
  const int64_t n_steps = (a.K + kBK - 1) / kBK;

  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int q0 = tile * kTile;
    // The previous tile's last reads of row_s and koff precede its last __syncthreads.
    if (t < kTile) {
      const int q = q0 + t;
      int64_t off = -1;
      if (q < a.N) {
        const int64_t qi = q / a.mw, qj = q - qi * a.mw;
        off = qi * a.s * a.s_sh + qj * a.s * a.s_sw;
      }
      row_s[t] = off;
    }
    KCursor cur = k_first;
    if (n_steps > 0) fill_k_offsets(a, cur, koff[0]);
    __syncthreads();

    float acc[4][4] = {};
    float ra[kLoads], rb[kLoads];
    if (n_steps > 0) {
      load_tile(ra, cbase, row_c, koff[0][0], c_kfast);
      load_tile(rb, sbase, row_s, koff[0][1], s_kfast);
    }
    for (int64_t st = 0; st < n_steps; ++st) {
      const int nxt = static_cast<int>((st + 1) & 1);
      store_tile(ra, As, c_kfast);
      store_tile(rb, Bs, s_kfast);
      // koff[nxt] was last read by the loads of step st - 1, before the previous barrier.
      if (st + 1 < n_steps) {
        k_advance(a, cur);
        fill_k_offsets(a, cur, koff[nxt]);
      }
      __syncthreads();
      if (st + 1 < n_steps) {  // next step's loads overlap this step's arithmetic
        load_tile(ra, cbase, row_c, koff[nxt][0], c_kfast);
        load_tile(rb, sbase, row_s, koff[nxt][1], s_kfast);
      }
      mma_tile<kBK, kPitch>(As, Bs, acc);
      __syncthreads();
    }

#pragma unroll
    for (int n = 0; n < 4; ++n) {
      const int q = q0 + tx + 16 * n;
      if (q >= a.N) continue;
      const float w = invb[q];
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        const float v = acc[m][n] * w;
        if (better(v, q, best[m], best_q[m])) {
          best[m] = v;
          best_q[m] = q;
        }
      }
    }
  }

  // Merge over the 16 threads (tx, lanes of one half-warp) that share each content patch.
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    float v = best[m];
    int q = best_q[m];
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, v, o);
      const int oq = __shfl_xor_sync(0xffffffffu, q, o);
      if (better(ov, oq, v, q)) {
        v = ov;
        q = oq;
      }
    }
    const int64_t p = p0 + ty + 16 * m;
    if (tx != 0 || p >= a.M) continue;
    const int64_t e = b * a.M + p;
    if (out != nullptr) {
      out[e] = q == kNoIndex ? 0 : q;  // no candidate: every score was NaN
    } else {
      ws_score[int64_t(blockIdx.y) * ws_split_stride + e] = v;
      ws_index[int64_t(blockIdx.y) * ws_split_stride + e] = q;
    }
  }
}

// out[e] = the best of the splits' (score, q) for e < n = B * M.
__global__ void match_finalize_kernel(const float* __restrict__ ws_score,  // [splits, n]
                                      const int* __restrict__ ws_index,    // [splits, n]
                                      int64_t splits, int64_t n,
                                      int64_t* __restrict__ out)  // [n]
{
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    float v = -INFINITY;
    int q = kNoIndex;
    for (int64_t sp = 0; sp < splits; ++sp) {
      const float sv = ws_score[sp * n + e];
      const int sq = ws_index[sp * n + e];
      if (better(sv, sq, v, q)) {
        v = sv;
        q = sq;
      }
    }
    out[e] = q == kNoIndex ? 0 : q;
  }
}

// ---- reconstruction ------------------------------------------------------------------------
// grid: x = pixel (y, x) of the output, one per thread; y = output planes (b, c), strided.
// Spatial arithmetic is 32-bit (the host checks that it fits).
template <typename T>
__global__ void reconstruct_kernel(const T* __restrict__ style,  // [Bs, C, Hs, Ws]
                                   int64_t ssb,  // style batch stride; 0 when Bs == 1
                                   int64_t ssc, int64_t ssh, int64_t ssw,
                                   const int64_t* __restrict__ idx,  // [B, nh, nw]
                                   int64_t ib, int64_t ii, int64_t ij, int64_t C,
                                   int64_t planes,  // B * C
                                   int H, int W, int k, int s, int nh, int nw, int mw, int N,
                                   T* __restrict__ out)  // [B, C, H, W] contiguous
{
  const int64_t HW = int64_t(H) * W;
  const int64_t yx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (yx >= HW) return;
  const int y = static_cast<int>(yx / W), x = static_cast<int>(yx - int64_t(y) * W);
  // Patch rows i with i s <= y < i s + k and i < nh, i.e. ceil((y - k + 1) / s) <= i <= y / s;
  // columns j likewise. Empty ranges (lo > hi) leave the pixel uncovered.
  const int i_lo = y >= k ? static_cast<int>((int64_t(y) - k + s) / s) : 0;
  const int j_lo = x >= k ? static_cast<int>((int64_t(x) - k + s) / s) : 0;
  const int i_hi = min(nh - 1, y / s), j_hi = min(nw - 1, x / s);
  const int n = (i_hi >= i_lo && j_hi >= j_lo) ? (i_hi - i_lo + 1) * (j_hi - j_lo + 1) : 0;
  const float nan = __int_as_float(0x7fffffff);

  for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
    const int64_t b = plane / C, c = plane - b * C;
    const T* sp = style + b * ssb + c * ssc;
    const int64_t* ip = idx + b * ib;
    float acc = 0.f;
    bool bad = false;
    for (int i = i_lo; i <= i_hi; ++i) {
      const int dy = y - i * s;
      for (int j = j_lo; j <= j_hi; ++j) {
        const int dx = x - j * s;
        const int64_t q = ip[i * ii + j * ij];
        if (q < 0 || q >= N) {  // never dereferenced; the pixel becomes NaN
          bad = true;
          continue;
        }
        const int qi = static_cast<int>(q) / mw, qj = static_cast<int>(q) - qi * mw;
        acc += to_float(sp[int64_t(qi * s + dy) * ssh + int64_t(qj * s + dx) * ssw]);
      }
    }
    const float v = bad ? nan : (n > 0 ? acc / static_cast<float>(n) : 0.f);
    out[plane * HW + yx] = from_float<T>(v);
  }
}

// ---- host side -----------------------------------------------------------------------------
unsigned int elementwise_blocks(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>(ceil_div(n, kThreads), 65535));
}

std::string shape_str(const Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(t.size(i));
  }
  return s + "]";
}

bool supported_dtype(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16;
}

// A 4-D CUDA map of a supported dtype.
void check_map(const Tensor& t, const char* op, const char* name, const char* dims) {
  STD_TORCH_CHECK(t.is_cuda(), op, " (cuda): ", name, " must be a CUDA tensor");
  STD_TORCH_CHECK(t.dim() == 4, op, " (cuda): ", name, " must be ", dims, ", got ",
                  shape_str(t));
  STD_TORCH_CHECK(supported_dtype(t.scalar_type()), op, " (cuda): ", name,
                  " must be float32, float16 or bfloat16, got ",
                  torch::headeronly::toString(t.scalar_type()));
}

void check_geometry(int64_t k, int64_t s, const char* op) {
  STD_TORCH_CHECK(k >= 1, op, " (cuda): patch_size must be >= 1, got ", k);
  STD_TORCH_CHECK(s >= 1, op, " (cuda): stride must be >= 1, got ", s);
  STD_TORCH_CHECK(k <= INT32_MAX && s <= INT32_MAX, op, " (cuda): patch_size ", k,
                  " or stride ", s, " is too large");
}

// inv [Bs, N] = inverse norms of style's patches (sq: a [Bs, Hs, Ws] fp32 scratch).
template <typename T>
void launch_inv_norms(const Tensor& style, int64_t k, int64_t s, int64_t mh, int64_t mw,
                      double eps, float* sq, float* inv, cudaStream_t stream, const char* op) {
  const int64_t Bs = style.size(0), C = style.size(1), H = style.size(2), W = style.size(3);
  pixel_sq_kernel<T><<<elementwise_blocks(Bs * H * W), kThreads, 0, stream>>>(
      static_cast<const T*>(style.data_ptr()), style.stride(0), style.stride(1),
      style.stride(2), style.stride(3), Bs, C, H, W, sq);
  check_launch(op);
  inv_norm_kernel<<<elementwise_blocks(Bs * mh * mw), kThreads, 0, stream>>>(
      sq, Bs, H, W, static_cast<int>(k), static_cast<int>(s), mh, mw, static_cast<float>(eps),
      inv);
  check_launch(op);
}

template <typename T>
void launch_match(const Tensor& content, const Tensor& style, MatchArgs a, int64_t n_mt,
                  int64_t n_split, const float* inv, int64_t* out, float* ws_score,
                  int* ws_index, cudaStream_t stream, const char* op) {
  const int64_t B = content.size(0);
  const bool shared_style = style.size(0) == 1;
  const T* Cp = static_cast<const T*>(content.data_ptr());
  const T* Sp = static_cast<const T*>(style.data_ptr());
  const bool split = ws_score != nullptr;
  for (int64_t b0 = 0; b0 < B; b0 += kMaxGridZ) {
    const int64_t nb = std::min(kMaxGridZ, B - b0);
    const int64_t sb0 = shared_style ? 0 : b0;  // style sample of this launch's sample 0
    const dim3 grid(static_cast<unsigned int>(n_mt), static_cast<unsigned int>(n_split),
                    static_cast<unsigned int>(nb));
    style_match_kernel<T><<<grid, kThreads, 0, stream>>>(
        Cp + b0 * a.c_sb, Sp + sb0 * style.stride(0), inv + sb0 * int64_t(a.N), a,
        split ? nullptr : out + b0 * a.M, split ? ws_score + b0 * a.M : nullptr,
        split ? ws_index + b0 * a.M : nullptr, B * a.M);
    check_launch(op);
  }
}

Tensor style_swap_match_cuda(const Tensor& content, const Tensor& style, int64_t patch_size,
                             int64_t stride, double eps) {
  const char* op = "fastnst::style_swap_match";
  check_map(content, op, "content", "[B, C, H, W]");
  check_map(style, op, "style", "[Bs, C, H, W] (Bs = 1 or B)");
  STD_TORCH_CHECK(style.get_device_index() == content.get_device_index(), op,
                  " (cuda): style must be on content's device (cuda:",
                  static_cast<int>(content.get_device_index()), "), got cuda:",
                  static_cast<int>(style.get_device_index()));
  STD_TORCH_CHECK(style.scalar_type() == content.scalar_type(), op,
                  " (cuda): content and style must have the same dtype, got ",
                  torch::headeronly::toString(content.scalar_type()), " and ",
                  torch::headeronly::toString(style.scalar_type()));
  const int64_t B = content.size(0), C = content.size(1), Hc = content.size(2),
                Wc = content.size(3);
  const int64_t Bs = style.size(0), Hs = style.size(2), Ws = style.size(3);
  STD_TORCH_CHECK(style.size(1) == C, op, " (cuda): content and style must have the same "
                  "channels, got content ", shape_str(content), " and style ", shape_str(style));
  STD_TORCH_CHECK(Bs == 1 || Bs == B, op, " (cuda): style batch must be 1 or content's (", B,
                  "), got style ", shape_str(style));
  check_geometry(patch_size, stride, op);
  const int64_t k = patch_size, s = stride;
  STD_TORCH_CHECK(k <= std::min(Hc, Wc) && k <= std::min(Hs, Ws), op, " (cuda): patch_size ", k,
                  " is larger than the content map ", shape_str(content), " or the style map ",
                  shape_str(style));
  STD_TORCH_CHECK(eps >= 0, op, " (cuda): eps must be >= 0, got ", eps);
  STD_TORCH_CHECK(C <= INT32_MAX, op, " (cuda): C = ", C, " is too large");

  const int64_t nh = (Hc - k) / s + 1, nw = (Wc - k) / s + 1;
  const int64_t mh = (Hs - k) / s + 1, mw = (Ws - k) / s + 1;
  const int64_t M = nh * nw, N = mh * mw;
  STD_TORCH_CHECK(N <= INT32_MAX - kTile, op, " (cuda): at most ", INT32_MAX - kTile,
                  " style patches, got ", N);
  const int64_t n_mt = ceil_div(M, kTile), n_nt = ceil_div(N, kTile);
  STD_TORCH_CHECK(n_mt <= INT32_MAX, op, " (cuda): ", M, " content patches are too many");

  torch::stable::accelerator::DeviceGuard guard(content.get_device_index());
  Tensor out = torch::stable::new_empty(content, {B, nh, nw}, ScalarType::Long);
  if (B == 0) return out;
  const cudaStream_t stream = current_stream(content.get_device_index());

  Tensor sq = torch::stable::new_empty(style, {Bs, Hs, Ws}, ScalarType::Float);
  Tensor inv = torch::stable::new_empty(style, {Bs, N}, ScalarType::Float);
  float* SQ = static_cast<float*>(sq.data_ptr());
  float* INV = static_cast<float*>(inv.data_ptr());

  // Split the style tiles across gridDim.y when the content tiles alone would not give every
  // SM a few blocks; keep at least kMinSplitTiles style tiles per block.
  const int64_t target = 4 * int64_t(sm_count(content.get_device_index(), op));
  int64_t n_split = 1;
  if (B * n_mt < target) {
    n_split = std::min(ceil_div(target, B * n_mt), ceil_div(n_nt, kMinSplitTiles));
    n_split = std::max<int64_t>(1, std::min(n_split, kMaxGridY));
  }
  const int64_t tiles_per_split = ceil_div(n_nt, n_split);
  n_split = ceil_div(n_nt, tiles_per_split);  // every range is non-empty

  MatchArgs a{};
  a.c_sb = content.stride(0);
  a.c_sc = content.stride(1);
  a.c_sh = content.stride(2);
  a.c_sw = content.stride(3);
  a.s_sb = Bs == 1 ? 0 : style.stride(0);
  a.s_sc = style.stride(1);
  a.s_sh = style.stride(2);
  a.s_sw = style.stride(3);
  a.inv_sb = Bs == 1 ? 0 : N;
  a.C = static_cast<int>(C);
  a.K = C * k * k;
  a.nw = nw;
  a.M = M;
  a.mw = mw;
  a.N = static_cast<int>(N);
  a.k = static_cast<int>(k);
  a.s = static_cast<int>(s);
  a.chan_inner = (C > 1 && content.stride(1) == 1) ? 1 : 0;
  a.c_kfast = a.chan_inner && content.stride(1) == 1;
  a.s_kfast = a.chan_inner && style.stride(1) == 1;
  if (a.chan_inner) {  // kBK = (inc_dy k + inc_dx) C + inc_c
    a.inc_c = static_cast<int>(kBK % C);
    a.inc_dy = static_cast<int>(kBK / C / k);
    a.inc_dx = static_cast<int>(kBK / C % k);
  } else {  // kBK = inc_c k^2 + inc_dy k + inc_dx
    a.inc_c = static_cast<int>(kBK / (k * k));
    a.inc_dy = static_cast<int>(kBK % (k * k) / k);
    a.inc_dx = static_cast<int>(kBK % (k * k) % k);
  }
  a.n_nt = static_cast<int>(n_nt);
  a.tiles_per_split = static_cast<int>(tiles_per_split);

  Tensor ws_score, ws_index;
  float* WS = nullptr;
  int* WI = nullptr;
  if (n_split > 1) {
    ws_score = torch::stable::new_empty(content, {n_split, B, M}, ScalarType::Float);
    ws_index = torch::stable::new_empty(content, {n_split, B, M}, ScalarType::Int);
    WS = static_cast<float*>(ws_score.data_ptr());
    WI = static_cast<int*>(ws_index.data_ptr());
  }
  int64_t* O = static_cast<int64_t*>(out.data_ptr());

  switch (content.scalar_type()) {
    case ScalarType::Float:
      launch_inv_norms<float>(style, k, s, mh, mw, eps, SQ, INV, stream, op);
      launch_match<float>(content, style, a, n_mt, n_split, INV, O, WS, WI, stream, op);
      break;
    case ScalarType::Half:
      launch_inv_norms<__half>(style, k, s, mh, mw, eps, SQ, INV, stream, op);
      launch_match<__half>(content, style, a, n_mt, n_split, INV, O, WS, WI, stream, op);
      break;
    default:
      launch_inv_norms<__nv_bfloat16>(style, k, s, mh, mw, eps, SQ, INV, stream, op);
      launch_match<__nv_bfloat16>(content, style, a, n_mt, n_split, INV, O, WS, WI, stream, op);
      break;
  }
  if (WS != nullptr) {
    match_finalize_kernel<<<elementwise_blocks(B * M), kThreads, 0, stream>>>(WS, WI, n_split,
                                                                              B * M, O);
    check_launch(op);
  }
  return out;
}

template <typename T>
void launch_reconstruct(const Tensor& style, const Tensor& indices, int64_t k, int64_t s,
                        int64_t nh, int64_t nw, int64_t mw, int64_t N, Tensor& out,
                        cudaStream_t stream, const char* op) {
  const int64_t B = out.size(0), C = out.size(1), H = out.size(2), W = out.size(3);
  const int64_t planes = B * C;
  const dim3 grid(static_cast<unsigned int>(ceil_div(H * W, kThreads)),
                  static_cast<unsigned int>(std::min(planes, kMaxGridY)));
  reconstruct_kernel<T><<<grid, kThreads, 0, stream>>>(
      static_cast<const T*>(style.data_ptr()), style.size(0) == 1 ? 0 : style.stride(0),
      style.stride(1), style.stride(2), style.stride(3),
      static_cast<const int64_t*>(indices.data_ptr()), indices.stride(0), indices.stride(1),
      indices.stride(2), C, planes, static_cast<int>(H), static_cast<int>(W),
      static_cast<int>(k), static_cast<int>(s), static_cast<int>(nh), static_cast<int>(nw),
      static_cast<int>(mw), static_cast<int>(N), static_cast<T*>(out.data_ptr()));
  check_launch(op);
}

Tensor style_swap_reconstruct_cuda(const Tensor& style, const Tensor& indices,
                                   int64_t patch_size, int64_t stride, int64_t out_h,
                                   int64_t out_w) {
  const char* op = "fastnst::style_swap_reconstruct";
  check_map(style, op, "style", "[Bs, C, H, W]");
  check_geometry(patch_size, stride, op);
  const int64_t k = patch_size, s = stride;
  const int64_t Bs = style.size(0), C = style.size(1), Hs = style.size(2), Ws = style.size(3);
  STD_TORCH_CHECK(k <= std::min(Hs, Ws), op, " (cuda): patch_size ", k,
                  " is larger than the style map ", shape_str(style));
  STD_TORCH_CHECK(out_h >= k && out_w >= k, op, " (cuda): out_h and out_w must be >= patch_size ",
                  k, ", got out_h = ", out_h, ", out_w = ", out_w);
  STD_TORCH_CHECK(std::max(Hs, Ws) <= INT32_MAX && std::max(out_h, out_w) <= INT32_MAX &&
                      ceil_div(out_h * out_w, kThreads) <= INT32_MAX,
                  op, " (cuda): the style map ", shape_str(style), " or the output (", out_h,
                  ", ", out_w, ") is too large");
  const int64_t nh = (out_h - k) / s + 1, nw = (out_w - k) / s + 1;
  const int64_t mw = (Ws - k) / s + 1, N = ((Hs - k) / s + 1) * mw;
  STD_TORCH_CHECK(N <= INT32_MAX, op, " (cuda): at most ", INT32_MAX, " style patches, got ", N);
  STD_TORCH_CHECK(indices.is_cuda() && indices.get_device_index() == style.get_device_index(),
                  op, " (cuda): indices must be a CUDA tensor on style's device (cuda:",
                  static_cast<int>(style.get_device_index()), ")");
  const bool shape_ok = indices.dim() == 3 && indices.size(1) == nh && indices.size(2) == nw &&
                        (Bs == 1 || indices.size(0) == Bs);
  STD_TORCH_CHECK(indices.scalar_type() == ScalarType::Long && shape_ok, op,
                  " (cuda): indices must be int64 [B, nh, nw] = [",
                  Bs == 1 ? std::string("B") : std::to_string(Bs), ", ", nh, ", ", nw,
                  "] (nh, nw from out_h = ", out_h, ", out_w = ", out_w, ", patch_size ", k,
                  ", stride ", s, "; B = style's batch unless that is 1), got ",
                  torch::headeronly::toString(indices.scalar_type()), " ", shape_str(indices));
  const int64_t B = indices.size(0);

  torch::stable::accelerator::DeviceGuard guard(style.get_device_index());
  Tensor out = torch::stable::new_empty(style, {B, C, out_h, out_w});  // contiguous
  if (out.numel() == 0) return out;
  const cudaStream_t stream = current_stream(style.get_device_index());
  switch (style.scalar_type()) {
    case ScalarType::Float:
      launch_reconstruct<float>(style, indices, k, s, nh, nw, mw, N, out, stream, op);
      break;
    case ScalarType::Half:
      launch_reconstruct<__half>(style, indices, k, s, nh, nw, mw, N, out, stream, op);
      break;
    default:
      launch_reconstruct<__nv_bfloat16>(style, indices, k, s, nh, nw, mw, N, out, stream, op);
      break;
  }
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastnst, CUDA, m) {
  m.impl("style_swap_match", TORCH_BOX(&style_swap_match_cuda));
  m.impl("style_swap_reconstruct", TORCH_BOX(&style_swap_reconstruct_cuda));
}

}  // namespace cuda
}  // namespace fastnst
