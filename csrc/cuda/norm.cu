// Per-channel statistics and instance normalisation on NVIDIA GPUs (CUDA, torch stable ABI).
//
// x is [B, C, L] (an image viewed as [B, C, H*W]); a "row" is one (b, c), r = b * C + c.
// N' = L - 1 if unbiased else L.
//
// mean_std (the statistics of AdaIN, Huang & Belongie 2017):
//   mu = sum_l x / L,  var = sum_l (x - mu)^2 / N',  std = sqrt(var + eps)
//   backward: dx = g_mu / L + g_std * (x - mu) / (std * N')
//
// instance_norm (Ulyanov et al. 2016; conditional IN with per-sample weight/bias, Dumoulin et al.
// 2017; AdaIN as w = alpha * std_s, b = alpha * mu_s, x_scale = 1 - alpha):
//   rstd = 1 / sqrt(var + eps),  xhat = (x - mu) * rstd
//   z = w * xhat + b + x_scale * x,  y = relu(z) if activation == 1 else z
//   backward, with g' = grad * (y > 0) for the relu (the mask is recomputed from y):
//   dw = sum_l g' xhat,  db = sum_l g'   (per (b, c); the caller reduces over B for a [C] weight)
//   dx = x_scale * g' + rstd * w * (g' - db / L - xhat * dw / N')
//
// Precision: every load is widened to fp32 and everything is accumulated in fp32. The mean and
// variance use Welford's update on x - K, K = x[b, c, 0] (one shift per row, read by every thread
// of the row), on chunks of 4 elements per thread merged with Chan et al.'s parallel combine
// (n, mean, M2); threads, warps, blocks and L-splits merge the same way, and mu = K + mean at the
// end. Unshifted, fp32 Welford rounds every partial mean to ulp(mu) (1e-3 at mu = 1e4), which
// puts a first-order error of ~ulp(mu) / sigma into M2; shifted, the partial means are O(sigma)
// and activations at 1e4 + N(0, 1) keep ~1e-7 relative accuracy in std (E[x^2] - E[x]^2 would
// lose it all; an outlying K costs only ulp(|K - mu|)). mean_std returns mu and std in x's
// dtype; instance_norm returns mu and rstd in fp32 (saved for backward). The normalisation
// keeps (x - mu) explicit rather than folding it into one affine map a * x + c, for the same
// large-mean reason; backward sums g' (x - mu) likewise.
//
// Layout: x, grad and y may have any strides, 0 included (the gradient of y.sum() is an expanded
// scalar: read in place, one value per row, never materialised; see grad_like_x). Outputs
// [B, C, L] (y, dx) have x's dtype and follow the rule of csrc/registration.cpp: strides
// (C*L, 1, C) when C > 1 and x.stride(1) == 1 and x.stride(2) == C (a channels_last image),
// else contiguous. [B, C] outputs are contiguous.
// Per-row operands (weight, bias, mean, rstd, std, grad_mean, grad_std) are read through their
// strides in any of float32/float16/bfloat16/float64; weight/bias may be [C] or [B, C].
//
// Work decomposition: 256-thread blocks, two thread maps chosen from x's strides.
//  * along L (generic): wpr warps (1, 2, 4 or 8, from L) share one row and walk L, 8 / wpr rows
//    per block; warps read consecutive positions (coalesced when x.stride(2) == 1).
//  * along C (channels innermost: x.stride(1) == 1, C >= 16): a block takes one sample's 32
//    consecutive channels, lane = channel, and its 8 warps walk L; a warp reads 32 consecutive
//    channels of one position (coalesced), and writes the channels_last output the same way.
// A block reduces its rows with warp shuffles and a small shared-memory merge.
//
// Fused or split: when the row groups alone give the GPU enough blocks (>= 4 per SM), one kernel
// per op does everything: the block computes its rows' statistics (or, for the backward, the
// sums dw/db), then re-reads its rows (from L2 while the rows in flight fit there) and writes the
// output. When they do not
// (the transformer net's IN layers: B * C = 32..128 rows of L = 256 * 256), L is split across
// blocks: a reduce pass writes per-split partials (mean, M2) or (sum g', sum g'(x - mu)) to an
// fp32 workspace, a finalize kernel merges them (one warp per row), and an apply pass with the
// same grid writes the output. That costs one extra read of x but keeps every SM busy, which is
// worth more than the saved read on those shapes. Results are deterministic (no atomics).
// mean_std is the reduction alone (fused: one kernel; split: reduce + finalize);
// mean_std_backward is elementwise and uses the apply pass alone, on the same grid.
//
// Kernels run on the current CUDA stream of x's device, under a device guard.

#include "common.cuh"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>

namespace fastnst {
namespace cuda {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kUnroll = 4;               // elements in flight per thread (and Welford chunk)
constexpr int64_t kMinChannelsC = 16;    // fewest channels for the along-C map
constexpr int64_t kMaxGridY = 65535;

enum class Map { kAlongL, kAlongC };
enum Phase : int {
  kFused = 0,   // reduce the block's rows, then write the output
  kReduce = 1,  // write this block's partial reduction to the workspace
  kApply = 2,   // write the output from finalized per-row values
};

// ---- per-row operands ([B, C] or [C], any float dtype, any strides) -----------------------
enum RowDType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3 };

struct RowVec {
  const void* p;  // element (b, c) at p[b * sb + c * sc]; nullptr: absent (the default value)
  int64_t sb, sc;
  int dtype;      // RowDType
};

__device__ __forceinline__ float load_row(const RowVec& v, int64_t b, int64_t c, float dflt) {
  if (v.p == nullptr) return dflt;
  const int64_t o = b * v.sb + c * v.sc;
  switch (v.dtype) {
    case kF16: return __half2float(static_cast<const __half*>(v.p)[o]);
    case kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(v.p)[o]);
    case kF64: return static_cast<float>(static_cast<const double*>(v.p)[o]);
    default: return static_cast<const float*>(v.p)[o];
  }
}

// ---- Welford / Chan ------------------------------------------------------------------------
struct Welford {
  float mean, m2;  // running mean, sum of squared deviations from it
  int n;           // count
};

__device__ __forceinline__ Welford merge(const Welford& a, const Welford& b) {
  if (b.n == 0) return a;
  if (a.n == 0) return b;
  const int n = a.n + b.n;
  const float fb = static_cast<float>(b.n) / static_cast<float>(n);
  const float delta = b.mean - a.mean;
  return {a.mean + delta * fb, a.m2 + b.m2 + delta * delta * static_cast<float>(a.n) * fb, n};
}

__device__ __forceinline__ void welford_add(Welford& w, float v) {
  w.n += 1;
  const float d = v - w.mean;
  w.mean += d / static_cast<float>(w.n);
  w.m2 += d * (v - w.mean);
}

// Four values as (4, mean, M2), exact up to rounding of deviations from v[0].
__device__ __forceinline__ Welford chunk4(const float (&v)[kUnroll]) {
  const float d1 = v[1] - v[0], d2 = v[2] - v[0], d3 = v[3] - v[0];
  const float m = v[0] + (d1 + d2 + d3) * 0.25f;
  const float e0 = v[0] - m, e1 = v[1] - m, e2 = v[2] - m, e3 = v[3] - m;
  return {m, e0 * e0 + e1 * e1 + e2 * e2 + e3 * e3, kUnroll};
}

__device__ __forceinline__ Welford shfl_xor(const Welford& w, int o) {
  return {__shfl_xor_sync(0xffffffffu, w.mean, o), __shfl_xor_sync(0xffffffffu, w.m2, o),
          __shfl_xor_sync(0xffffffffu, w.n, o)};
}
__device__ __forceinline__ float2 merge(const float2& a, const float2& b) {
  return make_float2(a.x + b.x, a.y + b.y);
}
__device__ __forceinline__ float2 shfl_xor(const float2& v, int o) {
  return make_float2(__shfl_xor_sync(0xffffffffu, v.x, o), __shfl_xor_sync(0xffffffffu, v.y, o));
}

// Butterfly over the warp; lane 0 ends with the merge in a fixed order (deterministic).
template <class A>
__device__ __forceinline__ A warp_reduce(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = merge(v, shfl_xor(v, o));
  return v;
}

// ---- thread map ----------------------------------------------------------------------------
struct Geometry {
  int64_t C, L;
  int64_t rows;   // B * C
  int64_t n_cg;   // channel groups of 32 per sample (along C)
  int64_t chunk;  // positions of L per block (gridDim.y blocks share a row)
  int wpr;        // warps per row (along L): 1, 2, 4 or 8
};

// The row (b, c) a thread works on, and its positions l = l_begin + k, k + step, ...
struct Slot {
  int64_t b, c, row;
  int k, step;
  bool valid;  // false for the padding rows of the last block / channel group
};

template <Map M>
__device__ __forceinline__ Slot make_slot(const Geometry& g) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  Slot s;
  if constexpr (M == Map::kAlongL) {
    const int rpb = kWarps / g.wpr;  // rows per block
    s.row = int64_t(blockIdx.x) * rpb + warp / g.wpr;
    s.k = (warp % g.wpr) * 32 + lane;
    s.step = g.wpr * 32;
    s.valid = s.row < g.rows;
    s.b = s.row / g.C;
    s.c = s.row - s.b * g.C;
  } else {
    s.b = int64_t(blockIdx.x) / g.n_cg;
    s.c = (int64_t(blockIdx.x) - s.b * g.n_cg) * 32 + lane;
    s.k = warp;
    s.step = kWarps;
    s.valid = s.c < g.C;
    s.row = s.b * g.C + s.c;
  }
  return s;
}

// Merge the partials of the threads that share a row; every thread gets its row's total (the
// same bits in all of them: each merges the same values in the same order). `part` is
// [kThreads] shared memory. Every thread of the block must call this.
template <Map M, class A>
__device__ __forceinline__ A block_reduce(A v, A* part, int wpr) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  A r;
  if constexpr (M == Map::kAlongL) {
    v = warp_reduce(v);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    const int first = (warp / wpr) * wpr;  // the row's first warp
    r = part[first];
    for (int i = 1; i < wpr; ++i) r = merge(r, part[first + i]);
  } else {
    part[threadIdx.x] = v;
    __syncthreads();
    r = part[lane];
#pragma unroll
    for (int i = 1; i < kWarps; ++i) r = merge(r, part[i * 32 + lane]);
  }
  __syncthreads();  // part may be reused
  return r;
}

// Deviations enter Welford scaled by rs = 1 / (sqrt(L) |K|) (K = x[b, c, 0]; 1 / sqrt(L) when
// K is 0 or not finite), the same value in every kernel and split of a row, so M2 stays near
// 1: unscaled, a row of values ~1e18 passes FLT_MAX and one of values ~1e-30 underflows,
// although their std fits. mean_dev and the std helpers undo the scale without forming
// var = M2 / rs^2 itself (it may not fit where the std does).
__device__ __forceinline__ float row_rs(int64_t L, float K) {
  const float a = fabsf(K);
  return rsqrtf(static_cast<float>(L)) / (a > 0.f && a < INFINITY ? a : 1.f);
}
__device__ __forceinline__ float mean_dev(const Welford& w, float rs) { return w.mean / rs; }
// sqrt(var + eps) with var_s = var rs^2: where eps rs^2 would overflow (tiny values) eps
// dominates and var is negligible.
__device__ __forceinline__ float std_of(const Welford& w, float rs, float inv_np, float eps) {
  const float var_s = fmaxf(w.m2, 0.f) * inv_np;
  const float e = eps * rs * rs;
  return e < 1e30f ? sqrtf(var_s + e) / rs : sqrtf(eps + var_s / rs / rs);
}
// 1 / sd, and 0 where sd = sqrt(var + eps) = 0 (eps = 0, constant row), as PyTorch.
__device__ __forceinline__ float inv_std(float sd) { return sd == 0.f ? 0.f : 1.f / sd; }

// Welford over (xr[l * sl] - K) * rs for l = l0, l0 + step, ... < l_end, kUnroll loads in flight.
template <typename T>
__device__ __forceinline__ Welford welford_range(const T* __restrict__ xr, int64_t sl, int64_t l0,
                                                 int64_t l_end, int step, float K, float rs) {
  Welford w = {0.f, 0.f, 0};
  for (int64_t l = l0; l < l_end; l += int64_t(kUnroll) * step) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t ll = l + int64_t(u) * step;
      v[u] = ll < l_end ? (to_float(xr[ll * sl]) - K) * rs : 0.f;
    }
    if (l + int64_t(kUnroll - 1) * step < l_end) {
      w = merge(w, chunk4(v));
    } else {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (l + int64_t(u) * step < l_end) welford_add(w, v[u]);
    }
  }
  return w;
}

__device__ __forceinline__ int64_t split_begin(const Geometry& g) {
  return int64_t(blockIdx.y) * g.chunk;
}
__device__ __forceinline__ int64_t split_end(const Geometry& g) {
  return min(g.L, split_begin(g) + g.chunk);
}

// ---- mean_std ------------------------------------------------------------------------------
// Fused: each row's mean and std; kReduce: (mean, M2) of this block's part of L into ws.
template <typename T, Map M>
__global__ void __launch_bounds__(kThreads)
mean_std_kernel(const T* __restrict__ x,  // [B, C, L], strides (sb, sc, sl)
                int64_t sb, int64_t sc, int64_t sl, Geometry g, float eps,
                float inv_np,  // 1 / N'
                int phase,     // kFused or kReduce
                T* __restrict__ mean_out,  // [B, C] contiguous
                T* __restrict__ std_out,   // [B, C] contiguous
                float2* __restrict__ ws)   // [splits, B * C] (mean - K, M2), kReduce only
{
  __shared__ Welford part[kThreads];
  const Slot s = make_slot<M>(g);
  const T* xr = x + s.b * sb + s.c * sc;  // dereferenced only when s.valid
  const float K = s.valid ? to_float(xr[0]) : 0.f;
  Welford w = {0.f, 0.f, 0};
  const float rs = row_rs(g.L, K);
  if (s.valid) w = welford_range(xr, sl, split_begin(g) + s.k, split_end(g), s.step, K, rs);
  w = block_reduce<M>(w, part, g.wpr);
  if (!s.valid || s.k != 0) return;
  if (phase == kReduce) {
    ws[int64_t(blockIdx.y) * g.rows + s.row] = make_float2(w.mean, w.m2);
  } else {
    mean_out[s.row] = from_float<T>(K + mean_dev(w, rs));
    std_out[s.row] = from_float<T>(std_of(w, rs, inv_np, eps));
  }
}

// Merge the splits' (mean - K, M2) of each row (one warp per row) and write its mean and either
// std = sqrt(var + eps) (want_rstd == 0, mean_std) or rstd = 1 / std (instance_norm).
template <typename T, typename TO>
__global__ void __launch_bounds__(kThreads)
welford_finalize_kernel(const float2* __restrict__ ws,  // [splits, rows] (mean - K, M2)
                        const T* __restrict__ x,  // [B, C, L], strides (sb, sc, .): K = x[b, c, 0]
                        int64_t sb, int64_t sc, int64_t C,
                        int64_t rows, int64_t splits, int64_t chunk, int64_t L, float eps,
                        float inv_np, int want_rstd,
                        TO* __restrict__ mean_out,  // [rows] contiguous
                        TO* __restrict__ sd_out)    // [rows] contiguous: std or rstd
{
  const int64_t row = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;  // whole warps leave together
  Welford w = {0.f, 0.f, 0};
  for (int64_t sp = lane; sp < splits; sp += 32) {
    const float2 p = ws[sp * rows + row];
    const int n = static_cast<int>(min(L, (sp + 1) * chunk) - sp * chunk);  // split sp's length
    w = merge(w, Welford{p.x, p.y, n});
  }
  w = warp_reduce(w);
  if (lane != 0) return;
  const int64_t b = row / C;
  const float K = to_float(x[b * sb + (row - b * C) * sc]);
  const float rs = row_rs(L, K);
  const float sd = std_of(w, rs, inv_np, eps);
  mean_out[row] = from_float<TO>(K + mean_dev(w, rs));
  sd_out[row] = from_float<TO>(want_rstd ? inv_std(sd) : sd);
}

// ---- mean_std_backward ---------------------------------------------------------------------
// dx = g_mu / L + g_std * (x - mu) / (std * N'): elementwise, no reduction.
template <typename T, Map M>
__global__ void __launch_bounds__(kThreads)
mean_std_backward_kernel(RowVec gmean,  // [B, C]
                         RowVec gstd,   // [B, C]
                         const T* __restrict__ x,  // [B, C, L], strides (sb, sc, sl)
                         int64_t sb, int64_t sc, int64_t sl,
                         RowVec mean,  // [B, C]
                         RowVec sd,    // [B, C]
                         Geometry g, float inv_l, float inv_np,
                         T* __restrict__ dx,  // [B, C, L], strides (C * L, os_c, os_l)
                         int64_t os_c, int64_t os_l)
{
  const Slot s = make_slot<M>(g);
  if (!s.valid) return;
  const float p = load_row(gmean, s.b, s.c, 0.f) * inv_l;
  // A zero grad_std contributes nothing, also where std = 0 or x holds a NaN/Inf (0 / 0,
  // 0 * Inf): such rows are grad_mean / L exactly, as autograd of the reference gives.
  const float gs = load_row(gstd, s.b, s.c, 0.f);
  const float q = gs == 0.f ? 0.f : gs * inv_np / load_row(sd, s.b, s.c, 1.f);
  const float mu = load_row(mean, s.b, s.c, 0.f);
  const T* xr = x + s.b * sb + s.c * sc;
  T* dr = dx + s.b * g.C * g.L + s.c * os_c;
  const int64_t l_end = split_end(g);
  for (int64_t l = split_begin(g) + s.k; l < l_end; l += int64_t(kUnroll) * s.step) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t ll = l + int64_t(u) * s.step;
      v[u] = ll < l_end ? to_float(xr[ll * sl]) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t ll = l + int64_t(u) * s.step;
      if (ll < l_end) dr[ll * os_l] = from_float<T>(gs == 0.f ? p : p + q * (v[u] - mu));
    }
  }
}

// ---- instance_norm -------------------------------------------------------------------------
template <typename T, Map M>
__global__ void __launch_bounds__(kThreads)
instance_norm_kernel(const T* __restrict__ x,  // [B, C, L], strides (sb, sc, sl)
                     int64_t sb, int64_t sc, int64_t sl, Geometry g,
                     RowVec weight,  // [C] or [B, C]; absent: w = 1
                     RowVec bias,    // [C] or [B, C]; absent: b = 0
                     float eps, float inv_np, float x_scale, int relu, int phase,
                     float* __restrict__ mean_out,  // [B, C] fp32 contiguous
                     float* __restrict__ rstd_out,  // [B, C] fp32 contiguous
                     float2* __restrict__ ws,       // [splits, B * C] (mean - K, M2), kReduce
                     T* __restrict__ y,             // [B, C, L], strides (C * L, os_c, os_l)
                     int64_t os_c, int64_t os_l)
{
  __shared__ Welford part[kThreads];
  const Slot s = make_slot<M>(g);
  const T* xr = x + s.b * sb + s.c * sc;  // dereferenced only when s.valid
  const int64_t l_begin = split_begin(g), l_end = split_end(g);
  float mu, rstd;
  if (phase == kApply) {
    if (!s.valid) return;  // no barrier in this phase
    mu = mean_out[s.row];
    rstd = rstd_out[s.row];
  } else {
    const float K = s.valid ? to_float(xr[0]) : 0.f;
    Welford w = {0.f, 0.f, 0};
    const float rs = row_rs(g.L, K);
    if (s.valid) w = welford_range(xr, sl, l_begin + s.k, l_end, s.step, K, rs);
    w = block_reduce<M>(w, part, g.wpr);
    if (!s.valid) return;
    if (phase == kReduce) {
      if (s.k == 0) ws[int64_t(blockIdx.y) * g.rows + s.row] = make_float2(w.mean, w.m2);
      return;
    }
    mu = K + mean_dev(w, rs);  // as saved: the apply pass of the split path reads this same value
    rstd = inv_std(std_of(w, rs, inv_np, eps));
    if (s.k == 0) {
      mean_out[s.row] = mu;
      rstd_out[s.row] = rstd;
    }
  }
  const float a = load_row(weight, s.b, s.c, 1.f) * rstd;
  const float bb = load_row(bias, s.b, s.c, 0.f);
  T* yr = y + s.b * g.C * g.L + s.c * os_c;
  for (int64_t l = l_begin + s.k; l < l_end; l += int64_t(kUnroll) * s.step) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t ll = l + int64_t(u) * s.step;
      v[u] = ll < l_end ? to_float(xr[ll * sl]) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t ll = l + int64_t(u) * s.step;
      if (ll < l_end) {
        float z = (v[u] - mu) * a + bb + x_scale * v[u];
        if (relu && z < 0.f) z = 0.f;  // NaN passes through, as torch.relu
        yr[ll * os_l] = from_float<T>(z);
      }
    }
  }
}

// ---- instance_norm_backward ----------------------------------------------------------------
// Per row: sg = sum g', sgx = sum g' (x - mu); dw = rstd * sgx, db = sg.
template <typename T, Map M>
__global__ void __launch_bounds__(kThreads)
instance_norm_backward_kernel(const T* __restrict__ grad,  // [B, C, L], strides (gsb, gsc, gsl)
                              int64_t gsb, int64_t gsc, int64_t gsl,
                              const T* __restrict__ x,  // [B, C, L], strides (sb, sc, sl)
                              int64_t sb, int64_t sc, int64_t sl,
                              const T* __restrict__ y,  // [B, C, L], strides (ysb, ysc, ysl)
                              int64_t ysb, int64_t ysc, int64_t ysl, Geometry g,
                              RowVec weight,  // [C] or [B, C]; absent: w = 1
                              RowVec mean,    // [B, C]
                              RowVec rstd_v,  // [B, C]
                              float inv_l, float inv_np, float x_scale, int relu, int phase,
                              float2* __restrict__ ws,  // [splits, B * C] (sg, sgx); row totals
                                                        // in ws[0 .. B*C) for kApply
                              float* __restrict__ dw,   // [B, C] fp32 contiguous, or null
                              float* __restrict__ db,   // [B, C] fp32 contiguous, or null
                              T* __restrict__ dx,       // [B, C, L], strides (C * L, os_c, os_l)
                              int64_t os_c, int64_t os_l)
{
  __shared__ float2 part[kThreads];
  const Slot s = make_slot<M>(g);
  const T* gr = grad + s.b * gsb + s.c * gsc;  // dereferenced only when s.valid
  const T* xr = x + s.b * sb + s.c * sc;
  const T* yr = y + s.b * ysb + s.c * ysc;
  const int64_t l_begin = split_begin(g), l_end = split_end(g);
  float mu = 0.f, rs = 0.f;
  if (s.valid) {
    mu = load_row(mean, s.b, s.c, 0.f);
    rs = load_row(rstd_v, s.b, s.c, 0.f);
  }
  float2 sums;
  if (phase == kApply) {
    if (!s.valid) return;  // no barrier in this phase
    sums = ws[s.row];
  } else {
    float2 acc = make_float2(0.f, 0.f);
    if (s.valid) {
      for (int64_t l = l_begin + s.k; l < l_end; l += int64_t(kUnroll) * s.step) {
        float gv[kUnroll], xv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t ll = l + int64_t(u) * s.step;
          const bool in = ll < l_end;
          gv[u] = in ? to_float(gr[ll * gsl]) : 0.f;
          xv[u] = in ? to_float(xr[ll * sl]) : 0.f;
          if (relu && in && !(to_float(yr[ll * ysl]) > 0.f)) gv[u] = 0.f;
        }
        float a0 = 0.f, a1 = 0.f;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {  // out-of-range lanes hold g' = 0
          a0 += gv[u];
          a1 += gv[u] * (xv[u] - mu);
        }
        acc.x += a0;
        acc.y += a1;
      }
    }
    acc = block_reduce<M>(acc, part, g.wpr);
    if (!s.valid) return;
    if (phase == kReduce) {
      if (s.k == 0) ws[int64_t(blockIdx.y) * g.rows + s.row] = acc;
      return;
    }
    sums = acc;
    if (s.k == 0 && dw != nullptr) {
      dw[s.row] = rs * acc.y;
      db[s.row] = acc.x;
    }
  }
  // dx = x_scale g' + k1 (g' - k2 - (x - mu) k3), k1 = rstd w, k2 = db / L,
  // k3 = rstd * dw / N' = rstd^2 sgx / N'   (xhat dw / N' = (x - mu) k3)
  const float k1 = rs * load_row(weight, s.b, s.c, 1.f);
  const float k2 = sums.x * inv_l;
  const float k3 = rs * rs * sums.y * inv_np;
  T* dr = dx + s.b * g.C * g.L + s.c * os_c;
  for (int64_t l = l_begin + s.k; l < l_end; l += int64_t(kUnroll) * s.step) {
    float gv[kUnroll], xv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t ll = l + int64_t(u) * s.step;
      const bool in = ll < l_end;
      gv[u] = in ? to_float(gr[ll * gsl]) : 0.f;
      xv[u] = in ? to_float(xr[ll * sl]) : 0.f;
      if (relu && in && !(to_float(yr[ll * ysl]) > 0.f)) gv[u] = 0.f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t ll = l + int64_t(u) * s.step;
      if (ll < l_end)
        dr[ll * os_l] = from_float<T>(x_scale * gv[u] + k1 * (gv[u] - k2 - (xv[u] - mu) * k3));
    }
  }
}

// Sum the splits' (sg, sgx) of each row into ws[row] (one warp per row; lane 0 overwrites
// split 0's entry, which only it has read) and write dw, db when asked.
__global__ void __launch_bounds__(kThreads)
sums_finalize_kernel(float2* __restrict__ ws,  // [splits, rows] (sg, sgx)
                     int64_t rows, int64_t splits, int64_t C,
                     RowVec rstd_v,            // [B, C]
                     float* __restrict__ dw,   // [rows] fp32 contiguous, or null
                     float* __restrict__ db)   // [rows] fp32 contiguous, or null
{
  const int64_t row = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  float2 acc = make_float2(0.f, 0.f);
  for (int64_t sp = lane; sp < splits; sp += 32) acc = merge(acc, ws[sp * rows + row]);
  acc = warp_reduce(acc);
  if (lane != 0) return;
  ws[row] = acc;
  if (dw != nullptr) {
    const int64_t b = row / C;
    dw[row] = load_row(rstd_v, b, row - b * C, 0.f) * acc.y;
    db[row] = acc.x;
  }
}

// ---- host side -----------------------------------------------------------------------------
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

bool float_dtype(ScalarType t) { return supported_dtype(t) || t == ScalarType::Double; }

void check_x(const Tensor& x, const char* op) {
  STD_TORCH_CHECK(x.is_cuda(), op, " (cuda): x must be a CUDA tensor");
  STD_TORCH_CHECK(x.dim() == 3, op, " (cuda): x must be [B, C, L], got ", shape_str(x));
  STD_TORCH_CHECK(supported_dtype(x.scalar_type()), op,
                  " (cuda): x must be float32, float16 or bfloat16, got ",
                  torch::headeronly::toString(x.scalar_type()));
  STD_TORCH_CHECK(x.size(2) > 0, op, " (cuda): x must have L > 0, got ", shape_str(x));
  STD_TORCH_CHECK(x.size(2) <= INT32_MAX, op, " (cuda): L = ", x.size(2), " is too large");
}

void check_unbiased(const Tensor& x, bool unbiased, const char* op) {
  STD_TORCH_CHECK(!unbiased || x.size(2) > 1, op,
                  " (cuda): the unbiased variance needs L >= 2, got L = ", x.size(2));
}

void check_same_device(const Tensor& t, const Tensor& x, const char* op, const char* name) {
  STD_TORCH_CHECK(t.is_cuda() && t.get_device_index() == x.get_device_index(), op, " (cuda): ",
                  name, " must be on x's device (cuda:", static_cast<int>(x.get_device_index()),
                  ")");
}

// A [B, C] (or, with allow_c, [C]) per-row operand of any float dtype.
RowVec row_vec(const Tensor& t, int64_t B, int64_t C, bool allow_c, const Tensor& x,
               const char* op, const char* name) {
  check_same_device(t, x, op, name);
  const ScalarType dt = t.scalar_type();
  STD_TORCH_CHECK(float_dtype(dt), op, " (cuda): ", name,
                  " must be float32, float16, bfloat16 or float64, got ",
                  torch::headeronly::toString(dt));
  RowVec v{t.data_ptr(), 0, 0, kF32};
  if (allow_c && t.dim() == 1 && t.size(0) == C) {
    v.sc = t.stride(0);
  } else if (t.dim() == 2 && t.size(0) == B && t.size(1) == C) {
    v.sb = t.stride(0);
    v.sc = t.stride(1);
  } else if (allow_c) {
    STD_TORCH_CHECK(false, op, " (cuda): ", name, " must be [C] or [B, C] = [", C, "] or [", B,
                    ", ", C, "], got ", shape_str(t));
  } else {
    STD_TORCH_CHECK(false, op, " (cuda): ", name, " must be [B, C] = [", B, ", ", C, "], got ",
                    shape_str(t));
  }
  v.dtype = dt == ScalarType::Half       ? kF16
            : dt == ScalarType::BFloat16 ? kBF16
            : dt == ScalarType::Double   ? kF64
                                         : kF32;
  return v;
}

RowVec absent() { return RowVec{nullptr, 0, 0, kF32}; }

// A [B, C, L] operand shaped like x, converted to x's dtype when it has another float dtype
// (the conversion keeps its strides).
Tensor like_x(const Tensor& t, const Tensor& x, const char* op, const char* name) {
  check_same_device(t, x, op, name);
  STD_TORCH_CHECK(t.dim() == 3 && t.size(0) == x.size(0) && t.size(1) == x.size(1) &&
                      t.size(2) == x.size(2),
                  op, " (cuda): ", name, " must be shaped like x ", shape_str(x), ", got ",
                  shape_str(t));
  STD_TORCH_CHECK(float_dtype(t.scalar_type()), op, " (cuda): ", name,
                  " must be a float tensor, got ", torch::headeronly::toString(t.scalar_type()));
  if (t.scalar_type() == x.scalar_type()) return t;
  return torch::stable::to(t, x.scalar_type());
}

// The upstream gradient, in x's dtype. Every kernel reads it through its strides, so an
// expanded one (stride 0 along L: y.sum() gives strides (0, 0, 0), (y.sum((2, 3)) * w).sum()
// (C, 1, 0)) is read in place, one value per row. Converting such a gradient to x's dtype
// converts only its [B, C, 1] slice (a plain conversion would materialise B * C * L values);
// `row_scalar` then tells the launches to read it with stride 0 along L.
Tensor grad_like_x(const Tensor& t, const Tensor& x, const char* op, bool& row_scalar) {
  row_scalar = false;
  if (t.dim() == 3 && t.size(2) > 1 && t.stride(2) == 0 && float_dtype(t.scalar_type()) &&
      t.scalar_type() != x.scalar_type()) {
    check_same_device(t, x, op, "grad");
    STD_TORCH_CHECK(t.size(0) == x.size(0) && t.size(1) == x.size(1) && t.size(2) == x.size(2), op,
                    " (cuda): grad must be shaped like x ", shape_str(x), ", got ", shape_str(t));
    Tensor first = t;
    row_scalar = true;
    return torch::stable::to(torch::stable::narrow(first, 2, 0, 1), x.scalar_type());
  }
  return like_x(t, x, op, "grad");
}

// The layout rule for [B, C, L] results (as gram_backward): x's channels_last strides
// (C*L, 1, C) when x is dense with channels innermost, else contiguous.
Tensor new_rule(const Tensor& x) {
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  const bool channels_innermost = C > 1 && x.stride(1) == 1 && x.stride(2) == C;
  return channels_innermost
             ? torch::stable::transpose(torch::stable::new_empty(x, {B, L, C}), 1, 2)
             : torch::stable::new_empty(x, {B, C, L});
}

struct Plan {
  Geometry g;
  bool along_c;
  int64_t groups;  // grid.x
  int64_t splits;  // grid.y
};

// Pick the thread map from x's strides, then split L when the row groups alone would give the
// GPU fewer than ~4 blocks per SM, keeping every part long enough to amortise its merge.
Plan make_plan(const Tensor& x, int sms, const char* op) {
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  Plan p;
  p.g.C = C;
  p.g.L = L;
  p.g.rows = B * C;
  p.g.n_cg = ceil_div(C, 32);
  p.along_c = C >= kMinChannelsC && x.stride(1) == 1 && x.stride(2) != 1 && L > 1;
  int64_t min_chunk;
  if (p.along_c) {
    p.g.wpr = 1;  // unused
    p.groups = B * p.g.n_cg;
    min_chunk = int64_t(kWarps) * 32;  // 32 positions per warp
  } else {
    p.g.wpr = L <= 256 ? 1 : L <= 512 ? 2 : L <= 1024 ? 4 : 8;
    p.groups = ceil_div(p.g.rows, kWarps / p.g.wpr);
    min_chunk = int64_t(p.g.wpr) * 32 * 16;  // 16 elements per thread
  }
  STD_TORCH_CHECK(p.groups <= INT32_MAX, op, " (cuda): B * C = ", p.g.rows, " is too large");
  const int64_t target = 4 * int64_t(sms);
  p.splits = 1;
  if (p.groups < target) {
    p.splits = std::min(ceil_div(target, p.groups), ceil_div(L, min_chunk));
    p.splits = std::max<int64_t>(1, std::min(p.splits, kMaxGridY));
  }
  p.g.chunk = ceil_div(L, p.splits);
  p.splits = ceil_div(L, p.g.chunk);  // every part is non-empty
  return p;
}

dim3 grid_of(const Plan& p) {
  return dim3(static_cast<unsigned int>(p.groups), static_cast<unsigned int>(p.splits));
}

unsigned int finalize_blocks(int64_t rows) {
  return static_cast<unsigned int>(ceil_div(rows, kWarps));
}

float2* workspace(const Tensor& x, const Plan& p, Tensor& holder) {
  holder = torch::stable::new_empty(x, {p.splits * p.g.rows * 2}, ScalarType::Float);
  return static_cast<float2*>(holder.data_ptr());
}

// ---- launches ------------------------------------------------------------------------------
template <typename T, Map M>
void run_mean_std(const Tensor& x, const Plan& p, float eps, float inv_np, Tensor& mean,
                  Tensor& sd, cudaStream_t stream) {
  const char* op = "fastnst::mean_std";
  const T* X = static_cast<const T*>(x.data_ptr());
  T* Mo = static_cast<T*>(mean.data_ptr());
  T* So = static_cast<T*>(sd.data_ptr());
  if (p.splits == 1) {
    mean_std_kernel<T, M><<<grid_of(p), kThreads, 0, stream>>>(
        X, x.stride(0), x.stride(1), x.stride(2), p.g, eps, inv_np, kFused, Mo, So, nullptr);
    check_launch(op);
    return;
  }
  Tensor holder;
  float2* W = workspace(x, p, holder);
  mean_std_kernel<T, M><<<grid_of(p), kThreads, 0, stream>>>(
      X, x.stride(0), x.stride(1), x.stride(2), p.g, eps, inv_np, kReduce, Mo, So, W);
  check_launch(op);
  welford_finalize_kernel<T, T><<<finalize_blocks(p.g.rows), kThreads, 0, stream>>>(
      W, X, x.stride(0), x.stride(1), p.g.C, p.g.rows, p.splits, p.g.chunk, p.g.L, eps, inv_np,
      0, Mo, So);
  check_launch(op);
}

template <typename T, Map M>
void run_mean_std_backward(const RowVec& gm, const RowVec& gs, const Tensor& x,
                           const RowVec& mean, const RowVec& sd, const Plan& p, float inv_l,
                           float inv_np, Tensor& dx, cudaStream_t stream) {
  mean_std_backward_kernel<T, M><<<grid_of(p), kThreads, 0, stream>>>(
      gm, gs, static_cast<const T*>(x.data_ptr()), x.stride(0), x.stride(1), x.stride(2), mean,
      sd, p.g, inv_l, inv_np, static_cast<T*>(dx.data_ptr()), dx.stride(1), dx.stride(2));
  check_launch("fastnst::mean_std_backward");
}

template <typename T, Map M>
void run_instance_norm(const Tensor& x, const RowVec& w, const RowVec& b, const Plan& p,
                       float eps, float inv_np, float x_scale, int relu, Tensor& y,
                       Tensor& mean, Tensor& rstd, cudaStream_t stream) {
  const char* op = "fastnst::instance_norm";
  const T* X = static_cast<const T*>(x.data_ptr());
  T* Y = static_cast<T*>(y.data_ptr());
  float* Mo = static_cast<float*>(mean.data_ptr());
  float* Ro = static_cast<float*>(rstd.data_ptr());
  const int64_t sb = x.stride(0), sc = x.stride(1), sl = x.stride(2);
  const int64_t os_c = y.stride(1), os_l = y.stride(2);
  if (p.splits == 1) {
    instance_norm_kernel<T, M><<<grid_of(p), kThreads, 0, stream>>>(
        X, sb, sc, sl, p.g, w, b, eps, inv_np, x_scale, relu, kFused, Mo, Ro, nullptr, Y, os_c,
        os_l);
    check_launch(op);
    return;
  }
  Tensor holder;
  float2* W = workspace(x, p, holder);
  instance_norm_kernel<T, M><<<grid_of(p), kThreads, 0, stream>>>(
      X, sb, sc, sl, p.g, w, b, eps, inv_np, x_scale, relu, kReduce, Mo, Ro, W, Y, os_c, os_l);
  check_launch(op);
  welford_finalize_kernel<T, float><<<finalize_blocks(p.g.rows), kThreads, 0, stream>>>(
      W, X, sb, sc, p.g.C, p.g.rows, p.splits, p.g.chunk, p.g.L, eps, inv_np, 1, Mo, Ro);
  check_launch(op);
  instance_norm_kernel<T, M><<<grid_of(p), kThreads, 0, stream>>>(
      X, sb, sc, sl, p.g, w, b, eps, inv_np, x_scale, relu, kApply, Mo, Ro, W, Y, os_c, os_l);
  check_launch(op);
}

// grad_row_scalar: grad is the [B, C, 1] slice of a gradient of one value per row (see
// grad_like_x), read with stride 0 along L.
template <typename T, Map M>
void run_instance_norm_backward(const Tensor& grad, bool grad_row_scalar, const Tensor& x,
                                const Tensor& y, const RowVec& w, const RowVec& mean,
                                const RowVec& rstd, const Plan& p, float inv_l, float inv_np,
                                float x_scale, int relu, float* dw, float* db, Tensor& dx,
                                cudaStream_t stream) {
  const char* op = "fastnst::instance_norm_backward";
  const T* G = static_cast<const T*>(grad.data_ptr());
  const T* X = static_cast<const T*>(x.data_ptr());
  const T* Y = static_cast<const T*>(y.data_ptr());
  T* D = static_cast<T*>(dx.data_ptr());
  const int64_t gsb = grad.stride(0), gsc = grad.stride(1);
  const int64_t gsl = grad_row_scalar ? 0 : grad.stride(2);
  const int64_t sb = x.stride(0), sc = x.stride(1), sl = x.stride(2);
  const int64_t ysb = y.stride(0), ysc = y.stride(1), ysl = y.stride(2);
  const int64_t os_c = dx.stride(1), os_l = dx.stride(2);
  if (p.splits == 1) {
    instance_norm_backward_kernel<T, M><<<grid_of(p), kThreads, 0, stream>>>(
        G, gsb, gsc, gsl, X, sb, sc, sl, Y, ysb, ysc, ysl, p.g, w, mean, rstd, inv_l, inv_np,
        x_scale, relu, kFused, nullptr, dw, db, D, os_c, os_l);
    check_launch(op);
    return;
  }
  Tensor holder;
  float2* W = workspace(x, p, holder);
  instance_norm_backward_kernel<T, M><<<grid_of(p), kThreads, 0, stream>>>(
      G, gsb, gsc, gsl, X, sb, sc, sl, Y, ysb, ysc, ysl, p.g, w, mean, rstd, inv_l, inv_np,
      x_scale, relu, kReduce, W, nullptr, nullptr, D, os_c, os_l);
  check_launch(op);
  sums_finalize_kernel<<<finalize_blocks(p.g.rows), kThreads, 0, stream>>>(
      W, p.g.rows, p.splits, p.g.C, rstd, dw, db);
  check_launch(op);
  instance_norm_backward_kernel<T, M><<<grid_of(p), kThreads, 0, stream>>>(
      G, gsb, gsc, gsl, X, sb, sc, sl, Y, ysb, ysc, ysl, p.g, w, mean, rstd, inv_l, inv_np,
      x_scale, relu, kApply, W, nullptr, nullptr, D, os_c, os_l);
  check_launch(op);
}

// Calls f(T{}, std::integral_constant<Map, M>{}) for x's dtype and the plan's map.
template <class F>
void dispatch(ScalarType t, bool along_c, F&& f) {
  auto by_map = [&](auto tag) {
    if (along_c)
      f(tag, std::integral_constant<Map, Map::kAlongC>{});
    else
      f(tag, std::integral_constant<Map, Map::kAlongL>{});
  };
  switch (t) {
    case ScalarType::Float: by_map(float()); break;
    case ScalarType::Half: by_map(__half()); break;
    default: by_map(__nv_bfloat16()); break;
  }
}

// ---- ops -----------------------------------------------------------------------------------
std::tuple<Tensor, Tensor> mean_std_cuda(const Tensor& x, double eps, bool unbiased) {
  const char* op = "fastnst::mean_std";
  check_x(x, op);
  check_unbiased(x, unbiased, op);
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  Tensor mean = torch::stable::new_empty(x, {B, C});
  Tensor sd = torch::stable::new_empty(x, {B, C});
  if (B * C == 0) return {mean, sd};
  const Plan p = make_plan(x, sm_count(x.get_device_index(), op), op);
  const float inv_np = static_cast<float>(1.0 / static_cast<double>(L - (unbiased ? 1 : 0)));
  const cudaStream_t stream = current_stream(x.get_device_index());
  dispatch(x.scalar_type(), p.along_c, [&](auto tag, auto map) {
    run_mean_std<decltype(tag), decltype(map)::value>(x, p, static_cast<float>(eps), inv_np,
                                                      mean, sd, stream);
  });
  return {mean, sd};
}

Tensor mean_std_backward_cuda(const Tensor& grad_mean, const Tensor& grad_std, const Tensor& x,
                              const Tensor& mean, const Tensor& sd, bool unbiased) {
  const char* op = "fastnst::mean_std_backward";
  check_x(x, op);
  check_unbiased(x, unbiased, op);
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  const RowVec gm = row_vec(grad_mean, B, C, false, x, op, "grad_mean");
  const RowVec gs = row_vec(grad_std, B, C, false, x, op, "grad_std");
  const RowVec mu = row_vec(mean, B, C, false, x, op, "mean");
  const RowVec sdv = row_vec(sd, B, C, false, x, op, "std");
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  Tensor dx = new_rule(x);
  if (dx.numel() == 0) return dx;
  const Plan p = make_plan(x, sm_count(x.get_device_index(), op), op);
  const float inv_l = static_cast<float>(1.0 / static_cast<double>(L));
  const float inv_np = static_cast<float>(1.0 / static_cast<double>(L - (unbiased ? 1 : 0)));
  const cudaStream_t stream = current_stream(x.get_device_index());
  dispatch(x.scalar_type(), p.along_c, [&](auto tag, auto map) {
    run_mean_std_backward<decltype(tag), decltype(map)::value>(gm, gs, x, mu, sdv, p, inv_l,
                                                               inv_np, dx, stream);
  });
  return dx;
}

std::tuple<Tensor, Tensor, Tensor> instance_norm_cuda(const Tensor& x,
                                                      const std::optional<Tensor>& weight,
                                                      const std::optional<Tensor>& bias,
                                                      double eps, bool unbiased, double x_scale,
                                                      int64_t activation) {
  const char* op = "fastnst::instance_norm";
  check_x(x, op);
  check_unbiased(x, unbiased, op);
  STD_TORCH_CHECK(activation == 0 || activation == 1, op,
                  " (cuda): activation must be 0 (none) or 1 (relu), got ", activation);
  STD_TORCH_CHECK(eps >= 0, op, " (cuda): eps must be >= 0, got ", eps);
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  const RowVec w = weight.has_value() ? row_vec(*weight, B, C, true, x, op, "weight") : absent();
  const RowVec b = bias.has_value() ? row_vec(*bias, B, C, true, x, op, "bias") : absent();
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  Tensor y = new_rule(x);
  Tensor mean = torch::stable::new_empty(x, {B, C}, ScalarType::Float);
  Tensor rstd = torch::stable::new_empty(x, {B, C}, ScalarType::Float);
  if (B * C == 0) return {y, mean, rstd};
  const Plan p = make_plan(x, sm_count(x.get_device_index(), op), op);
  const float inv_np = static_cast<float>(1.0 / static_cast<double>(L - (unbiased ? 1 : 0)));
  const cudaStream_t stream = current_stream(x.get_device_index());
  dispatch(x.scalar_type(), p.along_c, [&](auto tag, auto map) {
    run_instance_norm<decltype(tag), decltype(map)::value>(
        x, w, b, p, static_cast<float>(eps), inv_np, static_cast<float>(x_scale),
        static_cast<int>(activation), y, mean, rstd, stream);
  });
  return {y, mean, rstd};
}

std::tuple<Tensor, Tensor, Tensor> instance_norm_backward_cuda(
    const Tensor& grad, const Tensor& x, const Tensor& y, const std::optional<Tensor>& weight,
    const Tensor& mean, const Tensor& rstd, bool unbiased, double x_scale, int64_t activation,
    bool weight_grads) {
  const char* op = "fastnst::instance_norm_backward";
  check_x(x, op);
  check_unbiased(x, unbiased, op);
  STD_TORCH_CHECK(activation == 0 || activation == 1, op,
                  " (cuda): activation must be 0 (none) or 1 (relu), got ", activation);
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  bool g_row_scalar = false;
  const Tensor g = grad_like_x(grad, x, op, g_row_scalar);
  const Tensor yy = like_x(y, x, op, "y");
  const RowVec w = weight.has_value() ? row_vec(*weight, B, C, true, x, op, "weight") : absent();
  const RowVec mu = row_vec(mean, B, C, false, x, op, "mean");
  const RowVec rs = row_vec(rstd, B, C, false, x, op, "rstd");
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  Tensor dx = new_rule(x);
  // dw, db: [B, C] per-sample sums, or empty tensors of shape [0] when not asked for.
  Tensor dw = weight_grads ? torch::stable::new_empty(x, {B, C}, ScalarType::Float)
                           : torch::stable::new_empty(x, {0}, ScalarType::Float);
  Tensor db = weight_grads ? torch::stable::new_empty(x, {B, C}, ScalarType::Float)
                           : torch::stable::new_empty(x, {0}, ScalarType::Float);
  if (B * C == 0) return {dx, dw, db};
  const Plan p = make_plan(x, sm_count(x.get_device_index(), op), op);
  const float inv_l = static_cast<float>(1.0 / static_cast<double>(L));
  const float inv_np = static_cast<float>(1.0 / static_cast<double>(L - (unbiased ? 1 : 0)));
  float* DW = weight_grads ? static_cast<float*>(dw.data_ptr()) : nullptr;
  float* DB = weight_grads ? static_cast<float*>(db.data_ptr()) : nullptr;
  const cudaStream_t stream = current_stream(x.get_device_index());
  dispatch(x.scalar_type(), p.along_c, [&](auto tag, auto map) {
    run_instance_norm_backward<decltype(tag), decltype(map)::value>(
        g, g_row_scalar, x, yy, w, mu, rs, p, inv_l, inv_np, static_cast<float>(x_scale),
        static_cast<int>(activation), DW, DB, dx, stream);
  });
  return {dx, dw, db};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastnst, CUDA, m) {
  m.impl("mean_std", TORCH_BOX(&mean_std_cuda));
  m.impl("mean_std_backward", TORCH_BOX(&mean_std_backward_cuda));
  m.impl("instance_norm", TORCH_BOX(&instance_norm_cuda));
  m.impl("instance_norm_backward", TORCH_BOX(&instance_norm_backward_cuda));
}

}  // namespace cuda
}  // namespace fastnst
