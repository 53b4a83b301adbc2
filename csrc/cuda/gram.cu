// Gram matrix on NVIDIA GPUs (CUDA, written against the torch stable ABI).
//
// Forward:  G[b] = s * F[b] F[b]^T              F[b] = x[b] as (C, L), s = scale
// Backward: dF[b] = s * (dG[b] + dG[b]^T) F[b]  (one GEMM; dG need not be symmetric)
// (Gatys et al. 2016, "Image Style Transfer Using Convolutional Neural Networks".)
//
// Inputs: x is [B, C, L] with any strides (contiguous, channels_last images viewed as
// [B, C, H*W], slices...), float32, float16 or bfloat16; every load goes through the strides
// and is widened to fp32. All products are accumulated in fp32.
//
// Forward (a SYRK): 64 x 64 output tiles, 256 threads with a 4 x 4 register micro-tile each,
// the reduction over L in steps of 32 through shared memory, with the next step's loads held
// in registers while the current one is computed. G is symmetric, so only the tiles with
// tile_i <= tile_j are computed; each is staged in shared memory and written together with its
// mirror, both coalesced. When B * n_tiles would leave the GPU mostly idle (VGG's conv1_1:
// C = 64, L = 512 * 512, B = 1 is a single tile) L is split across blocks that atomically add
// into an fp32 [B, C, C] workspace, and a finalize kernel scales, mirrors and narrows it. The
// atomics make the low bits of a split result depend on the order in which blocks finish.
//
// Backward: a prologue forms S[b] = s (dG[b] + dG[b]^T) in fp32 (C x C, tiny next to F), then
// one tiled GEMM dF = S F with the same 64 x 64 x 32 tiling (M = C, N = L, K = C). dF has x's
// dtype and follows the rule of the CPU kernel and of fastnst/ops/gram.py's fake kernel:
// strides (C*L, 1, C) when C > 1 and x.stride(1) == 1 and x.stride(2) == C (a channels_last
// image), else contiguous [B, C, L]. Loads and stores pick their coalesced direction from the
// strides.
//
// Kernels run on the current CUDA stream of x's device, under a device guard.

#include "common.cuh"

#include <algorithm>
#include <cstdint>

namespace fastnst {
namespace cuda {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

constexpr int kTile = 64;          // rows and columns of an output tile
constexpr int kBK = 32;            // reduction step
constexpr int kPitch = kTile + 1;  // shared-memory row pitch (odd: no bank conflicts)
constexpr int kThreads = 256;      // 16 x 16 threads, 4 x 4 outputs each
constexpr int kLoads = kTile * kBK / kThreads;  // elements of one operand tile per thread (8)
constexpr int kSmem = 2 * kBK * kPitch;         // floats: two operand tiles == one output tile
static_assert(kSmem >= kTile * kPitch, "the output tile reuses the operand tiles' memory");
constexpr int64_t kMinSplitCols = 512;  // fewest columns of L per block when L is split
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxGridZ = 65535;

// ---- operand tiles -------------------------------------------------------------------------
// One operand tile is tile[kk][r] = src[(row0 + r) * s_row + (k0 + kk) * s_k] for r < 64,
// kk < 32, zero outside rows < n_rows and k < k_end; it is stored k-major in shared memory
// (tile[kk * kPitch + r]) so that the inner product reads rows of it.
// Each thread loads kLoads elements. With row_fast a warp walks 32 consecutive rows (coalesced
// when s_row == 1, e.g. channels_last), otherwise 32 consecutive k (coalesced when s_k == 1).
template <typename T>
struct TileLoader {
  const T* src;  // element (row0, 0) of the operand
  int64_t s_row, s_k;
  int64_t n_rows;  // rows left from row0 (rows >= n_rows read as zero)
  bool row_fast;

  __device__ __forceinline__ void pos(int p, int& r, int& kk) const {
    const int t = threadIdx.x;
    if (row_fast) {
      r = t & (kTile - 1);
      kk = (t >> 6) + p * (kThreads / kTile);
    } else {
      kk = t & (kBK - 1);
      r = (t >> 5) + p * (kThreads / kBK);
    }
  }

  __device__ __forceinline__ void load(float (&reg)[kLoads], int64_t k0, int64_t k_end) const {
#pragma unroll
    for (int p = 0; p < kLoads; ++p) {
      int r, kk;
      pos(p, r, kk);
      const int64_t k = k0 + kk;
      reg[p] = (r < n_rows && k < k_end) ? to_float(src[r * s_row + k * s_k]) : 0.f;
    }
  }

  __device__ __forceinline__ void store(const float (&reg)[kLoads], float* tile) const {
#pragma unroll
    for (int p = 0; p < kLoads; ++p) {
      int r, kk;
      pos(p, r, kk);
      tile[kk * kPitch + r] = reg[p];
    }
  }
};

// Stage the block's 64 x 64 accumulators in shared memory: out[r * kPitch + c].
__device__ __forceinline__ void stage_tile(const float (&acc)[4][4], float* out) {
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
  for (int m = 0; m < 4; ++m)
#pragma unroll
    for (int n = 0; n < 4; ++n) out[(ty + 16 * m) * kPitch + tx + 16 * n] = acc[m][n];
}

// Upper-triangle tile number t -> (ti, tj), ti <= tj, row by row over n_t tile rows.
__device__ __forceinline__ void tri_tile(int t, int n_t, int& ti, int& tj) {
  ti = 0;
  while (t >= n_t - ti) {
    t -= n_t - ti;
    ++ti;
  }
  tj = ti + t;
}

// ---- forward -------------------------------------------------------------------------------
// grid: x = upper-triangle tile, y = part of L, z = sample. With ws == nullptr (L not split)
// the block writes scale * tile and its mirror into out; otherwise it adds the unscaled tile
// (no mirror) into ws, and gram_finalize_kernel completes G.
template <typename T>
__global__ void __launch_bounds__(kThreads)
gram_forward_kernel(const T* __restrict__ x,  // [B, C, L], strides (sb, sc, sl)
                    int64_t sb, int64_t sc, int64_t sl, int64_t C, int64_t L,
                    int n_t,          // tiles per side, ceil(C / 64)
                    int64_t k_chunk,  // columns of L per split (a multiple of 32)
                    float scale,
                    T* __restrict__ out,     // [B, C, C] contiguous (direct mode)
                    float* __restrict__ ws)  // [B, C, C] fp32, zeroed (split mode) or null
{
  __shared__ float smem[kSmem];
  float* As = smem;
  float* Bs = smem + kBK * kPitch;

  int ti, tj;
  tri_tile(blockIdx.x, n_t, ti, tj);
  const bool diag = ti == tj;
  const int64_t b = blockIdx.z;
  const int64_t i0 = int64_t(ti) * kTile, j0 = int64_t(tj) * kTile;
  const int64_t k_begin = int64_t(blockIdx.y) * k_chunk;
  const int64_t k_end = min(L, k_begin + k_chunk);

  const T* xb = x + b * sb;
  const bool row_fast = sc == 1 && sl != 1;
  const TileLoader<T> la{xb + i0 * sc, sc, sl, C - i0, row_fast};
  const TileLoader<T> lb{xb + j0 * sc, sc, sl, C - j0, row_fast};
  const float* Bt = diag ? As : Bs;  // a diagonal tile multiplies a panel by itself

  float acc[4][4] = {};
  float ra[kLoads], rb[kLoads];
  if (k_begin < k_end) {
    la.load(ra, k_begin, k_end);
    if (!diag) lb.load(rb, k_begin, k_end);
  }
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kBK) {
    la.store(ra, As);
    if (!diag) lb.store(rb, Bs);
    __syncthreads();
    if (k0 + kBK < k_end) {  // next step's loads overlap this step's arithmetic
      la.load(ra, k0 + kBK, k_end);
      if (!diag) lb.load(rb, k0 + kBK, k_end);
    }
    mma_tile<kBK, kPitch>(As, Bt, acc);
    __syncthreads();
  }

  float* Cs = smem;  // the operand tiles are dead after the last __syncthreads
  stage_tile(acc, Cs);
  __syncthreads();

  const int64_t CC = C * C;
  for (int idx = threadIdx.x; idx < kTile * kTile; idx += kThreads) {
    const int r = idx >> 6, c = idx & (kTile - 1);
    const int64_t i = i0 + r, j = j0 + c;
    if (ws != nullptr) {
      if (i < C && j < C) atomicAdd(ws + b * CC + i * C + j, Cs[r * kPitch + c]);
      continue;
    }
    T* ob = out + b * CC;
    if (i < C && j < C) ob[i * C + j] = from_float<T>(scale * Cs[r * kPitch + c]);
    if (!diag) {
      // Mirror: G[j0 + r][i0 + c] = G[i0 + c][j0 + r] = Cs[c][r]; consecutive threads write
      // consecutive columns of row j0 + r.
      const int64_t mi = j0 + r, mj = i0 + c;
      if (mi < C && mj < C) ob[mi * C + mj] = from_float<T>(scale * Cs[c * kPitch + r]);
    }
  }
}

// G[b, i, j] = scale * W[b, i, j] where W holds the upper-triangle tiles (i / 64 <= j / 64),
// else scale * W[b, j, i].
template <typename T>
__global__ void gram_finalize_kernel(const float* __restrict__ ws,  // [B, C, C] fp32
                                     int64_t B, int64_t C, float scale,
                                     T* __restrict__ out)  // [B, C, C] contiguous
{
  const int64_t CC = C * C, n = B * CC;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / CC, ij = e - b * CC;
    const int64_t i = ij / C, j = ij - i * C;
    const bool upper = i / kTile <= j / kTile;
    const float v = ws[b * CC + (upper ? i * C + j : j * C + i)];
    out[e] = from_float<T>(scale * v);
  }
}

// ---- backward ------------------------------------------------------------------------------
// S[b] = scale * (dG[b] + dG[b]^T) in fp32.
template <typename TG>
__global__ void gram_sym_kernel(const TG* __restrict__ g,  // [B, C, C], strides (gs0, gs1, gs2)
                                int64_t gs0, int64_t gs1, int64_t gs2, int64_t B, int64_t C,
                                float scale,
                                float* __restrict__ S)  // [B, C, C] fp32 contiguous
{
  const int64_t CC = C * C, n = B * CC;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / CC, ij = e - b * CC;
    const int64_t i = ij / C, j = ij - i * C;
    const TG* gb = g + b * gs0;
    S[e] = scale * (to_float(gb[i * gs1 + j * gs2]) + to_float(gb[j * gs1 + i * gs2]));
  }
}

// dF[b] = S[b] F[b]: grid x = 64-column tile of L, y = 64-row tile of C, z = sample.
template <typename T>
__global__ void __launch_bounds__(kThreads)
gram_backward_kernel(const float* __restrict__ S,  // [B, C, C] fp32 contiguous, symmetric
                     const T* __restrict__ x,      // [B, C, L], strides (sb, sc, sl)
                     int64_t sb, int64_t sc, int64_t sl, int64_t C, int64_t L,
                     T* __restrict__ out,  // [B, C, L], strides (C * L, os_c, os_l)
                     int64_t os_c, int64_t os_l)
{
  __shared__ float smem[kSmem];
  float* As = smem;
  float* Bs = smem + kBK * kPitch;

  const int64_t b = blockIdx.z;
  const int64_t i0 = int64_t(blockIdx.y) * kTile;  // rows of dF (channels)
  const int64_t j0 = int64_t(blockIdx.x) * kTile;  // columns of dF (positions in L)
  const float* Sb = S + b * C * C;
  const T* xb = x + b * sb;

  // A[i][k] = S[i][k] = S[k][i] (S is symmetric): read as S[k * C + i], contiguous along i.
  const TileLoader<float> la{Sb + i0, 1, C, C - i0, true};
  // B[k][j] = F[k][j] = x[k * sc + j * sl]: the tile's "rows" are positions j, its k channels.
  const TileLoader<T> lb{xb + j0 * sl, sl, sc, L - j0, !(sc == 1 && sl != 1)};

  float acc[4][4] = {};
  float ra[kLoads], rb[kLoads];
  la.load(ra, 0, C);
  lb.load(rb, 0, C);
  for (int64_t k0 = 0; k0 < C; k0 += kBK) {
    la.store(ra, As);
    lb.store(rb, Bs);
    __syncthreads();
    if (k0 + kBK < C) {
      la.load(ra, k0 + kBK, C);
      lb.load(rb, k0 + kBK, C);
    }
    mma_tile<kBK, kPitch>(As, Bs, acc);
    __syncthreads();
  }

  float* Cs = smem;
  stage_tile(acc, Cs);
  __syncthreads();

  T* ob = out + b * C * L;
  const bool rows_fast = os_c == 1 && os_l != 1;  // channels innermost: walk i in a warp
  for (int idx = threadIdx.x; idx < kTile * kTile; idx += kThreads) {
    int r, c;
    if (rows_fast) {
      r = idx & (kTile - 1);
      c = idx >> 6;
    } else {
      c = idx & (kTile - 1);
      r = idx >> 6;
    }
    const int64_t i = i0 + r, j = j0 + c;
    if (i < C && j < L) ob[i * os_c + j * os_l] = from_float<T>(Cs[r * kPitch + c]);
  }
}

// ---- host side -----------------------------------------------------------------------------
void check_cuda(cudaError_t err, const char* op, const char* what) {
  STD_TORCH_CHECK(err == cudaSuccess, op, " (cuda): ", what, " failed: ",
                  cudaGetErrorString(err));
}

bool supported_dtype(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16;
}

void check_input(const Tensor& x, const char* op) {
  STD_TORCH_CHECK(x.is_cuda(), op, " (cuda): x must be a CUDA tensor");
  STD_TORCH_CHECK(x.dim() == 3, op, " (cuda): x must be [B, C, L], got a tensor with ", x.dim(),
                  " dimensions");
  STD_TORCH_CHECK(supported_dtype(x.scalar_type()), op,
                  " (cuda): x must be float32, float16 or bfloat16, got ",
                  torch::headeronly::toString(x.scalar_type()));
}

unsigned int elementwise_blocks(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>(ceil_div(n, kThreads), 65535));
}

template <typename T>
void launch_forward(const Tensor& x, double scale, Tensor& out, cudaStream_t stream) {
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  const int64_t sb = x.stride(0), sc = x.stride(1), sl = x.stride(2);
  const T* X = static_cast<const T*>(x.data_ptr());
  T* O = static_cast<T*>(out.data_ptr());
  const float fscale = static_cast<float>(scale);

  const int64_t n_t = ceil_div(C, kTile);
  const int64_t n_tri = n_t * (n_t + 1) / 2;
  STD_TORCH_CHECK(n_tri <= INT32_MAX, "fastnst::gram (cuda): C = ", C, " is too large");

  // Split L when the tiles alone would not give every SM a few blocks; keep each part at
  // least kMinSplitCols wide so the atomic epilogue stays small next to the loads.
  const int64_t target = 4 * int64_t(sm_count(x.get_device_index(), "fastnst::gram"));
  int64_t n_split = 1;
  if (B * n_tri < target) {
    n_split = std::min(ceil_div(target, B * n_tri), ceil_div(L, kMinSplitCols));
    n_split = std::max<int64_t>(1, std::min(n_split, kMaxGridY));
  }
  const int64_t k_chunk = ceil_div(ceil_div(L, n_split), kBK) * kBK;
  n_split = ceil_div(L, k_chunk);  // every part is non-empty

  Tensor ws;
  float* W = nullptr;
  if (n_split > 1) {
    ws = torch::stable::new_empty(x, {B, C, C}, ScalarType::Float);
    W = static_cast<float*>(ws.data_ptr());
    check_cuda(cudaMemsetAsync(W, 0, sizeof(float) * B * C * C, stream), "fastnst::gram",
               "cudaMemsetAsync");
  }

  for (int64_t b0 = 0; b0 < B; b0 += kMaxGridZ) {
    const int64_t nb = std::min(kMaxGridZ, B - b0);
    const dim3 grid(static_cast<unsigned int>(n_tri), static_cast<unsigned int>(n_split),
                    static_cast<unsigned int>(nb));
    gram_forward_kernel<T><<<grid, kThreads, 0, stream>>>(
        X + b0 * sb, sb, sc, sl, C, L, static_cast<int>(n_t), k_chunk, fscale, O + b0 * C * C,
        W == nullptr ? nullptr : W + b0 * C * C);
    check_launch("fastnst::gram");
  }
  if (W != nullptr) {
    gram_finalize_kernel<T>
        <<<elementwise_blocks(B * C * C), kThreads, 0, stream>>>(W, B, C, fscale, O);
    check_launch("fastnst::gram");
  }
}

template <typename TG>
void launch_sym(const Tensor& grad, double scale, float* S, cudaStream_t stream) {
  const int64_t B = grad.size(0), C = grad.size(1);
  gram_sym_kernel<TG><<<elementwise_blocks(B * C * C), kThreads, 0, stream>>>(
      static_cast<const TG*>(grad.data_ptr()), grad.stride(0), grad.stride(1), grad.stride(2),
      B, C, static_cast<float>(scale), S);
  check_launch("fastnst::gram_backward");
}

template <typename T>
void launch_backward(const float* S, const Tensor& x, Tensor& out, cudaStream_t stream) {
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  const int64_t sb = x.stride(0), sc = x.stride(1), sl = x.stride(2);
  const T* X = static_cast<const T*>(x.data_ptr());
  T* O = static_cast<T*>(out.data_ptr());
  const int64_t os_c = out.stride(1), os_l = out.stride(2);
  const int64_t n_m = ceil_div(C, kTile), n_n = ceil_div(L, kTile);
  STD_TORCH_CHECK(n_m <= kMaxGridY && n_n <= INT32_MAX,
                  "fastnst::gram_backward (cuda): [C, L] = [", C, ", ", L, "] is too large");
  for (int64_t b0 = 0; b0 < B; b0 += kMaxGridZ) {
    const int64_t nb = std::min(kMaxGridZ, B - b0);
    const dim3 grid(static_cast<unsigned int>(n_n), static_cast<unsigned int>(n_m),
                    static_cast<unsigned int>(nb));
    gram_backward_kernel<T><<<grid, kThreads, 0, stream>>>(
        S + b0 * C * C, X + b0 * sb, sb, sc, sl, C, L, O + b0 * C * L, os_c, os_l);
    check_launch("fastnst::gram_backward");
  }
}

Tensor gram_cuda(const Tensor& x, double scale) {
  check_input(x, "fastnst::gram");
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  Tensor out = torch::stable::new_empty(x, {B, C, C});  // contiguous, x's dtype and device
  if (out.numel() == 0) return out;
  const cudaStream_t stream = current_stream(x.get_device_index());
  if (L == 0) {  // an empty sum: all-zero bits are 0 in every supported dtype
    check_cuda(cudaMemsetAsync(out.data_ptr(), 0, out.numel() * out.element_size(), stream),
               "fastnst::gram", "cudaMemsetAsync");
    return out;
  }
  switch (x.scalar_type()) {
    case ScalarType::Float: launch_forward<float>(x, scale, out, stream); break;
    case ScalarType::Half: launch_forward<__half>(x, scale, out, stream); break;
    default: launch_forward<__nv_bfloat16>(x, scale, out, stream); break;
  }
  return out;
}

Tensor gram_backward_cuda(const Tensor& grad, const Tensor& x, double scale) {
  check_input(x, "fastnst::gram_backward");
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  STD_TORCH_CHECK(grad.is_cuda() && grad.get_device_index() == x.get_device_index(),
                  "fastnst::gram_backward (cuda): grad must be on x's device (cuda:",
                  x.get_device_index(), ")");
  STD_TORCH_CHECK(grad.dim() == 3 && grad.size(0) == B && grad.size(1) == C &&
                      grad.size(2) == C,
                  "fastnst::gram_backward (cuda): grad must be [B, C, C] = [", B, ", ", C, ", ",
                  C, "] for x of shape [", B, ", ", C, ", ", L, "]");
  STD_TORCH_CHECK(supported_dtype(grad.scalar_type()),
                  "fastnst::gram_backward (cuda): grad must be float32, float16 or bfloat16, "
                  "got ",
                  torch::headeronly::toString(grad.scalar_type()));
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());

  // Same layout rule as csrc/cpu/gram.cpp and fastnst/ops/gram.py (grad_strides).
  const bool channels_innermost = C > 1 && x.stride(1) == 1 && x.stride(2) == C;
  Tensor out = channels_innermost
                   ? torch::stable::transpose(torch::stable::new_empty(x, {B, L, C}), 1, 2)
                   : torch::stable::new_empty(x, {B, C, L});
  if (out.numel() == 0) return out;

  const cudaStream_t stream = current_stream(x.get_device_index());
  Tensor S = torch::stable::new_empty(x, {B, C, C}, ScalarType::Float);
  float* Sp = static_cast<float*>(S.data_ptr());
  switch (grad.scalar_type()) {
    case ScalarType::Float: launch_sym<float>(grad, scale, Sp, stream); break;
    case ScalarType::Half: launch_sym<__half>(grad, scale, Sp, stream); break;
    default: launch_sym<__nv_bfloat16>(grad, scale, Sp, stream); break;
  }
  switch (x.scalar_type()) {
    case ScalarType::Float: launch_backward<float>(Sp, x, out, stream); break;
    case ScalarType::Half: launch_backward<__half>(Sp, x, out, stream); break;
    default: launch_backward<__nv_bfloat16>(Sp, x, out, stream); break;
  }
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastnst, CUDA, m) {
  m.impl("gram", TORCH_BOX(&gram_cuda));
  m.impl("gram_backward", TORCH_BOX(&gram_backward_cuda));
}

}  // namespace cuda
}  // namespace fastnst
