"""Per-channel statistics and instance normalisation in Triton: mean_std and instance_norm,
forward and backward.

Maths, per batch element b and channel c over the L = H·W positions of x [B, C, L], with
N' = L - 1 (unbiased) or L:

    mu        = (1/L) Σ_l x
    var       = (1/N') Σ_l (x - mu)²

    mean_std (the statistics AdaIN matches; Huang & Belongie, "Arbitrary Style Transfer in
    Real-time with Adaptive Instance Normalization", ICCV 2017):
      forward   mean = mu,  std = sqrt(var + eps)
      backward  dx   = g_mean / L + g_std · (x - mean) / (std · N')

    instance_norm (Ulyanov, Vedaldi & Lempitsky, "Instance Normalization: The Missing
    Ingredient for Fast Stylization", arXiv:1607.08022, 2016; w, b of shape [B, C] give
    conditional instance norm, Dumoulin, Shlens & Kudlur, "A Learned Representation for
    Artistic Style", ICLR 2017, and AdaIN with w = alpha·σ_style, b = alpha·μ_style,
    x_scale = 1 - alpha):
      forward   rstd = 1 / sqrt(var + eps),  xhat = (x - mu) · rstd
                z = w · xhat + b + x_scale · x,  y = relu(z) (activation 1) or z (activation 0)
      backward  g'  = grad · [y > 0] (relu: the mask is recomputed from y, never stored) or grad
                db  = Σ_l g',  dw = Σ_l g' · xhat                      (per (b, c), float32)
                dx  = x_scale · g' + rstd · w · (g' - db / L - xhat · dw / N')
    w and b are [C] (shared by the batch), [B, C] (per sample) or None (w = 1, b = 0); dw and db
    are per sample, the caller reduces them over B for a [C] weight.

Layout: x is [B, C, L] with any strides (contiguous, channels-innermost such as a flattened
channels_last image, or sliced); every tensor's strides go to the kernels, nothing is copied.
[B, C, L] results (y, dx, out) are written through their own strides into tensors the caller
allocates; [B, C] statistics likewise (mean_std allocates its two [B, C] results itself).
A program owns a tile of BLOCK_C rows (b, c) and walks their L axis in BLOCK_L steps, so rows
of any length (L = 2^20 and more) run in fixed registers:
  * rows mode (L innermost, or any other strides): BLOCK_L = min(next_pow2(L), 2048); short
    rows are packed BLOCK_C to a program so that a step still touches about 2048 elements;
  * channels mode (stride(1) == 1, C > 1): BLOCK_C channels (128 bytes of them) by BLOCK_L
    positions, so every load reads whole 128-byte segments; Triton specialises a stride of 1
    to a constant, which lets the compiler see the channel axis as contiguous.
The reductions need whole rows, so a program covers a row's full length: B·cdiv(C, BLOCK_C)
programs. mean_std_backward is elementwise and also splits L across programs.

Precision: everything accumulates in float32 (float64 for float64 input, which only the
interpreter runs); loads are widened, results rounded once to the output dtype. The
statistics are a shifted, per-lane Welford: each row is shifted by K = the mean of its first
BLOCK_L elements (so x - K is small and nearly exact even for x = 1e4 + noise), every lane of
the tile runs Welford's update on x - K (the lanes all see their k-th element at the same
step, so 1/k is one scalar per step: no per-element division and no cross-lane work in the
loop), and the lanes are merged at the end with the parallel-variance formula of Chan, Golub
& LeVeque: M2 = Σ_j M2_j + Σ_j n_j (m_j - m)². Never E[x²] - E[x]². The forward normalises
with ((x - K) - (mu - K)) · rstd, which is more exact than x - mu with mu rounded to float32.
mean and rstd are stored in the dtype of the tensors the caller passes (float32 by the op
contract; float64 ones keep a float64 gradcheck exact). eps and x_scale reach the kernels as
float32 scalars.

Limitations: no autotuning (block sizes and warps are a small heuristic by layout, C, L and
dtype), which keeps it usable under TRITON_INTERPRET=1. When B·C/BLOCK_C is small and L long
the reductions use few SMs (VGG relu1_1 at 512², B = 1, C = 64, L = 2^18: 64 programs in rows
mode, 1 or 2 in channels mode); splitting L with a cross-program merge of (n, mean, M2) would
fix it. Only mean_std_backward splits L today. float64 is meant for the interpreter; the GPU
backend rejects it upstream in fastnst/backend.py. Under the interpreter float32 -> bfloat16
stores truncate, so bfloat16 results take a float32 detour there (see _bf16_detour).
unbiased with L = 1 gives N' = 0 and NaN statistics, as torch.std does.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Elements of x a program touches per step (BLOCK_C · BLOCK_L): 8 KiB of float32.
_TILE = 2048
# mean_std_backward splits L until about this many programs run (a few waves of an H100).
_TARGET_PROGRAMS = 1024

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _acc_dtype(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def _bf16_detour(dtype: torch.dtype) -> bool:
    """Whether a result of this dtype is stored as float32 and rounded by torch.

    The interpreter's float32 -> bfloat16 cast truncates (see kernels/gram.py, _precision);
    torch's copy rounds to nearest even, as the GPU's cast does. Compiled kernels never
    take this path.
    """
    return dtype == torch.bfloat16 and _interpreting()


def _blocks(x: torch.Tensor) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_L, num_warps) for x [B, C, L]; see the module docstring."""
    _, c, l = x.shape
    if c > 1 and x.stride(1) == 1:  # channels mode: 128 bytes of channels per position
        block_c = min(triton.next_power_of_2(c), max(1, 128 // x.element_size()))
        block_l = max(1, min(_TILE // block_c, triton.next_power_of_2(l)))
    else:  # rows mode
        block_l = min(triton.next_power_of_2(l), _TILE)
        block_c = max(1, min(_TILE // block_l, triton.next_power_of_2(c)))
    num_warps = max(1, min(8, block_c * block_l // 256))
    return block_c, block_l, num_warps


def _n_var(l: int, unbiased: bool) -> float:
    return float(l - 1) if unbiased else float(l)


# ---- validation -------------------------------------------------------------------------------
def _check_x(op: str, name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{op} (triton): {name} must be [B, C, L], got {got}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"{op} (triton): {name} must be float32, float16 or bfloat16 "
                        f"(float64 under TRITON_INTERPRET=1), got {x.dtype}")


def _check_like(op: str, name: str, t: torch.Tensor, shape: tuple[int, ...], x: torch.Tensor,
                dtype: torch.dtype | None = None) -> None:
    """t must have this shape, be on x's device and (when given) have this dtype."""
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape):
        got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{op} (triton): {name} must be {list(shape)} for x {list(x.shape)}, got {got}")
    if t.device != x.device:
        raise ValueError(f"{op} (triton): {name} must be on x's device {x.device}, got {t.device}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{op} (triton): {name} must be {dtype}, got {t.dtype}")
    if dtype is None and t.dtype not in _DTYPES:
        raise TypeError(f"{op} (triton): {name} must be a float tensor, got {t.dtype}")


def _affine_strides(op: str, name: str, t: torch.Tensor | None, x: torch.Tensor) -> tuple[int, int]:
    """(stride over B, stride over C) of a [C] or [B, C] weight/bias; (0, 0) for None."""
    if t is None:
        return 0, 0
    b, c, _ = x.shape
    if not isinstance(t, torch.Tensor) or tuple(t.shape) not in ((c,), (b, c)):
        got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{op} (triton): {name} must be None, [{c}] or [{b}, {c}] for x "
                         f"{list(x.shape)}, got {got}")
    if t.device != x.device or t.dtype not in _DTYPES:
        raise TypeError(f"{op} (triton): {name} must be a float tensor on x's device {x.device}, "
                        f"got {t.dtype} on {t.device}")
    return (0, t.stride(0)) if t.dim() == 1 else (t.stride(0), t.stride(1))


# ---- kernels ----------------------------------------------------------------------------------
@triton.jit
def _row_moments(
    x_rows,  # [BLOCK_C] pointers to x[b, c, 0]
    mask_c,  # [BLOCK_C] rows that exist
    L, stride_xl, n_var,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    """Per row: (shift K, mean - K, var · sc², sc), in ACC_DTYPE, var = Σ_l (x - mean)² / n_var.

    sc is a per-row scale that keeps every sum of squares far from overflow (the variance of
    values ~1e30 does not fit in float32, although their std does): callers take
    std = sqrt(var · sc² + eps · sc²) / sc."""
    ar_l = tl.arange(0, BLOCK_L).to(tl.int64)

    # Shift: the mean of the first BLOCK_L elements, close to the row's mean for any data
    # that is not adversarial, which keeps x - K small; Welford stays exact-ish without it.
    mask0 = mask_c[:, None] & (ar_l < L)[None, :]
    x0 = tl.load(x_rows[:, None] + ar_l[None, :] * stride_xl, mask=mask0, other=0.0).to(ACC_DTYPE)
    shift = tl.sum(x0, axis=1) / tl.maximum(tl.sum(mask0.to(ACC_DTYPE), axis=1), 1.0)
    # Deviations are scaled by sc = 1 / (sqrt(L) · max |x - K| over the first block), so the
    # lanes' sums of squares stay near 1: unscaled, a row of values ~1e18 would pass FLT_MAX.
    m0 = tl.max(tl.where(mask0, tl.abs(x0 - shift[:, None]), 0.0), axis=1)
    m0 = tl.where((m0 > 0.0) & (m0 < float("inf")), m0, 1.0)
    rs_l = 1.0 / (_sqrt((L * 1.0).to(ACC_DTYPE), ACC_DTYPE) * m0)

    # Per-lane Welford on (x - K) / sqrt(L). Lane j meets its k-th element at step k - 1 (only
    # the last step is partial), so 1/k is a scalar. The lanes' min and max find constant rows.
    mean = tl.zeros((BLOCK_C, BLOCK_L), dtype=ACC_DTYPE)
    m2 = tl.zeros((BLOCK_C, BLOCK_L), dtype=ACC_DTYPE)
    lo = tl.full((BLOCK_C, BLOCK_L), float("inf"), ACC_DTYPE)
    hi = tl.full((BLOCK_C, BLOCK_L), float("-inf"), ACC_DTYPE)
    k = tl.zeros((BLOCK_C,), dtype=ACC_DTYPE)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + ar_l
        mask = mask_c[:, None] & (offs_l < L)[None, :]
        x = tl.load(x_rows[:, None] + offs_l[None, :] * stride_xl, mask=mask, other=0.0).to(ACC_DTYPE)
        k += 1.0
        rcp = (1.0 / k)[:, None]
        d = (x - shift[:, None]) * rs_l[:, None]
        delta = d - mean
        mean += tl.where(mask, delta * rcp, 0.0)
        m2 += tl.where(mask, delta * (d - mean), 0.0)
        lo = tl.where(mask, tl.minimum(lo, x), lo)
        hi = tl.where(mask, tl.maximum(hi, x), hi)

    # Merge the lanes (Chan et al.): lane j holds n_j = ceil((L - j) / BLOCK_L) elements.
    n_j = tl.where(ar_l < L, (L - ar_l + BLOCK_L - 1) // BLOCK_L, 0).to(ACC_DTYPE)[None, :]
    # L * 1.0, not L.to(...): Triton passes an integer argument equal to 1 as a constexpr.
    mean_s = tl.sum(n_j * mean, axis=1) / (L * 1.0)
    dev = mean - mean_s[:, None]
    m2_row = tl.sum(m2, axis=1) + tl.sum(n_j * dev * dev, axis=1)
    # A constant row has exactly its value as the mean and variance 0 (a rounded mean would
    # leave a spurious variance that 1 / sqrt(var) blows up when eps = 0).
    lo_r = tl.min(lo, axis=1)
    is_const = (lo_r == tl.max(hi, axis=1)) & (mean_s == mean_s)
    mean_off = tl.where(is_const, lo_r - shift, mean_s / rs_l)
    var_s = tl.where(is_const, 0.0, m2_row / n_var)
    return shift, mean_off, var_s, rs_l


@triton.jit
def _std(var_s, sc, eps, ACC_DTYPE: tl.constexpr):
    """sqrt(var + eps) from var_s = var · sc² (see _row_moments) without forming sc² where it
    would overflow (tiny values): there eps dominates and var / sc² is negligible."""
    e = eps * sc * sc
    big = e < 1e30
    return tl.where(big, _sqrt(var_s + tl.where(big, e, 0.0), ACC_DTYPE) / sc,
                    _sqrt(eps + var_s / sc / sc, ACC_DTYPE))


@triton.jit
def _sqrt(x, ACC_DTYPE: tl.constexpr):
    # tl.sqrt is the fast approximation on the GPU; sqrt_rn is IEEE (float32 only).
    if ACC_DTYPE == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def _mean_std_fwd_kernel(
    x_ptr,  # [B, C, L]
    mean_ptr,  # [B, C]
    std_ptr,  # [B, C]
    C, L, n_var, eps,
    stride_xb, stride_xc, stride_xl,  # x: [B, C, L]
    stride_mb, stride_mc,  # mean: [B, C]
    stride_sb, stride_sc,  # std: [B, C]
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    n_cb = tl.cdiv(C, BLOCK_C)
    pid_b = (pid // n_cb).to(tl.int64)
    offs_c = ((pid % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask_c = offs_c < C

    x_rows = x_ptr + pid_b * stride_xb + offs_c * stride_xc
    shift, mean_off, var_s, sc = _row_moments(x_rows, mask_c, L, stride_xl, n_var, BLOCK_C, BLOCK_L, ACC_DTYPE)
    std = _std(var_s, sc, eps, ACC_DTYPE)
    tl.store(mean_ptr + pid_b * stride_mb + offs_c * stride_mc,
             (shift + mean_off).to(mean_ptr.dtype.element_ty), mask=mask_c)
    tl.store(std_ptr + pid_b * stride_sb + offs_c * stride_sc, std.to(std_ptr.dtype.element_ty), mask=mask_c)


@triton.jit
def _mean_std_bwd_kernel(
    gm_ptr,  # [B, C]  grad of mean
    gs_ptr,  # [B, C]  grad of std
    x_ptr,  # [B, C, L]
    mean_ptr,  # [B, C]
    std_ptr,  # [B, C]
    out_ptr,  # [B, C, L]
    C, L, n_var, L_PER_PROG,
    stride_gmb, stride_gmc,  # grad_mean: [B, C]
    stride_gsb, stride_gsc,  # grad_std: [B, C]
    stride_xb, stride_xc, stride_xl,  # x: [B, C, L]
    stride_mb, stride_mc,  # mean: [B, C]
    stride_sb, stride_sc,  # std: [B, C]
    stride_ob, stride_oc, stride_ol,  # out: [B, C, L]
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    # Elementwise: out = gm / L + gs / (std · N') · (x - mean). Program = (b, channel block,
    # span of L), the span varying fastest.
    pid = tl.program_id(0)
    n_split = tl.cdiv(L, L_PER_PROG)
    n_cb = tl.cdiv(C, BLOCK_C)
    pid_s = pid % n_split
    pid_c = (pid // n_split) % n_cb
    pid_b = (pid // (n_split * n_cb)).to(tl.int64)
    offs_c = (pid_c * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask_c = offs_c < C

    gm = tl.load(gm_ptr + pid_b * stride_gmb + offs_c * stride_gmc, mask=mask_c, other=0.0).to(ACC_DTYPE)
    gs = tl.load(gs_ptr + pid_b * stride_gsb + offs_c * stride_gsc, mask=mask_c, other=0.0).to(ACC_DTYPE)
    mean = tl.load(mean_ptr + pid_b * stride_mb + offs_c * stride_mc, mask=mask_c, other=0.0).to(ACC_DTYPE)
    std = tl.load(std_ptr + pid_b * stride_sb + offs_c * stride_sc, mask=mask_c, other=1.0).to(ACC_DTYPE)
    # A zero grad_std contributes nothing, also where std = 0 or x holds a NaN/Inf (0 / 0,
    # 0 * Inf): such rows are grad_mean / L exactly, as autograd of the reference gives.
    gs_zero = (gs == 0.0)[:, None]
    c0 = (gm / (L * 1.0))[:, None]
    c1 = tl.where(gs_zero, 0.0, (gs / (std * n_var))[:, None])

    x_rows = x_ptr + pid_b * stride_xb + offs_c * stride_xc
    o_rows = out_ptr + pid_b * stride_ob + offs_c * stride_oc
    ar_l = tl.arange(0, BLOCK_L).to(tl.int64)
    l_begin = pid_s * L_PER_PROG
    l_end = tl.minimum(l_begin + L_PER_PROG, L)
    for l0 in range(l_begin, l_end, BLOCK_L):
        offs_l = l0 + ar_l
        mask = mask_c[:, None] & (offs_l < L)[None, :]  # a span ends at L or on a step boundary
        x = tl.load(x_rows[:, None] + offs_l[None, :] * stride_xl, mask=mask, other=0.0).to(ACC_DTYPE)
        out = tl.where(gs_zero, c0, c0 + c1 * (x - mean[:, None]))
        tl.store(o_rows[:, None] + offs_l[None, :] * stride_ol, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _instance_norm_fwd_kernel(
    x_ptr,  # [B, C, L]
    w_ptr,  # [C] or [B, C] (stride over B 0 for [C]); unused unless HAS_W
    b_ptr,  # [C] or [B, C]; unused unless HAS_B
    y_ptr,  # [B, C, L]
    mean_ptr,  # [B, C]
    rstd_ptr,  # [B, C]
    C, L, n_var, eps, x_scale,
    stride_xb, stride_xc, stride_xl,  # x: [B, C, L]
    stride_wb, stride_wc,  # weight: [B, C] (stride_wb = 0 for [C])
    stride_bb, stride_bc,  # bias: [B, C] (stride_bb = 0 for [C])
    stride_yb, stride_yc, stride_yl,  # y: [B, C, L]
    stride_mb, stride_mc,  # mean: [B, C]
    stride_rb, stride_rc,  # rstd: [B, C]
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, RELU: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    n_cb = tl.cdiv(C, BLOCK_C)
    pid_b = (pid // n_cb).to(tl.int64)
    offs_c = ((pid % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask_c = offs_c < C

    x_rows = x_ptr + pid_b * stride_xb + offs_c * stride_xc
    shift, mean_off, var_s, sc = _row_moments(x_rows, mask_c, L, stride_xl, n_var, BLOCK_C, BLOCK_L, ACC_DTYPE)
    # 1 / sqrt(var + eps), and 0 where var + eps = 0 (eps = 0, constant row), as PyTorch.
    sd = _std(var_s, sc, eps, ACC_DTYPE)
    rstd = tl.where(sd == 0.0, 0.0, 1.0 / tl.where(sd == 0.0, 1.0, sd))

    if HAS_W:
        w = tl.load(w_ptr + pid_b * stride_wb + offs_c * stride_wc, mask=mask_c, other=0.0).to(ACC_DTYPE)
    else:
        w = tl.full((BLOCK_C,), 1.0, ACC_DTYPE)
    if HAS_B:
        bias = tl.load(b_ptr + pid_b * stride_bb + offs_c * stride_bc, mask=mask_c, other=0.0).to(ACC_DTYPE)
    else:
        bias = tl.zeros((BLOCK_C,), ACC_DTYPE)
    scale = (w * rstd)[:, None]
    shift_2 = shift[:, None]
    mean_s2 = mean_off[:, None]
    bias_2 = bias[:, None]

    y_rows = y_ptr + pid_b * stride_yb + offs_c * stride_yc
    ar_l = tl.arange(0, BLOCK_L).to(tl.int64)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + ar_l
        mask = mask_c[:, None] & (offs_l < L)[None, :]
        x = tl.load(x_rows[:, None] + offs_l[None, :] * stride_xl, mask=mask, other=0.0).to(ACC_DTYPE)
        z = scale * ((x - shift_2) - mean_s2) + bias_2 + x_scale * x
        if RELU:
            z = tl.where(z < 0.0, 0.0, z)  # NaN stays NaN, as torch.relu
        tl.store(y_rows[:, None] + offs_l[None, :] * stride_yl, z.to(y_ptr.dtype.element_ty), mask=mask)

    tl.store(mean_ptr + pid_b * stride_mb + offs_c * stride_mc,
             (shift + mean_off).to(mean_ptr.dtype.element_ty), mask=mask_c)
    tl.store(rstd_ptr + pid_b * stride_rb + offs_c * stride_rc,
             rstd.to(rstd_ptr.dtype.element_ty), mask=mask_c)


@triton.jit
def _instance_norm_bwd_kernel(
    g_ptr,  # [B, C, L]  grad of y
    x_ptr,  # [B, C, L]
    y_ptr,  # [B, C, L]  read only when RELU
    w_ptr,  # [C] or [B, C]; unused unless HAS_W
    mean_ptr,  # [B, C]
    rstd_ptr,  # [B, C]
    dx_ptr,  # [B, C, L]
    dw_ptr,  # [B, C]; unused unless HAS_DW
    db_ptr,  # [B, C]; unused unless HAS_DB
    C, L, n_var, x_scale,
    stride_gb, stride_gc, stride_gl,  # grad: [B, C, L]
    stride_xb, stride_xc, stride_xl,  # x: [B, C, L]
    stride_yb, stride_yc, stride_yl,  # y: [B, C, L]
    stride_wb, stride_wc,  # weight: [B, C] (stride_wb = 0 for [C])
    stride_mb, stride_mc,  # mean: [B, C]
    stride_rb, stride_rc,  # rstd: [B, C]
    stride_dxb, stride_dxc, stride_dxl,  # dx: [B, C, L]
    stride_dwb, stride_dwc,  # dw: [B, C]
    stride_dbb, stride_dbc,  # db: [B, C]
    HAS_W: tl.constexpr, HAS_DW: tl.constexpr, HAS_DB: tl.constexpr, RELU: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    n_cb = tl.cdiv(C, BLOCK_C)
    pid_b = (pid // n_cb).to(tl.int64)
    offs_c = ((pid % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask_c = offs_c < C

    mean = tl.load(mean_ptr + pid_b * stride_mb + offs_c * stride_mc, mask=mask_c, other=0.0).to(ACC_DTYPE)
    rstd = tl.load(rstd_ptr + pid_b * stride_rb + offs_c * stride_rc, mask=mask_c, other=0.0).to(ACC_DTYPE)
    if HAS_W:
        w = tl.load(w_ptr + pid_b * stride_wb + offs_c * stride_wc, mask=mask_c, other=0.0).to(ACC_DTYPE)
    else:
        w = tl.full((BLOCK_C,), 1.0, ACC_DTYPE)
    mean_2 = mean[:, None]
    rstd_2 = rstd[:, None]

    g_rows = g_ptr + pid_b * stride_gb + offs_c * stride_gc
    x_rows = x_ptr + pid_b * stride_xb + offs_c * stride_xc
    y_rows = y_ptr + pid_b * stride_yb + offs_c * stride_yc
    ar_l = tl.arange(0, BLOCK_L).to(tl.int64)

    # Pass 1: db = Σ g', dw = Σ g' xhat, per lane then across lanes.
    acc_g = tl.zeros((BLOCK_C, BLOCK_L), dtype=ACC_DTYPE)
    acc_gx = tl.zeros((BLOCK_C, BLOCK_L), dtype=ACC_DTYPE)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + ar_l
        mask = mask_c[:, None] & (offs_l < L)[None, :]
        g = tl.load(g_rows[:, None] + offs_l[None, :] * stride_gl, mask=mask, other=0.0).to(ACC_DTYPE)
        if RELU:
            y = tl.load(y_rows[:, None] + offs_l[None, :] * stride_yl, mask=mask, other=0.0)
            g = tl.where(y > 0, g, 0.0)
        x = tl.load(x_rows[:, None] + offs_l[None, :] * stride_xl, mask=mask, other=0.0).to(ACC_DTYPE)
        acc_g += g
        acc_gx += g * ((x - mean_2) * rstd_2)
    db = tl.sum(acc_g, axis=1)
    dw = tl.sum(acc_gx, axis=1)
    if HAS_DW:
        tl.store(dw_ptr + pid_b * stride_dwb + offs_c * stride_dwc,
                 dw.to(dw_ptr.dtype.element_ty), mask=mask_c)
    if HAS_DB:
        tl.store(db_ptr + pid_b * stride_dbb + offs_c * stride_dbc,
                 db.to(db_ptr.dtype.element_ty), mask=mask_c)

    # Pass 2: dx = x_scale g' + rstd w (g' - db / L - xhat dw / N').
    a = (rstd * w)[:, None]
    mean_g = (db / (L * 1.0))[:, None]
    dw_n = (dw / n_var)[:, None]
    dx_rows = dx_ptr + pid_b * stride_dxb + offs_c * stride_dxc
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + ar_l
        mask = mask_c[:, None] & (offs_l < L)[None, :]
        g = tl.load(g_rows[:, None] + offs_l[None, :] * stride_gl, mask=mask, other=0.0).to(ACC_DTYPE)
        if RELU:
            y = tl.load(y_rows[:, None] + offs_l[None, :] * stride_yl, mask=mask, other=0.0)
            g = tl.where(y > 0, g, 0.0)
        x = tl.load(x_rows[:, None] + offs_l[None, :] * stride_xl, mask=mask, other=0.0).to(ACC_DTYPE)
        xhat = (x - mean_2) * rstd_2
        dx = x_scale * g + a * (g - mean_g - xhat * dw_n)
        tl.store(dx_rows[:, None] + offs_l[None, :] * stride_dxl, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---- launchers --------------------------------------------------------------------------------
def mean_std(x: torch.Tensor, eps: float, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (b, c) mean and sqrt(var + eps) of x [B, C, L] (any strides) over L.

    Returns two new contiguous [B, C] tensors in x's dtype. var divides by L - 1 if unbiased,
    else L; L = 0 gives NaN.
    """
    _check_x("mean_std", "x", x)
    b, c, l = x.shape
    out_dtype = torch.float32 if _bf16_detour(x.dtype) else x.dtype
    mean = torch.empty((b, c), dtype=out_dtype, device=x.device)
    std = torch.empty((b, c), dtype=out_dtype, device=x.device)
    if mean.numel() > 0:
        if l == 0:
            mean.fill_(float("nan"))
            std.fill_(float("nan"))
        else:
            block_c, block_l, num_warps = _blocks(x)
            grid = (b * triton.cdiv(c, block_c),)
            _mean_std_fwd_kernel[grid](
                x, mean, std, c, l, _n_var(l, unbiased), float(eps),
                *x.stride(), *mean.stride(), *std.stride(),
                BLOCK_C=block_c, BLOCK_L=block_l, ACC_DTYPE=_acc_dtype(x.dtype), num_warps=num_warps,
            )
    if out_dtype != x.dtype:
        return mean.to(x.dtype), std.to(x.dtype)
    return mean, std


def mean_std_backward(grad_mean: torch.Tensor, grad_std: torch.Tensor, x: torch.Tensor,
                      mean: torch.Tensor, std: torch.Tensor, unbiased: bool, out: torch.Tensor) -> None:
    """out = grad_mean / L + grad_std · (x - mean) / (std · N'), written through out's strides.

    grad_mean, grad_std, mean, std: [B, C] (any float dtype and strides, stride 0 included);
    x and out: [B, C, L], out in x's dtype.
    """
    op = "mean_std_backward"
    _check_x(op, "x", x)
    b, c, l = x.shape
    for name, t in (("grad_mean", grad_mean), ("grad_std", grad_std), ("mean", mean), ("std", std)):
        _check_like(op, name, t, (b, c), x)
    _check_like(op, "out", out, (b, c, l), x, x.dtype)
    if out.numel() == 0:
        return
    block_c, block_l, num_warps = _blocks(x)
    n_rows = b * triton.cdiv(c, block_c)
    n_steps = triton.cdiv(l, block_l)
    splits = max(1, min(n_steps, triton.cdiv(_TARGET_PROGRAMS, n_rows)))
    l_per_prog = triton.cdiv(n_steps, splits) * block_l
    splits = triton.cdiv(l, l_per_prog)
    dst = torch.empty_like(out, dtype=torch.float32) if _bf16_detour(out.dtype) else out
    _mean_std_bwd_kernel[(n_rows * splits,)](
        grad_mean, grad_std, x, mean, std, dst, c, l, _n_var(l, unbiased), l_per_prog,
        *grad_mean.stride(), *grad_std.stride(), *x.stride(), *mean.stride(), *std.stride(),
        *dst.stride(),
        BLOCK_C=block_c, BLOCK_L=block_l, ACC_DTYPE=_acc_dtype(x.dtype), num_warps=num_warps,
    )
    if dst is not out:
        out.copy_(dst)


def instance_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                  unbiased: bool, x_scale: float, activation: int, y: torch.Tensor, mean: torch.Tensor,
                  rstd: torch.Tensor) -> None:
    """y = act(w · (x - mu) · rstd + b + x_scale · x); writes y, mean and rstd in place.

    x [B, C, L] any strides; weight/bias None, [C] or [B, C] (any float dtype and strides);
    activation 0 (none) or 1 (relu); y [B, C, L] in x's dtype (its own strides); mean and rstd
    [B, C], float32 by the op contract (float64 accepted, for a float64 gradcheck).
    """
    op = "instance_norm"
    _check_x(op, "x", x)
    b, c, l = x.shape
    if activation not in (0, 1):
        raise ValueError(f"{op} (triton): activation must be 0 (none) or 1 (relu), got {activation!r}")
    w_strides = _affine_strides(op, "weight", weight, x)
    b_strides = _affine_strides(op, "bias", bias, x)
    _check_like(op, "y", y, (b, c, l), x, x.dtype)
    for name, t in (("mean", mean), ("rstd", rstd)):
        _check_like(op, name, t, (b, c), x)
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{op} (triton): {name} must be float32, got {t.dtype}")
    if b * c == 0:
        return
    if l == 0:
        mean.fill_(float("nan"))
        rstd.fill_(float("nan"))
        return
    block_c, block_l, num_warps = _blocks(x)
    dst = torch.empty_like(y, dtype=torch.float32) if _bf16_detour(y.dtype) else y
    _instance_norm_fwd_kernel[(b * triton.cdiv(c, block_c),)](
        x, weight, bias, dst, mean, rstd, c, l, _n_var(l, unbiased), float(eps), float(x_scale),
        *x.stride(), *w_strides, *b_strides, *dst.stride(), *mean.stride(), *rstd.stride(),
        HAS_W=weight is not None, HAS_B=bias is not None, RELU=activation == 1,
        BLOCK_C=block_c, BLOCK_L=block_l, ACC_DTYPE=_acc_dtype(x.dtype), num_warps=num_warps,
    )
    if dst is not y:
        y.copy_(dst)


def instance_norm_backward(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None,
                           mean: torch.Tensor, rstd: torch.Tensor, unbiased: bool, x_scale: float,
                           activation: int, dx: torch.Tensor, dw: torch.Tensor | None,
                           db: torch.Tensor | None) -> None:
    """Backward of instance_norm: writes dx, and dw = Σ g' xhat, db = Σ g' unless they are None.

    grad, x, y [B, C, L] (any strides; y is read only for activation 1, to recompute the ReLU
    mask; grad's strides may be 0: the expanded gradient of y.sum() is read in place, one value
    per row); weight None, [C] or [B, C]; mean, rstd [B, C] from the forward; dx [B, C, L] in
    x's dtype (its own strides); dw, db float32 [B, C] per sample, or None.
    """
    op = "instance_norm_backward"
    _check_x(op, "x", x)
    b, c, l = x.shape
    if activation not in (0, 1):
        raise ValueError(f"{op} (triton): activation must be 0 (none) or 1 (relu), got {activation!r}")
    _check_like(op, "grad", grad, (b, c, l), x)
    _check_like(op, "y", y, (b, c, l), x)
    w_strides = _affine_strides(op, "weight", weight, x)
    _check_like(op, "mean", mean, (b, c), x)
    _check_like(op, "rstd", rstd, (b, c), x)
    _check_like(op, "dx", dx, (b, c, l), x, x.dtype)
    for name, t in (("dw", dw), ("db", db)):
        if t is not None:
            _check_like(op, name, t, (b, c), x)
            if t.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"{op} (triton): {name} must be float32, got {t.dtype}")
    if b * c == 0:
        return
    if l == 0:
        for t in (dw, db):
            if t is not None:
                t.zero_()
        return
    block_c, block_l, num_warps = _blocks(x)
    dst = torch.empty_like(dx, dtype=torch.float32) if _bf16_detour(dx.dtype) else dx
    _instance_norm_bwd_kernel[(b * triton.cdiv(c, block_c),)](
        grad, x, y, weight, mean, rstd, dst, dw, db, c, l, _n_var(l, unbiased), float(x_scale),
        *grad.stride(), *x.stride(), *y.stride(), *w_strides, *mean.stride(), *rstd.stride(),
        *dst.stride(), *(dw.stride() if dw is not None else (0, 0)),
        *(db.stride() if db is not None else (0, 0)),
        HAS_W=weight is not None, HAS_DW=dw is not None, HAS_DB=db is not None, RELU=activation == 1,
        BLOCK_C=block_c, BLOCK_L=block_l, ACC_DTYPE=_acc_dtype(x.dtype), num_warps=num_warps,
    )
    if dst is not dx:
        dx.copy_(dst)
