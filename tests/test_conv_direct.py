"""fastnst::conv2d_direct: the direct convolution of the upsampled, reflection-padded input with any
square kernel and stride (the networks' 9x9, stride-2 and few-channel layers); the router
(fastnst.ops.conv.conv) is tested in tests/test_conv.py.

Parity is against float64 F.conv2d of the virtual input, bounded relative to the convolution's
own scale (sum |w| |x| over a window, plus |bias|): a direct fp32 convolution's rounding. The
kernel's two ways of reading the input (straight from a channels_last x, or through staged
rows) and its two microkernels sum every output in the same order, so layouts agree bit for bit.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

from fastnst import _ext
from fastnst.ops import conv

pytestmark = pytest.mark.skipif(not _ext.available(), reason="fastnst._C is not built")
CL = torch.channels_last
OP = torch.ops.fastnst.conv2d_direct


def _here() -> bool:
    return conv.route(torch.zeros(1, 3, 9, 9), torch.zeros(16, 3, 3, 3), None, 1, 0, 2)[0] == "direct"


needs_direct = pytest.mark.skipif(not _here(), reason="the direct kernel needs the avx512 CPU path")


def _virtual(x: torch.Tensor, up: int, pad: int) -> torch.Tensor:
    if up > 1:
        x = F.interpolate(x, scale_factor=up, mode="nearest")
    return F.pad(x, (pad,) * 4, mode="reflect") if pad else x


def _reference(x, w, b, stride, up, pad):
    X = _virtual(x.double(), up, pad)
    y = F.conv2d(X, w.double(), None if b is None else b.double(), stride=stride)
    scale = F.conv2d(X.abs(), w.double().abs(), stride=stride).amax() + (0 if b is None else b.abs().max())
    return y, float(scale)


# (B, C, Co, H, W, k, stride, upsample, pad): what each covers
SHAPES = [
    (1, 3, 32, 37, 29, 9, 1, 1, 4),     # the networks' RGB input layer (staged, 3 channels)
    (2, 32, 32, 20, 18, 3, 2, 1, 1),    # a stride-2 layer read straight from x, B > 1
    (1, 32, 64, 17, 15, 3, 2, 1, 1),    # odd sides: reflected right and bottom borders
    (1, 64, 128, 9, 12, 3, 2, 1, 1),    # Johnson's second stride-2 layer
    (1, 16, 48, 11, 10, 3, 1, 1, 1),    # a last block of 16 output channels
    (1, 32, 8, 9, 11, 3, 1, 2, 1),      # pixel vectors: 8 outputs, upsampled
    (1, 8, 4, 13, 10, 3, 1, 2, 1),      # 4 outputs
    (1, 4, 3, 21, 19, 9, 1, 1, 4),      # the RGB output layer
    (1, 32, 3, 12, 40, 9, 1, 1, 4),     # Johnson's RGB output layer, rows longer than a block
    (1, 5, 20, 8, 8, 5, 3, 1, 2),       # stride 3, 20 outputs (a masked last vector)
    (1, 7, 1, 9, 9, 1, 1, 1, 0),        # 1x1, one output channel
    (1, 16, 17, 6, 7, 3, 1, 3, 2),      # upsample 3, 17 outputs
    (3, 128, 32, 6, 5, 3, 2, 1, 1),     # 128 channels, tiny image: every block at a border
    (1, 3, 16, 5, 5, 9, 1, 1, 4),       # the smallest side the 9x9 layers take
]


@needs_direct
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_float64(shape, bias):
    B, C, Co, H, W, k, s, up, pad = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(B, C, H, W, generator=g)
    w = torch.randn(Co, C, k, k, generator=g) / (k * C ** 0.5)
    b = torch.randn(Co, generator=g) if bias else None
    y = OP(x, w, b, s, up, pad)
    want, scale = _reference(x, w, b, s, up, pad)
    assert y.shape == want.shape and y.dtype == torch.float32
    assert y.is_contiguous() if Co <= 8 else y.is_contiguous(memory_format=CL)
    err = float((y.double() - want).abs().max())
    assert err <= 1e-6 * scale, (err, scale)
    aten = float((F.conv2d(_virtual(x, up, pad), w, b, stride=s).double() - want).abs().max())
    assert err <= 4 * max(aten, 1e-7 * scale)  # a direct fp32 convolution's rounding, as aten's


@needs_direct
@pytest.mark.parametrize("shape", [(32, 32, 3, 2, 1, 1), (3, 32, 9, 1, 1, 4), (32, 8, 3, 1, 2, 1),
                                   (64, 16, 3, 1, 1, 0)], ids=str)
def test_every_layout_gives_the_same_bits(shape):
    """NCHW, channels_last (read straight from x where the channels allow) and a strided view:
    the same sums in the same order."""
    C, Co, k, s, up, pad = shape
    x = torch.randn(2, C, 19, 23)
    w, b = torch.randn(Co, C, k, k) / k, torch.randn(Co)
    want = OP(x, w, b, s, up, pad)
    strided = torch.randn(2, C, 19, 46)[:, :, :, ::2]
    strided.copy_(x)
    for v in (x.contiguous(memory_format=CL), strided):
        assert torch.equal(OP(v, w, b, s, up, pad), want)


@needs_direct
def test_exact_zeros_and_large_values():
    w, b = torch.randn(32, 16, 3, 3), torch.randn(32)
    zero = OP(torch.zeros(1, 16, 9, 9), w, b, 2, 1, 1)
    assert torch.equal(zero, b.view(1, 32, 1, 1).expand_as(zero))
    x = torch.full((1, 16, 9, 9), 1e4)
    want, scale = _reference(x, w, b, 2, 1, 1)
    assert float((OP(x, w, b, 2, 1, 1).double() - want).abs().max()) <= 1e-6 * scale


@needs_direct
def test_batch_elements_are_independent():
    x = torch.randn(3, 32, 11, 13).contiguous(memory_format=CL)
    for w, s in ((torch.randn(32, 32, 3, 3), 2), (torch.randn(3, 32, 9, 9), 1)):
        y = OP(x, w, None, s, 1, w.shape[2] // 2)
        for i in range(3):
            assert torch.equal(y[i:i + 1], OP(x[i:i + 1], w, None, s, 1, w.shape[2] // 2))


@needs_direct
def test_opcheck():
    x, w, b = torch.randn(2, 16, 7, 8), torch.randn(32, 16, 3, 3), torch.randn(32)
    for args in ((x, w, b, 2, 1, 1), (x, w, None, 1, 2, 1), (x, torch.randn(3, 16, 5, 5), None, 1, 1, 2)):
        opcheck(OP, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@needs_direct
def test_output_storage_is_reused_safely():
    """Outputs come from a pool (page faults): a live result is never handed out again."""
    x, w = torch.randn(1, 16, 258, 258), torch.randn(16, 16, 3, 3)  # 4 MiB outputs: pooled
    a = OP(x, w, None, 1, 1, 1)
    a_copy = a.clone()
    b = OP(x * 2, w, None, 1, 1, 1)
    assert a.data_ptr() != b.data_ptr() and torch.equal(a, a_copy)


@needs_direct
def test_the_op_itself_has_no_backward():
    x = torch.randn(1, 16, 6, 6, requires_grad=True)
    y = OP(x, torch.randn(16, 16, 3, 3), None, 2, 1, 1)
    with pytest.raises(RuntimeError, match=r"fastnst::conv2d_direct is inference-only \(no backward\)"):
        y.sum().backward()


@pytest.mark.parametrize("args,message", [
    (lambda: (torch.randn(1, 16, 5, 5).double(), torch.randn(16, 16, 3, 3).double(), None),
     "conv2d_direct: x must be float32, got Double"),
    (lambda: (torch.randn(1, 16, 5, 5), torch.randn(16, 16, 3, 3).double(), None),
     "conv2d_direct: weight must be float32, got Double"),
    (lambda: (torch.randn(1, 16, 5, 5), torch.randn(16, 8, 3, 3), None),
     "conv2d_direct: weight must be [Co, C, k, k] with C = x's 16 channels, got [16, 8, 3, 3]"),
    (lambda: (torch.randn(1, 16, 5, 5), torch.randn(16, 16, 3, 5), None),
     "conv2d_direct: weight must be [Co, C, k, k] with C = x's 16 channels, got [16, 16, 3, 5]"),
    (lambda: (torch.randn(1, 16, 5, 5), torch.randn(16, 16, 3, 3), torch.randn(8)),
     "conv2d_direct: bias must be float32 [16], got Float [8]"),
    (lambda: (torch.randn(16, 5, 5), torch.randn(16, 16, 3, 3), None),
     "conv2d_direct: x must be [B, C, H, W], got 3 dimensions"),
    (lambda: (torch.randn(1, 16, 4, 5), torch.randn(16, 16, 9, 9), None, 1, 1, 2),
     "conv2d_direct: the (upsampled, padded) input must be at least 9 x 9, got 8 x 9"),
    (lambda: (torch.randn(1, 16, 2, 5), torch.randn(16, 16, 3, 3), None, 1, 1, 2),
     "conv2d_direct: reflection padding 2 must be smaller than the (upsampled) height and width 2 x 5"),
    (lambda: (torch.randn(1, 16, 4, 5), torch.randn(16, 16, 3, 3), None, 0, 1, 0),
     "conv2d_direct: stride and upsample must be >= 1 and pad >= 0, got 0, 1 and 0"),
    (lambda: (torch.randn(1, 0, 4, 5), torch.randn(16, 0, 3, 3), None),
     "conv2d_direct: the input and output channels must be positive, got C = 0, Co = 16"),
])
def test_bad_input(args, message):
    with pytest.raises(RuntimeError) as e:
        OP(*args())
    assert str(e.value).splitlines()[0] == message


@needs_direct
def test_router_serves_the_networks_layers():
    """fastnst.ops.conv.conv takes the direct kernel for what Winograd does not take, within a
    direct convolution's rounding; with both kernels off it is F.conv2d bit for bit."""
    for C, Co, k, s, up, pad in ((4, 3, 9, 1, 1, 4), (32, 64, 3, 2, 1, 1), (32, 8, 3, 1, 2, 1)):
        x, w, b = torch.randn(1, C, 14, 10), torch.randn(Co, C, k, k) / k, torch.randn(Co)
        assert conv.route(x, w, b, up, pad, s)[0] == "direct"
        want, scale = _reference(x, w, b, s, up, pad)
        y = conv.conv(x, w, b, s, up, pad)
        assert float((y.double() - want).abs().max()) <= 1e-6 * scale
        with conv.use_direct(False), conv.use_winograd(False):
            assert torch.equal(conv.conv(x, w, b, s, up, pad), F.conv2d(_virtual(x, up, pad), w, b, stride=s))


def test_gradients_take_aten():
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: conv.conv(x, w, None, 2, 2, 1), (x, w))


def test_torch_compile_fullgraph():
    f = torch.compile(lambda x, w: conv.conv(x, w, None, 2, 1, 2), fullgraph=True)
    x, w = torch.randn(1, 8, 9, 10), torch.randn(16, 8, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(f(x, w), F.conv2d(_virtual(x, 1, 2), w, stride=2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [dict(stride=0), dict(stride=1.5), dict(upsample=0), dict(pad=-1)])
def test_conv_bad_arguments(bad):
    kw = {"stride": 1, "upsample": 1, "pad": 0, **bad}
    name = next(iter(bad))
    lo = 0 if name == "pad" else 1
    with pytest.raises(ValueError) as e:
        conv.conv(torch.randn(1, 16, 6, 6), torch.randn(16, 16, 3, 3), None, **kw)
    assert str(e.value) == f"conv: {name} must be an integer >= {lo}, got {bad[name]!r}"
