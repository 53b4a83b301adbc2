"""Gram matrix in Triton: forward G = s·F Fᵀ and backward dF = s·(dG + dGᵀ) F.

Maths (Gatys, Ecker & Bethge, "Image Style Transfer Using Convolutional Neural Networks",
CVPR 2016, eq. 3), per batch element b, with F = x[b] viewed as (C, L), L = H·W:

    forward   G[b]  = s · F Fᵀ                      [C, C], symmetric
    backward  dF[b] = s · (dG[b] + dG[b]ᵀ) F        [C, L]

s is the caller's scale (1/divisor, see fastnst/ops/gram.py). dG is not assumed symmetric:
an upstream loss may hand back any [C, C] gradient.

Layout: x is [B, C, L] with any strides (contiguous, channels-innermost such as a flattened
channels_last image, or sliced); strides go to the kernels, nothing is copied. G is written
contiguous [B, C, C] in x's dtype. The backward writes into a preallocated ``out`` shaped like
x, through out's own strides.

Precision: tl.dot accumulates in float32 (float64 for float64 input, which only the
interpreter runs); the scale is applied to the accumulator and the result rounded once to the
output dtype. float32 operands use input_precision="ieee": TF32 would keep only 10 mantissa
bits of every product (the price: float32 runs on the FMA units, not the tensor cores).
float16/bfloat16 operands go to the tensor cores unchanged; in the backward, dG + dGᵀ is summed
in float32 and rounded once to x's dtype before the dot, as torch's own (dG + dGᵀ) @ F does.

Forward: only the upper triangle of C-tiles is computed (tile_m <= tile_n). A 1-D program id
enumerates those tiles column by column and every tile is stored twice, as itself and as its
mirror; on diagonal tiles the two stores cover disjoint halves, so G is exactly symmetric.
When there are too few tiles to fill the GPU (small C, long L: VGG relu1_1 at 512², C = 64 and
L = 262144), the L axis is split (split-K): each split writes a float32 partial Gram, and the
partials are summed by torch in a fixed order (deterministic, no atomics).

Backward: one tiled GEMM over (C-tile, L-tile) programs; the reduction runs over C, loading a
tile of dG and the matching tile of dGᵀ (the same memory, transposed strides) and adding them.

Limitations: C and L may be any size (masked tiles); no autotuning (block sizes are a small
heuristic by C, L and dtype), which keeps it usable under TRITON_INTERPRET=1; float64 is meant
for the interpreter (gradcheck), the GPU backend rejects it upstream in fastnst/backend.py.
Under the interpreter bfloat16 takes a float32 detour, see _precision.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Split-K heuristic for the forward: aim for about this many programs (two waves of an
# H100's 132 SMs), never giving a split less than this many columns of L.
_TARGET_PROGRAMS = 264
_MIN_SPLIT_L = 1024


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _precision(dtype: torch.dtype) -> tuple[tl.dtype, bool, bool]:
    """(accumulator dtype, interpreter bfloat16 workaround, scale applied in the kernel).

    float64 (interpreter only) accumulates in float64 and is scaled afterwards by torch:
    Triton hands a Python float to the kernel as float32, which would round the scale.

    bfloat16 under TRITON_INTERPRET=1: the interpreter's tl.dot multiplies bfloat16 bit
    patterns as integers (triton-lang/triton#11584, unsupported upstream) and its
    float32 -> bfloat16 cast truncates. So there the dot operands are cast to float32 (exact:
    a bfloat16 product fits a float32), the kernels store float32 and torch rounds to
    bfloat16 (round-to-nearest-even, as the GPU's cast does). Compiled kernels never take
    this path.
    """
    if dtype == torch.float64:
        return tl.float64, False, False
    return tl.float32, dtype == torch.bfloat16 and _interpreting(), True


def _block_c(c: int) -> int:
    # tl.dot needs every dimension >= 16.
    return 16 if c <= 16 else 32 if c <= 32 else 64


def _block_l(l: int, dtype: torch.dtype) -> int:
    # 64 halves of 16 bits make a 128-byte row; float32 tiles stay at 32 to spare registers.
    if l <= 16:
        return 16
    return 64 if l > 32 and dtype in (torch.float16, torch.bfloat16) else 32


def _check(x: torch.Tensor, name: str) -> None:
    if x.dim() != 3:
        raise ValueError(f"gram (triton): {name} must be [B, C, L], got {list(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"gram (triton): {name} must be float32, float16 or bfloat16 "
                        f"(float64 under TRITON_INTERPRET=1), got {x.dtype}")


@triton.jit
def _gram_fwd_kernel(
    x_ptr,  # [B, C, L]
    g_ptr,  # [S, B, C, C]  (S = 1: the result itself; S > 1: float32 partials per split)
    C, L, L_PER_SPLIT,
    stride_xb, stride_xc, stride_xl,  # x: [B, C, L]
    stride_gs, stride_gb, stride_gr, stride_gc,  # g: [S, B, C, C]
    scale,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, ACC_DTYPE: tl.constexpr, DOT_FP32: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)

    # Upper-triangle tile (tile_m <= tile_n), enumerated column by column:
    # pid = tile_n·(tile_n + 1)/2 + tile_m. The float estimate of tile_n is fixed up by ±1.
    tile_n = ((tl.sqrt((8 * pid + 1).to(tl.float32)) - 1.0) * 0.5).to(tl.int32)
    tile_n = tl.where(tile_n * (tile_n + 1) // 2 > pid, tile_n - 1, tile_n)
    tile_n = tl.where((tile_n + 1) * (tile_n + 2) // 2 <= pid, tile_n + 1, tile_n)
    tile_m = pid - tile_n * (tile_n + 1) // 2

    offs_m = (tile_m * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    offs_n = (tile_n * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask_m = offs_m < C
    mask_n = offs_n < C
    ar_l = tl.arange(0, BLOCK_L).to(tl.int64)

    x_base = x_ptr + pid_b * stride_xb
    a_rows = x_base + offs_m[:, None] * stride_xc  # F rows of tile_m: [BLOCK_C, ·]
    b_cols = x_base + offs_n[None, :] * stride_xc  # Fᵀ columns of tile_n: [·, BLOCK_C]

    l_begin = pid_s * L_PER_SPLIT
    l_end = tl.minimum(l_begin + L_PER_SPLIT, L)
    acc = tl.zeros((BLOCK_C, BLOCK_C), dtype=ACC_DTYPE)
    for l0 in range(l_begin, l_end, BLOCK_L):
        offs_l = l0 + ar_l
        mask_l = offs_l < l_end
        a = tl.load(a_rows + offs_l[None, :] * stride_xl, mask=mask_m[:, None] & mask_l[None, :], other=0.0)
        b = tl.load(b_cols + offs_l[:, None] * stride_xl, mask=mask_l[:, None] & mask_n[None, :], other=0.0)
        if DOT_FP32:  # interpreter bfloat16 only, see _precision
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision="ieee")

    acc = acc * scale
    val = acc.to(g_ptr.dtype.element_ty)
    g_base = g_ptr + pid_s.to(tl.int64) * stride_gs + pid_b * stride_gb
    # The tile goes to G[m, n] where m <= n and its mirror to G[n, m] where m < n. Off the
    # diagonal (tile_m < tile_n) every m < every n, so both stores are whole; on a diagonal
    # tile they split it into disjoint halves, both taken from the upper one: G is exactly
    # symmetric and no element is written twice.
    keep = mask_m[:, None] & mask_n[None, :]
    upper = keep & (offs_m[:, None] <= offs_n[None, :])
    lower = keep & (offs_m[:, None] < offs_n[None, :])
    tl.store(g_base + offs_m[:, None] * stride_gr + offs_n[None, :] * stride_gc, val, mask=upper)
    tl.store(g_base + offs_n[None, :] * stride_gr + offs_m[:, None] * stride_gc, val, mask=lower)


@triton.jit
def _gram_bwd_kernel(
    dg_ptr,  # [B, C, C]
    x_ptr,  # [B, C, L]
    out_ptr,  # [B, C, L]
    C, L,
    stride_gb, stride_gr, stride_gc,  # dG: [B, C, C]
    stride_xb, stride_xc, stride_xl,  # x: [B, C, L]
    stride_ob, stride_oc, stride_ol,  # out: [B, C, L]
    scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ACC_DTYPE: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    # Row tiles vary fastest so programs that run together share the same F columns.
    n_tiles_m = tl.cdiv(C, BLOCK_M)
    pid_m = pid % n_tiles_m
    pid_n = pid // n_tiles_m

    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    mask_m = offs_m < C
    mask_n = offs_n < L
    ar_k = tl.arange(0, BLOCK_K).to(tl.int64)

    dg_base = dg_ptr + pid_b * stride_gb
    x_base = x_ptr + pid_b * stride_xb
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k0 in range(0, C, BLOCK_K):
        offs_k = k0 + ar_k
        mask_k = offs_k < C
        mask_mk = mask_m[:, None] & mask_k[None, :]
        g = tl.load(dg_base + offs_m[:, None] * stride_gr + offs_k[None, :] * stride_gc,
                    mask=mask_mk, other=0.0)  # dG[m, k]
        gt = tl.load(dg_base + offs_k[None, :] * stride_gr + offs_m[:, None] * stride_gc,
                     mask=mask_mk, other=0.0)  # dGᵀ[m, k] = dG[k, m]
        f = tl.load(x_base + offs_k[:, None] * stride_xc + offs_n[None, :] * stride_xl,
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        sym = g.to(ACC_DTYPE) + gt.to(ACC_DTYPE)
        if DOT_FP32:  # interpreter bfloat16 (see _precision): sym stays float32
            f = f.to(tl.float32)
        else:
            sym = sym.to(f.dtype)
        acc = tl.dot(sym, f, acc, input_precision="ieee")

    acc = acc * scale
    tl.store(out_ptr + pid_b * stride_ob + offs_m[:, None] * stride_oc + offs_n[None, :] * stride_ol,
             acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _n_splits(tiles: int, l: int, block_l: int) -> tuple[int, int]:
    """(splits, columns of L per split), the columns a multiple of block_l."""
    splits = 1
    if tiles < _TARGET_PROGRAMS and l >= 2 * _MIN_SPLIT_L:
        splits = min(triton.cdiv(_TARGET_PROGRAMS, tiles), l // _MIN_SPLIT_L)
    per_split = triton.cdiv(triton.cdiv(l, splits), block_l) * block_l
    return triton.cdiv(l, per_split), per_split


def gram_forward(x: torch.Tensor, scale: float) -> torch.Tensor:
    """G = scale · F Fᵀ for x [B, C, L] (any strides); returns a contiguous [B, C, C] in x's dtype."""
    _check(x, "x")
    b, c, l = x.shape
    g = torch.empty((b, c, c), dtype=x.dtype, device=x.device)
    if g.numel() == 0:
        return g
    if l == 0:
        return g.zero_()
    acc, dot_fp32, scale_in_kernel = _precision(x.dtype)
    block_c, block_l = _block_c(c), _block_l(l, x.dtype)
    n_t = triton.cdiv(c, block_c)
    n_tri = n_t * (n_t + 1) // 2
    splits, per_split = _n_splits(n_tri * b, l, block_l)
    # One split writes G directly; several write accumulator-precision partials, summed below.
    if splits == 1 and not dot_fp32:
        dst, dst_strides = g, (0,) + g.stride()
    else:
        dst = torch.empty((splits, b, c, c), device=x.device,
                          dtype=torch.float64 if acc == tl.float64 else torch.float32)
        dst_strides = dst.stride()
    _gram_fwd_kernel[(n_tri, b, splits)](
        x, dst, c, l, per_split,
        *x.stride(), *dst_strides, float(scale) if scale_in_kernel else 1.0,
        BLOCK_C=block_c, BLOCK_L=block_l, ACC_DTYPE=acc, DOT_FP32=dot_fp32,
    )
    if dst is not g:
        g.copy_(dst.sum(dim=0))  # a fixed order over the splits: deterministic
    if not scale_in_kernel:
        g.mul_(scale)
    return g


def gram_backward(grad: torch.Tensor, x: torch.Tensor, scale: float, out: torch.Tensor) -> None:
    """out = scale · (grad + gradᵀ) F through out's strides; grad [B, C, C] (any strides, 0
    included: G.sum()'s expanded gradient is read in place), x and out [B, C, L]."""
    _check(x, "x")
    _check(grad, "grad")
    b, c, l = x.shape
    if tuple(grad.shape) != (b, c, c) or tuple(out.shape) != (b, c, l):
        raise ValueError(f"gram_backward (triton): grad must be [{b}, {c}, {c}] and out [{b}, {c}, {l}] "
                         f"for x {list(x.shape)}, got {list(grad.shape)} and {list(out.shape)}")
    if out.dtype != x.dtype or out.device != x.device or grad.device != x.device:
        raise ValueError(f"gram_backward (triton): out must match x's dtype and device and grad be on "
                         f"x's device, got x {x.dtype} on {x.device}, out {out.dtype} on {out.device}, "
                         f"grad on {grad.device}")
    if out.numel() == 0:
        return
    acc, dot_fp32, scale_in_kernel = _precision(x.dtype)
    block_m = _block_c(c)
    block_k = min(block_m, 32)
    block_n = _block_l(l, torch.float16)  # L is the GEMM's N: 64 wide unless L is tiny
    dst = out if not dot_fp32 else torch.empty_like(out, dtype=torch.float32)
    grid = (triton.cdiv(c, block_m) * triton.cdiv(l, block_n), b)
    _gram_bwd_kernel[grid](
        grad, x, dst, c, l,
        *grad.stride(), *x.stride(), *dst.stride(), float(scale) if scale_in_kernel else 1.0,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, ACC_DTYPE=acc, DOT_FP32=dot_fp32,
    )
    if dst is not out:
        out.copy_(dst)
    if not scale_in_kernel:
        out.mul_(scale)
