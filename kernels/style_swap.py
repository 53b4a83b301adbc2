"""Style swap in Triton: patch matching (a running argmax over score tiles) and reconstruction.

Maths (Chen & Schmidt, "Fast Patch-based Style Transfer of Arbitrary Style", NIPS workshop
2016), with k = patch_size and s = stride. A patch is the C × k × k block at (y, x), flattened
to K = C·k² values. Content [B, C, Hc, Wc] has patches p = (i, j) at (i·s, j·s), i < nh =
(Hc − k)//s + 1, j < nw = (Wc − k)//s + 1; style [Bs, C, Hs, Ws] (Bs = 1: shared by the batch,
Bs = B: sample b against style b) has patches q = qi·mw + qj at (qi·s, qj·s), qi < mh, qj < mw.

    inv[q]      = 1 / (‖style patch q‖₂ + eps)            (0 for an all-zero patch: no NaN)
    score(p, q) = <content patch p, style patch q> · inv[q]
    index[p]    = the lowest q among those maximising score(p, q)

    out[b, c, y, x] = (1 / n(y, x)) Σ_{p covering (y, x)} style[bs, c, qi·s + y − i·s, qj·s + x − j·s]

with q = index[b, p] and n(y, x) the number of content patches covering (y, x); out = 0 where
n(y, x) = 0 (s > k leaves gaps, and the last (H − k) % s rows/columns are never covered).

Kernels:
  * _inv_norm_kernel: one program per (block of BLOCK_Q style patches, style sample); it walks
    K in BLOCK_K steps, squares and accumulates lane-wise, reduces once at the end and writes
    inv into a float32 (float64 for float64) buffer [Bs, mh·mw].
  * _match_kernel: one program per (block of BLOCK_M content patches, sample, split). For every
    tile of BLOCK_N style patches (visited in increasing q) a score tile [BLOCK_M, BLOCK_N] is
    built by tl.dot over K: the operands are gathered straight from the strided feature maps
    (im2col in registers). K is enumerated as kk = (dy·k + dx)·C + c, channel innermost, and
    decoded once per step into one offset vector per map, so a small C (C = 8) still fills
    whole BLOCK_K steps and channels_last maps are read along their contiguous axis. The tile
    is scaled by inv, lanes past the style grid are set to −inf, and the tile's best is folded
    into a running (best score, best index) per content patch. The n_content × n_style score
    matrix never exists.
  * _reconstruct_kernel: one program per (block of BLOCK_P output pixels, block of BLOCK_C
    channels, sample). It loops over the k² offsets (dy, dx) of a pixel inside a patch: the
    patch origin (y − dy, x − dx) must be >= 0, divisible by s and inside the nh × nw grid; the
    chosen index is loaded once per pixel and reused by all BLOCK_C channels. Sums and counts
    stay in registers: deterministic, no atomics.

Ties: within a tile, max over the style axis, then the minimum index among the lanes equal to
that max (other lanes hold a large sentinel); across tiles a strict > keeps the earlier tile.
Duplicate style patches get bit-equal scores (every score is the same dot over the same K
steps times a bit-equal inv), so ties go to the lowest q, as torch.argmax on the conv
reference. When the GPU would be underfilled (few content blocks, many style tiles) the style
axis is split: each split writes its (best score, best index) and torch picks, per content
patch, the first split holding the maximum (argmax returns the first): same result as one
pass, deterministic, no atomics.

Bit-equal duplicates need a dot whose rounding of a score does not depend on where its style
patch sits in the tile. Compiled, the IEEE fp32 tl.dot is one FMA chain per score in K order.
The interpreter's tl.dot is np.matmul, whose BLAS may not be: OpenBLAS' Haswell sgemm (picked
on a Zen 5 EPYC) rounds columns 8..55 of a 64-wide tile differently from the others, which
turned exact duplicates into 1-ulp-apart scores and lowest-index ties into wrong ones. So under
TRITON_INTERPRET=1 (EXACT_DOT) each K step is an elementwise product and a tl.sum over K
(NumPy sums it in K order for every score alike), whatever BLAS NumPy has. Patches whose
scores are only mathematically equal (positive multiples of each other, eps = 0) may round
apart by a few ulps; the README's style-swap section states the bound.

Layout: content, style and indices may have any strides (contiguous, channels_last, sliced);
the strides go to the kernels, nothing is copied. A style batch of 1 gets batch stride 0.
Indices are written int64 [B, nh, nw] contiguous; the reconstruction contiguous
[B, C, out_h, out_w] in the style's dtype.

Precision: float32 operands use tl.dot(input_precision="ieee"): TF32 keeps 10 mantissa bits
and would flip argmaxes. float16/bfloat16 operands are widened to float32 when loaded (exact)
and also go through the ieee dot: exact matching matters more than tensor cores here. The
norms accumulate in float32 with correctly rounded sqrt and division (sqrt_rn, div_rn); float64
(only the interpreter runs it) accumulates everything in float64, and eps then reaches the
kernel through a one-element float64 tensor (a Python float argument would be rounded to
float32). The reconstruction sums in float32 (float64) and rounds once to the output dtype.

Limitations: no autotuning (block sizes are a small heuristic by sizes), which keeps it usable
under TRITON_INTERPRET=1 (where the match's product-and-sum dot takes about 1.2-1.4x the
np.matmul time on the test shapes). The match is the plain patch GEMM (2·C·k² flops per pair);
it does not use the pixel-Gram/diagonal-sum trick of the C++ CPU kernel (k² fewer flops), nor
tensor cores for float16/bfloat16. Content tiles are reloaded for every style tile (from cache). float64 is
meant for the interpreter. Under the interpreter bfloat16 results take a float32 detour, see
_precision.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Split of the style axis in the match: aim for about this many programs (two waves of an
# H100's 132 SMs), never giving a split fewer than this many style tiles.
_TARGET_PROGRAMS = 264
_MIN_SPLIT_TILES = 8


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _precision(dtype: torch.dtype) -> tuple[tl.dtype, torch.dtype, bool]:
    """(accumulator dtype, its torch dtype, interpreter bfloat16 store workaround).

    bfloat16 under TRITON_INTERPRET=1: the interpreter's float32 -> bfloat16 cast truncates,
    so the reconstruction stores float32 and torch rounds to bfloat16 (round-to-nearest-even,
    as the GPU's cast does). Loads are always widened to float32 before the dot, so the
    interpreter's bfloat16 tl.dot (triton-lang/triton#11584) is never reached. Compiled
    kernels never take the detour.
    """
    if dtype == torch.float64:
        return tl.float64, torch.float64, False
    return tl.float32, torch.float32, dtype == torch.bfloat16 and _interpreting()


def _grid(size: int, k: int, s: int) -> int:
    return (size - k) // s + 1


def _block(n: int, cap: int) -> int:
    # tl.dot needs every dimension >= 16.
    return max(16, min(cap, triton.next_power_of_2(n)))


def _require(ok: bool, what: str) -> None:
    # Explicit checks (not asserts, which python -O strips): these ops can be called directly.
    if not ok:
        raise ValueError(f"fastnst::style_swap (triton): {what}")


def _check(x: torch.Tensor, name: str) -> None:
    _require(x.dim() == 4, f"{name} must be [B, C, H, W], got {list(x.shape)}")
    _require(x.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64),
             f"{name} must be float32, float16, bfloat16 or float64, got {x.dtype}")


@triton.jit
def _precise_div(a, b, IS_FP64: tl.constexpr):
    # Triton's fp32 "/" is not correctly rounded on the GPU; div_rn is (and takes fp32 only).
    if IS_FP64:
        return a / b
    else:
        return tl.div_rn(a, b)


@triton.jit
def _inv_norm_kernel(
    s_ptr,  # style [Bs, C, Hs, Ws]
    inv_ptr,  # [Bs, n_style], accumulator dtype
    eps_ptr,  # [1], accumulator dtype
    C, K, N_STYLE, MW, k, s,
    stride_sb, stride_sc, stride_sh, stride_sw,
    stride_ib,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_q = (pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)
    mask_q = offs_q < N_STYLE
    qoff = (offs_q // MW) * s * stride_sh + (offs_q % MW) * s * stride_sw  # patch origins
    base = s_ptr + pid_b * stride_sb
    ar_k = tl.arange(0, BLOCK_K)

    # Lane-wise accumulation and a single reduction at the end: every patch sums its squares
    # in the same order, so equal patches get bit-equal norms.
    acc = tl.zeros((BLOCK_Q, BLOCK_K), dtype=ACC_DTYPE)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + ar_k
        mask_k = kk < K
        c = kk % C
        r = kk // C
        koff = c.to(tl.int64) * stride_sc + (r // k).to(tl.int64) * stride_sh + (r % k).to(tl.int64) * stride_sw
        v = tl.load(base + qoff[:, None] + koff[None, :], mask=mask_q[:, None] & mask_k[None, :],
                    other=0.0).to(ACC_DTYPE)
        acc += v * v
    sq = tl.sum(acc, axis=1)
    eps = tl.load(eps_ptr)
    if ACC_DTYPE == tl.float64:
        norm = tl.sqrt(sq)
    else:
        norm = tl.sqrt_rn(sq)
    # An all-zero patch scores 0 whatever eps is (eps = 0 would give 0 · inf = NaN).
    nonzero = sq > 0
    one = tl.full((BLOCK_Q,), 1.0, dtype=ACC_DTYPE)
    inv = _precise_div(one, tl.where(nonzero, norm + eps, 1.0), ACC_DTYPE == tl.float64)
    inv = tl.where(nonzero, inv, 0.0)
    tl.store(inv_ptr + pid_b * stride_ib + offs_q, inv, mask=mask_q)


@triton.jit
def _match_kernel(
    c_ptr,  # content [B, C, Hc, Wc]
    s_ptr,  # style [Bs, C, Hs, Ws]
    inv_ptr,  # [Bs, n_style]
    idx_ptr,  # int64 [S, B, n_content]
    score_ptr,  # [S, B, n_content] (SPLIT only)
    C, K, N_CONTENT, NW, N_STYLE, MW, k, s, Q_PER_SPLIT,
    stride_cb, stride_cc, stride_ch, stride_cw,
    stride_sb, stride_sc, stride_sh, stride_sw,
    stride_ib,
    stride_os, stride_ob,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ACC_DTYPE: tl.constexpr, SPLIT: tl.constexpr, EXACT_DOT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)

    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    mask_m = offs_m < N_CONTENT
    moff = (offs_m // NW) * s * stride_ch + (offs_m % NW) * s * stride_cw  # content patch origins
    c_base = c_ptr + pid_b * stride_cb
    s_base = s_ptr + pid_b * stride_sb  # stride_sb = 0 for a shared style
    inv_base = inv_ptr + pid_b * stride_ib
    ar_k = tl.arange(0, BLOCK_K)
    ar_n = tl.arange(0, BLOCK_N)

    best = tl.full((BLOCK_M,), float("-inf"), dtype=ACC_DTYPE)
    best_idx = tl.zeros((BLOCK_M,), dtype=tl.int32)
    q_begin = pid_s * Q_PER_SPLIT
    q_end = tl.minimum(q_begin + Q_PER_SPLIT, N_STYLE)
    for n0 in range(q_begin, q_end, BLOCK_N):
        offs_n = n0 + ar_n
        mask_n = offs_n < q_end
        offs_n64 = offs_n.to(tl.int64)
        noff = (offs_n64 // MW) * s * stride_sh + (offs_n64 % MW) * s * stride_sw  # style origins
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
        for k0 in range(0, K, BLOCK_K):
            # kk = (dy·k + dx)·C + c: the same decoding for both maps, channel innermost.
            kk = k0 + ar_k
            mask_k = kk < K
            c = (kk % C).to(tl.int64)
            r = kk // C
            dy = (r // k).to(tl.int64)
            dx = (r % k).to(tl.int64)
            kc = c * stride_cc + dy * stride_ch + dx * stride_cw
            ks = c * stride_sc + dy * stride_sh + dx * stride_sw
            a = tl.load(c_base + moff[:, None] + kc[None, :], mask=mask_m[:, None] & mask_k[None, :],
                        other=0.0).to(ACC_DTYPE)
            b = tl.load(s_base + ks[:, None] + noff[None, :], mask=mask_k[:, None] & mask_n[None, :],
                        other=0.0).to(ACC_DTYPE)
            if EXACT_DOT:
                # Interpreter: the same rounding for every score, whatever BLAS NumPy uses
                # (np.matmul's may depend on the column: see "Ties" above).
                acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
            else:
                acc = tl.dot(a, b, acc, input_precision="ieee")
        inv = tl.load(inv_base + offs_n64, mask=mask_n, other=0.0)
        score = tl.where(mask_n[None, :], acc * inv[None, :], float("-inf"))
        # Lowest index among the tile's maxima, then strict > against the earlier tiles.
        tile_best = tl.max(score, axis=1)
        cand = tl.where(score == tile_best[:, None], offs_n[None, :], 2147483647)
        tile_idx = tl.min(cand, axis=1)
        better = tile_best > best
        best = tl.where(better, tile_best, best)
        best_idx = tl.where(better, tile_idx, best_idx)

    out = pid_s.to(tl.int64) * stride_os + pid_b * stride_ob + offs_m
    tl.store(idx_ptr + out, best_idx.to(tl.int64), mask=mask_m)
    if SPLIT:
        tl.store(score_ptr + out, best, mask=mask_m)


@triton.jit
def _reconstruct_kernel(
    s_ptr,  # style [Bs, C, Hs, Ws]
    idx_ptr,  # int64 [B, nh, nw]
    out_ptr,  # [B, C, H, W]
    C, H, W, NH, NW, MW, N_STYLE, k, s,
    stride_sb, stride_sc, stride_sh, stride_sw,
    stride_ib, stride_ih, stride_iw,
    stride_ob, stride_oc, stride_oh, stride_ow,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < H * W
    y = offs_p // W
    x = offs_p % W
    offs_c = (pid_c * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask_c = offs_c < C
    s_base = s_ptr + pid_b * stride_sb + offs_c[:, None] * stride_sc  # stride_sb = 0: shared style
    i_base = idx_ptr + pid_b * stride_ib

    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC_DTYPE)
    cnt = tl.zeros((BLOCK_P,), dtype=tl.int32)
    for dy in range(0, k):
        # (y, x) sits at (dy, dx) of the patch with origin (y - dy, x - dx), if that patch exists.
        oy = tl.maximum(y - dy, 0)
        ok_y = (y >= dy) & (oy % s == 0) & (oy // s < NH)
        iy = (oy // s).to(tl.int64)
        for dx in range(0, k):
            ox = tl.maximum(x - dx, 0)
            ok = mask_p & ok_y & (x >= dx) & (ox % s == 0) & (ox // s < NW)
            ix = (ox // s).to(tl.int64)
            q = tl.load(i_base + iy * stride_ih + ix * stride_iw, mask=ok, other=0)
            # An index outside the style's patches is never read; it poisons the pixel with NaN
            # (as the CUDA kernel does: a host-side check would need a device sync).
            bad = ok & ((q < 0) | (q >= N_STYLE))
            q = tl.where(bad, 0, q)
            soff = ((q // MW) * s + dy) * stride_sh + ((q % MW) * s + dx) * stride_sw
            v = tl.load(s_base + soff[None, :], mask=mask_c[:, None] & ok[None, :] & ~bad[None, :], other=0.0)
            v = tl.where(bad[None, :], float("nan"), v.to(ACC_DTYPE))
            acc += v.to(ACC_DTYPE)
            cnt += ok.to(tl.int32)

    n = tl.maximum(cnt, 1).to(ACC_DTYPE)
    res = _precise_div(acc, n[None, :], ACC_DTYPE == tl.float64)
    res = tl.where(cnt[None, :] > 0, res, 0.0)
    out = (out_ptr + pid_b * stride_ob + offs_c[:, None] * stride_oc
           + (y * stride_oh + x * stride_ow).to(tl.int64)[None, :])
    tl.store(out, res.to(out_ptr.dtype.element_ty), mask=mask_c[:, None] & mask_p[None, :])


def _n_splits(programs: int, n_style: int, block_n: int) -> tuple[int, int]:
    """(splits, style patches per split), the patches a multiple of block_n."""
    tiles = triton.cdiv(n_style, block_n)
    splits = 1
    if programs < _TARGET_PROGRAMS and tiles >= 2 * _MIN_SPLIT_TILES:
        splits = min(triton.cdiv(_TARGET_PROGRAMS, programs), tiles // _MIN_SPLIT_TILES)
    per_split = triton.cdiv(tiles, splits) * block_n
    return triton.cdiv(n_style, per_split), per_split


def _inverse_norms(style: torch.Tensor, k: int, s: int, eps: float, acc: tl.dtype,
                   acc_t: torch.dtype) -> torch.Tensor:
    bs, c, hs, ws = style.shape
    mw = _grid(ws, k, s)
    n_style = _grid(hs, k, s) * mw
    inv = torch.empty((bs, n_style), dtype=acc_t, device=style.device)
    eps_t = torch.full((1,), eps, dtype=acc_t, device=style.device)
    kk = c * k * k
    block_q, block_k = _block(n_style, 64), _block(kk, 32)
    _inv_norm_kernel[(triton.cdiv(n_style, block_q), bs)](
        style, inv, eps_t, c, kk, n_style, mw, k, s, *style.stride(), inv.stride(0),
        BLOCK_Q=block_q, BLOCK_K=block_k, ACC_DTYPE=acc,
    )
    return inv


def style_swap_match(content: torch.Tensor, style: torch.Tensor, patch_size: int, stride: int,
                     eps: float) -> torch.Tensor:
    """For every content patch, the lowest style patch index maximising the normalised
    cross-correlation; content [B, C, Hc, Wc], style [1 or B, C, Hs, Ws] (any strides).
    Returns int64 [B, nh, nw], contiguous."""
    _check(content, "content")
    _check(style, "style")
    b, c, hc, wc = content.shape
    bs, _, hs, ws = style.shape
    k, s = int(patch_size), int(stride)
    _require(style.shape[1] == c and bs in (1, b) and style.dtype == content.dtype,
             f"style {list(style.shape)} {style.dtype} must match content {list(content.shape)} "
             f"{content.dtype} in channels and dtype, with batch 1 or {b}")
    _require(k >= 1 and s >= 1 and k <= min(hc, wc, hs, ws),
             f"patch_size {k} and stride {s} must be >= 1, the patch no larger than either map")
    _require(eps == eps and eps >= 0, f"eps must be >= 0, got {eps}")
    nh, nw = _grid(hc, k, s), _grid(wc, k, s)
    mw = _grid(ws, k, s)
    n_content, n_style = nh * nw, _grid(hs, k, s) * mw
    idx = torch.empty((b, nh, nw), dtype=torch.int64, device=content.device)
    if idx.numel() == 0:
        return idx
    acc, acc_t, _ = _precision(content.dtype)
    inv = _inverse_norms(style, k, s, float(eps), acc, acc_t)

    kk = c * k * k
    # 64 x 64 score tiles, K in steps of 16: the gathered operands carry int64 offsets, and a
    # K step of 32 makes the float32 kernel spill on sm_90 (255 registers), 16 does not (197).
    block_m, block_n, block_k = _block(n_content, 64), _block(n_style, 64), 16
    n_blocks = triton.cdiv(n_content, block_m)
    splits, per_split = _n_splits(n_blocks * b, n_style, block_n)
    if splits == 1:
        dst, scores = idx.view(1, b, n_content), idx  # scores: unused placeholder
    else:
        dst = torch.empty((splits, b, n_content), dtype=torch.int64, device=content.device)
        scores = torch.empty((splits, b, n_content), dtype=acc_t, device=content.device)
    sb = style.stride(0) if bs > 1 else 0
    ib = inv.stride(0) if bs > 1 else 0
    _match_kernel[(n_blocks, b, splits)](
        content, style, inv, dst, scores,
        c, kk, n_content, nw, n_style, mw, k, s, per_split,
        *content.stride(), sb, *style.stride()[1:], ib, dst.stride(0), dst.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, ACC_DTYPE=acc, SPLIT=splits > 1,
        EXACT_DOT=_interpreting(),
    )
    if splits > 1:
        # argmax returns the first maximum: the lowest split, which holds the lowest indices.
        first = scores.argmax(dim=0, keepdim=True)
        idx.view(1, b, n_content).copy_(dst.gather(0, first))
    return idx


def style_swap_reconstruct(style: torch.Tensor, indices: torch.Tensor, patch_size: int, stride: int,
                           out_h: int, out_w: int) -> torch.Tensor:
    """Paste the style patches ``indices`` [B, nh, nw] names (any strides) and average the
    overlaps; returns a contiguous [B, C, out_h, out_w] in the style's dtype, 0 where no patch
    covers a pixel."""
    _check(style, "style")
    _require(indices.dim() == 3 and indices.dtype == torch.int64,
             f"indices must be int64 [B, nh, nw], got {indices.dtype} {list(indices.shape)}")
    b = indices.shape[0]
    bs, c, hs, ws = style.shape
    k, s, h, w = int(patch_size), int(stride), int(out_h), int(out_w)
    _require(bs in (1, b) and k >= 1 and s >= 1 and k <= min(h, w, hs, ws),
             f"style batch {bs} must be 1 or {b}; patch_size {k} and stride {s} >= 1, the patch "
             f"no larger than the style or the output ({h} x {w})")
    nh, nw = _grid(h, k, s), _grid(w, k, s)
    _require(tuple(indices.shape[1:]) == (nh, nw), f"indices must be [B, {nh}, {nw}], got {list(indices.shape)}")
    out = torch.empty((b, c, h, w), dtype=style.dtype, device=style.device)
    if out.numel() == 0:
        return out
    acc, acc_t, bf16_detour = _precision(style.dtype)
    dst = torch.empty_like(out, dtype=torch.float32) if bf16_detour else out
    block_p, block_c = _block(h * w, 128), _block(c, 32)
    sb = style.stride(0) if bs > 1 else 0
    grid = (triton.cdiv(h * w, block_p), triton.cdiv(c, block_c), b)
    _reconstruct_kernel[grid](
        style, indices, dst, c, h, w, nh, nw, _grid(ws, k, s), _grid(hs, k, s) * _grid(ws, k, s), k, s,
        sb, *style.stride()[1:], *indices.stride(), *dst.stride(),
        BLOCK_P=block_p, BLOCK_C=block_c, ACC_DTYPE=acc,
    )
    if dst is not out:
        out.copy_(dst)
    return out
