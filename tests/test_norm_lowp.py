"""float16 / bfloat16 instance norm on the CPU kernels (csrc/cpu/norm.cpp).

16-bit inputs are widened exactly to fp32, computed as float32 is, and rounded to nearest even
once, at the store. So the tests check, for both layouts the kernels know (L contiguous, and
channels innermost = channels_last):

* bit for bit: the 16-bit op equals the float32 op on the widened inputs, rounded (the same
  kernels, up to loads and stores);
* against float64: within one 16-bit ulp of the float64 reference on the same (16-bit) inputs,
  plus the fp32 error of the terms that cancel in the result, and never worse than plain
  PyTorch at the same precision;
* the rounding itself on chosen values (ties, subnormals, overflow, NaN), with and without the
  AVX512-BF16 instruction (FASTNST_AVX512BF16=0 in a child process);
* that a call returns x's dtype and makes no conversion copies (aten::copy_ / _to_copy) for the
  fp32 weight and bias of a bf16 activation (the bf16 autocast case).
"""

import math
import os
import subprocess
import sys

import pytest
import torch

import fastnst
from fastnst import reference
from fastnst.engine.precision import cpu_flags

from conftest import kernel_backends

pytestmark = pytest.mark.skipif("cpu" not in kernel_backends("instance_norm"),
                                reason="needs fastnst's compiled CPU kernels")

DTYPES = [torch.bfloat16, torch.float16]
LAYOUTS = ["contiguous", "channels_last"]
SHAPES = [
    (2, 3, 7, 9),      # L = 63: a masked row tail (63 = 3 * 16 + 15); C = 3 < 16 channels
    (3, 5, 33, 31),    # L = 1023: two 512-element statistics blocks, the second with a tail
    (2, 40, 16, 16),   # B * C = 80 rows: several per thread chunk; C = 40 = 2 * 16 + 8
    (1, 70, 9, 8),     # C = 70: the 64-channel loop and a 6-channel tail
    (2, 64, 24, 24),   # C a multiple of 64, L a multiple of 16: no tails at all
]
AFFINE = ["none", "per_channel", "per_sample"]  # weight/bias None, [C], [B, C]

# The 16-bit rows twin the float32 AVX-512 kernels only on CPUs with AVX-512 F/BW/VL; elsewhere
# both run portable loops whose sums are ordered differently (then only the reference bounds hold).
AVX512_LOWP = {"avx512f", "avx512bw", "avx512vl"} <= cpu_flags()


def _op():
    return torch.ops.fastnst.instance_norm


def _bop():
    return torch.ops.fastnst.instance_norm_backward


def _layout(x, layout):
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _inputs(shape, dtype, layout, affine, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, c = shape[0], shape[1]
    x = _layout((torch.randn(shape, generator=g) * 3 + 1).to(dtype), layout)
    grad = _layout(torch.randn(shape, generator=g).to(dtype), layout)
    wshape = {"none": None, "per_channel": (c,), "per_sample": (b, c)}[affine]
    w = None if wshape is None else torch.rand(wshape, generator=g) + 0.5
    bias = None if wshape is None else torch.randn(wshape, generator=g)
    return x, grad, w, bias


def _same_layout(a, b):
    """Equal strides wherever the size is above 1 (a size-1 dim's stride is arbitrary)."""
    return a.shape == b.shape and all(sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape) if n > 1)


def _ulp(v, dtype):
    """One ulp of dtype at |v| (subnormal spacing below the smallest normal)."""
    fi = torch.finfo(dtype)
    a = v.abs().clamp_min(fi.tiny)
    return torch.exp2(torch.floor(torch.log2(a))) * fi.eps


# ---- bit for bit against the float32 kernels ------------------------------------------------
def _twin_check(shape, dtype, layout, act, affine):
    op, bop = _op(), _bop()
    x, grad, w, b = _inputs(shape, dtype, layout, affine)
    x3, g3 = x.flatten(2), grad.flatten(2)
    y, mean, rstd = op(x3, w, b, 1e-5, False, 0.0, act)
    assert y.dtype == dtype and _same_layout(y, x3)
    yf, mf, rf = op(x3.float(), w, b, 1e-5, False, 0.0, act)
    assert torch.equal(mean, mf) and torch.equal(rstd, rf)  # statistics: fp32 either way
    assert torch.equal(y, yf.to(dtype))
    dx, dw, db = bop(g3, x3, y, w, mean, rstd, False, 0.0, act, True)
    assert dx.dtype == dtype and dw.dtype == torch.float32
    # Without ReLU the 16-bit rows run the ReLU kernels with an all-true mask (float32 rows keep
    # their compiler-vectorised loop), so the float32 twin is the ReLU backward with y = 1 (in
    # the channels layout, where both run the same loop, a mask of ones changes nothing).
    mask = y.float() if act else torch.ones_like(y, dtype=torch.float32)
    dxf, dwf, dbf = bop(g3.float(), x3.float(), mask, w, mf, rf, False, 0.0, 1, True)
    assert torch.equal(dx, dxf.to(dtype))
    assert torch.equal(dw, dwf) and torch.equal(db, dbf)


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("act", [0, 1], ids=["plain", "relu"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_float32_kernel_bit_for_bit(dtype, shape, layout, act, affine):
    if layout == "contiguous" and not AVX512_LOWP:
        pytest.skip("16-bit rows twin the float32 kernels on AVX-512 BW/VL CPUs only")
    _twin_check(shape, dtype, layout, act, affine)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_rows_stream_bit_for_bit(dtype):
    # 8.4M elements: outputs past the streaming threshold (16 MiB forward, 4 MiB backward), rows
    # of odd length 1025^2, so most rows start unaligned (the masked head before the streaming
    # stores).
    if not AVX512_LOWP:
        pytest.skip("16-bit rows twin the float32 kernels on AVX-512 BW/VL CPUs only")
    _twin_check((2, 4, 1025, 1025), dtype, "contiguous", 1, "per_channel")


# ---- against the float64 reference ------------------------------------------------------------
def _bound_check(got, want, terms, dtype, what):
    # RNE is within half an ulp of the fp32 value, and that is within 2^-14 of the magnitude of
    # the terms making it: the fp32 sums of the statistics (blocks of <= 512 terms, so at worst
    # 512 * 2^-24 = 2^-15 relative, flushed to fp64) and a few fp32 operations in the map (2^-24
    # each). So at most one ulp of the reference where that is below half an ulp, plus 2^-14
    # of the terms where it is not (results near zero from cancelling terms).
    err = (got.double() - want).abs()
    tol = _ulp(want, dtype) + 2.0 ** -14 * terms
    worst = (err / tol).max().item()
    assert worst <= 1.0, f"{what}: error {worst:.3g} x the bound"


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("act", [None, "relu"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_parity_with_float64_reference(dtype, shape, layout, act, affine):
    x, grad, w, b = _inputs(shape, dtype, layout, affine)
    xg = x.detach().requires_grad_()
    wg = None if w is None else w.detach().requires_grad_()
    bg = None if b is None else b.detach().requires_grad_()
    y = fastnst.instance_norm(xg, wg, bg, eps=1e-5, activation=act)
    assert y.dtype == dtype and _same_layout(y, x)
    y.backward(grad)
    assert xg.grad.dtype == dtype and _same_layout(xg.grad, x)

    # The reference on the same 16-bit values, in float64.
    x64 = x.double().requires_grad_()
    w64 = None if w is None else w.double().requires_grad_()
    b64 = None if b is None else b.double().requires_grad_()
    pre = reference.instance_norm(x64, w64, b64, 1e-5, None)
    view = (shape[0], shape[1], 1, 1)
    flat = x64.detach().flatten(2)
    mu = flat.mean(2).view(view)
    rstd = 1 / torch.sqrt((flat - mu.flatten(2)).square().mean(2).view(view) + 1e-5)
    xhat = (x64.detach() - mu) * rstd
    wv = torch.ones(view, dtype=torch.float64) if w is None else w.double().reshape(-1, shape[1], 1, 1)
    bv = torch.zeros(view, dtype=torch.float64) if b is None else b.double().reshape(-1, shape[1], 1, 1)
    # y = w xhat + b; an error in the mean or rstd moves xhat by that error relative to 1 (the
    # row's spread) or to xhat.
    fwd_terms = wv.abs() * (xhat.abs() + 1) + bv.abs()
    if act == "relu":
        want = torch.relu(pre.detach())
        _bound_check(y.detach(), want, fwd_terms, dtype, "y")
        # The kernel's ReLU derivative is its mask y > 0, recomputed from the rounded output;
        # the reference takes the same mask (where y rounds to 0 or the fp32 value crossed 0,
        # within the bound above, the float64 mask could differ and the derivative is moot).
        mask = (y.detach() > 0).double()
        out = pre * mask
    else:
        want = pre.detach()
        _bound_check(y.detach(), want, fwd_terms, dtype, "y")
        mask = torch.ones_like(pre)
        out = pre
    # Never worse than plain PyTorch's formulas at the same precision.
    plain = reference.instance_norm(x, None if w is None else w.to(dtype), None if b is None else b.to(dtype),
                                    1e-5, act)
    assert (y.detach().double() - want).abs().max() <= (plain.double() - want).abs().max()

    out.backward(grad.double())
    gm = grad.double() * mask
    n = shape[2] * shape[3]
    sum_gx = (gm * xhat).abs().flatten(2).sum(2).view(view)
    sum_g = gm.abs().flatten(2).sum(2).view(view)
    # dx = rstd w (g' - sum g' / L - xhat sum g' xhat / L): its terms, with xhat's own error.
    bwd_terms = rstd * wv.abs() * (gm.abs() + (xhat.abs() + 1) * sum_gx / n + sum_g / n)
    _bound_check(xg.grad, x64.grad, bwd_terms, dtype, "dx")
    # Weight gradients stay fp32: sums of L (and B) products, each within 2^-14 of their sizes.
    if w is not None:
        scale = sum_gx.flatten() if w.dim() == 2 else sum_gx.flatten(1).sum(0)
        assert ((wg.grad.double() - w64.grad).abs().flatten() <= 2.0 ** -12 * (scale.flatten() + 1e-30)).all()
        scale = sum_g.flatten() if b.dim() == 2 else sum_g.flatten(1).sum(0)
        assert ((bg.grad.double() - b64.grad).abs().flatten() <= 2.0 ** -12 * (scale.flatten() + 1e-30)).all()


# ---- the rounding -------------------------------------------------------------------------------
def _special_values(dtype):
    """fp32 values whose rounding to dtype is a corner: ties both ways, subnormals, the edge of
    overflow, infinities and NaN; plus random fp32 values with full mantissas."""
    if dtype == torch.bfloat16:
        lo, top = 2.0 ** -126, 3.3895313892515355e38  # smallest normal fp32, largest bf16
        v = [1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 1 + 2 ** -8 + 2 ** -20,   # ties, just past one
             1e-39, -1e-39, 5e-40, 1.4e-45, lo * (1 - 2 ** -9),                      # fp32 subnormals
             lo, top, 3.3961e38, 3.4e38, -3.4e38]                                   # overflow edge
    else:
        v = [1 + 2 ** -11, 1 + 3 * 2 ** -11, -(1 + 2 ** -11), 1 + 2 ** -11 + 2 ** -20,
             1e-6, -1e-6, 2.0 ** -25, 3 * 2.0 ** -26, 6.1e-5,                       # fp16 subnormals
             65504.0, 65519.0, 65520.0, -65520.0, 1e5]                               # overflow edge
    v += [math.inf, -math.inf, math.nan]
    g = torch.Generator().manual_seed(1)
    rnd = torch.randn(64 - len(v), generator=g, dtype=torch.float64) * 10
    return torch.cat([torch.tensor(v, dtype=torch.float32), rnd.float()])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act", [0, 1], ids=["plain", "relu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rounding_of_special_values(dtype, act, layout):
    # weight 0: y = bias exactly in fp32, so each output row is bias[b, c] rounded by the
    # kernel's store; it must be what torch's .to(dtype) gives (NaN: any NaN).
    vals = _special_values(dtype)
    b, c, h, w = 2, vals.numel() // 2, 5, 7  # L = 35: full vectors and a tail per row
    bias = vals.view(b, c)
    x = _layout(torch.randn(b, c, h, w).to(dtype), layout).flatten(2)
    y, _, _ = _op()(x, torch.zeros(b, c), bias, 1e-5, False, 0.0, act)
    expect = (torch.relu(bias) if act else bias).to(dtype)
    expect = torch.where(bias.isnan(), bias.to(dtype), expect)  # ReLU keeps NaN (as torch.relu)
    got = y.float()
    nan = expect.isnan()
    assert got[nan].isnan().all(), "NaN must stay NaN"
    assert torch.equal(got[~nan], expect[~nan].float()[:, None].expand(-1, h * w)), \
        (got[~nan][:, 0], expect[~nan])
    if dtype == torch.bfloat16:  # fp32 subnormals round to bf16 subnormals, not to zero
        assert (got[bias == 1e-39] != 0).all()


@pytest.mark.skipif(not AVX512_LOWP, reason="the integer bf16 rounding is the AVX-512 path without BF16")
def test_bfloat16_without_the_avx512bf16_instruction():
    # CPUs with AVX-512 but without AVX512-BF16 round in integer arithmetic; FASTNST_AVX512BF16=0
    # makes this CPU take that path too, in a child process (the switch is read once).
    env = dict(os.environ, FASTNST_AVX512BF16="0")
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
                        "-k", "bfloat16 and (special or bit_for_bit) and not without"],
                       cwd=os.path.dirname(here), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " passed" in r.stdout


# ---- dtype and copies -----------------------------------------------------------------------------
def _conversion_copies(prof):
    return [e.key for e in prof.key_averages() if e.key in ("aten::copy_", "aten::_to_copy")]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_no_conversion_copies(dtype, layout):
    # A bf16 activation with the module's fp32 weight and bias (what bf16 autocast hands the op):
    # the kernels read the parameters and the saved statistics in place.
    x, grad, w, b = _inputs((2, 16, 12, 10), dtype, layout, "per_channel")
    x = x.requires_grad_()
    w, b = w.requires_grad_(), b.requires_grad_()
    with torch.profiler.profile() as prof:
        y = fastnst.instance_norm(x, w, b, activation="relu")
    assert y.dtype == dtype and _same_layout(y, x)
    assert _conversion_copies(prof) == []
    with torch.profiler.profile() as prof:
        y.backward(grad)
    assert _conversion_copies(prof) == []
    assert x.grad.dtype == dtype and w.grad.dtype == torch.float32 and b.grad.dtype == torch.float32


def test_autocast_module_keeps_bfloat16():
    # nn.InstanceNorm2d + ReLU as accelerate() leaves it, fp32 parameters, a bf16 activation.
    norm = fastnst.nn.InstanceNormReLU(8, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = torch.randn(2, 8, 9, 7).to(torch.bfloat16)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        with torch.profiler.profile() as prof:
            y = norm(x)
    assert y.dtype == torch.bfloat16
    assert _conversion_copies(prof) == []
    with torch.inference_mode():
        yf = fastnst.instance_norm(x.float(), norm.weight, norm.bias, norm.eps, activation="relu")
    if AVX512_LOWP:  # the float32 kernel's result, rounded (elsewhere: test_parity_with_float64_reference)
        assert torch.equal(y, yf.to(torch.bfloat16))


@pytest.mark.parametrize("L", [35, 4096])  # a masked tail; full 32-wide vectors (+ streaming at size)
def test_fp32_fused_relu_keeps_nan_like_torch_relu(L):
    """The fp32 AVX-512 map computes ReLU as max(0, v): NaN in, NaN out (torch.relu's rule),
    also when the NaN comes from the affine parameters."""
    b, c = 2, 8
    x = torch.randn(b, c, L)
    bias = torch.zeros(b, c)
    bias[0, 3] = math.nan
    y, _, _ = _op()(x, torch.zeros(b, c), bias, 1e-5, False, 0.0, 1)
    assert y[0, 3].isnan().all()
    assert torch.equal(y[~bias.isnan()], torch.zeros(b * c - 1, L))
