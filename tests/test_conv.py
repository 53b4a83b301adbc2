"""fastnst::conv3x3_winograd (Winograd F(4x4, 3x3)) and fastnst.ops.conv.conv / conv3x3, which
route between it, fastnst::conv2d_direct (tests/test_conv_direct.py) and aten's convolution.

Parity is against float64 F.conv2d of the upsampled, reflection-padded input, with an error
bound relative to the convolution's own scale (sum |w| |x| over a window): Winograd's transforms
round ~10-30x more than a direct fp32 convolution, and the bound says how much.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

from fastnst import _ext
from fastnst.ops import conv

pytestmark = pytest.mark.skipif(not _ext.available(), reason="fastnst._C is not built")
CL = torch.channels_last
OP = torch.ops.fastnst.conv3x3_winograd


def _winograd_here() -> bool:
    return conv.route(torch.zeros(1, 16, 4, 4), torch.zeros(16, 16, 3, 3))[0] == "winograd"


needs_winograd = pytest.mark.skipif(not _winograd_here(), reason="the Winograd kernel needs the avx512 CPU path")


def _virtual(x: torch.Tensor, up: int, pad: int) -> torch.Tensor:
    if up > 1:
        x = F.interpolate(x, scale_factor=up, mode="nearest")
    return F.pad(x, (pad,) * 4, mode="reflect") if pad else x


def _reference(x, w, b, up, pad):
    X = _virtual(x.double(), up, pad)
    y = F.conv2d(X, w.double(), None if b is None else b.double())
    scale = F.conv2d(X.abs(), w.double().abs()).amax()  # the size of the sums being rounded
    return y, float(scale)


# (B, C, Co, H, W, upsample, pad): the edges each covers
SHAPES = [
    (1, 16, 16, 3, 3, 1, 0),     # minimal: one output pixel, one partial tile
    (1, 16, 16, 7, 9, 1, 0),     # partial tiles on both sides
    (2, 32, 48, 13, 22, 1, 1),   # B > 1, a last block of 16 output channels, tiles across images
    (1, 64, 32, 10, 11, 2, 1),   # upsampled and padded (the networks' upsampling layers)
    (3, 16, 32, 5, 4, 3, 2),     # upsample 3, pad 2
    (1, 128, 128, 34, 30, 1, 1),  # the residual blocks' channels
    (1, 16, 16, 1, 2, 2, 1),     # a 1-row input made 4 x 6 by upsampling and padding
]


@needs_winograd
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_float64(shape, bias):
    B, C, Co, H, W, up, pad = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(B, C, H, W, generator=g)
    w = torch.randn(Co, C, 3, 3, generator=g) / (3 * C ** 0.5)
    b = torch.randn(Co, generator=g) if bias else None
    y = OP(x, w, b, up, pad)
    want, scale = _reference(x, w, b, up, pad)
    assert y.shape == want.shape and y.dtype == torch.float32 and y.is_contiguous(memory_format=CL)
    err = float((y.double() - want).abs().max())
    assert err <= 2e-6 * scale, (err, scale)
    direct = float((F.conv2d(_virtual(x, up, pad), w, b).double() - want).abs().max())
    assert err <= 100 * max(direct, 1e-7 * scale)  # documented: ~10-30x a direct fp32 convolution's


@needs_winograd
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_any_input_layout(layout):
    x = torch.randn(2, 32, 12, 17)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    elif layout == "strided":
        x = torch.randn(2, 64, 12, 34)[:, ::2, :, ::2]
    w, b = torch.randn(16, 32, 3, 3) / 16, torch.randn(16)
    y = OP(x, w, b, 2, 1)
    want, scale = _reference(x, w, b, 2, 1)
    assert float((y.double() - want).abs().max()) <= 2e-6 * scale
    assert torch.equal(y, OP(x.contiguous(), w, b, 2, 1))  # the same bits whatever the layout


@needs_winograd
def test_large_values_and_exact_zeros():
    """Constant input: every tile's transform is exact up to rounding, and zero input gives the
    bias exactly."""
    w, b = torch.randn(32, 16, 3, 3), torch.randn(32)
    zero = OP(torch.zeros(1, 16, 9, 9), w, b)
    assert torch.equal(zero, b.view(1, 32, 1, 1).expand_as(zero))
    x = torch.full((1, 16, 9, 9), 1e4)
    want, scale = _reference(x, w, b, 1, 0)
    assert float((OP(x, w, b).double() - want).abs().max()) <= 2e-6 * scale


@needs_winograd
def test_batch_elements_are_independent():
    x = torch.randn(3, 16, 11, 13)
    w = torch.randn(16, 16, 3, 3)
    y = OP(x, w, None, 1, 1)
    for i in range(3):
        torch.testing.assert_close(y[i:i + 1], OP(x[i:i + 1], w, None, 1, 1), rtol=0, atol=0)


@needs_winograd
def test_opcheck():
    x, w, b = torch.randn(2, 16, 7, 8), torch.randn(32, 16, 3, 3), torch.randn(32)
    for args in ((x, w, b, 1, 0), (x, w, None, 2, 1)):
        opcheck(OP, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@needs_winograd
def test_output_storage_is_reused_safely():
    """Outputs come from a pool (page faults): a live result is never handed out again."""
    x, w = torch.randn(1, 16, 258, 258), torch.randn(16, 16, 3, 3)  # 4 MiB outputs: pooled
    a = OP(x, w, None)
    a_copy = a.clone()
    b = OP(x * 2, w, None)
    assert a.data_ptr() != b.data_ptr() and torch.equal(a, a_copy)


@pytest.mark.parametrize("args,message", [
    (lambda: (torch.randn(1, 16, 5, 5).double(), torch.randn(16, 16, 3, 3).double(), None),
     "conv3x3_winograd: x must be float32 (the Winograd transforms lose too much in 16-bit floats), got Double"),
    (lambda: (torch.randn(1, 8, 5, 5), torch.randn(16, 8, 3, 3), None),
     "conv3x3_winograd: the input and output channels must be positive multiples of 16, got C = 8, Co = 16"),
    (lambda: (torch.randn(1, 16, 5, 5), torch.randn(16, 16, 5, 5), None),
     "conv3x3_winograd: weight must be [Co, C, 3, 3] with C = x's 16 channels, got [16, 16, 5, 5]"),
    (lambda: (torch.randn(1, 16, 5, 5), torch.randn(16, 16, 3, 3), torch.randn(8)),
     "conv3x3_winograd: bias must be float32 [16], got Float [8]"),
    (lambda: (torch.randn(16, 5, 5), torch.randn(16, 16, 3, 3), None),
     "conv3x3_winograd: x must be [B, C, H, W], got 3 dimensions"),
    (lambda: (torch.randn(1, 16, 2, 5), torch.randn(16, 16, 3, 3), None),
     "conv3x3_winograd: the (upsampled, padded) input must be at least 3 x 3, got 2 x 5"),
    (lambda: (torch.randn(1, 16, 2, 5), torch.randn(16, 16, 3, 3), None, 1, 2),
     "conv3x3_winograd: reflection padding 2 must be smaller than the (upsampled) height and width 2 x 5"),
    (lambda: (torch.randn(1, 16, 4, 5), torch.randn(16, 16, 3, 3), None, 0, 0),
     "conv3x3_winograd: upsample must be >= 1 and pad >= 0, got 0 and 0"),
])
def test_bad_input(args, message):
    with pytest.raises(RuntimeError) as e:
        OP(*args())
    assert str(e.value).splitlines()[0] == message


# ---- the router: fastnst.ops.conv.conv / conv3x3 ---------------------------------------------
def test_conv3x3_is_f_conv2d_of_the_padded_input():
    x, w, b = torch.randn(2, 16, 9, 10), torch.randn(32, 16, 3, 3) / 12, torch.randn(32)
    for up, pad in ((1, 0), (1, 1), (2, 1)):
        want, scale = _reference(x, w, b, up, pad)
        y = conv.conv3x3(x, w, b, up, pad)
        assert float((y.double() - want).abs().max()) <= 2e-6 * scale
        with conv.use_winograd(False):  # the direct kernel: a direct fp32 convolution's rounding
            assert float((conv.conv3x3(x, w, b, up, pad).double() - want).abs().max()) <= 1e-6 * scale
            with conv.use_direct(False):
                assert torch.equal(conv.conv3x3(x, w, b, up, pad), F.conv2d(_virtual(x, up, pad), w, b))
        assert torch.equal(conv.conv(x, w, b, 1, up, pad, winograd=False, direct=False),
                           F.conv2d(_virtual(x, up, pad), w, b))


def test_routes_and_reasons():
    x, w = torch.randn(1, 16, 6, 6), torch.randn(16, 16, 3, 3)
    fast = _winograd_here()
    if fast:
        assert conv.route(x, w) == ("winograd", "Winograd F(4x4, 3x3) on AVX-512")
        assert conv.route(x, w, winograd=False) == ("direct", "direct convolution on AVX-512")
        # what Winograd does not take goes to the direct kernel
        assert conv.route(torch.randn(1, 8, 6, 6), torch.randn(16, 8, 3, 3))[0] == "direct"
        assert conv.route(x, torch.randn(16, 16, 5, 5))[0] == "direct"
        assert conv.route(x, w, None, 1, 1, 2)[0] == "direct"
    assert conv.route(x.double(), w.double())[1] == "not float32"
    assert conv.route(x, w, None, 1, 0, 2, direct=False)[1] == (
        "Winograd takes only stride-1 weights: 3x3 with channels multiples of 16, or k x k (k a multiple of 3) "
        "with output channels multiples of 16; the direct kernel is off")
    assert conv.route(x, torch.randn(16, 16, 3, 5))[1] == "not a [B, C, H, W] input with a square [Co, C, k, k] weight"
    xg = x.clone().requires_grad_(True)
    assert conv.route(xg, w)[1] == "a gradient is needed (the kernels have no backward)"
    with torch.no_grad():
        assert conv.route(xg, w)[0] == ("winograd" if fast else "aten")
    with torch.autocast("cpu", torch.bfloat16):
        assert conv.route(x, w)[1] == "under autocast (the convolution runs in the autocast dtype)"
    with conv.use_winograd(False):
        assert conv.route(x, w)[0] == ("direct" if fast else "aten")
        with conv.use_direct(False):
            assert conv.route(x, w)[0] == "aten"
    with conv.use_direct(False):
        assert conv.route(x, w)[0] == ("winograd" if fast else "aten")
    assert conv.route(x, w, None, 1, 1)[0] == conv.route(x, w)[0]
    assert conv.route(torch.randn(1, 16, 1, 1), w)[1] == "smaller than the 3 x 3 kernel"
    assert conv.route(x, w, winograd=False, direct=False)[1] == (
        "switched off (FASTNST_CONV=aten, use_winograd(False) and use_direct(False), or the caller's choice)")


def test_gradients_take_aten():
    x = torch.randn(1, 16, 7, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(16, 16, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: conv.conv3x3(x, w, None, 2, 1), (x, w))
    x32 = torch.randn(1, 16, 7, 7, requires_grad=True)
    y = conv.conv3x3(x32, torch.randn(16, 16, 3, 3), None, 1, 1)
    y.sum().backward()
    assert x32.grad is not None and x32.grad.shape == x32.shape


@needs_winograd
def test_the_op_itself_has_no_backward():
    x = torch.randn(1, 16, 6, 6, requires_grad=True)
    y = OP(x, torch.randn(16, 16, 3, 3), None)
    with pytest.raises(RuntimeError, match="fastnst::conv3x3_winograd is inference-only \\(no backward\\); call "
                                           "fastnst.ops.conv.conv, which takes aten's convolution"):
        y.sum().backward()


def test_bf16_under_autocast_takes_aten():
    x, w = torch.randn(1, 16, 8, 8), torch.randn(16, 16, 3, 3)
    with torch.autocast("cpu", torch.bfloat16), torch.no_grad():
        y = conv.conv3x3(x, w, None, 2, 1)
        want = F.conv2d(_virtual(x.bfloat16(), 2, 1), w)
    assert y.dtype == torch.bfloat16 and torch.equal(y, want)


def test_torch_compile_fullgraph():
    f = torch.compile(lambda x, w: conv.conv3x3(x, w, None, 2, 1), fullgraph=True)
    x, w = torch.randn(1, 16, 5, 6), torch.randn(16, 16, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(f(x, w), F.conv2d(_virtual(x, 2, 1), w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [dict(upsample=0), dict(pad=-1), dict(upsample=1.5), dict(pad=True)])
def test_conv3x3_bad_arguments(bad):
    kw = {"upsample": 1, "pad": 0, **bad}
    name = next(iter(bad))
    lo = 1 if name == "upsample" else 0
    with pytest.raises(ValueError) as e:
        conv.conv3x3(torch.randn(1, 16, 6, 6), torch.randn(16, 16, 3, 3), None, **kw)
    assert str(e.value) == f"conv3x3: {name} must be an integer >= {lo}, got {bad[name]!r}"
    with pytest.raises(ValueError) as e:
        conv.conv3x3(torch.randn(1, 16, 2, 6), torch.randn(16, 16, 3, 3), None, 1, 2)
    assert str(e.value) == "conv3x3: reflection padding 2 must be smaller than the (upsampled) height and width 2 x 6"


def _child(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("FASTNST_CPU_ISA", "FASTNST_CONV")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=full)


_CHILD = """
import torch, torch.nn.functional as F
from fastnst.ops import conv
x, w = torch.randn(1, 16, 6, 6), torch.randn(16, 16, 3, 3)
print(conv.route(x, w))
print(torch.equal(conv.conv3x3(x, w, None, 1, 1), F.conv2d(F.pad(x, (1,) * 4, mode="reflect"), w)))
for op, args in (("conv3x3_winograd", (x, w, None)), ("conv2d_direct", (x, w, None, 2))):
    try:
        getattr(torch.ops.fastnst, op)(*args)
    except RuntimeError as e:
        print(str(e).splitlines()[0])
"""


def test_below_avx512_conv_is_aten_and_the_ops_say_why():
    res = _child(_CHILD, FASTNST_CPU_ISA="avx2")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "('aten', 'the CPU path is avx2 (the kernels need avx512)')"
    assert lines[1] == "True"
    assert lines[2] == ("conv3x3_winograd: needs the avx512 CPU path, this process runs avx2 (call "
                        "fastnst.ops.conv.conv3x3, which uses aten's convolution there)")
    assert lines[3] == ("conv2d_direct: needs the avx512 CPU path, this process runs avx2 (call "
                        "fastnst.ops.conv.conv, which uses aten's convolution there)")


@pytest.mark.skipif(not _winograd_here(), reason="the kernels need the avx512 CPU path")
def test_fastnst_conv_switch():
    res = _child(_CHILD, FASTNST_CONV="aten")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[:2] == [
        "('aten', \"switched off (FASTNST_CONV=aten, use_winograd(False) and use_direct(False), or the caller's "
        "choice)\")", "True"]
    res = _child(_CHILD, FASTNST_CONV="direct")
    assert res.stdout.splitlines()[0] == "('direct', 'direct convolution on AVX-512')"
    res = _child("from fastnst.ops import conv; import torch; conv.route(torch.zeros(1), torch.zeros(1))",
                 FASTNST_CONV="fast")
    assert "ValueError: FASTNST_CONV must be auto, winograd, direct or aten, got 'fast'" in res.stderr
    code = ("from fastnst.ops import conv; import torch\n"
            "conv.conv3x3(torch.randn(1, 8, 6, 6), torch.randn(8, 8, 3, 3))")
    res = _child(code, FASTNST_CONV="winograd")
    assert ("RuntimeError: conv3x3: FASTNST_CONV=winograd, but the Winograd kernel cannot serve this call: "
            "Winograd takes only stride-1 weights: 3x3 with channels multiples of 16, or k x k (k a multiple of 3) "
            "with output channels multiples of 16; the direct kernel is off") in res.stderr
    code = ("from fastnst.ops import conv; import torch\n"
            "conv.conv(torch.randn(1, 8, 6, 6).double(), torch.randn(8, 8, 3, 3).double(), None, 2)")
    res = _child(code, FASTNST_CONV="direct")
    assert ("RuntimeError: conv: FASTNST_CONV=direct, but the direct kernel cannot serve this call: not float32"
            ) in res.stderr


def test_info_lists_the_conv_path():
    from fastnst import info

    routes = _ext.build_info()["cpu_routes"]
    line = next(r for r in routes.splitlines() if r.startswith("conv3x3_winograd\tfloat32\t"))
    assert ("Winograd F(4x4, 3x3)" in line) == _winograd_here()
    line = next(r for r in routes.splitlines() if r.startswith("conv2d_direct\tfloat32\t"))
    assert ("direct: x read in place (channels_last) or through staged rows" in line) == _winograd_here()
    line = next(r for r in routes.splitlines() if r.startswith("conv_winograd_split\tfloat32\t"))
    assert ("on the 3x3 blocks of a k x k kernel" in line) == _winograd_here()
    assert "conv3x3_winograd" in str(info.cpu_paths()) and "conv2d_direct" in str(info.cpu_paths())


def test_bench_case_runs(tmp_path):
    """The conv benchmark's quick cases through the harness: every provider computes the same
    convolution (checked here), the timed run gives rows (torch.compile left out: seconds)."""
    from fastnst import bench
    from fastnst.bench import harness

    text = bench.run("conv", quick=True, repeat=1, out_dir=str(tmp_path), log=None,
                     providers=["fastnst", "oneDNN (input padded beforehand)", "reference"])
    assert "| TransformerNet residual 128→128" in text and "| 1x128x64x64 | fwd | reference |" in text
    assert "| CIN output 9x9 4→3" in text and "| TransformerNet stride-2 32→64" in text
    opts = bench.Options(quick=True)
    for case in harness.benchmarks("conv")[0].cases(opts):
        outs = {p.name: p.fn() for p in case.providers if p.fn is not None and not p.compiled}
        ref = outs["reference"]
        for name, y in outs.items():
            torch.testing.assert_close(y, ref, rtol=0, atol=float(ref.abs().max()) * 1e-5, msg=name)


# ---- fastnst::conv_winograd_split: k x k weights (k = 3 m) as m^2 Winograd 3x3 blocks ---------
SPLIT = torch.ops.fastnst.conv_winograd_split
SPLIT_SHAPES = [  # (B, C, Co, H, W, k, upsample, pad)
    (1, 3, 32, 37, 29, 9, 1, 4),   # the networks' RGB input layer, partial tiles
    (2, 3, 64, 20, 33, 9, 1, 4),   # B > 1, 64 outputs (SR's head), more than 16 tiles a row
    (1, 5, 16, 13, 11, 6, 2, 1),   # k = 6, upsampled, a single block of 16 outputs
    (1, 3, 48, 5, 5, 9, 1, 4),     # the smallest image the 9x9 layers take; 32 + 16 outputs
    (1, 16, 32, 9, 8, 3, 1, 1),    # k = 3 (m = 1)
]


@needs_winograd
@pytest.mark.parametrize("shape", SPLIT_SHAPES, ids=[str(s) for s in SPLIT_SHAPES])
@pytest.mark.parametrize("bias", [True, False])
def test_split_matches_float64(shape, bias):
    B, C, Co, H, W, k, up, pad = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(B, C, H, W, generator=g)
    w = torch.randn(Co, C, k, k, generator=g) / (k * C ** 0.5)
    b = torch.randn(Co, generator=g) if bias else None
    y = SPLIT(x, w, b, up, pad)
    X = _virtual(x.double(), up, pad)
    want = F.conv2d(X, w.double(), None if b is None else b.double())
    scale = float(F.conv2d(X.abs(), w.double().abs()).amax())
    assert y.shape == want.shape and y.is_contiguous(memory_format=CL)
    err = float((y.double() - want).abs().max())
    assert err <= 4e-6 * scale, (err, scale)  # m^2 sums of F(4x4, 3x3) blocks: Winograd's rounding
    direct = float((F.conv2d(_virtual(x, up, pad), w, b).double() - want).abs().max())
    assert err <= 100 * max(direct, 1e-7 * scale)


@needs_winograd
def test_split_layouts_and_batch():
    x = torch.randn(3, 3, 21, 18)
    w, b = torch.randn(32, 3, 9, 9) / 27, torch.randn(32)
    want = SPLIT(x, w, b, 1, 4)
    strided = torch.randn(3, 3, 21, 36)[:, :, :, ::2]
    strided.copy_(x)
    for v in (x.contiguous(memory_format=CL), strided):
        assert torch.equal(SPLIT(v, w, b, 1, 4), want)
    for i in range(3):
        assert torch.equal(SPLIT(x[i:i + 1], w, b, 1, 4), want[i:i + 1])


@needs_winograd
def test_split_opcheck_and_router():
    x, w, b = torch.randn(2, 3, 11, 12), torch.randn(16, 3, 9, 9), torch.randn(16)
    for args in ((x, w, b, 1, 4), (x, torch.randn(32, 3, 6, 6), None, 2, 1)):
        opcheck(SPLIT, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    assert conv.route(x, w, b, 1, 4) == ("winograd", "Winograd F(4x4, 3x3) on the 3x3 blocks of the 9x9 weight, "
                                         "on AVX-512")
    assert torch.equal(conv.conv(x, w, b, 1, 1, 4), SPLIT(x, w, b, 1, 4))
    assert conv.route(x, w, b, 1, 4, 2)[0] == "direct"  # stride 2: not Winograd's
    assert conv.route(x, torch.randn(8, 3, 9, 9))[0] == "direct"  # 8 outputs: not a whole vector


@pytest.mark.parametrize("args,message", [
    (lambda: (torch.randn(1, 3, 9, 9), torch.randn(16, 3, 5, 5), None),
     "conv_winograd_split: weight must be [Co, C, k, k] with k a multiple of 3 and C = x's 3 channels, got "
     "[16, 3, 5, 5]"),
    (lambda: (torch.randn(1, 3, 9, 9), torch.randn(8, 3, 9, 9), None),
     "conv_winograd_split: the output channels must be a positive multiple of 16 and C positive, got C = 3, Co = 8"),
    (lambda: (torch.randn(1, 3, 9, 9).double(), torch.randn(16, 3, 9, 9).double(), None),
     "conv_winograd_split: x must be float32 (the Winograd transforms lose too much in 16-bit floats), got Double"),
    (lambda: (torch.randn(1, 3, 4, 9), torch.randn(16, 3, 9, 9), None, 1, 2),
     "conv_winograd_split: the (upsampled, padded) input must be at least 9 x 9, got 8 x 13"),
    (lambda: (torch.randn(1, 3, 9, 9), torch.randn(16, 3, 9, 9), torch.randn(3)),
     "conv_winograd_split: bias must be float32 [16], got Float [3]"),
])
def test_split_bad_input(args, message):
    with pytest.raises(RuntimeError) as e:
        SPLIT(*args())
    assert str(e.value).splitlines()[0] == message
